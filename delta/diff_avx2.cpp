// delta/diff_avx2.cpp — the AVX2 diff kernel: two 32-byte compares per 64-byte block, movemask for the runs.
// Compiled with -mavx2 -mbmi -mbmi2 -mlzcnt; only called when the CPU has AVX2 and BMI2 (see diff.cpp).
#include <immintrin.h>

#include "diff_kernels.hpp"

namespace mmsb::detail {
namespace {

inline __m256i load256(const std::byte* p) noexcept { return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)); }

// Difference mask of the 64-byte block at a/b (bit i: byte i differs).
inline std::uint64_t block_mask(__m256i a0, __m256i a1, __m256i b0, __m256i b1) noexcept {
  const auto eq0 = static_cast<std::uint32_t>(_mm256_movemask_epi8(_mm256_cmpeq_epi8(a0, b0)));
  const auto eq1 = static_cast<std::uint32_t>(_mm256_movemask_epi8(_mm256_cmpeq_epi8(a1, b1)));
  return ~((std::uint64_t{eq1} << 32) | eq0);
}

}  // namespace

void diff_runs_avx2(const std::byte* old_bytes, const std::byte* new_bytes, std::size_t n, std::uint64_t base,
                    ScanState& state) {
  std::size_t i = 0;
  // Two blocks per iteration; an unchanged pair costs four loads, xor/or and one vptest.
  for (; i + 128 <= n; i += 128) {
    const __m256i a0 = load256(old_bytes + i), a1 = load256(old_bytes + i + 32);
    const __m256i a2 = load256(old_bytes + i + 64), a3 = load256(old_bytes + i + 96);
    const __m256i b0 = load256(new_bytes + i), b1 = load256(new_bytes + i + 32);
    const __m256i b2 = load256(new_bytes + i + 64), b3 = load256(new_bytes + i + 96);
    const __m256i x = _mm256_or_si256(_mm256_or_si256(_mm256_xor_si256(a0, b0), _mm256_xor_si256(a1, b1)),
                                      _mm256_or_si256(_mm256_xor_si256(a2, b2), _mm256_xor_si256(a3, b3)));
    if (_mm256_testz_si256(x, x)) continue;
    const std::uint64_t m0 = block_mask(a0, a1, b0, b1);
    const std::uint64_t m1 = block_mask(a2, a3, b2, b3);
    if (m0 != 0) scan_mask(state, m0, base + i);
    if (m1 != 0) scan_mask(state, m1, base + i + 64);
  }
  for (; i + 64 <= n; i += 64) {
    const __m256i a0 = load256(old_bytes + i), a1 = load256(old_bytes + i + 32);
    const __m256i b0 = load256(new_bytes + i), b1 = load256(new_bytes + i + 32);
    const std::uint64_t m = block_mask(a0, a1, b0, b1);
    if (m != 0) scan_mask(state, m, base + i);
  }
  if (i < n) {
    const std::uint64_t m = tail_mask_scalar(old_bytes + i, new_bytes + i, n - i);
    if (m != 0) scan_mask(state, m, base + i);
  }
}

}  // namespace mmsb::detail
