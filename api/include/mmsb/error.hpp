// mmsb/error.hpp — the one exception type mmsb throws for misuse and bad input.
//
// Every failure a caller can act on surfaces as `mmsb::Error`: it carries a machine-readable `ErrorCode`
// and a message that names the offending value and says what to do about it. Internal invariants are
// checked with assertions instead; an `ErrorCode::Internal` error means a bug in mmsb.
//
//   try { rt.delete_page(id); }
//   catch (const mmsb::Error& e) { if (e.code() == mmsb::ErrorCode::NotFound) { /* already gone */ } }
//
// Commits. Every code says whether a failed Transaction::commit() took effect: only NodeFailed means it did (the
// commit is durable and visible; committed_lsn() is its LSN; a wave after it failed). Conflict is the one code to
// retry by re-running the whole transaction (Runtime::transact() does). docs/api.md has the table of every code:
// commit happened yes/no/maybe, safe to retry yes/no.
//
// Thread-safety: Error is an immutable value; copies may be used from any thread.
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>
#include <string_view>

namespace mmsb {

enum class ErrorCode : int {
  InvalidArgument = 1,    // the call's arguments are wrong (bad size, out-of-range offset, mismatched deltas)
  NotFound = 2,           // an id names no live object (never created, or deleted)
  Corruption = 3,         // stored or received bytes fail a check (checksum, framing, bounds)
  IoError = 4,            // the operating system refused a file or memory operation
  Unsupported = 5,        // the request is valid but not available here (e.g. a SIMD level the CPU lacks)
  ResourceExhausted = 6,  // a limit was reached (memory budget, id space, queue capacity)
  Aborted = 7,            // the operation was cancelled (the engine is shutting down, a rank stopped); not retried
  Internal = 8,           // a broken invariant inside mmsb: please report it
  Conflict = 9,           // a page the transaction read or expected moved before it committed: nothing was
                          // committed; re-read and retry the whole transaction (Runtime::transact)
  NodeFailed = 10,        // a derived node failed in a wave; from commit(): the commit itself took effect (its LSN is
                          // Error::committed_lsn()), so do not retry it
};

// Stable lower-case name of a code ("invalid_argument", ...), for logs and JSON.
constexpr std::string_view error_code_name(ErrorCode code) noexcept {
  switch (code) {
    case ErrorCode::InvalidArgument:
      return "invalid_argument";
    case ErrorCode::NotFound:
      return "not_found";
    case ErrorCode::Corruption:
      return "corruption";
    case ErrorCode::IoError:
      return "io_error";
    case ErrorCode::Unsupported:
      return "unsupported";
    case ErrorCode::ResourceExhausted:
      return "resource_exhausted";
    case ErrorCode::Aborted:
      return "aborted";
    case ErrorCode::Internal:
      return "internal";
    case ErrorCode::Conflict:
      return "conflict";
    case ErrorCode::NodeFailed:
      return "node_failed";
  }
  return "unknown";
}

class Error : public std::runtime_error {
 public:
  Error(ErrorCode code, const std::string& message, std::uint64_t committed_lsn = 0)
      : std::runtime_error(std::string(error_code_name(code)) + ": " + message),
        code_(code),
        committed_lsn_(committed_lsn) {}

  ErrorCode code() const noexcept { return code_; }
  // The LSN of a commit that took effect although this error was raised after it (NodeFailed from commit()); 0
  // when the failed call committed nothing.
  std::uint64_t committed_lsn() const noexcept { return committed_lsn_; }

 private:
  ErrorCode code_;
  std::uint64_t committed_lsn_;
};

}  // namespace mmsb
