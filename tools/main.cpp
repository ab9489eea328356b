// mmsb: inspect, verify, dump, replay and repair durable directories (docs/cli.md).
//
// This file only parses the command line (CLI11 is compiled here and nowhere else, since it is a heavy
// header-only library) and maps failures to exit codes through the programs' common main (program/main.hpp);
// each subcommand lives in its own file (commands.hpp).
#include <cstdint>
#include <exception>
#include <iostream>
#include <optional>
#include <string>

#include <unistd.h>

#include "commands.hpp"
#include "mmsb/error.hpp"
#include "program/options.hpp"

namespace {

using namespace mmsb::cli;

constexpr const char* kExitCodes =
    "Exit status: 0 success; 1 verify (or repair) found damage; 2 any error (bad usage, missing or foreign\n"
    "directory, unreadable files), reported as one line `mmsb: <what>` on stderr.";

constexpr const char* kPageIdForms =
    "Page ids are written as PageId::to_string() prints them (p<rank>:<sequence>, e.g. p0:17) or as the id's\n"
    "integer value (e.g. 17, the same page as p0:17).";

// Every error exits with 2: a bad command line, a missing directory, unreadable files (kExitCodes).
constexpr mmsb::program::ExitCodes kErrorCodes{.usage = kExitError, .failure = kExitError};

CLI::Option* add_dir(CLI::App* sub, std::string& dir) {
  return sub->add_option("DIR", dir, "the durable directory (as written by mmsb::DurableRuntime)")->required();
}

// Flags the parser filled, for the optional values in the option structs.
template <class T>
void set_if_given(const CLI::Option* option, const T& value, std::optional<T>& target) {
  if (option->count() > 0) target = value;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{
      "mmsb: inspect, verify, dump, replay and repair the durable directories of mmsb::DurableRuntime.\n"
      "Run `mmsb <command> --help` for the options of a command; docs/cli.md has example sessions.",
      "mmsb"};
  app.require_subcommand(1);
  app.footer(std::string(kExitCodes) + "\n" + kPageIdForms);

  InfoOptions info;
  auto* info_cmd = app.add_subcommand("info", "Checkpoints, log segments, record count, LSN and time ranges, sizes.");
  add_dir(info_cmd, info.dir);
  info_cmd->add_flag("--json", info.json, "print one JSON object instead of text");
  info_cmd->footer("Example: mmsb info /var/lib/app/state");

  VerifyOptions verify;
  auto* verify_cmd = app.add_subcommand(
      "verify", "Check every record and checkpoint; exit 1 and list each problem (file, offset) if damaged.");
  add_dir(verify_cmd, verify.dir);
  verify_cmd->add_flag("--json", verify.json, "print one JSON object instead of text");
  verify_cmd->footer(
      "Each problem is one line `<file> offset <byte offset>: <what>`, then a summary line. A torn tail (what a\n"
      "crash during an append leaves) is reported but is not damage: recovery truncates it.\n"
      "Exit status: 0 clean, 1 damaged, 2 error.");

  DumpOptions dump;
  std::uint64_t dump_to_lsn = 0;
  auto* dump_cmd = app.add_subcommand("dump", "Page bytes (hex), sizes, epochs and locations of the recovered state.");
  add_dir(dump_cmd, dump.dir);
  dump_cmd->add_option("--page", dump.pages, "a page to show (repeat for more); default: every live page")
      ->allow_extra_args(false);
  auto* dump_lsn = dump_cmd->add_option("--to-lsn", dump_to_lsn, "show the state at this LSN, not at the end")
                       ->check(mmsb::program::non_negative<std::uint64_t>());
  dump_cmd->add_flag("--json", dump.json, "print one JSON object; page bytes as a hex string");
  dump_cmd->add_flag("-v,--no-squeeze", dump.no_squeeze, "print repeated hex lines instead of one `*` line");
  dump_cmd->footer(std::string("The state is the newest checkpoint plus every later log record (or those up to\n"
                               "--to-lsn). ") +
                   kPageIdForms);

  ReplayOptions replay;
  std::uint64_t replay_to_lsn = 0, replay_to_epoch = 0;
  std::string replay_to_time, replay_page;
  auto* replay_cmd =
      app.add_subcommand("replay", "Write the state at an LSN, a time or a page epoch as a new durable directory.");
  add_dir(replay_cmd, replay.dir);
  replay_cmd->add_option("--out", replay.out_dir, "the new directory (must not exist, or be empty)")->required();
  auto* r_lsn = replay_cmd->add_option("--to-lsn", replay_to_lsn, "the state with every commit up to this LSN")
                    ->check(mmsb::program::non_negative<std::uint64_t>());
  auto* r_time = replay_cmd->add_option(
      "--to-time", replay_to_time,
      "the state after the last commit at or before this time: Unix nanoseconds, or ISO-8601 UTC such as "
      "2026-11-23T14:13:34.5Z");
  auto* r_page = replay_cmd->add_option("--page", replay_page, "with --to-epoch: the page whose epoch is the target");
  auto* r_epoch = replay_cmd
                      ->add_option("--to-epoch", replay_to_epoch,
                                   "with --page: the state right after the commit that brought the page to this epoch")
                      ->check(mmsb::program::non_negative<std::uint64_t>());
  r_lsn->excludes(r_time, r_page, r_epoch);
  r_time->excludes(r_page, r_epoch);
  r_page->needs(r_epoch);
  r_epoch->needs(r_page);
  replay_cmd->footer(std::string("Without a target, replays to the end of the log (a compacted copy). Progress is\n"
                                 "shown on stderr when it is a terminal.\n"
                                 "Example: mmsb replay /var/lib/app/state --to-lsn 1200 --out /tmp/at-1200\n") +
                     kPageIdForms);

  HistoryOptions history;
  auto* history_cmd = app.add_subcommand(
      "history", "Every logged change of one page: LSN, time, epoch, size, intent, source, changed ranges.");
  add_dir(history_cmd, history.dir);
  history_cmd->add_option("--page", history.page, "the page")->required();
  history_cmd->add_flag("--json", history.json, "print one JSON object instead of text");
  history_cmd->add_flag("--bytes", history.bytes, "also show the new bytes of each changed range");
  history_cmd->footer(std::string("Only the log is read: changes older than the newest checkpoint are not listed.\n") +
                      kPageIdForms);

  StatsOptions stats;
  auto* stats_cmd = app.add_subcommand(
      "stats", "Counts over the log (records, deltas, payload bytes, pages created/deleted) and the commit rate.");
  add_dir(stats_cmd, stats.dir);
  stats_cmd->add_flag("--json", stats.json, "print one JSON object instead of text");
  stats_cmd->add_option("--buckets", stats.buckets, "time intervals of the commit-rate table")
      ->capture_default_str()
      ->check(mmsb::program::range(1u, 10000u));
  stats_cmd->footer("Counts cover the log records since the newest checkpoint.");

  RepairOptions repair;
  auto* repair_cmd = app.add_subcommand(
      "repair", "Drop damaged log records (keeping the originals as <name>.damaged) and truncate a torn tail.");
  add_dir(repair_cmd, repair.dir);
  repair_cmd->add_flag("--force", repair.force, "do it; without --force, repair explains what it would do and exits 2");
  repair_cmd->footer(
      "Commits in dropped records are lost; a later record that depended on one then fails verify, which repair\n"
      "runs afterwards (exit 1 if damage remains). Checkpoints are never rewritten.");

  if (const std::optional<int> code = mmsb::program::parse("mmsb", app, argc, argv, kErrorCodes)) return *code;

  set_if_given(dump_lsn, dump_to_lsn, dump.to_lsn);
  set_if_given(r_lsn, replay_to_lsn, replay.to_lsn);
  set_if_given(r_time, replay_to_time, replay.to_time);
  set_if_given(r_page, replay_page, replay.page);
  set_if_given(r_epoch, replay_to_epoch, replay.to_epoch);
  // Progress lines would garble a log file or a pipe; show them only to a person watching.
  replay.progress = ::isatty(STDERR_FILENO) == 1;

  return mmsb::program::guard(
      "mmsb",
      [&] {
        int code = kExitError;
        try {
          if (info_cmd->parsed()) code = run_info(info, std::cout);
          if (verify_cmd->parsed()) code = run_verify(verify, std::cout);
          if (dump_cmd->parsed()) code = run_dump(dump, std::cout);
          if (replay_cmd->parsed()) code = run_replay(replay, std::cout);
          if (history_cmd->parsed()) code = run_history(history, std::cout);
          if (stats_cmd->parsed()) code = run_stats(stats, std::cout);
          if (repair_cmd->parsed()) code = run_repair(repair, std::cout);
        } catch (const ToolError& e) {
          throw mmsb::program::Exit(e.what(), e.exit_code());
        } catch (const mmsb::Error& e) {
          if (e.code() == mmsb::ErrorCode::Corruption && !verify_cmd->parsed()) {
            throw mmsb::program::Exit(
                std::string(e.what()) + " (`mmsb verify` lists every problem, `mmsb repair` drops them)", kExitError);
          }
          throw;
        }
        return code;
      },
      kErrorCodes);
}
