// One 2-D 5-point heat-diffusion step on an int32 grid (see Stencil5Params in mmsb/gpu.hpp). Integer arithmetic
// with an arithmetic shift, so the result is bit-identical to stencil5_step_cpu().
#version 450
layout(local_size_x = 16, local_size_y = 16) in;

layout(std430, set = 0, binding = 0) readonly buffer Source { int source[]; };
layout(std430, set = 0, binding = 1) writeonly buffer Target { int target[]; };

// Word offsets of the grids inside the bound buffers (page regions of the sub-allocator).
layout(push_constant) uniform Params {
  uint width;
  uint height;
  uint source_word;
  uint target_word;
} params;

void main() {
  const uint x = gl_GlobalInvocationID.x;
  const uint y = gl_GlobalInvocationID.y;
  if (x >= params.width || y >= params.height) return;
  const uint w = params.width;
  const uint cell = y * w + x;
  const int c = source[params.source_word + cell];
  if (x == 0 || y == 0 || x == w - 1 || y == params.height - 1) {
    target[params.target_word + cell] = c;
    return;
  }
  const uint s = params.source_word + cell;
  const int laplacian = source[s - 1] + source[s + 1] + source[s - w] + source[s + w] - 4 * c;
  target[params.target_word + cell] = c + (laplacian >> 3);
}
