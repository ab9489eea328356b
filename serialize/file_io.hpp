// serialize/file_io.hpp — little-endian fields, numbered file names and durable whole-file writes shared by the
// log and checkpoints (internal).
//
// Thread-safety: reentrant functions without shared state.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <string_view>

#include "mmsb/file_system.hpp"

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

// Names of the form <prefix><n as 20 zero-padded digits><suffix> ("log-00000000000000000001.mmsb"), which sort
// as their numbers do: segments and checkpoints.
std::string numbered_file_name(std::string_view prefix, std::uint64_t n, std::string_view suffix);
// The number in such a name, or false when `name` does not have exactly that form.
bool parse_numbered_file_name(std::string_view name, std::string_view prefix, std::string_view suffix,
                              std::uint64_t& n);

// "0x" and 16 hex digits.
std::string hex64(std::uint64_t v);

// a + b, or Error(Corruption) naming `what` when the sum does not fit in 64 bits (sizes read from files).
std::uint64_t checked_add(std::uint64_t a, std::uint64_t b, const char* what);

}  // namespace mmsb::serialize::detail

namespace mmsb::serialize {

// Writes `path` atomically: `<path>.tmp`, fdatasync, rename, directory fsync. Error(IoError) on failure (the
// temporary file is removed again, best effort).
void write_file_durably(FileSystem& fs, const std::filesystem::path& path, std::string_view data);

}  // namespace mmsb::serialize
