// program/main.hpp — the one `main` of every mmsb program (mmsb, mmsb-llm, mmsb-bench, mmsb-bench-mpi, the
// examples and the fuzz drivers): it runs the program's body and turns any exception into one line on stderr and
// an exit code, so that no program dies on an uncaught exception or prints a page of messages. Programs with
// options use run() of program/options.hpp, which parses the command line first.
//
//   int main() {
//     return mmsb::program::guard("quickstart", [] { return tour(); });
//   }
//
// Exit codes (ExitCodes changes them for a program that documents others):
//   0        success (or --help); otherwise whatever the body returns
//   2        a bad command line (program/options.hpp), or an mmsb::Error with code InvalidArgument: a value only
//            the program could judge (a size that is not a multiple of the tiles)
//   1        any other exception: mmsb::Error (the code's name leads the message), std::bad_alloc, and others;
//            also when the output could not be written (a full disk, a closed pipe)
//
// Header-only, used only by programs (never by a library module); scripts/check_layers.py lets every program
// folder include it and lets it include nothing of mmsb but mmsb/error.hpp.
// Thread-safety: call from main() only.
#pragma once

#include <cstdio>
#include <exception>
#include <iostream>
#include <new>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>

#include "mmsb/error.hpp"

namespace mmsb::program {

struct ExitCodes {
  int usage = 2;    // a bad command line, or mmsb::Error(InvalidArgument)
  int failure = 1;  // any other error
};

// Ends the program with `code` after printing `message` as its error line: for a failure whose exit code the
// program documents (such as `mmsb verify` finding damage).
class Exit : public std::runtime_error {
 public:
  Exit(const std::string& message, int code) : std::runtime_error(message), code_(code) {}
  int code() const noexcept { return code_; }

 private:
  int code_;
};

// Prints `<program>: <message>` as one line on stderr (line breaks in the message become spaces), after what
// the program wrote to stdout so far.
inline void print_error(std::string_view program, std::string_view message) {
  std::string line(message);
  for (char& c : line) {
    if (c == '\n' || c == '\r') c = ' ';
  }
  std::cout.flush();
  std::fflush(stdout);
  std::fprintf(stderr, "%.*s: %s\n", static_cast<int>(program.size()), program.data(), line.c_str());
}

// Runs body() (which returns the exit code) and returns its exit code; an exception it throws becomes one line on
// stderr and codes.usage or codes.failure (Exit: its own code). A program whose output did not reach stdout fails.
template <class Body>
int guard(std::string_view program, Body&& body, ExitCodes codes = {}) noexcept {
  try {
    const int code = std::forward<Body>(body)();
    std::cout.flush();
    if (!std::cout || std::fflush(stdout) != 0 || std::ferror(stdout)) {
      print_error(program, "could not write the output (is the disk full, or the pipe closed?)");
      return codes.failure;
    }
    return code;
  } catch (const Exit& e) {
    print_error(program, e.what());
    return e.code();
  } catch (const mmsb::Error& e) {
    print_error(program, e.what());
    return e.code() == mmsb::ErrorCode::InvalidArgument ? codes.usage : codes.failure;
  } catch (const std::bad_alloc&) {
    print_error(program, "out of memory (std::bad_alloc); try smaller sizes");
    return codes.failure;
  } catch (const std::exception& e) {
    print_error(program, e.what());
    return codes.failure;
  } catch (...) {
    print_error(program, "an unknown exception ended the program");
    return codes.failure;
  }
}

}  // namespace mmsb::program
