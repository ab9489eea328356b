// particles: an existing particle simulation that mirrors its state into mmsb pages — part two of docs/tutorial.md.
//
// The simulation keeps its own array of particles and steps it with its own code (Simulation below knows nothing
// of mmsb). After each step the program commits the chunks of particles that moved, one transaction per step, to
// named pages "particles/<k>"; the propagator runs in BATCH mode, so one wave every --wave-every steps folds the
// commits of those steps. An incremental node keeps "energy" (one double per chunk) up to date from the chunks
// that changed only, building its delta with a DeltaBuilder; a map node sums it into "total". An observer prints
// each time another chunk comes to rest; the propagation statistics close the run. With --dir the state is durable:
// a later run on the same directory finds the pages by name, reloads the simulation's arrays from them, and carries
// on from the step it reached.
//
//   particles [--particles N] [--chunks N] [--steps N] [--wave-every N] [--threads N] [--dir DIR] [--seed N]
//
// Prints "step S: total energy E, chunks at rest R" every 50 steps, the observer's lines, the statistics, and last
// "checksum 0x...": the same for any thread count, and for a run interrupted and resumed.
#include <cinttypes>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <memory>
#include <random>
#include <span>
#include <string>
#include <vector>

#include "mmsb/mmsb.hpp"
#include "program/options.hpp"

namespace {

struct Particle {
  float x, y, vx, vy;
};

// ---- The existing simulation: its own arrays, its own step. ---------------------------------------------------

struct Simulation {
  std::vector<Particle> particles;

  void seed(std::size_t count, std::uint64_t seed) {
    std::mt19937_64 rng(seed);
    std::uniform_real_distribution<float> position(0.0f, 1.0f), speed(-0.02f, 0.02f);
    particles.resize(count);
    for (std::size_t i = 0; i < count; ++i) {
      // Later particles start slower, so chunks come to rest one after another.
      const float scale = 1.0f - static_cast<float>(i) / static_cast<float>(count);
      particles[i] = {position(rng), position(rng), speed(rng) * scale, speed(rng) * scale};
    }
  }

  // Moves every particle, bounces it off the walls of the unit square and slows it down; a particle slower than
  // 1e-4 stops. Returns, per chunk of `chunk` particles, whether any of them moved.
  std::vector<bool> step(std::size_t chunk) {
    std::vector<bool> moved((particles.size() + chunk - 1) / chunk, false);
    for (std::size_t i = 0; i < particles.size(); ++i) {
      Particle& p = particles[i];
      if (p.vx == 0.0f && p.vy == 0.0f) continue;
      p.x += p.vx;
      p.y += p.vy;
      if (p.x < 0.0f || p.x > 1.0f) p.vx = -p.vx;
      if (p.y < 0.0f || p.y > 1.0f) p.vy = -p.vy;
      p.vx *= 0.98f;
      p.vy *= 0.98f;
      if (std::fabs(p.vx) + std::fabs(p.vy) < 1e-4f) p.vx = p.vy = 0.0f;
      moved[i / chunk] = true;
    }
    return moved;
  }
};

// ---- Node functions, registered by name so a checkpoint restores them. ----------------------------------------

double kinetic_energy(std::span<const Particle> chunk) {
  double e = 0;
  for (const Particle& p : chunk) e += 0.5 * (double{p.vx} * p.vx + double{p.vy} * p.vy);
  return e;
}

// energy[k] = the kinetic energy of chunk k, recomputed for the chunks that changed in this wave only.
void chunk_energy(const mmsb::IncrementalContext& c, mmsb::Delta& out) {
  mmsb::DeltaBuilder energy(c.output.size());
  for (std::size_t k = c.inputs.size(); k-- > 0;) {  // any order: the builder sorts and merges
    if (c.input_deltas[k] == nullptr && !c.recompute) continue;
    energy.write_element<double>(k, kinetic_energy(c.input_span<Particle>(k)));
  }
  energy.finish(out);
}

struct Total {
  double energy;
  std::uint32_t resting_chunks;  // chunks whose energy is 0
  std::uint32_t pad;
};

void total(mmsb::MapContext& c) {
  Total t{0, 0, 0};
  for (double e : c.input_span<double>(0)) {
    t.energy += e;
    if (e == 0.0) ++t.resting_chunks;
  }
  c.output_as<Total>() = t;
}

void register_functions() {
  auto& registry = mmsb::FunctionRegistry::global();
  registry.register_incremental("particles.energy", chunk_energy);
  registry.register_map("particles.total", total);
}

std::uint64_t fnv1a(std::span<const std::byte> bytes, std::uint64_t h = 1469598103934665603ull) {
  for (std::byte b : bytes) h = (h ^ static_cast<std::uint8_t>(b)) * 1099511628211ull;
  return h;
}

struct Options {
  std::uint32_t particles = 4096;
  std::uint32_t chunks = 16;
  std::uint32_t steps = 400;
  std::uint32_t wave_every = 10;
  unsigned threads = 0;
  std::string dir;
  std::uint64_t seed = 1;
};

// The runtime: durable in --dir, else in memory.
struct Store {
  std::unique_ptr<mmsb::DurableRuntime> db;
  std::unique_ptr<mmsb::Runtime> memory;
  std::unique_ptr<mmsb::Propagator> memory_prop;
};

Store open_store(const Options& opt) {
  mmsb::PropagatorOptions propagation;
  propagation.mode = mmsb::PropagationMode::Batch;  // a wave when the loop calls propagate()
  propagation.threads = opt.threads;
  Store store;
  std::unique_ptr<mmsb::DurableRuntime>& db = store.db;
  if (!opt.dir.empty()) {
    mmsb::DurableOptions options;
    options.propagation = propagation;
    options.sync = mmsb::SyncPolicy::None;  // the destructor syncs; a crash may lose the last steps, not the state
    db = std::make_unique<mmsb::DurableRuntime>(opt.dir, options);
  } else {
    store.memory = std::make_unique<mmsb::Runtime>();
    store.memory_prop = std::make_unique<mmsb::Propagator>(*store.memory, propagation);
  }
  return store;
}

// What the waves did, and a checksum of the particles and energies (equal for every thread count and restart).
void print_summary(mmsb::Runtime& rt, mmsb::Propagator& prop, const std::vector<mmsb::PageId>& chunks,
                   mmsb::PageId energy) {
  const mmsb::PropagationStats s = prop.stats();
  std::printf("waves %" PRIu64 ", nodes recomputed %" PRIu64 ", cut off %" PRIu64 ", deltas composed %" PRIu64 "\n",
              s.waves, s.nodes_recomputed, s.nodes_cut_off, s.deltas_composed);
  std::uint64_t h = 1469598103934665603ull;
  for (mmsb::PageId c : chunks) h = fnv1a(rt.read_all(c), h);
  h = fnv1a(rt.read_all(energy), h);
  std::printf("checksum 0x%016" PRIx64 "\n", h);
}

int run(const Options& opt) {
  register_functions();
  const std::size_t chunk = opt.particles / opt.chunks;
  Store store = open_store(opt);
  mmsb::DurableRuntime* db = store.db.get();
  mmsb::Runtime& rt = db ? db->runtime() : *store.memory;
  mmsb::Propagator& prop = db ? db->propagator() : *store.memory_prop;

  // Named pages: found in a recovered state, created in a new one.
  std::vector<mmsb::PageId> chunks;
  for (std::uint32_t k = 0; k < opt.chunks; ++k) {
    chunks.push_back(rt.open_page("particles/" + std::to_string(k), chunk * sizeof(Particle)));
  }
  const mmsb::PageId step_page = rt.open_page("sim/step", sizeof(std::uint64_t));
  const mmsb::PageId energy = rt.open_page("energy", opt.chunks * sizeof(double));
  const mmsb::PageId summary = rt.open_page("total", sizeof(Total));

  // The graph: declared once; a recovered checkpoint already holds it.
  if (!prop.has_node(energy)) prop.derive_incremental(energy, chunks, "particles.energy");
  if (!prop.has_node(summary)) prop.derive_map(summary, {energy}, "particles.total");

  // The simulation's own arrays: loaded from the pages of a recovered run, seeded in a new one.
  Simulation sim;
  sim.particles.resize(chunk * opt.chunks);
  std::uint64_t step = rt.read_value<std::uint64_t>(step_page, 0);
  if (step > 0) {
    for (std::uint32_t k = 0; k < opt.chunks; ++k) {
      rt.read_span<Particle>(chunks[k], 0, std::span(sim.particles).subspan(k * chunk, chunk));
    }
    std::printf("resumed at step %" PRIu64 "\n", step);
  } else {
    sim.seed(sim.particles.size(), opt.seed);
    auto txn = rt.begin();
    for (std::uint32_t k = 0; k < opt.chunks; ++k) {
      txn.write_span(chunks[k], 0, std::span(sim.particles).subspan(k * chunk, chunk));
    }
    txn.commit();
  }
  prop.propagate();          // computes the nodes declared above (and the initial state's wave)
  if (db) db->checkpoint();  // the graph topology is stored by checkpoints

  // An observer: a line each time more chunks are at rest (callbacks run after the wave, outside every lock).
  std::uint32_t resting = rt.read_value<Total>(summary, 0).resting_chunks;
  prop.subscribe(summary, [&](const mmsb::Delta&, std::uint64_t) {
    const Total t = rt.read_value<Total>(summary, 0);
    if (t.resting_chunks > resting) {
      std::printf("observer: %u of %u chunks at rest\n", t.resting_chunks, opt.chunks);
      resting = t.resting_chunks;
    }
  });

  // The time-step loop: the simulation steps its arrays; the chunks that moved are committed, with the step count,
  // as one transaction; every --wave-every steps one wave folds those commits.
  while (step < opt.steps) {
    const std::vector<bool> moved = sim.step(chunk);
    ++step;
    auto txn = rt.begin();
    for (std::uint32_t k = 0; k < opt.chunks; ++k) {
      if (moved[k]) txn.write_span(chunks[k], 0, std::span(sim.particles).subspan(k * chunk, chunk));
    }
    txn.write_value<std::uint64_t>(step_page, 0, step);
    txn.commit();
    if (step % opt.wave_every == 0 || step == opt.steps) prop.propagate();
    if (step % 50 == 0) {
      const Total t = rt.read_value<Total>(summary, 0);
      std::printf("step %" PRIu64 ": total energy %.6e, chunks at rest %u\n", step, t.energy, t.resting_chunks);
    }
  }

  print_summary(rt, prop, chunks, energy);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  using mmsb::program::range;
  Options opt;
  CLI::App app{"particles: a particle simulation mirrored into mmsb pages (docs/tutorial.md, part two)."};
  app.add_option("--particles", opt.particles, "particles in all")->capture_default_str()->check(range(1u, 1u << 24));
  app.add_option("--chunks", opt.chunks, "pages the particles are split into (must divide --particles)")
      ->capture_default_str()
      ->check(range(1u, 4096u));
  app.add_option("--steps", opt.steps, "run until this step")->capture_default_str()->check(range(0u, 1u << 30));
  app.add_option("--wave-every", opt.wave_every, "steps per wave (BATCH mode)")
      ->capture_default_str()
      ->check(range(1u, 1u << 20));
  app.add_option("--threads", opt.threads, "propagator worker threads (0: one per hardware thread)")
      ->capture_default_str()
      ->check(range(0u, 1024u));
  app.add_option("--dir", opt.dir, "durable directory: resume the run found there, or start one");
  app.add_option("--seed", opt.seed, "seed of the initial particles")
      ->capture_default_str()
      ->check(mmsb::program::non_negative<std::uint64_t>());
  return mmsb::program::run("particles", app, argc, argv, [&] {
    if (opt.particles % opt.chunks != 0) {
      throw mmsb::Error(
          mmsb::ErrorCode::InvalidArgument,
          "--chunks " + std::to_string(opt.chunks) + " must divide --particles " + std::to_string(opt.particles));
    }
    return run(opt);
  });
}
