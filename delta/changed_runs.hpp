// delta/changed_runs.hpp — private: where two equal-length byte strings differ, for change-only commits.
//
// The runtime compares the bytes a transaction staged with the page's bytes under them and records only the runs
// that differ: the same runs (and merging) as diff(), found on a sub-range of a page with the same SIMD kernels.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "mmsb/delta.hpp"

namespace mmsb::detail {

// Appends to `out` the runs where old_bytes[0, n) and new_bytes[0, n) differ, as ranges at offsets base + i,
// merging runs separated by fewer than `merge_gap` equal bytes (at least 1, so touching runs always merge). The
// ranges come out sorted, each starting and ending on a differing byte. Returns the bytes the appended ranges
// cover. Reentrant; does not allocate once `out` has grown to the number of runs.
std::uint64_t append_changed_runs(const std::byte* old_bytes, const std::byte* new_bytes, std::size_t n,
                                  std::uint64_t base, std::uint64_t merge_gap, std::vector<ByteRange>& out);

}  // namespace mmsb::detail
