// tests/delta/diff_test.cpp — diff()/diff_into(): every SIMD kernel against a byte-by-byte reference, canonical
// output, merge_gap and dense_fraction, resizes, capacity reuse and the dispatch errors.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <random>
#include <span>
#include <vector>

#include "mmsb/delta.hpp"
#include "mmsb/error.hpp"

namespace mmsb {
namespace {

using Bytes = std::vector<std::byte>;

std::vector<SimdLevel> supported_levels() {
  std::vector<SimdLevel> levels;
  for (SimdLevel l : {SimdLevel::Scalar, SimdLevel::Avx2, SimdLevel::Avx512}) {
    if (l <= detected_simd_level()) levels.push_back(l);
  }
  return levels;
}

std::uint64_t pick_size(std::mt19937_64& rng) {
  static constexpr std::uint64_t kEdges[] = {0,   1,   2,   7,   8,   9,   63,   64,   65,
                                             127, 128, 129, 191, 255, 256, 4095, 4096, 4097};
  if (rng() % 3 == 0) return 1 + 2 * (rng() % 4600);  // odd sizes up to ~9 KiB
  return kEdges[rng() % std::size(kEdges)];
}

Bytes random_bytes(std::mt19937_64& rng, std::uint64_t n) {
  Bytes b(n);
  for (auto& x : b) x = static_cast<std::byte>(rng());
  return b;
}

// A copy of `page` resized to new_size (grown part: zeros or random) with a random edit pattern applied.
Bytes edit(std::mt19937_64& rng, const Bytes& page, std::uint64_t new_size) {
  Bytes out = page;
  out.resize(new_size);
  if (new_size > page.size() && rng() % 2 == 0) {
    for (std::uint64_t i = page.size(); i < new_size; ++i) {
      if (rng() % 4 == 0) out[i] = static_cast<std::byte>(1 + rng() % 255);
    }
  }
  if (new_size == 0) return out;
  switch (rng() % 5) {
    case 0:  // unchanged
      break;
    case 1: {  // a few scattered runs, as a typical commit
      const int runs = 1 + static_cast<int>(rng() % 6);
      for (int r = 0; r < runs; ++r) {
        const std::uint64_t at = rng() % new_size;
        const std::uint64_t len = std::min<std::uint64_t>(1 + rng() % 20, new_size - at);
        for (std::uint64_t i = at; i < at + len; ++i) out[i] = static_cast<std::byte>(rng());
      }
      break;
    }
    case 2:  // single bytes with random gaps (tests merge_gap)
      for (std::uint64_t i = rng() % 40; i < new_size; i += 1 + rng() % 40) out[i] = ~out[i];
      break;
    case 3:  // dense: most bytes change
      for (auto& x : out) {
        if (rng() % 8 != 0) x = static_cast<std::byte>(rng());
      }
      break;
    default:  // alternating bytes: the worst case for the run splitter
      for (std::uint64_t i = rng() % 2; i < new_size; i += 2) out[i] = ~out[i];
      break;
  }
  return out;
}

DiffOptions random_options(std::mt19937_64& rng) {
  DiffOptions o;
  static constexpr std::uint64_t kGaps[] = {0, 1, 2, 3, 8, 16, 64, 100};
  static constexpr double kFractions[] = {0.0, 0.25, 0.5, 0.9, 1.0, 2.0};
  o.merge_gap = kGaps[rng() % std::size(kGaps)];
  o.dense_fraction = kFractions[rng() % std::size(kFractions)];
  o.record_undo = rng() % 4 != 0;
  return o;
}

// Byte-by-byte model of diff's ranges: differing bytes of the common prefix plus non-zero bytes of a grown tail,
// runs merged when fewer than max(merge_gap, 1) bytes apart, dense when more than dense_fraction of the page.
std::vector<ByteRange> reference_ranges(const Bytes& old_page, const Bytes& new_page, const DiffOptions& o) {
  const std::uint64_t gap = std::max<std::uint64_t>(o.merge_gap, 1);
  std::vector<ByteRange> out;
  for (std::uint64_t i = 0; i < new_page.size(); ++i) {
    const std::byte before = i < old_page.size() ? old_page[i] : std::byte{0};
    if (before == new_page[i]) continue;
    if (!out.empty() && i - out.back().end() < gap) {
      out.back().length = i + 1 - out.back().offset;
    } else {
      out.push_back(ByteRange{i, 1});
    }
  }
  std::uint64_t changed = 0;
  for (const auto& r : out) changed += r.length;
  if (changed != 0 && static_cast<double>(changed) > o.dense_fraction * static_cast<double>(new_page.size())) {
    out = {ByteRange{0, new_page.size()}};
  }
  return out;
}

Delta diff_at(SimdLevel level, std::span<const std::byte> a, std::span<const std::byte> b, const DiffOptions& o) {
  Delta d;
  diff_into(level, a, b, d, o);
  return d;
}

void expect_applies(const Delta& d, const Bytes& old_page, const Bytes& new_page) {
  Bytes page = old_page;
  mmsb::apply(d, page);
  EXPECT_EQ(page, new_page);
}

TEST(Diff, ApplyRestoresNewPageAtEverySimdLevelAndLevelsAgree) {
  std::mt19937_64 rng(0xd1ff0001);
  for (int iter = 0; iter < 600; ++iter) {
    const std::uint64_t size = pick_size(rng);
    const Bytes old_page = random_bytes(rng, size);
    const Bytes new_page = edit(rng, old_page, size);
    const DiffOptions o = random_options(rng);
    const Delta ref = diff_at(SimdLevel::Scalar, old_page, new_page, o);
    SCOPED_TRACE(testing::Message() << "iter " << iter << " size " << size << " merge_gap " << o.merge_gap);
    ASSERT_NO_THROW(ref.validate());
    EXPECT_EQ(ref.ranges, reference_ranges(old_page, new_page, o));
    expect_applies(ref, old_page, new_page);
    for (SimdLevel level : supported_levels()) {
      EXPECT_EQ(diff_at(level, old_page, new_page, o), ref) << simd_level_name(level);
    }
  }
}

TEST(Diff, UnalignedBuffersGiveTheSameRangesAtEverySimdLevel) {
  // Pages inside larger buffers at every misalignment; the kernels use unaligned and masked loads.
  std::mt19937_64 rng(0xd1ff0002);
  for (int iter = 0; iter < 300; ++iter) {
    const std::uint64_t size = pick_size(rng);
    const std::size_t shift_a = rng() % 64, shift_b = rng() % 64;
    Bytes buf_a(size + 64), buf_b(size + 64);
    const Bytes old_page = random_bytes(rng, size);
    const Bytes new_page = edit(rng, old_page, size);
    std::copy(old_page.begin(), old_page.end(), buf_a.begin() + static_cast<std::ptrdiff_t>(shift_a));
    std::copy(new_page.begin(), new_page.end(), buf_b.begin() + static_cast<std::ptrdiff_t>(shift_b));
    const std::span<const std::byte> a(buf_a.data() + shift_a, size), b(buf_b.data() + shift_b, size);
    const DiffOptions o = random_options(rng);
    const auto expected = reference_ranges(old_page, new_page, o);
    for (SimdLevel level : supported_levels()) {
      EXPECT_EQ(diff_at(level, a, b, o).ranges, expected) << simd_level_name(level) << " iter " << iter;
    }
  }
}

TEST(Diff, GrowAndShrinkApplyAtEverySimdLevelAndLevelsAgree) {
  std::mt19937_64 rng(0xd1ff0003);
  for (int iter = 0; iter < 600; ++iter) {
    const std::uint64_t old_size = pick_size(rng);
    const std::uint64_t new_size = pick_size(rng);
    const Bytes old_page = random_bytes(rng, old_size);
    const Bytes new_page = edit(rng, old_page, new_size);
    const DiffOptions o = random_options(rng);
    SCOPED_TRACE(testing::Message() << "iter " << iter << " " << old_size << " -> " << new_size);
    const Delta ref = diff_at(SimdLevel::Scalar, old_page, new_page, o);
    ASSERT_NO_THROW(ref.validate());
    EXPECT_EQ(ref.base_size, old_size);
    EXPECT_EQ(ref.size, new_size);
    EXPECT_EQ(ref.ranges, reference_ranges(old_page, new_page, o));
    if (o.record_undo && new_size < old_size) {
      EXPECT_EQ(ref.undo_tail, Bytes(old_page.begin() + static_cast<std::ptrdiff_t>(new_size), old_page.end()));
    }
    expect_applies(ref, old_page, new_page);
    for (SimdLevel level : supported_levels()) {
      EXPECT_EQ(diff_at(level, old_page, new_page, o), ref) << simd_level_name(level);
    }
  }
}

TEST(Diff, DefaultDispatchMatchesForcedActiveLevel) {
  std::mt19937_64 rng(0xd1ff0004);
  for (int iter = 0; iter < 100; ++iter) {
    const Bytes old_page = random_bytes(rng, pick_size(rng));
    const Bytes new_page = edit(rng, old_page, pick_size(rng));
    EXPECT_EQ(diff(old_page, new_page), diff_at(active_simd_level(), old_page, new_page, {}));
  }
}

TEST(Diff, IdenticalPagesGiveEmptyRangesAtEverySize) {
  std::mt19937_64 rng(0xd1ff0005);
  for (std::uint64_t size : {0, 1, 63, 64, 65, 127, 128, 129, 4095, 4096, 4097, 10001}) {
    const Bytes page = random_bytes(rng, size);
    for (SimdLevel level : supported_levels()) {
      const Delta d = diff_at(level, page, page, {});
      EXPECT_TRUE(d.ranges.empty()) << size << " " << simd_level_name(level);
      EXPECT_TRUE(d.payload.empty());
      EXPECT_TRUE(d.undo.empty());
      EXPECT_EQ(d.epoch_count, 1u);
      EXPECT_FALSE(d.is_identity());  // it still covers a commit
    }
  }
}

TEST(Diff, SingleChangedByteGivesByteExactRangeNotWholeBlock) {
  for (std::uint64_t at : {0, 1, 62, 63, 64, 65, 100, 127, 128, 4095}) {
    Bytes old_page(4096, std::byte{7});
    Bytes new_page = old_page;
    new_page[at] = std::byte{9};
    for (SimdLevel level : supported_levels()) {
      const Delta d = diff_at(level, old_page, new_page, {});
      ASSERT_EQ(d.ranges.size(), 1u);
      EXPECT_EQ(d.ranges[0], (ByteRange{at, 1})) << simd_level_name(level);
      EXPECT_EQ(d.payload, Bytes{std::byte{9}});
      EXPECT_EQ(d.undo, Bytes{std::byte{7}});
    }
  }
}

TEST(Diff, RunCrossingBlockBoundaryIsOneRangeEvenWithMergeGapZero) {
  Bytes old_page(256, std::byte{0});
  Bytes new_page = old_page;
  for (int i = 60; i < 140; ++i) new_page[static_cast<std::size_t>(i)] = std::byte{1};
  DiffOptions o;
  o.merge_gap = 0;
  for (SimdLevel level : supported_levels()) {
    const Delta d = diff_at(level, old_page, new_page, o);
    ASSERT_EQ(d.ranges.size(), 1u) << simd_level_name(level);
    EXPECT_EQ(d.ranges[0], (ByteRange{60, 80}));
    EXPECT_NO_THROW(d.validate());
  }
}

TEST(Diff, RunsMergeExactlyWhenGapIsBelowMergeGap) {
  for (std::uint64_t merge_gap : {0, 1, 2, 5, 16, 70}) {
    for (std::uint64_t gap = 1; gap < 80; ++gap) {
      Bytes old_page(512, std::byte{0});
      Bytes new_page = old_page;
      new_page[30] = std::byte{1};
      new_page[31 + gap] = std::byte{1};  // `gap` equal bytes between the two changes
      DiffOptions o;
      o.merge_gap = merge_gap;
      for (SimdLevel level : supported_levels()) {
        const Delta d = diff_at(level, old_page, new_page, o);
        if (gap < merge_gap) {
          ASSERT_EQ(d.ranges.size(), 1u) << merge_gap << " " << gap;
          EXPECT_EQ(d.ranges[0], (ByteRange{30, gap + 2}));
        } else {
          ASSERT_EQ(d.ranges.size(), 2u) << merge_gap << " " << gap;
          EXPECT_EQ(d.ranges[1], (ByteRange{31 + gap, 1}));
        }
      }
    }
  }
}

TEST(Diff, MostBytesChangedGivesDenseDelta) {
  std::mt19937_64 rng(0xd1ff0006);
  const Bytes old_page = random_bytes(rng, 4096);
  Bytes new_page = old_page;
  for (std::size_t i = 0; i < 3000; ++i) new_page[i] = ~new_page[i];
  for (SimdLevel level : supported_levels()) {
    const Delta d = diff_at(level, old_page, new_page, {});
    EXPECT_TRUE(d.is_dense()) << simd_level_name(level);
    EXPECT_EQ(d.payload, new_page);
    EXPECT_EQ(d.undo, old_page);
    expect_applies(d, old_page, new_page);
  }
}

TEST(Diff, DenseFractionThresholdIsExclusive) {
  Bytes old_page(100, std::byte{0});
  Bytes new_page = old_page;
  for (std::size_t i = 0; i < 50; ++i) new_page[i] = std::byte{1};
  DiffOptions o;
  o.dense_fraction = 0.5;
  EXPECT_FALSE(diff(old_page, new_page, o).is_dense());  // 50 of 100 does not exceed one half
  new_page[50] = std::byte{1};
  EXPECT_TRUE(diff(old_page, new_page, o).is_dense());  // 51 of 100 does
  o.dense_fraction = 1.0;
  EXPECT_FALSE(diff(old_page, new_page, o).is_dense());
  o.dense_fraction = 0.0;
  Bytes one = old_page;
  one[99] = std::byte{1};
  EXPECT_TRUE(diff(old_page, one, o).is_dense());           // any change is "most"
  EXPECT_TRUE(diff(old_page, old_page, o).ranges.empty());  // but no change stays empty
}

TEST(Diff, NanDenseFractionThrowsInvalidArgument) {
  DiffOptions o;
  o.dense_fraction = std::numeric_limits<double>::quiet_NaN();
  const Bytes page(10);
  try {
    (void)diff(page, page, o);
    FAIL() << "expected mmsb::Error";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::InvalidArgument);
  }
}

TEST(Diff, GrowTailContributesOnlyNonZeroRuns) {
  const Bytes old_page(10, std::byte{3});
  Bytes new_page = old_page;
  new_page.resize(300);
  new_page[100] = std::byte{5};
  new_page[101] = std::byte{6};
  new_page[299] = std::byte{7};
  for (SimdLevel level : supported_levels()) {
    const Delta d = diff_at(level, old_page, new_page, {});
    const std::vector<ByteRange> expected{{100, 2}, {299, 1}};
    EXPECT_EQ(d.ranges, expected) << simd_level_name(level);
    EXPECT_EQ(d.undo, Bytes(3, std::byte{0}));  // nothing existed there before
    EXPECT_TRUE(d.undo_tail.empty());
    expect_applies(d, old_page, new_page);
  }
}

TEST(Diff, ShrinkKeepsCutBytesInUndoTail) {
  std::mt19937_64 rng(0xd1ff0007);
  const Bytes old_page = random_bytes(rng, 4097);
  const Bytes new_page(old_page.begin(), old_page.begin() + 1000);
  const Delta d = diff(old_page, new_page);
  EXPECT_TRUE(d.ranges.empty());
  EXPECT_EQ(d.undo_tail, Bytes(old_page.begin() + 1000, old_page.end()));
  expect_applies(d, old_page, new_page);
  DiffOptions no_undo;
  no_undo.record_undo = false;
  EXPECT_TRUE(diff(old_page, new_page, no_undo).undo_tail.empty());
}

TEST(Diff, RecordUndoFalseLeavesUndoEmpty) {
  std::mt19937_64 rng(0xd1ff0008);
  const Bytes old_page = random_bytes(rng, 500);
  const Bytes new_page = random_bytes(rng, 400);
  DiffOptions o;
  o.record_undo = false;
  Delta d;
  diff_into(old_page, new_page, d, {});  // fill undo first: diff_into must clear it
  diff_into(old_page, new_page, d, o);
  EXPECT_FALSE(d.has_undo);
  EXPECT_TRUE(d.undo.empty());
  EXPECT_TRUE(d.undo_tail.empty());
  EXPECT_NO_THROW(d.validate());
}

TEST(Diff, DiffIntoKeepsPageSourceIntentAndSetsEpochs) {
  Delta d;
  d.page = PageId::make(0, 42);
  d.source = 7;
  d.intent = "transfer";
  d.base_epoch = 99;
  d.epoch_count = 5;
  const Bytes a(64, std::byte{1});
  const Bytes b(65, std::byte{2});
  diff_into(a, b, d);
  EXPECT_EQ(d.page, PageId::make(0, 42));
  EXPECT_EQ(d.source, 7u);
  EXPECT_EQ(d.intent, "transfer");
  EXPECT_EQ(d.base_epoch, 0u);
  EXPECT_EQ(d.epoch_count, 1u);
}

TEST(Diff, DiffIntoReusesCapacityAfterWarmUp) {
  // Same-shaped work after a warm-up must not reallocate any vector of the output delta.
  std::mt19937_64 rng(0xd1ff0009);
  const Bytes base = random_bytes(rng, 4096);
  std::vector<Bytes> edits;
  for (int i = 0; i < 50; ++i) {
    Bytes e = base;
    for (int r = 0; r < 4; ++r) {
      const std::size_t at = rng() % 4000;
      for (std::size_t k = at; k < at + 10; ++k) e[k] = ~e[k];
    }
    edits.push_back(std::move(e));
  }
  Bytes dense_edit = random_bytes(rng, 4096);
  for (SimdLevel level : supported_levels()) {
    Delta d;
    diff_into(level, base, dense_edit, d);  // warm up with the largest output
    for (const Bytes& e : edits) diff_into(level, base, e, d);
    d.clear();
    const auto* ranges = d.ranges.data();
    const auto* payload = d.payload.data();
    const auto* undo = d.undo.data();
    for (const Bytes& e : edits) {
      diff_into(level, base, e, d);
      EXPECT_EQ(d.ranges.data(), ranges) << simd_level_name(level);
      EXPECT_EQ(d.payload.data(), payload);
      EXPECT_EQ(d.undo.data(), undo);
      Bytes page = base;
      mmsb::apply(d, page);
      EXPECT_EQ(page, e);
    }
  }
}

TEST(Diff, SimdLevelNamesAndActiveLevelWithinDetected) {
  EXPECT_STREQ(simd_level_name(SimdLevel::Scalar), "scalar");
  EXPECT_STREQ(simd_level_name(SimdLevel::Avx2), "avx2");
  EXPECT_STREQ(simd_level_name(SimdLevel::Avx512), "avx512");
  EXPECT_LE(active_simd_level(), detected_simd_level());
}

TEST(Diff, ForcingUnknownOrUnsupportedSimdLevelThrows) {
  const Bytes page(8);
  Delta d;
  try {
    diff_into(static_cast<SimdLevel>(9), page, page, d);
    FAIL() << "expected mmsb::Error";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::InvalidArgument);
  }
  // Only a CPU without AVX-512 can show the Unsupported error; on one that has it every level is legal, and the
  // loop below simply checks nothing.
  for (SimdLevel level : {SimdLevel::Avx2, SimdLevel::Avx512}) {
    if (level <= detected_simd_level()) continue;
    try {
      diff_into(level, page, page, d);
      FAIL() << "expected mmsb::Error for " << simd_level_name(level);
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), ErrorCode::Unsupported);
    }
  }
}

}  // namespace
}  // namespace mmsb
