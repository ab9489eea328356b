#include "mmsb/llm/generate.hpp"

#include <chrono>
#include <span>
#include <string>
#include <vector>

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
  const std::vector<int>& ids = result.prompt_ids;
  auto phase_start = clock::now();
  auto print_prompt = [&] {
    if (!on_text) return;
    for (int i = 0; i + 1 < n_prompt; ++i) on_text(tokenizer.decode(ids[i], ids[static_cast<std::size_t>(i) + 1]));
  };
  if (max_new_tokens < 1) {  // the prompt's positions but the last, no logits
    engine.prefill(std::span<const int>(ids).first(static_cast<std::size_t>(n_prompt) - 1), 0);
    print_prompt();
    result.prompt_seconds = std::chrono::duration<double>(clock::now() - phase_start).count();
    return result;
  }
  // The whole prompt in batched waves; the last wave's logits are the first sampled position's.
  std::span<const float> logits = engine.prompt(ids, 0);
  auto now = clock::now();
  result.prompt_seconds = std::chrono::duration<double>(now - phase_start).count();
  phase_start = now;
  print_prompt();
  int token = ids.back();
  for (int pos = n_prompt - 1;;) {
    const int next = sampler.sample(logits);
    if (next == tokenizer.bos() || next == tokenizer.eos()) {
      result.stopped_on_special = true;
      break;
    }
    result.generated_ids.push_back(next);
    if (on_text) on_text(tokenizer.decode(token, next));
    token = next;
    if (static_cast<int>(result.generated_ids.size()) >= max_new_tokens || ++pos >= seq_len) break;
    logits = engine.step(token, pos);
  }
  result.generate_seconds = std::chrono::duration<double>(clock::now() - phase_start).count();
  return result;
}

}  // namespace mmsb::llm
