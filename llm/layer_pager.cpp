#include "mmsb/llm/layer_pager.hpp"

#include <sys/mman.h>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <cerrno>
#include <charconv>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <iterator>
#include <mutex>
#include <string>
#include <thread>
#include <utility>

#include "mmsb/error.hpp"

namespace mmsb::llm {

namespace {

// An anonymous mapping: freed memory goes straight back to the OS, fresh memory is zero pages until written.
struct Buffer {
  std::byte* data = nullptr;
  std::uint64_t capacity = 0;
};

Buffer allocate(std::uint64_t bytes) {
  void* p = ::mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) {
    throw Error(ErrorCode::ResourceExhausted, "layer pager: cannot map " + std::to_string(bytes) +
                                                  " bytes of anonymous memory: " + std::strerror(errno));
  }
  return {static_cast<std::byte*>(p), bytes};
}

void release(Buffer& b) noexcept {
  if (b.data) ::munmap(b.data, b.capacity);
  b = {};
}

std::uint64_t elapsed_ns(std::chrono::steady_clock::time_point start) {
  return static_cast<std::uint64_t>(
      std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now() - start).count());
}

// Queued: a prefetch reserved the buffer but its task has not started; a pin that needs the unit then loads it
// itself rather than wait for a worker thread to be scheduled (the task later finds nothing to do).
enum class State : std::uint8_t { Absent, Queued, Loading, Resident };

}  // namespace

struct LayerPager::Impl {
  struct Unit {
    std::uint64_t bytes = 0;
    std::atomic<State> state{State::Absent};  // written under mutex; read without it while spinning
    Buffer buffer;                            // guarded by mutex; fixed while Loading or Resident (copied units)
    std::span<const std::byte> mapped;        // guarded by mutex: what the mapper returned, while Resident
    std::uint32_t pins = 0;                   // guarded by mutex
    std::uint64_t last_use = 0;               // guarded by mutex: tick of the last pin or started prefetch
    bool by_prefetch = false;                 // guarded by mutex: loaded (or loading) by a prefetch, not pinned since
    bool kept = false;                        // fixed after construction: never evicted

    std::span<const std::byte> view() const noexcept {
      return mapped.data() ? mapped : std::span<const std::byte>(buffer.data, bytes);
    }
  };

  std::uint64_t budget = 0;
  std::uint64_t slot_bytes = 0;     // the largest unit that is not kept: the size of every buffer of such units
  std::uint64_t streamed_held = 0;  // guarded by mutex: bytes held for units that are not kept: the slots (in use
                                    // or pooled), or the mapped units' bytes (mapped, being mapped or unmapped)
  Loader loader;
  Options options;
  mutable std::mutex mutex;
  std::condition_variable changed;         // a load finished or failed, or a unit was unpinned
  std::vector<Unit> units;                 // the vector itself never changes size
  std::vector<Buffer> pool;                // guarded by mutex: free buffers, counted in stats.held_bytes
  std::uint64_t tick = 0;                  // guarded by mutex
  std::uint64_t loads_in_flight = 0;       // guarded by mutex: synchronous and prefetch loads
  std::uint64_t prefetches_in_flight = 0;  // guarded by mutex
  std::uint64_t unmaps_in_flight = 0;      // guarded by mutex: evicted mapped units being given back
  PagerStats stats;                        // guarded by mutex

  // The loader thread (when no executor is given): prefetch() queues unit indexes in `requests` under the mutex.
  std::thread loader_thread;
  std::deque<std::size_t> requests;      // guarded by mutex
  bool stopping = false;                 // guarded by mutex
  bool loader_sleeping = false;          // guarded by mutex: prefetch() must notify `work`
  std::condition_variable work;          // a request was queued or the pager is stopping
  std::atomic<std::uint64_t> queued{0};  // a hint for the spinning loader: requests were queued
  std::atomic<bool> stop_spinning{false};

  // How long the loader spins for the next request after a load before it sleeps. A decoding loop asks every few
  // to few tens of microseconds; waking a sleeping thread costs about as much as a small layer's compute.
  static constexpr std::chrono::microseconds kLoaderSpin{2000};
  // Mapped units sleep at once: a mapping takes tens to hundreds of microseconds, the pager prefetches three
  // units ahead, and a spinning thread on a core shared with the compute (another process busy on the other core)
  // used the time the OS would give it when the next request comes, so more prefetches started late.
  static constexpr std::chrono::microseconds kMapperSpin{0};

  void loader_loop() noexcept {
    std::unique_lock lock(mutex);
    for (;;) {
      if (!requests.empty()) {
        const std::size_t index = requests.front();
        requests.pop_front();
        lock.unlock();
        run_prefetch(index);
        lock.lock();
        continue;
      }
      if (stopping) return;
      const std::uint64_t seen = queued.load(std::memory_order_relaxed);
      lock.unlock();
      const auto give_up = std::chrono::steady_clock::now() + (maps() ? kMapperSpin : kLoaderSpin);
      while (queued.load(std::memory_order_relaxed) == seen && !stop_spinning.load(std::memory_order_relaxed) &&
             std::chrono::steady_clock::now() < give_up) {
        std::this_thread::yield();
      }
      lock.lock();
      if (requests.empty() && !stopping) {
        loader_sleeping = true;
        work.wait(lock, [this] { return !requests.empty() || stopping; });
        loader_sleeping = false;
      }
    }
  }

  // Evicts an unpinned resident unit that is not kept into the pool: the least recently used one that has been
  // pinned since it was loaded, else the least recently used one a prefetch loaded for a pin still to come (which
  // is needed sooner than anything already used in a cyclic order). False when there is none.
  bool evict_lru() {
    Unit* victim = lru_victim();
    if (!victim) return false;
    evict(*victim);
    pool.push_back(std::exchange(victim->buffer, {}));
    return true;
  }

  Unit* lru_victim() {
    Unit* victim = nullptr;
    auto before = [](const Unit& a, const Unit& b) {
      return a.by_prefetch != b.by_prefetch ? !a.by_prefetch : a.last_use < b.last_use;
    };
    for (Unit& u : units) {
      if (u.state == State::Resident && u.pins == 0 && !u.kept && (!victim || before(u, *victim))) victim = &u;
    }
    return victim;
  }

  void evict(Unit& victim) {
    if (victim.by_prefetch) ++stats.prefetches_unused;
    victim.by_prefetch = false;
    victim.state = State::Absent;
    stats.resident_bytes -= victim.bytes;
    ++stats.evictions;
  }

  bool maps() const noexcept { return static_cast<bool>(options.mapper.map); }

  // Mapped units: makes room for `u` under the budget (a kept unit has its room), evicting LRU units and unmapping
  // them on this thread with the lock released; their bytes stay counted until the unmapping returns, so the bytes
  // mapped never exceed the budget. False when nothing can be evicted now.
  bool reserve_mapping(std::unique_lock<std::mutex>& lock, Unit& u) {
    for (;;) {
      if (u.kept || streamed_held + u.bytes <= budget - stats.kept_bytes) {
        if (!u.kept) streamed_held += u.bytes;
        add_held(u.bytes);
        return true;
      }
      Unit* victim = lru_victim();
      if (!victim) return false;
      evict(*victim);
      const std::span<const std::byte> bytes = std::exchange(victim->mapped, {});
      ++unmaps_in_flight;
      lock.unlock();
      const auto start = std::chrono::steady_clock::now();
      options.mapper.unmap(static_cast<std::size_t>(victim - units.data()), bytes);
      const std::uint64_t ns = elapsed_ns(start);
      lock.lock();
      --unmaps_in_flight;
      stats.unmap_ns += ns;
      release_reservation(*victim);
      changed.notify_all();
    }
  }

  void release_reservation(const Unit& u) {
    if (!u.kept) streamed_held -= u.bytes;
    stats.held_bytes -= u.bytes;
  }

  void add_held(std::uint64_t bytes) {
    stats.held_bytes += bytes;
    stats.peak_held_bytes = std::max(stats.peak_held_bytes, stats.held_bytes);
  }

  // A buffer for a load of `unit`. The budget is split: every kept unit has room for a buffer of exactly its size,
  // and the rest holds *slots*, buffers of slot_bytes (the largest unit that is not kept) for the other units, so
  // that any freed slot serves any later load and paging never unmaps or maps memory once the slots exist (fresh
  // pages cost a fault each, more than the copy). A slot is a pooled one, else a new one while the slots' share of
  // the budget has room, else the one of an evicted LRU unit. {} when nothing can be evicted.
  Buffer acquire(const Unit& unit) {
    if (unit.kept) return take_new(unit.bytes);
    for (;;) {
      if (!pool.empty()) {
        Buffer b = pool.back();
        pool.pop_back();
        return b;
      }
      if (streamed_held + slot_bytes <= budget - stats.kept_bytes) {
        streamed_held += slot_bytes;
        return take_new(slot_bytes);
      }
      if (!evict_lru()) return {};
    }
  }

  // A load of `u` into `b` starts: on the pinning thread (Loading) or for the loader (Queued).
  void begin_load(Unit& u, Buffer b, State state, bool by_prefetch) {
    u.state = state;
    u.buffer = b;
    u.by_prefetch = by_prefetch;
    u.last_use = ++tick;
    stats.resident_bytes += u.bytes;
    ++loads_in_flight;
  }

  Buffer take_new(std::uint64_t bytes) {
    Buffer b = allocate(bytes);
    add_held(bytes);
    return b;
  }

  // Marks a unit whose load failed absent again; a slot returns to the pool, a kept unit's buffer is freed (its
  // room stays reserved); a mapped unit's room is given back.
  void abandon_load(Unit& u) {
    if (maps()) {
      release_reservation(u);
    } else if (u.kept) {
      stats.held_bytes -= u.buffer.capacity;
      release(u.buffer);
    } else {
      pool.push_back(u.buffer);
    }
    u.buffer = {};
    unclaim(u);
  }

  // Undoes begin_load() of a unit that holds no room.
  void unclaim(Unit& u) {
    u.state = State::Absent;
    u.by_prefetch = false;
    stats.resident_bytes -= u.bytes;
    --loads_in_flight;
  }

  // Copies or maps a unit being loaded (Loading, with room), without the lock: its bytes. Rethrows the error.
  std::span<const std::byte> fill(std::size_t index, const Unit& u) {
    if (!maps()) {
      loader(index, {u.buffer.data, u.bytes});
      return {u.buffer.data, u.bytes};
    }
    const std::span<const std::byte> bytes = options.mapper.map(index);
    if (bytes.size() > u.bytes) {
      options.mapper.unmap(index, bytes);
      throw Error(ErrorCode::Internal, "layer pager: the mapper returned " + std::to_string(bytes.size()) +
                                           " bytes for unit " + std::to_string(index) + " of " +
                                           std::to_string(u.bytes));
    }
    return bytes;
  }

  // A load succeeded (under the lock).
  void finish_load(Unit& u, std::span<const std::byte> bytes, std::uint64_t ns) {
    u.state = State::Resident;
    if (maps()) u.mapped = bytes;
    stats.bytes_loaded += u.bytes;
    stats.load_ns += ns;
    --loads_in_flight;
  }

  // A pin found `u` absent or queued: claims it for a load on the pinning thread, with room (a buffer, or the
  // mapped units' share of the budget). False after waiting for room that a load or unmapping in flight will make;
  // throws Error(ResourceExhausted) when none can come.
  bool claim_for_pin(std::unique_lock<std::mutex>& lock, Unit& u, std::size_t index) {
    if (u.state == State::Queued) {  // the prefetch task has not started: load it here (a copy has its buffer)
      ++stats.prefetches_late;
      u.state = State::Loading;
      u.by_prefetch = false;
      u.last_use = ++tick;
    } else {
      Buffer b;
      if (!maps() && !(b = acquire(u)).data) return wait_for_room(lock, u, index);
      begin_load(u, b, State::Loading, false);
    }
    if (!maps() || reserve_mapping(lock, u)) return true;
    unclaim(u);
    changed.notify_all();
    return wait_for_room(lock, u, index);
  }

  bool wait_for_room(std::unique_lock<std::mutex>& lock, const Unit& u, std::size_t index) {
    if (loads_in_flight == 0 && unmaps_in_flight == 0) {
      throw Error(ErrorCode::ResourceExhausted,
                  "layer pager: no room for unit " + std::to_string(index) + " (" + std::to_string(u.bytes) +
                      " bytes): every resident unit is pinned within a budget of " + std::to_string(budget) +
                      " bytes; release pins first or give a larger budget");
    }
    changed.wait(lock);  // a finishing load makes its unit evictable; a finished unmapping frees room
    return false;
  }

  // Loads a unit claimed by claim_for_pin() on the pinning thread and pins it: its bytes.
  std::span<const std::byte> load_here(std::unique_lock<std::mutex>& lock, Unit& u, std::size_t index) {
    lock.unlock();
    const auto start = std::chrono::steady_clock::now();
    std::span<const std::byte> bytes;
    try {
      bytes = fill(index, u);
    } catch (...) {
      lock.lock();
      abandon_load(u);
      changed.notify_all();
      throw;
    }
    const std::uint64_t ns = elapsed_ns(start);
    lock.lock();
    finish_load(u, bytes, ns);
    ++u.pins;
    ++stats.pins;
    ++stats.sync_loads;
    stats.sync_load_ns += ns;
    changed.notify_all();
    return bytes;
  }

  void run_prefetch(std::size_t index) noexcept {
    Unit& u = units[index];
    std::unique_lock lock(mutex);
    if (u.state != State::Queued) {  // a pin loaded it meanwhile (or it was loaded, evicted and queued again)
      --prefetches_in_flight;
      changed.notify_all();
      return;
    }
    u.state = State::Loading;
    if (maps() && !reserve_mapping(lock, u)) {  // no room now: dropped, as a copy's prefetch that finds none
      unclaim(u);
      --stats.prefetches;
      ++stats.prefetches_dropped;
      --prefetches_in_flight;
      changed.notify_all();
      return;
    }
    lock.unlock();
    bool ok = true;
    std::span<const std::byte> bytes;
    const auto start = std::chrono::steady_clock::now();
    try {
      bytes = fill(index, u);
    } catch (...) {
      ok = false;  // a later pin loads it synchronously, and reports the error if it recurs
    }
    const std::uint64_t ns = elapsed_ns(start);
    lock.lock();
    if (ok) {
      finish_load(u, bytes, ns);
    } else {
      abandon_load(u);
      ++stats.prefetch_failures;
    }
    --prefetches_in_flight;
    changed.notify_all();  // under the lock: the destructor may free this object as soon as it sees zero in flight
  }
};

LayerPager::Pin::Pin(Pin&& other) noexcept
    : pager_(std::exchange(other.pager_, nullptr)), unit_(other.unit_), bytes_(other.bytes_) {}

LayerPager::Pin& LayerPager::Pin::operator=(Pin&& other) noexcept {
  if (this != &other) {
    reset();
    pager_ = std::exchange(other.pager_, nullptr);
    unit_ = other.unit_;
    bytes_ = other.bytes_;
  }
  return *this;
}

void LayerPager::Pin::reset() noexcept {
  if (pager_) std::exchange(pager_, nullptr)->unpin(unit_);
  bytes_ = {};
}

std::uint64_t LayerPager::minimum_budget(std::span<const std::uint64_t> unit_bytes,
                                         std::span<const std::size_t> kept) noexcept {
  std::vector<bool> is_kept(unit_bytes.size(), false);
  for (std::size_t k : kept) {
    if (k < is_kept.size()) is_kept[k] = true;
  }
  std::uint64_t kept_bytes = 0, largest_other = 0;
  for (std::size_t i = 0; i < unit_bytes.size(); ++i) {
    if (is_kept[i]) {
      kept_bytes += unit_bytes[i];
    } else {
      largest_other = std::max(largest_other, unit_bytes[i]);
    }
  }
  return kept_bytes + 2 * largest_other;
}

std::vector<std::size_t> LayerPager::choose_kept(std::span<const std::uint64_t> unit_bytes, std::uint64_t budget,
                                                 std::size_t room_units) {
  room_units = std::max<std::size_t>(room_units, 2);
  std::vector<std::size_t> order(unit_bytes.size());
  for (std::size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) {
    return unit_bytes[a] != unit_bytes[b] ? unit_bytes[a] > unit_bytes[b] : a < b;  // largest first, then by index
  });
  std::uint64_t total = 0;
  for (std::uint64_t b : unit_bytes) total += b;
  if (total <= budget) {  // everything fits: keep it all
    std::sort(order.begin(), order.end());
    return order;
  }
  // For each candidate size T of the largest streamed unit: every larger unit must be kept, room for `room_units`
  // units of T stays free, and the units of at most T fill what is left, largest first. The candidate keeping the
  // most bytes loads the fewest per cycle.
  std::vector<std::size_t> best;
  std::uint64_t best_bytes = 0;
  for (std::size_t c = 0; c < order.size(); ++c) {
    const std::uint64_t stream_max = unit_bytes[order[c]];
    if (c > 0 && unit_bytes[order[c - 1]] == stream_max) continue;  // the same candidate as before
    std::uint64_t kept_bytes = 0;
    for (std::size_t i = 0; i < c; ++i) kept_bytes += unit_bytes[order[i]];
    if (kept_bytes + room_units * stream_max > budget) continue;
    std::vector<std::size_t> kept(order.begin(), order.begin() + static_cast<std::ptrdiff_t>(c));
    std::uint64_t room = budget - kept_bytes - room_units * stream_max;
    for (std::size_t i = c; i < order.size(); ++i) {
      if (unit_bytes[order[i]] <= room) {
        room -= unit_bytes[order[i]];
        kept_bytes += unit_bytes[order[i]];
        kept.push_back(order[i]);
      }
    }
    if (kept_bytes > best_bytes) {
      best_bytes = kept_bytes;
      best = std::move(kept);
    }
  }
  std::sort(best.begin(), best.end());
  return best;
}

LayerPager::LayerPager(std::vector<std::uint64_t> unit_bytes, std::uint64_t budget, Loader loader, Options options)
    : impl_(std::make_unique<Impl>()) {
  if (unit_bytes.empty()) throw Error(ErrorCode::InvalidArgument, "layer pager: no units to page");
  for (std::size_t i = 0; i < unit_bytes.size(); ++i) {
    if (unit_bytes[i] == 0) {
      throw Error(ErrorCode::InvalidArgument, "layer pager: unit " + std::to_string(i) + " has 0 bytes");
    }
  }
  const std::uint64_t unkept_minimum = minimum_budget(unit_bytes);
  if (budget < unkept_minimum) {
    std::uint64_t largest = unkept_minimum / 2;
    throw Error(ErrorCode::InvalidArgument, "memory budget of " + std::to_string(budget) +
                                                " bytes is below the minimum of " + std::to_string(unkept_minimum) +
                                                " bytes (two of the largest paged units, " + std::to_string(largest) +
                                                " bytes each: one in use while the next one loads); give a budget of " +
                                                "at least " + std::to_string(unkept_minimum) + " bytes");
  }
  std::vector<bool> kept_seen(unit_bytes.size(), false);
  for (std::size_t k : options.kept) {
    if (k >= unit_bytes.size() || kept_seen[k]) {
      throw Error(ErrorCode::InvalidArgument, "layer pager: kept unit " + std::to_string(k) +
                                                  (k >= unit_bytes.size() ? " does not exist" : " is named twice"));
    }
    kept_seen[k] = true;
  }
  const std::uint64_t minimum = minimum_budget(unit_bytes, options.kept);
  if (budget < minimum) {
    throw Error(ErrorCode::InvalidArgument, "layer pager: a budget of " + std::to_string(budget) +
                                                " bytes cannot keep " + std::to_string(options.kept.size()) +
                                                " units resident and stream the others (" + std::to_string(minimum) +
                                                " bytes needed); keep fewer units (see choose_kept)");
  }
  if (static_cast<bool>(options.mapper.map) != static_cast<bool>(options.mapper.unmap)) {
    throw Error(ErrorCode::InvalidArgument, "layer pager: a mapper needs both map and unmap");
  }
  if (!loader && !options.mapper.map) throw Error(ErrorCode::InvalidArgument, "layer pager: no loader given");
  impl_->budget = budget;
  impl_->loader = std::move(loader);
  impl_->options = std::move(options);
  impl_->units = std::vector<Impl::Unit>(unit_bytes.size());  // (Unit holds an atomic: not movable)
  for (std::size_t i = 0; i < unit_bytes.size(); ++i) impl_->units[i].bytes = unit_bytes[i];
  for (std::size_t k : impl_->options.kept) {
    impl_->units[k].kept = true;
    ++impl_->stats.kept_units;
    impl_->stats.kept_bytes += unit_bytes[k];
  }
  for (const Impl::Unit& u : impl_->units) {
    if (!u.kept) impl_->slot_bytes = std::max(impl_->slot_bytes, u.bytes);
  }
  if (!impl_->options.executor && impl_->options.prefetch) {
    impl_->loader_thread = std::thread([m = impl_.get()] { m->loader_loop(); });
  }
}

LayerPager::~LayerPager() {
  Impl& m = *impl_;
  {
    std::unique_lock lock(m.mutex);
    m.stopping = true;
    m.work.notify_all();
  }
  m.stop_spinning = true;
  if (m.loader_thread.joinable()) m.loader_thread.join();  // it runs the queued requests first
  {
    std::unique_lock lock(m.mutex);
    m.changed.wait(lock, [&m] { return m.prefetches_in_flight == 0; });
  }
  for (std::size_t i = 0; i < m.units.size(); ++i) {
    if (m.units[i].mapped.data()) m.options.mapper.unmap(i, m.units[i].mapped);
    release(m.units[i].buffer);
  }
  for (Buffer& b : m.pool) release(b);
}

LayerPager::Pin LayerPager::pin(std::size_t index) {
  Impl& m = *impl_;
  if (index >= m.units.size()) {
    throw Error(ErrorCode::InvalidArgument, "layer pager: unit " + std::to_string(index) + " does not exist (" +
                                                std::to_string(m.units.size()) + " units)");
  }
  std::unique_lock lock(m.mutex);
  Impl::Unit& u = m.units[index];
  bool waited = false;
  for (;;) {
    if (u.state == State::Resident) {
      ++u.pins;
      u.last_use = ++m.tick;
      ++m.stats.pins;
      ++(waited ? m.stats.waits : m.stats.hits);
      if (u.by_prefetch) ++m.stats.prefetch_hits;
      u.by_prefetch = false;
      return Pin(this, index, u.view());
    }
    if (u.state == State::Loading) {
      // Another thread is copying it: spin briefly (a unit copies in tens of microseconds; sleeping on the
      // condition variable would add a wake-up), then block.
      waited = true;
      lock.unlock();
      const auto give_up = std::chrono::steady_clock::now() + std::chrono::microseconds(200);
      while (u.state.load(std::memory_order_acquire) == State::Loading && std::chrono::steady_clock::now() < give_up) {
        std::this_thread::yield();
      }
      lock.lock();
      if (u.state == State::Loading) m.changed.wait(lock);
      continue;
    }
    if (!m.claim_for_pin(lock, u, index)) continue;  // waited for room
    return Pin(this, index, m.load_here(lock, u, index));
  }
}

void LayerPager::prefetch(std::size_t index) {
  Impl& m = *impl_;
  if (index >= m.units.size()) {
    throw Error(ErrorCode::InvalidArgument,
                "layer pager: cannot prefetch unit " + std::to_string(index) + " of " + std::to_string(m.units.size()));
  }
  if (!m.options.prefetch) return;
  bool wake_loader = false;
  {
    std::lock_guard lock(m.mutex);
    Impl::Unit& u = m.units[index];
    if (u.state != State::Absent) return;
    Buffer b;  // a mapped unit gets its room from the loader thread, which also unmaps what must go
    if (!m.maps() && !(b = m.acquire(u)).data) {
      ++m.stats.prefetches_dropped;
      return;
    }
    m.begin_load(u, b, State::Queued, true);
    ++m.prefetches_in_flight;
    ++m.stats.prefetches;
    if (!m.options.executor) {
      try {
        m.requests.push_back(index);
      } catch (...) {  // out of memory: undo, as when an executor refuses the task
        m.abandon_load(u);
        --m.prefetches_in_flight;
        --m.stats.prefetches;
        throw;
      }
      m.queued.fetch_add(1, std::memory_order_relaxed);
      wake_loader = m.loader_sleeping;
    }
  }
  if (!m.options.executor) {
    if (wake_loader) m.work.notify_one();
    return;
  }
  try {
    m.options.executor([&m, index] { m.run_prefetch(index); });
  } catch (...) {  // the task never started
    std::lock_guard lock(m.mutex);
    if (m.units[index].state == State::Queued) m.abandon_load(m.units[index]);
    --m.prefetches_in_flight;
    --m.stats.prefetches;
    m.changed.notify_all();
    throw;
  }
}

void LayerPager::wait_prefetches() {
  Impl& m = *impl_;
  std::unique_lock lock(m.mutex);
  m.changed.wait(lock, [&m] { return m.prefetches_in_flight == 0; });
}

void LayerPager::unpin(std::size_t index) noexcept {
  Impl& m = *impl_;
  std::lock_guard lock(m.mutex);
  if (--m.units[index].pins == 0) m.changed.notify_all();
}

PagerStats LayerPager::stats() const {
  std::lock_guard lock(impl_->mutex);
  return impl_->stats;
}

bool LayerPager::maps_units() const noexcept { return impl_->maps(); }

bool LayerPager::kept(std::size_t index) const noexcept {
  return index < impl_->units.size() && impl_->units[index].kept;
}

bool LayerPager::resident(std::size_t index) const {
  std::lock_guard lock(impl_->mutex);
  return index < impl_->units.size() && impl_->units[index].state == State::Resident;
}

std::uint64_t LayerPager::budget() const noexcept { return impl_->budget; }
std::uint64_t LayerPager::slot_bytes() const noexcept { return impl_->slot_bytes; }
std::size_t LayerPager::unit_count() const noexcept { return impl_->units.size(); }
std::uint64_t LayerPager::unit_bytes(std::size_t index) const noexcept {
  return index < impl_->units.size() ? impl_->units[index].bytes : 0;
}

std::uint64_t parse_mem_budget(std::string_view text, std::uint64_t model_bytes) {
  auto bad = [&](const std::string& why) {
    return Error(ErrorCode::InvalidArgument,
                 "memory budget '" + std::string(text) + "' " + why +
                     "; give bytes with an optional K/M/G/T suffix (e.g. 400000, 512K, 1M) or a percentage of the "
                     "model (e.g. 50%)");
  };
  if (text.empty()) throw bad("is empty");
  if (text.back() == '%') {
    std::string_view number = text.substr(0, text.size() - 1);
    double percent = 0;
    auto [end, ec] = std::from_chars(number.data(), number.data() + number.size(), percent);
    if (number.empty() || ec != std::errc() || end != number.data() + number.size() || !std::isfinite(percent)) {
      throw bad("is not a percentage");
    }
    if (percent <= 0) throw bad("must be above 0%");
    std::uint64_t whole = 0;
    auto [wend, wec] = std::from_chars(number.data(), number.data() + number.size(), whole);
    std::uint64_t bytes = 0;
    if (wec == std::errc() && wend == number.data() + number.size()) {
      // An integer percentage, exactly: floor(model_bytes * whole / 100) = q * whole + floor(r * whole / 100).
      const std::uint64_t q = model_bytes / 100, r = model_bytes % 100;
      std::uint64_t a = 0, b = 0;
      if (__builtin_mul_overflow(q, whole, &a) || __builtin_mul_overflow(r, whole, &b) ||
          __builtin_add_overflow(a, b / 100, &bytes)) {
        throw bad("is more than 2^64 bytes");
      }
    } else {
      const long double exact =
          std::floor(static_cast<long double>(model_bytes) * static_cast<long double>(percent) / 100.0L);
      if (exact >= 18446744073709551616.0L) throw bad("is more than 2^64 bytes");
      bytes = static_cast<std::uint64_t>(exact);
    }
    if (bytes == 0) throw bad("is 0 bytes of this model");
    return bytes;
  }
  std::uint64_t value = 0;
  auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (ec == std::errc::result_out_of_range) throw bad("is more than 2^64 bytes");
  if (ec != std::errc() || end == text.data()) throw bad("is not a byte count");
  std::string suffix(end, text.data() + text.size());
  for (char& ch : suffix) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
  unsigned shift = 0;
  if (!suffix.empty() && suffix != "b") {
    const std::string units = "kmgt";
    const auto at = units.find(suffix[0]);
    const std::string rest = suffix.substr(1);
    if (at == std::string::npos || !(rest.empty() || rest == "b" || rest == "ib")) {
      throw bad("has an unknown suffix '" + std::string(end, text.data() + text.size()) + "'");
    }
    shift = 10 * static_cast<unsigned>(at + 1);
  }
  if (value == 0) throw bad("must be above 0");
  if (shift > 0 && value > (~std::uint64_t{0} >> shift)) throw bad("is more than 2^64 bytes");
  return value << shift;
}

}  // namespace mmsb::llm
