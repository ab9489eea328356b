// Hostile model files (issue 16): sizes computed from outside bytes overflow-checked for every tensor, used by the
// model or not, and for LoRA adapters; each input that once crashed is kept as a regression.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "llm/gguf_writer.hpp"
#include "llm/llm_test_support.hpp"
#include "mmsb/llm/lora.hpp"
#include "mmsb/llm/model.hpp"
#include "mmsb/llm/quantize.hpp"
#include "support/temp_dir.hpp"

#ifndef MMSB_FUZZ_GGUF_BINARY
#error "MMSB_FUZZ_GGUF_BINARY must name the mmsb-fuzz-gguf program; tests/CMakeLists.txt sets it"
#endif

namespace mmsb::llm {
namespace {

namespace fs = std::filesystem;

struct TableEntry {
  std::string name;
  std::vector<std::uint64_t> dims;
  TensorType type;
  std::uint64_t offset;
};

template <class T>
void put(std::string& out, T v) {
  out.append(reinterpret_cast<const char*>(&v), sizeof v);
}

// A complete Llama model of width 32 (one layer, four heads, eight tokens, zero F32 weights), plus `extra` table
// entries that point wherever they say (their data is not written).
std::string tiny_gguf(const std::vector<TableEntry>& extra) {
  constexpr std::uint64_t dim = 32, vocab = 8;
  GgufMetadata meta;
  meta.add_string("general.architecture", "llama");
  meta.add_u32("llama.context_length", 16);
  meta.add_u32("llama.embedding_length", dim);
  meta.add_u32("llama.feed_forward_length", dim);
  meta.add_u32("llama.block_count", 1);
  meta.add_u32("llama.attention.head_count", 4);
  meta.add_string_array("tokenizer.ggml.tokens", {"<unk>", "<s>", "</s>", "a", "b", "c", "d", "e"});
  std::vector<TableEntry> table;
  std::uint64_t offset = 0;
  auto add = [&](const std::string& name, std::vector<std::uint64_t> dims) {
    table.push_back({name, dims, TensorType::F32, offset});
    std::uint64_t floats = 1;
    for (std::uint64_t d : dims) floats *= d;
    offset += (floats * 4 + 31) / 32 * 32;
  };
  add("token_embd.weight", {dim, vocab});
  add("output_norm.weight", {dim});
  for (const char* m : {"attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_down", "ffn_up"}) {
    add(std::string("blk.0.") + m + ".weight", {dim, dim});
  }
  add("blk.0.attn_norm.weight", {dim});
  add("blk.0.ffn_norm.weight", {dim});
  const std::uint64_t data_bytes = offset;
  table.insert(table.end(), extra.begin(), extra.end());
  std::string out = "GGUF";
  put<std::uint32_t>(out, 3);
  put<std::uint64_t>(out, table.size());
  put<std::uint64_t>(out, meta.count());
  out.append(reinterpret_cast<const char*>(meta.bytes().data()), meta.bytes().size());
  for (const TableEntry& t : table) {
    put<std::uint64_t>(out, t.name.size());
    out += t.name;
    put<std::uint32_t>(out, static_cast<std::uint32_t>(t.dims.size()));
    for (std::uint64_t d : t.dims) put<std::uint64_t>(out, d);
    put<std::uint32_t>(out, static_cast<std::uint32_t>(t.type));
    put<std::uint64_t>(out, t.offset);
  }
  out.resize((out.size() + 31) / 32 * 32);
  out.resize(out.size() + data_bytes);
  return out;
}

// Writes `bytes` to a temporary file removed with the object.
struct TempFile {
  explicit TempFile(const std::string& bytes, const std::string& name) : path(fs::temp_directory_path() / name) {
    std::FILE* f = std::fopen(path.c_str(), "wb");
    std::fwrite(bytes.data(), 1, bytes.size(), f);
    std::fclose(f);
  }
  ~TempFile() { fs::remove(path); }
  fs::path path;
};

// The code and message of the error `f` throws; code Internal and "no error" when it returns.
template <class F>
std::pair<ErrorCode, std::string> error_of(F&& f) {
  try {
    f();
  } catch (const Error& e) {
    return {e.code(), e.what()};
  }
  return {ErrorCode::Internal, "no error"};
}

std::span<const std::byte> span_of(const std::string& s) { return std::as_bytes(std::span(s.data(), s.size())); }

// Loading, reading the contents and quantizing must each refuse the file with Corruption naming `tensor`, and
// quantize must leave no output behind.
void expect_every_reader_refuses(const std::string& bytes, const std::string& tensor, const std::string& why) {
  auto owner = std::make_shared<std::string>(bytes);
  for (const auto& [code, message] : {error_of([&] { parse_gguf(span_of(*owner), owner); }),
                                      error_of([&] { parse_gguf_contents(span_of(*owner)); })}) {
    EXPECT_EQ(code, ErrorCode::Corruption) << message;
    EXPECT_NE(message.find(tensor), std::string::npos) << message;
    EXPECT_NE(message.find(why), std::string::npos) << message;
  }
  const TempFile in(bytes, "mmsb-hostile-" + std::to_string(::getpid()) + ".gguf");
  const fs::path out = in.path.string() + ".q8_0";
  QuantizeOptions o;
  o.type = TensorType::Q8_0;
  const auto [code, message] = error_of([&] { quantize_gguf(in.path, out, o); });
  EXPECT_EQ(code, ErrorCode::Corruption) << message;
  EXPECT_NE(message.find(tensor), std::string::npos) << message;
  EXPECT_FALSE(fs::exists(out));
  EXPECT_FALSE(fs::exists(out.string() + ".tmp"));
}

TEST(HostileTensors, TheTinyModelItselfLoadsAndQuantizes) {
  const std::string bytes = tiny_gguf({});
  auto owner = std::make_shared<std::string>(bytes);
  EXPECT_EQ(parse_gguf(span_of(*owner), owner).config.dim, 32u);
  const TempFile in(bytes, "mmsb-tiny-" + std::to_string(::getpid()) + ".gguf");
  const fs::path out = in.path.string() + ".q8_0";
  QuantizeOptions o;
  o.type = TensorType::Q8_0;
  EXPECT_EQ(quantize_gguf(in.path, out, o).types.at("Q8_0"), 8u);  // the embedding and the seven matrices
  EXPECT_EQ(load_model(out).layers[0].wq.type, TensorType::Q8_0);
  fs::remove(out);
}

// The crash of issue 16: quantize walked an unused Q8_0 tensor whose row size wrapped around 2^64 to a small
// number, passed the bounds check, and read past the mapping (SIGSEGV in dequantize_f32 under ASan).
TEST(HostileTensors, UnusedTensorWhoseRowSizeOverflowsIsRefusedByEveryReader) {
  const std::uint64_t wraps = ~std::uint64_t{0} - 31;  // a multiple of 32 whose Q8_0 row needs 2^64 x 34/32 bytes
  expect_every_reader_refuses(tiny_gguf({{"junk.weight", {wraps, 1}, TensorType::Q8_0, 0}}), "junk.weight",
                              "more than 2^64 bytes");
}

// A 1-D tensor's size overflowing (2^62 floats) used to reach std::vector as a huge length (std::length_error).
TEST(HostileTensors, OneDimensionalTensorWhoseSizeOverflowsIsRefused) {
  expect_every_reader_refuses(tiny_gguf({{"junk_norm.weight", {std::uint64_t{1} << 62}, TensorType::F32, 0}}),
                              "junk_norm.weight", "more than 2^64 bytes");
}

TEST(HostileTensors, UnusedTensorOutsideTheFileOrWithPartialBlocksIsRefused) {
  expect_every_reader_refuses(tiny_gguf({{"junk.weight", {32, 4}, TensorType::F32, std::uint64_t{1} << 40}}),
                              "junk.weight", "outside the data section");
  expect_every_reader_refuses(tiny_gguf({{"junk.weight", {33, 4}, TensorType::Q8_0, 0}}), "junk.weight",
                              "not a whole number of blocks");
}

// Every input the GGUF fuzzer (mmsb-fuzz-gguf) ever failed on (fuzz/regressions.txt), written again by the fuzzer
// from its seed and iteration (--write-input) rather than kept as files, and parsed by the reader it went to.
TEST(HostileTensors, FuzzFoundInputsAreRefusedCleanly) {
  struct FuzzInput {
    int seed;
    int iteration;
    bool lora;  // drawn from the fuzzer's LoRA adapter seed: parsed as an adapter
  };
  const FuzzInput inputs[] = {{777, 16089, true}, {780, 28474, true}};  // issue 16
  mmsb::testing::TempDir dir("mmsb-fuzz-inputs");
  for (const FuzzInput& input : inputs) {
    const std::string name = "seed " + std::to_string(input.seed) + " iteration " + std::to_string(input.iteration);
    const fs::path file = dir.path() / "input.gguf";
    const auto run =
        testing::run_program(MMSB_FUZZ_GGUF_BINARY,
                             "--seed " + std::to_string(input.seed) + " --start " + std::to_string(input.iteration) +
                                 " --iterations 1 --write-input " + file.string(),
                             /*with_stderr=*/true);
    // The fuzzer builds its inputs from ../shared/models: a missing model is exit status 2 and named in `out`.
    ASSERT_EQ(run.status, 0) << name << ": mmsb-fuzz-gguf failed: " << run.out;
    const std::string bytes = testing::read_bytes(file.string());
    ASSERT_FALSE(bytes.empty()) << name << ": mmsb-fuzz-gguf wrote no input";
    auto [code, message] = error_of([&] {
      if (input.lora) {
        parse_lora_gguf(span_of(bytes), name);
      } else {
        auto owner = std::make_shared<std::string>(bytes);
        parse_gguf(span_of(*owner), owner);
      }
    });
    EXPECT_EQ(code, ErrorCode::Corruption) << name << ": " << message;
  }
}

}  // namespace
}  // namespace mmsb::llm
