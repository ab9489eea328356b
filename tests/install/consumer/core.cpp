// Uses the installed core component alone: pages, an atomic transaction, its delta, and undoing it.
#include <cstdint>
#include <cstdio>

#include <mmsb/delta.hpp>
#include <mmsb/runtime.hpp>
#include <mmsb/version.hpp>

int main() {
  mmsb::Runtime rt;
  auto page = rt.create_page(64);
  auto txn = rt.begin();
  txn.write_value<std::int64_t>(page, 8, 7);
  txn.commit();
  const mmsb::Delta undo = mmsb::invert(txn.committed_deltas()[0]);
  auto back = rt.begin();
  back.apply(undo);
  back.commit();
  const std::int64_t value = rt.read_value<std::int64_t>(page, 8);
  std::printf("core %s: value %lld, epoch %llu\n", mmsb::library_version(), static_cast<long long>(value),
              static_cast<unsigned long long>(rt.info(page).epoch));
  return value == 0 && rt.info(page).epoch == 2 ? 0 : 1;
}
