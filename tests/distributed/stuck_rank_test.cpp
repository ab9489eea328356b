// ctest dist.stuck_rank (mpirun -np 2): a rank that stops making collective calls (hung, or dead without MPI
// noticing) must not hang the others. Rank 1 stops answering; rank 0's propagate() must throw Error(Aborted)
// naming the timed-out operation within DistOptions::timeout, and the runtime must then refuse further calls.
// Passes when rank 0 prints the PASS line (ctest matches it); the job's exit status is not used, since ranks that
// abandon MPI end without MPI_Finalize.
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <thread>

#include "mmsb/dist.hpp"

int main() {
  mmsb::dist::DistOptions options;
  options.propagation.threads = 1;
  options.timeout = std::chrono::seconds(2);
  mmsb::dist::DistRuntime d(options);
  if (d.size() != 2) {
    std::fprintf(stderr, "run with mpirun -np 2\n");
    return 2;
  }
  const mmsb::PageId a = d.create_page(0, 8), b = d.create_page(1, 8);
  d.derive_map(b, {a}, [](mmsb::MapContext& c) { c.output_as<std::int64_t>() = c.input_as<std::int64_t>(0) + 1; });
  d.propagate();  // both ranks take part: the runtime works
  if (d.rank() == 1) {
    std::this_thread::sleep_for(std::chrono::seconds(8));  // stuck: never reaches the next collective call
    std::_Exit(0);
  }
  const auto started = std::chrono::steady_clock::now();
  std::string first, second;
  try {
    d.propagate();
  } catch (const mmsb::Error& e) {
    if (e.code() == mmsb::ErrorCode::Aborted) first = e.what();
  }
  const double waited = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
  try {
    d.state_hash();
  } catch (const mmsb::Error& e) {
    second = e.what();
  }
  std::printf("rank 0 got: %s\nthen: %s\nafter %.1f s\n", first.c_str(), second.c_str(), waited);
  const bool ok = first.find("timed out") != std::string::npos && first.find("rank 0") != std::string::npos &&
                  second.find("unusable") != std::string::npos && waited >= 1.5 && waited < 6.0;
  if (ok) std::printf("PASS: a stuck peer gave a clear error on rank 0\n");
  std::fflush(stdout);
  std::_Exit(ok ? 0 : 1);
}
