// runtime/page_names.hpp — the names of pages (internal): a two-way map name <-> PageId, and the rules a name
// follows (shared with the decoders of logs and checkpoints, which treat a bad name as corruption).
//
// A name is claimed before the operation that gives it (creation, rename) takes its LSN, and bound once that
// operation succeeded, so two operations can never give one name to two pages, and a failed one leaves no trace:
// find() and name_of() see bound names only.
//
// Thread-safety: every member may be called concurrently (one mutex; names change rarely and off hot paths).
#pragma once

#include <cstdint>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include "mmsb/page_id.hpp"

namespace mmsb::detail {

inline constexpr std::size_t kMaxPageNameBytes = 1024;

// Why `name` cannot name a page (empty, too long, a control character, or the form of a page id, which the `mmsb`
// tool reads as an id); nullopt when it can.
std::optional<std::string> page_name_problem(std::string_view name);

class PageNames {
 public:
  // Reserves `name` for `id`. Throws Error(InvalidArgument) for a bad name, or one that another page holds or
  // is being given.
  void claim(std::string_view name, PageId id);
  // Gives `id` the name it claimed (dropping its previous one), or no name when `name` is empty.
  void bind(PageId id, std::string_view name);
  // Undoes a claim whose operation failed.
  void unclaim(std::string_view name, PageId id) noexcept;
  // Frees the name of a deleted page.
  void forget(PageId id) noexcept;

  std::optional<PageId> find(std::string_view name) const;
  // Whether `name` is bound or claimed (an operation giving it is under way).
  bool held(std::string_view name) const;
  std::string name_of(PageId id) const;  // "" when unnamed
  // Every bound name, sorted by id.
  std::vector<std::pair<PageId, std::string>> all() const;

 private:
  struct Hash {
    using is_transparent = void;
    std::size_t operator()(std::string_view s) const noexcept { return std::hash<std::string_view>{}(s); }
  };
  mutable std::mutex mutex_;
  std::unordered_map<std::string, PageId, Hash, std::equal_to<>> by_name_;  // bound and claimed names
  std::unordered_map<PageId, std::string> by_id_;                           // bound names only
};

}  // namespace mmsb::detail
