// gpu/vulkan_context.hpp — instance, device and compute queue selection, buffers (internal).
//
// VulkanContext::create() picks a device as mmsb/gpu.hpp documents (MMSB_VULKAN_DEVICE, discrete > integrated >
// virtual > CPU) and returns nullptr with the reason when there is none, so the caller can fall back to the CPU.
//
// Thread-safety: the context is immutable after creation; the queue must be used by one thread at a time (the
// owner serializes submits).
#pragma once

#include <vulkan/vulkan.h>

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

  // Device-local storage buffer (transfer source and destination too).
  Buffer create_device_buffer(std::uint64_t size) const;
  // Host-visible, mapped buffer for staging and readback.
  Buffer create_host_buffer(std::uint64_t size) const;
  void destroy(Buffer& buffer) const noexcept;
  // Makes host writes to a non-coherent mapping visible to the device (no-op when coherent).
  void flush_host_writes(const Buffer& buffer, std::uint64_t bytes) const;
  void invalidate_for_host_reads(const Buffer& buffer) const;

 private:
  VulkanContext() = default;
  Buffer create_buffer(std::uint64_t size, VkBufferUsageFlags usage, bool host_visible) const;
  std::uint32_t memory_type(std::uint32_t type_bits, VkMemoryPropertyFlags wanted, bool& coherent) const;

  VkInstance instance_ = VK_NULL_HANDLE;
  VkDebugUtilsMessengerEXT messenger_ = VK_NULL_HANDLE;
  VkPhysicalDevice physical_ = VK_NULL_HANDLE;
  VkDevice device_ = VK_NULL_HANDLE;
  VkQueue queue_ = VK_NULL_HANDLE;
  std::uint32_t queue_family_ = 0;
  VkPhysicalDeviceProperties properties_{};
  VkPhysicalDeviceMemoryProperties memory_properties_{};
};

// Throws Error(Internal) naming `what` when `result` is not VK_SUCCESS (ResourceExhausted for out-of-memory).
void check(VkResult result, const char* what);

}  // namespace mmsb::gpu
