// `mmsb info DIR`: what a durable directory holds, from inspect().
#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <string>

#include "commands.hpp"
#include "directory.hpp"
#include "format.hpp"
#include "json_output.hpp"
#include "mmsb/durable.hpp"

namespace mmsb::cli {
namespace {

struct Totals {
  std::uint64_t checkpoint_bytes = 0, segment_bytes = 0;
  std::uint64_t first_ns = 0, last_ns = 0;  // of the log records; 0 when there are none
};

Totals totals_of(const DirectorySummary& summary) {
  Totals t;
  for (const auto& c : summary.checkpoints) t.checkpoint_bytes += c.bytes;
  for (const auto& s : summary.segments) {
    t.segment_bytes += s.bytes;
    if (s.records == 0) continue;
    if (t.first_ns == 0 || s.first_timestamp_ns < t.first_ns) t.first_ns = s.first_timestamp_ns;
    t.last_ns = std::max(t.last_ns, s.last_timestamp_ns);
  }
  return t;
}

std::string lsn_range(std::uint64_t first, std::uint64_t last) {
  if (first == 0 && last == 0) return "none";
  return std::to_string(first) + ".." + std::to_string(last);
}

void write_text(const std::filesystem::path& dir, const DirectorySummary& s, std::ostream& out) {
  const Totals t = totals_of(s);
  out << "directory    " << dir.string() << '\n';
  out << "checkpoints  " << s.checkpoints.size();
  if (!s.checkpoints.empty()) out << "  (recovery starts from the last)";
  out << '\n';
  for (const auto& c : s.checkpoints) {
    out << "  " << c.file.filename().string() << "  LSN " << c.lsn << "  " << format_size(c.bytes) << "  pages "
        << c.pages << "  nodes " << c.nodes << "  edges " << c.edges;
    if (c.created_ns != 0) out << "  written " << format_utc(c.created_ns);
    out << '\n';
  }
  out << "segments     " << s.segments.size() << '\n';
  for (const auto& seg : s.segments) {
    out << "  " << seg.file.filename().string() << "  " << format_size(seg.bytes) << "  records " << seg.records;
    if (seg.records != 0) {
      out << "  LSN " << lsn_range(seg.min_lsn, seg.max_lsn) << "  " << format_utc(seg.first_timestamp_ns) << " .. "
          << format_utc(seg.last_timestamp_ns);
    }
    out << '\n';
  }
  out << "records      " << s.records << '\n';
  out << "LSN range    " << lsn_range(s.first_lsn, s.last_lsn) << '\n';
  out << "time range   ";
  if (t.first_ns != 0) {
    out << format_utc(t.first_ns) << " .. " << format_utc(t.last_ns);
  } else {
    out << "none (no log records)";
  }
  out << '\n';
  out << "size         " << format_size(t.checkpoint_bytes + t.segment_bytes) << " (checkpoints "
      << format_size(t.checkpoint_bytes) << ", log " << format_size(t.segment_bytes) << ")\n";
  out << "changes      " << s.deltas << " deltas, " << format_size(s.payload_bytes) << " of payload, pages created "
      << s.pages_created << ", deleted " << s.pages_deleted << '\n';
  if (s.torn_tail_bytes != 0) {
    out << "torn tail    " << s.torn_tail_bytes << " bytes at the end of the log (recovery truncates them)\n";
  }
  out << "closed       " << (s.closed_cleanly ? "cleanly (the log ends with a close record)" : "no close record")
      << '\n';
  if (!s.damage.empty()) {
    out << "damage       " << s.damage.size() << " stretch(es) this recovery mode leaves out\n";
    write_damage(out, s.damage, "  ");
  }
}

void write_json(const std::filesystem::path& dir, const DirectorySummary& s, std::ostream& out) {
  const Totals t = totals_of(s);
  Json json{{"directory", dir.string()}, {"checkpoints", Json::array()}, {"segments", Json::array()}};
  for (const auto& c : s.checkpoints) {
    json["checkpoints"].push_back({{"file", c.file.string()},
                                   {"lsn", c.lsn},
                                   {"bytes", c.bytes},
                                   {"pages", c.pages},
                                   {"nodes", c.nodes},
                                   {"edges", c.edges},
                                   {"created_ns", c.created_ns}});
  }
  for (const auto& seg : s.segments) {
    json["segments"].push_back({{"file", seg.file.string()},
                                {"bytes", seg.bytes},
                                {"records", seg.records},
                                {"min_lsn", seg.min_lsn},
                                {"max_lsn", seg.max_lsn},
                                {"first_timestamp_ns", seg.first_timestamp_ns},
                                {"last_timestamp_ns", seg.last_timestamp_ns}});
  }
  json["records"] = s.records;
  json["first_lsn"] = s.first_lsn;
  json["last_lsn"] = s.last_lsn;
  json["first_timestamp_ns"] = t.first_ns;
  json["last_timestamp_ns"] = t.last_ns;
  if (t.first_ns != 0) {
    json["first_time"] = format_utc(t.first_ns);
    json["last_time"] = format_utc(t.last_ns);
  }
  json["checkpoint_bytes"] = t.checkpoint_bytes;
  json["segment_bytes"] = t.segment_bytes;
  json["total_bytes"] = t.checkpoint_bytes + t.segment_bytes;
  json["deltas"] = s.deltas;
  json["payload_bytes"] = s.payload_bytes;
  json["pages_created"] = s.pages_created;
  json["pages_deleted"] = s.pages_deleted;
  json["torn_tail_bytes"] = s.torn_tail_bytes;
  json["closed_cleanly"] = s.closed_cleanly;
  json["damage"] = damage_json(s.damage);
  cli::write_json(out, json);
}

}  // namespace

int run_info(const InfoOptions& options, std::ostream& out) {
  const std::filesystem::path dir(options.dir);
  const DirectorySummary summary = inspect_directory(dir, offline_options(options.recovery_mode));
  if (options.json) {
    write_json(dir, summary, out);
  } else {
    write_text(dir, summary, out);
  }
  return kExitOk;
}

}  // namespace mmsb::cli
