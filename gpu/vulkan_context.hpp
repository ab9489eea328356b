// gpu/vulkan_context.hpp — instance, device and compute queue selection, buffers (internal).
//
// VulkanContext::create() picks a device as mmsb/gpu.hpp documents (MMSB_VULKAN_DEVICE, discrete > integrated >
// virtual > CPU) and returns nullptr with the reason when there is none, so the caller can fall back to the CPU.
//
// Thread-safety: the context is immutable after creation; the queue must be used by one thread at a time (the
// owner serializes submits).
#pragma once

#include <vulkan/vulkan.h>

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>

namespace mmsb::gpu {

// A VkBuffer with its own memory, mapped when host-visible.
struct Buffer {
  VkBuffer buffer = VK_NULL_HANDLE;
  VkDeviceMemory memory = VK_NULL_HANDLE;
  void* mapped = nullptr;
  std::uint64_t size = 0;
  bool host_coherent = true;
};

class VulkanContext {
 public:
  // `selector`: "" (automatic), an index, or a name substring. nullptr plus `why_not` when no device fits.
  static std::unique_ptr<VulkanContext> create(const std::string& selector, std::string& why_not);
  ~VulkanContext();
  VulkanContext(const VulkanContext&) = delete;
  VulkanContext& operator=(const VulkanContext&) = delete;

  VkDevice device() const noexcept { return device_; }
  VkQueue queue() const noexcept { return queue_; }
  std::uint32_t queue_family() const noexcept { return queue_family_; }
  const VkPhysicalDeviceProperties& properties() const noexcept { return properties_; }
  std::string name() const { return properties_.deviceName; }

  // Device-local storage buffer (transfer source and destination too). With `mapped`, from a memory type that is
  // also host-visible, and mapped (only when host_visible_device_memory()).
  Buffer create_device_buffer(std::uint64_t size, bool mapped = false) const;
  // True when a memory type is both device-local and host-visible and its heap is as large as the largest
  // device-local heap: all of device memory can be written by the host (UMA and integrated GPUs, CPU drivers such
  // as lavapipe, discrete GPUs with resizable BAR). False for the 256 MiB BAR window of a discrete GPU without it.
  bool host_visible_device_memory() const noexcept { return host_visible_device_type_ >= 0; }
  // Host-visible, mapped buffer for staging and readback.
  Buffer create_host_buffer(std::uint64_t size) const;
  void destroy(Buffer& buffer) const noexcept;
  // Makes host writes to a non-coherent mapping visible to the device (no-op when coherent).
  void flush_host_writes(const Buffer& buffer, std::uint64_t bytes) const;
  // The same for bytes [begin, end) of the mapping, widened to nonCoherentAtomSize.
  void flush_host_writes(const Buffer& buffer, std::uint64_t begin, std::uint64_t end) const;
  void invalidate_for_host_reads(const Buffer& buffer) const;
  // On a CPU driver (lavapipe) a mapped buffer is ordinary memory of this process: asks the kernel to back it with
  // transparent huge pages (madvise(MADV_HUGEPAGE) on the 2 MiB-aligned part of the mapping). Call before the first
  // write, so the first touch already faults in 2 MiB pages. Best effort: returns false, changing nothing, on any
  // other device type, for a mapping without a whole aligned 2 MiB, or when the kernel refuses. Why: with 4 KiB
  // pages every large host write walks one page-table entry per 4 KiB, and under a hypervisor that shadows page
  // tables each of those is rebuilt after the process unmaps memory anywhere (docs/gpu.md, "Huge pages").
  bool advise_huge_pages(const Buffer& buffer) const noexcept;
  // VkDeviceMemory objects allocated by create_*_buffer and not yet destroyed.
  std::uint64_t live_allocations() const noexcept { return live_allocations_.load(std::memory_order_relaxed); }

 private:
  VulkanContext() = default;
  // The steps of create(); each returns false with the reason in `why_not`.
  bool create_instance(std::string& why_not);
  bool create_device(std::string& why_not);  // on physical_, with queue_family_
  Buffer create_buffer(std::uint64_t size, VkBufferUsageFlags usage, VkMemoryPropertyFlags wanted, bool map) const;
  std::uint32_t memory_type(std::uint32_t type_bits, VkMemoryPropertyFlags wanted, bool& coherent) const;

  VkInstance instance_ = VK_NULL_HANDLE;
  VkDebugUtilsMessengerEXT messenger_ = VK_NULL_HANDLE;
  VkPhysicalDevice physical_ = VK_NULL_HANDLE;
  VkDevice device_ = VK_NULL_HANDLE;
  VkQueue queue_ = VK_NULL_HANDLE;
  std::uint32_t queue_family_ = 0;
  VkPhysicalDeviceProperties properties_{};
  VkPhysicalDeviceMemoryProperties memory_properties_{};
  int host_visible_device_type_ = -1;  // see host_visible_device_memory()
  mutable std::atomic<std::uint64_t> live_allocations_{0};
};

// Throws Error(Internal) naming `what` when `result` is not VK_SUCCESS (ResourceExhausted for out-of-memory).
void check(VkResult result, const char* what);

}  // namespace mmsb::gpu
