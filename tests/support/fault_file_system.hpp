// A FileSystem for tests that loses what was not synced at a simulated crash, and fails chosen calls — in the
// manner of LevelDB's fault-injection Env and RocksDB's FaultInjectionTestFS.
//
//   auto fsys = std::make_shared<FaultFileSystem>();
//   DurableOptions o; o.file_system = fsys;
//   { DurableRuntime db(dir, o); ...; fsys->crash(); }     // every call fails from here on, as if the process died
//   fsys->lose_unsynced(FaultFileSystem::Loss::Garble, rng);  // the disk as a machine crash could leave it
//   fsys->restart();                                       // calls work again
//
// What it tracks, per file written through it: the size an fdatasync covered, and whether the file's creation (or
// rename into place, or removal) was covered by an fsync of its directory. lose_unsynced() then cuts every file
// back to what was synced (keeping a random part of the rest, or garbling it, as the Loss says), removes files
// whose creation was never made durable, restores the previous file under a name a non-durable rename replaced,
// and brings back files whose removal was never made durable. Files it never wrote count as synced.
//
// Thread-safety: every member may be called concurrently.
#pragma once

#include <cerrno>
#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <random>
#include <string>

#include "mmsb/file_system.hpp"

namespace mmsb::testing {

class FaultFileSystem : public FileSystem {
 public:
  enum class Op : std::uint8_t { Append, Sync, Truncate, Create, Rename, Remove, SyncDirectory };
  struct Fault {
    Op op = Op::Append;
    std::uint64_t skip = 0;     // matching calls that still succeed first
    std::uint64_t count = 1;    // matching calls that then fail (UINT64_MAX: all, until clear_fault())
    int error = ENOSPC;         // errno in the message
    bool partial = false;       // Append: half of the bytes reach the file first (a short write on a full disk)
    std::string path_contains;  // only calls on paths containing this (empty: any path)
  };
  enum class Loss : std::uint8_t {
    Drop,        // every unsynced byte is gone
    KeepPrefix,  // a random prefix of the unsynced bytes survived
    Garble,      // a random prefix survived, then a random stretch of garbage (random bytes or zeros)
  };

  // With `real_syncs` false, fdatasync and directory fsync are only recorded, not done: a simulated crash loses
  // the same data, and tests that never lose power run without waiting for the disk.
  explicit FaultFileSystem(std::shared_ptr<FileSystem> base = posix_file_system(), bool real_syncs = true);

  void fail(const Fault& fault);  // replaces any armed fault
  void clear_fault();
  // The `n`th mutating call from now (append, sync, truncate, create, rename, remove, directory sync; 1 = the
  // next) fails and the file system crashes there.
  void crash_at_call(std::uint64_t n);
  void crash();  // every call fails from now on ("simulated crash")
  bool crashed() const;
  // Applies a crash's losses to the files (see above); call after crash() once everything using the file system
  // is gone.
  void lose_unsynced(Loss loss, std::mt19937_64& rng);
  void restart();  // calls work again; tracking starts afresh (everything on disk now counts as synced)
  std::uint64_t mutating_calls() const;

  std::unique_ptr<WritableFile> create(const std::filesystem::path& path) override;
  std::unique_ptr<WritableFile> open_append(const std::filesystem::path& path) override;
  FileStatus status(const std::filesystem::path& path) override;
  std::string read(const std::filesystem::path& path, std::uint64_t max_bytes) override;
  std::vector<std::string> list(const std::filesystem::path& dir) override;
  void rename(const std::filesystem::path& from, const std::filesystem::path& to) override;
  void remove(const std::filesystem::path& path) override;
  void create_directories(const std::filesystem::path& dir) override;
  void sync_directory(const std::filesystem::path& dir) override;

  // internal (the files it hands out call these)
  void file_append(const std::filesystem::path& path, WritableFile& base, std::string_view data);
  void file_sync(const std::filesystem::path& path, WritableFile& base);
  void file_truncate(const std::filesystem::path& path, WritableFile& base, std::uint64_t size);

 private:
  struct Tracked {
    std::uint64_t size = 0;     // what this file system wrote (or found)
    std::uint64_t synced = 0;   // what an fdatasync covered
    bool entry_durable = true;  // the directory entry (creation, rename into place) survives a crash
  };
  // Throws the armed fault for this call, or the crash; counts mutating calls. Called with mutex_ held.
  void check_locked(Op op, const std::filesystem::path& path, bool* partial = nullptr);
  Tracked& tracked_locked(const std::filesystem::path& path);

  std::shared_ptr<FileSystem> base_;
  const bool real_syncs_;
  mutable std::mutex mutex_;
  std::optional<Fault> fault_;                      // mutex_
  std::uint64_t calls_ = 0;                         // mutex_
  std::uint64_t crash_at_ = 0;                      // mutex_: 0 = none
  bool crashed_ = false;                            // mutex_
  std::map<std::filesystem::path, Tracked> files_;  // mutex_
  // Contents a non-durable rename replaced or a non-durable removal deleted, to put back at a crash.
  std::map<std::filesystem::path, std::optional<std::string>> undo_;  // mutex_ (nullopt: the name did not exist)
};

}  // namespace mmsb::testing
