// serialize/log.hpp — the durable transaction log: segment files of framed commit records.
//
// LogWriter is a CommitSink: set it on a Runtime and every commit record (page writes, resizes, page creation
// and deletion) is appended to the log before the commit becomes visible. LogReader reads a log directory back,
// record by record, in segment order. The on-disk format and the damage rules are specified in docs/formats.md.
//
//   auto log = std::make_shared<mmsb::serialize::LogWriter>("/var/lib/app/log");
//   rt.set_commit_sink(log);                              // every commit is now logged (fdatasync'd by default)
//   mmsb::serialize::LogReader reader("/var/lib/app/log");
//   for (mmsb::serialize::DecodedCommit c; reader.next(c);) { /* replay c */ }
//
// Damage. A torn tail (an incomplete record, or a checksum mismatch in the last record of the last segment — what
// a crash during an unsynced append leaves) is not an error: the reader stops before it and reports it in
// report(), and LogWriter's constructor truncates it away. Any other damage — a bad record followed by a valid
// one, a bad record in a segment that is not the last, a bad segment header — is Error(Corruption) naming the
// segment file and byte offset; it is never skipped silently.
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
//
// Thread-safety: LogWriter::write(), sync(), stats() and last_lsn() may be called concurrently (appends are
// serialized by a mutex; records appear in the order write() is entered). A LogReader is used from one thread.
// Do not read a directory while a writer appends to it: the reader may see the writer's last record half-written
// (a torn tail).
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <filesystem>
#include <mutex>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "mmsb/runtime.hpp"
#include "serialize/codec.hpp"

namespace mmsb::serialize {

// Constants of the log format (docs/formats.md, "Transaction log").
inline constexpr char kLogMagic[8] = {'M', 'M', 'S', 'B', 'L', 'O', 'G', '\0'};
inline constexpr std::uint32_t kLogFormatVersion = 1;
inline constexpr std::uint64_t kSegmentHeaderBytes = 16;   // magic, u32 version, u32 reserved
inline constexpr std::uint64_t kRecordHeaderBytes = 16;    // u32 length, u32 type, u64 XXH3-64 checksum
inline constexpr std::uint64_t kMaxRecordBody = std::uint64_t{64} << 20;
inline constexpr std::uint32_t kRecordTypeCommit = 1;
// SyncPolicy::Interval: buffered records are written out once this many bytes are pending.
inline constexpr std::uint64_t kFlushBytes = std::uint64_t{1} << 20;

// "log-<first LSN, 20 digits>.mmsb"
std::string segment_file_name(std::uint64_t first_lsn);
// The LSN in a segment file name, or false when `name` is not a segment file name.
bool parse_segment_name(const std::string& name, std::uint64_t& first_lsn);

// ---- Low-level access to log bytes (verify, repair, tools). None of these throws except where noted.

// One framed record at some offset of a segment's bytes, as far as it can be parsed.
struct FramedRecord {
  enum class State : std::uint8_t {
    Ok,           // complete, checksum matches
    Incomplete,   // the header or body runs past the end of the data
    BadChecksum,  // complete, checksum does not match
    TooLong,      // the length field exceeds kMaxRecordBody: no writer produces that
  };
  State state = State::Incomplete;
  std::uint32_t type = 0;
  std::string_view body;    // Ok, BadChecksum
  std::uint64_t end = 0;    // offset after the record (Ok, BadChecksum)
  std::string problem;      // why it is not Ok
};
FramedRecord frame_at(std::string_view data, std::uint64_t pos);
// Header, type, checksum and body of one record.
std::string encode_frame(std::uint32_t type, std::string_view body);
// Empty when `data` starts with a valid segment header, else what is wrong with it.
std::string segment_header_problem(std::string_view data);
// The 16 header bytes of a segment file.
std::string segment_header_bytes();
// The whole file; Error(IoError) when it cannot be read.
std::string read_file(const std::filesystem::path& path);
// Writes `path` atomically: a temporary file, fsync, rename, directory fsync. Error(IoError) on failure.
void write_file_durably(const std::filesystem::path& path, std::string_view data);
// fsync of a directory (so renames and unlinks in it are durable). Error(IoError) on failure.
void sync_directory(const std::filesystem::path& dir);

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
};

// Counters of one LogWriter since it opened.
struct LogStats {
  std::uint64_t records = 0;  // records appended by write()
  std::uint64_t syncs = 0;    // fdatasync calls that made appended records durable (group, interval, sync(), roll)
  std::uint64_t bytes = 0;    // record bytes appended (headers included, segment headers not)
};

// What reading (or recovering) a log found.
struct RecoveryReport {
  std::uint64_t records = 0;         // valid records read
  std::uint64_t last_lsn = 0;        // highest LSN among them (0 when none)
  std::uint64_t truncated_bytes = 0; // bytes of torn tail found after the last valid record (0 when clean)
  std::string truncated_segment;     // file name of the segment with the torn tail (empty when clean)
  std::uint64_t truncated_offset = 0;  // offset in that segment where the torn tail starts
};

// Reads a log directory. Throws Error(NotFound) when `dir` does not exist, Error(IoError) when a file cannot be
// read, Error(Corruption) for damage other than a torn tail. Files whose names are not segment names are ignored.
class LogReader {
 public:
  explicit LogReader(std::filesystem::path dir);

  // Reads the next record into `out`; false at the end of the log or at a torn tail (see report()).
  bool next(DecodedCommit& out);
  // Counts so far; final once next() has returned false.
  const RecoveryReport& report() const noexcept { return report_; }
  // The segment files found at construction, in LSN order.
  const std::vector<std::filesystem::path>& segments() const noexcept { return segments_; }
  // The segment and offset of the record next() returned last.
  std::filesystem::path current_segment() const;
  std::size_t current_segment_index() const noexcept { return segment_; }  // into segments()
  std::uint64_t record_offset() const noexcept { return record_offset_; }

 private:
  void load_segment();
  [[noreturn]] void corrupt_at(std::uint64_t offset, const std::string& what) const;

  std::filesystem::path dir_;
  std::vector<std::filesystem::path> segments_;
  std::size_t segment_ = 0;    // index of the segment being read
  bool loaded_ = false;        // whether data_ holds segments_[segment_]
  bool done_ = false;
  std::string data_;           // the whole current segment
  std::uint64_t pos_ = 0;      // offset of the next record in data_
  std::uint64_t record_offset_ = 0;
  RecoveryReport report_;
};

// Appends commit records to a log directory (created if missing). The constructor first recovers the directory:
// it reads every record (throwing Error(Corruption) on damage it must not repair), truncates a torn tail and
// continues appending to the last segment.
class LogWriter : public CommitSink {
 public:
  explicit LogWriter(std::filesystem::path dir, LogOptions options = {});
  // Continues the log that `finished` (a reader of `dir` whose next() has returned false) has just read, so
  // recovery reads the log once: the reader's report is the writer's recovery().
  LogWriter(std::filesystem::path dir, LogOptions options, const LogReader& finished);
  ~LogWriter() override;
  LogWriter(const LogWriter&) = delete;
  LogWriter& operator=(const LogWriter&) = delete;

  // Appends the record; under SyncPolicy::EveryCommit returns once it is durable (group commit: concurrent
  // writers' records are written and synced as one batch). Throws Error(IoError) when the OS refuses: a failed
  // append is removed again and fails only the write() calls of its batch (when even the removal fails the writer
  // refuses all later writes); a failed fdatasync fails every write() waiting on it, and the writer then refuses
  // all later writes.
  // Throws Error(InvalidArgument) for a record whose encoding exceeds kMaxRecordBody.
  void write(const CommitRecord& record) override;
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

  struct BatchWaiter;  // internal: a write() waiting for its group commit (log.cpp)

 private:
  void attach(const LogReader& reader);
  void start_flusher();
  void open_segment_locked(std::uint64_t key);
  void close_segment_locked();
  void prepare_segment_locked(std::unique_lock<std::mutex>& lock, std::uint64_t lsn, std::uint64_t frame_bytes);
  void flush_pending_locked();
  void wait_durable_locked(std::unique_lock<std::mutex>& lock, std::uint64_t ticket);
  void lead_sync_locked(std::unique_lock<std::mutex>& lock);
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
  RecoveryReport recovery_;
  std::atomic<std::uint64_t> last_lsn_{0};

  mutable std::mutex mutex_;
  std::condition_variable synced_cv_;  // synced_, syncing_ or failed_ changed
  std::condition_variable stop_cv_;    // stop_ changed (wakes the Interval thread)
  int fd_ = -1;                    // GUARDED_BY(mutex_): the current segment, or -1 before the first
  std::filesystem::path path_;     // GUARDED_BY(mutex_)
  std::uint64_t key_ = 0;          // GUARDED_BY(mutex_): the LSN in the current segment's name
  std::uint64_t size_ = 0;         // GUARDED_BY(mutex_): bytes in the current segment
  bool failed_ = false;            // GUARDED_BY(mutex_): an I/O error left the segment in an unknown state
  std::string failure_;            // GUARDED_BY(mutex_): what failed, when failed_
  std::string pending_;            // GUARDED_BY(mutex_): appended record bytes not yet written out
  // EveryCommit group commit: the write() calls whose records are in pending_ (the next batch) and in the batch a
  // leader is writing and syncing.
  std::vector<BatchWaiter*> next_batch_;    // GUARDED_BY(mutex_)
  std::vector<BatchWaiter*> leader_batch_;  // GUARDED_BY(mutex_): owned by the leader while syncing_
  std::string leader_bytes_;                       // GUARDED_BY(mutex_): likewise, pending_'s bytes of that batch
  std::uint64_t next_batch_seq_ = 1;               // GUARDED_BY(mutex_): sequence number of next_batch_
  std::vector<BatchWaiter*> to_wake_;              // GUARDED_BY(mutex_): wakes to send once the mutex is released
  // Gathering: the writers released by the last finished batch usually commit again at once; the next leader
  // waits (bounded) until they have appended, so one fdatasync serves all of them instead of half.
  std::uint64_t finished_batch_seq_ = 0;   // GUARDED_BY(mutex_)
  std::uint64_t finished_batch_size_ = 0;  // GUARDED_BY(mutex_): writers released by it
  std::uint64_t returned_ = 0;             // GUARDED_BY(mutex_): of those, how many have appended again
  bool gathering_ = false;                 // GUARDED_BY(mutex_)
  std::condition_variable gather_cv_;
  // Tickets: record bytes appended by this writer, in total over all segments.
  std::uint64_t written_ = 0;      // GUARDED_BY(mutex_): appended (in the file or in pending_)
  std::uint64_t synced_ = 0;       // GUARDED_BY(mutex_): durable
  bool syncing_ = false;           // GUARDED_BY(mutex_): a leader is in fdatasync (the segment must not change)
  std::uint64_t last_sync_ns_ = 0; // GUARDED_BY(mutex_): how long the last leader's fdatasync took
  bool stop_ = false;              // GUARDED_BY(mutex_): the Interval thread should exit
  LogStats stats_;                 // GUARDED_BY(mutex_)
  std::thread flusher_;            // SyncPolicy::Interval: the background sync thread
};

}  // namespace mmsb::serialize
