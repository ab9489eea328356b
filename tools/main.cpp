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
    "integer value (e.g. 17, the same page as p0:17); any other text is a page name (e.g. particles/3).";

// Every error exits with 2: a bad command line, a missing directory, unreadable files (kExitCodes).
constexpr mmsb::program::ExitCodes kErrorCodes{.usage = kExitError, .failure = kExitError};

CLI::Option* add_dir(CLI::App* sub, std::string& dir) {
  return sub->add_option("DIR", dir, "the durable directory (as written by mmsb::DurableRuntime)")->required();
}

void add_recovery_mode(CLI::App* sub, std::string& mode) {
  sub->add_option("--recovery-mode", mode,
                  "what to do with damage in the log, as recovery would but in memory only (the directory is not "
                  "changed): tolerate_torn_tail, absolute, point_in_time or skip_damaged")
      ->capture_default_str();
}

// Flags the parser filled, for the optional values in the option structs.
template <class T>
void set_if_given(const CLI::Option* option, const T& value, std::optional<T>& target) {
  if (option->count() > 0) target = value;
}

// Every command's options, as the parser fills them.
struct Commands {
  InfoOptions info;
  VerifyOptions verify;
  DumpOptions dump;
  ReplayOptions replay;
  HistoryOptions history;
  StatsOptions stats;
  RepairOptions repair;
  std::uint64_t dump_to_lsn = 0, replay_to_lsn = 0, replay_to_epoch = 0;
  std::string replay_to_time, replay_page;
  CLI::App *info_cmd = nullptr, *verify_cmd = nullptr, *dump_cmd = nullptr, *replay_cmd = nullptr,
           *history_cmd = nullptr, *stats_cmd = nullptr, *repair_cmd = nullptr;
  CLI::Option *dump_lsn = nullptr, *r_lsn = nullptr, *r_time = nullptr, *r_page = nullptr, *r_epoch = nullptr;
};

void add_info(CLI::App& app, Commands& c) {
  c.info_cmd = app.add_subcommand("info", "Checkpoints, log segments, record count, LSN and time ranges, sizes.");
  add_dir(c.info_cmd, c.info.dir);
  c.info_cmd->add_flag("--json", c.info.json, "print one JSON object instead of text");
  add_recovery_mode(c.info_cmd, c.info.recovery_mode);
  c.info_cmd->footer("Example: mmsb info /var/lib/app/state");
}

void add_verify(CLI::App& app, Commands& c) {
  c.verify_cmd = app.add_subcommand(
      "verify", "Check every record and checkpoint; exit 1 and list each problem (file, offset) if damaged.");
  add_dir(c.verify_cmd, c.verify.dir);
  c.verify_cmd->add_flag("--json", c.verify.json, "print one JSON object instead of text");
  c.verify_cmd->footer(
      "Each problem is one line `<file> offset <byte offset>: <what>`, then a summary line. A torn tail (what a\n"
      "crash during an append leaves) is reported but is not damage: recovery truncates it.\n"
      "Exit status: 0 clean, 1 damaged, 2 error.");
}

void add_dump(CLI::App& app, Commands& c) {
  c.dump_cmd = app.add_subcommand("dump", "Page bytes (hex), sizes, epochs and locations of the recovered state.");
  add_dir(c.dump_cmd, c.dump.dir);
  c.dump_cmd
      ->add_option("--page", c.dump.pages, "a page to show, by id or name (repeat for more); default: every live page")
      ->allow_extra_args(false);
  c.dump_lsn = c.dump_cmd->add_option("--to-lsn", c.dump_to_lsn, "show the state at this LSN, not at the end")
                   ->check(mmsb::program::non_negative<std::uint64_t>());
  c.dump_cmd->add_flag("--json", c.dump.json, "print one JSON object; page bytes as a hex string");
  c.dump_cmd->add_flag("-v,--no-squeeze", c.dump.no_squeeze, "print repeated hex lines instead of one `*` line");
  add_recovery_mode(c.dump_cmd, c.dump.recovery_mode);
  c.dump_cmd->footer(std::string("The state is the newest checkpoint plus every later log record (or those up to\n"
                                 "--to-lsn). ") +
                     kPageIdForms);
}

void add_replay(CLI::App& app, Commands& c) {
  c.replay_cmd =
      app.add_subcommand("replay", "Write the state at an LSN, a time or a page epoch as a new durable directory.");
  CLI::App* r = c.replay_cmd;
  add_dir(r, c.replay.dir);
  r->add_option("--out", c.replay.out_dir, "the new directory (must not exist, or be empty)")->required();
  c.r_lsn = r->add_option("--to-lsn", c.replay_to_lsn, "the state with every commit up to this LSN")
                ->check(mmsb::program::non_negative<std::uint64_t>());
  c.r_time = r->add_option("--to-time", c.replay_to_time,
                           "the state after the last commit at or before this time: Unix nanoseconds, or ISO-8601 "
                           "UTC such as 2026-11-23T14:13:34.5Z");
  c.r_page = r->add_option("--page", c.replay_page, "with --to-epoch: the page (id or name) whose epoch is the target");
  c.r_epoch = r->add_option("--to-epoch", c.replay_to_epoch,
                            "with --page: the state right after the commit that brought the page to this epoch")
                  ->check(mmsb::program::non_negative<std::uint64_t>());
  c.r_lsn->excludes(c.r_time, c.r_page, c.r_epoch);
  c.r_time->excludes(c.r_page, c.r_epoch);
  c.r_page->needs(c.r_epoch);
  c.r_epoch->needs(c.r_page);
  add_recovery_mode(r, c.replay.recovery_mode);
  r->footer(std::string("Without a target, replays to the end of the log (a compacted copy). A target before the\n"
                        "newest checkpoint is an error. Progress is shown on stderr when it is a terminal.\n"
                        "Example: mmsb replay /var/lib/app/state --to-lsn 1200 --out /tmp/at-1200\n") +
            kPageIdForms);
}

void add_history(CLI::App& app, Commands& c) {
  c.history_cmd = app.add_subcommand(
      "history", "Every logged change of one page: LSN, time, epoch, size, intent, source, changed ranges.");
  add_dir(c.history_cmd, c.history.dir);
  c.history_cmd->add_option("--page", c.history.page, "the page, by id or name")->required();
  c.history_cmd->add_flag("--json", c.history.json, "print one JSON object instead of text");
  c.history_cmd->add_flag("--bytes", c.history.bytes, "also show the new bytes of each changed range");
  add_recovery_mode(c.history_cmd, c.history.recovery_mode);
  c.history_cmd->footer(
      std::string("Only the log is read: changes older than the newest checkpoint are not listed. A page that\n"
                  "never existed is an error.\n") +
      kPageIdForms);
}

void add_stats(CLI::App& app, Commands& c) {
  c.stats_cmd = app.add_subcommand(
      "stats", "Counts over the log (records, deltas, payload bytes, pages created/deleted) and the commit rate.");
  add_dir(c.stats_cmd, c.stats.dir);
  c.stats_cmd->add_flag("--json", c.stats.json, "print one JSON object instead of text");
  c.stats_cmd->add_option("--buckets", c.stats.buckets, "time intervals of the commit-rate table")
      ->capture_default_str()
      ->check(mmsb::program::range(1u, 10000u));
  add_recovery_mode(c.stats_cmd, c.stats.recovery_mode);
  c.stats_cmd->footer("Counts cover the log records since the newest checkpoint.");
}

void add_repair(CLI::App& app, Commands& c) {
  c.repair_cmd = app.add_subcommand(
      "repair",
      "Drop damaged log records (first copying what changes to a folder aside-<time>), truncate a torn tail.");
  add_dir(c.repair_cmd, c.repair.dir);
  c.repair_cmd->add_flag("--force", c.repair.force,
                         "do it; without --force, repair explains what it would do and exits 2");
  c.repair_cmd
      ->add_option("--mode", c.repair.mode,
                   "skip_damaged: drop each damaged stretch, keep every intact record; point_in_time: cut the log at "
                   "the first damage")
      ->capture_default_str();
  c.repair_cmd->footer(
      "Before changing anything, repair copies every segment it rewrites (and moves every segment it removes) into a\n"
      "new folder aside-<time> of DIR, with REPORT.txt listing what it drops. Commits in dropped records leave the\n"
      "log; a later record that depended on one then fails verify, which repair runs afterwards (exit 1 if damage\n"
      "remains). Checkpoints are never rewritten.");
}

void finish_options(Commands& c) {
  set_if_given(c.dump_lsn, c.dump_to_lsn, c.dump.to_lsn);
  set_if_given(c.r_lsn, c.replay_to_lsn, c.replay.to_lsn);
  set_if_given(c.r_time, c.replay_to_time, c.replay.to_time);
  set_if_given(c.r_page, c.replay_page, c.replay.page);
  set_if_given(c.r_epoch, c.replay_to_epoch, c.replay.to_epoch);
  // Progress lines would garble a log file or a pipe; show them only to a person watching.
  c.replay.progress = ::isatty(STDERR_FILENO) == 1;
}

int run_parsed(const Commands& c) {
  if (c.info_cmd->parsed()) return run_info(c.info, std::cout);
  if (c.verify_cmd->parsed()) return run_verify(c.verify, std::cout);
  if (c.dump_cmd->parsed()) return run_dump(c.dump, std::cout);
  if (c.replay_cmd->parsed()) return run_replay(c.replay, std::cout);
  if (c.history_cmd->parsed()) return run_history(c.history, std::cout);
  if (c.stats_cmd->parsed()) return run_stats(c.stats, std::cout);
  if (c.repair_cmd->parsed()) return run_repair(c.repair, std::cout);
  return kExitError;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{
      "mmsb: inspect, verify, dump, replay and repair the durable directories of mmsb::DurableRuntime.\n"
      "Run `mmsb <command> --help` for the options of a command; docs/cli.md has example sessions.",
      "mmsb"};
  app.require_subcommand(1);
  app.footer(std::string(kExitCodes) + "\n" + kPageIdForms);
  Commands c;
  for (auto add : {add_info, add_verify, add_dump, add_replay, add_history, add_stats, add_repair}) add(app, c);
  if (const std::optional<int> code = mmsb::program::parse("mmsb", app, argc, argv, kErrorCodes)) return *code;
  finish_options(c);
  return mmsb::program::guard(
      "mmsb",
      [&] {
        try {
          return run_parsed(c);
        } catch (const ToolError& e) {
          throw mmsb::program::Exit(e.what(), e.exit_code());
        } catch (const mmsb::Error& e) {
          if (e.code() == mmsb::ErrorCode::Corruption && !c.verify_cmd->parsed()) {
            throw mmsb::program::Exit(
                std::string(e.what()) + " (`mmsb verify` lists every problem, `mmsb repair` drops them)", kExitError);
          }
          throw;
        }
      },
      kErrorCodes);
}
