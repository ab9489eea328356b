// Reading a log directory under a damage policy (serialize/log_reader.hpp).
#include "serialize/log_reader.hpp"

#include <algorithm>

#include "mmsb/error.hpp"
#include "serialize/file_io.hpp"

namespace mmsb::serialize {

namespace fs = std::filesystem;

namespace {

// Reads one segment file into `data` and classifies it. A file that is not a usable segment (not a regular file,
// larger than any writer produces, a bad header) becomes one damaged stretch covering all of it.
SegmentScan load_and_scan(FileSystem& fsys, const fs::path& path, bool last, std::string& data) {
  data.clear();
  SegmentScan scan;
  const FileStatus status = fsys.status(path);
  std::string problem;
  std::uint64_t size = status.size;
  switch (status.type) {
    case FileType::Missing:
      problem = "the segment file is missing";
      break;
    case FileType::Directory:
      problem = "is a directory, not a segment file";
      break;
    case FileType::Other:
      problem = "is not a regular file (a FIFO, socket or device); not read";
      break;
    case FileType::Regular:
      if (size > kMaxSegmentFileBytes) {
        problem = "holds " + std::to_string(size) + " bytes, more than any segment a writer produces (" +
                  std::to_string(kMaxSegmentFileBytes) + "); not read";
      }
      break;
  }
  if (problem.empty()) {
    data = fsys.read(path, kMaxSegmentFileBytes);
    size = data.size();
    scan = scan_segment(data, last);
    problem = scan.header_problem;
  }
  if (!problem.empty()) {
    scan = SegmentScan{};
    scan.header_problem = problem;
    scan.damage.push_back({0, size, problem, true});
  }
  return scan;
}

}  // namespace

LogReader::LogReader(fs::path dir, LogReaderOptions options)
    : dir_(std::move(dir)), options_(std::move(options)), fs_(options_.file_system) {
  if (!fs_) fs_ = posix_file_system();
  if (fs_->status(dir_).type != FileType::Directory) {
    throw Error(ErrorCode::NotFound, "log directory " + dir_.string() + " does not exist (or is not a directory)");
  }
  std::vector<std::pair<std::uint64_t, fs::path>> found;
  for (const std::string& name : fs_->list(dir_)) {
    std::uint64_t key = 0;
    if (parse_segment_name(name, key)) found.emplace_back(key, dir_ / name);
  }
  std::sort(found.begin(), found.end());
  for (auto& f : found) segments_.push_back(std::move(f.second));
}

fs::path LogReader::current_segment() const { return segment_ < segments_.size() ? segments_[segment_] : fs::path(); }

bool LogReader::load_segment() {
  if (segment_ >= segments_.size()) return false;
  const bool last = segment_ + 1 == segments_.size();
  scan_ = load_and_scan(*fs_, segments_[segment_], last, data_);
  if (last) last_segment_bytes_ = data_.size();
  next_record_ = next_damage_ = 0;
  loaded_ = true;
  return true;
}

DamageInfo LogReader::describe(const SegmentScan::Damage& damage, bool torn) const {
  DamageInfo info;
  info.segment = segments_[segment_].filename().string();
  info.offset = damage.offset;
  info.bytes = damage.end - damage.offset;
  info.what = damage.what;
  info.last_good_lsn = last_read_lsn_;
  info.torn_tail = torn;
  info.unusable_file = !scan_.header_problem.empty();
  return info;
}

std::uint64_t LogReader::count_intact_after(std::uint64_t offset, bool* close_follows) const {
  std::uint64_t n = 0;
  bool close = false;
  auto count = [&](const SegmentScan::Record& r) {
    n += r.type == kRecordTypeCommit;
    close = close || r.type == kRecordTypeClose;
  };
  for (const auto& r : scan_.records) {
    if (r.offset > offset) count(r);
  }
  std::string data;
  for (std::size_t i = segment_ + 1; i < segments_.size(); ++i) {
    try {
      const SegmentScan later = load_and_scan(*fs_, segments_[i], i + 1 == segments_.size(), data);
      for (const auto& r : later.records) count(r);
    } catch (const Error&) {  // an unreadable file holds nothing this count can vouch for
    }
  }
  if (close_follows) *close_follows = close;
  return n;
}

void LogReader::refuse(const DamageInfo& info) const {
  bool close_follows = false;
  const std::uint64_t intact_after = count_intact_after(info.offset, &close_follows);
  std::string message = "segment " + info.segment + " offset " + std::to_string(info.offset) + ": " + info.what +
                        "; last good LSN " + std::to_string(info.last_good_lsn) + "; " + std::to_string(intact_after) +
                        " intact records follow" + (close_follows ? ", then the record of a clean close" : "");
  if (info.torn_tail) {
    message += " (a torn tail, which the Absolute recovery mode refuses)";
  } else {
    message +=
        " (this is not a torn tail: committed records may be lost; `mmsb verify` lists the damage, the "
        "point_in_time recovery mode opens at LSN " +
        std::to_string(info.last_good_lsn) + ", skip_damaged salvages the intact records)";
  }
  throw Error(ErrorCode::Corruption, message);
}

bool LogReader::on_damage(const SegmentScan::Damage& damage, bool torn) {
  const DamageInfo info = describe(damage, torn);
  if (options_.policy == DamagePolicy::Absolute) refuse(info);
  if (torn) {
    report_.truncated_segment = info.segment;
    report_.truncated_offset = info.offset;
    report_.truncated_bytes = info.bytes;
    return false;
  }
  switch (options_.policy) {
    case DamagePolicy::TolerateTornTail:
    case DamagePolicy::Absolute:
      refuse(info);
    case DamagePolicy::PointInTime:
      report_.stopped = true;
      report_.stopped_at = info;
      report_.stopped_segment_index = segment_;
      report_.intact_records_after = count_intact_after(damage.offset);
      return false;
    case DamagePolicy::SkipDamaged:
      report_.skipped.push_back(info);
      return true;
  }
  return true;
}

bool LogReader::next(DecodedCommit& out) {
  while (!done_) {
    if (!loaded_ && !load_segment()) {
      done_ = true;
      break;
    }
    const bool more_records = next_record_ < scan_.records.size();
    const bool more_damage = next_damage_ < scan_.damage.size();
    if (!more_records && !more_damage) {
      loaded_ = false;
      data_.clear();
      ++segment_;
      continue;
    }
    if (more_damage && (!more_records || scan_.damage[next_damage_].offset < scan_.records[next_record_].offset)) {
      const SegmentScan::Damage& damage = scan_.damage[next_damage_++];
      const bool torn = scan_.torn_tail && next_damage_ == scan_.damage.size();
      report_.closed_cleanly = false;
      if (!on_damage(damage, torn)) done_ = true;
      continue;
    }
    const SegmentScan::Record& r = scan_.records[next_record_++];
    const std::string_view body =
        std::string_view(data_).substr(r.offset + kRecordHeaderBytes, r.end - r.offset - kRecordHeaderBytes);
    if (r.type == kRecordTypeClose) {
      if (body.size() == kCloseBodyBytes) {
        report_.closed_cleanly = true;
        continue;
      }
      report_.closed_cleanly = false;
      if (!on_damage({r.offset, r.end, "close record of " + std::to_string(body.size()) + " bytes (expected 8)", true},
                     false)) {
        done_ = true;
      }
      continue;
    }
    try {
      out = decode_commit(body);
    } catch (const Error& e) {
      report_.closed_cleanly = false;
      if (!on_damage({r.offset, r.end, e.what(), true}, false)) done_ = true;
      continue;
    }
    report_.closed_cleanly = false;
    ++report_.records;
    report_.last_lsn = std::max(report_.last_lsn, out.lsn);
    last_read_lsn_ = out.lsn;
    record_offset_ = r.offset;
    record_end_ = r.end;
    return true;
  }
  return false;
}

}  // namespace mmsb::serialize
