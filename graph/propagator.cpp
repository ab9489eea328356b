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

namespace mmsb {

using detail::DependencyKind;
using detail::Node;
using detail::Slot;

Propagator::Impl::Impl(Runtime& rt, PropagatorOptions opts)
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

Propagator::Impl::~Impl() {
  {
    std::lock_guard lock(queue_mutex);
    stopping = true;
  }
  queue_nonempty.notify_all();
  queue_space.notify_all();
  if (worker.joinable()) worker.join();
  runtime_impl.listener.store(nullptr, std::memory_order_release);
  for (auto& [id, slot] : slots) slot->record->listener_tag.store(nullptr, std::memory_order_release);
  flow.reset();
}

// ---------------------------------------------------------------------------------------------------------------
// Propagator

Propagator::Propagator(Runtime& runtime, PropagatorOptions options) : impl_(std::make_unique<Impl>(runtime, options)) {}
Propagator::~Propagator() = default;

const PropagatorOptions& Propagator::options() const noexcept { return impl_->options; }

namespace {
// A new node is stale, so the next wave computes it once whatever its inputs do (graph.hpp, derive_*).
void mark_stale(Propagator::Impl& impl, PageId output) {
  std::lock_guard lock(impl.engine_mutex);
  auto it = impl.nodes.find(output);
  if (it == impl.nodes.end()) {
    throw Error(ErrorCode::NotFound, "page " + output.to_string() + " is not derived by any node");
  }
  if (!it->second->stale.exchange(true, std::memory_order_relaxed)) impl.stale_nodes.push_back(it->second.get());
}

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
  mark_stale(*impl_, output);
}

void Propagator::derive_map(PageId output, std::vector<PageId> inputs, const std::string& registered_name,
                            NodeOptions options) {
  if (options.name.empty()) options.name = registered_name;
  auto node = make_node(output, NodeKind::Map, std::move(options));
  node->map = FunctionRegistry::global().map(registered_name);
  node->function = registered_name;
  impl_->add_node(std::move(node), inputs);
  mark_stale(*impl_, output);
}

void Propagator::derive_passthrough(PageId output, PageId input, ByteRemap remap, NodeOptions options) {
  auto node = make_node(output, NodeKind::Passthrough, std::move(options));
  node->remap = remap;
  impl_->add_node(std::move(node), {input});
  mark_stale(*impl_, output);
}

void Propagator::derive_incremental(PageId output, std::vector<PageId> inputs, IncrementalFunction fn,
                                    NodeOptions options) {
  if (!fn) throw Error(ErrorCode::InvalidArgument, "derive_incremental: the function is empty");
  auto node = make_node(output, NodeKind::Incremental, std::move(options));
  node->incremental = std::move(fn);
  impl_->add_node(std::move(node), inputs);
  mark_stale(*impl_, output);
}

void Propagator::derive_incremental(PageId output, std::vector<PageId> inputs, const std::string& registered_name,
                                    NodeOptions options) {
  if (options.name.empty()) options.name = registered_name;
  auto node = make_node(output, NodeKind::Incremental, std::move(options));
  node->incremental = FunctionRegistry::global().incremental(registered_name);
  node->function = registered_name;
  impl_->add_node(std::move(node), inputs);
  mark_stale(*impl_, output);
}

void Propagator::remove_node(PageId output) { impl_->remove_node(output); }

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
  mark_stale(*impl_, output);
  impl_->drain();
}

void Propagator::recompute_all() {
  {
    std::lock_guard lock(impl_->engine_mutex);
    for (auto& [id, node] : impl_->nodes) {
      if (!node->stale.exchange(true, std::memory_order_relaxed)) impl_->stale_nodes.push_back(node.get());
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
  auto it = impl_->nodes.find(page);
  return it != impl_->nodes.end() && it->second->stale.load(std::memory_order_relaxed);
}

bool Propagator::has_node(PageId page) const {
  std::lock_guard lock(impl_->engine_mutex);
  return impl_->nodes.count(page) != 0;
}

std::size_t Propagator::node_count() const {
  std::lock_guard lock(impl_->engine_mutex);
  return impl_->nodes.size();
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
    std::string label = detail::node_kind_name(node->kind);
    if (!node->options.name.empty()) label += " " + node->options.name;
    if (node->stale.load(std::memory_order_relaxed)) label += " (stale)";
    labels.emplace_back(id, label);
  }
  std::sort(labels.begin(), labels.end());
  return impl_->graph.to_dot(labels);
}

}  // namespace mmsb
