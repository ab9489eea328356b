// Helpers shared by the test suites.
#pragma once

#include <gtest/gtest.h>
#include <malloc.h>

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <string>

#include "mmsb/mmsb.hpp"

#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
// From the sanitizer runtimes (ASan and TSan both export it); GCC ships no header that declares it.
extern "C" std::size_t __sanitizer_get_current_allocated_bytes();
#endif

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

// Moves `amount` between two int64 balances (offset 0) in one transaction that expects the epochs of one consistent
// read of both: true when it committed, false on a Conflict (a commit moved a page since the read); other errors
// propagate.
inline bool try_transfer(Runtime& rt, PageId from, PageId to, std::int64_t amount) {
  PageId pair[] = {from, to};
  std::int64_t a = 0, b = 0;
  std::uint64_t ea = 0, eb = 0;
  {
    ReadView view = rt.read_view(pair);  // its locks drop at the end of this block
    a = view.value<std::int64_t>(from, 0);
    b = view.value<std::int64_t>(to, 0);
    ea = view.info(from).epoch;
    eb = view.info(to).epoch;
  }
  auto txn = rt.begin();
  txn.expect_epoch(from, ea);
  txn.expect_epoch(to, eb);
  txn.write_value<std::int64_t>(from, 0, a - amount);
  txn.write_value<std::int64_t>(to, 0, b + amount);
  try {
    txn.commit();
    return true;
  } catch (const Error& e) {
    if (e.code() != ErrorCode::Conflict) throw;
    return false;
  }
}

// The whole contents of a file (empty when it cannot be read), and writing a whole file.
// Heap bytes the process holds through malloc (in use, including malloc's own large mappings), for tests of what
// the runtime keeps; under a sanitizer, whose allocator replaces malloc's, the sanitizer's count.
inline std::size_t heap_bytes_in_use() {
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
  return __sanitizer_get_current_allocated_bytes();
#else
  const struct mallinfo2 info = mallinfo2();
  return info.uordblks + info.hblkhd;
#endif
}

inline std::string read_file(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary | std::ios::ate);
  if (!in) return {};
  std::string bytes(static_cast<std::size_t>(in.tellg()), '\0');
  in.seekg(0);
  in.read(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  return bytes;
}
inline void write_file(const std::filesystem::path& path, const std::string& bytes) {
  std::ofstream(path, std::ios::binary | std::ios::trunc) << bytes;
}

}  // namespace mmsb::testing
