// Replaying a durable directory offline: the state at a target, history of a page (mmsb/durable.hpp).
#include <algorithm>
#include <map>

#include "durable/directory.hpp"
#include "mmsb/durable.hpp"
#include "mmsb/error.hpp"
#include "runtime/runtime_impl.hpp"
#include "serialize/checkpoint.hpp"
#include "serialize/log.hpp"

namespace mmsb {

namespace fs = std::filesystem;
using durable::Checkpoint;
using serialize::CheckpointState;
using serialize::DecodedCommit;
using serialize::LogReader;

namespace {

serialize::LogReaderOptions reader_options(const OfflineOptions& options) {
  serialize::LogReaderOptions r;
  r.policy = durable::damage_policy(options.recovery_mode);
  r.file_system = options.file_system;
  return r;
}

// Resolves a target to the highest LSN to apply; Time and PageEpoch take a first pass over the log.
std::uint64_t target_lsn(const fs::path& dir, const ReplayTarget& target, const Checkpoint& ckpt,
                         const serialize::LogReaderOptions& options) {
  if (target.kind == ReplayTarget::Kind::Lsn) return target.value;
  if (target.kind == ReplayTarget::Kind::End) return UINT64_MAX;  // every record: no pass needed
  const std::uint64_t checkpoint_lsn = ckpt.state ? ckpt.state->lsn : 0;
  std::uint64_t found = 0;
  bool any = false, checkpoint_commit_in_time = false;
  LogReader reader(dir, options);
  for (DecodedCommit c; reader.next(c);) {
    if (target.kind == ReplayTarget::Kind::Time) {
      if (c.timestamp_ns <= target.value) {
        found = std::max(found, c.lsn);
        checkpoint_commit_in_time = checkpoint_commit_in_time || c.lsn == checkpoint_lsn;
      }
      continue;
    }
    for (const auto& created : c.created) {
      if (created.id == target.page && target.value == 0) {
        found = c.lsn;
        any = true;
      }
    }
    for (const Delta& d : c.deltas) {
      if (d.page == target.page && d.base_epoch + d.epoch_count == target.value) {
        found = c.lsn;
        any = true;
      }
    }
  }
  if (target.kind == ReplayTarget::Kind::Time) {
    if (found > checkpoint_lsn) return found;
    // The state at the time is the checkpoint's only if its last commit is known to be that old: from the log, or
    // because the checkpoint itself was written before the time.
    if (ckpt.state && (checkpoint_commit_in_time || ckpt.state->created_ns <= target.value)) return checkpoint_lsn;
    if (!ckpt.state) {
      throw Error(ErrorCode::NotFound, "no commit in " + dir.string() + " is as old as the requested time");
    }
    throw Error(ErrorCode::NotFound,
                "the requested time is older than the checkpoint of " + dir.string() + " (LSN " +
                    std::to_string(checkpoint_lsn) + ", written at " + std::to_string(ckpt.state->created_ns) +
                    " ns since the Unix epoch), and the log holds no commit that old; that history was compacted "
                    "away");
  }
  if (!any) {
    throw Error(ErrorCode::NotFound, "the log of " + dir.string() + " has no commit that brought page " +
                                         target.page.to_string() + " to epoch " + std::to_string(target.value) +
                                         " (it may be older than the checkpoint)");
  }
  return found;
}

// The state of `dir` at `target`, with the checkpoint it started from.
std::unique_ptr<Runtime> build_state(const fs::path& dir, ReplayTarget target, std::uint64_t& reached,
                                     const ReplayProgress& progress, const OfflineOptions& options, Checkpoint& ckpt) {
  const auto fsys = durable::file_system_or_default(options.file_system);
  durable::DirectoryFiles files = durable::existing_state(*fsys, dir);
  ckpt = durable::newest_checkpoint(*fsys, files);
  const serialize::LogReaderOptions read = reader_options(options);
  const std::uint64_t checkpoint_lsn = ckpt.state ? ckpt.state->lsn : 0;
  const std::uint64_t goal = target_lsn(dir, target, ckpt, read);
  if (goal < checkpoint_lsn) {
    throw Error(ErrorCode::NotFound, "LSN " + std::to_string(goal) + " is older than the checkpoint of " +
                                         dir.string() + " (LSN " + std::to_string(checkpoint_lsn) +
                                         "); that history was compacted away");
  }
  RuntimeOptions rt_options;
  rt_options.rank = durable::rank_of(ckpt, dir, read);
  auto rt = std::make_unique<Runtime>(rt_options);
  if (ckpt.state) durable::restore_pages(*rt, *ckpt.state);
  reached = checkpoint_lsn;
  std::uint64_t last = checkpoint_lsn;
  LogReader reader(dir, read);
  // Progress in log bytes: the sizes of the segments finished, plus the offset in the current one.
  std::uint64_t total_bytes = 0;
  std::map<fs::path, std::uint64_t> bytes_before;
  for (const fs::path& segment : reader.segments()) {
    bytes_before[segment] = total_bytes;
    total_bytes += fsys->status(segment).size;
  }
  std::uint64_t records = 0;
  for (DecodedCommit c; reader.next(c);) {
    if (progress && ++records % 4096 == 0) {
      progress(bytes_before[reader.current_segment()] + reader.record_offset(), total_bytes);
    }
    last = std::max(last, c.lsn);
    if (c.lsn <= checkpoint_lsn || c.lsn > goal) continue;
    try {
      durable::apply_record(*rt, c);
    } catch (const Error& e) {
      // In memory, the modes that open anyway act as recovery would: stop, or leave the record out.
      if (e.code() != ErrorCode::Corruption) throw;
      if (options.recovery_mode == RecoveryMode::SkipDamaged) continue;
      if (options.recovery_mode == RecoveryMode::PointInTime) break;
      throw;
    }
    reached = std::max(reached, c.lsn);
  }
  if (target.kind == ReplayTarget::Kind::Lsn && goal > last) {
    throw Error(ErrorCode::NotFound, "LSN " + std::to_string(goal) + " is past the end of the log of " + dir.string() +
                                         " (last LSN " + std::to_string(last) + ")");
  }
  detail::RuntimeAccess::of(*rt).continue_after(reached);
  if (progress) progress(total_bytes, total_bytes);
  return rt;
}

}  // namespace

std::unique_ptr<Runtime> load_state(const fs::path& dir, ReplayTarget target, std::uint64_t* reached_lsn,
                                    const ReplayProgress& progress, const OfflineOptions& options) {
  std::uint64_t reached = 0;
  Checkpoint ckpt;
  std::unique_ptr<Runtime> rt = build_state(dir, target, reached, progress, options, ckpt);
  if (reached_lsn) *reached_lsn = reached;
  return rt;
}

CheckpointInfo replay_to(const fs::path& dir, ReplayTarget target, const fs::path& out, const ReplayProgress& progress,
                         const OfflineOptions& options) {
  const auto fsys = durable::file_system_or_default(options.file_system);
  const FileStatus out_status = fsys->status(out);
  if (out_status.type != FileType::Missing && !(out_status.type == FileType::Directory && fsys->list(out).empty())) {
    throw Error(ErrorCode::InvalidArgument, "output directory " + out.string() + " exists and is not empty");
  }
  std::uint64_t reached = 0;
  Checkpoint ckpt;
  std::unique_ptr<Runtime> rt = build_state(dir, target, reached, progress, options, ckpt);
  CheckpointState state;
  state.created_ns = durable::now_ns();
  durable::snapshot_pages(*rt, state);
  state.lsn = reached;
  if (ckpt.state) {
    state.nodes = std::move(ckpt.state->nodes);
    state.edges = std::move(ckpt.state->edges);
  }
  fsys->create_directories(out);
  serialize::CheckpointFileInfo file = serialize::write_checkpoint(out, state, 3, *fsys);
  CheckpointInfo info;
  durable::describe_checkpoint(state, file, info);
  return info;
}

void for_each_commit(const fs::path& dir, const std::function<bool(const CommitRecord&)>& visit,
                     const OfflineOptions& options) {
  const auto fsys = durable::file_system_or_default(options.file_system);
  durable::DirectoryFiles files = durable::existing_state(*fsys, dir);
  const std::uint64_t checkpoint_lsn = files.checkpoints.empty() ? 0 : files.checkpoints.back().first;
  LogReader reader(dir, reader_options(options));
  for (DecodedCommit c; reader.next(c);) {
    if (c.lsn <= checkpoint_lsn) continue;
    if (!visit(c.record())) return;
  }
}

std::vector<PageChange> page_history(const fs::path& dir, PageId page, const OfflineOptions& options) {
  std::vector<PageChange> out;
  for_each_commit(
      dir,
      [&](const CommitRecord& r) {
        for (const auto& created : r.created) {
          if (created.id != page) continue;
          PageChange ch;
          ch.kind = PageChange::Kind::Created;
          ch.lsn = r.lsn;
          ch.timestamp_ns = r.timestamp_ns;
          ch.size = created.size;
          out.push_back(std::move(ch));
        }
        for (const Delta& d : r.deltas) {
          if (d.page != page) continue;
          PageChange ch;
          ch.kind = PageChange::Kind::Changed;
          ch.lsn = r.lsn;
          ch.timestamp_ns = r.timestamp_ns;
          ch.epoch = d.base_epoch + d.epoch_count;
          ch.size = d.size;
          ch.delta = d;
          out.push_back(std::move(ch));
        }
        for (PageId id : r.deleted) {
          if (id != page) continue;
          PageChange ch;
          ch.kind = PageChange::Kind::Deleted;
          ch.lsn = r.lsn;
          ch.timestamp_ns = r.timestamp_ns;
          ch.epoch = out.empty() ? 0 : out.back().epoch;
          ch.size = 0;
          out.push_back(std::move(ch));
        }
        return true;
      },
      options);
  std::stable_sort(out.begin(), out.end(), [](const PageChange& a, const PageChange& b) { return a.lsn < b.lsn; });
  if (out.empty()) {
    // No change in the log: fine for a page the checkpoint holds, an error for one that never existed here.
    const auto fsys = durable::file_system_or_default(options.file_system);
    const Checkpoint ckpt = durable::newest_checkpoint(*fsys, durable::existing_state(*fsys, dir));
    const bool in_checkpoint =
        ckpt.state && std::any_of(ckpt.state->pages.begin(), ckpt.state->pages.end(),
                                  [&](const serialize::PageImage& img) { return img.id == page; });
    if (!in_checkpoint) {
      throw Error(ErrorCode::NotFound, "page " + page.to_string() + " is neither in the checkpoint nor in the log of " +
                                           dir.string() + " (it never existed, or was deleted before the checkpoint)");
    }
  }
  return out;
}

}  // namespace mmsb
