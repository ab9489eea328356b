// The page store's record arena and the bytes a small page keeps inside its record (runtime/page_store.hpp), and
// the same through the public API: small pages that grow, shrink and are deleted, creation that fails and is
// retried, and concurrent creation.
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <memory>
#include <thread>
#include <vector>

#include "mmsb/mmsb.hpp"
#include "runtime/page_store.hpp"
#include "runtime/runtime_impl.hpp"
#include "support/test_support.hpp"

namespace mmsb::detail {
namespace {

bool all_zero(const std::byte* p, std::size_t n) {
  return std::all_of(p, p + n, [](std::byte b) { return b == std::byte{0}; });
}

TEST(PageStore, RecordsOfManyPagesAreDistinctAndFoundAtTheirSequence) {
  PageStore store;
  constexpr std::uint64_t kPages = 20000;  // several slabs, up to the largest
  std::vector<PageRecord*> records;
  for (std::uint64_t seq = 1; seq <= kPages; ++seq) {
    PageRecord* r = store.make_record(PageId::make(0, seq), Location::Host);
    ASSERT_TRUE(store.insert(seq, r));
    records.push_back(r);
  }
  for (std::uint64_t seq = 1; seq <= kPages; ++seq) {
    ASSERT_EQ(store.find(seq), records[seq - 1]);
    EXPECT_EQ(records[seq - 1]->id, PageId::make(0, seq));
  }
  std::vector<PageRecord*> sorted = records;
  std::sort(sorted.begin(), sorted.end());
  for (std::size_t i = 1; i < sorted.size(); ++i) {
    ASSERT_GE(reinterpret_cast<std::uintptr_t>(sorted[i]) - reinterpret_cast<std::uintptr_t>(sorted[i - 1]),
              sizeof(PageRecord));  // no two records overlap
  }
  EXPECT_EQ(store.find(kPages + 1), nullptr);
}

TEST(PageStore, ADiscardedRecordServesTheNextOne) {
  PageStore store;
  PageRecord* first = store.make_record(PageId::make(0, 1), Location::Host);
  first->take_bytes(100, Zeroing::Zeroed);  // discard gives its block back too
  store.discard(first);
  PageRecord* second = store.make_record(PageId::make(0, 2), Location::Device);
  EXPECT_EQ(second, first);
  EXPECT_EQ(second->id, PageId::make(0, 2));
  EXPECT_EQ(second->location, Location::Device);
  EXPECT_EQ(second->data, nullptr);
  EXPECT_EQ(second->capacity(), 0u);
  ASSERT_TRUE(store.insert(2, second));
  PageRecord* duplicate = store.make_record(PageId::make(0, 2), Location::Host);
  EXPECT_FALSE(store.insert(2, duplicate));  // the sequence is taken: the caller keeps the record
  EXPECT_EQ(store.find(2), second);
  store.discard(duplicate);
}

TEST(PageStore, SmallPagesKeepTheirBytesInTheRecord) {
  PageStore store;
  PageRecord* small = store.make_record(PageId::make(0, 1), Location::Host);
  small->take_bytes(PageRecord::kInlineBytes, Zeroing::Zeroed);
  EXPECT_TRUE(small->holds_inline());
  EXPECT_FALSE(small->owns_block());
  EXPECT_EQ(small->capacity(), PageRecord::kInlineBytes);
  EXPECT_EQ(reinterpret_cast<std::uintptr_t>(small->data) % alignof(std::uint64_t), 0u);
  EXPECT_TRUE(all_zero(small->data, PageRecord::kInlineBytes));
  const std::uint64_t value = 0x0123456789abcdefull;
  std::memcpy(small->data, &value, sizeof value);

  // Growing moves the bytes to a block (as a commit does: copy, then adopt).
  Block grown = PageAllocator::global().allocate(200, Zeroing::Zeroed);
  std::memcpy(grown.data, small->data, sizeof value);
  small->adopt_block(grown);
  EXPECT_FALSE(small->holds_inline());
  EXPECT_TRUE(small->owns_block());
  EXPECT_EQ(small->capacity(), grown.capacity);
  std::uint64_t read = 0;
  std::memcpy(&read, small->data, sizeof read);
  EXPECT_EQ(read, value);
  ASSERT_TRUE(store.insert(1, small));

  PageRecord* large = store.make_record(PageId::make(0, 2), Location::Host);
  large->take_bytes(PageRecord::kInlineBytes + 1, Zeroing::Zeroed);
  EXPECT_FALSE(large->holds_inline());
  EXPECT_EQ(reinterpret_cast<std::uintptr_t>(large->data) % PageAllocator::kAlignment, 0u);
  EXPECT_EQ(large->capacity(), PageAllocator::capacity_for(PageRecord::kInlineBytes + 1));
  large->free_bytes();
  EXPECT_EQ(large->data, nullptr);
  EXPECT_EQ(large->capacity(), 0u);
  ASSERT_TRUE(store.insert(2, large));
}

TEST(PageStore, AnEmptyDirectoryTakesNoHeapEvenAfterAnotherStoreWasFreed) {
  // Freeing a large block raises malloc's mmap threshold, after which calloc would serve a new directory from the
  // heap and clear all of it: the 256 KiB of a store's directory would be resident however few pages it holds.
  {
    PageStore first;
    for (std::uint64_t seq = 1; seq <= 100; ++seq)
      ASSERT_TRUE(first.insert(seq, first.make_record(PageId::make(0, seq), Location::Host)));
  }
  const std::size_t before = testing::heap_bytes_in_use();
  PageStore store;
  for (std::uint64_t seq = 1; seq <= 100; ++seq)
    ASSERT_TRUE(store.insert(seq, store.make_record(PageId::make(0, seq), Location::Host)));
  // 100 records in slabs of 16, 32 and 64 records of 80 bytes, with malloc's headers: about 10 KB.
  EXPECT_LT(testing::heap_bytes_in_use(), before + (std::size_t{32} << 10));
}

TEST(PageStore, ExternalOwnersAreKeptUntilTakenOrTheStoreGoes) {
  auto kept = std::make_shared<int>(1), taken = std::make_shared<int>(2);
  std::weak_ptr<int> watch_kept = kept, watch_taken = taken;
  {
    PageStore store;
    store.set_external_owner(5, std::move(kept));
    store.set_external_owner(6, std::move(taken));
    EXPECT_EQ(store.take_external_owner(7), nullptr);
    std::shared_ptr<const void> owner = store.take_external_owner(6);
    EXPECT_EQ(owner.get(), watch_taken.lock().get());
    EXPECT_EQ(store.take_external_owner(6), nullptr);
    owner.reset();
    EXPECT_TRUE(watch_taken.expired());
    EXPECT_FALSE(watch_kept.expired());
  }
  EXPECT_TRUE(watch_kept.expired());
}

}  // namespace
}  // namespace mmsb::detail

namespace mmsb {
namespace {

// Optimistic readers copy only from memory that stays mapped (runtime/transaction.cpp, read_unlocked): a record
// says, for good, once its bytes were ever external or a block the allocator maps alone.
TEST(PageStore, ARecordFlagsMemoryThatMayBeUnmappedForGood) {
  detail::PageStore store;
  detail::PageRecord* small = store.make_record(PageId::make(0, 1), Location::Host);
  small->take_bytes(4, detail::Zeroing::Zeroed);  // inline
  EXPECT_FALSE(small->bytes_may_unmap.load());
  small->adopt_block(
      detail::PageAllocator::global().allocate(detail::PageAllocator::kMaxClassSize, detail::Zeroing::Zeroed));
  EXPECT_FALSE(small->bytes_may_unmap.load());  // the largest class: its slab stays mapped
  small->adopt_block(
      detail::PageAllocator::global().allocate(detail::PageAllocator::kMaxClassSize + 1, detail::Zeroing::Zeroed));
  EXPECT_TRUE(small->bytes_may_unmap.load());
  small->adopt_block(detail::PageAllocator::global().allocate(64, detail::Zeroing::Zeroed));
  EXPECT_TRUE(small->bytes_may_unmap.load());  // once flagged, always: an old reader may still hold the pointer
  small->free_bytes();
  detail::PageRecord* large = store.make_record(PageId::make(0, 2), Location::Host);
  large->take_bytes(2 * detail::PageAllocator::kMaxClassSize, detail::Zeroing::Zeroed);
  EXPECT_TRUE(large->bytes_may_unmap.load());
  large->free_bytes();
  store.discard(small);
  store.discard(large);

  static const std::uint64_t constant = 7;
  Runtime rt;
  PageId ext = rt.create_external_page(std::as_bytes(std::span<const std::uint64_t, 1>(&constant, 1)));
  detail::PageRecord* record = detail::RuntimeAccess::of(rt).find(ext);
  ASSERT_NE(record, nullptr);
  EXPECT_TRUE(record->bytes_may_unmap.load());
  EXPECT_TRUE(rt.make_private(ext));
  EXPECT_TRUE(record->bytes_may_unmap.load());
}

TEST(SmallPages, GrowShrinkAndGrowAgainKeepTheirBytes) {
  Runtime rt;
  const PageId page = rt.create_page(8);
  testing::commit_u64(rt, page, 0, 42);
  EXPECT_EQ(rt.read_value<std::uint64_t>(page, 0), 42u);
  rt.resize_page(page, 200);  // out of the record into a block
  EXPECT_EQ(rt.read_value<std::uint64_t>(page, 0), 42u);
  EXPECT_EQ(rt.read_value<std::uint64_t>(page, 192), 0u);
  testing::commit_u64(rt, page, 192, 7);
  rt.resize_page(page, 4);
  rt.resize_page(page, 8);  // the bytes past a shrink read as zero again
  EXPECT_EQ(rt.read_value<std::uint32_t>(page, 0), 42u);
  EXPECT_EQ(rt.read_value<std::uint32_t>(page, 4), 0u);
  rt.delete_page(page);
  EXPECT_FALSE(rt.contains(page));
}

TEST(SmallPages, ShrinkingInsideTheRecordZeroesOnRegrowth) {
  Runtime rt;
  const PageId page = rt.create_page(8);
  testing::commit_u64(rt, page, 0, ~std::uint64_t{0});
  rt.resize_page(page, 2);
  rt.resize_page(page, 8);
  EXPECT_EQ(rt.read_value<std::uint64_t>(page, 0), 0xffffull);
  EXPECT_EQ(rt.info(page).size, 8u);
}

TEST(SmallPages, ViewsOfSmallPagesAreAlignedForWhatFitsThem) {
  Runtime rt;
  std::vector<PageId> pages;
  for (std::uint64_t size = 1; size <= 80; ++size) pages.push_back(rt.create_page(size));
  ReadView view = rt.read_view(pages);
  for (PageId page : pages) {
    const std::span<const std::byte> bytes = view.bytes(page);
    const auto address = reinterpret_cast<std::uintptr_t>(bytes.data());
    const std::size_t wanted = bytes.size() <= 8 ? 8 : 64;
    EXPECT_EQ(address % wanted, 0u) << bytes.size() << " bytes";
    EXPECT_TRUE(std::all_of(bytes.begin(), bytes.end(), [](std::byte b) { return b == std::byte{0}; }));
  }
}

TEST(SmallPages, AFailedCreationLeavesTheNextOnesWhole) {
  Runtime rt;
  const PageId named = rt.create_page("taken", 8);
  for (int i = 0; i < 100; ++i) EXPECT_THROW(rt.create_page("taken", 8), Error);
  std::vector<PageId> pages;
  for (int i = 0; i < 100; ++i) {
    pages.push_back(rt.create_page(8));
    testing::commit_u64(rt, pages.back(), 0, static_cast<std::uint64_t>(i));
  }
  for (int i = 0; i < 100; ++i) EXPECT_EQ(rt.read_value<std::uint64_t>(pages[i], 0), static_cast<std::uint64_t>(i));
  EXPECT_EQ(rt.find("taken"), named);
  EXPECT_EQ(rt.page_count(), 101u);
}

TEST(SmallPages, DeletingAnExternalPageReleasesItsOwner) {
  Runtime rt;
  auto memory = std::make_shared<std::vector<std::byte>>(8, std::byte{3});
  std::weak_ptr<std::vector<std::byte>> watch = memory;
  const std::span<const std::byte> bytes(*memory);
  const PageId page = rt.create_external_page(bytes, std::move(memory), Location::Host);
  EXPECT_EQ(rt.read_value<std::uint8_t>(page, 7), 3u);
  EXPECT_FALSE(watch.expired());
  rt.delete_page(page);
  EXPECT_TRUE(watch.expired());
}

TEST(SmallPages, ConcurrentCreationGivesEveryPageItsOwnBytes) {
  Runtime rt;
  constexpr std::uint64_t kThreads = 4, kPerThread = 3000;
  std::vector<PageId> made(kThreads * kPerThread);  // page k holds the value k
  {
    std::vector<std::jthread> creators;
    for (std::uint64_t t = 0; t < kThreads; ++t) {
      creators.emplace_back([&rt, &made, t] {
        for (std::uint64_t k = t * kPerThread; k < (t + 1) * kPerThread; ++k) {
          made[k] = rt.create_page(8);
          testing::commit_u64(rt, made[k], 0, k);
        }
      });
    }
  }
  for (std::uint64_t k = 0; k < made.size(); ++k) ASSERT_EQ(rt.read_value<std::uint64_t>(made[k], 0), k);
  EXPECT_EQ(rt.page_count(), kThreads * kPerThread);
}

}  // namespace
}  // namespace mmsb
