#include <gtest/gtest.h>

#include <cstdint>
#include <cstring>
#include <map>
#include <memory>
#include <random>
#include <vector>

#include "mmsb/mmsb.hpp"
#include "support/test_support.hpp"

namespace mmsb {
namespace {

using mmsb::testing::error_code_of;

std::vector<std::byte> bytes_of(std::initializer_list<int> values) {
  std::vector<std::byte> out;
  for (int v : values) out.push_back(static_cast<std::byte>(v));
  return out;
}

// Keeps a copy of every record, as a durable log would.
struct RecordingSink : CommitSink {
  struct Copy {
    std::uint64_t lsn;
    std::vector<Delta> deltas;
    std::vector<CommitRecord::CreatedPage> created;
    std::vector<PageId> deleted;
  };
  std::vector<Copy> records;
  bool fail_next = false;
  void write(const CommitRecord& r) override {
    if (fail_next) {
      fail_next = false;
      throw Error(ErrorCode::IoError, "disk full (injected)");
    }
    records.push_back({r.lsn,
                       {r.deltas.begin(), r.deltas.end()},
                       {r.created.begin(), r.created.end()},
                       {r.deleted.begin(), r.deleted.end()}});
  }
};

TEST(Transaction, CommitTakesIncreasingLsnAndBumpsEpochOfEachTouchedPage) {
  Runtime rt;
  PageId a = rt.create_page(64), b = rt.create_page(64), c = rt.create_page(64);
  std::uint64_t before = rt.last_lsn();
  auto txn = rt.begin();
  txn.write_value<std::uint32_t>(a, 0, 7);
  txn.write_value<std::uint32_t>(b, 4, 9);
  std::uint64_t lsn = txn.commit();
  EXPECT_GT(lsn, before);
  EXPECT_EQ(rt.last_lsn(), lsn);
  EXPECT_EQ(rt.info(a).epoch, 1u);
  EXPECT_EQ(rt.info(b).epoch, 1u);
  EXPECT_EQ(rt.info(c).epoch, 0u);
  EXPECT_EQ(rt.read_value<std::uint32_t>(a, 0), 7u);
  EXPECT_EQ(rt.read_value<std::uint32_t>(b, 4), 9u);
  auto txn2 = rt.begin();
  txn2.write_value<std::uint32_t>(a, 0, 8);
  EXPECT_GT(txn2.commit(), lsn);
  EXPECT_FALSE(txn2.active());
}

TEST(Transaction, CommittedDeltaDescribesTheChange) {
  Runtime rt;
  PageId a = rt.create_page(32);
  auto txn = rt.begin();
  txn.set_intent("init");
  txn.set_source(5);
  txn.write(a, 4, bytes_of({1, 2, 3}));
  txn.commit();
  auto deltas = txn.committed_deltas();
  ASSERT_EQ(deltas.size(), 1u);
  const Delta& d = deltas[0];
  EXPECT_EQ(d.page, a);
  EXPECT_EQ(d.base_epoch, 0u);
  EXPECT_EQ(d.epoch_count, 1u);
  EXPECT_EQ(d.size, 32u);
  ASSERT_EQ(d.ranges.size(), 1u);
  EXPECT_EQ(d.ranges[0], (ByteRange{4, 3}));
  EXPECT_EQ(d.payload, bytes_of({1, 2, 3}));
  EXPECT_TRUE(d.has_undo);
  EXPECT_EQ(d.undo, bytes_of({0, 0, 0}));
  EXPECT_EQ(d.intent, "init");
  EXPECT_EQ(d.source, 5u);
  EXPECT_NO_THROW(d.validate());
}

TEST(Transaction, LaterOverlappingWritesWinAndRangesAreMerged) {
  Runtime rt;
  PageId a = rt.create_page(16);
  auto txn = rt.begin();
  txn.write(a, 2, bytes_of({1, 1, 1, 1}));
  txn.write(a, 4, bytes_of({2, 2, 2, 2}));  // overlaps the first
  txn.write(a, 8, bytes_of({3}));           // adjacent to the second
  txn.write(a, 12, bytes_of({4}));          // separate
  txn.write(a, 3, bytes_of({5}));           // overwrites inside the first
  txn.commit();
  EXPECT_EQ(rt.read_all(a), bytes_of({0, 0, 1, 5, 2, 2, 2, 2, 3, 0, 0, 0, 4, 0, 0, 0}));
  const Delta& d = txn.committed_deltas()[0];
  ASSERT_EQ(d.ranges.size(), 2u);
  EXPECT_EQ(d.ranges[0], (ByteRange{2, 7}));
  EXPECT_EQ(d.ranges[1], (ByteRange{12, 1}));
  EXPECT_NO_THROW(d.validate());
}

TEST(Transaction, AbortAndDestructionLeaveNoTrace) {
  Runtime rt;
  PageId a = rt.create_page(8);
  std::uint64_t lsn = rt.last_lsn();
  {
    auto txn = rt.begin();
    txn.write_value<std::uint64_t>(a, 0, 99);
    txn.abort();
    EXPECT_FALSE(txn.active());
    EXPECT_EQ(error_code_of([&] { txn.commit(); }), ErrorCode::InvalidArgument);
  }
  {
    auto txn = rt.begin();
    txn.write_value<std::uint64_t>(a, 0, 42);
  }  // destroyed uncommitted
  EXPECT_EQ(rt.read_value<std::uint64_t>(a, 0), 0u);
  EXPECT_EQ(rt.info(a).epoch, 0u);
  EXPECT_EQ(rt.last_lsn(), lsn);
}

TEST(Transaction, AHugeTransactionsBuffersAreFreedByTheThreadsNextSmallerOne) {
  // A thread keeps its finished transactions' buffers for the next one (so a warm commit allocates nothing), but
  // above 64 MiB only while they serve transactions of their size: one huge transaction must not pin its staged
  // bytes, deltas and undo for the rest of the thread's life.
  constexpr std::uint64_t kPageBytes = std::uint64_t{4} << 20;
  Runtime rt;
  std::vector<PageId> pages;
  for (int i = 0; i < 24; ++i) pages.push_back(rt.create_page(kPageBytes));  // 96 MiB changed in one commit
  const std::size_t before = mmsb::testing::heap_bytes_in_use();
  const std::vector<std::byte> filler(kPageBytes, std::byte{7});
  for (int round = 0; round < 2; ++round) {  // the second huge transaction reuses the first one's buffers
    auto txn = rt.begin();
    for (PageId page : pages) txn.write(page, 0, filler);
    txn.commit();
  }
  EXPECT_GT(mmsb::testing::heap_bytes_in_use(), before + (std::size_t{64} << 20)) << "kept for transactions that size";
  {
    auto small = rt.begin();
    small.write_value<std::int64_t>(pages[0], 0, 42);
    small.commit();
  }
  EXPECT_LT(mmsb::testing::heap_bytes_in_use(), before + (std::size_t{16} << 20) + kPageBytes) << "freed";
  EXPECT_EQ(rt.read_value<std::int64_t>(pages[0], 0), 42);
}

TEST(Transaction, EmptyTransactionCommitsNothing) {
  Runtime rt;
  rt.create_page(8);
  std::uint64_t lsn = rt.last_lsn();
  auto txn = rt.begin();
  EXPECT_EQ(txn.commit(), 0u);
  EXPECT_EQ(rt.last_lsn(), lsn);
}

TEST(Transaction, FailedMultiPageCommitChangesNoPage) {
  Runtime rt;
  PageId a = rt.create_page(8), b = rt.create_page(8);
  auto txn = rt.begin();
  txn.write_value<std::uint64_t>(a, 0, 1);
  txn.write_value<std::uint64_t>(b, 0, 2);
  txn.expect_epoch(b, 5);  // wrong: b is at epoch 0
  EXPECT_EQ(error_code_of([&] { txn.commit(); }), ErrorCode::Conflict);
  EXPECT_EQ(rt.read_value<std::uint64_t>(a, 0), 0u);
  EXPECT_EQ(rt.read_value<std::uint64_t>(b, 0), 0u);
  EXPECT_EQ(rt.info(a).epoch, 0u);
  EXPECT_FALSE(txn.active());
}

TEST(Transaction, PageDeletedBeforeCommitFailsTheCommit) {
  Runtime rt;
  PageId a = rt.create_page(8), b = rt.create_page(8);
  auto txn = rt.begin();
  txn.write_value<std::uint64_t>(a, 0, 1);
  txn.write_value<std::uint64_t>(b, 0, 2);
  rt.delete_page(b);
  EXPECT_EQ(error_code_of([&] { txn.commit(); }), ErrorCode::NotFound);
  EXPECT_EQ(rt.read_value<std::uint64_t>(a, 0), 0u);
}

TEST(Transaction, WritesOutsideThePageAreRejected) {
  Runtime rt;
  PageId a = rt.create_page(8);
  auto txn = rt.begin();
  EXPECT_EQ(error_code_of([&] { txn.write_value<std::uint64_t>(a, 1, 0); }), ErrorCode::InvalidArgument);
  EXPECT_EQ(error_code_of([&] { txn.write(a, ~std::uint64_t{0}, bytes_of({1})); }), ErrorCode::InvalidArgument);
  EXPECT_TRUE(txn.active());  // a rejected write does not spoil the transaction
  txn.write_value<std::uint64_t>(a, 0, 3);
  EXPECT_GT(txn.commit(), 0u);
}

TEST(Transaction, ConcurrentShrinkMakesAStagedWriteFailAtCommit) {
  Runtime rt;
  PageId a = rt.create_page(64);
  auto txn = rt.begin();
  txn.write_value<std::uint64_t>(a, 40, 1);
  rt.resize_page(a, 16);
  EXPECT_EQ(error_code_of([&] { txn.commit(); }), ErrorCode::InvalidArgument);
  EXPECT_EQ(rt.info(a).size, 16u);
}

TEST(Transaction, DeltaWithMismatchedBaseEpochIsAConflict) {
  Runtime rt;
  PageId a = rt.create_page(16);
  std::vector<std::byte> old_bytes(16), new_bytes(16);
  new_bytes[3] = std::byte{9};
  Delta d = diff(old_bytes, new_bytes);
  d.page = a;
  d.base_epoch = 1;  // the page is at epoch 0
  auto txn = rt.begin();
  txn.apply(d);
  try {
    txn.commit();
    FAIL() << "expected Conflict";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::Conflict);
    EXPECT_NE(std::string(e.what()).find("epoch 1"), std::string::npos) << e.what();
  }
  d.base_epoch = 0;
  auto txn2 = rt.begin();
  txn2.apply(d);
  txn2.commit();
  EXPECT_EQ(rt.read_all(a), new_bytes);
  EXPECT_EQ(rt.info(a).epoch, 1u);
}

TEST(Transaction, DeltaAndWritesToOnePageAreRefused) {
  Runtime rt;
  PageId a = rt.create_page(16);
  Delta d = diff(std::vector<std::byte>(16), std::vector<std::byte>(16, std::byte{1}));
  d.page = a;
  auto txn = rt.begin();
  txn.apply(d);
  txn.write_value<std::uint8_t>(a, 0, 1);
  EXPECT_EQ(error_code_of([&] { txn.commit(); }), ErrorCode::InvalidArgument);
  EXPECT_EQ(rt.info(a).epoch, 0u);
}

TEST(Transaction, ResizeKeepsThePrefixZeroExtendsAndIsInvertible) {
  Runtime rt;
  PageId a = rt.create_page(8);
  auto txn = rt.begin();
  txn.write(a, 0, bytes_of({1, 2, 3, 4, 5, 6, 7, 8}));
  txn.commit();
  auto shrink = rt.begin();
  shrink.resize(a, 3);
  shrink.commit();
  EXPECT_EQ(rt.read_all(a), bytes_of({1, 2, 3}));
  Delta shrink_delta = shrink.committed_deltas()[0];
  EXPECT_EQ(shrink_delta.undo_tail, bytes_of({4, 5, 6, 7, 8}));
  auto grow = rt.begin();
  grow.resize(a, 6000);  // outgrows the block: the page moves to new memory
  grow.write(a, 5990, bytes_of({9}));
  grow.commit();
  auto grown = rt.read_all(a);
  ASSERT_EQ(grown.size(), 6000u);
  EXPECT_EQ(grown[2], std::byte{3});
  EXPECT_EQ(grown[3], std::byte{0});  // the old tail does not come back
  EXPECT_EQ(grown[5990], std::byte{9});
  // Undo both resizes with the inverted deltas.
  std::vector<std::byte> page = grown;
  mmsb::apply(invert(grow.committed_deltas()[0]), page);
  EXPECT_EQ(page, bytes_of({1, 2, 3}));
  mmsb::apply(invert(shrink_delta), page);
  EXPECT_EQ(page, bytes_of({1, 2, 3, 4, 5, 6, 7, 8}));
}

TEST(Transaction, SinkSeesEveryRecordAndItsFailureLeavesNoTrace) {
  Runtime rt;
  auto sink = std::make_shared<RecordingSink>();
  rt.set_commit_sink(sink);
  PageId a = rt.create_page(8);
  ASSERT_EQ(sink->records.size(), 1u);
  EXPECT_EQ(sink->records[0].created.size(), 1u);
  EXPECT_EQ(sink->records[0].created[0].id, a);
  sink->fail_next = true;
  auto txn = rt.begin();
  txn.write_value<std::uint64_t>(a, 0, 5);
  EXPECT_EQ(error_code_of([&] { txn.commit(); }), ErrorCode::IoError);
  EXPECT_EQ(rt.read_value<std::uint64_t>(a, 0), 0u);
  EXPECT_EQ(rt.info(a).epoch, 0u);
  auto txn2 = rt.begin();
  txn2.write_value<std::uint64_t>(a, 0, 6);
  std::uint64_t lsn = txn2.commit();
  rt.delete_page(a);
  ASSERT_EQ(sink->records.size(), 3u);
  EXPECT_EQ(sink->records[1].lsn, lsn);
  EXPECT_EQ(sink->records[2].deleted, std::vector<PageId>{a});
  EXPECT_LT(sink->records[0].lsn, sink->records[1].lsn);
  EXPECT_LT(sink->records[1].lsn, sink->records[2].lsn);
}

// Property: replaying the sink's deltas onto fresh pages reproduces the live state, and applying the inverses in
// reverse order brings every page back to zero.
TEST(Transaction, ReplayOfCommittedDeltasEqualsLiveStateAndInversesRestoreTheStart) {
  Runtime rt;
  auto sink = std::make_shared<RecordingSink>();
  rt.set_commit_sink(sink);
  std::mt19937_64 rng(1234);
  std::vector<PageId> pages;
  for (int i = 0; i < 8; ++i) pages.push_back(rt.create_page(64 + 37 * static_cast<std::uint64_t>(i)));
  for (int step = 0; step < 500; ++step) {
    auto txn = rt.begin();
    int touched = 1 + static_cast<int>(rng() % 3);
    for (int t = 0; t < touched; ++t) {
      PageId p = pages[rng() % pages.size()];
      std::uint64_t size = rt.info(p).size;
      if (rng() % 20 == 0) {
        txn.resize(p, 16 + rng() % 400);
        continue;
      }
      int writes = 1 + static_cast<int>(rng() % 4);
      for (int w = 0; w < writes && size > 0; ++w) {
        std::uint64_t off = rng() % size;
        std::uint64_t len = 1 + rng() % std::min<std::uint64_t>(24, size - off);
        std::vector<std::byte> data(len);
        for (auto& b : data) b = static_cast<std::byte>(rng());
        try {
          txn.write(p, off, data);
        } catch (const Error&) {
          // the staged resize above may have shrunk the page; skip this write
        }
      }
    }
    try {
      txn.commit();
    } catch (const Error& e) {
      ASSERT_EQ(e.code(), ErrorCode::InvalidArgument) << e.what();
    }
  }
  std::map<PageId, std::vector<std::byte>> replayed;
  for (const auto& rec : sink->records) {
    for (const auto& c : rec.created) replayed[c.id] = std::vector<std::byte>(c.size);
    for (const auto& d : rec.deltas) mmsb::apply(d, replayed.at(d.page));
  }
  for (PageId p : pages) EXPECT_EQ(replayed.at(p), rt.read_all(p)) << p.to_string();
  for (auto it = sink->records.rbegin(); it != sink->records.rend(); ++it) {
    for (const auto& d : it->deltas) mmsb::apply(invert(d), replayed.at(d.page));
  }
  for (PageId p : pages) {
    const auto& bytes = replayed.at(p);
    EXPECT_EQ(bytes, std::vector<std::byte>(bytes.size())) << p.to_string();
    EXPECT_EQ(bytes.size(), 64 + 37 * (p.sequence() - 1));
  }
}

}  // namespace
}  // namespace mmsb
