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
#include <map>
#include <mutex>
#include <random>
#include <span>
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
  // transact()'s default attempts suffice however the threads interleave (see TransactFairness).
  Runtime rt;
  PageId counter = rt.create_page(8);
  constexpr int kPerThread = 20000;
  auto work = [&] {
    for (int i = 0; i < kPerThread; ++i) {
      rt.transact([&](Transaction& txn) {
        txn.write_value<std::int64_t>(counter, 0, txn.read_value<std::int64_t>(counter, 0) + 1);
      });
    }
  };
  std::thread a(work), b(work);
  a.join();
  b.join();
  EXPECT_EQ(read_i64(rt, counter), 2 * kPerThread);
}

// ---- Reads without the page lock: a tracked read of a few bytes copies them optimistically and validates them
// with the page's epoch (runtime/transaction.cpp, read_unlocked). What a commit between the read and the commit
// does to the page, its bytes or its memory must still fail the commit, and a read must never return bytes that
// no single state of the page held.

TEST(OptimisticRead, ACommitThatMovesThePageToNewMemoryAfterTheReadFailsTheCommit) {
  Runtime rt;
  PageId p = rt.create_page(16);  // a 64-byte class block
  commit_i64(rt, p, 5);
  auto txn = rt.begin();
  const auto seen = txn.read_value<std::int64_t>(p, 0);
  EXPECT_EQ(seen, 5);
  rt.resize_page(p, 1 << 16);  // another commit: a new block, the old one freed
  txn.write_value<std::int64_t>(p, 0, seen + 1);
  EXPECT_EQ(error_code_of([&] { txn.commit(); }), ErrorCode::Conflict);
  EXPECT_EQ(read_i64(rt, p), 5);
  EXPECT_EQ(rt.info(p).size, 1u << 16);
}

TEST(OptimisticRead, ADeletionAfterTheReadFailsTheCommitAndAReadOfADeletedPageSaysNotFound) {
  Runtime rt;
  PageId p = rt.create_page(64);
  PageId other = rt.create_page(8);
  auto txn = rt.begin();
  const auto seen = txn.read_value<std::int64_t>(p, 8);
  rt.delete_page(p);
  txn.write_value<std::int64_t>(other, 0, seen + 1);
  EXPECT_EQ(error_code_of([&] { txn.commit(); }), ErrorCode::NotFound);
  EXPECT_EQ(read_i64(rt, other), 0);
  auto later = rt.begin();
  EXPECT_EQ(error_code_of([&] { later.read_value<std::int64_t>(p, 8); }), ErrorCode::NotFound);
}

TEST(OptimisticRead, AReadOutsideThePageStillFailsWithInvalidArgument) {
  Runtime rt;
  PageId p = rt.create_page(16);
  auto txn = rt.begin();
  EXPECT_EQ(error_code_of([&] { txn.read_value<std::int64_t>(p, 12); }), ErrorCode::InvalidArgument);
}

// Pairs of equal words tagged with their page: a read that mixed two states (torn), or copied from a block that a
// growing page gave back and another page took over, would show unequal halves or another page's tag.
std::uint64_t tagged(std::uint64_t page_index, std::uint64_t step) { return page_index << 32 | step; }

TEST(OptimisticRead, ReadsNeverSeeATornPairOrAnotherPagesBytesWhileWritersGrowAndRewritePages) {
  Runtime rt;
  constexpr std::uint64_t kPages = 60;
  const std::uint64_t sizes[] = {16, 200, 3000, 20000, 150000};  // a new allocator block at each step
  std::vector<PageId> pages;
  for (std::uint64_t k = 0; k < kPages; ++k) pages.push_back(rt.create_page(16));
  std::atomic<std::uint64_t> current{0};
  std::atomic<bool> stop{false};
  std::atomic<long> reads{0}, bad{0};
  auto reader = [&] {
    while (!stop.load(std::memory_order_relaxed)) {
      const std::uint64_t k = current.load(std::memory_order_relaxed);
      auto txn = rt.begin();
      std::uint64_t pair[2];
      txn.read(pages[k], 0, std::as_writable_bytes(std::span<std::uint64_t, 2>(pair)));
      if (pair[0] != pair[1] || (pair[0] != 0 && pair[0] >> 32 != k)) bad.fetch_add(1);
      reads.fetch_add(1, std::memory_order_relaxed);
    }
  };
  std::thread r1(reader), r2(reader);
  for (std::uint64_t k = 0; k < kPages; ++k) {
    current.store(k, std::memory_order_relaxed);
    std::uint64_t step = 0;
    for (std::uint64_t size : sizes) {
      const long reads_before = reads.load();
      for (int rewrite = 0; rewrite < 20; ++rewrite) {
        const std::uint64_t v = tagged(k, ++step);
        const std::uint64_t pair[2] = {v, v};
        auto txn = rt.begin();
        txn.resize(pages[k], size);
        txn.write_span(pages[k], 0, std::span<const std::uint64_t, 2>(pair));
        txn.commit();
      }
      while (reads.load() < reads_before + 2) std::this_thread::yield();  // the readers overlap every step
    }
  }
  stop.store(true);
  r1.join();
  r2.join();
  EXPECT_EQ(bad.load(), 0);
}

TEST(OptimisticRead, IncrementsLoseNothingWhileAnotherThreadKeepsMovingThePageToNewMemory) {
  Runtime rt;
  PageId counter = rt.create_page(16);
  constexpr int kPerThread = 5000;
  std::atomic<bool> stop{false};
  std::thread mover([&] {
    for (std::uint64_t size = 16; !stop.load(std::memory_order_relaxed);) {
      size = size >= (1u << 20) ? 16 : size * 2;  // shrinking keeps the block; each new maximum takes a new one
      rt.transact([&](Transaction& txn) { txn.resize(counter, std::max<std::uint64_t>(size, 16)); });
    }
  });
  auto work = [&] {
    for (int i = 0; i < kPerThread; ++i) {
      rt.transact([&](Transaction& txn) {
        txn.write_value<std::int64_t>(counter, 8, txn.read_value<std::int64_t>(counter, 8) + 1);
      });
    }
  };
  std::thread a(work), b(work);
  a.join();
  b.join();
  stop.store(true);
  mover.join();
  EXPECT_EQ(read_i64(rt, counter, 8), 2 * kPerThread);
}

// ---- The read set (runtime/transaction.cpp, ReadSet): a transaction's first read is recorded in place, a
// read-modify-write's write finds its page there, and a commit of one page validates that read in its own
// entry; several pages take the general path. Each test runs its transactions several times on this thread, so
// that they run on recycled transaction states (whose read set has room) as well as fresh ones.

TEST(ReadSet, AReadModifyWriteFailsWhenTheReadPageMovesOnFreshAndRecycledStates) {
  Runtime rt;
  PageId p = rt.create_page(64);
  for (int round = 0; round < 4; ++round) {
    auto txn = rt.begin();
    const auto seen = txn.read_value<std::int64_t>(p, 0);
    commit_i64(rt, p, 100 + round);  // another client wins the race
    txn.write_value<std::int64_t>(p, 0, seen + 1);
    EXPECT_EQ(error_code_of([&] { txn.commit(); }), ErrorCode::Conflict) << "round " << round;
    EXPECT_EQ(read_i64(rt, p), 100 + round) << "a lost update was committed";
  }
  for (int round = 0; round < 4; ++round) {
    auto txn = rt.begin();
    txn.write_value<std::int64_t>(p, 0, txn.read_value<std::int64_t>(p, 0) + 1);
    EXPECT_GT(txn.commit(), 0u);
  }
  EXPECT_EQ(read_i64(rt, p), 103 + 4);
}

TEST(ReadSet, EveryPageReadInAnyOrderIsValidatedWhenTheTransactionWritesOne) {
  Runtime rt;
  const PageId pages[] = {rt.create_page(8), rt.create_page(8), rt.create_page(8)};
  // Read in the order 2, 0, 1 (not PageId order); write page 1. Moving any of the three fails the commit.
  for (int moved = -1; moved < 3; ++moved) {
    for (int round = 0; round < 2; ++round) {
      auto txn = rt.begin();
      const std::int64_t sum = txn.read_value<std::int64_t>(pages[2], 0) + txn.read_value<std::int64_t>(pages[0], 0) +
                               txn.read_value<std::int64_t>(pages[1], 0);
      if (moved >= 0) commit_i64(rt, pages[moved], read_i64(rt, pages[moved]) + 10);
      const std::int64_t before = read_i64(rt, pages[1]);
      txn.write_value<std::int64_t>(pages[1], 0, sum + 1);
      if (moved < 0) {
        EXPECT_GT(txn.commit(), 0u);
        EXPECT_EQ(read_i64(rt, pages[1]), sum + 1);
      } else {
        EXPECT_EQ(error_code_of([&] { txn.commit(); }), ErrorCode::Conflict) << "moved page " << moved;
        EXPECT_EQ(read_i64(rt, pages[1]), before) << "moved page " << moved;
      }
    }
  }
}

TEST(ReadSet, AWriteToThePageJustReadThatWasDeletedMeanwhileSaysNotFound) {
  Runtime rt;
  for (int round = 0; round < 3; ++round) {
    PageId p = rt.create_page(16);
    auto txn = rt.begin();
    const auto seen = txn.read_value<std::int64_t>(p, 8);
    rt.delete_page(p);
    EXPECT_EQ(error_code_of([&] { txn.write_value<std::int64_t>(p, 8, seen + 1); }), ErrorCode::NotFound)
        << "round " << round;
  }
}

TEST(ReadSet, TwoReadsOfOnePageAreOneReadAndTheWriteCommits) {
  Runtime rt;
  PageId p = rt.create_page(16);
  for (int round = 0; round < 3; ++round) {
    auto txn = rt.begin();
    const auto a = txn.read_value<std::int64_t>(p, 0);
    const auto b = txn.read_value<std::int64_t>(p, 8);
    txn.write_value<std::int64_t>(p, 0, a + b + 1);
    EXPECT_GT(txn.commit(), 0u);
  }
  EXPECT_EQ(read_i64(rt, p), 3);
}

// ---- Fairness: every transact() call commits within kOptimisticAttempts + 1 attempts, however hard other
// threads hammer the pages it reads.

TEST(TransactFairness, ReadModifyWriteCommitsInBoundedAttemptsAgainstSevenHammeringThreads) {
  Runtime rt;
  PageId hot = rt.create_page(64);
  constexpr int kBlindWriters = 4, kHammeringRmw = 3, kMeasured = 100;
  std::atomic<bool> stop{false};
  std::atomic<int> started{0};
  std::atomic<unsigned> most_attempts{0};
  std::atomic<std::int64_t> rmw_commits{0};
  std::atomic<int> starved{0};
  // One transact() call incrementing the counter at byte 0; records how many attempts it took. A `slow` one
  // dawdles between its read and its write, so that without fairness the blind writers would move the page in
  // that window on every attempt and it would run out of attempts.
  auto increment = [&](bool slow) {
    unsigned attempts = 0;
    try {
      rt.transact([&](Transaction& txn) {  // the default max_attempts
        ++attempts;
        const auto v = txn.read_value<std::int64_t>(hot, 0);
        if (slow) std::this_thread::sleep_for(std::chrono::microseconds(20));
        txn.write_value<std::int64_t>(hot, 0, v + 1);
      });
    } catch (const Error& e) {
      starved.fetch_add(1);
      ADD_FAILURE() << "a transact() call gave up after " << attempts << " attempts: " << e.what();
      return false;
    }
    rmw_commits.fetch_add(1);
    unsigned seen = most_attempts.load();
    while (attempts > seen && !most_attempts.compare_exchange_weak(seen, attempts)) {
    }
    return true;
  };
  std::vector<std::thread> hammers;
  for (int t = 0; t < kBlindWriters; ++t) {
    hammers.emplace_back([&, t] {  // tight-loop blind writes of the same page (its other bytes)
      started.fetch_add(1);
      for (std::int64_t n = 1; !stop.load(std::memory_order_relaxed); ++n) {
        auto txn = rt.begin();
        txn.write_value<std::int64_t>(hot, 8 * static_cast<std::uint64_t>(1 + t), n);
        txn.commit();
      }
    });
  }
  for (int t = 0; t < kHammeringRmw; ++t) {
    hammers.emplace_back([&] {
      started.fetch_add(1);
      while (!stop.load(std::memory_order_relaxed) && increment(false)) {
      }
    });
  }
  while (started.load() < kBlindWriters + kHammeringRmw) std::this_thread::yield();
  // The eighth thread: without fairness, it would run out of attempts here.
  for (int i = 0; i < kMeasured && starved.load() == 0; ++i) increment(true);
  stop = true;
  for (auto& th : hammers) th.join();
  EXPECT_EQ(read_i64(rt, hot), rmw_commits.load()) << "an increment was lost";
  EXPECT_LE(most_attempts.load(), Runtime::kOptimisticAttempts + 1);
  std::cout << "[          ] most attempts of one transact(): " << most_attempts.load() << "\n";
}

TEST(TransactFairness, AnEscalatedCallHoldsOffOtherCommitsOfWhatItReadUntilItReturns) {
  Runtime rt;
  PageId hot = rt.create_page(8), other = rt.create_page(8);
  std::atomic<bool> writer_committed{false};
  std::thread writer;
  int attempts = 0;
  rt.transact([&](Transaction& txn) {
    ++attempts;
    const auto v = txn.read_value<std::int64_t>(hot, 0);
    if (attempts <= static_cast<int>(Runtime::kOptimisticAttempts)) {
      commit_i64(rt, hot, v + 100);  // loses the race every time while optimistic
    } else {
      // Escalated: hot is reserved. Another thread's commit to it waits until this call returns; one to a page
      // this call did not read goes through.
      writer = std::thread([&] {
        commit_i64(rt, other, 5);
        commit_i64(rt, hot, -1);
        writer_committed = true;
      });
      while (read_i64(rt, other) != 5) std::this_thread::yield();
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
      EXPECT_FALSE(writer_committed.load()) << "a commit changed a page reserved by an escalated transact()";
    }
    txn.write_value<std::int64_t>(hot, 0, v + 1);
  });
  writer.join();
  EXPECT_EQ(attempts, static_cast<int>(Runtime::kOptimisticAttempts) + 1);
  EXPECT_TRUE(writer_committed.load());
  EXPECT_EQ(read_i64(rt, hot), -1) << "the held-off commit runs after the transact() call";
}

// ---- Random read-modify-write transactions from N threads, with a history check.
//
// Four pages of four int64 accounts each. Each transaction is one of: an increment of one account, a transfer
// between two accounts (possibly on different pages), a "sum" that reads three accounts and writes their sum into
// a fourth (reads of pages it does not write), or a read-only audit of every account. Every committed transaction
// records its LSN, what it read and what it wrote; replaying them in LSN order from the initial state must
// reproduce every read and the final state. Every call uses transact()'s default attempts.

constexpr int kPages = 4, kSlots = 4, kAccounts = kPages * kSlots;
constexpr std::int64_t kInitial = 1000;
// The "sum" transactions write into accounts 12..15 (page 3), reading accounts from pages 0..2: money is
// conserved on pages 0..2 only.
constexpr int kSumTargets = kSlots;
constexpr std::int64_t kConserved = kInitial * (kAccounts - kSumTargets);

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

// The shared state of one history run.
struct History {
  Runtime rt;
  std::vector<PageId> pages;
  std::mutex log_mutex;
  std::vector<Committed> log;
  std::atomic<int> conflicts{0}, audits{0}, io_errors{0};
  std::atomic<unsigned> most_attempts{0};

  PageId page_of(int account) const { return pages[static_cast<std::size_t>(account / kSlots)]; }
  static std::uint64_t offset_of(int account) { return 8 * static_cast<std::uint64_t>(account % kSlots); }
};

// One random transaction of the history (see above), run through transact() with its default attempts. Returns
// whether it committed; the committed ones that changed something land in `mine`.
bool run_random_transaction(History& h, std::mt19937& rng, bool logged, std::vector<Committed>& mine) {
  Committed c;
  unsigned attempts = 0;
  std::int64_t audit_total = 0;  // an attempt may see a torn state; only a committed one counts
  auto read = [&](Transaction& txn, int a) {
    const auto v = txn.read_value<std::int64_t>(h.page_of(a), History::offset_of(a));
    c.reads.emplace_back(a, v);
    return v;
  };
  auto write = [&](Transaction& txn, int a, std::int64_t v) {
    txn.write_value<std::int64_t>(h.page_of(a), History::offset_of(a), v);
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
    c.lsn = h.rt.transact([&](Transaction& txn) {
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
        const std::int64_t sum = read(txn, x) + read(txn, y) + read(txn, (x + y + 1) % (kAccounts - kSumTargets));
        if (dawdle) std::this_thread::yield();
        write(txn, target, read(txn, target) + 1 + (sum & 7));  // always a change
      } else {  // read-only audit: the conserved accounts must add up (once the audit commits)
        audit_total = 0;
        for (int a = 0; a < kAccounts - kSumTargets; ++a) {
          audit_total += read(txn, a);
          if (dawdle && a == kSlots) std::this_thread::yield();
        }
      }
    });
  } catch (const Error& e) {
    if (logged && e.code() == ErrorCode::IoError) {
      h.io_errors.fetch_add(1);  // the sink failed it: it did not happen
      return false;
    }
    ADD_FAILURE() << "transact() gave up after " << attempts << " attempts: " << e.what();
    return false;
  }
  h.conflicts.fetch_add(static_cast<int>(attempts) - 1);
  unsigned seen = h.most_attempts.load();
  while (attempts > seen && !h.most_attempts.compare_exchange_weak(seen, attempts)) {
  }
  if (kind >= 9) {
    EXPECT_EQ(c.lsn, 0u);
    EXPECT_EQ(audit_total, kConserved) << "a committed audit saw a state no serial order produces";
    h.audits.fetch_add(1);
  } else {
    EXPECT_NE(c.lsn, 0u);
    mine.push_back(std::move(c));
  }
  return true;
}

// Replays the committed transactions in LSN order: each one's reads must equal the state of all lower LSNs, and
// the result must be the pages' final state.
void check_history(History& h) {
  std::sort(h.log.begin(), h.log.end(), [](const Committed& a, const Committed& b) { return a.lsn < b.lsn; });
  for (std::size_t i = 1; i < h.log.size(); ++i) {
    ASSERT_LT(h.log[i - 1].lsn, h.log[i].lsn) << "two commits share an LSN";
  }
  std::vector<std::int64_t> state(kAccounts, kInitial);
  std::size_t mismatches = 0;
  for (const Committed& c : h.log) {
    for (const auto& [a, v] : c.reads) mismatches += state[static_cast<std::size_t>(a)] != v;
    for (const auto& [a, v] : c.writes) state[static_cast<std::size_t>(a)] = v;
  }
  EXPECT_EQ(mismatches, 0u) << "a committed transaction read something other than the state of all lower LSNs";
  for (int a = 0; a < kAccounts; ++a) {
    EXPECT_EQ(read_i64(h.rt, h.page_of(a), History::offset_of(a)), state[static_cast<std::size_t>(a)])
        << "account " << a;
  }
  std::int64_t total = 0;
  for (int a = 0; a < kAccounts - kSumTargets; ++a) total += state[static_cast<std::size_t>(a)];
  EXPECT_EQ(total, kConserved);
  EXPECT_GT(h.audits.load(), 0);
}

// (threads, whether commits go through a sink that syncs)
class HistoryTest : public ::testing::TestWithParam<std::tuple<int, bool>> {};

TEST_P(HistoryTest, CommittedTransactionsAreEquivalentToTheirLsnOrder) {
  const auto [threads, logged] = GetParam();
  const int per_thread = (logged ? 6000 : 12000) / threads;
  History h;
  auto sink = std::make_shared<SlowSink>();
  if (logged) h.rt.set_commit_sink(sink);
  for (int p = 0; p < kPages; ++p) h.pages.push_back(h.rt.create_page(kSlots * 8));
  h.rt.transact([&](Transaction& txn) {
    for (int a = 0; a < kAccounts; ++a) txn.write_value<std::int64_t>(h.page_of(a), History::offset_of(a), kInitial);
  });
  std::atomic<int> ready{0};
  auto worker = [&](unsigned seed) {
    std::mt19937 rng(seed);
    ready.fetch_add(1);
    while (ready.load() < threads) std::this_thread::yield();  // overlap the threads, even on a loaded machine
    std::vector<Committed> mine;
    for (int i = 0; i < per_thread; ++i) run_random_transaction(h, rng, logged, mine);
    std::lock_guard lock(h.log_mutex);
    for (auto& c : mine) h.log.push_back(std::move(c));
  };
  std::vector<std::thread> pool;
  for (int t = 0; t < threads; ++t) pool.emplace_back(worker, 1234u + static_cast<unsigned>(t));
  for (auto& th : pool) th.join();
  check_history(h);
  if (logged) {
    // Each committed transaction, deposit and page has its record; a commit whose predecessor failed may have one
    // too (this sink, unlike the log, does not keep its records a prefix), but it failed with Conflict.
    EXPECT_GE(sink->records.load() - sink->failed.load(), h.log.size() + 1 + kPages);
    EXPECT_GT(h.io_errors.load(), 0) << "no injected failure reached a transaction";
    h.rt.set_commit_sink(nullptr);
  } else {
    // In memory nothing but other transactions can move a page: the fairness bound holds exactly.
    EXPECT_LE(h.most_attempts.load(), Runtime::kOptimisticAttempts + 1);
  }
  std::cout << "[          ] " << threads << " threads: " << h.log.size() << " commits, " << h.conflicts.load()
            << " conflicts retried, at most " << h.most_attempts.load() << " attempts\n";
}

INSTANTIATE_TEST_SUITE_P(Threads, HistoryTest, ::testing::Combine(::testing::Values(2, 4, 8), ::testing::Bool()),
                         [](const ::testing::TestParamInfo<std::tuple<int, bool>>& param_info) {
                           return std::to_string(std::get<0>(param_info.param)) +
                                  (std::get<1>(param_info.param) ? "_logged" : "_in_memory");
                         });

}  // namespace
}  // namespace mmsb
