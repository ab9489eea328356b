// `mmsb-bench graph` and the scale_* keys: the graph workload (bench/graph_bench.hpp) on mmsb and raw oneTBB,
// each in its own child process, with the results side by side.
//
//   scale_build_ns_per_node       fan-in tree (fan-in 8) of 10^6 leaves (10^5 with --quick): build + plan per node
//   scale_bytes_per_node          resident memory per node after the first wave (the 8-byte values included)
//   scale_full_wave_ns_per_node   a wave in which every node runs, per node (p50)
//   scale_small_wave_us_1m        a wave from one changed source in that tree (p50)
//   scale_small_wave_us_1k        the same in a tree of 10^3 leaves
//   scale_small_wave_visits_*     nodes such a wave reaches plus their inputs (mean over sources)
//   scale_small_wave_ns_per_visit_*  the p50 wave time over those visits
// and each with a tbb_ twin measured on raw oneTBB continue_nodes in the same run.
#include <oneapi/tbb/parallel_for.h>
#include <oneapi/tbb/task_arena.h>
#include <unistd.h>
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <stdexcept>

#include "bench/graph_bench.hpp"
#include "bench/harness.hpp"
#include "mmsb/runtime.hpp"

namespace mmsb::bench::graph {

Percentiles Percentiles::of(std::vector<double> samples) {
  Percentiles p;
  p.count = samples.size();
  if (samples.empty()) return p;
  std::sort(samples.begin(), samples.end());
  auto rank = [&](double q) {
    const auto k = static_cast<std::size_t>(std::ceil(q * static_cast<double>(samples.size())));
    return samples[std::min(samples.size() - 1, k == 0 ? 0 : k - 1)];
  };
  p.p50 = rank(0.50);
  p.p99 = rank(0.99);
  return p;
}

std::string Result::serialize() const {
  std::ostringstream out;
  out.precision(17);
  out << nodes << ' ' << edges << ' ' << depth << ' ' << build_ns << ' ' << plan_ns << ' ' << bytes << ' '
      << full_wave_ns.p50 << ' ' << full_wave_ns.p99 << ' ' << full_wave_ns.count << ' ' << small_wave_ns.p50 << ' '
      << small_wave_ns.p99 << ' ' << small_wave_ns.count << ' ' << small_reached;
  return out.str();
}

Result Result::parse(const std::string& implementation, const std::string& line) {
  Result r;
  r.implementation = implementation;
  std::istringstream in(line);
  in >> r.nodes >> r.edges >> r.depth >> r.build_ns >> r.plan_ns >> r.bytes >> r.full_wave_ns.p50 >>
      r.full_wave_ns.p99 >> r.full_wave_ns.count >> r.small_wave_ns.p50 >> r.small_wave_ns.p99 >>
      r.small_wave_ns.count >> r.small_reached;
  if (!in) throw std::runtime_error(implementation + ": malformed result '" + line + "'");
  return r;
}

double resident_bytes() {
  std::ifstream statm("/proc/self/statm");
  double size = 0, resident = 0;
  statm >> size >> resident;
  return resident * static_cast<double>(sysconf(_SC_PAGESIZE));
}

void warm_up(unsigned threads, double work_ns) {
  (void)iterations_for_ns(work_ns);
  {
    Runtime rt;
    rt.create_page(8);
  }
  oneapi::tbb::task_arena arena(static_cast<int>(threads));
  arena.execute([] { oneapi::tbb::parallel_for(0, 1000, [](int) {}); });
}

namespace {

Result run_isolated(const std::string& implementation, const Shape& shape, const RunOptions& options) {
  auto run = [&] {
    if (implementation == "mmsb") return run_mmsb(shape, options).serialize();
    if (implementation == "tbb") return run_tbb(shape, options).serialize();
    throw std::invalid_argument("unknown implementation '" + implementation + "'; use mmsb or tbb");
  };
  // MMSB_BENCH_IN_PROCESS (for profilers): no child; memory figures then include what earlier runs left.
  const std::string line = std::getenv("MMSB_BENCH_IN_PROCESS") ? run() : run_in_child(run);
  return Result::parse(implementation == "tbb" ? "oneTBB" : implementation, line);
}

nlohmann::ordered_json to_json(const Result& r) {
  return {{"nodes", r.nodes},
          {"edges", r.edges},
          {"depth", r.depth},
          {"build_ns_per_node", r.build_ns_per_node()},
          {"declare_ns", r.build_ns},
          {"plan_ns", r.plan_ns},
          {"bytes_per_node", r.bytes_per_node()},
          {"full_wave_ns_per_node", r.full_wave_ns_per_node()},
          {"full_wave_p50_ms", r.full_wave_ns.p50 / 1e6},
          {"full_wave_p99_ms", r.full_wave_ns.p99 / 1e6},
          {"full_waves", r.full_wave_ns.count},
          {"small_wave_p50_us", r.small_wave_ns.p50 / 1e3},
          {"small_wave_p99_us", r.small_wave_ns.p99 / 1e3},
          {"small_waves", r.small_wave_ns.count},
          {"small_wave_node_runs", r.small_reached}};
}

}  // namespace

int run_graph_command(const Shape& shape, const RunOptions& options, const std::vector<std::string>& implementations,
                      bool json) {
  std::vector<Result> results;
  for (const std::string& impl : implementations) {
    try {
      results.push_back(run_isolated(impl, shape, options));
    } catch (const std::exception& e) {
      std::fprintf(stderr, "mmsb-bench graph: %s failed: %s\n", impl.c_str(), e.what());
      return 1;
    }
  }
  if (json) {
    nlohmann::ordered_json out;
    out["shape"] = shape.description;
    out["nodes"] = shape.nodes();
    out["threads"] = options.threads;
    out["payload"] = options.payload;
    out["work_ns"] = options.work_ns;
    for (const Result& r : results) out[r.implementation] = to_json(r);
    std::cout << out.dump(2) << std::endl;
    return 0;
  }
  std::printf("%s: %zu nodes, %zu edges, depth %zu; payload %zu B, work %.0f ns, %u thread(s)\n",
              shape.description.c_str(), shape.nodes(), shape.edges(), shape.depth(), options.payload, options.work_ns,
              options.threads);
  std::printf("%-8s %12s %10s %12s %14s %12s %12s %12s %12s %9s\n", "", "build ns/n", "plan ms", "bytes/node",
              "full ns/node", "full p50 ms", "full p99 ms", "small p50 us", "small p99 us", "runs");
  for (const Result& r : results) {
    std::printf("%-8s %12.1f %10.2f %12.1f %14.1f %12.3f %12.3f %12.2f %12.2f %9.1f\n", r.implementation.c_str(),
                r.build_ns_per_node(), r.plan_ns / 1e6, r.bytes_per_node(), r.full_wave_ns_per_node(),
                r.full_wave_ns.p50 / 1e6, r.full_wave_ns.p99 / 1e6, r.small_wave_ns.p50 / 1e3,
                r.small_wave_ns.p99 / 1e3, r.small_reached);
  }
  if (results.size() == 2) {
    const Result &a = results[0], &b = results[1];
    std::printf("%s / %s: build %.2f, bytes %.2f, full wave %.2f, small wave %.2f\n", a.implementation.c_str(),
                b.implementation.c_str(), a.build_ns_per_node() / b.build_ns_per_node(),
                a.bytes_per_node() / b.bytes_per_node(), a.full_wave_ns_per_node() / b.full_wave_ns_per_node(),
                a.small_wave_ns.p50 / b.small_wave_ns.p50);
  }
  return 0;
}

namespace {

// The scale keys: the fan-in tree at 10^6 leaves (10^5 with --quick) plus a 10^3-leaf tree for the small wave.
constexpr unsigned kFanin = 8;

std::vector<double> scale_keys(bool tbb) {
  RunOptions small_options;
  small_options.full_waves = 3;
  const Shape small_tree = make_tree(1000, kFanin);
  const Result small = tbb ? run_tbb(small_tree, small_options) : run_mmsb(small_tree, small_options);
  RunOptions options;
  options.full_waves = 5;
  const Shape tree = make_tree(quick_mode() ? 100'000 : 1'000'000, kFanin);
  const Result big = tbb ? run_tbb(tree, options) : run_mmsb(tree, options);
  const double big_visits = tree.mean_source_wave_visits(), small_visits = small_tree.mean_source_wave_visits();
  return {big.build_ns_per_node(),
          big.bytes_per_node(),
          big.full_wave_ns_per_node(),
          big.small_wave_ns.p50 / 1e3,
          small.small_wave_ns.p50 / 1e3,
          static_cast<double>(big.depth),
          static_cast<double>(small.depth),
          big_visits,
          small_visits,
          big.small_wave_ns.p50 / big_visits,
          small.small_wave_ns.p50 / small_visits};
}

const std::vector<std::string> kScaleKeys = {"scale_build_ns_per_node",
                                             "scale_bytes_per_node",
                                             "scale_full_wave_ns_per_node",
                                             "scale_small_wave_us_1m",
                                             "scale_small_wave_us_1k",
                                             "scale_depth_1m",
                                             "scale_depth_1k",
                                             "scale_small_wave_visits_1m",
                                             "scale_small_wave_visits_1k",
                                             "scale_small_wave_ns_per_visit_1m",
                                             "scale_small_wave_ns_per_visit_1k"};

std::vector<std::string> with_prefix(const std::string& prefix, const std::vector<std::string>& keys) {
  std::vector<std::string> out;
  for (const auto& k : keys) out.push_back(prefix + k);
  return out;
}

RegisterGroup scale(
    "scale",
    "mmsb: fan-in tree (fan-in 8) of 10^6 leaves (10^5 with --quick): build+plan ns, resident bytes and "
    "full-wave ns per node; single-source wave us there and in a 10^3-leaf tree; tree depths; such a wave's "
    "node+input visits and ns per visit",
    kScaleKeys, [] { return scale_keys(false); }, 3);
RegisterGroup tbb_scale(
    "tbb_scale", "baseline: the scale_* workload on raw oneTBB continue_nodes (see scale_*)",
    with_prefix("tbb_", kScaleKeys), [] { return scale_keys(true); }, 3);

Register build_ratio(Ratio{"scale_build_vs_tbb_ratio", "scale_build_ns_per_node", "tbb_scale_build_ns_per_node",
                           "scale_build_ns_per_node / tbb_scale_build_ns_per_node (target <= 2)"});
Register bytes_ratio(Ratio{"scale_bytes_vs_tbb_ratio", "scale_bytes_per_node", "tbb_scale_bytes_per_node",
                           "scale_bytes_per_node / tbb_scale_bytes_per_node (target <= 1.5)"});
Register wave_ratio(Ratio{"scale_full_wave_vs_tbb_ratio", "scale_full_wave_ns_per_node",
                          "tbb_scale_full_wave_ns_per_node",
                          "scale_full_wave_ns_per_node / tbb_scale_full_wave_ns_per_node (target <= 0.4)"});
// Issue 18 asks for a single-source wave that costs O(nodes reached x their inputs): at 10^6 leaves within 2x of the
// same wave at 10^3 "for the same depth". The two trees differ in depth (8 and 5 levels), so the growth key compares
// the cost per node-and-input visit; the plain time ratio stays beside it.
Register small_ratio(Ratio{"scale_small_wave_growth_ratio", "scale_small_wave_ns_per_visit_1m",
                           "scale_small_wave_ns_per_visit_1k",
                           "scale_small_wave_ns_per_visit_1m / _1k: a single-source wave's cost per node and input "
                           "it visits, 10^6 leaves over 10^3 (target <= 2)"});
Register small_time_ratio(Ratio{"scale_small_wave_us_ratio", "scale_small_wave_us_1m", "scale_small_wave_us_1k",
                                "scale_small_wave_us_1m / scale_small_wave_us_1k: the plain times (depth 8 vs 5 "
                                "levels, ~61 vs ~32 visits; before session 10 this was the growth key)"});

// A refused bulk build is rolled back node by node; that must stay linear in the build's size.
Register rollback_1k("builder_rollback_ns_per_node_1k",
                     "mmsb: a GraphBuilder commit of a 10^3-node chain refused at its last node (a cycle), "
                     "rolled back: ns per node",
                     [] { return rollback_ns_per_node(1000); });
Register rollback_big("builder_rollback_ns_per_node",
                      "mmsb: the same refused commit of a 10^5-node chain: ns per node (linear: close to the 10^3 "
                      "figure)",
                      [] { return rollback_ns_per_node(100'000); });
Register rollback_ratio(Ratio{"builder_rollback_growth_ratio", "builder_rollback_ns_per_node",
                              "builder_rollback_ns_per_node_1k",
                              "builder_rollback_ns_per_node / builder_rollback_ns_per_node_1k: per-node cost of a "
                              "rolled-back bulk build at 10^5 over 10^3 nodes (target <= 2: linear)"});

}  // namespace
}  // namespace mmsb::bench::graph
