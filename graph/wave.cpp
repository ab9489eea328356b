// The wave executor: which nodes a wave reaches, running each (map, passthrough, incremental) under its page
// locks, publishing its output as one new epoch, and what happens when one throws. See graph/engine.hpp.
//
// Cost. A wave costs what it reaches: marking the changed slots, walking the plan's successor graph from their
// readers, and running the reached positions in plan order. Only a wave that reaches at least an eighth of the
// graph scans plan ranges instead of a sorted list of positions. Running a node touches its input slots and
// records, its output record and the thread's scratch; nothing is allocated per node once warmed up.
#include <tbb/blocked_range.h>
#include <tbb/parallel_for.h>

#include <algorithm>
#include <cstring>
#include <exception>
#include <string>
#include <utility>
#include <vector>
#if defined(__SANITIZE_THREAD__)
#include <thread>
#endif

#include "delta/changed_runs.hpp"
#include "delta/copy_bytes.hpp"
#include "graph/engine.hpp"
#include "graph/plan.hpp"

namespace mmsb {

using detail::event_bit;
using detail::kNoNode;
using detail::kNoVertex;
using detail::kSampleHopsEvery;
using detail::Node;
using detail::NodeIndex;
using detail::RunScratch;
using detail::Slot;
using detail::steady_ns;
using detail::Tally;
using detail::VertexId;

namespace detail {

// A 64-byte aligned buffer from the page allocator (map outputs are written here before publishing).
struct AlignedBuffer {
  Block block;
  ~AlignedBuffer() { release(); }
  void release() noexcept {
    if (block.data) PageAllocator::global().deallocate(block.data, block.capacity);
    block = {};
  }
  std::span<std::byte> resize(std::size_t n) {
    if (n > block.capacity || block.data == nullptr) {
      release();
      block = PageAllocator::global().allocate(std::max<std::size_t>(n, 1), Zeroing::Uninitialized);
    }
    return {block.data, n};
  }
};

// One node in flight in the wave pipeline (run_pipelined): its output's and first inputs' slots, found once by the
// slot stage, then their records, found once by the record stage, so no later stage looks them up again.
struct FetchAhead {
  static constexpr std::size_t kCarried = 16;  // inputs beyond these are not fetched ahead
  const Node* node = nullptr;                  // null: nothing to fetch (skipped, or inputs in PageId order)
  std::uint32_t count = 0;                     // pages carried: the output, then inputs
  const Slot* slot[kCarried + 1];
  PageRecord* record[kCarried + 1];
  bool complete = false;  // every input is carried: the node may take its records from here
};
struct RunScratch {
  AlignedBuffer buffer;
  std::vector<std::span<const std::byte>> spans;
  std::vector<const Delta*> deltas;
  std::vector<PageRecord*> lock_order;
  Delta delta;  // the published delta of a node whose readers do not consume it
};

namespace {

// A scratch of the calling thread. Leases nest (the thread running a wave also runs chunks of it, and a node
// function that waits inside TBB may run another chunk on the same thread): each depth has its own scratch, kept
// for the thread's lifetime, so nothing is allocated per wave or per chunk once warmed up.
class ScratchLease {
 public:
  ScratchLease() {
    if (stack().size() == depth()) stack().push_back(std::make_unique<RunScratch>());
    scratch_ = stack()[depth()++].get();
  }
  ~ScratchLease() { --depth(); }
  ScratchLease(const ScratchLease&) = delete;
  ScratchLease& operator=(const ScratchLease&) = delete;
  RunScratch& get() noexcept { return *scratch_; }

 private:
  static std::vector<std::unique_ptr<RunScratch>>& stack() {
    thread_local std::vector<std::unique_ptr<RunScratch>> scratches;
    return scratches;
  }
  static std::size_t& depth() {
    thread_local std::size_t in_use = 0;
    return in_use;
  }
  RunScratch* scratch_ = nullptr;
};

// A node's page locks: its inputs shared and its output exclusive, dropped on scope exit. Holding the output from the
// start means the node computes, diffs and publishes in one pass, and readers never see the output between two of
// those steps. Every node first tries to take its locks as declared without waiting (no hold-and-wait, so no
// deadlock in any order), filling the input spans in the same pass over its inputs: uncontended, that always works.
// When a lock is busy (or a logged commit to the output is in flight), it lets go of everything and waits for each
// lock in PageId order, as commits take theirs, so the two never deadlock; inputs not declared in that order are
// sorted first. Also fills the input spans, in declaration order.
class NodeLocks {
 public:
  // `records`, when given, are the inputs' records in declaration order (found ahead by the wave pipeline).
  NodeLocks(Propagator::Impl& engine, const Node& node, PageRecord& out, RunScratch& scratch,
            PageRecord* const* records = nullptr)
      : out_(out), held_(scratch.lock_order) {
    const std::span<const VertexId> inputs = engine.inputs_of(node);
    held_.resize(inputs.size());
    scratch.spans.resize(inputs.size());
    if (try_lock_as_declared(engine, inputs, records, scratch.spans.data())) return;
    for (std::size_t i = 0; i < inputs.size(); ++i) held_[i] = engine.slots[inputs[i]].record;
    if ((node.flags & Node::kLockOrder) == 0) {  // any order, repeats allowed: lock a sorted copy
      std::sort(held_.begin(), held_.end(), [](const PageRecord* a, const PageRecord* b) { return a->id < b->id; });
      held_.erase(std::unique(held_.begin(), held_.end()), held_.end());
    }
    for (;;) {
      lock_in_page_order();
      // A logged commit to the output page itself is on its way to the disk (runtime.hpp, "Visibility"): let it
      // publish first, holding no lock it needs, rather than write under the in-flight deltas it heads.
      detail::InFlight* in_flight = out_.in_flight_front.load(std::memory_order_acquire);
      if (in_flight == nullptr) break;
      unlock_all();
      out_.in_flight_front.wait(in_flight, std::memory_order_acquire);
    }
    for (std::size_t i = 0; i < inputs.size(); ++i) {
      const PageRecord* rec = engine.slots[inputs[i]].record;
      scratch.spans[i] = {rec->data, rec->size.load(std::memory_order_relaxed)};
    }
  }
  ~NodeLocks() { unlock_all(); }
  NodeLocks(const NodeLocks&) = delete;
  NodeLocks& operator=(const NodeLocks&) = delete;

 private:
  // Takes every lock without waiting and fills the spans, or takes none (then returns false). Throws, holding
  // nothing, if a page was deleted.
  bool try_lock_as_declared(Propagator::Impl& engine, std::span<const VertexId> inputs, PageRecord* const* records,
                            std::span<const std::byte>* spans) {
    if (!out_.mutex.try_lock()) return false;
    out_locked_ = true;
    checked(out_);
    for (std::size_t i = 0; i < inputs.size(); ++i) {
      PageRecord* rec = records ? records[i] : engine.slots[inputs[i]].record;
      held_[i] = rec;
      if (!rec->mutex.try_lock_shared()) {
        unlock_all();
        return false;
      }
      ++shared_;
      checked(*rec);
      spans[i] = {rec->data, rec->size.load(std::memory_order_relaxed)};
    }
    if (out_.in_flight_front.load(std::memory_order_acquire) == nullptr) return true;
    unlock_all();
    return false;
  }
  // Waits for each lock in turn, in PageId order (held_ sorted).
  void lock_in_page_order() {
    try {
      for (PageRecord* rec : held_) {
        if (!out_locked_ && out_.id < rec->id) lock_output();
        rec->mutex.lock_shared();
        ++shared_;
        check(*rec);
      }
      if (!out_locked_) lock_output();
    } catch (...) {
      unlock_all();
      throw;
    }
  }
  // Throws, holding nothing, if the page (locked) was deleted.
  void checked(const PageRecord& rec) {
    if (rec.deleted.load(std::memory_order_relaxed)) [[unlikely]] {
      unlock_all();
      detail::throw_not_found(rec.id);
    }
  }
  void lock_output() {
    out_.mutex.lock();
    out_locked_ = true;
    check(out_);
  }
  static void check(const PageRecord& rec) {
    if (rec.deleted.load(std::memory_order_relaxed)) detail::throw_not_found(rec.id);
  }
  void unlock_all() noexcept {
    for (std::size_t i = 0; i < shared_; ++i) held_[i]->mutex.unlock_shared();
    shared_ = 0;
    if (out_locked_) out_.mutex.unlock();
    out_locked_ = false;
  }
  PageRecord& out_;
  std::vector<PageRecord*>& held_;  // the inputs' records, as declared or in PageId order; [0, shared_) are locked
  std::size_t shared_ = 0;
  bool out_locked_ = false;
};

// Runs `body` over [first, last) in chunks of about `grain` positions, on up to `threads` threads.
template <class Body>
void for_each_chunk(std::uint32_t first, std::uint32_t last, std::size_t grain, int threads, const Body& body) {
#if defined(__SANITIZE_THREAD__)
  // ThreadSanitizer cannot see the synchronization inside Debian's libtbb, which is not built with it: the task
  // objects that parallel_for recycles between threads are reported as races in oneTBB's own headers. TSan builds
  // run the chunks on std::threads instead, which it understands; the chunks still run concurrently, so races in
  // node bodies and in the engine's own bookkeeping are still reported.
  std::atomic<std::uint64_t> next{first};
  std::exception_ptr error;
  std::mutex error_mutex;
  auto worker = [&] {
    for (;;) {
      const std::uint64_t begin = next.fetch_add(grain, std::memory_order_relaxed);
      if (begin >= last) return;
      const auto end = static_cast<std::uint32_t>(std::min<std::uint64_t>(last, begin + grain));
      try {
        body(tbb::blocked_range<std::uint32_t>(static_cast<std::uint32_t>(begin), end));
      } catch (...) {
        std::lock_guard lock(error_mutex);
        if (!error) error = std::current_exception();
      }
    }
  };
  std::vector<std::thread> helpers;
  for (int t = 1; t < threads; ++t) helpers.emplace_back(worker);
  worker();
  for (std::thread& t : helpers) t.join();
  if (error) std::rethrow_exception(error);
#else
  (void)threads;
  tbb::parallel_for(tbb::blocked_range<std::uint32_t>(first, last, grain), body);
#endif
}

}  // namespace
}  // namespace detail

void Propagator::Impl::record_failure(Node& node, std::exception_ptr error) {
  std::lock_guard lock(failure_mutex);
  if (!failure) {
    failure = std::move(error);
    failed_page = slots[node.out].record->id;
  }
  cancelled.store(true, std::memory_order_release);
}

bool Propagator::Impl::publish(Node& node, PageRecord& page, Delta& d, std::span<const std::byte> computed, bool diff) {
  const std::uint64_t size = page.size.load(std::memory_order_relaxed);
  const bool record_undo = runtime_impl.options.record_undo;
  if (diff) {
    if (computed.size() != size) {
      throw Error(ErrorCode::Aborted, "derived page " + page.id.to_string() + " was resized during the wave");
    }
    if (node.flags & Node::kAlwaysChanges) {
      d.clear();
      d.ranges.push_back({0, size});
      d.payload.assign(computed.begin(), computed.end());
      if (record_undo) {
        d.has_undo = true;
        d.undo.assign(page.data, page.data + size);
      }
      if (size == 0) d.clear();
    } else {
      DiffOptions opts;
      opts.record_undo = record_undo;
      diff_into(std::span<const std::byte>(page.data, size), computed, d, opts);
    }
  } else {
    d.base_size = d.size = size;
    for (const ByteRange& r : d.ranges) {
      if (r.end() > size || r.end() < r.offset) {
        throw Error(ErrorCode::InvalidArgument, "node output delta range " + detail::range_text(r.offset, r.length) +
                                                    " is outside page " + page.id.to_string() + " of " +
                                                    std::to_string(size) + " bytes");
      }
    }
    d.has_undo = record_undo;
    d.undo.clear();
    d.undo_tail.clear();
    if (record_undo) {
      for (const ByteRange& r : d.ranges) d.undo.insert(d.undo.end(), page.data + r.offset, page.data + r.end());
    }
    d.validate();
  }
  if (d.ranges.empty()) return false;
  const std::uint64_t epoch = page.epoch.load(std::memory_order_relaxed);
  d.page = page.id;
  d.base_epoch = epoch;
  d.epoch_count = 1;
  d.base_size = d.size = size;
  const std::byte* src = d.payload.data();
  for (const ByteRange& r : d.ranges) {
    detail::copy_bytes(page.data + r.offset, src, r.length);
    src += r.length;
  }
  page.epoch.store(epoch + 1, std::memory_order_release);
  return true;
}

// A page this small is diffed as one range (diff_with's small-page case: no longer than the merge gap), so its
// delta's byte count is known from the first and last differing bytes alone.
constexpr std::uint64_t kInPlaceBytes = 16;
static_assert(kInPlaceBytes <= DiffOptions{}.merge_gap && kInPlaceBytes <= 64);

std::uint64_t Propagator::Impl::publish_in_place(Node& node, PageRecord& page, std::span<const std::byte> computed) {
  const std::uint64_t size = computed.size();
  const std::byte* old_bytes = page.data;
  const std::byte* new_bytes = computed.data();
  std::uint64_t first = 0, last = size;  // the differing bytes are [first, last)
  bool written = false;
  if (node.flags & Node::kAlwaysChanges) {
    if (size == 0) return 0;
  } else if (size == 8) {
    const detail::DifferingBytes run = detail::differing_bytes_of_words(old_bytes, new_bytes);
    if (run.empty()) return 0;
    first = run.first;
    last = run.end;
    std::memcpy(page.data, new_bytes, 8);  // one store; the bytes outside [first, last) are equal
    written = true;
  } else {
    while (first < size && old_bytes[first] == new_bytes[first]) ++first;
    if (first == size) return 0;
    while (old_bytes[last - 1] == new_bytes[last - 1]) --last;
  }
  if (!written) detail::copy_bytes(page.data + first, new_bytes + first, last - first);
  page.epoch.store(page.epoch.load(std::memory_order_relaxed) + 1, std::memory_order_release);
  const std::uint64_t changed = last - first;
  // The delta would be dense (the whole page) past this fraction, as diff_into() decides.
  const bool dense = static_cast<double>(changed) > DiffOptions{}.dense_fraction * static_cast<double>(size);
  return (node.flags & Node::kAlwaysChanges) || dense ? size : changed;
}

std::uint64_t Propagator::Impl::compute_map(Node& node, Delta* d, RunScratch& scratch, const MapFunction& fn,
                                            const detail::FetchAhead* carried) {
  PageRecord& out = *slots[node.out].record;
  detail::NodeLocks locks(*this, node, out, scratch, carried ? carried->record + 1 : nullptr);
  const std::uint64_t size = out.size.load(std::memory_order_relaxed);
  std::span<std::byte> buffer = scratch.buffer.resize(size);
  detail::copy_bytes(buffer.data(), out.data, size);
  MapContext ctx(scratch.spans, buffer, out.id);
  fn(ctx);
  if (d == nullptr) {
    if (buffer.size() == size && size <= kInPlaceBytes) return publish_in_place(node, out, buffer);
    d = &scratch.delta;
  }
  return publish(node, out, *d, buffer, /*diff=*/true) ? d->payload.size() : 0;
}

bool Propagator::Impl::compute_passthrough(Node& node, Delta& d, std::uint32_t wave, bool stale, RunScratch& scratch) {
  Slot& in = slots[input_pool[node.inputs]];
  PageRecord& out = *slots[node.out].record;
  d.clear();
  const ByteRemap& m = remaps.entries[node.function];
  const std::uint64_t window_end =
      m.length > ~std::uint64_t{0} - m.input_offset ? ~std::uint64_t{0} : m.input_offset + m.length;
  detail::NodeLocks locks(*this, node, out, scratch);
  const std::uint64_t out_size = out.size.load(std::memory_order_relaxed);
  auto forward = [&](std::uint64_t offset, std::uint64_t length, const std::byte* bytes) {
    std::uint64_t begin = std::max(offset, m.input_offset), end = std::min(offset + length, window_end);
    if (begin >= end) return;
    std::uint64_t out_begin = begin - m.input_offset + m.output_offset;
    if (out_begin >= out_size) return;
    std::uint64_t n = std::min(end - begin, out_size - out_begin);
    if (!d.ranges.empty() && d.ranges.back().end() >= out_begin) {
      // Source ranges are sorted and disjoint, and the remap is a shift, so outputs only ever touch: merge.
      d.ranges.back().length = out_begin + n - d.ranges.back().offset;
    } else {
      d.ranges.push_back({out_begin, n});
    }
    d.payload.insert(d.payload.end(), bytes + (begin - offset), bytes + (begin - offset) + n);
  };
  const Delta* src =
      in.changed_wave.load(std::memory_order_acquire) == wave ? in.delta.load(std::memory_order_relaxed) : nullptr;
  if (stale || src == nullptr) {
    forward(0, in.record->size.load(std::memory_order_relaxed), in.record->data);
  } else {
    const std::byte* payload = src->payload.data();
    for (const ByteRange& r : src->ranges) {
      forward(r.offset, r.length, payload);
      payload += r.length;
    }
  }
  return publish(node, out, d, {}, /*diff=*/false);
}

bool Propagator::Impl::compute_incremental(Node& node, Delta& d, std::uint32_t wave, RunScratch& scratch) {
  PageRecord& out = *slots[node.out].record;
  d.clear();
  detail::NodeLocks locks(*this, node, out, scratch);
  const std::span<const VertexId> inputs = inputs_of(node);
  scratch.deltas.resize(inputs.size());
  for (std::size_t i = 0; i < inputs.size(); ++i) {
    const Slot& s = slots[inputs[i]];
    scratch.deltas[i] =
        s.changed_wave.load(std::memory_order_acquire) == wave ? s.delta.load(std::memory_order_relaxed) : nullptr;
  }
  // A stale node (new, or left behind by a failed wave) missed changes: IncrementalContext::recompute says so.
  IncrementalContext ctx{scratch.spans,
                         scratch.deltas,
                         {out.data, out.size.load(std::memory_order_relaxed)},
                         out.id,
                         node.stale.load(std::memory_order_relaxed)};
  incrementals.entries[node.function](ctx, d);
  return publish(node, out, d, {}, /*diff=*/false);
}

void Propagator::Impl::add_tally(const Tally& t) {
  if (t.recomputed) counters.recomputed.fetch_add(t.recomputed, std::memory_order_relaxed);
  if (t.skipped) counters.skipped.fetch_add(t.skipped, std::memory_order_relaxed);
  if (t.cut_off) counters.cut_off.fetch_add(t.cut_off, std::memory_order_relaxed);
  if (t.failed) counters.failed.fetch_add(t.failed, std::memory_order_relaxed);
  if (t.bytes) counters.bytes.fetch_add(t.bytes, std::memory_order_relaxed);
}

void Propagator::Impl::run_node(NodeIndex index, std::uint32_t wave, Tally& tally, const detail::FetchAhead* carried) {
  if (cancelled.load(std::memory_order_acquire)) return;
  Node& node = node_at[index];
  const bool stale = node.stale.load(std::memory_order_relaxed);
  bool input_changed = false;
  const std::span<const VertexId> inputs = inputs_of(node);
  for (std::size_t i = 0; i < inputs.size() && !input_changed; ++i) {
    const Slot& in = carried ? *carried->slot[i + 1] : slots[inputs[i]];
    input_changed = in.changed_wave.load(std::memory_order_acquire) == wave;
  }
  Slot& out = slots[node.out];
  if (!input_changed && !stale) {
    ++tally.skipped;
    node.completed_wave.store(wave, std::memory_order_relaxed);
    if (tally.wanted & event_bit(EventKind::NodeSkipped)) [[unlikely]]
      emit(Event{EventKind::NodeSkipped, out.record->id, 0, 0, wave, 0, {}});
    return;
  }
  const bool timed = tally.runs++ % kSampleHopsEvery == 0;
  const std::uint64_t started = timed ? steady_ns() : 0;
  const bool keep = (node.flags & Node::kKeepDelta) != 0;
  constexpr std::uint32_t kChangeEvents = event_bit(EventKind::PageChanged) | event_bit(EventKind::PageResized);
  const bool observed = (tally.wanted & kChangeEvents) || out.subscribers.load(std::memory_order_relaxed) > 0;
  // Without a reader of the delta, a map publishes in place (publish_in_place).
  Delta* d = keep ? kept_deltas[node.kept].get() : observed ? &tally.scratch->delta : nullptr;
  Delta& built = d ? *d : tally.scratch->delta;
  std::uint64_t bytes = 0;  // the published delta's payload; 0: nothing changed (cutoff)
  try {
    switch (node.kind) {
      case NodeKind::Map:
        bytes = compute_map(node, d, *tally.scratch, maps.entries[node.function], carried);
        break;
      case NodeKind::Passthrough:
        bytes = compute_passthrough(node, built, wave, stale, *tally.scratch) ? built.payload.size() : 0;
        break;
      case NodeKind::Incremental:
        // Computed from scratch (recompute, stale), a node with a rebuild function runs it, as a map would.
        if (stale && (node.flags & Node::kHasRebuild)) {
          bytes = compute_map(node, d, *tally.scratch, rebuilds.at(index));
        } else {
          bytes = compute_incremental(node, built, wave, *tally.scratch) ? built.payload.size() : 0;
        }
        break;
    }
  } catch (...) {
    ++tally.failed;
    if (tally.wanted & event_bit(EventKind::NodeFailed)) {
      emit(Event{EventKind::NodeFailed, out.record->id, 0, 0, wave, 0, describe(std::current_exception())});
    }
    record_failure(node, std::current_exception());
    return;
  }
  if (timed) {
    const std::uint64_t ns = steady_ns() - started;
    hop_latency.record(ns);
    const std::uint64_t seen = node_ns_estimate.load(std::memory_order_relaxed);
    node_ns_estimate.store(seen == 0 ? ns : (seen * 7 + ns) / 8, std::memory_order_relaxed);
  }
  node.stale.store(false, std::memory_order_relaxed);
  node.completed_wave.store(wave, std::memory_order_relaxed);
  if (bytes != 0) {
    ++tally.recomputed;
    tally.bytes += bytes;
    if (observed) [[unlikely]]
      note_change(&out, *d, d->target_epoch(), wave);
    if (tally.wanted & event_bit(EventKind::NodeRecomputed)) [[unlikely]]
      emit(Event{EventKind::NodeRecomputed, out.record->id, 0, 0, wave, 0, {}});
    out.delta.store(keep ? d : nullptr, std::memory_order_relaxed);
    out.changed_wave.store(wave, std::memory_order_release);
  } else {
    ++tally.cut_off;
    if (tally.wanted & event_bit(EventKind::NodeCutOff)) [[unlikely]]
      emit(Event{EventKind::NodeCutOff, out.record->id, 0, 0, wave, 0, {}});
  }
}

namespace {
// Prefetches the first and the last byte of *object, so an object straddling two cache lines has both on the way.
// Always inlined: GCC drops calls to a function that only prefetches (it has no side effects for the optimizer).
template <typename T>
[[gnu::always_inline]] inline void prefetch_whole(const T* object) {
  __builtin_prefetch(object);
  __builtin_prefetch(reinterpret_cast<const char*>(object) + sizeof(T) - 1);
}
}  // namespace

// The stages of a node's chain of dependent misses, each fetched for a node further ahead than the next stage
// needs it (see run_range): by the time a stage reads what the one before fetched, it has arrived.
// A node's ids of eight inputs may straddle two lines: both are fetched (a prefetch past the pool cannot fault).
[[gnu::always_inline]] inline void Propagator::Impl::prefetch_node(NodeIndex node,
                                                                   std::uint32_t first_input) const noexcept {
  __builtin_prefetch(&node_at[node]);
  __builtin_prefetch(input_pool.data() + first_input);
  __builtin_prefetch(input_pool.data() + first_input + 7);
}
[[gnu::always_inline]] inline void Propagator::Impl::prefetch_slots(const Node& n) const noexcept {
  prefetch_whole(&slots[n.out]);
  for (VertexId in : inputs_of(n)) prefetch_whole(&slots[in]);
}
[[gnu::always_inline]] inline void Propagator::Impl::prefetch_records(const Node& n) const noexcept {
  prefetch_whole(slots[n.out].record);
  for (VertexId in : inputs_of(n)) prefetch_whole(slots[in].record);
}
[[gnu::always_inline]] inline void Propagator::Impl::prefetch_input_bytes(const Node& n) const noexcept {
  for (VertexId in : inputs_of(n)) __builtin_prefetch(slots[in].record->bytes_hint());
}
// In a graph larger than the cache, a node's inputs may be anywhere (a random DAG's are): each costs a chain of
// dependent misses, its slot, then its page record, then its bytes, and paid node by node they are the wave's cost.
// A node whose inputs are declared in PageId order (trees, stencils, chains: pages created together) skips the
// slot, record and byte stages: in those shapes the hardware prefetcher already follows its reads, and a plan
// without any other node (Plan::unordered_nodes) runs without the pipeline at all (its instructions made the
// 10^6-leaf tree's full wave slower, 119-126 -> 145-193 ns per node).
// The nodes coming next are known (plan order), so the chain is software-pipelined: while node i runs, the node of
// i + kNodesAhead, the slots of i + kSlotsAhead, the records of i + kRecordsAhead and the bytes of i + kBytesAhead
// are on their way, each stage reading only what an earlier stage fetched for it. The slot stage looks the node up
// once and leaves it (null for an ordered node) in a ring that the two later stages read. `step_at(i)` is the i-th
// step to fetch for, or null where the wave skips it; `run_at(i, carried)` runs the i-th, with its ring entry when
// that holds all of the node's records (else null).
template <class StepAt, class RunAt>
void Propagator::Impl::run_pipelined(std::size_t count, const StepAt& step_at, const RunAt& run_at) {
  static_assert(kNodesAhead > kSlotsAhead && kSlotsAhead > kRecordsAhead && kRecordsAhead > kBytesAhead);
  // An entry is filled kSlotsAhead nodes ahead and read up to the node's own run, before the slot stage reuses it.
  constexpr std::size_t kRing = 16;
  static_assert(kRing > kSlotsAhead && (kRing & (kRing - 1)) == 0);
  detail::FetchAhead ring[kRing];
  for (std::size_t i = 0; i < count; ++i) {
    if (i + kNodesAhead < count)
      if (const detail::Plan::Step* ahead = step_at(i + kNodesAhead)) prefetch_node(ahead->node, ahead->inputs);
    if (i + kSlotsAhead < count) {
      detail::FetchAhead& a = ring[(i + kSlotsAhead) % kRing];
      const detail::Plan::Step* step = step_at(i + kSlotsAhead);
      a.node = step ? &node_at[step->node] : nullptr;
      if (a.node && (a.node->flags & Node::kLockOrder)) a.node = nullptr;
      if (a.node) {
        const std::span<const VertexId> inputs = inputs_of(*a.node);
        a.count = static_cast<std::uint32_t>(std::min(inputs.size(), detail::FetchAhead::kCarried) + 1);
        a.complete = inputs.size() <= detail::FetchAhead::kCarried;
        a.slot[0] = &slots[a.node->out];
        for (std::uint32_t j = 1; j < a.count; ++j) a.slot[j] = &slots[inputs[j - 1]];
        for (std::uint32_t j = 0; j < a.count; ++j) prefetch_whole(a.slot[j]);
      }
    }
    if (detail::FetchAhead& a = ring[(i + kRecordsAhead) % kRing]; a.node && i + kRecordsAhead < count) {
      for (std::uint32_t j = 0; j < a.count; ++j) {
        a.record[j] = a.slot[j]->record;
        prefetch_whole(a.record[j]);
      }
    }
    if (const detail::FetchAhead& a = ring[(i + kBytesAhead) % kRing]; a.node && i + kBytesAhead < count) {
      for (std::uint32_t j = 1; j < a.count; ++j) __builtin_prefetch(a.record[j]->bytes_hint());
    }
    const detail::FetchAhead& own = ring[i % kRing];
    run_at(i, own.node && own.complete ? &own : nullptr);
  }
}

void Propagator::Impl::run_range(std::uint32_t begin, std::uint32_t end, std::uint32_t wave, Tally& tally) {
  const detail::Plan::Step* steps = plan->steps.data() + begin;
  auto reached = [&](std::size_t i) { return steps[i].reached == wave ? &steps[i] : nullptr; };
  auto run_at = [&](std::size_t i, const detail::FetchAhead* carried) {
    if (steps[i].reached == wave) run_node(steps[i].node, wave, tally, carried);
  };
  if (plan->positions() < kPrefetchPositions || plan->unordered_nodes == 0) {
    for (std::size_t i = 0; i < end - begin; ++i) run_at(i, nullptr);
    return;
  }
  run_pipelined(end - begin, reached, run_at);
}

void Propagator::Impl::run_list(const std::uint32_t* positions, std::size_t count, std::uint32_t wave, Tally& tally) {
  const detail::Plan::Step* steps = plan->steps.data();
  auto run_at = [&](std::size_t i, const detail::FetchAhead* carried) {
    run_node(steps[positions[i]].node, wave, tally, carried);
  };
  // A small wave's nodes were all prefetched together before it began (prefetch()), and a small plan is in cache.
  if (plan->positions() < kPrefetchPositions || affected.size() <= kPrefetchNodes || plan->unordered_nodes == 0) {
    for (std::size_t i = 0; i < count; ++i) run_at(i, nullptr);
    return;
  }
  run_pipelined(
      count, [&](std::size_t i) { return &steps[positions[i]]; }, run_at);
}

// A full wave (see run_wave): every position in plan order, each reached one run and then marking its data
// successors reached, so no walk beforehand finds them. Plan order puts a position's successors after it, so each is
// marked before the sweep gets there; the reached set is the walk's, so stats and stale marks are the same. A
// cancelled wave's run_node returns at once, and the sweep still marks what the walk would have reached.
void Propagator::Impl::run_sweep(std::uint32_t wave, Tally& tally) {
  detail::Plan& p = *plan;
  detail::Plan::Step* steps = p.steps.data();
  const auto& rows = p.successors.m_forward;
  const std::size_t count = p.positions();
  auto mark_successors = [&](std::size_t i) {
    const std::uint32_t next = steps[i].next;
    if (next < detail::Plan::kRow) {
      steps[next].reached = wave;
    } else if (next != detail::Plan::kNoSuccessor) {
      const std::uint32_t row = next & ~detail::Plan::kRow;
      for (std::uint32_t e = rows.m_rowstart[row]; e < rows.m_rowstart[row + 1]; ++e)
        steps[rows.m_column[e]].reached = wave;
    }
  };
  // A random DAG's successors are anywhere in the plan: their steps are fetched (for writing) ahead, as the walk's
  // were. The step, row bounds and row of a position come in plan order, which the hardware prefetcher follows.
  auto fetch_successors = [&](std::size_t k) {
    const std::uint32_t next = steps[k].next;
    if (next >= detail::Plan::kRow && next != detail::Plan::kNoSuccessor) {
      const std::uint32_t row = next & ~detail::Plan::kRow;
      for (std::uint32_t e = rows.m_rowstart[row]; e < rows.m_rowstart[row + 1]; ++e)
        __builtin_prefetch(&steps[rows.m_column[e]], 1);
    }
  };
  auto run_at = [&](std::size_t i, const detail::FetchAhead* carried) {
    if (steps[i].reached != wave) return;
    run_node(steps[i].node, wave, tally, carried);
    mark_successors(i);
  };
  if (count < kPrefetchPositions || p.unordered_nodes == 0) {
    for (std::size_t i = 0; i < count; ++i) run_at(i, nullptr);
    return;
  }
  // Which positions are reached is known only as the sweep gets there: fetch ahead for every one.
  run_pipelined(
      count, [&](std::size_t i) { return &steps[i]; },
      [&](std::size_t i, const detail::FetchAhead* carried) {
        if (i + kSlotsAhead < count) fetch_successors(i + kSlotsAhead);
        run_at(i, carried);
      });
}

std::string Propagator::Impl::describe(std::exception_ptr error) {
  try {
    std::rethrow_exception(error);
  } catch (const std::exception& e) {
    return e.what();
  } catch (...) {
    return "unknown exception";
  }
}

void Propagator::Impl::throw_node_error(PageId page, std::exception_ptr error) {
  throw NodeError(page, describe(error), error);
}

// A small wave's nodes are known before the first one runs, but in a large graph each sits in memory nobody touched
// lately: its node, its inputs' slots, their page records and bytes are a chain of dependent cache misses. Walking
// the chain one link at a time for all the wave's nodes together overlaps those misses instead of paying them one
// after another, node by node.
// The walk already prefetched each reached node and its inputs' ids (reach_from), so this starts at the slots. Slots
// (48 bytes) and records (80 bytes, the second line holding a small page's bytes) may straddle two cache lines:
// both are fetched.
// The bytes stage reads every record's address of the bytes, so it waits for all the records of the wave before the
// first node runs. A node whose pages hold their bytes in their records (Node::kInlinePages) has nothing left to
// fetch there, and skipping it lets the later nodes' records arrive while the first nodes run: 2.9 -> 2.75 us for a
// 10^6-leaf tree's single-source wave (8-byte pages; session 13, docs/benchmarks.md).
[[gnu::always_inline]] inline void Propagator::Impl::prefetch(const std::vector<std::uint32_t>& positions) {
  const detail::Plan::Step* steps = plan->steps.data();
  for (std::uint32_t position : positions) prefetch_slots(node_at[steps[position].node]);
  for (std::uint32_t position : positions) prefetch_records(node_at[steps[position].node]);
  for (std::uint32_t position : positions) {
    const Node& n = node_at[steps[position].node];
    if (n.flags & Node::kInlinePages) continue;
    __builtin_prefetch(slots[n.out].record->bytes_hint());
    prefetch_input_bytes(n);
  }
}

std::uint32_t Propagator::Impl::next_wave() {
  std::uint32_t current = wave_number.load(std::memory_order_relaxed);
  if (current == ~std::uint32_t{0}) {
    // 2^32 waves: restart the numbering, clearing every mark so no old wave looks like a new one.
    for (std::uint32_t v = 0; v < slots.size(); ++v) slots[v].changed_wave.store(0, std::memory_order_relaxed);
    for (NodeIndex n = 0; n < node_at.size(); ++n) node_at[n].completed_wave.store(0, std::memory_order_relaxed);
    if (plan)
      for (detail::Plan::Step& step : plan->steps) step.reached = 0;
    current = 0;
  }
  return current + 1;
}

// The walk's own chain of misses, pipelined like a wave's nodes (run_pipelined): a reached position's successor
// row bounds, then the row, then the successors' steps, each fetched for a position further down the queue than the
// next stage reads. A full wave of a random DAG visits every edge this way.
[[gnu::always_inline]] inline void Propagator::Impl::prefetch_walk(std::size_t k) const noexcept {
  const detail::Plan& p = *plan;
  const auto& rows = p.successors.m_forward;
  auto row_at = [&](std::size_t j) {
    const std::uint32_t next = p.steps[affected[j]].next;
    return next >= detail::Plan::kRow && next != detail::Plan::kNoSuccessor ? next & ~detail::Plan::kRow
                                                                            : detail::Plan::kNoSuccessor;
  };
  const std::size_t queued = affected.size();
  if (k + kRowsAhead < queued)
    if (const std::uint32_t row = row_at(k + kRowsAhead); row != detail::Plan::kNoSuccessor)
      __builtin_prefetch(&rows.m_rowstart[row]);
  if (k + kColumnsAhead < queued)
    if (const std::uint32_t row = row_at(k + kColumnsAhead); row != detail::Plan::kNoSuccessor) {
      __builtin_prefetch(rows.m_column.data() + rows.m_rowstart[row]);
      __builtin_prefetch(rows.m_column.data() + rows.m_rowstart[row + 1] - 1);  // a row is never empty
    }
  if (k + kTargetsAhead < queued) {
    const std::uint32_t next = p.steps[affected[k + kTargetsAhead]].next;
    if (next < detail::Plan::kRow) {
      __builtin_prefetch(&p.steps[next]);
    } else if (next != detail::Plan::kNoSuccessor) {
      const std::uint32_t row = next & ~detail::Plan::kRow;
      for (std::uint32_t e = rows.m_rowstart[row]; e < rows.m_rowstart[row + 1]; ++e)
        __builtin_prefetch(&p.steps[rows.m_column[e]]);
    }
  }
}

// Marks the changed slots and reaches the wave's nodes: the readers of the changed pages, the stale nodes, and
// everything downstream of them. `affected` doubles as the breadth-first queue. Each reached node and its inputs'
// ids are prefetched as they are found (in a plan large enough to leave the cache), so they are on the way while the
// walk goes on.
void Propagator::Impl::reach_from(const std::vector<std::pair<PageId, const Delta*>>& changes,
                                  const std::shared_ptr<const void>& owner, std::uint32_t wave, bool walk) {
  detail::Plan& p = *plan;
  affected.clear();
  detail::Plan::Step* steps = p.steps.data();
  const bool far = walk && p.positions() >= kPrefetchPositions;
  auto reach = [&](std::uint32_t position) __attribute__((always_inline)) {
    detail::Plan::Step& step = steps[position];
    if (step.reached == wave) return;
    step.reached = wave;
    if (far) {
      __builtin_prefetch(&node_at[step.node]);
      __builtin_prefetch(input_pool.data() + step.inputs);
      if (step.after_next != detail::Plan::kNoSuccessor) __builtin_prefetch(steps + step.after_next);
    }
    affected.push_back(position);
  };
  const bool observed = wants(EventKind::PageChanged) || wants(EventKind::PageResized);
  for (const auto& [page, delta] : changes) {
    Slot* s = slot_of(page);
    if (s == nullptr || s->vertex == kNoVertex) continue;
    s->delta.store(delta, std::memory_order_relaxed);
    s->changed_wave.store(wave, std::memory_order_relaxed);
    if (observed || s->subscribers.load(std::memory_order_relaxed) > 0) {
      note_change(s, *delta, delta->target_epoch(), wave, owner);
    }
    const std::uint32_t only = s->reader;
    if (only < detail::Plan::kRow) {
      if (far && s->reader_next != detail::Plan::kNoSuccessor) __builtin_prefetch(steps + s->reader_next);
      reach(only);
    } else if (only < detail::Plan::kManySuccessors) {
      for (auto [e, end] = boost::out_edges(only & ~detail::Plan::kRow, p.source_readers); e != end; ++e)
        reach(boost::target(*e, p.source_readers));
    } else if (only == detail::Plan::kManySuccessors) {
      graph.for_each_dependent(s->vertex, [&](VertexId w, detail::DependencyKind kind) {
        if (kind != detail::DependencyKind::Data) return;
        const NodeIndex reader = slots[w].node;
        if (reader != kNoNode) reach(node_at[reader].position);
      });
    }
  }
  for (NodeIndex n : stale_nodes) {
    // remove_node() leaves its entry here (a removed node is not stale); a reused index is listed again if stale.
    const Node& node = node_at[n];
    if ((node.flags & Node::kLive) && node.stale.load(std::memory_order_relaxed)) reach(node.position);
  }
  for (std::size_t k = 0; walk && k < affected.size(); ++k) {
    if (far) prefetch_walk(k);
    const std::uint32_t next = steps[affected[k]].next;
    if (next < detail::Plan::kRow) {
      reach(next);
    } else if (next != detail::Plan::kNoSuccessor) {
      for (auto [e, end] = boost::out_edges(next & ~detail::Plan::kRow, p.successors); e != end; ++e)
        reach(boost::target(*e, p.successors));
    }
  }
}

void Propagator::Impl::begin_wave(std::uint32_t wave) {
  if (wants(EventKind::WaveBegin)) emit(Event{EventKind::WaveBegin, PageId(), 0, 0, wave, 0, {}});
  counters.waves.fetch_add(1, std::memory_order_relaxed);
  cancelled.store(false, std::memory_order_relaxed);
  std::lock_guard lock(failure_mutex);
  failure = nullptr;
}

// A level is split across the threads when it has more than inline_node_limit nodes and enough work (by the
// sampled node run time) to be worth waking workers for.
bool Propagator::Impl::WaveShape::wide(std::size_t nodes, const PropagatorOptions& options) const noexcept {
  return threads > 1 && nodes > options.inline_node_limit && nodes * estimate >= options.min_parallel_work_ns;
}

// The levels are only looked at when the wave as a whole is wide: segments are [first, last) of `affected`
// (sparse) or of plan positions (dense). Returns whether any level is split across the threads.
bool Propagator::Impl::plan_segments(const WaveShape& shape) {
  const detail::Plan& p = *plan;
  const std::size_t reached = affected.size();
  segments.clear();
  // A segment lies within one level: when not even the widest level is wide, no segment is.
  if (!shape.wide(reached, options) || !shape.wide(p.widest_level, options)) return false;
  if (shape.dense) {
    for (std::size_t l = 0; l < p.levels(); ++l) segments.push_back({p.level_begin[l], p.level_begin[l + 1]});
  } else {
    // Positions are sorted and levels are position ranges: one walk splits them.
    std::size_t level = static_cast<std::size_t>(
        std::upper_bound(p.level_begin.begin(), p.level_begin.end(), affected.front()) - p.level_begin.begin() - 1);
    std::uint32_t first = 0;
    for (std::uint32_t i = 1; i <= reached; ++i) {
      if (i < reached && affected[i] < p.level_begin[level + 1]) continue;
      segments.push_back({first, i});
      first = i;
      if (i < reached)
        while (affected[i] >= p.level_begin[level + 1]) ++level;
    }
  }
  return std::any_of(segments.begin(), segments.end(),
                     [&](const detail::Segment& s) { return shape.wide(s.last - s.first, options); });
}

void Propagator::Impl::run_segment(const detail::Segment& s, bool dense, std::uint32_t wave, Tally& tally) {
  if (dense) {
    run_range(s.first, s.last, wave, tally);
  } else {
    run_list(affected.data() + s.first, s.last - s.first, wave, tally);
  }
}

// Runs the segments level by level; a wide level is cut into chunks of ~20 us of work, each with its own tally
// and scratch. The calling thread's share runs with `tally`.
void Propagator::Impl::run_levels_in_parallel(const WaveShape& shape, std::uint32_t wave, Tally& tally) {
  arena.execute([&] {
    for (const detail::Segment& s : segments) {
      if (cancelled.load(std::memory_order_acquire)) break;
      const std::size_t n = s.last - s.first;
      if (!shape.wide(n, options)) {
        run_segment(s, shape.dense, wave, tally);
        continue;
      }
      const std::size_t by_work = std::max<std::uint64_t>(1, 20'000 / shape.estimate);
      const std::size_t grain =
          std::max<std::size_t>(1, std::min(by_work, (n + 2 * shape.threads - 1) / (2 * shape.threads)));
      detail::for_each_chunk(s.first, s.last, grain, shape.threads, [&](const tbb::blocked_range<std::uint32_t>& r) {
        wave_number.load(std::memory_order_acquire);  // pairs with the caller's release
        chunks_done.load(std::memory_order_acquire);  // and with earlier levels' chunks
        detail::ScratchLease chunk_lease;
        Tally chunk;
        chunk.wanted = wanted_events.load(std::memory_order_relaxed);
        chunk.scratch = &chunk_lease.get();
        run_segment(detail::Segment{r.begin(), r.end()}, shape.dense, wave, chunk);
        add_tally(chunk);
        chunks_done.fetch_add(1, std::memory_order_acq_rel);
      });
    }
  });
  chunks_done.load(std::memory_order_acquire);  // pairs with each chunk's final increment
}

// Lists the nodes the wave reached but did not complete (skipped or failed) as stale for the next wave.
void Propagator::Impl::settle(bool dense, std::uint32_t wave) {
  const detail::Plan& p = *plan;
  stale_nodes.clear();
  // Only a failure cancels a wave; without one every reached node completed (ran or was skipped) and is not stale,
  // and every stale node was reached: nothing is left stale.
  if (!cancelled.load(std::memory_order_acquire)) return;
  auto settle_position = [&](std::uint32_t position) {
    const NodeIndex index = p.steps[position].node;
    Node& node = node_at[index];
    if (node.completed_wave.load(std::memory_order_relaxed) != wave) node.stale.store(true, std::memory_order_relaxed);
    if (node.stale.load(std::memory_order_relaxed)) stale_nodes.push_back(index);
  };
  if (dense) {
    for (std::uint32_t position = 0; position < p.positions(); ++position)
      if (p.steps[position].reached == wave) settle_position(position);
  } else {
    for (std::uint32_t position : affected) settle_position(position);
  }
}

// Records the wave's latency, tells observers and waiters, and throws the first node failure.
void Propagator::Impl::finish_wave(std::uint32_t wave, std::uint64_t started) {
  const std::uint64_t duration = steady_ns() - started;
  wave_latency.record(duration);
  if (wants(EventKind::WaveEnd)) emit(Event{EventKind::WaveEnd, PageId(), 0, 0, wave, duration, {}});
  notify_waiters();
  std::exception_ptr error;
  PageId page;
  {
    std::lock_guard lock(failure_mutex);
    error = failure;
    page = failed_page;
  }
  if (error) {
    if (wants(EventKind::Error)) emit(Event{EventKind::Error, page, 0, 0, wave, 0, describe(error)});
    throw_node_error(page, error);
  }
}

void Propagator::Impl::run_wave(const std::vector<std::pair<PageId, const Delta*>>& changes,
                                const std::shared_ptr<const void>& owner) {
  ensure_plan();
  const std::uint32_t wave = next_wave();
  WaveShape shape;
  shape.threads = arena.max_concurrency();
  shape.estimate = std::max<std::uint64_t>(1, node_ns_estimate.load(std::memory_order_relaxed));
  // Changes (or stale nodes) as many as a sixteenth of the plan start a full wave, or most of one: when it runs
  // inline, it reaches its positions as it runs them (run_sweep) rather than walking the plan's edges first.
  const std::size_t seeds = changes.size() + stale_nodes.size();
  shape.sweep = seeds * 16 >= plan->positions() && !shape.wide(plan->positions(), options);
  reach_from(changes, owner, wave, /*walk=*/!shape.sweep);
  if (affected.empty()) {
    // Nothing live was stale, so what stale_nodes still lists are removed nodes. The wave number still advances:
    // the slots marked above must not look changed in the next wave.
    stale_nodes.clear();
    wave_number.store(wave, std::memory_order_release);
    return;
  }
  // A wave reaching a large part of the graph scans plan ranges; a smaller one runs its sorted positions.
  shape.dense = shape.sweep || affected.size() * 8 >= plan->positions();
  if (!shape.dense && !std::is_sorted(affected.begin(), affected.end())) std::sort(affected.begin(), affected.end());
  // In a plan that fits the cache (as the walk's prefetches, see reach_from) prefetching only costs instructions.
  if (!shape.dense && affected.size() <= kPrefetchNodes && plan->positions() >= kPrefetchPositions) prefetch(affected);

  const std::uint64_t started = steady_ns();
  begin_wave(wave);
  const bool parallel = plan_segments(shape);
  wave_number.store(wave, std::memory_order_release);  // publishes everything above to the chunks
  detail::ScratchLease lease;
  Tally tally;
  tally.wanted = wanted_events.load(std::memory_order_relaxed);
  tally.scratch = &lease.get();
  if (!parallel) {
    counters.inline_waves.fetch_add(1, std::memory_order_relaxed);
    const std::size_t count = shape.dense ? plan->positions() : affected.size();
    if (shape.sweep) {
      run_sweep(wave, tally);
    } else {
      run_segment(detail::Segment{0, static_cast<std::uint32_t>(count)}, shape.dense, wave, tally);
    }
  } else {
    run_levels_in_parallel(shape, wave, tally);
  }
  add_tally(tally);
  settle(shape.dense, wave);
  finish_wave(wave, started);
}

}  // namespace mmsb
