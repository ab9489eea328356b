// The bytes of the transaction log and the damage classifier (serialize/log_format.hpp, docs/formats.md).
#include "serialize/log_format.hpp"

#define XXH_STATIC_LINKING_ONLY
#include <xxhash.h>

#include <cstring>

#include "serialize/file_io.hpp"

namespace mmsb::serialize {

using namespace detail;  // NOLINT: the byte-order helpers

namespace {

constexpr std::string_view kSegmentPrefix = "log-";
constexpr std::string_view kSegmentSuffix = ".mmsb";

// XXH3-64 of the 4 type bytes (as stored) followed by the body.
std::uint64_t record_checksum(const char* type_bytes, std::string_view body) {
  XXH3_state_t state;
  XXH3_64bits_reset(&state);
  XXH3_64bits_update(&state, type_bytes, 4);
  XXH3_64bits_update(&state, body.data(), body.size());
  return XXH3_64bits_digest(&state);
}

}  // namespace

std::string segment_file_name(std::uint64_t first_lsn) {
  return numbered_file_name(kSegmentPrefix, first_lsn, kSegmentSuffix);
}

bool parse_segment_name(const std::string& name, std::uint64_t& key) {
  return parse_numbered_file_name(name, kSegmentPrefix, kSegmentSuffix, key);
}

FramedRecord frame_at(std::string_view data, std::uint64_t pos) {
  FramedRecord v;
  const std::uint64_t left = pos <= data.size() ? data.size() - pos : 0;
  if (left < kRecordHeaderBytes) {
    v.problem =
        "incomplete record header (" + std::to_string(left) + " of " + std::to_string(kRecordHeaderBytes) + " bytes)";
    return v;
  }
  const char* h = data.data() + pos;
  const std::uint64_t length = get_u32(h);
  v.type = get_u32(h + 4);
  if (length > kMaxRecordBody) {
    v.state = FramedRecord::State::TooLong;
    v.problem = "record length " + std::to_string(length) + " exceeds the maximum of " + std::to_string(kMaxRecordBody);
    return v;
  }
  if (left - kRecordHeaderBytes < length) {
    v.problem = "incomplete record body (" + std::to_string(left - kRecordHeaderBytes) + " of " +
                std::to_string(length) + " bytes)";
    return v;
  }
  v.body = std::string_view(h + kRecordHeaderBytes, length);
  v.end = pos + kRecordHeaderBytes + length;
  const std::uint64_t stored = get_u64(h + 8);
  const std::uint64_t computed = record_checksum(h + 4, v.body);
  if (stored != computed) {
    v.state = FramedRecord::State::BadChecksum;
    v.problem = "checksum mismatch (stored " + hex64(stored) + ", computed " + hex64(computed) + ")";
    return v;
  }
  v.state = FramedRecord::State::Ok;
  return v;
}

void seal_frame(std::string& frame, std::uint32_t type) {
  const std::string_view body = std::string_view(frame).substr(kRecordHeaderBytes);
  put_u32(frame.data(), static_cast<std::uint32_t>(body.size()));
  put_u32(frame.data() + 4, type);
  put_u64(frame.data() + 8, record_checksum(frame.data() + 4, body));
}

std::string encode_frame(std::uint32_t type, std::string_view body) {
  std::string frame(kRecordHeaderBytes, '\0');
  frame.append(body);
  seal_frame(frame, type);
  return frame;
}

std::string segment_header_problem(std::string_view data) {
  if (data.size() < kSegmentHeaderBytes) {
    return "not an mmsb log (only " + std::to_string(data.size()) + " bytes, shorter than the 16-byte header)";
  }
  if (std::memcmp(data.data(), kLogMagic, sizeof kLogMagic) != 0) return "not an mmsb log (bad magic)";
  const std::uint32_t version = get_u32(data.data() + 8);
  if (version != kLogFormatVersion) {
    return "unsupported log format version " + std::to_string(version) + " (this build reads version " +
           std::to_string(kLogFormatVersion) + ")";
  }
  const std::uint32_t reserved = get_u32(data.data() + 12);
  if (reserved != 0) return "reserved header field is " + std::to_string(reserved) + ", expected 0";
  return {};
}

std::string segment_header_bytes() {
  std::string header(kSegmentHeaderBytes, '\0');
  std::memcpy(header.data(), kLogMagic, sizeof kLogMagic);
  put_u32(header.data() + 8, kLogFormatVersion);
  return header;
}

std::uint64_t next_intact_record(std::string_view data, std::uint64_t from) {
  for (std::uint64_t p = from; p <= data.size() && data.size() - p >= kRecordHeaderBytes; ++p) {
    // Cheap filters first: the type, then a length that fits; the checksum only for the few candidates left.
    if (!known_record_type(get_u32(data.data() + p + 4))) continue;
    const std::uint64_t length = get_u32(data.data() + p);
    if (length > kMaxRecordBody || length > data.size() - p - kRecordHeaderBytes) continue;
    if (frame_at(data, p).state == FramedRecord::State::Ok) return p;
  }
  return std::string_view::npos;
}

SegmentScan scan_segment(std::string_view data, bool last_segment) {
  SegmentScan scan;
  scan.header_problem = segment_header_problem(data);
  if (!scan.header_problem.empty()) return scan;
  std::uint64_t pos = kSegmentHeaderBytes;
  while (pos < data.size()) {
    FramedRecord r = frame_at(data, pos);
    if (r.state == FramedRecord::State::Ok) {
      if (known_record_type(r.type)) {
        scan.records.push_back({pos, r.end, r.type});
      } else {
        // The checksum covers the type and, through the bytes it hashed, the length: the frame is what was written,
        // but this reader does not know what it is.
        scan.damage.push_back({pos, r.end, "unknown record type " + std::to_string(r.type), true});
      }
      pos = r.end;
      continue;
    }
    // Never trust a damaged length: look for the next intact record byte by byte.
    const std::uint64_t next = next_intact_record(data, pos + 1);
    const std::uint64_t end = next == std::string_view::npos ? data.size() : next;
    scan.damage.push_back({pos, end, r.problem});
    pos = end;
  }
  scan.torn_tail = last_segment && !scan.damage.empty() && scan.damage.back().end == data.size() &&
                   (scan.records.empty() || scan.records.back().offset < scan.damage.back().offset) &&
                   !scan.damage.back().intact_frame;
  return scan;
}

}  // namespace mmsb::serialize

namespace mmsb::serialize {

std::string encode_manifest(const std::vector<ManifestEntry>& entries) {
  std::string out(kManifestHeaderBytes + entries.size() * kManifestEntryBytes + 8, '\0');
  std::memcpy(out.data(), kManifestMagic, sizeof kManifestMagic);
  detail::put_u32(out.data() + 8, kManifestFormatVersion);
  detail::put_u32(out.data() + 12, static_cast<std::uint32_t>(entries.size()));
  char* p = out.data() + kManifestHeaderBytes;
  for (const ManifestEntry& e : entries) {
    detail::put_u64(p, e.key);
    detail::put_u64(p + 8, e.sealed_bytes);
    p += kManifestEntryBytes;
  }
  detail::put_u64(p, XXH3_64bits(out.data(), out.size() - 8));
  return out;
}

std::string parse_manifest(std::string_view bytes, std::vector<ManifestEntry>& out) {
  out.clear();
  if (bytes.size() < kManifestHeaderBytes + 8) {
    return "only " + std::to_string(bytes.size()) + " bytes, shorter than an empty manifest (24)";
  }
  if (std::memcmp(bytes.data(), kManifestMagic, sizeof kManifestMagic) != 0) return "not an mmsb manifest (bad magic)";
  const std::uint32_t version = detail::get_u32(bytes.data() + 8);
  if (version != kManifestFormatVersion) {
    return "unsupported manifest version " + std::to_string(version) + " (this build reads version 1)";
  }
  const std::uint64_t count = detail::get_u32(bytes.data() + 12);
  // count is at most 2^32 - 1, so this cannot overflow.
  const std::uint64_t expected = kManifestHeaderBytes + count * kManifestEntryBytes + 8;
  if (bytes.size() != expected) {
    return "announces " + std::to_string(count) + " segments (" + std::to_string(expected) + " bytes) but holds " +
           std::to_string(bytes.size()) + " bytes";
  }
  const std::uint64_t stored = detail::get_u64(bytes.data() + bytes.size() - 8);
  const std::uint64_t computed = XXH3_64bits(bytes.data(), bytes.size() - 8);
  if (stored != computed) {
    return "checksum mismatch (stored " + detail::hex64(stored) + ", computed " + detail::hex64(computed) + ")";
  }
  const char* p = bytes.data() + kManifestHeaderBytes;
  for (std::uint64_t i = 0; i < count; ++i, p += kManifestEntryBytes) {
    ManifestEntry e{detail::get_u64(p), detail::get_u64(p + 8)};
    if (!out.empty() && e.key <= out.back().key) return "segment keys are not increasing at entry " + std::to_string(i);
    if (!out.empty() && out.back().sealed_bytes == 0) return "an open segment is followed by another";
    if (e.sealed_bytes != 0 && (e.sealed_bytes < kSegmentHeaderBytes || e.sealed_bytes > kMaxSegmentFileBytes)) {
      return "segment " + segment_file_name(e.key) + " is sealed at an impossible size of " +
             std::to_string(e.sealed_bytes) + " bytes";
    }
    out.push_back(e);
  }
  return {};
}

}  // namespace mmsb::serialize
