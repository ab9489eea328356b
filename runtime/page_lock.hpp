// runtime/page_lock.hpp — the lock of one page (internal): shared, update and exclusive modes.
//
// One 32-bit word: a writer bit, a writer-pending bit, an update bit and a reader count. Uncontended, each lock or
// unlock is a single atomic read-modify-write, several times cheaper than pthread_rwlock, which matters because
// every commit and every node of a wave takes page locks. Waiters spin briefly, then sleep in the kernel (C++20
// atomic wait).
//
// Modes:
//   shared     readers (read(), ReadView, a node's inputs): many at once; they exclude only exclusive holders.
//   update     a commit building its delta and logging it: one holder at a time, excluding other update and
//              exclusive holders but not readers, so readers go on while a commit's record is on its way to disk.
//   exclusive  publishing (a commit applying its delta, a node writing its output): update plus no readers.
// lock() takes update and exclusive at once. upgrade() turns a held update lock into an exclusive one; it waits
// for the readers to leave and holds new ones back meanwhile (writers are preferred, so a stream of readers
// cannot starve a commit). Deadlock freedom across pages comes from the callers: they lock pages in PageId order
// and upgrade only while holding no lock of a higher page.
//
// Optimistic readers take no lock: they read a page's epoch, check writer_inside(), copy, and check both again
// (runtime/transaction.cpp, read_unlocked). For that, every exclusive holder that changes the bytes moves the
// epoch before it unlocks, and taking the lock exclusively orders the holder's later stores after it (a release
// fence, free on x86 where the locked instruction already does it): the writer side of a seqlock.
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
  // Takes the lock shared only if that needs no wait. Never waiting, a caller may take several pages' locks in
  // any order this way (and fall back to PageId order when one fails).
  bool try_lock_shared() noexcept {
    std::uint32_t s = state_.load(std::memory_order_relaxed);
    return (s & (kWriter | kPending)) == 0 &&
           state_.compare_exchange_strong(s, s + 1, std::memory_order_acquire, std::memory_order_relaxed);
  }
  void unlock_shared() noexcept {
    const std::uint32_t prev = state_.fetch_sub(1, std::memory_order_release);
    if ((prev & kReaders) == 1 && (prev & kPending) != 0) state_.notify_all();  // last reader lets a writer in
  }

  void lock_update() noexcept {
    std::uint32_t s = state_.load(std::memory_order_relaxed);
    for (int spins = 0;;) {
      if ((s & kUpdate) == 0) {  // exclusive holders hold kUpdate too
        if (state_.compare_exchange_weak(s, s | kUpdate, std::memory_order_acquire, std::memory_order_relaxed)) return;
        continue;
      }
      s = pause_or_wait(s, spins);
    }
  }
  void unlock_update() noexcept {
    state_.fetch_and(~kUpdate, std::memory_order_release);
    state_.notify_all();  // cheap when nobody waits: libstdc++ checks its waiter count before any syscall
  }

  // Holding the update lock: waits for the readers to leave (new ones hold back) and takes the lock exclusively.
  void upgrade() noexcept {
    std::uint32_t s = state_.fetch_or(kPending, std::memory_order_relaxed) | kPending;
    for (int spins = 0;;) {
      if ((s & kReaders) == 0) {
        if (state_.compare_exchange_weak(s, (s & ~kPending) | kWriter, std::memory_order_acquire,
                                         std::memory_order_relaxed)) {
          writer_fence();
          return;
        }
        continue;
      }
      s = pause_or_wait(s, spins);
    }
  }

  void lock() noexcept {
    std::uint32_t free = 0;
    if (state_.compare_exchange_strong(free, kUpdate | kWriter, std::memory_order_acquire, std::memory_order_relaxed)) {
      writer_fence();
      return;
    }
    lock_update();
    upgrade();
  }
  bool try_lock() noexcept {
    std::uint32_t free = 0;
    if (!state_.compare_exchange_strong(free, kUpdate | kWriter, std::memory_order_acquire, std::memory_order_relaxed))
      return false;
    writer_fence();
    return true;
  }
  void unlock() noexcept {
    // While held exclusively the word is exactly kWriter | kUpdate: readers, update lockers and upgrades all wait
    // for those bits to clear without changing the word. So a plain store frees it, one read-modify-write fewer on
    // every commit's and every node's output page.
    state_.store(0, std::memory_order_release);
    state_.notify_all();
  }

  // Whether an exclusive holder is inside, for optimistic readers (see above). Acquire: a reader that sees the
  // writer gone also sees the epoch it moved.
  bool writer_inside() const noexcept { return (state_.load(std::memory_order_acquire) & kWriter) != 0; }

 private:
  static constexpr std::uint32_t kWriter = 1u << 31;
  static constexpr std::uint32_t kPending = 1u << 30;  // set only by the update holder while it upgrades
  static constexpr std::uint32_t kUpdate = 1u << 29;
  static constexpr std::uint32_t kReaders = kUpdate - 1;
  static constexpr int kSpinsBeforeSleep = 64;

  // Orders an exclusive holder's stores after its taking of the lock, so an optimistic reader that copied one of
  // them sees the writer bit (or the moved epoch) when it checks again. Emits nothing on x86. ThreadSanitizer
  // does not model fences (GCC warns), and it never sees the optimistic copy either.
  static void writer_fence() noexcept {
#if !defined(__SANITIZE_THREAD__)
    std::atomic_thread_fence(std::memory_order_release);
#endif
  }

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
