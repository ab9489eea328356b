// The operating system's files behind mmsb::FileSystem (mmsb/file_system.hpp).
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <system_error>

#include "mmsb/error.hpp"
#include "mmsb/file_system.hpp"

namespace mmsb {
namespace {

namespace fs = std::filesystem;

[[noreturn]] void os_error(const std::string& what, const fs::path& path, int err) {
  throw Error(ErrorCode::IoError, what + " " + path.string() + ": " + std::strerror(err));
}

class PosixWritableFile final : public WritableFile {
 public:
  PosixWritableFile(int fd, fs::path path) : fd_(fd), path_(std::move(path)) {}
  ~PosixWritableFile() override { ::close(fd_); }
  PosixWritableFile(const PosixWritableFile&) = delete;
  PosixWritableFile& operator=(const PosixWritableFile&) = delete;

  void append(std::string_view data) override {
    const char* p = data.data();
    std::size_t n = data.size();
    while (n > 0) {
      const ssize_t w = ::write(fd_, p, n);
      if (w < 0) {
        if (errno == EINTR) continue;
        os_error("cannot write to", path_, errno);
      }
      p += w;
      n -= static_cast<std::size_t>(w);
    }
  }
  void sync() override {
    while (::fdatasync(fd_) != 0) {
      if (errno != EINTR) os_error("cannot fdatasync", path_, errno);
    }
  }
  void truncate(std::uint64_t size) override {
    if (::ftruncate(fd_, static_cast<off_t>(size)) != 0) os_error("cannot truncate", path_, errno);
  }

 private:
  int fd_;
  fs::path path_;
};

class PosixFileSystem final : public FileSystem {
 public:
  std::unique_ptr<WritableFile> create(const fs::path& path) override {
    const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) os_error("cannot create", path, errno);
    return std::make_unique<PosixWritableFile>(fd, path);
  }
  std::unique_ptr<WritableFile> open_append(const fs::path& path) override {
    const int fd = ::open(path.c_str(), O_WRONLY | O_APPEND | O_CLOEXEC);
    if (fd < 0) os_error("cannot open", path, errno);
    return std::make_unique<PosixWritableFile>(fd, path);
  }
  FileStatus status(const fs::path& path) override {
    struct stat st {};
    if (::stat(path.c_str(), &st) != 0) {
      if (errno == ENOENT || errno == ENOTDIR) return {};
      os_error("cannot stat", path, errno);
    }
    if (S_ISREG(st.st_mode)) return {FileType::Regular, static_cast<std::uint64_t>(st.st_size)};
    if (S_ISDIR(st.st_mode)) return {FileType::Directory, 0};
    return {FileType::Other, 0};
  }
  std::string read(const fs::path& path, std::uint64_t max_bytes) override {
    // O_NONBLOCK: should `path` have become a FIFO since the caller looked, opening it must not wait for a writer.
    const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    if (fd < 0) os_error("cannot open", path, errno);
    struct Closer {
      int fd;
      ~Closer() { ::close(fd); }
    } closer{fd};
    struct stat st {};
    if (::fstat(fd, &st) != 0) os_error("cannot stat", path, errno);
    if (!S_ISREG(st.st_mode)) {
      throw Error(ErrorCode::InvalidArgument, path.string() + " is not a regular file; refusing to read it");
    }
    const auto size = static_cast<std::uint64_t>(st.st_size);
    if (size > max_bytes) {
      throw Error(ErrorCode::InvalidArgument, path.string() + " holds " + std::to_string(size) +
                                                  " bytes, more than the " + std::to_string(max_bytes) +
                                                  " expected; refusing to read it");
    }
    std::string out(static_cast<std::size_t>(size), '\0');
    std::uint64_t done = 0;
    while (done < size) {  // the file may shrink meanwhile: stop at its end
      const ssize_t r = ::read(fd, out.data() + done, static_cast<std::size_t>(size - done));
      if (r < 0) {
        if (errno == EINTR || errno == EAGAIN) continue;
        os_error("cannot read", path, errno);
      }
      if (r == 0) break;
      done += static_cast<std::uint64_t>(r);
    }
    out.resize(static_cast<std::size_t>(done));
    return out;
  }
  std::vector<std::string> list(const fs::path& dir) override {
    std::vector<std::string> names;
    std::error_code ec;
    fs::directory_iterator it(dir, ec);
    if (ec) throw Error(ErrorCode::IoError, "cannot list directory " + dir.string() + ": " + ec.message());
    for (; it != fs::directory_iterator(); it.increment(ec)) names.push_back(it->path().filename().string());
    if (ec) throw Error(ErrorCode::IoError, "cannot list directory " + dir.string() + ": " + ec.message());
    return names;
  }
  void rename(const fs::path& from, const fs::path& to) override {
    if (::rename(from.c_str(), to.c_str()) != 0) os_error("cannot rename " + from.string() + " to", to, errno);
  }
  void remove(const fs::path& path) override {
    if (::unlink(path.c_str()) != 0 && errno != ENOENT) os_error("cannot delete", path, errno);
  }
  void create_directories(const fs::path& dir) override {
    std::error_code ec;
    fs::create_directories(dir, ec);
    if (ec) throw Error(ErrorCode::IoError, "cannot create directory " + dir.string() + ": " + ec.message());
  }
  void sync_directory(const fs::path& dir) override {
    const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) os_error("cannot open directory", dir, errno);
    int rc;
    while ((rc = ::fsync(fd)) != 0 && errno == EINTR) {
    }
    const int err = errno;
    ::close(fd);
    if (rc != 0) os_error("cannot fsync directory", dir, err);
  }
};

}  // namespace

std::shared_ptr<FileSystem> posix_file_system() {
  static const std::shared_ptr<FileSystem> instance = std::make_shared<PosixFileSystem>();
  return instance;
}

}  // namespace mmsb
