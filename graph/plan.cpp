// Graph version and plan: nodes and their slots, and what the engine derives from the DependencyGraph once per
// graph shape (the topological order, fused chains, the successor array and the TBB flow graph).
#include <tbb/flow_graph.h>

#include <algorithm>
#include <map>
#include <memory>
#include <vector>

#include "graph/engine.hpp"

namespace mmsb {

using detail::DependencyKind;
using detail::Node;
using detail::Slot;
using detail::Tally;

namespace detail {

// The flow graph of one graph version: one continue_node per bundle of sibling chains, fired by `start`.
struct FlowPlan {
  tbb::flow::graph graph;
  tbb::flow::broadcast_node<tbb::flow::continue_msg> start{graph};
  std::vector<std::unique_ptr<tbb::flow::continue_node<tbb::flow::continue_msg>>> bundles;  // one task each
  // Nodes unregister from their graph when destroyed: destroy them before the graph.
  ~FlowPlan() { bundles.clear(); }
};

void FlowPlanDeleter::operator()(FlowPlan* plan) const noexcept { delete plan; }

}  // namespace detail

PageRecord* Propagator::Impl::live_record(PageId id) {
  PageRecord* rec = runtime_impl.find(id);
  if (!rec || rec->deleted.load(std::memory_order_relaxed)) detail::throw_not_found(id);
  return rec;
}

Slot* Propagator::Impl::slot_for(PageId id) {
  auto it = slots.find(id);
  if (it != slots.end()) return it->second.get();
  auto slot = std::make_unique<Slot>(id, live_record(id));
  Slot* raw = slot.get();
  slots.emplace(id, std::move(slot));
  raw->record->listener_tag.store(raw, std::memory_order_release);
  return raw;
}

void Propagator::Impl::add_node(std::unique_ptr<Node> node, const std::vector<PageId>& inputs) {
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
    throw Error(ErrorCode::InvalidArgument,
                "page " + out.to_string() + " is an external (read-only) page and cannot be a node's output");
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
    if (std::find(s->readers.begin(), s->readers.end(), node.get()) == s->readers.end())
      s->readers.push_back(node.get());
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

void Propagator::Impl::remove_node(PageId out) {
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
void Propagator::Impl::ensure_order() {
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
std::vector<Node*> Propagator::Impl::successors_of(const Node& node) {
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
void Propagator::Impl::ensure_flow_plan() {
  ensure_order();
  if (flow_version == structure_version && flow) return;
  flow.reset();
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
    flow.reset(new detail::FlowPlan());
    for (auto& bundle : bundles) {
      flow->bundles.push_back(std::make_unique<tbb::flow::continue_node<tbb::flow::continue_msg>>(
          flow->graph, [this, members = bundle](const tbb::flow::continue_msg&) {
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
      if (bundle_preds[b].empty()) tbb::flow::make_edge(flow->start, *flow->bundles[b]);
      for (std::size_t f : bundle_preds[b]) tbb::flow::make_edge(*flow->bundles[f], *flow->bundles[b]);
    }
  });
  flow_version = structure_version;
}

void Propagator::Impl::run_flow_plan() {
  arena.execute([&] {
    flow->start.try_put(tbb::flow::continue_msg());
    flow->graph.wait_for_all();
  });
}

}  // namespace mmsb
