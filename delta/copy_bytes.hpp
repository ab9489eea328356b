// delta/copy_bytes.hpp — byte copies tuned for the short runs deltas are made of (internal to mmsb).
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>

namespace mmsb::detail {

// Copies n bytes, sizeof(Word) <= n <= 2 * sizeof(Word), as two overlapping words. (runtime/transaction.cpp's
// copy_two_words is its twin hidden from the sanitizers, for racy reads; a helper shared by both would hide every
// delta copy from them too.)
template <class Word>
inline void copy_overlapping_words(std::byte* dst, const std::byte* src, std::uint64_t n) noexcept {
  Word head, tail;
  std::memcpy(&head, src, sizeof(Word));
  std::memcpy(&tail, src + n - sizeof(Word), sizeof(Word));
  std::memcpy(dst, &head, sizeof(Word));
  std::memcpy(dst + n - sizeof(Word), &tail, sizeof(Word));
}

// Copies n bytes; short copies (the common case for sparse deltas) stay inline as two overlapping moves instead
// of an out-of-line memcpy call, which costs more than the copy itself.
inline void copy_bytes(std::byte* dst, const std::byte* src, std::uint64_t n) noexcept {
  if (n >= 8 && n <= 16) {
    copy_overlapping_words<std::uint64_t>(dst, src, n);
  } else if (n >= 4 && n < 8) {
    copy_overlapping_words<std::uint32_t>(dst, src, n);
  } else if (n >= 2 && n < 4) {
    copy_overlapping_words<std::uint16_t>(dst, src, n);
  } else if (n == 1) {
    dst[0] = src[0];
  } else if (n > 16) {
    std::memcpy(dst, src, n);
  }
}

}  // namespace mmsb::detail
