// llm/q6k_avx2.hpp — unpacking Q6_K weights for the AVX2 kernels (kquants.cpp's dot product and
// matmul_avx2.cpp's multi-row tiles), so both read the layout the same way.
//
// Include only from files that compile AVX2 code: it needs <immintrin.h> and the avx2 target.
#pragma once

#include <immintrin.h>

#include <cstdint>

namespace mmsb::llm {

// The 128 values of half `h` (0 or 1) of a Q6_K super-block as four groups of 32 bytes holding q + 32 (0..63), in
// the order of the activations: group g covers values 128 h + 32 g .. +31. Low 4 bits come from ql, the top two
// from qh (the file format).
__attribute__((target("avx2"), always_inline)) inline void unpack_q6_k_half(const std::uint8_t* block, int h,
                                                                            __m256i q[4]) {
  const __m256i low4 = _mm256_set1_epi8(0x0F), two = _mm256_set1_epi8(3);
  const auto* bytes = reinterpret_cast<const __m256i*>(block);
  const __m256i ql0 = _mm256_loadu_si256(bytes + 2 * h), ql1 = _mm256_loadu_si256(bytes + 2 * h + 1),
                qh = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(block + 128 + 32 * h));
  q[0] = _mm256_or_si256(_mm256_and_si256(ql0, low4), _mm256_slli_epi16(_mm256_and_si256(qh, two), 4));
  q[1] = _mm256_or_si256(_mm256_and_si256(ql1, low4),
                         _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 2), two), 4));
  q[2] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(ql0, 4), low4),
                         _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 4), two), 4));
  q[3] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(ql1, 4), low4),
                         _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 6), two), 4));
}

}  // namespace mmsb::llm
