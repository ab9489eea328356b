// Random commit records for the serialize tests: deltas with and without undo, growing and shrinking pages,
// created and deleted pages.
#pragma once

#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "mmsb/mmsb.hpp"
#include "serialize/codec.hpp"

namespace mmsb::testing {

inline std::vector<std::byte> random_bytes(std::mt19937_64& rng, std::size_t n) {
  std::vector<std::byte> out(n);
  for (auto& b : out) b = static_cast<std::byte>(rng() & 0xff);
  return out;
}

inline Delta random_delta(std::mt19937_64& rng, PageId page, std::size_t max_size = 300) {
  std::uniform_int_distribution<std::size_t> size_dist(0, max_size);
  std::vector<std::byte> before = random_bytes(rng, size_dist(rng));
  std::vector<std::byte> after = before;
  after.resize(rng() % 4 == 0 ? size_dist(rng) : before.size());
  const std::size_t changes = after.empty() ? 0 : rng() % 8;
  for (std::size_t i = 0; i < changes; ++i) after[rng() % after.size()] = static_cast<std::byte>(rng() & 0xff);
  DiffOptions options;
  options.record_undo = rng() % 3 != 0;
  Delta d = diff(before, after, options);
  d.page = page;
  d.base_epoch = rng() % 1000;
  d.source = static_cast<std::uint32_t>(rng() % 5);
  d.intent = rng() % 2 ? "transfer" : "";
  return d;
}

inline serialize::DecodedCommit random_commit(std::mt19937_64& rng, std::uint64_t lsn) {
  serialize::DecodedCommit c;
  c.lsn = lsn;
  c.timestamp_ns = rng();
  const std::size_t deltas = rng() % 4;
  for (std::size_t i = 0; i < deltas; ++i) c.deltas.push_back(random_delta(rng, PageId::make(0, i + 1)));
  if (rng() % 4 == 0) {
    c.created.push_back({PageId::make(static_cast<std::uint32_t>(rng() % 3), 1 + rng() % 100000), rng() % 5000,
                         static_cast<Location>(1 + rng() % 3),
                         rng() % 2 ? "particles/" + std::to_string(rng() % 100) : std::string()});
  }
  if (rng() % 4 == 0) c.deleted.push_back(PageId::make(0, 1 + rng() % 100000));
  if (rng() % 8 == 0) {
    c.renamed.push_back({PageId::make(0, 1 + rng() % 100000), rng() % 2 ? "tile " + std::to_string(rng() % 9) : ""});
  }
  return c;
}

}  // namespace mmsb::testing
