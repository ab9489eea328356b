#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <set>
#include <thread>
#include <vector>

#include "mmsb/mmsb.hpp"
#include "support/test_support.hpp"

namespace mmsb {
namespace {

using mmsb::testing::error_code_of;

TEST(Runtime, NewPageIsZeroFilledAtEpochZero) {
  Runtime rt;
  PageId id = rt.create_page(1000);
  PageInfo info = rt.info(id);
  EXPECT_EQ(info.size, 1000u);
  EXPECT_EQ(info.epoch, 0u);
  EXPECT_EQ(info.location, Location::Host);
  auto bytes = rt.read_all(id);
  ASSERT_EQ(bytes.size(), 1000u);
  EXPECT_TRUE(std::all_of(bytes.begin(), bytes.end(), [](std::byte b) { return b == std::byte{0}; }));
  EXPECT_TRUE(rt.contains(id));
  EXPECT_EQ(rt.page_count(), 1u);
}

TEST(Runtime, ZeroSizedPageIsAllowed) {
  Runtime rt;
  PageId id = rt.create_page(0);
  EXPECT_EQ(rt.info(id).size, 0u);
  EXPECT_TRUE(rt.read_all(id).empty());
}

TEST(Runtime, IdsAreDeterministicAcrossRuntimes) {
  Runtime a, b;
  for (int i = 0; i < 100; ++i) EXPECT_EQ(a.create_page(8), b.create_page(8));
  EXPECT_EQ(a.create_page(8), PageId::make(0, 101));
}

TEST(Runtime, RankIsStoredInTheHighBits) {
  Runtime rt(RuntimeOptions{.rank = 3});
  PageId id = rt.create_page(8);
  EXPECT_EQ(id.rank(), 3u);
  EXPECT_EQ(id.sequence(), 1u);
  EXPECT_EQ(error_code_of([] { Runtime bad(RuntimeOptions{.rank = 1u << 16}); }), ErrorCode::InvalidArgument);
}

TEST(Runtime, ReservedIdBlocksCreateWithoutCollisions) {
  Runtime rt;
  IdBlock block = rt.reserve_ids(3);
  PageId after_block = rt.create_page(8);
  EXPECT_EQ(after_block.sequence(), 4u);
  PageId first = rt.create_page(block.next(), 16);
  EXPECT_EQ(first.sequence(), 1u);
  rt.create_page(block.next(), 16);
  rt.create_page(block.next(), 16);
  EXPECT_EQ(error_code_of([&] { block.next(); }), ErrorCode::ResourceExhausted);
  EXPECT_EQ(error_code_of([&] { rt.create_page(first, 8); }), ErrorCode::InvalidArgument);  // used twice
  EXPECT_EQ(error_code_of([&] { rt.create_page(PageId::make(0, 999), 8); }), ErrorCode::InvalidArgument);
  EXPECT_EQ(rt.page_count(), 4u);
}

TEST(Runtime, ParallelCreationFromIdBlocksGivesUniqueIds) {
  Runtime rt;
  constexpr int kThreads = 4, kPerThread = 2000;
  std::vector<std::vector<PageId>> ids(kThreads);
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      IdBlock block = rt.reserve_ids(kPerThread);
      for (int i = 0; i < kPerThread; ++i) ids[static_cast<std::size_t>(t)].push_back(rt.create_page(block.next(), 32));
    });
  }
  for (auto& th : threads) th.join();
  std::set<PageId> all;
  for (auto& v : ids) all.insert(v.begin(), v.end());
  EXPECT_EQ(all.size(), std::size_t{kThreads * kPerThread});
  EXPECT_EQ(rt.page_count(), std::size_t{kThreads * kPerThread});
}

TEST(Runtime, DeletedPageIsGoneAndItsIdNeverReused) {
  Runtime rt;
  PageId id = rt.create_page(64);
  rt.delete_page(id);
  EXPECT_FALSE(rt.contains(id));
  EXPECT_EQ(rt.page_count(), 0u);
  EXPECT_EQ(error_code_of([&] { rt.info(id); }), ErrorCode::NotFound);
  EXPECT_EQ(error_code_of([&] { rt.read_all(id); }), ErrorCode::NotFound);
  EXPECT_EQ(error_code_of([&] { rt.delete_page(id); }), ErrorCode::NotFound);
  EXPECT_EQ(error_code_of([&] {
              auto txn = rt.begin();
              txn.write_value<int>(id, 0, 1);
            }),
            ErrorCode::NotFound);
  EXPECT_NE(rt.create_page(64), id);
}

TEST(Runtime, UnknownAndForeignIdsAreNotFound) {
  Runtime rt;
  rt.create_page(8);
  EXPECT_EQ(error_code_of([&] { rt.info(PageId::make(0, 77)); }), ErrorCode::NotFound);
  EXPECT_EQ(error_code_of([&] { rt.info(PageId::make(5, 1)); }), ErrorCode::NotFound);
  EXPECT_EQ(error_code_of([&] { rt.info(PageId()); }), ErrorCode::NotFound);
  EXPECT_FALSE(rt.contains(PageId::make(0, 77)));
}

TEST(Runtime, ReadOutsideThePageIsRejected) {
  Runtime rt;
  PageId id = rt.create_page(16);
  std::vector<std::byte> buf(8);
  EXPECT_NO_THROW(rt.read(id, 8, buf));
  EXPECT_EQ(error_code_of([&] { rt.read(id, 9, buf); }), ErrorCode::InvalidArgument);
  EXPECT_EQ(error_code_of([&] { rt.read(id, ~std::uint64_t{0}, buf); }), ErrorCode::InvalidArgument);
}

TEST(Runtime, ErrorMessagesNameThePageAndSayWhatToDo) {
  Runtime rt;
  PageId id = rt.create_page(16);
  try {
    auto txn = rt.begin();
    txn.write_value<std::uint64_t>(id, 12, 1);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    std::string what = e.what();
    EXPECT_NE(what.find(id.to_string()), std::string::npos) << what;
    EXPECT_NE(what.find("[12, 20)"), std::string::npos) << what;
    EXPECT_NE(what.find("16 bytes"), std::string::npos) << what;
  }
}

}  // namespace
}  // namespace mmsb
