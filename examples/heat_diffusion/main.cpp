// heat_diffusion: a 2-D heat simulation whose tiles, halos and statistics are mmsb pages (see heat.hpp).
//
//   heat_diffusion --size 256 --tiles 4 --steps 500            in memory, progress every 50 steps
//   heat_diffusion --steps 500 --log /tmp/heat --hash          durable: kill it, run it again, same final hash
//   heat_diffusion --steps 200 --image heat.png                a picture of the final field
//   heat_diffusion --steps 500 --gpu --hash                    tiles stepped by device nodes (heat_gpu.hpp)
#include <png.h>

#include <chrono>
#include <cinttypes>
#include <cstdio>
#include <exception>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include <unistd.h>

#include "heat.hpp"
#include "heat_dist.hpp"
#include "heat_gpu.hpp"
#include "mmsb/dist.hpp"
#include "mmsb/mmsb.hpp"
#include "program/memory.hpp"
#include "program/options.hpp"

namespace {

using mmsb::program::range;

constexpr std::uint64_t kMaxSteps = std::uint64_t{1} << 40;  // years of stepping: anything larger is a typo

struct Options {
  heat::Config config;
  std::uint64_t steps = 500;
  unsigned threads = 0;
  std::string log;
  std::uint64_t checkpoint_every = 100;
  std::uint64_t report_every = 0;  // 0: steps / 10
  bool hash = false;
  std::string image;
  bool timing = false;
  bool gpu = false;
};

// The peak memory of a run: eleven copies of the field's floats, measured as the peak RSS of `--steps 3` runs at
// sizes 4096 and 8192 with one and eight tiles per side (the cells and next tiles, the copy a step's
// transaction stages, the new and old bytes of its deltas, the stencil's output, and their transient copies),
// counted as twelve; two more for --gpu (the mirror's device buffers, host memory on a CPU driver) and one for
// --image. Under mpirun every rank holds a share; the estimate is for the whole grid, which the ranks of one
// machine share.
std::uint64_t estimated_peak_bytes(const Options& opt) {
  const std::uint64_t field = std::uint64_t{opt.config.size} * opt.config.size * sizeof(float);
  std::uint64_t copies = 12;
  if (!opt.image.empty()) copies += 1;
  if (opt.gpu) copies += 2;
  return copies * field + (std::uint64_t{64} << 20);  // and the runtime's own fixed cost
}

// Black -> red -> yellow -> white over [0, top].
void color(float value, float top, png_byte* rgb) {
  const float v = std::clamp(value / top, 0.0f, 1.0f) * 3.0f;
  rgb[0] = static_cast<png_byte>(255.0f * std::clamp(v, 0.0f, 1.0f));
  rgb[1] = static_cast<png_byte>(255.0f * std::clamp(v - 1.0f, 0.0f, 1.0f));
  rgb[2] = static_cast<png_byte>(255.0f * std::clamp(v - 2.0f, 0.0f, 1.0f));
}

void write_png(const std::string& path, const std::vector<float>& field, std::uint32_t size, float top) {
  FILE* file = std::fopen(path.c_str(), "wb");
  if (!file) throw mmsb::Error(mmsb::ErrorCode::IoError, "cannot create " + path);
  png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, nullptr, nullptr, nullptr);
  png_infop info = png ? png_create_info_struct(png) : nullptr;
  if (!png || !info || setjmp(png_jmpbuf(png))) {
    png_destroy_write_struct(&png, &info);
    std::fclose(file);
    throw mmsb::Error(mmsb::ErrorCode::IoError, "libpng failed to write " + path);
  }
  png_init_io(png, file);
  png_set_IHDR(png, info, size, size, 8, PNG_COLOR_TYPE_RGB, PNG_INTERLACE_NONE, PNG_COMPRESSION_TYPE_DEFAULT,
               PNG_FILTER_TYPE_DEFAULT);
  png_write_info(png, info);
  std::vector<png_byte> row(std::size_t{size} * 3);
  for (std::uint32_t y = 0; y < size; ++y) {
    for (std::uint32_t x = 0; x < size; ++x) color(field[std::size_t{y} * size + x], top, &row[std::size_t{x} * 3]);
    png_write_row(png, row.data());
  }
  png_write_end(png, nullptr);
  png_destroy_write_struct(&png, &info);
  if (std::fclose(file) != 0) throw mmsb::Error(mmsb::ErrorCode::IoError, "cannot write " + path);
}

// The hash DistRuntime::state_hash() gives the same pages (page sequence number, size, bytes), so a run without
// mpirun prints the same state-hash as `mpirun -np N` for any N.
std::uint64_t logical_state_hash(const mmsb::Runtime& rt) {
  std::uint64_t sum = 0;
  for (const mmsb::PageId id : rt.page_ids()) sum += mmsb::dist::logical_page_hash(id.sequence(), rt.read_all(id));
  return sum;
}

// Removes the log segments of a run that was killed before its first checkpoint.
void discard_interrupted_setup(const std::string& dir) {
  std::fprintf(stderr, "heat_diffusion: %s holds a run killed during setup (no checkpoint yet); starting afresh\n",
               dir.c_str());
  for (const auto& entry : std::filesystem::directory_iterator(dir)) {
    if (entry.path().filename().string().starts_with("log-")) std::filesystem::remove(entry.path());
  }
}

// Where a single-process run keeps its state: a DurableRuntime with --log, else an in-memory runtime.
struct State {
  std::unique_ptr<mmsb::DurableRuntime> db;
  std::unique_ptr<mmsb::Runtime> memory;
  std::unique_ptr<mmsb::Propagator> memory_propagator;
  mmsb::Runtime* rt = nullptr;
  mmsb::Propagator* prop = nullptr;
  bool resumed = false;  // the directory held a run
};

State open_state(const Options& opt) {
  mmsb::PropagatorOptions propagation;
  propagation.threads = opt.threads;
  State state;
  if (opt.log.empty()) {
    state.memory = std::make_unique<mmsb::Runtime>();
    state.memory_propagator = std::make_unique<mmsb::Propagator>(*state.memory, propagation);
    state.rt = state.memory.get();
    state.prop = state.memory_propagator.get();
    return state;
  }
  mmsb::DurableOptions options;
  options.propagation = propagation;
  state.db = std::make_unique<mmsb::DurableRuntime>(opt.log, options);
  if (!state.db->recovery().fresh && state.db->recovery().checkpoint_lsn == 0) {
    // Killed during setup, before the first checkpoint stored the graph: no step ran yet, so nothing is lost by
    // starting over, and resuming would find pages without the nodes that derive them.
    state.db.reset();
    discard_interrupted_setup(opt.log);
    state.db = std::make_unique<mmsb::DurableRuntime>(opt.log, options);
  }
  state.rt = &state.db->runtime();
  state.prop = &state.db->propagator();
  state.resumed = !state.db->recovery().fresh;
  return state;
}

// Steps the simulation up to --steps, with a checkpoint every --checkpoint-every steps under --log and, on a
// terminal, a progress line on stderr (at most five updates a second; nothing when redirected).
void step_to_end(heat::Heat& sim, const State& state, const Options& opt) {
  const bool progress = isatty(STDERR_FILENO) != 0;
  const auto started = std::chrono::steady_clock::now();
  auto last_shown = started;
  const std::uint64_t first_step = sim.steps_done();
  while (sim.steps_done() < opt.steps) {
    sim.step();
    const std::uint64_t done = sim.steps_done();
    if (state.db && opt.checkpoint_every > 0 && done % opt.checkpoint_every == 0) state.db->checkpoint();
    const auto now = std::chrono::steady_clock::now();
    if (progress && now - last_shown > std::chrono::milliseconds(200)) {
      last_shown = now;
      const double seconds = std::chrono::duration<double>(now - started).count();
      const double rate = static_cast<double>(done - first_step) / seconds;
      std::fprintf(stderr, "\rstep %" PRIu64 "/%" PRIu64 " (%.0f%%), %.0f steps/s, %.0f s left   ", done, opt.steps,
                   100.0 * static_cast<double>(done) / static_cast<double>(opt.steps), rate,
                   static_cast<double>(opt.steps - done) / rate);
    }
  }
  if (progress) std::fprintf(stderr, "\r%-70s\r", "");
}

int run(const Options& opt) {
  if (heat::launched_by_mpirun()) {  // `mpirun -np N heat_diffusion ...`: the tiles spread over N ranks
    if (!opt.log.empty() || !opt.image.empty() || opt.gpu) {
      throw mmsb::Error(mmsb::ErrorCode::InvalidArgument, "--log, --image and --gpu are not available under mpirun");
    }
    return heat::run_distributed(
        {opt.config, opt.steps, opt.report_every, opt.threads ? opt.threads : 1, opt.hash, opt.timing});
  }
  if (opt.gpu && !opt.log.empty()) {
    throw mmsb::Error(mmsb::ErrorCode::InvalidArgument,
                      "--gpu runs in memory (device nodes are not stored by checkpoints); drop --log or --gpu");
  }
  heat::register_functions();  // before a checkpoint's graph is restored
  State state = open_state(opt);
  std::unique_ptr<mmsb::GpuMirror> gpu;
  std::unique_ptr<heat::GpuTileStepper> stepper;
  if (opt.gpu) {
    gpu = std::make_unique<mmsb::GpuMirror>(*state.rt, *state.prop);
    stepper = std::make_unique<heat::GpuTileStepper>(*gpu);
    std::printf("gpu: %s\n", gpu->device_name().c_str());
  }
  heat::Heat sim = state.resumed ? heat::Heat::attach(*state.rt, opt.config)
                                 : heat::Heat::create(*state.rt, *state.prop, opt.config, stepper.get());
  if (state.db && !state.resumed) state.db->checkpoint();  // stores the graph, so a restart restores it
  if (state.resumed) std::printf("resumed at step %" PRIu64 " from %s\n", sim.steps_done(), opt.log.c_str());
  const double energy_start = sim.energy();

  // Progress: a subscriber on the summary page, which every step's wave recomputes.
  const std::uint64_t every = opt.report_every > 0 ? opt.report_every : std::max<std::uint64_t>(1, opt.steps / 10);
  const bool progress = isatty(STDERR_FILENO) != 0;
  const std::uint32_t tiles = opt.config.tiles;
  state.prop->subscribe(sim.summary_page(), [&](const mmsb::Delta&, std::uint64_t) {
    const std::uint64_t step = sim.steps_done();
    if (step % every != 0 && step != opt.steps) return;
    const heat::Summary s = sim.summary();
    if (progress) std::fprintf(stderr, "\r%-70s\r", "");  // clear the progress line first
    std::printf("step %6" PRIu64 "  min %8.4f  max %8.4f  mean %8.5f  hottest tile (%u,%u)\n", step, s.min, s.max,
                s.mean, s.hottest_tile / tiles, s.hottest_tile % tiles);
    std::fflush(stdout);
  });
  step_to_end(sim, state, opt);

  const double energy_end = sim.energy();
  std::printf("energy %.6e -> %.6e (relative change %.2e)\n", energy_start, energy_end,
              energy_start != 0 ? (energy_end - energy_start) / energy_start : 0.0);
  if (!opt.image.empty()) {
    write_png(opt.image, sim.field(), opt.config.size, 100.0f);
    std::printf("image %s\n", opt.image.c_str());
  }
  if (opt.hash) std::printf("state-hash: %016" PRIx64 "\n", logical_state_hash(*state.rt));
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  Options opt;
  CLI::App app{
      "heat_diffusion: a 2-D heat simulation on mmsb pages. The grid is split into tiles (pages); each step is one "
      "transaction, and the wave it triggers recomputes every tile's halo edges, its next state (a 5-point "
      "stencil node per tile) and the statistics, which a subscriber prints. Borders are insulated: the total "
      "energy is conserved.\nWith --log the run is durable and resumable: run the same command again after an "
      "interruption and it continues to --steps, ending in the same state.\nA run that would not fit in the "
      "memory available (or under MMSB_MEMORY_LIMIT, e.g. 8G) is refused before it allocates anything."};
  app.add_option("--size", opt.config.size, "cells per side of the square grid")
      ->capture_default_str()
      ->check(range(2u, 1u << 15));
  app.add_option("--tiles", opt.config.tiles, "tiles per side (--size must be a multiple)")
      ->capture_default_str()
      ->check(range(1u, 1024u));
  app.add_option("--steps", opt.steps, "total steps (a resumed run continues up to this many)")
      ->capture_default_str()
      ->check(range<std::uint64_t>(0, kMaxSteps));
  app.add_option("--alpha", opt.config.alpha, "diffusion number, below 0.25")
      ->capture_default_str()
      ->check(range(0.0f, 0.25f));
  app.add_option("--threads", opt.threads, "worker threads of the waves (0: one per hardware thread)")
      ->capture_default_str()
      ->check(range(0u, 1024u));
  app.add_option("--log", opt.log, "durable directory: created, or resumed when it holds a run");
  app.add_option("--checkpoint-every", opt.checkpoint_every, "with --log: a checkpoint every N steps (0: never)")
      ->capture_default_str()
      ->check(range<std::uint64_t>(0, kMaxSteps));
  app.add_option("--report-every", opt.report_every, "print the statistics every N steps (default: steps / 10)")
      ->check(range<std::uint64_t>(0, kMaxSteps));
  app.add_flag("--hash", opt.hash,
               "end with `state-hash: HEX` over all pages (the same for any --threads, --gpu, --log, and mpirun -np "
               "N)");
  app.add_option("--image", opt.image, "write the final field as a PNG image");
  app.add_flag("--timing", opt.timing, "under mpirun: print the time per step (weak-scaling benchmark)");
  app.add_flag("--gpu", opt.gpu,
               "step the tiles with device nodes on the GPU mirror (Vulkan, or its CPU fallback); same results");
  return mmsb::program::run("heat_diffusion", app, argc, argv, [&] {
    mmsb::program::require_memory(
        "a " + std::to_string(opt.config.size) + " x " + std::to_string(opt.config.size) + " grid",
        estimated_peak_bytes(opt), "use a smaller --size");
    return run(opt);
  });
}
