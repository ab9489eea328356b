// mmsb/llm/make_model.hpp — random-weight Llama models of the standard tinyllamas shapes, written as GGUF v3
// (`mmsb-llm make-model`), so tests and benchmarks measure real model sizes without downloads.
//
//   mmsb::llm::MakeModelOptions o;
//   o.shape = mmsb::llm::model_shape_from_name("s42m");
//   o.type = mmsb::llm::TensorType::Q8_0;
//   o.tokenizer = "../shared/models/tok512.bin";
//   mmsb::llm::make_model(o, "s42m-q8_0.gguf");
//
// The shapes are those of the tinyllamas stories15M / 42M / 110M checkpoints (dim 288 / 512 / 768, hidden 768 /
// 1376 / 2048, 6 / 8 / 12 layers, as many heads as layers), here with the 512-piece tokenizer and 256 positions.
// Weights are drawn uniformly from [-1/sqrt(cols), 1/sqrt(cols)] by a generator seeded per (seed, tensor, row),
// so every type of a shape and seed holds a rounding of the same f32 weights; norm weights are 1. Matrices are
// written in `type` (rows that do not fit its blocks get quantize's fallback type, as llama.cpp does), vectors in
// F32. The file carries the metadata and SentencePiece vocabulary (pieces, scores, token types) that llama.cpp's
// loader expects of a llama model.
//
// With `llama2c_format` the same f32 weights are written as a llama2.c checkpoint instead (the header with a
// negative vocabulary size, i.e. a classifier of its own; the RoPE tables llama2.c's export writes), so llama2.c's
// run.c can be measured on the very weights the GGUF files hold.
//
// Errors (mmsb::Error): InvalidArgument for an unknown shape name, Q8_K as a type, or an output that exists
// without `force`; those of load_llama2c_tokenizer() for the tokenizer; IoError when the file cannot be written.
//
// Thread-safety: make_model() touches only its own file; calls on different files may run concurrently.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "mmsb/llm/kernels.hpp"
#include "mmsb/llm/model.hpp"

namespace mmsb::llm {

struct ModelShape {
  std::string name;  // "s15m"
  ModelConfig config;
};

// s15m, s42m and s110m; Error(InvalidArgument) naming them for anything else.
ModelShape model_shape_from_name(std::string_view name);
std::vector<std::string> model_shape_names();

struct MakeModelOptions {
  ModelShape shape = model_shape_from_name("s15m");
  TensorType type = TensorType::F32;
  std::uint64_t seed = 1;
  std::string tokenizer;        // a llama2.c tokenizer file with shape.config.vocab_size pieces (tok512.bin)
  bool force = false;           // overwrite an existing output
  bool llama2c_format = false;  // a llama2.c checkpoint (type must be F32) instead of GGUF
};

// Writes the model; returns its size in bytes.
std::uint64_t make_model(const MakeModelOptions& options, const std::string& output);

}  // namespace mmsb::llm
