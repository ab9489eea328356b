// External pages: read-only views of memory the runtime does not own (Runtime::create_external_page).
#include <gtest/gtest.h>
#include <sys/mman.h>

#include <array>
#include <cstdint>
#include <memory>
#include <vector>

#include "mmsb/mmsb.hpp"
#include "support/test_support.hpp"

namespace mmsb {
namespace {

using mmsb::testing::error_code_of;

std::vector<std::byte> bytes_of(std::initializer_list<int> values) {
  std::vector<std::byte> out;
  for (int v : values) out.push_back(static_cast<std::byte>(v));
  return out;
}

TEST(ExternalPage, ReadsTheCallersBytesWithoutCopying) {
  auto memory = std::make_shared<std::vector<std::byte>>(bytes_of({1, 2, 3, 4, 5}));
  Runtime rt;
  PageId id = rt.create_external_page(*memory, memory);
  EXPECT_TRUE(rt.is_external(id));
  EXPECT_EQ(rt.info(id).size, 5u);
  EXPECT_EQ(rt.info(id).epoch, 0u);
  EXPECT_EQ(rt.read_value<std::uint8_t>(id, 4), 5u);
  PageId ids[] = {id};
  auto view = rt.read_view(ids);
  EXPECT_EQ(view.bytes(id).data(), memory->data());  // the same memory, not a copy
}

TEST(ExternalPage, WriteResizeAndDeltaFailWithInvalidArgument) {
  std::array<std::byte, 8> memory{};
  Runtime rt;
  PageId id = rt.create_external_page(memory);
  EXPECT_EQ(error_code_of([&] { rt.begin().write_value<std::uint8_t>(id, 0, 1); }), ErrorCode::InvalidArgument);
  EXPECT_EQ(error_code_of([&] { rt.resize_page(id, 16); }), ErrorCode::InvalidArgument);
  Delta d;
  d.page = id;
  d.base_size = d.size = 8;
  d.ranges.push_back({0, 1});
  d.payload.push_back(std::byte{9});
  EXPECT_EQ(error_code_of([&] { rt.begin().apply(d); }), ErrorCode::InvalidArgument);
  EXPECT_EQ(memory[0], std::byte{0});
  EXPECT_EQ(rt.info(id).epoch, 0u);
}

TEST(ExternalPage, ReadOnlyMappingIsNeverTouched) {
  // PROT_READ memory: any write through the runtime would crash this test.
  void* map = ::mmap(nullptr, 4096, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  ASSERT_NE(map, MAP_FAILED);
  std::shared_ptr<const void> owner(map, [](const void* p) { ::munmap(const_cast<void*>(p), 4096); });
  Runtime rt;
  PageId id = rt.create_external_page({static_cast<const std::byte*>(map), 4096}, owner);
  owner.reset();  // the runtime keeps the mapping alive
  EXPECT_EQ(rt.read_value<std::uint64_t>(id, 4088), 0u);
  EXPECT_EQ(error_code_of([&] { rt.begin().write_value<std::uint8_t>(id, 0, 1); }), ErrorCode::InvalidArgument);
  rt.delete_page(id);  // releases the owner: unmaps
  EXPECT_FALSE(rt.contains(id));
}

TEST(ExternalPage, OwnerIsReleasedWhenTheRuntimeIsDestroyed) {
  auto memory = std::make_shared<std::vector<std::byte>>(16);
  std::weak_ptr<std::vector<std::byte>> watch = memory;
  {
    Runtime rt;
    rt.create_external_page(*memory, memory);
    memory.reset();
    EXPECT_FALSE(watch.expired());
  }
  EXPECT_TRUE(watch.expired());
}

TEST(ExternalPage, MakePrivateCopiesOnceThenAcceptsDeltasAndLeavesTheMappingUntouched) {
  void* map = ::mmap(nullptr, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  ASSERT_NE(map, MAP_FAILED);
  static_cast<std::uint8_t*>(map)[7] = 42;
  ASSERT_EQ(::mprotect(map, 4096, PROT_READ), 0);  // any write through the runtime now crashes the test
  std::shared_ptr<const void> owner(map, [](const void* p) { ::munmap(const_cast<void*>(p), 4096); });
  std::weak_ptr<const void> watch = owner;
  Runtime rt;
  PageId id = rt.create_external_page({static_cast<const std::byte*>(map), 4096}, owner);
  owner.reset();
  EXPECT_TRUE(rt.make_private(id));
  EXPECT_TRUE(watch.expired());  // the mapping's owner is released: the page no longer points into it
  EXPECT_FALSE(rt.is_external(id));
  EXPECT_FALSE(rt.make_private(id));  // already private: nothing to copy
  EXPECT_EQ(rt.info(id).epoch, 0u);
  EXPECT_EQ(rt.info(id).size, 4096u);
  EXPECT_EQ(rt.read_value<std::uint8_t>(id, 7), 42u);
  auto before = rt.read_all(id);
  auto after = before;
  after[7] = std::byte{1};
  after[4000] = std::byte{2};
  Delta d = diff(before, after);
  d.page = id;
  auto txn = rt.begin();
  txn.apply(d);
  txn.commit();
  EXPECT_EQ(rt.read_all(id), after);
  EXPECT_EQ(rt.info(id).epoch, 1u);
  Delta undo = invert(d);
  auto txn2 = rt.begin();
  txn2.apply(undo);
  txn2.commit();
  EXPECT_EQ(rt.read_all(id), before);
}

TEST(ExternalPage, MakePrivateOfAMissingPageIsNotFound) {
  Runtime rt;
  PageId id = rt.create_page(8);
  EXPECT_FALSE(rt.make_private(id));  // an ordinary page is already private
  rt.delete_page(id);
  EXPECT_EQ(error_code_of([&] { rt.make_private(id); }), ErrorCode::NotFound);
}

}  // namespace
}  // namespace mmsb
