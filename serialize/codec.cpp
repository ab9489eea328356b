#include "serialize/codec.hpp"

#include <limits>

#include "mmsb/error.hpp"
#include "proto/mmsb.pb.h"
#include "runtime/page_names.hpp"

namespace mmsb::serialize {
namespace {

[[noreturn]] void corrupt(const std::string& what) { throw Error(ErrorCode::Corruption, what); }

// No page can be larger than an address space: a size beyond this in a record is damage, and it must never reach
// an allocator (whose rounding would overflow).
constexpr std::uint64_t kMaxPageBytes = std::uint64_t{1} << 48;

void check_page_size(std::uint64_t size, const std::string& where, const char* field) {
  if (size > kMaxPageBytes) {
    corrupt(where + " has " + field + " " + std::to_string(size) + ", more than any page can hold (2^48 bytes)");
  }
}

std::string to_bytes(const std::vector<std::byte>& v) {
  return std::string(reinterpret_cast<const char*>(v.data()), v.size());
}

void assign_bytes(std::vector<std::byte>& out, const std::string& s) {
  const auto* p = reinterpret_cast<const std::byte*>(s.data());
  out.assign(p, p + s.size());
}

void to_wire(const Delta& d, wire::Delta& w) {
  w.set_page(d.page.value());
  w.set_base_epoch(d.base_epoch);
  w.set_epoch_count(d.epoch_count);
  w.set_base_size(d.base_size);
  w.set_size(d.size);
  w.mutable_ranges()->Reserve(static_cast<int>(d.ranges.size()));
  for (const ByteRange& r : d.ranges) {
    wire::ByteRange* wr = w.add_ranges();
    wr->set_offset(r.offset);
    wr->set_length(r.length);
  }
  w.set_payload(to_bytes(d.payload));
  w.set_has_undo(d.has_undo);
  if (d.has_undo) {
    w.set_undo(to_bytes(d.undo));
    w.set_undo_tail(to_bytes(d.undo_tail));
  }
  w.set_source(d.source);
  w.set_intent(d.intent);
}

// `where` names the delta in error messages ("delta 3 (page p0:7)").
Delta from_wire(const wire::Delta& w, const std::string& where) {
  Delta d;
  d.page = PageId(w.page());
  d.base_epoch = w.base_epoch();
  d.epoch_count = w.epoch_count();
  d.base_size = w.base_size();
  d.size = w.size();
  check_page_size(d.base_size, where, "base_size");
  check_page_size(d.size, where, "size");
  if (d.epoch_count > UINT64_MAX - d.base_epoch) {
    corrupt(where + ": base_epoch " + std::to_string(d.base_epoch) + " + epoch_count " + std::to_string(d.epoch_count) +
            " overflows 64 bits");
  }
  // Every range carries at least one payload byte in a valid delta, so the payload length bounds the count;
  // checking it first keeps a crafted message from making us reserve more than its own size.
  if (static_cast<std::uint64_t>(w.ranges_size()) > w.payload().size()) {
    corrupt(where + ": " + std::to_string(w.ranges_size()) + " ranges but only " + std::to_string(w.payload().size()) +
            " payload bytes");
  }
  d.ranges.reserve(static_cast<std::size_t>(w.ranges_size()));
  for (const wire::ByteRange& r : w.ranges()) d.ranges.push_back(ByteRange{r.offset(), r.length()});
  assign_bytes(d.payload, w.payload());
  d.has_undo = w.has_undo();
  assign_bytes(d.undo, w.undo());
  assign_bytes(d.undo_tail, w.undo_tail());
  d.source = w.source();
  d.intent = w.intent();
  try {
    d.validate();
  } catch (const Error& e) {
    corrupt(where + " is invalid: " + e.what());
  }
  return d;
}

Location location_from_wire(std::uint32_t value, const std::string& where) {
  if (value < 1 || value > 3) {
    corrupt(where + " has location " + std::to_string(value) + " (expected 1 = host, 2 = device or 3 = both)");
  }
  return static_cast<Location>(value);
}

// A page name read from outside bytes: empty, or one the runtime would accept.
std::string name_from_wire(const std::string& name, const std::string& where) {
  if (!name.empty()) {
    if (auto problem = mmsb::detail::page_name_problem(name)) corrupt(where + " has a bad page name: " + *problem);
  }
  return name;
}

template <class Message>
void parse_or_throw(Message& m, std::string_view bytes, const char* what) {
  if (bytes.size() > static_cast<std::size_t>(std::numeric_limits<int>::max())) {
    corrupt(std::string(what) + " message of " + std::to_string(bytes.size()) + " bytes exceeds the 2 GiB limit");
  }
  if (!m.ParseFromArray(bytes.data(), static_cast<int>(bytes.size()))) {
    corrupt("cannot parse " + std::to_string(bytes.size()) + " bytes as a " + what + " message");
  }
}

}  // namespace

bool operator==(const DecodedCommit& a, const DecodedCommit& b) {
  if (a.lsn != b.lsn || a.timestamp_ns != b.timestamp_ns || a.deltas != b.deltas || a.deleted != b.deleted ||
      a.created.size() != b.created.size() || a.renamed.size() != b.renamed.size()) {
    return false;
  }
  for (std::size_t i = 0; i < a.created.size(); ++i) {
    const auto& x = a.created[i];
    const auto& y = b.created[i];
    if (x.id != y.id || x.size != y.size || x.location != y.location || x.name != y.name) return false;
  }
  for (std::size_t i = 0; i < a.renamed.size(); ++i) {
    if (a.renamed[i].id != b.renamed[i].id || a.renamed[i].name != b.renamed[i].name) return false;
  }
  return true;
}

std::string encode_commit(const CommitRecord& record) {
  std::string out;
  append_commit(record, out);
  return out;
}

void append_commit(const CommitRecord& record, std::string& out) {
  wire::Commit w;
  w.set_lsn(record.lsn);
  w.set_timestamp_ns(record.timestamp_ns);
  w.mutable_deltas()->Reserve(static_cast<int>(record.deltas.size()));
  for (const Delta& d : record.deltas) to_wire(d, *w.add_deltas());
  for (const CommitRecord::CreatedPage& c : record.created) {
    wire::CreatedPage* wc = w.add_created();
    wc->set_page(c.id.value());
    wc->set_size(c.size);
    wc->set_location(static_cast<std::uint32_t>(c.location));
    if (!c.name.empty()) wc->set_name(c.name);
  }
  for (const CommitRecord::RenamedPage& r : record.renamed) {
    wire::RenamedPage* wr = w.add_renamed();
    wr->set_page(r.id.value());
    wr->set_name(r.name);
  }
  w.mutable_deleted()->Reserve(static_cast<int>(record.deleted.size()));
  for (PageId id : record.deleted) w.add_deleted(id.value());
  if (!w.AppendToString(&out)) {
    throw Error(ErrorCode::InvalidArgument, "commit record of LSN " + std::to_string(record.lsn) +
                                                " cannot be serialized (larger than protobuf's 2 GiB limit?)");
  }
}

DecodedCommit decode_commit(std::string_view bytes) {
  wire::Commit w;
  parse_or_throw(w, bytes, "mmsb.wire.Commit");
  DecodedCommit out;
  out.lsn = w.lsn();
  out.timestamp_ns = w.timestamp_ns();
  const std::string at = "commit LSN " + std::to_string(w.lsn());
  out.deltas.reserve(static_cast<std::size_t>(w.deltas_size()));
  for (int i = 0; i < w.deltas_size(); ++i) {
    const wire::Delta& wd = w.deltas(i);
    out.deltas.push_back(
        from_wire(wd, at + " delta " + std::to_string(i) + " (page " + PageId(wd.page()).to_string() + ")"));
  }
  out.created.reserve(static_cast<std::size_t>(w.created_size()));
  for (int i = 0; i < w.created_size(); ++i) {
    const wire::CreatedPage& c = w.created(i);
    const std::string where = at + " created page " + PageId(c.page()).to_string();
    if (!PageId(c.page()).valid()) corrupt(where + " has an invalid id " + std::to_string(c.page()));
    check_page_size(c.size(), where, "size");
    out.created.push_back(CommitRecord::CreatedPage{PageId(c.page()), c.size(), location_from_wire(c.location(), where),
                                                    name_from_wire(c.name(), where)});
  }
  out.renamed.reserve(static_cast<std::size_t>(w.renamed_size()));
  for (const wire::RenamedPage& r : w.renamed()) {
    const std::string where = at + " renames page " + PageId(r.page()).to_string();
    if (!PageId(r.page()).valid()) corrupt(where + ", an invalid id " + std::to_string(r.page()));
    out.renamed.push_back(CommitRecord::RenamedPage{PageId(r.page()), name_from_wire(r.name(), where)});
  }
  out.deleted.reserve(static_cast<std::size_t>(w.deleted_size()));
  for (std::uint64_t id : w.deleted()) {
    if (!PageId(id).valid()) corrupt(at + " deletes an invalid page id " + std::to_string(id));
    out.deleted.push_back(PageId(id));
  }
  return out;
}

std::string encode_delta(const Delta& delta) {
  wire::Delta w;
  to_wire(delta, w);
  std::string out;
  if (!w.SerializeToString(&out)) {
    throw Error(ErrorCode::InvalidArgument,
                "delta of page " + delta.page.to_string() + " cannot be serialized (larger than 2 GiB?)");
  }
  return out;
}

Delta decode_delta(std::string_view bytes) {
  wire::Delta w;
  parse_or_throw(w, bytes, "mmsb.wire.Delta");
  return from_wire(w, "delta of page " + PageId(w.page()).to_string());
}

void append_delta_batch(std::uint32_t source_rank, std::uint64_t wave, std::uint64_t superstep,
                        std::span<const Delta* const> deltas, std::string& out) {
  wire::DeltaBatch w;
  w.set_source_rank(source_rank);
  w.set_wave(wave);
  w.set_superstep(superstep);
  w.mutable_deltas()->Reserve(static_cast<int>(deltas.size()));
  for (const Delta* d : deltas) {
    wire::Delta* wd = w.add_deltas();
    wd->set_page(d->page.value());
    wd->set_base_epoch(d->base_epoch);
    wd->set_epoch_count(d->epoch_count);
    wd->set_base_size(d->base_size);
    wd->set_size(d->size);
    wd->mutable_ranges()->Reserve(static_cast<int>(d->ranges.size()));
    for (const ByteRange& r : d->ranges) {
      wire::ByteRange* wr = wd->add_ranges();
      wr->set_offset(r.offset);
      wr->set_length(r.length);
    }
    wd->set_payload(to_bytes(d->payload));
    wd->set_source(d->source);
    wd->set_intent(d->intent);
  }
  const std::size_t before = out.size();
  const std::size_t size = w.ByteSizeLong();
  if (size > static_cast<std::size_t>(std::numeric_limits<int>::max())) {
    throw Error(ErrorCode::InvalidArgument, "a superstep's delta batch for one rank exceeds 2 GiB (" +
                                                std::to_string(size) + " bytes); run smaller waves");
  }
  out.resize(before + size);
  if (!w.SerializeToArray(out.data() + before, static_cast<int>(size))) {
    out.resize(before);
    throw Error(ErrorCode::Internal, "serializing a delta batch failed");
  }
}

DecodedDeltaBatch decode_delta_batch(std::string_view bytes) {
  wire::DeltaBatch w;
  parse_or_throw(w, bytes, "mmsb.wire.DeltaBatch");
  DecodedDeltaBatch out;
  out.source_rank = w.source_rank();
  out.wave = w.wave();
  out.superstep = w.superstep();
  out.deltas.reserve(static_cast<std::size_t>(w.deltas_size()));
  for (int i = 0; i < w.deltas_size(); ++i) {
    out.deltas.push_back(from_wire(w.deltas(i), "delta " + std::to_string(i) + " (page " +
                                                    PageId(w.deltas(i).page()).to_string() + ") of a delta batch"));
  }
  return out;
}

std::string encode_event(const Event& event) {
  wire::Event w;
  w.set_kind(static_cast<wire::Event::Kind>(static_cast<int>(event.kind)));
  w.set_page(event.page.value());
  w.set_lsn(event.lsn);
  w.set_epoch(event.epoch);
  w.set_wave(event.wave);
  w.set_duration_ns(event.duration_ns);
  w.set_message(event.message);
  return w.SerializeAsString();
}

Event decode_event(std::string_view bytes) {
  wire::Event w;
  parse_or_throw(w, bytes, "mmsb.wire.Event");
  if (w.kind() < 0 || w.kind() > static_cast<int>(EventKind::Error)) {
    corrupt("event kind " + std::to_string(w.kind()) + " is unknown (expected 0.." +
            std::to_string(static_cast<int>(EventKind::Error)) + ")");
  }
  Event e;
  e.kind = static_cast<EventKind>(w.kind());
  e.page = PageId(w.page());
  e.lsn = w.lsn();
  e.epoch = w.epoch();
  e.wave = w.wave();
  e.duration_ns = w.duration_ns();
  e.message = w.message();
  return e;
}

}  // namespace mmsb::serialize
