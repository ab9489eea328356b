// mmsb/file_system.hpp — the file interface through which the durable log and checkpoints do all their I/O.
//
// DurableRuntime, the transaction log and the checkpoint files never call the operating system's file functions
// directly: they go through a FileSystem, so that a test can put one in between that loses what was not synced at
// a simulated crash, or fails chosen calls (a short write, ENOSPC, EIO on fdatasync), in the manner of LevelDB's
// fault-injection Env. The default is posix_file_system(); an application may supply its own (to count I/O, say).
//
//   mmsb::DurableOptions options;
//   options.file_system = my_counting_file_system;        // a std::shared_ptr<mmsb::FileSystem>
//   mmsb::DurableRuntime db("/var/lib/app/state", options);
//
// Errors: every member throws Error(IoError) naming the path and the OS error when the operation fails, except
// where noted. After a failed append() any prefix of the data may have reached the file (as a short write does).
//
// Thread-safety: a FileSystem's members may be called concurrently (for different files). A WritableFile is used
// by one thread at a time; the log serializes its calls.
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace mmsb {

// A file open for writing. The destructor closes it (ignoring errors); nothing is synced implicitly.
class WritableFile {
 public:
  virtual ~WritableFile() = default;
  // Appends all of `data` at the end of the file.
  virtual void append(std::string_view data) = 0;
  // Makes everything appended so far durable (fdatasync).
  virtual void sync() = 0;
  // Cuts the file to `size` bytes (later appends continue there).
  virtual void truncate(std::uint64_t size) = 0;
};

enum class FileType : std::uint8_t { Missing, Regular, Directory, Other };

struct FileStatus {
  FileType type = FileType::Missing;  // after following symbolic links; Other: a FIFO, socket or device
  std::uint64_t size = 0;             // Regular only
};

class FileSystem {
 public:
  virtual ~FileSystem() = default;
  // A new, empty file (an existing one is truncated).
  virtual std::unique_ptr<WritableFile> create(const std::filesystem::path& path) = 0;
  // An existing file, appended to at its end.
  virtual std::unique_ptr<WritableFile> open_append(const std::filesystem::path& path) = 0;
  // What `path` is, without opening it (so a FIFO cannot block the caller). Never throws for a missing path.
  virtual FileStatus status(const std::filesystem::path& path) = 0;
  // The whole contents of a regular file of at most `max_bytes` bytes. Throws Error(InvalidArgument) for anything
  // that is not a regular file or is larger, without reading it.
  virtual std::string read(const std::filesystem::path& path, std::uint64_t max_bytes) = 0;
  // The names in a directory (not "." and ".."), in no particular order.
  virtual std::vector<std::string> list(const std::filesystem::path& dir) = 0;
  virtual void rename(const std::filesystem::path& from, const std::filesystem::path& to) = 0;
  // Removes a file; a missing file is not an error.
  virtual void remove(const std::filesystem::path& path) = 0;
  virtual void create_directories(const std::filesystem::path& dir) = 0;
  // fsync of a directory, so that creations, renames and removals in it are durable.
  virtual void sync_directory(const std::filesystem::path& dir) = 0;
};

// The operating system's files (POSIX calls; EINTR is retried). One shared instance.
std::shared_ptr<FileSystem> posix_file_system();

}  // namespace mmsb
