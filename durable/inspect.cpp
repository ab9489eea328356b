// Inspecting a durable directory offline: summary, verification, repair, state hashes (mmsb/durable.hpp).
#define XXH_STATIC_LINKING_ONLY
#include <xxhash.h>

#include <algorithm>

#include "durable/aside.hpp"
#include "durable/directory.hpp"
#include "mmsb/durable.hpp"
#include "mmsb/error.hpp"
#include "serialize/checkpoint.hpp"
#include "serialize/log.hpp"

namespace mmsb {

namespace fs = std::filesystem;
using serialize::CheckpointState;
using serialize::DecodedCommit;
using serialize::LogReader;

DirectorySummary inspect(const fs::path& dir, const OfflineOptions& options) {
  const auto fsys = durable::file_system_or_default(options.file_system);
  durable::DirectoryFiles files = durable::existing_state(*fsys, dir);
  DirectorySummary sum;
  for (const auto& [lsn, path] : files.checkpoints) {
    CheckpointState state = serialize::read_checkpoint(path, {}, *fsys);
    CheckpointSummary c;
    c.file = path;
    c.lsn = state.lsn;
    c.bytes = fsys->status(path).size;
    c.pages = state.pages.size();
    c.nodes = state.nodes.size();
    c.edges = state.edges.size();
    c.created_ns = state.created_ns;
    sum.checkpoints.push_back(std::move(c));
  }
  const std::uint64_t checkpoint_lsn = sum.checkpoints.empty() ? 0 : sum.checkpoints.back().lsn;
  serialize::LogReaderOptions read;
  read.policy = durable::damage_policy(options.recovery_mode);
  read.file_system = fsys;
  LogReader reader(dir, read);
  for (const fs::path& p : reader.segments()) {  // the same files, in the reader's order
    SegmentSummary s;
    s.file = p;
    s.bytes = fsys->status(p).size;
    sum.segments.push_back(std::move(s));
  }
  std::uint64_t first = 0, last = checkpoint_lsn;
  for (DecodedCommit c; reader.next(c);) {
    SegmentSummary& s = sum.segments[reader.current_segment_index()];
    ++s.records;
    s.min_lsn = s.min_lsn == 0 ? c.lsn : std::min(s.min_lsn, c.lsn);
    s.max_lsn = std::max(s.max_lsn, c.lsn);
    if (s.first_timestamp_ns == 0) s.first_timestamp_ns = c.timestamp_ns;
    s.last_timestamp_ns = std::max(s.last_timestamp_ns, c.timestamp_ns);
    ++sum.records;
    if (c.lsn > checkpoint_lsn) first = first == 0 ? c.lsn : std::min(first, c.lsn);
    last = std::max(last, c.lsn);
    sum.deltas += c.deltas.size();
    for (const Delta& d : c.deltas) sum.payload_bytes += d.payload.size();
    sum.pages_created += c.created.size();
    sum.pages_deleted += c.deleted.size();
  }
  sum.first_lsn = checkpoint_lsn > 0 ? checkpoint_lsn : first;
  sum.last_lsn = last;
  sum.torn_tail_bytes = reader.report().truncated_bytes;
  sum.closed_cleanly = reader.report().closed_cleanly;
  durable::LogEdit edit;
  durable::add_reader_damage(reader, edit, /*torn_tail=*/false);
  sum.damage = std::move(edit.report);
  return sum;
}

VerifyReport verify(const fs::path& dir, const std::shared_ptr<FileSystem>& file_system) {
  const auto fsys = durable::file_system_or_default(file_system);
  durable::require_directory(*fsys, dir);
  durable::DirectoryFiles files = durable::list_directory(*fsys, dir);
  VerifyReport report;
  if (!files.has_state()) {
    report.ok = false;
    report.problems.push_back({dir, 0, "holds no mmsb state (no checkpoint-*.mmsb or log-*.mmsb files)"});
    return report;
  }
  for (const auto& [lsn, path] : files.checkpoints) {
    ++report.checkpoints_checked;
    try {
      CheckpointState s = serialize::read_checkpoint(path, {}, *fsys);
      if (s.lsn != lsn) {
        report.problems.push_back({path, 0, "holds LSN " + std::to_string(s.lsn) + ", not the LSN in its name"});
      }
    } catch (const Error& e) {
      report.problems.push_back({path, 0, e.what()});
    }
  }
  // The same classifier as recovery, passing over every damaged stretch so that all of them are listed.
  serialize::LogReaderOptions read;
  read.policy = serialize::DamagePolicy::SkipDamaged;
  read.file_system = fsys;
  try {
    LogReader reader(dir, read);
    for (DecodedCommit c; reader.next(c);) {
    }
    report.records_checked = reader.report().records;
    report.torn_tail_bytes = reader.report().truncated_bytes;
    for (const serialize::DamageInfo& d : reader.report().skipped) {
      report.problems.push_back({dir / d.segment, d.offset,
                                 d.what + " (" + std::to_string(d.bytes) + " bytes without an intact record; last " +
                                     "good LSN " + std::to_string(d.last_good_lsn) + ")"});
    }
  } catch (const Error& e) {
    report.problems.push_back({dir, 0, e.what()});
  }
  if (report.problems.empty()) {
    // The framing is sound: check that the history replays (every delta applies at its page's epoch).
    try {
      OfflineOptions offline;
      offline.file_system = fsys;
      (void)load_state(dir, ReplayTarget::end(), nullptr, {}, offline);
    } catch (const Error& e) {
      report.problems.push_back({dir, 0, std::string("replay fails: ") + e.what()});
    }
  }
  report.ok = report.problems.empty();
  return report;
}

RepairReport repair(const fs::path& dir, const RepairOptions& options) {
  if (options.mode != RecoveryMode::SkipDamaged && options.mode != RecoveryMode::PointInTime) {
    throw Error(ErrorCode::InvalidArgument, std::string("repair() drops damage in mode skip_damaged or cuts the log "
                                                        "in mode point_in_time; mode ") +
                                                recovery_mode_name(options.mode) + " changes nothing");
  }
  const auto fsys = durable::file_system_or_default(options.file_system);
  durable::existing_state(*fsys, dir);
  durable::DirectoryLock lock(dir);
  serialize::LogReaderOptions read;
  read.policy = durable::damage_policy(options.mode);
  read.file_system = fsys;
  LogReader reader(dir, read);
  for (DecodedCommit c; reader.next(c);) {
  }
  durable::LogEdit edit;
  durable::add_reader_damage(reader, edit, /*torn_tail=*/true);
  RepairReport report;
  report.torn_tail_bytes = reader.report().truncated_bytes;
  report.records_dropped = edit.report.size() - (report.torn_tail_bytes > 0 ? 1 : 0);
  for (const DamageReport& d : edit.report) report.bytes_dropped += d.bytes;
  report.bytes_dropped -= report.torn_tail_bytes;
  report.dropped = edit.report;
  report.set_aside = durable::set_aside(*fsys, dir, edit,
                                        std::string("mmsb repair (mode ") + recovery_mode_name(options.mode) +
                                            ") dropped these stretches from the log of " + dir.string() + ".");
  return report;
}

std::uint64_t state_hash(const Runtime& runtime) {
  XXH3_state_t state;
  XXH3_64bits_reset(&state);
  for (PageId id : runtime.page_ids()) {
    std::vector<std::byte> bytes;
    try {
      bytes = runtime.read_all(id);
    } catch (const Error& e) {
      if (e.code() == ErrorCode::NotFound) continue;  // deleted meanwhile
      throw;
    }
    const std::uint64_t head[2] = {id.value(), bytes.size()};
    XXH3_64bits_update(&state, head, sizeof head);
    XXH3_64bits_update(&state, bytes.data(), bytes.size());
  }
  return XXH3_64bits_digest(&state);
}

}  // namespace mmsb
