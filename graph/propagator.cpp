// The propagation engine: derived-page nodes, waves, modes, observers. See mmsb/graph.hpp for its promises.
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
#include "mmsb/graph.hpp"

#include <nlohmann/json.hpp>
#include <tbb/flow_graph.h>
#include <tbb/task_arena.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <cmath>
#include <sstream>
#include <condition_variable>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <shared_mutex>
#include <thread>
#include <unordered_map>

#include "delta/copy_bytes.hpp"
#include "graph/dependency_graph.hpp"
#include "graph/propagator_access.hpp"
#include "mmsb/runtime.hpp"
#include "runtime/commit_listener.hpp"
#include "runtime/page_allocator.hpp"
#include "runtime/runtime_impl.hpp"

namespace mmsb {

using detail::DependencyGraph;
using detail::DependencyKind;

void MapContext::check_fits(std::size_t size, std::size_t offset, std::size_t length) {
  if (offset > size || size - offset < length) {
    throw Error(ErrorCode::InvalidArgument, "access of " + detail::range_text(offset, length) +
                                                " is outside a page of " + std::to_string(size) + " bytes");
  }
}

void MapContext::throw_no_input(std::size_t index, std::size_t count) {
  throw Error(ErrorCode::InvalidArgument, "input " + std::to_string(index) + " requested from a node with " +
                                              std::to_string(count) + " input(s)");
}

const char* event_kind_name(EventKind kind) noexcept {
  switch (kind) {
    case EventKind::PageCreated: return "page_created";
    case EventKind::PageDeleted: return "page_deleted";
    case EventKind::PageResized: return "page_resized";
    case EventKind::PageChanged: return "page_changed";
    case EventKind::Commit: return "commit";
    case EventKind::WaveBegin: return "wave_begin";
    case EventKind::WaveEnd: return "wave_end";
    case EventKind::NodeRecomputed: return "node_recomputed";
    case EventKind::NodeSkipped: return "node_skipped";
    case EventKind::NodeCutOff: return "node_cut_off";
    case EventKind::NodeFailed: return "node_failed";
    case EventKind::Checkpoint: return "checkpoint";
    case EventKind::Error: return "error";
  }
  return "unknown";
}

namespace {

std::uint64_t steady_ns() {
  return static_cast<std::uint64_t>(
      std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch())
          .count());
}

// Lock-free latency histogram: four buckets per power of two (values below 4 ns get their own buckets).
class LatencyHistogram {
 public:
  void record(std::uint64_t ns) noexcept {
    buckets_[bucket_of(ns)].fetch_add(1, std::memory_order_relaxed);
    count_.fetch_add(1, std::memory_order_relaxed);
    sum_.fetch_add(ns, std::memory_order_relaxed);
    std::uint64_t seen = max_.load(std::memory_order_relaxed);
    while (ns > seen && !max_.compare_exchange_weak(seen, ns, std::memory_order_relaxed)) {
    }
  }
  LatencySummary summary() const noexcept {
    LatencySummary out;
    out.count = count_.load(std::memory_order_relaxed);
    out.max_ns = max_.load(std::memory_order_relaxed);
    if (out.count == 0) return out;
    out.mean_ns = static_cast<double>(sum_.load(std::memory_order_relaxed)) / static_cast<double>(out.count);
    out.p50_ns = quantile(0.50, out.count);
    out.p90_ns = quantile(0.90, out.count);
    out.p99_ns = quantile(0.99, out.count);
    return out;
  }

 private:
  static constexpr std::size_t kBuckets = 64 * 4;
  static std::size_t bucket_of(std::uint64_t ns) noexcept {
    if (ns < 4) return static_cast<std::size_t>(ns);
    const unsigned e = 63u - static_cast<unsigned>(__builtin_clzll(ns));  // ns in [2^e, 2^(e+1)), e >= 2
    return e * 4 + static_cast<std::size_t>((ns >> (e - 2)) & 3);
  }
  // The upper bound of a bucket: a quantile is reported as at most this.
  static std::uint64_t bucket_limit(std::size_t b) noexcept {
    if (b < 4) return b;
    const unsigned e = static_cast<unsigned>(b / 4), sub = static_cast<unsigned>(b % 4);
    const std::uint64_t base = std::uint64_t{1} << e, step = base >> 2;
    return base + step * (sub + 1) - 1;
  }
  std::uint64_t quantile(double q, std::uint64_t count) const noexcept {
    const auto rank = static_cast<std::uint64_t>(std::ceil(q * static_cast<double>(count)));
    std::uint64_t seen = 0;
    for (std::size_t b = 0; b < kBuckets; ++b) {
      seen += buckets_[b].load(std::memory_order_relaxed);
      if (seen >= rank) return std::min(bucket_limit(b), max_.load(std::memory_order_relaxed));
    }
    return max_.load(std::memory_order_relaxed);
  }
  std::array<std::atomic<std::uint64_t>, kBuckets> buckets_{};
  std::atomic<std::uint64_t> count_{0}, sum_{0}, max_{0};
};

// How often node runs and commits are timed, so clock reads stay off the hot paths: a node run costs ~60 ns, a
// clock read ~20 ns.
constexpr std::uint64_t kSampleHopsEvery = 64;
constexpr std::uint64_t kSampleCommitsEvery = 16;

}  // namespace

// ---------------------------------------------------------------------------------------------------------------
// FunctionRegistry

struct FunctionRegistry::Impl {
  mutable std::shared_mutex mutex;
  std::unordered_map<std::string, MapFunction> maps;                  // guarded by mutex
  std::unordered_map<std::string, IncrementalFunction> incrementals;  // guarded by mutex
  std::unordered_map<std::string, MapFunction> rebuilds;              // guarded by mutex: of incrementals
};

FunctionRegistry::FunctionRegistry() : impl_(std::make_unique<Impl>()) {}
FunctionRegistry::~FunctionRegistry() = default;

FunctionRegistry& FunctionRegistry::global() {
  static FunctionRegistry registry;
  return registry;
}

namespace {
[[noreturn]] void throw_duplicate_function(const std::string& name) {
  throw Error(ErrorCode::InvalidArgument,
              "a node function named '" + name + "' is already registered; pick a unique name");
}
[[noreturn]] void throw_unknown_function(const std::string& name) {
  throw Error(ErrorCode::NotFound, "no node function named '" + name +
                                       "' is registered; register it at start-up in the registry the Propagator uses "
                                       "(FunctionRegistry::global() unless it was given one)");
}
}  // namespace

void FunctionRegistry::register_map(const std::string& name, MapFunction fn) {
  std::unique_lock lock(impl_->mutex);
  if (impl_->maps.count(name) || impl_->incrementals.count(name)) throw_duplicate_function(name);
  impl_->maps.emplace(name, std::move(fn));
}

void FunctionRegistry::register_incremental(const std::string& name, IncrementalFunction fn, MapFunction rebuild) {
  std::unique_lock lock(impl_->mutex);
  if (impl_->maps.count(name) || impl_->incrementals.count(name)) throw_duplicate_function(name);
  impl_->incrementals.emplace(name, std::move(fn));
  if (rebuild) impl_->rebuilds.emplace(name, std::move(rebuild));
}

MapFunction FunctionRegistry::incremental_rebuild(const std::string& name) const {
  std::shared_lock lock(impl_->mutex);
  auto it = impl_->rebuilds.find(name);
  return it == impl_->rebuilds.end() ? MapFunction{} : it->second;
}

MapFunction FunctionRegistry::map(const std::string& name) const {
  std::shared_lock lock(impl_->mutex);
  auto it = impl_->maps.find(name);
  if (it == impl_->maps.end()) throw_unknown_function(name);
  return it->second;
}

IncrementalFunction FunctionRegistry::incremental(const std::string& name) const {
  std::shared_lock lock(impl_->mutex);
  auto it = impl_->incrementals.find(name);
  if (it == impl_->incrementals.end()) throw_unknown_function(name);
  return it->second;
}

bool FunctionRegistry::contains(const std::string& name) const {
  std::shared_lock lock(impl_->mutex);
  return impl_->maps.count(name) || impl_->incrementals.count(name);
}

// ---------------------------------------------------------------------------------------------------------------
// Engine state

namespace {

const char* node_kind_name(NodeKind kind) {
  switch (kind) {
    case NodeKind::Map: return "map";
    case NodeKind::Passthrough: return "passthrough";
    case NodeKind::Incremental: return "incremental";
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
  std::vector<Node*> readers;                  // nodes with this page as a data input (engine lock)
  std::atomic<int> subscribers{0};             // page subscriptions (observers)
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
  MapFunction rebuild;  // incremental only: computes the output from scratch (recompute, stale, restart)
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
struct PageChange {
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
  NodeLocks(const std::vector<PageRecord*>& pages, const PageRecord* output) : pages_(pages), output_(output) {
    for (PageRecord* p : pages_) {
      if (p == output_) {
        p->mutex.lock();
      } else {
        p->mutex.lock_shared();
      }
      ++locked_;
      if (p->deleted.load(std::memory_order_relaxed)) detail::throw_not_found(p->id);
    }
  }
  ~NodeLocks() {
    while (locked_ > 0) {
      PageRecord* p = pages_[--locked_];
      if (p == output_) {
        p->mutex.unlock();
      } else {
        p->mutex.unlock_shared();
      }
    }
  }
  NodeLocks(const NodeLocks&) = delete;
  NodeLocks& operator=(const NodeLocks&) = delete;

 private:
  const std::vector<PageRecord*>& pages_;
  const PageRecord* output_;
  std::size_t locked_ = 0;
};

}  // namespace

struct Propagator::Impl : detail::CommitListener {
  Impl(Runtime& rt, PropagatorOptions opts)
      : runtime(rt),
        runtime_impl(detail::RuntimeAccess::of(rt)),
        options(opts),
        arena(opts.threads == 0 ? tbb::task_arena::automatic : static_cast<int>(opts.threads)) {
    if (options.queue_capacity == 0) {
      throw Error(ErrorCode::InvalidArgument, "PropagatorOptions::queue_capacity must be at least 1");
    }
    detail::CommitListener* expected = nullptr;
    if (!runtime_impl.listener.compare_exchange_strong(expected, this)) {
      throw Error(ErrorCode::InvalidArgument, "this Runtime already has a Propagator attached; use that one");
    }
    if (options.background_worker && options.mode != PropagationMode::Immediate) {
      worker = std::thread([this] { worker_loop(); });
    }
  }

  ~Impl() override {
    {
      std::lock_guard lock(queue_mutex);
      stopping = true;
    }
    queue_nonempty.notify_all();
    queue_space.notify_all();
    if (worker.joinable()) worker.join();
    runtime_impl.listener.store(nullptr, std::memory_order_release);
    for (auto& [id, slot] : slots) slot->record->listener_tag.store(nullptr, std::memory_order_release);
    // Nodes unregister from their graph when destroyed: destroy them before the graph.
    plan_bundles.clear();
    plan_start.reset();
    plan_graph.reset();
  }

  Runtime& runtime;
  Runtime::Impl& runtime_impl;
  PropagatorOptions options;
  tbb::task_arena arena;

  std::shared_ptr<FunctionRegistry> own_registry;  // null: FunctionRegistry::global()
  FunctionRegistry& registry() const { return own_registry ? *own_registry : FunctionRegistry::global(); }

  // Structure: guarded by engine_mutex (taken by structural calls and by waves, so a wave sees a fixed graph).
  std::recursive_mutex engine_mutex;
  DependencyGraph graph;
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
  std::vector<std::uint32_t> affected_positions;  // engine_mutex: this wave's nodes, as topological positions
  std::vector<std::vector<Node*>> chains;             // fused linear chains, each in topological order
  std::vector<std::vector<std::size_t>> chain_preds;  // chains that must finish before each chain starts
  std::vector<Node*> stale_nodes;                     // engine_mutex: nodes to recompute in the next wave
  std::uint64_t flow_version = ~std::uint64_t{0};
  std::unique_ptr<tbb::flow::graph> plan_graph;
  std::unique_ptr<tbb::flow::broadcast_node<tbb::flow::continue_msg>> plan_start;
  std::vector<std::unique_ptr<tbb::flow::continue_node<tbb::flow::continue_msg>>> plan_bundles;  // one task each

  // Wave state.
  std::atomic<std::uint64_t> wave_number{0};
  std::atomic<std::uint64_t> tasks_done{0};
  std::atomic<bool> cancelled{false};
  std::mutex failure_mutex;
  PageId failed_page;              // guarded by failure_mutex
  std::exception_ptr failure;      // guarded by failure_mutex
  std::vector<Node*> affected;     // engine_mutex

  // Queue of published commits.
  std::mutex queue_mutex;
  std::condition_variable queue_space, queue_nonempty;
  std::deque<PendingCommit> queue;  // guarded by queue_mutex
  std::atomic<std::size_t> reserved{0};  // commits between reserve() and being drained (or released)
  std::atomic<std::size_t> blocked{0};   // commits waiting in reserve() for queue space
  std::atomic<std::size_t> batch_commits{0};  // BATCH: commits folded into slots since the last drain
  std::mutex dirty_mutex;
  std::vector<Slot*> dirty_slots;        // guarded by dirty_mutex: BATCH slots with a pending delta
  std::vector<Slot*> drain_slots;        // engine_mutex: the ones being drained
  std::vector<Delta> drain_deltas;       // engine_mutex: their pending deltas, swapped out (capacity reused)
  bool stopping = false;            // guarded by queue_mutex
  std::exception_ptr background_error;  // guarded by queue_mutex
  std::thread worker;

  std::mutex done_mutex;
  std::condition_variable wave_done;
  std::atomic<int> waiters{0};  // threads inside wait_for(); commits and waves notify only when there are some

  void notify_waiters() {
    if (waiters.load(std::memory_order_acquire) == 0) return;
    { std::lock_guard lock(done_mutex); }  // orders this notification after a waiter's check
    wave_done.notify_all();
  }

  struct Counters {
    std::atomic<std::uint64_t> waves{0}, recomputed{0}, skipped{0}, cut_off{0}, failed{0}, inline_waves{0},
        plan_builds{0}, queued{0}, composed{0}, bytes{0};
  } counters;
  LatencyHistogram wave_latency, hop_latency, commit_latency;
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
  std::vector<Event> pending_events;         // pending_mutex
  std::vector<PageChange> pending_changes;   // pending_mutex

  bool wants(EventKind kind) const noexcept {
    return (wanted_events.load(std::memory_order_relaxed) & EventMask{kind}.bits()) != 0;
  }
  [[gnu::cold]] void emit(Event event) {
    std::lock_guard lock(pending_mutex);
    pending_events.push_back(std::move(event));
  }
  // Records a page change for page subscribers and PageChanged/PageResized observers.
  // `owner`, when set, keeps `d` alive (it points into the owner): the change shares it instead of copying it.
  [[gnu::cold]] void note_change(Slot* slot, const Delta& d, std::uint64_t epoch, std::uint64_t wave,
                                 const std::shared_ptr<const void>& owner = nullptr) {
    if (slot && slot->subscribers.load(std::memory_order_relaxed) > 0) {
      std::shared_ptr<const Delta> shared = owner ? std::shared_ptr<const Delta>(owner, &d)
                                                  : std::make_shared<const Delta>(d);
      std::lock_guard lock(pending_mutex);
      pending_changes.push_back(PageChange{d.page, std::move(shared), epoch});
    }
    if (wants(EventKind::PageChanged)) emit(Event{EventKind::PageChanged, d.page, 0, epoch, wave, 0, {}});
    if (d.base_size != d.size && wants(EventKind::PageResized)) {
      emit(Event{EventKind::PageResized, d.page, 0, epoch, wave, 0, {}});
    }
  }

  // Calls the callbacks for everything the finished waves produced. Must run without the engine lock.
  void deliver() {
    std::vector<Event> events;
    std::vector<PageChange> changes;
    {
      std::lock_guard lock(pending_mutex);
      if (pending_events.empty() && pending_changes.empty()) return;
      events.swap(pending_events);
      changes.swap(pending_changes);
    }
    std::vector<std::string> failures;
    for (const PageChange& change : changes) {
      std::vector<std::shared_ptr<PageCallback>> callbacks;
      {
        std::lock_guard lock(observers_mutex);
        for (const auto& [id, sub] : page_subscriptions)
          if (sub.first == change.page) callbacks.push_back(sub.second);
      }
      for (const auto& cb : callbacks) {
        try {
          (*cb)(*change.delta, change.epoch);
        } catch (const std::exception& e) {
          failures.push_back(std::string("page observer of ") + change.page.to_string() + " threw: " + e.what());
        } catch (...) {
          failures.push_back("page observer of " + change.page.to_string() + " threw");
        }
      }
    }
    for (const std::string& f : failures) events.push_back(Event{EventKind::Error, PageId(), 0, 0, 0, 0, f});
    deliver_events(events, /*report_failures=*/true);
  }

  void deliver_events(const std::vector<Event>& events, bool report_failures) {
    if (events.empty()) return;
    std::vector<std::pair<EventMask, std::shared_ptr<EventCallback>>> subscribers;
    {
      std::lock_guard lock(observers_mutex);
      for (const auto& [id, sub] : event_subscriptions) subscribers.push_back(sub);
    }
    std::vector<Event> failures;
    for (const Event& event : events) {
      for (const auto& [mask, cb] : subscribers) {
        if (!mask.contains(event.kind)) continue;
        try {
          (*cb)(event);
        } catch (const std::exception& e) {
          failures.push_back(Event{EventKind::Error, event.page, 0, 0, event.wave, 0,
                                   std::string("event observer threw on ") + event_kind_name(event.kind) + ": " +
                                       e.what()});
        } catch (...) {
          failures.push_back(Event{EventKind::Error, event.page, 0, 0, event.wave, 0, "event observer threw"});
        }
      }
    }
    if (report_failures) deliver_events(failures, /*report_failures=*/false);  // once; a second throw is dropped
  }

  void refresh_wanted_events() {  // observers_mutex held
    std::uint32_t bits = 0;
    for (const auto& [id, sub] : event_subscriptions) bits |= sub.first.bits();
    wanted_events.store(bits, std::memory_order_relaxed);
  }

  // --- structure ------------------------------------------------------------------------------------------------

  PageRecord* live_record(PageId id) {
    PageRecord* rec = runtime_impl.find(id);
    if (!rec || rec->deleted.load(std::memory_order_relaxed)) detail::throw_not_found(id);
    return rec;
  }

  Slot* slot_for(PageId id) {
    auto it = slots.find(id);
    if (it != slots.end()) return it->second.get();
    auto slot = std::make_unique<Slot>(id, live_record(id));
    Slot* raw = slot.get();
    slots.emplace(id, std::move(slot));
    raw->record->listener_tag.store(raw, std::memory_order_release);
    return raw;
  }

  void add_node(std::unique_ptr<Node> node, const std::vector<PageId>& inputs) {
    std::lock_guard lock(engine_mutex);
    const PageId out = node->output;
    if (inputs.empty()) {
      throw Error(ErrorCode::InvalidArgument, "derived page " + out.to_string() + " needs at least one input");
    }
    if (nodes.count(out)) {
      throw Error(ErrorCode::InvalidArgument,
                  "page " + out.to_string() + " is already derived by a node; remove_node() it first");
    }
    for (PageId in : inputs) {
      if (in == out) {
        throw Error(ErrorCode::InvalidArgument,
                    "page " + out.to_string() + " cannot be an input of the node that computes it");
      }
    }
    if (live_record(out)->external) {
      throw Error(ErrorCode::InvalidArgument, "page " + out.to_string() +
                                                  " is an external (read-only) page and cannot be a node's output");
    }
    for (PageId in : inputs) live_record(in);
    // Add the edges; undo the ones added so far if one closes a cycle.
    std::vector<PageId> added;
    try {
      for (PageId in : inputs) {
        if (std::find(added.begin(), added.end(), in) != added.end()) continue;
        graph.add_edge(in, out, DependencyKind::Data);
        added.push_back(in);
      }
    } catch (...) {
      for (PageId in : added) graph.remove_edge(in, out, DependencyKind::Data);
      throw;
    }
    node->out_slot = slot_for(out);
    for (PageId in : inputs) node->inputs.push_back(slot_for(in));
    for (Slot* s : node->inputs) {
      if (std::find(s->readers.begin(), s->readers.end(), node.get()) == s->readers.end()) s->readers.push_back(node.get());
    }
    for (Slot* s : node->inputs) node->lock_order.push_back(s->record);
    node->lock_order.push_back(node->out_slot->record);
    std::sort(node->lock_order.begin(), node->lock_order.end(),
              [](const PageRecord* a, const PageRecord* b) { return a->id < b->id; });
    node->lock_order.erase(std::unique(node->lock_order.begin(), node->lock_order.end()), node->lock_order.end());
    node->spans.resize(node->inputs.size());
    node->input_deltas.resize(node->inputs.size());
    nodes.emplace(out, std::move(node));
    ++structure_version;
  }

  void remove_node(PageId out) {
    std::lock_guard lock(engine_mutex);
    auto it = nodes.find(out);
    if (it == nodes.end()) {
      throw Error(ErrorCode::NotFound, "page " + out.to_string() + " is not derived by any node");
    }
    Node* node = it->second.get();
    for (Slot* s : node->inputs) {
      graph.remove_edge(s->page, out, DependencyKind::Data);
      s->readers.erase(std::remove(s->readers.begin(), s->readers.end(), node), s->readers.end());
    }
    stale_nodes.erase(std::remove(stale_nodes.begin(), stale_nodes.end(), node), stale_nodes.end());
    nodes.erase(it);
    ++structure_version;
  }

  // Rebuilds the topological order and the chains when the structure changed. A node joins its predecessor's chain
  // when it is that predecessor's only successor and has no other predecessor; topological order guarantees the
  // predecessor's chain already exists.
  void ensure_order() {
    if (plan_version == structure_version) return;
    topo_nodes.clear();
    for (PageId page : graph.topological_order()) {
      auto it = nodes.find(page);
      if (it != nodes.end()) topo_nodes.push_back(it->second.get());
    }
    for (std::size_t i = 0; i < topo_nodes.size(); ++i) topo_nodes[i]->topo = i;
    const std::size_t n = topo_nodes.size();
    std::vector<std::vector<Node*>> pred(n);
    std::vector<std::size_t> succ_count(n, 0);
    for (Node* node : topo_nodes) {
      for (Node* s : successors_of(*node)) {
        pred[s->topo].push_back(node);
        ++succ_count[node->topo];
      }
    }
    chains.clear();
    chain_preds.clear();
    for (Node* node : topo_nodes) {
      const auto& p = pred[node->topo];
      if (p.size() == 1 && succ_count[p[0]->topo] == 1) {
        node->chain = p[0]->chain;
        chains[node->chain].push_back(node);
      } else {
        node->chain = chains.size();
        chains.push_back({node});
        std::vector<std::size_t> from;
        for (Node* q : p) from.push_back(q->chain);
        std::sort(from.begin(), from.end());
        from.erase(std::unique(from.begin(), from.end()), from.end());
        chain_preds.push_back(std::move(from));
      }
    }
    successor_offsets.assign(n + 1, 0);
    successor_targets.clear();
    chain_of.resize(n);
    for (std::size_t i = 0; i < n; ++i) {
      for (const Node* reader : topo_nodes[i]->out_slot->readers)
        successor_targets.push_back(static_cast<std::uint32_t>(reader->topo));
      successor_offsets[i + 1] = static_cast<std::uint32_t>(successor_targets.size());
      chain_of[i] = static_cast<std::uint32_t>(topo_nodes[i]->chain);
    }
    reached_mark.assign(n, 0);
    plan_version = structure_version;
  }

  // Node successors for ordering: nodes whose page depends on this node's output by any edge kind.
  std::vector<Node*> successors_of(const Node& node) {
    std::vector<Node*> out;
    for (const auto& dep : graph.dependents_of(node.output)) {
      auto it = nodes.find(dep.to);
      if (it != nodes.end() && std::find(out.begin(), out.end(), it->second.get()) == out.end())
        out.push_back(it->second.get());
    }
    return out;
  }

  // Builds the flow graph. Chains with the same predecessor chains cannot depend on each other, so siblings are
  // bundled into at most 4 tasks per worker: a fan-out of thousands of small nodes then costs a few task spawns
  // instead of thousands, and consecutive nodes reading the same input lock it on the same core. Bundles of one
  // group run in parallel; each runs its chains in order.
  void ensure_flow_plan() {
    ensure_order();
    if (flow_version == structure_version && plan_graph) return;
    plan_bundles.clear();
    plan_start.reset();
    plan_graph.reset();
    counters.plan_builds.fetch_add(1, std::memory_order_relaxed);

    const std::size_t max_bundles = 4 * static_cast<std::size_t>(std::max(1, arena.max_concurrency()));
    std::map<std::vector<std::size_t>, std::vector<std::size_t>> groups;  // predecessor chains → sibling chains
    for (std::size_t c = 0; c < chains.size(); ++c) groups[chain_preds[c]].push_back(c);
    std::vector<std::vector<Node*>> bundles;
    std::vector<std::size_t> bundle_of_chain(chains.size());
    std::vector<std::vector<std::size_t>> bundle_preds;
    // Deterministic: groups in the order of their first chain.
    std::vector<const std::vector<std::size_t>*> ordered;
    for (const auto& [preds, members] : groups) ordered.push_back(&members);
    std::sort(ordered.begin(), ordered.end(), [](const auto* a, const auto* b) { return a->front() < b->front(); });
    for (const auto* members : ordered) {
      const std::size_t count = std::min(members->size(), max_bundles);
      for (std::size_t b = 0; b < count; ++b) {
        const std::size_t begin = members->size() * b / count, end = members->size() * (b + 1) / count;
        bundles.emplace_back();
        for (std::size_t i = begin; i < end; ++i) {
          const std::size_t c = (*members)[i];
          bundle_of_chain[c] = bundles.size() - 1;
          bundles.back().insert(bundles.back().end(), chains[c].begin(), chains[c].end());
        }
        std::vector<std::size_t> preds;
        for (std::size_t p : chain_preds[(*members)[begin]]) preds.push_back(bundle_of_chain[p]);
        std::sort(preds.begin(), preds.end());
        preds.erase(std::unique(preds.begin(), preds.end()), preds.end());
        bundle_preds.push_back(std::move(preds));
      }
    }
    arena.execute([&] {
      plan_graph = std::make_unique<tbb::flow::graph>();
      plan_start = std::make_unique<tbb::flow::broadcast_node<tbb::flow::continue_msg>>(*plan_graph);
      for (auto& bundle : bundles) {
        plan_bundles.push_back(std::make_unique<tbb::flow::continue_node<tbb::flow::continue_msg>>(
            *plan_graph, [this, members = bundle](const tbb::flow::continue_msg&) {
              const std::uint64_t wave = wave_number.load(std::memory_order_acquire);
              Tally tally;
              tally.wanted = wanted_events.load(std::memory_order_relaxed);
              for (Node* node : members) {
                if (node->reached_wave.load(std::memory_order_relaxed) == wave) run_node(*node, wave, tally);
              }
              add_tally(tally);
              tasks_done.fetch_add(1, std::memory_order_acq_rel);
            }));
      }
      for (std::size_t b = 0; b < bundles.size(); ++b) {
        if (bundle_preds[b].empty()) tbb::flow::make_edge(*plan_start, *plan_bundles[b]);
        for (std::size_t f : bundle_preds[b]) tbb::flow::make_edge(*plan_bundles[f], *plan_bundles[b]);
      }
    });
    flow_version = structure_version;
  }

  // --- node execution -------------------------------------------------------------------------------------------

  void record_failure(Node& node, std::exception_ptr error) {
    std::lock_guard lock(failure_mutex);
    if (!failure) {
      failure = std::move(error);
      failed_page = node.output;
    }
    cancelled.store(true, std::memory_order_release);
  }

  // Writes `d` (ranges and payload set, or computed here by diffing the scratch buffer) into the node's output page
  // as one new epoch. Returns false if the delta is empty (cutoff). The caller holds the output's exclusive lock.
  bool publish(Node& node, Delta& d, bool diff_against_scratch) {
    PageRecord& page = *node.out_slot->record;
    const std::uint64_t size = page.size.load(std::memory_order_relaxed);
    const bool record_undo = runtime_impl.options.record_undo;
    if (diff_against_scratch) {
      if (node.scratch.size != size) {
        throw Error(ErrorCode::Aborted, "derived page " + page.id.to_string() + " was resized during the wave");
      }
      DiffOptions opts;
      opts.record_undo = record_undo;
      if (node.options.always_changes) {
        d.clear();
        d.ranges.push_back({0, size});
        d.payload.assign(node.scratch.block.data, node.scratch.block.data + size);
        if (record_undo) {
          d.has_undo = true;
          d.undo.assign(page.data, page.data + size);
        }
        if (size == 0) d.clear();
      } else {
        diff_into(std::span<const std::byte>(page.data, size),
                  std::span<const std::byte>(node.scratch.block.data, size), d, opts);
      }
    } else {
      d.base_size = d.size = size;
      for (const ByteRange& r : d.ranges) {
        if (r.end() > size || r.end() < r.offset) {
          throw Error(ErrorCode::InvalidArgument, "node output delta range " + detail::range_text(r.offset, r.length) +
                                                      " is outside page " + page.id.to_string() + " of " +
                                                      std::to_string(size) + " bytes");
        }
      }
      d.has_undo = record_undo;
      d.undo.clear();
      d.undo_tail.clear();
      if (record_undo) {
        for (const ByteRange& r : d.ranges) d.undo.insert(d.undo.end(), page.data + r.offset, page.data + r.end());
      }
      d.validate();
    }
    if (d.ranges.empty()) return false;
    const std::uint64_t epoch = page.epoch.load(std::memory_order_relaxed);
    d.page = page.id;
    d.base_epoch = epoch;
    d.epoch_count = 1;
    d.base_size = d.size = size;
    const std::byte* src = d.payload.data();
    for (const ByteRange& r : d.ranges) {
      detail::copy_bytes(page.data + r.offset, src, r.length);
      src += r.length;
    }
    page.epoch.store(epoch + 1, std::memory_order_release);
    return true;
  }

  bool compute_map(Node& node, const MapFunction& fn) {
    NodeLocks locks(node.lock_order, node.out_slot->record);
    for (std::size_t i = 0; i < node.inputs.size(); ++i) {
      PageRecord* rec = node.inputs[i]->record;
      node.spans[i] = {rec->data, rec->size.load(std::memory_order_relaxed)};
    }
    PageRecord* out = node.out_slot->record;
    const std::uint64_t size = out->size.load(std::memory_order_relaxed);
    std::span<std::byte> buffer = node.scratch.resize(size);
    detail::copy_bytes(buffer.data(), out->data, size);
    MapContext ctx(node.spans, buffer, node.output);
    fn(ctx);
    return publish(node, node.out_delta, /*diff_against_scratch=*/true);
  }

  // Forwards the input's delta through the remap window; a stale node copies the whole window instead.
  bool compute_passthrough(Node& node, std::uint64_t wave, bool stale) {
    Slot* in = node.inputs[0];
    Delta& d = node.out_delta;
    d.clear();
    const ByteRemap& m = node.remap;
    const std::uint64_t window_end =
        m.length > ~std::uint64_t{0} - m.input_offset ? ~std::uint64_t{0} : m.input_offset + m.length;
    const std::uint64_t out_size = node.out_slot->record->size.load(std::memory_order_relaxed);
    auto forward = [&](std::uint64_t offset, std::uint64_t length, const std::byte* bytes) {
      std::uint64_t begin = std::max(offset, m.input_offset), end = std::min(offset + length, window_end);
      if (begin >= end) return;
      std::uint64_t out_begin = begin - m.input_offset + m.output_offset;
      if (out_begin >= out_size) return;
      std::uint64_t n = std::min(end - begin, out_size - out_begin);
      if (!d.ranges.empty() && d.ranges.back().end() >= out_begin) {
        // Source ranges are sorted and disjoint, and the remap is a shift, so outputs only ever touch: merge.
        d.ranges.back().length = out_begin + n - d.ranges.back().offset;
      } else {
        d.ranges.push_back({out_begin, n});
      }
      d.payload.insert(d.payload.end(), bytes + (begin - offset), bytes + (begin - offset) + n);
    };
    const bool changed = in->changed_wave.load(std::memory_order_acquire) == wave;
    NodeLocks locks(node.lock_order, node.out_slot->record);
    if (stale || !changed) {
      forward(0, in->record->size.load(std::memory_order_relaxed), in->record->data);
    } else {
      const Delta* src = in->delta.load(std::memory_order_relaxed);
      const std::byte* payload = src->payload.data();
      for (const ByteRange& r : src->ranges) {
        forward(r.offset, r.length, payload);
        payload += r.length;
      }
    }
    return publish(node, d, /*diff_against_scratch=*/false);
  }

  bool compute_incremental(Node& node, std::uint64_t wave) {
    Delta& d = node.out_delta;
    d.clear();
    NodeLocks locks(node.lock_order, node.out_slot->record);
    for (std::size_t i = 0; i < node.inputs.size(); ++i) {
      Slot* s = node.inputs[i];
      node.spans[i] = {s->record->data, s->record->size.load(std::memory_order_relaxed)};
      node.input_deltas[i] =
          s->changed_wave.load(std::memory_order_acquire) == wave ? s->delta.load(std::memory_order_relaxed) : nullptr;
    }
    PageRecord* out = node.out_slot->record;
    IncrementalContext ctx{node.spans, node.input_deltas, {out->data, out->size.load(std::memory_order_relaxed)},
                           node.output};
    node.incremental(ctx, d);
    return publish(node, d, /*diff_against_scratch=*/false);
  }

  void add_tally(const Tally& t) {
    if (t.recomputed) counters.recomputed.fetch_add(t.recomputed, std::memory_order_relaxed);
    if (t.skipped) counters.skipped.fetch_add(t.skipped, std::memory_order_relaxed);
    if (t.cut_off) counters.cut_off.fetch_add(t.cut_off, std::memory_order_relaxed);
    if (t.failed) counters.failed.fetch_add(t.failed, std::memory_order_relaxed);
    if (t.bytes) counters.bytes.fetch_add(t.bytes, std::memory_order_relaxed);
  }

  void run_node(Node& node, std::uint64_t wave, Tally& tally) {
    if (cancelled.load(std::memory_order_acquire)) return;
    const bool stale = node.stale.load(std::memory_order_relaxed);
    bool input_changed = false;
    for (Slot* s : node.inputs) {
      if (s->changed_wave.load(std::memory_order_acquire) == wave) {
        input_changed = true;
        break;
      }
    }
    if (!input_changed && !stale) {
      ++tally.skipped;
      node.completed_wave.store(wave, std::memory_order_relaxed);
      if (tally.wanted & event_bit(EventKind::NodeSkipped)) [[unlikely]] emit(Event{EventKind::NodeSkipped, node.output, 0, 0, wave, 0, {}});
      return;
    }
    const bool timed = tally.runs++ % kSampleHopsEvery == 0;
    const std::uint64_t started = timed ? steady_ns() : 0;
    bool changed = false;
    try {
      switch (node.kind) {
        case NodeKind::Map: changed = compute_map(node, node.map); break;
        case NodeKind::Passthrough: changed = compute_passthrough(node, wave, stale); break;
        case NodeKind::Incremental:
          changed = stale && node.rebuild ? compute_map(node, node.rebuild) : compute_incremental(node, wave);
          break;
      }
    } catch (...) {
      ++tally.failed;
      if (tally.wanted & event_bit(EventKind::NodeFailed)) {
        emit(Event{EventKind::NodeFailed, node.output, 0, 0, wave, 0, describe(std::current_exception())});
      }
      record_failure(node, std::current_exception());
      return;
    }
    if (timed) hop_latency.record(steady_ns() - started);
    node.stale.store(false, std::memory_order_relaxed);
    node.completed_wave.store(wave, std::memory_order_relaxed);
    if (changed) {
      ++tally.recomputed;
      tally.bytes += node.out_delta.payload.size();
      constexpr std::uint32_t kChangeEvents = event_bit(EventKind::PageChanged) | event_bit(EventKind::PageResized);
      if ((tally.wanted & kChangeEvents) || node.out_slot->subscribers.load(std::memory_order_relaxed) > 0)
          [[unlikely]] {
        note_change(node.out_slot, node.out_delta, node.out_delta.target_epoch(), wave);
      }
      if (tally.wanted & event_bit(EventKind::NodeRecomputed)) [[unlikely]] emit(Event{EventKind::NodeRecomputed, node.output, 0, 0, wave, 0, {}});
      node.out_slot->delta.store(&node.out_delta, std::memory_order_relaxed);
      node.out_slot->changed_wave.store(wave, std::memory_order_release);
    } else {
      ++tally.cut_off;
      if (tally.wanted & event_bit(EventKind::NodeCutOff)) [[unlikely]] emit(Event{EventKind::NodeCutOff, node.output, 0, 0, wave, 0, {}});
    }
  }

  static std::string describe(std::exception_ptr error) {
    try {
      std::rethrow_exception(error);
    } catch (const std::exception& e) {
      return e.what();
    } catch (...) {
      return "unknown exception";
    }
  }

  // --- waves ----------------------------------------------------------------------------------------------------

  // Runs one wave for the given changed pages (and stale nodes). engine_mutex must be held.
  // `owner`, when set, owns the deltas of `changes`: page observers then share them instead of copying them.
  void run_wave(const std::vector<std::pair<PageId, const Delta*>>& changes,
                const std::shared_ptr<const void>& owner = nullptr) {
    ensure_order();
    const std::uint64_t wave = wave_number.load(std::memory_order_relaxed) + 1;
    affected_positions.clear();
    bool single_chain = true;  // whether every reached node is in one fused chain (then it runs inline)
    auto reach = [&](std::uint32_t position) {
      if (reached_mark[position] == wave) return;
      reached_mark[position] = wave;
      if (!affected_positions.empty() && chain_of[position] != chain_of[affected_positions.front()]) {
        single_chain = false;
      }
      affected_positions.push_back(position);  // doubles as the breadth-first queue
    };
    for (const auto& [page, delta] : changes) {
      auto it = slots.find(page);
      if (it == slots.end()) continue;
      it->second->delta.store(delta, std::memory_order_relaxed);
      it->second->changed_wave.store(wave, std::memory_order_relaxed);
      if (wants(EventKind::PageChanged) || wants(EventKind::PageResized) ||
          it->second->subscribers.load(std::memory_order_relaxed) > 0) {
        note_change(it->second.get(), *delta, delta->target_epoch(), wave, owner);
      }
      for (Node* reader : it->second->readers) reach(static_cast<std::uint32_t>(reader->topo));
    }
    for (Node* node : stale_nodes) reach(static_cast<std::uint32_t>(node->topo));
    for (std::size_t k = 0; k < affected_positions.size(); ++k) {
      const std::uint32_t position = affected_positions[k];
      for (std::uint32_t e = successor_offsets[position]; e < successor_offsets[position + 1]; ++e)
        reach(successor_targets[e]);
    }
    // Topological order: breadth-first discovery along a chain already is; sort only when it is not.
    if (!std::is_sorted(affected_positions.begin(), affected_positions.end())) {
      std::sort(affected_positions.begin(), affected_positions.end());
    }
    affected.clear();
    for (std::uint32_t position : affected_positions) affected.push_back(topo_nodes[position]);
    if (affected.empty()) {
      // The wave number still advances: the slots marked above must not look changed in the next wave.
      wave_number.store(wave, std::memory_order_release);
      return;
    }

    const std::uint64_t started = steady_ns();
    if (wants(EventKind::WaveBegin)) emit(Event{EventKind::WaveBegin, PageId(), 0, 0, wave, 0, {}});
    counters.waves.fetch_add(1, std::memory_order_relaxed);
    cancelled.store(false, std::memory_order_relaxed);
    {
      std::lock_guard lock(failure_mutex);
      failure = nullptr;
    }
    // Inline when the wave is small, when there is one worker, or when all of it is one fused chain: a chain is
    // sequential, so handing it to a worker would only add latency.
    const bool run_inline =
        single_chain || affected.size() <= options.inline_node_limit || arena.max_concurrency() == 1;
    if (!run_inline) ensure_flow_plan();
    wave_number.store(wave, std::memory_order_release);  // publishes everything above to the tasks
    if (run_inline) {
      counters.inline_waves.fetch_add(1, std::memory_order_relaxed);
      Tally tally;
      tally.wanted = wanted_events.load(std::memory_order_relaxed);
      for (Node* node : affected) run_node(*node, wave, tally);
      add_tally(tally);
    } else {
      for (Node* node : affected) node->reached_wave.store(wave, std::memory_order_relaxed);  // the tasks' filter
      arena.execute([&] {
        plan_start->try_put(tbb::flow::continue_msg());
        plan_graph->wait_for_all();
      });
      tasks_done.load(std::memory_order_acquire);  // pairs with each task's final increment
    }
    stale_nodes.clear();
    for (Node* node : affected) {
      if (node->completed_wave.load(std::memory_order_relaxed) != wave) node->stale.store(true, std::memory_order_relaxed);
      if (node->stale.load(std::memory_order_relaxed)) stale_nodes.push_back(node);
    }
    const std::uint64_t duration = steady_ns() - started;
    wave_latency.record(duration);
    if (wants(EventKind::WaveEnd)) emit(Event{EventKind::WaveEnd, PageId(), 0, 0, wave, duration, {}});
    notify_waiters();
    std::exception_ptr error;
    PageId page;
    {
      std::lock_guard lock(failure_mutex);
      error = failure;
      page = failed_page;
    }
    if (error) {
      if (wants(EventKind::Error)) emit(Event{EventKind::Error, page, 0, 0, wave, 0, describe(error)});
      throw_node_error(page, error);
    }
  }

  [[noreturn]] static void throw_node_error(PageId page, std::exception_ptr error) {
    throw NodeError(page, describe(error), error);
  }

  bool any_stale() const { return !stale_nodes.empty(); }

  // Frees `n` reserved queue places and wakes commits blocked on a full queue.
  void free_places(std::size_t n) {
    if (n == 0) return;
    reserved.fetch_sub(n, std::memory_order_acq_rel);
    if (blocked.load(std::memory_order_acquire) > 0) {
      { std::lock_guard lock(queue_mutex); }  // orders this wake-up after a waiter's check
      queue_space.notify_all();
    }
  }

  // Runs what is queued, then hands observers what the waves produced, outside the engine lock (callbacks may
  // commit, which in IMMEDIATE mode drains again on this thread).
  void drain() {
    std::exception_ptr error;
    {
      std::lock_guard lock(engine_mutex);
      try {
        drain_locked();
      } catch (...) {
        error = std::current_exception();
      }
    }
    deliver();
    if (error) std::rethrow_exception(error);
  }

  // Runs queued commits according to the mode; then stale nodes if nothing else ran.
  void drain_locked() {
    if (options.mode == PropagationMode::Batch) {
      drain_batch();
      return;
    }
    bool ran = false;
    for (;;) {
      PendingCommit commit;
      {
        std::lock_guard qlock(queue_mutex);
        if (queue.empty()) break;
        commit = std::move(queue.front());
        queue.pop_front();
      }
      free_places(1);
      ran = true;
      std::vector<std::pair<PageId, const Delta*>> changes;
      for (std::size_t i = 0; i < commit.count; ++i) changes.emplace_back(commit.deltas[i].page, &commit.deltas[i]);
      run_wave(changes, std::shared_ptr<const void>(commit.deltas, commit.deltas.get()));
      if (commit.published_ns) commit_latency.record(steady_ns() - commit.published_ns);
    }
    if (!ran && any_stale()) run_wave({});
  }

  // BATCH: takes every slot's folded delta (under its page lock) and runs them as one wave.
  void drain_batch() {
    drain_slots.clear();
    {
      std::lock_guard dlock(dirty_mutex);
      drain_slots.swap(dirty_slots);
    }
    free_places(batch_commits.exchange(0, std::memory_order_acq_rel));
    if (drain_slots.empty()) {
      if (any_stale()) run_wave({});
      return;
    }
    std::sort(drain_slots.begin(), drain_slots.end(), [](const Slot* a, const Slot* b) { return a->page < b->page; });
    if (drain_deltas.size() < drain_slots.size()) drain_deltas.resize(drain_slots.size());
    std::vector<std::pair<PageId, const Delta*>> changes;
    changes.reserve(drain_slots.size());
    std::uint64_t folds = 0;
    for (std::size_t i = 0; i < drain_slots.size(); ++i) {
      Slot* slot = drain_slots[i];
      std::unique_lock page_lock(slot->record->mutex);
      std::swap(drain_deltas[i], slot->pending);
      slot->has_pending = false;
      folds += std::exchange(slot->pending_folds, 0);
      changes.emplace_back(slot->page, &drain_deltas[i]);
    }
    counters.composed.fetch_add(folds, std::memory_order_relaxed);
    const std::uint64_t sampled = batch_sample_ns.exchange(0, std::memory_order_acq_rel);
    run_wave(changes);
    if (sampled) commit_latency.record(steady_ns() - sampled);
  }

  // Folds `next` into `acc` (acc then next). The common case, `next` rewriting bytes `acc` already covers, is done
  // in place: same ranges, newer payload, the older undo kept. Otherwise compose().
  static void fold(Delta& acc, const Delta& next) {
    bool in_place = next.base_size == next.size && acc.size == next.base_size && acc.base_size == acc.size;
    if (in_place) {
      for (const ByteRange& r : next.ranges) {
        auto it = std::upper_bound(acc.ranges.begin(), acc.ranges.end(), r.offset,
                                   [](std::uint64_t off, const ByteRange& a) { return off < a.offset; });
        if (it == acc.ranges.begin() || r.end() > std::prev(it)->end()) {
          in_place = false;
          break;
        }
      }
    }
    if (!in_place) {
      acc = compose(acc, next);
      return;
    }
    // Both range lists are sorted, so one forward walk finds each containing range and its payload offset: the
    // first acc range that ends at or after r ends is the one the check above found to contain r.
    std::size_t k = 0;
    std::uint64_t acc_pos = 0;
    const std::byte* src = next.payload.data();
    for (const ByteRange& r : next.ranges) {
      while (acc.ranges[k].end() < r.end()) acc_pos += acc.ranges[k++].length;
      std::memcpy(acc.payload.data() + acc_pos + (r.offset - acc.ranges[k].offset), src, r.length);
      src += r.length;
    }
    acc.epoch_count += next.epoch_count;
    acc.source = next.source;
    acc.intent = next.intent;
    if (!next.has_undo) {
      acc.has_undo = false;
      acc.undo.clear();
      acc.undo_tail.clear();
    }
  }

  void worker_loop() {
    for (;;) {
      {
        std::unique_lock lock(queue_mutex);
        queue_nonempty.wait(lock, [&] {
          return stopping || !queue.empty() || batch_commits.load(std::memory_order_acquire) > 0;
        });
        if (stopping) return;
      }
      try {
        drain();
      } catch (...) {
        std::lock_guard lock(queue_mutex);
        background_error = std::current_exception();
      }
    }
  }

  // --- CommitListener -------------------------------------------------------------------------------------------

  void reserve() override {
    if (options.mode == PropagationMode::Immediate) {
      reserved.fetch_add(1, std::memory_order_relaxed);  // drained by this very commit: no bound needed
      return;
    }
    for (;;) {
      if (reserved.fetch_add(1, std::memory_order_acq_rel) < options.queue_capacity) return;
      reserved.fetch_sub(1, std::memory_order_acq_rel);
      if (options.full_policy == QueueFullPolicy::Fail) {
        throw Error(ErrorCode::ResourceExhausted,
                    "the propagation queue is full (" + std::to_string(options.queue_capacity) +
                        " commits); call propagate(), enable the background worker, or raise queue_capacity");
      }
      std::unique_lock lock(queue_mutex);
      blocked.fetch_add(1, std::memory_order_acq_rel);
      queue_space.wait(lock, [&] {
        return stopping || reserved.load(std::memory_order_acquire) < options.queue_capacity;
      });
      blocked.fetch_sub(1, std::memory_order_acq_rel);
      if (stopping) {
        throw Error(ErrorCode::Aborted, "the Propagator is being destroyed; the commit was not made");
      }
    }
  }

  void release() noexcept override { free_places(1); }

  // One commit in kSampleCommitsEvery per thread is timed from here to the end of its wave.
  static bool sample_this_commit() noexcept {
    thread_local std::uint64_t commits = 0;
    return commits++ % kSampleCommitsEvery == 0;
  }

  void published(std::uint64_t lsn, std::span<const Delta> deltas) noexcept override {
    if (wants(EventKind::Commit)) {
      try {
        emit(Event{EventKind::Commit, deltas.empty() ? PageId() : deltas[0].page, lsn, 0, 0, 0, {}});
      } catch (...) {  // observers are best effort; the commit must not fail here
      }
    }
    if (options.mode == PropagationMode::Batch) {
      publish_batch(deltas);
      return;
    }
    PendingCommit commit;
    for (const Delta& d : deltas) {
      if (slot_of(d.page) == nullptr) continue;
      if (!commit.deltas) commit.deltas = std::make_shared<Delta[]>(deltas.size());  // empty Deltas allocate nothing
      commit.deltas[commit.count++] = d;
    }
    if (commit.count == 0) {
      free_places(1);
      return;
    }
    commit.lsn = lsn;
    if (sample_this_commit()) commit.published_ns = steady_ns();
    {
      std::lock_guard lock(queue_mutex);
      queue.push_back(std::move(commit));
    }
    counters.queued.fetch_add(1, std::memory_order_relaxed);
    queue_nonempty.notify_one();
  }

  Slot* slot_of(PageId page) const noexcept {
    PageRecord* record = runtime_impl.find(page);
    return record ? static_cast<Slot*>(record->listener_tag.load(std::memory_order_acquire)) : nullptr;
  }

  // BATCH: fold each watched delta into its page's pending delta. Runs under the commit's page locks.
  void publish_batch(std::span<const Delta> deltas) noexcept {
    bool watched = false;
    for (const Delta& d : deltas) {
      Slot* slot = slot_of(d.page);
      if (slot == nullptr) continue;
      watched = true;
      if (!slot->has_pending) {
        slot->pending = d;  // copy-assignment reuses the capacity left by the last drain
        slot->has_pending = true;
        std::lock_guard lock(dirty_mutex);
        dirty_slots.push_back(slot);
      } else {
        fold(slot->pending, d);
        ++slot->pending_folds;
      }
    }
    if (!watched) {
      free_places(1);
      return;
    }
    if (sample_this_commit()) {
      std::uint64_t none = 0;
      batch_sample_ns.compare_exchange_strong(none, steady_ns(), std::memory_order_acq_rel);
    }
    batch_commits.fetch_add(1, std::memory_order_acq_rel);
    counters.queued.fetch_add(1, std::memory_order_relaxed);
    if (worker.joinable()) {
      { std::lock_guard lock(queue_mutex); }  // orders this wake-up after the worker's check
      queue_nonempty.notify_one();
    }
  }

  void page_created(PageId page) noexcept override { page_event(EventKind::PageCreated, page); }
  void page_deleted(PageId page) noexcept override { page_event(EventKind::PageDeleted, page); }
  void page_event(EventKind kind, PageId page) noexcept {
    if (!wants(kind)) return;
    try {
      deliver_events({Event{kind, page, 0, 0, 0, 0, {}}}, /*report_failures=*/true);
    } catch (...) {  // observers are best effort here
    }
  }

  void after_commit() override {
    if (options.mode == PropagationMode::Immediate) drain();
    notify_waiters();  // a commit may be what a wait_for() is waiting on
  }
};

// ---------------------------------------------------------------------------------------------------------------
// Propagator

Propagator::Propagator(Runtime& runtime, PropagatorOptions options, std::shared_ptr<FunctionRegistry> registry)
    : impl_(std::make_unique<Impl>(runtime, options)) {
  impl_->own_registry = std::move(registry);
}
Propagator::~Propagator() = default;

const PropagatorOptions& Propagator::options() const noexcept { return impl_->options; }

namespace {
std::unique_ptr<Node> make_node(PageId output, NodeKind kind, NodeOptions options) {
  auto node = std::make_unique<Node>();
  node->output = output;
  node->kind = kind;
  node->options = std::move(options);
  return node;
}
}  // namespace

void Propagator::derive_map(PageId output, std::vector<PageId> inputs, MapFunction fn, NodeOptions options) {
  if (!fn) throw Error(ErrorCode::InvalidArgument, "derive_map: the map function is empty");
  auto node = make_node(output, NodeKind::Map, std::move(options));
  node->map = std::move(fn);
  impl_->add_node(std::move(node), inputs);
}

void Propagator::derive_map(PageId output, std::vector<PageId> inputs, const std::string& registered_name,
                            NodeOptions options) {
  if (options.name.empty()) options.name = registered_name;
  auto node = make_node(output, NodeKind::Map, std::move(options));
  node->map = impl_->registry().map(registered_name);
  node->function = registered_name;
  impl_->add_node(std::move(node), inputs);
}

void Propagator::derive_passthrough(PageId output, PageId input, ByteRemap remap, NodeOptions options) {
  auto node = make_node(output, NodeKind::Passthrough, std::move(options));
  node->remap = remap;
  impl_->add_node(std::move(node), {input});
}

void Propagator::derive_incremental(PageId output, std::vector<PageId> inputs, IncrementalFunction fn,
                                    NodeOptions options) {
  derive_incremental(output, std::move(inputs), std::move(fn), MapFunction{}, std::move(options));
}

void Propagator::derive_incremental(PageId output, std::vector<PageId> inputs, IncrementalFunction fn,
                                    MapFunction rebuild, NodeOptions options) {
  if (!fn) throw Error(ErrorCode::InvalidArgument, "derive_incremental: the function is empty");
  auto node = make_node(output, NodeKind::Incremental, std::move(options));
  node->incremental = std::move(fn);
  node->rebuild = std::move(rebuild);
  impl_->add_node(std::move(node), inputs);
}

void Propagator::derive_incremental(PageId output, std::vector<PageId> inputs, const std::string& registered_name,
                                    NodeOptions options) {
  if (options.name.empty()) options.name = registered_name;
  auto node = make_node(output, NodeKind::Incremental, std::move(options));
  node->incremental = impl_->registry().incremental(registered_name);
  node->rebuild = impl_->registry().incremental_rebuild(registered_name);
  node->function = registered_name;
  impl_->add_node(std::move(node), inputs);
}

void Propagator::remove_node(PageId output) { impl_->remove_node(output); }

namespace {
DependencyKind to_dependency_kind(EdgeKind kind) {
  switch (kind) {
    case EdgeKind::Data: break;
    case EdgeKind::Control: return DependencyKind::Control;
    case EdgeKind::GpuSync: return DependencyKind::GpuSync;
  }
  return DependencyKind::Data;
}
}  // namespace

void Propagator::add_dependency(PageId from, PageId to, EdgeKind kind) {
  if (kind == EdgeKind::Data) {
    throw Error(ErrorCode::InvalidArgument, "data dependencies come from derive_*(); add_dependency() takes "
                                            "CONTROL or GPU_SYNC");
  }
  std::lock_guard lock(impl_->engine_mutex);
  impl_->live_record(from);
  impl_->live_record(to);
  impl_->graph.add_edge(from, to, to_dependency_kind(kind));
  ++impl_->structure_version;
}

bool Propagator::remove_dependency(PageId from, PageId to, EdgeKind kind) {
  std::lock_guard lock(impl_->engine_mutex);
  ++impl_->structure_version;
  return impl_->graph.remove_edge(from, to, to_dependency_kind(kind));
}

void Propagator::propagate() {
  {
    std::lock_guard lock(impl_->queue_mutex);
    if (impl_->background_error) {
      std::exception_ptr error = std::exchange(impl_->background_error, nullptr);
      std::rethrow_exception(error);
    }
  }
  impl_->drain();
}

void Propagator::recompute(PageId output) {
  {
    std::lock_guard lock(impl_->engine_mutex);
    auto it = impl_->nodes.find(output);
    if (it == impl_->nodes.end()) {
      throw Error(ErrorCode::NotFound, "page " + output.to_string() + " is not derived by any node");
    }
    it->second->stale.store(true, std::memory_order_relaxed);
    impl_->stale_nodes.push_back(it->second.get());
  }
  impl_->drain();
}

void Propagator::recompute_all() {
  {
    std::lock_guard lock(impl_->engine_mutex);
    for (auto& [id, node] : impl_->nodes) {
      node->stale.store(true, std::memory_order_relaxed);
      impl_->stale_nodes.push_back(node.get());
    }
  }
  impl_->drain();
}

void Propagator::wait_for(PageId page, std::uint64_t epoch) {
  impl_->waiters.fetch_add(1, std::memory_order_acq_rel);
  struct Leave {
    std::atomic<int>& count;
    ~Leave() { count.fetch_sub(1, std::memory_order_acq_rel); }
  } leave{impl_->waiters};
  std::unique_lock lock(impl_->done_mutex);
  for (;;) {
    if (impl_->runtime.info(page).epoch >= epoch) return;
    // Commits and waves notify; the timeout covers a notification that raced with the check above.
    impl_->wave_done.wait_for(lock, std::chrono::milliseconds(5));
  }
}

SubscriptionId Propagator::subscribe(PageId page, PageCallback callback) {
  if (!callback) throw Error(ErrorCode::InvalidArgument, "subscribe: the page callback is empty");
  Slot* slot = nullptr;
  {
    std::lock_guard lock(impl_->engine_mutex);
    slot = impl_->slot_for(page);  // makes the page's commits reach the engine even if no node reads it
  }
  std::lock_guard lock(impl_->observers_mutex);
  const SubscriptionId id = impl_->next_subscription++;
  impl_->page_subscriptions.emplace(id, std::make_pair(page, std::make_shared<PageCallback>(std::move(callback))));
  slot->subscribers.fetch_add(1, std::memory_order_relaxed);
  return id;
}

SubscriptionId Propagator::subscribe(EventMask kinds, EventCallback callback) {
  if (!callback) throw Error(ErrorCode::InvalidArgument, "subscribe: the event callback is empty");
  std::lock_guard lock(impl_->observers_mutex);
  const SubscriptionId id = impl_->next_subscription++;
  impl_->event_subscriptions.emplace(id, std::make_pair(kinds, std::make_shared<EventCallback>(std::move(callback))));
  impl_->refresh_wanted_events();
  return id;
}

bool Propagator::unsubscribe(SubscriptionId id) {
  PageId page;
  {
    std::lock_guard lock(impl_->observers_mutex);
    if (impl_->event_subscriptions.erase(id)) {
      impl_->refresh_wanted_events();
      return true;
    }
    auto it = impl_->page_subscriptions.find(id);
    if (it == impl_->page_subscriptions.end()) return false;
    page = it->second.first;
    impl_->page_subscriptions.erase(it);
  }
  std::lock_guard lock(impl_->engine_mutex);
  auto slot = impl_->slots.find(page);
  if (slot != impl_->slots.end()) slot->second->subscribers.fetch_sub(1, std::memory_order_relaxed);
  return true;
}

void Propagator::notify(const Event& event) { impl_->deliver_events({event}, /*report_failures=*/true); }

bool Propagator::is_stale(PageId page) const {
  std::lock_guard lock(impl_->engine_mutex);
  auto it = impl_->nodes.find(page);
  return it != impl_->nodes.end() && it->second->stale.load(std::memory_order_relaxed);
}

std::size_t Propagator::node_count() const {
  std::lock_guard lock(impl_->engine_mutex);
  return impl_->nodes.size();
}

PropagationStats Propagator::stats() const {
  const auto& c = impl_->counters;
  PropagationStats s;
  s.waves = c.waves.load(std::memory_order_relaxed);
  s.nodes_recomputed = c.recomputed.load(std::memory_order_relaxed);
  s.nodes_skipped = c.skipped.load(std::memory_order_relaxed);
  s.nodes_cut_off = c.cut_off.load(std::memory_order_relaxed);
  s.nodes_failed = c.failed.load(std::memory_order_relaxed);
  s.inline_waves = c.inline_waves.load(std::memory_order_relaxed);
  s.plan_builds = c.plan_builds.load(std::memory_order_relaxed);
  s.commits_queued = c.queued.load(std::memory_order_relaxed);
  s.deltas_composed = c.composed.load(std::memory_order_relaxed);
  s.bytes_changed = c.bytes.load(std::memory_order_relaxed);
  s.wave_latency = impl_->wave_latency.summary();
  s.hop_latency = impl_->hop_latency.summary();
  s.commit_latency = impl_->commit_latency.summary();
  return s;
}

namespace {

// (name, help, value) of each counter, shared by the JSON and Prometheus exports.
struct CounterField {
  const char* name;
  const char* help;
  std::uint64_t value;
};
std::vector<CounterField> counter_fields(const PropagationStats& s) {
  return {{"waves", "Waves run", s.waves},
          {"nodes_recomputed", "Nodes that ran and changed their output", s.nodes_recomputed},
          {"nodes_skipped", "Nodes reached by a wave whose inputs did not change", s.nodes_skipped},
          {"nodes_cut_off", "Nodes that ran and left their output unchanged", s.nodes_cut_off},
          {"nodes_failed", "Nodes that threw", s.nodes_failed},
          {"inline_waves", "Waves run on the calling thread", s.inline_waves},
          {"plan_builds", "Flow-graph execution plans built", s.plan_builds},
          {"commits_queued", "Commits that reached the propagation queue", s.commits_queued},
          {"deltas_composed", "Deltas folded into a pending delta of the same page (BATCH)", s.deltas_composed},
          {"bytes_changed", "Payload bytes of derived-page deltas published", s.bytes_changed}};
}

struct LatencyField {
  const char* name;
  const char* help;
  const LatencySummary* summary;
};
std::vector<LatencyField> latency_fields(const PropagationStats& s) {
  return {{"wave_latency", "Wave duration", &s.wave_latency},
          {"hop_latency", "Node run time (sampled)", &s.hop_latency},
          {"commit_latency", "Commit published to its wave finished (sampled)", &s.commit_latency}};
}

}  // namespace

std::string Propagator::stats_json() const {
  const PropagationStats s = stats();
  nlohmann::ordered_json out;
  for (const auto& f : counter_fields(s)) out[f.name] = f.value;
  for (const auto& f : latency_fields(s)) {
    out[f.name] = {{"count", f.summary->count},   {"mean_ns", f.summary->mean_ns}, {"p50_ns", f.summary->p50_ns},
                   {"p90_ns", f.summary->p90_ns}, {"p99_ns", f.summary->p99_ns},   {"max_ns", f.summary->max_ns}};
  }
  return out.dump(2);
}

std::string Propagator::stats_prometheus() const {
  const PropagationStats s = stats();
  std::ostringstream out;
  for (const auto& f : counter_fields(s)) {
    out << "# HELP mmsb_propagation_" << f.name << "_total " << f.help << ".\n"
        << "# TYPE mmsb_propagation_" << f.name << "_total counter\n"
        << "mmsb_propagation_" << f.name << "_total " << f.value << "\n";
  }
  for (const auto& f : latency_fields(s)) {
    const std::string name = std::string("mmsb_propagation_") + f.name + "_seconds";
    const LatencySummary& l = *f.summary;
    out << "# HELP " << name << " " << f.help << ".\n# TYPE " << name << " summary\n";
    const std::pair<const char*, std::uint64_t> quantiles[] = {{"0.5", l.p50_ns}, {"0.9", l.p90_ns}, {"0.99", l.p99_ns}};
    for (const auto& [q, ns] : quantiles) out << name << "{quantile=\"" << q << "\"} " << ns * 1e-9 << "\n";
    out << name << "_sum " << l.mean_ns * static_cast<double>(l.count) * 1e-9 << "\n"
        << name << "_count " << l.count << "\n";
  }
  return out.str();
}

std::vector<NodeDescription> Propagator::nodes() const {
  std::lock_guard lock(impl_->engine_mutex);
  std::vector<NodeDescription> out;
  out.reserve(impl_->nodes.size());
  for (const auto& [id, node] : impl_->nodes) {
    NodeDescription d;
    d.output = id;
    d.kind = node->kind;
    for (const Slot* in : node->inputs) d.inputs.push_back(in->page);
    d.function = node->function;
    d.options = node->options;
    d.remap = node->remap;
    d.has_rebuild = static_cast<bool>(node->rebuild);
    out.push_back(std::move(d));
  }
  std::sort(out.begin(), out.end(), [](const auto& a, const auto& b) { return a.output < b.output; });
  return out;
}

std::vector<OrderingEdge> Propagator::ordering_edges() const {
  std::lock_guard lock(impl_->engine_mutex);
  std::vector<OrderingEdge> out;
  for (PageId page : impl_->graph.topological_order()) {
    for (const detail::Dependency& dep : impl_->graph.inputs_of(page)) {
      if (dep.kind == DependencyKind::Control) out.push_back({dep.from, dep.to, EdgeKind::Control});
      if (dep.kind == DependencyKind::GpuSync) out.push_back({dep.from, dep.to, EdgeKind::GpuSync});
    }
  }
  return out;
}

std::string Propagator::to_dot() const {
  std::lock_guard lock(impl_->engine_mutex);
  std::vector<std::pair<PageId, std::string>> labels;
  for (const auto& [id, node] : impl_->nodes) {
    std::string label = node_kind_name(node->kind);
    if (!node->options.name.empty()) label += " " + node->options.name;
    if (node->stale.load(std::memory_order_relaxed)) label += " (stale)";
    labels.emplace_back(id, label);
  }
  std::sort(labels.begin(), labels.end());
  return impl_->graph.to_dot(labels);
}

// ---------------------------------------------------------------------------------------------------------------
// For durable/ (graph/propagator_access.hpp)

void detail::PropagatorAccess::settle(Propagator& propagator) {
  Propagator::Impl& impl = *propagator.impl_;
  std::lock_guard lock(impl.engine_mutex);
  impl.drain_locked();
}

void detail::PropagatorAccess::deliver_pending(Propagator& propagator) { propagator.impl_->deliver(); }

}  // namespace mmsb
