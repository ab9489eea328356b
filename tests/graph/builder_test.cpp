// GraphBuilder: many nodes added as one graph version, all or nothing, with shared functions.
#include <gtest/gtest.h>

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "mmsb/graph.hpp"
#include "mmsb/mmsb.hpp"
#include "support/test_support.hpp"

namespace mmsb {
namespace {

using mmsb::testing::commit_u64;

std::uint64_t read_u64(const Runtime& rt, PageId page) { return rt.read_value<std::uint64_t>(page, 0); }

void sum_inputs(MapContext& c) {
  std::uint64_t sum = 0;
  for (std::size_t i = 0; i < c.input_count(); ++i) sum += c.input_as<std::uint64_t>(i);
  c.output_as<std::uint64_t>() = sum;
}

std::optional<Error> error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e;
  }
  ADD_FAILURE() << "expected an mmsb::Error, nothing was thrown";
  return std::nullopt;
}

TEST(GraphBuilder, CommitAddsEveryNodeAsOneGraphVersion) {
  Runtime rt;
  Propagator prop(rt);
  std::vector<PageId> sources, maps;
  for (int i = 0; i < 16; ++i) sources.push_back(rt.create_page(8));
  GraphBuilder build(prop);
  auto sum = build.add_map_function(sum_inputs);
  for (int i = 0; i < 16; ++i) {
    maps.push_back(rt.create_page(8));
    build.derive_map(maps.back(), {sources[i]}, sum);
  }
  const PageId total = rt.create_page(8);
  build.derive_map(total, maps, sum);
  EXPECT_EQ(build.size(), 17u);
  EXPECT_EQ(prop.node_count(), 0u) << "nothing is added before commit()";
  build.commit();
  EXPECT_EQ(build.size(), 0u);
  EXPECT_EQ(prop.node_count(), 17u);

  for (int i = 0; i < 16; ++i) commit_u64(rt, sources[i], 0, static_cast<std::uint64_t>(i + 1));
  EXPECT_EQ(read_u64(rt, total), 136u);  // 1 + ... + 16
  EXPECT_EQ(prop.stats().plan_builds, 1u) << "one graph version, one plan";
}

TEST(GraphBuilder, SharedFunctionServesLaterCommitsAndOutlivesTheBuilder) {
  Runtime rt;
  Propagator prop(rt);
  const PageId a = rt.create_page(8), b = rt.create_page(8), c = rt.create_page(8);
  {
    GraphBuilder build(prop);
    auto sum = build.add_map_function(sum_inputs);
    build.derive_map(b, {a}, sum).commit();
    build.derive_map(c, {a, b}, sum).commit();  // the same function, already in the engine
  }
  commit_u64(rt, a, 0, 5);
  EXPECT_EQ(read_u64(rt, b), 5u);
  EXPECT_EQ(read_u64(rt, c), 10u);
  prop.remove_node(b);
  commit_u64(rt, a, 0, 6);
  EXPECT_EQ(read_u64(rt, c), 11u) << "c reads b's last bytes (5) and a (6)";
}

TEST(GraphBuilder, RefusedNodeLeavesNothingAdded) {
  Runtime rt;
  Propagator prop(rt);
  const PageId a = rt.create_page(8), b = rt.create_page(8), c = rt.create_page(8), d = rt.create_page(8);
  prop.derive_map(b, {a}, sum_inputs);
  const auto version_nodes = prop.nodes();

  GraphBuilder build(prop);
  build.derive_map(c, {b}, sum_inputs);
  build.derive_map(d, {c}, sum_inputs);
  build.derive_map(a, {d}, sum_inputs);  // a -> b -> c -> d -> a: a cycle
  auto error = error_of([&] { build.commit(); });
  ASSERT_TRUE(error);
  EXPECT_EQ(error->code(), ErrorCode::InvalidArgument);
  EXPECT_NE(std::string(error->what()).find("cycle"), std::string::npos) << error->what();
  EXPECT_EQ(prop.node_count(), 1u);
  EXPECT_EQ(prop.nodes().size(), version_nodes.size());
  EXPECT_EQ(build.size(), 0u) << "the builder is empty after a failed commit";

  // The same outputs can be derived afterwards: nothing of the refused build is left behind.
  build.derive_map(c, {b}, sum_inputs).derive_map(d, {c}, sum_inputs).commit();
  commit_u64(rt, a, 0, 7);
  EXPECT_EQ(read_u64(rt, d), 7u);
}

// A rolled-back build's nodes were stale; what the next waves run must not include them, nor a node declared
// current that takes over one of their slots (remove_node leaves their stale entries for the next wave to skip).
TEST(GraphBuilder, RolledBackStaleNodesAreNotRunLater) {
  Runtime rt;
  Propagator prop(rt);
  const PageId a = rt.create_page(8), b = rt.create_page(8), c = rt.create_page(8), d = rt.create_page(8);
  const PageId e = rt.create_page(8);
  prop.derive_map(b, {a}, sum_inputs);
  commit_u64(rt, a, 0, 3);
  commit_u64(rt, e, 0, 5);
  ASSERT_EQ(read_u64(rt, b), 3u);
  const PropagationStats before = prop.stats();

  GraphBuilder build(prop);
  build.derive_map(c, {b}, sum_inputs).derive_map(d, {c}, sum_inputs).derive_map(a, {d}, sum_inputs);  // a cycle
  ASSERT_TRUE(error_of([&] { build.commit(); }));
  // e, declared current with the value 5 it holds, takes over a freed node slot before any wave ran: neither it
  // nor the refused nodes may run.
  NodeOptions current;
  current.output_is_current = true;
  prop.derive_map(e, {c}, sum_inputs, current);
  prop.propagate();
  EXPECT_EQ(read_u64(rt, e), 5u) << "a node declared current is not recomputed by a stale entry of a removed node";
  EXPECT_EQ(prop.stats().nodes_recomputed, before.nodes_recomputed) << "no node of the refused build runs";
  EXPECT_EQ(prop.stats().nodes_skipped, before.nodes_skipped) << "nor does the wave reach any node (none is stale)";
  EXPECT_EQ(prop.node_count(), 2u);
  commit_u64(rt, c, 0, 9);
  EXPECT_EQ(read_u64(rt, e), 9u) << "it still runs when its input changes";
}

TEST(GraphBuilder, MissingPageAndDuplicateOutputAreRefusedLikeDerive) {
  Runtime rt;
  Propagator prop(rt);
  const PageId a = rt.create_page(8), b = rt.create_page(8);
  GraphBuilder build(prop);
  build.derive_map(b, {a}, sum_inputs);
  build.derive_map(b, {a}, sum_inputs);
  auto twice = error_of([&] { build.commit(); });
  ASSERT_TRUE(twice);
  EXPECT_EQ(twice->code(), ErrorCode::InvalidArgument);
  EXPECT_EQ(prop.node_count(), 0u);

  const PageId missing = PageId::make(0, 999'999);
  build.derive_map(b, {a}, sum_inputs).derive_map(rt.create_page(8), {missing}, sum_inputs);
  auto not_found = error_of([&] { build.commit(); });
  ASSERT_TRUE(not_found);
  EXPECT_EQ(not_found->code(), ErrorCode::NotFound);
  EXPECT_EQ(prop.node_count(), 0u);
}

TEST(GraphBuilder, FunctionIdFromAnotherKindOrBuilderIsInvalidArgument) {
  Runtime rt;
  Propagator prop(rt);
  const PageId a = rt.create_page(8), b = rt.create_page(8);
  GraphBuilder build(prop);
  auto map = build.add_map_function(sum_inputs);
  auto error = error_of([&] { build.derive_incremental(b, {a}, map); });
  ASSERT_TRUE(error);
  EXPECT_EQ(error->code(), ErrorCode::InvalidArgument);
  EXPECT_TRUE(error_of([&] { build.add_map_function(MapFunction{}); }));
}

// The registry is the test's own (not FunctionRegistry::global()), so the test can repeat in one process. A
// registered incremental function with a rebuild function keeps it through the builder as through derive_*().
TEST(GraphBuilder, NodesDescribeTheSameAsDeriveCalls) {
  const IncrementalFunction copy_delta = [](const IncrementalContext& c, Delta& out) {
    if (c.input_deltas[0]) out = *c.input_deltas[0];
  };
  const auto registry = std::make_shared<FunctionRegistry>();
  registry->register_map("builder_test.sum", sum_inputs);
  registry->register_incremental("builder_test.copy", copy_delta, sum_inputs);
  auto describe = [&](bool bulk) {
    Runtime rt;
    Propagator prop(rt, {}, registry);
    std::vector<PageId> p;
    for (int i = 0; i < 7; ++i) p.push_back(rt.create_page(16));
    NodeOptions named;
    named.name = "total";
    named.always_changes = true;
    if (bulk) {
      GraphBuilder build(prop);
      build.derive_map(p[1], {p[0]}, sum_inputs);
      build.derive_passthrough(p[2], p[1], ByteRemap{0, 8, 8});
      build.derive_incremental(p[3], {p[1]}, copy_delta);
      build.derive_map(p[4], {p[1], p[3]}, "builder_test.sum");
      build.derive_map(p[5], {p[2], p[4]}, sum_inputs, named);
      build.derive_incremental(p[6], {p[1]}, "builder_test.copy");
      build.commit();
    } else {
      prop.derive_map(p[1], {p[0]}, sum_inputs);
      prop.derive_passthrough(p[2], p[1], ByteRemap{0, 8, 8});
      prop.derive_incremental(p[3], {p[1]}, copy_delta);
      prop.derive_map(p[4], {p[1], p[3]}, "builder_test.sum");
      prop.derive_map(p[5], {p[2], p[4]}, sum_inputs, named);
      prop.derive_incremental(p[6], {p[1]}, "builder_test.copy");
    }
    std::vector<std::string> out;
    for (const NodeDescription& d : prop.nodes()) {
      std::string text = d.output.to_string() + " " + std::to_string(static_cast<int>(d.kind)) + " [";
      for (PageId in : d.inputs) text += in.to_string() + " ";
      text += "] fn=" + d.function + " name=" + d.options.name + " always=" + std::to_string(d.options.always_changes) +
              " remap=" + std::to_string(d.remap.input_offset) + "," + std::to_string(d.remap.length) + "," +
              std::to_string(d.remap.output_offset) + " rebuild=" + std::to_string(d.has_rebuild);
      out.push_back(text);
    }
    return out;
  };
  const auto one_by_one = describe(false);
  ASSERT_EQ(one_by_one.size(), 6u);
  EXPECT_NE(one_by_one.back().find("rebuild=1"), std::string::npos) << one_by_one.back();
  EXPECT_NE(one_by_one[2].find("rebuild=0"), std::string::npos) << one_by_one[2];
  EXPECT_EQ(describe(true), one_by_one);
}

TEST(GraphBuilder, EmptyCommitChangesNothing) {
  Runtime rt;
  Propagator prop(rt);
  GraphBuilder build(prop);
  build.commit();
  EXPECT_EQ(prop.node_count(), 0u);
  EXPECT_EQ(prop.to_dot(), "digraph mmsb {\n}\n");
}

}  // namespace
}  // namespace mmsb
