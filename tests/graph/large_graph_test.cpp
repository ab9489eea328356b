// Large graphs: correctness at sizes where per-node shortcuts would show (not timing; mmsb-bench graph measures
// that). A fan-in tree of 100,000 leaves, a lattice run on two threads, a long chain declared from its end, and a
// random DAG large enough for the wave's prefetching pipeline, with inputs out of PageId order.
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <thread>
#include <vector>

#include "mmsb/graph.hpp"
#include "mmsb/mmsb.hpp"

namespace mmsb {
namespace {

void sum_inputs(MapContext& c) {
  std::uint64_t sum = 0;
  for (std::size_t i = 0; i < c.input_count(); ++i) sum += c.input_as<std::uint64_t>(i);
  c.output_as<std::uint64_t>() = sum;
}

std::uint64_t read_u64(const Runtime& rt, PageId page) { return rt.read_value<std::uint64_t>(page, 0); }

// N sources, a map node per source, then sum nodes of fan-in 8 up to one root.
struct Tree {
  std::vector<PageId> sources, nodes;
  PageId root;
  std::size_t depth = 0;  // nodes on a path from a source to the root
  Tree(Runtime& rt, Propagator& prop, std::size_t leaves) {
    GraphBuilder build(prop);
    auto sum = build.add_map_function(sum_inputs);
    std::vector<PageId> level;
    for (std::size_t i = 0; i < leaves; ++i) sources.push_back(rt.create_page(8));
    for (std::size_t i = 0; i < leaves; ++i) {
      level.push_back(rt.create_page(8));
      build.derive_map(level.back(), {sources[i]}, sum);
    }
    nodes = level;
    depth = 1;
    while (level.size() > 1) {
      std::vector<PageId> next;
      for (std::size_t i = 0; i < level.size(); i += 8) {
        next.push_back(rt.create_page(8));
        const std::size_t end = std::min(level.size(), i + 8);
        build.derive_map(next.back(), std::span<const PageId>(level.data() + i, end - i), sum);
        nodes.push_back(next.back());
      }
      level = std::move(next);
      ++depth;
    }
    root = level.front();
    build.commit();
  }
};

TEST(LargeGraph, FanInTreeOf100kLeavesSumsEverySourceAndSmallWavesRunOnlyTheirPath) {
  Runtime rt;
  Propagator prop(rt, PropagatorOptions{.mode = PropagationMode::Deferred});
  Tree tree(rt, prop, 100'000);
  ASSERT_EQ(prop.node_count(), tree.nodes.size());
  {
    auto txn = rt.begin();
    for (std::size_t i = 0; i < tree.sources.size(); ++i) txn.write_value<std::uint64_t>(tree.sources[i], 0, i);
    txn.commit();
  }
  prop.propagate();
  const std::uint64_t n = tree.sources.size();
  EXPECT_EQ(read_u64(rt, tree.root), n * (n - 1) / 2);
  EXPECT_EQ(prop.stats().nodes_recomputed, tree.nodes.size() - 1) << "every node but the one summing zeros";

  for (std::size_t pick : {std::size_t{0}, std::size_t{31'337}, std::size_t{99'999}}) {
    const PropagationStats before = prop.stats();
    {
      auto txn = rt.begin();
      txn.write_value<std::uint64_t>(tree.sources[pick], 0, pick + 1000);
      txn.commit();
    }
    prop.propagate();
    const PropagationStats after = prop.stats();
    const std::uint64_t ran = (after.nodes_recomputed + after.nodes_cut_off + after.nodes_skipped) -
                              (before.nodes_recomputed + before.nodes_cut_off + before.nodes_skipped);
    EXPECT_EQ(ran, tree.depth) << "a single-source wave reaches exactly the path to the root";
  }
  EXPECT_EQ(read_u64(rt, tree.root), n * (n - 1) / 2 + 3000);
}

// Sources, then nodes each summing kFanIn earlier pages picked pseudo-randomly and listed in no PageId order (so a
// node's locks are not taken in declaration order); most sources are read by several nodes.
struct RandomDag {
  static constexpr std::size_t kFanIn = 4;
  std::vector<PageId> pages;
  std::size_t sources;
  std::vector<std::vector<std::size_t>> inputs;  // by node, indices into pages
  RandomDag(Runtime& rt, Propagator& prop, std::size_t source_count, std::size_t node_count) : sources(source_count) {
    for (std::size_t i = 0; i < source_count + node_count; ++i) pages.push_back(rt.create_page(8));
    GraphBuilder build(prop);
    auto sum = build.add_map_function(sum_inputs);
    std::uint64_t x = 12345;
    for (std::size_t n = 0; n < node_count; ++n) {
      std::vector<std::size_t> in;
      while (in.size() < kFanIn) {
        x = x * 6364136223846793005ull + 1442695040888963407ull;
        const std::size_t pick = (x >> 33) % (source_count + n);
        if (std::find(in.begin(), in.end(), pick) == in.end()) in.push_back(pick);
      }
      std::vector<PageId> ids;
      for (std::size_t i : in) ids.push_back(pages[i]);
      build.derive_map(pages[source_count + n], ids, sum);
      inputs.push_back(std::move(in));
    }
    build.commit();
  }
  // Every page's value computed in declaration order from the sources' values.
  std::vector<std::uint64_t> reference(const std::vector<std::uint64_t>& source_values) const {
    std::vector<std::uint64_t> ref(source_values);
    for (const auto& in : inputs) {
      std::uint64_t s = 0;
      for (std::size_t i : in) s += ref[i];
      ref.push_back(s);
    }
    return ref;
  }
  void expect_matches(const Runtime& rt, const std::vector<std::uint64_t>& source_values) const {
    const std::vector<std::uint64_t> ref = reference(source_values);
    for (std::size_t i = 0; i < pages.size(); ++i) ASSERT_EQ(read_u64(rt, pages[i]), ref[i]) << "page index " << i;
  }
};

TEST(LargeGraph, RandomDagOf20kNodesMatchesAReferenceInFullAndSingleSourceWaves) {
  Runtime rt;
  Propagator prop(rt, PropagatorOptions{.mode = PropagationMode::Deferred});
  RandomDag dag(rt, prop, 2'500, 20'000);
  std::vector<std::uint64_t> values(dag.sources);
  {
    auto txn = rt.begin();
    for (std::size_t i = 0; i < dag.sources; ++i)
      txn.write_value<std::uint64_t>(dag.pages[i], 0, values[i] = i * 3 + 1);
    txn.commit();
  }
  prop.propagate();
  dag.expect_matches(rt, values);
  for (std::size_t pick : {std::size_t{0}, std::size_t{1'234}, std::size_t{2'499}}) {
    {
      auto txn = rt.begin();
      txn.write_value<std::uint64_t>(dag.pages[pick], 0, values[pick] += 1000);
      txn.commit();
    }
    prop.propagate();
    dag.expect_matches(rt, values);
  }
}

// Commits to the sources on another thread while waves run: a node's locks, tried as declared, are then sometimes
// busy and taken in PageId order instead. Neither deadlocks, and the last wave matches the last commits.
TEST(LargeGraph, RandomDagWithConcurrentSourceCommitsEndsAtTheReference) {
  Runtime rt;
  Propagator prop(rt, PropagatorOptions{.mode = PropagationMode::Deferred});
  RandomDag dag(rt, prop, 500, 5'000);
  std::vector<std::uint64_t> values(dag.sources, 0);
  std::atomic<bool> done{false};
  std::thread writer([&] {
    for (std::uint64_t round = 1; round <= 200; ++round) {
      auto txn = rt.begin();
      for (std::size_t i = 0; i < dag.sources; i += 7) txn.write_value<std::uint64_t>(dag.pages[i], 0, round + i);
      txn.commit();
    }
    done.store(true);
  });
  while (!done.load()) prop.propagate();
  writer.join();
  prop.propagate();
  for (std::size_t i = 0; i < dag.sources; i += 7) values[i] = 200 + i;
  dag.expect_matches(rt, values);
}

TEST(LargeGraph, LatticeOnTwoThreadsMatchesASequentialReference) {
  constexpr std::size_t kWidth = 300, kRows = 300;
  Runtime rt;
  Propagator prop(rt, PropagatorOptions{.threads = 2, .min_parallel_work_ns = 0});
  std::vector<PageId> pages;  // row 0 = sources
  for (std::size_t i = 0; i < kWidth * (kRows + 1); ++i) pages.push_back(rt.create_page(8));
  GraphBuilder build(prop);
  auto sum = build.add_map_function(sum_inputs);
  for (std::size_t r = 1; r <= kRows; ++r) {
    for (std::size_t c = 0; c < kWidth; ++c) {
      std::vector<PageId> in{pages[(r - 1) * kWidth + c]};
      if (c > 0) in.push_back(pages[(r - 1) * kWidth + c - 1]);
      if (c + 1 < kWidth) in.push_back(pages[(r - 1) * kWidth + c + 1]);
      build.derive_map(pages[r * kWidth + c], in, sum);
    }
  }
  build.commit();
  {
    auto txn = rt.begin();
    for (std::size_t c = 0; c < kWidth; ++c) txn.write_value<std::uint64_t>(pages[c], 0, c * 7 + 1);
    txn.commit();
  }
  std::vector<std::uint64_t> ref(pages.size(), 0);
  for (std::size_t c = 0; c < kWidth; ++c) ref[c] = c * 7 + 1;
  for (std::size_t r = 1; r <= kRows; ++r) {
    for (std::size_t c = 0; c < kWidth; ++c) {
      std::uint64_t s = ref[(r - 1) * kWidth + c];
      if (c > 0) s += ref[(r - 1) * kWidth + c - 1];
      if (c + 1 < kWidth) s += ref[(r - 1) * kWidth + c + 1];
      ref[r * kWidth + c] = s;
    }
  }
  for (std::size_t i = 0; i < pages.size(); ++i) ASSERT_EQ(read_u64(rt, pages[i]), ref[i]) << "page index " << i;
  EXPECT_LT(prop.stats().inline_waves, prop.stats().waves) << "the lattice's rows were split across the threads";
}

TEST(LargeGraph, ChainOf200kDeclaredFromItsEndPropagatesEndToEnd) {
  constexpr std::size_t kLength = 200'000;
  Runtime rt;
  Propagator prop(rt);
  std::vector<PageId> pages;
  for (std::size_t i = 0; i <= kLength; ++i) pages.push_back(rt.create_page(8));
  GraphBuilder build(prop);
  auto copy = build.add_map_function(sum_inputs);
  // Each node's output was already named as the input of the node declared before it: the incremental order
  // places every new input first, so no edge needs a reorder (quadratic otherwise).
  for (std::size_t i = kLength; i >= 1; --i) build.derive_map(pages[i], {pages[i - 1]}, copy);
  build.commit();
  auto txn = rt.begin();
  txn.write_value<std::uint64_t>(pages[0], 0, 42);
  txn.commit();
  EXPECT_EQ(read_u64(rt, pages[kLength]), 42u);
  EXPECT_EQ(read_u64(rt, pages[kLength / 2]), 42u);
}

}  // namespace
}  // namespace mmsb
