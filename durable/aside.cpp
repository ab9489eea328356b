// Cutting damage out of a log without losing it (durable/aside.hpp).
#include "durable/aside.hpp"

#include <algorithm>

#include "durable/directory.hpp"
#include "mmsb/error.hpp"
#include "serialize/file_io.hpp"
#include "serialize/log_format.hpp"
#include "serialize/log_writer.hpp"

namespace mmsb::durable {

namespace fs = std::filesystem;

namespace {

std::string report_text(const LogEdit& edit, const std::string& why) {
  std::string text = why +
                     "\n\nEach file here is the original of a segment that was rewritten or removed from the "
                     "log; the stretches dropped from the log were:\n";
  for (const DamageReport& d : edit.report) {
    text += d.file.filename().string() + " offset " + std::to_string(d.offset) + " (" + std::to_string(d.bytes) +
            " bytes, after LSN " + std::to_string(d.last_good_lsn) + "): " + d.what + "\n";
  }
  for (const fs::path& p : edit.remove) text += p.filename().string() + ": removed from the log as a whole\n";
  return text;
}

// A folder name that does not exist yet.
fs::path new_folder(FileSystem& fsys, const fs::path& dir) {
  for (std::uint64_t t = now_ns();; ++t) {
    const fs::path folder = dir / serialize::detail::numbered_file_name(kAsidePrefix, t, "");
    if (fsys.status(folder).type == FileType::Missing) return folder;
  }
}

}  // namespace

std::uint64_t add_reader_damage(const serialize::LogReader& reader, LogEdit& edit, bool torn_tail) {
  const serialize::RecoveryReport& r = reader.report();
  const fs::path& dir = reader.directory();
  auto add = [&](const serialize::DamageInfo& info, bool to_end) {
    edit.report.push_back(damage_report(dir, info));
    if (info.segment == serialize::kManifestName) return;  // set_aside() keeps a copy and writes it anew
    const fs::path path = dir / info.segment;
    if (info.unusable_file) {
      edit.remove.push_back(path);
    } else {
      edit.drop[path].emplace_back(info.offset, to_end ? UINT64_MAX : info.offset + info.bytes);
    }
  };
  for (const serialize::DamageInfo& info : r.skipped) add(info, false);
  if (torn_tail && r.truncated_bytes > 0) {
    serialize::DamageInfo torn;
    torn.segment = r.truncated_segment;
    torn.offset = r.truncated_offset;
    torn.bytes = r.truncated_bytes;
    torn.what = "torn tail (what a crash during an append leaves)";
    torn.last_good_lsn = r.last_lsn;
    torn.torn_tail = true;
    add(torn, true);
  }
  if (!r.stopped) return 0;
  add(r.stopped_at, true);
  const auto& all = reader.segments();
  for (std::size_t i = r.stopped_segment_index + 1; i < all.size(); ++i) edit.remove.push_back(all[i]);
  return r.intact_records_after;
}

fs::path set_aside(FileSystem& fsys, const fs::path& dir, const LogEdit& edit, const std::string& why) {
  if (edit.empty()) return {};
  const fs::path folder = new_folder(fsys, dir);
  fsys.create_directories(folder);
  fsys.sync_directory(dir);
  // 1. Copies of what will be rewritten, and the report; all durable before anything in the log changes.
  std::map<fs::path, std::string> originals;
  for (const auto& [path, ranges] : edit.drop) {
    std::string& bytes = originals[path];
    bytes = fsys.read(path, serialize::kMaxSegmentFileBytes);
    serialize::write_file_durably(fsys, folder / path.filename(), bytes);
  }
  serialize::write_file_durably(fsys, folder / "REPORT.txt", report_text(edit, why));
  const fs::path manifest = dir / serialize::kManifestName;
  const FileStatus manifest_status = fsys.status(manifest);
  if (manifest_status.type == FileType::Regular && manifest_status.size <= serialize::kManifestMaxBytes) {
    serialize::write_file_durably(fsys, folder / serialize::kManifestName,
                                  fsys.read(manifest, serialize::kManifestMaxBytes));
  }
  // 2. Whole segments move into the folder (a rename: nothing is copied, nothing lost).
  for (const fs::path& path : edit.remove) fsys.rename(path, folder / path.filename());
  fsys.sync_directory(folder);
  fsys.sync_directory(dir);
  // 3. Rewrite each segment without its dropped stretches.
  for (const auto& [path, ranges] : edit.drop) {
    const std::string& bytes = originals[path];
    std::string kept;
    std::uint64_t pos = 0;
    for (const auto& [begin, end] : ranges) {
      const std::uint64_t b = std::max(begin, std::min<std::uint64_t>(serialize::kSegmentHeaderBytes, bytes.size()));
      if (b > pos) kept.append(bytes, pos, b - pos);
      pos = std::max(pos, std::min<std::uint64_t>(end, bytes.size()));
    }
    if (pos < bytes.size()) kept.append(bytes, pos, std::string::npos);
    serialize::write_file_durably(fsys, path, kept);
  }
  serialize::rebuild_manifest(fsys, dir);
  return folder;
}

}  // namespace mmsb::durable
