// The visit count that scale_small_wave_growth_ratio divides a single-source wave's time by
// (Shape::mean_source_wave_visits, bench/graph_shape.hpp).
#include "bench/graph_shape.hpp"

#include <gtest/gtest.h>

namespace mmsb::bench::graph {
namespace {

TEST(GraphShape, ChainWaveVisitsEveryNodeAndItsOneInput) {
  EXPECT_DOUBLE_EQ(make_chain(5).mean_source_wave_visits(), 10.0);
}

TEST(GraphShape, TreeWaveVisitsOnePathWithEachNodesInputs) {
  // 8 leaves, fan-in 8: a source reaches its map node (1 input) and the root (8 inputs).
  EXPECT_DOUBLE_EQ(make_tree(8, 8).mean_source_wave_visits(), 2.0 + 9.0);
  // 64 leaves: map node, its level-1 sum and the root, each with its inputs.
  EXPECT_DOUBLE_EQ(make_tree(64, 8).mean_source_wave_visits(), 2.0 + 9.0 + 9.0);
}

TEST(GraphShape, WaveVisitsCountANodeReachedTwiceOnce) {
  // Lattice 2 wide, fan-in 3: the source in column 0 is read by both nodes of the first row (columns clamped), and
  // every later row again by both; a node reached along two paths is one visit.
  const Shape lattice = make_lattice(4, 3);
  ASSERT_EQ(lattice.sources, 2u);
  double expected = 0;
  for (std::size_t n = 0; n < lattice.nodes(); ++n) expected += 1.0 + static_cast<double>(lattice.inputs_of(n).size());
  EXPECT_DOUBLE_EQ(lattice.mean_source_wave_visits(), expected);
}

TEST(GraphShape, WaveVisitsAreAveragedOverTheSampledSources) {
  // 9 leaves, fan-in 8: eight sources share a sum of 8 inputs, the ninth's sum has 1; both then meet at the root.
  const double shared = 2.0 + 9.0 + 3.0, alone = 2.0 + 2.0 + 3.0;
  EXPECT_DOUBLE_EQ(make_tree(9, 8).mean_source_wave_visits(), (8 * shared + alone) / 9);
  EXPECT_DOUBLE_EQ(make_tree(9, 8).mean_source_wave_visits(1), shared);  // source 0 only
}

}  // namespace
}  // namespace mmsb::bench::graph
