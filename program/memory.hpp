// program/memory.hpp — a program's check that a run fits in memory before it allocates anything, so that a size
// the options accept but the machine cannot hold is refused with the memory it would need instead of ending in
// the kernel's OOM killer.
//
//   const std::uint64_t need = 6 * field_bytes;  // the program's own estimate of its peak
//   mmsb::program::require_memory("a 32768 x 32768 grid", need, "use a smaller --size");
//
// The memory available is the least of the kernel's MemAvailable (/proc/meminfo), the room left under the
// process's cgroup limit (memory.max - memory.current, cgroup v2), and MMSB_MEMORY_LIMIT when it is set
// (bytes, or with a K, M, G or T suffix for powers of 1024): a user can leave room for other work with it, and the
// tests use it to make the refusal independent of the machine.
//
// Header-only, used only by programs (never by a library module). Thread-safety: call from main() only.
#pragma once

#include <algorithm>
#include <cctype>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <limits>
#include <optional>
#include <string>
#include <string_view>

#include "mmsb/error.hpp"

namespace mmsb::program {

namespace detail {

// A byte count with an optional binary suffix ("512M", "4G", "123"); nothing when the text is not one.
inline std::optional<std::uint64_t> parse_bytes(std::string_view text) {
  std::uint64_t value = 0;
  std::size_t i = 0;
  for (; i < text.size() && std::isdigit(static_cast<unsigned char>(text[i])); ++i) {
    const std::uint64_t digit = static_cast<std::uint64_t>(text[i] - '0');
    if (value > (std::numeric_limits<std::uint64_t>::max() - digit) / 10) return std::nullopt;
    value = value * 10 + digit;
  }
  if (i == 0) return std::nullopt;
  unsigned shift = 0;
  if (i + 1 == text.size()) {
    switch (std::toupper(static_cast<unsigned char>(text[i]))) {
      case 'K':
        shift = 10;
        break;
      case 'M':
        shift = 20;
        break;
      case 'G':
        shift = 30;
        break;
      case 'T':
        shift = 40;
        break;
      default:
        return std::nullopt;
    }
  } else if (i != text.size()) {
    return std::nullopt;
  }
  if (shift > 0 && value > (std::numeric_limits<std::uint64_t>::max() >> shift)) return std::nullopt;
  return value << shift;
}

// The first number after `key` in a file such as /proc/meminfo; nothing when absent.
inline std::optional<std::uint64_t> number_after(const std::string& path, std::string_view key) {
  std::ifstream in(path);
  std::string line;
  while (std::getline(in, line)) {
    if (line.compare(0, key.size(), key) != 0) continue;
    const auto digits = line.find_first_of("0123456789", key.size());
    if (digits == std::string::npos) return std::nullopt;
    return std::strtoull(line.c_str() + digits, nullptr, 10);
  }
  return std::nullopt;
}

// The room left under this process's cgroup v2 memory limit; nothing when there is no limit.
inline std::optional<std::uint64_t> cgroup_room() {
  std::ifstream self("/proc/self/cgroup");
  std::string line, path;
  while (std::getline(self, line)) {
    if (line.rfind("0::", 0) == 0) path = line.substr(3);
  }
  if (path.empty()) return std::nullopt;
  const std::string dir = "/sys/fs/cgroup" + (path == "/" ? std::string() : path);
  std::ifstream max_file(dir + "/memory.max");
  std::string max_text;
  if (!(max_file >> max_text) || max_text == "max") return std::nullopt;
  const std::optional<std::uint64_t> limit = parse_bytes(max_text);
  const std::optional<std::uint64_t> used = number_after(dir + "/memory.current", "");
  if (!limit) return std::nullopt;
  return *limit - std::min(*limit, used.value_or(0));
}

inline std::string gib(std::uint64_t bytes) {
  char text[32];
  std::snprintf(text, sizeof text, "%.1f GiB", static_cast<double>(bytes) / (1024.0 * 1024.0 * 1024.0));
  return text;
}

}  // namespace detail

// The bytes this process may still allocate (see the top of this file) and where that bound comes from.
struct AvailableMemory {
  std::uint64_t bytes = std::numeric_limits<std::uint64_t>::max();
  std::string source;  // "MemAvailable", "the cgroup limit" or "MMSB_MEMORY_LIMIT"
};

// Throws mmsb::Error(InvalidArgument) when MMSB_MEMORY_LIMIT is set but is not a byte count.
inline AvailableMemory available_memory() {
  AvailableMemory out;
  if (const auto kib = detail::number_after("/proc/meminfo", "MemAvailable:")) {
    out = {*kib * 1024, "MemAvailable"};
  }
  if (const auto room = detail::cgroup_room(); room && *room < out.bytes) out = {*room, "the cgroup limit"};
  if (const char* env = std::getenv("MMSB_MEMORY_LIMIT"); env != nullptr && *env != '\0') {
    const std::optional<std::uint64_t> limit = detail::parse_bytes(env);
    if (!limit) {
      throw mmsb::Error(mmsb::ErrorCode::InvalidArgument,
                        "MMSB_MEMORY_LIMIT='" + std::string(env) + "' is not a byte count such as 8G or 512M");
    }
    if (*limit < out.bytes) out = {*limit, "MMSB_MEMORY_LIMIT"};
  }
  return out;
}

// Refuses a run that would need more memory than is available: throws mmsb::Error(ResourceExhausted) naming
// `what`, the estimate, what is available and where that bound comes from, and `advice`.
inline void require_memory(std::string_view what, std::uint64_t need_bytes, std::string_view advice) {
  const AvailableMemory available = available_memory();
  if (need_bytes <= available.bytes) return;
  throw mmsb::Error(mmsb::ErrorCode::ResourceExhausted, std::string(what) + " needs about " + detail::gib(need_bytes) +
                                                            " of memory, but only " + detail::gib(available.bytes) +
                                                            " is available (" + available.source + "); " +
                                                            std::string(advice));
}

}  // namespace mmsb::program
