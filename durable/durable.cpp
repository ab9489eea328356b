// durable/durable.cpp — durable directories: recovery, checkpoints, replay and offline inspection
// (the implementation of mmsb/durable.hpp).
#include "mmsb/durable.hpp"

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#define XXH_STATIC_LINKING_ONLY
#include <xxhash.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <map>
#include <mutex>
#include <optional>
#include <shared_mutex>

#include "mmsb/error.hpp"
#include "runtime/logging.hpp"
#include "runtime/runtime_impl.hpp"
#include "serialize/checkpoint.hpp"
#include "serialize/codec.hpp"
#include "serialize/file_io.hpp"
#include "serialize/log.hpp"

namespace mmsb {
namespace {

namespace fs = std::filesystem;
using serialize::CheckpointState;
using serialize::DecodedCommit;
using serialize::FramedRecord;
using serialize::LogReader;

constexpr const char* kLockFile = "LOCK";

// ---------------------------------------------------------------------------------------------- directory files

struct DirectoryFiles {
  std::vector<std::pair<std::uint64_t, fs::path>> checkpoints;  // by LSN
  std::vector<fs::path> segments;                               // by key
  std::vector<fs::path> temporaries;                            // *.tmp left by a crash
  std::size_t other = 0;                                        // files that are not ours

  bool has_state() const { return !checkpoints.empty() || !segments.empty(); }
};

bool ends_with(const std::string& s, std::string_view suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

DirectoryFiles list_directory(const fs::path& dir) {
  DirectoryFiles files;
  std::error_code ec;
  std::vector<std::pair<std::uint64_t, fs::path>> segments;
  fs::directory_iterator it(dir, ec);
  if (ec) throw Error(ErrorCode::IoError, "cannot list directory " + dir.string() + ": " + ec.message());
  for (; it != fs::directory_iterator(); it.increment(ec)) {
    const std::string name = it->path().filename().string();
    std::uint64_t key = 0;
    if (serialize::parse_checkpoint_name(name, key)) {
      files.checkpoints.emplace_back(key, it->path());
    } else if (serialize::parse_segment_name(name, key)) {
      segments.emplace_back(key, it->path());
    } else if (ends_with(name, ".mmsb.tmp")) {
      files.temporaries.push_back(it->path());
    } else if (name != kLockFile && !ends_with(name, ".damaged")) {
      ++files.other;
    }
  }
  if (ec) throw Error(ErrorCode::IoError, "cannot list directory " + dir.string() + ": " + ec.message());
  std::sort(files.checkpoints.begin(), files.checkpoints.end());
  std::sort(segments.begin(), segments.end());
  for (auto& s : segments) files.segments.push_back(std::move(s.second));
  return files;
}

// The directory of an offline function: it must exist and hold mmsb state.
void require_directory(const fs::path& dir) {
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) {
    throw Error(ErrorCode::NotFound, "directory " + dir.string() + " does not exist (or is not a directory)");
  }
}

DirectoryFiles existing_state(const fs::path& dir) {
  require_directory(dir);
  DirectoryFiles files = list_directory(dir);
  if (!files.has_state()) {
    throw Error(ErrorCode::NotFound, "directory " + dir.string() +
                                         " holds no mmsb state (no checkpoint-*.mmsb or log-*.mmsb files)");
  }
  return files;
}

std::uint64_t now_ns() {
  return static_cast<std::uint64_t>(
      std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::system_clock::now().time_since_epoch())
          .count());
}

// ------------------------------------------------------------------------------------------------- rebuilding

[[noreturn]] void bad_record(const DecodedCommit& c, const std::string& what) {
  throw Error(ErrorCode::Corruption, "log record of LSN " + std::to_string(c.lsn) + " does not apply: " + what);
}

// Applies one log record to a runtime being rebuilt (no sink, no listener, one thread), at the record's own LSN.
void apply_record(Runtime& rt, const DecodedCommit& c) {
  Runtime::Impl& impl = detail::RuntimeAccess::of(rt);
  try {
    for (const CommitRecord::CreatedPage& created : c.created) {
      if (created.id.rank() != impl.options.rank || !created.id.valid() ||
          created.id.sequence() > detail::PageStore::kMaxSequence) {
        bad_record(c, "it creates page " + created.id.to_string() + ", which a runtime of rank " +
                          std::to_string(impl.options.rank) + " cannot hold");
      }
      impl.reserve_through(created.id.sequence());
      impl.set_next_lsn(c.lsn);
      impl.create(created.id.sequence(), created.size, created.location, created.name);
    }
    if (!c.deltas.empty()) impl.replay_deltas(c.deltas, c.lsn);
    for (PageId id : c.deleted) {
      impl.set_next_lsn(c.lsn);
      rt.delete_page(id);
    }
    for (const CommitRecord::RenamedPage& r : c.renamed) impl.replay_rename(r.id, r.name, c.lsn);
  } catch (const Error& e) {
    if (e.code() == ErrorCode::Corruption) throw;
    bad_record(c, e.what());
  }
}

void restore_pages(Runtime& rt, const CheckpointState& ckpt) {
  Runtime::Impl& impl = detail::RuntimeAccess::of(rt);
  for (const serialize::PageImage& img : ckpt.pages) {
    const std::string_view bytes = ckpt.bytes(img);
    impl.restore_page(img.id, img.epoch, img.location, reinterpret_cast<const std::byte*>(bytes.data()), bytes.size(),
                      img.name);
  }
  if (ckpt.next_sequence > 1) impl.reserve_through(ckpt.next_sequence - 1);
  impl.continue_after(ckpt.lsn);
}

struct Checkpoint {
  std::optional<CheckpointState> state;
  fs::path file;
};

Checkpoint newest_checkpoint(const DirectoryFiles& files) {
  Checkpoint c;
  if (files.checkpoints.empty()) return c;
  c.file = files.checkpoints.back().second;
  c.state = serialize::read_checkpoint(c.file);
  if (c.state->lsn != files.checkpoints.back().first) {
    throw Error(ErrorCode::Corruption, "checkpoint " + c.file.filename().string() + " holds LSN " +
                                           std::to_string(c.state->lsn) + ", not the LSN in its name");
  }
  return c;
}

std::uint32_t rank_of(const Checkpoint& ckpt, const fs::path& dir) {
  if (ckpt.state) return ckpt.state->rank;
  // No checkpoint: the first created page tells the rank.
  LogReader reader(dir);
  for (DecodedCommit c; reader.next(c);) {
    if (!c.created.empty()) return c.created.front().id.rank();
  }
  return 0;
}

// Resolves a target to the highest LSN to apply; Time and PageEpoch take a first pass over the log.
std::uint64_t target_lsn(const fs::path& dir, const ReplayTarget& target, std::uint64_t checkpoint_lsn) {
  if (target.kind == ReplayTarget::Kind::Lsn) return target.value;
  if (target.kind == ReplayTarget::Kind::End) return UINT64_MAX;  // every record: no pass needed
  std::uint64_t found = 0;
  bool any = false;
  LogReader reader(dir);
  for (DecodedCommit c; reader.next(c);) {
    if (target.kind == ReplayTarget::Kind::Time) {
      if (c.timestamp_ns <= target.value) found = std::max(found, c.lsn);
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
    if (found == 0 && checkpoint_lsn == 0) {
      throw Error(ErrorCode::NotFound, "no commit in " + dir.string() + " is as old as the requested time");
    }
    return std::max(found, checkpoint_lsn);
  }
  if (!any) {
    throw Error(ErrorCode::NotFound, "the log of " + dir.string() + " has no commit that brought page " +
                                         target.page.to_string() + " to epoch " + std::to_string(target.value) +
                                         " (it may be older than the checkpoint)");
  }
  return found;
}

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
    case SyncPolicy::None: return serialize::SyncPolicy::None;
    case SyncPolicy::Interval: return serialize::SyncPolicy::Interval;
    case SyncPolicy::EveryCommit: break;
  }
  return serialize::SyncPolicy::EveryCommit;
}

// Bytes of all live pages now (a hint when read outside the gate).
std::uint64_t live_bytes(Runtime& rt) {
  std::uint64_t total = 0;
  detail::RuntimeAccess::of(rt).for_each_live_page(
      [&](const detail::PageRecord& record) {
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

// Copies every live page under the gate (the caller closed it) into a checkpoint state.
void snapshot_pages(Runtime& rt, CheckpointState& state) {
  Runtime::Impl& impl = detail::RuntimeAccess::of(rt);
  state.lsn = rt.last_lsn();
  state.rank = impl.options.rank;
  state.next_sequence = impl.next_sequence.load(std::memory_order_acquire);
  std::size_t count = 0;
  std::uint64_t total = 0;
  impl.for_each_live_page([&](const detail::PageRecord& record) {
    if (record.external) return;  // not the runtime's state: the application maps it again
    ++count;
    total += record.size.load(std::memory_order_relaxed);  // stable: the gate is closed, derived pages keep sizes
  });
  state.pages.reserve(count);
  state.arena.reserve(total);
  impl.for_each_live_page([&](const detail::PageRecord& record) {
    if (record.external) return;
    // Derived pages are written by waves outside the gate: copy each page under its lock.
    std::shared_lock lock(record.mutex);
    serialize::PageImage img;
    img.id = record.id;
    img.epoch = record.epoch.load(std::memory_order_relaxed);
    img.location = record.location;
    img.size = record.size.load(std::memory_order_relaxed);
    img.name = impl.names.name_of(record.id);  // stable: renames take the gate, which the caller closed
    img.offset = state.arena.size();
    state.arena.append(reinterpret_cast<const char*>(record.data), img.size);
    state.pages.push_back(img);
  });
}

// What a written checkpoint holds, for CheckpointInfo.
void describe_checkpoint(const CheckpointState& state, const serialize::CheckpointFileInfo& file,
                         CheckpointInfo& info) {
  info.lsn = state.lsn;
  info.file = file.file;
  info.pages = state.pages.size();
  info.nodes = state.nodes.size();
  info.raw_bytes = file.raw_bytes;
  info.file_bytes = file.file_bytes;
}

class DirectoryLock {
 public:
  explicit DirectoryLock(const fs::path& dir) {
    const fs::path path = dir / kLockFile;
    fd_ = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (fd_ < 0) serialize::detail::io_error("cannot open lock file", path, errno);
    if (::flock(fd_, LOCK_EX | LOCK_NB) != 0) {
      int err = errno;
      ::close(fd_);
      if (err == EWOULDBLOCK) {
        throw Error(ErrorCode::InvalidArgument,
                    "directory " + dir.string() + " is in use by another DurableRuntime (its LOCK file is held)");
      }
      serialize::detail::io_error("cannot lock", path, err);
    }
  }
  ~DirectoryLock() { ::close(fd_); }
  DirectoryLock(const DirectoryLock&) = delete;
  DirectoryLock& operator=(const DirectoryLock&) = delete;

 private:
  int fd_ = -1;
};

}  // namespace

// ------------------------------------------------------------------------------------------------ DurableRuntime

struct DurableRuntime::Impl {
  fs::path dir;
  DurableOptions options;
  std::unique_ptr<DirectoryLock> lock;
  std::unique_ptr<Runtime> runtime;
  std::shared_ptr<serialize::LogWriter> log;
  std::unique_ptr<Propagator> propagator;
  RecoveryInfo recovery;
  std::mutex checkpoint_mutex;
  std::string snapshot_buffer;  // checkpoint_mutex: page bytes of the last checkpoint, kept for its capacity
};

DurableRuntime::DurableRuntime(const fs::path& dir, DurableOptions options) : impl_(std::make_unique<Impl>()) {
  const auto started = std::chrono::steady_clock::now();
  Impl& m = *impl_;
  m.dir = dir;
  m.options = options;
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) throw Error(ErrorCode::IoError, "cannot create directory " + dir.string() + ": " + ec.message());
  DirectoryFiles files = list_directory(dir);
  if (!files.has_state() && files.other > 0) {
    throw Error(ErrorCode::InvalidArgument, "directory " + dir.string() + " holds " + std::to_string(files.other) +
                                                " other files but no mmsb state; use an empty or new directory");
  }
  m.lock = std::make_unique<DirectoryLock>(dir);
  for (const fs::path& tmp : files.temporaries) fs::remove(tmp, ec);  // an interrupted checkpoint or segment

  Checkpoint ckpt = newest_checkpoint(files);
  RuntimeOptions rt_options = options.runtime;
  rt_options.first_lsn = 1;
  if (ckpt.state && ckpt.state->rank != rt_options.rank) {
    throw Error(ErrorCode::InvalidArgument, "directory " + dir.string() + " holds the state of rank " +
                                                std::to_string(ckpt.state->rank) + ", not rank " +
                                                std::to_string(rt_options.rank));
  }
  m.runtime = std::make_unique<Runtime>(rt_options);
  if (ckpt.state) {
    restore_pages(*m.runtime, *ckpt.state);
    m.recovery.checkpoint_lsn = ckpt.state->lsn;
    m.recovery.pages_restored = ckpt.state->pages.size();
  }
  LogReader reader(dir);
  std::vector<std::uint64_t> segment_max_lsn(reader.segments().size(), 0);  // 0: no record
  for (DecodedCommit c; reader.next(c);) {
    std::uint64_t& seen = segment_max_lsn[reader.current_segment_index()];
    seen = std::max(seen, c.lsn);
    if (c.lsn <= m.recovery.checkpoint_lsn) continue;
    apply_record(*m.runtime, c);
    ++m.recovery.records_replayed;
  }
  const std::uint64_t last = std::max(m.recovery.checkpoint_lsn, reader.report().last_lsn);
  detail::RuntimeAccess::of(*m.runtime).continue_after(last);
  m.recovery.last_lsn = last;
  m.recovery.truncated_bytes = reader.report().truncated_bytes;
  m.recovery.fresh = !files.has_state();
  if (m.recovery.truncated_bytes > 0) {
    // Expected after a crash during an append, but worth a line: those bytes are gone.
    detail::logger()->warn("{}: truncated a torn tail of {} bytes at offset {} of {} (a crash during an append)",
                           dir.string(), m.recovery.truncated_bytes, reader.report().truncated_offset,
                           reader.report().truncated_segment);
  }
  detail::logger()->info("{}: recovered to LSN {} (checkpoint LSN {}, {} pages, {} log records replayed)",
                         dir.string(), m.recovery.last_lsn, m.recovery.checkpoint_lsn, m.recovery.pages_restored,
                         m.recovery.records_replayed);

  serialize::LogOptions log_options;
  log_options.segment_bytes = options.segment_bytes;
  log_options.sync = to_log_policy(options.sync);
  log_options.sync_interval = options.sync_interval;
  m.log = std::make_shared<serialize::LogWriter>(dir, log_options, reader);
  m.runtime->set_commit_sink(m.log);
  if (ckpt.state) {
    // Finish what a checkpoint interrupted by a crash left undone: older checkpoints and the segments (except
    // the one being appended to) whose records the loaded checkpoint covers.
    bool removed = false;
    for (const auto& [lsn, path] : files.checkpoints) {
      if (lsn < ckpt.state->lsn) removed |= fs::remove(path, ec);
    }
    std::uint64_t keep_from = 0;
    const std::vector<fs::path>& segments = reader.segments();
    for (std::size_t i = 0; i < segments.size(); ++i) {
      if (i + 1 == segments.size() || segment_max_lsn[i] > ckpt.state->lsn) {
        serialize::parse_segment_name(segments[i].filename().string(), keep_from);
        break;
      }
    }
    if (removed) serialize::sync_directory(dir);
    if (keep_from > 0) m.log->remove_segments_before(keep_from);
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
  state.created_ns = now_ns();
  Runtime::Impl& rt = detail::RuntimeAccess::of(*m.runtime);
  // Outside the pause: a buffer large enough for the pages (with room for growth meanwhile), already faulted in.
  const std::uint64_t estimate = live_bytes(*m.runtime);
  prefault(m.snapshot_buffer, estimate + estimate / 8 + 4096);
  state.arena = std::move(m.snapshot_buffer);
  std::uint64_t keep_from = 0;
  const auto pause_start = std::chrono::steady_clock::now();
  rt.gate.close();  // no commit in flight from here: every record up to last_lsn is in the log and the pages
  try {
    snapshot_pages(*m.runtime, state);
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
      serialize::write_checkpoint(m.dir, state, m.options.checkpoint_compression_level);
  m.snapshot_buffer = std::move(state.arena);

  // The new checkpoint is durable: what it covers can go.
  DirectoryFiles files = list_directory(m.dir);
  bool removed = false;
  for (const auto& [lsn, path] : files.checkpoints) {
    if (lsn < state.lsn) {
      if (::unlink(path.c_str()) != 0 && errno != ENOENT) {
        serialize::detail::io_error("cannot delete old checkpoint", path, errno);
      }
      removed = true;
    }
  }
  if (removed) serialize::sync_directory(m.dir);
  if (keep_from > 0) info.segments_removed = m.log->remove_segments_before(keep_from);

  describe_checkpoint(state, file, info);
  info.duration = std::chrono::steady_clock::now() - started;
  Event done;
  done.kind = EventKind::Checkpoint;
  done.lsn = info.lsn;
  done.duration_ns = static_cast<std::uint64_t>(info.duration.count());
  done.message = info.file.filename().string();
  m.propagator->notify(done);
  return info;
}

// ------------------------------------------------------------------------------------------------ offline access

std::unique_ptr<Runtime> load_state(const fs::path& dir, ReplayTarget target, std::uint64_t* reached_lsn,
                                    const ReplayProgress& progress) {
  DirectoryFiles files = existing_state(dir);
  Checkpoint ckpt = newest_checkpoint(files);
  const std::uint64_t checkpoint_lsn = ckpt.state ? ckpt.state->lsn : 0;
  const std::uint64_t goal = target_lsn(dir, target, checkpoint_lsn);
  if (goal < checkpoint_lsn) {
    throw Error(ErrorCode::NotFound, "LSN " + std::to_string(goal) + " is older than the checkpoint of " +
                                         dir.string() + " (LSN " + std::to_string(checkpoint_lsn) +
                                         "); that history was compacted away");
  }
  RuntimeOptions options;
  options.rank = rank_of(ckpt, dir);
  auto rt = std::make_unique<Runtime>(options);
  if (ckpt.state) restore_pages(*rt, *ckpt.state);
  std::uint64_t reached = checkpoint_lsn, last = checkpoint_lsn;
  LogReader reader(dir);
  // Progress in log bytes: the sizes of the segments finished, plus the offset in the current one.
  std::uint64_t total_bytes = 0;
  std::map<fs::path, std::uint64_t> bytes_before;
  for (const fs::path& segment : reader.segments()) {
    bytes_before[segment] = total_bytes;
    std::error_code ec;
    total_bytes += fs::file_size(segment, ec);
  }
  std::uint64_t records = 0;
  for (DecodedCommit c; reader.next(c);) {
    if (progress && ++records % 4096 == 0) progress(bytes_before[reader.current_segment()] + reader.record_offset(), total_bytes);
    last = std::max(last, c.lsn);
    if (c.lsn <= checkpoint_lsn || c.lsn > goal) continue;
    apply_record(*rt, c);
    reached = std::max(reached, c.lsn);
  }
  if (target.kind == ReplayTarget::Kind::Lsn && goal > last) {
    throw Error(ErrorCode::NotFound, "LSN " + std::to_string(goal) + " is past the end of the log of " +
                                         dir.string() + " (last LSN " + std::to_string(last) + ")");
  }
  detail::RuntimeAccess::of(*rt).continue_after(reached);
  if (reached_lsn) *reached_lsn = reached;
  if (progress) progress(total_bytes, total_bytes);
  return rt;
}

CheckpointInfo replay_to(const fs::path& dir, ReplayTarget target, const fs::path& out,
                         const ReplayProgress& progress) {
  std::error_code ec;
  if (fs::exists(out, ec) && !(fs::is_directory(out, ec) && fs::is_empty(out, ec))) {
    throw Error(ErrorCode::InvalidArgument, "output directory " + out.string() + " exists and is not empty");
  }
  std::uint64_t reached = 0;
  std::unique_ptr<Runtime> rt = load_state(dir, target, &reached, progress);
  Checkpoint ckpt = newest_checkpoint(list_directory(dir));
  CheckpointState state;
  state.created_ns = now_ns();
  snapshot_pages(*rt, state);
  state.lsn = reached;
  if (ckpt.state) {
    state.nodes = std::move(ckpt.state->nodes);
    state.edges = std::move(ckpt.state->edges);
  }
  fs::create_directories(out, ec);
  if (ec) throw Error(ErrorCode::IoError, "cannot create directory " + out.string() + ": " + ec.message());
  serialize::CheckpointFileInfo file = serialize::write_checkpoint(out, state, 3);
  CheckpointInfo info;
  describe_checkpoint(state, file, info);
  return info;
}

void for_each_commit(const fs::path& dir, const std::function<bool(const CommitRecord&)>& visit) {
  DirectoryFiles files = existing_state(dir);
  const std::uint64_t checkpoint_lsn = files.checkpoints.empty() ? 0 : files.checkpoints.back().first;
  LogReader reader(dir);
  for (DecodedCommit c; reader.next(c);) {
    if (c.lsn <= checkpoint_lsn) continue;
    if (!visit(c.record())) return;
  }
}

std::vector<PageChange> page_history(const fs::path& dir, PageId page) {
  std::vector<PageChange> out;
  for_each_commit(dir, [&](const CommitRecord& r) {
    // A change of `page` in record `r`; epoch and size default to the last ones seen (for Deleted and Renamed).
    auto add = [&](PageChange::Kind kind) -> PageChange& {
      PageChange& ch = out.emplace_back();
      ch.kind = kind;
      ch.lsn = r.lsn;
      ch.timestamp_ns = r.timestamp_ns;
      if (out.size() > 1) {
        ch.epoch = out[out.size() - 2].epoch;
        ch.size = out[out.size() - 2].size;
      }
      return ch;
    };
    for (const auto& created : r.created) {
      if (created.id != page) continue;
      PageChange& ch = add(PageChange::Kind::Created);
      ch.epoch = 0;
      ch.size = created.size;
      ch.name = created.name;
    }
    for (const Delta& d : r.deltas) {
      if (d.page != page) continue;
      PageChange& ch = add(PageChange::Kind::Changed);
      ch.epoch = d.base_epoch + d.epoch_count;
      ch.size = d.size;
      ch.delta = d;
    }
    for (PageId id : r.deleted) {
      if (id == page) add(PageChange::Kind::Deleted).size = 0;
    }
    for (const CommitRecord::RenamedPage& renamed : r.renamed) {
      if (renamed.id == page) add(PageChange::Kind::Renamed).name = renamed.name;
    }
    return true;
  });
  std::stable_sort(out.begin(), out.end(), [](const PageChange& a, const PageChange& b) { return a.lsn < b.lsn; });
  return out;
}

DirectorySummary inspect(const fs::path& dir) {
  DirectoryFiles files = existing_state(dir);
  DirectorySummary sum;
  for (const auto& [lsn, path] : files.checkpoints) {
    CheckpointState state = serialize::read_checkpoint(path);
    CheckpointSummary c;
    c.file = path;
    c.lsn = state.lsn;
    std::error_code ec;
    c.bytes = fs::file_size(path, ec);
    c.pages = state.pages.size();
    c.nodes = state.nodes.size();
    c.edges = state.edges.size();
    c.created_ns = state.created_ns;
    sum.checkpoints.push_back(std::move(c));
  }
  const std::uint64_t checkpoint_lsn = sum.checkpoints.empty() ? 0 : sum.checkpoints.back().lsn;
  LogReader reader(dir);
  for (const fs::path& p : reader.segments()) {  // the same files, in the reader's order
    SegmentSummary s;
    s.file = p;
    std::error_code ec;
    s.bytes = fs::file_size(p, ec);
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
  return sum;
}

namespace {

// The records of one segment's bytes, with the damaged stretches between them.
struct SegmentScan {
  std::string header_problem;
  struct Good {
    std::uint64_t offset, end;
  };
  std::vector<Good> good;
  struct Bad {
    std::uint64_t offset, end;  // [offset, end) holds no intact record
    std::string what;
  };
  std::vector<Bad> bad;
  std::uint64_t torn_tail = 0;  // bytes at the end that a crash explains (last segment only)
};

// Finds the next offset >= from where an intact commit record starts (npos when none).
std::uint64_t resync(std::string_view data, std::uint64_t from) {
  for (std::uint64_t p = from; p + serialize::kRecordHeaderBytes <= data.size(); ++p) {
    if (serialize::detail::get_u32(data.data() + p + 4) != serialize::kRecordTypeCommit) continue;
    if (serialize::frame_at(data, p).state == FramedRecord::State::Ok) return p;
  }
  return std::string_view::npos;
}

SegmentScan scan_segment(std::string_view data, bool last_segment) {
  SegmentScan scan;
  scan.header_problem = serialize::segment_header_problem(data);
  if (!scan.header_problem.empty()) return scan;
  std::uint64_t pos = serialize::kSegmentHeaderBytes;
  while (pos < data.size()) {
    FramedRecord r = serialize::frame_at(data, pos);
    std::string what = r.problem;
    if (r.state == FramedRecord::State::Ok) {
      if (r.type != serialize::kRecordTypeCommit) {
        what = "unknown record type " + std::to_string(r.type);
      } else {
        try {
          (void)serialize::decode_commit(r.body);
          scan.good.push_back({pos, r.end});
          pos = r.end;
          continue;
        } catch (const Error& e) {
          what = e.what();
        }
      }
    }
    const std::uint64_t next = resync(data, pos + 1);
    if (next == std::string_view::npos && last_segment && r.state != FramedRecord::State::Ok &&
        r.state != FramedRecord::State::TooLong) {
      scan.torn_tail = data.size() - pos;  // what a crash during the last append leaves
      break;
    }
    const std::uint64_t end = next == std::string_view::npos ? data.size() : next;
    scan.bad.push_back({pos, end, what});
    pos = end;
  }
  return scan;
}

}  // namespace

VerifyReport verify(const fs::path& dir) {
  require_directory(dir);
  DirectoryFiles files = list_directory(dir);
  VerifyReport report;
  if (!files.has_state()) {
    report.ok = false;
    report.problems.push_back({dir, 0, "holds no mmsb state (no checkpoint-*.mmsb or log-*.mmsb files)"});
    return report;
  }
  for (const auto& [lsn, path] : files.checkpoints) {
    ++report.checkpoints_checked;
    try {
      CheckpointState s = serialize::read_checkpoint(path);
      if (s.lsn != lsn) report.problems.push_back({path, 0, "holds LSN " + std::to_string(s.lsn) + ", not the LSN in its name"});
    } catch (const Error& e) {
      report.problems.push_back({path, 0, e.what()});
    }
  }
  for (std::size_t i = 0; i < files.segments.size(); ++i) {
    const fs::path& path = files.segments[i];
    std::string data;
    try {
      data = serialize::read_file(path);
    } catch (const Error& e) {
      report.problems.push_back({path, 0, e.what()});
      continue;
    }
    SegmentScan scan = scan_segment(data, i + 1 == files.segments.size());
    if (!scan.header_problem.empty()) report.problems.push_back({path, 0, scan.header_problem});
    report.records_checked += scan.good.size();
    report.torn_tail_bytes += scan.torn_tail;
    for (const auto& bad : scan.bad) {
      report.problems.push_back({path, bad.offset, bad.what + " (" + std::to_string(bad.end - bad.offset) +
                                                       " bytes without an intact record)"});
    }
  }
  if (report.problems.empty()) {
    // The framing is sound: check that the history replays (every delta applies at its page's epoch).
    try {
      (void)load_state(dir);
    } catch (const Error& e) {
      report.problems.push_back({dir, 0, std::string("replay fails: ") + e.what()});
    }
  }
  report.ok = report.problems.empty();
  return report;
}

RepairReport repair(const fs::path& dir) {
  DirectoryFiles files = existing_state(dir);
  DirectoryLock lock(dir);
  RepairReport report;
  for (std::size_t i = 0; i < files.segments.size(); ++i) {
    const fs::path& path = files.segments[i];
    const std::string data = serialize::read_file(path);
    SegmentScan scan = scan_segment(data, i + 1 == files.segments.size());
    if (!scan.header_problem.empty()) {
      throw Error(ErrorCode::Corruption, "segment " + path.filename().string() + ": " + scan.header_problem +
                                             "; not repairable (move the file away if it is not an mmsb segment)");
    }
    if (scan.bad.empty() && scan.torn_tail == 0) continue;
    report.torn_tail_bytes += scan.torn_tail;
    std::string fixed = serialize::segment_header_bytes();
    for (const auto& g : scan.good) fixed.append(data, g.offset, g.end - g.offset);
    for (const auto& b : scan.bad) {
      report.bytes_dropped += b.end - b.offset;
      ++report.records_dropped;
    }
    if (!scan.bad.empty()) {
      const fs::path backup = path.string() + ".damaged";
      serialize::write_file_durably(backup, data);
      report.backups.push_back(backup);
    }
    serialize::write_file_durably(path, fixed);
  }
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
