#include "mmsb/llm/engine.hpp"

#include <algorithm>
#include <cstring>
#include <string>
#include <utility>
#include <vector>

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
      static_cast<std::uint32_t>(in.pos) >= c.seq_len) {
    throw Error(ErrorCode::InvalidArgument, "step page holds token " + std::to_string(in.token) + " at position " +
                                                std::to_string(in.pos) + "; expected a token below " +
                                                std::to_string(c.vocab_size) + " and a position below " +
                                                std::to_string(c.seq_len));
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

}  // namespace

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
  logits_.resize(c.vocab_size);
  if (options.paging) paged_ = std::make_unique<PagedModel>(model, std::move(*options.paging));
  // Paged: nodes take no weight pages as inputs; each pins its unit of the PagedModel while it computes and reads
  // the tensors there (the unit stays pinned until the node returns, so it cannot be evicted under it).
  PagedModel* paged = paged_.get();

  Runtime& rt = *runtime_;
  Propagator& prop = *propagator_;
  const ForwardShape* shape = shape_.get();
  auto weight_page = [&](const Tensor& t) {
    PageId id = rt.create_external_page(t.bytes, model.owner);
    weight_pages_.push_back(id);
    weight_data_.push_back(t.bytes.data());
    return id;
  };
  const std::uint64_t stream_bytes = std::uint64_t{c.dim} * sizeof(float);
  const std::uint64_t row_bytes_kv = std::uint64_t{c.kv_dim()} * sizeof(float);
  const std::uint64_t cache_half = std::uint64_t{c.seq_len} * row_bytes_kv;

  step_page_ = rt.create_page(sizeof(StepInput));
  std::vector<PageId> x(c.n_layers + 1);
  for (auto& id : x) id = rt.create_page(stream_bytes);

  NodeOptions always;
  always.always_changes = true;

  // Batch nodes: none when paging (their weights would need pins of their own) or when disabled.
  batch_ = paged ? 0 : std::min<std::size_t>(options.prefill_batch, c.seq_len);  // more could never be used
  const std::size_t batch = batch_;
  // One scratch for every layer's batch attention: the kv nodes form a chain, so two never run at once.
  auto batch_scratch = batch > 0 ? std::make_shared<BatchScratch>(c, batch) : nullptr;
  auto batch_cache = batch > 0 ? std::make_shared<std::vector<float>>(2 * std::size_t{c.seq_len} * c.kv_dim())
                               : nullptr;
  if (batch > 0) prefill_page_ = rt.create_page(sizeof(PrefillHeader) + batch * sizeof(std::int32_t));

  const Tensor* embedding = &model.token_embedding;
  always.name = "embed";
  std::vector<PageId> embed_inputs{step_page_};
  if (!paged) embed_inputs.push_back(weight_page(*embedding));
  auto embedding_row = std::make_shared<std::vector<std::byte>>(embedding->row_stride);
  prop.derive_map(x[0], std::move(embed_inputs), [shape, embedding, paged, embedding_row](MapContext& ctx) {
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
  }, always);

  std::vector<PageId> kv_pages;
  for (std::uint32_t l = 0; l < c.n_layers; ++l) {
    const LayerTensors* w = &model.layers[l];
    const std::string layer = std::to_string(l);
    // With batch nodes the page ends with the batch stream leaving this layer (batch × dim floats), which the next
    // layer's kv node reads in a prompt wave.
    PageId kv = rt.create_page(2 * cache_half + batch * stream_bytes);
    const PageId source = l == 0 ? (batch > 0 ? weight_page_of(*embedding) : PageId{}) : kv_pages.back();
    kv_pages.push_back(kv);
    std::vector<PageId> kv_inputs{x[l], step_page_}, block_inputs{x[l], step_page_, kv};
    if (!paged) {
      PageId attn_norm = weight_page(w->attn_norm), wq = weight_page(w->wq), wk = weight_page(w->wk),
             wv = weight_page(w->wv), wo = weight_page(w->wo), ffn_norm = weight_page(w->ffn_norm),
             w1 = weight_page(w->w1), w2 = weight_page(w->w2), w3 = weight_page(w->w3);
      kv_inputs.insert(kv_inputs.end(), {attn_norm, wk, wv});
      block_inputs.insert(block_inputs.end(), {attn_norm, wq, wo, ffn_norm, w1, w2, w3});
      if (batch > 0) kv_inputs.insert(kv_inputs.end(), {prefill_page_, source, wq, wo, ffn_norm, w1, w2, w3});
    }
    const std::size_t unit = paged ? paged->attention_unit(l) : 0, ffn_unit = paged ? paged->ffn_unit(l) : 0;

    // Only the two rows of this position change: emit them as the delta, so no other cache byte is copied.
    auto kv_scratch = std::make_shared<ForwardScratch>(c);
    NodeOptions kv_options;
    kv_options.name = "kv" + layer;
    const bool last_layer = l + 1 == c.n_layers;
    prop.derive_incremental(kv, std::move(kv_inputs), [shape, w, kv_scratch, batch_scratch, batch_cache, row_bytes_kv,
                                                       cache_half, stream_bytes, paged, unit, batch, l, last_layer,
                                                       embedding](const IncrementalContext& ctx, Delta& out) {
      StepInput in = read_step(ctx.inputs[1], shape->config);
      if (batch > 0 && ctx.input_deltas[5] != nullptr) {
        // A prompt wave (the prefill page changed): the batch positions pos .. pos + n - 1 and the step's position
        // pos + n. Their key and value rows go out as one run of rows in each half; then the batch's attention and
        // feed-forward (as matrix x n products) give the batch stream leaving this layer, emitted into the page's
        // tail for the next layer (the last layer skips it: no batch position needs logits).
        const PrefillHeader h = read_prefill(ctx.inputs[5], shape->config, batch);
        if (in.pos != h.pos + h.n) {
          throw Error(ErrorCode::InvalidArgument, "prompt wave: the step position " + std::to_string(in.pos) +
                                                      " does not follow the prefill positions " +
                                                      std::to_string(h.pos) + " + " + std::to_string(h.n));
        }
        const ModelConfig& cfg = shape->config;
        const std::size_t n = static_cast<std::size_t>(h.n), rows = n + 1, kv_dim = cfg.kv_dim();
        BatchScratch& bs = *batch_scratch;
        const float* stream;  // the batch stream entering this layer
        if (l == 0) {
          embed_batch(*shape, weight_ref(*embedding, ctx.inputs[6].data()), prefill_tokens(ctx.inputs[5]), n,
                      bs.mid.data());
          stream = bs.mid.data();
        } else {
          stream = reinterpret_cast<const float*>(ctx.inputs[6].data() + 2 * cache_half);
        }
        const std::uint64_t first = static_cast<std::uint64_t>(h.pos) * row_bytes_kv, bytes = rows * row_bytes_kv;
        const std::uint64_t stream_out = last_layer ? 0 : n * stream_bytes;
        out.ranges.push_back({first, bytes});
        out.ranges.push_back({cache_half + first, bytes});
        if (stream_out > 0) {
          // Ranges must not touch: a run of value rows ending at the cache's end merges with the stream's.
          if (out.ranges.back().end() == 2 * cache_half) {
            out.ranges.back().length += stream_out;
          } else {
            out.ranges.push_back({2 * cache_half, stream_out});
          }
        }
        out.payload.resize(2 * bytes + stream_out);
        float* keys = reinterpret_cast<float*>(out.payload.data());
        float* values = keys + rows * kv_dim;
        const float* norm = reinterpret_cast<const float*>(ctx.inputs[2].data());
        const WeightRef wk = weight_ref(w->wk, ctx.inputs[3].data()), wv = weight_ref(w->wv, ctx.inputs[4].data());
        kv_project_batch(*shape, stream, norm, wk, wv, h.pos, n, bs, keys, values);
        kv_project(*shape, floats(ctx.inputs[0]), norm, wk, wv, in.pos, *kv_scratch, keys + n * kv_dim,
                   values + n * kv_dim);
        if (last_layer) return;
        // The cache as the batch sees it: the rows before it (this page) and its own rows, contiguous.
        float* ck = batch_cache->data();
        float* cv = ck + std::size_t{cfg.seq_len} * kv_dim;
        const std::size_t before = static_cast<std::size_t>(h.pos) * kv_dim;
        const float* cache = reinterpret_cast<const float*>(ctx.output.data());
        std::memcpy(ck, cache, before * sizeof(float));
        std::memcpy(cv, cache + std::size_t{cfg.seq_len} * kv_dim, before * sizeof(float));
        std::memcpy(ck + before, keys, n * kv_dim * sizeof(float));
        std::memcpy(cv + before, values, n * kv_dim * sizeof(float));
        auto f32 = [&](std::size_t i) { return reinterpret_cast<const float*>(ctx.inputs[i].data()); };
        std::vector<float>& after_attention = bs.mid;  // may be `stream` itself (layer 0): updated in place
        attention_batch(*shape, stream, norm, weight_ref(w->wq, ctx.inputs[7].data()),
                        weight_ref(w->wo, ctx.inputs[8].data()), ck, cv, h.pos, n, bs, after_attention.data());
        feed_forward_batch(*shape, after_attention.data(), f32(9), weight_ref(w->w1, ctx.inputs[10].data()),
                           weight_ref(w->w2, ctx.inputs[11].data()), weight_ref(w->w3, ctx.inputs[12].data()), n, bs,
                           reinterpret_cast<float*>(out.payload.data() + 2 * bytes));
        return;
      }
      LayerPager::Pin pin;
      if (paged) pin = paged->pin(unit, in.want_logits != 0);
      auto weight = [&](std::size_t input, const Tensor& t) {
        return paged ? paged->tensor(pin, t) : ctx.inputs[input].data();
      };
      const std::uint64_t row = static_cast<std::uint64_t>(in.pos) * row_bytes_kv;
      out.ranges.push_back({row, row_bytes_kv});
      out.ranges.push_back({cache_half + row, row_bytes_kv});
      out.payload.resize(2 * row_bytes_kv);
      float* key = reinterpret_cast<float*>(out.payload.data());
      kv_project(*shape, floats(ctx.inputs[0]), reinterpret_cast<const float*>(weight(2, w->attn_norm)),
                 weight_ref(w->wk, weight(3, w->wk)), weight_ref(w->wv, weight(4, w->wv)), in.pos, *kv_scratch, key,
                 key + shape->config.kv_dim());
    }, kv_options);

    // Attention and feed-forward fused into one node: the stream between them (x_l + attention) stays in the
    // node's scratch, which saves a node run, a page publish and its locks per layer and token.
    auto block_scratch = std::make_shared<ForwardScratch>(c);
    auto mid = std::make_shared<std::vector<float>>(c.dim);
    always.name = "block" + layer;
    prop.derive_map(x[l + 1], std::move(block_inputs),
                    [shape, w, block_scratch, mid, cache_half, paged, unit, ffn_unit](MapContext& ctx) {
      StepInput in = read_step(ctx.input(1), shape->config);
      LayerPager::Pin pin;
      if (paged) pin = paged->pin(unit, in.want_logits != 0);
      auto weight = [&](std::size_t input, const Tensor& t) {
        return paged ? paged->tensor(pin, t) : ctx.input(input).data();
      };
      auto f32w = [&](std::size_t input, const Tensor& t) { return reinterpret_cast<const float*>(weight(input, t)); };
      const std::byte* cache = ctx.input(2).data();
      attention(*shape, floats(ctx.input(0)), f32w(3, w->attn_norm), weight_ref(w->wq, weight(4, w->wq)),
                weight_ref(w->wo, weight(5, w->wo)), reinterpret_cast<const float*>(cache),
                reinterpret_cast<const float*>(cache + cache_half), in.pos, *block_scratch, mid->data());
      if (paged) {  // the feed-forward unit follows the attention unit
        pin.reset();
        pin = paged->pin(ffn_unit, in.want_logits != 0);
      }
      feed_forward(*shape, mid->data(), f32w(6, w->ffn_norm), weight_ref(w->w1, weight(7, w->w1)),
                   weight_ref(w->w2, weight(8, w->w2)), weight_ref(w->w3, weight(9, w->w3)), *block_scratch,
                   floats(ctx.output()));
    }, always);
  }

  logits_page_ = rt.create_page(std::uint64_t{c.vocab_size} * sizeof(float));
  const Tensor* classifier = &model.classifier;
  auto out_scratch = std::make_shared<ForwardScratch>(c);
  always.name = "logits";
  std::vector<PageId> logits_inputs{x[c.n_layers], step_page_};
  if (!paged) {
    PageId final_norm = weight_page(model.final_norm);
    PageId classifier_page = classifier->bytes.data() == embedding->bytes.data() ? weight_pages_.front()
                                                                                 : weight_page(*classifier);
    logits_inputs.insert(logits_inputs.end(), {final_norm, classifier_page});
  }
  const Tensor* final_norm = &model.final_norm;
  prop.derive_map(logits_page_, std::move(logits_inputs),
                  [shape, classifier, final_norm, out_scratch, paged](MapContext& ctx) {
    // The classifier is the largest matrix of a small model; prompt steps before the last do not need it. The
    // page then keeps its previous bytes (the node still publishes: it is always_changes).
    if (read_step(ctx.input(1), shape->config).want_logits == 0) return;
    LayerPager::Pin pin;
    if (paged) pin = paged->pin(paged->head_unit(), true);
    const std::byte* norm = paged ? paged->tensor(pin, *final_norm) : ctx.input(2).data();
    const std::byte* table = paged ? paged->tensor(pin, *classifier) : ctx.input(3).data();
    logits(*shape, floats(ctx.input(0)), reinterpret_cast<const float*>(norm), weight_ref(*classifier, table),
           *out_scratch, floats(ctx.output()));
  }, always);
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
      txn.write_value(step_page_, 0, StepInput{step_token, step_pos, logits ? 1 : 0});
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
