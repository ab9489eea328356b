// mmsb/error.hpp — the one exception type mmsb throws for misuse and bad input.
//
// Every failure a caller can act on surfaces as `mmsb::Error`: it carries a machine-readable `ErrorCode`
// and a message that names the offending value and says what to do about it. Internal invariants are
// checked with assertions instead; an `ErrorCode::Internal` error means a bug in mmsb.
//
//   try { rt.delete_page(id); }
//   catch (const mmsb::Error& e) { if (e.code() == mmsb::ErrorCode::NotFound) { /* already gone */ } }
//
// Thread-safety: Error is an immutable value; copies may be used from any thread.
#pragma once

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
  Aborted = 7,            // the operation lost a race it cannot win (e.g. base-epoch mismatch); retry it
  Internal = 8,           // a broken invariant inside mmsb: please report it
};

// Stable lower-case name of a code ("invalid_argument", ...), for logs and JSON.
constexpr std::string_view error_code_name(ErrorCode code) noexcept {
  switch (code) {
    case ErrorCode::InvalidArgument: return "invalid_argument";
    case ErrorCode::NotFound: return "not_found";
    case ErrorCode::Corruption: return "corruption";
    case ErrorCode::IoError: return "io_error";
    case ErrorCode::Unsupported: return "unsupported";
    case ErrorCode::ResourceExhausted: return "resource_exhausted";
    case ErrorCode::Aborted: return "aborted";
    case ErrorCode::Internal: return "internal";
  }
  return "unknown";
}

class Error : public std::runtime_error {
 public:
  Error(ErrorCode code, const std::string& message)
      : std::runtime_error(std::string(error_code_name(code)) + ": " + message), code_(code) {}

  ErrorCode code() const noexcept { return code_; }

 private:
  ErrorCode code_;
};

}  // namespace mmsb
