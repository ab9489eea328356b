#include "support/fault_file_system.hpp"

#include <cstring>

#include "mmsb/error.hpp"

namespace mmsb::testing {

namespace fs = std::filesystem;

namespace {

class FaultFile final : public WritableFile {
 public:
  FaultFile(FaultFileSystem& owner, fs::path path, std::unique_ptr<WritableFile> base)
      : owner_(owner), path_(std::move(path)), base_(std::move(base)) {}
  void append(std::string_view data) override { owner_.file_append(path_, *base_, data); }
  void sync() override { owner_.file_sync(path_, *base_); }
  void truncate(std::uint64_t size) override { owner_.file_truncate(path_, *base_, size); }

 private:
  FaultFileSystem& owner_;
  fs::path path_;
  std::unique_ptr<WritableFile> base_;
};

[[noreturn]] void fail_with(int error, const std::string& what, const fs::path& path) {
  throw Error(ErrorCode::IoError, what + " " + path.string() + ": " + std::strerror(error) +
                                      (error == EIO ? " (injected)" : " (injected fault)"));
}

}  // namespace

FaultFileSystem::FaultFileSystem(std::shared_ptr<FileSystem> base, bool real_syncs)
    : base_(std::move(base)), real_syncs_(real_syncs) {}

void FaultFileSystem::fail(const Fault& fault) {
  std::lock_guard lock(mutex_);
  fault_ = fault;
}

void FaultFileSystem::clear_fault() {
  std::lock_guard lock(mutex_);
  fault_.reset();
}

void FaultFileSystem::crash_at_call(std::uint64_t n) {
  std::lock_guard lock(mutex_);
  crash_at_ = n == 0 ? 0 : calls_ + n;
}

void FaultFileSystem::crash() {
  std::lock_guard lock(mutex_);
  crashed_ = true;
}

bool FaultFileSystem::crashed() const {
  std::lock_guard lock(mutex_);
  return crashed_;
}

std::uint64_t FaultFileSystem::mutating_calls() const {
  std::lock_guard lock(mutex_);
  return calls_;
}

void FaultFileSystem::check_locked(Op op, const fs::path& path, bool* partial) {
  if (crashed_) fail_with(EIO, "simulated crash: cannot touch", path);
  ++calls_;  // every checked call changes the disk
  if (crash_at_ != 0 && calls_ >= crash_at_) {
    crashed_ = true;
    fail_with(EIO, "simulated crash at", path);
  }
  if (!fault_ || fault_->op != op) return;
  if (!fault_->path_contains.empty() && path.string().find(fault_->path_contains) == std::string::npos) return;
  if (fault_->skip > 0) {
    --fault_->skip;
    return;
  }
  if (fault_->count == 0) return;
  if (fault_->count != UINT64_MAX) --fault_->count;
  if (partial) *partial = fault_->partial;
  throw fault_->error;  // caught by the caller, which may write part of the data first
}

FaultFileSystem::Tracked& FaultFileSystem::tracked_locked(const fs::path& path) {
  auto it = files_.find(path);
  if (it != files_.end()) return it->second;
  const FileStatus st = base_->status(path);
  Tracked t;
  t.size = t.synced = st.size;
  return files_.emplace(path, t).first->second;
}

namespace {
// Runs `check` (which throws an int errno for an injected fault) and turns that into an IoError.
template <class F>
void checked(const char* what, const fs::path& path, F&& check) {
  try {
    check();
  } catch (int error) {
    fail_with(error, what, path);
  }
}
}  // namespace

std::unique_ptr<WritableFile> FaultFileSystem::create(const fs::path& path) {
  std::lock_guard lock(mutex_);
  checked("cannot create", path, [&] { check_locked(Op::Create, path); });
  if (!undo_.count(path) && !files_.count(path)) {
    const FileStatus st = base_->status(path);
    undo_[path] =
        st.type == FileType::Regular ? std::optional<std::string>(base_->read(path, UINT64_MAX)) : std::nullopt;
  }
  auto file = base_->create(path);
  files_[path] = Tracked{0, 0, false};
  return std::make_unique<FaultFile>(*this, path, std::move(file));
}

std::unique_ptr<WritableFile> FaultFileSystem::open_append(const fs::path& path) {
  std::lock_guard lock(mutex_);
  if (crashed_) fail_with(EIO, "simulated crash: cannot open", path);
  auto file = base_->open_append(path);
  tracked_locked(path);
  return std::make_unique<FaultFile>(*this, path, std::move(file));
}

FileStatus FaultFileSystem::status(const fs::path& path) {
  std::lock_guard lock(mutex_);
  if (crashed_) fail_with(EIO, "simulated crash: cannot stat", path);
  return base_->status(path);
}

std::string FaultFileSystem::read(const fs::path& path, std::uint64_t max_bytes) {
  std::lock_guard lock(mutex_);
  if (crashed_) fail_with(EIO, "simulated crash: cannot read", path);
  return base_->read(path, max_bytes);
}

std::vector<std::string> FaultFileSystem::list(const fs::path& dir) {
  std::lock_guard lock(mutex_);
  if (crashed_) fail_with(EIO, "simulated crash: cannot list", dir);
  return base_->list(dir);
}

void FaultFileSystem::rename(const fs::path& from, const fs::path& to) {
  std::lock_guard lock(mutex_);
  checked("cannot rename to", to, [&] { check_locked(Op::Rename, to); });
  Tracked moved = tracked_locked(from);
  if (!undo_.count(to)) {
    const FileStatus st = base_->status(to);
    undo_[to] = st.type == FileType::Regular ? std::optional<std::string>(base_->read(to, UINT64_MAX)) : std::nullopt;
  }
  if (moved.entry_durable && !undo_.count(from)) undo_[from] = base_->read(from, UINT64_MAX);
  base_->rename(from, to);
  files_.erase(from);
  moved.entry_durable = false;
  files_[to] = moved;
}

void FaultFileSystem::remove(const fs::path& path) {
  std::lock_guard lock(mutex_);
  checked("cannot delete", path, [&] { check_locked(Op::Remove, path); });
  const FileStatus st = base_->status(path);
  const auto it = files_.find(path);
  const bool durable = it == files_.end() || it->second.entry_durable;
  if (st.type == FileType::Regular && durable && !undo_.count(path)) undo_[path] = base_->read(path, UINT64_MAX);
  base_->remove(path);
  files_.erase(path);
}

void FaultFileSystem::create_directories(const fs::path& dir) {
  std::lock_guard lock(mutex_);
  if (crashed_) fail_with(EIO, "simulated crash: cannot create", dir);
  base_->create_directories(dir);
}

void FaultFileSystem::sync_directory(const fs::path& dir) {
  std::lock_guard lock(mutex_);
  checked("cannot fsync directory", dir, [&] { check_locked(Op::SyncDirectory, dir); });
  if (real_syncs_) base_->sync_directory(dir);
  for (auto& [path, t] : files_) {
    if (path.parent_path() == dir) t.entry_durable = true;
  }
  for (auto it = undo_.begin(); it != undo_.end();) {
    it = it->first.parent_path() == dir ? undo_.erase(it) : std::next(it);
  }
}

void FaultFileSystem::file_append(const fs::path& path, WritableFile& base, std::string_view data) {
  std::lock_guard lock(mutex_);
  Tracked& t = tracked_locked(path);
  bool partial = false;
  try {
    check_locked(Op::Append, path, &partial);
  } catch (int error) {
    if (partial && data.size() > 1) {
      base.append(data.substr(0, data.size() / 2));
      t.size += data.size() / 2;
    }
    fail_with(error, "cannot write to", path);
  }
  base.append(data);
  t.size += data.size();
}

void FaultFileSystem::file_sync(const fs::path& path, WritableFile& base) {
  std::lock_guard lock(mutex_);
  checked("cannot fdatasync", path, [&] { check_locked(Op::Sync, path); });
  if (real_syncs_) base.sync();
  Tracked& t = tracked_locked(path);
  t.synced = t.size;
}

void FaultFileSystem::file_truncate(const fs::path& path, WritableFile& base, std::uint64_t size) {
  std::lock_guard lock(mutex_);
  checked("cannot truncate", path, [&] { check_locked(Op::Truncate, path); });
  base.truncate(size);
  Tracked& t = tracked_locked(path);
  t.size = size;
  t.synced = std::min(t.synced, size);
}

void FaultFileSystem::lose_unsynced(Loss loss, std::mt19937_64& rng) {
  std::lock_guard lock(mutex_);
  // 1. Directory entries that were never made durable vanish.
  for (auto it = files_.begin(); it != files_.end();) {
    if (!it->second.entry_durable) {
      base_->remove(it->first);
      it = files_.erase(it);
    } else {
      ++it;
    }
  }
  // 2. What a non-durable rename replaced, or a non-durable removal deleted, is back.
  for (const auto& [path, content] : undo_) {
    files_.erase(path);
    if (!content) {
      base_->remove(path);
      continue;
    }
    auto file = base_->create(path);
    file->append(*content);
  }
  undo_.clear();
  // 3. Data not covered by an fdatasync is lost, in part or garbled.
  for (auto& [path, t] : files_) {
    if (t.size <= t.synced || base_->status(path).type != FileType::Regular) continue;
    const std::uint64_t unsynced = t.size - t.synced;
    std::uint64_t keep = t.synced;
    if (loss != Loss::Drop) keep += rng() % (unsynced + 1);
    auto file = base_->open_append(path);
    file->truncate(keep);
    if (loss == Loss::Garble && keep < t.size) {
      std::string garbage(rng() % (t.size - keep + 1), '\0');
      if (rng() % 2 == 0) {
        for (char& c : garbage) c = static_cast<char>(rng());
      }
      file->append(garbage);
    }
  }
  files_.clear();
}

void FaultFileSystem::restart() {
  std::lock_guard lock(mutex_);
  crashed_ = false;
  crash_at_ = 0;
  fault_.reset();
  files_.clear();
  undo_.clear();
}

}  // namespace mmsb::testing
