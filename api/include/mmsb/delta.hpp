// mmsb/delta.hpp — sparse byte-range deltas: diff, apply, compose, invert.
//
// A Delta records how one page changed between two epochs: the page size before and after, a sorted list of
// non-overlapping, non-adjacent byte ranges and their new bytes (the payload), and optionally the old bytes of
// the same ranges (the undo payload) so the change can be inverted. A delta whose single range covers the whole
// page is "dense"; diff() emits one when most bytes changed, since one memcpy beats many small ones.
//
//   mmsb::Delta d = mmsb::diff(old_bytes, new_bytes);   // SIMD compare of 64-byte blocks
//   mmsb::apply(d, page_bytes);                         // a few memcpys; page_bytes now equals new_bytes
//   mmsb::apply(mmsb::invert(d), page_bytes);           // and back to old_bytes
//
// Sizes. A delta may resize the page: applying it first truncates or zero-extends the page from `base_size` to
// `size`, then writes the ranges (which lie within [0, size)). When it shrinks a page and records undo, the bytes
// cut off are kept in `undo_tail` so the shrink can be inverted.
//
// Epochs. `base_epoch` is the epoch the page must have for the delta to apply; `epoch_count` is how many commits
// the delta covers (1 for a commit, the sum for a composition, 0 for the identity). The delta functions here do
// not know about pages or epochs beyond checking that compose() chains them; the runtime refuses to apply a delta
// whose base epoch does not match the page (ErrorCode::Aborted).
//
// Composition. compose(a, b) is the single delta equivalent to applying a then b. It is associative, and the
// identity delta (a default-constructed Delta) is its neutral element on both sides.
//
// Building. A DeltaBuilder collects writes in any order (overlapping, adjacent, repeated) and turns them into the
// sorted, merged ranges and payload a Delta needs — what an incremental node returns:
//
//   mmsb::DeltaBuilder b(page_size);
//   b.write_element<float>(7, 1.5f);  b.write_element<float>(2, 0.5f);   // any order
//   b.finish(out);                     // out.ranges = {[8, 12), [28, 32)}, payload in that order
//
// Thread-safety: Delta is a value type with no shared state; the free functions are reentrant and may run
// concurrently on different deltas. Concurrent reads of one Delta are safe; writes need external ordering.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <type_traits>
#include <vector>

#include "mmsb/page_id.hpp"

namespace mmsb {

// A half-open byte interval [offset, offset + length) of a page.
struct ByteRange {
  std::uint64_t offset = 0;
  std::uint64_t length = 0;

  constexpr std::uint64_t end() const noexcept { return offset + length; }
  friend constexpr bool operator==(const ByteRange&, const ByteRange&) noexcept = default;
};

struct Delta {
  PageId page;                       // the page this delta belongs to (may be unset for free-standing deltas)
  std::uint64_t base_epoch = 0;      // epoch the page must have before applying
  std::uint64_t epoch_count = 0;     // commits covered; the page's epoch afterwards is base_epoch + epoch_count
  std::uint64_t base_size = 0;       // page size before applying
  std::uint64_t size = 0;            // page size after applying
  std::vector<ByteRange> ranges;     // sorted, non-overlapping, non-adjacent, non-empty, each within [0, size)
  std::vector<std::byte> payload;    // the new bytes of all ranges, concatenated in range order
  bool has_undo = false;             // whether `undo` and `undo_tail` are recorded
  std::vector<std::byte> undo;       // if has_undo: the old bytes of all ranges (zero where beyond base_size)
  std::vector<std::byte> undo_tail;  // if has_undo and size < base_size: the old bytes [size, base_size)
  std::uint32_t source = 0;          // who produced the change (application-defined; 0 = unspecified)
  std::string intent;                // free-form tag carried into logs ("transfer", "lora:swap", ...)

  std::uint64_t target_epoch() const noexcept { return base_epoch + epoch_count; }
  // Sum of range lengths (== payload.size() for a valid delta).
  std::uint64_t changed_bytes() const noexcept;
  // True for the neutral element of compose(): covers no commit, changes no byte, keeps the size.
  bool is_identity() const noexcept { return epoch_count == 0 && ranges.empty() && base_size == size; }
  // True when one range covers the whole (non-empty) page.
  bool is_dense() const noexcept {
    return ranges.size() == 1 && ranges[0].offset == 0 && ranges[0].length == size && size != 0;
  }

  // Empties the delta but keeps the vectors' capacity, so a reused Delta stops allocating.
  void clear() noexcept;

  // Checks every invariant listed above; throws Error(InvalidArgument) naming the first one broken.
  void validate() const;

  friend bool operator==(const Delta&, const Delta&) = default;
};

// Collects byte writes in any order and produces the ranges and payload of a Delta: sorted, non-overlapping and
// non-adjacent (touching or overlapping writes are merged), where a later write wins on the bytes two writes share.
// With a page size, a write that does not fit the page throws Error(InvalidArgument) at once, naming the range.
// Thread-safety: a value type; use each builder from one thread.
class DeltaBuilder {
 public:
  static constexpr std::uint64_t kNoLimit = ~std::uint64_t{0};
  explicit DeltaBuilder(std::uint64_t page_size = kNoLimit) : page_size_(page_size) {}

  void write(std::uint64_t offset, std::span<const std::byte> bytes);
  template <class T>
  void write_value(std::uint64_t offset, const T& value) {
    static_assert(std::is_trivially_copyable_v<T>);
    write(offset, std::as_bytes(std::span<const T, 1>(&value, 1)));
  }
  // Element `index` of the page seen as an array of T (byte offset index * sizeof(T)).
  template <class T>
  void write_element(std::uint64_t index, const T& value) {
    write_value(index * sizeof(T), value);
  }
  // `values` from element `first` on.
  template <class T>
  void write_elements(std::uint64_t first, std::span<const T> values) {
    static_assert(std::is_trivially_copyable_v<T>);
    write(first * sizeof(T), std::as_bytes(values));
  }

  bool empty() const noexcept { return writes_.empty(); }
  std::size_t write_count() const noexcept { return writes_.size(); }
  std::uint64_t page_size() const noexcept { return page_size_; }
  // Forgets the writes (keeps the memory, so a reused builder stops allocating).
  void clear() noexcept;
  // Replaces out.ranges and out.payload with the merged writes (empty when there were none: "no change"); the
  // other fields of `out` are left as they are. The builder keeps its writes; clear() it to start over.
  void finish(Delta& out) const;

 private:
  struct Write {
    std::uint64_t offset;
    std::uint64_t length;
    std::uint64_t at;  // where its bytes start in bytes_
  };
  std::uint64_t page_size_;
  std::vector<Write> writes_;  // in the order they were made
  std::vector<std::byte> bytes_;
};

// SIMD code paths of diff(). detected_simd_level() is the best one this CPU supports; diff() uses it unless
// the environment variable MMSB_SIMD=scalar|avx2|avx512 asks for a lower one (read once, at first use).
enum class SimdLevel : std::uint8_t { Scalar = 0, Avx2 = 1, Avx512 = 2 };
SimdLevel detected_simd_level() noexcept;
SimdLevel active_simd_level() noexcept;
const char* simd_level_name(SimdLevel level) noexcept;  // "scalar", "avx2", "avx512"

struct DiffOptions {
  // Changed runs separated by fewer than this many equal bytes are merged into one range: a short memcpy of a
  // few unchanged bytes is cheaper than another range header.
  std::uint64_t merge_gap = 16;
  // When the changed bytes exceed this fraction of the page, the whole page is emitted as one dense range.
  double dense_fraction = 0.5;
  // Record the old bytes so the delta can be inverted.
  bool record_undo = true;
};

// Fills `out` with the delta that turns `old_bytes` into `new_bytes`, reusing out's capacity (no allocation
// once warmed up). Sizes may differ: the delta then resizes the page. base_epoch = 0 and epoch_count = 1 are
// set; page, source and intent are left unchanged so a caller can set them once.
void diff_into(std::span<const std::byte> old_bytes, std::span<const std::byte> new_bytes, Delta& out,
               const DiffOptions& options = {});
// As diff_into(), forcing one SIMD path; throws Error(Unsupported) when this CPU lacks it. For tests/benchmarks.
void diff_into(SimdLevel level, std::span<const std::byte> old_bytes, std::span<const std::byte> new_bytes, Delta& out,
               const DiffOptions& options = {});
Delta diff(std::span<const std::byte> old_bytes, std::span<const std::byte> new_bytes, const DiffOptions& options = {});

// Writes the delta's ranges into `page`, which must already have the delta's final size (`delta.size`);
// throws Error(InvalidArgument) otherwise. Does not resize: see apply(Delta, vector&) or the runtime.
void apply_ranges(const Delta& delta, std::span<std::byte> page);
// Resizes `page` from delta.base_size to delta.size (zero-extending) and writes the ranges; throws
// Error(InvalidArgument) when page.size() != delta.base_size.
void apply(const Delta& delta, std::vector<std::byte>& page);
// Same-size convenience: `page.size()` must equal both delta.base_size and delta.size.
void apply(const Delta& delta, std::span<std::byte> page);

// The delta that undoes `delta`: applying it to the page produced by `delta` restores the old bytes and size.
// Its base_epoch is delta.target_epoch() and it covers one commit (epochs only move forward). Its own undo is
// delta's payload, so invert(invert(d)) has d's effect. Throws Error(InvalidArgument) when !delta.has_undo.
Delta invert(const Delta& delta);

// The delta equivalent to applying `first` then `second`. Throws Error(InvalidArgument) when they belong to
// different pages, when second.base_epoch != first.target_epoch(), or when second.base_size != first.size
// (identity deltas are exempt from all three checks). The result has undo iff both have undo; its source and
// intent are second's.
Delta compose(const Delta& first, const Delta& second);

}  // namespace mmsb
