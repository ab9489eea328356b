// mmsb/dist_mpi.hpp — a DistRuntime over the application's own MPI communicator (includes <mpi.h>).
//
// For applications that call MPI themselves: they own MPI_Init/MPI_Finalize and may run mmsb on a
// sub-communicator. The DistRuntime duplicates the communicator, so mmsb's traffic never mixes with theirs.
//
//   MPI_Init(&argc, &argv);
//   {
//     mmsb::dist::DistRuntime d(mmsb::dist::communicator(MPI_COMM_WORLD));
//     ...
//   }                         // destroy every DistRuntime before MPI_Finalize
//   MPI_Finalize();
//
// Thread-safety: communicator() is a pure function.
#pragma once

#include <mpi.h>

#include "mmsb/dist.hpp"

namespace mmsb::dist {

inline Communicator communicator(MPI_Comm comm) { return Communicator::from_handle(&comm); }

}  // namespace mmsb::dist
