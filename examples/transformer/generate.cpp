#include "examples/transformer/generate.hpp"

#include <chrono>
#include <string>

#include "mmsb/error.hpp"

namespace mmsb::llm {

GenerateResult generate(Engine& engine, const Tokenizer& tokenizer, Sampler& sampler, std::string_view prompt,
                        int max_new_tokens, const std::function<void(std::string_view)>& on_text) {
  using clock = std::chrono::steady_clock;
  GenerateResult result;
  result.prompt_ids = tokenizer.encode(prompt);
  const int n_prompt = static_cast<int>(result.prompt_ids.size());
  const int seq_len = static_cast<int>(engine.config().seq_len);
  if (n_prompt > seq_len) {
    throw Error(ErrorCode::InvalidArgument, "the prompt is " + std::to_string(n_prompt) +
                                                " tokens (BOS included) but the context holds " +
                                                std::to_string(seq_len) + " positions");
  }
  int token = result.prompt_ids[0];
  auto phase_start = clock::now();
  for (int pos = 0; pos < seq_len; ++pos) {
    const bool in_prompt = pos < n_prompt - 1;
    if (!in_prompt && static_cast<int>(result.generated_ids.size()) >= max_new_tokens) break;
    int next;
    if (in_prompt) {
      engine.prefill_step(token, pos);
      next = result.prompt_ids[static_cast<std::size_t>(pos) + 1];
    } else {
      std::span<const float> logits = engine.step(token, pos);
      if (pos == n_prompt - 1) {  // the first sampled step: the prompt phase ended with the previous step
        auto now = clock::now();
        result.prompt_seconds = std::chrono::duration<double>(now - phase_start).count();
        phase_start = now;
      }
      next = sampler.sample(logits);
      if (next == tokenizer.bos() || next == tokenizer.eos()) {
        result.stopped_on_special = true;
        break;
      }
      result.generated_ids.push_back(next);
    }
    if (on_text) on_text(tokenizer.decode(token, next));
    token = next;
  }
  auto end = clock::now();
  if (result.generated_ids.empty() && !result.stopped_on_special) {
    result.prompt_seconds = std::chrono::duration<double>(end - phase_start).count();
  } else {
    result.generate_seconds = std::chrono::duration<double>(end - phase_start).count();
  }
  return result;
}

}  // namespace mmsb::llm
