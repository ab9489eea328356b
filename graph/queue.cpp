// Queues and modes: the commit listener (reserve, publish, release), IMMEDIATE/DEFERRED/BATCH draining, the
// bounded queue and its back-pressure, BATCH folding and the background worker. See graph/engine.hpp.
#include <algorithm>
#include <cstring>
#include <exception>
#include <iterator>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "delta/copy_bytes.hpp"
#include "delta/heap_bytes.hpp"
#include "graph/engine.hpp"

namespace mmsb {

using detail::kSampleCommitsEvery;
using detail::Slot;
using detail::steady_ns;

// Frees `n` reserved queue places and wakes commits blocked on a full queue.
void Propagator::Impl::free_places(std::size_t n) {
  if (n == 0) return;
  reserved.fetch_sub(n, std::memory_order_acq_rel);
  if (blocked.load(std::memory_order_acquire) > 0) {
    { std::lock_guard lock(queue_mutex); }  // orders this wake-up after a waiter's check
    queue_space.notify_all();
  }
}

// Runs what is queued, then hands observers what the waves produced, outside the engine lock (callbacks may
// commit, which in IMMEDIATE mode drains again on this thread).
void Propagator::Impl::drain() {
  std::exception_ptr error;
  {
    std::lock_guard lock(engine_mutex);
    try {
      drain_locked();
    } catch (...) {
      error = std::current_exception();
    }
  }
  deliver();
  if (error) std::rethrow_exception(error);
}

// Runs queued commits according to the mode; then stale nodes if nothing else ran.
void Propagator::Impl::drain_locked() {
  if (options.mode == PropagationMode::Batch) {
    drain_batch();
    return;
  }
  bool ran = false;
  for (;;) {
    PendingCommit commit;
    {
      std::lock_guard qlock(queue_mutex);
      if (queue.empty()) break;
      commit = std::move(queue.front());
      queue.pop_front();
    }
    free_places(1);
    ran = true;
    drain_changes.clear();
    for (std::size_t i = 0; i < commit.count; ++i) drain_changes.emplace_back(commit.deltas[i].page, &commit.deltas[i]);
    try {
      run_wave(drain_changes, std::shared_ptr<const void>(commit.deltas, commit.deltas.get()));
    } catch (...) {
      recycle(commit);
      throw;
    }
    if (commit.published_ns) commit_latency.record(steady_ns() - commit.published_ns);
    recycle(commit);
  }
  if (!ran && any_stale()) run_wave({});
}

// BATCH: takes every slot's folded delta (under its page lock) and runs them as one wave.
void Propagator::Impl::drain_batch() {
  drain_slots.clear();
  {
    std::lock_guard dlock(dirty_mutex);
    drain_slots.swap(dirty_slots);
    batch_dirty.store(false, std::memory_order_relaxed);
  }
  if (drain_slots.empty()) {
    if (any_stale()) run_wave({});
    return;
  }
  std::sort(drain_slots.begin(), drain_slots.end(),
            [](const Slot* a, const Slot* b) { return a->record->id < b->record->id; });
  if (drain_deltas.size() < drain_slots.size()) drain_deltas.resize(drain_slots.size());
  std::vector<std::pair<PageId, const Delta*>> changes;
  changes.reserve(drain_slots.size());
  std::uint64_t folds = 0, commits = 0;
  for (std::size_t i = 0; i < drain_slots.size(); ++i) {
    Slot* slot = drain_slots[i];
    std::unique_lock page_lock(slot->record->mutex);
    detail::BatchPending& batch = *slot->batch;
    std::swap(drain_deltas[i], batch.pending);
    batch.has_pending = false;
    folds += std::exchange(batch.folds, 0);
    commits += std::exchange(batch.commits, 0);
    changes.emplace_back(slot->record->id, &drain_deltas[i]);
  }
  // Counted here, not per commit (stats() adds the rest).
  counters.queued.fetch_add(commits, std::memory_order_relaxed);
  counters.composed.fetch_add(folds, std::memory_order_relaxed);
  free_places(commits);
  const std::uint64_t sampled = batch_sample_ns.exchange(0, std::memory_order_acq_rel);
  run_wave(changes);
  if (sampled) commit_latency.record(steady_ns() - sampled);
}

// Folds `next` into `acc` (acc then next). The common case, `next` rewriting bytes `acc` already covers, is done
// in place: same ranges, newer payload, the older undo kept. Otherwise compose().
void Propagator::Impl::fold(Delta& acc, const Delta& next) {
  // The common case of a stream of small commits: one range rewriting bytes inside acc's one range.
  if (next.ranges.size() == 1 && acc.ranges.size() == 1 && next.base_size == next.size && acc.size == next.base_size &&
      acc.base_size == acc.size && next.ranges[0].offset >= acc.ranges[0].offset &&
      next.ranges[0].end() <= acc.ranges[0].end()) {
    detail::copy_bytes(acc.payload.data() + (next.ranges[0].offset - acc.ranges[0].offset), next.payload.data(),
                       next.ranges[0].length);
    acc.epoch_count += next.epoch_count;
    acc.source = next.source;
    if (acc.intent != next.intent) acc.intent = next.intent;
    if (!next.has_undo) {
      acc.has_undo = false;
      acc.undo.clear();
      acc.undo_tail.clear();
    }
    return;
  }
  bool in_place = next.base_size == next.size && acc.size == next.base_size && acc.base_size == acc.size;
  if (in_place) {
    for (const ByteRange& r : next.ranges) {
      auto it = std::upper_bound(acc.ranges.begin(), acc.ranges.end(), r.offset,
                                 [](std::uint64_t off, const ByteRange& a) { return off < a.offset; });
      if (it == acc.ranges.begin() || r.end() > std::prev(it)->end()) {
        in_place = false;
        break;
      }
    }
  }
  if (!in_place) {
    acc = compose(acc, next);
    return;
  }
  // Both range lists are sorted, so one forward walk finds each containing range and its payload offset: the
  // first acc range that ends at or after r ends is the one the check above found to contain r.
  std::size_t k = 0;
  std::uint64_t acc_pos = 0;
  const std::byte* src = next.payload.data();
  for (const ByteRange& r : next.ranges) {
    while (acc.ranges[k].end() < r.end()) acc_pos += acc.ranges[k++].length;
    std::memcpy(acc.payload.data() + acc_pos + (r.offset - acc.ranges[k].offset), src, r.length);
    src += r.length;
  }
  acc.epoch_count += next.epoch_count;
  acc.source = next.source;
  acc.intent = next.intent;
  if (!next.has_undo) {
    acc.has_undo = false;
    acc.undo.clear();
    acc.undo_tail.clear();
  }
}

namespace {
// Memory a drained commit's array keeps: the deltas themselves and their vectors' capacity.
std::size_t held_bytes(const detail::PendingCommit& commit) noexcept {
  std::size_t bytes = commit.capacity * sizeof(Delta);
  for (std::size_t i = 0; i < commit.capacity; ++i) bytes += detail::heap_bytes(commit.deltas[i]);
  return bytes;
}
}  // namespace

void Propagator::Impl::recycle(PendingCommit& commit) noexcept {
  // Only arrays nobody else holds (page observers may keep a delta) are kept: a few of the small size class and
  // the largest of the others (the one it displaces is freed after the lock, by `displaced`).
  if (!commit.deltas || commit.deltas.use_count() != 1) return;
  if (commit.capacity == kSpareDeltas) {
    std::lock_guard lock(queue_mutex);
    if (spare_commits.size() < kSpareCommits) spare_commits.push_back(std::move(commit.deltas));
    return;
  }
  {
    // Measuring the array scans every delta: only an array that would be kept is measured, and outside the lock.
    std::lock_guard lock(queue_mutex);
    if (commit.capacity <= spare_large_capacity) return;
  }
  const std::size_t bytes = held_bytes(commit);
  std::shared_ptr<Delta[]> displaced;
  std::lock_guard lock(queue_mutex);
  if (commit.capacity > spare_large_capacity) {  // checked again: another drain may have kept a larger one since
    displaced = std::exchange(spare_large, std::move(commit.deltas));
    spare_large_capacity = commit.capacity;
    spare_large_bytes = bytes;
  }
}

void Propagator::Impl::worker_loop() {
  for (;;) {
    {
      std::unique_lock lock(queue_mutex);
      queue_nonempty.wait(lock,
                          [&] { return stopping || !queue.empty() || batch_dirty.load(std::memory_order_acquire); });
      if (stopping) return;
    }
    try {
      drain();
    } catch (...) {
      std::lock_guard lock(queue_mutex);
      background_error = std::current_exception();
    }
  }
}

namespace {
// The block of queue places this thread took last, and the Propagator (by serial) it belongs to.
struct CachedBlock {
  std::uint64_t serial = 0;
  Propagator::Impl::PlaceBlock* block = nullptr;
};
thread_local CachedBlock cached_block;
}  // namespace

// This thread's block, registered at its first use. Null when no more threads may hold blocks.
Propagator::Impl::PlaceBlock* Propagator::Impl::block_of_this_thread() {
  const std::thread::id me = std::this_thread::get_id();
  std::lock_guard lock(block_mutex);
  for (PlaceBlock& b : place_blocks) {  // a thread that alternates between Propagators finds its block again
    if (b.owner == me) return &b;
  }
  if (options.queue_capacity / (kPlacesPerBlock * kBlockShare) <= place_blocks.size()) return nullptr;
  PlaceBlock& b = place_blocks.emplace_back();
  b.owner = me;  // a block outlives its thread: a later thread with the same id takes it over
  block_threads.store(place_blocks.size(), std::memory_order_relaxed);
  return &b;
}

// BATCH: this thread's block has no place left (or it has none yet): takes a new block of kPlacesPerBlock places
// for it, or says false (the commit then takes its place alone). Blocks are taken only while the queue has room
// for twice a block and at most a kBlockShare-th of the capacity can sit unused in blocks, so a full queue always
// holds commits that a drain frees (no thread waits on places another thread holds unused), and a thread alone
// meets the capacity exactly.
bool Propagator::Impl::take_block_place() {
  PlaceBlock* block = cached_block.serial == block_serial ? cached_block.block : nullptr;
  if (block == nullptr &&
      options.queue_capacity / (kPlacesPerBlock * kBlockShare) <= block_threads.load(std::memory_order_relaxed)) {
    return false;
  }
  if (reserved.load(std::memory_order_relaxed) + 2 * kPlacesPerBlock > options.queue_capacity) return false;
  if (block == nullptr) {
    block = block_of_this_thread();
    if (block == nullptr) return false;
    cached_block = {block_serial, block};
    const std::size_t left = block->places.load(std::memory_order_relaxed);  // left by a thread with this id
    if (left > 0) {
      block->places.store(left - 1, std::memory_order_relaxed);
      return true;
    }
  }
  if (reserved.fetch_add(kPlacesPerBlock, std::memory_order_acq_rel) + kPlacesPerBlock > options.queue_capacity) {
    free_places(kPlacesPerBlock);  // others filled the queue meanwhile
    return false;
  }
  block->places.store(kPlacesPerBlock - 1, std::memory_order_relaxed);
  return true;
}

std::size_t Propagator::Impl::unused_block_places() const {
  std::lock_guard lock(block_mutex);
  std::size_t unused = 0;
  for (const PlaceBlock& b : place_blocks) unused += b.places.load(std::memory_order_relaxed);
  return unused;
}

// BATCH takes a place from this thread's block when it can: only this thread writes the block's count, so that
// is a plain load and store, no locked instruction per commit.
void Propagator::Impl::reserve() {
  if (options.mode == PropagationMode::Batch) {
    if (cached_block.serial == block_serial) {
      const std::size_t left = cached_block.block->places.load(std::memory_order_relaxed);
      if (left > 0) {
        cached_block.block->places.store(left - 1, std::memory_order_relaxed);
        return;
      }
    }
    if (take_block_place()) return;
  } else if (options.mode == PropagationMode::Immediate) {
    reserved.fetch_add(1, std::memory_order_relaxed);  // drained by this very commit: no bound needed
    return;
  }
  reserve_alone();
}

// One queue place, waiting for room or failing as full_policy says.
void Propagator::Impl::reserve_alone() {
  for (;;) {
    if (reserved.fetch_add(1, std::memory_order_acq_rel) < options.queue_capacity) return;
    reserved.fetch_sub(1, std::memory_order_acq_rel);
    if (options.full_policy == QueueFullPolicy::Fail) {
      throw Error(ErrorCode::ResourceExhausted,
                  "the propagation queue is full (" + std::to_string(options.queue_capacity) +
                      " commits); call propagate(), enable the background worker, or raise queue_capacity");
    }
    std::unique_lock lock(queue_mutex);
    blocked.fetch_add(1, std::memory_order_acq_rel);
    queue_space.wait(lock,
                     [&] { return stopping || reserved.load(std::memory_order_acquire) < options.queue_capacity; });
    blocked.fetch_sub(1, std::memory_order_acq_rel);
    if (stopping) {
      throw Error(ErrorCode::Aborted, "the Propagator is being destroyed; the commit was not made");
    }
  }
}

// One commit in kSampleCommitsEvery per thread is timed from here to the end of its wave.
bool Propagator::Impl::sample_this_commit() noexcept {
  // A plain load and store, not a read-modify-write: concurrent commits may count the same number, which only
  // shifts which commit gets timed.
  const std::uint64_t seen = commits_seen.load(std::memory_order_relaxed);
  commits_seen.store(seen + 1, std::memory_order_relaxed);
  return seen % kSampleCommitsEvery == 0;
}

// A drained array that holds `watched` deltas, if one is spare: its deltas' vectors keep their capacity, so the
// commit's copies into them allocate nothing.
void Propagator::Impl::take_spare(PendingCommit& commit, std::size_t watched) noexcept {
  std::shared_ptr<Delta[]> dropped;  // freed after the lock
  std::lock_guard lock(queue_mutex);
  if (spare_large && spare_large_bytes > kSpareLargeBytes && watched < spare_large_capacity / 4) {
    dropped = std::move(spare_large);
    spare_large_capacity = spare_large_bytes = 0;
  }
  if (watched <= kSpareDeltas) {
    if (spare_commits.empty()) return;
    commit.deltas = std::move(spare_commits.back());
    spare_commits.pop_back();
    commit.capacity = kSpareDeltas;
  } else if (spare_large && watched <= spare_large_capacity) {
    commit.deltas = std::move(spare_large);
    commit.capacity = std::exchange(spare_large_capacity, 0);
    spare_large_bytes = 0;
  }
}

// Flattened: runs once per commit, and in BATCH mode its work (a lookup and a fold) costs less than the calls
// it is split into.
[[gnu::flatten]] void Propagator::Impl::published(std::uint64_t lsn, std::span<const Delta> deltas) noexcept {
  if (wants(EventKind::Commit)) {
    try {
      emit(Event{EventKind::Commit, deltas.empty() ? PageId() : deltas[0].page, lsn, 0, 0, 0, {}});
    } catch (...) {  // observers are best effort; the commit must not fail here
    }
  }
  if (options.mode == PropagationMode::Batch) {
    publish_batch(deltas);
    return;
  }
  std::size_t watched = 0;
  for (const Delta& d : deltas) {
    const Slot* slot = slot_of(d.page);
    watched += slot != nullptr;
    // The wave of a small commit starts from these slots (reach_from): fetched now, their miss overlaps the rest of
    // the commit and whatever the caller does before propagate() instead of opening the wave (~0.3 us of a
    // single-source wave in a 10^6-leaf tree). A large commit's wave sweeps its slots in order anyway.
    if (slot && deltas.size() <= kSpareDeltas) {
      __builtin_prefetch(slot, 1);
      __builtin_prefetch(reinterpret_cast<const char*>(slot) + sizeof(Slot) - 1, 1);  // it may straddle two lines
    }
  }
  if (watched == 0) {
    free_places(1);
    return;
  }
  PendingCommit commit;
  take_spare(commit, watched);
  if (!commit.deltas) {
    commit.capacity = watched <= kSpareDeltas ? kSpareDeltas : watched;
    commit.deltas = std::make_shared<Delta[]>(commit.capacity);  // empty Deltas allocate nothing
  }
  for (const Delta& d : deltas) {
    if (slot_of(d.page) != nullptr) commit.deltas[commit.count++] = d;  // copy-assignment reuses capacity
  }
  commit.lsn = lsn;
  if (sample_this_commit()) commit.published_ns = steady_ns();
  {
    std::lock_guard lock(queue_mutex);
    queue.push_back(std::move(commit));
  }
  counters.queued.fetch_add(1, std::memory_order_relaxed);
  queue_nonempty.notify_one();
}

Slot* Propagator::Impl::slot_of(PageId page) const noexcept {
  PageRecord* record = runtime_impl.find(page);
  return record ? static_cast<Slot*>(record->listener_tag.load(std::memory_order_acquire)) : nullptr;
}

// The slot's BATCH state, created at its first BATCH commit (under that commit's page lock).
detail::BatchPending& Propagator::Impl::batch_of(Slot& slot) {
  if (slot.batch == nullptr) {
    auto fresh = std::make_unique<detail::BatchPending>();
    std::lock_guard lock(batch_mutex);
    slot.batch = fresh.get();
    batch_pending.push_back(std::move(fresh));
  }
  return *slot.batch;
}

// BATCH: fold each watched delta into its page's pending delta. Runs under the commit's page locks.
void Propagator::Impl::publish_batch(std::span<const Delta> deltas) noexcept {
  bool watched = false;
  for (const Delta& d : deltas) {
    Slot* slot = slot_of(d.page);
    if (slot == nullptr) continue;
    detail::BatchPending& batch = batch_of(*slot);
    if (!watched) ++batch.commits;
    watched = true;
    if (!batch.has_pending) {
      batch.pending = d;  // copy-assignment reuses the capacity left by the last drain
      batch.has_pending = true;
      std::lock_guard lock(dirty_mutex);
      dirty_slots.push_back(slot);
      batch_dirty.store(true, std::memory_order_release);
    } else {
      fold(batch.pending, d);
      ++batch.folds;
    }
  }
  if (!watched) {
    free_places(1);
    return;
  }
  if (sample_this_commit()) {
    std::uint64_t none = 0;
    batch_sample_ns.compare_exchange_strong(none, steady_ns(), std::memory_order_acq_rel);
  }
  if (worker.joinable()) {
    { std::lock_guard lock(queue_mutex); }  // orders this wake-up after the worker's check
    queue_nonempty.notify_one();
  }
}

// The commit `lsn` has taken effect: a wave failing now is reported as a NodeError carrying that LSN, so the
// caller cannot mistake it for a failed commit (and retry it).
void Propagator::Impl::after_commit(std::uint64_t lsn) {
  try {
    if (options.mode == PropagationMode::Immediate) drain();
  } catch (const NodeError& e) {
    notify_waiters();
    throw NodeError(e.page(), e.nested() ? describe(e.nested()) : e.what(), e.nested(), lsn);
  }
  notify_waiters();  // a commit may be what a wait_for() is waiting on
}

void Propagator::Impl::release() noexcept { free_places(1); }

}  // namespace mmsb
