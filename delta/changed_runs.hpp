// delta/changed_runs.hpp — private: where two equal-length byte strings differ, for change-only commits.
//
// The runtime compares the bytes a transaction staged with the page's bytes under them and records only the runs
// that differ: the same runs (and merging) as diff(), found on a sub-range of a page with the same SIMD kernels.
#pragma once

#include <bit>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <vector>

#include "mmsb/delta.hpp"

namespace mmsb::detail {

// Appends to `out` the runs where old_bytes[0, n) and new_bytes[0, n) differ, as ranges at offsets base + i,
// merging runs separated by fewer than `merge_gap` equal bytes (at least 1, so touching runs always merge). The
// ranges come out sorted, each starting and ending on a differing byte. Returns the bytes the appended ranges
// cover. Reentrant; does not allocate once `out` has grown to the number of runs.
std::uint64_t append_changed_runs(const std::byte* old_bytes, const std::byte* new_bytes, std::size_t n,
                                  std::uint64_t base, std::uint64_t merge_gap, std::vector<ByteRange>& out);

// The bytes [first, end) between the first and the last byte (in memory order) where two 8-byte strings differ;
// empty (first == end == 0) when they are equal. The bytes between may be equal too.
struct DifferingBytes {
  std::uint32_t first = 0, end = 0;
  bool empty() const noexcept { return end == 0; }
};

// DifferingBytes of old_bytes[0, 8) and new_bytes[0, 8) from one XOR and two bit scans, for the 8-byte writes that
// change-only commits and small map nodes see most. Which end of the word holds memory's first byte depends on
// the byte order. Reentrant.
[[gnu::always_inline]] inline DifferingBytes differing_bytes_of_words(const std::byte* old_bytes,
                                                                      const std::byte* new_bytes) noexcept {
  static_assert(std::endian::native == std::endian::little || std::endian::native == std::endian::big,
                "mixed-endian: the bit scans below do not map to byte positions");
  std::uint64_t old_word, new_word;
  std::memcpy(&old_word, old_bytes, 8);
  std::memcpy(&new_word, new_bytes, 8);
  const std::uint64_t differ = old_word ^ new_word;
  if (differ == 0) return {};
  const auto low = static_cast<std::uint32_t>(std::countr_zero(differ)) / 8;   // lowest differing byte of the value
  const auto high = static_cast<std::uint32_t>(std::countl_zero(differ)) / 8;  // from the top
  if constexpr (std::endian::native == std::endian::little) {
    return {low, 8 - high};
  } else {
    return {high, 8 - low};
  }
}

}  // namespace mmsb::detail
