// The mmsb implementation of the graph workload (bench/graph_bench.hpp): one page per Shape page, one map node per
// Shape node, DEFERRED mode so a wave is timed apart from the commit that starts it. Nodes are declared with a
// GraphBuilder and one shared function (the way to build a large graph), or with one derive_map() call each
// (RunOptions::one_by_one).
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

MapFunction sum_function(std::size_t words, std::uint64_t iterations) {
  return [words, iterations](MapContext& c) {
    auto* out = reinterpret_cast<std::uint64_t*>(c.output().data());
    for (std::size_t w = 0; w < words; ++w) out[w] = 0;
    for (std::size_t i = 0; i < c.input_count(); ++i) {
      const auto* in = reinterpret_cast<const std::uint64_t*>(c.input(i).data());
      for (std::size_t w = 0; w < words; ++w) out[w] += in[w];
    }
    if (iterations) benchmark::DoNotOptimize(busy_work(out[0], iterations));
  };
}

// One map node per Shape node: with a GraphBuilder and one shared function, or one derive_map() call each.
void declare_nodes(Propagator& prop, const Shape& shape, const std::vector<PageId>& pages, const MapFunction& sum,
                   bool one_by_one) {
  std::vector<PageId> inputs;
  auto inputs_of = [&](std::size_t n) -> const std::vector<PageId>& {
    inputs.clear();
    for (std::uint32_t in : shape.inputs_of(n)) inputs.push_back(pages[in]);
    return inputs;
  };
  if (one_by_one) {
    for (std::size_t n = 0; n < shape.nodes(); ++n) prop.derive_map(pages[shape.sources + n], inputs_of(n), sum);
    return;
  }
  GraphBuilder build(prop);
  build.reserve(shape.nodes(), shape.edges());
  const GraphBuilder::FunctionId shared = build.add_map_function(sum);
  for (std::size_t n = 0; n < shape.nodes(); ++n) build.derive_map(pages[shape.sources + n], inputs_of(n), shared);
  build.commit();
}

// The graph under test and the source values last committed.
struct Graph {
  Runtime& rt;
  Propagator& prop;
  const Shape& shape;
  const std::vector<PageId>& pages;
  std::size_t words;
  std::vector<std::uint64_t> source_values;
};

// Waves in which every source changes (so every node runs); as many as fit in about a second unless told.
Percentiles time_full_waves(Graph& g, int full_waves) {
  std::vector<std::uint64_t> buffer;
  std::vector<double> samples;
  const int max_full = full_waves > 0 ? full_waves : 100;
  const auto full_start = clock_type::now();
  for (int r = 0; r < max_full; ++r) {
    {
      auto txn = g.rt.begin();
      for (std::uint32_t s = 0; s < g.shape.sources; ++s) {
        g.source_values[s] = static_cast<std::uint64_t>(r + 1) * 1000003 + s;
        write_words(txn, g.pages[s], g.words, g.source_values[s], buffer);
      }
      txn.commit();
    }
    const auto start = clock_type::now();
    g.prop.propagate();
    samples.push_back(since(start));
    if (full_waves == 0 && r >= 2 && since(full_start) > 1e9) break;
  }
  check(g.rt, g.shape, g.pages, g.source_values, "the full waves");
  return Percentiles::of(samples);
}

// Waves from one changed source (picked pseudo-randomly); `reached` is set to the node runs per wave.
Percentiles time_small_waves(Graph& g, int small_waves, double& reached) {
  std::vector<std::uint64_t> buffer;
  std::vector<double> samples;
  std::uint64_t pick = 12345, ran = 0;
  for (int r = 0; r < small_waves; ++r) {
    pick = pick * 6364136223846793005ull + 1442695040888963407ull;
    const std::uint32_t s = static_cast<std::uint32_t>((pick >> 33) % g.shape.sources);
    ++g.source_values[s];
    {
      auto txn = g.rt.begin();
      write_words(txn, g.pages[s], g.words, g.source_values[s], buffer);
      txn.commit();
    }
    const PropagationStats before = g.prop.stats();
    const auto start = clock_type::now();
    g.prop.propagate();
    samples.push_back(since(start));
    const PropagationStats after = g.prop.stats();
    ran += (after.nodes_recomputed + after.nodes_cut_off) - (before.nodes_recomputed + before.nodes_cut_off);
  }
  check(g.rt, g.shape, g.pages, g.source_values, "the single-source waves");
  reached = static_cast<double>(ran) / std::max(1, small_waves);
  return Percentiles::of(samples);
}

}  // namespace

Result run_mmsb(const Shape& shape, const RunOptions& options) {
  Result result;
  result.implementation = "mmsb";
  result.nodes = shape.nodes();
  result.edges = shape.edges();
  result.depth = shape.depth();
  std::vector<PageId> pages(shape.pages());

  warm_up(options.threads, options.work_ns);
  const double rss_before = resident_bytes();
  auto start = clock_type::now();
  Runtime rt;
  Propagator prop(rt, PropagatorOptions{.mode = PropagationMode::Deferred, .threads = options.threads});
  for (auto& page : pages) page = rt.create_page(options.payload);
  declare_nodes(prop, shape, pages, sum_function(options.payload / 8, iterations_for_ns(options.work_ns)),
                options.one_by_one);
  result.build_ns = since(start);

  // Every node runs once (all stale); the first such wave also builds the execution plan.
  start = clock_type::now();
  prop.recompute_all();
  const double first = since(start);
  result.bytes = resident_bytes() - rss_before;
  start = clock_type::now();
  prop.recompute_all();
  result.plan_ns = std::max(0.0, first - since(start));

  Graph graph{rt, prop, shape, pages, options.payload / 8, std::vector<std::uint64_t>(shape.sources, 0)};
  result.full_wave_ns = time_full_waves(graph, options.full_waves);
  result.small_wave_ns = time_small_waves(graph, options.small_waves, result.small_reached);
  return result;
}

double rollback_ns_per_node(std::size_t nodes) {
  Runtime rt;
  Propagator prop(rt, PropagatorOptions{.mode = PropagationMode::Deferred});
  std::vector<PageId> pages(nodes);
  for (auto& page : pages) page = rt.create_page(8);
  const MapFunction copy = sum_function(1, 0);
  GraphBuilder build(prop);
  build.reserve(nodes, nodes);
  const GraphBuilder::FunctionId shared = build.add_map_function(copy);
  for (std::size_t n = 0; n + 1 < nodes; ++n) build.derive_map(pages[n + 1], {pages[n]}, shared);
  build.derive_map(pages[0], {pages[nodes - 1]}, shared);  // closes a cycle through the whole chain: refused
  const auto start = clock_type::now();
  try {
    build.commit();
  } catch (const Error&) {
    const double ns = since(start);
    if (prop.node_count() != 0) throw std::runtime_error("mmsb: a refused build left nodes behind");
    return ns / static_cast<double>(nodes);
  }
  throw std::runtime_error("mmsb: a build closing a cycle was not refused");
}

}  // namespace mmsb::bench::graph
