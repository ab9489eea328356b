// AVX2 products for every weight type: tiles of R rows x T activation vectors, so that a weight row, once loaded
// and unpacked, serves T vectors (prompt batches) and a vector serves R rows (decoding). Each (row, vector) result
// is accumulated in its own register, with the same operations in the same order in every tile shape, which is
// what makes batched prefill, the thread split and one-token decoding agree bit for bit (kernels.hpp). The file is
// compiled with -ffp-contract=off: only the explicit fused multiply-adds below are fused.
//
// Arithmetic per type (activation formats in kernels.hpp):
//   F32, F16   8 lanes of w * x per step of 8 columns (F16: both operands half precision, widened), fused into
//              one accumulator; then a horizontal sum and the columns past the last multiple of 8 one by one.
//   Q8_0       per block of 32: the exact integer sum of w * x (maddubs on |w| and x with w's signs: exact for
//              every stored byte, -128 included), converted to float and fused into the row's accumulator (one
//              lane of a tile of eight rows) times d_w * d_x, block after block (see Block8).
//   Q4_0, Q5_0 the same with the unsigned stored values n (maddubs on n and x) less 8 (16) x the block's sum of x.
//   Q4_1, Q5_1 as Q4_0 without the offset, plus m_w * d_x * (sum of x) per block, accumulated apart.
//   Q4_K, Q5_K, Q6_K  per super-block of 256: integer sums of each sub-block weighted by its integer scale, then
//              fused into the accumulator times d_x * d_w (and the mins through the activations' block sums), as
//              the one-row kernels of kquants.cpp do.
#include <immintrin.h>

#include <algorithm>
#include <array>
#include <cstdint>
#include <cstring>
#include <utility>
#include <vector>

#include "llm/kquants.hpp"
#include "llm/q6k_avx2.hpp"
#include "mmsb/llm/kernels.hpp"

namespace mmsb::llm {

namespace {

#define MMSB_TILE __attribute__((target("avx2,fma,f16c")))
// Loops over a tile's rows, vectors and registers are unrolled in full, so that the accumulators and unpacked
// weights stay in registers: GCC at -O2 otherwise keeps them in arrays on the stack (measured: the f32 4 x 3 tile
// ran at half speed with every fused multiply-add going through memory).
#define MMSB_UNROLL _Pragma("GCC unroll 16")

constexpr std::size_t kBlock = 32;

MMSB_TILE inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}
// The sum of the 8 lanes (exact: integer addition, wrapping as the lanes do).
MMSB_TILE inline std::int32_t hsum_epi32(__m256i v) {
  __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
  s = _mm_add_epi32(s, _mm_unpackhi_epi64(s, s));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 1));
  return _mm_cvtsi128_si32(s);
}
MMSB_TILE inline __m256i load32(const void* p) { return _mm256_loadu_si256(static_cast<const __m256i*>(p)); }
MMSB_TILE inline float half(const std::uint8_t* p) {
  std::uint16_t h;
  std::memcpy(&h, p, 2);
  return _cvtsh_ss(h);
}
inline std::uint32_t load_u32(const std::uint8_t* p) {
  std::uint32_t v;
  std::memcpy(&v, p, 4);
  return v;
}

// What every tile receives: R rows from `w`, T vectors from `act`, results into `out` (see MatmulFn).
struct TileArgs {
  const std::uint8_t* w;
  std::size_t row_stride;
  const std::byte* act;
  std::size_t act_stride;
  std::size_t cols;
  float* out;
  std::size_t out_stride;
};
using TileFn = void (*)(const TileArgs&);

// Asks for the bytes one tile further down the matrix (the same offset in the rows the next tile reads) while this
// tile computes. The products of the block types compute long enough per cache line that the hardware prefetchers
// fall behind when they stream a matrix from memory (measured: Q4_0 at 4.3 GB/s from DRAM without, 9 GB/s from
// L3); prefetching never faults, so the last tile may point past the matrix.
MMSB_TILE inline void prefetch_next_tile(const std::uint8_t* p, std::size_t tile_bytes) {
  _mm_prefetch(reinterpret_cast<const char*>(p + 4 * tile_bytes), _MM_HINT_T0);
}

// --- F32 weights (f32 activations) and F16 weights (F16 activations) -------------------------------------------

// One vector at a time (decoding; F16 activations widened to f32 first, the same values, so a row converts only its
// weights), and F16 batches; F32 batches run FloatGemm below, with the same operations per result. Linear: the tile
// after this one is asked for in address order (R lines per step of a cache line) rather than row by row at this step's
// columns.
template <bool Half, bool Linear = false>
struct FloatTile {
  template <bool H = Half>
  MMSB_TILE static __m256 load(const std::uint8_t* row, std::size_t k) {
    if constexpr (H) {
      return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(row + 2 * k)));
    } else {
      return _mm256_loadu_ps(reinterpret_cast<const float*>(row) + k);
    }
  }
  // Inline conversions only: a call would make GCC keep every accumulator of the tile in memory (all vector
  // registers are caller-saved).
  template <bool H = Half>
  MMSB_TILE static float at(const std::uint8_t* row, std::size_t k) {
    if constexpr (H) {
      return half(row + 2 * k);
    } else {
      float v;
      std::memcpy(&v, row + 4 * k, 4);
      return v;
    }
  }
  template <int R, int T>
  MMSB_TILE static void run(const TileArgs& a) {
    const std::uint8_t* x[T];
    MMSB_UNROLL
    for (int t = 0; t < T; ++t) x[t] = reinterpret_cast<const std::uint8_t*>(a.act + t * a.act_stride);
    __m256 acc[R][T];
    MMSB_UNROLL
    for (int r = 0; r < R; ++r) {
      MMSB_UNROLL
      for (int t = 0; t < T; ++t) acc[r][t] = _mm256_setzero_ps();
    }
    std::size_t k = 0;
    constexpr std::size_t line_values = Half ? 32 : 16;  // values per cache line
    for (; k + 8 <= a.cols; k += 8) {
      if (k % line_values == 0) {
        MMSB_UNROLL
        for (int r = 0; r < R; ++r) {
          if constexpr (Linear) {
            const std::size_t line = k / line_values * R + static_cast<std::size_t>(r);
            _mm_prefetch(reinterpret_cast<const char*>(a.w + R * a.row_stride + line * 64), _MM_HINT_T0);
          } else {
            prefetch_next_tile(a.w + r * a.row_stride + k * (Half ? 2 : 4), R * a.row_stride);
          }
        }
      }
      __m256 xv[T];
      MMSB_UNROLL
      for (int t = 0; t < T; ++t) xv[t] = load<false>(x[t], k);
      MMSB_UNROLL
      for (int r = 0; r < R; ++r) {
        const __m256 wv = load(a.w + r * a.row_stride, k);
        MMSB_UNROLL
        for (int t = 0; t < T; ++t) acc[r][t] = _mm256_fmadd_ps(wv, xv[t], acc[r][t]);
      }
    }
    MMSB_UNROLL
    for (int r = 0; r < R; ++r) {
      MMSB_UNROLL
      for (int t = 0; t < T; ++t) {
        float s = hsum(acc[r][t]);
        for (std::size_t j = k; j < a.cols; ++j) s += at(a.w + r * a.row_stride, j) * at<false>(x[t], j);
        a.out[t * a.out_stride + r] = s;
      }
    }
  }
};

MMSB_TILE void widen_halves(const std::uint8_t* halves, std::size_t n, float* out) {
  std::size_t i = 0;
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(out + i, FloatTile<true>::load(halves, i));
  for (; i < n; ++i) out[i] = FloatTile<true>::at(halves, i);
}

// A batch of F16 vectors widened to f32 once, into a per-thread buffer that grows to the widest batch: a tile then
// converts only its weights (the same values, so the same bits). Returns the f32 vectors, `cols` floats apart.
MMSB_TILE const std::byte* widen_batch(const std::byte* act, std::size_t act_stride, std::size_t n, std::size_t cols) {
  thread_local std::vector<float> wide;
  if (wide.size() < n * cols) wide.resize(n * cols);
  for (std::size_t t = 0; t < n; ++t) {
    widen_halves(reinterpret_cast<const std::uint8_t*>(act + t * act_stride), cols, wide.data() + t * cols);
  }
  return reinterpret_cast<const std::byte*>(wide.data());
}

// Lane j of the result = hsum(v[j]), in the same additions: per vector (low half + high half), then (lanes 0 + 2)
// + (lanes 1 + 3) (float addition commutes exactly).
MMSB_TILE inline __m256 hsum8(const __m256 (&v)[8]) {
  __m256 h[4];
  MMSB_UNROLL
  for (int p = 0; p < 4; ++p) {
    const __m256 s = _mm256_add_ps(_mm256_permute2f128_ps(v[2 * p], v[2 * p + 1], 0x20),
                                   _mm256_permute2f128_ps(v[2 * p], v[2 * p + 1], 0x31));
    h[p] = _mm256_permute_ps(s, 0xD8);  // per half: lanes 0, 2, 1, 3
  }
  // Per 128-bit half: (0 + 2), (1 + 3) of two accumulators each, then their sums: lanes v0 v2 v4 v6 | v1 v3 v5 v7.
  const __m256 t = _mm256_hadd_ps(_mm256_hadd_ps(h[0], h[1]), _mm256_hadd_ps(h[2], h[3]));
  return _mm256_permutevar8x32_ps(t, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
}
// The same for the `count` accumulators (8 floats each) at `acc` from `first` on; lanes past `count` repeat
// accumulator `first`.
MMSB_TILE inline __m256 hsum8(const float* acc, std::size_t count, std::size_t first) {
  __m256 v[8];
  for (std::size_t j = 0; j < 8; ++j) v[j] = _mm256_loadu_ps(acc + 8 * (first + j < count ? first + j : first));
  return hsum8(v);
}

// Batches of F32 products, cache-blocked. The 4 x 3 tile above streams every vector of a batch from L2 for each
// tile of rows, and once a tile's rows pass L1 (4 rows of 2048 f32 = 32 KiB) its weights as well (measured: 40
// GFLOP/s at 768 x 2048 against 80 when everything sits in L2; F16 rows, half the bytes, ran at 75-83 either way,
// so F16 batches keep the plain tiles). Here the vectors of a chunk are first copied into one contiguous panel,
// tile by tile: per step of 8 columns the tile's T vectors side by side, so a tile reads one sequential stream.
// Then, per row block, the columns are taken in blocks whose R weight rows (one tile of rows) stay in L1 while
// every tile of vectors of the chunk passes over them; between column blocks a tile's accumulators wait in a
// buffer. Each accumulator lane still takes the same fused multiply-adds in the same order as FloatTile, and the
// end (horizontal sum, then the columns past the last multiple of 8 one by one from the vectors as given) is
// FloatTile's: the results are the same bits.
struct FloatGemm {
  static constexpr int R = 4, T = 3;
  static constexpr std::size_t kStep = 8;
  // Column blocks of 512: a tile's weights (4 rows, 8 KiB in f32) stay in L1 while the chunk's vectors pass.
  static constexpr std::size_t kBlockSteps = 64;
  // The vectors' panel of one column block is read again for every tile of rows of a row block: at most 192 KiB;
  // with the row block's accumulators (64 rows x 96 vectors x 32 bytes) about three quarters of L2 (512 KiB).
  static constexpr std::size_t kSliceBytes = 192 * 1024, kRowBlock = 64;

  // Vectors [t0, t0 + n) into `panel`: tile i, step s, vector t at ((i * steps + s) * T + t) * 8.
  MMSB_TILE static void pack(const std::byte* act, std::size_t act_stride, std::size_t n, std::size_t cols,
                             float* panel) {
    const std::size_t steps = cols / kStep;
    for (std::size_t t = 0; t < n; ++t) {
      const auto* x = reinterpret_cast<const std::uint8_t*>(act + t * act_stride);
      float* dst = panel + (t / T * steps * T + t % T) * kStep;
      for (std::size_t s = 0; s < steps; ++s)
        _mm256_storeu_ps(dst + s * T * kStep, FloatTile<false>::load(x, s * kStep));
    }
  }

  // Steps [s0, s1) of a tile of RN rows x TN vectors (the tile's panel at `x`), accumulators in `acc`.
  template <int RN, int TN>
  MMSB_TILE static void steps(const std::uint8_t* w, std::size_t row_stride, const float* x, std::size_t s0,
                              std::size_t s1, float* acc_io, bool first) {
    __m256 acc[RN][TN];
    MMSB_UNROLL
    for (int r = 0; r < RN; ++r) {
      MMSB_UNROLL
      for (int t = 0; t < TN; ++t)
        acc[r][t] = first ? _mm256_setzero_ps() : _mm256_loadu_ps(acc_io + (r * TN + t) * kStep);
    }
    for (std::size_t s = s0; s < s1; ++s, x += T * kStep) {
      __m256 xv[TN];
      MMSB_UNROLL
      for (int t = 0; t < TN; ++t) xv[t] = _mm256_loadu_ps(x + t * kStep);
      MMSB_UNROLL
      for (int r = 0; r < RN; ++r) {
        const __m256 wv = FloatTile<false>::load(w + r * row_stride, s * kStep);
        MMSB_UNROLL
        for (int t = 0; t < TN; ++t) acc[r][t] = _mm256_fmadd_ps(wv, xv[t], acc[r][t]);
      }
    }
    MMSB_UNROLL
    for (int r = 0; r < RN; ++r) {
      MMSB_UNROLL
      for (int t = 0; t < TN; ++t) _mm256_storeu_ps(acc_io + (r * TN + t) * kStep, acc[r][t]);
    }
  }
  using StepsFn = void (*)(const std::uint8_t*, std::size_t, const float*, std::size_t, std::size_t, float*, bool);
  template <std::size_t... I>
  static constexpr std::array<StepsFn, sizeof...(I)> table(std::index_sequence<I...>) {
    return {&steps<static_cast<int>(I / T) + 1, static_cast<int>(I % T) + 1>...};
  }

  // Where the tile of rows after (r, block s0) in chunk()'s order starts: its first row and first step (for
  // FloatGemm512 too, with its tile and block sizes).
  template <int TileRows = R, std::size_t BlockSteps = kBlockSteps>
  static std::pair<std::size_t, std::size_t> next_tile(std::size_t r, std::size_t row_block_end, std::size_t s0,
                                                       std::size_t steps, std::size_t row_block_start) {
    if (r + TileRows < row_block_end) return {r + TileRows, s0};
    if (s0 + BlockSteps < steps) return {row_block_start, s0 + BlockSteps};
    return {row_block_end, 0};
  }

  // The results of rows [r0, r1) from their accumulators: the horizontal sum, then the columns past the last
  // multiple of 8 one by one, as FloatTile ends.
  MMSB_TILE static void finish(const std::uint8_t* w, std::size_t row_stride, std::size_t r0, std::size_t r1,
                               const std::byte* act, std::size_t act_stride, std::size_t n, std::size_t cols,
                               const float* acc, float* out, std::size_t out_stride) {
    const std::size_t steps = cols / kStep, vector_tiles = (n + T - 1) / T;
    for (std::size_t r = r0; r < r1; r += R) {
      const std::size_t rn = std::min<std::size_t>(R, r1 - r);
      for (std::size_t t = 0, i = 0; t < n; t += T, ++i) {
        const std::size_t tn = std::min<std::size_t>(T, n - t);
        const float* tile_acc = acc + ((r - r0) / R * vector_tiles + i) * R * T * kStep;
        alignas(32) float sums[2 * kStep];
        _mm256_store_ps(sums, hsum8(tile_acc, rn * tn, 0));
        if (rn * tn > kStep) _mm256_store_ps(sums + kStep, hsum8(tile_acc, rn * tn, kStep));
        for (std::size_t ti = 0; ti < tn; ++ti) {
          const auto* x = reinterpret_cast<const std::uint8_t*>(act + (t + ti) * act_stride);
          for (std::size_t ri = 0; ri < rn; ++ri) {
            float sum = sums[ri * tn + ti];
            for (std::size_t j = steps * kStep; j < cols; ++j) {
              sum += FloatTile<false>::at(w + (r + ri) * row_stride, j) * FloatTile<false>::at(x, j);
            }
            out[(t + ti) * out_stride + r + ri] = sum;
          }
        }
      }
    }
  }

  // One chunk of n vectors (panel packed), all rows: blocks of kRowBlock rows, and in each, the column blocks in
  // order, every tile of rows of the block per column block (its accumulators in `acc` between blocks).
  MMSB_TILE static void chunk(const std::uint8_t* w, std::size_t row_stride, std::size_t rows, const std::byte* act,
                              std::size_t act_stride, std::size_t n, std::size_t cols, const float* panel, float* acc,
                              float* out, std::size_t out_stride) {
    static constexpr auto tiles = table(std::make_index_sequence<R * T>());
    constexpr std::size_t line_bytes = 64, value_bytes = 4;
    const std::size_t steps = cols / kStep, tile_floats = steps * T * kStep, vector_tiles = (n + T - 1) / T;
    for (std::size_t rb = 0; rb < rows; rb += kRowBlock) {
      const std::size_t rb_end = std::min(rows, rb + kRowBlock);
      for (std::size_t s0 = 0;; s0 += kBlockSteps) {  // at least one block: it zeroes the accumulators
        const std::size_t s1 = std::min(steps, s0 + kBlockSteps);
        for (std::size_t r = rb; r < rb_end; r += R) {
          const std::size_t rn = std::min<std::size_t>(R, rb_end - r);
          const std::uint8_t* wr = w + r * row_stride;
          // The next tile's weights are asked for while this one computes, a few lines before each tile of
          // vectors: they come from memory once per chunk, and a burst of prefetches would only queue.
          // (Prefetching never faults: the last tile may point past the matrix.)
          const auto [next_r, next_s] = next_tile(r, rb_end, s0, steps, rb);
          const std::uint8_t* next = w + next_r * row_stride + next_s * kStep * value_bytes;
          const std::size_t lines =
              (std::min(kBlockSteps, steps - std::min(steps, next_s)) * kStep * value_bytes + line_bytes - 1) /
              line_bytes;
          const std::size_t per_tile = (R * lines + vector_tiles - 1) / vector_tiles;
          std::size_t pf_row = 0, pf_line = 0;  // the next line to ask for
          for (std::size_t t = 0, i = 0; t < n; t += T, ++i) {
            for (std::size_t j = 0; j < per_tile && pf_row < R; ++j) {
              _mm_prefetch(reinterpret_cast<const char*>(next + pf_row * row_stride + pf_line * line_bytes),
                           _MM_HINT_T1);
              if (++pf_line == lines) pf_line = 0, ++pf_row;
            }
            const std::size_t tn = std::min<std::size_t>(T, n - t);
            tiles[(rn - 1) * T + (tn - 1)](wr, row_stride, panel + i * tile_floats + s0 * T * kStep, s0, s1,
                                           acc + ((r - rb) / R * vector_tiles + i) * R * T * kStep, s0 == 0);
          }
        }
        if (s1 == steps) break;
      }
      finish(w, row_stride, rb, rb_end, act, act_stride, n, cols, acc, out, out_stride);
    }
  }

  static void run(const std::byte* w, std::size_t row_stride, std::size_t rows, const std::byte* act,
                  std::size_t act_stride, std::size_t n, std::size_t cols, float* out, std::size_t out_stride) {
    const std::size_t steps = cols / kStep;
    const std::size_t slice_bytes = std::max<std::size_t>(std::min(steps, kBlockSteps), 1) * kStep * sizeof(float);
    const std::size_t per_chunk = std::max<std::size_t>(T, kSliceBytes / slice_bytes / T * T);
    thread_local std::vector<float> panel;
    thread_local std::vector<float> acc;
    const std::size_t tiles = (std::min(n, per_chunk) + T - 1) / T;
    if (panel.size() < tiles * T * steps * kStep) panel.resize(tiles * T * steps * kStep);
    if (acc.size() < kRowBlock / R * tiles * R * T * kStep) acc.resize(kRowBlock / R * tiles * R * T * kStep);
    for (std::size_t t0 = 0; t0 < n; t0 += per_chunk) {
      const std::size_t tn = std::min(per_chunk, n - t0);
      pack(act + t0 * act_stride, act_stride, tn, cols, panel.data());
      chunk(reinterpret_cast<const std::uint8_t*>(w), row_stride, rows, act + t0 * act_stride, act_stride, tn, cols,
            panel.data(), acc.data(), out + t0 * out_stride, out_stride);
    }
  }
};

// --- the 32-value block types (Q8 activations) ------------------------------------------------------------------

// 16 bytes of nibbles -> 32 bytes: low nibbles as values 0..15, high nibbles as 16..31.
MMSB_TILE inline __m256i unpack_nibbles(const std::uint8_t* p) {
  const __m128i raw = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  const __m128i mask = _mm_set1_epi8(0x0F);
  return _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(raw, 4), mask), _mm_and_si128(raw, mask));
}
// Bit j of `bits` -> byte j set to 0x10 (the fifth bit of value j).
MMSB_TILE inline __m256i high_bits_to_bytes(std::uint32_t bits) {
  const __m256i shuffle = _mm256_set_epi64x(0x0303030303030303, 0x0202020202020202, 0x0101010101010101, 0);
  __m256i v = _mm256_shuffle_epi8(_mm256_set1_epi32(static_cast<int>(bits)), shuffle);
  const __m256i select = _mm256_set1_epi64x(static_cast<long long>(0x8040201008040201ULL));
  v = _mm256_cmpeq_epi8(_mm256_and_si256(v, select), select);
  return _mm256_and_si256(v, _mm256_set1_epi8(0x10));
}

// How a block type's 32 stored values relate to the integer values of the product.
enum class Stored { Signed, Offset, Affine };

struct Q8_0Block {
  static constexpr int bits = 8;
  static constexpr std::size_t bytes = 34;
  static constexpr Stored kind = Stored::Signed;
  static constexpr int offset = 0;
  MMSB_TILE static __m256i values(const std::uint8_t* b) { return load32(b + 2); }
  MMSB_TILE static float d(const std::uint8_t* b) { return half(b); }
  static float m(const std::uint8_t*) { return 0; }
};
struct Q4_0Block {
  static constexpr int bits = 4;
  static constexpr std::size_t bytes = 18;
  static constexpr Stored kind = Stored::Offset;
  static constexpr int offset = 8;
  MMSB_TILE static __m256i values(const std::uint8_t* b) { return unpack_nibbles(b + 2); }
  MMSB_TILE static float d(const std::uint8_t* b) { return half(b); }
  static float m(const std::uint8_t*) { return 0; }
};
struct Q5_0Block {
  static constexpr int bits = 5;
  static constexpr std::size_t bytes = 22;
  static constexpr Stored kind = Stored::Offset;
  static constexpr int offset = 16;
  MMSB_TILE static __m256i values(const std::uint8_t* b) {
    return _mm256_or_si256(unpack_nibbles(b + 6), high_bits_to_bytes(load_u32(b + 2)));
  }
  MMSB_TILE static float d(const std::uint8_t* b) { return half(b); }
  static float m(const std::uint8_t*) { return 0; }
};
struct Q4_1Block {
  static constexpr int bits = 4;
  static constexpr std::size_t bytes = 20;
  static constexpr Stored kind = Stored::Affine;
  static constexpr int offset = 0;
  MMSB_TILE static __m256i values(const std::uint8_t* b) { return unpack_nibbles(b + 4); }
  MMSB_TILE static float d(const std::uint8_t* b) { return half(b); }
  MMSB_TILE static float m(const std::uint8_t* b) { return half(b + 2); }
};
struct Q5_1Block {
  static constexpr int bits = 5;
  static constexpr std::size_t bytes = 24;
  static constexpr Stored kind = Stored::Affine;
  static constexpr int offset = 0;
  MMSB_TILE static __m256i values(const std::uint8_t* b) {
    return _mm256_or_si256(unpack_nibbles(b + 8), high_bits_to_bytes(load_u32(b + 4)));
  }
  MMSB_TILE static float d(const std::uint8_t* b) { return half(b); }
  MMSB_TILE static float m(const std::uint8_t* b) { return half(b + 2); }
};

// Eight rows at a time, row r's sums in lane r. Per block b, row r and vector t the integer sum S of the block's
// products (exact), less the type's offset times the vector's block sum, is converted to float and fused into
// lane r of vector t's accumulator times d_w(r, b) * d_x(t, b): one accumulation per (row, vector) in block order,
// the same in both ways of getting S below, so every tile shape gives the same bits.
//   decoding (few vectors): the rows' 32 values are multiplied with the vector's in place (maddubs, madd), and the
//     eight rows' lane sums are reduced into one vector (hadd);
//   batches: the eight rows are first repacked into a scratch buffer, 4 bytes of each row side by side, so that a
//     vector's 4 bytes broadcast to every lane give all eight rows' partial sums at once (maddubs), with no
//     reduction; the repacking is paid once per row tile for the whole batch.
constexpr std::size_t kTileRows = 8;

// Lane r of the result = the sum of the 8 lanes of m[r].
MMSB_TILE inline __m256i reduce8(const __m256i* m) {
  const __m256i a0 = _mm256_hadd_epi32(m[0], m[1]), a1 = _mm256_hadd_epi32(m[2], m[3]);
  const __m256i a2 = _mm256_hadd_epi32(m[4], m[5]), a3 = _mm256_hadd_epi32(m[6], m[7]);
  const __m256i b0 = _mm256_hadd_epi32(a0, a1), b1 = _mm256_hadd_epi32(a2, a3);
  return _mm256_add_epi32(_mm256_permute2x128_si256(b0, b1, 0x20), _mm256_permute2x128_si256(b0, b1, 0x31));
}

// The half-precision scales at `offset` in eight rows, as floats (lane r: row r).
MMSB_TILE inline __m256 halves8(const std::uint8_t* const* rows, std::size_t offset) {
  auto h = [&](int r) {
    std::uint16_t v;
    std::memcpy(&v, rows[r] + offset, 2);
    return static_cast<int>(v);
  };
  __m128i v = _mm_cvtsi32_si128(h(0));
  v = _mm_insert_epi16(v, h(1), 1);
  v = _mm_insert_epi16(v, h(2), 2);
  v = _mm_insert_epi16(v, h(3), 3);
  v = _mm_insert_epi16(v, h(4), 4);
  v = _mm_insert_epi16(v, h(5), 5);
  v = _mm_insert_epi16(v, h(6), 6);
  v = _mm_insert_epi16(v, h(7), 7);
  return _mm256_cvtph_ps(v);
}

// The 8 x 8 transpose of 32-bit elements: out[k] = (in[0][k], ..., in[7][k]).
MMSB_TILE inline void transpose8(__m256i* v) {
  const __m256i t0 = _mm256_unpacklo_epi32(v[0], v[1]), t1 = _mm256_unpackhi_epi32(v[0], v[1]);
  const __m256i t2 = _mm256_unpacklo_epi32(v[2], v[3]), t3 = _mm256_unpackhi_epi32(v[2], v[3]);
  const __m256i t4 = _mm256_unpacklo_epi32(v[4], v[5]), t5 = _mm256_unpackhi_epi32(v[4], v[5]);
  const __m256i t6 = _mm256_unpacklo_epi32(v[6], v[7]), t7 = _mm256_unpackhi_epi32(v[6], v[7]);
  const __m256i u0 = _mm256_unpacklo_epi64(t0, t2), u1 = _mm256_unpackhi_epi64(t0, t2);
  const __m256i u2 = _mm256_unpacklo_epi64(t1, t3), u3 = _mm256_unpackhi_epi64(t1, t3);
  const __m256i u4 = _mm256_unpacklo_epi64(t4, t6), u5 = _mm256_unpackhi_epi64(t4, t6);
  const __m256i u6 = _mm256_unpacklo_epi64(t5, t7), u7 = _mm256_unpackhi_epi64(t5, t7);
  v[0] = _mm256_permute2x128_si256(u0, u4, 0x20);
  v[1] = _mm256_permute2x128_si256(u1, u5, 0x20);
  v[2] = _mm256_permute2x128_si256(u2, u6, 0x20);
  v[3] = _mm256_permute2x128_si256(u3, u7, 0x20);
  v[4] = _mm256_permute2x128_si256(u0, u4, 0x31);
  v[5] = _mm256_permute2x128_si256(u1, u5, 0x31);
  v[6] = _mm256_permute2x128_si256(u2, u6, 0x31);
  v[7] = _mm256_permute2x128_si256(u3, u7, 0x31);
}

// Four bytes repeated in every 32-bit lane.
MMSB_TILE inline __m256i broadcast4(const std::int8_t* p) {
  std::int32_t v;
  std::memcpy(&v, p, 4);
  return _mm256_set1_epi32(v);
}

// One activation vector in the Q8 format.
struct Q8Vector {
  const std::int8_t* q;
  const float* d;
  const std::int32_t* sum;
};
inline Q8Vector q8_vector(const std::byte* v, std::size_t cols) {
  return {reinterpret_cast<const std::int8_t*>(v), reinterpret_cast<const float*>(v + cols),
          reinterpret_cast<const std::int32_t*>(v + cols + cols / kBlock * sizeof(float))};
}

template <class B>
struct Block8 {
  static constexpr bool affine = B::kind == Stored::Affine;

  // Lane r of `acc` (and `offsets`, Affine) takes block b's contribution from the exact sums S (lane r: row r).
  MMSB_TILE static void accumulate(__m256i sums, __m256 dw, __m256 mw, const Q8Vector& x, std::size_t b, __m256& acc,
                                   __m256& offsets) {
    // Unsigned, so a garbage activation sum (a NaN input quantizes to INT_MIN) wraps as the SIMD lanes do instead
    // of overflowing a signed int.
    if constexpr (B::kind == Stored::Offset) {
      const auto offset = static_cast<std::uint32_t>(B::offset) * static_cast<std::uint32_t>(x.sum[b]);
      sums = _mm256_sub_epi32(sums, _mm256_set1_epi32(static_cast<std::int32_t>(offset)));
    }
    acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sums), _mm256_mul_ps(dw, _mm256_set1_ps(x.d[b])), acc);
    if constexpr (affine) {
      offsets = _mm256_fmadd_ps(mw, _mm256_set1_ps(x.d[b] * static_cast<float>(x.sum[b])), offsets);
    }
  }

  // Lanes [0, rows) of acc (+ offsets) to out.
  MMSB_TILE static void store(__m256 acc, __m256 offsets, float* out, std::size_t rows) {
    if constexpr (affine) acc = _mm256_add_ps(acc, offsets);
    if (rows == kTileRows) return _mm256_storeu_ps(out, acc);
    alignas(32) float lanes[kTileRows];
    _mm256_store_ps(lanes, acc);
    for (std::size_t r = 0; r < rows; ++r) out[r] = lanes[r];
  }

  // The few-vector way: each row's products in place, the eight rows' lane sums reduced.
  MMSB_TILE static void run_in_place(const std::uint8_t* const* row, std::size_t row_stride, std::size_t rows,
                                     const std::byte* act, std::size_t act_stride, std::size_t n, std::size_t cols,
                                     float* out, std::size_t out_stride) {
    const __m256i ones = _mm256_set1_epi16(1);
    for (std::size_t t = 0; t < n; ++t) {
      const Q8Vector x = q8_vector(act + t * act_stride, cols);
      __m256 acc = _mm256_setzero_ps(), offsets = _mm256_setzero_ps();
      for (std::size_t b = 0; b < cols / kBlock; ++b) {
        const __m256i xv = load32(x.q + b * kBlock);
        // The tile four tiles further down, in address order: the eight rows are contiguous, and this step's
        // share of them is the same share of that tile (measured from memory, Q4_0 at 768 and 2048 columns:
        // 11.6-12.3 GB/s against 9.4-10.0 asking row by row at this block; Q8_0 17 against 10.5).
        const std::uint8_t* ahead = row[0] + 4 * kTileRows * row_stride + b * kTileRows * B::bytes;
        for (std::size_t o = 0; o < kTileRows * B::bytes + 63; o += 64) {
          _mm_prefetch(reinterpret_cast<const char*>(ahead + o), _MM_HINT_T0);
        }
        __m256i m[kTileRows];
        MMSB_UNROLL
        for (std::size_t r = 0; r < kTileRows; ++r) {
          const std::uint8_t* blk = row[r] + b * B::bytes;
          const __m256i w = B::values(blk);
          __m256i pairs;
          if constexpr (B::kind == Stored::Signed) {
            pairs = _mm256_maddubs_epi16(_mm256_abs_epi8(w), _mm256_sign_epi8(xv, w));
          } else {
            pairs = _mm256_maddubs_epi16(w, xv);
          }
          m[r] = _mm256_madd_epi16(pairs, ones);
        }
        const __m256 dw = halves8(row, b * B::bytes + 0);
        const __m256 mw = affine ? halves8(row, b * B::bytes + 2) : _mm256_setzero_ps();
        accumulate(reduce8(m), dw, mw, x, b, acc, offsets);
      }
      store(acc, offsets, out + t * out_stride, rows);
    }
  }

  // The repacked rows of one tile: per block, eight registers of 4 bytes from each row (register k: bytes 4k..4k+3
  // of rows 0..7), then the eight scales (and offsets, Affine) as floats.
  static constexpr std::size_t kPackedBlock = kTileRows * 32 + (affine ? 2 : 1) * kTileRows * sizeof(float);

  MMSB_TILE static void repack(const std::uint8_t* const* row, std::size_t blocks, std::byte* packed) {
    for (std::size_t b = 0; b < blocks; ++b, packed += kPackedBlock) {
      __m256i v[kTileRows];
      MMSB_UNROLL
      for (std::size_t r = 0; r < kTileRows; ++r) v[r] = B::values(row[r] + b * B::bytes);
      transpose8(v);
      MMSB_UNROLL
      for (std::size_t k = 0; k < kTileRows; ++k) _mm256_storeu_si256(reinterpret_cast<__m256i*>(packed) + k, v[k]);
      _mm256_storeu_ps(reinterpret_cast<float*>(packed + 256), halves8(row, b * B::bytes + 0));
      if constexpr (affine) _mm256_storeu_ps(reinterpret_cast<float*>(packed + 288), halves8(row, b * B::bytes + 2));
    }
  }

  // Exact sums of the eight rows (lanes) of one repacked block with one vector's block (4 bytes broadcast per k).
  MMSB_TILE static __m256i packed_sums(const __m256i* w, const std::byte* packed, const std::int8_t* xq) {
    const __m256i ones = _mm256_set1_epi16(1);
    if constexpr (B::kind == Stored::Signed) {  // |w| * x with w's signs; a pair may reach 32512: widen each
      __m256i s = _mm256_setzero_si256();
      MMSB_UNROLL
      for (std::size_t k = 0; k < kTileRows; ++k) {
        const __m256i signs = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(packed) + k);
        s = _mm256_add_epi32(
            s, _mm256_madd_epi16(_mm256_maddubs_epi16(w[k], _mm256_sign_epi8(broadcast4(xq + 4 * k), signs)), ones));
      }
      return s;
    } else {
      // Stored values below 16 (32): a pair of products is at most 3810 (7874), so 8 (4) of them fit 16 bits.
      constexpr std::size_t group = B::bits == 5 ? 4 : 8;
      __m256i s = _mm256_setzero_si256();
      MMSB_UNROLL
      for (std::size_t g = 0; g < kTileRows; g += group) {
        __m256i p = _mm256_maddubs_epi16(w[g], broadcast4(xq + 4 * g));
        MMSB_UNROLL
        for (std::size_t k = g + 1; k < g + group; ++k)
          p = _mm256_add_epi16(p, _mm256_maddubs_epi16(w[k], broadcast4(xq + 4 * k)));
        s = _mm256_add_epi32(s, _mm256_madd_epi16(p, ones));
      }
      return s;
    }
  }

  // T vectors against a repacked tile.
  template <int T>
  MMSB_TILE static void run_packed(const std::byte* packed, std::size_t rows, const std::byte* act,
                                   std::size_t act_stride, std::size_t cols, float* out, std::size_t out_stride) {
    Q8Vector x[T];
    __m256 acc[T], offsets[T];
    MMSB_UNROLL
    for (int t = 0; t < T; ++t) {
      x[t] = q8_vector(act + t * act_stride, cols);
      acc[t] = offsets[t] = _mm256_setzero_ps();
    }
    for (std::size_t b = 0; b < cols / kBlock; ++b, packed += kPackedBlock) {
      __m256i w[kTileRows];
      MMSB_UNROLL
      for (std::size_t k = 0; k < kTileRows; ++k) {
        w[k] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(packed) + k);
        if constexpr (B::kind == Stored::Signed) w[k] = _mm256_abs_epi8(w[k]);
      }
      const __m256 dw = _mm256_loadu_ps(reinterpret_cast<const float*>(packed + 256));
      const __m256 mw = affine ? _mm256_loadu_ps(reinterpret_cast<const float*>(packed + 288)) : _mm256_setzero_ps();
      MMSB_UNROLL
      for (int t = 0; t < T; ++t) {
        accumulate(packed_sums(w, packed, x[t].q + b * kBlock), dw, mw, x[t], b, acc[t], offsets[t]);
      }
    }
    MMSB_UNROLL
    for (int t = 0; t < T; ++t) store(acc[t], offsets[t], out + t * out_stride, rows);
  }
};

// Below this many vectors the repacking costs more than it saves.
constexpr std::size_t kRepackVectors = 4;

template <class B>
void matmul_block8(const std::byte* w, std::size_t row_stride, std::size_t rows, const std::byte* act,
                   std::size_t act_stride, std::size_t n, std::size_t cols, float* out, std::size_t out_stride) {
  using K = Block8<B>;
  constexpr int kT = 4;  // vectors per packed tile
  thread_local std::vector<std::byte> packed;
  const auto* wb = reinterpret_cast<const std::uint8_t*>(w);
  const std::size_t blocks = cols / kBlock;
  for (std::size_t r0 = 0; r0 < rows; r0 += kTileRows) {
    const std::size_t rn = std::min(kTileRows, rows - r0);
    const std::uint8_t* row[kTileRows];
    MMSB_UNROLL
    for (std::size_t r = 0; r < kTileRows; ++r) row[r] = wb + (r0 + (r < rn ? r : 0)) * row_stride;  // spare lanes
    if (n < kRepackVectors) {
      K::run_in_place(row, row_stride, rn, act, act_stride, n, cols, out + r0, out_stride);
      continue;
    }
    if (packed.size() < blocks * K::kPackedBlock) packed.resize(blocks * K::kPackedBlock);
    K::repack(row, blocks, packed.data());
    std::size_t t = 0;
    for (; t + kT <= n; t += kT) {
      K::template run_packed<kT>(packed.data(), rn, act + t * act_stride, act_stride, cols, out + t * out_stride + r0,
                                 out_stride);
    }
    for (; t < n; ++t) {
      K::template run_packed<1>(packed.data(), rn, act + t * act_stride, act_stride, cols, out + t * out_stride + r0,
                                out_stride);
    }
  }
}

// --- super-block types (Q8_K activations) -----------------------------------------------------------------------

// Q4_K (Bits 4) and Q5_K (5): the integer sums of the eight sub-blocks of 32 weighted by their scales; the mins
// through the activations' sums of each sub-block.
template <int Bits>
struct K4Tile {
  static constexpr std::size_t bytes = Bits == 4 ? kQ4_KBytes : kQ5_KBytes;
  template <int R, int T>
  MMSB_TILE static void run(const TileArgs& a) {
    const std::size_t blocks = a.cols / kSuperBlock;
    const BlockQ8K* y[T];
    MMSB_UNROLL
    for (int t = 0; t < T; ++t) y[t] = reinterpret_cast<const BlockQ8K*>(a.act + t * a.act_stride);
    const __m256i low4 = _mm256_set1_epi8(0x0F), one = _mm256_set1_epi8(1), ones16 = _mm256_set1_epi16(1);
    __m256 acc[R][T];
    MMSB_UNROLL
    for (int r = 0; r < R; ++r) {
      MMSB_UNROLL
      for (int t = 0; t < T; ++t) acc[r][t] = _mm256_setzero_ps();
    }
    for (std::size_t i = 0; i < blocks; ++i) {
      alignas(16) std::uint8_t sm[R][16];
      const std::uint8_t* blk[R];
      MMSB_UNROLL
      for (int r = 0; r < R; ++r) {
        blk[r] = a.w + r * a.row_stride + i * bytes;
        for (std::size_t line = 0; line < bytes; line += 64) prefetch_next_tile(blk[r] + line, R * a.row_stride);
        unpack_k4_scales(blk[r] + 4, sm[r]);
      }
      __m256i isum[R][T];
      MMSB_UNROLL
      for (int r = 0; r < R; ++r) {
        MMSB_UNROLL
        for (int t = 0; t < T; ++t) isum[r][t] = _mm256_setzero_si256();
      }
      MMSB_UNROLL
      for (int c = 0; c < 4; ++c) {
        MMSB_UNROLL
        for (int r = 0; r < R; ++r) {
          const __m256i raw = load32(blk[r] + (Bits == 4 ? 16 : 48) + 32 * c);
          __m256i lo = _mm256_and_si256(raw, low4);
          __m256i hi = _mm256_and_si256(_mm256_srli_epi16(raw, 4), low4);
          if constexpr (Bits == 5) {
            const __m256i qh = load32(blk[r] + 16);
            lo = _mm256_or_si256(lo, _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 2 * c), one), 4));
            hi = _mm256_or_si256(hi, _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 2 * c + 1), one), 4));
          }
          const __m256i scale_lo = _mm256_set1_epi16(sm[r][2 * c]), scale_hi = _mm256_set1_epi16(sm[r][2 * c + 1]);
          MMSB_UNROLL
          for (int t = 0; t < T; ++t) {
            const __m256i p_lo = _mm256_madd_epi16(_mm256_maddubs_epi16(lo, load32(y[t][i].qs + 64 * c)), scale_lo);
            const __m256i p_hi =
                _mm256_madd_epi16(_mm256_maddubs_epi16(hi, load32(y[t][i].qs + 64 * c + 32)), scale_hi);
            isum[r][t] = _mm256_add_epi32(isum[r][t], _mm256_add_epi32(p_lo, p_hi));
          }
        }
      }
      MMSB_UNROLL
      for (int t = 0; t < T; ++t) {
        const __m256i pairs = _mm256_madd_epi16(load32(y[t][i].bsums), ones16);  // the sums of each sub-block of 32
        MMSB_UNROLL
        for (int r = 0; r < R; ++r) {
          const __m256i mins = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(sm[r] + 8)));
          const __m256i msum = _mm256_mullo_epi32(mins, pairs);
          acc[r][t] =
              _mm256_fmadd_ps(_mm256_set1_ps(y[t][i].d * half(blk[r])), _mm256_cvtepi32_ps(isum[r][t]), acc[r][t]);
          acc[r][t] =
              _mm256_fnmadd_ps(_mm256_set1_ps(y[t][i].d * half(blk[r] + 2)), _mm256_cvtepi32_ps(msum), acc[r][t]);
        }
      }
    }
    MMSB_UNROLL
    for (int r = 0; r < R; ++r) {
      MMSB_UNROLL
      for (int t = 0; t < T; ++t) a.out[t * a.out_stride + r] = hsum(acc[r][t]);
    }
  }
};

// Q6_K: sixteen sub-blocks of 16 with int8 scales; the stored values are q + 32. Per super-block i, row r and
// vector t the integer sums of the block in 8 lanes (lane j: bytes 4j..4j+3 of every group of 32 values, each
// weighted by its sub-block's scale, less 32 x the scaled activation sums of sub-blocks 2j and 2j+1).
template <int R, int T>
MMSB_TILE __attribute__((always_inline)) inline void q6_k_block_sums(const std::uint8_t* const* blk,
                                                                     const BlockQ8K* const* y, std::size_t i,
                                                                     __m256i (&isum)[R][T]) {
  MMSB_UNROLL
  for (int r = 0; r < R; ++r) {
    MMSB_UNROLL
    for (int t = 0; t < T; ++t) isum[r][t] = _mm256_setzero_si256();
  }
  MMSB_UNROLL
  for (int h = 0; h < 2; ++h) {
    MMSB_UNROLL
    for (int r = 0; r < R; ++r) {
      const std::uint8_t* b = blk[r];
      const auto* scales = reinterpret_cast<const std::int8_t*>(b + 192);
      __m256i q[4];
      unpack_q6_k_half(b, h, q);
      MMSB_UNROLL
      for (int g = 0; g < 4; ++g) {
        // 32 values = two sub-blocks of 16: the low 8 int16 lanes take the first scale, the high 8 the second.
        const int s = 8 * h + 2 * g;
        const __m256i scale = _mm256_set_m128i(_mm_set1_epi16(scales[s + 1]), _mm_set1_epi16(scales[s]));
        MMSB_UNROLL
        for (int t = 0; t < T; ++t) {
          const __m256i p = _mm256_maddubs_epi16(q[g], load32(y[t][i].qs + 128 * h + 32 * g));
          isum[r][t] = _mm256_add_epi32(isum[r][t], _mm256_madd_epi16(p, scale));
        }
      }
    }
  }
  MMSB_UNROLL
  for (int r = 0; r < R; ++r) {
    const __m256i scales16 = _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(blk[r] + 192)));
    MMSB_UNROLL
    for (int t = 0; t < T; ++t) {
      // The stored values are q + 32: subtract 32 x the scaled block sums.
      const __m256i offset = _mm256_madd_epi16(scales16, load32(y[t][i].bsums));
      isum[r][t] = _mm256_sub_epi32(isum[r][t], _mm256_slli_epi32(offset, 5));
    }
  }
}

// The AVX2 level: each lane of the block sums converted and fused into its own accumulator lane, the 8 lanes summed
// at the end.
struct Q6KTile {
  template <int R, int T>
  MMSB_TILE static void run(const TileArgs& a) {
    const std::size_t blocks = a.cols / kSuperBlock;
    const BlockQ8K* y[T];
    MMSB_UNROLL
    for (int t = 0; t < T; ++t) y[t] = reinterpret_cast<const BlockQ8K*>(a.act + t * a.act_stride);
    __m256 acc[R][T];
    MMSB_UNROLL
    for (int r = 0; r < R; ++r) {
      MMSB_UNROLL
      for (int t = 0; t < T; ++t) acc[r][t] = _mm256_setzero_ps();
    }
    for (std::size_t i = 0; i < blocks; ++i) {
      const std::uint8_t* blk[R];
      MMSB_UNROLL
      for (int r = 0; r < R; ++r) {
        blk[r] = a.w + r * a.row_stride + i * kQ6_KBytes;
        for (std::size_t line = 0; line < kQ6_KBytes; line += 64) prefetch_next_tile(blk[r] + line, R * a.row_stride);
      }
      __m256i isum[R][T];
      q6_k_block_sums<R, T>(blk, y, i, isum);
      MMSB_UNROLL
      for (int r = 0; r < R; ++r) {
        MMSB_UNROLL
        for (int t = 0; t < T; ++t) {
          acc[r][t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum[r][t]), _mm256_set1_ps(y[t][i].d * half(blk[r] + 208)),
                                      acc[r][t]);
        }
      }
    }
    MMSB_UNROLL
    for (int r = 0; r < R; ++r) {
      MMSB_UNROLL
      for (int t = 0; t < T; ++t) a.out[t * a.out_stride + r] = hsum(acc[r][t]);
    }
  }
};

// Lane r of the result = the sum of the 8 lanes of v[r] (r < R <= 4; lanes past R are 0): exact.
template <int R>
MMSB_TILE inline __m128i reduce_rows(const __m256i* v) {
  const __m256i zero = _mm256_setzero_si256();
  const __m256i h01 = _mm256_hadd_epi32(v[0], R > 1 ? v[1] : zero);
  const __m256i h23 = R > 2 ? _mm256_hadd_epi32(v[2], R > 3 ? v[3] : zero) : zero;
  const __m256i h = _mm256_hadd_epi32(h01, h23);
  return _mm_add_epi32(_mm256_castsi256_si128(h), _mm256_extracti128_si256(h, 1));
}

// The f16 scales (`d`, at byte 208) of R rows' Q6_K super-blocks, one per 16-bit lane. Built in a register: four
// scalar stores read back as one vector would stall store forwarding every super-block. The lane index of each
// insert is a constant by construction, as the instruction requires even in an unoptimized build.
template <int R>
MMSB_TILE inline __m128i super_block_scales(const std::uint8_t* const* blk) {
  auto scale = [blk](int r) {
    std::uint16_t h;
    std::memcpy(&h, blk[r] + 208, 2);
    return h;
  };
  auto insert_all = [scale]<int... r>(std::integer_sequence<int, r...>) {
    __m128i halves = _mm_setzero_si128();
    ((halves = _mm_insert_epi16(halves, scale(r), r)), ...);
    return halves;
  };
  return insert_all(std::make_integer_sequence<int, R>{});
}

// The AVX-512 level with VNNI, few vectors: the lanes of each block's sums first reduced to the super-block's exact
// integer, then one fused multiply-add per super-block (row r in lane r), as Q6KBatch16 computes it for batches.
struct Q6KExactTile {
  template <int R, int T>
  MMSB_TILE static void run(const TileArgs& a) {
    const std::size_t blocks = a.cols / kSuperBlock;
    const BlockQ8K* y[T];
    __m128 acc[T];
    MMSB_UNROLL
    for (int t = 0; t < T; ++t) {
      y[t] = reinterpret_cast<const BlockQ8K*>(a.act + t * a.act_stride);
      acc[t] = _mm_setzero_ps();
    }
    for (std::size_t i = 0; i < blocks; ++i) {
      const std::uint8_t* blk[R];
      MMSB_UNROLL
      for (int r = 0; r < R; ++r) {
        blk[r] = a.w + r * a.row_stride + i * kQ6_KBytes;
        for (std::size_t line = 0; line < kQ6_KBytes; line += 64) prefetch_next_tile(blk[r] + line, R * a.row_stride);
      }
      const __m128 dw = _mm_cvtph_ps(super_block_scales<R>(blk));
      __m256i isum[R][T];
      q6_k_block_sums<R, T>(blk, y, i, isum);
      MMSB_UNROLL
      for (int t = 0; t < T; ++t) {
        __m256i rows[R];
        MMSB_UNROLL
        for (int r = 0; r < R; ++r) rows[r] = isum[r][t];
        const __m128 scale = _mm_mul_ps(dw, _mm_set1_ps(y[t][i].d));
        acc[t] = _mm_fmadd_ps(_mm_cvtepi32_ps(reduce_rows<R>(rows)), scale, acc[t]);
      }
    }
    MMSB_UNROLL
    for (int t = 0; t < T; ++t) {
      alignas(16) float lanes[4];
      _mm_store_ps(lanes, acc[t]);
      MMSB_UNROLL
      for (int r = 0; r < R; ++r) a.out[t * a.out_stride + r] = lanes[r];
    }
  }
};

// --- the driver ----------------------------------------------------------------------------------------------------

// Every tile shape up to RG x TG, indexed by (rows - 1) * TG + (vectors - 1).
template <class Tile, int RG, int TG, std::size_t... I>
constexpr std::array<TileFn, sizeof...(I)> tile_table(std::index_sequence<I...>) {
  return {&Tile::template run<static_cast<int>(I / TG) + 1, static_cast<int>(I % TG) + 1>...};
}

// Decoding (one vector) runs tiles of RD rows; batches run tiles of RG rows x TG vectors over chunks of vectors
// whose activations fit in about half of L2, so that a chunk is read from cache for every tile of rows.
template <class Tile, int RD, int RG, int TG>
void matmul_tiles(const std::byte* w, std::size_t row_stride, std::size_t rows, const std::byte* act,
                  std::size_t act_stride, std::size_t n, std::size_t cols, float* out, std::size_t out_stride) {
  static constexpr auto tiles = tile_table<Tile, RG, TG>(std::make_index_sequence<RG * TG>());
  const auto* wb = reinterpret_cast<const std::uint8_t*>(w);
  if (n == 1) {
    std::size_t r = 0;
    for (; r + RD <= rows; r += RD) {
      Tile::template run<RD, 1>({wb + r * row_stride, row_stride, act, act_stride, cols, out + r, out_stride});
    }
    for (; r < rows; ++r) {
      Tile::template run<1, 1>({wb + r * row_stride, row_stride, act, act_stride, cols, out + r, out_stride});
    }
    return;
  }
  constexpr std::size_t kChunkBytes = 192 * 1024;
  const std::size_t chunk = std::max<std::size_t>(TG, kChunkBytes / act_stride / TG * TG);
  for (std::size_t t0 = 0; t0 < n; t0 += chunk) {
    const std::size_t t_end = std::min(n, t0 + chunk);
    for (std::size_t r = 0; r < rows; r += RG) {
      const std::size_t rn = std::min<std::size_t>(RG, rows - r);
      for (std::size_t t = t0; t < t_end; t += TG) {
        const std::size_t tn = std::min<std::size_t>(TG, t_end - t);
        tiles[(rn - 1) * TG + (tn - 1)]({wb + r * row_stride, row_stride, act + t * act_stride, act_stride, cols,
                                         out + t * out_stride + r, out_stride});
      }
    }
  }
}

// F32 and F16: an F32 batch by the cache-blocked products, an F16 batch and one vector by the tiles. Rows
// shorter than 2 KiB are read four at a time with the next tile asked for in address order: eight such rows side
// by side, prefetched row by row, came from memory at 11-12 GB/s against 15-16 (F16, 512 and 768 columns); longer
// rows stream best eight at a time, prefetched row by row (17-18 GB/s against 14-16).
template <bool Half>
void matmul_float(const std::byte* w, std::size_t row_stride, std::size_t rows, const std::byte* act,
                  std::size_t act_stride, std::size_t n, std::size_t cols, float* out, std::size_t out_stride) {
  if constexpr (Half) {
    act = widen_batch(act, act_stride, n, cols);
    act_stride = cols * sizeof(float);
    if (n > 1)
      return matmul_tiles<FloatTile<true>, 8, 4, 3>(w, row_stride, rows, act, act_stride, n, cols, out, out_stride);
  } else if (n > 1) {
    return FloatGemm::run(w, row_stride, rows, act, act_stride, n, cols, out, out_stride);
  }
  if (row_stride < 2048) {
    return matmul_tiles<FloatTile<Half, true>, 4, 4, 3>(w, row_stride, rows, act, act_stride, n, cols, out, out_stride);
  }
  matmul_tiles<FloatTile<Half>, 8, 4, 3>(w, row_stride, rows, act, act_stride, n, cols, out, out_stride);
}

// --- AVX-512: F32 and F16 weights (the AVX-512 level) --------------------------------------------------------

#define MMSB_TILE512 __attribute__((target("avx512f,avx512bw,avx512vl,avx2,fma,f16c")))
// GCC 12's AVX-512 intrinsics pass an undefined register as the unused merge source, which it then reports as
// read uninitialized wherever they are inlined.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

// As FloatTile with 16 lanes: per step of 16 columns one fused multiply-add into the (row, vector) accumulator;
// the columns past the last multiple of 16 as one more step whose missing lanes are loaded as zeros (adding w * x =
// 0 leaves a lane as it was); then the 16 lanes folded to 8 (low half + high half) and hsum(). The same operations
// for every tile shape, so one vector, batches and row ranges give the same bits (F32 batches run FloatGemm512,
// with the same operations per result). Half the instructions of the 8-lane tile per product: measured here,
// 512-bit fused multiply-adds ran at about 1.6 times the rate of 256-bit ones.
template <bool Half, bool Linear = false>
struct FloatTile512 {
  static constexpr std::size_t value_bytes = Half ? 2 : 4, line_values = 64 / value_bytes;
  MMSB_TILE512 static __m512 load(const std::uint8_t* row, std::size_t k) {
    if constexpr (Half) {
      return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(row + 2 * k)));
    } else {
      return _mm512_loadu_ps(reinterpret_cast<const float*>(row) + k);
    }
  }
  MMSB_TILE512 static __m512 load(const std::uint8_t* row, std::size_t k, __mmask16 m) {
    if constexpr (Half) {
      return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, row + 2 * k));
    } else {
      return _mm512_maskz_loadu_ps(m, reinterpret_cast<const float*>(row) + k);
    }
  }
  // Eight values of a row from column k (a quarter of a 16-lane load), masked.
  MMSB_TILE512 static __m256 load8(const std::uint8_t* row, std::size_t k, __mmask8 m) {
    if constexpr (Half) {
      return _mm256_cvtph_ps(_mm_maskz_loadu_epi16(m, row + 2 * k));
    } else {
      return _mm256_maskz_loadu_ps(m, reinterpret_cast<const float*>(row) + k);
    }
  }
  MMSB_TILE512 static float fold(__m512 v) {
    const __m256 hi = _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1));
    return hsum(_mm256_add_ps(_mm512_castps512_ps256(v), hi));
  }
  // The line of row r to ask for at column k (a multiple of line_values): as FloatTile<Half, Linear>.
  template <int R>
  MMSB_TILE512 static void prefetch(const TileArgs& a, int r, std::size_t k) {
    if constexpr (Linear) {
      const std::size_t line = k / line_values * R + static_cast<std::size_t>(r);
      _mm_prefetch(reinterpret_cast<const char*>(a.w + R * a.row_stride + line * 64), _MM_HINT_T0);
    } else {
      prefetch_next_tile(a.w + r * a.row_stride + value_bytes * k, R * a.row_stride);
    }
  }
  // One vector (decoding, a batch's last): the 16 lanes as two 256-bit halves, the same operations lane by lane
  // and the same fold, without the 512-bit instructions (measured on F16: decoding lost 3-4% with them; a product
  // of one vector is bound by memory, not by the multiply-adds).
  template <int R>
  MMSB_TILE512 static void run_one(const TileArgs& a) {
    const float* x = reinterpret_cast<const float*>(a.act);
    __m256 lo[R], hi[R];
    MMSB_UNROLL
    for (int r = 0; r < R; ++r) lo[r] = hi[r] = _mm256_setzero_ps();
    std::size_t k = 0;
    for (; k + 16 <= a.cols; k += 16) {
      if (k % line_values == 0) {
        MMSB_UNROLL
        for (int r = 0; r < R; ++r) prefetch<R>(a, r, k);
      }
      const __m256 x_lo = _mm256_loadu_ps(x + k), x_hi = _mm256_loadu_ps(x + k + 8);
      MMSB_UNROLL
      for (int r = 0; r < R; ++r) {
        const std::uint8_t* row = a.w + r * a.row_stride;
        lo[r] = _mm256_fmadd_ps(FloatTile<Half>::load(row, k), x_lo, lo[r]);
        hi[r] = _mm256_fmadd_ps(FloatTile<Half>::load(row, k + 8), x_hi, hi[r]);
      }
    }
    if (k < a.cols) {
      const unsigned m = (1u << (a.cols - k)) - 1;
      const auto m_lo = static_cast<__mmask8>(m & 0xFF), m_hi = static_cast<__mmask8>(m >> 8);
      const __m256 x_lo = _mm256_maskz_loadu_ps(m_lo, x + k), x_hi = _mm256_maskz_loadu_ps(m_hi, x + k + 8);
      MMSB_UNROLL
      for (int r = 0; r < R; ++r) {
        const std::uint8_t* row = a.w + r * a.row_stride;
        lo[r] = _mm256_fmadd_ps(load8(row, k, m_lo), x_lo, lo[r]);
        hi[r] = _mm256_fmadd_ps(load8(row, k + 8, m_hi), x_hi, hi[r]);
      }
    }
    MMSB_UNROLL
    for (int r = 0; r < R; ++r) a.out[r] = hsum(_mm256_add_ps(lo[r], hi[r]));
  }
  template <int R, int T>
  MMSB_TILE512 static void run(const TileArgs& a) {
    if constexpr (T == 1) return run_one<R>(a);
    const float* x[T];
    MMSB_UNROLL
    for (int t = 0; t < T; ++t) x[t] = reinterpret_cast<const float*>(a.act + t * a.act_stride);
    __m512 acc[R][T];
    MMSB_UNROLL
    for (int r = 0; r < R; ++r) {
      MMSB_UNROLL
      for (int t = 0; t < T; ++t) acc[r][t] = _mm512_setzero_ps();
    }
    std::size_t k = 0;
    for (; k + 16 <= a.cols; k += 16) {
      if (k % line_values == 0) {
        MMSB_UNROLL
        for (int r = 0; r < R; ++r) prefetch<R>(a, r, k);
      }
      __m512 xv[T];
      MMSB_UNROLL
      for (int t = 0; t < T; ++t) xv[t] = _mm512_loadu_ps(x[t] + k);
      MMSB_UNROLL
      for (int r = 0; r < R; ++r) {
        const __m512 wv = load(a.w + r * a.row_stride, k);
        MMSB_UNROLL
        for (int t = 0; t < T; ++t) acc[r][t] = _mm512_fmadd_ps(wv, xv[t], acc[r][t]);
      }
    }
    if (k < a.cols) {
      const __mmask16 m = static_cast<__mmask16>((1u << (a.cols - k)) - 1);
      MMSB_UNROLL
      for (int r = 0; r < R; ++r) {
        const __m512 wv = load(a.w + r * a.row_stride, k, m);
        MMSB_UNROLL
        for (int t = 0; t < T; ++t) acc[r][t] = _mm512_fmadd_ps(wv, _mm512_maskz_loadu_ps(m, x[t] + k), acc[r][t]);
      }
    }
    MMSB_UNROLL
    for (int r = 0; r < R; ++r) {
      MMSB_UNROLL
      for (int t = 0; t < T; ++t) a.out[t * a.out_stride + r] = fold(acc[r][t]);
    }
  }
};

// `count` floats at a 64-byte boundary inside `buffer` (grown as needed): a 512-bit load from any other address
// spans two cache lines.
inline float* aligned_floats(std::vector<float>& buffer, std::size_t count) {
  constexpr std::size_t line_floats = 16;
  if (buffer.size() < count + line_floats) buffer.resize(count + line_floats);
  const auto address = reinterpret_cast<std::uintptr_t>(buffer.data());
  return buffer.data() + (64 - address % 64) % 64 / sizeof(float);
}

// Batches of F32 products at the AVX-512 level: FloatGemm's cache blocking (the vectors packed into a panel that
// stays in L2, a tile's weight rows in L1 for a column block while every tile of vectors passes over them) with
// FloatTile512's arithmetic per result: 16-lane steps, the columns past the last multiple of 16 as one more step
// with zeros in the missing lanes (the panel holds zeros there, the weights are loaded masked), then the fold.
// Tiles of 8 rows x 3 vectors: 24 accumulators, 3 vectors and a row in registers, and per step the 3 vectors'
// lines from L2 against 8 rows' from L1 (a tile of 4 x 6 would read twice the bytes from L2 per multiply-add).
struct FloatGemm512 {
  static constexpr int R = 8, T = 3;
  static constexpr std::size_t kStep = 16;
  // Column blocks of 512: a tile's weights (8 rows, 16 KiB) stay in L1 while the chunk's vectors pass.
  static constexpr std::size_t kBlockSteps = 32;
  // As FloatGemm: the panel of one column block at most 192 KiB; the accumulators of a row block (64 rows x 96
  // vectors x 64 bytes) beside it in L2.
  static constexpr std::size_t kSliceBytes = 192 * 1024, kRowBlock = 64;

  static std::size_t steps_of(std::size_t cols) { return (cols + kStep - 1) / kStep; }
  static __mmask16 tail_mask(std::size_t cols) {
    return static_cast<__mmask16>(cols % kStep == 0 ? 0xFFFF : (1u << (cols % kStep)) - 1);
  }

  // Vectors [0, n) into `panel`: tile i, step s, vector t at ((i * steps + s) * T + t) * 16, the lanes past the
  // last column zero.
  MMSB_TILE512 static void pack(const std::byte* act, std::size_t act_stride, std::size_t n, std::size_t cols,
                                float* panel) {
    const std::size_t steps = steps_of(cols);
    for (std::size_t t = 0; t < n; ++t) {
      const auto* x = reinterpret_cast<const float*>(act + t * act_stride);
      float* dst = panel + (t / T * steps * T + t % T) * kStep;
      for (std::size_t s = 0; s + 1 < steps; ++s) _mm512_storeu_ps(dst + s * T * kStep, _mm512_loadu_ps(x + s * kStep));
      if (steps > 0) {
        const std::size_t s = steps - 1;
        _mm512_storeu_ps(dst + s * T * kStep, _mm512_maskz_loadu_ps(tail_mask(cols), x + s * kStep));
      }
    }
  }

  // What one call of steps() covers: steps [s0, s1) of a tile of rows (its first row at `w`) and vectors (their
  // panel at `x`); the weights of step `last` (the final, maybe partial, step of a row) are loaded under
  // `last_mask`. The accumulators start at zero (`first`) or from `acc`; after a block that ends before `last`
  // they go back to `acc`, after the final one the results go to `out` (vector t's at out + t * out_stride).
  struct Block {
    const std::uint8_t* w;
    std::size_t row_stride;
    const float* x;
    std::size_t s0, s1, last;
    __mmask16 last_mask;
    bool first;
    float* acc;
    float* out;
    std::size_t out_stride;
  };

  // One step of the tile (weights under `mask`) into the accumulators.
  template <int RN, int TN>
  MMSB_TILE512 static void step(const Block& b, std::size_t s, const float* x, __mmask16 mask, __m512 (&acc)[RN][TN]) {
    __m512 xv[TN];
    MMSB_UNROLL
    for (int t = 0; t < TN; ++t) xv[t] = _mm512_loadu_ps(x + t * kStep);
    MMSB_UNROLL
    for (int r = 0; r < RN; ++r) {
      const std::uint8_t* row = b.w + r * b.row_stride;
      __m512 wv =
          mask == 0xFFFF ? FloatTile512<false>::load(row, s * kStep) : FloatTile512<false>::load(row, s * kStep, mask);
      // Loaded once into a register: GCC otherwise folds the load into each of the TN multiply-adds, and the
      // loads, not the multiply-adds, bound the tile (measured with an unaligned panel as well: 35 GFLOP/s
      // against 62 for the AVX2 tiles).
      __asm__("" : "+v"(wv));
      MMSB_UNROLL
      for (int t = 0; t < TN; ++t) acc[r][t] = _mm512_fmadd_ps(wv, xv[t], acc[r][t]);
    }
  }

  // The results of a tile: per vector, each row's accumulator folded (low half + high half, then hsum8's
  // additions, which are hsum's), the RN rows side by side in one store.
  template <int RN, int TN>
  MMSB_TILE512 static void write(const Block& b, const __m512 (&acc)[RN][TN]) {
    MMSB_UNROLL
    for (int t = 0; t < TN; ++t) {
      __m256 halves[8];
      MMSB_UNROLL
      for (int r = 0; r < 8; ++r) {
        const __m512 v = acc[r < RN ? r : 0][t];
        halves[r] =
            _mm256_add_ps(_mm512_castps512_ps256(v), _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1)));
      }
      _mm256_mask_storeu_ps(b.out + t * b.out_stride, static_cast<__mmask8>((1u << RN) - 1), hsum8(halves));
    }
  }

  template <int RN, int TN>
  MMSB_TILE512 static void steps(const Block& b) {
    static_assert(RN <= 8, "one store of 8 lanes per vector");
    __m512 acc[RN][TN];
    MMSB_UNROLL
    for (int r = 0; r < RN; ++r) {
      MMSB_UNROLL
      for (int t = 0; t < TN; ++t)
        acc[r][t] = b.first ? _mm512_setzero_ps() : _mm512_loadu_ps(b.acc + (r * TN + t) * kStep);
    }
    const std::size_t full_end = std::min(b.s1, b.last);
    const float* x = b.x;
    std::size_t s = b.s0;
    for (; s < full_end; ++s, x += T * kStep) step(b, s, x, 0xFFFF, acc);
    if (s < b.s1) step(b, s, x, b.last_mask, acc);  // s == last
    if (b.s1 > b.last) return write(b, acc);
    MMSB_UNROLL
    for (int r = 0; r < RN; ++r) {
      MMSB_UNROLL
      for (int t = 0; t < TN; ++t) _mm512_storeu_ps(b.acc + (r * TN + t) * kStep, acc[r][t]);
    }
  }
  using StepsFn = void (*)(const Block&);
  template <std::size_t... I>
  static constexpr std::array<StepsFn, sizeof...(I)> table(std::index_sequence<I...>) {
    return {&steps<static_cast<int>(I / T) + 1, static_cast<int>(I % T) + 1>...};
  }

  // Asks for a tile's worth of the next tile of rows' weights (R rows x `lines` lines from `next`), spread over
  // the tiles of vectors: one share of `per_tile` lines per call, from the position in `row`, `line`.
  MMSB_TILE512 static void prefetch_share(const std::uint8_t* next, std::size_t row_stride, std::size_t lines,
                                          std::size_t per_tile, std::size_t& row, std::size_t& line) {
    for (std::size_t j = 0; j < per_tile && row < R; ++j) {
      _mm_prefetch(reinterpret_cast<const char*>(next + row * row_stride + line * 64), _MM_HINT_T1);
      if (++line == lines) line = 0, ++row;
    }
  }

  // One chunk of n vectors (panel packed), all rows: blocks of kRowBlock rows, and in each, the column blocks in
  // order, every tile of rows of the block per column block (its accumulators in `acc` between blocks).
  MMSB_TILE512 static void chunk(const std::uint8_t* w, std::size_t row_stride, std::size_t rows, std::size_t n,
                                 std::size_t cols, const float* panel, float* acc, float* out, std::size_t out_stride) {
    static constexpr auto tiles = table(std::make_index_sequence<R * T>());
    const std::size_t steps = steps_of(cols), tile_floats = steps * T * kStep, vector_tiles = (n + T - 1) / T;
    Block b{w, row_stride, panel, 0, 0, steps - 1, tail_mask(cols), true, acc, out, out_stride};
    for (std::size_t rb = 0; rb < rows; rb += kRowBlock) {
      const std::size_t rb_end = std::min(rows, rb + kRowBlock);
      for (std::size_t s0 = 0; s0 < steps; s0 += kBlockSteps) {
        const std::size_t s1 = std::min(steps, s0 + kBlockSteps);
        for (std::size_t r = rb; r < rb_end; r += R) {
          const std::size_t rn = std::min<std::size_t>(R, rb_end - r);
          // The next tile's weights are asked for while this one computes, a few lines before each tile of
          // vectors (see FloatGemm::chunk); a step of a row is one cache line.
          const auto [next_r, next_s] = FloatGemm::next_tile<R, kBlockSteps>(r, rb_end, s0, steps, rb);
          const std::uint8_t* next = w + next_r * row_stride + next_s * kStep * sizeof(float);
          const std::size_t lines = std::min(kBlockSteps, steps - std::min(steps, next_s));
          const std::size_t per_tile = (R * lines + vector_tiles - 1) / vector_tiles;
          std::size_t pf_row = 0, pf_line = 0;
          for (std::size_t t = 0, i = 0; t < n; t += T, ++i) {
            prefetch_share(next, row_stride, lines, per_tile, pf_row, pf_line);
            b.w = w + r * row_stride;
            b.x = panel + i * tile_floats + s0 * T * kStep;
            b.s0 = s0, b.s1 = s1, b.first = s0 == 0;
            b.acc = acc + ((r - rb) / R * vector_tiles + i) * R * T * kStep;
            b.out = out + t * out_stride + r;
            tiles[(rn - 1) * T + (std::min<std::size_t>(T, n - t) - 1)](b);
          }
        }
      }
    }
  }

  static void run(const std::byte* w, std::size_t row_stride, std::size_t rows, const std::byte* act,
                  std::size_t act_stride, std::size_t n, std::size_t cols, float* out, std::size_t out_stride) {
    const std::size_t steps = steps_of(cols);
    if (steps == 0) {  // no columns: every product is 0, as the one-vector tiles give
      for (std::size_t t = 0; t < n; ++t) std::fill_n(out + t * out_stride, rows, 0.0f);
      return;
    }
    const std::size_t slice_bytes = std::min(steps, kBlockSteps) * kStep * sizeof(float);
    const std::size_t per_chunk = std::max<std::size_t>(T, kSliceBytes / slice_bytes / T * T);
    thread_local std::vector<float> panel_buffer;
    thread_local std::vector<float> acc_buffer;
    const std::size_t tiles = (std::min(n, per_chunk) + T - 1) / T;
    float* panel = aligned_floats(panel_buffer, tiles * T * steps * kStep);
    float* acc = aligned_floats(acc_buffer, (kRowBlock + R - 1) / R * tiles * R * T * kStep);
    for (std::size_t t0 = 0; t0 < n; t0 += per_chunk) {
      const std::size_t tn = std::min(per_chunk, n - t0);
      pack(act + t0 * act_stride, act_stride, tn, cols, panel);
      chunk(reinterpret_cast<const std::uint8_t*>(w), row_stride, rows, tn, cols, panel, acc, out + t0 * out_stride,
            out_stride);
    }
  }
};

constexpr std::size_t kHalf512ChunkBytes = 24 * 1024;  // half of L1, for the tile's rows beside

// The AVX-512 level: the vectors of F16 products widened to f32 once; one vector by the tiles (and prefetch
// orders) of matmul_float, F32 batches by FloatGemm512 and F16 batches by tiles of 4 rows x 6 vectors (24
// accumulators, the 6 vectors and a row in registers: 31 of the 32).
template <bool Half>
void matmul_float512(const std::byte* w, std::size_t row_stride, std::size_t rows, const std::byte* act,
                     std::size_t act_stride, std::size_t n, std::size_t cols, float* out, std::size_t out_stride) {
  if constexpr (Half) {
    act = widen_batch(act, act_stride, n, cols);
    act_stride = cols * sizeof(float);
  } else if (n > 1) {
    return FloatGemm512::run(w, row_stride, rows, act, act_stride, n, cols, out, out_stride);
  }
  if (n == 1 && row_stride < 2048) {
    return matmul_tiles<FloatTile512<Half, true>, 4, 4, 6>(w, row_stride, rows, act, act_stride, n, cols, out,
                                                           out_stride);
  }
  if (n == 1)
    return matmul_tiles<FloatTile512<Half>, 8, 4, 6>(w, row_stride, rows, act, act_stride, n, cols, out, out_stride);
  // Chunks of vectors that stay in L1 while every tile of rows passes over them (measured: 93 GFLOP/s at 512 x 512
  // with 12 vectors against 70 with the 65 of a prompt wave read from L2).
  static constexpr auto tiles = tile_table<FloatTile512<true>, 4, 6>(std::make_index_sequence<24>());
  const auto* wb = reinterpret_cast<const std::uint8_t*>(w);
  const std::size_t chunk = std::max<std::size_t>(6, kHalf512ChunkBytes / act_stride / 6 * 6);
  for (std::size_t t0 = 0; t0 < n; t0 += chunk) {
    const std::size_t t_end = std::min(n, t0 + chunk);
    for (std::size_t r = 0; r < rows; r += 4) {
      const std::size_t rn = std::min<std::size_t>(4, rows - r);
      for (std::size_t t = t0; t < t_end; t += 6) {
        const std::size_t tn = std::min<std::size_t>(6, t_end - t);
        tiles[(rn - 1) * 6 + (tn - 1)]({wb + r * row_stride, row_stride, act + t * act_stride, act_stride, cols,
                                        out + t * out_stride + r, out_stride});
      }
    }
  }
}
// --- AVX-512 VNNI: batches of the 32-value block types -----------------------------------------------------------

#define MMSB_VNNI __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")))
constexpr std::size_t kVnniRows = 16;

// Block8's batch arithmetic with sixteen rows per 512-bit register and the integer sums by vpdpbusd (unsigned
// weight bytes times signed activation bytes, four products summed into each 32-bit lane without saturation): per
// block 8 instructions for 16 rows x 32 columns of one vector, against about 30 for Block8's 8 rows. Signed Q8_0
// weights become unsigned by adding 128 (w ^ 0x80), and 128 x the activation block's sum comes off as the offset of
// Q4_0 / Q5_0 does. The sums S are exact integers either way and each lane then takes Block8::accumulate's float
// operations in the same order, so every result is the bits of Block8's (of the one-vector product too).
template <class B>
struct Block16 {
  static constexpr bool affine = B::kind == Stored::Affine;
  static constexpr std::uint32_t offset = B::kind == Stored::Signed ? 128 : static_cast<std::uint32_t>(B::offset);
  // Per block: 8 registers of 4 bytes from each of the 16 rows (bytes 4k..4k+3 of every row in register k), then
  // the 16 scales (and offsets, Affine) as floats.
  static constexpr std::size_t kPackedBlock = 8 * 64 + (affine ? 2 : 1) * 64;

  MMSB_VNNI static __m256i unsigned_values(const std::uint8_t* blk) {
    const __m256i v = B::values(blk);
    return B::kind == Stored::Signed ? _mm256_xor_si256(v, _mm256_set1_epi8(static_cast<char>(0x80))) : v;
  }

  MMSB_VNNI static void repack(const std::uint8_t* const* row, std::size_t blocks, std::byte* packed) {
    for (std::size_t b = 0; b < blocks; ++b, packed += kPackedBlock) {
      __m256i lo[8], hi[8];
      MMSB_UNROLL
      for (std::size_t r = 0; r < 8; ++r) {
        lo[r] = unsigned_values(row[r] + b * B::bytes);
        hi[r] = unsigned_values(row[r + 8] + b * B::bytes);
      }
      transpose8(lo);
      transpose8(hi);
      MMSB_UNROLL
      for (std::size_t k = 0; k < 8; ++k) {
        _mm512_store_si512(packed + 64 * k, _mm512_inserti64x4(_mm512_castsi256_si512(lo[k]), hi[k], 1));
      }
      auto* scales = reinterpret_cast<float*>(packed + 512);
      _mm256_store_ps(scales, halves8(row, b * B::bytes));
      _mm256_store_ps(scales + 8, halves8(row + 8, b * B::bytes));
      if constexpr (affine) {
        _mm256_store_ps(scales + 16, halves8(row, b * B::bytes + 2));
        _mm256_store_ps(scales + 24, halves8(row + 8, b * B::bytes + 2));
      }
    }
  }

  // T vectors against a repacked tile of `rows` (<= 16) rows; `ahead`, when not null, is the next tile's weights,
  // asked for a share per block.
  template <int T>
  MMSB_VNNI static void run_packed(const std::byte* packed, std::size_t rows, const std::byte* act,
                                   std::size_t act_stride, std::size_t cols, float* out, std::size_t out_stride,
                                   const std::uint8_t* ahead) {
    Q8Vector x[T];
    __m512 acc[T], offsets[T];
    MMSB_UNROLL
    for (int t = 0; t < T; ++t) {
      x[t] = q8_vector(act + t * act_stride, cols);
      acc[t] = offsets[t] = _mm512_setzero_ps();
    }
    for (std::size_t b = 0; b < cols / kBlock; ++b, packed += kPackedBlock) {
      if (ahead) {
        for (std::size_t o = 0; o < kVnniRows * B::bytes; o += 64)
          _mm_prefetch(reinterpret_cast<const char*>(ahead + b * kVnniRows * B::bytes + o), _MM_HINT_T0);
      }
      __m512i w[8];
      MMSB_UNROLL
      for (std::size_t k = 0; k < 8; ++k) w[k] = _mm512_load_si512(packed + 64 * k);
      const __m512 dw = _mm512_load_ps(packed + 512);
      const __m512 mw = affine ? _mm512_load_ps(packed + 576) : _mm512_setzero_ps();
      MMSB_UNROLL
      for (int t = 0; t < T; ++t) {
        // Unsigned, so a garbage activation sum wraps as the lanes do (Block8::accumulate).
        __m512i s = _mm512_set1_epi32(static_cast<std::int32_t>(0u - offset * static_cast<std::uint32_t>(x[t].sum[b])));
        const std::int8_t* xq = x[t].q + b * kBlock;
        MMSB_UNROLL
        for (std::size_t k = 0; k < 8; ++k) {
          s = _mm512_dpbusd_epi32(
              s, w[k],
              _mm512_set1_epi32(static_cast<int>(load_u32(reinterpret_cast<const std::uint8_t*>(xq) + 4 * k))));
        }
        acc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s), _mm512_mul_ps(dw, _mm512_set1_ps(x[t].d[b])), acc[t]);
        if constexpr (affine) {
          offsets[t] = _mm512_fmadd_ps(mw, _mm512_set1_ps(x[t].d[b] * static_cast<float>(x[t].sum[b])), offsets[t]);
        }
      }
    }
    const __mmask16 lanes = static_cast<__mmask16>((1u << rows) - 1);
    MMSB_UNROLL
    for (int t = 0; t < T; ++t) {
      if constexpr (affine) acc[t] = _mm512_add_ps(acc[t], offsets[t]);
      _mm512_mask_storeu_ps(out + t * out_stride, lanes, acc[t]);
    }
  }
};

// Vectors per tile of the VNNI kernels: 8 accumulators and 8 weight registers.
constexpr std::size_t kVnniVectors = 8;

// The last tile of vectors of a batch, fewer than kVnniVectors, against a repacked tile of 16 rows.
template <class K, std::size_t... T>
void run_packed16_tail(std::size_t tn, const std::byte* packed, std::size_t rows, const std::byte* act,
                       std::size_t act_stride, std::size_t cols, float* out, std::size_t out_stride,
                       std::index_sequence<T...>) {
  static constexpr decltype(&K::template run_packed<1>) fns[] = {&K::template run_packed<T + 1>...};
  fns[tn - 1](packed, rows, act, act_stride, cols, out, out_stride, nullptr);
}

// The driver of the 16-row repacked kernels (K: Block16<B>, Q6KBatch16): the 16 rows of a tile are repacked once
// into a 64-byte aligned per-thread buffer and every vector of the batch passes over them; the first tile of
// vectors asks for the next tile's rows, which are contiguous when the rows are (row_stride = blocks x bytes).
template <class K>
void matmul_repacked16(const std::byte* w, std::size_t row_stride, std::size_t rows, const std::byte* act,
                       std::size_t act_stride, std::size_t n, std::size_t cols, std::size_t block_values,
                       std::size_t block_bytes, float* out, std::size_t out_stride) {
  thread_local std::vector<float> buffer;
  const std::size_t blocks = cols / block_values;
  auto* packed = reinterpret_cast<std::byte*>(aligned_floats(buffer, blocks * K::kPackedBlock / sizeof(float)));
  const auto* wb = reinterpret_cast<const std::uint8_t*>(w);
  for (std::size_t r0 = 0; r0 < rows; r0 += kVnniRows) {
    const std::size_t rn = std::min(kVnniRows, rows - r0);
    const std::uint8_t* row[kVnniRows];
    for (std::size_t r = 0; r < kVnniRows; ++r) row[r] = wb + (r0 + (r < rn ? r : 0)) * row_stride;  // spare lanes
    K::repack(row, blocks, packed);
    const std::uint8_t* ahead =
        r0 + kVnniRows < rows && row_stride == blocks * block_bytes ? wb + (r0 + kVnniRows) * row_stride : nullptr;
    std::size_t t = 0;
    for (; t + kVnniVectors <= n; t += kVnniVectors, ahead = nullptr) {
      K::template run_packed<kVnniVectors>(packed, rn, act + t * act_stride, act_stride, cols,
                                           out + t * out_stride + r0, out_stride, ahead);
    }
    if (t < n) {
      run_packed16_tail<K>(n - t, packed, rn, act + t * act_stride, act_stride, cols, out + t * out_stride + r0,
                           out_stride, std::make_index_sequence<kVnniVectors - 1>());
    }
  }
}

// Batches by Block16 (few vectors by Block8's in-place products, the same bits).
template <class B>
void matmul_block16(const std::byte* w, std::size_t row_stride, std::size_t rows, const std::byte* act,
                    std::size_t act_stride, std::size_t n, std::size_t cols, float* out, std::size_t out_stride) {
  if (n < kRepackVectors) return matmul_block8<B>(w, row_stride, rows, act, act_stride, n, cols, out, out_stride);
  matmul_repacked16<Block16<B>>(w, row_stride, rows, act, act_stride, n, cols, kBlock, B::bytes, out, out_stride);
}

// Q6_K batches: 16 rows repacked as Block16 repacks its blocks (per group of 4 columns, 4 bytes of each row; here
// the unsigned stored values q + 32, 0..63), then per sub-block of 16 columns 4 vpdpbusd from 32 x the negated
// activation sum of the sub-block on, times the rows' scales (vpmulld), summed into the exact integer of the
// super-block, and one fused multiply-add per super-block: Q6KExactTile's arithmetic (the one-vector product).
struct Q6KBatch16 {
  // Per super-block: 64 groups of 64 bytes, then the 16 sub-blocks' scales as 16 int32 each, then d as 16 floats.
  static constexpr std::size_t kScales = 64 * 64, kD = kScales + 16 * 64, kPackedBlock = kD + 64;

  MMSB_VNNI static void repack(const std::uint8_t* const* row, std::size_t blocks, std::byte* packed) {
    alignas(32) std::uint8_t values[kVnniRows][kSuperBlock];
    for (std::size_t i = 0; i < blocks; ++i, packed += kPackedBlock) {
      const std::uint8_t* blk[kVnniRows];
      for (std::size_t r = 0; r < kVnniRows; ++r) {
        blk[r] = row[r] + i * kQ6_KBytes;
        for (int h = 0; h < 2; ++h) {
          __m256i q[4];
          unpack_q6_k_half(blk[r], h, q);
          for (int g = 0; g < 4; ++g)
            _mm256_store_si256(reinterpret_cast<__m256i*>(values[r] + 128 * h + 32 * g), q[g]);
        }
      }
      for (std::size_t c = 0; c < kSuperBlock / 32; ++c) {
        __m256i lo[8], hi[8];
        MMSB_UNROLL
        for (std::size_t r = 0; r < 8; ++r) {
          lo[r] = _mm256_load_si256(reinterpret_cast<const __m256i*>(values[r] + 32 * c));
          hi[r] = _mm256_load_si256(reinterpret_cast<const __m256i*>(values[r + 8] + 32 * c));
        }
        transpose8(lo);
        transpose8(hi);
        MMSB_UNROLL
        for (std::size_t k = 0; k < 8; ++k) {
          _mm512_store_si512(packed + 64 * (8 * c + k), _mm512_inserti64x4(_mm512_castsi256_si512(lo[k]), hi[k], 1));
        }
      }
      auto* scales = reinterpret_cast<std::int32_t*>(packed + kScales);
      for (std::size_t s = 0; s < 16; ++s) {
        for (std::size_t r = 0; r < kVnniRows; ++r) scales[16 * s + r] = static_cast<std::int8_t>(blk[r][192 + s]);
      }
      auto* d = reinterpret_cast<float*>(packed + kD);
      _mm256_store_ps(d, halves8(blk, 208));
      _mm256_store_ps(d + 8, halves8(blk + 8, 208));
    }
  }

  template <int T>
  MMSB_VNNI static void run_packed(const std::byte* packed, std::size_t rows, const std::byte* act,
                                   std::size_t act_stride, std::size_t cols, float* out, std::size_t out_stride,
                                   const std::uint8_t* ahead) {
    const BlockQ8K* y[T];
    __m512 acc[T];
    MMSB_UNROLL
    for (int t = 0; t < T; ++t) {
      y[t] = reinterpret_cast<const BlockQ8K*>(act + t * act_stride);
      acc[t] = _mm512_setzero_ps();
    }
    for (std::size_t i = 0; i < cols / kSuperBlock; ++i, packed += kPackedBlock) {
      if (ahead) {
        for (std::size_t o = 0; o < kVnniRows * kQ6_KBytes; o += 64)
          _mm_prefetch(reinterpret_cast<const char*>(ahead + i * kVnniRows * kQ6_KBytes + o), _MM_HINT_T0);
      }
      __m512i sum[T];
      MMSB_UNROLL
      for (int t = 0; t < T; ++t) sum[t] = _mm512_setzero_si512();
      for (std::size_t s = 0; s < 16; ++s) {
        __m512i w[4];
        MMSB_UNROLL
        for (std::size_t k = 0; k < 4; ++k) w[k] = _mm512_load_si512(packed + 64 * (4 * s + k));
        const __m512i scale = _mm512_load_si512(packed + kScales + 64 * s);
        MMSB_UNROLL
        for (int t = 0; t < T; ++t) {
          __m512i p = _mm512_set1_epi32(-32 * y[t][i].bsums[s]);
          const std::uint8_t* xq = reinterpret_cast<const std::uint8_t*>(y[t][i].qs) + 16 * s;
          MMSB_UNROLL
          for (std::size_t k = 0; k < 4; ++k)
            p = _mm512_dpbusd_epi32(p, w[k], _mm512_set1_epi32(static_cast<int>(load_u32(xq + 4 * k))));
          sum[t] = _mm512_add_epi32(sum[t], _mm512_mullo_epi32(p, scale));
        }
      }
      const __m512 dw = _mm512_load_ps(packed + kD);
      MMSB_UNROLL
      for (int t = 0; t < T; ++t) {
        acc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sum[t]), _mm512_mul_ps(dw, _mm512_set1_ps(y[t][i].d)), acc[t]);
      }
    }
    const __mmask16 lanes = static_cast<__mmask16>((1u << rows) - 1);
    MMSB_UNROLL
    for (int t = 0; t < T; ++t) _mm512_mask_storeu_ps(out + t * out_stride, lanes, acc[t]);
  }
};

// Q6_K against one vector at the AVX-512 level with VNNI. Per super-block and row the 256 stored values are
// unpacked into four 512-bit registers of 64 (in the activations' order) and each meets the vector in one vpdpbusd:
// 32-bit lane i of register k then holds 4 products of sub-block 4k + i / 4, at most 4 x 63 x 128 in size (an int16),
// so one vpdpwssd multiplies each lane's low half by its sub-block's scale (the high half by 0) and adds. Less 32 x
// the scaled activation sums, this is Q6KExactTile's exact integer (wrapping alike), fused once per super-block as
// there: the same bits, in about half the instructions of the AVX2 unpacking (which ran slower than the rows stream).
struct Q6KVnniOne {
  static constexpr std::size_t kRows = 4;
  // The next rows asked for this many rows ahead of the tile's: two tiles, as the AVX2 level's tiles of 2 rows did.
  static constexpr std::size_t kAheadRows = 8;

  // Lanes i of index k pick scale 4k + i / 4 (the sub-block of lane i of register k).
  MMSB_VNNI static __m512i scale_index(int k) {
    const __m512i quarter = _mm512_set_epi32(3, 3, 3, 3, 2, 2, 2, 2, 1, 1, 1, 1, 0, 0, 0, 0);
    return _mm512_add_epi32(quarter, _mm512_set1_epi32(4 * k));
  }

  // Row `b`'s super-block times the vector's (x: its 256 values in four registers): 8 lanes whose sum is the
  // exact integer.
  MMSB_VNNI static __m256i block_sums(const std::uint8_t* b, const __m512i (&x)[4], const __m512i (&index)[4],
                                      const BlockQ8K& y) {
    const __m512i low4 = _mm512_set1_epi8(0x0F), top2 = _mm512_set1_epi8(0x30), zero = _mm512_setzero_si512();
    // The qh bits of groups 0 | 1 move up by 4 | 2 into bits 4-5, those of groups 2 | 3 by 0 | 2 down.
    const __m512i up = _mm512_set_epi64(2, 2, 2, 2, 4, 4, 4, 4), down = _mm512_set_epi64(2, 2, 2, 2, 0, 0, 0, 0);
    const __m128i scales8 = _mm_loadu_si128(reinterpret_cast<const __m128i*>(b + 192));
    const __m512i scales = _mm512_cvtepu16_epi32(_mm256_cvtepi8_epi16(scales8));  // (scale, 0) per 32-bit lane
    __m512i sum = zero;
    MMSB_UNROLL
    for (int h = 0; h < 2; ++h) {
      const __m512i ql = _mm512_loadu_si512(b + 64 * h);
      const __m512i qh = _mm512_broadcast_i64x4(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(b + 128 + 32 * h)));
      // (a & b) | c: the low nibbles with their top two bits.
      const __m512i g01 = _mm512_ternarylogic_epi32(ql, low4, _mm512_and_si512(_mm512_sllv_epi64(qh, up), top2), 0xEA);
      const __m512i g23 = _mm512_ternarylogic_epi32(_mm512_srli_epi16(ql, 4), low4,
                                                    _mm512_and_si512(_mm512_srlv_epi64(qh, down), top2), 0xEA);
      sum = _mm512_dpwssd_epi32(sum, _mm512_dpbusd_epi32(zero, g01, x[2 * h]),
                                _mm512_permutexvar_epi32(index[2 * h], scales));
      sum = _mm512_dpwssd_epi32(sum, _mm512_dpbusd_epi32(zero, g23, x[2 * h + 1]),
                                _mm512_permutexvar_epi32(index[2 * h + 1], scales));
    }
    const __m256i sums = _mm256_add_epi32(_mm512_castsi512_si256(sum), _mm512_extracti64x4_epi64(sum, 1));
    // The stored values are q + 32: less 32 x the scaled activation sums of the sub-blocks.
    const __m256i offset = _mm256_madd_epi16(_mm256_cvtepi8_epi16(scales8), load32(y.bsums));
    return _mm256_sub_epi32(sums, _mm256_slli_epi32(offset, 5));
  }

  // A tile of R rows against one vector (matmul_tiles' decoding path).
  template <int R, int T>
  MMSB_VNNI static void run(const TileArgs& a) {
    static_assert(T == 1, "one vector only");
    const std::size_t blocks = a.cols / kSuperBlock;
    const auto* y = reinterpret_cast<const BlockQ8K*>(a.act);
    const __m512i index[4] = {scale_index(0), scale_index(1), scale_index(2), scale_index(3)};
    __m128 acc = _mm_setzero_ps();
    for (std::size_t i = 0; i < blocks; ++i) {
      const std::uint8_t* blk[R];
      MMSB_UNROLL
      for (int r = 0; r < R; ++r) {
        blk[r] = a.w + r * a.row_stride + i * kQ6_KBytes;
        for (std::size_t line = 0; line < kQ6_KBytes; line += 64) {
          _mm_prefetch(reinterpret_cast<const char*>(blk[r] + line + kAheadRows * a.row_stride), _MM_HINT_T0);
        }
      }
      __m512i x[4];
      MMSB_UNROLL
      for (int k = 0; k < 4; ++k) x[k] = _mm512_loadu_si512(y[i].qs + 64 * k);
      __m256i rows[R];
      MMSB_UNROLL
      for (int r = 0; r < R; ++r) rows[r] = block_sums(blk[r], x, index, y[i]);
      const __m128 dw = _mm_cvtph_ps(super_block_scales<R>(blk));
      acc = _mm_fmadd_ps(_mm_cvtepi32_ps(reduce_rows<R>(rows)), _mm_mul_ps(dw, _mm_set1_ps(y[i].d)), acc);
    }
    alignas(16) float lanes[4];
    _mm_store_ps(lanes, acc);
    MMSB_UNROLL
    for (int r = 0; r < R; ++r) a.out[r] = lanes[r];
  }
};

// Q6_K at the AVX-512 level with VNNI: batches by Q6KBatch16, one vector by Q6KVnniOne, 2-3 by Q6KExactTile (the
// same bits).
void matmul_q6_k_vnni(const std::byte* w, std::size_t row_stride, std::size_t rows, const std::byte* act,
                      std::size_t act_stride, std::size_t n, std::size_t cols, float* out, std::size_t out_stride) {
  if (n == 1) {
    return matmul_tiles<Q6KVnniOne, Q6KVnniOne::kRows, 1, 1>(w, row_stride, rows, act, act_stride, n, cols, out,
                                                             out_stride);
  }
  if (n < kRepackVectors) {
    return matmul_tiles<Q6KExactTile, 4, 2, 2>(w, row_stride, rows, act, act_stride, n, cols, out, out_stride);
  }
  matmul_repacked16<Q6KBatch16>(w, row_stride, rows, act, act_stride, n, cols, kSuperBlock, kQ6_KBytes, out,
                                out_stride);
}

#pragma GCC diagnostic pop

}  // namespace

void add_avx2_matmul_kernels(Kernels& k) {
  k.matmul[static_cast<int>(TensorType::F32)] = matmul_float<false>;
  k.matmul[static_cast<int>(TensorType::F16)] = matmul_float<true>;
  k.matmul[static_cast<int>(TensorType::Q8_0)] = matmul_block8<Q8_0Block>;
  k.matmul[static_cast<int>(TensorType::Q4_0)] = matmul_block8<Q4_0Block>;
  k.matmul[static_cast<int>(TensorType::Q5_0)] = matmul_block8<Q5_0Block>;
  k.matmul[static_cast<int>(TensorType::Q4_1)] = matmul_block8<Q4_1Block>;
  k.matmul[static_cast<int>(TensorType::Q5_1)] = matmul_block8<Q5_1Block>;
  k.matmul[static_cast<int>(TensorType::Q4_K)] = matmul_tiles<K4Tile<4>, 2, 2, 2>;
  k.matmul[static_cast<int>(TensorType::Q5_K)] = matmul_tiles<K4Tile<5>, 2, 2, 2>;
  k.matmul[static_cast<int>(TensorType::Q6_K)] = matmul_tiles<Q6KTile, 2, 2, 2>;
}

void add_avx512_matmul_kernels(Kernels& k) {
  k.matmul[static_cast<int>(TensorType::F32)] = matmul_float512<false>;
  k.matmul[static_cast<int>(TensorType::F16)] = matmul_float512<true>;
  if (__builtin_cpu_supports("avx512vnni")) {
    k.matmul[static_cast<int>(TensorType::Q8_0)] = matmul_block16<Q8_0Block>;
    k.matmul[static_cast<int>(TensorType::Q4_0)] = matmul_block16<Q4_0Block>;
    k.matmul[static_cast<int>(TensorType::Q5_0)] = matmul_block16<Q5_0Block>;
    k.matmul[static_cast<int>(TensorType::Q4_1)] = matmul_block16<Q4_1Block>;
    k.matmul[static_cast<int>(TensorType::Q5_1)] = matmul_block16<Q5_1Block>;
    k.matmul[static_cast<int>(TensorType::Q6_K)] = matmul_q6_k_vnni;
  }
}

}  // namespace mmsb::llm
