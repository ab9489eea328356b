// Honest commit results (docs/api.md, "Errors"): a commit that took effect always yields its LSN, also when the
// wave after it fails, and a client that follows the documented advice never applies a commit twice — in C++ and
// through the C ABI.
#include <gtest/gtest.h>

#include <atomic>
#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "mmsb/mmsb.h"
#include "mmsb/mmsb.hpp"

namespace mmsb {
namespace {

constexpr std::int64_t kDeposit = 100;

// An account whose audit page is derived by a node that throws on every third run: the retry trap of issue 17
// (a failed wave after a successful commit used to look like a lost race).
struct FlakyAudit {
  Runtime rt;
  Propagator prop{rt};
  PageId account = rt.create_page(sizeof(std::int64_t));
  PageId audit = rt.create_page(sizeof(std::int64_t));
  std::atomic<int> runs{0};

  FlakyAudit() {
    prop.derive_map(audit, {account}, [this](MapContext& c) {
      if (runs.fetch_add(1) % 3 == 1) throw std::runtime_error("audit service unavailable");
      c.output_as<std::int64_t>() = c.input_as<std::int64_t>(0);
    });
  }
};

// What docs/api.md tells a client to do with each outcome of commit(). Returns true when the deposit took effect.
bool deposit_following_the_docs(Runtime& rt, PageId account, int& node_failures, int& conflicts) {
  for (;;) {
    try {
      const std::uint64_t epoch = rt.info(account).epoch;
      const auto balance = rt.read_value<std::int64_t>(account, 0);
      auto txn = rt.begin();
      txn.expect_epoch(account, epoch);
      txn.write_value<std::int64_t>(account, 0, balance + kDeposit);
      txn.commit();
      return true;
    } catch (const Error& e) {
      switch (e.code()) {
        case ErrorCode::NodeFailed:  // the commit happened; only the wave after it failed: do not retry
          EXPECT_NE(e.committed_lsn(), 0u) << e.what();
          ++node_failures;
          return true;
        case ErrorCode::Conflict:  // nothing was committed: read again and retry
          ++conflicts;
          continue;
        default:
          ADD_FAILURE() << "unexpected " << e.what();
          return false;
      }
    }
  }
}

TEST(RetryTrap, ClientFollowingTheDocsNeverAppliesADepositTwice) {
  FlakyAudit bank;
  int node_failures = 0, conflicts = 0;
  constexpr int kDeposits = 60;
  for (int i = 0; i < kDeposits; ++i) deposit_following_the_docs(bank.rt, bank.account, node_failures, conflicts);
  EXPECT_EQ(bank.rt.read_value<std::int64_t>(bank.account, 0), kDeposits * kDeposit);
  EXPECT_GT(node_failures, 0) << "the node never failed: the trap was not exercised";
  EXPECT_EQ(bank.rt.info(bank.account).epoch, std::uint64_t{kDeposits}) << "one commit per deposit";
}

TEST(RetryTrap, ConcurrentDepositorsGetExactTotalsDespiteFailingWaves) {
  FlakyAudit bank;
  constexpr int kThreads = 4, kDepositsEach = 40;
  std::atomic<int> node_failures{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&] {
      int failures = 0, conflicts = 0;
      for (int i = 0; i < kDepositsEach; ++i) deposit_following_the_docs(bank.rt, bank.account, failures, conflicts);
      node_failures.fetch_add(failures);
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(bank.rt.read_value<std::int64_t>(bank.account, 0), kThreads * kDepositsEach * kDeposit);
  EXPECT_GT(node_failures.load(), 0);
}

TEST(CommitResult, NodeFailedFromCommitCarriesTheCommittedLsnAndTheCommitIsVisible) {
  FlakyAudit bank;
  auto commit = [&](std::int64_t v) {
    auto txn = bank.rt.begin();
    txn.write_value<std::int64_t>(bank.account, 0, v);
    return txn.commit();
  };
  EXPECT_GT(commit(1), 0u);  // run 0 succeeds
  try {
    commit(2);  // run 1 throws
    FAIL() << "the failing node did not reach the committer";
  } catch (const NodeError& e) {
    EXPECT_EQ(e.code(), ErrorCode::NodeFailed);
    EXPECT_EQ(e.committed_lsn(), bank.rt.last_lsn());
    EXPECT_EQ(e.page(), bank.audit);
    EXPECT_NE(std::string(e.what()).find("took effect"), std::string::npos) << e.what();
  }
  EXPECT_EQ(bank.rt.read_value<std::int64_t>(bank.account, 0), 2) << "the commit took effect";
  EXPECT_TRUE(bank.prop.is_stale(bank.audit));
}

TEST(CommitResult, ErrorCodeNamesAreStable) {
  EXPECT_EQ(error_code_name(ErrorCode::Conflict), "conflict");
  EXPECT_EQ(error_code_name(ErrorCode::NodeFailed), "node_failed");
  EXPECT_STREQ(mmsb_status_name(MMSB_CONFLICT), "conflict");
  EXPECT_STREQ(mmsb_status_name(MMSB_NODE_FAILED), "node_failed");
  EXPECT_STREQ(mmsb_status_name(MMSB_OK), "ok");
  EXPECT_STREQ(mmsb_status_name(static_cast<mmsb_status>(99)), "unknown");
  // The C statuses mirror the C++ codes value for value.
  EXPECT_EQ(static_cast<int>(MMSB_CONFLICT), static_cast<int>(ErrorCode::Conflict));
  EXPECT_EQ(static_cast<int>(MMSB_NODE_FAILED), static_cast<int>(ErrorCode::NodeFailed));
}

// ---- The C ABI

int flaky_copy(void* user, const mmsb_input* inputs, size_t count, void* output, uint64_t output_size) {
  auto* runs = static_cast<int*>(user);
  if ((*runs)++ % 3 == 1 || count != 1 || inputs[0].size != output_size) return 1;
  std::memcpy(output, inputs[0].data, output_size);
  return 0;
}

TEST(CApiRetryTrap, CommitReportsNodeFailedWithItsLsnAndTheDocumentedLoopDepositsOnce) {
  mmsb_runtime* rt = nullptr;
  ASSERT_EQ(mmsb_runtime_create(&rt), MMSB_OK);
  mmsb_page_id account = 0, audit = 0;
  ASSERT_EQ(mmsb_page_create(rt, 8, &account), MMSB_OK);
  ASSERT_EQ(mmsb_page_create(rt, 8, &audit), MMSB_OK);
  int runs = 0;
  ASSERT_EQ(mmsb_derive_map(rt, audit, &account, 1, flaky_copy, &runs), MMSB_OK);
  int node_failures = 0;
  constexpr int kDeposits = 30;
  for (int i = 0; i < kDeposits; ++i) {
    for (;;) {
      mmsb_txn* txn = nullptr;
      ASSERT_EQ(mmsb_txn_begin(rt, &txn), MMSB_OK);
      std::int64_t balance = 0;
      ASSERT_EQ(mmsb_page_read(rt, account, 0, &balance, sizeof balance), MMSB_OK);
      balance += kDeposit;
      ASSERT_EQ(mmsb_txn_write(txn, account, 0, &balance, sizeof balance), MMSB_OK);
      std::uint64_t lsn = 0;
      const mmsb_status status = mmsb_txn_commit(txn, &lsn);
      if (status == MMSB_CONFLICT) continue;  // nothing committed: run the transaction again
      ASSERT_TRUE(status == MMSB_OK || status == MMSB_NODE_FAILED) << mmsb_last_error();
      EXPECT_NE(lsn, 0u) << "a commit that took effect must report its LSN";
      node_failures += status == MMSB_NODE_FAILED;
      break;
    }
  }
  std::int64_t balance = 0;
  ASSERT_EQ(mmsb_page_read(rt, account, 0, &balance, sizeof balance), MMSB_OK);
  EXPECT_EQ(balance, kDeposits * kDeposit);
  EXPECT_GT(node_failures, 0);
  mmsb_runtime_destroy(rt);
}

}  // namespace
}  // namespace mmsb
