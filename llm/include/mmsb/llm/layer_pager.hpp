// mmsb/llm/layer_pager.hpp — keeps some of a model's weight units in memory under a byte budget.
//
// A LayerPager knows a list of *units* (a layer's tensors, the embedding, ...) by index and size, and a loader that
// copies a unit's bytes into a buffer. pin(u) returns the unit's bytes, loading them on the calling thread when they
// are not resident (a *synchronous load*); prefetch(u) queues the load for the pager's loader thread so that a later
// pin finds the bytes ready (a *prefetch hit*). Resident units live in anonymous buffers the pager owns. The
// budget is split: the units named in Options::kept each have room for a buffer of their size, which they keep
// once loaded; the rest of the budget holds *slots*, buffers the size of the largest unit that is not kept, for
// the other units, so that a slot freed by one unit serves any other and paging never maps or unmaps memory once
// the slots exist. When a load needs a slot and none is free or can be added, the least recently used unpinned
// unit that is not kept is evicted (one pinned since its load before one a prefetch loaded for a pin still to come)
// and its slot is reused. Every buffer counts against the budget by its size (the OS rounds each up to whole
// pages), so `stats().held_bytes <= budget()`.
//
//   LayerPager pager({4096, 4096, 4096}, /*budget=*/8192, [](std::size_t u, std::span<std::byte> out) { ... });
//   { LayerPager::Pin pin = pager.pin(0); pager.prefetch(1); use(pin.bytes()); }  // unpinned at the end of scope
//
// Why keep some units: a model is read in the same cyclic order every token, and under a cyclic order LRU evicts
// exactly the unit needed soonest, so with any budget below the whole model LRU alone reloads every unit every
// token. Keeping a fixed set resident and streaming the rest through the remaining room (at least two of the
// largest streamed units: one in use while the next one loads) loads only the streamed units.
// Why slots: fresh anonymous pages cost a page fault each, which on a virtual machine can cost ten times the copy;
// buffers of one size are reused for ever.
//
// Mapped units (Options::mapper): instead of copying into the pager's buffers, a load calls the mapper, which makes
// the unit's bytes resident where they lie (a read-only mapping of the model file, populated) and returns them;
// eviction gives them back through the mapper (munmap). Each mapped unit counts its unit_bytes() against the
// budget, so `stats().held_bytes <= budget()` bounds the mapped bytes too. There are no slots: a prefetch() only
// queues the unit, and the loader thread makes room (evicting and unmapping, so that the pinning thread does not
// pay for the unmapping) and maps it. An eviction's bytes stay counted until the unmapping returns, so that what
// the process holds never exceeds the budget even while one unit is being unmapped and another mapped.
//
// Why a loader thread and not TBB tasks: a load is a blocking pread(), which TBB advises keeping off its workers,
// and a sleeping TBB worker took longer to wake than a layer takes to compute. The loader thread of a copying pager
// spins (yielding) for a short while after each load, so that the next prefetch of a decoding loop starts at once, then
// sleeps; a mapping pager's sleeps at once (mappings are fast, and spinning on a shared core delays the next one).
//
// Counting (each pin is exactly one of sync load, hit, wait):
//   sync_loads     pin found the unit absent, or queued by a prefetch the loader had not started yet (see
//                  prefetches_late), and loaded it itself;
//   hits           pin found the unit resident;
//   waits          pin found the unit being copied (by the loader or another thread) and waited for it
//                  (spinning up to 200 us, then blocking);
//   prefetch_hits  hits and waits that are the first pin of a unit a prefetch loaded.
// A prefetch of a unit that is resident or loading does nothing (and counts nothing); one that finds no room
// (every other unit pinned, loading or kept) is dropped and counted in prefetches_dropped. LRU order is by the
// last pin() or started prefetch().
//
// Thread-safety: all members may be called from any thread. A pinned unit is never evicted or reloaded, so the
// bytes of a Pin stay valid and unchanged until it is released; bytes loaded by another thread are visible to the
// pinning thread (the load completes before the unit is marked resident, under the pager's mutex). A pin that needs
// room while every resident unit is pinned or kept and no load is in flight throws Error(ResourceExhausted): the
// slots must hold the units pinned at once, plus one. The loader runs without the pager's lock, on the pinning
// thread or on the loader thread (or the executor's); it must be thread-safe for distinct units. The destructor
// finishes the queued prefetches; a custom executor must therefore run every task it is given. Pins must be
// released before the pager is destroyed.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string_view>
#include <vector>

namespace mmsb::llm {

struct PagerStats {
  std::uint64_t pins = 0;
  std::uint64_t sync_loads = 0;
  std::uint64_t hits = 0;
  std::uint64_t waits = 0;
  std::uint64_t prefetch_hits = 0;
  std::uint64_t prefetches = 0;          // prefetch() calls that started a load
  std::uint64_t prefetches_dropped = 0;  // prefetch() calls that found no room
  std::uint64_t prefetches_unused = 0;   // prefetched units evicted before any pin
  std::uint64_t prefetches_late = 0;     // prefetches whose task had not started when a pin needed the unit: the
                                         // pin loaded it itself (counted in sync_loads too)
  std::uint64_t prefetch_failures = 0;   // prefetch loads whose loader threw (a later pin loads synchronously)
  std::uint64_t evictions = 0;
  std::uint64_t kept_units = 0;  // Options::kept: units that are never evicted
  std::uint64_t kept_bytes = 0;
  std::uint64_t bytes_loaded = 0;
  std::uint64_t load_ns = 0;         // wall-clock time inside the loader or mapper, all loads (prefetches and sync)
  std::uint64_t sync_load_ns = 0;    // the part of load_ns spent by synchronous loads, on the pinning thread
  std::uint64_t resident_bytes = 0;  // bytes of the units resident or loading now
  std::uint64_t unmap_ns = 0;        // mapped units: wall-clock time spent giving evicted units back
  std::uint64_t held_bytes = 0;      // buffers held now: resident, loading and pooled (<= budget); mapped units:
                                     // mapped, being mapped or being unmapped (<= budget)
  std::uint64_t peak_held_bytes = 0;
};

class LayerPager {
 public:
  // Copies unit `unit`'s bytes into `destination` (exactly the unit's size). May throw; the load then fails.
  using Loader = std::function<void(std::size_t unit, std::span<std::byte> destination)>;
  // Runs a task asynchronously (must run each task exactly once). Empty: the pager's own loader thread.
  using Executor = std::function<void(std::function<void()>)>;

  // Mapped units (see the top of the file). `map` makes unit `unit`'s bytes resident and returns them (at most
  // unit_bytes(unit) of them; the pager counts unit_bytes(unit)); it may throw, and then the load fails, having
  // undone what it did. `unmap` gives back what `map` returned; it must not throw. Both are called without the
  // pager's lock, from the pinning thread or the loader thread, for distinct units at once.
  struct Mapper {
    std::function<std::span<const std::byte>(std::size_t unit)> map;
    std::function<void(std::size_t unit, std::span<const std::byte> bytes)> unmap;
  };

  struct Options {
    bool prefetch = true;  // false: prefetch() does nothing (the baseline of the sync-load ratio)
    Mapper mapper;         // set (map and unmap): units are mapped, not copied; the Loader is not used
    Executor executor;
    // Units that stay resident once loaded (distinct indexes). The budget must hold them all plus two of the
    // largest other units (see minimum_budget); choose them with choose_kept().
    std::vector<std::size_t> kept;
  };

  // The bytes of a pinned unit; releases the pin when destroyed or reset. Movable, not copyable.
  class Pin {
   public:
    Pin() = default;
    Pin(Pin&& other) noexcept;
    Pin& operator=(Pin&& other) noexcept;
    ~Pin() { reset(); }
    Pin(const Pin&) = delete;
    Pin& operator=(const Pin&) = delete;
    void reset() noexcept;
    explicit operator bool() const noexcept { return pager_ != nullptr; }
    std::span<const std::byte> bytes() const noexcept { return bytes_; }
    std::size_t unit() const noexcept { return unit_; }

   private:
    friend class LayerPager;
    Pin(LayerPager* pager, std::size_t unit, std::span<const std::byte> bytes) noexcept
        : pager_(pager), unit_(unit), bytes_(bytes) {}
    LayerPager* pager_ = nullptr;
    std::size_t unit_ = 0;
    std::span<const std::byte> bytes_;
  };

  // Throws Error(InvalidArgument) for no units, a unit of 0 bytes, an unknown or repeated kept unit, a budget
  // below minimum_budget(unit_bytes, options.kept), or neither a loader nor a whole mapper (the loader may be empty
  // when the mapper is set).
  LayerPager(std::vector<std::uint64_t> unit_bytes, std::uint64_t budget, Loader loader, Options options);
  LayerPager(std::vector<std::uint64_t> unit_bytes, std::uint64_t budget, Loader loader)
      : LayerPager(std::move(unit_bytes), budget, std::move(loader), Options{}) {}
  ~LayerPager();
  LayerPager(const LayerPager&) = delete;
  LayerPager& operator=(const LayerPager&) = delete;

  // Two of the largest units: one pinned while the next one loads; with kept units, their sizes plus two of the
  // largest of the others (just their sizes when every unit is kept).
  static std::uint64_t minimum_budget(std::span<const std::uint64_t> unit_bytes,
                                      std::span<const std::size_t> kept = {}) noexcept;
  // The units to keep resident under `budget` when every unit is read once per cycle: every unit when the budget
  // holds them all; else the set with the most bytes (chosen largest unit first, lower index first among equals)
  // that leaves room for `room_units` (at least two) of the largest units not kept, so that a cycle loads the
  // fewest bytes. Empty when nothing can be kept (in particular for a budget below minimum_budget(unit_bytes)).
  // More room than two lets prefetches run further ahead of the pins, for more bytes loaded per cycle.
  static std::vector<std::size_t> choose_kept(std::span<const std::uint64_t> unit_bytes, std::uint64_t budget,
                                              std::size_t room_units = 2);

  // Blocks until the unit is resident (loading or mapping it here if needed) and pins it. Rethrows the loader's or
  // mapper's error.
  // Throws Error(InvalidArgument) for an unknown unit, Error(ResourceExhausted) when no room can be made.
  Pin pin(std::size_t unit);
  // Starts loading the unit asynchronously if it is absent and room can be made without waiting.
  void prefetch(std::size_t unit);
  // Waits until no prefetch is in flight.
  void wait_prefetches();

  PagerStats stats() const;
  bool resident(std::size_t unit) const;  // resident now (not loading)
  bool kept(std::size_t unit) const noexcept;
  bool maps_units() const noexcept;  // Options::mapper was given
  std::uint64_t budget() const noexcept;
  // The size of a slot: the largest unit that is not kept (0 when every unit is kept). Mapped units have no slots,
  // but the same room: the budget left by the kept units holds this many bytes per streamed unit.
  std::uint64_t slot_bytes() const noexcept;
  std::size_t unit_count() const noexcept;
  std::uint64_t unit_bytes(std::size_t unit) const noexcept;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
  void unpin(std::size_t unit) noexcept;
};

// Parses a memory budget: a byte count with an optional binary suffix (K, M, G, T; "KiB"/"KB" and a trailing "B"
// accepted, case-insensitive), or a percentage of `model_bytes` ("50%", "12.5%"; rounded down to whole bytes).
// Throws Error(InvalidArgument) naming the text for anything else, zero, or a value past 2^64.
std::uint64_t parse_mem_budget(std::string_view text, std::uint64_t model_bytes);

}  // namespace mmsb::llm
