// DurableRuntime, checkpoints, recovery, replay targets, history, verify and repair (mmsb/durable.hpp).
#include "mmsb/durable.hpp"

#include <gtest/gtest.h>

#include <array>
#include <atomic>
#include <filesystem>
#include <fstream>
#include <map>
#include <random>
#include <set>
#include <thread>
#include <vector>

#include "serialize/checkpoint.hpp"
#include "serialize/log.hpp"
#include "support/temp_dir.hpp"
#include "support/test_support.hpp"

namespace mmsb {
namespace {

namespace fs = std::filesystem;
using testing::commit_i64;
using testing::error_code_of;
using testing::TempDir;

DurableOptions fast_options(std::uint64_t segment_bytes = std::uint64_t{64} << 20) {
  DurableOptions o;
  o.sync = SyncPolicy::None;
  o.segment_bytes = segment_bytes;
  return o;
}

std::vector<fs::path> files_named(const fs::path& dir, const std::string& prefix) {
  std::vector<fs::path> out;
  for (const auto& e : fs::directory_iterator(dir)) {
    const std::string name = e.path().filename().string();
    if (name.rfind(prefix, 0) == 0) out.push_back(e.path());
  }
  std::sort(out.begin(), out.end());
  return out;
}

// Random work on a runtime: writes, resizes, creations and deletions. Returns the state hash after every commit,
// by LSN.
class Workload {
 public:
  explicit Workload(std::uint64_t seed) : rng_(seed) {}

  void run(Runtime& rt, int steps, std::map<std::uint64_t, std::uint64_t>& hash_at) {
    if (pages_.empty()) {
      for (PageId id : rt.page_ids()) pages_.push_back(id);
    }
    for (int i = 0; i < steps; ++i) {
      std::uint64_t lsn = 0;
      const int what = static_cast<int>(rng_() % 20);
      if (pages_.size() < 3 || what == 0) {
        PageId id = rt.create_page(rng_() % 200);
        pages_.push_back(id);
        lsn = rt.last_lsn();
      } else if (what == 1 && pages_.size() > 3) {
        std::size_t k = rng_() % pages_.size();
        rt.delete_page(pages_[k]);
        pages_.erase(pages_.begin() + static_cast<std::ptrdiff_t>(k));
        lsn = rt.last_lsn();
      } else {
        auto txn = rt.begin();
        txn.set_intent(what % 2 ? "step" : "");
        const std::size_t touched = 1 + rng_() % 3;
        std::set<PageId> staged;  // one resize-and-write per page: a resize applies before all of a page's writes
        for (std::size_t t = 0; t < touched; ++t) {
          PageId id = pages_[rng_() % pages_.size()];
          if (!staged.insert(id).second) continue;
          std::uint64_t size = rt.info(id).size;
          if (what == 2) {
            size = rng_() % 300;
            txn.resize(id, size);
          }
          if (size == 0) continue;
          std::uint64_t offset = rng_() % size;
          std::uint64_t len = 1 + rng_() % std::min<std::uint64_t>(16, size - offset);
          std::vector<std::byte> bytes(len);
          for (auto& b : bytes) b = static_cast<std::byte>(rng_());
          txn.write(id, offset, bytes);
        }
        lsn = txn.commit();
        if (lsn == 0) continue;
      }
      hash_at[lsn] = state_hash(rt);
    }
  }

 private:
  std::mt19937_64 rng_;
  std::vector<PageId> pages_;
};

TEST(DurableRuntime, FreshDirectoryThenRecoveryReproducesTheState) {
  TempDir dir;
  std::uint64_t live_hash = 0, live_lsn = 0;
  std::map<std::uint64_t, std::uint64_t> hashes;
  {
    DurableRuntime db(dir.path() / "state", fast_options());
    EXPECT_TRUE(db.recovery().fresh);
    Workload(1).run(db.runtime(), 300, hashes);
    live_hash = state_hash(db.runtime());
    live_lsn = db.runtime().last_lsn();
  }
  DurableRuntime db(dir.path() / "state", fast_options());
  EXPECT_FALSE(db.recovery().fresh);
  EXPECT_EQ(db.recovery().checkpoint_lsn, 0u);
  EXPECT_EQ(db.recovery().records_replayed, hashes.size());
  EXPECT_EQ(db.recovery().last_lsn, live_lsn);
  EXPECT_EQ(state_hash(db.runtime()), live_hash);
  // New commits continue the LSN sequence.
  PageId p = db.runtime().create_page(8);
  EXPECT_GT(db.runtime().last_lsn(), live_lsn);
  EXPECT_FALSE(db.runtime().contains(PageId::make(0, p.sequence() + 1)));
}

TEST(DurableRuntime, CheckpointPlusTailEqualsLiveStateAndDropsCoveredSegments) {
  TempDir dir;
  std::map<std::uint64_t, std::uint64_t> hashes;
  std::uint64_t live_hash = 0;
  CheckpointInfo info;
  {
    DurableRuntime db(dir.path(), fast_options(2048));  // tiny segments: many of them
    Workload work(2);
    work.run(db.runtime(), 400, hashes);
    const std::size_t segments_before = files_named(dir.path(), "log-").size();
    ASSERT_GT(segments_before, 5u);
    info = db.checkpoint();
    EXPECT_EQ(info.lsn, db.runtime().last_lsn());
    EXPECT_EQ(info.pages, db.runtime().page_count());
    EXPECT_GE(info.segments_removed, segments_before - 1);
    EXPECT_TRUE(fs::exists(info.file));
    work.run(db.runtime(), 200, hashes);
    live_hash = state_hash(db.runtime());
  }
  EXPECT_EQ(files_named(dir.path(), "checkpoint-").size(), 1u);
  DurableRuntime db(dir.path(), fast_options(2048));
  EXPECT_EQ(db.recovery().checkpoint_lsn, info.lsn);
  EXPECT_EQ(db.recovery().pages_restored, info.pages);
  EXPECT_EQ(db.recovery().records_replayed, 200u);
  EXPECT_EQ(state_hash(db.runtime()), live_hash);
  // Epochs survive too (not only bytes).
  for (PageId id : db.runtime().page_ids()) EXPECT_LT(db.runtime().info(id).epoch, 1000u);
}

TEST(DurableRuntime, SecondCheckpointReplacesTheFirstAndStateSurvivesRepeatedRestarts) {
  TempDir dir;
  std::map<std::uint64_t, std::uint64_t> hashes;
  std::uint64_t live_hash = 0;
  for (int round = 0; round < 4; ++round) {
    DurableRuntime db(dir.path(), fast_options(4096));
    if (round > 0) {
      EXPECT_EQ(state_hash(db.runtime()), live_hash) << "round " << round;
    }
    Workload(10 + static_cast<std::uint64_t>(round)).run(db.runtime(), 150, hashes);
    if (round % 2 == 0) db.checkpoint();
    live_hash = state_hash(db.runtime());
  }
  DurableRuntime db(dir.path(), fast_options(4096));
  EXPECT_EQ(state_hash(db.runtime()), live_hash);
  EXPECT_EQ(files_named(dir.path(), "checkpoint-").size(), 1u);
}

// The node functions of these tests, in a registry of their own (no process-wide state between tests).
DurableOptions with_functions(DurableOptions o) {
  static const std::shared_ptr<FunctionRegistry> registry = [] {
    auto r = std::make_shared<FunctionRegistry>();
    r->register_map("durable_test.sum", [](MapContext& c) {
      std::int64_t sum = 0;
      for (std::size_t i = 0; i < c.input_count(); ++i) sum += c.input_as<std::int64_t>(i);
      c.output_as<std::int64_t>() = sum;
    });
    return r;
  }();
  o.registry = registry;
  return o;
}

TEST(DurableRuntime, GraphTopologyIsRestoredAndDerivedPagesRecomputed) {
  TempDir dir;
  PageId a, b, sum, copy, lambda_out;
  {
    DurableRuntime db(dir.path(), with_functions(fast_options()));
    Runtime& rt = db.runtime();
    a = rt.create_page(8);
    b = rt.create_page(8);
    sum = rt.create_page(8);
    copy = rt.create_page(16);
    lambda_out = rt.create_page(8);
    db.propagator().derive_map(sum, {a, b}, "durable_test.sum");
    db.propagator().derive_passthrough(copy, sum, ByteRemap{0, 8, 8});
    db.propagator().derive_map(lambda_out, {a}, [](MapContext& c) { c.output_as<std::int64_t>() = 1; });
    db.propagator().add_dependency(b, lambda_out, EdgeKind::Control);
    commit_i64(rt, a, 20);
    db.checkpoint();
    commit_i64(rt, b, 22);  // after the checkpoint: only in the log
    EXPECT_EQ(rt.read_value<std::int64_t>(sum, 0), 42);
  }
  DurableRuntime db(dir.path(), with_functions(fast_options()));
  Runtime& rt = db.runtime();
  EXPECT_EQ(db.recovery().nodes_restored, 2u);
  ASSERT_EQ(db.recovery().unbound_nodes.size(), 1u);
  EXPECT_EQ(db.recovery().unbound_nodes[0], lambda_out);
  EXPECT_EQ(rt.read_value<std::int64_t>(sum, 0), 42);
  EXPECT_EQ(rt.read_value<std::int64_t>(copy, 8), 42);
  std::vector<NodeDescription> nodes = db.propagator().nodes();
  ASSERT_EQ(nodes.size(), 2u);
  EXPECT_EQ(nodes[0].function, "durable_test.sum");
  EXPECT_EQ(nodes[1].kind, NodeKind::Passthrough);
  EXPECT_EQ(nodes[1].remap.output_offset, 8u);
  ASSERT_EQ(db.propagator().ordering_edges().size(), 1u);
  // The restored graph keeps propagating.
  commit_i64(rt, a, 100);
  EXPECT_EQ(rt.read_value<std::int64_t>(sum, 0), 122);
  EXPECT_EQ(rt.read_value<std::int64_t>(copy, 8), 122);
}

TEST(DurableRuntime, CheckpointNamingAnUnregisteredFunctionFailsWithItsName) {
  TempDir dir;
  serialize::CheckpointState state;
  state.lsn = 5;
  state.next_sequence = 3;
  state.pages.push_back({PageId::make(0, 1), 1, Location::Host, 0, 0});
  state.pages.push_back({PageId::make(0, 2), 1, Location::Host, 0, 0});
  NodeDescription n;
  n.output = PageId::make(0, 2);
  n.inputs = {PageId::make(0, 1)};
  n.function = "durable_test.no_such_function";
  state.nodes.push_back(n);
  serialize::write_checkpoint(dir.path(), state, 3);
  try {
    DurableRuntime db(dir.path(), fast_options());
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::NotFound);
    EXPECT_NE(std::string(e.what()).find("durable_test.no_such_function"), std::string::npos) << e.what();
  }
}

TEST(DurableRuntime, ConcurrentCommitsDuringCheckpointsLoseNothing) {
  TempDir dir;
  constexpr int kAccounts = 16, kThreads = 3;
  std::vector<PageId> accounts;
  std::int64_t total = 0;
  std::uint64_t live_hash = 0;
  {
    DurableRuntime db(dir.path(), fast_options(8192));
    Runtime& rt = db.runtime();
    for (int i = 0; i < kAccounts; ++i) {
      accounts.push_back(rt.create_page(8));
      commit_i64(rt, accounts.back(), 1000);
    }
    std::atomic<bool> stop{false};
    std::vector<std::thread> threads;
    for (int t = 0; t < kThreads; ++t) {
      threads.emplace_back([&, t] {
        std::mt19937_64 rng(static_cast<std::uint64_t>(t));
        while (!stop.load()) {
          PageId from = accounts[rng() % kAccounts], to = accounts[rng() % kAccounts];
          if (from == to) continue;
          testing::try_transfer(rt, from, to, 1);  // a Conflict: the next transfer is drawn anew
        }
      });
    }
    for (int i = 0; i < 5; ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
      db.checkpoint();
    }
    stop = true;
    for (auto& t : threads) t.join();
    live_hash = state_hash(rt);
    for (PageId id : accounts) total += rt.read_value<std::int64_t>(id, 0);
  }
  EXPECT_EQ(total, kAccounts * 1000);
  DurableRuntime db(dir.path(), fast_options(8192));
  EXPECT_EQ(state_hash(db.runtime()), live_hash);
}

TEST(DurableRuntime, CheckpointRaisesACheckpointEvent) {
  TempDir dir;
  DurableRuntime db(dir.path(), fast_options());
  std::vector<Event> seen;
  db.propagator().subscribe(EventMask{EventKind::Checkpoint}, [&](const Event& e) { seen.push_back(e); });
  commit_i64(db.runtime(), db.runtime().create_page(8), 1);
  const CheckpointInfo info = db.checkpoint();
  ASSERT_EQ(seen.size(), 1u);
  EXPECT_EQ(seen[0].kind, EventKind::Checkpoint);
  EXPECT_EQ(seen[0].lsn, info.lsn);
  EXPECT_EQ(seen[0].message, info.file.filename().string());
  EXPECT_GT(seen[0].duration_ns, 0u);
}

TEST(DurableRuntime, ExternalPagesAreNotCheckpointed) {
  TempDir dir;
  static const std::array<std::byte, 4> weights{std::byte{1}, std::byte{2}, std::byte{3}, std::byte{4}};
  PageId own;
  {
    DurableRuntime db(dir.path(), fast_options());
    PageId external = db.runtime().create_external_page(weights);
    own = db.runtime().create_page(8);
    commit_i64(db.runtime(), own, 5);
    const CheckpointInfo info = db.checkpoint();
    EXPECT_EQ(info.pages, 1u);
    EXPECT_TRUE(db.runtime().contains(external));
  }
  DurableRuntime db(dir.path(), fast_options());
  EXPECT_EQ(db.runtime().page_count(), 1u);
  EXPECT_EQ(db.runtime().read_value<std::int64_t>(own, 0), 5);
  // The external page's id stays used: a page created now gets a new one.
  EXPECT_GT(db.runtime().create_page(8).sequence(), own.sequence());
}

TEST(DurableRuntime, RefusesAForeignDirectoryAndASecondOpener) {
  TempDir dir;
  std::ofstream(dir.path() / "notes.txt") << "not ours";
  EXPECT_EQ(error_code_of([&] { DurableRuntime db(dir.path()); }), ErrorCode::InvalidArgument);
  EXPECT_FALSE(fs::exists(dir.path() / "LOCK"));

  DurableRuntime first(dir.path() / "db", fast_options());
  EXPECT_EQ(error_code_of([&] { DurableRuntime second(dir.path() / "db", fast_options()); }),
            ErrorCode::InvalidArgument);
}

TEST(DurableRuntime, LeftoverTemporaryCheckpointIsIgnoredAndRemoved) {
  TempDir dir;
  std::uint64_t live_hash = 0;
  {
    DurableRuntime db(dir.path(), fast_options());
    commit_i64(db.runtime(), db.runtime().create_page(8), 7);
    live_hash = state_hash(db.runtime());
  }
  // What a crash in the middle of writing a checkpoint leaves.
  std::ofstream(dir.path() / (serialize::checkpoint_file_name(99) + ".tmp")) << "half a checkpoint";
  DurableRuntime db(dir.path(), fast_options());
  EXPECT_EQ(state_hash(db.runtime()), live_hash);
  EXPECT_TRUE(files_named(dir.path(), "checkpoint-").empty());
}

TEST(DurableRuntime, OpeningFinishesTheCleanupOfAnInterruptedCheckpoint) {
  TempDir dir;
  std::uint64_t live_hash = 0;
  const fs::path stash = dir.path() / "stash";
  fs::create_directories(stash);
  {
    DurableRuntime db(dir.path() / "db", fast_options(1024));
    PageId p = db.runtime().create_page(64);
    for (int i = 0; i < 40; ++i) commit_i64(db.runtime(), p, i);
    // What a crash right after the next checkpoint's rename leaves: this checkpoint and these segments.
    const CheckpointInfo old = db.checkpoint();
    for (int i = 0; i < 40; ++i) commit_i64(db.runtime(), p, 100 + i);
    fs::copy(old.file, stash);
    for (const fs::path& seg : files_named(dir.path() / "db", "log-")) fs::copy(seg, stash);
    db.checkpoint();
    for (int i = 0; i < 5; ++i) commit_i64(db.runtime(), p, 200 + i);
    live_hash = state_hash(db.runtime());
  }
  for (const auto& e : fs::directory_iterator(stash)) {
    fs::copy(e.path(), dir.path() / "db", fs::copy_options::skip_existing);
  }
  ASSERT_EQ(files_named(dir.path() / "db", "checkpoint-").size(), 2u);
  const std::size_t segments_before = files_named(dir.path() / "db", "log-").size();
  DurableRuntime db(dir.path() / "db", fast_options(1024));
  EXPECT_EQ(state_hash(db.runtime()), live_hash);
  EXPECT_EQ(files_named(dir.path() / "db", "checkpoint-").size(), 1u);
  EXPECT_LT(files_named(dir.path() / "db", "log-").size(), segments_before);
  EXPECT_EQ(db.recovery().records_replayed, 5u);
}

TEST(DurableRuntime, EveryCommitPolicyRecoversEveryReturnedCommit) {
  TempDir dir;
  std::uint64_t live_hash = 0;
  {
    DurableOptions o;
    o.sync = SyncPolicy::EveryCommit;
    DurableRuntime db(dir.path(), o);
    PageId p = db.runtime().create_page(8);
    for (int i = 0; i < 20; ++i) commit_i64(db.runtime(), p, i);
    live_hash = state_hash(db.runtime());
  }
  EXPECT_EQ(state_hash(*load_state(dir.path())), live_hash);
}

// ------------------------------------------------------------------------------------------- replay and history

TEST(Replay, StateAtEveryLsnEqualsTheLiveStateAtThatLsn) {
  TempDir dir;
  std::map<std::uint64_t, std::uint64_t> hashes;
  {
    DurableRuntime db(dir.path(), fast_options(4096));
    Workload(3).run(db.runtime(), 250, hashes);
  }
  for (const auto& [lsn, hash] : hashes) {
    std::uint64_t reached = 0;
    std::unique_ptr<Runtime> rt = load_state(dir.path(), ReplayTarget::lsn(lsn), &reached);
    ASSERT_EQ(state_hash(*rt), hash) << "at LSN " << lsn;
    EXPECT_EQ(reached, lsn);
  }
  EXPECT_EQ(error_code_of([&] { load_state(dir.path(), ReplayTarget::lsn(hashes.rbegin()->first + 1)); }),
            ErrorCode::NotFound);
}

TEST(Replay, TargetsBeforeTheCheckpointAreRefusedAndLaterOnesWork) {
  TempDir dir;
  std::map<std::uint64_t, std::uint64_t> hashes;
  std::uint64_t checkpoint_lsn = 0;
  {
    DurableRuntime db(dir.path(), fast_options(4096));
    Workload work(4);
    work.run(db.runtime(), 100, hashes);
    checkpoint_lsn = db.checkpoint().lsn;
    work.run(db.runtime(), 100, hashes);
  }
  EXPECT_EQ(error_code_of([&] { load_state(dir.path(), ReplayTarget::lsn(checkpoint_lsn - 1)); }), ErrorCode::NotFound);
  for (auto it = hashes.lower_bound(checkpoint_lsn); it != hashes.end(); ++it) {
    ASSERT_EQ(state_hash(*load_state(dir.path(), ReplayTarget::lsn(it->first))), it->second) << it->first;
  }
}

TEST(Replay, TimeAndPageEpochTargetsResolveToTheRightCommit) {
  TempDir dir;
  PageId page;
  std::uint64_t hash_at_epoch3 = 0, lsn_of_epoch3 = 0;
  {
    DurableRuntime db(dir.path(), fast_options());
    page = db.runtime().create_page(8);
    for (int i = 1; i <= 6; ++i) {
      commit_i64(db.runtime(), page, i);
      if (i == 3) {
        hash_at_epoch3 = state_hash(db.runtime());
        lsn_of_epoch3 = db.runtime().last_lsn();
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(2));
    }
  }
  std::uint64_t reached = 0;
  auto rt = load_state(dir.path(), ReplayTarget::page_epoch(page, 3), &reached);
  EXPECT_EQ(reached, lsn_of_epoch3);
  EXPECT_EQ(state_hash(*rt), hash_at_epoch3);
  EXPECT_EQ(rt->read_value<std::int64_t>(page, 0), 3);

  std::vector<PageChange> history = page_history(dir.path(), page);
  ASSERT_EQ(history.size(), 7u);
  EXPECT_EQ(history[0].kind, PageChange::Kind::Created);
  const std::uint64_t t3 = history[3].timestamp_ns;
  auto by_time = load_state(dir.path(), ReplayTarget::time(t3), &reached);
  EXPECT_EQ(reached, history[3].lsn);
  EXPECT_EQ(by_time->read_value<std::int64_t>(page, 0), 3);
  EXPECT_EQ(error_code_of([&] { load_state(dir.path(), ReplayTarget::page_epoch(page, 99)); }), ErrorCode::NotFound);
}

TEST(Replay, PageHistoryListsExactlyThePagesChanges) {
  TempDir dir;
  PageId a, b;
  {
    DurableRuntime db(dir.path(), fast_options());
    Runtime& rt = db.runtime();
    a = rt.create_page(8);
    b = rt.create_page(8);
    auto txn = rt.begin();
    txn.set_intent("both");
    txn.write_value<std::int64_t>(a, 0, 1);
    txn.write_value<std::int64_t>(b, 0, 2);
    txn.commit();
    commit_i64(rt, b, 3);
    rt.resize_page(a, 16);
    rt.delete_page(a);
  }
  std::vector<PageChange> h = page_history(dir.path(), a);
  ASSERT_EQ(h.size(), 4u);
  EXPECT_EQ(h[0].kind, PageChange::Kind::Created);
  EXPECT_EQ(h[0].size, 8u);
  EXPECT_EQ(h[1].kind, PageChange::Kind::Changed);
  EXPECT_EQ(h[1].epoch, 1u);
  EXPECT_EQ(h[1].delta.intent, "both");
  EXPECT_EQ(h[2].size, 16u);
  EXPECT_EQ(h[2].epoch, 2u);
  EXPECT_EQ(h[3].kind, PageChange::Kind::Deleted);
  for (std::size_t i = 1; i < h.size(); ++i) EXPECT_GT(h[i].lsn, h[i - 1].lsn);
  EXPECT_EQ(page_history(dir.path(), b).size(), 3u);
}

TEST(Replay, ReplayToWritesADirectoryThatOpensAtTheTarget) {
  TempDir dir;
  std::map<std::uint64_t, std::uint64_t> hashes;
  {
    DurableRuntime db(dir.path() / "src", fast_options());
    Workload(5).run(db.runtime(), 120, hashes);
  }
  auto mid = std::next(hashes.begin(), 60);
  CheckpointInfo info = replay_to(dir.path() / "src", ReplayTarget::lsn(mid->first), dir.path() / "out");
  EXPECT_EQ(info.lsn, mid->first);
  DurableRuntime db(dir.path() / "out", fast_options());
  EXPECT_EQ(state_hash(db.runtime()), mid->second);
  EXPECT_EQ(db.recovery().checkpoint_lsn, mid->first);
  // The output must be new or empty.
  EXPECT_EQ(error_code_of([&] { replay_to(dir.path() / "src", ReplayTarget::end(), dir.path() / "out"); }),
            ErrorCode::InvalidArgument);
}

TEST(Offline, MissingAndForeignDirectoriesAreNotFound) {
  TempDir dir;
  EXPECT_EQ(error_code_of([&] { inspect(dir.path() / "missing"); }), ErrorCode::NotFound);
  EXPECT_EQ(error_code_of([&] { load_state(dir.path()); }), ErrorCode::NotFound);
  EXPECT_EQ(error_code_of([&] { verify(dir.path() / "missing"); }), ErrorCode::NotFound);
  VerifyReport empty = verify(dir.path());
  EXPECT_FALSE(empty.ok);
}

TEST(Offline, InspectCountsWhatWasWritten) {
  TempDir dir;
  {
    DurableRuntime db(dir.path(), fast_options(1024));
    PageId p = db.runtime().create_page(64);
    for (int i = 0; i < 50; ++i) commit_i64(db.runtime(), p, i + 1);
    db.runtime().delete_page(p);
  }
  DirectorySummary s = inspect(dir.path());
  EXPECT_EQ(s.records, 52u);
  EXPECT_EQ(s.deltas, 50u);
  EXPECT_EQ(s.pages_created, 1u);
  EXPECT_EQ(s.pages_deleted, 1u);
  EXPECT_EQ(s.first_lsn, 1u);
  EXPECT_EQ(s.last_lsn, 52u);
  EXPECT_GT(s.segments.size(), 1u);
  std::uint64_t records = 0;
  for (const SegmentSummary& seg : s.segments) records += seg.records;
  EXPECT_EQ(records, 52u);
  EXPECT_TRUE(s.checkpoints.empty());
}

// Flips one bit in the middle of the body of the record at `index` of the first segment.
void damage_record(const fs::path& segment, std::size_t index, std::uint64_t* offset_out) {
  std::string data = testing::read_file(segment);
  std::uint64_t pos = serialize::kSegmentHeaderBytes;
  for (std::size_t i = 0; i < index; ++i) pos = serialize::frame_at(data, pos).end;
  serialize::FramedRecord r = serialize::frame_at(data, pos);
  data[pos + serialize::kRecordHeaderBytes + r.body.size() / 2] ^= 0x10;
  std::ofstream(segment, std::ios::binary | std::ios::trunc) << data;
  *offset_out = pos;
}

TEST(Offline, VerifyReportsABitFlipWithItsOffsetAndRepairDropsOnlyThatRecord) {
  TempDir dir;
  {
    DurableRuntime db(dir.path(), fast_options());
    // Each page is created and written once, so dropping one write leaves every later record applicable.
    for (int i = 0; i < 10; ++i) commit_i64(db.runtime(), db.runtime().create_page(8), 100 + i);
  }
  VerifyReport clean = verify(dir.path());
  EXPECT_TRUE(clean.ok);
  EXPECT_EQ(clean.records_checked, 20u);

  const fs::path segment = files_named(dir.path(), "log-").front();
  std::uint64_t offset = 0;
  damage_record(segment, 7, &offset);  // the write of the 4th page
  VerifyReport bad = verify(dir.path());
  EXPECT_FALSE(bad.ok);
  ASSERT_EQ(bad.problems.size(), 1u);
  EXPECT_EQ(bad.problems[0].offset, offset);
  EXPECT_EQ(bad.problems[0].file, segment);
  EXPECT_EQ(error_code_of([&] { DurableRuntime db(dir.path(), fast_options()); }), ErrorCode::Corruption);

  const std::string original = testing::read_file(segment);
  RepairReport repaired = repair(dir.path());
  EXPECT_EQ(repaired.records_dropped, 1u);
  ASSERT_FALSE(repaired.set_aside.empty());
  // What repair drops is kept: the original segment and a report, in the side folder.
  EXPECT_EQ(testing::read_file(repaired.set_aside / segment.filename()), original);
  EXPECT_NE(testing::read_file(repaired.set_aside / "REPORT.txt").find("offset " + std::to_string(offset)),
            std::string::npos);
  EXPECT_TRUE(verify(dir.path()).ok);
  DurableRuntime db(dir.path(), fast_options());
  EXPECT_EQ(db.recovery().records_replayed, 19u);
  EXPECT_EQ(db.runtime().read_value<std::int64_t>(PageId::make(0, 4), 0), 0);  // the dropped write
  EXPECT_EQ(db.runtime().read_value<std::int64_t>(PageId::make(0, 5), 0), 104);
}

TEST(Offline, VerifyTreatsATornTailAsCleanAndReportsADamagedCheckpoint) {
  TempDir dir;
  CheckpointInfo info;
  {
    DurableRuntime db(dir.path(), fast_options());
    PageId p = db.runtime().create_page(8);
    commit_i64(db.runtime(), p, 1);
    info = db.checkpoint();
    commit_i64(db.runtime(), p, 2);
  }
  const fs::path segment = files_named(dir.path(), "log-").back();
  fs::resize_file(segment, fs::file_size(segment) - 3);
  VerifyReport torn = verify(dir.path());
  EXPECT_TRUE(torn.ok);
  EXPECT_GT(torn.torn_tail_bytes, 0u);

  std::string ck = testing::read_file(info.file);
  ck[ck.size() / 2] ^= 1;
  std::ofstream(info.file, std::ios::binary | std::ios::trunc) << ck;
  VerifyReport bad = verify(dir.path());
  EXPECT_FALSE(bad.ok);
  ASSERT_FALSE(bad.problems.empty());
  EXPECT_EQ(bad.problems[0].file, info.file);
  EXPECT_EQ(error_code_of([&] { DurableRuntime db(dir.path(), fast_options()); }), ErrorCode::Corruption);
}

}  // namespace
}  // namespace mmsb
