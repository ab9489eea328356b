#include "runtime/page_store.hpp"

#include <sys/mman.h>

#include <cstring>
#include <new>
#include <utility>

#include "runtime/page_allocator.hpp"

namespace mmsb::detail {

// Every page of a large graph pays for one record: keep it from growing unnoticed.
static_assert(sizeof(void*) != 8 || sizeof(PageRecord) <= 80, "PageRecord grew past 80 bytes");

void PageRecord::take_bytes(std::uint64_t bytes, Zeroing zeroing) {
  if (bytes == 0) return;
  if (bytes <= kInlineBytes) {
    data = room_.bytes;  // zero in a fresh record, which is the only kind given bytes here
    return;
  }
  const Block block = PageAllocator::global().allocate(bytes, zeroing);
  set_block(block);
}

void PageRecord::take_copy(const std::byte* bytes, std::uint64_t count) {
  take_bytes(count, Zeroing::Uninitialized);
  if (count > 0) std::memcpy(data, bytes, count);
}

void PageRecord::adopt_block(Block block) noexcept {
  free_bytes();
  set_block(block);
}

void PageRecord::set_block(Block block) noexcept {
  if (block.capacity > PageAllocator::kMaxClassSize) bytes_may_unmap.store(true, std::memory_order_relaxed);
  __atomic_store_n(&data, block.data, __ATOMIC_RELEASE);  // after the flag: see bytes_unlocked()
  room_.block_capacity = block.capacity;
}

void PageRecord::free_bytes() noexcept {
  if (owns_block()) PageAllocator::global().deallocate(data, room_.block_capacity);
  data = nullptr;
  room_.block_capacity = 0;
}

namespace {
// Zeroed memory for `count` objects of T straight from the OS, or std::bad_alloc. Not calloc: once a process has
// freed a large block, malloc's dynamic mmap threshold rises and calloc serves the next directory from the heap,
// clearing it byte by byte, so every untouched part of it would be resident.
template <class T>
T* zeroed_pages(std::size_t count) {
  void* memory = ::mmap(nullptr, count * sizeof(T), PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (memory == MAP_FAILED) throw std::bad_alloc();
  return static_cast<T*>(memory);
}

template <class T>
void unmap_pages(T* memory, std::size_t count) noexcept {
  ::munmap(memory, count * sizeof(T));
}

constexpr std::size_t kChunkCount = std::size_t{1} << PageStore::kChunkBits;
}  // namespace

PageStore::PageStore() : chunks_(zeroed_pages<Chunk*>(kChunkCount)) {}

PageStore::~PageStore() {
  // The store is destroyed by its last user: plain reads see every insert.
  for (std::size_t c = 0; c < kChunkCount; ++c) {
    Chunk* chunk = chunks_[c];
    if (!chunk) continue;
    for (PageRecord* record : chunk->slots) {
      if (!record) continue;
      record->free_bytes();
      record->~PageRecord();  // its memory goes with the slabs
    }
    unmap_pages(chunk, 1);
  }
  unmap_pages(chunks_, kChunkCount);
}

bool PageStore::insert(std::uint64_t sequence, PageRecord* record) {
  std::atomic_ref<Chunk*> chunk_slot(chunks_[sequence >> kSlotBits]);
  Chunk* chunk = chunk_slot.load(std::memory_order_acquire);
  if (!chunk) {
    Chunk* fresh = zeroed_pages<Chunk>(1);
    if (chunk_slot.compare_exchange_strong(chunk, fresh, std::memory_order_acq_rel)) {
      chunk = fresh;
    } else {
      unmap_pages(fresh, 1);  // another thread installed the chunk first; `chunk` now holds it
    }
  }
  PageRecord* expected = nullptr;
  return std::atomic_ref<PageRecord*>(chunk->slots[sequence & kSlotMask])
      .compare_exchange_strong(expected, record, std::memory_order_acq_rel);
}

PageRecord* PageStore::make_record(PageId id, Location where) {
  RecordSpace* space = nullptr;
  {
    std::lock_guard lock(arena_mutex_);
    if (!spare_.empty()) {
      space = spare_.back();
      spare_.pop_back();
    } else {
      if (slab_used_ == slab_size_) {
        const std::size_t size = slab_size_ == 0 ? kFirstSlabRecords : std::min(2 * slab_size_, kMaxSlabRecords);
        slabs_.push_back(std::make_unique_for_overwrite<RecordSpace[]>(size));
        slab_size_ = size;
        slab_used_ = 0;
      }
      space = &slabs_.back()[slab_used_++];
    }
  }
  return new (space->bytes) PageRecord(id, where);
}

void PageStore::discard(PageRecord* record) noexcept {
  record->free_bytes();
  record->~PageRecord();
  std::lock_guard lock(arena_mutex_);
  try {
    spare_.push_back(reinterpret_cast<RecordSpace*>(record));
  } catch (const std::bad_alloc&) {
    // The memory stays in its slab, unused until the store goes: harmless.
  }
}

void PageStore::set_external_owner(std::uint64_t sequence, std::shared_ptr<const void> owner) {
  std::lock_guard lock(owners_mutex_);
  external_owners_[sequence] = std::move(owner);
}

std::shared_ptr<const void> PageStore::take_external_owner(std::uint64_t sequence) noexcept {
  std::lock_guard lock(owners_mutex_);
  auto it = external_owners_.find(sequence);
  if (it == external_owners_.end()) return nullptr;
  std::shared_ptr<const void> owner = std::move(it->second);
  external_owners_.erase(it);
  return owner;
}

}  // namespace mmsb::detail
