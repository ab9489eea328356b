// graph/engine.hpp — the propagation engine's state, shared by the files that implement it (internal to mmsb).
//
// Propagator::Impl is one object; its code is split by concern:
//   plan.cpp       graph version and plan: nodes and slots, the topological order, chains, the flow graph
//   wave.cpp       the wave executor: which nodes a wave reaches, running them, publishing their outputs
//   queue.cpp      queues and modes: the commit listener, IMMEDIATE/DEFERRED/BATCH draining, the worker thread
//   observers.cpp  observers and stats: subscriptions, events, delivery after the wave, counters and exports
//   propagator.cpp the public Propagator members, which lock and delegate
//
// Structure. Every page that a node reads or writes (or an observer watches) has a Slot; a Slot records the wave
// in which its page last changed and that change's delta, so "did an input change in this wave?" is one atomic
// load per input. Commits find a page's Slot through a tag on the page record. The DependencyGraph (Boost.Graph)
// is the authority on edges, cycles and the topological order; from it the engine derives, once per graph shape,
// an execution plan: each node's topological position, the fused linear chains, a flat successor array for the
// breadth-first walk, and a TBB flow graph whose tasks are bundles of sibling chains.
//
// A wave: mark the changed slots → walk the successor array from them (plus stale nodes) to find the affected
// nodes → run them inline in topological order when they are few or one chain, else fire the flow graph, whose
// tasks skip nodes outside the wave. A node locks its inputs shared and its output exclusive, computes, diffs and
// publishes under those locks. Observers get what the wave produced after it, outside the engine lock.
//
// Memory ordering. Work handed to TBB crosses threads inside libtbb, which sanitizers cannot see into, so the
// engine states its own happens-before edges with atomics: the caller publishes the wave number (release) after
// preparing the wave and each task acquires it; a producer publishes its slot's change (release) after writing
// its delta and consumers acquire it; every task ends with an acq_rel increment that the caller acquires after
// wait_for_all().
//
// Thread-safety: see the comment of each member group (most are guarded by engine_mutex).
#pragma once

#include <tbb/task_arena.h>

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <exception>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <thread>
#include <unordered_map>
#include <utility>
#include <vector>

#include "graph/dependency_graph.hpp"
#include "graph/latency_histogram.hpp"
#include "mmsb/graph.hpp"
#include "mmsb/runtime.hpp"
#include "runtime/commit_listener.hpp"
#include "runtime/page_allocator.hpp"
#include "runtime/runtime_impl.hpp"

namespace mmsb {
namespace detail {

// How often node runs and commits are timed, so clock reads stay off the hot paths: a node run costs ~60 ns, a
// clock read ~20 ns.
constexpr std::uint64_t kSampleHopsEvery = 64;
constexpr std::uint64_t kSampleCommitsEvery = 16;

inline const char* node_kind_name(NodeKind kind) {
  switch (kind) {
    case NodeKind::Map:
      return "map";
    case NodeKind::Passthrough:
      return "passthrough";
    case NodeKind::Incremental:
      return "incremental";
  }
  return "?";
}

struct Node;

struct Slot {
  explicit Slot(PageId id, PageRecord* rec) : page(id), record(rec) {}
  const PageId page;
  PageRecord* const record;
  std::atomic<std::uint64_t> changed_wave{0};  // release-stored after `delta`
  std::atomic<const Delta*> delta{nullptr};
  std::vector<Node*> readers;       // nodes with this page as a data input (engine lock)
  std::atomic<int> subscribers{0};  // page subscriptions (observers)
  // BATCH: the commits not yet propagated, folded into one delta. Guarded by the page's lock, which every commit
  // of this page holds while it publishes, so folds happen in LSN order.
  Delta pending;
  bool has_pending = false;
  std::uint64_t pending_folds = 0;  // deltas folded into `pending` after the first
};

// A 64-byte aligned scratch buffer from the page allocator (map outputs are written here before publishing).
struct Scratch {
  detail::Block block;
  std::size_t size = 0;
  ~Scratch() { release(); }
  void release() noexcept {
    if (block.data) detail::PageAllocator::global().deallocate(block.data, block.capacity);
    block = {};
  }
  std::span<std::byte> resize(std::size_t n) {
    if (n > block.capacity || block.data == nullptr) {
      release();
      block = detail::PageAllocator::global().allocate(std::max<std::size_t>(n, 1), detail::Zeroing::Uninitialized);
    }
    size = n;
    return {block.data, n};
  }
};

struct Node {
  PageId output;
  Slot* out_slot = nullptr;
  NodeKind kind = NodeKind::Map;
  std::vector<Slot*> inputs;
  MapFunction map;
  IncrementalFunction incremental;
  ByteRemap remap;
  NodeOptions options;
  std::string function;                 // the registered function name, when bound by name
  std::vector<PageRecord*> lock_order;  // inputs and output, by PageId, unique

  // Plan (rebuilt per graph version).
  std::uint64_t topo = 0;
  std::size_t chain = 0;  // the fused linear chain this node belongs to

  // Wave state.
  std::atomic<std::uint64_t> reached_wave{0};
  std::atomic<std::uint64_t> completed_wave{0};
  std::atomic<bool> stale{false};
  Delta out_delta;
  Scratch scratch;
  std::vector<std::span<const std::byte>> spans;
  std::vector<const Delta*> input_deltas;
};

// Per-task counts, added to the shared counters once per task rather than once per node (those atomics would
// otherwise bounce between cores on every node of a parallel wave).
struct Tally {
  std::uint32_t wanted = 0;  // the observers' event mask, read once per task
  std::uint64_t recomputed = 0, skipped = 0, cut_off = 0, failed = 0, bytes = 0, runs = 0;
};

constexpr std::uint32_t event_bit(EventKind kind) { return EventMask{kind}.bits(); }

// A derived or committed change of a subscribed page, kept for delivery after the wave. A committed delta is
// shared with its PendingCommit rather than copied: a wave rewriting many large pages would otherwise allocate and
// fault in a second copy of every payload and undo for its page observers (such as the GPU mirror).
struct ObservedChange {
  PageId page;
  std::shared_ptr<const Delta> delta;
  std::uint64_t epoch = 0;
};

struct PendingCommit {
  std::uint64_t lsn = 0;
  std::uint64_t published_ns = 0;  // set on sampled commits, for the commit latency
  // Immutable once queued; page observers may share it. One allocation (make_shared of an array) holds the deltas
  // and the control block, no more than the plain vector it replaces (the engine's allocation test counts them).
  std::shared_ptr<Delta[]> deltas;
  std::size_t count = 0;  // deltas[0, count) are the commit's watched deltas
};

// A node's page locks: its inputs shared and its output exclusive, taken in PageId order (as commits take theirs,
// so the two never deadlock) and dropped on scope exit. Holding the output from the start means the node computes,
// diffs and publishes in one pass, and readers never see the output between two of those steps.
class NodeLocks {
 public:
  NodeLocks(const std::vector<PageRecord*>& pages, PageRecord* output) : pages_(pages), output_(output) {
    for (;;) {
      for (PageRecord* p : pages_) {
        if (p == output_) {
          p->mutex.lock();
        } else {
          p->mutex.lock_shared();
        }
        ++locked_;
        if (p->deleted.load(std::memory_order_relaxed)) detail::throw_not_found(p->id);
      }
      // A logged commit to the output page itself is on its way to the disk (runtime.hpp, "Visibility"): let it
      // publish first, holding no lock it needs, rather than write under the in-flight deltas it heads.
      detail::InFlight* in_flight = output_->in_flight_front.load(std::memory_order_acquire);
      if (in_flight == nullptr) return;
      unlock_all();
      output_->in_flight_front.wait(in_flight, std::memory_order_acquire);
    }
  }
  ~NodeLocks() { unlock_all(); }
  NodeLocks(const NodeLocks&) = delete;
  NodeLocks& operator=(const NodeLocks&) = delete;

 private:
  void unlock_all() noexcept {
    while (locked_ > 0) {
      PageRecord* p = pages_[--locked_];
      if (p == output_) {
        p->mutex.unlock();
      } else {
        p->mutex.unlock_shared();
      }
    }
  }

  const std::vector<PageRecord*>& pages_;
  PageRecord* output_;
  std::size_t locked_ = 0;
};

struct FlowPlan;  // the TBB flow graph of a graph version (plan.cpp)
struct FlowPlanDeleter {
  void operator()(FlowPlan* plan) const noexcept;  // plan.cpp, where FlowPlan is complete
};

}  // namespace detail

struct Propagator::Impl : detail::CommitListener {
  using Slot = detail::Slot;
  using Node = detail::Node;
  using Tally = detail::Tally;
  using PageChange = detail::ObservedChange;
  using PendingCommit = detail::PendingCommit;

  Impl(Runtime& rt, PropagatorOptions opts);
  ~Impl() override;

  Runtime& runtime;
  Runtime::Impl& runtime_impl;
  PropagatorOptions options;
  tbb::task_arena arena;

  // Structure: guarded by engine_mutex (taken by structural calls and by waves, so a wave sees a fixed graph).
  std::recursive_mutex engine_mutex;
  detail::DependencyGraph graph;
  std::unordered_map<PageId, std::unique_ptr<Node>> nodes;
  std::unordered_map<PageId, std::unique_ptr<Slot>> slots;  // never shrinks; commits find slots via listener_tag

  // Plan, rebuilt when the structure changes (nodes or edges added or removed).
  std::uint64_t structure_version = 0;  // engine_mutex
  std::uint64_t plan_version = ~std::uint64_t{0};
  std::vector<Node*> topo_nodes;
  // The data successors of each node as one contiguous array (CSR, by topological position), with reached-marks
  // and chain ids beside it: a wave's breadth-first walk then reads flat arrays instead of chasing node → slot →
  // readers pointers, which cost dependent cache misses per hop once a graph outgrows the cache.
  std::vector<std::uint32_t> successor_offsets;
  std::vector<std::uint32_t> successor_targets;
  std::vector<std::uint64_t> reached_mark;
  std::vector<std::uint32_t> chain_of;
  std::vector<std::uint32_t> affected_positions;      // engine_mutex: this wave's nodes, as topological positions
  std::vector<std::vector<Node*>> chains;             // fused linear chains, each in topological order
  std::vector<std::vector<std::size_t>> chain_preds;  // chains that must finish before each chain starts
  std::vector<Node*> stale_nodes;                     // engine_mutex: nodes to recompute in the next wave
  std::uint64_t flow_version = ~std::uint64_t{0};
  std::unique_ptr<detail::FlowPlan, detail::FlowPlanDeleter> flow;  // engine_mutex

  // Wave state.
  std::atomic<std::uint64_t> wave_number{0};
  std::atomic<std::uint64_t> tasks_done{0};
  std::atomic<bool> cancelled{false};
  std::mutex failure_mutex;
  PageId failed_page;           // guarded by failure_mutex
  std::exception_ptr failure;   // guarded by failure_mutex
  std::vector<Node*> affected;  // engine_mutex

  // Queue of published commits.
  std::mutex queue_mutex;
  std::condition_variable queue_space, queue_nonempty;
  std::deque<PendingCommit> queue;            // guarded by queue_mutex
  std::atomic<std::size_t> reserved{0};       // commits between reserve() and being drained (or released)
  std::atomic<std::size_t> blocked{0};        // commits waiting in reserve() for queue space
  std::atomic<std::size_t> batch_commits{0};  // BATCH: commits folded into slots since the last drain
  std::mutex dirty_mutex;
  std::vector<Slot*> dirty_slots;       // guarded by dirty_mutex: BATCH slots with a pending delta
  std::vector<Slot*> drain_slots;       // engine_mutex: the ones being drained
  std::vector<Delta> drain_deltas;      // engine_mutex: their pending deltas, swapped out (capacity reused)
  bool stopping = false;                // guarded by queue_mutex
  std::exception_ptr background_error;  // guarded by queue_mutex
  std::thread worker;

  std::mutex done_mutex;
  std::condition_variable wave_done;
  std::atomic<int> waiters{0};  // threads inside wait_for(); commits and waves notify only when there are some

  struct Counters {
    std::atomic<std::uint64_t> waves{0}, recomputed{0}, skipped{0}, cut_off{0}, failed{0}, inline_waves{0},
        plan_builds{0}, queued{0}, composed{0}, bytes{0};
  } counters;
  detail::LatencyHistogram wave_latency, hop_latency, commit_latency;
  std::atomic<std::uint64_t> batch_sample_ns{0};  // BATCH: publish time of a sampled commit not yet propagated

  // Observers. Subscriptions are guarded by observers_mutex; callbacks are called on copies of their shared_ptrs,
  // outside every lock, so a callback may subscribe, unsubscribe or commit.
  std::mutex observers_mutex;
  SubscriptionId next_subscription = 1;  // observers_mutex
  std::unordered_map<SubscriptionId, std::pair<PageId, std::shared_ptr<PageCallback>>> page_subscriptions;
  std::unordered_map<SubscriptionId, std::pair<EventMask, std::shared_ptr<EventCallback>>> event_subscriptions;
  std::atomic<std::uint32_t> wanted_events{0};  // union of the event subscriptions' kinds
  // What a wave produced for observers, delivered by deliver() once the engine lock is released.
  std::mutex pending_mutex;
  std::vector<Event> pending_events;        // pending_mutex
  std::vector<PageChange> pending_changes;  // pending_mutex

  // --- observers (observers.cpp) --------------------------------------------------------------------------------
  bool wants(EventKind kind) const noexcept {
    return (wanted_events.load(std::memory_order_relaxed) & EventMask{kind}.bits()) != 0;
  }
  [[gnu::cold]] void emit(Event event);
  // Records a page change for page subscribers and PageChanged/PageResized observers.
  // `owner`, when set, keeps `d` alive (it points into the owner): the change shares it instead of copying it.
  [[gnu::cold]] void note_change(Slot* slot, const Delta& d, std::uint64_t epoch, std::uint64_t wave,
                                 const std::shared_ptr<const void>& owner = nullptr);
  // Calls the callbacks for everything the finished waves produced. Must run without the engine lock.
  void deliver();
  void deliver_events(const std::vector<Event>& events, bool report_failures);
  void refresh_wanted_events();  // observers_mutex held
  void notify_waiters();
  void page_event(EventKind kind, PageId page) noexcept;

  // --- structure and plan (plan.cpp) ----------------------------------------------------------------------------
  PageRecord* live_record(PageId id);
  Slot* slot_for(PageId id);
  void add_node(std::unique_ptr<Node> node, const std::vector<PageId>& inputs);
  void remove_node(PageId out);
  // Rebuilds the topological order and the chains when the structure changed. A node joins its predecessor's chain
  // when it is that predecessor's only successor and has no other predecessor; topological order guarantees the
  // predecessor's chain already exists.
  void ensure_order();
  // Node successors for ordering: nodes whose page depends on this node's output by any edge kind.
  std::vector<Node*> successors_of(const Node& node);
  // Builds the flow graph (see plan.cpp).
  void ensure_flow_plan();
  // Fires the flow graph for the current wave and waits for it (in the arena).
  void run_flow_plan();

  // --- node execution and waves (wave.cpp) ----------------------------------------------------------------------
  void record_failure(Node& node, std::exception_ptr error);
  // Writes `d` (ranges and payload set, or computed here by diffing the scratch buffer) into the node's output page
  // as one new epoch. Returns false if the delta is empty (cutoff). The caller holds the output's exclusive lock.
  bool publish(Node& node, Delta& d, bool diff_against_scratch);
  bool compute_map(Node& node);
  // Forwards the input's delta through the remap window; a stale node copies the whole window instead.
  bool compute_passthrough(Node& node, std::uint64_t wave, bool stale);
  bool compute_incremental(Node& node, std::uint64_t wave);
  void add_tally(const Tally& t);
  void run_node(Node& node, std::uint64_t wave, Tally& tally);
  static std::string describe(std::exception_ptr error);
  // Runs one wave for the given changed pages (and stale nodes). engine_mutex must be held.
  // `owner`, when set, owns the deltas of `changes`: page observers then share them instead of copying them.
  void run_wave(const std::vector<std::pair<PageId, const Delta*>>& changes,
                const std::shared_ptr<const void>& owner = nullptr);
  [[noreturn]] static void throw_node_error(PageId page, std::exception_ptr error);
  bool any_stale() const { return !stale_nodes.empty(); }

  // --- queues and modes (queue.cpp) -----------------------------------------------------------------------------
  // Frees `n` reserved queue places and wakes commits blocked on a full queue.
  void free_places(std::size_t n);
  // Runs what is queued, then hands observers what the waves produced, outside the engine lock (callbacks may
  // commit, which in IMMEDIATE mode drains again on this thread).
  void drain();
  // Runs queued commits according to the mode; then stale nodes if nothing else ran.
  void drain_locked();
  // BATCH: takes every slot's folded delta (under its page lock) and runs them as one wave.
  void drain_batch();
  // Folds `next` into `acc` (acc then next). The common case, `next` rewriting bytes `acc` already covers, is done
  // in place: same ranges, newer payload, the older undo kept. Otherwise compose().
  static void fold(Delta& acc, const Delta& next);
  void worker_loop();
  // One commit in kSampleCommitsEvery per thread is timed from here to the end of its wave.
  static bool sample_this_commit() noexcept;
  Slot* slot_of(PageId page) const noexcept;
  // BATCH: fold each watched delta into its page's pending delta. Runs under the commit's page locks.
  void publish_batch(std::span<const Delta> deltas) noexcept;

  // detail::CommitListener
  void reserve() override;
  void release() noexcept override;
  void published(std::uint64_t lsn, std::span<const Delta> deltas) noexcept override;
  void after_commit(std::uint64_t lsn) override;
  void page_created(PageId page) noexcept override { page_event(EventKind::PageCreated, page); }
  void page_deleted(PageId page) noexcept override { page_event(EventKind::PageDeleted, page); }
};

}  // namespace mmsb
