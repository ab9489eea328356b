// Every kernel of every SIMD level this CPU has, against the scalar reference on seeded random data.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "mmsb/llm/kernels.hpp"

namespace mmsb::llm {
namespace {

const TensorType kAllTypes[] = {TensorType::F32, TensorType::F16, TensorType::Q4_0, TensorType::Q4_1,
                                TensorType::Q5_0, TensorType::Q5_1, TensorType::Q8_0};

std::vector<SimdLevel> available_levels() {
  std::vector<SimdLevel> out;
  for (SimdLevel l : {SimdLevel::Avx2, SimdLevel::Avx512}) {
    if (cpu_supports(l)) out.push_back(l);
  }
  return out;
}

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

TEST(Kernels, EveryDotMatchesTheScalarReference) {
  const Kernels& ref = kernels_for(SimdLevel::Scalar);
  std::mt19937 rng(1234);
  for (SimdLevel level : available_levels()) {
    const Kernels& k = kernels_for(level);
    for (TensorType type : kAllTypes) {
      const int id = static_cast<int>(type);
      for (std::size_t n : {32u, 64u, 96u, 172u, 256u, 4096u}) {
        if (row_bytes(type, n) == 0) continue;
        for (int trial = 0; trial < 20; ++trial) {
          std::vector<std::byte> row = random_row(type, n, rng);
          std::vector<float> x(n), w(n);
          std::uniform_real_distribution<float> value(-1.0f, 1.0f);
          for (float& v : x) v = value(rng);
          ref.dequantize[id](row.data(), w.data(), n);
          double magnitude = 0;
          for (std::size_t i = 0; i < n; ++i) magnitude += std::fabs(static_cast<double>(w[i]) * x[i]);
          const float expected = ref.dot[id](row.data(), x.data(), n);
          const float got = k.dot[id](row.data(), x.data(), n);
          ASSERT_NEAR(got, expected, 1e-5 * magnitude + 1e-6)
              << simd_level_name(level) << " " << *tensor_type_name(static_cast<std::uint32_t>(id)) << " n=" << n;
          std::vector<float> wl(n);
          k.dequantize[id](row.data(), wl.data(), n);
          ASSERT_EQ(0, std::memcmp(w.data(), wl.data(), n * sizeof(float)));
        }
      }
    }
  }
}

TEST(Kernels, ScalarDotEqualsTheSumOfDequantizedProducts) {
  const Kernels& ref = kernels_for(SimdLevel::Scalar);
  std::mt19937 rng(99);
  for (TensorType type : kAllTypes) {
    const int id = static_cast<int>(type);
    std::vector<std::byte> row = random_row(type, 128, rng);
    std::vector<float> x(128, 0.5f), w(128);
    ref.dequantize[id](row.data(), w.data(), 128);
    double sum = 0, magnitude = 0;
    for (std::size_t i = 0; i < 128; ++i) {
      sum += static_cast<double>(w[i]) * x[i];
      magnitude += std::fabs(static_cast<double>(w[i]) * x[i]);
    }
    EXPECT_NEAR(ref.dot[id](row.data(), x.data(), 128), sum, 1e-5 * magnitude + 1e-6)
        << *tensor_type_name(static_cast<std::uint32_t>(id));
  }
}

TEST(Kernels, AttentionKernelsAreBitIdenticalToScalar) {
  const Kernels& ref = kernels_for(SimdLevel::Scalar);
  std::mt19937 rng(7);
  std::normal_distribution<float> value(0.0f, 1.0f);
  for (SimdLevel level : available_levels()) {
    const Kernels& k = kernels_for(level);
    for (std::size_t head : {8u, 16u, 6u}) {
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

TEST(Kernels, RowBytesRefusesPartialBlocks) {
  EXPECT_EQ(row_bytes(TensorType::Q8_0, 64), 68u);
  EXPECT_EQ(row_bytes(TensorType::Q8_0, 172), 0u);  // why ffn_down stays F16 in the quantized files
  EXPECT_EQ(row_bytes(TensorType::F16, 172), 344u);
  EXPECT_TRUE(is_supported_type(12));               // Q4_K
  EXPECT_FALSE(is_supported_type(16));              // IQ2_XXS
  EXPECT_TRUE(is_supported_type(7));
}

}  // namespace
}  // namespace mmsb::llm
