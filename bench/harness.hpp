// bench/harness.hpp — the metric registry behind `mmsb-bench`.
//
// A metric is a named function that runs one repetition of a workload and returns one number. The driver runs
// each selected metric several times and reports the median, so every key in `mmsb-bench --json` is a median.
// Baselines are ordinary metrics measured in the same run; ratio metrics are computed from the medians.
//
// Thread-safety: registration happens during static initialization; everything else runs on the driver thread.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

namespace mmsb::bench {

struct Metric {
  std::string name;         // the JSON key; nanoseconds unless the name says otherwise (_per_s, _ratio, _ms, ...)
  std::string description;  // one line for --list
  std::function<double()> run_once;
  bool quick = false;  // part of the CI-sized subset that `mmsb-bench --quick` runs
};

// Marks a metric as part of the `--quick` subset.
struct Quick {};

// A ratio key computed from two medians: value = numerator / denominator.
struct Ratio {
  std::string name;
  std::string numerator;
  std::string denominator;
  std::string description;
};

std::vector<Metric>& metrics();
std::vector<Ratio>& ratios();

struct Register {
  Register(std::string name, std::string description, std::function<double()> run_once) {
    metrics().push_back({std::move(name), std::move(description), std::move(run_once)});
  }
  Register(std::string name, std::string description, std::function<double()> run_once, Quick) {
    metrics().push_back({std::move(name), std::move(description), std::move(run_once), true});
  }
  Register(Ratio ratio) { ratios().push_back(std::move(ratio)); }
};

// Runs `op` in batches until about `budget` has elapsed and returns nanoseconds per call of `op`. `op` must do
// one unit of work; the batch size doubles until a batch takes long enough to time reliably.
template <class Op>
double ns_per_op(Op&& op, std::chrono::nanoseconds budget = std::chrono::milliseconds(40)) {
  using clock = std::chrono::steady_clock;
  std::uint64_t batch = 1;
  for (;;) {
    auto start = clock::now();
    for (std::uint64_t i = 0; i < batch; ++i) op();
    auto elapsed = clock::now() - start;
    if (elapsed >= budget || batch >= (std::uint64_t{1} << 34)) {
      return std::chrono::duration<double, std::nano>(elapsed).count() / static_cast<double>(batch);
    }
    batch *= 2;
  }
}

}  // namespace mmsb::bench
