// mmsb/runtime.hpp — pages, transactions and the commit sequence.
//
// A Runtime owns a set of pages: byte arrays identified by PageId, each with an epoch that counts its committed
// changes. All writes go through a Transaction, which stages them and commits them atomically: the commit takes
// the next global LSN (log sequence number), each page whose bytes it changes moves to its next epoch, and that
// change is recorded as a Delta (only the bytes that differ, with undo bytes unless RuntimeOptions::record_undo is
// off) that is handed to the commit sink, if one is set, before any reader can see it.
//
//   mmsb::Runtime rt;
//   mmsb::PageId counter = rt.create_page(sizeof(std::int64_t));
//   auto txn = rt.begin();
//   txn.write_value<std::int64_t>(counter, 0, 42);
//   std::uint64_t lsn = txn.commit();
//
// Visibility. Readers (read(), read_value(), ReadView, a node's inputs) see a page's last published state, under
// the page's shared lock. A commit publishes all of its pages at once, under their
// exclusive locks, which it holds only to copy its delta in; so a reader sees each commit entirely or not at all,
// also across several pages read through one ReadView, and never waits for more than that copy:
//   - Without a sink, a commit builds and publishes in one step, its pages locked exclusively (shared for pages it
//     only read) while it checks, diffs and copies: all in memory.
//   - With a sink (the durable log), a commit becomes visible only once its record is durable, and readers never
//     wait for the disk: the commit checks and builds its deltas under update locks, which readers ignore, hands
//     the record to the sink, and releases them; it waits for the sync holding no lock, then publishes. Until then
//     it is in flight: readers see the page without it; a later commit to the same page builds on it (on the
//     page's head: the published bytes plus the in-flight deltas, in LSN order) without waiting for its sync, so
//     commits of one page share one group sync; commits of one page publish in LSN order. Reads through a
//     Transaction see the head too (a read-modify-write builds on in-flight commits, so it neither loses them nor
//     waits for their sync); such a transaction publishes after them, and a read-only one returns from commit()
//     only once what it read has published. If the sink fails a commit, the commits in flight behind it on its
//     pages (built on it, or having read it) fail too (IoError, or Conflict: retry), and none leaves a trace.
//   - Deleting a page, and a node writing its output page, wait for the page's in-flight commits to publish.
// Once commit() returns, every later read on any thread observes the commit.
//
// Failure. A transaction that is aborted, destroyed without commit, or whose commit throws leaves no trace: no
// page byte, epoch or size changes. (Its LSN may be skipped: LSNs strictly increase but need not be dense.) The
// one exception is NodeFailed (IMMEDIATE propagation): the commit took effect and a wave after it failed; see
// mmsb/error.hpp.
//
// Thread-safety: all Runtime members may be called concurrently from any thread. A Transaction belongs to one
// thread at a time and is not safe for concurrent use; many transactions may run in parallel. The Runtime must
// outlive its transactions and views.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

#include "mmsb/delta.hpp"
#include "mmsb/error.hpp"
#include "mmsb/page_id.hpp"
#include "mmsb/typed_view.hpp"

namespace mmsb {

class Runtime;
namespace detail {
struct RuntimeAccess;
struct Reservations;
class TransactTurn;
}  // namespace detail

// Where a page's bytes live. Device placement takes effect once the GPU mirror is attached.
enum class Location : std::uint8_t { Host = 1, Device = 2, Both = 3 };

struct PageInfo {
  PageId id;
  std::uint64_t size = 0;
  std::uint64_t epoch = 0;  // 0 at creation, +1 per committed change
  Location location = Location::Host;
};

// What the runtime reports to its commit sink for each LSN. Spans point into runtime-owned memory that is valid
// only during the call.
struct CommitRecord {
  struct CreatedPage {
    PageId id;
    std::uint64_t size;
    Location location;
    std::string name = {};  // "" for an unnamed page
  };
  struct RenamedPage {
    PageId id;
    std::string name = {};  // the page's new name; "" when its name was removed
  };
  std::uint64_t lsn = 0;
  std::uint64_t timestamp_ns = 0;        // wall clock, nanoseconds since the Unix epoch
  std::span<const Delta> deltas;         // one per changed page, in PageId order
  std::span<const CreatedPage> created;  // pages created by this record
  std::span<const PageId> deleted;       // pages deleted by this record (their names are free again)
  std::span<const RenamedPage> renamed;  // pages renamed by this record
};

// Receives every commit before it becomes visible (the durable log implements this). A commit hands its record
// over in two steps, so that readers never wait for the disk and commits of one page can share a sync:
//   append(record)        while the commit holds its pages' update locks (which readers ignore): orders the
//                         record and returns a ticket. Records touching the same page arrive in LSN order; those
//                         of commits on disjoint pages may arrive concurrently and out of LSN order. If it throws,
//                         the commit fails with that exception and leaves no trace.
//   wait_durable(ticket)  holding no lock: returns once the record is as durable as the sink promises. If it
//                         throws, the commit fails with that exception and leaves no trace, and so does every
//                         commit appended after it that touches one of its pages (they were built on it).
//                         It may instead return kNotYet, having taken nothing: then the commit releases its
//                         locks, calls wait_appendable() and builds its record again (on the pages as they are then).
//   withdrawn()           after a wait_durable() that threw, once the commit (and every commit built on it) has
//                         left its pages, so that nothing can build on the failed record any more.
// Each ticket is waited for exactly once. A sink keeps its records a prefix: no record appended after a failed one
// and before the withdrawn() calls of the failed records may become durable (a replay would apply a record whose
// predecessor is missing); the sink fails those at wait_durable(), or answers kNotYet meanwhile. write() is all
// steps at once; page creation and deletion use it. The defaults are built on write(), for a sink that has nothing
// to wait for.
class CommitSink {
 public:
  virtual ~CommitSink() = default;
  virtual void write(const CommitRecord& record) = 0;
  virtual std::uint64_t append(const CommitRecord& record) {
    write(record);
    return 0;
  }
  virtual void wait_durable(std::uint64_t ticket) { (void)ticket; }
  virtual void withdrawn() noexcept {}
  static constexpr std::uint64_t kNotYet = ~std::uint64_t{0};
  virtual void wait_appendable() {}
};

struct RuntimeOptions {
  std::uint32_t rank = 0;   // owner rank stored in the high bits of every PageId created here
  bool record_undo = true;  // keep old bytes in committed deltas (needed to invert or roll back a commit)
  // LSN of the first commit (>= 1). A runtime rebuilt from a log sets it past the log's last LSN, so the LSNs of
  // new commits keep increasing in that log; last_lsn() is first_lsn - 1 until the first commit.
  std::uint64_t first_lsn = 1;
};

// Ids reserved in one step, so a worker can create many pages without touching the shared counter:
//   auto block = rt.reserve_ids(1000);  for (...) rt.create_page(block.next(), 64);
// Thread-safety: an IdBlock is a plain value; use each from one thread.
class IdBlock {
 public:
  IdBlock() = default;
  IdBlock(PageId first, std::uint64_t count) : next_(first), remaining_(count) {}
  std::uint64_t remaining() const noexcept { return remaining_; }
  // The next reserved id; throws Error(ResourceExhausted) when the block is used up.
  PageId next();

 private:
  PageId next_;
  std::uint64_t remaining_ = 0;
};

class Transaction;

// A consistent snapshot of a few pages: holds their locks shared (in PageId order) until destroyed, so commits to
// these pages cannot publish meanwhile (they wait). Keep views short-lived. Thread-safety: use from one thread;
// must not outlive the Runtime.
class ReadView {
 public:
  ReadView(ReadView&&) noexcept;
  ReadView& operator=(ReadView&&) noexcept;
  ~ReadView();

  // The page's bytes as of the snapshot; valid while the view lives. Throws Error(NotFound) for a page not in
  // the view.
  std::span<const std::byte> bytes(PageId id) const;
  PageInfo info(PageId id) const;
  template <class T>
  T value(PageId id, std::uint64_t offset) const {
    static_assert(std::is_trivially_copyable_v<T>);
    auto b = bytes(id);
    if (offset > b.size() || b.size() - offset < sizeof(T)) throw_out_of_range(id, offset, sizeof(T), b.size());
    T out;
    std::memcpy(&out, b.data() + offset, sizeof(T));
    return out;
  }
  // The page's bytes as `count` elements of T from byte `offset` (default: every element of the page, which must
  // be a whole number of T), valid while the view lives; no copy. Throws Error(InvalidArgument) when they do not
  // fit or are not aligned for T (mmsb/typed_view.hpp), Error(NotFound) for a page not in the view.
  template <PageValue T>
  std::span<const T> span(PageId id, std::uint64_t offset = 0, std::uint64_t count = kWholePage) const {
    return view_as<T>(bytes(id), ViewSite{"ReadView::span", id}, offset, count);
  }

 private:
  friend class Runtime;
  struct Impl;
  explicit ReadView(std::unique_ptr<Impl> impl);
  [[noreturn]] static void throw_out_of_range(PageId id, std::uint64_t offset, std::uint64_t length,
                                              std::uint64_t size);
  std::unique_ptr<Impl> impl_;
};

class Runtime {
 public:
  explicit Runtime(RuntimeOptions options = {});
  ~Runtime();
  Runtime(const Runtime&) = delete;
  Runtime& operator=(const Runtime&) = delete;

  // Creates a zero-filled page of `size` bytes (0 allowed) with the next id; takes an LSN.
  PageId create_page(std::uint64_t size, Location location = Location::Host);
  // Creates a page with an id from reserve_ids(); throws Error(InvalidArgument) for an id not reserved here or
  // already used.
  PageId create_page(PageId reserved_id, std::uint64_t size, Location location = Location::Host);
  IdBlock reserve_ids(std::uint64_t count);

  // Named pages. A page may carry a name ("particles/3") that no other live page has; it is logged and
  // checkpointed with the page, so a program finds its state by name after a restart, also when a later version
  // of the program creates other pages first (ids follow creation order, names do not). A name is 1 to 1024 bytes
  // without control characters, and not of the form of a page id ("p0:17", "17"). Creating a named page, or
  // renaming one, takes an LSN. Throws Error(InvalidArgument) for a bad name or one another page holds.
  PageId create_page(std::string_view name, std::uint64_t size, Location location = Location::Host);
  PageId create_page(PageId reserved_id, std::string_view name, std::uint64_t size, Location location = Location::Host);
  // The page named `name`, created with `size` zero bytes when there is none: what a program calls at start-up,
  // whether the state is new or recovered. Throws Error(InvalidArgument) when the page exists with another size
  // or location (resize_page() it, or use another name).
  PageId open_page(std::string_view name, std::uint64_t size, Location location = Location::Host);
  // The live page named `name`, or nullopt.
  std::optional<PageId> find(std::string_view name) const;
  // The name of page `id` ("" when it has none). Throws Error(NotFound) for a missing page.
  std::string name_of(PageId id) const;
  // Gives page `id` the name `new_name`, or removes its name when `new_name` is empty, as one logged record; the
  // old name is free afterwards. Returns the record's LSN (0 when the name does not change). Throws
  // Error(NotFound) for a missing page.
  std::uint64_t rename_page(PageId id, std::string_view new_name);
  // Every named live page with its name, in id order (a snapshot).
  std::vector<std::pair<PageId, std::string>> page_names() const;

  // Creates a read-only page whose bytes are `bytes`, memory the runtime does not own and never copies (a
  // memory-mapped model file, say). `owner` (may be null) is kept alive until the page is deleted or the runtime
  // destroyed; without one the caller must keep `bytes` valid that long. Writes, resizes and deltas to the page
  // fail with Error(InvalidArgument); its epoch stays 0. It is read like any page (read(), ReadView, node inputs),
  // but must not be the output of a Propagator node. A commit sink sees it created with its size; its bytes are
  // not logged, so a program that replays a log re-creates its external pages itself. Takes an LSN.
  PageId create_external_page(std::span<const std::byte> bytes, std::shared_ptr<const void> owner = nullptr,
                              Location location = Location::Host);
  // True for pages made by create_external_page(). Throws Error(NotFound) for a missing page.
  bool is_external(PageId id) const;
  // Copy on write for an external page: copies its bytes once into memory the runtime owns, after which it is an
  // ordinary page (writes, deltas and resizes allowed; id, size and epoch unchanged) and its `owner` is released.
  // The external memory itself is never written. Returns true when it copied, false for a page that was already
  // private. Nothing is logged (the bytes do not change); later commits to the page are, as for any page. Takes
  // the page's exclusive lock, so it waits for readers (ReadViews, running node functions). Throws
  // Error(NotFound) for a missing page.
  bool make_private(PageId id);

  // Deletes a page; its id is never reused. Throws Error(NotFound) when the page does not exist.
  void delete_page(PageId id);
  // Resizes a page as one commit (truncating, or zero-extending); returns the commit's LSN.
  std::uint64_t resize_page(PageId id, std::uint64_t new_size);

  bool contains(PageId id) const noexcept;
  PageInfo info(PageId id) const;
  std::uint64_t page_count() const noexcept;  // live pages
  // The ids of the live pages, in id order (a snapshot: pages may be created or deleted meanwhile).
  std::vector<PageId> page_ids() const;

  // Copies `out.size()` bytes from offset `offset` under the page's shared lock.
  void read(PageId id, std::uint64_t offset, std::span<std::byte> out) const;
  std::vector<std::byte> read_all(PageId id) const;
  template <class T>
  T read_value(PageId id, std::uint64_t offset) const {
    static_assert(std::is_trivially_copyable_v<T>);
    T out;
    read(id, offset, std::as_writable_bytes(std::span<T, 1>(&out, 1)));
    return out;
  }
  // Copies `out.size()` elements of T from byte `offset` (a multiple of alignof(T)), as read() does.
  template <PageValue T>
  void read_span(PageId id, std::uint64_t offset, std::span<T> out) const {
    if (offset % alignof(T) != 0) detail::throw_misaligned("Runtime::read_span", id, offset, alignof(T));
    read(id, offset, std::as_writable_bytes(out));
  }
  // Snapshot of several pages at one instant (duplicates allowed). Throws Error(NotFound) for a missing page.
  ReadView read_view(std::span<const PageId> ids) const;

  Transaction begin();

  // Runs `fn(txn)` on a fresh transaction and commits it, retrying the whole of it (reads included) while the
  // commit or one of its reads fails with Conflict, at most `max_attempts` times in all; returns the commit's LSN
  // (0 when it changed nothing). Every other error, and the last Conflict once the attempts are spent, reaches the
  // caller unchanged, so a NodeFailed (the commit took effect) is never retried. `fn` may run several times: it
  // must touch pages only through `txn` (and must not call transact() itself). A `max_attempts` of 0 counts as 1.
  //
  // Fairness: a bounded number of attempts under any contention. The first kOptimisticAttempts attempts are
  // optimistic. After that many conflicts the call takes this runtime's serial turn (first come, first served
  // among such calls) and holds it until it returns; while it holds the turn, each page its attempts read (read,
  // read_value, read_all, read_for_update, expect_epoch, apply) is reserved before it is read, and any other
  // commit that would change a reserved page waits, holding no lock, until the call returns. Readers never wait,
  // nor do commits that leave reserved pages unchanged. An attempt made with the turn therefore cannot lose to
  // other transactions: transact() commits by attempt kOptimisticAttempts + 1 (the default `max_attempts` leaves
  // ample room), plus the time spent waiting for the turn. Outside the guarantee: a Conflict caused by a commit
  // sink failing a commit the attempt built on (the next attempt is again protected), a page changed by a graph
  // node's output (propagation does not wait for reservations), a stale epoch given to expect_epoch()/apply(), and
  // `fn` itself committing to the pages it reads through another transaction. Uncontended calls and blind writes
  // pay nothing for this but one atomic load per changed page at commit.
  //   rt.transact([&](mmsb::Transaction& txn) {
  //     txn.write_value<std::int64_t>(acct, 0, txn.read_value<std::int64_t>(acct, 0) + 100);
  //   });
  template <class Fn>
  std::uint64_t transact(Fn&& fn, unsigned max_attempts = 64);
  static constexpr unsigned kOptimisticAttempts = 3;

  // The highest LSN taken so far (0 before the first), by a commit that may still be in flight to the sink.
  std::uint64_t last_lsn() const noexcept;

  // Sets (or clears, with nullptr) the sink that receives every commit; not to be called while commits run.
  void set_commit_sink(std::shared_ptr<CommitSink> sink);

  const RuntimeOptions& options() const noexcept;

  struct Impl;

 private:
  friend struct detail::RuntimeAccess;
  std::unique_ptr<Impl> impl_;
};

// A set of staged changes committed atomically. Reads inside a transaction see committed state (with a sink, the
// pages' heads: see "Visibility" above), not the transaction's own staged writes. Destroying an uncommitted
// transaction aborts it.
//
// Serializable by default (optimistic concurrency). Every read made through the transaction (read, read_value,
// read_all, read_for_update, and any typed view built on them) records the epoch of the page it read; commit()
// checks those epochs with the pages locked and fails with Conflict, committing nothing, if any page moved. A
// committed transaction is thus equivalent to running alone at its LSN: what it read is exactly the state that all
// lower LSNs produced on those pages. Writes record nothing (a blind write costs what it always did), and reads made
// outside the transaction (Runtime::read, a ReadView) are not tracked. A transaction that only reads commits
// nothing and returns 0, but it too fails with Conflict unless all it read was one consistent state. Retry with
// Runtime::transact(). (Extending the API: a new read path of Transaction records its page's epoch through the
// same internal call as read(), State::note_read in runtime/transaction.cpp, or is built on read().)
class Transaction {
 public:
  Transaction(Transaction&&) noexcept;
  Transaction& operator=(Transaction&&) noexcept;
  ~Transaction();

  // Stages a write of `bytes` at `offset`. Checks now (and again at commit) that the page exists and the range
  // fits; later writes to the same bytes win. Throws Error(NotFound) or Error(InvalidArgument).
  void write(PageId id, std::uint64_t offset, std::span<const std::byte> bytes);
  template <class T>
  void write_value(PageId id, std::uint64_t offset, const T& value) {
    static_assert(std::is_trivially_copyable_v<T>);
    write(id, offset, std::as_bytes(std::span<const T, 1>(&value, 1)));
  }
  // Stages a write of `values` at byte `offset`, which must be a multiple of alignof(T) (so the page can be viewed
  // as T later); otherwise as write(). Takes a span, or any contiguous container of a PageValue (vector, array).
  template <PageValue T>
  void write_span(PageId id, std::uint64_t offset, std::span<const T> values) {
    if (offset % alignof(T) != 0) detail::throw_misaligned("Transaction::write_span", id, offset, alignof(T));
    write(id, offset, std::as_bytes(values));
  }
  template <class Container>
  requires requires(const Container& c) {
    {std::span(c)};
    requires PageValue<typename decltype(std::span(c))::value_type>;
  }
  void write_span(PageId id, std::uint64_t offset, const Container& values) {
    auto all = std::span(values);
    write_span<typename decltype(all)::value_type>(id, offset, all);
  }
  // Stages a resize (applied before this transaction's writes to the page, which may then use the new size).
  void resize(PageId id, std::uint64_t new_size);
  // Stages a whole delta; the commit fails with Error(Aborted) unless the page is then at delta.base_epoch with
  // size delta.base_size. A page may receive either one delta or writes/resizes in one transaction, not both.
  void apply(const Delta& delta);
  // Makes the commit fail with Error(Conflict) unless the page is at `epoch` (optimistic concurrency by hand).
  void expect_epoch(PageId id, std::uint64_t epoch);

  // Tracked reads: copy from the page's last published state, as Runtime::read() does, and record the page's
  // epoch for the commit to validate. A read that finds the page moved since this transaction first read it
  // throws Error(Conflict) at once (the transaction could not commit any more). Throws Error(NotFound) or
  // Error(InvalidArgument) as Runtime::read() does.
  void read(PageId id, std::uint64_t offset, std::span<std::byte> out);
  template <class T>
  T read_value(PageId id, std::uint64_t offset) {
    static_assert(std::is_trivially_copyable_v<T>);
    T out;
    read(id, offset, std::as_writable_bytes(std::span<T, 1>(&out, 1)));
    return out;
  }
  std::vector<std::byte> read_all(PageId id);
  // Copies `out.size()` elements of T from byte `offset` (a multiple of alignof(T)) with read(): tracked like it.
  template <PageValue T>
  void read_span(PageId id, std::uint64_t offset, std::span<T> out) {
    if (offset % alignof(T) != 0) detail::throw_misaligned("Transaction::read_span", id, offset, alignof(T));
    read(id, offset, std::as_writable_bytes(out));
  }
  // Records the page's current epoch as if the transaction had read all of it, without copying a byte, and
  // returns its size and epoch: the commit then fails with Conflict if anything changes the page before it,
  // whether or not the transaction writes it. For a decision made on bytes read some other way (a ReadView, a
  // node's output), and to claim a page the transaction will overwrite wholesale.
  PageInfo read_for_update(PageId id);

  void set_intent(std::string_view intent);
  void set_source(std::uint32_t source);
  // Change-only commits (the default): the commit compares the staged bytes with the page (SIMD, as diff() does)
  // and records only the bytes that differ, so rewriting equal bytes gives no delta and no new epoch (and no
  // node downstream runs); a commit whose writes change nothing at all commits nothing and returns 0. With
  // write-through on, every staged byte is recorded as written, without the compare, for a caller that knows
  // they all changed. A delta staged with apply() is always recorded as given.
  void set_write_through(bool on = true);

  // Commits and returns the LSN. A transaction that changes nothing commits nothing and returns 0 (its reads are
  // still validated). Whether a failed commit took effect is in its code (docs/api.md, "Errors"): on every code
  // but NodeFailed the transaction is aborted with no trace; NodeFailed (IMMEDIATE propagation: a node failed in
  // the wave after the commit) means the commit took effect, and Error::committed_lsn() is its LSN.
  std::uint64_t commit();
  // Drops the staged changes. Idempotent.
  void abort() noexcept;
  bool active() const noexcept;

  // The deltas of the last successful commit (one per page, PageId order), valid until the transaction is
  // destroyed or reused.
  std::span<const Delta> committed_deltas() const noexcept;

  struct State;

 private:
  friend class Runtime;
  friend class detail::TransactTurn;
  Transaction(Runtime::Impl* runtime, State* state) : runtime_(runtime), state_(state) {}
  Runtime::Impl* runtime_ = nullptr;
  State* state_ = nullptr;
};

namespace detail {
// Runtime::transact()'s fairness state for one call (see "Fairness" there; runtime/transaction.cpp). Holds
// nothing until the call escalates; then the runtime's serial turn and the reservations of the pages its attempts
// read, released when it is destroyed. Not for use outside transact().
class TransactTurn {
 public:
  explicit TransactTurn(Runtime::Impl& runtime) noexcept : runtime_(&runtime) {}
  ~TransactTurn() {
    if (held_) release();
  }
  TransactTurn(const TransactTurn&) = delete;
  TransactTurn& operator=(const TransactTurn&) = delete;

  // Before each attempt: once escalated, makes `txn` reserve each page before it reads it.
  void attach(Transaction& txn) noexcept {
    if (held_) attach_held(txn);
  }
  // After the `attempt`-th Conflict: backs off briefly, or escalates (waits for the serial turn).
  void after_conflict(unsigned attempt);

 private:
  void attach_held(Transaction& txn) noexcept;
  void release() noexcept;
  Runtime::Impl* runtime_;
  Reservations* held_ = nullptr;
};
}  // namespace detail

template <class Fn>
std::uint64_t Runtime::transact(Fn&& fn, unsigned max_attempts) {
  detail::TransactTurn turn(*impl_);
  for (unsigned attempt = 1;; ++attempt) {
    Transaction txn = begin();
    turn.attach(txn);
    try {
      fn(txn);
      return txn.commit();
    } catch (const Error& e) {
      if (e.code() != ErrorCode::Conflict || attempt >= max_attempts) throw;
      turn.after_conflict(attempt);
    }
  }
}

}  // namespace mmsb
