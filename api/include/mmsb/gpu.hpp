// mmsb/gpu.hpp — the GPU mirror: device-resident pages on Vulkan, and device nodes (compute shaders).
//
// A GpuMirror attaches to a Runtime and its Propagator. Every page created with Location::Device or
// Location::Both (before or after the mirror is attached) gets a region of a large device buffer, and after each
// wave exactly the byte ranges that this wave's deltas changed reach the device: where device memory is
// host-visible (UMA and integrated GPUs, lavapipe, resizable BAR) the host writes them straight into the mapped
// buffer (UploadPath::DirectWrite); elsewhere they are copied into a host-visible staging ring and uploaded with
// one command buffer and one submit (many regions per copy), which is not waited for: the next wave's host work
// overlaps it; the next submit on the same staging slot, a device node, read_device() and wait_idle() wait for it.
// A device buffer left empty by deleted pages is returned to the driver.
//
//   mmsb::Runtime rt;
//   mmsb::Propagator prop(rt);
//   mmsb::GpuMirror gpu(rt, prop);                          // picks a device, or falls back to the CPU
//   auto grid = rt.create_page(64 * 64 * 4, mmsb::Location::Both);
//   auto next = rt.create_page(64 * 64 * 4, mmsb::Location::Both);
//   gpu.derive_stencil5(next, grid, {64, 64, 1});            // `next` follows `grid` through a compute shader
//
// Device nodes. derive_stencil5() makes a derived page computed by a SPIR-V compute shader over the device copy
// of its input. When the output page is Location::Both, the result is read back, diffed against the host copy,
// and published as a delta of only the changed ranges, so host nodes downstream propagate as usual. When it is
// Location::Device, the result stays on the device (the host copy of that page is not updated; read it with
// read_device()); device nodes reading it are ordered after it by a GPU_SYNC edge and run whenever its producer's
// inputs change.
//
// Fallback. Without a usable Vulkan 1.2 device (or with MMSB_VULKAN_DEVICE=none) the mirror logs one warning
// line and works on the CPU: device pages behave as host pages, device nodes run the CPU implementation of the
// same kernel (bit-identical results), device-only outputs are kept on the host, and read_device() returns the
// host bytes.
//
// Device selection: GpuOptions::device, else the environment variable MMSB_VULKAN_DEVICE: "none" forces the CPU
// fallback, a number picks that index in the Vulkan enumeration, anything else the first device whose name
// contains it (case-insensitive). By default a discrete GPU is preferred, then an integrated one, then a virtual
// one, then a CPU driver such as Mesa's lavapipe. Debug builds enable the Khronos validation layer when installed.
//
// Ownership and lifetime: the Runtime and Propagator must outlive the GpuMirror. At most one GpuMirror per
// Propagator. Destroying the mirror waits for the device, removes its device nodes (their pages stay, with their
// last host bytes) and frees all device memory.
//
// Thread-safety: every member may be called from any thread; device work is serialized on one compute queue.
// Device node functions run inside waves like any node and may run concurrently with host nodes.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "mmsb/page_id.hpp"

namespace mmsb {

class Runtime;
class Propagator;

enum class GpuBackend : std::uint8_t { Vulkan, Cpu };

// How the changed ranges of a wave reach device memory.
enum class UploadPath : std::uint8_t {
  CopyRegions,    // staged in a host-visible ring, then vkCmdCopyBuffer, one region per changed range
  ScatterShader,  // staged, then the scatter-apply compute shader writes the ranges (word-masked at the edges)
  DirectWrite,    // written by the host straight into mapped device memory (needs host-visible device memory)
  Auto,           // DirectWrite where all device memory is host-visible (UMA, lavapipe, resizable BAR), else
                  // CopyRegions (the default)
};

struct GpuOptions {
  // Which device: "" = MMSB_VULKAN_DEVICE or automatic; "none" = CPU fallback; an index; a name substring.
  std::string device;
  // Size of each device buffer that page regions are carved from; a larger page gets a buffer of its own size.
  std::uint64_t block_bytes = std::uint64_t{64} << 20;
  // Staging slots in the ring: how many waves' uploads may be in flight at once.
  unsigned staging_slots = 3;
  // DirectWrite on a device without host-visible device memory falls back to CopyRegions with a warning;
  // upload_path() says which path runs.
  UploadPath upload = UploadPath::Auto;
};

// Counters since the mirror was attached.
struct GpuStats {
  std::uint64_t waves_uploaded = 0;             // wave uploads: submits, or flushes that wrote directly (a wave that
                                                // changed nothing uploads nothing)
  std::uint64_t bytes_changed = 0;              // changed bytes of the deltas the mirror received for mirrored pages
  std::uint64_t bytes_uploaded = 0;             // bytes written into the staging ring (or, DirectWrite, device memory)
  std::uint64_t regions_uploaded = 0;           // copy regions (or scatter segments)
  std::uint64_t full_page_uploads = 0;          // pages uploaded whole: new, resized, or re-synchronized
  std::uint64_t pages_mirrored = 0;             // live mirrored pages
  std::uint64_t device_bytes_reserved = 0;      // device memory held by the sub-allocator's buffers
  std::uint64_t device_buffers = 0;             // VkDeviceMemory allocations of the sub-allocator (a buffer left
                                                // empty by deleted pages is freed)
  std::uint64_t device_memory_allocations = 0;  // live VkDeviceMemory of the mirror: buffers, staging, readback
  std::uint64_t dispatches = 0;                 // compute dispatches of device nodes
  std::uint64_t bytes_read_back = 0;            // device node outputs read back to the host
  std::uint64_t upload_ns = 0;                  // host time spent staging, recording and submitting wave uploads
  std::uint64_t timeline_submits = 0;  // submits, each signalling the next value of the mirror's timeline semaphore
  std::uint64_t timeline_waits = 0;    // device-node submits that waited on the device for an upload submit
};

// A 2-D 5-point heat-diffusion step on a width x height grid of int32 (row-major, the page's first
// width * height * 4 bytes): border cells keep their value; an interior cell c with neighbours n, s, e, w becomes
// c + ((n + s + e + w - 4c) >> 3) (arithmetic shift), `steps` times. Integer arithmetic makes the GPU and CPU
// results bit-identical; keep |values| below 2^27 so that no sum overflows.
struct Stencil5Params {
  std::uint32_t width = 0;
  std::uint32_t height = 0;
  std::uint32_t steps = 1;
};

// One explicit heat-diffusion step of a side x side tile of float cells (row-major, the page's first
// side * side * 4 bytes) with halos: the rows just north and south of the tile and the columns just west and east
// of it (side floats each; at an insulated border pass the tile's own edge). A cell c with neighbours n, s, w, e
// (from the halo at the tile's edges) becomes c + alpha * ((n + s) + (w + e) - 4c), evaluated in exactly this
// order without FMA contraction, and every intermediate below 2^-125 in magnitude is replaced by +0 (after the
// subtraction, the product and the sum), so no denormal is produced or read. Hence the device and the CPU twin
// (heat_tile_step_cpu) give the same bits on any device, whatever it does with denormals.
struct HeatTileParams {
  std::uint32_t side = 0;
  float alpha = 0.2f;
};

class GpuMirror {
 public:
  // Attaches to `runtime` and `propagator` and mirrors their device pages. Never throws for a missing device
  // (see Fallback); throws Error(InvalidArgument) for a GpuOptions value out of range.
  GpuMirror(Runtime& runtime, Propagator& propagator, GpuOptions options = {});
  ~GpuMirror();
  GpuMirror(const GpuMirror&) = delete;
  GpuMirror& operator=(const GpuMirror&) = delete;

  GpuBackend backend() const noexcept;
  // The upload path in use (never Auto; CopyRegions in the CPU fallback, where nothing is uploaded).
  UploadPath upload_path() const noexcept;
  // "llvmpipe (LLVM 15.0.6, 256 bits)" and the like; "cpu" in the fallback.
  std::string device_name() const;

  bool is_mirrored(PageId page) const;
  // The device copy of a mirrored page (waits for pending uploads). In the fallback: the host bytes of any
  // device page. Throws Error(NotFound) for a page that is not mirrored.
  std::vector<std::byte> read_device(PageId page);
  // Waits until every submitted upload and dispatch has finished on the device.
  void wait_idle();

  // Makes `output` a device node: a stencil step over `input` (see Stencil5Params). Both pages must be device
  // pages (Device or Both) at least width * height * 4 bytes long; throws Error(InvalidArgument) otherwise. The
  // node runs in the next wave that changes `input` (or, for a device-only `input`, its producer's inputs);
  // Propagator::recompute(output) runs it now.
  void derive_stencil5(PageId output, PageId input, Stencil5Params params);

  // Makes `output` a device node: one heat step (HeatTileParams) of the tile `cell` with the halo pages
  // `halo` = {north, south, west, east}. The node is incremental over the distinct pages among cell and halo and
  // runs in every wave that changes one of them. All pages must be device pages (Device or Both) that are not
  // device-only outputs of other device nodes; `cell` and `output` hold at least side * side floats, each halo
  // page at least side floats. Throws Error(InvalidArgument) otherwise.
  void derive_heat_tile(PageId output, PageId cell, const std::array<PageId, 4>& halo, HeatTileParams params);

  GpuStats stats() const;

  struct Impl;

 private:
  std::unique_ptr<Impl> impl_;
};

// The CPU kernel behind derive_stencil5 (also what the fallback runs): one step from `in` to `out`, both
// width * height cells. For tests and benchmarks that compare the backends.
void stencil5_step_cpu(const std::int32_t* in, std::int32_t* out, std::uint32_t width, std::uint32_t height);

// The CPU twin of derive_heat_tile (also what the fallback runs): `cell` and `out` hold side * side floats, each
// halo side floats. Compiled without FMA contraction; the same bits as the shader.
void heat_tile_step_cpu(const float* cell, const float* north, const float* south, const float* west, const float* east,
                        float* out, std::uint32_t side, float alpha);

}  // namespace mmsb
