// graph/engine.hpp — the propagation engine's state, shared by the files that implement it (internal to mmsb).
//
// Propagator::Impl is one object; its code is split by concern:
//   plan.cpp       graph version and plan: nodes, slots and functions; the per-version execution plan
//   wave.cpp       the wave executor: which nodes a wave reaches, running them, publishing their outputs
//   queue.cpp      queues and modes: the commit listener, IMMEDIATE/DEFERRED/BATCH draining, the worker thread
//   observers.cpp  observers and stats: subscriptions, events, delivery after the wave, counters and exports
//   builder.cpp    GraphBuilder: many nodes declared as one graph version
//   propagator.cpp the public Propagator members, which lock and delegate
//
// Structure, sized for millions of pages (48 bytes per page and 32 per node here, besides the graph index):
//  - The DependencyGraph (graph/dependency_graph.hpp) is the authority on edges, cycles and the topological order.
//    Its dense vertex ids index the engine's per-page Slots.
//  - A Slot records the wave in which its page last changed and that change's delta, so "did an input change in
//    this wave?" is one atomic load per input. Commits find a page's Slot through a tag on its page record.
//  - A Node is a derived page's computation: its output vertex, its inputs (a range of one shared pool of vertex
//    ids) and an index into a function table, so nodes declared with one shared function store it once.
//  - Slots and nodes live in chunked arrays whose elements never move: a commit on another thread may hold a
//    Slot pointer while the engine adds pages.
//  - The Plan, built once per graph version at the next wave, lists the nodes level by level (a node's level is
//    one more than the deepest node it depends on, by any edge kind). Each position's step holds what the walk that
//    finds a wave's nodes needs (its node, its only data successor, the last wave that reached it, and for the
//    walk's prefetches the node's first input and its successor's only successor) in one place;
//    positions with several data successors list them in a Boost.Graph compressed_sparse_row_graph.
//
// A wave: mark the changed slots → walk the successors from their readers (plus stale nodes) to find the reached
// positions → run them level by level: a level's nodes are independent, so a level with enough work is split
// across the arena's threads (tbb::parallel_for), and everything else runs inline on the calling thread. A node
// locks its inputs shared and its output exclusive (in PageId order, as commits do), computes, diffs and publishes
// under those locks. Per-run scratch (the map output buffer, input spans, a delta nobody reads) belongs to the
// thread, not the node. Observers get what the wave produced after it, outside the engine lock.
//
// Memory ordering. Work handed to TBB crosses threads inside libtbb, which sanitizers cannot see into, so the
// engine states its own happens-before edges with atomics: the caller publishes the wave number (release) after
// preparing the wave and each chunk acquires it; a producer publishes its slot's change (release) after writing
// its delta and consumers acquire it; every chunk ends with an acq_rel increment of chunks_done, which each later
// chunk and the caller acquire.
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
#include <new>
#include <span>
#include <string>
#include <thread>
#include <type_traits>
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

constexpr std::uint32_t event_bit(EventKind kind) { return EventMask{kind}.bits(); }

using NodeIndex = std::uint32_t;
inline constexpr NodeIndex kNoNode = ~NodeIndex{0};
// Plan positions (graph/plan.hpp) in a Slot's reader fields: none, or several the plan does not list (the wave then
// asks the DependencyGraph).
inline constexpr std::uint32_t kNoPosition = ~std::uint32_t{0};
inline constexpr std::uint32_t kManyPositions = kNoPosition - 1;

// An array of T in chunks of 4096 that never move once allocated, indexed by a 32-bit id. Growing takes the
// engine lock; reading an element needs no lock once the reader has its address. Elements are constructed as the
// array grows, not a chunk at a time, so a small graph keeps most of its one chunk untouched (not resident).
template <class T>
class StableArray {
  static_assert(std::is_trivially_destructible_v<T>, "elements are never destroyed one by one");

 public:
  static constexpr unsigned kChunkBits = 12;
  T& operator[](std::uint32_t i) noexcept { return chunks_[i >> kChunkBits].get()[i & kMask]; }
  const T& operator[](std::uint32_t i) const noexcept { return chunks_[i >> kChunkBits].get()[i & kMask]; }
  std::uint32_t size() const noexcept { return size_; }
  // Makes ids [0, n) valid (new elements are value-initialized).
  void grow_to(std::uint32_t n) {
    while (static_cast<std::size_t>(chunks_.size()) << kChunkBits < n) {
      chunks_.emplace_back(static_cast<T*>(::operator new (sizeof(T) << kChunkBits, std::align_val_t{kAlignment})));
    }
    for (std::uint32_t i = size_; i < n; ++i) new (&(*this)[i]) T();
    if (n > size_) size_ = n;
  }
  std::size_t memory_bytes() const noexcept {
    return chunks_.size() * (sizeof(T) << kChunkBits) + chunks_.capacity() * sizeof(void*);
  }

 private:
  static constexpr std::uint32_t kMask = (1u << kChunkBits) - 1;
  // Chunks start on a cache line, so an element of 32 bytes (a Node) never straddles two: a wave that misses on
  // one pays one line for it, not sometimes two.
  static constexpr std::size_t kAlignment = alignof(T) > 64 ? alignof(T) : 64;
  struct FreeChunk {
    void operator()(T* chunk) const noexcept { ::operator delete (chunk, std::align_val_t{kAlignment}); }
  };
  std::vector<std::unique_ptr<T, FreeChunk>> chunks_;
  std::uint32_t size_ = 0;
};

// The engine's state for one page of the graph, indexed by its vertex id.
struct Slot {
  PageRecord* record = nullptr;                // null until the page joins the engine
  std::atomic<const Delta*> delta{nullptr};    // this wave's change, when someone reads it; valid for the wave
  std::atomic<std::uint32_t> changed_wave{0};  // release-stored after `delta`
  NodeIndex node = kNoNode;                    // the node computing this page (engine_mutex)
  std::atomic<std::uint32_t> subscribers{0};   // page subscriptions (observers)
  VertexId vertex = kNoVertex;
  // The page's data readers in the current plan (engine_mutex; written by each plan build): the position of its
  // only reader, kNoPosition, kManyPositions, or Plan::kRow | its readers' row in Plan::source_readers. With
  // `reader_next` (that reader's only successor, else kNoPosition) a wave starting from this page fetches the first
  // two steps of its walk at once, right after the slot it reads anyway: in a large graph a by-vertex array here
  // and the second step were two more dependent misses (about 8% of a 10^6-leaf tree's single-source wave).
  std::uint32_t reader = kManyPositions;
  std::uint32_t reader_next = kNoPosition;
  struct BatchPending* batch = nullptr;  // BATCH: its pending delta (guarded by the page's lock)
};

// BATCH: the commits of one page not yet propagated, folded into one delta. Guarded by the page's lock, which
// every commit of this page holds while it publishes, so folds happen in LSN order.
struct BatchPending {
  Delta pending;
  bool has_pending = false;
  std::uint64_t folds = 0;  // deltas folded into `pending` after the first
  // BATCH commits counted here, not yet drained: each commit counts on the first watched page it changes, under
  // that page's lock, so counting takes no shared atomic (the drain frees that many queue places).
  std::uint64_t commits = 0;
};

struct Node {
  static constexpr std::uint8_t kLive = 1;           // the index is in use
  static constexpr std::uint8_t kAlwaysChanges = 2;  // map: no diff, the whole output is the delta
  static constexpr std::uint8_t kLockOrder = 4;      // inputs strictly increase by PageId: they are the lock order
  static constexpr std::uint8_t kKeepDelta = 8;      // a reader consumes this node's delta (set by the plan)
  static constexpr std::uint8_t kHasRebuild = 16;    // incremental: Impl::rebuilds holds its rebuild function
  // Its output and inputs were at most PageRecord::kInlineBytes when it was declared, so their bytes sit inside
  // their records and a small wave's prefetch does not fetch them apart (see wave.cpp's prefetch()). Only a hint: a
  // page resized since then costs a miss, never a result.
  static constexpr std::uint8_t kInlinePages = 32;

  VertexId out = kNoVertex;
  std::uint32_t inputs = 0;  // first input in Impl::input_pool
  std::uint32_t input_count = 0;
  std::uint32_t function = 0;  // index into the kind's function table (maps, incrementals, remaps)
  std::uint32_t position = 0;  // in the plan of its graph version
  std::atomic<std::uint32_t> completed_wave{0};
  NodeKind kind = NodeKind::Map;
  std::uint8_t flags = 0;
  std::atomic<bool> stale{false};
  std::uint32_t kept = kNoNode;  // its slot in Impl::kept_deltas, once a reader consumed its delta (kKeepDelta)
};

static_assert(sizeof(Slot) <= 48 && sizeof(Node) <= 32, "the per-page and per-node budgets of issue 18");

// Functions shared by index, with a use count so the last node using one frees it.
template <class F>
struct FunctionTable {
  std::vector<F> entries;
  std::vector<std::uint32_t> uses;
  std::vector<std::uint32_t> free;
  std::uint32_t add(F fn, std::uint32_t initial_uses) {
    std::uint32_t i;
    if (!free.empty()) {
      i = free.back();
      free.pop_back();
      entries[i] = std::move(fn);
      uses[i] = initial_uses;
    } else {
      i = static_cast<std::uint32_t>(entries.size());
      entries.push_back(std::move(fn));
      uses.push_back(initial_uses);
    }
    return i;
  }
  void release(std::uint32_t i) {
    if (--uses[i] == 0) {
      entries[i] = F{};
      free.push_back(i);
    }
  }
};

// What a node's description needs beyond the hot fields: its options' name and its registered function name.
struct NodeLabel {
  std::string name;
  std::string function;
};

// The execution plan of one graph version (engine_mutex).
struct Plan;
struct PlanDeleter {
  void operator()(Plan* plan) const noexcept;  // plan.cpp, where Plan is complete
};

// Per-run scratch of one thread: the map output buffer, input spans and deltas, a delta that no reader keeps.
struct RunScratch;
// A node's slots and records found ahead by the wave pipeline (wave.cpp).
struct FetchAhead;
// Per-chunk counts, added to the shared counters once per chunk rather than once per node (those atomics would
// otherwise bounce between cores on every node of a parallel wave).
struct Tally {
  std::uint32_t wanted = 0;  // the observers' event mask, read once per chunk
  std::uint64_t recomputed = 0, skipped = 0, cut_off = 0, failed = 0, bytes = 0, runs = 0;
  RunScratch* scratch = nullptr;
};

// A level of a wave: [first, last) of the wave's sorted positions (sparse waves) or of plan positions (dense).
struct Segment {
  std::uint32_t first, last;
};

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
  std::size_t count = 0;     // deltas[0, count) are the commit's watched deltas
  std::size_t capacity = 0;  // the array's length
};

// A node as GraphBuilder and derive_* hand it to the engine.
struct NodeSpec {
  PageId output;
  std::span<const PageId> inputs;
  NodeKind kind = NodeKind::Map;
  bool always_changes = false;
  bool output_is_current = false;  // NodeOptions::output_is_current: declared computed, not stale
  ByteRemap remap;
  // Exactly one of these is set for map and incremental nodes: a shared function's index in the engine's table
  // (already counted for this node), or a function of this node alone.
  std::uint32_t shared_function = kNoNode;
  MapFunction* map = nullptr;
  IncrementalFunction* incremental = nullptr;
  MapFunction* rebuild = nullptr;         // incremental: its rebuild function, if it has one
  const std::string* name = nullptr;      // NodeOptions::name, may be empty
  const std::string* function = nullptr;  // the registered function name, may be empty
};

}  // namespace detail

struct Propagator::Impl : detail::CommitListener {
  using Slot = detail::Slot;
  using Node = detail::Node;
  using NodeIndex = detail::NodeIndex;
  using Tally = detail::Tally;
  using PageChange = detail::ObservedChange;
  using PendingCommit = detail::PendingCommit;
  using VertexId = detail::VertexId;

  Impl(Runtime& rt, PropagatorOptions opts);
  ~Impl() override;

  Runtime& runtime;
  Runtime::Impl& runtime_impl;
  PropagatorOptions options;
  tbb::task_arena arena;

  // Structure: guarded by engine_mutex (taken by structural calls and by waves, so a wave sees a fixed graph).
  std::recursive_mutex engine_mutex;
  detail::DependencyGraph graph;
  detail::StableArray<Slot> slots;    // by vertex id; commits find them through their page record's tag
  detail::StableArray<Node> node_at;  // by node index
  std::vector<NodeIndex> free_nodes;
  std::size_t live_nodes = 0;
  std::vector<VertexId> input_pool;  // every node's inputs, in declaration order
  std::size_t input_garbage = 0;     // entries of removed nodes, reclaimed by compact_inputs()
  detail::FunctionTable<MapFunction> maps;
  detail::FunctionTable<IncrementalFunction> incrementals;
  detail::FunctionTable<ByteRemap> remaps;
  // Rebuild functions of the incremental nodes that have one (Node::kHasRebuild): run instead of the incremental
  // function when the node is computed from scratch. Rare, so a map beside the compact node table.
  std::unordered_map<NodeIndex, MapFunction> rebuilds;
  std::shared_ptr<FunctionRegistry> own_registry;  // derive_*() by name; null: FunctionRegistry::global()
  FunctionRegistry& registry() const { return own_registry ? *own_registry : FunctionRegistry::global(); }
  std::unordered_map<NodeIndex, detail::NodeLabel> labels;  // nodes with a name or a registered function
  // The published deltas of nodes whose readers consume them (passthrough and incremental readers), kept per node
  // so their capacity is reused; slots are handed out by the plan and never move during a wave.
  std::vector<std::unique_ptr<Delta>> kept_deltas;
  std::vector<std::uint32_t> free_kept;
  std::uint64_t structure_version = 0;

  // Plan, rebuilt at the first wave after the structure changed.
  std::unique_ptr<detail::Plan, detail::PlanDeleter> plan;
  std::vector<NodeIndex> stale_nodes;              // engine_mutex: nodes to recompute in the next wave
  std::atomic<std::uint64_t> node_ns_estimate{0};  // recent sampled node run time, for splitting levels

  // Wave state.
  std::atomic<std::uint32_t> wave_number{0};
  std::atomic<std::uint64_t> chunks_done{0};
  std::atomic<bool> cancelled{false};
  std::mutex failure_mutex;
  PageId failed_page;                     // guarded by failure_mutex
  std::exception_ptr failure;             // guarded by failure_mutex
  std::vector<std::uint32_t> affected;    // engine_mutex: this wave's positions, in plan order (sparse waves)
  std::vector<detail::Segment> segments;  // engine_mutex: this wave's levels

  // Queue of published commits.
  std::mutex queue_mutex;
  std::condition_variable queue_space, queue_nonempty;
  std::deque<PendingCommit> queue;  // guarded by queue_mutex
  // Drained arrays of kSpareDeltas deltas, reused by the next small commits so a steady stream of commits stops
  // allocating (guarded by queue_mutex; at most kSpareCommits).
  static constexpr std::size_t kSpareDeltas = 8, kSpareCommits = 8;
  std::vector<std::shared_ptr<Delta[]>> spare_commits;
  // The largest drained array above that size (guarded by queue_mutex), reused by the next commit it can hold: an
  // app that commits all its sources each step then neither allocates the commit's deltas nor frees them at the
  // end of the wave (freeing 10^5 deltas was ~30% of a 10^5-source full wave). Holds at most one commit's deltas.
  // A kept array holding more than kSpareLargeBytes (deltas and their vectors' capacity) is freed by the first
  // commit that would use less than a quarter of it, so one huge commit does not pin its memory while the app
  // goes on with small ones; an app that commits as much every time keeps it.
  static constexpr std::size_t kSpareLargeBytes = std::size_t{64} << 20;
  std::shared_ptr<Delta[]> spare_large;
  std::size_t spare_large_capacity = 0;
  std::size_t spare_large_bytes = 0;
  std::vector<std::pair<PageId, const Delta*>> drain_changes;  // engine_mutex
  std::atomic<std::size_t> reserved{0};  // commits between reserve() and being drained (or released)
  std::atomic<std::size_t> blocked{0};   // commits waiting in reserve() for queue space
  // BATCH: queue places a committing thread took as a block (counted in `reserved` when taken) and has not used
  // yet. Only the owning thread writes `places`, so using one is a plain load and store (see take_block_place()).
  struct alignas(64) PlaceBlock {
    std::thread::id owner;
    std::atomic<std::size_t> places{0};
  };
  static constexpr std::size_t kPlacesPerBlock = 64;
  // Blocks are only taken while every thread's block together is at most this fraction of the queue's capacity
  // (capacity >= kPlacesPerBlock * kBlockShare * threads), so unused places can never fill the queue.
  static constexpr std::size_t kBlockShare = 64;
  const std::uint64_t block_serial;  // unique per Propagator: a thread's cached block is never another's
  mutable std::mutex block_mutex;
  std::deque<PlaceBlock> place_blocks;        // guarded by block_mutex; appended only, never moved
  std::atomic<std::size_t> block_threads{0};  // place_blocks.size()
  std::atomic<bool> batch_dirty{false};       // BATCH: dirty_slots is not empty (the worker's wake-up)
  std::mutex dirty_mutex;
  std::vector<Slot*> dirty_slots;   // guarded by dirty_mutex: BATCH slots with a pending delta
  std::vector<Slot*> drain_slots;   // engine_mutex: the ones being drained
  std::vector<Delta> drain_deltas;  // engine_mutex: their pending deltas, swapped out (capacity reused)
  std::mutex batch_mutex;           // guards batch_pending
  std::vector<std::unique_ptr<detail::BatchPending>> batch_pending;  // owns the Slots' BATCH deltas
  bool stopping = false;                                             // guarded by queue_mutex
  std::exception_ptr background_error;                               // guarded by queue_mutex
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
  // The page's slot (and graph vertex), created if missing; `where` places a new vertex in the order.
  Slot* slot_for(PageId id, detail::DependencyGraph::Placement where = detail::DependencyGraph::Placement::Last);
  Slot* slot_for(PageRecord* record, detail::DependencyGraph::Placement where);
  Slot& slot(VertexId v) noexcept { return slots[v]; }
  Node& node(NodeIndex n) noexcept { return node_at[n]; }
  Slot& out_slot(const Node& n) noexcept { return slots[n.out]; }
  std::span<const VertexId> inputs_of(const Node& n) const noexcept {
    return {input_pool.data() + n.inputs, n.input_count};
  }
  // The node computing `page`, or kNoNode. engine_mutex held.
  NodeIndex node_of(PageId page) const noexcept;
  // Adds one node (engine_mutex held); throws with nothing changed when the node is refused.
  NodeIndex add_node(const detail::NodeSpec& spec);
  PageRecord* check_node_spec(const detail::NodeSpec& spec);
  VertexId link_node(const detail::NodeSpec& spec, PageRecord* out_record);
  std::vector<PageRecord*> spec_records;  // engine_mutex: the inputs' records of the node being added
  NodeIndex allocate_node();
  void bind_function(NodeIndex index, const detail::NodeSpec& spec);
  void remove_node(NodeIndex n);
  void compact_inputs();
  // Builds the plan if the structure changed since it was built.
  void ensure_plan();
  // The steps of ensure_plan, in order.
  bool levels_in_index_order(std::vector<std::uint32_t>& level, std::uint32_t& levels);
  std::uint32_t levels_by_kahn(std::vector<std::uint32_t>& level);
  void assign_positions(detail::Plan& p, const std::vector<std::uint32_t>& level, std::uint32_t levels);
  void link_successors(detail::Plan& p);
  void link_source_readers(detail::Plan& p, std::vector<std::uint32_t>& reader_of,
                           std::vector<std::pair<std::uint32_t, std::uint32_t>>& edges);
  void store_readers(const detail::Plan& p, const std::vector<std::uint32_t>& reader_of);
  void allocate_kept_deltas();
  std::size_t memory_bytes() const;

  // --- node execution and waves (wave.cpp) ----------------------------------------------------------------------
  void record_failure(Node& node, std::exception_ptr error);
  // Writes `d` (ranges and payload set, or computed here by diffing `computed`) into the node's output page as one
  // new epoch. Returns false if the delta is empty (cutoff). The caller holds the output's exclusive lock.
  bool publish(Node& node, PageRecord& page, Delta& d, std::span<const std::byte> computed, bool diff);
  // A map's output, diffed and published; returns the published delta's payload bytes (0: cutoff). `d` null: no
  // one reads the delta (no consuming reader, no observer), so a small page is compared and written in place.
  // `carried`: the node's slots and records found ahead by the wave pipeline, or null.
  std::uint64_t compute_map(Node& node, Delta* d, detail::RunScratch& scratch, const MapFunction& fn,
                            const detail::FetchAhead* carried = nullptr);
  // The in-place publish of a small map output (the caller holds the output's exclusive lock): returns what the
  // delta's payload would have held.
  std::uint64_t publish_in_place(Node& node, PageRecord& page, std::span<const std::byte> computed);
  // Forwards the input's delta through the remap window; a stale node copies the whole window instead.
  bool compute_passthrough(Node& node, Delta& d, std::uint32_t wave, bool stale, detail::RunScratch& scratch);
  bool compute_incremental(Node& node, Delta& d, std::uint32_t wave, detail::RunScratch& scratch);
  void add_tally(const Tally& t);
  void run_node(NodeIndex index, std::uint32_t wave, Tally& tally, const detail::FetchAhead* carried = nullptr);
  // Runs the reached nodes among plan positions [begin, end) (dense waves) or the listed positions (sparse).
  void run_range(std::uint32_t begin, std::uint32_t end, std::uint32_t wave, Tally& tally);
  void run_list(const std::uint32_t* positions, std::size_t count, std::uint32_t wave, Tally& tally);
  // Runs `count` nodes (run_at(i)), prefetching for the nodes ahead (step_at(k)) stage by stage (see wave.cpp).
  template <class StepAt, class RunAt>
  void run_pipelined(std::size_t count, const StepAt& step_at, const RunAt& run_at);
  // Runs every plan position that the wave reaches, marking successors as it goes (a full wave, see run_wave).
  void run_sweep(std::uint32_t wave, Tally& tally);
  // How many nodes ahead of the running one each stage of the pipeline fetches: the node and its input ids, its
  // slots, its page records, its pages' bytes.
  static constexpr std::size_t kNodesAhead = 16, kSlotsAhead = 8, kRecordsAhead = 4, kBytesAhead = 2;
  // The prefetches are always inlined (wave.cpp): GCC finds that a function which only reads and prefetches has no
  // side effects and drops its calls, which is what happened to prefetch() until session 11.
  void prefetch_node(NodeIndex node, std::uint32_t first_input) const noexcept;
  // The three later stages of one node, shared by the pipeline and by a small wave's prefetch().
  void prefetch_slots(const Node& node) const noexcept;
  void prefetch_records(const Node& node) const noexcept;
  void prefetch_input_bytes(const Node& node) const noexcept;
  static std::string describe(std::exception_ptr error);
  // Runs one wave for the given changed pages (and stale nodes). engine_mutex must be held.
  // `owner`, when set, owns the deltas of `changes`: page observers then share them instead of copying them.
  void run_wave(const std::vector<std::pair<PageId, const Delta*>>& changes,
                const std::shared_ptr<const void>& owner = nullptr);
  // The steps of run_wave, in order.
  struct WaveShape {
    bool dense = false;          // scans plan positions rather than the sorted `affected`
    bool sweep = false;          // dense, and reaching as it runs (run_sweep) instead of walking first
    int threads = 1;             // the arena's concurrency
    std::uint64_t estimate = 1;  // sampled ns per node
    bool wide(std::size_t nodes, const PropagatorOptions& options) const noexcept;
  };
  // Without `walk`, only the changed pages' readers and the stale nodes are reached (run_sweep reaches the rest).
  void reach_from(const std::vector<std::pair<PageId, const Delta*>>& changes, const std::shared_ptr<const void>& owner,
                  std::uint32_t wave, bool walk = true);
  void begin_wave(std::uint32_t wave);
  bool plan_segments(const WaveShape& shape);
  void run_segment(const detail::Segment& s, bool dense, std::uint32_t wave, Tally& tally);
  void run_levels_in_parallel(const WaveShape& shape, std::uint32_t wave, Tally& tally);
  void settle(bool dense, std::uint32_t wave);
  void finish_wave(std::uint32_t wave, std::uint64_t started);
  [[noreturn]] static void throw_node_error(PageId page, std::exception_ptr error);
  bool any_stale() const { return !stale_nodes.empty(); }
  // Overlaps the cache misses of a small wave's nodes (see wave.cpp).
  static constexpr std::size_t kPrefetchNodes = 256;
  // Plans from this many positions on prefetch during the walk: below it (about 1 MB of engine state, a core's L2)
  // the steps, nodes and input ids are in cache and a prefetch only costs instructions on every hop.
  static constexpr std::size_t kPrefetchPositions = 4096;
  void prefetch(const std::vector<std::uint32_t>& positions);
  // Prefetches for the walk of reach_from() at queue index k (see wave.cpp), with its stages' distances.
  void prefetch_walk(std::size_t k) const noexcept;
  static constexpr std::size_t kRowsAhead = 12, kColumnsAhead = 8, kTargetsAhead = 4;
  // The next wave number; when the 32-bit counter would wrap, every wave mark is reset first.
  std::uint32_t next_wave();

  // --- queues and modes (queue.cpp) -----------------------------------------------------------------------------
  // Frees `n` reserved queue places and wakes commits blocked on a full queue.
  void free_places(std::size_t n);
  // BATCH: a new block for this thread, with one of its places taken; false when the commit must take its place
  // alone (reserve_alone()).
  bool take_block_place();
  void reserve_alone();
  PlaceBlock* block_of_this_thread();
  // Places taken in blocks and not used yet (stats() subtracts them from the reserved ones).
  std::size_t unused_block_places() const;
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
  // Keeps a drained commit's array for reuse when it is small and unshared.
  void recycle(PendingCommit& commit) noexcept;
  void take_spare(PendingCommit& commit, std::size_t watched) noexcept;
  void worker_loop();
  // One commit in kSampleCommitsEvery per thread is timed from here to the end of its wave.
  bool sample_this_commit() noexcept;
  std::atomic<std::uint64_t> commits_seen{0};
  Slot* slot_of(PageId page) const noexcept;
  detail::BatchPending& batch_of(Slot& slot);
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
