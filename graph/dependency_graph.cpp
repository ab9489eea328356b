// graph/dependency_graph.cpp — the dependency index and its incremental topological order.
//
// Storage: a Boost.Graph adjacency_list with list storage for vertices and edges, so a vertex or edge descriptor
// stays valid until that vertex or edge is removed. Two hash maps index it: PageId → vertex, and
// (from, to, kind) → edge (duplicate check and removal in O(1) plus the edge's degree, even for a page with a
// very large fan-out).
//
// Order: every vertex carries an order index `ord`; all edges go from a smaller to a larger index. A vertex created
// by add_edge takes a fresh index below all others if it is the edge's source, above all others if it is the
// target, so an edge with a new endpoint never needs a reorder (building a chain from its end backwards stays
// linear). add_edge(x → y) follows Pearce & Kelly, "A dynamic topological sort
// algorithm for directed acyclic graphs" (JEA 2006):
//   * ord[x] < ord[y]: the order already agrees; nothing to do.
//   * otherwise the affected region is the vertices with ord in [ord[y], ord[x]]. A forward search from y visits
//     only vertices w with ord[w] <= ord[x]; reaching x means y already reaches x, so the edge closes a cycle and
//     is refused (nothing has changed yet). A backward search from x visits only vertices w with
//     ord[w] >= ord[y]. The two visited sets are disjoint; their order indices are pooled, sorted, and handed out
//     again: first to the backward set, then to the forward set, each in its previous relative order. Vertices
//     outside the two sets keep their index, so the order stays valid for every other edge.
// Removing edges or vertices never invalidates the order; the gaps left in the indices are harmless.
// Both searches are iterative (explicit stacks) because chains can be very long.
#include "graph/dependency_graph.hpp"

#include <algorithm>
#include <cassert>
#include <cstddef>
#include <unordered_map>
#include <utility>

#include <boost/graph/adjacency_list.hpp>

#include "mmsb/error.hpp"

namespace mmsb::detail {

const char* dependency_kind_name(DependencyKind kind) noexcept {
  switch (kind) {
    case DependencyKind::Data:
      return "data";
    case DependencyKind::Control:
      return "control";
    case DependencyKind::GpuSync:
      return "gpu_sync";
  }
  return "unknown";
}

namespace {

struct VertexProps {
  PageId page;
  std::uint64_t ord = 0;      // position in the topological order
  std::uint64_t visited = 0;  // search epoch that last visited this vertex (scratch for add_edge)
  void* parent = nullptr;     // forward search: vertex it was reached from (scratch, for the cycle message)
};

struct EdgeProps {
  DependencyKind kind = DependencyKind::Data;
  std::uint64_t seq = 0;  // insertion sequence number; inputs_of/dependents_of report edges in this order
};

using Graph = boost::adjacency_list<boost::listS, boost::listS, boost::bidirectionalS, VertexProps, EdgeProps>;
using Vertex = boost::graph_traits<Graph>::vertex_descriptor;
using Edge = boost::graph_traits<Graph>::edge_descriptor;

struct EdgeKey {
  std::uint64_t from;
  std::uint64_t to;
  DependencyKind kind;
  friend bool operator==(const EdgeKey&, const EdgeKey&) = default;
};

struct EdgeKeyHash {
  std::size_t operator()(const EdgeKey& k) const noexcept {
    std::uint64_t h = k.from * 0x9E3779B97F4A7C15ull;
    h ^= k.to + 0x632BE59BD9B4E019ull + (h << 6) + (h >> 2);
    h ^= static_cast<std::uint64_t>(k.kind) + 0x9E3779B97F4A7C15ull + (h << 6) + (h >> 2);
    return static_cast<std::size_t>(h ^ (h >> 29));
  }
};

bool valid_kind(DependencyKind kind) noexcept {
  return kind == DependencyKind::Data || kind == DependencyKind::Control || kind == DependencyKind::GpuSync;
}

// Escapes text for a double-quoted Graphviz string: quotes and backslashes are escaped, newlines become "\n".
// Not the JSON escaping of tools/json.cpp (or nlohmann's): in a DOT label \l, \r and \N have meanings of their own
// and \uXXXX is no escape, so only quotes, backslashes and line breaks change here.
std::string dot_escape(const std::string& text) {
  std::string out;
  out.reserve(text.size());
  for (char c : text) {
    switch (c) {
      case '"':
        out += "\\\"";
        break;
      case '\\':
        out += "\\\\";
        break;
      case '\n':
        out += "\\n";
        break;
      case '\r':
        break;
      default:
        out += c;
        break;
    }
  }
  return out;
}

}  // namespace

struct DependencyGraph::Impl {
  Graph g;
  std::unordered_map<PageId, Vertex> vertex_of;
  std::unordered_map<EdgeKey, Edge, EdgeKeyHash> edge_of;
  // Order indices grow in both directions from the middle of the range (2^63 vertices each way: never exhausted).
  std::uint64_t low_ord = (std::uint64_t{1} << 63) - 1;
  std::uint64_t high_ord = std::uint64_t{1} << 63;
  std::uint64_t next_seq = 0;
  std::uint64_t epoch = 0;
  std::uint64_t version = 0;

  // Scratch buffers for add_edge, kept to avoid reallocating on every reorder.
  std::vector<Vertex> stack;
  std::vector<Vertex> forward;
  std::vector<Vertex> backward;
  std::vector<std::uint64_t> pool;

  Vertex find(PageId page) const {
    auto it = vertex_of.find(page);
    return it == vertex_of.end() ? Graph::null_vertex() : it->second;
  }

  // A new vertex takes an index before every other one when it is the source of the edge being added, after
  // every other one when it is the target: either way the new edge agrees with the order at no cost.
  Vertex find_or_add(PageId page, bool first) {
    auto [it, inserted] = vertex_of.try_emplace(page, Graph::null_vertex());
    if (inserted) {
      try {
        VertexProps props;
        props.page = page;
        props.ord = first ? low_ord-- : high_ord++;
        it->second = boost::add_vertex(props, g);
      } catch (...) {
        vertex_of.erase(it);
        throw;
      }
    }
    return it->second;
  }

  // Forward search from y over vertices with ord <= ord[x]. Returns true if x is reached (the edge x → y would
  // close a cycle); the search then stops and `parent` links lead back from x to y. Otherwise `forward` holds
  // every vertex visited.
  bool search_forward(Vertex y, Vertex x) {
    const std::uint64_t bound = g[x].ord;
    const std::uint64_t mark = ++epoch;
    forward.clear();
    stack.clear();
    g[y].visited = mark;
    g[y].parent = nullptr;
    stack.push_back(y);
    while (!stack.empty()) {
      Vertex v = stack.back();
      stack.pop_back();
      forward.push_back(v);
      for (auto [ei, ee] = boost::out_edges(v, g); ei != ee; ++ei) {
        Vertex w = boost::target(*ei, g);
        if (w == x) {
          g[x].parent = v;
          return true;
        }
        VertexProps& wp = g[w];
        if (wp.visited == mark || wp.ord > bound) continue;
        wp.visited = mark;
        wp.parent = v;
        stack.push_back(w);
      }
    }
    return false;
  }

  // Backward search from x over vertices with ord >= ord[y]; fills `backward`.
  void search_backward(Vertex x, Vertex y) {
    const std::uint64_t bound = g[y].ord;
    const std::uint64_t mark = ++epoch;
    backward.clear();
    stack.clear();
    g[x].visited = mark;
    stack.push_back(x);
    while (!stack.empty()) {
      Vertex v = stack.back();
      stack.pop_back();
      backward.push_back(v);
      for (auto [ei, ee] = boost::in_edges(v, g); ei != ee; ++ei) {
        Vertex w = boost::source(*ei, g);
        VertexProps& wp = g[w];
        if (wp.visited == mark || wp.ord < bound) continue;
        wp.visited = mark;
        stack.push_back(w);
      }
    }
  }

  // After a successful search: the backward set moves before the forward set, each keeping its relative order,
  // using the same pool of order indices.
  void reorder() {
    auto by_ord = [this](Vertex a, Vertex b) { return g[a].ord < g[b].ord; };
    std::sort(backward.begin(), backward.end(), by_ord);
    std::sort(forward.begin(), forward.end(), by_ord);
    pool.clear();
    pool.reserve(backward.size() + forward.size());
    for (Vertex v : backward) pool.push_back(g[v].ord);
    for (Vertex v : forward) pool.push_back(g[v].ord);
    std::sort(pool.begin(), pool.end());
    std::size_t i = 0;
    for (Vertex v : backward) g[v].ord = pool[i++];
    for (Vertex v : forward) g[v].ord = pool[i++];
  }

  // "x -> y -> ... -> x" from the parent links left by a forward search that reached x.
  std::string cycle_message(Vertex x, Vertex y) const {
    std::vector<Vertex> path;  // x, parent(x), ..., y
    for (Vertex v = x;; v = static_cast<Vertex>(g[v].parent)) {
      path.push_back(v);
      if (v == y) break;
    }
    std::string text = g[x].page.to_string();
    for (auto it = path.rbegin(); it != path.rend(); ++it) {
      text += " -> ";
      text += g[*it].page.to_string();
    }
    return text;
  }

  template <typename Range, typename Other>
  std::vector<Dependency> collect(Range range, Other other, bool incoming) const {
    std::vector<std::pair<std::uint64_t, Dependency>> items;
    for (auto [ei, ee] = range; ei != ee; ++ei) {
      const PageId near = g[other(*ei, true)].page;
      const PageId far = g[other(*ei, false)].page;
      Dependency d;
      d.from = incoming ? far : near;
      d.to = incoming ? near : far;
      d.kind = g[*ei].kind;
      items.emplace_back(g[*ei].seq, d);
    }
    // Boost appends to both incidence lists, so they are already in insertion order; the check keeps that an
    // observed property rather than an assumption.
    auto by_seq = [](const auto& a, const auto& b) { return a.first < b.first; };
    if (!std::is_sorted(items.begin(), items.end(), by_seq)) std::sort(items.begin(), items.end(), by_seq);
    std::vector<Dependency> result;
    result.reserve(items.size());
    for (auto& item : items) result.push_back(item.second);
    return result;
  }
};

DependencyGraph::DependencyGraph() : impl_(std::make_unique<Impl>()) {}
DependencyGraph::~DependencyGraph() = default;

void DependencyGraph::add_edge(PageId from, PageId to, DependencyKind kind) {
  Impl& m = *impl_;
  if (from == to) {
    throw Error(ErrorCode::InvalidArgument,
                "dependency " + from.to_string() + " -> " + to.to_string() +
                    " is a self-edge: a page cannot be derived from itself; use a separate output page");
  }
  if (!valid_kind(kind)) {
    throw Error(ErrorCode::InvalidArgument, "dependency " + from.to_string() + " -> " + to.to_string() +
                                                " has unknown kind " + std::to_string(static_cast<unsigned>(kind)) +
                                                "; use data, control or gpu_sync");
  }
  const EdgeKey key{from.value(), to.value(), kind};
  if (m.edge_of.count(key) != 0) return;  // already present: no-op

  // A cycle needs both endpoints to exist already, so the check runs before anything is created and a refused
  // edge leaves the graph (vertices, order, version) exactly as it was.
  Vertex x = m.find(from);
  Vertex y = m.find(to);
  const bool reorder_needed = x != Graph::null_vertex() && y != Graph::null_vertex() && m.g[x].ord > m.g[y].ord;
  if (reorder_needed && m.search_forward(y, x)) {
    throw Error(ErrorCode::InvalidArgument,
                "dependency would close a cycle: " + m.cycle_message(x, y) +
                    "; remove one of these dependencies first or derive into a different page");
  }

  x = m.find_or_add(from, /*first=*/true);
  y = m.find_or_add(to, /*first=*/false);
  if (reorder_needed) {
    m.search_backward(x, y);
    m.reorder();
  }
  assert(m.g[x].ord < m.g[y].ord);

  m.edge_of.reserve(m.edge_of.size() + 1);
  auto [e, added] = boost::add_edge(x, y, EdgeProps{kind, m.next_seq++}, m.g);
  assert(added);
  (void)added;
  m.edge_of.emplace(key, e);
  ++m.version;
}

bool DependencyGraph::remove_edge(PageId from, PageId to, DependencyKind kind) {
  Impl& m = *impl_;
  auto it = m.edge_of.find(EdgeKey{from.value(), to.value(), kind});
  if (it == m.edge_of.end()) return false;
  boost::remove_edge(it->second, m.g);
  m.edge_of.erase(it);
  ++m.version;
  return true;
}

bool DependencyGraph::remove_page(PageId page) {
  Impl& m = *impl_;
  auto it = m.vertex_of.find(page);
  if (it == m.vertex_of.end()) return false;
  const Vertex v = it->second;
  for (auto [ei, ee] = boost::out_edges(v, m.g); ei != ee; ++ei) {
    m.edge_of.erase(EdgeKey{page.value(), m.g[boost::target(*ei, m.g)].page.value(), m.g[*ei].kind});
  }
  for (auto [ei, ee] = boost::in_edges(v, m.g); ei != ee; ++ei) {
    m.edge_of.erase(EdgeKey{m.g[boost::source(*ei, m.g)].page.value(), page.value(), m.g[*ei].kind});
  }
  boost::clear_vertex(v, m.g);
  boost::remove_vertex(v, m.g);
  m.vertex_of.erase(it);
  ++m.version;
  return true;
}

bool DependencyGraph::contains(PageId page) const noexcept { return impl_->vertex_of.count(page) != 0; }

std::size_t DependencyGraph::page_count() const noexcept { return impl_->vertex_of.size(); }

std::size_t DependencyGraph::edge_count() const noexcept { return impl_->edge_of.size(); }

std::vector<Dependency> DependencyGraph::inputs_of(PageId page) const {
  const Impl& m = *impl_;
  const Vertex v = m.find(page);
  if (v == Graph::null_vertex()) return {};
  return m.collect(
      boost::in_edges(v, m.g),
      [&m](const Edge& e, bool near) { return near ? boost::target(e, m.g) : boost::source(e, m.g); }, true);
}

std::vector<Dependency> DependencyGraph::dependents_of(PageId page) const {
  const Impl& m = *impl_;
  const Vertex v = m.find(page);
  if (v == Graph::null_vertex()) return {};
  return m.collect(
      boost::out_edges(v, m.g),
      [&m](const Edge& e, bool near) { return near ? boost::source(e, m.g) : boost::target(e, m.g); }, false);
}

std::vector<PageId> DependencyGraph::topological_order() const {
  const Impl& m = *impl_;
  std::vector<std::pair<std::uint64_t, PageId>> items;
  items.reserve(m.vertex_of.size());
  for (auto [vi, ve] = boost::vertices(m.g); vi != ve; ++vi) items.emplace_back(m.g[*vi].ord, m.g[*vi].page);
  std::sort(items.begin(), items.end());
  std::vector<PageId> order;
  order.reserve(items.size());
  for (const auto& item : items) order.push_back(item.second);
  return order;
}

std::uint64_t DependencyGraph::order_index(PageId page) const {
  const Impl& m = *impl_;
  const Vertex v = m.find(page);
  if (v == Graph::null_vertex()) {
    throw Error(ErrorCode::NotFound,
                "page " + page.to_string() + " is not in the dependency graph; add a dependency that names it first");
  }
  return m.g[v].ord;
}

std::uint64_t DependencyGraph::version() const noexcept { return impl_->version; }

std::string DependencyGraph::to_dot(const std::vector<std::pair<PageId, std::string>>& extra_labels) const {
  const Impl& m = *impl_;
  // Several labels for one page are joined with line breaks, in the order given; labels for pages without a
  // vertex are ignored.
  std::unordered_map<PageId, std::string> labels;
  for (const auto& [page, label] : extra_labels) {
    if (m.vertex_of.count(page) == 0) continue;
    std::string& text = labels[page];
    if (!text.empty()) text += "\n";
    text += label;
  }

  std::vector<std::pair<std::uint64_t, Vertex>> order;
  order.reserve(m.vertex_of.size());
  for (auto [vi, ve] = boost::vertices(m.g); vi != ve; ++vi) order.emplace_back(m.g[*vi].ord, *vi);
  std::sort(order.begin(), order.end(), [](const auto& a, const auto& b) { return a.first < b.first; });

  std::string out = "digraph mmsb {\n";
  for (const auto& [ord, v] : order) {
    const std::string id = m.g[v].page.to_string();
    out += "  \"" + dot_escape(id) + "\"";
    auto it = labels.find(m.g[v].page);
    if (it != labels.end()) out += " [label=\"" + dot_escape(id + "\n" + it->second) + "\"]";
    out += ";\n";
  }
  for (const auto& [ord, v] : order) {
    const std::string from = dot_escape(m.g[v].page.to_string());
    for (const Dependency& d : dependents_of(m.g[v].page)) {
      out += "  \"" + from + "\" -> \"" + dot_escape(d.to.to_string()) + "\"";
      switch (d.kind) {
        case DependencyKind::Data:
          break;
        case DependencyKind::Control:
          out += " [style=dashed]";
          break;
        case DependencyKind::GpuSync:
          out += " [style=bold]";
          break;
      }
      out += ";\n";
    }
  }
  out += "}\n";
  return out;
}

}  // namespace mmsb::detail
