#include "examples/transformer/engine.hpp"

#include <string>

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

  const Tensor* embedding = &model.token_embedding;
  always.name = "embed";
  prop.derive_map(x[0], {step_page_, weight_page(*embedding)}, [shape, embedding](MapContext& ctx) {
    StepInput in = read_step(ctx.input(0), shape->config);
    embed(*shape, weight_ref(*embedding, ctx.input(1).data()), in.token, floats(ctx.output()));
  }, always);

  for (std::uint32_t l = 0; l < c.n_layers; ++l) {
    const LayerTensors* w = &model.layers[l];
    const std::string layer = std::to_string(l);
    PageId attn_norm = weight_page(w->attn_norm), wq = weight_page(w->wq), wk = weight_page(w->wk),
           wv = weight_page(w->wv), wo = weight_page(w->wo), ffn_norm = weight_page(w->ffn_norm),
           w1 = weight_page(w->w1), w2 = weight_page(w->w2), w3 = weight_page(w->w3);
    PageId kv = rt.create_page(2 * cache_half);

    // Only the two rows of this position change: emit them as the delta, so no other cache byte is copied.
    auto kv_scratch = std::make_shared<ForwardScratch>(c);
    NodeOptions kv_options;
    kv_options.name = "kv" + layer;
    prop.derive_incremental(kv, {x[l], step_page_, attn_norm, wk, wv},
                            [shape, w, kv_scratch, row_bytes_kv, cache_half](const IncrementalContext& ctx, Delta& out) {
      StepInput in = read_step(ctx.inputs[1], shape->config);
      const std::uint64_t row = static_cast<std::uint64_t>(in.pos) * row_bytes_kv;
      out.ranges.push_back({row, row_bytes_kv});
      out.ranges.push_back({cache_half + row, row_bytes_kv});
      out.payload.resize(2 * row_bytes_kv);
      float* key = reinterpret_cast<float*>(out.payload.data());
      kv_project(*shape, floats(ctx.inputs[0]), floats(ctx.inputs[2]), weight_ref(w->wk, ctx.inputs[3].data()),
                 weight_ref(w->wv, ctx.inputs[4].data()), in.pos, *kv_scratch, key, key + shape->config.kv_dim());
    }, kv_options);

    // Attention and feed-forward fused into one node: the stream between them (x_l + attention) stays in the
    // node's scratch, which saves a node run, a page publish and its locks per layer and token.
    auto block_scratch = std::make_shared<ForwardScratch>(c);
    auto mid = std::make_shared<std::vector<float>>(c.dim);
    always.name = "block" + layer;
    prop.derive_map(x[l + 1], {x[l], step_page_, kv, attn_norm, wq, wo, ffn_norm, w1, w2, w3},
                    [shape, w, block_scratch, mid, cache_half](MapContext& ctx) {
      StepInput in = read_step(ctx.input(1), shape->config);
      const std::byte* cache = ctx.input(2).data();
      attention(*shape, floats(ctx.input(0)), floats(ctx.input(3)), weight_ref(w->wq, ctx.input(4).data()),
                weight_ref(w->wo, ctx.input(5).data()), reinterpret_cast<const float*>(cache),
                reinterpret_cast<const float*>(cache + cache_half), in.pos, *block_scratch, mid->data());
      feed_forward(*shape, mid->data(), floats(ctx.input(6)), weight_ref(w->w1, ctx.input(7).data()),
                   weight_ref(w->w2, ctx.input(8).data()), weight_ref(w->w3, ctx.input(9).data()), *block_scratch,
                   floats(ctx.output()));
    }, always);
  }

  logits_page_ = rt.create_page(std::uint64_t{c.vocab_size} * sizeof(float));
  const Tensor* classifier = &model.classifier;
  auto out_scratch = std::make_shared<ForwardScratch>(c);
  always.name = "logits";
  PageId final_norm = weight_page(model.final_norm);
  PageId classifier_page = classifier->bytes.data() == embedding->bytes.data() ? weight_pages_.front()
                                                                               : weight_page(*classifier);
  prop.derive_map(logits_page_, {x[c.n_layers], step_page_, final_norm, classifier_page},
                  [shape, classifier, out_scratch](MapContext& ctx) {
    // The classifier is the largest matrix of a small model; prompt steps before the last do not need it. The
    // page then keeps its previous bytes (the node still publishes: it is always_changes).
    if (read_step(ctx.input(1), shape->config).want_logits == 0) return;
    logits(*shape, floats(ctx.input(0)), floats(ctx.input(2)), weight_ref(*classifier, ctx.input(3).data()),
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
  if (!want_logits) return {};
  runtime_->read(logits_page_, 0, std::as_writable_bytes(std::span<float>(logits_)));
  return logits_;
}

}  // namespace mmsb::llm
