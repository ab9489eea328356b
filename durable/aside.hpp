// durable/aside.hpp — cutting damage out of a log without losing it (internal to durable/).
//
// The PointInTime and SkipDamaged recovery modes and repair() change segments only through set_aside(): it first
// copies every segment it will change (and moves every segment it removes) into a new folder "aside-<time>" of the
// directory, with a REPORT.txt listing each dropped stretch and why, syncs all of that, and only then rewrites the
// segments. A crash in between leaves the originals in the folder; nothing is ever deleted.
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "mmsb/durable.hpp"
#include "serialize/log_reader.hpp"

namespace mmsb::durable {

struct LogEdit {
  // Byte ranges [begin, end) to drop from a segment (sorted, disjoint; the 16-byte header is always kept).
  std::map<std::filesystem::path, std::vector<std::pair<std::uint64_t, std::uint64_t>>> drop;
  // Segments removed from the log as a whole (moved into the folder).
  std::vector<std::filesystem::path> remove;
  // What is dropped and why, for REPORT.txt.
  std::vector<DamageReport> report;

  bool empty() const { return drop.empty() && remove.empty() && report.empty(); }
};

// Adds what `reader` (finished) passed over to `edit`: each stretch it skipped (SkipDamaged), or the cut where it
// stopped and every later segment (PointInTime); with `torn_tail`, also the torn tail it found. Returns the intact
// commit records that lie beyond a cut.
std::uint64_t add_reader_damage(const serialize::LogReader& reader, LogEdit& edit, bool torn_tail);

// Applies `edit` to the log of `dir` as described above, keeps a copy of MANIFEST in the folder and then rewrites
// MANIFEST for the segments that remain; returns the folder (empty path when `edit` is empty).
std::filesystem::path set_aside(FileSystem& fsys, const std::filesystem::path& dir, const LogEdit& edit,
                                const std::string& why);

}  // namespace mmsb::durable
