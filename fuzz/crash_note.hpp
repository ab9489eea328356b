// fuzz/crash_note.hpp — names the iteration a fuzz driver was running when the process dies (a crash, an
// AddressSanitizer report, an abort), so that every crash can become a regression input: the note says how to
// replay that iteration alone (`--seed S --start I --iterations 1`), and fuzz/regressions.txt lists such replays.
//
//   CrashNote::install("mmsb-fuzz-log");
//   for (i ...) { CrashNote::set(seed, i); run iteration i; }
//
// Thread-safety: call from the driver's main thread only; the handlers only write a prepared buffer.
#pragma once

#include <csignal>
#include <cstdint>
#include <cstdio>
#include <cstring>

#include <unistd.h>

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/common_interface_defs.h>
#endif

namespace mmsb::fuzz {

class CrashNote {
 public:
  // Writes the note when the process dies: through AddressSanitizer's death callback in an ASan build (whose own
  // handlers report the crash first), else from handlers of the fatal signals, which then re-raise the signal.
  static void install(const char* program) {
    program_ = program;
#if defined(__SANITIZE_ADDRESS__)
    __sanitizer_set_death_callback(write_note);
#else
    for (int sig : {SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGABRT}) std::signal(sig, on_fatal_signal);
#endif
  }

  // The iteration about to run.
  static void set(std::uint64_t seed, std::uint64_t iteration) {
    std::snprintf(note_, sizeof note_,
                  "%s: died in iteration %llu of seed %llu; replay it with --seed %llu --start %llu --iterations 1\n",
                  program_, static_cast<unsigned long long>(iteration), static_cast<unsigned long long>(seed),
                  static_cast<unsigned long long>(seed), static_cast<unsigned long long>(iteration));
  }

 private:
  static void write_note() {
    const ssize_t ignored = ::write(STDERR_FILENO, note_, std::strlen(note_));
    (void)ignored;
  }
  static void on_fatal_signal(int sig) {
    write_note();
    std::signal(sig, SIG_DFL);
    std::raise(sig);
  }

  static inline const char* program_ = "fuzz";
  static inline char note_[256] = {};
};

}  // namespace mmsb::fuzz
