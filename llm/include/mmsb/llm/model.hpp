// mmsb/llm/model.hpp — Llama-architecture model files: llama2.c checkpoints and GGUF v2/v3.
//
// Loading maps the file read-only and describes its tensors as spans into the mapping; no weight is copied.
// Every offset, size, count and string length read from the file is checked against the bytes that remain before
// anything is allocated or dereferenced, so a truncated, misaligned or crafted file gives an mmsb::Error that
// names the field (tensor or key) and the expected and found values, never a crash or a huge allocation.
//
//   mmsb::llm::Model model = mmsb::llm::load_model("stories260K-Q8_0.gguf");
//   std::printf("%u layers, vocab %u\n", model.config.n_layers, model.config.vocab_size);
//
// Error codes: NotFound (no such file), IoError (cannot open or map it), Corruption (bytes that break the
// format), Unsupported (a valid file this engine cannot run: another architecture, tensor type or version).
//
// Thread-safety: a Model is an immutable value after loading; share it freely. The mapping lives as long as any
// copy of the Model (or any runtime page that holds `file`).
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "mmsb/llm/kernels.hpp"

namespace mmsb::llm {

// A read-only memory mapping of a whole file.
class MappedFile {
 public:
  // Throws Error(NotFound) for a missing file, Error(IoError) when it cannot be opened or mapped.
  static std::shared_ptr<const MappedFile> open(const std::string& path);
  ~MappedFile();
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;
  std::span<const std::byte> bytes() const noexcept { return {data_, size_}; }
  const std::string& path() const noexcept { return path_; }

 private:
  MappedFile() = default;
  const std::byte* data_ = nullptr;
  std::size_t size_ = 0;
  std::string path_;
};

struct ModelConfig {
  std::uint32_t dim = 0;         // embedding width
  std::uint32_t hidden_dim = 0;  // feed-forward width
  std::uint32_t n_layers = 0;
  std::uint32_t n_heads = 0;
  std::uint32_t n_kv_heads = 0;  // grouped-query attention: n_heads is a multiple of it
  std::uint32_t vocab_size = 0;
  std::uint32_t seq_len = 0;  // positions the KV cache holds
  float rms_eps = 1e-5f;
  float rope_base = 10000.0f;
  std::uint32_t head_size() const noexcept { return dim / n_heads; }
  std::uint32_t kv_dim() const noexcept { return head_size() * n_kv_heads; }
};

// One weight matrix (or vector: rows == 1), `rows` rows of `cols` elements, rows `row_stride` bytes apart.
struct Tensor {
  std::string name;
  TensorType type = TensorType::F32;
  std::uint64_t rows = 0;
  std::uint64_t cols = 0;
  std::uint64_t row_stride = 0;
  std::span<const std::byte> bytes;  // rows * row_stride bytes inside the mapped file
};

struct LayerTensors {
  Tensor attn_norm, wq, wk, wv, wo, ffn_norm, w1, w2, w3;  // w1 = gate, w2 = down, w3 = up
};

// A SentencePiece vocabulary: pieces (U+2581 already turned into spaces), merge scores, and the special ids.
struct Vocabulary {
  std::vector<std::string> pieces;
  std::vector<float> scores;
  std::uint32_t bos = 1;
  std::uint32_t eos = 2;
};

struct Model {
  std::shared_ptr<const void> owner;  // keeps the bytes below alive (the mapping)
  std::string format;                 // "llama2.c" or "gguf v3", for messages
  ModelConfig config;
  Tensor token_embedding, final_norm, classifier;
  std::vector<LayerTensors> layers;
  std::optional<Vocabulary> vocabulary;    // GGUF files carry their tokenizer; llama2.c checkpoints do not
  std::shared_ptr<const MappedFile> file;  // the mapped file (load_model); nullptr for bytes parsed from memory
};

struct LoadOptions {
  // Positions of the KV cache; 0 = the file's context length, but at least 512 (llama2c-converted GGUF files
  // report 128 for models trained on 512 positions).
  std::uint32_t context_length = 0;
};

// Detects the format by its first bytes (GGUF magic, else a llama2.c header) and loads it.
Model load_model(const std::string& path, const LoadOptions& options = {});
// Parsers over bytes already in memory; `owner` keeps them alive in the returned Model.
Model parse_gguf(std::span<const std::byte> bytes, std::shared_ptr<const void> owner, const LoadOptions& options = {});
Model parse_llama2c(std::span<const std::byte> bytes, std::shared_ptr<const void> owner,
                    const LoadOptions& options = {});
// A llama2.c tokenizer file (tok512.bin): int32 max piece length, then per piece f32 score, int32 length, bytes.
Vocabulary load_llama2c_tokenizer(const std::string& path, std::uint32_t vocab_size);
Vocabulary parse_llama2c_tokenizer(std::span<const std::byte> bytes, std::uint32_t vocab_size);

// A GGUF file read without model semantics (LoRA adapters, tools): its metadata scalars and its tensor table,
// with the same bounds checks as parse_gguf(). Tensor bytes are spans into `bytes`.
struct GgufTensorEntry {
  std::string name;
  std::uint32_t type = 0;            // ggml type id, possibly one this engine cannot run
  std::vector<std::uint64_t> dims;   // GGUF order: dims[0] is the length of a row
  std::span<const std::byte> bytes;  // the data, checked to lie in the file; empty for an unsupported type
};
struct GgufContents {
  std::uint32_t version = 0;
  std::map<std::string, std::string> strings;  // string-valued keys
  std::map<std::string, double> numbers;       // integer, float and bool keys
  std::vector<GgufTensorEntry> tensors;        // in name order
};
GgufContents parse_gguf_contents(std::span<const std::byte> bytes);

}  // namespace mmsb::llm
