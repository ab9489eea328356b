// Tests of mmsb::Propagator against the contract in mmsb/graph.hpp: waves, cutoff, node kinds, modes, failure,
// backpressure, cycles, determinism across thread counts, and random DAGs checked against a sequential reference.
#include <gtest/gtest.h>
#include <unistd.h>

#include <array>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <future>
#include <memory>
#include <mutex>
#include <optional>
#include <random>
#include <stdexcept>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

#include "mmsb/graph.hpp"
#include "mmsb/mmsb.hpp"
#include "support/test_support.hpp"

namespace mmsb {
namespace {

using namespace std::chrono_literals;

// ---- helpers ------------------------------------------------------------------------------------------------

using mmsb::testing::commit_i64;
using mmsb::testing::commit_u64;
using mmsb::testing::heap_bytes_in_use;

std::uint64_t read_u64(const Runtime& rt, PageId page, std::uint64_t offset = 0) {
  return rt.read_value<std::uint64_t>(page, offset);
}

std::int64_t read_i64(const Runtime& rt, PageId page) { return rt.read_value<std::int64_t>(page, 0); }

// Runs f and returns the mmsb::Error it throws (a failure is recorded when it throws none).
template <class F>
std::optional<Error> error_of(F&& f) {
  try {
    f();
  } catch (const Error& e) {
    return e;
  } catch (const std::exception& e) {
    ADD_FAILURE() << "expected an mmsb::Error, got std::exception: " << e.what();
    return std::nullopt;
  }
  ADD_FAILURE() << "expected an mmsb::Error, nothing was thrown";
  return std::nullopt;
}

// A map function: output int64 = factor * input0 + addend.
MapFunction affine(std::int64_t factor, std::int64_t addend) {
  return
      [factor, addend](MapContext& c) { c.output_as<std::int64_t>() = factor * c.input_as<std::int64_t>(0) + addend; };
}

// A map function that counts its calls and copies input 0's int64 to the output.
MapFunction counting_copy(std::atomic<int>& calls) {
  return [&calls](MapContext& c) {
    calls.fetch_add(1);
    c.output_as<std::int64_t>() = c.input_as<std::int64_t>(0);
  };
}

std::uint64_t fnv1a(std::uint64_t h, std::span<const std::byte> bytes) {
  for (std::byte b : bytes) {
    h ^= static_cast<std::uint64_t>(b);
    h *= 0x100000001b3ULL;
  }
  return h;
}

// ---- IMMEDIATE mode: map nodes ------------------------------------------------------------------------------

TEST(Propagator, MapNodeOutputIsVisibleWhenImmediateCommitReturns) {
  Runtime rt;
  Propagator prop(rt);
  PageId a = rt.create_page(8), doubled = rt.create_page(8);
  prop.derive_map(doubled, {a}, affine(2, 0));
  EXPECT_EQ(prop.node_count(), 1u);
  commit_i64(rt, a, 21);
  EXPECT_EQ(read_i64(rt, doubled), 42);
  commit_i64(rt, a, -4);
  EXPECT_EQ(read_i64(rt, doubled), -8);
  EXPECT_FALSE(prop.is_stale(doubled));
}

TEST(Propagator, AnExternalPageCannotBeANodesOutput) {
  Runtime rt;
  Propagator prop(rt);
  static const std::array<std::byte, 8> memory{};
  PageId external = rt.create_external_page(memory);
  PageId in = rt.create_page(8);
  EXPECT_EQ(mmsb::testing::error_code_of([&] { prop.derive_passthrough(external, in); }), ErrorCode::InvalidArgument);
  EXPECT_EQ(prop.node_count(), 0u);
  // As an input it is fine.
  PageId out = rt.create_page(8);
  prop.derive_passthrough(out, external);
  EXPECT_EQ(prop.node_count(), 1u);
}

TEST(Propagator, DerivedPageEpochAdvancesOncePerChangingWave) {
  Runtime rt;
  Propagator prop(rt);
  PageId a = rt.create_page(8), b = rt.create_page(8);
  prop.derive_map(b, {a}, affine(1, 0));
  const std::uint64_t e0 = rt.info(b).epoch;
  commit_i64(rt, a, 1);
  EXPECT_EQ(rt.info(b).epoch, e0 + 1);
  commit_i64(rt, a, 2);
  EXPECT_EQ(rt.info(b).epoch, e0 + 2);
}

// A map whose delta no one reads (no observer, no consuming reader) publishes a small output in place, without
// building the delta; an observed one builds it. Both must leave the same bytes, epochs and counts: the bytes of
// the delta (one range from the first to the last changed byte, or the whole page past half of it) and cutoffs.
TEST(Propagator, UnobservedSmallMapOutputPublishesWhatTheDeltaWould) {
  for (std::uint64_t size : {1u, 8u, 12u, 16u, 24u}) {
    for (bool always : {false, true}) {
      SCOPED_TRACE("size " + std::to_string(size) + (always ? ", always_changes" : ""));
      Runtime observed_rt, plain_rt;
      Propagator observed(observed_rt), plain(plain_rt);
      std::array<PageId, 2> ins, outs;
      for (auto [rt, prop, k] : {std::tuple{&observed_rt, &observed, 0}, std::tuple{&plain_rt, &plain, 1}}) {
        ins[k] = rt->create_page(size);
        outs[k] = rt->create_page(size);
        // Byte 0 of the output ignores the input, so a change there alone is cut off.
        prop->derive_map(
            outs[k], {ins[k]},
            [](MapContext& c) {
              auto in = c.input(0);
              auto out = c.output();
              for (std::size_t b = 1; b < out.size(); ++b) out[b] = in[b] ^ std::byte{0x5a};
            },
            NodeOptions{.always_changes = always, .name = {}, .output_is_current = false});
        prop->propagate();  // computes the new node, so the first write below (byte 0 alone) is cut off
      }
      std::size_t changes = 0;
      const std::uint64_t recomputed_before = observed.stats().nodes_recomputed;
      observed.subscribe(outs[0], [&](const Delta&, std::uint64_t) { ++changes; });
      const std::vector<std::pair<std::uint64_t, std::uint64_t>> writes = {
          {0, 1}, {size - 1, 1}, {size / 2, 1}, {1, size - 1}, {0, size}, {size / 3, (size + 2) / 3}};
      std::uint8_t value = 1;
      for (auto [offset, length] : writes) {
        std::vector<std::byte> bytes(length, std::byte{value++});
        for (auto [rt, k] : {std::pair{&observed_rt, 0}, std::pair{&plain_rt, 1}}) {
          auto txn = rt->begin();
          txn.write(ins[k], offset, bytes);
          txn.commit();
        }
        EXPECT_EQ(observed_rt.read_all(outs[0]), plain_rt.read_all(outs[1]));
        EXPECT_EQ(observed_rt.info(outs[0]).epoch, plain_rt.info(outs[1]).epoch);
        const PropagationStats a = observed.stats(), b = plain.stats();
        EXPECT_EQ(a.bytes_changed, b.bytes_changed);
        EXPECT_EQ(a.nodes_recomputed, b.nodes_recomputed);
        EXPECT_EQ(a.nodes_cut_off, b.nodes_cut_off);
      }
      const PropagationStats a = observed.stats();
      EXPECT_EQ(changes, a.nodes_recomputed - recomputed_before);  // the observed side delivered each delta
      if (size > 1 && !always) {
        EXPECT_GT(a.nodes_cut_off, 0u);
      }
    }
  }
}

TEST(Propagator, ChainOfMapNodesPropagatesThroughEveryHop) {
  Runtime rt;
  Propagator prop(rt);
  PageId src = rt.create_page(8);
  std::vector<PageId> chain{src};
  for (int i = 0; i < 20; ++i) {
    PageId next = rt.create_page(8);
    prop.derive_map(next, {chain.back()}, affine(1, 1));
    chain.push_back(next);
  }
  commit_i64(rt, src, 5);
  for (std::size_t i = 0; i < chain.size(); ++i) EXPECT_EQ(read_i64(rt, chain[i]), 5 + static_cast<std::int64_t>(i));
  commit_i64(rt, src, 100);
  EXPECT_EQ(read_i64(rt, chain.back()), 120);
}

TEST(Propagator, DiamondJoinRunsOncePerWaveAfterBothBranches) {
  Runtime rt;
  Propagator prop(rt);
  PageId a = rt.create_page(8), b = rt.create_page(8), c = rt.create_page(8), d = rt.create_page(8);
  prop.derive_map(b, {a}, affine(2, 0));
  prop.derive_map(c, {a}, affine(3, 0));
  std::atomic<int> join_calls{0};
  prop.derive_map(d, {b, c}, [&](MapContext& ctx) {
    join_calls.fetch_add(1);
    ctx.output_as<std::int64_t>() = ctx.input_as<std::int64_t>(0) + ctx.input_as<std::int64_t>(1);
  });
  commit_i64(rt, a, 1);
  EXPECT_EQ(read_i64(rt, d), 5);
  EXPECT_EQ(join_calls.load(), 1);
  commit_i64(rt, a, 10);
  EXPECT_EQ(read_i64(rt, d), 50);
  EXPECT_EQ(join_calls.load(), 2);
}

// The plan keeps a page's only reader, and a node's only successor, beside the general successor lists; a page
// that gains a second reader (and a node a second successor) after a wave, then loses it, must reach every reader
// each time.
TEST(Propagator, AWaveReachesEveryReaderAsPagesGainAndLoseReaders) {
  Runtime rt;
  Propagator prop(rt);
  std::vector<PageId> pages;
  for (int i = 0; i < 5; ++i) pages.push_back(rt.create_page(8));
  const PageId s = pages[0], b = pages[1], c = pages[2], d = pages[3], e = pages[4];
  prop.derive_map(b, {s}, affine(2, 0));
  prop.derive_map(c, {b}, affine(1, 1));
  commit_i64(rt, s, 1);
  EXPECT_EQ(read_i64(rt, c), 3);
  prop.derive_map(d, {s}, affine(3, 0));  // s now has two readers, b two successors
  prop.derive_map(e, {b}, affine(1, 2));
  commit_i64(rt, s, 10);
  EXPECT_EQ(read_i64(rt, b), 20);
  EXPECT_EQ(read_i64(rt, c), 21);
  EXPECT_EQ(read_i64(rt, d), 30);
  EXPECT_EQ(read_i64(rt, e), 22);
  prop.remove_node(d);  // back to one reader of s and one successor of b
  prop.remove_node(c);
  commit_i64(rt, s, 100);
  EXPECT_EQ(read_i64(rt, b), 200);
  EXPECT_EQ(read_i64(rt, e), 202);
  EXPECT_EQ(read_i64(rt, d), 30);  // no longer derived
  EXPECT_EQ(read_i64(rt, c), 21);
}

TEST(Propagator, MapContextSeesInputsInDeclarationOrderAndItsOutputPage) {
  Runtime rt;
  Propagator prop(rt);
  PageId x = rt.create_page(8), y = rt.create_page(16), out = rt.create_page(24);
  std::atomic<std::uint64_t> seen_out{0};
  std::atomic<std::size_t> seen_count{0}, seen_size0{0}, seen_size1{0}, seen_out_size{0};
  prop.derive_map(out, {y, x}, [&](MapContext& c) {
    seen_out = c.output_page().value();
    seen_count = c.input_count();
    seen_size0 = c.input(0).size();
    seen_size1 = c.input(1).size();
    seen_out_size = c.output().size();
    c.output_as<std::uint64_t>(0) = c.input_as<std::uint64_t>(0, 8);  // y's second word
    c.output_as<std::uint64_t>(8) = c.input_as<std::uint64_t>(1);     // x
  });
  auto txn = rt.begin();
  txn.write_value<std::uint64_t>(x, 0, 7);
  txn.write_value<std::uint64_t>(y, 8, 9);
  txn.commit();
  EXPECT_EQ(seen_out.load(), out.value());
  EXPECT_EQ(seen_count.load(), 2u);
  EXPECT_EQ(seen_size0.load(), 16u);
  EXPECT_EQ(seen_size1.load(), 8u);
  EXPECT_EQ(seen_out_size.load(), 24u);
  EXPECT_EQ(read_u64(rt, out, 0), 9u);
  EXPECT_EQ(read_u64(rt, out, 8), 7u);
  EXPECT_EQ(read_u64(rt, out, 16), 0u);
}

TEST(Propagator, MapOutputBufferStartsWithTheOutputsCurrentBytes) {
  Runtime rt;
  Propagator prop(rt);
  PageId a = rt.create_page(8), out = rt.create_page(16);
  // Word 0 copies the input; word 1 counts runs, which only works if the buffer holds the previous output.
  prop.derive_map(out, {a}, [](MapContext& c) {
    c.output_as<std::uint64_t>(0) = c.input_as<std::uint64_t>(0);
    c.output_as<std::uint64_t>(8) += 1;
  });
  for (std::uint64_t v = 1; v <= 3; ++v) commit_u64(rt, a, 0, v);
  EXPECT_EQ(read_u64(rt, out, 0), 3u);
  EXPECT_EQ(read_u64(rt, out, 8), 3u);
}

TEST(Propagator, RecomputeComputesANodeWithoutACommit) {
  Runtime rt;
  Propagator prop(rt);
  PageId a = rt.create_page(8), b = rt.create_page(8), c = rt.create_page(8);
  commit_i64(rt, a, 4);  // before the node exists: nothing derives yet
  prop.derive_map(b, {a}, affine(1, 1));
  prop.derive_map(c, {b}, affine(10, 0));
  EXPECT_EQ(read_i64(rt, b), 0);
  prop.recompute(b);
  EXPECT_EQ(read_i64(rt, b), 5);
  EXPECT_EQ(read_i64(rt, c), 50);  // and what depends on it
  EXPECT_FALSE(prop.is_stale(b));
}

TEST(Propagator, ConcurrentImmediateCommitsOnDifferentSourcesAllReachTheJoin) {
  Runtime rt;
  Propagator prop(rt, PropagatorOptions{.threads = 2});
  constexpr int kThreads = 4, kCommits = 200;
  std::vector<PageId> sources;
  for (int i = 0; i < kThreads; ++i) sources.push_back(rt.create_page(8));
  PageId sum = rt.create_page(8);
  prop.derive_map(sum, sources, [](MapContext& c) {
    std::int64_t s = 0;
    for (std::size_t i = 0; i < c.input_count(); ++i) s += c.input_as<std::int64_t>(i);
    c.output_as<std::int64_t>() = s;
  });
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t)
    threads.emplace_back([&, t] {
      for (int i = 1; i <= kCommits; ++i) commit_i64(rt, sources[t], i * (t + 1));
    });
  for (auto& th : threads) th.join();
  std::int64_t expected = 0;
  for (int t = 0; t < kThreads; ++t) expected += kCommits * (t + 1);
  EXPECT_EQ(read_i64(rt, sum), expected);
}

// ---- cutoff, always_changes, skipping -----------------------------------------------------------------------

TEST(Propagator, CutoffUnchangedMapOutputDoesNotRunDownstream) {
  Runtime rt;
  Propagator prop(rt);
  PageId a = rt.create_page(8), tens = rt.create_page(8), down = rt.create_page(8);
  prop.derive_map(tens, {a}, [](MapContext& c) { c.output_as<std::int64_t>() = c.input_as<std::int64_t>(0) / 10; });
  std::atomic<int> calls{0};
  prop.derive_map(down, {tens}, counting_copy(calls));
  prop.propagate();  // the new nodes' first computation
  calls = 0;

  const auto s0 = prop.stats();
  commit_i64(rt, a, 5);  // tens stays 0, as it was
  EXPECT_EQ(read_i64(rt, tens), 0);
  EXPECT_EQ(calls.load(), 0);
  const auto s1 = prop.stats();
  EXPECT_EQ(s1.nodes_cut_off, s0.nodes_cut_off + 1);

  commit_i64(rt, a, 25);  // tens becomes 2
  EXPECT_EQ(calls.load(), 1);
  EXPECT_EQ(read_i64(rt, down), 2);
  const auto s2 = prop.stats();
  EXPECT_EQ(s2.nodes_cut_off, s1.nodes_cut_off);

  const std::uint64_t tens_epoch = rt.info(tens).epoch;
  commit_i64(rt, a, 27);  // still 2: cut off again
  EXPECT_EQ(calls.load(), 1);
  EXPECT_EQ(prop.stats().nodes_cut_off, s2.nodes_cut_off + 1);
  EXPECT_EQ(rt.info(tens).epoch, tens_epoch) << "a cut-off node must not publish a new epoch";
}

TEST(Propagator, CutoffDownstreamNodeIsCountedAsSkipped) {
  Runtime rt;
  Propagator prop(rt);
  PageId a = rt.create_page(8), zero = rt.create_page(8), down = rt.create_page(8);
  prop.derive_map(zero, {a}, [](MapContext& c) { c.output_as<std::int64_t>() = c.input_as<std::int64_t>(0) * 0; });
  std::atomic<int> calls{0};
  prop.derive_map(down, {zero}, counting_copy(calls));
  prop.propagate();  // the new nodes' first computation
  calls = 0;
  const auto before = prop.stats();
  commit_i64(rt, a, 3);
  const auto after = prop.stats();
  EXPECT_EQ(calls.load(), 0);
  EXPECT_EQ(after.nodes_cut_off, before.nodes_cut_off + 1);
  EXPECT_EQ(after.nodes_skipped, before.nodes_skipped + 1)
      << "the node below the cut-off is reached by the wave with no changed input";
}

TEST(Propagator, AlwaysChangesNodeIsNeverCutOff) {
  Runtime rt;
  Propagator prop(rt);
  PageId a = rt.create_page(8), tens = rt.create_page(8), down = rt.create_page(8);
  prop.derive_map(
      tens, {a}, [](MapContext& c) { c.output_as<std::int64_t>() = c.input_as<std::int64_t>(0) / 10; },
      NodeOptions{.always_changes = true, .name = {}});
  std::atomic<int> calls{0};
  // down's output is its call count, so down itself is never cut off either.
  prop.derive_map(down, {tens}, [&](MapContext& c) { c.output_as<std::int64_t>() = calls.fetch_add(1) + 1; });
  const auto before = prop.stats();
  const std::uint64_t tens_epoch = rt.info(tens).epoch;
  commit_i64(rt, a, 5);  // tens's bytes stay 0 but the node declares they changed
  commit_i64(rt, a, 6);
  EXPECT_EQ(calls.load(), 2);
  EXPECT_EQ(read_i64(rt, down), 2);
  EXPECT_EQ(read_i64(rt, tens), 0);
  EXPECT_EQ(prop.stats().nodes_cut_off, before.nodes_cut_off);
  EXPECT_EQ(rt.info(tens).epoch, tens_epoch + 2) << "an always_changes node publishes every run";
}

TEST(Propagator, TwoInputNodeIsNotRunWhenOnlyAnUnrelatedPageChanged) {
  Runtime rt;
  Propagator prop(rt);
  PageId a = rt.create_page(8), b = rt.create_page(8), u = rt.create_page(8);
  PageId ab = rt.create_page(8), uu = rt.create_page(8);
  std::atomic<int> ab_calls{0}, uu_calls{0};
  prop.derive_map(ab, {a, b}, [&](MapContext& c) {
    ab_calls.fetch_add(1);
    c.output_as<std::int64_t>() = c.input_as<std::int64_t>(0) + c.input_as<std::int64_t>(1);
  });
  prop.derive_map(uu, {u}, counting_copy(uu_calls));
  prop.propagate();  // the new nodes' first computation
  ab_calls = 0;
  uu_calls = 0;
  commit_i64(rt, u, 9);
  EXPECT_EQ(uu_calls.load(), 1);
  EXPECT_EQ(read_i64(rt, uu), 9);
  EXPECT_EQ(ab_calls.load(), 0);
  // One commit to a, b and u: the two-input node runs once.
  auto txn = rt.begin();
  txn.write_value<std::int64_t>(a, 0, 1);
  txn.write_value<std::int64_t>(b, 0, 2);
  txn.write_value<std::int64_t>(u, 0, 3);
  txn.commit();
  EXPECT_EQ(ab_calls.load(), 1);
  EXPECT_EQ(read_i64(rt, ab), 3);
}

// A large commit's drained delta array is kept and reused by the next commit it can hold (graph/queue.cpp): a
// smaller commit in it must run only its own readers, with its own bytes, not the stale deltas past its count.
TEST(Propagator, ACommitReusingALargerCommitsDeltasRunsOnlyItsOwnReaders) {
  Runtime rt;
  Propagator prop(rt);
  constexpr int kPages = 20;
  std::vector<PageId> in, out;
  std::atomic<int> calls{0};
  for (int i = 0; i < kPages; ++i) {
    in.push_back(rt.create_page(8));
    out.push_back(rt.create_page(8));
    prop.derive_map(out.back(), {in.back()}, counting_copy(calls));
  }
  prop.propagate();
  auto commit_first = [&](int count, std::int64_t base) {
    auto txn = rt.begin();
    for (int i = 0; i < count; ++i) txn.write_value<std::int64_t>(in[i], 0, base + i);
    txn.commit();
  };
  for (int round = 1; round <= 3; ++round) {  // all pages, then 12 of them in the reused array, then 3
    calls = 0;
    const int count = round == 1 ? kPages : round == 2 ? 12 : 3;
    commit_first(count, 100 * round);
    EXPECT_EQ(calls.load(), count) << "round " << round;
    for (int i = 0; i < kPages; ++i) {
      const std::int64_t last = i < count ? 100 * round + i : i < 12 ? 200 + i : 100 + i;
      EXPECT_EQ(read_i64(rt, out[i]), last) << "round " << round << ", page " << i;
    }
  }
}

TEST(Propagator, AHugeCommitsDeltasAreFreedByTheNextSmallCommit) {
  // The engine keeps a drained commit's delta array for the next commit, but one whose deltas hold more than 64
  // MiB only while commits of its size follow: a single huge commit must not pin its memory while the app goes on
  // with small ones.
  constexpr std::uint64_t kPageBytes = std::uint64_t{4} << 20;
  constexpr int kPages = 24;  // 96 MiB of changed bytes in one commit
  Runtime rt;
  Propagator prop(rt);
  std::vector<PageId> in;
  std::atomic<int> calls{0};
  for (int i = 0; i < kPages; ++i) {
    in.push_back(rt.create_page(kPageBytes));
    prop.derive_map(rt.create_page(8), {in.back()}, counting_copy(calls));
  }
  prop.propagate();
  const std::size_t before = heap_bytes_in_use();
  {
    const std::vector<std::byte> filler(kPageBytes, std::byte{7});
    auto txn = rt.begin();
    for (PageId page : in) txn.write(page, 0, filler);
    txn.commit();
  }
  for (int round = 1; round <= 2; ++round) {  // two small commits after it
    auto txn = rt.begin();
    txn.write_value<std::int64_t>(in[0], 0, round);
    txn.commit();
  }
  EXPECT_EQ(calls.load(), 2 * kPages + 2);
  EXPECT_LT(heap_bytes_in_use(), before + (std::size_t{16} << 20));
}

TEST(Propagator, JoinIsNotRunWhenItsOnlyChangedAncestorWasCutOff) {
  Runtime rt;
  Propagator prop(rt);
  PageId a = rt.create_page(8), b = rt.create_page(8);
  PageId sign_a = rt.create_page(8), copy_b = rt.create_page(8), join = rt.create_page(8);
  prop.derive_map(sign_a, {a}, [](MapContext& c) { c.output_as<std::int64_t>() = c.input_as<std::int64_t>(0) > 0; });
  prop.derive_map(copy_b, {b}, affine(1, 0));
  std::atomic<int> calls{0};
  prop.derive_map(join, {sign_a, copy_b}, [&](MapContext& c) {
    calls.fetch_add(1);
    c.output_as<std::int64_t>() = c.input_as<std::int64_t>(0) * 100 + c.input_as<std::int64_t>(1);
  });
  commit_i64(rt, a, 5);
  EXPECT_EQ(calls.load(), 1);
  EXPECT_EQ(read_i64(rt, join), 100);
  commit_i64(rt, a, 6);  // sign unchanged
  EXPECT_EQ(calls.load(), 1);
  commit_i64(rt, b, 7);
  EXPECT_EQ(calls.load(), 2);
  EXPECT_EQ(read_i64(rt, join), 107);
}

// ---- passthrough --------------------------------------------------------------------------------------------

TEST(Propagator, PassthroughForwardsTheInputDeltaThroughAChain) {
  Runtime rt;
  Propagator prop(rt);
  PageId a = rt.create_page(64), b = rt.create_page(64), c = rt.create_page(64);
  prop.derive_passthrough(b, a);
  prop.derive_passthrough(c, b);
  commit_u64(rt, a, 8, 0x1122334455667788ULL);
  commit_u64(rt, a, 56, 42);
  EXPECT_EQ(rt.read_all(b), rt.read_all(a));
  EXPECT_EQ(rt.read_all(c), rt.read_all(a));
  EXPECT_EQ(read_u64(rt, c, 8), 0x1122334455667788ULL);
  EXPECT_EQ(read_u64(rt, c, 56), 42u);
}

TEST(Propagator, PassthroughRemapForwardsOnlyTheWindowToTheShiftedOffset) {
  Runtime rt;
  Propagator prop(rt);
  PageId in = rt.create_page(32), out = rt.create_page(32);
  prop.derive_passthrough(out, in, ByteRemap{.input_offset = 8, .length = 8, .output_offset = 16});
  const std::vector<std::byte> zeros(32);

  commit_u64(rt, in, 0, 0xAAAAAAAAAAAAAAAAULL);  // entirely before the window
  EXPECT_EQ(rt.read_all(out), zeros);
  commit_u64(rt, in, 24, 0xBBBBBBBBBBBBBBBBULL);  // entirely after the window
  EXPECT_EQ(rt.read_all(out), zeros);

  commit_u64(rt, in, 8, 0x0102030405060708ULL);  // exactly the window
  EXPECT_EQ(read_u64(rt, out, 16), 0x0102030405060708ULL);
  EXPECT_EQ(read_u64(rt, out, 0), 0u);
  EXPECT_EQ(read_u64(rt, out, 8), 0u);
  EXPECT_EQ(read_u64(rt, out, 24), 0u);

  // A write straddling the window's start: bytes [4, 12) of the input; only [8, 12) may land, at [16, 20).
  std::vector<std::byte> eight(8, std::byte{0xEE});
  {
    auto txn = rt.begin();
    txn.write(in, 4, eight);
    txn.commit();
  }
  auto bytes = rt.read_all(out);
  for (std::size_t i = 0; i < 32; ++i) {
    std::byte expected{0};
    if (i >= 16 && i < 20)
      expected = std::byte{0xEE};
    else if (i >= 20 && i < 24)
      expected = static_cast<std::byte>((0x0102030405060708ULL >> (8 * (i - 16))) & 0xFF);
    EXPECT_EQ(bytes[i], expected) << "output byte " << i;
  }
}

TEST(Propagator, PassthroughRemapToOffsetZeroOfASmallerOutput) {
  Runtime rt;
  Propagator prop(rt);
  PageId in = rt.create_page(64), out = rt.create_page(8);
  prop.derive_passthrough(out, in, ByteRemap{.input_offset = 48, .length = 8, .output_offset = 0});
  auto txn = rt.begin();
  txn.write_value<std::uint64_t>(in, 0, 1);
  txn.write_value<std::uint64_t>(in, 48, 77);
  txn.write_value<std::uint64_t>(in, 56, 2);
  txn.commit();
  EXPECT_EQ(read_u64(rt, out), 77u);
}

// ---- incremental --------------------------------------------------------------------------------------------

TEST(Propagator, IncrementalNodeGetsDeltasOfChangedInputsAndNullForOthers) {
  Runtime rt;
  Propagator prop(rt);
  std::vector<PageId> in;
  for (int i = 0; i < 4; ++i) in.push_back(rt.create_page(8));
  PageId acc = rt.create_page(8);
  std::mutex mu;
  std::vector<std::vector<bool>> changed_log;  // per call: which inputs had a delta
  // Accumulator: adds the new value of every changed input to its running total.
  prop.derive_incremental(acc, in, [&](const IncrementalContext& c, Delta& out) {
    std::vector<bool> changed;
    std::int64_t total;
    std::memcpy(&total, c.output.data(), 8);
    for (std::size_t i = 0; i < c.input_deltas.size(); ++i) {
      changed.push_back(c.input_deltas[i] != nullptr);
      if (c.input_deltas[i] == nullptr) continue;
      if (c.input_deltas[i]->page != in[i]) throw std::runtime_error("input delta belongs to another page");
      std::int64_t v;
      std::memcpy(&v, c.inputs[i].data(), 8);
      total += v;
    }
    if (c.output_page != acc) throw std::runtime_error("wrong output page");
    out.ranges.push_back(ByteRange{0, 8});
    out.payload.resize(8);
    std::memcpy(out.payload.data(), &total, 8);
    std::lock_guard lock(mu);
    changed_log.push_back(std::move(changed));
  });
  commit_i64(rt, in[1], 5);
  EXPECT_EQ(read_i64(rt, acc), 5);
  {
    auto txn = rt.begin();
    txn.write_value<std::int64_t>(in[1], 0, 7);
    txn.write_value<std::int64_t>(in[3], 0, 10);
    txn.commit();
  }
  EXPECT_EQ(read_i64(rt, acc), 22);
  std::lock_guard lock(mu);
  ASSERT_EQ(changed_log.size(), 2u);
  EXPECT_EQ(changed_log[0], (std::vector<bool>{false, true, false, false}));
  EXPECT_EQ(changed_log[1], (std::vector<bool>{false, true, false, true}));
}

TEST(Propagator, IncrementalNodeSeesTheChangedBytesInItsInputDelta) {
  Runtime rt;
  Propagator prop(rt);
  PageId src = rt.create_page(64), mapped = rt.create_page(64), sum = rt.create_page(8);
  prop.derive_map(mapped, {src}, [](MapContext& c) {
    for (std::size_t k = 0; k < 8; ++k) c.output_as<std::uint64_t>(8 * k) = c.input_as<std::uint64_t>(0, 8 * k) * 3;
  });
  // Sums the changed words found in the delta payload of its (derived) input, as uint64 words.
  prop.derive_incremental(sum, {mapped}, [](const IncrementalContext& c, Delta& out) {
    const Delta* d = c.input_deltas[0];
    if (d == nullptr) return;
    std::uint64_t total;
    std::memcpy(&total, c.output.data(), 8);
    std::size_t pos = 0;
    for (const ByteRange& r : d->ranges) {
      for (std::uint64_t off = r.offset; off < r.end(); ++off, ++pos) {
        if (off % 8 != 0) continue;
        std::uint64_t w;
        std::memcpy(&w, c.inputs[0].data() + off, 8);  // the input after the wave, at a changed word
        total += w;
      }
    }
    if (pos != d->payload.size()) throw std::runtime_error("payload size disagrees with ranges");
    out.ranges.push_back(ByteRange{0, 8});
    out.payload.resize(8);
    std::memcpy(out.payload.data(), &total, 8);
  });
  commit_u64(rt, src, 16, 2);  // mapped word 2 becomes 6
  EXPECT_EQ(read_u64(rt, mapped, 16), 6u);
  EXPECT_EQ(read_u64(rt, sum), 6u);
}

TEST(Propagator, IncrementalNodeLeavingOutEmptyCutsOffDownstream) {
  Runtime rt;
  Propagator prop(rt);
  PageId a = rt.create_page(8), inc = rt.create_page(8), down = rt.create_page(8);
  prop.derive_incremental(inc, {a}, [](const IncrementalContext& c, Delta& out) {
    std::int64_t v;
    std::memcpy(&v, c.inputs[0].data(), 8);
    if (v % 2 != 0) return;  // odd values: no change
    out.ranges.push_back(ByteRange{0, 8});
    out.payload.resize(8);
    std::memcpy(out.payload.data(), &v, 8);
  });
  std::atomic<int> calls{0};
  prop.derive_map(down, {inc}, counting_copy(calls));
  commit_i64(rt, a, 4);
  EXPECT_EQ(calls.load(), 1);
  EXPECT_EQ(read_i64(rt, down), 4);
  const auto before = prop.stats();
  commit_i64(rt, a, 5);
  EXPECT_EQ(calls.load(), 1);
  EXPECT_EQ(read_i64(rt, inc), 4);
  EXPECT_EQ(prop.stats().nodes_cut_off, before.nodes_cut_off + 1);
}

// ---- FunctionRegistry ---------------------------------------------------------------------------------------
//
// Each test registers in a registry of its own (given to its Propagator), so the tests share no process-wide state
// and pass in any order, any number of times (--gtest_repeat, --gtest_shuffle).

struct OwnRegistry {
  std::shared_ptr<FunctionRegistry> registry = std::make_shared<FunctionRegistry>();
};

TEST(FunctionRegistry, RegisteredMapFunctionIsBoundByName) {
  OwnRegistry own;
  FunctionRegistry& reg = *own.registry;
  const std::string name = "propagator_test.triple.bound_by_name";
  reg.register_map(name, affine(3, 0));
  EXPECT_TRUE(reg.contains(name));
  Runtime rt;
  Propagator prop(rt, {}, own.registry);
  PageId a = rt.create_page(8), b = rt.create_page(8);
  prop.derive_map(b, {a}, name);
  commit_i64(rt, a, 7);
  EXPECT_EQ(read_i64(rt, b), 21);
  // The function object itself can also be fetched and called.
  MapFunction fn = reg.map(name);
  ASSERT_TRUE(static_cast<bool>(fn));
  alignas(64) std::int64_t in_value = 5, out_value = 0;
  const std::span<const std::byte> inputs[] = {std::as_bytes(std::span<std::int64_t, 1>(&in_value, 1))};
  MapContext ctx(inputs, std::as_writable_bytes(std::span<std::int64_t, 1>(&out_value, 1)), b);
  fn(ctx);
  EXPECT_EQ(out_value, 15);
}

TEST(FunctionRegistry, RegisteredIncrementalFunctionIsBoundByName) {
  OwnRegistry own;
  FunctionRegistry& reg = *own.registry;
  const std::string name = "propagator_test.incremental_copy.bound_by_name";
  reg.register_incremental(name, [](const IncrementalContext& c, Delta& out) {
    out.ranges.push_back(ByteRange{0, 8});
    out.payload.assign(c.inputs[0].begin(), c.inputs[0].begin() + 8);
  });
  EXPECT_TRUE(reg.contains(name));
  EXPECT_FALSE(static_cast<bool>(reg.incremental_rebuild(name)));
  Runtime rt;
  Propagator prop(rt, {}, own.registry);
  PageId a = rt.create_page(8), b = rt.create_page(8);
  prop.derive_incremental(b, {a}, name);
  commit_i64(rt, a, 13);
  EXPECT_EQ(read_i64(rt, b), 13);
}

TEST(FunctionRegistry, UnknownNameIsNotFoundAndNamesTheFunction) {
  OwnRegistry own;
  FunctionRegistry& reg = *own.registry;
  const std::string name = "propagator_test.never_registered_function";
  EXPECT_FALSE(reg.contains(name));
  auto e = error_of([&] { (void)reg.map(name); });
  ASSERT_TRUE(e);
  EXPECT_EQ(e->code(), ErrorCode::NotFound);
  EXPECT_NE(std::string(e->what()).find(name), std::string::npos) << e->what();
  e = error_of([&] { (void)reg.incremental(name); });
  ASSERT_TRUE(e);
  EXPECT_EQ(e->code(), ErrorCode::NotFound);

  Runtime rt;
  Propagator prop(rt, {}, own.registry);
  PageId a = rt.create_page(8), b = rt.create_page(8);
  e = error_of([&] { prop.derive_map(b, {a}, name); });
  ASSERT_TRUE(e);
  EXPECT_EQ(e->code(), ErrorCode::NotFound);
  EXPECT_NE(std::string(e->what()).find(name), std::string::npos) << e->what();
  EXPECT_EQ(prop.node_count(), 0u);
}

TEST(FunctionRegistry, DuplicateRegistrationIsInvalidArgument) {
  OwnRegistry own;
  FunctionRegistry& reg = *own.registry;
  const std::string name = "propagator_test.registered_twice";
  reg.register_map(name, affine(1, 0));
  auto e = error_of([&] { reg.register_map(name, affine(2, 0)); });
  ASSERT_TRUE(e);
  EXPECT_EQ(e->code(), ErrorCode::InvalidArgument);
  const std::string inc_name = "propagator_test.incremental_registered_twice";
  reg.register_incremental(inc_name, [](const IncrementalContext&, Delta&) {});
  e = error_of([&] { reg.register_incremental(inc_name, [](const IncrementalContext&, Delta&) {}); });
  ASSERT_TRUE(e);
  EXPECT_EQ(e->code(), ErrorCode::InvalidArgument);
  // The first registration still holds.
  Runtime rt;
  Propagator prop(rt, {}, own.registry);
  PageId a = rt.create_page(8), b = rt.create_page(8);
  prop.derive_map(b, {a}, name);
  commit_i64(rt, a, 6);
  EXPECT_EQ(read_i64(rt, b), 6);
}

TEST(FunctionRegistry, RegisteredNameIsTheDefaultNodeNameInDot) {
  OwnRegistry own;
  const std::string name = "propagator_test_named_in_dot";
  own.registry->register_map(name, affine(1, 0));
  Runtime rt;
  Propagator prop(rt, {}, own.registry);
  PageId a = rt.create_page(8), b = rt.create_page(8), c = rt.create_page(8);
  prop.derive_map(b, {a}, name);
  prop.derive_map(c, {a}, affine(1, 0), NodeOptions{.name = "explicit_node_name"});
  const std::string dot = prop.to_dot();
  EXPECT_NE(dot.find(name), std::string::npos) << dot;
  EXPECT_NE(dot.find("explicit_node_name"), std::string::npos) << dot;
}

// Two registries may bind one name to different functions; each Propagator uses its own.
TEST(FunctionRegistry, EachPropagatorBindsNamesInItsOwnRegistry) {
  OwnRegistry doubling, tripling;
  doubling.registry->register_map("scale", affine(2, 0));
  tripling.registry->register_map("scale", affine(3, 0));
  Runtime rt2, rt3;
  Propagator p2(rt2, {}, doubling.registry), p3(rt3, {}, tripling.registry);
  PageId a2 = rt2.create_page(8), b2 = rt2.create_page(8), a3 = rt3.create_page(8), b3 = rt3.create_page(8);
  p2.derive_map(b2, {a2}, "scale");
  p3.derive_map(b3, {a3}, "scale");
  commit_i64(rt2, a2, 5);
  commit_i64(rt3, a3, 5);
  EXPECT_EQ(read_i64(rt2, b2), 10);
  EXPECT_EQ(read_i64(rt3, b3), 15);
  EXPECT_FALSE(FunctionRegistry::global().contains("scale")) << "nothing leaked into the global registry";
}

// Without a registry of its own, a Propagator looks names up in FunctionRegistry::global(). The name is new on
// every run of the test, so repeating it registers nothing twice.
TEST(FunctionRegistry, WithoutARegistryTheGlobalOneIsUsed) {
  static int run = 0;
  const std::string name = "propagator_test.global_default." + std::to_string(::getpid()) + "." + std::to_string(run++);
  FunctionRegistry::global().register_map(name, affine(4, 0));
  Runtime rt;
  Propagator prop(rt);
  PageId a = rt.create_page(8), b = rt.create_page(8);
  prop.derive_map(b, {a}, name);
  commit_i64(rt, a, 2);
  EXPECT_EQ(read_i64(rt, b), 8);
}

// A node declared over an output that already holds its value (a restored checkpoint) is not stale: an incremental
// history node goes on from its page instead of being computed from scratch.
TEST(Propagator, NodeDeclaredWithACurrentOutputIsNotStale) {
  Runtime rt;
  Propagator prop(rt);
  PageId a = rt.create_page(8), count = rt.create_page(8);
  commit_i64(rt, count, 41);  // the history so far, as a checkpoint would have restored it
  NodeOptions current;
  current.output_is_current = true;
  std::atomic<int> from_scratch{0};
  prop.derive_incremental(
      count, {a},
      [&](const IncrementalContext& c, Delta& out) {
        if (c.recompute) ++from_scratch;
        std::int64_t next = 0;
        std::memcpy(&next, c.output.data(), 8);
        next += c.input_deltas[0] != nullptr ? 1 : 0;
        out.ranges.push_back(ByteRange{0, 8});
        out.payload.resize(8);
        std::memcpy(out.payload.data(), &next, 8);
      },
      current);
  EXPECT_FALSE(prop.is_stale(count));
  prop.propagate();  // nothing to do: no stale node, no change
  EXPECT_EQ(read_i64(rt, count), 41);
  commit_i64(rt, a, 7);
  EXPECT_EQ(read_i64(rt, count), 42);
  EXPECT_EQ(from_scratch.load(), 0);
}

// A rebuild function computes an incremental node from scratch: recompute() runs it instead of the incremental
// function (which, handed no deltas, could not know what to add).
TEST(FunctionRegistry, RebuildFunctionRunsWhenAnIncrementalNodeIsComputedFromScratch) {
  Runtime rt;
  Propagator prop(rt);
  PageId a = rt.create_page(8), sum = rt.create_page(8);
  std::atomic<int> rebuilds{0};
  // Adds each change of `a` to `sum`: a running total of the differences, so sum == a once it is exact.
  auto add_change = [](const IncrementalContext& c, Delta& out) {
    if (c.input_deltas[0] == nullptr) return;
    std::int64_t now = 0, total = 0, before = 0;
    std::memcpy(&now, c.inputs[0].data(), 8);
    std::memcpy(&total, c.output.data(), 8);
    // The old value: today's bytes with the undo bytes of the changed ranges (a commit records only the bytes
    // that differ) put back.
    const Delta& d = *c.input_deltas[0];
    std::array<std::byte, 8> old{};
    std::memcpy(old.data(), c.inputs[0].data(), 8);
    std::size_t at = 0;
    for (const ByteRange& r : d.ranges) {
      for (std::uint64_t i = 0; i < r.length && at < d.undo.size(); ++i, ++at) {
        if (r.offset + i < 8) old[r.offset + i] = d.undo[at];
      }
    }
    std::memcpy(&before, old.data(), 8);
    total += now - before;
    out.ranges.push_back(ByteRange{0, 8});
    out.payload.resize(8);
    std::memcpy(out.payload.data(), &total, 8);
  };
  prop.derive_incremental(sum, {a}, add_change, [&](MapContext& c) {
    ++rebuilds;
    c.output_as<std::int64_t>() = c.input_as<std::int64_t>(0);
  });
  commit_i64(rt, a, 5);  // the node's first computation is from scratch: the rebuild function
  EXPECT_EQ(rebuilds.load(), 1);
  commit_i64(rt, a, 9);  // then the incremental function
  EXPECT_EQ(read_i64(rt, sum), 9);
  EXPECT_EQ(rebuilds.load(), 1);
  {
    auto txn = rt.begin();  // knock the derived page off (as a restart with lost deltas would)
    txn.write_value<std::int64_t>(sum, 0, -1);
    txn.commit();
  }
  prop.recompute(sum);
  EXPECT_EQ(rebuilds.load(), 2);
  EXPECT_EQ(read_i64(rt, sum), 9);
  const auto nodes = prop.nodes();
  ASSERT_EQ(nodes.size(), 1u);
  EXPECT_TRUE(nodes[0].has_rebuild);
}

// ---- random DAGs against a sequential reference ------------------------------------------------------------

// A DAG spec: pages [0, sources) are sources, the others map nodes whose inputs are earlier pages.
struct NodeSpec {
  std::vector<std::size_t> inputs;
  std::uint64_t constant = 0;
  bool low_entropy = false;  // output words are in {0, 1, 2}: often unchanged, so cutoff is exercised
};
struct DagSpec {
  std::size_t sources = 0;
  std::vector<std::size_t> words;  // page size in uint64 words, per page
  std::vector<NodeSpec> nodes;     // nodes[i] computes page sources + i
};
struct Write {
  std::size_t source;
  std::size_t word;
  std::uint64_t value;
};
using CommitScript = std::vector<std::vector<Write>>;  // one inner vector per commit

std::uint64_t rotl(std::uint64_t x, int r) { return (x << r) | (x >> (64 - r)); }

// The node function, written against plain word arrays so the reference and the MapContext share it.
template <class InputWord>
void node_compute(const NodeSpec& n, std::size_t out_words, InputWord&& input_word, std::uint64_t* out) {
  for (std::size_t k = 0; k < out_words; ++k) {
    std::uint64_t v = n.constant + 0x9E3779B97F4A7C15ULL * (k + 1);
    for (std::size_t i = 0; i < n.inputs.size(); ++i) {
      v ^= input_word(i, k);
      v = rotl(v, 17) * 0xBF58476D1CE4E5B9ULL + i;
    }
    out[k] = n.low_entropy ? (v >> 33) % 3 : v;
  }
}

MapFunction node_function(const NodeSpec& spec) {
  return [spec](MapContext& c) {
    const std::size_t out_words = c.output().size() / 8;
    std::vector<std::uint64_t> out(out_words);
    node_compute(
        spec, out_words,
        [&](std::size_t i, std::size_t k) {
          const std::size_t in_words = c.input(i).size() / 8;
          return c.input_as<std::uint64_t>(i, 8 * (k % in_words));
        },
        out.data());
    std::memcpy(c.output().data(), out.data(), out_words * 8);
  };
}

// Random DAG: `pages` pages, `sources` of them sources; each node reads 1..4 earlier pages, mostly recent ones.
DagSpec random_dag(std::uint64_t seed, std::size_t pages, std::size_t sources) {
  std::mt19937_64 rng(seed);
  DagSpec spec;
  spec.sources = sources;
  for (std::size_t p = 0; p < pages; ++p) spec.words.push_back(1 + rng() % 8);
  for (std::size_t p = sources; p < pages; ++p) {
    NodeSpec n;
    const std::size_t fan_in = 1 + rng() % 4;
    for (std::size_t j = 0; j < fan_in; ++j) {
      std::size_t in = (rng() % 2 == 0 && p > 8) ? p - 1 - rng() % 8 : rng() % p;
      if (std::find(n.inputs.begin(), n.inputs.end(), in) == n.inputs.end()) n.inputs.push_back(in);
    }
    n.constant = rng();
    n.low_entropy = rng() % 4 == 0;
    spec.nodes.push_back(std::move(n));
  }
  return spec;
}

// Layered DAG with wide layers so waves run in parallel.
DagSpec layered_dag(std::uint64_t seed, std::size_t sources, std::size_t layers, std::size_t width) {
  std::mt19937_64 rng(seed);
  DagSpec spec;
  spec.sources = sources;
  const std::size_t pages = sources + layers * width;
  for (std::size_t p = 0; p < pages; ++p) spec.words.push_back(1 + rng() % 4);
  for (std::size_t l = 0; l < layers; ++l) {
    const std::size_t prev_begin = l == 0 ? 0 : sources + (l - 1) * width;
    const std::size_t prev_count = l == 0 ? sources : width;
    for (std::size_t i = 0; i < width; ++i) {
      NodeSpec n;
      const std::size_t fan_in = 1 + rng() % 3;
      for (std::size_t j = 0; j < fan_in; ++j) {
        std::size_t in = prev_begin + rng() % prev_count;
        if (rng() % 5 == 0) in = rng() % (sources + l * width);  // a long edge to any earlier page
        if (std::find(n.inputs.begin(), n.inputs.end(), in) == n.inputs.end()) n.inputs.push_back(in);
      }
      n.constant = rng();
      n.low_entropy = rng() % 5 == 0;
      spec.nodes.push_back(std::move(n));
    }
  }
  return spec;
}

CommitScript random_commits(std::uint64_t seed, const DagSpec& spec, std::size_t commits) {
  std::mt19937_64 rng(seed ^ 0xC0FFEEULL);
  CommitScript script;
  for (std::size_t c = 0; c < commits; ++c) {
    std::vector<Write> writes;
    const std::size_t n = 1 + rng() % 3;
    for (std::size_t j = 0; j < n; ++j) {
      const std::size_t s = rng() % spec.sources;
      // Small values repeat often, so some writes leave bytes unchanged.
      const std::uint64_t value = rng() % 3 == 0 ? rng() % 4 : rng();
      writes.push_back(Write{s, rng() % spec.words[s], value});
    }
    script.push_back(std::move(writes));
  }
  return script;
}

// Sequential reference: pages as word vectors, every node recomputed in index (= topological) order.
struct Reference {
  const DagSpec& spec;
  std::vector<std::vector<std::uint64_t>> pages;
  explicit Reference(const DagSpec& s) : spec(s) {
    for (std::size_t w : s.words) pages.emplace_back(w, 0);
  }
  void apply(const std::vector<Write>& commit) {
    for (const Write& w : commit) pages[w.source][w.word] = w.value;
  }
  void evaluate() {
    for (std::size_t i = 0; i < spec.nodes.size(); ++i) {
      const NodeSpec& n = spec.nodes[i];
      auto& out = pages[spec.sources + i];
      node_compute(
          n, out.size(),
          [&](std::size_t in, std::size_t k) {
            const auto& page = pages[n.inputs[in]];
            return page[k % page.size()];
          },
          out.data());
    }
  }
};

// A Runtime + Propagator built from a spec, with every node computed once (recompute) so derived pages agree
// with their functions from the start.
struct DagInstance {
  Runtime rt;
  Propagator prop;
  std::vector<PageId> pages;
  DagInstance(const DagSpec& spec, PropagatorOptions options) : prop(rt, options) {
    for (std::size_t w : spec.words) pages.push_back(rt.create_page(8 * w));
    for (std::size_t i = 0; i < spec.nodes.size(); ++i) {
      std::vector<PageId> inputs;
      for (std::size_t in : spec.nodes[i].inputs) inputs.push_back(pages[in]);
      prop.derive_map(pages[spec.sources + i], inputs, node_function(spec.nodes[i]));
    }
    for (std::size_t i = 0; i < spec.nodes.size(); ++i) prop.recompute(pages[spec.sources + i]);
    prop.propagate();
  }
  void commit(const std::vector<Write>& writes) {
    auto txn = rt.begin();
    for (const Write& w : writes) txn.write_value<std::uint64_t>(pages[w.source], 8 * w.word, w.value);
    txn.commit();
  }
  std::uint64_t hash() const {
    std::uint64_t h = 0xcbf29ce484222325ULL;
    for (PageId p : pages) h = fnv1a(h, rt.read_all(p));
    return h;
  }
};

void expect_matches_reference(const DagInstance& dag, const Reference& ref, const std::string& where) {
  for (std::size_t p = 0; p < ref.pages.size(); ++p) {
    std::vector<std::byte> expected(ref.pages[p].size() * 8);
    std::memcpy(expected.data(), ref.pages[p].data(), expected.size());
    ASSERT_EQ(dag.rt.read_all(dag.pages[p]), expected)
        << where << ": page index " << p << " (" << dag.pages[p].to_string() << ")";
    if (p >= ref.spec.sources) {
      ASSERT_FALSE(dag.prop.is_stale(dag.pages[p])) << where << ": page index " << p;
    }
  }
}

// Commits the script, propagating every `group` commits (1 = after each), and compares with the reference at
// each propagation point.
void run_random_dag_against_reference(PropagationMode mode, std::size_t group) {
  for (std::uint64_t seed = 1; seed <= 6; ++seed) {
    std::mt19937_64 size_rng(seed * 7919);
    const std::size_t pages = 30 + size_rng() % 51;
    const std::size_t sources = 3 + size_rng() % 8;
    const DagSpec spec = random_dag(seed, pages, sources);
    const CommitScript script = random_commits(seed, spec, 24);
    const std::size_t inline_limits[] = {4, 32, 1000};
    // min_parallel_work_ns 0: levels larger than the inline limit run in parallel even with these tiny nodes.
    PropagatorOptions options{
        .mode = mode, .threads = 2, .inline_node_limit = inline_limits[seed % 3], .min_parallel_work_ns = 0};
    DagInstance dag(spec, options);
    Reference ref(spec);
    ref.evaluate();
    expect_matches_reference(dag, ref, "seed " + std::to_string(seed) + " after build");
    for (std::size_t c = 0; c < script.size(); ++c) {
      dag.commit(script[c]);
      ref.apply(script[c]);
      if ((c + 1) % group != 0 && c + 1 != script.size()) continue;
      if (mode != PropagationMode::Immediate) dag.prop.propagate();
      ref.evaluate();
      expect_matches_reference(dag, ref, "seed " + std::to_string(seed) + " commit " + std::to_string(c));
      if (::testing::Test::HasFatalFailure()) return;
    }
  }
}

TEST(PropagatorRandomDag, ImmediateModeMatchesSequentialReference) {
  run_random_dag_against_reference(PropagationMode::Immediate, 1);
}

TEST(PropagatorRandomDag, DeferredModeMatchesSequentialReferenceOnePropagatePerCommit) {
  run_random_dag_against_reference(PropagationMode::Deferred, 1);
}

TEST(PropagatorRandomDag, DeferredModeMatchesSequentialReferenceWithQueuedCommits) {
  run_random_dag_against_reference(PropagationMode::Deferred, 5);
}

TEST(PropagatorRandomDag, BatchModeMatchesSequentialReference) {
  run_random_dag_against_reference(PropagationMode::Batch, 6);
}

TEST(PropagatorRandomDag, PageHashesAreIdenticalFor1And2And8Threads) {
  const DagSpec spec = layered_dag(2024, 12, 8, 24);  // 12 + 192 pages
  const CommitScript script = random_commits(2024, spec, 20);
  Reference ref(spec);
  for (const auto& c : script) ref.apply(c);
  ref.evaluate();
  std::vector<std::uint64_t> hashes;
  for (unsigned threads : {1u, 2u, 8u}) {
    DagInstance dag(spec, PropagatorOptions{.threads = threads, .inline_node_limit = 4, .min_parallel_work_ns = 0});
    for (const auto& c : script) dag.commit(c);
    expect_matches_reference(dag, ref, "threads " + std::to_string(threads));
    hashes.push_back(dag.hash());
    if (threads > 1) {
      const auto stats = dag.prop.stats();
      EXPECT_GT(stats.waves, stats.inline_waves)
          << "with inline_node_limit 4 some waves must split levels across the threads";
    }
  }
  ASSERT_EQ(hashes.size(), 3u);
  EXPECT_EQ(hashes[0], hashes[1]);
  EXPECT_EQ(hashes[0], hashes[2]);
}

// ---- BATCH and DEFERRED -------------------------------------------------------------------------------------

// Commits to one 64-byte source page: overlapping, repeated and adjacent writes.
void commit_batch_script(Runtime& rt, PageId src) {
  commit_u64(rt, src, 0, 1);
  commit_u64(rt, src, 8, 2);
  commit_u64(rt, src, 0, 3);
  std::vector<std::byte> twelve(12, std::byte{0x5C});
  {
    auto txn = rt.begin();
    txn.write(src, 4, twelve);
    txn.commit();
  }
  commit_u64(rt, src, 56, 9);
  commit_u64(rt, src, 48, 8);
}

TEST(PropagatorBatch, ComposedDeltasEqualSequentialApplication) {
  std::vector<std::byte> immediate_out;
  {
    Runtime rt;
    Propagator prop(rt);
    PageId src = rt.create_page(64), p1 = rt.create_page(64), p2 = rt.create_page(64);
    prop.derive_passthrough(p1, src);
    prop.derive_passthrough(p2, p1);
    commit_batch_script(rt, src);
    immediate_out = rt.read_all(p2);
    EXPECT_EQ(immediate_out, rt.read_all(src));
  }
  Runtime rt;
  Propagator prop(rt, PropagatorOptions{.mode = PropagationMode::Batch});
  PageId src = rt.create_page(64), p1 = rt.create_page(64), p2 = rt.create_page(64);
  prop.derive_passthrough(p1, src);
  prop.derive_passthrough(p2, p1);
  const auto before = prop.stats();
  commit_batch_script(rt, src);
  EXPECT_EQ(rt.read_all(p2), std::vector<std::byte>(64)) << "BATCH must not propagate before propagate()";
  prop.propagate();
  const auto after = prop.stats();
  EXPECT_EQ(rt.read_all(p2), immediate_out);
  EXPECT_EQ(rt.read_all(p1), immediate_out);
  EXPECT_GT(after.deltas_composed, before.deltas_composed);
  EXPECT_EQ(after.waves, before.waves + 1) << "BATCH coalesces the queued commits into one wave";
}

// BATCH folds commits into one delta per page as they are published, in place when a commit only rewrites bytes
// the pending delta already covers. Whatever path a fold takes, the wave must see exactly compose() of the
// commits' deltas: same ranges, payload, undo, epochs and intent.
TEST(PropagatorBatch, FoldedDeltaEqualsComposeOfTheCommittedDeltas) {
  Runtime rt;
  Propagator prop(rt, PropagatorOptions{.mode = PropagationMode::Batch});
  PageId src = rt.create_page(64), out = rt.create_page(64);
  std::vector<Delta> received;
  prop.derive_incremental(out, {src}, [&](const IncrementalContext& ctx, Delta&) {
    if (ctx.input_deltas[0]) received.push_back(*ctx.input_deltas[0]);
  });
  std::vector<Delta> committed;
  auto write = [&](std::uint64_t offset, std::vector<std::uint8_t> bytes, const char* intent) {
    auto txn = rt.begin();
    txn.set_intent(intent);
    txn.write(src, offset, std::as_bytes(std::span<const std::uint8_t>(bytes)));
    txn.commit();
    committed.push_back(txn.committed_deltas()[0]);
  };
  write(0, {1, 2, 3, 4, 5, 6, 7, 8}, "first");
  write(2, {9, 9}, "inside");      // covered by the pending delta: folded in place
  write(40, {7, 7, 7}, "beyond");  // new bytes: folded by compose()
  write(41, {5}, "inside again");  // covered again
  prop.propagate();
  ASSERT_EQ(received.size(), 1u);
  Delta expected = committed[0];
  for (std::size_t i = 1; i < committed.size(); ++i) expected = mmsb::compose(expected, committed[i]);
  EXPECT_EQ(received[0], expected);
  EXPECT_EQ(received[0].epoch_count, 4u);
  EXPECT_EQ(received[0].intent, "inside again");
  EXPECT_EQ(prop.stats().deltas_composed, 3u);
}

TEST(PropagatorBatch, MapNodeRunsOnceForManyQueuedCommits) {
  Runtime rt;
  Propagator prop(rt, PropagatorOptions{.mode = PropagationMode::Batch});
  PageId a = rt.create_page(8), b = rt.create_page(8), d = rt.create_page(8);
  std::atomic<int> calls{0};
  prop.derive_map(d, {a, b}, [&](MapContext& c) {
    calls.fetch_add(1);
    c.output_as<std::int64_t>() = c.input_as<std::int64_t>(0) - c.input_as<std::int64_t>(1);
  });
  for (int i = 1; i <= 10; ++i) commit_i64(rt, a, i);
  commit_i64(rt, b, 4);
  EXPECT_EQ(calls.load(), 0);
  prop.propagate();
  EXPECT_EQ(calls.load(), 1);
  EXPECT_EQ(read_i64(rt, d), 6);
}

TEST(PropagatorDeferred, NothingChangesUntilPropagateThenOneWavePerWatchedCommit) {
  Runtime rt;
  Propagator prop(rt, PropagatorOptions{.mode = PropagationMode::Deferred});
  PageId s = rt.create_page(8), d = rt.create_page(8), unwatched = rt.create_page(8);
  std::mutex mu;
  std::vector<std::int64_t> seen;
  prop.derive_map(d, {s}, [&](MapContext& c) {
    std::lock_guard lock(mu);
    seen.push_back(c.input_as<std::int64_t>(0));
    c.output_as<std::int64_t>() = c.input_as<std::int64_t>(0) + 1;
  });
  const auto before = prop.stats();
  commit_i64(rt, s, 1);
  commit_i64(rt, unwatched, 99);
  commit_i64(rt, s, 2);
  commit_i64(rt, s, 3);
  EXPECT_EQ(read_i64(rt, s), 3);
  EXPECT_EQ(read_i64(rt, d), 0);
  {
    std::lock_guard lock(mu);
    EXPECT_TRUE(seen.empty());
  }
  EXPECT_GE(prop.stats().commits_queued, before.commits_queued + 3);
  EXPECT_EQ(prop.stats().waves, before.waves);
  prop.propagate();
  EXPECT_EQ(read_i64(rt, d), 4);
  EXPECT_EQ(prop.stats().waves, before.waves + 3);
  // One wave per watched commit. (Nodes read the pages' current bytes, so every wave may see the last value.)
  std::lock_guard lock(mu);
  ASSERT_EQ(seen.size(), 3u);
  EXPECT_EQ(seen.back(), 3);
}

TEST(PropagatorDeferred, PropagateWithEmptyQueueIsANoOp) {
  Runtime rt;
  Propagator prop(rt, PropagatorOptions{.mode = PropagationMode::Deferred});
  PageId s = rt.create_page(8), d = rt.create_page(8);
  prop.derive_map(d, {s}, affine(1, 0));
  prop.propagate();  // computes the new node: a wave of its own
  const auto before = prop.stats();
  EXPECT_EQ(before.waves, 1u);
  prop.propagate();
  prop.propagate();
  EXPECT_EQ(prop.stats().waves, before.waves);
  EXPECT_EQ(read_i64(rt, d), 0);
}

TEST(PropagatorDeferred, WaitForReturnsWhenPropagateOnAnotherThreadReachesThePage) {
  Runtime rt;
  Propagator prop(rt, PropagatorOptions{.mode = PropagationMode::Deferred});
  PageId s = rt.create_page(8), d = rt.create_page(8);
  prop.derive_map(d, {s}, affine(2, 0));
  const std::uint64_t e0 = rt.info(d).epoch;
  prop.wait_for(d, e0);  // already there: returns at once
  commit_i64(rt, s, 5);
  auto waiter = std::async(std::launch::async, [&] {
    prop.wait_for(d, e0 + 1);
    return read_i64(rt, d);
  });
  // The page cannot reach the epoch before propagate() runs.
  EXPECT_EQ(waiter.wait_for(100ms), std::future_status::timeout);
  std::thread propagator_thread([&] { prop.propagate(); });
  ASSERT_EQ(waiter.wait_for(60s), std::future_status::ready);
  EXPECT_EQ(waiter.get(), 10);
  propagator_thread.join();
}

TEST(PropagatorDeferred, WaitForOnADeletedPageThrowsNotFound) {
  Runtime rt;
  Propagator prop(rt, PropagatorOptions{.mode = PropagationMode::Deferred});
  PageId s = rt.create_page(8), d = rt.create_page(8), lonely = rt.create_page(8);
  prop.derive_map(d, {s}, affine(2, 0));
  auto e = error_of([&] { prop.wait_for(PageId::make(0, 99999), 1); });
  ASSERT_TRUE(e);
  EXPECT_EQ(e->code(), ErrorCode::NotFound);
  auto waiter = std::async(std::launch::async, [&] {
    auto err = error_of([&] { prop.wait_for(lonely, 5); });
    return err ? err->code() : ErrorCode::Internal;
  });
  EXPECT_EQ(waiter.wait_for(50ms), std::future_status::timeout);
  rt.delete_page(lonely);
  ASSERT_EQ(waiter.wait_for(60s), std::future_status::ready);
  EXPECT_EQ(waiter.get(), ErrorCode::NotFound);
}

TEST(PropagatorDeferred, BackgroundWorkerPropagatesWithoutACallToPropagate) {
  Runtime rt;
  Propagator prop(rt, PropagatorOptions{.mode = PropagationMode::Deferred, .background_worker = true});
  PageId s = rt.create_page(8), d = rt.create_page(8);
  prop.derive_map(d, {s}, affine(3, 1));
  const std::uint64_t e0 = rt.info(d).epoch;
  commit_i64(rt, s, 5);
  auto waiter = std::async(std::launch::async, [&] { prop.wait_for(d, e0 + 1); });
  ASSERT_EQ(waiter.wait_for(60s), std::future_status::ready);
  waiter.get();
  EXPECT_EQ(read_i64(rt, d), 16);
}

TEST(PropagatorBatch, BackgroundWorkerPropagatesWithoutACallToPropagate) {
  Runtime rt;
  Propagator prop(rt, PropagatorOptions{.mode = PropagationMode::Batch, .background_worker = true});
  PageId s = rt.create_page(8), d = rt.create_page(8);
  prop.derive_passthrough(d, s);
  commit_i64(rt, s, 5);
  commit_i64(rt, s, 6);
  auto waiter = std::async(std::launch::async, [&] {
    // The worker may fold both commits into one wave or run two: wait for the first, then for the value.
    prop.wait_for(d, 1);
    for (int i = 0; i < 60000 && read_i64(rt, d) != 6; ++i) std::this_thread::sleep_for(1ms);
  });
  ASSERT_EQ(waiter.wait_for(60s), std::future_status::ready);
  waiter.get();
  EXPECT_EQ(read_i64(rt, d), 6);
}

// ---- backpressure -------------------------------------------------------------------------------------------

TEST(PropagatorBackpressure, FullQueueWithFailPolicyRefusesTheCommitWithoutTrace) {
  Runtime rt;
  Propagator prop(
      rt,
      PropagatorOptions{.mode = PropagationMode::Deferred, .queue_capacity = 2, .full_policy = QueueFullPolicy::Fail});
  PageId s = rt.create_page(8), d = rt.create_page(8);
  prop.derive_map(d, {s}, affine(2, 0));
  commit_i64(rt, s, 1);
  commit_i64(rt, s, 2);
  const PageInfo before = rt.info(s);
  const auto before_bytes = rt.read_all(s);
  auto e = error_of([&] { commit_i64(rt, s, 3); });
  ASSERT_TRUE(e);
  EXPECT_EQ(e->code(), ErrorCode::ResourceExhausted);
  EXPECT_EQ(rt.info(s).epoch, before.epoch);
  EXPECT_EQ(rt.read_all(s), before_bytes);
  EXPECT_EQ(read_i64(rt, s), 2);
  prop.propagate();
  EXPECT_EQ(read_i64(rt, d), 4);
  commit_i64(rt, s, 3);  // room again
  prop.propagate();
  EXPECT_EQ(read_i64(rt, d), 6);
}

// BATCH commits take their queue places in per-thread blocks (graph/queue.cpp); a thread alone still meets the
// capacity exactly, and the stats count commits, not places held unused.
TEST(PropagatorBackpressure, BatchQueueHoldsExactlyItsCapacityForOneThread) {
  Runtime rt;
  constexpr std::size_t kCapacity = 8192;  // room for two threads' blocks
  Propagator prop(
      rt, PropagatorOptions{
              .mode = PropagationMode::Batch, .queue_capacity = kCapacity, .full_policy = QueueFullPolicy::Fail});
  PageId s = rt.create_page(8), d = rt.create_page(8);
  prop.derive_map(d, {s}, affine(2, 0));
  for (int round = 0; round < 2; ++round) {
    for (std::size_t i = 1; i <= kCapacity; ++i) {
      commit_i64(rt, s, static_cast<std::int64_t>(i));
      if (i == 1 || i == 100 || i == kCapacity) {
        EXPECT_EQ(prop.stats().commits_queued, round * kCapacity + i);
      }
    }
    auto e = error_of([&] { commit_i64(rt, s, -1); });
    ASSERT_TRUE(e) << "round " << round << ": a commit past the capacity was accepted";
    EXPECT_EQ(e->code(), ErrorCode::ResourceExhausted);
    EXPECT_EQ(read_i64(rt, s), static_cast<std::int64_t>(kCapacity));
    prop.propagate();
    EXPECT_EQ(read_i64(rt, d), 2 * static_cast<std::int64_t>(kCapacity));
  }
}

TEST(PropagatorBackpressure, BatchPlacesAnotherThreadHoldsUnusedNeverFillTheQueue) {
  Runtime rt;
  constexpr std::size_t kCapacity = 8192;
  Propagator prop(
      rt, PropagatorOptions{
              .mode = PropagationMode::Batch, .queue_capacity = kCapacity, .full_policy = QueueFullPolicy::Fail});
  PageId s = rt.create_page(8), d = rt.create_page(8);
  prop.derive_map(d, {s}, affine(2, 0));
  constexpr std::size_t kOther = 10;  // the other thread keeps the rest of its block unused
  std::thread([&] {
    for (std::size_t i = 0; i < kOther; ++i) commit_i64(rt, s, -1 - static_cast<std::int64_t>(i));
  }).join();
  EXPECT_EQ(prop.stats().commits_queued, kOther);
  std::size_t accepted = 0;  // each commit changes the page (a commit that changes nothing takes no place)
  for (;; ++accepted) {
    ASSERT_LE(accepted, kCapacity) << "the queue never filled";
    try {
      commit_i64(rt, s, static_cast<std::int64_t>(accepted) + 2);
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), ErrorCode::ResourceExhausted);
      break;
    }
  }
  // The unused places count against the capacity, but never more than a 64th of it.
  EXPECT_GE(accepted + kOther, kCapacity - kCapacity / 64);
  EXPECT_LE(accepted + kOther, kCapacity);
  EXPECT_EQ(prop.stats().commits_queued, kOther + accepted);
  prop.propagate();
  EXPECT_EQ(read_i64(rt, d), 2 * (static_cast<std::int64_t>(accepted) + 1));
  commit_i64(rt, s, -5);  // room again
  prop.propagate();
  EXPECT_EQ(read_i64(rt, d), -10);
}

TEST(PropagatorBackpressure, BatchWithBlockPolicyAndBackgroundWorkerCompletesEveryThreadsCommits) {
  Runtime rt;
  Propagator prop(rt, PropagatorOptions{.mode = PropagationMode::Batch,
                                        .queue_capacity = 8192,
                                        .full_policy = QueueFullPolicy::Block,
                                        .background_worker = true});
  constexpr int kThreads = 4, kCommits = 20'000;
  std::vector<PageId> sources, outs;
  for (int t = 0; t < kThreads; ++t) {
    sources.push_back(rt.create_page(8));
    outs.push_back(rt.create_page(8));
    prop.derive_map(outs.back(), {sources.back()}, affine(1, 0));
  }
  std::vector<std::future<void>> writers;
  for (int t = 0; t < kThreads; ++t) {
    writers.push_back(std::async(std::launch::async, [&, t] {
      for (int i = 1; i <= kCommits; ++i) commit_i64(rt, sources[t], i);
    }));
  }
  for (auto& w : writers) {
    ASSERT_EQ(w.wait_for(60s), std::future_status::ready) << "commits blocked forever on a full queue";
    w.get();
  }
  prop.propagate();
  for (int t = 0; t < kThreads; ++t) EXPECT_EQ(read_i64(rt, outs[t]), kCommits);
  EXPECT_EQ(prop.stats().commits_queued, static_cast<std::uint64_t>(kThreads) * kCommits);
}

TEST(PropagatorBackpressure, FullQueueWithBlockPolicyAndBackgroundWorkerCompletesEveryCommit) {
  Runtime rt;
  Propagator prop(rt, PropagatorOptions{.mode = PropagationMode::Deferred,
                                        .queue_capacity = 2,
                                        .full_policy = QueueFullPolicy::Block,
                                        .background_worker = true});
  PageId s = rt.create_page(8), d = rt.create_page(8);
  std::atomic<int> calls{0};
  prop.derive_map(d, {s}, [&](MapContext& c) {
    calls.fetch_add(1);
    c.output_as<std::int64_t>() = 2 * c.input_as<std::int64_t>(0);
  });
  constexpr int kCommits = 1000;
  auto writer = std::async(std::launch::async, [&] {
    for (int i = 1; i <= kCommits; ++i) commit_i64(rt, s, i);
  });
  ASSERT_EQ(writer.wait_for(60s), std::future_status::ready) << "commits blocked forever on a full queue";
  writer.get();
  prop.propagate();  // drains whatever the worker has not run yet
  EXPECT_EQ(read_i64(rt, s), kCommits);
  EXPECT_EQ(read_i64(rt, d), 2 * kCommits);
  EXPECT_EQ(calls.load(), kCommits) << "DEFERRED runs one wave per queued commit";
}

// ---- graph changes ------------------------------------------------------------------------------------------

TEST(Propagator, RemovedNodeStopsUpdatingItsPageAndCanBeDerivedAgain) {
  Runtime rt;
  Propagator prop(rt);
  PageId s = rt.create_page(8), d = rt.create_page(8);
  prop.derive_map(d, {s}, affine(2, 0));
  EXPECT_EQ(prop.node_count(), 1u);
  const std::string dot = prop.to_dot();
  EXPECT_NE(dot.find("digraph"), std::string::npos) << dot;
  EXPECT_NE(dot.find(s.to_string()), std::string::npos) << dot;
  EXPECT_NE(dot.find(d.to_string()), std::string::npos) << dot;
  commit_i64(rt, s, 5);
  EXPECT_EQ(read_i64(rt, d), 10);
  prop.remove_node(d);
  EXPECT_EQ(prop.node_count(), 0u);
  commit_i64(rt, s, 6);
  EXPECT_EQ(read_i64(rt, d), 10) << "the page keeps its last bytes";
  EXPECT_NE(prop.to_dot().find("digraph"), std::string::npos);
  prop.derive_map(d, {s}, affine(3, 0));  // no longer derived: may be derived again
  EXPECT_EQ(prop.node_count(), 1u);
  commit_i64(rt, s, 7);
  EXPECT_EQ(read_i64(rt, d), 21);
}

TEST(Propagator, RemovingAMiddleNodeStopsItsDownstream) {
  Runtime rt;
  Propagator prop(rt);
  PageId a = rt.create_page(8), b = rt.create_page(8), c = rt.create_page(8);
  prop.derive_map(b, {a}, affine(1, 1));
  prop.derive_map(c, {b}, affine(1, 1));
  commit_i64(rt, a, 1);
  EXPECT_EQ(read_i64(rt, c), 3);
  prop.remove_node(b);
  EXPECT_EQ(prop.node_count(), 1u);
  commit_i64(rt, a, 10);
  EXPECT_EQ(read_i64(rt, b), 2);
  EXPECT_EQ(read_i64(rt, c), 3);
  commit_i64(rt, b, 50);  // b is now a plain source for c
  EXPECT_EQ(read_i64(rt, c), 51);
}

TEST(Propagator, ControlDependencyOrdersNodesWithoutCarryingData) {
  Runtime rt;
  Propagator prop(rt);
  PageId a = rt.create_page(8), first = rt.create_page(8), second = rt.create_page(8);
  std::atomic<int> step{0};
  std::atomic<int> first_at{-1}, second_at{-1};
  prop.derive_map(first, {a}, [&](MapContext& c) {
    first_at = step.fetch_add(1);
    c.output_as<std::int64_t>() = c.input_as<std::int64_t>(0);
  });
  prop.derive_map(second, {a}, [&](MapContext& c) {
    second_at = step.fetch_add(1);
    c.output_as<std::int64_t>() = c.input_as<std::int64_t>(0);
  });
  prop.add_dependency(second, first, EdgeKind::Control);  // first runs after second
  commit_i64(rt, a, 1);
  EXPECT_EQ(second_at.load(), 0);
  EXPECT_EQ(first_at.load(), 1);
  EXPECT_TRUE(prop.remove_dependency(second, first, EdgeKind::Control));
  EXPECT_FALSE(prop.remove_dependency(second, first, EdgeKind::Control));
}

// ---- cycles -------------------------------------------------------------------------------------------------

TEST(PropagatorCycles, DeriveThatClosesACycleIsRefusedNamingItsPages) {
  Runtime rt;
  Propagator prop(rt);
  PageId a = rt.create_page(8), b = rt.create_page(8), c = rt.create_page(8), x = rt.create_page(8);
  prop.derive_map(b, {a}, affine(1, 0));
  prop.derive_map(c, {b}, affine(1, 0));
  auto e = error_of([&] { prop.derive_map(a, {x, c}, affine(1, 0)); });
  ASSERT_TRUE(e);
  EXPECT_EQ(e->code(), ErrorCode::InvalidArgument);
  const std::string msg = e->what();
  for (PageId p : {a, b, c}) EXPECT_NE(msg.find(p.to_string()), std::string::npos) << p.to_string() << " in: " << msg;
  EXPECT_EQ(prop.node_count(), 2u);
  // The graph is unchanged and still works.
  commit_i64(rt, a, 4);
  EXPECT_EQ(read_i64(rt, c), 4);
  commit_i64(rt, x, 9);
  EXPECT_EQ(read_i64(rt, a), 4);
}

TEST(PropagatorCycles, ControlDependencyThatClosesACycleIsRefused) {
  Runtime rt;
  Propagator prop(rt);
  PageId a = rt.create_page(8), b = rt.create_page(8), c = rt.create_page(8);
  prop.derive_map(b, {a}, affine(1, 0));
  prop.derive_map(c, {b}, affine(1, 0));
  auto e = error_of([&] { prop.add_dependency(c, a, EdgeKind::Control); });
  ASSERT_TRUE(e);
  EXPECT_EQ(e->code(), ErrorCode::InvalidArgument);
  const std::string msg = e->what();
  for (PageId p : {a, b, c}) EXPECT_NE(msg.find(p.to_string()), std::string::npos) << p.to_string() << " in: " << msg;
  e = error_of([&] { prop.add_dependency(a, a, EdgeKind::Control); });
  ASSERT_TRUE(e);
  EXPECT_EQ(e->code(), ErrorCode::InvalidArgument);
  e = error_of([&] { prop.add_dependency(c, a, EdgeKind::GpuSync); });
  ASSERT_TRUE(e);
  EXPECT_EQ(e->code(), ErrorCode::InvalidArgument);
  // A forward control edge is fine, and the graph still propagates.
  prop.add_dependency(a, c, EdgeKind::Control);
  commit_i64(rt, a, 3);
  EXPECT_EQ(read_i64(rt, c), 3);
}

// ---- errors -------------------------------------------------------------------------------------------------

TEST(PropagatorErrors, DeriveOnAMissingPageIsNotFound) {
  Runtime rt;
  Propagator prop(rt);
  PageId a = rt.create_page(8), b = rt.create_page(8);
  const PageId missing = PageId::make(0, 4242);
  auto e = error_of([&] { prop.derive_map(missing, {a}, affine(1, 0)); });
  ASSERT_TRUE(e);
  EXPECT_EQ(e->code(), ErrorCode::NotFound);
  e = error_of([&] { prop.derive_map(b, {a, missing}, affine(1, 0)); });
  ASSERT_TRUE(e);
  EXPECT_EQ(e->code(), ErrorCode::NotFound);
  e = error_of([&] { prop.derive_passthrough(b, missing); });
  ASSERT_TRUE(e);
  EXPECT_EQ(e->code(), ErrorCode::NotFound);
  PageId deleted = rt.create_page(8);
  rt.delete_page(deleted);
  e = error_of([&] { prop.derive_map(b, {deleted}, affine(1, 0)); });
  ASSERT_TRUE(e);
  EXPECT_EQ(e->code(), ErrorCode::NotFound);
  EXPECT_EQ(prop.node_count(), 0u);
  // b is still free to derive.
  prop.derive_map(b, {a}, affine(1, 0));
  EXPECT_EQ(prop.node_count(), 1u);
}

TEST(PropagatorErrors, OutputThatAlreadyHasANodeIsInvalidArgument) {
  Runtime rt;
  Propagator prop(rt);
  PageId a = rt.create_page(8), b = rt.create_page(8), c = rt.create_page(8);
  prop.derive_map(b, {a}, affine(2, 0));
  auto e = error_of([&] { prop.derive_map(b, {c}, affine(3, 0)); });
  ASSERT_TRUE(e);
  EXPECT_EQ(e->code(), ErrorCode::InvalidArgument);
  e = error_of([&] { prop.derive_passthrough(b, c); });
  ASSERT_TRUE(e);
  EXPECT_EQ(e->code(), ErrorCode::InvalidArgument);
  EXPECT_EQ(prop.node_count(), 1u);
  commit_i64(rt, a, 5);
  EXPECT_EQ(read_i64(rt, b), 10) << "the original node is kept";
  commit_i64(rt, c, 100);
  EXPECT_EQ(read_i64(rt, b), 10);
}

TEST(PropagatorErrors, OutputAmongItsOwnInputsIsInvalidArgument) {
  Runtime rt;
  Propagator prop(rt);
  PageId a = rt.create_page(8), b = rt.create_page(8);
  auto e = error_of([&] { prop.derive_map(b, {a, b}, affine(1, 0)); });
  ASSERT_TRUE(e);
  EXPECT_EQ(e->code(), ErrorCode::InvalidArgument);
  e = error_of([&] { prop.derive_passthrough(b, b); });
  ASSERT_TRUE(e);
  EXPECT_EQ(e->code(), ErrorCode::InvalidArgument);
  EXPECT_EQ(prop.node_count(), 0u);
}

// ---- failing nodes ------------------------------------------------------------------------------------------

struct ThrowingChain {
  Runtime rt;
  Propagator prop;
  PageId s, f, g, h;
  std::atomic<bool> fail_always{false};
  explicit ThrowingChain(PropagatorOptions options = {}) : prop(rt, options) {
    s = rt.create_page(8);
    f = rt.create_page(8);
    g = rt.create_page(8);
    h = rt.create_page(8);
    prop.derive_map(f, {s}, [this](MapContext& c) {
      const auto v = c.input_as<std::int64_t>(0);
      c.output_as<std::int64_t>() = 2 * v;  // written before throwing: must never be published
      if (v == 13 || fail_always.load()) throw std::runtime_error("unlucky input 13");
    });
    prop.derive_map(g, {f}, affine(1, 1));
    prop.derive_map(h, {g}, affine(1, 1));
  }
};

TEST(PropagatorFailure, ThrowingNodeRaisesNodeErrorAndMarksItAndDownstreamStale) {
  ThrowingChain t;
  commit_i64(t.rt, t.s, 1);
  ASSERT_EQ(read_i64(t.rt, t.h), 4);
  const std::uint64_t f_epoch = t.rt.info(t.f).epoch;
  const auto before = t.prop.stats();
  bool caught = false;
  try {
    commit_i64(t.rt, t.s, 13);
  } catch (const NodeError& e) {
    caught = true;
    EXPECT_EQ(e.page(), t.f);
    EXPECT_EQ(e.code(), ErrorCode::NodeFailed);
    EXPECT_EQ(e.committed_lsn(), t.rt.last_lsn()) << "the commit took effect: the error must carry its LSN";
    EXPECT_NE(std::string(e.what()).find(t.f.to_string()), std::string::npos) << e.what();
    ASSERT_TRUE(e.nested());
    try {
      std::rethrow_exception(e.nested());
    } catch (const std::runtime_error& inner) {
      EXPECT_STREQ(inner.what(), "unlucky input 13");
    } catch (...) {
      ADD_FAILURE() << "nested() is not the node's std::runtime_error";
    }
  }
  ASSERT_TRUE(caught) << "commit() did not throw NodeError";
  EXPECT_TRUE(t.prop.is_stale(t.f));
  EXPECT_TRUE(t.prop.is_stale(t.g));
  EXPECT_TRUE(t.prop.is_stale(t.h));
  EXPECT_FALSE(t.prop.is_stale(t.s));
  EXPECT_EQ(read_i64(t.rt, t.f), 2) << "nothing of the failing node's output may be published";
  EXPECT_EQ(t.rt.info(t.f).epoch, f_epoch);
  EXPECT_EQ(read_i64(t.rt, t.g), 3);
  EXPECT_EQ(read_i64(t.rt, t.h), 4);
  EXPECT_EQ(t.prop.stats().nodes_failed, before.nodes_failed + 1);
  EXPECT_NE(t.prop.to_dot().find(t.f.to_string()), std::string::npos);

  commit_i64(t.rt, t.s, 5);
  EXPECT_EQ(read_i64(t.rt, t.f), 10);
  EXPECT_EQ(read_i64(t.rt, t.g), 11);
  EXPECT_EQ(read_i64(t.rt, t.h), 12);
  EXPECT_FALSE(t.prop.is_stale(t.f));
  EXPECT_FALSE(t.prop.is_stale(t.g));
  EXPECT_FALSE(t.prop.is_stale(t.h));
}

TEST(PropagatorFailure, StaleNodesAreRecomputedByTheNextWaveWithoutNewInput) {
  ThrowingChain t;
  commit_i64(t.rt, t.s, 2);
  t.fail_always = true;
  EXPECT_THROW(commit_i64(t.rt, t.s, 7), NodeError);
  ASSERT_TRUE(t.prop.is_stale(t.h));
  t.fail_always = false;
  t.prop.propagate();  // IMMEDIATE: recomputes the stale pages
  const std::int64_t s_now = read_i64(t.rt, t.s);
  EXPECT_EQ(read_i64(t.rt, t.f), 2 * s_now);
  EXPECT_EQ(read_i64(t.rt, t.h), 2 * s_now + 2);
  EXPECT_FALSE(t.prop.is_stale(t.f));
  EXPECT_FALSE(t.prop.is_stale(t.h));
}

TEST(PropagatorFailure, DeferredPropagateRethrowsNodeErrorAndRecovers) {
  ThrowingChain t(PropagatorOptions{.mode = PropagationMode::Deferred});
  commit_i64(t.rt, t.s, 13);
  try {
    t.prop.propagate();
    ADD_FAILURE() << "propagate() did not throw";
  } catch (const NodeError& e) {
    EXPECT_EQ(e.page(), t.f);
    EXPECT_EQ(e.code(), ErrorCode::NodeFailed);
    EXPECT_EQ(e.committed_lsn(), 0u) << "propagate() commits nothing";
  }
  EXPECT_TRUE(t.prop.is_stale(t.g));
  commit_i64(t.rt, t.s, 4);
  t.prop.propagate();
  EXPECT_EQ(read_i64(t.rt, t.h), 10);
  EXPECT_FALSE(t.prop.is_stale(t.h));
}

TEST(PropagatorFailure, ThrowingNodeInAWideParallelWaveDoesNotHang) {
  Runtime rt;
  Propagator prop(rt, PropagatorOptions{.threads = 4, .inline_node_limit = 4, .min_parallel_work_ns = 0});
  constexpr int kWidth = 500, kBad = 250;
  PageId s = rt.create_page(8);
  std::vector<PageId> mids, tails;
  for (int i = 0; i < kWidth; ++i) {
    PageId m = rt.create_page(8), tail = rt.create_page(8);
    prop.derive_map(m, {s}, [i](MapContext& c) {
      const auto v = c.input_as<std::int64_t>(0);
      if (i == kBad && v < 0) throw std::runtime_error("negative input");
      c.output_as<std::int64_t>() = v + i;
    });
    prop.derive_map(tail, {m}, affine(2, 0));
    mids.push_back(m);
    tails.push_back(tail);
  }
  commit_i64(rt, s, 1);
  ASSERT_EQ(read_i64(rt, tails[kWidth - 1]), 2 * kWidth);
  for (int round = 0; round < 3; ++round) {
    auto failing = std::async(std::launch::async, [&] {
      try {
        commit_i64(rt, s, -1 - round);
      } catch (const NodeError& e) {
        return e.page();
      }
      return PageId{};
    });
    ASSERT_EQ(failing.wait_for(60s), std::future_status::ready) << "wave with a throwing node hung";
    EXPECT_EQ(failing.get(), mids[kBad]);
    EXPECT_TRUE(prop.is_stale(mids[kBad]));
    EXPECT_TRUE(prop.is_stale(tails[kBad]));
  }
  auto good = std::async(std::launch::async, [&] { commit_i64(rt, s, 100); });
  ASSERT_EQ(good.wait_for(60s), std::future_status::ready);
  good.get();
  for (int i = 0; i < kWidth; ++i) {
    ASSERT_EQ(read_i64(rt, mids[i]), 100 + i) << i;
    ASSERT_EQ(read_i64(rt, tails[i]), 2 * (100 + i)) << i;
    ASSERT_FALSE(prop.is_stale(tails[i])) << i;
  }
}

}  // namespace
}  // namespace mmsb
