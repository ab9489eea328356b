// runtime/page_store.hpp — page records and the id → record directory (internal).
//
// Records live in a two-level directory indexed by the id's sequence number: lookups are two atomic loads, and
// inserting takes no lock. A deleted page keeps its record (flagged deleted, bytes freed) until the store is
// destroyed, so a reader that found a record never holds a dangling pointer and an id is never reused. Because
// records are never freed one by one, the store carves them from slabs (one allocation per thousands of pages),
// and a page of at most 8 bytes keeps its bytes inside its record: a million such pages cost ~88 MB, not ~190.
//
// Thread-safety: find() and insert() may run concurrently. A record's bytes and capacity are guarded by its
// mutex; size, epoch and the deleted flag are atomics written only under the exclusive lock, so lock-free reads of
// them are hints that must be re-checked under the lock. The in-flight list is guarded by the update lock (which
// the exclusive lock includes); its front is atomic so that commits can wait for their turn without a lock.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <unordered_map>
#include <vector>

#include "mmsb/page_id.hpp"
#include "mmsb/runtime.hpp"
#include "runtime/page_allocator.hpp"
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
  // Pages of at most this many bytes keep them in the record itself (no allocator block): a graph of 10^6 8-byte
  // values would otherwise spend a 64-byte block on each. 8-byte aligned, so a T that fits the page at an offset
  // aligned for it is aligned in memory too (alignof(T) <= sizeof(T) <= 8).
  static constexpr std::uint64_t kInlineBytes = 8;

  PageRecord(PageId page_id, Location where) : id(page_id), location(where) {}

  const PageId id;
  const Location location;
  std::atomic<bool> deleted{false};  // written under the exclusive lock
  // External page (Runtime::create_external_page): `data` is read-only memory owned by the store's owner table
  // (PageStore::set_external_owner), never by the allocator; `capacity` stays 0 and every write, resize or delta is
  // refused. Atomic: Runtime::make_private() clears it under the exclusive lock while lock-free readers
  // (is_external) may look.
  std::atomic<bool> external{false};
  // Set, never cleared, before `data` first points at memory that can be unmapped while the record lives:
  // external memory, or an allocator block above its size classes (those are unmapped when freed). A page
  // without it has only ever held its inline bytes or class blocks, which stay mapped until exit, so an
  // optimistic reader (read_unlocked) may copy from a `data` it loaded without the lock.
  std::atomic<bool> bytes_may_unmap{false};
  mutable PageLock mutex;
  std::byte* data = nullptr;            // guarded by mutex: the inline bytes, an allocator block, or external memory
  std::atomic<std::uint64_t> size{0};   // written under the exclusive lock
  std::atomic<std::uint64_t> epoch{0};  // written under the exclusive lock
  // Set by the commit listener (the propagation engine) on pages it watches, so a commit finds the listener's state
  // for a page with one atomic load instead of a map lookup. Opaque to the runtime.
  std::atomic<void*> listener_tag{nullptr};
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

 private:
  // Guarded by mutex. While `data` points at `bytes`, the page's bytes themselves (zero until first written);
  // otherwise the capacity of the allocator block `data` (0 without one). Sharing the word keeps a record at 80 bytes.
  union Room {
    std::uint64_t block_capacity = 0;
    std::byte bytes[kInlineBytes];
  } room_;

 public:
  // The page as the next commit builds on it (published state plus the in-flight deltas). Under the update lock.
  std::uint64_t head_epoch() const noexcept {
    return in_flight_back ? in_flight_back->epoch_after : epoch.load(std::memory_order_relaxed);
  }
  std::uint64_t head_size() const noexcept {
    return in_flight_back ? in_flight_back->size_after : size.load(std::memory_order_relaxed);
  }

  // Gives a record without bytes (data null) room for `bytes`: its inline bytes when they fit (zero: a fresh
  // record's are), else an allocator block. Throws Error(ResourceExhausted) when the OS refuses memory.
  void take_bytes(std::uint64_t bytes, Zeroing zeroing);
  // take_bytes, then copies `count` bytes from `bytes` (which must not be the record's own) into the new room.
  void take_copy(const std::byte* bytes, std::uint64_t count);
  // Bytes `data` can hold without a new block (0 for external pages and pages without bytes). Under the lock.
  std::uint64_t capacity() const noexcept { return holds_inline() ? kInlineBytes : room_.block_capacity; }
  bool holds_inline() const noexcept { return data == room_.bytes; }
  // Where the bytes were, read without the lock: only a prefetch's target, never dereferenced (a commit may move
  // them meanwhile; a stale address costs a useless prefetch). Hidden from ThreadSanitizer for that reason.
  [[gnu::no_sanitize("thread")]] const std::byte* bytes_hint() const noexcept {
    return __atomic_load_n(&data, __ATOMIC_RELAXED);
  }
  // `data` loaded without the lock, for an optimistic reader that validates what it copied (read_unlocked in
  // runtime/transaction.cpp). Acquire: a reader that sees a pointer also sees the bytes_may_unmap stored before
  // it. Hidden from ThreadSanitizer: the race is the design (a seqlock on the epoch).
  [[gnu::no_sanitize("thread")]] const std::byte* bytes_unlocked() const noexcept {
    return __atomic_load_n(&data, __ATOMIC_ACQUIRE);
  }
  // Whether `data` is an allocator block that this record must give back.
  bool owns_block() const noexcept {
    return data != nullptr && !holds_inline() && !external.load(std::memory_order_relaxed);
  }
  // Replaces the bytes with `block` (an allocator block of capacity >= the size), giving back the old block.
  void adopt_block(Block block) noexcept;
  // Gives back the allocator block, if any; the record holds no bytes afterwards.
  void free_bytes() noexcept;

 private:
  // Points `data` at `block` (flagging bytes_may_unmap first when the allocator maps it alone).
  void set_block(Block block) noexcept;

 public:
};

class PageStore {
 public:
  static constexpr unsigned kSlotBits = 14;
  static constexpr unsigned kChunkBits = 14;
  static constexpr std::uint64_t kMaxSequence = (std::uint64_t{1} << (kSlotBits + kChunkBits)) - 1;

  PageStore();
  ~PageStore();
  PageStore(const PageStore&) = delete;
  PageStore& operator=(const PageStore&) = delete;

  // The record for `sequence`, deleted or not; nullptr if none was ever inserted.
  PageRecord* find(std::uint64_t sequence) const noexcept {
    if (sequence == 0 || sequence > kMaxSequence) return nullptr;
    Chunk* chunk = std::atomic_ref<Chunk*>(chunks_[sequence >> kSlotBits]).load(std::memory_order_acquire);
    return chunk ? std::atomic_ref<PageRecord*>(chunk->slots[sequence & kSlotMask]).load(std::memory_order_acquire)
                 : nullptr;
  }
  // Publishes `record` (from make_record()) under `sequence`; returns false if taken (the caller then discards it).
  bool insert(std::uint64_t sequence, PageRecord* record);

  // A new record from the store's arena: records are carved from slabs of many records, not allocated one by one,
  // and live until the store is destroyed (a deleted page keeps its record). Throws std::bad_alloc.
  PageRecord* make_record(PageId id, Location where);
  // Destroys a record from make_record() that was never inserted (its page's creation failed); its memory serves
  // the next make_record().
  void discard(PageRecord* record) noexcept;

  // The owner of an external page's bytes (Runtime::create_external_page), kept here rather than in every record.
  void set_external_owner(std::uint64_t sequence, std::shared_ptr<const void> owner);
  // Removes and returns the owner of `sequence`'s bytes (null if none), to be released outside any page lock.
  std::shared_ptr<const void> take_external_owner(std::uint64_t sequence) noexcept;

 private:
  static constexpr std::uint64_t kSlotMask = (std::uint64_t{1} << kSlotBits) - 1;
  // The directory's two levels are plain pointer arrays mapped straight from the OS, read and written through
  // std::atomic_ref: they start as untouched zero pages, so only the parts in use become resident (a small runtime
  // would otherwise hold 256 KiB of empty directory).
  struct Chunk {
    PageRecord* slots[std::size_t{1} << kSlotBits];
  };
  Chunk** chunks_;  // 2^kChunkBits entries

  // The record arena. Slabs double from kFirstSlabRecords up to kMaxSlabRecords records, so a small runtime
  // stays small and a large one makes few allocations.
  static constexpr std::size_t kFirstSlabRecords = 16;
  static constexpr std::size_t kMaxSlabRecords = 8192;
  struct alignas(PageRecord) RecordSpace {
    std::byte bytes[sizeof(PageRecord)];
  };
  std::mutex arena_mutex_;
  std::vector<std::unique_ptr<RecordSpace[]>> slabs_;  // guarded by arena_mutex_
  std::size_t slab_used_ = 0;                          // records carved from slabs_.back()
  std::size_t slab_size_ = 0;                          // records in slabs_.back()
  std::vector<RecordSpace*> spare_;                    // discarded records' memory

  std::mutex owners_mutex_;
  std::unordered_map<std::uint64_t, std::shared_ptr<const void>> external_owners_;  // guarded by owners_mutex_
};

}  // namespace mmsb::detail
