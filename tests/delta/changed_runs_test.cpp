// tests/delta/changed_runs_test.cpp — differing_bytes_of_words() (the 8-byte XOR shortcut of change-only commits
// and small map nodes) against the general scan, append_changed_runs(), byte positions in memory order.
#include <gtest/gtest.h>

#include <array>
#include <cstddef>
#include <cstdint>
#include <vector>

#include "delta/changed_runs.hpp"

namespace mmsb {
namespace {

using Word = std::array<std::byte, 8>;

// The byte positions of `mask` (bit i: byte i) changed in `base`, each by a different non-zero XOR.
Word with_changed_bytes(const Word& base, unsigned mask, std::uint8_t salt) {
  Word out = base;
  for (unsigned i = 0; i < 8; ++i) {
    if (mask & (1u << i)) out[i] ^= static_cast<std::byte>(1u + ((salt + 37u * i) % 255u));
  }
  return out;
}

TEST(ChangedRuns, WordShortcutSpansTheGeneralScansRunsForEveryPatternOfDifferingBytes) {
  const Word bases[] = {Word{}, Word{std::byte{0xff}, std::byte{1}, std::byte{0x80}, std::byte{0x7f}, std::byte{0},
                                     std::byte{0x55}, std::byte{0xaa}, std::byte{9}}};
  for (const Word& old_word : bases) {
    for (unsigned mask = 0; mask < 256; ++mask) {
      for (std::uint8_t salt : {0, 1, 200}) {
        const Word new_word = with_changed_bytes(old_word, mask, salt);
        const detail::DifferingBytes run = detail::differing_bytes_of_words(old_word.data(), new_word.data());
        // A merge gap of 8 merges every run inside 8 bytes: at most one range, from the first differing byte to
        // the last.
        std::vector<ByteRange> scanned;
        detail::append_changed_runs(old_word.data(), new_word.data(), 8, 0, 8, scanned);
        if (mask == 0) {
          EXPECT_TRUE(run.empty());
          EXPECT_EQ(run.first, 0u);
          EXPECT_EQ(run.end, 0u);
          EXPECT_TRUE(scanned.empty());
          continue;
        }
        ASSERT_EQ(scanned.size(), 1u) << "mask " << mask;
        EXPECT_FALSE(run.empty()) << "mask " << mask;
        EXPECT_EQ(run.first, scanned[0].offset) << "mask " << mask;
        EXPECT_EQ(run.end, scanned[0].end()) << "mask " << mask;
      }
    }
  }
}

TEST(ChangedRuns, WordShortcutReadsUnalignedBytes) {
  std::array<std::byte, 24> old_bytes{}, new_bytes{};
  for (std::size_t at = 0; at <= 16; ++at) {
    new_bytes = old_bytes;
    new_bytes[at + 2] = std::byte{0x40};
    new_bytes[at + 5] = std::byte{0x01};
    const detail::DifferingBytes run = detail::differing_bytes_of_words(old_bytes.data() + at, new_bytes.data() + at);
    EXPECT_EQ(run.first, 2u) << "at " << at;
    EXPECT_EQ(run.end, 6u) << "at " << at;
  }
}

}  // namespace
}  // namespace mmsb
