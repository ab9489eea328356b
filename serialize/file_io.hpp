// serialize/file_io.hpp — little-endian fields and POSIX file helpers shared by the log and checkpoints (internal).
//
// Every function that fails throws Error(IoError) naming the path and the OS error.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <string_view>

namespace mmsb::serialize::detail {

inline void put_u32(char* p, std::uint32_t v) {
  for (int i = 0; i < 4; ++i) p[i] = static_cast<char>((v >> (8 * i)) & 0xff);
}
inline void put_u64(char* p, std::uint64_t v) {
  for (int i = 0; i < 8; ++i) p[i] = static_cast<char>((v >> (8 * i)) & 0xff);
}
inline std::uint32_t get_u32(const char* p) {
  std::uint32_t v = 0;
  for (int i = 3; i >= 0; --i) v = (v << 8) | static_cast<unsigned char>(p[i]);
  return v;
}
inline std::uint64_t get_u64(const char* p) {
  std::uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | static_cast<unsigned char>(p[i]);
  return v;
}

// Fault injection for tests (tests/durable/fault_test.cpp): makes chosen writes or syncs of the log and of
// checkpoints fail, so the error paths are exercised without a full disk. Off unless a test arms it; then one
// relaxed atomic load per I/O call.
enum class FaultOp : std::uint8_t { Write, Sync };
struct FaultPlan {
  FaultOp op = FaultOp::Write;
  std::uint64_t skip = 0;   // calls of this kind that still succeed first
  std::uint64_t fail = 1;   // calls that then fail
  int error = 28;           // errno of the failure (default ENOSPC)
  bool partial = false;     // Write: write half of the bytes, then fail (a short write on a filling disk)
};
void inject_fault(const FaultPlan& plan);
void clear_faults();
// The failure planned for this call, or 0. With `partial`, *half is set.
int take_fault(FaultOp op, bool* half = nullptr);

// Names of the form <prefix><n as 20 zero-padded digits><suffix> ("log-00000000000000000001.mmsb"), which sort
// as their numbers do: segments and checkpoints.
std::string numbered_file_name(std::string_view prefix, std::uint64_t n, std::string_view suffix);
// The number in such a name, or false when `name` does not have exactly that form.
bool parse_numbered_file_name(std::string_view name, std::string_view prefix, std::string_view suffix,
                              std::uint64_t& n);

[[noreturn]] void io_error(const std::string& what, const std::filesystem::path& path, int err);
// Writes all `n` bytes (retrying short writes and EINTR).
void write_all(int fd, const char* data, std::size_t n, const std::filesystem::path& path);
void sync_fd(int fd, const std::filesystem::path& path);
// fdatasync, retrying EINTR; returns 0 or the errno of the failure (also an injected one).
int fdatasync_retry(int fd);
// "0x" and 16 hex digits.
std::string hex64(std::uint64_t v);

}  // namespace mmsb::serialize::detail
