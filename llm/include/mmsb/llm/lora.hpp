// mmsb/llm/lora.hpp — LoRA adapters as deltas on weight pages: load (llama.cpp's GGUF adapter format),
// merge, hot swap and exact revert, without touching the mapped model file.
//
// An adapter holds, per adapted matrix W (rows × cols), two factors A (rank × cols) and B (rows × rank); the
// merged weights are W' = W + scale · B · A with scale = user_scale · alpha / rank (user_scale alone when the file
// has no alpha), as llama.cpp scales them. The engine's weight pages start as external pages over the mapping;
// LoraSwitcher turns the pages an adapter touches into private copies (Runtime::make_private: copy on write,
// once), and every change after that is an mmsb::Delta committed to them:
//
//   merge   = diff(base bytes, merged bytes) with undo bytes, computed once per adapter by prepare();
//   apply   = Transaction::apply(that delta);
//   revert  = Transaction::apply(mmsb::invert(applied delta)): the undo bytes are the base bytes, so the page
//             equals the file again bit for bit;
//   swap    = one transaction with compose(invert(active), next) for pages both adapters touch, the inverse or the
//             new delta alone for the others (computed once per pair of adapters, then reused).
//
// Quantized weights are merged in their own encoding: dequantize, add, requantize (F16 by rounding, Q8_0 and Q4_0
// by the usual absmax block quantizers), so a page keeps its size and type and the kernels stay the same. The cost
// is one requantization of each adapted matrix (docs/transformer.md gives the measured error). Q4_1, Q5_0 and
// Q5_1 targets are refused with Unsupported.
//
//   mmsb::llm::LoraAdapter a = mmsb::llm::load_lora("style.gguf");
//   mmsb::llm::LoraSwitcher lora(engine, model);
//   lora.activate(lora.prepare(a, 1.0f));  ...  lora.revert();
//
// A swap is a commit to pages the graph reads, so the propagator re-runs the wave of the last committed step with
// the new weights (its KV row and logits); earlier KV rows stay as they were computed. Swap between steps.
//
// Thread-safety: LoraAdapter is a value. LoraSwitcher is used from the engine's thread, between steps; the Model
// and Engine must outlive it.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "mmsb/delta.hpp"
#include "mmsb/llm/engine.hpp"
#include "mmsb/llm/model.hpp"

namespace mmsb::llm {

// One adapted matrix: W (rows × cols) += scale · B · A; A is rank × cols and B rows × rank, row-major f32.
struct LoraTensor {
  std::string target;  // the base tensor, GGUF name: "blk.0.attn_q.weight"
  std::uint32_t rank = 0;
  std::uint64_t rows = 0, cols = 0;
  std::vector<float> a, b;
};

struct LoraAdapter {
  std::string name;  // for messages (the file name)
  float alpha = 0;   // adapter.lora.alpha; 0 = absent
  std::vector<LoraTensor> tensors;
  float scale_of(const LoraTensor& t, float user_scale) const noexcept {
    return alpha != 0 ? user_scale * alpha / static_cast<float>(t.rank) : user_scale;
  }
};

// Reads a GGUF LoRA adapter (general.type = "adapter", adapter.type = "lora", architecture "llama"): tensors
// "<target>.lora_a" with dims [cols, rank] and "<target>.lora_b" with dims [rank, rows], F32 or F16. Every
// count, offset and shape is checked; errors are Corruption (broken bytes, unpaired or mis-shaped factors,
// non-finite values) or Unsupported (another file type, architecture or factor type), naming the key or tensor.
LoraAdapter parse_lora_gguf(std::span<const std::byte> bytes, const std::string& name = "adapter");
LoraAdapter load_lora(const std::string& path);
// The adapter as a GGUF v3 file (F32 factors); write_lora_gguf() writes it to `path` (IoError on failure).
std::vector<std::byte> serialize_lora_gguf(const LoraAdapter& adapter);
void write_lora_gguf(const std::string& path, const LoraAdapter& adapter);

// A random adapter for `model` (seeded; the same seed gives the same file): for every layer and each listed kind
// ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down"), A uniform in ±1/sqrt(cols)
// and B uniform in ±b_range. Throws InvalidArgument for an unknown kind or a rank of 0 or above the matrix sides.
LoraAdapter make_random_lora(const Model& model, std::uint32_t rank, float alpha, std::uint64_t seed,
                             const std::vector<std::string>& kinds, float b_range = 0.5f);

// The weight matrix of `model` that a GGUF tensor name refers to (the seven per-layer matrices); nullptr if none.
const Tensor* find_lora_target(const Model& model, std::string_view gguf_name);

// Writes into `out` (base.bytes.size() bytes) the base tensor with scale · B · A added, in the base's encoding.
// Throws Error(InvalidArgument) on a shape mismatch, Error(Unsupported) for Q4_1 / Q5_0 / Q5_1.
void merge_lora_tensor(const Tensor& base, const LoraTensor& lora, float scale, std::span<std::byte> out);

// Every matrix of `adapter` merged into a copy of its base tensor at `user_scale` (TensorOverride: the base tensor
// and the merged bytes; matrices whose bytes do not change are left out). The overrides of a paged engine
// (PagingOptions::overrides) take these. Throws Error(InvalidArgument) for a non-finite scale or a tensor targeted
// twice, Error(Unsupported) for a target that is not a per-layer matrix of `model`, and as merge_lora_tensor().
std::vector<TensorOverride> merge_lora(const Model& model, const LoraAdapter& adapter, float user_scale = 1.0f);
// Row-block quantizers used by the merge (also for tests): `n` floats into one row of `type` (F32, F16, Q8_0,
// Q4_0); Unsupported for the others. `n` must be a whole number of blocks.
void quantize_row(TensorType type, const float* in, std::size_t n, std::byte* out);

class LoraSwitcher {
 public:
  LoraSwitcher(Engine& engine, const Model& model);

  // Checks `adapter` against the model and computes its deltas at `user_scale` (merge, then diff against the
  // base bytes, with undo). Returns a handle for activate(). Costs the merge; do it before timing swaps.
  std::size_t prepare(const LoraAdapter& adapter, float user_scale = 1.0f);
  // Makes the prepared adapter `handle` the active one (from the base or from another adapter) as one commit;
  // a no-op when it is already active. The first write to a page makes it private (copy on write).
  void activate(std::size_t handle);
  // Back to the base weights (one commit of the undo deltas); a no-op when no adapter is active.
  void revert();

  std::optional<std::size_t> active() const noexcept { return active_; }
  std::size_t prepared_count() const noexcept { return prepared_.size(); }
  const std::string& name(std::size_t handle) const { return prepared_.at(handle).name; }
  // Pages an adapter touches and their total bytes (the bytes a swap to it writes).
  std::vector<PageId> pages(std::size_t handle) const;
  std::uint64_t bytes(std::size_t handle) const;

 private:
  struct PreparedPage {
    PageId page;
    Delta delta;  // base → merged, with undo (the base bytes); the source of the transitions
  };
  struct Prepared {
    std::string name;
    std::vector<PreparedPage> pages;  // in PageId order
  };
  static constexpr std::size_t kBase = static_cast<std::size_t>(-1);  // the base weights, as a state
  std::vector<Delta>& transition(std::size_t from, std::size_t to);   // built once per pair, then stamped and reused
  void commit_change(std::size_t to, const std::string& intent);

  Engine& engine_;
  const Model& model_;
  std::vector<Prepared> prepared_;
  std::optional<std::size_t> active_;
  std::map<std::pair<std::size_t, std::size_t>, std::vector<Delta>> transitions_;  // (from, to) → deltas
  std::map<PageId, std::uint64_t> epochs_;  // each page's epoch after this switcher's last commit to it
};

}  // namespace mmsb::llm
