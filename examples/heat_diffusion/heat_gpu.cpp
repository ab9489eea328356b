#include "heat_gpu.hpp"

namespace heat {

void GpuTileStepper::derive(mmsb::Propagator&, mmsb::PageId next, mmsb::PageId, mmsb::PageId cell,
                            const std::array<mmsb::PageId, 4>& halo, const Config& config) {
  // The params page is not an input: alpha and the side are fixed for the node's life and passed as push
  // constants.
  gpu_->derive_heat_tile(next, cell, halo, {config.size / config.tiles, config.alpha});
}

}  // namespace heat
