#include "heat.hpp"

#include <algorithm>
#include <array>
#include <cstring>
#include <limits>
#include <mutex>
#include <string>

namespace heat {
namespace {

using mmsb::MapContext;
using mmsb::PageId;

// The params page: what every node needs to interpret its inputs.
struct Params {
  float alpha;
  std::uint32_t side;   // cells per tile side
  std::uint32_t size;   // cells per grid side
  std::uint32_t tiles;  // tiles per grid side
};

struct TileStats {
  double min, max, sum;
};

struct SummaryBytes {
  double min, max, mean;
  std::uint32_t hottest_tile;
  std::uint32_t pad;
};

constexpr std::uint32_t kPagesPerTile = 7;  // cell, 4 edges, next, stats (creation order: see Heat::create)

Params params_of(const MapContext& c) { return c.input_as<Params>(0); }

const float* floats(std::span<const std::byte> bytes) { return reinterpret_cast<const float*>(bytes.data()); }

// Copies one boundary row or column of the tile in input 1 into the output.
template <bool Row>
void extract(MapContext& c, std::uint32_t index_of(std::uint32_t side)) {
  const std::uint32_t side = params_of(c).side;
  const float* cell = floats(c.input(1));
  float* out = reinterpret_cast<float*>(c.output().data());
  const std::uint32_t k = index_of(side);
  for (std::uint32_t i = 0; i < side; ++i) out[i] = Row ? cell[k * side + i] : cell[i * side + k];
}

std::uint32_t first(std::uint32_t) { return 0; }
std::uint32_t last(std::uint32_t side) { return side - 1; }

// next = c + alpha * ((n + s) + (w + e) - 4c), in this order for every cell and without FMA contraction (the
// kernel of mmsb::GpuMirror::derive_heat_tile, also run by heat_diffusion --gpu): the result does not depend on
// the thread or the device that computes it. Inputs: params, cell, the rows north and south of the tile, the
// columns west and east.
void stencil(MapContext& c) {
  const Params p = params_of(c);
  mmsb::heat_tile_step_cpu(floats(c.input(1)), floats(c.input(2)), floats(c.input(3)), floats(c.input(4)),
                           floats(c.input(5)), reinterpret_cast<float*>(c.output().data()), p.side, p.alpha);
}

void tile_stats(MapContext& c) {
  const std::span<const std::byte> bytes = c.input(0);
  const float* cell = floats(bytes);
  const std::size_t n = bytes.size() / sizeof(float);
  TileStats s{std::numeric_limits<double>::max(), std::numeric_limits<double>::lowest(), 0.0};
  for (std::size_t i = 0; i < n; ++i) {
    s.min = std::min<double>(s.min, cell[i]);
    s.max = std::max<double>(s.max, cell[i]);
    s.sum += cell[i];
  }
  c.output_as<TileStats>() = s;
}

// Inputs: params, then every tile's stats in row-major tile order.
void summarize(MapContext& c) {
  const Params p = params_of(c);
  SummaryBytes out{std::numeric_limits<double>::max(), std::numeric_limits<double>::lowest(), 0.0, 0, 0};
  double total = 0, hottest = std::numeric_limits<double>::lowest();
  for (std::size_t t = 1; t < c.input_count(); ++t) {
    const TileStats s = c.input_as<TileStats>(t);
    out.min = std::min(out.min, s.min);
    out.max = std::max(out.max, s.max);
    total += s.sum;
    if (s.sum > hottest) {
      hottest = s.sum;
      out.hottest_tile = static_cast<std::uint32_t>(t - 1);
    }
  }
  out.mean = total / (static_cast<double>(p.size) * p.size);
  c.output_as<SummaryBytes>() = out;
}

[[noreturn]] void bad_config(const std::string& what) { throw mmsb::Error(mmsb::ErrorCode::InvalidArgument, what); }

void check(const Config& config) {
  if (config.tiles == 0 || config.size == 0 || config.size % config.tiles != 0) {
    bad_config("--size " + std::to_string(config.size) + " must be a positive multiple of --tiles " +
               std::to_string(config.tiles));
  }
  if (config.size / config.tiles < 2) bad_config("tiles must be at least 2 x 2 cells");
  if (!(config.alpha > 0.0f && config.alpha < 0.25f)) bad_config("alpha must lie in (0, 0.25) to be stable");
}

}  // namespace

void register_functions() {
  static std::once_flag once;
  std::call_once(once, [] {
    auto& registry = mmsb::FunctionRegistry::global();
    registry.register_map("heat.edge_north", [](MapContext& c) { extract<true>(c, first); });
    registry.register_map("heat.edge_south", [](MapContext& c) { extract<true>(c, last); });
    registry.register_map("heat.edge_west", [](MapContext& c) { extract<false>(c, first); });
    registry.register_map("heat.edge_east", [](MapContext& c) { extract<false>(c, last); });
    registry.register_map("heat.stencil", stencil);
    registry.register_map("heat.tile_stats", tile_stats);
    registry.register_map("heat.summary", summarize);
  });
}

Heat::Heat(mmsb::Runtime& rt, const Config& config) : rt_(&rt), config_(config) { check(config); }

Heat Heat::create(mmsb::Runtime& rt, mmsb::Propagator& prop, const Config& config, TileStepper* stepper) {
  register_functions();
  Heat h(rt, config);
  if (rt.page_count() != 0) bad_config("Heat::create needs an empty runtime");
  const std::uint32_t side = h.tile_side();
  const std::uint64_t tile_bytes = std::uint64_t{side} * side * sizeof(float);
  const std::uint64_t edge_bytes = std::uint64_t{side} * sizeof(float);
  h.params_ = rt.create_page(sizeof(Params));
  h.meta_ = rt.create_page(sizeof(std::uint64_t));
  h.summary_ = rt.create_page(sizeof(SummaryBytes));
  const mmsb::Location where = stepper ? stepper->location() : mmsb::Location::Host;
  std::vector<std::array<PageId, 4>> edges(h.tile_count());
  for (std::uint32_t t = 0; t < h.tile_count(); ++t) {
    h.cells_.push_back(rt.create_page(tile_bytes, where));
    for (auto& e : edges[t]) e = rt.create_page(edge_bytes, where);
    h.next_.push_back(rt.create_page(tile_bytes, where));
    h.stats_.push_back(rt.create_page(sizeof(TileStats)));
  }
  {
    auto txn = rt.begin();
    txn.write_value(h.params_, 0, Params{config.alpha, side, config.size, config.tiles});
    txn.commit();
  }
  const char* const edge_fn[4] = {"heat.edge_north", "heat.edge_south", "heat.edge_west", "heat.edge_east"};
  const std::uint32_t tiles = config.tiles;
  for (std::uint32_t t = 0; t < h.tile_count(); ++t) {
    for (int k = 0; k < 4; ++k) prop.derive_map(edges[t][k], {h.params_, h.cells_[t]}, edge_fn[k]);
  }
  mmsb::NodeOptions every_cell_changes;
  every_cell_changes.always_changes = true;  // diffusion touches every cell: skip the cutoff diff
  for (std::uint32_t r = 0; r < tiles; ++r) {
    for (std::uint32_t c = 0; c < tiles; ++c) {
      const std::uint32_t t = r * tiles + c;
      const auto [north, south, west, east] = halo_of(edges, r, c, tiles);
      if (stepper) {
        stepper->derive(prop, h.next_[t], h.params_, h.cells_[t], {north, south, west, east}, config);
      } else {
        prop.derive_map(h.next_[t], {h.params_, h.cells_[t], north, south, west, east}, "heat.stencil",
                        every_cell_changes);
      }
      prop.derive_map(h.stats_[t], {h.cells_[t]}, "heat.tile_stats");
    }
  }
  std::vector<PageId> summary_inputs{h.params_};
  summary_inputs.insert(summary_inputs.end(), h.stats_.begin(), h.stats_.end());
  prop.derive_map(h.summary_, std::move(summary_inputs), "heat.summary");

  // The initial field: a hot square in the middle, 100 degrees; the wave computes everything derived.
  auto txn = rt.begin();
  txn.set_intent("initial field");
  std::vector<float> tile(std::size_t{side} * side);
  for (std::uint32_t t = 0; t < h.tile_count(); ++t) {
    initial_tile(config, t, tile);
    txn.write(h.cells_[t], 0, std::as_bytes(std::span<const float>(tile)));
  }
  txn.write_value<std::uint64_t>(h.meta_, 0, 0);
  txn.commit();
  return h;
}

void initial_tile(const Config& config, std::uint32_t t, std::span<float> tile) {
  const std::uint32_t side = config.size / config.tiles;
  const std::uint32_t r0 = t / config.tiles * side, c0 = t % config.tiles * side;
  for (std::uint32_t y = 0; y < side; ++y) {
    for (std::uint32_t x = 0; x < side; ++x) {
      const std::uint32_t gy = r0 + y, gx = c0 + x;
      const bool hot = gy >= config.size * 3 / 8 && gy < config.size * 5 / 8 && gx >= config.size * 3 / 8 &&
                       gx < config.size * 5 / 8;
      tile[y * side + x] = hot ? 100.0f : 0.0f;
    }
  }
}

std::array<PageId, 4> halo_of(const std::vector<TileEdges>& edges, std::uint32_t r, std::uint32_t c,
                              std::uint32_t tiles) {
  enum { N, S, W, E };
  const std::uint32_t t = r * tiles + c;
  return {r > 0 ? edges[t - tiles][S] : edges[t][N], r + 1 < tiles ? edges[t + tiles][N] : edges[t][S],
          c > 0 ? edges[t - 1][E] : edges[t][W], c + 1 < tiles ? edges[t + 1][W] : edges[t][E]};
}

Heat Heat::attach(mmsb::Runtime& rt, const Config& config) {
  register_functions();
  Heat h(rt, config);
  h.params_ = PageId::make(rt.options().rank, 1);
  h.meta_ = PageId::make(rt.options().rank, 2);
  h.summary_ = PageId::make(rt.options().rank, 3);
  if (!rt.contains(h.params_) || rt.info(h.params_).size != sizeof(Params)) {
    bad_config("the recovered state is not a heat simulation");
  }
  const Params p = rt.read_value<Params>(h.params_, 0);
  if (p.size != config.size || p.tiles != config.tiles) {
    bad_config("the recovered simulation has --size " + std::to_string(p.size) + " --tiles " + std::to_string(p.tiles) +
               "; run with those, or use another directory");
  }
  h.config_.alpha = p.alpha;
  for (std::uint32_t t = 0; t < h.tile_count(); ++t) {
    const std::uint64_t base = 4 + std::uint64_t{t} * kPagesPerTile;
    h.cells_.push_back(PageId::make(rt.options().rank, base));
    h.next_.push_back(PageId::make(rt.options().rank, base + 5));
    h.stats_.push_back(PageId::make(rt.options().rank, base + 6));
  }
  return h;
}

void Heat::step() {
  const std::uint64_t done = steps_done();
  auto txn = rt_->begin();
  txn.set_intent("step");
  {
    // Writes are copied when staged, so the view can go before the commit (whose wave rewrites `next`).
    mmsb::ReadView view = rt_->read_view(next_);
    for (std::size_t t = 0; t < cells_.size(); ++t) txn.write(cells_[t], 0, view.bytes(next_[t]));
  }
  txn.write_value<std::uint64_t>(meta_, 0, done + 1);
  txn.commit();
}

std::uint64_t Heat::steps_done() const { return rt_->read_value<std::uint64_t>(meta_, 0); }

Summary Heat::summary() const {
  const SummaryBytes s = rt_->read_value<SummaryBytes>(summary_, 0);
  return {s.min, s.max, s.mean, s.hottest_tile};
}

double Heat::energy() const {
  double total = 0;
  for (const float v : field()) total += v;
  return total;
}

std::vector<float> Heat::field() const {
  const std::uint32_t side = tile_side(), size = config_.size, tiles = config_.tiles;
  std::vector<float> out(std::size_t{size} * size);
  mmsb::ReadView view = rt_->read_view(cells_);
  for (std::uint32_t t = 0; t < tile_count(); ++t) {
    const float* cell = floats(view.bytes(cells_[t]));
    const std::uint32_t r0 = t / tiles * side, c0 = t % tiles * side;
    for (std::uint32_t y = 0; y < side; ++y) {
      std::memcpy(&out[std::size_t{r0 + y} * size + c0], cell + std::size_t{y} * side, side * sizeof(float));
    }
  }
  return out;
}

}  // namespace heat
