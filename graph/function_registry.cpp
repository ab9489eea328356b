// Node functions: the name registry and the checks behind MapContext's accessors. See mmsb/graph.hpp.
#include <memory>
#include <mutex>
#include <shared_mutex>
#include <string>
#include <unordered_map>

#include "mmsb/graph.hpp"
#include "runtime/runtime_impl.hpp"

namespace mmsb {

void MapContext::check_fits(std::size_t size, std::size_t offset, std::size_t length) {
  if (offset > size || size - offset < length) {
    throw Error(ErrorCode::InvalidArgument, "access of " + detail::range_text(offset, length) +
                                                " is outside a page of " + std::to_string(size) + " bytes");
  }
}

void MapContext::throw_no_input(std::size_t index, std::size_t count) {
  throw Error(ErrorCode::InvalidArgument,
              "input " + std::to_string(index) + " requested from a node with " + std::to_string(count) + " input(s)");
}

struct FunctionRegistry::Impl {
  mutable std::shared_mutex mutex;
  std::unordered_map<std::string, MapFunction> maps;                  // guarded by mutex
  std::unordered_map<std::string, IncrementalFunction> incrementals;  // guarded by mutex
};

FunctionRegistry::FunctionRegistry() : impl_(std::make_unique<Impl>()) {}
FunctionRegistry::~FunctionRegistry() = default;

FunctionRegistry& FunctionRegistry::global() {
  static FunctionRegistry registry;
  return registry;
}

namespace {
[[noreturn]] void throw_duplicate_function(const std::string& name) {
  throw Error(ErrorCode::InvalidArgument,
              "a node function named '" + name + "' is already registered; pick a unique name");
}
[[noreturn]] void throw_unknown_function(const std::string& name) {
  throw Error(ErrorCode::NotFound, "no node function named '" + name +
                                       "' is registered; call FunctionRegistry::global().register_*() at start-up");
}
}  // namespace

void FunctionRegistry::register_map(const std::string& name, MapFunction fn) {
  std::unique_lock lock(impl_->mutex);
  if (impl_->maps.count(name) || impl_->incrementals.count(name)) throw_duplicate_function(name);
  impl_->maps.emplace(name, std::move(fn));
}

void FunctionRegistry::register_incremental(const std::string& name, IncrementalFunction fn) {
  std::unique_lock lock(impl_->mutex);
  if (impl_->maps.count(name) || impl_->incrementals.count(name)) throw_duplicate_function(name);
  impl_->incrementals.emplace(name, std::move(fn));
}

MapFunction FunctionRegistry::map(const std::string& name) const {
  std::shared_lock lock(impl_->mutex);
  auto it = impl_->maps.find(name);
  if (it == impl_->maps.end()) throw_unknown_function(name);
  return it->second;
}

IncrementalFunction FunctionRegistry::incremental(const std::string& name) const {
  std::shared_lock lock(impl_->mutex);
  auto it = impl_->incrementals.find(name);
  if (it == impl_->incrementals.end()) throw_unknown_function(name);
  return it->second;
}

bool FunctionRegistry::contains(const std::string& name) const {
  std::shared_lock lock(impl_->mutex);
  return impl_->maps.count(name) || impl_->incrementals.count(name);
}

}  // namespace mmsb
