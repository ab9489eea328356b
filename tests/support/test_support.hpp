// Helpers shared by the test suites.
#pragma once

#include <gtest/gtest.h>

#include <cstdint>

#include "mmsb/mmsb.hpp"

namespace mmsb::testing {

// The code of the mmsb::Error that `f` throws; a test failure (and Internal) when it throws none.
template <class F>
ErrorCode error_code_of(F&& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.code();
  }
  ADD_FAILURE() << "expected an mmsb::Error";
  return ErrorCode::Internal;
}

// Commits one value at `offset` of `page` as its own transaction.
template <class T>
void commit_value(Runtime& rt, PageId page, std::uint64_t offset, const T& value) {
  auto txn = rt.begin();
  txn.write_value<T>(page, offset, value);
  txn.commit();
}

inline void commit_u64(Runtime& rt, PageId page, std::uint64_t offset, std::uint64_t value) {
  commit_value<std::uint64_t>(rt, page, offset, value);
}

inline void commit_i64(Runtime& rt, PageId page, std::int64_t value) { commit_value<std::int64_t>(rt, page, 0, value); }

}  // namespace mmsb::testing
