// Graph version and plan: nodes, slots and function tables, and the execution plan the engine derives from the
// DependencyGraph once per graph version (see graph/engine.hpp).
//
// The plan lists the nodes level by level: a node's level is one more than the deepest level among the nodes it
// depends on by any edge kind (nodes that depend on no node are level 0), computed in O(nodes + edges): in one pass
// over the nodes in index order when each depends only on earlier ones, else by Kahn's algorithm. Within a level nodes
// keep their index order (creation order), so plans are deterministic. Every node of a level can run at the same time;
// a wave runs the levels in order. A position's only data successor is kept in its step (plan.hpp); the successors of
// positions with several form a Boost.Graph compressed_sparse_row_graph. Both serve the walk that finds a wave's nodes.
#include <boost/graph/compressed_sparse_row_graph.hpp>

#include <algorithm>
#include <memory>
#include <string>
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
  return steps.capacity() * sizeof(Step) + level_begin.capacity() * sizeof(std::uint32_t) +
         (boost::num_vertices(successors) + 1 + boost::num_edges(successors)) * sizeof(std::uint32_t) +
         (boost::num_vertices(source_readers) + 1 + boost::num_edges(source_readers)) * sizeof(std::uint32_t);
}

}  // namespace detail

PageRecord* Propagator::Impl::live_record(PageId id) {
  PageRecord* rec = runtime_impl.find(id);
  if (!rec || rec->deleted.load(std::memory_order_relaxed)) detail::throw_not_found(id);
  return rec;
}

Slot* Propagator::Impl::slot_for(PageId id, DependencyGraph::Placement where) {
  return slot_for(live_record(id), where);
}

Slot* Propagator::Impl::slot_for(PageRecord* record, DependencyGraph::Placement where) {
  const PageId id = record->id;
  if (auto* tagged = static_cast<Slot*>(record->listener_tag.load(std::memory_order_acquire))) return tagged;
  const VertexId v = graph.add_vertex(id, where);  // no tag, so no vertex yet
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

// Throws, with nothing changed, when `spec` is not a valid node; returns the output's record and leaves the
// inputs' records in spec_records (looked up once: a large build looks up millions of pages).
PageRecord* Propagator::Impl::check_node_spec(const detail::NodeSpec& spec) {
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
  spec_records.clear();
  for (PageId in : spec.inputs) spec_records.push_back(live_record(in));
  return out_record;
}

// Slots (and vertices) first: a new input goes first in the order and a new output last, so the edges of a node
// whose output is new agree with the order and cost no search. Appends the input vertices to input_pool and adds
// all of the node's data edges or none (a refused edge names the cycle it would close). Returns the output vertex.
VertexId Propagator::Impl::link_node(const detail::NodeSpec& spec, PageRecord* out_record) {
  const std::size_t pool_begin = input_pool.size();
  try {
    for (PageRecord* in : spec_records) input_pool.push_back(slot_for(in, DependencyGraph::Placement::First)->vertex);
    const VertexId out_vertex = slot_for(out_record, DependencyGraph::Placement::Last)->vertex;
    graph.add_edges(std::span<const VertexId>(input_pool.data() + pool_begin, spec.inputs.size()), out_vertex,
                    DependencyKind::Data);
    return out_vertex;
  } catch (...) {
    input_pool.resize(pool_begin);
    throw;
  }
}

NodeIndex Propagator::Impl::allocate_node() {
  if (!free_nodes.empty()) {
    const NodeIndex index = free_nodes.back();
    free_nodes.pop_back();
    return index;
  }
  const NodeIndex index = node_at.size();
  node_at.grow_to(index + 1);
  return index;
}

// The node's function: its own (moved into the engine's table) or a shared one already counted for it.
void Propagator::Impl::bind_function(NodeIndex index, const detail::NodeSpec& spec) {
  Node& n = node_at[index];
  switch (spec.kind) {
    case NodeKind::Map:
      n.function = spec.map ? maps.add(std::move(*spec.map), 1) : spec.shared_function;
      break;
    case NodeKind::Incremental:
      n.function = spec.incremental ? incrementals.add(std::move(*spec.incremental), 1) : spec.shared_function;
      if (spec.rebuild && *spec.rebuild) {
        rebuilds[index] = std::move(*spec.rebuild);
        n.flags |= Node::kHasRebuild;
      }
      break;
    case NodeKind::Passthrough:
      n.function = remaps.add(spec.remap, 1);
      break;
  }
}

namespace {
bool holds_inline_bytes(const PageRecord& record) {
  return record.size.load(std::memory_order_relaxed) <= PageRecord::kInlineBytes;
}
}  // namespace

NodeIndex Propagator::Impl::add_node(const detail::NodeSpec& spec) {
  PageRecord* out_record = check_node_spec(spec);
  const std::uint32_t pool_begin = static_cast<std::uint32_t>(input_pool.size());
  const VertexId out_vertex = link_node(spec, out_record);
  const NodeIndex index = allocate_node();
  Node& n = node_at[index];
  n.out = out_vertex;
  n.inputs = pool_begin;
  n.input_count = static_cast<std::uint32_t>(spec.inputs.size());
  n.kind = spec.kind;
  n.position = 0;
  n.completed_wave.store(0, std::memory_order_relaxed);
  // A new node is stale: the next wave computes it once, whatever its inputs do (graph.hpp, derive_*), unless
  // its output is declared current (a restored checkpoint).
  n.stale.store(!spec.output_is_current, std::memory_order_relaxed);
  if (!spec.output_is_current) stale_nodes.push_back(index);
  n.flags = Node::kLive;
  n.kept = kNoNode;
  if (spec.always_changes) n.flags |= Node::kAlwaysChanges;
  bool increasing = true;
  for (std::size_t i = 1; i < spec.inputs.size(); ++i) increasing = increasing && spec.inputs[i - 1] < spec.inputs[i];
  if (increasing) n.flags |= Node::kLockOrder;
  if (holds_inline_bytes(*out_record) && std::all_of(spec_records.begin(), spec_records.end(),
                                                     [](const PageRecord* in) { return holds_inline_bytes(*in); }))
    n.flags |= Node::kInlinePages;
  bind_function(index, spec);
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
  // Its entry in stale_nodes stays: the next wave skips nodes that are not live and stale, and clears the list.
  // Erasing it here would make rolling back a bulk build (all its nodes stale) quadratic.
  n.stale.store(false, std::memory_order_relaxed);
  labels.erase(index);
  rebuilds.erase(index);
  slots[n.out].node = kNoNode;
  input_garbage += n.input_count;
  n.flags = 0;
  n.out = kNoVertex;
  if (n.kept != kNoNode) {
    kept_deltas[n.kept].reset();
    free_kept.push_back(n.kept);
    n.kept = kNoNode;
  }
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

// Levels when every node depends only on nodes of smaller index (graphs declared inputs first, as most are): one
// pass in index order. Returns false, with `level` partly filled, when some node depends on a later one.
// Each input's level is read from one array indexed by vertex (1 + its writer's level, 0 for a page no node
// writes, kLater for a writer not yet visited): in a graph that does not fit in the cache, reading the writer
// through its slot and node instead costs a miss per edge.
bool Propagator::Impl::levels_in_index_order(std::vector<std::uint32_t>& level, std::uint32_t& levels) {
  constexpr std::uint32_t kLater = ~std::uint32_t{0};
  std::vector<std::uint32_t> above(slots.size(), 0);
  for (NodeIndex u = 0; u < level.size(); ++u)
    if (node_at[u].flags & Node::kLive) above[node_at[u].out] = kLater;
  levels = 0;
  bool index_order = true;
  for (NodeIndex u = 0; u < level.size() && index_order; ++u) {
    Node& n = node_at[u];
    if (!(n.flags & Node::kLive)) continue;
    std::uint32_t l = 0;
    graph.for_each_input(n.out, [&](VertexId w, DependencyKind) {
      const std::uint32_t writer = above[w];
      if (writer == kLater) index_order = false;
      l = std::max(l, writer);
    });
    level[u] = l;
    above[n.out] = l + 1;
    levels = std::max(levels, l + 1);
  }
  return index_order;
}

// Levels by Kahn's algorithm over the successors, for any order of the nodes. Returns the number of levels.
std::uint32_t Propagator::Impl::levels_by_kahn(std::vector<std::uint32_t>& level) {
  const NodeIndex limit = static_cast<NodeIndex>(level.size());
  std::fill(level.begin(), level.end(), 0);
  std::uint32_t levels = 0;
  std::vector<std::uint32_t> pending(limit, 0);
  std::vector<NodeIndex> kahn;
  kahn.reserve(live_nodes);
  auto for_each_successor = [&](const Node& u, auto&& fn) {
    graph.for_each_dependent(u.out, [&](VertexId w, DependencyKind) {
      const NodeIndex v = slots[w].node;
      if (v != kNoNode) fn(v);
    });
  };
  for (NodeIndex u = 0; u < limit; ++u) {
    if (node_at[u].flags & Node::kLive) for_each_successor(node_at[u], [&](NodeIndex v) { ++pending[v]; });
  }
  for (NodeIndex u = 0; u < limit; ++u)
    if ((node_at[u].flags & Node::kLive) && pending[u] == 0) kahn.push_back(u);
  for (std::size_t k = 0; k < kahn.size(); ++k) {
    const NodeIndex u = kahn[k];
    levels = std::max(levels, level[u] + 1);
    for_each_successor(node_at[u], [&](NodeIndex v) {
      level[v] = std::max(level[v], level[u] + 1);
      if (--pending[v] == 0) kahn.push_back(v);
    });
  }
  if (kahn.size() != live_nodes) {  // the graph refuses cycles, so this is a broken invariant
    throw Error(ErrorCode::Internal, "the dependency graph has a cycle the incremental check missed; please report");
  }
  return levels;
}

// Positions: level-major, index order within a level (a counting sort).
void Propagator::Impl::assign_positions(detail::Plan& p, const std::vector<std::uint32_t>& level,
                                        std::uint32_t levels) {
  const NodeIndex limit = static_cast<NodeIndex>(level.size());
  p.level_begin.assign(levels + 1, 0);
  for (NodeIndex u = 0; u < limit; ++u)
    if (node_at[u].flags & Node::kLive) ++p.level_begin[level[u] + 1];
  for (std::uint32_t l = 0; l < levels; ++l) {
    p.widest_level = std::max(p.widest_level, p.level_begin[l + 1]);
    p.level_begin[l + 1] += p.level_begin[l];
  }
  p.steps.assign(live_nodes, detail::Plan::Step{});
  std::vector<std::uint32_t> fill(p.level_begin.begin(), p.level_begin.end() - 1);
  for (NodeIndex u = 0; u < limit; ++u) {
    Node& n = node_at[u];
    if (!(n.flags & Node::kLive)) continue;
    const std::uint32_t position = fill[level[u]]++;
    p.steps[position].node = u;
    p.steps[position].inputs = n.inputs;
    n.position = position;
    n.flags = static_cast<std::uint8_t>(n.flags & ~Node::kKeepDelta);
    if (!(n.flags & Node::kLockOrder)) ++p.unordered_nodes;
  }
}

namespace {
// Records `value` in `one`, which ends as kNoSuccessor (never noted), the one value noted, or kManySuccessors.
void note_one_or_many(std::uint32_t& one, std::uint32_t value) {
  constexpr std::uint32_t kNone = detail::Plan::kNoSuccessor, kMany = detail::Plan::kManySuccessors;
  one = one == kNone || one == value ? value : kMany;
}
}  // namespace

// Data successors by position, and which nodes' deltas a reader consumes (passthrough and incremental nodes).
void Propagator::Impl::link_successors(detail::Plan& p) {
  constexpr std::uint32_t kNone = detail::Plan::kNoSuccessor, kMany = detail::Plan::kManySuccessors;
  std::vector<std::pair<std::uint32_t, std::uint32_t>> edges, source_edges;
  edges.reserve(input_pool.size() - input_garbage);  // every node's inputs: at least its data edges from nodes
  // By vertex, as Slot::reader: filled here, then stored in the slots in one pass (store_readers), so an edge does
  // not cost its input's slot.
  std::vector<std::uint32_t> reader_of(slots.size(), kNone);
  // The writer's position by vertex, read once per edge (as in levels_in_index_order: no slot and node per edge).
  std::vector<std::uint32_t> position_of(slots.size(), kNone);
  for (NodeIndex u = 0; u < node_at.size(); ++u)
    if (node_at[u].flags & Node::kLive) position_of[node_at[u].out] = node_at[u].position;
  for (NodeIndex u = 0; u < node_at.size(); ++u) {
    const Node& n = node_at[u];
    if (!(n.flags & Node::kLive)) continue;
    const bool consumes = n.kind != NodeKind::Map;
    graph.for_each_input(n.out, [&](VertexId w, DependencyKind kind) {
      if (kind != DependencyKind::Data) return;
      const std::uint32_t only_before = reader_of[w];
      note_one_or_many(reader_of[w], n.position);
      const std::uint32_t from = position_of[w];
      if (from == kNone) {
        // Only a source read by several gets a row: its first reader is listed when the second one comes.
        if (reader_of[w] != kMany) return;
        if (only_before != kMany) source_edges.emplace_back(w, only_before);
        source_edges.emplace_back(w, n.position);
        return;
      }
      edges.emplace_back(from, n.position);
      if (consumes) node_at[slots[w].node].flags |= Node::kKeepDelta;
    });
  }
  // A position with one successor keeps it in its step; those with more get a row of the successor graph.
  for (const auto& [from, to] : edges) note_one_or_many(p.steps[from].next, to);
  for (detail::Plan::Step& step : p.steps)
    if (step.next < kMany && p.steps[step.next].next < kMany) step.after_next = p.steps[step.next].next;
  std::uint32_t rows = 0;
  for (detail::Plan::Step& step : p.steps)
    if (step.next == kMany) step.next = detail::Plan::kRow | rows++;
  const auto multi_end = std::remove_if(
      edges.begin(), edges.end(),
      [&](const std::pair<std::uint32_t, std::uint32_t>& e) { return p.steps[e.first].next < detail::Plan::kRow; });
  for (auto e = edges.begin(); e != multi_end; ++e) e->first = p.steps[e->first].next & ~detail::Plan::kRow;
  p.successors = detail::Plan::Successors(boost::edges_are_unsorted_multi_pass, edges.begin(), multi_end, rows);
  link_source_readers(p, reader_of, source_edges);
  store_readers(p, reader_of);
}

// A row of reader positions for each page that no node computes and several nodes read (a graph's sources): a wave
// from such a page then reaches its readers without the DependencyGraph. `edges` are (vertex, reader position).
void Propagator::Impl::link_source_readers(detail::Plan& p, std::vector<std::uint32_t>& reader_of,
                                           std::vector<std::pair<std::uint32_t, std::uint32_t>>& edges) {
  std::uint32_t rows = 0;
  for (const auto& [vertex, position] : edges) {
    std::uint32_t& reader = reader_of[vertex];
    if (reader == detail::Plan::kManySuccessors && rows < detail::Plan::kMaxPositions)
      reader = detail::Plan::kRow | rows++;
  }
  const auto in_rows =
      std::remove_if(edges.begin(), edges.end(), [&](const std::pair<std::uint32_t, std::uint32_t>& e) {
        return reader_of[e.first] < detail::Plan::kRow || reader_of[e.first] == detail::Plan::kManySuccessors;
      });
  for (auto e = edges.begin(); e != in_rows; ++e) e->first = reader_of[e->first] & ~detail::Plan::kRow;
  p.source_readers = detail::Plan::Successors(boost::edges_are_unsorted_multi_pass, edges.begin(), in_rows, rows);
}

// Every slot's readers in the new plan (Slot::reader), in one sequential pass over the slots.
void Propagator::Impl::store_readers(const detail::Plan& p, const std::vector<std::uint32_t>& reader_of) {
  for (VertexId v = 0; v < slots.size(); ++v) {
    Slot& s = slots[v];
    s.reader = reader_of[v];
    s.reader_next = s.reader < detail::Plan::kRow && p.steps[s.reader].next < detail::Plan::kRow
                        ? p.steps[s.reader].next
                        : detail::Plan::kNoSuccessor;
  }
}

// A kept delta for every node whose delta is consumed, allocated now so a wave never changes kept_deltas.
void Propagator::Impl::allocate_kept_deltas() {
  for (NodeIndex u = 0; u < node_at.size(); ++u) {
    Node& n = node_at[u];
    if (!(n.flags & Node::kKeepDelta) || n.kept != kNoNode) continue;
    if (free_kept.empty()) {
      n.kept = static_cast<std::uint32_t>(kept_deltas.size());
      kept_deltas.push_back(std::make_unique<Delta>());
    } else {
      n.kept = free_kept.back();
      free_kept.pop_back();
      kept_deltas[n.kept] = std::make_unique<Delta>();
    }
  }
}

void Propagator::Impl::ensure_plan() {
  if (plan && plan->version == structure_version) return;
  if (live_nodes > detail::Plan::kMaxPositions) {
    throw Error(ErrorCode::ResourceExhausted, "a plan holds at most " + std::to_string(detail::Plan::kMaxPositions) +
                                                  " nodes; split the graph over several propagators");
  }
  counters.plan_builds.fetch_add(1, std::memory_order_relaxed);
  auto next = std::unique_ptr<detail::Plan, detail::PlanDeleter>(new detail::Plan());
  detail::Plan& p = *next;
  {
    std::vector<std::uint32_t> level(node_at.size(), 0);
    std::uint32_t levels = 0;
    if (!levels_in_index_order(level, levels)) levels = levels_by_kahn(level);
    assign_positions(p, level, levels);
  }
  link_successors(p);
  allocate_kept_deltas();
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
