// Reference outputs of two independent implementations (../shared/reference) and the tokenizer cases.
#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <vector>

#include "llm/llm_test_support.hpp"
#include "mmsb/llm/engine.hpp"
#include "mmsb/llm/forward.hpp"
#include "mmsb/llm/generate.hpp"
#include "mmsb/llm/model.hpp"
#include "mmsb/llm/sampler.hpp"
#include "mmsb/llm/tokenizer.hpp"

namespace mmsb::llm {
namespace {

using testing::load_json;

// Runs the prompt through the engine and returns the logits at its last position.
std::vector<float> last_prompt_logits(Engine& engine, const std::vector<int>& ids) {
  std::span<const float> logits;
  for (std::size_t pos = 0; pos < ids.size(); ++pos) logits = engine.step(ids[pos], static_cast<int>(pos));
  return {logits.begin(), logits.end()};
}

float max_abs_diff(const std::vector<float>& a, const nlohmann::json& b) {
  EXPECT_EQ(a.size(), b.size());
  float worst = 0;
  for (std::size_t i = 0; i < a.size() && i < b.size(); ++i)
    worst = std::max(worst, std::fabs(a[i] - b[i].get<float>()));
  return worst;
}

TEST(Tokenizer, EncodesEveryReferenceCaseWithTok512AndGgufVocabulary) {
  MMSB_REQUIRE_SHARED(cases_path, "reference/tokenizer_cases.json");
  MMSB_REQUIRE_SHARED(tok_path, "models/tok512.bin");
  MMSB_REQUIRE_SHARED(gguf_path, "models/stories260K-f32.gguf");
  auto cases = load_json(cases_path);
  Tokenizer from_bin(load_llama2c_tokenizer(tok_path, 512));
  Tokenizer from_gguf(load_model(gguf_path).vocabulary.value());
  ASSERT_FALSE(cases["cases"].empty());
  for (const auto& c : cases["cases"]) {
    const std::string text = c["text"];
    const auto expected = c["ids_with_bos"].get<std::vector<int>>();
    EXPECT_EQ(from_bin.encode(text), expected) << "text: " << text;
    EXPECT_EQ(from_gguf.encode(text), expected) << "text (GGUF vocabulary): " << text;
  }
}

TEST(Tokenizer, DecodeDropsTheLeadingSpaceAfterBosAndPrintsBytesRaw) {
  MMSB_REQUIRE_SHARED(tok_path, "models/tok512.bin");
  Tokenizer tok(load_llama2c_tokenizer(tok_path, 512));
  std::vector<int> ids = tok.encode("Once upon");
  ASSERT_GE(ids.size(), 3u);
  EXPECT_EQ(tok.decode(1, ids[1]), "Once");
  EXPECT_EQ(tok.decode(ids[1], ids[2])[0], ' ');
  EXPECT_EQ(tok.decode(5, 13), "\n");      // <0x0A>
  EXPECT_EQ(tok.decode(5, 3 + 0xC3), "");  // a lone non-printable byte prints nothing, as in llama2.c
}

struct GreedyCase {
  const char* model;
  const char* tokenizer;  // nullptr: from the GGUF
  friend void PrintTo(const GreedyCase& c, std::ostream* os) { *os << c.model; }
};

class Greedy : public ::testing::TestWithParam<GreedyCase> {};

TEST_P(Greedy, OutputEqualsLlama2cByteForByte) {
  MMSB_REQUIRE_SHARED(ref_path, "reference/greedy_llama2c.json");
  MMSB_REQUIRE_SHARED(model_path, std::string("models/") + GetParam().model);
  Model model = load_model(model_path);
  Vocabulary vocab;
  if (GetParam().tokenizer) {
    MMSB_REQUIRE_SHARED(tok_path, std::string("models/") + GetParam().tokenizer);
    vocab = load_llama2c_tokenizer(tok_path, model.config.vocab_size);
  } else {
    vocab = model.vocabulary.value();
  }
  Tokenizer tok(std::move(vocab));
  Engine engine(model);
  auto ref = load_json(ref_path);
  ASSERT_FALSE(ref["runs"].empty());
  for (const auto& run : ref["runs"]) {
    Sampler greedy({});
    std::string text;
    const int n = run["n_generated"];
    GenerateResult r = generate(engine, tok, greedy, run["prompt"].get<std::string>(), n,
                                [&](std::string_view piece) { text += piece; });
    EXPECT_EQ(r.prompt_ids, run["prompt_ids_with_bos"].get<std::vector<int>>());
    EXPECT_EQ(r.generated_ids, run["generated_ids"].get<std::vector<int>>()) << "run " << run["name"];
    EXPECT_EQ(text + "\n", run["stdout_exact"].get<std::string>()) << "run " << run["name"];
    EXPECT_EQ(r.stopped_on_special, run["stopped_on_bos"].get<bool>());
  }
}

INSTANTIATE_TEST_SUITE_P(Models, Greedy,
                         ::testing::Values(GreedyCase{"stories260K.bin", "tok512.bin"},
                                           GreedyCase{"stories260K-f32.gguf", nullptr}),
                         [](const auto& param) {
                           return param.index == 0 ? std::string("llama2c_bin") : std::string("gguf_f32");
                         });

TEST(Logits, FirstStepMatchesLlama2cWithin1e4) {
  MMSB_REQUIRE_SHARED(ref_path, "reference/logits_llama2c.json");
  auto ref = load_json(ref_path);
  for (const char* file : {"models/stories260K.bin", "models/stories260K-f32.gguf"}) {
    MMSB_REQUIRE_SHARED(model_path, file);
    Model model = load_model(model_path);
    Engine engine(model);
    for (const auto& c : ref["cases"]) {
      auto ids = c["prompt_ids_with_bos"].get<std::vector<int>>();
      std::vector<float> logits = last_prompt_logits(engine, ids);
      for (const char* key : {"first_step_logits_O3_march_native", "first_step_logits_O2_fp_contract_off"}) {
        EXPECT_LE(max_abs_diff(logits, c[key]), 1e-4f) << file << " vs " << key;
      }
    }
  }
}

// The engine rounds activations as llama.cpp's CPU backend does (Q8 blocks with a half-precision scale for the
// 32-value types, Q8_K for the K-quants, half precision for F16 weights), so its logits are llama.cpp's up to the
// order of float sums.
TEST(Logits, QuantizedModelsMatchLlamaCppsLogits) {
  MMSB_REQUIRE_SHARED(ref_path, "reference/logits_llamacpp_quantized.json");
  auto ref = load_json(ref_path);
  ASSERT_FALSE(ref["cases"].empty());
  for (const auto& c : ref["cases"]) {
    MMSB_REQUIRE_SHARED(model_path, "models/" + c["model"].get<std::string>());
    Model model = load_model(model_path);
    Engine engine(model);
    std::vector<float> logits = last_prompt_logits(engine, c["prompt_ids_with_bos"].get<std::vector<int>>());
    const float diff = max_abs_diff(logits, c["first_step_logits"]);
    std::printf("[ info ] %s: max |logit - llama.cpp| %.2e\n", c["model"].get<std::string>().c_str(), diff);
    EXPECT_LE(diff, 1e-4f) << c["model"];
    EXPECT_EQ(argmax(logits), argmax(c["first_step_logits"].get<std::vector<float>>())) << c["model"];
  }
}

TEST(Logits, QuantizedModelsMatchLlamaCppWhenActivationsAreRoundedAlike) {
  MMSB_REQUIRE_SHARED(ref_path, "reference/logits_llamacpp_quantized.json");
  auto ref = load_json(ref_path);
  for (const auto& c : ref["cases"]) {
    MMSB_REQUIRE_SHARED(model_path, "models/" + c["model"].get<std::string>());
    Model model = load_model(model_path);
    EngineOptions options;
    options.rounding = ActivationRounding::LikeLlamaCpp;
    Engine engine(model, options);
    std::vector<float> logits = last_prompt_logits(engine, c["prompt_ids_with_bos"].get<std::vector<int>>());
    const float diff = max_abs_diff(logits, c["first_step_logits"]);
    std::printf("[ info ] %s, activations rounded as llama.cpp: max |logit - llama.cpp| %.2e\n",
                c["model"].get<std::string>().c_str(), diff);
    EXPECT_LE(diff, 1e-4f) << c["model"];  // the same arithmetic up to summation order
    EXPECT_EQ(argmax(logits), argmax(c["first_step_logits"].get<std::vector<float>>())) << c["model"];
  }
}

TEST(Engine, WavesComputeExactlyWhatTheDirectLoopComputes) {
  MMSB_REQUIRE_SHARED(model_path, "models/stories260K-Q4_0.gguf");
  Model model = load_model(model_path);
  Engine engine(model);
  DirectModel direct(model, kernels());
  int token = 1;
  for (int pos = 0; pos < 40; ++pos) {
    std::span<const float> a = engine.step(token, pos);
    const float* b = direct.step(token, pos);
    ASSERT_EQ(0, std::memcmp(a.data(), b, a.size() * sizeof(float))) << "position " << pos;
    token = argmax(a);
  }
  // One wave per step; a fresh sequence can start again at position 0.
  EXPECT_EQ(engine.propagator().stats().waves, 40u);
  std::span<const float> again = engine.step(1, 0);
  DirectModel fresh(model, kernels());
  EXPECT_EQ(0, std::memcmp(again.data(), fresh.step(1, 0), again.size() * sizeof(float)));
}

TEST(Engine, WeightsAreExternalPagesOverTheMappedFile) {
  MMSB_REQUIRE_SHARED(model_path, "models/stories260K-Q8_0.gguf");
  Model model = load_model(model_path);
  Engine engine(model);
  ASSERT_EQ(engine.weight_pages().size(), 3u + 9u * model.config.n_layers);
  for (PageId id : engine.weight_pages()) EXPECT_TRUE(engine.runtime().is_external(id));
  PageId first = engine.weight_pages().front();
  PageId ids[] = {first};
  auto view = engine.runtime().read_view(ids);
  EXPECT_EQ(view.bytes(first).data(), model.token_embedding.bytes.data());  // no copy
  auto txn = engine.runtime().begin();
  EXPECT_THROW(txn.write_value<float>(first, 0, 1.0f), Error);
}

TEST(Engine, RejectsTokensAndPositionsOutsideTheModel) {
  MMSB_REQUIRE_SHARED(model_path, "models/stories260K.bin");
  Model model = load_model(model_path);
  Engine engine(model);
  EXPECT_THROW(engine.step(512, 0), Error);
  EXPECT_THROW(engine.step(-1, 0), Error);
  EXPECT_THROW(engine.step(1, 512), Error);
  // A bad value committed to the step page directly fails the wave cleanly (NodeError), not by reading past memory.
  auto txn = engine.runtime().begin();
  txn.write_value(engine.step_page(), 0, StepInput{100000, 0});
  EXPECT_THROW(txn.commit(), NodeError);
  EXPECT_NO_THROW(engine.step(1, 0));
  // Batch rows that the prefill page does not announce, or past the position: refused, not read past the batch.
  for (const StepInput bad : {StepInput{1, 5, 1, 3}, StepInput{1, 5, 1, 6}, StepInput{1, 5, 1, -1}}) {
    auto t = engine.runtime().begin();
    t.write_value(engine.step_page(), 0, bad);
    EXPECT_THROW(t.commit(), NodeError) << bad.batch_rows;
  }
  EXPECT_NO_THROW(engine.step(1, 0));
}

TEST(Sampler, IsSeededAndReproducible) {
  std::vector<float> logits(64);
  for (std::size_t i = 0; i < logits.size(); ++i) logits[i] = std::sin(static_cast<float>(i));
  auto draw = [&](SamplerOptions o) {
    Sampler s(o);
    std::vector<int> out;
    for (int i = 0; i < 50; ++i) out.push_back(s.sample(logits));
    return out;
  };
  EXPECT_EQ(draw({1.0f, 0, 1.0f, 7}), draw({1.0f, 0, 1.0f, 7}));
  EXPECT_NE(draw({1.0f, 0, 1.0f, 7}), draw({1.0f, 0, 1.0f, 8}));
  const int best = argmax(logits);
  for (int t : draw({0.0f, 0, 1.0f, 1})) EXPECT_EQ(t, best);   // greedy
  for (int t : draw({1.5f, 1, 1.0f, 1})) EXPECT_EQ(t, best);   // top-k 1
  for (int t : draw({1.0f, 0, 1e-6f, 1})) EXPECT_EQ(t, best);  // top-p tiny
  for (int t : draw({1.0f, 3, 1.0f, 2})) {                     // top-k 3: only the three best
    int better = 0;
    for (float l : logits) better += l > logits[static_cast<std::size_t>(t)];
    EXPECT_LT(better, 3);
  }
  EXPECT_THROW(Sampler({-1.0f, 0, 1.0f, 0}), Error);
  EXPECT_THROW(Sampler({1.0f, 0, 0.0f, 0}), Error);
}

}  // namespace
}  // namespace mmsb::llm
