// LoRA adapters as deltas on weight pages (llm/include/mmsb/llm/lora.hpp): the adapter file format, the merge
// against a dense reference, exact revert, hot swaps against fresh runs, and the untouched model file.
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "llm/llm_test_support.hpp"
#include "mmsb/error.hpp"
#include "mmsb/llm/chat.hpp"
#include "mmsb/llm/engine.hpp"
#include "mmsb/llm/forward.hpp"
#include "mmsb/llm/generate.hpp"
#include "mmsb/llm/kernels.hpp"
#include "mmsb/llm/lora.hpp"
#include "mmsb/llm/model.hpp"
#include "mmsb/llm/paged_model.hpp"
#include "mmsb/llm/sampler.hpp"
#include "mmsb/llm/tokenizer.hpp"

namespace mmsb::llm {
namespace {

const std::vector<std::string> kAllKinds = {"attn_q",   "attn_k", "attn_v",  "attn_output",
                                            "ffn_gate", "ffn_up", "ffn_down"};

std::uint64_t fnv1a(std::span<const std::byte> bytes) {
  std::uint64_t h = 1469598103934665603ull;
  for (std::byte b : bytes) h = (h ^ static_cast<std::uint8_t>(b)) * 1099511628211ull;
  return h;
}

std::uint64_t file_hash(const std::string& path) {
  std::string bytes = testing::read_bytes(path);
  return fnv1a(std::as_bytes(std::span(bytes.data(), bytes.size())));
}

ErrorCode code_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.code();
  }
  ADD_FAILURE() << "no mmsb::Error thrown";
  return ErrorCode::Internal;
}

// W + scale · B · A in double, from the dequantized base (the dense reference of the merge).
std::vector<double> dense_reference(const Tensor& base, const LoraTensor& t, float scale) {
  std::vector<double> out(base.rows * base.cols);
  std::vector<float> row(base.cols);
  const Kernels& k = kernels_for(SimdLevel::Scalar);
  for (std::size_t r = 0; r < base.rows; ++r) {
    k.dequantize[static_cast<int>(base.type)](base.bytes.data() + r * base.row_stride, row.data(), base.cols);
    for (std::size_t c = 0; c < base.cols; ++c) {
      double d = 0;
      for (std::size_t i = 0; i < t.rank; ++i) d += double{t.b[r * t.rank + i]} * t.a[i * base.cols + c];
      out[r * base.cols + c] = row[c] + double{scale} * d;
    }
  }
  return out;
}

std::vector<float> dequantize_all(const Tensor& base, std::span<const std::byte> bytes) {
  std::vector<float> out(base.rows * base.cols);
  const Kernels& k = kernels_for(SimdLevel::Scalar);
  for (std::size_t r = 0; r < base.rows; ++r) {
    k.dequantize[static_cast<int>(base.type)](bytes.data() + r * base.row_stride, out.data() + r * base.cols,
                                              base.cols);
  }
  return out;
}

// Greedy tokens of one sequence from position 0: BOS, then `n` sampled tokens.
template <class StepFn>
std::vector<int> greedy(StepFn&& step, int n) {
  std::vector<int> out;
  int token = 1;
  for (int pos = 0; pos < n; ++pos) {
    std::span<const float> logits = step(token, pos);
    token = argmax(logits);
    out.push_back(token);
  }
  return out;
}

std::vector<int> engine_greedy(Engine& e, int n) {
  return greedy([&](int t, int p) { return e.step(t, p); }, n);
}

// A copy of `model` whose adapted tensors point at buffers the test owns (to change them under a DirectModel).
struct PlainWeights {
  Model model;
  std::map<std::string, std::vector<std::byte>> buffers;
  PlainWeights(const Model& base, const LoraAdapter& adapter) : model(base) {
    for (const LoraTensor& t : adapter.tensors) {
      const Tensor* src = find_lora_target(base, t.target);
      auto& buf = buffers[t.target];
      buf.assign(src->bytes.begin(), src->bytes.end());
      Tensor* dst = const_cast<Tensor*>(find_lora_target(model, t.target));
      dst->bytes = buf;
    }
  }
  void set(const Model& base, const LoraAdapter* adapter, float scale = 1.0f) {
    for (auto& [name, buf] : buffers) {
      const Tensor* src = find_lora_target(base, name);
      std::memcpy(buf.data(), src->bytes.data(), buf.size());
    }
    if (!adapter) return;
    for (const LoraTensor& t : adapter->tensors) {
      merge_lora_tensor(*find_lora_target(base, t.target), t, adapter->scale_of(t, scale), buffers.at(t.target));
    }
  }
};

TEST(LoraFile, WriteThenParseRoundTripsEveryValue) {
  MMSB_REQUIRE_SHARED(path, "models/stories260K-f32.gguf");
  Model model = load_model(path);
  LoraAdapter a = make_random_lora(model, 3, 6.0f, 11, {"attn_q", "ffn_down"});
  ASSERT_EQ(a.tensors.size(), 2 * model.layers.size());
  std::vector<std::byte> bytes = serialize_lora_gguf(a);
  LoraAdapter b = parse_lora_gguf(bytes);
  EXPECT_EQ(b.alpha, 6.0f);
  ASSERT_EQ(b.tensors.size(), a.tensors.size());
  std::map<std::string, const LoraTensor*> by_name;
  for (const auto& t : b.tensors) by_name[t.target] = &t;
  for (const auto& t : a.tensors) {
    ASSERT_TRUE(by_name.count(t.target)) << t.target;
    const LoraTensor& u = *by_name[t.target];
    EXPECT_EQ(u.rank, 3u);
    EXPECT_EQ(u.rows, t.rows);
    EXPECT_EQ(u.cols, t.cols);
    EXPECT_EQ(u.a, t.a);
    EXPECT_EQ(u.b, t.b);
  }
  EXPECT_FLOAT_EQ(b.scale_of(b.tensors[0], 0.5f), 0.5f * 6.0f / 3.0f);  // user scale · alpha / rank
}

TEST(LoraFile, RefusesModelsBrokenPairsShapesAndValuesWithClearErrors) {
  MMSB_REQUIRE_SHARED(path, "models/stories260K-f32.gguf");
  Model model = load_model(path);
  std::string model_bytes = testing::read_bytes(path);
  EXPECT_EQ(code_of([&] { parse_lora_gguf(std::as_bytes(std::span(model_bytes.data(), model_bytes.size()))); }),
            ErrorCode::Unsupported);  // a model file is not an adapter

  LoraAdapter a = make_random_lora(model, 2, 2.0f, 5, {"attn_v"});
  LoraAdapter unpaired = a;
  unpaired.tensors.resize(1);
  auto bytes = serialize_lora_gguf(unpaired);
  // Rename the single pair's lora_b to an unknown suffix: an unpaired lora_a and an unknown tensor.
  std::string text(reinterpret_cast<const char*>(bytes.data()), bytes.size());
  std::size_t at = text.find(".lora_b");
  ASSERT_NE(at, std::string::npos);
  bytes[at + 6] = std::byte{'x'};
  try {
    parse_lora_gguf(bytes);
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::Corruption);
    EXPECT_NE(std::string(e.what()).find("lora_x"), std::string::npos) << e.what();
  }

  LoraAdapter nan = unpaired;
  nan.tensors[0].b[3] = std::nanf("");
  EXPECT_EQ(code_of([&] { parse_lora_gguf(serialize_lora_gguf(nan)); }), ErrorCode::Corruption);

  // Every truncation of a valid adapter is an Error, never a crash.
  auto good = serialize_lora_gguf(unpaired);
  for (std::size_t n = 0; n < good.size(); n += 7) {
    EXPECT_THROW(parse_lora_gguf(std::span(good.data(), n)), Error) << "length " << n;
  }
  // A rank that disagrees between A and B: patch lora_b's first dimension.
  auto bad_rank = serialize_lora_gguf(unpaired);
  std::string t2(reinterpret_cast<const char*>(bad_rank.data()), bad_rank.size());
  std::size_t b_name = t2.find(".lora_b");
  ASSERT_NE(b_name, std::string::npos);
  std::uint64_t one = 1;                                   // A has rank 2
  std::memcpy(bad_rank.data() + b_name + 7 + 4, &one, 8);  // after the name: u32 n_dims, then dims[0]
  try {
    parse_lora_gguf(bad_rank);
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::Corruption);
    EXPECT_NE(std::string(e.what()).find("rank"), std::string::npos) << e.what();
  }

  // An adapter for another model shape: found at prepare() time.
  LoraAdapter wrong = unpaired;
  wrong.tensors[0].target = "blk.99.attn_v.weight";
  Engine engine(model);
  LoraSwitcher sw(engine, model);
  EXPECT_EQ(code_of([&] { sw.prepare(wrong); }), ErrorCode::Unsupported);
  LoraAdapter wide = unpaired;
  wide.tensors[0].cols += 1;
  wide.tensors[0].a.resize(wide.tensors[0].rank * wide.tensors[0].cols);
  EXPECT_EQ(code_of([&] { sw.prepare(wide); }), ErrorCode::InvalidArgument);
}

TEST(LoraMerge, F32MergeEqualsTheDenseReference) {
  MMSB_REQUIRE_SHARED(path, "models/stories260K-f32.gguf");
  Model model = load_model(path);
  LoraAdapter a = make_random_lora(model, 4, 8.0f, 3, kAllKinds);
  for (const LoraTensor& t : a.tensors) {
    const Tensor& base = *find_lora_target(model, t.target);
    ASSERT_EQ(base.type, TensorType::F32);
    std::vector<std::byte> out(base.bytes.size());
    merge_lora_tensor(base, t, a.scale_of(t, 0.7f), out);
    std::vector<double> ref = dense_reference(base, t, a.scale_of(t, 0.7f));
    std::vector<float> got = dequantize_all(base, out);
    double worst = 0;
    for (std::size_t i = 0; i < ref.size(); ++i) worst = std::max(worst, std::fabs(got[i] - ref[i]));
    EXPECT_LT(worst, 2e-6) << t.target;
  }
}

// Quantized weights are merged as dequantize → add → requantize: every value must then be within the type's
// rounding of the dense reference (half a step for Q8_0 and F16, one step for Q4_0, whose top code is clamped).
TEST(LoraMerge, QuantizedMergeIsWithinOneRequantizationOfTheDenseReference) {
  for (const char* file : {"models/stories260K-Q8_0.gguf", "models/stories260K-Q4_0.gguf"}) {
    MMSB_REQUIRE_SHARED(path, file);
    Model model = load_model(path);
    LoraAdapter a = make_random_lora(model, 4, 4.0f, 9, kAllKinds);
    std::map<TensorType, int> seen;
    for (const LoraTensor& t : a.tensors) {
      const Tensor& base = *find_lora_target(model, t.target);
      ++seen[base.type];
      std::vector<std::byte> out(base.bytes.size());
      merge_lora_tensor(base, t, a.scale_of(t, 1.0f), out);
      std::vector<double> ref = dense_reference(base, t, a.scale_of(t, 1.0f));
      std::vector<float> got = dequantize_all(base, out);
      const std::size_t block = base.type == TensorType::F16 ? 1 : 32;
      for (std::size_t b0 = 0; b0 < ref.size(); b0 += block) {
        double amax = 0;
        for (std::size_t i = b0; i < b0 + block; ++i) amax = std::max(amax, std::fabs(ref[i]));
        double bound = base.type == TensorType::Q8_0   ? 0.6 * amax / 127
                       : base.type == TensorType::Q4_0 ? 1.05 * amax / 8
                                                       : amax * 1e-3 + 1e-7;  // F16: half an ulp is 2^-11
        for (std::size_t i = b0; i < b0 + block; ++i) {
          ASSERT_LE(std::fabs(got[i] - ref[i]), bound) << file << " " << t.target << " element " << i;
        }
      }
    }
    EXPECT_GT(seen[TensorType::F16], 0) << "ffn_down of the quantized files is F16";
    EXPECT_GT(seen[std::string(file).find("Q8_0") != std::string::npos ? TensorType::Q8_0 : TensorType::Q4_0], 0);
  }
}

// The accuracy cost of merging into quantized weights: the engine's logits with the requantized merge against a
// reference that keeps the adapted matrices in f32 (dequantized base + the exact product), compared with the
// adapter's own effect on the logits. Printed for docs/transformer.md.
TEST(LoraMerge, RequantizationErrorIsSmallAgainstTheAdaptersEffect) {
  for (const char* file : {"models/stories260K-Q8_0.gguf", "models/stories260K-Q4_0.gguf"}) {
    MMSB_REQUIRE_SHARED(path, file);
    Model model = load_model(path);
    LoraAdapter a = make_random_lora(model, 4, 4.0f, 51, {"attn_q", "attn_v", "ffn_up"});
    // Reference: adapted tensors as F32 buffers holding W + scale·B·A exactly as dequantized floats.
    Model ref_model = model;
    std::vector<std::vector<std::byte>> storage;
    for (const LoraTensor& t : a.tensors) {
      const Tensor& base = *find_lora_target(model, t.target);
      std::vector<double> dense = dense_reference(base, t, a.scale_of(t, 1.0f));
      storage.emplace_back(dense.size() * sizeof(float));
      float* f = reinterpret_cast<float*>(storage.back().data());
      for (std::size_t i = 0; i < dense.size(); ++i) f[i] = static_cast<float>(dense[i]);
      Tensor* dst = const_cast<Tensor*>(find_lora_target(ref_model, t.target));
      dst->type = TensorType::F32;
      dst->row_stride = base.cols * sizeof(float);
      dst->bytes = storage.back();
    }
    Engine engine(model);
    LoraSwitcher sw(engine, model);
    Engine base_engine(model);
    sw.activate(sw.prepare(a));
    DirectModel ref(ref_model, kernels());
    double err = 0, effect = 0;
    int token = 1;
    for (int pos = 0; pos < 32; ++pos) {
      std::span<const float> e = engine.step(token, pos);
      std::span<const float> b = base_engine.step(token, pos);
      const float* r = ref.step(token, pos);
      for (std::size_t i = 0; i < e.size(); ++i) {
        err = std::max(err, double{std::fabs(e[i] - r[i])});
        effect = std::max(effect, double{std::fabs(b[i] - r[i])});
      }
      token = argmax({r, e.size()});  // follow the reference's tokens so both see the same inputs
    }
    std::printf("[ lora ] %s: requantized merge vs f32 merge, largest logit difference %.4f; adapter effect %.4f\n",
                file, err, effect);
    // Q8_0 adds about its own rounding once more; Q4_0 a full second 4-bit quantization of the adapted matrices.
    EXPECT_LT(err, (std::string(file).find("Q8_0") != std::string::npos ? 0.05 : 0.5) * effect) << file;
  }
}

using CliRun = testing::LlmRun;
CliRun run_cli(const std::string& args, const std::string& input = "") { return testing::run_llm(args, false, input); }

TEST(LoraCli, LoraMakeThenLoraGivesTheLibrarysTextAndKeepsTheModelFile) {
  MMSB_REQUIRE_SHARED(path, "models/stories260K-Q8_0.gguf");
  const std::uint64_t before = file_hash(path);
  const std::string adapter = ::testing::TempDir() + "mmsb_lora_cli_" + std::to_string(::getpid()) + ".gguf";
  CliRun made =
      run_cli("lora-make -m " + path + " -o " + adapter + " --rank 4 --alpha 8 --seed 5 --targets attn_q,ffn_down");
  ASSERT_EQ(made.status, 0);
  Model model = load_model(path);
  LoraAdapter a = load_lora(adapter);
  EXPECT_EQ(a.tensors.size(), 2 * model.layers.size());
  Tokenizer tok(model.vocabulary.value());
  auto library_text = [&](const LoraAdapter* adapter_or_null, float scale) {
    Engine engine(model);
    LoraSwitcher sw(engine, model);
    if (adapter_or_null) sw.activate(sw.prepare(*adapter_or_null, scale));
    Sampler sampler({});
    std::string text;
    generate(engine, tok, sampler, "Once upon a time", 30, [&](std::string_view s) { text += s; });
    return text + "\n";
  };
  CliRun with = run_cli("-m " + path + " -p 'Once upon a time' -n 30 --lora " + adapter + " --lora-scale 0.5");
  EXPECT_EQ(with.status, 0);
  EXPECT_EQ(with.out, library_text(&a, 0.5f));
  EXPECT_NE(with.out, library_text(nullptr, 1.0f));
  CliRun swapping = run_cli("-m " + path + " -p 'Once upon a time' -n 30 --lora " + adapter + " --lora-swap-every 3");
  EXPECT_EQ(swapping.status, 0);
  EXPECT_NE(swapping.out, with.out);
  // Under a memory budget the adapter is merged into the paged units: the same text; swapping there is refused.
  CliRun paged =
      run_cli("-m " + path + " -p 'Once upon a time' -n 30 --lora " + adapter + " --lora-scale 0.5 --mem-budget 90%");
  EXPECT_EQ(paged.status, 0);
  EXPECT_EQ(paged.out, with.out);
  CliRun paged_swap = run_cli("-m " + path + " -n 4 --lora " + adapter + " --lora-swap-every 3 --mem-budget 90%");
  EXPECT_EQ(paged_swap.status, 2);
  CliRun bad = run_cli("-m " + path + " --lora " + path);  // a model is not an adapter
  EXPECT_EQ(bad.status, 2);
  std::remove(adapter.c_str());
  EXPECT_EQ(file_hash(path), before);
}

TEST(LoraCli, InteractiveTurnsPrintWhatTheChatSessionGenerates) {
  MMSB_REQUIRE_SHARED(path, "models/stories260K-f32.gguf");
  CliRun chat = run_cli("-m " + path + " -i -p 'Once upon a time' -n 12", "The dog\\nand then\\n");
  EXPECT_EQ(chat.status, 0);
  Model model = load_model(path);
  Tokenizer tok(model.vocabulary.value());
  Engine engine(model);
  Sampler sampler({});
  ChatSession session(engine, tok, sampler);
  std::string expected;
  for (const char* line : {"Once upon a time", "The dog", "and then"}) {
    session.turn(line, 12, [&](std::string_view s) { expected += s; });
    expected += "\n";
  }
  EXPECT_EQ(chat.out, expected);
}

class LoraEngine : public ::testing::TestWithParam<const char*> {};

// The pages the switcher writes hold exactly the merged weights: the engine with an adapter gives the logits of
// the direct loop over the merged tensors bit for bit; reverting restores every weight byte, and the file on
// disk never changes.
TEST_P(LoraEngine, AdapterLogitsEqualTheDirectLoopAndRevertIsBitExact) {
  MMSB_REQUIRE_SHARED(path, std::string("models/") + GetParam());
  const std::uint64_t file_before = file_hash(path);
  Model model = load_model(path);
  LoraAdapter a = make_random_lora(model, 4, 4.0f, 21, kAllKinds);
  LoraAdapter b = make_random_lora(model, 2, 2.0f, 22, {"attn_q", "attn_v", "ffn_up"});
  Engine engine(model);
  std::vector<std::vector<std::byte>> base_pages;
  for (PageId id : engine.weight_pages()) base_pages.push_back(engine.runtime().read_all(id));
  LoraSwitcher sw(engine, model);
  const std::size_t ha = sw.prepare(a, 1.0f), hb = sw.prepare(b, 0.5f);
  for (PageId id : sw.pages(ha)) EXPECT_TRUE(engine.runtime().is_external(id));  // prepare copies nothing

  PlainWeights plain(model, a);
  DirectModel direct(plain.model, kernels());
  const std::vector<int> base_tokens = engine_greedy(engine, 24);
  sw.activate(ha);
  for (PageId id : sw.pages(ha)) EXPECT_FALSE(engine.runtime().is_external(id));  // copied on first write
  plain.set(model, &a);
  for (int pos = 0, token = 1; pos < 24; ++pos) {
    std::span<const float> e = engine.step(token, pos);
    const float* d = direct.step(token, pos);
    ASSERT_EQ(0, std::memcmp(e.data(), d, e.size_bytes())) << "position " << pos;
    token = argmax(e);
  }
  const std::vector<int> a_tokens = engine_greedy(engine, 24);
  EXPECT_NE(a_tokens, base_tokens) << "the adapter must change the output for this test to mean anything";

  sw.activate(hb);
  sw.activate(ha);
  sw.revert();
  EXPECT_FALSE(sw.active());
  for (std::size_t i = 0; i < base_pages.size(); ++i) {
    ASSERT_EQ(engine.runtime().read_all(engine.weight_pages()[i]), base_pages[i]) << "weight page " << i;
  }
  EXPECT_EQ(engine_greedy(engine, 24), base_tokens);
  EXPECT_EQ(file_hash(path), file_before) << "the model file must never be written";
}

// Swapping between sequences: each adapter gives exactly the tokens of a fresh engine built with only it.
TEST_P(LoraEngine, SwapsGiveTheTokensOfAFreshRunWithThatAdapter) {
  MMSB_REQUIRE_SHARED(path, std::string("models/") + GetParam());
  Model model = load_model(path);
  LoraAdapter a = make_random_lora(model, 4, 4.0f, 31, {"attn_q", "attn_v"});
  LoraAdapter b = make_random_lora(model, 4, 4.0f, 32, {"attn_v", "ffn_gate", "ffn_down"});
  auto fresh = [&](const LoraAdapter* adapter) {
    Engine e(model);
    LoraSwitcher s(e, model);
    if (adapter) s.activate(s.prepare(*adapter));
    return engine_greedy(e, 32);
  };
  const auto fresh_base = fresh(nullptr), fresh_a = fresh(&a), fresh_b = fresh(&b);
  EXPECT_NE(fresh_a, fresh_base);
  EXPECT_NE(fresh_b, fresh_a);
  Engine engine(model);
  LoraSwitcher sw(engine, model);
  const std::size_t ha = sw.prepare(a), hb = sw.prepare(b);
  for (int round = 0; round < 3; ++round) {
    sw.activate(ha);
    EXPECT_EQ(engine_greedy(engine, 32), fresh_a) << "round " << round;
    sw.activate(hb);
    EXPECT_EQ(engine_greedy(engine, 32), fresh_b) << "round " << round;
    sw.revert();
    EXPECT_EQ(engine_greedy(engine, 32), fresh_base) << "round " << round;
  }
}

// Swapping in the middle of a sequence: the swap's commit re-runs the wave of the last step with the new
// weights, and later steps use them; the direct loop doing the same (switch the weights, redo the last step)
// gives the same tokens.
TEST_P(LoraEngine, MidSequenceSwapsMatchTheDirectLoopSwitchingWeights) {
  MMSB_REQUIRE_SHARED(path, std::string("models/") + GetParam());
  Model model = load_model(path);
  LoraAdapter a = make_random_lora(model, 4, 4.0f, 41, {"attn_q", "attn_k", "attn_v", "ffn_up"});
  LoraAdapter b = make_random_lora(model, 4, 4.0f, 42, {"attn_q", "attn_k", "attn_v", "ffn_up"});
  Engine engine(model);
  LoraSwitcher sw(engine, model);
  const std::size_t ha = sw.prepare(a), hb = sw.prepare(b);
  PlainWeights plain(model, a);
  DirectModel direct(plain.model, kernels());
  plain.set(model, nullptr);
  int token = 1, previous = 1;
  std::vector<int> tokens;
  for (int pos = 0; pos < 40; ++pos) {
    if (pos > 0 && pos % 7 == 0) {
      const int phase = (pos / 7) % 3;  // a, b, base, a, ...
      if (phase == 1) {
        sw.activate(ha);
        plain.set(model, &a);
      } else if (phase == 2) {
        sw.activate(hb);
        plain.set(model, &b);
      } else {
        sw.revert();
        plain.set(model, nullptr);
      }
      direct.step(previous, pos - 1);  // what the swap's wave recomputed
    }
    std::span<const float> e = engine.step(token, pos);
    const float* d = direct.step(token, pos);
    ASSERT_EQ(0, std::memcmp(e.data(), d, e.size_bytes())) << "position " << pos;
    previous = token;
    token = argmax(e);
    tokens.push_back(token);
  }
  Engine fresh(model);
  EXPECT_NE(tokens, engine_greedy(fresh, 40)) << "the swaps must change the output for this test to mean anything";
}

// A paged engine with one adapter merged into its units (PagingOptions::overrides) gives the resident engine's
// logits with that adapter bit for bit, at budgets from the smallest that holds the merged matrices to beyond the
// whole model; a budget that cannot hold them is refused with a message naming the minimum.
TEST_P(LoraEngine, PagedEngineWithAnAdapterGivesTheResidentAdaptersLogits) {
  MMSB_REQUIRE_SHARED(path, std::string("models/") + GetParam());
  const Model model = load_model(path);
  const LoraAdapter a = make_random_lora(model, 4, 4.0f, 61, {"attn_q", "attn_v", "ffn_up"});
  constexpr int kSteps = 24;
  auto logits_of = [&](Engine& engine) {
    std::vector<float> all;
    greedy(
        [&](int t, int pos) {
          std::span<const float> l = engine.step(t, pos);
          all.insert(all.end(), l.begin(), l.end());
          return l;
        },
        kSteps);
    return all;
  };
  Engine resident(model);
  LoraSwitcher sw(resident, model);
  sw.activate(sw.prepare(a, 0.75f));
  const std::vector<float> expected = logits_of(resident);

  std::uint64_t merged_bytes = 0;
  for (const TensorOverride& o : merge_lora(model, a, 0.75f)) merged_bytes += o.bytes.size();
  ASSERT_GT(merged_bytes, 0u);
  // With overrides paging copies the units (their merged bytes replace the file's after each load).
  const std::uint64_t minimum = merged_bytes + PagedModel::minimum_budget(model, PagingKind::Copy);
  const std::uint64_t all = PagedModel::model_bytes(model, PagingKind::Copy);
  for (std::uint64_t budget : {minimum, minimum + all / 4, merged_bytes + all, 2 * all}) {
    SCOPED_TRACE("budget " + std::to_string(budget));
    EngineOptions options;
    options.paging = PagingOptions{};
    options.paging->budget = budget;
    options.paging->overrides = merge_lora(model, a, 0.75f);
    Engine paged(model, options);
    const std::vector<float> got = logits_of(paged);
    ASSERT_EQ(got.size(), expected.size());
    EXPECT_EQ(0, std::memcmp(got.data(), expected.data(), got.size() * sizeof(float)));
    EXPECT_LE(paged.paged()->pager().stats().peak_held_bytes, budget - merged_bytes);
  }
  EngineOptions tight;
  tight.paging = PagingOptions{};
  tight.paging->budget = minimum - 1;
  tight.paging->overrides = merge_lora(model, a, 0.75f);
  try {
    Engine refused(model, tight);
    ADD_FAILURE() << "a budget one byte below the adapter's minimum was accepted";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::InvalidArgument);
    EXPECT_NE(std::string(e.what()).find("minimum of " + std::to_string(minimum) + " bytes with the adapter"),
              std::string::npos)
        << e.what();
  }
  tight.paging->budget = 2 * all;
  tight.paging->kind = PagingKind::Map;  // the merged bytes are not the file's: they cannot be mapped
  try {
    Engine refused(model, tight);
    ADD_FAILURE() << "mapped paging with an adapter was accepted";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::InvalidArgument);
    EXPECT_NE(std::string(e.what()).find("--paging copy"), std::string::npos) << e.what();
  }
}

INSTANTIATE_TEST_SUITE_P(Files, LoraEngine,
                         ::testing::Values("stories260K-f32.gguf", "stories260K-Q8_0.gguf", "stories260K-Q4_0.gguf"),
                         [](const auto& test_info) {
                           std::string n = test_info.param;
                           for (char& c : n)
                             if (!std::isalnum(static_cast<unsigned char>(c))) c = '_';
                           return n;
                         });

}  // namespace
}  // namespace mmsb::llm
