// The propagation engine: derived-page nodes, waves, modes. See mmsb/graph.hpp for the behaviour it promises.
//
// Structure. Every page that a node reads or writes has a Slot; a Slot records the wave in which its page last
// changed and that change's delta, so "did an input change in this wave?" is one atomic load per input. The
// DependencyGraph (Boost.Graph) is the authority on edges, cycles and the topological order; from it the engine
// derives, once per graph version, an execution plan: each node's topological index and successors, and a TBB
// flow graph in which each linear chain of nodes is one continue_node.
//
// A wave: mark the changed slots → find the affected nodes (breadth-first over data dependents, plus stale nodes)
// → run them inline in topological order when there are few, else fire the flow graph, whose bodies return at
// once for nodes outside the wave. A node publishes its output under the output page's exclusive lock.
//
// Memory ordering. Work handed to TBB crosses threads inside libtbb, which sanitizers cannot see into, so the
// engine states its own happens-before edges with atomics: the caller publishes the wave number (release) after
// preparing the wave and each task acquires it; a producer publishes its slot's change (release) after writing
// its delta and consumers acquire it; every task ends with an acq_rel increment that the caller acquires after
// wait_for_all().
#include "mmsb/graph.hpp"

#include <tbb/flow_graph.h>
#include <tbb/task_arena.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <deque>
#include <map>
#include <mutex>
#include <shared_mutex>
#include <thread>
#include <unordered_map>

#include "delta/copy_bytes.hpp"
#include "graph/dependency_graph.hpp"
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

// ---------------------------------------------------------------------------------------------------------------
// FunctionRegistry

struct FunctionRegistry::Impl {
  mutable std::shared_mutex mutex;
  std::unordered_map<std::string, MapFunction> maps;                  // guarded by mutex
  std::unordered_map<std::string, IncrementalFunction> incrementals;  // guarded by mutex
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
                                       "' is registered; call FunctionRegistry::global().register_*() at start-up");
}
}  // namespace

void FunctionRegistry::register_map(const std::string& name, MapFunction fn) {
  std::unique_lock lock(impl_->mutex);
  if (impl_->maps.count(name) || impl_->incrementals.count(name)) throw_duplicate_function(name);
  impl_->maps.emplace(name, std::move(fn));
}

void FunctionRegistry::register_incremental(const std::string& name, IncrementalFunction fn) {
  std::unique_lock lock(impl_->mutex);
  if (impl_->maps.count(name) || impl_->incrementals.count(name)) throw_duplicate_function(name);
  impl_->incrementals.emplace(name, std::move(fn));
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

enum class NodeKind : std::uint8_t { Map, Passthrough, Incremental };
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
  std::uint64_t recomputed = 0, skipped = 0, cut_off = 0, failed = 0;
};

struct PendingCommit {
  std::uint64_t lsn = 0;
  std::vector<Delta> deltas;
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
    plan_chains.clear();
    plan_start.reset();
    plan_graph.reset();
  }

  Runtime& runtime;
  Runtime::Impl& runtime_impl;
  PropagatorOptions options;
  tbb::task_arena arena;

  // Structure: guarded by engine_mutex (taken by structural calls and by waves, so a wave sees a fixed graph).
  std::recursive_mutex engine_mutex;
  DependencyGraph graph;
  std::unordered_map<PageId, std::unique_ptr<Node>> nodes;
  std::unordered_map<PageId, std::unique_ptr<Slot>> slots;  // never shrinks; commits find slots via listener_tag

  // Plan, rebuilt when the structure changes (nodes or edges added or removed).
  std::uint64_t structure_version = 0;  // engine_mutex
  std::uint64_t plan_version = ~std::uint64_t{0};
  std::vector<Node*> topo_nodes;
  std::vector<std::vector<Node*>> chains;             // fused linear chains, each in topological order
  std::vector<std::vector<std::size_t>> chain_preds;  // chains that must finish before each chain starts
  std::vector<Node*> stale_nodes;                     // engine_mutex: nodes to recompute in the next wave
  std::uint64_t flow_version = ~std::uint64_t{0};
  std::unique_ptr<tbb::flow::graph> plan_graph;
  std::unique_ptr<tbb::flow::broadcast_node<tbb::flow::continue_msg>> plan_start;
  std::vector<std::unique_ptr<tbb::flow::continue_node<tbb::flow::continue_msg>>> plan_chains;

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
        plan_builds{0}, queued{0}, composed{0};
  } counters;

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
    live_record(out);
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
    plan_chains.clear();
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
        plan_chains.push_back(std::make_unique<tbb::flow::continue_node<tbb::flow::continue_msg>>(
            *plan_graph, [this, members = bundle](const tbb::flow::continue_msg&) {
              const std::uint64_t wave = wave_number.load(std::memory_order_acquire);
              Tally tally;
              for (Node* node : members) {
                if (node->reached_wave.load(std::memory_order_relaxed) == wave) run_node(*node, wave, tally);
              }
              add_tally(tally);
              tasks_done.fetch_add(1, std::memory_order_acq_rel);
            }));
      }
      for (std::size_t b = 0; b < bundles.size(); ++b) {
        if (bundle_preds[b].empty()) tbb::flow::make_edge(*plan_start, *plan_chains[b]);
        for (std::size_t f : bundle_preds[b]) tbb::flow::make_edge(*plan_chains[f], *plan_chains[b]);
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

  bool compute_map(Node& node) {
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
    node.map(ctx);
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
      return;
    }
    bool changed = false;
    try {
      switch (node.kind) {
        case NodeKind::Map: changed = compute_map(node); break;
        case NodeKind::Passthrough: changed = compute_passthrough(node, wave, stale); break;
        case NodeKind::Incremental: changed = compute_incremental(node, wave); break;
      }
    } catch (...) {
      ++tally.failed;
      record_failure(node, std::current_exception());
      return;
    }
    node.stale.store(false, std::memory_order_relaxed);
    node.completed_wave.store(wave, std::memory_order_relaxed);
    if (changed) {
      ++tally.recomputed;
      node.out_slot->delta.store(&node.out_delta, std::memory_order_relaxed);
      node.out_slot->changed_wave.store(wave, std::memory_order_release);
    } else {
      ++tally.cut_off;
    }
  }

  // --- waves ----------------------------------------------------------------------------------------------------

  // Runs one wave for the given changed pages (and stale nodes). engine_mutex must be held.
  void run_wave(const std::vector<std::pair<PageId, const Delta*>>& changes) {
    ensure_order();
    const std::uint64_t wave = wave_number.load(std::memory_order_relaxed) + 1;
    affected.clear();
    bool single_chain = true;  // whether every reached node is in one fused chain (then it runs inline)
    auto reach = [&](Node* node) {
      if (node->reached_wave.load(std::memory_order_relaxed) == wave) return;
      node->reached_wave.store(wave, std::memory_order_relaxed);
      if (!affected.empty() && node->chain != affected.front()->chain) single_chain = false;
      affected.push_back(node);  // doubles as the breadth-first queue
    };
    for (const auto& [page, delta] : changes) {
      auto it = slots.find(page);
      if (it == slots.end()) continue;
      it->second->delta.store(delta, std::memory_order_relaxed);
      it->second->changed_wave.store(wave, std::memory_order_relaxed);
      for (Node* reader : it->second->readers) reach(reader);
    }
    for (Node* node : stale_nodes) reach(node);
    for (std::size_t i = 0; i < affected.size(); ++i) {
      for (Node* reader : affected[i]->out_slot->readers) reach(reader);
    }
    if (affected.empty()) return;

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
      auto by_topo = [](const Node* a, const Node* b) { return a->topo < b->topo; };
      // Breadth-first discovery along a chain is already in order; sort only when it is not.
      if (!std::is_sorted(affected.begin(), affected.end(), by_topo)) std::sort(affected.begin(), affected.end(), by_topo);
      Tally tally;
      for (Node* node : affected) run_node(*node, wave, tally);
      add_tally(tally);
    } else {
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
    notify_waiters();
    std::exception_ptr error;
    PageId page;
    {
      std::lock_guard lock(failure_mutex);
      error = failure;
      page = failed_page;
    }
    if (error) throw_node_error(page, error);
  }

  [[noreturn]] static void throw_node_error(PageId page, std::exception_ptr error) {
    std::string what = "unknown exception";
    try {
      std::rethrow_exception(error);
    } catch (const std::exception& e) {
      what = e.what();
    } catch (...) {
    }
    throw NodeError(page, what, error);
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

  // Runs queued commits according to the mode; then stale nodes if nothing else ran.
  void drain() {
    std::lock_guard lock(engine_mutex);
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
      for (const Delta& d : commit.deltas) changes.emplace_back(d.page, &d);
      run_wave(changes);
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
    run_wave(changes);
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

  void published(std::uint64_t lsn, std::span<const Delta> deltas) noexcept override {
    if (options.mode == PropagationMode::Batch) {
      publish_batch(deltas);
      return;
    }
    PendingCommit commit;
    for (const Delta& d : deltas) {
      if (slot_of(d.page) == nullptr) continue;
      if (commit.deltas.empty()) commit.deltas.reserve(deltas.size());
      commit.deltas.push_back(d);
    }
    if (commit.deltas.empty()) {
      free_places(1);
      return;
    }
    commit.lsn = lsn;
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
    batch_commits.fetch_add(1, std::memory_order_acq_rel);
    counters.queued.fetch_add(1, std::memory_order_relaxed);
    if (worker.joinable()) {
      { std::lock_guard lock(queue_mutex); }  // orders this wake-up after the worker's check
      queue_nonempty.notify_one();
    }
  }

  void after_commit() override {
    if (options.mode == PropagationMode::Immediate) drain();
    notify_waiters();  // a commit may be what a wait_for() is waiting on
  }
};

// ---------------------------------------------------------------------------------------------------------------
// Propagator

Propagator::Propagator(Runtime& runtime, PropagatorOptions options)
    : impl_(std::make_unique<Impl>(runtime, options)) {}
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
  derive_map(output, std::move(inputs), FunctionRegistry::global().map(registered_name), std::move(options));
}

void Propagator::derive_passthrough(PageId output, PageId input, ByteRemap remap, NodeOptions options) {
  auto node = make_node(output, NodeKind::Passthrough, std::move(options));
  node->remap = remap;
  impl_->add_node(std::move(node), {input});
}

void Propagator::derive_incremental(PageId output, std::vector<PageId> inputs, IncrementalFunction fn,
                                    NodeOptions options) {
  if (!fn) throw Error(ErrorCode::InvalidArgument, "derive_incremental: the function is empty");
  auto node = make_node(output, NodeKind::Incremental, std::move(options));
  node->incremental = std::move(fn);
  impl_->add_node(std::move(node), inputs);
}

void Propagator::derive_incremental(PageId output, std::vector<PageId> inputs, const std::string& registered_name,
                                    NodeOptions options) {
  if (options.name.empty()) options.name = registered_name;
  derive_incremental(output, std::move(inputs), FunctionRegistry::global().incremental(registered_name),
                     std::move(options));
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
  return s;
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

}  // namespace mmsb
