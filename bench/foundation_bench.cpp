// Foundation metrics: allocator, diff/apply against memcmp/memcpy, single-thread commit rate.
// Each workload checks its own result once before it is timed.
#include <benchmark/benchmark.h>

#include <cstdlib>
#include <cstring>
#include <random>
#include <stdexcept>
#include <vector>

#include "bench/harness.hpp"
#include "mmsb/mmsb.hpp"
#include "runtime/page_allocator.hpp"

namespace mmsb::bench {
namespace {

constexpr std::size_t kPage = 4096;

// Two 4 KiB pages that differ in ~1% of their bytes (41 bytes in 4 scattered places), deterministic.
struct SparsePair {
  std::vector<std::byte> old_page, new_page;
  SparsePair() : old_page(kPage), new_page(kPage) {
    std::mt19937 rng(42);
    for (auto& b : old_page) b = static_cast<std::byte>(rng());
    new_page = old_page;
    const std::size_t places[] = {300, 1500, 2600, 3900};
    const std::size_t lengths[] = {10, 10, 10, 11};
    for (int i = 0; i < 4; ++i)
      for (std::size_t k = 0; k < lengths[i]; ++k) new_page[places[i] + k] ^= std::byte{0x5A};
  }
};

[[noreturn]] void check_failed(const char* what) { throw std::runtime_error(what); }

Register alloc_free("alloc_free_4k_ns", "mmsb page allocator: allocate + free one 4 KiB block (uninitialized)", [] {
  auto& allocator = detail::PageAllocator::global();
  return ns_per_op([&] {
    detail::Block b = allocator.allocate(kPage, detail::Zeroing::Uninitialized);
    benchmark::DoNotOptimize(b.data);
    allocator.deallocate(b.data, b.capacity);
  });
});

Register malloc_free("malloc_free_4k_ns", "baseline: glibc malloc + free of 4 KiB", [] {
  return ns_per_op([] {
    void* p = std::malloc(kPage);
    benchmark::DoNotOptimize(p);
    std::free(p);
  });
});

Register memcmp_4k("memcmp_4k_ns", "baseline: memcmp of two identical 4 KiB pages", [] {
  static SparsePair pair;
  std::vector<std::byte> copy = pair.old_page;
  return ns_per_op([&] {
    benchmark::DoNotOptimize(copy.data());
    int r = std::memcmp(pair.old_page.data(), copy.data(), kPage);
    benchmark::DoNotOptimize(r);
  });
});

Register memcpy_4k("memcpy_4k_ns", "baseline: memcpy of 4 KiB", [] {
  static SparsePair pair;
  std::vector<std::byte> dst(kPage);
  return ns_per_op([&] {
    std::memcpy(dst.data(), pair.new_page.data(), kPage);
    benchmark::ClobberMemory();
  });
});

Register diff_sparse("diff_4k_1pct_ns", "diff of a 4 KiB page with ~1% of bytes changed in 4 places (reused Delta)",
                     [] {
                       static SparsePair pair;
                       Delta d;
                       diff_into(pair.old_page, pair.new_page, d);
                       if (d.ranges.size() != 4 || d.changed_bytes() != 41)
                         check_failed("diff_4k_1pct: unexpected delta");
                       return ns_per_op([&] {
                         diff_into(pair.old_page, pair.new_page, d);
                         benchmark::DoNotOptimize(d.ranges.data());
                       });
                     });

Register diff_identical("diff_4k_identical_ns", "diff of two identical 4 KiB pages", [] {
  static SparsePair pair;
  std::vector<std::byte> copy = pair.old_page;
  Delta d;
  diff_into(pair.old_page, copy, d);
  if (!d.ranges.empty()) check_failed("diff_4k_identical: delta is not empty");
  return ns_per_op([&] {
    benchmark::DoNotOptimize(copy.data());
    diff_into(pair.old_page, copy, d);
    benchmark::DoNotOptimize(d.ranges.data());
  });
});

Register apply_sparse("apply_4k_1pct_ns", "apply of the 1% delta to a 4 KiB page", [] {
  static SparsePair pair;
  Delta d = diff(pair.old_page, pair.new_page);
  std::vector<std::byte> page = pair.old_page;
  apply_ranges(d, page);
  if (page != pair.new_page) check_failed("apply_4k_1pct: page differs after apply");
  return ns_per_op([&] {
    apply_ranges(d, page);
    benchmark::ClobberMemory();
  });
});

Register commits_1t("commits_per_s_1t", "commits per second, one thread, 8-byte single-page transactions in memory",
                    [] {
                      Runtime rt;
                      std::vector<PageId> pages;
                      for (int i = 0; i < 64; ++i) pages.push_back(rt.create_page(kPage));
                      std::uint64_t i = 0;
                      double ns = ns_per_op([&] {
                        auto txn = rt.begin();
                        txn.write_value<std::uint64_t>(pages[i % pages.size()], (i * 8) % kPage, i);
                        txn.commit();
                        ++i;
                      });
                      const std::uint64_t last = i - 1;
                      if (rt.read_value<std::uint64_t>(pages[last % pages.size()], (last * 8) % kPage) != last)
                        check_failed("commits_per_s_1t: last commit not visible");
                      return 1e9 / ns;
                    });

Register diff_ratio(Ratio{"diff_4k_1pct_vs_memcmp_ratio", "diff_4k_1pct_ns", "memcmp_4k_ns",
                          "diff_4k_1pct_ns / memcmp_4k_ns (target <= 2)"});
Register apply_ratio(Ratio{"apply_4k_1pct_vs_memcpy_ratio", "apply_4k_1pct_ns", "memcpy_4k_ns",
                           "apply_4k_1pct_ns / memcpy_4k_ns (target <= 1)"});
Register alloc_ratio(Ratio{"alloc_free_4k_vs_malloc_ratio", "alloc_free_4k_ns", "malloc_free_4k_ns",
                           "alloc_free_4k_ns / malloc_free_4k_ns"});

}  // namespace
}  // namespace mmsb::bench
