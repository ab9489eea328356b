// `mmsb verify DIR` and `mmsb repair DIR [--force]`: find damage, and drop it on request.
#include <filesystem>
#include <string>
#include <string_view>

#include "commands.hpp"
#include "directory.hpp"
#include "format.hpp"
#include "json.hpp"
#include "mmsb/durable.hpp"

namespace mmsb::cli {
namespace {

// The library's messages are one line today; keep each problem on one line even if that changes, since scripts
// read the report line by line.
std::string one_line(std::string_view text) {
  std::string out(text);
  for (char& c : out) {
    if (c == '\n' || c == '\r') c = ' ';
  }
  return out;
}

VerifyReport verify_directory(const std::filesystem::path& dir) {
  require_directory(dir);
  VerifyReport report = verify(dir);
  // verify() reports a directory without mmsb files as a problem (exit 1), but that is a wrong path, not damage:
  // inspect() tells the two apart.
  if (report.records_checked == 0 && report.checkpoints_checked == 0) require_mmsb_directory(dir);
  return report;
}

void write_problems(const VerifyReport& report, std::ostream& out) {
  for (const auto& p : report.problems) {
    out << p.file.string() << " offset " << p.offset << ": " << one_line(p.what) << '\n';
  }
}

}  // namespace

int run_verify(const VerifyOptions& options, std::ostream& out) {
  const std::filesystem::path dir(options.dir);
  const VerifyReport report = verify_directory(dir);
  if (options.json) {
    JsonWriter json(out);
    json.begin_object()
        .field("directory", dir.string())
        .field("ok", report.ok)
        .field("records_checked", report.records_checked)
        .field("checkpoints_checked", report.checkpoints_checked)
        .field("torn_tail_bytes", report.torn_tail_bytes);
    json.key("problems").begin_array();
    for (const auto& p : report.problems) {
      json.begin_object().field("file", p.file.string()).field("offset", p.offset).field("what", p.what).end_object();
    }
    json.end_array().end_object();
  } else {
    write_problems(report, out);
    out << (report.ok ? "clean" : "damaged") << ": " << report.records_checked << " records and "
        << report.checkpoints_checked << " checkpoints checked, " << report.problems.size() << " problems";
    if (report.torn_tail_bytes != 0) {
      out << "; a torn tail of " << report.torn_tail_bytes
          << " bytes ends the log (a crash during an append; recovery truncates it)";
    }
    out << '\n';
  }
  return report.ok ? kExitOk : kExitDamaged;
}

int run_repair(const RepairOptions& options, std::ostream& out) {
  const std::filesystem::path dir(options.dir);
  const VerifyReport before = verify_directory(dir);
  if (before.ok && before.torn_tail_bytes == 0) {
    out << "nothing to repair: " << before.records_checked << " records and " << before.checkpoints_checked
        << " checkpoints are intact\n";
    return kExitOk;
  }

  if (!options.force) {
    out << "repair would:\n";
    bool unrepairable = false;
    for (const auto& p : before.problems) {
      // Only log segments are rewritten; a damaged checkpoint, or a history that fails to replay, stays as it is.
      const bool in_segment = p.file.filename().string().rfind("log-", 0) == 0;
      unrepairable = unrepairable || !in_segment;
      out << (in_segment ? "  drop " : "  not repair ") << p.file.string() << " offset " << p.offset << ": "
          << one_line(p.what) << '\n';
    }
    if (!before.problems.empty()) {
      out << "  (each rewritten segment keeps its intact records; first, the originals of the segments it changes and\n"
             "  a list of what it drops are written to a new folder aside-<time> in the directory)\n";
    }
    if (unrepairable) out << "  problems marked `not repair` need a backup or the application's own recovery\n";
    if (before.torn_tail_bytes != 0) {
      out << "  truncate the torn tail of " << before.torn_tail_bytes << " bytes at the end of the log\n";
    }
    throw ToolError("repair rewrites files in " + dir.string() + "; run `mmsb repair " + dir.string() +
                    " --force` to do it (back up the directory first if in doubt)");
  }

  const RepairReport report = repair(dir);
  out << "dropped " << report.records_dropped << " damaged records (" << report.bytes_dropped
      << " bytes), truncated a torn tail of " << report.torn_tail_bytes << " bytes\n";
  if (!report.set_aside.empty()) {
    out << "the originals of the changed segments and a list of what was dropped are in " << report.set_aside.string()
        << '\n';
  }

  // Repair drops records; a later record that depended on a dropped one still breaks recovery, so check again.
  const VerifyReport after = verify(dir);
  if (after.ok) {
    out << "verify after repair: clean (" << after.records_checked << " records)\n";
    return kExitOk;
  }
  out << "verify after repair: still damaged\n";
  write_problems(after, out);
  return kExitDamaged;
}

}  // namespace mmsb::cli
