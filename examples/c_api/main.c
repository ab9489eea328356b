/* c_api: mmsb from C — pages, a transaction, a derived page computed by a C callback, errors, and (with a
 * directory argument) a durable runtime that recovers its state on the next run.
 *
 *   c_api                 in memory: prints `sum 42`, `epoch 1` and the error for a missing page
 *   c_api DIR             durable: each run adds 1 to a counter kept in DIR and prints `counter N`
 */
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include <mmsb/mmsb.h>

#define CHECK(call)                                                                           \
  do {                                                                                        \
    mmsb_status status_ = (call);                                                             \
    if (status_ != MMSB_OK) {                                                                 \
      fprintf(stderr, "c_api: %s failed (%d): %s\n", #call, (int)status_, mmsb_last_error()); \
      return 1;                                                                               \
    }                                                                                         \
  } while (0)

/* sum = inputs[0] + inputs[1], each a little int64 at offset 0. */
static int sum_inputs(void* user, const mmsb_input* inputs, size_t count, void* output, uint64_t output_size) {
  int64_t a, b, sum;
  (void)user;
  if (count != 2 || inputs[0].size < 8 || inputs[1].size < 8 || output_size < 8) return 1;
  memcpy(&a, inputs[0].data, 8);
  memcpy(&b, inputs[1].data, 8);
  sum = a + b;
  memcpy(output, &sum, 8);
  return 0;
}

static int refuse(void* user, const mmsb_input* inputs, size_t count, void* output, uint64_t output_size) {
  (void)user, (void)inputs, (void)count, (void)output, (void)output_size;
  return 7;
}

static int in_memory(void) {
  mmsb_runtime* rt;
  mmsb_page_id a, b, sum, inputs[2];
  mmsb_txn* txn;
  int64_t va = 20, vb = 22, result = 0;
  uint64_t epoch = 0, lsn = 0;
  char byte;

  CHECK(mmsb_runtime_create(&rt));
  CHECK(mmsb_page_create(rt, 8, &a));
  CHECK(mmsb_page_create(rt, 8, &b));
  CHECK(mmsb_page_create(rt, 8, &sum));
  inputs[0] = a;
  inputs[1] = b;
  CHECK(mmsb_derive_map(rt, sum, inputs, 2, sum_inputs, NULL));

  CHECK(mmsb_txn_begin(rt, &txn));
  CHECK(mmsb_txn_write(txn, a, 0, &va, sizeof va));
  CHECK(mmsb_txn_write(txn, b, 0, &vb, sizeof vb));
  CHECK(mmsb_txn_commit(txn, &lsn)); /* the wave runs inside the commit */

  CHECK(mmsb_page_read(rt, sum, 0, &result, sizeof result));
  CHECK(mmsb_page_info(rt, sum, NULL, &epoch));
  printf("sum %" PRId64 "\n", result);
  printf("epoch %" PRIu64 "\n", epoch);

  /* Errors are statuses with a message, never a crash. */
  if (mmsb_page_read(rt, 999, 0, &byte, 1) != MMSB_NOT_FOUND) {
    fprintf(stderr, "c_api: reading a missing page did not fail with MMSB_NOT_FOUND\n");
    return 1;
  }
  printf("error %s\n", mmsb_last_error());

  /* A callback that fails: the commit takes effect (its LSN comes back; never retry it), the wave reports
   * MMSB_NODE_FAILED, the derived page is untouched. */
  CHECK(mmsb_derive_map(rt, a, &b, 1, refuse, NULL));
  CHECK(mmsb_txn_begin(rt, &txn));
  vb = 1;
  CHECK(mmsb_txn_write(txn, b, 0, &vb, sizeof vb));
  if (mmsb_txn_commit(txn, &lsn) != MMSB_NODE_FAILED || lsn == 0) {
    fprintf(stderr, "c_api: a failing callback did not make the commit report MMSB_NODE_FAILED with its LSN\n");
    return 1;
  }
  CHECK(mmsb_page_read(rt, a, 0, &va, sizeof va));
  printf("failed-wave %s (a still %" PRId64 ")\n", va == 20 ? "ok" : "BAD", va);
  mmsb_runtime_destroy(rt);
  return result == 42 && epoch == 1 && va == 20 ? 0 : 1;
}

static int durable(const char* dir) {
  mmsb_runtime* rt;
  mmsb_txn* txn;
  uint64_t recovered = 0;
  int64_t counter = 0;
  const mmsb_page_id page = 1; /* the first page this program creates: ids are deterministic */

  CHECK(mmsb_runtime_open(dir, &rt, &recovered));
  if (recovered == 0) {
    mmsb_page_id created;
    CHECK(mmsb_page_create(rt, 8, &created));
    if (created != page) {
      fprintf(stderr, "c_api: unexpected page id %" PRIu64 "\n", created);
      return 1;
    }
  }
  CHECK(mmsb_page_read(rt, page, 0, &counter, sizeof counter));
  ++counter;
  CHECK(mmsb_txn_begin(rt, &txn));
  CHECK(mmsb_txn_write(txn, page, 0, &counter, sizeof counter));
  CHECK(mmsb_txn_commit(txn, NULL)); /* on disk when this returns */
  printf("counter %" PRId64 "\n", counter);
  mmsb_runtime_destroy(rt);
  return 0;
}

int main(int argc, char** argv) {
  if (argc > 2 || (argc == 2 && (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0))) {
    fprintf(argc > 2 ? stderr : stdout,
            "usage: c_api [DIR]\n  without DIR: a derived sum in memory\n"
            "  with DIR: a durable counter in DIR, one more on every run\n");
    return argc > 2 ? 2 : 0;
  }
  return argc == 2 ? durable(argv[1]) : in_memory();
}
