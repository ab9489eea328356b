// GGUF v3 writing (format constants: magic "GGUF", version 3; value types 4 = uint32, 5 = int32, 6 = float32,
// 8 = string, 9 = array).
#include "llm/gguf_writer.hpp"

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>

#include "mmsb/error.hpp"
#include "mmsb/llm/quantize.hpp"

namespace mmsb::llm {

namespace {

constexpr std::uint32_t kU32 = 4, kI32 = 5, kF32 = 6, kString = 8, kArray = 9;

class OutFile {
 public:
  explicit OutFile(const std::string& path) : path_(path), f_(std::fopen(path.c_str(), "wb")) {
    if (!f_) throw Error(ErrorCode::IoError, "cannot create " + path + ": " + std::strerror(errno));
  }
  ~OutFile() {
    if (f_) std::fclose(f_);
  }
  OutFile(const OutFile&) = delete;
  OutFile& operator=(const OutFile&) = delete;
  void write(const void* p, std::size_t n) {
    if (n && std::fwrite(p, 1, n, f_) != n) {
      throw Error(ErrorCode::IoError, "cannot write " + path_ + ": " + std::strerror(errno) + " (disk full?)");
    }
    written_ += n;
  }
  template <class T>
  void put(T v) {
    write(&v, sizeof(T));
  }
  void string(std::string_view s) {
    put<std::uint64_t>(s.size());
    write(s.data(), s.size());
  }
  void pad_to(std::uint64_t alignment) {
    static const char zeros[256] = {};
    while (written_ % alignment) write(zeros, std::min<std::uint64_t>(alignment - written_ % alignment, sizeof(zeros)));
  }
  void close() {
    const int rc = std::fclose(f_);
    f_ = nullptr;
    if (rc != 0) throw Error(ErrorCode::IoError, "cannot write " + path_ + ": " + std::strerror(errno));
  }
  std::uint64_t written() const { return written_; }

 private:
  std::string path_;
  std::FILE* f_;
  std::uint64_t written_ = 0;
};

std::uint64_t rows_of(const GgufTensorPlan& t) {
  std::uint64_t rows = 1;
  for (std::size_t d = 1; d < t.dims.size(); ++d) rows *= t.dims[d];
  return rows;
}

std::uint64_t align_up(std::uint64_t v, std::uint64_t a) { return (v + a - 1) / a * a; }

void write_table(OutFile& out, std::span<const GgufTensorPlan> plan, std::uint64_t alignment) {
  std::uint64_t offset = 0;
  for (const GgufTensorPlan& t : plan) {
    if (t.dims.empty() || row_bytes(t.type, t.dims[0]) == 0) {
      throw Error(ErrorCode::InvalidArgument, "GGUF writer: tensor '" + t.name + "' rows of " +
                                                  std::to_string(t.dims.empty() ? 0 : t.dims[0]) +
                                                  " values are not a whole number of its type's blocks");
    }
    out.string(t.name);
    out.put<std::uint32_t>(static_cast<std::uint32_t>(t.dims.size()));
    for (std::uint64_t d : t.dims) out.put<std::uint64_t>(d);
    out.put<std::uint32_t>(static_cast<std::uint32_t>(t.type));
    out.put<std::uint64_t>(offset);
    offset = align_up(offset + row_bytes(t.type, t.dims[0]) * rows_of(t), alignment);
  }
}

}  // namespace

void GgufMetadata::raw(const void* p, std::size_t n) {
  const auto* b = static_cast<const std::byte*>(p);
  bytes_.insert(bytes_.end(), b, b + n);
}
void GgufMetadata::key(std::string_view k, std::uint32_t value_type) {
  put<std::uint64_t>(k.size());
  raw(k.data(), k.size());
  put<std::uint32_t>(value_type);
  ++count_;
}
void GgufMetadata::add_string(std::string_view k, std::string_view value) {
  key(k, kString);
  put<std::uint64_t>(value.size());
  raw(value.data(), value.size());
}
void GgufMetadata::add_u32(std::string_view k, std::uint32_t value) {
  key(k, kU32);
  put(value);
}
void GgufMetadata::add_f32(std::string_view k, float value) {
  key(k, kF32);
  put(value);
}
void GgufMetadata::add_string_array(std::string_view k, const std::vector<std::string>& values) {
  key(k, kArray);
  put<std::uint32_t>(kString);
  put<std::uint64_t>(values.size());
  for (const std::string& v : values) {
    put<std::uint64_t>(v.size());
    raw(v.data(), v.size());
  }
}
void GgufMetadata::add_f32_array(std::string_view k, std::span<const float> values) {
  key(k, kArray);
  put<std::uint32_t>(kF32);
  put<std::uint64_t>(values.size());
  raw(values.data(), values.size_bytes());
}
void GgufMetadata::add_i32_array(std::string_view k, std::span<const std::int32_t> values) {
  key(k, kArray);
  put<std::uint32_t>(kI32);
  put<std::uint64_t>(values.size());
  raw(values.data(), values.size_bytes());
}
void GgufMetadata::add_encoded(std::span<const std::byte> pair) {
  raw(pair.data(), pair.size());
  ++count_;
}

std::uint64_t write_gguf(const std::string& path, const GgufMetadata& metadata, std::span<const GgufTensorPlan> plan,
                         std::uint64_t alignment, const GgufRowSource& rows, const GgufProgress& progress) {
  if (alignment < 8 || (alignment & (alignment - 1)) != 0) {
    throw Error(ErrorCode::InvalidArgument,
                "GGUF writer: alignment " + std::to_string(alignment) + " is not a power of two of at least 8");
  }
  const std::string tmp = path + ".tmp";
  try {
    OutFile out(tmp);
    out.write("GGUF", 4);
    out.put<std::uint32_t>(3);
    out.put<std::uint64_t>(plan.size());
    out.put<std::uint64_t>(metadata.count());
    out.write(metadata.bytes().data(), metadata.bytes().size());
    write_table(out, plan, alignment);
    out.pad_to(alignment);
    std::vector<float> row;
    std::vector<std::byte> packed;
    for (std::size_t i = 0; i < plan.size(); ++i) {
      const GgufTensorPlan& t = plan[i];
      row.resize(t.dims[0]);
      packed.resize(row_bytes(t.type, t.dims[0]));
      const std::uint64_t n = rows_of(t);
      for (std::uint64_t r = 0; r < n; ++r) {
        rows(i, r, row.data());
        quantize_row(t.type, row.data(), packed.data(), row.size());
        out.write(packed.data(), packed.size());
      }
      out.pad_to(alignment);
      if (progress) progress(i + 1, plan.size(), t.name);
    }
    const std::uint64_t written = out.written();
    out.close();
    if (std::rename(tmp.c_str(), path.c_str()) != 0) {
      throw Error(ErrorCode::IoError, "cannot rename " + tmp + " to " + path + ": " + std::strerror(errno));
    }
    return written;
  } catch (...) {
    std::remove(tmp.c_str());
    throw;
  }
}

}  // namespace mmsb::llm
