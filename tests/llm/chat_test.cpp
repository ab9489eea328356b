// Chat mode (llm/include/mmsb/llm/chat.hpp): turns continue one sequence in the KV cache, and a later turn gives
// the tokens of one generation over the whole conversation without recomputing earlier positions.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "llm/llm_test_support.hpp"
#include "mmsb/error.hpp"
#include "mmsb/llm/chat.hpp"
#include "mmsb/llm/engine.hpp"
#include "mmsb/llm/model.hpp"
#include "mmsb/llm/sampler.hpp"
#include "mmsb/llm/tokenizer.hpp"

namespace mmsb::llm {
namespace {

// Greedy generation over a given token sequence on a fresh engine: prefill all but the last, then sample `n`.
std::vector<int> one_generation(const Model& model, const std::vector<int>& tokens, int n, int stop_a, int stop_b) {
  Engine engine(model);
  int pos = 0;
  for (std::size_t i = 0; i + 1 < tokens.size(); ++i) engine.prefill_step(tokens[i], pos++);
  std::vector<int> out;
  int token = tokens.back();
  while (static_cast<int>(out.size()) < n) {
    int next = argmax(engine.step(token, pos++));
    if (next == stop_a || next == stop_b) break;
    out.push_back(next);
    token = next;
  }
  return out;
}

TEST(Chat, SecondTurnEqualsOneGenerationOverTheConversationAndComputesOnlyNewPositions) {
  MMSB_REQUIRE_SHARED(path, "models/stories260K-f32.gguf");
  Model model = load_model(path);
  Tokenizer tok(model.vocabulary.value());
  Engine engine(model);
  Sampler sampler({});
  ChatSession chat(engine, tok, sampler);
  std::string streamed;
  TurnResult t1 = chat.turn("Once upon a time", 20, [&](std::string_view s) { streamed += s; });
  ASSERT_EQ(t1.generated_ids.size(), 20u);
  EXPECT_EQ(t1.input_ids, tok.encode("Once upon a time"));
  EXPECT_EQ(t1.steps, t1.input_ids.size() + t1.generated_ids.size() - 1);  // the last sampled token is pending
  EXPECT_FALSE(streamed.empty());
  const std::vector<int> after_turn1 = chat.history();

  const std::uint64_t waves_before = engine.propagator().stats().waves;
  TurnResult t2 = chat.turn("The little dog", 15, nullptr);
  const std::uint64_t waves = engine.propagator().stats().waves - waves_before;
  // The input is the pending token, then the text without BOS; nothing of turn 1 is computed again.
  std::vector<int> expected_input = {t1.generated_ids.back()};
  std::vector<int> text = tok.encode("The little dog");
  expected_input.insert(expected_input.end(), text.begin() + 1, text.end());
  EXPECT_EQ(t2.input_ids, expected_input);
  EXPECT_EQ(waves, t2.waves);
  // The input goes in one batched wave (it is shorter than a batch), then one wave per further sampled token.
  ASSERT_LT(t2.input_ids.size(), 65u);
  EXPECT_EQ(t2.waves, t2.generated_ids.size() + (t2.stopped_on_special ? 1 : 0));
  EXPECT_EQ(t2.steps, t2.input_ids.size() + t2.generated_ids.size() - (t2.stopped_on_special ? 0 : 1));
  EXPECT_EQ(chat.total_steps(), chat.history().size()) << "every position was computed exactly once";
  ASSERT_EQ(std::vector<int>(chat.history().begin(), chat.history().begin() + after_turn1.size()), after_turn1);

  // One generation over the concatenated conversation gives the same tokens.
  std::vector<int> conversation = after_turn1;
  conversation.insert(conversation.end(), t2.input_ids.begin(), t2.input_ids.end());
  EXPECT_EQ(one_generation(model, conversation, 15, tok.bos(), tok.eos()), t2.generated_ids);
  ASSERT_FALSE(t2.generated_ids.empty());
}

TEST(Chat, ATurnThatDoesNotFitLeavesTheConversationUnchangedAndResetStartsOver) {
  MMSB_REQUIRE_SHARED(path, "models/stories260K-f32.gguf");
  LoadOptions small;
  small.context_length = 24;
  Model model = load_model(path, small);
  Tokenizer tok(model.vocabulary.value());
  Engine engine(model);
  Sampler sampler({});
  ChatSession chat(engine, tok, sampler);
  TurnResult t1 = chat.turn("Once upon a time", 100, nullptr);
  EXPECT_TRUE(t1.context_full || t1.stopped_on_special);
  const auto history = chat.history();
  try {
    chat.turn("there was a very long sentence that cannot fit", 4, nullptr);
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::InvalidArgument);
    EXPECT_NE(std::string(e.what()).find("/reset"), std::string::npos) << e.what();
  }
  EXPECT_EQ(chat.history(), history);
  chat.reset();
  TurnResult again = chat.turn("Once upon a time", 100, nullptr);
  EXPECT_EQ(again.generated_ids, t1.generated_ids);  // a new conversation from position 0
}

}  // namespace
}  // namespace mmsb::llm
