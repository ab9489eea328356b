// The `mmsb` tool end to end: each test writes a durable directory with DurableRuntime, runs the tool binary on
// it as a child process, and checks its exit code and output against what was written (not against what the
// library's readers say, where an independent record exists).
#include <gtest/gtest.h>
#include <sys/stat.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <fcntl.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include "mmsb/durable.hpp"
#include "mmsb/mmsb.hpp"
#include "support/test_support.hpp"

extern char** environ;

namespace mmsb {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

struct Outcome {
  int code = -1;  // exit status; 128 + signal when killed
  std::string out, err;
};

std::string read_file(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// Runs `args` (args[0] is the program's path) with stdin from /dev/null and stdout/stderr in files of `scratch`.
Outcome run_process(const std::vector<std::string>& args, const fs::path& scratch) {
  const fs::path out_file = scratch / "stdout.txt", err_file = scratch / "stderr.txt";
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, STDIN_FILENO, "/dev/null", O_RDONLY, 0);
  posix_spawn_file_actions_addopen(&actions, STDOUT_FILENO, out_file.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  posix_spawn_file_actions_addopen(&actions, STDERR_FILENO, err_file.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  std::vector<char*> argv;
  for (const auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  pid_t pid = -1;
  int rc = ::posix_spawnp(&pid, argv[0], &actions, nullptr, argv.data(), environ);
  posix_spawn_file_actions_destroy(&actions);
  if (rc != 0) throw std::runtime_error("posix_spawn " + args[0] + " failed: " + std::strerror(rc));
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  Outcome result;
  result.code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  result.out = read_file(out_file);
  result.err = read_file(err_file);
  return result;
}

std::vector<std::string> lines_of(const std::string& text) {
  std::vector<std::string> lines;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) lines.push_back(line);
  return lines;
}

std::string describe(const Outcome& o) {
  return "exit " + std::to_string(o.code) + "\n--- stdout:\n" + o.out + "--- stderr:\n" + o.err;
}

std::string hex_of(std::span<const std::byte> bytes) {
  static constexpr char kDigits[] = "0123456789abcdef";
  std::string out;
  for (std::byte b : bytes) {
    out.push_back(kDigits[std::to_integer<unsigned>(b) >> 4]);
    out.push_back(kDigits[std::to_integer<unsigned>(b) & 0xf]);
  }
  return out;
}

std::uint64_t now_ns() {
  return static_cast<std::uint64_t>(
      std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::system_clock::now().time_since_epoch())
          .count());
}

// ISO-8601 UTC with nanoseconds, formatted here with gmtime_r rather than by the tool's own code.
std::string iso_utc(std::uint64_t unix_ns) {
  std::time_t seconds = static_cast<std::time_t>(unix_ns / 1'000'000'000);
  std::tm tm{};
  ::gmtime_r(&seconds, &tm);
  char text[64];
  std::strftime(text, sizeof text, "%Y-%m-%dT%H:%M:%S", &tm);
  char fraction[16];
  std::snprintf(fraction, sizeof fraction, ".%09llu", static_cast<unsigned long long>(unix_ns % 1'000'000'000));
  return std::string(text) + fraction + "Z";
}

// One change of a page as the test made it, for comparison with `history`.
struct ExpectedChange {
  std::string kind;
  std::uint64_t lsn = 0, epoch = 0, size = 0;
  std::string intent;
  std::uint32_t source = 0;
  std::vector<ByteRange> ranges;
};

// What a workload wrote, recorded as it was written.
struct Written {
  std::vector<std::uint64_t> lsns;                    // every record's LSN, in order
  std::map<std::uint64_t, std::uint64_t> hash_at;     // LSN -> state_hash() right after that record
  std::map<std::uint64_t, std::set<PageId>> live_at;  // LSN -> live pages right after it
  std::uint64_t deltas = 0, payload_bytes = 0, pages_created = 0, pages_deleted = 0;
  std::uint64_t started_ns = 0, finished_ns = 0;  // wall clock around the whole workload
  std::map<PageId, std::vector<ExpectedChange>> history;
  PageId counter, blob, temp, grown;
  std::map<std::uint64_t, std::uint64_t> counter_lsn;  // counter value -> LSN of the commit that wrote it
};

class Recorder {
 public:
  Recorder(DurableRuntime& db, Written& w) : db_(db), w_(w) {}

  PageId create(std::uint64_t size) {
    PageId id = db_.runtime().create_page(size);
    ++w_.pages_created;
    w_.history[id].push_back({"created", record(), 0, size, "", 0, {}});
    return id;
  }
  void remove(PageId id) {
    const std::uint64_t epoch = db_.runtime().info(id).epoch;
    db_.runtime().delete_page(id);
    ++w_.pages_deleted;
    w_.history[id].push_back({"deleted", record(), epoch, 0, "", 0, {}});
  }
  std::uint64_t resize(PageId id, std::uint64_t size) {
    db_.runtime().resize_page(id, size);
    ++w_.deltas;  // a resize is a delta without ranges
    const std::uint64_t lsn = record();
    w_.history[id].push_back({"changed", lsn, db_.runtime().info(id).epoch, size, "", 0, {}});
    return lsn;
  }
  std::uint64_t commit(Transaction& txn) {
    txn.commit();
    const std::uint64_t lsn = record();
    for (const Delta& d : txn.committed_deltas()) {
      ++w_.deltas;
      w_.payload_bytes += d.payload.size();
      w_.history[d.page].push_back({"changed", lsn, d.target_epoch(), d.size, d.intent, d.source, d.ranges});
    }
    return lsn;
  }

 private:
  std::uint64_t record() {
    Runtime& rt = db_.runtime();
    const std::uint64_t lsn = rt.last_lsn();  // one thread: the LSN of the operation just done
    w_.lsns.push_back(lsn);
    w_.hash_at[lsn] = state_hash(rt);
    return lsn;
  }
  DurableRuntime& db_;
  Written& w_;
};

DurableOptions small_segments() {
  DurableOptions options;
  options.sync = SyncPolicy::None;  // the destructor syncs; nothing here crashes
  options.segment_bytes = 2048;     // several segments from a small workload
  return options;
}

// Four pages: a counter written 30 times, a blob changed every 10th time, a page created, written and deleted,
// and a page resized and then written.
Written write_workload(const fs::path& dir) {
  Written w;
  w.started_ns = now_ns();
  {
    DurableRuntime db(dir, small_segments());
    Recorder rec(db, w);
    w.counter = rec.create(8);
    w.blob = rec.create(256);
    w.temp = rec.create(16);
    w.grown = rec.create(32);
    for (std::uint64_t i = 1; i <= 30; ++i) {
      auto txn = db.runtime().begin();
      txn.write_value<std::uint64_t>(w.counter, 0, i);
      if (i % 10 == 0) {
        const std::string text = "blob@" + std::to_string(i);
        txn.write(w.blob, i, std::as_bytes(std::span(text)));
        txn.set_intent("count+blob");
      } else {
        txn.set_intent("count");
      }
      txn.set_source(static_cast<std::uint32_t>(i % 3));
      w.counter_lsn[i] = rec.commit(txn);
      if (i == 15) {
        auto t = db.runtime().begin();
        t.write_value<std::uint64_t>(w.temp, 8, 0xfeedfacecafebeefULL);
        t.set_intent("temp");
        rec.commit(t);
        rec.remove(w.temp);
      }
      if (i == 20) {
        rec.resize(w.grown, 100);
        auto t = db.runtime().begin();
        const std::byte tail[] = {std::byte{1}, std::byte{2}, std::byte{3}};
        t.write(w.grown, 90, tail);
        t.set_intent("grow");
        t.set_source(9);
        rec.commit(t);
      }
    }
  }
  w.finished_ns = now_ns();
  return w;
}

class ToolTest : public ::testing::Test {
 protected:
  // Under the asan preset the tool inherits LSAN_OPTIONS with a suppressions file, and LeakSanitizer then lists
  // the suppressions it used on stderr at exit, which the tests read as the tool's own output. A real leak still
  // fails the tool's exit status.
  static void SetUpTestSuite() {
    if (const char* lsan = std::getenv("LSAN_OPTIONS")) {
      ::setenv("LSAN_OPTIONS", (std::string(lsan) + ":print_suppressions=0").c_str(), 1);
    }
  }

  void SetUp() override {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    root_ = fs::temp_directory_path() / ("mmsb-tool-test-" + std::to_string(::getpid()) + "-" + info->name());
    fs::remove_all(root_);
    fs::create_directories(root_ / "scratch");
  }
  void TearDown() override {
    if (HasFailure()) {
      std::fprintf(stderr, "kept the test's files in %s\n", root_.c_str());
    } else {
      fs::remove_all(root_);
    }
  }

  Outcome mmsb(std::vector<std::string> args) {
    args.insert(args.begin(), MMSB_TOOL_BINARY);
    return run_process(args, root_ / "scratch");
  }

  // Runs the tool, expects exit 0 and an empty stderr, and parses stdout as JSON after python's json.tool has
  // accepted it (an independent check that the hand-written JSON is valid).
  json mmsb_json(std::vector<std::string> args) {
    Outcome o = mmsb(args);
    EXPECT_EQ(o.code, 0) << describe(o);
    EXPECT_EQ(o.err, "") << describe(o);
    const fs::path file = root_ / "scratch" / "output.json";
    std::ofstream(file, std::ios::binary) << o.out;
    Outcome check = run_process({"python3", "-m", "json.tool", file.string()}, root_ / "scratch");
    EXPECT_EQ(check.code, 0) << "python3 -m json.tool refused the output:\n" << o.out << "\n" << check.err;
    return json::parse(o.out);
  }

  fs::path root_;
};

std::set<PageId> ids_in_dump(const json& dump) {
  std::set<PageId> ids;
  for (const auto& p : dump["pages"]) ids.insert(PageId(p["value"].get<std::uint64_t>()));
  return ids;
}

// --- info and stats ----------------------------------------------------------------------------------------

TEST_F(ToolTest, InfoCountsTheRecordsLsnsTimesAndSegmentsThatWereWritten) {
  const fs::path dir = root_ / "db";
  const Written w = write_workload(dir);
  const json info = mmsb_json({"info", dir.string(), "--json"});

  EXPECT_EQ(info["records"].get<std::uint64_t>(), w.lsns.size());
  EXPECT_EQ(info["first_lsn"].get<std::uint64_t>(), w.lsns.front());
  EXPECT_EQ(info["last_lsn"].get<std::uint64_t>(), w.lsns.back());
  EXPECT_EQ(info["checkpoints"].size(), 0u);
  EXPECT_EQ(info["deltas"].get<std::uint64_t>(), w.deltas);
  EXPECT_EQ(info["payload_bytes"].get<std::uint64_t>(), w.payload_bytes);
  EXPECT_EQ(info["pages_created"].get<std::uint64_t>(), w.pages_created);
  EXPECT_EQ(info["pages_deleted"].get<std::uint64_t>(), w.pages_deleted);
  EXPECT_GE(info["first_timestamp_ns"].get<std::uint64_t>(), w.started_ns);
  EXPECT_LE(info["last_timestamp_ns"].get<std::uint64_t>(), w.finished_ns);

  // 2 KiB segments: the workload spans several, each a real file of the reported size.
  ASSERT_GT(info["segments"].size(), 1u);
  std::uint64_t records = 0, bytes = 0;
  for (const auto& seg : info["segments"]) {
    const fs::path file = seg["file"].get<std::string>();
    ASSERT_TRUE(fs::exists(file.is_absolute() ? file : dir / file)) << file;
    EXPECT_EQ(fs::file_size(file.is_absolute() ? file : dir / file), seg["bytes"].get<std::uint64_t>());
    records += seg["records"].get<std::uint64_t>();
    bytes += seg["bytes"].get<std::uint64_t>();
  }
  EXPECT_EQ(records, w.lsns.size());
  EXPECT_EQ(info["segment_bytes"].get<std::uint64_t>(), bytes);

  const Outcome text = mmsb({"info", dir.string()});
  ASSERT_EQ(text.code, 0) << describe(text);
  EXPECT_NE(text.out.find("records      " + std::to_string(w.lsns.size())), std::string::npos) << text.out;
  EXPECT_NE(text.out.find("LSN range    " + std::to_string(w.lsns.front()) + ".." + std::to_string(w.lsns.back())),
            std::string::npos)
      << text.out;
}

TEST_F(ToolTest, InfoListsTheCheckpointAndDumpShowsStateFromCheckpointPlusLog) {
  const fs::path dir = root_ / "db";
  PageId a, b;
  std::uint64_t checkpoint_lsn = 0, last_lsn = 0, hash = 0;
  {
    DurableRuntime db(dir, small_segments());
    Runtime& rt = db.runtime();
    a = rt.create_page(8);
    b = rt.create_page(8);
    testing::commit_u64(rt, a, 0, 11);
    checkpoint_lsn = db.checkpoint().lsn;
    EXPECT_EQ(checkpoint_lsn, rt.last_lsn());
    testing::commit_u64(rt, b, 0, 22);
    last_lsn = rt.last_lsn();
    hash = state_hash(rt);
  }
  const json info = mmsb_json({"info", dir.string(), "--json"});
  ASSERT_EQ(info["checkpoints"].size(), 1u);
  EXPECT_EQ(info["checkpoints"][0]["lsn"].get<std::uint64_t>(), checkpoint_lsn);
  EXPECT_EQ(info["checkpoints"][0]["pages"].get<std::uint64_t>(), 2u);
  EXPECT_EQ(info["last_lsn"].get<std::uint64_t>(), last_lsn);

  const json stats = mmsb_json({"stats", dir.string(), "--json"});
  EXPECT_EQ(stats["records"].get<std::uint64_t>(), 1u) << "only the commit after the checkpoint is in the log";

  const json dump = mmsb_json({"dump", dir.string(), "--json"});
  EXPECT_EQ(dump["lsn"].get<std::uint64_t>(), last_lsn);
  EXPECT_EQ(ids_in_dump(dump), (std::set<PageId>{a, b}));
  for (const auto& p : dump["pages"]) {
    const std::uint64_t value = PageId(p["value"].get<std::uint64_t>()) == a ? 11 : 22;
    EXPECT_EQ(p["hex"].get<std::string>(), hex_of(std::as_bytes(std::span(&value, 1))));
  }
  EXPECT_EQ(state_hash(*load_state(dir)), hash);

  // History before the checkpoint was compacted away: the tool says so instead of inventing a state.
  const Outcome early = mmsb({"replay", dir.string(), "--to-lsn", "1", "--out", (root_ / "early").string()});
  EXPECT_EQ(early.code, 2) << describe(early);
  EXPECT_EQ(lines_of(early.err).size(), 1u) << describe(early);
  EXPECT_EQ(early.err.rfind("mmsb: ", 0), 0u) << describe(early);
}

TEST_F(ToolTest, StatsCountsRecordsDeltasPayloadAndPagesCreatedAndDeleted) {
  const fs::path dir = root_ / "db";
  const Written w = write_workload(dir);
  const json stats = mmsb_json({"stats", dir.string(), "--json", "--buckets", "4"});
  EXPECT_EQ(stats["records"].get<std::uint64_t>(), w.lsns.size());
  EXPECT_EQ(stats["deltas"].get<std::uint64_t>(), w.deltas);
  EXPECT_EQ(stats["payload_bytes"].get<std::uint64_t>(), w.payload_bytes);
  EXPECT_EQ(stats["pages_created"].get<std::uint64_t>(), w.pages_created);
  EXPECT_EQ(stats["pages_deleted"].get<std::uint64_t>(), w.pages_deleted);
  EXPECT_EQ(stats["resizes"].get<std::uint64_t>(), 1u);
  EXPECT_EQ(stats["first_lsn"].get<std::uint64_t>(), w.lsns.front());
  EXPECT_EQ(stats["last_lsn"].get<std::uint64_t>(), w.lsns.back());
  EXPECT_EQ(stats["deltas_by_intent"]["count"].get<std::uint64_t>(), 27u);
  EXPECT_EQ(stats["deltas_by_intent"]["count+blob"].get<std::uint64_t>(), 6u);  // counter and blob, 3 times
  EXPECT_EQ(stats["deltas_by_intent"]["temp"].get<std::uint64_t>(), 1u);
  EXPECT_EQ(stats["deltas_by_intent"]["grow"].get<std::uint64_t>(), 1u);

  ASSERT_EQ(stats["rate"].size(), 4u);
  std::uint64_t bucketed = 0;
  for (const auto& b : stats["rate"]) bucketed += b["records"].get<std::uint64_t>();
  EXPECT_EQ(bucketed, w.lsns.size()) << "every record falls in one bucket";
  EXPECT_GT(stats["records_per_second"].get<double>(), 0.0);

  const Outcome text = mmsb({"stats", dir.string()});
  ASSERT_EQ(text.code, 0) << describe(text);
  EXPECT_NE(text.out.find("pages deleted    1"), std::string::npos) << text.out;
  EXPECT_NE(text.out.find("records/s"), std::string::npos) << text.out;
}

// --- verify and repair -------------------------------------------------------------------------------------

// 40 pages created, then each written once: dropping one write breaks no later record, so repair can succeed.
struct FlatLog {
  std::vector<PageId> pages;
  std::uint64_t records = 0;
};

FlatLog write_flat_log(const fs::path& dir) {
  FlatLog log;
  DurableOptions options;
  options.sync = SyncPolicy::None;
  DurableRuntime db(dir, options);
  Runtime& rt = db.runtime();
  for (int i = 0; i < 40; ++i) log.pages.push_back(rt.create_page(64));
  for (std::size_t i = 0; i < log.pages.size(); ++i) {
    auto txn = rt.begin();
    std::vector<std::byte> bytes(64, std::byte(i + 1));
    txn.write(log.pages[i], 0, bytes);
    txn.commit();
  }
  log.records = 80;
  return log;
}

struct Damage {
  fs::path segment;
  std::uint64_t record_offset = 0;  // where the damaged record starts
  std::uint64_t record_index = 0;   // its position in the segment (0 = first)
};

// Flips one bit in the body of the record that holds the middle byte of `segment`, walking the framing of
// docs/formats.md (16-byte header, then records of 16-byte header + body).
Damage flip_bit_mid_segment(const fs::path& segment) {
  std::string bytes = read_file(segment);
  const std::uint64_t middle = bytes.size() / 2;
  std::uint64_t at = 16, index = 0;
  while (at + 16 <= bytes.size()) {
    std::uint32_t length = 0;
    std::memcpy(&length, bytes.data() + at, 4);  // little-endian, like the host
    const std::uint64_t end = at + 16 + length;
    if (middle < end) {
      const std::uint64_t target = at + 16 + length / 2;
      bytes[target] = static_cast<char>(bytes[target] ^ 0x10);
      std::ofstream(segment, std::ios::binary | std::ios::trunc) << bytes;
      return {segment, at, index};
    }
    at = end;
    ++index;
  }
  throw std::runtime_error("no record holds the middle of " + segment.string());
}

fs::path only_segment(const fs::path& dir) {
  const DirectorySummary summary = inspect(dir);
  if (summary.segments.size() != 1) throw std::runtime_error("expected one segment");
  const fs::path file = summary.segments[0].file;
  return file.is_absolute() ? file : dir / file;
}

TEST_F(ToolTest, VerifyExitsZeroOnACleanDirectory) {
  const fs::path dir = root_ / "db";
  const FlatLog log = write_flat_log(dir);
  const Outcome o = mmsb({"verify", dir.string()});
  EXPECT_EQ(o.code, 0) << describe(o);
  EXPECT_EQ(o.out.rfind("clean: " + std::to_string(log.records) + " records", 0), 0u) << describe(o);
  const json report = mmsb_json({"verify", dir.string(), "--json"});
  EXPECT_TRUE(report["ok"].get<bool>());
  EXPECT_EQ(report["records_checked"].get<std::uint64_t>(), log.records);
  EXPECT_EQ(report["problems"].size(), 0u);
}

TEST_F(ToolTest, VerifyExitsOneAndNamesFileAndOffsetAfterABitFlipMidSegment) {
  const fs::path dir = root_ / "db";
  write_flat_log(dir);
  const Damage damage = flip_bit_mid_segment(only_segment(dir));
  ASSERT_GE(damage.record_index, 40u) << "the middle should be among the writes, after the 40 creations";

  const Outcome o = mmsb({"verify", dir.string()});
  EXPECT_EQ(o.code, 1) << describe(o);
  const auto lines = lines_of(o.out);
  ASSERT_EQ(lines.size(), 2u) << "one problem line and the summary:\n" << describe(o);
  EXPECT_NE(lines[0].find(damage.segment.filename().string()), std::string::npos) << lines[0];
  EXPECT_NE(lines[0].find("offset " + std::to_string(damage.record_offset) + ":"), std::string::npos) << lines[0];
  EXPECT_EQ(lines[1].rfind("damaged: ", 0), 0u) << lines[1];

  // The JSON report says the same, and is still printed (exit 1) for scripts.
  const Outcome j = mmsb({"verify", dir.string(), "--json"});
  EXPECT_EQ(j.code, 1) << describe(j);
  const json report = json::parse(j.out);
  EXPECT_FALSE(report["ok"].get<bool>());
  ASSERT_EQ(report["problems"].size(), 1u);
  EXPECT_EQ(report["problems"][0]["offset"].get<std::uint64_t>(), damage.record_offset);

  // The other commands refuse the damaged directory (as recovery does) in one line that points to verify.
  const Outcome info = mmsb({"info", dir.string()});
  EXPECT_EQ(info.code, 2) << describe(info);
  ASSERT_EQ(lines_of(info.err).size(), 1u) << describe(info);
  EXPECT_NE(info.err.find("offset " + std::to_string(damage.record_offset)), std::string::npos) << describe(info);
  EXPECT_NE(info.err.find("`mmsb verify`"), std::string::npos) << describe(info);
}

TEST_F(ToolTest, RepairWithoutForceExplainsRefusesAndChangesNothing) {
  const fs::path dir = root_ / "db";
  write_flat_log(dir);
  const Damage damage = flip_bit_mid_segment(only_segment(dir));
  const std::string before = read_file(damage.segment);

  const Outcome o = mmsb({"repair", dir.string()});
  EXPECT_EQ(o.code, 2) << describe(o);
  EXPECT_NE(o.out.find("offset " + std::to_string(damage.record_offset)), std::string::npos) << describe(o);
  EXPECT_EQ(lines_of(o.err).size(), 1u) << describe(o);
  EXPECT_NE(o.err.find("--force"), std::string::npos) << describe(o);
  EXPECT_EQ(read_file(damage.segment), before) << "repair without --force must not touch the segment";
  EXPECT_EQ(mmsb({"verify", dir.string()}).code, 1);
}

TEST_F(ToolTest, RepairWithForceDropsTheDamagedRecordAndVerifyPassesAgain) {
  const fs::path dir = root_ / "db";
  const FlatLog log = write_flat_log(dir);
  const Damage damage = flip_bit_mid_segment(only_segment(dir));
  std::ofstream(root_ / "segment-before-repair", std::ios::binary) << read_file(damage.segment);

  const Outcome o = mmsb({"repair", dir.string(), "--force"});
  EXPECT_EQ(o.code, 0) << describe(o);
  EXPECT_EQ(o.out.rfind("dropped 1 damaged records", 0), 0u) << describe(o);
  // The original segment went to a side folder before the log was changed.
  const std::string original = read_file(root_ / "segment-before-repair");
  bool kept = false;
  for (const auto& e : fs::directory_iterator(dir)) {
    if (e.is_directory() && e.path().filename().string().rfind("aside-", 0) == 0) {
      kept = read_file(e.path() / damage.segment.filename()) == original;
    }
  }
  EXPECT_TRUE(kept) << "no side folder holds the original segment\n" << describe(o);

  const Outcome v = mmsb({"verify", dir.string()});
  EXPECT_EQ(v.code, 0) << describe(v);
  const json info = mmsb_json({"info", dir.string(), "--json"});
  EXPECT_EQ(info["records"].get<std::uint64_t>(), log.records - 1);
}

// --- dump, replay, history ---------------------------------------------------------------------------------

TEST_F(ToolTest, DumpShowsEveryLivePageWithItsBytesEpochAndSize) {
  const fs::path dir = root_ / "db";
  const Written w = write_workload(dir);
  const json dump = mmsb_json({"dump", dir.string(), "--json"});
  EXPECT_EQ(dump["lsn"].get<std::uint64_t>(), w.lsns.back());
  EXPECT_EQ(ids_in_dump(dump), (std::set<PageId>{w.counter, w.blob, w.grown})) << "temp was deleted";
  for (const auto& p : dump["pages"]) {
    const PageId id(p["value"].get<std::uint64_t>());
    EXPECT_EQ(p["id"].get<std::string>(), id.to_string());
    EXPECT_EQ(p["location"].get<std::string>(), "host");
    if (id == w.counter) {
      const std::uint64_t thirty = 30;
      EXPECT_EQ(p["hex"].get<std::string>(), hex_of(std::as_bytes(std::span(&thirty, 1))));
      EXPECT_EQ(p["epoch"].get<std::uint64_t>(), 30u);
      EXPECT_EQ(p["size"].get<std::uint64_t>(), 8u);
    } else if (id == w.grown) {
      EXPECT_EQ(p["size"].get<std::uint64_t>(), 100u);
      EXPECT_EQ(p["epoch"].get<std::uint64_t>(), 2u) << "resized, then written";
      EXPECT_EQ(p["hex"].get<std::string>(), std::string(180, '0') + "010203" + std::string(14, '0'));
    } else {
      EXPECT_EQ(p["epoch"].get<std::uint64_t>(), 3u);
      EXPECT_EQ(p["hex"].get<std::string>().substr(60, 14),
                hex_of(std::as_bytes(std::span(std::string_view("blob@30")))))
          << "the blob holds \"blob@30\" at offset 30";
    }
  }

  // Text: a header with the LSN, then a hexdump per page; the plain integer id names the same page.
  const Outcome text = mmsb({"dump", dir.string(), "--page", std::to_string(w.counter.value())});
  ASSERT_EQ(text.code, 0) << describe(text);
  EXPECT_NE(text.out.find("at LSN " + std::to_string(w.lsns.back())), std::string::npos) << text.out;
  EXPECT_NE(text.out.find("page " + w.counter.to_string()), std::string::npos) << text.out;
  EXPECT_NE(text.out.find("00000000  1e 00 00 00 00 00 00 00"), std::string::npos) << text.out;
  const Outcome by_name = mmsb({"dump", dir.string(), "--page", w.counter.to_string()});
  EXPECT_EQ(by_name.out, text.out);

  const Outcome gone = mmsb({"dump", dir.string(), "--page", w.temp.to_string()});
  EXPECT_EQ(gone.code, 2) << describe(gone);
  EXPECT_NE(gone.err.find("not live"), std::string::npos) << describe(gone);
}

TEST_F(ToolTest, ReplayToAnLsnWritesExactlyTheStateAtThatLsn) {
  const fs::path dir = root_ / "db", out = root_ / "at-17";
  const Written w = write_workload(dir);
  const std::uint64_t lsn = w.counter_lsn.at(17);

  const Outcome o = mmsb({"replay", dir.string(), "--to-lsn", std::to_string(lsn), "--out", out.string()});
  ASSERT_EQ(o.code, 0) << describe(o);
  EXPECT_EQ(o.err, "") << "no progress output when stderr is not a terminal";
  EXPECT_NE(o.out.find("LSN " + std::to_string(lsn)), std::string::npos) << o.out;

  EXPECT_EQ(state_hash(*load_state(out)), w.hash_at.at(lsn)) << "the replayed state hashes like the live state did";
  const json dump = mmsb_json({"dump", out.string(), "--json"});
  EXPECT_EQ(dump["lsn"].get<std::uint64_t>(), lsn);
  EXPECT_EQ(ids_in_dump(dump), (std::set<PageId>{w.counter, w.blob, w.grown})) << "temp is deleted by LSN 17";
  const auto at = load_state(dir, ReplayTarget::lsn(lsn));
  for (const auto& p : dump["pages"]) {
    const PageId id(p["value"].get<std::uint64_t>());
    EXPECT_EQ(p["hex"].get<std::string>(), hex_of(at->read_all(id))) << id.to_string();
  }
  const std::uint64_t seventeen = 17;
  EXPECT_EQ(dump["pages"][0]["hex"].get<std::string>(), hex_of(std::as_bytes(std::span(&seventeen, 1))));

  // dump --to-lsn reads the same state without writing a directory.
  const json direct = mmsb_json({"dump", dir.string(), "--json", "--to-lsn", std::to_string(lsn)});
  EXPECT_EQ(direct["pages"], dump["pages"]);

  const Outcome again = mmsb({"replay", dir.string(), "--to-lsn", std::to_string(lsn), "--out", out.string()});
  EXPECT_EQ(again.code, 2) << "the output directory is not empty now:\n" << describe(again);
}

TEST_F(ToolTest, ReplayToATimeAcceptsUnixNanosecondsAndIsoUtc) {
  const fs::path dir = root_ / "db";
  const Written w = write_workload(dir);
  // Commit timestamps come from the log; pick a record whose successor is strictly later, so the time names it.
  std::vector<std::pair<std::uint64_t, std::uint64_t>> stamps;  // (lsn, timestamp)
  for_each_commit(dir, [&](const CommitRecord& r) {
    stamps.emplace_back(r.lsn, r.timestamp_ns);
    return true;
  });
  ASSERT_EQ(stamps.size(), w.lsns.size());
  std::size_t k = stamps.size() / 2;
  while (k + 1 < stamps.size() && stamps[k].second == stamps[k + 1].second) ++k;
  ASSERT_LT(k + 1, stamps.size());
  const auto [lsn, ts] = stamps[k];

  const Outcome by_ns =
      mmsb({"replay", dir.string(), "--to-time", std::to_string(ts), "--out", (root_ / "ns").string()});
  ASSERT_EQ(by_ns.code, 0) << describe(by_ns);
  EXPECT_EQ(state_hash(*load_state(root_ / "ns")), w.hash_at.at(lsn));

  const Outcome by_iso = mmsb({"replay", dir.string(), "--to-time", iso_utc(ts), "--out", (root_ / "iso").string()});
  ASSERT_EQ(by_iso.code, 0) << describe(by_iso);
  EXPECT_EQ(state_hash(*load_state(root_ / "iso")), w.hash_at.at(lsn)) << iso_utc(ts);

  const Outcome bad = mmsb({"replay", dir.string(), "--to-time", "yesterday", "--out", (root_ / "x").string()});
  EXPECT_EQ(bad.code, 2) << describe(bad);
  EXPECT_NE(bad.err.find("bad time 'yesterday'"), std::string::npos) << describe(bad);
}

// docs/cli.md: a point before the newest checkpoint was compacted away, so replaying to it is an error (exit 2),
// not the checkpoint's state under another name.
TEST_F(ToolTest, ReplayToATimeBeforeTheCheckpointIsAnError) {
  const fs::path dir = root_ / "db";
  std::uint64_t before_checkpoint = 0, after_checkpoint_hash = 0;
  {
    DurableRuntime db(dir, small_segments());
    PageId p = db.runtime().create_page(8);
    auto txn = db.runtime().begin();
    txn.write_value<std::uint64_t>(p, 0, 1);
    txn.commit();
    before_checkpoint = now_ns();
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
    auto txn2 = db.runtime().begin();
    txn2.write_value<std::uint64_t>(p, 0, 2);
    txn2.commit();
    db.checkpoint();
    after_checkpoint_hash = state_hash(db.runtime());
  }
  const Outcome early = mmsb({"replay", dir.string(), "--to-time", std::to_string(before_checkpoint), "--out",
                              (root_ / "early").string()});
  EXPECT_EQ(early.code, 2) << describe(early);
  EXPECT_NE(early.err.find("older than the checkpoint"), std::string::npos) << describe(early);
  EXPECT_FALSE(fs::exists(root_ / "early")) << "nothing may be written for a refused target";
  // A time after the checkpoint was written names its state.
  const Outcome late = mmsb({"replay", dir.string(), "--to-time", std::to_string(now_ns()), "--out",
                             (root_ / "late").string()});
  ASSERT_EQ(late.code, 0) << describe(late);
  EXPECT_EQ(state_hash(*load_state(root_ / "late")), after_checkpoint_hash);
}

TEST_F(ToolTest, HistoryOfAPageThatNeverExistedIsAnError) {
  const fs::path dir = root_ / "db";
  const Written w = write_workload(dir);
  const Outcome o = mmsb({"history", dir.string(), "--page", "p0:999"});
  EXPECT_EQ(o.code, 2) << describe(o);
  EXPECT_NE(o.err.find("never existed"), std::string::npos) << describe(o);
  EXPECT_EQ(lines_of(o.err).size(), 1u) << describe(o);
  // A page the checkpoint holds but the log never changed has no changes, and that is no error.
  {
    DurableRuntime db(dir, small_segments());
    db.checkpoint();
  }
  const Outcome quiet = mmsb({"history", dir.string(), "--page", w.counter.to_string()});
  EXPECT_EQ(quiet.code, 0) << describe(quiet);
  EXPECT_NE(quiet.out.find("0 changes"), std::string::npos) << describe(quiet);
}

// A FIFO named like a segment must not make a command wait for a writer, and a link to /dev/zero must not make it
// read without end: each is refused, quickly, as damage.
TEST_F(ToolTest, AFifoOrALinkToDevZeroNamedLikeASegmentIsRefusedWithoutHanging) {
  for (int kind = 0; kind < 2; ++kind) {
    SCOPED_TRACE(kind == 0 ? "fifo" : "/dev/zero");
    const fs::path dir = root_ / ("db" + std::to_string(kind));
    write_workload(dir);
    fs::path last;
    for (const auto& e : fs::directory_iterator(dir)) {
      const std::string name = e.path().filename().string();
      if (name.rfind("log-", 0) == 0 && (last.empty() || e.path() > last)) last = e.path();
    }
    ASSERT_FALSE(last.empty());
    fs::remove(last);
    if (kind == 0) {
      ASSERT_EQ(::mkfifo(last.c_str(), 0644), 0);
    } else {
      fs::create_symlink("/dev/zero", last);
    }
    const auto started = std::chrono::steady_clock::now();
    const Outcome v = mmsb({"verify", dir.string()});
    EXPECT_EQ(v.code, 1) << describe(v);
    EXPECT_NE(v.out.find("not a regular file"), std::string::npos) << describe(v);
    for (const char* command : {"info", "dump", "stats"}) {
      const Outcome o = mmsb({command, dir.string()});
      EXPECT_EQ(o.code, 2) << command << "\n" << describe(o);
      EXPECT_NE(o.err.find("not a regular file"), std::string::npos) << command << "\n" << describe(o);
    }
    EXPECT_LT(std::chrono::steady_clock::now() - started, std::chrono::seconds(60));
  }
}

TEST_F(ToolTest, ReplayToAPageEpochStopsAtTheCommitThatReachedIt) {
  const fs::path dir = root_ / "db", out = root_ / "epoch-12";
  const Written w = write_workload(dir);
  const Outcome o =
      mmsb({"replay", dir.string(), "--page", w.counter.to_string(), "--to-epoch", "12", "--out", out.string()});
  ASSERT_EQ(o.code, 0) << describe(o);
  EXPECT_EQ(state_hash(*load_state(out)), w.hash_at.at(w.counter_lsn.at(12)));

  const Outcome half = mmsb({"replay", dir.string(), "--to-epoch", "12", "--out", (root_ / "x").string()});
  EXPECT_EQ(half.code, 2) << "--to-epoch needs --page:\n" << describe(half);
}

TEST_F(ToolTest, HistoryListsExactlyTheChangesMadeToThePage) {
  const fs::path dir = root_ / "db";
  const Written w = write_workload(dir);
  for (PageId page : {w.counter, w.blob, w.temp, w.grown}) {
    SCOPED_TRACE(page.to_string());
    const std::vector<ExpectedChange>& expected = w.history.at(page);
    const json h = mmsb_json({"history", dir.string(), "--page", page.to_string(), "--json"});
    EXPECT_EQ(h["page"].get<std::string>(), page.to_string());
    ASSERT_EQ(h["changes"].size(), expected.size());
    for (std::size_t i = 0; i < expected.size(); ++i) {
      const json& got = h["changes"][i];
      const ExpectedChange& want = expected[i];
      EXPECT_EQ(got["kind"].get<std::string>(), want.kind) << i;
      EXPECT_EQ(got["lsn"].get<std::uint64_t>(), want.lsn) << i;
      if (want.kind != "deleted") {  // what epoch and size a deletion reports is not specified
        EXPECT_EQ(got["epoch"].get<std::uint64_t>(), want.epoch) << i;
        EXPECT_EQ(got["size"].get<std::uint64_t>(), want.size) << i;
      }
      EXPECT_EQ(got["time"].get<std::string>(), iso_utc(got["timestamp_ns"].get<std::uint64_t>())) << i;
      if (want.kind != "changed") continue;
      EXPECT_EQ(got["intent"].get<std::string>(), want.intent) << i;
      EXPECT_EQ(got["source"].get<std::uint32_t>(), want.source) << i;
      ASSERT_EQ(got["ranges"].size(), want.ranges.size()) << i;
      for (std::size_t r = 0; r < want.ranges.size(); ++r) {
        EXPECT_EQ(got["ranges"][r]["offset"].get<std::uint64_t>(), want.ranges[r].offset) << i;
        EXPECT_EQ(got["ranges"][r]["length"].get<std::uint64_t>(), want.ranges[r].length) << i;
      }
    }
  }

  // Text: a header line, then one line per change with its LSN, UTC time and intent.
  const Outcome text = mmsb({"history", dir.string(), "--page", std::to_string(w.counter.value())});
  ASSERT_EQ(text.code, 0) << describe(text);
  const auto lines = lines_of(text.out);
  ASSERT_EQ(lines.size(), 1 + w.history.at(w.counter).size()) << text.out;
  EXPECT_EQ(lines[0], "page " + w.counter.to_string() + ": 31 changes in the log (since the newest checkpoint)");
  EXPECT_EQ(lines[1].rfind("LSN " + std::to_string(w.lsns.front()) + "  ", 0), 0u) << lines[1];
  EXPECT_NE(lines[1].find("created"), std::string::npos) << lines[1];
  std::string ranges;  // of the counter's 10th change, which also wrote the blob
  for (const ByteRange& r : w.history.at(w.counter)[10].ranges) {
    ranges += " [" + std::to_string(r.offset) + "," + std::to_string(r.end()) + ")";
  }
  EXPECT_NE(lines[11].find("intent \"count+blob\"  source 1  ranges" + ranges + "  "), std::string::npos) << lines[11];
}

TEST_F(ToolTest, HistoryJsonEscapesQuotesControlCharactersAndInvalidUtf8InIntents) {
  const fs::path dir = root_ / "db";
  PageId page;
  const std::string intent = "say \"hi\"\\\n\t\x01 caf\xc3\xa9 \xff";
  {
    DurableRuntime db(dir);
    page = db.runtime().create_page(8);
    auto txn = db.runtime().begin();
    txn.write_value<std::uint64_t>(page, 0, 1);
    txn.set_intent(intent);
    txn.commit();
  }
  const json h = mmsb_json({"history", dir.string(), "--page", page.to_string(), "--json"});
  ASSERT_EQ(h["changes"].size(), 2u);
  EXPECT_EQ(h["changes"][1]["intent"].get<std::string>(), "say \"hi\"\\\n\t\x01 caf\xc3\xa9 \xef\xbf\xbd")
      << "the invalid byte 0xff becomes U+FFFD; everything else survives";
  const Outcome text = mmsb({"history", dir.string(), "--page", page.to_string()});
  EXPECT_EQ(lines_of(text.out).size(), 3u) << "the newline in the intent is escaped:\n" << text.out;
}

// --- errors and usage --------------------------------------------------------------------------------------

const std::vector<std::vector<std::string>> kEveryCommandOn = {
    {"info"}, {"verify"}, {"dump"}, {"stats"}, {"history", "--page", "1"}, {"repair", "--force"}};

std::vector<std::string> with_dir(std::vector<std::string> command, const fs::path& dir) {
  command.insert(command.begin() + 1, dir.string());
  return command;
}

TEST_F(ToolTest, EveryCommandOnAMissingDirectoryExitsTwoWithOneLine) {
  const fs::path missing = root_ / "no-such-dir";
  auto commands = kEveryCommandOn;
  commands.push_back({"replay", "--out", (root_ / "out").string()});
  for (const auto& command : commands) {
    const Outcome o = mmsb(with_dir(command, missing));
    SCOPED_TRACE(command[0]);
    EXPECT_EQ(o.code, 2) << describe(o);
    EXPECT_EQ(o.out, "") << describe(o);
    EXPECT_EQ(o.err, "mmsb: " + missing.string() + ": no such directory\n");
  }
  EXPECT_FALSE(fs::exists(root_ / "out")) << "nothing is written for a missing input";
}

TEST_F(ToolTest, EveryCommandOnAForeignDirectoryExitsTwoSayingItIsNotAnMmsbDirectory) {
  const fs::path foreign = root_ / "photos";
  fs::create_directories(foreign);
  std::ofstream(foreign / "cat.jpg") << "not a log";
  auto commands = kEveryCommandOn;
  commands.push_back({"replay", "--out", (root_ / "out").string()});
  for (const auto& command : commands) {
    const Outcome o = mmsb(with_dir(command, foreign));
    SCOPED_TRACE(command[0]);
    EXPECT_EQ(o.code, 2) << describe(o);
    EXPECT_EQ(o.out, "") << describe(o);
    ASSERT_EQ(lines_of(o.err).size(), 1u) << describe(o);
    EXPECT_EQ(o.err.rfind("mmsb: " + foreign.string() + ": not an mmsb durable directory", 0), 0u) << describe(o);
  }
  EXPECT_TRUE(fs::exists(foreign / "cat.jpg"));
}

TEST_F(ToolTest, UsageErrorsExitTwoWithOneLineAndHelpExitsZero) {
  const fs::path dir = root_ / "db";
  write_flat_log(dir);
  const std::vector<std::vector<std::string>> bad = {
      {},
      {"frobnicate", dir.string()},
      {"info"},
      {"history", dir.string()},
      {"history", dir.string(), "--page", "p0:0"},
      {"dump", dir.string(), "--page", "page-one"},
      {"replay", dir.string()},
      {"replay", dir.string(), "--out", (root_ / "o").string(), "--to-lsn", "3", "--to-time", "5"},
      {"stats", dir.string(), "--buckets", "0"},
  };
  for (const auto& args : bad) {
    const Outcome o = mmsb(args);
    SCOPED_TRACE(args.empty() ? "(no arguments)" : args[0]);
    EXPECT_EQ(o.code, 2) << describe(o);
    EXPECT_EQ(lines_of(o.err).size(), 1u) << describe(o);
    EXPECT_EQ(o.err.rfind("mmsb: ", 0), 0u) << describe(o);
  }

  const Outcome help = mmsb({"--help"});
  EXPECT_EQ(help.code, 0) << describe(help);
  for (const char* command : {"info", "verify", "dump", "replay", "history", "stats", "repair"}) {
    EXPECT_NE(help.out.find(command), std::string::npos) << command;
    const Outcome sub = mmsb({command, "--help"});
    EXPECT_EQ(sub.code, 0) << describe(sub);
    EXPECT_NE(sub.out.find("DIR"), std::string::npos) << describe(sub);
    EXPECT_NE(sub.out.find(command), std::string::npos) << describe(sub);
  }
}

}  // namespace
}  // namespace mmsb
