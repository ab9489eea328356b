// llm/split_mix.hpp — SplitMix64, the small seeded generator behind the random weights of make-model and lora-make:
// the same sequence on every platform, good enough statistics for test weights.
//
// Thread-safety: a value type; one per thread.
#pragma once

#include <cstdint>

namespace mmsb::llm {

struct SplitMix {
  std::uint64_t state;
  std::uint64_t next() {
    std::uint64_t z = (state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }
  float uniform(float range) {  // in [-range, range)
    return (static_cast<float>(next() >> 40) / static_cast<float>(1u << 24) * 2.0f - 1.0f) * range;
  }
};

}  // namespace mmsb::llm
