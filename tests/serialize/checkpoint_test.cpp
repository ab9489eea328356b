// Checkpoint files: round trips (stored and zstd), and damage — every truncation and every bit flip of a small
// checkpoint is Error(Corruption), never a crash or a silently different state.
#include "serialize/checkpoint.hpp"

#include <gtest/gtest.h>

#include <random>
#include <string>

#include "serialize/log.hpp"
#include "support/temp_dir.hpp"
#include "support/test_support.hpp"

namespace mmsb::serialize {
namespace {

using mmsb::testing::error_code_of;
using mmsb::testing::read_file;
using mmsb::testing::TempDir;

CheckpointState random_state(std::mt19937_64& rng, std::size_t pages) {
  CheckpointState s;
  s.lsn = 1 + rng() % 100000;
  s.created_ns = rng();
  s.rank = static_cast<std::uint32_t>(rng() % 4);
  s.next_sequence = pages * 2 + 1;
  for (std::size_t i = 0; i < pages; ++i) {
    PageImage img;
    img.id = PageId::make(s.rank, 2 * i + 1);
    img.epoch = rng() % 50;
    img.location = static_cast<Location>(1 + rng() % 3);
    img.size = rng() % 3 == 0 ? 0 : rng() % 5000;
    img.offset = s.arena.size();
    for (std::uint64_t b = 0; b < img.size; ++b) s.arena.push_back(static_cast<char>(b % 7 == 0 ? rng() : 0));
    s.pages.push_back(img);
  }
  for (std::size_t i = 0; i + 1 < pages; i += 2) {
    NodeDescription n;
    n.output = s.pages[i + 1].id;
    n.inputs = {s.pages[i].id};
    n.kind = static_cast<NodeKind>(rng() % 3);
    n.function = n.kind == NodeKind::Passthrough ? "" : "fn" + std::to_string(i);
    n.options.name = rng() % 2 ? "node" : "";
    n.options.always_changes = rng() % 2;
    n.remap = ByteRemap{rng() % 10, rng() % 100, rng() % 10};
    s.nodes.push_back(n);
    s.edges.push_back({s.pages[i].id, s.pages[i + 1].id, rng() % 2 ? EdgeKind::Control : EdgeKind::GpuSync});
  }
  return s;
}

void expect_same(const CheckpointState& a, const CheckpointState& b) {
  EXPECT_EQ(a.lsn, b.lsn);
  EXPECT_EQ(a.created_ns, b.created_ns);
  EXPECT_EQ(a.rank, b.rank);
  EXPECT_EQ(a.next_sequence, b.next_sequence);
  ASSERT_EQ(a.pages.size(), b.pages.size());
  for (std::size_t i = 0; i < a.pages.size(); ++i) {
    EXPECT_EQ(a.pages[i].id, b.pages[i].id);
    EXPECT_EQ(a.pages[i].epoch, b.pages[i].epoch);
    EXPECT_EQ(a.pages[i].location, b.pages[i].location);
    EXPECT_EQ(a.bytes(a.pages[i]), b.bytes(b.pages[i]));
  }
  ASSERT_EQ(a.nodes.size(), b.nodes.size());
  for (std::size_t i = 0; i < a.nodes.size(); ++i) {
    EXPECT_EQ(a.nodes[i].output, b.nodes[i].output);
    EXPECT_EQ(a.nodes[i].inputs, b.nodes[i].inputs);
    EXPECT_EQ(a.nodes[i].kind, b.nodes[i].kind);
    EXPECT_EQ(a.nodes[i].function, b.nodes[i].function);
    EXPECT_EQ(a.nodes[i].options.name, b.nodes[i].options.name);
    EXPECT_EQ(a.nodes[i].options.always_changes, b.nodes[i].options.always_changes);
    EXPECT_EQ(a.nodes[i].remap.input_offset, b.nodes[i].remap.input_offset);
    EXPECT_EQ(a.nodes[i].remap.length, b.nodes[i].remap.length);
    EXPECT_EQ(a.nodes[i].remap.output_offset, b.nodes[i].remap.output_offset);
  }
  ASSERT_EQ(a.edges.size(), b.edges.size());
  for (std::size_t i = 0; i < a.edges.size(); ++i) {
    EXPECT_EQ(a.edges[i].from, b.edges[i].from);
    EXPECT_EQ(a.edges[i].to, b.edges[i].to);
    EXPECT_EQ(a.edges[i].kind, b.edges[i].kind);
  }
}

TEST(Checkpoint, RoundTripsStoredAndCompressed) {
  TempDir dir;
  std::mt19937_64 rng(7);
  for (int level : {0, 1, 3, 9}) {
    for (std::size_t pages : {0, 1, 17, 300}) {
      CheckpointState s = random_state(rng, pages);
      CheckpointFileInfo info = write_checkpoint(dir.path(), s, level);
      EXPECT_EQ(info.file.filename().string(), checkpoint_file_name(s.lsn));
      EXPECT_EQ(info.file_bytes, std::filesystem::file_size(info.file));
      if (level > 0 && pages == 300) {
        EXPECT_LT(info.file_bytes, info.raw_bytes / 2);  // the pages are mostly zeros
      }
      SCOPED_TRACE("level " + std::to_string(level) + ", " + std::to_string(pages) + " pages");
      expect_same(read_checkpoint(info.file), s);
    }
  }
}

TEST(Checkpoint, FileNamesParse) {
  std::uint64_t lsn = 0;
  EXPECT_TRUE(parse_checkpoint_name(checkpoint_file_name(12345), lsn));
  EXPECT_EQ(lsn, 12345u);
  EXPECT_FALSE(parse_checkpoint_name("checkpoint-12345.mmsb", lsn));
  EXPECT_FALSE(parse_checkpoint_name(segment_file_name(1), lsn));
  EXPECT_FALSE(parse_checkpoint_name(checkpoint_file_name(1) + ".tmp", lsn));
}

TEST(Checkpoint, EveryTruncationIsCorruption) {
  TempDir dir;
  std::mt19937_64 rng(8);
  for (int level : {0, 3}) {
    CheckpointState s = random_state(rng, 4);
    const std::string bytes = read_file(write_checkpoint(dir.path(), s, level).file);
    for (std::size_t n = 0; n < bytes.size(); ++n) {
      ASSERT_EQ(error_code_of([&] { parse_checkpoint(std::string_view(bytes).substr(0, n), "t"); }),
                ErrorCode::Corruption)
          << "level " << level << ", truncated to " << n << " of " << bytes.size();
    }
  }
}

TEST(Checkpoint, EveryBitFlipIsCorruption) {
  TempDir dir;
  std::mt19937_64 rng(9);
  for (int level : {0, 3}) {
    CheckpointState s = random_state(rng, 3);
    const std::string bytes = read_file(write_checkpoint(dir.path(), s, level).file);
    std::size_t accepted = 0;
    for (std::size_t i = 0; i < bytes.size(); ++i) {
      for (int bit = 0; bit < 8; ++bit) {
        std::string damaged = bytes;
        damaged[i] = static_cast<char>(damaged[i] ^ (1 << bit));
        // Either the damage is detected, or it hit a bit the format ignores (zstd's frame header has an unused
        // one) and the state read is exactly the one written.
        try {
          CheckpointState read = parse_checkpoint(damaged, "t");
          SCOPED_TRACE("level " + std::to_string(level) + ", byte " + std::to_string(i) + " bit " +
                       std::to_string(bit) + " was accepted");
          expect_same(read, s);
          ++accepted;
        } catch (const Error& e) {
          ASSERT_EQ(e.code(), ErrorCode::Corruption) << e.what();
        }
      }
    }
    EXPECT_LT(accepted * 100, bytes.size() * 8) << "level " << level;  // a few ignored bits, no more
  }
}

TEST(Checkpoint, BodyLimitStopsADecompressionBomb) {
  TempDir dir;
  CheckpointState s;
  s.lsn = 1;
  s.next_sequence = 2;
  s.arena.assign(std::size_t{4} << 20, '\0');  // compresses to almost nothing
  s.pages.push_back({PageId::make(0, 1), 0, Location::Host, 0, s.arena.size()});
  const std::string bytes = read_file(write_checkpoint(dir.path(), s, 3).file);
  EXPECT_LT(bytes.size(), 4096u);
  EXPECT_EQ(error_code_of([&] { parse_checkpoint(bytes, "t", CheckpointLimits{1 << 20}); }), ErrorCode::Corruption);
  EXPECT_EQ(parse_checkpoint(bytes, "t").pages.at(0).size, s.arena.size());
}

TEST(Checkpoint, RejectsAnUnknownCompressionLevel) {
  TempDir dir;
  CheckpointState s;
  EXPECT_EQ(error_code_of([&] { write_checkpoint(dir.path(), s, 99); }), ErrorCode::InvalidArgument);
  EXPECT_EQ(error_code_of([&] { write_checkpoint(dir.path(), s, -1); }), ErrorCode::InvalidArgument);
}

}  // namespace
}  // namespace mmsb::serialize
