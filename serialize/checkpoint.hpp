// serialize/checkpoint.hpp — checkpoint files: the whole state of a runtime at one LSN (internal).
//
// A checkpoint holds every live page (id, epoch, location, bytes), the dependency graph's nodes and ordering
// edges, and the LSN it covers. The file is a 16-byte header, a body of framed protobuf messages (zstd-compressed
// or stored), and a 16-byte trailer with the body's length and XXH3-64 checksum; docs/formats.md specifies it.
// write_checkpoint() makes it durable atomically (temporary file, fsync, rename, directory fsync).
// read_checkpoint() treats the file as untrusted: every length and count is checked, and any damage is
// Error(Corruption) naming the file and what is wrong.
//
// Thread-safety: the functions are reentrant; a CheckpointState is a plain value.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <string_view>
#include <vector>

#include "mmsb/file_system.hpp"
#include "mmsb/page_id.hpp"
#include "mmsb/runtime.hpp"
#include "mmsb/topology.hpp"

namespace mmsb::serialize {

inline constexpr char kCheckpointMagic[8] = {'M', 'M', 'S', 'B', 'C', 'K', 'P', 'T'};
inline constexpr std::uint32_t kCheckpointFormatVersion = 1;
inline constexpr std::uint64_t kCheckpointHeaderBytes = 16;   // magic, u32 version, u32 compression
inline constexpr std::uint64_t kCheckpointTrailerBytes = 16;  // u64 body length, u64 XXH3-64 of the body
inline constexpr std::uint32_t kCompressionNone = 0;
inline constexpr std::uint32_t kCompressionZstd = 1;
// Frame types of the body (each frame: u32 length, u32 type, then `length` bytes of protobuf).
inline constexpr std::uint32_t kFrameHeader = 1;  // mmsb.wire.CheckpointHeader, exactly once, first
inline constexpr std::uint32_t kFramePage = 2;    // mmsb.wire.Page
inline constexpr std::uint32_t kFrameNode = 3;    // mmsb.wire.GraphNode
inline constexpr std::uint32_t kFrameEdge = 4;    // mmsb.wire.GraphEdge (CONTROL or GPU_SYNC)
inline constexpr std::uint32_t kFrameEnd = 5;     // empty; last

// "checkpoint-<LSN, 20 digits>.mmsb"
std::string checkpoint_file_name(std::uint64_t lsn);
bool parse_checkpoint_name(const std::string& name, std::uint64_t& lsn);

struct PageImage {
  PageId id;
  std::uint64_t epoch = 0;
  Location location = Location::Host;
  std::uint64_t offset = 0;  // the page's bytes are arena[offset, offset + size)
  std::uint64_t size = 0;
  std::string name = {};  // "" for an unnamed page
};

struct CheckpointState {
  std::uint64_t lsn = 0;  // every commit up to this LSN is included, none after it
  std::uint64_t created_ns = 0;
  std::uint32_t rank = 0;
  std::uint64_t next_sequence = 1;  // first page sequence number never handed out
  std::vector<PageImage> pages;     // in id order
  std::string arena;                // the pages' bytes
  std::vector<NodeDescription> nodes;
  std::vector<OrderingEdge> edges;
  bool derived_stale = false;  // derived pages do not reflect their inputs: recompute them on opening

  std::string_view bytes(const PageImage& page) const { return std::string_view(arena).substr(page.offset, page.size); }
};

struct CheckpointFileInfo {
  std::filesystem::path file;
  std::uint64_t raw_bytes = 0;   // body length before compression
  std::uint64_t file_bytes = 0;  // size of the file
};

// Writes dir/checkpoint-<lsn>.mmsb durably. `zstd_level` 0 stores the body uncompressed. Error(IoError) on failure
// (no partial file is left under the final name).
CheckpointFileInfo write_checkpoint(const std::filesystem::path& dir, const CheckpointState& state, int zstd_level,
                                    FileSystem& fsys = *posix_file_system());

struct CheckpointLimits {
  std::uint64_t max_body_bytes = ~std::uint64_t{0};  // refuse (Corruption) a body that decompresses beyond this
};
// Reads and validates a checkpoint file. Only a regular file no larger than the body limit allows is read; anything
// else is Error(Corruption).
CheckpointState read_checkpoint(const std::filesystem::path& file, CheckpointLimits limits = {},
                                FileSystem& fsys = *posix_file_system());
// The same for file contents in memory; `name` is used in error messages.
CheckpointState parse_checkpoint(std::string_view file_bytes, const std::string& name, CheckpointLimits limits = {});

}  // namespace mmsb::serialize
