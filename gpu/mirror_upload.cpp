// GpuMirror: which pages are mirrored, and how their changes reach the device after each wave: written
// straight into mapped device memory, staged and copied, or scattered by a shader (see mirror_impl.hpp).
#include <vulkan/vulkan.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <span>
#include <vector>

#include "gpu/mirror_impl.hpp"
#include "mmsb/error.hpp"

namespace mmsb {
namespace {

using gpu::Block;
using gpu::Buffer;
using gpu::check;
using gpu::MirroredPage;
using gpu::StagingSlot;
using gpu::UploadPiece;

std::uint64_t steady_ns() {
  return static_cast<std::uint64_t>(
      std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch())
          .count());
}

}  // namespace

// Starts mirroring `id` if it is a device page. Takes page locks: call without `mutex`.
void GpuMirror::Impl::track(PageId id) {
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

void GpuMirror::Impl::untrack(PageId id) {
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

// A delta of a mirrored page, delivered after its wave.
void GpuMirror::Impl::on_delta(PageId id, const Delta& delta, std::uint64_t epoch) {
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

// DirectWrite: copies `length` bytes (zeros when `source` is null) to `offset` of a mapped device buffer. No
// device work that touches device memory is in flight here: DirectWrite submits no uploads, and device nodes and
// read_device() wait for their own submits under `mutex`; waiting for the slots keeps that true regardless.
void GpuMirror::Impl::write_direct(std::uint32_t block, std::uint64_t offset, const std::byte* source,
                                   std::uint64_t length) {
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
void GpuMirror::Impl::flush_direct_locked() {
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

void GpuMirror::Impl::stage_direct(PageId id, const MirroredPage& page, const Delta& delta) {
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
void GpuMirror::Impl::unstage(PageId id) {
  if (!staged_pages.erase(id)) return;
  staged.erase(std::remove_if(staged.begin(), staged.end(), [id](const StagedRange& r) { return r.page == id; }),
               staged.end());
}

// The page's staged ranges as a delta reaching `epoch`, removed from the staging list.
Delta GpuMirror::Impl::unstage_as_delta(PageId id, const MirroredPage& page, std::uint64_t epoch) {
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
void GpuMirror::Impl::gather_whole_pages() {
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

void GpuMirror::Impl::queue_whole_locked(PageId id, MirroredPage& page, std::span<const std::byte> bytes,
                                         std::uint64_t epoch) {
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

// The pieces of all pending deltas, grouped by device buffer (for one copy command per buffer).
std::vector<UploadPiece> GpuMirror::Impl::pending_pieces() {
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

std::uint64_t GpuMirror::Impl::scatter_bytes(const std::vector<UploadPiece>& pieces) const {
  std::uint64_t bytes = 0;
  for (const UploadPiece& p : pieces) bytes += 32 + ((p.target % 4) + p.length + 3) / 4 * 4;
  return bytes + 64 * blocks.size();
}

std::uint64_t GpuMirror::Impl::record_scatter(VkCommandBuffer cmd, const Buffer& staging, VkDescriptorPool pool,
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
      segment[3] = 0xffffffffu << (8 * lead);                                     // bytes from `lead` on
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

void GpuMirror::Impl::record_zero_fills(VkCommandBuffer cmd) {
  for (const auto& [region, size] : zero_regions) {
    vkCmdFillBuffer(cmd, blocks[region.block].buffer.buffer, region.offset, (size + 3) / 4 * 4, 0);
  }
  zero_regions.clear();
}

// Submits everything staged and pending as one command buffer on the open staging slot, without waiting.
void GpuMirror::Impl::flush_locked() {
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
void GpuMirror::Impl::record_staged_copies(VkCommandBuffer cmd, const Buffer& staging) {
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

void GpuMirror::Impl::flush() {
  if (!on_device()) return;
  gather_whole_pages();
  std::lock_guard lock(mutex);
  flush_locked();
}

}  // namespace mmsb
