// graph/latency_histogram.hpp — a lock-free latency histogram for the propagation stats (internal to mmsb).
//
// Thread-safety: record() and summary() may run concurrently from any thread; summary() is then a snapshot that
// may miss records in flight.
#pragma once

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstddef>
#include <cstdint>

#include "mmsb/graph.hpp"

namespace mmsb::detail {

inline std::uint64_t steady_ns() {
  return static_cast<std::uint64_t>(
      std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch())
          .count());
}

// Lock-free latency histogram: four buckets per power of two (values below 4 ns get their own buckets).
class LatencyHistogram {
 public:
  void record(std::uint64_t ns) noexcept {
    buckets_[bucket_of(ns)].fetch_add(1, std::memory_order_relaxed);
    count_.fetch_add(1, std::memory_order_relaxed);
    sum_.fetch_add(ns, std::memory_order_relaxed);
    std::uint64_t seen = max_.load(std::memory_order_relaxed);
    while (ns > seen && !max_.compare_exchange_weak(seen, ns, std::memory_order_relaxed)) {
    }
  }
  LatencySummary summary() const noexcept {
    LatencySummary out;
    out.count = count_.load(std::memory_order_relaxed);
    out.max_ns = max_.load(std::memory_order_relaxed);
    if (out.count == 0) return out;
    out.mean_ns = static_cast<double>(sum_.load(std::memory_order_relaxed)) / static_cast<double>(out.count);
    out.p50_ns = quantile(0.50, out.count);
    out.p90_ns = quantile(0.90, out.count);
    out.p99_ns = quantile(0.99, out.count);
    return out;
  }

 private:
  static constexpr std::size_t kBuckets = 64 * 4;
  static std::size_t bucket_of(std::uint64_t ns) noexcept {
    if (ns < 4) return static_cast<std::size_t>(ns);
    const unsigned e = 63u - static_cast<unsigned>(__builtin_clzll(ns));  // ns in [2^e, 2^(e+1)), e >= 2
    return e * 4 + static_cast<std::size_t>((ns >> (e - 2)) & 3);
  }
  // The upper bound of a bucket: a quantile is reported as at most this.
  static std::uint64_t bucket_limit(std::size_t b) noexcept {
    if (b < 4) return b;
    const unsigned e = static_cast<unsigned>(b / 4), sub = static_cast<unsigned>(b % 4);
    const std::uint64_t base = std::uint64_t{1} << e, step = base >> 2;
    return base + step * (sub + 1) - 1;
  }
  std::uint64_t quantile(double q, std::uint64_t count) const noexcept {
    const auto rank = static_cast<std::uint64_t>(std::ceil(q * static_cast<double>(count)));
    std::uint64_t seen = 0;
    for (std::size_t b = 0; b < kBuckets; ++b) {
      seen += buckets_[b].load(std::memory_order_relaxed);
      if (seen >= rank) return std::min(bucket_limit(b), max_.load(std::memory_order_relaxed));
    }
    return max_.load(std::memory_order_relaxed);
  }
  std::array<std::atomic<std::uint64_t>, kBuckets> buckets_{};
  std::atomic<std::uint64_t> count_{0}, sum_{0}, max_{0};
};

}  // namespace mmsb::detail
