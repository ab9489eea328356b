#include "gpu/shaders.hpp"

namespace mmsb::gpu {
namespace {

constexpr std::uint32_t kStencil5[] = {
#include "stencil5.spv.inc"
};
constexpr std::uint32_t kScatterApply[] = {
#include "scatter_apply.spv.inc"
};
constexpr std::uint32_t kHeatTile[] = {
#include "heat_tile.spv.inc"
};

}  // namespace

std::span<const std::uint32_t> stencil5_spirv() noexcept { return kStencil5; }
std::span<const std::uint32_t> scatter_apply_spirv() noexcept { return kScatterApply; }
std::span<const std::uint32_t> heat_tile_spirv() noexcept { return kHeatTile; }

}  // namespace mmsb::gpu
