// heat_dist.hpp — the heat simulation of heat.hpp on several MPI ranks (mmsb/dist.hpp).
//
// The same pages and registered node functions as heat.cpp, declared through a DistRuntime: the tiles are split
// into bands of tile rows, one band per rank; each tile's cells, edges, next state and statistics live on the
// tile's rank. The stencil of a tile at a band's border reads the facing edge of the neighbouring band's tile:
// a cross-rank edge, so that edge row travels as a delta each step. params, meta and summary live on rank 0
// (params is replicated everywhere; summary reads every tile's statistics). Every rank count ends in the same
// state, so `mpirun -np N heat_diffusion --steps S --hash` prints the same state-hash for every N.
//
// Thread-safety: called once per rank, from the rank's main thread.
#pragma once

#include <cstdint>
#include <cstdlib>

#include "heat.hpp"

namespace heat {

struct DistRunOptions {
  Config config;
  std::uint64_t steps = 500;
  std::uint64_t report_every = 0;  // 0: steps / 10
  unsigned threads = 1;            // local propagator threads per rank
  bool hash = false;
  bool timing = false;  // print "time-per-step-us: X" (rank 0) for the weak-scaling benchmark
};

// True when the process was started by mpirun (Open MPI sets OMPI_COMM_WORLD_SIZE; PMI_SIZE elsewhere).
inline bool launched_by_mpirun() {
  return std::getenv("OMPI_COMM_WORLD_SIZE") != nullptr || std::getenv("PMI_SIZE") != nullptr;
}

// Runs the simulation on every rank of MPI_COMM_WORLD; rank 0 prints. Returns the process exit code.
int run_distributed(const DistRunOptions& options);

}  // namespace heat
