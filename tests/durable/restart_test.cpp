// Exact restarts for every node kind (mmsb/durable.hpp, "Exact restarts"): random graphs mixing map, passthrough,
// incremental (by registered name, and as a lambda with a rebuild function) and device nodes (the GPU mirror's CPU
// fallback) run K commits, crash at a random I/O call of the log or a checkpoint (through FaultFileSystem, which
// then loses, keeps or garbles what was not synced), reopen, and run the remaining commits: every derived page
// holds what an uninterrupted run holds, right after reopening and at the end.
//
// MMSB_RESTART_CASES sets the number of random cases (default 200; ctest's durable.restart_many runs 2000).
#include <gtest/gtest.h>

#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "mmsb/durable.hpp"
#include "mmsb/gpu.hpp"
#include "runtime/logging.hpp"
#include "support/fault_file_system.hpp"
#include "support/temp_dir.hpp"
#include "support/test_support.hpp"

namespace mmsb {
namespace {

namespace fs = std::filesystem;
using testing::FaultFileSystem;
using testing::TempDir;

std::uint64_t word(std::span<const std::byte> bytes, std::size_t i) {
  std::uint64_t v = 0;
  if ((i + 1) * 8 <= bytes.size()) std::memcpy(&v, bytes.data() + i * 8, 8);
  return v;
}

// A deterministic digest of a node's inputs, into the output's words.
void mix_into(std::span<const std::span<const std::byte>> inputs, std::span<std::byte> out) {
  std::uint64_t h = 0x9e3779b97f4a7c15ULL;
  for (const auto& in : inputs) {
    for (std::size_t i = 0; i * 8 < in.size(); ++i) h = (h ^ word(in, i)) * 0x100000001b3ULL + i;
  }
  for (std::size_t i = 0; (i + 1) * 8 <= out.size(); ++i) {
    const std::uint64_t v = h + i * 0x632be59bd9b4e019ULL;
    std::memcpy(out.data() + i * 8, &v, 8);
  }
}

// The node functions by name, in a registry of this test's own.
std::shared_ptr<FunctionRegistry> registry() {
  static const std::shared_ptr<FunctionRegistry> r = [] {
    auto reg = std::make_shared<FunctionRegistry>();
    reg->register_map("restart.mix", [](MapContext& c) {
      std::vector<std::span<const std::byte>> in(c.input_count());
      for (std::size_t i = 0; i < in.size(); ++i) in[i] = c.input(i);
      mix_into(in, c.output());
    });
    // A history: how many input changes it has seen, and a running digest of them in the order they came. It
    // cannot be computed from the inputs' bytes; only replaying every delta in order gives it back.
    reg->register_incremental("restart.count", [](const IncrementalContext& c, Delta& out) {
      std::uint64_t count = word(c.output, 0), digest = word(c.output, 1);
      for (std::size_t i = 0; i < c.input_deltas.size(); ++i) {
        const Delta* d = c.input_deltas[i];
        if (d == nullptr) continue;
        ++count;
        for (const ByteRange& range : d->ranges) digest = digest * 31 + range.offset * 7 + range.length + i;
        for (std::byte b : d->payload) digest = digest * 131 + std::to_integer<std::uint64_t>(b);
      }
      out.ranges.push_back({0, 16});
      out.payload.resize(16);
      std::memcpy(out.payload.data(), &count, 8);
      std::memcpy(out.payload.data() + 8, &digest, 8);
    });
    return reg;
  }();
  return r;
}

// A lambda incremental node with a rebuild function: it recomputes the digest when an input changed, which is
// what its rebuild computes from scratch.
IncrementalFunction digest_incremental() {
  return [](const IncrementalContext& c, Delta& out) {
    bool changed = false;
    for (const Delta* d : c.input_deltas) changed = changed || d != nullptr;
    if (!changed) return;
    std::vector<std::byte> result(c.output.size());
    mix_into(c.inputs, result);
    out.ranges.push_back({0, result.size()});
    out.payload = std::move(result);
  };
}
MapFunction digest_rebuild() {
  return [](MapContext& c) {
    std::vector<std::span<const std::byte>> in(c.input_count());
    for (std::size_t i = 0; i < in.size(); ++i) in[i] = c.input(i);
    mix_into(in, c.output());
  };
}

constexpr std::uint32_t kGrid = 8;  // device node grids are kGrid x kGrid int32

// A random graph and workload, made identically by the uninterrupted run and the durable one.
struct Program {
  enum class Kind { Map, Passthrough, Counted, Digest, Device };
  struct Node {
    Kind kind;
    std::size_t output;
    std::vector<std::size_t> inputs;
    ByteRemap remap;
  };
  struct Write {
    std::size_t page;
    std::uint64_t offset;
    std::vector<std::byte> bytes;
  };
  std::uint64_t seed;
  PropagationMode mode;
  std::vector<std::pair<std::uint64_t, Location>> pages;  // size, location, in creation order
  std::size_t sources = 0;
  bool device = false;  // page `sources` is a device grid, read by device nodes
  std::vector<Node> nodes;
  std::vector<std::vector<Write>> commits;

  explicit Program(std::uint64_t s) : seed(s) {
    std::mt19937_64 rng(s);
    const PropagationMode modes[] = {PropagationMode::Immediate, PropagationMode::Deferred, PropagationMode::Batch};
    mode = modes[rng() % 3];
    sources = 2 + rng() % 3;
    for (std::size_t i = 0; i < sources; ++i) pages.push_back({32, Location::Host});
    device = rng() % 3 == 0;
    std::vector<std::size_t> readable;  // pages a host node may read
    for (std::size_t i = 0; i < sources; ++i) readable.push_back(i);
    if (device) {
      const std::size_t grid = pages.size();
      pages.push_back({kGrid * kGrid * 4, Location::Both});
      const std::size_t next = pages.size();
      pages.push_back({kGrid * kGrid * 4, Location::Both});
      nodes.push_back({Kind::Device, next, {grid}, {}});
      readable.push_back(next);
    }
    const std::size_t count = 3 + rng() % 6;
    for (std::size_t n = 0; n < count; ++n) {
      Kind kind = static_cast<Kind>(rng() % 4);
      std::vector<std::size_t> inputs;
      const std::size_t fan_in = kind == Kind::Passthrough ? 1 : 1 + rng() % 3;
      for (std::size_t k = 0; k < fan_in; ++k) {
        const std::size_t pick = readable[rng() % readable.size()];
        if (std::find(inputs.begin(), inputs.end(), pick) == inputs.end()) inputs.push_back(pick);
      }
      const std::uint64_t size = kind == Kind::Passthrough ? pages[inputs[0]].first : 16 + 8 * (rng() % 3);
      const std::size_t out = pages.size();
      pages.push_back({size, Location::Host});
      ByteRemap remap;
      if (kind == Kind::Passthrough && rng() % 2) remap = {8 * (rng() % 2), 16, 8 * (rng() % 2)};
      nodes.push_back({kind, out, inputs, remap});
      readable.push_back(out);
    }
    const std::size_t total = 20 + rng() % 20;
    for (std::size_t c = 0; c < total; ++c) {
      std::vector<Write> writes;
      const std::size_t touched = 1 + rng() % 2;
      for (std::size_t k = 0; k < touched; ++k) {
        Write w;
        if (device && rng() % 3 == 0) {
          w.page = sources;  // the grid: a few cells, small values so the stencil never overflows
          const std::uint64_t cell = rng() % (kGrid * kGrid);
          w.offset = cell * 4;
          const std::int32_t v = static_cast<std::int32_t>(rng() % 100000);
          w.bytes.resize(4);
          std::memcpy(w.bytes.data(), &v, 4);
        } else {
          w.page = rng() % sources;
          w.offset = 8 * (rng() % 4);
          const std::uint64_t v = rng();
          w.bytes.resize(8);
          std::memcpy(w.bytes.data(), &v, 8);
        }
        if (std::none_of(writes.begin(), writes.end(), [&](const Write& o) { return o.page == w.page; })) {
          writes.push_back(std::move(w));
        }
      }
      commits.push_back(std::move(writes));
    }
  }

  // The pages (ids are the same in every run: created in the same order on a fresh runtime).
  std::vector<PageId> create_pages(Runtime& rt) const {
    std::vector<PageId> ids;
    for (const auto& [size, location] : pages) ids.push_back(rt.create_page(size, location));
    return ids;
  }

  // Declares the graph; with `unbound_only`, only the nodes a restart does not restore by name, and with
  // `recompute` each of those is then computed from scratch.
  void derive(Propagator& prop, GpuMirror* gpu, const std::vector<PageId>& ids, bool unbound_only,
              bool recompute = false) const {
    for (const Node& n : nodes) {
      std::vector<PageId> in;
      for (std::size_t i : n.inputs) in.push_back(ids[i]);
      const bool by_name = n.kind == Kind::Map || n.kind == Kind::Passthrough || n.kind == Kind::Counted;
      if (unbound_only && by_name) continue;
      switch (n.kind) {
        case Kind::Map:
          prop.derive_map(ids[n.output], in, "restart.mix");
          break;
        case Kind::Passthrough:
          prop.derive_passthrough(ids[n.output], in[0], n.remap);
          break;
        case Kind::Counted:
          prop.derive_incremental(ids[n.output], in, "restart.count");
          break;
        case Kind::Digest:
          prop.derive_incremental(ids[n.output], in, digest_incremental(), digest_rebuild());
          break;
        case Kind::Device:
          gpu->derive_stencil5(ids[n.output], in[0], {kGrid, kGrid, 1});
          break;
      }
      if (recompute) prop.recompute(ids[n.output]);
    }
  }

  void commit(Runtime& rt, Propagator& prop, const std::vector<PageId>& ids, std::size_t c) const {
    auto txn = rt.begin();
    for (const Write& w : commits[c]) txn.write(ids[w.page], w.offset, w.bytes);
    txn.commit();
    if (mode != PropagationMode::Immediate) prop.propagate();
  }
};

GpuOptions cpu_fallback() {
  GpuOptions o;
  o.device = "none";
  return o;
}

// The uninterrupted run: the state hash after each commit (hash[0]: before the first).
std::vector<std::uint64_t> uninterrupted(const Program& p) {
  Runtime rt;
  PropagatorOptions po;
  po.mode = p.mode;
  Propagator prop(rt, po, registry());
  std::unique_ptr<GpuMirror> gpu;
  if (p.device) gpu = std::make_unique<GpuMirror>(rt, prop, cpu_fallback());
  const std::vector<PageId> ids = p.create_pages(rt);
  p.derive(prop, gpu.get(), ids, false);
  prop.recompute_all();  // every derived page starts consistent with its inputs
  std::vector<std::uint64_t> hashes{state_hash(rt)};
  for (std::size_t c = 0; c < p.commits.size(); ++c) {
    p.commit(rt, prop, ids, c);
    hashes.push_back(state_hash(rt));
  }
  return hashes;
}

struct CaseResult {
  bool refused = false;  // the setup checkpoint refused a graph no restart could make exact (no rebind)
  bool crashed = false;
  std::size_t resumed_at = 0;  // commits recovered
};

// The durable run: set up and checkpoint, commit until a crash at a random I/O call (or the end), lose what was
// not synced, reopen, compare, run the rest, compare. Nodes given as functions are derived again either in
// DurableOptions::rebind (before the log is replayed) or after opening, followed by recompute().
class RestartCase {
 public:
  RestartCase(const Program& p, const fs::path& dir)
      : p_(p),
        dir_(dir),
        rng_(p.seed * 7919 + 1),
        fsys_(std::make_shared<FaultFileSystem>(posix_file_system(), /*real_syncs=*/false)) {
    for (std::size_t i = 0; i < p.pages.size(); ++i) ids_.push_back(PageId::make(0, i + 1));
    options_.file_system = fsys_;
    options_.registry = registry();
    options_.propagation.mode = p.mode;
    options_.segment_bytes = 256 + rng_() % 2048;
    const SyncPolicy policies[] = {SyncPolicy::EveryCommit, SyncPolicy::None, SyncPolicy::Interval};
    options_.sync = policies[rng_() % 3];
    options_.sync_interval = std::chrono::milliseconds(1);
    rebind_ = rng_() % 2 == 0;
    if (rebind_) {
      options_.rebind = [this](DurableRuntime& db) {
        attach_gpu(db);
        p_.derive(db.propagator(), gpu_.get(), ids_, /*unbound_only=*/true);
      };
    }
  }

  CaseResult run(const std::vector<std::uint64_t>& expected) {
    CaseResult result;
    set_up_and_crash(result);
    if (result.refused) return result;
    const FaultFileSystem::Loss losses[] = {FaultFileSystem::Loss::Drop, FaultFileSystem::Loss::KeepPrefix,
                                            FaultFileSystem::Loss::Garble};
    fsys_->lose_unsynced(losses[rng_() % 3], rng_);
    fsys_->restart();
    result.resumed_at = reopen_and_finish(expected);
    return result;
  }

 private:
  void attach_gpu(DurableRuntime& db) {
    if (p_.device) gpu_ = std::make_unique<GpuMirror>(db.runtime(), db.propagator(), cpu_fallback());
  }

  // Builds the graph, checkpoints it, and commits (checkpointing once more at a random commit) until the file
  // system crashes at a random call or the commits run out. A setup checkpoint refused is a result too.
  void set_up_and_crash(CaseResult& result) {
    DurableRuntime db(dir_, options_);
    attach_gpu(db);
    p_.create_pages(db.runtime());
    p_.derive(db.propagator(), gpu_.get(), ids_, false);
    db.propagator().recompute_all();
    try {
      db.checkpoint();
    } catch (const Error& e) {
      // Without rebind, a history node reading a node given as a function cannot restart exactly.
      EXPECT_FALSE(rebind_) << e.what();
      EXPECT_EQ(e.code(), ErrorCode::InvalidArgument) << e.what();
      gpu_.reset();
      result.refused = true;
      return;
    }
    first_commit_lsn_ = db.runtime().last_lsn() + 1;
    const std::size_t checkpoint_at = rng_() % (p_.commits.size() + 1);
    fsys_->crash_at_call(1 + rng_() % (4 * p_.commits.size()));
    try {
      for (std::size_t c = 0; c < p_.commits.size(); ++c) {
        if (c == checkpoint_at) db.checkpoint();
        p_.commit(db.runtime(), db.propagator(), ids_, c);
        acknowledged_ = c + 1;
      }
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), ErrorCode::IoError) << e.what();
      result.crashed = true;
    }
    fsys_->crash();  // the process dies here: nothing more reaches the disk
    gpu_.reset();    // before the DurableRuntime it is attached to
  }

  // Reopens after the crash: the state must equal the uninterrupted run's after the commits recovered (every
  // acknowledged one under EveryCommit), and after the remaining commits its final state. Returns the commits
  // recovered.
  std::size_t reopen_and_finish(const std::vector<std::uint64_t>& expected) {
    DurableRuntime db(dir_, options_);
    const std::uint64_t last = db.recovery().last_lsn;
    const std::size_t recovered =
        last >= first_commit_lsn_ ? static_cast<std::size_t>(last - first_commit_lsn_ + 1) : 0;
    EXPECT_LE(recovered, p_.commits.size());
    if (options_.sync == SyncPolicy::EveryCommit) {
      EXPECT_GE(recovered, acknowledged_) << "an acknowledged commit was lost";
    }
    if (rebind_) {
      EXPECT_TRUE(db.recovery().unbound_nodes.empty());
    } else {
      attach_gpu(db);
      p_.derive(db.propagator(), gpu_.get(), ids_, /*unbound_only=*/true, /*recompute=*/true);
    }
    EXPECT_EQ(state_hash(db.runtime()), expected[recovered]) << "after reopening at commit " << recovered;
    for (std::size_t c = recovered; c < p_.commits.size(); ++c) p_.commit(db.runtime(), db.propagator(), ids_, c);
    EXPECT_EQ(state_hash(db.runtime()), expected.back()) << "at the end";
    gpu_.reset();
    return recovered;
  }

  const Program& p_;
  const fs::path dir_;
  std::mt19937_64 rng_;
  std::shared_ptr<FaultFileSystem> fsys_;
  std::vector<PageId> ids_;
  DurableOptions options_;
  bool rebind_ = false;
  std::unique_ptr<GpuMirror> gpu_;  // destroyed before the DurableRuntime it is attached to
  std::uint64_t first_commit_lsn_ = 0;
  std::size_t acknowledged_ = 0;  // commits that returned (durable under EveryCommit)
};

CaseResult run_case(const Program& p, const std::vector<std::uint64_t>& expected, const fs::path& dir) {
  return RestartCase(p, dir).run(expected);
}

std::size_t case_count() {
  const char* env = std::getenv("MMSB_RESTART_CASES");
  return env ? static_cast<std::size_t>(std::strtoull(env, nullptr, 10)) : 200;
}

TEST(ExactRestart, RandomGraphsOfEveryNodeKindCrashAndReopenToTheUninterruptedState) {
  const auto level = detail::logger()->level();
  detail::logger()->set_level(spdlog::level::err);  // the CPU fallback's line, once per mirror, is noise here
  const std::uint64_t base =
      std::getenv("MMSB_RESTART_SEED") ? std::strtoull(std::getenv("MMSB_RESTART_SEED"), nullptr, 10) : 20261124;
  std::size_t crashed = 0, partial = 0, device = 0, refused = 0;
  for (std::size_t i = 0; i < case_count(); ++i) {
    const Program p(base + i);
    SCOPED_TRACE("seed " + std::to_string(p.seed) + " (rerun with MMSB_RESTART_SEED=" + std::to_string(p.seed) +
                 " MMSB_RESTART_CASES=1)");
    const std::vector<std::uint64_t> expected = uninterrupted(p);
    TempDir dir("mmsb-restart");
    const CaseResult r = run_case(p, expected, dir.path() / "db");
    crashed += r.crashed;
    refused += r.refused;
    partial += r.resumed_at > 0 && r.resumed_at < p.commits.size();
    device += p.device;
    if (::testing::Test::HasFailure()) break;
  }
  detail::logger()->set_level(level);
  if (case_count() >= 100) {  // the cases cover what they should
    EXPECT_GT(crashed, case_count() / 3);
    EXPECT_GT(partial, case_count() / 4);
    EXPECT_GT(device, case_count() / 6);
    EXPECT_GT(refused, 0u);
    EXPECT_LT(refused, case_count() / 4);
  }
}

// The example: a counter of changes read 5 live and 2 after reopening with 3 records to replay.
TEST(ExactRestart, AnIncrementalCounterCountsTheReplayedChanges) {
  TempDir dir;
  DurableOptions o;
  o.registry = registry();
  PageId a, count;
  {
    DurableRuntime db(dir.path(), o);
    a = db.runtime().create_page(32);
    count = db.runtime().create_page(16);
    db.propagator().derive_incremental(count, {a}, "restart.count");
    testing::commit_i64(db.runtime(), a, 1);
    testing::commit_i64(db.runtime(), a, 2);
    db.checkpoint();
    for (int i = 3; i <= 5; ++i) testing::commit_i64(db.runtime(), a, i);
    EXPECT_EQ(db.runtime().read_value<std::uint64_t>(count, 0), 5u);
  }
  DurableRuntime db(dir.path(), o);
  EXPECT_EQ(db.recovery().records_replayed, 3u);
  EXPECT_EQ(db.runtime().read_value<std::uint64_t>(count, 0), 5u);
}

TEST(ExactRestart, CheckpointRefusesAnIncrementalNodeWithNeitherANameNorARebuild) {
  TempDir dir;
  DurableRuntime db(dir.path());
  PageId a = db.runtime().create_page(8), out = db.runtime().create_page(16);
  db.propagator().derive_incremental(out, {a}, digest_incremental());
  try {
    db.checkpoint();
    FAIL() << "the checkpoint was written";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::InvalidArgument);
    EXPECT_NE(std::string(e.what()).find(out.to_string()), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("rebuild"), std::string::npos) << e.what();
  }
  bool any = false;
  for (const auto& e : fs::directory_iterator(dir.path()))
    any = any || e.path().filename().string().rfind("checkpoint-", 0) == 0;
  EXPECT_FALSE(any) << "a refused checkpoint left a file";
  db.propagator().remove_node(out);
  db.propagator().derive_incremental(out, {a}, digest_incremental(), digest_rebuild());
  EXPECT_NO_THROW(db.checkpoint());
}

// DEFERRED and BATCH queues (and an IMMEDIATE wave still on its way) are run by the checkpoint before it copies
// the pages, so its derived pages reflect exactly its LSN, whatever the application had propagated.
TEST(ExactRestart, ACheckpointTakenWithWavesPendingRestoresTheUninterruptedState) {
  for (PropagationMode mode : {PropagationMode::Deferred, PropagationMode::Batch}) {
    TempDir dir;
    DurableOptions o;
    o.registry = registry();
    o.propagation.mode = mode;
    PageId a, count;
    std::uint64_t live = 0;
    {
      DurableRuntime db(dir.path(), o);
      a = db.runtime().create_page(32);
      count = db.runtime().create_page(16);
      db.propagator().derive_incremental(count, {a}, "restart.count");
      testing::commit_i64(db.runtime(), a, 1);  // not propagated before the checkpoint
      db.checkpoint();
      testing::commit_i64(db.runtime(), a, 2);
      db.propagator().propagate();
      live = state_hash(db.runtime());
    }
    DurableRuntime db(dir.path(), o);
    EXPECT_EQ(state_hash(db.runtime()), live);
  }
}

}  // namespace
}  // namespace mmsb
