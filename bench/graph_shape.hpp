// bench/graph_shape.hpp — the dependency-graph shapes of `mmsb-bench graph` and the scale_* keys.
//
// A Shape is a DAG of pages in topological order: pages [0, sources) are sources (no inputs); page sources + i is
// node i, which reads inputs[offsets[i], offsets[i + 1]) (page indices, all smaller than its own). Every
// implementation (mmsb, raw oneTBB, Taskflow) builds the same Shape and computes the same rule, so their results
// can be checked against reference_values():
//   each page holds `words` 64-bit words; word j of a node = the sum (mod 2^64) of word j of its inputs.
//
// Generators:
//   chain    one source, `nodes` nodes each reading the previous page
//   tree     `leaves` sources, one map node per source (reads it), then sum nodes of `fanin` inputs level by level
//            up to one root: about leaves * fanin / (fanin - 1) nodes (the fan-in tree of issue 18)
//   lattice  a 2-D stencil: width w = round(sqrt(nodes)) sources, then rows of w nodes, node (r, c) reading the
//            `fanin` pages of the row above centred on column c (clamped at the edges)
//   random   nodes/8 sources (at least one), then nodes each reading `fanin` distinct earlier pages, half of them
//            from the previous 64 pages and half uniformly (a seeded, deterministic DAG)
// Files: an edge list ("from to" per line, '#' comments) or a Graphviz dot file ("a -> b" statements); names are
// arbitrary, pages with no inputs become sources, and a cycle is an error naming a page on it.
//
// Thread-safety: plain values and pure functions.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

namespace mmsb::bench::graph {

struct Shape {
  std::string description;
  std::uint32_t sources = 0;
  std::vector<std::uint32_t> offsets{0};
  std::vector<std::uint32_t> inputs;
  std::size_t nodes() const noexcept { return offsets.size() - 1; }
  std::size_t pages() const noexcept { return sources + nodes(); }
  std::size_t edges() const noexcept { return inputs.size(); }
  std::span<const std::uint32_t> inputs_of(std::size_t node) const noexcept {
    return {inputs.data() + offsets[node], offsets[node + 1] - offsets[node]};
  }
  // The length of the longest path from a source to a node, in nodes.
  std::size_t depth() const;
  // The readers of each page (pages() + 1 offsets into the second vector, node indices), for single-source waves.
  void readers(std::vector<std::uint32_t>& offsets_out, std::vector<std::uint32_t>& readers_out) const;
  // What a single-source wave must visit: the nodes a change of one source reaches plus those nodes' inputs,
  // averaged over up to `samples` evenly spaced sources (the work a wave costing O(nodes reached x their inputs)
  // is proportional to; the scale keys divide a small wave's time by it).
  double mean_source_wave_visits(std::size_t samples = 1000) const;
};

Shape make_chain(std::size_t nodes);
Shape make_tree(std::size_t leaves, unsigned fanin);
Shape make_lattice(std::size_t nodes, unsigned fanin);
Shape make_random(std::size_t nodes, unsigned fanin, std::uint64_t seed = 42);
// By name: "chain", "tree" (`nodes` = leaves), "lattice", "random". Throws std::invalid_argument for others.
Shape make_shape(const std::string& name, std::size_t nodes, unsigned fanin);
// Reads an edge list or (by the .dot/.gv extension) a Graphviz dot file. Throws std::runtime_error.
Shape load_shape(const std::string& path);

// Word 0 of every page after a wave in which source s holds source_values[s] in every word.
std::vector<std::uint64_t> reference_values(const Shape& shape, std::span<const std::uint64_t> source_values);

// ~ns of deterministic integer work per call (calibrated once per process); the result must be consumed.
std::uint64_t busy_work(std::uint64_t seed, std::uint64_t iterations) noexcept;
std::uint64_t iterations_for_ns(double ns);

}  // namespace mmsb::bench::graph
