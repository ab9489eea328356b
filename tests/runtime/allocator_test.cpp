#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <mutex>
#include <random>
#include <thread>
#include <vector>

#include "runtime/page_allocator.hpp"

namespace mmsb::detail {
namespace {

PageAllocator& alloc() { return PageAllocator::global(); }

bool all_zero(const std::byte* p, std::size_t n) {
  return std::all_of(p, p + n, [](std::byte b) { return b == std::byte{0}; });
}

TEST(PageAllocator, CapacitiesCoverRequestAndKeepAlignment) {
  for (std::size_t bytes : {1ul, 63ul, 64ul, 65ul, 1000ul, 1025ul, 4095ul, 4096ul, 4097ul, 20000ul, 65536ul, 65537ul,
                            1000000ul, 1048576ul, 1048577ul, 3000000ul}) {
    std::size_t cap = PageAllocator::capacity_for(bytes);
    EXPECT_GE(cap, bytes);
    EXPECT_EQ(cap % 64, 0u) << bytes;
    if (bytes >= 4096) {
      EXPECT_EQ(cap % 4096, 0u) << bytes;
    }
    // Internal fragmentation stays bounded: at most 25% above 4 KiB (four classes per doubling).
    if (bytes > 16384) {
      EXPECT_LE(cap, bytes + bytes / 4 + 4096) << bytes;
    }
  }
}

TEST(PageAllocator, BlocksAreAlignedDistinctAndWritable) {
  std::vector<Block> blocks;
  for (std::size_t bytes : {64ul, 100ul, 4096ul, 5000ul, 70000ul, 2ul << 20}) {
    for (int i = 0; i < 8; ++i) {
      Block b = alloc().allocate(bytes, Zeroing::Uninitialized);
      ASSERT_NE(b.data, nullptr);
      EXPECT_EQ(reinterpret_cast<std::uintptr_t>(b.data) % PageAllocator::kAlignment, 0u);
      if (bytes >= 4096) {
        EXPECT_EQ(reinterpret_cast<std::uintptr_t>(b.data) % 4096, 0u);
      }
      std::memset(b.data, i + 1, b.capacity);
      blocks.push_back(b);
    }
  }
  std::vector<std::byte*> starts;
  for (const Block& b : blocks) starts.push_back(b.data);
  std::sort(starts.begin(), starts.end());
  EXPECT_EQ(std::adjacent_find(starts.begin(), starts.end()), starts.end());
  for (const Block& b : blocks) alloc().deallocate(b.data, b.capacity);
}

TEST(PageAllocator, ZeroedRequestReadsZeroEvenWhenRecycled) {
  for (std::size_t bytes : {64ul, 4096ul, 300000ul}) {
    std::vector<Block> dirty;
    for (int i = 0; i < 200; ++i) {
      Block b = alloc().allocate(bytes, Zeroing::Uninitialized);
      std::memset(b.data, 0xAB, b.capacity);
      dirty.push_back(b);
    }
    for (const Block& b : dirty) alloc().deallocate(b.data, b.capacity);
    for (int i = 0; i < 200; ++i) {
      Block b = alloc().allocate(bytes, Zeroing::Zeroed);
      ASSERT_TRUE(all_zero(b.data, b.capacity)) << "size " << bytes << " block " << i;
      dirty[static_cast<std::size_t>(i)] = b;
    }
    for (const Block& b : dirty) alloc().deallocate(b.data, b.capacity);
  }
}

TEST(PageAllocator, LargeBlocksAreMappedAndUnmappedDirectly) {
  AllocatorStats before = alloc().stats();
  Block b = alloc().allocate(3u << 20, Zeroing::Zeroed);
  EXPECT_TRUE(all_zero(b.data, b.capacity));
  AllocatorStats during = alloc().stats();
  EXPECT_EQ(during.large_allocations, before.large_allocations + 1);
  EXPECT_GE(during.bytes_mapped, before.bytes_mapped + b.capacity);
  alloc().deallocate(b.data, b.capacity);
  EXPECT_EQ(alloc().stats().large_allocations, before.large_allocations);
}

TEST(PageAllocator, TopologyHasAtLeastOneArena) { EXPECT_GE(alloc().stats().numa_nodes, 1u); }

TEST(PageAllocator, ExceedingTheBudgetReturnsFreeMemoryToTheOs) {
  const std::uint64_t old_budget = alloc().cache_budget();
  alloc().set_cache_budget(0);
  std::vector<Block> blocks;
  for (int i = 0; i < 64; ++i) {
    Block b = alloc().allocate(64 * 1024, Zeroing::Uninitialized);
    std::memset(b.data, 0x5A, b.capacity);
    blocks.push_back(b);
  }
  AllocatorStats before = alloc().stats();
  for (const Block& b : blocks) alloc().deallocate(b.data, b.capacity);
  alloc().flush_thread_cache();
  AllocatorStats after = alloc().stats();
  // The freed page-sized blocks were madvised away: they now count as clean, not as cached dirty memory.
  EXPECT_GE(after.bytes_cached_clean, before.bytes_cached_clean + 32 * 64 * 1024);
  // Released blocks come back zeroed without a memset.
  for (Block& b : blocks) {
    b = alloc().allocate(64 * 1024, Zeroing::Zeroed);
    ASSERT_TRUE(all_zero(b.data, b.capacity));
  }
  for (const Block& b : blocks) alloc().deallocate(b.data, b.capacity);
  alloc().set_cache_budget(old_budget);
}

// Several threads allocate, fill each block with a tag, hand half of them to other threads to free, and check
// the tag before every free: overlapping blocks or cross-thread frees gone wrong show up as a torn tag.
TEST(PageAllocator, StressFromSeveralThreadsWithCrossThreadFrees) {
  constexpr int kThreads = 4;
  constexpr int kOpsPerThread = 20000;
  std::mutex exchange_mutex;
  std::vector<std::pair<Block, std::uint8_t>> exchange;
  std::atomic<int> torn{0};
  auto check_and_free = [&](const Block& b, std::uint8_t tag) {
    for (std::size_t i = 0; i < b.capacity; i += 61) {
      if (b.data[i] != std::byte{tag}) {
        torn.fetch_add(1);
        break;
      }
    }
    alloc().deallocate(b.data, b.capacity);
  };
  auto worker = [&](int seed) {
    std::mt19937 rng(static_cast<unsigned>(seed));
    std::vector<std::pair<Block, std::uint8_t>> live;
    const std::size_t sizes[] = {64, 200, 1024, 4096, 9000, 65536, 200000};
    for (int op = 0; op < kOpsPerThread; ++op) {
      if (live.size() < 64 && (rng() % 3 != 0 || live.empty())) {
        std::size_t bytes = sizes[rng() % std::size(sizes)];
        Block b = alloc().allocate(bytes, rng() % 2 ? Zeroing::Zeroed : Zeroing::Uninitialized);
        auto tag = static_cast<std::uint8_t>(rng() % 255 + 1);
        std::memset(b.data, tag, b.capacity);
        live.emplace_back(b, tag);
      } else {
        std::size_t k = rng() % live.size();
        auto item = live[k];
        live[k] = live.back();
        live.pop_back();
        if (rng() % 2) {
          std::lock_guard lock(exchange_mutex);
          exchange.push_back(item);
        } else {
          check_and_free(item.first, item.second);
        }
      }
      if (op % 64 == 0) {
        std::vector<std::pair<Block, std::uint8_t>> mine;
        {
          std::lock_guard lock(exchange_mutex);
          mine.swap(exchange);
        }
        for (auto& [b, tag] : mine) check_and_free(b, tag);
      }
    }
    for (auto& [b, tag] : live) check_and_free(b, tag);
  };
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) threads.emplace_back(worker, t + 1);
  for (auto& t : threads) t.join();
  for (auto& [b, tag] : exchange) check_and_free(b, tag);
  EXPECT_EQ(torn.load(), 0);
}

}  // namespace
}  // namespace mmsb::detail
