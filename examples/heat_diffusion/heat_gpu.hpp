// heat_gpu.hpp — heat_diffusion --gpu: each tile's next state as a device node on a GpuMirror.
//
// GpuTileStepper makes the cell, edge and next pages Location::Both and derives next[t] with
// GpuMirror::derive_heat_tile over the tile and its four halo pages (the edge pages of its neighbours). The edges
// and statistics stay host map nodes; the mirror uploads what they and the step commits change, runs the tiles'
// shaders inside the wave, and reads each next tile back as a delta. The kernel computes exactly the bits of the
// host node "heat.stencil" (both are mmsb::heat_tile_step_cpu), so the state hash is the same with and without
// --gpu, and with MMSB_VULKAN_DEVICE=none (the mirror's CPU fallback).
//
// Thread-safety: as the mirror's; the stepper itself holds no state but the mirror.
#pragma once

#include "heat.hpp"

namespace heat {

class GpuTileStepper final : public TileStepper {
 public:
  explicit GpuTileStepper(mmsb::GpuMirror& gpu) : gpu_(&gpu) {}
  mmsb::Location location() const override { return mmsb::Location::Both; }
  void derive(mmsb::Propagator& prop, mmsb::PageId next, mmsb::PageId params, mmsb::PageId cell,
              const std::array<mmsb::PageId, 4>& halo, const Config& config) override;

 private:
  mmsb::GpuMirror* gpu_;
};

}  // namespace heat
