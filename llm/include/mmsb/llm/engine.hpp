// mmsb/llm/engine.hpp — a Llama model running on mmsb: weights, activations and the KV cache are
// pages, each layer is two graph nodes, and one decoding step is one propagation wave.
//
// Pages (see docs/transformer.md for the picture):
//   step          8 bytes {token, pos}; the only page the application writes. Committing it starts the wave.
//   weights       one external read-only page per tensor, pointing into the memory-mapped model file (no copy).
//   x[0..L]       the residual stream entering each layer (x[L] leaves the last one), dim floats each.
//   kv[l]         layer l's KV cache: seq_len key rows, then seq_len value rows, kv_dim floats each.
//   logits        vocab_size floats.
// Nodes:
//   embed         map [step, token_embd] → x[0]
//   kv[l]         incremental [x[l], step, attn_norm, wk, wv] → kv[l]; emits only the two rows of `pos`
//   block[l]      map [x[l], step, kv[l], attn_norm, wq, wo, ffn_norm, w1, w2, w3] → x[l+1]
//                 (attention, then the SwiGLU feed-forward, each added to the stream)
//   logits        map [x[L], step, output_norm, output] → logits (skipped for prefill steps)
// Batched prefill (not with paging): a prefill page {pos, n, tokens[B]}; a prompt wave commits it (positions
// pos .. pos + n - 1) with the step page (position pos + n, computed by the nodes above). When the prefill page
// changed, kv[l] (which then also reads [prefill, token_embd or kv[l-1], wq, wo, ffn_norm, w1, w2, w3]) emits the
// rows of all n + 1 positions and, as matrix x n products, the batch's attention and feed-forward: the batch
// stream leaving layer l, into a tail of B x dim floats of its page that kv[l+1] reads. No extra node runs in a
// decode step.
// Map nodes are declared always_changes (activations change every step, so a cutoff diff could never help), and
// the runtime records no undo bytes; waves run inline on the calling thread.
//
//   mmsb::llm::Engine engine(model);
//   std::span<const float> logits = engine.step(/*token=*/1, /*pos=*/0);
//
// Thread-safety: an Engine is used from one thread at a time. The Model must outlive it.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <vector>

#include "mmsb/graph.hpp"
#include "mmsb/llm/forward.hpp"
#include "mmsb/llm/model.hpp"
#include "mmsb/llm/paged_model.hpp"
#include "mmsb/runtime.hpp"

namespace mmsb::llm {

struct EngineOptions {
  // Threads of the propagator and of the team that splits each product (by rows) and attention (by heads) inside
  // the nodes, which run inline on the committing thread; results are the same bits for every count.
  unsigned threads = 1;
  const Kernels* kernels = nullptr;                        // nullptr: kernels(), the best this CPU supports
  ActivationRounding rounding = ActivationRounding::None;  // LikeLlamaCpp: to compare with llama.cpp's logits
  // Layer paging (paged_model.hpp): the weights live in buffers of a PagedModel under this budget instead of being
  // read from the mapping; nodes pin their unit while they compute. Empty: every weight resident (the mapping).
  std::optional<PagingOptions> paging;
  // Batched prefill (prompt()/prefill()): up to this many prompt positions computed in one wave by the batch
  // nodes, besides the wave's step position (which joins their batch). 0: no batch nodes (prompts go one wave per
  // token). Paging always goes one wave per token.
  unsigned prefill_batch = 64;
};

class Engine {
 public:
  explicit Engine(const Model& model, EngineOptions options = {});
  ~Engine();
  Engine(const Engine&) = delete;
  Engine& operator=(const Engine&) = delete;

  // Runs one decoding step as one wave: commits {token, pos} and returns the logits of that position (valid until
  // the next step). Positions must be fed in order from 0 (the KV cache holds what earlier steps wrote); starting
  // again at 0 begins a new sequence. Throws Error(InvalidArgument) for a token outside the vocabulary or a
  // position at or past seq_len.
  std::span<const float> step(int token, int pos);
  // As step(), for a prompt position whose logits are not needed: the wave skips the classifier and (unless paged)
  // the last layer's attention and feed-forward, which only feed it.
  void prefill_step(int token, int pos);
  // Batched prefill: feeds tokens[i] at position pos + i, up to prefill_batch + 1 positions per wave (the kv nodes
  // compute all of them as matrix x N products; the step nodes take the last one's stream from them and compute
  // only its last layer, when its logits are wanted), giving the same KV cache, stream and logits bit for bit as
  // one step per token. prompt() returns the logits of the last position (valid until the next step); prefill()
  // skips the classifier. Without batch nodes (paging, prefill_batch 0) both run one wave per token. Throws as
  // step() for a bad token or position (nothing is computed then), and Error(InvalidArgument) for an empty
  // prompt().
  std::span<const float> prompt(std::span<const int> tokens, int pos);
  void prefill(std::span<const int> tokens, int pos);
  // Whether prompt()/prefill() run batched waves.
  bool batched_prefill() const noexcept { return batch_ > 0; }
  // Waves run since construction (steps, prefill steps and batched waves).
  std::uint64_t waves() const noexcept { return waves_; }

  const ModelConfig& config() const noexcept { return model_.config; }
  Runtime& runtime() noexcept { return *runtime_; }
  Propagator& propagator() noexcept { return *propagator_; }
  PageId step_page() const noexcept { return step_page_; }
  // The external weight pages over the mapping; empty when paging (the nodes then read through paged()).
  std::span<const PageId> weight_pages() const noexcept { return weight_pages_; }
  // The page over a weight tensor of the model (found by the tensor's bytes in the file); Error(NotFound) if none.
  PageId weight_page_of(const Tensor& tensor) const;
  // The paged weights, or nullptr when every weight is resident.
  PagedModel* paged() noexcept { return paged_.get(); }
  const PagedModel* paged() const noexcept { return paged_.get(); }

 private:
  const Model& model_;
  std::unique_ptr<PagedModel> paged_;
  std::unique_ptr<Runtime> runtime_;
  std::unique_ptr<Propagator> propagator_;
  std::unique_ptr<ThreadTeam> team_;
  std::unique_ptr<ForwardShape> shape_;
  PageId step_page_, logits_page_;
  std::vector<PageId> weight_pages_;
  std::vector<const std::byte*> weight_data_;  // the file bytes each weight page was created over
  std::vector<float> logits_;

  struct Wiring;                             // the pages and sizes shared while the constructor adds the nodes
  PageId weight_page(const Tensor& tensor);  // an external page over the tensor's bytes in the mapping
  void add_embed_node(Wiring& wiring);
  void add_layer_nodes(Wiring& wiring, std::uint32_t layer);
  void add_logits_node(Wiring& wiring);
  std::span<const float> run_step(int token, int pos, bool want_logits);
  std::span<const float> run_prompt(std::span<const int> tokens, int pos, bool want_logits);

  std::size_t batch_ = 0;  // the batch nodes' capacity (0: none)
  PageId prefill_page_;
  std::uint64_t waves_ = 0;
};

}  // namespace mmsb::llm
