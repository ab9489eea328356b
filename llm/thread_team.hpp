// llm/thread_team.hpp — a fixed team of threads that splits one product (or attention over heads) inside a graph
// node. A job is a count of items (row tiles, heads); run() returns when every item has been run once.
//
//   ThreadTeam team(2);
//   team.run([&](unsigned first, unsigned last, unsigned thread) { items [first, last) ... }, 32);
//
// A node runs inline on the thread that committed the step (the engine's waves are small), so its products would
// otherwise use one core whatever the propagator's worker count; the team gives them the engine's `threads`.
// Each thread owns a contiguous part of the items (the caller the first) and claims pieces from its front: every
// thread streams its own rows in address order, and claims touch a cache line no other thread writes until the
// part runs out. Pieces start at an eighth of the part and halve near its end, so the last ones are one item.
// A thread whose part is done takes pieces from the back of the others' parts: on a machine shared with other work a
// worker may not be scheduled for milliseconds, and then the caller runs its items instead of waiting for it (the
// wait is at most the piece a descheduled worker is inside); on a quiet one the threads finish within about an item
// of each other. Between jobs, workers spin briefly (a decoding step starts several jobs within microseconds) and
// then sleep on a futex, so an idle engine costs no CPU.
//
// With MMSB_TEAM_STATS=1 in the environment a team times its jobs (jobs, items, pieces, each thread's busy time, the
// caller's wait for the last pieces, how late the workers claim their first piece) and prints one summary line to
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

// A non-owning reference to a job callable as job(first, last, thread) for the items [first, last) (no allocation,
// unlike std::function). `thread` (0 .. team size - 1) names the thread running them, for per-thread scratch.
class JobRef {
 public:
  JobRef() noexcept = default;
  template <class F>
  JobRef(F& f) noexcept  // NOLINT: implicit, as a function_ref
      : object_(&f), call_([](void* o, unsigned first, unsigned last, unsigned thread) {
          (*static_cast<F*>(o))(first, last, thread);
        }) {}
  void operator()(unsigned first, unsigned last, unsigned thread) const { call_(object_, first, last, thread); }

 private:
  void* object_ = nullptr;
  void (*call_)(void*, unsigned, unsigned, unsigned) = nullptr;
};

class ThreadTeam {
 public:
  // `threads` >= 1; 1 starts no worker and run() calls the job inline, or with MMSB_TEAM_STATS runs and times the
  // pieces two threads would claim (the single-thread baseline of the same pieces).
  explicit ThreadTeam(unsigned threads);
  ~ThreadTeam();
  ThreadTeam(const ThreadTeam&) = delete;
  ThreadTeam& operator=(const ThreadTeam&) = delete;

  unsigned size() const noexcept { return static_cast<unsigned>(workers_.size()) + 1; }
  // Runs job(first, last, thread) on pieces [first, last) that together cover every item of [0, items) once
  // (items >= 1), each piece on some thread of the team; returns when every piece has returned. The job must not
  // throw (products and attention do not).
  void run(JobRef job, unsigned items);

  // The timings of MMSB_TEAM_STATS (all zero without it), in steady-clock nanoseconds; read them while no job runs.
  struct Stats {
    std::uint64_t jobs = 0, items = 0;
    std::uint64_t job_ns = 0;          // the caller's time in run() for split jobs, publish to last piece done
    std::uint64_t caller_wait_ns = 0;  // of which the caller spent waiting for other threads' last pieces
    // Per thread (0 the caller): time inside pieces (wall clock, and the thread's CPU time, which excludes time
    // the OS gave other processes), pieces and items run, pieces taken from another thread's part, and for workers
    // the jobs they took part in and the summed time from a job's publication to their first claim in it.
    std::vector<std::uint64_t> busy_ns, busy_cpu_ns, pieces_run, items_run, stolen, jobs_joined, late_ns;
  };
  const Stats& stats() const noexcept { return stats_; }
  // Whether MMSB_TEAM_STATS is set (and not "0"); a team reads it when constructed.
  static bool stats_wanted();

 private:
  // One thread's part of the current job: front << 32 | back, the items [front, back) not yet claimed. Its owner
  // claims from the front, the others from the back, each by compare-and-swap; a line of its own.
  struct alignas(64) Part {
    std::atomic<std::uint64_t> word{0};
  };
  struct Piece {
    unsigned first = 0, last = 0;
    bool stolen = false;
  };
  void work(unsigned thread);
  void publish(JobRef job, unsigned items);
  bool claim(unsigned thread, Piece& piece);
  bool take(Part& part, bool front, Piece& piece) const;
  void run_pieces(unsigned thread);
  bool run_one_piece_timed(unsigned thread, bool& first);
  void count_job(unsigned items, std::uint64_t end_ns);

  // job_ and cap_ are written by the caller once per job before the parts are published (release), read by a thread
  // after its claim (acquire). The parts and done_ sit on lines of their own, so that claims, completions and the
  // workers' polling do not contend for one line.
  std::vector<std::thread> workers_;
  unsigned parts_count_;  // max(team size, 2): a team of one splits and times like two threads
  std::unique_ptr<Part[]> parts_;
  JobRef job_;
  std::atomic<unsigned> cap_{1};               // the largest piece of the current job (read before a claim: atomic)
  alignas(64) std::atomic<unsigned> done_{0};  // items of the current job finished
  // Advanced once per job (and once more to stop): wakes workers.
  alignas(64) std::atomic<std::uint64_t> generation_{0};
  std::atomic<bool> stop_{false};
  bool timed_ = false;
  std::uint64_t published_ns_ = 0;
  Stats stats_;
};

// A half-open range [begin, end) of rows or items.
struct PartRange {
  std::size_t begin, end;
};

}  // namespace mmsb::llm
