// mmsb/llm/quantize.hpp — rewrites a GGUF model with its matrices in another tensor type
// (`mmsb-llm quantize IN OUT TYPE`).
//
//   mmsb::llm::QuantizeOptions o;
//   o.type = mmsb::llm::quantize_type_from_name("q4_k");
//   mmsb::llm::QuantizeReport r = mmsb::llm::quantize_gguf("stories260K-f32.gguf", "out-q4_k.gguf", o);
//
// Every tensor of two or more dimensions is converted (dequantized to f32 first when the input is quantized);
// vectors (norm weights) stay F32. A matrix whose rows are not a whole number of the type's blocks gets a wider
// fallback type, as llama.cpp does: Q4_K -> Q5_0, Q5_K -> Q5_1, Q6_K -> Q8_0, TQ1_0 / TQ2_0 -> Q4_0, and F16 when
// the rows do not fit 32-value blocks either. The metadata is copied as it is (except general.file_type, which
// would describe the input); the output is GGUF v3 with the input's alignment, written to a temporary file and
// renamed, so a failed run leaves no partial OUT.
//
// With `pad_to`, the widths are zero-padded first (see QuantizeOptions): a model too narrow for the 256-value
// super-blocks can then be run in every type.
//
// Errors (mmsb::Error): InvalidArgument for an unknown type name or an OUT that exists without `force`;
// NotFound / IoError / Corruption / Unsupported for the input as load_model() reports them; IoError when OUT
// cannot be written.
//
// Thread-safety: quantize_gguf() touches only its own files and buffers; calls on different files may run
// concurrently.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <string_view>

#include "mmsb/llm/kernels.hpp"

namespace mmsb::llm {

// "q4_k", "Q4_K", "tq1_0", "f16", ... -> the type; throws Error(InvalidArgument) naming the accepted names.
// Q8_K is refused: it is the activation type, which llama.cpp does not read from files.
TensorType quantize_type_from_name(std::string_view name);
// The accepted names, for help texts: "f32, f16, q8_0, ...".
std::string quantize_type_names();

// The type a matrix with rows of `cols` values gets when `target` is asked for (see the fallbacks above).
TensorType quantize_type_for_row(TensorType target, std::uint64_t cols) noexcept;

// Quantizes `n` floats (a whole number of the type's blocks) into `out` (row_bytes(type, n) bytes).
void quantize_row(TensorType type, const float* x, void* out, std::size_t n);

struct QuantizeOptions {
  TensorType type = TensorType::Q8_0;
  bool force = false;  // overwrite an existing OUT
  // 0, or zero-pad the model's widths to multiples of this (a multiple of 32): the embedding width and the
  // feed-forward width grow to the next multiple (the embedding width further until the heads still group), the
  // extra heads and units have zero weights, and the norm weights and RMSNorm epsilon are rescaled so the padded
  // model computes the same function (exactly, up to the order of float sums, when the embedding width grows by
  // a power of 4, as stories260K's 64 -> 256). With 256 every matrix of a small model fits the super-block types.
  std::uint64_t pad_to = 0;
  // Called after each tensor with (tensors done, tensors in all, the tensor's name); may be empty.
  std::function<void(std::size_t, std::size_t, std::string_view)> progress;
};

struct QuantizeReport {
  std::size_t tensors = 0;
  std::map<std::string, std::size_t> types;  // type name -> tensors written in it
  std::uint64_t input_bytes = 0, output_bytes = 0;
};

QuantizeReport quantize_gguf(const std::string& input, const std::string& output, const QuantizeOptions& options);

}  // namespace mmsb::llm
