// Every kernel of every SIMD level this CPU has, against the scalar reference on seeded random data.
#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "mmsb/llm/kernels.hpp"

namespace mmsb::llm {
namespace {

const TensorType kAllTypes[] = {TensorType::F32,  TensorType::F16,  TensorType::Q4_0, TensorType::Q4_1,
                                TensorType::Q5_0, TensorType::Q5_1, TensorType::Q8_0};

std::vector<SimdLevel> available_levels() {
  std::vector<SimdLevel> out;
  for (SimdLevel l : {SimdLevel::Avx2, SimdLevel::Avx512}) {
    if (cpu_supports(l)) out.push_back(l);
  }
  return out;
}

// -120 or 120 by the parity of n: inputs where e^-v under- or overflows.
float i_extreme(std::size_t n) { return n % 2 ? -120.0f : 120.0f; }

// A random row of `n` values of `type`: random payload bytes, and scales that are sane halves.
std::vector<std::byte> random_row(TensorType type, std::size_t n, std::mt19937& rng) {
  std::uniform_real_distribution<float> value(-1.0f, 1.0f);
  std::vector<std::byte> row(row_bytes(type, n));
  if (type == TensorType::F32) {
    for (std::size_t i = 0; i < n; ++i) {
      float v = value(rng);
      std::memcpy(row.data() + 4 * i, &v, 4);
    }
    return row;
  }
  if (type == TensorType::F16) {
    for (std::size_t i = 0; i < n; ++i) {
      std::uint16_t h = fp32_to_fp16(value(rng));
      std::memcpy(row.data() + 2 * i, &h, 2);
    }
    return row;
  }
  for (auto& b : row) b = static_cast<std::byte>(rng());
  const TypeTraits t = type_traits(type);
  const bool has_min = type == TensorType::Q4_1 || type == TensorType::Q5_1;
  for (std::size_t b = 0; b < n / t.block_elements; ++b) {
    std::byte* block = row.data() + b * t.block_bytes;
    std::uint16_t d = fp32_to_fp16(value(rng) * 0.05f), m = fp32_to_fp16(value(rng));
    std::memcpy(block, &d, 2);
    if (has_min) std::memcpy(block + 2, &m, 2);
  }
  return row;
}

TEST(Fp16, EveryHalfRoundTripsThroughFloat) {
  for (std::uint32_t h = 0; h < 65536; ++h) {
    float f = fp16_to_fp32(static_cast<std::uint16_t>(h));
    if (std::isnan(f)) continue;
    ASSERT_EQ(fp32_to_fp16(f), h) << "half 0x" << std::hex << h;
  }
  EXPECT_EQ(fp16_to_fp32(0x3C00), 1.0f);
  EXPECT_EQ(fp16_to_fp32(0xC000), -2.0f);
  EXPECT_EQ(fp16_to_fp32(0x0001), std::ldexp(1.0f, -24));  // smallest subnormal
}

TEST(Kernels, BlockLayoutsDecodeAsDocumented) {
  const Kernels& k = kernels_for(SimdLevel::Scalar);
  // Q8_0: d = 1, q[j] = j - 16.
  std::vector<std::byte> q8(34);
  std::uint16_t one = 0x3C00;
  std::memcpy(q8.data(), &one, 2);
  for (int j = 0; j < 32; ++j) q8[2 + j] = static_cast<std::byte>(static_cast<std::int8_t>(j - 16));
  std::vector<float> out(32);
  k.dequantize[static_cast<int>(TensorType::Q8_0)](q8.data(), out.data(), 32);
  for (int j = 0; j < 32; ++j) EXPECT_EQ(out[j], static_cast<float>(j - 16));
  // Q4_0: low nibbles are values 0..15, high nibbles 16..31, minus 8.
  std::vector<std::byte> q4(18);
  std::memcpy(q4.data(), &one, 2);
  for (int j = 0; j < 16; ++j) q4[2 + j] = static_cast<std::byte>((15 - j) << 4 | j);
  k.dequantize[static_cast<int>(TensorType::Q4_0)](q4.data(), out.data(), 32);
  for (int j = 0; j < 16; ++j) {
    EXPECT_EQ(out[j], static_cast<float>(j - 8));
    EXPECT_EQ(out[16 + j], static_cast<float>(15 - j - 8));
  }
  // Q5_0: bit j of the high word is the fifth bit of value j.
  std::vector<std::byte> q5(22);
  std::memcpy(q5.data(), &one, 2);
  std::uint32_t high = 0x80000001u;  // values 0 and 31
  std::memcpy(q5.data() + 2, &high, 4);
  k.dequantize[static_cast<int>(TensorType::Q5_0)](q5.data(), out.data(), 32);
  EXPECT_EQ(out[0], 0.0f);    // 16 - 16
  EXPECT_EQ(out[1], -16.0f);  // 0 - 16
  EXPECT_EQ(out[31], 0.0f);
}

// A random matrix of `rows` rows of `n` values (rows row_bytes apart) and `vectors` activation vectors.
struct Product {
  std::vector<std::byte> matrix;
  std::vector<float> x;
  std::size_t rows, n, vectors;
  Product(TensorType type, std::size_t rows_, std::size_t n_, std::size_t vectors_, std::mt19937& rng)
      : rows(rows_), n(n_), vectors(vectors_) {
    for (std::size_t r = 0; r < rows; ++r) {
      const std::vector<std::byte> row = random_row(type, n, rng);
      matrix.insert(matrix.end(), row.begin(), row.end());
    }
    std::uniform_real_distribution<float> value(-1.0f, 1.0f);
    x.resize(vectors * n);
    for (float& v : x) v = value(rng) * (rng() % 4 == 0 ? 30.0f : 1.0f);
  }
  // out[t * rows + r] for rows [r0, r1) and vectors [t0, t1), by the level's kernel.
  void run(const Kernels& k, TensorType type, std::vector<float>& out, std::size_t r0, std::size_t r1, std::size_t t0,
           std::size_t t1) const {
    std::vector<std::byte> storage;
    const PreparedActivations act = prepare_activations(k, type, x.data() + t0 * n, n, t1 - t0, n, storage);
    const std::size_t stride = row_bytes(type, n);
    k.matmul[static_cast<int>(type)](matrix.data() + r0 * stride, stride, r1 - r0, act.data, act.stride, t1 - t0, n,
                                     out.data() + t0 * rows + r0, rows);
  }
  std::vector<float> run(const Kernels& k, TensorType type) const {
    std::vector<float> out(vectors * rows);
    run(k, type, out, 0, rows, 0, vectors);
    return out;
  }
};

TEST(Kernels, ActivationRoundingIsTheSameAtEveryLevel) {
  std::mt19937 rng(5);
  std::uniform_real_distribution<float> value(-3.0f, 3.0f);
  for (std::size_t n : {32u, 256u, 288u, 2048u}) {
    // A block with a zero, and (from 64 values on) one that is all zeros.
    std::vector<float> x(n);
    for (std::size_t i = 0; i < n; ++i) x[i] = i == 5 || (i >= 32 && i < 64) ? 0.0f : value(rng);
    std::vector<std::byte> want, got;
    const PreparedActivations ref =
        prepare_activations(kernels_for(SimdLevel::Scalar), TensorType::Q8_0, x.data(), n, 1, n, want);
    for (SimdLevel level : available_levels()) {
      const PreparedActivations act = prepare_activations(kernels_for(level), TensorType::Q8_0, x.data(), n, 1, n, got);
      ASSERT_EQ(act.stride, ref.stride);
      EXPECT_EQ(0, std::memcmp(act.data, ref.data, n + n / 32 * 8)) << simd_level_name(level) << " n=" << n;
    }
    // The documented encoding: s = max|x| / 127, q = x * (1 / s) rounded to nearest, d = s in half precision,
    // sum = the sum of q.
    const auto* q = reinterpret_cast<const std::int8_t*>(ref.data);
    const auto* d = reinterpret_cast<const float*>(ref.data + n);
    const auto* sum = reinterpret_cast<const std::int32_t*>(ref.data + n + n / 32 * 4);
    float amax = 0;
    int total = 0;
    for (std::size_t j = 0; j < 32; ++j) amax = std::max(amax, std::fabs(x[j])), total += q[j];
    EXPECT_EQ(d[0], fp16_to_fp32(fp32_to_fp16(amax / 127.0f)));
    EXPECT_EQ(sum[0], total);
    for (std::size_t j = 0; j < 32; ++j) EXPECT_EQ(q[j], std::nearbyint(x[j] * (1.0f / (amax / 127.0f)))) << j;
    if (n >= 64) {
      EXPECT_EQ(d[1], 0.0f);
    }
  }
}

TEST(Kernels, EveryProductMatchesTheScalarReference) {
  const Kernels& ref = kernels_for(SimdLevel::Scalar);
  std::mt19937 rng(1234);
  for (SimdLevel level : available_levels()) {
    const Kernels& k = kernels_for(level);
    for (TensorType type : kAllTypes) {
      const int id = static_cast<int>(type);
      for (std::size_t n : {32u, 64u, 96u, 172u, 256u, 4096u}) {
        if (row_bytes(type, n) == 0) continue;
        for (int trial = 0; trial < 6; ++trial) {
          const Product p(type, 1 + rng() % 9, n, 1 + rng() % 6, rng);
          const std::vector<float> want = p.run(ref, type), got = p.run(k, type);
          std::vector<float> w(n), prepared(n);
          for (std::size_t t = 0; t < p.vectors; ++t) {
            for (std::size_t r = 0; r < p.rows; ++r) {
              ref.dequantize[id](p.matrix.data() + r * row_bytes(type, n), w.data(), n);
              double magnitude = 0;
              for (std::size_t i = 0; i < n; ++i) magnitude += std::fabs(double{w[i]} * p.x[t * n + i]);
              ASSERT_NEAR(got[t * p.rows + r], want[t * p.rows + r], 1e-5 * magnitude + 1e-6)
                  << simd_level_name(level) << " " << *tensor_type_name(id) << " n=" << n << " row " << r << " vector "
                  << t;
            }
          }
          std::vector<float> wl(n);
          k.dequantize[id](p.matrix.data(), wl.data(), n);
          ref.dequantize[id](p.matrix.data(), w.data(), n);
          ASSERT_EQ(0, std::memcmp(w.data(), wl.data(), n * sizeof(float)));
        }
      }
    }
  }
}

// What batched prefill, the thread split and decoding rely on: one (row, vector) result is the same bits whether
// the product covers one vector or many, all rows or a range of them. 37 rows x 21 vectors: past the VNNI
// kernels' tiles of 16 rows (with the next tile's rows prefetched) and 8 vectors, with ragged ends; 512 and 768
// columns for the super-block types.
TEST(Kernels, ProductsAreBitIdenticalForEveryTileOfRowsAndVectors) {
  std::mt19937 rng(42);
  for (SimdLevel level : {SimdLevel::Scalar, SimdLevel::Avx2, SimdLevel::Avx512}) {
    if (!cpu_supports(level)) continue;
    const Kernels& k = kernels_for(level);
    for (TensorType type : kAllTypes) {
      for (const auto [n, rows, vectors] : {std::array<std::size_t, 3>{64, 11, 9},
                                            {172, 11, 9},
                                            {288, 11, 9},
                                            {288, 37, 21},
                                            {512, 11, 9},
                                            {768, 37, 21}}) {
        if (row_bytes(type, n) == 0) continue;
        const Product p(type, rows, n, vectors, rng);
        const std::vector<float> all = p.run(k, type);
        std::vector<float> pieces(all.size());
        for (std::size_t t = 0; t < p.vectors; ++t) p.run(k, type, pieces, 0, p.rows, t, t + 1);  // one vector each
        EXPECT_EQ(0, std::memcmp(all.data(), pieces.data(), all.size() * sizeof(float)))
            << simd_level_name(level) << " " << *tensor_type_name(static_cast<std::uint32_t>(type)) << " n=" << n;
        p.run(k, type, pieces, 0, 5, 0, p.vectors);  // rows split unevenly, as two threads would
        p.run(k, type, pieces, 5, p.rows, 0, 7);
        p.run(k, type, pieces, 5, p.rows, 7, p.vectors);
        EXPECT_EQ(0, std::memcmp(all.data(), pieces.data(), all.size() * sizeof(float)))
            << simd_level_name(level) << " " << *tensor_type_name(static_cast<std::uint32_t>(type)) << " n=" << n;
      }
    }
  }
}

// Batches of F32 products run cache-blocked (AVX2 and AVX-512: column blocks of 512, row blocks of 64, chunks of
// vectors whose block fits L2, a tile's accumulators kept between blocks; AVX-512: 16-lane steps, the last one
// partial, tiles of 8 rows stored at once), F16 batches widen their vectors first: shapes past every block size
// with ragged ends still give each result the bits of the one-vector product, and the scalar reference's value.
TEST(Kernels, BatchedFloatProductsAreBitIdenticalAcrossCacheBlocks) {
  const Kernels& ref = kernels_for(SimdLevel::Scalar);
  std::mt19937 rng(2112);
  for (SimdLevel level : available_levels()) {
    const Kernels& k = kernels_for(level);
    for (TensorType type : {TensorType::F32, TensorType::F16}) {
      // Columns: three and five column blocks with a tail of 4 (1100 = 137 x 8 + 4 = 68 x 16 + 12; 2100 = 262 x 8
      // + 4 = 131 x 16 + 4), and one short of a step. Rows: past one row block, not a multiple of the tiles' 4 or
      // 8. Vectors: over two chunks.
      for (const auto [rows, n, vectors] : {std::array<std::size_t, 3>{70, 1100, 200}, {70, 2100, 110}, {7, 5, 4}}) {
        const Product p(type, rows, n, vectors, rng);
        const std::vector<float> all = p.run(k, type), want = p.run(ref, type);
        std::vector<float> pieces(all.size());
        for (std::size_t t = 0; t < p.vectors; ++t) p.run(k, type, pieces, 0, p.rows, t, t + 1);
        const std::string what = std::string(simd_level_name(level)) + " " +
                                 std::string(*tensor_type_name(static_cast<std::uint32_t>(type))) +
                                 " n=" + std::to_string(n);
        ASSERT_EQ(0, std::memcmp(all.data(), pieces.data(), all.size() * sizeof(float))) << what;
        const std::size_t split = p.rows / 2 + 1;  // rows split unevenly, as two threads would
        p.run(k, type, pieces, 0, split, 0, p.vectors);
        p.run(k, type, pieces, split, p.rows, 0, p.vectors);
        ASSERT_EQ(0, std::memcmp(all.data(), pieces.data(), all.size() * sizeof(float))) << what;
        for (std::size_t i = 0; i < all.size(); ++i) {
          const std::size_t t = i / p.rows, r = i % p.rows;
          std::vector<float> w(n);
          ref.dequantize[static_cast<int>(type)](p.matrix.data() + r * row_bytes(type, n), w.data(), n);
          double magnitude = 0;
          for (std::size_t j = 0; j < n; ++j) magnitude += std::fabs(double{w[j]} * p.x[t * n + j]);
          ASSERT_NEAR(all[i], want[i], 1e-5 * magnitude + 1e-6) << what << " row " << r << " vector " << t;
        }
      }
    }
  }
}

// The reference product is the exact product of the dequantized row with the rounded activations, up to float
// rounding: F32 takes the activations as they are, F16 rounded to half precision, the 32-value block types their Q8
// rounding.
TEST(Kernels, ScalarProductIsTheDequantizedRowTimesTheRoundedActivations) {
  const Kernels& ref = kernels_for(SimdLevel::Scalar);
  std::mt19937 rng(99);
  for (TensorType type : kAllTypes) {
    const int id = static_cast<int>(type);
    const Product p(type, 1, 128, 1, rng);
    std::vector<float> w(128);
    ref.dequantize[id](p.matrix.data(), w.data(), 128);
    std::vector<std::byte> storage;
    const PreparedActivations act = prepare_activations(ref, type, p.x.data(), 128, 1, 128, storage);
    double sum = 0, magnitude = 0;
    for (std::size_t i = 0; i < 128; ++i) {
      double xi = p.x[i];
      if (activation_format(type) == ActivationFormat::F16) xi = fp16_to_fp32(fp32_to_fp16(p.x[i]));
      if (activation_format(type) == ActivationFormat::Q8) {
        xi = double{reinterpret_cast<const float*>(act.data + 128)[i / 32]} *
             reinterpret_cast<const std::int8_t*>(act.data)[i];
        // Half a step, plus what the half-precision scale moves 127 steps by (2^-11 of each).
        EXPECT_LE(std::fabs(xi - p.x[i]), std::fabs(reinterpret_cast<const float*>(act.data + 128)[i / 32]) * 0.563);
      }
      sum += double{w[i]} * xi;
      magnitude += std::fabs(double{w[i]} * xi);
    }
    EXPECT_NEAR(p.run(ref, type)[0], sum, 1e-5 * magnitude + 1e-6) << *tensor_type_name(static_cast<std::uint32_t>(id));
  }
}

// Q8_0 stores int8 values; a crafted file may hold -128, which the quantizers never write. The product must
// still be exact for it (the sign trick runs on |w|, which fits an unsigned byte).
TEST(Kernels, Q8_0ProductIsExactForTheByteMinus128) {
  std::vector<std::byte> row(34);
  const std::uint16_t one = fp32_to_fp16(1.0f);
  std::memcpy(row.data(), &one, 2);
  for (std::size_t j = 0; j < 32; ++j) row[2 + j] = static_cast<std::byte>(0x80);  // -128
  std::vector<float> x(32, -1.0f);
  for (SimdLevel level : {SimdLevel::Scalar, SimdLevel::Avx2, SimdLevel::Avx512}) {
    if (!cpu_supports(level)) continue;
    float out = 0;
    matmul(kernels_for(level), TensorType::Q8_0, row.data(), 34, x.data(), 32, &out, 1);
    // x rounds to -127 with the scale 1 / 127 in half precision.
    EXPECT_FLOAT_EQ(out, 32 * 128.0f * 127.0f * fp16_to_fp32(fp32_to_fp16(1.0f / 127.0f))) << simd_level_name(level);
  }
}

TEST(Kernels, AttentionKernelsAreBitIdenticalToScalar) {
  const Kernels& ref = kernels_for(SimdLevel::Scalar);
  std::mt19937 rng(7);
  std::normal_distribution<float> value(0.0f, 1.0f);
  for (SimdLevel level : available_levels()) {
    const Kernels& k = kernels_for(level);
    for (std::size_t head : {8u, 16u, 6u, 64u, 80u}) {
      for (std::size_t n : {1u, 7u, 8u, 9u, 100u, 257u}) {
        const std::size_t stride = head * 4 + 3;  // rows of several heads, not aligned
        std::vector<float> q(head), keys(n * stride), values(n * stride), weights(n);
        for (float& v : q) v = value(rng);
        for (float& v : keys) v = value(rng);
        for (float& v : values) v = value(rng);
        for (float& v : weights) v = value(rng);
        std::vector<float> s_ref(n), s(n), o_ref(head), o(head);
        ref.attention_scores(q.data(), keys.data(), stride, n, head, 2.5f, s_ref.data());
        k.attention_scores(q.data(), keys.data(), stride, n, head, 2.5f, s.data());
        ASSERT_EQ(0, std::memcmp(s.data(), s_ref.data(), n * sizeof(float))) << "head " << head << " n " << n;
        ref.attention_mix(weights.data(), values.data(), stride, n, head, o_ref.data());
        k.attention_mix(weights.data(), values.data(), stride, n, head, o.data());
        ASSERT_EQ(0, std::memcmp(o.data(), o_ref.data(), head * sizeof(float))) << "head " << head << " n " << n;
      }
    }
  }
}

// The scores of several query heads against one set of keys (a decoding step's heads that share a key/value head)
// are each head's own scores, bit for bit, at every level.
TEST(Kernels, ScoresOfSeveralHeadsAreEachHeadsScores) {
  const Kernels& ref = kernels_for(SimdLevel::Scalar);
  std::mt19937 rng(17);
  std::normal_distribution<float> value(0.0f, 1.0f);
  for (SimdLevel level : available_levels()) {
    const Kernels& k = kernels_for(level);
    for (std::size_t head : {8u, 16u, 6u, 64u}) {
      for (std::size_t m : {1u, 2u, 5u}) {
        for (std::size_t n : {1u, 7u, 8u, 17u, 100u}) {
          const std::size_t stride = head * 3 + 1, scores_stride = n + 2;
          std::vector<float> q(m * head), keys(n * stride);
          for (float& v : q) v = value(rng);
          for (float& v : keys) v = value(rng);
          std::vector<float> expected(m * scores_stride, 7.0f), got(m * scores_stride, 7.0f);
          for (std::size_t j = 0; j < m; ++j) {
            ref.attention_scores(q.data() + j * head, keys.data(), stride, n, head, 2.5f,
                                 expected.data() + j * scores_stride);
          }
          k.attention_scores_heads(q.data(), head, m, keys.data(), stride, n, head, 2.5f, got.data(), scores_stride);
          ASSERT_EQ(0, std::memcmp(got.data(), expected.data(), got.size() * sizeof(float)))
              << simd_level_name(level) << " head " << head << " m " << m << " n " << n;
        }
      }
    }
  }
}

// The mixes of several heads at once (a decoding step's heads, grouped over shared value heads) are each head's
// own mix, bit for bit, at every level: heads of 8 and 16 columns run side by side, others one by one.
TEST(Kernels, MixesOfSeveralHeadsAreEachHeadsMix) {
  const Kernels& ref = kernels_for(SimdLevel::Scalar);
  std::mt19937 rng(13);
  std::normal_distribution<float> value(0.0f, 1.0f);
  for (SimdLevel level : available_levels()) {
    const Kernels& k = kernels_for(level);
    for (std::size_t head : {8u, 16u, 24u, 64u}) {
      for (std::size_t group : {1u, 2u, 3u}) {
        for (std::size_t heads : {1u, 3u, 6u, 9u, 12u}) {
          for (std::size_t n : {0u, 1u, 9u, 70u}) {
            const std::size_t value_heads = (heads + group - 1) / group, stride = value_heads * head + 5;
            const std::size_t weights_stride = n + 3;
            std::vector<float> values(std::max<std::size_t>(n, 1) * stride), weights(heads * weights_stride);
            for (float& v : values) v = value(rng);
            for (float& v : weights) v = value(rng);
            std::vector<float> expected(heads * head), got(heads * head, 42.0f);
            for (std::size_t h = 0; h < heads; ++h) {
              ref.attention_mix(weights.data() + h * weights_stride, values.data() + (h / group) * head, stride, n,
                                head, expected.data() + h * head);
            }
            k.attention_mix_heads(weights.data(), weights_stride, values.data(), stride, n, head, heads, group,
                                  got.data());
            ASSERT_EQ(0, std::memcmp(got.data(), expected.data(), got.size() * sizeof(float)))
                << simd_level_name(level) << " head " << head << " group " << group << " heads " << heads << " n " << n;
          }
        }
      }
    }
  }
}

// A prompt batch's scores (several queries against one set of keys, causal) are each query's own scores, bit for
// bit, at every level; past a query's last key its row is left as it was.
TEST(Kernels, CausalScoresOfABatchAreEachQuerysScores) {
  const Kernels& ref = kernels_for(SimdLevel::Scalar);
  std::mt19937 rng(11);
  std::normal_distribution<float> value(0.0f, 1.0f);
  for (SimdLevel level : {SimdLevel::Scalar, SimdLevel::Avx2, SimdLevel::Avx512}) {
    if (!cpu_supports(level)) continue;
    const Kernels& k = kernels_for(level);
    for (std::size_t head : {8u, 64u, 6u}) {
      for (const auto [m, first] : {std::array<std::size_t, 2>{1, 0}, {2, 5}, {4, 0}, {7, 9}, {13, 0}, {30, 21}}) {
        const std::size_t stride = head * 3 + 5, q_stride = head * 2 + 1, rows = first + m + 3;
        std::vector<float> q(m * q_stride), keys(rows * stride);
        for (float& v : q) v = value(rng);
        for (float& v : keys) v = value(rng);
        const std::size_t scores_stride = rows + 2;
        std::vector<float> got(m * scores_stride, -7.0f), want(got.size(), -7.0f);
        k.attention_scores_causal(q.data(), q_stride, m, keys.data(), stride, first, head, 1.5f, got.data(),
                                  scores_stride);
        for (std::size_t j = 0; j < m; ++j) {
          ref.attention_scores(q.data() + j * q_stride, keys.data(), stride, first + j + 1, head, 1.5f,
                               want.data() + j * scores_stride);
        }
        ASSERT_EQ(0, std::memcmp(got.data(), want.data(), got.size() * sizeof(float)))
            << simd_level_name(level) << " head " << head << " m " << m << " first " << first;
      }
    }
  }
}

TEST(Kernels, SoftmaxMatchesTheScalarReferenceWithinAFewUlp) {
  const Kernels& ref = kernels_for(SimdLevel::Scalar);
  std::mt19937 rng(3);
  std::uniform_real_distribution<float> value(-40.0f, 8.0f);
  for (SimdLevel level : available_levels()) {
    const Kernels& k = kernels_for(level);
    for (std::size_t n : {1u, 2u, 7u, 8u, 9u, 31u, 64u, 257u, 1000u}) {
      std::vector<float> a(n);
      for (float& v : a) v = value(rng);
      a[n / 2] = -200.0f;  // far below the maximum: exp underflows to 0 in both
      std::vector<float> b = a;
      ref.softmax(a.data(), n);
      k.softmax(b.data(), n);
      double total = 0;
      for (std::size_t i = 0; i < n; ++i) {
        ASSERT_NEAR(b[i], a[i], 6e-7 * a[i] + 1e-12) << simd_level_name(level) << " n=" << n << " i=" << i;
        total += b[i];
      }
      EXPECT_NEAR(total, 1.0, 1e-5);
    }
  }
}

TEST(Kernels, SwigluMatchesTheScalarReferenceWithinAFewUlp) {
  const Kernels& ref = kernels_for(SimdLevel::Scalar);
  std::mt19937 rng(4);
  std::uniform_real_distribution<float> value(-30.0f, 30.0f);
  for (SimdLevel level : available_levels()) {
    const Kernels& k = kernels_for(level);
    for (std::size_t n : {1u, 7u, 8u, 9u, 100u, 1376u}) {
      std::vector<float> gate(n), up(n);
      for (std::size_t i = 0; i < n; ++i) gate[i] = value(rng), up[i] = value(rng);
      gate[0] = i_extreme(n);  // far outside the polynomial's comfortable range, both signs
      std::vector<float> a = gate, b = gate;
      ref.swiglu(a.data(), up.data(), n);
      k.swiglu(b.data(), up.data(), n);
      for (std::size_t i = 0; i < n; ++i) {
        ASSERT_NEAR(b[i], a[i], 3e-6 * std::fabs(a[i]) + 1e-30f) << simd_level_name(level) << " n=" << n << " i=" << i;
      }
    }
  }
}

TEST(Kernels, RowBytesRefusesPartialBlocksAndSizesPast64Bits) {
  EXPECT_EQ(row_bytes(TensorType::F32, std::uint64_t{1} << 62), 0u);
  EXPECT_EQ(row_bytes(TensorType::F32, (std::uint64_t{1} << 62) - 1), ((std::uint64_t{1} << 62) - 1) * 4);
  EXPECT_EQ(row_bytes(TensorType::Q8_0, ~std::uint64_t{0} - 31), 0u);
  EXPECT_EQ(row_bytes(TensorType::Q8_0, 64), 68u);
  EXPECT_EQ(row_bytes(TensorType::Q8_0, 172), 0u);  // why ffn_down stays F16 in the quantized files
  EXPECT_EQ(row_bytes(TensorType::F16, 172), 344u);
  EXPECT_TRUE(is_supported_type(12));   // Q4_K
  EXPECT_FALSE(is_supported_type(16));  // IQ2_XXS
  EXPECT_TRUE(is_supported_type(7));
}

}  // namespace
}  // namespace mmsb::llm
