// tests/distributed/dist_support.hpp — helpers shared by the distributed-mode tests (run under mpirun).
#pragma once

#include <mpi.h>

#include <unistd.h>

#include <filesystem>
#include <string>

namespace mmsb::testing {

// A fresh directory path for the whole job, named by rank 0 (its pid and the job size) and broadcast to every rank.
inline std::string shared_temp_dir(const std::string& prefix) {
  std::string dir;
  int rank = 0, size = 1;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  if (rank == 0) {
    dir = (std::filesystem::temp_directory_path() / (prefix + std::to_string(::getpid()) + "-" + std::to_string(size)))
              .string();
    std::filesystem::remove_all(dir);
  }
  int length = static_cast<int>(dir.size());
  MPI_Bcast(&length, 1, MPI_INT, 0, MPI_COMM_WORLD);
  dir.resize(static_cast<std::size_t>(length));
  MPI_Bcast(dir.data(), length, MPI_CHAR, 0, MPI_COMM_WORLD);
  return dir;
}

}  // namespace mmsb::testing
