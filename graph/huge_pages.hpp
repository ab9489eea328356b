// graph/huge_pages.hpp — memory for the engine's large arrays on transparent huge pages (internal to mmsb).
//
// Why: a wave from one changed page in a graph of 10^6 pages reaches a few nodes, each in memory nobody touched
// lately, and pays each dependent miss in full. With 4 KiB pages nearly every such miss is also a TLB miss, and on a
// virtual machine the page walk behind it (nested page tables) costs about as much again as the miss itself. Arrays
// of several MiB (slots, nodes, plan steps, input ids) are therefore mapped 2 MiB-aligned and advised for huge pages
// (MADV_HUGEPAGE; the kernel's "madvise" setting honours it, "never" ignores it and nothing changes). Small arrays
// keep the ordinary allocator: a huge page would make 2 MiB resident for a graph of a few nodes.
//
// Thread-safety: the functions are thread-safe (mmap/munmap); an allocator object has no state.
#pragma once

#include <sys/mman.h>

#include <cstddef>
#include <cstdint>
#include <new>
#include <vector>

namespace mmsb::detail {

inline constexpr std::size_t kHugePageBytes = std::size_t{2} << 20;
// Arrays from this size on are mapped for huge pages (below it the last, partly used huge page would be a
// noticeable share of the array).
inline constexpr std::size_t kHugeArrayBytes = kHugePageBytes;

// `bytes` (a multiple of kHugePageBytes) of zeroed memory aligned to kHugePageBytes, advised for huge pages.
// Throws std::bad_alloc when the OS refuses.
inline void* map_huge(std::size_t bytes) {
  const std::size_t padded = bytes + kHugePageBytes;
  void* memory = ::mmap(nullptr, padded, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (memory == MAP_FAILED) throw std::bad_alloc();
  const auto start = reinterpret_cast<std::uintptr_t>(memory);
  const std::uintptr_t aligned = (start + kHugePageBytes - 1) & ~(kHugePageBytes - 1);
  if (aligned > start) ::munmap(memory, aligned - start);
  if (const std::size_t tail = start + padded - (aligned + bytes); tail > 0)
    ::munmap(reinterpret_cast<void*>(aligned + bytes), tail);
  ::madvise(reinterpret_cast<void*>(aligned), bytes, MADV_HUGEPAGE);  // advice only: a refusal changes nothing
  return reinterpret_cast<void*>(aligned);
}

inline void unmap_huge(void* memory, std::size_t bytes) noexcept { ::munmap(memory, bytes); }

inline std::size_t huge_round_up(std::size_t bytes) noexcept {
  return (bytes + kHugePageBytes - 1) & ~(kHugePageBytes - 1);
}

// A std::allocator for vectors that may grow large (plan steps, input ids): kHugeArrayBytes and above come from
// map_huge(), the rest from operator new.
template <class T>
struct HugePageAllocator {
  using value_type = T;
  HugePageAllocator() noexcept = default;
  template <class U>
  HugePageAllocator(const HugePageAllocator<U>&) noexcept {}
  T* allocate(std::size_t n) {
    const std::size_t bytes = n * sizeof(T);
    if (bytes < kHugeArrayBytes) return static_cast<T*>(::operator new(bytes));
    return static_cast<T*>(map_huge(huge_round_up(bytes)));
  }
  void deallocate(T* p, std::size_t n) noexcept {
    const std::size_t bytes = n * sizeof(T);
    if (bytes < kHugeArrayBytes) {
      ::operator delete(p);
    } else {
      unmap_huge(p, huge_round_up(bytes));
    }
  }
  template <class U>
  bool operator==(const HugePageAllocator<U>&) const noexcept {
    return true;
  }
};

template <class T>
using HugeVector = std::vector<T, HugePageAllocator<T>>;

}  // namespace mmsb::detail
