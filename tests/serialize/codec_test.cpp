#include "serialize/codec.hpp"

#include <gtest/gtest.h>

#include <random>
#include <string>

#include "serialize/random_commit.hpp"
#include "support/test_support.hpp"

namespace mmsb::serialize {
namespace {

using mmsb::testing::error_code_of;
using mmsb::testing::random_commit;
using mmsb::testing::random_delta;

std::string corruption_message(std::string_view bytes) {
  try {
    decode_commit(bytes);
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::Corruption) << e.what();
    return e.what();
  }
  ADD_FAILURE() << "decode_commit accepted the bytes";
  return {};
}

TEST(Codec, RandomCommitsRoundTripEqual) {
  std::mt19937_64 rng(42);
  bool saw_undo = false, saw_resize = false, saw_created = false, saw_deleted = false;
  for (std::uint64_t lsn = 1; lsn <= 500; ++lsn) {
    DecodedCommit c = random_commit(rng, lsn);
    for (const Delta& d : c.deltas) {
      saw_undo |= d.has_undo;
      saw_resize |= d.size != d.base_size;
    }
    saw_created |= !c.created.empty();
    saw_deleted |= !c.deleted.empty();
    DecodedCommit back = decode_commit(encode_commit(c.record()));
    ASSERT_EQ(back, c) << "lsn " << lsn;
  }
  EXPECT_TRUE(saw_undo && saw_resize && saw_created && saw_deleted);
}

TEST(Codec, EmptyCommitRoundTrips) {
  CommitRecord r;
  r.lsn = 7;
  DecodedCommit back = decode_commit(encode_commit(r));
  EXPECT_EQ(back.lsn, 7u);
  EXPECT_TRUE(back.deltas.empty() && back.created.empty() && back.deleted.empty());
}

TEST(Codec, DeltaRoundTripsAlone) {
  std::mt19937_64 rng(3);
  for (int i = 0; i < 200; ++i) {
    Delta d = random_delta(rng, PageId::make(2, 9));
    EXPECT_EQ(decode_delta(encode_delta(d)), d);
  }
}

// Delta::intent is an arbitrary std::string; a tag that is not UTF-8 must survive the log like any other bytes
// (a proto3 `string` field would make such a record unparsable, and the log unrecoverable).
TEST(Codec, DeltaBatchRoundTripsWithoutUndo) {
  std::mt19937_64 rng(11);
  std::vector<Delta> deltas;
  for (int i = 0; i < 5; ++i) deltas.push_back(random_delta(rng, PageId::make(3, 10 + i)));
  std::vector<const Delta*> pointers;
  for (const Delta& d : deltas) pointers.push_back(&d);
  std::string bytes = "prefix";  // appended after what `out` holds
  mmsb::serialize::append_delta_batch(3, 7, 2, pointers, bytes);
  ASSERT_EQ(bytes.substr(0, 6), "prefix");
  const auto batch = mmsb::serialize::decode_delta_batch(std::string_view(bytes).substr(6));
  EXPECT_EQ(batch.source_rank, 3u);
  EXPECT_EQ(batch.wave, 7u);
  EXPECT_EQ(batch.superstep, 2u);
  ASSERT_EQ(batch.deltas.size(), deltas.size());
  for (std::size_t i = 0; i < deltas.size(); ++i) {
    Delta expected = deltas[i];
    expected.has_undo = false;  // batches never carry undo bytes
    expected.undo.clear();
    expected.undo_tail.clear();
    EXPECT_EQ(batch.deltas[i], expected) << i;
  }
}

TEST(Codec, DeltaBatchGarbageIsCorruption) {
  EXPECT_EQ(error_code_of([] { mmsb::serialize::decode_delta_batch(std::string("\x22\x80", 2)); }),
            ErrorCode::Corruption);
}

TEST(Codec, IntentThatIsNotUtf8RoundTrips) {
  std::mt19937_64 rng(4);
  Delta d = random_delta(rng, PageId::make(0, 3));
  d.intent = std::string("\xff\xfe tag \xc3\x28", 10);
  EXPECT_EQ(decode_delta(encode_delta(d)), d);
}

TEST(Codec, GarbageIsCorruption) {
  EXPECT_EQ(error_code_of([] { decode_commit(std::string(16, '\xff')); }), ErrorCode::Corruption);
  EXPECT_EQ(error_code_of([] { decode_delta(std::string("\x0a\x80", 2)); }), ErrorCode::Corruption);
  // Field 3 (deltas) claiming 100 bytes that are not there.
  EXPECT_EQ(error_code_of([] { decode_commit(std::string("\x1a\x64\x08\x01", 4)); }), ErrorCode::Corruption);
}

TEST(Codec, TruncatedCommitIsCorruption) {
  DecodedCommit c;
  c.lsn = 5;
  c.deleted = {PageId::make(0, 300), PageId::make(0, 400)};  // packed, encoded last
  std::string bytes = encode_commit(c.record());
  bytes.pop_back();
  EXPECT_NE(corruption_message(bytes).find("cannot parse"), std::string::npos);
}

TEST(Codec, EveryTruncationEitherDecodesOrIsCorruption) {
  std::mt19937_64 rng(11);
  DecodedCommit c = random_commit(rng, 99);
  while (c.deltas.empty()) c = random_commit(rng, 99);
  const std::string bytes = encode_commit(c.record());
  for (std::size_t n = 0; n < bytes.size(); ++n) {
    try {
      decode_commit(std::string_view(bytes).substr(0, n));
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), ErrorCode::Corruption) << n;
    }
  }
}

TEST(Codec, InvalidDeltaIsCorruptionNamingTheDelta) {
  DecodedCommit c;
  c.lsn = 12;
  Delta d;
  d.page = PageId::make(0, 4);
  d.epoch_count = 1;
  d.base_size = d.size = 8;
  d.ranges = {{2, 4}};
  d.payload.resize(3);  // one byte short
  c.deltas.push_back(d);
  const std::string msg = corruption_message(encode_commit(c.record()));
  EXPECT_NE(msg.find("commit LSN 12 delta 0 (page p0:4)"), std::string::npos) << msg;
  EXPECT_EQ(error_code_of([&] { decode_delta(encode_delta(d)); }), ErrorCode::Corruption);
}

TEST(Codec, MoreRangesThanPayloadBytesIsCorruption) {
  Delta d;
  d.page = PageId::make(0, 1);
  d.size = d.base_size = 1000;
  for (std::uint64_t i = 0; i < 10; ++i) d.ranges.push_back({i * 10, 1});
  d.payload.resize(2);
  EXPECT_EQ(error_code_of([&] { decode_delta(encode_delta(d)); }), ErrorCode::Corruption);
}

TEST(Codec, UnknownLocationIsCorruption) {
  for (unsigned location : {0u, 4u, 255u}) {
    DecodedCommit c;
    c.lsn = 1;
    c.created.push_back({PageId::make(0, 1), 64, static_cast<Location>(location)});
    const std::string msg = corruption_message(encode_commit(c.record()));
    EXPECT_NE(msg.find("location " + std::to_string(location)), std::string::npos) << msg;
  }
}

TEST(Codec, InvalidPageIdIsCorruption) {
  DecodedCommit c;
  c.lsn = 1;
  c.deleted.push_back(PageId(0));
  EXPECT_EQ(error_code_of([&] { decode_commit(encode_commit(c.record())); }), ErrorCode::Corruption);
}

TEST(Codec, BadPageNamesAreCorruption) {
  for (const std::string& bad :
       {std::string("p0:3"), std::string("12"), std::string("tab\there"), std::string(1025, 'x')}) {
    DecodedCommit created;
    created.lsn = 1;
    created.created.push_back({PageId::make(0, 1), 8, Location::Host, bad});
    const std::string msg = corruption_message(encode_commit(created.record()));
    EXPECT_NE(msg.find("created page p0:1 has a bad page name"), std::string::npos) << msg;
    DecodedCommit renamed;
    renamed.lsn = 2;
    renamed.renamed.push_back({PageId::make(0, 1), bad});
    EXPECT_EQ(error_code_of([&] { decode_commit(encode_commit(renamed.record())); }), ErrorCode::Corruption);
  }
}

TEST(Codec, NamesRoundTripAndAnEmptyNameMeansNone) {
  DecodedCommit c;
  c.lsn = 3;
  c.created.push_back({PageId::make(0, 1), 8, Location::Host, "particles/3"});
  c.created.push_back({PageId::make(0, 2), 8, Location::Host, ""});
  c.renamed.push_back({PageId::make(0, 1), "particles/4"});
  c.renamed.push_back({PageId::make(0, 2), ""});
  EXPECT_EQ(decode_commit(encode_commit(c.record())), c);
}

// Sizes and epochs read from a log never reach an allocator or an addition unchecked.
TEST(Codec, PageSizesBeyondAnyAddressSpaceAndEpochOverflowsAreCorruption) {
  for (std::uint64_t size : {std::uint64_t{1} << 49, ~std::uint64_t{0}}) {
    DecodedCommit created;
    created.lsn = 1;
    created.created.push_back({PageId::make(0, 1), size, Location::Host});
    EXPECT_EQ(error_code_of([&] { decode_commit(encode_commit(created.record())); }), ErrorCode::Corruption);
    DecodedCommit resized;
    resized.lsn = 2;
    Delta d;
    d.page = PageId::make(0, 1);
    d.base_size = 8;
    d.size = size;
    d.epoch_count = 1;
    resized.deltas.push_back(d);
    EXPECT_EQ(error_code_of([&] { decode_commit(encode_commit(resized.record())); }), ErrorCode::Corruption);
  }
  DecodedCommit wrap;
  wrap.lsn = 3;
  Delta d;
  d.page = PageId::make(0, 1);
  d.base_size = d.size = 8;
  d.base_epoch = ~std::uint64_t{0};
  d.epoch_count = 2;
  wrap.deltas.push_back(d);
  EXPECT_EQ(error_code_of([&] { decode_commit(encode_commit(wrap.record())); }), ErrorCode::Corruption);
}

}  // namespace
}  // namespace mmsb::serialize

namespace mmsb::serialize {
namespace {

TEST(Codec, EveryEventKindRoundTrips) {
  std::mt19937_64 rng(11);
  for (int k = 0; k <= static_cast<int>(EventKind::Error); ++k) {
    Event e;
    e.kind = static_cast<EventKind>(k);
    e.page = PageId::make(static_cast<std::uint32_t>(rng() % 4), 1 + rng() % 1000);
    e.lsn = rng();
    e.epoch = rng();
    e.wave = rng();
    e.duration_ns = rng();
    e.message = k % 2 ? std::string("node failed: \xff\x00 bytes", 22) : "";
    Event back = decode_event(encode_event(e));
    EXPECT_EQ(back.kind, e.kind);
    EXPECT_EQ(back.page, e.page);
    EXPECT_EQ(back.lsn, e.lsn);
    EXPECT_EQ(back.epoch, e.epoch);
    EXPECT_EQ(back.wave, e.wave);
    EXPECT_EQ(back.duration_ns, e.duration_ns);
    EXPECT_EQ(back.message, e.message);
  }
}

TEST(Codec, UnknownEventKindAndGarbageAreCorruption) {
  Event e;
  e.kind = EventKind::Error;
  std::string bytes = encode_event(e);
  ASSERT_GE(bytes.size(), 2u);
  ASSERT_EQ(bytes[0], 0x08);  // field 1 (kind), varint
  bytes[1] = 13;              // one past the last kind
  EXPECT_EQ(mmsb::testing::error_code_of([&] { decode_event(bytes); }), ErrorCode::Corruption);
  EXPECT_EQ(mmsb::testing::error_code_of([&] { decode_event("\xff\xff\xff"); }), ErrorCode::Corruption);
}

}  // namespace
}  // namespace mmsb::serialize
