#include "runtime/page_store.hpp"

#include "runtime/page_allocator.hpp"

namespace mmsb::detail {

PageStore::~PageStore() {
  for (auto& chunk_slot : chunks_) {
    Chunk* chunk = chunk_slot.load(std::memory_order_acquire);
    if (!chunk) continue;
    for (auto& slot : chunk->slots) {
      PageRecord* record = slot.load(std::memory_order_acquire);
      if (!record) continue;
      if (record->data && !record->external) PageAllocator::global().deallocate(record->data, record->capacity);
      delete record;
    }
    delete chunk;
  }
}

bool PageStore::insert(std::uint64_t sequence, PageRecord* record) {
  auto& chunk_slot = chunks_[sequence >> kSlotBits];
  Chunk* chunk = chunk_slot.load(std::memory_order_acquire);
  if (!chunk) {
    auto* fresh = new Chunk;
    if (chunk_slot.compare_exchange_strong(chunk, fresh, std::memory_order_acq_rel)) {
      chunk = fresh;
    } else {
      delete fresh;  // another thread installed the chunk first; `chunk` now holds it
    }
  }
  PageRecord* expected = nullptr;
  return chunk->slots[sequence & kSlotMask].compare_exchange_strong(expected, record, std::memory_order_acq_rel);
}

}  // namespace mmsb::detail
