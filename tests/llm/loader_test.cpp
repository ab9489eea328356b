// Damaged and crafted model files: every one gives an mmsb::Error naming the problem, never a crash.
#include <gtest/gtest.h>
#include <sys/wait.h>

#include <cstdio>
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "llm/llm_test_support.hpp"
#include "mmsb/llm/engine.hpp"
#include "mmsb/llm/model.hpp"

namespace mmsb::llm {
namespace {

using testing::read_bytes;

std::span<const std::byte> span_of(const std::string& s) { return std::as_bytes(std::span(s.data(), s.size())); }

// Parses `bytes` as the format of `name`; returns the error, or "" when it loaded. A loaded model must also run.
std::string try_load(const std::string& bytes, bool gguf) {
  auto owner = std::make_shared<std::string>(bytes);
  try {
    Model m = gguf ? parse_gguf(span_of(*owner), owner) : parse_llama2c(span_of(*owner), owner);
    Engine engine(m);
    engine.step(1, 0);
    engine.step(static_cast<int>(m.config.vocab_size - 1), 1);
    return "";
  } catch (const NodeError&) {
    return "node error";  // a loaded model whose values make a node refuse (e.g. NaN is fine, this is not)
  } catch (const Error& e) {
    return e.what();
  }
}

// Little-endian builders for crafted GGUF headers.
struct Builder {
  std::string out;
  template <class T>
  Builder& put(T v) {
    out.append(reinterpret_cast<const char*>(&v), sizeof v);
    return *this;
  }
  Builder& str(const std::string& s) {
    put<std::uint64_t>(s.size());
    out += s;
    return *this;
  }
};

TEST(Loader, MissingFileIsNotFound) {
  try {
    load_model("/nonexistent/model.gguf");
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::NotFound);
    EXPECT_NE(std::string(e.what()).find("/nonexistent/model.gguf"), std::string::npos);
  }
}

TEST(Loader, EveryTruncationOfTheRealFilesIsAnError) {
  for (const char* file : {"models/stories260K-Q4_0.gguf", "models/stories260K-f32.gguf", "models/stories260K.bin"}) {
    MMSB_REQUIRE_SHARED(path, file);
    const std::string full = read_bytes(path);
    const bool gguf = full.compare(0, 4, "GGUF") == 0;
    // Where the last tensor's bytes end: a GGUF file may carry alignment padding after it, whose loss is harmless.
    std::size_t used = 0;
    {
      auto owner = std::make_shared<std::string>(full);
      Model m = gguf ? parse_gguf(span_of(*owner), owner) : parse_llama2c(span_of(*owner), owner);
      const auto* base = reinterpret_cast<const std::byte*>(owner->data());
      auto keep = [&](const Tensor& t) {
        used = std::max<std::size_t>(used, static_cast<std::size_t>(t.bytes.data() + t.bytes.size() - base));
      };
      keep(m.token_embedding);
      keep(m.final_norm);
      keep(m.classifier);
      for (const auto& l : m.layers) {
        for (const Tensor* t : {&l.attn_norm, &l.wq, &l.wk, &l.wv, &l.wo, &l.ffn_norm, &l.w1, &l.w2, &l.w3}) keep(*t);
      }
      if (!gguf) used = full.size();  // the RoPE tables follow the last tensor; the size must match exactly
    }
    ASSERT_LE(used, full.size());
    std::vector<std::size_t> lengths = {0,
                                        3,
                                        4,
                                        8,
                                        16,
                                        24,
                                        27,
                                        28,
                                        100,
                                        1000,
                                        5000,
                                        14000,
                                        14151,
                                        14152,
                                        14229,
                                        full.size() / 2,
                                        full.size() - 4,
                                        full.size() - 1};
    std::mt19937 rng(5);
    for (int i = 0; i < 40; ++i) lengths.push_back(rng() % full.size());
    for (std::size_t n : lengths) {
      if (n >= used) continue;
      std::string error = try_load(full.substr(0, n), gguf);
      EXPECT_FALSE(error.empty()) << file << " truncated to " << n << " bytes loaded";
    }
  }
}

TEST(Loader, TruncatedGgufNamesTheTensorAndTheSizes) {
  MMSB_REQUIRE_SHARED(path, "models/stories260K-Q8_0.gguf");
  const std::string full = read_bytes(path);
  std::string error = try_load(full.substr(0, full.size() - 100), true);
  EXPECT_NE(error.find("tensor '"), std::string::npos) << error;
  EXPECT_NE(error.find("truncated"), std::string::npos) << error;
}

TEST(Loader, BitFlippedHeadersLoadOrFailCleanly) {
  for (const char* file : {"models/stories260K-Q4_0.gguf", "models/stories260K.bin"}) {
    MMSB_REQUIRE_SHARED(path, file);
    const std::string full = read_bytes(path);
    const bool gguf = full.compare(0, 4, "GGUF") == 0;
    const std::size_t header = gguf ? 14300 : 28;  // metadata and tensor table / the 7 header fields
    std::mt19937 rng(11);
    int errors = 0;
    for (int i = 0; i < 300; ++i) {
      std::string copy = full;
      const int flips = 1 + static_cast<int>(rng() % 3);
      for (int f = 0; f < flips; ++f) {
        std::size_t at = rng() % header;
        copy[at] = static_cast<char>(copy[at] ^ (1 << (rng() % 8)));
      }
      errors += !try_load(copy, gguf).empty();  // must return: a crash fails the whole binary
    }
    EXPECT_GT(errors, 0) << file;
  }
}

TEST(Loader, CraftedGgufCountsAreRefusedBeforeAllocating) {
  auto head = [](std::uint64_t tensors, std::uint64_t kvs) {
    Builder b;
    b.out = "GGUF";
    b.put<std::uint32_t>(3).put<std::uint64_t>(tensors).put<std::uint64_t>(kvs);
    return b;
  };
  EXPECT_NE(try_load(head(~0ull, 0).out, true).find("tensor count"), std::string::npos);
  EXPECT_NE(try_load(head(0, ~0ull).out, true).find("metadata count"), std::string::npos);
  Builder huge_string = head(0, 1);
  huge_string.put<std::uint64_t>(~0ull >> 1);  // key length
  EXPECT_NE(try_load(huge_string.out + std::string(64, 'x'), true).find("metadata key #0"), std::string::npos);
  Builder huge_array = head(0, 1);
  huge_array.str("tokenizer.ggml.tokens").put<std::uint32_t>(9).put<std::uint32_t>(8).put<std::uint64_t>(1ull << 60);
  EXPECT_NE(try_load(huge_array.out + std::string(64, 'x'), true).find("cannot fit"), std::string::npos);
  Builder version = head(0, 0);
  version.out[4] = 9;
  EXPECT_NE(try_load(version.out, true).find("version 9"), std::string::npos);
  Builder no_arch = head(0, 0);
  no_arch.out += std::string(64, '\0');
  EXPECT_NE(try_load(no_arch.out, true).find("general.architecture"), std::string::npos);
  Builder other_arch = head(0, 1);
  other_arch.str("general.architecture").put<std::uint32_t>(8).str("gpt2");
  other_arch.out += std::string(64, '\0');
  try {
    parse_gguf(span_of(other_arch.out), nullptr);
    FAIL();
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::Unsupported);
    EXPECT_NE(std::string(e.what()).find("gpt2"), std::string::npos);
  }
}

TEST(Loader, MisalignedTensorOffsetIsRefused) {
  MMSB_REQUIRE_SHARED(path, "models/stories260K-f32.gguf");
  std::string bytes = read_bytes(path);
  // The first tensor entry's offset field: find the name, then skip n_dims, dims and type.
  const std::string name = "token_embd.weight";
  std::size_t at = bytes.find(name);
  ASSERT_NE(at, std::string::npos);
  std::size_t offset_field = at + name.size() + 4 + 2 * 8 + 4;
  bytes[offset_field] = static_cast<char>(bytes[offset_field] + 4);
  std::string error = try_load(bytes, true);
  EXPECT_NE(error.find("not a multiple of the alignment"), std::string::npos) << error;
}

TEST(Loader, GgufVersion2LoadsLikeVersion3) {
  MMSB_REQUIRE_SHARED(path, "models/stories260K-Q8_0.gguf");
  std::string bytes = read_bytes(path);
  bytes[4] = 2;  // v2 and v3 share the layout for little-endian files
  EXPECT_EQ(try_load(bytes, true), "");
  bytes[4] = 1;  // v1 had 32-bit counts
  EXPECT_NE(try_load(bytes, true).find("version 1"), std::string::npos);
}

TEST(Loader, Llama2cCheckpointWithSeparateClassifier) {
  MMSB_REQUIRE_SHARED(path, "models/stories260K.bin");
  const std::string shared = read_bytes(path);
  auto shared_owner = std::make_shared<std::string>(shared);
  Model a = parse_llama2c(span_of(*shared_owner), shared_owner);
  // The same weights with a negative vocab size and the embedding appended as the classifier.
  auto separate = std::make_shared<std::string>(shared);
  std::int32_t vocab;
  std::memcpy(&vocab, separate->data() + 20, 4);
  vocab = -vocab;
  std::memcpy(separate->data() + 20, &vocab, 4);
  separate->append(reinterpret_cast<const char*>(a.token_embedding.bytes.data()), a.token_embedding.bytes.size());
  Model b = parse_llama2c(span_of(*separate), separate);
  EXPECT_NE(b.classifier.bytes.data(), b.token_embedding.bytes.data());
  Engine ea(a), eb(b);
  for (int pos = 0; pos < 5; ++pos) {
    auto la = ea.step(1 + pos, pos);
    auto lb = eb.step(1 + pos, pos);
    ASSERT_EQ(0, std::memcmp(la.data(), lb.data(), la.size_bytes()));
  }
  // One float short: the size no longer matches what the header implies, and the message says both.
  std::string error = try_load(separate->substr(0, separate->size() - 4), false);
  EXPECT_NE(error.find("implies"), std::string::npos) << error;
}

TEST(Loader, TokenizerFileIsBoundsChecked) {
  MMSB_REQUIRE_SHARED(path, "models/tok512.bin");
  const std::string full = read_bytes(path);
  EXPECT_NO_THROW(parse_llama2c_tokenizer(span_of(full), 512));
  for (std::size_t n : {0ul, 3ul, 4ul, 100ul, full.size() - 1}) {
    EXPECT_THROW(parse_llama2c_tokenizer(span_of(full.substr(0, n)), 512), Error) << n;
  }
  EXPECT_THROW(parse_llama2c_tokenizer(span_of(full), 1u << 30), Error);
  std::string bad = full;
  std::int32_t huge = 1 << 30;
  std::memcpy(bad.data() + 4 + 4, &huge, 4);  // length of piece 0
  EXPECT_THROW(parse_llama2c_tokenizer(span_of(bad), 512), Error);
}

// --- the mmsb-llm command ----------------------------------------------------------------------------------------

using testing::LlmRun;
LlmRun run(const std::string& args) { return testing::run_llm(args); }

TEST(Cli, GreedyStdoutIsLlama2csByteForByte) {
  MMSB_REQUIRE_SHARED(ref_path, "reference/greedy_llama2c.json");
  MMSB_REQUIRE_SHARED(model, "models/stories260K.bin");
  MMSB_REQUIRE_SHARED(tok, "models/tok512.bin");
  MMSB_REQUIRE_SHARED(gguf, "models/stories260K-f32.gguf");
  auto ref = testing::load_json(ref_path);
  const auto& once = ref["runs"][0];
  const std::string n = std::to_string(once["n_generated"].get<int>());
  LlmRun a = run("-m " + model + " -z " + tok + " -p 'Once upon a time' -n " + n);
  EXPECT_EQ(a.status, 0);
  EXPECT_EQ(a.out, once["stdout_exact"].get<std::string>());
  LlmRun b = run("-m " + gguf + " -p 'Once upon a time' -n " + n);
  EXPECT_EQ(b.out, once["stdout_exact"].get<std::string>());
}

TEST(Cli, ErrorsExitWithCode2) {
  MMSB_REQUIRE_SHARED(model, "models/stories260K.bin");
  EXPECT_EQ(run("-m /nonexistent.gguf -p hi").status, 2);
  EXPECT_EQ(run("-m " + model + " -p hi").status, 2);  // a .bin needs -z
  MMSB_REQUIRE_SHARED(gguf, "models/stories260K-Q8_0.gguf");
  EXPECT_EQ(run("-m " + gguf + " --ctx 4 -p 'a prompt longer than four tokens'").status, 2);
  EXPECT_EQ(run("--no-such-option").status, 2);
  EXPECT_EQ(run("--help").status, 0);
  LlmRun bench = run("bench -m " + gguf + " -p 4 -n 16 -r 1 --json");
  EXPECT_EQ(bench.status, 0);
  EXPECT_NE(bench.out.find("\"tok_per_s\""), std::string::npos);
  EXPECT_NE(bench.out.find("\"prompt_tok_per_s\""), std::string::npos);
}

TEST(Cli, SampledRunsWithTheSameSeedAreIdentical) {
  MMSB_REQUIRE_SHARED(gguf, "models/stories260K-Q4_0.gguf");
  const std::string args = "-m " + gguf + " -p 'Once' -n 40 --temp 0.9 --top-p 0.9 --top-k 40 --seed 3";
  LlmRun a = run(args), b = run(args);
  EXPECT_EQ(a.status, 0);
  EXPECT_EQ(a.out, b.out);
  EXPECT_GT(a.out.size(), 10u);
}

}  // namespace
}  // namespace mmsb::llm
