// Which files make the state: MANIFEST lists the log's segments, so a missing first, middle or last segment, a
// sealed segment cut short, or a file that does not belong is found; only regular files are read, and their size
// is checked first (docs/formats.md, "Manifest").
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <csignal>
#include <filesystem>
#include <functional>
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
using testing::error_code_of;
using testing::read_file;
using testing::TempDir;
using testing::write_file;

DurableOptions small_segments() {
  DurableOptions o;
  o.sync = SyncPolicy::None;
  o.segment_bytes = 256;
  return o;
}

// A directory of several segments (each holding a few commits); returns its final state hash.
std::uint64_t write_segments(const fs::path& dir, bool checkpoint_first = false) {
  DurableRuntime db(dir, small_segments());
  Runtime& rt = db.runtime();
  PageId p = rt.create_page(8), q = rt.create_page(8);
  for (int i = 0; i < 8; ++i) commit_i64(rt, p, i);
  if (checkpoint_first) db.checkpoint();
  for (int i = 0; i < 30; ++i) commit_i64(rt, i % 2 ? p : q, 100 + i);
  return state_hash(rt);
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

// What opening `dir` says, as the message of the Corruption error (empty when it opens).
std::string refusal(const fs::path& dir) {
  try {
    DurableRuntime db(dir, small_segments());
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::Corruption) << e.what();
    return e.what();
  }
  return {};
}

OfflineOptions mode(RecoveryMode m) {
  OfflineOptions o;
  o.recovery_mode = m;
  return o;
}

TEST(Manifest, AMissingFirstMiddleOrLastSegmentIsCorruptionNamingIt) {
  for (const char* which : {"first", "middle", "last"}) {
    SCOPED_TRACE(which);
    TempDir dir;
    write_segments(dir.path());
    const auto segments = segments_in(dir.path());
    ASSERT_GE(segments.size(), 4u);
    const fs::path gone = std::string(which) == "first"    ? segments.front()
                          : std::string(which) == "middle" ? segments[segments.size() / 2]
                                                           : segments.back();
    fs::remove(gone);
    const std::string why = refusal(dir.path());
    EXPECT_NE(why.find(gone.filename().string()), std::string::npos) << why;
    EXPECT_NE(why.find("missing"), std::string::npos) << why;
    const VerifyReport v = verify(dir.path());
    EXPECT_FALSE(v.ok);
    ASSERT_FALSE(v.problems.empty());
    EXPECT_EQ(v.problems[0].file, gone);
    // PointInTime opens at the last LSN before the gap, and says so.
    std::uint64_t reached = 0;
    load_state(dir.path(), ReplayTarget::end(), &reached, {}, mode(RecoveryMode::PointInTime));
    const DirectorySummary s = inspect(dir.path(), mode(RecoveryMode::PointInTime));
    ASSERT_EQ(s.damage.size(), 1u);
    EXPECT_EQ(s.damage[0].file, gone);
    EXPECT_EQ(s.damage[0].last_good_lsn, reached);
  }
}

TEST(Manifest, ASealedSegmentCutAtARecordBoundaryIsCorruption) {
  TempDir dir;
  write_segments(dir.path());
  const auto segments = segments_in(dir.path());
  ASSERT_GE(segments.size(), 3u);
  // Cut the first segment right after its first record: the framing alone would see a clean, shorter segment.
  const std::string bytes = read_file(segments[0]);
  const serialize::SegmentScan scan = serialize::scan_segment(bytes, false);
  ASSERT_GE(scan.records.size(), 2u);
  fs::resize_file(segments[0], scan.records[0].end);
  const std::string why = refusal(dir.path());
  EXPECT_NE(why.find(segments[0].filename().string()), std::string::npos) << why;
  EXPECT_NE(why.find("sealed at " + std::to_string(bytes.size())), std::string::npos) << why;
}

TEST(Manifest, ASegmentThatIsNotListedIsCorruptionAndLeftoversOfACrashAreRemoved) {
  TempDir dir;
  const std::uint64_t hash = write_segments(dir.path(), /*checkpoint_first=*/true);
  auto segments = segments_in(dir.path());
  ASSERT_GE(segments.size(), 3u);
  // What a crash leaves: a segment below the first listed one (its removal was interrupted) and an empty segment
  // after the last (its creation was interrupted before the manifest listed it). Neither is part of the log.
  std::uint64_t first_key = 0, last_key = 0;
  serialize::parse_segment_name(segments.front().filename().string(), first_key);
  serialize::parse_segment_name(segments.back().filename().string(), last_key);
  ASSERT_GT(first_key, 1u);
  const fs::path below = dir.path() / serialize::segment_file_name(1);
  const fs::path after = dir.path() / serialize::segment_file_name(last_key + 100);
  write_file(below, read_file(segments.front()));
  write_file(after, serialize::segment_header_bytes());
  {
    DurableRuntime db(dir.path(), small_segments());
    EXPECT_EQ(state_hash(db.runtime()), hash);
  }
  EXPECT_FALSE(fs::exists(below));
  EXPECT_FALSE(fs::exists(after));
  // A segment with records between listed ones does not belong.
  segments = segments_in(dir.path());
  std::uint64_t k0 = 0, k1 = 0;
  serialize::parse_segment_name(segments[0].filename().string(), k0);
  serialize::parse_segment_name(segments[1].filename().string(), k1);
  ASSERT_GT(k1, k0 + 1);
  const fs::path stranger = dir.path() / serialize::segment_file_name(k0 + 1);
  write_file(stranger, read_file(segments[0]));
  const std::string why = refusal(dir.path());
  EXPECT_NE(why.find(stranger.filename().string()), std::string::npos) << why;
  EXPECT_NE(why.find("not listed in MANIFEST"), std::string::npos) << why;
}

TEST(Manifest, AMissingManifestRefusesAndRepairWritesItAgain) {
  TempDir dir;
  const std::uint64_t hash = write_segments(dir.path());
  fs::remove(dir.path() / serialize::kManifestName);
  const std::string why = refusal(dir.path());
  EXPECT_NE(why.find("MANIFEST is missing"), std::string::npos) << why;
  EXPECT_FALSE(verify(dir.path()).ok);
  const RepairReport r = repair(dir.path());
  EXPECT_EQ(r.records_dropped, 1u) << "the missing manifest is the one problem reported";
  EXPECT_TRUE(fs::exists(dir.path() / serialize::kManifestName));
  EXPECT_TRUE(verify(dir.path()).ok);
  DurableRuntime db(dir.path(), small_segments());
  EXPECT_EQ(state_hash(db.runtime()), hash);
}

// Runs `f` in a child process that must finish within `seconds`; returns its exit status (or -signal; 124 when it
// had to be killed because it hung).
int in_child(const std::function<int()>& f, unsigned seconds = 20) {
  const pid_t pid = ::fork();
  if (pid == 0) {
    int code = 3;
    try {
      code = f();
    } catch (...) {
      code = 4;
    }
    ::_exit(code);
  }
  for (unsigned waited = 0; waited < seconds * 10; ++waited) {
    int status = 0;
    if (::waitpid(pid, &status, WNOHANG) == pid) {
      return WIFEXITED(status) ? WEXITSTATUS(status) : -WTERMSIG(status);
    }
    ::usleep(100 * 1000);
  }
  ::kill(pid, SIGKILL);
  ::waitpid(pid, nullptr, 0);
  return 124;
}

// 0: refused with Corruption; 1: opened; 2: another error.
int outcome(const std::function<void()>& f) {
  try {
    f();
    return 1;
  } catch (const Error& e) {
    return e.code() == ErrorCode::Corruption ? 0 : 2;
  }
}

TEST(Manifest, AFifoOrALinkToDevZeroNamedLikeALogFileNeitherHangsNorIsRead) {
  struct Case {
    const char* what;
    std::function<void(const fs::path&)> plant;
  };
  const std::vector<Case> cases = {
      {"a FIFO as the last segment",
       [](const fs::path& dir) {
         const fs::path last = segments_in(dir).back();
         fs::remove(last);
         ASSERT_EQ(::mkfifo(last.c_str(), 0644), 0);
       }},
      {"a link to /dev/zero as the last segment",
       [](const fs::path& dir) {
         const fs::path last = segments_in(dir).back();
         fs::remove(last);
         fs::create_symlink("/dev/zero", last);
       }},
      {"a FIFO as MANIFEST",
       [](const fs::path& dir) {
         fs::remove(dir / serialize::kManifestName);
         ASSERT_EQ(::mkfifo((dir / serialize::kManifestName).c_str(), 0644), 0);
       }},
      {"a link to /dev/zero as a checkpoint",
       [](const fs::path& dir) { fs::create_symlink("/dev/zero", dir / "checkpoint-00000000000000099999.mmsb"); }},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.what);
    TempDir dir;
    write_segments(dir.path());
    c.plant(dir.path());
    EXPECT_EQ(in_child([&] { return outcome([&] { DurableRuntime db(dir.path(), small_segments()); }); }), 0);
    EXPECT_EQ(in_child([&] { return outcome([&] { inspect(dir.path()); }); }), 0);
    EXPECT_EQ(in_child([&] { return outcome([&] { load_state(dir.path()); }); }), 0);
    EXPECT_EQ(in_child([&] { return verify(dir.path()).ok ? 1 : 0; }), 0);
  }
}

}  // namespace
}  // namespace mmsb
