#include <algorithm>
#include <cstring>
#include <numeric>
#include <string>

#include "mmsb/delta.hpp"
#include "mmsb/error.hpp"

namespace mmsb {

void DeltaBuilder::write(std::uint64_t offset, std::span<const std::byte> bytes) {
  if (bytes.empty()) return;
  if (offset > page_size_ || page_size_ - offset < bytes.size()) {
    throw Error(ErrorCode::InvalidArgument, "DeltaBuilder: a write of [" + std::to_string(offset) + ", " +
                                                std::to_string(offset + bytes.size()) + ") does not fit a page of " +
                                                std::to_string(page_size_) + " bytes");
  }
  writes_.push_back(Write{offset, bytes.size(), bytes_.size()});
  bytes_.insert(bytes_.end(), bytes.begin(), bytes.end());
}

void DeltaBuilder::clear() noexcept {
  writes_.clear();
  bytes_.clear();
}

void DeltaBuilder::finish(Delta& out) const {
  out.ranges.clear();
  out.payload.clear();
  if (writes_.empty()) return;
  // The writes in offset order (stable: equal offsets keep their order), merged into ranges where they overlap or
  // touch.
  std::vector<std::size_t> order(writes_.size());
  std::iota(order.begin(), order.end(), std::size_t{0});
  std::stable_sort(order.begin(), order.end(),
                   [&](std::size_t a, std::size_t b) { return writes_[a].offset < writes_[b].offset; });
  std::vector<std::uint64_t> range_start;  // payload offset of each range
  for (std::size_t i : order) {
    const Write& w = writes_[i];
    if (!out.ranges.empty() && w.offset <= out.ranges.back().end()) {
      ByteRange& last = out.ranges.back();
      last.length = std::max(last.end(), w.offset + w.length) - last.offset;
    } else {
      range_start.push_back(range_start.empty() ? 0 : range_start.back() + out.ranges.back().length);
      out.ranges.push_back(ByteRange{w.offset, w.length});
    }
  }
  out.payload.resize(range_start.back() + out.ranges.back().length);
  // Copy the writes in the order they were made, so a later write overwrites an earlier one where they overlap.
  for (const Write& w : writes_) {
    auto it = std::upper_bound(out.ranges.begin(), out.ranges.end(), w.offset,
                               [](std::uint64_t offset, const ByteRange& r) { return offset < r.offset; });
    const std::size_t k = static_cast<std::size_t>(std::prev(it) - out.ranges.begin());
    std::memcpy(out.payload.data() + range_start[k] + (w.offset - out.ranges[k].offset), bytes_.data() + w.at,
                w.length);
  }
}

}  // namespace mmsb
