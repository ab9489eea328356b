// GpuMirror's public methods: attaching to a runtime and its propagator, and what the mirror reports. The
// implementation is spread by concern over the mirror_*.cpp files (see mirror_impl.hpp).
#include <cstring>
#include <string>
#include <utility>
#include <vector>

#include "gpu/mirror_impl.hpp"
#include "mmsb/error.hpp"

namespace mmsb {

using gpu::Block;

GpuMirror::GpuMirror(Runtime& runtime, Propagator& propagator, GpuOptions options) {
  if (options.staging_slots == 0 || options.staging_slots > 16) {
    throw Error(ErrorCode::InvalidArgument,
                "GpuOptions::staging_slots must be between 1 and 16, not " + std::to_string(options.staging_slots));
  }
  if (options.block_bytes < (std::uint64_t{1} << 16)) {
    throw Error(ErrorCode::InvalidArgument,
                "GpuOptions::block_bytes must be at least 65536, not " + std::to_string(options.block_bytes));
  }
  impl_ = std::make_unique<Impl>(runtime, propagator, std::move(options));
  Impl& m = *impl_;
  m.open_device();
  if (!m.on_device()) return;
  m.event_subscriptions.push_back(
      propagator.subscribe(EventMask{EventKind::PageCreated, EventKind::PageDeleted}, [&m](const Event& e) {
        if (e.kind == EventKind::PageCreated) {
          m.track(e.page);
        } else {
          m.untrack(e.page);
        }
      }));
  // The end of a delivery. Events are delivered after the page deltas of the same waves, so the first of these
  // flushes all of them and the rest find nothing pending. WaveEnd alone is not enough: a commit whose pages no
  // node reads runs no wave, yet its deltas reach page subscribers; Commit events cover those.
  m.event_subscriptions.push_back(
      propagator.subscribe(EventMask{EventKind::Commit, EventKind::WaveEnd}, [&m](const Event&) { m.flush(); }));
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
