// `mmsb stats DIR [--json] [--buckets N]`: counts over the log records and the commit rate over time.
#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "commands.hpp"
#include "directory.hpp"
#include "format.hpp"
#include "json_output.hpp"
#include "mmsb/durable.hpp"

namespace mmsb::cli {
namespace {

struct Stats {
  std::uint64_t records = 0;
  std::uint64_t commits_with_deltas = 0;
  std::uint64_t deltas = 0;
  std::uint64_t payload_bytes = 0;
  std::uint64_t undo_bytes = 0;
  std::uint64_t resizes = 0;  // deltas that change the page size
  std::uint64_t pages_created = 0;
  std::uint64_t pages_deleted = 0;
  std::uint64_t first_lsn = 0, last_lsn = 0;
  std::uint64_t first_ns = 0, last_ns = 0;
  std::set<PageId> pages_changed;
  std::map<std::string, std::uint64_t> deltas_by_intent;
  std::vector<std::uint64_t> timestamps;  // of every record, for the rate table
};

struct Bucket {
  std::uint64_t start_ns = 0, end_ns = 0;
  std::uint64_t records = 0;
};

Stats collect(const std::filesystem::path& dir, const OfflineOptions& offline) {
  Stats s;
  for_each_commit(
      dir,
      [&](const CommitRecord& r) {
        if (s.records == 0 || r.lsn < s.first_lsn) s.first_lsn = r.lsn;
        s.last_lsn = std::max(s.last_lsn, r.lsn);
        if (s.records == 0 || r.timestamp_ns < s.first_ns) s.first_ns = r.timestamp_ns;
        s.last_ns = std::max(s.last_ns, r.timestamp_ns);
        ++s.records;
        s.timestamps.push_back(r.timestamp_ns);
        if (!r.deltas.empty()) ++s.commits_with_deltas;
        for (const Delta& d : r.deltas) {
          ++s.deltas;
          s.payload_bytes += d.payload.size();
          s.undo_bytes += d.undo.size() + d.undo_tail.size();
          if (d.base_size != d.size) ++s.resizes;
          s.pages_changed.insert(d.page);
          ++s.deltas_by_intent[d.intent];
        }
        s.pages_created += r.created.size();
        s.pages_deleted += r.deleted.size();
        return true;
      },
      offline);
  return s;
}

// Splits [first, last] into `count` equal intervals (the last one closed) and counts the records in each.
std::vector<Bucket> rate_buckets(const Stats& s, unsigned count) {
  std::vector<Bucket> buckets;
  if (s.records == 0 || count == 0) return buckets;
  const std::uint64_t span = s.last_ns - s.first_ns;
  if (span == 0) count = 1;
  const std::uint64_t width = span / count + 1;  // count * width > span: the last record lands in the last bucket
  for (unsigned i = 0; i < count; ++i) {
    buckets.push_back({s.first_ns + i * width, s.first_ns + (i + 1) * width, 0});
  }
  for (std::uint64_t ts : s.timestamps) {
    std::uint64_t index = std::min<std::uint64_t>((ts - s.first_ns) / width, count - 1);
    ++buckets[index].records;
  }
  return buckets;
}

double per_second(std::uint64_t records, std::uint64_t ns) {
  if (ns == 0) return 0;
  return static_cast<double>(records) * 1e9 / static_cast<double>(ns);
}

void write_text(const std::filesystem::path& dir, const Stats& s, const std::vector<Bucket>& buckets,
                std::ostream& out) {
  out << "log records of " << dir.string() << " (since the newest checkpoint)\n";
  out << "records          " << s.records << '\n';
  if (s.records == 0) return;
  out << "LSN range        " << s.first_lsn << ".." << s.last_lsn << '\n';
  out << "time range       " << format_utc(s.first_ns) << " .. " << format_utc(s.last_ns) << '\n';
  out << "commits          " << s.commits_with_deltas << " with deltas\n";
  out << "deltas           " << s.deltas << " (" << s.resizes << " resize a page)\n";
  out << "payload          " << s.payload_bytes << " bytes (" << format_size(s.payload_bytes) << ")\n";
  out << "undo             " << s.undo_bytes << " bytes (" << format_size(s.undo_bytes) << ")\n";
  out << "pages created    " << s.pages_created << '\n';
  out << "pages deleted    " << s.pages_deleted << '\n';
  out << "pages changed    " << s.pages_changed.size() << '\n';
  out << "deltas by intent\n";
  for (const auto& [intent, n] : s.deltas_by_intent) out << "  " << quoted_text(intent) << "  " << n << '\n';
  char line[160];
  std::snprintf(line, sizeof line, "commit rate      %.1f records/s on average\n",
                per_second(s.records, s.last_ns - s.first_ns));
  out << line;
  for (const auto& b : buckets) {
    std::snprintf(line, sizeof line, "  from %s  %8llu records  %12.1f /s\n", format_utc(b.start_ns).c_str(),
                  static_cast<unsigned long long>(b.records), per_second(b.records, b.end_ns - b.start_ns));
    out << line;
  }
}

void write_json(const std::filesystem::path& dir, const Stats& s, const std::vector<Bucket>& buckets,
                std::ostream& out) {
  Json json{{"directory", dir.string()},
            {"records", s.records},
            {"first_lsn", s.first_lsn},
            {"last_lsn", s.last_lsn},
            {"first_timestamp_ns", s.first_ns},
            {"last_timestamp_ns", s.last_ns},
            {"commits_with_deltas", s.commits_with_deltas},
            {"deltas", s.deltas},
            {"resizes", s.resizes},
            {"payload_bytes", s.payload_bytes},
            {"undo_bytes", s.undo_bytes},
            {"pages_created", s.pages_created},
            {"pages_deleted", s.pages_deleted},
            {"pages_changed", static_cast<std::uint64_t>(s.pages_changed.size())},
            {"deltas_by_intent", Json::object()}};
  for (const auto& [intent, n] : s.deltas_by_intent) json["deltas_by_intent"][intent] = n;
  json["records_per_second"] = per_second(s.records, s.last_ns - s.first_ns);
  json["rate"] = Json::array();
  for (const auto& b : buckets) {
    json["rate"].push_back({{"start_ns", b.start_ns},
                            {"end_ns", b.end_ns},
                            {"start", format_utc(b.start_ns)},
                            {"records", b.records},
                            {"records_per_second", per_second(b.records, b.end_ns - b.start_ns)}});
  }
  cli::write_json(out, json);
}

}  // namespace

int run_stats(const StatsOptions& options, std::ostream& out) {
  const std::filesystem::path dir(options.dir);
  require_directory(dir);
  Stats stats;
  try {
    stats = collect(dir, offline_options(options.recovery_mode));
  } catch (const Error& e) {
    rethrow_for_directory(dir, e);
  }
  const std::vector<Bucket> buckets = rate_buckets(stats, options.buckets);
  if (options.json) {
    write_json(dir, stats, buckets, out);
  } else {
    write_text(dir, stats, buckets, out);
  }
  return kExitOk;
}

}  // namespace mmsb::cli
