// LoRA adapters: the GGUF adapter reader and writer, the merge (dequantize → add → requantize), and the switcher
// that carries an adapter as deltas on the engine's weight pages (see lora.hpp).
#include "mmsb/llm/lora.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <fstream>
#include <map>
#include <utility>

#include "llm/split_mix.hpp"
#include "mmsb/error.hpp"
#include "mmsb/llm/kernels.hpp"
#include "mmsb/runtime.hpp"

namespace mmsb::llm {

namespace {

[[noreturn]] void corrupt(const std::string& what) { throw Error(ErrorCode::Corruption, what); }
[[noreturn]] void unsupported(const std::string& what) { throw Error(ErrorCode::Unsupported, what); }
[[noreturn]] void invalid(const std::string& what) { throw Error(ErrorCode::InvalidArgument, what); }
std::string num(std::uint64_t v) { return std::to_string(v); }

// The seven per-layer matrices an adapter may target, by their GGUF name within the layer.
constexpr std::pair<const char*, Tensor LayerTensors::*> kTargets[] = {
    {"attn_q", &LayerTensors::wq},      {"attn_k", &LayerTensors::wk},   {"attn_v", &LayerTensors::wv},
    {"attn_output", &LayerTensors::wo}, {"ffn_gate", &LayerTensors::w1}, {"ffn_up", &LayerTensors::w3},
    {"ffn_down", &LayerTensors::w2},
};

bool ends_with(std::string_view s, std::string_view suffix) {
  return s.size() >= suffix.size() && s.substr(s.size() - suffix.size()) == suffix;
}

std::vector<float> factor_values(const GgufTensorEntry& t) {
  if (t.type != static_cast<std::uint32_t>(TensorType::F32) && t.type != static_cast<std::uint32_t>(TensorType::F16)) {
    auto type_name = tensor_type_name(t.type);
    unsupported("LoRA tensor '" + t.name + "' is " + (type_name ? std::string(*type_name) : "type " + num(t.type)) +
                "; adapter factors must be F32 or F16");
  }
  const std::uint64_t n = t.dims[0] * t.dims[1];  // the bytes were checked to hold them
  std::vector<float> out(n);
  if (t.type == static_cast<std::uint32_t>(TensorType::F32)) {
    std::memcpy(out.data(), t.bytes.data(), n * sizeof(float));
  } else {
    for (std::uint64_t i = 0; i < n; ++i) {
      std::uint16_t h;
      std::memcpy(&h, t.bytes.data() + 2 * i, 2);
      out[i] = fp16_to_fp32(h);
    }
  }
  for (std::uint64_t i = 0; i < n; ++i) {
    if (!std::isfinite(out[i])) corrupt("LoRA tensor '" + t.name + "' holds a non-finite value at element " + num(i));
  }
  return out;
}

// --- GGUF writing (format constants: magic, version 3, value types 4 = uint32, 6 = float32, 8 = string) ---

struct Writer {
  std::vector<std::byte> out;
  void raw(const void* p, std::size_t n) {
    auto b = static_cast<const std::byte*>(p);
    out.insert(out.end(), b, b + n);
  }
  template <class T>
  void value(T v) {
    raw(&v, sizeof v);
  }
  void string(std::string_view s) {
    value<std::uint64_t>(s.size());
    raw(s.data(), s.size());
  }
  void pad(std::size_t alignment) { out.resize((out.size() + alignment - 1) / alignment * alignment); }
};

}  // namespace

// --- quantizers ---------------------------------------------------------------------------------------------------

void quantize_row(TensorType type, const float* in, std::size_t n, std::byte* out) {
  switch (type) {
    case TensorType::F32:
      std::memcpy(out, in, n * sizeof(float));
      return;
    case TensorType::F16:
      for (std::size_t i = 0; i < n; ++i) {
        std::uint16_t h = fp32_to_fp16(in[i]);
        std::memcpy(out + 2 * i, &h, 2);
      }
      return;
    case TensorType::Q8_0:  // blocks of 32: half scale d = absmax / 127, int8 q = round(x / d)
      for (std::size_t blk = 0; blk < n / 32; ++blk) {
        const float* x = in + 32 * blk;
        std::byte* o = out + 34 * blk;
        float amax = 0;
        for (int j = 0; j < 32; ++j) amax = std::max(amax, std::fabs(x[j]));
        const float d = amax / 127.0f, id = d != 0 ? 1.0f / d : 0.0f;
        std::uint16_t h = fp32_to_fp16(d);
        std::memcpy(o, &h, 2);
        for (int j = 0; j < 32; ++j)
          o[2 + j] = static_cast<std::byte>(static_cast<std::int8_t>(std::lround(x[j] * id)));
      }
      return;
    case TensorType::Q4_0:  // blocks of 32: d = (value of largest magnitude) / -8, q = clamp(x / d + 8.5) in 0..15
      for (std::size_t blk = 0; blk < n / 32; ++blk) {
        const float* x = in + 32 * blk;
        std::byte* o = out + 18 * blk;
        float amax = 0, max = 0;
        for (int j = 0; j < 32; ++j) {
          if (std::fabs(x[j]) > amax) {
            amax = std::fabs(x[j]);
            max = x[j];
          }
        }
        const float d = max / -8.0f, id = d != 0 ? 1.0f / d : 0.0f;
        std::uint16_t h = fp32_to_fp16(d);
        std::memcpy(o, &h, 2);
        auto q = [&](int j) { return static_cast<unsigned>(std::min(15, static_cast<int>(x[j] * id + 8.5f))); };
        for (int j = 0; j < 16; ++j) o[2 + j] = static_cast<std::byte>(q(j) | (q(j + 16) << 4));
      }
      return;
    default: {
      auto type_name = tensor_type_name(static_cast<std::uint32_t>(type));
      unsupported("LoRA cannot merge into " + std::string(type_name ? *type_name : "this type") +
                  " weights (F32, F16, Q8_0 and Q4_0 are supported)");
    }
  }
}

void merge_lora_tensor(const Tensor& base, const LoraTensor& lora, float scale, std::span<std::byte> out) {
  if (lora.rows != base.rows || lora.cols != base.cols) {
    invalid("LoRA tensor for '" + base.name + "' is " + num(lora.rows) + " x " + num(lora.cols) +
            " but the weight is " + num(base.rows) + " x " + num(base.cols));
  }
  if (lora.a.size() != lora.rank * lora.cols || lora.b.size() != lora.rows * lora.rank) {
    invalid("LoRA factors for '" + base.name + "' do not hold rank x cols and rows x rank values");
  }
  if (out.size() != base.bytes.size()) invalid("merge output for '" + base.name + "' has the wrong size");
  const auto t = static_cast<std::uint32_t>(base.type);
  if (base.type != TensorType::F32 && base.type != TensorType::F16 && base.type != TensorType::Q8_0 &&
      base.type != TensorType::Q4_0) {
    unsupported("LoRA target '" + base.name + "' is " + std::string(tensor_type_name(t).value_or("?")) +
                "; merging supports F32, F16, Q8_0 and Q4_0 weights");
  }
  const Kernels& k = kernels_for(SimdLevel::Scalar);  // exact dequantization, the same on every CPU
  const std::size_t cols = lora.cols, rank = lora.rank;
  std::vector<float> row(cols), acc(cols);
  for (std::size_t r = 0; r < base.rows; ++r) {
    k.dequantize[t](base.bytes.data() + r * base.row_stride, row.data(), cols);
    std::fill(acc.begin(), acc.end(), 0.0f);
    for (std::size_t i = 0; i < rank; ++i) {
      const float bri = lora.b[r * rank + i];
      const float* a = lora.a.data() + i * cols;
      for (std::size_t c = 0; c < cols; ++c) acc[c] += bri * a[c];
    }
    for (std::size_t c = 0; c < cols; ++c) row[c] += scale * acc[c];
    quantize_row(base.type, row.data(), cols, out.data() + r * base.row_stride);
  }
}

// --- adapters -----------------------------------------------------------------------------------------------------

const Tensor* find_lora_target(const Model& model, std::string_view name) {
  if (name.substr(0, 4) != "blk." || !ends_with(name, ".weight")) return nullptr;
  std::string_view rest = name.substr(4, name.size() - 4 - 7);  // "<n>.<kind>"
  const std::size_t dot = rest.find('.');
  if (dot == std::string_view::npos || dot == 0 || dot > 6) return nullptr;
  std::uint64_t layer = 0;
  for (char ch : rest.substr(0, dot)) {
    if (ch < '0' || ch > '9') return nullptr;
    layer = layer * 10 + static_cast<std::uint64_t>(ch - '0');
  }
  if (layer >= model.layers.size()) return nullptr;
  const std::string_view kind = rest.substr(dot + 1);
  for (const auto& [target, member] : kTargets) {
    if (kind == target) return &(model.layers[layer].*member);
  }
  return nullptr;
}

LoraAdapter parse_lora_gguf(std::span<const std::byte> bytes, const std::string& name) {
  GgufContents g = parse_gguf_contents(bytes);
  auto text = [&](const std::string& key) -> std::string {
    auto it = g.strings.find(key);
    return it == g.strings.end() ? std::string() : it->second;
  };
  const std::string type = text("general.type");
  if (type != "adapter") {
    unsupported("GGUF general.type is " + (type.empty() ? std::string("missing") : "'" + type + "'") +
                ", expected 'adapter': this is not a LoRA adapter file");
  }
  if (g.strings.count("adapter.type") && text("adapter.type") != "lora") {
    unsupported("GGUF adapter.type is '" + text("adapter.type") + "'; only 'lora' adapters are supported");
  }
  if (text("general.architecture") != "llama") {
    unsupported("LoRA adapter architecture is '" + text("general.architecture") + "', expected 'llama'");
  }
  LoraAdapter adapter;
  adapter.name = name;
  if (auto it = g.numbers.find("adapter.lora.alpha"); it != g.numbers.end()) {
    if (!std::isfinite(it->second) || std::fabs(it->second) > 1e6) {
      corrupt("GGUF adapter.lora.alpha is " + std::to_string(it->second) + ", expected a finite number");
    }
    adapter.alpha = static_cast<float>(it->second);
  }
  std::map<std::string, std::pair<const GgufTensorEntry*, const GgufTensorEntry*>> pairs;
  for (const GgufTensorEntry& t : g.tensors) {
    if (ends_with(t.name, ".lora_a")) {
      pairs[t.name.substr(0, t.name.size() - 7)].first = &t;
    } else if (ends_with(t.name, ".lora_b")) {
      pairs[t.name.substr(0, t.name.size() - 7)].second = &t;
    } else {
      corrupt("LoRA adapter tensor '" + t.name + "' is neither '<weight>.lora_a' nor '<weight>.lora_b'");
    }
  }
  if (pairs.empty()) corrupt("LoRA adapter has no tensors");
  for (const auto& [target, ab] : pairs) {
    if (!ab.first || !ab.second) {
      corrupt("LoRA adapter has '" + target + (ab.first ? ".lora_a" : ".lora_b") + "' without its partner '" + target +
              (ab.first ? ".lora_b" : ".lora_a") + "'");
    }
    const GgufTensorEntry& a = *ab.first;
    const GgufTensorEntry& b = *ab.second;
    if (a.dims.size() != 2 || b.dims.size() != 2) {
      corrupt("LoRA tensors of '" + target + "' must be 2-dimensional (lora_a has " + num(a.dims.size()) +
              " dimensions, lora_b " + num(b.dims.size()) + ")");
    }
    if (a.dims[1] != b.dims[0]) {
      corrupt("LoRA tensors of '" + target + "' disagree on the rank: lora_a is [" + num(a.dims[0]) + ", " +
              num(a.dims[1]) + "], lora_b is [" + num(b.dims[0]) + ", " + num(b.dims[1]) +
              "] (expected [cols, rank] and [rank, rows])");
    }
    if (a.dims[1] > (1u << 16)) corrupt("LoRA tensors of '" + target + "' have rank " + num(a.dims[1]));
    LoraTensor t;
    t.target = target;
    t.rank = static_cast<std::uint32_t>(a.dims[1]);
    t.cols = a.dims[0];
    t.rows = b.dims[1];
    t.a = factor_values(a);
    t.b = factor_values(b);
    adapter.tensors.push_back(std::move(t));
  }
  return adapter;
}

LoraAdapter load_lora(const std::string& path) {
  auto file = MappedFile::open(path);
  try {
    return parse_lora_gguf(file->bytes(), path);
  } catch (const Error& e) {
    throw Error(e.code(), path + ": " + std::string(e.what()).substr(error_code_name(e.code()).size() + 2));
  }
}

std::vector<std::byte> serialize_lora_gguf(const LoraAdapter& adapter) {
  constexpr std::size_t kAlignment = 32;
  Writer w;
  w.raw("GGUF", 4);
  w.value<std::uint32_t>(3);
  w.value<std::uint64_t>(2 * adapter.tensors.size());
  w.value<std::uint64_t>(4);
  auto kv_string = [&](std::string_view key, std::string_view v) {
    w.string(key);
    w.value<std::uint32_t>(8);
    w.string(v);
  };
  kv_string("general.architecture", "llama");
  kv_string("general.type", "adapter");
  kv_string("adapter.type", "lora");
  w.string("adapter.lora.alpha");
  w.value<std::uint32_t>(6);
  w.value<float>(adapter.alpha);
  std::uint64_t offset = 0;
  auto aligned = [&](std::uint64_t n) { return (n + kAlignment - 1) / kAlignment * kAlignment; };
  for (const LoraTensor& t : adapter.tensors) {
    const std::pair<const char*, std::pair<std::uint64_t, std::uint64_t>> factors[] = {{".lora_a", {t.cols, t.rank}},
                                                                                       {".lora_b", {t.rank, t.rows}}};
    for (const auto& [suffix, dims] : factors) {
      w.string(t.target + suffix);
      w.value<std::uint32_t>(2);
      w.value<std::uint64_t>(dims.first);
      w.value<std::uint64_t>(dims.second);
      w.value<std::uint32_t>(static_cast<std::uint32_t>(TensorType::F32));
      w.value<std::uint64_t>(offset);
      offset = aligned(offset + dims.first * dims.second * sizeof(float));
    }
  }
  w.pad(kAlignment);
  for (const LoraTensor& t : adapter.tensors) {
    w.raw(t.a.data(), t.a.size() * sizeof(float));
    w.pad(kAlignment);
    w.raw(t.b.data(), t.b.size() * sizeof(float));
    w.pad(kAlignment);
  }
  return std::move(w.out);
}

void write_lora_gguf(const std::string& path, const LoraAdapter& adapter) {
  const std::vector<std::byte> bytes = serialize_lora_gguf(adapter);
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
  out.close();
  if (!out) throw Error(ErrorCode::IoError, "cannot write the adapter to " + path);
}

LoraAdapter make_random_lora(const Model& model, std::uint32_t rank, float alpha, std::uint64_t seed,
                             const std::vector<std::string>& kinds, float b_range) {
  if (kinds.empty()) invalid("lora-make: no target kinds given");
  LoraAdapter adapter;
  adapter.name = "random-" + std::to_string(seed);
  adapter.alpha = alpha;
  SplitMix rng{seed};
  for (std::size_t l = 0; l < model.layers.size(); ++l) {
    for (const std::string& kind : kinds) {
      const std::string target = "blk." + num(l) + "." + kind + ".weight";
      const Tensor* base = find_lora_target(model, target);
      if (!base) {
        invalid("unknown LoRA target kind '" + kind +
                "' (use attn_q, attn_k, attn_v, attn_output, ffn_gate, ffn_up, ffn_down)");
      }
      if (rank == 0 || rank > base->rows || rank > base->cols) {
        invalid("LoRA rank " + num(rank) + " must be 1.." + num(std::min(base->rows, base->cols)) + " for '" + target +
                "'");
      }
      LoraTensor t;
      t.target = target;
      t.rank = rank;
      t.rows = base->rows;
      t.cols = base->cols;
      const float a_range = 1.0f / std::sqrt(static_cast<float>(t.cols));
      t.a.resize(rank * t.cols);
      t.b.resize(t.rows * rank);
      for (float& v : t.a) v = rng.uniform(a_range);
      for (float& v : t.b) v = rng.uniform(b_range);
      adapter.tensors.push_back(std::move(t));
    }
  }
  return adapter;
}

// --- the switcher -------------------------------------------------------------------------------------------------

LoraSwitcher::LoraSwitcher(Engine& engine, const Model& model) : engine_(engine), model_(model) {}

std::vector<TensorOverride> merge_lora(const Model& model, const LoraAdapter& adapter, float user_scale) {
  if (!std::isfinite(user_scale)) invalid("LoRA scale must be a finite number");
  std::vector<TensorOverride> merged;
  for (const LoraTensor& t : adapter.tensors) {
    const Tensor* base = find_lora_target(model, t.target);
    if (!base) {
      unsupported("LoRA adapter " + adapter.name + " targets '" + t.target +
                  "', which is not a per-layer weight matrix of this model (blk.<n>.attn_q/k/v/output.weight, "
                  "blk.<n>.ffn_gate/up/down.weight, n < " +
                  num(model.layers.size()) + ")");
    }
    for (const TensorOverride& m : merged) {
      if (m.tensor == base) invalid("LoRA adapter " + adapter.name + " targets a tensor twice");
    }
    TensorOverride m{base, std::vector<std::byte>(base->bytes.size())};
    merge_lora_tensor(*base, t, adapter.scale_of(t, user_scale), m.bytes);
    // No byte changes (a zero adapter, or below the type's resolution): nothing to override.
    if (std::equal(m.bytes.begin(), m.bytes.end(), base->bytes.begin())) continue;
    merged.push_back(std::move(m));
  }
  return merged;
}

std::size_t LoraSwitcher::prepare(const LoraAdapter& adapter, float user_scale) {
  Prepared p;
  p.name = adapter.name;
  for (const TensorOverride& m : merge_lora(model_, adapter, user_scale)) {
    PreparedPage page;
    page.page = engine_.weight_page_of(*m.tensor);
    diff_into(m.tensor->bytes, m.bytes, page.delta);  // undo recorded: the base bytes, for revert
    page.delta.page = page.page;
    p.pages.push_back(std::move(page));
  }
  std::sort(p.pages.begin(), p.pages.end(),
            [](const PreparedPage& a, const PreparedPage& b) { return a.page < b.page; });
  prepared_.push_back(std::move(p));
  return prepared_.size() - 1;
}

void LoraSwitcher::activate(std::size_t handle) {
  if (handle >= prepared_.size()) invalid("no prepared LoRA adapter " + num(handle));
  if (active_ == handle) return;
  const std::string& to = prepared_[handle].name;
  commit_change(handle, active_ ? "lora:swap " + prepared_[*active_].name + " -> " + to : "lora:apply " + to);
}

void LoraSwitcher::revert() {
  if (!active_) return;
  commit_change(kBase, "lora:revert " + prepared_[*active_].name);
}

// The change from the active state to `to` (an adapter or kBase), per page: the inverse of the active adapter's
// delta (its undo bytes are the base bytes), the new adapter's delta, or their composition. Computed once per
// pair of states and kept without undo bytes (a later change starts from the pair's own deltas, never from a
// committed one), so a swap allocates no weight-sized buffers of its own.
std::vector<Delta>& LoraSwitcher::transition(std::size_t from, std::size_t to) {
  auto [it, fresh] = transitions_.try_emplace({from, to});
  if (!fresh) return it->second;
  static const std::vector<PreparedPage> kNone;
  const std::vector<PreparedPage>& old_pages = from == kBase ? kNone : prepared_[from].pages;
  const std::vector<PreparedPage>& new_pages = to == kBase ? kNone : prepared_[to].pages;
  std::vector<Delta>& out = it->second;
  std::size_t i = 0, j = 0;
  while (i < old_pages.size() || j < new_pages.size()) {
    const bool take_old = i < old_pages.size() && (j == new_pages.size() || !(new_pages[j].page < old_pages[i].page));
    const bool take_new = j < new_pages.size() && (i == old_pages.size() || !(old_pages[i].page < new_pages[j].page));
    if (take_old) {
      Delta undo = mmsb::invert(old_pages[i].delta);  // payload: the base bytes
      if (take_new) {
        Delta next = new_pages[j].delta;
        next.base_epoch = undo.target_epoch();
        out.push_back(mmsb::compose(undo, next));
      } else {
        out.push_back(std::move(undo));
      }
    } else {
      out.push_back(new_pages[j].delta);
    }
    Delta& d = out.back();
    d.has_undo = false;  // the engine's runtime records no undo either; the bytes to go back are in the pair (to, from)
    d.undo.clear();
    d.undo.shrink_to_fit();
    d.undo_tail.clear();
    if (take_old) ++i;
    if (take_new) ++j;
  }
  return out;
}

// One transaction for the whole change. Each delta is stamped with its page's epoch (a delta applies only to the
// epoch it was made against); a page that changed since this switcher's last commit is refused (Aborted).
void LoraSwitcher::commit_change(std::size_t to, const std::string& intent) {
  Runtime& rt = engine_.runtime();
  std::vector<Delta>& change = transition(active_ ? *active_ : kBase, to);
  Transaction txn = rt.begin();
  txn.set_intent(intent);
  for (Delta& d : change) {
    auto seen = epochs_.find(d.page);
    if (seen == epochs_.end()) {
      rt.make_private(d.page);  // copy on write: the first change of a weight page copies it out of the file
    }
    const std::uint64_t epoch = rt.info(d.page).epoch;
    if (seen != epochs_.end() && seen->second != epoch) {
      throw Error(ErrorCode::Aborted, "weight page " + d.page.to_string() +
                                          " was changed outside the LoRA switcher; its adapter cannot be undone");
    }
    d.base_epoch = epoch;
    txn.apply(d);
  }
  txn.commit();
  for (const Delta& d : change) epochs_[d.page] = d.base_epoch + 1;
  active_ = to == kBase ? std::nullopt : std::optional<std::size_t>(to);
}

std::vector<PageId> LoraSwitcher::pages(std::size_t handle) const {
  std::vector<PageId> out;
  for (const PreparedPage& p : prepared_.at(handle).pages) out.push_back(p.page);
  return out;
}

std::uint64_t LoraSwitcher::bytes(std::size_t handle) const {
  std::uint64_t n = 0;
  for (const PreparedPage& p : prepared_.at(handle).pages) n += p.delta.size;
  return n;
}

}  // namespace mmsb::llm
