// delta/heap_bytes.hpp — what a Delta keeps on the heap (internal to mmsb).
#pragma once

#include <cstddef>

#include "mmsb/delta.hpp"

namespace mmsb::detail {

// The capacity of a delta's vectors and strings, in bytes: what a delta kept for reuse holds besides itself.
inline std::size_t heap_bytes(const Delta& d) noexcept {
  return d.ranges.capacity() * sizeof(ByteRange) + d.payload.capacity() + d.undo.capacity() + d.undo_tail.capacity() +
         d.intent.capacity();
}

}  // namespace mmsb::detail
