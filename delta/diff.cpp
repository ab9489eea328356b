// delta/diff.cpp — diff()/diff_into(): run-time dispatch to a SIMD kernel, then the payload and undo copies.
#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <string>

#include "delta/changed_runs.hpp"
#include "delta/copy_bytes.hpp"
#include "diff_kernels.hpp"
#include "mmsb/delta.hpp"
#include "mmsb/error.hpp"

namespace mmsb {
namespace detail {

void grow_run_sink(RunSink& sink) {
  // Resizing within capacity does not allocate; only the part beyond the old size is zero-filled, so the cost
  // stays proportional to the output.
  const std::size_t grown = std::max<std::size_t>(16, 2 * sink.capacity);
  sink.vec->resize(grown);
  sink.data = sink.vec->data();
  sink.capacity = grown;
}

}  // namespace detail

namespace {

SimdLevel detect_level() noexcept {
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw")) return SimdLevel::Avx512;
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("bmi2")) return SimdLevel::Avx2;
  return SimdLevel::Scalar;
}

// MMSB_SIMD=scalar|avx2|avx512 (case-insensitive) caps the level; anything else leaves the detected one.
SimdLevel requested_level(SimdLevel detected) noexcept {
  const char* env = std::getenv("MMSB_SIMD");
  if (env == nullptr) return detected;
  std::string value(env);
  for (char& c : value) c = static_cast<char>(c >= 'A' && c <= 'Z' ? c - 'A' + 'a' : c);
  SimdLevel wanted = detected;
  if (value == "scalar") wanted = SimdLevel::Scalar;
  else if (value == "avx2") wanted = SimdLevel::Avx2;
  else if (value == "avx512") wanted = SimdLevel::Avx512;
  return std::min(wanted, detected);  // a level the CPU lacks cannot be honoured; fall back to the best one
}

detail::DiffKernel kernel_for(SimdLevel level) noexcept {
  switch (level) {
    case SimdLevel::Avx512: return &detail::diff_runs_avx512;
    case SimdLevel::Avx2: return &detail::diff_runs_avx2;
    case SimdLevel::Scalar: break;
  }
  return &detail::diff_runs_scalar;
}

// Zeros to compare the grown tail against: its non-zero bytes are the changes (zero-extension supplies zeros).
alignas(64) constexpr std::byte kZeros[4096] = {};

void diff_with(detail::DiffKernel kernel, std::span<const std::byte> old_bytes, std::span<const std::byte> new_bytes,
               Delta& out, const DiffOptions& options) {
  if (std::isnan(options.dense_fraction)) {
    throw Error(ErrorCode::InvalidArgument,
                "DiffOptions::dense_fraction is NaN; use a fraction in [0, 1] (values >= 1 never emit dense deltas)");
  }
  const std::uint64_t old_size = old_bytes.size();
  const std::uint64_t new_size = new_bytes.size();
  const std::uint64_t common = std::min(old_size, new_size);

  out.base_epoch = 0;
  out.epoch_count = 1;
  out.base_size = old_size;
  out.size = new_size;
  out.has_undo = options.record_undo;

  // Pages no longer than the merge gap (small derived values, counters): every two changed runs are closer than
  // the gap, so the canonical result is one range from the first to the last differing byte. Found directly, it
  // skips the kernel dispatch and the run bookkeeping, which cost more than the compare at this size.
  if (old_size == new_size && new_size <= options.merge_gap && new_size <= 64) {
    std::uint64_t first = 0, last = new_size;
    while (first < new_size && old_bytes[first] == new_bytes[first]) ++first;
    if (first != new_size) {
      while (old_bytes[last - 1] == new_bytes[last - 1]) --last;
    }
    out.ranges.clear();
    out.undo_tail.clear();
    if (first == new_size) {
      out.payload.clear();
      out.undo.clear();
      return;
    }
    if (static_cast<double>(last - first) > options.dense_fraction * static_cast<double>(new_size)) {
      first = 0;
      last = new_size;
    }
    out.ranges.push_back(ByteRange{first, last - first});
    out.payload.resize(last - first);
    detail::copy_bytes(out.payload.data(), new_bytes.data() + first, last - first);
    if (options.record_undo) {
      out.undo.resize(last - first);
      detail::copy_bytes(out.undo.data(), old_bytes.data() + first, last - first);
    } else {
      out.undo.clear();
    }
    return;
  }

  // Use the ranges vector's existing elements (and some of its capacity) as scratch space for the kernel.
  std::vector<ByteRange>& ranges = out.ranges;
  if (ranges.size() < 16) ranges.resize(std::min<std::size_t>(16, ranges.capacity()));
  detail::ScanState st{std::max<std::uint64_t>(options.merge_gap, 1), 0, 0, false,
                       detail::RunSink{ranges.data(), 0, ranges.size(), &ranges}};
  kernel(old_bytes.data(), new_bytes.data(), common, 0, st);
  for (std::uint64_t off = common; off < new_size; off += sizeof kZeros) {
    const std::uint64_t n = std::min<std::uint64_t>(sizeof kZeros, new_size - off);
    kernel(kZeros, new_bytes.data() + off, n, off, st);
  }
  detail::scan_finish(st);
  ranges.resize(st.sink.size);

  std::uint64_t changed = 0;
  for (const ByteRange& r : ranges) changed += r.length;
  if (changed != 0 && static_cast<double>(changed) > options.dense_fraction * static_cast<double>(new_size)) {
    ranges.resize(1);
    ranges[0] = ByteRange{0, new_size};
    changed = new_size;
  }

  out.payload.resize(changed);
  std::byte* payload = out.payload.data();
  for (const ByteRange& r : ranges) {
    detail::copy_bytes(payload, new_bytes.data() + r.offset, r.length);
    payload += r.length;
  }

  if (!options.record_undo) {
    out.undo.clear();
    out.undo_tail.clear();
    return;
  }
  out.undo.resize(changed);
  std::byte* undo = out.undo.data();
  for (const ByteRange& r : ranges) {
    // Old bytes where the old page had them, zeros beyond (the grown part).
    const std::uint64_t have = r.offset < old_size ? std::min(r.end(), old_size) - r.offset : 0;
    if (have != 0) detail::copy_bytes(undo, old_bytes.data() + r.offset, have);
    if (have != r.length) std::memset(undo + have, 0, r.length - have);
    undo += r.length;
  }
  if (new_size < old_size) {
    out.undo_tail.assign(old_bytes.begin() + static_cast<std::ptrdiff_t>(new_size), old_bytes.end());
  } else {
    out.undo_tail.clear();
  }
}

}  // namespace

SimdLevel detected_simd_level() noexcept {
  static const SimdLevel level = detect_level();
  return level;
}

SimdLevel active_simd_level() noexcept {
  static const SimdLevel level = requested_level(detected_simd_level());
  return level;
}

const char* simd_level_name(SimdLevel level) noexcept {
  switch (level) {
    case SimdLevel::Scalar: return "scalar";
    case SimdLevel::Avx2: return "avx2";
    case SimdLevel::Avx512: return "avx512";
  }
  return "unknown";
}

void diff_into(std::span<const std::byte> old_bytes, std::span<const std::byte> new_bytes, Delta& out,
               const DiffOptions& options) {
  static const detail::DiffKernel kernel = kernel_for(active_simd_level());
  diff_with(kernel, old_bytes, new_bytes, out, options);
}

void diff_into(SimdLevel level, std::span<const std::byte> old_bytes, std::span<const std::byte> new_bytes,
               Delta& out, const DiffOptions& options) {
  if (level > SimdLevel::Avx512) {
    throw Error(ErrorCode::InvalidArgument,
                "SimdLevel value " + std::to_string(static_cast<unsigned>(level)) +
                    " is not a known level; use Scalar, Avx2 or Avx512");
  }
  if (level > detected_simd_level()) {
    throw Error(ErrorCode::Unsupported,
                std::string("SIMD level '") + simd_level_name(level) + "' is not supported by this CPU (best: '" +
                    simd_level_name(detected_simd_level()) + "'); ask for detected_simd_level() or lower");
  }
  diff_with(kernel_for(level), old_bytes, new_bytes, out, options);
}

namespace detail {

std::uint64_t append_changed_runs(const std::byte* old_bytes, const std::byte* new_bytes, std::size_t n,
                                  std::uint64_t base, std::uint64_t merge_gap, std::vector<ByteRange>& out) {
  const std::uint64_t gap = std::max<std::uint64_t>(merge_gap, 1);
  const std::size_t first = out.size();
  if (n <= 64) {
    // A field or a counter: one difference mask, without the kernel dispatch or the scan bookkeeping.
    std::uint64_t mask = tail_mask_scalar(old_bytes, new_bytes, n);
    std::uint64_t covered = 0;
    while (mask != 0) {
      const unsigned start = static_cast<unsigned>(__builtin_ctzll(mask));
      const std::uint64_t rest = ~(mask >> start);
      const unsigned stop = rest == 0 ? 64u : start + static_cast<unsigned>(__builtin_ctzll(rest));
      if (out.size() > first && base + start - out.back().end() < gap) {
        covered += base + stop - out.back().end();
        out.back().length = base + stop - out.back().offset;
      } else {
        out.push_back(ByteRange{base + start, stop - start});
        covered += stop - start;
      }
      if (stop >= 64) break;
      mask &= ~std::uint64_t{0} << stop;
    }
    return covered;
  }
  static const DiffKernel kernel = kernel_for(active_simd_level());
  out.resize(first + 16);  // room for the kernel to write into; grow_run_sink() doubles it when needed
  ScanState st{gap, 0, 0, false, RunSink{out.data(), first, out.size(), &out}};
  kernel(old_bytes, new_bytes, n, base, st);
  scan_finish(st);
  out.resize(st.sink.size);
  std::uint64_t covered = 0;
  for (std::size_t i = first; i < out.size(); ++i) covered += out[i].length;
  return covered;
}

}  // namespace detail

Delta diff(std::span<const std::byte> old_bytes, std::span<const std::byte> new_bytes, const DiffOptions& options) {
  Delta out;
  diff_into(old_bytes, new_bytes, out, options);
  return out;
}

}  // namespace mmsb
