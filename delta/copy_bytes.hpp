// delta/copy_bytes.hpp — byte copies tuned for the short runs deltas are made of (internal to mmsb).
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>

namespace mmsb::detail {

// Copies n bytes; short copies (the common case for sparse deltas) stay inline as two overlapping moves instead
// of an out-of-line memcpy call, which costs more than the copy itself.
inline void copy_bytes(std::byte* dst, const std::byte* src, std::uint64_t n) noexcept {
  if (n >= 8 && n <= 16) {
    std::uint64_t head, tail;
    std::memcpy(&head, src, 8);
    std::memcpy(&tail, src + n - 8, 8);
    std::memcpy(dst, &head, 8);
    std::memcpy(dst + n - 8, &tail, 8);
  } else if (n >= 4 && n < 8) {
    std::uint32_t head, tail;
    std::memcpy(&head, src, 4);
    std::memcpy(&tail, src + n - 4, 4);
    std::memcpy(dst, &head, 4);
    std::memcpy(dst + n - 4, &tail, 4);
  } else if (n >= 2 && n < 4) {
    std::uint16_t head, tail;
    std::memcpy(&head, src, 2);
    std::memcpy(&tail, src + n - 2, 2);
    std::memcpy(dst, &head, 2);
    std::memcpy(dst + n - 2, &tail, 2);
  } else if (n == 1) {
    dst[0] = src[0];
  } else if (n > 16) {
    std::memcpy(dst, src, n);
  }
}

}  // namespace mmsb::detail
