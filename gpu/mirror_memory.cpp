// GpuMirror: device memory (regions of a few large device buffers), the staging ring of host-visible buffers,
// and recording, submitting and waiting for command buffers on the timeline (see mirror_impl.hpp).
#include <vulkan/vulkan.h>

#include <algorithm>
#include <cstring>
#include <optional>

#include "gpu/mirror_impl.hpp"

namespace mmsb {
namespace {

using gpu::Block;
using gpu::Buffer;
using gpu::check;
using gpu::Region;
using gpu::StagingSlot;

constexpr std::uint64_t kMinStagingBytes = std::uint64_t{1} << 20;

}  // namespace

Region GpuMirror::Impl::allocate_region(std::uint64_t size) {
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
void GpuMirror::Impl::free_region(const Region& region) {
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

void GpuMirror::Impl::zero_fill(const Region& region, std::uint64_t size) {
  if (size == 0) return;
  if (direct) {
    write_direct(region.block, region.offset, nullptr, size);
    return;
  }
  // Recorded as part of the next upload so that it stays ordered with it; a fill is rare (page creation).
  zero_regions.push_back({region, size});
}

// The slot the next submit uses; its previous submit is waited for when it is opened.
StagingSlot& GpuMirror::Impl::open_staging() {
  if (!open_slot) {
    open_slot = &slots[next_slot];
    next_slot = (next_slot + 1) % slots.size();
    wait_slot(*open_slot);
  }
  return *open_slot;
}

// Grows the slot's staging buffer to `bytes`, keeping its first `keep` bytes.
void GpuMirror::Impl::reserve_staging(StagingSlot& slot, std::uint64_t bytes, std::uint64_t keep) {
  if (slot.staging.size >= bytes) return;
  std::uint64_t size = std::max(kMinStagingBytes, slot.staging.size);
  while (size < bytes) size *= 2;
  Buffer bigger = vk->create_host_buffer(size);
  vk->advise_huge_pages(bigger);
  if (keep > 0) std::memcpy(bigger.mapped, slot.staging.mapped, keep);
  vk->destroy(slot.staging);
  slot.staging = bigger;
}

void GpuMirror::Impl::ensure_capacity(Buffer& buffer, std::uint64_t bytes) {
  if (buffer.size >= bytes) return;
  std::uint64_t size = std::max(kMinStagingBytes, buffer.size);
  while (size < bytes) size *= 2;
  vk->destroy(buffer);
  buffer = vk->create_host_buffer(size);
  vk->advise_huge_pages(buffer);
}

void GpuMirror::Impl::wait_slot(StagingSlot& slot) {
  if (!slot.in_flight) return;
  wait_value(slot.value);
  slot.in_flight = false;
}

void GpuMirror::Impl::wait_all_slots() {
  for (StagingSlot& slot : slots) wait_slot(slot);
}

// Orders this command buffer after every earlier transfer and dispatch on the queue (also earlier submits).
void GpuMirror::Impl::barrier(VkCommandBuffer cmd) {
  VkMemoryBarrier b{};
  b.sType = VK_STRUCTURE_TYPE_MEMORY_BARRIER;
  b.srcAccessMask = VK_ACCESS_TRANSFER_WRITE_BIT | VK_ACCESS_SHADER_WRITE_BIT;
  b.dstAccessMask = VK_ACCESS_TRANSFER_READ_BIT | VK_ACCESS_TRANSFER_WRITE_BIT | VK_ACCESS_SHADER_READ_BIT |
                    VK_ACCESS_SHADER_WRITE_BIT;
  const VkPipelineStageFlags stages = VK_PIPELINE_STAGE_TRANSFER_BIT | VK_PIPELINE_STAGE_COMPUTE_SHADER_BIT;
  vkCmdPipelineBarrier(cmd, stages, stages, 0, 1, &b, 0, nullptr, 0, nullptr);
}

void GpuMirror::Impl::begin(VkCommandBuffer cmd) {
  check(vkResetCommandBuffer(cmd, 0), "vkResetCommandBuffer");
  VkCommandBufferBeginInfo info{};
  info.sType = VK_STRUCTURE_TYPE_COMMAND_BUFFER_BEGIN_INFO;
  info.flags = VK_COMMAND_BUFFER_USAGE_ONE_TIME_SUBMIT_BIT;
  check(vkBeginCommandBuffer(cmd, &info), "vkBeginCommandBuffer");
}

// Submits `cmd`, which signals the next timeline value (returned). With `after_uploads`, the submit first waits
// for the last upload submit's value (a device node consuming this wave's uploads).
std::uint64_t GpuMirror::Impl::submit(VkCommandBuffer cmd, bool after_uploads) {
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
void GpuMirror::Impl::wait_value(std::uint64_t value) {
  VkSemaphoreWaitInfo info{};
  info.sType = VK_STRUCTURE_TYPE_SEMAPHORE_WAIT_INFO;
  info.semaphoreCount = 1;
  info.pSemaphores = &timeline;
  info.pValues = &value;
  check(vkWaitSemaphores(vk->device(), &info, UINT64_MAX), "vkWaitSemaphores");
}

VkDescriptorSet GpuMirror::Impl::descriptor_set(VkDescriptorPool pool, VkBuffer first, VkBuffer second) {
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

}  // namespace mmsb
