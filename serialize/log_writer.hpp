// serialize/log_writer.hpp — appending commit records to a log directory: segments, group commit (internal).
//
// LogWriter is a CommitSink: set it on a Runtime and every commit record (page writes, resizes, page creation
// and deletion) is appended to the log before the commit becomes visible. The on-disk format is specified in
// docs/formats.md; all I/O goes through LogOptions::file_system.
//
//   auto log = std::make_shared<mmsb::serialize::LogWriter>("/var/lib/app/log");
//   rt.set_commit_sink(log);                              // every commit is now logged (fdatasync'd by default)
//
// Durability (LogOptions::sync):
//   EveryCommit  write() returns only once its record is durable (fdatasync'd). Concurrent writers share syncs
//                (group commit): the first waiter finding no sync in progress leads one fdatasync covering every
//                record appended so far, while other threads keep appending; the rest wait for it. Before it
//                syncs, a leader yields briefly while records keep arriving (at most one previous sync's time) so
//                writers just released by the previous sync can join.
//   Interval     write() appends to an in-memory buffer and returns; a background thread writes the buffer out
//                and fdatasyncs every sync_interval when anything was written since the last sync. A crash (of
//                the process or the machine) may lose at most the commits of the last interval (plus the time
//                one sync takes); it never corrupts earlier ones. sync() forces one; the destructor syncs last.
//   None         records are written to the file at once and the OS decides when they reach the disk.
// Closing: the destructor syncs every record (under every policy) and then appends and syncs a close record, so
// that damage to the last commit record of a cleanly closed log is told apart from a torn tail.
//
// Thread-safety: LogWriter::write(), sync(), stats() and last_lsn() may be called concurrently (appends are
// serialized by a mutex; records appear in the order write() is entered).
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "mmsb/file_system.hpp"
#include "mmsb/runtime.hpp"
#include "serialize/log_format.hpp"
#include "serialize/log_reader.hpp"

namespace mmsb::serialize {

// SyncPolicy::Interval: buffered records are written out once this many bytes are pending.
inline constexpr std::uint64_t kFlushBytes = std::uint64_t{1} << 20;

enum class SyncPolicy : std::uint8_t {
  None,         // leave flushing to the OS: a crash may lose the latest commits (never corrupts earlier ones)
  EveryCommit,  // fdatasync (shared by concurrent commits) before write() returns: a commit that returned is durable
  Interval,     // fdatasync every LogOptions::sync_interval by a background thread: a crash may lose the last interval
};

struct LogOptions {
  // A segment that has reached this size is closed and the next record starts a new one. A single record
  // larger than this still goes into a segment of its own.
  std::uint64_t segment_bytes = std::uint64_t{64} << 20;
  SyncPolicy sync = SyncPolicy::EveryCommit;
  // SyncPolicy::Interval only: how often the background thread syncs (when anything was written).
  std::chrono::milliseconds sync_interval{10};
  // Where the files live; null: posix_file_system().
  std::shared_ptr<FileSystem> file_system;
};

// Counters of one LogWriter since it opened.
struct LogStats {
  std::uint64_t records = 0;  // records appended by write()
  std::uint64_t syncs = 0;    // fdatasync calls that made appended records durable (group, interval, sync(), roll)
  std::uint64_t bytes = 0;    // record bytes appended (headers included, segment headers not)
};

// Writes MANIFEST for the segment files now in `dir`: each sealed at its present size, the last one open. For
// tools that rewrote segments (a recovery mode's cut, repair()); no writer may have the log open.
void rebuild_manifest(FileSystem& fsys, const std::filesystem::path& dir);

// Appends commit records to a log directory (created if missing). The constructor first recovers the directory:
// it reads every record (throwing Error(Corruption) on damage other than a torn tail), truncates a torn tail and
// continues appending to the last segment. Throws Error(InvalidArgument) for options out of range (segment_bytes
// of 0 or above kMaxSegmentBytes, a non-positive sync_interval under SyncPolicy::Interval).
class LogWriter : public CommitSink {
 public:
  explicit LogWriter(std::filesystem::path dir, LogOptions options = {});
  // Continues the log that `finished` (a reader of `dir` whose next() has returned false) has just read, so
  // recovery reads the log once: the reader's report is the writer's recovery(). The reader must have read the
  // whole log (Error(InvalidArgument) when it stopped at damage or skipped some: repair the log first).
  LogWriter(std::filesystem::path dir, LogOptions options, const LogReader& finished);
  ~LogWriter() override;
  LogWriter(const LogWriter&) = delete;
  LogWriter& operator=(const LogWriter&) = delete;

  // Appends the record; under SyncPolicy::EveryCommit returns once it is durable (group commit: concurrent
  // writers' records are written and synced as one batch). Throws Error(IoError) when the OS refuses: a failed
  // append is removed again and fails the write() calls of its batch and of the batch that formed behind it
  // (their records may build on the failed ones: the log stays a prefix); when even the removal fails the writer
  // refuses all later writes. A failed fdatasync fails every write() waiting on it, and the writer then refuses
  // all later writes. Throws Error(InvalidArgument) for a record whose encoding exceeds kMaxRecordBody.
  void write(const CommitRecord& record) override;
  // write() in the two steps of CommitSink: append() orders the record (it joins the batch being formed) and
  // returns a ticket; wait_durable(ticket) returns once that batch is durable, or throws what write() would. A
  // commit appends under its pages' update locks and waits without them, so commits of one page share a sync.
  // Under None and Interval the ticket is 0 and wait_durable() returns at once.
  // After a failed append, append() answers kNotYet until every failed record's committer has called withdrawn()
  // (wait_appendable() waits for that): a record appended meanwhile might build on a failed one.
  std::uint64_t append(const CommitRecord& record) override;
  void wait_durable(std::uint64_t ticket) override;
  void withdrawn() noexcept override;
  void wait_appendable() override;
  // Makes every record written so far durable (Error(IoError) when that fails).
  void sync();
  LogStats stats() const;
  // The highest LSN in the log (recovered or written).
  std::uint64_t last_lsn() const noexcept { return last_lsn_.load(std::memory_order_acquire); }
  // What recovery found when the writer opened.
  const RecoveryReport& recovery() const noexcept { return recovery_; }
  const std::filesystem::path& directory() const noexcept { return dir_; }

  // Starts a new segment unless the current one holds no record yet (makes the old one durable first); later
  // records go to the new one. Returns the new current segment's key (0 when no segment exists yet).
  std::uint64_t roll();
  // The key (the LSN in the file name) of the segment records are appended to now; 0 before the first.
  std::uint64_t current_segment_key() const;
  // Deletes the segments whose key is below `key` (never the current one); returns how many.
  std::uint64_t remove_segments_before(std::uint64_t key);

  struct BatchWaiter;  // internal: a write() waiting for its group commit (log_writer.cpp)

 private:
  void attach(const LogReader& reader);
  void start_flusher();
  void open_segment_locked(std::uint64_t key);
  void close_segment_locked();
  void write_close_record();
  void write_manifest_locked();
  void prepare_segment_locked(std::unique_lock<std::mutex>& lock, std::uint64_t lsn, std::uint64_t frame_bytes);
  void flush_pending_locked();
  void wait_durable_locked(std::unique_lock<std::mutex>& lock, std::uint64_t ticket);
  struct LeadSync;  // what one sync leader took on (log_writer.cpp)
  void lead_sync_locked(std::unique_lock<std::mutex>& lock);
  void take_batch_locked(std::unique_lock<std::mutex>& lock, LeadSync& sync);
  void write_and_sync(LeadSync& sync);
  bool remove_batch(const LeadSync& sync);
  void batch_write_failed_locked(std::unique_lock<std::mutex>& lock, const LeadSync& sync);
  void drop_next_batch_locked(const std::string& why);
  [[noreturn]] void sync_failed_locked(std::unique_lock<std::mutex>& lock, const LeadSync& sync);
  void gather_locked(std::unique_lock<std::mutex>& lock);
  std::uint64_t take_next_batch_locked(std::vector<BatchWaiter*>& into);
  void finish_batch_locked(std::vector<BatchWaiter*>& batch, std::uint64_t seq, const std::string* error);
  void hand_on_leadership_locked();
  void collect_locked(BatchWaiter* w);
  void wake_collected(std::unique_lock<std::mutex>& lock);
  void fail_locked(const std::string& what);
  std::string failed_message_locked() const;
  [[noreturn]] void throw_failed_locked() const;
  void flusher_main();

  const std::filesystem::path dir_;
  const LogOptions options_;
  const std::shared_ptr<FileSystem> fs_;
  RecoveryReport recovery_;
  std::atomic<std::uint64_t> last_lsn_{0};

  mutable std::mutex mutex_;
  std::condition_variable synced_cv_;    // synced_, syncing_ or failed_ changed
  std::condition_variable stop_cv_;      // stop_ changed (wakes the Interval thread)
  std::unique_ptr<WritableFile> file_;   // GUARDED_BY(mutex_): the current segment, or null before the first
  std::filesystem::path path_;           // GUARDED_BY(mutex_)
  std::vector<ManifestEntry> manifest_;  // GUARDED_BY(mutex_): the segments of the log, as MANIFEST lists them
  std::uint64_t key_ = 0;                // GUARDED_BY(mutex_): the LSN in the current segment's name
  std::uint64_t size_ = 0;               // GUARDED_BY(mutex_): bytes in the current segment
  bool failed_ = false;                  // GUARDED_BY(mutex_): an I/O error left the segment in an unknown state
  std::string failure_;                  // GUARDED_BY(mutex_): what failed, when failed_
  std::string pending_;                  // GUARDED_BY(mutex_): appended record bytes not yet written out
  // EveryCommit group commit: the write() calls whose records are in pending_ (the next batch) and in the batch a
  // leader is writing and syncing.
  std::vector<BatchWaiter*> next_batch_;    // GUARDED_BY(mutex_)
  std::vector<BatchWaiter*> leader_batch_;  // GUARDED_BY(mutex_): owned by the leader while syncing_
  std::string leader_bytes_;                // GUARDED_BY(mutex_): likewise, pending_'s bytes of that batch
  std::uint64_t next_batch_seq_ = 1;        // GUARDED_BY(mutex_): sequence number of next_batch_
  std::vector<BatchWaiter*> to_wake_;       // GUARDED_BY(mutex_): wakes to send once the mutex is released
  // Gathering: the writers released by the last finished batch usually commit again at once; the next leader
  // waits (bounded) until they have appended, so one fdatasync serves all of them instead of half.
  std::uint64_t finished_batch_seq_ = 0;   // GUARDED_BY(mutex_)
  std::uint64_t finished_batch_size_ = 0;  // GUARDED_BY(mutex_): writers released by it
  std::uint64_t returned_ = 0;             // GUARDED_BY(mutex_): of those, how many have appended again
  bool gathering_ = false;                 // GUARDED_BY(mutex_)
  std::condition_variable gather_cv_;
  // Tickets: record bytes appended by this writer, in total over all segments.
  std::uint64_t written_ = 0;       // GUARDED_BY(mutex_): appended (in the file or in pending_)
  std::uint64_t synced_ = 0;        // GUARDED_BY(mutex_): durable
  bool syncing_ = false;            // GUARDED_BY(mutex_): a leader is in fdatasync (the segment must not change)
  std::uint64_t unwithdrawn_ = 0;   // GUARDED_BY(mutex_): failed records whose committers have not withdrawn yet
  std::uint64_t last_sync_ns_ = 0;  // GUARDED_BY(mutex_): how long the last leader's fdatasync took
  bool stop_ = false;               // GUARDED_BY(mutex_): the Interval thread should exit
  LogStats stats_;                  // GUARDED_BY(mutex_)
  std::thread flusher_;             // SyncPolicy::Interval: the background sync thread
};

}  // namespace mmsb::serialize
