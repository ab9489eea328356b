// Dot-product kernels: a scalar reference and AVX2 / AVX-512 versions chosen at run time. The SIMD functions are
// compiled with target attributes, so the library itself needs no -mavx flags and runs on any x86-64.
#include "mmsb/llm/kernels.hpp"

#include <immintrin.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
#include <string>
#include <vector>

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

// The Q8 activation format of one vector (kernels.hpp): q[cols], then d[cols / 32], then sum[cols / 32].
struct Q8View {
  const std::int8_t* q;
  const float* d;
  const std::int32_t* sum;
};
inline Q8View q8_view(const std::byte* act, std::size_t cols) noexcept {
  return {reinterpret_cast<const std::int8_t*>(act), reinterpret_cast<const float*>(act + cols),
          reinterpret_cast<const std::int32_t*>(act + cols + cols / kBlock * sizeof(float))};
}

// Rounds one vector to the Q8 format (as quantize_q8_avx2 does, byte for byte, and as llama.cpp's AVX2 backend
// rounds activations to Q8_0: the same q and the same half-precision scale).
void quantize_q8_scalar(const float* x, std::size_t cols, std::byte* out) {
  auto* q = reinterpret_cast<std::int8_t*>(out);
  auto* d = reinterpret_cast<float*>(out + cols);
  auto* sum = reinterpret_cast<std::int32_t*>(out + cols + cols / kBlock * sizeof(float));
  for (std::size_t b = 0; b < cols / kBlock; ++b) {
    float amax = 0;
    for (std::size_t j = 0; j < kBlock; ++j) amax = std::max(amax, std::fabs(x[b * kBlock + j]));
    const float scale = amax / 127.0f;
    const float id = scale != 0.0f ? 1.0f / scale : 0.0f;
    d[b] = fp16_to_fp32(fp32_to_fp16(scale));
    std::int32_t s = 0;
    for (std::size_t j = 0; j < kBlock; ++j) {
      // |x| / (max|x| / 127) rounds to at most 127: the nearest integer cannot pass it.
      q[b * kBlock + j] = static_cast<std::int8_t>(std::nearbyint(x[b * kBlock + j] * id));
      s += q[b * kBlock + j];
    }
    sum[b] = s;
  }
}
void quantize_q8k_activations_scalar(const float* x, std::size_t cols, std::byte* out) {
  quantize_row_q8k(x, reinterpret_cast<BlockQ8K*>(out), cols, SimdLevel::Scalar);
}
void copy_activations(const float* x, std::size_t cols, std::byte* out) { std::memcpy(out, x, cols * sizeof(float)); }
void half_activations_scalar(const float* x, std::size_t cols, std::byte* out) {
  for (std::size_t i = 0; i < cols; ++i) {
    const std::uint16_t h = fp32_to_fp16(x[i]);
    std::memcpy(out + 2 * i, &h, 2);
  }
}

// One row against one prepared vector: the reference arithmetic of each type. For the block types, each block's
// integer sum times both block scales, plus the weight block's offset times the activation block's value sum
// (Q4_1, Q5_1).
using RowDot = float (*)(const std::uint8_t* row, const std::byte* act, std::size_t cols);

float row_dot_f32(const std::uint8_t* row, const std::byte* act, std::size_t cols) {
  const auto* r = reinterpret_cast<const float*>(row);
  const auto* x = reinterpret_cast<const float*>(act);
  float sum = 0;
  for (std::size_t i = 0; i < cols; ++i) sum += r[i] * x[i];
  return sum;
}
float row_dot_f16(const std::uint8_t* row, const std::byte* act, std::size_t cols) {
  const auto* x = reinterpret_cast<const std::uint8_t*>(act);
  float sum = 0;
  for (std::size_t i = 0; i < cols; ++i) sum += load_half(row + 2 * i) * load_half(x + 2 * i);
  return sum;
}
template <void (*Decode)(const std::uint8_t*, DecodedBlock&), std::size_t BlockBytes>
float row_dot_q8(const std::uint8_t* row, const std::byte* act, std::size_t cols) {
  const Q8View x = q8_view(act, cols);
  float sum = 0;
  DecodedBlock blk;
  for (std::size_t b = 0; b < cols / kBlock; ++b, row += BlockBytes) {
    Decode(row, blk);
    std::int32_t isum = 0;
    for (std::size_t j = 0; j < kBlock; ++j) isum += blk.q[j] * x.q[b * kBlock + j];
    sum += static_cast<float>(isum) * (blk.d * x.d[b]) + blk.m * (x.d[b] * static_cast<float>(x.sum[b]));
  }
  return sum;
}

// A product as one row dot per (row, vector).
template <RowDot Dot>
void matmul_rows(const std::byte* w, std::size_t row_stride, std::size_t rows, const std::byte* act,
                 std::size_t act_stride, std::size_t n, std::size_t cols, float* out, std::size_t out_stride) {
  for (std::size_t t = 0; t < n; ++t) {
    for (std::size_t r = 0; r < rows; ++r) {
      const auto* row = reinterpret_cast<const std::uint8_t*>(w + r * row_stride);
      out[t * out_stride + r] = Dot(row, act + t * act_stride, cols);
    }
  }
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
void attention_scores_causal_scalar(const float* q, std::size_t q_stride, std::size_t m, const float* keys,
                                    std::size_t stride, std::size_t first, std::size_t head, float scale, float* scores,
                                    std::size_t scores_stride) {
  for (std::size_t j = 0; j < m; ++j) {
    attention_scores_scalar(q + j * q_stride, keys, stride, first + j + 1, head, scale, scores + j * scores_stride);
  }
}
void attention_scores_heads_scalar(const float* q, std::size_t q_stride, std::size_t m, const float* keys,
                                   std::size_t stride, std::size_t n, std::size_t head, float scale, float* scores,
                                   std::size_t scores_stride) {
  for (std::size_t j = 0; j < m; ++j) {
    attention_scores_scalar(q + j * q_stride, keys, stride, n, head, scale, scores + j * scores_stride);
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

void attention_mix_heads_scalar(const float* weights, std::size_t weights_stride, const float* values,
                                std::size_t stride, std::size_t n, std::size_t head, std::size_t heads,
                                std::size_t group, float* out) {
  for (std::size_t h = 0; h < heads; ++h) {
    attention_mix_scalar(weights + h * weights_stride, values + (h / group) * head, stride, n, head, out + h * head);
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

void swiglu_scalar(float* gate, const float* up, std::size_t n) {
  for (std::size_t i = 0; i < n; ++i) {
    float v = gate[i];
    v *= 1.0f / (1.0f + std::exp(-v));  // SiLU
    gate[i] = v * up[i];
  }
}

// --- AVX2 ------------------------------------------------------------------------------------------------------

#define MMSB_AVX2 __attribute__((target("avx2,fma,f16c")))
// Without "fma": GCC would fuse a multiply and an add into one FMA, which rounds once instead of twice; the
// attention kernels must round exactly as the scalar loop does.
#define MMSB_AVX2_NO_FMA __attribute__((target("avx2")))

MMSB_AVX2 inline float hsum256(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// Q8 rounding of one vector, 8 lanes at a time: the same float products and rounding (to nearest, ties to even)
// as quantize_q8_scalar, so the bytes are identical.
MMSB_AVX2 void quantize_q8_avx2(const float* x, std::size_t cols, std::byte* out) {
  auto* q = reinterpret_cast<std::int8_t*>(out);
  auto* d = reinterpret_cast<float*>(out + cols);
  auto* sum = reinterpret_cast<std::int32_t*>(out + cols + cols / kBlock * sizeof(float));
  const __m256 magnitude = _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFFFFFF));
  const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);  // undoes the lane interleaving of the packs
  for (std::size_t b = 0; b < cols / kBlock; ++b, x += kBlock) {
    __m256 v[4];
    __m256 vmax = _mm256_setzero_ps();
    for (int k = 0; k < 4; ++k) {
      v[k] = _mm256_loadu_ps(x + 8 * k);
      vmax = _mm256_max_ps(vmax, _mm256_and_ps(v[k], magnitude));
    }
    __m128 m = _mm_max_ps(_mm256_castps256_ps128(vmax), _mm256_extractf128_ps(vmax, 1));
    m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    m = _mm_max_ss(m, _mm_movehdup_ps(m));
    const float scale = _mm_cvtss_f32(m) / 127.0f;
    d[b] = _cvtsh_ss(_cvtss_sh(scale, _MM_FROUND_TO_NEAREST_INT));
    const __m256 id = _mm256_set1_ps(scale != 0.0f ? 1.0f / scale : 0.0f);
    __m256i i32[4];
    for (int k = 0; k < 4; ++k) {
      i32[k] =
          _mm256_cvtps_epi32(_mm256_round_ps(_mm256_mul_ps(v[k], id), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
    }
    const __m256i bytes = _mm256_packs_epi16(_mm256_packs_epi32(i32[0], i32[1]), _mm256_packs_epi32(i32[2], i32[3]));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(q + b * kBlock), _mm256_permutevar8x32_epi32(bytes, order));
    __m256i s = _mm256_add_epi32(_mm256_add_epi32(i32[0], i32[1]), _mm256_add_epi32(i32[2], i32[3]));
    __m128i s4 = _mm_add_epi32(_mm256_castsi256_si128(s), _mm256_extracti128_si256(s, 1));
    s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0x4E));
    s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0xB1));
    sum[b] = _mm_cvtsi128_si32(s4);
  }
}
MMSB_AVX2 void half_activations_avx2(const float* x, std::size_t cols, std::byte* out) {
  std::size_t i = 0;
  for (; i + 8 <= cols; i += 8) {
    _mm_storeu_si128(reinterpret_cast<__m128i*>(out + 2 * i),
                     _mm256_cvtps_ph(_mm256_loadu_ps(x + i), _MM_FROUND_TO_NEAREST_INT));
  }
  half_activations_scalar(x + i, cols - i, out + 2 * i);
}
void quantize_q8k_activations_avx2(const float* x, std::size_t cols, std::byte* out) {
  quantize_row_q8k(x, reinterpret_cast<BlockQ8K*>(out), cols, SimdLevel::Avx2);
}

#define MMSB_UNROLL _Pragma("GCC unroll 16")

// The 8 x 8 floats at base (rows `stride` apart) transposed: col[j] holds element j of the eight rows.
MMSB_AVX2_NO_FMA inline void transpose8x8(const float* base, std::size_t stride, __m256 (&col)[8]) {
  __m256 r0 = _mm256_loadu_ps(base), r1 = _mm256_loadu_ps(base + stride), r2 = _mm256_loadu_ps(base + 2 * stride),
         r3 = _mm256_loadu_ps(base + 3 * stride), r4 = _mm256_loadu_ps(base + 4 * stride),
         r5 = _mm256_loadu_ps(base + 5 * stride), r6 = _mm256_loadu_ps(base + 6 * stride),
         r7 = _mm256_loadu_ps(base + 7 * stride);
  __m256 t0 = _mm256_unpacklo_ps(r0, r1), t1 = _mm256_unpackhi_ps(r0, r1);
  __m256 t2 = _mm256_unpacklo_ps(r2, r3), t3 = _mm256_unpackhi_ps(r2, r3);
  __m256 t4 = _mm256_unpacklo_ps(r4, r5), t5 = _mm256_unpackhi_ps(r4, r5);
  __m256 t6 = _mm256_unpacklo_ps(r6, r7), t7 = _mm256_unpackhi_ps(r6, r7);
  __m256 u0 = _mm256_shuffle_ps(t0, t2, 0x44), u1 = _mm256_shuffle_ps(t0, t2, 0xEE);
  __m256 u2 = _mm256_shuffle_ps(t1, t3, 0x44), u3 = _mm256_shuffle_ps(t1, t3, 0xEE);
  __m256 u4 = _mm256_shuffle_ps(t4, t6, 0x44), u5 = _mm256_shuffle_ps(t4, t6, 0xEE);
  __m256 u6 = _mm256_shuffle_ps(t5, t7, 0x44), u7 = _mm256_shuffle_ps(t5, t7, 0xEE);
  col[0] = _mm256_permute2f128_ps(u0, u4, 0x20);
  col[1] = _mm256_permute2f128_ps(u1, u5, 0x20);
  col[2] = _mm256_permute2f128_ps(u2, u6, 0x20);
  col[3] = _mm256_permute2f128_ps(u3, u7, 0x20);
  col[4] = _mm256_permute2f128_ps(u0, u4, 0x31);
  col[5] = _mm256_permute2f128_ps(u1, u5, 0x31);
  col[6] = _mm256_permute2f128_ps(u2, u6, 0x31);
  col[7] = _mm256_permute2f128_ps(u3, u7, 0x31);
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
      __m256 col[8];
      transpose8x8(keys + t * stride + c, stride, col);
      for (int j = 0; j < 8; ++j) s = _mm256_add_ps(s, _mm256_mul_ps(_mm256_set1_ps(q[c + j]), col[j]));
    }
    _mm256_storeu_ps(scores + t, _mm256_div_ps(s, vscale));
  }
  if (t < n) attention_scores_scalar(q, keys + t * stride, stride, n - t, head, scale, scores + t);
}

// J queries against eight keys at a time: each 8 x 8 block of keys is transposed once for all J (the shuffles are
// most of a score's cost at small heads), lane k of query j's chain being key k's score in the scalar order.
template <int J>
MMSB_AVX2_NO_FMA void scores_heads(const float* q, std::size_t q_stride, const float* keys, std::size_t stride,
                                   std::size_t n, std::size_t head, float scale, float* scores,
                                   std::size_t scores_stride) {
  const __m256 vscale = _mm256_set1_ps(scale);
  std::size_t t = 0;
  for (; t + 8 <= n; t += 8) {
    __m256 s[J];
    MMSB_UNROLL
    for (int j = 0; j < J; ++j) s[j] = _mm256_setzero_ps();
    for (std::size_t c = 0; c < head; c += 8) {
      __m256 col[8];
      transpose8x8(keys + t * stride + c, stride, col);
      MMSB_UNROLL
      for (int i = 0; i < 8; ++i) {
        MMSB_UNROLL
        for (int j = 0; j < J; ++j) {
          s[j] = _mm256_add_ps(s[j], _mm256_mul_ps(_mm256_set1_ps(q[j * q_stride + c + i]), col[i]));
        }
      }
    }
    MMSB_UNROLL
    for (int j = 0; j < J; ++j) _mm256_storeu_ps(scores + j * scores_stride + t, _mm256_div_ps(s[j], vscale));
  }
  if (t == n) return;
  for (int j = 0; j < J; ++j) {
    attention_scores_scalar(q + j * q_stride, keys + t * stride, stride, n - t, head, scale,
                            scores + j * scores_stride + t);
  }
}

MMSB_AVX2_NO_FMA void attention_scores_heads_avx2(const float* q, std::size_t q_stride, std::size_t m,
                                                  const float* keys, std::size_t stride, std::size_t n,
                                                  std::size_t head, float scale, float* scores,
                                                  std::size_t scores_stride) {
  if (head % 8 != 0) {
    return attention_scores_heads_scalar(q, q_stride, m, keys, stride, n, head, scale, scores, scores_stride);
  }
  using Group = void (*)(const float*, std::size_t, const float*, std::size_t, std::size_t, std::size_t, float, float*,
                         std::size_t);
  static constexpr Group groups[] = {scores_heads<1>, scores_heads<2>, scores_heads<3>, scores_heads<4>};
  for (std::size_t j = 0; j < m; j += 4) {
    groups[std::min<std::size_t>(4, m - j) - 1](q + j * q_stride, q_stride, keys, stride, n, head, scale,
                                                scores + j * scores_stride, scores_stride);
  }
}

// kt[i * padded + t] = keys[t * stride + i] for t < count and i < head (a multiple of 8); 0 for count <= t < padded.
MMSB_AVX2_NO_FMA void transpose_keys(const float* keys, std::size_t stride, std::size_t count, std::size_t head,
                                     std::size_t padded, float* kt) {
  std::size_t t = 0;
  for (; t + 8 <= count; t += 8) {
    for (std::size_t c = 0; c < head; c += 8) {
      __m256 col[8];
      transpose8x8(keys + t * stride + c, stride, col);
      MMSB_UNROLL
      for (std::size_t j = 0; j < 8; ++j) _mm256_storeu_ps(kt + (c + j) * padded + t, col[j]);
    }
  }
  for (; t < padded; ++t) {
    for (std::size_t i = 0; i < head; ++i) kt[i * padded + t] = t < count ? keys[t * stride + i] : 0.0f;
  }
}

// Stores the lanes of v below `count - base` at row + base (the scores of one query's keys base .. base + 7).
MMSB_AVX2_NO_FMA inline void store_scores(__m256 v, float* row, std::size_t base, std::size_t count) {
  if (base + 8 <= count) return _mm256_storeu_ps(row + base, v);
  if (base >= count) return;
  const __m256i lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  const __m256i mask = _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(count - base)), lanes);
  _mm256_maskstore_ps(row + base, mask, v);
}

// J queries (q_stride apart) against the transposed keys kt, 16 keys per step: each of the J x 2 accumulators
// is a chain of its own (one add per element, the scalar order), so the adds overlap instead of waiting on each
// other, and each key chunk loaded serves J queries. Query jj sees `count + jj` keys.
template <int J>
MMSB_AVX2_NO_FMA void causal_scores_group(const float* q, std::size_t q_stride, const float* kt, std::size_t padded,
                                          std::size_t head, float scale, std::size_t count, float* scores,
                                          std::size_t scores_stride) {
  const __m256 vscale = _mm256_set1_ps(scale);
  for (std::size_t t = 0; t < count + J - 1; t += 16) {
    __m256 acc[J][2];
    MMSB_UNROLL
    for (int j = 0; j < J; ++j) acc[j][0] = acc[j][1] = _mm256_setzero_ps();
    const float* col = kt + t;
    for (std::size_t i = 0; i < head; ++i, col += padded) {
      const __m256 k0 = _mm256_loadu_ps(col), k1 = _mm256_loadu_ps(col + 8);
      MMSB_UNROLL
      for (int j = 0; j < J; ++j) {
        const __m256 qv = _mm256_broadcast_ss(q + j * q_stride + i);
        acc[j][0] = _mm256_add_ps(acc[j][0], _mm256_mul_ps(qv, k0));
        acc[j][1] = _mm256_add_ps(acc[j][1], _mm256_mul_ps(qv, k1));
      }
    }
    MMSB_UNROLL
    for (int j = 0; j < J; ++j) {
      store_scores(_mm256_div_ps(acc[j][0], vscale), scores + j * scores_stride, t, count + j);
      store_scores(_mm256_div_ps(acc[j][1], vscale), scores + j * scores_stride, t + 8, count + j);
    }
  }
}

// The keys are transposed once (per call, into a buffer of this thread) so that a step reads one element of eight
// keys as one vector; then queries four at a time. One query (decoding) transposes as it goes instead.
MMSB_AVX2_NO_FMA void attention_scores_causal_avx2(const float* q, std::size_t q_stride, std::size_t m,
                                                   const float* keys, std::size_t stride, std::size_t first,
                                                   std::size_t head, float scale, float* scores,
                                                   std::size_t scores_stride) {
  if (head % 8 != 0 || m == 0) {
    return attention_scores_causal_scalar(q, q_stride, m, keys, stride, first, head, scale, scores, scores_stride);
  }
  if (m == 1) return attention_scores_avx2(q, keys, stride, first + 1, head, scale, scores);  // nothing to share
  const std::size_t count = first + m, padded = (count + 15) / 16 * 16;
  thread_local std::vector<float> kt;  // grows to the longest context once
  if (kt.size() < head * padded) kt.resize(head * padded);
  transpose_keys(keys, stride, count, head, padded, kt.data());
  using Group = void (*)(const float*, std::size_t, const float*, std::size_t, std::size_t, float, std::size_t, float*,
                         std::size_t);
  static constexpr Group groups[] = {causal_scores_group<1>, causal_scores_group<2>, causal_scores_group<3>,
                                     causal_scores_group<4>};
  for (std::size_t j = 0; j < m; j += 4) {
    groups[std::min<std::size_t>(4, m - j) - 1](q + j * q_stride, q_stride, kt.data(), padded, head, scale,
                                                first + j + 1, scores + j * scores_stride, scores_stride);
  }
}

// C chunks of 8 columns of the mix, each its own accumulator: the value rows are taken in order (the scalar order)
// and the C chains of adds overlap.
template <int C>
MMSB_AVX2_NO_FMA void mix_columns(const float* weights, const float* values, std::size_t stride, std::size_t n,
                                  float* out) {
  __m256 acc[C];
  MMSB_UNROLL
  for (int c = 0; c < C; ++c) acc[c] = _mm256_setzero_ps();
  for (std::size_t t = 0; t < n; ++t) {
    const __m256 w = _mm256_broadcast_ss(weights + t);
    const float* v = values + t * stride;
    MMSB_UNROLL
    for (int c = 0; c < C; ++c) acc[c] = _mm256_add_ps(acc[c], _mm256_mul_ps(w, _mm256_loadu_ps(v + 8 * c)));
  }
  MMSB_UNROLL
  for (int c = 0; c < C; ++c) _mm256_storeu_ps(out + 8 * c, acc[c]);
}

MMSB_AVX2_NO_FMA void attention_mix_avx2(const float* weights, const float* values, std::size_t stride, std::size_t n,
                                         std::size_t head, float* out) {
  if (head % 8 != 0) return attention_mix_scalar(weights, values, stride, n, head, out);
  using Columns = void (*)(const float*, const float*, std::size_t, std::size_t, float*);
  static constexpr Columns columns[] = {mix_columns<1>, mix_columns<2>, mix_columns<3>, mix_columns<4>,
                                        mix_columns<5>, mix_columns<6>, mix_columns<7>, mix_columns<8>};
  for (std::size_t c = 0; c < head; c += 64) {
    columns[std::min<std::size_t>(64, head - c) / 8 - 1](weights, values + c, stride, n, out + c);
  }
}

// H heads of C chunks of 8 columns each at once (H * C <= 8 accumulators): every chain adds the rows in order, as
// mix_columns does for one head, and the heads' chains overlap.
template <int C, int H>
MMSB_AVX2_NO_FMA void mix_heads(const float* weights, std::size_t weights_stride, const float* values,
                                std::size_t stride, std::size_t n, std::size_t head, std::size_t group, float* out) {
  __m256 acc[H][C];
  MMSB_UNROLL
  for (int h = 0; h < H; ++h) {
    MMSB_UNROLL
    for (int c = 0; c < C; ++c) acc[h][c] = _mm256_setzero_ps();
  }
  for (std::size_t t = 0; t < n; ++t) {
    const float* row = values + t * stride;
    MMSB_UNROLL
    for (int h = 0; h < H; ++h) {
      const __m256 w = _mm256_broadcast_ss(weights + h * weights_stride + t);
      const float* v = row + (static_cast<std::size_t>(h) / group) * head;
      MMSB_UNROLL
      for (int c = 0; c < C; ++c) acc[h][c] = _mm256_add_ps(acc[h][c], _mm256_mul_ps(w, _mm256_loadu_ps(v + 8 * c)));
    }
  }
  MMSB_UNROLL
  for (int h = 0; h < H; ++h) {
    MMSB_UNROLL
    for (int c = 0; c < C; ++c) _mm256_storeu_ps(out + h * head + 8 * c, acc[h][c]);
  }
}

// Heads [first, last) one at a time (query head h reads key/value head h / group's columns).
MMSB_AVX2_NO_FMA void mix_each_head(const float* weights, std::size_t weights_stride, const float* values,
                                    std::size_t stride, std::size_t n, std::size_t head, std::size_t first,
                                    std::size_t last, std::size_t group, float* out) {
  for (std::size_t h = first; h < last; ++h) {
    attention_mix_avx2(weights + h * weights_stride, values + (h / group) * head, stride, n, head, out + h * head);
  }
}

// Heads of 8 or 16 columns go up to 8 or 4 at a time; wider heads already have a chain per 8 columns.
MMSB_AVX2_NO_FMA void attention_mix_heads_avx2(const float* weights, std::size_t weights_stride, const float* values,
                                               std::size_t stride, std::size_t n, std::size_t head, std::size_t heads,
                                               std::size_t group, float* out) {
  using Heads =
      void (*)(const float*, std::size_t, const float*, std::size_t, std::size_t, std::size_t, std::size_t, float*);
  static constexpr Heads eights[] = {mix_heads<1, 1>, mix_heads<1, 2>, mix_heads<1, 3>, mix_heads<1, 4>,
                                     mix_heads<1, 5>, mix_heads<1, 6>, mix_heads<1, 7>, mix_heads<1, 8>};
  static constexpr Heads sixteens[] = {mix_heads<2, 1>, mix_heads<2, 2>, mix_heads<2, 3>, mix_heads<2, 4>};
  if (head != 8 && head != 16)
    return mix_each_head(weights, weights_stride, values, stride, n, head, 0, heads, group, out);
  const std::size_t at_once = head == 8 ? 8 : 4;
  for (std::size_t h = 0; h < heads; h += at_once) {
    // A batch starting inside a group reads the value columns of its first head's key/value head onwards.
    const std::size_t count = std::min(at_once, heads - h);
    const Heads run = head == 8 ? eights[count - 1] : sixteens[count - 1];
    if (h % group == 0) {
      run(weights + h * weights_stride, weights_stride, values + (h / group) * head, stride, n, head, group,
          out + h * head);
    } else {  // only when a batch size is not a multiple of the group: one head at a time keeps the mapping simple
      mix_each_head(weights, weights_stride, values, stride, n, head, h, h + count, group, out);
    }
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

// gate * sigmoid(gate) * up, 8 lanes at a time: e^-|v| through the polynomial above (no overflow for any v), then
// sigmoid(v) = 1 / (1 + e^-v) for v >= 0 and e^v / (1 + e^v) for v < 0.
MMSB_AVX2 void swiglu_avx2(float* gate, const float* up, std::size_t n) {
  const __m256 one = _mm256_set1_ps(1.0f), sign = _mm256_set1_ps(-0.0f);
  std::size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 v = _mm256_loadu_ps(gate + i);
    const __m256 e = exp_nonpositive_avx2(_mm256_or_ps(v, sign));  // e^-|v|
    const __m256 negative = _mm256_cmp_ps(v, _mm256_setzero_ps(), _CMP_LT_OQ);
    const __m256 sigmoid = _mm256_div_ps(_mm256_blendv_ps(one, e, negative), _mm256_add_ps(one, e));
    _mm256_storeu_ps(gate + i, _mm256_mul_ps(_mm256_mul_ps(v, sigmoid), _mm256_loadu_ps(up + i)));
  }
  swiglu_scalar(gate + i, up + i, n - i);
}

MMSB_AVX2 void softmax_avx2(float* x, std::size_t n) {
  std::size_t i = 0;
  __m256 vmax = _mm256_set1_ps(x[0]), vmax2 = vmax;
  // Two chains of maxima (a maximum is exact in any order): a decoding step's rows are short and start cold.
  for (; i + 16 <= n; i += 16) {
    vmax = _mm256_max_ps(vmax, _mm256_loadu_ps(x + i));
    vmax2 = _mm256_max_ps(vmax2, _mm256_loadu_ps(x + i + 8));
  }
  vmax = _mm256_max_ps(vmax, vmax2);
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

Kernels make_scalar() {
  Kernels k{};
  k.level = SimdLevel::Scalar;
  k.matmul[0] = matmul_rows<row_dot_f32>;
  k.matmul[1] = matmul_rows<row_dot_f16>;
  k.matmul[2] = matmul_rows<row_dot_q8<decode_q4_0, kQ4_0Bytes>>;
  k.matmul[3] = matmul_rows<row_dot_q8<decode_q4_1, kQ4_1Bytes>>;
  k.matmul[6] = matmul_rows<row_dot_q8<decode_q5_0, kQ5_0Bytes>>;
  k.matmul[7] = matmul_rows<row_dot_q8<decode_q5_1, kQ5_1Bytes>>;
  k.matmul[8] = matmul_rows<row_dot_q8<decode_q8_0, kQ8_0Bytes>>;
  k.quantize_activations[static_cast<int>(ActivationFormat::F32)] = copy_activations;
  k.quantize_activations[static_cast<int>(ActivationFormat::F16)] = half_activations_scalar;
  k.quantize_activations[static_cast<int>(ActivationFormat::Q8)] = quantize_q8_scalar;
  k.quantize_activations[static_cast<int>(ActivationFormat::Q8_K)] = quantize_q8k_activations_scalar;
  k.dequantize[0] = dequantize_f32;
  k.dequantize[1] = dequantize_f16;
  k.dequantize[2] = dequantize_blocks<decode_q4_0, kQ4_0Bytes>;
  k.dequantize[3] = dequantize_blocks<decode_q4_1, kQ4_1Bytes>;
  k.dequantize[6] = dequantize_blocks<decode_q5_0, kQ5_0Bytes>;
  k.dequantize[7] = dequantize_blocks<decode_q5_1, kQ5_1Bytes>;
  k.dequantize[8] = dequantize_blocks<decode_q8_0, kQ8_0Bytes>;
  k.attention_scores = attention_scores_scalar;
  k.attention_mix = attention_mix_scalar;
  k.attention_mix_heads = attention_mix_heads_scalar;
  k.attention_scores_heads = attention_scores_heads_scalar;
  k.attention_scores_causal = attention_scores_causal_scalar;
  k.softmax = softmax_scalar;
  k.swiglu = swiglu_scalar;
  add_super_block_kernels(k);
  return k;
}
Kernels make_avx2() {
  Kernels k = make_scalar();
  k.level = SimdLevel::Avx2;
  k.quantize_activations[static_cast<int>(ActivationFormat::F16)] = half_activations_avx2;
  k.quantize_activations[static_cast<int>(ActivationFormat::Q8)] = quantize_q8_avx2;
  k.quantize_activations[static_cast<int>(ActivationFormat::Q8_K)] = quantize_q8k_activations_avx2;
  k.attention_scores = attention_scores_avx2;
  k.attention_mix = attention_mix_avx2;
  k.attention_mix_heads = attention_mix_heads_avx2;
  k.attention_scores_heads = attention_scores_heads_avx2;
  k.attention_scores_causal = attention_scores_causal_avx2;
  k.softmax = softmax_avx2;
  k.swiglu = swiglu_avx2;
  add_super_block_kernels(k);
  add_avx2_matmul_kernels(k);
  return k;
}
// The AVX-512 level runs the AVX2 kernels (256-bit lanes) but for the F32 and F16 products, which sum 16 lanes and
// run batches in 512-bit tiles (the level also exists so that MMSB_SIMD and the diff code share one set of level
// names).
Kernels make_avx512() {
  Kernels k = make_avx2();
  k.level = SimdLevel::Avx512;
  add_avx512_matmul_kernels(k);
  return k;
}

}  // namespace

std::optional<std::string_view> tensor_type_name(std::uint32_t id) noexcept {
  switch (id) {
    case 0:
      return "F32";
    case 1:
      return "F16";
    case 2:
      return "Q4_0";
    case 3:
      return "Q4_1";
    case 6:
      return "Q5_0";
    case 7:
      return "Q5_1";
    case 8:
      return "Q8_0";
    case 12:
      return "Q4_K";
    case 13:
      return "Q5_K";
    case 14:
      return "Q6_K";
    case 15:
      return "Q8_K";
    case 34:
      return "TQ1_0";
    case 35:
      return "TQ2_0";
    default:
      return std::nullopt;
  }
}
bool is_supported_type(std::uint32_t id) noexcept { return tensor_type_name(id).has_value(); }

TypeTraits type_traits(TensorType type) noexcept {
  switch (type) {
    case TensorType::F32:
      return {1, 4};
    case TensorType::F16:
      return {1, 2};
    case TensorType::Q4_0:
      return {32, kQ4_0Bytes};
    case TensorType::Q4_1:
      return {32, kQ4_1Bytes};
    case TensorType::Q5_0:
      return {32, kQ5_0Bytes};
    case TensorType::Q5_1:
      return {32, kQ5_1Bytes};
    case TensorType::Q8_0:
      return {32, kQ8_0Bytes};
    case TensorType::Q4_K:
      return {256, kQ4_KBytes};
    case TensorType::Q5_K:
      return {256, kQ5_KBytes};
    case TensorType::Q6_K:
      return {256, kQ6_KBytes};
    case TensorType::Q8_K:
      return {256, kQ8_KBytes};
    case TensorType::TQ1_0:
      return {256, kTQ1_0Bytes};
    case TensorType::TQ2_0:
      return {256, kTQ2_0Bytes};
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
  if (abs < 0x38800000u) {                                                    // subnormal or zero half
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
    case SimdLevel::Scalar:
      return true;
    case SimdLevel::Avx2:
      return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
    case SimdLevel::Avx512:
      return cpu_supports(SimdLevel::Avx2) && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
             __builtin_cpu_supports("avx512vl");
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
    case SimdLevel::Scalar:
      return scalar;
    case SimdLevel::Avx2:
      return avx2;
    case SimdLevel::Avx512:
      return avx512;
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
ActivationFormat activation_format(TensorType weights) noexcept {
  if (weights == TensorType::F32) return ActivationFormat::F32;
  if (weights == TensorType::F16) return ActivationFormat::F16;
  return is_super_block_type(weights) ? ActivationFormat::Q8_K : ActivationFormat::Q8;
}

std::size_t activation_bytes(ActivationFormat format, std::size_t cols) noexcept {
  std::size_t bytes = 0;
  switch (format) {
    case ActivationFormat::F32:
      bytes = cols * sizeof(float);
      break;
    case ActivationFormat::F16:
      bytes = cols * sizeof(std::uint16_t);
      break;
    case ActivationFormat::Q8:
      bytes = cols + cols / kBlock * (sizeof(float) + sizeof(std::int32_t));
      break;
    case ActivationFormat::Q8_K:
      bytes = cols / kSuperBlock * sizeof(BlockQ8K);
      break;
  }
  return (bytes + 63) / 64 * 64;
}

PreparedActivations prepare_activations(const Kernels& k, TensorType weights, const float* x, std::size_t cols,
                                        std::size_t n, std::size_t x_stride, std::vector<std::byte>& storage) {
  const ActivationFormat format = activation_format(weights);
  if (format == ActivationFormat::F32) return {reinterpret_cast<const std::byte*>(x), x_stride * sizeof(float)};
  const std::size_t stride = activation_bytes(format, cols);
  if (storage.size() < n * stride) storage.resize(n * stride);
  for (std::size_t t = 0; t < n; ++t) {
    k.quantize_activations[static_cast<int>(format)](x + t * x_stride, cols, storage.data() + t * stride);
  }
  return {storage.data(), stride};
}

void matmul(const Kernels& k, TensorType type, const std::byte* matrix, std::size_t row_stride, const float* x,
            std::size_t cols, float* out, std::size_t rows) {
  thread_local std::vector<std::byte> storage;  // grows to the widest product once, then no allocation
  const PreparedActivations act = prepare_activations(k, type, x, cols, 1, cols, storage);
  k.matmul[static_cast<std::uint32_t>(type)](matrix, row_stride, rows, act.data, act.stride, 1, cols, out, rows);
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
      case TensorType::Q8_0:
        decode_q8_0(row, w);
        break;
      case TensorType::Q4_0:
        decode_q4_0(row, w);
        break;
      case TensorType::Q4_1:
        decode_q4_1(row, w);
        break;
      case TensorType::Q5_0:
        decode_q5_0(row, w);
        break;
      case TensorType::Q5_1:
        decode_q5_1(row, w);
        break;
      default:
        return 0;
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
