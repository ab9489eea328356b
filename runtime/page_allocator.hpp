// runtime/page_allocator.hpp — the pooled allocator behind page bytes (internal to mmsb).
//
// Page sizes are rounded up to a size class (multiples of 64 B up to 1 KiB, then four classes per doubling up to
// 1 MiB; classes from 4 KiB on are multiples of 4 KiB so their blocks are OS-page aligned). Allocation first pops
// the calling thread's cache (no atomics), then refills a batch from the arena's Boost.Lockfree free list, then
// carves a new slab. Each NUMA node has an arena; a thread uses the arena of the node it first allocated on, and
// slabs are bound to that node through hwloc when the machine has more than one.
//
// Lazy zeroing: memory fresh from the OS is already zero, recycled memory is not. Every block carries that
// knowledge (clean or dirty), so allocate(…, Zeroing::Zeroed) memsets only recycled blocks.
//
// Budget: when the bytes parked in the shared free lists exceed the cache budget, free blocks of OS-page
// multiples are handed back with madvise(MADV_DONTNEED) (they stay mapped and come back clean). Blocks above
// 1 MiB are mapped and unmapped directly.
//
// Thread-safety: all members are safe to call from any thread. A block may be freed by a thread other than the
// one that allocated it. The allocator is a process-wide singleton that lives until exit.
#pragma once

#include <cstddef>
#include <cstdint>

namespace mmsb::detail {

struct AllocatorStats {
  std::uint64_t bytes_mapped = 0;         // virtual memory obtained from the OS (slabs + large blocks)
  std::uint64_t bytes_in_use = 0;         // capacity of blocks currently handed out
  std::uint64_t bytes_cached_shared = 0;  // capacity of blocks parked in the shared free lists (dirty)
  std::uint64_t bytes_cached_clean = 0;   // capacity of free shared blocks known to read as zero (fresh or madvised)
  std::uint64_t numa_nodes = 0;           // arenas (one per NUMA node)
  std::uint64_t large_allocations = 0;    // live blocks above the largest size class
};

enum class Zeroing : std::uint8_t { Uninitialized, Zeroed };

struct Block {
  std::byte* data = nullptr;
  std::size_t capacity = 0;  // >= the requested size; pass it back to deallocate()
};

class PageAllocator {
 public:
  static constexpr std::size_t kAlignment = 64;
  static constexpr std::size_t kMaxClassSize = std::size_t{1} << 20;

  // The process-wide instance (created on first use, never destroyed).
  static PageAllocator& global();

  // Returns a 64-byte aligned block of at least `bytes` (> 0). Throws Error(ResourceExhausted) when the OS
  // refuses memory. Blocks of 4 KiB and more are 4 KiB aligned.
  Block allocate(std::size_t bytes, Zeroing zeroing);
  // Returns a block obtained from allocate(); `capacity` must be the block's capacity. Never throws.
  void deallocate(std::byte* data, std::size_t capacity) noexcept;

  // Bytes allowed in the shared free lists before memory is handed back to the OS. Default 256 MiB.
  void set_cache_budget(std::uint64_t bytes) noexcept;
  std::uint64_t cache_budget() const noexcept;
  // Returns as much shared free memory to the OS as possible now.
  void trim() noexcept;
  // Moves the calling thread's cached blocks to the shared lists (also done when a thread exits).
  void flush_thread_cache() noexcept;

  AllocatorStats stats() const noexcept;

  // The capacity a request of `bytes` gets (its size class, or the OS-page-rounded size above the classes).
  static std::size_t capacity_for(std::size_t bytes) noexcept;

  PageAllocator(const PageAllocator&) = delete;
  PageAllocator& operator=(const PageAllocator&) = delete;

  struct Impl;  // opaque; defined in page_allocator.cpp

 private:
  PageAllocator();
  ~PageAllocator() = default;
  Impl* impl_;
};

}  // namespace mmsb::detail
