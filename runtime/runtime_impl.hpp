// runtime/runtime_impl.hpp — Runtime's private state, shared by runtime.cpp and transaction.cpp (internal).
#pragma once

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstring>
#include <memory>
#include <span>
#include <string>

#include "mmsb/runtime.hpp"
#include "runtime/commit_gate.hpp"
#include "runtime/commit_listener.hpp"
#include "runtime/page_allocator.hpp"
#include "runtime/page_names.hpp"
#include "runtime/page_store.hpp"

namespace mmsb {

using detail::PageAllocator;
using detail::PageRecord;

namespace detail {

// Gives mmsb's own modules (graph/, serialize/) the runtime's internals.
struct RuntimeAccess {
  static Runtime::Impl& of(Runtime& runtime) noexcept { return *runtime.impl_; }
};

inline std::uint64_t now_ns() {
  return static_cast<std::uint64_t>(
      std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::system_clock::now().time_since_epoch())
          .count());
}

[[noreturn]] inline void throw_not_found(PageId id) {
  throw Error(ErrorCode::NotFound,
              "page " + id.to_string() + " does not exist (never created here, or deleted); check the id you pass");
}

inline std::string range_text(std::uint64_t offset, std::uint64_t length) {
  return "[" + std::to_string(offset) + ", " + std::to_string(offset + length) + ")";
}

// Copies [offset, offset + out.size()) of a page the caller holds locked (shared at least). Throws Error(NotFound)
// for a deleted page and Error(InvalidArgument) for a range outside it.
inline void copy_out(const PageRecord& page, std::uint64_t offset, std::span<std::byte> out) {
  if (page.deleted.load(std::memory_order_relaxed)) throw_not_found(page.id);
  const std::uint64_t size = page.size.load(std::memory_order_relaxed);
  if (offset > size || size - offset < out.size()) {
    throw Error(ErrorCode::InvalidArgument, "read of " + range_text(offset, out.size()) + " is outside page " +
                                                page.id.to_string() + " of " + std::to_string(size) + " bytes");
  }
  if (!out.empty()) std::memcpy(out.data(), page.data + offset, out.size());
}

}  // namespace detail

// ---------------------------------------------------------------------------------------------------------------
// Runtime::Impl

struct Runtime::Impl {
  explicit Impl(RuntimeOptions opts) : options(opts), next_lsn{opts.first_lsn}, replayed_lsn{opts.first_lsn - 1} {
    if (options.first_lsn == 0) {
      throw Error(ErrorCode::InvalidArgument, "RuntimeOptions::first_lsn must be at least 1 (LSN 0 means none)");
    }
    if (options.rank > PageId::kMaxRank) {
      throw Error(ErrorCode::InvalidArgument,
                  "rank " + std::to_string(options.rank) + " exceeds the maximum " + std::to_string(PageId::kMaxRank));
    }
  }

  RuntimeOptions options;
  detail::PageStore store;
  std::atomic<std::uint64_t> next_sequence{1};
  std::atomic<std::uint64_t> next_lsn;  // initialised from options.first_lsn
  // Recovery only: the highest LSN replayed, which set_next_lsn() may move next_lsn below. Outside recovery the
  // highest LSN taken is next_lsn - 1, so a commit takes its LSN with one atomic add and no high-water update.
  std::atomic<std::uint64_t> replayed_lsn;
  std::atomic<std::uint64_t> live_pages{0};
  std::shared_ptr<CommitSink> sink;
  std::atomic<detail::CommitListener*> listener{nullptr};  // the propagation engine, if attached
  detail::CommitGate gate;  // held by every LSN-taking operation (sinkless commits excepted); closed by checkpoints
  detail::PageNames names;  // names of pages (Runtime::create_page(name, ...), rename_page())
  // Runtime::transact()'s serial turn, a ticket lock: an escalated call takes a ticket and waits until it is served.
  std::atomic<std::uint32_t> serial_next_ticket{0};
  std::atomic<std::uint32_t> serial_serving{0};

  // The record of a page of this runtime, or nullptr. The record may be flagged deleted: re-check under its lock.
  PageRecord* find(PageId id) const noexcept {
    if (id.rank() != options.rank) return nullptr;
    return store.find(id.sequence());
  }
  PageRecord* find_or_throw(PageId id) const {
    PageRecord* record = find(id);
    if (!record) detail::throw_not_found(id);
    return record;
  }

  // As find_or_throw(), also refusing a page already flagged deleted. A hint for staging: commits re-check
  // under the page lock.
  PageRecord* find_live_or_throw(PageId id) const {
    PageRecord* record = find_or_throw(id);
    if (record->deleted.load(std::memory_order_relaxed)) detail::throw_not_found(id);
    return record;
  }

  std::uint64_t take_lsn() noexcept { return next_lsn.fetch_add(1, std::memory_order_acq_rel); }
  // The highest LSN taken so far (Runtime::last_lsn()): a high-water mark, since commits on disjoint pages may
  // finish out of order and replay may run below it.
  std::uint64_t last_lsn() const noexcept {
    return std::max(next_lsn.load(std::memory_order_acquire) - 1, replayed_lsn.load(std::memory_order_acquire));
  }

  PageId create(std::uint64_t sequence, std::uint64_t size, Location location, std::string_view name = {}) {
    detail::GateGuard inside(gate);
    PageId id = PageId::make(options.rank, sequence);
    PageRecord* record = store.make_record(id, location);
    try {
      if (!name.empty()) names.claim(name, id);  // before the LSN: a taken name fails with no trace
      record->take_bytes(size, detail::Zeroing::Zeroed);
      record->size.store(size, std::memory_order_relaxed);
      if (sink) {
        CommitRecord::CreatedPage created{id, size, location, std::string(name)};
        CommitRecord rec;
        rec.lsn = take_lsn();
        rec.timestamp_ns = detail::now_ns();
        rec.created = std::span<const CommitRecord::CreatedPage>(&created, 1);
        sink->write(rec);
      } else {
        take_lsn();
      }
      if (!store.insert(sequence, record)) {
        throw Error(ErrorCode::InvalidArgument, "page id " + id.to_string() + " is already in use");
      }
    } catch (...) {
      store.discard(record);
      if (!name.empty()) names.unclaim(name, id);
      throw;
    }
    if (!name.empty()) names.bind(id, name);
    live_pages.fetch_add(1, std::memory_order_relaxed);
    if (detail::CommitListener* l = listener.load(std::memory_order_acquire)) l->page_created(id);
    return id;
  }

  // Calls fn(record) for every live page, in id order, without locking: the caller holds the gate closed (no
  // page is being created, deleted or committed to) or otherwise keeps the runtime quiet.
  template <class Fn>
  void for_each_live_page(Fn&& fn) const {
    const std::uint64_t end = next_sequence.load(std::memory_order_acquire);
    for (std::uint64_t seq = 1; seq < end && seq <= detail::PageStore::kMaxSequence; ++seq) {
      PageRecord* record = store.find(seq);
      if (record && !record->deleted.load(std::memory_order_relaxed)) fn(*record);
    }
  }

  // ---- Recovery only: called on a runtime that no other thread uses yet, with no sink and no listener.

  // Makes `sequence` (and everything below it) unavailable to create_page()/reserve_ids().
  void reserve_through(std::uint64_t sequence) noexcept {
    std::uint64_t seen = next_sequence.load(std::memory_order_relaxed);
    while (seen <= sequence && !next_sequence.compare_exchange_weak(seen, sequence + 1)) {
    }
  }
  // Inserts a page with its bytes, epoch and name as a checkpoint stored them; takes no LSN.
  void restore_page(PageId id, std::uint64_t epoch, Location location, const std::byte* bytes, std::uint64_t size,
                    std::string_view name = {}) {
    if (id.rank() != options.rank || !id.valid() || id.sequence() > detail::PageStore::kMaxSequence) {
      throw Error(ErrorCode::Corruption,
                  "page " + id.to_string() + " cannot belong to a runtime of rank " + std::to_string(options.rank));
    }
    if (!name.empty()) {
      try {
        names.claim(name, id);
      } catch (const Error& e) {
        throw Error(ErrorCode::Corruption, "page " + id.to_string() + " cannot be restored: " + e.what());
      }
      names.bind(id, name);
    }
    PageRecord* record = store.make_record(id, location);
    try {
      record->take_copy(bytes, size);
    } catch (...) {
      store.discard(record);
      throw;
    }
    record->size.store(size, std::memory_order_relaxed);
    record->epoch.store(epoch, std::memory_order_relaxed);
    if (!store.insert(id.sequence(), record)) {
      store.discard(record);
      throw Error(ErrorCode::Corruption, "page " + id.to_string() + " appears twice");
    }
    reserve_through(id.sequence());
    live_pages.fetch_add(1, std::memory_order_relaxed);
  }
  // Applies the deltas of one replayed commit record straight to the pages (all checked first, then all applied:
  // no Transaction, no undo capture). Throws Error(Corruption) naming the first delta that does not apply.
  void replay_deltas(std::span<const Delta> deltas, std::uint64_t lsn) {
    for (std::size_t i = 0; i < deltas.size(); ++i) {
      const Delta& d = deltas[i];
      PageRecord* record = find(d.page);
      auto fail = [&](const std::string& what) {
        throw Error(ErrorCode::Corruption, "log record of LSN " + std::to_string(lsn) + " does not apply to page " +
                                               d.page.to_string() + ": " + what);
      };
      if (i > 0 && !(deltas[i - 1].page < d.page)) fail("its deltas are not in strictly increasing page order");
      if (!record || record->deleted.load(std::memory_order_relaxed)) fail("the page does not exist");
      const std::uint64_t epoch = record->epoch.load(std::memory_order_relaxed);
      const std::uint64_t size = record->size.load(std::memory_order_relaxed);
      if (epoch != d.base_epoch || size != d.base_size) {
        fail("it changes epoch " + std::to_string(d.base_epoch) + " (" + std::to_string(d.base_size) +
             " bytes), the page is at epoch " + std::to_string(epoch) + " (" + std::to_string(size) + " bytes)");
      }
    }
    for (const Delta& d : deltas) {
      PageRecord* found = find(d.page);
      if (!found) continue;  // not reached: checked above
      PageRecord& page = *found;
      const std::uint64_t size = page.size.load(std::memory_order_relaxed);
      if (d.size > page.capacity()) {
        detail::Block grown = PageAllocator::global().allocate(d.size, detail::Zeroing::Zeroed);
        if (size > 0) std::memcpy(grown.data, page.data, size);
        page.adopt_block(grown);
      } else if (d.size > size) {
        std::memset(page.data + size, 0, d.size - size);
      }
      const std::byte* src = d.payload.data();
      for (const ByteRange& r : d.ranges) {
        std::memcpy(page.data + r.offset, src, r.length);
        src += r.length;
      }
      page.size.store(d.size, std::memory_order_relaxed);
      page.epoch.store(d.base_epoch + d.epoch_count, std::memory_order_relaxed);
    }
  }

  // Applies a replayed rename (no sink, no LSN). Throws Error(Corruption) when the page does not exist or the name
  // is bad or taken.
  void replay_rename(PageId id, std::string_view name, std::uint64_t lsn) {
    PageRecord* record = find(id);
    try {
      if (!record || record->deleted.load(std::memory_order_relaxed)) detail::throw_not_found(id);
      if (!name.empty()) names.claim(name, id);
    } catch (const Error& e) {
      throw Error(ErrorCode::Corruption,
                  "log record of LSN " + std::to_string(lsn) + " renames page " + id.to_string() + ": " + e.what());
    }
    names.bind(id, name);
  }

  // The next LSN-taking operation takes exactly `lsn` (replaying a log record at its own LSN). LSNs below the
  // last one may be replayed too: last_lsn() stays the high-water mark.
  void set_next_lsn(std::uint64_t lsn) noexcept {
    replayed_lsn.store(last_lsn(), std::memory_order_relaxed);
    next_lsn.store(lsn, std::memory_order_relaxed);
  }
  // After replay: new commits continue after `last`.
  void continue_after(std::uint64_t last) noexcept {
    replayed_lsn.store(std::max(last_lsn(), last), std::memory_order_relaxed);
    next_lsn.store(last + 1, std::memory_order_relaxed);
  }
};

}  // namespace mmsb
