// `mmsb dump DIR [--page ID|NAME]... [--to-lsn N] [--json]`: the bytes, metadata and names of pages in a directory's
// state.
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "commands.hpp"
#include "directory.hpp"
#include "format.hpp"
#include "json.hpp"
#include "mmsb/durable.hpp"
#include "pages.hpp"

namespace mmsb::cli {
namespace {

std::vector<PageId> selected_pages(const DumpOptions& options, const std::filesystem::path& dir, const Runtime& state) {
  if (options.pages.empty()) return state.page_ids();
  std::vector<PageId> ids;
  for (const auto& text : options.pages) ids.push_back(resolve_page(text, state, dir));
  return ids;
}

}  // namespace

int run_dump(const DumpOptions& options, std::ostream& out) {
  const std::filesystem::path dir(options.dir);
  require_directory(dir);
  // Parse the ids before the (possibly long) load, so a typo fails at once (names are looked up after it).
  for (const auto& text : options.pages) {
    if (has_page_id_form(text)) parse_page_id(text);
  }

  std::uint64_t lsn = 0;
  std::unique_ptr<Runtime> state;
  try {
    state = load_state(dir, options.to_lsn ? ReplayTarget::lsn(*options.to_lsn) : ReplayTarget::end(), &lsn);
  } catch (const Error& e) {
    rethrow_for_directory(dir, e);
  }
  const std::vector<PageId> pages = selected_pages(options, dir, *state);

  if (options.json) {
    JsonWriter json(out);
    json.begin_object().field("directory", dir.string()).field("lsn", lsn).field("live_pages", state->page_count());
    json.key("pages").begin_array();
    for (PageId id : pages) {
      const PageInfo info = state->info(id);
      const std::vector<std::byte> bytes = state->read_all(id);
      json.begin_object()
          .field("id", id.to_string())
          .field("value", id.value())
          .field("name", state->name_of(id))
          .field("size", info.size)
          .field("epoch", info.epoch)
          .field("location", location_name(info.location))
          .field("hex", hex_string(bytes))
          .end_object();
    }
    json.end_array().end_object();
    return kExitOk;
  }

  out << "state of " << dir.string() << " at LSN " << lsn << ": " << state->page_count() << " live pages\n";
  for (PageId id : pages) {
    const PageInfo info = state->info(id);
    out << "\npage " << id.to_string() << " (" << id.value() << ")";
    if (const std::string name = state->name_of(id); !name.empty()) out << "  name " << quoted_text(name);
    out << "  size " << info.size << "  epoch " << info.epoch << "  location " << location_name(info.location) << '\n';
    write_hex_dump(out, state->read_all(id), !options.no_squeeze, "  ");
  }
  return kExitOk;
}

}  // namespace mmsb::cli
