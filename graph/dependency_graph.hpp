// graph/dependency_graph.hpp — which pages derive from which (internal to mmsb).
//
// A Boost.Graph adjacency_list used as an index: one vertex per page that takes part in a dependency, one edge per
// dependency (input page → derived page) carrying its kind. A PageId → vertex map stays valid across removals
// (vertices are stored in a list, so descriptors of other vertices never move).
//
// Cycles are refused when the edge that would close one is added. The check is incremental: the graph keeps a
// topological order of its vertices (Pearce–Kelly), so an edge that already agrees with the order costs O(1) and
// any other edge only searches the vertices between its endpoints in that order, never the whole graph. The same
// order is what the wave scheduler executes.
//
// Thread-safety: none. The propagation engine serializes every call under its own lock.
#pragma once

#include <cstdint>
#include <memory>
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

class DependencyGraph {
 public:
  DependencyGraph();
  ~DependencyGraph();
  DependencyGraph(const DependencyGraph&) = delete;
  DependencyGraph& operator=(const DependencyGraph&) = delete;

  // Adds the edge from → to (adding missing vertices). Adding an edge that exists (same endpoints and kind) is a
  // no-op. Throws Error(InvalidArgument) for from == to, and for an edge that would close a cycle; the message
  // lists the cycle's pages in order, e.g. "p0:3 -> p0:7 -> p0:5 -> p0:3".
  // Parallel edges of different kinds between the same pair are allowed.
  void add_edge(PageId from, PageId to, DependencyKind kind = DependencyKind::Data);
  // Removes the edge; returns false if it did not exist. Vertices stay (remove_page removes them).
  bool remove_edge(PageId from, PageId to, DependencyKind kind = DependencyKind::Data);
  // Removes the page's vertex and all its edges; returns false if it had none.
  bool remove_page(PageId page);

  bool contains(PageId page) const noexcept;
  std::size_t page_count() const noexcept;
  std::size_t edge_count() const noexcept;

  // Direct inputs / dependents of a page, each with its edge kind, in insertion order of the edges.
  std::vector<Dependency> inputs_of(PageId page) const;
  std::vector<Dependency> dependents_of(PageId page) const;

  // All pages in a topological order (every edge goes from an earlier to a later page). Deterministic for a
  // given sequence of calls.
  std::vector<PageId> topological_order() const;
  // The position of a page in that order (smaller = earlier); throws Error(NotFound) if the page has no vertex.
  std::uint64_t order_index(PageId page) const;

  // Counts topology changes; the scheduler rebuilds its execution plan when it changes.
  std::uint64_t version() const noexcept;

  // Graphviz dot text: one node per page (label = page id plus the extra label given, if any), one edge per
  // dependency, styled by kind (data solid, control dashed, gpu_sync bold).
  std::string to_dot(const std::vector<std::pair<PageId, std::string>>& extra_labels = {}) const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace mmsb::detail
