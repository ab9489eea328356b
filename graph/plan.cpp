// Graph version and plan: nodes, slots and function tables, and the execution plan the engine derives from the
// DependencyGraph once per graph version (see graph/engine.hpp).
//
// The plan lists the nodes level by level: a node's level is one more than the deepest level among the nodes it
// depends on by any edge kind (nodes that depend on no node are level 0), computed by Kahn's algorithm in
// O(nodes + edges). Within a level nodes keep their index order (creation order), so plans are deterministic.
// Every node of a level can run at the same time; a wave runs the levels in order. The data successors of each
// position form a Boost.Graph compressed_sparse_row_graph, the walk that finds a wave's nodes.
#include <boost/graph/compressed_sparse_row_graph.hpp>

#include <algorithm>
#include <memory>
#include <vector>

#include "graph/engine.hpp"
#include "graph/plan.hpp"

namespace mmsb {

using detail::DependencyGraph;
using detail::DependencyKind;
using detail::kNoNode;
using detail::kNoVertex;
using detail::Node;
using detail::NodeIndex;
using detail::Slot;
using detail::VertexId;

namespace detail {

void PlanDeleter::operator()(Plan* p) const noexcept { delete p; }

std::size_t Plan::memory_bytes() const noexcept {
  return (order.capacity() + level_begin.capacity() + reached.capacity()) * sizeof(std::uint32_t) +
         (boost::num_vertices(successors) + 1 + boost::num_edges(successors)) * sizeof(std::uint32_t);
}

}  // namespace detail

PageRecord* Propagator::Impl::live_record(PageId id) {
  PageRecord* rec = runtime_impl.find(id);
  if (!rec || rec->deleted.load(std::memory_order_relaxed)) detail::throw_not_found(id);
  return rec;
}

Slot* Propagator::Impl::slot_for(PageId id, DependencyGraph::Placement where) {
  PageRecord* record = live_record(id);
  if (auto* tagged = static_cast<Slot*>(record->listener_tag.load(std::memory_order_acquire))) return tagged;
  const VertexId v = graph.vertex(id, where);
  slots.grow_to(v + 1);
  Slot& s = slots[v];
  s.record = record;
  s.vertex = v;
  s.node = kNoNode;
  s.batch = nullptr;
  s.delta.store(nullptr, std::memory_order_relaxed);
  s.changed_wave.store(0, std::memory_order_relaxed);
  s.subscribers.store(0, std::memory_order_relaxed);
  record->listener_tag.store(&s, std::memory_order_release);  // commits reach the engine from now on
  return &s;
}

NodeIndex Propagator::Impl::node_of(PageId page) const noexcept {
  const Slot* s = slot_of(page);
  return s ? s->node : kNoNode;
}

NodeIndex Propagator::Impl::add_node(const detail::NodeSpec& spec) {
  const PageId out = spec.output;
  if (spec.inputs.empty()) {
    throw Error(ErrorCode::InvalidArgument, "derived page " + out.to_string() + " needs at least one input");
  }
  PageRecord* out_record = live_record(out);
  if (auto* s = static_cast<Slot*>(out_record->listener_tag.load(std::memory_order_relaxed)); s && s->node != kNoNode) {
    throw Error(ErrorCode::InvalidArgument,
                "page " + out.to_string() + " is already derived by a node; remove_node() it first");
  }
  for (PageId in : spec.inputs) {
    if (in == out) {
      throw Error(ErrorCode::InvalidArgument,
                  "page " + out.to_string() + " cannot be an input of the node that computes it");
    }
  }
  if (out_record->external) {
    throw Error(ErrorCode::InvalidArgument,
                "page " + out.to_string() + " is an external (read-only) page and cannot be a node's output");
  }
  for (PageId in : spec.inputs) live_record(in);

  // Slots (and vertices) first: a new input goes first in the order and a new output last, so the edges of a node
  // whose output is new agree with the order and cost no search.
  const std::size_t pool_begin = input_pool.size();
  for (PageId in : spec.inputs) input_pool.push_back(slot_for(in, DependencyGraph::Placement::First)->vertex);
  const VertexId out_vertex = slot_for(out, DependencyGraph::Placement::Last)->vertex;
  const std::span<const VertexId> ins(input_pool.data() + pool_begin, spec.inputs.size());
  // The edges; undo the ones added so far if one closes a cycle.
  std::size_t added = 0;
  try {
    for (; added < ins.size(); ++added) graph.add_edge(ins[added], out_vertex, DependencyKind::Data);
  } catch (...) {
    for (std::size_t i = 0; i < added; ++i) {
      // A repeated input added its edge only once: remove each edge once.
      if (std::find(ins.begin(), ins.begin() + static_cast<std::ptrdiff_t>(i), ins[i]) == ins.begin() + i)
        graph.remove_edge(ins[i], out_vertex, DependencyKind::Data);
    }
    input_pool.resize(pool_begin);
    throw;
  }

  NodeIndex index;
  if (!free_nodes.empty()) {
    index = free_nodes.back();
    free_nodes.pop_back();
  } else {
    index = node_at.size();
    node_at.grow_to(index + 1);
  }
  Node& n = node_at[index];
  n.out = out_vertex;
  n.inputs = static_cast<std::uint32_t>(pool_begin);
  n.input_count = static_cast<std::uint32_t>(ins.size());
  n.kind = spec.kind;
  n.position = 0;
  n.completed_wave.store(0, std::memory_order_relaxed);
  n.stale.store(false, std::memory_order_relaxed);
  n.flags = Node::kLive;
  if (spec.always_changes) n.flags |= Node::kAlwaysChanges;
  bool increasing = true;
  for (std::size_t i = 1; i < spec.inputs.size(); ++i) increasing = increasing && spec.inputs[i - 1] < spec.inputs[i];
  if (increasing) n.flags |= Node::kLockOrder;
  switch (spec.kind) {
    case NodeKind::Map:
      n.function = spec.map ? maps.add(std::move(*spec.map), 1) : spec.shared_function;
      break;
    case NodeKind::Incremental:
      n.function = spec.incremental ? incrementals.add(std::move(*spec.incremental), 1) : spec.shared_function;
      break;
    case NodeKind::Passthrough:
      n.function = remaps.add(spec.remap, 1);
      break;
  }
  if ((spec.name && !spec.name->empty()) || (spec.function && !spec.function->empty())) {
    labels[index] = detail::NodeLabel{spec.name ? *spec.name : std::string(), spec.function ? *spec.function : ""};
  }
  slots[out_vertex].node = index;
  ++live_nodes;
  ++structure_version;
  return index;
}

void Propagator::Impl::remove_node(NodeIndex index) {
  Node& n = node_at[index];
  for (VertexId in : inputs_of(n)) graph.remove_edge(in, n.out, DependencyKind::Data);
  switch (n.kind) {
    case NodeKind::Map:
      maps.release(n.function);
      break;
    case NodeKind::Incremental:
      incrementals.release(n.function);
      break;
    case NodeKind::Passthrough:
      remaps.release(n.function);
      break;
  }
  stale_nodes.erase(std::remove(stale_nodes.begin(), stale_nodes.end(), index), stale_nodes.end());
  labels.erase(index);
  slots[n.out].node = kNoNode;
  input_garbage += n.input_count;
  n.flags = 0;
  n.out = kNoVertex;
  n.delta.reset();
  free_nodes.push_back(index);
  --live_nodes;
  ++structure_version;
  if (input_garbage > 1024 && input_garbage > input_pool.size() / 2) compact_inputs();
}

void Propagator::Impl::compact_inputs() {
  std::vector<VertexId> packed;
  packed.reserve(input_pool.size() - input_garbage);
  for (NodeIndex i = 0; i < node_at.size(); ++i) {
    Node& n = node_at[i];
    if (!(n.flags & Node::kLive)) continue;
    const std::uint32_t begin = static_cast<std::uint32_t>(packed.size());
    packed.insert(packed.end(), input_pool.begin() + n.inputs, input_pool.begin() + n.inputs + n.input_count);
    n.inputs = begin;
  }
  input_pool = std::move(packed);
  input_garbage = 0;
}

void Propagator::Impl::ensure_plan() {
  if (plan && plan->version == structure_version) return;
  counters.plan_builds.fetch_add(1, std::memory_order_relaxed);
  auto next = std::unique_ptr<detail::Plan, detail::PlanDeleter>(new detail::Plan());
  detail::Plan& p = *next;
  const NodeIndex limit = node_at.size();

  // Calls fn(successor node) for each node that depends on node u by any edge kind (ordering) or by data only.
  auto for_each_successor = [&](const Node& u, bool data_only, auto&& fn) {
    graph.for_each_dependent(u.out, [&](VertexId w, DependencyKind kind) {
      if (data_only && kind != DependencyKind::Data) return;
      const NodeIndex v = slots[w].node;
      if (v != kNoNode) fn(v);
    });
  };

  // Levels by Kahn's algorithm; the queue doubles as the processing order.
  std::vector<std::uint32_t> pending(limit, 0), level(limit, 0);
  std::vector<NodeIndex> kahn;
  kahn.reserve(live_nodes);
  for (NodeIndex u = 0; u < limit; ++u) {
    Node& n = node_at[u];
    if (!(n.flags & Node::kLive)) continue;
    n.flags = static_cast<std::uint8_t>(n.flags & ~Node::kKeepDelta);
    for_each_successor(n, false, [&](NodeIndex v) { ++pending[v]; });
  }
  for (NodeIndex u = 0; u < limit; ++u)
    if ((node_at[u].flags & Node::kLive) && pending[u] == 0) kahn.push_back(u);
  std::uint32_t levels = 0;
  for (std::size_t k = 0; k < kahn.size(); ++k) {
    const NodeIndex u = kahn[k];
    levels = std::max(levels, level[u] + 1);
    for_each_successor(node_at[u], false, [&](NodeIndex v) {
      level[v] = std::max(level[v], level[u] + 1);
      if (--pending[v] == 0) kahn.push_back(v);
    });
  }
  if (kahn.size() != live_nodes) {  // the graph refuses cycles, so this is a broken invariant
    throw Error(ErrorCode::Internal, "the dependency graph has a cycle the incremental check missed; please report");
  }

  // Positions: level-major, index order within a level (a counting sort).
  p.level_begin.assign(levels + 1, 0);
  for (NodeIndex u : kahn) ++p.level_begin[level[u] + 1];
  for (std::uint32_t l = 0; l < levels; ++l) p.level_begin[l + 1] += p.level_begin[l];
  p.order.assign(live_nodes, kNoNode);
  {
    std::vector<std::uint32_t> fill(p.level_begin.begin(), p.level_begin.end() - 1);
    for (NodeIndex u = 0; u < limit; ++u) {
      if (!(node_at[u].flags & Node::kLive)) continue;
      const std::uint32_t position = fill[level[u]]++;
      p.order[position] = u;
      node_at[u].position = position;
    }
  }
  pending = {};
  level = {};
  kahn = {};

  // Data successors by position (already sorted by source), and which nodes' deltas a reader consumes.
  std::vector<std::pair<std::uint32_t, std::uint32_t>> edges;
  for (std::uint32_t position = 0; position < p.order.size(); ++position) {
    const Node& n = node_at[p.order[position]];
    for_each_successor(n, true, [&](NodeIndex v) { edges.emplace_back(position, node_at[v].position); });
    if (n.kind != NodeKind::Map) {
      for (VertexId in : inputs_of(n)) {
        const NodeIndex producer = slots[in].node;
        if (producer != kNoNode) node_at[producer].flags |= Node::kKeepDelta;
      }
    }
  }
  p.successors = detail::Plan::Successors(boost::edges_are_sorted, edges.begin(), edges.end(),
                                          static_cast<std::uint32_t>(p.order.size()));
  p.reached.assign(p.order.size(), 0);
  p.version = structure_version;
  plan = std::move(next);
}

std::size_t Propagator::Impl::memory_bytes() const {
  std::size_t labels_bytes = labels.size() * (sizeof(detail::NodeLabel) + 32);
  return graph.memory_bytes() + slots.memory_bytes() + node_at.memory_bytes() +
         input_pool.capacity() * sizeof(VertexId) + maps.entries.capacity() * sizeof(MapFunction) +
         incrementals.entries.capacity() * sizeof(IncrementalFunction) + remaps.entries.capacity() * sizeof(ByteRemap) +
         labels_bytes + (plan ? plan->memory_bytes() : 0);
}

}  // namespace mmsb
