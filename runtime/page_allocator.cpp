#include "runtime/page_allocator.hpp"

#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <boost/lockfree/stack.hpp>
#include <cstring>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include <hwloc.h>

#include "mmsb/error.hpp"
#include "runtime/logging.hpp"

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#define MMSB_POISON(p, n) ASAN_POISON_MEMORY_REGION((p), (n))
#define MMSB_UNPOISON(p, n) ASAN_UNPOISON_MEMORY_REGION((p), (n))
#else
#define MMSB_POISON(p, n) ((void)(p), (void)(n))
#define MMSB_UNPOISON(p, n) ((void)(p), (void)(n))
#endif

namespace mmsb::detail {
namespace {

constexpr std::size_t kOsPage = 4096;
constexpr std::size_t kHugePage = std::size_t{2} << 20;
constexpr std::uint64_t kDefaultCacheBudget = std::uint64_t{256} << 20;

// Size classes; see the header for the progression. Built once at start-up.
struct SizeClasses {
  std::vector<std::size_t> sizes;
  std::array<std::uint8_t, 1024> small_index{};  // class of sizes up to 64 KiB, indexed by (bytes - 1) / 64

  SizeClasses() {
    for (std::size_t s = 64; s <= 1024; s += 64) sizes.push_back(s);
    for (std::size_t base = 1024; base < 4096; base *= 2)
      for (std::size_t step = 1; step <= 4; ++step) sizes.push_back(base + base * step / 4);
    for (std::size_t s = 8192; s <= 16384; s += 4096) sizes.push_back(s);
    for (std::size_t base = 16384; base < PageAllocator::kMaxClassSize; base *= 2)
      for (std::size_t step = 1; step <= 4; ++step) sizes.push_back(base + base * step / 4);
    for (std::size_t i = 0; i < small_index.size(); ++i)
      small_index[i] = static_cast<std::uint8_t>(lookup((i + 1) * 64));
  }
  std::size_t lookup(std::size_t bytes) const {
    return static_cast<std::size_t>(std::lower_bound(sizes.begin(), sizes.end(), bytes) - sizes.begin());
  }
  std::size_t class_of(std::size_t bytes) const {
    return bytes <= 65536 ? small_index[(bytes - 1) / 64] : lookup(bytes);
  }
};

const SizeClasses& size_classes() {
  // Never destroyed: thread caches flush through it when their threads exit, which can be after static
  // destructors ran (e.g. TBB worker threads at process exit).
  static const SizeClasses* classes = new SizeClasses;
  return *classes;
}

constexpr std::size_t kMaxClasses = 64;
constexpr std::size_t kMaxCachePerClass = 64;

// Blocks a thread keeps per class: about 256 KiB worth, between 4 and 64.
std::size_t thread_cache_limit(std::size_t block_size) {
  return std::clamp<std::size_t>((std::size_t{256} << 10) / block_size, 4, kMaxCachePerClass);
}

std::size_t round_up(std::size_t n, std::size_t to) { return (n + to - 1) / to * to; }

std::byte* map_anonymous(std::size_t bytes) {
  void* p = ::mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (p == MAP_FAILED) {
    throw Error(ErrorCode::ResourceExhausted,
                "the OS refused to map " + std::to_string(bytes) + " bytes for page memory (" + std::strerror(errno) +
                    "); lower the number or size of pages, or raise the process memory limit");
  }
  if (bytes >= kHugePage) ::madvise(p, bytes, MADV_HUGEPAGE);  // a hint; failure is harmless
  return static_cast<std::byte*>(p);
}

using FreeList = boost::lockfree::stack<std::byte*>;

struct ClassArena {
  FreeList dirty{64};  // recycled blocks: contents undefined
  FreeList clean{0};   // blocks handed back to the OS: read as zero
  std::mutex slab_mutex;
  std::byte* slab_cursor = nullptr;  // guarded by slab_mutex
  std::byte* slab_end = nullptr;     // guarded by slab_mutex
};

struct Arena {
  unsigned numa_node = 0;
  std::array<ClassArena, kMaxClasses> classes;
};

}  // namespace

struct PageAllocator::Impl {
  hwloc_topology_t topology = nullptr;
  std::vector<std::unique_ptr<Arena>> arenas;
  std::vector<hwloc_bitmap_t> node_sets;
  bool bind_memory = false;
  std::atomic<std::uint64_t> bytes_mapped{0};
  std::atomic<std::uint64_t> bytes_in_use{0};
  std::atomic<std::uint64_t> bytes_cached_shared{0};
  std::atomic<std::uint64_t> bytes_cached_clean{0};
  std::atomic<std::uint64_t> large_allocations{0};
  std::atomic<std::uint64_t> cache_budget{kDefaultCacheBudget};

  Impl() {
    if (hwloc_topology_init(&topology) == 0 && hwloc_topology_load(topology) == 0) {
      int nodes = hwloc_get_nbobjs_by_type(topology, HWLOC_OBJ_NUMANODE);
      for (int i = 0; i < nodes; ++i) {
        hwloc_obj_t node = hwloc_get_obj_by_type(topology, HWLOC_OBJ_NUMANODE, static_cast<unsigned>(i));
        node_sets.push_back(hwloc_bitmap_dup(node->nodeset));
        logger()->debug("numa node {}: os index {}, {} MiB local memory, cpus {}", i, node->os_index,
                        node->attr ? node->attr->numanode.local_memory >> 20 : 0, bitmap_string(node->cpuset));
      }
      logger()->debug("allocator topology: {} NUMA node(s), {} core(s), {} PU(s)", nodes,
                      hwloc_get_nbobjs_by_type(topology, HWLOC_OBJ_CORE),
                      hwloc_get_nbobjs_by_type(topology, HWLOC_OBJ_PU));
    } else {
      logger()->warn("hwloc could not read the machine topology; using one memory arena");
    }
    std::size_t arena_count = std::max<std::size_t>(1, node_sets.size());
    bind_memory = node_sets.size() > 1;
    for (std::size_t i = 0; i < arena_count; ++i) {
      arenas.push_back(std::make_unique<Arena>());
      arenas.back()->numa_node = static_cast<unsigned>(i);
    }
  }

  static std::string bitmap_string(hwloc_const_bitmap_t set) {
    char* text = nullptr;
    hwloc_bitmap_list_asprintf(&text, set);
    std::string result = text ? text : "?";
    std::free(text);
    return result;
  }

  // The arena of the NUMA node the calling thread runs on now.
  Arena& arena_for_this_thread() {
    if (arenas.size() == 1) return *arenas[0];
    hwloc_bitmap_t cpus = hwloc_bitmap_alloc();
    std::size_t chosen = 0;
    if (hwloc_get_last_cpu_location(topology, cpus, HWLOC_CPUBIND_THREAD) == 0) {
      for (std::size_t i = 0; i < arenas.size(); ++i) {
        hwloc_obj_t node = hwloc_get_obj_by_type(topology, HWLOC_OBJ_NUMANODE, static_cast<unsigned>(i));
        if (node && hwloc_bitmap_intersects(node->cpuset, cpus)) {
          chosen = i;
          break;
        }
      }
    }
    hwloc_bitmap_free(cpus);
    return *arenas[chosen];
  }

  std::byte* map_slab(const Arena& arena, std::size_t bytes) {
    std::byte* slab = map_anonymous(bytes);
    if (bind_memory) {
      hwloc_set_area_membind(topology, slab, bytes, node_sets[arena.numa_node], HWLOC_MEMBIND_BIND,
                             HWLOC_MEMBIND_BYNODESET);
    }
    bytes_mapped.fetch_add(bytes, std::memory_order_relaxed);
    return slab;
  }

  // Carves up to `want` fresh (clean) blocks of class `cls` into `out`; returns how many.
  std::size_t carve(Arena& arena, std::size_t cls, std::byte** out, std::size_t want) {
    const std::size_t block = size_classes().sizes[cls];
    ClassArena& ca = arena.classes[cls];
    std::lock_guard lock(ca.slab_mutex);
    if (ca.slab_cursor == ca.slab_end) {
      std::size_t slab_bytes = round_up(std::max<std::size_t>(std::size_t{256} << 10, block * 8), kOsPage);
      slab_bytes = slab_bytes / block * block;  // no unusable tail
      ca.slab_cursor = map_slab(arena, slab_bytes);
      ca.slab_end = ca.slab_cursor + slab_bytes;
    }
    std::size_t n = 0;
    while (n < want && ca.slab_cursor != ca.slab_end) {
      out[n++] = ca.slab_cursor;
      ca.slab_cursor += block;
    }
    return n;
  }

  void trim_releasable() noexcept {
    const auto& sizes = size_classes().sizes;
    for (auto& arena : arenas) {
      for (std::size_t cls = 0; cls < sizes.size(); ++cls) {
        if (sizes[cls] % kOsPage != 0) continue;
        ClassArena& ca = arena->classes[cls];
        std::byte* p = nullptr;
        while (ca.dirty.pop(p)) {
          MMSB_UNPOISON(p, sizes[cls]);
          ::madvise(p, sizes[cls], MADV_DONTNEED);  // the block reads as zero from now on
          MMSB_POISON(p, sizes[cls]);
          bytes_cached_shared.fetch_sub(sizes[cls], std::memory_order_relaxed);
          bytes_cached_clean.fetch_add(sizes[cls], std::memory_order_relaxed);
          ca.clean.push(p);
        }
      }
    }
  }
};

// Per-thread block cache: two stacks per class (clean = known zero, dirty = recycled), no synchronization.
struct ThreadCache {
  struct Stack {
    std::array<std::byte*, kMaxCachePerClass> blocks;
    std::size_t count = 0;
  };
  struct PerClass {
    Stack clean, dirty;
  };
  PageAllocator::Impl* impl;
  Arena* arena;
  std::array<PerClass, kMaxClasses> classes{};

  explicit ThreadCache(PageAllocator::Impl* owner) : impl(owner), arena(&owner->arena_for_this_thread()) {}
  ~ThreadCache() { flush_all(); }

  void flush_all() noexcept {
    const auto& sizes = size_classes().sizes;
    for (std::size_t cls = 0; cls < sizes.size(); ++cls) {
      flush(cls, classes[cls].dirty, classes[cls].dirty.count, /*clean=*/false);
      flush(cls, classes[cls].clean, classes[cls].clean.count, /*clean=*/true);
    }
  }

  // Moves the top `n` blocks of `stack` to the shared lists.
  void flush(std::size_t cls, Stack& stack, std::size_t n, bool clean) noexcept {
    const std::size_t block = size_classes().sizes[cls];
    ClassArena& ca = arena->classes[cls];
    for (std::size_t i = 0; i < n; ++i) {
      std::byte* p = stack.blocks[--stack.count];
      // Pushing can allocate a list node; if even that fails, keep the block rather than lose it.
      bool pushed = false;
      try {
        pushed = clean ? ca.clean.push(p) : ca.dirty.push(p);
      } catch (...) {
      }
      if (!pushed) {
        ++stack.count;
        return;
      }
      if (clean) {
        impl->bytes_cached_clean.fetch_add(block, std::memory_order_relaxed);
      } else {
        impl->bytes_cached_shared.fetch_add(block, std::memory_order_relaxed);
      }
    }
    if (!clean && impl->bytes_cached_shared.load(std::memory_order_relaxed) >
                      impl->cache_budget.load(std::memory_order_relaxed)) {
      impl->trim_releasable();
    }
  }

  // Refills the cache of class `cls` from the shared lists, or carves fresh blocks.
  void refill(std::size_t cls, bool want_clean) {
    const std::size_t block = size_classes().sizes[cls];
    const std::size_t batch = std::max<std::size_t>(1, thread_cache_limit(block) / 2);
    ClassArena& ca = arena->classes[cls];
    PerClass& pc = classes[cls];
    std::byte* p = nullptr;
    // Zeroed requests prefer clean blocks; the others prefer dirty ones and leave clean blocks for zeroed use.
    FreeList& first = want_clean ? ca.clean : ca.dirty;
    FreeList& second = want_clean ? ca.dirty : ca.clean;
    for (FreeList* list : {&first, &second}) {
      const bool clean = list == &ca.clean;
      Stack& into = clean ? pc.clean : pc.dirty;
      while (into.count < batch && list->pop(p)) {
        into.blocks[into.count++] = p;
        (clean ? impl->bytes_cached_clean : impl->bytes_cached_shared).fetch_sub(block, std::memory_order_relaxed);
      }
      if (pc.clean.count + pc.dirty.count > 0) return;
    }
    pc.clean.count = impl->carve(*arena, cls, pc.clean.blocks.data(), batch);
  }
};

namespace {
ThreadCache& this_thread_cache(PageAllocator::Impl* impl) {
  thread_local ThreadCache cache(impl);
  return cache;
}
}  // namespace

PageAllocator::PageAllocator() : impl_(new Impl) {}

PageAllocator& PageAllocator::global() {
  static PageAllocator* instance = new PageAllocator;  // never destroyed: thread caches flush into it at exit
  return *instance;
}

std::size_t PageAllocator::capacity_for(std::size_t bytes) noexcept {
  if (bytes == 0) bytes = 1;
  if (bytes > kMaxClassSize) return round_up(bytes, kOsPage);
  return size_classes().sizes[size_classes().class_of(bytes)];
}

Block PageAllocator::allocate(std::size_t bytes, Zeroing zeroing) {
  if (bytes == 0) bytes = 1;
  if (bytes > kMaxClassSize) {
    std::size_t capacity = round_up(bytes, kOsPage);
    std::byte* p = map_anonymous(capacity);  // fresh mappings are zero
    impl_->bytes_mapped.fetch_add(capacity, std::memory_order_relaxed);
    impl_->bytes_in_use.fetch_add(capacity, std::memory_order_relaxed);
    impl_->large_allocations.fetch_add(1, std::memory_order_relaxed);
    return {p, capacity};
  }
  const std::size_t cls = size_classes().class_of(bytes);
  const std::size_t block = size_classes().sizes[cls];
  ThreadCache& cache = this_thread_cache(impl_);
  ThreadCache::PerClass& pc = cache.classes[cls];
  const bool want_zero = zeroing == Zeroing::Zeroed;
  if (pc.clean.count + pc.dirty.count == 0) cache.refill(cls, want_zero);
  std::byte* p = nullptr;
  bool is_clean = false;
  if (want_zero ? pc.clean.count > 0 : pc.dirty.count == 0) {
    p = pc.clean.blocks[--pc.clean.count];
    is_clean = true;
  } else {
    p = pc.dirty.blocks[--pc.dirty.count];
  }
  MMSB_UNPOISON(p, block);
  if (want_zero && !is_clean) std::memset(p, 0, block);
  impl_->bytes_in_use.fetch_add(block, std::memory_order_relaxed);
  return {p, block};
}

void PageAllocator::deallocate(std::byte* data, std::size_t capacity) noexcept {
  if (data == nullptr) return;
  impl_->bytes_in_use.fetch_sub(capacity, std::memory_order_relaxed);
  if (capacity > kMaxClassSize) {
    ::munmap(data, capacity);
    impl_->bytes_mapped.fetch_sub(capacity, std::memory_order_relaxed);
    impl_->large_allocations.fetch_sub(1, std::memory_order_relaxed);
    return;
  }
  const std::size_t cls = size_classes().class_of(capacity);
  MMSB_POISON(data, capacity);
  ThreadCache& cache = this_thread_cache(impl_);
  ThreadCache::Stack& dirty = cache.classes[cls].dirty;
  const std::size_t limit = thread_cache_limit(capacity);
  if (dirty.count >= limit) cache.flush(cls, dirty, limit / 2, /*clean=*/false);
  dirty.blocks[dirty.count++] = data;
}

void PageAllocator::set_cache_budget(std::uint64_t bytes) noexcept {
  impl_->cache_budget.store(bytes, std::memory_order_relaxed);
  if (impl_->bytes_cached_shared.load(std::memory_order_relaxed) > bytes) impl_->trim_releasable();
}

std::uint64_t PageAllocator::cache_budget() const noexcept {
  return impl_->cache_budget.load(std::memory_order_relaxed);
}

void PageAllocator::trim() noexcept {
  flush_thread_cache();
  impl_->trim_releasable();
}

void PageAllocator::flush_thread_cache() noexcept { this_thread_cache(impl_).flush_all(); }

AllocatorStats PageAllocator::stats() const noexcept {
  AllocatorStats s;
  s.bytes_mapped = impl_->bytes_mapped.load(std::memory_order_relaxed);
  s.bytes_in_use = impl_->bytes_in_use.load(std::memory_order_relaxed);
  s.bytes_cached_shared = impl_->bytes_cached_shared.load(std::memory_order_relaxed);
  s.bytes_cached_clean = impl_->bytes_cached_clean.load(std::memory_order_relaxed);
  s.numa_nodes = impl_->arenas.size();
  s.large_allocations = impl_->large_allocations.load(std::memory_order_relaxed);
  return s;
}

}  // namespace mmsb::detail
