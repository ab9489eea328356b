// runtime/page_lock.hpp — the reader/writer lock of one page (internal).
//
// One 32-bit word: a writer bit, a writer-pending bit and a reader count. Uncontended, each lock or unlock is a
// single atomic read-modify-write, several times cheaper than pthread_rwlock, which matters because every commit
// and every node of a wave takes page locks. Writers are preferred: once a writer waits, new readers hold back, so a
// stream of readers cannot starve commits. Waiters spin briefly, then sleep in the kernel (C++20 atomic wait).
//
// Meets the standard SharedMutex requirements (usable with std::unique_lock / std::shared_lock); not recursive.
// Thread-safety: that is its purpose.
#pragma once

#include <atomic>
#include <cstdint>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define MMSB_CPU_RELAX() _mm_pause()
#else
#define MMSB_CPU_RELAX() ((void)0)
#endif

namespace mmsb::detail {

class PageLock {
 public:
  PageLock() = default;
  PageLock(const PageLock&) = delete;
  PageLock& operator=(const PageLock&) = delete;

  void lock_shared() noexcept {
    std::uint32_t s = state_.load(std::memory_order_relaxed);
    for (int spins = 0;;) {
      if ((s & (kWriter | kPending)) == 0) {
        if (state_.compare_exchange_weak(s, s + 1, std::memory_order_acquire, std::memory_order_relaxed)) return;
        continue;
      }
      s = pause_or_wait(s, spins);
    }
  }
  bool try_lock_shared() noexcept {
    std::uint32_t s = state_.load(std::memory_order_relaxed);
    while ((s & (kWriter | kPending)) == 0) {
      if (state_.compare_exchange_weak(s, s + 1, std::memory_order_acquire, std::memory_order_relaxed)) return true;
    }
    return false;
  }
  void unlock_shared() noexcept {
    const std::uint32_t prev = state_.fetch_sub(1, std::memory_order_release);
    if ((prev & kReaders) == 1 && (prev & kPending) != 0) state_.notify_all();  // last reader lets a writer in
  }

  void lock() noexcept {
    std::uint32_t s = state_.load(std::memory_order_relaxed);
    for (int spins = 0;;) {
      if ((s & (kWriter | kReaders)) == 0) {
        // Free (perhaps with our or another writer's pending bit): take it; the bit is cleared, and other waiting
        // writers set it again when they retry.
        if (state_.compare_exchange_weak(s, kWriter, std::memory_order_acquire, std::memory_order_relaxed)) return;
        continue;
      }
      if ((s & kPending) == 0) {
        if (!state_.compare_exchange_weak(s, s | kPending, std::memory_order_relaxed, std::memory_order_relaxed))
          continue;
        s |= kPending;
      }
      s = pause_or_wait(s, spins);
    }
  }
  bool try_lock() noexcept {
    std::uint32_t s = state_.load(std::memory_order_relaxed);
    while ((s & (kWriter | kReaders)) == 0) {
      if (state_.compare_exchange_weak(s, kWriter, std::memory_order_acquire, std::memory_order_relaxed)) return true;
    }
    return false;
  }
  void unlock() noexcept {
    state_.fetch_and(~kWriter, std::memory_order_release);
    state_.notify_all();  // cheap when nobody waits: libstdc++ checks its waiter count before any syscall
  }

 private:
  static constexpr std::uint32_t kWriter = 1u << 31;
  static constexpr std::uint32_t kPending = 1u << 30;
  static constexpr std::uint32_t kReaders = kPending - 1;
  static constexpr int kSpinsBeforeSleep = 64;

  // Spins a little while the lock is busy, then sleeps until the word changes; returns the word seen next.
  std::uint32_t pause_or_wait(std::uint32_t seen, int& spins) noexcept {
    if (spins < kSpinsBeforeSleep) {
      ++spins;
      MMSB_CPU_RELAX();
    } else {
      state_.wait(seen, std::memory_order_relaxed);
    }
    return state_.load(std::memory_order_relaxed);
  }

  std::atomic<std::uint32_t> state_{0};
};

}  // namespace mmsb::detail
