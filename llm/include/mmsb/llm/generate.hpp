// mmsb/llm/generate.hpp — the generation loop shared by mmsb-llm and the tests.
//
// As llama2.c runs it: position 0 takes BOS; while the prompt lasts, the next token is the prompt's (its piece is
// printed), then it is sampled; a sampled BOS or EOS ends the run without being printed. The prompt goes through
// Engine::prompt() (batched waves; the same logits as one step per token), then each generated position is one
// Engine::step() (one wave). `on_text` receives the printed bytes piece by piece, as they are known.
//
// Thread-safety: as Engine and Sampler: one thread at a time.
#pragma once

#include <functional>
#include <string_view>
#include <vector>

#include "mmsb/llm/engine.hpp"
#include "mmsb/llm/sampler.hpp"
#include "mmsb/llm/tokenizer.hpp"

namespace mmsb::llm {

struct GenerateResult {
  std::vector<int> prompt_ids;      // BOS included
  std::vector<int> generated_ids;   // sampled tokens (a final BOS/EOS not included)
  bool stopped_on_special = false;  // the model emitted BOS or EOS
  double prompt_seconds = 0;        // the prompt's waves (its last position's logits included)
  double generate_seconds = 0;      // steps whose output was sampled
};

// Generates up to `max_new_tokens` tokens after `prompt` (fewer when the context fills up or the model stops).
// Throws Error(InvalidArgument) when the prompt alone does not fit the context.
GenerateResult generate(Engine& engine, const Tokenizer& tokenizer, Sampler& sampler, std::string_view prompt,
                        int max_new_tokens, const std::function<void(std::string_view)>& on_text);

}  // namespace mmsb::llm
