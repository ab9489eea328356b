// bench/harness.hpp — the metric registry behind `mmsb-bench`.
//
// A metric is a named function that runs one repetition of a workload and returns one number. The driver runs
// each selected metric several times and reports the median, so every key in `mmsb-bench --json` is a median.
// Baselines are ordinary metrics measured in the same run; ratio metrics are computed from the medians.
//
// A metric group measures several keys in one go (building a million-node graph once for its build time, memory
// and wave latencies). Each repetition of a group runs in its own child process, so a key such as resident memory
// starts from a fresh heap every time.
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
  // Set for a group instead of run_once: `keys` (the JSON keys, in the order run_group returns their values) and
  // at most `max_repetitions` repetitions (0: as many as asked).
  std::vector<std::string> keys;
  std::function<std::vector<double>()> run_group;
  int max_repetitions = 0;
  bool heavy = false;  // left out of `mmsb-bench --quick` (a CI-sized run): minutes of work or big model files
};

// Marks a metric as heavy (not run under --quick).
struct Heavy {};

// A ratio key computed from two medians: value = numerator / denominator.
struct Ratio {
  std::string name;
  std::string numerator;
  std::string denominator;
  std::string description;
};

std::vector<Metric>& metrics();
std::vector<Ratio>& ratios();

// True under `mmsb-bench --quick`: workloads may use smaller sizes (each says which).
bool& quick_mode();

struct Register {
  Register(std::string name, std::string description, std::function<double()> run_once) {
    metrics().push_back({std::move(name), std::move(description), std::move(run_once), {}, {}, 0});
  }
  Register(std::string name, std::string description, std::function<double()> run_once, Heavy) {
    metrics().push_back({std::move(name), std::move(description), std::move(run_once), {}, {}, 0, true});
  }
  Register(Ratio ratio) { ratios().push_back(std::move(ratio)); }
};

struct RegisterGroup {
  RegisterGroup(std::string name, std::string description, std::vector<std::string> keys,
                std::function<std::vector<double>()> run_group, int max_repetitions) {
    metrics().push_back(
        {std::move(name), std::move(description), {}, std::move(keys), std::move(run_group), max_repetitions});
  }
};

// Runs `work` in a forked child process and returns what it returned, or throws std::runtime_error with the
// child's error (its exception message, or how it died). Each call starts from a copy of the parent's heap, so
// resident memory measured inside starts from the same point every time.
std::string run_in_child(const std::function<std::string()>& work);

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
