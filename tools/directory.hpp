// tools/directory.hpp — checks that turn "no such directory" and "not an mmsb directory" into clear ToolErrors.
//
// The library's readers throw Error(NotFound) both for a directory without mmsb files and for a replay target
// outside the history, and verify() reports a foreign directory as a problem (which would read as damage, exit 1);
// these helpers tell the cases apart so the tool can say "not an mmsb durable directory" (exit 2).
//
// Thread-safety: functions without shared state.
#pragma once

#include <filesystem>
#include <ostream>
#include <string>
#include <string_view>
#include <vector>

#include "mmsb/durable.hpp"
#include "mmsb/error.hpp"

namespace mmsb::cli {

// Throws ToolError unless `dir` exists and is a directory.
void require_directory(const std::filesystem::path& dir);

// The options of an offline read in the recovery mode named by `--recovery-mode` (ToolError for another name).
OfflineOptions offline_options(const std::string& recovery_mode);

// inspect(dir), with Error(NotFound) turned into a ToolError that says `dir` is not an mmsb directory.
DirectorySummary inspect_directory(const std::filesystem::path& dir, const OfflineOptions& options = {});

// One line per damaged stretch: "<indent><file> offset <n>: <what> (<bytes> bytes; last good LSN <lsn>)".
void write_damage(std::ostream& out, const std::vector<DamageReport>& damage, std::string_view indent);

// Throws ToolError when `dir` holds no mmsb state; returns normally for an mmsb directory, damaged or not.
void require_mmsb_directory(const std::filesystem::path& dir);

// Rethrows `error` (from a reader of `dir`), as a ToolError naming `dir` when it means "no mmsb state here".
[[noreturn]] void rethrow_for_directory(const std::filesystem::path& dir, const Error& error);

}  // namespace mmsb::cli
