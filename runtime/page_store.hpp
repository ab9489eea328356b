// runtime/page_store.hpp — page records and the id → record directory (internal).
//
// Records live in a two-level directory indexed by the id's sequence number: lookups are two atomic loads, and
// inserting takes no lock. A deleted page keeps its record (flagged deleted, bytes freed) until the store is
// destroyed, so a reader that found a record never holds a dangling pointer and an id is never reused.
//
// Thread-safety: find() and insert() may run concurrently. A record's bytes and capacity are guarded by its
// mutex; size, epoch and the deleted flag are atomics written only under the exclusive lock, so lock-free reads of
// them are hints that must be re-checked under the lock.
#pragma once

#include <array>
#include <atomic>
#include <cstdint>
#include <memory>

#include "mmsb/page_id.hpp"
#include "mmsb/runtime.hpp"
#include "runtime/page_lock.hpp"

namespace mmsb::detail {

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
