// bench/graph_bench.hpp — one dependency-graph workload, run on several implementations (`mmsb-bench graph`).
//
// Each implementation builds the same Shape (bench/graph_shape.hpp) and measures, in this order:
//   build     creating the pages (mmsb) or value arrays (baselines) and declaring every node and edge
//   plan      the first wave minus the second: the work done once per graph version (mmsb's execution plan;
//             thread start-up and first-touch for the baselines)
//   bytes     resident memory growth from before the build to after the first wave (every page's value included)
//   full      a wave in which every source changed and so every node runs (mmsb: one commit of all sources in
//             DEFERRED mode, then propagate() is timed; baselines: set the values, then run the graph)
//   small     a wave from one changed source (mmsb: commit one source, time propagate(); oneTBB: where every page
//             has at most one reader, serial function_nodes that pass messages only along the edges out of the
//             changed source, which runs exactly the reached nodes; otherwise the whole continue_node graph, each
//             body skipping when none of its inputs changed in the wave, as a static TBB graph has to)
// Every implementation checks every node's value against reference_values() after its full and small waves and
// throws std::runtime_error when one is wrong. Memory is only meaningful when the run starts in a fresh process
// (run_in_child), which the driver does for each implementation.
//
// Thread-safety: none; one run at a time per process.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "bench/graph_shape.hpp"

namespace mmsb::bench::graph {

struct RunOptions {
  unsigned threads = 1;
  std::size_t payload = 8;  // bytes per page, a multiple of 8
  double work_ns = 0;       // busy work per node run
  int full_waves = 0;       // 0: as many as fit in about a second (at least 3, at most 100)
  int small_waves = 300;
  bool one_by_one = false;  // mmsb: one derive_map() per node instead of a GraphBuilder
};

struct Percentiles {
  double p50 = 0, p99 = 0;
  std::size_t count = 0;
  static Percentiles of(std::vector<double> samples);
};

struct Result {
  std::string implementation;
  std::size_t nodes = 0, edges = 0, depth = 0;
  double build_ns = 0, plan_ns = 0, bytes = 0;
  Percentiles full_wave_ns, small_wave_ns;
  double small_reached = 0;  // node runs per single-source wave (mean)

  double build_ns_per_node() const { return (build_ns + plan_ns) / static_cast<double>(nodes); }
  double bytes_per_node() const { return bytes / static_cast<double>(nodes); }
  double full_wave_ns_per_node() const { return full_wave_ns.p50 / static_cast<double>(nodes); }

  std::string serialize() const;  // one line of numbers, for run_in_child
  static Result parse(const std::string& implementation, const std::string& line);
};

Result run_mmsb(const Shape& shape, const RunOptions& options);
Result run_tbb(const Shape& shape, const RunOptions& options);
// A GraphBuilder commit of a chain of `nodes` map nodes whose last node closes a cycle, so the engine adds every
// node and then rolls them all back: nanoseconds per node of the refused commit.
double rollback_ns_per_node(std::size_t nodes);

// Resident set size of this process, in bytes.
double resident_bytes();
// Process-wide one-time costs that are no part of a graph: TBB's worker threads, mmsb's page allocator (its
// hwloc topology) and clock calibration. Every implementation calls it before it starts measuring.
void warm_up(unsigned threads, double work_ns);

// `mmsb-bench graph`: runs the selected implementations on `shape` (each in a child process) and prints a table,
// or JSON when `json` is set. Returns the process exit code.
int run_graph_command(const Shape& shape, const RunOptions& options, const std::vector<std::string>& implementations,
                      bool json);

}  // namespace mmsb::bench::graph
