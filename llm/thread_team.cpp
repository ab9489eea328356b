#include "llm/thread_team.hpp"

#include <immintrin.h>

#include <time.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>

namespace mmsb::llm {

namespace {

// How long a worker polls for the next job before it sleeps, and how long run() polls for the last chunks before
// it yields its core: a decoding step starts jobs microseconds apart, a paused engine should cost nothing.
constexpr auto kSpin = std::chrono::microseconds(200);

template <class Done>
void spin_then(Done&& done, bool yield_after) {
  const auto start = std::chrono::steady_clock::now();
  for (unsigned i = 0; !done(); ++i) {
    _mm_pause();
    if ((i & 255) == 255 && std::chrono::steady_clock::now() - start > kSpin) {
      if (!yield_after) return;
      std::this_thread::yield();
    }
  }
}

std::uint64_t now_ns() {
  return static_cast<std::uint64_t>(
      std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch())
          .count());
}

std::uint64_t thread_cpu_ns() {
  timespec ts{};
  ::clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return static_cast<std::uint64_t>(ts.tv_sec) * 1000000000u + static_cast<std::uint64_t>(ts.tv_nsec);
}

void print_stats(const ThreadTeam::Stats& s) {
  auto us = [](std::uint64_t ns) { return static_cast<double>(ns) / 1e3; };
  std::fprintf(stderr, "thread team: %llu jobs, %llu chunks, %.1f us in jobs, caller waited %.1f us",
               static_cast<unsigned long long>(s.jobs), static_cast<unsigned long long>(s.chunks), us(s.job_ns),
               us(s.caller_wait_ns));
  for (std::size_t t = 0; t < s.busy_ns.size(); ++t) {
    std::fprintf(stderr, "; thread %zu: busy %.1f us (cpu %.1f us), %llu chunks", t, us(s.busy_ns[t]),
                 us(s.busy_cpu_ns[t]), static_cast<unsigned long long>(s.chunks_run[t]));
    if (t > 0) {
      std::fprintf(stderr, ", joined %llu jobs, first claim %.2f us after publication on average",
                   static_cast<unsigned long long>(s.jobs_joined[t]),
                   s.jobs_joined[t] ? us(s.late_ns[t]) / static_cast<double>(s.jobs_joined[t]) : 0.0);
    }
  }
  std::fprintf(stderr, "\n");
}

}  // namespace

bool ThreadTeam::stats_wanted() {
  const char* env = std::getenv("MMSB_TEAM_STATS");
  return env != nullptr && std::strcmp(env, "0") != 0;
}

ThreadTeam::ThreadTeam(unsigned threads) : timed_(stats_wanted()) {
  if (timed_) {
    for (auto* v : {&stats_.busy_ns, &stats_.busy_cpu_ns, &stats_.chunks_run, &stats_.jobs_joined, &stats_.late_ns})
      v->assign(threads, 0);
  }
  for (unsigned thread = 1; thread < threads; ++thread) workers_.emplace_back([this, thread] { work(thread); });
}

ThreadTeam::~ThreadTeam() {
  stop_.store(true, std::memory_order_relaxed);
  generation_.fetch_add(1, std::memory_order_release);
  generation_.notify_all();
  for (std::thread& t : workers_) t.join();
  if (timed_) print_stats(stats_);
}

// Claims the next chunk of whatever job is current and runs it. A claim below the job's chunk count means the job
// cannot finish before this chunk does, so job_ stays valid; a claim past it (a finished job, or a worker that woke
// late) does nothing, and the next job's store of claim_ overwrites the excess.
bool ThreadTeam::run_one_chunk(unsigned thread) {
  const std::uint64_t claim = claim_.fetch_add(1, std::memory_order_acq_rel);
  const auto chunks = static_cast<unsigned>(claim >> 32), chunk = static_cast<unsigned>(claim & 0xffffffffu);
  if (chunk >= chunks) return false;
  job_(chunk, chunks, thread);
  done_.fetch_add(1, std::memory_order_release);
  return true;
}

// run_one_chunk with MMSB_TEAM_STATS: the chunk's time, and for a worker's first chunk of a job its lateness.
bool ThreadTeam::run_one_chunk_timed(unsigned thread, bool& first) {
  const std::uint64_t claim = claim_.fetch_add(1, std::memory_order_acq_rel);
  const auto chunks = static_cast<unsigned>(claim >> 32), chunk = static_cast<unsigned>(claim & 0xffffffffu);
  if (chunk >= chunks) return false;
  const std::uint64_t start = now_ns(), start_cpu = thread_cpu_ns();
  if (first && thread > 0) {
    stats_.late_ns[thread] += start - published_ns_;
    ++stats_.jobs_joined[thread];
  }
  first = false;
  job_(chunk, chunks, thread);
  stats_.busy_cpu_ns[thread] += thread_cpu_ns() - start_cpu;
  stats_.busy_ns[thread] += now_ns() - start;
  ++stats_.chunks_run[thread];
  done_.fetch_add(1, std::memory_order_release);
  return true;
}

void ThreadTeam::run(JobRef job, unsigned chunks) {
  if (workers_.empty() || chunks == 1) {
    // Timed only in a team of one: with workers, a worker still leaving the previous job could claim from claim_.
    if (!timed_ || !workers_.empty()) {
      for (unsigned c = 0; c < chunks; ++c) job(c, chunks, 0);
      return;
    }
    published_ns_ = now_ns();
    job_ = job;
    claim_.store(std::uint64_t{chunks} << 32, std::memory_order_relaxed);
    bool first = true;
    while (run_one_chunk_timed(0, first)) {
    }
    count_job(chunks, now_ns());
    return;
  }
  job_ = job;
  done_.store(0, std::memory_order_relaxed);
  if (timed_) published_ns_ = now_ns();
  claim_.store(std::uint64_t{chunks} << 32, std::memory_order_release);  // publishes job_, done_ and published_ns_
  generation_.fetch_add(1, std::memory_order_release);
  generation_.notify_all();
  auto all_done = [this, chunks] { return done_.load(std::memory_order_acquire) == chunks; };
  if (!timed_) {
    while (run_one_chunk(0)) {
    }
    spin_then(all_done, /*yield_after=*/true);
    return;
  }
  bool first = true;
  while (run_one_chunk_timed(0, first)) {
  }
  const std::uint64_t waiting = now_ns();
  spin_then(all_done, /*yield_after=*/true);
  const std::uint64_t end = now_ns();
  count_job(chunks, end);
  stats_.caller_wait_ns += end - waiting;
}

void ThreadTeam::count_job(unsigned chunks, std::uint64_t end_ns) {
  ++stats_.jobs;
  stats_.chunks += chunks;
  stats_.job_ns += end_ns - published_ns_;
}

void ThreadTeam::work(unsigned thread) {
  std::uint64_t seen = 0;
  for (;;) {
    auto next = [&] { return generation_.load(std::memory_order_acquire) != seen; };
    spin_then(next, /*yield_after=*/false);
    if (!next()) generation_.wait(seen, std::memory_order_acquire);
    seen = generation_.load(std::memory_order_acquire);
    if (stop_.load(std::memory_order_relaxed)) return;
    bool first = true;
    if (timed_) {
      while (run_one_chunk_timed(thread, first)) {
      }
    } else {
      while (run_one_chunk(thread)) {
      }
    }
  }
}

}  // namespace mmsb::llm
