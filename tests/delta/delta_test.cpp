// tests/delta/delta_test.cpp — apply, invert, compose and Delta's invariants: property tests over random chains
// of edits (including resizes) and one test per way a delta can be malformed.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <random>
#include <span>
#include <vector>

#include "mmsb/delta.hpp"
#include "mmsb/error.hpp"

namespace mmsb {
namespace {

using Bytes = std::vector<std::byte>;

const PageId kPage = PageId::make(0, 5);

std::uint64_t pick_size(std::mt19937_64& rng) {
  static constexpr std::uint64_t kEdges[] = {0, 1, 2, 63, 64, 65, 127, 128, 129, 200, 4095, 4096, 4097};
  if (rng() % 3 == 0) return 1 + 2 * (rng() % 2600);
  return kEdges[rng() % std::size(kEdges)];
}

Bytes random_bytes(std::mt19937_64& rng, std::uint64_t n) {
  Bytes b(n);
  for (auto& x : b) x = static_cast<std::byte>(rng());
  return b;
}

// A copy of `page` at new_size with sparse or dense random edits; sometimes the size is kept.
Bytes edit(std::mt19937_64& rng, const Bytes& page) {
  const std::uint64_t new_size = rng() % 2 == 0 ? page.size() : pick_size(rng);
  Bytes out = page;
  out.resize(new_size);
  if (new_size == 0) return out;
  if (rng() % 4 == 0) {
    for (auto& x : out) {
      if (rng() % 4 != 0) x = static_cast<std::byte>(rng());
    }
  } else {
    const int runs = static_cast<int>(rng() % 6);
    for (int r = 0; r < runs; ++r) {
      const std::uint64_t at = rng() % new_size;
      const std::uint64_t len = std::min<std::uint64_t>(1 + rng() % 30, new_size - at);
      for (std::uint64_t i = at; i < at + len; ++i) out[i] = static_cast<std::byte>(rng() % 3 == 0 ? 0 : rng());
    }
  }
  return out;
}

DiffOptions random_options(std::mt19937_64& rng, bool undo = true) {
  DiffOptions o;
  o.merge_gap = rng() % 20;
  o.dense_fraction = rng() % 5 == 0 ? 0.1 : 0.5;
  o.record_undo = undo;
  return o;
}

Bytes applied(const Delta& d, Bytes page) {
  mmsb::apply(d, page);
  return page;
}

// A random chain: pages[0..n] and deltas[i] turning pages[i] into pages[i+1], epochs consecutive; some deltas
// are the identity (then pages[i+1] == pages[i]).
struct Chain {
  std::vector<Bytes> pages;
  std::vector<Delta> deltas;
};

Chain random_chain(std::mt19937_64& rng, int n, bool allow_identity, bool sometimes_no_undo = false) {
  Chain c;
  c.pages.push_back(random_bytes(rng, pick_size(rng)));
  std::uint64_t epoch = 10;
  for (int i = 0; i < n; ++i) {
    if (allow_identity && rng() % 6 == 0) {
      c.deltas.emplace_back();
      c.pages.push_back(c.pages.back());
      continue;
    }
    Bytes next = edit(rng, c.pages.back());
    Delta d = diff(c.pages.back(), next, random_options(rng, !sometimes_no_undo || rng() % 5 != 0));
    d.page = kPage;
    d.base_epoch = epoch++;
    d.source = static_cast<std::uint32_t>(i + 1);
    d.intent = "step" + std::to_string(i);
    c.deltas.push_back(std::move(d));
    c.pages.push_back(std::move(next));
  }
  return c;
}

template <typename F>
void expect_error(ErrorCode code, F&& f) {
  try {
    f();
    ADD_FAILURE() << "expected mmsb::Error";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), code) << e.what();
  }
}

// --- apply -----------------------------------------------------------------------------------------------------

TEST(Apply, WrongSizePageThrowsInvalidArgumentAndLeavesPageAlone) {
  const Bytes a(100, std::byte{1});
  Bytes b = a;
  b.resize(150, std::byte{2});
  const Delta d = diff(a, b);
  Bytes wrong(99, std::byte{0});
  expect_error(ErrorCode::InvalidArgument, [&] { mmsb::apply(d, wrong); });
  EXPECT_EQ(wrong, Bytes(99, std::byte{0}));
  Bytes right_base = a;
  expect_error(ErrorCode::InvalidArgument, [&] { mmsb::apply(d, std::span<std::byte>(right_base)); });  // resizes
  expect_error(ErrorCode::InvalidArgument, [&] { apply_ranges(d, std::span<std::byte>(right_base)); });
  Bytes final_size(150);
  EXPECT_NO_THROW(apply_ranges(d, std::span<std::byte>(final_size)));
}

TEST(Apply, RangePastPageEndThrowsWithoutWriting) {
  Delta d;
  d.base_size = d.size = 16;
  d.ranges = {{0, 2}, {15, 2}};
  d.payload = Bytes(4, std::byte{9});
  Bytes page(16, std::byte{0});
  expect_error(ErrorCode::InvalidArgument, [&] { mmsb::apply(d, page); });
  expect_error(ErrorCode::InvalidArgument, [&] { mmsb::apply(d, std::span<std::byte>(page)); });
  EXPECT_EQ(page, Bytes(16, std::byte{0}));  // checks run before the first write
}

TEST(Apply, HugeOffsetDoesNotOverflowBoundsCheck) {
  Delta d;
  d.base_size = d.size = 16;
  d.ranges = {{~std::uint64_t{0} - 1, 4}};
  d.payload = Bytes(4);
  Bytes page(16);
  expect_error(ErrorCode::InvalidArgument, [&] { mmsb::apply(d, page); });
}

TEST(Apply, SameSizeSpanOverloadWritesRanges) {
  std::mt19937_64 rng(0xa991);
  for (int iter = 0; iter < 300; ++iter) {
    const Bytes a = random_bytes(rng, pick_size(rng));
    Bytes b = a;
    for (auto& x : b) {
      if (rng() % 16 == 0) x = static_cast<std::byte>(rng());
    }
    const Delta d = diff(a, b, random_options(rng, rng() % 2 == 0));
    Bytes page = a;
    mmsb::apply(d, std::span<std::byte>(page));
    EXPECT_EQ(page, b);
  }
}

TEST(Apply, IdentityDeltaAppliesToEmptyPageOnly) {
  const Delta identity;
  Bytes empty;
  EXPECT_NO_THROW(mmsb::apply(identity, empty));
  Bytes one(1);
  expect_error(ErrorCode::InvalidArgument, [&] { mmsb::apply(identity, one); });
}

// --- invert ----------------------------------------------------------------------------------------------------

TEST(Invert, RestoresOldPageOfSameSize) {
  std::mt19937_64 rng(0x1171);
  for (int iter = 0; iter < 500; ++iter) {
    const Bytes a = random_bytes(rng, pick_size(rng));
    Bytes b = a;
    for (auto& x : b) {
      if (rng() % 10 == 0) x = static_cast<std::byte>(rng());
    }
    const Delta d = diff(a, b, random_options(rng));
    const Delta inv = invert(d);
    ASSERT_NO_THROW(inv.validate());
    EXPECT_EQ(applied(inv, b), a) << "iter " << iter;
  }
}

TEST(Invert, RestoresOldPageAcrossGrowAndShrink) {
  std::mt19937_64 rng(0x1172);
  for (int iter = 0; iter < 600; ++iter) {
    const Bytes a = random_bytes(rng, pick_size(rng));
    const Bytes b = edit(rng, a);
    const Delta d = diff(a, b, random_options(rng));
    const Delta inv = invert(d);
    SCOPED_TRACE(testing::Message() << "iter " << iter << " " << a.size() << " -> " << b.size());
    ASSERT_NO_THROW(inv.validate());
    EXPECT_EQ(inv.base_size, b.size());
    EXPECT_EQ(inv.size, a.size());
    EXPECT_EQ(applied(inv, b), a);
  }
}

TEST(Invert, TwiceHasTheOriginalEffect) {
  std::mt19937_64 rng(0x1173);
  for (int iter = 0; iter < 500; ++iter) {
    const Bytes a = random_bytes(rng, pick_size(rng));
    const Bytes b = edit(rng, a);
    const Delta d = diff(a, b, random_options(rng));
    const Delta twice = invert(invert(d));
    ASSERT_NO_THROW(twice.validate());
    EXPECT_EQ(applied(twice, a), b) << "iter " << iter;
    EXPECT_EQ(applied(invert(twice), b), a);
  }
}

TEST(Invert, MovesEpochsForwardAndKeepsPage) {
  const Bytes a(64, std::byte{1}), b(64, std::byte{2});
  Delta d = diff(a, b);
  d.page = kPage;
  d.base_epoch = 7;
  const Delta inv = invert(d);
  EXPECT_EQ(inv.page, kPage);
  EXPECT_EQ(inv.base_epoch, 8u);
  EXPECT_EQ(inv.epoch_count, 1u);
  EXPECT_EQ(inv.undo, d.payload);
  EXPECT_EQ(inv.payload, d.undo);
}

TEST(Invert, WithoutUndoThrowsInvalidArgument) {
  DiffOptions o;
  o.record_undo = false;
  const Delta d = diff(Bytes(10, std::byte{1}), Bytes(10, std::byte{2}), o);
  expect_error(ErrorCode::InvalidArgument, [&] { (void)invert(d); });
  expect_error(ErrorCode::InvalidArgument, [&] { (void)invert(Delta{}); });
}

TEST(Invert, ShrinkBackToZeroBytesAndGrowFromZeroBytes) {
  std::mt19937_64 rng(0x1174);
  const Bytes a = random_bytes(rng, 130);
  const Bytes empty;
  const Delta to_empty = diff(a, empty);
  EXPECT_EQ(applied(invert(to_empty), empty), a);
  const Delta from_empty = diff(empty, a);
  EXPECT_EQ(applied(invert(from_empty), a), empty);
}

// --- compose ---------------------------------------------------------------------------------------------------

TEST(Compose, IdentityIsNeutralOnBothSides) {
  std::mt19937_64 rng(0xc011);
  for (int iter = 0; iter < 100; ++iter) {
    const Chain c = random_chain(rng, 1, false);
    const Delta& d = c.deltas[0];
    EXPECT_EQ(compose(Delta{}, d), d);
    EXPECT_EQ(compose(d, Delta{}), d);
  }
  EXPECT_EQ(compose(Delta{}, Delta{}), Delta{});
}

TEST(Compose, AppliedEqualsApplyingFirstThenSecond) {
  std::mt19937_64 rng(0xc012);
  for (int iter = 0; iter < 600; ++iter) {
    const Chain c = random_chain(rng, 2, true);
    const Delta ab = compose(c.deltas[0], c.deltas[1]);
    if (c.deltas[0].is_identity() && c.deltas[1].is_identity()) {
      EXPECT_TRUE(ab.is_identity());  // a size-less identity applies to no page of ours; nothing more to check
      continue;
    }
    SCOPED_TRACE(testing::Message() << "iter " << iter << " sizes " << c.pages[0].size() << " -> " << c.pages[1].size()
                                    << " -> " << c.pages[2].size());
    ASSERT_NO_THROW(ab.validate());
    EXPECT_EQ(applied(ab, c.pages[0]), c.pages[2]);
    if (!c.deltas[0].is_identity() && !c.deltas[1].is_identity()) {
      EXPECT_EQ(ab.base_epoch, c.deltas[0].base_epoch);
      EXPECT_EQ(ab.epoch_count, 2u);
      EXPECT_EQ(ab.source, c.deltas[1].source);
      EXPECT_EQ(ab.intent, c.deltas[1].intent);
      EXPECT_EQ(ab.page, kPage);
    }
  }
}

TEST(Compose, IsAssociativeStructurallyAndByEffect) {
  std::mt19937_64 rng(0xc013);
  for (int iter = 0; iter < 600; ++iter) {
    const Chain c = random_chain(rng, 3, true, true);
    const Delta& a = c.deltas[0];
    const Delta& b = c.deltas[1];
    const Delta& d = c.deltas[2];
    const Delta left = compose(compose(a, b), d);
    const Delta right = compose(a, compose(b, d));
    SCOPED_TRACE(testing::Message() << "iter " << iter << " sizes " << c.pages[0].size() << " " << c.pages[1].size()
                                    << " " << c.pages[2].size() << " " << c.pages[3].size());
    EXPECT_EQ(left, right);
    EXPECT_EQ(applied(left, c.pages[0]), c.pages[3]);
    EXPECT_EQ(applied(right, c.pages[0]), c.pages[3]);
  }
}

TEST(Compose, InverseOfCompositionRestoresBase) {
  std::mt19937_64 rng(0xc014);
  for (int iter = 0; iter < 500; ++iter) {
    const Chain c = random_chain(rng, 3, false);
    const Delta all = compose(compose(c.deltas[0], c.deltas[1]), c.deltas[2]);
    ASSERT_TRUE(all.has_undo);
    EXPECT_EQ(applied(invert(all), c.pages[3]), c.pages[0]) << "iter " << iter;
  }
}

TEST(Compose, ShrinkThenGrowZeroesTheRegrownBytes) {
  // The composition resizes 8 -> 8 directly, so it must write the zeros that the shrink-and-grow produced.
  const Bytes a{std::byte{1}, std::byte{2}, std::byte{3}, std::byte{4},
                std::byte{5}, std::byte{6}, std::byte{7}, std::byte{8}};
  const Bytes mid(a.begin(), a.begin() + 3);
  Bytes last = mid;
  last.resize(8);
  last[6] = std::byte{9};
  Delta first = diff(a, mid);
  Delta second = diff(mid, last);
  second.base_epoch = 1;
  const Delta both = compose(first, second);
  EXPECT_EQ(both.base_size, 8u);
  EXPECT_EQ(both.size, 8u);
  EXPECT_EQ(both.ranges, (std::vector<ByteRange>{{3, 5}}));
  EXPECT_EQ(applied(both, a), last);
  EXPECT_EQ(both.undo, Bytes(a.begin() + 3, a.end()));
  EXPECT_EQ(applied(invert(both), last), a);
}

TEST(Compose, GrowThenShrinkKeepsNoBytesBeyondFinalSize) {
  const Bytes a(10, std::byte{1});
  Bytes mid = a;
  mid.resize(100, std::byte{4});
  const Bytes last(mid.begin(), mid.begin() + 20);
  DiffOptions sparse;
  sparse.dense_fraction = 1.0;  // keep the grow sparse: only [10, 100) changed
  Delta first = diff(a, mid, sparse);
  Delta second = diff(mid, last);
  second.base_epoch = 1;
  const Delta both = compose(first, second);
  EXPECT_EQ(both.ranges, (std::vector<ByteRange>{{10, 10}}));
  EXPECT_TRUE(both.undo_tail.empty());
  EXPECT_EQ(applied(both, a), last);
}

TEST(Compose, HasUndoOnlyWhenBothHaveUndo) {
  std::mt19937_64 rng(0xc015);
  for (int iter = 0; iter < 200; ++iter) {
    const Bytes p0 = random_bytes(rng, pick_size(rng));
    const Bytes p1 = edit(rng, p0);
    const Bytes p2 = edit(rng, p1);
    const bool undo_a = rng() % 2 == 0, undo_b = rng() % 2 == 0;
    const Delta a = diff(p0, p1, random_options(rng, undo_a));
    Delta b = diff(p1, p2, random_options(rng, undo_b));
    b.base_epoch = 1;
    const Delta ab = compose(a, b);
    ASSERT_NO_THROW(ab.validate());
    EXPECT_EQ(ab.has_undo, undo_a && undo_b);
    EXPECT_EQ(applied(ab, p0), p2);
  }
}

TEST(Compose, EpochGapThrowsInvalidArgument) {
  const Bytes a(32, std::byte{1}), b(32, std::byte{2}), c(32, std::byte{3});
  const Delta first = diff(a, b);
  Delta second = diff(b, c);
  second.base_epoch = 2;  // first ends at epoch 1
  expect_error(ErrorCode::InvalidArgument, [&] { (void)compose(first, second); });
  second.base_epoch = 0;  // overlaps instead of following
  expect_error(ErrorCode::InvalidArgument, [&] { (void)compose(first, second); });
}

TEST(Compose, DifferentPagesThrowInvalidArgument) {
  const Bytes a(32, std::byte{1}), b(32, std::byte{2}), c(32, std::byte{3});
  Delta first = diff(a, b);
  Delta second = diff(b, c);
  second.base_epoch = 1;
  first.page = PageId::make(0, 1);
  second.page = PageId::make(0, 2);
  expect_error(ErrorCode::InvalidArgument, [&] { (void)compose(first, second); });
}

TEST(Compose, SizeMismatchThrowsInvalidArgument) {
  const Bytes a(32, std::byte{1}), b(40, std::byte{2}), c(32, std::byte{3});
  const Delta first = diff(a, b);
  Delta second = diff(a, c);  // expects 32 bytes, first leaves 40
  second.base_epoch = 1;
  expect_error(ErrorCode::InvalidArgument, [&] { (void)compose(first, second); });
}

TEST(Compose, MalformedOperandThrowsInvalidArgument) {
  const Bytes a(32, std::byte{1}), b(32, std::byte{2});
  const Delta first = diff(a, b);
  Delta second = diff(b, a);
  second.base_epoch = 1;
  second.payload.pop_back();
  expect_error(ErrorCode::InvalidArgument, [&] { (void)compose(first, second); });
}

// --- Delta members and invariants ------------------------------------------------------------------------------

Delta valid_delta() {
  // 20 -> 12 bytes, ranges [2, 4) and [8, 9), with undo.
  Delta d;
  d.base_size = 20;
  d.size = 12;
  d.epoch_count = 1;
  d.ranges = {{2, 2}, {8, 1}};
  d.payload = Bytes(3, std::byte{1});
  d.has_undo = true;
  d.undo = Bytes(3, std::byte{2});
  d.undo_tail = Bytes(8, std::byte{3});
  return d;
}

TEST(Validate, AcceptsWellFormedDeltas) {
  EXPECT_NO_THROW(valid_delta().validate());
  EXPECT_NO_THROW(Delta{}.validate());
}

void expect_invalid(const std::function<void(Delta&)>& breaker) {
  Delta d = valid_delta();
  breaker(d);
  expect_error(ErrorCode::InvalidArgument, [&] { d.validate(); });
}

TEST(Validate, EmptyRange) {
  expect_invalid([](Delta& d) { d.ranges.insert(d.ranges.begin() + 1, ByteRange{5, 0}); });
}
TEST(Validate, RangePastSize) {
  expect_invalid([](Delta& d) {
    d.ranges[1] = {11, 2};
    d.payload.push_back(std::byte{1});
    d.undo.push_back({});
  });
}
TEST(Validate, RangeStartingAtSize) {
  expect_invalid([](Delta& d) { d.ranges[1] = {12, 1}; });
}
TEST(Validate, OverlappingRanges) {
  expect_invalid([](Delta& d) { d.ranges[1] = {3, 1}; });
}
TEST(Validate, AdjacentRanges) {
  expect_invalid([](Delta& d) { d.ranges[1] = {4, 1}; });
}
TEST(Validate, UnsortedRanges) {
  expect_invalid([](Delta& d) { std::swap(d.ranges[0], d.ranges[1]); });
}
TEST(Validate, PayloadShorterThanRanges) {
  expect_invalid([](Delta& d) { d.payload.pop_back(); });
}
TEST(Validate, PayloadLongerThanRanges) {
  expect_invalid([](Delta& d) { d.payload.push_back(std::byte{0}); });
}
TEST(Validate, UndoSizeDiffersFromPayload) {
  expect_invalid([](Delta& d) { d.undo.pop_back(); });
}
TEST(Validate, UndoTailWrongSizeWhenShrinking) {
  expect_invalid([](Delta& d) { d.undo_tail.pop_back(); });
}
TEST(Validate, UndoTailPresentWhenNotShrinking) {
  expect_invalid([](Delta& d) { d.base_size = 12; });
}
TEST(Validate, UndoRecordedWithoutHasUndo) {
  expect_invalid([](Delta& d) {
    d.has_undo = false;
    d.undo_tail.clear();
  });
  expect_invalid([](Delta& d) {
    d.has_undo = false;
    d.undo.clear();
  });
}
TEST(Validate, NonZeroUndoBeyondBaseSize) {
  expect_invalid([](Delta& d) {
    d.base_size = 8;  // grow 8 -> 12: the range [8, 9) did not exist before, its undo must be zero
    d.undo_tail.clear();
  });
}

TEST(DeltaMembers, ChangedBytesSumsRangeLengths) {
  EXPECT_EQ(valid_delta().changed_bytes(), 3u);
  EXPECT_EQ(Delta{}.changed_bytes(), 0u);
}

TEST(DeltaMembers, ClearResetsFieldsAndKeepsCapacity) {
  Delta d = valid_delta();
  d.page = kPage;
  d.intent = "x";
  const auto cap = d.payload.capacity();
  d.clear();
  EXPECT_EQ(d, Delta{});
  EXPECT_EQ(d.payload.capacity(), cap);
}

TEST(DeltaMembers, IsDenseAndIsIdentity) {
  Delta d;
  EXPECT_TRUE(d.is_identity());
  EXPECT_FALSE(d.is_dense());  // an empty page is never dense
  d.size = d.base_size = 4;
  d.ranges = {{0, 4}};
  EXPECT_TRUE(d.is_dense());
  EXPECT_FALSE(d.is_identity());
  d.ranges = {{0, 3}};
  EXPECT_FALSE(d.is_dense());
}

}  // namespace
}  // namespace mmsb
