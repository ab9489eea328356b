// graph/dependency_graph.hpp — which pages derive from which (internal to mmsb).
//
// The mutable index of the dependency graph: one vertex per page that takes part in a dependency, one edge per
// dependency (input page → derived page) carrying its kind. Vertices are dense 32-bit ids that stay valid until
// their page is removed (ids of removed pages are reused), so the propagation engine can index its own per-page
// arrays by them; a PageId → vertex table serves calls by page.
//
// Storage is sized for graphs of millions of pages: per vertex its page, its order index and two edge lists
// (offset and length into one pool of 32-bit entries, capacities rounded to powers of two and recycled), per edge
// one entry in the source's out-list and one in the target's in-list (vertex id and kind packed in 32 bits), both
// in insertion order. Finding an edge scans the shorter of its two lists. The execution plan the engine derives
// per graph version is a Boost.Graph compressed_sparse_row_graph (graph/plan.cpp).
//
// Cycles are refused when the edge that would close one is added. The check is incremental: the graph keeps a
// topological order of its vertices (Pearce–Kelly), so an edge that already agrees with the order costs O(1) and
// any other edge only searches the vertices between its endpoints in that order, never the whole graph.
//
// Thread-safety: none. The propagation engine serializes every call under its own lock.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "mmsb/page_id.hpp"

namespace mmsb::detail {

enum class DependencyKind : std::uint8_t { Data = 0, Control = 1, GpuSync = 2 };
const char* dependency_kind_name(DependencyKind kind) noexcept;  // "data", "control", "gpu_sync"

struct Dependency {
  PageId from;  // the input page
  PageId to;    // the page derived from it
  DependencyKind kind = DependencyKind::Data;
};

using VertexId = std::uint32_t;
inline constexpr VertexId kNoVertex = ~VertexId{0};

class DependencyGraph {
 public:
  // Where a vertex created without an edge goes in the topological order.
  enum class Placement : std::uint8_t { First, Last };

  DependencyGraph();
  ~DependencyGraph();
  DependencyGraph(const DependencyGraph&) = delete;
  DependencyGraph& operator=(const DependencyGraph&) = delete;

  // Adds the edge from → to (adding missing vertices). Adding an edge that exists (same endpoints and kind) is a
  // no-op. Throws Error(InvalidArgument) for from == to, and for an edge that would close a cycle; the message
  // lists the cycle's pages in order, e.g. "p0:3 -> p0:7 -> p0:5 -> p0:3". A refused edge changes nothing.
  // Parallel edges of different kinds between the same pair are allowed. A missing source vertex is placed first
  // in the order and a missing target last, so an edge with a new endpoint never needs a reorder.
  void add_edge(PageId from, PageId to, DependencyKind kind = DependencyKind::Data);
  // Removes the edge; returns false if it did not exist. Vertices stay (remove_page removes them).
  bool remove_edge(PageId from, PageId to, DependencyKind kind = DependencyKind::Data);
  // Removes the page's vertex and all its edges; returns false if it had none.
  bool remove_page(PageId page);

  bool contains(PageId page) const;
  std::size_t page_count() const noexcept { return live_vertices_; }
  std::size_t edge_count() const noexcept { return edges_; }

  // Direct inputs / dependents of a page, each with its edge kind, in insertion order of the edges.
  std::vector<Dependency> inputs_of(PageId page) const;
  std::vector<Dependency> dependents_of(PageId page) const;

  // All pages in a topological order (every edge goes from an earlier to a later page). Deterministic for a
  // given sequence of calls.
  std::vector<PageId> topological_order() const;
  // The position of a page in that order (smaller = earlier); throws Error(NotFound) if the page has no vertex.
  std::uint64_t order_index(PageId page) const;

  // Counts topology changes; the scheduler rebuilds its execution plan when it changes.
  std::uint64_t version() const noexcept { return version_; }

  // Graphviz dot text: one node per page (label = page id plus the extra label given, if any), one edge per
  // dependency, styled by kind (data solid, control dashed, gpu_sync bold).
  std::string to_dot(const std::vector<std::pair<PageId, std::string>>& extra_labels = {}) const;

  // --- by vertex (the engine's calls; ids come from find() or vertex()) ------------------------------------------

  // The page's vertex, or kNoVertex. The PageId → vertex table behind it is built at the first call by page (the
  // engine, which keeps its own map, never needs it) and kept from then on.
  VertexId find(PageId page) const;
  // The page's vertex, created without edges (at `where` in the order) when missing. Not a topology change.
  VertexId vertex(PageId page, Placement where);
  // A new vertex for a page that has none (the caller knows; no lookup).
  VertexId add_vertex(PageId page, Placement where);
  // As add_edge(PageId, ...) between existing vertices. Returns false when the edge existed already.
  bool add_edge(VertexId from, VertexId to, DependencyKind kind);
  // Adds from[i] → to for every i (repeats and existing edges are skipped), all or none: when one would close a
  // cycle it throws as add_edge does and adds none. `to`'s input list grows once. Returns the number added.
  std::size_t add_edges(std::span<const VertexId> from, VertexId to, DependencyKind kind);
  bool remove_edge(VertexId from, VertexId to, DependencyKind kind);
  PageId page_of(VertexId v) const noexcept { return page_[v]; }
  // Every vertex in a topological order (as topological_order()).
  std::vector<VertexId> topological_vertices() const;
  // Every vertex id is below this (some ids may be free).
  VertexId vertex_limit() const noexcept { return static_cast<VertexId>(page_.size()); }
  // Calls fn(VertexId other, DependencyKind kind) for each edge out of / into `v`, in insertion order.
  template <class Fn>
  void for_each_dependent(VertexId v, Fn&& fn) const {
    const std::uint32_t* e = pool_.data() + out_[v].begin;
    for (std::uint32_t i = 0, n = out_[v].count; i < n; ++i) fn(edge_vertex(e[i]), edge_kind(e[i]));
  }
  template <class Fn>
  void for_each_input(VertexId v, Fn&& fn) const {
    const std::uint32_t* e = pool_.data() + in_[v].begin;
    for (std::uint32_t i = 0, n = in_[v].count; i < n; ++i) fn(edge_vertex(e[i]), edge_kind(e[i]));
  }
  std::size_t out_degree(VertexId v) const noexcept { return out_[v].count; }
  std::size_t in_degree(VertexId v) const noexcept { return in_[v].count; }

  // Reserves room for `vertices` more vertices and `edges` more edges (bulk construction).
  void reserve(std::size_t vertices, std::size_t edges);
  // Bytes held by the index (capacity of its arrays), for memory accounting.
  std::size_t memory_bytes() const noexcept;

 private:
  // An edge list: entries [begin, begin + count) of pool_; its capacity is count rounded up to a power of two.
  struct EdgeList {
    std::uint32_t begin = 0;
    std::uint32_t count = 0;
  };
  static constexpr unsigned kKindBits = 2;
  static constexpr VertexId kMaxVertices = VertexId{1} << (32 - kKindBits);
  static std::uint32_t pack(VertexId v, DependencyKind kind) noexcept {
    return (v << kKindBits) | static_cast<std::uint32_t>(kind);
  }
  static VertexId edge_vertex(std::uint32_t entry) noexcept { return entry >> kKindBits; }
  static DependencyKind edge_kind(std::uint32_t entry) noexcept {
    return static_cast<DependencyKind>(entry & ((1u << kKindBits) - 1));
  }

  VertexId create_vertex(PageId page, Placement where);
  void free_vertex(VertexId v);
  bool has_edge(VertexId from, VertexId to, DependencyKind kind) const noexcept;
  void check_edge(PageId from, PageId to, DependencyKind kind) const;
  [[noreturn]] void throw_cycle(VertexId x, VertexId y) const;
  void link(VertexId from, VertexId to, DependencyKind kind);
  void ensure_pool(std::size_t more);  // pool_'s capacity holds `more` entries beyond pool_used_
  void list_push(EdgeList& list, std::uint32_t entry);
  void list_append(EdgeList& list, std::span<const std::uint32_t> entries);
  // Checks from → to against the order (reordering when needed); throws when it would close a cycle.
  void order_edge(VertexId from, VertexId to);
  void list_erase(EdgeList& list, std::uint32_t entry);
  std::uint32_t pool_allocate(unsigned size_class);
  void pool_free(std::uint32_t begin, unsigned size_class);
  bool search_forward(VertexId y, VertexId x);
  void search_backward(VertexId x, VertexId y);
  void reorder();
  // PageId → vertex: open addressing over vertex ids (linear probing, at most half full).
  std::size_t slot_of(PageId page) const noexcept;
  void index_insert(VertexId v);
  void index_erase(PageId page);
  void index_grow();

  std::vector<PageId> page_;        // PageId() for a free id
  std::vector<std::uint64_t> ord_;  // position in the topological order
  std::vector<EdgeList> out_, in_;
  std::vector<std::uint32_t> pool_;  // edge entries of every list; [0, pool_used_) handed out
  std::size_t pool_used_ = 0;
  std::vector<std::vector<std::uint32_t>> free_blocks_;  // per size class (log2 capacity): free pool offsets
  std::vector<VertexId> free_vertices_;
  mutable std::vector<VertexId> index_;  // kNoVertex = empty; built by ensure_index(), then maintained
  mutable bool indexed_ = false;
  void ensure_index() const;
  std::size_t live_vertices_ = 0;
  std::size_t edges_ = 0;
  // Order indices grow in both directions from the middle of the range (2^63 vertices each way: never exhausted).
  std::uint64_t low_ord_ = (std::uint64_t{1} << 63) - 1;
  std::uint64_t high_ord_ = std::uint64_t{1} << 63;
  std::uint64_t version_ = 0;

  // Scratch for add_edge's searches, kept to avoid reallocating on every reorder. `mark_` holds the vertices a
  // search visited with the vertex each was reached from (for the cycle message).
  std::vector<VertexId> stack_, forward_, backward_;
  std::vector<std::uint64_t> pool_ord_;
  std::vector<std::pair<VertexId, VertexId>> mark_;  // open addressing: (vertex, parent), kNoVertex = empty
  std::vector<std::uint32_t> batch_;                 // add_edges: the entries to append to the target's list
  std::size_t marked_ = 0;
  bool mark(VertexId v, VertexId parent);  // false if already marked
  VertexId parent_of(VertexId v) const;
  void clear_marks(std::size_t expected);
};

}  // namespace mmsb::detail
