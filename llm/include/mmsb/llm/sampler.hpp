// mmsb/llm/sampler.hpp — picks the next token from logits: greedy, or temperature with optional
// top-k and top-p (nucleus) filtering, from a seeded generator so that a run is reproducible.
//
//   mmsb::llm::Sampler sampler({.temperature = 0.8f, .top_p = 0.9f, .seed = 42});
//   int next = sampler.sample(logits);
//
// Thread-safety: a Sampler holds generator state; use each from one thread.
#pragma once

#include <cstdint>
#include <span>
#include <utility>
#include <vector>

namespace mmsb::llm {

struct SamplerOptions {
  float temperature = 0.0f;  // 0: greedy (argmax; the lowest id wins a tie)
  int top_k = 0;             // keep the k most likely tokens; 0 = all
  float top_p = 1.0f;        // keep the smallest set of most likely tokens whose mass reaches p; 1 = all
  std::uint64_t seed = 0;
};

class Sampler {
 public:
  // Throws Error(InvalidArgument) for a negative temperature or top-k, or top-p outside (0, 1].
  explicit Sampler(SamplerOptions options);
  int sample(std::span<const float> logits);
  const SamplerOptions& options() const noexcept { return options_; }

 private:
  float next_uniform() noexcept;  // [0, 1)
  SamplerOptions options_;
  std::uint64_t state_;
  std::vector<std::pair<float, int>> candidates_;  // reused: no allocation per token
};

int argmax(std::span<const float> logits) noexcept;

}  // namespace mmsb::llm
