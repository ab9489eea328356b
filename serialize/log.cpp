#include "serialize/log.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#define XXH_STATIC_LINKING_ONLY
#include <xxhash.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <system_error>

#include "mmsb/error.hpp"
#include "serialize/file_io.hpp"

namespace mmsb::serialize {

using namespace detail;  // NOLINT: the byte-order and file helpers

namespace {

namespace fs = std::filesystem;

constexpr std::string_view kSegmentPrefix = "log-";
constexpr std::string_view kSegmentSuffix = ".mmsb";

// XXH3-64 of the 4 type bytes (as stored) followed by the body.
std::uint64_t record_checksum(const char* type_bytes, std::string_view body) {
  XXH3_state_t state;
  XXH3_64bits_reset(&state);
  XXH3_64bits_update(&state, type_bytes, 4);
  XXH3_64bits_update(&state, body.data(), body.size());
  return XXH3_64bits_digest(&state);
}

}  // namespace

// The LSN in a segment file name, or false when `name` is not a segment name.
bool parse_segment_name(const std::string& name, std::uint64_t& key) {
  return parse_numbered_file_name(name, kSegmentPrefix, kSegmentSuffix, key);
}


namespace detail {

void io_error(const std::string& what, const fs::path& path, int err) {
  throw Error(ErrorCode::IoError, what + " " + path.string() + ": " + std::strerror(err));
}

namespace {
std::atomic<bool> fault_armed{false};
std::mutex fault_mutex;
FaultPlan fault_plan;  // guarded by fault_mutex
}  // namespace

void inject_fault(const FaultPlan& plan) {
  std::lock_guard lock(fault_mutex);
  fault_plan = plan;
  fault_armed.store(true, std::memory_order_release);
}

void clear_faults() {
  std::lock_guard lock(fault_mutex);
  fault_armed.store(false, std::memory_order_release);
}

int take_fault(FaultOp op, bool* half) {
  if (!fault_armed.load(std::memory_order_relaxed)) return 0;
  std::lock_guard lock(fault_mutex);
  if (!fault_armed.load(std::memory_order_relaxed) || fault_plan.op != op) return 0;
  if (fault_plan.skip > 0) {
    --fault_plan.skip;
    return 0;
  }
  if (fault_plan.fail == 0) return 0;
  --fault_plan.fail;
  if (half) *half = fault_plan.partial;
  return fault_plan.error;
}

int fdatasync_retry(int fd) {
  if (int injected = take_fault(FaultOp::Sync)) return injected;
  while (::fdatasync(fd) != 0) {
    if (errno != EINTR) return errno;
  }
  return 0;
}

void write_all(int fd, const char* data, std::size_t n, const fs::path& path) {
  bool half = false;
  if (int injected = take_fault(FaultOp::Write, &half)) {
    if (half && n > 1) (void)!::write(fd, data, n / 2);
    io_error("cannot write to", path, injected);
  }
  while (n > 0) {
    ssize_t w = ::write(fd, data, n);
    if (w < 0) {
      if (errno == EINTR) continue;
      io_error("cannot write to", path, errno);
    }
    data += w;
    n -= static_cast<std::size_t>(w);
  }
}

void sync_fd(int fd, const fs::path& path) {
  if (int err = fdatasync_retry(fd)) io_error("cannot fdatasync", path, err);
}

constexpr std::size_t kNameDigits = 20;  // enough for any uint64

std::string numbered_file_name(std::string_view prefix, std::uint64_t n, std::string_view suffix) {
  char digits[kNameDigits + 1];
  std::snprintf(digits, sizeof digits, "%020llu", static_cast<unsigned long long>(n));
  std::string name(prefix);
  name.append(digits, kNameDigits);
  name.append(suffix);
  return name;
}

bool parse_numbered_file_name(std::string_view name, std::string_view prefix, std::string_view suffix,
                              std::uint64_t& n) {
  if (name.size() != prefix.size() + kNameDigits + suffix.size()) return false;
  if (name.substr(0, prefix.size()) != prefix || name.substr(name.size() - suffix.size()) != suffix) return false;
  std::uint64_t v = 0;
  for (char c : name.substr(prefix.size(), kNameDigits)) {
    if (c < '0' || c > '9') return false;
    const std::uint64_t digit = static_cast<std::uint64_t>(c - '0');
    if (v > (UINT64_MAX - digit) / 10) return false;
    v = v * 10 + digit;
  }
  n = v;
  return true;
}

std::string hex64(std::uint64_t v) {
  char buf[19];
  std::snprintf(buf, sizeof buf, "0x%016llx", static_cast<unsigned long long>(v));
  return buf;
}

}  // namespace detail

void sync_directory(const fs::path& dir) {
  int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) io_error("cannot open directory", dir, errno);
  int rc;
  while ((rc = ::fsync(fd)) != 0 && errno == EINTR) {
  }
  int err = errno;
  ::close(fd);
  if (rc != 0) io_error("cannot fsync directory", dir, err);
}

std::string read_file(const fs::path& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) io_error("cannot open", path, errno);
  std::string out;
  struct stat st {};
  if (::fstat(fd, &st) == 0 && st.st_size > 0) out.reserve(static_cast<std::size_t>(st.st_size));
  char buf[1 << 16];
  for (;;) {
    ssize_t r = ::read(fd, buf, sizeof buf);
    if (r < 0) {
      if (errno == EINTR) continue;
      int err = errno;
      ::close(fd);
      io_error("cannot read", path, err);
    }
    if (r == 0) break;
    out.append(buf, static_cast<std::size_t>(r));
  }
  ::close(fd);
  return out;
}


FramedRecord frame_at(std::string_view data, std::uint64_t pos) {
  FramedRecord v;
  const std::uint64_t left = pos <= data.size() ? data.size() - pos : 0;
  if (left < kRecordHeaderBytes) {
    v.problem = "incomplete record header (" + std::to_string(left) + " of " + std::to_string(kRecordHeaderBytes) +
                " bytes)";
    return v;
  }
  const char* h = data.data() + pos;
  const std::uint64_t length = get_u32(h);
  v.type = get_u32(h + 4);
  if (length > kMaxRecordBody) {
    v.state = FramedRecord::State::TooLong;
    v.problem = "record length " + std::to_string(length) + " exceeds the maximum of " + std::to_string(kMaxRecordBody);
    return v;
  }
  if (left - kRecordHeaderBytes < length) {
    v.problem = "incomplete record body (" + std::to_string(left - kRecordHeaderBytes) + " of " +
                std::to_string(length) + " bytes)";
    return v;
  }
  v.body = std::string_view(h + kRecordHeaderBytes, length);
  v.end = pos + kRecordHeaderBytes + length;
  const std::uint64_t stored = get_u64(h + 8);
  const std::uint64_t computed = record_checksum(h + 4, v.body);
  if (stored != computed) {
    v.state = FramedRecord::State::BadChecksum;
    v.problem = "checksum mismatch (stored " + hex64(stored) + ", computed " + hex64(computed) + ")";
    return v;
  }
  v.state = FramedRecord::State::Ok;
  return v;
}

namespace {
// Fills the header of `frame`, whose body already follows kRecordHeaderBytes reserved bytes.
void seal_frame(std::string& frame, std::uint32_t type) {
  const std::string_view body = std::string_view(frame).substr(kRecordHeaderBytes);
  put_u32(frame.data(), static_cast<std::uint32_t>(body.size()));
  put_u32(frame.data() + 4, type);
  put_u64(frame.data() + 8, record_checksum(frame.data() + 4, body));
}
}  // namespace

std::string encode_frame(std::uint32_t type, std::string_view body) {
  std::string frame(kRecordHeaderBytes, '\0');
  frame.append(body);
  seal_frame(frame, type);
  return frame;
}

std::string segment_header_problem(std::string_view data) {
  if (data.size() < kSegmentHeaderBytes) {
    return "not an mmsb log (only " + std::to_string(data.size()) + " bytes, shorter than the 16-byte header)";
  }
  if (std::memcmp(data.data(), kLogMagic, sizeof kLogMagic) != 0) return "not an mmsb log (bad magic)";
  const std::uint32_t version = get_u32(data.data() + 8);
  if (version != kLogFormatVersion) {
    return "unsupported log format version " + std::to_string(version) + " (this build reads version " +
           std::to_string(kLogFormatVersion) + ")";
  }
  const std::uint32_t reserved = get_u32(data.data() + 12);
  if (reserved != 0) return "reserved header field is " + std::to_string(reserved) + ", expected 0";
  return {};
}

std::string segment_header_bytes() {
  std::string header(kSegmentHeaderBytes, '\0');
  std::memcpy(header.data(), kLogMagic, sizeof kLogMagic);
  put_u32(header.data() + 8, kLogFormatVersion);
  return header;
}

void write_file_durably(const fs::path& path, std::string_view data) {
  const fs::path tmp = path.string() + ".tmp";
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) io_error("cannot create", tmp, errno);
  try {
    write_all(fd, data.data(), data.size(), tmp);
    sync_fd(fd, tmp);
  } catch (...) {
    ::close(fd);
    ::unlink(tmp.c_str());
    throw;
  }
  ::close(fd);
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    int err = errno;
    ::unlink(tmp.c_str());
    io_error("cannot rename into place:", path, err);
  }
  sync_directory(path.parent_path().empty() ? fs::path(".") : path.parent_path());
}

std::string segment_file_name(std::uint64_t first_lsn) {
  return numbered_file_name(kSegmentPrefix, first_lsn, kSegmentSuffix);
}

// ---------------------------------------------------------------------------------------------------- LogReader

LogReader::LogReader(fs::path dir) : dir_(std::move(dir)) {
  std::error_code ec;
  if (!fs::is_directory(dir_, ec)) {
    throw Error(ErrorCode::NotFound, "log directory " + dir_.string() + " does not exist (or is not a directory)");
  }
  std::vector<std::pair<std::uint64_t, fs::path>> found;
  fs::directory_iterator it(dir_, ec);
  if (ec) throw Error(ErrorCode::IoError, "cannot list log directory " + dir_.string() + ": " + ec.message());
  for (; it != fs::directory_iterator(); it.increment(ec)) {
    std::uint64_t key = 0;
    if (parse_segment_name(it->path().filename().string(), key)) found.emplace_back(key, it->path());
  }
  if (ec) throw Error(ErrorCode::IoError, "cannot list log directory " + dir_.string() + ": " + ec.message());
  std::sort(found.begin(), found.end());
  for (auto& f : found) segments_.push_back(std::move(f.second));
}

void LogReader::corrupt_at(std::uint64_t offset, const std::string& what) const {
  throw Error(ErrorCode::Corruption, "segment " + segments_[segment_].filename().string() + " offset " +
                                         std::to_string(offset) + ": " + what);
}

void LogReader::load_segment() {
  const fs::path& path = segments_[segment_];
  data_ = read_file(path);
  std::string problem = segment_header_problem(data_);
  if (!problem.empty()) throw Error(ErrorCode::Corruption, "segment " + path.filename().string() + ": " + problem);
  pos_ = kSegmentHeaderBytes;
  loaded_ = true;
}

bool LogReader::next(DecodedCommit& out) {
  while (!done_) {
    if (!loaded_) {
      if (segment_ >= segments_.size()) {
        done_ = true;
        break;
      }
      load_segment();
    }
    if (pos_ == data_.size()) {
      loaded_ = false;
      data_.clear();
      ++segment_;
      continue;
    }
    FramedRecord v = frame_at(data_, pos_);
    // A length no writer can produce: tearing cannot explain it.
    if (v.state == FramedRecord::State::TooLong) corrupt_at(pos_, v.problem);
    if (v.state == FramedRecord::State::Ok) {
      if (v.type != kRecordTypeCommit) {
        corrupt_at(pos_, "unknown record type " + std::to_string(v.type) + " (expected 1 = commit)");
      }
      try {
        out = decode_commit(v.body);
      } catch (const Error& e) {
        corrupt_at(pos_, e.what());
      }
      ++report_.records;
      report_.last_lsn = std::max(report_.last_lsn, out.lsn);
      record_offset_ = pos_;
      pos_ = v.end;
      return true;
    }
    // A damaged record. Only the end of the last segment may hold a torn write; anywhere else it is corruption.
    if (segment_ + 1 != segments_.size()) corrupt_at(pos_, v.problem);
    if (v.state == FramedRecord::State::BadChecksum) {
      // A bad checksum is a torn tail only if no valid record follows.
      std::uint64_t p = v.end;
      while (p < data_.size()) {
        FramedRecord after = frame_at(data_, p);
        if (after.state == FramedRecord::State::Ok) {
          corrupt_at(pos_, v.problem + "; a valid record follows at offset " + std::to_string(p));
        }
        if (after.state != FramedRecord::State::BadChecksum) break;
        p = after.end;
      }
    }
    report_.truncated_segment = segments_[segment_].filename().string();
    report_.truncated_offset = pos_;
    report_.truncated_bytes = data_.size() - pos_;
    done_ = true;
  }
  return false;
}

fs::path LogReader::current_segment() const {
  return segment_ < segments_.size() ? segments_[segment_] : fs::path();
}

// ---------------------------------------------------------------------------------------------------- LogWriter

namespace {
fs::path created_directory(fs::path dir) {
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) throw Error(ErrorCode::IoError, "cannot create log directory " + dir.string() + ": " + ec.message());
  return dir;
}
}  // namespace

LogWriter::LogWriter(fs::path dir, LogOptions options) : dir_(created_directory(std::move(dir))), options_(options) {
  LogReader reader(dir_);
  DecodedCommit scratch;
  while (reader.next(scratch)) {
  }
  attach(reader);
}

LogWriter::LogWriter(fs::path dir, LogOptions options, const LogReader& finished)
    : dir_(std::move(dir)), options_(options) {
  attach(finished);
}

void LogWriter::attach(const LogReader& reader) {
  recovery_ = reader.report();
  last_lsn_.store(recovery_.last_lsn, std::memory_order_release);
  if (options_.sync == SyncPolicy::Interval && options_.sync_interval.count() <= 0) {
    throw Error(ErrorCode::InvalidArgument, "LogOptions::sync_interval must be positive");
  }
  if (reader.segments().empty()) {  // the first write creates the first segment
    start_flusher();
    return;
  }

  path_ = reader.segments().back();
  parse_segment_name(path_.filename().string(), key_);
  fd_ = ::open(path_.c_str(), O_WRONLY | O_APPEND | O_CLOEXEC);
  if (fd_ < 0) io_error("cannot open log segment", path_, errno);
  if (recovery_.truncated_bytes > 0) {
    if (::ftruncate(fd_, static_cast<off_t>(recovery_.truncated_offset)) != 0) {
      int err = errno;
      close_segment_locked();
      io_error("cannot truncate the torn tail of", path_, err);
    }
    try {
      sync_fd(fd_, path_);
    } catch (...) {
      close_segment_locked();
      throw;
    }
  }
  struct stat st {};
  if (::fstat(fd_, &st) != 0) {
    int err = errno;
    close_segment_locked();
    io_error("cannot stat", path_, err);
  }
  size_ = static_cast<std::uint64_t>(st.st_size);
  start_flusher();
}

void LogWriter::start_flusher() {
  if (options_.sync == SyncPolicy::Interval) flusher_ = std::thread([this] { flusher_main(); });
}

LogWriter::~LogWriter() {
  if (flusher_.joinable()) {
    {
      std::lock_guard lock(mutex_);
      stop_ = true;
    }
    stop_cv_.notify_all();
    flusher_.join();
  }
  if (options_.sync == SyncPolicy::Interval) {
    try {
      sync();
    } catch (...) {
      // A destructor cannot report it; the failure is the same as a crash before the last interval's sync.
    }
  }
  close_segment_locked();
}

void LogWriter::close_segment_locked() {
  if (fd_ >= 0) ::close(fd_);
  fd_ = -1;
}

void LogWriter::open_segment_locked(std::uint64_t key) {
  const fs::path final_path = dir_ / segment_file_name(key);
  const fs::path tmp_path = dir_ / (segment_file_name(key) + ".tmp");
  // The header is written to a temporary file that is renamed into place, so a segment file always has a
  // complete header.
  int fd = ::open(tmp_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) io_error("cannot create log segment", tmp_path, errno);
  char header[kSegmentHeaderBytes];
  std::memcpy(header, kLogMagic, sizeof kLogMagic);
  put_u32(header + 8, kLogFormatVersion);
  put_u32(header + 12, 0);
  try {
    write_all(fd, header, sizeof header, tmp_path);
    sync_fd(fd, tmp_path);
  } catch (...) {
    ::close(fd);
    ::unlink(tmp_path.c_str());
    throw;
  }
  ::close(fd);
  if (::rename(tmp_path.c_str(), final_path.c_str()) != 0) {
    int err = errno;
    ::unlink(tmp_path.c_str());
    io_error("cannot rename log segment into place:", final_path, err);
  }
  sync_directory(dir_);

  int nfd = ::open(final_path.c_str(), O_WRONLY | O_APPEND | O_CLOEXEC);
  if (nfd < 0) io_error("cannot open log segment", final_path, errno);
  if (fd_ >= 0) {
    // The previous segment is complete: make it durable before records go elsewhere. No leader is syncing it
    // (the caller waited), so after this every record appended so far is durable.
    try {
      flush_pending_locked();
      ++stats_.syncs;
      sync_fd(fd_, path_);
    } catch (const Error& e) {
      ::close(nfd);
      if (!failed_) fail_locked(e.what());
      throw;
    }
    close_segment_locked();
    if (synced_ < written_) {
      synced_ = written_;
      synced_cv_.notify_all();
    }
    if (!next_batch_.empty()) {  // their records were in pending_: durable now
      std::vector<BatchWaiter*> batch;
      const std::uint64_t seq = take_next_batch_locked(batch);
      finish_batch_locked(batch, seq, nullptr);
    }
  }
  fd_ = nfd;
  path_ = final_path;
  key_ = key;
  size_ = kSegmentHeaderBytes;
}

std::string LogWriter::failed_message_locked() const {
  return "log writer for " + dir_.string() + " is unusable after an earlier I/O error (" + failure_ +
         "); reopen the log to recover it";
}

void LogWriter::throw_failed_locked() const { throw Error(ErrorCode::IoError, failed_message_locked()); }

// Makes sure the current segment can take a record of `frame_bytes`: creates the first segment or rolls to a
// new one. Rolling waits until no leader is in fdatasync on the old segment (releasing the lock meanwhile).
void LogWriter::prepare_segment_locked(std::unique_lock<std::mutex>& lock, std::uint64_t lsn,
                                       std::uint64_t frame_bytes) {
  for (;;) {
    if (failed_) throw_failed_locked();
    if (fd_ < 0) {
      open_segment_locked(lsn);
      return;
    }
    if (size_ <= kSegmentHeaderBytes || size_ + frame_bytes <= options_.segment_bytes) return;
    if (syncing_) {
      synced_cv_.wait(lock);
      continue;  // the segment may have changed meanwhile
    }
    open_segment_locked(std::max(lsn, key_ + 1));
    return;
  }
}

// Writes the buffered records out (Interval: on a full buffer and before each sync; EveryCommit: before a roll).
// A failure loses records that Interval commits already returned for, so the writer refuses everything afterwards.
void LogWriter::flush_pending_locked() {
  if (pending_.empty()) return;
  try {
    write_all(fd_, pending_.data(), pending_.size(), path_);
  } catch (const Error& e) {
    fail_locked(e.what());
    throw;
  }
  pending_.clear();
}

// A write() of SyncPolicy::EveryCommit waiting for the batch that holds its record. Finishing a batch wakes exactly
// its writers and handing leadership on wakes exactly one, each through its own futex word and outside the
// writer's mutex (a woken writer that finds its batch done returns without taking the mutex at all).
//
// Waking protocol: under the mutex a waker marks the waiter `pending` (so no second wake starts while one is in
// flight) and queues it; after releasing the mutex it sets `signal` 1, wakes the futex, and sets `signal` 2,
// its last touch of the waiter. A waiter leaves only after seeing 2, so the waiter (on its writer's stack) outlives
// every wake aimed at it.
struct LogWriter::BatchWaiter {
  std::uint64_t seq = 0;              // the batch: next_batch_seq_ when the record was appended
  bool pending = false;               // GUARDED_BY(mutex_): a wake is queued or in flight
  std::string error;                  // set before `done`: empty if the record is durable, else why it failed
  std::atomic<bool> done{false};
  std::atomic<std::uint32_t> signal{0};  // 0 asleep or awake; 1 being woken; 2 woken (see above)
};

namespace {
void wake(LogWriter::BatchWaiter* w) {
  w->signal.store(1, std::memory_order_release);
  w->signal.notify_one();
  w->signal.store(2, std::memory_order_release);
}

// Returns once a wake aimed at `w` has completed.
void wait_woken(LogWriter::BatchWaiter& w) {
  for (;;) {
    const std::uint32_t s = w.signal.load(std::memory_order_acquire);
    if (s == 2) return;
    if (s == 0) {
      w.signal.wait(0, std::memory_order_acquire);
    } else {
      std::this_thread::yield();  // the waker is between its two stores
    }
  }
}
}  // namespace

// Queues a wake of `w` unless one is already on its way.
void LogWriter::collect_locked(BatchWaiter* w) {
  if (w->pending) return;
  w->pending = true;
  w->signal.store(0, std::memory_order_relaxed);
  to_wake_.push_back(w);
}

// Wakes the queued waiters, without the mutex (released meanwhile).
void LogWriter::wake_collected(std::unique_lock<std::mutex>& lock) {
  if (to_wake_.empty()) return;
  thread_local std::vector<BatchWaiter*> waking;
  waking.clear();
  waking.swap(to_wake_);
  lock.unlock();
  for (BatchWaiter* w : waking) wake(w);
  waking.clear();
  lock.lock();
}

namespace {
// Which writer and batch this thread last appended to, so a leader can tell when the writers that the previous
// batch released have come back.
thread_local const void* tls_batch_writer = nullptr;
thread_local std::uint64_t tls_batch_seq = 0;
}  // namespace

// The writer cannot go on: remembers why, fails the writes queued for the next batch (their records never reach
// the file) and wakes everyone who waits.
void LogWriter::fail_locked(const std::string& what) {
  failed_ = true;
  failure_ = what;
  if (!next_batch_.empty()) {
    std::vector<BatchWaiter*> batch;
    const std::uint64_t seq = take_next_batch_locked(batch);
    const std::string message = failed_message_locked();
    finish_batch_locked(batch, seq, &message);
  }
  synced_cv_.notify_all();
  gather_cv_.notify_all();
}

std::uint64_t LogWriter::take_next_batch_locked(std::vector<BatchWaiter*>& into) {
  into.clear();
  into.swap(next_batch_);
  return next_batch_seq_++;
}

void LogWriter::finish_batch_locked(std::vector<BatchWaiter*>& batch, std::uint64_t seq, const std::string* error) {
  finished_batch_seq_ = seq;
  finished_batch_size_ = error == nullptr ? batch.size() : 0;
  returned_ = 0;
  for (BatchWaiter* w : batch) {
    if (error != nullptr) w->error = *error;
    collect_locked(w);
    // Last touch: a writer that sees `done` may return at once (its waiter is then gone), so `done` comes after
    // everything this loop does to `w`; the wake queued above completes before the writer can see it anyway.
    w->done.store(true, std::memory_order_release);
  }
  batch.clear();
}

// EveryCommit: the writers that the last batch released usually commit again at once. Waits (releasing the lock)
// until all of them have appended, so one fdatasync serves them all rather than splitting them into two
// alternating halves. Bounded, for writers that stopped committing, by half the last fdatasync's duration but at
// least kMinGather: on a device that syncs in microseconds, waking the writers takes longer than the sync.
void LogWriter::gather_locked(std::unique_lock<std::mutex>& lock) {
  constexpr std::chrono::nanoseconds kMinGather = std::chrono::microseconds(100);
  if (finished_batch_size_ == 0 || returned_ >= finished_batch_size_) return;
  const auto deadline =
      std::chrono::steady_clock::now() + std::max(kMinGather, std::chrono::nanoseconds(last_sync_ns_ / 2));
  gathering_ = true;
  gather_cv_.wait_until(lock, deadline, [this] { return returned_ >= finished_batch_size_ || failed_; });
  gathering_ = false;
}

// Becomes the sync leader and publishes what the sync covered. Interval: writes out the buffer under the lock,
// then fdatasyncs without it (other threads keep appending). EveryCommit: takes the next batch (its records and
// writers), writes and fdatasyncs it without the lock while later writers form the batch after it.
void LogWriter::lead_sync_locked(std::unique_lock<std::mutex>& lock) {
  const bool batched = options_.sync == SyncPolicy::EveryCommit;
  std::uint64_t batch_seq = 0;
  std::uint64_t file_size_before = 0;  // EveryCommit: the segment's size without the batch
  if (batched) {
    syncing_ = true;  // from here on the segment cannot change and no one else leads
    gather_locked(lock);
    if (failed_) {
      syncing_ = false;
      synced_cv_.notify_all();
      wake_collected(lock);
      throw_failed_locked();
    }
    leader_bytes_.clear();
    leader_bytes_.swap(pending_);
    batch_seq = take_next_batch_locked(leader_batch_);
    file_size_before = size_ - pending_.size() - leader_bytes_.size();
  } else {
    flush_pending_locked();
    syncing_ = true;
  }
  const std::uint64_t target = written_;
  const int fd = fd_;
  ++stats_.syncs;
  lock.unlock();
  std::string write_error;
  if (batched) {
    try {
      write_all(fd, leader_bytes_.data(), leader_bytes_.size(), path_);
    } catch (const Error& e) {
      write_error = e.what();
    }
  }
  int err = 0;
  std::chrono::nanoseconds took{0};
  if (write_error.empty()) {
    const auto started = std::chrono::steady_clock::now();
    err = fdatasync_retry(fd);
    took = std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now() - started);
  }
  lock.lock();
  syncing_ = false;
  if (!write_error.empty()) {
    // Nothing of the batch is durable: remove what reached the file, so its commits fail without a trace and
    // the writer goes on. When even that fails the file's state is unknown and the writer refuses more.
    if (::ftruncate(fd, static_cast<off_t>(file_size_before)) == 0) {
      size_ -= leader_bytes_.size();
      stats_.records -= leader_batch_.size();
      stats_.bytes -= leader_bytes_.size();
      --stats_.syncs;
      synced_ = std::max(synced_, target);  // resolved: those records are gone, their writers get the error
      finish_batch_locked(leader_batch_, batch_seq, &write_error);
      synced_cv_.notify_all();
      hand_on_leadership_locked();
      wake_collected(lock);
      return;
    }
    fail_locked(write_error);
    const std::string message = failed_message_locked();
    finish_batch_locked(leader_batch_, batch_seq, &message);
    wake_collected(lock);
    throw_failed_locked();
  }
  last_sync_ns_ = static_cast<std::uint64_t>(took.count());
  if (err != 0) {
    // The batch belongs to write() calls that are about to fail: remove it (best effort; the state of the file is
    // unknown after a failed fdatasync anyway, which is why the writer stays failed).
    if (batched) (void)::ftruncate(fd, static_cast<off_t>(file_size_before));
    fail_locked("cannot fdatasync " + path_.string() + ": " + std::strerror(err));
    if (batched) {
      const std::string message = failed_message_locked();
      finish_batch_locked(leader_batch_, batch_seq, &message);
    }
    wake_collected(lock);
    throw_failed_locked();
  }
  if (target > synced_) synced_ = target;
  synced_cv_.notify_all();
  if (batched) {
    finish_batch_locked(leader_batch_, batch_seq, nullptr);
    hand_on_leadership_locked();
    wake_collected(lock);
  }
}

// EveryCommit: the batch that formed during a sync needs a leader; wakes its first writer (it leads unless
// someone else started a sync meanwhile).
void LogWriter::hand_on_leadership_locked() {
  if (!next_batch_.empty()) collect_locked(next_batch_.front());
}

// Returns once every record byte up to `ticket` is durable; leads a sync when none is in progress.
void LogWriter::wait_durable_locked(std::unique_lock<std::mutex>& lock, std::uint64_t ticket) {
  for (;;) {
    if (synced_ >= ticket) return;
    if (failed_) throw_failed_locked();
    if (syncing_) {
      synced_cv_.wait(lock);
      continue;
    }
    lead_sync_locked(lock);
  }
}

void LogWriter::flusher_main() {
  std::unique_lock lock(mutex_);
  while (!stop_) {
    stop_cv_.wait_for(lock, options_.sync_interval, [this] { return stop_; });
    if (stop_) break;
    if (written_ > synced_ && !syncing_ && !failed_) {
      try {
        lead_sync_locked(lock);
      } catch (const Error&) {
        // failed_ is set: later write() and sync() calls report it.
      }
    }
  }
}

void LogWriter::write(const CommitRecord& record) {
  // The frame is built in one buffer: header bytes reserved, the body serialized after them, the header filled.
  std::string frame(kRecordHeaderBytes, '\0');
  append_commit(record, frame);
  const std::uint64_t body_bytes = frame.size() - kRecordHeaderBytes;
  if (body_bytes > kMaxRecordBody) {
    throw Error(ErrorCode::InvalidArgument, "commit record of LSN " + std::to_string(record.lsn) + " encodes to " +
                                                std::to_string(body_bytes) + " bytes, more than the log's " +
                                                std::to_string(kMaxRecordBody) + "-byte record limit");
  }
  seal_frame(frame, kRecordTypeCommit);
  const std::uint64_t frame_bytes = frame.size();

  std::unique_lock lock(mutex_);
  try {
    prepare_segment_locked(lock, record.lsn, frame_bytes);  // a roll finishes the batch that was forming
  } catch (...) {
    wake_collected(lock);
    throw;
  }
  if (options_.sync == SyncPolicy::None) {
    try {
      write_all(fd_, frame.data(), frame.size(), path_);
    } catch (const Error& e) {
      // Remove what reached the file so the failed commit leaves no trace; when even that fails the state of
      // the file is unknown and the writer refuses more writes.
      if (::ftruncate(fd_, static_cast<off_t>(size_)) != 0) fail_locked(e.what());
      throw;
    }
  } else {
    pending_.append(frame);
  }
  size_ += frame_bytes;
  written_ += frame_bytes;
  ++stats_.records;
  stats_.bytes += frame_bytes;
  std::uint64_t seen = last_lsn_.load(std::memory_order_relaxed);
  while (seen < record.lsn && !last_lsn_.compare_exchange_weak(seen, record.lsn, std::memory_order_release)) {
  }
  if (options_.sync == SyncPolicy::Interval) {
    if (pending_.size() >= kFlushBytes) flush_pending_locked();
    return;
  }
  if (options_.sync != SyncPolicy::EveryCommit) return;

  BatchWaiter me;
  me.seq = next_batch_seq_;
  next_batch_.push_back(&me);
  if (tls_batch_writer == this && tls_batch_seq == finished_batch_seq_ && finished_batch_size_ > 0) {
    if (++returned_ >= finished_batch_size_ && gathering_) gather_cv_.notify_one();
  }
  tls_batch_writer = this;
  tls_batch_seq = me.seq;
  auto finished = [&me] {
    if (!me.error.empty()) throw Error(ErrorCode::IoError, me.error);
  };
  for (;;) {
    wake_collected(lock);  // what a roll above or a leader's failure queued (the state is re-read below)
    if (me.pending) {  // let a wake in flight finish before `me` can go
      if (me.signal.load(std::memory_order_acquire) != 2) {
        lock.unlock();
        wait_woken(me);
        lock.lock();
      }
      me.pending = false;
      me.signal.store(0, std::memory_order_relaxed);
    }
    if (me.done.load(std::memory_order_acquire)) return finished();
    if (!syncing_ && me.seq == next_batch_seq_) {
      lead_sync_locked(lock);  // finishes this batch (or throws having failed it)
      continue;
    }
    lock.unlock();
    wait_woken(me);
    // Done: nobody holds `me` any more (it left its batch, and the wake that said so has completed).
    if (me.done.load(std::memory_order_acquire)) return finished();
    lock.lock();
  }
}

void LogWriter::sync() {
  std::unique_lock lock(mutex_);
  wait_durable_locked(lock, written_);
}

std::uint64_t LogWriter::roll() {
  std::unique_lock lock(mutex_);
  for (;;) {
    if (failed_) throw_failed_locked();
    if (fd_ < 0) return 0;
    if (size_ <= kSegmentHeaderBytes) return key_;
    if (!syncing_) break;
    synced_cv_.wait(lock);
  }
  try {
    open_segment_locked(std::max(last_lsn_.load(std::memory_order_relaxed) + 1, key_ + 1));
  } catch (...) {
    wake_collected(lock);
    throw;
  }
  wake_collected(lock);
  return key_;
}

std::uint64_t LogWriter::current_segment_key() const {
  std::lock_guard lock(mutex_);
  return fd_ < 0 ? 0 : key_;
}

std::uint64_t LogWriter::remove_segments_before(std::uint64_t key) {
  std::vector<fs::path> doomed;
  {
    std::lock_guard lock(mutex_);
    std::error_code ec;
    for (fs::directory_iterator it(dir_, ec), end; !ec && it != end; it.increment(ec)) {
      std::uint64_t k = 0;
      if (parse_segment_name(it->path().filename().string(), k) && k < key && (fd_ < 0 || k != key_)) {
        doomed.push_back(it->path());
      }
    }
    if (ec) throw Error(ErrorCode::IoError, "cannot list log directory " + dir_.string() + ": " + ec.message());
  }
  for (const fs::path& p : doomed) {
    if (::unlink(p.c_str()) != 0 && errno != ENOENT) io_error("cannot delete log segment", p, errno);
  }
  if (!doomed.empty()) sync_directory(dir_);
  return doomed.size();
}

LogStats LogWriter::stats() const {
  std::lock_guard lock(mutex_);
  return stats_;
}

}  // namespace mmsb::serialize
