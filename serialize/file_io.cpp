#include "serialize/file_io.hpp"

#include <cstdio>

#include "mmsb/error.hpp"

namespace mmsb::serialize {
namespace detail {

namespace {
constexpr std::size_t kNameDigits = 20;  // enough for any uint64
}  // namespace

std::string numbered_file_name(std::string_view prefix, std::uint64_t n, std::string_view suffix) {
  char digits[kNameDigits + 1];
  std::snprintf(digits, sizeof digits, "%020llu", static_cast<unsigned long long>(n));
  std::string name(prefix);
  name.append(digits, kNameDigits);
  name.append(suffix);
  return name;
}

bool parse_numbered_file_name(std::string_view name, std::string_view prefix, std::string_view suffix,
                              std::uint64_t& n) {
  if (name.size() != prefix.size() + kNameDigits + suffix.size()) return false;
  if (name.substr(0, prefix.size()) != prefix || name.substr(name.size() - suffix.size()) != suffix) return false;
  std::uint64_t v = 0;
  for (char c : name.substr(prefix.size(), kNameDigits)) {
    if (c < '0' || c > '9') return false;
    const std::uint64_t digit = static_cast<std::uint64_t>(c - '0');
    if (v > (UINT64_MAX - digit) / 10) return false;
    v = v * 10 + digit;
  }
  n = v;
  return true;
}

std::string hex64(std::uint64_t v) {
  char buf[19];
  std::snprintf(buf, sizeof buf, "0x%016llx", static_cast<unsigned long long>(v));
  return buf;
}

std::uint64_t checked_add(std::uint64_t a, std::uint64_t b, const char* what) {
  if (b > UINT64_MAX - a) {
    throw Error(ErrorCode::Corruption,
                std::string(what) + " overflows 64 bits (" + std::to_string(a) + " + " + std::to_string(b) + ")");
  }
  return a + b;
}

}  // namespace detail

void write_file_durably(FileSystem& fs, const std::filesystem::path& path, std::string_view data) {
  const std::filesystem::path tmp = path.string() + ".tmp";
  try {
    auto file = fs.create(tmp);
    file->append(data);
    file->sync();
  } catch (...) {
    try {
      fs.remove(tmp);
    } catch (...) {  // the original error is the one to report
    }
    throw;
  }
  try {
    fs.rename(tmp, path);
  } catch (...) {
    try {
      fs.remove(tmp);
    } catch (...) {  // the original error is the one to report
    }
    throw;
  }
  fs.sync_directory(path.parent_path().empty() ? std::filesystem::path(".") : path.parent_path());
}

}  // namespace mmsb::serialize
