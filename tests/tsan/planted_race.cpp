// A deliberately racy program for the ThreadSanitizer build: it checks that the TSan suppressions
// (tests/tsan.supp) hide only oneTBB's own internals, not races in mmsb's flow-graph use. ctest runs it and
// passes when TSan reports the planted race (tests/tsan/CMakeLists.txt); it is never part of the normal suite.
//
//   planted_race body         two map nodes of one parallel wave increment a plain global counter: a race
//                             between two node bodies
//   planted_race bookkeeping  a clean graph; linked against a copy of the Propagator whose per-task bookkeeping
//                             (add_tally, run by each flow-graph task) also adds to a plain global counter
//   planted_race none         the same graph with an atomic counter: no report, so the race above is the plant
//
// Every wave reaches more nodes than PropagatorOptions::inline_node_limit, so it runs on the TBB flow graph with
// two worker threads, as real waves do.
#include <atomic>
#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

#include "mmsb/mmsb.hpp"

namespace {

std::uint64_t planted_body_counter = 0;  // written by node bodies without synchronisation (mode "body")
std::atomic<std::uint64_t> clean_counter{0};

int run(const std::string& mode) {
  mmsb::Runtime rt;
  mmsb::PropagatorOptions options;
  options.threads = 2;
  options.inline_node_limit = 1;  // every wave on the flow graph
  mmsb::Propagator prop(rt, options);
  const mmsb::PageId source = rt.create_page(sizeof(std::uint64_t));
  const bool racy_body = mode == "body";
  for (int i = 0; i < 64; ++i) {
    const mmsb::PageId out = rt.create_page(sizeof(std::uint64_t));
    prop.derive_map(out, {source}, [racy_body](mmsb::MapContext& c) {
      if (racy_body) {
        ++planted_body_counter;  // the planted race
      } else {
        clean_counter.fetch_add(1, std::memory_order_relaxed);
      }
      c.output_as<std::uint64_t>() = c.input_as<std::uint64_t>(0) + 1;
    });
  }
  for (std::uint64_t wave = 1; wave <= 200; ++wave) {
    auto txn = rt.begin();
    txn.write_value<std::uint64_t>(source, 0, wave);
    txn.commit();
  }
  std::printf("planted_race %s: %llu node runs\n", mode.c_str(),
              static_cast<unsigned long long>(racy_body ? planted_body_counter : clean_counter.load()));
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  const std::string mode = argc > 1 ? argv[1] : "";
  if (mode != "body" && mode != "bookkeeping" && mode != "none") {
    std::fprintf(stderr, "usage: planted_race body|bookkeeping|none\n");
    return 2;
  }
  return run(mode);
}
