// delta/diff_avx512.cpp — the AVX-512 diff kernel: one vpcmpb per 64-byte block gives the difference mask
// directly; the tail uses masked loads. Compiled with -mavx512f -mavx512bw (and VL, BMI, LZCNT); only called
// when the CPU has AVX512F and AVX512BW (see diff.cpp).
#include <immintrin.h>

#include "diff_kernels.hpp"

namespace mmsb::detail {

void diff_runs_avx512(const std::byte* old_bytes, const std::byte* new_bytes, std::size_t n, std::uint64_t base,
                      ScanState& state) {
  std::size_t i = 0;
  // Four blocks per iteration: an unchanged group costs eight loads, four compares and one test of the OR-ed
  // masks, so the one data-dependent branch is taken once per 256 bytes.
  for (; i + 256 <= n; i += 256) {
    const __mmask64 m0 = _mm512_cmpneq_epi8_mask(_mm512_loadu_si512(old_bytes + i), _mm512_loadu_si512(new_bytes + i));
    const __mmask64 m1 =
        _mm512_cmpneq_epi8_mask(_mm512_loadu_si512(old_bytes + i + 64), _mm512_loadu_si512(new_bytes + i + 64));
    const __mmask64 m2 =
        _mm512_cmpneq_epi8_mask(_mm512_loadu_si512(old_bytes + i + 128), _mm512_loadu_si512(new_bytes + i + 128));
    const __mmask64 m3 =
        _mm512_cmpneq_epi8_mask(_mm512_loadu_si512(old_bytes + i + 192), _mm512_loadu_si512(new_bytes + i + 192));
    if ((m0 | m1 | m2 | m3) == 0) continue;
    if (m0 != 0) scan_mask(state, m0, base + i);
    if (m1 != 0) scan_mask(state, m1, base + i + 64);
    if (m2 != 0) scan_mask(state, m2, base + i + 128);
    if (m3 != 0) scan_mask(state, m3, base + i + 192);
  }
  for (; i + 64 <= n; i += 64) {
    const __mmask64 m = _mm512_cmpneq_epi8_mask(_mm512_loadu_si512(old_bytes + i), _mm512_loadu_si512(new_bytes + i));
    if (m != 0) scan_mask(state, m, base + i);
  }
  if (i < n) {
    // Masked loads read only the n - i valid bytes (no fault past the end) and zero the rest, which compare equal.
    const __mmask64 valid = _bzhi_u64(~std::uint64_t{0}, static_cast<unsigned>(n - i));
    const __mmask64 m = _mm512_cmpneq_epi8_mask(_mm512_maskz_loadu_epi8(valid, old_bytes + i),
                                                _mm512_maskz_loadu_epi8(valid, new_bytes + i));
    if (m != 0) scan_mask(state, m, base + i);
  }
}

}  // namespace mmsb::detail
