// llm/thread_team.hpp — a fixed team of threads that splits one product (or attention over heads) inside a graph
// node: the calling thread runs part 0, `size() - 1` workers run the others, and run() returns when all are done.
//
//   ThreadTeam team(2);
//   team.run([&](unsigned part, unsigned parts) { rows [part * n / parts, (part + 1) * n / parts) ... });
//
// A node runs inline on the thread that committed the step (the engine's waves are small), so its products would
// otherwise use one core whatever the propagator's worker count; the team gives them the engine's `threads`.
// Between jobs, workers spin briefly (a decoding step starts several jobs within microseconds) and then sleep on
// a futex, so an idle engine costs no CPU.
//
// Thread-safety: run() is called by one thread at a time (the node running the product); jobs never overlap.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <thread>
#include <vector>

namespace mmsb::llm {

// A non-owning reference to a job callable as job(part, parts) (no allocation, unlike std::function).
class JobRef {
 public:
  JobRef() noexcept = default;
  template <class F>
  JobRef(F& f) noexcept  // NOLINT: implicit, as a function_ref
      : object_(&f), call_([](void* o, unsigned part, unsigned parts) { (*static_cast<F*>(o))(part, parts); }) {}
  void operator()(unsigned part, unsigned parts) const { call_(object_, part, parts); }

 private:
  void* object_ = nullptr;
  void (*call_)(void*, unsigned, unsigned) = nullptr;
};

class ThreadTeam {
 public:
  // `threads` >= 1 parts per job; 1 starts no worker and run() calls the job inline.
  explicit ThreadTeam(unsigned threads);
  ~ThreadTeam();
  ThreadTeam(const ThreadTeam&) = delete;
  ThreadTeam& operator=(const ThreadTeam&) = delete;

  unsigned size() const noexcept { return static_cast<unsigned>(workers_.size()) + 1; }
  // Runs job(part, size()) for every part, part 0 on the calling thread; returns when every part has returned.
  // The job must not throw (products and attention do not).
  void run(JobRef job);

 private:
  void work(unsigned part);

  std::vector<std::thread> workers_;
  JobRef job_;                                // the current job, published by generation_
  std::atomic<std::uint64_t> generation_{0};  // advanced once per job (and once more to stop)
  std::atomic<unsigned> pending_{0};          // worker parts of the current job not yet finished
  std::atomic<bool> stop_{false};
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
