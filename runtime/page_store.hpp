// runtime/page_store.hpp — page records and the id → record directory (internal).
//
// Records live in a two-level directory indexed by the id's sequence number: lookups are two atomic loads, and
// inserting takes no lock. A deleted page keeps its record (flagged deleted, bytes freed) until the store is
// destroyed, so a reader that found a record never holds a dangling pointer and an id is never reused.
//
// Thread-safety: find() and insert() may run concurrently. A record's bytes and capacity are guarded by its
// mutex; size, epoch and the deleted flag are atomics written only under the exclusive lock, so lock-free reads of
// them are hints that must be re-checked under the lock. The in-flight list is guarded by the update lock (which
// the exclusive lock includes); its front is atomic so that commits can wait for their turn without a lock.
#pragma once

#include <array>
#include <atomic>
#include <cstdint>
#include <memory>

#include "mmsb/page_id.hpp"
#include "mmsb/runtime.hpp"
#include "runtime/page_lock.hpp"

namespace mmsb::detail {

// One commit's place in a page's in-flight list: the commit is logged (its record handed to the sink) but not yet
// published, because the sink is still making it durable. Commits publish in list order, so those of one page
// become visible in LSN order; a later commit of the page builds on the head (published bytes plus these deltas).
// Lives in the committing transaction's state, which unlinks it before the commit returns or throws.
struct InFlight {
  const Delta* delta = nullptr;   // the commit's change of the page; null when it only read or rewrote the page
  std::uint64_t epoch_after = 0;  // the page's head epoch and size once this commit is applied
  std::uint64_t size_after = 0;
  InFlight* next = nullptr;                    // guarded by the page's update lock
  std::atomic<bool>* failed = nullptr;         // the owning commit's flag: set when a commit before it fails
  std::atomic<std::uint32_t>* turn = nullptr;  // the owning commit's wake-up word: bumped when this node becomes
                                               // the front of its list or its commit is failed
  bool linked = false;                         // guarded by the page's update lock
};

struct PageRecord {
  PageRecord(PageId page_id, Location where) : id(page_id), location(where) {}

  const PageId id;
  const Location location;
  mutable PageLock mutex;
  std::byte* data = nullptr;            // guarded by mutex
  std::uint64_t capacity = 0;           // guarded by mutex: allocator capacity of `data`
  std::atomic<std::uint64_t> size{0};   // written under the exclusive lock
  std::atomic<std::uint64_t> epoch{0};  // written under the exclusive lock
  std::atomic<bool> deleted{false};     // written under the exclusive lock
  // Set by the commit listener (the propagation engine) on pages it watches, so a commit finds the listener's state
  // for a page with one atomic load instead of a map lookup. Opaque to the runtime.
  std::atomic<void*> listener_tag{nullptr};
  // External page (Runtime::create_external_page): `data` is read-only memory owned by `external_owner`, never by
  // the allocator; `capacity` stays 0 and every write, resize or delta is refused. Atomic: Runtime::make_private()
  // clears it under the exclusive lock while lock-free readers (is_external) may look.
  std::atomic<bool> external{false};
  std::shared_ptr<const void> external_owner;
  // In-flight commits, oldest first (see InFlight); empty without a commit sink. `in_flight_front` changes only
  // under the update lock and is notified on every change.
  std::atomic<InFlight*> in_flight_front{nullptr};
  InFlight* in_flight_back = nullptr;  // guarded by the update lock
  // Bumped (under the update lock) whenever an in-flight commit leaves the list without publishing: the head epoch
  // it made may then be reached again by other bytes, so a transaction's read records this too, not the epoch
  // alone.
  std::atomic<std::uint32_t> withdrawals{0};
  // Runtime::transact()'s fairness: the token of the escalated transact() call that reserved this page (0: none).
  // A commit that would change the page, made on another thread, waits until it is 0 again. Set before the
  // reserver takes and drops the update lock once, so every commit that locks the page after that sees it.
  std::atomic<std::uint32_t> reserved_by{0};

  // The page as the next commit builds on it (published state plus the in-flight deltas). Under the update lock.
  std::uint64_t head_epoch() const noexcept {
    return in_flight_back ? in_flight_back->epoch_after : epoch.load(std::memory_order_relaxed);
  }
  std::uint64_t head_size() const noexcept {
    return in_flight_back ? in_flight_back->size_after : size.load(std::memory_order_relaxed);
  }
};

class PageStore {
 public:
  static constexpr unsigned kSlotBits = 14;
  static constexpr unsigned kChunkBits = 14;
  static constexpr std::uint64_t kMaxSequence = (std::uint64_t{1} << (kSlotBits + kChunkBits)) - 1;

  PageStore() = default;
  ~PageStore();
  PageStore(const PageStore&) = delete;
  PageStore& operator=(const PageStore&) = delete;

  // The record for `sequence`, deleted or not; nullptr if none was ever inserted.
  PageRecord* find(std::uint64_t sequence) const noexcept {
    if (sequence == 0 || sequence > kMaxSequence) return nullptr;
    Chunk* chunk = chunks_[sequence >> kSlotBits].load(std::memory_order_acquire);
    return chunk ? chunk->slots[sequence & kSlotMask].load(std::memory_order_acquire) : nullptr;
  }
  // Publishes `record` under `sequence`; returns false (and keeps ownership with the caller) if taken.
  bool insert(std::uint64_t sequence, PageRecord* record);

 private:
  static constexpr std::uint64_t kSlotMask = (std::uint64_t{1} << kSlotBits) - 1;
  struct Chunk {
    std::array<std::atomic<PageRecord*>, std::size_t{1} << kSlotBits> slots{};
  };
  std::array<std::atomic<Chunk*>, std::size_t{1} << kChunkBits> chunks_{};
};

}  // namespace mmsb::detail
