// GpuMirror: device pages on Vulkan through the Propagator's public observers, and device nodes as incremental
// nodes whose function runs a compute shader (mmsb/gpu.hpp describes the behaviour).
//
// How changes reach the device. The mirror subscribes to every device page; after a wave the Propagator hands it
// each page's delta, whose payload is copied straight into the open slot of the staging ring (the slot's previous
// submit is waited for when the slot is opened). A second delta of the same page in one delivery (DEFERRED or
// BATCH waves) is composed with the first instead, so one wave never writes a byte twice and vkCmdCopyBuffer
// regions never overlap. The first Commit or WaveEnd event of the delivery then submits one command buffer: a
// barrier (ordering it after earlier submits), then one vkCmdCopyBuffer per device buffer with one region per
// changed range. Its timeline value is waited for only when that slot comes round again, so the upload overlaps the next
// wave.
//
// Epochs. Each mirrored page records the epoch its device copy will have once pending work is submitted. A delta
// that does not start at that epoch (deliveries of concurrent waves overtaking each other, or a device node having
// uploaded the page itself) is either already covered (skipped) or leaves a gap, in which case the whole page is
// read from the host and uploaded again. Resizes also upload the whole page. So the mirror converges to the host
// bytes whatever order the observers run in.
//
// Locks. `mutex` guards all mirror and Vulkan state. It is never held while taking a page lock (the Propagator
// holds page locks while a device node waits for `mutex`), so whole-page reads happen before locking it.
#include <vulkan/vulkan.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <unordered_map>
#include <unordered_set>
#include <utility>
#include <vector>

#include "gpu/device_allocator.hpp"
#include "gpu/kernels.hpp"
#include "gpu/shaders.hpp"
#include "gpu/vulkan_context.hpp"
#include "mmsb/delta.hpp"
#include "mmsb/error.hpp"
#include "mmsb/gpu.hpp"
#include "mmsb/graph.hpp"
#include "mmsb/runtime.hpp"
#include "runtime/logging.hpp"
#include "runtime/runtime_impl.hpp"

namespace mmsb {
namespace {

using gpu::Buffer;
using gpu::check;

std::uint64_t steady_ns() {
  return static_cast<std::uint64_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(
                                        std::chrono::steady_clock::now().time_since_epoch())
                                        .count());
}

// A page's place in device memory.
struct Region {
  std::uint32_t block = 0;
  std::uint64_t offset = 0;
  std::uint64_t capacity = 0;  // bytes requested from the allocator
};

struct MirroredPage {
  Region region;
  std::uint64_t size = 0;
  std::uint64_t epoch = 0;           // what the device copy holds once pending work is submitted
  bool needs_whole = false;          // re-read the page from the host and upload it entirely
  bool device_ahead = false;         // output of a device-only node: the device copy is the authoritative one
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
  std::uint64_t value = 0;  // the timeline value of this slot's last submit
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
  std::vector<PageId> triggers;  // the node's DATA inputs in the Propagator
  bool device_only = false;      // output is Location::Device: not read back
  std::optional<Region> scratch; // ping-pong grid for steps > 1
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

constexpr std::uint64_t kMinStagingBytes = std::uint64_t{1} << 20;


// A device node computes its whole output from its inputs' current bytes (a delta only spares uploads), so run
// without deltas it is its own rebuild function (Propagator::derive_incremental): what recompute() runs, and what
// makes its page exact after a restart (mmsb/durable.hpp).
MapFunction rebuild_from(IncrementalFunction fn, PageId output) {
  return [fn = std::move(fn), output](MapContext& c) {
    std::vector<std::span<const std::byte>> inputs(c.input_count());
    for (std::size_t i = 0; i < inputs.size(); ++i) inputs[i] = c.input(i);
    const std::vector<const Delta*> none(inputs.size(), nullptr);
    const std::span<std::byte> out = c.output();
    Delta d;
    fn(IncrementalContext{inputs, none, out, output}, d);
    const std::byte* src = d.payload.data();
    for (const ByteRange& r : d.ranges) {
      if (r.offset > out.size() || r.length > out.size() - r.offset) {
        throw Error(ErrorCode::Internal, "device node " + output.to_string() + " produced a range past its page");
      }
      std::memcpy(out.data() + r.offset, src, r.length);
      src += r.length;
    }
  };
}

}  // namespace

struct GpuMirror::Impl {
  Runtime& runtime;
  Runtime::Impl& runtime_impl;
  Propagator& propagator;
  GpuOptions options;
  std::unique_ptr<gpu::VulkanContext> vk;  // null in the CPU fallback

  mutable std::mutex mutex;
  std::unordered_map<PageId, MirroredPage> pages;   // mutex
  std::map<PageId, Delta> pending;                  // mutex; composed deltas of this wave, per page
  std::unordered_set<PageId> whole_wanted;          // mutex; the pages with needs_whole set
  // Copy path: a page's first delta of a delivery is written straight into the open staging slot.
  struct StagedRange {
    PageId page;
    std::uint32_t block;
    std::uint64_t target;   // byte offset in the device buffer
    std::uint64_t staging;  // byte offset in the staging buffer
    std::uint64_t length;
  };
  std::vector<StagedRange> staged;                  // mutex
  std::unordered_set<PageId> staged_pages;          // mutex
  std::uint64_t staged_bytes = 0;                   // mutex; staging bytes used (also by unstaged ranges)
  StagingSlot* open_slot = nullptr;                 // mutex; the slot the next submit will use, already waited
  std::vector<Block> blocks;                        // mutex
  std::vector<StagingSlot> slots;                   // mutex
  std::size_t next_slot = 0;                        // mutex
  std::unordered_map<PageId, DeviceNode> nodes;     // mutex
  GpuStats counters;                                // mutex (pages_mirrored and device_* computed on demand)
  // The path in use (UploadPath::Auto resolved when the device is opened); `direct` for DirectWrite.
  UploadPath upload_mode = UploadPath::CopyRegions;
  bool direct = false;
  bool direct_written = false;                      // mutex; something was written directly since the last flush
  std::uint64_t granule = 256;

  // Vulkan objects of the compute side.
  VkCommandPool command_pool = VK_NULL_HANDLE;
  VkCommandBuffer node_commands = VK_NULL_HANDLE;
  // One timeline semaphore orders the queue's work: every submit signals the next value. An upload submit's value
  // is recorded in its slot and in `uploaded_value`; a device node's submit waits on `uploaded_value` (the uploads
  // of its inputs), and the host waits for values (vkWaitSemaphores) instead of fences.
  VkSemaphore timeline = VK_NULL_HANDLE;
  std::uint64_t timeline_value = 0;   // mutex; the last value a submit will signal
  std::uint64_t uploaded_value = 0;   // mutex; the value of the last upload submit
  VkDescriptorPool node_descriptors = VK_NULL_HANDLE;
  VkDescriptorSetLayout set_layout = VK_NULL_HANDLE;
  VkPipelineLayout pipeline_layout = VK_NULL_HANDLE;
  VkPipeline stencil_pipeline = VK_NULL_HANDLE;
  VkPipeline scatter_pipeline = VK_NULL_HANDLE;
  std::array<KernelPipeline, static_cast<std::size_t>(gpu::KernelId::Count)> kernel_pipelines{};
  VkDescriptorPool kernel_descriptors = VK_NULL_HANDLE;  // one set per kernel node run (reset each run)
  Buffer readback;

  std::vector<SubscriptionId> event_subscriptions;

  Impl(Runtime& rt, Propagator& prop, GpuOptions opts)
      : runtime(rt), runtime_impl(detail::RuntimeAccess::of(rt)), propagator(prop), options(std::move(opts)) {}

  bool on_device() const noexcept { return vk != nullptr; }

  // --- set-up and tear-down ---------------------------------------------------------------------------------

  void open_device() {
    std::string selector = options.device;
    if (selector.empty()) {
      if (const char* env = std::getenv("MMSB_VULKAN_DEVICE")) selector = env;
    }
    if (selector == "none") {
      detail::logger()->warn("gpu: MMSB_VULKAN_DEVICE=none: device pages stay on the host and device nodes run "
                             "their CPU kernels");
      return;
    }
    std::string why_not;
    try {
      vk = gpu::VulkanContext::create(selector, why_not);
    } catch (const std::exception& e) {
      why_not = e.what();
    }
    if (!vk) {
      detail::logger()->warn("gpu: no usable Vulkan device ({}); device pages stay on the host and device nodes "
                             "run their CPU kernels",
                             why_not);
      return;
    }
    upload_mode = options.upload;
    if (upload_mode == UploadPath::Auto) {
      upload_mode = vk->host_visible_device_memory() ? UploadPath::DirectWrite : UploadPath::CopyRegions;
    } else if (upload_mode == UploadPath::DirectWrite && !vk->host_visible_device_memory()) {
      detail::logger()->warn("gpu: {} has no host-visible device memory; UploadPath::DirectWrite falls back to "
                             "CopyRegions",
                             vk->name());
      upload_mode = UploadPath::CopyRegions;
    }
    direct = upload_mode == UploadPath::DirectWrite;
    try {
      create_compute_objects();
    } catch (const std::exception& e) {
      destroy_vulkan_objects();
      vk.reset();
      detail::logger()->warn("gpu: Vulkan set-up failed ({}); device pages stay on the host and device nodes run "
                             "their CPU kernels",
                             e.what());
    }
  }

  // A set layout of `buffers` storage buffers at bindings 0.. (every compute shader here takes its pages so).
  VkDescriptorSetLayout create_set_layout(std::uint32_t buffers) {
    std::vector<VkDescriptorSetLayoutBinding> bindings(buffers);
    for (std::uint32_t i = 0; i < buffers; ++i) {
      bindings[i].binding = i;
      bindings[i].descriptorType = VK_DESCRIPTOR_TYPE_STORAGE_BUFFER;
      bindings[i].descriptorCount = 1;
      bindings[i].stageFlags = VK_SHADER_STAGE_COMPUTE_BIT;
    }
    VkDescriptorSetLayoutCreateInfo info{};
    info.sType = VK_STRUCTURE_TYPE_DESCRIPTOR_SET_LAYOUT_CREATE_INFO;
    info.bindingCount = buffers;
    info.pBindings = bindings.data();
    VkDescriptorSetLayout layout = VK_NULL_HANDLE;
    check(vkCreateDescriptorSetLayout(vk->device(), &info, nullptr, &layout), "vkCreateDescriptorSetLayout");
    return layout;
  }

  // A pipeline layout of one set and `push_bytes` of push constants (none when 0).
  VkPipelineLayout create_pipeline_layout(const VkDescriptorSetLayout& set, std::uint32_t push_bytes) {
    VkPushConstantRange push{VK_SHADER_STAGE_COMPUTE_BIT, 0, push_bytes};
    VkPipelineLayoutCreateInfo info{};
    info.sType = VK_STRUCTURE_TYPE_PIPELINE_LAYOUT_CREATE_INFO;
    info.setLayoutCount = 1;
    info.pSetLayouts = &set;
    info.pushConstantRangeCount = push_bytes > 0 ? 1 : 0;
    info.pPushConstantRanges = &push;
    VkPipelineLayout layout = VK_NULL_HANDLE;
    check(vkCreatePipelineLayout(vk->device(), &info, nullptr, &layout), "vkCreatePipelineLayout");
    return layout;
  }

  VkPipeline create_pipeline(std::span<const std::uint32_t> spirv, VkPipelineLayout layout) {
    VkShaderModuleCreateInfo module_info{};
    module_info.sType = VK_STRUCTURE_TYPE_SHADER_MODULE_CREATE_INFO;
    module_info.codeSize = spirv.size_bytes();
    module_info.pCode = spirv.data();
    VkShaderModule module = VK_NULL_HANDLE;
    check(vkCreateShaderModule(vk->device(), &module_info, nullptr, &module), "vkCreateShaderModule");
    VkComputePipelineCreateInfo info{};
    info.sType = VK_STRUCTURE_TYPE_COMPUTE_PIPELINE_CREATE_INFO;
    info.stage.sType = VK_STRUCTURE_TYPE_PIPELINE_SHADER_STAGE_CREATE_INFO;
    info.stage.stage = VK_SHADER_STAGE_COMPUTE_BIT;
    info.stage.module = module;
    info.stage.pName = "main";
    info.layout = layout;
    VkPipeline pipeline = VK_NULL_HANDLE;
    const VkResult r = vkCreateComputePipelines(vk->device(), VK_NULL_HANDLE, 1, &info, nullptr, &pipeline);
    vkDestroyShaderModule(vk->device(), module, nullptr);
    check(r, "vkCreateComputePipelines");
    return pipeline;
  }

  VkDescriptorPool create_descriptor_pool(std::uint32_t sets, std::uint32_t buffers_per_set = 2) {
    VkDescriptorPoolSize size{VK_DESCRIPTOR_TYPE_STORAGE_BUFFER, buffers_per_set * sets};
    VkDescriptorPoolCreateInfo info{};
    info.sType = VK_STRUCTURE_TYPE_DESCRIPTOR_POOL_CREATE_INFO;
    info.maxSets = sets;
    info.poolSizeCount = 1;
    info.pPoolSizes = &size;
    VkDescriptorPool pool = VK_NULL_HANDLE;
    check(vkCreateDescriptorPool(vk->device(), &info, nullptr, &pool), "vkCreateDescriptorPool");
    return pool;
  }

  VkSemaphore create_timeline() {
    VkSemaphoreTypeCreateInfo type{};
    type.sType = VK_STRUCTURE_TYPE_SEMAPHORE_TYPE_CREATE_INFO;
    type.semaphoreType = VK_SEMAPHORE_TYPE_TIMELINE;
    type.initialValue = 0;
    VkSemaphoreCreateInfo info{};
    info.sType = VK_STRUCTURE_TYPE_SEMAPHORE_CREATE_INFO;
    info.pNext = &type;
    VkSemaphore semaphore = VK_NULL_HANDLE;
    check(vkCreateSemaphore(vk->device(), &info, nullptr, &semaphore), "vkCreateSemaphore");
    return semaphore;
  }

  void create_compute_objects() {
    const VkDevice device = vk->device();
    granule = std::max<std::uint64_t>(64, vk->properties().limits.minStorageBufferOffsetAlignment);

    VkCommandPoolCreateInfo pool_info{};

    pool_info.sType = VK_STRUCTURE_TYPE_COMMAND_POOL_CREATE_INFO;
    pool_info.flags = VK_COMMAND_POOL_CREATE_RESET_COMMAND_BUFFER_BIT;
    pool_info.queueFamilyIndex = vk->queue_family();
    check(vkCreateCommandPool(device, &pool_info, nullptr, &command_pool), "vkCreateCommandPool");

    set_layout = create_set_layout(2);
    pipeline_layout = create_pipeline_layout(set_layout, 16);
    stencil_pipeline = create_pipeline(gpu::stencil5_spirv(), pipeline_layout);
    scatter_pipeline = create_pipeline(gpu::scatter_apply_spirv(), pipeline_layout);
    std::uint32_t most_buffers = 2;
    for (std::size_t k = 0; k < kernel_pipelines.size(); ++k) {
      const gpu::KernelInfo& info = gpu::kernel_info(static_cast<gpu::KernelId>(k));
      KernelPipeline& kp = kernel_pipelines[k];
      const std::uint32_t buffers = info.inputs + 1;
      most_buffers = std::max(most_buffers, buffers);
      kp.set_layout = create_set_layout(buffers);
      kp.layout = create_pipeline_layout(kp.set_layout, 4 * info.push_words);
      kp.pipeline = create_pipeline(info.spirv(), kp.layout);
    }
    kernel_descriptors = create_descriptor_pool(1, most_buffers);

    const std::uint32_t command_count = options.staging_slots + 1;
    std::vector<VkCommandBuffer> commands(command_count);
    VkCommandBufferAllocateInfo alloc{};
    alloc.sType = VK_STRUCTURE_TYPE_COMMAND_BUFFER_ALLOCATE_INFO;
    alloc.commandPool = command_pool;
    alloc.level = VK_COMMAND_BUFFER_LEVEL_PRIMARY;
    alloc.commandBufferCount = command_count;
    check(vkAllocateCommandBuffers(device, &alloc, commands.data()), "vkAllocateCommandBuffers");
    slots.resize(options.staging_slots);
    for (std::uint32_t i = 0; i < options.staging_slots; ++i) {
      slots[i].commands = commands[i];
      slots[i].descriptor_capacity = 16;
      slots[i].descriptors = create_descriptor_pool(slots[i].descriptor_capacity);
    }
    node_commands = commands[options.staging_slots];
    timeline = create_timeline();
    node_descriptors = create_descriptor_pool(8);
  }

  void destroy_vulkan_objects() noexcept {
    if (!vk) return;
    const VkDevice device = vk->device();
    vkDeviceWaitIdle(device);
    for (StagingSlot& slot : slots) {
      if (slot.descriptors) vkDestroyDescriptorPool(device, slot.descriptors, nullptr);
      vk->destroy(slot.staging);
    }
    slots.clear();
    for (Block& block : blocks) vk->destroy(block.buffer);
    blocks.clear();
    vk->destroy(readback);
    if (timeline) vkDestroySemaphore(device, timeline, nullptr);
    if (node_descriptors) vkDestroyDescriptorPool(device, node_descriptors, nullptr);
    if (kernel_descriptors) vkDestroyDescriptorPool(device, kernel_descriptors, nullptr);
    for (KernelPipeline& kp : kernel_pipelines) {
      if (kp.pipeline) vkDestroyPipeline(device, kp.pipeline, nullptr);
      if (kp.layout) vkDestroyPipelineLayout(device, kp.layout, nullptr);
      if (kp.set_layout) vkDestroyDescriptorSetLayout(device, kp.set_layout, nullptr);
    }
    if (command_pool) vkDestroyCommandPool(device, command_pool, nullptr);  // frees its command buffers
    if (stencil_pipeline) vkDestroyPipeline(device, stencil_pipeline, nullptr);
    if (scatter_pipeline) vkDestroyPipeline(device, scatter_pipeline, nullptr);
    if (pipeline_layout) vkDestroyPipelineLayout(device, pipeline_layout, nullptr);
    if (set_layout) vkDestroyDescriptorSetLayout(device, set_layout, nullptr);
  }

  // --- device memory ------------------------------------------------------------------------------------------

  Region allocate_region(std::uint64_t size) {
    std::optional<std::uint32_t> released;
    for (std::uint32_t i = 0; i < blocks.size(); ++i) {
      if (!blocks[i].buffer.buffer) {
        if (!released) released = i;
        continue;
      }
      if (auto offset = blocks[i].ranges.allocate(size)) return Region{i, *offset, size};
    }
    const std::uint64_t rounded = gpu::RangeAllocator(0, granule).rounded(size);
    const std::uint64_t bytes = std::max(options.block_bytes, rounded);
    Block block{vk->create_device_buffer(bytes, direct), gpu::RangeAllocator(bytes, granule)};
    vk->advise_huge_pages(block.buffer);  // before the first write (CPU drivers only; see docs/gpu.md)
    // Region::block indexes `blocks`, so a released block's slot is reused rather than erased.
    const std::uint32_t index = released ? *released : static_cast<std::uint32_t>(blocks.size());
    if (released) {
      blocks[index] = std::move(block);
    } else {
      blocks.push_back(std::move(block));
    }
    const auto offset = blocks[index].ranges.allocate(size);
    return Region{index, *offset, size};
  }

  // Returns a region; a block left empty goes back to the driver (vkFreeMemory) once no submit can use it.
  void free_region(const Region& region) {
    Block& block = blocks[region.block];
    block.ranges.free(region.offset, region.capacity);
    if (block.ranges.used() != 0) return;
    wait_all_slots();  // no in-flight upload may still write the buffer
    zero_regions.erase(std::remove_if(zero_regions.begin(), zero_regions.end(),
                                      [&](const auto& z) { return z.first.block == region.block; }),
                       zero_regions.end());
    vk->destroy(block.buffer);
    block = Block{Buffer{}, gpu::RangeAllocator(0, granule)};
  }

  // --- tracking pages -------------------------------------------------------------------------------------------

  // Starts mirroring `id` if it is a device page. Takes page locks: call without `mutex`.
  void track(PageId id) {
    PageInfo info;
    try {
      info = runtime.info(id);
    } catch (const Error&) {
      return;  // deleted meanwhile
    }
    if (info.location == Location::Host || !on_device()) return;
    {
      std::lock_guard lock(mutex);
      if (pages.count(id)) return;
      MirroredPage page;
      page.region = allocate_region(info.size);
      page.size = info.size;
      page.epoch = info.epoch;
      // A fresh page is all zeros: clearing the region is enough. Existing bytes are read and uploaded at the
      // next flush.
      page.needs_whole = info.epoch != 0;
      if (page.needs_whole) {
        whole_wanted.insert(id);
      } else {
        zero_fill(page.region, info.size);
      }
      pages.emplace(id, page);
    }
    SubscriptionId sub = 0;
    try {
      sub = propagator.subscribe(id, [this, id](const Delta& delta, std::uint64_t epoch) { on_delta(id, delta, epoch); });
    } catch (const Error&) {
      // The page was deleted before we could subscribe; the PageDeleted event drops it.
      return;
    }
    // A commit between info() and subscribe() reached no subscriber: catch it by its epoch.
    std::uint64_t epoch_now = info.epoch;
    try {
      epoch_now = runtime.info(id).epoch;
    } catch (const Error&) {  // deleted: the PageDeleted event drops the page
    }
    std::lock_guard lock(mutex);
    auto it = pages.find(id);
    if (it == pages.end()) {
      propagator.unsubscribe(sub);
      return;
    }
    it->second.subscription = sub;
    if (epoch_now > it->second.epoch && !it->second.needs_whole) {
      it->second.needs_whole = true;
      it->second.epoch = epoch_now;
      whole_wanted.insert(id);
    }
  }

  void untrack(PageId id) {
    SubscriptionId sub = 0;
    {
      std::lock_guard lock(mutex);
      auto it = pages.find(id);
      if (it == pages.end()) return;
      wait_all_slots();  // no in-flight copy may still target the region we hand back
      free_region(it->second.region);
      sub = it->second.subscription;
      pages.erase(it);
      pending.erase(id);
      whole_wanted.erase(id);
      unstage(id);
    }
    if (sub) propagator.unsubscribe(sub);
  }

  void zero_fill(const Region& region, std::uint64_t size) {
    if (size == 0) return;
    if (direct) {
      write_direct(region.block, region.offset, nullptr, size);
      return;
    }
    // Recorded as part of the next upload so that it stays ordered with it; a fill is rare (page creation).
    zero_regions.push_back({region, size});
  }
  std::vector<std::pair<Region, std::uint64_t>> zero_regions;  // mutex: fills for the next submit

  // A delta of a mirrored page, delivered after its wave.
  void on_delta(PageId id, const Delta& delta, std::uint64_t epoch) {
    std::lock_guard lock(mutex);
    auto it = pages.find(id);
    if (it == pages.end()) return;
    MirroredPage& page = it->second;
    if (page.device_ahead) return;  // device-only output: the host copy is not authoritative
    if (page.needs_whole) {
      // The whole page will be read at the flush; remember how far the host has got, so that a read taken
      // before this delta's commit is not mistaken for the latest state.
      page.epoch = std::max(page.epoch, epoch);
      return;
    }
    if (epoch <= page.epoch) return;  // already on the device (a device node uploaded it)
    if (delta.base_size != delta.size || delta.base_epoch != page.epoch) {
      page.needs_whole = true;
      whole_wanted.insert(id);
      page.epoch = epoch;
      pending.erase(id);
      unstage(id);
      return;
    }
    counters.bytes_changed += delta.changed_bytes();
    if (direct && !pending.count(id)) {
      // Straight into device memory. A later delta of the page in the same delivery is written over this one
      // (overlapping bytes are written twice: cheaper than composing, since this write is the whole upload).
      const std::uint64_t started = steady_ns();
      const std::byte* payload = delta.payload.data();
      for (const ByteRange& r : delta.ranges) {
        write_direct(page.region.block, page.region.offset + r.offset, payload, r.length);
        payload += r.length;
      }
      counters.bytes_uploaded += delta.changed_bytes();
      counters.regions_uploaded += delta.ranges.size();
      counters.upload_ns += steady_ns() - started;
      page.epoch = epoch;
      return;
    }
    if (upload_mode == UploadPath::CopyRegions && !pending.count(id)) {
      if (!staged_pages.count(id)) {
        stage_direct(id, page, delta);  // the common case: one delta per page per delivery, copied once
        page.epoch = epoch;
        return;
      }
      // A second delta of the page in one delivery (DEFERRED/BATCH): compose, so copy regions never overlap.
      pending.emplace(id, unstage_as_delta(id, page, delta.base_epoch));
    }
    auto p = pending.find(id);
    if (p == pending.end()) {
      Delta copy;
      copy.page = id;
      copy.base_epoch = delta.base_epoch;
      copy.epoch_count = delta.epoch_count;
      copy.base_size = delta.base_size;
      copy.size = delta.size;
      copy.ranges = delta.ranges;
      copy.payload = delta.payload;
      pending.emplace(id, std::move(copy));
    } else {
      Delta plain = delta;
      plain.has_undo = false;
      plain.undo.clear();
      plain.undo_tail.clear();
      p->second = mmsb::compose(p->second, plain);
    }
    page.epoch = epoch;
  }

  // --- uploads --------------------------------------------------------------------------------------------------

  // DirectWrite: copies `length` bytes (zeros when `source` is null) to `offset` of a mapped device buffer. No
  // device work that touches device memory is in flight here: DirectWrite submits no uploads, and device nodes and
  // read_device() wait for their own submits under `mutex`; waiting for the slots keeps that true regardless.
  void write_direct(std::uint32_t block, std::uint64_t offset, const std::byte* source, std::uint64_t length) {
    if (length == 0) return;
    wait_all_slots();
    Block& b = blocks[block];
    auto* target = static_cast<std::byte*>(b.buffer.mapped) + offset;
    if (source) {
      std::memcpy(target, source, length);
    } else {
      std::memset(target, 0, length);
    }
    if (!b.buffer.host_coherent) {
      b.dirty_begin = std::min(b.dirty_begin, offset);
      b.dirty_end = std::max(b.dirty_end, offset + length);
    }
    direct_written = true;
  }

  // DirectWrite's flush: writes the pending deltas, makes non-coherent writes visible (the next vkQueueSubmit
  // then makes them visible to the device), and counts the wave.
  void flush_direct_locked() {
    const std::uint64_t started = steady_ns();
    for (const UploadPiece& p : pending_pieces()) {
      write_direct(p.block, p.target, p.source, p.length);
      counters.bytes_uploaded += p.length;
      ++counters.regions_uploaded;
    }
    pending.clear();
    for (Block& b : blocks) {
      if (b.dirty_begin < b.dirty_end) vk->flush_host_writes(b.buffer, b.dirty_begin, b.dirty_end);
      b.dirty_begin = UINT64_MAX;
      b.dirty_end = 0;
    }
    if (direct_written) ++counters.waves_uploaded;
    direct_written = false;
    counters.upload_ns += steady_ns() - started;
  }

  // The slot the next submit uses; its previous submit is waited for when it is opened.
  StagingSlot& open_staging() {
    if (!open_slot) {
      open_slot = &slots[next_slot];
      next_slot = (next_slot + 1) % slots.size();
      wait_slot(*open_slot);
    }
    return *open_slot;
  }

  // Grows the slot's staging buffer to `bytes`, keeping its first `keep` bytes.
  void reserve_staging(StagingSlot& slot, std::uint64_t bytes, std::uint64_t keep) {
    if (slot.staging.size >= bytes) return;
    std::uint64_t size = std::max(kMinStagingBytes, slot.staging.size);
    while (size < bytes) size *= 2;
    Buffer bigger = vk->create_host_buffer(size);
    vk->advise_huge_pages(bigger);
    if (keep > 0) std::memcpy(bigger.mapped, slot.staging.mapped, keep);
    vk->destroy(slot.staging);
    slot.staging = bigger;
  }

  void stage_direct(PageId id, const MirroredPage& page, const Delta& delta) {
    const std::uint64_t started = steady_ns();
    StagingSlot& slot = open_staging();
    reserve_staging(slot, staged_bytes + delta.changed_bytes(), staged_bytes);
    auto* base = static_cast<std::byte*>(slot.staging.mapped);
    const std::byte* payload = delta.payload.data();
    for (const ByteRange& r : delta.ranges) {
      std::memcpy(base + staged_bytes, payload, r.length);
      staged.push_back({id, page.region.block, page.region.offset + r.offset, staged_bytes, r.length});
      staged_bytes += r.length;
      payload += r.length;
    }
    staged_pages.insert(id);
    counters.upload_ns += steady_ns() - started;
  }

  // Drops the page's staged ranges (their staging bytes stay unused until the submit).
  void unstage(PageId id) {
    if (!staged_pages.erase(id)) return;
    staged.erase(std::remove_if(staged.begin(), staged.end(), [id](const StagedRange& r) { return r.page == id; }),
                 staged.end());
  }

  // The page's staged ranges as a delta reaching `epoch`, removed from the staging list.
  Delta unstage_as_delta(PageId id, const MirroredPage& page, std::uint64_t epoch) {
    Delta d;
    d.page = id;
    d.epoch_count = epoch;  // so that compose() chains the next delta, which starts at `epoch`
    d.base_size = d.size = page.size;
    const auto* base = static_cast<const std::byte*>(open_slot->staging.mapped);
    for (const StagedRange& r : staged) {
      if (r.page != id) continue;
      d.ranges.push_back({r.target - page.region.offset, r.length});
      d.payload.insert(d.payload.end(), base + r.staging, base + r.staging + r.length);
    }
    unstage(id);
    return d;
  }

  // Reads the pages that need a whole upload (without `mutex`: this takes page locks) and queues them as dense
  // pending deltas.
  void gather_whole_pages() {
    std::vector<PageId> wanted;
    {
      std::lock_guard lock(mutex);
      if (whole_wanted.empty()) return;  // the usual case: no page scan on every flush
      wanted.assign(whole_wanted.begin(), whole_wanted.end());
    }
    for (PageId id : wanted) {
      std::vector<std::byte> bytes;
      PageInfo info;
      try {
        const PageId one[] = {id};
        ReadView view = runtime.read_view(one);
        auto span = view.bytes(id);
        bytes.assign(span.begin(), span.end());
        info = view.info(id);
      } catch (const Error&) {
        continue;  // deleted meanwhile
      }
      std::lock_guard lock(mutex);
      auto it = pages.find(id);
      if (it == pages.end() || !it->second.needs_whole) continue;
      // A delta newer than the bytes read arrived meanwhile: read again at the next flush (its delivery ends
      // with an event that flushes).
      if (info.epoch < it->second.epoch) continue;
      queue_whole_locked(id, it->second, bytes, info.epoch);
    }
  }

  void queue_whole_locked(PageId id, MirroredPage& page, std::span<const std::byte> bytes, std::uint64_t epoch) {
    unstage(id);
    if (page.device_ahead) {  // a device-only output: its host bytes are stale by design, never upload them
      page.needs_whole = false;
      whole_wanted.erase(id);
      return;
    }
    if (bytes.size() > page.region.capacity) {
      wait_all_slots();
      free_region(page.region);
      page.region = allocate_region(bytes.size());
    }
    page.size = bytes.size();
    page.epoch = epoch;
    page.needs_whole = false;
    whole_wanted.erase(id);
    Delta whole;
    whole.page = id;
    whole.base_size = whole.size = bytes.size();
    if (!bytes.empty()) {
      whole.ranges.push_back({0, bytes.size()});
      whole.payload.assign(bytes.begin(), bytes.end());
    }
    pending[id] = std::move(whole);
    ++counters.full_page_uploads;
  }

  void wait_slot(StagingSlot& slot) {
    if (!slot.in_flight) return;
    wait_value(slot.value);
    slot.in_flight = false;
  }

  void wait_all_slots() {
    for (StagingSlot& slot : slots) wait_slot(slot);
  }

  // Orders this command buffer after every earlier transfer and dispatch on the queue (also earlier submits).
  static void barrier(VkCommandBuffer cmd) {
    VkMemoryBarrier b{};
    b.sType = VK_STRUCTURE_TYPE_MEMORY_BARRIER;
    b.srcAccessMask = VK_ACCESS_TRANSFER_WRITE_BIT | VK_ACCESS_SHADER_WRITE_BIT;
    b.dstAccessMask = VK_ACCESS_TRANSFER_READ_BIT | VK_ACCESS_TRANSFER_WRITE_BIT | VK_ACCESS_SHADER_READ_BIT |
                      VK_ACCESS_SHADER_WRITE_BIT;
    const VkPipelineStageFlags stages = VK_PIPELINE_STAGE_TRANSFER_BIT | VK_PIPELINE_STAGE_COMPUTE_SHADER_BIT;
    vkCmdPipelineBarrier(cmd, stages, stages, 0, 1, &b, 0, nullptr, 0, nullptr);
  }

  static void begin(VkCommandBuffer cmd) {
    check(vkResetCommandBuffer(cmd, 0), "vkResetCommandBuffer");
    VkCommandBufferBeginInfo info{};
    info.sType = VK_STRUCTURE_TYPE_COMMAND_BUFFER_BEGIN_INFO;
    info.flags = VK_COMMAND_BUFFER_USAGE_ONE_TIME_SUBMIT_BIT;
    check(vkBeginCommandBuffer(cmd, &info), "vkBeginCommandBuffer");
  }

  // Submits `cmd`, which signals the next timeline value (returned). With `after_uploads`, the submit first waits
  // for the last upload submit's value (a device node consuming this wave's uploads).
  std::uint64_t submit(VkCommandBuffer cmd, bool after_uploads) {
    check(vkEndCommandBuffer(cmd), "vkEndCommandBuffer");
    const std::uint64_t signal = timeline_value + 1;
    const std::uint64_t wait = uploaded_value;
    const bool waits = after_uploads && wait > 0;
    VkTimelineSemaphoreSubmitInfo values{};
    values.sType = VK_STRUCTURE_TYPE_TIMELINE_SEMAPHORE_SUBMIT_INFO;
    values.waitSemaphoreValueCount = waits ? 1 : 0;
    values.pWaitSemaphoreValues = &wait;
    values.signalSemaphoreValueCount = 1;
    values.pSignalSemaphoreValues = &signal;
    const VkPipelineStageFlags wait_stage = VK_PIPELINE_STAGE_TRANSFER_BIT | VK_PIPELINE_STAGE_COMPUTE_SHADER_BIT;
    VkSubmitInfo info{};
    info.sType = VK_STRUCTURE_TYPE_SUBMIT_INFO;
    info.pNext = &values;
    info.waitSemaphoreCount = waits ? 1 : 0;
    info.pWaitSemaphores = &timeline;
    info.pWaitDstStageMask = &wait_stage;
    info.commandBufferCount = 1;
    info.pCommandBuffers = &cmd;
    info.signalSemaphoreCount = 1;
    info.pSignalSemaphores = &timeline;
    check(vkQueueSubmit(vk->queue(), 1, &info, VK_NULL_HANDLE), "vkQueueSubmit");
    timeline_value = signal;
    ++counters.timeline_submits;
    if (waits) ++counters.timeline_waits;
    return signal;
  }

  // Waits on the host until the timeline reaches `value`.
  void wait_value(std::uint64_t value) {
    VkSemaphoreWaitInfo info{};
    info.sType = VK_STRUCTURE_TYPE_SEMAPHORE_WAIT_INFO;
    info.semaphoreCount = 1;
    info.pSemaphores = &timeline;
    info.pValues = &value;
    check(vkWaitSemaphores(vk->device(), &info, UINT64_MAX), "vkWaitSemaphores");
  }

  void ensure_capacity(Buffer& buffer, std::uint64_t bytes) {
    if (buffer.size >= bytes) return;
    std::uint64_t size = std::max(kMinStagingBytes, buffer.size);
    while (size < bytes) size *= 2;
    vk->destroy(buffer);
    buffer = vk->create_host_buffer(size);
    vk->advise_huge_pages(buffer);
  }

  // The pieces of all pending deltas, grouped by device buffer (for one copy command per buffer).
  std::vector<UploadPiece> pending_pieces() {
    std::vector<UploadPiece> pieces;
    for (const auto& [id, delta] : pending) {
      const MirroredPage& page = pages.at(id);
      const std::byte* payload = delta.payload.data();
      for (const ByteRange& r : delta.ranges) {
        pieces.push_back({page.region.block, page.region.offset + r.offset, payload, r.length});
        payload += r.length;
      }
    }
    std::stable_sort(pieces.begin(), pieces.end(),
                     [](const UploadPiece& a, const UploadPiece& b) { return a.block < b.block; });
    return pieces;
  }

  // The scatter-shader layout of `pieces` in a staging buffer: per device buffer a segment table followed by the
  // word-aligned payload. Returns the bytes the layout needs from `at`.
  struct ScatterBatch {
    std::uint32_t block;
    std::uint64_t table_byte;
    std::uint32_t segments;
  };

  std::uint64_t scatter_bytes(const std::vector<UploadPiece>& pieces) const {
    std::uint64_t bytes = 0;
    for (const UploadPiece& p : pieces) bytes += 32 + ((p.target % 4) + p.length + 3) / 4 * 4;
    return bytes + 64 * blocks.size();
  }

  std::uint64_t record_scatter(VkCommandBuffer cmd, const Buffer& staging, VkDescriptorPool pool,
                               const std::vector<UploadPiece>& pieces) {
    auto* base = static_cast<std::byte*>(staging.mapped);
    std::uint64_t cursor = 0;
    std::uint64_t uploaded = 0;
    vkCmdBindPipeline(cmd, VK_PIPELINE_BIND_POINT_COMPUTE, scatter_pipeline);
    for (std::size_t i = 0; i < pieces.size();) {
      const std::uint32_t block = pieces[i].block;
      std::size_t end = i;
      while (end < pieces.size() && pieces[end].block == block) ++end;
      const std::uint64_t table = cursor;
      const std::uint32_t count = static_cast<std::uint32_t>(end - i);
      cursor += std::uint64_t{32} * count;
      for (std::size_t k = i; k < end; ++k) {
        const UploadPiece& p = pieces[k];
        const std::uint64_t lead = p.target % 4;
        const std::uint64_t words = (lead + p.length + 3) / 4;
        std::memset(base + cursor, 0, words * 4);
        std::memcpy(base + cursor + lead, p.source, p.length);
        const std::uint64_t tail_bytes = (lead + p.length) % 4;
        std::uint32_t segment[8]{};
        segment[0] = static_cast<std::uint32_t>(p.target / 4);
        segment[1] = static_cast<std::uint32_t>(cursor / 4);
        segment[2] = static_cast<std::uint32_t>(words);
        segment[3] = 0xffffffffu << (8 * lead);                                  // bytes from `lead` on
        segment[4] = tail_bytes == 0 ? 0xffffffffu : (1u << (8 * tail_bytes)) - 1;  // bytes before the tail
        std::memcpy(base + table + 32 * (k - i), segment, sizeof segment);
        cursor += words * 4;
        uploaded += p.length;
      }
      VkDescriptorSet set = descriptor_set(pool, staging.buffer, blocks[block].buffer.buffer);
      vkCmdBindDescriptorSets(cmd, VK_PIPELINE_BIND_POINT_COMPUTE, pipeline_layout, 0, 1, &set, 0, nullptr);
      const std::uint32_t push[2] = {static_cast<std::uint32_t>(table / 4), count};
      vkCmdPushConstants(cmd, pipeline_layout, VK_SHADER_STAGE_COMPUTE_BIT, 0, sizeof push, push);
      vkCmdDispatch(cmd, std::min<std::uint32_t>(count, 65535), 1, 1);
      counters.regions_uploaded += count;
      i = end;
    }
    (void)uploaded;
    return cursor;
  }

  VkDescriptorSet descriptor_set(VkDescriptorPool pool, VkBuffer first, VkBuffer second) {
    VkDescriptorSetAllocateInfo alloc{};
    alloc.sType = VK_STRUCTURE_TYPE_DESCRIPTOR_SET_ALLOCATE_INFO;
    alloc.descriptorPool = pool;
    alloc.descriptorSetCount = 1;
    alloc.pSetLayouts = &set_layout;
    VkDescriptorSet set = VK_NULL_HANDLE;
    check(vkAllocateDescriptorSets(vk->device(), &alloc, &set), "vkAllocateDescriptorSets");
    VkDescriptorBufferInfo infos[2] = {{first, 0, VK_WHOLE_SIZE}, {second, 0, VK_WHOLE_SIZE}};
    VkWriteDescriptorSet writes[2]{};
    for (std::uint32_t i = 0; i < 2; ++i) {
      writes[i].sType = VK_STRUCTURE_TYPE_WRITE_DESCRIPTOR_SET;
      writes[i].dstSet = set;
      writes[i].dstBinding = i;
      writes[i].descriptorCount = 1;
      writes[i].descriptorType = VK_DESCRIPTOR_TYPE_STORAGE_BUFFER;
      writes[i].pBufferInfo = &infos[i];
    }
    vkUpdateDescriptorSets(vk->device(), 2, writes, 0, nullptr);
    return set;
  }

  void record_zero_fills(VkCommandBuffer cmd) {
    for (const auto& [region, size] : zero_regions) {
      vkCmdFillBuffer(cmd, blocks[region.block].buffer.buffer, region.offset, (size + 3) / 4 * 4, 0);
    }
    zero_regions.clear();
  }

  // Submits everything staged and pending as one command buffer on the open staging slot, without waiting.
  void flush_locked() {
    if (direct) {
      flush_direct_locked();
      return;
    }
    if (pending.empty() && staged.empty() && zero_regions.empty()) return;
    const std::uint64_t started = steady_ns();
    StagingSlot& slot = open_staging();
    const std::vector<UploadPiece> pieces = pending_pieces();
    const bool scatter = upload_mode == UploadPath::ScatterShader;
    std::uint64_t payload = 0;
    if (scatter) {
      reserve_staging(slot, scatter_bytes(pieces), 0);
      for (const UploadPiece& p : pieces) payload += p.length;
    } else {
      std::uint64_t more = 0;
      for (const UploadPiece& p : pieces) more += p.length;
      reserve_staging(slot, staged_bytes + more, staged_bytes);
      auto* base = static_cast<std::byte*>(slot.staging.mapped);
      for (const UploadPiece& p : pieces) {
        std::memcpy(base + staged_bytes, p.source, p.length);
        staged.push_back({PageId(), p.block, p.target, staged_bytes, p.length});
        staged_bytes += p.length;
      }
      for (const StagedRange& r : staged) payload += r.length;
    }
    begin(slot.commands);
    barrier(slot.commands);
    record_zero_fills(slot.commands);
    if (payload > 0) {
      barrier(slot.commands);
      if (scatter) {
        if (slot.descriptor_capacity < blocks.size()) {  // one set per device buffer written by this submit
          vkDestroyDescriptorPool(vk->device(), slot.descriptors, nullptr);
          slot.descriptors = VK_NULL_HANDLE;
          slot.descriptor_capacity = static_cast<std::uint32_t>(blocks.size() * 2);
          slot.descriptors = create_descriptor_pool(slot.descriptor_capacity);
        }
        check(vkResetDescriptorPool(vk->device(), slot.descriptors, 0), "vkResetDescriptorPool");
        record_scatter(slot.commands, slot.staging, slot.descriptors, pieces);
      } else {
        record_staged_copies(slot.commands, slot.staging);
      }
      vk->flush_host_writes(slot.staging, payload);
    }
    slot.value = submit(slot.commands, false);
    uploaded_value = slot.value;
    slot.in_flight = true;
    open_slot = nullptr;
    pending.clear();
    staged.clear();
    staged_pages.clear();
    staged_bytes = 0;
    counters.bytes_uploaded += payload;
    ++counters.waves_uploaded;
    counters.upload_ns += steady_ns() - started;
  }

  // One vkCmdCopyBuffer per device buffer, one region per staged range.
  void record_staged_copies(VkCommandBuffer cmd, const Buffer& staging) {
    std::stable_sort(staged.begin(), staged.end(),
                     [](const StagedRange& a, const StagedRange& b) { return a.block < b.block; });
    std::vector<VkBufferCopy> regions;
    for (std::size_t i = 0; i < staged.size();) {
      const std::uint32_t block = staged[i].block;
      regions.clear();
      for (; i < staged.size() && staged[i].block == block; ++i) {
        regions.push_back({staged[i].staging, staged[i].target, staged[i].length});
      }
      vkCmdCopyBuffer(cmd, staging.buffer, blocks[block].buffer.buffer, static_cast<std::uint32_t>(regions.size()),
                      regions.data());
      counters.regions_uploaded += regions.size();
    }
  }

  void flush() {
    if (!on_device()) return;
    gather_whole_pages();
    std::lock_guard lock(mutex);
    flush_locked();
  }

  // --- reading back -----------------------------------------------------------------------------------------

  std::vector<std::byte> read_device(PageId id) {
    if (!on_device()) {
      if (runtime.info(id).location == Location::Host) throw_not_mirrored(id);
      return runtime.read_all(id);
    }
    flush();
    std::lock_guard lock(mutex);
    auto it = pages.find(id);
    if (it == pages.end()) throw_not_mirrored(id);
    const MirroredPage& page = it->second;
    std::vector<std::byte> out(page.size);
    if (page.size == 0) return out;
    ensure_capacity(readback, page.size);
    begin(node_commands);
    barrier(node_commands);
    download(node_commands, page.region, page.size, 0);
    wait_value(submit(node_commands, true));
    vk->invalidate_for_host_reads(readback);
    std::memcpy(out.data(), readback.mapped, page.size);
    return out;
  }

  void download(VkCommandBuffer cmd, const Region& region, std::uint64_t size, std::uint64_t at) {
    VkBufferCopy copy{region.offset, at, size};
    vkCmdCopyBuffer(cmd, blocks[region.block].buffer.buffer, readback.buffer, 1, &copy);
    VkMemoryBarrier b{};
    b.sType = VK_STRUCTURE_TYPE_MEMORY_BARRIER;
    b.srcAccessMask = VK_ACCESS_TRANSFER_WRITE_BIT;
    b.dstAccessMask = VK_ACCESS_HOST_READ_BIT;
    vkCmdPipelineBarrier(cmd, VK_PIPELINE_STAGE_TRANSFER_BIT, VK_PIPELINE_STAGE_HOST_BIT, 0, 1, &b, 0, nullptr, 0,
                         nullptr);
  }


  [[noreturn]] static void throw_not_mirrored(PageId id) {
    throw Error(ErrorCode::NotFound, "page " + id.to_string() +
                                         " is not mirrored on the device; create it with Location::Device or "
                                         "Location::Both");
  }

  // --- device nodes ---------------------------------------------------------------------------------------------

  std::uint64_t host_epoch(PageId id) const {
    // The node holds its inputs' locks (shared) and its output's (exclusive), so the epoch cannot move; reading
    // the atomic directly avoids taking a page lock again, which would deadlock behind a waiting writer.
    PageRecord* record = runtime_impl.find(id);
    return record ? record->epoch.load(std::memory_order_relaxed) : 0;
  }

  // Queues the upload that brings the device copy of `id` (a node's input) to the host epoch: this wave's delta
  // when it starts where the device copy is, else the whole page from `bytes`. The caller flushes.
  void queue_input_locked(PageId id, MirroredPage& in_page, std::span<const std::byte> input_bytes,
                          const Delta* input_delta) {
    if (!in_page.device_ahead && input_bytes.data() != nullptr) {
      const std::uint64_t now = host_epoch(id);
      if (in_page.epoch != now || in_page.needs_whole) {
        Delta upload;
        std::uint64_t reached = now;
        if (!in_page.needs_whole && input_delta && input_delta->base_epoch == in_page.epoch &&
            input_delta->base_size == input_delta->size) {
          // This wave's delta; in DEFERRED mode later commits may already be on the host, and their waves bring
          // their own deltas, so the device copy reaches the delta's epoch, not necessarily the host's.
          counters.bytes_changed += input_delta->changed_bytes();
          upload.ranges = input_delta->ranges;
          upload.payload = input_delta->payload;
          reached = input_delta->target_epoch();
        } else {
          if (input_bytes.size() > in_page.region.capacity) {
            wait_all_slots();
            free_region(in_page.region);
            in_page.region = allocate_region(input_bytes.size());
          }
          if (!input_bytes.empty()) {
            upload.ranges.push_back({0, input_bytes.size()});
            upload.payload.assign(input_bytes.begin(), input_bytes.end());
          }
          ++counters.full_page_uploads;
          in_page.size = input_bytes.size();
          in_page.needs_whole = false;
          whole_wanted.erase(id);
        }
        upload.page = id;
        pending[id] = std::move(upload);
        in_page.epoch = reached;
      }
    }
  }

  // The body of a stencil device node (an incremental node function).
  void run_stencil(PageId output, const IncrementalContext& ctx, Delta& out) {
    DeviceNode node;
    {
      std::lock_guard lock(mutex);
      node = nodes.at(output);
    }
    const std::uint64_t grid_bytes = std::uint64_t{node.params.width} * node.params.height * 4;
    // Where the input grid's current bytes are on the host: a DATA input of this node, or (for a device-only
    // producer in the CPU fallback) that producer's output page.
    std::span<const std::byte> input_bytes;
    const Delta* input_delta = nullptr;
    std::vector<std::byte> producer_bytes;
    for (std::size_t i = 0; i < node.triggers.size(); ++i) {
      if (node.triggers[i] == node.input) {
        input_bytes = ctx.inputs[i];
        input_delta = ctx.input_deltas[i];
      }
    }
    if (!on_device()) {
      if (input_bytes.data() == nullptr && node.input != PageId()) {
        producer_bytes = runtime.read_all(node.input);  // not locked by this node: its producer already finished
        input_bytes = producer_bytes;
      }
      check_grid(node, input_bytes.size(), ctx.output.size());
      std::vector<std::int32_t> a(grid_bytes / 4), b(grid_bytes / 4);
      std::memcpy(a.data(), input_bytes.data(), grid_bytes);
      for (std::uint32_t s = 0; s < node.params.steps; ++s) {
        stencil5_step_cpu(a.data(), b.data(), node.params.width, node.params.height);
        a.swap(b);
      }
      std::vector<std::byte> result(ctx.output.begin(), ctx.output.end());
      std::memcpy(result.data(), a.data(), grid_bytes);
      diff_result(ctx.output, result, out);
      return;
    }

    std::lock_guard lock(mutex);
    auto in_it = pages.find(node.input), out_it = pages.find(output);
    if (in_it == pages.end()) throw_not_mirrored(node.input);  // deleted since the node was declared
    if (out_it == pages.end()) throw_not_mirrored(output);
    MirroredPage& in_page = in_it->second;
    MirroredPage& out_page = out_it->second;
    check_grid(node, in_page.size, out_page.size);
    // Bring the input's device copy to the host epoch: earlier pending deltas first, then this wave's delta (or
    // the whole input when the chain of deltas has a gap), each as an upload submit ordered before the dispatch.
    flush_locked();
    queue_input_locked(node.input, in_page, input_bytes, input_delta);
    flush_locked();
    if (!node.device_only) ensure_capacity(readback, grid_bytes);

    check(vkResetDescriptorPool(vk->device(), node_descriptors, 0), "vkResetDescriptorPool");
    begin(node_commands);
    Region source = in_page.region;
    const std::uint32_t steps = node.params.steps;
    vkCmdBindPipeline(node_commands, VK_PIPELINE_BIND_POINT_COMPUTE, stencil_pipeline);
    // At most three (source buffer, target buffer) pairs occur (input -> scratch/output, then the ping-pong), so
    // descriptor sets are made once per pair, not once per step.
    std::map<std::pair<std::uint32_t, std::uint32_t>, VkDescriptorSet> sets;
    for (std::uint32_t s = 0; s < steps; ++s) {
      const Region target = ((steps - 1 - s) % 2 == 0) ? out_page.region : *node.scratch;
      barrier(node_commands);
      VkDescriptorSet& set = sets[{source.block, target.block}];
      if (!set) {
        set = descriptor_set(node_descriptors, blocks[source.block].buffer.buffer, blocks[target.block].buffer.buffer);
      }
      vkCmdBindDescriptorSets(node_commands, VK_PIPELINE_BIND_POINT_COMPUTE, pipeline_layout, 0, 1, &set, 0,
                              nullptr);
      const std::uint32_t push[4] = {node.params.width, node.params.height,
                                     static_cast<std::uint32_t>(source.offset / 4),
                                     static_cast<std::uint32_t>(target.offset / 4)};
      vkCmdPushConstants(node_commands, pipeline_layout, VK_SHADER_STAGE_COMPUTE_BIT, 0, sizeof push, push);
      vkCmdDispatch(node_commands, (node.params.width + 15) / 16, (node.params.height + 15) / 16, 1);
      ++counters.dispatches;
      source = target;
    }
    finish_node_locked(node.device_only, output, out_page, grid_bytes, ctx, out);
  }

  // Ends a device node's recorded commands: reads the output back unless it stays on the device, submits and
  // waits, and turns the result into `out` (its changed ranges only). Called with `mutex` held.
  void finish_node_locked(bool device_only, PageId output, MirroredPage& out_page, std::uint64_t out_bytes,
                          const IncrementalContext& ctx, Delta& out) {
    if (!device_only) {
      barrier(node_commands);
      download(node_commands, out_page.region, out_bytes, 0);
    }
    wait_value(submit(node_commands, true));

    if (device_only) {
      out_page.device_ahead = true;
      out_page.needs_whole = false;  // from now on the device copy is the page's content
      whole_wanted.erase(output);
      return;  // no host change: nothing on the host reads this page
    }
    vk->invalidate_for_host_reads(readback);
    counters.bytes_read_back += out_bytes;
    std::vector<std::byte> result(ctx.output.begin(), ctx.output.end());
    std::memcpy(result.data(), readback.mapped, out_bytes);
    diff_result(ctx.output, result, out);
    // The device copy of the output already holds the result: the delta the host publishes is not uploaded.
    out_page.epoch = host_epoch(output) + (out.ranges.empty() ? 0 : 1);
  }

  // The body of a table-kernel device node (an incremental node function).
  void run_kernel(PageId output, const IncrementalContext& ctx, Delta& out) {
    DeviceNode node;
    {
      std::lock_guard lock(mutex);
      node = nodes.at(output);
    }
    const gpu::KernelInfo& kernel = gpu::kernel_info(*node.kernel);
    const std::size_t count = node.kernel_inputs.size();
    std::vector<std::span<const std::byte>> inputs(count);
    for (std::size_t i = 0; i < count; ++i) {
      const auto t = std::find(node.triggers.begin(), node.triggers.end(), node.kernel_inputs[i]);
      inputs[i] = ctx.inputs[static_cast<std::size_t>(t - node.triggers.begin())];
      const std::uint64_t need = kernel.input_bytes(static_cast<std::uint32_t>(i), node.push);
      if (inputs[i].size() < need) kernel_too_small(node, kernel, node.kernel_inputs[i], inputs[i].size(), need);
    }
    const std::uint64_t out_bytes = kernel.output_bytes(node.push);
    if (ctx.output.size() < out_bytes) kernel_too_small(node, kernel, output, ctx.output.size(), out_bytes);
    if (!on_device()) {
      std::vector<std::byte> result(ctx.output.begin(), ctx.output.end());
      kernel.cpu(inputs, result, node.push);
      diff_result(ctx.output, result, out);
      return;
    }

    std::lock_guard lock(mutex);
    auto out_it = pages.find(output);
    if (out_it == pages.end()) throw_not_mirrored(output);
    MirroredPage& out_page = out_it->second;
    std::vector<const MirroredPage*> in_pages(count);
    for (std::size_t i = 0; i < count; ++i) {
      auto it = pages.find(node.kernel_inputs[i]);
      if (it == pages.end()) throw_not_mirrored(node.kernel_inputs[i]);  // deleted since the node was declared
      in_pages[i] = &it->second;
    }
    // Earlier pending deltas first (so this wave's uploads do not replace them), then each input's upload, all
    // in one submit ordered before the dispatch.
    flush_locked();
    for (std::size_t t = 0; t < node.triggers.size(); ++t) {
      queue_input_locked(node.triggers[t], pages.at(node.triggers[t]), ctx.inputs[t], ctx.input_deltas[t]);
    }
    flush_locked();
    if (!node.device_only) ensure_capacity(readback, out_bytes);

    const KernelPipeline& kp = kernel_pipelines[static_cast<std::size_t>(*node.kernel)];
    check(vkResetDescriptorPool(vk->device(), kernel_descriptors, 0), "vkResetDescriptorPool");
    VkDescriptorSetAllocateInfo alloc{};
    alloc.sType = VK_STRUCTURE_TYPE_DESCRIPTOR_SET_ALLOCATE_INFO;
    alloc.descriptorPool = kernel_descriptors;
    alloc.descriptorSetCount = 1;
    alloc.pSetLayouts = &kp.set_layout;
    VkDescriptorSet set = VK_NULL_HANDLE;
    check(vkAllocateDescriptorSets(vk->device(), &alloc, &set), "vkAllocateDescriptorSets");
    // Each binding is exactly the page's region (regions are aligned for storage-buffer offsets), so the shader
    // indexes from 0 and needs no offsets.
    std::vector<VkDescriptorBufferInfo> infos(count + 1);
    for (std::size_t i = 0; i < count; ++i) {
      const Region& r = in_pages[i]->region;
      infos[i] = {blocks[r.block].buffer.buffer, r.offset,
                  std::max<std::uint64_t>(4, kernel.input_bytes(static_cast<std::uint32_t>(i), node.push))};
    }
    infos[count] = {blocks[out_page.region.block].buffer.buffer, out_page.region.offset,
                    std::max<std::uint64_t>(4, out_bytes)};
    std::vector<VkWriteDescriptorSet> writes(count + 1);
    for (std::size_t i = 0; i <= count; ++i) {
      writes[i].sType = VK_STRUCTURE_TYPE_WRITE_DESCRIPTOR_SET;
      writes[i].dstSet = set;
      writes[i].dstBinding = static_cast<std::uint32_t>(i);
      writes[i].descriptorCount = 1;
      writes[i].descriptorType = VK_DESCRIPTOR_TYPE_STORAGE_BUFFER;
      writes[i].pBufferInfo = &infos[i];
    }
    vkUpdateDescriptorSets(vk->device(), static_cast<std::uint32_t>(writes.size()), writes.data(), 0, nullptr);

    begin(node_commands);
    barrier(node_commands);
    vkCmdBindPipeline(node_commands, VK_PIPELINE_BIND_POINT_COMPUTE, kp.pipeline);
    vkCmdBindDescriptorSets(node_commands, VK_PIPELINE_BIND_POINT_COMPUTE, kp.layout, 0, 1, &set, 0, nullptr);
    if (!node.push.empty()) {
      vkCmdPushConstants(node_commands, kp.layout, VK_SHADER_STAGE_COMPUTE_BIT, 0,
                         static_cast<std::uint32_t>(4 * node.push.size()), node.push.data());
    }
    const auto groups = kernel.groups(node.push);
    vkCmdDispatch(node_commands, groups[0], groups[1], groups[2]);
    ++counters.dispatches;
    finish_node_locked(node.device_only, output, out_page, out_bytes, ctx, out);
  }

  [[noreturn]] static void kernel_too_small(const DeviceNode& node, const gpu::KernelInfo& kernel, PageId page,
                                            std::uint64_t has, std::uint64_t need) {
    throw Error(ErrorCode::InvalidArgument, std::string(kernel.name) + " node of page " + node.output.to_string() +
                                                ": page " + page.to_string() + " has " + std::to_string(has) +
                                                " bytes, the kernel needs " + std::to_string(need) +
                                                "; resize the page or change the parameters");
  }

  // Declares a table-kernel device node (see derive_heat_tile).
  void derive_kernel(gpu::KernelId id, PageId output, std::vector<PageId> inputs, std::vector<std::uint32_t> push) {
    const gpu::KernelInfo& kernel = gpu::kernel_info(id);
    const std::string what = std::string("derive_") + kernel.name;
    auto check_page = [&](PageId page, std::uint64_t need) {
      const PageInfo info = runtime.info(page);
      if (info.location == Location::Host) {
        throw Error(ErrorCode::InvalidArgument, what + ": page " + page.to_string() +
                                                    " is a host page; device nodes read and write device pages "
                                                    "(create it with Location::Device or Location::Both)");
      }
      if (info.size < need) {
        throw Error(ErrorCode::InvalidArgument, what + ": page " + page.to_string() + " has " +
                                                    std::to_string(info.size) + " bytes; the kernel needs " +
                                                    std::to_string(need));
      }
      return info;
    };
    if (std::find(inputs.begin(), inputs.end(), output) != inputs.end()) {
      throw Error(ErrorCode::InvalidArgument, what + ": page " + output.to_string() + " is its own input");
    }
    for (std::size_t i = 0; i < inputs.size(); ++i) {
      check_page(inputs[i], kernel.input_bytes(static_cast<std::uint32_t>(i), push));
    }
    const PageInfo out = check_page(output, kernel.output_bytes(push));
    DeviceNode node;
    node.output = output;
    node.kernel = id;
    node.kernel_inputs = inputs;
    node.push = std::move(push);
    node.device_only = out.location == Location::Device;
    for (PageId p : inputs) {
      if (std::find(node.triggers.begin(), node.triggers.end(), p) == node.triggers.end()) node.triggers.push_back(p);
    }
    {
      std::lock_guard lock(mutex);
      for (PageId p : node.triggers) {
        auto it = nodes.find(p);
        if (it != nodes.end() && it->second.device_only) {
          throw Error(ErrorCode::InvalidArgument, what + ": input page " + p.to_string() +
                                                      " is a device-only output; make it Location::Both");
        }
      }
      nodes[output] = node;
    }
    try {
      IncrementalFunction fn = [this, output](const IncrementalContext& ctx, Delta& d) { run_kernel(output, ctx, d); };
      propagator.derive_incremental(output, node.triggers, fn, rebuild_from(fn, output));
    } catch (...) {
      std::lock_guard lock(mutex);
      nodes.erase(output);
      throw;
    }
  }

  static void diff_result(std::span<const std::byte> old_bytes, std::span<const std::byte> new_bytes, Delta& out) {
    DiffOptions options;
    options.record_undo = false;
    Delta d;
    mmsb::diff_into(old_bytes, new_bytes, d, options);
    out.ranges = std::move(d.ranges);
    out.payload = std::move(d.payload);
  }

  static void check_grid(const DeviceNode& node, std::uint64_t input_size, std::uint64_t output_size) {
    const std::uint64_t need = std::uint64_t{node.params.width} * node.params.height * 4;
    if (input_size < need || output_size < need) {
      throw Error(ErrorCode::InvalidArgument,
                  "stencil node of page " + node.output.to_string() + ": a " + std::to_string(node.params.width) +
                      " x " + std::to_string(node.params.height) + " grid needs " + std::to_string(need) +
                      " bytes, but the input has " + std::to_string(input_size) + " and the output " +
                      std::to_string(output_size) + "; resize the pages or change the grid");
    }
  }
};

GpuMirror::GpuMirror(Runtime& runtime, Propagator& propagator, GpuOptions options) {
  if (options.staging_slots == 0 || options.staging_slots > 16) {
    throw Error(ErrorCode::InvalidArgument, "GpuOptions::staging_slots must be between 1 and 16, not " +
                                                std::to_string(options.staging_slots));
  }
  if (options.block_bytes < (std::uint64_t{1} << 16)) {
    throw Error(ErrorCode::InvalidArgument, "GpuOptions::block_bytes must be at least 65536, not " +
                                                std::to_string(options.block_bytes));
  }
  impl_ = std::make_unique<Impl>(runtime, propagator, std::move(options));
  Impl& m = *impl_;
  m.open_device();
  if (!m.on_device()) return;
  m.event_subscriptions.push_back(propagator.subscribe(
      EventMask{EventKind::PageCreated, EventKind::PageDeleted}, [&m](const Event& e) {
        if (e.kind == EventKind::PageCreated) {
          m.track(e.page);
        } else {
          m.untrack(e.page);
        }
      }));
  // The end of a delivery. Events are delivered after the page deltas of the same waves, so the first of these
  // flushes all of them and the rest find nothing pending. WaveEnd alone is not enough: a commit whose pages no
  // node reads runs no wave, yet its deltas reach page subscribers; Commit events cover those.
  m.event_subscriptions.push_back(propagator.subscribe(EventMask{EventKind::Commit, EventKind::WaveEnd},
                                                       [&m](const Event&) { m.flush(); }));
  for (PageId id : runtime.page_ids()) m.track(id);
  m.flush();
}

GpuMirror::~GpuMirror() {
  Impl& m = *impl_;
  for (SubscriptionId id : m.event_subscriptions) m.propagator.unsubscribe(id);
  std::vector<PageId> outputs;
  std::vector<SubscriptionId> page_subscriptions;
  {
    std::lock_guard lock(m.mutex);
    for (const auto& [id, node] : m.nodes) outputs.push_back(id);
    for (const auto& [id, page] : m.pages) page_subscriptions.push_back(page.subscription);
  }
  for (PageId id : outputs) {
    try {
      m.propagator.remove_node(id);
    } catch (const Error&) {  // the page may be gone already
    }
  }
  for (SubscriptionId id : page_subscriptions)
    if (id) m.propagator.unsubscribe(id);
  std::lock_guard lock(m.mutex);
  m.destroy_vulkan_objects();
}

GpuBackend GpuMirror::backend() const noexcept { return impl_->on_device() ? GpuBackend::Vulkan : GpuBackend::Cpu; }

UploadPath GpuMirror::upload_path() const noexcept { return impl_->upload_mode; }

std::string GpuMirror::device_name() const { return impl_->on_device() ? impl_->vk->name() : "cpu"; }

bool GpuMirror::is_mirrored(PageId page) const {
  if (!impl_->on_device()) {
    return impl_->runtime.contains(page) && impl_->runtime.info(page).location != Location::Host;
  }
  std::lock_guard lock(impl_->mutex);
  return impl_->pages.count(page) != 0;
}

std::vector<std::byte> GpuMirror::read_device(PageId page) { return impl_->read_device(page); }

void GpuMirror::wait_idle() {
  if (!impl_->on_device()) return;
  impl_->flush();
  std::lock_guard lock(impl_->mutex);
  impl_->wait_all_slots();
}

void GpuMirror::derive_stencil5(PageId output, PageId input, Stencil5Params params) {
  Impl& m = *impl_;
  if (params.width < 1 || params.height < 1 || params.steps < 1) {
    throw Error(ErrorCode::InvalidArgument, "derive_stencil5: width, height and steps must be at least 1 (got " +
                                                std::to_string(params.width) + " x " +
                                                std::to_string(params.height) + ", " +
                                                std::to_string(params.steps) + " steps)");
  }
  const std::uint64_t need = std::uint64_t{params.width} * params.height * 4;
  if (need / 4 > 0xffffffffu) throw Error(ErrorCode::InvalidArgument, "derive_stencil5: grid too large");
  const PageInfo in = m.runtime.info(input), out = m.runtime.info(output);
  for (const PageInfo& p : {in, out}) {
    if (p.location == Location::Host) {
      throw Error(ErrorCode::InvalidArgument, "derive_stencil5: page " + p.id.to_string() +
                                                  " is a host page; device nodes read and write device pages "
                                                  "(create it with Location::Device or Location::Both)");
    }
    if (p.size < need) {
      throw Error(ErrorCode::InvalidArgument, "derive_stencil5: page " + p.id.to_string() + " has " +
                                                  std::to_string(p.size) + " bytes; the grid needs " +
                                                  std::to_string(need));
    }
  }
  DeviceNode node;
  node.output = output;
  node.input = input;
  node.params = params;
  node.device_only = out.location == Location::Device;
  std::optional<PageId> producer;
  {
    std::lock_guard lock(m.mutex);
    auto it = m.nodes.find(input);
    if (it != m.nodes.end() && it->second.device_only) {
      // A device-only input never changes on the host, so the node follows its producer's inputs and is ordered
      // after the producer by a GPU_SYNC edge.
      node.triggers = it->second.triggers;
      producer = input;
    } else {
      node.triggers = {input};
    }
    if (m.on_device() && params.steps > 1) node.scratch = m.allocate_region(need);
    m.nodes[output] = node;
  }
  try {
    IncrementalFunction fn = [&m, output](const IncrementalContext& ctx, Delta& d) { m.run_stencil(output, ctx, d); };
    m.propagator.derive_incremental(output, node.triggers, fn, rebuild_from(fn, output));
    if (producer) m.propagator.add_dependency(*producer, output, EdgeKind::GpuSync);
  } catch (...) {
    std::lock_guard lock(m.mutex);
    if (node.scratch) m.free_region(*node.scratch);
    m.nodes.erase(output);
    throw;
  }
}

void GpuMirror::derive_heat_tile(PageId output, PageId cell, const std::array<PageId, 4>& halo,
                                 HeatTileParams params) {
  if (params.side < 1 || params.side > 0xffffu || !(params.alpha > 0.0f && params.alpha < 0.25f)) {
    throw Error(ErrorCode::InvalidArgument,
                "derive_heat_tile: side must lie in [1, 65535] and alpha in (0, 0.25) (got side " +
                    std::to_string(params.side) + ", alpha " + std::to_string(params.alpha) + ")");
  }
  std::uint32_t alpha_bits;
  std::memcpy(&alpha_bits, &params.alpha, sizeof alpha_bits);
  impl_->derive_kernel(gpu::KernelId::HeatTile, output, {cell, halo[0], halo[1], halo[2], halo[3]},
                       {params.side, alpha_bits});
}

GpuStats GpuMirror::stats() const {
  std::lock_guard lock(impl_->mutex);
  GpuStats s = impl_->counters;
  s.pages_mirrored = impl_->pages.size();
  for (const Block& b : impl_->blocks) {
    if (!b.buffer.buffer) continue;  // released
    ++s.device_buffers;
    s.device_bytes_reserved += b.buffer.size;
  }
  if (impl_->vk) s.device_memory_allocations = impl_->vk->live_allocations();
  return s;
}

}  // namespace mmsb
