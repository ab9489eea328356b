// GraphBuilder: many nodes declared without a lock, added under one engine lock as one graph version, all or
// nothing. See mmsb/graph.hpp for its promises and graph/engine.hpp for the engine.
//
// Declarations are compact (about 24 bytes per node plus 8 per input) so a builder of a million nodes stays small
// beside the graph it builds. A shared function moves into the engine's function table at the first commit that
// uses it; the builder keeps one use of it until it is destroyed, so a later commit can name it again.
#include <algorithm>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "graph/engine.hpp"

namespace mmsb {

using detail::NodeIndex;

struct GraphBuilder::Impl {
  // Where a declared node's function is.
  enum class Source : std::uint8_t { SharedMap, SharedIncremental, OwnMap, OwnIncremental, None };
  struct Declaration {
    PageId output;
    std::uint32_t inputs = 0;  // first input in `pool`
    std::uint32_t input_count = 0;
    std::uint32_t function = 0;               // index into the list `source` names
    std::uint32_t extra = ~std::uint32_t{0};  // index into `extras`, when the node has a name, registered function
                                              // or remap
    NodeKind kind = NodeKind::Map;
    Source source = Source::None;
    bool always_changes = false;
  };
  struct Extra {
    std::string name;
    std::string function;
    ByteRemap remap;
  };
  // A shared function: held here until a commit moves it into the engine's table.
  template <class F>
  struct Shared {
    F fn;
    std::uint32_t engine_index = ~std::uint32_t{0};
  };

  Propagator* propagator = nullptr;
  std::vector<Declaration> declarations;
  std::vector<PageId> pool;
  std::vector<Extra> extras;
  std::vector<MapFunction> own_maps;
  std::vector<IncrementalFunction> own_incrementals;
  std::vector<Shared<MapFunction>> shared_maps;
  std::vector<Shared<IncrementalFunction>> shared_incrementals;

  Declaration& declare(PageId output, std::span<const PageId> inputs, NodeKind kind, const NodeOptions& options,
                       const std::string* registered = nullptr, const ByteRemap* remap = nullptr) {
    Declaration d;
    d.output = output;
    d.inputs = static_cast<std::uint32_t>(pool.size());
    d.input_count = static_cast<std::uint32_t>(inputs.size());
    d.kind = kind;
    d.always_changes = options.always_changes;
    const bool named = !options.name.empty() || (registered && !registered->empty());
    if (named || remap) {
      d.extra = static_cast<std::uint32_t>(extras.size());
      Extra e;
      e.name = options.name.empty() && registered ? *registered : options.name;
      if (registered) e.function = *registered;
      if (remap) e.remap = *remap;
      extras.push_back(std::move(e));
    }
    pool.insert(pool.end(), inputs.begin(), inputs.end());
    declarations.push_back(d);
    return declarations.back();
  }

  void clear() {
    declarations.clear();
    pool.clear();
    extras.clear();
    own_maps.clear();
    own_incrementals.clear();
  }
};

GraphBuilder::GraphBuilder(Propagator& propagator) : impl_(std::make_unique<Impl>()) {
  impl_->propagator = &propagator;
}

GraphBuilder::~GraphBuilder() {
  if (!impl_) return;
  // Give back the builder's own use of the shared functions it moved into the engine.
  Propagator::Impl& engine = *impl_->propagator->impl_;
  std::lock_guard lock(engine.engine_mutex);
  for (const auto& s : impl_->shared_maps)
    if (s.engine_index != ~std::uint32_t{0}) engine.maps.release(s.engine_index);
  for (const auto& s : impl_->shared_incrementals)
    if (s.engine_index != ~std::uint32_t{0}) engine.incrementals.release(s.engine_index);
}

GraphBuilder::GraphBuilder(GraphBuilder&&) noexcept = default;
GraphBuilder& GraphBuilder::operator=(GraphBuilder&& other) noexcept {
  if (this != &other) {
    GraphBuilder old(std::move(*this));  // releases this builder's functions
    impl_ = std::move(other.impl_);
  }
  return *this;
}

GraphBuilder::FunctionId GraphBuilder::add_map_function(MapFunction fn) {
  if (!fn) throw Error(ErrorCode::InvalidArgument, "GraphBuilder::add_map_function: the function is empty");
  impl_->shared_maps.push_back({std::move(fn), ~std::uint32_t{0}});
  return FunctionId{static_cast<std::uint32_t>(impl_->shared_maps.size() - 1)};
}

GraphBuilder::FunctionId GraphBuilder::add_incremental_function(IncrementalFunction fn) {
  if (!fn) throw Error(ErrorCode::InvalidArgument, "GraphBuilder::add_incremental_function: the function is empty");
  impl_->shared_incrementals.push_back({std::move(fn), ~std::uint32_t{0}});
  return FunctionId{static_cast<std::uint32_t>(impl_->shared_incrementals.size() - 1)};
}

namespace {
[[noreturn]] void throw_unknown_function_id(const char* kind, std::uint32_t index) {
  throw Error(ErrorCode::InvalidArgument, std::string("GraphBuilder: ") + kind + " function id " +
                                              std::to_string(index) + " was not returned by this builder's add_" +
                                              kind + "_function()");
}
}  // namespace

GraphBuilder& GraphBuilder::derive_map(PageId output, Inputs inputs, FunctionId fn, NodeOptions options) {
  if (fn.index >= impl_->shared_maps.size()) throw_unknown_function_id("map", fn.index);
  Impl::Declaration& d = impl_->declare(output, inputs.pages(), NodeKind::Map, options);
  d.source = Impl::Source::SharedMap;
  d.function = fn.index;
  return *this;
}

GraphBuilder& GraphBuilder::derive_map(PageId output, Inputs inputs, MapFunction fn, NodeOptions options) {
  if (!fn) throw Error(ErrorCode::InvalidArgument, "derive_map: the map function is empty");
  impl_->own_maps.push_back(std::move(fn));
  Impl::Declaration& d = impl_->declare(output, inputs.pages(), NodeKind::Map, options);
  d.source = Impl::Source::OwnMap;
  d.function = static_cast<std::uint32_t>(impl_->own_maps.size() - 1);
  return *this;
}

GraphBuilder& GraphBuilder::derive_map(PageId output, Inputs inputs, const std::string& registered_name,
                                       NodeOptions options) {
  impl_->own_maps.push_back(FunctionRegistry::global().map(registered_name));
  Impl::Declaration& d = impl_->declare(output, inputs.pages(), NodeKind::Map, options, &registered_name);
  d.source = Impl::Source::OwnMap;
  d.function = static_cast<std::uint32_t>(impl_->own_maps.size() - 1);
  return *this;
}

GraphBuilder& GraphBuilder::derive_passthrough(PageId output, PageId input, ByteRemap remap, NodeOptions options) {
  impl_->declare(output, std::span<const PageId>(&input, 1), NodeKind::Passthrough, options, nullptr, &remap);
  return *this;
}

GraphBuilder& GraphBuilder::derive_incremental(PageId output, Inputs inputs, FunctionId fn, NodeOptions options) {
  if (fn.index >= impl_->shared_incrementals.size()) throw_unknown_function_id("incremental", fn.index);
  Impl::Declaration& d = impl_->declare(output, inputs.pages(), NodeKind::Incremental, options);
  d.source = Impl::Source::SharedIncremental;
  d.function = fn.index;
  return *this;
}

GraphBuilder& GraphBuilder::derive_incremental(PageId output, Inputs inputs, IncrementalFunction fn,
                                               NodeOptions options) {
  if (!fn) throw Error(ErrorCode::InvalidArgument, "derive_incremental: the function is empty");
  impl_->own_incrementals.push_back(std::move(fn));
  Impl::Declaration& d = impl_->declare(output, inputs.pages(), NodeKind::Incremental, options);
  d.source = Impl::Source::OwnIncremental;
  d.function = static_cast<std::uint32_t>(impl_->own_incrementals.size() - 1);
  return *this;
}

GraphBuilder& GraphBuilder::derive_incremental(PageId output, Inputs inputs, const std::string& registered_name,
                                               NodeOptions options) {
  impl_->own_incrementals.push_back(FunctionRegistry::global().incremental(registered_name));
  Impl::Declaration& d = impl_->declare(output, inputs.pages(), NodeKind::Incremental, options, &registered_name);
  d.source = Impl::Source::OwnIncremental;
  d.function = static_cast<std::uint32_t>(impl_->own_incrementals.size() - 1);
  return *this;
}

void GraphBuilder::reserve(std::size_t nodes, std::size_t inputs) {
  impl_->declarations.reserve(impl_->declarations.size() + nodes);
  impl_->pool.reserve(impl_->pool.size() + inputs);
}

std::size_t GraphBuilder::size() const noexcept { return impl_->declarations.size(); }

void GraphBuilder::commit() {
  Impl& b = *impl_;
  Propagator::Impl& engine = *b.propagator->impl_;
  struct Clear {
    Impl& b;
    ~Clear() { b.clear(); }
  } clear_on_exit{b};
  std::lock_guard lock(engine.engine_mutex);
  engine.graph.reserve(2 * b.declarations.size(), b.pool.size());
  engine.input_pool.reserve(engine.input_pool.size() + b.pool.size());
  std::vector<NodeIndex> added;
  added.reserve(b.declarations.size());
  try {
    for (const Impl::Declaration& d : b.declarations) {
      detail::NodeSpec spec;
      spec.output = d.output;
      spec.inputs = std::span<const PageId>(b.pool.data() + d.inputs, d.input_count);
      spec.kind = d.kind;
      spec.always_changes = d.always_changes;
      if (d.extra != ~std::uint32_t{0}) {
        const Impl::Extra& e = b.extras[d.extra];
        spec.name = &e.name;
        spec.function = &e.function;
        spec.remap = e.remap;
      }
      // A shared function enters the engine's table once, with one use kept by the builder; each node adds one
      // use once it is added.
      std::uint32_t* counted = nullptr;
      switch (d.source) {
        case Impl::Source::SharedMap: {
          auto& s = b.shared_maps[d.function];
          if (s.engine_index == ~std::uint32_t{0}) s.engine_index = engine.maps.add(std::move(s.fn), 1);
          spec.shared_function = s.engine_index;
          counted = &engine.maps.uses[s.engine_index];
          break;
        }
        case Impl::Source::SharedIncremental: {
          auto& s = b.shared_incrementals[d.function];
          if (s.engine_index == ~std::uint32_t{0}) s.engine_index = engine.incrementals.add(std::move(s.fn), 1);
          spec.shared_function = s.engine_index;
          counted = &engine.incrementals.uses[s.engine_index];
          break;
        }
        case Impl::Source::OwnMap:
          spec.map = &b.own_maps[d.function];
          break;
        case Impl::Source::OwnIncremental:
          spec.incremental = &b.own_incrementals[d.function];
          break;
        case Impl::Source::None:
          break;
      }
      added.push_back(engine.add_node(spec));
      if (counted) ++*counted;
    }
  } catch (...) {
    for (auto it = added.rbegin(); it != added.rend(); ++it) engine.remove_node(*it);
    throw;
  }
}

}  // namespace mmsb
