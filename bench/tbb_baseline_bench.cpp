// Raw oneTBB baselines for the propagation metrics: the same workload as bench/propagation_bench.cpp written
// directly against tbb::flow::graph, with plain arrays instead of pages. Each workload checks its own result.
#include <benchmark/benchmark.h>
#include <oneapi/tbb/flow_graph.h>

#include <cstdint>
#include <cstring>
#include <memory>
#include <stdexcept>
#include <vector>

#include "bench/harness.hpp"
#include "bench/tbb_chain.hpp"

namespace mmsb::bench {
namespace {

namespace flow = oneapi::tbb::flow;

constexpr std::size_t kChain = 1000;

Register tbb_hop("tbb_hop_ns",
                 "baseline: raw tbb::flow chain of 1000 continue_nodes each copying 8 bytes from the previous "
                 "node's slot; time per wave / 1000",
                 [] {
                   flow::graph g;
                   // slots[0] is the source; node i copies slots[i] into slots[i + 1].
                   std::vector<std::uint64_t> slots(kChain + 1, 0);
                   std::vector<std::unique_ptr<flow::continue_node<flow::continue_msg>>> nodes;
                   nodes.reserve(kChain);
                   for (std::size_t i = 0; i < kChain; ++i) {
                     nodes.push_back(std::make_unique<flow::continue_node<flow::continue_msg>>(
                         g, [&slots, i](const flow::continue_msg&) {
                           std::memcpy(&slots[i + 1], &slots[i], sizeof(std::uint64_t));
                           return flow::continue_msg{};
                         }));
                     if (i > 0) flow::make_edge(*nodes[i - 1], *nodes[i]);
                   }
                   std::uint64_t value = 0;
                   auto wave = [&] {
                     slots[0] = ++value;
                     nodes.front()->try_put(flow::continue_msg{});
                     g.wait_for_all();
                   };
                   wave();
                   if (slots[kChain] != value) throw std::runtime_error("tbb_hop_ns: the chain's end was not updated");
                   const double ns = ns_per_op([&] {
                     wave();
                     benchmark::DoNotOptimize(slots.data());
                   });
                   if (slots[kChain] != value) throw std::runtime_error("tbb_hop_ns: the chain's end is stale");
                   return ns / static_cast<double>(kChain);
                 });

}  // namespace

struct TbbChain::Impl {
  flow::graph g;
  std::vector<std::uint64_t> slots;  // slots[0] is the source; node i copies slots[i] into slots[i + 1]
  std::vector<std::unique_ptr<flow::continue_node<flow::continue_msg>>> nodes;
};

TbbChain::TbbChain(std::size_t length) : impl_(std::make_unique<Impl>()) {
  impl_->slots.assign(length + 1, 0);
  impl_->nodes.reserve(length);
  std::vector<std::uint64_t>& slots = impl_->slots;
  for (std::size_t i = 0; i < length; ++i) {
    impl_->nodes.push_back(
        std::make_unique<flow::continue_node<flow::continue_msg>>(impl_->g, [&slots, i](const flow::continue_msg&) {
          std::memcpy(&slots[i + 1], &slots[i], sizeof(std::uint64_t));
          return flow::continue_msg{};
        }));
    if (i > 0) flow::make_edge(*impl_->nodes[i - 1], *impl_->nodes[i]);
  }
}

TbbChain::~TbbChain() = default;

void TbbChain::wave(std::uint64_t value) {
  impl_->slots[0] = value;
  impl_->nodes.front()->try_put(flow::continue_msg{});
  impl_->g.wait_for_all();
  benchmark::DoNotOptimize(impl_->slots.data());
}

std::uint64_t TbbChain::last() const { return impl_->slots.back(); }

}  // namespace mmsb::bench
