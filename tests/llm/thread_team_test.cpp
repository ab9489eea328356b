// The thread team that splits products inside a node: every chunk of every job runs exactly once, on a thread of
// the team; a worker stalled inside a chunk does not keep the caller from running the other chunks; back-to-back
// jobs never leak a chunk from one into the next (run it under the tsan preset).
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <numeric>
#include <thread>
#include <vector>

#include "llm/thread_team.hpp"

namespace mmsb::llm {
namespace {

TEST(ThreadTeam, EveryChunkRunsOnceOnAThreadOfTheTeam) {
  for (unsigned threads : {1u, 2u, 3u, 4u}) {
    ThreadTeam team(threads);
    ASSERT_EQ(team.size(), threads);
    for (unsigned chunks : {1u, 2u, 7u, 16u, 100u}) {
      std::vector<std::atomic<int>> runs(chunks);
      std::atomic<bool> bad_thread{false}, bad_count{false};
      auto job = [&](unsigned chunk, unsigned count, unsigned thread) {
        if (thread >= threads) bad_thread = true;
        if (count != chunks) bad_count = true;
        runs[chunk].fetch_add(1);
      };
      team.run(job, chunks);
      EXPECT_FALSE(bad_thread) << threads << " threads";
      EXPECT_FALSE(bad_count) << threads << " threads";
      for (unsigned c = 0; c < chunks; ++c) EXPECT_EQ(runs[c].load(), 1) << "chunk " << c << " of " << chunks;
    }
  }
}

// The caller's first chunk waits until the worker has claimed one; the worker then stays inside its chunk until the
// caller has run all the others. With one fixed part per thread this could never finish (the caller would wait
// for the worker's whole half); with chunks claimed one at a time the caller takes everything the stalled worker
// has not claimed.
TEST(ThreadTeam, CallerRunsTheChunksOfAStalledWorker) {
  ThreadTeam team(2);
  constexpr unsigned kChunks = 16;
  for (int job_index = 0; job_index < 20; ++job_index) {
    std::atomic<unsigned> by_caller{0}, by_worker{0};
    auto job = [&](unsigned, unsigned, unsigned thread) {
      if (thread == 0) {
        if (by_caller.fetch_add(1) == 0) {
          while (by_worker.load() == 0) std::this_thread::yield();
        }
        return;
      }
      by_worker.fetch_add(1);
      while (by_caller.load() < kChunks - 1) std::this_thread::yield();
    };
    team.run(job, kChunks);
    EXPECT_EQ(by_worker.load(), 1u) << "a worker stalled in its first chunk claimed another";
    EXPECT_EQ(by_caller.load(), kChunks - 1);
  }
}

// Many short jobs back to back with varying chunk counts: a worker waking late must not run a chunk twice, run one
// of a finished job, or miss one of the current job.
TEST(ThreadTeam, BackToBackJobsRunEachChunkOnce) {
  ThreadTeam team(3);
  std::vector<std::atomic<int>> runs(17);
  for (int job_index = 0; job_index < 20000; ++job_index) {
    const unsigned chunks = 1 + static_cast<unsigned>(job_index % 17);
    for (unsigned c = 0; c < chunks; ++c) runs[c].store(0, std::memory_order_relaxed);
    auto job = [&](unsigned chunk, unsigned, unsigned) { runs[chunk].fetch_add(1, std::memory_order_relaxed); };
    team.run(job, chunks);
    for (unsigned c = 0; c < chunks; ++c) {
      ASSERT_EQ(runs[c].load(std::memory_order_relaxed), 1) << "job " << job_index << " chunk " << c;
    }
  }
}

// MMSB_TEAM_STATS: every split job and chunk is counted once, on the thread that ran it, and a team of one times
// its inline jobs alike (the single-thread baseline of the same chunks). Without the variable nothing is counted.
TEST(ThreadTeam, StatsCountEveryJobAndChunkWhenAsked) {
  ::setenv("MMSB_TEAM_STATS", "1", 1);
  for (unsigned threads : {1u, 2u}) {
    ThreadTeam team(threads);
    std::atomic<unsigned> ran{0};
    auto job = [&](unsigned, unsigned, unsigned) { ran.fetch_add(1); };
    for (int i = 0; i < 50; ++i) team.run(job, 16);
    const ThreadTeam::Stats& s = team.stats();
    EXPECT_EQ(s.jobs, 50u) << threads << " threads";
    EXPECT_EQ(s.chunks, 800u) << threads << " threads";
    ASSERT_EQ(s.chunks_run.size(), threads);
    EXPECT_EQ(std::accumulate(s.chunks_run.begin(), s.chunks_run.end(), std::uint64_t{0}), 800u);
    EXPECT_EQ(ran.load(), 800u);
    EXPECT_LE(s.caller_wait_ns, s.job_ns);
  }
  ::unsetenv("MMSB_TEAM_STATS");
  ThreadTeam quiet(2);
  auto nothing = [](unsigned, unsigned, unsigned) {};
  quiet.run(nothing, 16);
  EXPECT_EQ(quiet.stats().jobs, 0u);
  EXPECT_TRUE(quiet.stats().chunks_run.empty());
}

}  // namespace
}  // namespace mmsb::llm
