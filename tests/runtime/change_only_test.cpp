// Change-only commits (mmsb/runtime.hpp, Transaction::set_write_through): a commit records only the bytes that
// differ from the page, rewriting equal bytes gives no delta and no epoch, and write-through records every staged
// byte. A property test checks the recorded delta against the bytes before and after.
#include <gtest/gtest.h>

#include <cstdint>
#include <cstring>
#include <random>
#include <vector>

#include "delta/changed_runs.hpp"
#include "mmsb/mmsb.hpp"
#include "support/test_support.hpp"

namespace mmsb {
namespace {

std::vector<std::byte> pattern(std::size_t n, unsigned seed) {
  std::vector<std::byte> out(n);
  std::mt19937 rng(seed);
  for (auto& b : out) b = static_cast<std::byte>(rng());
  return out;
}

// Keeps a copy of every delta it sees.
struct DeltaSink : CommitSink {
  std::vector<Delta> deltas;
  std::size_t records = 0;
  void write(const CommitRecord& r) override {
    ++records;
    deltas.insert(deltas.end(), r.deltas.begin(), r.deltas.end());
  }
};

TEST(ChangeOnly, RewritingEqualBytesCommitsNothing) {
  Runtime rt;
  PageId p = rt.create_page(4096);
  const auto bytes = pattern(4096, 1);
  {
    auto txn = rt.begin();
    txn.write(p, 0, bytes);
    EXPECT_GT(txn.commit(), 0u);
  }
  auto sink = std::make_shared<DeltaSink>();
  rt.set_commit_sink(sink);
  const std::uint64_t lsn = rt.last_lsn();
  auto txn = rt.begin();
  txn.write(p, 0, bytes);
  EXPECT_EQ(txn.commit(), 0u) << "an unchanged page needs no LSN";
  EXPECT_TRUE(txn.committed_deltas().empty());
  EXPECT_EQ(rt.info(p).epoch, 1u);
  EXPECT_EQ(rt.last_lsn(), lsn);
  EXPECT_EQ(sink->records, 0u) << "nothing reaches the log";
  rt.set_commit_sink(nullptr);
}

TEST(ChangeOnly, OnlyTheChangedBytesAreRecordedWithTheirUndo) {
  Runtime rt;
  PageId p = rt.create_page(4096);
  auto before = pattern(4096, 2);
  {
    auto txn = rt.begin();
    txn.write(p, 0, before);
    txn.commit();
  }
  auto after = before;
  after[100] ^= std::byte{1};
  after[2000] ^= std::byte{0xff};
  after[2001] ^= std::byte{0x10};
  after[4095] ^= std::byte{7};
  auto txn = rt.begin();
  txn.write(p, 0, after);  // the whole page staged, four bytes changed
  EXPECT_GT(txn.commit(), 0u);
  ASSERT_EQ(txn.committed_deltas().size(), 1u);
  const Delta& d = txn.committed_deltas()[0];
  EXPECT_EQ(d.ranges, (std::vector<ByteRange>{{100, 1}, {2000, 2}, {4095, 1}}));
  EXPECT_EQ(d.payload.size(), 4u);
  ASSERT_TRUE(d.has_undo);
  EXPECT_EQ(d.undo, (std::vector<std::byte>{before[100], before[2000], before[2001], before[4095]}));
  EXPECT_EQ(rt.read_all(p), after);
  std::vector<std::byte> restored = after;
  mmsb::apply(invert(d), restored);
  EXPECT_EQ(restored, before);
}

TEST(ChangeOnly, WriteThroughRecordsEveryStagedByte) {
  Runtime rt;
  PageId p = rt.create_page(64);
  const auto bytes = pattern(64, 3);
  auto txn = rt.begin();
  txn.write(p, 0, bytes);
  txn.commit();
  auto again = rt.begin();
  again.set_write_through();
  again.write(p, 0, bytes);
  EXPECT_GT(again.commit(), 0u);
  ASSERT_EQ(again.committed_deltas().size(), 1u);
  EXPECT_EQ(again.committed_deltas()[0].ranges, (std::vector<ByteRange>{{0, 64}}));
  EXPECT_EQ(rt.info(p).epoch, 2u) << "write-through makes a new epoch even for equal bytes";
}

TEST(ChangeOnly, AMultiPageCommitChangesOnlyThePagesWhoseBytesDiffer) {
  Runtime rt;
  PageId a = rt.create_page(8), b = rt.create_page(8);
  auto txn = rt.begin();
  txn.write_value<std::int64_t>(a, 0, 0);  // equal to the zero-filled page
  txn.write_value<std::int64_t>(b, 0, 5);
  EXPECT_GT(txn.commit(), 0u);
  ASSERT_EQ(txn.committed_deltas().size(), 1u);
  EXPECT_EQ(txn.committed_deltas()[0].page, b);
  EXPECT_EQ(rt.info(a).epoch, 0u);
  EXPECT_EQ(rt.info(b).epoch, 1u);
}

TEST(ChangeOnly, GrownBytesCompareAgainstZerosAndAResizeAloneIsAChange) {
  Runtime rt;
  PageId p = rt.create_page(8);
  auto txn = rt.begin();
  txn.resize(p, 16);
  txn.write_value<std::int64_t>(p, 8, 0);  // zeros where zero-extension puts zeros
  EXPECT_GT(txn.commit(), 0u);
  ASSERT_EQ(txn.committed_deltas().size(), 1u);
  const Delta& d = txn.committed_deltas()[0];
  EXPECT_TRUE(d.ranges.empty());
  EXPECT_EQ(d.base_size, 8u);
  EXPECT_EQ(d.size, 16u);
  EXPECT_EQ(rt.info(p).epoch, 1u);
  auto same = rt.begin();
  same.resize(p, 16);
  EXPECT_EQ(same.commit(), 0u) << "a resize to the current size changes nothing";
}

TEST(ChangeOnly, AStagedDeltaIsRecordedAsGiven) {
  Runtime rt;
  PageId p = rt.create_page(8);
  Delta d;
  d.page = p;
  d.epoch_count = 1;
  d.base_size = d.size = 8;
  d.ranges = {{0, 8}};
  d.payload.assign(8, std::byte{0});  // equal bytes
  auto txn = rt.begin();
  txn.apply(d);
  EXPECT_GT(txn.commit(), 0u);
  EXPECT_EQ(rt.info(p).epoch, 1u);
}

TEST(ChangeOnly, NoUndoWhenTheRuntimeKeepsNone) {
  Runtime rt(RuntimeOptions{.record_undo = false});
  PageId p = rt.create_page(256);
  auto txn = rt.begin();
  auto bytes = pattern(256, 4);
  txn.write(p, 0, bytes);
  txn.commit();
  ASSERT_EQ(txn.committed_deltas().size(), 1u);
  EXPECT_FALSE(txn.committed_deltas()[0].has_undo);
  EXPECT_TRUE(txn.committed_deltas()[0].undo.empty());
}

// Random pages and random overlapping writes, some rewriting equal bytes: the delta applies to the old bytes to
// give the new ones, inverts back, starts and ends each range on a changed byte, and leaves every byte outside its
// ranges unchanged.
// An 8-byte write takes a shortcut (one XOR) to its run: every pattern of differing bytes must give the ranges
// the general scan gives, split where merge_gap equal bytes or more separate them, with and without undo (merge
// gaps 4 and 8).
TEST(ChangeOnly, AnEightByteWriteRecordsTheRunsTheGeneralScanFinds) {
  for (bool undo : {true, false}) {
    RuntimeOptions options;
    options.record_undo = undo;
    Runtime rt(options);
    PageId p = rt.create_page(24);
    std::uint64_t old = 0x0123456789abcdefULL;
    testing::commit_value<std::uint64_t>(rt, p, 8, old);
    for (unsigned mask = 1; mask < 256; ++mask) {
      std::uint64_t now = old;
      for (unsigned byte = 0; byte < 8; ++byte)
        if (mask & (1u << byte)) now ^= std::uint64_t{0x5a} << (8 * byte);
      auto txn = rt.begin();
      txn.write_value<std::uint64_t>(p, 8, now);
      ASSERT_GT(txn.commit(), 0u);
      std::vector<ByteRange> expected;
      detail::append_changed_runs(reinterpret_cast<const std::byte*>(&old), reinterpret_cast<const std::byte*>(&now), 8,
                                  8, undo ? 4 : 8, expected);
      ASSERT_EQ(txn.committed_deltas().size(), 1u);
      const Delta& d = txn.committed_deltas()[0];
      ASSERT_EQ(d.ranges.size(), expected.size()) << "mask " << mask;
      std::uint64_t at = 0;
      for (std::size_t i = 0; i < expected.size(); ++i) {
        EXPECT_EQ(d.ranges[i].offset, expected[i].offset) << "mask " << mask;
        EXPECT_EQ(d.ranges[i].length, expected[i].length) << "mask " << mask;
        for (std::uint64_t k = 0; k < expected[i].length; ++k) {
          const std::uint64_t byte = expected[i].offset - 8 + k;
          EXPECT_EQ(d.payload[at + k], static_cast<std::byte>(now >> (8 * byte)));
          if (undo) {
            EXPECT_EQ(d.undo[at + k], static_cast<std::byte>(old >> (8 * byte)));
          }
        }
        at += expected[i].length;
      }
      old = now;
    }
  }
}

TEST(ChangeOnly, RecordedDeltasMatchTheBytesBeforeAndAfter) {
  std::mt19937 rng(77);
  for (bool undo : {true, false}) {
    Runtime rt(RuntimeOptions{.record_undo = undo});
    PageId p = rt.create_page(3000);
    std::vector<std::byte> model(3000);
    for (int round = 0; round < 300; ++round) {
      auto txn = rt.begin();
      std::vector<std::byte> next = model;
      const int writes = 1 + static_cast<int>(rng() % 5);
      for (int w = 0; w < writes; ++w) {
        const std::size_t offset = rng() % 3000, length = 1 + rng() % std::min<std::size_t>(3000 - offset, 400);
        std::vector<std::byte> bytes(next.begin() + static_cast<std::ptrdiff_t>(offset),
                                     next.begin() + static_cast<std::ptrdiff_t>(offset + length));
        const std::size_t changes = rng() % 4 == 0 ? 0 : rng() % 20;  // a quarter rewrite equal bytes only
        for (std::size_t c = 0; c < changes; ++c) bytes[rng() % length] = static_cast<std::byte>(rng());
        std::memcpy(next.data() + offset, bytes.data(), length);
        txn.write(p, offset, bytes);
      }
      const std::uint64_t lsn = txn.commit();
      ASSERT_EQ(rt.read_all(p), next);
      if (next == model) {
        EXPECT_EQ(lsn, 0u);
        continue;
      }
      ASSERT_EQ(txn.committed_deltas().size(), 1u);
      const Delta& d = txn.committed_deltas()[0];
      d.validate();
      for (const ByteRange& r : d.ranges) {
        EXPECT_NE(model[r.offset], next[r.offset]) << "a range starts on an unchanged byte";
        EXPECT_NE(model[r.end() - 1], next[r.end() - 1]) << "a range ends on an unchanged byte";
      }
      std::vector<std::byte> replayed = model;
      mmsb::apply(d, replayed);
      EXPECT_EQ(replayed, next);
      if (undo) {
        mmsb::apply(invert(d), replayed);
        EXPECT_EQ(replayed, model);
      }
      model = next;
    }
  }
}

}  // namespace
}  // namespace mmsb
