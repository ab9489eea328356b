// The layer pager on its own: a fake loader (each unit's bytes are a pattern of its index) and scripted access
// sequences whose loads, hits, waits and evictions are worked out by hand in the comments; a manual executor
// decides when a prefetch task runs. Then thread-safety under real TBB tasks (run it under the tsan preset), and
// the --mem-budget parser.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <deque>
#include <functional>
#include <mutex>
#include <stdexcept>
#include <thread>
#include <vector>

#include "mmsb/error.hpp"
#include "mmsb/llm/layer_pager.hpp"

namespace mmsb::llm {
namespace {

std::byte pattern(std::size_t unit, std::size_t i) { return static_cast<std::byte>((unit * 31 + i * 7 + 1) & 0xff); }

bool holds_pattern(std::span<const std::byte> bytes, std::size_t unit) {
  for (std::size_t i = 0; i < bytes.size(); ++i) {
    if (bytes[i] != pattern(unit, i)) return false;
  }
  return true;
}

// Pins `u` and checks that its bytes are the unit's, whole; unpins at return.
void touch(LayerPager& pager, std::size_t u) {
  LayerPager::Pin pin = pager.pin(u);
  EXPECT_EQ(pin.bytes().size(), pager.unit_bytes(u));
  EXPECT_TRUE(holds_pattern(pin.bytes(), u)) << "unit " << u;
}

// Fills a unit with its pattern and records the order of loads; can be told to fail for one unit.
struct FakeLoader {
  std::mutex mutex;
  std::vector<std::size_t> calls;
  std::atomic<long> fail_unit{-1};
  LayerPager::Loader loader() {
    return [this](std::size_t unit, std::span<std::byte> out) {
      {
        std::lock_guard lock(mutex);
        calls.push_back(unit);
      }
      if (fail_unit.load() == static_cast<long>(unit)) throw std::runtime_error("disk on fire");
      for (std::size_t i = 0; i < out.size(); ++i) out[i] = pattern(unit, i);
    };
  }
  std::vector<std::size_t> loads() {
    std::lock_guard lock(mutex);
    return calls;
  }
};

// Holds prefetch tasks until the test runs them.
struct ManualExecutor {
  std::deque<std::function<void()>> queue;
  LayerPager::Executor executor() {
    return [this](std::function<void()> task) { queue.push_back(std::move(task)); };
  }
  void run_all() {
    while (!queue.empty()) {
      auto task = std::move(queue.front());
      queue.pop_front();
      task();
    }
  }
};

LayerPager::Options manual(ManualExecutor& ex, bool prefetch = true) {
  LayerPager::Options o;
  o.prefetch = prefetch;
  o.executor = ex.executor();
  return o;
}

TEST(LayerPager, RefusesABudgetBelowTwoOfTheLargestUnits) {
  FakeLoader fake;
  try {
    LayerPager pager({100, 150, 120}, 299, fake.loader());
    FAIL() << "a budget of 299 bytes for units of up to 150 bytes was accepted";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::InvalidArgument);
    EXPECT_NE(std::string(e.what()).find("minimum of 300 bytes"), std::string::npos) << e.what();
  }
  EXPECT_NO_THROW(LayerPager({100, 150, 120}, 300, fake.loader()));
  EXPECT_THROW(LayerPager({}, 1000, fake.loader()), Error);
  EXPECT_THROW(LayerPager({100, 0}, 1000, fake.loader()), Error);
  EXPECT_THROW(LayerPager({100}, 1000, nullptr), Error);
  const std::vector<std::uint64_t> sizes{10, 40, 30};
  EXPECT_EQ(LayerPager::minimum_budget(sizes), 80u);
}

TEST(LayerPager, CountsLoadsHitsAndLruEvictionsOfAScriptedSequenceWithoutPrefetch) {
  FakeLoader fake;
  ManualExecutor ex;
  LayerPager pager({100, 100, 100}, 200, fake.loader(), manual(ex, /*prefetch=*/false));
  // Two units fit. Pins, each released at once:
  //   0: load            resident {0}
  //   1: load            resident {0, 1}
  //   0: hit             LRU order 1, 0
  //   2: evict 1, load   resident {0, 2}, LRU order 0, 2
  //   1: evict 0, load   resident {2, 1}
  //   1: hit
  //   0: evict 2, load   resident {1, 0}
  for (std::size_t u : {0, 1, 0, 2, 1, 1, 0}) {
    LayerPager::Pin pin = pager.pin(u);
    ASSERT_EQ(pin.bytes().size(), 100u);
    EXPECT_TRUE(holds_pattern(pin.bytes(), u)) << "unit " << u;
    pager.prefetch((u + 1) % 3);  // prefetching is off: nothing happens
  }
  EXPECT_TRUE(ex.queue.empty());
  const PagerStats s = pager.stats();
  EXPECT_EQ(s.pins, 7u);
  EXPECT_EQ(s.sync_loads, 5u);
  EXPECT_EQ(s.hits, 2u);
  EXPECT_EQ(s.waits, 0u);
  EXPECT_EQ(s.evictions, 3u);
  EXPECT_EQ(s.prefetches, 0u);
  EXPECT_EQ(s.prefetch_hits, 0u);
  EXPECT_EQ(s.bytes_loaded, 500u);
  EXPECT_EQ(s.resident_bytes, 200u);
  EXPECT_EQ(s.held_bytes, 200u);
  EXPECT_EQ(s.peak_held_bytes, 200u);
  EXPECT_EQ(fake.loads(), (std::vector<std::size_t>{0, 1, 2, 1, 0}));
  EXPECT_TRUE(pager.resident(0));
  EXPECT_TRUE(pager.resident(1));
  EXPECT_FALSE(pager.resident(2));
}

TEST(LayerPager, CountsPrefetchHitsLatePrefetchesAndDropsOfAScriptedSequence) {
  FakeLoader fake;
  ManualExecutor ex;
  LayerPager pager({100, 100, 100, 100}, 200, fake.loader(), manual(ex));
  {
    LayerPager::Pin p0 = pager.pin(0);  // load 0 (sync 1)
    pager.prefetch(1);                  // room for a second buffer: queued
    EXPECT_FALSE(pager.resident(1));
    EXPECT_EQ(ex.queue.size(), 1u);
    ex.run_all();  // loads 1
    EXPECT_TRUE(pager.resident(1));
  }
  {
    LayerPager::Pin p1 = pager.pin(1);  // hit, and the first pin since the prefetch: prefetch hit 1
    pager.prefetch(2);                  // 1 is pinned, 0 is not: evict 0 (eviction 1), queue 2
    pager.prefetch(2);                  // already queued: nothing
    pager.prefetch(1);                  // resident: nothing
    EXPECT_EQ(ex.queue.size(), 1u);
  }
  ex.run_all();  // loads 2
  {
    LayerPager::Pin p2 = pager.pin(2);  // hit, prefetch hit 2
    pager.prefetch(3);                  // evict 1 (eviction 2), queue 3; the task does not run yet
    LayerPager::Pin p3 = pager.pin(3);  // its task has not started: loaded here (sync 2, late prefetch 1)
    EXPECT_TRUE(holds_pattern(p3.bytes(), 3));
    ex.run_all();       // finds 3 resident: does nothing
    pager.prefetch(0);  // 2 and 3 are pinned and fill the budget: dropped
    EXPECT_TRUE(ex.queue.empty());
    try {
      (void)pager.pin(0);
      FAIL() << "pinned a third unit in a budget of two while both were pinned";
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), ErrorCode::ResourceExhausted) << e.what();
    }
  }
  {
    LayerPager::Pin p3 = pager.pin(3);  // hit; not a prefetch hit (the pin loaded it)
  }
  const PagerStats s = pager.stats();
  EXPECT_EQ(fake.loads(), (std::vector<std::size_t>{0, 1, 2, 3}));
  EXPECT_EQ(s.pins, 5u);  // the refused pin is not counted
  EXPECT_EQ(s.sync_loads, 2u);
  EXPECT_EQ(s.hits, 3u);
  EXPECT_EQ(s.waits, 0u);
  EXPECT_EQ(s.prefetches, 3u);
  EXPECT_EQ(s.prefetch_hits, 2u);
  EXPECT_EQ(s.prefetches_late, 1u);
  EXPECT_EQ(s.prefetches_dropped, 1u);
  EXPECT_EQ(s.prefetches_unused, 0u);
  EXPECT_EQ(s.evictions, 2u);
  EXPECT_EQ(s.bytes_loaded, 400u);
  EXPECT_EQ(s.held_bytes, 200u);
}

// The load times behind `mmsb-llm bench --mem-budget`'s bound: every load's time counts in load_ns, only the
// loads on a pinning thread in sync_load_ns. The loader sleeps a known time, so the counts have lower bounds.
TEST(LayerPager, TimesLoadsAndTheSynchronousShareOfThem) {
  using std::chrono::milliseconds, std::chrono::nanoseconds;
  ManualExecutor ex;
  auto slow = [](std::size_t unit, std::span<std::byte> out) {
    std::this_thread::sleep_for(milliseconds(unit == 0 ? 2 : 6));
    for (std::size_t i = 0; i < out.size(); ++i) out[i] = pattern(unit, i);
  };
  LayerPager pager({100, 100, 100}, 200, slow, manual(ex));
  (void)pager.pin(0);  // a synchronous load: 2 ms at least
  PagerStats s = pager.stats();
  EXPECT_GE(s.sync_load_ns, static_cast<std::uint64_t>(nanoseconds(milliseconds(2)).count()));
  EXPECT_EQ(s.load_ns, s.sync_load_ns);
  pager.prefetch(1);
  ex.run_all();  // a prefetch load: 6 ms at least, not synchronous
  const std::uint64_t sync_before = s.sync_load_ns;
  s = pager.stats();
  EXPECT_EQ(s.sync_load_ns, sync_before);
  EXPECT_GE(s.load_ns, s.sync_load_ns + static_cast<std::uint64_t>(nanoseconds(milliseconds(6)).count()));
}

TEST(LayerPager, CountsAPrefetchEvictedBeforeUseAsUnused) {
  FakeLoader fake;
  ManualExecutor ex;
  LayerPager pager({100, 100, 100}, 200, fake.loader(), manual(ex));
  LayerPager::Pin p0 = pager.pin(0);
  pager.prefetch(1);
  ex.run_all();
  pager.prefetch(2);  // 0 is pinned: evicts the prefetched, never pinned 1
  ex.run_all();
  const PagerStats s = pager.stats();
  EXPECT_EQ(s.prefetches, 2u);
  EXPECT_EQ(s.prefetches_unused, 1u);
  EXPECT_EQ(s.evictions, 1u);
  EXPECT_FALSE(pager.resident(1));
  EXPECT_TRUE(pager.resident(2));
}

TEST(LayerPager, GivesEveryUnitASlotOfTheLargestSizeAndReusesItForAnyOther) {
  FakeLoader fake;
  ManualExecutor ex;
  LayerPager pager({100, 60, 60, 100, 30}, 220, fake.loader(), manual(ex, false));
  // Slots of 100 bytes (the largest unit); 220 bytes hold two.
  touch(pager, 0);  // a new slot: held 100
  touch(pager, 1);  // a new slot for 60 bytes: held 200
  EXPECT_EQ(pager.stats().held_bytes, 200u);
  EXPECT_EQ(pager.stats().resident_bytes, 160u);
  touch(pager, 2);  // no third slot fits: evict 0 (LRU), reuse its slot
  touch(pager, 3);  // evict 1
  touch(pager, 4);  // evict 2
  const PagerStats s = pager.stats();
  EXPECT_EQ(s.held_bytes, 200u);
  EXPECT_EQ(s.peak_held_bytes, 200u);
  EXPECT_EQ(s.resident_bytes, 130u);  // 3 and 4
  EXPECT_EQ(s.sync_loads, 5u);
  EXPECT_EQ(s.evictions, 3u);
  EXPECT_TRUE(pager.resident(3));
  EXPECT_TRUE(pager.resident(4));
}

TEST(LayerPager, KeepsKeptUnitsInBuffersOfTheirSizeAndStreamsTheOthersThroughSlots) {
  FakeLoader fake;
  ManualExecutor ex;
  LayerPager::Options o = manual(ex, false);
  o.kept = {1, 4};  // 60 + 30 bytes; the others get slots of 100: at least 90 + 2·100 = 290 bytes
  const std::vector<std::uint64_t> sizes{100, 60, 60, 100, 30};
  EXPECT_EQ(LayerPager::minimum_budget(sizes, o.kept), 290u);
  LayerPager pager(sizes, 290, fake.loader(), o);
  EXPECT_TRUE(pager.kept(1));
  EXPECT_FALSE(pager.kept(0));
  EXPECT_EQ(pager.slot_bytes(), 100u);  // the largest unit that is not kept
  for (int round = 0; round < 3; ++round) {
    for (std::size_t u = 0; u < 5; ++u) touch(pager, u);
  }
  // Round 1 loads all five: slots for 0 and 2, 3 evicts 0 (the LRU unit that is not kept), 1 and 4 take their
  // own room. Rounds 2 and 3 load 0, 2 and 3 again, each evicting the slot unit used longest ago, and hit 1 and 4.
  const PagerStats s = pager.stats();
  EXPECT_EQ(s.sync_loads, 5u + 3u + 3u);
  EXPECT_EQ(s.hits, 4u);
  EXPECT_EQ(s.evictions, 1u + 3u + 3u);
  EXPECT_EQ(s.held_bytes, 290u);
  EXPECT_EQ(s.peak_held_bytes, 290u);
  EXPECT_EQ(s.kept_units, 2u);
  EXPECT_EQ(s.kept_bytes, 90u);
  EXPECT_TRUE(pager.resident(1));
  EXPECT_TRUE(pager.resident(4));
  EXPECT_FALSE(pager.resident(0));

  auto refused = [&](std::vector<std::size_t> kept, std::uint64_t budget, const char* says) {
    LayerPager::Options bad = manual(ex, false);
    bad.kept = std::move(kept);
    try {
      LayerPager p(sizes, budget, fake.loader(), bad);
      ADD_FAILURE() << "accepted: " << says;
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), ErrorCode::InvalidArgument);
      EXPECT_NE(std::string(e.what()).find(says), std::string::npos) << e.what();
    }
  };
  refused({1, 4}, 289, "290 bytes needed");
  refused({5}, 400, "does not exist");
  refused({1, 1}, 400, "named twice");
}

TEST(LayerPager, ChoosesTheKeptUnitsThatLeaveTheFewestBytesToLoad) {
  const std::vector<std::uint64_t> sizes{100, 60, 60, 100, 30};  // 350 in all
  using V = std::vector<std::size_t>;
  EXPECT_EQ(LayerPager::choose_kept(sizes, 350), (V{0, 1, 2, 3, 4}));  // everything fits
  EXPECT_EQ(LayerPager::choose_kept(sizes, 1000), (V{0, 1, 2, 3, 4}));
  // Two slots of 100 take 200; of the other 90 bytes, 60 (unit 1, the lower index) and 30 are kept.
  EXPECT_EQ(LayerPager::choose_kept(sizes, 290), (V{1, 4}));
  // 330: slots of 100 leave 130 for 1 and 2 (120 kept); keeping both 100-byte units leaves slots of 60 and
  // 320 bytes in use (200 kept). The second keeps more.
  EXPECT_EQ(LayerPager::choose_kept(sizes, 330), (V{0, 3}));
  EXPECT_EQ(LayerPager::choose_kept(sizes, 200), V{});  // just the two slots
  EXPECT_EQ(LayerPager::choose_kept(sizes, 100), V{});  // below the minimum
  for (std::uint64_t budget : {200u, 250u, 290u, 330u, 349u}) {
    const V kept = LayerPager::choose_kept(sizes, budget);
    EXPECT_LE(LayerPager::minimum_budget(sizes, kept), budget) << budget;
  }
  // Room for more streamed units. At 330 with room for three: three of 100 and unit 4 (30 kept; room for three of
  // 60 with 0 and 3 kept needs 380). Room for four: four of the largest do not fit, nor any smaller choice (four of
  // 60 with 200 kept: 440), so nothing is kept.
  EXPECT_EQ(LayerPager::choose_kept(sizes, 330, 3), (V{4}));
  EXPECT_EQ(LayerPager::choose_kept(sizes, 330, 4), V{});
  EXPECT_EQ(LayerPager::choose_kept(sizes, 290, 1), (V{1, 4}));  // at least two
}

TEST(LayerPager, ALoaderErrorReachesThePinAndTheUnitCanBeLoadedLater) {
  FakeLoader fake;
  ManualExecutor ex;
  LayerPager pager({100, 100, 100}, 200, fake.loader(), manual(ex));
  fake.fail_unit = 1;
  EXPECT_THROW((void)pager.pin(1), std::runtime_error);
  EXPECT_FALSE(pager.resident(1));
  PagerStats s = pager.stats();
  EXPECT_EQ(s.pins, 0u);
  EXPECT_EQ(s.sync_loads, 0u);
  EXPECT_EQ(s.resident_bytes, 0u);
  EXPECT_EQ(s.held_bytes, 100u);  // the buffer went to the pool
  // A failing prefetch: counted, and the next pin loads the unit itself.
  pager.prefetch(1);
  ex.run_all();
  EXPECT_EQ(pager.stats().prefetch_failures, 1u);
  EXPECT_FALSE(pager.resident(1));
  fake.fail_unit = -1;
  LayerPager::Pin pin = pager.pin(1);
  EXPECT_TRUE(holds_pattern(pin.bytes(), 1));
  s = pager.stats();
  EXPECT_EQ(s.sync_loads, 1u);
  EXPECT_EQ(s.prefetch_hits, 0u);
  EXPECT_EQ(s.held_bytes, 100u);
}

TEST(LayerPager, APinWaitsForAPrefetchBeingCopiedOnAnotherThread) {
  std::atomic<bool> open{false};  // the copy of unit 1 finishes once the test opens it
  std::atomic<bool> copying{false};
  LayerPager::Loader loader = [&](std::size_t unit, std::span<std::byte> out) {
    if (unit == 1) {
      copying = true;
      while (!open) std::this_thread::yield();
    }
    for (std::size_t i = 0; i < out.size(); ++i) out[i] = pattern(unit, i);
  };
  std::vector<std::thread> threads;
  LayerPager::Options o;
  o.executor = [&threads](std::function<void()> task) { threads.emplace_back(std::move(task)); };
  {
    LayerPager pager({100, 100}, 200, loader, o);
    pager.prefetch(1);
    while (!copying) std::this_thread::yield();  // the task is inside the loader
    std::thread release([&] {
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
      open = true;
    });
    {
      LayerPager::Pin pin = pager.pin(1);  // waits until the copy is done
      EXPECT_TRUE(holds_pattern(pin.bytes(), 1));
    }
    release.join();
    const PagerStats s = pager.stats();
    EXPECT_EQ(s.waits, 1u);
    EXPECT_EQ(s.prefetch_hits, 1u);
    EXPECT_EQ(s.sync_loads, 0u);
    EXPECT_EQ(s.hits, 0u);
  }
  for (auto& t : threads) t.join();
}

// Several threads pin, check and prefetch while TBB tasks load: a pinned unit must never change under its pin, the
// counters must add up, and the budget must hold at every instant. Meant for the tsan preset as much as release.
TEST(LayerPager, PinnedBytesNeverChangeWhilePrefetchTasksRaceWithPins) {
  constexpr std::size_t kUnits = 6, kBytes = 4096;
  FakeLoader fake;
  LayerPager pager(std::vector<std::uint64_t>(kUnits, kBytes), 3 * kBytes, fake.loader());
  std::atomic<bool> done{false};
  std::atomic<int> bad{0};
  auto worker = [&](std::size_t stride, std::size_t offset) {
    for (std::size_t i = 0; i < 800; ++i) {
      const std::size_t u = (i * stride + offset) % kUnits;
      LayerPager::Pin pin = pager.pin(u);
      pager.prefetch((u + stride) % kUnits);
      if (!holds_pattern(pin.bytes(), u)) ++bad;
      std::this_thread::yield();
      if (!holds_pattern(pin.bytes(), u)) ++bad;  // still the same bytes after a prefetch may have run
    }
  };
  std::thread observer([&] {
    while (!done) {
      const PagerStats s = pager.stats();
      if (s.held_bytes > 3 * kBytes || s.sync_loads + s.hits + s.waits != s.pins) ++bad;
    }
  });
  std::thread a(worker, 1, 0), b(worker, 5, 3);
  a.join();
  b.join();
  done = true;
  observer.join();
  pager.wait_prefetches();
  const PagerStats s = pager.stats();
  EXPECT_EQ(bad.load(), 0);
  EXPECT_EQ(s.pins, 1600u);
  EXPECT_EQ(s.sync_loads + s.hits + s.waits, s.pins);
  EXPECT_LE(s.peak_held_bytes, 3 * kBytes);
  EXPECT_EQ(s.bytes_loaded, fake.loads().size() * kBytes - s.prefetch_failures * kBytes);
}

// Mapped units: each unit's bytes (its pattern) live in storage of its own; map() hands them out and unmap() takes
// them back, counting the bytes "mapped" now and at most; calls are recorded as +unit and -unit.
struct FakeMapper {
  std::vector<std::vector<std::byte>> storage;
  std::mutex mutex;
  std::vector<long> calls;
  std::atomic<std::uint64_t> mapped{0}, peak{0};
  std::atomic<long> fail_unit{-1};
  explicit FakeMapper(const std::vector<std::uint64_t>& sizes) {
    for (std::size_t u = 0; u < sizes.size(); ++u) {
      storage.emplace_back(sizes[u]);
      for (std::size_t i = 0; i < sizes[u]; ++i) storage[u][i] = pattern(u, i);
    }
  }
  LayerPager::Options options() {
    LayerPager::Options o;
    o.mapper.map = [this](std::size_t unit) {
      if (fail_unit.load() == static_cast<long>(unit)) throw std::runtime_error("disk on fire");
      record(static_cast<long>(unit));
      const std::uint64_t now = mapped += storage[unit].size();
      for (std::uint64_t p = peak.load(); now > p && !peak.compare_exchange_weak(p, now);) {
      }
      return std::span<const std::byte>(storage[unit]);
    };
    o.mapper.unmap = [this](std::size_t unit, std::span<const std::byte> bytes) {
      if (bytes.data() != storage[unit].data() || bytes.size() != storage[unit].size()) ++wrong_unmaps;
      record(-static_cast<long>(unit) - 100);
      mapped -= storage[unit].size();
    };
    return o;
  }
  void record(long call) {
    std::lock_guard lock(mutex);
    calls.push_back(call);
  }
  std::atomic<int> wrong_unmaps{0};
};

TEST(LayerPager, MapsUnitsThroughTheMapperAndUnmapsTheLeastRecentlyUsedBeforeMappingAnother) {
  const std::vector<std::uint64_t> sizes{100, 100, 100, 100};
  ManualExecutor ex;
  auto fake = std::make_unique<FakeMapper>(sizes);
  LayerPager::Options o = fake->options();
  o.executor = ex.executor();
  {
    LayerPager pager(sizes, 200, LayerPager::Loader{}, o);
    EXPECT_TRUE(pager.maps_units());
    touch(pager, 0);  // maps 0
    touch(pager, 1);  // maps 1: the budget is full
    touch(pager, 2);  // unmaps 0 (least recently used) before it maps 2
    EXPECT_EQ(fake->calls, (std::vector<long>{0, 1, -100, 2}));
    EXPECT_EQ(fake->mapped.load(), 200u);
    // A prefetch only queues: the unit is mapped, and room made, when the task runs.
    pager.prefetch(3);
    EXPECT_EQ(fake->calls.size(), 4u);
    EXPECT_FALSE(pager.resident(3));
    ex.run_all();  // unmaps 1, maps 3
    EXPECT_EQ(fake->calls, (std::vector<long>{0, 1, -100, 2, -101, 3}));
    touch(pager, 3);
    PagerStats s = pager.stats();
    EXPECT_EQ(s.sync_loads, 3u);
    EXPECT_EQ(s.prefetches, 1u);
    EXPECT_EQ(s.prefetch_hits, 1u);
    EXPECT_EQ(s.evictions, 2u);
    EXPECT_EQ(s.bytes_loaded, 400u);
    EXPECT_EQ(s.held_bytes, 200u);
    EXPECT_EQ(s.peak_held_bytes, 200u);
    // Both units pinned: a queued prefetch finds no room when it runs and is dropped; nothing is unmapped.
    {
      LayerPager::Pin a = pager.pin(2), b = pager.pin(3);
      pager.prefetch(0);
      ex.run_all();
      s = pager.stats();
      EXPECT_EQ(s.prefetches_dropped, 1u);
      EXPECT_EQ(s.prefetches, 1u);
      EXPECT_FALSE(pager.resident(0));
      try {
        pager.pin(1);
        ADD_FAILURE() << "a unit was mapped past the budget";
      } catch (const Error& e) {
        EXPECT_EQ(e.code(), ErrorCode::ResourceExhausted);
      }
    }
    // A mapper error reaches the pin and gives the room back; the unit maps later.
    fake->fail_unit = 1;
    EXPECT_THROW(pager.pin(1), std::runtime_error);
    EXPECT_EQ(pager.stats().held_bytes, 100u);  // 2 was unmapped to make room; 3 stays
    fake->fail_unit = -1;
    touch(pager, 1);
    EXPECT_EQ(fake->mapped.load(), 200u);
  }
  EXPECT_EQ(fake->mapped.load(), 0u);  // the destructor unmaps what is left
  EXPECT_EQ(fake->peak.load(), 200u);
  EXPECT_EQ(fake->wrong_unmaps.load(), 0);
}

TEST(LayerPager, MappedBytesNeverExceedTheBudgetWhilePrefetchesRaceWithPins) {
  const std::vector<std::uint64_t> sizes{4096, 1000, 3000, 4096, 2000, 500, 4096, 3500};
  const std::uint64_t budget = 3 * 4096;
  FakeMapper fake(sizes);
  std::atomic<int> bad{0};
  {
    LayerPager pager(sizes, budget, LayerPager::Loader{}, fake.options());
    auto worker = [&](std::size_t stride, std::size_t offset) {
      for (std::size_t i = 0; i < 800; ++i) {
        const std::size_t u = (i * stride + offset) % sizes.size();
        LayerPager::Pin pin = pager.pin(u);
        pager.prefetch((u + stride) % sizes.size());
        if (!holds_pattern(pin.bytes(), u) || fake.mapped.load() > budget) ++bad;
        std::this_thread::yield();
      }
    };
    std::thread a(worker, 1, 0), b(worker, 3, 5);
    a.join();
    b.join();
    pager.wait_prefetches();
    const PagerStats s = pager.stats();
    EXPECT_EQ(s.pins, 1600u);
    EXPECT_EQ(s.sync_loads + s.hits + s.waits, s.pins);
    EXPECT_LE(s.peak_held_bytes, budget);
    EXPECT_EQ(s.held_bytes, fake.mapped.load());
    EXPECT_GT(s.evictions, 0u);
  }
  EXPECT_EQ(bad.load(), 0);
  EXPECT_LE(fake.peak.load(), budget);
  EXPECT_EQ(fake.mapped.load(), 0u);
  EXPECT_EQ(fake.wrong_unmaps.load(), 0);
}

TEST(MemBudget, ParsesBytesBinarySuffixesAndPercentagesOfTheModel) {
  EXPECT_EQ(parse_mem_budget("300000", 0), 300000u);
  EXPECT_EQ(parse_mem_budget("64K", 0), 65536u);
  EXPECT_EQ(parse_mem_budget("64k", 0), 65536u);
  EXPECT_EQ(parse_mem_budget("64KiB", 0), 65536u);
  EXPECT_EQ(parse_mem_budget("64KB", 0), 65536u);
  EXPECT_EQ(parse_mem_budget("1M", 0), 1048576u);
  EXPECT_EQ(parse_mem_budget("2G", 0), 2147483648u);
  EXPECT_EQ(parse_mem_budget("1T", 0), 1099511627776u);
  EXPECT_EQ(parse_mem_budget("512B", 0), 512u);
  EXPECT_EQ(parse_mem_budget("50%", 1171200), 585600u);
  EXPECT_EQ(parse_mem_budget("50%", 1171201), 585600u);  // rounded down
  EXPECT_EQ(parse_mem_budget("100%", 1171201), 1171201u);
  EXPECT_EQ(parse_mem_budget("12.5%", 1000), 125u);
  EXPECT_EQ(parse_mem_budget("33%", 18446744073709551615ull), 6087425544324152032ull);  // no overflow
  for (const char* bad : {"", "abc", "-1", "0", "0%", "-5%", "%", "10X", "10KX", "1.5M", "5 %", "17179869184G",
                          "99999999999999999999", "nan%", "1e999%"}) {
    try {
      (void)parse_mem_budget(bad, 1000);
      ADD_FAILURE() << "accepted '" << bad << "'";
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), ErrorCode::InvalidArgument);
      EXPECT_NE(std::string(e.what()).find("percentage of the model"), std::string::npos) << e.what();
    }
  }
  EXPECT_THROW((void)parse_mem_budget("1%", 10), Error);  // 0 bytes of a 10-byte model
}

}  // namespace
}  // namespace mmsb::llm
