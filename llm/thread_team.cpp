#include "llm/thread_team.hpp"

#include <immintrin.h>

#include <chrono>

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

}  // namespace

ThreadTeam::ThreadTeam(unsigned threads) {
  for (unsigned thread = 1; thread < threads; ++thread) workers_.emplace_back([this, thread] { work(thread); });
}

ThreadTeam::~ThreadTeam() {
  stop_.store(true, std::memory_order_relaxed);
  generation_.fetch_add(1, std::memory_order_release);
  generation_.notify_all();
  for (std::thread& t : workers_) t.join();
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

void ThreadTeam::run(JobRef job, unsigned chunks) {
  if (workers_.empty() || chunks == 1) {
    for (unsigned c = 0; c < chunks; ++c) job(c, chunks, 0);
    return;
  }
  job_ = job;
  done_.store(0, std::memory_order_relaxed);
  claim_.store(std::uint64_t{chunks} << 32, std::memory_order_release);  // publishes job_ and done_
  generation_.fetch_add(1, std::memory_order_release);
  generation_.notify_all();
  while (run_one_chunk(0)) {
  }
  spin_then([this, chunks] { return done_.load(std::memory_order_acquire) == chunks; }, /*yield_after=*/true);
}

void ThreadTeam::work(unsigned thread) {
  std::uint64_t seen = 0;
  for (;;) {
    auto next = [&] { return generation_.load(std::memory_order_acquire) != seen; };
    spin_then(next, /*yield_after=*/false);
    if (!next()) generation_.wait(seen, std::memory_order_acquire);
    seen = generation_.load(std::memory_order_acquire);
    if (stop_.load(std::memory_order_relaxed)) return;
    while (run_one_chunk(thread)) {
    }
  }
}

}  // namespace mmsb::llm
