// DurableRuntime: opening and recovering a durable directory, logging, checkpoints (mmsb/durable.hpp).
#include <algorithm>
#include <chrono>
#include <mutex>

#include "durable/aside.hpp"
#include "durable/directory.hpp"
#include "mmsb/durable.hpp"
#include "mmsb/error.hpp"
#include "runtime/logging.hpp"
#include "runtime/runtime_impl.hpp"
#include "serialize/checkpoint.hpp"
#include "serialize/log.hpp"

namespace mmsb {

namespace fs = std::filesystem;
using durable::Checkpoint;
using durable::DirectoryFiles;
using serialize::CheckpointState;
using serialize::DecodedCommit;
using serialize::LogReader;

const char* recovery_mode_name(RecoveryMode mode) noexcept {
  switch (mode) {
    case RecoveryMode::TolerateTornTail:
      return "tolerate_torn_tail";
    case RecoveryMode::Absolute:
      return "absolute";
    case RecoveryMode::PointInTime:
      return "point_in_time";
    case RecoveryMode::SkipDamaged:
      return "skip_damaged";
  }
  return "?";
}

RecoveryMode parse_recovery_mode(const std::string& name) {
  for (RecoveryMode m :
       {RecoveryMode::TolerateTornTail, RecoveryMode::Absolute, RecoveryMode::PointInTime, RecoveryMode::SkipDamaged}) {
    std::string dashed = recovery_mode_name(m);
    std::replace(dashed.begin(), dashed.end(), '_', '-');
    if (name == recovery_mode_name(m) || name == dashed) return m;
  }
  throw Error(ErrorCode::InvalidArgument, "unknown recovery mode '" + name +
                                              "'; the modes are tolerate_torn_tail, absolute, point_in_time, "
                                              "skip_damaged");
}

namespace {

void restore_graph(Propagator& prop, const CheckpointState& ckpt, RecoveryInfo& info) {
  for (const NodeDescription& n : ckpt.nodes) {
    switch (n.kind) {
      case NodeKind::Passthrough:
        prop.derive_passthrough(n.output, n.inputs.front(), n.remap, n.options);
        break;
      case NodeKind::Map:
      case NodeKind::Incremental:
        if (n.function.empty()) {
          info.unbound_nodes.push_back(n.output);
          continue;
        }
        if (n.kind == NodeKind::Map) {
          prop.derive_map(n.output, n.inputs, n.function, n.options);
        } else {
          prop.derive_incremental(n.output, n.inputs, n.function, n.options);
        }
        break;
    }
    ++info.nodes_restored;
  }
  for (const OrderingEdge& e : ckpt.edges) prop.add_dependency(e.from, e.to, e.kind);
}

serialize::SyncPolicy to_log_policy(SyncPolicy p) {
  switch (p) {
    case SyncPolicy::None:
      return serialize::SyncPolicy::None;
    case SyncPolicy::Interval:
      return serialize::SyncPolicy::Interval;
    case SyncPolicy::EveryCommit:
      break;
  }
  return serialize::SyncPolicy::EveryCommit;
}

// Bytes of all live pages now (a hint when read outside the gate).
std::uint64_t live_bytes(Runtime& rt) {
  std::uint64_t total = 0;
  detail::RuntimeAccess::of(rt).for_each_live_page([&](const detail::PageRecord& record) {
    if (!record.external) total += record.size.load(std::memory_order_relaxed);
  });
  return total;
}

// Makes `buffer` hold at least `bytes` of capacity that has been written once, so copying into it later causes
// no page faults (they are costly, and would otherwise happen while commits are held back).
void prefault(std::string& buffer, std::uint64_t bytes) {
  buffer.clear();
  if (buffer.capacity() >= bytes) return;
  buffer.resize(bytes);  // zero-fills: touches every page
  buffer.clear();        // keeps the capacity
}

void check_options(const DurableOptions& o) {
  if (o.segment_bytes == 0 || o.segment_bytes > serialize::kMaxSegmentBytes) {
    throw Error(ErrorCode::InvalidArgument, "DurableOptions::segment_bytes is " + std::to_string(o.segment_bytes) +
                                                "; it must lie in [1, " + std::to_string(serialize::kMaxSegmentBytes) +
                                                "]");
  }
}

// What replaying the log decided to leave out: the cut (PointInTime) or the stretches skipped (SkipDamaged).
struct Leftovers {
  durable::LogEdit edit;
  std::uint64_t records_not_replayed = 0;
};

// A record that was intact but does not apply to the state rebuilt so far (an earlier record it depends on was
// lost): refused, cut at, or skipped, as the mode says.
enum class Verdict : std::uint8_t { Stop, Skip };
Verdict record_does_not_apply(RecoveryMode mode, const LogReader& reader, const DecodedCommit& c,
                              std::uint64_t last_good_lsn, const Error& e, Leftovers& out) {
  const fs::path segment = reader.current_segment();
  DamageReport d;
  d.file = segment;
  d.offset = reader.record_offset();
  d.bytes = reader.record_end() - reader.record_offset();
  d.what = e.what();
  d.last_good_lsn = last_good_lsn;
  if (mode == RecoveryMode::TolerateTornTail || mode == RecoveryMode::Absolute) {
    throw Error(ErrorCode::Corruption,
                "segment " + segment.filename().string() + " offset " + std::to_string(d.offset) + ": " + d.what +
                    "; last good LSN " + std::to_string(last_good_lsn) + "; " +
                    std::to_string(reader.intact_records_after_current()) +
                    " intact records follow (an earlier record this one depends on is missing; the point_in_time "
                    "recovery mode opens at LSN " +
                    std::to_string(last_good_lsn) + ")");
  }
  out.edit.report.push_back(d);
  if (mode == RecoveryMode::SkipDamaged) {
    out.edit.drop[segment].emplace_back(d.offset, d.offset + d.bytes);
    ++out.records_not_replayed;
    return Verdict::Skip;
  }
  out.records_not_replayed = 1 + reader.intact_records_after_current();
  out.edit.drop[segment].emplace_back(d.offset, UINT64_MAX);
  const auto& all = reader.segments();
  for (std::size_t i = reader.current_segment_index() + 1; i < all.size(); ++i) out.edit.remove.push_back(all[i]);
  (void)c;
  return Verdict::Stop;
}

}  // namespace

// ------------------------------------------------------------------------------------------------ DurableRuntime

struct DurableRuntime::Impl {
  fs::path dir;
  DurableOptions options;
  std::shared_ptr<FileSystem> fsys;
  std::unique_ptr<durable::DirectoryLock> lock;
  std::unique_ptr<Runtime> runtime;
  std::shared_ptr<serialize::LogWriter> log;
  std::unique_ptr<Propagator> propagator;
  RecoveryInfo recovery;
  std::mutex checkpoint_mutex;
  std::string snapshot_buffer;  // checkpoint_mutex: page bytes of the last checkpoint, kept for its capacity

  serialize::LogOptions log_options() const {
    serialize::LogOptions o;
    o.segment_bytes = options.segment_bytes;
    o.sync = to_log_policy(options.sync);
    o.sync_interval = options.sync_interval;
    o.file_system = fsys;
    return o;
  }
};

DurableRuntime::DurableRuntime(const fs::path& dir, DurableOptions options) : impl_(std::make_unique<Impl>()) {
  const auto started = std::chrono::steady_clock::now();
  Impl& m = *impl_;
  check_options(options);
  m.dir = dir;
  m.options = options;
  m.fsys = durable::file_system_or_default(options.file_system);
  FileSystem& fsys = *m.fsys;
  m.recovery.mode = options.recovery_mode;
  fsys.create_directories(dir);
  DirectoryFiles files = durable::list_directory(fsys, dir);
  if (!files.has_state() && files.other > 0) {
    throw Error(ErrorCode::InvalidArgument, "directory " + dir.string() + " holds " + std::to_string(files.other) +
                                                " other files but no mmsb state; use an empty or new directory");
  }
  m.lock = std::make_unique<durable::DirectoryLock>(dir);
  for (const fs::path& tmp : files.temporaries) fsys.remove(tmp);  // an interrupted checkpoint or segment

  Checkpoint ckpt = durable::newest_checkpoint(fsys, files);
  RuntimeOptions rt_options = options.runtime;
  rt_options.first_lsn = 1;
  if (ckpt.state && ckpt.state->rank != rt_options.rank) {
    throw Error(ErrorCode::InvalidArgument, "directory " + dir.string() + " holds the state of rank " +
                                                std::to_string(ckpt.state->rank) + ", not rank " +
                                                std::to_string(rt_options.rank));
  }
  m.runtime = std::make_unique<Runtime>(rt_options);
  if (ckpt.state) {
    durable::restore_pages(*m.runtime, *ckpt.state);
    m.recovery.checkpoint_lsn = ckpt.state->lsn;
    m.recovery.pages_restored = ckpt.state->pages.size();
  }

  serialize::LogReaderOptions reader_options;
  reader_options.policy = durable::damage_policy(options.recovery_mode);
  reader_options.file_system = m.fsys;
  LogReader reader(dir, reader_options);
  std::vector<std::uint64_t> segment_max_lsn(reader.segments().size(), 0);  // 0: no record
  Leftovers leftovers;
  std::uint64_t last_good = 0, last = m.recovery.checkpoint_lsn;
  for (DecodedCommit c; reader.next(c);) {
    std::uint64_t& seen = segment_max_lsn[reader.current_segment_index()];
    seen = std::max(seen, c.lsn);
    if (c.lsn > m.recovery.checkpoint_lsn) {
      try {
        durable::apply_record(*m.runtime, c);
      } catch (const Error& e) {
        if (e.code() != ErrorCode::Corruption) throw;
        if (record_does_not_apply(options.recovery_mode, reader, c, last_good, e, leftovers) == Verdict::Stop) break;
        continue;
      }
      ++m.recovery.records_replayed;
    }
    last_good = c.lsn;
    last = std::max(last, c.lsn);
  }
  leftovers.records_not_replayed += durable::add_reader_damage(reader, leftovers.edit, /*torn_tail=*/false);
  detail::RuntimeAccess::of(*m.runtime).continue_after(last);
  m.recovery.last_lsn = last;
  m.recovery.fresh = !files.has_state();
  m.recovery.damage = leftovers.edit.report;
  m.recovery.records_not_replayed = leftovers.records_not_replayed;
  if (!leftovers.edit.empty()) {
    m.recovery.set_aside = durable::set_aside(
        fsys, dir, leftovers.edit,
        std::string("Recovery in mode ") + recovery_mode_name(options.recovery_mode) + " opened " + dir.string() +
            " at LSN " + std::to_string(last) + " without these stretches of its log.");
    detail::logger()->warn(
        "{}: recovery mode {} left {} damaged stretch(es) and {} intact record(s) out of the "
        "state (LSN {}); the originals are in {}",
        dir.string(), recovery_mode_name(options.recovery_mode), m.recovery.damage.size(),
        m.recovery.records_not_replayed, last, m.recovery.set_aside.string());
    m.log = std::make_shared<serialize::LogWriter>(dir, m.log_options());
  } else {
    m.log = std::make_shared<serialize::LogWriter>(dir, m.log_options(), reader);
  }
  m.recovery.truncated_bytes = m.log->recovery().truncated_bytes;
  if (m.recovery.truncated_bytes > 0) {
    // Expected after a crash during an append, but worth a line: those bytes are gone.
    detail::logger()->warn("{}: truncated a torn tail of {} bytes at offset {} of {} (a crash during an append)",
                           dir.string(), m.recovery.truncated_bytes, m.log->recovery().truncated_offset,
                           m.log->recovery().truncated_segment);
  }
  detail::logger()->info("{}: recovered to LSN {} (checkpoint LSN {}, {} pages, {} log records replayed)", dir.string(),
                         m.recovery.last_lsn, m.recovery.checkpoint_lsn, m.recovery.pages_restored,
                         m.recovery.records_replayed);
  m.runtime->set_commit_sink(m.log);
  if (ckpt.state) {
    // Finish what a checkpoint interrupted by a crash left undone: older checkpoints and the segments (except
    // the one being appended to) whose records the loaded checkpoint covers.
    bool removed = false;
    for (const auto& [lsn, path] : files.checkpoints) {
      if (lsn < ckpt.state->lsn) {
        fsys.remove(path);
        removed = true;
      }
    }
    std::uint64_t keep_from = 0;
    const std::vector<fs::path>& segments = reader.segments();
    for (std::size_t i = 0; i < segments.size(); ++i) {
      if (i + 1 == segments.size() || segment_max_lsn[i] > ckpt.state->lsn) {
        serialize::parse_segment_name(segments[i].filename().string(), keep_from);
        break;
      }
    }
    if (removed) fsys.sync_directory(dir);
    if (keep_from > 0 && leftovers.edit.empty()) m.log->remove_segments_before(keep_from);
  }

  m.propagator = std::make_unique<Propagator>(*m.runtime, options.propagation);
  if (ckpt.state) {
    restore_graph(*m.propagator, *ckpt.state, m.recovery);
    if (m.recovery.nodes_restored > 0) m.propagator->recompute_all();
  }
  m.recovery.duration = std::chrono::steady_clock::now() - started;
}

DurableRuntime::~DurableRuntime() {
  if (!impl_) return;
  impl_->propagator.reset();
  try {
    impl_->log->sync();
  } catch (...) {
    // Nothing to report to: the commits concerned failed or will be found missing by the next recovery.
  }
  impl_->runtime->set_commit_sink(nullptr);
  impl_->runtime.reset();
  impl_->log.reset();
}

Runtime& DurableRuntime::runtime() noexcept { return *impl_->runtime; }
Propagator& DurableRuntime::propagator() noexcept { return *impl_->propagator; }
const RecoveryInfo& DurableRuntime::recovery() const noexcept { return impl_->recovery; }
const fs::path& DurableRuntime::directory() const noexcept { return impl_->dir; }
void DurableRuntime::sync() { impl_->log->sync(); }

CheckpointInfo DurableRuntime::checkpoint() {
  Impl& m = *impl_;
  std::lock_guard serial(m.checkpoint_mutex);
  const auto started = std::chrono::steady_clock::now();
  // Start a fresh segment first, so that at the cut below the current segment holds only a few records.
  m.log->roll();

  CheckpointState state;
  state.created_ns = durable::now_ns();
  Runtime::Impl& rt = detail::RuntimeAccess::of(*m.runtime);
  // Outside the pause: a buffer large enough for the pages (with room for growth meanwhile), already faulted in.
  const std::uint64_t estimate = live_bytes(*m.runtime);
  prefault(m.snapshot_buffer, estimate + estimate / 8 + 4096);
  state.arena = std::move(m.snapshot_buffer);
  std::uint64_t keep_from = 0;
  const auto pause_start = std::chrono::steady_clock::now();
  rt.gate.close();  // no commit in flight from here: every record up to last_lsn is in the log and the pages
  try {
    durable::snapshot_pages(*m.runtime, state);
    keep_from = m.log->current_segment_key();
  } catch (...) {
    rt.gate.open();
    throw;
  }
  rt.gate.open();
  CheckpointInfo info;
  info.pause = std::chrono::steady_clock::now() - pause_start;

  state.nodes = m.propagator->nodes();
  state.edges = m.propagator->ordering_edges();
  serialize::CheckpointFileInfo file =
      serialize::write_checkpoint(m.dir, state, m.options.checkpoint_compression_level, *m.fsys);
  m.snapshot_buffer = std::move(state.arena);

  // The new checkpoint is durable: what it covers can go.
  DirectoryFiles files = durable::list_directory(*m.fsys, m.dir);
  bool removed = false;
  for (const auto& [lsn, path] : files.checkpoints) {
    if (lsn < state.lsn) {
      m.fsys->remove(path);
      removed = true;
    }
  }
  if (removed) m.fsys->sync_directory(m.dir);
  if (keep_from > 0) info.segments_removed = m.log->remove_segments_before(keep_from);

  durable::describe_checkpoint(state, file, info);
  info.duration = std::chrono::steady_clock::now() - started;
  Event done;
  done.kind = EventKind::Checkpoint;
  done.lsn = info.lsn;
  done.duration_ns = static_cast<std::uint64_t>(info.duration.count());
  done.message = info.file.filename().string();
  m.propagator->notify(done);
  return info;
}

}  // namespace mmsb
