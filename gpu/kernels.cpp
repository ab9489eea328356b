#include "gpu/kernels.hpp"

#include <cstring>

#include "gpu/shaders.hpp"
#include "mmsb/gpu.hpp"

namespace mmsb::gpu {
namespace {

const float* as_floats(std::span<const std::byte> bytes) { return reinterpret_cast<const float*>(bytes.data()); }

// HeatTile: inputs cell, north, south, west, east; push {side, alpha bits}.
float alpha_of(std::span<const std::uint32_t> push) {
  float alpha;
  std::memcpy(&alpha, &push[1], sizeof alpha);
  return alpha;
}

void heat_tile_cpu(std::span<const std::span<const std::byte>> in, std::span<std::byte> out,
                   std::span<const std::uint32_t> push) {
  heat_tile_step_cpu(as_floats(in[0]), as_floats(in[1]), as_floats(in[2]), as_floats(in[3]), as_floats(in[4]),
                     reinterpret_cast<float*>(out.data()), push[0], alpha_of(push));
}

std::array<std::uint32_t, 3> heat_tile_groups(std::span<const std::uint32_t> push) {
  const std::uint32_t g = (push[0] + 15) / 16;
  return {g, g, 1};
}

std::uint64_t heat_tile_input_bytes(std::uint32_t input, std::span<const std::uint32_t> push) {
  const std::uint64_t side = push[0];
  return input == 0 ? side * side * 4 : side * 4;
}

std::uint64_t heat_tile_output_bytes(std::span<const std::uint32_t> push) {
  return std::uint64_t{push[0]} * push[0] * 4;
}

constexpr KernelInfo kTable[] = {
    {"heat_tile", heat_tile_spirv, 5, 2, heat_tile_cpu, heat_tile_groups, heat_tile_input_bytes,
     heat_tile_output_bytes},
};
static_assert(std::size(kTable) == static_cast<std::size_t>(KernelId::Count));

}  // namespace

const KernelInfo& kernel_info(KernelId id) noexcept { return kTable[static_cast<std::size_t>(id)]; }

}  // namespace mmsb::gpu
