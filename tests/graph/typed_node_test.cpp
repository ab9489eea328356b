// tests/graph/typed_node_test.cpp — what a node's author sees: typed views of inputs and outputs (MapContext,
// IncrementalContext), for_each_changed + DeltaBuilder in incremental nodes, and the first computation of a new
// node (derive_*, then propagate() or the next wave) in every mode.
#include <gtest/gtest.h>

#include <atomic>
#include <cstdint>
#include <string>
#include <vector>

#include "mmsb/graph.hpp"
#include "mmsb/runtime.hpp"
#include "support/test_support.hpp"

namespace mmsb {
namespace {

constexpr std::size_t kN = 16;

void write_floats(Runtime& rt, PageId page, std::uint64_t first, std::vector<float> values) {
  auto txn = rt.begin();
  txn.write_span(page, first * sizeof(float), values);
  txn.commit();
}

std::vector<float> floats_of(Runtime& rt, PageId page) {
  std::vector<float> out(rt.info(page).size / sizeof(float));
  rt.read_span<float>(page, 0, out);
  return out;
}

// out[k] = 2 * in[k], computed for the changed k only.
void double_changed(const IncrementalContext& c, Delta& out) {
  auto in = c.input_span<float>(0);
  DeltaBuilder b(c.output.size());
  // Visit in reverse to show the builder sorts: ranges may be added in any order.
  std::vector<std::size_t> changed;
  c.for_each_changed<float>(0, [&](std::size_t k) { changed.push_back(k); });
  for (auto it = changed.rbegin(); it != changed.rend(); ++it) b.write_element(*it, 2 * in[*it]);
  b.finish(out);
}

TEST(TypedNode, MapReadsAndWritesTypedSpans) {
  Runtime rt;
  Propagator prop(rt);
  const PageId in = rt.create_page(kN * sizeof(float)), out = rt.create_page(kN * sizeof(float));
  prop.derive_map(out, {in}, [](MapContext& c) {
    auto src = c.input_span<float>(0);
    auto dst = c.output_span<float>();
    for (std::size_t k = 0; k < src.size(); ++k) dst[k] = src[k] + 1;
  });
  write_floats(rt, in, 3, {10, 20});
  std::vector<float> expected(kN, 1.0f);
  expected[3] = 11;
  expected[4] = 21;
  EXPECT_EQ(floats_of(rt, out), expected);
}

TEST(TypedNode, MapViewOfAnIllSizedInputNamesTheInputAndTheNode) {
  Runtime rt;
  Propagator prop(rt);
  const PageId odd = rt.create_page(6), out = rt.create_page(8);
  prop.derive_map(out, {odd, odd},
                  [](MapContext& c) { c.output_as<std::uint64_t>() = c.input_span<std::uint32_t>(1).size(); });
  try {
    testing::commit_value<std::uint16_t>(rt, odd, 0, 1);
    FAIL() << "the node should have failed";
  } catch (const NodeError& e) {
    EXPECT_EQ(e.page(), out);
    try {
      std::rethrow_exception(e.nested());
    } catch (const Error& inner) {
      EXPECT_NE(std::string(inner.what())
                    .find("MapContext::input_span: input 1 of the node computing page " + out.to_string() +
                          " (6 bytes) does not hold a whole number of 4-byte elements"),
                std::string::npos)
          << inner.what();
    }
  }
}

TEST(TypedNode, IncrementalFirstRunSeesEverythingThenOnlyChanges) {
  Runtime rt;
  Propagator prop(rt);
  const PageId in = rt.create_page(kN * sizeof(float)), out = rt.create_page(kN * sizeof(float));
  std::vector<float> initial(kN);
  for (std::size_t k = 0; k < kN; ++k) initial[k] = static_cast<float>(k);
  write_floats(rt, in, 0, initial);  // before the node exists
  std::vector<bool> recompute_flags;
  prop.derive_incremental(out, {in}, [&](const IncrementalContext& c, Delta& d) {
    recompute_flags.push_back(c.recompute);
    double_changed(c, d);
  });
  EXPECT_TRUE(prop.is_stale(out));
  prop.propagate();  // computes the new node from scratch
  EXPECT_FALSE(prop.is_stale(out));
  std::vector<float> expected(kN);
  for (std::size_t k = 0; k < kN; ++k) expected[k] = 2.0f * static_cast<float>(k);
  EXPECT_EQ(floats_of(rt, out), expected);

  std::vector<ByteRange> published;
  prop.subscribe(out, [&](const Delta& d, std::uint64_t) { published = d.ranges; });
  auto txn = rt.begin();
  txn.write_value<float>(in, 9 * sizeof(float), 100);
  txn.write_value<float>(in, 2 * sizeof(float), 50);
  txn.commit();
  expected[9] = 200;
  expected[2] = 100;
  EXPECT_EQ(floats_of(rt, out), expected);
  EXPECT_EQ(published,
            (std::vector<ByteRange>{{2 * sizeof(float), sizeof(float)}, {9 * sizeof(float), sizeof(float)}}));
  EXPECT_EQ(recompute_flags, (std::vector<bool>{true, false}));
}

TEST(TypedNode, ForEachChangedCoversPartlyWrittenElementsOnce) {
  Runtime rt;
  Propagator prop(rt);
  const PageId in = rt.create_page(kN * sizeof(std::uint32_t)), out = rt.create_page(8);
  std::vector<std::size_t> seen;
  prop.derive_incremental(out, {in}, [&](const IncrementalContext& c, Delta&) {
    if (!c.recompute) c.for_each_changed<std::uint32_t>(0, [&](std::size_t k) { seen.push_back(k); });
  });
  prop.propagate();
  auto txn = rt.begin();
  txn.write_value<std::uint8_t>(in, 5, 1);  // one byte of element 1
  // The end of element 1 and the start of element 2: both bytes change, since commits record changed bytes only.
  txn.write_value<std::uint16_t>(in, 7, 0x0101);
  txn.write_value<std::uint8_t>(in, 40, 1);  // element 10
  txn.commit();
  EXPECT_EQ(seen, (std::vector<std::size_t>{1, 2, 10}));
}

PropagatorOptions in_mode(PropagationMode mode) {
  PropagatorOptions o;
  o.mode = mode;
  return o;
}

class NewNodeTest : public ::testing::TestWithParam<PropagationMode> {};

TEST_P(NewNodeTest, PropagateComputesANodeDeclaredAfterItsInputsWereWritten) {
  Runtime rt;
  Propagator prop(rt, in_mode(GetParam()));
  const PageId a = rt.create_page(8), doubled = rt.create_page(8);
  testing::commit_i64(rt, a, 21);
  prop.propagate();
  std::atomic<int> runs{0};
  prop.derive_map(doubled, {a}, [&](MapContext& c) {
    ++runs;
    c.output_as<std::int64_t>() = 2 * c.input_as<std::int64_t>(0);
  });
  EXPECT_EQ(runs.load(), 0);  // declaring runs nothing
  EXPECT_TRUE(prop.is_stale(doubled));
  prop.propagate();
  EXPECT_EQ(runs.load(), 1);
  EXPECT_EQ(rt.read_value<std::int64_t>(doubled, 0), 42);
  prop.propagate();  // computed once: nothing changed since
  EXPECT_EQ(runs.load(), 1);
}

TEST_P(NewNodeTest, NextWaveComputesANewNodeEvenIfItsInputsDidNotChange) {
  Runtime rt;
  Propagator prop(rt, in_mode(GetParam()));
  const PageId a = rt.create_page(8), b = rt.create_page(8), from_a = rt.create_page(8), from_b = rt.create_page(8);
  prop.derive_map(from_b, {b}, [](MapContext& c) { c.output_as<std::int64_t>() = c.input_as<std::int64_t>(0) + 1; });
  prop.propagate();
  testing::commit_i64(rt, a, 5);
  prop.propagate();
  prop.derive_map(from_a, {a}, [](MapContext& c) { c.output_as<std::int64_t>() = c.input_as<std::int64_t>(0) * 3; });
  testing::commit_i64(rt, b, 1);  // a wave that does not touch `a`
  prop.propagate();
  EXPECT_EQ(rt.read_value<std::int64_t>(from_a, 0), 15);
  EXPECT_EQ(rt.read_value<std::int64_t>(from_b, 0), 2);
}

INSTANTIATE_TEST_SUITE_P(Modes, NewNodeTest,
                         ::testing::Values(PropagationMode::Immediate, PropagationMode::Deferred,
                                           PropagationMode::Batch),
                         [](const ::testing::TestParamInfo<PropagationMode>& mode) {
                           switch (mode.param) {
                             case PropagationMode::Immediate:
                               return std::string("Immediate");
                             case PropagationMode::Deferred:
                               return std::string("Deferred");
                             case PropagationMode::Batch:
                               break;
                           }
                           return std::string("Batch");
                         });

TEST(TypedNode, IncrementalNodeHealsExactlyAfterAFailedWave) {
  Runtime rt;
  Propagator prop(rt);
  const PageId in = rt.create_page(kN * sizeof(float)), out = rt.create_page(kN * sizeof(float));
  bool fail = false;
  prop.derive_incremental(out, {in}, [&](const IncrementalContext& c, Delta& d) {
    if (fail) throw Error(ErrorCode::Aborted, "planted failure");
    double_changed(c, d);
  });
  prop.propagate();
  fail = true;
  EXPECT_THROW(write_floats(rt, in, 4, {3}), NodeError);  // the commit took effect; the node did not run
  fail = false;
  write_floats(rt, in, 6, {5});  // this wave's delta alone does not say that element 4 changed
  std::vector<float> expected(kN, 0.0f);
  expected[4] = 6;
  expected[6] = 10;
  EXPECT_EQ(floats_of(rt, out), expected);
}

}  // namespace
}  // namespace mmsb
