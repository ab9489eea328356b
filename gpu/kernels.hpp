// gpu/kernels.hpp — the table of generic device kernels and their CPU twins (internal).
//
// Each entry is one compute shader over `inputs` storage buffers (bound at bindings 0..inputs-1, each the region
// of one input page) and one output buffer (binding `inputs`, the output page's region), with `push_words` 32-bit
// push constants that are also the CPU twin's parameters. The mirror runs the shader on the device, or the twin
// in the CPU fallback; tests run both on the same inputs and compare the bytes (tests/gpu/gpu_test.cpp). Write
// the twin first: it is the reference. (The stencil5 and scatter-apply shaders predate the table and keep their
// own paths: stencil5 ping-pongs over several steps in one submit, scatter-apply is the upload path.)
//
// Thread-safety: the table is immutable.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <span>

namespace mmsb::gpu {

enum class KernelId : std::uint32_t { HeatTile, Count };

struct KernelInfo {
  const char* name;
  std::span<const std::uint32_t> (*spirv)() noexcept;
  std::uint32_t inputs;      // storage buffers before the output
  std::uint32_t push_words;  // push constants, also the twin's parameters
  // The CPU twin: writes the output page's bytes from the input pages' bytes (sizes already checked).
  void (*cpu)(std::span<const std::span<const std::byte>> inputs, std::span<std::byte> output,
              std::span<const std::uint32_t> push);
  // Workgroups of one dispatch.
  std::array<std::uint32_t, 3> (*groups)(std::span<const std::uint32_t> push);
  // The bytes each input and the output must have at least.
  std::uint64_t (*input_bytes)(std::uint32_t input, std::span<const std::uint32_t> push);
  std::uint64_t (*output_bytes)(std::span<const std::uint32_t> push);
};

const KernelInfo& kernel_info(KernelId id) noexcept;

}  // namespace mmsb::gpu
