// `mmsb history DIR --page ID|NAME [--json] [--bytes]`: every logged change of one page.
#include <filesystem>
#include <span>
#include <string>
#include <vector>

#include "commands.hpp"
#include "directory.hpp"
#include "format.hpp"
#include "json.hpp"
#include "mmsb/durable.hpp"
#include "pages.hpp"

namespace mmsb::cli {
namespace {

const char* kind_name(PageChange::Kind kind) {
  switch (kind) {
    case PageChange::Kind::Created:
      return "created";
    case PageChange::Kind::Changed:
      return "changed";
    case PageChange::Kind::Deleted:
      return "deleted";
    case PageChange::Kind::Renamed:
      return "renamed";
  }
  return "unknown";
}

// The payload bytes of each range, in range order (the payload concatenates them).
std::vector<std::span<const std::byte>> range_payloads(const Delta& delta) {
  std::vector<std::span<const std::byte>> out;
  std::span<const std::byte> payload(delta.payload);
  std::uint64_t at = 0;
  for (const auto& r : delta.ranges) {
    // A decoded delta passed validate(), so the payload covers every range; stay in bounds regardless.
    if (at > payload.size() || payload.size() - at < r.length) break;
    out.push_back(payload.subspan(at, r.length));
    at += r.length;
  }
  return out;
}

void write_text(const HistoryOptions& options, PageId page, const std::vector<PageChange>& changes, std::ostream& out) {
  // page_history() reads the log only: changes older than the newest checkpoint were compacted away.
  out << "page " << page.to_string() << ": " << changes.size() << " changes in the log (since the newest checkpoint)\n";
  for (const auto& c : changes) {
    out << "LSN " << c.lsn << "  " << format_utc(c.timestamp_ns) << "  " << kind_name(c.kind) << "  epoch " << c.epoch
        << "  size " << c.size;
    if (c.kind == PageChange::Kind::Changed) {
      const Delta& d = c.delta;
      if (d.base_size != d.size) out << " (was " << d.base_size << ")";
      out << "  intent " << quoted_text(d.intent) << "  source " << d.source << "  ranges";
      if (d.ranges.empty()) out << " none";
      for (const auto& r : d.ranges) out << " [" << r.offset << "," << r.end() << ")";
      out << "  " << d.changed_bytes() << " bytes";
      if (d.is_dense()) out << " (dense)";
      out << '\n';
      if (options.bytes) {
        const auto payloads = range_payloads(d);
        for (std::size_t i = 0; i < payloads.size(); ++i) {
          out << "  range [" << d.ranges[i].offset << "," << d.ranges[i].end() << ") new bytes:\n";
          write_hex_dump(out, payloads[i], true, "    ");
        }
      }
    } else if (c.kind == PageChange::Kind::Created || c.kind == PageChange::Kind::Renamed) {
      out << "  name " << (c.name.empty() ? std::string("none") : quoted_text(c.name)) << '\n';
    } else {
      out << '\n';
    }
  }
}

void write_json(const HistoryOptions& options, PageId page, const std::vector<PageChange>& changes, std::ostream& out) {
  JsonWriter json(out);
  json.begin_object().field("page", page.to_string()).field("value", page.value());
  json.key("changes").begin_array();
  for (const auto& c : changes) {
    json.begin_object()
        .field("kind", kind_name(c.kind))
        .field("lsn", c.lsn)
        .field("timestamp_ns", c.timestamp_ns)
        .field("time", format_utc(c.timestamp_ns))
        .field("epoch", c.epoch)
        .field("size", c.size);
    if (c.kind == PageChange::Kind::Created || c.kind == PageChange::Kind::Renamed) json.field("name", c.name);
    if (c.kind == PageChange::Kind::Changed) {
      const Delta& d = c.delta;
      json.field("base_epoch", d.base_epoch)
          .field("base_size", d.base_size)
          .field("intent", d.intent)
          .field("source", d.source)
          .field("changed_bytes", d.changed_bytes())
          .field("dense", d.is_dense())
          .field("has_undo", d.has_undo);
      const auto payloads = range_payloads(d);
      json.key("ranges").begin_array();
      for (std::size_t i = 0; i < d.ranges.size(); ++i) {
        json.begin_object().field("offset", d.ranges[i].offset).field("length", d.ranges[i].length);
        if (options.bytes && i < payloads.size()) json.field("hex", hex_string(payloads[i]));
        json.end_object();
      }
      json.end_array();
    }
    json.end_object();
  }
  json.end_array().end_object();
}

}  // namespace

int run_history(const HistoryOptions& options, std::ostream& out) {
  const std::filesystem::path dir(options.dir);
  require_directory(dir);
  const PageId page = resolve_page_in_history(options.page, dir);
  std::vector<PageChange> changes;
  try {
    changes = page_history(dir, page);
  } catch (const Error& e) {
    rethrow_for_directory(dir, e);
  }
  if (options.json) {
    write_json(options, page, changes, out);
  } else {
    write_text(options, page, changes, out);
  }
  return kExitOk;
}

}  // namespace mmsb::cli
