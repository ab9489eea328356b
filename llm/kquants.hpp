// llm/kquants.hpp — the super-block types: K-quants (Q4_K, Q5_K, Q6_K, and Q8_K for activations)
// and the ternary types TQ1_0 / TQ2_0 (BitNet b1.58 style), 256 values per block.
//
// A product of a super-block row with f32 activations first rounds the activations to Q8_K (256 int8 with one
// f32 scale and the sums of each 16 values), as llama.cpp does, then sums integer products block by block:
//
//   std::vector<mmsb::llm::BlockQ8K> xq(n / 256);
//   mmsb::llm::quantize_row_q8k(x, xq.data(), n);
//   float s = mmsb::llm::kernels().dot_q8k[static_cast<int>(TensorType::Q4_K)](row, xq.data(), n);
//
// matmul() (kernels.hpp) prepares the activations once per product (ActivationFormat::Q8_K), not once per row.
// The kernels live in the tables of kernels.hpp (dot_q8k, matmul, dequantize); the scalar level is the reference,
// the AVX2 level uses integer multiply-adds on 32 bytes at a time (and multi-row tiles for Q4_K, Q5_K and Q6_K,
// in matmul_avx2.cpp).
//
// Thread-safety: all functions are pure.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>

#include "mmsb/llm/kernels.hpp"

namespace mmsb::llm {

inline constexpr std::size_t kSuperBlock = 256;

// Block sizes in bytes (the file format).
inline constexpr std::size_t kQ4_KBytes = 144;  // d, dmin (halves), scales[12] (6-bit scale/min pairs), qs[128]
inline constexpr std::size_t kQ5_KBytes = 176;  // d, dmin, scales[12], qh[32] (fifth bits), qs[128]
inline constexpr std::size_t kQ6_KBytes = 210;  // ql[128] (low 4 bits), qh[64] (high 2 bits), int8 scales[16], d
inline constexpr std::size_t kQ8_KBytes = 292;  // f32 d, int8 qs[256], int16 bsums[16]
inline constexpr std::size_t kTQ1_0Bytes = 54;  // qs[48] (5 trits per byte), qh[4] (4 trits per byte), d
inline constexpr std::size_t kTQ2_0Bytes = 66;  // qs[64] (4 two-bit values per byte), d

// Q8_K: value i = d * qs[i]; bsums[j] = sum of qs[16j .. 16j+15].
struct BlockQ8K {
  float d;
  std::int8_t qs[kSuperBlock];
  std::int16_t bsums[kSuperBlock / 16];
};
static_assert(sizeof(BlockQ8K) == kQ8_KBytes, "Q8_K block layout");

// True for the 256-value types (Q4_K, Q5_K, Q6_K, Q8_K, TQ1_0, TQ2_0).
bool is_super_block_type(TensorType type) noexcept;

// Rounds `n` floats (a multiple of 256) to n / 256 Q8_K blocks: d = max|x| / 127, q = round(x / d) (to nearest,
// ties to even). `level` Avx2 or Avx512 uses AVX2 (the caller checks the CPU has it, as kernels_for() does); every
// level writes the same bytes.
void quantize_row_q8k(const float* x, BlockQ8K* out, std::size_t n, SimdLevel level = SimdLevel::Scalar) noexcept;

// Fills the super-block entries (dot_q8k, matmul, dequantize) of a kernel table for its level (the AVX2 functions
// at the AVX2 and AVX-512 levels). Called by kernels.cpp when it builds the tables.
void add_super_block_kernels(Kernels& k);
// Puts the AVX2 multi-row, multi-vector kernels (matmul_avx2.cpp) into an AVX2-level table.
void add_avx2_matmul_kernels(Kernels& k);
// Then, at the AVX-512 level, the kernels that have a 512-bit version (F16: matmul_avx2.cpp).
void add_avx512_matmul_kernels(Kernels& k);

// Quantizes one row of `n` floats (a multiple of 256) to a super-block type (not Q8_K's activation rounding:
// Q8_K rows are written with quantize_row_q8k). The methods are this project's own: per sub-block min/max
// ranges with 6-bit scales and mins for Q4_K / Q5_K, signed absolute maxima for Q6_K, and for the ternary types
// a threshold of 0.75 x mean|x| with the scale set to the mean magnitude of the values kept (exact for weights
// that already are ternary, {-a, 0, a}).
void quantize_row_super_block(TensorType type, const float* x, void* out, std::size_t n);

// The eight 6-bit scales (bytes 0..7) and mins (bytes 8..15) of a Q4_K / Q5_K block from its 12 scale bytes: the
// rules of the layout comment applied to four bytes at a time.
inline void unpack_k4_scales(const std::uint8_t* s, std::uint8_t out[16]) noexcept {
  std::uint32_t a, b, c;
  std::memcpy(&a, s, 4);
  std::memcpy(&b, s + 4, 4);
  std::memcpy(&c, s + 8, 4);
  const std::uint32_t words[4] = {a & 0x3F3F3F3Fu, (c & 0x0F0F0F0Fu) | (((a >> 6) & 0x03030303u) << 4), b & 0x3F3F3F3Fu,
                                  ((c >> 4) & 0x0F0F0F0Fu) | (((b >> 6) & 0x03030303u) << 4)};
  std::memcpy(out, words, 16);
}

}  // namespace mmsb::llm
