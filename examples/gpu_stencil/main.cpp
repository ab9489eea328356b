// gpu_stencil: 2-D heat diffusion as a device node. A hot spot is held at a fixed temperature in the middle of a cold
// plate; each wave the stencil node computes `steps` diffusion steps of the plate on the GPU mirror (or the CPU
// fallback), its result comes back as a delta of only the cells that changed, and the program commits that result
// as the plate's next state (only the cells that changed), which the mirror uploads as a sparse delta again.
//
//   gpu_stencil [--size N] [--waves N] [--steps N]
//
// It prints the backend, then one line per 10 waves, then `checksum 0x...`: the same on every backend.
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include <mmsb/mmsb.hpp>

#include "program/memory.hpp"
#include "program/options.hpp"

namespace {

using mmsb::program::range;

struct Options {
  std::uint32_t size = 96;
  std::uint32_t waves = 40;
  std::uint32_t steps = 4;
};

constexpr std::int32_t kHot = 1 << 20;  // temperatures stay far below 2^27, as the stencil requires

std::uint64_t fnv1a(const std::vector<std::byte>& bytes) {
  std::uint64_t h = 1469598103934665603ull;
  for (std::byte b : bytes) h = (h ^ static_cast<std::uint8_t>(b)) * 1099511628211ull;
  return h;
}

int run(const Options& o) {
  const std::uint32_t n = o.size;
  const std::uint64_t bytes = std::uint64_t{n} * n * 4;

  mmsb::Runtime rt;
  mmsb::Propagator prop(rt);
  mmsb::GpuMirror gpu(rt, prop);
  std::printf("backend %s (%s)\n", gpu.backend() == mmsb::GpuBackend::Vulkan ? "vulkan" : "cpu",
              gpu.device_name().c_str());

  // The plate is written by the host and read by the device node; the next state is read back (Both), so the
  // host can commit it as the plate's next state.
  mmsb::PageId plate = rt.create_page(bytes, mmsb::Location::Both);
  mmsb::PageId next = rt.create_page(bytes, mmsb::Location::Both);
  gpu.derive_stencil5(next, plate, {n, n, o.steps});

  const std::uint32_t spot = n / 2 * n + n / 2;
  {
    auto txn = rt.begin();
    txn.write_value<std::int32_t>(plate, std::uint64_t{spot} * 4, kHot);
    txn.commit();  // the wave computes `next`
  }
  std::uint64_t changed = 0;
  for (std::uint32_t wave = 1; wave <= o.waves; ++wave) {
    std::vector<std::byte> state = rt.read_all(next);
    std::int32_t hot = kHot;
    std::memcpy(state.data() + std::uint64_t{spot} * 4, &hot, 4);  // the heater keeps the spot hot
    // Commit only the cells that changed: as a sparse delta, which is also all the mirror uploads.
    mmsb::Delta step = mmsb::diff(rt.read_all(plate), state);
    step.page = plate;
    step.base_epoch = rt.info(plate).epoch;
    auto txn = rt.begin();
    txn.apply(step);
    txn.commit();
    for (const mmsb::Delta& d : txn.committed_deltas()) changed += d.changed_bytes();
    if (wave % 10 == 0) {
      std::int64_t total = 0;
      for (std::uint32_t c = 0; c < n * n; ++c) total += rt.read_value<std::int32_t>(next, std::uint64_t{c} * 4);
      std::printf("wave %u: heat %lld\n", wave, static_cast<long long>(total));
    }
  }
  const mmsb::GpuStats s = gpu.stats();
  std::printf("bytes changed %llu, uploaded %llu, read back %llu, dispatches %llu\n",
              static_cast<unsigned long long>(changed), static_cast<unsigned long long>(s.bytes_uploaded),
              static_cast<unsigned long long>(s.bytes_read_back), static_cast<unsigned long long>(s.dispatches));
  std::printf("checksum 0x%016llx\n", static_cast<unsigned long long>(fnv1a(rt.read_all(next))));
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  Options o;
  CLI::App app{
      "gpu_stencil: 2-D heat diffusion as a device node on the GPU mirror (Vulkan, or its CPU fallback). Prints "
      "the backend, a line per 10 waves and `checksum 0x...`, the same on every backend."};
  app.add_option("--size", o.size, "cells per side of the plate")->capture_default_str()->check(range(3u, 4096u));
  app.add_option("--waves", o.waves, "waves (one commit of the plate each)")
      ->capture_default_str()
      ->check(range(1u, 4096u));
  app.add_option("--steps", o.steps, "diffusion steps the device node computes per wave")
      ->capture_default_str()
      ->check(range(1u, 4096u));
  return mmsb::program::run("gpu_stencil", app, argc, argv, [&] {
    // The plate and its next state, each mirrored, and the copies a wave reads, diffs and stages.
    const std::uint64_t plate = std::uint64_t{o.size} * o.size * sizeof(std::int32_t);
    mmsb::program::require_memory("a " + std::to_string(o.size) + " x " + std::to_string(o.size) + " plate",
                                  12 * plate + (std::uint64_t{64} << 20), "use a smaller --size");
    return run(o);
  });
}
