/* Uses the installed C ABI. */
#include <mmsb/mmsb.h>
#include <stdio.h>

int main(void) {
  mmsb_runtime* rt;
  mmsb_page_id page;
  if (mmsb_runtime_create(&rt) != MMSB_OK || mmsb_page_create(rt, 16, &page) != MMSB_OK) {
    fprintf(stderr, "consumer_c: %s\n", mmsb_last_error());
    return 1;
  }
  printf("consumer_c page %llu\n", (unsigned long long)page);
  mmsb_runtime_destroy(rt);
  return 0;
}
