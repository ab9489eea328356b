#include "llm/thread_team.hpp"

#include <immintrin.h>

#include <chrono>

namespace mmsb::llm {

namespace {

// How long a worker polls for the next job before it sleeps, and how long run() polls for the workers before it
// yields its core: a decoding step starts jobs microseconds apart, a paused engine should cost nothing.
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

}  // namespace

ThreadTeam::ThreadTeam(unsigned threads) {
  for (unsigned part = 1; part < threads; ++part) workers_.emplace_back([this, part] { work(part); });
}

ThreadTeam::~ThreadTeam() {
  stop_.store(true, std::memory_order_relaxed);
  generation_.fetch_add(1, std::memory_order_release);
  generation_.notify_all();
  for (std::thread& t : workers_) t.join();
}

void ThreadTeam::run(JobRef job) {
  const unsigned parts = size();
  if (parts == 1) return job(0, 1);
  job_ = job;
  pending_.store(parts - 1, std::memory_order_relaxed);
  generation_.fetch_add(1, std::memory_order_release);  // publishes job_ and pending_
  generation_.notify_all();
  job(0, parts);
  spin_then([this] { return pending_.load(std::memory_order_acquire) == 0; }, /*yield_after=*/true);
}

void ThreadTeam::work(unsigned part) {
  std::uint64_t seen = 0;
  for (;;) {
    auto next = [&] { return generation_.load(std::memory_order_acquire) != seen; };
    spin_then(next, /*yield_after=*/false);
    if (!next()) generation_.wait(seen, std::memory_order_acquire);
    seen = generation_.load(std::memory_order_acquire);
    if (stop_.load(std::memory_order_relaxed)) return;
    job_(part, size());
    pending_.fetch_sub(1, std::memory_order_release);
  }
}

}  // namespace mmsb::llm
