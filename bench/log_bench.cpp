// Durability metrics: the transaction log (serialize/log.hpp) against raw fdatasync on the same file system.
// Every workload uses a fresh directory under the system temp dir, removed afterwards, and checks its result.
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <memory>
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

namespace fs = std::filesystem;
using clock_type = std::chrono::steady_clock;

[[noreturn]] void check_failed(const std::string& what) { throw std::runtime_error(what); }

struct TempDir : mmsb::testing::TempDir {
  TempDir() : mmsb::testing::TempDir("mmsb-log-bench") {}
};

// Median microseconds of one 4 KiB append + fdatasync to a plain file.
double fsync_append_us() {
  TempDir dir;
  const fs::path file = dir.path() / "raw";
  int fd = ::open(file.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  if (fd < 0) check_failed("fsync_us: cannot create " + file.string());
  std::vector<char> block(4096, 'x');
  constexpr int kIterations = 50;
  std::vector<double> us;
  for (int i = 0; i < kIterations + 1; ++i) {
    const auto start = clock_type::now();
    if (::write(fd, block.data(), block.size()) != static_cast<ssize_t>(block.size()) || ::fdatasync(fd) != 0) {
      ::close(fd);
      check_failed("fsync_us: write or fdatasync failed");
    }
    const double elapsed = std::chrono::duration<double, std::micro>(clock_type::now() - start).count();
    if (i > 0) us.push_back(elapsed);  // the first append also allocates the file's first extent
  }
  ::close(fd);
  if (fs::file_size(file) != (kIterations + 1) * block.size()) check_failed("fsync_us: file has the wrong size");
  std::nth_element(us.begin(), us.begin() + kIterations / 2, us.end());
  return us[kIterations / 2];
}

Register fsync_us("fsync_us", "baseline: microseconds for one 4 KiB append + fdatasync (median of 50), temp dir",
                  [] { return fsync_append_us(); });

Register fsyncs_per_s("fsyncs_per_s", "baseline: 1e6 / fsync_us (the same workload, as a rate)",
                      [] { return 1e6 / fsync_append_us(); });

struct LoggedRun {
  double commits_per_s = 0;
  double records_per_sync = 0;  // from LogWriter::stats(), during the timed run
};

// Commits per second of `threads` threads, each committing 64-byte single-page transactions to its own pages,
// through a Runtime whose commit sink is a LogWriter with `options`, for about `duration`.
LoggedRun logged_commits(int threads, serialize::LogOptions options, std::chrono::milliseconds duration) {
  TempDir dir;
  constexpr int kPagesPerThread = 8;
  constexpr std::size_t kBytes = 64;
  std::uint64_t total = 0;
  std::uint64_t logged = 0;
  double seconds = 0;
  LoggedRun run;
  {
    Runtime rt;
    auto log = std::make_shared<serialize::LogWriter>(dir.path(), options);
    rt.set_commit_sink(log);
    std::vector<std::vector<PageId>> pages(static_cast<std::size_t>(threads));
    for (auto& own : pages)
      for (int i = 0; i < kPagesPerThread; ++i) own.push_back(rt.create_page(kBytes));
    const std::uint64_t created = static_cast<std::uint64_t>(threads) * kPagesPerThread;
    const serialize::LogStats before = log->stats();  // the page creations, synced one by one
    std::atomic<bool> go{false}, stop{false};
    std::vector<std::uint64_t> counts(static_cast<std::size_t>(threads), 0);
    std::vector<std::thread> workers;
    for (int t = 0; t < threads; ++t) {
      workers.emplace_back([&, t] {
        const auto& own = pages[static_cast<std::size_t>(t)];
        std::byte payload[kBytes];
        std::uint64_t n = 0;
        while (!go.load(std::memory_order_acquire)) std::this_thread::yield();
        while (!stop.load(std::memory_order_relaxed)) {
          // Never all zeros: a commit that leaves a page as it was logs nothing (change-only commits).
          std::memset(payload, static_cast<int>((n & 0xff) | 1), kBytes);
          std::memcpy(payload, &n, sizeof n);
          auto txn = rt.begin();
          txn.write(own[n % own.size()], 0, payload);
          txn.commit();
          ++n;
        }
        counts[static_cast<std::size_t>(t)] = n;
        if (n > 0) {
          const std::uint64_t last = n - 1;
          if (rt.read_value<std::uint64_t>(own[last % own.size()], 0) != last)
            check_failed("logged commits: last commit not visible");
        }
      });
    }
    const auto start = clock_type::now();
    go.store(true, std::memory_order_release);
    std::this_thread::sleep_for(duration);
    stop.store(true, std::memory_order_relaxed);
    for (auto& w : workers) w.join();
    seconds = std::chrono::duration<double>(clock_type::now() - start).count();
    for (std::uint64_t c : counts) total += c;
    rt.set_commit_sink(nullptr);
    const serialize::LogStats during = log->stats();
    run.records_per_sync = static_cast<double>(during.records - before.records) /
                           static_cast<double>(std::max<std::uint64_t>(during.syncs - before.syncs, 1));
    log->sync();
    logged = log->stats().records - created;
  }
  if (logged != total) {
    check_failed("logged commits: the log holds " + std::to_string(logged) + " records, the workers committed " +
                 std::to_string(total));
  }
  if (total == 0) check_failed("logged commits: no commit completed");
  run.commits_per_s = static_cast<double>(total) / seconds;
  return run;
}

serialize::LogOptions every_commit() {
  serialize::LogOptions o;
  o.sync = serialize::SyncPolicy::EveryCommit;
  return o;
}

Register log_commits("log_commits_per_s",
                     "4 threads, 64-byte single-page commits logged with SyncPolicy::Interval (10 ms), ~0.5 s", [] {
                       serialize::LogOptions o;
                       o.sync = serialize::SyncPolicy::Interval;
                       o.sync_interval = std::chrono::milliseconds(10);
                       return logged_commits(4, o, std::chrono::milliseconds(500)).commits_per_s;
                     });

Register log_commits_sync("log_commits_per_s_sync",
                          "16 threads, 64-byte single-page commits, SyncPolicy::EveryCommit (group commit), ~1 s", [] {
                            return logged_commits(16, every_commit(), std::chrono::milliseconds(1000)).commits_per_s;
                          });

Register records_per_sync(
    "group_commit_records_per_sync",
    "the log_commits_per_s_sync workload: records per fdatasync during the timed run (LogWriter::stats())",
    [] { return logged_commits(16, every_commit(), std::chrono::milliseconds(1000)).records_per_sync; });

// The fsync baseline is measured just before and just after the group-commit run, in the same process: this VM's
// fsync time moves by 10x from minute to minute, so a baseline from another process is not comparable.
Register group_factor("group_commit_factor",
                      "log_commits_per_s_sync x fsync_us measured around it = durable commits per fdatasync-time "
                      "(target >= 8)",
                      [] {
                        const double before = fsync_append_us();
                        const double commits_per_s =
                            logged_commits(16, every_commit(), std::chrono::milliseconds(1000)).commits_per_s;
                        const double after = fsync_append_us();
                        return commits_per_s * (before + after) / 2 / 1e6;
                      });

Register replay("replay_commits_per_s",
                "DurableRuntime recovery (read, decode, apply) of a log of 1,000,000 small commits", [] {
                  TempDir dir;
                  constexpr std::uint64_t kCommits = 1'000'000;
                  constexpr int kPages = 64;
                  std::uint64_t live_hash = 0;
                  {
                    DurableOptions o;
                    o.sync = SyncPolicy::None;
                    DurableRuntime db(dir.path(), o);
                    Runtime& rt = db.runtime();
                    std::vector<PageId> pages;
                    for (int i = 0; i < kPages; ++i) pages.push_back(rt.create_page(64));
                    for (std::uint64_t i = 0; i < kCommits; ++i) {
                      auto txn = rt.begin();
                      txn.write_value<std::uint64_t>(pages[i % kPages], (i * 8) % 64,
                                                     i + 1);  // never 0: each commit changes its page
                      txn.commit();
                    }
                    live_hash = state_hash(rt);
                  }
                  const auto start = clock_type::now();
                  DurableOptions o;
                  o.sync = SyncPolicy::None;
                  DurableRuntime db(dir.path(), o);
                  const double seconds = std::chrono::duration<double>(clock_type::now() - start).count();
                  const std::uint64_t records = db.recovery().records_replayed;
                  if (records != kCommits + kPages || state_hash(db.runtime()) != live_hash)
                    check_failed("replay_commits_per_s: recovered " + std::to_string(records) +
                                 " records, or a different state");
                  return static_cast<double>(records) / seconds;
                });

// The checkpoint workload: 10,000 pages of 4 KiB (40 MiB, a quarter of each page random, the rest zeros).
constexpr std::size_t kCheckpointPages = 10'000;
constexpr std::size_t kCheckpointPageBytes = 4096;

CheckpointInfo checkpoint_once() {
  TempDir dir;
  DurableOptions o;
  o.sync = SyncPolicy::None;
  DurableRuntime db(dir.path(), o);
  Runtime& rt = db.runtime();
  std::uint64_t x = 88172645463325252ull;
  std::vector<std::byte> bytes(kCheckpointPageBytes / 4);
  for (std::size_t i = 0; i < kCheckpointPages; ++i) {
    PageId p = rt.create_page(kCheckpointPageBytes);
    for (auto& b : bytes) {
      x ^= x << 13, x ^= x >> 7, x ^= x << 17;
      b = static_cast<std::byte>(x);
    }
    auto txn = rt.begin();
    txn.write(p, 0, bytes);
    txn.commit();
  }
  CheckpointInfo info = db.checkpoint();
  if (info.pages != kCheckpointPages || info.raw_bytes < kCheckpointPages * kCheckpointPageBytes)
    check_failed("checkpoint: wrote " + std::to_string(info.pages) + " pages");
  return info;
}

Register checkpoint_pause("checkpoint_pause_us",
                          "DurableRuntime::checkpoint() of 10,000 4 KiB pages: how long commits are held back (us)",
                          [] { return std::chrono::duration<double, std::micro>(checkpoint_once().pause).count(); });

Register checkpoint_rate("checkpoint_mb_per_s",
                         "DurableRuntime::checkpoint() of 10,000 4 KiB pages (25% random bytes): raw MB per second, "
                         "zstd level 3, fsync and rename included",
                         [] {
                           CheckpointInfo info = checkpoint_once();
                           return static_cast<double>(info.raw_bytes) / 1e6 /
                                  std::chrono::duration<double>(info.duration).count();
                         });

Register memcpy_state("memcpy_40mb_us", "baseline: memcpy of 40 MiB (the checkpoint workload's page bytes), us", [] {
  std::vector<char> from(kCheckpointPages * kCheckpointPageBytes, 1), to(from.size());
  std::memcpy(to.data(), from.data(), from.size());  // fault the pages in first
  from[12345] = 2;
  const auto start = clock_type::now();
  std::memcpy(to.data(), from.data(), from.size());
  const double us = std::chrono::duration<double, std::micro>(clock_type::now() - start).count();
  if (to[12345] != 2) check_failed("memcpy_40mb_us: copy lost");
  return us;
});

Register pause_ratio(Ratio{"checkpoint_pause_vs_memcpy_ratio", "checkpoint_pause_us", "memcpy_40mb_us",
                           "checkpoint_pause_us / memcpy_40mb_us: the commit pause over a plain copy of the bytes"});

}  // namespace
}  // namespace mmsb::bench
