// Reading a log directory under a damage policy (serialize/log_reader.hpp).
#include "serialize/log_reader.hpp"

#include <algorithm>
#include <map>

#include "mmsb/error.hpp"
#include "serialize/file_io.hpp"

namespace mmsb::serialize {

namespace fs = std::filesystem;

namespace {

// Reads one segment file into `data` and classifies it. A file that is not a usable segment (missing, not a
// regular file, larger than any writer produces, a bad header, not listed in the manifest) becomes one damaged
// stretch covering all of it. A segment the manifest says was sealed is checked against its sealed size.
SegmentScan load_and_scan(FileSystem& fsys, const LogReader::Planned& plan, bool last, std::string& data) {
  data.clear();
  SegmentScan scan;
  const FileStatus status = fsys.status(plan.path);
  std::string problem;
  std::uint64_t size = status.size;
  switch (status.type) {
    case FileType::Missing:
      problem = "the segment file is missing (MANIFEST lists it)";
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
    data = fsys.read(plan.path, kMaxSegmentFileBytes);
    size = data.size();
    const std::uint64_t sealed = plan.sealed_bytes;
    scan = scan_segment(sealed > 0 && sealed < size ? std::string_view(data).substr(0, sealed) : data, last);
    problem = scan.header_problem;
    if (!plan.listed) {
      problem = problem.empty() ? "is not listed in MANIFEST (not a segment of this log)"
                                : problem + "; not listed in MANIFEST either";
    }
    if (problem.empty() && sealed > 0 && sealed != size) {
      // Sealed segments never change again: a different size is damage, never a torn tail.
      if (size < sealed) {
        scan.damage.push_back({size, size,
                               "the segment ends at " + std::to_string(size) + " bytes but was sealed at " +
                                   std::to_string(sealed) + " (MANIFEST): its end is missing",
                               true});
      } else {
        scan.damage.push_back(
            {sealed, size, std::to_string(size - sealed) + " bytes after the end the segment was sealed at", true});
      }
      scan.torn_tail = false;
    }
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
  std::map<std::uint64_t, fs::path> found;
  for (const std::string& name : fs_->list(dir_)) {
    std::uint64_t key = 0;
    if (parse_segment_name(name, key)) found.emplace(key, dir_ / name);
  }
  plan(found);
  for (const Planned& p : plan_) segments_.push_back(p.path);
}

// Decides which segments make the log, from MANIFEST and the files present.
void LogReader::plan(const std::map<std::uint64_t, fs::path>& found) {
  const fs::path manifest_path = dir_ / kManifestName;
  const FileStatus manifest = fs_->status(manifest_path);
  std::string problem;
  if (manifest.type == FileType::Missing) {
    // Fine for a log without records (none yet, or a crash while its first segment was created); otherwise the
    // set of segments cannot be checked.
    for (const auto& [key, path] : found) {
      const FileStatus st = fs_->status(path);
      if (st.type != FileType::Regular || st.size > kSegmentHeaderBytes) {
        problem = "is missing, so the set of segments cannot be checked (a lost segment would go unnoticed)";
        break;
      }
    }
  } else if (manifest.type != FileType::Regular) {
    problem = "is not a regular file; not read";
  } else if (manifest.size > kManifestMaxBytes) {
    problem = "holds " + std::to_string(manifest.size) + " bytes, more than any manifest a writer produces; not read";
  } else {
    problem = parse_manifest(fs_->read(manifest_path, kManifestMaxBytes), manifest_);
    manifest_valid_ = problem.empty();
  }
  if (!problem.empty()) {
    manifest_damage_ = DamageInfo{};
    manifest_damage_->segment = kManifestName;
    manifest_damage_->bytes = manifest.size;
    manifest_damage_->what = "MANIFEST " + problem;
    manifest_damage_->unusable_file = manifest.type != FileType::Missing;
  }
  if (!manifest_valid_) {
    manifest_.clear();
    for (const auto& [key, path] : found) plan_.push_back({path, key, true, 0});
    return;
  }
  const std::uint64_t first = manifest_.empty() ? 0 : manifest_.front().key;
  const std::uint64_t last = manifest_.empty() ? 0 : manifest_.back().key;
  std::map<std::uint64_t, Planned> planned;
  for (const ManifestEntry& e : manifest_)
    planned[e.key] = {dir_ / segment_file_name(e.key), e.key, true, e.sealed_bytes};
  for (const auto& [key, path] : found) {
    if (planned.count(key)) continue;
    const FileStatus st = fs_->status(path);
    const bool header_only = st.type == FileType::Regular && st.size <= kSegmentHeaderBytes;
    if (!manifest_.empty() && (key < first || (key > last && header_only))) {
      // Left by a crash between the manifest's rewrite and the removal of covered segments, or between the
      // creation of a segment and the manifest's rewrite (nothing was appended to it then).
      leftovers_.push_back(path);
      continue;
    }
    planned[key] = {path, key, false, 0};
  }
  for (auto& [key, p] : planned) plan_.push_back(std::move(p));
}

fs::path LogReader::current_segment() const { return segment_ < segments_.size() ? segments_[segment_] : fs::path(); }

bool LogReader::load_segment() {
  if (segment_ >= segments_.size()) return false;
  const bool last = segment_ + 1 == segments_.size();
  scan_ = load_and_scan(*fs_, plan_[segment_], last, data_);
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
  if (loaded_) {
    for (const auto& r : scan_.records) {
      if (r.offset > offset) count(r);
    }
  }
  std::string data;
  for (std::size_t i = loaded_ ? segment_ + 1 : segment_; i < segments_.size(); ++i) {
    try {
      const SegmentScan later = load_and_scan(*fs_, plan_[i], i + 1 == segments_.size(), data);
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
  const std::string where = info.segment == kManifestName
                                ? (dir_ / kManifestName).string()
                                : "segment " + info.segment + " offset " + std::to_string(info.offset);
  std::string message = where + ": " + info.what + "; last good LSN " + std::to_string(info.last_good_lsn) + "; " +
                        std::to_string(intact_after) + " intact records follow" +
                        (close_follows ? ", then the record of a clean close" : "");
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
  if (manifest_damage_ && !manifest_reported_) {
    // Reported first: it concerns the log as a whole. The modes that open anyway go on with the files present.
    manifest_reported_ = true;
    switch (options_.policy) {
      case DamagePolicy::TolerateTornTail:
      case DamagePolicy::Absolute:
        refuse(*manifest_damage_);
      case DamagePolicy::PointInTime:
      case DamagePolicy::SkipDamaged:
        report_.skipped.push_back(*manifest_damage_);
        break;
    }
  }
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
