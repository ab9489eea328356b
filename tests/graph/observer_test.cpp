// Observers (page and event subscriptions) and the statistics exports of the Propagator.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include "mmsb/mmsb.hpp"
#include "support/test_support.hpp"

namespace mmsb {
namespace {

using mmsb::testing::commit_i64;

MapFunction doubling() {
  return [](MapContext& c) { c.output_as<std::int64_t>() = 2 * c.input_as<std::int64_t>(0); };
}

std::vector<EventKind> kinds_of(const std::vector<Event>& events) {
  std::vector<EventKind> out;
  for (const Event& e : events) out.push_back(e.kind);
  return out;
}

std::size_t index_of(const std::vector<EventKind>& kinds, EventKind k) {
  return static_cast<std::size_t>(std::find(kinds.begin(), kinds.end(), k) - kinds.begin());
}

TEST(Observers, PageSubscriptionSeesEachDerivedChangeWithItsDeltaAndEpoch) {
  Runtime rt;
  Propagator prop(rt);
  PageId src = rt.create_page(8), out = rt.create_page(8);
  prop.derive_map(out, {src}, doubling());
  std::vector<std::pair<Delta, std::uint64_t>> seen;
  prop.subscribe(out, [&](const Delta& d, std::uint64_t epoch) { seen.emplace_back(d, epoch); });
  commit_i64(rt, src, 5);
  commit_i64(rt, src, 5);  // same value: the node is cut off, no change of `out`
  commit_i64(rt, src, 7);
  ASSERT_EQ(seen.size(), 2u);
  EXPECT_EQ(seen[0].first.page, out);
  EXPECT_EQ(seen[0].second, 1u);
  EXPECT_EQ(seen[1].second, 2u);
  EXPECT_EQ(seen[1].second, rt.info(out).epoch);
  std::vector<std::byte> bytes(8);
  mmsb::apply(seen[0].first, bytes);
  mmsb::apply(seen[1].first, bytes);
  EXPECT_EQ(bytes, rt.read_all(out));
}

// Committed deltas reach page observers shared with the queued commit, not copied: each queued commit's delta must
// stay intact until it is delivered, for every observer of the page, after the commits that follow it.
TEST(Observers, QueuedCommitsReachEveryPageObserverIntactAndInOrder) {
  Runtime rt;
  Propagator prop(rt, PropagatorOptions{.mode = PropagationMode::Deferred});
  constexpr std::size_t kSize = 64 << 10;
  PageId src = rt.create_page(kSize);
  std::vector<std::byte> first(kSize), second(kSize);
  std::vector<std::uint64_t> epochs;
  prop.subscribe(src, [&](const Delta& d, std::uint64_t epoch) {
    mmsb::apply(d, first);
    epochs.push_back(epoch);
  });
  prop.subscribe(src, [&](const Delta& d, std::uint64_t) { mmsb::apply(d, second); });
  std::vector<std::byte> bytes(kSize);
  for (int k = 1; k <= 3; ++k) {
    for (std::size_t i = 0; i < kSize; ++i)
      bytes[i] = static_cast<std::byte>((i * 31 + static_cast<std::size_t>(k)) & 0xff);
    auto txn = rt.begin();
    txn.write(src, 0, bytes);
    txn.commit();
  }
  EXPECT_TRUE(epochs.empty()) << "DEFERRED: nothing is delivered before propagate()";
  prop.propagate();
  EXPECT_EQ(epochs, (std::vector<std::uint64_t>{1, 2, 3}));
  EXPECT_EQ(first, rt.read_all(src));
  EXPECT_EQ(second, rt.read_all(src));
}

TEST(Observers, PageSubscriptionOnAPageNoNodeReadsSeesItsCommits) {
  Runtime rt;
  Propagator prop(rt);
  PageId lonely = rt.create_page(8);
  std::vector<std::uint64_t> epochs;
  prop.subscribe(lonely, [&](const Delta&, std::uint64_t epoch) { epochs.push_back(epoch); });
  commit_i64(rt, lonely, 1);
  commit_i64(rt, lonely, 2);
  EXPECT_EQ(epochs, (std::vector<std::uint64_t>{1, 2}));
}

TEST(Observers, WaveEventsArriveInOrderAndNameTheirNodes) {
  Runtime rt;
  Propagator prop(rt);
  PageId src = rt.create_page(8), mid = rt.create_page(8), out = rt.create_page(8);
  prop.derive_map(mid, {src}, doubling());
  prop.derive_map(out, {mid}, doubling());
  std::vector<Event> events;
  prop.subscribe(EventMask::all(), [&](const Event& e) { events.push_back(e); });
  commit_i64(rt, src, 3);
  auto kinds = kinds_of(events);
  ASSERT_LT(index_of(kinds, EventKind::Commit), kinds.size());
  ASSERT_LT(index_of(kinds, EventKind::WaveEnd), kinds.size());
  EXPECT_LT(index_of(kinds, EventKind::Commit), index_of(kinds, EventKind::WaveBegin));
  EXPECT_LT(index_of(kinds, EventKind::WaveBegin), index_of(kinds, EventKind::NodeRecomputed));
  EXPECT_LT(index_of(kinds, EventKind::NodeRecomputed), index_of(kinds, EventKind::WaveEnd));
  std::vector<PageId> recomputed;
  for (const Event& e : events)
    if (e.kind == EventKind::NodeRecomputed) recomputed.push_back(e.page);
  EXPECT_EQ(recomputed, (std::vector<PageId>{mid, out}));
  const Event& end = events[index_of(kinds, EventKind::WaveEnd)];
  EXPECT_GT(end.duration_ns, 0u);
  EXPECT_EQ(end.wave, events[index_of(kinds, EventKind::WaveBegin)].wave);
  EXPECT_GT(events[index_of(kinds, EventKind::Commit)].lsn, 0u);
}

TEST(Observers, CutOffAndSkippedNodesAreReported) {
  Runtime rt;
  Propagator prop(rt);
  PageId a = rt.create_page(8), b = rt.create_page(8), sign = rt.create_page(8), sum = rt.create_page(8);
  prop.derive_map(sign, {a}, [](MapContext& c) { c.output_as<std::int64_t>() = c.input_as<std::int64_t>(0) > 0; });
  prop.derive_map(sum, {sign, b}, [](MapContext& c) {
    c.output_as<std::int64_t>() = c.input_as<std::int64_t>(0) + c.input_as<std::int64_t>(1);
  });
  commit_i64(rt, a, 1);
  std::vector<Event> events;
  prop.subscribe(EventMask{EventKind::NodeCutOff, EventKind::NodeSkipped},
                 [&](const Event& e) { events.push_back(e); });
  commit_i64(rt, a, 2);  // sign stays 1: cut off; sum is reached but none of its inputs changed, so it is skipped
  ASSERT_EQ(events.size(), 2u);
  EXPECT_EQ(events[0].kind, EventKind::NodeCutOff);
  EXPECT_EQ(events[0].page, sign);
  EXPECT_EQ(events[1].kind, EventKind::NodeSkipped);
  EXPECT_EQ(events[1].page, sum);
  EXPECT_EQ(prop.stats().nodes_skipped, 1u);
}

TEST(Observers, FailingNodeIsReportedWithItsMessage) {
  Runtime rt;
  Propagator prop(rt);
  PageId src = rt.create_page(8), out = rt.create_page(8);
  prop.derive_map(out, {src}, [](MapContext& c) {
    if (c.input_as<std::int64_t>(0) < 0) throw std::runtime_error("negative input");
    c.output_as<std::int64_t>() = c.input_as<std::int64_t>(0);
  });
  std::vector<Event> events;
  prop.subscribe(EventMask{EventKind::NodeFailed, EventKind::Error}, [&](const Event& e) { events.push_back(e); });
  EXPECT_THROW(commit_i64(rt, src, -1), NodeError);
  ASSERT_EQ(events.size(), 2u);
  EXPECT_EQ(events[0].kind, EventKind::NodeFailed);
  EXPECT_EQ(events[0].page, out);
  EXPECT_EQ(events[0].message, "negative input");
  EXPECT_EQ(events[1].kind, EventKind::Error);
  EXPECT_EQ(events[1].page, out);
}

TEST(Observers, CallbackMayCommitAndItsWaveRuns) {
  Runtime rt;
  Propagator prop(rt);
  PageId src = rt.create_page(8), out = rt.create_page(8), echo = rt.create_page(8), echo_out = rt.create_page(8);
  prop.derive_map(out, {src}, doubling());
  prop.derive_map(echo_out, {echo}, doubling());
  prop.subscribe(out, [&](const Delta&, std::uint64_t) {
    // Runs outside the engine's locks: reading and committing are allowed.
    commit_i64(rt, echo, rt.read_value<std::int64_t>(out, 0) + 1);
  });
  commit_i64(rt, src, 10);
  EXPECT_EQ(rt.read_value<std::int64_t>(out, 0), 20);
  EXPECT_EQ(rt.read_value<std::int64_t>(echo, 0), 21);
  EXPECT_EQ(rt.read_value<std::int64_t>(echo_out, 0), 42);
}

TEST(Observers, ThrowingObserverIsReportedAndOthersStillRun) {
  Runtime rt;
  Propagator prop(rt);
  PageId src = rt.create_page(8), out = rt.create_page(8);
  prop.derive_map(out, {src}, doubling());
  int good_calls = 0;
  std::vector<std::string> errors;
  prop.subscribe(out, [](const Delta&, std::uint64_t) { throw std::runtime_error("observer bug"); });
  prop.subscribe(out, [&](const Delta&, std::uint64_t) { ++good_calls; });
  prop.subscribe(EventMask{EventKind::Error}, [&](const Event& e) { errors.push_back(e.message); });
  EXPECT_NO_THROW(commit_i64(rt, src, 1));
  EXPECT_EQ(good_calls, 1);
  ASSERT_EQ(errors.size(), 1u);
  EXPECT_NE(errors[0].find("observer bug"), std::string::npos) << errors[0];
  EXPECT_EQ(rt.read_value<std::int64_t>(out, 0), 2);
}

TEST(Observers, UnsubscribeStopsDelivery) {
  Runtime rt;
  Propagator prop(rt);
  PageId src = rt.create_page(8), out = rt.create_page(8);
  prop.derive_map(out, {src}, doubling());
  int page_calls = 0, event_calls = 0;
  SubscriptionId p = prop.subscribe(out, [&](const Delta&, std::uint64_t) { ++page_calls; });
  SubscriptionId e = prop.subscribe(EventMask{EventKind::WaveEnd}, [&](const Event&) { ++event_calls; });
  commit_i64(rt, src, 1);
  EXPECT_TRUE(prop.unsubscribe(p));
  EXPECT_TRUE(prop.unsubscribe(e));
  EXPECT_FALSE(prop.unsubscribe(e));
  commit_i64(rt, src, 2);
  EXPECT_EQ(page_calls, 1);
  EXPECT_EQ(event_calls, 1);
}

TEST(Observers, PageCreationAndDeletionAreReported) {
  Runtime rt;
  Propagator prop(rt);
  std::vector<Event> events;
  prop.subscribe(EventMask{EventKind::PageCreated, EventKind::PageDeleted},
                 [&](const Event& e) { events.push_back(e); });
  PageId p = rt.create_page(16);
  rt.delete_page(p);
  ASSERT_EQ(events.size(), 2u);
  EXPECT_EQ(events[0].kind, EventKind::PageCreated);
  EXPECT_EQ(events[0].page, p);
  EXPECT_EQ(events[1].kind, EventKind::PageDeleted);
  EXPECT_EQ(events[1].page, p);
}

TEST(Observers, ResizeOfAWatchedPageIsReported) {
  Runtime rt;
  Propagator prop(rt);
  PageId p = rt.create_page(16);
  prop.subscribe(p, [](const Delta&, std::uint64_t) {});
  std::vector<Event> events;
  prop.subscribe(EventMask{EventKind::PageResized}, [&](const Event& e) { events.push_back(e); });
  rt.resize_page(p, 32);
  ASSERT_EQ(events.size(), 1u);
  EXPECT_EQ(events[0].page, p);
  EXPECT_EQ(events[0].epoch, 1u);
}

TEST(Observers, DeferredModeDeliversWhenTheWaveRuns) {
  Runtime rt;
  Propagator prop(rt, PropagatorOptions{.mode = PropagationMode::Deferred});
  PageId src = rt.create_page(8), out = rt.create_page(8);
  prop.derive_map(out, {src}, doubling());
  int calls = 0;
  prop.subscribe(out, [&](const Delta&, std::uint64_t) { ++calls; });
  commit_i64(rt, src, 4);
  EXPECT_EQ(calls, 0);
  prop.propagate();
  EXPECT_EQ(calls, 1);
}

TEST(PropagationStats, JsonAndPrometheusExportTheCountersAndLatencies) {
  Runtime rt;
  Propagator prop(rt);
  PageId src = rt.create_page(8);
  PageId last = src;
  for (int i = 0; i < 40; ++i) {
    PageId next = rt.create_page(8);
    prop.derive_map(next, {last}, doubling());
    last = next;
  }
  for (int v = 1; v <= 5; ++v) commit_i64(rt, src, v);
  const PropagationStats s = prop.stats();
  EXPECT_EQ(s.waves, 5u);
  EXPECT_EQ(s.nodes_recomputed, 200u);
  EXPECT_GT(s.bytes_changed, 0u);
  EXPECT_LE(s.bytes_changed, s.nodes_recomputed * 8);  // each delta changes at most its 8-byte page
  EXPECT_EQ(s.wave_latency.count, 5u);
  EXPECT_EQ(s.hop_latency.count, 5u);  // one run in 64 per task is timed: the first of each 40-node wave
  EXPECT_LE(s.wave_latency.p50_ns, s.wave_latency.p90_ns);
  EXPECT_LE(s.wave_latency.p90_ns, s.wave_latency.p99_ns);
  EXPECT_LE(s.wave_latency.p99_ns, s.wave_latency.max_ns);
  EXPECT_GT(s.wave_latency.mean_ns, 0.0);

  auto json = nlohmann::json::parse(prop.stats_json());
  EXPECT_EQ(json["waves"], 5);
  EXPECT_EQ(json["nodes_recomputed"], 200);
  EXPECT_EQ(json["wave_latency"]["count"], 5);
  EXPECT_EQ(json["wave_latency"]["max_ns"], s.wave_latency.max_ns);

  const std::string text = prop.stats_prometheus();
  EXPECT_NE(text.find("# TYPE mmsb_propagation_waves_total counter\nmmsb_propagation_waves_total 5\n"),
            std::string::npos)
      << text;
  EXPECT_NE(text.find("# TYPE mmsb_propagation_wave_latency_seconds summary"), std::string::npos);
  EXPECT_NE(text.find("mmsb_propagation_wave_latency_seconds{quantile=\"0.99\"}"), std::string::npos);
  EXPECT_NE(text.find("mmsb_propagation_wave_latency_seconds_count 5\n"), std::string::npos);
}

}  // namespace
}  // namespace mmsb

namespace mmsb {
namespace {

using mmsb::testing::commit_i64;

// A commit to a watched page that no node reads runs a wave that reaches nothing. That wave must still use up its
// wave number: otherwise a node added later and reached in the next wave would see the old change as current
// (and, for an incremental node, receive a delta that no longer exists).
TEST(PropagatorWaves, AChangeFromAnEmptyWaveIsNotSeenByTheNextWave) {
  Runtime rt;
  Propagator prop(rt);
  PageId p = rt.create_page(8), q = rt.create_page(8), out = rt.create_page(8);
  prop.subscribe(p, [](const Delta&, std::uint64_t) {});  // watched, but no node reads it yet
  commit_i64(rt, p, 1);                                   // a wave that reaches no node
  std::vector<bool> p_changed;
  prop.derive_incremental(
      out, {p, q}, [&](const IncrementalContext& ctx, Delta&) { p_changed.push_back(ctx.input_deltas[0] != nullptr); });
  commit_i64(rt, q, 2);
  commit_i64(rt, p, 3);
  EXPECT_EQ(p_changed, (std::vector<bool>{false, true}));
}

}  // namespace
}  // namespace mmsb
