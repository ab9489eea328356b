// pipeline: a streaming sensor pipeline in BATCH mode — sources -> filters -> windowed aggregates -> alerts.
//
// Each sensor is a page holding a ring buffer of its last readings. A filter node per sensor smooths the window
// (mean, rounded to 0.5 degrees), an aggregate node per zone keeps the zone's hottest smoothed value as a level
// (0 normal, 1 warm, 2 hot), and one alerts node lists the zones at level 2. A producer commits readings one
// sensor at a time; BATCH mode folds all commits of a batch into one wave (deltas of the same page composed
// first). Cutoff does the rest: a filter whose rounded mean did not move, or a zone whose level did not change,
// stops propagation there — the counts are printed at the end. An observer on the alerts page prints each change.
#include <algorithm>
#include <array>
#include <cinttypes>
#include <cmath>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include "mmsb/mmsb.hpp"
#include "program/memory.hpp"
#include "program/options.hpp"

namespace {

using mmsb::program::range;

constexpr std::size_t kWindow = 8;

struct SensorPage {
  std::uint64_t count;              // readings so far
  std::array<float, kWindow> ring;  // the last kWindow readings
};

struct ZoneLevel {
  float hottest;        // highest smoothed value in the zone
  std::uint32_t level;  // 0 normal (< 30), 1 warm (< 40), 2 hot
};

constexpr std::size_t kMaxZones = 64;
struct Alerts {
  std::uint32_t count;
  std::array<std::uint32_t, kMaxZones> zones;  // the hot zones, ascending
};

struct Options {
  std::uint32_t sensors = 64;
  std::uint32_t zones = 8;
  std::uint32_t batches = 200;
  std::uint32_t readings_per_batch = 128;
  std::uint64_t seed = 1;
};

void smooth(mmsb::MapContext& c) {
  const SensorPage s = c.input_as<SensorPage>(0);
  const std::size_t n = std::min<std::uint64_t>(s.count, kWindow);
  float sum = 0;
  for (std::size_t i = 0; i < n; ++i) sum += s.ring[i];
  const float mean = n > 0 ? sum / static_cast<float>(n) : 0.0f;
  c.output_as<float>() = std::round(mean * 2.0f) / 2.0f;  // 0.5-degree steps: jitter below that is cut off
}

void zone_level(mmsb::MapContext& c) {
  float hottest = -1e30f;
  for (std::size_t i = 0; i < c.input_count(); ++i) hottest = std::max(hottest, c.input_as<float>(i));
  const std::uint32_t level = hottest < 30.0f ? 0u : hottest < 40.0f ? 1u : 2u;
  // Only the level propagates: the hottest value is kept for display, but rounded to whole degrees so that
  // small moves inside a level mostly leave the page unchanged.
  c.output_as<ZoneLevel>() = ZoneLevel{std::round(hottest), level};
}

void collect_alerts(mmsb::MapContext& c) {
  Alerts a{};
  for (std::size_t z = 0; z < c.input_count(); ++z) {
    if (c.input_as<ZoneLevel>(z).level == 2) a.zones[a.count++] = static_cast<std::uint32_t>(z);
  }
  c.output_as<Alerts>() = a;
}

// A sensor costs about 2.7 KiB (its two pages, its filter node, its share of the zone nodes: peak RSS of runs with
// 65536 and 262144 sensors); a batch's queued commits are small next to it (65536 cost 4 MiB).
std::uint64_t estimated_peak_bytes(const Options& opt) {
  return std::uint64_t{opt.sensors} * 3 * 1024 + (std::uint64_t{64} << 20);
}

int run(const Options& opt) {
  mmsb::Runtime rt;
  mmsb::PropagatorOptions po;
  po.mode = mmsb::PropagationMode::Batch;
  mmsb::Propagator prop(rt, po);

  std::vector<mmsb::PageId> sensors, smoothed, zones;
  for (std::uint32_t i = 0; i < opt.sensors; ++i) {
    sensors.push_back(rt.create_page(sizeof(SensorPage)));
    smoothed.push_back(rt.create_page(sizeof(float)));
    prop.derive_map(smoothed.back(), {sensors.back()}, smooth);
  }
  for (std::uint32_t z = 0; z < opt.zones; ++z) {
    zones.push_back(rt.create_page(sizeof(ZoneLevel)));
    std::vector<mmsb::PageId> members;
    for (std::uint32_t i = z; i < opt.sensors; i += opt.zones) members.push_back(smoothed[i]);
    prop.derive_map(zones.back(), members, zone_level);
  }
  const mmsb::PageId alerts = rt.create_page(sizeof(Alerts));
  prop.derive_map(alerts, zones, collect_alerts);

  std::uint32_t batch = 0, alert_changes = 0;
  prop.subscribe(alerts, [&](const mmsb::Delta&, std::uint64_t) {
    const Alerts a = rt.read_value<Alerts>(alerts, 0);
    ++alert_changes;
    std::printf("batch %4u  alert:", batch);
    if (a.count == 0) std::printf(" all clear");
    for (std::uint32_t i = 0; i < a.count; ++i) std::printf(" zone %u hot", a.zones[i]);
    std::printf("\n");
  });

  // Readings: every sensor hovers around 22 degrees with small jitter; one zone at a time heats up and cools
  // down again over 60 batches.
  std::mt19937_64 rng(opt.seed);
  std::normal_distribution<float> jitter(0.0f, 0.15f);
  std::uniform_int_distribution<std::uint32_t> pick(0, opt.sensors - 1);
  std::vector<SensorPage> state(opt.sensors, SensorPage{0, {}});
  std::uint64_t commits = 0;
  for (batch = 0; batch < opt.batches; ++batch) {
    const std::uint32_t heating = (batch / 60) % opt.zones;
    const float phase = static_cast<float>(batch % 60) / 60.0f;
    const float extra = 30.0f * std::sin(phase * 3.14159265f);
    for (std::uint32_t r = 0; r < opt.readings_per_batch; ++r) {
      const std::uint32_t i = pick(rng);
      SensorPage& s = state[i];
      const float reading = 22.0f + jitter(rng) + (i % opt.zones == heating ? extra : 0.0f);
      s.ring[s.count % kWindow] = reading;
      ++s.count;
      auto txn = rt.begin();
      txn.write_value(sensors[i], 0, s);
      txn.commit();
      ++commits;
    }
    prop.propagate();  // one wave for the whole batch
  }

  const mmsb::PropagationStats st = prop.stats();
  std::printf("commits %" PRIu64 ", waves %" PRIu64 ", deltas folded %" PRIu64 "\n", commits, st.waves,
              st.deltas_composed);
  std::printf("nodes recomputed %" PRIu64 ", cut off %" PRIu64 ", skipped %" PRIu64 "\n", st.nodes_recomputed,
              st.nodes_cut_off, st.nodes_skipped);
  std::printf("alert changes %u\n", alert_changes);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  Options opt;
  CLI::App app{
      "pipeline: sensors -> smoothing filters -> zone levels -> alerts, in BATCH mode. Readings are committed one "
      "at a time; each batch is propagated as one wave, and unchanged filters and zones cut the wave off. Prints "
      "each change of the alerts and, at the end, how many nodes ran, were cut off or skipped."};
  app.add_option("--sensors", opt.sensors, "sensor pages")->capture_default_str()->check(range(1u, 1u << 20));
  app.add_option("--zones", opt.zones, "zones (sensor i belongs to zone i % zones)")
      ->capture_default_str()
      ->check(range(1u, static_cast<unsigned>(kMaxZones)));
  app.add_option("--batches", opt.batches, "batches (one wave each)")
      ->capture_default_str()
      ->check(range(0u, 1u << 30));
  // A batch's commits wait in the propagator's queue until the batch's wave, and nothing else drains it: a batch
  // larger than the queue would block its last commit for ever.
  app.add_option("--readings-per-batch", opt.readings_per_batch, "commits per batch")
      ->capture_default_str()
      ->check(range(1u, static_cast<unsigned>(mmsb::PropagatorOptions{}.queue_capacity)));
  app.add_option("--seed", opt.seed, "seed of the readings")
      ->capture_default_str()
      ->check(mmsb::program::non_negative<std::uint64_t>());
  return mmsb::program::run("pipeline", app, argc, argv, [&] {
    if (opt.zones > opt.sensors) {
      throw mmsb::Error(mmsb::ErrorCode::InvalidArgument,
                        "--zones " + std::to_string(opt.zones) + " exceeds --sensors " + std::to_string(opt.sensors));
    }
    mmsb::program::require_memory(std::to_string(opt.sensors) + " sensors", estimated_peak_bytes(opt),
                                  "use fewer --sensors");
    return run(opt);
  });
}
