// Appending to a log directory: segments, group commit, the Interval flusher (serialize/log_writer.hpp).
#include "serialize/log_writer.hpp"

#include <algorithm>
#include <atomic>
#include <cstring>
#include <memory>

#include "mmsb/error.hpp"
#include "serialize/file_io.hpp"

namespace mmsb::serialize {

using namespace detail;  // NOLINT: the byte-order helpers

namespace fs = std::filesystem;

// ---------------------------------------------------------------------------------------------------- LogWriter

namespace {
std::shared_ptr<FileSystem> file_system_of(const LogOptions& options) {
  return options.file_system ? options.file_system : posix_file_system();
}

fs::path created_directory(FileSystem& fsys, fs::path dir) {
  fsys.create_directories(dir);
  return dir;
}

LogReaderOptions reader_options(const LogOptions& options) {
  LogReaderOptions r;
  r.file_system = options.file_system;
  return r;
}
}  // namespace

LogWriter::LogWriter(fs::path dir, LogOptions options)
    : dir_(created_directory(*file_system_of(options), std::move(dir))),
      options_(options),
      fs_(file_system_of(options)) {
  LogReader reader(dir_, reader_options(options_));
  DecodedCommit scratch;
  while (reader.next(scratch)) {
  }
  attach(reader);
}

LogWriter::LogWriter(fs::path dir, LogOptions options, const LogReader& finished)
    : dir_(std::move(dir)), options_(options), fs_(file_system_of(options)) {
  attach(finished);
}

void LogWriter::attach(const LogReader& reader) {
  if (options_.segment_bytes == 0 || options_.segment_bytes > kMaxSegmentBytes) {
    throw Error(ErrorCode::InvalidArgument, "LogOptions::segment_bytes is " + std::to_string(options_.segment_bytes) +
                                                "; it must lie in [1, " + std::to_string(kMaxSegmentBytes) + "]");
  }
  if (options_.sync == SyncPolicy::Interval && options_.sync_interval.count() <= 0) {
    throw Error(ErrorCode::InvalidArgument, "LogOptions::sync_interval must be positive");
  }
  recovery_ = reader.report();
  if (recovery_.stopped || !recovery_.skipped.empty()) {
    throw Error(ErrorCode::InvalidArgument,
                "a log writer cannot continue a log whose reader stopped at damage or "
                "skipped some; set the damaged parts aside first");
  }
  last_lsn_.store(recovery_.last_lsn, std::memory_order_release);
  // What a crash left outside the log goes now (nothing in it was ever part of the log).
  for (const fs::path& p : reader.leftovers()) fs_->remove(p);
  if (!reader.leftovers().empty()) fs_->sync_directory(dir_);
  if (reader.segments().empty()) {  // the first write creates the first segment
    start_flusher();
    return;
  }
  if (reader.manifest_valid()) {
    manifest_ = reader.manifest();
  } else {
    // No manifest yet (the log held no record), or one this reader was told to do without: list what is here.
    for (const fs::path& p : reader.segments()) {
      ManifestEntry e;
      parse_segment_name(p.filename().string(), e.key);
      e.sealed_bytes = p == reader.segments().back() ? 0 : fs_->status(p).size;
      manifest_.push_back(e);
    }
    write_manifest_locked();
  }

  path_ = reader.segments().back();
  parse_segment_name(path_.filename().string(), key_);
  file_ = fs_->open_append(path_);
  size_ = reader.last_segment_bytes();
  if (recovery_.truncated_bytes > 0) {
    try {
      file_->truncate(recovery_.truncated_offset);
      file_->sync();
    } catch (...) {
      close_segment_locked();
      throw;
    }
    size_ = recovery_.truncated_offset;
  }
  start_flusher();
}

void rebuild_manifest(FileSystem& fsys, const fs::path& dir) {
  std::vector<ManifestEntry> entries;
  for (const std::string& name : fsys.list(dir)) {
    ManifestEntry e;
    if (!parse_segment_name(name, e.key)) continue;
    const FileStatus st = fsys.status(dir / name);
    if (st.type != FileType::Regular) continue;
    e.sealed_bytes = st.size;
    entries.push_back(e);
  }
  std::sort(entries.begin(), entries.end(), [](const auto& a, const auto& b) { return a.key < b.key; });
  if (!entries.empty()) entries.back().sealed_bytes = 0;
  write_file_durably(fsys, dir / kManifestName, encode_manifest(entries));
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
  try {
    sync();
    write_close_record();
  } catch (...) {
    // A destructor cannot report it; the failure is the same as a crash before the last sync, and the log
    // then ends without a close record.
  }
  close_segment_locked();
}

// Marks the log as closed cleanly: a record after the last commit record, so damage to that record is corruption
// (an intact record follows) rather than something a crash could have left. Called with every record durable.
void LogWriter::write_close_record() {
  std::lock_guard lock(mutex_);
  if (failed_ || !file_) return;
  std::string frame(kRecordHeaderBytes + kCloseBodyBytes, '\0');
  put_u64(frame.data() + kRecordHeaderBytes, last_lsn_.load(std::memory_order_acquire));
  seal_frame(frame, kRecordTypeClose);
  file_->append(frame);
  file_->sync();
  size_ += frame.size();
}

void LogWriter::close_segment_locked() { file_.reset(); }

void LogWriter::write_manifest_locked() { write_file_durably(*fs_, dir_ / kManifestName, encode_manifest(manifest_)); }

void LogWriter::open_segment_locked(std::uint64_t key) {
  const fs::path final_path = dir_ / segment_file_name(key);
  // The header goes to a temporary file that is synced and renamed into place, so a segment file always has a
  // complete header.
  write_file_durably(*fs_, final_path, segment_header_bytes());
  std::unique_ptr<WritableFile> next = fs_->open_append(final_path);
  if (file_) {
    // The previous segment is complete: make it durable before records go elsewhere. No leader is syncing it
    // (the caller waited), so after this every record appended so far is durable.
    try {
      flush_pending_locked();
      ++stats_.syncs;
      file_->sync();
    } catch (const Error& e) {
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
    if (!manifest_.empty()) manifest_.back().sealed_bytes = size_;
  }
  // Records go to the new segment only once the manifest lists it; until then it is an empty leftover.
  manifest_.push_back({key, 0});
  try {
    write_manifest_locked();
  } catch (const Error& e) {
    manifest_.pop_back();
    fail_locked(e.what());
    throw;
  }
  file_ = std::move(next);
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
    if (!file_) {
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
    file_->append(pending_);
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
  std::uint64_t seq = 0;  // the batch: next_batch_seq_ when the record was appended
  bool pending = false;   // GUARDED_BY(mutex_): a wake is queued or in flight
  std::string error;      // set before `done`: empty if the record is durable, else why it failed
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

// What a sync leader took on: the bytes up to `target` and, under EveryCommit, the batch it writes itself.
struct LogWriter::LeadSync {
  bool batched = false;                // EveryCommit: the leader writes leader_bytes_ before the sync
  std::uint64_t batch_seq = 0;         // EveryCommit: the batch's sequence number
  std::uint64_t file_size_before = 0;  // EveryCommit: the segment's size without the batch
  std::uint64_t target = 0;            // written_ when the sync began: what it makes durable
  WritableFile* file = nullptr;        // the segment cannot change while syncing_ (rolls wait)
  std::string write_error, sync_error;
  std::chrono::nanoseconds took{0};  // of the fdatasync
};

// Becomes the sync leader and publishes what the sync covered. Interval: writes out the buffer under the lock,
// then fdatasyncs without it (other threads keep appending). EveryCommit: takes the next batch (its records and
// writers), writes and fdatasyncs it without the lock while later writers form the batch after it.
void LogWriter::lead_sync_locked(std::unique_lock<std::mutex>& lock) {
  LeadSync sync;
  sync.batched = options_.sync == SyncPolicy::EveryCommit;
  if (sync.batched) {
    take_batch_locked(lock, sync);
  } else {
    flush_pending_locked();
    syncing_ = true;
  }
  sync.target = written_;
  sync.file = file_.get();
  ++stats_.syncs;
  lock.unlock();
  write_and_sync(sync);
  lock.lock();
  syncing_ = false;
  if (!sync.write_error.empty()) {
    batch_write_failed_locked(lock, sync);
    return;
  }
  last_sync_ns_ = static_cast<std::uint64_t>(sync.took.count());
  if (!sync.sync_error.empty()) sync_failed_locked(lock, sync);
  if (sync.target > synced_) synced_ = sync.target;
  synced_cv_.notify_all();
  if (sync.batched) {
    finish_batch_locked(leader_batch_, sync.batch_seq, nullptr);
    hand_on_leadership_locked();
    wake_collected(lock);
  }
}

// EveryCommit: gathers the writers of the last batch, then takes the next batch's records and writers as the
// leader's own. From here on the segment cannot change and no one else leads (syncing_).
void LogWriter::take_batch_locked(std::unique_lock<std::mutex>& lock, LeadSync& sync) {
  syncing_ = true;
  gather_locked(lock);
  if (failed_) {
    syncing_ = false;
    synced_cv_.notify_all();
    wake_collected(lock);
    throw_failed_locked();
  }
  leader_bytes_.clear();
  leader_bytes_.swap(pending_);
  sync.batch_seq = take_next_batch_locked(leader_batch_);
  sync.file_size_before = size_ - pending_.size() - leader_bytes_.size();
}

// Without the lock: writes the leader's batch (EveryCommit) and fdatasyncs, recording each failure and the sync's
// duration. No sync follows a failed write.
void LogWriter::write_and_sync(LeadSync& sync) {
  if (sync.batched) {
    try {
      sync.file->append(leader_bytes_);
    } catch (const Error& e) {
      sync.write_error = e.what();
      return;
    }
  }
  const auto started = std::chrono::steady_clock::now();
  try {
    sync.file->sync();
  } catch (const Error& e) {
    sync.sync_error = e.what();
  }
  sync.took = std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now() - started);
}

// Cuts the leader's batch off the file again (its commits are about to fail); false when even that fails.
bool LogWriter::remove_batch(const LeadSync& sync) {
  try {
    sync.file->truncate(sync.file_size_before);
    return true;
  } catch (const Error&) {
    return false;
  }
}

// The batch's write failed, so nothing of it is durable: removes what reached the file, so its commits fail
// without a trace and the writer goes on. When even that fails the file's state is unknown and the writer refuses
// more (and this throws).
void LogWriter::batch_write_failed_locked(std::unique_lock<std::mutex>& lock, const LeadSync& sync) {
  if (!remove_batch(sync)) {
    fail_locked(sync.write_error);
    const std::string message = failed_message_locked();
    finish_batch_locked(leader_batch_, sync.batch_seq, &message);
    wake_collected(lock);
    throw_failed_locked();
  }
  size_ -= leader_bytes_.size();
  stats_.records -= leader_batch_.size();
  stats_.bytes -= leader_bytes_.size();
  --stats_.syncs;
  synced_ = std::max(synced_, sync.target);  // resolved: those records are gone, their writers get the error
  unwithdrawn_ += leader_batch_.size() + next_batch_.size();  // both fail below; append() refuses until then
  finish_batch_locked(leader_batch_, sync.batch_seq, &sync.write_error);
  // The log stays a prefix (CommitSink's contract): the records appended behind the failed ones, in the batch
  // that formed meanwhile, may build on them (a later commit of the same page), so they are dropped too.
  drop_next_batch_locked(sync.write_error);
  synced_cv_.notify_all();
  hand_on_leadership_locked();
  wake_collected(lock);
}

// Fails the batch that formed behind a failed one; its records never reached the file.
void LogWriter::drop_next_batch_locked(const std::string& why) {
  if (next_batch_.empty()) return;
  size_ -= pending_.size();
  stats_.records -= next_batch_.size();
  stats_.bytes -= pending_.size();
  pending_.clear();
  synced_ = written_;
  std::vector<BatchWaiter*> behind;
  const std::uint64_t behind_seq = take_next_batch_locked(behind);
  const std::string dropped = why + " (this record was appended after the failed ones and is dropped with them)";
  finish_batch_locked(behind, behind_seq, &dropped);
}

// The fdatasync failed: the batch belongs to write() calls that are about to fail, so it is removed (best effort;
// the state of the file is unknown after a failed fdatasync anyway, which is why the writer stays failed).
void LogWriter::sync_failed_locked(std::unique_lock<std::mutex>& lock, const LeadSync& sync) {
  if (sync.batched) (void)remove_batch(sync);
  fail_locked(sync.sync_error);
  if (sync.batched) {
    const std::string message = failed_message_locked();
    finish_batch_locked(leader_batch_, sync.batch_seq, &message);
  }
  wake_collected(lock);
  throw_failed_locked();
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
  std::uint64_t ticket = append(record);
  while (ticket == kNotYet) {
    wait_appendable();
    ticket = append(record);
  }
  try {
    wait_durable(ticket);
  } catch (...) {
    withdrawn();  // a whole write() is never built on
    throw;
  }
}

void LogWriter::withdrawn() noexcept {
  std::lock_guard lock(mutex_);
  if (unwithdrawn_ > 0 && --unwithdrawn_ == 0) synced_cv_.notify_all();
  // (Failures that poison the writer are not counted: it refuses everything anyway.)
}

void LogWriter::wait_appendable() {
  std::unique_lock lock(mutex_);
  synced_cv_.wait(lock, [this] { return unwithdrawn_ == 0 || failed_; });
}

std::uint64_t LogWriter::append(const CommitRecord& record) {
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
  if (unwithdrawn_ > 0) {
    wake_collected(lock);
    return kNotYet;
  }
  try {
    prepare_segment_locked(lock, record.lsn, frame_bytes);  // a roll finishes the batch that was forming
  } catch (...) {
    wake_collected(lock);
    throw;
  }
  if (options_.sync == SyncPolicy::None) {
    try {
      file_->append(frame);
    } catch (const Error& e) {
      // Remove what reached the file so the failed commit leaves no trace; when even that fails the state of
      // the file is unknown and the writer refuses more writes.
      try {
        file_->truncate(size_);
      } catch (const Error&) {
        fail_locked(e.what());
      }
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
    return 0;
  }
  if (options_.sync != SyncPolicy::EveryCommit) return 0;

  // The ticket is the waiter itself, which joins the forming batch now: that batch's sync covers this record
  // whenever the committer comes to wait for it.
  auto waiter = std::make_unique<BatchWaiter>();
  waiter->seq = next_batch_seq_;
  next_batch_.push_back(waiter.get());
  if (tls_batch_writer == this && tls_batch_seq == finished_batch_seq_ && finished_batch_size_ > 0) {
    if (++returned_ >= finished_batch_size_ && gathering_) gather_cv_.notify_one();
  }
  tls_batch_writer = this;
  tls_batch_seq = waiter->seq;
  wake_collected(lock);  // what a roll above queued
  return reinterpret_cast<std::uint64_t>(waiter.release());
}

void LogWriter::wait_durable(std::uint64_t ticket) {
  if (ticket == 0) return;  // None and Interval: nothing to wait for
  const std::unique_ptr<BatchWaiter> owned(reinterpret_cast<BatchWaiter*>(ticket));
  BatchWaiter& me = *owned;
  std::unique_lock lock(mutex_);
  auto finished = [&me] {
    if (!me.error.empty()) throw Error(ErrorCode::IoError, me.error);
  };
  for (;;) {
    wake_collected(lock);  // what a roll above or a leader's failure queued (the state is re-read below)
    if (me.pending) {      // let a wake in flight finish before `me` can go
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
    if (!file_) return 0;
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
  return file_ ? key_ : 0;
}

std::uint64_t LogWriter::remove_segments_before(std::uint64_t key) {
  std::vector<fs::path> doomed;
  {
    std::lock_guard lock(mutex_);
    for (const std::string& name : fs_->list(dir_)) {
      std::uint64_t k = 0;
      if (parse_segment_name(name, k) && k < key && (!file_ || k != key_)) doomed.push_back(dir_ / name);
    }
    // The manifest goes first: a crash before the files are gone leaves them below its first segment, where
    // readers know them for leftovers.
    const std::size_t before = manifest_.size();
    std::erase_if(manifest_, [&](const ManifestEntry& e) { return e.key < key && (!file_ || e.key != key_); });
    if (manifest_.size() != before) write_manifest_locked();
  }
  for (const fs::path& p : doomed) fs_->remove(p);
  if (!doomed.empty()) fs_->sync_directory(dir_);
  return doomed.size();
}

LogStats LogWriter::stats() const {
  std::lock_guard lock(mutex_);
  return stats_;
}

}  // namespace mmsb::serialize
