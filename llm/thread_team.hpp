// llm/thread_team.hpp — a fixed team of threads that splits one product (or attention over heads) inside a graph
// node. A job is cut into chunks; every thread of the team (the caller included) claims chunks one at a time
// until none is left, and run() returns when all are done.
//
//   ThreadTeam team(2);
//   team.run([&](unsigned chunk, unsigned chunks, unsigned thread) { rows of `chunk` ... }, 16);
//
// A node runs inline on the thread that committed the step (the engine's waves are small), so its products would
// otherwise use one core whatever the propagator's worker count; the team gives them the engine's `threads`.
// Chunks are claimed dynamically rather than one fixed part per thread: on a machine shared with other work a
// worker may not be scheduled for milliseconds, and then the caller runs its chunks instead of waiting for it
// (the wait is at most the chunk a descheduled worker is inside). Between jobs, workers spin briefly (a decoding
// step starts several jobs within microseconds) and then sleep on a futex, so an idle engine costs no CPU.
//
// With MMSB_TEAM_STATS=1 in the environment a team times its jobs (jobs, chunks, each thread's busy time, the
// caller's wait for the last chunks, how late the workers claim their first chunk) and prints one summary line to
// stderr when destroyed: a debugging aid for the split's balance and the cost of its barriers.
//
// Thread-safety: run() is called by one thread at a time (the node running the product); jobs never overlap.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <thread>
#include <vector>

namespace mmsb::llm {

// A non-owning reference to a job callable as job(chunk, chunks, thread) (no allocation, unlike std::function).
// `thread` (0 .. team size - 1) names the thread running the chunk, for per-thread scratch.
class JobRef {
 public:
  JobRef() noexcept = default;
  template <class F>
  JobRef(F& f) noexcept  // NOLINT: implicit, as a function_ref
      : object_(&f), call_([](void* o, unsigned chunk, unsigned chunks, unsigned thread) {
          (*static_cast<F*>(o))(chunk, chunks, thread);
        }) {}
  void operator()(unsigned chunk, unsigned chunks, unsigned thread) const { call_(object_, chunk, chunks, thread); }

 private:
  void* object_ = nullptr;
  void (*call_)(void*, unsigned, unsigned, unsigned) = nullptr;
};

class ThreadTeam {
 public:
  // `threads` >= 1; 1 starts no worker and run() calls the job inline (timed with MMSB_TEAM_STATS, for comparison).
  explicit ThreadTeam(unsigned threads);
  ~ThreadTeam();
  ThreadTeam(const ThreadTeam&) = delete;
  ThreadTeam& operator=(const ThreadTeam&) = delete;

  unsigned size() const noexcept { return static_cast<unsigned>(workers_.size()) + 1; }
  // Runs job(chunk, chunks, thread) once for every chunk in [0, chunks) (chunks >= 1), each on some
  // thread of the team; returns when every chunk has returned. The job must not throw (products and attention do
  // not).
  void run(JobRef job, unsigned chunks);

  // The timings of MMSB_TEAM_STATS (all zero without it), in steady-clock nanoseconds; read them while no job runs.
  struct Stats {
    std::uint64_t jobs = 0, chunks = 0;
    std::uint64_t job_ns = 0;          // the caller's time in run() for split jobs, publish to last chunk done
    std::uint64_t caller_wait_ns = 0;  // of which the caller spent waiting for other threads' last chunks
    // Per thread (0 the caller): time inside chunks (wall clock, and the thread's CPU time, which excludes time
    // the OS gave other processes), chunks run, and for workers the jobs they took part in and the summed time from
    // a job's publication to their first claim in it.
    std::vector<std::uint64_t> busy_ns, busy_cpu_ns, chunks_run, jobs_joined, late_ns;
  };
  const Stats& stats() const noexcept { return stats_; }
  // Whether MMSB_TEAM_STATS is set (and not "0"); a team reads it when constructed.
  static bool stats_wanted();

 private:
  void work(unsigned thread);
  bool run_one_chunk(unsigned thread);
  bool run_one_chunk_timed(unsigned thread, bool& first);
  void count_job(unsigned chunks, std::uint64_t end_ns);

  // Written by the caller once per job, read by every thread: one cache line; the counters the threads update
  // on lines of their own, so that claims, completions and the workers' polling do not contend for one line.
  std::vector<std::thread> workers_;
  JobRef job_;                                       // the current job: written before claim_ is published
  alignas(64) std::atomic<std::uint64_t> claim_{0};  // chunks of the current job << 32 | the next chunk to claim
  alignas(64) std::atomic<unsigned> done_{0};        // chunks of the current job finished
  // Advanced once per job (and once more to stop): wakes workers.
  alignas(64) std::atomic<std::uint64_t> generation_{0};
  std::atomic<bool> stop_{false};
  bool timed_ = false;
  std::uint64_t published_ns_ = 0;
  Stats stats_;
};

// The half-open range [begin, end) of part `part` of `parts` over `n` items, in multiples of `align` (but the last).
struct PartRange {
  std::size_t begin, end;
};
inline PartRange part_range(std::size_t n, unsigned part, unsigned parts, std::size_t align) {
  const std::size_t units = (n + align - 1) / align;
  const std::size_t begin = units * part / parts * align, end = units * (part + 1) / parts * align;
  return {begin < n ? begin : n, end < n ? end : n};
}

}  // namespace mmsb::llm
