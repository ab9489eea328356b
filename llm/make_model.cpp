// Random-weight models of the tinyllamas shapes, written through the GGUF writer.
#include "mmsb/llm/make_model.hpp"

#include <sys/stat.h>

#include <cerrno>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>

#include "llm/gguf_writer.hpp"
#include "llm/split_mix.hpp"
#include "mmsb/error.hpp"
#include "mmsb/llm/quantize.hpp"

namespace mmsb::llm {

namespace {

ModelShape shape(const char* name, std::uint32_t dim, std::uint32_t hidden, std::uint32_t layers) {
  ModelShape s;
  s.name = name;
  s.config.dim = dim;
  s.config.hidden_dim = hidden;
  s.config.n_layers = layers;
  s.config.n_heads = layers;  // the tinyllamas shapes have as many heads as layers
  s.config.n_kv_heads = layers;
  s.config.vocab_size = 512;
  s.config.seq_len = 256;
  return s;
}

const std::vector<ModelShape>& shapes() {
  static const std::vector<ModelShape> all{shape("s15m", 288, 768, 6), shape("s42m", 512, 1376, 8),
                                           shape("s110m", 768, 2048, 12)};
  return all;
}

// GGUF token types of SentencePiece vocabularies (llama.cpp's convention): 1 normal, 2 unknown, 3 control, 6 byte.
std::int32_t token_type(std::size_t id, const std::string& piece) {
  if (id == 0) return 2;
  if (id <= 2) return 3;
  if (piece.size() == 6 && piece.rfind("<0x", 0) == 0 && piece.back() == '>') return 6;
  return 1;
}

// Spaces in pieces are SentencePiece's U+2581 in GGUF vocabularies (the loader turns them back into spaces).
std::string sentencepiece_spaces(const std::string& piece) {
  std::string out;
  for (char c : piece) {
    if (c == ' ') {
      out += "\xE2\x96\x81";
    } else {
      out += c;
    }
  }
  return out;
}

GgufMetadata metadata_for(const ModelShape& s, const Vocabulary& vocab) {
  const ModelConfig& c = s.config;
  GgufMetadata m;
  m.add_string("general.architecture", "llama");
  m.add_string("general.name", "mmsb-" + s.name + "-random");
  m.add_u32("llama.context_length", c.seq_len);
  m.add_u32("llama.embedding_length", c.dim);
  m.add_u32("llama.feed_forward_length", c.hidden_dim);
  m.add_u32("llama.block_count", c.n_layers);
  m.add_u32("llama.attention.head_count", c.n_heads);
  m.add_u32("llama.attention.head_count_kv", c.n_kv_heads);
  m.add_u32("llama.rope.dimension_count", c.head_size());
  m.add_f32("llama.attention.layer_norm_rms_epsilon", c.rms_eps);
  m.add_string("tokenizer.ggml.model", "llama");
  std::vector<std::string> pieces;
  std::vector<std::int32_t> types;
  for (std::size_t i = 0; i < vocab.pieces.size(); ++i) {
    pieces.push_back(sentencepiece_spaces(vocab.pieces[i]));
    types.push_back(token_type(i, vocab.pieces[i]));
  }
  m.add_string_array("tokenizer.ggml.tokens", pieces);
  m.add_f32_array("tokenizer.ggml.scores", vocab.scores);
  m.add_i32_array("tokenizer.ggml.token_type", types);
  m.add_u32("tokenizer.ggml.unknown_token_id", 0);
  m.add_u32("tokenizer.ggml.bos_token_id", vocab.bos);
  m.add_u32("tokenizer.ggml.eos_token_id", vocab.eos);
  return m;
}

// The tensors in the order llama.cpp's converters write them; matrices in `type` or its fallback.
std::vector<GgufTensorPlan> tensor_plan(const ModelConfig& c, TensorType type) {
  const std::uint64_t dim = c.dim, hidden = c.hidden_dim, kv = c.kv_dim(), vocab = c.vocab_size;
  std::vector<GgufTensorPlan> plan;
  auto matrix = [&](std::string name, std::uint64_t cols, std::uint64_t rows) {
    plan.push_back({std::move(name), {cols, rows}, quantize_type_for_row(type, cols)});
  };
  auto vector = [&](std::string name) { plan.push_back({std::move(name), {dim}, TensorType::F32}); };
  matrix("token_embd.weight", dim, vocab);
  vector("output_norm.weight");
  matrix("output.weight", dim, vocab);
  for (std::uint32_t l = 0; l < c.n_layers; ++l) {
    const std::string p = "blk." + std::to_string(l) + ".";
    matrix(p + "attn_q.weight", dim, dim);
    matrix(p + "attn_k.weight", dim, kv);
    matrix(p + "attn_v.weight", dim, kv);
    matrix(p + "attn_output.weight", dim, dim);
    vector(p + "attn_norm.weight");
    matrix(p + "ffn_gate.weight", dim, hidden);
    matrix(p + "ffn_down.weight", hidden, dim);
    matrix(p + "ffn_up.weight", dim, hidden);
    vector(p + "ffn_norm.weight");
  }
  return plan;
}

// The llama2.c checkpoint of the same weights: the tensors of `plan` (GGUF names) in llama2.c's order.
std::uint64_t write_llama2c(const std::string& output, const ModelConfig& c, const std::vector<GgufTensorPlan>& plan,
                            const GgufRowSource& rows) {
  const std::string tmp = output + ".tmp";
  std::FILE* f = std::fopen(tmp.c_str(), "wb");
  if (!f) throw Error(ErrorCode::IoError, "cannot create " + tmp + ": " + std::strerror(errno));
  std::uint64_t written = 0;
  auto write = [&](const void* p, std::size_t n) {
    if (std::fwrite(p, 1, n, f) != n) {
      std::fclose(f);
      std::remove(tmp.c_str());
      throw Error(ErrorCode::IoError, "cannot write " + tmp + " (disk full?)");
    }
    written += n;
  };
  const std::int32_t header[7] = {static_cast<std::int32_t>(c.dim),         static_cast<std::int32_t>(c.hidden_dim),
                                  static_cast<std::int32_t>(c.n_layers),    static_cast<std::int32_t>(c.n_heads),
                                  static_cast<std::int32_t>(c.n_kv_heads),
                                  -static_cast<std::int32_t>(c.vocab_size),  // negative: a separate classifier
                                  static_cast<std::int32_t>(c.seq_len)};
  write(header, sizeof header);
  std::vector<float> row;
  auto tensor = [&](const std::string& name) {
    std::size_t i = 0;
    while (plan[i].name != name) ++i;
    const std::uint64_t n = plan[i].dims.size() > 1 ? plan[i].dims[1] : 1;
    row.resize(plan[i].dims[0]);
    for (std::uint64_t r = 0; r < n; ++r) {
      rows(i, r, row.data());
      write(row.data(), row.size() * sizeof(float));
    }
  };
  auto per_layer = [&](const char* kind) {
    for (std::uint32_t l = 0; l < c.n_layers; ++l) tensor("blk." + std::to_string(l) + "." + kind + ".weight");
  };
  tensor("token_embd.weight");
  for (const char* kind :
       {"attn_norm", "attn_q", "attn_k", "attn_v", "attn_output", "ffn_norm", "ffn_gate", "ffn_down", "ffn_up"}) {
    per_layer(kind);
  }
  tensor("output_norm.weight");
  const std::size_t half = c.head_size() / 2;
  for (int part = 0; part < 2; ++part) {  // freq_cis_real, freq_cis_imag: unused by run.c, written as its export does
    for (std::uint32_t pos = 0; pos < c.seq_len; ++pos) {
      for (std::size_t i = 0; i < half; ++i) {
        const float freq = 1.0f / std::pow(c.rope_base, static_cast<float>(2 * i) / static_cast<float>(c.head_size()));
        const float v = part == 0 ? std::cos(static_cast<float>(pos) * freq) : std::sin(static_cast<float>(pos) * freq);
        write(&v, sizeof v);
      }
    }
  }
  tensor("output.weight");
  if (std::fclose(f) != 0 || std::rename(tmp.c_str(), output.c_str()) != 0) {
    std::remove(tmp.c_str());
    throw Error(ErrorCode::IoError, "cannot write " + output + ": " + std::strerror(errno));
  }
  return written;
}

}  // namespace

ModelShape model_shape_from_name(std::string_view name) {
  for (const ModelShape& s : shapes()) {
    if (s.name == name) return s;
  }
  std::string names;
  for (const std::string& n : model_shape_names()) names += (names.empty() ? "" : ", ") + n;
  throw Error(ErrorCode::InvalidArgument, "unknown model shape '" + std::string(name) + "'; use one of " + names);
}

std::vector<std::string> model_shape_names() {
  std::vector<std::string> out;
  for (const ModelShape& s : shapes()) out.push_back(s.name);
  return out;
}

std::uint64_t make_model(const MakeModelOptions& options, const std::string& output) {
  if (options.type == TensorType::Q8_K) {
    throw Error(ErrorCode::InvalidArgument, "Q8_K is an activation type; choose q8_0 or q6_k for 8/6-bit weights");
  }
  struct stat st {};
  if (!options.force && ::stat(output.c_str(), &st) == 0) {
    throw Error(ErrorCode::InvalidArgument, output + " already exists; pass --force to overwrite it");
  }
  const ModelConfig& c = options.shape.config;
  const Vocabulary vocab = load_llama2c_tokenizer(options.tokenizer, c.vocab_size);
  const std::vector<GgufTensorPlan> plan = tensor_plan(c, options.type);
  auto rows = [&](std::size_t tensor, std::uint64_t row, float* out) {
    const GgufTensorPlan& t = plan[tensor];
    if (t.dims.size() == 1) {
      std::fill(out, out + t.dims[0], 1.0f);  // norm weights
      return;
    }
    // seeded per row: rows are independent of the order (and of the type) in which they are written
    SplitMix rng{options.seed * 0x100000001B3ull ^ (static_cast<std::uint64_t>(tensor) << 40) ^ row};
    const float range = 1.0f / std::sqrt(static_cast<float>(t.dims[0]));
    for (std::uint64_t i = 0; i < t.dims[0]; ++i) out[i] = rng.uniform(range);
  };
  if (options.llama2c_format) {
    if (options.type != TensorType::F32) {
      throw Error(ErrorCode::InvalidArgument, "llama2.c checkpoints hold f32 weights only; use --type f32");
    }
    return write_llama2c(output, c, plan, rows);
  }
  return write_gguf(output, metadata_for(options.shape, vocab), plan, 32, rows);
}

}  // namespace mmsb::llm
