// Large graphs: correctness at sizes where per-node shortcuts would show (not timing; mmsb-bench graph measures
// that). A fan-in tree of 100,000 leaves, a lattice run on two threads, and a long chain declared from its end.
#include <gtest/gtest.h>

#include <cstdint>
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
