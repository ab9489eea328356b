/* mmsb/mmsb.h — the C ABI of mmsb: pages, transactions, derived pages with C callbacks, durable directories.
 *
 *   mmsb_runtime* rt;
 *   if (mmsb_runtime_create(&rt) != MMSB_OK) { fprintf(stderr, "%s\n", mmsb_last_error()); return 1; }
 *   mmsb_page_id a, twice;
 *   mmsb_page_create(rt, 8, &a);
 *   mmsb_page_create(rt, 8, &twice);
 *   mmsb_derive_map(rt, twice, &a, 1, double_it, NULL);      // twice = 2 * a, kept up to date
 *   mmsb_txn* txn;
 *   mmsb_txn_begin(rt, &txn);
 *   int64_t v = 21;
 *   mmsb_txn_write(txn, a, 0, &v, sizeof v);
 *   mmsb_txn_commit(txn, NULL);                              // the wave runs inside commit: twice holds 42
 *   mmsb_runtime_destroy(rt);
 *
 * Errors. Every function that can fail returns an mmsb_status; MMSB_OK is 0. The message of the last failure on the
 * calling thread is mmsb_last_error() (valid until the thread's next failing call). No function lets a C++
 * exception escape. After mmsb_txn_commit, only MMSB_OK and MMSB_NODE_FAILED mean the commit took effect (then
 * `lsn` holds its LSN; never retry it); MMSB_CONFLICT means nothing was committed and the whole transaction
 * (reads included) may be run again. docs/api.md has the table for every status.
 *
 * Ownership. Objects made by *_create / *_open / *_begin are owned by the caller and released by the matching
 * *_destroy, or, for a transaction, by mmsb_txn_commit or mmsb_txn_abort (whatever they return). Pointers passed
 * in are only read during the call, except the `user` pointer of a callback, which must stay valid while the node
 * exists.
 *
 * Thread-safety: as the C++ API (mmsb/runtime.hpp, mmsb/graph.hpp): a runtime may be used from many threads at
 * once; a transaction from one thread at a time. Callbacks may run on worker threads, concurrently with each
 * other (never two at once for the same node); they must not call back into mmsb.
 */
#ifndef MMSB_MMSB_H
#define MMSB_MMSB_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum mmsb_status {
  MMSB_OK = 0,
  MMSB_INVALID_ARGUMENT = 1,
  MMSB_NOT_FOUND = 2,
  MMSB_CORRUPTION = 3,
  MMSB_IO_ERROR = 4,
  MMSB_UNSUPPORTED = 5,
  MMSB_RESOURCE_EXHAUSTED = 6,
  MMSB_ABORTED = 7,
  MMSB_INTERNAL = 8,
  MMSB_CONFLICT = 9,    /* a page the transaction read or expected moved: nothing committed; run it again */
  MMSB_NODE_FAILED = 10 /* a derived node failed; from mmsb_txn_commit: the commit took effect (see `lsn`) */
} mmsb_status;

typedef uint64_t mmsb_page_id; /* PageId::value(): rank in the high 16 bits, sequence below; 0 is no page */
typedef struct mmsb_runtime mmsb_runtime;
typedef struct mmsb_txn mmsb_txn;

/* One input of a map callback: the input page's bytes, read-only, valid during the call. */
typedef struct mmsb_input {
  const void* data;
  uint64_t size;
} mmsb_input;

/* Computes a derived page: writes `output` (`output_size` bytes, holding the page's current bytes on entry) from
 * the inputs, in declaration order. Returns 0 on success; anything else fails the wave: the page stays unchanged
 * and stale until the next wave, and the call that ran the wave returns MMSB_NODE_FAILED. */
typedef int (*mmsb_map_fn)(void* user, const mmsb_input* inputs, size_t input_count, void* output,
                           uint64_t output_size);

/* The message of the calling thread's last failure ("" if none). */
const char* mmsb_last_error(void);
/* The version of the mmsb library in use ("0.1.0"); MMSB_VERSION_STRING of mmsb/version.hpp is the headers'. */
const char* mmsb_version(void);
/* A stable lower-case name of a status ("ok", "conflict", "node_failed", ...; "unknown" for other values). */
const char* mmsb_status_name(mmsb_status status);

/* An in-memory runtime with a propagator in IMMEDIATE mode (waves run inside each commit). */
mmsb_status mmsb_runtime_create(mmsb_runtime** out);
/* A durable runtime on directory `dir` (created if missing, recovered if not); every commit is on disk when
 * mmsb_txn_commit returns. `recovered_lsn`, if not NULL, receives the last recovered LSN (0 for a new one). */
mmsb_status mmsb_runtime_open(const char* dir, mmsb_runtime** out, uint64_t* recovered_lsn);
/* Writes a checkpoint of a durable runtime (MMSB_UNSUPPORTED for an in-memory one). */
mmsb_status mmsb_runtime_checkpoint(mmsb_runtime* rt);
void mmsb_runtime_destroy(mmsb_runtime* rt); /* NULL is allowed */

mmsb_status mmsb_page_create(mmsb_runtime* rt, uint64_t size, mmsb_page_id* out);
/* Named pages (mmsb::Runtime's rules: a unique, NUL-terminated name of 1 to 1024 bytes, no control characters,
 * not of the form of a page id). create_named fails with MMSB_INVALID_ARGUMENT when the name is bad or taken;
 * open returns the page so named, creating it (`size` zero bytes) when there is none, and fails with
 * MMSB_INVALID_ARGUMENT when it exists with another size; find fails with MMSB_NOT_FOUND when no page has it. */
mmsb_status mmsb_page_create_named(mmsb_runtime* rt, const char* name, uint64_t size, mmsb_page_id* out);
mmsb_status mmsb_page_open(mmsb_runtime* rt, const char* name, uint64_t size, mmsb_page_id* out);
mmsb_status mmsb_page_find(mmsb_runtime* rt, const char* name, mmsb_page_id* out);
mmsb_status mmsb_page_delete(mmsb_runtime* rt, mmsb_page_id page);
mmsb_status mmsb_page_info(mmsb_runtime* rt, mmsb_page_id page, uint64_t* size, uint64_t* epoch);
/* Copies `length` bytes from `offset` of the page into `out`. */
mmsb_status mmsb_page_read(mmsb_runtime* rt, mmsb_page_id page, uint64_t offset, void* out, uint64_t length);

mmsb_status mmsb_txn_begin(mmsb_runtime* rt, mmsb_txn** out);
/* Stages a write of `length` bytes (copied now) at `offset`. */
mmsb_status mmsb_txn_write(mmsb_txn* txn, mmsb_page_id page, uint64_t offset, const void* bytes, uint64_t length);
/* Commits and releases the transaction; `lsn`, if not NULL, receives the commit's LSN (0 when nothing changed).
 * When the commit took effect but the wave it triggered failed (a callback returned non-zero), the result is
 * MMSB_NODE_FAILED and `lsn` still receives the commit's LSN: the commit must not be retried. Every other failure
 * leaves no trace and `lsn` receives 0; MMSB_CONFLICT is the one to retry (begin a new transaction, read again). */
mmsb_status mmsb_txn_commit(mmsb_txn* txn, uint64_t* lsn);
/* Drops the staged changes and releases the transaction. NULL is allowed. */
void mmsb_txn_abort(mmsb_txn* txn);
/* A tracked read: copies `length` bytes from `offset` of the page's last published state into `out` and records
 * the page's epoch, so the commit fails with MMSB_CONFLICT (committing nothing) if the page moves before it:
 * read-modify-write through these reads is serializable. MMSB_CONFLICT already here when the page moved since this
 * transaction first read it. */
mmsb_status mmsb_txn_read(mmsb_txn* txn, mmsb_page_id page, uint64_t offset, void* out, uint64_t length);

/* The body of a transaction for mmsb_transact: reads and writes through `txn` (never commits or releases it) and
 * returns MMSB_OK to commit, or any other status to give up (MMSB_CONFLICT, as returned by mmsb_txn_read, retries).
 * It may run several times. */
typedef mmsb_status (*mmsb_txn_fn)(void* user, mmsb_txn* txn);
/* Runs `fn` on a fresh transaction and commits it, running it again (at most `max_attempts` times in all) while
 * the result is MMSB_CONFLICT; `lsn`, if not NULL, receives the LSN as mmsb_txn_commit gives it. Returns the
 * commit's status (MMSB_NODE_FAILED: committed, never retried), the last MMSB_CONFLICT once the attempts are
 * spent, or the status `fn` gave up with (MMSB_ABORTED for a value that is no mmsb_status). Fair as
 * Runtime::transact (mmsb/runtime.hpp, "Fairness"): under contention it commits within 4 attempts. */
mmsb_status mmsb_transact(mmsb_runtime* rt, mmsb_txn_fn fn, void* user, unsigned max_attempts, uint64_t* lsn);

/* Makes `output` a page derived from `inputs` by `fn`; it is recomputed whenever an input changes. The node is
 * computed for the first time by the next wave that touches an input, or by mmsb_recompute(). */
mmsb_status mmsb_derive_map(mmsb_runtime* rt, mmsb_page_id output, const mmsb_page_id* inputs, size_t input_count,
                            mmsb_map_fn fn, void* user);
/* An ordering-only edge: `to` runs after `from` when both are in a wave. */
mmsb_status mmsb_add_dependency(mmsb_runtime* rt, mmsb_page_id from, mmsb_page_id to);
/* Computes a derived page now (and what depends on it). */
mmsb_status mmsb_recompute(mmsb_runtime* rt, mmsb_page_id output);
/* Runs pending waves (recomputes stale pages after a failure). */
mmsb_status mmsb_propagate(mmsb_runtime* rt);

#ifdef __cplusplus
}
#endif

#endif /* MMSB_MMSB_H */
