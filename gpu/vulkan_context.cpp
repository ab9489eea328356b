#include "gpu/vulkan_context.hpp"

#include <sys/mman.h>
#include <algorithm>
#include <cctype>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "mmsb/error.hpp"
#include "runtime/logging.hpp"

namespace mmsb::gpu {
namespace {

constexpr const char* kValidationLayer = "VK_LAYER_KHRONOS_validation";

std::string lower(std::string s) {
  std::transform(s.begin(), s.end(), s.begin(), [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return s;
}

// Lower is preferred: discrete, integrated, virtual, CPU, anything else.
int type_rank(VkPhysicalDeviceType type) {
  switch (type) {
    case VK_PHYSICAL_DEVICE_TYPE_DISCRETE_GPU:
      return 0;
    case VK_PHYSICAL_DEVICE_TYPE_INTEGRATED_GPU:
      return 1;
    case VK_PHYSICAL_DEVICE_TYPE_VIRTUAL_GPU:
      return 2;
    case VK_PHYSICAL_DEVICE_TYPE_CPU:
      return 3;
    default:
      return 4;
  }
}

bool has_layer(const char* name) {
  std::uint32_t count = 0;
  if (vkEnumerateInstanceLayerProperties(&count, nullptr) != VK_SUCCESS) return false;
  std::vector<VkLayerProperties> layers(count);
  if (vkEnumerateInstanceLayerProperties(&count, layers.data()) != VK_SUCCESS) return false;
  return std::any_of(layers.begin(), layers.end(),
                     [&](const VkLayerProperties& l) { return std::strcmp(l.layerName, name) == 0; });
}

VKAPI_ATTR VkBool32 VKAPI_CALL on_validation_message(VkDebugUtilsMessageSeverityFlagBitsEXT severity,
                                                     VkDebugUtilsMessageTypeFlagsEXT,
                                                     const VkDebugUtilsMessengerCallbackDataEXT* data, void*) {
  if (severity >= VK_DEBUG_UTILS_MESSAGE_SEVERITY_ERROR_BIT_EXT) {
    detail::logger()->error("vulkan validation: {}", data->pMessage);
  } else {
    detail::logger()->warn("vulkan validation: {}", data->pMessage);
  }
  return VK_FALSE;
}

// The first queue family with compute, or -1.
int compute_family(VkPhysicalDevice device) {
  std::uint32_t count = 0;
  vkGetPhysicalDeviceQueueFamilyProperties(device, &count, nullptr);
  std::vector<VkQueueFamilyProperties> families(count);
  vkGetPhysicalDeviceQueueFamilyProperties(device, &count, families.data());
  for (std::uint32_t i = 0; i < count; ++i)
    if (families[i].queueFlags & VK_QUEUE_COMPUTE_BIT) return static_cast<int>(i);
  return -1;
}

// The device `selector` names ("" automatic: the best type, discrete > integrated > virtual > CPU; an index; or
// a name substring), among those with Vulkan 1.2 and a compute queue; -1 when none. `listing` gets every device.
int choose_device(const std::vector<VkPhysicalDevice>& devices, const std::string& selector, std::string& listing) {
  int chosen = -1;
  const bool by_index = !selector.empty() && std::all_of(selector.begin(), selector.end(),
                                                         [](unsigned char c) { return std::isdigit(c) != 0; });
  for (std::uint32_t i = 0; i < devices.size(); ++i) {
    VkPhysicalDeviceProperties p;
    vkGetPhysicalDeviceProperties(devices[i], &p);
    listing += (listing.empty() ? "" : ", ") + std::to_string(i) + ": " + p.deviceName;
    const bool usable = p.apiVersion >= VK_API_VERSION_1_2 && compute_family(devices[i]) >= 0;
    if (!usable) continue;
    if (by_index) {
      if (std::strtoull(selector.c_str(), nullptr, 10) == i) chosen = static_cast<int>(i);
    } else if (!selector.empty()) {
      if (chosen < 0 && lower(p.deviceName).find(lower(selector)) != std::string::npos) chosen = static_cast<int>(i);
    } else if (chosen < 0) {
      chosen = static_cast<int>(i);
    } else {
      VkPhysicalDeviceProperties best;
      vkGetPhysicalDeviceProperties(devices[static_cast<std::size_t>(chosen)], &best);
      if (type_rank(p.deviceType) < type_rank(best.deviceType)) chosen = static_cast<int>(i);
    }
  }
  return chosen;
}

// A memory type that is device-local and host-visible on a heap as large as the largest device-local heap
// (VulkanContext::host_visible_device_memory()); -1 when none.
int host_visible_device_type(const VkPhysicalDeviceMemoryProperties& mp) {
  VkDeviceSize largest_local = 0;
  for (std::uint32_t h = 0; h < mp.memoryHeapCount; ++h) {
    if (mp.memoryHeaps[h].flags & VK_MEMORY_HEAP_DEVICE_LOCAL_BIT) {
      largest_local = std::max(largest_local, mp.memoryHeaps[h].size);
    }
  }
  constexpr VkMemoryPropertyFlags both = VK_MEMORY_PROPERTY_DEVICE_LOCAL_BIT | VK_MEMORY_PROPERTY_HOST_VISIBLE_BIT;
  for (std::uint32_t i = 0; i < mp.memoryTypeCount; ++i) {
    if ((mp.memoryTypes[i].propertyFlags & both) == both &&
        mp.memoryHeaps[mp.memoryTypes[i].heapIndex].size >= largest_local) {
      return static_cast<int>(i);
    }
  }
  return -1;
}

}  // namespace

void check(VkResult result, const char* what) {
  if (result == VK_SUCCESS) return;
  const ErrorCode code = (result == VK_ERROR_OUT_OF_DEVICE_MEMORY || result == VK_ERROR_OUT_OF_HOST_MEMORY)
                             ? ErrorCode::ResourceExhausted
                             : ErrorCode::Internal;
  throw Error(code, std::string("vulkan: ") + what + " failed with VkResult " + std::to_string(result));
}

std::unique_ptr<VulkanContext> VulkanContext::create(const std::string& selector, std::string& why_not) {
  std::unique_ptr<VulkanContext> ctx(new VulkanContext());
  std::uint32_t loader_version = 0;
  if (vkEnumerateInstanceVersion(&loader_version) != VK_SUCCESS || loader_version < VK_API_VERSION_1_2) {
    why_not = "the Vulkan loader does not support Vulkan 1.2";
    return nullptr;
  }
  if (!ctx->create_instance(why_not)) return nullptr;

  std::uint32_t count = 0;
  vkEnumeratePhysicalDevices(ctx->instance_, &count, nullptr);
  std::vector<VkPhysicalDevice> devices(count);
  vkEnumeratePhysicalDevices(ctx->instance_, &count, devices.data());
  std::string listing;
  const int chosen = choose_device(devices, selector, listing);
  if (chosen < 0) {
    if (count == 0) {
      why_not = "no Vulkan device is present";
    } else if (selector.empty()) {
      why_not = "no device supports Vulkan 1.2 compute (devices: " + listing + ")";
    } else {
      why_not = "no Vulkan 1.2 compute device matches '" + selector + "' (devices: " + listing + ")";
    }
    return nullptr;
  }
  ctx->physical_ = devices[static_cast<std::size_t>(chosen)];
  vkGetPhysicalDeviceProperties(ctx->physical_, &ctx->properties_);
  vkGetPhysicalDeviceMemoryProperties(ctx->physical_, &ctx->memory_properties_);
  ctx->host_visible_device_type_ = host_visible_device_type(ctx->memory_properties_);
  ctx->queue_family_ = static_cast<std::uint32_t>(compute_family(ctx->physical_));
  if (!ctx->create_device(why_not)) return nullptr;
  detail::logger()->info("gpu: using Vulkan device {} ({}), devices: {}", ctx->properties_.deviceName, chosen, listing);
  return ctx;
}

bool VulkanContext::create_instance(std::string& why_not) {
  VkApplicationInfo app{};
  app.sType = VK_STRUCTURE_TYPE_APPLICATION_INFO;
  app.pApplicationName = "mmsb";
  app.pEngineName = "mmsb";
  app.apiVersion = VK_API_VERSION_1_2;
  VkInstanceCreateInfo instance_info{};
  instance_info.sType = VK_STRUCTURE_TYPE_INSTANCE_CREATE_INFO;
  instance_info.pApplicationInfo = &app;
  std::vector<const char*> layers, extensions;
#ifndef NDEBUG
  if (has_layer(kValidationLayer)) {
    layers.push_back(kValidationLayer);
    extensions.push_back(VK_EXT_DEBUG_UTILS_EXTENSION_NAME);
  } else {
    detail::logger()->debug("vulkan: {} is not installed; running without validation", kValidationLayer);
  }
#else
  (void)has_layer;
  (void)kValidationLayer;
#endif
  instance_info.enabledLayerCount = static_cast<std::uint32_t>(layers.size());
  instance_info.ppEnabledLayerNames = layers.data();
  instance_info.enabledExtensionCount = static_cast<std::uint32_t>(extensions.size());
  instance_info.ppEnabledExtensionNames = extensions.data();
  if (VkResult r = vkCreateInstance(&instance_info, nullptr, &instance_); r != VK_SUCCESS) {
    why_not = "vkCreateInstance failed (VkResult " + std::to_string(r) + ")";
    return false;
  }
  if (layers.empty()) return true;
  auto create_messenger = reinterpret_cast<PFN_vkCreateDebugUtilsMessengerEXT>(
      vkGetInstanceProcAddr(instance_, "vkCreateDebugUtilsMessengerEXT"));
  if (create_messenger) {
    VkDebugUtilsMessengerCreateInfoEXT info{};
    info.sType = VK_STRUCTURE_TYPE_DEBUG_UTILS_MESSENGER_CREATE_INFO_EXT;
    info.messageSeverity =
        VK_DEBUG_UTILS_MESSAGE_SEVERITY_WARNING_BIT_EXT | VK_DEBUG_UTILS_MESSAGE_SEVERITY_ERROR_BIT_EXT;
    info.messageType = VK_DEBUG_UTILS_MESSAGE_TYPE_GENERAL_BIT_EXT | VK_DEBUG_UTILS_MESSAGE_TYPE_VALIDATION_BIT_EXT |
                       VK_DEBUG_UTILS_MESSAGE_TYPE_PERFORMANCE_BIT_EXT;
    info.pfnUserCallback = on_validation_message;
    create_messenger(instance_, &info, nullptr, &messenger_);
  }
  return true;
}

bool VulkanContext::create_device(std::string& why_not) {
  const float priority = 1.0f;
  VkDeviceQueueCreateInfo queue_info{};
  queue_info.sType = VK_STRUCTURE_TYPE_DEVICE_QUEUE_CREATE_INFO;
  queue_info.queueFamilyIndex = queue_family_;
  queue_info.queueCount = 1;
  queue_info.pQueuePriorities = &priority;
  // Timeline semaphores (core and required in Vulkan 1.2) order device nodes after the uploads they read and
  // replace fences for the host's waits.
  VkPhysicalDeviceVulkan12Features supported12{};
  supported12.sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_VULKAN_1_2_FEATURES;
  VkPhysicalDeviceFeatures2 supported{};
  supported.sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_FEATURES_2;
  supported.pNext = &supported12;
  vkGetPhysicalDeviceFeatures2(physical_, &supported);
  if (!supported12.timelineSemaphore) {
    why_not = std::string(properties_.deviceName) + " lacks timeline semaphores (Vulkan 1.2)";
    return false;
  }
  VkPhysicalDeviceVulkan12Features features12{};
  features12.sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_VULKAN_1_2_FEATURES;
  features12.timelineSemaphore = VK_TRUE;
  VkDeviceCreateInfo device_info{};
  device_info.sType = VK_STRUCTURE_TYPE_DEVICE_CREATE_INFO;
  device_info.pNext = &features12;
  device_info.queueCreateInfoCount = 1;
  device_info.pQueueCreateInfos = &queue_info;
  if (VkResult r = vkCreateDevice(physical_, &device_info, nullptr, &device_); r != VK_SUCCESS) {
    why_not =
        std::string("vkCreateDevice failed on ") + properties_.deviceName + " (VkResult " + std::to_string(r) + ")";
    return false;
  }
  vkGetDeviceQueue(device_, queue_family_, 0, &queue_);
  return true;
}

VulkanContext::~VulkanContext() {
  if (device_) vkDestroyDevice(device_, nullptr);
  if (messenger_) {
    auto destroy_messenger = reinterpret_cast<PFN_vkDestroyDebugUtilsMessengerEXT>(
        vkGetInstanceProcAddr(instance_, "vkDestroyDebugUtilsMessengerEXT"));
    if (destroy_messenger) destroy_messenger(instance_, messenger_, nullptr);
  }
  if (instance_) vkDestroyInstance(instance_, nullptr);
}

std::uint32_t VulkanContext::memory_type(std::uint32_t type_bits, VkMemoryPropertyFlags wanted, bool& coherent) const {
  for (std::uint32_t i = 0; i < memory_properties_.memoryTypeCount; ++i) {
    const VkMemoryPropertyFlags flags = memory_properties_.memoryTypes[i].propertyFlags;
    if ((type_bits & (1u << i)) && (flags & wanted) == wanted) {
      coherent = (flags & VK_MEMORY_PROPERTY_HOST_COHERENT_BIT) != 0;
      return i;
    }
  }
  throw Error(ErrorCode::Unsupported,
              "vulkan: the device has no memory type with properties " + std::to_string(wanted) + " for this buffer");
}

Buffer VulkanContext::create_buffer(std::uint64_t size, VkBufferUsageFlags usage, VkMemoryPropertyFlags wanted,
                                    bool map) const {
  Buffer out;
  out.size = size;
  VkBufferCreateInfo info{};
  info.sType = VK_STRUCTURE_TYPE_BUFFER_CREATE_INFO;
  info.size = size;
  info.usage = usage;
  info.sharingMode = VK_SHARING_MODE_EXCLUSIVE;
  check(vkCreateBuffer(device_, &info, nullptr, &out.buffer), "vkCreateBuffer");
  VkMemoryRequirements req;
  vkGetBufferMemoryRequirements(device_, out.buffer, &req);
  VkMemoryAllocateInfo alloc{};
  alloc.sType = VK_STRUCTURE_TYPE_MEMORY_ALLOCATE_INFO;
  alloc.allocationSize = req.size;
  try {
    alloc.memoryTypeIndex = memory_type(req.memoryTypeBits, wanted, out.host_coherent);
    check(vkAllocateMemory(device_, &alloc, nullptr, &out.memory), "vkAllocateMemory");
    live_allocations_.fetch_add(1, std::memory_order_relaxed);
    check(vkBindBufferMemory(device_, out.buffer, out.memory, 0), "vkBindBufferMemory");
    if (map) check(vkMapMemory(device_, out.memory, 0, VK_WHOLE_SIZE, 0, &out.mapped), "vkMapMemory");
  } catch (...) {
    destroy(out);
    throw;
  }
  return out;
}

Buffer VulkanContext::create_device_buffer(std::uint64_t size, bool mapped) const {
  if (mapped && !host_visible_device_memory()) {
    throw Error(ErrorCode::Unsupported, "vulkan: " + name() + " has no host-visible device memory to map");
  }
  return create_buffer(
      size, VK_BUFFER_USAGE_STORAGE_BUFFER_BIT | VK_BUFFER_USAGE_TRANSFER_SRC_BIT | VK_BUFFER_USAGE_TRANSFER_DST_BIT,
      mapped ? VK_MEMORY_PROPERTY_DEVICE_LOCAL_BIT | VK_MEMORY_PROPERTY_HOST_VISIBLE_BIT
             : VK_MEMORY_PROPERTY_DEVICE_LOCAL_BIT,
      mapped);
}

Buffer VulkanContext::create_host_buffer(std::uint64_t size) const {
  return create_buffer(
      size, VK_BUFFER_USAGE_STORAGE_BUFFER_BIT | VK_BUFFER_USAGE_TRANSFER_SRC_BIT | VK_BUFFER_USAGE_TRANSFER_DST_BIT,
      VK_MEMORY_PROPERTY_HOST_VISIBLE_BIT, true);
}

void VulkanContext::destroy(Buffer& buffer) const noexcept {
  if (buffer.mapped) vkUnmapMemory(device_, buffer.memory);
  if (buffer.buffer) vkDestroyBuffer(device_, buffer.buffer, nullptr);
  if (buffer.memory) {
    vkFreeMemory(device_, buffer.memory, nullptr);
    live_allocations_.fetch_sub(1, std::memory_order_relaxed);
  }
  buffer = Buffer{};
}

void VulkanContext::flush_host_writes(const Buffer& buffer, std::uint64_t) const {
  if (buffer.host_coherent) return;
  VkMappedMemoryRange range{};
  range.sType = VK_STRUCTURE_TYPE_MAPPED_MEMORY_RANGE;
  range.memory = buffer.memory;
  range.size = VK_WHOLE_SIZE;
  check(vkFlushMappedMemoryRanges(device_, 1, &range), "vkFlushMappedMemoryRanges");
}

void VulkanContext::flush_host_writes(const Buffer& buffer, std::uint64_t begin, std::uint64_t end) const {
  if (buffer.host_coherent || begin >= end) return;
  const std::uint64_t atom = std::max<std::uint64_t>(1, properties_.limits.nonCoherentAtomSize);
  VkMappedMemoryRange range{};
  range.sType = VK_STRUCTURE_TYPE_MAPPED_MEMORY_RANGE;
  range.memory = buffer.memory;
  range.offset = begin / atom * atom;
  const std::uint64_t last = (end + atom - 1) / atom * atom;
  range.size = last >= buffer.size ? VK_WHOLE_SIZE : last - range.offset;
  check(vkFlushMappedMemoryRanges(device_, 1, &range), "vkFlushMappedMemoryRanges");
}

bool VulkanContext::advise_huge_pages(const Buffer& buffer) const noexcept {
  if (properties_.deviceType != VK_PHYSICAL_DEVICE_TYPE_CPU || !buffer.mapped) return false;
  constexpr std::uintptr_t kHuge = std::uintptr_t{2} << 20;
  const auto start = reinterpret_cast<std::uintptr_t>(buffer.mapped);
  const std::uintptr_t begin = (start + kHuge - 1) & ~(kHuge - 1);
  const std::uintptr_t end = (start + buffer.size) & ~(kHuge - 1);
  if (end <= begin) return false;
  return madvise(reinterpret_cast<void*>(begin), end - begin, MADV_HUGEPAGE) == 0;
}

void VulkanContext::invalidate_for_host_reads(const Buffer& buffer) const {
  if (buffer.host_coherent) return;
  VkMappedMemoryRange range{};
  range.sType = VK_STRUCTURE_TYPE_MAPPED_MEMORY_RANGE;
  range.memory = buffer.memory;
  range.size = VK_WHOLE_SIZE;
  check(vkInvalidateMappedMemoryRanges(device_, 1, &range), "vkInvalidateMappedMemoryRanges");
}

}  // namespace mmsb::gpu
