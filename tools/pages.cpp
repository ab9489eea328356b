#include "pages.hpp"

#include <algorithm>
#include <memory>
#include <optional>
#include <string>

#include "commands.hpp"
#include "directory.hpp"
#include "format.hpp"
#include "mmsb/durable.hpp"

namespace mmsb::cli {
namespace {

bool all_digits(std::string_view s) {
  return !s.empty() && std::all_of(s.begin(), s.end(), [](char c) { return c >= '0' && c <= '9'; });
}

}  // namespace

bool has_page_id_form(std::string_view text) {
  if (all_digits(text)) return true;
  const std::size_t colon = text.find(':');
  return text.size() >= 4 && text[0] == 'p' && colon != std::string_view::npos &&
         all_digits(text.substr(1, colon - 1)) && all_digits(text.substr(colon + 1));
}

PageId resolve_page(std::string_view text, const Runtime& state, const std::filesystem::path& dir) {
  const std::string at = "the state of " + dir.string() + " at LSN " + std::to_string(state.last_lsn());
  if (has_page_id_form(text)) {
    const PageId id = parse_page_id(text);
    if (!state.contains(id)) {
      throw ToolError("page " + id.to_string() + " is not live in " + at + " (never created there, or deleted)");
    }
    return id;
  }
  if (std::optional<PageId> id = state.find(text)) return *id;
  throw ToolError("no live page is named " + quoted_text(text) + " in " + at +
                  " (page names are case-sensitive; `mmsb dump` lists the pages with their names)");
}

PageId resolve_page_in_history(std::string_view text, const std::filesystem::path& dir) {
  if (has_page_id_form(text)) return parse_page_id(text);
  std::unique_ptr<Runtime> state;
  try {
    state = load_state(dir);
  } catch (const Error& e) {
    rethrow_for_directory(dir, e);
  }
  if (std::optional<PageId> id = state->find(text)) return *id;
  std::optional<PageId> last;
  for_each_commit(dir, [&](const CommitRecord& r) {
    for (const auto& created : r.created) {
      if (created.name == text) last = created.id;
    }
    for (const auto& renamed : r.renamed) {
      if (renamed.name == text) last = renamed.id;
    }
    return true;
  });
  if (last) return *last;
  // Named before the newest checkpoint, deleted after it: the checkpoint's state has the name.
  const DirectorySummary summary = inspect(dir);
  if (!summary.checkpoints.empty()) {
    const std::unique_ptr<Runtime> at_checkpoint = load_state(dir, ReplayTarget::lsn(summary.checkpoints.back().lsn));
    if (std::optional<PageId> id = at_checkpoint->find(text)) return *id;
  }
  throw ToolError("no page is named " + quoted_text(text) + " in " + dir.string() +
                  " (neither a live page nor one the log names; page names are case-sensitive)");
}

}  // namespace mmsb::cli
