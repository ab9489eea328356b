// gpu/shaders.hpp — the SPIR-V of gpu/shaders/*.comp, compiled by glslc at build time (internal).
#pragma once

#include <cstdint>
#include <span>

namespace mmsb::gpu {

std::span<const std::uint32_t> stencil5_spirv() noexcept;
std::span<const std::uint32_t> scatter_apply_spirv() noexcept;
std::span<const std::uint32_t> heat_tile_spirv() noexcept;

}  // namespace mmsb::gpu
