// dist_runtime.cpp — DistRuntime (mmsb/dist.hpp): page ownership, supersteps, delta exchange on MPI.
//
// Every collective declaration (create_page, derive_*) runs on every rank without communication: page ids are
// PageId::make(owner, g) with g a counter all ranks advance alike, so every rank knows every page's owner and every
// cross-rank edge. A replica of page g on rank r is the local page PageId::make(r, g) (free, since g is owned by
// exactly one rank). Owners keep, per replicated page, the bytes last sent ("shadow") and the epoch they had;
// a superstep diffs the pages whose epoch moved against their shadow and ships the ranges.
#include <mpi.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <limits>
#include <map>
#include <optional>
#include <set>
#include <thread>
#include <unordered_set>

#define XXH_STATIC_LINKING_ONLY
#include <xxhash.h>

#include "mmsb/dist.hpp"
#include "mmsb/error.hpp"
#include "runtime/logging.hpp"
#include "runtime/page_names.hpp"
#include "serialize/codec.hpp"

namespace mmsb::dist {
namespace {

static_assert(sizeof(MPI_Comm) <= 8, "MPI_Comm must fit Communicator's handle");

constexpr std::uint64_t kNoFailure = std::numeric_limits<std::uint64_t>::max();

// MPI initialized by mmsb (not the application) is finalized at exit, unless a peer failure left requests that
// MPI_Finalize would wait for forever.
struct MpiSession {
  bool initialized_here = false;
  std::atomic<bool> broken{false};
  ~MpiSession() {
    int finalized = 0;
    MPI_Finalized(&finalized);
    if (initialized_here && !finalized && !broken.load()) MPI_Finalize();
  }
};
MpiSession& session() {
  static MpiSession s;
  return s;
}

void ensure_mpi() {
  int initialized = 0;
  MPI_Initialized(&initialized);
  if (initialized) return;
  MpiSession& s = session();  // constructed before MPI_Init, so destroyed (finalizing) at exit
  int provided = 0;
  if (MPI_Init_thread(nullptr, nullptr, MPI_THREAD_FUNNELED, &provided) != MPI_SUCCESS) {
    throw Error(ErrorCode::Unsupported, "MPI_Init_thread failed; start the program with mpirun");
  }
  s.initialized_here = true;
}

std::string mpi_error_string(int code) {
  char text[MPI_MAX_ERROR_STRING];
  int length = 0;
  if (MPI_Error_string(code, text, &length) != MPI_SUCCESS) return "MPI error " + std::to_string(code);
  return std::string(text, static_cast<std::size_t>(length));
}

}  // namespace

Communicator Communicator::world() {
  MPI_Comm w = MPI_COMM_WORLD;
  return from_handle(&w);
}

Communicator Communicator::from_handle(const void* mpi_comm) {
  Communicator c;
  std::memcpy(c.handle_.data(), mpi_comm, sizeof(MPI_Comm));
  return c;
}

std::uint64_t logical_page_hash(std::uint64_t index, std::span<const std::byte> bytes) {
  XXH3_state_t state;
  XXH3_64bits_reset(&state);
  const std::uint64_t head[2] = {index, bytes.size()};
  XXH3_64bits_update(&state, head, sizeof head);
  XXH3_64bits_update(&state, bytes.data(), bytes.size());
  return XXH3_64bits_digest(&state);
}

struct DistRuntime::Impl {
  struct PageMeta {
    std::uint32_t owner = 0;
    std::uint64_t size = 0;
  };
  // An owned page that other ranks replicate.
  struct Boundary {
    std::vector<std::uint32_t> dests;  // sorted ranks holding a replica
    std::vector<std::byte> shadow;     // the bytes the replicas hold (as of the last exchange)
    std::uint64_t sent_epoch = 0;      // the page's epoch when `shadow` was taken
    bool full = false;                 // send the whole page next time (a new replica, or after a restart)
    bool sent_any = false;
  };

  MPI_Comm comm = MPI_COMM_NULL;
  std::uint32_t rank = 0, size = 1;
  DistOptions options;
  std::unique_ptr<DurableRuntime> db;
  std::unique_ptr<Runtime> memory;
  std::unique_ptr<Propagator> memory_prop;
  Runtime* rt = nullptr;
  Propagator* prop = nullptr;
  bool recovered = false;
  bool broken = false;

  std::vector<PageMeta> pages{PageMeta{}};                  // by g; index 0 unused
  std::vector<std::vector<std::uint64_t>> dependents{{}};   // g -> outputs reading it (global graph, cycle checks)
  std::map<std::uint64_t, Boundary> boundaries;             // owned pages with remote dependents, in id order
  std::unordered_set<std::uint64_t> replicas;               // g of pages replicated here
  std::unordered_set<std::uint64_t> restored_nodes;         // g of nodes a recovered checkpoint already declared
  std::map<std::string, std::uint64_t, std::less<>> names;  // page name -> g, the same on every rank
  std::map<std::uint64_t, std::string> name_of;             // g -> page name
  std::map<std::uint64_t, std::string> recovered_names;     // g -> the name the recovered state gives it
  std::uint64_t known_next = 1;                             // local sequences below this are reserved
  std::uint64_t wave = 0;
  DistStats stats;

  // ---- MPI with deadlines ------------------------------------------------------------------------------------

  void check_usable() const {
    if (broken) {
      throw Error(ErrorCode::Aborted, "the distributed runtime on rank " + std::to_string(rank) +
                                          " is unusable after an earlier MPI failure or timeout; end the run");
    }
  }

  [[noreturn]] void fail(const char* what, const std::string& why) {
    broken = true;
    session().broken = true;
    const std::string message = "rank " + std::to_string(rank) + ": " + what + " failed: " + why;
    detail::logger()->error("dist: {}", message);
    throw Error(ErrorCode::Aborted, message);
  }

  void check(int rc, const char* what) {
    if (rc != MPI_SUCCESS) fail(what, mpi_error_string(rc));
  }

  // Polls `request` until it completes; past the deadline the runtime is marked broken and Error(Aborted) thrown.
  void wait(MPI_Request& request, const char* what) {
    const auto deadline = std::chrono::steady_clock::now() + options.timeout;
    for (std::uint64_t spin = 0;; ++spin) {
      int done = 0;
      check(MPI_Test(&request, &done, MPI_STATUS_IGNORE), what);
      if (done) return;
      if (spin >= 256) {
        if ((spin & 63) == 0 && std::chrono::steady_clock::now() > deadline) {
          fail(what, "timed out after " + std::to_string(options.timeout.count()) +
                         " ms waiting for the other ranks: a peer rank has probably died or stopped making the same "
                         "collective calls");
        }
        std::this_thread::yield();
      }
    }
  }

  void allreduce(const void* in, void* out, int count, MPI_Datatype type, MPI_Op op, const char* what) {
    MPI_Request request;
    check(MPI_Iallreduce(in, out, count, type, op, comm, &request), what);
    wait(request, what);
  }

  void bcast(void* data, int count, MPI_Datatype type, std::uint32_t root, const char* what) {
    MPI_Request request;
    check(MPI_Ibcast(data, count, type, static_cast<int>(root), comm, &request), what);
    wait(request, what);
  }

  // ---- pages --------------------------------------------------------------------------------------------------

  const PageMeta& meta(PageId id, const char* role) const {
    if (!id.valid() || id.sequence() >= pages.size() || pages[id.sequence()].owner != id.rank()) {
      throw Error(ErrorCode::NotFound, std::string(role) + " " + id.to_string() +
                                           " was not created by DistRuntime::create_page (on every rank)");
    }
    return pages[id.sequence()];
  }

  // Creates local page g (owned or replica), with the page's name if it has one, unless a recovered state already
  // holds it.
  void create_local(std::uint64_t g, std::uint64_t bytes) {
    const PageId local = PageId::make(rank, g);
    auto named = name_of.find(g);
    if (rt->contains(local)) {
      // A page recovered from a run that did not name it takes the name now (check_recovered_name() allowed it).
      if (named != name_of.end() && rt->name_of(local).empty()) rt->rename_page(local, named->second);
      return;
    }
    if (g >= known_next) {
      IdBlock probe = rt->reserve_ids(1);
      known_next = probe.next().sequence() + 1;
      if (g >= known_next) {
        rt->reserve_ids(g - known_next + 1);
        known_next = g + 1;
      }
    }
    if (named != name_of.end()) {
      rt->create_page(local, named->second, bytes);
    } else {
      rt->create_page(local, bytes);
    }
  }

  // Every rank learns the names its peers' recovered states hold (owned pages and replicas alike), so a restarted
  // run checks each declaration against them on every rank alike.
  void gather_recovered_names() {
    std::string mine;
    for (const auto& [id, name] : rt->page_names()) {
      const std::uint64_t g = id.sequence(), length = name.size();
      mine.append(reinterpret_cast<const char*>(&g), sizeof g);
      mine.append(reinterpret_cast<const char*>(&length), sizeof length);
      mine.append(name);
    }
    if (mine.size() > static_cast<std::size_t>(std::numeric_limits<int>::max())) {
      throw Error(ErrorCode::Unsupported, "the page names of rank " + std::to_string(rank) + " exceed 2 GiB");
    }
    const int count = static_cast<int>(mine.size());
    std::vector<int> counts(size), displs(size);
    {
      MPI_Request request;
      check(MPI_Iallgather(&count, 1, MPI_INT, counts.data(), 1, MPI_INT, comm, &request), "MPI_Iallgather (names)");
      wait(request, "MPI_Iallgather (names)");
    }
    std::int64_t total = 0;
    for (std::uint32_t r = 0; r < size; ++r) {
      displs[r] = static_cast<int>(total);
      total += counts[r];
      if (total > std::numeric_limits<int>::max()) fail("name exchange", "the page names exceed 2 GiB in all");
    }
    std::string all(static_cast<std::size_t>(total), '\0');
    {
      MPI_Request request;
      check(MPI_Iallgatherv(mine.data(), count, MPI_CHAR, all.data(), counts.data(), displs.data(), MPI_CHAR, comm,
                            &request),
            "MPI_Iallgatherv (names)");
      wait(request, "MPI_Iallgatherv (names)");
    }
    for (std::size_t at = 0; at + 2 * sizeof(std::uint64_t) <= all.size();) {
      std::uint64_t g = 0, length = 0;
      std::memcpy(&g, all.data() + at, sizeof g);
      std::memcpy(&length, all.data() + at + sizeof g, sizeof length);
      at += 2 * sizeof(std::uint64_t);
      if (length > all.size() - at) throw Error(ErrorCode::Corruption, "a rank sent a truncated page name list");
      recovered_names.emplace(g, all.substr(at, length));
      at += length;
    }
  }

  // A restarted run must declare the pages it recovers with the names they had (and in the same order: ids follow
  // the declarations); a page recovered without a name may take one. Every rank holds the same recovered names, so
  // every rank refuses alike.
  void check_recovered_name(std::uint64_t g, std::string_view name) const {
    if (!recovered) return;
    auto it = recovered_names.find(g);
    const std::string_view had = it == recovered_names.end() ? std::string_view() : std::string_view(it->second);
    if (had == name || had.empty()) return;
    const auto text = [](std::string_view n) {
      return n.empty() ? std::string("no name") : "'" + std::string(n) + "'";
    };
    throw Error(ErrorCode::InvalidArgument,
                "declaration " + std::to_string(g) + " of this restarted run gives its page " + text(name) +
                    ", but the recovered page of that declaration has " + text(had) +
                    "; a restart must declare the same pages, with the same names, in the same order");
  }

  // True when `to` is reachable from `from` along dependency edges (the global graph).
  bool reaches(std::uint64_t from, const std::set<std::uint64_t>& targets) const {
    std::vector<std::uint64_t> stack{from};
    std::vector<bool> seen(pages.size(), false);
    while (!stack.empty()) {
      const std::uint64_t g = stack.back();
      stack.pop_back();
      if (targets.count(g)) return true;
      if (seen[g]) continue;
      seen[g] = true;
      for (std::uint64_t next : dependents[g]) stack.push_back(next);
    }
    return false;
  }

  // Checks and records a node's edges; returns its inputs as local ids (replicas created) when this rank runs it.
  std::vector<PageId> declare(PageId output, const std::vector<PageId>& inputs) {
    check_usable();
    const PageMeta& out = meta(output, "output page");
    std::set<std::uint64_t> input_set;
    for (PageId in : inputs) {
      meta(in, "input page");
      input_set.insert(in.sequence());
    }
    if (input_set.count(output.sequence())) {
      throw Error(ErrorCode::InvalidArgument, "page " + output.to_string() + " cannot be an input of its own node");
    }
    if (reaches(output.sequence(), input_set)) {
      throw Error(ErrorCode::InvalidArgument, "the node computing " + output.to_string() +
                                                  " would close a cycle through its inputs (possibly across ranks)");
    }
    for (std::uint64_t g : input_set) dependents[g].push_back(output.sequence());
    const std::uint32_t runner = out.owner;
    for (PageId in : inputs) {
      if (in.rank() == runner) continue;
      if (rank == in.rank()) {
        Boundary& b = boundaries[in.sequence()];
        if (!std::binary_search(b.dests.begin(), b.dests.end(), runner)) {
          b.dests.insert(std::upper_bound(b.dests.begin(), b.dests.end(), runner), runner);
          if (b.dests.size() == 1 && !b.sent_any) {
            b.shadow.assign(pages[in.sequence()].size, std::byte{0});
          } else {
            b.full = true;  // the new replica starts from zeros, the others from the shadow: resend whole
          }
          if (recovered) b.full = true;  // replicas restored from their own logs: resynchronize whole
        }
      }
      if (rank == runner) {
        create_local(in.sequence(), pages[in.sequence()].size);
        replicas.insert(in.sequence());
      }
    }
    if (rank != runner) return {};
    std::vector<PageId> local;
    local.reserve(inputs.size());
    for (PageId in : inputs) local.push_back(PageId::make(rank, in.sequence()));
    return local;
  }

  bool node_exists(PageId output) const { return restored_nodes.count(output.sequence()) != 0; }

  // ---- supersteps ---------------------------------------------------------------------------------------------

  struct Failure {
    std::exception_ptr error;
    std::string message;
  };

  bool has_outgoing() const {
    for (const auto& [g, b] : boundaries) {
      if (b.full || rt->info(PageId::make(rank, g)).epoch != b.sent_epoch) return true;
    }
    return false;
  }

  // The deltas of this superstep's changed boundary pages into `deltas` (reserved by the caller, so pointers stay
  // valid), and for each destination rank the deltas it receives.
  void collect_outgoing(std::vector<Delta>& deltas, std::vector<std::vector<const Delta*>>& per_dest) {
    DiffOptions diff_options;
    diff_options.record_undo = false;
    for (auto& [g, b] : boundaries) {
      const PageId id = PageId::make(rank, g);
      const PageId ids[1] = {id};
      ReadView view = rt->read_view(ids);
      const std::uint64_t epoch = view.info(id).epoch;
      if (!b.full && epoch == b.sent_epoch) continue;
      const std::span<const std::byte> bytes = view.bytes(id);
      Delta& d = deltas.emplace_back();
      if (b.full) {
        d.base_size = bytes.size();
        d.size = bytes.size();
        d.epoch_count = 1;
        if (!bytes.empty()) {
          d.ranges.push_back(ByteRange{0, bytes.size()});
          d.payload.assign(bytes.begin(), bytes.end());
        }
      } else {
        diff_into(b.shadow, bytes, d, diff_options);
      }
      d.page = id;
      b.shadow.assign(bytes.begin(), bytes.end());
      b.sent_epoch = epoch;
      b.full = false;
      b.sent_any = true;
      if (d.ranges.empty() && d.base_size == d.size) {
        deltas.pop_back();
        continue;
      }
      for (std::uint32_t dest : b.dests) {
        per_dest[dest].push_back(&d);
        ++stats.deltas_sent;
        stats.payload_bytes_sent += d.payload.size();
      }
    }
  }

  // Applies every received delta (rank r's batch at recv[offsets[r]], counts[r] bytes) to its replica, in one local
  // commit.
  void apply_received(std::uint64_t superstep, const std::string& recv, const std::vector<int>& counts,
                      const std::vector<int>& offsets) {
    auto txn = rt->begin();
    txn.set_intent("dist:replica");
    bool any = false;
    for (std::uint32_t src = 0; src < size; ++src) {
      if (counts[src] == 0) continue;
      const std::string_view bytes(recv.data() + offsets[src], static_cast<std::size_t>(counts[src]));
      serialize::DecodedDeltaBatch batch = serialize::decode_delta_batch(bytes);
      if (batch.source_rank != src || batch.wave != wave || batch.superstep != superstep) {
        throw Error(ErrorCode::Corruption,
                    "rank " + std::to_string(rank) + " received a delta batch from rank " + std::to_string(src) +
                        " labelled rank " + std::to_string(batch.source_rank) + ", wave " + std::to_string(batch.wave) +
                        ", superstep " + std::to_string(batch.superstep) + "; expected wave " + std::to_string(wave) +
                        ", superstep " + std::to_string(superstep));
      }
      for (const Delta& d : batch.deltas) {
        if (d.page.rank() != src || !replicas.count(d.page.sequence())) {
          throw Error(ErrorCode::Corruption, "rank " + std::to_string(rank) + " received a delta for page " +
                                                 d.page.to_string() + " from rank " + std::to_string(src) +
                                                 ", which it does not replicate from that rank");
        }
        const PageId local = PageId::make(rank, d.page.sequence());
        if (rt->info(local).size != d.size) txn.resize(local, d.size);
        std::uint64_t at = 0;
        for (const ByteRange& r : d.ranges) {
          txn.write(local, r.offset, std::span<const std::byte>(d.payload).subspan(at, r.length));
          at += r.length;
        }
        any = true;
      }
    }
    if (any) {
      txn.commit();
      ++stats.replica_commits;
    }
  }

  void exchange(std::uint64_t superstep) {
    // The deltas of this superstep, pointed to per destination (the deque-free reserve keeps pointers stable).
    std::vector<Delta> deltas;
    deltas.reserve(boundaries.size());
    std::vector<std::vector<const Delta*>> per_dest(size);
    collect_outgoing(deltas, per_dest);

    std::string send;
    std::vector<std::int64_t> send_counts(size, 0), recv_counts(size, 0);
    for (std::uint32_t dest = 0; dest < size; ++dest) {
      if (per_dest[dest].empty()) continue;
      const std::size_t before = send.size();
      serialize::append_delta_batch(rank, wave, superstep, per_dest[dest], send);
      send_counts[dest] = static_cast<std::int64_t>(send.size() - before);
    }
    {
      MPI_Request request;
      check(MPI_Ialltoall(send_counts.data(), 1, MPI_INT64_T, recv_counts.data(), 1, MPI_INT64_T, comm, &request),
            "MPI_Ialltoall (delta sizes)");
      wait(request, "MPI_Ialltoall (delta sizes)");
    }
    std::vector<int> sc(size), sd(size), rc(size), rd(size);
    std::int64_t send_total = 0, recv_total = 0;
    for (std::uint32_t r = 0; r < size; ++r) {
      sd[r] = static_cast<int>(send_total);
      rd[r] = static_cast<int>(recv_total);
      sc[r] = static_cast<int>(send_counts[r]);
      rc[r] = static_cast<int>(recv_counts[r]);
      send_total += send_counts[r];
      recv_total += recv_counts[r];
      if (recv_counts[r] < 0 || send_total > std::numeric_limits<int>::max() ||
          recv_total > std::numeric_limits<int>::max()) {
        fail("delta exchange", "a superstep moves more than 2 GiB through one rank; run smaller waves");
      }
    }
    std::string recv(static_cast<std::size_t>(recv_total), '\0');
    {
      MPI_Request request;
      check(MPI_Ialltoallv(send.data(), sc.data(), sd.data(), MPI_BYTE, recv.data(), rc.data(), rd.data(), MPI_BYTE,
                           comm, &request),
            "MPI_Ialltoallv (deltas)");
      wait(request, "MPI_Ialltoallv (deltas)");
    }
    ++stats.exchanges;
    stats.bytes_sent += send.size() + sizeof(std::int64_t) * (size - 1);
    stats.bytes_received += recv.size() + sizeof(std::int64_t) * (size - 1);

    apply_received(superstep, recv, rc, rd);
  }

  // One local wave; a node failure is recorded (it may be retried), any other failure becomes `fatal`.
  void local_wave(bool recompute_all, std::map<std::uint64_t, Failure>& failures, Failure& fatal) {
    try {
      if (recompute_all) {
        prop->recompute_all();
      } else {
        prop->propagate();
      }
    } catch (const NodeError& e) {
      Failure& f = failures[e.page().value()];
      f.error = std::current_exception();
      try {
        if (e.nested()) std::rethrow_exception(e.nested());
        f.message = e.what();
      } catch (const std::exception& inner) {
        f.message = inner.what();
      } catch (...) {
        f.message = "a non-standard exception";
      }
    } catch (const std::exception& e) {
      fatal.error = std::current_exception();
      fatal.message = e.what();
    }
    // A failed node that a later superstep computed is no failure any more.
    for (auto it = failures.begin(); it != failures.end();) {
      it = prop->is_stale(PageId(it->first)) ? std::next(it) : failures.erase(it);
    }
  }

  void propagate(bool recompute_all) {
    check_usable();
    ++wave;
    ++stats.waves;
    std::map<std::uint64_t, Failure> failures;  // by page, of this rank's nodes
    Failure fatal;
    for (std::uint64_t superstep = 1;; ++superstep) {
      ++stats.supersteps;
      if (!fatal.error) local_wave(recompute_all && superstep == 1, failures, fatal);
      const std::uint64_t node_key = failures.empty() ? kNoFailure : failures.begin()->first;
      // A rank-level failure is keyed by the rank's id with sequence 0.
      const std::uint64_t fatal_key = fatal.error ? PageId::make(rank, 0).value() : kNoFailure;
      const std::uint64_t mine[3] = {fatal.error || !has_outgoing() ? 1u : 0u, node_key, fatal_key};
      std::uint64_t all[3] = {0, 0, 0};
      allreduce(mine, all, 3, MPI_UINT64_T, MPI_MIN, "MPI_Iallreduce (superstep end)");
      if (all[2] != kNoFailure) raise(all[2], fatal_key == all[2] ? &fatal : nullptr);
      if (all[0] == 1) {
        if (all[1] != kNoFailure) {
          auto it = failures.find(all[1]);
          raise(all[1], it == failures.end() ? nullptr : &it->second);
        }
        return;
      }
      try {
        exchange(superstep);
      } catch (const std::exception& e) {
        if (broken) throw;  // MPI itself failed: the other ranks cannot be reached
        fatal.error = std::current_exception();
        fatal.message = e.what();
      }
    }
  }

  // Every rank throws: the failing rank's message is broadcast so each caller names the page, rank and cause.
  // `mine` is this rank's record of the failure when it is the failing rank.
  [[noreturn]] void raise(std::uint64_t key, const Failure* mine) {
    const PageId page(key);
    const std::uint32_t root = page.rank();
    std::string message = mine ? mine->message : std::string();
    std::uint64_t length = message.size();
    bcast(&length, 1, MPI_UINT64_T, root, "MPI_Ibcast (failure)");
    message.resize(length);
    bcast(message.data(), static_cast<int>(length), MPI_CHAR, root, "MPI_Ibcast (failure)");
    const std::string where = "on rank " + std::to_string(root) + ": " + message;
    if (!page.valid()) {
      throw Error(ErrorCode::Aborted, "the distributed wave was cancelled by a failure " + where);
    }
    throw NodeError(page, where, mine ? mine->error : nullptr);
  }
};

DistRuntime::DistRuntime(DistOptions options) : DistRuntime(Communicator::world(), std::move(options)) {}

DistRuntime::DistRuntime(const Communicator& comm, DistOptions options) : impl_(std::make_unique<Impl>()) {
  ensure_mpi();
  Impl& m = *impl_;
  m.options = std::move(options);
  MPI_Comm parent;
  std::memcpy(&parent, comm.handle(), sizeof(MPI_Comm));
  if (MPI_Comm_dup(parent, &m.comm) != MPI_SUCCESS) {
    throw Error(ErrorCode::InvalidArgument, "MPI_Comm_dup failed: pass a valid communicator");
  }
  MPI_Comm_set_errhandler(m.comm, MPI_ERRORS_RETURN);
  int r = 0, s = 1;
  MPI_Comm_rank(m.comm, &r);
  MPI_Comm_size(m.comm, &s);
  if (static_cast<std::uint64_t>(s) > PageId::kMaxRank + std::uint64_t{1}) {
    MPI_Comm_free(&m.comm);
    throw Error(ErrorCode::InvalidArgument, "the communicator has " + std::to_string(s) + " ranks; PageId names " +
                                                "at most " + std::to_string(PageId::kMaxRank + 1));
  }
  m.rank = static_cast<std::uint32_t>(r);
  m.size = static_cast<std::uint32_t>(s);
  PropagatorOptions propagation = m.options.propagation;
  propagation.mode = PropagationMode::Batch;
  propagation.background_worker = false;
  if (m.options.durable_dir.empty()) {
    RuntimeOptions ro;
    ro.rank = m.rank;
    m.memory = std::make_unique<Runtime>(ro);
    m.memory_prop = std::make_unique<Propagator>(*m.memory, propagation);
    m.rt = m.memory.get();
    m.prop = m.memory_prop.get();
  } else {
    DurableOptions d = m.options.durable;
    d.runtime.rank = m.rank;
    d.propagation = propagation;
    m.db = std::make_unique<DurableRuntime>(m.options.durable_dir / ("rank-" + std::to_string(m.rank)), d);
    m.rt = &m.db->runtime();
    m.prop = &m.db->propagator();
    m.recovered = !m.db->recovery().fresh;
    for (const NodeDescription& n : m.prop->nodes()) m.restored_nodes.insert(n.output.sequence());
  }
  // Every rank must agree on whether this is a restart.
  const int mine = m.recovered ? 1 : 0;
  int all_min = 0, all_max = 0;
  m.allreduce(&mine, &all_min, 1, MPI_INT, MPI_MIN, "MPI_Iallreduce (startup)");
  m.allreduce(&mine, &all_max, 1, MPI_INT, MPI_MAX, "MPI_Iallreduce (startup)");
  if (all_min != all_max) {
    throw Error(ErrorCode::InvalidArgument,
                "some ranks found state in " + m.options.durable_dir.string() +
                    " and others did not; restart with every rank's directory, or start over in an empty one");
  }
  if (m.recovered) m.gather_recovered_names();
}

DistRuntime::~DistRuntime() {
  if (impl_ && impl_->comm != MPI_COMM_NULL && !impl_->broken) MPI_Comm_free(&impl_->comm);
}

std::uint32_t DistRuntime::rank() const noexcept { return impl_->rank; }
std::uint32_t DistRuntime::size() const noexcept { return impl_->size; }
bool DistRuntime::recovered() const noexcept { return impl_->recovered; }
Runtime& DistRuntime::runtime() noexcept { return *impl_->rt; }
Propagator& DistRuntime::propagator() noexcept { return *impl_->prop; }
DistStats DistRuntime::stats() const { return impl_->stats; }

PageId DistRuntime::create_page(std::uint32_t owner, std::uint64_t size) {
  Impl& m = *impl_;
  m.check_usable();
  if (owner >= m.size) {
    throw Error(ErrorCode::InvalidArgument, "owner rank " + std::to_string(owner) + " does not exist: the run has " +
                                                std::to_string(m.size) + " ranks");
  }
  const std::uint64_t g = m.pages.size();
  if (g > PageId::kSequenceMask) throw Error(ErrorCode::ResourceExhausted, "the page id space is used up");
  m.check_recovered_name(g, {});
  if (owner == m.rank) m.create_local(g, size);
  m.pages.push_back({owner, size});
  m.dependents.emplace_back();
  return PageId::make(owner, g);
}

PageId DistRuntime::create_page(std::uint32_t owner, std::string_view name, std::uint64_t size) {
  Impl& m = *impl_;
  m.check_usable();
  if (auto problem = detail::page_name_problem(name)) throw Error(ErrorCode::InvalidArgument, *problem);
  if (auto taken = m.names.find(name); taken != m.names.end()) {
    throw Error(ErrorCode::InvalidArgument, "the name '" + std::string(name) + "' is taken by page " +
                                                PageId::make(m.pages[taken->second].owner, taken->second).to_string());
  }
  if (owner >= m.size) {
    throw Error(ErrorCode::InvalidArgument, "owner rank " + std::to_string(owner) + " does not exist: the run has " +
                                                std::to_string(m.size) + " ranks");
  }
  const std::uint64_t g = m.pages.size();
  if (g > PageId::kSequenceMask) throw Error(ErrorCode::ResourceExhausted, "the page id space is used up");
  m.check_recovered_name(g, name);
  m.name_of.emplace(g, std::string(name));
  try {
    if (owner == m.rank) m.create_local(g, size);
  } catch (...) {
    m.name_of.erase(g);
    throw;
  }
  m.names.emplace(std::string(name), g);
  m.pages.push_back({owner, size});
  m.dependents.emplace_back();
  return PageId::make(owner, g);
}

std::optional<PageId> DistRuntime::find(std::string_view name) const {
  auto it = impl_->names.find(name);
  if (it == impl_->names.end()) return std::nullopt;
  return PageId::make(impl_->pages[it->second].owner, it->second);
}

std::string DistRuntime::name_of(PageId id) const {
  impl_->meta(id, "page");
  auto it = impl_->name_of.find(id.sequence());
  return it == impl_->name_of.end() ? std::string() : it->second;
}

void DistRuntime::derive_map(PageId output, std::vector<PageId> inputs, MapFunction fn, NodeOptions options) {
  std::vector<PageId> local = impl_->declare(output, inputs);
  if (owns(output) && !impl_->node_exists(output)) {
    impl_->prop->derive_map(output, std::move(local), std::move(fn), std::move(options));
  }
}

void DistRuntime::derive_map(PageId output, std::vector<PageId> inputs, const std::string& registered_name,
                             NodeOptions options) {
  std::vector<PageId> local = impl_->declare(output, inputs);
  if (owns(output) && !impl_->node_exists(output)) {
    impl_->prop->derive_map(output, std::move(local), registered_name, std::move(options));
  }
}

void DistRuntime::derive_incremental(PageId output, std::vector<PageId> inputs, IncrementalFunction fn,
                                     NodeOptions options) {
  std::vector<PageId> local = impl_->declare(output, inputs);
  if (owns(output) && !impl_->node_exists(output)) {
    impl_->prop->derive_incremental(output, std::move(local), std::move(fn), std::move(options));
  }
}

void DistRuntime::derive_passthrough(PageId output, PageId input, ByteRemap remap, NodeOptions options) {
  std::vector<PageId> local = impl_->declare(output, {input});
  if (owns(output) && !impl_->node_exists(output)) {
    impl_->prop->derive_passthrough(output, local.at(0), remap, std::move(options));
  }
}

void DistRuntime::propagate() { impl_->propagate(false); }
void DistRuntime::recompute_all() { impl_->propagate(true); }

std::vector<std::byte> DistRuntime::read(PageId id) const {
  impl_->meta(id, "page");
  const PageId local = local_id(id);
  if (!owns(id) && !impl_->replicas.count(id.sequence())) {
    throw Error(ErrorCode::NotFound, "page " + id.to_string() + " is neither owned nor replicated on rank " +
                                         std::to_string(rank()) + "; use fetch() (collective) to read it");
  }
  return impl_->rt->read_all(local);
}

std::vector<std::byte> DistRuntime::fetch(PageId id) {
  Impl& m = *impl_;
  m.check_usable();
  m.meta(id, "page");
  std::vector<std::byte> bytes;
  if (owns(id)) bytes = m.rt->read_all(id);
  std::uint64_t length = bytes.size();
  m.bcast(&length, 1, MPI_UINT64_T, id.rank(), "MPI_Ibcast (fetch)");
  if (length > static_cast<std::uint64_t>(std::numeric_limits<int>::max())) {
    throw Error(ErrorCode::Unsupported, "fetch() moves pages of at most 2 GiB; page " + id.to_string() + " has " +
                                            std::to_string(length) + " bytes");
  }
  bytes.resize(length);
  m.bcast(bytes.data(), static_cast<int>(length), MPI_BYTE, id.rank(), "MPI_Ibcast (fetch)");
  return bytes;
}

std::uint64_t DistRuntime::state_hash() {
  Impl& m = *impl_;
  m.check_usable();
  std::uint64_t sum = 0;
  for (std::uint64_t g = 1; g < m.pages.size(); ++g) {
    if (m.pages[g].owner != m.rank) continue;
    const std::vector<std::byte> bytes = m.rt->read_all(PageId::make(m.rank, g));
    sum += logical_page_hash(g, bytes);
  }
  std::uint64_t total = 0;
  m.allreduce(&sum, &total, 1, MPI_UINT64_T, MPI_SUM, "MPI_Iallreduce (state hash)");
  return total;
}

std::uint64_t DistRuntime::checkpoint() {
  Impl& m = *impl_;
  m.check_usable();
  if (!m.db) {
    throw Error(ErrorCode::InvalidArgument, "checkpoint() needs DistOptions::durable_dir; this run is in memory");
  }
  // Every rank is between the same two waves here (collective order), so the checkpoints form a consistent cut.
  std::uint64_t lsn = 0;
  std::string error;
  try {
    lsn = m.db->checkpoint().lsn;
  } catch (const std::exception& e) {
    error = e.what();
  }
  const int failed = error.empty() ? 0 : 1;
  int any = 0;
  m.allreduce(&failed, &any, 1, MPI_INT, MPI_MAX, "MPI_Iallreduce (checkpoint)");
  if (failed) throw Error(ErrorCode::IoError, "checkpoint of rank " + std::to_string(m.rank) + " failed: " + error);
  if (any) {
    throw Error(ErrorCode::IoError,
                "the coordinated checkpoint failed on another rank (see its error); call checkpoint() again before "
                "relying on a restart");
  }
  return lsn;
}

}  // namespace mmsb::dist
