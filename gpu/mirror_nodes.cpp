// GpuMirror: device nodes, incremental nodes whose function runs a compute shader on the device copies of
// their inputs (the stencil and the kernel table of gpu/kernels.hpp), or its CPU twin without a device.
#include <vulkan/vulkan.h>

#include <algorithm>
#include <cstring>
#include <map>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "gpu/mirror_impl.hpp"
#include "mmsb/error.hpp"

namespace mmsb {
namespace {

using gpu::check;
using gpu::DeviceNode;
using gpu::KernelPipeline;
using gpu::MirroredPage;
using gpu::Region;

}  // namespace

std::uint64_t GpuMirror::Impl::host_epoch(PageId id) const {
  // The node holds its inputs' locks (shared) and its output's (exclusive), so the epoch cannot move; reading
  // the atomic directly avoids taking a page lock again, which would deadlock behind a waiting writer.
  PageRecord* record = runtime_impl.find(id);
  return record ? record->epoch.load(std::memory_order_relaxed) : 0;
}

// Queues the upload that brings the device copy of `id` (a node's input) to the host epoch: this wave's delta
// when it starts where the device copy is, else the whole page from `bytes`. The caller flushes.
void GpuMirror::Impl::queue_input_locked(PageId id, MirroredPage& in_page, std::span<const std::byte> input_bytes,
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
void GpuMirror::Impl::run_stencil(PageId output, const IncrementalContext& ctx, Delta& out) {
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
    vkCmdBindDescriptorSets(node_commands, VK_PIPELINE_BIND_POINT_COMPUTE, pipeline_layout, 0, 1, &set, 0, nullptr);
    const std::uint32_t push[4] = {node.params.width, node.params.height, static_cast<std::uint32_t>(source.offset / 4),
                                   static_cast<std::uint32_t>(target.offset / 4)};
    vkCmdPushConstants(node_commands, pipeline_layout, VK_SHADER_STAGE_COMPUTE_BIT, 0, sizeof push, push);
    vkCmdDispatch(node_commands, (node.params.width + 15) / 16, (node.params.height + 15) / 16, 1);
    ++counters.dispatches;
    source = target;
  }
  finish_node_locked(node.device_only, output, out_page, grid_bytes, ctx, out);
}

// The descriptor set of one run of a table-kernel node: its input pages, then its output. Each binding is exactly
// the page's region (regions are aligned for storage-buffer offsets), so the shader indexes from 0 and needs no
// offsets.
VkDescriptorSet GpuMirror::Impl::kernel_descriptor_set(const DeviceNode& node,
                                                       const std::vector<const MirroredPage*>& in_pages,
                                                       const MirroredPage& out_page, std::uint64_t out_bytes) {
  const gpu::KernelInfo& kernel = gpu::kernel_info(*node.kernel);
  const KernelPipeline& kp = kernel_pipelines[static_cast<std::size_t>(*node.kernel)];
  const std::size_t count = in_pages.size();
  check(vkResetDescriptorPool(vk->device(), kernel_descriptors, 0), "vkResetDescriptorPool");
  VkDescriptorSetAllocateInfo alloc{};
  alloc.sType = VK_STRUCTURE_TYPE_DESCRIPTOR_SET_ALLOCATE_INFO;
  alloc.descriptorPool = kernel_descriptors;
  alloc.descriptorSetCount = 1;
  alloc.pSetLayouts = &kp.set_layout;
  VkDescriptorSet set = VK_NULL_HANDLE;
  check(vkAllocateDescriptorSets(vk->device(), &alloc, &set), "vkAllocateDescriptorSets");
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
  return set;
}

// The body of a table-kernel device node (an incremental node function).
void GpuMirror::Impl::run_kernel(PageId output, const IncrementalContext& ctx, Delta& out) {
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
  const VkDescriptorSet set = kernel_descriptor_set(node, in_pages, out_page, out_bytes);

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

[[noreturn]] void GpuMirror::Impl::kernel_too_small(const DeviceNode& node, const gpu::KernelInfo& kernel, PageId page,
                                                    std::uint64_t has, std::uint64_t need) {
  throw Error(ErrorCode::InvalidArgument, std::string(kernel.name) + " node of page " + node.output.to_string() +
                                              ": page " + page.to_string() + " has " + std::to_string(has) +
                                              " bytes, the kernel needs " + std::to_string(need) +
                                              "; resize the page or change the parameters");
}

// Declares a table-kernel device node (see derive_heat_tile).
void GpuMirror::Impl::derive_kernel(gpu::KernelId id, PageId output, std::vector<PageId> inputs,
                                    std::vector<std::uint32_t> push) {
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
        throw Error(ErrorCode::InvalidArgument,
                    what + ": input page " + p.to_string() + " is a device-only output; make it Location::Both");
      }
    }
    nodes[output] = node;
  }
  try {
    propagator.derive_incremental(
        output, node.triggers, [this, output](const IncrementalContext& ctx, Delta& d) { run_kernel(output, ctx, d); });
  } catch (...) {
    std::lock_guard lock(mutex);
    nodes.erase(output);
    throw;
  }
}

void GpuMirror::Impl::check_grid(const DeviceNode& node, std::uint64_t input_size, std::uint64_t output_size) {
  const std::uint64_t need = std::uint64_t{node.params.width} * node.params.height * 4;
  if (input_size < need || output_size < need) {
    throw Error(ErrorCode::InvalidArgument,
                "stencil node of page " + node.output.to_string() + ": a " + std::to_string(node.params.width) + " x " +
                    std::to_string(node.params.height) + " grid needs " + std::to_string(need) +
                    " bytes, but the input has " + std::to_string(input_size) + " and the output " +
                    std::to_string(output_size) + "; resize the pages or change the grid");
  }
}

void GpuMirror::derive_stencil5(PageId output, PageId input, Stencil5Params params) {
  Impl& m = *impl_;
  if (params.width < 1 || params.height < 1 || params.steps < 1) {
    throw Error(ErrorCode::InvalidArgument, "derive_stencil5: width, height and steps must be at least 1 (got " +
                                                std::to_string(params.width) + " x " + std::to_string(params.height) +
                                                ", " + std::to_string(params.steps) + " steps)");
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
    m.propagator.derive_incremental(output, node.triggers, [&m, output](const IncrementalContext& ctx, Delta& d) {
      m.run_stencil(output, ctx, d);
    });
    if (producer) m.propagator.add_dependency(*producer, output, EdgeKind::GpuSync);
  } catch (...) {
    std::lock_guard lock(m.mutex);
    if (node.scratch) m.free_region(*node.scratch);
    m.nodes.erase(output);
    throw;
  }
}

void GpuMirror::derive_heat_tile(PageId output, PageId cell, const std::array<PageId, 4>& halo, HeatTileParams params) {
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

}  // namespace mmsb
