// serialize/log_reader.hpp — reading a log directory back, record by record, under a damage policy (internal).
//
//   mmsb::serialize::LogReader reader("/var/lib/app/log");
//   for (mmsb::serialize::DecodedCommit c; reader.next(c);) { /* replay c */ }
//
// Segments are read in order, one at a time, through the damage classifier (scan_segment() in log_format.hpp):
// a torn tail, corruption and unusable files (not regular files, too large, a bad header) are told apart the same
// way by every reader, and the DamagePolicy says what happens at each (docs/formats.md, "Damage").
//
// Thread-safety: a LogReader is used from one thread. Do not read a directory while a writer appends to it: the
// reader may see the writer's last record half-written (a torn tail).
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "mmsb/file_system.hpp"
#include "serialize/codec.hpp"
#include "serialize/log_format.hpp"

namespace mmsb::serialize {

enum class DamagePolicy : std::uint8_t {
  TolerateTornTail,  // a torn tail ends the log (reported); any other damage throws Error(Corruption)
  Absolute,          // any damage, a torn tail included, throws Error(Corruption)
  PointInTime,       // reading stops at the first damage (reported in RecoveryReport::stopped_at)
  SkipDamaged,       // every damaged stretch is skipped and reported; every intact record is read
};

// One damaged stretch of the log.
struct DamageInfo {
  std::string segment;              // file name of the segment
  std::uint64_t offset = 0;         // where the damage starts in it
  std::uint64_t bytes = 0;          // how far it extends (to the next intact record, or the end of the file)
  std::string what;                 // what is wrong at `offset`
  std::uint64_t last_good_lsn = 0;  // LSN of the last commit record read before it (0: none)
  bool torn_tail = false;           // a torn tail (damage at the end of the log after which nothing intact follows)
  bool unusable_file = false;       // the whole file is not a usable segment (missing, not regular, bad header)
};

// What reading (or recovering) a log found. Final once next() has returned false.
struct RecoveryReport {
  std::uint64_t records = 0;           // commit records read
  std::uint64_t last_lsn = 0;          // highest LSN among them (0 when none)
  std::uint64_t truncated_bytes = 0;   // bytes of torn tail found after the last intact record (0 when clean)
  std::string truncated_segment;       // file name of the segment with the torn tail (empty when clean)
  std::uint64_t truncated_offset = 0;  // offset in that segment where the torn tail starts
  bool closed_cleanly = false;         // the log ends with the close record a writer leaves when it closes
  // PointInTime: reading stopped at this damage; `intact_records_after` intact commit records lie beyond it.
  bool stopped = false;
  DamageInfo stopped_at;
  std::uint64_t stopped_segment_index = 0;  // into LogReader::segments()
  std::uint64_t intact_records_after = 0;
  std::vector<DamageInfo> skipped;  // SkipDamaged: every damaged stretch passed over, in log order
};

struct LogReaderOptions {
  DamagePolicy policy = DamagePolicy::TolerateTornTail;
  std::shared_ptr<FileSystem> file_system;  // null: posix_file_system()
};

// Reads a log directory. Throws Error(NotFound) when `dir` does not exist, Error(IoError) when a file cannot be
// read, Error(Corruption) for damage the policy does not accept (the message names the segment, the offset, the
// last good LSN and how many intact commit records follow). Files whose names are not segment names are ignored.
class LogReader {
 public:
  explicit LogReader(std::filesystem::path dir, LogReaderOptions options = {});

  // Reads the next commit record into `out`; false at the end of the log, at a torn tail or (PointInTime) at the
  // first damage.
  bool next(DecodedCommit& out);
  const RecoveryReport& report() const noexcept { return report_; }
  // The segment files found at construction, in LSN order.
  const std::vector<std::filesystem::path>& segments() const noexcept { return segments_; }
  // The segment and offset of the record next() returned last.
  std::filesystem::path current_segment() const;
  std::size_t current_segment_index() const noexcept { return segment_; }  // into segments()
  std::uint64_t record_offset() const noexcept { return record_offset_; }
  std::uint64_t record_end() const noexcept { return record_end_; }
  // Intact commit records after the one next() returned last (in its segment and every later one). Reads the rest
  // of the log: for error messages.
  std::uint64_t intact_records_after_current() const { return count_intact_after(record_offset_); }
  // The size of the last segment as read (0 when there is none), and its commit records read so far.
  std::uint64_t last_segment_bytes() const noexcept { return last_segment_bytes_; }
  const std::filesystem::path& directory() const noexcept { return dir_; }
  FileSystem& file_system() const noexcept { return *fs_; }
  // MANIFEST as read (empty when it is missing or damaged, see manifest_valid()).
  const std::vector<ManifestEntry>& manifest() const noexcept { return manifest_; }
  bool manifest_valid() const noexcept { return manifest_valid_; }
  // Segment files a crash left outside the log (below the manifest's first segment, or an empty one after its
  // last): not read; a writer removes them.
  const std::vector<std::filesystem::path>& leftovers() const noexcept { return leftovers_; }

  // internal: a segment to read, and what the manifest says of it.
  struct Planned {
    std::filesystem::path path;
    std::uint64_t key = 0;
    bool listed = true;              // in MANIFEST (or there is no valid MANIFEST to check against)
    std::uint64_t sealed_bytes = 0;  // its size when sealed, per MANIFEST (0: open or unknown)
  };

 private:
  void plan(const std::map<std::uint64_t, std::filesystem::path>& found);
  bool load_segment();
  // Handles one damaged stretch of the current segment as the policy says; false when reading must stop.
  bool on_damage(const SegmentScan::Damage& damage, bool torn);
  [[noreturn]] void refuse(const DamageInfo& info) const;
  DamageInfo describe(const SegmentScan::Damage& damage, bool torn) const;
  // Intact commit records after `offset` of the current segment and in every later segment (error paths only);
  // whether a close record is among the intact records there.
  std::uint64_t count_intact_after(std::uint64_t offset, bool* close_follows = nullptr) const;

  std::filesystem::path dir_;
  LogReaderOptions options_;
  std::shared_ptr<FileSystem> fs_;
  std::vector<std::filesystem::path> segments_;
  std::vector<Planned> plan_;  // parallel to segments_
  std::vector<ManifestEntry> manifest_;
  bool manifest_valid_ = false;
  std::optional<DamageInfo> manifest_damage_;
  bool manifest_reported_ = false;
  std::vector<std::filesystem::path> leftovers_;
  std::size_t segment_ = 0;  // index of the segment being read
  bool loaded_ = false;      // whether data_ and scan_ hold segments_[segment_]
  bool done_ = false;
  std::string data_;  // the whole current segment (empty when it is unusable)
  SegmentScan scan_;
  std::size_t next_record_ = 0, next_damage_ = 0;  // the next entries of scan_ to visit
  std::uint64_t record_offset_ = 0, record_end_ = 0;
  std::uint64_t last_read_lsn_ = 0;
  std::uint64_t last_segment_bytes_ = 0;
  RecoveryReport report_;
};

}  // namespace mmsb::serialize
