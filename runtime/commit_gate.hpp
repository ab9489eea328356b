// runtime/commit_gate.hpp — lets a checkpoint hold new commits back and wait for the ones in flight (internal).
//
// Every operation that takes an LSN (commit, page creation, deletion) runs between enter() and leave(), except the
// commits of a runtime without a commit sink: only a durable runtime's checkpoint closes the gate, and a durable
// runtime has its sink from before its first commit to after its last (Runtime::set_commit_sink is not called while
// commits run), so a sinkless commit never meets a closed gate and skips its two atomic operations. close()
// stops new entries and waits until none is inside; then no record is half-written to the log and every page
// reflects exactly the commits up to the runtime's last LSN — a consistent cut. open() lets the held-back
// operations go on. The open path is two uncontended atomic RMWs on one word.
//
// Thread-safety: enter()/leave() from any thread; close()/open() from one thread at a time (the caller
// serializes checkpoints), and never from inside enter()/leave().
#pragma once

#include <atomic>
#include <cstdint>

namespace mmsb::detail {

class CommitGate {
 public:
  void enter() noexcept {
    if ((state_.fetch_add(1, std::memory_order_acquire) & kClosed) == 0) [[likely]]
      return;
    enter_closed();
  }
  void leave() noexcept {
    std::uint64_t seen = state_.fetch_sub(1, std::memory_order_release);
    if ((seen & kClosed) && (seen & kCountMask) == 1) state_.notify_all();  // the closer waits for zero
  }
  void close() noexcept {
    std::uint64_t seen = state_.fetch_or(kClosed, std::memory_order_acq_rel) | kClosed;
    while ((seen & kCountMask) != 0) {
      state_.wait(seen, std::memory_order_acquire);
      seen = state_.load(std::memory_order_acquire);
    }
  }
  void open() noexcept {
    state_.fetch_and(~kClosed, std::memory_order_release);
    state_.notify_all();
  }

 private:
  // enter() found the gate closed: backs out, waits for open() and tries again. Out of line, so that the open
  // path inlines into every commit.
  [[gnu::noinline]] void enter_closed() noexcept {
    for (;;) {
      leave();
      std::uint64_t seen = state_.load(std::memory_order_acquire);
      while (seen & kClosed) {
        state_.wait(seen, std::memory_order_acquire);
        seen = state_.load(std::memory_order_acquire);
      }
      if ((state_.fetch_add(1, std::memory_order_acquire) & kClosed) == 0) return;
    }
  }

  static constexpr std::uint64_t kClosed = std::uint64_t{1} << 63;
  static constexpr std::uint64_t kCountMask = kClosed - 1;
  std::atomic<std::uint64_t> state_{0};
};

// enter() on construction, leave() on destruction.
class GateGuard {
 public:
  explicit GateGuard(CommitGate& gate) noexcept : gate_(gate) { gate_.enter(); }
  ~GateGuard() { gate_.leave(); }
  GateGuard(const GateGuard&) = delete;
  GateGuard& operator=(const GateGuard&) = delete;

 private:
  CommitGate& gate_;
};

}  // namespace mmsb::detail
