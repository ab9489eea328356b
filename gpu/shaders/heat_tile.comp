// One explicit step of a heat-diffusion tile with halos, on float cells (HeatTileParams in mmsb/gpu.hpp; the CPU
// twin is heat_tile_step_cpu() in gpu/cpu_kernels.cpp). Bit-identical to the twin on any Vulkan device:
//  - every operation is `precise` (SPIR-V NoContraction), in the twin's order, so no FMA is formed and nothing is
//    reassociated; Vulkan requires correctly rounded add, subtract and multiply;
//  - results below 2^-125 in magnitude are replaced by +0 after the subtraction, the product and the sum, so no
//    denormal is ever produced or read: the result is the same whether the device flushes denormals, preserves
//    them, or does either (lavapipe promises neither).
#version 450
layout(local_size_x = 16, local_size_y = 16) in;

layout(std430, set = 0, binding = 0) readonly buffer Cell { float cell[]; };
layout(std430, set = 0, binding = 1) readonly buffer North { float north[]; };
layout(std430, set = 0, binding = 2) readonly buffer South { float south[]; };
layout(std430, set = 0, binding = 3) readonly buffer West { float west[]; };
layout(std430, set = 0, binding = 4) readonly buffer East { float east[]; };
layout(std430, set = 0, binding = 5) writeonly buffer Next { float next[]; };

layout(push_constant) uniform Params {
  uint side;
  float alpha;
} params;

float flush_tiny(float v) { return abs(v) < uintBitsToFloat(0x01000000u) ? 0.0 : v; }  // 2^-125

void main() {
  const uint x = gl_GlobalInvocationID.x;
  const uint y = gl_GlobalInvocationID.y;
  const uint side = params.side;
  if (x >= side || y >= side) return;
  const uint i = y * side + x;
  const float here = cell[i];
  const float n = y > 0 ? cell[i - side] : north[x];
  const float s = y + 1 < side ? cell[i + side] : south[x];
  const float w = x > 0 ? cell[i - 1] : west[y];
  const float e = x + 1 < side ? cell[i + 1] : east[y];
  precise float ns = n + s;
  precise float we = w + e;
  precise float around = ns + we;
  precise float four = 4.0 * here;
  precise float lap = flush_tiny(around - four);
  precise float flow = flush_tiny(params.alpha * lap);
  precise float result = flush_tiny(here + flow);
  next[i] = result;
}
