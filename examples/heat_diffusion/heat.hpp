// heat.hpp — a 2-D heat simulation on mmsb pages (the model behind examples/heat_diffusion; no CLI here).
//
// The grid (size x size float cells, insulated borders) is split into tiles x tiles square tiles. Pages:
//   params      alpha and the tile side, an input of every node (so nodes restored from a checkpoint need no
//               outside state)
//   meta        the completed step count, committed together with the cells of each step (resumable)
//   cell[t]     a tile's cells (row-major floats) — the only pages the application writes
//   edge[t][k]  a tile's north, south, west and east boundary rows/columns, derived from cell[t]
//   next[t]     the tile one step later: a 5-point stencil over cell[t] and the neighbours' facing edges; at a
//               border the tile's own edge stands in for the missing neighbour (zero flux: energy is conserved)
//   stats[t]    min, max and sum of cell[t]; `summary` combines them (min, max, mean, hottest tile)
// One step is one transaction that copies every next[t] into cell[t] and advances meta; the wave it triggers
// recomputes edges, next tiles and statistics. Node functions are registered by name, so a DurableRuntime
// checkpoint restores the whole graph.
//
// Thread-safety: a Heat is driven from one thread; its waves use the propagator's worker threads.
#pragma once

#include <array>
#include <cstdint>
#include <span>
#include <vector>

#include "mmsb/mmsb.hpp"

namespace heat {

struct Config {
  std::uint32_t size = 256;  // cells per side
  std::uint32_t tiles = 4;   // tiles per side (size must be a multiple)
  float alpha = 0.2f;        // diffusion number (stable below 0.25)
};

struct Summary {
  double min = 0, max = 0, mean = 0;
  std::uint32_t hottest_tile = 0;  // row-major tile index of the highest tile mean
};

// How next[t] is computed. Heat::create() without one declares the host map node "heat.stencil"; heat_gpu.hpp
// supplies device nodes on a GpuMirror. Every stepper computes mmsb::heat_tile_step_cpu()'s bits.
class TileStepper {
 public:
  virtual ~TileStepper() = default;
  // Where the cell, edge and next pages live (their ids do not depend on it).
  virtual mmsb::Location location() const = 0;
  // Derives `next` from `cell` and its halo {north, south, west, east} (`params` is the params page).
  virtual void derive(mmsb::Propagator& prop, mmsb::PageId next, mmsb::PageId params, mmsb::PageId cell,
                      const std::array<mmsb::PageId, 4>& halo, const Config& config) = 0;
};

// Registers the node functions in FunctionRegistry::global() (once per process).
void register_functions();

// Edge pages of one tile, in the order north, south, west, east (each a row or column of the tile's boundary).
using TileEdges = std::array<mmsb::PageId, 4>;
// The four halo inputs of the stencil of tile (r, c) on a tiles x tiles grid: each neighbour's facing edge, or the
// tile's own edge where there is no neighbour (the flux across the border is then zero).
std::array<mmsb::PageId, 4> halo_of(const std::vector<TileEdges>& edges, std::uint32_t r, std::uint32_t c,
                                    std::uint32_t tiles);

// The initial field of tile t (row-major) of a config.tiles x config.tiles grid, into `tile` (side x side floats,
// side = size / tiles): a hot square of 100 degrees in the middle of the grid, 0 elsewhere. Every mode starts
// from it, so that they end with the same state hash.
void initial_tile(const Config& config, std::uint32_t t, std::span<float> tile);

class Heat {
 public:
  // Builds the pages and the graph in an empty runtime (rt.page_count() == 0), with a hot square in the middle.
  // `stepper` (optional, must outlive the call) derives the next tiles instead of the host stencil node.
  static Heat create(mmsb::Runtime& rt, mmsb::Propagator& prop, const Config& config, TileStepper* stepper = nullptr);
  // Attaches to the pages of a runtime recovered from a directory Heat::create() filled (ids are deterministic).
  // Throws mmsb::Error(InvalidArgument) when the recovered state has another size or tiling.
  static Heat attach(mmsb::Runtime& rt, const Config& config);

  // Runs one step (one commit, one wave).
  void step();
  std::uint64_t steps_done() const;
  Summary summary() const;
  double energy() const;  // sum of all cells, in double
  // The whole field, row-major.
  std::vector<float> field() const;
  mmsb::PageId summary_page() const { return summary_; }
  const Config& config() const { return config_; }

 private:
  Heat(mmsb::Runtime& rt, const Config& config);
  std::uint32_t tile_side() const { return config_.size / config_.tiles; }
  std::uint32_t tile_count() const { return config_.tiles * config_.tiles; }

  mmsb::Runtime* rt_;
  Config config_;
  mmsb::PageId params_, meta_, summary_;
  std::vector<mmsb::PageId> cells_, next_, stats_;
};

}  // namespace heat
