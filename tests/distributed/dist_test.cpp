// Tests of the distributed runtime (mmsb/dist.hpp). Run under `mpirun -np N` (ctest registers N = 1..4): every
// rank runs every test, the collective calls in the same order. Each distributed result is compared with the same
// program evaluated by a plain single-process Runtime + Propagator inside the same test.
#include <mpi.h>

#include <gtest/gtest.h>

#include <unistd.h>

#include <atomic>
#include <cstring>
#include <filesystem>
#include <mutex>
#include <random>
#include <string>
#include <vector>

#include "distributed/dist_support.hpp"
#include "mmsb/dist.hpp"
#include "mmsb/dist_mpi.hpp"
#include "mmsb/durable.hpp"
#include "mmsb/graph.hpp"
#include "mmsb/runtime.hpp"

namespace {

using mmsb::MapContext;
using mmsb::PageId;
using mmsb::dist::DistRuntime;

std::uint64_t load_word(std::span<const std::byte> bytes, std::size_t word) {
  std::uint64_t v = 0;
  const std::size_t words = bytes.size() / 8;
  if (words == 0) return 0;
  std::memcpy(&v, bytes.data() + (word % words) * 8, 8);
  return v;
}

// out[i] = sum over inputs k of rotl(in_k[i mod words_k], k + 1) * (i + 1)
void mix(MapContext& c) {
  const std::size_t words = c.output().size() / 8;
  for (std::size_t i = 0; i < words; ++i) {
    std::uint64_t acc = 0x9e3779b97f4a7c15ull;
    for (std::size_t k = 0; k < c.input_count(); ++k) {
      const std::uint64_t v = load_word(c.input(k), i);
      const unsigned s = static_cast<unsigned>(k % 63) + 1;
      acc += ((v << s) | (v >> (64 - s))) * (i + 1);
    }
    std::memcpy(c.output().data() + i * 8, &acc, 8);
  }
}

// Coarse: the first word of the output is the sum of the inputs' first words shifted right by 60; the output
// rarely changes, so this node usually cuts propagation off.
void coarse(MapContext& c) {
  std::uint64_t acc = 0;
  for (std::size_t k = 0; k < c.input_count(); ++k) acc += load_word(c.input(k), 0) >> 60;
  std::memset(c.output().data(), 0, c.output().size());
  if (c.output().size() >= 8) std::memcpy(c.output().data(), &acc, 8);
}

void register_functions() {
  static std::once_flag once;
  std::call_once(once, [] {
    mmsb::FunctionRegistry::global().register_map("dist_test.mix", mix);
    mmsb::FunctionRegistry::global().register_map("dist_test.coarse", coarse);
  });
}

int world_rank() {
  int r = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &r);
  return r;
}
int world_size() {
  int s = 1;
  MPI_Comm_size(MPI_COMM_WORLD, &s);
  return s;
}

// A random DAG: the first `sources` pages are written by the program, the others are map nodes (mix or coarse)
// over 1-4 earlier pages, or passthroughs of an earlier page of the same size. Owners are random ranks.
struct DagSpec {
  struct Page {
    std::uint32_t owner;
    std::uint64_t size;
    int kind;  // 0 source, 1 mix, 2 coarse, 3 passthrough
    std::vector<std::size_t> inputs;
  };
  std::vector<Page> pages;
  std::size_t sources = 0;

  static DagSpec random(std::uint64_t seed, std::size_t count, std::size_t sources, std::uint32_t ranks) {
    std::mt19937_64 rng(seed);
    DagSpec spec;
    spec.sources = sources;
    for (std::size_t i = 0; i < count; ++i) {
      Page p;
      p.owner = static_cast<std::uint32_t>(rng() % ranks);
      p.size = 8 * (1 + rng() % 64);
      if (rng() % 8 == 0) p.size = 4096;
      p.kind = i < sources ? 0 : static_cast<int>(1 + rng() % 3);
      if (p.kind == 3) {
        p.inputs.push_back(rng() % i);
        p.size = spec.pages[p.inputs[0]].size;
      } else if (p.kind != 0) {
        const std::size_t n = 1 + rng() % 4;
        for (std::size_t k = 0; k < n; ++k) p.inputs.push_back(rng() % i);
      }
      spec.pages.push_back(std::move(p));
    }
    return spec;
  }
};

// One round of writes: the same on every rank (same seed), applied by each page's owner.
struct Write {
  std::size_t page;
  std::uint64_t offset;
  std::vector<std::byte> bytes;
};
std::vector<Write> random_writes(const DagSpec& spec, std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<Write> writes;
  const std::size_t n = 1 + rng() % spec.sources;
  for (std::size_t k = 0; k < n; ++k) {
    Write w;
    w.page = rng() % spec.sources;
    const std::uint64_t size = spec.pages[w.page].size;
    w.offset = rng() % size;
    const std::uint64_t length = 1 + rng() % (size - w.offset);
    for (std::uint64_t b = 0; b < length; ++b) w.bytes.push_back(static_cast<std::byte>(rng()));
    writes.push_back(std::move(w));
  }
  return writes;
}

// The single-process evaluation.
struct Reference {
  mmsb::Runtime rt;
  mmsb::Propagator prop{rt, [] {
                          mmsb::PropagatorOptions o;
                          o.threads = 1;
                          return o;
                        }()};
  std::vector<PageId> ids;

  explicit Reference(const DagSpec& spec) {
    register_functions();
    for (const auto& p : spec.pages) ids.push_back(rt.create_page(p.size));
    for (std::size_t i = 0; i < spec.pages.size(); ++i) {
      const auto& p = spec.pages[i];
      std::vector<PageId> in;
      for (std::size_t k : p.inputs) in.push_back(ids[k]);
      if (p.kind == 1) prop.derive_map(ids[i], in, "dist_test.mix");
      if (p.kind == 2) prop.derive_map(ids[i], in, "dist_test.coarse");
      if (p.kind == 3) prop.derive_passthrough(ids[i], in[0]);
    }
  }
  void apply(const std::vector<Write>& writes) {
    auto txn = rt.begin();
    for (const Write& w : writes) txn.write(ids[w.page], w.offset, w.bytes);
    txn.commit();
  }
  std::uint64_t hash() const {
    std::uint64_t sum = 0;
    for (PageId id : ids) sum += mmsb::dist::logical_page_hash(id.sequence(), rt.read_all(id));
    return sum;
  }
};

std::vector<PageId> declare(DistRuntime& d, const DagSpec& spec) {
  register_functions();
  std::vector<PageId> ids;
  for (const auto& p : spec.pages) ids.push_back(d.create_page(p.owner, p.size));
  for (std::size_t i = 0; i < spec.pages.size(); ++i) {
    const auto& p = spec.pages[i];
    std::vector<PageId> in;
    for (std::size_t k : p.inputs) in.push_back(ids[k]);
    if (p.kind == 1) d.derive_map(ids[i], in, "dist_test.mix");
    if (p.kind == 2) d.derive_map(ids[i], in, "dist_test.coarse");
    if (p.kind == 3) d.derive_passthrough(ids[i], in[0]);
  }
  return ids;
}

void apply(DistRuntime& d, const std::vector<PageId>& ids, const std::vector<Write>& writes) {
  auto txn = d.runtime().begin();
  for (const Write& w : writes) {
    if (d.owns(ids[w.page])) txn.write(ids[w.page], w.offset, w.bytes);
  }
  txn.commit();
}

mmsb::dist::DistOptions small_options() {
  mmsb::dist::DistOptions o;
  o.propagation.threads = 1;
  o.timeout = std::chrono::seconds(120);
  return o;
}

TEST(Dist, RandomPartitionedDagsHashLikeOneProcess) {
  for (std::uint64_t seed = 1; seed <= 4; ++seed) {
    const DagSpec spec = DagSpec::random(seed, 80, 12, static_cast<std::uint32_t>(world_size()));
    Reference ref(spec);
    DistRuntime d(small_options());
    const std::vector<PageId> ids = declare(d, spec);
    ASSERT_EQ(d.state_hash(), ref.hash()) << "seed " << seed << " before any wave";
    ref.prop.recompute_all();
    d.recompute_all();
    ASSERT_EQ(d.state_hash(), ref.hash()) << "seed " << seed << " after computing every node once";
    for (std::uint64_t round = 0; round < 6; ++round) {
      const auto writes = random_writes(spec, seed * 1000 + round);
      ref.apply(writes);
      apply(d, ids, writes);
      d.propagate();
      ASSERT_EQ(d.state_hash(), ref.hash()) << "seed " << seed << " round " << round;
    }
    // Every page's bytes, fetched from its owner, equal the reference (not only the hash).
    for (std::size_t i = 0; i < ids.size(); i += 7) {
      EXPECT_EQ(d.fetch(ids[i]), ref.rt.read_all(ref.ids[i])) << "page " << i;
    }
    if (world_size() > 1) {
      // Some cross-rank edge carried data; exchanges stayed sparse: one message per destination per superstep.
      std::uint64_t sent = d.stats().deltas_sent, total = 0;
      MPI_Allreduce(&sent, &total, 1, MPI_UINT64_T, MPI_SUM, MPI_COMM_WORLD);
      EXPECT_GT(total, 0u);
    }
  }
}

TEST(Dist, CrossRankCutoffSendsNothingAndSkipsTheRemoteNode) {
  static std::atomic<int> runs{0};
  runs = 0;
  const std::uint32_t last = static_cast<std::uint32_t>(world_size() - 1);
  DistRuntime d(small_options());
  const PageId a = d.create_page(0, 8), b = d.create_page(0, 8), c = d.create_page(last, 8);
  d.derive_map(b, {a}, [](MapContext& ctx) { ctx.output_as<std::int64_t>() = ctx.input_as<std::int64_t>(0) >= 10; });
  d.derive_map(c, {b}, [](MapContext& ctx) {
    ++runs;
    ctx.output_as<std::int64_t>() = ctx.input_as<std::int64_t>(0) + 100;
  });
  d.propagate();  // the new nodes' first computation
  runs = 0;
  auto write_a = [&](std::int64_t v) {
    if (!d.owns(a)) return;
    auto t = d.runtime().begin();
    t.write_value(a, 0, v);
    t.commit();
  };
  write_a(20);
  d.propagate();
  std::int64_t cv = 0;
  std::memcpy(&cv, d.fetch(c).data(), 8);
  EXPECT_EQ(cv, 101);
  if (d.owns(c)) {
    EXPECT_EQ(runs.load(), 1);
  }
  const auto sent_before = d.stats().deltas_sent;
  const auto supersteps_before = d.stats().supersteps;
  write_a(30);  // b stays 1: cut off on rank 0
  d.propagate();
  EXPECT_EQ(d.stats().deltas_sent, sent_before) << "an unchanged page crossed the wire";
  EXPECT_EQ(d.stats().supersteps - supersteps_before, 1u) << "the wave needed no exchange";
  if (d.owns(c)) {
    EXPECT_EQ(runs.load(), 1) << "the remote node ran though its input was cut off";
  }
  write_a(3);  // b becomes 0: crosses ranks, c recomputed
  d.propagate();
  std::memcpy(&cv, d.fetch(c).data(), 8);
  EXPECT_EQ(cv, 100);
  if (d.owns(c)) {
    EXPECT_EQ(runs.load(), 2);
  }
  if (d.owns(a) && world_size() > 1) {
    EXPECT_EQ(d.stats().deltas_sent, sent_before + 1);
  }
}

TEST(Dist, NodeExceptionCancelsTheWaveOnEveryRank) {
  const std::uint32_t last = static_cast<std::uint32_t>(world_size() - 1);
  DistRuntime d(small_options());
  const PageId a = d.create_page(0, 8), b = d.create_page(last, 8), c = d.create_page(0, 8);
  d.derive_map(b, {a}, [](MapContext& ctx) {
    const auto v = ctx.input_as<std::int64_t>(0);
    if (v == 13) throw std::runtime_error("unlucky input");
    ctx.output_as<std::int64_t>() = v * 2;
  });
  d.derive_map(c, {b}, [](MapContext& ctx) { ctx.output_as<std::int64_t>() = ctx.input_as<std::int64_t>(0) + 1; });
  auto write_a = [&](std::int64_t v) {
    if (!d.owns(a)) return;
    auto t = d.runtime().begin();
    t.write_value(a, 0, v);
    t.commit();
  };
  write_a(13);
  try {
    d.propagate();
    ADD_FAILURE() << "propagate() returned on rank " << d.rank() << " although a node failed";
  } catch (const mmsb::NodeError& e) {
    EXPECT_EQ(e.page(), b);
    const std::string what = e.what();
    EXPECT_NE(what.find("rank " + std::to_string(last)), std::string::npos) << what;
    EXPECT_NE(what.find("unlucky input"), std::string::npos) << what;
    EXPECT_NE(what.find(b.to_string()), std::string::npos) << what;
    if (d.owns(b)) {
      EXPECT_TRUE(e.nested() != nullptr);
    }
  }
  // The next wave recomputes the failed node and reaches every rank.
  write_a(21);
  d.propagate();
  std::int64_t cv = 0;
  std::memcpy(&cv, d.fetch(c).data(), 8);
  EXPECT_EQ(cv, 43);
}

TEST(Dist, CycleAcrossRanksIsRefusedEverywhere) {
  const std::uint32_t last = static_cast<std::uint32_t>(world_size() - 1);
  DistRuntime d(small_options());
  const PageId x = d.create_page(0, 8), y = d.create_page(last, 8), z = d.create_page(0, 8);
  d.derive_map(y, {x}, mix);
  d.derive_map(z, {y}, mix);
  EXPECT_THROW(d.derive_map(x, {z}, mix), mmsb::Error);
  EXPECT_THROW(d.derive_map(y, {PageId::make(0, 999)}, mix), mmsb::Error);
}

TEST(Dist, CoordinatedCheckpointAndRestartEqualTheUninterruptedRun) {
  const std::string dir = mmsb::testing::shared_temp_dir("mmsb-dist-test-");  // one directory for the whole job

  const DagSpec spec = DagSpec::random(77, 60, 10, static_cast<std::uint32_t>(world_size()));
  Reference ref(spec);
  mmsb::dist::DistOptions options = small_options();
  options.durable_dir = dir;
  options.durable.sync = mmsb::SyncPolicy::None;
  {
    DistRuntime d(options);
    ASSERT_FALSE(d.recovered());
    const auto ids = declare(d, spec);
    // Every node computed once, as recovery does: the states compare without nodes never run.
    ref.prop.recompute_all();
    d.recompute_all();
    for (std::uint64_t round = 0; round < 3; ++round) {
      const auto writes = random_writes(spec, 500 + round);
      ref.apply(writes);
      apply(d, ids, writes);
      d.propagate();
      EXPECT_EQ(d.state_hash(), ref.hash()) << "before the checkpoint, round " << round;
    }
    d.checkpoint();
    // Writes after the checkpoint reach each rank's log, but the process "stops" before their wave.
    const auto writes = random_writes(spec, 503);
    ref.apply(writes);
    apply(d, ids, writes);
  }
  {
    DistRuntime d(options);
    ASSERT_TRUE(d.recovered());
    const auto ids = declare(d, spec);  // found again, not created
    d.propagate();
    EXPECT_EQ(d.state_hash(), ref.hash()) << "after restart";
    for (std::uint64_t round = 4; round < 6; ++round) {
      const auto writes = random_writes(spec, 500 + round);
      ref.apply(writes);
      apply(d, ids, writes);
      d.propagate();
      EXPECT_EQ(d.state_hash(), ref.hash()) << "round " << round;
    }
  }
  MPI_Barrier(MPI_COMM_WORLD);
  if (world_rank() == 0) std::filesystem::remove_all(dir);
}

}  // namespace

int main(int argc, char** argv) {
  MPI_Init(&argc, &argv);
  ::testing::InitGoogleTest(&argc, argv);
  const int result = RUN_ALL_TESTS();
  int worst = 0;
  MPI_Allreduce(&result, &worst, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
  MPI_Finalize();
  return worst;
}
