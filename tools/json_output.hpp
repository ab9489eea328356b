// tools/json_output.hpp — the tool's --json output, built with nlohmann::json (the project's one JSON library).
//
//   cli::Json report{{"directory", dir.string()}, {"ok", true}};
//   cli::write_json(std::cout, report);
//
// Objects keep their keys in insertion order (the order docs/cli.md lists them). The text is indented by two
// spaces and ends with a newline; bytes that are not valid UTF-8 become U+FFFD, so the output is always valid JSON.
// Thread-safety: pure functions.
#pragma once

#include <nlohmann/json.hpp>

#include <ostream>
#include <string>
#include <vector>

#include "mmsb/durable.hpp"

namespace mmsb::cli {

using Json = nlohmann::ordered_json;

std::string json_text(const Json& value);
inline void write_json(std::ostream& out, const Json& value) { out << json_text(value); }

// Damaged stretches as an array of {file, offset, bytes, what, last_good_lsn}.
Json damage_json(const std::vector<DamageReport>& damage);

}  // namespace mmsb::cli
