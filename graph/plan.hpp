// graph/plan.hpp — the execution plan of one graph version (internal to mmsb; built in plan.cpp, run by wave.cpp).
//
// Thread-safety: built and written under the engine lock by the thread running the wave; the chunks of a parallel
// wave only read it (the caller publishes it with the wave number, see graph/engine.hpp).
#pragma once

#include <boost/graph/compressed_sparse_row_graph.hpp>

#include <cstdint>
#include <vector>

#include "graph/engine.hpp"

namespace mmsb::detail {

struct Plan {
  // The data successors, as positions, of the positions with more than one: a row each (Step::next), so a graph
  // whose nodes each feed one node (trees, chains) keeps no row at all.
  using Successors = boost::compressed_sparse_row_graph<boost::directedS, boost::no_property, boost::no_property,
                                                        boost::no_property, std::uint32_t, std::uint32_t>;
  // What a wave needs of one position, in one place: in a large graph each array a wave indexes by position costs a
  // cache (and TLB) miss per reached node, and the walk that finds a wave's nodes pays them one after another.
  static constexpr std::uint32_t kNoSuccessor = kNoPosition;
  static constexpr std::uint32_t kManySuccessors = kManyPositions;  // in Slot::reader
  static constexpr std::uint32_t kRow = 1u << 31;                   // Step::next: kRow | its row in `successors`
  static constexpr std::uint32_t kMaxPositions = kRow - 2;
  struct Step {
    std::uint32_t reached = 0;          // the last wave that reached this position
    NodeIndex node = kNoNode;           // the node at this position
    std::uint32_t next = kNoSuccessor;  // its only data successor, kNoSuccessor, or kRow | its successors' row
    // Node::inputs, copied so the walk that reaches this position can fetch the node's inputs at the same time as
    // the node itself instead of one miss later. Only a prefetch reads it (a stale copy costs speed, never a result).
    std::uint32_t inputs = 0;
    // The only data successor of `next`, when both are single: the walk fetches that step while it waits for
    // `next`'s, so a path through a tree or chain pays one miss per two levels. Read only by a prefetch.
    std::uint32_t after_next = kNoSuccessor;
  };
  std::uint64_t version = ~std::uint64_t{0};  // the structure_version it was built for
  std::vector<Step> steps;                    // by position: level by level
  std::vector<std::uint32_t> level_begin;     // level L holds positions [level_begin[L], level_begin[L + 1])
  std::uint32_t widest_level = 0;             // the most positions any level holds
  // Nodes whose inputs are not declared in PageId order (no Node::kLockOrder): only those get the wave pipeline's
  // slot, record and byte stages, so a plan without any (trees, stencils, chains) runs without them.
  std::uint32_t unordered_nodes = 0;
  Successors successors;
  // Each page's readers are in its Slot (Slot::reader: the only reader's position, kNoSuccessor, kRow | its
  // readers' row here (a page no node computes, read by several), or kManySuccessors (a node's output read by
  // several: then the wave asks the DependencyGraph)). A wave starts from changed pages: this spares it four
  // dependent misses per reader (the page's edge list, the edge, the reader's slot and node) in a large graph.
  Successors source_readers;

  std::size_t positions() const noexcept { return steps.size(); }
  std::size_t levels() const noexcept { return level_begin.size() - 1; }
  std::size_t memory_bytes() const noexcept;
};

}  // namespace mmsb::detail
