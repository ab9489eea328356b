// make-model (issue 21): random-weight models of the tinyllamas shapes, and what the engine does on them at real
// sizes: the same weights in every type, the llama2.c checkpoint equal to the GGUF file, and threads, batches and
// the direct loop agreeing bit for bit.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "llm/llm_test_support.hpp"
#include "mmsb/llm/engine.hpp"
#include "mmsb/llm/forward.hpp"
#include "mmsb/llm/make_model.hpp"
#include "mmsb/llm/model.hpp"
#include "mmsb/llm/sampler.hpp"

namespace mmsb::llm {
namespace {

namespace fs = std::filesystem;

// s15m in several types and as a llama2.c checkpoint, made once for the suite in a temporary folder.
class MadeModels : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new fs::path(fs::temp_directory_path() / ("mmsb-make-model-test-" + std::to_string(::getpid())));
    fs::create_directories(*dir_);
    for (TensorType t :
         {TensorType::F32, TensorType::F16, TensorType::Q8_0, TensorType::Q4_0, TensorType::Q4_K, TensorType::Q6_K}) {
      make(t, false);
    }
    make(TensorType::F32, true);
  }
  static void TearDownTestSuite() {
    fs::remove_all(*dir_);
    delete dir_;
  }
  static std::string path(TensorType t, bool llama2c = false) {
    return (*dir_ /
            ("s15m-" + std::string(*tensor_type_name(static_cast<std::uint32_t>(t))) + (llama2c ? ".bin" : ".gguf")))
        .string();
  }

 private:
  static void make(TensorType t, bool llama2c) {
    MakeModelOptions o;
    o.shape = model_shape_from_name("s15m");
    o.type = t;
    o.seed = 7;
    o.tokenizer = testing::shared_path("models/tok512.bin");
    o.llama2c_format = llama2c;
    make_model(o, path(t, llama2c));
  }
  static fs::path* dir_;
};
fs::path* MadeModels::dir_ = nullptr;

TEST(MakeModel, ShapesAreTheTinyllamasOnesWithVocabulary512AndContext256) {
  const ModelConfig s15 = model_shape_from_name("s15m").config, s42 = model_shape_from_name("s42m").config,
                    s110 = model_shape_from_name("s110m").config;
  EXPECT_EQ(s15.dim, 288u);
  EXPECT_EQ(s15.hidden_dim, 768u);
  EXPECT_EQ(s15.n_layers, 6u);
  EXPECT_EQ(s15.n_heads, 6u);
  EXPECT_EQ(s42.dim, 512u);
  EXPECT_EQ(s42.hidden_dim, 1376u);
  EXPECT_EQ(s42.n_layers, 8u);
  EXPECT_EQ(s110.dim, 768u);
  EXPECT_EQ(s110.hidden_dim, 2048u);
  EXPECT_EQ(s110.n_layers, 12u);
  EXPECT_EQ(s110.n_heads, 12u);
  for (const ModelConfig& c : {s15, s42, s110}) {
    EXPECT_EQ(c.vocab_size, 512u);
    EXPECT_EQ(c.seq_len, 256u);
  }
  EXPECT_THROW(model_shape_from_name("s7b"), Error);
}

TEST_F(MadeModels, FilesLoadWithTheShapeTheVocabularyAndTheTypesAsked) {
  for (TensorType t :
       {TensorType::F32, TensorType::F16, TensorType::Q8_0, TensorType::Q4_0, TensorType::Q4_K, TensorType::Q6_K}) {
    LoadOptions o;
    o.context_length = 256;
    const Model m = load_model(path(t), o);
    EXPECT_EQ(m.config.dim, 288u);
    EXPECT_EQ(m.config.hidden_dim, 768u);
    EXPECT_EQ(m.config.n_layers, 6u);
    EXPECT_EQ(m.config.vocab_size, 512u);
    // Rows of 288 do not fit 256-value blocks: those matrices take quantize's fallback, as llama.cpp's do.
    const TensorType fallback = t == TensorType::Q4_K ? TensorType::Q5_0 : t == TensorType::Q6_K ? TensorType::Q8_0 : t;
    EXPECT_EQ(m.layers[0].wq.type, fallback);
    EXPECT_EQ(m.layers[0].w2.type, t);  // rows of 768
    EXPECT_EQ(m.classifier.type, fallback);
    EXPECT_EQ(m.final_norm.type, TensorType::F32);
    // The vocabulary of tok512.bin, with SentencePiece's space mark turned back into spaces.
    const Vocabulary tok = load_llama2c_tokenizer(testing::shared_path("models/tok512.bin"), 512);
    ASSERT_TRUE(m.vocabulary.has_value());
    EXPECT_EQ(m.vocabulary->pieces, tok.pieces);
    EXPECT_EQ(m.vocabulary->scores, tok.scores);
  }
  // The GGUF fields llama.cpp's loader needs beyond ours: token types (byte pieces marked) and the rope width.
  const GgufContents g = parse_gguf_contents(MappedFile::open(path(TensorType::F32))->bytes());
  EXPECT_EQ(g.numbers.at("llama.rope.dimension_count"), 48);
  EXPECT_EQ(g.numbers.at("llama.context_length"), 256);
  EXPECT_EQ(g.strings.at("tokenizer.ggml.model"), "llama");
  EXPECT_EQ(g.numbers.at("tokenizer.ggml.unknown_token_id"), 0);
  EXPECT_EQ(g.tensors.size(), 3u + 9u * 6u);
}

// Every type holds a rounding of the same f32 weights: the dequantized rows are close to the f32 file's.
TEST_F(MadeModels, EveryTypeRoundsTheSameWeights) {
  const Model f32 = load_model(path(TensorType::F32));
  const Kernels& k = kernels_for(SimdLevel::Scalar);
  for (const auto& [t, bound] : std::map<TensorType, float>{
           {TensorType::F16, 1e-3f}, {TensorType::Q8_0, 0.01f}, {TensorType::Q4_0, 0.2f}, {TensorType::Q6_K, 0.05f}}) {
    const Model m = load_model(path(t));
    std::vector<float> want(768), got(768);
    k.dequantize[0](f32.layers[3].w2.bytes.data(), want.data(), 768);
    k.dequantize[static_cast<int>(m.layers[3].w2.type)](m.layers[3].w2.bytes.data(), got.data(), 768);
    double err = 0, ref = 0;
    for (std::size_t i = 0; i < 768; ++i) err += (got[i] - want[i]) * (got[i] - want[i]), ref += want[i] * want[i];
    EXPECT_LT(std::sqrt(err / ref), bound) << *tensor_type_name(static_cast<std::uint32_t>(t));
    EXPECT_GT(ref, 0.0);
  }
}

TEST_F(MadeModels, Llama2cCheckpointHoldsTheGgufWeightsBitForBit) {
  LoadOptions o;
  o.context_length = 256;
  const Model gguf = load_model(path(TensorType::F32), o), bin = load_model(path(TensorType::F32, true), o);
  EXPECT_EQ(bin.format, "llama2.c");
  ASSERT_EQ(bin.classifier.bytes.size(), gguf.classifier.bytes.size());
  EXPECT_EQ(0, std::memcmp(bin.classifier.bytes.data(), gguf.classifier.bytes.data(), gguf.classifier.bytes.size()));
  EXPECT_EQ(0,
            std::memcmp(bin.layers[5].w3.bytes.data(), gguf.layers[5].w3.bytes.data(), gguf.layers[5].w3.bytes.size()));
  Engine a(gguf), b(bin);
  int token = 1;
  for (int pos = 0; pos < 8; ++pos) {
    std::span<const float> la = a.step(token, pos), lb = b.step(token, pos);
    ASSERT_EQ(0, std::memcmp(la.data(), lb.data(), la.size_bytes())) << "position " << pos;
    token = argmax(la);
  }
}

// At a real size every product and attention splits across the team; one and two threads, batched and per-token
// prompts, the engine and the direct loop all give the same bits.
TEST_F(MadeModels, ThreadsBatchesAndTheDirectLoopAgreeBitForBit) {
  for (TensorType t :
       {TensorType::F32, TensorType::F16, TensorType::Q8_0, TensorType::Q4_0, TensorType::Q4_K, TensorType::Q6_K}) {
    LoadOptions lo;
    lo.context_length = 256;
    const Model m = load_model(path(t), lo);
    EngineOptions one, two;
    two.threads = 2;
    one.prefill_batch = two.prefill_batch = 8;
    Engine e1(m, one), e2(m, two);
    DirectModel d2(m, kernels(), ActivationRounding::None, 2);
    std::vector<int> prompt;
    for (int i = 0; i < 20; ++i) prompt.push_back(1 + (i * 37) % 500);
    std::span<const float> a = e1.prompt(prompt, 0), b = e2.prompt(prompt, 0);
    const std::string name(*tensor_type_name(static_cast<std::uint32_t>(t)));
    ASSERT_EQ(0, std::memcmp(a.data(), b.data(), a.size_bytes())) << name << ": batched prompt, 1 vs 2 threads";
    const float* d = nullptr;
    for (int pos = 0; pos < 20; ++pos) d = d2.step(prompt[static_cast<std::size_t>(pos)], pos);
    ASSERT_EQ(0, std::memcmp(a.data(), d, a.size_bytes())) << name << ": batched prompt vs per-token direct loop";
    int token = argmax(a);
    for (int pos = 20; pos < 24; ++pos) {
      std::span<const float> s1 = e1.step(token, pos), s2 = e2.step(token, pos);
      const float* sd = d2.step(token, pos);
      ASSERT_EQ(0, std::memcmp(s1.data(), s2.data(), s1.size_bytes())) << name << " position " << pos;
      ASSERT_EQ(0, std::memcmp(s1.data(), sd, s1.size_bytes())) << name << " position " << pos;
      token = argmax(s1);
    }
  }
}

TEST(MakeModel, RefusesAnExistingFileUnlessForcedAndLlama2cOtherThanF32) {
  const fs::path out = fs::temp_directory_path() / ("mmsb-make-model-refuse-" + std::to_string(::getpid()) + ".gguf");
  MakeModelOptions o;
  o.tokenizer = testing::shared_path("models/tok512.bin");
  make_model(o, out);
  EXPECT_THROW(make_model(o, out), Error);
  o.force = true;
  EXPECT_GT(make_model(o, out), 25'000'000u);  // s15m in f32
  o.llama2c_format = true;
  o.type = TensorType::Q8_0;
  EXPECT_THROW(make_model(o, out), Error);
  fs::remove(out);
}

}  // namespace
}  // namespace mmsb::llm
