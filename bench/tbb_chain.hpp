// bench/tbb_chain.hpp — the tbb_hop_ns workload as an object: a raw tbb::flow chain of continue_nodes, each copying
// 8 bytes from the previous node's slot, for metrics that time it beside mmsb in one process (hop_vs_tbb_paired_ratio).
//
// Thread-safety: none; one wave at a time.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>

namespace mmsb::bench {

class TbbChain {
 public:
  explicit TbbChain(std::size_t length);
  ~TbbChain();
  TbbChain(const TbbChain&) = delete;
  TbbChain& operator=(const TbbChain&) = delete;
  // Writes `value` into the source slot, runs the chain and waits for it.
  void wave(std::uint64_t value);
  // The last node's slot: `value` of the last wave once the chain is correct.
  std::uint64_t last() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace mmsb::bench
