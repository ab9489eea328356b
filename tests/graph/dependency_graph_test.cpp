// tests/graph/dependency_graph_test.cpp — DependencyGraph: edges and pages, the stable PageId → vertex map, cycle
// refusal and its message, the incremental topological order (property test against a plain reference, long
// chains built forwards and backwards, reorders forced one after another) and the Graphviz export.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <ostream>
#include <random>
#include <set>
#include <string>
#include <tuple>
#include <unordered_map>
#include <vector>

#include "graph/dependency_graph.hpp"
#include "mmsb/error.hpp"

namespace mmsb::detail {

// Found by argument-dependent lookup, so they live in Dependency's namespace (not the anonymous one below).
bool operator==(const Dependency& a, const Dependency& b) {
  return a.from == b.from && a.to == b.to && a.kind == b.kind;
}
void PrintTo(const Dependency& d, std::ostream* os) {
  *os << d.from.to_string() << " -> " << d.to.to_string() << " (" << dependency_kind_name(d.kind) << ")";
}

namespace {

PageId P(std::uint64_t n) { return PageId::make(0, n); }

// Checks that `g.topological_order()` holds exactly `pages` and that every edge in `edges` goes forwards in it,
// and that order_index agrees with it.
template <typename Edges>
::testing::AssertionResult valid_order(const DependencyGraph& g, const std::set<PageId>& pages, const Edges& edges) {
  const std::vector<PageId> order = g.topological_order();
  if (order.size() != pages.size()) {
    return ::testing::AssertionFailure() << "order has " << order.size() << " pages, expected " << pages.size();
  }
  std::unordered_map<PageId, std::size_t> pos;
  for (std::size_t i = 0; i < order.size(); ++i) {
    if (pages.count(order[i]) == 0) return ::testing::AssertionFailure() << order[i].to_string() << " unexpected";
    if (!pos.emplace(order[i], i).second) return ::testing::AssertionFailure() << order[i].to_string() << " twice";
    if (i > 0 && g.order_index(order[i - 1]) >= g.order_index(order[i])) {
      return ::testing::AssertionFailure() << "order_index not increasing at position " << i;
    }
  }
  for (const auto& e : edges) {
    const PageId from = std::get<0>(e);
    const PageId to = std::get<1>(e);
    if (pos.at(from) >= pos.at(to)) {
      return ::testing::AssertionFailure()
             << "edge " << from.to_string() << " -> " << to.to_string() << " goes backwards in the order";
    }
  }
  return ::testing::AssertionSuccess();
}

std::string cycle_error(DependencyGraph& g, PageId from, PageId to, DependencyKind kind = DependencyKind::Data) {
  try {
    g.add_edge(from, to, kind);
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::InvalidArgument);
    return e.what();
  }
  ADD_FAILURE() << "edge " << from.to_string() << " -> " << to.to_string() << " was accepted";
  return {};
}

// ---- edges, pages, counts --------------------------------------------------------------------------------------

TEST(DependencyGraphTest, EmptyGraphHasNoPagesEdgesOrOrder) {
  DependencyGraph g;
  EXPECT_EQ(g.page_count(), 0u);
  EXPECT_EQ(g.edge_count(), 0u);
  EXPECT_EQ(g.version(), 0u);
  EXPECT_TRUE(g.topological_order().empty());
  EXPECT_FALSE(g.contains(P(1)));
  EXPECT_EQ(g.to_dot(), "digraph mmsb {\n}\n");
}

TEST(DependencyGraphTest, AddEdgeCreatesBothPagesOnce) {
  DependencyGraph g;
  g.add_edge(P(1), P(2));
  EXPECT_TRUE(g.contains(P(1)));
  EXPECT_TRUE(g.contains(P(2)));
  EXPECT_FALSE(g.contains(P(3)));
  EXPECT_EQ(g.page_count(), 2u);
  EXPECT_EQ(g.edge_count(), 1u);
  g.add_edge(P(2), P(3));
  EXPECT_EQ(g.page_count(), 3u);
  EXPECT_EQ(g.edge_count(), 2u);
  EXPECT_EQ(g.topological_order(), (std::vector<PageId>{P(1), P(2), P(3)}));
}

TEST(DependencyGraphTest, DuplicateEdgeIsNoOpWithoutVersionBump) {
  DependencyGraph g;
  g.add_edge(P(1), P(2), DependencyKind::Control);
  const auto v = g.version();
  g.add_edge(P(1), P(2), DependencyKind::Control);
  EXPECT_EQ(g.version(), v);
  EXPECT_EQ(g.edge_count(), 1u);
  EXPECT_EQ(g.dependents_of(P(1)).size(), 1u);
}

TEST(DependencyGraphTest, ParallelEdgesOfDifferentKindsAreAllKept) {
  DependencyGraph g;
  g.add_edge(P(1), P(2), DependencyKind::Data);
  g.add_edge(P(1), P(2), DependencyKind::GpuSync);
  g.add_edge(P(1), P(2), DependencyKind::Control);
  EXPECT_EQ(g.edge_count(), 3u);
  EXPECT_EQ(g.page_count(), 2u);
  EXPECT_EQ(g.inputs_of(P(2)), (std::vector<Dependency>{{P(1), P(2), DependencyKind::Data},
                                                        {P(1), P(2), DependencyKind::GpuSync},
                                                        {P(1), P(2), DependencyKind::Control}}));
  EXPECT_TRUE(g.remove_edge(P(1), P(2), DependencyKind::GpuSync));
  EXPECT_EQ(g.edge_count(), 2u);
  EXPECT_EQ(g.dependents_of(P(1)),
            (std::vector<Dependency>{{P(1), P(2), DependencyKind::Data}, {P(1), P(2), DependencyKind::Control}}));
  // A reverse edge of any kind still closes a cycle.
  cycle_error(g, P(2), P(1), DependencyKind::Control);
}

TEST(DependencyGraphTest, RemoveEdgeOfMissingEdgeOrWrongKindReturnsFalse) {
  DependencyGraph g;
  EXPECT_FALSE(g.remove_edge(P(1), P(2)));
  g.add_edge(P(1), P(2), DependencyKind::Data);
  const auto v = g.version();
  EXPECT_FALSE(g.remove_edge(P(1), P(2), DependencyKind::Control));
  EXPECT_FALSE(g.remove_edge(P(2), P(1)));
  EXPECT_FALSE(g.remove_edge(P(1), P(3)));
  EXPECT_EQ(g.version(), v);
  EXPECT_EQ(g.edge_count(), 1u);
}

TEST(DependencyGraphTest, RemoveEdgeKeepsBothPages) {
  DependencyGraph g;
  g.add_edge(P(1), P(2));
  EXPECT_TRUE(g.remove_edge(P(1), P(2)));
  EXPECT_FALSE(g.remove_edge(P(1), P(2)));
  EXPECT_EQ(g.edge_count(), 0u);
  EXPECT_EQ(g.page_count(), 2u);
  EXPECT_TRUE(g.contains(P(1)));
  EXPECT_TRUE(g.contains(P(2)));
  EXPECT_TRUE(g.inputs_of(P(2)).empty());
  // With the edge gone, the reverse edge is no longer a cycle.
  g.add_edge(P(2), P(1));
  EXPECT_LT(g.order_index(P(2)), g.order_index(P(1)));
}

TEST(DependencyGraphTest, RemovePageRemovesItsVertexAndAllItsEdges) {
  DependencyGraph g;
  g.add_edge(P(1), P(3));
  g.add_edge(P(2), P(3), DependencyKind::Control);
  g.add_edge(P(3), P(4));
  g.add_edge(P(3), P(5), DependencyKind::GpuSync);
  g.add_edge(P(1), P(5));
  EXPECT_TRUE(g.remove_page(P(3)));
  EXPECT_FALSE(g.remove_page(P(3)));
  EXPECT_FALSE(g.contains(P(3)));
  EXPECT_EQ(g.page_count(), 4u);
  EXPECT_EQ(g.edge_count(), 1u);
  EXPECT_TRUE(g.dependents_of(P(2)).empty());
  EXPECT_TRUE(g.inputs_of(P(4)).empty());
  EXPECT_EQ(g.inputs_of(P(5)), (std::vector<Dependency>{{P(1), P(5), DependencyKind::Data}}));
  EXPECT_FALSE(g.remove_edge(P(1), P(3)));
  EXPECT_FALSE(g.remove_edge(P(3), P(5), DependencyKind::GpuSync));
  EXPECT_THROW(g.order_index(P(3)), Error);
}

TEST(DependencyGraphTest, RemovePageWithoutVertexReturnsFalseWithoutVersionBump) {
  DependencyGraph g;
  g.add_edge(P(1), P(2));
  const auto v = g.version();
  EXPECT_FALSE(g.remove_page(P(9)));
  EXPECT_EQ(g.version(), v);
}

TEST(DependencyGraphTest, RemovingMiddlePageKeepsOtherPagesUsable) {
  DependencyGraph g;
  for (std::uint64_t i = 1; i < 10; ++i) g.add_edge(P(i), P(i + 1));
  ASSERT_TRUE(g.remove_page(P(5)));
  // Every other page still resolves to its own vertex, with its own edges.
  for (std::uint64_t i = 1; i <= 10; ++i) {
    if (i == 5) continue;
    ASSERT_TRUE(g.contains(P(i))) << i;
    const auto in = g.inputs_of(P(i));
    const auto out = g.dependents_of(P(i));
    if (i == 1 || i == 6) {
      EXPECT_TRUE(in.empty()) << i;
    } else {
      EXPECT_EQ(in, (std::vector<Dependency>{{P(i - 1), P(i), DependencyKind::Data}})) << i;
    }
    if (i == 4 || i == 10) {
      EXPECT_TRUE(out.empty()) << i;
    } else {
      EXPECT_EQ(out, (std::vector<Dependency>{{P(i), P(i + 1), DependencyKind::Data}})) << i;
    }
  }
  EXPECT_EQ(g.edge_count(), 7u);
  // The graph keeps working after the removal: new edges, removals, cycle checks across the gap.
  g.add_edge(P(4), P(6));
  cycle_error(g, P(10), P(1));
  EXPECT_TRUE(g.remove_edge(P(8), P(9)));
  g.add_edge(P(9), P(8));
  std::set<PageId> pages;
  for (std::uint64_t i = 1; i <= 10; ++i) {
    if (i != 5) pages.insert(P(i));
  }
  std::vector<std::tuple<PageId, PageId>> edges;
  for (const PageId p : pages) {
    for (const auto& d : g.dependents_of(p)) edges.emplace_back(d.from, d.to);
  }
  EXPECT_EQ(edges.size(), g.edge_count());
  EXPECT_TRUE(valid_order(g, pages, edges));
}

TEST(DependencyGraphTest, ReAddingEdgeToRemovedPageRecreatesItsVertex) {
  DependencyGraph g;
  g.add_edge(P(1), P(2));
  g.add_edge(P(2), P(3));
  ASSERT_TRUE(g.remove_page(P(2)));
  EXPECT_TRUE(g.dependents_of(P(2)).empty());
  g.add_edge(P(3), P(2));  // the old 2 → 3 is gone, so this is no cycle
  EXPECT_TRUE(g.contains(P(2)));
  EXPECT_EQ(g.page_count(), 3u);
  EXPECT_EQ(g.inputs_of(P(2)), (std::vector<Dependency>{{P(3), P(2), DependencyKind::Data}}));
  EXPECT_TRUE(g.inputs_of(P(3)).empty());
  EXPECT_LT(g.order_index(P(3)), g.order_index(P(2)));
  g.add_edge(P(1), P(2));
  EXPECT_EQ(g.inputs_of(P(2)).size(), 2u);
}

TEST(DependencyGraphTest, InputsAndDependentsAreInEdgeInsertionOrder) {
  DependencyGraph g;
  // Inputs added in an order that differs from both page-id order and topological order.
  g.add_edge(P(7), P(1));
  g.add_edge(P(3), P(1), DependencyKind::Control);
  g.add_edge(P(9), P(1));
  g.add_edge(P(5), P(1), DependencyKind::GpuSync);
  EXPECT_EQ(g.inputs_of(P(1)), (std::vector<Dependency>{{P(7), P(1), DependencyKind::Data},
                                                        {P(3), P(1), DependencyKind::Control},
                                                        {P(9), P(1), DependencyKind::Data},
                                                        {P(5), P(1), DependencyKind::GpuSync}}));
  g.add_edge(P(1), P(8));
  g.add_edge(P(1), P(2));
  g.add_edge(P(1), P(6), DependencyKind::Control);
  EXPECT_EQ(g.dependents_of(P(1)), (std::vector<Dependency>{{P(1), P(8), DependencyKind::Data},
                                                            {P(1), P(2), DependencyKind::Data},
                                                            {P(1), P(6), DependencyKind::Control}}));
  // Removing and re-adding an edge moves it to the end.
  ASSERT_TRUE(g.remove_edge(P(3), P(1), DependencyKind::Control));
  g.add_edge(P(3), P(1), DependencyKind::Control);
  ASSERT_TRUE(g.remove_edge(P(1), P(8)));
  g.add_edge(P(1), P(8));
  EXPECT_EQ(g.inputs_of(P(1)), (std::vector<Dependency>{{P(7), P(1), DependencyKind::Data},
                                                        {P(9), P(1), DependencyKind::Data},
                                                        {P(5), P(1), DependencyKind::GpuSync},
                                                        {P(3), P(1), DependencyKind::Control}}));
  EXPECT_EQ(g.dependents_of(P(1)), (std::vector<Dependency>{{P(1), P(2), DependencyKind::Data},
                                                            {P(1), P(6), DependencyKind::Control},
                                                            {P(1), P(8), DependencyKind::Data}}));
  // Insertion order holds across reorders of the topological order too.
  ASSERT_LT(g.order_index(P(8)), g.order_index(P(2)));
  g.add_edge(P(2), P(8));
  ASSERT_LT(g.order_index(P(2)), g.order_index(P(8)));
  EXPECT_EQ(g.inputs_of(P(8)),
            (std::vector<Dependency>{{P(1), P(8), DependencyKind::Data}, {P(2), P(8), DependencyKind::Data}}));
  EXPECT_EQ(g.dependents_of(P(1)), (std::vector<Dependency>{{P(1), P(2), DependencyKind::Data},
                                                            {P(1), P(6), DependencyKind::Control},
                                                            {P(1), P(8), DependencyKind::Data}}));
}

TEST(DependencyGraphTest, PageWithoutVertexHasNoInputsOrDependents) {
  DependencyGraph g;
  EXPECT_TRUE(g.inputs_of(P(4)).empty());
  EXPECT_TRUE(g.dependents_of(P(4)).empty());
  g.add_edge(P(1), P(2));
  EXPECT_TRUE(g.inputs_of(P(4)).empty());
  EXPECT_TRUE(g.dependents_of(P(4)).empty());
  EXPECT_TRUE(g.inputs_of(P(1)).empty());
  EXPECT_TRUE(g.dependents_of(P(2)).empty());
}

TEST(DependencyGraphTest, VersionCountsEveryTopologyChange) {
  DependencyGraph g;
  std::uint64_t v = g.version();
  auto changed = [&] {
    const bool c = g.version() != v;
    v = g.version();
    return c;
  };
  g.add_edge(P(1), P(2));
  EXPECT_TRUE(changed());
  g.add_edge(P(1), P(2));
  EXPECT_FALSE(changed());
  g.add_edge(P(1), P(2), DependencyKind::Control);
  EXPECT_TRUE(changed());
  g.add_edge(P(2), P(3));  // agrees with the order
  EXPECT_TRUE(changed());
  g.add_edge(P(4), P(1));  // new source
  EXPECT_TRUE(changed());
  g.add_edge(P(3), P(5));
  g.add_edge(P(6), P(7));
  v = g.version();
  g.add_edge(P(7), P(4));  // existing pages, against the order: a reorder
  EXPECT_TRUE(changed());
  EXPECT_THROW(g.add_edge(P(5), P(6)), Error);
  EXPECT_FALSE(changed());
  EXPECT_TRUE(g.remove_edge(P(1), P(2)));
  EXPECT_TRUE(changed());
  EXPECT_FALSE(g.remove_edge(P(1), P(2)));
  EXPECT_FALSE(changed());
  EXPECT_TRUE(g.remove_page(P(3)));
  EXPECT_TRUE(changed());
  EXPECT_FALSE(g.remove_page(P(3)));
  EXPECT_FALSE(changed());
  EXPECT_THROW(g.add_edge(P(2), P(2)), Error);
  EXPECT_FALSE(changed());
}

TEST(DependencyGraphTest, OrderIndexOfPageWithoutVertexIsNotFound) {
  DependencyGraph g;
  g.add_edge(P(1), P(2));
  try {
    (void)g.order_index(P(3));
    FAIL() << "order_index of an unknown page returned";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::NotFound);
    EXPECT_NE(std::string(e.what()).find("p0:3"), std::string::npos) << e.what();
  }
}

TEST(DependencyGraphTest, KindNamesAreStable) {
  EXPECT_STREQ(dependency_kind_name(DependencyKind::Data), "data");
  EXPECT_STREQ(dependency_kind_name(DependencyKind::Control), "control");
  EXPECT_STREQ(dependency_kind_name(DependencyKind::GpuSync), "gpu_sync");
}

// ---- cycles --------------------------------------------------------------------------------------------------

TEST(DependencyGraphTest, SelfEdgeIsInvalidArgumentAndCreatesNothing) {
  DependencyGraph g;
  const std::string what = cycle_error(g, P(3), P(3));
  EXPECT_NE(what.find("p0:3"), std::string::npos) << what;
  EXPECT_FALSE(g.contains(P(3)));
  EXPECT_EQ(g.version(), 0u);
  g.add_edge(P(1), P(3), DependencyKind::GpuSync);
  cycle_error(g, P(3), P(3), DependencyKind::GpuSync);
  EXPECT_EQ(g.edge_count(), 1u);
}

TEST(DependencyGraphTest, TwoCycleIsRefusedNamingBothPages) {
  DependencyGraph g;
  g.add_edge(P(1), P(2));
  const std::string what = cycle_error(g, P(2), P(1));
  EXPECT_NE(what.find("cycle: p0:2 -> p0:1 -> p0:2;"), std::string::npos) << what;
}

TEST(DependencyGraphTest, ThreeCycleMessageListsPagesInCycleOrder) {
  DependencyGraph g;
  // The header's example: 7 → 5 → 3 exists; 3 → 7 closes the cycle.
  g.add_edge(P(7), P(5));
  g.add_edge(P(5), P(3));
  const std::string what = cycle_error(g, P(3), P(7));
  EXPECT_NE(what.find("cycle: p0:3 -> p0:7 -> p0:5 -> p0:3;"), std::string::npos) << what;
  EXPECT_EQ(what.rfind("invalid_argument: ", 0), 0u) << what;
}

TEST(DependencyGraphTest, LongCycleMessageNamesEveryPageInOrder) {
  DependencyGraph g;
  // A chain 100 → 101 → ... → 140 with side branches the search may also visit, and unrelated pages in between.
  for (std::uint64_t i = 100; i < 140; ++i) {
    g.add_edge(P(i), P(i + 1));
    g.add_edge(P(i), P(1000 + i));
    g.add_edge(P(2000 + i), P(i + 1), DependencyKind::Control);
  }
  std::string expected = "p0:140";
  for (std::uint64_t i = 100; i <= 140; ++i) expected += " -> " + P(i).to_string();
  const std::string what = cycle_error(g, P(140), P(100));
  EXPECT_NE(what.find("cycle: " + expected + ";"), std::string::npos) << what;
}

TEST(DependencyGraphTest, CycleThroughReorderedPagesIsFound) {
  DependencyGraph g;
  // Create the pages in one order, then connect them against it so the order has been rearranged.
  for (std::uint64_t i = 1; i <= 6; ++i) g.add_edge(P(100), P(i));
  g.add_edge(P(6), P(4));
  g.add_edge(P(4), P(2));
  g.add_edge(P(2), P(5));
  g.add_edge(P(5), P(1));
  const std::string what = cycle_error(g, P(1), P(6));
  EXPECT_NE(what.find("cycle: p0:1 -> p0:6 -> p0:4 -> p0:2 -> p0:5 -> p0:1;"), std::string::npos) << what;
}

TEST(DependencyGraphTest, RefusedEdgeLeavesGraphUnchanged) {
  DependencyGraph g;
  for (std::uint64_t i = 1; i <= 8; ++i) g.add_edge(P(50), P(i));
  g.add_edge(P(8), P(3));
  g.add_edge(P(3), P(6));
  g.add_edge(P(6), P(1));
  g.add_edge(P(2), P(7), DependencyKind::Control);
  const auto order = g.topological_order();
  std::vector<std::uint64_t> indices;
  for (const PageId p : order) indices.push_back(g.order_index(p));
  const auto version = g.version();
  const auto edges = g.edge_count();
  const auto dot = g.to_dot();

  EXPECT_THROW(g.add_edge(P(1), P(8)), Error);
  EXPECT_THROW(g.add_edge(P(6), P(3), DependencyKind::GpuSync), Error);
  EXPECT_THROW(g.add_edge(P(1), P(50)), Error);

  EXPECT_EQ(g.version(), version);
  EXPECT_EQ(g.edge_count(), edges);
  EXPECT_EQ(g.page_count(), 9u);
  EXPECT_EQ(g.topological_order(), order);
  for (std::size_t i = 0; i < order.size(); ++i) EXPECT_EQ(g.order_index(order[i]), indices[i]);
  EXPECT_EQ(g.to_dot(), dot);
  EXPECT_TRUE(g.dependents_of(P(1)).empty());
  // And it keeps accepting edges that close no cycle.
  g.add_edge(P(7), P(1));
  EXPECT_LT(g.order_index(P(7)), g.order_index(P(1)));
}

// ---- the incremental order -------------------------------------------------------------------------------------

TEST(DependencyGraphTest, EdgeAgainstOrderMovesOnlyTheAffectedPages) {
  DependencyGraph g;
  // hub first, then a..e in this order.
  for (std::uint64_t i = 1; i <= 5; ++i) g.add_edge(P(100), P(i));
  std::map<PageId, std::uint64_t> before;
  for (std::uint64_t i = 1; i <= 5; ++i) before[P(i)] = g.order_index(P(i));
  g.add_edge(P(5), P(1));
  // Pearce–Kelly: only 1 (reachable from the target) and 5 (reaching the source) are in the affected region; they
  // swap their two indices, and 2, 3, 4 keep theirs.
  EXPECT_EQ(g.topological_order(), (std::vector<PageId>{P(100), P(5), P(2), P(3), P(4), P(1)}));
  EXPECT_EQ(g.order_index(P(5)), before[P(1)]);
  EXPECT_EQ(g.order_index(P(1)), before[P(5)]);
  for (std::uint64_t i = 2; i <= 4; ++i) EXPECT_EQ(g.order_index(P(i)), before[P(i)]);
  // 3 → 2 moves the backward set {3} before the forward set {2}.
  g.add_edge(P(3), P(2));
  EXPECT_EQ(g.topological_order(), (std::vector<PageId>{P(100), P(5), P(3), P(2), P(4), P(1)}));
  EXPECT_EQ(g.order_index(P(4)), before[P(4)]);
}

// A DependencyGraph driven by random operations next to a plain reference model (a list of edges and a set of
// pages) that it must match after every operation.
class RandomGraphModel {
 public:
  explicit RandomGraphModel(std::uint64_t seed) : rng_(seed) {}

  void step(int op) {
    const std::uint64_t dice = rng_() % 100;
    if (dice < 70) {
      add_random_edge(op, dice);
    } else if (dice < 90) {
      remove_random_edge(op);
    } else {
      remove_random_page(op);
    }
  }

  // The graph agrees with the model: counts, a valid order, one page's inputs and dependents.
  void check(int op) {
    ASSERT_EQ(g_.edge_count(), edges_.size()) << "op " << op;
    ASSERT_EQ(g_.page_count(), pages_.size()) << "op " << op;
    std::vector<std::tuple<PageId, PageId>> pairs;
    for (const RefEdge& e : edges_) pairs.emplace_back(e.from, e.to);
    ASSERT_TRUE(valid_order(g_, pages_, pairs)) << "op " << op;
    // Inputs and dependents of one page match the reference, in insertion order.
    const PageId probe = random_page();
    std::vector<Dependency> in, out;
    for (const RefEdge& e : edges_) {
      if (e.to == probe) in.push_back({e.from, e.to, e.kind});
      if (e.from == probe) out.push_back({e.from, e.to, e.kind});
    }
    ASSERT_EQ(g_.inputs_of(probe), in) << "op " << op;
    ASSERT_EQ(g_.dependents_of(probe), out) << "op " << op;
    ASSERT_EQ(g_.contains(probe), pages_.count(probe) != 0);
  }

  std::size_t refused = 0;
  std::size_t reordered = 0;

 private:
  struct RefEdge {
    PageId from, to;
    DependencyKind kind;
  };

  std::vector<RefEdge>::iterator find_edge(PageId from, PageId to, DependencyKind kind) {
    return std::find_if(edges_.begin(), edges_.end(),
                        [&](const RefEdge& e) { return e.from == from && e.to == to && e.kind == kind; });
  }
  bool reaches(PageId start, PageId goal) const {  // plain DFS on the reference edges
    std::set<PageId> seen{start};
    std::vector<PageId> stack{start};
    while (!stack.empty()) {
      const PageId v = stack.back();
      stack.pop_back();
      if (v == goal) return true;
      for (const RefEdge& e : edges_) {
        if (e.from == v && seen.insert(e.to).second) stack.push_back(e.to);
      }
    }
    return false;
  }
  PageId random_page() { return P(1 + rng_() % 200); }
  DependencyKind random_kind() { return static_cast<DependencyKind>(rng_() % 3); }

  // dice < 25: an edge that agrees with the order; < 50: one that disagrees; else between random pages.
  std::pair<PageId, PageId> random_endpoints(std::uint64_t dice) {
    PageId from = random_page();
    PageId to = random_page();
    const std::vector<PageId> order = g_.topological_order();
    if (dice < 50 && order.size() >= 2) {
      std::size_t i = rng_() % order.size(), j = rng_() % order.size();
      if ((dice < 25) == (i > j)) std::swap(i, j);
      from = order[i];
      to = order[j];
    }
    return {from, to};
  }

  void add_random_edge(int op, std::uint64_t dice) {
    const auto version = g_.version();
    const auto [from, to] = random_endpoints(dice);
    const DependencyKind kind = random_kind();
    const bool known = pages_.count(from) != 0 && pages_.count(to) != 0;
    const bool against = known && from != to && g_.order_index(from) > g_.order_index(to);
    const bool duplicate = find_edge(from, to, kind) != edges_.end();
    const bool expect_refused = from == to || (!duplicate && reaches(to, from));
    bool threw = false;
    try {
      g_.add_edge(from, to, kind);
    } catch (const Error& e) {
      threw = true;
      EXPECT_EQ(e.code(), ErrorCode::InvalidArgument);
    }
    ASSERT_EQ(threw, expect_refused) << from.to_string() << " -> " << to.to_string() << " at op " << op;
    if (threw) {
      ++refused;
      EXPECT_EQ(g_.version(), version);
    } else if (duplicate) {
      EXPECT_EQ(g_.version(), version);
    } else {
      EXPECT_NE(g_.version(), version);
      edges_.push_back({from, to, kind});
      pages_.insert(from);
      pages_.insert(to);
      if (against) ++reordered;
    }
  }

  void remove_random_edge(int op) {
    const auto version = g_.version();
    RefEdge e{random_page(), random_page(), random_kind()};
    if (!edges_.empty() && rng_() % 4 != 0) e = edges_[rng_() % edges_.size()];
    const auto it = find_edge(e.from, e.to, e.kind);
    const bool exists = it != edges_.end();
    ASSERT_EQ(g_.remove_edge(e.from, e.to, e.kind), exists) << "op " << op;
    if (exists) {
      edges_.erase(it);
      EXPECT_NE(g_.version(), version);
    } else {
      EXPECT_EQ(g_.version(), version);
    }
  }

  void remove_random_page(int op) {
    PageId page = random_page();
    if (!pages_.empty() && rng_() % 2 == 0) page = *std::next(pages_.begin(), rng_() % pages_.size());
    const bool exists = pages_.count(page) != 0;
    ASSERT_EQ(g_.remove_page(page), exists) << "op " << op;
    pages_.erase(page);
    std::erase_if(edges_, [&](const RefEdge& e) { return e.from == page || e.to == page; });
  }

  std::mt19937_64 rng_;
  DependencyGraph g_;
  std::set<PageId> pages_;
  std::vector<RefEdge> edges_;  // insertion order
};

TEST(DependencyGraphTest, RandomOperationsKeepValidOrderAndRefuseExactlyTheCycles) {
  for (const std::uint64_t seed : {1ull, 2ull, 3ull, 0xC0FFEEull, 0x5EEDull}) {
    SCOPED_TRACE("seed " + std::to_string(seed));
    RandomGraphModel model(seed);
    for (int op = 0; op < 600; ++op) {
      ASSERT_NO_FATAL_FAILURE(model.step(op));
      ASSERT_NO_FATAL_FAILURE(model.check(op));
    }
    // The sequence exercised both refusals and reorders.
    EXPECT_GT(model.refused, 10u);
    EXPECT_GT(model.reordered, 10u);
  }
}

// Long chains: construction must stay near-linear (each edge agrees with the order, or has a new endpoint), so
// 100,000 pages build in a fraction of a second; a whole-graph search per edge would take minutes and trip the
// test timeout. Per-edge cost is measured by the graph benchmark.
TEST(DependencyGraphTest, LongChainBuiltInOrderIsValid) {
  constexpr std::uint64_t kPages = 100000;
  DependencyGraph g;
  for (std::uint64_t i = 1; i < kPages; ++i) g.add_edge(P(i), P(i + 1));
  ASSERT_EQ(g.page_count(), kPages);
  ASSERT_EQ(g.edge_count(), kPages - 1);
  const auto order = g.topological_order();
  for (std::uint64_t i = 0; i < kPages; ++i) ASSERT_EQ(order[i], P(i + 1));
  // Edges agreeing with the order, between neighbours and across the chain.
  g.add_edge(P(50000), P(50001), DependencyKind::Control);
  g.add_edge(P(1), P(kPages));
  // An edge against the order whose affected region is two pages: only those two indices change.
  g.add_edge(P(kPages + 1), P(kPages + 2));  // new source (placed first) and new target (placed last)
  const auto first_index = g.order_index(P(1));
  const auto last_index = g.order_index(P(kPages));
  g.add_edge(P(kPages + 2), P(kPages));
  EXPECT_EQ(g.order_index(P(1)), first_index);
  EXPECT_LT(g.order_index(P(kPages + 2)), g.order_index(P(kPages)));
  EXPECT_EQ(g.order_index(P(kPages + 2)), last_index);
  // Closing the cycle over the full chain is still found (this search does cover it).
  ASSERT_TRUE(g.remove_edge(P(1), P(kPages)));
  const std::string what = cycle_error(g, P(kPages), P(1));
  EXPECT_NE(what.find("p0:100000 -> p0:1 -> p0:2 -> p0:3 -> "), std::string::npos);
  for (std::uint64_t i = 1; i < kPages; ++i) ASSERT_LT(g.order_index(P(i)), g.order_index(P(i + 1))) << i;
}

TEST(DependencyGraphTest, LongChainBuiltFromItsEndBackwardsIsValid) {
  constexpr std::uint64_t kPages = 100000;
  DependencyGraph g;
  for (std::uint64_t i = kPages - 1; i >= 1; --i) g.add_edge(P(i), P(i + 1));
  ASSERT_EQ(g.edge_count(), kPages - 1);
  const auto order = g.topological_order();
  for (std::uint64_t i = 0; i < kPages; ++i) ASSERT_EQ(order[i], P(i + 1));
  EXPECT_THROW(g.add_edge(P(kPages), P(1)), Error);
}

TEST(DependencyGraphTest, ReverseInsertionOverExistingPagesReordersEveryTime) {
  // Pages 1..n exist in increasing order (as targets of a hub); the chain n → n-1 → ... → 1 is then added from its
  // end, so every edge disagrees with the current order and forces a reorder.
  constexpr std::uint64_t kPages = 1500;
  DependencyGraph g;
  for (std::uint64_t i = 1; i <= kPages; ++i) g.add_edge(P(0xFFFF), P(i));
  std::set<PageId> pages{P(0xFFFF)};
  std::vector<std::tuple<PageId, PageId>> edges;
  for (std::uint64_t i = 1; i <= kPages; ++i) {
    pages.insert(P(i));
    edges.emplace_back(P(0xFFFF), P(i));
  }
  for (std::uint64_t i = kPages - 1; i >= 1; --i) {
    ASSERT_GT(g.order_index(P(i + 1)), g.order_index(P(i)));  // against the order
    g.add_edge(P(i + 1), P(i));
    edges.emplace_back(P(i + 1), P(i));
    ASSERT_LT(g.order_index(P(i + 1)), g.order_index(P(i)));
    if (i % 100 == 0) {
      ASSERT_TRUE(valid_order(g, pages, edges)) << i;
    }
  }
  ASSERT_TRUE(valid_order(g, pages, edges));
  const auto order = g.topological_order();
  EXPECT_EQ(order.front(), P(0xFFFF));
  for (std::uint64_t i = 1; i <= kPages; ++i) EXPECT_EQ(order[i], P(kPages + 1 - i));
  // Any edge from the start of the chain back to its end's pages is a cycle.
  EXPECT_THROW(g.add_edge(P(1), P(kPages)), Error);
  EXPECT_THROW(g.add_edge(P(1), P(0xFFFF)), Error);
}

// ---- Graphviz ---------------------------------------------------------------------------------------------------

TEST(DependencyGraphTest, DotHasEveryNodeAndEdgeStyledByKind) {
  DependencyGraph g;
  g.add_edge(P(1), P(2), DependencyKind::Data);
  g.add_edge(P(2), P(3), DependencyKind::Control);
  g.add_edge(P(1), P(3), DependencyKind::GpuSync);
  g.add_edge(PageId::make(2, 4), P(1));
  const std::string dot = g.to_dot();
  EXPECT_EQ(dot.rfind("digraph mmsb {\n", 0), 0u) << dot;
  EXPECT_EQ(dot.substr(dot.size() - 2), "}\n");
  for (const char* node : {"\"p0:1\";", "\"p0:2\";", "\"p0:3\";", "\"p2:4\";"}) {
    EXPECT_NE(dot.find(node), std::string::npos) << node << "\n" << dot;
  }
  EXPECT_NE(dot.find("\"p0:1\" -> \"p0:2\";"), std::string::npos) << dot;
  EXPECT_NE(dot.find("\"p0:2\" -> \"p0:3\" [style=dashed];"), std::string::npos) << dot;
  EXPECT_NE(dot.find("\"p0:1\" -> \"p0:3\" [style=bold];"), std::string::npos) << dot;
  EXPECT_NE(dot.find("\"p2:4\" -> \"p0:1\";"), std::string::npos) << dot;
  EXPECT_EQ(std::count(dot.begin(), dot.end(), '>'), 4);
  // Nodes come in topological order.
  EXPECT_LT(dot.find("\"p2:4\";"), dot.find("\"p0:1\";"));
  EXPECT_LT(dot.find("\"p0:2\";"), dot.find("\"p0:3\";"));
}

TEST(DependencyGraphTest, DotLabelsAreEscaped) {
  DependencyGraph g;
  g.add_edge(P(1), P(2));
  const std::string dot =
      g.to_dot({{P(1), "say \"hi\""}, {P(2), "a\\b"}, {P(2), "second"}, {P(9), "not in the graph"}});
  EXPECT_NE(dot.find("\"p0:1\" [label=\"p0:1\\nsay \\\"hi\\\"\"];"), std::string::npos) << dot;
  EXPECT_NE(dot.find("\"p0:2\" [label=\"p0:2\\na\\\\b\\nsecond\"];"), std::string::npos) << dot;
  EXPECT_EQ(dot.find("p0:9"), std::string::npos) << dot;
  EXPECT_EQ(dot.find("not in the graph"), std::string::npos) << dot;
}

TEST(DependencyGraphTest, DotIsDeterministicForTheSameCalls) {
  auto build = [] {
    auto g = std::make_unique<DependencyGraph>();
    for (std::uint64_t i = 1; i <= 30; ++i) g->add_edge(P(100), P(i), static_cast<DependencyKind>(i % 3));
    for (std::uint64_t i = 30; i > 1; i -= 3) g->add_edge(P(i), P(i - 1), DependencyKind::Control);
    g->remove_page(P(15));
    g->remove_edge(P(100), P(7), DependencyKind::Data);
    return g;
  };
  const auto a = build();
  const auto b = build();
  EXPECT_EQ(a->to_dot(), b->to_dot());
  EXPECT_EQ(a->topological_order(), b->topological_order());
  EXPECT_EQ(a->to_dot({{P(3), "x"}}), b->to_dot({{P(3), "x"}}));
}

// A bulk build reserves once: adding the reserved vertices and edges (fan-in lists whose capacities are the
// exact powers of two, as in a tree of fan-in 8) allocates nothing more, and the edges come out as added.
TEST(DependencyGraphTest, ReservedBulkBuildNeedsNoFurtherMemory) {
  DependencyGraph g;
  constexpr std::uint64_t kTargets = 1000, kFanIn = 8;
  g.reserve(kTargets * (kFanIn + 1), kTargets * kFanIn);
  const std::size_t reserved = g.memory_bytes();
  std::vector<VertexId> inputs(kFanIn);
  for (std::uint64_t t = 0; t < kTargets; ++t) {
    for (std::uint64_t i = 0; i < kFanIn; ++i) {
      inputs[i] = g.add_vertex(P(1 + t * (kFanIn + 1) + i), DependencyGraph::Placement::First);
    }
    const VertexId target = g.add_vertex(P(1 + t * (kFanIn + 1) + kFanIn), DependencyGraph::Placement::Last);
    ASSERT_EQ(g.add_edges(inputs, target, DependencyKind::Data), kFanIn);
  }
  EXPECT_EQ(g.memory_bytes(), reserved);
  EXPECT_EQ(g.edge_count(), kTargets * kFanIn);
  const std::vector<Dependency> last = g.inputs_of(P(kTargets * (kFanIn + 1)));
  ASSERT_EQ(last.size(), kFanIn);
  for (std::uint64_t i = 0; i < kFanIn; ++i) EXPECT_EQ(last[i].from, P(1 + (kTargets - 1) * (kFanIn + 1) + i));
}

}  // namespace
}  // namespace mmsb::detail
