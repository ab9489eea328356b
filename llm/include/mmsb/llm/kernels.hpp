// mmsb/llm/kernels.hpp — tensor element types and the dot-product kernels of the transformer.
//
// A weight matrix is stored row by row in one of the GGUF element types; activations are always f32. Every
// matrix-vector product in the model reduces to `dot(row, x, n)`: one row of `n` elements (in the row's own
// encoding) against `n` floats. Kernels come in one table per instruction-set level, all computing the same sums
// (in different orders, so results differ by rounding only):
//
//   const mmsb::llm::Kernels& k = mmsb::llm::kernels();           // the best level this CPU has
//   float s = k.dot[static_cast<int>(TensorType::Q8_0)](row, x.data(), 64);
//
// The scalar table is the reference the tests compare every other level against. MMSB_SIMD=scalar|avx2|avx512
// caps the level chosen at startup (as for delta's diff).
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

using DotFn = float (*)(const void* row, const float* x, std::size_t n);
// One row against four activation vectors (x + j * stride, j < 4): out[j] = dot(row, x + j * stride, n), each with
// exactly the operations of the same level's DotFn (bit-identical), the row loaded once for the four.
using Dot4Fn = void (*)(const void* row, const float* x, std::size_t stride, std::size_t n, float* out);
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

// In-place softmax of n floats. The scalar reference uses libm's expf and sums in order (as llama2.c does); the
// SIMD levels use a polynomial exp and lane-wise sums, so they differ from it by rounding only (a few ulp).
using SoftmaxFn = void (*)(float* x, std::size_t n);

struct Kernels {
  SimdLevel level;
  DotFn dot[kTypeSlots];              // nullptr for unused ids
  DequantizeFn dequantize[kTypeSlots];
  DotQ8KFn dot_q8k[kTypeSlots];       // the super-block types only
  Dot4Fn dot4[kTypeSlots];            // batched prefill; nullptr where the level has none (dot is used instead)
  AttentionScoresFn attention_scores;
  AttentionMixFn attention_mix;
  SoftmaxFn softmax;
};

// The table of one level; throws mmsb::Error(Unsupported) when this CPU lacks it.
const Kernels& kernels_for(SimdLevel level);
bool cpu_supports(SimdLevel level) noexcept;
// mmsb::active_simd_level() (the best level, capped by MMSB_SIMD), lowered while this CPU lacks a feature the
// kernels of that level need (FMA, F16C); chosen once.
const Kernels& kernels();

// out[r] = dot(row r of `matrix`, x) for r in [0, rows); rows are `row_stride` bytes apart.
void matmul(const Kernels& k, TensorType type, const std::byte* matrix, std::size_t row_stride, const float* x,
            std::size_t cols, float* out, std::size_t rows) noexcept;

// As matmul(), but with the activations rounded the way llama.cpp's CPU backend rounds them before a product:
// to F16 for F16 weights, to blocks of 32 int8 with a half-precision scale for the block types (plus the block's
// scaled sum for Q4_1 / Q5_1), with integer block sums. A comparison mode for tests against llama.cpp's logits
// (scalar, not a hot path); `scratch` is reused between calls.
void matmul_llamacpp_rounding(const Kernels& k, TensorType type, const std::byte* matrix, std::size_t row_stride,
                              const float* x, std::size_t cols, float* out, std::size_t rows,
                              std::vector<float>& scratch);

}  // namespace mmsb::llm
