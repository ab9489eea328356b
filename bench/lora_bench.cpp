// LoRA hot-swap metrics (llm/include/mmsb/llm/lora.hpp) on the shared stories260K f32 model: two random rank-8
// adapters on attn_q and attn_v of every layer, swapped back and forth on a live engine (each swap is one commit
// of composed deltas to the weight pages, plus the wave that re-runs the last step with the new weights). The
// baseline, measured in the same run, is a plain memcpy of the weight bytes a swap replaces.
#include <algorithm>
#include <chrono>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

#include "bench/harness.hpp"
#include "mmsb/graph.hpp"
#include "mmsb/llm/engine.hpp"
#include "mmsb/llm/lora.hpp"
#include "mmsb/llm/model.hpp"

namespace mmsb::bench {
namespace {

constexpr int kSwaps = 32;  // per repetition; the median swap counts

const llm::Model& f32_model() {
  static std::unique_ptr<llm::Model> model;
  if (!model) {
    try {
      model =
          std::make_unique<llm::Model>(llm::load_model(std::string(MMSB_SHARED_DIR) + "/models/stories260K-f32.gguf"));
    } catch (const std::exception& e) {
      throw std::runtime_error(std::string("lora bench needs the shared test model: ") + e.what());
    }
  }
  return *model;
}

llm::LoraAdapter adapter(std::uint64_t seed) {
  return llm::make_random_lora(f32_model(), 8, 8.0f, seed, {"attn_q", "attn_v"});
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

struct SwapRun {
  double median_us;     // per swap
  double mean_wave_us;  // the propagation wave inside each swap (the re-run of the last step)
};

SwapRun swap_run() {
  const llm::Model& m = f32_model();
  llm::Engine engine(m);
  for (int pos = 0; pos < 8; ++pos) engine.step(1 + pos, pos);
  llm::LoraSwitcher sw(engine, m);
  const std::size_t a = sw.prepare(adapter(1)), b = sw.prepare(adapter(2));
  sw.activate(a);  // the first write copies the pages out of the mapping: not a swap
  const LatencySummary before = engine.propagator().stats().wave_latency;
  std::vector<double> us;
  for (int i = 0; i < kSwaps; ++i) {
    auto start = std::chrono::steady_clock::now();
    sw.activate(i % 2 == 0 ? b : a);
    us.push_back(std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - start).count());
  }
  const LatencySummary after = engine.propagator().stats().wave_latency;
  if (after.count != before.count + kSwaps) throw std::runtime_error("lora bench: expected one wave per swap");
  const double wave_ns =
      (after.mean_ns * static_cast<double>(after.count) - before.mean_ns * static_cast<double>(before.count)) / kSwaps;
  return {median(us), wave_ns / 1000.0};
}

Register swap("llm_lora_swap_us",
              "LoRA hot swap between two rank-8 adapters (attn_q, attn_v, 5 layers) on a live f32 engine, median "
              "microseconds per swap (one commit + the wave re-running the last step); target < 1000",
              [] { return swap_run().median_us; });

Register swap_wave("llm_lora_swap_wave_us",
                   "the part of llm_lora_swap_us spent in the propagation wave each swap triggers (mean)",
                   [] { return swap_run().mean_wave_us; });

Register swap_memcpy(
    "llm_lora_swap_memcpy_us",
    "baseline: memcpy of the weight bytes one swap replaces (the attn_q and attn_v matrices of "
    "every layer), median microseconds",
    [] {
      std::uint64_t bytes = 0;
      for (const auto& t : adapter(1).tensors) bytes += llm::find_lora_target(f32_model(), t.target)->bytes.size();
      std::vector<std::byte> from(bytes, std::byte{1}), to(bytes, std::byte{2}), other(bytes, std::byte{3});
      std::vector<double> us;
      for (int i = 0; i < kSwaps; ++i) {
        auto start = std::chrono::steady_clock::now();
        std::memcpy(to.data(), i % 2 == 0 ? from.data() : other.data(), bytes);
        us.push_back(std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - start).count());
      }
      if (to[bytes / 2] == std::byte{0}) throw std::runtime_error("memcpy baseline: no copy");
      return median(us);
    });

Register swap_ratio(Ratio{"llm_lora_swap_vs_memcpy_ratio", "llm_lora_swap_us", "llm_lora_swap_memcpy_us",
                          "LoRA swap time over a memcpy of the same weight bytes"});

}  // namespace
}  // namespace mmsb::bench
