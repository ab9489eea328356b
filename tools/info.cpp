// `mmsb info DIR`: what a durable directory holds, from inspect().
#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <string>

#include "commands.hpp"
#include "directory.hpp"
#include "format.hpp"
#include "json.hpp"
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
}

void write_json(const std::filesystem::path& dir, const DirectorySummary& s, std::ostream& out) {
  const Totals t = totals_of(s);
  JsonWriter json(out);
  json.begin_object().field("directory", dir.string());
  json.key("checkpoints").begin_array();
  for (const auto& c : s.checkpoints) {
    json.begin_object()
        .field("file", c.file.string())
        .field("lsn", c.lsn)
        .field("bytes", c.bytes)
        .field("pages", c.pages)
        .field("nodes", c.nodes)
        .field("edges", c.edges)
        .field("created_ns", c.created_ns)
        .end_object();
  }
  json.end_array();
  json.key("segments").begin_array();
  for (const auto& seg : s.segments) {
    json.begin_object()
        .field("file", seg.file.string())
        .field("bytes", seg.bytes)
        .field("records", seg.records)
        .field("min_lsn", seg.min_lsn)
        .field("max_lsn", seg.max_lsn)
        .field("first_timestamp_ns", seg.first_timestamp_ns)
        .field("last_timestamp_ns", seg.last_timestamp_ns)
        .end_object();
  }
  json.end_array();
  json.field("records", s.records)
      .field("first_lsn", s.first_lsn)
      .field("last_lsn", s.last_lsn)
      .field("first_timestamp_ns", t.first_ns)
      .field("last_timestamp_ns", t.last_ns);
  if (t.first_ns != 0) {
    json.field("first_time", format_utc(t.first_ns)).field("last_time", format_utc(t.last_ns));
  }
  json.field("checkpoint_bytes", t.checkpoint_bytes)
      .field("segment_bytes", t.segment_bytes)
      .field("total_bytes", t.checkpoint_bytes + t.segment_bytes)
      .field("deltas", s.deltas)
      .field("payload_bytes", s.payload_bytes)
      .field("pages_created", s.pages_created)
      .field("pages_deleted", s.pages_deleted)
      .field("torn_tail_bytes", s.torn_tail_bytes)
      .end_object();
}

}  // namespace

int run_info(const InfoOptions& options, std::ostream& out) {
  const std::filesystem::path dir(options.dir);
  const DirectorySummary summary = inspect_directory(dir);
  if (options.json) {
    write_json(dir, summary, out);
  } else {
    write_text(dir, summary, out);
  }
  return kExitOk;
}

}  // namespace mmsb::cli
