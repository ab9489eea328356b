#include "mmsb/llm/engine.hpp"

#include <algorithm>
#include <cstring>
#include <string>
#include <utility>
#include <vector>

#include "llm/thread_team.hpp"
#include "mmsb/error.hpp"

namespace mmsb::llm {

namespace {

const float* floats(std::span<const std::byte> b) { return reinterpret_cast<const float*>(b.data()); }
float* floats(std::span<std::byte> b) { return reinterpret_cast<float*>(b.data()); }

// Reads and checks the step page inside a node: any writer may commit it, so a bad value must not index memory.
StepInput read_step(std::span<const std::byte> bytes, const ModelConfig& c) {
  StepInput in;
  std::memcpy(&in, bytes.data(), sizeof in);
  if (in.token < 0 || static_cast<std::uint32_t>(in.token) >= c.vocab_size || in.pos < 0 ||
      static_cast<std::uint32_t>(in.pos) >= c.seq_len || in.batch_rows < 0 || in.batch_rows > in.pos) {
    throw Error(ErrorCode::InvalidArgument, "step page holds token " + std::to_string(in.token) + " at position " +
                                                std::to_string(in.pos) + " after " + std::to_string(in.batch_rows) +
                                                " batch rows; expected a token below " + std::to_string(c.vocab_size) +
                                                ", a position below " + std::to_string(c.seq_len) +
                                                " and 0 to position batch rows");
  }
  return in;
}

// The prefill page: this header, then `capacity` token ids (int32).
struct PrefillHeader {
  std::int32_t pos;
  std::int32_t n;
};

// Reads and checks the prefill page inside a node (as read_step: any writer may commit it).
PrefillHeader read_prefill(std::span<const std::byte> bytes, const ModelConfig& c, std::size_t capacity) {
  PrefillHeader h;
  std::memcpy(&h, bytes.data(), sizeof h);
  if (h.n < 1 || static_cast<std::size_t>(h.n) > capacity || h.pos < 0 ||
      static_cast<std::uint64_t>(h.pos) + static_cast<std::uint64_t>(h.n) >= c.seq_len) {
    throw Error(ErrorCode::InvalidArgument, "prefill page holds " + std::to_string(h.n) + " tokens at position " +
                                                std::to_string(h.pos) + "; expected 1 to " + std::to_string(capacity) +
                                                " tokens ending before position " + std::to_string(c.seq_len - 1));
  }
  for (std::int32_t i = 0; i < h.n; ++i) {
    std::int32_t token;
    std::memcpy(&token, bytes.data() + sizeof h + static_cast<std::size_t>(i) * sizeof token, sizeof token);
    if (token < 0 || static_cast<std::uint32_t>(token) >= c.vocab_size) {
      throw Error(ErrorCode::InvalidArgument, "prefill page holds token " + std::to_string(token) +
                                                  "; expected a token below " + std::to_string(c.vocab_size));
    }
  }
  return h;
}

const std::int32_t* prefill_tokens(std::span<const std::byte> bytes) {
  return reinterpret_cast<const std::int32_t*>(bytes.data() + sizeof(PrefillHeader));
}

// What the kv node of layer l reads and keeps between waves.
struct KvNode {
  const ForwardShape* shape;
  const LayerTensors* w;
  const Tensor* embedding;
  PagedModel* paged;
  std::size_t unit;  // the layer's attention unit when paged
  std::uint32_t layer;
  bool last_layer;
  std::size_t batch;  // the batch nodes' capacity (0: none)
  std::uint64_t row_bytes, cache_half, stream_bytes;
  std::uint64_t attention_row;  // where the page holds the step position's attention mixes (attend())
  std::shared_ptr<ForwardScratch> scratch;
  std::shared_ptr<BatchScratch> batch_scratch;      // shared by every layer: the kv nodes form a chain
  std::shared_ptr<std::vector<float>> batch_cache;  // likewise
};

// A decoding step: only the two rows of this position change; they are the delta, so no other cache byte moves.
// The node also computes the position's attention (attend(): q, k, v and the heads' mixes in one split job) and
// hands the mixes to the block node in the page's attention row, so a layer's attention costs no second join. The
// last layer's mixes without logits feed nothing (the block node skips it) unless paged (it still runs there).
void kv_step(const KvNode& n, const StepInput& in, const IncrementalContext& ctx, Delta& out) {
  LayerPager::Pin pin;
  if (n.paged) pin = n.paged->pin(n.unit, in.want_logits != 0);
  auto weight = [&](std::size_t input, const Tensor& t) {
    return n.paged ? n.paged->tensor(pin, t) : ctx.inputs[input].data();
  };
  const bool mixes = !(n.last_layer && in.want_logits == 0 && n.paged == nullptr);
  const std::uint64_t row = static_cast<std::uint64_t>(in.pos) * n.row_bytes;
  out.ranges.push_back({row, n.row_bytes});
  out.ranges.push_back({n.cache_half + row, n.row_bytes});
  if (mixes) {
    // Ranges must not touch: the last value row may end where the attention row starts.
    if (out.ranges.back().end() == n.attention_row) {
      out.ranges.back().length += n.stream_bytes;
    } else {
      out.ranges.push_back({n.attention_row, n.stream_bytes});
    }
  }
  out.payload.resize(2 * n.row_bytes + (mixes ? n.stream_bytes : 0));
  float* key = reinterpret_cast<float*>(out.payload.data());
  float* value = key + n.shape->config.kv_dim();
  const auto* norm = reinterpret_cast<const float*>(weight(2, n.w->attn_norm));
  const WeightRef wk = weight_ref(n.w->wk, weight(3, n.w->wk)), wv = weight_ref(n.w->wv, weight(4, n.w->wv));
  if (!mixes) return kv_project(*n.shape, floats(ctx.inputs[0]), norm, wk, wv, in.pos, *n.scratch, key, value);
  const auto* cache = reinterpret_cast<const float*>(ctx.output.data());  // rows before pos: the page as it is
  attend(*n.shape, floats(ctx.inputs[0]), norm, weight_ref(n.w->wq, weight(5, n.w->wq)), wk, wv, cache,
         cache + n.cache_half / sizeof(float), in.pos, *n.scratch, key, value, value + n.shape->config.kv_dim());
}

// A prompt wave (the step input has batch rows): the batch positions pos .. pos + n - 1 and the step position pos + n,
// all n + 1 as one batch (matrix x (n + 1) products). Their key and value rows go out as one run of rows in each
// half; then the batch's attention and feed-forward give the batch stream leaving this layer, emitted into the
// page's tail for the next layer, its last row for this layer's block node (the last layer skips them: only the
// step position may need logits, and its block node computes that layer).
void kv_prompt_wave(const KvNode& node, const StepInput& in, const IncrementalContext& ctx, Delta& out) {
  const PrefillHeader h = read_prefill(ctx.inputs[6], node.shape->config, node.batch);
  if (in.pos != h.pos + h.n || in.batch_rows != h.n) {
    throw Error(ErrorCode::InvalidArgument, "prompt wave: the step position " + std::to_string(in.pos) + " after " +
                                                std::to_string(in.batch_rows) + " batch rows does not follow the " +
                                                std::to_string(h.n) + " prefill positions from " +
                                                std::to_string(h.pos));
  }
  const ForwardShape& shape = *node.shape;
  const ModelConfig& cfg = shape.config;
  const LayerTensors& w = *node.w;
  const std::size_t n = static_cast<std::size_t>(h.n), rows = n + 1, kv_dim = cfg.kv_dim();
  BatchScratch& bs = *node.batch_scratch;
  const float* stream = node.layer == 0 ? bs.mid.data()  // the batch stream entering this layer
                                        : reinterpret_cast<const float*>(ctx.inputs[7].data() + 2 * node.cache_half);
  if (node.layer == 0) {
    const WeightRef table = weight_ref(*node.embedding, ctx.inputs[7].data());
    embed_batch(shape, table, prefill_tokens(ctx.inputs[6]), n, bs.mid.data());
    embed(shape, table, in.token, bs.mid.data() + n * cfg.dim);
  }
  const std::uint64_t first = static_cast<std::uint64_t>(h.pos) * node.row_bytes, bytes = rows * node.row_bytes;
  const std::uint64_t stream_out = node.last_layer ? 0 : rows * node.stream_bytes;
  out.ranges.push_back({first, bytes});
  out.ranges.push_back({node.cache_half + first, bytes});
  if (stream_out > 0) {
    // Ranges must not touch: a run of value rows ending at the cache's end merges with the stream's.
    if (out.ranges.back().end() == 2 * node.cache_half) {
      out.ranges.back().length += stream_out;
    } else {
      out.ranges.push_back({2 * node.cache_half, stream_out});
    }
  }
  out.payload.resize(2 * bytes + stream_out);
  float* keys = reinterpret_cast<float*>(out.payload.data());
  float* values = keys + rows * kv_dim;
  const float* norm = reinterpret_cast<const float*>(ctx.inputs[2].data());
  const WeightRef wk = weight_ref(w.wk, ctx.inputs[3].data()), wv = weight_ref(w.wv, ctx.inputs[4].data());
  kv_project_batch(shape, stream, norm, wk, wv, h.pos, rows, bs, keys, values);
  if (node.last_layer) return;
  // The cache as the batch sees it: the rows before it (this page) and its own rows, contiguous.
  float* ck = node.batch_cache->data();
  float* cv = ck + std::size_t{cfg.seq_len} * kv_dim;
  const std::size_t before = static_cast<std::size_t>(h.pos) * kv_dim;
  const float* cache = reinterpret_cast<const float*>(ctx.output.data());
  std::memcpy(ck, cache, before * sizeof(float));
  std::memcpy(cv, cache + std::size_t{cfg.seq_len} * kv_dim, before * sizeof(float));
  std::memcpy(ck + before, keys, rows * kv_dim * sizeof(float));
  std::memcpy(cv + before, values, rows * kv_dim * sizeof(float));
  auto f32 = [&](std::size_t i) { return reinterpret_cast<const float*>(ctx.inputs[i].data()); };
  std::vector<float>& after_attention = bs.mid;  // may be `stream` itself (layer 0): updated in place
  attention_batch(shape, stream, norm, weight_ref(w.wq, ctx.inputs[5].data()), weight_ref(w.wo, ctx.inputs[8].data()),
                  ck, cv, h.pos, rows, bs, after_attention.data());
  feed_forward_batch(shape, after_attention.data(), f32(9), weight_ref(w.w1, ctx.inputs[10].data()),
                     weight_ref(w.w2, ctx.inputs[11].data()), weight_ref(w.w3, ctx.inputs[12].data()), rows, bs,
                     reinterpret_cast<float*>(out.payload.data() + 2 * bytes));
}

// The attention's output product and the feed-forward fused into one node (the kv node computed the mixes in a
// decoding step): the stream between them (x_l + attention) stays in the node's scratch, which saves a node run, a
// page publish and its locks per layer and token.
struct BlockNode {
  const ForwardShape* shape;
  const LayerTensors* w;
  PagedModel* paged;
  std::size_t unit, ffn_unit;
  bool last_layer;
  std::size_t batch;  // the batch nodes' capacity (0: none)
  std::uint64_t cache_half, stream_bytes;
  std::uint64_t attention_row;  // where the kv page holds the step position's attention mixes (kv_step)
  std::shared_ptr<ForwardScratch> scratch;
  std::shared_ptr<std::vector<float>> mid;
};

void block_step(const BlockNode& n, MapContext& ctx) {
  const StepInput in = read_step(ctx.input(1), n.shape->config);
  if (in.batch_rows > 0 && !n.last_layer) {  // a prompt wave: the kv node computed this position with its batch
    if (static_cast<std::size_t>(in.batch_rows) > n.batch) {
      throw Error(ErrorCode::InvalidArgument, "step page holds " + std::to_string(in.batch_rows) +
                                                  " batch rows; this engine's batch holds " + std::to_string(n.batch));
    }
    const std::byte* row =
        ctx.input(2).data() + 2 * n.cache_half + static_cast<std::uint64_t>(in.batch_rows) * n.stream_bytes;
    std::memcpy(ctx.output().data(), row, n.stream_bytes);
    return;
  }
  // The stream leaving the last layer feeds only the classifier: without logits the page keeps its previous bytes
  // (it is always_changes, as the logits node). Paged engines still compute it, so that their pins stay as they were.
  if (n.last_layer && in.want_logits == 0 && n.paged == nullptr) return;
  const LayerTensors& w = *n.w;
  LayerPager::Pin pin;
  if (n.paged) pin = n.paged->pin(n.unit, in.want_logits != 0);
  auto weight = [&](std::size_t input, const Tensor& t) {
    return n.paged ? n.paged->tensor(pin, t) : ctx.input(input).data();
  };
  auto f32w = [&](std::size_t input, const Tensor& t) { return reinterpret_cast<const float*>(weight(input, t)); };
  const std::byte* cache = ctx.input(2).data();
  if (in.batch_rows == 0) {  // the kv node attended (kv_step): only the output product is left
    attention_output(*n.shape, floats(ctx.input(0)), weight_ref(w.wo, weight(5, w.wo)),
                     reinterpret_cast<const float*>(cache + n.attention_row), *n.scratch, n.mid->data());
  } else {  // the last layer of a prompt wave: the kv node computed the batch's keys only
    attention(*n.shape, floats(ctx.input(0)), f32w(3, w.attn_norm), weight_ref(w.wq, weight(4, w.wq)),
              weight_ref(w.wo, weight(5, w.wo)), reinterpret_cast<const float*>(cache),
              reinterpret_cast<const float*>(cache + n.cache_half), in.pos, *n.scratch, n.mid->data());
  }
  if (n.paged) {  // the feed-forward unit follows the attention unit
    pin.reset();
    pin = n.paged->pin(n.ffn_unit, in.want_logits != 0);
  }
  feed_forward(*n.shape, n.mid->data(), f32w(6, w.ffn_norm), weight_ref(w.w1, weight(7, w.w1)),
               weight_ref(w.w2, weight(8, w.w2)), weight_ref(w.w3, weight(9, w.w3)), *n.scratch, floats(ctx.output()));
}

}  // namespace

// The pages and sizes the node wiring shares (Engine's constructor and its add_* helpers).
struct Engine::Wiring {
  const ForwardShape* shape;
  PagedModel* paged;
  std::uint64_t stream_bytes, row_bytes_kv, cache_half;
  std::vector<PageId> x;         // x[l]: the stream entering layer l; x[L] leaves the last one
  std::vector<PageId> kv_pages;  // kv[l]
  std::shared_ptr<BatchScratch> batch_scratch;
  std::shared_ptr<std::vector<float>> batch_cache;
};

Engine::Engine(const Model& model, EngineOptions options) : model_(model) {
  const ModelConfig& c = model.config;
  const Kernels& k = options.kernels ? *options.kernels : kernels();
  RuntimeOptions rt_options;
  rt_options.record_undo = false;  // nothing here is ever inverted; undo bytes would only cost copies
  runtime_ = std::make_unique<Runtime>(rt_options);
  PropagatorOptions prop_options;
  prop_options.threads = options.threads;
  prop_options.inline_node_limit = 2 * static_cast<std::size_t>(c.n_layers) + 8;  // every wave runs inline
  propagator_ = std::make_unique<Propagator>(*runtime_, prop_options);
  shape_ = std::make_unique<ForwardShape>(c, k, options.rounding);
  // The nodes run inline: their products split across a team of their own (of one to time them: thread_team.hpp).
  if (options.threads > 1 || ThreadTeam::stats_wanted()) {
    team_ = std::make_unique<ThreadTeam>(options.threads);
    shape_->team = team_.get();
  }
  logits_.resize(c.vocab_size);
  // Paged: nodes take no weight pages as inputs; each pins its unit of the PagedModel while it computes and reads
  // the tensors there (the unit stays pinned until the node returns, so it cannot be evicted under it).
  if (options.paging) paged_ = std::make_unique<PagedModel>(model, std::move(*options.paging));

  Wiring wiring{shape_.get(),
                paged_.get(),
                std::uint64_t{c.dim} * sizeof(float),
                std::uint64_t{c.kv_dim()} * sizeof(float),
                0,
                {},
                {},
                nullptr,
                nullptr};
  wiring.cache_half = std::uint64_t{c.seq_len} * wiring.row_bytes_kv;
  step_page_ = runtime_->create_page(sizeof(StepInput));
  wiring.x.resize(c.n_layers + 1);
  for (auto& id : wiring.x) id = runtime_->create_page(wiring.stream_bytes);
  // Batch nodes: none when paging (their weights would need pins of their own) or when disabled.
  batch_ = paged_ ? 0 : std::min<std::size_t>(options.prefill_batch, c.seq_len);  // more could never be used
  if (batch_ > 0) {
    wiring.batch_scratch = std::make_shared<BatchScratch>(c, batch_ + 1);  // the step position joins the batch
    wiring.batch_cache = std::make_shared<std::vector<float>>(2 * std::size_t{c.seq_len} * c.kv_dim());
    prefill_page_ = runtime_->create_page(sizeof(PrefillHeader) + batch_ * sizeof(std::int32_t));
  }
  add_embed_node(wiring);
  for (std::uint32_t l = 0; l < c.n_layers; ++l) add_layer_nodes(wiring, l);
  add_logits_node(wiring);
}

PageId Engine::weight_page(const Tensor& t) {
  const PageId id = runtime_->create_external_page(t.bytes, model_.owner);
  weight_pages_.push_back(id);
  weight_data_.push_back(t.bytes.data());
  return id;
}

void Engine::add_embed_node(Wiring& wiring) {
  const Tensor* embedding = &model_.token_embedding;
  PagedModel* paged = wiring.paged;
  const ForwardShape* shape = wiring.shape;
  std::vector<PageId> inputs{step_page_};
  if (!paged) inputs.push_back(weight_page(*embedding));
  auto embedding_row = std::make_shared<std::vector<std::byte>>(embedding->row_stride);
  NodeOptions options;
  options.always_changes = true;
  options.name = "embed";
  propagator_->derive_map(
      wiring.x[0], std::move(inputs),
      [shape, embedding, paged, embedding_row](MapContext& ctx) {
        StepInput in = read_step(ctx.input(0), shape->config);
        if (paged && paged->embedding_by_rows()) {  // one row of the file, not the table
          paged->read_embedding_row(in.token, embedding_row->data());
          embed(*shape, {embedding_row->data(), embedding->type, embedding->row_stride}, 0, floats(ctx.output()));
          return;
        }
        LayerPager::Pin pin;
        if (paged) pin = paged->pin(paged->embed_unit(), in.want_logits != 0);
        const std::byte* table = paged ? paged->tensor(pin, *embedding) : ctx.input(1).data();
        embed(*shape, weight_ref(*embedding, table), in.token, floats(ctx.output()));
      },
      options);
}

void Engine::add_layer_nodes(Wiring& wiring, std::uint32_t l) {
  const ModelConfig& c = model_.config;
  const LayerTensors* w = &model_.layers[l];
  PagedModel* paged = wiring.paged;
  // After the cache, with batch nodes, the batch stream leaving this layer ((batch + 1) × dim floats: the batch and
  // the step position), which the next layer's kv node and this layer's block node read in a prompt wave; last, the
  // step position's attention mixes (kv_step), which the block node reads in a decoding step.
  const std::uint64_t attention_row = 2 * wiring.cache_half + (batch_ > 0 ? batch_ + 1 : 0) * wiring.stream_bytes;
  const PageId kv = runtime_->create_page(attention_row + wiring.stream_bytes);
  const PageId source =
      l == 0 ? (batch_ > 0 ? weight_page_of(model_.token_embedding) : PageId{}) : wiring.kv_pages.back();
  wiring.kv_pages.push_back(kv);
  std::vector<PageId> kv_inputs{wiring.x[l], step_page_}, block_inputs{wiring.x[l], step_page_, kv};
  if (!paged) {
    PageId attn_norm = weight_page(w->attn_norm), wq = weight_page(w->wq), wk = weight_page(w->wk),
           wv = weight_page(w->wv), wo = weight_page(w->wo), ffn_norm = weight_page(w->ffn_norm),
           w1 = weight_page(w->w1), w2 = weight_page(w->w2), w3 = weight_page(w->w3);
    kv_inputs.insert(kv_inputs.end(), {attn_norm, wk, wv, wq});
    block_inputs.insert(block_inputs.end(), {attn_norm, wq, wo, ffn_norm, w1, w2, w3});
    if (batch_ > 0) kv_inputs.insert(kv_inputs.end(), {prefill_page_, source, wo, ffn_norm, w1, w2, w3});
  }
  const std::size_t unit = paged ? paged->attention_unit(l) : 0, ffn_unit = paged ? paged->ffn_unit(l) : 0;
  const KvNode kv_node{wiring.shape,
                       w,
                       &model_.token_embedding,
                       paged,
                       unit,
                       l,
                       l + 1 == c.n_layers,
                       batch_,
                       wiring.row_bytes_kv,
                       wiring.cache_half,
                       wiring.stream_bytes,
                       attention_row,
                       std::make_shared<ForwardScratch>(c),
                       wiring.batch_scratch,
                       wiring.batch_cache};
  NodeOptions kv_options;
  kv_options.name = "kv" + std::to_string(l);
  propagator_->derive_incremental(
      kv, std::move(kv_inputs),
      [kv_node](const IncrementalContext& ctx, Delta& out) {
        const StepInput in = read_step(ctx.inputs[1], kv_node.shape->config);
        // The step page says whether this is a prompt wave: the prefill page may hold the bytes of an earlier wave
        // (the same tokens at the same positions) and then shows no delta.
        if (in.batch_rows > 0) {
          if (kv_node.batch == 0) {
            throw Error(ErrorCode::InvalidArgument, "step page holds " + std::to_string(in.batch_rows) +
                                                        " batch rows; this engine has no batch nodes");
          }
          return kv_prompt_wave(kv_node, in, ctx, out);
        }
        kv_step(kv_node, in, ctx, out);
      },
      kv_options);

  const BlockNode block{wiring.shape,
                        w,
                        paged,
                        unit,
                        ffn_unit,
                        l + 1 == c.n_layers,
                        batch_,
                        wiring.cache_half,
                        wiring.stream_bytes,
                        attention_row,
                        std::make_shared<ForwardScratch>(c),
                        std::make_shared<std::vector<float>>(c.dim)};
  NodeOptions block_options;
  block_options.always_changes = true;
  block_options.name = "block" + std::to_string(l);
  propagator_->derive_map(
      wiring.x[l + 1], std::move(block_inputs), [block](MapContext& ctx) { block_step(block, ctx); }, block_options);
}

void Engine::add_logits_node(Wiring& wiring) {
  const ModelConfig& c = model_.config;
  PagedModel* paged = wiring.paged;
  const ForwardShape* shape = wiring.shape;
  logits_page_ = runtime_->create_page(std::uint64_t{c.vocab_size} * sizeof(float));
  const Tensor* classifier = &model_.classifier;
  const Tensor* final_norm = &model_.final_norm;
  auto scratch = std::make_shared<ForwardScratch>(c);
  std::vector<PageId> inputs{wiring.x[c.n_layers], step_page_};
  if (!paged) {
    const PageId norm = weight_page(*final_norm);
    const PageId table = classifier->bytes.data() == model_.token_embedding.bytes.data() ? weight_pages_.front()
                                                                                         : weight_page(*classifier);
    inputs.insert(inputs.end(), {norm, table});
  }
  NodeOptions options;
  options.always_changes = true;
  options.name = "logits";
  propagator_->derive_map(
      logits_page_, std::move(inputs),
      [shape, classifier, final_norm, scratch, paged](MapContext& ctx) {
        // The classifier is the largest matrix of a small model; prompt steps before the last do not need it. The
        // page then keeps its previous bytes (the node still publishes: it is always_changes).
        if (read_step(ctx.input(1), shape->config).want_logits == 0) return;
        LayerPager::Pin pin;
        if (paged) pin = paged->pin(paged->head_unit(), true);
        const std::byte* norm = paged ? paged->tensor(pin, *final_norm) : ctx.input(2).data();
        const std::byte* table = paged ? paged->tensor(pin, *classifier) : ctx.input(3).data();
        logits(*shape, floats(ctx.input(0)), reinterpret_cast<const float*>(norm), weight_ref(*classifier, table),
               *scratch, floats(ctx.output()));
      },
      options);
}

PageId Engine::weight_page_of(const Tensor& tensor) const {
  for (std::size_t i = 0; i < weight_data_.size(); ++i) {
    if (weight_data_[i] == tensor.bytes.data()) return weight_pages_[i];
  }
  throw Error(ErrorCode::NotFound, "tensor '" + tensor.name + "' has no weight page in this engine");
}

Engine::~Engine() {
  propagator_.reset();  // detach from the runtime before it goes
  runtime_.reset();
}

std::span<const float> Engine::step(int token, int pos) { return run_step(token, pos, true); }

void Engine::prefill_step(int token, int pos) { run_step(token, pos, false); }

std::span<const float> Engine::prompt(std::span<const int> tokens, int pos) {
  if (tokens.empty()) throw Error(ErrorCode::InvalidArgument, "prompt(): no tokens to feed");
  return run_prompt(tokens, pos, true);
}

void Engine::prefill(std::span<const int> tokens, int pos) { run_prompt(tokens, pos, false); }

std::span<const float> Engine::run_prompt(std::span<const int> tokens, int pos, bool want_logits) {
  const ModelConfig& c = model_.config;
  for (int t : tokens) {
    if (t < 0 || static_cast<std::uint32_t>(t) >= c.vocab_size) {
      throw Error(ErrorCode::InvalidArgument,
                  "token " + std::to_string(t) + " is outside the vocabulary of " + std::to_string(c.vocab_size));
    }
  }
  if (pos < 0 || static_cast<std::uint64_t>(pos) + tokens.size() > c.seq_len) {
    throw Error(ErrorCode::InvalidArgument, std::to_string(tokens.size()) + " tokens from position " +
                                                std::to_string(pos) + " do not fit the context of " +
                                                std::to_string(c.seq_len) + " positions");
  }
  std::span<const float> last;
  std::vector<std::byte> page;
  for (std::size_t done = 0; done < tokens.size();) {
    // One wave: n batch positions (at most batch_) plus the step position after them.
    const std::size_t n = std::min(batch_, tokens.size() - done - 1);
    const int pos0 = pos + static_cast<int>(done);
    const bool last_wave = done + n + 1 == tokens.size();
    const int step_token = tokens[done + n];
    const int step_pos = pos0 + static_cast<int>(n);
    if (n == 0) {
      last = run_step(step_token, step_pos, want_logits && last_wave);
    } else {
      page.resize(sizeof(PrefillHeader) + n * sizeof(std::int32_t));
      const PrefillHeader h{pos0, static_cast<std::int32_t>(n)};
      std::memcpy(page.data(), &h, sizeof h);
      for (std::size_t i = 0; i < n; ++i) {
        const std::int32_t t = tokens[done + i];
        std::memcpy(page.data() + sizeof h + i * sizeof t, &t, sizeof t);
      }
      const bool logits = want_logits && last_wave;
      auto txn = runtime_->begin();
      txn.write(prefill_page_, 0, page);
      txn.write_value(step_page_, 0, StepInput{step_token, step_pos, logits ? 1 : 0, static_cast<std::int32_t>(n)});
      txn.commit();
      ++waves_;
      if (logits) {
        runtime_->read(logits_page_, 0, std::as_writable_bytes(std::span<float>(logits_)));
        last = logits_;
      }
    }
    done += n + 1;
  }
  return want_logits ? last : std::span<const float>{};
}

std::span<const float> Engine::run_step(int token, int pos, bool want_logits) {
  const ModelConfig& c = model_.config;
  if (token < 0 || static_cast<std::uint32_t>(token) >= c.vocab_size) {
    throw Error(ErrorCode::InvalidArgument,
                "token " + std::to_string(token) + " is outside the vocabulary of " + std::to_string(c.vocab_size));
  }
  if (pos < 0 || static_cast<std::uint32_t>(pos) >= c.seq_len) {
    throw Error(ErrorCode::InvalidArgument, "position " + std::to_string(pos) + " is outside the context of " +
                                                std::to_string(c.seq_len) + " positions");
  }
  auto txn = runtime_->begin();
  txn.write_value(step_page_, 0, StepInput{token, pos, want_logits ? 1 : 0});
  txn.commit();  // IMMEDIATE: the wave runs inside commit()
  ++waves_;
  if (!want_logits) return {};
  runtime_->read(logits_page_, 0, std::as_writable_bytes(std::span<float>(logits_)));
  return logits_;
}

}  // namespace mmsb::llm
