#include "mmsb/llm/sampler.hpp"

#include <algorithm>
#include <cmath>
#include <string>

#include "mmsb/error.hpp"

namespace mmsb::llm {

// The best value stays in a register: reading logits[best] again made every comparison wait for the last one's
// index (a token's greedy pick cost a few hundred nanoseconds at a vocabulary of 512).
int argmax(std::span<const float> logits) noexcept {
  int best = 0;
  float best_value = logits[0];
  for (std::size_t i = 1; i < logits.size(); ++i) {
    if (logits[i] > best_value) {
      best_value = logits[i];
      best = static_cast<int>(i);
    }
  }
  return best;
}

Sampler::Sampler(SamplerOptions options) : options_(options), state_(options.seed) {
  if (!(options.temperature >= 0.0f) || std::isinf(options.temperature)) {
    throw Error(ErrorCode::InvalidArgument,
                "temperature " + std::to_string(options.temperature) + " must be a finite number >= 0");
  }
  if (options.top_k < 0)
    throw Error(ErrorCode::InvalidArgument, "top-k " + std::to_string(options.top_k) + " must be >= 0");
  if (!(options.top_p > 0.0f && options.top_p <= 1.0f)) {
    throw Error(ErrorCode::InvalidArgument, "top-p " + std::to_string(options.top_p) + " must be in (0, 1]");
  }
}

// splitmix64: tiny, fast, and the same sequence on every platform (std distributions are not).
float Sampler::next_uniform() noexcept {
  std::uint64_t z = (state_ += 0x9E3779B97F4A7C15ULL);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
  z ^= z >> 31;
  return static_cast<float>(z >> 40) * (1.0f / 16777216.0f);
}

int Sampler::sample(std::span<const float> logits) {
  if (options_.temperature == 0.0f) return argmax(logits);
  // Softmax of logits / temperature.
  candidates_.resize(logits.size());
  float max_logit = logits[0];
  for (float l : logits) max_logit = std::max(max_logit, l);
  float sum = 0;
  for (std::size_t i = 0; i < logits.size(); ++i) {
    float p = std::exp((logits[i] - max_logit) / options_.temperature);
    candidates_[i] = {p, static_cast<int>(i)};
    sum += p;
  }
  for (auto& c : candidates_) c.first /= sum;
  std::size_t keep = candidates_.size();
  const bool filter = (options_.top_k > 0 && static_cast<std::size_t>(options_.top_k) < keep) || options_.top_p < 1.0f;
  if (filter) {
    // Most likely first; ties by id, so the order (and the run) is reproducible.
    auto by_probability = [](const std::pair<float, int>& a, const std::pair<float, int>& b) {
      return a.first > b.first || (a.first == b.first && a.second < b.second);
    };
    std::sort(candidates_.begin(), candidates_.end(), by_probability);
    if (options_.top_k > 0) keep = std::min(keep, static_cast<std::size_t>(options_.top_k));
    if (options_.top_p < 1.0f) {
      float mass = 0;
      for (std::size_t i = 0; i < keep; ++i) {
        mass += candidates_[i].first;
        if (mass >= options_.top_p) {
          keep = i + 1;
          break;
        }
      }
    }
  }
  float total = 0;
  for (std::size_t i = 0; i < keep; ++i) total += candidates_[i].first;
  const float r = next_uniform() * total;
  float cdf = 0;
  for (std::size_t i = 0; i < keep; ++i) {
    cdf += candidates_[i].first;
    if (r < cdf) return candidates_[i].second;
  }
  return candidates_[keep - 1].second;  // rounding left r at the very top
}

}  // namespace mmsb::llm
