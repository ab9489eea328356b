// The thread team that splits products inside a node: every item of every job runs exactly once, on a thread of
// the team; pieces stay inside one thread's part and shrink to one item at its end; a worker stalled inside a piece
// does not keep the caller from running the other items; back-to-back jobs never leak an item from one into the
// next (run it under the tsan preset).
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <mutex>
#include <numeric>
#include <thread>
#include <vector>

#include "llm/thread_team.hpp"

namespace mmsb::llm {
namespace {

TEST(ThreadTeam, EveryItemRunsOnceOnAThreadOfTheTeam) {
  for (unsigned threads : {1u, 2u, 3u, 4u}) {
    ThreadTeam team(threads);
    ASSERT_EQ(team.size(), threads);
    for (unsigned items : {1u, 2u, 7u, 16u, 100u, 1000u}) {
      std::vector<std::atomic<int>> runs(items);
      std::atomic<bool> bad_thread{false}, bad_piece{false};
      auto job = [&](unsigned first, unsigned last, unsigned thread) {
        if (thread >= threads) bad_thread = true;
        if (first >= last || last > items) {
          bad_piece = true;
          return;
        }
        for (unsigned i = first; i < last; ++i) runs[i].fetch_add(1);
      };
      team.run(job, items);
      EXPECT_FALSE(bad_thread) << threads << " threads";
      EXPECT_FALSE(bad_piece) << threads << " threads";
      for (unsigned i = 0; i < items; ++i) EXPECT_EQ(runs[i].load(), 1) << "item " << i << " of " << items;
    }
  }
}

// Two threads own [0, 32) and [32, 64); pieces are at most 64 / 16 = 4 items (an eighth of a part), never cross
// from one part into the other, and each part ends with a piece of one item (the fine tail), whoever claims it.
TEST(ThreadTeam, PiecesStayInsideOnePartAndShrinkToOneItem) {
  ThreadTeam team(2);
  for (int job_index = 0; job_index < 200; ++job_index) {
    std::mutex mutex;
    std::vector<std::pair<unsigned, unsigned>> pieces;
    auto job = [&](unsigned first, unsigned last, unsigned) {
      std::lock_guard lock(mutex);
      pieces.emplace_back(first, last);
    };
    team.run(job, 64);
    unsigned ones_low = 0, ones_high = 0, total = 0;
    for (auto [first, last] : pieces) {
      ASSERT_LE(last - first, 4u) << first << ".." << last;
      ASSERT_TRUE(last <= 32 || first >= 32) << first << ".." << last << " crosses the parts";
      total += last - first;
      if (last - first == 1) ++(first < 32 ? ones_low : ones_high);
    }
    EXPECT_EQ(total, 64u);
    EXPECT_GE(ones_low, 1u);
    EXPECT_GE(ones_high, 1u);
  }
}

// The caller's first piece waits until the worker has claimed one; the worker then stays inside its piece until the
// caller has run all the other items. With one fixed part per thread this could never finish (the caller would wait
// for the worker's whole half); with pieces claimed one at a time the caller takes everything of the stalled
// worker's part that it has not claimed. 16 items: pieces of one item.
TEST(ThreadTeam, CallerRunsTheItemsOfAStalledWorker) {
  ThreadTeam team(2);
  constexpr unsigned kItems = 16;
  for (int job_index = 0; job_index < 20; ++job_index) {
    std::atomic<unsigned> by_caller{0}, by_worker{0};
    auto job = [&](unsigned first, unsigned last, unsigned thread) {
      if (thread == 0) {
        if (by_caller.fetch_add(last - first) == 0) {
          while (by_worker.load() == 0) std::this_thread::yield();
        }
        return;
      }
      by_worker.fetch_add(last - first);
      while (by_caller.load() < kItems - 1) std::this_thread::yield();
    };
    team.run(job, kItems);
    EXPECT_EQ(by_worker.load(), 1u) << "a worker stalled in its first piece claimed another";
    EXPECT_EQ(by_caller.load(), kItems - 1);
  }
}

// Many short jobs back to back with varying item counts: a worker waking late must not run an item twice, run one
// of a finished job, or miss one of the current job.
TEST(ThreadTeam, BackToBackJobsRunEachItemOnce) {
  ThreadTeam team(3);
  std::vector<std::atomic<int>> runs(40);
  for (int job_index = 0; job_index < 20000; ++job_index) {
    const unsigned items = 1 + static_cast<unsigned>(job_index % 40);
    for (unsigned i = 0; i < items; ++i) runs[i].store(0, std::memory_order_relaxed);
    auto job = [&](unsigned first, unsigned last, unsigned) {
      for (unsigned i = first; i < last; ++i) runs[i].fetch_add(1, std::memory_order_relaxed);
    };
    team.run(job, items);
    for (unsigned i = 0; i < items; ++i) {
      ASSERT_EQ(runs[i].load(std::memory_order_relaxed), 1) << "job " << job_index << " item " << i;
    }
  }
}

// MMSB_TEAM_STATS: every split job and item is counted once, on the thread that ran it, and a team of one times
// its inline jobs alike (the single-thread baseline of the same pieces). Without the variable nothing is counted.
TEST(ThreadTeam, StatsCountEveryJobAndItemWhenAsked) {
  ::setenv("MMSB_TEAM_STATS", "1", 1);
  for (unsigned threads : {1u, 2u}) {
    ThreadTeam team(threads);
    std::atomic<unsigned> ran{0};
    auto job = [&](unsigned first, unsigned last, unsigned) { ran.fetch_add(last - first); };
    for (int i = 0; i < 50; ++i) team.run(job, 16);
    const ThreadTeam::Stats& s = team.stats();
    EXPECT_EQ(s.jobs, 50u) << threads << " threads";
    EXPECT_EQ(s.items, 800u) << threads << " threads";
    ASSERT_EQ(s.items_run.size(), threads);
    EXPECT_EQ(std::accumulate(s.items_run.begin(), s.items_run.end(), std::uint64_t{0}), 800u);
    EXPECT_EQ(std::accumulate(s.pieces_run.begin(), s.pieces_run.end(), std::uint64_t{0}), 800u);  // pieces of 1
    EXPECT_EQ(ran.load(), 800u);
    EXPECT_LE(s.caller_wait_ns, s.job_ns);
  }
  ::unsetenv("MMSB_TEAM_STATS");
  ThreadTeam quiet(2);
  auto nothing = [](unsigned, unsigned, unsigned) {};
  quiet.run(nothing, 16);
  EXPECT_EQ(quiet.stats().jobs, 0u);
  EXPECT_TRUE(quiet.stats().items_run.empty());
}

}  // namespace
}  // namespace mmsb::llm
