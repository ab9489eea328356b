// DurableRuntime: opening and recovering a durable directory, logging, checkpoints (mmsb/durable.hpp).
#include <algorithm>
#include <chrono>
#include <map>
#include <mutex>
#include <set>
#include <tuple>

#include "durable/aside.hpp"
#include "durable/directory.hpp"
#include "graph/propagator_access.hpp"
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
  for (NodeDescription n : ckpt.nodes) {
    // The checkpoint holds the node's output as the live run had it: a history node (an incremental one that
    // counts its input's changes) must go on from there, not be recomputed from scratch.
    n.options.output_is_current = true;
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

// Applies one replayed record and runs its wave, as the live run did: the record's deltas reach the restored graph
// through the listener calls a commit makes (one wave per record, in LSN order, whatever the mode), so
// incremental nodes receive them. Page creations and deletions notify the graph on their own.
void replay_record(Runtime& rt, Propagator& prop, const DecodedCommit& c, RecoveryInfo& info) {
  detail::CommitListener* listener = detail::RuntimeAccess::of(rt).listener.load(std::memory_order_acquire);
  if (listener == nullptr || c.deltas.empty()) {
    durable::apply_record(rt, c);
    return;
  }
  listener->reserve();
  try {
    durable::apply_record(rt, c);
  } catch (...) {
    listener->release();
    throw;
  }
  listener->published(c.lsn, c.deltas);
  try {
    listener->after_commit(c.lsn);
    if (prop.options().mode != PropagationMode::Immediate) prop.propagate();
  } catch (const NodeError& e) {
    // As in the live run, the commit stands and the node stays stale until a later wave recomputes it.
    ++info.failed_waves;
    detail::logger()->warn("replaying LSN {}: {}", c.lsn, e.what());
  }
}

// A checkpoint written offline (replay_to) holds derived pages that do not reflect their inputs: recompute every
// node that can be computed from scratch. An incremental node without a rebuild function cannot; it is reported.
void recompute_stale_checkpoint(Propagator& prop, const std::string& dir) {
  for (const NodeDescription& n : prop.nodes()) {
    if (n.kind == NodeKind::Incremental && !n.has_rebuild) {
      detail::logger()->warn(
          "{}: incremental node {} has no rebuild function, so its page keeps the bytes of a "
          "checkpoint written offline",
          dir, n.output.to_string());
      continue;
    }
    prop.recompute(n.output);
  }
}

// Without DurableOptions::rebind, replay runs only the nodes restored from the checkpoint (by registered name, and
// passthroughs). An incremental node without a rebuild function (its page is a history, not a function of its
// inputs) is exact after a restart only if it is among them and so is every node it reads from, directly or not.
void check_restorable(const std::vector<NodeDescription>& nodes) {
  std::map<PageId, const NodeDescription*> by_output;
  for (const NodeDescription& n : nodes) by_output[n.output] = &n;
  auto unnamed = [](const NodeDescription& n) { return n.kind != NodeKind::Passthrough && n.function.empty(); };
  for (const NodeDescription& n : nodes) {
    if (n.kind != NodeKind::Incremental || n.has_rebuild) continue;
    if (unnamed(n)) {
      throw Error(ErrorCode::InvalidArgument,
                  "checkpoint refused: incremental node " + n.output.to_string() +
                      " was given as a function, without a registered name or a rebuild function, so no restart "
                      "could restore its page exactly; derive it by registered name, pass a rebuild function to "
                      "derive_incremental(), or derive it again in DurableOptions::rebind");
    }
    std::vector<PageId> todo(n.inputs.begin(), n.inputs.end());
    std::set<PageId> seen;
    while (!todo.empty()) {
      const PageId page = todo.back();
      todo.pop_back();
      auto it = by_output.find(page);
      if (it == by_output.end() || !seen.insert(page).second) continue;
      if (unnamed(*it->second)) {
        throw Error(ErrorCode::InvalidArgument,
                    "checkpoint refused: incremental node " + n.output.to_string() + " reads page " + page.to_string() +
                        ", whose node was given as a function without a registered name: on a restart the records "
                        "replayed into it would not be the live ones; register that node's function by name, give "
                        "the incremental node a rebuild function, or derive the node again in "
                        "DurableOptions::rebind");
      }
      todo.insert(todo.end(), it->second->inputs.begin(), it->second->inputs.end());
    }
  }
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

  // What replaying the log found: the highest LSN of each segment (0: none), the last LSN, what was left out.
  struct Replayed {
    std::vector<std::uint64_t> segment_max_lsn;
    std::uint64_t last_lsn = 0;
    Leftovers leftovers;
  };

  serialize::LogOptions log_options() const {
    serialize::LogOptions o;
    o.segment_bytes = options.segment_bytes;
    o.sync = to_log_policy(options.sync);
    o.sync_interval = options.sync_interval;
    o.file_system = fsys;
    return o;
  }

  DirectoryFiles open_directory();
  void restore_checkpoint(const Checkpoint& ckpt, DurableRuntime& self);
  Replayed replay_log(LogReader& reader);
  void open_log(LogReader& reader, const Replayed& replayed);
  void finish_interrupted_checkpoint(const DirectoryFiles& files, const CheckpointState& state, const LogReader& reader,
                                     const Replayed& replayed);
};

DurableRuntime::DurableRuntime(const fs::path& dir, DurableOptions options) : impl_(std::make_unique<Impl>()) {
  const auto started = std::chrono::steady_clock::now();
  Impl& m = *impl_;
  check_options(options);
  m.dir = dir;
  m.options = std::move(options);
  m.fsys = durable::file_system_or_default(m.options.file_system);
  m.recovery.mode = m.options.recovery_mode;
  const DirectoryFiles files = m.open_directory();
  const Checkpoint ckpt = durable::newest_checkpoint(*m.fsys, files);
  m.restore_checkpoint(ckpt, *this);

  serialize::LogReaderOptions reader_options;
  reader_options.policy = durable::damage_policy(m.options.recovery_mode);
  reader_options.file_system = m.fsys;
  LogReader reader(dir, reader_options);
  const Impl::Replayed replayed = m.replay_log(reader);
  m.recovery.fresh = !files.has_state();
  m.open_log(reader, replayed);
  m.runtime->set_commit_sink(m.log);
  if (ckpt.state) m.finish_interrupted_checkpoint(files, *ckpt.state, reader, replayed);
  m.recovery.duration = std::chrono::steady_clock::now() - started;
}

// The files of the directory (created if missing), locked, after removing what an interrupted write left. A
// directory that holds other files but no mmsb state is refused.
DirectoryFiles DurableRuntime::Impl::open_directory() {
  fsys->create_directories(dir);
  DirectoryFiles files = durable::list_directory(*fsys, dir);
  if (!files.has_state() && files.other > 0) {
    throw Error(ErrorCode::InvalidArgument, "directory " + dir.string() + " holds " + std::to_string(files.other) +
                                                " other files but no mmsb state; use an empty or new directory");
  }
  lock = std::make_unique<durable::DirectoryLock>(dir);
  for (const fs::path& tmp : files.temporaries) fsys->remove(tmp);  // an interrupted checkpoint or segment
  return files;
}

// The Runtime with the checkpoint's pages and the Propagator with its graph (or both empty without one). The graph
// comes back before the log is replayed, so replayed records run through it.
void DurableRuntime::Impl::restore_checkpoint(const Checkpoint& ckpt, DurableRuntime& self) {
  RuntimeOptions rt_options = options.runtime;
  rt_options.first_lsn = 1;
  if (ckpt.state && ckpt.state->rank != rt_options.rank) {
    throw Error(ErrorCode::InvalidArgument, "directory " + dir.string() + " holds the state of rank " +
                                                std::to_string(ckpt.state->rank) + ", not rank " +
                                                std::to_string(rt_options.rank));
  }
  runtime = std::make_unique<Runtime>(rt_options);
  if (ckpt.state) {
    durable::restore_pages(*runtime, *ckpt.state);
    recovery.checkpoint_lsn = ckpt.state->lsn;
    recovery.pages_restored = ckpt.state->pages.size();
  }
  propagator = std::make_unique<Propagator>(*runtime, options.propagation, options.registry);
  if (!ckpt.state) return;
  restore_graph(*propagator, *ckpt.state, recovery);
  if (options.rebind) {
    options.rebind(self);
    // What the application derived again is bound now.
    std::set<PageId> derived;
    for (const NodeDescription& n : propagator->nodes()) derived.insert(n.output);
    std::erase_if(recovery.unbound_nodes, [&](PageId p) { return derived.count(p) > 0; });
  }
  if (ckpt.state->derived_stale) recompute_stale_checkpoint(*propagator, dir.string());
}

// Applies every record after the checkpoint, through the graph; what the recovery mode leaves out (a record that
// does not apply, damage the reader passed over) is collected in log order, and the Runtime goes on after the
// last LSN seen.
DurableRuntime::Impl::Replayed DurableRuntime::Impl::replay_log(LogReader& reader) {
  Replayed out;
  out.segment_max_lsn.assign(reader.segments().size(), 0);
  out.last_lsn = recovery.checkpoint_lsn;
  Leftovers& leftovers = out.leftovers;
  std::uint64_t last_good = 0;
  for (DecodedCommit c; reader.next(c);) {
    std::uint64_t& seen = out.segment_max_lsn[reader.current_segment_index()];
    seen = std::max(seen, c.lsn);
    if (c.lsn > recovery.checkpoint_lsn) {
      try {
        replay_record(*runtime, *propagator, c, recovery);
      } catch (const Error& e) {
        if (e.code() != ErrorCode::Corruption) throw;
        if (record_does_not_apply(options.recovery_mode, reader, c, last_good, e, leftovers) == Verdict::Stop) break;
        continue;
      }
      ++recovery.records_replayed;
    }
    last_good = c.lsn;
    out.last_lsn = std::max(out.last_lsn, c.lsn);
  }
  leftovers.records_not_replayed += durable::add_reader_damage(reader, leftovers.edit, /*torn_tail=*/false);
  // In log order: records that did not apply were noted while replaying, damage the reader passed over after it.
  std::stable_sort(leftovers.edit.report.begin(), leftovers.edit.report.end(),
                   [](const DamageReport& a, const DamageReport& b) {
                     return std::tie(a.file, a.offset) < std::tie(b.file, b.offset);
                   });
  detail::RuntimeAccess::of(*runtime).continue_after(out.last_lsn);
  recovery.last_lsn = out.last_lsn;
  recovery.damage = leftovers.edit.report;
  recovery.records_not_replayed = leftovers.records_not_replayed;
  return out;
}

// The LogWriter that appends after the replayed records. When replay left records out, the originals go to a side
// folder first and the writer starts a fresh segment; otherwise it takes over the reader's last segment (cutting a
// torn tail).
void DurableRuntime::Impl::open_log(LogReader& reader, const Replayed& replayed) {
  const Leftovers& leftovers = replayed.leftovers;
  const std::uint64_t last = replayed.last_lsn;
  if (!leftovers.edit.empty()) {
    recovery.set_aside = durable::set_aside(
        *fsys, dir, leftovers.edit,
        std::string("Recovery in mode ") + recovery_mode_name(options.recovery_mode) + " opened " + dir.string() +
            " at LSN " + std::to_string(last) + " without these stretches of its log.");
    detail::logger()->warn(
        "{}: recovery mode {} left {} damaged stretch(es) and {} intact record(s) out of the "
        "state (LSN {}); the originals are in {}",
        dir.string(), recovery_mode_name(options.recovery_mode), recovery.damage.size(), recovery.records_not_replayed,
        last, recovery.set_aside.string());
    log = std::make_shared<serialize::LogWriter>(dir, log_options());
  } else {
    log = std::make_shared<serialize::LogWriter>(dir, log_options(), reader);
  }
  recovery.truncated_bytes = log->recovery().truncated_bytes;
  if (recovery.truncated_bytes > 0) {
    // Expected after a crash during an append, but worth a line: those bytes are gone.
    detail::logger()->warn("{}: truncated a torn tail of {} bytes at offset {} of {} (a crash during an append)",
                           dir.string(), recovery.truncated_bytes, log->recovery().truncated_offset,
                           log->recovery().truncated_segment);
  }
  detail::logger()->info("{}: recovered to LSN {} (checkpoint LSN {}, {} pages, {} log records replayed)", dir.string(),
                         recovery.last_lsn, recovery.checkpoint_lsn, recovery.pages_restored,
                         recovery.records_replayed);
}

// Finishes what a checkpoint interrupted by a crash left undone: removes older checkpoints and the segments (except
// the one being appended to) whose records the loaded checkpoint covers.
void DurableRuntime::Impl::finish_interrupted_checkpoint(const DirectoryFiles& files, const CheckpointState& state,
                                                         const LogReader& reader, const Replayed& replayed) {
  bool removed = false;
  for (const auto& [lsn, path] : files.checkpoints) {
    if (lsn < state.lsn) {
      fsys->remove(path);
      removed = true;
    }
  }
  std::uint64_t keep_from = 0;
  const std::vector<fs::path>& segments = reader.segments();
  for (std::size_t i = 0; i < segments.size(); ++i) {
    if (i + 1 == segments.size() || replayed.segment_max_lsn[i] > state.lsn) {
      serialize::parse_segment_name(segments[i].filename().string(), keep_from);
      break;
    }
  }
  if (removed) fsys->sync_directory(dir);
  if (keep_from > 0 && replayed.leftovers.edit.empty()) log->remove_segments_before(keep_from);
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
  if (!m.options.rebind) check_restorable(m.propagator->nodes());
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
    // Derived pages must reflect exactly the commits up to the cut: run the waves of commits published but not
    // yet propagated (IMMEDIATE waves still on their committing threads, DEFERRED/BATCH queues).
    detail::PropagatorAccess::settle(*m.propagator);
    durable::snapshot_pages(*m.runtime, state);
    keep_from = m.log->current_segment_key();
  } catch (...) {
    rt.gate.open();
    detail::PropagatorAccess::deliver_pending(*m.propagator);
    throw;
  }
  rt.gate.open();
  detail::PropagatorAccess::deliver_pending(*m.propagator);
  CheckpointInfo info;
  info.pause = std::chrono::steady_clock::now() - pause_start;

  state.nodes = m.propagator->nodes();
  state.edges = m.propagator->ordering_edges();
  if (!m.options.rebind) check_restorable(state.nodes);
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
