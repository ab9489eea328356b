// delta/diff_scalar.cpp — the portable diff kernel: 8-byte word compares, one 64-byte block at a time.
#include "diff_kernels.hpp"

namespace mmsb::detail {

void diff_runs_scalar(const std::byte* old_bytes, const std::byte* new_bytes, std::size_t n, std::uint64_t base,
                      ScanState& state) {
  std::size_t i = 0;
  for (; i + 64 <= n; i += 64) {
    std::uint64_t any = 0;
    for (int k = 0; k < 64; k += 8) any |= load_u64(old_bytes + i + k) ^ load_u64(new_bytes + i + k);
    if (any == 0) continue;  // the common case: an unchanged block costs only the compare
    // Rare: reload the block and build its difference mask, 8 bytes at a time.
    std::uint64_t mask = 0;
    for (int k = 0; k < 64; k += 8) {
      mask |= nonzero_byte_bits(load_u64(old_bytes + i + k) ^ load_u64(new_bytes + i + k)) << k;
    }
    scan_mask(state, mask, base + i);
  }
  if (i < n) {
    const std::uint64_t mask = tail_mask_scalar(old_bytes + i, new_bytes + i, n - i);
    if (mask != 0) scan_mask(state, mask, base + i);
  }
}

}  // namespace mmsb::detail
