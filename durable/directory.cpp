// What a durable directory holds, and the helpers durable/ shares (durable/directory.hpp).
#include "durable/directory.hpp"

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <shared_mutex>

#include "mmsb/error.hpp"
#include "runtime/runtime_impl.hpp"
#include "serialize/log_format.hpp"

namespace mmsb::durable {

namespace fs = std::filesystem;
using serialize::CheckpointState;
using serialize::DecodedCommit;

namespace {
bool ends_with(const std::string& s, std::string_view suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}
}  // namespace

DirectoryFiles list_directory(FileSystem& fsys, const fs::path& dir) {
  DirectoryFiles files;
  std::vector<std::pair<std::uint64_t, fs::path>> segments;
  for (const std::string& name : fsys.list(dir)) {
    std::uint64_t key = 0;
    if (serialize::parse_checkpoint_name(name, key)) {
      files.checkpoints.emplace_back(key, dir / name);
    } else if (serialize::parse_segment_name(name, key)) {
      segments.emplace_back(key, dir / name);
    } else if (ends_with(name, ".mmsb.tmp")) {
      files.temporaries.push_back(dir / name);
    } else if (name != kLockFile && name != serialize::kManifestName && name.rfind(kAsidePrefix, 0) != 0) {
      ++files.other;
    }
  }
  std::sort(files.checkpoints.begin(), files.checkpoints.end());
  std::sort(segments.begin(), segments.end());
  for (auto& s : segments) files.segments.push_back(std::move(s.second));
  return files;
}

void require_directory(FileSystem& fsys, const fs::path& dir) {
  if (fsys.status(dir).type != FileType::Directory) {
    throw Error(ErrorCode::NotFound, "directory " + dir.string() + " does not exist (or is not a directory)");
  }
}

DirectoryFiles existing_state(FileSystem& fsys, const fs::path& dir) {
  require_directory(fsys, dir);
  DirectoryFiles files = list_directory(fsys, dir);
  if (!files.has_state()) {
    throw Error(ErrorCode::NotFound,
                "directory " + dir.string() + " holds no mmsb state (no checkpoint-*.mmsb or log-*.mmsb files)");
  }
  return files;
}

std::shared_ptr<FileSystem> file_system_or_default(const std::shared_ptr<FileSystem>& fsys) {
  return fsys ? fsys : posix_file_system();
}

serialize::DamagePolicy damage_policy(RecoveryMode mode) {
  switch (mode) {
    case RecoveryMode::TolerateTornTail:
      break;
    case RecoveryMode::Absolute:
      return serialize::DamagePolicy::Absolute;
    case RecoveryMode::PointInTime:
      return serialize::DamagePolicy::PointInTime;
    case RecoveryMode::SkipDamaged:
      return serialize::DamagePolicy::SkipDamaged;
  }
  return serialize::DamagePolicy::TolerateTornTail;
}

DamageReport damage_report(const fs::path& dir, const serialize::DamageInfo& info) {
  DamageReport r;
  r.file = dir / info.segment;
  r.offset = info.offset;
  r.bytes = info.bytes;
  r.what = info.what;
  r.last_good_lsn = info.last_good_lsn;
  return r;
}

std::uint64_t now_ns() {
  return static_cast<std::uint64_t>(
      std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::system_clock::now().time_since_epoch())
          .count());
}

namespace {
[[noreturn]] void bad_record(const DecodedCommit& c, const std::string& what) {
  throw Error(ErrorCode::Corruption, "log record of LSN " + std::to_string(c.lsn) + " does not apply: " + what);
}
}  // namespace

void apply_record(Runtime& rt, const DecodedCommit& c) {
  Runtime::Impl& impl = detail::RuntimeAccess::of(rt);
  // Everything is checked before anything changes, so a record that does not apply leaves no trace (SkipDamaged
  // goes on without it). Writers put deltas, a creation and a deletion in separate records; the replay of deltas
  // checks all of them before applying any.
  if (!c.deltas.empty() && (!c.created.empty() || !c.deleted.empty())) {
    bad_record(c, "it mixes deltas with page creations or deletions, which no writer does");
  }
  for (const CommitRecord::CreatedPage& created : c.created) {
    if (created.id.rank() != impl.options.rank || !created.id.valid() ||
        created.id.sequence() > detail::PageStore::kMaxSequence) {
      bad_record(c, "it creates page " + created.id.to_string() + ", which a runtime of rank " +
                        std::to_string(impl.options.rank) + " cannot hold");
    }
    if (impl.find(created.id) != nullptr) bad_record(c, "it creates page " + created.id.to_string() + " again");
  }
  for (PageId id : c.deleted) {
    const PageRecord* record = impl.find(id);
    if (record == nullptr || record->deleted.load(std::memory_order_relaxed)) {
      bad_record(c, "it deletes page " + id.to_string() + ", which does not exist");
    }
  }
  try {
    for (const CommitRecord::CreatedPage& created : c.created) {
      impl.reserve_through(created.id.sequence());
      impl.set_next_lsn(c.lsn);
      impl.create(created.id.sequence(), created.size, created.location);
    }
    if (!c.deltas.empty()) impl.replay_deltas(c.deltas, c.lsn);
    for (PageId id : c.deleted) {
      impl.set_next_lsn(c.lsn);
      rt.delete_page(id);
    }
  } catch (const Error& e) {
    if (e.code() == ErrorCode::Corruption) throw;
    bad_record(c, e.what());
  }
}

void restore_pages(Runtime& rt, const CheckpointState& ckpt) {
  Runtime::Impl& impl = detail::RuntimeAccess::of(rt);
  for (const serialize::PageImage& img : ckpt.pages) {
    const std::string_view bytes = ckpt.bytes(img);
    impl.restore_page(img.id, img.epoch, img.location, reinterpret_cast<const std::byte*>(bytes.data()), bytes.size());
  }
  if (ckpt.next_sequence > 1) impl.reserve_through(ckpt.next_sequence - 1);
  impl.continue_after(ckpt.lsn);
}

Checkpoint newest_checkpoint(FileSystem& fsys, const DirectoryFiles& files) {
  Checkpoint c;
  if (files.checkpoints.empty()) return c;
  c.file = files.checkpoints.back().second;
  c.state = serialize::read_checkpoint(c.file, {}, fsys);
  if (c.state->lsn != files.checkpoints.back().first) {
    throw Error(ErrorCode::Corruption, "checkpoint " + c.file.filename().string() + " holds LSN " +
                                           std::to_string(c.state->lsn) + ", not the LSN in its name");
  }
  return c;
}

std::uint32_t rank_of(const Checkpoint& ckpt, const fs::path& dir, const serialize::LogReaderOptions& options) {
  if (ckpt.state) return ckpt.state->rank;
  // No checkpoint: the first created page tells the rank.
  serialize::LogReader reader(dir, options);
  for (DecodedCommit c; reader.next(c);) {
    if (!c.created.empty()) return c.created.front().id.rank();
  }
  return 0;
}

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
    img.offset = state.arena.size();
    state.arena.append(reinterpret_cast<const char*>(record.data), img.size);
    state.pages.push_back(img);
  });
}

void describe_checkpoint(const CheckpointState& state, const serialize::CheckpointFileInfo& file,
                         CheckpointInfo& info) {
  info.lsn = state.lsn;
  info.file = file.file;
  info.pages = state.pages.size();
  info.nodes = state.nodes.size();
  info.raw_bytes = file.raw_bytes;
  info.file_bytes = file.file_bytes;
}

DirectoryLock::DirectoryLock(const fs::path& dir) {
  const fs::path path = dir / kLockFile;
  fd_ = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  if (fd_ < 0) {
    throw Error(ErrorCode::IoError, "cannot open lock file " + path.string() + ": " + std::strerror(errno));
  }
  if (::flock(fd_, LOCK_EX | LOCK_NB) != 0) {
    const int err = errno;
    ::close(fd_);
    if (err == EWOULDBLOCK) {
      throw Error(ErrorCode::InvalidArgument,
                  "directory " + dir.string() + " is in use by another DurableRuntime (its LOCK file is held)");
    }
    throw Error(ErrorCode::IoError, "cannot lock " + path.string() + ": " + std::strerror(err));
  }
}

DirectoryLock::~DirectoryLock() { ::close(fd_); }

}  // namespace mmsb::durable
