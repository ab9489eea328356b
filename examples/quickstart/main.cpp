// quickstart: pages, an atomic two-page transaction, the delta it recorded, and undoing it.
#include <cstdint>
#include <cstdio>
#include <mmsb/mmsb.hpp>
#include <optional>
#include <vector>

#include "program/main.hpp"

namespace {

int tour() {
  mmsb::Runtime rt;
  mmsb::PageId alice = rt.create_page(sizeof(std::int64_t));
  mmsb::PageId bob = rt.create_page(sizeof(std::int64_t));

  // Fund both accounts in one transaction: readers see both writes or neither.
  auto fund = rt.begin();
  fund.write_value<std::int64_t>(alice, 0, 100);
  fund.write_value<std::int64_t>(bob, 0, 50);
  fund.commit();

  // Move 30 from alice to bob, refusing to commit if either page changed since we read it.
  auto transfer = rt.begin();
  transfer.set_intent("transfer");
  transfer.expect_epoch(alice, rt.info(alice).epoch);
  transfer.expect_epoch(bob, rt.info(bob).epoch);
  transfer.write_value<std::int64_t>(alice, 0, rt.read_value<std::int64_t>(alice, 0) - 30);
  transfer.write_value<std::int64_t>(bob, 0, rt.read_value<std::int64_t>(bob, 0) + 30);
  std::uint64_t lsn = transfer.commit();

  std::printf("commit lsn %llu: alice=%lld bob=%lld\n", static_cast<unsigned long long>(lsn),
              static_cast<long long>(rt.read_value<std::int64_t>(alice, 0)),
              static_cast<long long>(rt.read_value<std::int64_t>(bob, 0)));
  for (const mmsb::Delta& d : transfer.committed_deltas()) {
    std::printf("  delta %s: epoch %llu -> %llu, %zu range(s), %llu byte(s) changed, intent '%s'\n",
                d.page.to_string().c_str(), static_cast<unsigned long long>(d.base_epoch),
                static_cast<unsigned long long>(d.target_epoch()), d.ranges.size(),
                static_cast<unsigned long long>(d.changed_bytes()), d.intent.c_str());
  }

  // Undo the transfer by committing the inverse deltas (epochs keep moving forward).
  auto undo = rt.begin();
  undo.set_intent("undo transfer");
  for (const mmsb::Delta& d : transfer.committed_deltas()) undo.apply(mmsb::invert(d));
  undo.commit();
  std::int64_t a = rt.read_value<std::int64_t>(alice, 0), b = rt.read_value<std::int64_t>(bob, 0);
  std::printf("after undo: alice=%lld bob=%lld (epochs %llu, %llu)\n", static_cast<long long>(a),
              static_cast<long long>(b), static_cast<unsigned long long>(rt.info(alice).epoch),
              static_cast<unsigned long long>(rt.info(bob).epoch));
  std::printf("restored: %s\n", a == 100 && b == 50 ? "yes" : "NO");
  return a == 100 && b == 50 ? 0 : 1;
}

}  // namespace

// Any exception (none is expected here) becomes one line on stderr and exit code 1.
int main(int argc, char** argv) {
  if (const std::optional<int> code = mmsb::program::no_options("quickstart", argc, argv)) return *code;
  return mmsb::program::guard("quickstart", tour);
}
