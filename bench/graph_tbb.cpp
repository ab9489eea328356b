// The raw oneTBB implementation of the graph workload (bench/graph_bench.hpp): plain arrays of values, one
// continue_node per Shape node (a node with no node inputs hangs off one broadcast_node), as a careful TBB user
// would write it. Single-source waves use a second graph of serial function_nodes (see graph_bench.hpp).
#include <benchmark/benchmark.h>
#include <oneapi/tbb/flow_graph.h>
#include <oneapi/tbb/task_arena.h>

#include <atomic>
#include <chrono>
#include <deque>
#include <functional>
#include <memory>
#include <stdexcept>
#include <vector>

#include "bench/graph_bench.hpp"

namespace mmsb::bench::graph {
namespace {

namespace flow = oneapi::tbb::flow;
using clock_type = std::chrono::steady_clock;

double since(clock_type::time_point start) {
  return std::chrono::duration<double, std::nano>(clock_type::now() - start).count();
}

// What a node's body needs: where the values are, its inputs and its own index.
struct NodeBody {
  std::uint64_t* values;
  const std::uint32_t* inputs;
  std::uint32_t count;
  std::uint32_t me;
  std::uint32_t words;
  std::uint64_t iterations;
  void run() const {
    std::uint64_t* out = values + std::size_t{me} * words;
    for (std::uint32_t w = 0; w < words; ++w) out[w] = 0;
    for (std::uint32_t i = 0; i < count; ++i) {
      const std::uint64_t* in = values + std::size_t{inputs[i]} * words;
      for (std::uint32_t w = 0; w < words; ++w) out[w] += in[w];
    }
    if (iterations) benchmark::DoNotOptimize(busy_work(out[0], iterations));
  }
};

void check(const Shape& shape, const std::uint64_t* values, std::size_t words,
           const std::vector<std::uint64_t>& sources, const char* after) {
  const std::vector<std::uint64_t> expected = reference_values(shape, sources);
  for (std::size_t p = shape.sources; p < shape.pages(); ++p) {
    if (values[p * words] != expected[p]) {
      throw std::runtime_error(std::string("oneTBB: node ") + std::to_string(p - shape.sources) + " is wrong after " +
                               after);
    }
  }
}

NodeBody body_of(const Shape& shape, std::size_t n, std::uint64_t* values, const std::vector<std::uint32_t>& offsets,
                 const std::vector<std::uint32_t>& inputs, std::uint32_t words, std::uint64_t iterations) {
  return NodeBody{values,
                  inputs.data() + offsets[n],
                  offsets[n + 1] - offsets[n],
                  static_cast<std::uint32_t>(shape.sources + n),
                  words,
                  iterations};
}

// Edges from the nodes among node n's inputs to `node`; a node with no node inputs hangs off `begin`.
template <class Node>
void connect(const Shape& shape, std::size_t n, std::deque<Node>& nodes,
             flow::broadcast_node<flow::continue_msg>& begin, Node& node) {
  bool has_node_input = false;
  for (std::uint32_t in : shape.inputs_of(n)) {
    if (in < shape.sources) continue;
    flow::make_edge(nodes[in - shape.sources], node);
    has_node_input = true;
  }
  if (!has_node_input) flow::make_edge(begin, node);
}

// The graph that runs whole: its values, its own copy of the edges and one continue_node per Shape node.
struct FullGraph {
  std::unique_ptr<std::uint64_t[]> values;
  std::vector<std::uint32_t> offsets, inputs;
  flow::graph g;
  flow::broadcast_node<flow::continue_msg> begin{g};
  std::deque<flow::continue_node<flow::continue_msg>> nodes;

  FullGraph(const Shape& shape, std::uint32_t words, std::uint64_t iterations)
      : values(new std::uint64_t[shape.pages() * words]()), offsets(shape.offsets), inputs(shape.inputs) {
    for (std::size_t n = 0; n < shape.nodes(); ++n) {
      const NodeBody body = body_of(shape, n, values.get(), offsets, inputs, words, iterations);
      auto& node = nodes.emplace_back(g, [body](const flow::continue_msg&) {
        body.run();
        return flow::continue_msg{};
      });
      connect(shape, n, nodes, begin, node);
    }
  }
  void set_source(std::uint32_t s, std::uint32_t words, std::uint64_t value) {
    for (std::uint32_t w = 0; w < words; ++w) values[std::size_t{s} * words + w] = value;
  }
};

// Single-source waves. Where every page has at most one reader (chains, trees) each reached node lies on one path
// from the source, so a graph of serial function_nodes that passes a message only along edges out of the changed
// source runs exactly the reached nodes. Elsewhere that would run a node once per path (exponentially often in a
// lattice), so the continue_node graph runs whole and each body skips when no input changed in this wave: the
// static-graph way to propagate a change with raw TBB.
struct SmallWaveGraph {
  std::vector<std::uint32_t> reader_offsets, readers;
  bool unique_paths = true;
  std::atomic<std::uint64_t> ran{0};
  std::deque<flow::function_node<flow::continue_msg, flow::continue_msg>> followers;  // in FullGraph::g
  std::vector<std::uint32_t> changed_in;
  std::uint32_t wave_id = 0;
  flow::graph skip_graph;
  flow::broadcast_node<flow::continue_msg> skip_begin{skip_graph};
  std::deque<flow::continue_node<flow::continue_msg>> skippers;

  SmallWaveGraph(const Shape& shape, FullGraph& full, std::uint32_t words, std::uint64_t iterations) {
    shape.readers(reader_offsets, readers);
    for (std::size_t p = 0; p < shape.pages(); ++p)
      unique_paths = unique_paths && reader_offsets[p + 1] - reader_offsets[p] <= 1;
    changed_in.assign(unique_paths ? 0 : shape.pages(), 0);
    for (std::size_t n = 0; n < shape.nodes(); ++n) {
      const NodeBody body = body_of(shape, n, full.values.get(), full.offsets, full.inputs, words, iterations);
      if (unique_paths) {
        add_follower(shape, n, full.g, body);
      } else {
        add_skipper(shape, n, body);
      }
    }
  }
  void add_follower(const Shape& shape, std::size_t n, flow::graph& g, const NodeBody& body) {
    auto& node = followers.emplace_back(g, flow::serial, [body, this](const flow::continue_msg&) {
      body.run();
      ran.fetch_add(1, std::memory_order_relaxed);
      return flow::continue_msg{};
    });
    for (std::uint32_t in : shape.inputs_of(n))
      if (in >= shape.sources) flow::make_edge(followers[in - shape.sources], node);
  }
  void add_skipper(const Shape& shape, std::size_t n, const NodeBody& body) {
    auto& node = skippers.emplace_back(skip_graph, [body, this](const flow::continue_msg&) {
      bool any = false;
      for (std::uint32_t i = 0; i < body.count; ++i) any = any || changed_in[body.inputs[i]] == wave_id;
      if (any) {
        body.run();
        changed_in[body.me] = wave_id;
        ran.fetch_add(1, std::memory_order_relaxed);
      }
      return flow::continue_msg{};
    });
    connect(shape, n, skippers, skip_begin, node);
  }
  // Marks source `s` changed, before the timed run().
  void changed(std::uint32_t s) {
    if (!unique_paths) changed_in[s] = ++wave_id;
  }
  // Runs the wave from changed source `s` (its value already set, changed(s) called).
  void run(std::uint32_t s, flow::graph& g) {
    if (unique_paths) {
      for (std::uint32_t k = reader_offsets[s]; k < reader_offsets[s + 1]; ++k)
        followers[readers[k]].try_put(flow::continue_msg{});
      g.wait_for_all();
    } else {
      skip_begin.try_put(flow::continue_msg{});
      skip_graph.wait_for_all();
    }
  }
};

Percentiles time_full_waves(const Shape& shape, FullGraph& full, std::uint32_t words, int full_waves,
                            const std::function<void()>& wave, std::vector<std::uint64_t>& source_values) {
  std::vector<double> samples;
  const int max_full = full_waves > 0 ? full_waves : 100;
  const auto full_start = clock_type::now();
  for (int r = 0; r < max_full; ++r) {
    for (std::uint32_t s = 0; s < shape.sources; ++s) {
      source_values[s] = static_cast<std::uint64_t>(r + 1) * 1000003 + s;
      full.set_source(s, words, source_values[s]);
    }
    const auto start = clock_type::now();
    wave();
    samples.push_back(since(start));
    if (full_waves == 0 && r >= 2 && since(full_start) > 1e9) break;
  }
  check(shape, full.values.get(), words, source_values, "the full waves");
  return Percentiles::of(samples);
}

}  // namespace

Result run_tbb(const Shape& shape, const RunOptions& options) {
  const auto words = static_cast<std::uint32_t>(options.payload / 8);
  const std::uint64_t iterations = iterations_for_ns(options.work_ns);
  Result result;
  result.implementation = "oneTBB";
  result.nodes = shape.nodes();
  result.edges = shape.edges();
  result.depth = shape.depth();
  oneapi::tbb::task_arena arena(static_cast<int>(options.threads));

  warm_up(options.threads, options.work_ns);
  const double rss_before = resident_bytes();
  auto start = clock_type::now();
  FullGraph full(shape, words, iterations);
  result.build_ns = since(start);

  const std::function<void()> wave = [&] {
    arena.execute([&] {
      full.begin.try_put(flow::continue_msg{});
      full.g.wait_for_all();
    });
  };
  start = clock_type::now();
  wave();
  const double first = since(start);
  result.bytes = resident_bytes() - rss_before;
  start = clock_type::now();
  wave();
  result.plan_ns = std::max(0.0, first - since(start));

  std::vector<std::uint64_t> source_values(shape.sources, 0);
  result.full_wave_ns = time_full_waves(shape, full, words, options.full_waves, wave, source_values);

  SmallWaveGraph small(shape, full, words, iterations);
  std::vector<double> samples;
  std::uint64_t pick = 12345;
  for (int r = 0; r < options.small_waves; ++r) {
    pick = pick * 6364136223846793005ull + 1442695040888963407ull;
    const std::uint32_t s = static_cast<std::uint32_t>((pick >> 33) % shape.sources);
    full.set_source(s, words, ++source_values[s]);
    small.changed(s);
    start = clock_type::now();
    arena.execute([&] { small.run(s, full.g); });
    samples.push_back(since(start));
  }
  check(shape, full.values.get(), words, source_values, "the single-source waves");
  result.small_wave_ns = Percentiles::of(samples);
  result.small_reached = static_cast<double>(small.ran.load()) / std::max(1, options.small_waves);
  return result;
}

}  // namespace mmsb::bench::graph
