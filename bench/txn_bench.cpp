// Transaction metrics (issue 17 and the change-only commits of issue 19). Each workload checks its result.
//
//   txn_rmw_per_s_1t                     one thread, in memory: read_value + write_value + commit through
//                                        Runtime::transact (tracked read, validated), the commits_per_s_1t pages
//   txn_rmw_vs_commits_ratio             txn_rmw_per_s_1t / commits_per_s_1t, the two workloads alternated in one
//                                        process (target >= 0.8)
//   txn_conflict_overhead_ratio          time of a tracked read-modify-write commit / the same work with the read
//                                        made outside the transaction (a blind write), alternated in one process
//                                        (target <= 1.25)
//   read_p99_during_sync_us              p99 of Runtime::read_value on a page that 8 EveryCommit writers keep
//                                        committing to through the log (target <= 20)
//   read_p99_idle_us                     baseline: the same reads with no writer
//   same_page_commits_per_sync           8 EveryCommit writers on one page: log records per fdatasync (target >= 4)
//   log_bytes_per_changed_byte           log bytes (LogWriter::stats().bytes) per byte that actually changed, when
//                                        each commit rewrites a whole 64 KiB tile of which ~10% changed (target
//                                        <= 2.2); _no_undo with RuntimeOptions::record_undo off (target <= 1.2)
//   log_bytes_per_changed_byte_write_through   the same commits with Transaction::set_write_through()
//   commit_64k_diff_us / commit_64k_write_through_us / commit_diff_vs_write_through_ratio
//                                        in memory: the cost of one such commit, change-only against write-through,
//                                        alternated in one process
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <memory>
#include <random>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "bench/harness.hpp"
#include "mmsb/mmsb.hpp"
#include "serialize/log.hpp"
#include "tests/support/temp_dir.hpp"

namespace mmsb::bench {
namespace {

using clock_type = std::chrono::steady_clock;
constexpr std::size_t kPage = 4096;  // as commits_per_s_1t

[[noreturn]] void check_failed(const std::string& what) { throw std::runtime_error(what); }

struct TempDir : mmsb::testing::TempDir {
  TempDir() : mmsb::testing::TempDir("mmsb-txn-bench") {}
};

// 8-byte counters on 64 pages of commits_per_s_1t's size: step i increments counter i (all of them in turn), so
// the total after the run must equal the number of steps.
struct Counters {
  Runtime rt;
  std::vector<PageId> pages;
  std::uint64_t steps = 0;

  Counters() {
    for (int i = 0; i < 64; ++i) pages.push_back(rt.create_page(kPage));
  }
  PageId page() const { return pages[steps % pages.size()]; }
  std::uint64_t offset() const { return (steps * 8) % kPage; }
  // The next step as a read-modify-write through Runtime::transact (tracked read, validated commit).
  void transact_increment() {
    const PageId p = page();
    const std::uint64_t o = offset();
    rt.transact(
        [&](Transaction& txn) { txn.write_value<std::uint64_t>(p, o, txn.read_value<std::uint64_t>(p, o) + 1); });
    ++steps;
  }
  void check_no_increment_lost(const std::string& key) const {
    std::uint64_t total = 0;
    for (PageId p : pages)
      for (std::size_t o = 0; o < kPage; o += 8) total += rt.read_value<std::uint64_t>(p, o);
    if (total != steps) check_failed(key + ": increments were lost");
  }
};

Register rmw_1t("txn_rmw_per_s_1t",
                "read-modify-write transactions per second, one thread, in memory (tracked read + write + validated "
                "commit via Runtime::transact)",
                [] {
                  Counters c;
                  const double ns = ns_per_op([&] { c.transact_increment(); });
                  c.check_no_increment_lost("txn_rmw_per_s_1t");
                  return 1e9 / ns;
                });

Register rmw_ratio("txn_rmw_vs_commits_ratio",
                   "txn_rmw_per_s_1t / commits_per_s_1t, both workloads in one process, batches alternated so the "
                   "machine's load hits both alike (target >= 0.8)",
                   [] {
                     Counters c;
                     Runtime plain;  // commits_per_s_1t's workload: a blind 8-byte write per commit
                     std::vector<PageId> pages;
                     for (int i = 0; i < 64; ++i) pages.push_back(plain.create_page(kPage));
                     std::uint64_t i = 0;
                     auto commit = [&] {
                       auto txn = plain.begin();
                       txn.write_value<std::uint64_t>(pages[i % pages.size()], (i * 8) % kPage, i);
                       txn.commit();
                       ++i;
                     };
                     double rmw_ns = 0, commit_ns = 0;
                     for (int round = 0; round < 5; ++round) {
                       commit_ns += ns_per_op(commit, std::chrono::milliseconds(20));
                       rmw_ns += ns_per_op([&] { c.transact_increment(); }, std::chrono::milliseconds(20));
                     }
                     c.check_no_increment_lost("txn_rmw_vs_commits_ratio");
                     return commit_ns / rmw_ns;
                   });

Register overhead("txn_conflict_overhead_ratio",
                  "ns of a tracked, validated read-modify-write commit / ns of the same read (untracked) + blind "
                  "write commit, batches alternated in one process (target <= 1.25)",
                  [] {
                    Counters c;
                    // The same increment either way: the same bytes written to the same pages, the value read
                    // through the transaction (recorded, validated at commit) or outside it (a blind write).
                    auto increment = [&](bool tracked) {
                      const PageId page = c.page();
                      const std::uint64_t offset = c.offset();
                      auto txn = c.rt.begin();
                      const auto v = tracked ? txn.read_value<std::uint64_t>(page, offset)
                                             : c.rt.read_value<std::uint64_t>(page, offset);
                      txn.write_value<std::uint64_t>(page, offset, v + 1);
                      txn.commit();
                      ++c.steps;
                    };
                    double blind_ns = 0, tracked_ns = 0;
                    for (int round = 0; round < 5; ++round) {
                      blind_ns += ns_per_op([&] { increment(false); }, std::chrono::milliseconds(20));
                      tracked_ns += ns_per_op([&] { increment(true); }, std::chrono::milliseconds(20));
                    }
                    c.check_no_increment_lost("txn_conflict_overhead_ratio");
                    return tracked_ns / blind_ns;
                  });

// ---- Readers while every-commit writers sync

struct SyncRun {
  double read_p99_us = 0;
  double commits_per_sync = 0;
};

// `writers` threads commit 8-byte values to their own slots of one page through a LogWriter (EveryCommit) for
// about `duration`, while one reader times Runtime::read_value on that page. With no writer, only the reads.
SyncRun readers_during_sync(int writers, std::chrono::milliseconds duration) {
  TempDir dir;
  SyncRun run;
  Runtime rt;
  auto log = std::make_shared<serialize::LogWriter>(dir.path());
  rt.set_commit_sink(log);
  const PageId page = rt.create_page(8 * 64);
  std::atomic<bool> stop{false};
  std::atomic<int> started{0};
  std::vector<std::uint64_t> commits(static_cast<std::size_t>(writers), 0);
  std::vector<std::thread> threads;
  for (int t = 0; t < writers; ++t) {
    threads.emplace_back([&, t] {
      started.fetch_add(1);
      std::uint64_t n = 0;
      while (!stop.load(std::memory_order_relaxed)) {
        auto txn = rt.begin();
        txn.write_value<std::uint64_t>(page, 8 * static_cast<std::uint64_t>(t), ++n);
        txn.commit();
      }
      commits[static_cast<std::size_t>(t)] = n;
    });
  }
  while (started.load() < writers) std::this_thread::yield();
  const serialize::LogStats before = log->stats();
  std::vector<std::uint32_t> ns;
  ns.reserve(1 << 22);
  const auto end = clock_type::now() + duration;
  std::uint64_t sink = 0;
  while (ns.size() < ns.capacity()) {
    const auto t0 = clock_type::now();
    sink += rt.read_value<std::uint64_t>(page, 0);
    const auto t1 = clock_type::now();
    ns.push_back(static_cast<std::uint32_t>(
        std::min<std::int64_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(t1 - t0).count(), 0xffffffff)));
    if (t1 >= end) break;
  }
  const serialize::LogStats after = log->stats();
  stop.store(true);
  for (auto& th : threads) th.join();
  rt.set_commit_sink(nullptr);
  for (int t = 0; t < writers; ++t) {
    if (commits[static_cast<std::size_t>(t)] != 0 &&
        rt.read_value<std::uint64_t>(page, 8 * static_cast<std::uint64_t>(t)) != commits[static_cast<std::size_t>(t)])
      check_failed("readers_during_sync: a writer's last commit is not visible");
  }
  if (writers > 0 && sink == ~std::uint64_t{0}) check_failed("unreachable");  // keeps the reads
  std::nth_element(ns.begin(), ns.begin() + static_cast<std::ptrdiff_t>(ns.size() * 99 / 100), ns.end());
  run.read_p99_us = ns[ns.size() * 99 / 100] / 1e3;
  run.commits_per_sync = static_cast<double>(after.records - before.records) /
                         static_cast<double>(std::max<std::uint64_t>(after.syncs - before.syncs, 1));
  return run;
}

Register read_p99("read_p99_during_sync_us",
                  "p99 latency (us) of Runtime::read_value on a page that 8 EveryCommit writers keep committing to "
                  "through the log, ~0.5 s (target <= 20)",
                  [] { return readers_during_sync(8, std::chrono::milliseconds(500)).read_p99_us; });

Register read_p99_idle("read_p99_idle_us", "baseline: the read_p99_during_sync_us reads with no writer",
                       [] { return readers_during_sync(0, std::chrono::milliseconds(200)).read_p99_us; });

Register same_page("same_page_commits_per_sync",
                   "8 EveryCommit writers on one page through the log: records per fdatasync, ~0.5 s (target >= 4)",
                   [] { return readers_during_sync(8, std::chrono::milliseconds(500)).commits_per_sync; });

// ---- Change-only commits: log size and commit cost

constexpr std::size_t kTile = 64 * 1024;
constexpr int kTiles = 16;

// The next version of a tile: ~10% of its bytes changed, in runs of 16-128 bytes at random places.
void evolve(std::vector<std::byte>& tile, std::mt19937_64& rng) {
  std::uint64_t changed = 0;
  while (changed < kTile / 10) {
    const std::size_t length = 16 + rng() % 113;
    const std::size_t at = rng() % (kTile - length);
    for (std::size_t k = 0; k < length; ++k) tile[at + k] ^= static_cast<std::byte>(1 + rng() % 255);
    changed += length;
  }
}

std::uint64_t differing_bytes(const std::vector<std::byte>& a, const std::vector<std::byte>& b) {
  std::uint64_t n = 0;
  for (std::size_t i = 0; i < a.size(); ++i) n += a[i] != b[i];
  return n;
}

// Log bytes per changed byte when each commit rewrites one whole tile (the application keeps its own arrays and
// commits its tiles), logged with SyncPolicy::None.
double log_bytes_per_changed(bool record_undo, bool write_through) {
  TempDir dir;
  RuntimeOptions options;
  options.record_undo = record_undo;
  Runtime rt(options);
  serialize::LogOptions log_options;
  log_options.sync = serialize::SyncPolicy::None;
  auto log = std::make_shared<serialize::LogWriter>(dir.path(), log_options);
  rt.set_commit_sink(log);
  std::vector<PageId> pages;
  for (int i = 0; i < kTiles; ++i) pages.push_back(rt.create_page(kTile));
  std::vector<std::vector<std::byte>> tiles(kTiles, std::vector<std::byte>(kTile));
  std::mt19937_64 rng(7);
  const std::uint64_t before = log->stats().bytes;
  std::uint64_t changed = 0;
  for (int step = 0; step < 4 * kTiles; ++step) {
    auto& tile = tiles[static_cast<std::size_t>(step % kTiles)];
    const std::vector<std::byte> old = tile;
    evolve(tile, rng);
    changed += differing_bytes(old, tile);
    auto txn = rt.begin();
    if (write_through) txn.set_write_through();
    txn.write(pages[static_cast<std::size_t>(step % kTiles)], 0, tile);
    txn.commit();
  }
  const std::uint64_t logged = log->stats().bytes - before;
  for (int i = 0; i < kTiles; ++i) {
    if (rt.read_all(pages[static_cast<std::size_t>(i)]) != tiles[static_cast<std::size_t>(i)])
      check_failed("log_bytes_per_changed_byte: a tile differs from what was committed");
  }
  rt.set_commit_sink(nullptr);
  return static_cast<double>(logged) / static_cast<double>(changed);
}

Register log_ratio("log_bytes_per_changed_byte",
                   "log bytes per changed byte, commits rewriting whole 64 KiB tiles with ~10% changed, undo logged "
                   "(target <= 2.2)",
                   [] { return log_bytes_per_changed(true, false); });
Register log_ratio_no_undo("log_bytes_per_changed_byte_no_undo",
                           "log_bytes_per_changed_byte with RuntimeOptions::record_undo off (target <= 1.2)",
                           [] { return log_bytes_per_changed(false, false); });
Register log_ratio_write_through("log_bytes_per_changed_byte_write_through",
                                 "baseline: log_bytes_per_changed_byte with Transaction::set_write_through() (every "
                                 "staged byte logged, as before change-only commits)",
                                 [] { return log_bytes_per_changed(true, true); });

struct CommitCost {
  double diff_us = 0, write_through_us = 0;
};

// One commit of a whole 64 KiB tile with ~10% changed, change-only against write-through, in memory; batches of
// both alternate so the machine's load hits both alike.
CommitCost commit_cost() {
  Runtime rt;
  std::vector<PageId> pages;
  for (int i = 0; i < kTiles; ++i) pages.push_back(rt.create_page(kTile));
  // Two versions ~10% apart, precomputed so the timed loop only commits: each commit flips a tile between them.
  std::mt19937_64 rng(11);
  std::vector<std::vector<std::byte>> versions(2, std::vector<std::byte>(kTile));
  for (auto& b : versions[0]) b = static_cast<std::byte>(rng());
  versions[1] = versions[0];
  evolve(versions[1], rng);
  std::uint64_t step = 0;
  auto commit = [&](bool write_through) {
    auto txn = rt.begin();
    if (write_through) txn.set_write_through();
    txn.write(pages[step % kTiles], 0, versions[(step / kTiles) % 2]);
    if (txn.commit() == 0) check_failed("commit_64k: a commit changed nothing");
    ++step;
  };
  CommitCost cost;
  for (int round = 0; round < 5; ++round) {
    cost.diff_us += ns_per_op([&] { commit(false); }, std::chrono::milliseconds(20)) / 1e3 / 5;
    cost.write_through_us += ns_per_op([&] { commit(true); }, std::chrono::milliseconds(20)) / 1e3 / 5;
  }
  return cost;
}

Register commit_diff("commit_64k_diff_us", "in memory: one change-only commit of a whole 64 KiB tile, ~10% changed",
                     [] { return commit_cost().diff_us; });
Register commit_wt("commit_64k_write_through_us", "baseline: the same commit with set_write_through()",
                   [] { return commit_cost().write_through_us; });
Register commit_ratio("commit_diff_vs_write_through_ratio",
                      "commit_64k_diff_us / commit_64k_write_through_us, alternated in one process", [] {
                        const CommitCost cost = commit_cost();
                        return cost.diff_us / cost.write_through_us;
                      });

}  // namespace
}  // namespace mmsb::bench
