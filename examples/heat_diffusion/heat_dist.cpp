#include "heat_dist.hpp"

#include <algorithm>
#include <array>
#include <chrono>
#include <cinttypes>
#include <cstdio>
#include <cstring>
#include <vector>

#include "mmsb/dist.hpp"

namespace heat {
namespace {

using mmsb::PageId;

// The byte layouts of heat.cpp's pages (params, tile statistics, summary).
struct Params {
  float alpha;
  std::uint32_t side, size, tiles;
};
struct TileStats {
  double min, max, sum;
};
struct SummaryBytes {
  double min, max, mean;
  std::uint32_t hottest_tile, pad;
};

template <class T>
T value_of(const std::vector<std::byte>& bytes) {
  T out;
  std::memcpy(&out, bytes.data(), sizeof(T));
  return out;
}

// The pages of the simulation on every rank (ids are the same everywhere; each rank owns some).
struct DistPages {
  PageId params, meta, summary;
  std::vector<PageId> cells, next, stats;
};

// Creates the pages in heat.cpp's order, the tiles of a band of tile rows on each rank (tile row r belongs to
// rank r * ranks / tiles), and declares the same nodes as Heat::create().
DistPages create_pages(mmsb::dist::DistRuntime& d, const Config& config) {
  const std::uint32_t ranks = d.size(), tiles = config.tiles, count = tiles * tiles, side = config.size / tiles;
  auto owner = [&](std::uint32_t t) { return static_cast<std::uint32_t>(std::uint64_t{t / tiles} * ranks / tiles); };
  const std::uint64_t tile_bytes = std::uint64_t{side} * side * sizeof(float), edge_bytes = side * sizeof(float);
  DistPages p;
  p.params = d.create_page(0, sizeof(Params));
  p.meta = d.create_page(0, sizeof(std::uint64_t));
  p.summary = d.create_page(0, sizeof(SummaryBytes));
  std::vector<std::array<PageId, 4>> edges(count);
  for (std::uint32_t t = 0; t < count; ++t) {
    p.cells.push_back(d.create_page(owner(t), tile_bytes));
    for (auto& e : edges[t]) e = d.create_page(owner(t), edge_bytes);
    p.next.push_back(d.create_page(owner(t), tile_bytes));
    p.stats.push_back(d.create_page(owner(t), sizeof(TileStats)));
  }
  if (d.owns(p.params)) {
    auto txn = d.runtime().begin();
    txn.write_value(p.params, 0, Params{config.alpha, side, config.size, tiles});
    txn.commit();
  }
  const char* const edge_fn[4] = {"heat.edge_north", "heat.edge_south", "heat.edge_west", "heat.edge_east"};
  for (std::uint32_t t = 0; t < count; ++t) {
    for (int k = 0; k < 4; ++k) d.derive_map(edges[t][k], {p.params, p.cells[t]}, edge_fn[k]);
  }
  mmsb::NodeOptions every_cell_changes;
  every_cell_changes.always_changes = true;
  for (std::uint32_t r = 0; r < tiles; ++r) {
    for (std::uint32_t c = 0; c < tiles; ++c) {
      const std::uint32_t t = r * tiles + c;
      const auto [north, south, west, east] = halo_of(edges, r, c, tiles);
      d.derive_map(p.next[t], {p.params, p.cells[t], north, south, west, east}, "heat.stencil", every_cell_changes);
      d.derive_map(p.stats[t], {p.cells[t]}, "heat.tile_stats");
    }
  }
  std::vector<PageId> summary_inputs{p.params};
  summary_inputs.insert(summary_inputs.end(), p.stats.begin(), p.stats.end());
  d.derive_map(p.summary, std::move(summary_inputs), "heat.summary");
  return p;
}

// The initial field, each rank writing its own tiles, and the wave that derives everything from it.
void write_initial_field(mmsb::dist::DistRuntime& d, const Config& config, const DistPages& p) {
  auto txn = d.runtime().begin();
  const std::uint32_t side = config.size / config.tiles;
  std::vector<float> tile(std::size_t{side} * side);
  for (std::uint32_t t = 0; t < p.cells.size(); ++t) {
    if (!d.owns(p.cells[t])) continue;
    initial_tile(config, t, tile);
    txn.write(p.cells[t], 0, std::as_bytes(std::span<const float>(tile)));
  }
  if (d.owns(p.meta)) txn.write_value<std::uint64_t>(p.meta, 0, 0);
  txn.commit();
  d.propagate();
}

}  // namespace

int run_distributed(const DistRunOptions& opt) {
  register_functions();
  mmsb::dist::DistOptions options;
  options.propagation.threads = opt.threads;
  mmsb::dist::DistRuntime d(options);
  const Config& config = opt.config;
  if (config.tiles == 0 || config.size % config.tiles != 0 || config.size / config.tiles < 2 ||
      !(config.alpha > 0.0f && config.alpha < 0.25f)) {
    throw mmsb::Error(mmsb::ErrorCode::InvalidArgument,
                      "--size must be a multiple of --tiles with tiles of at "
                      "least 2 x 2 cells, and alpha in (0, 0.25)");
  }
  const DistPages p = create_pages(d, config);
  write_initial_field(d, config, p);
  const bool root = d.rank() == 0;
  auto energy = [&] { return value_of<SummaryBytes>(d.fetch(p.summary)).mean * config.size * config.size; };
  const double energy_start = energy();
  if (root) std::printf("distributed over %u ranks (bands of tile rows)\n", d.size());

  const std::uint64_t every = opt.report_every > 0 ? opt.report_every : std::max<std::uint64_t>(1, opt.steps / 10);
  std::vector<PageId> own_cells, own_next;
  for (std::size_t t = 0; t < p.cells.size(); ++t) {
    if (d.owns(p.cells[t])) {
      own_cells.push_back(p.cells[t]);
      own_next.push_back(p.next[t]);
    }
  }
  const auto started = std::chrono::steady_clock::now();
  for (std::uint64_t step = 1; step <= opt.steps; ++step) {
    auto txn = d.runtime().begin();
    txn.set_intent("step");
    if (!own_next.empty()) {
      mmsb::ReadView view = d.runtime().read_view(own_next);
      for (std::size_t i = 0; i < own_cells.size(); ++i) txn.write(own_cells[i], 0, view.bytes(own_next[i]));
    }
    if (d.owns(p.meta)) txn.write_value<std::uint64_t>(p.meta, 0, step);
    txn.commit();
    d.propagate();
    if (root && (step % every == 0 || step == opt.steps)) {
      const SummaryBytes s = value_of<SummaryBytes>(d.read(p.summary));
      std::printf("step %6" PRIu64 "  min %8.4f  max %8.4f  mean %8.5f  hottest tile (%u,%u)\n", step, s.min, s.max,
                  s.mean, s.hottest_tile / config.tiles, s.hottest_tile % config.tiles);
      std::fflush(stdout);
    }
  }
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
  const double energy_end = energy();
  const std::uint64_t hash = d.state_hash();
  if (root) {
    std::printf("energy %.6e -> %.6e (relative change %.2e)\n", energy_start, energy_end,
                energy_start != 0 ? (energy_end - energy_start) / energy_start : 0.0);
    if (opt.timing) {
      std::printf("time-per-step-us: %.1f\n", opt.steps ? seconds * 1e6 / static_cast<double>(opt.steps) : 0.0);
    }
    if (opt.hash) std::printf("state-hash: %016" PRIx64 "\n", hash);
  }
  return 0;
}

}  // namespace heat
