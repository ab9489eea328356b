// Transactions: staging, and the commit protocol described in mmsb/runtime.hpp.
//
// Commit = lock the touched pages exclusively in PageId order → check everything (existence, epochs, bounds) and
// allocate any memory a resize needs → build each page's delta (with undo bytes) → take the LSN and hand the
// record to the sink → apply (cannot fail) → unlock. Everything that can fail happens before the sink sees the
// record and before any byte changes, which is what makes a failed commit leave no trace.
//
// Transaction state objects are recycled through a per-thread pool so that, once warm, a commit allocates
// nothing: the staged writes, the deltas and their vectors keep their capacity.
#include <algorithm>
#include <chrono>
#include <cstring>
#include <functional>
#include <numeric>
#include <random>
#include <shared_mutex>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "mmsb/runtime.hpp"
#include "delta/changed_runs.hpp"
#include "runtime/runtime_impl.hpp"

namespace mmsb {

struct Transaction::State {
  struct Write {
    PageRecord* page;
    std::uint64_t offset;
    std::uint64_t length;
    std::uint64_t data_pos;  // where its bytes start in `data`
  };
  struct PageOp {
    PageRecord* page = nullptr;
    bool resize = false;
    std::uint64_t new_size = 0;
    bool expect = false;
    std::uint64_t expected_epoch = 0;
    bool read = false;  // read through the transaction: the commit validates `read_epoch`
    std::uint64_t read_epoch = 0;
    std::size_t delta_index = kNoDelta;
    // Whether the commit changes the page (else it only validates it).
    bool changes() const noexcept { return resize || delta_index != kNoDelta; }
  };
  static constexpr std::size_t kNoDelta = ~std::size_t{0};

  // One touched page during commit.
  struct Entry {
    PageRecord* page = nullptr;
    std::size_t write_begin = 0, write_end = 0;  // its writes in `order`
    const PageOp* op = nullptr;
    std::uint64_t epoch = 0, size = 0, final_size = 0;
    detail::Block grown;  // new memory when the page outgrows its capacity
    std::size_t delta = kNoDelta;  // its delta in `committed`, when the commit changes the page

    // Written pages are locked exclusively; pages only read or expected are locked shared (enough to hold their
    // epochs still while the commit validates them).
    bool changes() const noexcept { return write_end > write_begin || (op && op->changes()); }
  };

  bool active = false;
  std::vector<Write> writes;
  std::vector<std::byte> data;
  std::vector<PageOp> ops;
  std::vector<Delta> staged_deltas;
  std::string intent;
  std::uint32_t source = 0;
  bool write_through = false;  // record staged bytes as written, without comparing them with the page

  // Commit scratch, kept for its capacity.
  std::vector<std::size_t> order;
  std::vector<Entry> entries;
  std::vector<Delta> committed;
  std::size_t committed_count = 0;
  std::vector<ByteRange> scratch_ranges;
  std::vector<std::uint64_t> scratch_positions;
  std::vector<std::byte> old_scratch;

  // The page and epoch a commit found when it failed with Conflict (kept past reset() for Runtime::transact).
  PageRecord* conflict_page = nullptr;
  std::uint64_t conflict_epoch = 0;

  void reset() noexcept {
    active = false;
    writes.clear();
    data.clear();
    ops.clear();
    staged_deltas.clear();
    intent.clear();
    source = 0;
    write_through = false;
    for (Entry& e : entries) free_grown(e);
    entries.clear();
  }
  static void free_grown(Entry& e) noexcept {
    if (e.grown.data) PageAllocator::global().deallocate(e.grown.data, e.grown.capacity);
    e.grown = {};
  }

  PageOp& op_for(PageRecord* page) {
    for (PageOp& op : ops)
      if (op.page == page) return op;
    ops.push_back(PageOp{});
    ops.back().page = page;
    return ops.back();
  }

  // The one place a read through the transaction is recorded (Transaction::read and read_for_update, and any
  // typed view built on them): the first read of a page fixes the epoch the commit validates; a later read that
  // finds the page moved fails at once, since the transaction can no longer commit.
  void note_read(PageRecord* page, std::uint64_t epoch) {
    PageOp& op = op_for(page);
    if (!op.read) {
      op.read = true;
      op.read_epoch = epoch;
    } else if (op.read_epoch != epoch) {
      throw_conflict(*page, op.read_epoch, epoch, "read it");
    }
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
  void validate_reads_only();
  void collect_entries();
  void check_and_prepare(Entry& e);
  bool build_delta(const Entry& e, Delta& d, bool record_undo);
  const std::byte* old_bytes(const Entry& e, std::uint64_t offset, std::uint64_t length);
  void keep_changed_bytes(const Entry& e, Delta& d, bool record_undo);
};

namespace {
constexpr const char* kRetryAdvice = "; nothing was committed: run the transaction again, reads included "
                                     "(Runtime::transact does)";
}

void Transaction::State::throw_conflict(const PageRecord& page, std::uint64_t seen, std::uint64_t now,
                                        const char* how) {
  conflict_page = const_cast<PageRecord*>(&page);
  conflict_epoch = now;
  throw Error(ErrorCode::Conflict, "page " + page.id.to_string() + " moved from epoch " + std::to_string(seen) +
                                       " to " + std::to_string(now) + " since this transaction " + how +
                                       kRetryAdvice);
}

void Transaction::State::throw_unexpected_epoch(const PageRecord& page, std::uint64_t expected, std::uint64_t now) {
  conflict_page = const_cast<PageRecord*>(&page);
  conflict_epoch = now;
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
// validates it) and unlocks them, in reverse order, on scope exit.
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
  state_->reset();
  state_->committed_count = 0;
  try {
    state_pool.free.push_back(state_);
  } catch (...) {
    delete state_;
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
  throw Error(ErrorCode::NodeFailed, "the commit with LSN " + std::to_string(lsn) +
                                         " took effect (do not retry it), but propagating it failed: " + what,
              lsn);
}

[[noreturn]] void throw_inactive() {
  throw Error(ErrorCode::InvalidArgument,
              "the transaction is not active (already committed, aborted or moved from); call Runtime::begin()");
}
}  // namespace

void Transaction::write(PageId id, std::uint64_t offset, std::span<const std::byte> bytes) {
  if (!active()) throw_inactive();
  PageRecord* page = runtime_->find_live_or_throw(id);
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
                "write of " + detail::range_text(offset, bytes.size()) + " is outside page " + id.to_string() +
                    " of " + std::to_string(size) + " bytes" +
                    (resized ? " (after this transaction's resize)" : "; resize the page first"));
  }
  if (bytes.empty()) return;
  State& st = *state_;
  st.writes.push_back({page, offset, bytes.size(), st.data.size()});
  st.data.insert(st.data.end(), bytes.begin(), bytes.end());
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
  State::PageOp& op = state_->op_for(page);
  if (op.delta_index != State::kNoDelta) {
    throw Error(ErrorCode::InvalidArgument, "page " + delta.page.to_string() +
                                                " already has a delta in this transaction; compose() them first");
  }
  state_->staged_deltas.push_back(delta);
  op.delta_index = state_->staged_deltas.size() - 1;
}

void Transaction::expect_epoch(PageId id, std::uint64_t epoch) {
  if (!active()) throw_inactive();
  PageRecord* page = runtime_->find_live_or_throw(id);
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

void Transaction::read(PageId id, std::uint64_t offset, std::span<std::byte> out) {
  if (!active()) throw_inactive();
  PageRecord* page = runtime_->find_or_throw(id);
  std::uint64_t epoch = 0;
  {
    std::shared_lock lock(page->mutex);
    detail::copy_out(*page, offset, out);
    epoch = page->epoch.load(std::memory_order_relaxed);
  }
  state_->note_read(page, epoch);
}

std::vector<std::byte> Transaction::read_all(PageId id) {
  if (!active()) throw_inactive();
  PageRecord* page = runtime_->find_or_throw(id);
  std::vector<std::byte> out;
  std::uint64_t epoch = 0;
  {
    std::shared_lock lock(page->mutex);
    if (page->deleted.load(std::memory_order_relaxed)) detail::throw_not_found(id);
    out.assign(page->data, page->data + page->size.load(std::memory_order_relaxed));
    epoch = page->epoch.load(std::memory_order_relaxed);
  }
  state_->note_read(page, epoch);
  return out;
}

PageInfo Transaction::read_for_update(PageId id) {
  if (!active()) throw_inactive();
  PageRecord* page = runtime_->find_or_throw(id);
  PageInfo info;
  {
    std::shared_lock lock(page->mutex);
    if (page->deleted.load(std::memory_order_relaxed)) detail::throw_not_found(id);
    info = {id, page->size.load(std::memory_order_relaxed), page->epoch.load(std::memory_order_relaxed),
            page->location};
  }
  state_->note_read(page, info.epoch);
  return info;
}

void Transaction::abort() noexcept {
  if (state_) {
    state_->reset();
  }
}

void Transaction::wait_before_retry(unsigned attempt) noexcept {
  // Another commit won the race and has already published. The first retries only let it (and others) run; after
  // that, a random sleep that doubles per attempt (up to ~1 ms) spreads the contenders out.
  if (attempt <= 2) {
    std::this_thread::yield();
    return;
  }
  thread_local std::minstd_rand jitter(static_cast<std::uint32_t>(std::hash<std::thread::id>{}(std::this_thread::get_id())));
  const std::uint32_t ceiling_us = 1u << std::min(attempt - 2, 10u);
  std::this_thread::sleep_for(std::chrono::microseconds(jitter() % ceiling_us + 1));
}

std::span<const Delta> Transaction::committed_deltas() const noexcept {
  if (!state_) return {};
  return {state_->committed.data(), state_->committed_count};
}

std::uint64_t Transaction::commit() {
  if (!active()) throw_inactive();
  State& st = *state_;
  st.committed_count = 0;
  st.conflict_page = nullptr;
  if (!st.changes_anything()) {
    // Reads and expectations only: nothing to log or publish, but they are validated, so a read-only transaction
    // fails with Conflict unless what it read was one consistent state.
    try {
      if (!st.ops.empty()) st.validate_reads_only();
    } catch (...) {
      st.reset();
      throw;
    }
    st.reset();
    return 0;
  }
  detail::CommitListener* listener = runtime_->listener.load(std::memory_order_acquire);
  std::uint64_t lsn = 0;
  try {
    if (listener) listener->reserve();
  } catch (...) {
    st.reset();
    throw;
  }
  try {
    detail::GateGuard inside(runtime_->gate);
    lsn = st.commit(*runtime_, listener);
    st.reset();
    if (lsn == 0 && listener) listener->release();  // nothing changed: nothing was published
  } catch (...) {
    if (listener) listener->release();
    st.committed_count = 0;
    st.reset();
    throw;
  }
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
  order.resize(writes.size());
  std::iota(order.begin(), order.end(), std::size_t{0});
  if (writes.size() == 1 &&
      (ops.empty() || (ops.size() == 1 && ops[0].page == writes[0].page && ops[0].delta_index == kNoDelta))) {
    // The common blind write and read-modify-write of one page.
    Entry e;
    e.page = writes[0].page;
    e.write_end = 1;
    e.op = ops.empty() ? nullptr : &ops[0];
    entries.push_back(e);
    return;
  }
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
    Entry e;
    e.page = page;
    e.write_begin = w;
    while (w < order.size() && writes[order[w]].page == page) ++w;
    e.write_end = w;
    if (o < ops.size() && ops[o].page == page) e.op = &ops[o++];
    if (e.op && e.op->delta_index != kNoDelta && (e.write_end > e.write_begin || e.op->resize)) {
      throw Error(ErrorCode::InvalidArgument, "page " + page->id.to_string() +
                                                  " has both a delta and writes or a resize in one transaction; "
                                                  "stage one or the other");
    }
    entries.push_back(e);
  }
}

// Runs under the page's exclusive lock; throws without side effects (grown memory is freed by reset()).
void Transaction::State::check_and_prepare(Entry& e) {
  PageRecord& page = *e.page;
  if (page.deleted.load(std::memory_order_relaxed)) detail::throw_not_found(page.id);
  if (e.changes()) refuse_external(page);
  e.epoch = page.epoch.load(std::memory_order_relaxed);
  e.size = page.size.load(std::memory_order_relaxed);
  e.final_size = e.size;
  if (e.op) {
    if (e.op->read && e.op->read_epoch != e.epoch) throw_conflict(page, e.op->read_epoch, e.epoch, "read it");
    if (e.op->expect && e.op->expected_epoch != e.epoch) throw_unexpected_epoch(page, e.op->expected_epoch, e.epoch);
    if (e.op->delta_index != kNoDelta) {
      const Delta& d = staged_deltas[e.op->delta_index];
      if (d.base_epoch != e.epoch || d.base_size != e.size) {
        conflict_page = &page;
        conflict_epoch = e.epoch;
        throw Error(ErrorCode::Conflict,
                    "delta for page " + page.id.to_string() + " was made against epoch " +
                        std::to_string(d.base_epoch) + " (size " + std::to_string(d.base_size) +
                        ") but the page is at epoch " + std::to_string(e.epoch) + " (size " +
                        std::to_string(e.size) + "); nothing was committed: rebase the delta on the current page");
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
  if (e.final_size > page.capacity) {
    e.grown = PageAllocator::global().allocate(e.final_size, detail::Zeroing::Zeroed);
  }
}

// Fills `d` with the change of one page. Ranges come out canonical: sorted, merged where they touch.
// The page's bytes [offset, offset + length) before this commit: zero beyond its size (a resize zero-extends).
// Points into the page when it can, else into `old_scratch` (valid until the next call).
const std::byte* Transaction::State::old_bytes(const Entry& e, std::uint64_t offset, std::uint64_t length) {
  const PageRecord& page = *e.page;
  if (offset + length <= e.size) return page.data + offset;
  if (old_scratch.size() < length) old_scratch.resize(length);
  const std::uint64_t have = offset < e.size ? e.size - offset : 0;
  if (have > 0) std::memcpy(old_scratch.data(), page.data + offset, have);
  std::memset(old_scratch.data() + have, 0, length - have);
  return old_scratch.data();
}

// Change-only commits: keeps only the runs of `d` (ranges and payload as staged) whose bytes differ from the page,
// merging runs closer than a range header costs in the log, and records their old bytes as undo.
void Transaction::State::keep_changed_bytes(const Entry& e, Delta& d, bool record_undo) {
  // A range costs about 8 bytes in a log record; a merged gap costs its bytes once (payload) or twice (and undo).
  const std::uint64_t merge_gap = record_undo ? 4 : 8;
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
  d.intent = intent;
  d.has_undo = record_undo;
  const bool staged_delta = e.op && e.op->delta_index != kNoDelta;
  if (staged_delta) {
    const Delta& staged = staged_deltas[e.op->delta_index];
    d.ranges = staged.ranges;
    d.payload = staged.payload;
    if (!staged.intent.empty() && intent.empty()) d.intent = staged.intent;
  } else if (e.write_end - e.write_begin == 1) {
    const Write& w = writes[order[e.write_begin]];
    d.ranges.push_back({w.offset, w.length});
    d.payload.assign(data.begin() + static_cast<std::ptrdiff_t>(w.data_pos),
                     data.begin() + static_cast<std::ptrdiff_t>(w.data_pos + w.length));
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
      std::memcpy(d.payload.data() + scratch_positions[k] + (w.offset - d.ranges[k].offset),
                  data.data() + w.data_pos, w.length);
    }
  }
  if (!staged_delta && !write_through) {
    keep_changed_bytes(e, d, record_undo);  // a staged delta is recorded as given
    if (d.ranges.empty() && d.size == d.base_size) return false;
  } else if (record_undo) {
    d.undo.resize(d.payload.size());
    std::uint64_t pos = 0;
    for (const ByteRange& r : d.ranges) {
      std::memcpy(d.undo.data() + pos, old_bytes(e, r.offset, r.length), r.length);
      pos += r.length;
    }
  }
  if (record_undo && e.final_size < e.size) d.undo_tail.assign(page.data + e.final_size, page.data + e.size);
  return true;
}

std::uint64_t Transaction::State::commit(Runtime::Impl& rt, detail::CommitListener* listener) {
  collect_entries();
  PageLocks locks(entries);
  locks.lock_all();
  for (Entry& e : entries) check_and_prepare(e);

  std::size_t count = 0;
  for (Entry& e : entries) {
    if (!e.changes()) continue;
    if (committed.size() <= count) committed.emplace_back();
    if (!build_delta(e, committed[count], rt.options.record_undo)) continue;  // rewrote equal bytes only
    e.delta = count++;
  }
  if (count == 0) return 0;

  std::uint64_t lsn = rt.take_lsn();
  if (rt.sink) {
    CommitRecord record;
    record.lsn = lsn;
    record.timestamp_ns = detail::now_ns();
    record.deltas = std::span<const Delta>(committed.data(), count);
    rt.sink->write(record);
  }

  // Apply: nothing below can fail.
  for (Entry& e : entries) {
    if (e.delta == kNoDelta) continue;
    PageRecord& page = *e.page;
    if (e.grown.data) {
      if (e.size > 0) std::memcpy(e.grown.data, page.data, e.size);
      if (page.data) PageAllocator::global().deallocate(page.data, page.capacity);
      page.data = e.grown.data;
      page.capacity = e.grown.capacity;
      e.grown = {};
    } else if (e.final_size > e.size) {
      std::memset(page.data + e.size, 0, e.final_size - e.size);  // bytes past a shrink may be stale
    }
    const Delta& d = committed[e.delta];
    const std::byte* src = d.payload.data();
    for (const ByteRange& r : d.ranges) {
      std::memcpy(page.data + r.offset, src, r.length);
      src += r.length;
    }
    page.size.store(e.final_size, std::memory_order_relaxed);
    page.epoch.store(e.epoch + 1, std::memory_order_release);
  }
  committed_count = count;
  // Still under the page locks: commits of the same page reach the listener in LSN order.
  if (listener) listener->published(lsn, std::span<const Delta>(committed.data(), committed_count));
  return lsn;
}

// A transaction that changes nothing: its reads and expectations are checked with their pages locked shared at
// one instant, so what it read was one consistent state.
void Transaction::State::validate_reads_only() {
  collect_entries();
  PageLocks locks(entries);
  locks.lock_all();
  for (Entry& e : entries) check_and_prepare(e);
}

}  // namespace mmsb
