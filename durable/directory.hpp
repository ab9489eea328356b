// durable/directory.hpp — what a durable directory holds, and the helpers that opening, replaying and inspecting
// it share (internal to durable/).
//
// Thread-safety: plain functions; a DirectoryLock is owned by one DurableRuntime (or one repair()).
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "mmsb/durable.hpp"
#include "serialize/checkpoint.hpp"
#include "serialize/codec.hpp"
#include "serialize/log_reader.hpp"

namespace mmsb::durable {

inline constexpr const char* kLockFile = "LOCK";
// Folders that recovery modes and repair() fill with what they cut or dropped: "aside-<20-digit time>".
inline constexpr std::string_view kAsidePrefix = "aside-";

struct DirectoryFiles {
  std::vector<std::pair<std::uint64_t, std::filesystem::path>> checkpoints;  // by LSN
  std::vector<std::filesystem::path> segments;                               // by key
  std::vector<std::filesystem::path> temporaries;                            // *.tmp left by a crash
  std::size_t other = 0;                                                     // files that are not ours

  bool has_state() const { return !checkpoints.empty() || !segments.empty(); }
};

DirectoryFiles list_directory(FileSystem& fsys, const std::filesystem::path& dir);
// Error(NotFound) unless `dir` is a directory.
void require_directory(FileSystem& fsys, const std::filesystem::path& dir);
// The files of `dir`, which must exist and hold mmsb state (else Error(NotFound)).
DirectoryFiles existing_state(FileSystem& fsys, const std::filesystem::path& dir);

std::shared_ptr<FileSystem> file_system_or_default(const std::shared_ptr<FileSystem>& fsys);
serialize::DamagePolicy damage_policy(RecoveryMode mode);
DamageReport damage_report(const std::filesystem::path& dir, const serialize::DamageInfo& info);

std::uint64_t now_ns();

// Applies one log record to a runtime being rebuilt (one thread; no sink), at the record's own LSN. A record that
// does not apply (a page that does not exist, a delta at the wrong epoch) throws Error(Corruption) before changing
// anything.
void apply_record(Runtime& rt, const serialize::DecodedCommit& c);

void restore_pages(Runtime& rt, const serialize::CheckpointState& ckpt);

struct Checkpoint {
  std::optional<serialize::CheckpointState> state;
  std::filesystem::path file;
};
// The checkpoint recovery starts from (none when the directory has none).
Checkpoint newest_checkpoint(FileSystem& fsys, const DirectoryFiles& files);

// The rank of the state in `dir`: the checkpoint's, else that of the first page the log creates.
std::uint32_t rank_of(const Checkpoint& ckpt, const std::filesystem::path& dir,
                      const serialize::LogReaderOptions& options);

// Copies every live page under the gate (the caller closed it) into a checkpoint state.
void snapshot_pages(Runtime& rt, serialize::CheckpointState& state);
// What a written checkpoint holds, for CheckpointInfo.
void describe_checkpoint(const serialize::CheckpointState& state, const serialize::CheckpointFileInfo& file,
                         CheckpointInfo& info);

// An exclusive flock on dir/LOCK, held for the object's lifetime.
class DirectoryLock {
 public:
  explicit DirectoryLock(const std::filesystem::path& dir);
  ~DirectoryLock();
  DirectoryLock(const DirectoryLock&) = delete;
  DirectoryLock& operator=(const DirectoryLock&) = delete;

 private:
  int fd_ = -1;
};

}  // namespace mmsb::durable
