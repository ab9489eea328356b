#include "gpu/device_allocator.hpp"

#include <cassert>
#include <iterator>

namespace mmsb::gpu {

RangeAllocator::RangeAllocator(std::uint64_t capacity, std::uint64_t granule)
    : capacity_(capacity), granule_(granule == 0 ? 1 : granule) {
  if (capacity_ > 0) free_.emplace(0, capacity_);
}

std::uint64_t RangeAllocator::rounded(std::uint64_t size) const noexcept {
  const std::uint64_t at_least_one = size == 0 ? 1 : size;  // a zero-byte page still gets a distinct region
  return (at_least_one + granule_ - 1) / granule_ * granule_;
}

std::optional<std::uint64_t> RangeAllocator::allocate(std::uint64_t size) {
  const std::uint64_t need = rounded(size);
  for (auto it = free_.begin(); it != free_.end(); ++it) {
    if (it->second < need) continue;
    const std::uint64_t offset = it->first;
    const std::uint64_t rest = it->second - need;
    free_.erase(it);
    if (rest > 0) free_.emplace(offset + need, rest);
    used_ += need;
    return offset;
  }
  return std::nullopt;
}

void RangeAllocator::free(std::uint64_t offset, std::uint64_t size) {
  std::uint64_t length = rounded(size);
  assert(offset + length <= capacity_ && used_ >= length);
  used_ -= length;
  auto next = free_.lower_bound(offset);
  if (next != free_.end() && offset + length == next->first) {  // merge with the following free region
    length += next->second;
    next = free_.erase(next);
  }
  if (next != free_.begin()) {
    auto prev = std::prev(next);
    if (prev->first + prev->second == offset) {  // merge into the preceding free region
      prev->second += length;
      return;
    }
  }
  free_.emplace(offset, length);
}

}  // namespace mmsb::gpu
