// mmsb/graph.hpp — derived pages and their propagation in waves.
//
// A Propagator attaches to a Runtime and keeps derived pages up to date. Each derived page is the output of one
// node, which reads input pages (sources or other derived pages) and writes its output:
//
//   mmsb::Runtime rt;
//   mmsb::Propagator prop(rt);
//   auto a = rt.create_page(8), doubled = rt.create_page(8);
//   prop.derive_map(doubled, {a}, [](mmsb::MapContext& c) {
//     c.output_as<std::int64_t>() = 2 * c.input_as<std::int64_t>(0);
//   });
//   auto txn = rt.begin(); txn.write_value<std::int64_t>(a, 0, 21); txn.commit();  // doubled now holds 42
//   // (A node declared after its inputs were written is computed by propagate(): derive_map(...); propagate();)
//
// Waves. A commit marks the pages it changed; the next wave runs every node downstream of them, in a topological
// order of the dependency graph, each node after all of its inputs. A node whose inputs did not change in the wave
// is skipped, unless it is stale: new nodes are stale until a wave computes them (propagate() runs one), and so
// are nodes a failed wave left behind. A wave costs what it reaches (the nodes downstream of the change and their
// inputs), not the size of the graph. Its plan, built once per graph version, orders the nodes by level (one more
// than the deepest node each depends on); the nodes of one level are independent, so a level with enough work is
// split across `threads` TBB workers, and everything else runs inline on the calling thread, where scheduling
// would cost more than the work.
//
// Node kinds.
//  - map: recomputes its whole output from its inputs; the new output is diffed against the old one and an empty
//    diff stops propagation there (cutoff). A node declared `always_changes` skips the diff and emits a dense delta.
//  - passthrough: forwards its single input's delta to the output, optionally shifted/clipped (remap); no compute.
//  - incremental: receives its inputs' deltas and returns the output delta itself.
// Functions can be registered by name (FunctionRegistry) so a restarted program re-binds them to the same nodes.
//
// Modes. IMMEDIATE runs the wave inside commit(), on the committing thread, before commit() returns. DEFERRED
// queues each commit; propagate() (or the background worker) runs one wave per queued commit, in commit order.
// BATCH folds each commit into one pending delta per page as it is published (the composition of that page's
// commits, in LSN order; rewrites of bytes already pending are folded in place), and propagate() runs everything
// pending as one wave. Queues are bounded (`queue_capacity` commits); when full, a commit either blocks until the
// queue drains or fails with ResourceExhausted (before it becomes visible), as `full_policy` says. Under many
// concurrent committers the bound may be exceeded by at most the number of committing threads. In BATCH mode a
// committing thread takes its queue places in blocks of 64 while the queue is far from full and blocks fit in a
// 64th of the capacity; places another thread holds unused count against the capacity, so with several
// committing threads full_policy may apply up to queue_capacity / 64 commits early (a thread alone gets exactly
// queue_capacity).
//
// Visibility. A node's output is published only when the node finishes (under the output page's lock, with its
// epoch advanced), so a reader never sees half of a node's write. Derived-page updates take no LSN of their own;
// they are consequences of the commit that triggered the wave. When propagate() or an IMMEDIATE commit returns,
// every derived page reflects every commit processed by that wave.
//
// Failure. If a node throws, the wave is cancelled (nodes not yet started do not run), nothing of the failing
// node's output is published, the failing node and everything downstream of it that did not complete is marked
// stale, and the wave rethrows a NodeError naming the failing page (with the original exception nested). The next
// wave recomputes stale nodes even if their inputs did not change again. No lock is held while node code runs
// except shared locks on the node's own inputs, so a throwing node cannot deadlock the runtime.
//
// Determinism. Node functions must depend only on their inputs. The state after a wave is then independent of
// the thread count and of timing (tests compare page hashes across 1, 2 and 8 threads).
//
// Limits. Derived pages keep their size (a map writes into a buffer of the output's current size). A page is the
// output of at most one node. Cycles are refused when the edge that would close one is added; the error names
// the cycle's pages. Graph changes (derive_*, add/remove dependencies) are allowed at any time; they take effect
// from the next wave.
//
// Thread-safety: every Propagator member may be called from any thread. Waves are serialized: one runs at a
// time. Node functions run on TBB worker threads or the calling thread and may run concurrently with each other
// (never two at once for the same node). Node functions must not commit or call the Propagator.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <initializer_list>
#include <memory>
#include <span>
#include <string>
#include <type_traits>
#include <vector>

#include "mmsb/delta.hpp"
#include "mmsb/error.hpp"
#include "mmsb/event.hpp"
#include "mmsb/page_id.hpp"
#include "mmsb/topology.hpp"
#include "mmsb/typed_view.hpp"

namespace mmsb {

class Runtime;
class FunctionRegistry;
namespace detail {
struct PropagatorAccess;
}  // namespace detail

enum class PropagationMode : std::uint8_t { Immediate, Deferred, Batch };
enum class QueueFullPolicy : std::uint8_t { Block, Fail };

struct PropagatorOptions {
  PropagationMode mode = PropagationMode::Immediate;
  // Worker threads for parallel waves (the TBB task_arena's concurrency); 0 = one per hardware thread.
  unsigned threads = 0;
  // Waves that reach at most this many nodes run inline on the calling thread; so do levels of at most this many.
  std::size_t inline_node_limit = 32;
  // A level of a wave is split across the workers only when its nodes' estimated run time (sampled) reaches this;
  // 0 splits every level larger than inline_node_limit (tests use it to exercise the parallel path).
  std::uint64_t min_parallel_work_ns = 50'000;
  // Commits a DEFERRED/BATCH queue holds before `full_policy` applies.
  std::size_t queue_capacity = 1 << 16;
  QueueFullPolicy full_policy = QueueFullPolicy::Block;
  // Run propagate() on a background thread whenever commits are queued (DEFERRED/BATCH).
  bool background_worker = false;
};

// What a map function sees: read-only input bytes (in declaration order) and the output buffer, which holds the
// output page's current bytes when the function starts. Valid only during the call.
class MapContext {
 public:
  std::size_t input_count() const noexcept { return inputs_.size(); }
  std::span<const std::byte> input(std::size_t i) const {
    if (i >= inputs_.size()) throw_no_input(i, inputs_.size());
    return inputs_[i];
  }
  std::span<std::byte> output() const noexcept { return output_; }
  PageId output_page() const noexcept { return output_page_; }

  template <class T>
  T input_as(std::size_t i, std::size_t offset = 0) const {
    static_assert(std::is_trivially_copyable_v<T>);
    auto bytes = input(i);
    check_fits(bytes.size(), offset, sizeof(T));
    T value;
    std::memcpy(&value, bytes.data() + offset, sizeof(T));
    return value;
  }
  // A typed reference into the output buffer; the buffer is 64-byte aligned, `offset` must keep T aligned.
  template <class T>
  T& output_as(std::size_t offset = 0) const {
    static_assert(std::is_trivially_copyable_v<T>);
    check_fits(output_.size(), offset, sizeof(T));
    return *reinterpret_cast<T*>(output_.data() + offset);
  }
  // Input `i` as `count` elements of T from byte `offset` (default: the whole input, which must be a whole number
  // of T), and the output buffer likewise. No copy; valid during the call. Throws Error(InvalidArgument) when they
  // do not fit or are not aligned for T (mmsb/typed_view.hpp), naming the input and the node.
  template <PageValue T>
  std::span<const T> input_span(std::size_t i, std::uint64_t offset = 0, std::uint64_t count = kWholePage) const {
    return view_as<T>(input(i), ViewSite{"MapContext::input_span", output_page_, i}, offset, count);
  }
  template <PageValue T>
  std::span<T> output_span(std::uint64_t offset = 0, std::uint64_t count = kWholePage) const {
    return view_as<T>(output_, ViewSite{"MapContext::output_span", output_page_}, offset, count);
  }

  MapContext(std::span<const std::span<const std::byte>> inputs, std::span<std::byte> output, PageId output_page)
      : inputs_(inputs), output_(output), output_page_(output_page) {}

 private:
  friend struct IncrementalContext;
  static void check_fits(std::size_t size, std::size_t offset, std::size_t length);
  [[noreturn]] static void throw_no_input(std::size_t index, std::size_t count);
  std::span<const std::span<const std::byte>> inputs_;
  std::span<std::byte> output_;
  PageId output_page_;
};

// What an incremental function sees: for each input, its bytes after this wave and its delta in this wave
// (nullptr when that input did not change), plus the output's current bytes. It fills `out` with the output's
// change: ranges and payload (sizes, epochs and undo are filled in by the propagator). Leaving `out` without
// ranges means "no change" (cutoff). `recompute` is true when the node is stale — its first run, a run after a
// failed wave, recompute() — and the deltas do not tell everything that changed since the output was computed:
// the function must then compute the output from the inputs' bytes.
//
// Typed access: input_span<T>(i) and output_span<T>() view those bytes as T (as MapContext's do), and
// for_each_changed<T>(i, f) calls f(index) for every element of T of input i that its delta touched — none when the
// input did not change, every element when `recompute` is set — in increasing order. A DeltaBuilder
// (mmsb/delta.hpp) then collects the output's changes in any order, so a function written with these two handles
// its first run like any other:
//
//   [](const mmsb::IncrementalContext& c, mmsb::Delta& out) {    // out[k] = 2 * in[k], for the changed k only
//     auto in = c.input_span<float>(0);
//     mmsb::DeltaBuilder b(c.output.size());
//     c.for_each_changed<float>(0, [&](std::size_t k) { b.write_element(k, 2 * in[k]); });
//     b.finish(out);
//   }
struct IncrementalContext {
  std::span<const std::span<const std::byte>> inputs;
  std::span<const Delta* const> input_deltas;
  std::span<const std::byte> output;
  PageId output_page;
  bool recompute = false;

  template <PageValue T>
  std::span<const T> input_span(std::size_t i, std::uint64_t offset = 0, std::uint64_t count = kWholePage) const {
    check_input(i);
    return view_as<T>(inputs[i], ViewSite{"IncrementalContext::input_span", output_page, i}, offset, count);
  }
  template <PageValue T>
  std::span<const T> output_span(std::uint64_t offset = 0, std::uint64_t count = kWholePage) const {
    return view_as<T>(output, ViewSite{"IncrementalContext::output_span", output_page}, offset, count);
  }
  template <PageValue T, class F>
  void for_each_changed(std::size_t i, F&& f) const {
    check_input(i);
    const std::uint64_t elements = inputs[i].size() / sizeof(T);
    if (recompute) {
      for (std::uint64_t k = 0; k < elements; ++k) f(static_cast<std::size_t>(k));
      return;
    }
    const Delta* d = input_deltas[i];
    if (d == nullptr) return;
    std::uint64_t next = 0;  // first element not reported yet: ranges are sorted, elements reported once
    for (const ByteRange& r : d->ranges) {
      const std::uint64_t from = r.offset / sizeof(T), to = (r.end() + sizeof(T) - 1) / sizeof(T);
      const std::uint64_t first = from > next ? from : next, end = to < elements ? to : elements;
      for (std::uint64_t k = first; k < end; ++k) f(static_cast<std::size_t>(k));
      if (end > next) next = end;
    }
  }

 private:
  void check_input(std::size_t i) const {
    if (i >= inputs.size()) MapContext::throw_no_input(i, inputs.size());
  }
};

using MapFunction = std::function<void(MapContext&)>;
using IncrementalFunction = std::function<void(const IncrementalContext&, Delta& out)>;

// Node functions by name, so a restarted program binds the same names to the same nodes. global() is the
// process-wide default; a Propagator (and a DurableRuntime) may be given one of its own, which keeps its names apart
// from every other Propagator's in the process.
// Thread-safety: all members may be called concurrently.
class FunctionRegistry {
 public:
  static FunctionRegistry& global();
  // Throws Error(InvalidArgument) when the name is already registered.
  void register_map(const std::string& name, MapFunction fn);
  // `rebuild`, if given, is the node's rebuild function (see Propagator::derive_incremental).
  void register_incremental(const std::string& name, IncrementalFunction fn, MapFunction rebuild = {});
  // Throws Error(NotFound) naming the function when it is not registered.
  MapFunction map(const std::string& name) const;
  IncrementalFunction incremental(const std::string& name) const;
  // The rebuild function registered with an incremental function (empty when none was).
  MapFunction incremental_rebuild(const std::string& name) const;
  bool contains(const std::string& name) const;

  FunctionRegistry();
  ~FunctionRegistry();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// The exception a wave rethrows when a node fails (code NodeFailed). nested() is the node's original exception.
// Thrown by Transaction::commit() (IMMEDIATE mode), the commit itself took effect: committed_lsn() is its LSN and
// it must not be retried; thrown by propagate() or recompute(), committed_lsn() is 0 (no commit was involved).
class NodeError : public Error {
 public:
  NodeError(PageId page, const std::string& what, std::exception_ptr nested, std::uint64_t committed_lsn = 0)
      : Error(ErrorCode::NodeFailed,
              (committed_lsn != 0 ? "the commit with LSN " + std::to_string(committed_lsn) +
                                        " took effect (do not retry it), but then the "
                                  : std::string()) +
                  "node computing page " + page.to_string() + " failed: " + what +
                  "; the wave was cancelled and its downstream pages are stale until the next wave",
              committed_lsn),
        page_(page),
        nested_(std::move(nested)) {}
  PageId page() const noexcept { return page_; }
  std::exception_ptr nested() const noexcept { return nested_; }

 private:
  PageId page_;
  std::exception_ptr nested_;
};

using SubscriptionId = std::uint64_t;
// Called with each change of a subscribed page: its delta and the epoch the page reached.
using PageCallback = std::function<void(const Delta& delta, std::uint64_t epoch)>;
using EventCallback = std::function<void(const Event& event)>;

// A latency distribution: counts in log-linear buckets (four per power of two), so percentiles are within ~19%.
struct LatencySummary {
  std::uint64_t count = 0;
  std::uint64_t p50_ns = 0, p90_ns = 0, p99_ns = 0, max_ns = 0;
  double mean_ns = 0;
};

struct PropagationStats {
  std::uint64_t waves = 0;
  std::uint64_t nodes_recomputed = 0;  // ran and changed their output
  std::uint64_t nodes_skipped = 0;     // reached by a wave, but no input changed: not run
  std::uint64_t nodes_cut_off = 0;     // ran, output unchanged: propagation stopped there (not in recomputed)
  std::uint64_t nodes_failed = 0;
  std::uint64_t inline_waves = 0;     // waves run on the calling thread
  std::uint64_t plan_builds = 0;      // execution plans built (once per graph version that ran a wave)
  std::uint64_t commits_queued = 0;   // DEFERRED/BATCH
  std::uint64_t deltas_composed = 0;  // BATCH: deltas folded into an earlier pending delta of the same page
  std::uint64_t bytes_changed = 0;    // payload bytes of all derived-page deltas published
  LatencySummary wave_latency;        // every wave, start to end
  LatencySummary hop_latency;         // node runs (sampled: one in 64 per task, to keep clocks off the hot path)
  LatencySummary commit_latency;      // commit published → its wave finished (sampled: one commit in 16)
};

class Propagator;

// Declares many nodes at once, for programs that build large graphs in one go. Nodes are collected without any
// lock; commit() adds them under one engine lock as one graph version, all or nothing: on the first node refused
// (the same checks and errors as derive_*), the nodes of this commit that were already added are removed again and
// the error is rethrown. Cycle checks stay incremental: an edge that agrees with the graph's topological order
// (every edge of a node whose output is new) costs O(1). A function added with add_map_function() or
// add_incremental_function() is stored once for all the nodes that name it, instead of once per node.
//
//   mmsb::GraphBuilder build(prop);
//   auto sum = build.add_map_function([](mmsb::MapContext& c) { /* ... */ });
//   for (std::size_t i = 0; i < outputs.size(); ++i) build.derive_map(outputs[i], {inputs[i]}, sum);
//   build.commit();
//
// Thread-safety: a GraphBuilder is used by one thread at a time; its commit() may run concurrently with any other
// Propagator call. The Propagator must outlive it.
class GraphBuilder {
 public:
  // A function shared by many nodes of this builder.
  struct FunctionId {
    std::uint32_t index = ~std::uint32_t{0};
  };
  // A node's input pages: a braced list, a vector or any span (copied by the call).
  class Inputs {
   public:
    Inputs(std::initializer_list<PageId> pages) noexcept : pages_(pages.begin(), pages.size()) {}
    Inputs(std::span<const PageId> pages) noexcept : pages_(pages) {}
    Inputs(const std::vector<PageId>& pages) noexcept : pages_(pages) {}
    std::span<const PageId> pages() const noexcept { return pages_; }

   private:
    std::span<const PageId> pages_;
  };

  explicit GraphBuilder(Propagator& propagator);
  ~GraphBuilder();
  GraphBuilder(GraphBuilder&&) noexcept;
  GraphBuilder& operator=(GraphBuilder&&) noexcept;

  // Throws Error(InvalidArgument) for an empty function.
  FunctionId add_map_function(MapFunction fn);
  FunctionId add_incremental_function(IncrementalFunction fn);

  // As Propagator::derive_*; checked at commit(). A FunctionId must come from this builder and match the kind.
  GraphBuilder& derive_map(PageId output, Inputs inputs, FunctionId fn, NodeOptions options = {});
  GraphBuilder& derive_map(PageId output, Inputs inputs, MapFunction fn, NodeOptions options = {});
  GraphBuilder& derive_map(PageId output, Inputs inputs, const std::string& registered_name, NodeOptions options = {});
  GraphBuilder& derive_passthrough(PageId output, PageId input, ByteRemap remap = {}, NodeOptions options = {});
  GraphBuilder& derive_incremental(PageId output, Inputs inputs, FunctionId fn, NodeOptions options = {});
  GraphBuilder& derive_incremental(PageId output, Inputs inputs, IncrementalFunction fn, NodeOptions options = {});
  GraphBuilder& derive_incremental(PageId output, Inputs inputs, const std::string& registered_name,
                                   NodeOptions options = {});
  // Room for `nodes` more nodes with `inputs` inputs in all (optional; saves reallocations).
  void reserve(std::size_t nodes, std::size_t inputs);
  // Nodes declared since the last commit().
  std::size_t size() const noexcept;

  // Adds every node declared since the last commit(), in declaration order (a node may read the output of one
  // declared before it). Throws what derive_* would throw for the first node refused, with nothing added. The
  // builder is empty afterwards either way; its functions stay usable.
  void commit();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

class Propagator {
 public:
  // Attaches to `runtime`, which must outlive the Propagator. At most one Propagator per Runtime. Destroy it only
  // while no commit is running on the runtime; commits still queued (DEFERRED/BATCH) are then not propagated.
  // derive_*() by name look functions up in `registry` (null: FunctionRegistry::global()).
  explicit Propagator(Runtime& runtime, PropagatorOptions options = {},
                      std::shared_ptr<FunctionRegistry> registry = nullptr);
  ~Propagator();
  Propagator(const Propagator&) = delete;
  Propagator& operator=(const Propagator&) = delete;

  // Makes `output` a derived page. Each input gets a DATA edge to it. Throws Error(InvalidArgument) if `output`
  // already has a node, if it is among its inputs, or if an edge would close a cycle (the message names the
  // cycle); Error(NotFound) for pages that do not exist.
  // A new node is computed once by the next wave, whatever its inputs do: propagate() runs that wave now in every
  // mode (so `derive_map(...); propagate();` leaves the output computed from its inputs' current bytes), and so
  // does the wave of the next commit that reaches the graph. Until then is_stale(output) is true. (Declaring
  // nodes runs no wave, so building a graph of a million nodes costs no more than declaring them.) With
  // NodeOptions::output_is_current (how a DurableRuntime restores a checkpoint's graph) the node starts computed.
  void derive_map(PageId output, std::vector<PageId> inputs, MapFunction fn, NodeOptions options = {});
  void derive_map(PageId output, std::vector<PageId> inputs, const std::string& registered_name,
                  NodeOptions options = {});
  void derive_passthrough(PageId output, PageId input, ByteRemap remap = {}, NodeOptions options = {});
  void derive_incremental(PageId output, std::vector<PageId> inputs, IncrementalFunction fn, NodeOptions options = {});
  // With a rebuild function: what the node's output is, computed from its inputs' current bytes alone (as a map
  // would), which must be the bytes an uninterrupted run of `fn` leaves. It runs instead of `fn` whenever the node
  // is computed from scratch: recompute(), recompute_all(), a stale node after a failed wave, and after a restart
  // (mmsb/durable.hpp, "Exact restarts").
  void derive_incremental(PageId output, std::vector<PageId> inputs, IncrementalFunction fn, MapFunction rebuild,
                          NodeOptions options = {});
  void derive_incremental(PageId output, std::vector<PageId> inputs, const std::string& registered_name,
                          NodeOptions options = {});
  // Removes the node computing `output` (the page stays, with its last bytes) and its incoming DATA edges.
  void remove_node(PageId output);

  // Ordering-only edges: CONTROL (run `to` after `from` when both are in a wave) and GPU_SYNC (device ordering).
  // They never carry data; they are checked for cycles like data edges.
  void add_dependency(PageId from, PageId to, EdgeKind kind);
  bool remove_dependency(PageId from, PageId to, EdgeKind kind);

  // Runs the queued commits (DEFERRED: one wave each, in order; BATCH: one coalesced wave) and returns when they
  // are done; stale nodes (new ones, failed ones, recompute()'d ones) are computed by the first of these waves, or
  // by a wave of their own when nothing was queued (always so in IMMEDIATE mode). Rethrows a NodeError of a failed
  // wave.
  void propagate();
  // Marks a derived page stale and runs a wave that recomputes it (and what depends on it).
  void recompute(PageId output);
  // Marks every derived page stale and runs one wave that recomputes them all (after a recovery).
  void recompute_all();
  // Blocks until `page` has reached `epoch` (or later). Throws Error(NotFound) when the page is deleted.
  void wait_for(PageId page, std::uint64_t epoch);

  // Observers. Callbacks run on the thread that ran the wave (or committed), after the wave, outside every internal
  // lock; they may read pages and commit (a commit from a callback schedules a new wave as usual). A callback that
  // throws is reported once as an Error event to the other subscribers and otherwise ignored. Subscribing to a page
  // makes its changes reach the engine even if no node reads it. IMMEDIATE delivers at each commit; DEFERRED and
  // BATCH when their waves run.
  SubscriptionId subscribe(PageId page, PageCallback callback);
  SubscriptionId subscribe(EventMask kinds, EventCallback callback);
  // Removes a subscription; returns false if it did not exist. A callback already running finishes.
  bool unsubscribe(SubscriptionId id);
  // Delivers an event raised outside the engine (DurableRuntime's Checkpoint, or an application's own) to the
  // subscribers of its kind, on the calling thread, as the engine delivers its own.
  void notify(const Event& event);

  bool is_stale(PageId page) const;
  // Whether a node computes `page` (declared here, or restored from a checkpoint by DurableRuntime): a program
  // that opens recovered state declares only the nodes that are missing, such as those a newer version adds.
  bool has_node(PageId page) const;
  std::size_t node_count() const;
  // The graph's nodes (by output page) and ordering edges, as declared: what a checkpoint stores.
  std::vector<NodeDescription> nodes() const;
  std::vector<OrderingEdge> ordering_edges() const;
  PropagationStats stats() const;
  // stats() as a JSON object, and in the Prometheus text exposition format (metrics prefixed mmsb_propagation_).
  std::string stats_json() const;
  std::string stats_prometheus() const;
  // Graphviz dot of the dependency graph: node kinds, edge kinds, stale pages highlighted.
  std::string to_dot() const;

  const PropagatorOptions& options() const noexcept;

  struct Impl;
  friend class GraphBuilder;

 private:
  friend struct detail::PropagatorAccess;
  std::unique_ptr<Impl> impl_;
};

}  // namespace mmsb
