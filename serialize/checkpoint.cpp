#include "serialize/checkpoint.hpp"

#include <zstd.h>

#define XXH_STATIC_LINKING_ONLY
#include <xxhash.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <memory>

#include "mmsb/error.hpp"
#include "proto/mmsb.pb.h"
#include "runtime/page_names.hpp"
#include "runtime/page_store.hpp"
#include "serialize/file_io.hpp"

namespace mmsb::serialize {

using namespace detail;  // NOLINT: the byte-order and file helpers

namespace {

namespace fs = std::filesystem;

constexpr std::string_view kPrefix = "checkpoint-";
constexpr std::string_view kSuffix = ".mmsb";
constexpr std::size_t kFrameHeaderBytes = 8;
constexpr std::size_t kOutChunk = std::size_t{1} << 20;

struct ZstdCDeleter {
  void operator()(ZSTD_CCtx* c) const noexcept { ZSTD_freeCCtx(c); }
};
struct ZstdDDeleter {
  void operator()(ZSTD_DCtx* d) const noexcept { ZSTD_freeDCtx(d); }
};

// Writes the body to a file descriptor: frames in, (compressed) bytes out, with the checksum of the raw body.
class BodyWriter {
 public:
  BodyWriter(WritableFile& file, int level) : file_(file) {
    XXH3_64bits_reset(&hash_);
    out_.reserve(kOutChunk + ZSTD_CStreamOutSize());
    if (level > 0) {
      cctx_.reset(ZSTD_createCCtx());
      if (!cctx_) throw Error(ErrorCode::ResourceExhausted, "cannot create a zstd compression context");
      ZSTD_CCtx_setParameter(cctx_.get(), ZSTD_c_compressionLevel, level);
      ZSTD_CCtx_setParameter(cctx_.get(), ZSTD_c_checksumFlag, 1);
    }
  }

  void frame(std::uint32_t type, std::string_view head, std::string_view tail = {}) {
    char h[kFrameHeaderBytes];
    const std::uint64_t length = head.size() + tail.size();
    if (length > UINT32_MAX) {
      throw Error(ErrorCode::InvalidArgument, "a checkpoint frame of " + std::to_string(length) +
                                                  " bytes exceeds the 4 GiB frame limit (page too large)");
    }
    put_u32(h, static_cast<std::uint32_t>(length));
    put_u32(h + 4, type);
    raw({h, sizeof h});
    raw(head);
    raw(tail);
  }

  // Bytes written to the file so far.
  std::uint64_t file_bytes() const noexcept { return file_bytes_; }

  // Flushes the compressor and returns the raw body's length and checksum.
  std::pair<std::uint64_t, std::uint64_t> finish() {
    if (cctx_) {
      ZSTD_inBuffer in{nullptr, 0, 0};
      for (;;) {
        std::size_t remaining = compress(in, ZSTD_e_end);
        if (remaining == 0) break;
      }
    }
    flush_out(true);
    return {raw_bytes_, XXH3_64bits_digest(&hash_)};
  }

 private:
  void raw(std::string_view bytes) {
    if (bytes.empty()) return;
    XXH3_64bits_update(&hash_, bytes.data(), bytes.size());
    raw_bytes_ += bytes.size();
    if (!cctx_) {
      out_.append(bytes);
      flush_out(false);
      return;
    }
    ZSTD_inBuffer in{bytes.data(), bytes.size(), 0};
    while (in.pos < in.size) compress(in, ZSTD_e_continue);
  }
  std::size_t compress(ZSTD_inBuffer& in, ZSTD_EndDirective mode) {
    const std::size_t old = out_.size();
    out_.resize(old + ZSTD_CStreamOutSize());
    ZSTD_outBuffer out{out_.data() + old, ZSTD_CStreamOutSize(), 0};
    std::size_t rc = ZSTD_compressStream2(cctx_.get(), &out, &in, mode);
    out_.resize(old + out.pos);
    if (ZSTD_isError(rc)) {
      throw Error(ErrorCode::Internal, std::string("zstd compression failed: ") + ZSTD_getErrorName(rc));
    }
    flush_out(false);
    return rc;
  }
  void flush_out(bool all) {
    if (out_.size() >= kOutChunk || (all && !out_.empty())) {
      file_.append(out_);
      file_bytes_ += out_.size();
      out_.clear();
    }
  }

  WritableFile& file_;
  std::unique_ptr<ZSTD_CCtx, ZstdCDeleter> cctx_;
  XXH3_state_t hash_;
  std::string out_;
  std::uint64_t raw_bytes_ = 0;
  std::uint64_t file_bytes_ = 0;
};

wire::GraphNode node_to_wire(const NodeDescription& n) {
  wire::GraphNode w;
  w.set_output(n.output.value());
  w.set_kind(static_cast<wire::GraphNode::Kind>(static_cast<int>(n.kind)));
  for (PageId in : n.inputs) w.add_inputs(in.value());
  w.set_function(n.function);
  w.set_name(n.options.name);
  w.set_always_changes(n.options.always_changes);
  w.set_remap_input_offset(n.remap.input_offset);
  w.set_remap_length(n.remap.length);
  w.set_remap_output_offset(n.remap.output_offset);
  return w;
}

// ---- Reading

class Parser {
 public:
  Parser(std::string name, CheckpointLimits limits) : name_(std::move(name)), limits_(limits) {}

  [[noreturn]] void corrupt(const std::string& what) const {
    throw Error(ErrorCode::Corruption, "checkpoint " + name_ + ": " + what);
  }

  CheckpointState parse(std::string_view file) {
    if (file.size() < kCheckpointHeaderBytes + kCheckpointTrailerBytes) {
      corrupt("only " + std::to_string(file.size()) + " bytes, shorter than header and trailer (32 bytes)");
    }
    if (std::memcmp(file.data(), kCheckpointMagic, sizeof kCheckpointMagic) != 0) {
      corrupt("not an mmsb checkpoint (bad magic)");
    }
    const std::uint32_t version = get_u32(file.data() + 8);
    if (version != kCheckpointFormatVersion) {
      corrupt("unsupported checkpoint format version " + std::to_string(version) + " (this build reads version " +
              std::to_string(kCheckpointFormatVersion) + ")");
    }
    compression_ = get_u32(file.data() + 12);
    if (compression_ != kCompressionNone && compression_ != kCompressionZstd) {
      corrupt("unknown compression " + std::to_string(compression_) + " (expected 0 = none or 1 = zstd)");
    }
    const char* trailer = file.data() + file.size() - kCheckpointTrailerBytes;
    expected_raw_ = get_u64(trailer);
    expected_hash_ = get_u64(trailer + 8);
    if (expected_raw_ > limits_.max_body_bytes) {
      corrupt("body of " + std::to_string(expected_raw_) + " bytes exceeds the limit of " +
              std::to_string(limits_.max_body_bytes));
    }
    const std::string_view body =
        file.substr(kCheckpointHeaderBytes, file.size() - kCheckpointHeaderBytes - kCheckpointTrailerBytes);
    XXH3_64bits_reset(&hash_);
    if (compression_ == kCompressionNone) {
      feed(body);
    } else {
      decompress(body);
    }
    if (raw_bytes_ != expected_raw_) {
      corrupt("body is " + std::to_string(raw_bytes_) + " bytes, the trailer says " + std::to_string(expected_raw_));
    }
    const std::uint64_t hash = XXH3_64bits_digest(&hash_);
    if (hash != expected_hash_) {
      corrupt("checksum mismatch (stored " + hex64(expected_hash_) + ", computed " + hex64(hash) + ")");
    }
    if (window_.size() != consumed_) corrupt("incomplete frame at the end of the body");
    if (!ended_) corrupt("the end frame is missing (the file is truncated)");
    if (state_.pages.size() != page_count_ || state_.nodes.size() != node_count_ ||
        state_.edges.size() != edge_count_) {
      corrupt("header announces " + std::to_string(page_count_) + " pages, " + std::to_string(node_count_) +
              " nodes, " + std::to_string(edge_count_) + " edges; the body holds " +
              std::to_string(state_.pages.size()) + ", " + std::to_string(state_.nodes.size()) + ", " +
              std::to_string(state_.edges.size()));
    }
    return std::move(state_);
  }

 private:
  void decompress(std::string_view body) {
    std::unique_ptr<ZSTD_DCtx, ZstdDDeleter> dctx(ZSTD_createDCtx());
    if (!dctx) throw Error(ErrorCode::ResourceExhausted, "cannot create a zstd decompression context");
    std::string out(ZSTD_DStreamOutSize(), '\0');
    ZSTD_inBuffer in{body.data(), body.size(), 0};
    std::size_t rc = 1;
    while (in.pos < in.size || rc != 0) {
      ZSTD_outBuffer o{out.data(), out.size(), 0};
      const std::size_t before = in.pos;
      rc = ZSTD_decompressStream(dctx.get(), &o, &in);
      if (ZSTD_isError(rc)) corrupt(std::string("zstd: ") + ZSTD_getErrorName(rc));
      feed({out.data(), o.pos});
      if (rc == 0 && in.pos < in.size) corrupt("bytes after the end of the compressed body");
      if (o.pos == 0 && in.pos == before) {
        if (in.pos == in.size) corrupt("compressed body is truncated");
        corrupt("zstd made no progress");
      }
    }
  }

  void feed(std::string_view bytes) {
    if (bytes.empty()) return;
    raw_bytes_ += bytes.size();
    if (raw_bytes_ > expected_raw_) {
      corrupt("body decompresses to more than the " + std::to_string(expected_raw_) + " bytes the trailer says");
    }
    XXH3_64bits_update(&hash_, bytes.data(), bytes.size());
    window_.append(bytes);
    while (window_.size() - consumed_ >= kFrameHeaderBytes) {
      const char* h = window_.data() + consumed_;
      const std::uint64_t length = get_u32(h);
      const std::uint32_t type = get_u32(h + 4);
      if (length > expected_raw_) corrupt("frame of " + std::to_string(length) + " bytes is longer than the body");
      if (window_.size() - consumed_ - kFrameHeaderBytes < length) break;
      frame(type, std::string_view(h + kFrameHeaderBytes, length));
      consumed_ += kFrameHeaderBytes + length;
    }
    if (consumed_ > (std::size_t{1} << 20) && consumed_ * 2 > window_.size()) {
      window_.erase(0, consumed_);
      consumed_ = 0;
    }
  }

  void frame(std::uint32_t type, std::string_view body) {
    const std::string at = "frame " + std::to_string(frames_++);
    if (ended_) corrupt(at + " follows the end frame");
    if (frames_ == 1 && type != kFrameHeader)
      corrupt("the first frame is not the header (type " + std::to_string(type) + ")");
    if (body.size() > static_cast<std::size_t>(INT32_MAX)) corrupt(at + " is too large to parse");
    switch (type) {
      case kFrameHeader:
        if (frames_ != 1) corrupt(at + " is a second header");
        header_frame(at, body);
        break;
      case kFramePage:
        page_frame(at, body);
        break;
      case kFrameNode:
        node_frame(at, body);
        break;
      case kFrameEdge:
        edge_frame(at, body);
        break;
      case kFrameEnd:
        if (!body.empty()) corrupt(at + ": the end frame is not empty");
        ended_ = true;
        break;
      default:
        corrupt(at + ": unknown frame type " + std::to_string(type));
    }
  }

  // Parses a frame's message (frame() has bounded the body to INT32_MAX bytes).
  template <class Message>
  void parse_message(Message& m, std::string_view body, const std::string& at, const char* what) {
    if (!m.ParseFromArray(body.data(), static_cast<int>(body.size()))) corrupt(at + ": " + what + " does not parse");
  }

  void header_frame(const std::string& at, std::string_view body) {
    wire::CheckpointHeader h;
    parse_message(h, body, at, "header");
    if (h.format_version() != kCheckpointFormatVersion) {
      corrupt("header format version " + std::to_string(h.format_version()) + " (expected 1)");
    }
    if (h.compression() != compression_) corrupt("header and file disagree on the compression");
    state_.lsn = h.lsn();
    state_.created_ns = h.created_ns();
    state_.rank = h.rank();
    state_.next_sequence = h.next_sequence();
    state_.derived_stale = h.derived_stale();
    page_count_ = h.page_count();
    node_count_ = h.node_count();
    edge_count_ = h.edge_count();
    // Every page frame is at least a few bytes: counts beyond the body size are lies, not reasons to reserve.
    if (page_count_ > expected_raw_ || node_count_ > expected_raw_ || edge_count_ > expected_raw_) {
      corrupt("header counts exceed what the body can hold");
    }
    if (state_.rank > PageId::kMaxRank) corrupt("rank " + std::to_string(state_.rank) + " is out of range");
    if (state_.next_sequence > mmsb::detail::PageStore::kMaxSequence + 1) {
      corrupt("next page sequence " + std::to_string(state_.next_sequence) + " is beyond the largest page id");
    }
  }

  // A page must belong to the header's rank, lie below its next sequence, follow the previous page in id order and
  // hold the bytes it says it holds.
  void check_page(const std::string& at, const wire::Page& p, PageId id) {
    if (!id.valid() || id.rank() != state_.rank) {
      corrupt(at + ": page id " + id.to_string() + " is invalid for rank " + std::to_string(state_.rank));
    }
    if (id.sequence() >= state_.next_sequence) {
      corrupt(at + ": page " + id.to_string() + " is at or beyond the next sequence " +
              std::to_string(state_.next_sequence));
    }
    if (!state_.pages.empty() && !(state_.pages.back().id < id)) {
      corrupt(at + ": page " + id.to_string() + " is out of id order or repeated");
    }
    if (p.size() != p.data().size()) {
      corrupt(at + ": page " + id.to_string() + " says " + std::to_string(p.size()) + " bytes but holds " +
              std::to_string(p.data().size()));
    }
    if (p.location() < 1 || p.location() > 3) {
      corrupt(at + ": page " + id.to_string() + " has location " + std::to_string(p.location()));
    }
    if (!p.name().empty()) {
      if (auto problem = mmsb::detail::page_name_problem(p.name())) {
        corrupt(at + ": page " + id.to_string() + " has a bad name: " + *problem);
      }
    }
  }

  void page_frame(const std::string& at, std::string_view body) {
    wire::Page p;
    parse_message(p, body, at, "page");
    const PageId id(p.id());
    check_page(at, p, id);
    PageImage img;
    img.id = id;
    img.epoch = p.epoch();
    img.location = static_cast<Location>(p.location());
    img.name = p.name();
    img.offset = state_.arena.size();
    img.size = p.size();
    state_.arena.append(p.data());
    state_.pages.push_back(img);
  }

  void node_frame(const std::string& at, std::string_view body) {
    wire::GraphNode n;
    parse_message(n, body, at, "graph node");
    if (n.kind() < 0 || n.kind() > 2) corrupt(at + ": unknown node kind " + std::to_string(n.kind()));
    NodeDescription d;
    d.output = PageId(n.output());
    d.kind = static_cast<NodeKind>(n.kind());
    for (std::uint64_t in : n.inputs()) d.inputs.push_back(PageId(in));
    d.function = n.function();
    d.options.name = n.name();
    d.options.always_changes = n.always_changes();
    d.remap = ByteRemap{n.remap_input_offset(), n.remap_length(), n.remap_output_offset()};
    if (d.kind == NodeKind::Passthrough && d.inputs.size() != 1) {
      corrupt(at + ": passthrough node " + d.output.to_string() + " has " + std::to_string(d.inputs.size()) +
              " inputs");
    }
    state_.nodes.push_back(std::move(d));
  }

  void edge_frame(const std::string& at, std::string_view body) {
    wire::GraphEdge e;
    parse_message(e, body, at, "graph edge");
    if (e.kind() != wire::GraphEdge::CONTROL && e.kind() != wire::GraphEdge::GPU_SYNC) {
      corrupt(at + ": edge kind " + std::to_string(e.kind()) + " is not an ordering edge");
    }
    state_.edges.push_back({PageId(e.from()), PageId(e.to()),
                            e.kind() == wire::GraphEdge::CONTROL ? EdgeKind::Control : EdgeKind::GpuSync});
  }

  std::string name_;
  CheckpointLimits limits_;
  std::uint32_t compression_ = 0;
  std::uint64_t expected_raw_ = 0, expected_hash_ = 0;
  XXH3_state_t hash_;
  std::uint64_t raw_bytes_ = 0;
  std::string window_;
  std::size_t consumed_ = 0;
  std::uint64_t frames_ = 0;
  bool ended_ = false;
  std::uint64_t page_count_ = 0, node_count_ = 0, edge_count_ = 0;
  CheckpointState state_;
};

}  // namespace

std::string checkpoint_file_name(std::uint64_t lsn) { return numbered_file_name(kPrefix, lsn, kSuffix); }

bool parse_checkpoint_name(const std::string& name, std::uint64_t& lsn) {
  return parse_numbered_file_name(name, kPrefix, kSuffix, lsn);
}

namespace {

void write_header_frame(BodyWriter& body, const CheckpointState& state, std::uint32_t compression) {
  wire::CheckpointHeader h;
  h.set_format_version(kCheckpointFormatVersion);
  h.set_lsn(state.lsn);
  h.set_page_count(state.pages.size());
  h.set_edge_count(state.edges.size());
  h.set_node_count(state.nodes.size());
  h.set_created_ns(state.created_ns);
  h.set_compression(compression);
  h.set_rank(state.rank);
  h.set_next_sequence(state.next_sequence);
  h.set_derived_stale(state.derived_stale);
  body.frame(kFrameHeader, h.SerializeAsString());
}

// A page frame is the Page message without its data, followed by the data as field 5 written by hand: the
// concatenation is one valid Page message, and the bytes are not copied into a protobuf string first. `head` is
// the caller's buffer, reused across pages.
void write_page_frame(BodyWriter& body, const CheckpointState& state, const PageImage& img, std::string& head) {
  wire::Page p;
  p.set_id(img.id.value());
  p.set_size(img.size);
  p.set_epoch(img.epoch);
  p.set_location(static_cast<std::uint32_t>(img.location));
  if (!img.name.empty()) p.set_name(img.name);
  head = p.SerializeAsString();
  head.push_back(static_cast<char>((5 << 3) | 2));  // field 5, length-delimited
  for (std::uint64_t v = img.size;; v >>= 7) {
    if (v < 0x80) {
      head.push_back(static_cast<char>(v));
      break;
    }
    head.push_back(static_cast<char>((v & 0x7f) | 0x80));
  }
  body.frame(kFramePage, head, state.bytes(img));
}

void write_edge_frame(BodyWriter& body, const OrderingEdge& e) {
  wire::GraphEdge w;
  w.set_from(e.from.value());
  w.set_to(e.to.value());
  w.set_kind(e.kind == EdgeKind::GpuSync ? wire::GraphEdge::GPU_SYNC : wire::GraphEdge::CONTROL);
  body.frame(kFrameEdge, w.SerializeAsString());
}

// Writes header, body and trailer of a checkpoint to `file` and syncs it; fills the byte counts of `info`.
void write_checkpoint_file(WritableFile& file, const CheckpointState& state, int zstd_level, CheckpointFileInfo& info) {
  const std::uint32_t compression = zstd_level > 0 ? kCompressionZstd : kCompressionNone;
  char header[kCheckpointHeaderBytes];
  std::memcpy(header, kCheckpointMagic, sizeof kCheckpointMagic);
  put_u32(header + 8, kCheckpointFormatVersion);
  put_u32(header + 12, compression);
  file.append({header, sizeof header});

  BodyWriter body(file, zstd_level);
  write_header_frame(body, state, compression);
  std::string head;
  for (const PageImage& img : state.pages) write_page_frame(body, state, img, head);
  for (const NodeDescription& n : state.nodes) body.frame(kFrameNode, node_to_wire(n).SerializeAsString());
  for (const OrderingEdge& e : state.edges) write_edge_frame(body, e);
  body.frame(kFrameEnd, {});
  auto [raw_bytes, hash] = body.finish();
  char trailer[kCheckpointTrailerBytes];
  put_u64(trailer, raw_bytes);
  put_u64(trailer + 8, hash);
  file.append({trailer, sizeof trailer});
  file.sync();
  info.raw_bytes = raw_bytes;
  info.file_bytes = sizeof header + body.file_bytes() + sizeof trailer;
}

}  // namespace

CheckpointFileInfo write_checkpoint(const fs::path& dir, const CheckpointState& state, int zstd_level,
                                    FileSystem& fsys) {
  if (zstd_level < 0 || zstd_level > ZSTD_maxCLevel()) {
    throw Error(ErrorCode::InvalidArgument, "checkpoint compression level " + std::to_string(zstd_level) +
                                                " is outside 0.." + std::to_string(ZSTD_maxCLevel()));
  }
  CheckpointFileInfo info;
  info.file = dir / checkpoint_file_name(state.lsn);
  const fs::path tmp = info.file.string() + ".tmp";
  try {
    std::unique_ptr<WritableFile> file = fsys.create(tmp);
    write_checkpoint_file(*file, state, zstd_level, info);
    file.reset();
    fsys.rename(tmp, info.file);
  } catch (...) {
    try {
      fsys.remove(tmp);
    } catch (...) {  // the original error is the one to report
    }
    throw;
  }
  fsys.sync_directory(dir);
  return info;
}

CheckpointState parse_checkpoint(std::string_view file_bytes, const std::string& name, CheckpointLimits limits) {
  return Parser(name, limits).parse(file_bytes);
}

CheckpointState read_checkpoint(const fs::path& file, CheckpointLimits limits, FileSystem& fsys) {
  // The file holds the body (compressed or not) between a header and a trailer; zstd expands incompressible
  // data by a little (at most 1/128 plus a block header per 128 KiB), so this bound refuses what no writer wrote.
  const std::uint64_t body = limits.max_body_bytes;
  const std::uint64_t slack = body / 64 + (std::uint64_t{1} << 20) + kCheckpointHeaderBytes + kCheckpointTrailerBytes;
  const std::uint64_t max_file = body > UINT64_MAX - slack ? UINT64_MAX : body + slack;
  const FileStatus status = fsys.status(file);
  if (status.type != FileType::Regular) {
    throw Error(ErrorCode::Corruption,
                "checkpoint " + file.filename().string() +
                    (status.type == FileType::Missing ? " is missing" : " is not a regular file; not read"));
  }
  if (status.size > max_file) {
    throw Error(ErrorCode::Corruption, "checkpoint " + file.filename().string() + " holds " +
                                           std::to_string(status.size) + " bytes, more than its body limit allows");
  }
  std::string bytes;
  try {
    bytes = fsys.read(file, max_file);
  } catch (const Error& e) {
    if (e.code() != ErrorCode::InvalidArgument) throw;
    throw Error(ErrorCode::Corruption, std::string("checkpoint ") + e.what());
  }
  return parse_checkpoint(bytes, file.filename().string(), limits);
}

}  // namespace mmsb::serialize
