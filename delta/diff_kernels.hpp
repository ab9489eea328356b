// delta/diff_kernels.hpp — private: the SIMD kernels of diff() and the run-merging state they share.
//
// A kernel compares old[0, n) with new[0, n) in 64-byte blocks and reports every maximal run of differing bytes
// (byte-exact) to a ScanState, which merges runs separated by fewer than `gap` equal bytes and appends the
// merged ranges to a RunSink. Because the runs are defined by the bytes alone and the merging lives here, every
// kernel yields the same ranges for the same input. A ScanState survives across kernel calls, so diff() can scan
// the common prefix and then the grown tail (against zeros) as one stream.
//
// Kernels are compiled with different -m flags (diff_avx2.cpp, diff_avx512.cpp). To keep code built for a wider
// instruction set out of the scalar path, the helpers below have internal linkage (each TU gets its own copy) and
// the kernels never instantiate library templates: they touch the output only through the raw RunSink, and
// growing it goes through grow_run_sink(), which lives in diff.cpp (baseline flags). Otherwise the linker could
// pick, say, an AVX-512 build of std::vector<ByteRange>::_M_realloc_insert for the whole program.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <vector>

#include "mmsb/delta.hpp"

namespace mmsb::detail {

// Raw view of a std::vector<ByteRange> used as growable storage: data[0, size) are results, size <= capacity
// == vec->size(). diff.cpp trims vec to `size` when the scan ends.
struct RunSink {
  ByteRange* data;
  std::size_t size;
  std::size_t capacity;
  std::vector<ByteRange>* vec;
};

// Grows sink.vec (and refreshes data/capacity) so that at least one more range fits. Defined in diff.cpp.
void grow_run_sink(RunSink& sink);

// Merging state: the open run [begin, end) has not been written to the sink yet.
struct ScanState {
  std::uint64_t gap;  // merge runs whose gap is < gap; at least 1, so touching runs always merge
  std::uint64_t begin;
  std::uint64_t end;
  bool open;
  RunSink sink;
};

using DiffKernel = void (*)(const std::byte* old_bytes, const std::byte* new_bytes, std::size_t n, std::uint64_t base,
                            ScanState& state);

// Compares old/new [0, n) and reports differing runs at offsets base + i. One per SIMD level.
void diff_runs_scalar(const std::byte* old_bytes, const std::byte* new_bytes, std::size_t n, std::uint64_t base,
                      ScanState& state);
void diff_runs_avx2(const std::byte* old_bytes, const std::byte* new_bytes, std::size_t n, std::uint64_t base,
                    ScanState& state);
void diff_runs_avx512(const std::byte* old_bytes, const std::byte* new_bytes, std::size_t n, std::uint64_t base,
                      ScanState& state);

static inline void scan_push(ScanState& st, std::uint64_t begin, std::uint64_t end) {
  if (st.sink.size == st.sink.capacity) grow_run_sink(st.sink);
  // Field by field: no ByteRange constructor or operator is instantiated in a kernel TU.
  st.sink.data[st.sink.size].offset = begin;
  st.sink.data[st.sink.size].length = end - begin;
  ++st.sink.size;
}

// Reports the differing run [begin, end); runs arrive in increasing order and never overlap.
static inline void scan_run(ScanState& st, std::uint64_t begin, std::uint64_t end) {
  if (st.open && begin - st.end < st.gap) {
    st.end = end;
    return;
  }
  if (st.open) scan_push(st, st.begin, st.end);
  st.begin = begin;
  st.end = end;
  st.open = true;
}

// Closes the open run; call once after the last kernel call.
static inline void scan_finish(ScanState& st) {
  if (st.open) scan_push(st, st.begin, st.end);
  st.open = false;
}

// Splits a 64-bit difference mask (bit i: byte base + i differs) into runs. The mask is non-zero.
static inline void scan_mask(ScanState& st, std::uint64_t mask, std::uint64_t base) {
  while (mask != 0) {
    const unsigned start = static_cast<unsigned>(__builtin_ctzll(mask));
    const std::uint64_t rest = ~(mask >> start);  // ones where the run has ended (and above bit 63 - start)
    const unsigned stop = rest == 0 ? 64u : start + static_cast<unsigned>(__builtin_ctzll(rest));
    scan_run(st, base + start, base + stop);
    if (stop >= 64) break;
    mask &= ~std::uint64_t{0} << stop;
  }
}

static inline std::uint64_t load_u64(const std::byte* p) noexcept {
  std::uint64_t v;
  std::memcpy(&v, p, sizeof v);  // unaligned load without UB
  return v;
}

// One bit per byte of x (little endian): bit j set iff byte j of x is non-zero.
static inline std::uint64_t nonzero_byte_bits(std::uint64_t x) noexcept {
  constexpr std::uint64_t kLow7 = 0x7f7f7f7f7f7f7f7fULL;
  const std::uint64_t high = (((x & kLow7) + kLow7) | x) & ~kLow7;  // 0x80 in each non-zero byte
  // Gathers bit 8j+7 to bit 56+j; the partial products never collide, so there are no carries.
  return ((high >> 7) * 0x0102040810204080ULL) >> 56;
}

// Difference mask of a block shorter than 64 bytes (n < 64), for the kernels' tails.
static inline std::uint64_t tail_mask_scalar(const std::byte* a, const std::byte* b, std::size_t n) noexcept {
  std::uint64_t mask = 0;
  std::size_t i = 0;
  for (; i + 8 <= n; i += 8) mask |= nonzero_byte_bits(load_u64(a + i) ^ load_u64(b + i)) << i;
  for (; i < n; ++i) mask |= static_cast<std::uint64_t>(a[i] != b[i]) << i;
  return mask;
}

}  // namespace mmsb::detail
