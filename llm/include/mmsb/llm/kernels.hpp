// mmsb/llm/kernels.hpp — tensor element types and the matrix-product kernels of the transformer.
//
// A weight matrix is stored row by row in one of the GGUF element types. Every product of the model is
// `out[t][r] = row r · x[t]` for a few activation vectors x[t] (one while decoding, a prompt's batch while
// prefilling). The activations are first prepared once per product in the encoding the weight type's kernel reads
// (ActivationFormat): kept in f32 for F32 weights, rounded to half precision for F16 weights, to blocks of 32 int8
// with a scale (Q8) for the 32-value block types and to Q8_K super-blocks for the 256-value types (kquants.hpp),
// as llama.cpp's CPU backend rounds them; the products of the block types are then integer dot products (AVX2
// `maddubs`) scaled per block.
//
//   const mmsb::llm::Kernels& k = mmsb::llm::kernels();           // the best level this CPU has
//   mmsb::llm::matmul(k, TensorType::Q8_0, matrix, row_stride, x, cols, out, rows);
//
// Kernels come in one table per instruction-set level. Within a level, each (row, vector) result is computed by
// the same operations in the same order whether the product covers one vector or many, all rows or a range of
// them: batched prefill, the thread split and one-token decoding agree bit for bit. Levels differ from each other
// by rounding only; the scalar table is the reference the tests compare the others against. MMSB_SIMD=
// scalar|avx2|avx512 caps the level chosen at startup (as for delta's diff).
//
// Thread-safety: the tables are immutable after first use; all functions are pure and may run concurrently.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "mmsb/delta.hpp"  // SimdLevel, active_simd_level(): the same levels and MMSB_SIMD cap as diff()

namespace mmsb::llm {

// GGUF (ggml) type ids. Values are part of the file format: never renumber.
enum class TensorType : std::uint32_t {
  F32 = 0,
  F16 = 1,
  Q4_0 = 2,
  Q4_1 = 3,
  Q5_0 = 6,
  Q5_1 = 7,
  Q8_0 = 8,
  Q4_K = 12,  // super-block types (256 values; kquants.hpp)
  Q5_K = 13,
  Q6_K = 14,
  Q8_K = 15,
  TQ1_0 = 34,
  TQ2_0 = 35,
};
inline constexpr int kTypeSlots = 36;  // table size: the largest supported id + 1

// Name ("Q4_0") of a type id, or std::nullopt when the id is not one of the supported types.
std::optional<std::string_view> tensor_type_name(std::uint32_t id) noexcept;
bool is_supported_type(std::uint32_t id) noexcept;

// Layout of a type: `block_elements` values stored in `block_bytes` bytes. Rows of a blocked type must hold a
// whole number of blocks (files keep such tensors in F16/F32 instead).
struct TypeTraits {
  std::uint32_t block_elements;
  std::uint32_t block_bytes;
};
TypeTraits type_traits(TensorType type) noexcept;
// Bytes of one row of `n` elements; 0 when `n` is not a multiple of the type's block or when the size does not
// fit 64 bits (`n` may come from a file: callers treat 0 as "no such row").
std::uint64_t row_bytes(TensorType type, std::uint64_t n) noexcept;

// IEEE half precision to single (exact; subnormals, infinities and NaN included).
float fp16_to_fp32(std::uint16_t h) noexcept;
std::uint16_t fp32_to_fp16(float f) noexcept;  // round to nearest even (for tests and quantizers)

// How a product's activations are encoded (activation_format() gives the one of each weight type):
//   F32   the floats themselves;
//   F16   the floats rounded to IEEE half precision (to nearest, ties to even);
//   Q8    per vector: int8 q[cols], then float d[cols / 32], then int32 sum[cols / 32] (the sum of the block's q):
//         value j = d[j / 32] * q[j]. Per block s = max|x| / 127, q = x * (1 / s) rounded to nearest (ties to even)
//         and d = s rounded to half precision: llama.cpp's Q8_0 rounding of activations exactly, so that quantized
//         products agree with its logits up to the order of float sums; cols must be a multiple of 32;
//   Q8_K  per vector: cols / 256 BlockQ8K (kquants.hpp).
enum class ActivationFormat : std::uint8_t { F32 = 0, F16 = 1, Q8 = 2, Q8_K = 3 };
inline constexpr int kActivationFormats = 4;
ActivationFormat activation_format(TensorType weights) noexcept;
// Bytes of one vector of `cols` activations in `format`, a multiple of 64 (the distance between prepared vectors).
std::size_t activation_bytes(ActivationFormat format, std::size_t cols) noexcept;

// Writes one vector of `cols` floats in a format (activation_bytes() bytes at `out`).
using QuantizeActivationsFn = void (*)(const float* x, std::size_t cols, std::byte* out);
// A product: for rows r < rows (row r at w + r * row_stride, `cols` values in the weight type) and vectors t < n
// (vector t at act + t * act_stride, in the type's activation format): out[t * out_stride + r] = row r · vector t.
using MatmulFn = void (*)(const std::byte* w, std::size_t row_stride, std::size_t rows, const std::byte* act,
                          std::size_t act_stride, std::size_t n, std::size_t cols, float* out, std::size_t out_stride);
// A super-block row against activations already rounded to Q8_K blocks (kquants.hpp).
struct BlockQ8K;
using DotQ8KFn = float (*)(const void* row, const BlockQ8K* x, std::size_t n);
// Writes the `n` values of a row as floats.
using DequantizeFn = void (*)(const void* row, float* out, std::size_t n);

// Attention over one head: scores[t] = (q · key_t) / scale for t < n, where key_t = keys + t * stride (head
// floats each); and out = sum over t of weights[t] * value_t (value_t = values + t * stride). Every level
// computes each score and each output element in the same order as the scalar loop (sequential over the head,
// resp. over t, without fused multiply-add), so all levels give bit-identical results.
using AttentionScoresFn = void (*)(const float* q, const float* keys, std::size_t stride, std::size_t n,
                                   std::size_t head, float scale, float* scores);
using AttentionMixFn = void (*)(const float* weights, const float* values, std::size_t stride, std::size_t n,
                                std::size_t head, float* out);
// The scores of m query heads (head floats at q + j * q_stride) against the same n keys (a decoding step's heads
// that share a key/value head), into scores + j * scores_stride: each the bits AttentionScoresFn gives it, the keys
// read (and rearranged) once for all m.
using AttentionScoresHeadsFn = void (*)(const float* q, std::size_t q_stride, std::size_t m, const float* keys,
                                        std::size_t stride, std::size_t n, std::size_t head, float scale, float* scores,
                                        std::size_t scores_stride);
// The mixes of `heads` query heads over the same n rows (a decoding step's heads): head h weighs the rows by
// weights + h * weights_stride, reads its value columns at values + (h / group) * head (heads sharing a key/value
// head: group of them) and writes out + h * head. Each head's output is the bits AttentionMixFn gives it; small
// heads (one chain of adds per 8 columns) are mixed side by side, so that their chains overlap.
using AttentionMixHeadsFn = void (*)(const float* weights, std::size_t weights_stride, const float* values,
                                     std::size_t stride, std::size_t n, std::size_t head, std::size_t heads,
                                     std::size_t group, float* out);
// The scores of m consecutive positions of one head at once (a prompt batch), causal: query j (head floats at
// q + j * q_stride) against keys 0 .. first + j (first + j + 1 keys), into scores + j * scores_stride. Each score
// is the bits AttentionScoresFn gives it; nothing past a query's last key is written.
using AttentionScoresCausalFn = void (*)(const float* q, std::size_t q_stride, std::size_t m, const float* keys,
                                         std::size_t stride, std::size_t first, std::size_t head, float scale,
                                         float* scores, std::size_t scores_stride);

// In-place softmax of n floats. The scalar reference uses libm's expf and sums in order (as llama2.c does); the
// SIMD levels use a polynomial exp and lane-wise sums, so they differ from it by rounding only (a few ulp).
using SoftmaxFn = void (*)(float* x, std::size_t n);

// The SwiGLU of the feed-forward, in place: gate[i] = silu(gate[i]) * up[i], silu(v) = v / (1 + e^-v). The scalar
// reference uses libm's expf (as llama2.c does); the SIMD levels a polynomial exp (a few ulp apart).
using SwigluFn = void (*)(float* gate, const float* up, std::size_t n);

struct Kernels {
  SimdLevel level;
  MatmulFn matmul[kTypeSlots];                                     // nullptr for unused ids
  QuantizeActivationsFn quantize_activations[kActivationFormats];  // F32's entry copies
  DequantizeFn dequantize[kTypeSlots];
  DotQ8KFn dot_q8k[kTypeSlots];  // the super-block types only: one row against Q8_K activations
  AttentionScoresFn attention_scores;
  AttentionScoresHeadsFn attention_scores_heads;
  AttentionMixFn attention_mix;
  AttentionMixHeadsFn attention_mix_heads;
  AttentionScoresCausalFn attention_scores_causal;
  SoftmaxFn softmax;
  SwigluFn swiglu;
};

// The table of one level; throws mmsb::Error(Unsupported) when this CPU lacks it.
const Kernels& kernels_for(SimdLevel level);
bool cpu_supports(SimdLevel level) noexcept;
// mmsb::active_simd_level() (the best level, capped by MMSB_SIMD), lowered while this CPU lacks a feature the
// kernels of that level need (FMA, F16C); chosen once.
const Kernels& kernels();

// Activations prepared for the products of one weight type: `n` vectors, `stride` bytes apart. For F32 weights
// they are the input floats themselves (no copy); otherwise they live in `storage`.
struct PreparedActivations {
  const std::byte* data;
  std::size_t stride;
};
// Prepares n vectors of `cols` floats, `x_stride` floats apart, for products with `weights`-typed rows.
PreparedActivations prepare_activations(const Kernels& k, TensorType weights, const float* x, std::size_t cols,
                                        std::size_t n, std::size_t x_stride, std::vector<std::byte>& storage);

// out[r] = row r of `matrix` · x for r in [0, rows); rows are `row_stride` bytes apart. Prepares x (in a
// per-thread buffer) and runs the level's kernel: the single-vector product, for tools and tests.
void matmul(const Kernels& k, TensorType type, const std::byte* matrix, std::size_t row_stride, const float* x,
            std::size_t cols, float* out, std::size_t rows);

// As matmul(), but with the activations rounded the way llama.cpp's CPU backend rounds them before a product:
// to F16 for F16 weights, to blocks of 32 int8 with a half-precision scale for the block types (plus the block's
// scaled sum for Q4_1 / Q5_1), with integer block sums. A comparison mode for tests against llama.cpp's logits
// (scalar, not a hot path); `scratch` is reused between calls.
void matmul_llamacpp_rounding(const Kernels& k, TensorType type, const std::byte* matrix, std::size_t row_stride,
                              const float* x, std::size_t cols, float* out, std::size_t rows,
                              std::vector<float>& scratch);

}  // namespace mmsb::llm
