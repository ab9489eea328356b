// mmsb-bench-mpi: the distributed-mode metrics, run under MPI (mmsb-bench forks a child per metric, which MPI
// does not allow, hence a separate driver). Rank 0 prints the medians; every metric's baseline is measured in the
// same run.
//
//   mpirun -np 2 build/release/bench/mmsb-bench-mpi [--json] [--repetitions N]
//
// Metrics:
//   mpi_allreduce_us      baseline: one MPI_Iallreduce of two uint64 plus its completion, on the same duplicated
//                         communicator kind the runtime uses (the floor of a superstep)
//   mpi_superstep_us      DistRuntime::propagate() with nothing to do: one local (empty) wave and one Allreduce
//   mpi_superstep_over_allreduce   the ratio of the two
//   mpi_bytes_ratio       bytes rank 0 sent / changed boundary bytes: 64 pages of 4 KiB owned by rank 0, each read
//                         by a node on rank 1; per wave every page gets one 256-byte edit (6% of the page)
//   mpi_bytes_ratio_64    the same with 64-byte edits (per-delta framing weighs more)
//   mpi_wave_us           one such wave (64 edited pages crossing ranks), for scale
#include <mpi.h>
#include <sched.h>

#include <algorithm>
#include <chrono>
#include <cinttypes>
#include <cstdio>
#include <cstring>
#include <optional>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "mmsb/dist.hpp"
#include "program/options.hpp"

namespace {

using clock_type = std::chrono::steady_clock;

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const std::size_t n = v.size();
  return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

// The same polling wait the runtime uses, without its deadline bookkeeping.
void wait(MPI_Request& request) {
  int done = 0;
  for (unsigned spin = 0; !done; ++spin) {
    MPI_Test(&request, &done, MPI_STATUS_IGNORE);
    if (spin >= 256 && !done) sched_yield();
  }
}

template <class Op>
double us_per_op(Op&& op, int iterations) {
  MPI_Barrier(MPI_COMM_WORLD);
  const auto start = clock_type::now();
  for (int i = 0; i < iterations; ++i) op();
  const double us = std::chrono::duration<double, std::micro>(clock_type::now() - start).count() / iterations;
  double slowest = 0;  // the rank that took longest defines the time
  MPI_Allreduce(&us, &slowest, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
  return slowest;
}

// Bytes sent per changed byte for `pages` 4 KiB pages on rank 0 read by rank 1, `edit` bytes changed per page and
// wave. Also returns the time of one wave.
double bytes_ratio(std::uint64_t edit, double* wave_us) {
  mmsb::dist::DistOptions options;
  options.propagation.threads = 1;
  mmsb::dist::DistRuntime d(options);
  const std::uint32_t reader = d.size() > 1 ? 1 : 0;
  constexpr int kPages = 64, kWaves = 40;
  constexpr std::uint64_t kPageBytes = 4096;
  std::vector<mmsb::PageId> pages, sums;
  for (int i = 0; i < kPages; ++i) {
    pages.push_back(d.create_page(0, kPageBytes));
    sums.push_back(d.create_page(reader, 8));
  }
  for (int i = 0; i < kPages; ++i) {
    d.derive_map(sums[i], {pages[i]}, [](mmsb::MapContext& c) {
      std::uint64_t s = 0;
      for (std::byte b : c.input(0)) s += static_cast<std::uint8_t>(b);
      c.output_as<std::uint64_t>() = s;
    });
  }
  std::mt19937_64 rng(42);
  std::vector<std::byte> buffer(edit);
  std::uint64_t changed = 0;
  const auto before = d.stats();
  const auto start = clock_type::now();
  for (int w = 0; w < kWaves; ++w) {
    if (d.rank() == 0) {
      auto txn = d.runtime().begin();
      for (const mmsb::PageId p : pages) {
        const std::uint64_t offset = (rng() % ((kPageBytes - edit) / 64 + 1)) * 64;
        const std::vector<std::byte> old = [&] {
          std::vector<std::byte> all = d.runtime().read_all(p);
          return std::vector<std::byte>(all.begin() + static_cast<std::ptrdiff_t>(offset),
                                        all.begin() + static_cast<std::ptrdiff_t>(offset + edit));
        }();
        // Every byte of the edit differs from the old one, so exactly `edit` bytes change.
        for (std::uint64_t i = 0; i < edit; ++i) {
          buffer[i] = old[i] ^ static_cast<std::byte>(1 + rng() % 255);
        }
        txn.write(p, offset, buffer);
        changed += edit;
      }
      txn.commit();
    }
    d.propagate();
  }
  *wave_us = std::chrono::duration<double, std::micro>(clock_type::now() - start).count() / kWaves;
  const auto after = d.stats();
  double ratio = 0;
  if (d.rank() == 0 && changed > 0) {
    ratio = static_cast<double>(after.bytes_sent - before.bytes_sent) / static_cast<double>(changed);
  }
  MPI_Bcast(&ratio, 1, MPI_DOUBLE, 0, MPI_COMM_WORLD);
  MPI_Bcast(wave_us, 1, MPI_DOUBLE, 0, MPI_COMM_WORLD);
  if (d.size() > 1 && d.rank() == reader) {  // the workload checks itself: the reader's replica equals the page
    if (d.read(pages[0]) != d.fetch(pages[0])) throw std::runtime_error("the replica differs from its page");
  } else if (d.size() > 1) {
    d.fetch(pages[0]);
  }
  return ratio;
}

struct Settings {
  bool json = false;
  int repetitions = 7;
};

int run(const Settings& settings) {
  const bool json = settings.json;
  const int repetitions = settings.repetitions;
  int rank = 0, size = 1;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &size);

  std::vector<double> allreduce, superstep, ratio256, ratio64, wave;
  {
    MPI_Comm comm;
    MPI_Comm_dup(MPI_COMM_WORLD, &comm);
    mmsb::dist::DistOptions options;
    options.propagation.threads = 1;
    mmsb::dist::DistRuntime d(options);
    const mmsb::PageId a = d.create_page(0, 8), b = d.create_page(static_cast<std::uint32_t>(size - 1), 8);
    d.derive_map(b, {a}, [](mmsb::MapContext& c) { c.output_as<std::int64_t>() = c.input_as<std::int64_t>(0); });
    d.propagate();
    for (int r = 0; r < repetitions; ++r) {
      const std::uint64_t in[2] = {1, 2};
      std::uint64_t out[2];
      allreduce.push_back(us_per_op(
          [&] {
            MPI_Request request;
            MPI_Iallreduce(in, out, 2, MPI_UINT64_T, MPI_MIN, comm, &request);
            wait(request);
          },
          2000));
      superstep.push_back(us_per_op([&] { d.propagate(); }, 2000));
    }
    MPI_Comm_free(&comm);
  }
  for (int r = 0; r < repetitions; ++r) {
    double w = 0;
    ratio256.push_back(bytes_ratio(256, &w));
    wave.push_back(w);
    ratio64.push_back(bytes_ratio(64, &w));
  }
  if (rank == 0) {
    const double ar = median(allreduce), ss = median(superstep);
    if (json) {
      std::printf(
          "{\"ranks\": %d, \"mpi_allreduce_us\": %.3f, \"mpi_superstep_us\": %.3f, "
          "\"mpi_superstep_over_allreduce\": %.3f, \"mpi_bytes_ratio\": %.4f, \"mpi_bytes_ratio_64\": %.4f, "
          "\"mpi_wave_us\": %.1f}\n",
          size, ar, ss, ss / ar, median(ratio256), median(ratio64), median(wave));
    } else {
      std::printf("ranks                         %d\n", size);
      std::printf("mpi_allreduce_us              %.3f   (baseline)\n", ar);
      std::printf("mpi_superstep_us              %.3f\n", ss);
      std::printf("mpi_superstep_over_allreduce  %.3f\n", ss / ar);
      std::printf("mpi_bytes_ratio               %.4f   (256-byte edits of 4 KiB pages)\n", median(ratio256));
      std::printf("mpi_bytes_ratio_64            %.4f   (64-byte edits)\n", median(ratio64));
      std::printf("mpi_wave_us                   %.1f   (64 edited pages crossing ranks)\n", median(wave));
    }
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  MPI_Init(&argc, &argv);
  Settings settings;
  CLI::App app{"mmsb-bench-mpi: the distributed-mode metrics, run under mpirun (rank 0 prints the medians)."};
  app.add_flag("--json", settings.json, "print one JSON object instead of a table");
  app.add_option("--repetitions,-r", settings.repetitions, "repetitions per metric; the median is reported")
      ->capture_default_str()
      ->check(mmsb::program::range(1, 1000));
  // Every rank parses the same command line, so a refusal ends every rank the same way.
  if (const std::optional<int> code = mmsb::program::parse("mmsb-bench-mpi", app, argc, argv)) {
    MPI_Finalize();
    return *code;
  }
  const int code = mmsb::program::guard("mmsb-bench-mpi", [&] { return run(settings); });
  // A rank that failed may have left the others inside a collective call: end them all.
  if (code != 0) MPI_Abort(MPI_COMM_WORLD, code);
  MPI_Finalize();
  return code;
}
