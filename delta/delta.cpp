// delta/delta.cpp — Delta's invariants, apply, invert and compose.
#include <algorithm>
#include <cstring>
#include <string>

#include "mmsb/delta.hpp"
#include "mmsb/error.hpp"

namespace mmsb {
namespace {

std::string range_text(const ByteRange& r) {
  return "[" + std::to_string(r.offset) + ", " + std::to_string(r.offset + r.length) + ")";
}

[[noreturn]] void broken(const std::string& what) {
  throw Error(ErrorCode::InvalidArgument,
              "invalid Delta: " + what + "; build deltas with diff(), invert() or compose(), or fix the fields");
}

// The O(ranges) checks apply needs before writing anything: each range non-empty, inside [0, size), sorted and
// disjoint, and the payload exactly as long as the ranges.
void check_ranges(const Delta& d) {
  std::uint64_t total = 0;
  std::uint64_t prev_end = 0;
  for (std::size_t i = 0; i < d.ranges.size(); ++i) {
    const ByteRange& r = d.ranges[i];
    if (r.length == 0) broken("range #" + std::to_string(i) + " at offset " + std::to_string(r.offset) + " is empty");
    if (r.offset > d.size || r.length > d.size - r.offset) {  // overflow-safe "end > size"
      broken("range #" + std::to_string(i) + " " + range_text(r) + " goes past the page size " +
             std::to_string(d.size));
    }
    if (i != 0 && r.offset <= prev_end) {
      broken("range #" + std::to_string(i) + " " + range_text(r) + " does not start after the end " +
             std::to_string(prev_end) + " of range #" + std::to_string(i - 1) +
             " (ranges must be sorted, disjoint and not touching)");
    }
    prev_end = r.end();
    total += r.length;
  }
  if (d.payload.size() != total) {
    broken("payload holds " + std::to_string(d.payload.size()) + " bytes but the ranges cover " +
           std::to_string(total));
  }
}

void write_ranges(const Delta& d, std::byte* page) noexcept {
  const std::byte* src = d.payload.data();
  for (const ByteRange& r : d.ranges) {
    std::memcpy(page + r.offset, src, r.length);
    src += r.length;
  }
}

// Appends [offset, offset + len) with its new bytes and old bytes (nullptr: zeros) to r, extending the last range
// when they touch, so pieces appended in increasing order come out canonical.
void append_piece(Delta& r, std::uint64_t offset, std::uint64_t len, const std::byte* value, const std::byte* undo) {
  if (!r.ranges.empty() && r.ranges.back().end() == offset) {
    r.ranges.back().length += len;
  } else {
    r.ranges.push_back(ByteRange{offset, len});
  }
  if (value != nullptr) {
    r.payload.insert(r.payload.end(), value, value + len);
  } else {
    r.payload.resize(r.payload.size() + len);
  }
  if (!r.has_undo) return;
  if (undo != nullptr) {
    r.undo.insert(r.undo.end(), undo, undo + len);
  } else {
    r.undo.resize(r.undo.size() + len);
  }
}

// Appends only the non-zero runs of value[0, len) at `offset`, with zero undo. Used beyond the base size, where
// zero-extension already supplies the zeros: this keeps results canonical whatever path produced them.
void append_nonzero_runs(Delta& r, std::uint64_t offset, std::uint64_t len, const std::byte* value) {
  std::uint64_t i = 0;
  while (i < len) {
    while (i < len && value[i] == std::byte{0}) ++i;
    const std::uint64_t start = i;
    while (i < len && value[i] != std::byte{0}) ++i;
    if (i > start) append_piece(r, offset + start, i - start, value + start, nullptr);
  }
}

// Walks a delta's ranges in increasing position, tracking where each range's bytes start in the payload.
struct RangeCursor {
  const std::vector<ByteRange>& ranges;
  std::size_t index = 0;
  std::uint64_t payload_offset = 0;

  // If `x` lies in a range, returns true and sets `at` to x's index in the payload. Calls must not go backwards.
  bool locate(std::uint64_t x, std::uint64_t& at) {
    while (index < ranges.size() && ranges[index].end() <= x) {
      payload_offset += ranges[index].length;
      ++index;
    }
    if (index == ranges.size() || ranges[index].offset > x) return false;
    at = payload_offset + (x - ranges[index].offset);
    return true;
  }
};

void validate_operand(const Delta& d, const char* role) {
  try {
    d.validate();
  } catch (const Error& e) {
    throw Error(ErrorCode::InvalidArgument, std::string(role) + ": " + e.what());
  }
}

}  // namespace

std::uint64_t Delta::changed_bytes() const noexcept {
  std::uint64_t total = 0;
  for (const ByteRange& r : ranges) total += r.length;
  return total;
}

void Delta::clear() noexcept {
  page = PageId();
  base_epoch = 0;
  epoch_count = 0;
  base_size = 0;
  size = 0;
  ranges.clear();
  payload.clear();
  has_undo = false;
  undo.clear();
  undo_tail.clear();
  source = 0;
  intent.clear();
}

void Delta::validate() const {
  check_ranges(*this);
  const std::uint64_t tail = size < base_size ? base_size - size : 0;
  if (!has_undo) {
    if (!undo.empty() || !undo_tail.empty()) {
      broken("has_undo is false but undo holds " + std::to_string(undo.size()) + " bytes and undo_tail " +
             std::to_string(undo_tail.size()) + " (set has_undo or clear them)");
    }
    return;
  }
  if (undo.size() != payload.size()) {
    broken("undo holds " + std::to_string(undo.size()) + " bytes but the payload " + std::to_string(payload.size()));
  }
  if (undo_tail.size() != tail) {
    broken("undo_tail holds " + std::to_string(undo_tail.size()) + " bytes but the delta cuts " + std::to_string(tail) +
           " (base_size " + std::to_string(base_size) + ", size " + std::to_string(size) + ")");
  }
  if (size > base_size) {
    // Old bytes beyond the base size did not exist: undo must hold zeros there.
    std::uint64_t at = 0;
    for (const ByteRange& r : ranges) {
      for (std::uint64_t p = std::max(r.offset, base_size); p < r.end(); ++p) {
        if (undo[at + (p - r.offset)] != std::byte{0}) {
          broken("undo byte at offset " + std::to_string(p) + " is non-zero but lies beyond base_size " +
                 std::to_string(base_size));
        }
      }
      at += r.length;
    }
  }
}

void apply_ranges(const Delta& delta, std::span<std::byte> page) {
  if (page.size() != delta.size) {
    throw Error(ErrorCode::InvalidArgument, "apply_ranges: the page has " + std::to_string(page.size()) +
                                                " bytes but the delta's size is " + std::to_string(delta.size) +
                                                "; resize the page first or use apply(Delta, std::vector&)");
  }
  check_ranges(delta);
  write_ranges(delta, page.data());
}

void apply(const Delta& delta, std::vector<std::byte>& page) {
  if (page.size() != delta.base_size) {
    throw Error(ErrorCode::InvalidArgument,
                "apply: the page has " + std::to_string(page.size()) + " bytes but the delta expects base_size " +
                    std::to_string(delta.base_size) + "; apply it to the page it was made for");
  }
  check_ranges(delta);  // before resizing, so a bad delta leaves the page untouched
  page.resize(delta.size);
  write_ranges(delta, page.data());
}

void apply(const Delta& delta, std::span<std::byte> page) {
  if (page.size() != delta.base_size || page.size() != delta.size) {
    throw Error(ErrorCode::InvalidArgument, "apply: the page has " + std::to_string(page.size()) +
                                                " bytes but the delta resizes it from " +
                                                std::to_string(delta.base_size) + " to " + std::to_string(delta.size) +
                                                "; a span cannot be resized, use apply(Delta, std::vector&)");
  }
  check_ranges(delta);
  write_ranges(delta, page.data());
}

Delta invert(const Delta& delta) {
  if (!delta.has_undo) {
    throw Error(ErrorCode::InvalidArgument,
                "invert: the delta has no undo record (has_undo is false); diff with DiffOptions::record_undo = true");
  }
  validate_operand(delta, "invert");
  Delta r;
  r.page = delta.page;
  r.base_epoch = delta.target_epoch();
  r.epoch_count = 1;
  r.base_size = delta.size;
  r.size = delta.base_size;
  r.has_undo = true;
  r.source = delta.source;
  r.intent = delta.intent;
  r.ranges.reserve(delta.ranges.size() + 1);
  r.payload.reserve(delta.payload.size());
  r.undo.reserve(delta.payload.size());

  // The same ranges, clipped to the restored size: new bytes are delta's undo, old bytes its payload.
  const std::uint64_t keep = std::min(delta.size, delta.base_size);
  std::uint64_t at = 0;
  for (const ByteRange& range : delta.ranges) {
    if (range.offset >= keep) break;
    const std::uint64_t len = std::min(range.end(), keep) - range.offset;
    append_piece(r, range.offset, len, delta.undo.data() + at, delta.payload.data() + at);
    at += range.length;
  }

  if (delta.size > delta.base_size) {
    // Inverse of a grow shrinks back; its undo_tail is the grown area as delta left it: zeros under its payload.
    r.undo_tail.assign(delta.size - delta.base_size, std::byte{0});
    at = 0;
    for (const ByteRange& range : delta.ranges) {
      const std::uint64_t from = std::max(range.offset, delta.base_size);
      if (from < range.end()) {
        std::memcpy(r.undo_tail.data() + (from - delta.base_size), delta.payload.data() + at + (from - range.offset),
                    range.end() - from);
      }
      at += range.length;
    }
  } else if (delta.size < delta.base_size) {
    // Inverse of a shrink grows back: the re-grown area starts as zeros, so only the non-zero cut bytes are ranges.
    append_nonzero_runs(r, delta.size, delta.undo_tail.size(), delta.undo_tail.data());
  }
  return r;
}

namespace {

// Throws unless `second` continues `first`: same page, consecutive epochs, matching sizes, well-formed operands.
void check_composable(const Delta& first, const Delta& second) {
  if (first.page != second.page) {
    throw Error(ErrorCode::InvalidArgument, "compose: the deltas belong to different pages (" + first.page.to_string() +
                                                " then " + second.page.to_string() +
                                                "); compose only deltas of one page");
  }
  if (second.base_epoch != first.target_epoch()) {
    throw Error(ErrorCode::InvalidArgument, "compose: the second delta starts at epoch " +
                                                std::to_string(second.base_epoch) + " but the first ends at epoch " +
                                                std::to_string(first.target_epoch()) +
                                                "; compose consecutive deltas only, in order");
  }
  if (second.base_size != first.size) {
    throw Error(ErrorCode::InvalidArgument, "compose: the second delta expects a page of " +
                                                std::to_string(second.base_size) + " bytes but the first leaves " +
                                                std::to_string(first.size) +
                                                "; compose consecutive deltas only, in order");
  }
  validate_operand(first, "compose (first)");
  validate_operand(second, "compose (second)");
}

}  // namespace

Delta compose(const Delta& first, const Delta& second) {
  if (first.is_identity()) return second;
  if (second.is_identity()) return first;
  check_composable(first, second);

  const std::uint64_t s0 = first.base_size;  // original size
  const std::uint64_t s1 = first.size;       // size between the two
  const std::uint64_t s2 = second.size;      // final size
  Delta r;
  r.page = second.page;
  r.base_epoch = first.base_epoch;
  r.epoch_count = first.epoch_count + second.epoch_count;
  r.base_size = s0;
  r.size = s2;
  r.has_undo = first.has_undo && second.has_undo;
  r.source = second.source;
  r.intent = second.intent;
  if (r.has_undo && s2 < s0) r.undo_tail.reserve(s0 - s2);

  // Elementary intervals: between consecutive cuts, membership in either delta's ranges and the position relative
  // to the three sizes are constant, so each interval takes its bytes from one source.
  std::vector<std::uint64_t> cuts;
  cuts.reserve(2 * (first.ranges.size() + second.ranges.size()) + 4);
  cuts.insert(cuts.end(), {0, s0, s1, s2});
  for (const Delta* d : {&first, &second}) {
    for (const ByteRange& range : d->ranges) {
      cuts.push_back(range.offset);
      cuts.push_back(range.end());
    }
  }
  std::sort(cuts.begin(), cuts.end());
  cuts.erase(std::unique(cuts.begin(), cuts.end()), cuts.end());

  const std::uint64_t limit = r.has_undo ? std::max(s0, s2) : s2;
  RangeCursor ca{first.ranges};
  RangeCursor cb{second.ranges};
  for (std::size_t k = 0; k + 1 < cuts.size() && cuts[k] < limit; ++k) {
    const std::uint64_t x = cuts[k];
    const std::uint64_t len = cuts[k + 1] - x;
    std::uint64_t at_a = 0;
    std::uint64_t at_b = 0;
    const bool in_a = ca.locate(x, at_a);
    const bool in_b = cb.locate(x, at_b);

    if (x >= s2) {
      // [s2, s0): bytes the result cuts off; the undo tail needs their original values.
      const std::byte* old = in_a      ? first.undo.data() + at_a
                             : x >= s1 ? first.undo_tail.data() + (x - s1)
                                       : second.undo_tail.data() + (x - s2);  // first left them unchanged
      r.undo_tail.insert(r.undo_tail.end(), old, old + len);
      continue;
    }

    // New value: second's bytes, else zeros where second re-grew what first cut (only matters below s0), else
    // first's bytes; anything else is untouched.
    const std::byte* value = nullptr;
    if (in_b) {
      value = second.payload.data() + at_b;
    } else if (x >= s1) {
      if (x >= s0) continue;  // zero-extension gives the zeros already
    } else if (in_a) {
      value = first.payload.data() + at_a;
    } else {
      continue;
    }
    if (x >= s0) {
      append_nonzero_runs(r, x, len, value);
      continue;
    }
    // Old value (x < s0): first's undo where first wrote, first's undo_tail where first cut, else the byte first
    // left alone, which second recorded.
    const std::byte* old = nullptr;
    if (r.has_undo) {
      old = in_a ? first.undo.data() + at_a : x >= s1 ? first.undo_tail.data() + (x - s1) : second.undo.data() + at_b;
    }
    append_piece(r, x, len, value, old);
  }
  return r;
}

}  // namespace mmsb
