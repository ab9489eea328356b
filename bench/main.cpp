// mmsb-bench: runs the registered metrics and prints their medians (a table, or one JSON object with --json).
// This is the only translation unit that includes CLI11 (through program/options.hpp).
#include <nlohmann/json.hpp>

#include <sched.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <map>
#include <regex>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "bench/graph_bench.hpp"
#include "bench/harness.hpp"
#include "mmsb/error.hpp"
#include "program/options.hpp"

namespace {

double median_of(std::vector<double> samples) {
  std::sort(samples.begin(), samples.end());
  const std::size_t n = samples.size();
  return n % 2 ? samples[n / 2] : (samples[n / 2 - 1] + samples[n / 2]) / 2;
}

// Runs one metric's repetitions in a child process and returns the median. Each metric thus starts from a fresh
// heap, allocator and thread pool: a workload that ran before it (say, 1000 pages freed in an order that scatters
// the next allocations, or TBB workers still spinning) cannot change its numbers. A group runs each repetition in
// a child of its own and yields the median of each of its keys.
bool run_isolated(const mmsb::bench::Metric& metric, int repetitions, std::map<std::string, double>& results,
                  std::string& error) {
  const bool in_process = std::getenv("MMSB_BENCH_IN_PROCESS") != nullptr;  // for profilers and debuggers
  try {
    if (metric.run_group) {
      const int reps = metric.max_repetitions > 0 ? std::min(repetitions, metric.max_repetitions) : repetitions;
      std::vector<std::vector<double>> samples(metric.keys.size());
      for (int r = 0; r < reps; ++r) {
        std::vector<double> values;
        if (in_process) {
          values = metric.run_group();
        } else {
          std::istringstream reply(mmsb::bench::run_in_child([&] {
            std::ostringstream out;
            out.precision(17);
            for (double v : metric.run_group()) out << v << ' ';
            return out.str();
          }));
          for (double v; reply >> v;) values.push_back(v);
        }
        if (values.size() != metric.keys.size()) throw std::runtime_error("the group returned the wrong key count");
        for (std::size_t k = 0; k < values.size(); ++k) samples[k].push_back(values[k]);
      }
      for (std::size_t k = 0; k < metric.keys.size(); ++k) results[metric.keys[k]] = median_of(samples[k]);
      return true;
    }
    auto run = [&] {
      std::vector<double> samples;
      for (int r = 0; r < repetitions; ++r) samples.push_back(metric.run_once());
      return median_of(samples);
    };
    if (in_process) {
      results[metric.name] = run();
    } else {
      const std::string reply = mmsb::bench::run_in_child([&] {
        char text[64];
        std::snprintf(text, sizeof text, "%.17g", run());  // full precision: values can be tiny
        return std::string(text);
      });
      results[metric.name] = std::stod(reply);
    }
    return true;
  } catch (const std::exception& e) {
    error = e.what();
    return false;
  }
}

// --pin: binds this process, and so every metric's child, to one CPU before anything runs. On a shared VM the
// one-thread keys (hop_ns, deltas_per_s_batch) swing by up to 2x between runs with where the scheduler places
// the process; pinned they repeat within a few percent. Multi-threaded keys then share that one CPU.
void pin_to_cpu(int cpu) {
  cpu_set_t set;
  CPU_ZERO(&set);
  if (cpu >= CPU_SETSIZE) {
    throw mmsb::Error(mmsb::ErrorCode::InvalidArgument, "--pin " + std::to_string(cpu) + ": CPUs are numbered below " +
                                                            std::to_string(CPU_SETSIZE) + "; see `nproc`");
  }
  CPU_SET(cpu, &set);
  if (sched_setaffinity(0, sizeof set, &set) != 0) {
    throw mmsb::Error(mmsb::ErrorCode::InvalidArgument,
                      "--pin " + std::to_string(cpu) +
                          ": this process may not run on that CPU (`taskset -cp $$` lists those it may)");
  }
}

// The options of the metric run (the default command).
struct Settings {
  bool json = false, list = false;
  std::string filter = ".*";
  int repetitions = 7;
};

// The options of `mmsb-bench graph`.
struct GraphSettings {
  std::string shape = "tree", file;
  std::size_t nodes = 100'000;
  unsigned fanin = 8;
  std::string implementations = "mmsb,tbb";
  mmsb::bench::graph::RunOptions run;
};

CLI::App* add_graph_command(CLI::App& app, GraphSettings& g, bool& json) {
  CLI::App* graph = app.add_subcommand(
      "graph",
      "Build a dependency graph (a generated shape, or an edge list / Graphviz dot file) on mmsb and on raw "
      "oneTBB in the same run; report build time, memory, full and single-source wave latency");
  graph->add_option("--shape", g.shape, "chain | tree | lattice | random")
      ->check(CLI::IsMember({"chain", "tree", "lattice", "random"}))
      ->capture_default_str();
  graph->add_option("--nodes", g.nodes, "Nodes (tree: leaves, each with a map node under the sum tree)")
      ->check(mmsb::program::range(std::size_t{1}, std::size_t{1} << 28))
      ->capture_default_str();
  graph->add_option("--fanin", g.fanin, "Inputs per node (tree, lattice, random)")
      ->check(mmsb::program::range(1u, 1024u))
      ->capture_default_str();
  graph->add_option("--file", g.file, "Read the graph from an edge list ('from to' lines) or a .dot/.gv file");
  graph->add_option("--payload", g.run.payload, "Bytes per page (a multiple of 8)")
      ->check(mmsb::program::range(std::size_t{8}, std::size_t{1} << 20))
      ->capture_default_str();
  graph->add_option("--work", g.run.work_ns, "Busy work per node run, in ns")
      ->check(mmsb::program::range(0.0, 1e9))
      ->capture_default_str();
  graph->add_option("--threads", g.run.threads, "Worker threads")
      ->check(mmsb::program::range(1u, 256u))
      ->capture_default_str();
  graph->add_option("--full-waves", g.run.full_waves, "Full waves to time (0: about a second's worth)")
      ->check(mmsb::program::range(0, 1'000'000))
      ->capture_default_str();
  graph->add_option("--small-waves", g.run.small_waves, "Single-source waves to time")
      ->check(mmsb::program::range(1, 1'000'000))
      ->capture_default_str();
  graph->add_option("--impl", g.implementations, "Implementations to run, comma-separated, in order (mmsb, tbb)")
      ->capture_default_str();
  graph->add_flag("--one-by-one", g.run.one_by_one,
                  "mmsb: declare each node with derive_map() instead of one GraphBuilder commit");
  graph->add_flag("--json", json, "Print JSON instead of a table");
  return graph;
}

int run_graph(const GraphSettings& g, bool json) {
  if (g.run.payload % 8 != 0) {
    throw mmsb::Error(mmsb::ErrorCode::InvalidArgument, "graph: --payload must be a multiple of 8");
  }
  const auto shape = g.file.empty() ? mmsb::bench::graph::make_shape(g.shape, g.nodes, g.fanin)
                                    : mmsb::bench::graph::load_shape(g.file);
  std::vector<std::string> implementations;
  std::stringstream names(g.implementations);
  for (std::string name; std::getline(names, name, ',');)
    if (!name.empty()) implementations.push_back(name);
  return mmsb::bench::graph::run_graph_command(shape, g.run, implementations, json);
}

// The metrics `--filter` selects, with the inputs of every selected ratio.
std::vector<const mmsb::bench::Metric*> select_metrics(const std::vector<mmsb::bench::Metric>& all,
                                                       const std::regex& pattern) {
  std::vector<const mmsb::bench::Metric*> selected;
  auto matches = [&](const mmsb::bench::Metric& m, const std::string& key) {
    return m.name == key || std::find(m.keys.begin(), m.keys.end(), key) != m.keys.end();
  };
  for (const auto& m : all) {
    if (m.heavy && mmsb::bench::quick_mode()) continue;
    bool any = std::regex_search(m.name, pattern);
    for (const auto& k : m.keys) any = any || std::regex_search(k, pattern);
    if (any) selected.push_back(&m);
  }
  // A ratio needs both of its inputs: run them when the ratio itself is selected.
  for (const auto& r : mmsb::bench::ratios()) {
    if (!std::regex_search(r.name, pattern)) continue;
    for (const auto& m : all) {
      if (m.heavy && mmsb::bench::quick_mode()) continue;
      if ((matches(m, r.numerator) || matches(m, r.denominator)) &&
          std::find(selected.begin(), selected.end(), &m) == selected.end())
        selected.push_back(&m);
    }
  }
  return selected;
}

int run_metrics(const Settings& settings) {
  auto& all = mmsb::bench::metrics();
  std::sort(all.begin(), all.end(), [](const auto& a, const auto& b) { return a.name < b.name; });
  if (settings.list) {
    for (const auto& m : all) {
      std::printf("%-28s %s%s\n", m.name.c_str(), m.description.c_str(), m.heavy ? " [not in --quick]" : "");
      for (const auto& k : m.keys) std::printf("  %-26s (key of %s)\n", k.c_str(), m.name.c_str());
    }
    for (const auto& r : mmsb::bench::ratios()) std::printf("%-28s %s\n", r.name.c_str(), r.description.c_str());
    return 0;
  }
  std::regex pattern;
  try {
    pattern = std::regex(settings.filter);
  } catch (const std::regex_error& e) {
    throw mmsb::Error(mmsb::ErrorCode::InvalidArgument,
                      "--filter '" + settings.filter + "' is not a valid regular expression: " + e.what());
  }
  const std::vector<const mmsb::bench::Metric*> selected = select_metrics(all, pattern);
  if (selected.empty()) {
    throw mmsb::Error(mmsb::ErrorCode::InvalidArgument,
                      "no metric matches --filter '" + settings.filter + "'; see --list");
  }
  const bool progress = isatty(STDERR_FILENO);
  std::map<std::string, double> results;
  std::size_t index = 0;
  for (const auto* m : selected) {
    ++index;
    if (progress) std::fprintf(stderr, "\r[%zu/%zu] %-40s", index, selected.size(), m->name.c_str());
    std::string error;
    if (!run_isolated(*m, settings.repetitions, results, error)) {
      if (progress) std::fprintf(stderr, "\n");
      throw std::runtime_error("metric " + m->name + " failed: " + error);
    }
  }
  if (progress) std::fprintf(stderr, "\r%-60s\r", "");
  for (const auto& r : mmsb::bench::ratios()) {
    if (!std::regex_search(r.name, pattern)) continue;
    auto num = results.find(r.numerator), den = results.find(r.denominator);
    if (num != results.end() && den != results.end() && den->second != 0) results[r.name] = num->second / den->second;
  }
  if (settings.json) {
    nlohmann::ordered_json out = nlohmann::ordered_json::object();
    for (const auto& [key, value] : results) out[key] = std::isfinite(value) ? value : 0.0;
    std::cout << out.dump(2) << std::endl;
  } else {
    for (const auto& [key, value] : results) std::printf("%-28s %14.3f\n", key.c_str(), value);
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{
      "mmsb-bench: measures mmsb against raw baselines (memcpy, memcmp, malloc, ...) in the same run.\n"
      "Each metric is the median of several repetitions; values are nanoseconds unless the key says otherwise\n"
      "(_per_s: operations per second, _ratio: dimensionless, _ms: milliseconds)."};
  Settings settings;
  app.add_flag("--json", settings.json, "Print one JSON object {key: number} on stdout instead of a table");
  app.add_flag("--list", settings.list, "List the metric keys with a description and exit");
  app.add_option("--filter", settings.filter, "Only run metrics whose key matches this regular expression (ECMAScript)")
      ->capture_default_str();
  app.add_option("--repetitions,-r", settings.repetitions, "Repetitions per metric; the median is reported")
      ->check(mmsb::program::range(1, 1000))
      ->capture_default_str();
  app.add_flag("--quick", mmsb::bench::quick_mode(),
               "Smaller workloads where a key allows it (scale_*: 10^5 leaves); heavy keys (--list) left out");
  int pin = -1;
  app.add_option("--pin", pin,
                 "Run on this CPU only (like `taskset -c CPU`): steadier one-thread keys on a shared machine; "
                 "multi-threaded keys then share the one CPU")
      ->check(mmsb::program::range(0, 1 << 20));
  // mmsb-bench graph: one dependency-graph workload on mmsb and raw oneTBB, side by side.
  GraphSettings graph_settings;
  CLI::App* graph = add_graph_command(app, graph_settings, settings.json);
  return mmsb::program::run("mmsb-bench", app, argc, argv, [&] {
    if (pin >= 0) pin_to_cpu(pin);
    return graph->parsed() ? run_graph(graph_settings, settings.json) : run_metrics(settings);
  });
}
