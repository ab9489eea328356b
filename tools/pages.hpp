// tools/pages.hpp — the pages a command line names: by id (p0:17, 17) or by page name (particles/3).
//
// Page names never have the form of an id (mmsb::Runtime refuses such names), so any text that is not of the id
// form is a name.
//
//   mmsb::PageId id = mmsb::cli::resolve_page("particles/3", *state, dir);   // state: load_state(dir)
//
// Failures are ToolErrors (exit code 2) naming the text. Thread-safety: functions without shared state.
#pragma once

#include <filesystem>
#include <string_view>

#include "mmsb/page_id.hpp"
#include "mmsb/runtime.hpp"

namespace mmsb::cli {

// Whether `text` has the form of a page id: "p<digits>:<digits>" or "<digits>".
bool has_page_id_form(std::string_view text);

// The live page of `state` (the state of `dir`) that `text` names.
PageId resolve_page(std::string_view text, const Runtime& state, const std::filesystem::path& dir);

// The page of `dir`'s history that `text` names: an id as it is; a name held by a live page of the state at the
// end of the log, else by the page the log last gave that name, else by a page of the newest checkpoint (a page
// deleted since).
PageId resolve_page_in_history(std::string_view text, const std::filesystem::path& dir);

}  // namespace mmsb::cli
