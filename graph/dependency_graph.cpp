// graph/dependency_graph.cpp — the dependency index and its incremental topological order.
//
// Order: every vertex carries an order index `ord`; all edges go from a smaller to a larger index. A vertex created
// for an edge takes a fresh index below all others if it is the edge's source, above all others if it is the
// target, so an edge with a new endpoint never needs a reorder (building a chain from its end backwards stays
// linear). add_edge(x → y) follows Pearce & Kelly, "A dynamic topological sort algorithm for directed acyclic
// graphs" (JEA 2006):
//   * ord[x] < ord[y]: the order already agrees; nothing to do.
//   * otherwise the affected region is the vertices with ord in [ord[y], ord[x]]. A forward search from y visits
//     only vertices w with ord[w] <= ord[x]; reaching x means y already reaches x, so the edge closes a cycle and
//     is refused (nothing has changed yet). A backward search from x visits only vertices w with
//     ord[w] >= ord[y]. The two visited sets are disjoint; their order indices are pooled, sorted, and handed out
//     again: first to the backward set, then to the forward set, each in its previous relative order. Vertices
//     outside the two sets keep their index, so the order stays valid for every other edge.
// Removing edges or vertices never invalidates the order; the gaps left in the indices are harmless.
// Both searches are iterative (explicit stacks) because chains can be very long; the vertices they visit are
// marked in a small hash table that is cleared per search, so a search costs what it visits.
//
// Edge pool: each list's block holds 2^k entries (k = its size class); a full list moves to a block twice as large
// and a list that shrinks to a power of two hands back its upper half. Freed blocks are reused by size class.
#include "graph/dependency_graph.hpp"

#include <algorithm>
#include <bit>
#include <cassert>
#include <cstddef>
#include <unordered_map>
#include <utility>

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

bool valid_kind(DependencyKind kind) noexcept {
  return kind == DependencyKind::Data || kind == DependencyKind::Control || kind == DependencyKind::GpuSync;
}

std::size_t hash_page(PageId page) noexcept {
  std::uint64_t z = page.value() * 0x9E3779B97F4A7C15ull;
  z ^= z >> 29;
  z *= 0xBF58476D1CE4E5B9ull;
  return static_cast<std::size_t>(z ^ (z >> 32));
}

std::size_t hash_vertex(VertexId v) noexcept { return static_cast<std::size_t>((v * 0x9E3779B1u) ^ (v >> 16)); }

unsigned size_class(std::uint32_t count) noexcept {
  return count <= 1 ? 0u : static_cast<unsigned>(std::bit_width(count - 1));
}

// std::has_single_bit compiles to a libgcc call without -mpopcnt (the baseline x86-64 build); this is two
// instructions, and list_push runs once per edge.
constexpr bool is_power_of_two(std::uint32_t n) noexcept { return n != 0 && (n & (n - 1)) == 0; }

// The pool entries an edge list of `count` entries takes (at most) when it grows by `added`: the block it moves to,
// if it must move (list_push and list_append). Exact, so a reserved bulk build never outgrows its reserve.
std::size_t list_growth(std::uint32_t count, std::uint32_t added) noexcept {
  const unsigned need = size_class(count + added);
  if (count == 0) return std::size_t{1} << need;
  return need > size_class(count) ? std::size_t{1} << need : 0;
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

DependencyGraph::DependencyGraph() = default;
DependencyGraph::~DependencyGraph() = default;

// --- PageId → vertex ------------------------------------------------------------------------------------------

std::size_t DependencyGraph::slot_of(PageId page) const noexcept {
  const std::size_t mask = index_.size() - 1;
  for (std::size_t i = hash_page(page) & mask;; i = (i + 1) & mask) {
    const VertexId v = index_[i];
    if (v == kNoVertex || page_[v] == page) return i;
  }
}

VertexId DependencyGraph::find(PageId page) const {
  ensure_index();
  return index_[slot_of(page)];
}

void DependencyGraph::ensure_index() const {
  if (indexed_) return;
  index_.assign(std::max<std::size_t>(64, std::bit_ceil(2 * live_vertices_ + 2)), kNoVertex);
  for (VertexId v = 0; v < page_.size(); ++v)
    if (page_[v].valid()) index_[slot_of(page_[v])] = v;
  indexed_ = true;
}

void DependencyGraph::index_grow() {
  std::vector<VertexId> old = std::move(index_);
  index_.assign(std::max<std::size_t>(64, old.size() * 2), kNoVertex);
  for (VertexId v : old)
    if (v != kNoVertex) index_[slot_of(page_[v])] = v;
}

void DependencyGraph::index_insert(VertexId v) {
  if (!indexed_) return;
  if (2 * (live_vertices_ + 1) > index_.size()) index_grow();
  index_[slot_of(page_[v])] = v;
}

void DependencyGraph::index_erase(PageId page) {
  if (!indexed_) return;
  // Backward-shift deletion keeps every probe sequence unbroken without tombstones.
  const std::size_t mask = index_.size() - 1;
  std::size_t hole = slot_of(page);
  index_[hole] = kNoVertex;
  for (std::size_t i = (hole + 1) & mask; index_[i] != kNoVertex; i = (i + 1) & mask) {
    const std::size_t home = hash_page(page_[index_[i]]) & mask;
    // Move entry i into the hole when its home lies cyclically outside (hole, i].
    const bool movable = hole <= i ? (home <= hole || home > i) : (home <= hole && home > i);
    if (movable) {
      index_[hole] = index_[i];
      index_[i] = kNoVertex;
      hole = i;
    }
  }
}

// --- vertices -------------------------------------------------------------------------------------------------

VertexId DependencyGraph::create_vertex(PageId page, Placement where) {
  VertexId v;
  if (!free_vertices_.empty()) {
    v = free_vertices_.back();
    free_vertices_.pop_back();
  } else {
    if (page_.size() >= kMaxVertices) {
      throw Error(ErrorCode::ResourceExhausted, "the dependency graph holds " + std::to_string(kMaxVertices) +
                                                    " pages, its limit; remove nodes before adding more");
    }
    v = static_cast<VertexId>(page_.size());
    page_.emplace_back();
    ord_.emplace_back();
    out_.emplace_back();
    in_.emplace_back();
  }
  page_[v] = page;
  ord_[v] = where == Placement::First ? low_ord_-- : high_ord_++;
  out_[v] = {};
  in_[v] = {};
  try {
    index_insert(v);
  } catch (...) {
    page_[v] = PageId();
    free_vertices_.push_back(v);
    throw;
  }
  ++live_vertices_;
  return v;
}

VertexId DependencyGraph::vertex(PageId page, Placement where) {
  const VertexId v = find(page);
  return v != kNoVertex ? v : create_vertex(page, where);
}

void DependencyGraph::free_vertex(VertexId v) {
  index_erase(page_[v]);
  page_[v] = PageId();
  free_vertices_.push_back(v);
  --live_vertices_;
}

bool DependencyGraph::contains(PageId page) const { return find(page) != kNoVertex; }

VertexId DependencyGraph::add_vertex(PageId page, Placement where) { return create_vertex(page, where); }

void DependencyGraph::reserve(std::size_t vertices, std::size_t edges) {
  const std::size_t total = page_.size() + vertices;
  page_.reserve(total);
  ord_.reserve(total);
  out_.reserve(total);
  in_.reserve(total);
  ensure_pool(2 * edges);
  while (indexed_ && 2 * (live_vertices_ + vertices) > index_.size()) index_grow();
}

std::size_t DependencyGraph::memory_bytes() const noexcept {
  std::size_t free_lists = 0;
  for (const auto& list : free_blocks_) free_lists += list.capacity() * sizeof(std::uint32_t);
  return page_.capacity() * sizeof(PageId) + ord_.capacity() * sizeof(std::uint64_t) +
         (out_.capacity() + in_.capacity()) * sizeof(EdgeList) + pool_.capacity() * sizeof(std::uint32_t) +
         free_vertices_.capacity() * sizeof(VertexId) + index_.capacity() * sizeof(VertexId) + free_lists;
}

// --- edge lists -----------------------------------------------------------------------------------------------

std::uint32_t DependencyGraph::pool_allocate(unsigned cls) {
  if (cls < free_blocks_.size() && !free_blocks_[cls].empty()) {
    const std::uint32_t begin = free_blocks_[cls].back();
    free_blocks_[cls].pop_back();
    return begin;
  }
  const std::size_t begin = pool_used_, block = std::size_t{1} << cls;
  if (begin + block > ~std::uint32_t{0}) {
    throw Error(ErrorCode::ResourceExhausted, "the dependency graph's edge pool is full (2^32 entries)");
  }
  ensure_pool(block);
  pool_.resize(begin + block);  // within the capacity: touches only the entries handed out
  pool_used_ = begin + block;
  return static_cast<std::uint32_t>(begin);
}

void DependencyGraph::pool_free(std::uint32_t begin, unsigned cls) {
  if (free_blocks_.size() <= cls) free_blocks_.resize(cls + 1);
  free_blocks_[cls].push_back(begin);
}

void DependencyGraph::list_push(EdgeList& list, std::uint32_t entry) {
  if (list.count == 0) {
    list.begin = pool_allocate(0);
  } else if (is_power_of_two(list.count)) {  // full: move to a block twice as large
    const unsigned cls = size_class(list.count);
    const std::uint32_t moved = pool_allocate(cls + 1);
    std::copy_n(pool_.begin() + list.begin, list.count, pool_.begin() + moved);
    pool_free(list.begin, cls);
    list.begin = moved;
  }
  pool_[list.begin + list.count++] = entry;
}

// Appends `entries` with at most one move of the list (push_back would move it at every power of two).
void DependencyGraph::list_append(EdgeList& list, std::span<const std::uint32_t> entries) {
  if (entries.empty()) return;
  const std::uint32_t final_count = list.count + static_cast<std::uint32_t>(entries.size());
  const unsigned have = list.count == 0 ? 0u : size_class(list.count);
  const unsigned need = size_class(final_count);
  if (list.count == 0 || need > have) {
    const std::uint32_t moved = pool_allocate(need);
    std::copy_n(pool_.begin() + list.begin, list.count, pool_.begin() + moved);
    if (list.count > 0) pool_free(list.begin, have);
    list.begin = moved;
  }
  std::copy(entries.begin(), entries.end(), pool_.begin() + list.begin + list.count);
  list.count = final_count;
}

void DependencyGraph::list_erase(EdgeList& list, std::uint32_t entry) {
  auto first = pool_.begin() + list.begin, last = first + list.count;
  auto it = std::find(first, last, entry);
  assert(it != last);
  std::copy(it + 1, last, it);  // keeps insertion order
  const std::uint32_t before = list.count--;
  if (list.count == 0) {
    pool_free(list.begin, size_class(before));
  } else if (is_power_of_two(list.count) && size_class(before) > size_class(list.count)) {
    // Shrunk to a power of two: the block's upper half is free.
    pool_free(list.begin + list.count, size_class(list.count));
  }
}

bool DependencyGraph::has_edge(VertexId from, VertexId to, DependencyKind kind) const noexcept {
  // Scan the shorter list: a page with a huge fan-out or fan-in costs nothing to its other edges.
  const bool by_out = out_[from].count <= in_[to].count;
  const EdgeList& list = by_out ? out_[from] : in_[to];
  const std::uint32_t entry = pack(by_out ? to : from, kind);
  const std::uint32_t* e = pool_.data() + list.begin;
  return std::find(e, e + list.count, entry) != e + list.count;
}

void DependencyGraph::link(VertexId from, VertexId to, DependencyKind kind) {
  // Room for both lists' growth first, so a failed allocation leaves neither list changed.
  ensure_pool(list_growth(out_[from].count, 1) + list_growth(in_[to].count, 1));
  list_push(out_[from], pack(to, kind));
  list_push(in_[to], pack(from, kind));
  ++edges_;
  ++version_;
}

// --- the order ------------------------------------------------------------------------------------------------

bool DependencyGraph::mark(VertexId v, VertexId parent) {
  if (2 * (marked_ + 1) > mark_.size()) {
    std::vector<std::pair<VertexId, VertexId>> old = std::move(mark_);
    mark_.assign(std::max<std::size_t>(64, old.size() * 2), {kNoVertex, kNoVertex});
    marked_ = 0;
    for (const auto& [w, p] : old)
      if (w != kNoVertex) mark(w, p);
  }
  const std::size_t mask = mark_.size() - 1;
  for (std::size_t i = hash_vertex(v) & mask;; i = (i + 1) & mask) {
    if (mark_[i].first == v) return false;
    if (mark_[i].first == kNoVertex) {
      mark_[i] = {v, parent};
      ++marked_;
      return true;
    }
  }
}

VertexId DependencyGraph::parent_of(VertexId v) const {
  const std::size_t mask = mark_.size() - 1;
  for (std::size_t i = hash_vertex(v) & mask;; i = (i + 1) & mask) {
    if (mark_[i].first == v) return mark_[i].second;
    if (mark_[i].first == kNoVertex) return kNoVertex;
  }
}

void DependencyGraph::clear_marks(std::size_t expected) {
  // A table much larger than the search ahead is shrunk, so a search costs what it visits.
  const std::size_t want = std::max<std::size_t>(64, std::bit_ceil(2 * expected + 2));
  if (mark_.size() > 4 * want || mark_.empty()) {
    mark_.assign(want, {kNoVertex, kNoVertex});
  } else {
    std::fill(mark_.begin(), mark_.end(), std::pair<VertexId, VertexId>{kNoVertex, kNoVertex});
  }
  marked_ = 0;
}

// Forward search from y over vertices with ord <= ord[x]. Returns true if x is reached (the edge x → y would
// close a cycle); the search then stops and parent links lead back from x to y. Otherwise `forward_` holds every
// vertex visited.
bool DependencyGraph::search_forward(VertexId y, VertexId x) {
  const std::uint64_t bound = ord_[x];
  clear_marks(stack_.size() + forward_.size());
  forward_.clear();
  stack_.clear();
  mark(y, kNoVertex);
  stack_.push_back(y);
  while (!stack_.empty()) {
    const VertexId v = stack_.back();
    stack_.pop_back();
    forward_.push_back(v);
    const std::uint32_t* e = pool_.data() + out_[v].begin;
    for (std::uint32_t i = 0, n = out_[v].count; i < n; ++i) {
      const VertexId w = edge_vertex(e[i]);
      if (w == x) {
        mark(x, v);
        return true;
      }
      if (ord_[w] > bound) continue;
      if (mark(w, v)) stack_.push_back(w);
    }
  }
  return false;
}

// Backward search from x over vertices with ord >= ord[y]; fills `backward_`.
void DependencyGraph::search_backward(VertexId x, VertexId y) {
  const std::uint64_t bound = ord_[y];
  clear_marks(forward_.size());
  backward_.clear();
  stack_.clear();
  mark(x, kNoVertex);
  stack_.push_back(x);
  while (!stack_.empty()) {
    const VertexId v = stack_.back();
    stack_.pop_back();
    backward_.push_back(v);
    const std::uint32_t* e = pool_.data() + in_[v].begin;
    for (std::uint32_t i = 0, n = in_[v].count; i < n; ++i) {
      const VertexId w = edge_vertex(e[i]);
      if (ord_[w] < bound) continue;
      if (mark(w, v)) stack_.push_back(w);
    }
  }
}

// After a successful search: the backward set moves before the forward set, each keeping its relative order,
// using the same pool of order indices.
void DependencyGraph::reorder() {
  auto by_ord = [this](VertexId a, VertexId b) { return ord_[a] < ord_[b]; };
  std::sort(backward_.begin(), backward_.end(), by_ord);
  std::sort(forward_.begin(), forward_.end(), by_ord);
  pool_ord_.clear();
  for (VertexId v : backward_) pool_ord_.push_back(ord_[v]);
  for (VertexId v : forward_) pool_ord_.push_back(ord_[v]);
  std::sort(pool_ord_.begin(), pool_ord_.end());
  std::size_t i = 0;
  for (VertexId v : backward_) ord_[v] = pool_ord_[i++];
  for (VertexId v : forward_) ord_[v] = pool_ord_[i++];
}

// "x -> y -> ... -> x" from the parent links left by a forward search that reached x.
void DependencyGraph::throw_cycle(VertexId x, VertexId y) const {
  std::vector<VertexId> path;  // x, parent(x), ..., y
  for (VertexId v = x;; v = parent_of(v)) {
    path.push_back(v);
    if (v == y || path.size() > page_.size()) break;
  }
  std::string text = page_[x].to_string();
  for (auto it = path.rbegin(); it != path.rend(); ++it) {
    text += " -> ";
    text += page_[*it].to_string();
  }
  throw Error(ErrorCode::InvalidArgument, "dependency would close a cycle: " + text +
                                              "; remove one of these dependencies first or derive into a different "
                                              "page");
}

// --- edges ----------------------------------------------------------------------------------------------------

void DependencyGraph::check_edge(PageId from, PageId to, DependencyKind kind) const {
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
}

// Grows the capacity only: entries are written (zeroed) when handed out, so a bulk build's generous reserve costs
// address space, not resident memory.
void DependencyGraph::ensure_pool(std::size_t more) {
  if (pool_used_ + more > pool_.capacity()) {
    pool_.reserve(std::max(pool_used_ + more, pool_.capacity() + pool_.capacity() / 2));
  }
}

void DependencyGraph::order_edge(VertexId x, VertexId y) {
  if (ord_[x] < ord_[y]) return;
  if (search_forward(y, x)) throw_cycle(x, y);
  search_backward(x, y);
  reorder();
}

bool DependencyGraph::add_edge(VertexId x, VertexId y, DependencyKind kind) {
  check_edge(page_[x], page_[y], kind);
  if (has_edge(x, y, kind)) return false;
  order_edge(x, y);
  assert(ord_[x] < ord_[y]);
  link(x, y, kind);
  return true;
}

std::size_t DependencyGraph::add_edges(std::span<const VertexId> from, VertexId to, DependencyKind kind) {
  // Edges into one vertex cannot close a cycle together (a cycle through two of them would pass `to` twice), so
  // each is checked against the graph as it is; the reorders this does are valid orders whether or not the edges
  // are then added. Nothing is linked until every edge passed.
  batch_.clear();
  for (const VertexId x : from) {
    check_edge(page_[x], page_[to], kind);
    const std::uint32_t entry = pack(x, kind);
    if (std::find(batch_.begin(), batch_.end(), entry) != batch_.end() || has_edge(x, to, kind)) continue;
    order_edge(x, to);
    batch_.push_back(entry);
  }
  if (batch_.empty()) return 0;
  std::size_t room = list_growth(in_[to].count, static_cast<std::uint32_t>(batch_.size()));
  for (const std::uint32_t entry : batch_) room += list_growth(out_[edge_vertex(entry)].count, 1);
  ensure_pool(room);
  for (const std::uint32_t entry : batch_) list_push(out_[edge_vertex(entry)], pack(to, kind));
  list_append(in_[to], batch_);
  edges_ += batch_.size();
  ++version_;
  return batch_.size();
}

void DependencyGraph::add_edge(PageId from, PageId to, DependencyKind kind) {
  check_edge(from, to, kind);
  VertexId x = find(from), y = find(to);
  // A cycle needs both endpoints to exist already, so a missing endpoint is created only once the edge is known to
  // be acceptable, and a refused edge leaves the graph (vertices, order, version) exactly as it was.
  if (x != kNoVertex && y != kNoVertex) {
    add_edge(x, y, kind);
    return;
  }
  const bool created_x = x == kNoVertex;
  if (created_x) x = create_vertex(from, Placement::First);
  try {
    if (y == kNoVertex) y = create_vertex(to, Placement::Last);
    link(x, y, kind);
  } catch (...) {
    if (created_x) free_vertex(x);
    throw;
  }
}

bool DependencyGraph::remove_edge(VertexId from, VertexId to, DependencyKind kind) {
  if (!has_edge(from, to, kind)) return false;
  list_erase(out_[from], pack(to, kind));
  list_erase(in_[to], pack(from, kind));
  --edges_;
  ++version_;
  return true;
}

bool DependencyGraph::remove_edge(PageId from, PageId to, DependencyKind kind) {
  const VertexId x = find(from), y = find(to);
  if (x == kNoVertex || y == kNoVertex || !valid_kind(kind)) return false;
  return remove_edge(x, y, kind);
}

bool DependencyGraph::remove_page(PageId page) {
  const VertexId v = find(page);
  if (v == kNoVertex) return false;
  while (out_[v].count > 0) {
    const std::uint32_t entry = pool_[out_[v].begin + out_[v].count - 1];
    remove_edge(v, edge_vertex(entry), edge_kind(entry));
  }
  while (in_[v].count > 0) {
    const std::uint32_t entry = pool_[in_[v].begin + in_[v].count - 1];
    remove_edge(edge_vertex(entry), v, edge_kind(entry));
  }
  free_vertex(v);
  ++version_;
  return true;
}

// --- queries --------------------------------------------------------------------------------------------------

std::vector<Dependency> DependencyGraph::inputs_of(PageId page) const {
  std::vector<Dependency> out;
  const VertexId v = find(page);
  if (v == kNoVertex) return out;
  out.reserve(in_[v].count);
  for_each_input(v, [&](VertexId w, DependencyKind kind) { out.push_back({page_[w], page, kind}); });
  return out;
}

std::vector<Dependency> DependencyGraph::dependents_of(PageId page) const {
  std::vector<Dependency> out;
  const VertexId v = find(page);
  if (v == kNoVertex) return out;
  out.reserve(out_[v].count);
  for_each_dependent(v, [&](VertexId w, DependencyKind kind) { out.push_back({page, page_[w], kind}); });
  return out;
}

std::vector<VertexId> DependencyGraph::topological_vertices() const {
  std::vector<std::pair<std::uint64_t, VertexId>> items;
  items.reserve(live_vertices_);
  for (VertexId v = 0; v < page_.size(); ++v)
    if (page_[v].valid()) items.emplace_back(ord_[v], v);
  std::sort(items.begin(), items.end());
  std::vector<VertexId> order;
  order.reserve(items.size());
  for (const auto& item : items) order.push_back(item.second);
  return order;
}

std::vector<PageId> DependencyGraph::topological_order() const {
  std::vector<PageId> order;
  for (VertexId v : topological_vertices()) order.push_back(page_[v]);
  return order;
}

std::uint64_t DependencyGraph::order_index(PageId page) const {
  const VertexId v = find(page);
  if (v == kNoVertex) {
    throw Error(ErrorCode::NotFound,
                "page " + page.to_string() + " is not in the dependency graph; add a dependency that names it first");
  }
  return ord_[v];
}

std::string DependencyGraph::to_dot(const std::vector<std::pair<PageId, std::string>>& extra_labels) const {
  // Several labels for one page are joined with line breaks, in the order given; labels for pages without a
  // vertex are ignored.
  std::unordered_map<PageId, std::string> labels;  // labels of pages without a vertex are never looked up
  for (const auto& [page, label] : extra_labels) {
    std::string& text = labels[page];
    if (!text.empty()) text += "\n";
    text += label;
  }
  std::vector<std::pair<std::uint64_t, VertexId>> order;
  order.reserve(live_vertices_);
  for (VertexId v = 0; v < page_.size(); ++v)
    if (page_[v].valid()) order.emplace_back(ord_[v], v);
  std::sort(order.begin(), order.end());

  std::string out = "digraph mmsb {\n";
  for (const auto& [ord, v] : order) {
    const std::string id = page_[v].to_string();
    out += "  \"" + dot_escape(id) + "\"";
    auto it = labels.find(page_[v]);
    if (it != labels.end()) out += " [label=\"" + dot_escape(id + "\n" + it->second) + "\"]";
    out += ";\n";
  }
  for (const auto& [ord, v] : order) {
    const std::string from = dot_escape(page_[v].to_string());
    for_each_dependent(v, [&](VertexId w, DependencyKind kind) {
      out += "  \"" + from + "\" -> \"" + dot_escape(page_[w].to_string()) + "\"";
      switch (kind) {
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
    });
  }
  out += "}\n";
  return out;
}

}  // namespace mmsb::detail
