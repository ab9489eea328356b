// The GGUF rewriter behind `mmsb-llm quantize`, and the row quantizers of the 32-value block types (the
// super-block types are in kquants.cpp). The input is first loaded with load_model(), which checks it fully;
// the walk below reads the header again to copy the metadata bytes and still checks every length it reads.
#include "mmsb/llm/quantize.hpp"

#include <sys/stat.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <map>
#include <memory>
#include <span>
#include <vector>

#include "llm/gguf_writer.hpp"
#include "llm/kquants.hpp"
#include "mmsb/error.hpp"
#include "mmsb/llm/model.hpp"

namespace mmsb::llm {

namespace {

[[noreturn]] void corrupt(const std::string& what) { throw Error(ErrorCode::Corruption, what); }

constexpr std::size_t kBlock = 32;

inline void store_half(std::uint8_t* p, float f) {
  const std::uint16_t h = fp32_to_fp16(f);
  std::memcpy(p, &h, 2);
}
inline float stored_half(const std::uint8_t* p) {
  std::uint16_t h;
  std::memcpy(&h, p, 2);
  return fp16_to_fp32(h);
}
inline int clamp_round(float v, int lo, int hi) { return static_cast<int>(std::clamp<long>(std::lround(v), lo, hi)); }

// The value of largest magnitude, with its sign.
float signed_max(const float* x) {
  float v = 0;
  for (std::size_t j = 0; j < kBlock; ++j) {
    if (std::fabs(x[j]) > std::fabs(v)) v = x[j];
  }
  return v;
}

// Q4_0 (Bits = 4) / Q5_0 (5): the value of largest magnitude maps to the most negative level.
template <int Bits>
void quantize_symmetric(const float* x, std::uint8_t* b) {
  constexpr int half = 1 << (Bits - 1);
  store_half(b, signed_max(x) / -static_cast<float>(half));
  const float d = stored_half(b);
  int q[kBlock];
  for (std::size_t j = 0; j < kBlock; ++j) q[j] = d != 0 ? clamp_round(x[j] / d, -half, half - 1) + half : half;
  std::uint8_t* nibbles = b + 2;
  if constexpr (Bits == 5) {
    std::uint32_t high = 0;
    for (std::size_t j = 0; j < kBlock; ++j) high |= static_cast<std::uint32_t>(q[j] >> 4) << j;
    std::memcpy(b + 2, &high, 4);
    nibbles = b + 6;
  }
  for (std::size_t j = 0; j < kBlock / 2; ++j)
    nibbles[j] = static_cast<std::uint8_t>((q[j] & 15) | ((q[j + 16] & 15) << 4));
}

// Q4_1 (Bits = 4) / Q5_1 (5): the block's range [min, max] in 2^Bits - 1 steps.
template <int Bits>
void quantize_affine(const float* x, std::uint8_t* b) {
  constexpr int levels = (1 << Bits) - 1;
  float lo = x[0], hi = x[0];
  for (std::size_t j = 0; j < kBlock; ++j) lo = std::min(lo, x[j]), hi = std::max(hi, x[j]);
  store_half(b, (hi - lo) / levels);
  store_half(b + 2, lo);
  const float d = stored_half(b), m = stored_half(b + 2);
  int q[kBlock];
  for (std::size_t j = 0; j < kBlock; ++j) q[j] = d != 0 ? clamp_round((x[j] - m) / d, 0, levels) : 0;
  std::uint8_t* nibbles = b + 4;
  if constexpr (Bits == 5) {
    std::uint32_t high = 0;
    for (std::size_t j = 0; j < kBlock; ++j) high |= static_cast<std::uint32_t>(q[j] >> 4) << j;
    std::memcpy(b + 4, &high, 4);
    nibbles = b + 8;
  }
  for (std::size_t j = 0; j < kBlock / 2; ++j)
    nibbles[j] = static_cast<std::uint8_t>((q[j] & 15) | ((q[j + 16] & 15) << 4));
}

void quantize_q8_0(const float* x, std::uint8_t* b) {
  float amax = 0;
  for (std::size_t j = 0; j < kBlock; ++j) amax = std::max(amax, std::fabs(x[j]));
  store_half(b, amax / 127.0f);
  const float d = stored_half(b);
  for (std::size_t j = 0; j < kBlock; ++j) {
    b[2 + j] = static_cast<std::uint8_t>(static_cast<std::int8_t>(d != 0 ? clamp_round(x[j] / d, -127, 127) : 0));
  }
}

struct NamedType {
  const char* name;
  TensorType type;
};
constexpr NamedType kNames[] = {
    {"f32", TensorType::F32},   {"f16", TensorType::F16},   {"q8_0", TensorType::Q8_0},   {"q4_0", TensorType::Q4_0},
    {"q4_1", TensorType::Q4_1}, {"q5_0", TensorType::Q5_0}, {"q5_1", TensorType::Q5_1},   {"q4_k", TensorType::Q4_K},
    {"q5_k", TensorType::Q5_K}, {"q6_k", TensorType::Q6_K}, {"tq1_0", TensorType::TQ1_0}, {"tq2_0", TensorType::TQ2_0},
};

// Bounds-checked little-endian reads over the input's header.
class Reader {
 public:
  explicit Reader(std::span<const std::byte> bytes) : bytes_(bytes) {}
  std::uint64_t pos() const { return pos_; }
  void need(std::uint64_t n, const char* what) const {
    if (n > bytes_.size() - pos_) corrupt(std::string("GGUF header: ") + what + " runs past the end of the file");
  }
  template <class T>
  T read(const char* what) {
    need(sizeof(T), what);
    T v;
    std::memcpy(&v, bytes_.data() + pos_, sizeof(T));
    pos_ += sizeof(T);
    return v;
  }
  std::string string(const char* what) {
    const auto n = read<std::uint64_t>(what);
    need(n, what);
    std::string s(reinterpret_cast<const char*>(bytes_.data() + pos_), n);
    pos_ += n;
    return s;
  }
  void skip(std::uint64_t n, const char* what) {
    need(n, what);
    pos_ += n;
  }
  std::span<const std::byte> bytes(std::uint64_t start, std::uint64_t n) const { return bytes_.subspan(start, n); }
  // Skips one metadata value of GGUF value type `t`.
  void skip_value(std::uint32_t t, int depth) {
    static constexpr std::uint64_t kSizes[] = {1, 1, 2, 2, 4, 4, 4, 1, 0, 0, 8, 8, 8};
    if (t > 12) corrupt("GGUF header: unknown metadata value type " + std::to_string(t));
    if (t == 8) return (void)skip(read<std::uint64_t>("string length"), "string");
    if (t != 9) return skip(kSizes[t], "metadata value");
    if (depth > 2) corrupt("GGUF header: arrays nested deeper than 2");
    const auto elem = read<std::uint32_t>("array element type");
    const auto count = read<std::uint64_t>("array length");
    if (elem > 12) corrupt("GGUF header: unknown array element type " + std::to_string(elem));
    if (elem != 8 && elem != 9) {
      if (count > (bytes_.size() - pos_) / kSizes[elem]) corrupt("GGUF header: an array runs past the end of the file");
      return skip(count * kSizes[elem], "array");
    }
    if (count > (bytes_.size() - pos_) / 8) corrupt("GGUF header: an array runs past the end of the file");
    for (std::uint64_t i = 0; i < count; ++i) skip_value(elem, depth + 1);
  }

 private:
  std::span<const std::byte> bytes_;
  std::uint64_t pos_ = 0;
};

struct TensorEntry {
  std::string name;
  std::vector<std::uint64_t> dims;  // as written (padded)
  TensorType in_type = TensorType::F32, out_type = TensorType::F32;
  std::span<const std::byte> in;     // the input's rows, checked by parse_gguf_contents()
  std::uint64_t rows = 0, cols = 0;  // as read
  std::uint64_t out_rows = 0, out_cols = 0;
  float scale = 1.0f;  // norm vectors of a padded model
};

// Zero padding of a Llama model's widths (QuantizeOptions::pad_to).
struct Padding {
  std::uint64_t dim = 0, hidden = 0, kv = 0;  // the new widths
  std::uint32_t heads = 0, kv_heads = 0;
  float eps = 0, norm_scale = 1;
};

bool ends_with(const std::string& s, std::string_view suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

Padding plan_padding(const ModelConfig& c, std::uint64_t multiple) {
  Padding p;
  const std::uint64_t head = c.head_size(), group = c.n_heads / c.n_kv_heads;
  p.dim = (c.dim + multiple - 1) / multiple * multiple;
  while (p.dim % head != 0 || (p.dim / head) % group != 0) p.dim += multiple;
  p.hidden = (c.hidden_dim + multiple - 1) / multiple * multiple;
  p.heads = static_cast<std::uint32_t>(p.dim / head);
  p.kv_heads = static_cast<std::uint32_t>(p.heads / group);
  p.kv = p.kv_heads * head;
  // RMSNorm divides by the width: the padded zeros shrink the mean square by dim / dim', which the epsilon and
  // the norm weights undo (exactly when dim' / dim is a power of 4).
  const double ratio = static_cast<double>(c.dim) / static_cast<double>(p.dim);
  p.eps = static_cast<float>(c.rms_eps * ratio);
  p.norm_scale = static_cast<float>(std::sqrt(ratio));
  return p;
}

// The padded [cols, rows] of a tensor of a Llama GGUF, by its name.
void pad_shape(TensorEntry& t, const ModelConfig& c, const Padding& p) {
  t.out_cols = t.cols;
  t.out_rows = t.rows;
  auto fail = [&] {
    throw Error(ErrorCode::Unsupported, "quantize --pad: tensor '" + t.name + "' is not one of a Llama model");
  };
  if (ends_with(t.name, "token_embd.weight") || t.name == "output.weight") {
    t.out_cols = p.dim;
  } else if (ends_with(t.name, "norm.weight")) {
    t.out_cols = p.dim;
    t.scale = p.norm_scale;
  } else if (ends_with(t.name, "attn_q.weight") || ends_with(t.name, "attn_output.weight")) {
    t.out_cols = t.out_rows = p.dim;
  } else if (ends_with(t.name, "attn_k.weight") || ends_with(t.name, "attn_v.weight")) {
    t.out_cols = p.dim;
    t.out_rows = p.kv;
  } else if (ends_with(t.name, "ffn_gate.weight") || ends_with(t.name, "ffn_up.weight")) {
    t.out_cols = p.dim;
    t.out_rows = p.hidden;
  } else if (ends_with(t.name, "ffn_down.weight")) {
    t.out_cols = p.hidden;
    t.out_rows = p.dim;
  } else {
    fail();
  }
  if (t.out_cols < t.cols || t.out_rows < t.rows || (t.cols != c.dim && t.cols != c.hidden_dim)) fail();
  t.dims = t.rows > 1 || t.dims.size() > 1 ? std::vector<std::uint64_t>{t.out_cols, t.out_rows}
                                           : std::vector<std::uint64_t>{t.out_cols};
}

constexpr std::string_view kPaddedKeys[] = {"llama.embedding_length", "llama.feed_forward_length",
                                            "llama.attention.head_count", "llama.attention.head_count_kv",
                                            "llama.attention.layer_norm_rms_epsilon"};

void check_paths(const std::string& input, const std::string& output, const QuantizeOptions& options) {
  if (options.type == TensorType::Q8_K) {
    throw Error(ErrorCode::InvalidArgument, "Q8_K is an activation type; choose q8_0 or q6_k for 8/6-bit weights");
  }
  if (options.pad_to != 0 && (options.pad_to % 32 != 0 || options.pad_to > 4096)) {
    throw Error(ErrorCode::InvalidArgument,
                "--pad must be a multiple of 32 up to 4096 (256 makes every row fit the K-quants)");
  }
  struct stat st {};
  if (::stat(output.c_str(), &st) != 0) return;
  if (!options.force) throw Error(ErrorCode::InvalidArgument, output + " already exists; pass --force to overwrite it");
  struct stat in_st {};
  if (::stat(input.c_str(), &in_st) == 0 && in_st.st_dev == st.st_dev && in_st.st_ino == st.st_ino) {
    throw Error(ErrorCode::InvalidArgument, "the output " + output + " is the input file; choose another name");
  }
}

// The input's metadata, copied pair by pair (minus general.file_type, which would describe the input, and the
// widths that padding replaces, added anew); returns the alignment it declares.
std::uint64_t copy_metadata(Reader& r, const QuantizeOptions& options, const Padding& pad, GgufMetadata& out) {
  const auto n_kv = r.read<std::uint64_t>("metadata count");
  std::uint64_t alignment = 32;
  for (std::uint64_t i = 0; i < n_kv; ++i) {
    const std::uint64_t start = r.pos();
    const std::string key = r.string("metadata key");
    const auto type = r.read<std::uint32_t>("metadata value type");
    if (key == "general.alignment" && type == 4) {
      alignment = r.read<std::uint32_t>("general.alignment");
    } else {
      r.skip_value(type, 0);
    }
    const bool replaced =
        options.pad_to != 0 && std::find(std::begin(kPaddedKeys), std::end(kPaddedKeys), key) != std::end(kPaddedKeys);
    if (key != "general.file_type" && !replaced) out.add_encoded(r.bytes(start, r.pos() - start));
  }
  if (alignment == 0 || alignment % 8 != 0 || (alignment & (alignment - 1)) != 0) {
    corrupt("GGUF general.alignment " + std::to_string(alignment));
  }
  if (options.pad_to) {
    out.add_u32(kPaddedKeys[0], static_cast<std::uint32_t>(pad.dim));
    out.add_u32(kPaddedKeys[1], static_cast<std::uint32_t>(pad.hidden));
    out.add_u32(kPaddedKeys[2], pad.heads);
    out.add_u32(kPaddedKeys[3], pad.kv_heads);
    out.add_f32(kPaddedKeys[4], pad.eps);
  }
  return alignment;
}

// The tensor table in file order, each entry with its checked input bytes and its output shape and type.
std::vector<TensorEntry> read_tensor_table(Reader& r, std::uint64_t n_tensors, const GgufContents& contents,
                                           const ModelConfig& config, const QuantizeOptions& options,
                                           const Padding& pad) {
  std::map<std::string_view, const GgufTensorEntry*> by_name;
  for (const GgufTensorEntry& e : contents.tensors) by_name.emplace(e.name, &e);
  std::vector<TensorEntry> tensors(n_tensors);  // n_tensors: checked by parse_gguf_contents
  for (TensorEntry& t : tensors) {
    t.name = r.string("tensor name");
    const auto n_dims = r.read<std::uint32_t>("tensor dimension count");
    if (n_dims == 0 || n_dims > 4)
      corrupt("GGUF tensor '" + t.name + "' has " + std::to_string(n_dims) + " dimensions");
    for (std::uint32_t d = 0; d < n_dims; ++d) t.dims.push_back(r.read<std::uint64_t>("tensor dimension"));
    const auto type = r.read<std::uint32_t>("tensor type");
    r.skip(8, "tensor offset");
    const auto found = by_name.find(t.name);
    if (found == by_name.end()) corrupt("GGUF tensor '" + t.name + "' changed between two reads of the file");
    if (!is_supported_type(type)) {
      throw Error(ErrorCode::Unsupported,
                  "GGUF tensor '" + t.name + "' has type id " + std::to_string(type) + ", which quantize cannot read");
    }
    t.in_type = static_cast<TensorType>(type);
    t.in = found->second->bytes;
    t.cols = t.dims[0];
    t.rows = t.in.size() / row_bytes(t.in_type, t.cols);  // parse_gguf_contents: a whole number of rows
    if (options.pad_to) {
      pad_shape(t, config, pad);
    } else {
      t.out_cols = t.cols;
      t.out_rows = t.rows;
    }
    t.out_type = t.out_rows > 1 ? quantize_type_for_row(options.type, t.out_cols) : TensorType::F32;
  }
  return tensors;
}

}  // namespace

TensorType quantize_type_from_name(std::string_view name) {
  std::string lower(name);
  for (char& c : lower) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  for (const NamedType& n : kNames) {
    if (lower == n.name) return n.type;
  }
  throw Error(ErrorCode::InvalidArgument, "unknown tensor type '" + std::string(name) + "'; use one of " +
                                              quantize_type_names() +
                                              (lower == "q8_k" ? " (Q8_K is for activations only)" : ""));
}

std::string quantize_type_names() {
  std::string out;
  for (const NamedType& n : kNames) out += (out.empty() ? "" : ", ") + std::string(n.name);
  return out;
}

TensorType quantize_type_for_row(TensorType target, std::uint64_t cols) noexcept {
  if (row_bytes(target, cols) != 0) return target;
  TensorType fallback = TensorType::F16;
  switch (target) {
    case TensorType::Q4_K:
      fallback = TensorType::Q5_0;
      break;
    case TensorType::Q5_K:
      fallback = TensorType::Q5_1;
      break;
    case TensorType::Q6_K:
      fallback = TensorType::Q8_0;
      break;
    case TensorType::TQ1_0:
    case TensorType::TQ2_0:
      fallback = TensorType::Q4_0;
      break;
    default:
      break;
  }
  return row_bytes(fallback, cols) != 0 ? fallback : TensorType::F16;
}

void quantize_row(TensorType type, const float* x, void* out, std::size_t n) {
  auto* b = static_cast<std::uint8_t*>(out);
  if (is_super_block_type(type)) return quantize_row_super_block(type, x, out, n);
  const std::uint32_t bytes = type_traits(type).block_bytes;
  switch (type) {
    case TensorType::F32:
      std::memcpy(out, x, n * sizeof(float));
      return;
    case TensorType::F16:
      for (std::size_t i = 0; i < n; ++i) store_half(b + 2 * i, x[i]);
      return;
    default:
      break;
  }
  for (std::size_t i = 0; i < n; i += kBlock, x += kBlock, b += bytes) {
    switch (type) {
      case TensorType::Q8_0:
        quantize_q8_0(x, b);
        break;
      case TensorType::Q4_0:
        quantize_symmetric<4>(x, b);
        break;
      case TensorType::Q5_0:
        quantize_symmetric<5>(x, b);
        break;
      case TensorType::Q4_1:
        quantize_affine<4>(x, b);
        break;
      case TensorType::Q5_1:
        quantize_affine<5>(x, b);
        break;
      default:
        throw Error(ErrorCode::InvalidArgument, "quantize_row: no quantizer for this type");
    }
  }
}

QuantizeReport quantize_gguf(const std::string& input, const std::string& output, const QuantizeOptions& options) {
  check_paths(input, output, options);
  // The full checks: a file that loads as a model, and whose every tensor (used by the model or not) has a size
  // that fits 64 bits and lies inside the file, is one this walk can copy.
  const ModelConfig config = load_model(input).config;
  const Padding pad = options.pad_to ? plan_padding(config, options.pad_to) : Padding{};
  const std::shared_ptr<const MappedFile> file = MappedFile::open(input);
  const std::span<const std::byte> bytes = file->bytes();
  const GgufContents contents = parse_gguf_contents(bytes);
  Reader r(bytes);
  if (r.read<std::uint32_t>("magic") != 0x46554747u) corrupt(input + " is not a GGUF file (quantize reads GGUF only)");
  r.skip(4, "version");
  const auto n_tensors = r.read<std::uint64_t>("tensor count");
  GgufMetadata metadata;
  const std::uint64_t alignment = copy_metadata(r, options, pad, metadata);
  const std::vector<TensorEntry> tensors = read_tensor_table(r, n_tensors, contents, config, options, pad);

  std::vector<GgufTensorPlan> plan;
  QuantizeReport report;
  for (const TensorEntry& t : tensors) {
    plan.push_back({t.name, t.dims, t.out_type});
    ++report.types[std::string(*tensor_type_name(static_cast<std::uint32_t>(t.out_type)))];
  }
  const Kernels& k = kernels_for(SimdLevel::Scalar);
  auto source = [&](std::size_t i, std::uint64_t row, float* out) {
    const TensorEntry& t = tensors[i];
    std::fill(out, out + t.out_cols, 0.0f);  // padding: zero columns, zero rows
    if (row < t.rows) {
      const std::uint64_t stride = t.in.size() / t.rows;
      k.dequantize[static_cast<std::uint32_t>(t.in_type)](t.in.data() + row * stride, out, t.cols);
    }
    if (t.scale != 1.0f) {
      for (std::uint64_t c = 0; c < t.out_cols; ++c) out[c] *= t.scale;
    }
  };
  report.input_bytes = bytes.size();
  report.output_bytes = write_gguf(output, metadata, plan, alignment, source, options.progress);
  report.tensors = tensors.size();
  return report;
}

}  // namespace mmsb::llm
