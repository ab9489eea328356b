#include "llm/thread_team.hpp"

#include <immintrin.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "llm/cpu_time.hpp"

namespace mmsb::llm {

namespace {

// How long a worker polls for the next job before it sleeps, and how long run() polls for the last pieces before
// it yields its core: a decoding step starts jobs microseconds apart, a paused engine should cost nothing.
constexpr auto kSpin = std::chrono::microseconds(200);
// A part starts in pieces of an eighth of it: a worker the OS deschedules inside a piece holds back at most that
// much of the job (the others take the rest of its part), and claims stay rare next to the pieces' work.
constexpr unsigned kPiecesPerPart = 8;

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

void print_stats(const ThreadTeam::Stats& s) {
  auto us = [](std::uint64_t ns) { return static_cast<double>(ns) / 1e3; };
  auto ull = [](std::uint64_t v) { return static_cast<unsigned long long>(v); };
  std::uint64_t pieces = 0;
  for (std::uint64_t p : s.pieces_run) pieces += p;
  std::fprintf(stderr, "thread team: %llu jobs, %llu items in %llu pieces, %.1f us in jobs, caller waited %.1f us",
               ull(s.jobs), ull(s.items), ull(pieces), us(s.job_ns), us(s.caller_wait_ns));
  for (std::size_t t = 0; t < s.busy_ns.size(); ++t) {
    std::fprintf(stderr, "; thread %zu: busy %.1f us (cpu %.1f us), %llu items in %llu pieces (%llu taken from others)",
                 t, us(s.busy_ns[t]), us(s.busy_cpu_ns[t]), ull(s.items_run[t]), ull(s.pieces_run[t]),
                 ull(s.stolen[t]));
    if (t > 0) {
      std::fprintf(stderr, ", joined %llu jobs, first claim %.2f us after publication on average",
                   ull(s.jobs_joined[t]),
                   s.jobs_joined[t] ? us(s.late_ns[t]) / static_cast<double>(s.jobs_joined[t]) : 0.0);
    }
  }
  std::fprintf(stderr, "\n");
}

std::uint64_t part_word(unsigned front, unsigned back) { return std::uint64_t{front} << 32 | back; }

}  // namespace

bool ThreadTeam::stats_wanted() {
  const char* env = std::getenv("MMSB_TEAM_STATS");
  return env != nullptr && std::strcmp(env, "0") != 0;
}

ThreadTeam::ThreadTeam(unsigned threads)
    : parts_count_(std::max(threads, 2u)), parts_(new Part[parts_count_]), timed_(stats_wanted()) {
  if (timed_) {
    for (auto* v : {&stats_.busy_ns, &stats_.busy_cpu_ns, &stats_.pieces_run, &stats_.items_run, &stats_.stolen,
                    &stats_.jobs_joined, &stats_.late_ns}) {
      v->assign(threads, 0);
    }
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

// Every part of the finished job is empty (each item was claimed before done_ reached the count), so a worker still
// leaving it claims nothing until a part of this job is stored; whatever it claims then is this job's.
void ThreadTeam::publish(JobRef job, unsigned items) {
  job_ = job;
  cap_.store(std::max(1u, (items + parts_count_ * kPiecesPerPart - 1) / (parts_count_ * kPiecesPerPart)),
             std::memory_order_relaxed);
  done_.store(0, std::memory_order_relaxed);
  if (timed_) published_ns_ = now_ns();
  for (unsigned p = 0; p < parts_count_; ++p) {
    const auto front = static_cast<unsigned>(std::uint64_t{items} * p / parts_count_);
    const auto back = static_cast<unsigned>(std::uint64_t{items} * (p + 1) / parts_count_);
    parts_[p].word.store(part_word(front, back), std::memory_order_release);  // publishes job_, done_, the stamp
  }
}

// Claims a piece of `part`: from its front (the owner) or its back (another thread), half of what is left but at
// most the job's cap, so that the pieces shrink to one item as the part runs out.
bool ThreadTeam::take(Part& part, bool front, Piece& piece) const {
  std::uint64_t word = part.word.load(std::memory_order_acquire);
  for (;;) {
    const auto first = static_cast<unsigned>(word >> 32), last = static_cast<unsigned>(word & 0xffffffffu);
    if (first >= last) return false;
    const unsigned n = std::min(cap_.load(std::memory_order_relaxed), (last - first + 1) / 2);
    const std::uint64_t next = front ? part_word(first + n, last) : part_word(first, last - n);
    if (part.word.compare_exchange_weak(word, next, std::memory_order_acq_rel, std::memory_order_acquire)) {
      piece = front ? Piece{first, first + n, false} : Piece{last - n, last, true};
      return true;
    }
  }
}

// The thread's own part first, then the others' in turn (from the back; from the front where no thread owns the
// part, in a team of one timing the pieces of two).
bool ThreadTeam::claim(unsigned thread, Piece& piece) {
  if (take(parts_[thread], true, piece)) return true;
  for (unsigned i = 1; i < parts_count_; ++i) {
    const unsigned other = (thread + i) % parts_count_;
    if (take(parts_[other], other >= size(), piece)) {
      piece.stolen = true;
      return true;
    }
  }
  return false;
}

void ThreadTeam::run_pieces(unsigned thread) {
  Piece piece;
  while (claim(thread, piece)) {
    job_(piece.first, piece.last, thread);
    done_.fetch_add(piece.last - piece.first, std::memory_order_release);
  }
}

// One claim and piece with MMSB_TEAM_STATS: the piece's time, and for a worker's first piece of a job its lateness.
bool ThreadTeam::run_one_piece_timed(unsigned thread, bool& first) {
  Piece piece;
  if (!claim(thread, piece)) return false;
  const std::uint64_t start = now_ns(), start_cpu = thread_cpu_ns();
  if (first && thread > 0) {
    stats_.late_ns[thread] += start - published_ns_;
    ++stats_.jobs_joined[thread];
  }
  first = false;
  job_(piece.first, piece.last, thread);
  stats_.busy_cpu_ns[thread] += thread_cpu_ns() - start_cpu;
  stats_.busy_ns[thread] += now_ns() - start;
  ++stats_.pieces_run[thread];
  stats_.items_run[thread] += piece.last - piece.first;
  stats_.stolen[thread] += piece.stolen ? 1 : 0;
  done_.fetch_add(piece.last - piece.first, std::memory_order_release);
  return true;
}

void ThreadTeam::run(JobRef job, unsigned items) {
  if (items == 1 || (workers_.empty() && !timed_)) {
    job(0, items, 0);
    return;
  }
  publish(job, items);
  if (!workers_.empty()) {
    generation_.fetch_add(1, std::memory_order_release);
    generation_.notify_all();
  }
  auto all_done = [this, items] { return done_.load(std::memory_order_acquire) == items; };
  if (!timed_) {
    run_pieces(0);
    spin_then(all_done, /*yield_after=*/true);
    return;
  }
  bool first = true;
  while (run_one_piece_timed(0, first)) {
  }
  const std::uint64_t waiting = now_ns();
  spin_then(all_done, /*yield_after=*/true);
  const std::uint64_t end = now_ns();
  count_job(items, end);
  stats_.caller_wait_ns += end - waiting;
}

void ThreadTeam::count_job(unsigned items, std::uint64_t end_ns) {
  ++stats_.jobs;
  stats_.items += items;
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
    if (timed_) {
      bool first = true;
      while (run_one_piece_timed(thread, first)) {
      }
    } else {
      run_pieces(thread);
    }
  }
}

}  // namespace mmsb::llm
