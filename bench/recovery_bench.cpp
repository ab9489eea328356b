// Recovery time of a durable directory (issue 16): how long DurableRuntime takes to open a log of a given size,
// per GiB of log and per million records, with the page cache warm and after evicting the log from it.
//
//   recovery_s_per_gib                   seconds to open (read, check, decode, apply) the log, per GiB of log;
//                                        the log was just written, so its pages are in the page cache (warm)
//   recovery_s_per_million_records       the same open, per million records
//   recovery_cold_s_per_gib              the same directory opened again after each file was fdatasynced and
//                                        evicted with posix_fadvise(DONTNEED) (the guest's cache only: the host
//                                        may still hold the bytes; dropping all caches needs privileges we lack)
//   recovery_cold_s_per_million_records  that open, per million records
//   recovery_log_gib, recovery_records   the size of the log measured (segments and MANIFEST; no checkpoint)
//
// The log: 256 pages of 4 KiB and 1,048,576 commits (32,768 with --quick), each writing 512 bytes of fresh
// pseudo-random data at one of 8 offsets of one page, with the default undo bytes: about 1.1 GiB (35 MiB quick).
// Each repetition writes the directory afresh and checks that every open recovers every record and the live
// state's hash.
#include <fcntl.h>
#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <stdexcept>
#include <string>
#include <vector>

#include "bench/harness.hpp"
#include "mmsb/mmsb.hpp"
#include "tests/support/temp_dir.hpp"

namespace mmsb::bench {
namespace {

namespace fs = std::filesystem;
using clock_type = std::chrono::steady_clock;

constexpr int kPages = 256;
constexpr std::size_t kPageBytes = 4096;
constexpr std::size_t kWriteBytes = 512;

[[noreturn]] void check_failed(const std::string& what) { throw std::runtime_error("recovery: " + what); }

DurableOptions unsynced() {
  DurableOptions o;
  o.sync = SyncPolicy::None;  // the writes are not what is measured; the destructor syncs everything
  return o;
}

// Writes the workload's log into `dir` and returns the live state's hash.
std::uint64_t write_log(const fs::path& dir, std::uint64_t commits) {
  DurableRuntime db(dir, unsynced());
  Runtime& rt = db.runtime();
  std::vector<PageId> pages;
  for (int i = 0; i < kPages; ++i) pages.push_back(rt.create_page(kPageBytes));
  std::uint64_t x = 0x9e3779b97f4a7c15ull;
  std::vector<std::byte> bytes(kWriteBytes);
  for (std::uint64_t i = 0; i < commits; ++i) {
    for (std::size_t b = 0; b < bytes.size(); b += 8) {
      x ^= x << 13, x ^= x >> 7, x ^= x << 17;
      for (std::size_t k = 0; k < 8; ++k) bytes[b + k] = static_cast<std::byte>(x >> (8 * k));
    }
    auto txn = rt.begin();
    txn.write(pages[i % kPages], (i / kPages) % (kPageBytes / kWriteBytes) * kWriteBytes, bytes);
    txn.commit();
  }
  return state_hash(rt);
}

std::uint64_t directory_bytes(const fs::path& dir) {
  std::uint64_t total = 0;
  for (const auto& entry : fs::directory_iterator(dir))
    if (entry.is_regular_file()) total += entry.file_size();
  return total;
}

// Syncs every file of `dir` and asks the kernel to drop its cached pages.
void evict_from_page_cache(const fs::path& dir) {
  for (const auto& entry : fs::directory_iterator(dir)) {
    if (!entry.is_regular_file()) continue;
    const int fd = ::open(entry.path().c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) check_failed("cannot open " + entry.path().string());
    const bool ok = ::fdatasync(fd) == 0 && ::posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED) == 0;
    ::close(fd);
    if (!ok) check_failed("cannot evict " + entry.path().string() + " from the page cache");
  }
}

// Seconds to open `dir`, after checking that the open recovered `records` records and the state `hash`.
double timed_open(const fs::path& dir, std::uint64_t records, std::uint64_t hash) {
  const auto start = clock_type::now();
  DurableRuntime db(dir, unsynced());
  const double seconds = std::chrono::duration<double>(clock_type::now() - start).count();
  if (db.recovery().records_replayed != records || state_hash(db.runtime()) != hash) {
    check_failed("replayed " + std::to_string(db.recovery().records_replayed) + " of " + std::to_string(records) +
                 " records, or the state differs from the live run's");
  }
  return seconds;
}

std::vector<double> recovery_group() {
  mmsb::testing::TempDir dir("mmsb-recovery-bench");
  const std::uint64_t commits = quick_mode() ? 32'768 : 1'048'576;
  const std::uint64_t hash = write_log(dir.path(), commits);
  const std::uint64_t records = commits + kPages;  // the page creations are records too
  const double gib = static_cast<double>(directory_bytes(dir.path())) / double(1ull << 30);
  const double millions = static_cast<double>(records) / 1e6;
  const double warm = timed_open(dir.path(), records, hash);
  evict_from_page_cache(dir.path());
  const double cold = timed_open(dir.path(), records, hash);
  return {warm / gib, warm / millions, cold / gib, cold / millions, gib, static_cast<double>(records)};
}

RegisterGroup recovery(
    "recovery",
    "DurableRuntime open of a log of 1,048,576 512-byte commits (~1.1 GiB; 32,768 with --quick): seconds per GiB "
    "and per million records, page cache warm and after posix_fadvise(DONTNEED); at most 3 repetitions",
    {"recovery_s_per_gib", "recovery_s_per_million_records", "recovery_cold_s_per_gib",
     "recovery_cold_s_per_million_records", "recovery_log_gib", "recovery_records"},
    recovery_group, 3);

}  // namespace
}  // namespace mmsb::bench
