// gpu/device_allocator.hpp — carves page regions out of a few large device buffers (internal).
//
// Pages are small and many; a VkDeviceMemory per page would hit the driver's allocation limit (often 4096) and
// cost a kernel call each. RangeAllocator manages the offsets of one buffer: first fit over an offset-ordered free
// list, coalescing neighbours on free. Sizes are rounded up to the granule (the device's storage-buffer offset
// alignment), so every region can be bound as a storage buffer. GpuMirror keeps one RangeAllocator per buffer.
//
// Thread-safety: none; the owner serializes access.
#pragma once

#include <cstdint>
#include <map>
#include <optional>

namespace mmsb::gpu {

class RangeAllocator {
 public:
  RangeAllocator(std::uint64_t capacity, std::uint64_t granule);

  // The offset of a free region of at least `size` bytes (granule-aligned), or nullopt when none fits.
  std::optional<std::uint64_t> allocate(std::uint64_t size);
  // Returns a region from allocate() with the same size.
  void free(std::uint64_t offset, std::uint64_t size);

  std::uint64_t capacity() const noexcept { return capacity_; }
  std::uint64_t used() const noexcept { return used_; }
  std::uint64_t rounded(std::uint64_t size) const noexcept;
  std::size_t free_list_length() const noexcept { return free_.size(); }

 private:
  std::uint64_t capacity_;
  std::uint64_t granule_;
  std::uint64_t used_ = 0;
  std::map<std::uint64_t, std::uint64_t> free_;  // offset -> length, disjoint and never adjacent
};

}  // namespace mmsb::gpu
