// mmsb/llm/throughput.hpp — prompt-processing and generation speed, for `mmsb-llm bench` and
// mmsb-bench's llm_* metrics.
//
// Prompt processing feeds `n_prompt` fixed tokens (BOS first), in batched waves or one step each; generation then
// feeds back the greedy choice for `n_gen` steps (one wave each). The same workload runs on the Engine or on
// DirectModel (the same maths in a plain loop), so the two figures compare the runtime's overhead and nothing else.
//
// Thread-safety: each call builds its own engine; calls may run concurrently on a shared Model.
#pragma once

#include <cstdint>
#include <vector>

#include "mmsb/llm/engine.hpp"
#include "mmsb/llm/layer_pager.hpp"
#include "mmsb/llm/model.hpp"

namespace mmsb::llm {

struct Throughput {
  double prompt_tok_per_s = 0;
  double tok_per_s = 0;
  std::uint64_t checksum = 0;  // the generated ids, hashed: both paths must agree
  PagerStats paging;           // with EngineOptions::paging: the pager's counters over every round
  // The same per second of this process's CPU time (all its threads) instead of wall-clock time: on a machine
  // shared with other work, time slices lost to other processes do not count. Equal to the wall-clock figures on
  // an idle machine with one thread; with several threads, spinning counts.
  double prompt_tok_per_cpu_s = 0;
  double tok_per_cpu_s = 0;
  std::uint64_t refilled_bytes = 0;  // with mapped paging: PagedModel::refilled_bytes() at the end
};

enum class ThroughputPath { Engine, Direct };

// Runs the workload `rounds` times on one engine (each round a new sequence from position 0) and reports the
// median round, so that a preemption in one round (a round of this model lasts ~10 ms, one scheduler slice) does
// not decide the figure. Throws Error(InvalidArgument) when n_prompt + n_gen exceeds the context or either is < 1.
// batched_prompt: the prompt goes through Engine::prefill() (batched waves of options.prefill_batch + 1 positions;
// the direct loop runs DirectModel::prefill() in chunks of the same size); false: one step per prompt token.
Throughput measure_throughput(const Model& model, ThroughputPath path, int n_prompt, int n_gen,
                              EngineOptions options = {}, int rounds = 1, bool batched_prompt = true);

}  // namespace mmsb::llm
