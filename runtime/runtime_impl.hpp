// runtime/runtime_impl.hpp — Runtime's private state, shared by runtime.cpp and transaction.cpp (internal).
#pragma once

#include <atomic>
#include <chrono>
#include <cstring>
#include <memory>
#include <string>

#include "mmsb/runtime.hpp"
#include "runtime/commit_listener.hpp"
#include "runtime/page_allocator.hpp"
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
  return static_cast<std::uint64_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(
                                        std::chrono::system_clock::now().time_since_epoch())
                                        .count());
}

[[noreturn]] inline void throw_not_found(PageId id) {
  throw Error(ErrorCode::NotFound, "page " + id.to_string() +
                                       " does not exist (never created here, or deleted); check the id you pass");
}

inline std::string range_text(std::uint64_t offset, std::uint64_t length) {
  return "[" + std::to_string(offset) + ", " + std::to_string(offset + length) + ")";
}

}  // namespace detail

// ---------------------------------------------------------------------------------------------------------------
// Runtime::Impl

struct Runtime::Impl {
  explicit Impl(RuntimeOptions opts) : options(opts), next_lsn{opts.first_lsn}, last_lsn{opts.first_lsn - 1} {
    if (options.first_lsn == 0) {
      throw Error(ErrorCode::InvalidArgument, "RuntimeOptions::first_lsn must be at least 1 (LSN 0 means none)");
    }
    if (options.rank > PageId::kMaxRank) {
      throw Error(ErrorCode::InvalidArgument, "rank " + std::to_string(options.rank) + " exceeds the maximum " +
                                                  std::to_string(PageId::kMaxRank));
    }
  }

  RuntimeOptions options;
  detail::PageStore store;
  std::atomic<std::uint64_t> next_sequence{1};
  std::atomic<std::uint64_t> next_lsn;  // initialised from options.first_lsn
  std::atomic<std::uint64_t> last_lsn;
  std::atomic<std::uint64_t> live_pages{0};
  std::shared_ptr<CommitSink> sink;
  std::atomic<detail::CommitListener*> listener{nullptr};  // the propagation engine, if attached

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

  std::uint64_t take_lsn() noexcept {
    std::uint64_t lsn = next_lsn.fetch_add(1, std::memory_order_relaxed);
    // last_lsn is a high-water mark: commits on disjoint pages may finish out of order.
    std::uint64_t seen = last_lsn.load(std::memory_order_relaxed);
    while (seen < lsn && !last_lsn.compare_exchange_weak(seen, lsn, std::memory_order_release)) {
    }
    return lsn;
  }

  PageId create(std::uint64_t sequence, std::uint64_t size, Location location) {
    PageId id = PageId::make(options.rank, sequence);
    auto* record = new PageRecord(id, location);
    try {
      if (size > 0) {
        detail::Block block = PageAllocator::global().allocate(size, detail::Zeroing::Zeroed);
        record->data = block.data;
        record->capacity = block.capacity;
      }
      record->size.store(size, std::memory_order_relaxed);
      if (sink) {
        CommitRecord::CreatedPage created{id, size, location};
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
      if (record->data) PageAllocator::global().deallocate(record->data, record->capacity);
      delete record;
      throw;
    }
    live_pages.fetch_add(1, std::memory_order_relaxed);
    if (detail::CommitListener* l = listener.load(std::memory_order_acquire)) l->page_created(id);
    return id;
  }
};

}  // namespace mmsb
