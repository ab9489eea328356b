// Super-block types: block layouts, dequantization, quantization, and dot products against Q8_K activations
// (a scalar reference and AVX2 kernels compiled with target attributes, chosen with the rest of kernels.cpp).
//
// Layouts (256 values per block; little-endian; d, dmin are IEEE halves unless noted). Value i of a block is
// d * scale(i) * q(i) - dmin * min(i):
//   Q4_K  d, dmin, scales[12], qs[128]. Eight sub-blocks of 32 with a 6-bit scale and a 6-bit min each: for
//         j < 4, scale j = scales[j] & 63 and min j = scales[j + 4] & 63; for j >= 4, scale j = (scales[j + 4] &
//         15) | (scales[j - 4] >> 6) << 4 and min j = (scales[j + 4] >> 4) | (scales[j] >> 6) << 4. Chunk c of 64
//         values (c < 4) uses bytes qs[32c .. 32c+31]: low nibbles are values 64c .. 64c+31 (sub-block 2c), high
//         nibbles 64c+32 .. 64c+63 (sub-block 2c+1).
//   Q5_K  d, dmin, scales[12], qh[32], qs[128]: as Q4_K, plus a fifth bit: bit 2c of qh[l] for value 64c + l,
//         bit 2c+1 for value 64c + 32 + l.
//   Q6_K  ql[128], qh[64], int8 scales[16], d. Sixteen sub-blocks of 16, q - 32 with q in 0..63. Half h (128
//         values) uses ql[64h ..], qh[32h ..]: value 128h + l (l < 32) = low nibble of ql[64h + l] | bits 0-1 of
//         qh[32h + l]; +32: low nibble of ql[64h + 32 + l] | bits 2-3; +64: high nibble of ql[64h + l] | bits 4-5;
//         +96: high nibble of ql[64h + 32 + l] | bits 6-7 (the two high bits above the nibble).
//   Q8_K  f32 d, int8 qs[256], int16 bsums[16] (the sum of each 16 qs).
//   TQ2_0 qs[64], d: value 128j + 32l + m (j < 2, l < 4, m < 32) is ((qs[32j + m] >> 2l) & 3) - 1.
//   TQ1_0 qs[48], qh[4], d: trits (0..2, minus 1) in base 3, five per byte (four in qh), stored as the byte
//         ceil(v * 256 / 243) of the number v they spell (first trit most significant); trit n of a byte b is
//         (((b * 3^n) mod 256) * 3) >> 8. Values 32n + m: trit n of qs[m] (m < 32); 160 + 16n + m: trit n of
//         qs[32 + m] (m < 16); 240 + 4n + j: trit n of qh[j] (n < 4).
#include "llm/kquants.hpp"
#include "llm/q6k_avx2.hpp"

#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

namespace mmsb::llm {

namespace {

constexpr std::size_t QK = kSuperBlock;

inline float load_half(const std::uint8_t* p) noexcept {
  std::uint16_t v;
  std::memcpy(&v, p, 2);
  return fp16_to_fp32(v);
}
inline void store_half(std::uint8_t* p, float f) noexcept {
  const std::uint16_t h = fp32_to_fp16(f);
  std::memcpy(p, &h, 2);
}

// One block decoded to integers: value i = d * sc[i / 16] * q[i] - dmin * mn[i / 16].
struct Decoded {
  std::int8_t q[QK];
  std::int32_t sc[16];
  std::int32_t mn[16];
  float d;
  float dmin;
};

// The 6-bit scale and min of sub-block j (of 8) of a Q4_K / Q5_K block.
inline void scale_min_k4(int j, const std::uint8_t* s, int& scale, int& min) noexcept {
  if (j < 4) {
    scale = s[j] & 63;
    min = s[j + 4] & 63;
  } else {
    scale = (s[j + 4] & 0x0F) | ((s[j - 4] >> 6) << 4);
    min = (s[j + 4] >> 4) | ((s[j] >> 6) << 4);
  }
}
inline void scales_k4(const std::uint8_t* s, Decoded& out) noexcept {
  for (int j = 0; j < 8; ++j) {
    int scale, min;
    scale_min_k4(j, s, scale, min);
    out.sc[2 * j] = out.sc[2 * j + 1] = scale;
    out.mn[2 * j] = out.mn[2 * j + 1] = min;
  }
}

void decode_q4_k(const std::uint8_t* b, Decoded& out) noexcept {
  out.d = load_half(b);
  out.dmin = load_half(b + 2);
  scales_k4(b + 4, out);
  const std::uint8_t* qs = b + 16;
  for (int c = 0; c < 4; ++c) {
    for (int l = 0; l < 32; ++l) {
      out.q[64 * c + l] = static_cast<std::int8_t>(qs[32 * c + l] & 0x0F);
      out.q[64 * c + 32 + l] = static_cast<std::int8_t>(qs[32 * c + l] >> 4);
    }
  }
}
void decode_q5_k(const std::uint8_t* b, Decoded& out) noexcept {
  out.d = load_half(b);
  out.dmin = load_half(b + 2);
  scales_k4(b + 4, out);
  const std::uint8_t* qh = b + 16;
  const std::uint8_t* qs = b + 48;
  for (int c = 0; c < 4; ++c) {
    for (int l = 0; l < 32; ++l) {
      out.q[64 * c + l] = static_cast<std::int8_t>((qs[32 * c + l] & 0x0F) | (((qh[l] >> (2 * c)) & 1) << 4));
      out.q[64 * c + 32 + l] = static_cast<std::int8_t>((qs[32 * c + l] >> 4) | (((qh[l] >> (2 * c + 1)) & 1) << 4));
    }
  }
}
void decode_q6_k(const std::uint8_t* b, Decoded& out) noexcept {
  const std::uint8_t* ql = b;
  const std::uint8_t* qh = b + 128;
  for (int i = 0; i < 16; ++i) {
    out.sc[i] = static_cast<std::int8_t>(b[192 + i]);
    out.mn[i] = 0;
  }
  out.d = load_half(b + 208);
  out.dmin = 0;
  for (int h = 0; h < 2; ++h) {
    for (int l = 0; l < 32; ++l) {
      const std::uint8_t lo = ql[64 * h + l], hi = ql[64 * h + 32 + l], bits = qh[32 * h + l];
      out.q[128 * h + l] = static_cast<std::int8_t>(((lo & 0x0F) | ((bits & 3) << 4)) - 32);
      out.q[128 * h + 32 + l] = static_cast<std::int8_t>(((hi & 0x0F) | (((bits >> 2) & 3) << 4)) - 32);
      out.q[128 * h + 64 + l] = static_cast<std::int8_t>(((lo >> 4) | (((bits >> 4) & 3) << 4)) - 32);
      out.q[128 * h + 96 + l] = static_cast<std::int8_t>(((hi >> 4) | (((bits >> 6) & 3) << 4)) - 32);
    }
  }
}
void decode_q8_k(const std::uint8_t* b, Decoded& out) noexcept {
  std::memcpy(&out.d, b, 4);
  out.dmin = 0;
  std::memcpy(out.q, b + 4, QK);
  for (int i = 0; i < 16; ++i) out.sc[i] = 1, out.mn[i] = 0;
}
void decode_tq2_0(const std::uint8_t* b, Decoded& out) noexcept {
  out.d = load_half(b + 64);
  out.dmin = 0;
  for (int i = 0; i < 16; ++i) out.sc[i] = 1, out.mn[i] = 0;
  for (int j = 0; j < 2; ++j) {
    for (int l = 0; l < 4; ++l) {
      for (int m = 0; m < 32; ++m) {
        out.q[128 * j + 32 * l + m] = static_cast<std::int8_t>(((b[32 * j + m] >> (2 * l)) & 3) - 1);
      }
    }
  }
}
inline int trit(std::uint8_t byte, int n) noexcept {
  static constexpr std::uint8_t kPow3[5] = {1, 3, 9, 27, 81};
  const auto shifted = static_cast<std::uint8_t>(byte * kPow3[n]);  // mod 256: trit n moves to the top
  return (static_cast<int>(shifted) * 3) >> 8;
}
void decode_tq1_0(const std::uint8_t* b, Decoded& out) noexcept {
  out.d = load_half(b + 52);
  out.dmin = 0;
  for (int i = 0; i < 16; ++i) out.sc[i] = 1, out.mn[i] = 0;
  for (int n = 0; n < 5; ++n) {
    for (int m = 0; m < 32; ++m) out.q[32 * n + m] = static_cast<std::int8_t>(trit(b[m], n) - 1);
    for (int m = 0; m < 16; ++m) out.q[160 + 16 * n + m] = static_cast<std::int8_t>(trit(b[32 + m], n) - 1);
  }
  for (int n = 0; n < 4; ++n) {
    for (int j = 0; j < 4; ++j) out.q[240 + 4 * n + j] = static_cast<std::int8_t>(trit(b[48 + j], n) - 1);
  }
}

// --- scalar reference ------------------------------------------------------------------------------------------

template <void (*Decode)(const std::uint8_t*, Decoded&), std::size_t Bytes>
void dequantize_super(const void* row, float* out, std::size_t n) {
  const auto* b = static_cast<const std::uint8_t*>(row);
  Decoded blk;
  for (std::size_t i = 0; i < n; i += QK, b += Bytes) {
    Decode(b, blk);
    for (std::size_t j = 0; j < QK; ++j) {
      out[i + j] = blk.d * static_cast<float>(blk.sc[j / 16]) * static_cast<float>(blk.q[j]) -
                   blk.dmin * static_cast<float>(blk.mn[j / 16]);
    }
  }
}

// Integer sums per 16 values, weighted by the integer scales; the mins through the activations' block sums.
template <void (*Decode)(const std::uint8_t*, Decoded&), std::size_t Bytes>
float dot_q8k_scalar(const void* row, const BlockQ8K* y, std::size_t n) {
  const auto* b = static_cast<const std::uint8_t*>(row);
  Decoded blk;
  float sum = 0;
  for (std::size_t i = 0; i < n; i += QK, b += Bytes, ++y) {
    Decode(b, blk);
    std::int32_t isum = 0, msum = 0;
    for (int s = 0; s < 16; ++s) {
      std::int32_t t = 0;
      for (int j = 0; j < 16; ++j) t += static_cast<std::int32_t>(blk.q[16 * s + j]) * y->qs[16 * s + j];
      isum += blk.sc[s] * t;
      msum += blk.mn[s] * y->bsums[s];
    }
    sum += y->d * (blk.d * static_cast<float>(isum) - blk.dmin * static_cast<float>(msum));
  }
  return sum;
}

// A product as one row dot per (row, vector), the activations already in Q8_K blocks.
template <DotQ8KFn Dot>
void matmul_q8k_rows(const std::byte* w, std::size_t row_stride, std::size_t rows, const std::byte* act,
                     std::size_t act_stride, std::size_t n, std::size_t cols, float* out, std::size_t out_stride) {
  for (std::size_t t = 0; t < n; ++t) {
    const auto* x = reinterpret_cast<const BlockQ8K*>(act + t * act_stride);
    for (std::size_t r = 0; r < rows; ++r) out[t * out_stride + r] = Dot(w + r * row_stride, x, cols);
  }
}

// --- AVX2 ------------------------------------------------------------------------------------------------------

#define MMSB_KQ_AVX2 __attribute__((target("avx2,fma,f16c")))

MMSB_KQ_AVX2 inline __m256i load32(const void* p) { return _mm256_loadu_si256(static_cast<const __m256i*>(p)); }
MMSB_KQ_AVX2 inline float hsum_ps(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}
// 32 unsigned bytes (each < 128) times 32 signed bytes, pairs summed into 16 int16 lanes, then weighted by
// `scale` (16 int16 lanes) and pairs summed into 8 int32 lanes.
MMSB_KQ_AVX2 inline __m256i mul_u8_i8(__m256i u, __m256i s, __m256i scale) {
  return _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), scale);
}
// Q4_K (Bits = 4) and Q5_K (5): the integer sums of the eight sub-blocks weighted by their scales, and the
// mins through the activations' block sums (bsums pairs, one per sub-block of 32), both as vectors.
template <int Bits>
MMSB_KQ_AVX2 float dot_k4_avx2(const void* row, const BlockQ8K* y, std::size_t n) {
  constexpr std::size_t bytes = Bits == 4 ? kQ4_KBytes : kQ5_KBytes;
  const auto* b = static_cast<const std::uint8_t*>(row);
  const __m256i low4 = _mm256_set1_epi8(0x0F), one = _mm256_set1_epi8(1), ones16 = _mm256_set1_epi16(1);
  __m256 acc = _mm256_setzero_ps();
  alignas(16) std::uint8_t sm[16];
  for (std::size_t i = 0; i < n; i += QK, b += bytes, ++y) {
    unpack_k4_scales(b + 4, sm);
    const std::uint8_t* qs = b + (Bits == 4 ? 16 : 48);
    const __m256i qh = Bits == 5 ? load32(b + 16) : _mm256_setzero_si256();
    __m256i isum = _mm256_setzero_si256();
    for (int c = 0; c < 4; ++c) {
      const __m256i raw = load32(qs + 32 * c);
      __m256i lo = _mm256_and_si256(raw, low4);
      __m256i hi = _mm256_and_si256(_mm256_srli_epi16(raw, 4), low4);
      if constexpr (Bits == 5) {
        // (qh >> bit) & 1 per byte, moved to bit 4 (the 16-bit shifts cannot carry across a masked byte).
        lo = _mm256_or_si256(lo, _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 2 * c), one), 4));
        hi = _mm256_or_si256(hi, _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 2 * c + 1), one), 4));
      }
      isum = _mm256_add_epi32(isum, mul_u8_i8(lo, load32(y->qs + 64 * c), _mm256_set1_epi16(sm[2 * c])));
      isum = _mm256_add_epi32(isum, mul_u8_i8(hi, load32(y->qs + 64 * c + 32), _mm256_set1_epi16(sm[2 * c + 1])));
    }
    const __m256i pairs = _mm256_madd_epi16(load32(y->bsums), ones16);  // the sums of each sub-block of 32
    const __m256i msum =
        _mm256_mullo_epi32(_mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(sm + 8))), pairs);
    acc = _mm256_fmadd_ps(_mm256_set1_ps(y->d * load_half(b)), _mm256_cvtepi32_ps(isum), acc);
    acc = _mm256_fnmadd_ps(_mm256_set1_ps(y->d * load_half(b + 2)), _mm256_cvtepi32_ps(msum), acc);
  }
  return hsum_ps(acc);
}

MMSB_KQ_AVX2 float dot_q6_k_avx2(const void* row, const BlockQ8K* y, std::size_t n) {
  const auto* b = static_cast<const std::uint8_t*>(row);
  __m256 acc = _mm256_setzero_ps();
  for (std::size_t i = 0; i < n; i += QK, b += kQ6_KBytes, ++y) {
    const auto* scales = reinterpret_cast<const std::int8_t*>(b + 192);
    __m256i isum = _mm256_setzero_si256();
    for (int h = 0; h < 2; ++h) {
      __m256i q[4];
      unpack_q6_k_half(b, h, q);
      for (int g = 0; g < 4; ++g) {
        // 32 values = two sub-blocks of 16: the low 8 int16 lanes take the first scale, the high 8 the second.
        const int s = 8 * h + 2 * g;
        const __m256i scale = _mm256_set_m128i(_mm_set1_epi16(scales[s + 1]), _mm_set1_epi16(scales[s]));
        isum = _mm256_add_epi32(isum, mul_u8_i8(q[g], load32(y->qs + 128 * h + 32 * g), scale));
      }
    }
    // The stored values are q + 32: subtract 32 x the scaled block sums.
    const __m256i offset = _mm256_madd_epi16(
        _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(scales))), load32(y->bsums));
    isum = _mm256_sub_epi32(isum, _mm256_slli_epi32(offset, 5));
    acc = _mm256_fmadd_ps(_mm256_set1_ps(y->d * load_half(b + 208)), _mm256_cvtepi32_ps(isum), acc);
  }
  return hsum_ps(acc);
}

// The activations' block sums as 8 int32 lanes (whose total is the sum of the block).
MMSB_KQ_AVX2 inline __m256i bsum_lanes(const BlockQ8K* y) {
  return _mm256_madd_epi16(load32(y->bsums), _mm256_set1_epi16(1));
}

MMSB_KQ_AVX2 float dot_tq2_0_avx2(const void* row, const BlockQ8K* y, std::size_t n) {
  const auto* b = static_cast<const std::uint8_t*>(row);
  const __m256i mask = _mm256_set1_epi8(3), ones = _mm256_set1_epi16(1);
  __m256 acc = _mm256_setzero_ps();
  for (std::size_t i = 0; i < n; i += QK, b += kTQ2_0Bytes, ++y) {
    __m256i isum = _mm256_setzero_si256();
    for (int j = 0; j < 2; ++j) {
      const __m256i raw = load32(b + 32 * j);
      for (int l = 0; l < 4; ++l) {
        const __m256i q = _mm256_and_si256(_mm256_srli_epi16(raw, 2 * l), mask);
        isum = _mm256_add_epi32(isum, mul_u8_i8(q, load32(y->qs + 128 * j + 32 * l), ones));
      }
    }
    isum = _mm256_sub_epi32(isum, bsum_lanes(y));  // stored q + 1
    acc = _mm256_fmadd_ps(_mm256_set1_ps(y->d * load_half(b + 64)), _mm256_cvtepi32_ps(isum), acc);
  }
  return hsum_ps(acc);
}

// Trit n of 16 bytes held in 16-bit lanes, for lane multipliers `pow` = 3^n: ((b * 3^n) mod 256) * 3 >> 8.
MMSB_KQ_AVX2 inline __m256i trit_lanes(__m256i bytes16, __m256i pow) {
  const __m256i masked = _mm256_and_si256(_mm256_mullo_epi16(bytes16, pow), _mm256_set1_epi16(0xFF));
  return _mm256_srli_epi16(_mm256_mullo_epi16(masked, _mm256_set1_epi16(3)), 8);
}
// Two vectors of 16 trits (16-bit lanes) as 32 bytes in order (packus interleaves the 128-bit halves).
MMSB_KQ_AVX2 inline __m256i pack_trits16(__m256i first, __m256i second) {
  return _mm256_permute4x64_epi64(_mm256_packus_epi16(first, second), 0xD8);
}

MMSB_KQ_AVX2 float dot_tq1_0_avx2(const void* row, const BlockQ8K* y, std::size_t n) {
  const auto* b = static_cast<const std::uint8_t*>(row);
  const __m256i ones = _mm256_set1_epi16(1);
  const __m256i qh_pow = _mm256_setr_epi16(1, 1, 1, 1, 3, 3, 3, 3, 9, 9, 9, 9, 27, 27, 27, 27);
  static constexpr short kPow3[5] = {1, 3, 9, 27, 81};
  __m256 acc = _mm256_setzero_ps();
  for (std::size_t i = 0; i < n; i += QK, b += kTQ1_0Bytes, ++y) {
    // Values 0..159: trit t of the 32 bytes qs[0..31] is values 32t .. 32t+31.
    const __m256i raw = load32(b);
    const __m256i lo16 = _mm256_cvtepu8_epi16(_mm256_castsi256_si128(raw));
    const __m256i hi16 = _mm256_cvtepu8_epi16(_mm256_extracti128_si256(raw, 1));
    __m256i isum = _mm256_setzero_si256();
    for (int t = 0; t < 5; ++t) {
      const __m256i p = _mm256_set1_epi16(kPow3[t]);
      const __m256i q = pack_trits16(trit_lanes(lo16, p), trit_lanes(hi16, p));
      isum = _mm256_add_epi32(isum, mul_u8_i8(q, load32(y->qs + 32 * t), ones));
    }
    // Values 160..239: trit t of qs[32..47] is values 160 + 16t ..; 240..255: trit t of qh[j] is 240 + 4t + j.
    const __m256i mid = _mm256_cvtepu8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(b + 32)));
    const __m256i qh = _mm256_setr_epi16(b[48], b[49], b[50], b[51], b[48], b[49], b[50], b[51], b[48], b[49], b[50],
                                         b[51], b[48], b[49], b[50], b[51]);
    const __m256i q160 = pack_trits16(trit_lanes(mid, _mm256_set1_epi16(1)), trit_lanes(mid, _mm256_set1_epi16(3)));
    const __m256i q192 = pack_trits16(trit_lanes(mid, _mm256_set1_epi16(9)), trit_lanes(mid, _mm256_set1_epi16(27)));
    const __m256i q224 = pack_trits16(trit_lanes(mid, _mm256_set1_epi16(81)), trit_lanes(qh, qh_pow));
    isum = _mm256_add_epi32(isum, mul_u8_i8(q160, load32(y->qs + 160), ones));
    isum = _mm256_add_epi32(isum, mul_u8_i8(q192, load32(y->qs + 192), ones));
    isum = _mm256_add_epi32(isum, mul_u8_i8(q224, load32(y->qs + 224), ones));
    isum = _mm256_sub_epi32(isum, bsum_lanes(y));  // stored trits are value + 1
    acc = _mm256_fmadd_ps(_mm256_set1_ps(y->d * load_half(b + 52)), _mm256_cvtepi32_ps(isum), acc);
  }
  return hsum_ps(acc);
}

MMSB_KQ_AVX2 float dot_q8_k_avx2(const void* row, const BlockQ8K* y, std::size_t n) {
  const auto* b = static_cast<const std::uint8_t*>(row);
  __m256 acc = _mm256_setzero_ps();
  for (std::size_t i = 0; i < n; i += QK, b += kQ8_KBytes, ++y) {
    __m256i isum = _mm256_setzero_si256();
    for (int c = 0; c < 8; ++c) {
      const __m256i w = load32(b + 4 + 32 * c), x = load32(y->qs + 32 * c);
      const __m256i w0 = _mm256_cvtepi8_epi16(_mm256_castsi256_si128(w)),
                    w1 = _mm256_cvtepi8_epi16(_mm256_extracti128_si256(w, 1));
      const __m256i x0 = _mm256_cvtepi8_epi16(_mm256_castsi256_si128(x)),
                    x1 = _mm256_cvtepi8_epi16(_mm256_extracti128_si256(x, 1));
      isum = _mm256_add_epi32(isum, _mm256_add_epi32(_mm256_madd_epi16(w0, x0), _mm256_madd_epi16(w1, x1)));
    }
    float d;
    std::memcpy(&d, b, 4);
    acc = _mm256_fmadd_ps(_mm256_set1_ps(y->d * d), _mm256_cvtepi32_ps(isum), acc);
  }
  return hsum_ps(acc);
}

// Q8_K rounding of the activations, 8 lanes at a time: the same float products and the same rounding (to
// nearest, ties to even) as the scalar loop, so the blocks are identical bit for bit.
MMSB_KQ_AVX2 void quantize_q8k_avx2(const float* x, BlockQ8K* out, std::size_t n) noexcept {
  const __m256 magnitude = _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFFFFFF));
  const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);  // undoes the lane interleaving of the packs
  for (std::size_t i = 0; i < n / QK; ++i, x += QK, ++out) {
    __m256 vmax = _mm256_setzero_ps();
    for (std::size_t j = 0; j < QK; j += 8)
      vmax = _mm256_max_ps(vmax, _mm256_and_ps(_mm256_loadu_ps(x + j), magnitude));
    __m128 m = _mm_max_ps(_mm256_castps256_ps128(vmax), _mm256_extractf128_ps(vmax, 1));
    m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    m = _mm_max_ss(m, _mm_movehdup_ps(m));
    const float amax = _mm_cvtss_f32(m);
    out->d = amax / 127.0f;
    const __m256 id = _mm256_set1_ps(amax > 0 ? 127.0f / amax : 0.0f);
    for (std::size_t c = 0; c < QK; c += 32) {
      __m256i q[4];
      for (int k = 0; k < 4; ++k) {
        q[k] = _mm256_cvtps_epi32(_mm256_round_ps(_mm256_mul_ps(_mm256_loadu_ps(x + c + 8 * k), id),
                                                  _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
      }
      const __m256i bytes = _mm256_packs_epi16(_mm256_packs_epi32(q[0], q[1]), _mm256_packs_epi32(q[2], q[3]));
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(out->qs + c), _mm256_permutevar8x32_epi32(bytes, order));
    }
    for (int s = 0; s < 16; ++s) {
      int sum = 0;
      for (int j = 0; j < 16; ++j) sum += out->qs[16 * s + j];
      out->bsums[s] = static_cast<std::int16_t>(sum);
    }
  }
}

// --- quantization (f32 -> blocks) -------------------------------------------------------------------------------

inline int clamp_round(float v, int lo, int hi) {
  const long r = std::lround(v);  // NaN gives an unspecified value, clamped below: never undefined behaviour
  return static_cast<int>(std::clamp<long>(r, lo, hi));
}
// An integral float clamped to [lo, hi]; NaN gives lo.
inline int clamp_integral(float v, int lo, int hi) {
  if (!(v >= static_cast<float>(lo))) return lo;
  return v > static_cast<float>(hi) ? hi : static_cast<int>(v);
}

// Q4_K (levels = 15) and Q5_K (31): per sub-block of 32 the range [min(0, lowest), highest] in `levels` steps;
// the sub-block scales and mins in 6 bits relative to the block's largest.
template <int Levels>
void quantize_k4(const float* x, std::uint8_t* b) {
  float scale[8], min[8];
  float max_scale = 0, max_min = 0;
  for (int s = 0; s < 8; ++s) {
    const float* xs = x + 32 * s;
    float lo = 0, hi = xs[0];
    for (int j = 0; j < 32; ++j) lo = std::min(lo, xs[j]), hi = std::max(hi, xs[j]);
    scale[s] = std::max(0.0f, (hi - lo) / Levels);
    min[s] = -lo;
    max_scale = std::max(max_scale, scale[s]);
    max_min = std::max(max_min, min[s]);
  }
  store_half(b, max_scale / 63);
  store_half(b + 2, max_min / 63);
  const float d = load_half(b), dmin = load_half(b + 2);
  int sq[8], mq[8];
  for (int s = 0; s < 8; ++s) {
    // Rounding the scale up keeps the highest value inside the range.
    sq[s] = d > 0 ? clamp_integral(std::ceil(scale[s] / d - 1e-4f), 0, 63) : 0;
    mq[s] = dmin > 0 ? clamp_round(min[s] / dmin, 0, 63) : 0;
  }
  std::uint8_t* sc = b + 4;
  for (int j = 0; j < 4; ++j) {
    sc[j] = static_cast<std::uint8_t>((sq[j] & 63) | ((sq[j + 4] >> 4) << 6));
    sc[j + 4] = static_cast<std::uint8_t>((mq[j] & 63) | ((mq[j + 4] >> 4) << 6));
    sc[j + 8] = static_cast<std::uint8_t>((sq[j + 4] & 0x0F) | ((mq[j + 4] & 0x0F) << 4));
  }
  std::uint8_t q[QK];
  for (int i = 0; i < static_cast<int>(QK); ++i) {
    const float step = d * static_cast<float>(sq[i / 32]), offset = dmin * static_cast<float>(mq[i / 32]);
    q[i] = static_cast<std::uint8_t>(step > 0 ? clamp_round((x[i] + offset) / step, 0, Levels) : 0);
  }
  if constexpr (Levels == 15) {
    std::uint8_t* qs = b + 16;
    for (int c = 0; c < 4; ++c) {
      for (int l = 0; l < 32; ++l)
        qs[32 * c + l] = static_cast<std::uint8_t>(q[64 * c + l] | (q[64 * c + 32 + l] << 4));
    }
  } else {
    std::uint8_t* qh = b + 16;
    std::uint8_t* qs = b + 48;
    std::memset(qh, 0, 32);
    for (int c = 0; c < 4; ++c) {
      for (int l = 0; l < 32; ++l) {
        const int lo = q[64 * c + l], hi = q[64 * c + 32 + l];
        qs[32 * c + l] = static_cast<std::uint8_t>((lo & 0x0F) | ((hi & 0x0F) << 4));
        qh[l] = static_cast<std::uint8_t>(qh[l] | ((lo >> 4) << (2 * c)) | ((hi >> 4) << (2 * c + 1)));
      }
    }
  }
}

// Q6_K: per sub-block of 16 the value of largest magnitude maps to -32; the sub-block scales in int8 relative
// to the block's largest.
void quantize_q6_k(const float* x, std::uint8_t* b) {
  float scale[16], max_scale = 0;
  for (int s = 0; s < 16; ++s) {
    float v = 0;
    for (int j = 0; j < 16; ++j) {
      if (std::fabs(x[16 * s + j]) > std::fabs(v)) v = x[16 * s + j];
    }
    scale[s] = v / -32.0f;
    max_scale = std::max(max_scale, std::fabs(scale[s]));
  }
  store_half(b + 208, max_scale / 127);
  const float d = load_half(b + 208);
  auto* sc = reinterpret_cast<std::int8_t*>(b + 192);
  std::uint8_t q[QK];
  for (int s = 0; s < 16; ++s) {
    sc[s] = static_cast<std::int8_t>(d > 0 ? clamp_round(scale[s] / d, -127, 127) : 0);
    const float step = d * sc[s];
    for (int j = 0; j < 16; ++j) {
      q[16 * s + j] = static_cast<std::uint8_t>((step != 0 ? clamp_round(x[16 * s + j] / step, -32, 31) : 0) + 32);
    }
  }
  std::uint8_t* ql = b;
  std::uint8_t* qh = b + 128;
  for (int h = 0; h < 2; ++h) {
    for (int l = 0; l < 32; ++l) {
      const int a = q[128 * h + l], c = q[128 * h + 32 + l], e = q[128 * h + 64 + l], g = q[128 * h + 96 + l];
      ql[64 * h + l] = static_cast<std::uint8_t>((a & 0x0F) | ((e & 0x0F) << 4));
      ql[64 * h + 32 + l] = static_cast<std::uint8_t>((c & 0x0F) | ((g & 0x0F) << 4));
      qh[32 * h + l] = static_cast<std::uint8_t>((a >> 4) | ((c >> 4) << 2) | ((e >> 4) << 4) | ((g >> 4) << 6));
    }
  }
}

// Ternary: values above 0.75 x the block's mean magnitude keep their sign, the others become 0; the scale is the
// mean magnitude of the values kept (the least-squares scale for that choice). Returns trits 0..2 (value + 1).
float ternarize(const float* x, std::uint8_t* t) {
  float mean = 0;
  for (std::size_t i = 0; i < QK; ++i) mean += std::fabs(x[i]);
  mean /= QK;
  const float threshold = 0.75f * mean;
  float kept = 0;
  int count = 0;
  for (std::size_t i = 0; i < QK; ++i) {
    if (std::fabs(x[i]) > threshold) kept += std::fabs(x[i]), ++count;
  }
  for (std::size_t i = 0; i < QK; ++i) {
    t[i] = static_cast<std::uint8_t>(std::fabs(x[i]) > threshold ? (x[i] > 0 ? 2 : 0) : 1);
  }
  return count ? kept / static_cast<float>(count) : 0.0f;
}

void quantize_tq2_0(const float* x, std::uint8_t* b) {
  std::uint8_t t[QK];
  store_half(b + 64, ternarize(x, t));
  std::memset(b, 0, 64);
  for (int j = 0; j < 2; ++j) {
    for (int l = 0; l < 4; ++l) {
      for (int m = 0; m < 32; ++m)
        b[32 * j + m] = static_cast<std::uint8_t>(b[32 * j + m] | (t[128 * j + 32 * l + m] << (2 * l)));
    }
  }
}

// `count` trits (first most significant), padded to five with zeros, as the byte ceil(v * 256 / 243).
std::uint8_t pack_trits(const std::uint8_t* const* trits, int count) {
  int v = 0;
  for (int n = 0; n < 5; ++n) v = v * 3 + (n < count ? *trits[n] : 0);
  return static_cast<std::uint8_t>((v * 256 + 242) / 243);
}

void quantize_tq1_0(const float* x, std::uint8_t* b) {
  std::uint8_t t[QK];
  store_half(b + 52, ternarize(x, t));
  const std::uint8_t* p[5];
  for (int m = 0; m < 32; ++m) {
    for (int n = 0; n < 5; ++n) p[n] = &t[32 * n + m];
    b[m] = pack_trits(p, 5);
  }
  for (int m = 0; m < 16; ++m) {
    for (int n = 0; n < 5; ++n) p[n] = &t[160 + 16 * n + m];
    b[32 + m] = pack_trits(p, 5);
  }
  for (int j = 0; j < 4; ++j) {
    for (int n = 0; n < 4; ++n) p[n] = &t[240 + 4 * n + j];
    b[48 + j] = pack_trits(p, 4);
  }
}

}  // namespace

bool is_super_block_type(TensorType type) noexcept {
  switch (type) {
    case TensorType::Q4_K:
    case TensorType::Q5_K:
    case TensorType::Q6_K:
    case TensorType::Q8_K:
    case TensorType::TQ1_0:
    case TensorType::TQ2_0:
      return true;
    default:
      return false;
  }
}

void quantize_row_q8k(const float* x, BlockQ8K* out, std::size_t n, SimdLevel level) noexcept {
  if (level != SimdLevel::Scalar) return quantize_q8k_avx2(x, out, n);
  for (std::size_t i = 0; i < n / QK; ++i, x += QK, ++out) {
    float amax = 0;
    for (std::size_t j = 0; j < QK; ++j) amax = std::max(amax, std::fabs(x[j]));
    out->d = amax / 127.0f;
    const float id = amax > 0 ? 127.0f / amax : 0.0f;
    for (std::size_t j = 0; j < QK; ++j) {
      out->qs[j] = static_cast<std::int8_t>(clamp_integral(std::nearbyint(x[j] * id), -127, 127));
    }
    for (int s = 0; s < 16; ++s) {
      int sum = 0;
      for (int j = 0; j < 16; ++j) sum += out->qs[16 * s + j];
      out->bsums[s] = static_cast<std::int16_t>(sum);
    }
  }
}

void add_super_block_kernels(Kernels& k) {
  constexpr int q4 = 12, q5 = 13, q6 = 14, q8 = 15, tq1 = 34, tq2 = 35;
  k.dequantize[q4] = dequantize_super<decode_q4_k, kQ4_KBytes>;
  k.dequantize[q5] = dequantize_super<decode_q5_k, kQ5_KBytes>;
  k.dequantize[q6] = dequantize_super<decode_q6_k, kQ6_KBytes>;
  k.dequantize[q8] = dequantize_super<decode_q8_k, kQ8_KBytes>;
  k.dequantize[tq1] = dequantize_super<decode_tq1_0, kTQ1_0Bytes>;
  k.dequantize[tq2] = dequantize_super<decode_tq2_0, kTQ2_0Bytes>;
  if (k.level == SimdLevel::Scalar) {
    k.dot_q8k[q4] = dot_q8k_scalar<decode_q4_k, kQ4_KBytes>;
    k.dot_q8k[q5] = dot_q8k_scalar<decode_q5_k, kQ5_KBytes>;
    k.dot_q8k[q6] = dot_q8k_scalar<decode_q6_k, kQ6_KBytes>;
    k.dot_q8k[q8] = dot_q8k_scalar<decode_q8_k, kQ8_KBytes>;
    k.dot_q8k[tq1] = dot_q8k_scalar<decode_tq1_0, kTQ1_0Bytes>;
    k.dot_q8k[tq2] = dot_q8k_scalar<decode_tq2_0, kTQ2_0Bytes>;
  } else {  // AVX2 and AVX-512 (which uses the AVX2 kernels); matmul_avx2.cpp replaces Q4_K, Q5_K and Q6_K's matmul
    k.dot_q8k[q4] = dot_k4_avx2<4>;
    k.dot_q8k[q5] = dot_k4_avx2<5>;
    k.dot_q8k[q6] = dot_q6_k_avx2;
    k.dot_q8k[q8] = dot_q8_k_avx2;
    k.dot_q8k[tq1] = dot_tq1_0_avx2;
    k.dot_q8k[tq2] = dot_tq2_0_avx2;
  }
  k.matmul[q4] = k.level == SimdLevel::Scalar ? matmul_q8k_rows<dot_q8k_scalar<decode_q4_k, kQ4_KBytes>>
                                              : matmul_q8k_rows<dot_k4_avx2<4>>;
  k.matmul[q5] = k.level == SimdLevel::Scalar ? matmul_q8k_rows<dot_q8k_scalar<decode_q5_k, kQ5_KBytes>>
                                              : matmul_q8k_rows<dot_k4_avx2<5>>;
  k.matmul[q6] = k.level == SimdLevel::Scalar ? matmul_q8k_rows<dot_q8k_scalar<decode_q6_k, kQ6_KBytes>>
                                              : matmul_q8k_rows<dot_q6_k_avx2>;
  k.matmul[q8] = k.level == SimdLevel::Scalar ? matmul_q8k_rows<dot_q8k_scalar<decode_q8_k, kQ8_KBytes>>
                                              : matmul_q8k_rows<dot_q8_k_avx2>;
  k.matmul[tq1] = k.level == SimdLevel::Scalar ? matmul_q8k_rows<dot_q8k_scalar<decode_tq1_0, kTQ1_0Bytes>>
                                               : matmul_q8k_rows<dot_tq1_0_avx2>;
  k.matmul[tq2] = k.level == SimdLevel::Scalar ? matmul_q8k_rows<dot_q8k_scalar<decode_tq2_0, kTQ2_0Bytes>>
                                               : matmul_q8k_rows<dot_tq2_0_avx2>;
}

void quantize_row_super_block(TensorType type, const float* x, void* out, std::size_t n) {
  auto* b = static_cast<std::uint8_t*>(out);
  for (std::size_t i = 0; i < n; i += QK, x += QK) {
    switch (type) {
      case TensorType::Q4_K:
        quantize_k4<15>(x, b), b += kQ4_KBytes;
        break;
      case TensorType::Q5_K:
        quantize_k4<31>(x, b), b += kQ5_KBytes;
        break;
      case TensorType::Q6_K:
        quantize_q6_k(x, b), b += kQ6_KBytes;
        break;
      case TensorType::Q8_K: {
        BlockQ8K blk;  // the row's bytes need not be aligned for a float
        quantize_row_q8k(x, &blk, QK);
        std::memcpy(b, &blk, kQ8_KBytes);
        b += kQ8_KBytes;
        break;
      }
      case TensorType::TQ1_0:
        quantize_tq1_0(x, b), b += kTQ1_0Bytes;
        break;
      case TensorType::TQ2_0:
        quantize_tq2_0(x, b), b += kTQ2_0Bytes;
        break;
      default:
        return;
    }
  }
}

}  // namespace mmsb::llm
