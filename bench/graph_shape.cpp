#include "bench/graph_shape.hpp"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <fstream>
#include <sstream>
#include <stdexcept>
#include <unordered_map>

namespace mmsb::bench::graph {

std::size_t Shape::depth() const {
  std::vector<std::uint32_t> level(pages(), 0);
  std::uint32_t deepest = 0;
  for (std::size_t n = 0; n < nodes(); ++n) {
    std::uint32_t d = 0;
    for (std::uint32_t in : inputs_of(n)) d = std::max(d, level[in]);
    level[sources + n] = d + 1;
    deepest = std::max(deepest, d + 1);
  }
  return deepest;
}

void Shape::readers(std::vector<std::uint32_t>& offsets_out, std::vector<std::uint32_t>& readers_out) const {
  offsets_out.assign(pages() + 1, 0);
  for (std::uint32_t in : inputs) ++offsets_out[in + 1];
  for (std::size_t p = 0; p < pages(); ++p) offsets_out[p + 1] += offsets_out[p];
  readers_out.assign(inputs.size(), 0);
  std::vector<std::uint32_t> fill(offsets_out.begin(), offsets_out.end() - 1);
  for (std::size_t n = 0; n < nodes(); ++n) {
    for (std::uint32_t in : inputs_of(n)) readers_out[fill[in]++] = static_cast<std::uint32_t>(n);
  }
}

double Shape::mean_source_wave_visits(std::size_t samples) const {
  if (sources == 0 || samples == 0) return 0;
  std::vector<std::uint32_t> offsets_of, readers_of;
  readers(offsets_of, readers_of);
  std::vector<std::uint32_t> seen(nodes(), 0), queue;
  const std::size_t picks = std::min<std::size_t>(samples, sources);
  double visits = 0;
  for (std::size_t k = 0; k < picks; ++k) {
    const auto stamp = static_cast<std::uint32_t>(k + 1);
    queue.assign(1, static_cast<std::uint32_t>(k * sources / picks));  // a page index; nodes follow as pages
    for (std::size_t q = 0; q < queue.size(); ++q) {
      const std::uint32_t page = queue[q];
      if (page >= sources) visits += 1.0 + static_cast<double>(inputs_of(page - sources).size());
      for (std::uint32_t r = offsets_of[page]; r < offsets_of[page + 1]; ++r) {
        const std::uint32_t node = readers_of[r];
        if (seen[node] == stamp) continue;
        seen[node] = stamp;
        queue.push_back(sources + node);
      }
    }
  }
  return visits / static_cast<double>(picks);
}

namespace {

void add_node(Shape& s, std::span<const std::uint32_t> ins) {
  s.inputs.insert(s.inputs.end(), ins.begin(), ins.end());
  s.offsets.push_back(static_cast<std::uint32_t>(s.inputs.size()));
}

void check_size(std::size_t n, const char* what) {
  if (n == 0) throw std::invalid_argument(std::string(what) + ": --nodes must be at least 1");
  if (n > (std::size_t{1} << 30)) throw std::invalid_argument(std::string(what) + ": --nodes is above 2^30");
}

}  // namespace

Shape make_chain(std::size_t nodes) {
  check_size(nodes, "chain");
  Shape s;
  s.description = "chain of " + std::to_string(nodes);
  s.sources = 1;
  s.offsets.reserve(nodes + 1);
  s.inputs.reserve(nodes);
  for (std::size_t i = 0; i < nodes; ++i) {
    const std::uint32_t previous = static_cast<std::uint32_t>(i);  // page i: the source, then node i - 1
    add_node(s, {&previous, 1});
  }
  return s;
}

Shape make_tree(std::size_t leaves, unsigned fanin) {
  check_size(leaves, "tree");
  if (fanin < 2) throw std::invalid_argument("tree: --fanin must be at least 2");
  Shape s;
  s.description = "fan-in tree of " + std::to_string(leaves) + " leaves, fan-in " + std::to_string(fanin);
  s.sources = static_cast<std::uint32_t>(leaves);
  for (std::uint32_t i = 0; i < leaves; ++i) add_node(s, {&i, 1});
  std::size_t begin = s.sources, end = s.sources + leaves;  // pages of the current level
  std::vector<std::uint32_t> group;
  while (end - begin > 1) {
    for (std::size_t i = begin; i < end; i += fanin) {
      group.clear();
      for (std::size_t j = i; j < std::min<std::size_t>(i + fanin, end); ++j)
        group.push_back(static_cast<std::uint32_t>(j));
      add_node(s, group);
    }
    begin = end;
    end = s.pages();
  }
  return s;
}

Shape make_lattice(std::size_t nodes, unsigned fanin) {
  check_size(nodes, "lattice");
  if (fanin < 1) throw std::invalid_argument("lattice: --fanin must be at least 1");
  const std::size_t width = std::max<std::size_t>(1, static_cast<std::size_t>(std::llround(std::sqrt(double(nodes)))));
  const std::size_t rows = std::max<std::size_t>(1, nodes / width);
  Shape s;
  s.description =
      "lattice of " + std::to_string(rows) + " rows x " + std::to_string(width) + ", fan-in " + std::to_string(fanin);
  s.sources = static_cast<std::uint32_t>(width);
  std::vector<std::uint32_t> window;
  const long half = static_cast<long>(fanin) / 2;
  for (std::size_t r = 0; r < rows; ++r) {
    const std::size_t above = r == 0 ? 0 : s.sources + (r - 1) * width;  // first page of the row above
    for (std::size_t c = 0; c < width; ++c) {
      window.clear();
      for (long k = 0; k < static_cast<long>(fanin); ++k) {
        long col = static_cast<long>(c) - half + k;
        col = std::clamp<long>(col, 0, static_cast<long>(width) - 1);
        const auto page = static_cast<std::uint32_t>(above + static_cast<std::size_t>(col));
        if (std::find(window.begin(), window.end(), page) == window.end()) window.push_back(page);
      }
      add_node(s, window);
    }
  }
  return s;
}

Shape make_random(std::size_t nodes, unsigned fanin, std::uint64_t seed) {
  check_size(nodes, "random");
  if (fanin < 1) throw std::invalid_argument("random: --fanin must be at least 1");
  Shape s;
  s.description = "random DAG of " + std::to_string(nodes) + " nodes, fan-in " + std::to_string(fanin);
  s.sources = static_cast<std::uint32_t>(std::max<std::size_t>(1, nodes / 8));
  std::uint64_t x = seed * 0x9E3779B97F4A7C15ull + 1;
  auto next = [&x] {  // splitmix64
    std::uint64_t z = (x += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  };
  std::vector<std::uint32_t> picked;
  for (std::size_t n = 0; n < nodes; ++n) {
    const std::size_t earlier = s.sources + n;
    const std::size_t want = std::min<std::size_t>(fanin, earlier);
    picked.clear();
    while (picked.size() < want) {
      std::size_t page;
      if (picked.size() % 2 == 0) {
        const std::size_t span = std::min<std::size_t>(64, earlier);
        page = earlier - 1 - next() % span;
      } else {
        page = next() % earlier;
      }
      const auto p = static_cast<std::uint32_t>(page);
      if (std::find(picked.begin(), picked.end(), p) == picked.end()) picked.push_back(p);
    }
    add_node(s, picked);
  }
  return s;
}

Shape make_shape(const std::string& name, std::size_t nodes, unsigned fanin) {
  if (name == "chain") return make_chain(nodes);
  if (name == "tree") return make_tree(nodes, fanin);
  if (name == "lattice") return make_lattice(nodes, fanin);
  if (name == "random") return make_random(nodes, fanin);
  throw std::invalid_argument("unknown shape '" + name + "'; use chain, tree, lattice or random");
}

namespace {

// Named edges → a Shape in topological order (Kahn's algorithm, stable by first appearance).
Shape shape_from_edges(const std::vector<std::string>& names,
                       const std::vector<std::pair<std::uint32_t, std::uint32_t>>& edges, const std::string& path) {
  const std::size_t n = names.size();
  std::vector<std::vector<std::uint32_t>> ins(n), outs(n);
  for (auto [from, to] : edges) {
    if (from == to) throw std::runtime_error(path + ": page '" + names[from] + "' depends on itself");
    if (std::find(ins[to].begin(), ins[to].end(), from) != ins[to].end()) continue;
    ins[to].push_back(from);
    outs[from].push_back(to);
  }
  std::vector<std::uint32_t> order, pending(n);
  for (std::uint32_t v = 0; v < n; ++v) {
    pending[v] = static_cast<std::uint32_t>(ins[v].size());
    if (pending[v] == 0) order.push_back(v);
  }
  const std::size_t sources = order.size();
  for (std::size_t k = 0; k < order.size(); ++k) {
    for (std::uint32_t w : outs[order[k]])
      if (--pending[w] == 0) order.push_back(w);
  }
  if (order.size() != n) {
    for (std::uint32_t v = 0; v < n; ++v)
      if (pending[v] != 0) throw std::runtime_error(path + ": the graph has a cycle through page '" + names[v] + "'");
  }
  std::vector<std::uint32_t> index(n);
  for (std::size_t k = 0; k < n; ++k) index[order[k]] = static_cast<std::uint32_t>(k);
  Shape s;
  s.description = path + " (" + std::to_string(n) + " pages, " + std::to_string(edges.size()) + " edges)";
  s.sources = static_cast<std::uint32_t>(sources);
  std::vector<std::uint32_t> mapped;
  for (std::size_t k = sources; k < n; ++k) {
    mapped.clear();
    for (std::uint32_t in : ins[order[k]]) mapped.push_back(index[in]);
    add_node(s, mapped);
  }
  if (s.nodes() == 0) throw std::runtime_error(path + ": no page depends on another; nothing to propagate");
  return s;
}

struct Names {
  std::vector<std::string> names;
  std::unordered_map<std::string, std::uint32_t> index;
  std::uint32_t of(const std::string& name) {
    auto [it, added] = index.try_emplace(name, static_cast<std::uint32_t>(names.size()));
    if (added) names.push_back(name);
    return it->second;
  }
};

// Splits dot text into identifiers and the punctuation that matters ("->", ";", "{", "}", "[", "]", "=", ",").
std::vector<std::string> dot_tokens(const std::string& text, const std::string& path) {
  std::vector<std::string> out;
  std::size_t i = 0;
  while (i < text.size()) {
    const char c = text[i];
    if (std::isspace(static_cast<unsigned char>(c))) {
      ++i;
    } else if (c == '#' || (c == '/' && i + 1 < text.size() && text[i + 1] == '/')) {
      while (i < text.size() && text[i] != '\n') ++i;
    } else if (c == '/' && i + 1 < text.size() && text[i + 1] == '*') {
      const std::size_t end = text.find("*/", i + 2);
      if (end == std::string::npos) throw std::runtime_error(path + ": unterminated /* comment");
      i = end + 2;
    } else if (c == '"') {
      std::string id;
      ++i;
      while (i < text.size() && text[i] != '"') {
        if (text[i] == '\\' && i + 1 < text.size()) ++i;
        id += text[i++];
      }
      if (i >= text.size()) throw std::runtime_error(path + ": unterminated quoted identifier");
      ++i;
      out.push_back("\"" + id);  // marked as quoted: never a keyword
    } else if (c == '-' && i + 1 < text.size() && text[i + 1] == '>') {
      out.emplace_back("->");
      i += 2;
    } else if (c == '-' && i + 1 < text.size() && text[i + 1] == '-') {
      throw std::runtime_error(path + ": undirected edge '--'; dependency graphs need '->'");
    } else if (std::string(";{}[]=,").find(c) != std::string::npos) {
      out.emplace_back(1, c);
      ++i;
    } else {
      std::string id;
      while (i < text.size() && !std::isspace(static_cast<unsigned char>(text[i])) &&
             std::string(";{}[]=,\"#").find(text[i]) == std::string::npos &&
             !(text[i] == '-' && i + 1 < text.size() && (text[i + 1] == '>' || text[i + 1] == '-')))
        id += text[i++];
      out.push_back(id);
    }
  }
  return out;
}

Shape load_dot(const std::string& text, const std::string& path) {
  const std::vector<std::string> tokens = dot_tokens(text, path);
  Names names;
  std::vector<std::pair<std::uint32_t, std::uint32_t>> edges;
  auto name_of = [](const std::string& token) { return token[0] == '"' ? token.substr(1) : token; };
  auto is_keyword = [](const std::string& t) {
    return t == "digraph" || t == "graph" || t == "strict" || t == "node" || t == "edge" || t == "subgraph";
  };
  std::size_t i = 0;
  std::vector<std::string> statement;
  auto flush = [&] {
    // statement: id ( -> id )*, attributes already dropped
    if (statement.empty()) return;
    if (statement.size() >= 2 && statement[1] == "=") {  // graph attribute a = b
      statement.clear();
      return;
    }
    if (is_keyword(statement[0])) {
      statement.clear();
      return;
    }
    std::vector<std::uint32_t> chain;
    for (std::size_t k = 0; k < statement.size(); ++k) {
      if (k % 2 == 1) {
        if (statement[k] != "->")
          throw std::runtime_error(path + ": expected '->' near '" + name_of(statement[k]) + "'");
        continue;
      }
      chain.push_back(names.of(name_of(statement[k])));
    }
    for (std::size_t k = 1; k < chain.size(); ++k) edges.emplace_back(chain[k - 1], chain[k]);
    statement.clear();
  };
  while (i < tokens.size()) {
    const std::string& t = tokens[i];
    if (t == "[") {  // attribute list: skip to the matching ]
      while (i < tokens.size() && tokens[i] != "]") ++i;
      ++i;
      continue;
    }
    if (t == ";" || t == "{" || t == "}") {
      if (t == "{" && !statement.empty() && !is_keyword(statement[0]))
        throw std::runtime_error(path +
                                 ": subgraph edge groups ({ a b } -> c) are not supported; list edges one by one");
      flush();
      statement.clear();
      ++i;
      continue;
    }
    if (t == ",") {
      ++i;
      continue;
    }
    // A new identifier right after a complete statement (no ';' between statements) starts a new one.
    if (!statement.empty() && t != "->" && t != "=" && statement.back() != "->" && statement.back() != "=") flush();
    statement.push_back(t);
    ++i;
  }
  flush();
  return shape_from_edges(names.names, edges, path);
}

Shape load_edge_list(std::istream& in, const std::string& path) {
  Names names;
  std::vector<std::pair<std::uint32_t, std::uint32_t>> edges;
  std::string line;
  std::size_t number = 0;
  while (std::getline(in, line)) {
    ++number;
    if (auto hash = line.find('#'); hash != std::string::npos) line.erase(hash);
    std::istringstream fields(line);
    std::string from, to, extra;
    if (!(fields >> from)) continue;
    if (!(fields >> to) || (fields >> extra)) {
      throw std::runtime_error(path + ":" + std::to_string(number) + ": expected two page names ('from to')");
    }
    edges.emplace_back(names.of(from), names.of(to));
  }
  return shape_from_edges(names.names, edges, path);
}

}  // namespace

Shape load_shape(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw std::runtime_error("cannot open " + path);
  const bool dot = path.size() > 4 && (path.ends_with(".dot") || path.ends_with(".gv"));
  if (dot) {
    std::stringstream text;
    text << in.rdbuf();
    return load_dot(text.str(), path);
  }
  return load_edge_list(in, path);
}

std::vector<std::uint64_t> reference_values(const Shape& shape, std::span<const std::uint64_t> source_values) {
  std::vector<std::uint64_t> value(shape.pages(), 0);
  std::copy(source_values.begin(), source_values.end(), value.begin());
  for (std::size_t n = 0; n < shape.nodes(); ++n) {
    std::uint64_t sum = 0;
    for (std::uint32_t in : shape.inputs_of(n)) sum += value[in];
    value[shape.sources + n] = sum;
  }
  return value;
}

std::uint64_t busy_work(std::uint64_t seed, std::uint64_t iterations) noexcept {
  std::uint64_t x = seed;
  for (std::uint64_t i = 0; i < iterations; ++i) {
    x ^= x >> 31;
    x *= 0x9E3779B97F4A7C15ull;
    x += i;
  }
  return x;
}

std::uint64_t iterations_for_ns(double ns) {
  if (ns <= 0) return 0;
  static const double ns_per_iteration = [] {
    constexpr std::uint64_t kProbe = 2'000'000;
    double best = 1e300;
    volatile std::uint64_t sink = 0;
    for (int r = 0; r < 3; ++r) {
      auto start = std::chrono::steady_clock::now();
      sink = sink + busy_work(static_cast<std::uint64_t>(r) + 1, kProbe);
      best = std::min(best, std::chrono::duration<double, std::nano>(std::chrono::steady_clock::now() - start).count());
    }
    return best / static_cast<double>(kProbe);
  }();
  return std::max<std::uint64_t>(1, static_cast<std::uint64_t>(ns / ns_per_iteration));
}

}  // namespace mmsb::bench::graph
