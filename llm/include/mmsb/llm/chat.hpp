// mmsb/llm/chat.hpp — a conversation over one Engine: each turn continues the sequence where the last
// one stopped, so the KV cache of earlier turns is reused and their positions are never computed again.
//
// A turn feeds the token the previous turn sampled last (it was printed but not yet run through the model), then
// the user's text (the first turn with BOS; later turns without, keeping the tokenizer's leading space as the
// separator), then samples up to `max_new_tokens` tokens, streaming each piece to `on_text`. A sampled BOS or EOS
// ends the turn and is dropped from the conversation. The conversation is therefore exactly one token sequence
// (history()), and a turn gives the tokens one generation over that whole sequence would give.
//
//   mmsb::llm::ChatSession chat(engine, tokenizer, sampler);
//   chat.turn("Once upon a time", 32, print);
//   chat.turn("The end.", 32, print);          // positions of the first turn are not recomputed
//
// Thread-safety: one thread at a time, like the Engine; the Engine, Tokenizer and Sampler must outlive it.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string_view>
#include <vector>

#include "mmsb/llm/engine.hpp"
#include "mmsb/llm/sampler.hpp"
#include "mmsb/llm/tokenizer.hpp"

namespace mmsb::llm {

struct TurnResult {
  std::vector<int> input_ids;      // tokens this turn fed before sampling (the pending token, then the text)
  std::vector<int> generated_ids;  // sampled tokens (a final BOS/EOS not included)
  bool stopped_on_special = false;
  bool context_full = false;  // stopped because the KV cache is full
  std::uint64_t steps = 0;    // new positions computed
  std::uint64_t waves = 0;    // waves this turn ran: the input in batched waves (Engine::prompt), then one a token
};

class ChatSession {
 public:
  ChatSession(Engine& engine, const Tokenizer& tokenizer, Sampler& sampler);

  // Runs one turn. Throws Error(InvalidArgument) when the turn's input does not fit the remaining context (the
  // conversation is then unchanged; reset() starts over).
  TurnResult turn(std::string_view text, int max_new_tokens, const std::function<void(std::string_view)>& on_text);
  // Forgets the conversation; the next turn starts at position 0 with BOS.
  void reset() noexcept;

  // Tokens whose positions are in the KV cache, in order (position i holds history()[i]).
  const std::vector<int>& history() const noexcept { return history_; }
  std::optional<int> pending() const noexcept { return pending_; }
  std::uint64_t total_steps() const noexcept { return total_steps_; }

 private:
  Engine& engine_;
  const Tokenizer& tokenizer_;
  Sampler& sampler_;
  std::vector<int> history_;
  std::optional<int> pending_;  // sampled last, printed, not yet fed
  std::uint64_t total_steps_ = 0;
};

}  // namespace mmsb::llm
