/* Uses the installed C ABI: a page, a derived page computed by a C callback, a commit. */
#include <mmsb/mmsb.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <mmsb/version.hpp>

static int double_it(void* user, const mmsb_input* inputs, size_t input_count, void* output, uint64_t output_size) {
  int64_t v;
  (void)user;
  if (input_count != 1 || inputs[0].size < sizeof v || output_size < sizeof v) return 1;
  memcpy(&v, inputs[0].data, sizeof v);
  v *= 2;
  memcpy(output, &v, sizeof v);
  return 0;
}

int main(void) {
  mmsb_runtime* rt;
  mmsb_page_id a, twice;
  mmsb_txn* txn;
  int64_t v = 21, out = 0;
  if (mmsb_runtime_create(&rt) != MMSB_OK || mmsb_page_create(rt, 8, &a) != MMSB_OK ||
      mmsb_page_create(rt, 8, &twice) != MMSB_OK || mmsb_derive_map(rt, twice, &a, 1, double_it, NULL) != MMSB_OK ||
      mmsb_txn_begin(rt, &txn) != MMSB_OK || mmsb_txn_write(txn, a, 0, &v, sizeof v) != MMSB_OK ||
      mmsb_txn_commit(txn, NULL) != MMSB_OK || mmsb_page_read(rt, twice, 0, &out, sizeof out) != MMSB_OK) {
    fprintf(stderr, "consumer_c: %s\n", mmsb_last_error());
    return 1;
  }
  printf("consumer_c %s (headers %s) page %llu holds %lld\n", mmsb_version(), MMSB_VERSION_STRING,
         (unsigned long long)twice, (long long)out);
  mmsb_runtime_destroy(rt);
  return out == 42 && strcmp(mmsb_version(), MMSB_VERSION_STRING) == 0 ? 0 : 1;
}
