// GpuMirror: opening the Vulkan device and creating (and destroying) the command pool, pipelines, descriptor
// pools and the timeline semaphore the mirror uses (see mirror_impl.hpp).
#include <vulkan/vulkan.h>

#include <algorithm>
#include <cstdlib>
#include <exception>
#include <span>
#include <string>
#include <vector>

#include "gpu/mirror_impl.hpp"
#include "gpu/shaders.hpp"
#include "runtime/logging.hpp"

namespace mmsb {
namespace {

using gpu::Block;
using gpu::check;
using gpu::KernelPipeline;
using gpu::StagingSlot;

}  // namespace

void GpuMirror::Impl::open_device() {
  std::string selector = options.device;
  if (selector.empty()) {
    if (const char* env = std::getenv("MMSB_VULKAN_DEVICE")) selector = env;
  }
  if (selector == "none") {
    detail::logger()->warn(
        "gpu: MMSB_VULKAN_DEVICE=none: device pages stay on the host and device nodes run "
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
    detail::logger()->warn(
        "gpu: no usable Vulkan device ({}); device pages stay on the host and device nodes "
        "run their CPU kernels",
        why_not);
    return;
  }
  upload_mode = options.upload;
  if (upload_mode == UploadPath::Auto) {
    upload_mode = vk->host_visible_device_memory() ? UploadPath::DirectWrite : UploadPath::CopyRegions;
  } else if (upload_mode == UploadPath::DirectWrite && !vk->host_visible_device_memory()) {
    detail::logger()->warn(
        "gpu: {} has no host-visible device memory; UploadPath::DirectWrite falls back to "
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
    detail::logger()->warn(
        "gpu: Vulkan set-up failed ({}); device pages stay on the host and device nodes run "
        "their CPU kernels",
        e.what());
  }
}

// A set layout of `buffers` storage buffers at bindings 0.. (every compute shader here takes its pages so).
VkDescriptorSetLayout GpuMirror::Impl::create_set_layout(std::uint32_t buffers) {
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
VkPipelineLayout GpuMirror::Impl::create_pipeline_layout(const VkDescriptorSetLayout& set, std::uint32_t push_bytes) {
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

VkPipeline GpuMirror::Impl::create_pipeline(std::span<const std::uint32_t> spirv, VkPipelineLayout layout) {
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

VkDescriptorPool GpuMirror::Impl::create_descriptor_pool(std::uint32_t sets, std::uint32_t buffers_per_set) {
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

VkSemaphore GpuMirror::Impl::create_timeline() {
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

void GpuMirror::Impl::create_compute_objects() {
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

void GpuMirror::Impl::destroy_vulkan_objects() noexcept {
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

}  // namespace mmsb
