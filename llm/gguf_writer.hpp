// llm/gguf_writer.hpp — writes GGUF v3 files: metadata key/value pairs, the tensor table, then each tensor row by
// row, converted from floats to the tensor's type as it is written. Used by `mmsb-llm quantize` (rows dequantized
// from the input) and `mmsb-llm make-model` (rows drawn from a seeded generator).
//
//   GgufMetadata meta;
//   meta.add_string("general.architecture", "llama");
//   std::vector<GgufTensorPlan> plan{{"output_norm.weight", {288}, TensorType::F32}};
//   write_gguf("out.gguf", meta, plan, 32, [](std::size_t, std::uint64_t, float* row) { row[0] = 1; /* ... */ });
//
// Thread-safety: none needed; each call writes its own file.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "mmsb/llm/kernels.hpp"

namespace mmsb::llm {

// Metadata pairs in their GGUF encoding, in the order added.
class GgufMetadata {
 public:
  void add_string(std::string_view key, std::string_view value);
  void add_u32(std::string_view key, std::uint32_t value);
  void add_f32(std::string_view key, float value);
  void add_string_array(std::string_view key, const std::vector<std::string>& values);
  void add_f32_array(std::string_view key, std::span<const float> values);
  void add_i32_array(std::string_view key, std::span<const std::int32_t> values);
  // One pair already in GGUF encoding (key, value type, value), copied as it is from another file.
  void add_encoded(std::span<const std::byte> pair);
  std::uint64_t count() const noexcept { return count_; }
  std::span<const std::byte> bytes() const noexcept { return bytes_; }

 private:
  void key(std::string_view key, std::uint32_t value_type);
  void raw(const void* p, std::size_t n);
  template <class T>
  void put(T v) {
    raw(&v, sizeof v);
  }
  std::vector<std::byte> bytes_;
  std::uint64_t count_ = 0;
};

// A tensor to write: GGUF dimension order (dims[0] is the row length), its rows in `type`.
struct GgufTensorPlan {
  std::string name;
  std::vector<std::uint64_t> dims;
  TensorType type = TensorType::F32;
};

// Writes row `row` of tensor `tensor` (an index into the plan) as dims[0] floats into `out`.
using GgufRowSource = std::function<void(std::size_t tensor, std::uint64_t row, float* out)>;
// Called after each tensor with (tensors done, tensors in all, the tensor's name).
using GgufProgress = std::function<void(std::size_t, std::size_t, std::string_view)>;

// Writes the file to `path` + ".tmp" and renames it to `path` (a failed run leaves no partial file). Every row
// length must be a whole number of its type's blocks (Error(InvalidArgument) otherwise); `alignment` is a power
// of two, at least 8. Returns the bytes written; Error(IoError) when the file cannot be written.
std::uint64_t write_gguf(const std::string& path, const GgufMetadata& metadata, std::span<const GgufTensorPlan> plan,
                         std::uint64_t alignment, const GgufRowSource& rows, const GgufProgress& progress = {});

}  // namespace mmsb::llm
