// I/O failures injected through the file interface (support/fault_file_system.hpp): a failed commit leaves no
// trace, a failed sync makes the writer refuse further commits, a failed checkpoint leaves the previous one and
// the log intact — and in every case the directory recovers to a state the application saw.
#include <gtest/gtest.h>

#include <atomic>
#include <cerrno>
#include <filesystem>
#include <thread>
#include <vector>

#include "mmsb/durable.hpp"
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
      EXPECT_EQ(rt.read_value<std::int64_t>(pages[static_cast<std::size_t>(t)], 0), last_ok[static_cast<std::size_t>(t)])
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
