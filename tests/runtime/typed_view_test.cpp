// tests/runtime/typed_view_test.cpp — typed access to pages: ReadView::span<T>, Runtime::read_span<T>,
// Transaction::write_span<T> and view_as<T>: the values, and one test per size or alignment check.
#include <gtest/gtest.h>

#include <array>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "mmsb/runtime.hpp"
#include "support/test_support.hpp"

namespace mmsb {
namespace {

using testing::error_code_of;

struct Particle {
  float x, y, vx, vy;
};

std::string message_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::InvalidArgument) << e.what();
    return e.what();
  }
  ADD_FAILURE() << "expected an mmsb::Error";
  return {};
}

TEST(TypedView, WriteSpanThenViewTheSameElements) {
  Runtime rt;
  const PageId page = rt.create_page(4 * sizeof(Particle));
  std::vector<Particle> ps = {{1, 2, 3, 4}, {5, 6, 7, 8}};
  auto txn = rt.begin();
  txn.write_span(page, sizeof(Particle), ps);  // elements 1 and 2, from a vector
  txn.commit();
  const PageId ids[] = {page};
  ReadView view = rt.read_view(ids);
  std::span<const Particle> all = view.span<Particle>(page);
  ASSERT_EQ(all.size(), 4u);
  EXPECT_EQ(all[0].x, 0.0f);
  EXPECT_EQ(all[1].vy, 4.0f);
  EXPECT_EQ(all[2].x, 5.0f);
  std::span<const Particle> middle = view.span<Particle>(page, sizeof(Particle), 2);
  EXPECT_EQ(middle.data(), all.data() + 1);
  EXPECT_EQ(middle.size(), 2u);
}

TEST(TypedView, WriteSpanTakesSpansArraysAndExplicitTypes) {
  Runtime rt;
  const PageId page = rt.create_page(32);
  std::array<std::uint32_t, 2> a = {7, 8};
  const std::uint64_t b[2] = {9, 10};
  auto txn = rt.begin();
  txn.write_span(page, 0, a);
  txn.write_span(page, 8, std::span<const std::uint64_t>(b));
  txn.write_span<std::uint64_t>(page, 24, std::vector<std::uint64_t>{11});
  txn.commit();
  std::array<std::uint64_t, 4> out{};
  rt.read_span<std::uint64_t>(page, 0, out);
  EXPECT_EQ(out[0], (std::uint64_t{8} << 32) | 7);
  EXPECT_EQ(out[1], 9u);
  EXPECT_EQ(out[2], 10u);
  EXPECT_EQ(out[3], 11u);
}

TEST(TypedView, PageThatIsNoWholeNumberOfElementsIsRefused) {
  Runtime rt;
  const PageId page = rt.create_page(10);
  const PageId ids[] = {page};
  ReadView view = rt.read_view(ids);
  const std::string m = message_of([&] { (void)view.span<std::uint32_t>(page); });
  EXPECT_NE(m.find("ReadView::span: page p0:1 (10 bytes) does not hold a whole number of 4-byte elements"),
            std::string::npos)
      << m;
  EXPECT_EQ(view.span<std::uint32_t>(page, 0, 2).size(), 2u);  // a count that fits is fine
  EXPECT_EQ(view.span<std::uint16_t>(page).size(), 5u);
}

TEST(TypedView, TooManyElementsAreRefused) {
  Runtime rt;
  const PageId page = rt.create_page(16);
  const PageId ids[] = {page};
  ReadView view = rt.read_view(ids);
  const std::string m = message_of([&] { (void)view.span<std::uint64_t>(page, 8, 2); });
  EXPECT_NE(m.find("holds 1 8-byte elements from byte offset 8, not 2"), std::string::npos) << m;
  EXPECT_EQ(error_code_of([&] { (void)view.span<std::uint8_t>(page, 17); }), ErrorCode::InvalidArgument);
}

TEST(TypedView, MisalignedOffsetIsRefused) {
  Runtime rt;
  const PageId page = rt.create_page(64);
  const PageId ids[] = {page};
  {
    ReadView view = rt.read_view(ids);
    const std::string m = message_of([&] { (void)view.span<std::uint64_t>(page, 4, 2); });
    EXPECT_NE(m.find("aligned to 8 bytes at byte offset 4"), std::string::npos) << m;
  }
  auto txn = rt.begin();
  const std::string w = message_of([&] { txn.write_span(page, 2, std::vector<std::uint32_t>{1}); });
  EXPECT_NE(w.find("Transaction::write_span: byte offset 2 of page p0:1 is not a multiple of 4"), std::string::npos)
      << w;
  std::uint32_t out[1];
  EXPECT_EQ(error_code_of([&] { rt.read_span<std::uint32_t>(page, 6, out); }), ErrorCode::InvalidArgument);
}

TEST(TypedView, TransactionReadSpanIsATrackedRead) {
  Runtime rt;
  const PageId page = rt.create_page(4 * sizeof(float)), other = rt.create_page(8);
  auto txn = rt.begin();
  float in[4];
  txn.read_span<float>(page, 0, in);
  txn.write_value<std::uint64_t>(other, 0, 1);
  auto mover = rt.begin();  // moves the page the transaction read
  mover.write_value<float>(page, 0, 2.0f);
  mover.commit();
  EXPECT_EQ(error_code_of([&] { txn.commit(); }), ErrorCode::Conflict) << "the typed read was not validated";
  EXPECT_EQ(rt.read_value<std::uint64_t>(other, 0), 0u);
}

TEST(TypedView, EmptyPageGivesAnEmptyView) {
  Runtime rt;
  const PageId page = rt.create_page(0);
  const PageId ids[] = {page};
  ReadView view = rt.read_view(ids);
  EXPECT_TRUE(view.span<Particle>(page).empty());
}

TEST(TypedView, ViewAsKeepsConstness) {
  std::array<std::byte, 16> raw{};
  auto writable = view_as<std::uint32_t>(std::span<std::byte>(raw), ViewSite{"test", PageId::make(0, 1)});
  static_assert(std::is_same_v<decltype(writable), std::span<std::uint32_t>>);
  writable[1] = 5;
  auto readable = view_as<std::uint32_t>(std::span<const std::byte>(raw), ViewSite{"test", PageId::make(0, 1)});
  static_assert(std::is_same_v<decltype(readable), std::span<const std::uint32_t>>);
  EXPECT_EQ(readable[1], 5u);
}

}  // namespace
}  // namespace mmsb
