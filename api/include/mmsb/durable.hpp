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
// Recovery. Opening a directory loads the newest checkpoint, then replays every log record with a higher LSN
// through the restored graph, one wave per record, so derived pages end as an uninterrupted run left them. What
// happens at damage is the RecoveryMode: by default a torn tail (what a crash during an append leaves) is truncated
// and reported, and any other damage is Error(Corruption) naming the segment, the byte offset, the last good LSN
// and how many intact records follow — never skipped silently. The other modes open anyway, keep what they do
// not replay in a folder beside the log (never deleting it) and report it in RecoveryInfo. repair() drops damaged
// records offline. The recovered state equals the live state at the last durable commit (state_hash() of both is
// equal).
//
// Checkpoints. checkpoint() briefly holds new commits back (while it runs the waves of commits not yet propagated,
// so derived pages reflect exactly the checkpoint's LSN, and copies the pages in memory), then writes a
// zstd-compressed file to a temporary name, fsyncs it, renames it into place and fsyncs the directory. Only then
// are older checkpoints and the log segments it covers deleted. A crash at any point leaves either the old or the
// new checkpoint, with the log records needed on top of it.
//
// Exact restarts. After reopening, every derived page holds the bytes an uninterrupted run would hold: map and
// passthrough nodes by construction; an incremental node restored by its registered name receives the replayed
// records' deltas in LSN order (one wave per record, as IMMEDIATE and DEFERRED run them; in BATCH mode the
// function must give the same result for a composed delta as for its parts); an incremental node given as a
// lambda must declare a rebuild function (derive_incremental(..., rebuild)), which recompute() runs after the
// application derives the node again. A node given as a function may also be derived again before the log is
// replayed, in DurableOptions::rebind, and then receives the replayed records too. Without a rebind function,
// checkpoint() refuses (Error(InvalidArgument) naming the page) what no restart could make exact: an incremental
// node without a rebuild function that has no registered name, or that reads (directly or through other nodes) a
// node that has none, since the deltas replayed into it would differ from the live ones.
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

#include "mmsb/file_system.hpp"
#include "mmsb/graph.hpp"
#include "mmsb/page_id.hpp"
#include "mmsb/runtime.hpp"

namespace mmsb {

enum class SyncPolicy : std::uint8_t {
  None,         // the OS decides when records reach the disk: a machine crash may lose the latest commits
  EveryCommit,  // commit() returns once its record is on disk; concurrent commits share one fdatasync
  Interval,     // a background thread syncs every `sync_interval`: a crash may lose the last interval's commits
};

// What opening a directory does with damage in its log (docs/durability.md, "Recovery modes"; the names follow
// RocksDB's WAL recovery modes). No mode drops a committed record without reporting it.
enum class RecoveryMode : std::uint8_t {
  // Only a torn tail (damage at the end of the last segment after which nothing intact follows: what a crash
  // during an append leaves) is cut off and reported. Any other damage refuses to open: Error(Corruption) naming
  // the segment, the offset, the last good LSN and how many intact records follow.
  TolerateTornTail,
  // Any damage, a torn tail included, refuses to open.
  Absolute,
  // Opens at the last LSN before the first damage (or the first record that no longer applies). The damaged segment
  // is copied and everything after the damage is moved to a folder beside the log; nothing is deleted.
  PointInTime,
  // Replays every intact record; each damaged stretch, and each record that no longer applies because of one, is
  // skipped, reported, and kept (with the original segment) in a folder beside the log.
  SkipDamaged,
};
// "tolerate_torn_tail", "absolute", "point_in_time", "skip_damaged".
const char* recovery_mode_name(RecoveryMode mode) noexcept;
// The mode of one of those names; Error(InvalidArgument) listing them otherwise.
RecoveryMode parse_recovery_mode(const std::string& name);

class DurableRuntime;

struct DurableOptions {
  // `first_lsn` is ignored: new LSNs continue the directory's log. `record_undo` says whether the log keeps each
  // commit's old bytes (undo) beside its new ones: page_history()'s deltas, invert() of a logged delta and `mmsb
  // history` need them; without them a record holds about half the bytes (commits record only changed bytes).
  RuntimeOptions runtime;
  PropagatorOptions propagation;  // options of the Propagator that propagator() returns
  SyncPolicy sync = SyncPolicy::EveryCommit;
  std::chrono::milliseconds sync_interval{10};  // SyncPolicy::Interval
  std::uint64_t segment_bytes = std::uint64_t{64}
                                << 20;   // a log segment is closed once it reaches this size (<= 1 GiB)
  int checkpoint_compression_level = 3;  // zstd level 1..19, or 0 to store checkpoints uncompressed
  RecoveryMode recovery_mode = RecoveryMode::TolerateTornTail;
  std::shared_ptr<FileSystem> file_system;  // where the files live; null: posix_file_system()
  // Where node functions named in a checkpoint are looked up (and what propagator() uses); null: the global one.
  std::shared_ptr<FunctionRegistry> registry;
  // Called while the constructor runs, when a checkpoint was loaded, once its pages and graph are restored and
  // before the log is replayed: derive again here the nodes in db.recovery().unbound_nodes (those given as
  // functions; attach a GpuMirror for device nodes), and they receive the replayed records like the restored
  // nodes, so every node kind restarts exactly. It must not commit or create pages (nothing is logged yet). With
  // it, checkpoint() trusts the application to do so (see "Exact restarts").
  std::function<void(DurableRuntime& db)> rebind;
};

// One stretch of a durable directory that recovery (or an offline reader) did not use.
struct DamageReport {
  std::filesystem::path file;       // the segment, or the file that is missing or unusable
  std::uint64_t offset = 0;         // where the damage starts in it
  std::uint64_t bytes = 0;          // how far it extends (to the next intact record or the end of the file)
  std::string what;                 // what is wrong there
  std::uint64_t last_good_lsn = 0;  // LSN of the last commit record read before it (0: none)
};

struct RecoveryInfo {
  bool fresh = false;                  // the directory held no state (it may have just been created)
  std::uint64_t checkpoint_lsn = 0;    // LSN covered by the checkpoint that was loaded (0: none)
  std::uint64_t pages_restored = 0;    // pages loaded from that checkpoint
  std::uint64_t nodes_restored = 0;    // derived-page nodes re-created from it
  std::uint64_t records_replayed = 0;  // log records applied on top of the checkpoint
  std::uint64_t last_lsn = 0;          // LSN of the last commit in the recovered state
  std::uint64_t truncated_bytes = 0;   // torn tail removed from the end of the log (0 when the log was clean)
  // Derived pages whose function had no registered name: derive them again, then recompute() each (a map, or an
  // incremental node through its rebuild function), and they hold what an uninterrupted run would.
  std::vector<PageId> unbound_nodes;
  RecoveryMode mode = RecoveryMode::TolerateTornTail;  // the mode the directory was opened with
  // PointInTime: the damage where the log was cut; SkipDamaged: every stretch skipped (damaged bytes, or records
  // that no longer applied after an earlier skip).
  std::vector<DamageReport> damage;
  std::uint64_t records_not_replayed = 0;  // intact commit records after the cut (PointInTime) or skipped
  std::filesystem::path set_aside;         // the folder holding what was cut or skipped (empty when nothing was)
  std::uint64_t failed_waves = 0;          // replayed records whose wave threw (their nodes stay stale until the next)
  std::chrono::nanoseconds duration{0};
};

struct CheckpointInfo {
  std::uint64_t lsn = 0;  // every commit up to this LSN is in the checkpoint, none after it
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
  // Opens `dir` (created when missing) and recovers its state. Throws Error(Corruption) for damage the recovery
  // mode does not accept; Error(NotFound) when a checkpoint names a function not registered in
  // DurableOptions::registry (FunctionRegistry::global() by default); Error(IoError) when the directory cannot be read
  // or written; Error(InvalidArgument) when another process has it open, when it holds files but no mmsb state (so a
  // mistyped path never fills a foreign directory), or for options out of range.
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
  // Throws Error(InvalidArgument) for an incremental node that could not be restored exactly (see "Exact
  // restarts"), and rethrows a NodeError of a wave it ran; in both cases nothing is written.
  CheckpointInfo checkpoint();
  // Makes every commit so far durable (useful under SyncPolicy::None and Interval).
  void sync();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// ---------------------------------------------------------------------------------------------------------------
// Reading a durable directory offline (the `mmsb` tool is built on these). None of them changes the directory:
// PointInTime and SkipDamaged act on what is read, in memory.

struct OfflineOptions {
  RecoveryMode recovery_mode = RecoveryMode::TolerateTornTail;
  std::shared_ptr<FileSystem> file_system;  // null: posix_file_system()
};

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
                                    std::uint64_t* reached_lsn = nullptr, const ReplayProgress& progress = {},
                                    const OfflineOptions& options = {});

// Writes the state of `dir` at `target` as a new durable directory `out` (a checkpoint and an empty log; the graph
// topology of `dir`'s checkpoint comes along, and when records were replayed on top of the checkpoint its derived
// pages are marked for recomputation at the next open). `out` must not exist or be empty. Returns what was written.
CheckpointInfo replay_to(const std::filesystem::path& dir, ReplayTarget target, const std::filesystem::path& out,
                         const ReplayProgress& progress = {}, const OfflineOptions& options = {});

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
  Delta delta;       // Changed: the delta (with undo bytes when the runtime recorded them)
  std::string name;  // Created, Renamed: the page's name after the change ("" for none)
};
// The changes of `page` recorded in the log of `dir` (after its checkpoint), in LSN order. Throws Error(NotFound)
// when the page is neither in the checkpoint nor in the log (it never existed, or was deleted before the
// checkpoint).
std::vector<PageChange> page_history(const std::filesystem::path& dir, PageId page, const OfflineOptions& options = {});

// Calls `visit` for every log record of `dir` in log order (after the checkpoint's LSN, if any); stops early when
// it returns false. The record's spans are valid during the call.
void for_each_commit(const std::filesystem::path& dir, const std::function<bool(const CommitRecord&)>& visit,
                     const OfflineOptions& options = {});

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
  bool closed_cleanly = false;       // the log ends with the record a writer leaves when it closes
  std::vector<DamageReport> damage;  // what the recovery mode passed over (PointInTime, SkipDamaged)
};
// Reads every file of `dir` and summarizes it. Throws like recovery in the same mode does (Error(NotFound) for a
// directory that holds no mmsb state, Error(Corruption) for damage the mode does not accept).
DirectorySummary inspect(const std::filesystem::path& dir, const OfflineOptions& options = {});

struct VerifyProblem {
  std::filesystem::path file;
  std::uint64_t offset = 0;
  std::string what;
};
struct VerifyReport {
  bool ok = true;  // no problem found (a torn tail is not a problem)
  std::uint64_t records_checked = 0;
  std::uint64_t checkpoints_checked = 0;
  std::uint64_t torn_tail_bytes = 0;
  std::vector<VerifyProblem> problems;  // every damaged record or file, not only the first
};
// Checks every record of every segment and every checkpoint (checksums, framing, decodability, delta invariants,
// the set of segments against the manifest, that each delta applies to the page's epoch), with the same damage
// classifier as recovery. Throws only Error(NotFound) for a missing directory.
VerifyReport verify(const std::filesystem::path& dir, const std::shared_ptr<FileSystem>& file_system = nullptr);

struct RepairOptions {
  // SkipDamaged (the default): drop each damaged stretch and keep every intact record. PointInTime: cut the log at
  // the first damage. Other modes are refused (Error(InvalidArgument)).
  RecoveryMode mode = RecoveryMode::SkipDamaged;
  std::shared_ptr<FileSystem> file_system;
};
struct RepairReport {
  std::uint64_t records_dropped = 0;  // damaged stretches dropped (each held at least one damaged record)
  std::uint64_t bytes_dropped = 0;
  std::uint64_t torn_tail_bytes = 0;
  std::vector<DamageReport> dropped;  // each stretch dropped (torn tail included)
  std::filesystem::path set_aside;    // the folder holding the originals of every file changed (empty: none)
};
// Drops damage from the log offline: first copies every segment it will change, and writes a list of what it
// drops, into a new folder "aside-<time>" of `dir`; only then rewrites the segments without their damaged stretches
// (resynchronizing on the next intact record), truncates a torn tail and rewrites the manifest. Records after a
// dropped one are kept; a later delta that no longer applies makes recovery fail, which verify() then reports.
// Checkpoints are not repaired (a damaged checkpoint is reported by verify()).
RepairReport repair(const std::filesystem::path& dir, const RepairOptions& options = {});

// A hash of a runtime's whole state: every live page's id, size and bytes, in id order (epochs and derived-page
// staleness are not included). Equal states hash equal across runs, thread counts and recoveries.
std::uint64_t state_hash(const Runtime& runtime);

}  // namespace mmsb
