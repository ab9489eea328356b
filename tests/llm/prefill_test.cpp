// Batched prefill (Engine::prompt / prefill, DirectModel::prefill): a prompt fed in batched waves leaves the same
// KV cache and gives the same logits, bit for bit, as one wave per token — on f32 and quantized models, for batch
// sizes that split the prompt unevenly, for a continuation at a later position, and on the direct loop. Paged
// engines fall back to one wave per token; bad tokens and positions are refused before anything runs.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <optional>
#include <string>
#include <vector>

#include "llm/llm_test_support.hpp"
#include "mmsb/error.hpp"
#include "mmsb/llm/engine.hpp"
#include "mmsb/llm/forward.hpp"
#include "mmsb/llm/kernels.hpp"
#include "mmsb/llm/model.hpp"
#include "mmsb/llm/paged_model.hpp"
#include "mmsb/llm/sampler.hpp"

namespace mmsb::llm {
namespace {

constexpr int kGenerated = 12;

std::vector<int> prompt_ids(const ModelConfig& c, int n, int salt) {
  std::vector<int> ids{1};
  for (int i = 1; i < n; ++i) ids.push_back(static_cast<int>((static_cast<unsigned>(i) * 7919u + salt) % c.vocab_size));
  return ids;
}

struct Generation {
  std::vector<float> logits;  // the last prompt position's, then every generated step's
  std::vector<int> tokens;
};

// Feeds `prompt` at position 0 (batched or token by token), then generates greedily.
Generation run(Engine& engine, const std::vector<int>& prompt, bool batched) {
  Generation r;
  std::span<const float> logits;
  if (batched) {
    logits = engine.prompt(prompt, 0);
  } else {
    for (std::size_t i = 0; i + 1 < prompt.size(); ++i) engine.prefill_step(prompt[i], static_cast<int>(i));
    logits = engine.step(prompt.back(), static_cast<int>(prompt.size()) - 1);
  }
  int pos = static_cast<int>(prompt.size());
  for (int i = 0; i < kGenerated; ++i) {
    r.logits.insert(r.logits.end(), logits.begin(), logits.end());
    const int next = argmax(logits);
    r.tokens.push_back(next);
    logits = engine.step(next, pos++);
  }
  return r;
}

void expect_identical(const Generation& a, const Generation& b, const std::string& what) {
  EXPECT_EQ(a.tokens, b.tokens) << what;
  ASSERT_EQ(a.logits.size(), b.logits.size()) << what;
  EXPECT_EQ(std::memcmp(a.logits.data(), b.logits.data(), a.logits.size() * sizeof(float)), 0)
      << what << ": logits differ (first: " << a.logits[0] << " vs " << b.logits[0] << ")";
}

class PrefillModels : public ::testing::TestWithParam<std::string> {};

TEST_P(PrefillModels, BatchedWavesEqualOneWavePerToken) {
  MMSB_REQUIRE_SHARED(path, "models/" + GetParam());
  const Model model = load_model(path);
  const std::vector<int> prompt = prompt_ids(model.config, 100, 3);
  Engine reference(model, EngineOptions{});
  const Generation expected = run(reference, prompt, false);
  for (unsigned batch : {64u, 7u, 1u, 0u, 100000u}) {  // the last: capped at seq_len, one wave
    EngineOptions o;
    o.prefill_batch = batch;
    Engine engine(model, o);
    EXPECT_EQ(engine.batched_prefill(), batch > 0);
    const std::uint64_t before = engine.waves();
    const std::span<const float> last = engine.prompt(prompt, 0);
    const std::uint64_t per_wave = batch + 1;
    EXPECT_EQ(engine.waves() - before, (prompt.size() + per_wave - 1) / per_wave) << "batch " << batch;
    ASSERT_EQ(std::memcmp(last.data(), expected.logits.data(), last.size_bytes()), 0) << "batch " << batch;
    // The whole generation after it, from a fresh sequence on the same engine.
    expect_identical(run(engine, prompt, true), expected, GetParam() + ", batch " + std::to_string(batch));
  }
}

TEST_P(PrefillModels, ContinuationAtALaterPositionAndPrefillWithoutLogits) {
  MMSB_REQUIRE_SHARED(path, "models/" + GetParam());
  const Model model = load_model(path);
  const std::vector<int> first = prompt_ids(model.config, 40, 5), second = prompt_ids(model.config, 70, 11);
  auto go = [&](Engine& e, bool batched) {
    std::vector<float> out;
    if (batched) {
      e.prefill(first, 0);
    } else {
      for (std::size_t i = 0; i < first.size(); ++i) e.prefill_step(first[i], static_cast<int>(i));
    }
    const int pos = static_cast<int>(first.size());
    std::span<const float> l;
    if (batched) {
      l = e.prompt(second, pos);
    } else {
      for (std::size_t i = 0; i + 1 < second.size(); ++i) e.prefill_step(second[i], pos + static_cast<int>(i));
      l = e.step(second.back(), pos + static_cast<int>(second.size()) - 1);
    }
    out.assign(l.begin(), l.end());
    l = e.step(argmax(l), pos + static_cast<int>(second.size()));
    out.insert(out.end(), l.begin(), l.end());
    return out;
  };
  Engine a(model, EngineOptions{});
  EngineOptions small;
  small.prefill_batch = 16;
  Engine b(model, small);
  const std::vector<float> want = go(a, false), got = go(b, true);
  ASSERT_EQ(want.size(), got.size());
  EXPECT_EQ(std::memcmp(want.data(), got.data(), want.size() * sizeof(float)), 0);
}

TEST_P(PrefillModels, DirectLoopPrefillEqualsItsSteps) {
  MMSB_REQUIRE_SHARED(path, "models/" + GetParam());
  const Model model = load_model(path);
  const std::vector<int> prompt = prompt_ids(model.config, 90, 7);
  const std::vector<std::int32_t> ids(prompt.begin(), prompt.end());
  DirectModel steps(model, kernels()), batched(model, kernels());
  for (std::size_t i = 0; i < ids.size(); ++i) steps.step(ids[i], static_cast<int>(i), false);
  batched.prefill(ids, 0, 32);
  const int pos = static_cast<int>(ids.size());
  const float* a = steps.step(3, pos);
  std::vector<float> want(a, a + model.config.vocab_size);
  const float* b = batched.step(3, pos);
  EXPECT_EQ(std::memcmp(want.data(), b, want.size() * sizeof(float)), 0);
  // And the engine's batched prompt agrees with both.
  Engine engine(model, EngineOptions{});
  engine.prefill(prompt, 0);
  const std::span<const float> c = engine.step(3, pos);
  EXPECT_EQ(std::memcmp(want.data(), c.data(), c.size_bytes()), 0);
}

INSTANTIATE_TEST_SUITE_P(Models, PrefillModels,
                         ::testing::Values("stories260K-f32.gguf", "stories260K-Q8_0.gguf", "stories260K-Q4_0.gguf",
                                           "stories260K-Q4_K_M.gguf"),
                         [](const auto& param_info) {
                           std::string n = param_info.param.substr(12, param_info.param.size() - 12 - 5);
                           for (char& ch : n) {
                             if (ch == '-' || ch == '.') ch = '_';
                           }
                           return n;
                         });

TEST(Prefill, PagedEngineFallsBackToOneWavePerTokenWithTheSameResult) {
  MMSB_REQUIRE_SHARED(path, "models/stories260K-f32.gguf");
  const Model model = load_model(path);
  const std::vector<int> prompt = prompt_ids(model.config, 30, 1);
  EngineOptions paged;
  paged.paging = PagingOptions{};
  paged.paging->budget = PagedModel::model_bytes(model) / 2;
  Engine a(model, paged), b(model, EngineOptions{});
  EXPECT_FALSE(a.batched_prefill());
  const std::vector<float> want(a.prompt(prompt, 0).begin(), a.prompt(prompt, 0).end());
  EXPECT_EQ(a.waves(), 2 * prompt.size());
  const std::span<const float> got = b.prompt(prompt, 0);
  EXPECT_EQ(std::memcmp(want.data(), got.data(), got.size_bytes()), 0);
}

TEST(Prefill, BadTokensAndPositionsAreRefusedBeforeAnyWave) {
  MMSB_REQUIRE_SHARED(path, "models/stories260K-f32.gguf");
  const Model model = load_model(path);
  Engine engine(model, EngineOptions{});
  const int vocab = static_cast<int>(model.config.vocab_size), seq = static_cast<int>(model.config.seq_len);
  EXPECT_THROW(engine.prompt(std::vector<int>{1, vocab, 2}, 0), Error);
  EXPECT_THROW(engine.prompt(std::vector<int>{1, -1}, 0), Error);
  EXPECT_THROW(engine.prompt(std::vector<int>(3, 1), seq - 2), Error);
  EXPECT_THROW(engine.prompt(std::vector<int>{}, 0), Error);
  EXPECT_THROW(engine.prefill(std::vector<int>{1}, -1), Error);
  EXPECT_EQ(engine.waves(), 0u);
  EXPECT_NO_THROW(engine.prompt(std::vector<int>(3, 1), seq - 3));  // exactly filling the context
}

}  // namespace
}  // namespace mmsb::llm
