// Commits of one page under SyncPolicy::EveryCommit through the real log: they share group syncs (a later commit
// builds on an earlier one that is still syncing), readers meanwhile see the published state, and injected write
// failures fail the commits built on the failed ones too, so the log stays a prefix and recovery gives exactly the
// state the application saw.
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdint>
#include <iostream>
#include <memory>
#include <thread>
#include <vector>

#include "mmsb/durable.hpp"
#include "serialize/log_writer.hpp"
#include "support/fault_file_system.hpp"
#include "support/temp_dir.hpp"
#include "support/test_support.hpp"

namespace mmsb {
namespace {

using testing::FaultFileSystem;
using testing::TempDir;

constexpr int kWriters = 8;

// Each writer owns one 8-byte slot of one shared page and commits increasing values to it.
void hammer_one_page(Runtime& rt, PageId page, int commits_each, std::vector<std::int64_t>* last_ok,
                     std::atomic<int>* failures) {
  std::atomic<int> ready{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kWriters; ++t) {
    threads.emplace_back([&, t] {
      ready.fetch_add(1);
      while (ready.load() < kWriters) std::this_thread::yield();
      for (int i = 1; i <= commits_each; ++i) {
        auto txn = rt.begin();
        txn.write_value<std::int64_t>(page, 8 * static_cast<std::uint64_t>(t), i);
        try {
          txn.commit();
          if (last_ok) (*last_ok)[static_cast<std::size_t>(t)] = i;
        } catch (const Error& e) {
          if (!failures) throw;
          EXPECT_EQ(e.code(), ErrorCode::IoError) << e.what();
          failures->fetch_add(1);
        }
      }
    });
  }
  for (auto& th : threads) th.join();
}

TEST(SamePageSync, CommitsOfOnePageShareGroupSyncs) {
  TempDir dir;
  Runtime rt;
  auto log = std::make_shared<serialize::LogWriter>(dir.path());  // EveryCommit
  rt.set_commit_sink(log);
  PageId page = rt.create_page(8 * kWriters);
  const serialize::LogStats before = log->stats();
  constexpr int kCommitsEach = 40;
  hammer_one_page(rt, page, kCommitsEach, nullptr, nullptr);
  const serialize::LogStats after = log->stats();
  rt.set_commit_sink(nullptr);
  const double per_sync = static_cast<double>(after.records - before.records) /
                          static_cast<double>(std::max<std::uint64_t>(after.syncs - before.syncs, 1));
  std::cout << "[          ] " << per_sync << " commits of one page per fdatasync\n";
  EXPECT_EQ(after.records - before.records, std::uint64_t{kWriters * kCommitsEach});
  EXPECT_GE(per_sync, 2.0) << "commits of one page did not share syncs";
  for (int t = 0; t < kWriters; ++t)
    EXPECT_EQ(rt.read_value<std::int64_t>(page, 8 * static_cast<std::uint64_t>(t)), kCommitsEach);
  EXPECT_EQ(rt.info(page).epoch, std::uint64_t{kWriters * kCommitsEach});
}

TEST(SamePageSync, FailedAppendsFailTheCommitsBuiltOnThemAndRecoveryMatches) {
  TempDir dir;
  constexpr int kCommitsEach = 40;
  std::uint64_t live_hash = 0;
  std::atomic<int> failures{0};
  {
    auto fsys = std::make_shared<FaultFileSystem>();
    DurableOptions options;
    options.sync = SyncPolicy::EveryCommit;
    options.file_system = fsys;
    DurableRuntime db(dir.path(), options);
    Runtime& rt = db.runtime();
    PageId page = rt.create_page(8 * kWriters);
    std::vector<std::int64_t> last_ok(kWriters, 0);
    fsys->fail({FaultFileSystem::Op::Append, 15, 4, ENOSPC, true, "log-"});
    hammer_one_page(rt, page, kCommitsEach, &last_ok, &failures);
    fsys->clear_fault();
    for (int t = 0; t < kWriters; ++t) {
      EXPECT_EQ(rt.read_value<std::int64_t>(page, 8 * static_cast<std::uint64_t>(t)),
                last_ok[static_cast<std::size_t>(t)])
          << "writer " << t << ": the page does not hold its last successful commit";
    }
    live_hash = state_hash(rt);
  }
  EXPECT_GE(failures.load(), 4);
  EXPECT_TRUE(verify(dir.path()).ok);
  DurableRuntime db(dir.path());
  EXPECT_EQ(db.recovery().truncated_bytes, 0u);
  EXPECT_EQ(state_hash(db.runtime()), live_hash) << "recovery differs from what the application saw";
}

}  // namespace
}  // namespace mmsb
