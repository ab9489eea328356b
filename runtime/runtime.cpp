#include "mmsb/runtime.hpp"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <mutex>
#include <optional>
#include <shared_mutex>
#include <string>
#include <thread>

#include "runtime/page_allocator.hpp"
#include "runtime/page_store.hpp"
#include "runtime/runtime_impl.hpp"

namespace mmsb {

PageId IdBlock::next() {
  if (remaining_ == 0) {
    throw Error(ErrorCode::ResourceExhausted, "the id block is used up; reserve a new one with reserve_ids()");
  }
  PageId id = next_;
  next_ = PageId(next_.value() + 1);
  --remaining_;
  return id;
}

Runtime::Runtime(RuntimeOptions options) : impl_(std::make_unique<Impl>(options)) {
  // Starts the page allocator (once per process: its hwloc topology and the log line that reports it) with the
  // first runtime, as when every page took a block: pages of a few bytes now live in their records and never ask.
  (void)PageAllocator::global();
}
Runtime::~Runtime() = default;

const RuntimeOptions& Runtime::options() const noexcept { return impl_->options; }

namespace {

std::uint64_t next_sequence(Runtime::Impl& impl) {
  std::uint64_t sequence = impl.next_sequence.fetch_add(1, std::memory_order_relaxed);
  if (sequence > detail::PageStore::kMaxSequence) {
    throw Error(ErrorCode::ResourceExhausted,
                "this runtime has used all " + std::to_string(detail::PageStore::kMaxSequence) + " page ids");
  }
  return sequence;
}

std::uint64_t reserved_sequence(const Runtime::Impl& impl, PageId reserved_id) {
  if (reserved_id.rank() != impl.options.rank || !reserved_id.valid() ||
      reserved_id.sequence() >= impl.next_sequence.load(std::memory_order_relaxed)) {
    throw Error(ErrorCode::InvalidArgument,
                "page id " + reserved_id.to_string() + " was not reserved by this runtime; use reserve_ids()");
  }
  return reserved_id.sequence();
}

}  // namespace

PageId Runtime::create_page(std::uint64_t size, Location location) {
  return impl_->create(next_sequence(*impl_), size, location);
}

PageId Runtime::create_page(PageId reserved_id, std::uint64_t size, Location location) {
  return impl_->create(reserved_sequence(*impl_, reserved_id), size, location);
}

PageId Runtime::create_page(std::string_view name, std::uint64_t size, Location location) {
  if (auto problem = detail::page_name_problem(name)) throw Error(ErrorCode::InvalidArgument, *problem);
  return impl_->create(next_sequence(*impl_), size, location, name);
}

PageId Runtime::create_page(PageId reserved_id, std::string_view name, std::uint64_t size, Location location) {
  if (auto problem = detail::page_name_problem(name)) throw Error(ErrorCode::InvalidArgument, *problem);
  return impl_->create(reserved_sequence(*impl_, reserved_id), size, location, name);
}

PageId Runtime::open_page(std::string_view name, std::uint64_t size, Location location) {
  auto existing = [&](PageId id) {
    const PageInfo page = info(id);
    if (page.size != size || page.location != location) {
      throw Error(ErrorCode::InvalidArgument,
                  "page '" + std::string(name) + "' (" + id.to_string() + ") exists with " + std::to_string(page.size) +
                      " bytes at location " + std::to_string(static_cast<int>(page.location)) + ", not " +
                      std::to_string(size) + " bytes at location " + std::to_string(static_cast<int>(location)) +
                      "; resize_page() it, or use another name");
    }
    return id;
  };
  for (;;) {
    if (std::optional<PageId> id = find(name)) return existing(*id);
    try {
      return create_page(name, size, location);
    } catch (const Error&) {
      // Another thread is creating the page (the name is claimed, not yet given): wait for it to finish.
      if (!impl_->names.held(name)) throw;
      std::this_thread::yield();
    }
  }
}

std::optional<PageId> Runtime::find(std::string_view name) const { return impl_->names.find(name); }

std::string Runtime::name_of(PageId id) const {
  PageRecord* record = impl_->find_or_throw(id);
  if (record->deleted.load(std::memory_order_relaxed)) detail::throw_not_found(id);
  return impl_->names.name_of(id);
}

std::vector<std::pair<PageId, std::string>> Runtime::page_names() const { return impl_->names.all(); }

std::uint64_t Runtime::rename_page(PageId id, std::string_view new_name) {
  PageRecord* record = impl_->find_or_throw(id);
  detail::GateGuard inside(impl_->gate);
  // The page's exclusive lock orders renames (and deletion) of one page, as commits are ordered.
  std::unique_lock lock(record->mutex);
  if (record->deleted.load(std::memory_order_relaxed)) detail::throw_not_found(id);
  if (impl_->names.name_of(id) == new_name) return 0;
  if (!new_name.empty()) impl_->names.claim(new_name, id);
  std::uint64_t lsn = 0;
  try {
    lsn = impl_->take_lsn();
    if (impl_->sink) {
      CommitRecord::RenamedPage renamed{id, std::string(new_name)};
      CommitRecord rec;
      rec.lsn = lsn;
      rec.timestamp_ns = detail::now_ns();
      rec.renamed = std::span<const CommitRecord::RenamedPage>(&renamed, 1);
      impl_->sink->write(rec);
    }
  } catch (...) {
    if (!new_name.empty()) impl_->names.unclaim(new_name, id);
    throw;
  }
  impl_->names.bind(id, new_name);
  return lsn;
}

PageId Runtime::create_external_page(std::span<const std::byte> bytes, std::shared_ptr<const void> owner,
                                     Location location) {
  std::uint64_t sequence = impl_->next_sequence.fetch_add(1, std::memory_order_relaxed);
  if (sequence > detail::PageStore::kMaxSequence) {
    throw Error(ErrorCode::ResourceExhausted,
                "this runtime has used all " + std::to_string(detail::PageStore::kMaxSequence) + " page ids");
  }
  PageId id = PageId::make(impl_->options.rank, sequence);
  PageRecord* record = impl_->store.make_record(id, location);
  // The bytes are never written through this record: every write path refuses external pages (transaction.cpp).
  record->data = const_cast<std::byte*>(bytes.data());
  record->external = true;
  record->bytes_may_unmap.store(true, std::memory_order_relaxed);  // its owner may unmap it (make_private, delete)
  record->size.store(bytes.size(), std::memory_order_relaxed);
  try {
    impl_->store.set_external_owner(sequence, std::move(owner));
    if (impl_->sink) {
      CommitRecord::CreatedPage created{id, bytes.size(), location};
      CommitRecord rec;
      rec.lsn = impl_->take_lsn();
      rec.timestamp_ns = detail::now_ns();
      rec.created = std::span<const CommitRecord::CreatedPage>(&created, 1);
      impl_->sink->write(rec);
    } else {
      impl_->take_lsn();
    }
    if (!impl_->store.insert(sequence, record)) {
      throw Error(ErrorCode::Internal, "page id " + id.to_string() + " is already in use");
    }
  } catch (...) {
    impl_->store.discard(record);  // external: its bytes are not the allocator's
    impl_->store.take_external_owner(sequence).reset();
    throw;
  }
  impl_->live_pages.fetch_add(1, std::memory_order_relaxed);
  if (detail::CommitListener* l = impl_->listener.load(std::memory_order_acquire)) l->page_created(id);
  return id;
}

bool Runtime::is_external(PageId id) const {
  PageRecord* record = impl_->find_or_throw(id);
  if (record->deleted.load(std::memory_order_relaxed)) detail::throw_not_found(id);
  return record->external;
}

bool Runtime::make_private(PageId id) {
  PageRecord* record = impl_->find_or_throw(id);
  std::unique_lock lock(record->mutex);
  if (record->deleted.load(std::memory_order_relaxed)) detail::throw_not_found(id);
  if (!record->external) return false;
  const std::uint64_t size = record->size.load(std::memory_order_relaxed);
  const std::byte* external_bytes = record->data;
  record->data = nullptr;  // not freed: the owner's memory
  try {
    record->take_copy(external_bytes, size);
  } catch (...) {
    record->data = const_cast<std::byte*>(external_bytes);
    throw;
  }
  record->external = false;
  std::shared_ptr<const void> owner = impl_->store.take_external_owner(id.sequence());
  lock.unlock();
  owner.reset();  // may unmap a file: outside the lock
  return true;
}

IdBlock Runtime::reserve_ids(std::uint64_t count) {
  std::uint64_t first = impl_->next_sequence.fetch_add(count, std::memory_order_relaxed);
  if (first + count - 1 > detail::PageStore::kMaxSequence || first + count < first) {
    throw Error(ErrorCode::ResourceExhausted, "cannot reserve " + std::to_string(count) +
                                                  " more page ids: the id space holds " +
                                                  std::to_string(detail::PageStore::kMaxSequence));
  }
  return IdBlock(PageId::make(impl_->options.rank, first), count);
}

void Runtime::delete_page(PageId id) {
  PageRecord* record = impl_->find_or_throw(id);
  std::optional<detail::GateGuard> inside(std::in_place, impl_->gate);
  // The update lock keeps commits off the page while its record is logged; readers go on until the upgrade. Logged
  // commits still in flight on the page publish first.
  for (;;) {
    record->mutex.lock_update();
    detail::InFlight* first = record->in_flight_front.load(std::memory_order_acquire);
    if (first == nullptr) break;
    record->mutex.unlock_update();
    record->in_flight_front.wait(first, std::memory_order_acquire);
  }
  try {
    if (record->deleted.load(std::memory_order_relaxed)) detail::throw_not_found(id);
    const std::uint64_t lsn = impl_->take_lsn();
    if (impl_->sink) {
      CommitRecord rec;
      rec.lsn = lsn;
      rec.timestamp_ns = detail::now_ns();
      rec.deleted = std::span<const PageId>(&id, 1);
      impl_->sink->write(rec);
    }
  } catch (...) {
    record->mutex.unlock_update();
    throw;
  }
  record->mutex.upgrade();  // holds no other page lock: cannot deadlock
  record->deleted.store(true, std::memory_order_relaxed);
  std::shared_ptr<const void> owner;  // released after the lock: may unmap a file
  if (record->external.load(std::memory_order_relaxed)) owner = impl_->store.take_external_owner(id.sequence());
  record->free_bytes();
  record->size.store(0, std::memory_order_relaxed);
  impl_->live_pages.fetch_sub(1, std::memory_order_relaxed);
  impl_->names.forget(id);  // a deleted page's name is free again (the log record implies it)
  record->mutex.unlock();
  inside.reset();
  if (detail::CommitListener* l = impl_->listener.load(std::memory_order_acquire)) l->page_deleted(id);
}

std::uint64_t Runtime::resize_page(PageId id, std::uint64_t new_size) {
  Transaction txn = begin();
  txn.resize(id, new_size);
  return txn.commit();
}

bool Runtime::contains(PageId id) const noexcept {
  PageRecord* record = impl_->find(id);
  if (!record) return false;
  std::shared_lock lock(record->mutex);
  return !record->deleted.load(std::memory_order_relaxed);
}

PageInfo Runtime::info(PageId id) const {
  PageRecord* record = impl_->find_or_throw(id);
  std::shared_lock lock(record->mutex);
  if (record->deleted.load(std::memory_order_relaxed)) detail::throw_not_found(id);
  return {id, record->size.load(std::memory_order_relaxed), record->epoch.load(std::memory_order_relaxed),
          record->location};
}

std::vector<PageId> Runtime::page_ids() const {
  std::vector<PageId> ids;
  const std::uint64_t end = impl_->next_sequence.load(std::memory_order_acquire);
  for (std::uint64_t seq = 1; seq < end && seq <= detail::PageStore::kMaxSequence; ++seq) {
    PageRecord* record = impl_->store.find(seq);
    if (record && !record->deleted.load(std::memory_order_relaxed)) ids.push_back(record->id);
  }
  return ids;
}

std::uint64_t Runtime::page_count() const noexcept { return impl_->live_pages.load(std::memory_order_relaxed); }

void Runtime::read(PageId id, std::uint64_t offset, std::span<std::byte> out) const {
  PageRecord* record = impl_->find_or_throw(id);
  std::shared_lock lock(record->mutex);
  detail::copy_out(*record, offset, out);
}

std::vector<std::byte> Runtime::read_all(PageId id) const {
  PageRecord* record = impl_->find_or_throw(id);
  std::shared_lock lock(record->mutex);
  if (record->deleted.load(std::memory_order_relaxed)) detail::throw_not_found(id);
  std::uint64_t size = record->size.load(std::memory_order_relaxed);
  return std::vector<std::byte>(record->data, record->data + size);
}

std::uint64_t Runtime::last_lsn() const noexcept { return impl_->last_lsn(); }

void Runtime::set_commit_sink(std::shared_ptr<CommitSink> sink) { impl_->sink = std::move(sink); }

// ---------------------------------------------------------------------------------------------------------------
// ReadView

struct ReadView::Impl {
  std::vector<PageRecord*> pages;  // sorted by id, unique, each locked shared
  ~Impl() {
    for (PageRecord* page : pages) page->mutex.unlock_shared();
  }
  PageRecord* find(PageId id) const {
    auto it =
        std::lower_bound(pages.begin(), pages.end(), id, [](const PageRecord* p, PageId key) { return p->id < key; });
    if (it == pages.end() || (*it)->id != id) {
      throw Error(ErrorCode::NotFound, "page " + id.to_string() + " is not part of this read view");
    }
    return *it;
  }
};

ReadView::ReadView(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
ReadView::ReadView(ReadView&&) noexcept = default;
ReadView& ReadView::operator=(ReadView&&) noexcept = default;
ReadView::~ReadView() = default;

std::span<const std::byte> ReadView::bytes(PageId id) const {
  PageRecord* page = impl_->find(id);
  return {page->data, page->size.load(std::memory_order_relaxed)};
}

PageInfo ReadView::info(PageId id) const {
  PageRecord* page = impl_->find(id);
  return {id, page->size.load(std::memory_order_relaxed), page->epoch.load(std::memory_order_relaxed), page->location};
}

void ReadView::throw_out_of_range(PageId id, std::uint64_t offset, std::uint64_t length, std::uint64_t size) {
  throw Error(ErrorCode::InvalidArgument, "read of " + detail::range_text(offset, length) + " is outside page " +
                                              id.to_string() + " of " + std::to_string(size) + " bytes");
}

ReadView Runtime::read_view(std::span<const PageId> ids) const {
  auto impl = std::make_unique<ReadView::Impl>();
  std::vector<PageRecord*> records;
  records.reserve(ids.size());
  for (PageId id : ids) records.push_back(impl_->find_or_throw(id));
  std::sort(records.begin(), records.end(), [](const PageRecord* a, const PageRecord* b) { return a->id < b->id; });
  records.erase(std::unique(records.begin(), records.end()), records.end());
  impl->pages.reserve(records.size());
  // Lock in id order, as commits do, so views and commits never deadlock.
  for (PageRecord* record : records) {
    record->mutex.lock_shared();
    impl->pages.push_back(record);  // from here on, Impl's destructor unlocks it
    if (record->deleted.load(std::memory_order_relaxed)) detail::throw_not_found(record->id);
  }
  return ReadView(std::move(impl));
}

}  // namespace mmsb
