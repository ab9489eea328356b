// mmsb/dist.hpp — one dependency graph across many processes, on MPI (link mmsb::dist).
//
// A DistRuntime runs on every rank of an MPI communicator. All ranks execute the same program (SPMD): they create
// the same pages and declare the same nodes, in the same order, so page ids agree everywhere. Each page has one
// owner rank, named by the high bits of its PageId; only the owner holds the page's authoritative bytes, writes
// it, and (for a derived page) runs its node. A node may read pages of other ranks: its rank then keeps a
// read-only replica of each such input, which the owner keeps up to date.
//
//   mmsb::dist::DistRuntime d;                                     // MPI_COMM_WORLD; calls MPI_Init if needed
//   mmsb::PageId a = d.create_page(0, 8), b = d.create_page(1, 8); // a on rank 0, b on rank 1 (collective)
//   d.derive_map(b, {a}, "double");                                // a registered function; runs on rank 1
//   if (d.owns(a)) { auto t = d.runtime().begin(); t.write_value<std::int64_t>(a, 0, 21); t.commit(); }
//   d.propagate();                                                 // collective: b holds 42 on rank 1
//
// Waves and supersteps. Commits on a rank are queued (the local Propagator runs in BATCH mode); propagate() runs
// one distributed wave in supersteps. In each superstep every rank runs its local wave, then an MPI_Allreduce
// asks whether any rank has a changed page that another rank replicates (or a failure). If none, the wave is
// over. Otherwise every rank diffs each such page against the bytes it last sent, packs the changed ranges of
// all pages bound for one rank into one protobuf DeltaBatch message, and the batches are exchanged with one
// MPI_Alltoallv; each rank writes what it received into its replicas in one local commit, and the next superstep
// starts. Only changed bytes cross the wire. Map nodes cut off as usual: an unchanged output is never sent.
//
// Result equality. Node functions depend only on their inputs, so the final state is the same on any number of
// ranks and for any placement of pages: state_hash() combines each page's creation index, size and bytes, not
// its owner, and equals the hash of the same program run in one process (see logical_page_hash()).
//
// Failure. If a node throws on any rank, its output is not published and nothing downstream of it runs; the
// other nodes of the wave finish (a failed node is retried in later supersteps, since a replica it reads may
// still be on its way). When no rank has work left, propagate() throws a NodeError on every rank naming the
// failing page and its rank (the failing rank nests the original exception). The next wave recomputes the
// failed node. Any other failure on a rank (a corrupt message, a failed replica commit) cancels the wave at the
// end of the current superstep on every rank, and every caller gets Error(Aborted) naming the rank and cause. Every MPI
// operation is non-blocking with a deadline (DistOptions::timeout): a rank that died or stopped making collective calls
// makes the others throw Error(Aborted) naming the operation, instead of hanging; the DistRuntime is then unusable
// (every further call throws).
//
// Durability. With DistOptions::durable_dir each rank keeps its own DurableRuntime in `<dir>/rank-<r>` (its own
// log and checkpoints). checkpoint() is collective: every rank checkpoints between two waves, a consistent cut.
// A restarted run opens the same directories, declares the same pages and nodes again (they are found, not
// created), and its first wave resends every replicated page whole, so the state converges to what an
// uninterrupted run reaches. Page names are checked then: every rank learns the names of every recovered page.
//
// Thread-safety: a DistRuntime is driven by one thread per rank. Collective calls (create_page, derive_*,
// propagate, recompute_all, state_hash, fetch, checkpoint, the constructor and the destructor) must be made by
// every rank of the communicator, in the same order, with the same arguments. Other members are local. Node
// functions run on the local Propagator's threads as documented in graph.hpp. runtime() may be used to write
// owned pages (between waves) and read any local page; never write a replica, call the local Propagator's
// propagate(), or create pages through runtime() directly (ids would collide).
#pragma once

#include <array>
#include <chrono>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "mmsb/durable.hpp"
#include "mmsb/graph.hpp"
#include "mmsb/page_id.hpp"
#include "mmsb/runtime.hpp"

namespace mmsb::dist {

// An MPI communicator, held without exposing <mpi.h>. world() is MPI_COMM_WORLD; an application that uses MPI
// itself passes its own communicator with mmsb/dist_mpi.hpp. A DistRuntime duplicates the communicator, so its
// traffic never mixes with the application's. Thread-safety: a plain value.
class Communicator {
 public:
  static Communicator world();
  // `mpi_comm` points to an MPI_Comm (use mmsb/dist_mpi.hpp rather than calling this directly).
  static Communicator from_handle(const void* mpi_comm);
  const void* handle() const noexcept { return handle_.data(); }

 private:
  Communicator() = default;
  alignas(8) std::array<unsigned char, 8> handle_{};
};

struct DistOptions {
  PropagatorOptions propagation;  // options of the local Propagator; its mode is always BATCH
  // How long one MPI operation may wait for the other ranks before the call throws Error(Aborted).
  std::chrono::milliseconds timeout{120'000};
  // Empty: in memory. Otherwise each rank opens a DurableRuntime in `<durable_dir>/rank-<r>`, with `durable`'s
  // options (its runtime rank and propagation options are set by the DistRuntime).
  std::filesystem::path durable_dir;
  DurableOptions durable;
};

struct DistStats {
  std::uint64_t waves = 0;               // distributed waves run (propagate() calls that did any work or not)
  std::uint64_t supersteps = 0;          // supersteps over all waves (each ends with one Allreduce)
  std::uint64_t exchanges = 0;           // supersteps that exchanged deltas (one Alltoall + one Alltoallv each)
  std::uint64_t deltas_sent = 0;         // page deltas sent (a page replicated on k ranks counts k times)
  std::uint64_t payload_bytes_sent = 0;  // changed bytes carried by those deltas
  std::uint64_t bytes_sent = 0;          // all bytes this rank put on the wire (messages and the count exchange)
  std::uint64_t bytes_received = 0;
  std::uint64_t replica_commits = 0;  // local commits that applied received deltas to replicas
};

// The hash of one page in state_hash(): its creation index (the PageId sequence, equal on every rank), size and
// bytes. A single-process run of the same program computes the reference as the sum (mod 2^64) of this over its
// pages, since a plain Runtime numbers pages 1, 2, 3... in creation order too.
std::uint64_t logical_page_hash(std::uint64_t index, std::span<const std::byte> bytes);

class DistRuntime {
 public:
  // Collective. Initializes MPI if the application has not (and finalizes it at process exit); throws
  // Error(InvalidArgument) when the communicator has more ranks than PageId can name.
  explicit DistRuntime(DistOptions options = {});
  DistRuntime(const Communicator& comm, DistOptions options = {});
  // Collective (frees the duplicated communicator). Does not finalize MPI.
  ~DistRuntime();
  DistRuntime(const DistRuntime&) = delete;
  DistRuntime& operator=(const DistRuntime&) = delete;

  std::uint32_t rank() const noexcept;
  std::uint32_t size() const noexcept;
  // True when this run reopened durable directories that held state (pages are then found, not created).
  bool recovered() const noexcept;

  // Collective: a zero-filled page of `size` bytes owned by rank `owner`. Every rank gets the same id; only the
  // owner allocates it.
  PageId create_page(std::uint32_t owner, std::uint64_t size);
  // Collective: as create_page(owner, size), and the page is named `name` (the naming rules of Runtime) on every
  // rank: find(name) gives its id everywhere, and each local copy (the owner's page, every replica) carries the
  // name in its rank's runtime, so it is logged and checkpointed with it. A restarted run finds its pages by
  // declaring them again in the same order (ids follow the declarations); a declaration whose name differs from
  // the recovered page's name is refused, with Error(InvalidArgument) on every rank (a page recovered without a
  // name takes the declared one). Throws Error(InvalidArgument) for a
  // bad name or one another page holds, on every rank alike.
  PageId create_page(std::uint32_t owner, std::string_view name, std::uint64_t size);
  // Local: the page named `name` (owned by any rank), or nullopt; the name of a page ("" for none; Error(NotFound)
  // for an id no create_page() returned).
  std::optional<PageId> find(std::string_view name) const;
  std::string name_of(PageId id) const;
  std::uint32_t owner(PageId id) const noexcept { return id.rank(); }
  bool owns(PageId id) const noexcept { return id.rank() == rank(); }

  // Collective: node declarations, as in graph.hpp. The node runs on the owner of `output`; inputs owned by other
  // ranks are replicated there. Throws Error(InvalidArgument) for an unknown page or when the node would close a
  // cycle (also one that crosses ranks), on every rank alike.
  void derive_map(PageId output, std::vector<PageId> inputs, MapFunction fn, NodeOptions options = {});
  void derive_map(PageId output, std::vector<PageId> inputs, const std::string& registered_name,
                  NodeOptions options = {});
  void derive_incremental(PageId output, std::vector<PageId> inputs, IncrementalFunction fn, NodeOptions options = {});
  void derive_passthrough(PageId output, PageId input, ByteRemap remap = {}, NodeOptions options = {});

  // Collective: runs one distributed wave (see the header comment) and returns when no rank has work left.
  void propagate();
  // Collective: a wave that first recomputes every node of every rank (as recovery does), then propagates.
  void recompute_all();

  // Local: the bytes of a page this rank owns or replicates (a replica as of the last exchange).
  std::vector<std::byte> read(PageId id) const;
  // Collective: the bytes of any page, broadcast from its owner.
  std::vector<std::byte> fetch(PageId id);
  // Collective: the hash of every page created through create_page(), the same on every rank (see
  // logical_page_hash()).
  std::uint64_t state_hash();
  // Collective (needs durable_dir): a checkpoint of every rank at the same point between waves. Returns this
  // rank's checkpoint LSN.
  std::uint64_t checkpoint();

  // The local runtime and propagator (owned pages and replicas; replicas have local ids, see local_id()).
  Runtime& runtime() noexcept;
  Propagator& propagator() noexcept;
  // The id under which this rank stores page `id`: `id` itself when owned, the replica's id otherwise.
  PageId local_id(PageId id) const noexcept { return PageId::make(rank(), id.sequence()); }
  DistStats stats() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace mmsb::dist
