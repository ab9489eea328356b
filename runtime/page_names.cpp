#include "runtime/page_names.hpp"

#include <algorithm>

#include "mmsb/error.hpp"

namespace mmsb::detail {
namespace {

bool all_digits(std::string_view s) {
  return !s.empty() && std::all_of(s.begin(), s.end(), [](char c) { return c >= '0' && c <= '9'; });
}

// "p<digits>:<digits>" (PageId::to_string()) or "<digits>" (PageId::value()): the forms `mmsb` reads as ids.
bool looks_like_id(std::string_view s) {
  if (all_digits(s)) return true;
  if (s.size() < 4 || s[0] != 'p') return false;
  const std::size_t colon = s.find(':');
  return colon != std::string_view::npos && all_digits(s.substr(1, colon - 1)) && all_digits(s.substr(colon + 1));
}

}  // namespace

std::optional<std::string> page_name_problem(std::string_view name) {
  if (name.empty()) return "a page name cannot be empty";
  if (name.size() > kMaxPageNameBytes) {
    return "a page name has at most " + std::to_string(kMaxPageNameBytes) + " bytes, not " +
           std::to_string(name.size());
  }
  for (char c : name) {
    const auto byte = static_cast<unsigned char>(c);
    if (byte < 0x20 || byte == 0x7f) return "a page name cannot hold control characters";
  }
  if (looks_like_id(name)) {
    return "'" + std::string(name) +
           "' has the form of a page id (p<rank>:<sequence>, or a number) and cannot name a page";
  }
  return std::nullopt;
}

void PageNames::claim(std::string_view name, PageId id) {
  if (auto problem = page_name_problem(name)) throw Error(ErrorCode::InvalidArgument, *problem);
  std::lock_guard lock(mutex_);
  auto it = by_name_.find(name);
  if (it != by_name_.end() && it->second != id) {
    throw Error(ErrorCode::InvalidArgument, "the name '" + std::string(name) + "' is taken by page " +
                                                it->second.to_string() +
                                                "; names are unique (find() the page, or rename or delete it first)");
  }
  by_name_.emplace(std::string(name), id);
}

void PageNames::bind(PageId id, std::string_view name) {
  std::lock_guard lock(mutex_);
  auto old = by_id_.find(id);
  if (old != by_id_.end()) {
    if (old->second != name) by_name_.erase(old->second);
    by_id_.erase(old);
  }
  if (!name.empty()) by_id_.emplace(id, std::string(name));
}

void PageNames::unclaim(std::string_view name, PageId id) noexcept {
  std::lock_guard lock(mutex_);
  auto it = by_name_.find(name);
  if (it == by_name_.end() || it->second != id) return;
  auto bound = by_id_.find(id);
  if (bound != by_id_.end() && bound->second == name) return;  // its own name: still in use
  by_name_.erase(it);
}

void PageNames::forget(PageId id) noexcept {
  std::lock_guard lock(mutex_);
  auto it = by_id_.find(id);
  if (it == by_id_.end()) return;
  by_name_.erase(it->second);
  by_id_.erase(it);
}

std::optional<PageId> PageNames::find(std::string_view name) const {
  std::lock_guard lock(mutex_);
  auto it = by_name_.find(name);
  if (it == by_name_.end()) return std::nullopt;
  auto bound = by_id_.find(it->second);
  if (bound == by_id_.end() || bound->second != name) return std::nullopt;  // claimed, not given yet
  return it->second;
}

bool PageNames::held(std::string_view name) const {
  std::lock_guard lock(mutex_);
  return by_name_.find(name) != by_name_.end();
}

std::string PageNames::name_of(PageId id) const {
  std::lock_guard lock(mutex_);
  auto it = by_id_.find(id);
  return it == by_id_.end() ? std::string() : it->second;
}

std::vector<std::pair<PageId, std::string>> PageNames::all() const {
  std::vector<std::pair<PageId, std::string>> out;
  {
    std::lock_guard lock(mutex_);
    out.assign(by_id_.begin(), by_id_.end());
  }
  std::sort(out.begin(), out.end());
  return out;
}

}  // namespace mmsb::detail
