// The CPU implementations of the device kernels: what the fallback runs, and the reference the tests compare the
// shaders with. Each mirrors its shader in gpu/shaders/ operation for operation. This file is compiled with
// -ffp-contract=off (gpu/CMakeLists.txt), so that no multiply and add are fused into an FMA, as NoContraction
// forbids on the device.
#include <cmath>
#include <cstddef>
#include <cstdint>

#include "mmsb/gpu.hpp"

namespace mmsb {

void stencil5_step_cpu(const std::int32_t* in, std::int32_t* out, std::uint32_t width, std::uint32_t height) {
  for (std::uint32_t y = 0; y < height; ++y) {
    const std::size_t row = std::size_t{y} * width;
    const bool border_row = y == 0 || y == height - 1;
    for (std::uint32_t x = 0; x < width; ++x) {
      const std::size_t cell = row + x;
      const std::int32_t c = in[cell];
      if (border_row || x == 0 || x == width - 1) {
        out[cell] = c;
        continue;
      }
      const std::int32_t laplacian = in[cell - 1] + in[cell + 1] + in[cell - width] + in[cell + width] - 4 * c;
      out[cell] = c + (laplacian >> 3);  // arithmetic shift (C++20), as GLSL's >> on int
    }
  }
}

namespace {

// Below 2^-125 in magnitude: +0 (see heat_tile.comp; never produces or reads a denormal).
inline float flush_tiny(float v) { return std::fabs(v) < 0x1p-125f ? 0.0f : v; }

}  // namespace

void heat_tile_step_cpu(const float* cell, const float* north, const float* south, const float* west, const float* east,
                        float* out, std::uint32_t side, float alpha) {
  for (std::uint32_t y = 0; y < side; ++y) {
    for (std::uint32_t x = 0; x < side; ++x) {
      const std::size_t i = std::size_t{y} * side + x;
      const float here = cell[i];
      const float n = y > 0 ? cell[i - side] : north[x];
      const float s = y + 1 < side ? cell[i + side] : south[x];
      const float w = x > 0 ? cell[i - 1] : west[y];
      const float e = x + 1 < side ? cell[i + 1] : east[y];
      const float ns = n + s;
      const float we = w + e;
      const float around = ns + we;
      const float four = 4.0f * here;
      const float lap = flush_tiny(around - four);
      const float flow = flush_tiny(alpha * lap);
      out[i] = flush_tiny(here + flow);
    }
  }
}

}  // namespace mmsb
