// gpu/mirror_impl.hpp — the state behind GpuMirror (mmsb/gpu.hpp describes the behaviour), shared by the files
// that implement it, one per concern: mirror_setup.cpp (the Vulkan objects), mirror_memory.cpp (device memory,
// the staging ring, submission), mirror_upload.cpp (tracking pages, uploads), mirror_readback.cpp (reading device
// memory back) and mirror_nodes.cpp (device nodes); gpu_mirror.cpp holds the public methods.
//
// How changes reach the device. The mirror subscribes to every device page; after a wave the Propagator hands it
// each page's delta, whose payload is copied straight into the open slot of the staging ring (the slot's previous
// submit is waited for when the slot is opened). A second delta of the same page in one delivery (DEFERRED or
// BATCH waves) is composed with the first instead, so one wave never writes a byte twice and vkCmdCopyBuffer
// regions never overlap. The first Commit or WaveEnd event of the delivery then submits one command buffer: a
// barrier (ordering it after earlier submits), then one vkCmdCopyBuffer per device buffer with one region per
// changed range. Its timeline value is waited for only when that slot comes round again, so the upload overlaps the
// next wave.
//
// Epochs. Each mirrored page records the epoch its device copy will have once pending work is submitted. A delta
// that does not start at that epoch (deliveries of concurrent waves overtaking each other, or a device node having
// uploaded the page itself) is either already covered (skipped) or leaves a gap, in which case the whole page is
// read from the host and uploaded again. Resizes also upload the whole page. So the mirror converges to the host
// bytes whatever order the observers run in.
//
// Locks. `mutex` guards all mirror and Vulkan state. It is never held while taking a page lock (the Propagator
// holds page locks while a device node waits for `mutex`), so whole-page reads happen before locking it.
//
// Thread-safety: as GpuMirror's; every member marked `mutex` is guarded by Impl::mutex.
#pragma once

#include <vulkan/vulkan.h>

#include <array>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <unordered_map>
#include <unordered_set>
#include <utility>
#include <vector>

#include "gpu/device_allocator.hpp"
#include "gpu/kernels.hpp"
#include "gpu/vulkan_context.hpp"
#include "mmsb/delta.hpp"
#include "mmsb/gpu.hpp"
#include "mmsb/graph.hpp"
#include "mmsb/runtime.hpp"
#include "runtime/runtime_impl.hpp"

namespace mmsb {
namespace gpu {

// A page's place in device memory.
struct Region {
  std::uint32_t block = 0;
  std::uint64_t offset = 0;
  std::uint64_t capacity = 0;  // bytes requested from the allocator
};

struct MirroredPage {
  Region region;
  std::uint64_t size = 0;
  std::uint64_t epoch = 0;    // what the device copy holds once pending work is submitted
  bool needs_whole = false;   // re-read the page from the host and upload it entirely
  bool device_ahead = false;  // output of a device-only node: the device copy is the authoritative one
  SubscriptionId subscription = 0;
};

struct Block {
  Buffer buffer;  // mapped with UploadPath::DirectWrite
  gpu::RangeAllocator ranges;
  // DirectWrite into non-coherent memory: the bytes written since the last flush, [begin, end).
  std::uint64_t dirty_begin = UINT64_MAX;
  std::uint64_t dirty_end = 0;
};

// One slot of the staging ring: a command buffer, the timeline value its submit signals and a host-visible buffer
// that grows as needed.
struct StagingSlot {
  VkCommandBuffer commands = VK_NULL_HANDLE;
  std::uint64_t value = 0;                        // the timeline value of this slot's last submit
  VkDescriptorPool descriptors = VK_NULL_HANDLE;  // scatter-shader descriptor sets of this slot's submit
  std::uint32_t descriptor_capacity = 0;
  Buffer staging;
  bool in_flight = false;
};

// A bytes-to-copy item of an upload: `length` bytes from `source` to `offset` of the page's region.
struct UploadPiece {
  std::uint32_t block;
  std::uint64_t target;  // byte offset in the block
  const std::byte* source;
  std::uint64_t length;
};

struct DeviceNode {
  PageId output;
  PageId input;
  Stencil5Params params;
  std::vector<PageId> triggers;   // the node's DATA inputs in the Propagator
  bool device_only = false;       // output is Location::Device: not read back
  std::optional<Region> scratch;  // ping-pong grid for steps > 1
  // A kernel of the table (gpu/kernels.hpp) instead of the stencil: its inputs in binding order (a page may
  // repeat; `triggers` holds each once) and its push constants.
  std::optional<gpu::KernelId> kernel;
  std::vector<PageId> kernel_inputs;
  std::vector<std::uint32_t> push;
};

// The Vulkan objects of one kernel of the table.
struct KernelPipeline {
  VkDescriptorSetLayout set_layout = VK_NULL_HANDLE;
  VkPipelineLayout layout = VK_NULL_HANDLE;
  VkPipeline pipeline = VK_NULL_HANDLE;
};

}  // namespace gpu

struct GpuMirror::Impl {
  Runtime& runtime;
  Runtime::Impl& runtime_impl;
  Propagator& propagator;
  GpuOptions options;
  std::unique_ptr<gpu::VulkanContext> vk;  // null in the CPU fallback

  mutable std::mutex mutex;
  std::unordered_map<PageId, gpu::MirroredPage> pages;              // mutex
  std::map<PageId, Delta> pending;                                  // mutex; composed deltas of this wave, per page
  std::unordered_set<PageId> whole_wanted;                          // mutex; the pages with needs_whole set
  std::vector<std::pair<gpu::Region, std::uint64_t>> zero_regions;  // mutex: fills for the next submit
  // Copy path: a page's first delta of a delivery is written straight into the open staging slot.
  struct StagedRange {
    PageId page;
    std::uint32_t block;
    std::uint64_t target;   // byte offset in the device buffer
    std::uint64_t staging;  // byte offset in the staging buffer
    std::uint64_t length;
  };
  std::vector<StagedRange> staged;                    // mutex
  std::unordered_set<PageId> staged_pages;            // mutex
  std::uint64_t staged_bytes = 0;                     // mutex; staging bytes used (also by unstaged ranges)
  gpu::StagingSlot* open_slot = nullptr;              // mutex; the slot the next submit will use, already waited
  std::vector<gpu::Block> blocks;                     // mutex
  std::vector<gpu::StagingSlot> slots;                // mutex
  std::size_t next_slot = 0;                          // mutex
  std::unordered_map<PageId, gpu::DeviceNode> nodes;  // mutex
  GpuStats counters;                                  // mutex (pages_mirrored and device_* computed on demand)
  // The path in use (UploadPath::Auto resolved when the device is opened); `direct` for DirectWrite.
  UploadPath upload_mode = UploadPath::CopyRegions;
  bool direct = false;
  bool direct_written = false;  // mutex; something was written directly since the last flush
  std::uint64_t granule = 256;

  // Vulkan objects of the compute side.
  VkCommandPool command_pool = VK_NULL_HANDLE;
  VkCommandBuffer node_commands = VK_NULL_HANDLE;
  // One timeline semaphore orders the queue's work: every submit signals the next value. An upload submit's value
  // is recorded in its slot and in `uploaded_value`; a device node's submit waits on `uploaded_value` (the uploads
  // of its inputs), and the host waits for values (vkWaitSemaphores) instead of fences.
  VkSemaphore timeline = VK_NULL_HANDLE;
  std::uint64_t timeline_value = 0;  // mutex; the last value a submit will signal
  std::uint64_t uploaded_value = 0;  // mutex; the value of the last upload submit
  VkDescriptorPool node_descriptors = VK_NULL_HANDLE;
  VkDescriptorSetLayout set_layout = VK_NULL_HANDLE;
  VkPipelineLayout pipeline_layout = VK_NULL_HANDLE;
  VkPipeline stencil_pipeline = VK_NULL_HANDLE;
  VkPipeline scatter_pipeline = VK_NULL_HANDLE;
  std::array<gpu::KernelPipeline, static_cast<std::size_t>(gpu::KernelId::Count)> kernel_pipelines{};
  VkDescriptorPool kernel_descriptors = VK_NULL_HANDLE;  // one set per kernel node run (reset each run)
  gpu::Buffer readback;

  std::vector<SubscriptionId> event_subscriptions;

  Impl(Runtime& rt, Propagator& prop, GpuOptions opts)
      : runtime(rt), runtime_impl(detail::RuntimeAccess::of(rt)), propagator(prop), options(std::move(opts)) {}

  bool on_device() const noexcept { return vk != nullptr; }

  // Set-up and tear-down of the Vulkan objects (mirror_setup.cpp).
  void open_device();
  VkDescriptorSetLayout create_set_layout(std::uint32_t buffers);
  VkPipelineLayout create_pipeline_layout(const VkDescriptorSetLayout& set, std::uint32_t push_bytes);
  VkPipeline create_pipeline(std::span<const std::uint32_t> spirv, VkPipelineLayout layout);
  VkDescriptorPool create_descriptor_pool(std::uint32_t sets, std::uint32_t buffers_per_set = 2);
  VkSemaphore create_timeline();
  void create_compute_objects();
  void destroy_vulkan_objects() noexcept;

  // Device memory, the staging ring and command submission (mirror_memory.cpp).
  gpu::Region allocate_region(std::uint64_t size);
  void free_region(const gpu::Region& region);
  void zero_fill(const gpu::Region& region, std::uint64_t size);
  gpu::StagingSlot& open_staging();
  void reserve_staging(gpu::StagingSlot& slot, std::uint64_t bytes, std::uint64_t keep);
  void ensure_capacity(gpu::Buffer& buffer, std::uint64_t bytes);
  void wait_slot(gpu::StagingSlot& slot);
  void wait_all_slots();
  static void barrier(VkCommandBuffer cmd);
  static void begin(VkCommandBuffer cmd);
  std::uint64_t submit(VkCommandBuffer cmd, bool after_uploads);
  void wait_value(std::uint64_t value);
  VkDescriptorSet descriptor_set(VkDescriptorPool pool, VkBuffer first, VkBuffer second);

  // Tracking device pages and uploading their changes (mirror_upload.cpp).
  void track(PageId id);
  void untrack(PageId id);
  void on_delta(PageId id, const Delta& delta, std::uint64_t epoch);
  void write_direct(std::uint32_t block, std::uint64_t offset, const std::byte* source, std::uint64_t length);
  void flush_direct_locked();
  void stage_direct(PageId id, const gpu::MirroredPage& page, const Delta& delta);
  void unstage(PageId id);
  Delta unstage_as_delta(PageId id, const gpu::MirroredPage& page, std::uint64_t epoch);
  void gather_whole_pages();
  void queue_whole_locked(PageId id, gpu::MirroredPage& page, std::span<const std::byte> bytes, std::uint64_t epoch);
  std::vector<gpu::UploadPiece> pending_pieces();
  std::uint64_t scatter_bytes(const std::vector<gpu::UploadPiece>& pieces) const;
  std::uint64_t record_scatter(VkCommandBuffer cmd, const gpu::Buffer& staging, VkDescriptorPool pool,
                               const std::vector<gpu::UploadPiece>& pieces);
  void record_zero_fills(VkCommandBuffer cmd);
  void flush_locked();
  void record_staged_copies(VkCommandBuffer cmd, const gpu::Buffer& staging);
  void flush();

  // Reading device memory back to the host (mirror_readback.cpp).
  std::vector<std::byte> read_device(PageId id);
  void download(VkCommandBuffer cmd, const gpu::Region& region, std::uint64_t size, std::uint64_t at);
  void finish_node_locked(bool device_only, PageId output, gpu::MirroredPage& out_page, std::uint64_t out_bytes,
                          const IncrementalContext& ctx, Delta& out);
  static void diff_result(std::span<const std::byte> old_bytes, std::span<const std::byte> new_bytes, Delta& out);
  [[noreturn]] static void throw_not_mirrored(PageId id);

  // Device nodes (mirror_nodes.cpp).
  std::uint64_t host_epoch(PageId id) const;
  void queue_input_locked(PageId id, gpu::MirroredPage& in_page, std::span<const std::byte> input_bytes,
                          const Delta* input_delta);
  void run_stencil(PageId output, const IncrementalContext& ctx, Delta& out);
  void run_kernel(PageId output, const IncrementalContext& ctx, Delta& out);
  VkDescriptorSet kernel_descriptor_set(const gpu::DeviceNode& node,
                                        const std::vector<const gpu::MirroredPage*>& in_pages,
                                        const gpu::MirroredPage& out_page, std::uint64_t out_bytes);
  [[noreturn]] static void kernel_too_small(const gpu::DeviceNode& node, const gpu::KernelInfo& kernel, PageId page,
                                            std::uint64_t has, std::uint64_t need);
  void derive_kernel(gpu::KernelId id, PageId output, std::vector<PageId> inputs, std::vector<std::uint32_t> push);
  static void check_grid(const gpu::DeviceNode& node, std::uint64_t input_size, std::uint64_t output_size);
};

}  // namespace mmsb
