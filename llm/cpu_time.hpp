// llm/cpu_time.hpp — the calling thread's CPU time (internal to mmsb-llm).
//
// Why CPU time: what a piece of work costs on its own, whatever else the OS runs on the core meanwhile (the thread
// team's busy time, a mapped unit's populate). Thread-safety: each call reads the calling thread's clock.
#pragma once

#include <time.h>

#include <cstdint>

namespace mmsb::llm {

inline std::uint64_t thread_cpu_ns() {
  timespec ts{};
  ::clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return static_cast<std::uint64_t>(ts.tv_sec) * 1'000'000'000u + static_cast<std::uint64_t>(ts.tv_nsec);
}

}  // namespace mmsb::llm
