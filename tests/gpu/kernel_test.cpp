// The table kernels of the GPU mirror (gpu/kernels.hpp) on the Vulkan device against their CPU twins, and the
// twins against the formulas they document (STYLE.md: every kernel on every backend against the CPU reference).
#include <gtest/gtest.h>

#include <array>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "gpu/scoped_device_env.hpp"
#include "mmsb/gpu.hpp"
#include "mmsb/mmsb.hpp"
#include "support/test_support.hpp"

namespace mmsb {
namespace {

using mmsb::testing::error_code_of;

using ScopedDevice = mmsb::testing::ScopedDeviceEnv;

// Floats over many magnitudes, both signs, exact zeros and values just above and below the 2^-125 flush threshold
// (never denormals: the kernel's inputs are assumed free of them, and it never produces one).
std::vector<float> random_floats(std::mt19937_64& rng, std::size_t n) {
  std::vector<float> out(n);
  std::uniform_real_distribution<float> mantissa(1.0f, 2.0f);
  for (auto& v : out) {
    switch (rng() % 6) {
      case 0:
        v = 0.0f;
        break;
      case 1:
        v = std::ldexp(mantissa(rng), -126 + static_cast<int>(rng() % 4));
        break;  // near the threshold
      case 2:
        v = std::ldexp(mantissa(rng), -120 + static_cast<int>(rng() % 100));
        break;
      default:
        v = mantissa(rng) * 50.0f;
        break;
    }
    if (rng() % 4 == 0) v = -v;
  }
  return out;
}

struct HeatInputs {
  std::vector<float> cell;
  std::array<std::vector<float>, 4> halo;  // north, south, west, east
};

HeatInputs random_heat(std::mt19937_64& rng, std::uint32_t side) {
  HeatInputs in;
  in.cell = random_floats(rng, std::size_t{side} * side);
  for (auto& h : in.halo) h = random_floats(rng, side);
  return in;
}

std::vector<float> twin(const HeatInputs& in, std::uint32_t side, float alpha) {
  std::vector<float> out(in.cell.size());
  heat_tile_step_cpu(in.cell.data(), in.halo[0].data(), in.halo[1].data(), in.halo[2].data(), in.halo[3].data(),
                     out.data(), side, alpha);
  return out;
}

std::vector<float> floats_of(const std::vector<std::byte>& bytes, std::size_t n) {
  std::vector<float> out(n);
  std::memcpy(out.data(), bytes.data(), n * 4);
  return out;
}

// Bitwise comparison (so -0 and +0 differ, and NaNs would be caught).
::testing::AssertionResult same_bits(const std::vector<float>& a, const std::vector<float>& b) {
  if (a.size() != b.size()) return ::testing::AssertionFailure() << "sizes differ";
  for (std::size_t i = 0; i < a.size(); ++i) {
    if (std::memcmp(&a[i], &b[i], 4) != 0) {
      return ::testing::AssertionFailure() << "cell " << i << ": " << a[i] << " vs " << b[i];
    }
  }
  return ::testing::AssertionSuccess();
}

struct HeatGraph {
  PageId cell, out;
  std::array<PageId, 4> halo;
};

HeatGraph heat_graph(Runtime& rt, GpuMirror& gpu, std::uint32_t side, float alpha) {
  HeatGraph g;
  g.cell = rt.create_page(std::uint64_t{side} * side * 4, Location::Both);
  for (auto& h : g.halo) h = rt.create_page(std::uint64_t{side} * 4 + 12, Location::Both);  // longer: fine
  g.out = rt.create_page(std::uint64_t{side} * side * 4, Location::Both);
  gpu.derive_heat_tile(g.out, g.cell, g.halo, {side, alpha});
  return g;
}

void commit_inputs(Runtime& rt, const HeatGraph& g, const HeatInputs& in) {
  auto txn = rt.begin();
  txn.write(g.cell, 0, std::as_bytes(std::span(in.cell)));
  for (int k = 0; k < 4; ++k) txn.write(g.halo[k], 0, std::as_bytes(std::span(in.halo[k])));
  txn.commit();
}

// Runs a few waves (all inputs, then a sparse cell edit, then one halo alone) and returns each wave's output.
std::vector<std::vector<float>> run_heat(GpuBackend expected, std::uint32_t side, float alpha,
                                         std::vector<std::vector<float>>* expected_out = nullptr,
                                         UploadPath path = UploadPath::Auto) {
  Runtime rt;
  Propagator prop(rt);
  GpuOptions options;
  options.upload = path;
  GpuMirror gpu(rt, prop, options);
  EXPECT_EQ(gpu.backend(), expected) << "(lavapipe: install mesa-vulkan-drivers)";
  const HeatGraph g = heat_graph(rt, gpu, side, alpha);
  std::mt19937_64 rng(side);
  HeatInputs in = random_heat(rng, side);
  std::vector<std::vector<float>> outputs;
  auto record = [&] {
    outputs.push_back(floats_of(rt.read_all(g.out), in.cell.size()));
    if (expected_out) expected_out->push_back(twin(in, side, alpha));
  };
  commit_inputs(rt, g, in);
  record();
  for (int k = 0; k < 3; ++k) {
    const std::size_t i = rng() % in.cell.size();
    in.cell[i] = static_cast<float>(rng() % 1000) / 7.0f;
    mmsb::testing::commit_value<float>(rt, g.cell, i * 4, in.cell[i]);
  }
  record();
  in.halo[3][side / 2] = 123.25f;  // the east halo alone: the node must run again
  mmsb::testing::commit_value<float>(rt, g.halo[3], (side / 2) * 4, 123.25f);
  record();
  if (expected == GpuBackend::Vulkan) {
    EXPECT_EQ(gpu.read_device(g.out), rt.read_all(g.out)) << "the device copy of the output is the result";
    EXPECT_EQ(gpu.stats().dispatches, 5u);  // one per wave: the inputs, three cell edits, the halo
    if (gpu.upload_path() == UploadPath::DirectWrite) {
      EXPECT_EQ(gpu.stats().timeline_waits, 0u) << "direct writes submit nothing a node could wait for";
    } else {
      // Each node run's submit waited on the device for the upload submit of its inputs (the timeline value).
      EXPECT_GE(gpu.stats().timeline_waits, 5u);
    }
    EXPECT_GE(gpu.stats().timeline_submits, 5u);
  } else {
    EXPECT_EQ(gpu.stats().dispatches, 0u);
  }
  return outputs;
}

TEST(GpuKernels, HeatTileOnTheDeviceEqualsTheCpuTwinBitForBit) {
  ScopedDevice env(nullptr);
  for (UploadPath path : {UploadPath::DirectWrite, UploadPath::CopyRegions, UploadPath::ScatterShader}) {
    for (std::uint32_t side : {1u, 5u, 16u, 37u}) {
      std::vector<std::vector<float>> expected;
      const auto device = run_heat(GpuBackend::Vulkan, side, 0.2f, &expected, path);
      ASSERT_EQ(device.size(), expected.size());
      for (std::size_t w = 0; w < device.size(); ++w) {
        EXPECT_TRUE(same_bits(device[w], expected[w])) << "path " << int(path) << " side " << side << " wave " << w;
      }
    }
  }
}

TEST(GpuKernels, HeatTileInTheCpuFallbackEqualsTheDevice) {
  std::vector<std::vector<float>> device, cpu;
  {
    ScopedDevice env(nullptr);
    device = run_heat(GpuBackend::Vulkan, 24, 0.1f);
  }
  {
    ScopedDevice env("none");
    cpu = run_heat(GpuBackend::Cpu, 24, 0.1f);
  }
  ASSERT_EQ(device.size(), cpu.size());
  for (std::size_t w = 0; w < device.size(); ++w) EXPECT_TRUE(same_bits(device[w], cpu[w])) << "wave " << w;
}

// The twin against the documented formula, where no intermediate is below the flush threshold.
TEST(GpuKernels, HeatTwinIsTheDocumentedFormulaAwayFromTheThreshold) {
  std::mt19937_64 rng(5);
  std::uniform_real_distribution<float> value(1.0f, 100.0f);
  constexpr std::uint32_t side = 9;
  HeatInputs in;
  in.cell.resize(side * side);
  for (auto& v : in.cell) v = value(rng);
  for (auto& h : in.halo) {
    h.resize(side);
    for (auto& v : h) v = value(rng);
  }
  const float alpha = 0.2f;
  const auto out = twin(in, side, alpha);
  for (std::uint32_t y = 0; y < side; ++y) {
    for (std::uint32_t x = 0; x < side; ++x) {
      const std::size_t i = y * side + x;
      const float c = in.cell[i];
      const float n = y > 0 ? in.cell[i - side] : in.halo[0][x];
      const float s = y + 1 < side ? in.cell[i + side] : in.halo[1][x];
      const float w = x > 0 ? in.cell[i - 1] : in.halo[2][y];
      const float e = x + 1 < side ? in.cell[i + 1] : in.halo[3][y];
      const volatile float around = (n + s) + (w + e);  // volatile: no contraction in this test either
      const volatile float lap = around - 4.0f * c;
      const volatile float flow = alpha * lap;
      const float expected = c + flow;
      if (std::fabs(lap) < 0x1p-120f) continue;  // near the threshold: the next test covers it
      EXPECT_EQ(out[i], expected) << x << "," << y;
    }
  }
}

TEST(GpuKernels, HeatTwinFlushesTinyIntermediatesToPositiveZero) {
  constexpr std::uint32_t side = 2;
  HeatInputs in;
  // Every cell c = 1.5 * 2^-125 with zero halos: each cell has two neighbours c, so the flow is
  // alpha * (2c - 4c) = -0.6 * 2^-125, below 2^-125: replaced by +0, each cell keeps its value (without that flush
  // the result would be 0.9 * 2^-125, itself flushed to +0).
  in.cell.assign(4, std::ldexp(1.5f, -125));
  for (auto& h : in.halo) h.assign(side, 0.0f);
  EXPECT_TRUE(same_bits(twin(in, side, 0.2f), in.cell));
  // A tiny negative flow becomes +0, not -0: one cell of 0 whose north neighbour is -2^-124: the flow
  // 0.2 * -2^-124 is below 2^-125, so the result is 0 + (+0) = +0 (without the flush: a negative denormal).
  HeatInputs one;
  one.cell = {0.0f};
  for (auto& h : one.halo) h = {0.0f};
  one.halo[0] = {-std::ldexp(1.0f, -124)};
  const auto out = twin(one, 1, 0.2f);
  EXPECT_TRUE(same_bits(out, {0.0f}));
  EXPECT_FALSE(std::signbit(out[0]));
}

TEST(GpuKernels, HeatTileRefusesHostPagesShortPagesAndBadParameters) {
  ScopedDevice env(nullptr);
  Runtime rt;
  Propagator prop(rt);
  GpuMirror gpu(rt, prop);
  const PageId cell = rt.create_page(16 * 4, Location::Both), out = rt.create_page(16 * 4, Location::Both);
  std::array<PageId, 4> halo;
  for (auto& h : halo) h = rt.create_page(4 * 4, Location::Both);
  const PageId host = rt.create_page(16 * 4), short_halo = rt.create_page(8, Location::Both);
  EXPECT_EQ(error_code_of([&] { gpu.derive_heat_tile(out, host, halo, {4, 0.2f}); }), ErrorCode::InvalidArgument);
  EXPECT_EQ(error_code_of([&] {
              gpu.derive_heat_tile(out, cell, {halo[0], short_halo, halo[2], halo[3]}, {4, 0.2f});
            }),
            ErrorCode::InvalidArgument);
  EXPECT_EQ(error_code_of([&] { gpu.derive_heat_tile(out, cell, halo, {5, 0.2f}); }), ErrorCode::InvalidArgument);
  EXPECT_EQ(error_code_of([&] { gpu.derive_heat_tile(out, cell, halo, {4, 0.3f}); }), ErrorCode::InvalidArgument);
  EXPECT_EQ(error_code_of([&] { gpu.derive_heat_tile(cell, cell, halo, {4, 0.2f}); }), ErrorCode::InvalidArgument);
  EXPECT_EQ(prop.node_count(), 0u);
  gpu.derive_heat_tile(out, cell, halo, {4, 0.2f});
  EXPECT_EQ(prop.node_count(), 1u);
}

}  // namespace
}  // namespace mmsb
