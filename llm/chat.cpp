#include "mmsb/llm/chat.hpp"

#include <string>

#include "mmsb/error.hpp"

namespace mmsb::llm {

ChatSession::ChatSession(Engine& engine, const Tokenizer& tokenizer, Sampler& sampler)
    : engine_(engine), tokenizer_(tokenizer), sampler_(sampler) {}

void ChatSession::reset() noexcept {
  history_.clear();
  pending_.reset();
}

TurnResult ChatSession::turn(std::string_view text, int max_new_tokens,
                             const std::function<void(std::string_view)>& on_text) {
  if (max_new_tokens < 1) throw Error(ErrorCode::InvalidArgument, "a chat turn generates at least 1 token");
  TurnResult r;
  if (pending_) r.input_ids.push_back(*pending_);
  std::vector<int> ids = tokenizer_.encode(text);  // BOS first
  if (history_.empty() && !pending_) {
    r.input_ids = ids;
  } else {
    r.input_ids.insert(r.input_ids.end(), ids.begin() + 1, ids.end());
  }
  const std::size_t seq_len = engine_.config().seq_len;
  if (r.input_ids.empty()) return r;  // nothing to feed (an empty continuation after a stop)
  if (history_.size() + r.input_ids.size() > seq_len) {
    throw Error(ErrorCode::InvalidArgument, "this turn needs " + std::to_string(r.input_ids.size()) +
                                                " positions but only " + std::to_string(seq_len - history_.size()) +
                                                " of " + std::to_string(seq_len) +
                                                " are left; start a new conversation (/reset)");
  }
  pending_.reset();
  int pos = static_cast<int>(history_.size());
  const std::uint64_t waves_before = engine_.waves();
  std::span<const float> logits = engine_.prompt(r.input_ids, pos);  // every input position, batched
  history_.insert(history_.end(), r.input_ids.begin(), r.input_ids.end());
  pos += static_cast<int>(r.input_ids.size());
  r.steps += r.input_ids.size();
  int token = r.input_ids.back();
  for (;;) {
    const int next = sampler_.sample(logits);
    if (next == tokenizer_.bos() || next == tokenizer_.eos()) {
      r.stopped_on_special = true;
      break;
    }
    if (on_text) on_text(tokenizer_.decode(token, next));
    r.generated_ids.push_back(next);
    if (static_cast<int>(r.generated_ids.size()) >= max_new_tokens) {
      pending_ = next;
      break;
    }
    if (static_cast<std::size_t>(pos) >= seq_len) {
      r.context_full = true;
      pending_ = next;
      break;
    }
    token = next;
    logits = engine_.step(token, pos++);
    history_.push_back(token);
    ++r.steps;
  }
  r.waves = engine_.waves() - waves_before;
  total_steps_ += r.steps;
  return r;
}

}  // namespace mmsb::llm
