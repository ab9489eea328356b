// The CPU implementations of the device kernels: what the fallback runs, and the reference the tests compare the
// shaders with. Each mirrors its shader in gpu/shaders/ operation for operation.
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

}  // namespace mmsb
