// mmsb/durable.hpp — a runtime whose state survives crashes: transaction log, checkpoints, recovery, replay.
//
// A durable directory holds the transaction log (segment files of commit records) and checkpoints (the whole
// state at one LSN: pages, graph topology, node functions by registered name). DurableRuntime opens such a
// directory, recovers the state it holds (latest checkpoint, then every later log record) and logs every new
// commit before it becomes visible:
//
//   mmsb::FunctionRegistry::global().register_map("double", [](mmsb::MapContext& c) { ... });
//   mmsb::DurableRuntime db("/var/lib/app/state");              // created if missing, recovered if not
//   mmsb::Runtime& rt = db.runtime();
//   if (db.recovery().fresh) {                                   // first run: build the state and the graph
//     auto a = rt.create_page(8), b = rt.create_page(8);
//     db.propagator().derive_map(b, {a}, "double");
//     db.checkpoint();                                           // the graph topology is stored by checkpoints
//   }
//   auto txn = rt.begin(); txn.write_value<std::int64_t>(a, 0, 21); txn.commit();   // durable when it returns
//
// What is durable. Every page creation, deletion, resize and write is a log record; under SyncPolicy::EveryCommit
// commit() returns only once its record is on disk. Derived pages are not logged: they are consequences of their
// inputs, and recovery recomputes every restored node. The graph topology (nodes, their inputs, function names,
// CONTROL/GPU_SYNC edges) is stored by checkpoint(), not logged: call checkpoint() after changing the graph. A
// node whose function was given as a lambda rather than by registered name cannot be restored; its page is listed
// in RecoveryInfo::unbound_nodes so the application can derive it again. External pages
// (Runtime::create_external_page) are neither logged nor checkpointed: the application maps them again.
//
// Recovery. Opening a directory loads the newest checkpoint, then replays every log record with a higher LSN. A
// torn tail (what a crash during an append leaves) is truncated and reported; any other damage is
// Error(Corruption) naming the file and byte offset — never skipped silently. repair() is the explicit way to drop
// damaged records. The recovered state equals the live state at the last durable commit (state_hash() of both is
// equal).
//
// Checkpoints. checkpoint() briefly holds new commits back (only while it copies the pages in memory), then
// writes a zstd-compressed file to a temporary name, fsyncs it, renames it into place and fsyncs the directory.
// Only then are older checkpoints and the log segments it covers deleted. A crash at any point leaves either the
// old or the new checkpoint, with the log records needed on top of it.
//
// Thread-safety: DurableRuntime's members may be called from any thread; runtime() and propagator() are used as
// documented in runtime.hpp and graph.hpp. Do not call checkpoint() while the calling thread holds a ReadView (the
// commits it holds back could be waiting for that view's pages). One process opens a directory at a time (a lock
// file enforces it). The free functions below read a directory that no process is writing; run on a directory
// that is being written, they may stop early at the writer's half-written last record.
#pragma once

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "mmsb/graph.hpp"
#include "mmsb/page_id.hpp"
#include "mmsb/runtime.hpp"

namespace mmsb {

enum class SyncPolicy : std::uint8_t {
  None,         // the OS decides when records reach the disk: a machine crash may lose the latest commits
  EveryCommit,  // commit() returns once its record is on disk; concurrent commits share one fdatasync
  Interval,     // a background thread syncs every `sync_interval`: a crash may lose the last interval's commits
};

struct DurableOptions {
  RuntimeOptions runtime;          // `first_lsn` is ignored: new LSNs continue the directory's log
  PropagatorOptions propagation;   // options of the Propagator that propagator() returns
  SyncPolicy sync = SyncPolicy::EveryCommit;
  std::chrono::milliseconds sync_interval{10};       // SyncPolicy::Interval
  std::uint64_t segment_bytes = std::uint64_t{64} << 20;  // a log segment is closed once it reaches this size
  int checkpoint_compression_level = 3;              // zstd level 1..19, or 0 to store checkpoints uncompressed
};

struct RecoveryInfo {
  bool fresh = false;                  // the directory held no state (it may have just been created)
  std::uint64_t checkpoint_lsn = 0;    // LSN covered by the checkpoint that was loaded (0: none)
  std::uint64_t pages_restored = 0;    // pages loaded from that checkpoint
  std::uint64_t nodes_restored = 0;    // derived-page nodes re-created from it
  std::uint64_t records_replayed = 0;  // log records applied on top of the checkpoint
  std::uint64_t last_lsn = 0;          // LSN of the last commit in the recovered state
  std::uint64_t truncated_bytes = 0;   // torn tail removed from the end of the log (0 when the log was clean)
  std::vector<PageId> unbound_nodes;   // derived pages whose function had no registered name: derive them again
  std::chrono::nanoseconds duration{0};
};

struct CheckpointInfo {
  std::uint64_t lsn = 0;               // every commit up to this LSN is in the checkpoint, none after it
  std::filesystem::path file;
  std::uint64_t pages = 0;
  std::uint64_t nodes = 0;
  std::uint64_t raw_bytes = 0;         // uncompressed size of the checkpoint's contents
  std::uint64_t file_bytes = 0;        // size on disk
  std::uint64_t segments_removed = 0;  // log segments deleted because the checkpoint covers them
  std::chrono::nanoseconds pause{0};   // how long commits were held back
  std::chrono::nanoseconds duration{0};
};

class DurableRuntime {
 public:
  // Opens `dir` (created when missing) and recovers its state. Throws Error(Corruption) for damage other than a
  // torn tail; Error(NotFound) when a checkpoint names a function not registered in FunctionRegistry::global();
  // Error(IoError) when the directory cannot be read or written; Error(InvalidArgument) when another process has
  // it open, or when it holds files but no mmsb state (so a mistyped path never fills a foreign directory).
  explicit DurableRuntime(const std::filesystem::path& dir, DurableOptions options = {});
  // Syncs the log (every commit that returned is then durable under every policy) and closes the directory.
  ~DurableRuntime();
  DurableRuntime(const DurableRuntime&) = delete;
  DurableRuntime& operator=(const DurableRuntime&) = delete;

  Runtime& runtime() noexcept;
  Propagator& propagator() noexcept;
  const RecoveryInfo& recovery() const noexcept;
  const std::filesystem::path& directory() const noexcept;

  // Writes a checkpoint of the current state and deletes what it makes unnecessary (see the header comment).
  CheckpointInfo checkpoint();
  // Makes every commit so far durable (useful under SyncPolicy::None and Interval).
  void sync();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// ---------------------------------------------------------------------------------------------------------------
// Reading a durable directory offline (the `mmsb` tool is built on these).

// A point in a directory's history. The state "at" a target holds every commit with LSN <= the target LSN.
struct ReplayTarget {
  enum class Kind : std::uint8_t { End, Lsn, Time, PageEpoch };
  Kind kind = Kind::End;
  std::uint64_t value = 0;  // Lsn: the LSN; Time: nanoseconds since the Unix epoch; PageEpoch: the epoch
  PageId page;              // PageEpoch only

  static ReplayTarget end() { return {}; }
  static ReplayTarget lsn(std::uint64_t lsn) { return {Kind::Lsn, lsn, {}}; }
  // The last commit whose timestamp is <= `unix_ns`.
  static ReplayTarget time(std::uint64_t unix_ns) { return {Kind::Time, unix_ns, {}}; }
  // The commit that brought `page` to `epoch`.
  static ReplayTarget page_epoch(PageId page, std::uint64_t epoch) { return {Kind::PageEpoch, epoch, page}; }
};

// Progress of a long replay: log bytes read so far and in total (called every few thousand records, from the
// calling thread).
using ReplayProgress = std::function<void(std::uint64_t bytes_done, std::uint64_t bytes_total)>;

// A runtime holding the state of `dir` at `target` (no sink, no graph: derived pages hold their checkpointed
// bytes). Throws Error(NotFound) when the target lies before the checkpoint (that history was compacted away) or
// past the end of the log, Error(Corruption) for a damaged directory. `reached_lsn`, if given, receives the LSN of
// the last commit applied.
std::unique_ptr<Runtime> load_state(const std::filesystem::path& dir, ReplayTarget target = {},
                                    std::uint64_t* reached_lsn = nullptr, const ReplayProgress& progress = {});

// Writes the state of `dir` at `target` as a new durable directory `out` (a checkpoint and an empty log; the graph
// topology of `dir`'s checkpoint comes along). `out` must not exist or be empty. Returns what was written.
CheckpointInfo replay_to(const std::filesystem::path& dir, ReplayTarget target, const std::filesystem::path& out,
                         const ReplayProgress& progress = {});

// One change of one page, from the log.
struct PageChange {
  enum class Kind : std::uint8_t { Created, Changed, Deleted, Renamed };
  Kind kind = Kind::Changed;
  std::uint64_t lsn = 0;
  std::uint64_t timestamp_ns = 0;
  // The page's epoch and size after the change (Deleted: the last epoch seen in the log, size 0; Renamed: the last
  // epoch and size seen in the log, 0 when the log holds no earlier change of the page).
  std::uint64_t epoch = 0;
  std::uint64_t size = 0;
  Delta delta;                     // Changed: the delta (with undo bytes when the runtime recorded them)
  std::string name;                // Created, Renamed: the page's name after the change ("" for none)
};
// The changes of `page` recorded in the log of `dir` (after its checkpoint), in LSN order.
std::vector<PageChange> page_history(const std::filesystem::path& dir, PageId page);

// Calls `visit` for every log record of `dir` in log order (after the checkpoint's LSN, if any); stops early when
// it returns false. The record's spans are valid during the call.
void for_each_commit(const std::filesystem::path& dir, const std::function<bool(const CommitRecord&)>& visit);

struct SegmentSummary {
  std::filesystem::path file;
  std::uint64_t bytes = 0;
  std::uint64_t records = 0;
  std::uint64_t min_lsn = 0, max_lsn = 0;  // 0 when the segment holds no record
  std::uint64_t first_timestamp_ns = 0, last_timestamp_ns = 0;
};
struct CheckpointSummary {
  std::filesystem::path file;
  std::uint64_t lsn = 0;
  std::uint64_t bytes = 0;
  std::uint64_t pages = 0, nodes = 0, edges = 0;
  std::uint64_t created_ns = 0;
};
struct DirectorySummary {
  std::vector<CheckpointSummary> checkpoints;  // newest last; recovery uses the newest
  std::vector<SegmentSummary> segments;        // in LSN order
  std::uint64_t records = 0;                   // log records in all segments (also those the checkpoint covers)
  std::uint64_t first_lsn = 0, last_lsn = 0;   // of the recoverable history (checkpoint, then records)
  std::uint64_t torn_tail_bytes = 0;           // what recovery would truncate
  std::uint64_t deltas = 0, payload_bytes = 0, pages_created = 0, pages_deleted = 0;
};
// Reads every file of `dir` and summarizes it. Throws like recovery does (Error(NotFound) for a directory that
// holds no mmsb state, Error(Corruption) for damage).
DirectorySummary inspect(const std::filesystem::path& dir);

struct VerifyProblem {
  std::filesystem::path file;
  std::uint64_t offset = 0;
  std::string what;
};
struct VerifyReport {
  bool ok = true;                       // no problem found (a torn tail is not a problem)
  std::uint64_t records_checked = 0;
  std::uint64_t checkpoints_checked = 0;
  std::uint64_t torn_tail_bytes = 0;
  std::vector<VerifyProblem> problems;  // every damaged record or file, not only the first
};
// Checks every record of every segment and every checkpoint (checksums, framing, decodability, delta invariants,
// that each delta applies to the page's epoch). Throws only Error(NotFound) for a missing directory.
VerifyReport verify(const std::filesystem::path& dir);

struct RepairReport {
  std::uint64_t records_dropped = 0;  // damaged stretches dropped (each held at least one damaged record)
  std::uint64_t bytes_dropped = 0;
  std::uint64_t torn_tail_bytes = 0;
  std::vector<std::filesystem::path> backups;  // the damaged files, kept as "<name>.damaged"
};
// Rewrites damaged log segments without their damaged records (resynchronizing on the next intact record),
// keeping each original as "<name>.damaged", and truncates a torn tail. Records after a dropped one are kept; a
// later delta that no longer applies makes recovery fail, which verify() then reports. Checkpoints are not
// repaired (a damaged checkpoint is reported by verify()).
RepairReport repair(const std::filesystem::path& dir);

// A hash of a runtime's whole state: every live page's id, size and bytes, in id order (epochs and derived-page
// staleness are not included). Equal states hash equal across runs, thread counts and recoveries.
std::uint64_t state_hash(const Runtime& runtime);

}  // namespace mmsb
