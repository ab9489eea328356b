#include "examples/transformer/forward.hpp"

#include <cmath>
#include <cstring>

namespace mmsb::llm {

namespace {

void rmsnorm(float* out, const float* x, const float* weight, std::size_t n, float eps) {
  float ss = 0;
  for (std::size_t j = 0; j < n; ++j) ss += x[j] * x[j];
  ss /= static_cast<float>(n);
  ss += eps;
  ss = 1.0f / std::sqrt(ss);
  for (std::size_t j = 0; j < n; ++j) out[j] = weight[j] * (ss * x[j]);
}

void matvec(const ForwardShape& s, WeightRef w, const float* x, std::size_t cols, float* out, std::size_t rows,
            ForwardScratch& scratch) {
  if (s.rounding == ActivationRounding::LikeLlamaCpp) {
    return matmul_llamacpp_rounding(*s.kernels, w.type, w.data, w.row_stride, x, cols, out, rows, scratch.rounded);
  }
  matmul(*s.kernels, w.type, w.data, w.row_stride, x, cols, out, rows);
}

// Rotates adjacent pairs (i, i+1) of each head of `vec` (n floats) by the angles of position `pos`.
void rope(const ForwardShape& s, float* vec, std::size_t n, int pos) {
  const std::size_t head = s.config.head_size(), half = head / 2;
  const float* cs = s.rope_cos.data() + static_cast<std::size_t>(pos) * half;
  const float* sn = s.rope_sin.data() + static_cast<std::size_t>(pos) * half;
  for (std::size_t i = 0; i < n; i += 2) {
    const std::size_t f = (i % head) / 2;
    const float v0 = vec[i], v1 = vec[i + 1];
    vec[i] = v0 * cs[f] - v1 * sn[f];
    vec[i + 1] = v0 * sn[f] + v1 * cs[f];
  }
}

}  // namespace

ForwardShape::ForwardShape(const ModelConfig& c, const Kernels& k, ActivationRounding r)
    : config(c), kernels(&k), rounding(r) {
  const std::size_t head = c.head_size(), half = head / 2;
  rope_cos.resize(static_cast<std::size_t>(c.seq_len) * half);
  rope_sin.resize(rope_cos.size());
  for (std::size_t pos = 0; pos < c.seq_len; ++pos) {
    for (std::size_t f = 0; f < half; ++f) {
      const float freq = 1.0f / std::pow(c.rope_base, static_cast<float>(2 * f) / static_cast<float>(head));
      const float angle = static_cast<float>(pos) * freq;
      rope_cos[pos * half + f] = std::cos(angle);
      rope_sin[pos * half + f] = std::sin(angle);
    }
  }
}

ForwardScratch::ForwardScratch(const ModelConfig& c)
    : xb(c.dim), q(c.dim), att(c.seq_len), attn_out(c.dim), hb(c.hidden_dim), hb2(c.hidden_dim), k(c.kv_dim()),
      v(c.kv_dim()) {}

void embed(const ForwardShape& s, WeightRef table, int token, float* x) {
  s.kernels->dequantize[static_cast<std::uint32_t>(table.type)](
      table.data + static_cast<std::size_t>(token) * table.row_stride, x, s.config.dim);
}

void kv_project(const ForwardShape& s, const float* x, const float* attn_norm, WeightRef wk, WeightRef wv, int pos,
                ForwardScratch& scratch, float* k, float* v) {
  const std::size_t dim = s.config.dim, kv_dim = s.config.kv_dim();
  rmsnorm(scratch.xb.data(), x, attn_norm, dim, s.config.rms_eps);
  matvec(s, wk, scratch.xb.data(), dim, k, kv_dim, scratch);
  matvec(s, wv, scratch.xb.data(), dim, v, kv_dim, scratch);
  rope(s, k, kv_dim, pos);
}

void attention(const ForwardShape& s, const float* x, const float* attn_norm, WeightRef wq, WeightRef wo,
               const float* keys, const float* values, int pos, ForwardScratch& scratch, float* out) {
  const ModelConfig& c = s.config;
  const std::size_t dim = c.dim, kv_dim = c.kv_dim(), head = c.head_size();
  const std::size_t group = c.n_heads / c.n_kv_heads;  // query heads sharing one key/value head
  float* xb = scratch.xb.data();
  float* q = scratch.q.data();
  float* att = scratch.att.data();
  float* attn = scratch.attn_out.data();
  rmsnorm(xb, x, attn_norm, dim, c.rms_eps);
  matvec(s, wq, xb, dim, q, dim, scratch);
  rope(s, q, dim, pos);
  const float scale = std::sqrt(static_cast<float>(head));
  const std::size_t positions = static_cast<std::size_t>(pos) + 1;
  for (std::size_t h = 0; h < c.n_heads; ++h) {
    const float* qh = q + h * head;
    const std::size_t kv_offset = (h / group) * head;
    s.kernels->attention_scores(qh, keys + kv_offset, kv_dim, positions, head, scale, att);
    s.kernels->softmax(att, positions);
    s.kernels->attention_mix(att, values + kv_offset, kv_dim, positions, head, attn + h * head);
  }
  matvec(s, wo, attn, dim, xb, dim, scratch);
  for (std::size_t i = 0; i < dim; ++i) out[i] = x[i] + xb[i];
}

void feed_forward(const ForwardShape& s, const float* x, const float* ffn_norm, WeightRef w1, WeightRef w2,
                  WeightRef w3, ForwardScratch& scratch, float* out) {
  const ModelConfig& c = s.config;
  const std::size_t dim = c.dim, hidden = c.hidden_dim;
  float* xb = scratch.xb.data();
  float* hb = scratch.hb.data();
  float* hb2 = scratch.hb2.data();
  rmsnorm(xb, x, ffn_norm, dim, c.rms_eps);
  matvec(s, w1, xb, dim, hb, hidden, scratch);
  matvec(s, w3, xb, dim, hb2, hidden, scratch);
  for (std::size_t i = 0; i < hidden; ++i) {
    float v = hb[i];
    v *= 1.0f / (1.0f + std::exp(-v));  // SiLU
    hb[i] = v * hb2[i];
  }
  matvec(s, w2, hb, hidden, xb, dim, scratch);
  for (std::size_t i = 0; i < dim; ++i) out[i] = x[i] + xb[i];
}

void logits(const ForwardShape& s, const float* x, const float* final_norm, WeightRef classifier,
            ForwardScratch& scratch, float* out) {
  rmsnorm(scratch.xb.data(), x, final_norm, s.config.dim, s.config.rms_eps);
  matvec(s, classifier, scratch.xb.data(), s.config.dim, out, s.config.vocab_size, scratch);
}

DirectModel::DirectModel(const Model& model, const Kernels& kernels, ActivationRounding rounding)
    : model_(model),
      shape_(model.config, kernels, rounding),
      scratch_(model.config),
      x_(model.config.dim),
      x2_(model.config.dim),
      keys_(static_cast<std::size_t>(model.config.n_layers) * model.config.seq_len * model.config.kv_dim()),
      values_(keys_.size()),
      logits_(model.config.vocab_size) {}

const float* DirectModel::step(int token, int pos, bool want_logits) {
  const ModelConfig& c = model_.config;
  const std::size_t kv_dim = c.kv_dim(), layer_cache = static_cast<std::size_t>(c.seq_len) * kv_dim;
  auto ref = [](const Tensor& t) { return weight_ref(t, t.bytes.data()); };
  auto f32 = [](const Tensor& t) { return reinterpret_cast<const float*>(t.bytes.data()); };
  embed(shape_, ref(model_.token_embedding), token, x_.data());
  for (std::size_t l = 0; l < c.n_layers; ++l) {
    const LayerTensors& w = model_.layers[l];
    float* keys = keys_.data() + l * layer_cache;
    float* values = values_.data() + l * layer_cache;
    const std::size_t row = static_cast<std::size_t>(pos) * kv_dim;
    kv_project(shape_, x_.data(), f32(w.attn_norm), ref(w.wk), ref(w.wv), pos, scratch_, keys + row, values + row);
    attention(shape_, x_.data(), f32(w.attn_norm), ref(w.wq), ref(w.wo), keys, values, pos, scratch_, x2_.data());
    feed_forward(shape_, x2_.data(), f32(w.ffn_norm), ref(w.w1), ref(w.w2), ref(w.w3), scratch_, x_.data());
  }
  if (!want_logits) return nullptr;
  logits(shape_, x_.data(), f32(model_.final_norm), ref(model_.classifier), scratch_, logits_.data());
  return logits_.data();
}

}  // namespace mmsb::llm
