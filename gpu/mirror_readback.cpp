// GpuMirror: reading device memory back to the host, for read_device() and for the outputs of device nodes,
// which are published as deltas of their changed ranges (see mirror_impl.hpp).
#include <vulkan/vulkan.h>

#include <algorithm>
#include <cstring>
#include <span>
#include <vector>

#include "gpu/mirror_impl.hpp"
#include "mmsb/error.hpp"

namespace mmsb {
namespace {

using gpu::MirroredPage;
using gpu::Region;

}  // namespace

std::vector<std::byte> GpuMirror::Impl::read_device(PageId id) {
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

void GpuMirror::Impl::download(VkCommandBuffer cmd, const Region& region, std::uint64_t size, std::uint64_t at) {
  VkBufferCopy copy{region.offset, at, size};
  vkCmdCopyBuffer(cmd, blocks[region.block].buffer.buffer, readback.buffer, 1, &copy);
  VkMemoryBarrier b{};
  b.sType = VK_STRUCTURE_TYPE_MEMORY_BARRIER;
  b.srcAccessMask = VK_ACCESS_TRANSFER_WRITE_BIT;
  b.dstAccessMask = VK_ACCESS_HOST_READ_BIT;
  vkCmdPipelineBarrier(cmd, VK_PIPELINE_STAGE_TRANSFER_BIT, VK_PIPELINE_STAGE_HOST_BIT, 0, 1, &b, 0, nullptr, 0,
                       nullptr);
}

// Ends a device node's recorded commands: reads the output back unless it stays on the device, submits and
// waits, and turns the result into `out` (its changed ranges only). Called with `mutex` held.
void GpuMirror::Impl::finish_node_locked(bool device_only, PageId output, MirroredPage& out_page,
                                         std::uint64_t out_bytes, const IncrementalContext& ctx, Delta& out) {
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

void GpuMirror::Impl::diff_result(std::span<const std::byte> old_bytes, std::span<const std::byte> new_bytes,
                                  Delta& out) {
  DiffOptions options;
  options.record_undo = false;
  Delta d;
  mmsb::diff_into(old_bytes, new_bytes, d, options);
  out.ranges = std::move(d.ranges);
  out.payload = std::move(d.payload);
}

[[noreturn]] void GpuMirror::Impl::throw_not_mirrored(PageId id) {
  throw Error(ErrorCode::NotFound, "page " + id.to_string() +
                                       " is not mirrored on the device; create it with Location::Device or "
                                       "Location::Both");
}

}  // namespace mmsb
