// Serializable optimistic transactions (mmsb/runtime.hpp, "Serializable by default"): reads through a transaction
// are validated at commit; a moved page fails the commit with Conflict and no trace; Runtime::transact retries on
// Conflict only. The concurrency tests check exact totals and that every committed transaction is equivalent to
// running alone at its LSN.
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <iostream>
#include <limits>
#include <map>
#include <mutex>
#include <random>
#include <thread>
#include <tuple>
#include <utility>
#include <vector>

#include "mmsb/mmsb.hpp"
#include "support/test_support.hpp"

namespace mmsb {
namespace {

using mmsb::testing::commit_i64;
using mmsb::testing::error_code_of;

std::int64_t read_i64(const Runtime& rt, PageId p, std::uint64_t offset = 0) {
  return rt.read_value<std::int64_t>(p, offset);
}

TEST(Serializable, ReadModifyWriteRacingAnotherCommitFailsWithConflictAndNoTrace) {
  Runtime rt;
  PageId counter = rt.create_page(8);
  auto txn = rt.begin();
  const auto seen = txn.read_value<std::int64_t>(counter, 0);
  commit_i64(rt, counter, 10);  // another client wins the race
  txn.write_value<std::int64_t>(counter, 0, seen + 1);
  EXPECT_EQ(error_code_of([&] { txn.commit(); }), ErrorCode::Conflict);
  EXPECT_FALSE(txn.active());
  EXPECT_EQ(read_i64(rt, counter), 10) << "a lost update was committed";
  EXPECT_EQ(rt.info(counter).epoch, 1u);
}

TEST(Serializable, WriteSkewIsRefused) {
  // Two doctors on call: each may leave if the other stays. Both read both pages and write only their own.
  Runtime rt;
  PageId alice = rt.create_page(8), bob = rt.create_page(8);
  commit_i64(rt, alice, 1);
  commit_i64(rt, bob, 1);
  auto t1 = rt.begin(), t2 = rt.begin();
  ASSERT_EQ(t1.read_value<std::int64_t>(alice, 0) + t1.read_value<std::int64_t>(bob, 0), 2);
  ASSERT_EQ(t2.read_value<std::int64_t>(alice, 0) + t2.read_value<std::int64_t>(bob, 0), 2);
  t1.write_value<std::int64_t>(alice, 0, 0);
  t2.write_value<std::int64_t>(bob, 0, 0);
  EXPECT_GT(t1.commit(), 0u);
  EXPECT_EQ(error_code_of([&] { t2.commit(); }), ErrorCode::Conflict);
  EXPECT_EQ(read_i64(rt, alice) + read_i64(rt, bob), 1) << "both left: write skew";
}

TEST(Serializable, BlindWritesNeverConflict) {
  Runtime rt;
  PageId p = rt.create_page(8);
  auto txn = rt.begin();
  txn.write_value<std::int64_t>(p, 0, 7);
  commit_i64(rt, p, 3);
  EXPECT_GT(txn.commit(), 0u);
  EXPECT_EQ(read_i64(rt, p), 7);
}

TEST(Serializable, SecondReadOfAMovedPageFailsAtOnce) {
  Runtime rt;
  PageId p = rt.create_page(16);
  auto txn = rt.begin();
  txn.read_value<std::int64_t>(p, 0);
  commit_i64(rt, p, 5);
  EXPECT_EQ(error_code_of([&] { txn.read_value<std::int64_t>(p, 8); }), ErrorCode::Conflict);
  EXPECT_TRUE(txn.active()) << "a conflicting read leaves the transaction to be aborted or dropped";
}

TEST(Serializable, ReadOnlyTransactionCommitsNothingButIsValidated) {
  Runtime rt;
  PageId a = rt.create_page(8), b = rt.create_page(8);
  const std::uint64_t lsn = rt.last_lsn();
  {
    auto txn = rt.begin();
    txn.read_value<std::int64_t>(a, 0);
    txn.read_value<std::int64_t>(b, 0);
    EXPECT_EQ(txn.commit(), 0u);
    EXPECT_EQ(rt.last_lsn(), lsn);
  }
  auto txn = rt.begin();
  txn.read_value<std::int64_t>(a, 0);
  commit_i64(rt, a, 1);  // a moves before the transaction reads b: a and b were not read at one instant
  txn.read_value<std::int64_t>(b, 0);
  EXPECT_EQ(error_code_of([&] { txn.commit(); }), ErrorCode::Conflict);
}

TEST(Serializable, ReadForUpdateMakesAnyChangeOfThePageAConflict) {
  Runtime rt;
  PageId config = rt.create_page(32), out = rt.create_page(8);
  auto txn = rt.begin();
  const PageInfo info = txn.read_for_update(config);
  EXPECT_EQ(info.size, 32u);
  EXPECT_EQ(info.epoch, 0u);
  txn.write_value<std::int64_t>(out, 0, 1);
  commit_i64(rt, config, 9);
  EXPECT_EQ(error_code_of([&] { txn.commit(); }), ErrorCode::Conflict);
  EXPECT_EQ(read_i64(rt, out), 0);
}

TEST(Serializable, ReadsOfExternalPagesAreTrackedAndAllowed) {
  static const std::int64_t constant = 42;
  Runtime rt;
  PageId ext = rt.create_external_page(std::as_bytes(std::span<const std::int64_t, 1>(&constant, 1)));
  PageId out = rt.create_page(8);
  const std::uint64_t lsn = rt.transact(
      [&](Transaction& txn) { txn.write_value<std::int64_t>(out, 0, txn.read_value<std::int64_t>(ext, 0) + 1); });
  EXPECT_GT(lsn, 0u);
  EXPECT_EQ(read_i64(rt, out), 43);
}

TEST(Transact, RetriesOnConflictUntilTheTransactionCommits) {
  Runtime rt;
  PageId counter = rt.create_page(8);
  int attempts = 0;
  const std::uint64_t lsn = rt.transact([&](Transaction& txn) {
    ++attempts;
    const auto v = txn.read_value<std::int64_t>(counter, 0);
    if (attempts < 3) commit_i64(rt, counter, v + 100);  // someone else commits in between: a conflict
    txn.write_value<std::int64_t>(counter, 0, v + 1);
  });
  EXPECT_EQ(attempts, 3);
  EXPECT_EQ(lsn, rt.last_lsn());
  EXPECT_EQ(read_i64(rt, counter), 201);
}

TEST(Transact, NeverRetriesOtherErrors) {
  Runtime rt;
  PageId p = rt.create_page(8);
  int attempts = 0;
  EXPECT_EQ(error_code_of([&] {
              rt.transact([&](Transaction& txn) {
                ++attempts;
                txn.write_value<std::int64_t>(p, 4, 1);  // outside the page
              });
            }),
            ErrorCode::InvalidArgument);
  EXPECT_EQ(attempts, 1);
}

TEST(Transact, GivesUpAfterMaxAttemptsWithTheLastConflict) {
  Runtime rt;
  PageId p = rt.create_page(8);
  int attempts = 0;
  EXPECT_EQ(error_code_of([&] {
              rt.transact(
                  [&](Transaction& txn) {
                    ++attempts;
                    txn.read_value<std::int64_t>(p, 0);
                    commit_i64(rt, p, attempts);
                    txn.write_value<std::int64_t>(p, 0, -1);
                  },
                  5);
            }),
            ErrorCode::Conflict);
  EXPECT_EQ(attempts, 5);
  EXPECT_EQ(read_i64(rt, p), 5);
}

TEST(Transact, TwoThreadsIncrementingOneCounterLoseNoUpdate) {
  // Issue 17's first report: read_value + write_value + commit from two threads lost ~40% of the increments.
  Runtime rt;
  PageId counter = rt.create_page(8);
  constexpr int kPerThread = 20000;
  // Unbounded retries: what is checked is that no increment is lost. (Under a sanitizer's slowdown one thread can
  // lose more than transact()'s default 64 attempts in a row to the other's tight loop: a known starvation limit,
  // reported as Conflict, never as a lost update.)
  auto work = [&] {
    for (int i = 0; i < kPerThread; ++i) {
      rt.transact(
          [&](Transaction& txn) {
            txn.write_value<std::int64_t>(counter, 0, txn.read_value<std::int64_t>(counter, 0) + 1);
          },
          std::numeric_limits<unsigned>::max());
    }
  };
  std::thread a(work), b(work);
  a.join();
  b.join();
  EXPECT_EQ(read_i64(rt, counter), 2 * kPerThread);
}

// ---- Random read-modify-write transactions from N threads, with a history check.
//
// Four pages of four int64 accounts each. Each transaction is one of: an increment of one account, a transfer
// between two accounts (possibly on different pages), a "sum" that reads three accounts and writes their sum into
// a fourth (reads of pages it does not write), or a read-only audit of every account. Every committed transaction
// records its LSN, what it read and what it wrote; replaying them in LSN order from the initial state must
// reproduce every read and the final state.

constexpr int kPages = 4, kSlots = 4, kAccounts = kPages * kSlots;
// What this test checks is serializability, not fairness: with 8 threads on 2 cores one transaction can lose more
// than transact()'s default 64 attempts in a row (a known starvation limit, reported as Conflict), so it retries
// until it commits.
constexpr unsigned kRetryWithoutBound = std::numeric_limits<unsigned>::max();
constexpr std::int64_t kInitial = 1000;

// A sink that takes a random few microseconds to make each record "durable", out of order, and fails one in 97:
// commits are in flight (logged, not yet visible) while others read and build on them, and some of those fail,
// which is the path readers-never-wait-for-a-disk adds.
struct SlowSink : CommitSink {
  std::atomic<std::uint64_t> records{0}, failed{0};
  void write(const CommitRecord& record) override { wait_durable(append(record)); }
  std::uint64_t append(const CommitRecord& record) override {
    records.fetch_add(1);
    return record.lsn;
  }
  void wait_durable(std::uint64_t ticket) override {
    if (ticket % 3 == 0) {
      std::this_thread::sleep_for(std::chrono::microseconds(ticket % 50));
    } else {
      std::this_thread::yield();
    }
    if (ticket % 97 == 0) {
      failed.fetch_add(1);
      throw Error(ErrorCode::IoError, "injected sync failure of LSN " + std::to_string(ticket));
    }
  }
};

struct Committed {
  std::uint64_t lsn = 0;
  std::vector<std::pair<int, std::int64_t>> reads;   // account, value read
  std::vector<std::pair<int, std::int64_t>> writes;  // account, value written
};

// (threads, whether commits go through a sink that syncs)
class HistoryTest : public ::testing::TestWithParam<std::tuple<int, bool>> {};

TEST_P(HistoryTest, CommittedTransactionsAreEquivalentToTheirLsnOrder) {
  const auto [threads, logged] = GetParam();
  const int per_thread = (logged ? 6000 : 12000) / threads;
  Runtime rt;
  auto sink = std::make_shared<SlowSink>();
  if (logged) rt.set_commit_sink(sink);
  std::vector<PageId> pages;
  for (int p = 0; p < kPages; ++p) pages.push_back(rt.create_page(kSlots * 8));
  rt.transact([&](Transaction& txn) {
    for (int a = 0; a < kAccounts; ++a) txn.write_value<std::int64_t>(pages[a / kSlots], 8 * (a % kSlots), kInitial);
  });
  // The "sum" transactions write into accounts 12..15 (page 3), reading accounts from pages 0..2: money is
  // conserved on pages 0..2 only.
  constexpr int kSumTargets = kSlots;
  const std::int64_t conserved = kInitial * (kAccounts - kSumTargets);

  std::mutex log_mutex;
  std::vector<Committed> log;
  std::atomic<int> conflicts{0}, audits{0}, ready{0}, io_errors{0};
  auto worker = [&](unsigned seed) {
    std::mt19937 rng(seed);
    ready.fetch_add(1);
    while (ready.load() < threads) std::this_thread::yield();  // overlap the threads, even on a loaded machine
    std::vector<Committed> mine;
    for (int i = 0; i < per_thread; ++i) {
      Committed c;
      int attempts = 0;
      std::int64_t audit_total = 0;  // an attempt may see a torn state; only a committed one counts
      auto read = [&](Transaction& txn, int a) {
        const auto v = txn.read_value<std::int64_t>(pages[a / kSlots], 8 * (a % kSlots));
        c.reads.emplace_back(a, v);
        return v;
      };
      auto write = [&](Transaction& txn, int a, std::int64_t v) {
        txn.write_value<std::int64_t>(pages[a / kSlots], 8 * (a % kSlots), v);
        c.writes.emplace_back(a, v);
      };
      const unsigned kind = rng() % 10;
      const int x = static_cast<int>(rng() % (kAccounts - kSumTargets));
      int y = static_cast<int>(rng() % (kAccounts - kSumTargets - 1));
      if (y >= x) ++y;
      const int target = kAccounts - kSumTargets + static_cast<int>(rng() % kSumTargets);
      const auto amount = static_cast<std::int64_t>(1 + rng() % 50);
      const bool dawdle = rng() % 4 == 0;  // give other threads a chance to commit between reads and writes
      try {
        c.lsn = rt.transact(
            [&](Transaction& txn) {
              ++attempts;
              c.reads.clear();
              c.writes.clear();
              if (kind < 3) {  // increment a "sum" account (never conserved)
                const std::int64_t v = read(txn, target);
                if (dawdle) std::this_thread::yield();
                write(txn, target, v + 1);
              } else if (kind < 7) {  // transfer
                const std::int64_t from = read(txn, x);
                if (dawdle) std::this_thread::yield();
                const std::int64_t to = read(txn, y);
                write(txn, x, from - amount);
                write(txn, y, to + amount);
              } else if (kind < 9) {  // sum of three accounts into a fourth
                const std::int64_t sum =
                    read(txn, x) + read(txn, y) + read(txn, (x + y + 1) % (kAccounts - kSumTargets));
                if (dawdle) std::this_thread::yield();
                write(txn, target, read(txn, target) + 1 + (sum & 7));  // always a change
              } else {  // read-only audit: the conserved accounts must add up (once the audit commits)
                audit_total = 0;
                for (int a = 0; a < kAccounts - kSumTargets; ++a) {
                  audit_total += read(txn, a);
                  if (dawdle && a == kSlots) std::this_thread::yield();
                }
              }
            },
            kRetryWithoutBound);
      } catch (const Error& e) {
        if (logged && e.code() == ErrorCode::IoError) {
          io_errors.fetch_add(1);  // the sink failed it: it did not happen
          continue;
        }
        ADD_FAILURE() << "transact() gave up: " << e.what();
        break;
      }
      conflicts.fetch_add(attempts - 1);
      if (kind >= 9) {
        EXPECT_EQ(c.lsn, 0u);
        EXPECT_EQ(audit_total, conserved) << "a committed audit saw a state no serial order produces";
        audits.fetch_add(1);
      } else {
        ASSERT_NE(c.lsn, 0u);
        mine.push_back(std::move(c));
      }
    }
    std::lock_guard lock(log_mutex);
    for (auto& c : mine) log.push_back(std::move(c));
  };
  std::vector<std::thread> pool;
  for (int t = 0; t < threads; ++t) pool.emplace_back(worker, 1234u + static_cast<unsigned>(t));
  for (auto& th : pool) th.join();

  std::sort(log.begin(), log.end(), [](const Committed& a, const Committed& b) { return a.lsn < b.lsn; });
  for (std::size_t i = 1; i < log.size(); ++i) ASSERT_LT(log[i - 1].lsn, log[i].lsn) << "two commits share an LSN";
  std::vector<std::int64_t> state(kAccounts, kInitial);
  std::size_t mismatches = 0;
  for (const Committed& c : log) {
    for (const auto& [a, v] : c.reads) mismatches += state[static_cast<std::size_t>(a)] != v;
    for (const auto& [a, v] : c.writes) state[static_cast<std::size_t>(a)] = v;
  }
  EXPECT_EQ(mismatches, 0u) << "a committed transaction read something other than the state of all lower LSNs";
  for (int a = 0; a < kAccounts; ++a) {
    EXPECT_EQ(read_i64(rt, pages[a / kSlots], 8 * (a % kSlots)), state[static_cast<std::size_t>(a)]) << "account " << a;
  }
  std::int64_t total = 0;
  for (int a = 0; a < kAccounts - kSumTargets; ++a) total += state[static_cast<std::size_t>(a)];
  EXPECT_EQ(total, conserved);
  EXPECT_GT(audits.load(), 0);
  if (logged) {
    // Each committed transaction, deposit and page has its record; a commit whose predecessor failed may have one
    // too (this sink, unlike the log, does not keep its records a prefix), but it failed with Conflict.
    EXPECT_GE(sink->records.load() - sink->failed.load(), log.size() + 1 + kPages);
    EXPECT_GT(io_errors.load(), 0) << "no injected failure reached a transaction";
    rt.set_commit_sink(nullptr);
  }
  std::cout << "[          ] " << threads << " threads: " << log.size() << " commits, " << conflicts.load()
            << " conflicts retried\n";
}

INSTANTIATE_TEST_SUITE_P(Threads, HistoryTest, ::testing::Combine(::testing::Values(2, 4, 8), ::testing::Bool()),
                         [](const ::testing::TestParamInfo<std::tuple<int, bool>>& param_info) {
                           return std::to_string(std::get<0>(param_info.param)) +
                                  (std::get<1>(param_info.param) ? "_logged" : "_in_memory");
                         });

}  // namespace
}  // namespace mmsb
