#include "mmsb/llm/forward.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>

#include <xmmintrin.h>

#include "llm/kquants.hpp"
#include "llm/thread_team.hpp"

namespace mmsb::llm {

namespace {

// Products smaller than this many multiply-adds run on one thread: splitting them costs more than it saves.
constexpr std::size_t kSplitWork = std::size_t{1} << 16;
// A split product's items are tiles of this many rows (a multiple of every kernel's tile height).
constexpr std::size_t kRowAlign = 16;

// out = weight * x / rms(x) for one row of n floats whose sum of squares is ss, four lanes at a time (SSE, which
// every x86-64 has: products lane by lane, the same bits as one at a time).
void scale_row(float* out, const float* x, const float* weight, std::size_t n, float ss, float eps) {
  float scale = ss / static_cast<float>(n);
  scale += eps;
  scale = 1.0f / std::sqrt(scale);
  const __m128 s4 = _mm_set1_ps(scale);
  std::size_t j = 0;
  for (; j + 4 <= n; j += 4) {
    _mm_storeu_ps(out + j, _mm_mul_ps(_mm_loadu_ps(weight + j), _mm_mul_ps(s4, _mm_loadu_ps(x + j))));
  }
  for (; j < n; ++j) out[j] = weight[j] * (scale * x[j]);
}
// The RMS norm of `rows` rows of n floats. Each row's sum of squares is taken in element order; four rows go side
// by side, so that their four chains of adds overlap (the results are those of one row at a time).
void rmsnorm_rows(float* out, const float* x, const float* weight, std::size_t rows, std::size_t n, float eps) {
  std::size_t t = 0;
  for (; t + 4 <= rows; t += 4) {
    const float *x0 = x + t * n, *x1 = x0 + n, *x2 = x1 + n, *x3 = x2 + n;
    float s0 = 0, s1 = 0, s2 = 0, s3 = 0;
    for (std::size_t j = 0; j < n; ++j) {
      s0 += x0[j] * x0[j];
      s1 += x1[j] * x1[j];
      s2 += x2[j] * x2[j];
      s3 += x3[j] * x3[j];
    }
    scale_row(out + t * n, x0, weight, n, s0, eps);
    scale_row(out + (t + 1) * n, x1, weight, n, s1, eps);
    scale_row(out + (t + 2) * n, x2, weight, n, s2, eps);
    scale_row(out + (t + 3) * n, x3, weight, n, s3, eps);
  }
  for (; t < rows; ++t) {
    const float* xt = x + t * n;
    float ss = 0;
    for (std::size_t j = 0; j < n; ++j) ss += xt[j] * xt[j];
    scale_row(out + t * n, xt, weight, n, ss, eps);
  }
}

// Rotates adjacent pairs (i, i+1) of each head of `vec` (n floats, starting at a head) by the angles of `pos`.
void rope(const ForwardShape& s, float* vec, std::size_t n, int pos) {
  const std::size_t head = s.config.head_size(), half = head / 2;
  const float* cs = s.rope_cos.data() + static_cast<std::size_t>(pos) * half;
  const float* sn = s.rope_sin.data() + static_cast<std::size_t>(pos) * half;
  for (std::size_t h = 0; h < n; h += head) {  // head by head: no division per pair
    float* v = vec + h;
    for (std::size_t f = 0; f < half; ++f) {
      const float v0 = v[2 * f], v1 = v[2 * f + 1];
      v[2 * f] = v0 * cs[f] - v1 * sn[f];
      v[2 * f + 1] = v0 * sn[f] + v1 * cs[f];
    }
  }
}

// Runs job(first, last, thread) over the items [0, items) on the team when `work` is worth splitting, else inline
// as one piece. Results do not depend on the split: every kernel computes each row alike whatever range it is given
// (kernels.hpp). A team of one exists only to time its jobs (MMSB_TEAM_STATS): it runs the pieces two threads would.
template <class Job>
void split(const ForwardShape& s, std::size_t work, std::size_t items, Job&& job) {
  const auto count = static_cast<unsigned>(items);
  if (s.team == nullptr || work < kSplitWork || items < 2 || s.rounding == ActivationRounding::LikeLlamaCpp) {
    job(0u, count, 0u);
    return;
  }
  s.team->run(job, count);
}

// The rows of tiles [first, last) of a product of `rows` rows.
PartRange tile_rows(std::size_t rows, unsigned first, unsigned last) {
  return {std::min(rows, first * kRowAlign), std::min(rows, last * kRowAlign)};
}

// Rows `range` of w times the n prepared vectors; out holds `rows` floats per vector. In the comparison mode
// (ActivationRounding::LikeLlamaCpp) `x` is used instead, one vector at a time through the scalar rounding path.
void product_rows(const ForwardShape& s, WeightRef w, PreparedActivations act, const float* x, std::size_t n,
                  std::size_t cols, float* out, std::size_t rows, PartRange range, ForwardScratch& scratch) {
  if (range.begin >= range.end) return;
  if (s.rounding == ActivationRounding::LikeLlamaCpp) {
    for (std::size_t t = 0; t < n; ++t) {
      matmul_llamacpp_rounding(*s.kernels, w.type, w.data, w.row_stride, x + t * cols, cols, out + t * rows, rows,
                               scratch.rounded);
    }
    return;
  }
  s.kernels->matmul[static_cast<std::uint32_t>(w.type)](w.data + range.begin * w.row_stride, w.row_stride,
                                                        range.end - range.begin, act.data, act.stride, n, cols,
                                                        out + range.begin, rows);
}

PreparedActivations prepare(const ForwardShape& s, TensorType type, const float* x, std::size_t cols, std::size_t n,
                            std::vector<std::byte>& storage) {
  if (s.rounding == ActivationRounding::LikeLlamaCpp) return {};
  return prepare_activations(*s.kernels, type, x, cols, n, cols, storage);
}

// x ([n][cols]) times w_a and, when its data is not null, w_b (the same input: k and v, gate and up), split by rows
// across the team; then(range) runs on each piece's rows after its products, so that no second join is needed.
template <class Then>
void products(const ForwardShape& s, WeightRef w_a, WeightRef w_b, const float* x, std::size_t cols, std::size_t n,
              float* out_a, float* out_b, std::size_t rows, ForwardScratch& scratch, Then&& then) {
  const PreparedActivations a = prepare(s, w_a.type, x, cols, n, scratch.act);
  PreparedActivations b = a;
  if (w_b.data != nullptr && activation_format(w_b.type) != activation_format(w_a.type)) {
    b = prepare(s, w_b.type, x, cols, n, scratch.act_b);
  }
  auto job = [&](unsigned first, unsigned last, unsigned) {
    const PartRange range = tile_rows(rows, first, last);
    product_rows(s, w_a, a, x, n, cols, out_a, rows, range, scratch);
    if (w_b.data != nullptr) product_rows(s, w_b, b, x, n, cols, out_b, rows, range, scratch);
    then(range);
  };
  split(s, rows * cols * n * (w_b.data != nullptr ? 2 : 1), (rows + kRowAlign - 1) / kRowAlign, job);
}

void product(const ForwardShape& s, WeightRef w, const float* x, std::size_t cols, std::size_t n, float* out,
             std::size_t rows, ForwardScratch& scratch) {
  products(s, w, {}, x, cols, n, out, nullptr, rows, scratch, [](PartRange) {});
}

// The buffers of n positions ([n][width] each) and the scratch of the products.
struct Buffers {
  float* xb;
  float* q;
  float* attn;
  float* hb;
  float* hb2;
  ForwardScratch& one;
};
Buffers buffers(ForwardScratch& s) {
  return {s.xb.data(), s.q.data(), s.attn_out.data(), s.hb.data(), s.hb2.data(), s};
}
Buffers buffers(BatchScratch& b) {
  return {b.xb.data(), b.q.data(), b.attn_out.data(), b.hb.data(), b.hb2.data(), b.one};
}

void kv_rows(const ForwardShape& s, const float* x, const float* attn_norm, WeightRef wk, WeightRef wv, int pos0,
             std::size_t n, Buffers b, float* k, float* v) {
  const std::size_t dim = s.config.dim, kv_dim = s.config.kv_dim();
  rmsnorm_rows(b.xb, x, attn_norm, n, dim, s.config.rms_eps);
  products(s, wk, wv, b.xb, dim, n, k, v, kv_dim, b.one, [](PartRange) {});
  for (std::size_t t = 0; t < n; ++t) rope(s, k + t * kv_dim, kv_dim, pos0 + static_cast<int>(t));
}

// Position pos0 + t attends to cache rows 0 .. pos0 + t. The heads are split across the team: each piece computes
// the query rows of its heads (no other piece needs them) and rotates them; then per head, the scores of all n
// positions at once (each key read once for several queries: kernels.hpp), their softmax and mix, in the thread's
// score rows.
void attention_rows(const ForwardShape& s, const float* x, const float* attn_norm, WeightRef wq, WeightRef wo,
                    const float* keys, const float* values, int pos0, std::size_t n, Buffers b, float* out) {
  const ModelConfig& c = s.config;
  const std::size_t dim = c.dim, kv_dim = c.kv_dim(), head = c.head_size(), seq = c.seq_len;
  const std::size_t group = c.n_heads / c.n_kv_heads;  // query heads sharing one key/value head
  rmsnorm_rows(b.xb, x, attn_norm, n, dim, c.rms_eps);
  const PreparedActivations act = prepare(s, wq.type, b.xb, dim, n, b.one.act);
  const unsigned parts = s.team != nullptr ? s.team->size() : 1;
  if (b.one.att.size() < parts * n * seq) b.one.att.resize(parts * n * seq);  // once: n score rows per thread
  const float scale = std::sqrt(static_cast<float>(head));
  const std::size_t first = static_cast<std::size_t>(pos0);  // position 0 of the batch sees first + 1 keys
  auto job = [&](unsigned first_head, unsigned last_head, unsigned thread) {
    const PartRange heads{first_head, last_head};
    product_rows(s, wq, act, b.xb, n, dim, b.q, dim, {heads.begin * head, heads.end * head}, b.one);
    for (std::size_t t = 0; t < n; ++t) {
      rope(s, b.q + t * dim + heads.begin * head, (heads.end - heads.begin) * head, pos0 + static_cast<int>(t));
    }
    float* att = b.one.att.data() + thread * n * seq;
    for (std::size_t h = heads.begin; h < heads.end; ++h) {
      const std::size_t kv_offset = (h / group) * head;
      s.kernels->attention_scores_causal(b.q + h * head, dim, n, keys + kv_offset, kv_dim, first, head, scale, att,
                                         seq);
      for (std::size_t t = 0; t < n; ++t) {
        s.kernels->softmax(att + t * seq, first + t + 1);
        s.kernels->attention_mix(att + t * seq, values + kv_offset, kv_dim, first + t + 1, head,
                                 b.attn + t * dim + h * head);
      }
    }
  };
  split(s, n * dim * (dim + kv_dim * (static_cast<std::size_t>(pos0) + n)), c.n_heads, job);
  product(s, wo, b.attn, dim, n, b.xb, dim, b.one);
  for (std::size_t i = 0; i < n * dim; ++i) out[i] = x[i] + b.xb[i];
}

// The activations of x prepared for each of three weights, each format once: q's in `act`, k's in `act_b`
// unless it matches q's, v's in `act_c` unless it matches one of them.
struct QkvActivations {
  PreparedActivations q, k, v;
};
QkvActivations prepare_qkv(const ForwardShape& s, WeightRef wq, WeightRef wk, WeightRef wv, const float* x,
                           std::size_t cols, ForwardScratch& scratch) {
  QkvActivations a{prepare(s, wq.type, x, cols, 1, scratch.act), {}, {}};
  const ActivationFormat fq = activation_format(wq.type), fk = activation_format(wk.type);
  const ActivationFormat fv = activation_format(wv.type);
  a.k = fk == fq ? a.q : prepare(s, wk.type, x, cols, 1, scratch.act_b);
  a.v = fv == fq ? a.q : fv == fk ? a.k : prepare(s, wv.type, x, cols, 1, scratch.act_c);
  return a;
}

// The attention weights of the `group` query heads at q that share one key/value head, over the cached rows
// 0 .. pos - 1 (keys: that head's column, kv_dim apart) and the position's own key: pos + 1 scores and their softmax
// per query head, `seq` apart in att. The cached rows and the new one are separate calls, yet every score is its
// own dot product: the bits of one call over pos + 1 contiguous rows.
void attention_weights(const ForwardShape& s, const float* q, std::size_t group, const float* keys, const float* key,
                       std::size_t pos, float* att) {
  const std::size_t head = s.config.head_size(), kv_dim = s.config.kv_dim(), seq = s.config.seq_len;
  const float scale = std::sqrt(static_cast<float>(head));
  if (pos > 0) s.kernels->attention_scores_heads(q, head, group, keys, kv_dim, pos, head, scale, att, seq);
  s.kernels->attention_scores_heads(q, head, group, key, kv_dim, 1, head, scale, att + pos, seq);
  for (std::size_t j = 0; j < group; ++j) s.kernels->softmax(att + j * seq, pos + 1);
}

// Adds the position's own value row, weighted, to a head's mix of the cached rows: the mix adds the rows in order,
// each product rounded before its add as the kernels do, so this is the bits of one mix over pos + 1 rows.
void add_last_row(float weight, const float* value, std::size_t head, float* out) {
  for (std::size_t i = 0; i < head; ++i) {
    const float product = weight * value[i];
    out[i] = out[i] + product;
  }
}

// Each piece takes key/value heads [first, last): the q, k and v rows of those heads (the q heads that share them),
// their rotation, and their query heads' attention, which needs no row of another piece: one job, no join between
// the products and the attention.
void attend_rows(const ForwardShape& s, const float* x, const float* attn_norm, WeightRef wq, WeightRef wk,
                 WeightRef wv, const float* keys, const float* values, int pos, ForwardScratch& scratch, float* k,
                 float* v, float* attn) {
  const ModelConfig& c = s.config;
  const std::size_t dim = c.dim, kv_dim = c.kv_dim(), head = c.head_size(), seq = c.seq_len;
  const std::size_t group = c.n_heads / c.n_kv_heads;
  rmsnorm_rows(scratch.xb.data(), x, attn_norm, 1, dim, c.rms_eps);
  const float* xb = scratch.xb.data();
  const QkvActivations act = prepare_qkv(s, wq, wk, wv, xb, dim, scratch);
  const unsigned parts = s.team != nullptr ? s.team->size() : 1;
  const std::size_t rows = c.n_heads * seq;                                 // a score row per head, per thread
  if (scratch.att.size() < parts * rows) scratch.att.resize(parts * rows);  // once
  const auto p = static_cast<std::size_t>(pos);
  float* q = scratch.q.data();
  auto job = [&](unsigned first, unsigned last, unsigned thread) {
    const PartRange kv_rows{first * head, last * head}, q_rows{first * group * head, last * group * head};
    product_rows(s, wq, act.q, xb, 1, dim, q, dim, q_rows, scratch);
    product_rows(s, wk, act.k, xb, 1, dim, k, kv_dim, kv_rows, scratch);
    product_rows(s, wv, act.v, xb, 1, dim, v, kv_dim, kv_rows, scratch);
    rope(s, q + q_rows.begin, q_rows.end - q_rows.begin, pos);
    rope(s, k + kv_rows.begin, kv_rows.end - kv_rows.begin, pos);
    float* att = scratch.att.data() + thread * rows;
    const std::size_t h0 = q_rows.begin / head, h1 = q_rows.end / head;
    for (std::size_t kv_head = first; kv_head < last; ++kv_head) {
      const std::size_t kv_offset = kv_head * head, h = kv_head * group;
      attention_weights(s, q + h * head, group, keys + kv_offset, k + kv_offset, p, att + (h - h0) * seq);
    }
    // The cached rows for all of the piece's heads in one pass (0 rows: zeros), then each head's new row.
    s.kernels->attention_mix_heads(att, seq, values + first * head, kv_dim, p, head, h1 - h0, group, attn + h0 * head);
    for (std::size_t h = h0; h < h1; ++h) {
      add_last_row(att[(h - h0) * seq + p], v + (h / group) * head, head, attn + h * head);
    }
  };
  split(s, dim * (dim + 2 * kv_dim) + 2 * dim * (p + 1), c.n_kv_heads, job);
}

// out = x + w2 · (silu(w1 · norm(x)) * (w3 · norm(x))); each piece applies the SwiGLU to its own rows.
void feed_forward_rows(const ForwardShape& s, const float* x, const float* ffn_norm, WeightRef w1, WeightRef w2,
                       WeightRef w3, std::size_t n, Buffers b, float* out) {
  const ModelConfig& c = s.config;
  const std::size_t dim = c.dim, hidden = c.hidden_dim;
  rmsnorm_rows(b.xb, x, ffn_norm, n, dim, c.rms_eps);
  products(s, w1, w3, b.xb, dim, n, b.hb, b.hb2, hidden, b.one, [&](PartRange rows) {
    for (std::size_t t = 0; t < n && rows.begin < rows.end; ++t) {
      s.kernels->swiglu(b.hb + t * hidden + rows.begin, b.hb2 + t * hidden + rows.begin, rows.end - rows.begin);
    }
  });
  product(s, w2, b.hb, hidden, n, b.xb, dim, b.one);
  for (std::size_t i = 0; i < n * dim; ++i) out[i] = x[i] + b.xb[i];
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
    : xb(c.dim),
      q(c.dim),
      att(c.seq_len),
      attn_out(c.dim),
      hb(c.hidden_dim),
      hb2(c.hidden_dim),
      k(c.kv_dim()),
      v(c.kv_dim()) {}

void embed(const ForwardShape& s, WeightRef table, int token, float* x) {
  s.kernels->dequantize[static_cast<std::uint32_t>(table.type)](
      table.data + static_cast<std::size_t>(token) * table.row_stride, x, s.config.dim);
}

void kv_project(const ForwardShape& s, const float* x, const float* attn_norm, WeightRef wk, WeightRef wv, int pos,
                ForwardScratch& scratch, float* k, float* v) {
  kv_rows(s, x, attn_norm, wk, wv, pos, 1, buffers(scratch), k, v);
}

void attention(const ForwardShape& s, const float* x, const float* attn_norm, WeightRef wq, WeightRef wo,
               const float* keys, const float* values, int pos, ForwardScratch& scratch, float* out) {
  attention_rows(s, x, attn_norm, wq, wo, keys, values, pos, 1, buffers(scratch), out);
}

void attend(const ForwardShape& s, const float* x, const float* attn_norm, WeightRef wq, WeightRef wk, WeightRef wv,
            const float* keys, const float* values, int pos, ForwardScratch& scratch, float* k, float* v, float* attn) {
  attend_rows(s, x, attn_norm, wq, wk, wv, keys, values, pos, scratch, k, v, attn);
}

void attention_output(const ForwardShape& s, const float* x, WeightRef wo, const float* attn, ForwardScratch& scratch,
                      float* out) {
  const std::size_t dim = s.config.dim;
  product(s, wo, attn, dim, 1, scratch.xb.data(), dim, scratch);
  for (std::size_t i = 0; i < dim; ++i) out[i] = x[i] + scratch.xb[i];
}

void feed_forward(const ForwardShape& s, const float* x, const float* ffn_norm, WeightRef w1, WeightRef w2,
                  WeightRef w3, ForwardScratch& scratch, float* out) {
  feed_forward_rows(s, x, ffn_norm, w1, w2, w3, 1, buffers(scratch), out);
}

void logits(const ForwardShape& s, const float* x, const float* final_norm, WeightRef classifier,
            ForwardScratch& scratch, float* out) {
  rmsnorm_rows(scratch.xb.data(), x, final_norm, 1, s.config.dim, s.config.rms_eps);
  product(s, classifier, scratch.xb.data(), s.config.dim, 1, out, s.config.vocab_size, scratch);
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

void batched_matmul(const ForwardShape& s, WeightRef w, const float* x, std::size_t cols, float* out, std::size_t rows,
                    std::size_t n, ForwardScratch& scratch) {
  product(s, w, x, cols, n, out, rows, scratch);
}

void embed_batch(const ForwardShape& s, WeightRef table, const std::int32_t* tokens, std::size_t n, float* x) {
  for (std::size_t t = 0; t < n; ++t) embed(s, table, tokens[t], x + t * s.config.dim);
}

void kv_project_batch(const ForwardShape& s, const float* x, const float* attn_norm, WeightRef wk, WeightRef wv,
                      int pos0, std::size_t n, BatchScratch& scratch, float* k, float* v) {
  kv_rows(s, x, attn_norm, wk, wv, pos0, n, buffers(scratch), k, v);
}

void attention_batch(const ForwardShape& s, const float* x, const float* attn_norm, WeightRef wq, WeightRef wo,
                     const float* keys, const float* values, int pos0, std::size_t n, BatchScratch& scratch,
                     float* out) {
  attention_rows(s, x, attn_norm, wq, wo, keys, values, pos0, n, buffers(scratch), out);
}

void feed_forward_batch(const ForwardShape& s, const float* x, const float* ffn_norm, WeightRef w1, WeightRef w2,
                        WeightRef w3, std::size_t n, BatchScratch& scratch, float* out) {
  feed_forward_rows(s, x, ffn_norm, w1, w2, w3, n, buffers(scratch), out);
}

DirectModel::DirectModel(const Model& model, const Kernels& kernels, ActivationRounding rounding, unsigned threads)
    : model_(model),
      team_(threads > 1 || ThreadTeam::stats_wanted() ? std::make_unique<ThreadTeam>(threads) : nullptr),
      shape_(model.config, kernels, rounding),
      scratch_(model.config),
      x_(model.config.dim),
      x2_(model.config.dim),
      keys_(static_cast<std::size_t>(model.config.n_layers) * model.config.seq_len * model.config.kv_dim()),
      values_(keys_.size()),
      logits_(model.config.vocab_size) {
  shape_.team = team_.get();
}

DirectModel::~DirectModel() = default;

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
    attend(shape_, x_.data(), f32(w.attn_norm), ref(w.wq), ref(w.wk), ref(w.wv), keys, values, pos, scratch_,
           keys + row, values + row, scratch_.attn_out.data());
    attention_output(shape_, x_.data(), ref(w.wo), scratch_.attn_out.data(), scratch_, x2_.data());
    feed_forward(shape_, x2_.data(), f32(w.ffn_norm), ref(w.w1), ref(w.w2), ref(w.w3), scratch_, x_.data());
  }
  if (!want_logits) return nullptr;
  logits(shape_, x_.data(), f32(model_.final_norm), ref(model_.classifier), scratch_, logits_.data());
  return logits_.data();
}

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
      feed_forward_batch(shape_, bx2_.data(), f32(w.ffn_norm), ref(w.w1), ref(w.w2), ref(w.w3), n, *batch_, bx_.data());
    }
    done += n;
  }
}

}  // namespace mmsb::llm
