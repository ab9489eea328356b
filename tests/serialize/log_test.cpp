#include "serialize/log.hpp"

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <map>
#include <random>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include <unistd.h>

#include "serialize/random_commit.hpp"
#include "support/temp_dir.hpp"
#include "support/test_support.hpp"

namespace mmsb::serialize {
namespace {

namespace fs = std::filesystem;
using mmsb::testing::error_code_of;
using mmsb::testing::random_commit;

using mmsb::testing::TempDir;

LogOptions options_of(std::uint64_t segment_bytes, SyncPolicy sync) {
  LogOptions o;
  o.segment_bytes = segment_bytes;
  o.sync = sync;
  return o;
}

LogOptions fast(std::uint64_t segment_bytes = std::uint64_t{64} << 20) {
  return options_of(segment_bytes, SyncPolicy::None);
}

std::vector<DecodedCommit> read_all(const fs::path& dir, RecoveryReport* report = nullptr) {
  LogReader reader(dir);
  std::vector<DecodedCommit> out;
  for (DecodedCommit c; reader.next(c);) out.push_back(c);
  if (report) *report = reader.report();
  return out;
}

std::vector<fs::path> segments_of(const fs::path& dir) { return LogReader(dir).segments(); }

void flip_byte(const fs::path& file, std::uint64_t offset, unsigned char mask = 0x10) {
  std::fstream f(file, std::ios::in | std::ios::out | std::ios::binary);
  f.seekg(static_cast<std::streamoff>(offset));
  char c = 0;
  f.get(c);
  f.seekp(static_cast<std::streamoff>(offset));
  f.put(static_cast<char>(c ^ mask));
}

// Writes `count` random commits (LSN 1..count) into one segment; returns them and the file offset of each record.
// Unless `closed`, the log then ends with its last commit record, as a writer that crashed right after it leaves
// it (no close record).
std::vector<DecodedCommit> write_commits(const fs::path& dir, std::size_t count, std::vector<std::uint64_t>* offsets,
                                         std::uint64_t seed = 1, bool closed = false) {
  std::mt19937_64 rng(seed);
  std::vector<DecodedCommit> commits;
  {
    LogWriter writer(dir, fast());
    for (std::size_t i = 0; i < count; ++i) {
      commits.push_back(random_commit(rng, i + 1));
      if (offsets) {
        offsets->push_back(segments_of(dir).empty() ? kSegmentHeaderBytes : fs::file_size(segments_of(dir).back()));
      }
      writer.write(commits.back().record());
    }
  }
  if (!closed && count > 0) {
    const fs::path last = segments_of(dir).back();
    fs::resize_file(last, fs::file_size(last) - kRecordHeaderBytes - kCloseBodyBytes);
  }
  return commits;
}

void expect_prefix(const std::vector<DecodedCommit>& got, const std::vector<DecodedCommit>& want, std::size_t n) {
  ASSERT_EQ(got.size(), n);
  for (std::size_t i = 0; i < n; ++i) EXPECT_EQ(got[i], want[i]) << "record " << i;
}

TEST(Log, SegmentNamesHaveTwentyDigits) { EXPECT_EQ(segment_file_name(42), "log-00000000000000000042.mmsb"); }

TEST(Log, WriterThenReaderAcrossManySegmentsGivesIdenticalCommits) {
  TempDir dir;
  std::mt19937_64 rng(7);
  std::vector<DecodedCommit> commits;
  {
    LogWriter writer(dir.path(), fast(4096));
    for (std::uint64_t lsn = 1; lsn <= 300; ++lsn) {
      commits.push_back(random_commit(rng, lsn));
      writer.write(commits.back().record());
    }
    EXPECT_EQ(writer.last_lsn(), 300u);
  }
  const auto segments = segments_of(dir.path());
  EXPECT_GT(segments.size(), 5u);
  EXPECT_EQ(segments.front().filename(), segment_file_name(1));
  RecoveryReport report;
  auto got = read_all(dir.path(), &report);
  expect_prefix(got, commits, commits.size());
  EXPECT_EQ(report.records, 300u);
  EXPECT_EQ(report.last_lsn, 300u);
  EXPECT_EQ(report.truncated_bytes, 0u);
}

TEST(Log, EveryCommitSyncPolicyWritesReadableRecords) {
  TempDir dir;
  std::mt19937_64 rng(8);
  std::vector<DecodedCommit> commits;
  {
    LogWriter writer(dir.path(), LogOptions{});
    for (std::uint64_t lsn = 1; lsn <= 5; ++lsn) {
      commits.push_back(random_commit(rng, lsn));
      writer.write(commits.back().record());
    }
    writer.sync();
  }
  expect_prefix(read_all(dir.path()), commits, 5);
}

TEST(Log, ReopenedWriterAppendsToTheLastSegment) {
  TempDir dir;
  auto commits = write_commits(dir.path(), 10, nullptr);
  std::mt19937_64 rng(99);
  {
    LogWriter writer(dir.path(), fast());
    EXPECT_EQ(writer.last_lsn(), 10u);
    EXPECT_EQ(writer.recovery().records, 10u);
    commits.push_back(random_commit(rng, 11));
    writer.write(commits.back().record());
  }
  EXPECT_EQ(segments_of(dir.path()).size(), 1u);
  expect_prefix(read_all(dir.path()), commits, 11);
}

TEST(Log, TornTailAtEveryOffsetOfTheLastRecordIsTruncatedAndAppendingContinues) {
  TempDir scratch;
  std::vector<std::uint64_t> offsets;
  const fs::path probe = scratch.path() / "probe";
  auto commits = write_commits(probe, 5, &offsets);
  const std::uint64_t start = offsets.back();
  const std::uint64_t end = fs::file_size(segments_of(probe).back());
  ASSERT_GT(end - start, kRecordHeaderBytes);
  std::mt19937_64 rng(5);
  const DecodedCommit extra = random_commit(rng, 6);

  for (std::uint64_t cut = start; cut < end; ++cut) {
    SCOPED_TRACE("cut at " + std::to_string(cut));
    const fs::path dir = scratch.path() / ("cut-" + std::to_string(cut));
    write_commits(dir, 5, nullptr);
    const fs::path segment = segments_of(dir).back();
    fs::resize_file(segment, cut);

    RecoveryReport report;
    expect_prefix(read_all(dir, &report), commits, 4);
    EXPECT_EQ(report.truncated_bytes, cut - start);
    {
      LogWriter writer(dir, fast());
      EXPECT_EQ(writer.recovery().truncated_bytes, cut - start);
      if (cut > start) {
        EXPECT_EQ(writer.recovery().truncated_segment, segment.filename().string());
      }
      EXPECT_EQ(writer.last_lsn(), 4u);
      EXPECT_EQ(fs::file_size(segment), start);
      writer.write(extra.record());
    }
    std::vector<DecodedCommit> want(commits.begin(), commits.begin() + 4);
    want.push_back(extra);
    RecoveryReport after;
    expect_prefix(read_all(dir, &after), want, 5);
    EXPECT_EQ(after.truncated_bytes, 0u);
    fs::remove_all(dir);
  }
}

// Damage in the middle of a log: both a LogReader and a LogWriter opening it refuse with Error(Corruption) whose
// message names each of `mentions`.
void expect_reader_and_writer_refuse(const fs::path& dir, const std::vector<std::string>& mentions) {
  for (const char* who : {"LogReader", "LogWriter"}) {
    SCOPED_TRACE(who);
    try {
      if (who == std::string("LogReader")) {
        read_all(dir);
      } else {
        LogWriter writer(dir, fast());
      }
      ADD_FAILURE() << "damage in the middle of the segment was not reported";
    } catch (const Error& e) {
      const std::string msg = e.what();
      EXPECT_EQ(e.code(), ErrorCode::Corruption) << msg;
      for (const std::string& m : mentions) EXPECT_NE(msg.find(m), std::string::npos) << "no '" << m << "' in " << msg;
    }
  }
}

TEST(Log, BitFlipInAMiddleRecordIsCorruptionNamingSegmentAndOffset) {
  TempDir dir;
  std::vector<std::uint64_t> offsets;
  write_commits(dir.path(), 10, &offsets);
  const fs::path segment = segments_of(dir.path()).back();
  flip_byte(segment, offsets[4] + kRecordHeaderBytes + 1);
  expect_reader_and_writer_refuse(
      dir.path(), {segment.filename().string(), "offset " + std::to_string(offsets[4]), "checksum mismatch"});
}

// A damaged length must never be trusted to find what follows: a reader that skipped `length` bytes and found
// garbage there would call the rest of the segment a torn tail and drop every committed record after it.
TEST(Log, FlippedLengthBitOfAMiddleRecordIsCorruptionNotATornTail) {
  for (int bit = 0; bit < 8; ++bit) {
    SCOPED_TRACE("bit " + std::to_string(bit));
    TempDir dir;
    std::vector<std::uint64_t> offsets;
    write_commits(dir.path(), 10, &offsets);
    const fs::path segment = segments_of(dir.path()).back();
    flip_byte(segment, offsets[3], static_cast<unsigned char>(1 << bit));  // the length field's first byte
    expect_reader_and_writer_refuse(
        dir.path(), {"offset " + std::to_string(offsets[3]), "last good LSN 3", "6 intact records follow"});
  }
}

// Without a close record (the writer crashed), damage to the last record is what a torn write leaves.
TEST(Log, BitFlipInTheLastRecordBodyOfACrashedWriterIsATornTail) {
  TempDir dir;
  std::vector<std::uint64_t> offsets;
  auto commits = write_commits(dir.path(), 10, &offsets);
  const fs::path segment = segments_of(dir.path()).back();
  const std::uint64_t size = fs::file_size(segment);
  flip_byte(segment, size - 1);
  RecoveryReport report;
  expect_prefix(read_all(dir.path(), &report), commits, 9);
  EXPECT_EQ(report.truncated_bytes, size - offsets[9]);
  EXPECT_EQ(report.truncated_offset, offsets[9]);
  {
    LogWriter writer(dir.path(), fast());
    EXPECT_EQ(writer.last_lsn(), 9u);
    EXPECT_EQ(fs::file_size(segment), offsets[9]);
  }
  // Closing appended the close record where the torn tail was.
  EXPECT_EQ(fs::file_size(segment), offsets[9] + kRecordHeaderBytes + kCloseBodyBytes);
  RecoveryReport closed;
  expect_prefix(read_all(dir.path(), &closed), commits, 9);
  EXPECT_TRUE(closed.closed_cleanly);
}

// A writer that closed cleanly left a close record after the last commit: damage to that commit is then followed
// by an intact record, so it is corruption, not a torn tail that could be cut away.
TEST(Log, BitFlipInTheLastCommitOfACleanlyClosedLogIsCorruption) {
  TempDir dir;
  std::vector<std::uint64_t> offsets;
  write_commits(dir.path(), 10, &offsets, 1, /*closed=*/true);
  const fs::path segment = segments_of(dir.path()).back();
  flip_byte(segment, offsets[9] + kRecordHeaderBytes + 2);
  try {
    read_all(dir.path());
    ADD_FAILURE() << "damage to the last committed record was taken for a torn tail";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::Corruption) << e.what();
    EXPECT_NE(std::string(e.what()).find("last good LSN 9; 0 intact records follow, then the record of a clean close"),
              std::string::npos)
        << e.what();
  }
}

TEST(Log, DamageInASegmentThatIsNotTheLastIsCorruption) {
  TempDir dir;
  {
    std::mt19937_64 rng(2);
    LogWriter writer(dir.path(), fast(1024));
    for (std::uint64_t lsn = 1; lsn <= 60; ++lsn) writer.write(random_commit(rng, lsn).record());
  }
  auto segments = segments_of(dir.path());
  ASSERT_GE(segments.size(), 3u);
  fs::resize_file(segments[1], fs::file_size(segments[1]) - 3);
  try {
    read_all(dir.path());
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::Corruption);
    EXPECT_NE(std::string(e.what()).find(segments[1].filename().string()), std::string::npos) << e.what();
  }
  EXPECT_EQ(error_code_of([&] { LogWriter writer(dir.path(), fast()); }), ErrorCode::Corruption);
}

TEST(Log, MissingDirectoryIsNotFound) {
  TempDir dir;
  EXPECT_EQ(error_code_of([&] { LogReader reader(dir.path() / "nope"); }), ErrorCode::NotFound);
}

TEST(Log, ForeignFilesAreIgnored) {
  TempDir dir;
  auto commits = write_commits(dir.path(), 3, nullptr);
  std::ofstream(dir.path() / "README.txt") << "hello";
  std::ofstream(dir.path() / "log-1.mmsb") << "not a segment name";
  expect_prefix(read_all(dir.path()), commits, 3);
}

TEST(Log, SegmentWithWrongMagicIsNotAnMmsbLog) {
  TempDir dir;
  write_commits(dir.path(), 3, nullptr);
  std::ofstream(dir.path() / segment_file_name(1000), std::ios::binary) << "GARBAGE!GARBAGE!GARBAGE!";
  try {
    read_all(dir.path());
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::Corruption);
    EXPECT_NE(std::string(e.what()).find("not an mmsb log"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find(segment_file_name(1000)), std::string::npos) << e.what();
  }
}

TEST(Log, OversizedRecordLengthIsCorruption) {
  TempDir dir;
  std::vector<std::uint64_t> offsets;
  write_commits(dir.path(), 3, &offsets);
  const fs::path segment = segments_of(dir.path()).back();
  flip_byte(segment, offsets[1] + 3);  // high byte of the length: > 64 MiB
  EXPECT_EQ(error_code_of([&] { read_all(dir.path()); }), ErrorCode::Corruption);
}

TEST(Log, EmptyLogReadsNothing) {
  TempDir dir;
  { LogWriter writer(dir.path() / "log", fast()); }
  RecoveryReport report;
  EXPECT_TRUE(read_all(dir.path() / "log", &report).empty());
  EXPECT_EQ(report.records, 0u);
  EXPECT_EQ(report.truncated_bytes, 0u);
}

TEST(Log, SegmentNamesStayIncreasingWhenLsnsArriveOutOfOrder) {
  TempDir dir;
  std::mt19937_64 rng(4);
  {
    LogWriter writer(dir.path(), fast(1));  // every record in its own segment
    for (std::uint64_t lsn : {10u, 5u, 11u}) writer.write(random_commit(rng, lsn).record());
    EXPECT_EQ(writer.last_lsn(), 11u);
  }
  auto segments = segments_of(dir.path());
  ASSERT_EQ(segments.size(), 3u);
  EXPECT_EQ(segments[0].filename(), segment_file_name(10));
  EXPECT_EQ(segments[1].filename(), segment_file_name(11));
  EXPECT_EQ(segments[2].filename(), segment_file_name(12));
  auto got = read_all(dir.path());
  ASSERT_EQ(got.size(), 3u);
  EXPECT_EQ(got[0].lsn, 10u);
  EXPECT_EQ(got[1].lsn, 5u);
  EXPECT_EQ(got[2].lsn, 11u);
}

TEST(Log, ConcurrentCommitsOnDisjointPagesAreAllLogged) {
  TempDir dir;
  Runtime rt;
  rt.set_commit_sink(std::make_shared<LogWriter>(dir.path(), fast(8192)));
  constexpr int kThreads = 4;
  constexpr int kCommits = 200;
  std::vector<PageId> pages;
  for (int t = 0; t < kThreads; ++t) pages.push_back(rt.create_page(64));
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 1; i <= kCommits; ++i)
        mmsb::testing::commit_u64(rt, pages[static_cast<std::size_t>(t)], 0, static_cast<std::uint64_t>(i));
    });
  }
  for (auto& th : threads) th.join();
  rt.set_commit_sink(nullptr);
  std::map<PageId, std::uint64_t> last_epoch;
  std::set<std::uint64_t> lsns;
  for (const DecodedCommit& c : read_all(dir.path())) {
    EXPECT_TRUE(lsns.insert(c.lsn).second) << c.lsn;
    for (const Delta& d : c.deltas) {
      EXPECT_EQ(d.base_epoch, last_epoch[d.page]) << d.page.to_string();  // per page, in epoch order
      last_epoch[d.page] = d.target_epoch();
    }
  }
  EXPECT_EQ(lsns.size(), static_cast<std::size_t>(kThreads + kThreads * kCommits));
  for (PageId p : pages) EXPECT_EQ(last_epoch[p], static_cast<std::uint64_t>(kCommits));
}

TEST(Log, RuntimeCommitsReplayOntoFreshPages) {
  TempDir dir;
  Runtime rt;
  auto log = std::make_shared<LogWriter>(dir.path(), fast(2048));
  rt.set_commit_sink(log);
  std::mt19937_64 rng(17);
  std::vector<PageId> pages;
  for (int i = 0; i < 6; ++i) pages.push_back(rt.create_page(64 + 32 * static_cast<std::uint64_t>(i)));
  for (int i = 0; i < 200; ++i) {
    auto txn = rt.begin();
    const std::size_t touched = 1 + rng() % 3;
    for (std::size_t k = 0; k < touched; ++k) {
      PageId p = pages[rng() % pages.size()];
      const std::uint64_t size = rt.info(p).size;
      if (size < 8) continue;
      txn.write_value<std::uint64_t>(p, (rng() % (size - 7)), rng());
    }
    txn.commit();
    if (i % 50 == 25) rt.resize_page(pages[rng() % pages.size()], 16 + rng() % 200);
  }
  rt.delete_page(pages[2]);
  pages.push_back(rt.create_page(100, Location::Both));
  mmsb::testing::commit_u64(rt, pages.back(), 8, 12345);
  rt.set_commit_sink(nullptr);
  EXPECT_EQ(log->last_lsn(), rt.last_lsn());
  log.reset();

  std::map<PageId, std::vector<std::byte>> replayed;
  LogReader reader(dir.path());
  std::uint64_t previous = 0;
  for (DecodedCommit c; reader.next(c);) {
    EXPECT_GT(c.lsn, previous);
    previous = c.lsn;
    for (const auto& created : c.created) replayed[created.id].assign(created.size, std::byte{0});
    for (const Delta& d : c.deltas) {
      ASSERT_TRUE(replayed.count(d.page)) << d.page.to_string();
      mmsb::apply(d, replayed[d.page]);
    }
    for (PageId id : c.deleted) replayed.erase(id);
  }
  EXPECT_GT(reader.segments().size(), 2u);
  ASSERT_EQ(replayed.size(), rt.page_count());
  for (const auto& [id, bytes] : replayed) {
    ASSERT_TRUE(rt.contains(id)) << id.to_string();
    EXPECT_EQ(bytes, rt.read_all(id)) << id.to_string();
  }
  EXPECT_FALSE(replayed.count(pages[2]));
}

TEST(Log, GroupCommitLandsEveryRecordWithFewerSyncsThanCommits) {
  TempDir dir;
  constexpr int kThreads = 8;
  constexpr int kCommits = 500;
  LogWriter writer(dir.path(), LogOptions{});  // SyncPolicy::EveryCommit
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      std::mt19937_64 rng(static_cast<std::uint64_t>(100 + t));
      for (int i = 0; i < kCommits; ++i) {
        const auto lsn = static_cast<std::uint64_t>(t * kCommits + i + 1);
        writer.write(random_commit(rng, lsn).record());
      }
    });
  }
  for (auto& th : threads) th.join();
  const LogStats stats = writer.stats();
  EXPECT_EQ(stats.records, static_cast<std::uint64_t>(kThreads * kCommits));
  EXPECT_GT(stats.syncs, 0u);
  EXPECT_LT(stats.syncs, static_cast<std::uint64_t>(kThreads * kCommits));
  EXPECT_EQ(writer.last_lsn(), static_cast<std::uint64_t>(kThreads * kCommits));
  std::set<std::uint64_t> lsns;
  for (const DecodedCommit& c : read_all(dir.path())) EXPECT_TRUE(lsns.insert(c.lsn).second) << c.lsn;
  EXPECT_EQ(lsns.size(), static_cast<std::size_t>(kThreads * kCommits));
  EXPECT_EQ(*lsns.begin(), 1u);
  EXPECT_EQ(*lsns.rbegin(), static_cast<std::uint64_t>(kThreads * kCommits));
}

TEST(Log, GroupCommitAcrossSegmentRollsThroughARuntime) {
  TempDir dir;
  Runtime rt;
  auto log = std::make_shared<LogWriter>(dir.path(), options_of(4096, SyncPolicy::EveryCommit));
  rt.set_commit_sink(log);
  constexpr int kThreads = 4;
  constexpr int kCommits = 100;
  std::vector<PageId> pages;
  for (int t = 0; t < kThreads; ++t) pages.push_back(rt.create_page(64));
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 1; i <= kCommits; ++i)
        mmsb::testing::commit_u64(rt, pages[static_cast<std::size_t>(t)], 0, static_cast<std::uint64_t>(i));
    });
  }
  for (auto& th : threads) th.join();
  rt.set_commit_sink(nullptr);
  EXPECT_EQ(log->stats().records, static_cast<std::uint64_t>(kThreads + kThreads * kCommits));
  log.reset();
  EXPECT_GT(segments_of(dir.path()).size(), 2u);
  std::set<std::uint64_t> lsns;
  for (const DecodedCommit& c : read_all(dir.path())) EXPECT_TRUE(lsns.insert(c.lsn).second) << c.lsn;
  EXPECT_EQ(lsns.size(), static_cast<std::size_t>(kThreads + kThreads * kCommits));
}

LogOptions interval(std::chrono::milliseconds every, std::uint64_t segment_bytes = std::uint64_t{64} << 20) {
  LogOptions o;
  o.segment_bytes = segment_bytes;
  o.sync = SyncPolicy::Interval;
  o.sync_interval = every;
  return o;
}

TEST(Log, IntervalPolicyRecordsAreReadableAfterSync) {
  TempDir dir;
  std::mt19937_64 rng(5);
  std::vector<DecodedCommit> want;
  LogWriter writer(dir.path(), interval(std::chrono::hours(1)));  // the thread never fires during the test
  for (std::uint64_t lsn = 1; lsn <= 50; ++lsn) {
    want.push_back(random_commit(rng, lsn));
    writer.write(want.back().record());
  }
  writer.sync();
  auto got = read_all(dir.path());
  ASSERT_EQ(got.size(), want.size());
  expect_prefix(got, want, want.size());
  EXPECT_GE(writer.stats().syncs, 1u);
  EXPECT_EQ(writer.stats().records, 50u);
}

TEST(Log, IntervalPolicyDestructorSyncsTheRest) {
  TempDir dir;
  std::mt19937_64 rng(6);
  std::vector<DecodedCommit> want;
  {
    LogWriter writer(dir.path(), interval(std::chrono::hours(1), 2048));  // rolls flush the buffer too
    for (std::uint64_t lsn = 1; lsn <= 200; ++lsn) {
      want.push_back(random_commit(rng, lsn));
      writer.write(want.back().record());
    }
  }
  RecoveryReport report;
  auto got = read_all(dir.path(), &report);
  ASSERT_EQ(got.size(), want.size());
  expect_prefix(got, want, want.size());
  EXPECT_EQ(report.truncated_bytes, 0u);
  EXPECT_GT(segments_of(dir.path()).size(), 2u);
}

TEST(Log, IntervalThreadSyncsOnItsOwn) {
  TempDir dir;
  std::mt19937_64 rng(7);
  constexpr auto kEvery = std::chrono::milliseconds(10);
  LogWriter writer(dir.path(), interval(kEvery));
  for (std::uint64_t lsn = 1; lsn <= 20; ++lsn) writer.write(random_commit(rng, lsn).record());
  // Records are buffered until the thread's sync writes them out; no sync() call here. Wait ~3 intervals, longer
  // on a loaded machine.
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  std::this_thread::sleep_for(3 * kEvery);
  while (read_all(dir.path()).size() < 20 && std::chrono::steady_clock::now() < deadline)
    std::this_thread::sleep_for(kEvery);
  EXPECT_EQ(read_all(dir.path()).size(), 20u);
  EXPECT_GT(writer.stats().syncs, 0u);
  // Once everything is synced, an idle writer does not sync again.
  std::this_thread::sleep_for(3 * kEvery);
  const std::uint64_t syncs = writer.stats().syncs;
  std::this_thread::sleep_for(3 * kEvery);
  EXPECT_EQ(writer.stats().syncs, syncs);
}

TEST(Log, IntervalRequiresAPositiveInterval) {
  TempDir dir;
  EXPECT_EQ(error_code_of([&] { LogWriter w(dir.path(), interval(std::chrono::milliseconds(0))); }),
            ErrorCode::InvalidArgument);
}

}  // namespace
}  // namespace mmsb::serialize
