// examples/transformer/paged_model.hpp — a Model's weights under a memory budget (layer paging).
//
// The weights are cut into units in the order a decoding step reads them: unit 0 is the token embedding (with the
// final norm when the classifier is the embedding itself), units 1..L are the layers (attention norm, wq, wk, wv,
// wo, ffn norm, w1, w2, w3), and unit L+1 is the final norm with a separate classifier. A LayerPager keeps some of
// them in anonymous buffers it owns. A unit's tensors that lie back to back in the file (at most 256 bytes apart)
// form one run, kept in the buffer as in the file, padding included; each run starts at a 64-byte aligned offset,
// and a unit's size is the end of its last run rounded up to 64 (a GGUF layer: one run; a llama2.c layer: nine).
// model_bytes(), 100% of a percentage budget, is the sum of the units.
// Loading a unit reads each run from the model file with one pread() (a model parsed from memory: memcpy), and the
// file mapping's pages under the tensors are dropped (madvise MADV_DONTNEED) when the PagedModel is made, so a
// unit that is not resident is not in this process's memory at all.
//
// The engine's nodes pin their unit while they compute and ask for the next unit of the step to be prefetched
// (pin(unit, want_logits)): embedding → layer 0 → … → layer L-1 → classifier (or, for a prompt step that skips
// the logits, the next step's embedding) → embedding.
//
//   PagedModel paged(model, {.budget = PagedModel::model_bytes(model) / 2});
//   LayerPager::Pin pin = paged.pin(paged.layer_unit(0), true);
//   const float* norm = reinterpret_cast<const float*>(paged.tensor(pin, model.layers[0].attn_norm));
//
// Thread-safety: as LayerPager; the Model must outlive the PagedModel (the tensors are looked up in it).
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <utility>
#include <vector>

#include "examples/transformer/layer_pager.hpp"
#include "examples/transformer/model.hpp"

namespace mmsb::llm {

struct PagingOptions {
  std::uint64_t budget = 0;       // bytes for every weight buffer; at least PagedModel::minimum_budget(model)
  bool prefetch = true;           // false: no prefetch, every miss is a synchronous load (the baseline)
  LayerPager::Executor executor;  // empty: TBB tasks
};

class PagedModel {
 public:
  // Throws Error(InvalidArgument) for a budget below minimum_budget(model), Error(IoError) when the model file
  // cannot be opened again for reading.
  PagedModel(const Model& model, PagingOptions options);
  ~PagedModel();
  PagedModel(const PagedModel&) = delete;
  PagedModel& operator=(const PagedModel&) = delete;

  // The paged size of the model (every unit), and the smallest budget it runs in (two of the largest units).
  static std::uint64_t model_bytes(const Model& model);
  static std::uint64_t minimum_budget(const Model& model);
  // Each unit's size, in unit order.
  static std::vector<std::uint64_t> unit_sizes(const Model& model);

  std::size_t embed_unit() const noexcept { return 0; }
  std::size_t layer_unit(std::size_t layer) const noexcept { return 1 + layer; }
  std::size_t head_unit() const noexcept { return head_; }  // == embed_unit() when the classifier is shared
  // The unit a step reads after `unit` (see the top of the file).
  std::size_t next_unit(std::size_t unit, bool want_logits) const noexcept;

  // Pins `unit` and prefetches next_unit(unit, want_logits).
  LayerPager::Pin pin(std::size_t unit, bool want_logits);
  // Where tensor `t` of the model lies in the pinned unit's buffer. Throws Error(Internal) if it is not there.
  const std::byte* tensor(const LayerPager::Pin& pin, const Tensor& t) const;

  LayerPager& pager() noexcept { return *pager_; }
  const LayerPager& pager() const noexcept { return *pager_; }

 private:
  struct Placement {
    const std::byte* source;  // bytes of the model (a run of tensors)
    std::uint64_t size;
    std::uint64_t offset;  // in the unit's buffer
  };
  struct Unit {
    std::vector<Placement> runs;                                      // what a load copies
    std::vector<std::pair<const std::byte*, std::uint64_t>> tensors;  // a tensor's bytes in the model → offset
  };
  const Model& model_;
  std::vector<Unit> units_;
  std::size_t head_ = 0;
  std::size_t layers_ = 0;
  int fd_ = -1;  // the model file, for pread(); -1 for a model parsed from memory
  std::unique_ptr<LayerPager> pager_;

  void load(std::size_t unit, std::span<std::byte> destination) const;
};

}  // namespace mmsb::llm
