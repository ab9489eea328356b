// I/O failures injected through the file interface (support/fault_file_system.hpp): a failed commit leaves no
// trace, a failed sync makes the writer refuse further commits, a failed checkpoint leaves the previous one and
// the log intact — and in every case the directory recovers to a state the application saw.
#include <gtest/gtest.h>

#include <atomic>
#include <cerrno>
#include <filesystem>
#include <fstream>
#include <map>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "mmsb/durable.hpp"
#include "serialize/log.hpp"
#include "support/fault_file_system.hpp"
#include "support/temp_dir.hpp"
#include "support/test_support.hpp"

namespace mmsb {
namespace {

namespace fs = std::filesystem;
using testing::commit_i64;
using testing::error_code_of;
using testing::FaultFileSystem;
using testing::TempDir;
using Op = FaultFileSystem::Op;

// Arms a fault for the scope, whatever happens.
struct Faults {
  Faults(FaultFileSystem& fsys, const FaultFileSystem::Fault& fault) : fsys_(fsys) { fsys_.fail(fault); }
  ~Faults() { fsys_.clear_fault(); }
  FaultFileSystem& fsys_;
};

std::size_t count_files(const fs::path& dir, const std::string& needle) {
  std::size_t n = 0;
  for (const auto& e : fs::directory_iterator(dir)) n += e.path().filename().string().find(needle) != std::string::npos;
  return n;
}

DurableOptions every_commit(std::shared_ptr<FileSystem> fsys = nullptr) {
  DurableOptions o;
  o.sync = SyncPolicy::EveryCommit;
  o.file_system = std::move(fsys);
  return o;
}

TEST(Faults, FailedAppendLeavesNoTraceAndTheLogGoesOn) {
  TempDir dir;
  auto fsys = std::make_shared<FaultFileSystem>();
  std::uint64_t hash_before = 0, hash_after = 0;
  {
    DurableRuntime db(dir.path(), every_commit(fsys));
    Runtime& rt = db.runtime();
    PageId p = rt.create_page(8);
    commit_i64(rt, p, 1);
    hash_before = state_hash(rt);
    for (bool partial : {false, true}) {
      Faults f(*fsys, {Op::Append, 0, 1, ENOSPC, partial, "log-"});
      EXPECT_EQ(error_code_of([&] { commit_i64(rt, p, 2); }), ErrorCode::IoError);
      EXPECT_EQ(rt.read_value<std::int64_t>(p, 0), 1) << "a failed commit changed the page";
      EXPECT_EQ(state_hash(rt), hash_before);
    }
    commit_i64(rt, p, 3);  // the half-written record was removed: the writer carries on
    hash_after = state_hash(rt);
  }
  EXPECT_TRUE(verify(dir.path()).ok);
  DurableRuntime db(dir.path(), every_commit());
  EXPECT_EQ(state_hash(db.runtime()), hash_after);
  EXPECT_EQ(db.recovery().truncated_bytes, 0u);
}

// Group commit writes a whole batch of records with one write(): when it fails, every commit of the batch fails
// without a trace, the commits of other batches are unaffected, and the writer goes on.
TEST(Faults, FailedBatchAppendFailsOnlyItsCommits) {
  TempDir dir;
  constexpr int kThreads = 8;
  constexpr int kCommitsPerThread = 40;
  std::uint64_t live_hash = 0;
  std::atomic<int> failed{0};
  auto fsys = std::make_shared<FaultFileSystem>();
  {
    DurableRuntime db(dir.path(), every_commit(fsys));
    Runtime& rt = db.runtime();
    std::vector<PageId> pages;
    for (int t = 0; t < kThreads; ++t) pages.push_back(rt.create_page(8));
    Faults f(*fsys, {Op::Append, 10, 3, ENOSPC, true, "log-"});
    std::vector<std::thread> threads;
    std::vector<std::int64_t> last_ok(kThreads, 0);
    for (int t = 0; t < kThreads; ++t) {
      threads.emplace_back([&, t] {
        for (int i = 1; i <= kCommitsPerThread; ++i) {
          const std::int64_t value = std::int64_t{t} * 1000 + i;
          try {
            commit_i64(rt, pages[static_cast<std::size_t>(t)], value);
            last_ok[static_cast<std::size_t>(t)] = value;
          } catch (const Error& e) {
            EXPECT_EQ(e.code(), ErrorCode::IoError) << e.what();
            failed.fetch_add(1);
          }
        }
      });
    }
    for (auto& th : threads) th.join();
    for (int t = 0; t < kThreads; ++t) {
      EXPECT_EQ(rt.read_value<std::int64_t>(pages[static_cast<std::size_t>(t)], 0),
                last_ok[static_cast<std::size_t>(t)])
          << "thread " << t << ": the page does not hold its last successful commit";
    }
    live_hash = state_hash(rt);
  }
  EXPECT_GE(failed.load(), 3) << "each injected failure fails at least the commit that appended";
  EXPECT_LT(failed.load(), kThreads * kCommitsPerThread / 2);
  EXPECT_TRUE(verify(dir.path()).ok);
  DurableRuntime db(dir.path(), every_commit());
  EXPECT_EQ(db.recovery().truncated_bytes, 0u);
  EXPECT_EQ(state_hash(db.runtime()), live_hash) << "recovery differs from what the application saw";
}

TEST(Faults, FailedSyncFailsTheCommitAndTheWriterRefusesMore) {
  TempDir dir;
  auto fsys = std::make_shared<FaultFileSystem>();
  std::uint64_t hash_before = 0;
  {
    DurableRuntime db(dir.path(), every_commit(fsys));
    Runtime& rt = db.runtime();
    PageId p = rt.create_page(8);
    commit_i64(rt, p, 1);
    hash_before = state_hash(rt);
    {
      Faults f(*fsys, {Op::Sync, 0, 1, EIO, false, "log-"});
      EXPECT_EQ(error_code_of([&] { commit_i64(rt, p, 2); }), ErrorCode::IoError);
    }
    EXPECT_EQ(rt.read_value<std::int64_t>(p, 0), 1);
    // After a failed fdatasync the file's state is unknown: the writer refuses until the directory is reopened.
    try {
      commit_i64(rt, p, 3);
      FAIL() << "a commit succeeded on a failed writer";
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), ErrorCode::IoError);
      EXPECT_NE(std::string(e.what()).find("reopen"), std::string::npos) << e.what();
    }
  }
  DurableRuntime db(dir.path(), every_commit());
  EXPECT_EQ(state_hash(db.runtime()), hash_before);
  commit_i64(db.runtime(), PageId::make(0, 1), 4);  // reopened: commits work again
}

TEST(Faults, FailedCheckpointKeepsThePreviousCheckpointAndTheLog) {
  TempDir dir;
  auto fsys = std::make_shared<FaultFileSystem>();
  std::uint64_t live_hash = 0;
  CheckpointInfo first;
  {
    DurableOptions o;
    o.sync = SyncPolicy::None;
    o.segment_bytes = 512;
    o.file_system = fsys;
    DurableRuntime db(dir.path(), o);
    Runtime& rt = db.runtime();
    PageId p = rt.create_page(64);
    for (int i = 0; i < 20; ++i) commit_i64(rt, p, i);
    first = db.checkpoint();
    for (int i = 0; i < 20; ++i) commit_i64(rt, p, 100 + i);
    const std::size_t segments = count_files(dir.path(), "log-");
    for (Op op : {Op::Append, Op::Sync}) {
      // A new value (an unchanged one would commit nothing), so the checkpoint starts with a log roll, whatever
      // the previous attempt did.
      commit_i64(rt, p, 50 + static_cast<int>(op));
      // Fail the checkpoint file's first write, or its sync.
      Faults f(*fsys, {op, 0, 1, ENOSPC, false, "checkpoint-"});
      try {
        db.checkpoint();
        ADD_FAILURE() << "the checkpoint did not fail";
      } catch (const Error& e) {
        EXPECT_EQ(e.code(), ErrorCode::IoError);
        EXPECT_NE(std::string(e.what()).find("checkpoint-"), std::string::npos) << "failed elsewhere: " << e.what();
      }
      EXPECT_TRUE(fs::exists(first.file));
      EXPECT_EQ(count_files(dir.path(), ".tmp"), 0u) << "a failed checkpoint left its temporary file";
      EXPECT_GE(count_files(dir.path(), "log-"), segments) << "segments were deleted for a failed checkpoint";
    }
    commit_i64(rt, p, 7);  // commits are unaffected by a failed checkpoint
    EXPECT_EQ(count_files(dir.path(), "checkpoint-"), 1u);
    live_hash = state_hash(rt);
  }
  DurableRuntime db(dir.path(), DurableOptions{});
  EXPECT_EQ(db.recovery().checkpoint_lsn, first.lsn);
  EXPECT_EQ(state_hash(db.runtime()), live_hash);
}

}  // namespace
}  // namespace mmsb

namespace mmsb {
namespace {

// Threads committing to pages of their own until `stop`; each remembers its last acknowledged value.
struct Committers {
  static constexpr int kThreads = 6;
  std::vector<PageId> pages;
  std::vector<std::int64_t> acknowledged = std::vector<std::int64_t>(kThreads, 0);
  std::atomic<int> failed{0}, succeeded{0};
  std::vector<std::string> errors;  // one message per thread (the last)
  std::mutex errors_mutex;

  explicit Committers(Runtime& rt) {
    for (int t = 0; t < kThreads; ++t) pages.push_back(rt.create_page(8));
  }
  // Each thread makes `count` commits of increasing values starting at `from`.
  void run(Runtime& rt, std::int64_t from, int count) {
    std::vector<std::thread> threads;
    for (int t = 0; t < kThreads; ++t) {
      threads.emplace_back([&, t] {
        for (int i = 0; i < count; ++i) {
          const std::int64_t value = from + std::int64_t{t} * 100000 + i;
          try {
            commit_i64(rt, pages[static_cast<std::size_t>(t)], value);
            acknowledged[static_cast<std::size_t>(t)] = value;
            succeeded.fetch_add(1);
          } catch (const Error& e) {
            EXPECT_EQ(e.code(), ErrorCode::IoError) << e.what();
            failed.fetch_add(1);
            std::lock_guard lock(errors_mutex);
            errors.push_back(e.what());
          }
        }
      });
    }
    for (auto& th : threads) th.join();
  }
  // No failed commit is visible: each page holds its thread's last acknowledged value.
  void expect_only_acknowledged(const Runtime& rt) const {
    for (int t = 0; t < kThreads; ++t) {
      EXPECT_EQ(rt.read_value<std::int64_t>(pages[static_cast<std::size_t>(t)], 0),
                acknowledged[static_cast<std::size_t>(t)])
          << "thread " << t;
    }
  }
};

// After a crash of the Committers' run (fsys->crash() called): loses what was not synced the way `loss` says,
// reopens `dir`, and expects each thread's page to hold that thread's last acknowledged value.
void expect_reopens_with_acknowledged(const fs::path& dir, const std::shared_ptr<FaultFileSystem>& fsys,
                                      FaultFileSystem::Loss loss, std::uint64_t seed,
                                      const std::vector<std::int64_t>& acknowledged) {
  std::mt19937_64 rng(seed);
  fsys->lose_unsynced(loss, rng);
  fsys->restart();
  DurableRuntime db(dir, every_commit(fsys));
  for (int t = 0; t < Committers::kThreads; ++t) {
    EXPECT_EQ(db.runtime().read_value<std::int64_t>(PageId::make(0, static_cast<std::uint64_t>(t) + 1), 0),
              acknowledged[static_cast<std::size_t>(t)])
        << "thread " << t;
  }
}

// The disk fills up while commits run in groups: every commit of an affected batch fails with ENOSPC named in its
// error, none of them becomes visible, and once space returns the writer goes on and the directory opens (after a
// crash that loses everything unsynced) with every acknowledged commit.
TEST(Faults, DiskFullDuringGroupCommitFailsOnlyAffectedCommitsAndRecoversEveryAcknowledgedOne) {
  TempDir dir;
  auto fsys = std::make_shared<FaultFileSystem>();
  std::vector<std::int64_t> acknowledged;
  {
    DurableRuntime db(dir.path(), every_commit(fsys));
    Committers c(db.runtime());
    c.run(db.runtime(), 1, 20);
    {
      Faults full(*fsys, {Op::Append, 0, UINT64_MAX, ENOSPC, true, "log-"});
      c.run(db.runtime(), 1000, 10);
      EXPECT_EQ(c.succeeded.load(), Committers::kThreads * 20) << "no commit may succeed while the disk is full";
      EXPECT_EQ(c.failed.load(), Committers::kThreads * 10);
      for (const std::string& e : c.errors) EXPECT_NE(e.find("No space left"), std::string::npos) << e;
      c.expect_only_acknowledged(db.runtime());
    }
    c.run(db.runtime(), 5000, 10);  // space returned: the log goes on
    EXPECT_EQ(c.succeeded.load(), Committers::kThreads * 30);
    c.expect_only_acknowledged(db.runtime());
    acknowledged = c.acknowledged;
    fsys->crash();
  }
  expect_reopens_with_acknowledged(dir.path(), fsys, FaultFileSystem::Loss::Garble, 3, acknowledged);
}

// EIO from fdatasync during group commit: every commit waiting on that sync fails, none is visible, the writer
// refuses more (the file's state is unknown), and reopening — after a crash that drops what was not synced, or
// after the error went away — gives every acknowledged commit and no failed one.
TEST(Faults, EioOnFdatasyncDuringGroupCommitLosesNoAcknowledgedCommit) {
  for (auto loss : {FaultFileSystem::Loss::Drop, FaultFileSystem::Loss::Garble}) {
    TempDir dir;
    auto fsys = std::make_shared<FaultFileSystem>();
    std::vector<std::int64_t> acknowledged;
    {
      DurableRuntime db(dir.path(), every_commit(fsys));
      Committers c(db.runtime());
      c.run(db.runtime(), 1, 10);
      Faults eio(*fsys, {Op::Sync, 3, 1, EIO, false, "log-"});
      c.run(db.runtime(), 1000, 10);
      EXPECT_GT(c.failed.load(), 0);
      bool named = false;
      for (const std::string& e : c.errors) named = named || e.find("Input/output error") != std::string::npos;
      EXPECT_TRUE(named) << "no failed commit names the I/O error";
      c.expect_only_acknowledged(db.runtime());
      acknowledged = c.acknowledged;
      fsys->crash();
    }
    expect_reopens_with_acknowledged(dir.path(), fsys, loss, 4, acknowledged);
  }
}

// A full disk while the log moves to a new segment (its header, the manifest) fails the commit that needed the
// new segment; the directory reopens with every acknowledged commit.
TEST(Faults, DiskFullWhileRollingToANewSegmentKeepsTheLogRecoverable) {
  for (const char* where : {"log-", "MANIFEST"}) {
    SCOPED_TRACE(where);
    TempDir dir;
    auto fsys = std::make_shared<FaultFileSystem>();
    DurableOptions o = every_commit(fsys);
    o.segment_bytes = 200;
    std::uint64_t live = 0;
    {
      DurableRuntime db(dir.path(), o);
      PageId p = db.runtime().create_page(8);
      for (int i = 0; i < 5; ++i) commit_i64(db.runtime(), p, i);
      Faults full(*fsys, {Op::Create, 0, 1, ENOSPC, false, where});
      std::int64_t last_ok = 4;
      for (int i = 5; i < 40; ++i) {
        try {
          commit_i64(db.runtime(), p, i);
          last_ok = i;
        } catch (const Error& e) {
          EXPECT_EQ(e.code(), ErrorCode::IoError) << e.what();
        }
      }
      EXPECT_EQ(db.runtime().read_value<std::int64_t>(p, 0), last_ok);
      live = state_hash(db.runtime());
      fsys->crash();
    }
    std::mt19937_64 rng(5);
    fsys->lose_unsynced(FaultFileSystem::Loss::KeepPrefix, rng);
    fsys->restart();
    DurableRuntime db(dir.path(), o);
    EXPECT_EQ(state_hash(db.runtime()), live);
  }
}

// Every regular file of `dir` (not the side folders) with its bytes.
std::map<std::string, std::string> log_files(const fs::path& dir) {
  std::map<std::string, std::string> files;
  for (const auto& e : fs::directory_iterator(dir)) {
    if (e.is_regular_file() && e.path().filename() != "LOCK") {
      files[e.path().filename().string()] = testing::read_file(e.path());
    }
  }
  return files;
}

// repair() copies what it will drop into a side folder before it changes anything: when that copy cannot be made
// (ENOSPC or EIO on any of its steps), repair fails and the log is byte for byte what it was, damage included.
TEST(Faults, RepairThatCannotWriteItsSideFolderChangesNothing) {
  TempDir dir;
  {
    DurableRuntime db(dir.path(), every_commit());
    for (int i = 0; i < 6; ++i) commit_i64(db.runtime(), db.runtime().create_page(8), 100 + i);
  }
  // Damage the middle of the 4th record's body: corruption, not a torn tail, so the default mode refuses.
  fs::path segment;
  for (const auto& e : fs::directory_iterator(dir.path()))
    if (e.path().filename().string().rfind("log-", 0) == 0) segment = e.path();
  std::string data = testing::read_file(segment);
  std::uint64_t pos = serialize::kSegmentHeaderBytes;
  for (int i = 0; i < 3; ++i) pos = serialize::frame_at(data, pos).end;
  data[pos + serialize::kRecordHeaderBytes + serialize::frame_at(data, pos).body.size() / 2] ^= 0x10;
  std::ofstream(segment, std::ios::binary | std::ios::trunc) << data;
  const std::map<std::string, std::string> before = log_files(dir.path());

  auto fsys = std::make_shared<FaultFileSystem>();
  RepairOptions options;
  options.file_system = fsys;
  const FaultFileSystem::Fault faults[] = {{Op::Create, 0, 1, ENOSPC, false, "aside-"},
                                           {Op::Append, 0, 1, ENOSPC, true, "aside-"},
                                           {Op::Sync, 0, 1, EIO, false, "aside-"},
                                           {Op::Rename, 0, 1, EIO, false, "aside-"}};
  for (const FaultFileSystem::Fault& fault : faults) {
    SCOPED_TRACE("fault on op " + std::to_string(static_cast<int>(fault.op)));
    {
      Faults armed(*fsys, fault);
      EXPECT_EQ(error_code_of([&] { repair(dir.path(), options); }), ErrorCode::IoError);
    }
    EXPECT_EQ(log_files(dir.path()), before) << "repair changed the log although its side folder was not written";
    EXPECT_FALSE(verify(dir.path()).ok);
  }
  const RepairReport repaired = repair(dir.path(), options);  // the disk works again
  EXPECT_EQ(repaired.records_dropped, 1u);
  EXPECT_EQ(testing::read_file(repaired.set_aside / segment.filename()), before.at(segment.filename().string()));
  EXPECT_TRUE(verify(dir.path()).ok);
}

}  // namespace
}  // namespace mmsb
