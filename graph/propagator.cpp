// The public Propagator: each member checks its arguments, takes the engine lock where the structure is read or
// changed, and delegates to Propagator::Impl (graph/engine.hpp describes the engine and where each part lives).
#include <algorithm>
#include <chrono>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "graph/engine.hpp"
#include "graph/propagator_access.hpp"

namespace mmsb {

using detail::DependencyKind;
using detail::Node;
using detail::NodeIndex;
using detail::Slot;

namespace {
std::uint64_t next_block_serial() noexcept {
  static std::atomic<std::uint64_t> serial{0};
  return serial.fetch_add(1, std::memory_order_relaxed) + 1;  // 0 marks a thread with no cached block
}
}  // namespace

Propagator::Impl::Impl(Runtime& rt, PropagatorOptions opts)
    : runtime(rt),
      runtime_impl(detail::RuntimeAccess::of(rt)),
      options(opts),
      arena(opts.threads == 0 ? tbb::task_arena::automatic : static_cast<int>(opts.threads)),
      block_serial(next_block_serial()) {
  spare_commits.reserve(kSpareCommits);  // recycle() must not allocate
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

Propagator::Impl::~Impl() {
  {
    std::lock_guard lock(queue_mutex);
    stopping = true;
  }
  queue_nonempty.notify_all();
  queue_space.notify_all();
  if (worker.joinable()) worker.join();
  runtime_impl.listener.store(nullptr, std::memory_order_release);
  for (std::uint32_t v = 0; v < slots.size(); ++v) {
    if (slots[v].record) slots[v].record->listener_tag.store(nullptr, std::memory_order_release);
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Propagator

Propagator::Propagator(Runtime& runtime, PropagatorOptions options, std::shared_ptr<FunctionRegistry> registry)
    : impl_(std::make_unique<Impl>(runtime, options)) {
  impl_->own_registry = std::move(registry);
}
Propagator::~Propagator() = default;

const PropagatorOptions& Propagator::options() const noexcept { return impl_->options; }

namespace {
detail::NodeSpec make_spec(PageId output, std::span<const PageId> inputs, NodeKind kind, const NodeOptions& options) {
  detail::NodeSpec spec;
  spec.output = output;
  spec.inputs = inputs;
  spec.kind = kind;
  spec.always_changes = options.always_changes;
  spec.output_is_current = options.output_is_current;
  spec.name = &options.name;
  return spec;
}
}  // namespace

void Propagator::derive_map(PageId output, std::vector<PageId> inputs, MapFunction fn, NodeOptions options) {
  if (!fn) throw Error(ErrorCode::InvalidArgument, "derive_map: the map function is empty");
  detail::NodeSpec spec = make_spec(output, inputs, NodeKind::Map, options);
  spec.map = &fn;
  std::lock_guard lock(impl_->engine_mutex);
  impl_->add_node(spec);
}

void Propagator::derive_map(PageId output, std::vector<PageId> inputs, const std::string& registered_name,
                            NodeOptions options) {
  if (options.name.empty()) options.name = registered_name;
  MapFunction fn = impl_->registry().map(registered_name);
  detail::NodeSpec spec = make_spec(output, inputs, NodeKind::Map, options);
  spec.map = &fn;
  spec.function = &registered_name;
  std::lock_guard lock(impl_->engine_mutex);
  impl_->add_node(spec);
}

void Propagator::derive_passthrough(PageId output, PageId input, ByteRemap remap, NodeOptions options) {
  detail::NodeSpec spec = make_spec(output, std::span<const PageId>(&input, 1), NodeKind::Passthrough, options);
  spec.remap = remap;
  std::lock_guard lock(impl_->engine_mutex);
  impl_->add_node(spec);
}

void Propagator::derive_incremental(PageId output, std::vector<PageId> inputs, IncrementalFunction fn,
                                    NodeOptions options) {
  derive_incremental(output, std::move(inputs), std::move(fn), MapFunction{}, std::move(options));
}

void Propagator::derive_incremental(PageId output, std::vector<PageId> inputs, IncrementalFunction fn,
                                    MapFunction rebuild, NodeOptions options) {
  if (!fn) throw Error(ErrorCode::InvalidArgument, "derive_incremental: the function is empty");
  detail::NodeSpec spec = make_spec(output, inputs, NodeKind::Incremental, options);
  spec.incremental = &fn;
  spec.rebuild = &rebuild;
  std::lock_guard lock(impl_->engine_mutex);
  impl_->add_node(spec);
}

void Propagator::derive_incremental(PageId output, std::vector<PageId> inputs, const std::string& registered_name,
                                    NodeOptions options) {
  if (options.name.empty()) options.name = registered_name;
  IncrementalFunction fn = impl_->registry().incremental(registered_name);
  MapFunction rebuild = impl_->registry().incremental_rebuild(registered_name);
  detail::NodeSpec spec = make_spec(output, inputs, NodeKind::Incremental, options);
  spec.incremental = &fn;
  spec.rebuild = &rebuild;
  spec.function = &registered_name;
  std::lock_guard lock(impl_->engine_mutex);
  impl_->add_node(spec);
}

void Propagator::remove_node(PageId output) {
  std::lock_guard lock(impl_->engine_mutex);
  const NodeIndex node = impl_->node_of(output);
  if (node == detail::kNoNode) {
    throw Error(ErrorCode::NotFound, "page " + output.to_string() + " is not derived by any node");
  }
  impl_->remove_node(node);
}

namespace {
DependencyKind to_dependency_kind(EdgeKind kind) {
  switch (kind) {
    case EdgeKind::Data:
      break;
    case EdgeKind::Control:
      return DependencyKind::Control;
    case EdgeKind::GpuSync:
      return DependencyKind::GpuSync;
  }
  return DependencyKind::Data;
}
}  // namespace

void Propagator::add_dependency(PageId from, PageId to, EdgeKind kind) {
  if (kind == EdgeKind::Data) {
    throw Error(ErrorCode::InvalidArgument,
                "data dependencies come from derive_*(); add_dependency() takes "
                "CONTROL or GPU_SYNC");
  }
  std::lock_guard lock(impl_->engine_mutex);
  impl_->live_record(from);
  impl_->live_record(to);
  const detail::VertexId x = impl_->slot_for(from, detail::DependencyGraph::Placement::First)->vertex;
  const detail::VertexId y = impl_->slot_for(to, detail::DependencyGraph::Placement::Last)->vertex;
  if (impl_->graph.add_edge(x, y, to_dependency_kind(kind))) ++impl_->structure_version;
}

bool Propagator::remove_dependency(PageId from, PageId to, EdgeKind kind) {
  if (kind == EdgeKind::Data) return false;  // data edges belong to nodes: remove_node() removes them
  std::lock_guard lock(impl_->engine_mutex);
  const bool removed = impl_->graph.remove_edge(from, to, to_dependency_kind(kind));
  if (removed) ++impl_->structure_version;
  return removed;
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
    const NodeIndex node = impl_->node_of(output);
    if (node == detail::kNoNode) {
      throw Error(ErrorCode::NotFound, "page " + output.to_string() + " is not derived by any node");
    }
    if (!impl_->node(node).stale.exchange(true, std::memory_order_relaxed)) impl_->stale_nodes.push_back(node);
  }
  impl_->drain();
}

void Propagator::recompute_all() {
  {
    std::lock_guard lock(impl_->engine_mutex);
    impl_->stale_nodes.clear();
    for (NodeIndex n = 0; n < impl_->node_at.size(); ++n) {
      if (!(impl_->node(n).flags & Node::kLive)) continue;
      impl_->node(n).stale.store(true, std::memory_order_relaxed);
      impl_->stale_nodes.push_back(n);
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

bool Propagator::is_stale(PageId page) const {
  std::lock_guard lock(impl_->engine_mutex);
  const NodeIndex node = impl_->node_of(page);
  return node != detail::kNoNode && impl_->node(node).stale.load(std::memory_order_relaxed);
}

bool Propagator::has_node(PageId page) const {
  std::lock_guard lock(impl_->engine_mutex);
  return impl_->node_of(page) != detail::kNoNode;
}

std::size_t Propagator::node_count() const {
  std::lock_guard lock(impl_->engine_mutex);
  return impl_->live_nodes;
}

std::vector<NodeDescription> Propagator::nodes() const {
  std::lock_guard lock(impl_->engine_mutex);
  Impl& m = *impl_;
  std::vector<NodeDescription> out;
  out.reserve(m.live_nodes);
  for (NodeIndex n = 0; n < m.node_at.size(); ++n) {
    const Node& node = m.node(n);
    if (!(node.flags & Node::kLive)) continue;
    NodeDescription d;
    d.output = m.slot(node.out).record->id;
    d.kind = node.kind;
    for (detail::VertexId in : m.inputs_of(node)) d.inputs.push_back(m.slot(in).record->id);
    if (auto it = m.labels.find(n); it != m.labels.end()) {
      d.function = it->second.function;
      d.options.name = it->second.name;
    }
    d.options.always_changes = (node.flags & Node::kAlwaysChanges) != 0;
    d.has_rebuild = (node.flags & Node::kHasRebuild) != 0;
    if (node.kind == NodeKind::Passthrough) d.remap = m.remaps.entries[node.function];
    out.push_back(std::move(d));
  }
  std::sort(out.begin(), out.end(), [](const auto& a, const auto& b) { return a.output < b.output; });
  return out;
}

std::vector<OrderingEdge> Propagator::ordering_edges() const {
  std::lock_guard lock(impl_->engine_mutex);
  std::vector<OrderingEdge> out;
  const detail::DependencyGraph& g = impl_->graph;
  for (detail::VertexId v : g.topological_vertices()) {
    g.for_each_input(v, [&](detail::VertexId from, DependencyKind kind) {
      if (kind == DependencyKind::Control) out.push_back({g.page_of(from), g.page_of(v), EdgeKind::Control});
      if (kind == DependencyKind::GpuSync) out.push_back({g.page_of(from), g.page_of(v), EdgeKind::GpuSync});
    });
  }
  return out;
}

std::string Propagator::to_dot() const {
  std::lock_guard lock(impl_->engine_mutex);
  Impl& m = *impl_;
  std::vector<std::pair<PageId, std::string>> labels;
  for (NodeIndex n = 0; n < m.node_at.size(); ++n) {
    const Node& node = m.node(n);
    if (!(node.flags & Node::kLive)) continue;
    std::string label = detail::node_kind_name(node.kind);
    if (auto it = m.labels.find(n); it != m.labels.end() && !it->second.name.empty()) label += " " + it->second.name;
    if (node.stale.load(std::memory_order_relaxed)) label += " (stale)";
    labels.emplace_back(m.slot(node.out).record->id, label);
  }
  std::sort(labels.begin(), labels.end());
  return m.graph.to_dot(labels);
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
