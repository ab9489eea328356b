// The recovery modes of DurableOptions (docs/durability.md, "Recovery modes"): what each does with a torn tail and
// with corruption, what it reports, and that what it leaves out is kept in the side folder, never deleted.
#include <gtest/gtest.h>

#include <filesystem>
#include <string>
#include <vector>

#include "mmsb/durable.hpp"
#include "serialize/log_format.hpp"
#include "support/temp_dir.hpp"
#include "support/test_support.hpp"

namespace mmsb {
namespace {

namespace fs = std::filesystem;
using testing::commit_i64;
using testing::read_file;
using testing::TempDir;
using testing::write_file;

DurableOptions in_mode(RecoveryMode mode) {
  DurableOptions o;
  o.sync = SyncPolicy::None;
  o.segment_bytes = 300;
  o.recovery_mode = mode;
  return o;
}

std::vector<fs::path> segments_in(const fs::path& dir) {
  std::vector<fs::path> out;
  for (const auto& e : fs::directory_iterator(dir)) {
    std::uint64_t key = 0;
    if (serialize::parse_segment_name(e.path().filename().string(), key)) out.push_back(e.path());
  }
  std::sort(out.begin(), out.end());
  return out;
}

fs::path aside_folder(const fs::path& dir) {
  for (const auto& e : fs::directory_iterator(dir)) {
    if (e.is_directory() && e.path().filename().string().rfind("aside-", 0) == 0) return e.path();
  }
  return {};
}

// Pages 1..8 are created, then written in turn, several times: a write depends on the one before on its page.
struct History {
  TempDir dir;
  std::vector<std::uint64_t> hash_at;  // the state after each LSN
  std::uint64_t last_lsn = 0;
  History() {
    DurableRuntime db(dir.path(), in_mode(RecoveryMode::TolerateTornTail));
    Runtime& rt = db.runtime();
    std::vector<PageId> pages;
    hash_at.push_back(state_hash(rt));
    for (int i = 0; i < 8; ++i) {
      pages.push_back(rt.create_page(8));
      hash_at.push_back(state_hash(rt));
    }
    for (int i = 0; i < 32; ++i) {
      commit_i64(rt, pages[static_cast<std::size_t>(i % 8)], 100 + i);
      hash_at.push_back(state_hash(rt));
    }
    last_lsn = rt.last_lsn();
  }
};

// Flips a bit in the body of the `index`th record of `segment`; returns that record's offset and LSN.
std::pair<std::uint64_t, std::uint64_t> damage_record(const fs::path& segment, std::size_t index) {
  std::string bytes = read_file(segment);
  const serialize::SegmentScan scan = serialize::scan_segment(bytes, false);
  const auto& r = scan.records.at(index);
  const std::string body = bytes.substr(r.offset + serialize::kRecordHeaderBytes, r.end - r.offset - 16);
  bytes[r.offset + serialize::kRecordHeaderBytes + 1] ^= 0x04;
  write_file(segment, bytes);
  // The record's LSN is the first field of the Commit message (field 1, varint): enough for small LSNs.
  return {r.offset, static_cast<unsigned char>(body[1])};
}

TEST(RecoveryMode, DefaultAndAbsoluteRefuseCorruptionAndOnlyAbsoluteRefusesATornTail) {
  History h;
  const auto segments = segments_in(h.dir.path());
  ASSERT_GE(segments.size(), 4u);
  // A torn tail: the default cuts it, absolute refuses.
  fs::resize_file(segments.back(), fs::file_size(segments.back()) - 3);
  EXPECT_EQ(testing::error_code_of([&] { DurableRuntime db(h.dir.path(), in_mode(RecoveryMode::Absolute)); }),
            ErrorCode::Corruption);
  {
    DurableRuntime db(h.dir.path(), in_mode(RecoveryMode::TolerateTornTail));
    EXPECT_GT(db.recovery().truncated_bytes, 0u);
    EXPECT_EQ(db.recovery().last_lsn, h.last_lsn);
  }
  // Corruption: both refuse, naming the segment, the offset, the last good LSN and what follows.
  const auto [offset, lsn] = damage_record(segments[1], 1);
  for (RecoveryMode mode : {RecoveryMode::TolerateTornTail, RecoveryMode::Absolute}) {
    try {
      DurableRuntime db(h.dir.path(), in_mode(mode));
      ADD_FAILURE() << "opened a corrupt log in mode " << recovery_mode_name(mode);
    } catch (const Error& e) {
      const std::string what = e.what();
      EXPECT_EQ(e.code(), ErrorCode::Corruption);
      EXPECT_NE(what.find(segments[1].filename().string() + " offset " + std::to_string(offset)), std::string::npos)
          << what;
      EXPECT_NE(what.find("last good LSN " + std::to_string(lsn - 1)), std::string::npos) << what;
      EXPECT_NE(what.find(std::to_string(h.last_lsn - lsn) + " intact records follow"), std::string::npos) << what;
    }
  }
}

TEST(RecoveryMode, PointInTimeOpensBeforeTheDamageAndKeepsEverythingAfterItAside) {
  History h;
  const auto segments = segments_in(h.dir.path());
  ASSERT_GE(segments.size(), 4u);
  const std::string original = read_file(segments[1]);
  std::vector<std::string> later;
  for (std::size_t i = 2; i < segments.size(); ++i) later.push_back(read_file(segments[i]));
  const auto [offset, lsn] = damage_record(segments[1], 1);
  const std::string damaged = read_file(segments[1]);
  {
    DurableRuntime db(h.dir.path(), in_mode(RecoveryMode::PointInTime));
    const RecoveryInfo& r = db.recovery();
    EXPECT_EQ(r.last_lsn, lsn - 1);
    EXPECT_EQ(state_hash(db.runtime()), h.hash_at[lsn - 1]);
    ASSERT_EQ(r.damage.size(), 1u);
    EXPECT_EQ(r.damage[0].file, segments[1]);
    EXPECT_EQ(r.damage[0].offset, offset);
    EXPECT_EQ(r.damage[0].last_good_lsn, lsn - 1);
    EXPECT_EQ(r.records_not_replayed, h.last_lsn - lsn);
    ASSERT_FALSE(r.set_aside.empty());
    EXPECT_EQ(r.set_aside, aside_folder(h.dir.path()));
    // Nothing was deleted: the damaged segment's original and every later segment are in the folder.
    EXPECT_EQ(read_file(r.set_aside / segments[1].filename()), damaged);
    for (std::size_t i = 2; i < segments.size(); ++i) {
      EXPECT_EQ(read_file(r.set_aside / segments[i].filename()), later[i - 2]) << segments[i].filename();
    }
    EXPECT_NE(read_file(r.set_aside / "REPORT.txt").find("offset " + std::to_string(offset)), std::string::npos);
    // The log goes on from there.
    commit_i64(db.runtime(), PageId::make(0, 1), 7);
    EXPECT_EQ(db.runtime().last_lsn(), lsn);
  }
  // The cut log is clean: the default mode opens it.
  DurableRuntime db(h.dir.path(), in_mode(RecoveryMode::TolerateTornTail));
  EXPECT_EQ(db.recovery().last_lsn, lsn);
  EXPECT_TRUE(db.recovery().damage.empty());
  EXPECT_TRUE(verify(h.dir.path()).ok);
  (void)original;
}

TEST(RecoveryMode, SkipDamagedReplaysEveryIntactRecordAndReportsWhatItSkipped) {
  History h;
  const auto segments = segments_in(h.dir.path());
  ASSERT_GE(segments.size(), 4u);
  const auto [offset, lsn] = damage_record(segments[1], 1);
  const std::string damaged = read_file(segments[1]);
  {
    DurableRuntime db(h.dir.path(), in_mode(RecoveryMode::SkipDamaged));
    const RecoveryInfo& r = db.recovery();
    EXPECT_EQ(r.last_lsn, h.last_lsn) << "the records after the damage are replayed";
    ASSERT_GE(r.damage.size(), 1u);
    EXPECT_EQ(r.damage[0].file, segments[1]);
    EXPECT_EQ(r.damage[0].offset, offset);
    // The damaged record wrote one page; every later write of that page no longer applies and is skipped too,
    // and reported; every other page ends as in the uninterrupted history.
    EXPECT_EQ(r.records_not_replayed, r.damage.size() - 1);
    for (std::size_t i = 1; i < r.damage.size(); ++i) {
      EXPECT_NE(r.damage[i].what.find("does not apply"), std::string::npos) << r.damage[i].what;
    }
    EXPECT_EQ(read_file(r.set_aside / segments[1].filename()), damaged);
  }
  EXPECT_TRUE(verify(h.dir.path()).ok) << "the salvaged log is consistent";
  DurableRuntime db(h.dir.path(), in_mode(RecoveryMode::TolerateTornTail));
  EXPECT_TRUE(db.recovery().damage.empty());
}

TEST(RecoveryMode, PointInTimeStopsBeforeAMissingSegment) {
  History h;
  const auto segments = segments_in(h.dir.path());
  ASSERT_GE(segments.size(), 4u);
  const std::string kept = read_file(segments[3]);
  fs::remove(segments[2]);
  DurableRuntime db(h.dir.path(), in_mode(RecoveryMode::PointInTime));
  ASSERT_EQ(db.recovery().damage.size(), 1u);
  EXPECT_EQ(db.recovery().damage[0].file, segments[2]);
  EXPECT_EQ(state_hash(db.runtime()), h.hash_at[db.recovery().last_lsn]);
  EXPECT_LT(db.recovery().last_lsn, h.last_lsn);
  EXPECT_EQ(read_file(db.recovery().set_aside / segments[3].filename()), kept) << "a later segment was lost";
}

TEST(RecoveryMode, NamesRoundTrip) {
  for (RecoveryMode m :
       {RecoveryMode::TolerateTornTail, RecoveryMode::Absolute, RecoveryMode::PointInTime, RecoveryMode::SkipDamaged}) {
    EXPECT_EQ(parse_recovery_mode(recovery_mode_name(m)), m);
  }
  EXPECT_EQ(parse_recovery_mode("point-in-time"), RecoveryMode::PointInTime);
  EXPECT_EQ(testing::error_code_of([] { parse_recovery_mode("lenient"); }), ErrorCode::InvalidArgument);
}

}  // namespace
}  // namespace mmsb
