#include "mmsb/llm/throughput.hpp"

#include <time.h>
#include <algorithm>

#include <chrono>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "mmsb/error.hpp"
#include "mmsb/llm/forward.hpp"
#include "mmsb/llm/sampler.hpp"

namespace mmsb::llm {

namespace {

// The prompt: BOS, then fixed, varied ids; and the token fed at the first generated position.
std::vector<int> prompt_ids(const ModelConfig& c, int n_prompt) {
  std::vector<int> ids{1};
  for (int pos = 0; pos < n_prompt; ++pos) {
    ids.push_back(static_cast<int>((static_cast<std::uint64_t>(pos) * 7919 + 3) % c.vocab_size));
  }
  return ids;  // n_prompt + 1 ids
}

double cpu_seconds() {
  timespec ts{};
  ::clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) + static_cast<double>(ts.tv_nsec) * 1e-9;
}

template <class Prefill, class Step>
Throughput run_once(const ModelConfig& c, int n_prompt, int n_gen, Prefill&& prefill, Step&& step) {
  using clock = std::chrono::steady_clock;
  Throughput out;
  const std::vector<int> ids = prompt_ids(c, n_prompt);
  auto start = clock::now();
  const double cpu_start = cpu_seconds();
  prefill(std::span<const int>(ids.data(), static_cast<std::size_t>(n_prompt)));
  int token = ids.back();
  auto mid = clock::now();
  const double cpu_mid = cpu_seconds();
  std::uint64_t hash = 1469598103934665603ULL;
  for (int i = 0; i < n_gen; ++i) {
    const float* logits = step(token, n_prompt + i);
    token = argmax({logits, c.vocab_size});
    hash = (hash ^ static_cast<std::uint64_t>(token)) * 1099511628211ULL;
  }
  auto end = clock::now();
  const double cpu_end = cpu_seconds();
  out.prompt_tok_per_s = n_prompt / std::chrono::duration<double>(mid - start).count();
  out.tok_per_s = n_gen / std::chrono::duration<double>(end - mid).count();
  out.prompt_tok_per_cpu_s = n_prompt / std::max(cpu_mid - cpu_start, 1e-9);
  out.tok_per_cpu_s = n_gen / std::max(cpu_end - cpu_mid, 1e-9);
  out.checksum = hash;
  return out;
}

template <class Prefill, class Step>
Throughput run(const ModelConfig& c, int n_prompt, int n_gen, int rounds, Prefill&& prefill, Step&& step) {
  std::vector<Throughput> all;
  for (int r = 0; r < rounds; ++r) all.push_back(run_once(c, n_prompt, n_gen, prefill, step));
  auto median = [&all](double Throughput::*field) {
    std::vector<double> v;
    for (const Throughput& t : all) v.push_back(t.*field);
    std::sort(v.begin(), v.end());
    return v[v.size() / 2];
  };
  return {median(&Throughput::prompt_tok_per_s),     median(&Throughput::tok_per_s),    all.front().checksum, {},
          median(&Throughput::prompt_tok_per_cpu_s), median(&Throughput::tok_per_cpu_s)};
}

}  // namespace

Throughput measure_throughput(const Model& model, ThroughputPath path, int n_prompt, int n_gen, EngineOptions options,
                              int rounds, bool batched_prompt) {
  const ModelConfig& c = model.config;
  if (n_prompt < 1 || n_gen < 1 ||
      static_cast<std::uint64_t>(n_prompt) + static_cast<std::uint64_t>(n_gen) > c.seq_len) {
    throw Error(ErrorCode::InvalidArgument, "bench: " + std::to_string(n_prompt) + " prompt + " +
                                                std::to_string(n_gen) + " generated tokens must be >= 1 each and fit " +
                                                std::to_string(c.seq_len) + " positions");
  }
  if (path == ThroughputPath::Engine) {
    Engine engine(model, options);
    Throughput t = run(
        c, n_prompt, n_gen, std::max(rounds, 1),
        [&](std::span<const int> ids) {
          if (batched_prompt) return engine.prefill(ids, 0);
          for (std::size_t pos = 0; pos < ids.size(); ++pos) engine.prefill_step(ids[pos], static_cast<int>(pos));
        },
        [&](int token, int pos) { return engine.step(token, pos).data(); });
    if (engine.paged()) {
      t.paging = engine.paged()->pager().stats();
      t.refilled_bytes = engine.paged()->refilled_bytes();
    }
    return t;
  }
  DirectModel direct(model, options.kernels ? *options.kernels : kernels(), options.rounding, options.threads);
  // The direct loop batches as the engine would (the same chunk size), so the two prompt figures stay comparable.
  const bool direct_batched = batched_prompt && options.prefill_batch > 0 && !options.paging;
  const std::vector<std::int32_t> ids32 = [&] {
    const std::vector<int> ids = prompt_ids(c, n_prompt);
    return std::vector<std::int32_t>(ids.begin(), ids.end());
  }();
  return run(
      c, n_prompt, n_gen, std::max(rounds, 1),
      [&](std::span<const int> ids) {
        if (direct_batched) return direct.prefill(std::span(ids32).first(ids.size()), 0, options.prefill_batch + 1);
        for (std::size_t pos = 0; pos < ids.size(); ++pos) direct.step(ids[pos], static_cast<int>(pos), false);
      },
      [&](int token, int pos) { return direct.step(token, pos); });
}

}  // namespace mmsb::llm
