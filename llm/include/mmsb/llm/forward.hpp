// mmsb/llm/forward.hpp — the maths of one Llama decoding step, split into the pieces that become
// graph nodes (engine.hpp) and that the direct baseline loop calls in sequence (the same functions, so the two
// compute bit-identical results).
//
// Per layer: kv_project() writes the new key and value rows of the position; attention() adds the attention
// output to the residual stream; feed_forward() adds the SwiGLU output. embed() starts the stream, logits()
// ends it. attend() then attention_output() is kv_project() then attention() with the products of q, k and v and
// the attention in one split job (the decoding step's path). Weights are raw tensor bytes (from pages, or the
// mapped file) with their type.
//
// Thread-safety: the functions are pure apart from their output and scratch arguments; calls with distinct
// outputs and scratch may run concurrently, unless they share a ForwardShape with a team (one job at a time).
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "mmsb/llm/kernels.hpp"
#include "mmsb/llm/model.hpp"

namespace mmsb::llm {

// How activations enter the products with quantized weights: kept in f32 (this engine), or rounded as llama.cpp's
// CPU backend rounds them (to compare with its logits; see matmul_llamacpp_rounding()).
enum class ActivationRounding : std::uint8_t { None, LikeLlamaCpp };

class ThreadTeam;  // llm/thread_team.hpp

// The shape of the model plus precomputed RoPE rotations, shared by every step.
struct ForwardShape {
  ForwardShape(const ModelConfig& config, const Kernels& kernels,
               ActivationRounding rounding = ActivationRounding::None);
  ModelConfig config;
  const Kernels* kernels;
  ActivationRounding rounding;
  std::vector<float> rope_cos, rope_sin;  // [seq_len][head_size / 2]
  // Splits the products (by rows) and attention (by heads) of every function below across its threads; nullptr:
  // one thread. Results are bit-identical whatever the team's size (kernels.hpp). The comparison mode
  // (ActivationRounding::LikeLlamaCpp) always runs on one thread.
  ThreadTeam* team = nullptr;
};

// A weight tensor's bytes and encoding as a node sees them.
struct WeightRef {
  const std::byte* data;
  TensorType type;
  std::size_t row_stride;
};
inline WeightRef weight_ref(const Tensor& t, const std::byte* data) { return {data, t.type, t.row_stride}; }

// Per-node working memory, sized once (no allocation per step).
struct ForwardScratch {
  explicit ForwardScratch(const ModelConfig& c);
  std::vector<float> xb, q, att, attn_out, hb, hb2, k, v;
  std::vector<float> rounded;                // ActivationRounding::LikeLlamaCpp only
  std::vector<std::byte> act, act_b, act_c;  // prepared activations (kernels.hpp) of the products
};

// The step's input, as stored in the step page.
struct StepInput {
  std::int32_t token;
  std::int32_t pos;
  std::int32_t want_logits = 1;  // 0: a prompt step whose logits nobody reads; the classifier is skipped
  // > 0: the last position of a batched prompt wave (Engine::prompt), after this many batch positions; the kv nodes
  // compute it with the batch, and its stream leaving each layer is row batch_rows of that layer's batch stream.
  std::int32_t batch_rows = 0;
};

void embed(const ForwardShape& s, WeightRef table, int token, float* x);
// Normalizes x, projects the key and value of `pos` and rotates the key; writes kv_dim floats to each of k and v.
void kv_project(const ForwardShape& s, const float* x, const float* attn_norm, WeightRef wk, WeightRef wv, int pos,
                ForwardScratch& scratch, float* k, float* v);
// One position's attention before its output product, as one split job: normalizes x, projects q, k and v,
// rotates q and k, and attends over the cached rows 0 .. pos - 1 of keys/values ([seq_len][kv_dim]; no other row
// is read) and the position's new row. Writes the new key and value rows to k and v (kv_dim floats each; they may
// be row pos of keys/values) and the heads' mixes to attn (dim floats). The bits of kv_project() then attention().
void attend(const ForwardShape& s, const float* x, const float* attn_norm, WeightRef wq, WeightRef wk, WeightRef wv,
            const float* keys, const float* values, int pos, ForwardScratch& scratch, float* k, float* v, float* attn);
// out = x + wo · attn (attn: attend()'s mixes).
void attention_output(const ForwardShape& s, const float* x, WeightRef wo, const float* attn, ForwardScratch& scratch,
                      float* out);
// out = x + wo · attention(q(x), keys[0..pos], values[0..pos]); keys/values are [seq_len][kv_dim].
void attention(const ForwardShape& s, const float* x, const float* attn_norm, WeightRef wq, WeightRef wo,
               const float* keys, const float* values, int pos, ForwardScratch& scratch, float* out);
// out = x + w2 · (silu(w1 · norm(x)) * (w3 · norm(x))).
void feed_forward(const ForwardShape& s, const float* x, const float* ffn_norm, WeightRef w1, WeightRef w2,
                  WeightRef w3, ForwardScratch& scratch, float* out);
void logits(const ForwardShape& s, const float* x, const float* final_norm, WeightRef classifier,
            ForwardScratch& scratch, float* out);

// Batched prefill: the same maths for `n` consecutive positions pos0 .. pos0 + n - 1 at once. Activations are
// row-major [n][width]. Every product is batched_matmul(): the n activation vectors are prepared once and each
// tile of weight rows is read once for several of them, by the same kernel as the one-token path, which computes
// every (row, vector) result with the same operations (kernels.hpp), so every position's results are
// bit-identical to n single steps (with ActivationRounding::LikeLlamaCpp each vector goes through the one-token
// product instead: same result).
struct BatchScratch {
  BatchScratch(const ModelConfig& c, std::size_t max_batch);
  std::size_t max_batch;
  std::vector<float> xb, q, attn_out, hb, hb2, mid;
  ForwardScratch one;  // attention scores and the one-token products' scratch
};
// out[t][r] = dot(row r, x[t]) for t < n, r < rows.
void batched_matmul(const ForwardShape& s, WeightRef w, const float* x, std::size_t cols, float* out, std::size_t rows,
                    std::size_t n, ForwardScratch& scratch);
void embed_batch(const ForwardShape& s, WeightRef table, const std::int32_t* tokens, std::size_t n, float* x);
// Writes the n key rows to k and the n value rows to v ([n][kv_dim] each).
void kv_project_batch(const ForwardShape& s, const float* x, const float* attn_norm, WeightRef wk, WeightRef wv,
                      int pos0, std::size_t n, BatchScratch& scratch, float* k, float* v);
// Causal: position pos0 + t attends to cache rows 0 .. pos0 + t (the batch's rows must be in the cache already).
void attention_batch(const ForwardShape& s, const float* x, const float* attn_norm, WeightRef wq, WeightRef wo,
                     const float* keys, const float* values, int pos0, std::size_t n, BatchScratch& scratch,
                     float* out);
void feed_forward_batch(const ForwardShape& s, const float* x, const float* ffn_norm, WeightRef w1, WeightRef w2,
                        WeightRef w3, std::size_t n, BatchScratch& scratch, float* out);

// The direct baseline: the same step as a plain loop over plain buffers, no runtime. Used by the benchmark
// (llm_direct_tok_per_s_*) and by tests as a second opinion on the engine.
class DirectModel {
 public:
  // `threads` > 1: the products and attention are split across a team of that many threads (as the engine's).
  DirectModel(const Model& model, const Kernels& kernels, ActivationRounding rounding = ActivationRounding::None,
              unsigned threads = 1);
  ~DirectModel();
  DirectModel(const DirectModel&) = delete;
  DirectModel& operator=(const DirectModel&) = delete;
  // Returns vocab_size logits, valid until the next step (nullptr when !want_logits: the classifier is skipped).
  const float* step(int token, int pos, bool want_logits = true);
  // Batched prefill of tokens at positions pos .. pos + size - 1 (no logits), in chunks of up to `max_batch`
  // positions with the *_batch functions: the same cache and stream as that many step(..., false) calls.
  void prefill(std::span<const std::int32_t> tokens, int pos, std::size_t max_batch = 64);

 private:
  const Model& model_;
  std::unique_ptr<ThreadTeam> team_;
  ForwardShape shape_;
  ForwardScratch scratch_;
  std::vector<float> x_, x2_, keys_, values_, logits_;
  std::vector<float> bx_, bx2_, bk_, bv_;
  std::unique_ptr<BatchScratch> batch_;
};

}  // namespace mmsb::llm
