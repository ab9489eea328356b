// tools/format.hpp — parsing and printing of the values the `mmsb` tool shows: page ids, times, sizes, bytes.
//
//   mmsb::PageId id = mmsb::cli::parse_page_id("p0:17");        // or "17"
//   std::uint64_t ns = mmsb::cli::parse_time("2026-11-23T14:13:34.5Z");
//   std::string when = mmsb::cli::format_utc(ns);                // "2026-11-23T14:13:34.500000000Z"
//
// The parsers throw ToolError (exit code 2) with a message that names the bad text and the accepted forms.
// Thread-safety: pure functions.
#pragma once

#include <cstddef>
#include <cstdint>
#include <ostream>
#include <span>
#include <string>
#include <string_view>

#include "mmsb/page_id.hpp"
#include "mmsb/runtime.hpp"

namespace mmsb::cli {

// "p<rank>:<sequence>" as PageId::to_string() prints it, or the id's 64-bit value as a plain decimal integer
// (for rank 0 that is the sequence number, so "17" and "p0:17" are the same page).
PageId parse_page_id(std::string_view text);

// Nanoseconds since the Unix epoch, or an ISO-8601 UTC time: "YYYY-MM-DDTHH:MM:SS[.fraction]Z" (a space may
// replace the T; "+00:00" may replace the Z; the fraction has up to 9 digits).
std::uint64_t parse_time(std::string_view text);

// "YYYY-MM-DDTHH:MM:SS.nnnnnnnnnZ".
std::string format_utc(std::uint64_t unix_ns);
// "1.5 KiB" style, exact below 1 KiB ("512 B").
std::string format_size(std::uint64_t bytes);
// Lower-case hex digits, two per byte, no separators.
std::string hex_string(std::span<const std::byte> bytes);
// Text with quotes, backslashes and non-printable bytes escaped C-style, inside double quotes. (Not named
// `quoted`: argument-dependent lookup would pick std::quoted for a std::string, which escapes only quotes.)
std::string quoted_text(std::string_view text);
const char* location_name(Location location);

// A `hexdump -C` style listing: offset, 16 bytes in hex, the printable ones as text. With `squeeze`, a run of
// lines equal to the line before is shown as one `*` line. Each line starts with `indent`.
void write_hex_dump(std::ostream& out, std::span<const std::byte> bytes, bool squeeze, std::string_view indent = "");

}  // namespace mmsb::cli
