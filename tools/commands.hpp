// tools/commands.hpp — the subcommands of the `mmsb` tool, one function each, free of any argument parser.
//
// main.cpp parses the command line (CLI11) into these option structs and calls the matching function, which
// writes its report to `out` and returns the process exit code. Failures are thrown: ToolError for what the
// tool itself refuses, mmsb::Error from the library; main.cpp prints either as one `mmsb: <what>` line.
//
//   mmsb::cli::InfoOptions options{.dir = "/var/lib/app/state"};
//   int code = mmsb::cli::run_info(options, std::cout);
//
// Thread-safety: the functions share no state; each may run on any thread.
#pragma once

#include <cstdint>
#include <optional>
#include <ostream>
#include <stdexcept>
#include <string>
#include <vector>

namespace mmsb::cli {

// Exit codes of the tool, documented in docs/cli.md.
inline constexpr int kExitOk = 0;
inline constexpr int kExitDamaged = 1;  // verify (or repair) found damage
inline constexpr int kExitError = 2;    // bad usage, missing or foreign directory, or any other failure

// A failure the tool reports as `mmsb: <message>` with `exit_code`.
class ToolError : public std::runtime_error {
 public:
  explicit ToolError(const std::string& message, int exit_code = kExitError)
      : std::runtime_error(message), exit_code_(exit_code) {}
  int exit_code() const noexcept { return exit_code_; }

 private:
  int exit_code_;
};

// The recovery mode an offline read applies to damage (in memory; the directory is never changed), as
// --recovery-mode names it: tolerate_torn_tail, absolute, point_in_time or skip_damaged (dashes work too).
inline constexpr const char* kDefaultRecoveryMode = "tolerate_torn_tail";

struct InfoOptions {
  std::string dir;
  bool json = false;
  std::string recovery_mode = kDefaultRecoveryMode;
};
int run_info(const InfoOptions& options, std::ostream& out);

struct VerifyOptions {
  std::string dir;
  bool json = false;
};
int run_verify(const VerifyOptions& options, std::ostream& out);

struct RepairOptions {
  std::string dir;
  bool force = false;
  std::string mode = "skip_damaged";  // or point_in_time: cut the log at the first damage
};
int run_repair(const RepairOptions& options, std::ostream& out);

struct DumpOptions {
  std::string dir;
  std::vector<std::string> pages;       // empty: every live page
  std::optional<std::uint64_t> to_lsn;  // the state at this LSN instead of the end of the log
  bool json = false;
  bool no_squeeze = false;  // print repeated hex lines instead of one `*`
  std::string recovery_mode = kDefaultRecoveryMode;
};
int run_dump(const DumpOptions& options, std::ostream& out);

struct ReplayOptions {
  std::string dir;
  std::string out_dir;
  std::optional<std::uint64_t> to_lsn;
  std::optional<std::string> to_time;  // unix nanoseconds or ISO-8601 UTC
  std::optional<std::string> page;     // with to_epoch
  std::optional<std::uint64_t> to_epoch;
  bool progress = false;  // show progress on stderr (main sets it when stderr is a terminal)
  std::string recovery_mode = kDefaultRecoveryMode;
};
int run_replay(const ReplayOptions& options, std::ostream& out);

struct HistoryOptions {
  std::string dir;
  std::string page;
  bool json = false;
  bool bytes = false;  // also print the new bytes of each changed range
  std::string recovery_mode = kDefaultRecoveryMode;
};
int run_history(const HistoryOptions& options, std::ostream& out);

struct StatsOptions {
  std::string dir;
  bool json = false;
  unsigned buckets = 10;  // time buckets of the commit-rate table
  std::string recovery_mode = kDefaultRecoveryMode;
};
int run_stats(const StatsOptions& options, std::ostream& out);

}  // namespace mmsb::cli
