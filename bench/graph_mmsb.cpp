// The mmsb implementation of the graph workload (bench/graph_bench.hpp): one page per Shape page, one map node per
// Shape node, DEFERRED mode so a wave is timed apart from the commit that starts it.
#include <benchmark/benchmark.h>

#include <chrono>
#include <cstring>
#include <stdexcept>
#include <vector>

#include "bench/graph_bench.hpp"
#include "mmsb/graph.hpp"
#include "mmsb/mmsb.hpp"

namespace mmsb::bench::graph {
namespace {

using clock_type = std::chrono::steady_clock;

double since(clock_type::time_point start) {
  return std::chrono::duration<double, std::nano>(clock_type::now() - start).count();
}

void write_words(Transaction& txn, PageId page, std::size_t words, std::uint64_t value,
                 std::vector<std::uint64_t>& buffer) {
  buffer.assign(words, value);
  txn.write(page, 0, std::as_bytes(std::span<const std::uint64_t>(buffer)));
}

void check(const Runtime& rt, const Shape& shape, const std::vector<PageId>& pages,
           const std::vector<std::uint64_t>& sources, const char* after) {
  const std::vector<std::uint64_t> expected = reference_values(shape, sources);
  for (std::size_t p = shape.sources; p < shape.pages(); ++p) {
    if (rt.read_value<std::uint64_t>(pages[p], 0) != expected[p]) {
      throw std::runtime_error(std::string("mmsb: node ") + std::to_string(p - shape.sources) + " is wrong after " +
                               after);
    }
  }
}

}  // namespace

Result run_mmsb(const Shape& shape, const RunOptions& options) {
  const std::size_t words = options.payload / 8;
  const std::uint64_t iterations = iterations_for_ns(options.work_ns);
  Result result;
  result.implementation = "mmsb";
  result.nodes = shape.nodes();
  result.edges = shape.edges();
  result.depth = shape.depth();
  std::vector<PageId> pages(shape.pages());
  std::vector<PageId> inputs;

  warm_up(options.threads, options.work_ns);
  const double rss_before = resident_bytes();
  auto start = clock_type::now();
  Runtime rt;
  Propagator prop(rt, PropagatorOptions{.mode = PropagationMode::Deferred, .threads = options.threads});
  for (auto& page : pages) page = rt.create_page(options.payload);
  const MapFunction sum = [words, iterations](MapContext& c) {
    auto* out = reinterpret_cast<std::uint64_t*>(c.output().data());
    for (std::size_t w = 0; w < words; ++w) out[w] = 0;
    for (std::size_t i = 0; i < c.input_count(); ++i) {
      const auto* in = reinterpret_cast<const std::uint64_t*>(c.input(i).data());
      for (std::size_t w = 0; w < words; ++w) out[w] += in[w];
    }
    if (iterations) benchmark::DoNotOptimize(busy_work(out[0], iterations));
  };
  for (std::size_t n = 0; n < shape.nodes(); ++n) {
    inputs.clear();
    for (std::uint32_t in : shape.inputs_of(n)) inputs.push_back(pages[in]);
    prop.derive_map(pages[shape.sources + n], inputs, sum);
  }
  result.build_ns = since(start);

  // Every node runs once (all stale); the first such wave also builds the execution plan.
  start = clock_type::now();
  prop.recompute_all();
  const double first = since(start);
  result.bytes = resident_bytes() - rss_before;
  start = clock_type::now();
  prop.recompute_all();
  result.plan_ns = std::max(0.0, first - since(start));

  std::vector<std::uint64_t> source_values(shape.sources, 0), buffer;
  std::vector<double> samples;
  const int max_full = options.full_waves > 0 ? options.full_waves : 100;
  const auto full_start = clock_type::now();
  for (int r = 0; r < max_full; ++r) {
    {
      auto txn = rt.begin();
      for (std::uint32_t s = 0; s < shape.sources; ++s) {
        source_values[s] = static_cast<std::uint64_t>(r + 1) * 1000003 + s;
        write_words(txn, pages[s], words, source_values[s], buffer);
      }
      txn.commit();
    }
    start = clock_type::now();
    prop.propagate();
    samples.push_back(since(start));
    if (options.full_waves == 0 && r >= 2 && since(full_start) > 1e9) break;
  }
  check(rt, shape, pages, source_values, "the full waves");
  result.full_wave_ns = Percentiles::of(samples);

  samples.clear();
  std::uint64_t pick = 12345, ran = 0;
  for (int r = 0; r < options.small_waves; ++r) {
    pick = pick * 6364136223846793005ull + 1442695040888963407ull;
    const std::uint32_t s = static_cast<std::uint32_t>((pick >> 33) % shape.sources);
    ++source_values[s];
    {
      auto txn = rt.begin();
      write_words(txn, pages[s], words, source_values[s], buffer);
      txn.commit();
    }
    const PropagationStats before = prop.stats();
    start = clock_type::now();
    prop.propagate();
    samples.push_back(since(start));
    const PropagationStats after = prop.stats();
    ran += (after.nodes_recomputed + after.nodes_cut_off) - (before.nodes_recomputed + before.nodes_cut_off);
  }
  check(rt, shape, pages, source_values, "the single-source waves");
  result.small_wave_ns = Percentiles::of(samples);
  result.small_reached = static_cast<double>(ran) / std::max(1, options.small_waves);
  return result;
}

}  // namespace mmsb::bench::graph
