#include "format.hpp"

#include <algorithm>
#include <charconv>
#include <chrono>
#include <cstdio>
#include <iterator>
#include <limits>

#include "commands.hpp"

namespace mmsb::cli {
namespace {

// Parses all of `text` as a decimal unsigned integer; nothing else (no sign, no spaces) is accepted.
bool parse_decimal(std::string_view text, std::uint64_t& value) {
  if (text.empty()) return false;
  const char* end = text.data() + text.size();
  auto [ptr, ec] = std::from_chars(text.data(), end, value);
  return ec == std::errc{} && ptr == end;
}

// Consumes exactly `digits` decimal digits from the front of `text`.
bool take_digits(std::string_view& text, std::size_t digits, std::uint64_t& value) {
  if (text.size() < digits) return false;
  value = 0;
  for (std::size_t i = 0; i < digits; ++i) {
    char c = text[i];
    if (c < '0' || c > '9') return false;
    value = value * 10 + static_cast<std::uint64_t>(c - '0');
  }
  text.remove_prefix(digits);
  return true;
}

bool take_char(std::string_view& text, char expected) {
  if (text.empty() || text.front() != expected) return false;
  text.remove_prefix(1);
  return true;
}

[[noreturn]] void bad_time(std::string_view text) {
  throw ToolError("bad time '" + std::string(text) +
                  "': give nanoseconds since the Unix epoch or an ISO-8601 UTC time such as "
                  "2026-11-23T14:13:34.5Z");
}

}  // namespace

PageId parse_page_id(std::string_view text) {
  const std::string bad = "bad page id '" + std::string(text) + "': ";
  const std::string forms = "give it as p<rank>:<sequence> (e.g. p0:17) or as its integer value (e.g. 17)";
  std::uint64_t raw = 0;
  if (parse_decimal(text, raw)) {
    PageId id(raw);
    if (!id.valid()) throw ToolError(bad + "sequence 0 is never a page; " + forms);
    return id;
  }
  if (text.size() < 2 || text.front() != 'p') throw ToolError(bad + forms);
  auto colon = text.find(':');
  if (colon == std::string_view::npos) throw ToolError(bad + forms);
  std::uint64_t rank = 0, sequence = 0;
  if (!parse_decimal(text.substr(1, colon - 1), rank) || !parse_decimal(text.substr(colon + 1), sequence)) {
    throw ToolError(bad + forms);
  }
  if (rank > PageId::kMaxRank) {
    throw ToolError(bad + "rank " + std::to_string(rank) + " exceeds " + std::to_string(PageId::kMaxRank));
  }
  if (sequence == 0 || sequence > PageId::kSequenceMask) {
    throw ToolError(bad + "sequence must be 1.." + std::to_string(PageId::kSequenceMask));
  }
  return PageId::make(static_cast<std::uint32_t>(rank), sequence);
}

std::uint64_t parse_time(std::string_view text) {
  std::uint64_t ns = 0;
  if (parse_decimal(text, ns)) return ns;

  std::string_view rest = text;
  std::uint64_t year = 0, month = 0, day = 0, hour = 0, minute = 0, second = 0;
  bool ok = take_digits(rest, 4, year) && take_char(rest, '-') && take_digits(rest, 2, month) && take_char(rest, '-') &&
            take_digits(rest, 2, day) && (take_char(rest, 'T') || take_char(rest, ' ')) && take_digits(rest, 2, hour) &&
            take_char(rest, ':') && take_digits(rest, 2, minute) && take_char(rest, ':') &&
            take_digits(rest, 2, second);
  if (!ok) bad_time(text);
  std::uint64_t fraction_ns = 0;
  if (take_char(rest, '.')) {
    std::size_t digits = 0;
    std::uint64_t scale = 100'000'000;
    while (!rest.empty() && rest.front() >= '0' && rest.front() <= '9') {
      if (++digits > 9) bad_time(text);
      fraction_ns += static_cast<std::uint64_t>(rest.front() - '0') * scale;
      scale /= 10;
      rest.remove_prefix(1);
    }
    if (digits == 0) bad_time(text);
  }
  if (rest != "Z" && rest != "z" && rest != "+00:00") bad_time(text);

  using namespace std::chrono;
  const year_month_day date{std::chrono::year(static_cast<int>(year)), std::chrono::month(static_cast<unsigned>(month)),
                            std::chrono::day(static_cast<unsigned>(day))};
  // Second 60 is not accepted: the log's clock is Unix time, which has no leap seconds.
  if (!date.ok() || hour > 23 || minute > 59 || second > 59 || year < 1970) bad_time(text);
  const auto since_epoch = sys_days(date).time_since_epoch();
  const std::uint64_t seconds = static_cast<std::uint64_t>(duration_cast<std::chrono::seconds>(since_epoch).count()) +
                                hour * 3600 + minute * 60 + second;
  if (seconds > (std::numeric_limits<std::uint64_t>::max() - fraction_ns) / 1'000'000'000) bad_time(text);
  return seconds * 1'000'000'000 + fraction_ns;
}

std::string format_utc(std::uint64_t unix_ns) {
  using namespace std::chrono;
  const sys_time<nanoseconds> time{nanoseconds(static_cast<std::int64_t>(unix_ns))};
  const auto day_start = floor<days>(time);
  const year_month_day date{day_start};
  const hh_mm_ss<nanoseconds> clock{time - day_start};
  char text[64];
  std::snprintf(text, sizeof text, "%04d-%02u-%02uT%02d:%02d:%02d.%09lldZ", static_cast<int>(date.year()),
                static_cast<unsigned>(date.month()), static_cast<unsigned>(date.day()),
                static_cast<int>(clock.hours().count()), static_cast<int>(clock.minutes().count()),
                static_cast<int>(clock.seconds().count()), static_cast<long long>(clock.subseconds().count()));
  return text;
}

std::string format_size(std::uint64_t bytes) {
  if (bytes < 1024) return std::to_string(bytes) + " B";
  static constexpr const char* kUnits[] = {"KiB", "MiB", "GiB", "TiB", "PiB", "EiB"};
  double value = static_cast<double>(bytes) / 1024;
  std::size_t unit = 0;
  while (value >= 1024 && unit + 1 < std::size(kUnits)) {
    value /= 1024;
    ++unit;
  }
  char text[32];
  std::snprintf(text, sizeof text, "%.1f %s", value, kUnits[unit]);
  return text;
}

std::string hex_string(std::span<const std::byte> bytes) {
  static constexpr char kDigits[] = "0123456789abcdef";
  std::string out;
  out.reserve(bytes.size() * 2);
  for (std::byte b : bytes) {
    auto v = std::to_integer<unsigned>(b);
    out.push_back(kDigits[v >> 4]);
    out.push_back(kDigits[v & 0xf]);
  }
  return out;
}

std::string quoted_text(std::string_view text) {
  std::string out = "\"";
  for (char c : text) {
    auto u = static_cast<unsigned char>(c);
    if (c == '"' || c == '\\') {
      out.push_back('\\');
      out.push_back(c);
    } else if (u >= 0x20 && u < 0x7f) {
      out.push_back(c);
    } else {
      char escape[8];
      std::snprintf(escape, sizeof escape, "\\x%02x", u);
      out += escape;
    }
  }
  out.push_back('"');
  return out;
}

const char* location_name(Location location) {
  switch (location) {
    case Location::Host:
      return "host";
    case Location::Device:
      return "device";
    case Location::Both:
      return "both";
  }
  return "unknown";
}

void write_hex_dump(std::ostream& out, std::span<const std::byte> bytes, bool squeeze, std::string_view indent) {
  constexpr std::size_t kLine = 16;
  bool squeezing = false;
  char text[128];
  for (std::size_t offset = 0; offset < bytes.size(); offset += kLine) {
    auto line = bytes.subspan(offset, std::min(kLine, bytes.size() - offset));
    if (squeeze && offset >= kLine && line.size() == kLine &&
        std::equal(line.begin(), line.end(), bytes.begin() + static_cast<std::ptrdiff_t>(offset - kLine))) {
      if (!squeezing) out << indent << "*\n";
      squeezing = true;
      continue;
    }
    squeezing = false;
    int n = std::snprintf(text, sizeof text, "%08zx ", offset);
    std::string row(text, static_cast<std::size_t>(n));
    std::string printable;
    for (std::size_t i = 0; i < kLine; ++i) {
      if (i == 8) row += ' ';
      if (i < line.size()) {
        auto v = std::to_integer<unsigned>(line[i]);
        std::snprintf(text, sizeof text, " %02x", v);
        row += text;
        printable.push_back(v >= 0x20 && v < 0x7f ? static_cast<char>(v) : '.');
      } else {
        row += "   ";
      }
    }
    out << indent << row << "  |" << printable << "|\n";
  }
  std::snprintf(text, sizeof text, "%08zx", bytes.size());
  out << indent << text << '\n';
}

}  // namespace mmsb::cli
