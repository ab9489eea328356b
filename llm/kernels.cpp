// Dot-product kernels: a scalar reference and AVX2 / AVX-512 versions chosen at run time. The SIMD functions are
// compiled with target attributes, so the library itself needs no -mavx flags and runs on any x86-64.
#include "mmsb/llm/kernels.hpp"

#include <immintrin.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
#include <string>

#include "llm/kquants.hpp"
#include "mmsb/error.hpp"

namespace mmsb::llm {

namespace {

// Block layouts (32 values per block; little-endian fields; `d` and `m` are IEEE half):
//   Q8_0: d, int8 q[32]                     value = d * q
//   Q4_0: d, u8 nibbles[16]                 value = d * (nibble - 8); low nibbles hold values 0..15, high 16..31
//   Q4_1: d, m, u8 nibbles[16]              value = d * nibble + m
//   Q5_0: d, u32 high_bits, u8 nibbles[16]  value = d * ((nibble | high_bit << 4) - 16); bit j of high_bits is value j
//   Q5_1: d, m, u32 high_bits, nibbles[16]  value = d * (nibble | high_bit << 4) + m
constexpr std::size_t kBlock = 32;
constexpr std::size_t kQ8_0Bytes = 34, kQ4_0Bytes = 18, kQ4_1Bytes = 20, kQ5_0Bytes = 22, kQ5_1Bytes = 24;

inline std::uint16_t load_u16(const std::uint8_t* p) noexcept {
  std::uint16_t v;
  std::memcpy(&v, p, 2);
  return v;
}
inline std::uint32_t load_u32(const std::uint8_t* p) noexcept {
  std::uint32_t v;
  std::memcpy(&v, p, 4);
  return v;
}
inline float load_half(const std::uint8_t* p) noexcept { return fp16_to_fp32(load_u16(p)); }

// Integer values of one block, in element order, with the block's scale and offset (value = d * q + m).
struct DecodedBlock {
  std::int8_t q[kBlock];
  float d;
  float m;
};

inline void decode_q8_0(const std::uint8_t* b, DecodedBlock& out) noexcept {
  out.d = load_half(b);
  out.m = 0;
  std::memcpy(out.q, b + 2, kBlock);
}
inline void decode_nibbles(const std::uint8_t* nibbles, std::uint32_t high_bits, int bias, DecodedBlock& out) noexcept {
  for (std::size_t j = 0; j < kBlock / 2; ++j) {
    int lo = (nibbles[j] & 0x0F) | static_cast<int>(((high_bits >> j) & 1u) << 4);
    int hi = (nibbles[j] >> 4) | static_cast<int>(((high_bits >> (j + 16)) & 1u) << 4);
    out.q[j] = static_cast<std::int8_t>(lo - bias);
    out.q[j + 16] = static_cast<std::int8_t>(hi - bias);
  }
}
inline void decode_q4_0(const std::uint8_t* b, DecodedBlock& out) noexcept {
  out.d = load_half(b);
  out.m = 0;
  decode_nibbles(b + 2, 0, 8, out);
}
inline void decode_q4_1(const std::uint8_t* b, DecodedBlock& out) noexcept {
  out.d = load_half(b);
  out.m = load_half(b + 2);
  decode_nibbles(b + 4, 0, 0, out);
}
inline void decode_q5_0(const std::uint8_t* b, DecodedBlock& out) noexcept {
  out.d = load_half(b);
  out.m = 0;
  decode_nibbles(b + 6, load_u32(b + 2), 16, out);
}
inline void decode_q5_1(const std::uint8_t* b, DecodedBlock& out) noexcept {
  out.d = load_half(b);
  out.m = load_half(b + 2);
  decode_nibbles(b + 8, load_u32(b + 4), 0, out);
}

// --- scalar reference ------------------------------------------------------------------------------------------

float dot_f32_scalar(const void* row, const float* x, std::size_t n) {
  const float* r = static_cast<const float*>(row);
  float sum = 0;
  for (std::size_t i = 0; i < n; ++i) sum += r[i] * x[i];
  return sum;
}
float dot_f16_scalar(const void* row, const float* x, std::size_t n) {
  const auto* r = static_cast<const std::uint8_t*>(row);
  float sum = 0;
  for (std::size_t i = 0; i < n; ++i) sum += load_half(r + 2 * i) * x[i];
  return sum;
}

template <void (*Decode)(const std::uint8_t*, DecodedBlock&), std::size_t BlockBytes>
float dot_blocks_scalar(const void* row, const float* x, std::size_t n) {
  const auto* b = static_cast<const std::uint8_t*>(row);
  float sum = 0;
  DecodedBlock blk;
  for (std::size_t i = 0; i < n; i += kBlock, b += BlockBytes, x += kBlock) {
    Decode(b, blk);
    float sq = 0, sx = 0;
    for (std::size_t j = 0; j < kBlock; ++j) {
      sq += static_cast<float>(blk.q[j]) * x[j];
      sx += x[j];
    }
    sum += blk.d * sq + blk.m * sx;
  }
  return sum;
}

void dequantize_f32(const void* row, float* out, std::size_t n) { std::memcpy(out, row, n * sizeof(float)); }
void dequantize_f16(const void* row, float* out, std::size_t n) {
  const auto* r = static_cast<const std::uint8_t*>(row);
  for (std::size_t i = 0; i < n; ++i) out[i] = load_half(r + 2 * i);
}
template <void (*Decode)(const std::uint8_t*, DecodedBlock&), std::size_t BlockBytes>
void dequantize_blocks(const void* row, float* out, std::size_t n) {
  const auto* b = static_cast<const std::uint8_t*>(row);
  DecodedBlock blk;
  for (std::size_t i = 0; i < n; i += kBlock, b += BlockBytes) {
    Decode(b, blk);
    for (std::size_t j = 0; j < kBlock; ++j) out[i + j] = blk.d * static_cast<float>(blk.q[j]) + blk.m;
  }
}

void attention_scores_scalar(const float* q, const float* keys, std::size_t stride, std::size_t n, std::size_t head,
                             float scale, float* scores) {
  for (std::size_t t = 0; t < n; ++t) {
    const float* k = keys + t * stride;
    float s = 0;
    for (std::size_t i = 0; i < head; ++i) s += q[i] * k[i];
    scores[t] = s / scale;
  }
}
void attention_mix_scalar(const float* weights, const float* values, std::size_t stride, std::size_t n,
                          std::size_t head, float* out) {
  for (std::size_t i = 0; i < head; ++i) out[i] = 0;
  for (std::size_t t = 0; t < n; ++t) {
    const float* v = values + t * stride;
    const float w = weights[t];
    for (std::size_t i = 0; i < head; ++i) out[i] += w * v[i];
  }
}

void softmax_scalar(float* x, std::size_t n) {
  float max_value = x[0];
  for (std::size_t i = 1; i < n; ++i) max_value = std::max(max_value, x[i]);
  float sum = 0;
  for (std::size_t i = 0; i < n; ++i) {
    // Below -105, expf's result rounds to 0 anyway; returning it directly skips libm's underflow (errno) path.
    const float shifted = x[i] - max_value;
    x[i] = shifted < -105.0f ? 0.0f : std::exp(shifted);
    sum += x[i];
  }
  for (std::size_t i = 0; i < n; ++i) x[i] /= sum;
}

// --- AVX2 ------------------------------------------------------------------------------------------------------

#define MMSB_AVX2 __attribute__((target("avx2,fma,f16c")))
// Without "fma": GCC would fuse a multiply and an add into one FMA, which rounds once instead of twice; the
// attention kernels must round exactly as the scalar loop does.
#define MMSB_AVX2_NO_FMA __attribute__((target("avx2")))
#define MMSB_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx2,fma,f16c")))

MMSB_AVX2 inline float hsum256(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

MMSB_AVX2 float dot_f32_avx2(const void* row, const float* x, std::size_t n) {
  const float* r = static_cast<const float*>(row);
  __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps(), a2 = _mm256_setzero_ps(), a3 = _mm256_setzero_ps();
  std::size_t i = 0;
  for (; i + 32 <= n; i += 32) {
    a0 = _mm256_fmadd_ps(_mm256_loadu_ps(r + i), _mm256_loadu_ps(x + i), a0);
    a1 = _mm256_fmadd_ps(_mm256_loadu_ps(r + i + 8), _mm256_loadu_ps(x + i + 8), a1);
    a2 = _mm256_fmadd_ps(_mm256_loadu_ps(r + i + 16), _mm256_loadu_ps(x + i + 16), a2);
    a3 = _mm256_fmadd_ps(_mm256_loadu_ps(r + i + 24), _mm256_loadu_ps(x + i + 24), a3);
  }
  for (; i + 8 <= n; i += 8) a0 = _mm256_fmadd_ps(_mm256_loadu_ps(r + i), _mm256_loadu_ps(x + i), a0);
  float sum = hsum256(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));
  for (; i < n; ++i) sum += r[i] * x[i];
  return sum;
}

MMSB_AVX2 float dot_f16_avx2(const void* row, const float* x, std::size_t n) {
  const auto* r = static_cast<const std::uint8_t*>(row);
  __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
  std::size_t i = 0;
  for (; i + 16 <= n; i += 16) {
    __m256 w0 = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(r + 2 * i)));
    __m256 w1 = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(r + 2 * i + 16)));
    a0 = _mm256_fmadd_ps(w0, _mm256_loadu_ps(x + i), a0);
    a1 = _mm256_fmadd_ps(w1, _mm256_loadu_ps(x + i + 8), a1);
  }
  for (; i + 8 <= n; i += 8) {
    __m256 w = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(r + 2 * i)));
    a0 = _mm256_fmadd_ps(w, _mm256_loadu_ps(x + i), a0);
  }
  float sum = hsum256(_mm256_add_ps(a0, a1));
  for (; i < n; ++i) sum += load_half(r + 2 * i) * x[i];
  return sum;
}

// sum over 32 values of q[j] * x[j], as 8 lanes.
MMSB_AVX2 inline __m256 dot_i8x32(__m256i q, const float* x) {
  __m128i lo = _mm256_castsi256_si128(q), hi = _mm256_extracti128_si256(q, 1);
  __m256 f0 = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(lo));
  __m256 f1 = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(lo, 8)));
  __m256 f2 = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(hi));
  __m256 f3 = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(hi, 8)));
  __m256 s = _mm256_mul_ps(f0, _mm256_loadu_ps(x));
  s = _mm256_fmadd_ps(f1, _mm256_loadu_ps(x + 8), s);
  s = _mm256_fmadd_ps(f2, _mm256_loadu_ps(x + 16), s);
  return _mm256_fmadd_ps(f3, _mm256_loadu_ps(x + 24), s);
}
MMSB_AVX2 inline __m256 sum_x32(const float* x) {
  return _mm256_add_ps(_mm256_add_ps(_mm256_loadu_ps(x), _mm256_loadu_ps(x + 8)),
                       _mm256_add_ps(_mm256_loadu_ps(x + 16), _mm256_loadu_ps(x + 24)));
}
// 16 bytes of nibbles → 32 bytes: low nibbles as values 0..15, high nibbles as 16..31.
MMSB_AVX2 inline __m256i unpack_nibbles(const std::uint8_t* p) {
  __m128i raw = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  __m128i mask = _mm_set1_epi8(0x0F);
  __m128i lo = _mm_and_si128(raw, mask), hi = _mm_and_si128(_mm_srli_epi16(raw, 4), mask);
  return _mm256_set_m128i(hi, lo);
}
// Bit j of `bits` → byte j set to 0x10 (the fifth bit of value j).
MMSB_AVX2 inline __m256i high_bits_to_bytes(std::uint32_t bits) {
  const __m256i shuffle = _mm256_set_epi64x(0x0303030303030303, 0x0202020202020202, 0x0101010101010101, 0);
  __m256i v = _mm256_shuffle_epi8(_mm256_set1_epi32(static_cast<int>(bits)), shuffle);
  const __m256i select = _mm256_set1_epi64x(static_cast<long long>(0x8040201008040201ULL));
  v = _mm256_cmpeq_epi8(_mm256_and_si256(v, select), select);
  return _mm256_and_si256(v, _mm256_set1_epi8(0x10));
}

MMSB_AVX2 float dot_q8_0_avx2(const void* row, const float* x, std::size_t n) {
  const auto* b = static_cast<const std::uint8_t*>(row);
  __m256 acc = _mm256_setzero_ps();
  for (std::size_t i = 0; i < n; i += kBlock, b += kQ8_0Bytes, x += kBlock) {
    __m256i q = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b + 2));
    acc = _mm256_fmadd_ps(_mm256_set1_ps(load_half(b)), dot_i8x32(q, x), acc);
  }
  return hsum256(acc);
}
MMSB_AVX2 float dot_q4_0_avx2(const void* row, const float* x, std::size_t n) {
  const auto* b = static_cast<const std::uint8_t*>(row);
  __m256 acc = _mm256_setzero_ps();
  for (std::size_t i = 0; i < n; i += kBlock, b += kQ4_0Bytes, x += kBlock) {
    __m256i q = _mm256_sub_epi8(unpack_nibbles(b + 2), _mm256_set1_epi8(8));
    acc = _mm256_fmadd_ps(_mm256_set1_ps(load_half(b)), dot_i8x32(q, x), acc);
  }
  return hsum256(acc);
}
MMSB_AVX2 float dot_q4_1_avx2(const void* row, const float* x, std::size_t n) {
  const auto* b = static_cast<const std::uint8_t*>(row);
  __m256 acc = _mm256_setzero_ps();
  for (std::size_t i = 0; i < n; i += kBlock, b += kQ4_1Bytes, x += kBlock) {
    __m256i q = unpack_nibbles(b + 4);
    acc = _mm256_fmadd_ps(_mm256_set1_ps(load_half(b)), dot_i8x32(q, x), acc);
    acc = _mm256_fmadd_ps(_mm256_set1_ps(load_half(b + 2)), sum_x32(x), acc);
  }
  return hsum256(acc);
}
MMSB_AVX2 float dot_q5_0_avx2(const void* row, const float* x, std::size_t n) {
  const auto* b = static_cast<const std::uint8_t*>(row);
  __m256 acc = _mm256_setzero_ps();
  for (std::size_t i = 0; i < n; i += kBlock, b += kQ5_0Bytes, x += kBlock) {
    __m256i q = _mm256_or_si256(unpack_nibbles(b + 6), high_bits_to_bytes(load_u32(b + 2)));
    q = _mm256_sub_epi8(q, _mm256_set1_epi8(16));
    acc = _mm256_fmadd_ps(_mm256_set1_ps(load_half(b)), dot_i8x32(q, x), acc);
  }
  return hsum256(acc);
}
MMSB_AVX2 float dot_q5_1_avx2(const void* row, const float* x, std::size_t n) {
  const auto* b = static_cast<const std::uint8_t*>(row);
  __m256 acc = _mm256_setzero_ps();
  for (std::size_t i = 0; i < n; i += kBlock, b += kQ5_1Bytes, x += kBlock) {
    __m256i q = _mm256_or_si256(unpack_nibbles(b + 8), high_bits_to_bytes(load_u32(b + 4)));
    acc = _mm256_fmadd_ps(_mm256_set1_ps(load_half(b)), dot_i8x32(q, x), acc);
    acc = _mm256_fmadd_ps(_mm256_set1_ps(load_half(b + 2)), sum_x32(x), acc);
  }
  return hsum256(acc);
}

// Eight keys at a time: their 8-float chunks are transposed so that lane j accumulates key j's score in the
// scalar order (element 0 first), with a separate multiply and add.
MMSB_AVX2_NO_FMA void attention_scores_avx2(const float* q, const float* keys, std::size_t stride, std::size_t n,
                                     std::size_t head, float scale, float* scores) {
  if (head % 8 != 0) return attention_scores_scalar(q, keys, stride, n, head, scale, scores);
  const __m256 vscale = _mm256_set1_ps(scale);
  std::size_t t = 0;
  for (; t + 8 <= n; t += 8) {
    __m256 s = _mm256_setzero_ps();
    for (std::size_t c = 0; c < head; c += 8) {
      const float* base = keys + t * stride + c;
      __m256 r0 = _mm256_loadu_ps(base), r1 = _mm256_loadu_ps(base + stride),
             r2 = _mm256_loadu_ps(base + 2 * stride), r3 = _mm256_loadu_ps(base + 3 * stride),
             r4 = _mm256_loadu_ps(base + 4 * stride), r5 = _mm256_loadu_ps(base + 5 * stride),
             r6 = _mm256_loadu_ps(base + 6 * stride), r7 = _mm256_loadu_ps(base + 7 * stride);
      __m256 t0 = _mm256_unpacklo_ps(r0, r1), t1 = _mm256_unpackhi_ps(r0, r1);
      __m256 t2 = _mm256_unpacklo_ps(r2, r3), t3 = _mm256_unpackhi_ps(r2, r3);
      __m256 t4 = _mm256_unpacklo_ps(r4, r5), t5 = _mm256_unpackhi_ps(r4, r5);
      __m256 t6 = _mm256_unpacklo_ps(r6, r7), t7 = _mm256_unpackhi_ps(r6, r7);
      __m256 u0 = _mm256_shuffle_ps(t0, t2, 0x44), u1 = _mm256_shuffle_ps(t0, t2, 0xEE);
      __m256 u2 = _mm256_shuffle_ps(t1, t3, 0x44), u3 = _mm256_shuffle_ps(t1, t3, 0xEE);
      __m256 u4 = _mm256_shuffle_ps(t4, t6, 0x44), u5 = _mm256_shuffle_ps(t4, t6, 0xEE);
      __m256 u6 = _mm256_shuffle_ps(t5, t7, 0x44), u7 = _mm256_shuffle_ps(t5, t7, 0xEE);
      __m256 col[8] = {_mm256_permute2f128_ps(u0, u4, 0x20), _mm256_permute2f128_ps(u1, u5, 0x20),
                       _mm256_permute2f128_ps(u2, u6, 0x20), _mm256_permute2f128_ps(u3, u7, 0x20),
                       _mm256_permute2f128_ps(u0, u4, 0x31), _mm256_permute2f128_ps(u1, u5, 0x31),
                       _mm256_permute2f128_ps(u2, u6, 0x31), _mm256_permute2f128_ps(u3, u7, 0x31)};
      for (int j = 0; j < 8; ++j) s = _mm256_add_ps(s, _mm256_mul_ps(_mm256_set1_ps(q[c + j]), col[j]));
    }
    _mm256_storeu_ps(scores + t, _mm256_div_ps(s, vscale));
  }
  if (t < n) attention_scores_scalar(q, keys + t * stride, stride, n - t, head, scale, scores + t);
}

MMSB_AVX2_NO_FMA void attention_mix_avx2(const float* weights, const float* values, std::size_t stride, std::size_t n,
                                  std::size_t head, float* out) {
  if (head % 8 != 0) return attention_mix_scalar(weights, values, stride, n, head, out);
  for (std::size_t c = 0; c < head; c += 8) {
    __m256 acc = _mm256_setzero_ps();
    for (std::size_t t = 0; t < n; ++t) {
      acc = _mm256_add_ps(acc, _mm256_mul_ps(_mm256_set1_ps(weights[t]), _mm256_loadu_ps(values + t * stride + c)));
    }
    _mm256_storeu_ps(out + c, acc);
  }
}

// exp(x) for x <= 0, 8 lanes: x = n ln2 + r with |r| <= ln2/2 (ln2 split in two for an exact product), e^r by
// its degree-7 Taylor polynomial (truncation error below 1e-8 relative), then scaled by 2^n through the exponent
// bits. Inputs below -87 (where the result would be subnormal) give 0: next to the maximum's e^0 = 1 they add
// nothing to a softmax.
MMSB_AVX2 inline __m256 exp_nonpositive_avx2(__m256 x) {
  const __m256 too_small = _mm256_cmp_ps(x, _mm256_set1_ps(-87.0f), _CMP_LT_OQ);
  x = _mm256_max_ps(x, _mm256_set1_ps(-87.0f));
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
  __m256 p = _mm256_set1_ps(1.0f / 5040.0f);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 720.0f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 120.0f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 24.0f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 6.0f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(0.5f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
  const __m256i scale = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_andnot_ps(too_small, _mm256_mul_ps(p, _mm256_castsi256_ps(scale)));
}

MMSB_AVX2 void softmax_avx2(float* x, std::size_t n) {
  std::size_t i = 0;
  __m256 vmax = _mm256_set1_ps(x[0]);
  for (; i + 8 <= n; i += 8) vmax = _mm256_max_ps(vmax, _mm256_loadu_ps(x + i));
  __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(vmax), _mm256_extractf128_ps(vmax, 1));
  m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
  m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
  float max_value = _mm_cvtss_f32(m4);
  for (; i < n; ++i) max_value = std::max(max_value, x[i]);
  const __m256 vmax_all = _mm256_set1_ps(max_value);
  __m256 vsum = _mm256_setzero_ps();
  for (i = 0; i + 8 <= n; i += 8) {
    __m256 e = exp_nonpositive_avx2(_mm256_sub_ps(_mm256_loadu_ps(x + i), vmax_all));
    _mm256_storeu_ps(x + i, e);
    vsum = _mm256_add_ps(vsum, e);
  }
  if (i < n) {  // the tail through the same polynomial, so every element is computed alike
    alignas(32) float tail[8] = {-1e30f, -1e30f, -1e30f, -1e30f, -1e30f, -1e30f, -1e30f, -1e30f};
    for (std::size_t j = i; j < n; ++j) tail[j - i] = x[j] - max_value;
    __m256 e = exp_nonpositive_avx2(_mm256_load_ps(tail));
    _mm256_store_ps(tail, e);
    vsum = _mm256_add_ps(vsum, e);
    for (std::size_t j = i; j < n; ++j) x[j] = tail[j - i];
  }
  const float sum = hsum256(vsum);
  const __m256 vsumv = _mm256_set1_ps(sum);
  for (i = 0; i + 8 <= n; i += 8) _mm256_storeu_ps(x + i, _mm256_div_ps(_mm256_loadu_ps(x + i), vsumv));
  for (; i < n; ++i) x[i] /= sum;
}

// --- AVX-512 (F32, F16 and Q8_0; the other types use the AVX2 kernels at this level) --------------------------

// GCC 12's own AVX-512 headers pass _mm512_undefined_*() to masked builtins, which -Wuninitialized reports once
// inlined here: a false positive in code that is not ours.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

MMSB_AVX512 float dot_f32_avx512(const void* row, const float* x, std::size_t n) {
  const float* r = static_cast<const float*>(row);
  __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps();
  std::size_t i = 0;
  for (; i + 32 <= n; i += 32) {
    a0 = _mm512_fmadd_ps(_mm512_loadu_ps(r + i), _mm512_loadu_ps(x + i), a0);
    a1 = _mm512_fmadd_ps(_mm512_loadu_ps(r + i + 16), _mm512_loadu_ps(x + i + 16), a1);
  }
  if (i + 16 <= n) {
    a0 = _mm512_fmadd_ps(_mm512_loadu_ps(r + i), _mm512_loadu_ps(x + i), a0);
    i += 16;
  }
  if (i < n) {  // masked tail: no scalar loop
    __mmask16 m = static_cast<__mmask16>((1u << (n - i)) - 1);
    a1 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, r + i), _mm512_maskz_loadu_ps(m, x + i), a1);
  }
  return _mm512_reduce_add_ps(_mm512_add_ps(a0, a1));
}
MMSB_AVX512 float dot_f16_avx512(const void* row, const float* x, std::size_t n) {
  const auto* r = static_cast<const std::uint8_t*>(row);
  __m512 a0 = _mm512_setzero_ps();
  std::size_t i = 0;
  for (; i + 16 <= n; i += 16) {
    __m512 w = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(r + 2 * i)));
    a0 = _mm512_fmadd_ps(w, _mm512_loadu_ps(x + i), a0);
  }
  if (i < n) {
    __mmask16 m = static_cast<__mmask16>((1u << (n - i)) - 1);
    __m512 w = _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, r + 2 * i));
    a0 = _mm512_fmadd_ps(w, _mm512_maskz_loadu_ps(m, x + i), a0);
  }
  return _mm512_reduce_add_ps(a0);
}
MMSB_AVX512 float dot_q8_0_avx512(const void* row, const float* x, std::size_t n) {
  const auto* b = static_cast<const std::uint8_t*>(row);
  __m512 acc = _mm512_setzero_ps();
  for (std::size_t i = 0; i < n; i += kBlock, b += kQ8_0Bytes, x += kBlock) {
    __m512 f0 = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(b + 2))));
    __m512 f1 = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(b + 18))));
    __m512 s = _mm512_fmadd_ps(f1, _mm512_loadu_ps(x + 16), _mm512_mul_ps(f0, _mm512_loadu_ps(x)));
    acc = _mm512_fmadd_ps(_mm512_set1_ps(load_half(b)), s, acc);
  }
  return _mm512_reduce_add_ps(acc);
}

#pragma GCC diagnostic pop

Kernels make_scalar() {
  Kernels k{};
  k.level = SimdLevel::Scalar;
  k.dot[0] = dot_f32_scalar;
  k.dot[1] = dot_f16_scalar;
  k.dot[2] = dot_blocks_scalar<decode_q4_0, kQ4_0Bytes>;
  k.dot[3] = dot_blocks_scalar<decode_q4_1, kQ4_1Bytes>;
  k.dot[6] = dot_blocks_scalar<decode_q5_0, kQ5_0Bytes>;
  k.dot[7] = dot_blocks_scalar<decode_q5_1, kQ5_1Bytes>;
  k.dot[8] = dot_blocks_scalar<decode_q8_0, kQ8_0Bytes>;
  k.dequantize[0] = dequantize_f32;
  k.dequantize[1] = dequantize_f16;
  k.dequantize[2] = dequantize_blocks<decode_q4_0, kQ4_0Bytes>;
  k.dequantize[3] = dequantize_blocks<decode_q4_1, kQ4_1Bytes>;
  k.dequantize[6] = dequantize_blocks<decode_q5_0, kQ5_0Bytes>;
  k.dequantize[7] = dequantize_blocks<decode_q5_1, kQ5_1Bytes>;
  k.dequantize[8] = dequantize_blocks<decode_q8_0, kQ8_0Bytes>;
  k.attention_scores = attention_scores_scalar;
  k.attention_mix = attention_mix_scalar;
  k.softmax = softmax_scalar;
  add_super_block_kernels(k);
  return k;
}
Kernels make_avx2() {
  Kernels k = make_scalar();
  k.level = SimdLevel::Avx2;
  k.dot[0] = dot_f32_avx2;
  k.dot[1] = dot_f16_avx2;
  k.dot[2] = dot_q4_0_avx2;
  k.dot[3] = dot_q4_1_avx2;
  k.dot[6] = dot_q5_0_avx2;
  k.dot[7] = dot_q5_1_avx2;
  k.dot[8] = dot_q8_0_avx2;
  k.attention_scores = attention_scores_avx2;
  k.attention_mix = attention_mix_avx2;
  k.softmax = softmax_avx2;
  add_super_block_kernels(k);
  return k;
}
#pragma GCC diagnostic push  // _mm512_reduce_add_ps: GCC 12's header reads an undefined register (as above)
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
MMSB_AVX512 void dot4_f32_avx512(const void* row, const float* x, std::size_t stride, std::size_t n, float* out) {
  // dot_f32_avx512 four times over, sharing the row's loads: the same accumulators and order for each vector.
  const float* r = static_cast<const float*>(row);
  const float* x0 = x;
  const float* x1 = x + stride;
  const float* x2 = x + 2 * stride;
  const float* x3 = x + 3 * stride;
  __m512 a00 = _mm512_setzero_ps(), a01 = a00, a02 = a00, a03 = a00, a10 = a00, a11 = a00, a12 = a00, a13 = a00;
  std::size_t i = 0;
  for (; i + 32 <= n; i += 32) {
    const __m512 r0 = _mm512_loadu_ps(r + i), r1 = _mm512_loadu_ps(r + i + 16);
    a00 = _mm512_fmadd_ps(r0, _mm512_loadu_ps(x0 + i), a00);
    a01 = _mm512_fmadd_ps(r0, _mm512_loadu_ps(x1 + i), a01);
    a02 = _mm512_fmadd_ps(r0, _mm512_loadu_ps(x2 + i), a02);
    a03 = _mm512_fmadd_ps(r0, _mm512_loadu_ps(x3 + i), a03);
    a10 = _mm512_fmadd_ps(r1, _mm512_loadu_ps(x0 + i + 16), a10);
    a11 = _mm512_fmadd_ps(r1, _mm512_loadu_ps(x1 + i + 16), a11);
    a12 = _mm512_fmadd_ps(r1, _mm512_loadu_ps(x2 + i + 16), a12);
    a13 = _mm512_fmadd_ps(r1, _mm512_loadu_ps(x3 + i + 16), a13);
  }
  if (i + 16 <= n) {
    const __m512 r0 = _mm512_loadu_ps(r + i);
    a00 = _mm512_fmadd_ps(r0, _mm512_loadu_ps(x0 + i), a00);
    a01 = _mm512_fmadd_ps(r0, _mm512_loadu_ps(x1 + i), a01);
    a02 = _mm512_fmadd_ps(r0, _mm512_loadu_ps(x2 + i), a02);
    a03 = _mm512_fmadd_ps(r0, _mm512_loadu_ps(x3 + i), a03);
    i += 16;
  }
  if (i < n) {
    const __mmask16 m = static_cast<__mmask16>((1u << (n - i)) - 1);
    const __m512 r0 = _mm512_maskz_loadu_ps(m, r + i);
    a10 = _mm512_fmadd_ps(r0, _mm512_maskz_loadu_ps(m, x0 + i), a10);
    a11 = _mm512_fmadd_ps(r0, _mm512_maskz_loadu_ps(m, x1 + i), a11);
    a12 = _mm512_fmadd_ps(r0, _mm512_maskz_loadu_ps(m, x2 + i), a12);
    a13 = _mm512_fmadd_ps(r0, _mm512_maskz_loadu_ps(m, x3 + i), a13);
  }
  out[0] = _mm512_reduce_add_ps(_mm512_add_ps(a00, a10));
  out[1] = _mm512_reduce_add_ps(_mm512_add_ps(a01, a11));
  out[2] = _mm512_reduce_add_ps(_mm512_add_ps(a02, a12));
  out[3] = _mm512_reduce_add_ps(_mm512_add_ps(a03, a13));
}
#pragma GCC diagnostic pop

Kernels make_avx512() {
  Kernels k = make_avx2();
  k.level = SimdLevel::Avx512;
  k.dot[0] = dot_f32_avx512;
  k.dot[1] = dot_f16_avx512;
  k.dot[8] = dot_q8_0_avx512;
  k.dot4[0] = dot4_f32_avx512;
  return k;
}

}  // namespace

std::optional<std::string_view> tensor_type_name(std::uint32_t id) noexcept {
  switch (id) {
    case 0: return "F32";
    case 1: return "F16";
    case 2: return "Q4_0";
    case 3: return "Q4_1";
    case 6: return "Q5_0";
    case 7: return "Q5_1";
    case 8: return "Q8_0";
    case 12: return "Q4_K";
    case 13: return "Q5_K";
    case 14: return "Q6_K";
    case 15: return "Q8_K";
    case 34: return "TQ1_0";
    case 35: return "TQ2_0";
    default: return std::nullopt;
  }
}
bool is_supported_type(std::uint32_t id) noexcept { return tensor_type_name(id).has_value(); }

TypeTraits type_traits(TensorType type) noexcept {
  switch (type) {
    case TensorType::F32: return {1, 4};
    case TensorType::F16: return {1, 2};
    case TensorType::Q4_0: return {32, kQ4_0Bytes};
    case TensorType::Q4_1: return {32, kQ4_1Bytes};
    case TensorType::Q5_0: return {32, kQ5_0Bytes};
    case TensorType::Q5_1: return {32, kQ5_1Bytes};
    case TensorType::Q8_0: return {32, kQ8_0Bytes};
    case TensorType::Q4_K: return {256, kQ4_KBytes};
    case TensorType::Q5_K: return {256, kQ5_KBytes};
    case TensorType::Q6_K: return {256, kQ6_KBytes};
    case TensorType::Q8_K: return {256, kQ8_KBytes};
    case TensorType::TQ1_0: return {256, kTQ1_0Bytes};
    case TensorType::TQ2_0: return {256, kTQ2_0Bytes};
  }
  return {1, 0};
}

std::uint64_t row_bytes(TensorType type, std::uint64_t n) noexcept {
  const TypeTraits t = type_traits(type);
  std::uint64_t bytes;
  if (t.block_bytes == 0 || n % t.block_elements != 0 ||
      __builtin_mul_overflow(n / t.block_elements, std::uint64_t{t.block_bytes}, &bytes)) {
    return 0;
  }
  return bytes;
}

float fp16_to_fp32(std::uint16_t h) noexcept {
  const std::uint32_t sign = static_cast<std::uint32_t>(h & 0x8000u) << 16;
  const std::uint32_t exponent = (h >> 10) & 0x1Fu;
  std::uint32_t mantissa = h & 0x3FFu;
  std::uint32_t bits;
  if (exponent == 0x1F) {
    bits = sign | 0x7F800000u | (mantissa << 13);  // infinity or NaN
  } else if (exponent != 0) {
    bits = sign | ((exponent + 112) << 23) | (mantissa << 13);
  } else if (mantissa == 0) {
    bits = sign;
  } else {  // subnormal: normalize
    int e = -1;
    do {
      ++e;
      mantissa <<= 1;
    } while ((mantissa & 0x400u) == 0);
    bits = sign | (static_cast<std::uint32_t>(112 - e) << 23) | ((mantissa & 0x3FFu) << 13);
  }
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

std::uint16_t fp32_to_fp16(float f) noexcept {
  std::uint32_t x;
  std::memcpy(&x, &f, 4);
  const std::uint32_t sign = (x >> 16) & 0x8000u;
  const std::uint32_t abs = x & 0x7FFFFFFFu;
  if (abs >= 0x7F800000u) return static_cast<std::uint16_t>(sign | 0x7C00u | (abs > 0x7F800000u ? 0x200u : 0));
  if (abs >= 0x477FF000u) return static_cast<std::uint16_t>(sign | 0x7C00u);  // rounds to infinity
  if (abs < 0x38800000u) {                                                  // subnormal or zero half
    float a;
    std::memcpy(&a, &abs, 4);
    // Scaling by 2^24 puts the half's subnormal units in the integer part; nearbyint rounds to even.
    return static_cast<std::uint16_t>(sign | static_cast<std::uint32_t>(__builtin_nearbyintf(a * 16777216.0f)));
  }
  std::uint32_t mant_odd = (abs >> 13) & 1u;
  std::uint32_t rounded = abs + 0xFFFu + mant_odd;
  return static_cast<std::uint16_t>(sign | ((rounded - 0x38000000u) >> 13));
}

bool cpu_supports(SimdLevel level) noexcept {
  switch (level) {
    case SimdLevel::Scalar: return true;
    case SimdLevel::Avx2:
      return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
    case SimdLevel::Avx512:
      return cpu_supports(SimdLevel::Avx2) && __builtin_cpu_supports("avx512f") &&
             __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl");
  }
  return false;
}

const Kernels& kernels_for(SimdLevel level) {
  static const Kernels scalar = make_scalar(), avx2 = make_avx2(), avx512 = make_avx512();
  if (!cpu_supports(level)) {
    throw Error(ErrorCode::Unsupported,
                "this CPU does not support the " + std::string(simd_level_name(level)) + " kernels");
  }
  switch (level) {
    case SimdLevel::Scalar: return scalar;
    case SimdLevel::Avx2: return avx2;
    case SimdLevel::Avx512: return avx512;
  }
  return scalar;
}

const Kernels& kernels() {
  static const Kernels& chosen = []() -> const Kernels& {
    int level = static_cast<int>(active_simd_level());
    while (level > 0 && !cpu_supports(static_cast<SimdLevel>(level))) --level;
    return kernels_for(static_cast<SimdLevel>(level));
  }();
  return chosen;
}

void matmul(const Kernels& k, TensorType type, const std::byte* matrix, std::size_t row_stride, const float* x,
            std::size_t cols, float* out, std::size_t rows) noexcept {
  if (is_super_block_type(type)) return matmul_q8k(k, type, matrix, row_stride, x, cols, out, rows);
  DotFn dot = k.dot[static_cast<std::uint32_t>(type)];
  for (std::size_t r = 0; r < rows; ++r) out[r] = dot(matrix + r * row_stride, x, cols);
}

// --- activations rounded as llama.cpp rounds them (a comparison mode, scalar) ----------------------------------

namespace {

struct RoundedBlock {
  std::int8_t q[kBlock];
  float d;    // the block's scale, as stored (half precision)
  float sum;  // d * sum(q), as stored (half precision): the Q8_1 activation blocks of Q4_1 / Q5_1
};

void round_activations(const float* x, std::size_t n, RoundedBlock* out) {
  for (std::size_t b = 0; b < n / kBlock; ++b) {
    const float* xb = x + b * kBlock;
    float amax = 0;
    for (std::size_t j = 0; j < kBlock; ++j) amax = std::max(amax, std::fabs(xb[j]));
    const float d = amax / 127.0f;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    int sum = 0;
    for (std::size_t j = 0; j < kBlock; ++j) {
      out[b].q[j] = static_cast<std::int8_t>(std::lround(xb[j] * id));
      sum += out[b].q[j];
    }
    out[b].d = fp16_to_fp32(fp32_to_fp16(d));
    out[b].sum = fp16_to_fp32(fp32_to_fp16(d * static_cast<float>(sum)));
  }
}

float dot_rounded(TensorType type, const std::uint8_t* row, const RoundedBlock* x, std::size_t n) {
  const TypeTraits t = type_traits(type);
  float acc = 0;
  DecodedBlock w;
  for (std::size_t b = 0; b < n / kBlock; ++b, row += t.block_bytes) {
    switch (type) {
      case TensorType::Q8_0: decode_q8_0(row, w); break;
      case TensorType::Q4_0: decode_q4_0(row, w); break;
      case TensorType::Q4_1: decode_q4_1(row, w); break;
      case TensorType::Q5_0: decode_q5_0(row, w); break;
      case TensorType::Q5_1: decode_q5_1(row, w); break;
      default: return 0;
    }
    int sumi = 0;
    for (std::size_t j = 0; j < kBlock; ++j) sumi += static_cast<int>(w.q[j]) * x[b].q[j];
    acc += static_cast<float>(sumi) * (w.d * x[b].d) + w.m * x[b].sum;
  }
  return acc;
}

}  // namespace

void matmul_llamacpp_rounding(const Kernels& k, TensorType type, const std::byte* matrix, std::size_t row_stride,
                              const float* x, std::size_t cols, float* out, std::size_t rows,
                              std::vector<float>& scratch) {
  // F32 takes the activations as they are; the super-block types already round them to Q8_K as llama.cpp does.
  if (type == TensorType::F32 || is_super_block_type(type)) {
    return matmul(k, type, matrix, row_stride, x, cols, out, rows);
  }
  if (type == TensorType::F16) {
    scratch.resize(cols);
    for (std::size_t i = 0; i < cols; ++i) scratch[i] = fp16_to_fp32(fp32_to_fp16(x[i]));
    return matmul(k, type, matrix, row_stride, scratch.data(), cols, out, rows);
  }
  const std::size_t blocks = cols / kBlock;
  scratch.resize((blocks * sizeof(RoundedBlock) + sizeof(float) - 1) / sizeof(float));
  auto* rounded = reinterpret_cast<RoundedBlock*>(scratch.data());
  round_activations(x, cols, rounded);
  const auto* m = reinterpret_cast<const std::uint8_t*>(matrix);
  for (std::size_t r = 0; r < rows; ++r) out[r] = dot_rounded(type, m + r * row_stride, rounded, cols);
}

}  // namespace mmsb::llm
