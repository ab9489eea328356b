// mmsb/topology.hpp — the dependency graph as plain values: edge and node kinds, and the description of a node
// (its output, inputs, kind and registered function name) that is enough to declare it again.
//
// These are what a checkpoint stores and what Propagator::nodes() and ordering_edges() return. They live apart
// from mmsb/graph.hpp so that the file formats (serialize/) can describe a graph without depending on the
// propagation engine.
//
// Thread-safety: plain values; no shared state.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "mmsb/page_id.hpp"

namespace mmsb {

// DATA edges carry a node's inputs; CONTROL and GPU_SYNC edges only order two nodes within a wave.
enum class EdgeKind : std::uint8_t { Data = 0, Control = 1, GpuSync = 2 };

// Maps an input byte range of a passthrough node to the output: bytes [input_offset, input_offset + length) of
// the input land at output_offset; input bytes outside that window are not forwarded. The default forwards all.
struct ByteRemap {
  std::uint64_t input_offset = 0;
  std::uint64_t length = ~std::uint64_t{0};
  std::uint64_t output_offset = 0;
};

enum class NodeKind : std::uint8_t { Map = 0, Passthrough = 1, Incremental = 2 };

struct NodeOptions {
  bool always_changes = false;  // map only: skip the cutoff diff; the output is treated as fully changed
  std::string name;             // shown in dot export and errors; defaults to the function name, if registered
  // The output page already holds this node's value (a restored checkpoint): the node is not stale when declared,
  // so the next wave runs it only if its inputs change. Not stored by checkpoints.
  bool output_is_current = false;
};

// How a derived page is computed (Propagator::nodes()); enough to declare the node again.
struct NodeDescription {
  PageId output;
  NodeKind kind = NodeKind::Map;
  std::vector<PageId> inputs;  // in declaration order
  std::string function;        // the registered function name; empty when the function was passed directly
  NodeOptions options;
  ByteRemap remap;           // Passthrough only
  bool has_rebuild = false;  // Incremental only: it has a rebuild function (not stored by checkpoints)
};

// An ordering-only edge (CONTROL or GPU_SYNC).
struct OrderingEdge {
  PageId from;
  PageId to;
  EdgeKind kind = EdgeKind::Control;
};

}  // namespace mmsb
