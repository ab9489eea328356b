// GPU mirror metrics (mmsb/gpu.hpp) on the Vulkan device the machine has (lavapipe, a CPU driver, where there is no
// GPU): upload volume and speed against one raw vkCmdCopyBuffer on the same device, the per-wave cost of the
// mirror, and the stencil device node against its CPU kernel. Every workload checks its result; all of them fail
// (rather than report CPU figures) when no Vulkan device is present.
#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "bench/harness.hpp"
#include "gpu/vulkan_context.hpp"
#include "mmsb/gpu.hpp"
#include "mmsb/mmsb.hpp"

namespace mmsb::bench {
namespace {

using clock_type = std::chrono::steady_clock;

[[noreturn]] void check_failed(const std::string& what) { throw std::runtime_error(what); }

double seconds_since(clock_type::time_point start) {
  return std::chrono::duration<double>(clock_type::now() - start).count();
}

void require_vulkan(const GpuMirror& gpu) {
  if (gpu.backend() != GpuBackend::Vulkan) check_failed("no Vulkan device (install mesa-vulkan-drivers)");
}

// 1,000 waves of sparse edits (8 writes of 8-64 bytes to random pages) over 1,000 device pages of 4 KiB:
// bytes uploaded / bytes the commits changed.
double upload_ratio() {
  Runtime rt;
  Propagator prop(rt);
  GpuMirror gpu(rt, prop);
  require_vulkan(gpu);
  std::vector<PageId> pages;
  for (int i = 0; i < 1000; ++i) pages.push_back(rt.create_page(4096, Location::Device));
  gpu.wait_idle();
  const GpuStats before = gpu.stats();
  std::mt19937_64 rng(1);
  std::uint64_t changed = 0;
  std::vector<std::byte> bytes(64);
  for (int wave = 0; wave < 1000; ++wave) {
    auto txn = rt.begin();
    for (int k = 0; k < 8; ++k) {
      const std::uint64_t length = 8 + rng() % 57;
      for (std::uint64_t i = 0; i < length; ++i) bytes[i] = static_cast<std::byte>(rng() | 1);
      txn.write(pages[rng() % pages.size()], rng() % (4096 - length), std::span(bytes.data(), length));
    }
    txn.commit();
    for (const Delta& d : txn.committed_deltas()) changed += d.changed_bytes();
  }
  gpu.wait_idle();
  const GpuStats after = gpu.stats();
  for (int i = 0; i < 1000; i += 97)
    if (gpu.read_device(pages[i]) != rt.read_all(pages[i])) check_failed("gpu_upload_ratio: device copy differs");
  if (after.waves_uploaded - before.waves_uploaded != 1000) check_failed("gpu_upload_ratio: not one submit per wave");
  return static_cast<double>(after.bytes_uploaded - before.bytes_uploaded) / static_cast<double>(changed);
}

constexpr std::uint64_t kLargePage = 256 << 10;
constexpr int kLargePages = 64;  // 16 MiB rewritten per wave

// Waves that rewrite 64 pages of 256 KiB entirely: bytes uploaded / (host upload time + time until the device
// finished), in GB/s, on `path` (Auto: the default, DirectWrite where device memory is host-visible).
double upload_gbps(UploadPath path) {
  Runtime rt;
  Propagator prop(rt);
  GpuOptions options;
  options.upload = path;
  GpuMirror gpu(rt, prop, options);
  require_vulkan(gpu);
  if (path != UploadPath::Auto && gpu.upload_path() != path) check_failed("gpu_upload_gbps: path not available");
  std::vector<PageId> pages;
  for (int i = 0; i < kLargePages; ++i) pages.push_back(rt.create_page(kLargePage, Location::Device));
  gpu.wait_idle();
  std::vector<std::byte> bytes(kLargePage);
  double wait_s = 0;
  GpuStats before{};
  constexpr int kWarmup = 3;  // one wave per staging slot: each slot's buffer grows to 16 MiB once
  constexpr int kWaves = 9;
  for (int wave = 0; wave < kWarmup + kWaves; ++wave) {
    if (wave == kWarmup) before = gpu.stats();
    auto txn = rt.begin();
    for (int i = 0; i < kLargePages; ++i) {
      std::fill(bytes.begin(), bytes.end(), static_cast<std::byte>(wave * 7 + i + 1));
      txn.write(pages[i], 0, bytes);
    }
    txn.commit();  // the upload is staged and submitted at the end of this wave
    const auto start = clock_type::now();
    gpu.wait_idle();
    if (wave >= kWarmup) wait_s += seconds_since(start);
  }
  const GpuStats after = gpu.stats();
  if (gpu.read_device(pages[5]) != rt.read_all(pages[5])) check_failed("gpu_upload_gbps: device copy differs");
  const double bytes_up = static_cast<double>(after.bytes_uploaded - before.bytes_uploaded);
  if (bytes_up != double(kWaves) * kLargePages * kLargePage) check_failed("gpu_upload_gbps: unexpected volume");
  return bytes_up / (static_cast<double>(after.upload_ns - before.upload_ns) * 1e-9 + wait_s) / 1e9;
}

// Baseline: one vkCmdCopyBuffer of the same 16 MiB from a host-visible buffer to a device buffer, submit + wait.
double copy_gbps() {
  std::string why_not;
  auto vk =
      gpu::VulkanContext::create(std::getenv("MMSB_VULKAN_DEVICE") ? std::getenv("MMSB_VULKAN_DEVICE") : "", why_not);
  if (!vk) check_failed("gpu_copy_gbps: " + why_not);
  const std::uint64_t size = kLargePage * kLargePages;
  gpu::Buffer staging = vk->create_host_buffer(size), target = vk->create_device_buffer(size);
  std::memset(staging.mapped, 0x5a, size);
  VkCommandPool pool;
  VkCommandPoolCreateInfo pool_info{};
  pool_info.sType = VK_STRUCTURE_TYPE_COMMAND_POOL_CREATE_INFO;
  pool_info.queueFamilyIndex = vk->queue_family();
  gpu::check(vkCreateCommandPool(vk->device(), &pool_info, nullptr, &pool), "vkCreateCommandPool");
  VkCommandBuffer cmd;
  VkCommandBufferAllocateInfo alloc{};
  alloc.sType = VK_STRUCTURE_TYPE_COMMAND_BUFFER_ALLOCATE_INFO;
  alloc.commandPool = pool;
  alloc.level = VK_COMMAND_BUFFER_LEVEL_PRIMARY;
  alloc.commandBufferCount = 1;
  gpu::check(vkAllocateCommandBuffers(vk->device(), &alloc, &cmd), "vkAllocateCommandBuffers");
  VkFence fence;
  VkFenceCreateInfo fence_info{};
  fence_info.sType = VK_STRUCTURE_TYPE_FENCE_CREATE_INFO;
  gpu::check(vkCreateFence(vk->device(), &fence_info, nullptr, &fence), "vkCreateFence");
  VkCommandBufferBeginInfo begin{};
  begin.sType = VK_STRUCTURE_TYPE_COMMAND_BUFFER_BEGIN_INFO;
  gpu::check(vkBeginCommandBuffer(cmd, &begin), "vkBeginCommandBuffer");
  VkBufferCopy region{0, 0, size};
  vkCmdCopyBuffer(cmd, staging.buffer, target.buffer, 1, &region);
  gpu::check(vkEndCommandBuffer(cmd), "vkEndCommandBuffer");
  VkSubmitInfo submit{};
  submit.sType = VK_STRUCTURE_TYPE_SUBMIT_INFO;
  submit.commandBufferCount = 1;
  submit.pCommandBuffers = &cmd;
  double total_s = 0;
  constexpr int kCopies = 10;
  for (int i = 0; i <= kCopies; ++i) {
    const auto start = clock_type::now();
    gpu::check(vkQueueSubmit(vk->queue(), 1, &submit, fence), "vkQueueSubmit");
    gpu::check(vkWaitForFences(vk->device(), 1, &fence, VK_TRUE, UINT64_MAX), "vkWaitForFences");
    if (i > 0) total_s += seconds_since(start);  // the first copy touches the pages for the first time
    vkResetFences(vk->device(), 1, &fence);
  }
  vkDestroyFence(vk->device(), fence, nullptr);
  vkDestroyCommandPool(vk->device(), pool, nullptr);
  vk->destroy(staging);
  vk->destroy(target);
  return double(size) * kCopies / total_s / 1e9;
}

// Microseconds per wave of one 8-byte commit to one of 1,000 pages, waiting for the device each wave, with the
// pages on the device minus the same waves on host pages (no mirror attached): the submit + fence cost.
double wave_overhead_us() {
  auto per_wave_us = [](bool device) {
    Runtime rt;
    Propagator prop(rt);
    std::vector<PageId> pages;
    for (int i = 0; i < 1000; ++i) pages.push_back(rt.create_page(4096, device ? Location::Device : Location::Host));
    std::optional<GpuMirror> gpu;
    if (device) {
      gpu.emplace(rt, prop);
      require_vulkan(*gpu);
      gpu->wait_idle();
    }
    constexpr int kWaves = 2000;
    const auto start = clock_type::now();
    for (int wave = 0; wave < kWaves; ++wave) {
      auto txn = rt.begin();
      txn.write_value<std::uint64_t>(pages[static_cast<std::size_t>(wave) % pages.size()], 64, wave + 1);
      txn.commit();
      if (gpu) gpu->wait_idle();
    }
    const double us = seconds_since(start) * 1e6 / kWaves;
    if (gpu && gpu->stats().waves_uploaded < kWaves) check_failed("gpu_wave_overhead_us: waves were not uploaded");
    return us;
  };
  const double host = per_wave_us(false);
  return per_wave_us(true) - host;
}

constexpr std::uint32_t kGridSide = 1024;
constexpr std::uint32_t kSteps = 8;

std::vector<std::int32_t> heat_grid() {
  std::vector<std::int32_t> g(std::size_t{kGridSide} * kGridSide);
  std::mt19937 rng(5);
  for (auto& v : g) v = static_cast<std::int32_t>(rng() % (1 << 20));
  return g;
}

// The stencil device node on a 1024 x 1024 grid, 8 steps per run, output device-only: cells updated per second.
double gpu_stencil_mcells() {
  Runtime rt;
  Propagator prop(rt);
  GpuMirror gpu(rt, prop);
  require_vulkan(gpu);
  const std::uint64_t bytes = std::uint64_t{kGridSide} * kGridSide * 4;
  PageId grid = rt.create_page(bytes, Location::Device), out = rt.create_page(bytes, Location::Device);
  gpu.derive_stencil5(out, grid, {kGridSide, kGridSide, kSteps});
  const auto g = heat_grid();
  auto txn = rt.begin();
  txn.write(grid, 0, std::as_bytes(std::span(g)));
  txn.commit();  // uploads the grid and runs the node once (warm-up)
  constexpr int kRuns = 5;
  const auto start = clock_type::now();
  for (int i = 0; i < kRuns; ++i) prop.recompute(out);
  const double s = seconds_since(start);
  // Check against the CPU kernel.
  std::vector<std::int32_t> a = g, b(g.size());
  for (std::uint32_t k = 0; k < kSteps; ++k) {
    stencil5_step_cpu(a.data(), b.data(), kGridSide, kGridSide);
    a.swap(b);
  }
  const auto device = gpu.read_device(out);
  if (std::memcmp(device.data(), a.data(), bytes) != 0) check_failed("gpu_stencil: result differs from the CPU");
  return double(kGridSide) * kGridSide * kSteps * kRuns / s / 1e6;
}

// Baseline: the CPU kernel on the same grid and steps, one thread.
double cpu_stencil_mcells() {
  auto a = heat_grid();
  std::vector<std::int32_t> b(a.size());
  constexpr int kRuns = 5;
  const auto start = clock_type::now();
  for (int r = 0; r < kRuns; ++r) {
    for (std::uint32_t k = 0; k < kSteps; ++k) {
      stencil5_step_cpu(a.data(), b.data(), kGridSide, kGridSide);
      a.swap(b);
    }
  }
  const double s = seconds_since(start);
  if (a[std::size_t{kGridSide} * kGridSide / 2 + kGridSide / 2] < 0) check_failed("cpu_stencil: impossible value");
  return double(kGridSide) * kGridSide * kSteps * kRuns / s / 1e6;
}

Register ratio("gpu_upload_ratio",
               "mirror: bytes uploaded / bytes changed, 1000 waves x 8 sparse writes over 1000 device pages of 4 KiB",
               [] { return upload_ratio(); });
Register upload("gpu_upload_gbps",
                "mirror, default path (direct writes where device memory is host-visible): GB/s uploading waves "
                "that rewrite 64 device pages of 256 KiB (host writes + fence)",
                [] { return upload_gbps(UploadPath::Auto); });
Register upload_staged("gpu_upload_staged_gbps",
                       "mirror, staging path forced (UploadPath::CopyRegions): the same waves (staging + copy + fence)",
                       [] { return upload_gbps(UploadPath::CopyRegions); });
Register copy("gpu_copy_gbps", "baseline: GB/s of one 16 MiB vkCmdCopyBuffer host-visible -> device, submit + fence",
              [] { return copy_gbps(); });
Register upload_vs_copy(Ratio{"gpu_upload_vs_copy_ratio", "gpu_upload_gbps", "gpu_copy_gbps",
                              "mirror upload speed (default path) / raw copy speed (target >= 0.5)"});
Register staged_vs_copy(Ratio{"gpu_upload_staged_vs_copy_ratio", "gpu_upload_staged_gbps", "gpu_copy_gbps",
                              "mirror upload speed (staging path) / raw copy speed"});
Register overhead("gpu_wave_overhead_us",
                  "mirror: extra microseconds per wave (8-byte commit, submit + fence wait) over host pages",
                  [] { return wave_overhead_us(); });
Register gpu_stencil("gpu_stencil_mcells_per_s",
                     "device node: 5-point stencil, 1024x1024 int32, 8 steps per wave, device-only output",
                     [] { return gpu_stencil_mcells(); });
Register cpu_stencil("cpu_stencil_mcells_per_s", "baseline: the same stencil steps with the CPU kernel, one thread",
                     [] { return cpu_stencil_mcells(); });

}  // namespace
}  // namespace mmsb::bench
