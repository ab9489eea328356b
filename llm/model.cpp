// Model loaders. The GGUF reader follows the format's published layout (header, metadata key/value pairs, tensor
// table, aligned data section) and checks every count against the bytes left before it allocates or loops.
#include "mmsb/llm/model.hpp"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <limits>
#include <map>
#include <string_view>
#include <unordered_set>

#include "mmsb/error.hpp"

namespace mmsb::llm {

namespace {

[[noreturn]] void corrupt(const std::string& what) { throw Error(ErrorCode::Corruption, what); }
[[noreturn]] void unsupported(const std::string& what) { throw Error(ErrorCode::Unsupported, what); }

std::string num(std::uint64_t v) { return std::to_string(v); }

// Multiplies with an overflow check; `what` names the quantity for the message.
std::uint64_t mul_checked(std::uint64_t a, std::uint64_t b, const std::string& what) {
  std::uint64_t out;
  if (__builtin_mul_overflow(a, b, &out)) corrupt(what + " overflows 64 bits (" + num(a) + " x " + num(b) + ")");
  return out;
}

// Reads little-endian fields from a byte range, refusing to read past its end.
class Cursor {
 public:
  Cursor(std::span<const std::byte> bytes, std::string context) : bytes_(bytes), context_(std::move(context)) {}
  std::uint64_t pos() const noexcept { return pos_; }
  std::uint64_t remaining() const noexcept { return bytes_.size() - pos_; }
  void need(std::uint64_t n, const std::string& what) const {
    if (n > remaining()) {
      corrupt(context_ + ": " + what + " needs " + num(n) + " bytes at offset " + num(pos_) + " but only " +
              num(remaining()) + " remain (truncated file?)");
    }
  }
  template <class T>
  T read(const std::string& what) {
    need(sizeof(T), what);
    T v;
    std::memcpy(&v, bytes_.data() + pos_, sizeof(T));
    pos_ += sizeof(T);
    return v;
  }
  std::string_view read_bytes(std::uint64_t n, const std::string& what) {
    need(n, what);
    std::string_view v(reinterpret_cast<const char*>(bytes_.data() + pos_), n);
    pos_ += n;
    return v;
  }
  void skip(std::uint64_t n, const std::string& what) {
    need(n, what);
    pos_ += n;
  }

 private:
  std::span<const std::byte> bytes_;
  std::string context_;
  std::uint64_t pos_ = 0;
};

std::string spaces_from_sentencepiece(std::string_view piece) {
  std::string out;
  out.reserve(piece.size());
  for (std::size_t i = 0; i < piece.size(); ++i) {
    if (i + 2 < piece.size() && static_cast<unsigned char>(piece[i]) == 0xE2 &&
        static_cast<unsigned char>(piece[i + 1]) == 0x96 && static_cast<unsigned char>(piece[i + 2]) == 0x81) {
      out.push_back(' ');  // U+2581 LOWER ONE EIGHTH BLOCK is SentencePiece's visible space
      i += 2;
    } else {
      out.push_back(piece[i]);
    }
  }
  return out;
}

// --- GGUF ------------------------------------------------------------------------------------------------------

// Value types of GGUF metadata (format constants).
enum class GgufType : std::uint32_t {
  U8 = 0,
  I8 = 1,
  U16 = 2,
  I16 = 3,
  U32 = 4,
  I32 = 5,
  F32 = 6,
  Bool = 7,
  String = 8,
  Array = 9,
  U64 = 10,
  I64 = 11,
  F64 = 12,
};
constexpr std::uint32_t kGgufTypeCount = 13;

std::uint64_t scalar_size(GgufType t) {
  switch (t) {
    case GgufType::U8:
    case GgufType::I8:
    case GgufType::Bool:
      return 1;
    case GgufType::U16:
    case GgufType::I16:
      return 2;
    case GgufType::U32:
    case GgufType::I32:
    case GgufType::F32:
      return 4;
    case GgufType::U64:
    case GgufType::I64:
    case GgufType::F64:
      return 8;
    default:
      return 0;
  }
}

const char* gguf_type_name(GgufType t) {
  static const char* names[] = {"uint8", "int8",   "uint16", "int16",  "uint32", "int32",  "float32",
                                "bool",  "string", "array",  "uint64", "int64",  "float64"};
  auto i = static_cast<std::uint32_t>(t);
  return i < kGgufTypeCount ? names[i] : "unknown";
}

// A metadata value: scalars decoded; strings and arrays kept as positions in the file (decoded on demand).
struct GgufValue {
  GgufType type = GgufType::U8;
  std::uint64_t offset = 0;  // where the value starts (for arrays: the first element)
  GgufType elem_type = GgufType::U8;
  std::uint64_t count = 0;   // arrays
  std::string_view text;     // strings
  double number = 0;         // numeric scalars
  std::int64_t integer = 0;  // integer scalars (and bool)
  bool is_integer = false;
};

struct GgufTensorInfo {
  std::string name;
  std::vector<std::uint64_t> dims;
  std::uint32_t type = 0;
  std::uint64_t offset = 0;
  std::uint64_t rows = 1;  // the product of dims[1..]
  std::uint64_t size = 0;  // bytes, checked to lie in the data section; 0 for a type this engine cannot read
};

std::string read_gguf_string(Cursor& c, const std::string& what) {
  std::uint64_t len = c.read<std::uint64_t>(what + " length");
  return std::string(c.read_bytes(len, what + " (" + num(len) + " bytes)"));
}

GgufType read_gguf_type(Cursor& c, const std::string& what) {
  auto t = c.read<std::uint32_t>(what + " type");
  if (t >= kGgufTypeCount) corrupt("GGUF " + what + " has unknown value type " + num(t));
  return static_cast<GgufType>(t);
}

void read_gguf_value(Cursor& c, GgufType t, GgufValue& v, const std::string& what, int depth);

// Arrays are recorded by position and walked to find their end.
void read_gguf_array(Cursor& c, GgufValue& v, const std::string& what, int depth) {
  if (depth > 2) corrupt("GGUF " + what + ": arrays nested deeper than 2");
  v.elem_type = read_gguf_type(c, what + " element");
  v.count = c.read<std::uint64_t>(what + " element count");
  v.offset = c.pos();
  if (v.elem_type == GgufType::String || v.elem_type == GgufType::Array) {
    // Each element takes at least 8 bytes (a length): refuse impossible counts before looping.
    if (v.count > c.remaining() / 8) {
      corrupt("GGUF " + what + ": array of " + num(v.count) + " " + gguf_type_name(v.elem_type) +
              " elements cannot fit in the " + num(c.remaining()) + " bytes left");
    }
    GgufValue elem;
    for (std::uint64_t i = 0; i < v.count; ++i) {
      read_gguf_value(c, v.elem_type, elem, what + "[" + num(i) + "]", depth + 1);
    }
  } else {
    c.skip(mul_checked(v.count, scalar_size(v.elem_type), "GGUF " + what + " array size"),
           what + " array of " + num(v.count) + " " + gguf_type_name(v.elem_type));
  }
}

// Integers of every width are kept as int64 (U64 saturates), with `number` mirroring them.
void read_gguf_scalar(Cursor& c, GgufType t, GgufValue& v, const std::string& what) {
  auto integer = [&](std::int64_t value) {
    v.integer = value;
    v.is_integer = true;
  };
  switch (t) {
    case GgufType::U8:
      integer(c.read<std::uint8_t>(what));
      break;
    case GgufType::I8:
      integer(c.read<std::int8_t>(what));
      break;
    case GgufType::Bool:
      integer(c.read<std::uint8_t>(what) != 0);
      break;
    case GgufType::U16:
      integer(c.read<std::uint16_t>(what));
      break;
    case GgufType::I16:
      integer(c.read<std::int16_t>(what));
      break;
    case GgufType::U32:
      integer(c.read<std::uint32_t>(what));
      break;
    case GgufType::I32:
      integer(c.read<std::int32_t>(what));
      break;
    case GgufType::U64: {
      std::uint64_t u = c.read<std::uint64_t>(what);
      integer(u > static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max())
                  ? std::numeric_limits<std::int64_t>::max()
                  : static_cast<std::int64_t>(u));
      break;
    }
    case GgufType::I64:
      integer(c.read<std::int64_t>(what));
      break;
    case GgufType::F32:
      v.number = c.read<float>(what);
      break;
    case GgufType::F64:
      v.number = c.read<double>(what);
      break;
    default:
      break;
  }
  if (v.is_integer) v.number = static_cast<double>(v.integer);
}

// Reads (or skips) one value of type `t`.
void read_gguf_value(Cursor& c, GgufType t, GgufValue& v, const std::string& what, int depth) {
  v.type = t;
  v.offset = c.pos();
  if (t == GgufType::String) {
    std::uint64_t len = c.read<std::uint64_t>(what + " string length");
    v.text = c.read_bytes(len, what + " string of " + num(len) + " bytes");
  } else if (t == GgufType::Array) {
    read_gguf_array(c, v, what, depth);
  } else {
    read_gguf_scalar(c, t, v, what);
  }
}

class GgufFile {
 public:
  GgufFile(std::span<const std::byte> bytes) : bytes_(bytes) { parse(); }

  const GgufValue* find(const std::string& key) const {
    auto it = kv_.find(key);
    return it == kv_.end() ? nullptr : &it->second;
  }
  std::string get_string(const std::string& key) const {
    const GgufValue* v = find(key);
    if (!v) corrupt("GGUF key '" + key + "' is missing");
    if (v->type != GgufType::String) {
      corrupt("GGUF key '" + key + "' should be a string but is " + gguf_type_name(v->type));
    }
    return std::string(v->text);
  }
  // An integer key within [lo, hi]; `fallback` when absent (nullopt: required).
  std::uint64_t get_uint(const std::string& key, std::uint64_t lo, std::uint64_t hi,
                         std::optional<std::uint64_t> fallback = std::nullopt) const {
    const GgufValue* v = find(key);
    if (!v) {
      if (fallback) return *fallback;
      corrupt("GGUF key '" + key + "' is missing");
    }
    if (!v->is_integer) corrupt("GGUF key '" + key + "' should be an integer but is " + gguf_type_name(v->type));
    if (v->integer < 0 || static_cast<std::uint64_t>(v->integer) < lo || static_cast<std::uint64_t>(v->integer) > hi) {
      corrupt("GGUF key '" + key + "' is " + std::to_string(v->integer) + ", expected " + num(lo) + ".." + num(hi));
    }
    return static_cast<std::uint64_t>(v->integer);
  }
  float get_float(const std::string& key, float fallback) const {
    const GgufValue* v = find(key);
    if (!v) return fallback;
    if (v->type != GgufType::F32 && v->type != GgufType::F64 && !v->is_integer) {
      corrupt("GGUF key '" + key + "' should be a number but is " + gguf_type_name(v->type));
    }
    return static_cast<float>(v->number);
  }
  // The elements of an array key of the given element type; `expected_count` is checked.
  const GgufValue& array(const std::string& key, GgufType elem, std::uint64_t expected_count) const {
    const GgufValue* v = find(key);
    if (!v) corrupt("GGUF key '" + key + "' is missing");
    if (v->type != GgufType::Array || v->elem_type != elem) {
      corrupt("GGUF key '" + key + "' should be an array of " + gguf_type_name(elem) + " but is " +
              (v->type == GgufType::Array ? std::string("an array of ") + gguf_type_name(v->elem_type)
                                          : std::string(gguf_type_name(v->type))));
    }
    if (v->count != expected_count) {
      corrupt("GGUF key '" + key + "' has " + num(v->count) + " elements, expected " + num(expected_count));
    }
    return *v;
  }

  std::uint32_t version() const noexcept { return version_; }
  const std::map<std::string, GgufValue>& metadata() const noexcept { return kv_; }
  const std::map<std::string, GgufTensorInfo>& tensors() const noexcept { return tensors_; }
  std::uint64_t data_start() const noexcept { return data_start_; }
  std::span<const std::byte> bytes() const noexcept { return bytes_; }

 private:
  void parse() {
    Cursor c(bytes_, "GGUF header");
    std::string_view magic = c.read_bytes(4, "magic");
    if (magic != "GGUF") corrupt("not a GGUF file: the first 4 bytes are not 'GGUF'");
    version_ = c.read<std::uint32_t>("version");
    if (version_ != 2 && version_ != 3) {
      unsupported("GGUF version " + num(version_) + " is not supported (expected 2 or 3)");
    }
    const std::uint64_t tensor_count = c.read<std::uint64_t>("tensor count");
    const std::uint64_t kv_count = c.read<std::uint64_t>("metadata count");
    // A key/value pair takes at least 12 bytes, a tensor entry at least 24: refuse impossible counts up front.
    if (kv_count > c.remaining() / 12) {
      corrupt("GGUF metadata count " + num(kv_count) + " cannot fit in the " + num(c.remaining()) + " bytes left");
    }
    if (tensor_count > c.remaining() / 24) {
      corrupt("GGUF tensor count " + num(tensor_count) + " cannot fit in the " + num(c.remaining()) + " bytes left");
    }
    for (std::uint64_t i = 0; i < kv_count; ++i) {
      std::string key = read_gguf_string(c, "metadata key #" + num(i));
      GgufType t = read_gguf_type(c, "metadata '" + key + "'");
      GgufValue v;
      read_gguf_value(c, t, v, "metadata '" + key + "'", 0);
      if (!kv_.emplace(key, v).second) corrupt("GGUF metadata key '" + key + "' appears twice");
    }
    for (std::uint64_t i = 0; i < tensor_count; ++i) {
      GgufTensorInfo info;
      info.name = read_gguf_string(c, "tensor #" + num(i) + " name");
      const std::string what = "tensor '" + info.name + "'";
      auto n_dims = c.read<std::uint32_t>(what + " dimension count");
      if (n_dims == 0 || n_dims > 4) corrupt("GGUF " + what + " has " + num(n_dims) + " dimensions, expected 1..4");
      std::uint64_t elements = 1;
      for (std::uint32_t d = 0; d < n_dims; ++d) {
        std::uint64_t dim = c.read<std::uint64_t>(what + " dimension " + num(d));
        if (dim == 0) corrupt("GGUF " + what + " has a zero dimension");
        elements = mul_checked(elements, dim, "GGUF " + what + " element count");
        info.dims.push_back(dim);
      }
      info.rows = elements / info.dims[0];
      info.type = c.read<std::uint32_t>(what + " type");
      info.offset = c.read<std::uint64_t>(what + " data offset");
      if (!tensors_.emplace(info.name, info).second) corrupt("GGUF tensor name '" + info.name + "' appears twice");
    }
    alignment_ = get_uint("general.alignment", 1, 1u << 20, 32);
    if ((alignment_ & (alignment_ - 1)) != 0)
      corrupt("GGUF general.alignment " + num(alignment_) + " is not a power of two");
    data_start_ = (c.pos() + alignment_ - 1) / alignment_ * alignment_;
    if (data_start_ > bytes_.size()) {
      corrupt("GGUF data section would start at offset " + num(data_start_) + ", past the end of the " +
              num(bytes_.size()) + "-byte file (truncated file?)");
    }
    for (auto& [name, info] : tensors_) {
      if (info.offset % alignment_ != 0) {
        corrupt("GGUF tensor '" + name + "' data offset " + num(info.offset) + " is not a multiple of the alignment " +
                num(alignment_));
      }
      check_extent(info);
    }
  }

  // Every tensor of a readable type, used by the model or not, must have a size that fits 64 bits and lie inside
  // the data section: later readers (quantize, LoRA) take these sizes as checked.
  void check_extent(GgufTensorInfo& info) const {
    if (!is_supported_type(info.type)) return;
    const auto type = static_cast<TensorType>(info.type);
    const std::uint64_t stride = row_bytes(type, info.dims[0]);
    if (stride == 0) {
      const std::uint64_t block = type_traits(type).block_elements;
      corrupt("GGUF tensor '" + info.name + "' rows of " + num(info.dims[0]) + " " +
              std::string(*tensor_type_name(info.type)) +
              (info.dims[0] % block != 0 ? " values are not a whole number of blocks of " + num(block)
                                         : " values take more than 2^64 bytes"));
    }
    info.size = mul_checked(stride, info.rows, "GGUF tensor '" + info.name + "' size");
    const std::uint64_t available = bytes_.size() - data_start_;
    if (info.offset > available || available - info.offset < info.size) {
      corrupt("GGUF tensor '" + info.name + "' data [" + num(info.offset) + ", +" + num(info.size) +
              ") lies outside the data section of " + num(available) + " bytes (truncated file?)");
    }
  }

  std::span<const std::byte> bytes_;
  std::uint32_t version_ = 0;
  std::uint64_t alignment_ = 32;
  std::uint64_t data_start_ = 0;
  std::map<std::string, GgufValue> kv_;
  std::map<std::string, GgufTensorInfo> tensors_;
};

// Looks up a tensor and checks its shape ([cols, rows] in GGUF order), type and extent.
Tensor gguf_tensor(const GgufFile& f, const std::string& name, std::uint64_t cols, std::uint64_t rows,
                   bool vector_f32_only) {
  auto it = f.tensors().find(name);
  if (it == f.tensors().end()) corrupt("GGUF tensor '" + name + "' is missing");
  const GgufTensorInfo& info = it->second;
  std::uint64_t found_cols = info.dims[0];
  const std::uint64_t found_rows = info.rows;
  if (found_cols != cols || found_rows != rows) {
    corrupt("GGUF tensor '" + name + "' has shape [" + num(found_cols) + ", " + num(found_rows) + "], expected [" +
            num(cols) + ", " + num(rows) + "]");
  }
  if (!is_supported_type(info.type)) {
    unsupported("GGUF tensor '" + name + "' has type id " + num(info.type) +
                ", which this engine does not support (F32, F16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K, Q6_K, "
                "Q8_K, TQ1_0, TQ2_0)");
  }
  Tensor t;
  t.name = name;
  t.type = static_cast<TensorType>(info.type);
  if (vector_f32_only && t.type != TensorType::F32) {
    unsupported("GGUF tensor '" + name + "' is " + std::string(*tensor_type_name(info.type)) +
                "; norm weights must be F32");
  }
  t.rows = rows;
  t.cols = cols;
  t.row_stride = row_bytes(t.type, cols);  // nonzero and in the file: GgufFile checked every tensor
  t.bytes = f.bytes().subspan(f.data_start() + info.offset, info.size);
  return t;
}

std::uint32_t as_u32(std::uint64_t v) { return static_cast<std::uint32_t>(v); }

void check_config(const ModelConfig& c, const std::string& format) {
  auto fail = [&](const std::string& what) { corrupt(format + " header: " + what); };
  if (c.dim == 0 || c.hidden_dim == 0 || c.n_layers == 0 || c.n_heads == 0 || c.n_kv_heads == 0 || c.vocab_size == 0 ||
      c.seq_len == 0) {
    fail("a dimension is zero (dim " + num(c.dim) + ", hidden " + num(c.hidden_dim) + ", layers " + num(c.n_layers) +
         ", heads " + num(c.n_heads) + ", kv heads " + num(c.n_kv_heads) + ", vocab " + num(c.vocab_size) +
         ", positions " + num(c.seq_len) + ")");
  }
  constexpr std::uint32_t kLimit = 1u << 20;  // far beyond any Llama; keeps buffer sizes sane
  if (c.dim > kLimit || c.hidden_dim > kLimit || c.n_layers > 4096 || c.vocab_size > (1u << 24) || c.seq_len > kLimit) {
    fail("implausible dimensions (dim " + num(c.dim) + ", hidden " + num(c.hidden_dim) + ", layers " + num(c.n_layers) +
         ", vocab " + num(c.vocab_size) + ", positions " + num(c.seq_len) + ")");
  }
  if (c.dim % c.n_heads != 0) fail("dim " + num(c.dim) + " is not a multiple of the head count " + num(c.n_heads));
  if (c.head_size() % 2 != 0) fail("head size " + num(c.head_size()) + " is odd; RoPE rotates pairs");
  if (c.n_heads % c.n_kv_heads != 0) {
    fail("head count " + num(c.n_heads) + " is not a multiple of the kv head count " + num(c.n_kv_heads));
  }
  if (!(c.rms_eps > 0.0f && c.rms_eps < 1.0f))
    fail("RMSNorm epsilon " + std::to_string(c.rms_eps) + " is out of (0, 1)");
  if (!(c.rope_base > 1.0f && c.rope_base < 1e12f))
    fail("RoPE base " + std::to_string(c.rope_base) + " is out of range");
}

std::uint32_t context_positions(std::uint64_t file_value, const LoadOptions& options) {
  if (options.context_length) return options.context_length;
  return static_cast<std::uint32_t>(std::max<std::uint64_t>(file_value, 512));
}

// --- llama2.c --------------------------------------------------------------------------------------------------

constexpr std::uint64_t kLlama2cHeaderBytes = 7 * 4;

}  // namespace

Model parse_gguf(std::span<const std::byte> bytes, std::shared_ptr<const void> owner, const LoadOptions& options) {
  GgufFile f(bytes);
  const std::string arch = f.get_string("general.architecture");
  if (arch != "llama") unsupported("GGUF architecture '" + arch + "' is not supported (only 'llama')");
  Model m;
  m.owner = std::move(owner);
  m.format = "gguf v" + num(f.version());
  ModelConfig& c = m.config;
  constexpr std::uint64_t kMax = 1u << 24;
  c.dim = as_u32(f.get_uint("llama.embedding_length", 1, kMax));
  c.hidden_dim = as_u32(f.get_uint("llama.feed_forward_length", 1, kMax));
  c.n_layers = as_u32(f.get_uint("llama.block_count", 1, 4096));
  c.n_heads = as_u32(f.get_uint("llama.attention.head_count", 1, kMax));
  c.n_kv_heads = as_u32(f.get_uint("llama.attention.head_count_kv", 1, kMax, c.n_heads));
  c.seq_len = context_positions(f.get_uint("llama.context_length", 1, kMax), options);
  c.rms_eps = f.get_float("llama.attention.layer_norm_rms_epsilon", 1e-5f);
  c.rope_base = f.get_float("llama.rope.freq_base", 10000.0f);
  const GgufValue& tokens = [&]() -> const GgufValue& {
    const GgufValue* v = f.find("tokenizer.ggml.tokens");
    if (!v || v->type != GgufType::Array || v->elem_type != GgufType::String) {
      corrupt("GGUF key 'tokenizer.ggml.tokens' is missing or not an array of strings");
    }
    return *v;
  }();
  if (tokens.count == 0 || tokens.count > kMax) corrupt("GGUF vocabulary has " + num(tokens.count) + " tokens");
  c.vocab_size = as_u32(tokens.count);
  check_config(c, m.format);
  if (const GgufValue* rope_dims = f.find("llama.rope.dimension_count")) {
    if (!rope_dims->is_integer || rope_dims->integer != static_cast<std::int64_t>(c.head_size())) {
      unsupported("GGUF llama.rope.dimension_count is " + std::to_string(rope_dims->integer) +
                  ", expected the head size " + num(c.head_size()) + " (partial RoPE is not supported)");
    }
  }

  // Vocabulary: pieces, scores (default 0), special ids (separator/padding may be 0xFFFFFFFF: absent).
  Vocabulary vocab;
  {
    Cursor cur(f.bytes(), "GGUF vocabulary");
    cur.skip(tokens.offset, "vocabulary start");
    vocab.pieces.reserve(tokens.count);
    for (std::uint64_t i = 0; i < tokens.count; ++i) {
      std::uint64_t len = cur.read<std::uint64_t>("token " + num(i) + " length");
      vocab.pieces.push_back(spaces_from_sentencepiece(cur.read_bytes(len, "token " + num(i))));
    }
    vocab.scores.assign(tokens.count, 0.0f);
    if (f.find("tokenizer.ggml.scores")) {
      const GgufValue& scores = f.array("tokenizer.ggml.scores", GgufType::F32, tokens.count);
      std::memcpy(vocab.scores.data(), f.bytes().data() + scores.offset, tokens.count * sizeof(float));
    }
    if (f.find("tokenizer.ggml.token_type")) f.array("tokenizer.ggml.token_type", GgufType::I32, tokens.count);
    vocab.bos = as_u32(f.get_uint("tokenizer.ggml.bos_token_id", 0, c.vocab_size - 1, 1));
    vocab.eos = as_u32(f.get_uint("tokenizer.ggml.eos_token_id", 0, c.vocab_size - 1, 2));
    const std::string model_kind = f.find("tokenizer.ggml.model") ? f.get_string("tokenizer.ggml.model") : "llama";
    if (model_kind != "llama") {
      unsupported("GGUF tokenizer.ggml.model '" + model_kind + "' is not supported (only SentencePiece 'llama')");
    }
  }
  m.vocabulary = std::move(vocab);

  const std::uint64_t dim = c.dim, hidden = c.hidden_dim, kv = c.kv_dim(), vocab_n = c.vocab_size;
  m.token_embedding = gguf_tensor(f, "token_embd.weight", dim, vocab_n, false);
  m.final_norm = gguf_tensor(f, "output_norm.weight", dim, 1, true);
  m.classifier =
      f.tensors().count("output.weight") ? gguf_tensor(f, "output.weight", dim, vocab_n, false) : m.token_embedding;
  for (std::uint32_t l = 0; l < c.n_layers; ++l) {
    const std::string p = "blk." + num(l) + ".";
    LayerTensors t;
    t.attn_norm = gguf_tensor(f, p + "attn_norm.weight", dim, 1, true);
    t.wq = gguf_tensor(f, p + "attn_q.weight", dim, dim, false);
    t.wk = gguf_tensor(f, p + "attn_k.weight", dim, kv, false);
    t.wv = gguf_tensor(f, p + "attn_v.weight", dim, kv, false);
    t.wo = gguf_tensor(f, p + "attn_output.weight", dim, dim, false);
    t.ffn_norm = gguf_tensor(f, p + "ffn_norm.weight", dim, 1, true);
    t.w1 = gguf_tensor(f, p + "ffn_gate.weight", dim, hidden, false);
    t.w2 = gguf_tensor(f, p + "ffn_down.weight", hidden, dim, false);
    t.w3 = gguf_tensor(f, p + "ffn_up.weight", dim, hidden, false);
    m.layers.push_back(std::move(t));
  }
  return m;
}

Model parse_llama2c(std::span<const std::byte> bytes, std::shared_ptr<const void> owner, const LoadOptions& options) {
  Cursor cur(bytes, "llama2.c checkpoint");
  std::int32_t h[7];
  for (int i = 0; i < 7; ++i) h[i] = cur.read<std::int32_t>("header field " + std::to_string(i));
  const char* names[] = {"dim", "hidden_dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size", "seq_len"};
  for (int i = 0; i < 7; ++i) {
    if (h[i] == 0 || (h[i] < 0 && i != 5) || h[i] == std::numeric_limits<std::int32_t>::min()) {
      corrupt("llama2.c checkpoint header: " + std::string(names[i]) + " is " + std::to_string(h[i]) +
              ", expected a positive number (is this a llama2.c .bin file?)");
    }
  }
  Model m;
  m.owner = std::move(owner);
  m.format = "llama2.c";
  ModelConfig& c = m.config;
  c.dim = as_u32(h[0]);
  c.hidden_dim = as_u32(h[1]);
  c.n_layers = as_u32(h[2]);
  c.n_heads = as_u32(h[3]);
  c.n_kv_heads = as_u32(h[4]);
  const bool shared_classifier = h[5] > 0;  // a negative vocab size means a separate classifier follows
  c.vocab_size = as_u32(h[5] > 0 ? h[5] : -h[5]);
  const std::uint32_t trained_positions = as_u32(h[6]);
  c.seq_len = options.context_length ? options.context_length : trained_positions;
  check_config(c, m.format);

  const std::uint64_t dim = c.dim, hidden = c.hidden_dim, layers = c.n_layers, kv = c.kv_dim(), vocab = c.vocab_size,
                      head = c.head_size();
  // Expected size in floats, in file order (all dimensions < 2^24, so no product below overflows).
  std::uint64_t floats = vocab * dim + layers * dim + layers * dim * dim + 2 * layers * dim * kv + layers * dim * dim +
                         layers * dim + 3 * layers * dim * hidden + dim +
                         std::uint64_t{trained_positions} * head;  // two RoPE tables of head/2 each
  if (!shared_classifier) floats += vocab * dim;
  const std::uint64_t expected = kLlama2cHeaderBytes + floats * 4;
  if (bytes.size() != expected) {
    corrupt("llama2.c checkpoint: the header (dim " + num(dim) + ", hidden " + num(hidden) + ", layers " + num(layers) +
            ", heads " + num(c.n_heads) + ", kv heads " + num(c.n_kv_heads) + ", vocab " + num(vocab) +
            (shared_classifier ? ", shared" : ", separate") + " classifier, " + num(trained_positions) +
            " positions) implies " + num(expected) + " bytes, but the file has " + num(bytes.size()));
  }
  std::uint64_t offset = kLlama2cHeaderBytes;
  auto take = [&](const std::string& name, std::uint64_t rows, std::uint64_t cols) {
    Tensor t;
    t.name = name;
    t.type = TensorType::F32;
    t.rows = rows;
    t.cols = cols;
    t.row_stride = cols * 4;
    t.bytes = bytes.subspan(offset, rows * cols * 4);
    offset += rows * cols * 4;
    return t;
  };
  m.token_embedding = take("token_embedding_table", vocab, dim);
  m.layers.resize(layers);
  auto per_layer = [&](const std::string& name, Tensor LayerTensors::*field, std::uint64_t rows, std::uint64_t cols) {
    for (std::uint64_t l = 0; l < layers; ++l) m.layers[l].*field = take(name + "[" + num(l) + "]", rows, cols);
  };
  per_layer("rms_att_weight", &LayerTensors::attn_norm, 1, dim);
  per_layer("wq", &LayerTensors::wq, dim, dim);
  per_layer("wk", &LayerTensors::wk, kv, dim);
  per_layer("wv", &LayerTensors::wv, kv, dim);
  per_layer("wo", &LayerTensors::wo, dim, dim);
  per_layer("rms_ffn_weight", &LayerTensors::ffn_norm, 1, dim);
  per_layer("w1", &LayerTensors::w1, hidden, dim);
  per_layer("w2", &LayerTensors::w2, dim, hidden);
  per_layer("w3", &LayerTensors::w3, hidden, dim);
  m.final_norm = take("rms_final_weight", 1, dim);
  take("freq_cis_real", trained_positions, head / 2);  // unused: RoPE is computed
  take("freq_cis_imag", trained_positions, head / 2);
  m.classifier = shared_classifier ? m.token_embedding : take("wcls", vocab, dim);
  return m;
}

Vocabulary parse_llama2c_tokenizer(std::span<const std::byte> bytes, std::uint32_t vocab_size) {
  Cursor cur(bytes, "llama2.c tokenizer");
  std::int32_t max_len = cur.read<std::int32_t>("max token length");
  if (max_len <= 0 || max_len > (1 << 16)) {
    corrupt("llama2.c tokenizer: max token length is " + std::to_string(max_len) + ", expected 1..65536");
  }
  // Each piece takes at least 8 bytes (score, length).
  if (vocab_size > cur.remaining() / 8) {
    corrupt("llama2.c tokenizer: " + num(vocab_size) + " pieces cannot fit in the " + num(cur.remaining()) +
            " bytes of the file; does the tokenizer belong to this model?");
  }
  Vocabulary v;
  v.pieces.reserve(vocab_size);
  v.scores.reserve(vocab_size);
  for (std::uint32_t i = 0; i < vocab_size; ++i) {
    v.scores.push_back(cur.read<float>("score of piece " + num(i)));
    std::int32_t len = cur.read<std::int32_t>("length of piece " + num(i));
    if (len < 0 || len > max_len) {
      corrupt("llama2.c tokenizer: piece " + num(i) + " has length " + std::to_string(len) + ", expected 0.." +
              std::to_string(max_len));
    }
    v.pieces.emplace_back(cur.read_bytes(static_cast<std::uint64_t>(len), "bytes of piece " + num(i)));
  }
  return v;
}

Vocabulary load_llama2c_tokenizer(const std::string& path, std::uint32_t vocab_size) {
  auto file = MappedFile::open(path);
  return parse_llama2c_tokenizer(file->bytes(), vocab_size);
}

Model load_model(const std::string& path, const LoadOptions& options) {
  std::shared_ptr<const MappedFile> file = MappedFile::open(path);
  auto bytes = file->bytes();
  try {
    Model m = bytes.size() >= 4 && std::memcmp(bytes.data(), "GGUF", 4) == 0 ? parse_gguf(bytes, file, options)
                                                                             : parse_llama2c(bytes, file, options);
    m.file = file;
    return m;
  } catch (const Error& e) {
    // Re-thrown with the file name in front of the message (what() starts with "<code name>: ").
    throw Error(e.code(), path + ": " + std::string(e.what()).substr(error_code_name(e.code()).size() + 2));
  }
}

GgufContents parse_gguf_contents(std::span<const std::byte> bytes) {
  GgufFile f(bytes);
  GgufContents out;
  out.version = f.version();
  for (const auto& [key, v] : f.metadata()) {
    if (v.type == GgufType::String) {
      out.strings.emplace(key, std::string(v.text));
    } else if (v.type != GgufType::Array) {
      out.numbers.emplace(key, v.is_integer ? static_cast<double>(v.integer) : v.number);
    }
  }
  for (const auto& [name, info] : f.tensors()) {
    GgufTensorEntry e;
    e.name = name;
    e.type = info.type;
    e.dims = info.dims;
    // GgufFile checked the size and extent of every tensor of a readable type.
    if (is_supported_type(info.type)) e.bytes = f.bytes().subspan(f.data_start() + info.offset, info.size);
    out.tensors.push_back(std::move(e));
  }
  return out;
}

// --- MappedFile --------------------------------------------------------------------------------------------------

std::shared_ptr<const MappedFile> MappedFile::open(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    int err = errno;
    throw Error(err == ENOENT ? ErrorCode::NotFound : ErrorCode::IoError,
                "cannot open " + path + ": " + std::strerror(err));
  }
  struct stat st {};
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    throw Error(ErrorCode::IoError, path + " is not a regular file");
  }
  std::shared_ptr<MappedFile> f(new MappedFile());
  f->path_ = path;
  f->size_ = static_cast<std::size_t>(st.st_size);
  if (f->size_ > 0) {
    void* p = ::mmap(nullptr, f->size_, PROT_READ, MAP_PRIVATE, fd, 0);
    if (p == MAP_FAILED) {
      int err = errno;
      ::close(fd);
      throw Error(ErrorCode::IoError, "cannot map " + path + ": " + std::strerror(err));
    }
    f->data_ = static_cast<const std::byte*>(p);
    // A hint, failure harmless: pages this mapping reads into the page cache are then grouped in 2 MiB folios,
    // which mapped layer paging maps and populates ~10x faster than 4 KiB ones (docs/transformer.md).
    ::madvise(p, f->size_, MADV_HUGEPAGE);
  }
  ::close(fd);
  return f;
}

MappedFile::~MappedFile() {
  if (data_) ::munmap(const_cast<std::byte*>(data_), size_);
}

}  // namespace mmsb::llm
