// serialize/log_format.hpp — the bytes of the transaction log, and the damage classifier (internal).
//
// docs/formats.md ("Transaction log") specifies what is here: segment headers, framed records, and how a reader
// classifies damage. Every reader of log bytes — LogReader (recovery, replay, the `mmsb` tool) and verify() —
// goes through scan_segment(), so they agree on what is intact, what is damaged and what is a torn tail.
//
// Thread-safety: reentrant functions without shared state.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace mmsb::serialize {

inline constexpr char kLogMagic[8] = {'M', 'M', 'S', 'B', 'L', 'O', 'G', '\0'};
inline constexpr std::uint32_t kLogFormatVersion = 1;
inline constexpr std::uint64_t kSegmentHeaderBytes = 16;  // magic, u32 version, u32 reserved
inline constexpr std::uint64_t kRecordHeaderBytes = 16;   // u32 length, u32 type, u64 XXH3-64 checksum
inline constexpr std::uint64_t kMaxRecordBody = std::uint64_t{64} << 20;
// Record types. 2..15 are left free for future record kinds.
inline constexpr std::uint32_t kRecordTypeCommit = 1;  // body: a mmsb.wire.Commit message
inline constexpr std::uint32_t kRecordTypeClose = 16;  // body: u64 highest LSN; written when a writer closes
inline constexpr std::uint64_t kCloseBodyBytes = 8;
// The largest segment a writer produces: LogOptions::segment_bytes is at most kMaxSegmentBytes, and one record may
// go past it. Readers refuse (as damage) a segment file larger than kMaxSegmentFileBytes without reading it.
inline constexpr std::uint64_t kMaxSegmentBytes = std::uint64_t{1} << 30;
inline constexpr std::uint64_t kMaxSegmentFileBytes = kMaxSegmentBytes + kRecordHeaderBytes + kMaxRecordBody;

// Whether readers know `type` (any other type in an intact frame is damage).
constexpr bool known_record_type(std::uint32_t type) { return type == kRecordTypeCommit || type == kRecordTypeClose; }

// "log-<first LSN, 20 digits>.mmsb"
std::string segment_file_name(std::uint64_t first_lsn);
// The LSN in a segment file name, or false when `name` is not a segment file name.
bool parse_segment_name(const std::string& name, std::uint64_t& first_lsn);

// One framed record at some offset of a segment's bytes, as far as it can be parsed.
struct FramedRecord {
  enum class State : std::uint8_t {
    Ok,           // complete, checksum matches
    Incomplete,   // the header or body runs past the end of the data
    BadChecksum,  // complete, checksum does not match
    TooLong,      // the length field exceeds kMaxRecordBody: no writer produces that
  };
  State state = State::Incomplete;
  std::uint32_t type = 0;
  std::string_view body;  // Ok, BadChecksum
  std::uint64_t end = 0;  // offset after the record (Ok, BadChecksum)
  std::string problem;    // why it is not Ok
};
FramedRecord frame_at(std::string_view data, std::uint64_t pos);
// Header, type, checksum and body of one record.
std::string encode_frame(std::uint32_t type, std::string_view body);
// Fills the 16 header bytes of `frame`, whose body follows them.
void seal_frame(std::string& frame, std::uint32_t type);
// Empty when `data` starts with a valid segment header, else what is wrong with it.
std::string segment_header_problem(std::string_view data);
// The 16 header bytes of a segment file.
std::string segment_header_bytes();

// The damage classifier's verdict on one segment's bytes (docs/formats.md, "Damage").
//
// From the first record on, each position either starts an intact record (framing within the file, length at
// most kMaxRecordBody, checksum matching) or starts damage. A damaged record's length is never trusted: the
// damage extends to the next offset where a record of a known type with a matching checksum starts (searched
// byte by byte), or to the end of the file. In the last segment of a log only, damage after which no intact
// record follows is a torn tail: what a crash during an append leaves. Anything else is corruption.
struct SegmentScan {
  struct Record {
    std::uint64_t offset = 0, end = 0;
    std::uint32_t type = 0;
  };
  struct Damage {
    std::uint64_t offset = 0, end = 0;  // [offset, end) holds no intact record
    std::string what;                   // what is wrong at `offset`
    bool intact_frame = false;          // an intact frame of an unknown type (what was written: never torn)
  };
  std::string header_problem;   // not empty: the file is not a usable segment (records and damage stay empty)
  std::vector<Record> records;  // intact records, in file order
  std::vector<Damage> damage;   // damaged stretches, in file order
  bool torn_tail = false;       // damage.back() is a torn tail (it reaches the end, nothing intact follows)
};
SegmentScan scan_segment(std::string_view data, bool last_segment);

// The first offset >= `from` at which an intact record of a known type starts, or std::string_view::npos.
std::uint64_t next_intact_record(std::string_view data, std::uint64_t from);

}  // namespace mmsb::serialize

namespace mmsb::serialize {

// ---- The manifest: which segments make the log (docs/formats.md, "Manifest").
//
// MANIFEST lists the segments of the log in order, each with the size it was sealed at when the writer moved on to
// the next (0 for the last, still open, segment). Writers rewrite it atomically (a temporary file, fdatasync, rename,
// directory fsync) whenever a segment is created or removed, so a missing first, middle or last segment, a sealed
// segment cut short or grown, or a segment that does not belong are all detected.
inline constexpr char kManifestMagic[8] = {'M', 'M', 'S', 'B', 'M', 'A', 'N', 'I'};
inline constexpr std::uint32_t kManifestFormatVersion = 1;
inline constexpr const char* kManifestName = "MANIFEST";
inline constexpr std::uint64_t kManifestHeaderBytes = 16;  // magic, u32 version, u32 count
inline constexpr std::uint64_t kManifestEntryBytes = 16;   // u64 key, u64 sealed size
inline constexpr std::uint64_t kManifestMaxBytes = std::uint64_t{64} << 20;

struct ManifestEntry {
  std::uint64_t key = 0;           // the LSN in the segment's name
  std::uint64_t sealed_bytes = 0;  // the segment's final size; 0: the open (last) segment
  friend bool operator==(const ManifestEntry&, const ManifestEntry&) = default;
};
std::string encode_manifest(const std::vector<ManifestEntry>& entries);
// Parses MANIFEST bytes into `out`; returns what is wrong (empty when they are a valid manifest).
std::string parse_manifest(std::string_view bytes, std::vector<ManifestEntry>& out);

}  // namespace mmsb::serialize
