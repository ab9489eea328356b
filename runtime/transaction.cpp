// Transactions: staging, and the commit protocol described in mmsb/runtime.hpp ("Visibility").
//
// In memory (no sink): lock the touched pages in PageId order (exclusive where the commit changes a page, shared
// where it only validates one) → check everything (existence, epochs, bounds) and allocate any memory a resize
// needs → build each page's delta (only the bytes that differ, with undo bytes) → take the LSN → apply (cannot
// fail) → publish to the listener → unlock.
//
// Logged (a sink): the same steps up to the LSN run under update locks, which readers ignore, against each page's
// head (published bytes plus the deltas of in-flight commits); then the record is appended to the sink and the
// commit joins each page's in-flight list, and the update locks are released. Outside every lock the commit waits
// for the sink to make the record durable (commits of one page share a sync), then for its turn at the front of
// each of its pages' lists, and publishes: exclusive locks, apply, listener, unlock. If the sink fails, the commit
// leaves its lists and fails every commit behind it there (they built on it). Everything that can fail happens
// before the record is appended or is a sink failure undone this way, which is what makes a failed commit leave
// no trace.
//
// Transaction state objects are recycled through a per-thread pool so that, once warm, a commit allocates
// nothing: the staged writes, the deltas and their vectors keep their capacity.
#include <algorithm>
#include <atomic>
#include <cstring>
#include <memory>
#include <numeric>
#include <shared_mutex>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "delta/changed_runs.hpp"
#include "delta/copy_bytes.hpp"
#include "delta/heap_bytes.hpp"
#include "mmsb/runtime.hpp"
#include "runtime/runtime_impl.hpp"

namespace mmsb {

namespace detail {
// An escalated Runtime::transact() call's reservations (mmsb/runtime.hpp, "Fairness"): it holds the runtime's
// serial turn, so no two calls reserve at once and none ever waits for another's reservation.
struct Reservations {
  std::uint32_t token = 0;  // PageRecord::reserved_by: unique among the calls of all runtimes that overlap
  std::vector<PageRecord*> pages;

  // Reserves `page` before the call's transaction reads it. Taking and dropping the update lock once lets every
  // commit that locked the page before the reservation finish; every commit that locks it after sees it.
  void reserve(PageRecord& page) {
    if (page.reserved_by.load(std::memory_order_relaxed) == token) return;
    pages.push_back(&page);
    page.reserved_by.store(token, std::memory_order_relaxed);
    page.mutex.lock_update();
    page.mutex.unlock_update();
  }
};

namespace {
std::atomic<std::uint32_t> next_reservation_token{1};
// The token of the escalated transact() call this thread runs (0: none): its own commits pass its reservations.
thread_local std::uint32_t thread_reservation_token = 0;
}  // namespace
}  // namespace detail

namespace {
// Appends n bytes to `v`, keeping its capacity. Into an empty vector (a reused delta's payload) through assign(),
// which costs less than insert().
void append_bytes(std::vector<std::byte>& v, const std::byte* src, std::size_t n) {
  if (v.empty()) {
    v.assign(src, src + n);
  } else {
    v.insert(v.end(), src, src + n);
  }
}
}  // namespace

namespace detail {
// A transaction's staged bytes: a growable buffer that keeps its capacity and, unlike std::vector, neither zeroes
// what it is about to overwrite nor calls memcpy for a few bytes (copy_bytes).
class StagedBytes {
 public:
  std::size_t size() const noexcept { return size_; }
  const std::byte* data() const noexcept { return bytes_.get(); }
  std::size_t capacity() const noexcept { return capacity_; }
  void clear() noexcept { size_ = 0; }
  void append(const std::byte* src, std::size_t n) {
    if (capacity_ - size_ < n) grow(size_ + n);
    copy_bytes(bytes_.get() + size_, src, n);
    size_ += n;
  }

 private:
  void grow(std::size_t needed) {
    const std::size_t capacity = std::max({needed, 2 * capacity_, std::size_t{64}});
    auto bigger = std::make_unique_for_overwrite<std::byte[]>(capacity);
    if (size_ > 0) std::memcpy(bigger.get(), bytes_.get(), size_);
    bytes_ = std::move(bigger);
    capacity_ = capacity;
  }
  std::unique_ptr<std::byte[]> bytes_;
  std::size_t size_ = 0, capacity_ = 0;
};

// A transaction's read set: for each page it read, the epoch the commit validates. A growable array that keeps its
// capacity and whose first slot Transaction::read fills with plain stores (a vector's push_back would keep a call
// to its reallocation on that path, and with it the saving of registers).
class ReadSet {
 public:
  struct Read {
    PageRecord* page;
    std::uint64_t epoch;
    std::uint32_t withdrawals;  // PageRecord::withdrawals when read
  };
  std::size_t size() const noexcept { return size_; }
  bool empty() const noexcept { return size_ == 0; }
  Read* begin() noexcept { return reads_.get(); }
  Read* end() noexcept { return reads_.get() + size_; }
  const Read* begin() const noexcept { return reads_.get(); }
  const Read* end() const noexcept { return reads_.get() + size_; }
  const Read& operator[](std::size_t i) const noexcept { return reads_[i]; }
  void clear() noexcept { size_ = 0; }
  void push_back(const Read& read) {
    if (size_ == capacity_) grow();
    reads_[size_++] = read;
  }
  // Whether the set is empty with room for a read: then set_first() records it without a call.
  bool first_fits() const noexcept { return size_ == 0 && capacity_ != 0; }
  void set_first(PageRecord* page, std::uint64_t epoch, std::uint32_t withdrawals) noexcept {
    reads_[0] = {page, epoch, withdrawals};
    size_ = 1;
  }

 private:
  void grow() {
    const std::size_t capacity = std::max<std::size_t>(2 * capacity_, 4);
    auto bigger = std::make_unique_for_overwrite<Read[]>(capacity);
    std::copy(begin(), end(), bigger.get());
    reads_ = std::move(bigger);
    capacity_ = capacity;
  }
  std::unique_ptr<Read[]> reads_;
  std::size_t size_ = 0, capacity_ = 0;
};
}  // namespace detail

struct Transaction::State {
  struct Write {
    PageRecord* page;
    std::uint64_t offset;
    std::uint64_t length;
    std::uint64_t data_pos;  // where its bytes start in `data`
  };
  // A resize, a staged delta or an expected epoch of one page. Words first, flags last (padded between each flag
  // and its word, GCC built a temporary with `rep stos` and copied it in with `rep movs`).
  struct PageOp {
    explicit PageOp(PageRecord* p) noexcept : page(p) {}
    PageRecord* page;
    std::uint64_t new_size = 0;
    std::uint64_t expected_epoch = 0;
    std::size_t delta_index = kNoDelta;
    bool resize = false;
    bool expect = false;
    // Whether the commit changes the page (else it only validates it).
    bool changes() const noexcept { return resize || delta_index != kNoDelta; }
  };
  // A page read through the transaction: the commit validates that it is still at `epoch`. Apart from `ops`, so
  // that a read-modify-write records three words and leaves `ops` empty (write() and the commit look there).
  using Read = detail::ReadSet::Read;
  static constexpr std::size_t kNoDelta = ~std::size_t{0};

  // One touched page during commit. Built in place (emplace_back), and small: every commit builds one per page.
  struct Entry {
    Entry(PageRecord* p, std::size_t begin, std::size_t end, const PageOp* o) noexcept
        : page(p), write_begin(begin), write_end(end), op(o) {}
    PageRecord* page;
    std::size_t write_begin, write_end;  // its writes in `order`
    const PageOp* op;
    const Read* read = nullptr;  // its read, validated
    std::uint64_t epoch = 0, size = 0, final_size = 0;
    detail::Block grown;           // new memory when the page outgrows its capacity
    std::size_t delta = kNoDelta;  // its delta in `committed`, when the commit changes the page

    // Written pages are locked exclusively; pages only read or expected are locked shared (enough to hold their
    // epochs still while the commit validates them).
    bool changes() const noexcept { return write_end > write_begin || (op && op->changes()); }
  };

  bool active = false;
  std::vector<Write> writes;
  detail::StagedBytes data;
  std::vector<PageOp> ops;
  detail::ReadSet reads;  // one per page read
  std::vector<Delta> staged_deltas;
  std::size_t staged_used = 0;  // bytes `data` held when reset() last cleared it
  std::string intent;
  std::uint32_t source = 0;
  bool write_through = false;  // record staged bytes as written, without comparing them with the page
  // Set for the attempts of an escalated Runtime::transact() call: each page is reserved before it is read.
  detail::Reservations* reservations = nullptr;
  // Set by a commit that found a page it changes reserved by another thread's transact() call: the commit undid
  // everything and waits for the reservation outside every lock, then starts over.
  PageRecord* blocked_by = nullptr;

  // Commit scratch, kept for its capacity.
  std::vector<std::size_t> order;
  std::vector<Entry> entries;
  // Logged commits: entries[i]'s place in its page's in-flight list. Sized by size_nodes() before the commit
  // locks anything (it may throw), never while a node is linked (another commit may point at it).
  std::vector<detail::InFlight> nodes;
  void size_nodes() {
    if (nodes.size() < entries.size()) nodes.resize(entries.size());
  }
  std::vector<Delta> committed;
  std::size_t committed_count = 0;
  std::vector<ByteRange> scratch_ranges;
  std::vector<std::uint64_t> scratch_positions;
  std::vector<std::byte> old_scratch;

  // Logged commits: set when a commit this one builds on failed to become durable; `turn` is bumped (and
  // notified) when one of this commit's in-flight nodes becomes the front of its list, or when it is failed.
  std::atomic<bool> failed{false};
  std::atomic<std::uint32_t> turn{0};

  void reset() noexcept {
    active = false;
    staged_used = data.size();
    writes.clear();
    data.clear();
    ops.clear();
    reads.clear();
    staged_deltas.clear();
    intent.clear();
    source = 0;
    write_through = false;
    reservations = nullptr;
    blocked_by = nullptr;
    for (Entry& e : entries) free_grown(e);
    entries.clear();
  }
  // Whether a finished state goes back to the thread's pool: yes when it keeps at most kMaxPooledBytes, or when
  // its last transaction used at least a quarter of what it keeps (an app that commits large transactions again
  // and again keeps its buffers). So one huge transaction pins its memory only until the thread's next, smaller
  // transaction ends, not for the rest of the process.
  static constexpr std::size_t kMaxPooledBytes = std::size_t{64} << 20;
  bool worth_pooling() const noexcept {
    const std::size_t kept = kept_bytes();
    if (kept <= kMaxPooledBytes) return true;
    std::size_t used = staged_used;
    for (std::size_t i = 0; i < committed_count; ++i) used += committed[i].payload.size() + committed[i].undo.size();
    return used >= kept / 4;
  }
  // Heap bytes the state keeps for reuse: its buffers' capacity.
  std::size_t kept_bytes() const noexcept {
    std::size_t bytes = data.capacity() + writes.capacity() * sizeof(Write) + old_scratch.capacity() +
                        (committed.capacity() + staged_deltas.capacity()) * sizeof(Delta) +
                        entries.capacity() * sizeof(Entry) + order.capacity() * sizeof(std::size_t);
    // Only the deltas this transaction used can have grown; the others passed this check when last used, so the
    // total stays under twice the cap without a scan of every kept delta after each small transaction.
    for (std::size_t i = 0; i < committed_count; ++i) bytes += detail::heap_bytes(committed[i]);
    return bytes;
  }
  static void free_grown(Entry& e) noexcept {
    if (e.grown.data) PageAllocator::global().deallocate(e.grown.data, e.grown.capacity);
    e.grown = {};
  }

  // The record of page `id` for write(): a read-modify-write writes the one page it has just read, found in the
  // read set without a lookup.
  PageRecord* record_to_write(const Runtime::Impl& rt, PageId id) const {
    if (reads.size() != 1 || reads[0].page->id != id) return rt.find_live_or_throw(id);
    if (reads[0].page->deleted.load(std::memory_order_relaxed)) detail::throw_not_found(id);
    return reads[0].page;
  }

  // Before a read (or an expectation) of `page`: an escalated transact() attempt reserves it first.
  void reserve(PageRecord& page) {
    if (reservations) reservations->reserve(page);
  }

  PageOp& op_for(PageRecord* page) {
    for (PageOp& op : ops)
      if (op.page == page) return op;
    return ops.emplace_back(page);
  }

  // The one place a read through the transaction is recorded (Transaction::read and read_for_update, and any
  // typed view built on them): the first read of a page fixes the epoch the commit validates; a later read that
  // finds the page moved fails at once, since the transaction can no longer commit.
  void note_read(PageRecord* page, std::uint64_t epoch, std::uint32_t withdrawals) {
    for (const Read& read : reads) {
      if (read.page != page) continue;
      if (read.epoch != epoch || read.withdrawals != withdrawals) throw_conflict(*page, read.epoch, epoch, "read it");
      return;
    }
    reads.push_back({page, epoch, withdrawals});
  }
  [[noreturn]] void throw_conflict(const PageRecord& page, std::uint64_t seen, std::uint64_t now, const char* how);
  [[noreturn]] void throw_unexpected_epoch(const PageRecord& page, std::uint64_t expected, std::uint64_t now);

  bool changes_anything() const noexcept {
    if (!writes.empty()) return true;
    for (const PageOp& op : ops)
      if (op.changes()) return true;
    return false;
  }

  std::uint64_t commit(Runtime::Impl& rt, detail::CommitListener* listener);
  std::uint64_t commit_in_memory(Runtime::Impl& rt, detail::CommitListener* listener);
  std::uint64_t commit_logged(Runtime::Impl& rt, detail::CommitListener* listener);
  std::size_t build_deltas(const Runtime::Impl& rt);
  CommitRecord record_of(std::uint64_t lsn, std::size_t count) const;
  void apply_deltas() noexcept;
  void link_in_flight() noexcept;
  void wait_for_turn() noexcept;
  void publish_logged(std::uint64_t lsn, std::size_t count, detail::CommitListener* listener) noexcept;
  void withdraw() noexcept;
  void validate_reads_only(Runtime::Impl& rt);
  [[noreturn]] void throw_cascade(std::uint64_t lsn);
  void collect_entries();
  void check_and_prepare(Entry& e, bool on_head);
  bool build_delta(const Entry& e, Delta& d, bool record_undo);
  bool stage_writes(const Entry& e, Delta& d, bool staged_delta);
  void append_changed(const Entry& e, Delta& d, std::uint64_t offset, const std::byte* now, std::uint64_t length,
                      bool record_undo);
  const std::byte* old_bytes(const Entry& e, std::uint64_t offset, std::uint64_t length);
  void keep_changed_bytes(const Entry& e, Delta& d, bool record_undo);
};

namespace {
constexpr const char* kRetryAdvice =
    "; nothing was committed: run the transaction again, reads included (Runtime::transact does)";
}

void Transaction::State::throw_conflict(const PageRecord& page, std::uint64_t seen, std::uint64_t now,
                                        const char* how) {
  throw Error(ErrorCode::Conflict, "page " + page.id.to_string() + " moved from epoch " + std::to_string(seen) +
                                       " to " + std::to_string(now) + " since this transaction " + how + kRetryAdvice);
}

void Transaction::State::throw_unexpected_epoch(const PageRecord& page, std::uint64_t expected, std::uint64_t now) {
  throw Error(ErrorCode::Conflict, "page " + page.id.to_string() + " is at epoch " + std::to_string(now) +
                                       " but the transaction expected epoch " + std::to_string(expected) +
                                       " (expect_epoch)" + kRetryAdvice);
}

namespace {

// Recycles State objects per thread; a state returns to the pool of the thread that destroys its transaction.
struct StatePool {
  std::vector<Transaction::State*> free;
  ~StatePool() {
    for (auto* s : free) delete s;
  }
};
thread_local StatePool state_pool;

// Locks the entries' pages in PageId order (exclusive where the commit changes the page, shared where it only
// validates it) and unlocks them, in reverse order, on scope exit. In-memory commits.
struct PageLocks {
  std::vector<Transaction::State::Entry>& entries;
  std::size_t locked = 0;
  explicit PageLocks(std::vector<Transaction::State::Entry>& e) : entries(e) {}
  void lock_all() {
    for (auto& e : entries) {
      if (e.changes()) {
        e.page->mutex.lock();
      } else {
        e.page->mutex.lock_shared();
      }
      ++locked;
    }
  }
  ~PageLocks() {
    while (locked > 0) {
      auto& e = entries[--locked];
      if (e.changes()) {
        e.page->mutex.unlock();
      } else {
        e.page->mutex.unlock_shared();
      }
    }
  }
};

// Under the commit's page locks: the first page the commit would change that another thread's escalated
// transact() call has reserved, or nullptr. One relaxed load per changed page (the reservation was published by
// the update lock the caller now holds).
PageRecord* reserved_elsewhere(const std::vector<Transaction::State::Entry>& entries) noexcept {
  for (const auto& e : entries) {
    if (!e.changes()) continue;
    const std::uint32_t holder = e.page->reserved_by.load(std::memory_order_relaxed);
    if (holder != 0 && holder != detail::thread_reservation_token) return e.page;
  }
  return nullptr;
}

// Holding no lock: waits until the transact() call that reserved `page` has returned.
void wait_unreserved(PageRecord& page) noexcept {
  for (;;) {
    const std::uint32_t holder = page.reserved_by.load(std::memory_order_acquire);
    if (holder == 0 || holder == detail::thread_reservation_token) return;
    page.reserved_by.wait(holder, std::memory_order_acquire);
  }
}

// Logged commits: update locks on every entry's page, in PageId order, released on scope exit. Readers ignore them;
// they keep other commits of these pages from building on the same head.
struct UpdateLocks {
  std::vector<Transaction::State::Entry>& entries;
  std::size_t locked = 0;
  explicit UpdateLocks(std::vector<Transaction::State::Entry>& e) : entries(e) {}
  void lock_all() {
    for (auto& e : entries) {
      e.page->mutex.lock_update();
      ++locked;
    }
  }
  ~UpdateLocks() {
    while (locked > 0) entries[--locked].page->mutex.unlock_update();
  }
};

void notify_front(PageRecord& page) noexcept { page.in_flight_front.notify_all(); }

// Wakes the commit owning `node` to re-check its turn (or its failure).
void wake(detail::InFlight& node) noexcept {
  node.turn->fetch_add(1, std::memory_order_release);
  node.turn->notify_all();
}

// Copies [offset, offset + length) of the page's head: the published bytes with the deltas of its in-flight
// commits applied in order (each zero-extends what it grows, then writes its ranges). Bytes beyond the head's size
// come out unspecified. The caller holds the page's update lock (or exclusive: then there is nothing in flight).
void copy_head_bytes(const PageRecord& page, std::uint64_t offset, std::uint64_t length, std::byte* out) noexcept {
  const std::uint64_t end = offset + length;
  auto zero = [&](std::uint64_t from, std::uint64_t to) {
    from = std::max(from, offset);
    to = std::min(to, end);
    if (from < to) std::memset(out + (from - offset), 0, to - from);
  };
  std::uint64_t size = page.size.load(std::memory_order_relaxed);
  if (offset < size) std::memcpy(out, page.data + offset, std::min(end, size) - offset);
  zero(size, end);
  for (const detail::InFlight* it = page.in_flight_front.load(std::memory_order_relaxed); it != nullptr;
       it = it->next) {
    if (it->delta == nullptr) continue;
    const Delta& d = *it->delta;
    zero(size, d.size);
    size = d.size;
    const std::byte* src = d.payload.data();
    for (const ByteRange& r : d.ranges) {
      const std::uint64_t from = std::max(r.offset, offset), to = std::min(r.end(), end);
      if (from < to) std::memcpy(out + (from - offset), src + (from - r.offset), to - from);
      src += r.length;
    }
  }
}

// Runs `fn(in_flight, size, epoch, withdrawals)` on the page's head, for a read through a transaction: under the shared
// lock when no commit is in flight (the head is the published state), else under the update lock. Throws
// Error(NotFound) for a deleted page.
template <class Fn>
void with_head(PageRecord& page, Fn&& fn) {
  {
    std::shared_lock lock(page.mutex);
    if (page.in_flight_front.load(std::memory_order_acquire) == nullptr) {
      if (page.deleted.load(std::memory_order_relaxed)) detail::throw_not_found(page.id);
      fn(/*in_flight=*/false, page.size.load(std::memory_order_relaxed), page.epoch.load(std::memory_order_relaxed),
         page.withdrawals.load(std::memory_order_relaxed));
      return;
    }
  }
  page.mutex.lock_update();
  struct Unlock {
    PageRecord& page;
    ~Unlock() { page.mutex.unlock_update(); }
  } unlock{page};
  if (page.deleted.load(std::memory_order_relaxed)) detail::throw_not_found(page.id);
  fn(/*in_flight=*/true, page.head_size(), page.head_epoch(), page.withdrawals.load(std::memory_order_relaxed));
}

// The widest read that read_unlocked() copies (read_value's few bytes); wider reads take the shared lock, whose
// two atomic operations are small against the copy.
constexpr std::size_t kUnlockedReadMax = 16;

// Copies n bytes, sizeof(Word) <= n <= 2 * sizeof(Word), as two overlapping words that a writer may be changing
// meanwhile (the caller validates them after). Hidden from ThreadSanitizer (the race is the design) and from
// AddressSanitizer (the block may have been freed to its allocator class meanwhile, which poisons it; it stays
// mapped, and the check after the copy rejects what was read). delta/copy_bytes.hpp's copy_overlapping_words is its
// instrumented twin.
template <class Word>
[[gnu::no_sanitize("thread"), gnu::no_sanitize("address"), gnu::always_inline]] inline void copy_two_words(
    std::byte* dst, const std::byte* src, std::size_t n) noexcept {
  Word head, tail;
  __builtin_memcpy(&head, src, sizeof(Word));
  __builtin_memcpy(&tail, src + n - sizeof(Word), sizeof(Word));
  __builtin_memcpy(dst, &head, sizeof(Word));
  __builtin_memcpy(dst + n - sizeof(Word), &tail, sizeof(Word));
}

// Inlined where no sanitizer runs (GCC refuses to inline a no_sanitize function into an instrumented one).
#if defined(__SANITIZE_THREAD__) || defined(__SANITIZE_ADDRESS__)
#define MMSB_INLINE_UNSANITIZED inline
#else
#define MMSB_INLINE_UNSANITIZED [[gnu::always_inline]] inline
#endif

// Copies n <= kUnlockedReadMax racy bytes: fixed-size moves, never a memcpy call (which ThreadSanitizer would
// intercept and report).
[[gnu::no_sanitize("thread"), gnu::no_sanitize("address")]] MMSB_INLINE_UNSANITIZED void copy_racy(
    std::byte* dst, const std::byte* src, std::size_t n) noexcept {
  if (n >= 8) {
    copy_two_words<std::uint64_t>(dst, src, n);
  } else if (n >= 4) {
    copy_two_words<std::uint32_t>(dst, src, n);
  } else if (n >= 2) {
    copy_two_words<std::uint16_t>(dst, src, n);
  } else if (n == 1) {
    dst[0] = src[0];
  }
}

// Loads after it stay after the racy copy before it (the reader side of the seqlock; nothing on x86).
void reader_fence() noexcept {
#if !defined(__SANITIZE_THREAD__)
  std::atomic_thread_fence(std::memory_order_acquire);
#endif
}

// Whether the page is still at `epoch` with no exclusive holder inside: then nothing changed its bytes, size or
// memory since the caller read the epoch, except a deletion (every exclusive holder that changes them moves the
// epoch; deletion only sets the flag, frees the memory and zeroes the size).
[[gnu::always_inline]] inline bool unmoved_since(const PageRecord& page, std::uint64_t epoch) noexcept {
  reader_fence();
  return !page.mutex.writer_inside() && page.epoch.load(std::memory_order_relaxed) == epoch;
}

// A tracked read of a few bytes without the page lock (its two atomic read-modify-writes were most of what a
// read-modify-write transaction costs over a blind write): the epoch, then size and memory, validated, then the
// bytes, validated again, as a seqlock reader does. What it returns is what a read under the shared lock could
// have returned, and the commit validates the epoch as for any read. False when it cannot tell (a writer inside
// or finishing meanwhile, a commit in flight, memory that may be unmapped, a range to check with a clear error):
// the caller then reads under the lock.
[[gnu::always_inline]] inline bool read_unlocked(const PageRecord& page, std::uint64_t offset, std::span<std::byte> out,
                                                 std::uint64_t& epoch, std::uint32_t& withdrawals) noexcept {
  const std::uint64_t seen = page.epoch.load(std::memory_order_acquire);
  const std::byte* bytes = page.bytes_unlocked();
  // Only memory that stays mapped is copied from: inline bytes or a class block (a freed one reads as garbage,
  // which the check after the copy rejects).
  // (The list's front is loaded with acquire: a withdrawn commit bumps `withdrawals` before it empties the list.)
  if (bytes == nullptr || page.bytes_may_unmap.load(std::memory_order_relaxed) ||
      page.in_flight_front.load(std::memory_order_acquire) != nullptr) {
    return false;
  }
  const std::uint64_t size = page.size.load(std::memory_order_relaxed);
  const std::uint32_t seen_withdrawals = page.withdrawals.load(std::memory_order_relaxed);
  // `bytes` held `size` bytes at one instant (or the page was deleted meanwhile, leaving a block that stays mapped
  // or a size of 0): the range below lies inside that block.
  if (!unmoved_since(page, seen) || offset > size || size - offset < out.size()) return false;
  copy_racy(out.data(), bytes + offset, out.size());
  if (!unmoved_since(page, seen) || page.deleted.load(std::memory_order_relaxed)) return false;
  epoch = seen;
  withdrawals = seen_withdrawals;
  return true;
}

}  // namespace

Transaction Runtime::begin() {
  Transaction::State* state = nullptr;
  if (!state_pool.free.empty()) {
    state = state_pool.free.back();
    state_pool.free.pop_back();
  } else {
    state = new Transaction::State;
  }
  state->active = true;
  return Transaction(impl_.get(), state);
}

Transaction::Transaction(Transaction&& other) noexcept
    : runtime_(std::exchange(other.runtime_, nullptr)), state_(std::exchange(other.state_, nullptr)) {}

Transaction& Transaction::operator=(Transaction&& other) noexcept {
  if (this != &other) {
    this->~Transaction();
    runtime_ = std::exchange(other.runtime_, nullptr);
    state_ = std::exchange(other.state_, nullptr);
  }
  return *this;
}

Transaction::~Transaction() {
  if (!state_) return;
  if (state_->active) state_->reset();  // an inactive state is already clean (reset() is what deactivates it)
  const bool keep = state_->worth_pooling();
  state_->committed_count = 0;
  if (!keep) {
    delete state_;
  } else {
    try {
      state_pool.free.push_back(state_);
    } catch (...) {
      delete state_;
    }
  }
  state_ = nullptr;
}

bool Transaction::active() const noexcept { return state_ && state_->active; }

namespace {
// External pages (Runtime::create_external_page) are read-only views of memory the runtime does not own.
void refuse_external(const PageRecord& page) {
  if (page.external) {
    throw Error(ErrorCode::InvalidArgument, "page " + page.id.to_string() +
                                                " is an external read-only page (create_external_page); its bytes "
                                                "cannot be written, resized or replaced");
  }
}

[[noreturn]] void throw_failed_after_commit(std::uint64_t lsn, const std::string& what) {
  throw Error(ErrorCode::NodeFailed,
              "the commit with LSN " + std::to_string(lsn) +
                  " took effect (do not retry it), but propagating it failed: " + what,
              lsn);
}

[[noreturn]] void throw_inactive() {
  throw Error(ErrorCode::InvalidArgument,
              "the transaction is not active (already committed, aborted or moved from); call Runtime::begin()");
}
}  // namespace

// Flattened (the lookup, the checks and the copy inline), as commit_in_memory(): it runs once per staged write.
[[gnu::flatten]] void Transaction::write(PageId id, std::uint64_t offset, std::span<const std::byte> bytes) {
  if (!active()) throw_inactive();
  PageRecord* page = state_->record_to_write(*runtime_, id);
  refuse_external(*page);
  // An early check against the current size (a hint; commit re-checks under the lock, after any resize).
  std::uint64_t size = page->size.load(std::memory_order_relaxed);
  bool resized = false;
  for (const auto& op : state_->ops) {
    if (op.page == page && op.resize) {
      size = op.new_size;
      resized = true;
    }
  }
  if (offset > size || size - offset < bytes.size()) {
    throw Error(ErrorCode::InvalidArgument,
                "write of " + detail::range_text(offset, bytes.size()) + " is outside page " + id.to_string() + " of " +
                    std::to_string(size) + " bytes" +
                    (resized ? " (after this transaction's resize)" : "; resize the page first"));
  }
  if (bytes.empty()) return;
  State& st = *state_;
  st.writes.push_back({page, offset, bytes.size(), st.data.size()});
  st.data.append(bytes.data(), bytes.size());
}

void Transaction::resize(PageId id, std::uint64_t new_size) {
  if (!active()) throw_inactive();
  PageRecord* page = runtime_->find_live_or_throw(id);
  refuse_external(*page);
  State::PageOp& op = state_->op_for(page);
  op.resize = true;
  op.new_size = new_size;
}

void Transaction::apply(const Delta& delta) {
  if (!active()) throw_inactive();
  delta.validate();
  PageRecord* page = runtime_->find_live_or_throw(delta.page);
  refuse_external(*page);
  state_->reserve(*page);
  State::PageOp& op = state_->op_for(page);
  if (op.delta_index != State::kNoDelta) {
    throw Error(ErrorCode::InvalidArgument,
                "page " + delta.page.to_string() + " already has a delta in this transaction; compose() them first");
  }
  state_->staged_deltas.push_back(delta);
  op.delta_index = state_->staged_deltas.size() - 1;
}

void Transaction::expect_epoch(PageId id, std::uint64_t epoch) {
  if (!active()) throw_inactive();
  PageRecord* page = runtime_->find_live_or_throw(id);
  state_->reserve(*page);
  State::PageOp& op = state_->op_for(page);
  op.expect = true;
  op.expected_epoch = epoch;
}

void Transaction::set_intent(std::string_view intent) {
  if (!active()) throw_inactive();
  state_->intent.assign(intent);
}

void Transaction::set_source(std::uint32_t source) {
  if (!active()) throw_inactive();
  state_->source = source;
}

void Transaction::set_write_through(bool on) {
  if (!active()) throw_inactive();
  state_->write_through = on;
}

namespace {
// Transaction::read under the page lock (on the head, when commits are in flight): wider reads, and those that
// read_unlocked() could not validate. Out of line, so the unlocked path stays a short function.
[[gnu::noinline]] void read_locked(PageRecord& page, std::uint64_t offset, std::span<std::byte> out,
                                   std::uint64_t& epoch, std::uint32_t& withdrawals) {
  with_head(page, [&](bool in_flight, std::uint64_t size, std::uint64_t head_epoch, std::uint32_t seen) {
    if (offset > size || size - offset < out.size()) {
      throw Error(ErrorCode::InvalidArgument, "read of " + detail::range_text(offset, out.size()) +
                                                  " is outside page " + page.id.to_string() + " of " +
                                                  std::to_string(size) + " bytes");
    }
    if (out.empty()) {
    } else if (in_flight) {
      copy_head_bytes(page, offset, out.size(), out.data());
    } else {
      detail::copy_bytes(out.data(), page.data + offset, out.size());
    }
    epoch = head_epoch;
    withdrawals = seen;
  });
}
}  // namespace

namespace {
// Transaction::read of any size, with any number of reads before it.
[[gnu::noinline]] void read_tracked(Runtime::Impl& rt, Transaction::State& st, PageId id, std::uint64_t offset,
                                    std::span<std::byte> out) {
  if (!st.active) throw_inactive();
  PageRecord* page = rt.find_or_throw(id);
  st.reserve(*page);
  std::uint64_t epoch = 0;
  std::uint32_t withdrawals = 0;
  if (out.size() > kUnlockedReadMax || !read_unlocked(*page, offset, out, epoch, withdrawals)) {
    read_locked(*page, offset, out, epoch, withdrawals);
  }
  st.note_read(page, epoch, withdrawals);
}
}  // namespace

// The tracked read of a read-modify-write: a transaction's first read, of a few bytes, is copied without the lock
// (read_unlocked) and recorded here, calling nothing on the way (so it saves no registers); any other read, and
// any that cannot be validated so, is read_tracked()'s.
void Transaction::read(PageId id, std::uint64_t offset, std::span<std::byte> out) {
  State* st = state_;
  if (st != nullptr && st->active && st->reads.first_fits() && st->reservations == nullptr &&
      out.size() <= kUnlockedReadMax) {
    PageRecord* page = runtime_->find(id);
    std::uint64_t epoch;
    std::uint32_t withdrawals;
    if (page != nullptr && read_unlocked(*page, offset, out, epoch, withdrawals)) {
      st->reads.set_first(page, epoch, withdrawals);
      return;
    }
  }
  if (st == nullptr) throw_inactive();
  read_tracked(*runtime_, *st, id, offset, out);
}

std::vector<std::byte> Transaction::read_all(PageId id) {
  if (!active()) throw_inactive();
  PageRecord* page = runtime_->find_or_throw(id);
  state_->reserve(*page);
  std::vector<std::byte> out;
  std::uint64_t epoch = 0;
  std::uint32_t withdrawals = 0;
  with_head(*page, [&](bool in_flight, std::uint64_t size, std::uint64_t head_epoch, std::uint32_t seen) {
    out.resize(size);
    if (size == 0) {
    } else if (in_flight) {
      copy_head_bytes(*page, 0, size, out.data());
    } else {
      std::memcpy(out.data(), page->data, size);
    }
    epoch = head_epoch;
    withdrawals = seen;
  });
  state_->note_read(page, epoch, withdrawals);
  return out;
}

PageInfo Transaction::read_for_update(PageId id) {
  if (!active()) throw_inactive();
  PageRecord* page = runtime_->find_or_throw(id);
  state_->reserve(*page);
  PageInfo info;
  std::uint32_t withdrawals = 0;
  with_head(*page, [&](bool, std::uint64_t size, std::uint64_t head_epoch, std::uint32_t seen) {
    info = {id, size, head_epoch, page->location};
    withdrawals = seen;
  });
  state_->note_read(page, info.epoch, withdrawals);
  return info;
}

void Transaction::abort() noexcept {
  if (state_) {
    state_->reset();
  }
}

void detail::TransactTurn::after_conflict(unsigned attempt) {
  if (held_) return;  // it holds the turn already: another commit moved a page before this call reserved it
  if (attempt < Runtime::kOptimisticAttempts || thread_reservation_token != 0) {
    // Another commit won the race and has published: let it (and others) run, then try again. (A transact()
    // nested in an escalated one's `fn` never escalates: it would wait for the turn its own thread holds.)
    std::this_thread::yield();
    return;
  }
  auto held = std::make_unique<Reservations>();  // before the ticket: nothing may throw once it is taken
  held->pages.reserve(4);
  // 32-bit words wait in the kernel directly (futex). Token 0 means "none": skipped when the counter wraps.
  do {
    held->token = next_reservation_token.fetch_add(1, std::memory_order_relaxed);
  } while (held->token == 0);
  Runtime::Impl& rt = *runtime_;
  const std::uint32_t ticket = rt.serial_next_ticket.fetch_add(1, std::memory_order_relaxed);
  for (std::uint32_t serving = rt.serial_serving.load(std::memory_order_acquire); serving != ticket;
       serving = rt.serial_serving.load(std::memory_order_acquire)) {
    rt.serial_serving.wait(serving, std::memory_order_acquire);
  }
  thread_reservation_token = held->token;
  held_ = held.release();
}

void detail::TransactTurn::attach_held(Transaction& txn) noexcept { txn.state_->reservations = held_; }

// The call returns (committed, failed or gave up): drops its reservations, letting the commits that wait for them
// go, and passes the turn on.
void detail::TransactTurn::release() noexcept {
  for (PageRecord* page : held_->pages) {
    page->reserved_by.store(0, std::memory_order_release);
    page->reserved_by.notify_all();
  }
  thread_reservation_token = 0;
  delete std::exchange(held_, nullptr);
  runtime_->serial_serving.fetch_add(1, std::memory_order_release);
  runtime_->serial_serving.notify_all();
}

std::span<const Delta> Transaction::committed_deltas() const noexcept {
  if (!state_) return {};
  return {state_->committed.data(), state_->committed_count};
}

std::uint64_t Transaction::commit() {
  if (!active()) throw_inactive();
  State& st = *state_;
  st.committed_count = 0;
  if (!st.changes_anything()) {
    // Reads and expectations only: nothing to log or publish, but they are validated, so a read-only transaction
    // fails with Conflict unless what it read was one consistent state.
    try {
      if (!st.ops.empty() || !st.reads.empty()) st.validate_reads_only(*runtime_);
    } catch (...) {
      st.reset();
      throw;
    }
    st.reset();
    return 0;
  }
  detail::CommitListener* listener = runtime_->listener.load(std::memory_order_acquire);
  std::uint64_t lsn = 0;
  for (;;) {
    try {
      if (listener) listener->reserve();
    } catch (...) {
      st.reset();
      throw;
    }
    try {
      lsn = st.commit(*runtime_, listener);
      if (lsn == 0 && listener) listener->release();  // nothing changed (or a page is reserved): nothing published
    } catch (...) {
      if (listener) listener->release();
      st.committed_count = 0;
      st.reset();
      throw;
    }
    if (st.blocked_by == nullptr) break;
    // Outside the gate and the listener's queue: the reserving call needs both to commit.
    wait_unreserved(*std::exchange(st.blocked_by, nullptr));
  }
  st.reset();
  // The commit is visible; what follows is propagation, whose errors reach the caller but do not undo it: each
  // carries the LSN, so no caller mistakes it for a failed commit.
  if (listener && lsn != 0) {
    try {
      listener->after_commit(lsn);
    } catch (const Error& e) {
      if (e.committed_lsn() == lsn) throw;
      throw_failed_after_commit(lsn, e.what());
    } catch (const std::exception& e) {
      throw_failed_after_commit(lsn, e.what());
    } catch (...) {
      throw_failed_after_commit(lsn, "an unknown exception");
    }
  }
  return lsn;
}

// Groups writes and ops by page into `entries`, sorted by PageId; `order` lists write indices page by page, in
// program order within a page.
void Transaction::State::collect_entries() {
  entries.clear();
  order.clear();
  if (writes.size() == 1 && (reads.empty() || (reads.size() == 1 && reads[0].page == writes[0].page)) &&
      (ops.empty() || (ops.size() == 1 && ops[0].page == writes[0].page && ops[0].delta_index == kNoDelta))) {
    // The common blind write and read-modify-write of one page.
    order.push_back(0);
    Entry& e = entries.emplace_back(writes[0].page, 0, 1, ops.empty() ? nullptr : &ops[0]);
    if (!reads.empty()) e.read = &reads[0];
    return;
  }
  // A page that is only read gets an op that stages nothing (locked shared, validated), so it has an entry.
  for (const Read& read : reads) op_for(read.page);
  order.resize(writes.size());
  std::iota(order.begin(), order.end(), std::size_t{0});
  std::sort(order.begin(), order.end(), [this](std::size_t a, std::size_t b) {
    PageId pa = writes[a].page->id, pb = writes[b].page->id;
    return pa != pb ? pa < pb : a < b;
  });
  std::sort(ops.begin(), ops.end(), [](const PageOp& a, const PageOp& b) { return a.page->id < b.page->id; });
  std::size_t w = 0, o = 0;
  while (w < order.size() || o < ops.size()) {
    PageRecord* page = nullptr;
    if (o == ops.size() || (w < order.size() && writes[order[w]].page->id < ops[o].page->id)) {
      page = writes[order[w]].page;
    } else {
      page = ops[o].page;
    }
    const std::size_t begin = w;
    while (w < order.size() && writes[order[w]].page == page) ++w;
    const PageOp* op = o < ops.size() && ops[o].page == page ? &ops[o++] : nullptr;
    if (op && op->delta_index != kNoDelta && (w > begin || op->resize)) {
      throw Error(ErrorCode::InvalidArgument, "page " + page->id.to_string() +
                                                  " has both a delta and writes or a resize in one transaction; "
                                                  "stage one or the other");
    }
    entries.emplace_back(page, begin, w, op);
  }
  // Each read to its page's entry (both sorted by PageId; every read page has one).
  std::sort(reads.begin(), reads.end(), [](const Read& a, const Read& b) { return a.page->id < b.page->id; });
  std::size_t r = 0;
  for (Entry& e : entries) {
    if (r < reads.size() && reads[r].page == e.page) e.read = &reads[r++];
  }
}

// Runs under the page's exclusive lock; throws without side effects (grown memory is freed by reset()).
// `on_head`: the caller holds the update lock and builds on the page's head (logged commits); otherwise on the
// published state (in memory, where the two are the same, and read-only validation under shared locks).
void Transaction::State::check_and_prepare(Entry& e, bool on_head) {
  PageRecord& page = *e.page;
  if (page.deleted.load(std::memory_order_relaxed)) detail::throw_not_found(page.id);
  if (e.changes()) refuse_external(page);
  e.epoch = on_head ? page.head_epoch() : page.epoch.load(std::memory_order_relaxed);
  e.size = on_head ? page.head_size() : page.size.load(std::memory_order_relaxed);
  e.final_size = e.size;
  if (e.read) {
    if (e.read->epoch != e.epoch) throw_conflict(page, e.read->epoch, e.epoch, "read it");
    if (on_head && e.read->withdrawals != page.withdrawals.load(std::memory_order_relaxed)) {
      // The epoch is the same, but an in-flight commit of the page failed since: what was read may be gone.
      throw_conflict(page, e.read->epoch, e.epoch, "read it (and an in-flight commit of it failed meanwhile)");
    }
  }
  if (e.op) {
    if (e.op->expect && e.op->expected_epoch != e.epoch) throw_unexpected_epoch(page, e.op->expected_epoch, e.epoch);
    if (e.op->delta_index != kNoDelta) {
      const Delta& d = staged_deltas[e.op->delta_index];
      if (d.base_epoch != e.epoch || d.base_size != e.size) {
        throw Error(ErrorCode::Conflict, "delta for page " + page.id.to_string() + " was made against epoch " +
                                             std::to_string(d.base_epoch) + " (size " + std::to_string(d.base_size) +
                                             ") but the page is at epoch " + std::to_string(e.epoch) + " (size " +
                                             std::to_string(e.size) +
                                             "); nothing was committed: rebase the delta on the current page");
      }
      e.final_size = d.size;
    }
    if (e.op->resize) e.final_size = e.op->new_size;
  }
  for (std::size_t i = e.write_begin; i < e.write_end; ++i) {
    const Write& w = writes[order[i]];
    if (w.offset > e.final_size || e.final_size - w.offset < w.length) {
      throw Error(ErrorCode::InvalidArgument, "write of " + detail::range_text(w.offset, w.length) +
                                                  " is outside page " + page.id.to_string() + " of " +
                                                  std::to_string(e.final_size) + " bytes");
    }
  }
  if (e.final_size > page.capacity()) {
    e.grown = PageAllocator::global().allocate(e.final_size, detail::Zeroing::Zeroed);
  }
}

// Fills `d` with the change of one page. Ranges come out canonical: sorted, merged where they touch.
// The page's bytes [offset, offset + length) before this commit (its head), zero beyond its size (a resize
// zero-extends). Points into the page when it can, else into `old_scratch` (valid until the next call).
const std::byte* Transaction::State::old_bytes(const Entry& e, std::uint64_t offset, std::uint64_t length) {
  const PageRecord& page = *e.page;
  if (page.in_flight_front.load(std::memory_order_relaxed) == nullptr && offset + length <= e.size) {
    return page.data + offset;
  }
  if (old_scratch.size() < length) old_scratch.resize(length);
  copy_head_bytes(page, offset, length, old_scratch.data());
  // Beyond the head's size the page holds nothing: this commit zero-extends it.
  if (offset + length > e.size) {
    const std::uint64_t from = std::max(offset, e.size);
    std::memset(old_scratch.data() + (from - offset), 0, offset + length - from);
  }
  return old_scratch.data();
}

namespace {
// Change-only commits: the widest run of unchanged bytes kept inside one range rather than split into two. A range
// costs about 8 bytes in a log record; a merged gap costs its bytes once (payload) or twice (and undo).
constexpr std::uint64_t change_merge_gap(bool record_undo) noexcept { return record_undo ? 4 : 8; }
}  // namespace

// Change-only commits: keeps only the runs of `d` (ranges and payload as staged) whose bytes differ from the page,
// merging runs closer than a range header costs in the log, and records their old bytes as undo.
void Transaction::State::keep_changed_bytes(const Entry& e, Delta& d, bool record_undo) {
  const std::uint64_t merge_gap = change_merge_gap(record_undo);
  scratch_ranges.clear();
  std::uint64_t in = 0, out = 0;
  for (const ByteRange& r : d.ranges) {
    const std::byte* old = old_bytes(e, r.offset, r.length);
    const std::size_t first = scratch_ranges.size();
    detail::append_changed_runs(old, d.payload.data() + in, r.length, r.offset, merge_gap, scratch_ranges);
    for (std::size_t k = first; k < scratch_ranges.size(); ++k) {
      const ByteRange& run = scratch_ranges[k];
      const std::uint64_t at = run.offset - r.offset;
      if (out != in + at) std::memmove(d.payload.data() + out, d.payload.data() + in + at, run.length);
      if (record_undo) d.undo.insert(d.undo.end(), old + at, old + at + run.length);
      out += run.length;
    }
    in += r.length;
  }
  d.ranges.swap(scratch_ranges);
  d.payload.resize(out);
}

namespace {
// Change-only commits of one 8-byte write (a counter, a 64-bit field), the most common commit: appends the run
// where the words differ, found with one XOR, exactly as append_changed_runs() would (nothing when they are
// equal). False, appending nothing, when `merge_gap` or more equal bytes split the differing ones: that function
// then splits the run.
bool append_word_run(const std::byte* old, const std::byte* now, std::uint64_t offset, std::uint64_t merge_gap,
                     std::vector<ByteRange>& out) {
  const detail::DifferingBytes run = detail::differing_bytes_of_words(old, now);
  if (run.empty()) return true;
  if (merge_gap + 1 < run.end - run.first) {  // room inside for a split: look for merge_gap equal bytes in a row
    std::uint64_t equal = 0;
    for (std::uint32_t i = run.first + 1; i + 1 < run.end; ++i) {
      equal = old[i] == now[i] ? equal + 1 : 0;
      if (equal >= merge_gap) return false;
    }
  }
  out.push_back(ByteRange{offset + run.first, run.end - run.first});
  return true;
}
}  // namespace

// Change-only commits, one staged write: appends to `d` the runs of `now` (the write's bytes, at `offset`) that
// differ from the page, with their old bytes as undo, straight from the staging buffer (no copy to compact after).
void Transaction::State::append_changed(const Entry& e, Delta& d, std::uint64_t offset, const std::byte* now,
                                        std::uint64_t length, bool record_undo) {
  const std::uint64_t merge_gap = change_merge_gap(record_undo);
  const std::byte* old = old_bytes(e, offset, length);
  const std::size_t first = d.ranges.size();
  if (length != 8 || !append_word_run(old, now, offset, merge_gap, d.ranges)) {
    detail::append_changed_runs(old, now, length, offset, merge_gap, d.ranges);
  }
  for (std::size_t k = first; k < d.ranges.size(); ++k) {
    const ByteRange& run = d.ranges[k];
    const std::uint64_t at = run.offset - offset;
    append_bytes(d.payload, now + at, run.length);
    if (record_undo) append_bytes(d.undo, old + at, run.length);
  }
}

// Fills `d` with the change of one page. Ranges come out canonical: sorted, merged where they touch. Returns false
// when the commit does not change the page after all (its writes rewrote equal bytes): no delta, no new epoch.
bool Transaction::State::build_delta(const Entry& e, Delta& d, bool record_undo) {
  const PageRecord& page = *e.page;
  d.clear();
  d.page = page.id;
  d.base_epoch = e.epoch;
  d.epoch_count = 1;
  d.base_size = e.size;
  d.size = e.final_size;
  d.source = source;
  if (!intent.empty()) d.intent = intent;  // d.clear() emptied it
  d.has_undo = record_undo;
  const bool staged_delta = e.op && e.op->delta_index != kNoDelta;
  if (!staged_delta && !write_through && e.write_end - e.write_begin == 1) {
    // The common case: one write, change-only.
    const Write& w = writes[order[e.write_begin]];
    append_changed(e, d, w.offset, data.data() + w.data_pos, w.length, record_undo);
    if (d.ranges.empty() && d.size == d.base_size) return false;
  } else if (!stage_writes(e, d, staged_delta)) {
    return false;
  }
  if (record_undo && e.final_size < e.size) {
    const std::byte* tail = old_bytes(e, e.final_size, e.size - e.final_size);
    d.undo_tail.assign(tail, tail + (e.size - e.final_size));
  }
  return true;
}

// build_delta() for a staged delta, several writes or write-through: copies what was staged into `d`, then keeps
// only the changed bytes (change-only) or records the undo bytes of all of them. False: nothing changed.
bool Transaction::State::stage_writes(const Entry& e, Delta& d, bool staged_delta) {
  const bool record_undo = d.has_undo;
  if (staged_delta) {
    const Delta& staged = staged_deltas[e.op->delta_index];
    d.ranges = staged.ranges;
    d.payload = staged.payload;
    if (!staged.intent.empty() && intent.empty()) d.intent = staged.intent;
  } else if (e.write_end - e.write_begin == 1) {
    const Write& w = writes[order[e.write_begin]];
    d.ranges.push_back({w.offset, w.length});
    d.payload.assign(data.data() + w.data_pos, data.data() + w.data_pos + w.length);
  } else if (e.write_end > e.write_begin) {
    // Union of the written intervals, then each write copied in program order so later writes win.
    scratch_ranges.clear();
    for (std::size_t i = e.write_begin; i < e.write_end; ++i) {
      const Write& w = writes[order[i]];
      scratch_ranges.push_back({w.offset, w.length});
    }
    std::sort(scratch_ranges.begin(), scratch_ranges.end(),
              [](const ByteRange& a, const ByteRange& b) { return a.offset < b.offset; });
    for (const ByteRange& r : scratch_ranges) {
      if (!d.ranges.empty() && r.offset <= d.ranges.back().end()) {
        d.ranges.back().length = std::max(d.ranges.back().end(), r.end()) - d.ranges.back().offset;
      } else {
        d.ranges.push_back(r);
      }
    }
    scratch_positions.clear();
    std::uint64_t total = 0;
    for (const ByteRange& r : d.ranges) {
      scratch_positions.push_back(total);
      total += r.length;
    }
    d.payload.resize(total);
    for (std::size_t i = e.write_begin; i < e.write_end; ++i) {
      const Write& w = writes[order[i]];
      auto it = std::upper_bound(d.ranges.begin(), d.ranges.end(), w.offset,
                                 [](std::uint64_t off, const ByteRange& r) { return off < r.offset; });
      std::size_t k = static_cast<std::size_t>(it - d.ranges.begin()) - 1;
      std::memcpy(d.payload.data() + scratch_positions[k] + (w.offset - d.ranges[k].offset), data.data() + w.data_pos,
                  w.length);
    }
  }
  if (!staged_delta && !write_through) {
    keep_changed_bytes(e, d, record_undo);  // a staged delta is recorded as given
    return !(d.ranges.empty() && d.size == d.base_size);
  }
  if (record_undo) {
    d.undo.resize(d.payload.size());
    std::uint64_t pos = 0;
    for (const ByteRange& r : d.ranges) {
      std::memcpy(d.undo.data() + pos, old_bytes(e, r.offset, r.length), r.length);
      pos += r.length;
    }
  }
  return true;
}

std::uint64_t Transaction::State::commit(Runtime::Impl& rt, detail::CommitListener* listener) {
  collect_entries();
  if (!rt.sink) return commit_in_memory(rt, listener);  // nothing closes the gate of a runtime without a sink
  size_nodes();
  detail::GateGuard inside(rt.gate);
  return commit_logged(rt, listener);
}

// Builds the delta of every page the commit changes, in `committed`; returns how many (0: nothing changed).
std::size_t Transaction::State::build_deltas(const Runtime::Impl& rt) {
  std::size_t count = 0;
  for (Entry& e : entries) {
    e.delta = kNoDelta;
    if (!e.changes()) continue;
    if (committed.size() <= count) committed.emplace_back();
    if (!build_delta(e, committed[count], rt.options.record_undo)) continue;  // rewrote equal bytes only
    e.delta = count++;
  }
  return count;
}

CommitRecord Transaction::State::record_of(std::uint64_t lsn, std::size_t count) const {
  CommitRecord record;
  record.lsn = lsn;
  record.timestamp_ns = detail::now_ns();
  record.deltas = std::span<const Delta>(committed.data(), count);
  return record;
}

// Writes each delta into its page, which the caller holds exclusively and which is at the delta's base: nothing
// here can fail.
void Transaction::State::apply_deltas() noexcept {
  for (Entry& e : entries) {
    if (e.delta == kNoDelta) continue;
    PageRecord& page = *e.page;
    if (e.grown.data && e.final_size > page.capacity()) {
      if (e.size > 0) std::memcpy(e.grown.data, page.data, e.size);
      page.adopt_block(e.grown);
      e.grown = {};
    } else if (e.final_size > e.size) {
      std::memset(page.data + e.size, 0, e.final_size - e.size);  // bytes past a shrink may be stale
    }
    const Delta& d = committed[e.delta];
    const std::byte* src = d.payload.data();
    for (const ByteRange& r : d.ranges) {
      detail::copy_bytes(page.data + r.offset, src, r.length);
      src += r.length;
    }
    page.size.store(e.final_size, std::memory_order_relaxed);
    page.epoch.store(e.epoch + 1, std::memory_order_release);
  }
}

// Flattened: its steps are functions for reading's sake, but a small commit is made of little else than their calls
// (about an eighth of its instructions went to calling them).
[[gnu::flatten]] std::uint64_t Transaction::State::commit_in_memory(Runtime::Impl& rt,
                                                                    detail::CommitListener* listener) {
  PageLocks locks(entries);
  locks.lock_all();
  if ((blocked_by = reserved_elsewhere(entries)) != nullptr) return 0;
  for (Entry& e : entries) check_and_prepare(e, /*on_head=*/false);
  const std::size_t count = build_deltas(rt);
  if (count == 0) return 0;
  const std::uint64_t lsn = rt.take_lsn();
  apply_deltas();
  committed_count = count;
  // Still under the page locks: commits of the same page reach the listener in LSN order.
  if (listener) listener->published(lsn, std::span<const Delta>(committed.data(), committed_count));
  return lsn;
}

std::uint64_t Transaction::State::commit_logged(Runtime::Impl& rt, detail::CommitListener* listener) {
  failed.store(false, std::memory_order_relaxed);
  std::uint64_t lsn = 0, ticket = 0;
  std::size_t count = 0;
  for (;;) {
    {
      UpdateLocks locks(entries);
      locks.lock_all();
      if ((blocked_by = reserved_elsewhere(entries)) != nullptr) return 0;
      for (Entry& e : entries) check_and_prepare(e, /*on_head=*/true);
      count = build_deltas(rt);
      if (count == 0) return 0;
      lsn = rt.take_lsn();
      ticket = rt.sink->append(record_of(lsn, count));  // throws: nothing was appended, no trace
      if (ticket != CommitSink::kNotYet) {
        link_in_flight();
        break;
      }
    }
    // A failed record's commits are leaving their pages (they need these locks): build again once they have.
    for (Entry& e : entries) free_grown(e);
    rt.sink->wait_appendable();
  }
  try {
    rt.sink->wait_durable(ticket);
  } catch (...) {
    withdraw();
    rt.sink->withdrawn();  // nothing can build on the failed record now: the sink may take records again
    throw;
  }
  wait_for_turn();
  if (failed.load(std::memory_order_acquire)) {
    withdraw();
    throw_cascade(lsn);
  }
  publish_logged(lsn, count, listener);
  return lsn;
}

void Transaction::State::throw_cascade(std::uint64_t lsn) {
  throw Error(ErrorCode::Conflict,
              (lsn != 0 ? "the commit with LSN " + std::to_string(lsn) + " did not take effect: " : std::string()) +
                  "an earlier commit of one of its pages, whose bytes this transaction read or built on, failed "
                  "to become durable" +
                  kRetryAdvice);
}

// Under the update locks, once the record is appended: joins the end of each page's in-flight list, so later
// commits of the page build on this one and publish after it.
void Transaction::State::link_in_flight() noexcept {
  for (std::size_t i = 0; i < entries.size(); ++i) {
    const Entry& e = entries[i];
    detail::InFlight& node = nodes[i];
    const bool changed = e.delta != kNoDelta;
    node.delta = changed ? &committed[e.delta] : nullptr;
    node.epoch_after = changed ? e.epoch + 1 : e.epoch;
    node.size_after = changed ? e.final_size : e.size;
    node.next = nullptr;
    node.failed = &failed;
    node.turn = &turn;
    node.linked = true;
    PageRecord& page = *e.page;
    if (page.in_flight_back) {
      page.in_flight_back->next = &node;
    } else {
      page.in_flight_front.store(&node, std::memory_order_release);
    }
    page.in_flight_back = &node;
  }
}

// Durable: waits until this commit is first in every one of its pages' in-flight lists (every earlier commit of
// those pages has published), or until one it builds on has failed. Holds no lock: waits only on other commits.
void Transaction::State::wait_for_turn() noexcept {
  for (std::size_t i = 0; i < entries.size(); ++i) {
    for (;;) {
      const std::uint32_t seen = turn.load(std::memory_order_acquire);
      if (failed.load(std::memory_order_acquire)) return;
      if (entries[i].page->in_flight_front.load(std::memory_order_acquire) == &nodes[i]) break;
      turn.wait(seen, std::memory_order_acquire);
    }
  }
}
// First in every list: apply and publish under exclusive locks (update locks on pages the commit only read),
// leave the lists, and let the next commits of these pages go.
void Transaction::State::publish_logged(std::uint64_t lsn, std::size_t count,
                                        detail::CommitListener* listener) noexcept {
  for (Entry& e : entries) {
    if (e.delta != kNoDelta) {
      e.page->mutex.lock();
    } else {
      e.page->mutex.lock_update();
    }
  }
  apply_deltas();
  for (std::size_t i = 0; i < entries.size(); ++i) {
    PageRecord& page = *entries[i].page;
    detail::InFlight& node = nodes[i];
    detail::InFlight* next = node.next;
    page.in_flight_front.store(next, std::memory_order_release);
    if (page.in_flight_back == &node) page.in_flight_back = nullptr;
    node.linked = false;
    // Its owner cannot leave while the node is linked and this page locked, so its word is still there.
    if (next) wake(*next);
  }
  committed_count = count;
  if (listener) listener->published(lsn, std::span<const Delta>(committed.data(), committed_count));
  for (auto it = entries.rbegin(); it != entries.rend(); ++it) {
    if (it->delta != kNoDelta) {
      it->page->mutex.unlock();
    } else {
      it->page->mutex.unlock_update();
    }
  }
  for (Entry& e : entries) notify_front(*e.page);
}

// The sink failed this commit (or one it builds on): leaves every in-flight list it is still in, cutting off and
// failing the commits behind it (they built on its bytes or read what it was about to change), and lets waiters
// of these pages re-check.
void Transaction::State::withdraw() noexcept {
  {
    UpdateLocks locks(entries);
    locks.lock_all();
    for (std::size_t i = 0; i < entries.size(); ++i) {
      detail::InFlight& node = nodes[i];
      if (!node.linked) continue;
      PageRecord& page = *entries[i].page;
      detail::InFlight* before = nullptr;
      for (detail::InFlight* it = page.in_flight_front.load(std::memory_order_relaxed); it != &node; it = it->next) {
        before = it;
      }
      for (detail::InFlight* after = node.next; after != nullptr; after = after->next) {
        after->linked = false;
        after->failed->store(true, std::memory_order_release);
        wake(*after);
      }
      page.withdrawals.fetch_add(1, std::memory_order_relaxed);
      if (before) {
        before->next = nullptr;
      } else {
        page.in_flight_front.store(nullptr, std::memory_order_release);
      }
      page.in_flight_back = before;
      node.linked = false;
    }
  }
  for (Entry& e : entries) notify_front(*e.page);
}

// A transaction that changes nothing: its reads and expectations are checked with their pages locked at one
// instant, so what it read was one consistent state. With a sink it read the pages' heads: if a commit it read is
// still in flight, it waits for that one to publish (or to fail, and then fails too) before it returns, so a
// read-only transaction never reports what did not become durable.
void Transaction::State::validate_reads_only(Runtime::Impl& rt) {
  collect_entries();
  if (!rt.sink) {
    PageLocks locks(entries);
    locks.lock_all();
    for (Entry& e : entries) check_and_prepare(e, /*on_head=*/false);
    return;
  }
  size_nodes();
  failed.store(false, std::memory_order_relaxed);
  {
    UpdateLocks locks(entries);
    locks.lock_all();
    bool in_flight = false;
    for (Entry& e : entries) {
      check_and_prepare(e, /*on_head=*/true);
      in_flight = in_flight || e.page->in_flight_back != nullptr;
    }
    if (!in_flight) return;
    link_in_flight();
  }
  wait_for_turn();
  if (failed.load(std::memory_order_acquire)) {
    withdraw();
    throw_cascade(0);
  }
  publish_logged(0, 0, nullptr);  // only leaves the lists
}

}  // namespace mmsb
