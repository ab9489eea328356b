// mmsb-bench: runs the registered metrics and prints their medians (a table, or one JSON object with --json).
// This is the only translation unit that includes CLI11.
#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

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

#include "bench/graph_bench.hpp"
#include "bench/harness.hpp"
#include "mmsb/error.hpp"

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

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{
      "mmsb-bench: measures mmsb against raw baselines (memcpy, memcmp, malloc, ...) in the same run.\n"
      "Each metric is the median of several repetitions; values are nanoseconds unless the key says otherwise\n"
      "(_per_s: operations per second, _ratio: dimensionless, _ms: milliseconds)."};
  bool json = false, list = false;
  std::string filter = ".*";
  int repetitions = 7;
  app.add_flag("--json", json, "Print one JSON object {key: number} on stdout instead of a table");
  app.add_flag("--list", list, "List the metric keys with a description and exit");
  app.add_option("--filter", filter, "Only run metrics whose key matches this regular expression (ECMAScript)")
      ->capture_default_str();
  app.add_option("--repetitions,-r", repetitions, "Repetitions per metric; the median is reported")
      ->check(CLI::Range(1, 1000))
      ->capture_default_str();
  app.add_flag("--quick", mmsb::bench::quick_mode(), "Smaller workloads where a key allows it (scale_*: 10^5 leaves)");

  // mmsb-bench graph: one dependency-graph workload on mmsb and raw oneTBB, side by side.
  CLI::App* graph = app.add_subcommand(
      "graph",
      "Build a dependency graph (a generated shape, or an edge list / Graphviz dot file) on mmsb and on raw "
      "oneTBB in the same run; report build time, memory, full and single-source wave latency");
  std::string shape_name = "tree", shape_file;
  std::size_t nodes = 100'000;
  unsigned fanin = 8;
  std::string implementation_list = "mmsb,tbb";
  mmsb::bench::graph::RunOptions run_options;
  graph->add_option("--shape", shape_name, "chain | tree | lattice | random")
      ->check(CLI::IsMember({"chain", "tree", "lattice", "random"}))
      ->capture_default_str();
  graph->add_option("--nodes", nodes, "Nodes (tree: leaves, each with a map node under the sum tree)")
      ->check(CLI::Range(std::size_t{1}, std::size_t{1} << 28))
      ->capture_default_str();
  graph->add_option("--fanin", fanin, "Inputs per node (tree, lattice, random)")
      ->check(CLI::Range(1u, 1024u))
      ->capture_default_str();
  graph->add_option("--file", shape_file, "Read the graph from an edge list ('from to' lines) or a .dot/.gv file");
  graph->add_option("--payload", run_options.payload, "Bytes per page (a multiple of 8)")
      ->check(CLI::Range(std::size_t{8}, std::size_t{1} << 20))
      ->capture_default_str();
  graph->add_option("--work", run_options.work_ns, "Busy work per node run, in ns")->capture_default_str();
  graph->add_option("--threads", run_options.threads, "Worker threads")
      ->check(CLI::Range(1u, 256u))
      ->capture_default_str();
  graph->add_option("--full-waves", run_options.full_waves, "Full waves to time (0: about a second's worth)")
      ->capture_default_str();
  graph->add_option("--small-waves", run_options.small_waves, "Single-source waves to time")
      ->check(CLI::Range(1, 1'000'000))
      ->capture_default_str();
  graph->add_option("--impl", implementation_list, "Implementations to run, comma-separated, in order (mmsb, tbb)")
      ->capture_default_str();
  graph->add_flag("--one-by-one", run_options.one_by_one,
                  "mmsb: declare each node with derive_map() instead of one GraphBuilder commit");
  graph->add_flag("--json", json, "Print JSON instead of a table");
  CLI11_PARSE(app, argc, argv);

  if (graph->parsed()) {
    if (run_options.payload % 8 != 0) {
      std::fprintf(stderr, "mmsb-bench graph: --payload must be a multiple of 8\n");
      return 2;
    }
    try {
      const auto shape = shape_file.empty() ? mmsb::bench::graph::make_shape(shape_name, nodes, fanin)
                                            : mmsb::bench::graph::load_shape(shape_file);
      std::vector<std::string> implementations;
      std::stringstream names(implementation_list);
      for (std::string name; std::getline(names, name, ',');)
        if (!name.empty()) implementations.push_back(name);
      return mmsb::bench::graph::run_graph_command(shape, run_options, implementations, json);
    } catch (const std::exception& e) {
      std::fprintf(stderr, "mmsb-bench graph: %s\n", e.what());
      return 2;
    }
  }

  auto& all = mmsb::bench::metrics();
  std::sort(all.begin(), all.end(), [](const auto& a, const auto& b) { return a.name < b.name; });
  if (list) {
    for (const auto& m : all) {
      std::printf("%-28s %s\n", m.name.c_str(), m.description.c_str());
      for (const auto& k : m.keys) std::printf("  %-26s (key of %s)\n", k.c_str(), m.name.c_str());
    }
    for (const auto& r : mmsb::bench::ratios()) std::printf("%-28s %s\n", r.name.c_str(), r.description.c_str());
    return 0;
  }
  std::regex pattern;
  try {
    pattern = std::regex(filter);
  } catch (const std::regex_error& e) {
    std::fprintf(stderr, "mmsb-bench: --filter '%s' is not a valid regular expression: %s\n", filter.c_str(), e.what());
    return 2;
  }

  const bool progress = isatty(STDERR_FILENO);
  std::map<std::string, double> results;
  std::vector<const mmsb::bench::Metric*> selected;
  auto matches = [&](const mmsb::bench::Metric& m, const std::string& key) {
    return m.name == key || std::find(m.keys.begin(), m.keys.end(), key) != m.keys.end();
  };
  for (const auto& m : all) {
    bool any = std::regex_search(m.name, pattern);
    for (const auto& k : m.keys) any = any || std::regex_search(k, pattern);
    if (any) selected.push_back(&m);
  }
  // A ratio needs both of its inputs: run them when the ratio itself is selected.
  for (const auto& r : mmsb::bench::ratios()) {
    if (!std::regex_search(r.name, pattern)) continue;
    for (const auto& m : all) {
      if ((matches(m, r.numerator) || matches(m, r.denominator)) &&
          std::find(selected.begin(), selected.end(), &m) == selected.end())
        selected.push_back(&m);
    }
  }
  if (selected.empty()) {
    std::fprintf(stderr, "mmsb-bench: no metric matches --filter '%s'; see --list\n", filter.c_str());
    return 2;
  }
  std::size_t index = 0;
  for (const auto* m : selected) {
    ++index;
    if (progress) std::fprintf(stderr, "\r[%zu/%zu] %-40s", index, selected.size(), m->name.c_str());
    std::string error;
    if (!run_isolated(*m, repetitions, results, error)) {
      std::fprintf(stderr, "\nmmsb-bench: metric %s failed: %s\n", m->name.c_str(), error.c_str());
      return 1;
    }
  }
  if (progress) std::fprintf(stderr, "\r%-60s\r", "");
  for (const auto& r : mmsb::bench::ratios()) {
    if (!std::regex_search(r.name, pattern)) continue;
    auto num = results.find(r.numerator), den = results.find(r.denominator);
    if (num != results.end() && den != results.end() && den->second != 0) results[r.name] = num->second / den->second;
  }

  if (json) {
    nlohmann::ordered_json out = nlohmann::ordered_json::object();
    for (const auto& [key, value] : results) out[key] = std::isfinite(value) ? value : 0.0;
    std::cout << out.dump(2) << std::endl;
  } else {
    for (const auto& [key, value] : results) std::printf("%-28s %14.3f\n", key.c_str(), value);
  }
  return 0;
}
