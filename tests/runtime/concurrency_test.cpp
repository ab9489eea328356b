// Atomic visibility under concurrency: writers move money between accounts in multi-page transactions, readers
// snapshot all accounts at once. A torn commit would show up as a wrong total.
#include <gtest/gtest.h>

#include <atomic>
#include <cstdint>
#include <random>
#include <thread>
#include <vector>

#include "mmsb/mmsb.hpp"

namespace mmsb {
namespace {

constexpr std::int64_t kInitialBalance = 1000;

// Moves a random amount from `from` to `to`: reads both in one ReadView, then commits with expect_epoch on both,
// again until it commits. Counts the commit and the Conflicts retried; any other error fails the test.
void transfer_with_expected_epochs(Runtime& rt, PageId from, PageId to, std::int64_t amount,
                                   std::atomic<std::int64_t>& commits, std::atomic<std::int64_t>& retries) {
  for (;;) {
    PageId pair[] = {from, to};
    std::int64_t a = 0, b = 0;
    std::uint64_t ea = 0, eb = 0;
    {
      ReadView view = rt.read_view(pair);  // consistent pair; its locks drop at the end of this block
      a = view.value<std::int64_t>(from, 0);
      b = view.value<std::int64_t>(to, 0);
      ea = view.info(from).epoch;
      eb = view.info(to).epoch;
    }
    auto txn = rt.begin();
    txn.expect_epoch(from, ea);
    txn.expect_epoch(to, eb);
    txn.write_value<std::int64_t>(from, 0, a - amount);
    txn.write_value<std::int64_t>(to, 0, b + amount);
    try {
      txn.commit();
      commits.fetch_add(1);
      return;
    } catch (const Error& e) {
      ASSERT_EQ(e.code(), ErrorCode::Conflict) << e.what();
      retries.fetch_add(1);
    }
  }
}

TEST(Concurrency, ReadersNeverSeeATornMultiPageCommit) {
  Runtime rt;
  constexpr int kAccounts = 16;
  std::vector<PageId> accounts;
  for (int i = 0; i < kAccounts; ++i) {
    PageId id = rt.create_page(sizeof(std::int64_t));
    auto txn = rt.begin();
    txn.write_value<std::int64_t>(id, 0, kInitialBalance);
    txn.commit();
    accounts.push_back(id);
  }
  const std::int64_t total = kInitialBalance * kAccounts;
  std::atomic<bool> stop{false};
  std::atomic<std::int64_t> commits{0}, retries{0}, snapshots{0}, torn{0};

  // Writers start once both readers are reading, so snapshots overlap the commits even on a loaded machine (a
  // reader scheduled only after the writers finished would test nothing).
  std::atomic<int> readers_started{0};
  auto writer = [&](unsigned seed) {
    while (readers_started.load() < 2) std::this_thread::yield();
    std::mt19937 rng(seed);
    for (int i = 0; i < 3000; ++i) {
      PageId from = accounts[rng() % kAccounts], to = accounts[rng() % kAccounts];
      if (from == to) continue;
      const auto amount = static_cast<std::int64_t>(1 + rng() % 50);  // never 0: each commit changes both pages
      transfer_with_expected_epochs(rt, from, to, amount, commits, retries);
    }
  };
  auto reader = [&] {
    bool first = true;
    do {
      ReadView view = rt.read_view(accounts);
      std::int64_t sum = 0;
      for (PageId id : accounts) sum += view.value<std::int64_t>(id, 0);
      if (sum != total) torn.fetch_add(1);
      snapshots.fetch_add(1);
      if (first) readers_started.fetch_add(1);
      first = false;
    } while (!stop.load());
  };
  std::vector<std::thread> writers, readers;
  for (unsigned t = 0; t < 3; ++t) writers.emplace_back(writer, t + 10);
  for (int t = 0; t < 2; ++t) readers.emplace_back(reader);
  for (auto& w : writers) w.join();
  stop = true;
  for (auto& r : readers) r.join();

  EXPECT_EQ(torn.load(), 0) << "a reader saw a half-applied transfer";
  EXPECT_GT(snapshots.load(), 0);
  EXPECT_GT(commits.load(), 0);
  std::int64_t final_sum = 0;
  for (PageId id : accounts) final_sum += rt.read_value<std::int64_t>(id, 0);
  EXPECT_EQ(final_sum, total);
  std::uint64_t epochs = 0;
  for (PageId id : accounts) epochs += rt.info(id).epoch;
  EXPECT_EQ(epochs, static_cast<std::uint64_t>(kAccounts + 2 * commits.load()));
}

TEST(Concurrency, CommitsOnDisjointPagesFromManyThreadsAreAllApplied) {
  Runtime rt;
  constexpr int kThreads = 4, kCommits = 5000;
  std::vector<PageId> pages;
  for (int t = 0; t < kThreads; ++t) pages.push_back(rt.create_page(64));
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (std::uint64_t i = 1; i <= kCommits; ++i) {
        auto txn = rt.begin();
        txn.write_value<std::uint64_t>(pages[static_cast<std::size_t>(t)], 8 * (i % 8), i);
        txn.commit();
      }
    });
  }
  for (auto& th : threads) th.join();
  for (PageId p : pages) {
    EXPECT_EQ(rt.info(p).epoch, std::uint64_t{kCommits});
    EXPECT_EQ(rt.read_value<std::uint64_t>(p, 8 * (kCommits % 8)), std::uint64_t{kCommits});
  }
  EXPECT_GE(rt.last_lsn(), std::uint64_t{kThreads * kCommits});
}

}  // namespace
}  // namespace mmsb
