// Propagation metrics: waves through chains, fan-outs and lattices of map nodes, parallel scaling, the cost of the
// incremental cycle check, and BATCH throughput. The raw-TBB twin of hop_ns is in bench/tbb_baseline_bench.cpp.
// Each workload checks its own result once (throws std::runtime_error when it is wrong).
//
//   hop_ns              chain of 1000 map nodes copying 8 bytes; one source commit per wave; time per wave / 1000
//   hop_vs_tbb_paired_ratio  hop_ns over tbb_hop_ns with both chains in one process, timed in alternating slices
//   fanout_1000_ns      one source, 1000 direct map dependents; one commit, whole wave
//   diamond_wave_ns     10 layers x 100 lattice, each node reads two nodes of the layer above; whole wave
//   scaling_2t          wave time with 1 thread / with 2 threads, 10,000 independent ~20 us nodes (ratio)
//   cycle_check_10k_ms  add_dependency(CONTROL) of an edge against the local topological order, 10,000 pages
//   deltas_per_s_batch  BATCH: 1,000,000 8-byte commits over 1,000 sources, then one propagate(), per second
//   deltas_per_cpu_s_batch  the same run per second of the process's CPU time
#include <benchmark/benchmark.h>

#include <time.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "bench/harness.hpp"
#include "bench/tbb_chain.hpp"
#include "mmsb/graph.hpp"
#include "mmsb/mmsb.hpp"

namespace mmsb::bench {
namespace {

using clock_type = std::chrono::steady_clock;

[[noreturn]] void check_failed(const std::string& what) { throw std::runtime_error(what); }

double elapsed_ns(clock_type::time_point start) {
  return std::chrono::duration<double, std::nano>(clock_type::now() - start).count();
}

void commit_u64(Runtime& rt, PageId page, std::uint64_t value) {
  auto txn = rt.begin();
  txn.write_value<std::uint64_t>(page, 0, value);
  txn.commit();
}

void copy_8_bytes(MapContext& c) { std::memcpy(c.output().data(), c.input(0).data(), sizeof(std::uint64_t)); }

// A source page and a chain of `length` map nodes copying it along: {source, the chain's last page}.
std::pair<PageId, PageId> copy_chain(Runtime& rt, Propagator& prop, int length) {
  const PageId source = rt.create_page(8);
  PageId last = source;
  for (int i = 0; i < length; ++i) {
    const PageId next = rt.create_page(8);
    prop.derive_map(next, {last}, copy_8_bytes);
    last = next;
  }
  return {source, last};
}

Register hop("hop_ns",
             "mmsb: chain of 1000 map nodes copying 8 bytes, one source commit per wave; time per wave / 1000", [] {
               constexpr int kChain = 1000;
               Runtime rt;
               Propagator prop(rt);
               const auto [source, last] = copy_chain(rt, prop, kChain);
               std::uint64_t value = 0;
               commit_u64(rt, source, ++value);
               if (rt.read_value<std::uint64_t>(last, 0) != value)
                 check_failed("hop_ns: the chain's end was not updated");
               const double ns = ns_per_op([&] { commit_u64(rt, source, ++value); });
               if (rt.read_value<std::uint64_t>(last, 0) != value) check_failed("hop_ns: the chain's end is stale");
               return ns / kChain;
             });

Register hop_ratio(Ratio{"hop_vs_tbb_ratio", "hop_ns", "tbb_hop_ns",
                         "hop_ns / tbb_hop_ns: mmsb per-hop cost over a raw tbb::flow continue_node chain"});

// hop_vs_tbb_ratio divides medians taken in two processes a few seconds apart, so it also measures how the machine
// changed in between (another process on the sibling core, the host): here both chains are built in one process
// and timed in alternating 10 ms slices, and the median of the slices' ratios is reported.
Register hop_paired("hop_vs_tbb_paired_ratio",
                    "hop_ns / tbb_hop_ns measured in one process: both chains timed in 9 alternating pairs of 10 ms "
                    "slices; the median of the pairs' ratios",
                    [] {
                      constexpr int kChain = 1000, kPairs = 9;
                      Runtime rt;
                      Propagator prop(rt);
                      const auto [source, last] = copy_chain(rt, prop, kChain);
                      TbbChain chain(kChain);
                      std::uint64_t value = 0, tbb_value = 0;
                      commit_u64(rt, source, ++value);
                      chain.wave(++tbb_value);
                      std::vector<double> ratios;
                      for (int pair = 0; pair < kPairs; ++pair) {
                        const double mmsb_ns =
                            ns_per_op([&] { commit_u64(rt, source, ++value); }, std::chrono::milliseconds(10));
                        const double tbb_ns =
                            ns_per_op([&] { chain.wave(++tbb_value); }, std::chrono::milliseconds(10));
                        ratios.push_back(mmsb_ns / tbb_ns);
                      }
                      if (rt.read_value<std::uint64_t>(last, 0) != value || chain.last() != tbb_value)
                        check_failed("hop_vs_tbb_paired_ratio: a chain's end is stale");
                      std::nth_element(ratios.begin(), ratios.begin() + kPairs / 2, ratios.end());
                      return ratios[kPairs / 2];
                    });

Register fanout("fanout_1000_ns",
                "mmsb: one source, 1000 direct map dependents copying 8 bytes; one commit, whole wave", [] {
                  constexpr int kWidth = 1000;
                  Runtime rt;
                  Propagator prop(rt);
                  PageId source = rt.create_page(8);
                  std::vector<PageId> outs;
                  for (int i = 0; i < kWidth; ++i) {
                    outs.push_back(rt.create_page(8));
                    prop.derive_map(outs.back(), {source}, copy_8_bytes);
                  }
                  std::uint64_t value = 0;
                  commit_u64(rt, source, ++value);
                  for (PageId p : outs)
                    if (rt.read_value<std::uint64_t>(p, 0) != value)
                      check_failed("fanout_1000_ns: a dependent is stale");
                  const double ns = ns_per_op([&] { commit_u64(rt, source, ++value); });
                  if (rt.read_value<std::uint64_t>(outs[kWidth / 2], 0) != value)
                    check_failed("fanout_1000_ns: a dependent is stale after timing");
                  return ns;
                });

Register diamond("diamond_wave_ns",
                 "mmsb: 10 layers x 100 lattice (node i reads nodes i and i+1 of the layer above, sums them); one "
                 "source change, whole wave",
                 [] {
                   constexpr int kLayers = 10, kWidth = 100;
                   Runtime rt;
                   Propagator prop(rt);
                   PageId source = rt.create_page(8);
                   std::vector<PageId> previous;
                   for (int i = 0; i < kWidth; ++i) {
                     previous.push_back(rt.create_page(8));
                     prop.derive_map(previous.back(), {source}, copy_8_bytes);
                   }
                   for (int layer = 1; layer < kLayers; ++layer) {
                     std::vector<PageId> current;
                     for (int i = 0; i < kWidth; ++i) {
                       current.push_back(rt.create_page(8));
                       prop.derive_map(current.back(), {previous[i], previous[(i + 1) % kWidth]}, [](MapContext& c) {
                         c.output_as<std::uint64_t>() = c.input_as<std::uint64_t>(0) + c.input_as<std::uint64_t>(1);
                       });
                     }
                     previous = std::move(current);
                   }
                   // Layer L holds 2^L * value; the last layer (L = 9) holds 512 * value.
                   std::uint64_t value = 0;
                   commit_u64(rt, source, ++value);
                   for (PageId p : previous)
                     if (rt.read_value<std::uint64_t>(p, 0) != 512 * value)
                       check_failed("diamond_wave_ns: the last layer is wrong");
                   const double ns = ns_per_op([&] { commit_u64(rt, source, ++value); });
                   if (rt.read_value<std::uint64_t>(previous[7], 0) != 512 * value)
                     check_failed("diamond_wave_ns: the last layer is stale after timing");
                   return ns;
                 });

// ~20 us of deterministic integer mixing, calibrated once.
std::uint64_t mix_loop(std::uint64_t x, std::uint64_t iterations) {
  for (std::uint64_t i = 0; i < iterations; ++i) {
    x ^= x >> 31;
    x *= 0x9E3779B97F4A7C15ULL;
    x += i;
  }
  return x;
}

std::uint64_t iterations_for_20us() {
  static const std::uint64_t iterations = [] {
    constexpr std::uint64_t kProbe = 4'000'000;
    std::uint64_t sink = 0;
    double best = 1e300;
    for (int r = 0; r < 3; ++r) {
      auto start = clock_type::now();
      sink += mix_loop(r + 1, kProbe);
      best = std::min(best, elapsed_ns(start));
    }
    benchmark::DoNotOptimize(sink);
    const double per_iteration = best / static_cast<double>(kProbe);
    return std::max<std::uint64_t>(1, static_cast<std::uint64_t>(20'000.0 / per_iteration));
  }();
  return iterations;
}

// Time of one wave through 10,000 independent ~20 us map nodes (best of two, after a warm-up wave).
double wide_wave_ns(unsigned threads) {
  constexpr int kWidth = 10'000;
  const std::uint64_t iterations = iterations_for_20us();
  Runtime rt;
  Propagator prop(rt, PropagatorOptions{.threads = threads});
  PageId source = rt.create_page(8);
  std::vector<PageId> outs;
  outs.reserve(kWidth);
  for (int i = 0; i < kWidth; ++i) {
    outs.push_back(rt.create_page(8));
    prop.derive_map(outs.back(), {source}, [i, iterations](MapContext& c) {
      c.output_as<std::uint64_t>() = mix_loop(c.input_as<std::uint64_t>(0) + static_cast<std::uint64_t>(i), iterations);
    });
  }
  std::uint64_t value = 1;
  commit_u64(rt, source, value);  // warm-up: builds the plan
  double best = 1e300;
  for (int r = 0; r < 2; ++r) {
    auto start = clock_type::now();
    commit_u64(rt, source, ++value);
    best = std::min(best, elapsed_ns(start));
  }
  for (int i : {0, kWidth / 3, kWidth - 1})
    if (rt.read_value<std::uint64_t>(outs[i], 0) != mix_loop(value + static_cast<std::uint64_t>(i), iterations))
      check_failed("scaling_2t: a node's output is wrong");
  return best;
}

Register scaling("scaling_2t",
                 "mmsb: wave time with threads=1 / with threads=2, 10,000 independent ~20 us map nodes on one source "
                 "(ratio; 2 is perfect)",
                 [] {
                   const double one = wide_wave_ns(1);
                   const double two = wide_wave_ns(2);
                   return one / two;
                 });

Register cycle_check("cycle_check_10k_ms",
                     "mmsb: add_dependency(CONTROL) of an edge that goes against the local topological order "
                     "(no cycle), graph of 10,000 pages (100 chains x 100); mean over 99 edges, in ms",
                     [] {
                       constexpr int kChains = 100, kLength = 100;
                       Runtime rt;
                       Propagator prop(rt);
                       std::vector<std::vector<PageId>> chains(kChains);
                       for (auto& chain : chains) {
                         chain.push_back(rt.create_page(8));
                         for (int i = 1; i < kLength; ++i) {
                           chain.push_back(rt.create_page(8));
                           prop.derive_map(chain[i], {chain[i - 1]}, copy_8_bytes);
                         }
                       }
                       // The first derived page of chain k+1 was added right after chain k's tail, so it sits
                       // just after it in the topological order (whether new sources are ordered first or in
                       // creation order). The edge chain[k+1][1] -> chain[k].back() contradicts the order between
                       // neighbours and closes no cycle (the chains are otherwise independent): the incremental
                       // check must reorder, but only locally.
                       double total_ns = 0;
                       for (int k = 0; k + 1 < kChains; ++k) {
                         auto start = clock_type::now();
                         prop.add_dependency(chains[k + 1][1], chains[k].back(), EdgeKind::Control);
                         total_ns += elapsed_ns(start);
                       }
                       // Check: the edges are there, so their reverse would close a cycle.
                       bool refused = false;
                       try {
                         prop.add_dependency(chains[0].back(), chains[1][1], EdgeKind::Control);
                       } catch (const Error& e) {
                         refused = e.code() == ErrorCode::InvalidArgument;
                       }
                       if (!refused) check_failed("cycle_check_10k_ms: a cycle-closing edge was accepted");
                       if (prop.node_count() != static_cast<std::size_t>(kChains * (kLength - 1)))
                         check_failed("cycle_check_10k_ms: wrong node count");
                       return total_ns / (kChains - 1) / 1e6;
                     });

// CPU time of this process, all threads, user and system (page faults included).
double process_cpu_ns() {
  timespec ts{};
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) * 1e9 + static_cast<double>(ts.tv_nsec);
}

// The commits' rate over wall time, and over the process's CPU time beside it: the loop runs on one thread, so on an
// otherwise idle CPU the two agree, while on a shared one the wall clock also counts the slices the scheduler gives
// other processes on that CPU (see docs/benchmarks.md, issue 18, session 13).
RegisterGroup batch(
    "batch_commits",
    "mmsb BATCH: 1,000,000 8-byte commits round-robin over 1,000 sources (each feeding a passthrough), then one "
    "propagate(); commits per second of wall time (deltas_per_s_batch) and of the process's CPU time",
    {"deltas_per_s_batch", "deltas_per_cpu_s_batch"},
    [] {
      constexpr int kSources = 1000, kCommits = 1'000'000;
      Runtime rt;
      Propagator prop(rt, PropagatorOptions{.mode = PropagationMode::Batch, .queue_capacity = 1 << 21});
      std::vector<PageId> sources, outs;
      for (int i = 0; i < kSources; ++i) {
        sources.push_back(rt.create_page(8));
        outs.push_back(rt.create_page(8));
        prop.derive_passthrough(outs.back(), sources.back());
      }
      const auto start = clock_type::now();
      const double cpu_start = process_cpu_ns();
      for (int i = 0; i < kCommits; ++i) commit_u64(rt, sources[i % kSources], static_cast<std::uint64_t>(i));
      prop.propagate();
      const double cpu_ns = process_cpu_ns() - cpu_start;
      const double wall_ns = elapsed_ns(start);
      for (int j = 0; j < kSources; ++j)
        if (rt.read_value<std::uint64_t>(outs[j], 0) != static_cast<std::uint64_t>(kCommits - kSources + j))
          check_failed("deltas_per_s_batch: a derived page does not hold its source's last value");
      return std::vector<double>{kCommits / (wall_ns / 1e9), kCommits / (cpu_ns / 1e9)};
    },
    0);

}  // namespace
}  // namespace mmsb::bench
