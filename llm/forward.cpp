#include "mmsb/llm/forward.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "llm/kquants.hpp"

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

BatchScratch::BatchScratch(const ModelConfig& c, std::size_t max)
    : max_batch(max),
      xb(max * c.dim),
      q(max * c.dim),
      attn_out(max * c.dim),
      hb(max * c.hidden_dim),
      hb2(max * c.hidden_dim),
      mid(max * c.dim),
      one(c) {}

void batched_matmul(const ForwardShape& s, WeightRef w, const float* x, std::size_t cols, float* out,
                    std::size_t rows, std::size_t n, ForwardScratch& scratch) {
  if (s.rounding == ActivationRounding::LikeLlamaCpp || is_super_block_type(w.type) || n == 1) {
    for (std::size_t t = 0; t < n; ++t) matvec(s, w, x + t * cols, cols, out + t * rows, rows, scratch);
    return;
  }
  const DotFn dot = s.kernels->dot[static_cast<std::uint32_t>(w.type)];
  const Dot4Fn dot4 = s.kernels->dot4[static_cast<std::uint32_t>(w.type)];
  for (std::size_t r = 0; r < rows; ++r) {
    const std::byte* row = w.data + r * w.row_stride;
    std::size_t t = 0;
    if (dot4 != nullptr) {
      for (; t + 4 <= n; t += 4) {
        float four[4];
        dot4(row, x + t * cols, cols, cols, four);
        for (std::size_t j = 0; j < 4; ++j) out[(t + j) * rows + r] = four[j];
      }
    }
    for (; t < n; ++t) out[t * rows + r] = dot(row, x + t * cols, cols);
  }
}

void embed_batch(const ForwardShape& s, WeightRef table, const std::int32_t* tokens, std::size_t n, float* x) {
  for (std::size_t t = 0; t < n; ++t) embed(s, table, tokens[t], x + t * s.config.dim);
}

void kv_project_batch(const ForwardShape& s, const float* x, const float* attn_norm, WeightRef wk, WeightRef wv,
                      int pos0, std::size_t n, BatchScratch& scratch, float* k, float* v) {
  const std::size_t dim = s.config.dim, kv_dim = s.config.kv_dim();
  float* xb = scratch.xb.data();
  for (std::size_t t = 0; t < n; ++t) rmsnorm(xb + t * dim, x + t * dim, attn_norm, dim, s.config.rms_eps);
  batched_matmul(s, wk, xb, dim, k, kv_dim, n, scratch.one);
  batched_matmul(s, wv, xb, dim, v, kv_dim, n, scratch.one);
  for (std::size_t t = 0; t < n; ++t) rope(s, k + t * kv_dim, kv_dim, pos0 + static_cast<int>(t));
}

void attention_batch(const ForwardShape& s, const float* x, const float* attn_norm, WeightRef wq, WeightRef wo,
                     const float* keys, const float* values, int pos0, std::size_t n, BatchScratch& scratch,
                     float* out) {
  const ModelConfig& c = s.config;
  const std::size_t dim = c.dim, kv_dim = c.kv_dim(), head = c.head_size();
  const std::size_t group = c.n_heads / c.n_kv_heads;
  float* xb = scratch.xb.data();
  float* q = scratch.q.data();
  float* attn = scratch.attn_out.data();
  float* att = scratch.one.att.data();
  for (std::size_t t = 0; t < n; ++t) rmsnorm(xb + t * dim, x + t * dim, attn_norm, dim, c.rms_eps);
  batched_matmul(s, wq, xb, dim, q, dim, n, scratch.one);
  const float scale = std::sqrt(static_cast<float>(head));
  for (std::size_t t = 0; t < n; ++t) {
    const int pos = pos0 + static_cast<int>(t);
    float* qt = q + t * dim;
    rope(s, qt, dim, pos);
    const std::size_t positions = static_cast<std::size_t>(pos) + 1;  // causal: rows up to this position
    for (std::size_t h = 0; h < c.n_heads; ++h) {
      const std::size_t kv_offset = (h / group) * head;
      s.kernels->attention_scores(qt + h * head, keys + kv_offset, kv_dim, positions, head, scale, att);
      s.kernels->softmax(att, positions);
      s.kernels->attention_mix(att, values + kv_offset, kv_dim, positions, head, attn + t * dim + h * head);
    }
  }
  batched_matmul(s, wo, attn, dim, xb, dim, n, scratch.one);
  for (std::size_t i = 0; i < n * dim; ++i) out[i] = x[i] + xb[i];
}

void feed_forward_batch(const ForwardShape& s, const float* x, const float* ffn_norm, WeightRef w1, WeightRef w2,
                        WeightRef w3, std::size_t n, BatchScratch& scratch, float* out) {
  const ModelConfig& c = s.config;
  const std::size_t dim = c.dim, hidden = c.hidden_dim;
  float* xb = scratch.xb.data();
  float* hb = scratch.hb.data();
  float* hb2 = scratch.hb2.data();
  for (std::size_t t = 0; t < n; ++t) rmsnorm(xb + t * dim, x + t * dim, ffn_norm, dim, c.rms_eps);
  batched_matmul(s, w1, xb, dim, hb, hidden, n, scratch.one);
  batched_matmul(s, w3, xb, dim, hb2, hidden, n, scratch.one);
  for (std::size_t i = 0; i < n * hidden; ++i) {
    float v = hb[i];
    v *= 1.0f / (1.0f + std::exp(-v));  // SiLU
    hb[i] = v * hb2[i];
  }
  batched_matmul(s, w2, hb, hidden, xb, dim, n, scratch.one);
  for (std::size_t i = 0; i < n * dim; ++i) out[i] = x[i] + xb[i];
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

namespace mmsb::llm {

void DirectModel::prefill(std::span<const std::int32_t> tokens, int pos, std::size_t max_batch) {
  const ModelConfig& c = model_.config;
  if (max_batch == 0) max_batch = 1;
  if (!batch_ || batch_->max_batch < max_batch) {
    batch_ = std::make_unique<BatchScratch>(c, max_batch);
    bx_.resize(max_batch * c.dim);
    bx2_.resize(max_batch * c.dim);
  }
  const std::size_t kv_dim = c.kv_dim(), layer_cache = static_cast<std::size_t>(c.seq_len) * kv_dim;
  auto ref = [](const Tensor& t) { return weight_ref(t, t.bytes.data()); };
  auto f32 = [](const Tensor& t) { return reinterpret_cast<const float*>(t.bytes.data()); };
  for (std::size_t done = 0; done < tokens.size();) {
    const std::size_t n = std::min(max_batch, tokens.size() - done);
    const int pos0 = pos + static_cast<int>(done);
    embed_batch(shape_, ref(model_.token_embedding), tokens.data() + done, n, bx_.data());
    for (std::size_t l = 0; l < c.n_layers; ++l) {
      const LayerTensors& w = model_.layers[l];
      float* keys = keys_.data() + l * layer_cache;
      float* values = values_.data() + l * layer_cache;
      const std::size_t row = static_cast<std::size_t>(pos0) * kv_dim;
      kv_project_batch(shape_, bx_.data(), f32(w.attn_norm), ref(w.wk), ref(w.wv), pos0, n, *batch_, keys + row,
                       values + row);
      if (l + 1 == c.n_layers) break;  // the last layer's stream would only feed the classifier
      attention_batch(shape_, bx_.data(), f32(w.attn_norm), ref(w.wq), ref(w.wo), keys, values, pos0, n, *batch_,
                      bx2_.data());
      feed_forward_batch(shape_, bx2_.data(), f32(w.ffn_norm), ref(w.w1), ref(w.w2), ref(w.w3), n, *batch_,
                         bx_.data());
    }
    done += n;
  }
}

}  // namespace mmsb::llm
