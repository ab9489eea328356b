// serialize/codec.hpp — protobuf encoding of commit records and deltas (messages in proto/mmsb.proto).
//
// encode_commit() turns a CommitRecord (whose spans point into runtime memory) into the bytes of a
// mmsb.wire.Commit message; decode_commit() turns such bytes back into owning values. Decoding treats its input
// as untrusted: malformed protobuf, a delta that breaks a Delta invariant, or a location other than 1, 2, 3 give
// Error(Corruption) naming what is wrong. The generated protobuf types never appear in this header.
//
//   std::string bytes = mmsb::serialize::encode_commit(record);
//   mmsb::serialize::DecodedCommit c = mmsb::serialize::decode_commit(bytes);
//   for (const mmsb::Delta& d : c.deltas) mmsb::apply(d, pages[d.page]);
//
// Thread-safety: all functions are reentrant and may run concurrently.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "mmsb/delta.hpp"
#include "mmsb/event.hpp"
#include "mmsb/page_id.hpp"
#include "mmsb/runtime.hpp"

namespace mmsb::serialize {

// An owning copy of one CommitRecord.
struct DecodedCommit {
  std::uint64_t lsn = 0;
  std::uint64_t timestamp_ns = 0;
  std::vector<Delta> deltas;
  std::vector<CommitRecord::CreatedPage> created;
  std::vector<PageId> deleted;
  std::vector<CommitRecord::RenamedPage> renamed;

  // A CommitRecord viewing this commit (to re-encode it, or hand it to a CommitSink); valid while it lives.
  CommitRecord record() const {
    CommitRecord r;
    r.lsn = lsn;
    r.timestamp_ns = timestamp_ns;
    r.deltas = deltas;
    r.created = created;
    r.deleted = deleted;
    r.renamed = renamed;
    return r;
  }

  friend bool operator==(const DecodedCommit& a, const DecodedCommit& b);
};

// Serialized mmsb.wire.Commit message of `record`.
std::string encode_commit(const CommitRecord& record);
// The same, appended to `out` (the log builds a record's frame in one buffer this way).
void append_commit(const CommitRecord& record, std::string& out);
// Parses a mmsb.wire.Commit message; throws Error(Corruption) when the bytes are not one or a delta is invalid.
DecodedCommit decode_commit(std::string_view bytes);

// Serialized mmsb.wire.Event message of `event` (observers' events, e.g. to ship them to a monitor).
std::string encode_event(const Event& event);
// Parses a mmsb.wire.Event message; Error(Corruption) when it does not parse or names an unknown kind.
Event decode_event(std::string_view bytes);

// Serialized mmsb.wire.Delta message of `delta`.
std::string encode_delta(const Delta& delta);
// Parses a mmsb.wire.Delta message and validates it; throws Error(Corruption) on any failure.
Delta decode_delta(std::string_view bytes);

// The deltas one rank sends another in one superstep of a distributed wave (mmsb.wire.DeltaBatch; distributed/).
struct DecodedDeltaBatch {
  std::uint32_t source_rank = 0;
  std::uint64_t wave = 0;
  std::uint64_t superstep = 0;
  std::vector<Delta> deltas;
};
// Appends the serialized mmsb.wire.DeltaBatch to `out` (undo bytes are never sent). Throws Error(InvalidArgument)
// when the message would exceed protobuf's 2 GiB limit.
void append_delta_batch(std::uint32_t source_rank, std::uint64_t wave, std::uint64_t superstep,
                        std::span<const Delta* const> deltas, std::string& out);
// Parses a mmsb.wire.DeltaBatch and validates every delta; throws Error(Corruption) on any failure.
DecodedDeltaBatch decode_delta_batch(std::string_view bytes);

}  // namespace mmsb::serialize
