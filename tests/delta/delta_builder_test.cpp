// tests/delta/delta_builder_test.cpp — DeltaBuilder: writes in any order become a valid delta whose application
// equals applying the writes one by one (a property test against that model), plus one test per edge.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <random>
#include <span>
#include <string>
#include <vector>

#include "mmsb/delta.hpp"
#include "mmsb/error.hpp"

namespace mmsb {
namespace {

using Bytes = std::vector<std::byte>;

Bytes bytes_of(std::initializer_list<int> values) {
  Bytes b;
  for (int v : values) b.push_back(static_cast<std::byte>(v));
  return b;
}

TEST(DeltaBuilder, NoWriteIsNoChange) {
  DeltaBuilder b(64);
  Delta d;
  d.ranges.push_back({0, 1});  // finish() replaces what was there
  d.payload.push_back(std::byte{1});
  b.finish(d);
  EXPECT_TRUE(b.empty());
  EXPECT_TRUE(d.ranges.empty());
  EXPECT_TRUE(d.payload.empty());
}

TEST(DeltaBuilder, ElementsInAnyOrderComeOutSorted) {
  DeltaBuilder b(64);
  b.write_element<float>(7, 1.5f);
  b.write_element<float>(2, 0.5f);
  Delta d;
  b.finish(d);
  ASSERT_EQ(d.ranges, (std::vector<ByteRange>{{8, 4}, {28, 4}}));
  float first, second;
  std::memcpy(&first, d.payload.data(), 4);
  std::memcpy(&second, d.payload.data() + 4, 4);
  EXPECT_EQ(first, 0.5f);
  EXPECT_EQ(second, 1.5f);
}

TEST(DeltaBuilder, TouchingWritesMergeIntoOneRange) {
  DeltaBuilder b(16);
  b.write(4, bytes_of({4, 5}));
  b.write(2, bytes_of({2, 3}));
  Delta d;
  b.finish(d);
  ASSERT_EQ(d.ranges, (std::vector<ByteRange>{{2, 4}}));
  EXPECT_EQ(d.payload, bytes_of({2, 3, 4, 5}));
}

TEST(DeltaBuilder, LaterWriteWinsWhereWritesOverlap) {
  DeltaBuilder b(16);
  b.write(0, bytes_of({1, 1, 1, 1}));
  b.write(2, bytes_of({9, 9, 9}));
  b.write(1, bytes_of({7}));
  Delta d;
  b.finish(d);
  ASSERT_EQ(d.ranges, (std::vector<ByteRange>{{0, 5}}));
  EXPECT_EQ(d.payload, bytes_of({1, 7, 9, 9, 9}));
}

TEST(DeltaBuilder, WriteBeyondThePageIsRefusedAtOnce) {
  DeltaBuilder b(8);
  EXPECT_NO_THROW(b.write_value<std::uint32_t>(4, 1));
  try {
    b.write_value<std::uint32_t>(6, 1);
    FAIL() << "a write past the page end was accepted";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::InvalidArgument);
    EXPECT_NE(std::string(e.what()).find("[6, 10) does not fit a page of 8 bytes"), std::string::npos) << e.what();
  }
  EXPECT_EQ(b.write_count(), 1u);
}

TEST(DeltaBuilder, EmptyWriteIsIgnoredAndClearForgets) {
  DeltaBuilder b;
  b.write(100, {});
  EXPECT_TRUE(b.empty());
  b.write_value<std::uint8_t>(3, 1);
  b.clear();
  Delta d;
  b.finish(d);
  EXPECT_TRUE(d.ranges.empty());
}

// Random writes (any order, overlapping, touching, repeated) against a page updated write by write.
TEST(DeltaBuilder, MatchesApplyingTheWritesInOrder) {
  std::mt19937_64 rng(19);
  for (int round = 0; round < 500; ++round) {
    const std::uint64_t size = 1 + rng() % 300;
    Bytes before(size);
    for (auto& x : before) x = static_cast<std::byte>(rng());
    Bytes expected = before;
    DeltaBuilder b(size);
    const int writes = static_cast<int>(rng() % 12);
    for (int w = 0; w < writes; ++w) {
      const std::uint64_t offset = rng() % size, length = 1 + rng() % std::min<std::uint64_t>(size - offset, 40);
      Bytes data(length);
      for (auto& x : data) x = static_cast<std::byte>(rng());
      b.write(offset, data);
      std::copy(data.begin(), data.end(), expected.begin() + static_cast<std::ptrdiff_t>(offset));
    }
    Delta d;
    d.base_size = d.size = size;
    d.epoch_count = 1;
    b.finish(d);
    ASSERT_NO_THROW(d.validate()) << "round " << round;
    Bytes page = before;
    mmsb::apply(d, std::span<std::byte>(page));
    ASSERT_EQ(page, expected) << "round " << round;
  }
}

}  // namespace
}  // namespace mmsb
