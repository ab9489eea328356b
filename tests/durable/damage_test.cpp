// Every byte of every record header (length, type, checksum) of a multi-segment log, each single-bit flip and each
// overwrite with 0x00 or 0xff, under every recovery mode: no mode may open with fewer committed records than
// the log holds without saying so (docs/formats.md, "Damage"; docs/durability.md, "Recovery modes").
#include <gtest/gtest.h>

#include <filesystem>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "mmsb/durable.hpp"
#include "serialize/log_format.hpp"
#include "support/fault_file_system.hpp"
#include "support/temp_dir.hpp"
#include "support/test_support.hpp"

namespace mmsb {
namespace {

namespace fs = std::filesystem;
using testing::commit_i64;
using testing::read_file;
using testing::TempDir;
using testing::write_file;

// A directory of several segments, closed cleanly, and the state hash after every LSN of its history.
struct Pristine {
  TempDir dir;
  std::map<std::string, std::string> files;  // name -> bytes, of every file of the directory
  std::vector<std::uint64_t> hash_at;        // hash_at[lsn]
  std::uint64_t last_lsn = 0;

  Pristine() {
    DurableOptions o;
    o.sync = SyncPolicy::None;
    o.segment_bytes = 300;
    o.file_system = std::make_shared<testing::FaultFileSystem>(posix_file_system(), /*real_syncs=*/false);
    {
      DurableRuntime db(dir.path(), o);
      Runtime& rt = db.runtime();
      std::vector<PageId> pages;
      for (int i = 0; i < 4; ++i) pages.push_back(rt.create_page(16));
      for (int i = 0; i < 14; ++i) commit_i64(rt, pages[static_cast<std::size_t>(i % 4)], 1000 + i);
      last_lsn = rt.last_lsn();
    }
    for (const auto& e : fs::directory_iterator(dir.path())) {
      if (e.is_regular_file()) files[e.path().filename().string()] = read_file(e.path());
    }
    hash_at.resize(last_lsn + 1);
    hash_at[0] = state_hash(Runtime());
    for (std::uint64_t lsn = 1; lsn <= last_lsn; ++lsn) {
      hash_at[lsn] = state_hash(*load_state(dir.path(), ReplayTarget::lsn(lsn)));
    }
  }
  void restore(const fs::path& to) const {
    fs::remove_all(to);
    fs::create_directories(to);
    for (const auto& [name, bytes] : files) write_file(to / name, bytes);
  }
};

struct Mutation {
  std::string segment;
  std::uint64_t offset = 0;  // the byte changed
  char value = 0;            // its new value
  std::string label;
};

// Every byte of the 16-byte header of every record: each single-bit flip, and 0x00 and 0xff.
std::vector<Mutation> header_mutations(const Pristine& p) {
  std::vector<Mutation> out;
  std::size_t segment_count = 0;
  for (const auto& [name, bytes] : p.files) {
    std::uint64_t key = 0;
    if (!serialize::parse_segment_name(name, key)) continue;
    ++segment_count;
    const serialize::SegmentScan scan = serialize::scan_segment(bytes, false);
    EXPECT_TRUE(scan.damage.empty()) << name;
    for (const auto& r : scan.records) {
      for (std::uint64_t b = 0; b < serialize::kRecordHeaderBytes; ++b) {
        const std::uint64_t at = r.offset + b;
        const char old = bytes[at];
        const std::string field = b < 4 ? "length" : b < 8 ? "type" : "checksum";
        for (int bit = 0; bit < 8; ++bit) {
          out.push_back({name, at, static_cast<char>(old ^ (1 << bit)),
                         name + " record@" + std::to_string(r.offset) + " " + field + " byte " + std::to_string(b) +
                             " bit " + std::to_string(bit)});
        }
        for (char v : {'\0', '\xff'}) {
          if (v != old) {
            out.push_back({name, at, v,
                           name + " record@" + std::to_string(r.offset) + " " + field + " byte " + std::to_string(b) +
                               " = " + std::to_string(static_cast<unsigned char>(v))});
          }
        }
      }
    }
  }
  EXPECT_GE(segment_count, 3u) << "the log should span several segments";
  return out;
}

OfflineOptions mode(RecoveryMode m) {
  OfflineOptions o;
  o.recovery_mode = m;
  return o;
}

TEST(Damage, EveryHeaderByteAndBitFlipEitherRestoresEveryCommitOrIsReported) {
  const Pristine pristine;
  ASSERT_GE(pristine.last_lsn, 18u);
  const std::vector<Mutation> mutations = header_mutations(pristine);
  ASSERT_GT(mutations.size(), 2500u);
  TempDir scratch;
  const fs::path dir = scratch.path() / "d";
  std::size_t refused = 0, restored = 0, cut = 0, skipped = 0;
  for (std::size_t i = 0; i < mutations.size(); ++i) {
    const Mutation& m = mutations[i];
    SCOPED_TRACE(m.label);
    pristine.restore(dir);
    std::string bytes = pristine.files.at(m.segment);
    bytes[m.offset] = m.value;
    write_file(dir / m.segment, bytes);

    // Default mode (offline replay and recovery agree): every committed record, or an error.
    std::uint64_t reached = 0;
    bool opened = false;
    try {
      const auto rt = load_state(dir, ReplayTarget::end(), &reached);
      opened = true;
      EXPECT_EQ(reached, pristine.last_lsn) << "opened with fewer committed records and no error";
      EXPECT_EQ(state_hash(*rt), pristine.hash_at[pristine.last_lsn]);
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), ErrorCode::Corruption) << e.what();
      EXPECT_NE(std::string(e.what()).find("last good LSN"), std::string::npos) << e.what();
      EXPECT_NE(std::string(e.what()).find("intact records follow"), std::string::npos) << e.what();
    }
    opened ? ++restored : ++refused;
    if (i % 7 == 0) {
      // The same through DurableRuntime (which changes the directory, so on a copy).
      bool runtime_opened = false;
      try {
        DurableOptions o;
        o.file_system = std::make_shared<testing::FaultFileSystem>(posix_file_system(), /*real_syncs=*/false);
        DurableRuntime db(dir, o);
        runtime_opened = true;
        EXPECT_EQ(db.recovery().last_lsn, pristine.last_lsn);
        EXPECT_EQ(state_hash(db.runtime()), pristine.hash_at[pristine.last_lsn]);
      } catch (const Error& e) {
        EXPECT_EQ(e.code(), ErrorCode::Corruption) << e.what();
      }
      EXPECT_EQ(runtime_opened, opened) << "recovery and offline replay disagree";
      pristine.restore(dir);
      write_file(dir / m.segment, bytes);
    }

    // Absolute: every committed record, or an error (a torn tail included).
    try {
      const auto rt = load_state(dir, ReplayTarget::end(), &reached, {}, mode(RecoveryMode::Absolute));
      EXPECT_EQ(reached, pristine.last_lsn);
      EXPECT_EQ(state_hash(*rt), pristine.hash_at[pristine.last_lsn]);
      EXPECT_TRUE(opened) << "absolute opened what the default mode refused";
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), ErrorCode::Corruption) << e.what();
    }

    // PointInTime: always opens, at a prefix of the history; a shorter one says where it was cut.
    {
      const auto rt = load_state(dir, ReplayTarget::end(), &reached, {}, mode(RecoveryMode::PointInTime));
      ASSERT_LE(reached, pristine.last_lsn);
      EXPECT_EQ(state_hash(*rt), pristine.hash_at[reached]) << "not the state at LSN " << reached;
      if (reached < pristine.last_lsn) {
        ++cut;
        const DirectorySummary s = inspect(dir, mode(RecoveryMode::PointInTime));
        ASSERT_EQ(s.damage.size(), 1u) << "cut short without saying where";
        EXPECT_EQ(s.damage[0].file.filename().string(), m.segment);
        EXPECT_LE(s.damage[0].offset, m.offset);
      }
    }

    // SkipDamaged: always opens; when it is not the whole history, each skipped stretch is reported and covers
    // the changed byte.
    {
      const auto rt = load_state(dir, ReplayTarget::end(), &reached, {}, mode(RecoveryMode::SkipDamaged));
      if (state_hash(*rt) != pristine.hash_at[pristine.last_lsn]) {
        ++skipped;
        const DirectorySummary s = inspect(dir, mode(RecoveryMode::SkipDamaged));
        ASSERT_FALSE(s.damage.empty()) << "records were skipped without a report";
        bool covers = false;
        for (const DamageReport& d : s.damage) {
          covers = covers ||
                   (d.file.filename().string() == m.segment && d.offset <= m.offset && m.offset < d.offset + d.bytes);
        }
        EXPECT_TRUE(covers) << "no reported stretch covers the changed byte";
      }
    }
  }
  // Both outcomes occur: damage before intact records refuses, damage in the close record is a torn tail.
  EXPECT_GT(refused, 0u);
  EXPECT_GT(restored, 0u);
  EXPECT_GT(cut, 0u);
  EXPECT_GT(skipped, 0u);
}

}  // namespace
}  // namespace mmsb
