// The GPU mirror on the Vulkan device this machine has (Mesa's lavapipe in CI), and its CPU fallback.
// A machine without any Vulkan device fails these tests with a message saying what to install.
#include <gtest/gtest.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <optional>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "gpu/device_allocator.hpp"
#include "gpu/scoped_device_env.hpp"
#include "gpu/vulkan_context.hpp"
#include "mmsb/gpu.hpp"
#include "mmsb/mmsb.hpp"
#include "support/test_support.hpp"

namespace mmsb {
namespace {

using mmsb::testing::error_code_of;

using ScopedDeviceEnv = mmsb::testing::ScopedDeviceEnv;

constexpr const char* kNoDevice =
    "no Vulkan device was found: these tests need one (install mesa-vulkan-drivers for the lavapipe CPU driver)";

// A u64 whose eight bytes all equal 1: kAllBytes * k rewrites every byte of a value of another k.
constexpr std::uint64_t kAllBytes = 0x0101010101010101ull;

// A mirror that must run on Vulkan; the test fails (does not skip) without a device.
#define ASSERT_ON_VULKAN(gpu) ASSERT_EQ((gpu).backend(), GpuBackend::Vulkan) << kNoDevice

std::vector<std::byte> random_bytes(std::mt19937_64& rng, std::size_t n) {
  std::vector<std::byte> out(n);
  for (auto& b : out) b = static_cast<std::byte>(rng() & 0xff);
  return out;
}

std::vector<std::int32_t> random_grid(std::mt19937_64& rng, std::uint32_t w, std::uint32_t h) {
  std::uniform_int_distribution<std::int32_t> value(-(1 << 20), 1 << 20);
  std::vector<std::int32_t> g(std::size_t{w} * h);
  for (auto& v : g) v = value(rng);
  return g;
}

std::vector<std::int32_t> stencil_reference(std::vector<std::int32_t> grid, std::uint32_t w, std::uint32_t h,
                                            std::uint32_t steps) {
  std::vector<std::int32_t> next(grid.size());
  for (std::uint32_t s = 0; s < steps; ++s) {
    stencil5_step_cpu(grid.data(), next.data(), w, h);
    grid.swap(next);
  }
  return grid;
}

std::vector<std::int32_t> as_grid(const std::vector<std::byte>& bytes, std::size_t cells) {
  std::vector<std::int32_t> g(cells);
  std::memcpy(g.data(), bytes.data(), cells * 4);
  return g;
}

void commit_grid(Runtime& rt, PageId page, const std::vector<std::int32_t>& grid) {
  auto txn = rt.begin();
  txn.write(page, 0, std::as_bytes(std::span(grid)));
  txn.commit();
}

TEST(GpuDevice, AVulkanDeviceIsPresentAndChosenByDefault) {
  ScopedDeviceEnv env(nullptr);
  Runtime rt;
  Propagator prop(rt);
  GpuMirror gpu(rt, prop);
  ASSERT_ON_VULKAN(gpu);
  EXPECT_FALSE(gpu.device_name().empty());
}

// The VmFlags line of the mapping (in /proc/self/smaps) that contains `address`; empty when none does.
std::string vm_flags_of(const void* address) {
  const auto at = reinterpret_cast<std::uintptr_t>(address);
  std::ifstream smaps("/proc/self/smaps");
  std::string line;
  bool inside = false;
  while (std::getline(smaps, line)) {
    std::uintptr_t begin = 0, end = 0;
    char dash = 0;
    std::istringstream head(line);
    if (head >> std::hex >> begin >> dash >> end && dash == '-' && line.find(':') > line.find(' ')) {
      inside = begin <= at && at < end;
    } else if (inside && line.rfind("VmFlags:", 0) == 0) {
      return line;
    }
  }
  return {};
}

TEST(GpuDevice, CpuDriverBuffersAreAdvisedToUseHugePages) {
  ScopedDeviceEnv env(nullptr);
  std::string why_not;
  auto vk = gpu::VulkanContext::create("", why_not);
  ASSERT_NE(vk, nullptr) << kNoDevice << " (" << why_not << ")";
  gpu::Buffer big = vk->create_host_buffer(std::uint64_t{8} << 20);
  gpu::Buffer small = vk->create_host_buffer(std::uint64_t{64} << 10);
  // lavapipe's memory is this process's memory; a GPU's mapping is left alone. A kernel built without THP refuses.
  const bool cpu = vk->properties().deviceType == VK_PHYSICAL_DEVICE_TYPE_CPU;
  const bool thp = std::filesystem::exists("/sys/kernel/mm/transparent_hugepage/enabled");
  EXPECT_EQ(vk->advise_huge_pages(big), cpu && thp) << vk->name();
  EXPECT_FALSE(vk->advise_huge_pages(small)) << "64 KiB holds no aligned 2 MiB";
  if (cpu && thp) {
    // The advice covers the aligned 2 MiB inside the mapping: its mapping carries the "hg" (MADV_HUGEPAGE) flag.
    constexpr std::uintptr_t kHuge = std::uintptr_t{2} << 20;
    const auto aligned = (reinterpret_cast<std::uintptr_t>(big.mapped) + kHuge - 1) & ~(kHuge - 1);
    const std::string flags = vm_flags_of(reinterpret_cast<const void*>(aligned));
    EXPECT_NE(flags.find(" hg"), std::string::npos) << flags;
    // Bytes written through the mapping read back unchanged.
    std::memset(big.mapped, 0x3c, big.size);
    EXPECT_EQ(static_cast<const unsigned char*>(big.mapped)[big.size - 1], 0x3c);
  }
  vk->destroy(big);
  vk->destroy(small);
  EXPECT_EQ(vk->live_allocations(), 0u);
}

TEST(GpuDevice, EnvironmentPicksByIndexOrNameAndNoneForcesTheFallback) {
  std::string name;
  {
    ScopedDeviceEnv env("0");
    Runtime rt;
    Propagator prop(rt);
    GpuMirror gpu(rt, prop);
    ASSERT_ON_VULKAN(gpu);
    name = gpu.device_name();
  }
  {
    ScopedDeviceEnv env(name.substr(0, 4).c_str());
    Runtime rt;
    Propagator prop(rt);
    GpuMirror gpu(rt, prop);
    EXPECT_EQ(gpu.backend(), GpuBackend::Vulkan);
    EXPECT_EQ(gpu.device_name(), name);
  }
  for (const char* value : {"none", "no-such-device-xyz", "99"}) {
    ScopedDeviceEnv env(value);
    Runtime rt;
    Propagator prop(rt);
    GpuMirror gpu(rt, prop);
    EXPECT_EQ(gpu.backend(), GpuBackend::Cpu) << value;
    EXPECT_EQ(gpu.device_name(), "cpu");
  }
  {
    ScopedDeviceEnv env("none");  // GpuOptions::device wins over the environment
    Runtime rt;
    Propagator prop(rt);
    GpuOptions options;
    options.device = "0";
    GpuMirror gpu(rt, prop, options);
    EXPECT_EQ(gpu.backend(), GpuBackend::Vulkan);
  }
}

TEST(GpuDevice, OptionsOutOfRangeAreRefused) {
  Runtime rt;
  Propagator prop(rt);
  GpuOptions options;
  options.staging_slots = 0;
  EXPECT_EQ(error_code_of([&] { GpuMirror gpu(rt, prop, options); }), ErrorCode::InvalidArgument);
}

// --- the mirror -------------------------------------------------------------------------------------------------

class GpuMirrorConsistency : public ::testing::TestWithParam<UploadPath> {};

TEST_P(GpuMirrorConsistency, RandomCommitsResizesAndDeletesLeaveDeviceEqualToHost) {
  ScopedDeviceEnv env(nullptr);
  std::mt19937_64 rng(42);
  Runtime rt;
  Propagator prop(rt);
  // Pages that exist before the mirror, with data, must be uploaded whole.
  std::vector<PageId> live;
  for (int i = 0; i < 10; ++i) {
    PageId p = rt.create_page(100 + rng() % 3000, i % 2 ? Location::Both : Location::Device);
    auto txn = rt.begin();
    txn.write(p, 0, random_bytes(rng, 50));
    txn.commit();
    live.push_back(p);
  }
  PageId host_only = rt.create_page(64);
  GpuOptions options;
  options.upload = GetParam();
  options.block_bytes = 1 << 16;  // small blocks, so that pages spread over several device buffers
  GpuMirror gpu(rt, prop, options);
  ASSERT_ON_VULKAN(gpu);
  EXPECT_FALSE(gpu.is_mirrored(host_only));
  for (int i = 0; i < 30; ++i) live.push_back(rt.create_page(1 + rng() % 5000, Location::Both));

  for (int wave = 0; wave < 300; ++wave) {
    const int action = static_cast<int>(rng() % 100);
    if (action < 3 && live.size() > 5) {
      const std::size_t k = rng() % live.size();
      rt.delete_page(live[k]);
      live.erase(live.begin() + static_cast<std::ptrdiff_t>(k));
    } else if (action < 6) {
      live.push_back(rt.create_page(rng() % 4000, Location::Device));
    } else if (action < 10) {
      rt.resize_page(live[rng() % live.size()], rng() % 9000);
    } else {
      auto txn = rt.begin();
      const int pages = 1 + static_cast<int>(rng() % 4);
      for (int k = 0; k < pages; ++k) {
        PageId p = live[rng() % live.size()];
        const std::uint64_t size = rt.info(p).size;
        if (size == 0) continue;
        for (int w = 0; w < 3; ++w) {
          const std::uint64_t offset = rng() % size;
          const std::uint64_t length = 1 + rng() % std::min<std::uint64_t>(size - offset, 300);
          txn.write(p, offset, random_bytes(rng, length));
        }
      }
      txn.commit();
    }
  }
  gpu.wait_idle();
  for (PageId p : live) {
    ASSERT_TRUE(gpu.is_mirrored(p));
    ASSERT_EQ(gpu.read_device(p), rt.read_all(p)) << "page " << p.to_string();
  }
  EXPECT_EQ(gpu.stats().pages_mirrored, live.size());
  EXPECT_GT(gpu.stats().device_buffers, 1u);
}

INSTANTIATE_TEST_SUITE_P(UploadPaths, GpuMirrorConsistency,
                         ::testing::Values(UploadPath::CopyRegions, UploadPath::ScatterShader, UploadPath::DirectWrite),
                         [](const auto& test_param) {
                           switch (test_param.param) {
                             case UploadPath::CopyRegions:
                               return std::string("CopyRegions");
                             case UploadPath::ScatterShader:
                               return std::string("ScatterShader");
                             default:
                               return std::string("DirectWrite");
                           }
                         });

TEST(GpuMirror, AutoWritesDirectlyWhereDeviceMemoryIsHostVisibleAndStagingCanBeForced) {
  ScopedDeviceEnv env(nullptr);
  Runtime rt;
  Propagator prop(rt);
  GpuMirror automatic(rt, prop);
  ASSERT_ON_VULKAN(automatic);
  // lavapipe's only memory type is device-local and host-visible: the direct path is chosen.
  EXPECT_EQ(automatic.upload_path(), UploadPath::DirectWrite) << automatic.device_name();
  Runtime rt2;
  Propagator prop2(rt2);
  GpuOptions staged;
  staged.upload = UploadPath::CopyRegions;
  GpuMirror forced(rt2, prop2, staged);
  EXPECT_EQ(forced.upload_path(), UploadPath::CopyRegions);
  ScopedDeviceEnv none("none");
  Runtime rt3;
  Propagator prop3(rt3);
  GpuMirror cpu(rt3, prop3);
  EXPECT_EQ(cpu.upload_path(), UploadPath::CopyRegions);
}

TEST(GpuMirror, DirectWritesOfDeferredWavesLandInOrder) {
  ScopedDeviceEnv env(nullptr);
  Runtime rt;
  PropagatorOptions popts;
  popts.mode = PropagationMode::Deferred;  // several deltas of one page in one delivery: written in order
  Propagator prop(rt, popts);
  GpuOptions options;
  options.upload = UploadPath::DirectWrite;
  GpuMirror gpu(rt, prop, options);
  ASSERT_ON_VULKAN(gpu);
  ASSERT_EQ(gpu.upload_path(), UploadPath::DirectWrite);
  PageId p = rt.create_page(1024, Location::Device), q = rt.create_page(256, Location::Both);
  gpu.wait_idle();
  const GpuStats before = gpu.stats();
  // Every byte of each value differs from what it overwrites (commits record only changed bytes).
  mmsb::testing::commit_u64(rt, p, 0, kAllBytes * 1);
  mmsb::testing::commit_u64(rt, p, 4, kAllBytes * 2);  // overlaps the first write: the later bytes must win
  mmsb::testing::commit_u64(rt, q, 8, kAllBytes * 3);
  mmsb::testing::commit_u64(rt, p, 100, kAllBytes * 4);
  prop.propagate();
  gpu.wait_idle();
  const GpuStats after = gpu.stats();
  EXPECT_EQ(after.waves_uploaded - before.waves_uploaded, 1u);
  EXPECT_EQ(after.bytes_uploaded - before.bytes_uploaded, 32u) << "each delta written as it came, none staged";
  EXPECT_EQ(after.regions_uploaded - before.regions_uploaded, 4u);
  EXPECT_EQ(gpu.read_device(p), rt.read_all(p));
  EXPECT_EQ(gpu.read_device(q), rt.read_all(q));
}

TEST(GpuMirror, UploadsExactlyTheChangedBytesWithOneSubmitPerWave) {
  ScopedDeviceEnv env(nullptr);
  std::mt19937_64 rng(7);
  Runtime rt;
  Propagator prop(rt);
  GpuMirror gpu(rt, prop);
  ASSERT_ON_VULKAN(gpu);
  std::vector<PageId> pages;
  for (int i = 0; i < 100; ++i) pages.push_back(rt.create_page(4096, Location::Device));
  gpu.wait_idle();
  const GpuStats before = gpu.stats();
  EXPECT_EQ(before.bytes_uploaded, 0u) << "fresh pages are zero-filled on the device, not uploaded";

  std::uint64_t changed = 0, ranges = 0;
  constexpr int kWaves = 50;
  for (int wave = 0; wave < kWaves; ++wave) {
    auto txn = rt.begin();
    for (int k = 0; k < 5; ++k) {
      PageId p = pages[(wave * 5 + k) % pages.size()];  // distinct pages within a wave
      const std::uint64_t offset = rng() % 4000;
      std::vector<std::byte> bytes(1 + rng() % 90);
      for (auto& b : bytes) b = std::byte{0xA5};  // differs from what is there, so every byte written changes
      txn.write(p, offset, bytes);
    }
    txn.commit();
    for (const Delta& d : txn.committed_deltas()) {
      changed += d.changed_bytes();
      ranges += d.ranges.size();
    }
  }
  gpu.wait_idle();
  const GpuStats after = gpu.stats();
  EXPECT_EQ(after.bytes_uploaded - before.bytes_uploaded, changed);
  EXPECT_EQ(after.bytes_changed - before.bytes_changed, changed);
  EXPECT_EQ(after.regions_uploaded - before.regions_uploaded, ranges);
  EXPECT_EQ(after.waves_uploaded - before.waves_uploaded, static_cast<std::uint64_t>(kWaves));
  EXPECT_EQ(after.full_page_uploads, 0u);
  for (PageId p : pages) ASSERT_EQ(gpu.read_device(p), rt.read_all(p));
}

TEST(GpuMirror, ABatchWaveUploadsRewrittenBytesOnce) {
  ScopedDeviceEnv env(nullptr);
  Runtime rt;
  PropagatorOptions popts;
  popts.mode = PropagationMode::Batch;
  Propagator prop(rt, popts);
  GpuMirror gpu(rt, prop);
  ASSERT_ON_VULKAN(gpu);
  PageId p = rt.create_page(1024, Location::Both);
  gpu.wait_idle();
  const GpuStats before = gpu.stats();
  for (std::uint64_t v = 1; v <= 10; ++v) mmsb::testing::commit_u64(rt, p, 64, kAllBytes * v);  // same 8 bytes
  mmsb::testing::commit_u64(rt, p, 512, kAllBytes * 99);
  prop.propagate();
  gpu.wait_idle();
  EXPECT_EQ(gpu.stats().waves_uploaded - before.waves_uploaded, 1u);
  EXPECT_EQ(gpu.stats().bytes_uploaded - before.bytes_uploaded, 16u);
  EXPECT_EQ(gpu.read_device(p), rt.read_all(p));
}

TEST(GpuMirror, SeveralDeferredWavesOfOnePageAreComposedIntoOneUpload) {
  ScopedDeviceEnv env(nullptr);
  Runtime rt;
  PropagatorOptions popts;
  popts.mode = PropagationMode::Deferred;  // one wave per commit, all delivered to observers after the last
  Propagator prop(rt, popts);
  GpuOptions staged;
  staged.upload = UploadPath::CopyRegions;  // the staging path composes; DirectWrite writes in order (below)
  GpuMirror gpu(rt, prop, staged);
  ASSERT_ON_VULKAN(gpu);
  PageId p = rt.create_page(1024, Location::Device), q = rt.create_page(256, Location::Device);
  gpu.wait_idle();
  const GpuStats before = gpu.stats();
  mmsb::testing::commit_u64(rt, p, 0, kAllBytes * 1);
  mmsb::testing::commit_u64(rt, p, 4, kAllBytes * 2);  // overlaps the first write
  mmsb::testing::commit_u64(rt, q, 8, kAllBytes * 3);
  mmsb::testing::commit_u64(rt, p, 100, kAllBytes * 4);
  prop.propagate();
  gpu.wait_idle();
  const GpuStats after = gpu.stats();
  EXPECT_EQ(after.waves_uploaded - before.waves_uploaded, 1u);
  EXPECT_EQ(after.bytes_uploaded - before.bytes_uploaded, 12u + 8u + 8u) << "bytes 0-11 of p once, q, p at 100";
  EXPECT_EQ(gpu.read_device(p), rt.read_all(p));
  EXPECT_EQ(gpu.read_device(q), rt.read_all(q));
}

TEST(GpuMirror, ConcurrentCommittersKeepTheDeviceEqualToTheHost) {
  ScopedDeviceEnv env(nullptr);
  Runtime rt;
  Propagator prop(rt);  // IMMEDIATE: each committer delivers its own waves, so deliveries may overtake each other
  GpuMirror gpu(rt, prop);
  ASSERT_ON_VULKAN(gpu);
  std::vector<PageId> pages;
  for (int i = 0; i < 8; ++i) pages.push_back(rt.create_page(512, Location::Both));
  std::vector<std::thread> threads;
  for (unsigned t = 0; t < 4; ++t) {
    threads.emplace_back([&rt, &pages, t] {
      std::mt19937_64 rng(t);
      for (int i = 0; i < 400; ++i) {
        auto txn = rt.begin();
        txn.write_value<std::uint64_t>(pages[rng() % pages.size()], (rng() % 64) * 8, rng());
        txn.commit();
      }
    });
  }
  for (auto& th : threads) th.join();
  gpu.wait_idle();
  for (PageId p : pages) ASSERT_EQ(gpu.read_device(p), rt.read_all(p)) << "page " << p.to_string();
}

TEST(GpuMirror, ScatterShaderMergesRangesThatShareAWord) {
  ScopedDeviceEnv env(nullptr);
  Runtime rt;
  Propagator prop(rt);
  GpuOptions options;
  options.upload = UploadPath::ScatterShader;
  GpuMirror gpu(rt, prop, options);
  ASSERT_ON_VULKAN(gpu);
  PageId p = rt.create_page(64, Location::Device);
  std::vector<std::byte> all(64, std::byte{0x11});
  {
    auto txn = rt.begin();
    txn.write(p, 0, all);
    txn.commit();
  }
  // Single bytes and short runs, unaligned, several in one 32-bit word: only masked bytes may change.
  for (std::uint64_t offset : {1u, 3u, 9u, 14u, 33u, 62u}) {
    auto txn = rt.begin();
    txn.write_value<std::uint8_t>(p, offset, static_cast<std::uint8_t>(0xA0 + offset));
    txn.write_value<std::uint8_t>(p, offset - 1 == 0 ? 5 : offset - 1, 0x77);
    txn.commit();
    ASSERT_EQ(gpu.read_device(p), rt.read_all(p)) << "after the write at " << offset;
  }
  auto txn = rt.begin();
  txn.write(p, 5, std::vector<std::byte>(7, std::byte{0x5c}));  // bytes 5..11: two partial words and a whole one
  txn.write(p, 13, std::vector<std::byte>(2, std::byte{0x6d}));
  txn.commit();
  EXPECT_EQ(gpu.read_device(p), rt.read_all(p));
}

TEST(GpuMirror, DeletedPagesGiveTheirDeviceMemoryBack) {
  ScopedDeviceEnv env(nullptr);
  Runtime rt;
  Propagator prop(rt);
  GpuOptions options;
  options.block_bytes = 1 << 20;
  GpuMirror gpu(rt, prop, options);
  ASSERT_ON_VULKAN(gpu);
  for (int round = 0; round < 20; ++round) {
    std::vector<PageId> pages;
    for (int i = 0; i < 100; ++i) pages.push_back(rt.create_page(4096, Location::Device));  // 400 KiB per round
    ASSERT_EQ(gpu.stats().device_buffers, 1u) << "one 1 MiB buffer serves every round when regions are reused";
    for (PageId p : pages) rt.delete_page(p);
    ASSERT_EQ(gpu.stats().device_buffers, 0u) << "the empty buffer went back to the driver";
  }
  EXPECT_EQ(gpu.stats().pages_mirrored, 0u);
  EXPECT_EQ(error_code_of([&] { gpu.read_device(PageId()); }), ErrorCode::NotFound);
}

TEST(GpuMirror, EmptyDeviceBuffersAreFreedAndLiveAllocationsCounted) {
  ScopedDeviceEnv env(nullptr);
  for (UploadPath path : {UploadPath::CopyRegions, UploadPath::DirectWrite}) {
    Runtime rt;
    Propagator prop(rt);
    GpuOptions options;
    options.block_bytes = 1 << 16;
    options.upload = path;
    GpuMirror gpu(rt, prop, options);
    ASSERT_ON_VULKAN(gpu);
    const std::uint64_t base = gpu.stats().device_memory_allocations;  // staging and readback buffers, if any
    std::vector<PageId> pages;
    for (int i = 0; i < 6; ++i) pages.push_back(rt.create_page(40 << 10, Location::Both));  // one 64 KiB block each
    mmsb::testing::commit_u64(rt, pages[0], 0, 7);
    gpu.wait_idle();
    GpuStats s = gpu.stats();
    EXPECT_EQ(s.device_buffers, 6u);
    const std::uint64_t with_pages = s.device_memory_allocations;
    EXPECT_GE(with_pages, base + 6);
    // Deleting four pages frees four buffers; the two left keep theirs and their bytes.
    for (int i = 2; i < 6; ++i) rt.delete_page(pages[static_cast<std::size_t>(i)]);
    s = gpu.stats();
    EXPECT_EQ(s.device_buffers, 2u);
    EXPECT_EQ(s.device_memory_allocations, with_pages - 4);
    EXPECT_EQ(gpu.read_device(pages[0]), rt.read_all(pages[0]));
    // A new page reuses a freed slot (one new allocation), and the device copy follows the host.
    PageId fresh = rt.create_page(40 << 10, Location::Both);
    mmsb::testing::commit_u64(rt, fresh, 128, 99);
    EXPECT_EQ(gpu.stats().device_buffers, 3u);
    EXPECT_EQ(gpu.read_device(fresh), rt.read_all(fresh));
    const std::uint64_t before_last = gpu.stats().device_memory_allocations;  // read_device added a readback
    rt.delete_page(pages[0]);
    rt.delete_page(pages[1]);
    rt.delete_page(fresh);
    EXPECT_EQ(gpu.stats().device_buffers, 0u);
    EXPECT_EQ(gpu.stats().device_memory_allocations, before_last - 3);
  }
}

TEST(GpuMirror, ManyMirrorsComeAndGoCleanly) {
  ScopedDeviceEnv env(nullptr);
  for (int i = 0; i < 3; ++i) {
    Runtime rt;
    Propagator prop(rt);
    PageId in = rt.create_page(16 * 16 * 4, Location::Both), out = rt.create_page(16 * 16 * 4, Location::Both);
    GpuMirror gpu(rt, prop);
    ASSERT_ON_VULKAN(gpu);
    gpu.derive_stencil5(out, in, {16, 16, 2});
    mmsb::testing::commit_u64(rt, in, 17 * 4, 1000);
    EXPECT_EQ(prop.node_count(), 1u);
    // Leaves with an upload possibly in flight; the destructor waits for it, removes its node, frees memory.
    mmsb::testing::commit_u64(rt, in, 40, 5);
  }
}

// --- device nodes -----------------------------------------------------------------------------------------------

struct StencilRun {
  std::vector<std::int32_t> both_output;    // host bytes of a Location::Both output, after each phase
  std::vector<std::int32_t> device_only;    // device bytes of a Location::Device output
  std::vector<std::int32_t> chained;        // a node reading the device-only output
  std::vector<std::int32_t> host_follower;  // a host map node downstream of the Both output
  std::vector<std::int32_t> expected_both, expected_device_only, expected_chained;
  GpuStats stats;
  std::vector<std::byte> device_only_host_bytes;
};

// Runs the same stencil graph under whatever backend MMSB_VULKAN_DEVICE gives.
StencilRun run_stencil_graph(GpuBackend expected_backend) {
  constexpr std::uint32_t W = 37, H = 29;
  constexpr std::uint64_t kBytes = std::uint64_t{W} * H * 4;
  std::mt19937_64 rng(3);
  Runtime rt;
  Propagator prop(rt);
  GpuMirror gpu(rt, prop);
  EXPECT_EQ(gpu.backend(), expected_backend) << (expected_backend == GpuBackend::Vulkan ? kNoDevice : "");
  PageId grid = rt.create_page(kBytes, Location::Both);
  PageId both = rt.create_page(kBytes + 100, Location::Both);  // larger than the grid: the tail is left alone
  PageId device_only = rt.create_page(kBytes, Location::Device);
  PageId chained = rt.create_page(kBytes, Location::Both);
  PageId follower = rt.create_page(8, Location::Host);
  gpu.derive_stencil5(both, grid, {W, H, 1});
  gpu.derive_stencil5(device_only, grid, {W, H, 3});
  gpu.derive_stencil5(chained, device_only, {W, H, 2});
  prop.derive_map(follower, {both}, [](MapContext& c) {
    std::int64_t sum = 0;
    for (std::size_t i = 0; i < W * H; ++i) sum += c.input_as<std::int32_t>(0, i * 4);
    c.output_as<std::int64_t>() = sum;
  });

  StencilRun run;
  auto g = random_grid(rng, W, H);
  commit_grid(rt, grid, g);
  // A sparse edit: a few cells change; the node output must follow.
  for (int k = 0; k < 5; ++k) {
    const std::uint32_t cell = static_cast<std::uint32_t>(rng() % (W * H));
    g[cell] = static_cast<std::int32_t>(rng() % 100000);
    mmsb::testing::commit_value<std::int32_t>(rt, grid, cell * 4, g[cell]);
  }
  run.expected_both = stencil_reference(g, W, H, 1);
  run.expected_device_only = stencil_reference(g, W, H, 3);
  run.expected_chained = stencil_reference(run.expected_device_only, W, H, 2);
  run.both_output = as_grid(rt.read_all(both), W * H);
  EXPECT_EQ(as_grid(gpu.read_device(both), W * H), run.both_output);
  run.device_only = as_grid(gpu.read_device(device_only), W * H);
  run.device_only_host_bytes = rt.read_all(device_only);
  run.chained = as_grid(rt.read_all(chained), W * H);
  run.host_follower = {static_cast<std::int32_t>(rt.read_value<std::int64_t>(follower, 0))};
  std::int64_t sum = 0;
  for (auto v : run.expected_both) sum += v;
  EXPECT_EQ(rt.read_value<std::int64_t>(follower, 0), sum) << "the host node downstream saw the device result";
  const auto tail = rt.read_all(both);
  for (std::uint64_t i = kBytes; i < tail.size(); ++i) EXPECT_EQ(tail[i], std::byte{0});
  run.stats = gpu.stats();
  return run;
}

TEST(GpuNodes, StencilOnTheDeviceEqualsTheCpuKernelBitForBit) {
  ScopedDeviceEnv env(nullptr);
  StencilRun run = run_stencil_graph(GpuBackend::Vulkan);
  EXPECT_EQ(run.both_output, run.expected_both);
  EXPECT_EQ(run.chained, run.expected_chained);
  EXPECT_GT(run.stats.dispatches, 0u);
  EXPECT_GT(run.stats.bytes_read_back, 0u);
}

TEST(GpuNodes, DeviceOnlyOutputsStayOnTheDevice) {
  ScopedDeviceEnv env(nullptr);
  StencilRun run = run_stencil_graph(GpuBackend::Vulkan);
  // The device copy holds three steps of the input; the host copy was never written, nothing was read back for it.
  EXPECT_EQ(run.device_only, run.expected_device_only);
  std::vector<std::byte> zeros(run.device_only_host_bytes.size());
  EXPECT_EQ(run.device_only_host_bytes, zeros);
  // The chained node read the device-only page on the device and equals five CPU steps in total.
  EXPECT_EQ(run.chained, run.expected_chained);
}

TEST(GpuNodes, TheCpuFallbackGivesTheSameResults) {
  StencilRun device, cpu;
  {
    ScopedDeviceEnv env(nullptr);
    device = run_stencil_graph(GpuBackend::Vulkan);
  }
  {
    ScopedDeviceEnv env("none");
    cpu = run_stencil_graph(GpuBackend::Cpu);
  }
  EXPECT_EQ(cpu.both_output, cpu.expected_both);
  EXPECT_EQ(cpu.device_only, cpu.expected_device_only);
  EXPECT_EQ(cpu.both_output, device.both_output);
  EXPECT_EQ(cpu.device_only, device.device_only);
  EXPECT_EQ(cpu.chained, device.chained);
  EXPECT_EQ(cpu.host_follower, device.host_follower);
  EXPECT_EQ(cpu.stats.dispatches, 0u);
  EXPECT_EQ(cpu.stats.bytes_uploaded, 0u);
}

TEST(GpuNodes, ManyStepsAndDeferredWavesStayExact) {
  ScopedDeviceEnv env(nullptr);
  constexpr std::uint32_t W = 19, H = 23;
  std::mt19937_64 rng(11);
  Runtime rt;
  PropagatorOptions popts;
  popts.mode = PropagationMode::Deferred;  // several waves per propagate(): observers see them only at the end
  Propagator prop(rt, popts);
  GpuMirror gpu(rt, prop);
  ASSERT_ON_VULKAN(gpu);
  PageId grid = rt.create_page(W * H * 4, Location::Both), out = rt.create_page(W * H * 4, Location::Both);
  gpu.derive_stencil5(out, grid, {W, H, 301});
  auto g = random_grid(rng, W, H);
  commit_grid(rt, grid, g);
  for (int k = 0; k < 6; ++k) {
    const std::uint32_t cell = static_cast<std::uint32_t>(rng() % (W * H));
    g[cell] = static_cast<std::int32_t>(rng() % 1000);
    mmsb::testing::commit_value<std::int32_t>(rt, grid, cell * 4, g[cell]);
  }
  prop.propagate();
  EXPECT_EQ(as_grid(rt.read_all(out), W * H), stencil_reference(g, W, H, 301));
  EXPECT_EQ(gpu.read_device(grid), rt.read_all(grid));
  EXPECT_EQ(gpu.read_device(out), rt.read_all(out));
}

TEST(GpuNodes, HostPagesAndWrongSizesAreRefused) {
  ScopedDeviceEnv env(nullptr);
  Runtime rt;
  Propagator prop(rt);
  GpuMirror gpu(rt, prop);
  PageId host = rt.create_page(64), dev = rt.create_page(64, Location::Device),
         small = rt.create_page(8, Location::Device);
  EXPECT_EQ(error_code_of([&] { gpu.derive_stencil5(dev, host, {4, 4, 1}); }), ErrorCode::InvalidArgument);
  EXPECT_EQ(error_code_of([&] { gpu.derive_stencil5(small, dev, {4, 4, 1}); }), ErrorCode::InvalidArgument);
  EXPECT_EQ(error_code_of([&] { gpu.derive_stencil5(small, dev, {0, 4, 1}); }), ErrorCode::InvalidArgument);
  EXPECT_EQ(prop.node_count(), 0u);
}

// --- the sub-allocator ------------------------------------------------------------------------------------------

TEST(RangeAllocator, FreedNeighboursCoalesceSoALargeRegionFitsAgain) {
  gpu::RangeAllocator a(4096, 256);
  auto x = a.allocate(1000), y = a.allocate(1000), z = a.allocate(1000);
  ASSERT_TRUE(x && y && z);
  EXPECT_EQ(*x % 256, 0u);
  EXPECT_EQ(*y % 256, 0u);
  EXPECT_FALSE(a.allocate(2000)) << "only 1024 bytes are left";
  a.free(*x, 1000);
  a.free(*z, 1000);
  a.free(*y, 1000);
  EXPECT_EQ(a.used(), 0u);
  EXPECT_EQ(a.free_list_length(), 1u);
  EXPECT_TRUE(a.allocate(4096));
}

}  // namespace
}  // namespace mmsb
