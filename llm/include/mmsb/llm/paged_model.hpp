// mmsb/llm/paged_model.hpp — a Model's weights under a memory budget (layer paging).
//
// The weights are cut into units in the order a decoding step reads them: unit 0 is the token embedding (with the
// final norm when the classifier is the embedding itself), then each layer's attention (attention norm, wq, wk, wv,
// wo) and feed-forward (ffn norm, w1, w2, w3) units, and last the final norm with a separate classifier. A layer is
// two units, not one, because the room kept free for streaming is two of the largest streamed units: halving the
// largest unit leaves more of the budget to units that stay resident. A unit's tensors that lie back to back in
// the file (at most 256 bytes apart) form one run (a GGUF layer: one run; a llama2.c layer: nine).
// Two kinds of paging (PagingKind), the same tokens and logits bit for bit:
//  - Map (the default for a model read from a file, without an adapter's overrides): a unit's load maps the whole
//    pages of its runs of the file read-only (MAP_SHARED, PROT_READ; the page cache's pages, nothing copied), one
//    range after another, and populates them (madvise MADV_POPULATE_READ; a kernel before 5.14: a read of every
//    page) on the loading thread; eviction unmaps them. A unit's size is the sum of its ranges, shared pages at its
//    ends included (each unit counts the pages it maps). A load costs page-table work only, which depends on the page
//    cache's folios: ~100 us/MB for 4 KiB folios, ~15-35 for larger ones, ~2-20 for 2 MiB folios (mapped whole),
//    against ~200-300 us/MB for copying (docs/benchmarks.md, "Mapped layer paging"). A unit whose load finds
//    small folios (more CPU time per MiB than PagingOptions::refill_above_us_per_mib) has the 2 MiB blocks of the
//    file it touches dropped from the page cache (clean pages no mapping holds) and read again from the file in
//    2 MiB folios, so the page-table work of its later loads falls ~10x (a one-time read of the unit from disk).
//  - Copy: a LayerPager keeps units in anonymous buffers it owns; each run is read with one pread() (a model parsed
//    from memory: memcpy) and kept in the buffer as in the file, padding included; each run starts at a 64-byte
//    aligned offset, and a unit's size is the end of its last run rounded up to 64. The only kind for a model
//    parsed from memory and for overrides (they replace bytes after each load).
// model_bytes(), 100% of a percentage budget, is the sum of the units of the kind.
// Trust: a mapped unit reads the file as it is on disk while mapped. The file must not change while the model is
// open (as for the resident engine, which maps the whole file): a file truncated under a mapping raises SIGBUS on
// the next read of a lost page; a load that finds the file shorter fails with Error(IoError), and so does making a
// PagedModel when the file is shorter than when the model was loaded.
// Embedding rows: when the classifier is a tensor of its own and the budget does not hold the whole model, a step
// needs one row of the embedding, not the table, so the embedding is not paged at all: read_embedding_row() reads
// the token's row (one pread(), a few hundred bytes) and the pager holds the other units only.
// The model's own file mapping's pages under the tensors are dropped (madvise MADV_DONTNEED) when the PagedModel is
// made, so a unit that is not resident is not in this process's memory at all.
//
// Residency: a step reads the units in a cycle (embedding → attention 0 → feed-forward 0 → … → feed-forward L-1 →
// classifier, or, for a prompt step that skips the logits, the next step's embedding), so the pager keeps the set
// of units that LayerPager::choose_kept picks for the budget (the most bytes, leaving room for two of the largest
// other units) and streams the rest; a step then loads only the streamed units.
// The engine's nodes pin their unit while they compute (pin(unit, want_logits)), which prefetches the next units
// of the cycle that are not resident: as many streamed units ahead as the pager's slots left by the kept units
// hold, less the one in use.
//
//   PagedModel paged(model, {.budget = PagedModel::model_bytes(model) / 2});
//   LayerPager::Pin pin = paged.pin(paged.attention_unit(0), true);
//   const float* norm = reinterpret_cast<const float*>(paged.tensor(pin, model.layers[0].attn_norm));
//
// Thread-safety: as LayerPager; the Model must outlive the PagedModel (the tensors are looked up in it).
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <utility>
#include <vector>

#include "mmsb/llm/layer_pager.hpp"
#include "mmsb/llm/model.hpp"

namespace mmsb::llm {

// Bytes that replace a tensor's bytes in every load of its unit (a LoRA-merged matrix: lora.hpp's merge_lora).
// `bytes` has the tensor's size and encoding.
struct TensorOverride {
  const Tensor* tensor = nullptr;
  std::vector<std::byte> bytes;
};

// How units are loaded (see the top of the file). Auto: Map for a model read from a file and no overrides, else Copy.
enum class PagingKind : std::uint8_t { Auto, Map, Copy };

struct PagingOptions {
  std::uint64_t budget = 0;  // bytes for every weight buffer; at least PagedModel::minimum_budget(model)
  PagingKind kind = PagingKind::Auto;
  bool prefetch = true;           // false: no prefetch, every miss is a synchronous load (the baseline)
  LayerPager::Executor executor;  // empty: the pager's loader thread
  // Held for the PagedModel's life and counted against the budget (the pager gets what they leave). A LoRA
  // adapter is merged this way once; swapping adapters needs the weights resident (LoraSwitcher).
  std::vector<TensorOverride> overrides;
  // Mapped units: a unit whose load takes more CPU time than this per MiB to populate finds the file's page cache
  // in small folios (4 KiB folios cost ~40-130 us/MiB at every load, 2 MiB folios ~2-14): its pages are then
  // dropped from the page cache (posix_fadvise POSIX_FADV_DONTNEED; pages that a mapping holds stay) and read from
  // the file again in large folios; at most three times per unit. A unit whose refill did not make its next load
  // cheaper (its blocks shared with pages a mapping holds) is not refilled again, and after two such units none
  // is (a file system without large folios). Only the page cache changes: other readers see the same bytes.
  // 0: never.
  double refill_above_us_per_mib = 25;
};

class PagedModel {
 public:
  // Throws Error(InvalidArgument) for a budget below minimum_budget(model) plus the overrides' bytes, an override
  // of a tensor that is not paged (the embedding read by rows) or of the wrong size, or PagingKind::Map for a model
  // parsed from memory or with overrides; Error(IoError) when the model file cannot be opened again for reading or
  // is shorter than when the model was loaded.
  PagedModel(const Model& model, PagingOptions options);
  ~PagedModel();
  PagedModel(const PagedModel&) = delete;
  PagedModel& operator=(const PagedModel&) = delete;

  // The paged size of the model (every unit), and the smallest budget it runs in (two of the largest units that
  // are paged below the whole model: not an embedding read by rows), for paging of `kind` (Auto: Map for a model
  // read from a file, else Copy; a PagedModel with overrides copies, and its units are then smaller).
  static std::uint64_t model_bytes(const Model& model, PagingKind kind = PagingKind::Auto);
  static std::uint64_t minimum_budget(const Model& model, PagingKind kind = PagingKind::Auto);
  // Each unit's size, in unit order.
  static std::vector<std::uint64_t> unit_sizes(const Model& model, PagingKind kind = PagingKind::Auto);
  // The kind Auto stands for (a model without overrides), or `kind`; throws as the constructor for Map.
  static PagingKind kind_of(const Model& model, PagingKind kind);

  PagingKind kind() const noexcept { return kind_; }  // Map or Copy

  std::size_t embed_unit() const noexcept { return 0; }
  std::size_t attention_unit(std::size_t layer) const noexcept { return 1 + 2 * layer; }
  std::size_t ffn_unit(std::size_t layer) const noexcept { return 2 + 2 * layer; }
  std::size_t head_unit() const noexcept { return head_; }  // == embed_unit() when the classifier is shared
  // The unit a step reads after `unit` (see the top of the file).
  std::size_t next_unit(std::size_t unit, bool want_logits) const noexcept;

  // Pins `unit` and prefetches the units that follow it in the cycle (see the top of the file). Throws
  // Error(Internal) for the embedding when it is read by rows.
  LayerPager::Pin pin(std::size_t unit, bool want_logits);
  // True when the embedding is read by rows instead of paged (see the top of the file).
  bool embedding_by_rows() const noexcept { return first_paged_ == 1; }
  // Copies the embedding row of `token` (Tensor::row_stride bytes) to `out`. Throws Error(InvalidArgument) for a
  // token outside the vocabulary, Error(IoError) when the file cannot be read.
  void read_embedding_row(int token, std::byte* out) const;
  // Where tensor `t` of the model lies in the pinned unit's buffer. Throws Error(Internal) if it is not there.
  const std::byte* tensor(const LayerPager::Pin& pin, const Tensor& t) const;

  // The pager. Its unit indexes are this model's, less one when the embedding is read by rows (pager_unit()).
  LayerPager& pager() noexcept { return *pager_; }
  const LayerPager& pager() const noexcept { return *pager_; }
  // Bytes of mapped units read again from the file because the page cache held them in small folios
  // (PagingOptions::refill_above_us_per_mib), counted once per refill.
  std::uint64_t refilled_bytes() const noexcept { return refilled_bytes_.load(std::memory_order_relaxed); }

 private:
  struct Placement {
    const std::byte* source;  // bytes of the model (a run of tensors)
    std::uint64_t size;
    std::uint64_t offset;  // in the unit's buffer
  };
  struct Unit {
    std::vector<Placement> runs;  // what a load copies, or maps (whole pages, offsets in the unit's mapping)
    std::vector<std::pair<std::uint64_t, const std::vector<std::byte>*>> overrides;  // offset → bytes, after runs
    std::vector<std::pair<const std::byte*, std::uint64_t>> tensors;  // a tensor's bytes in the model → offset
    std::uint64_t bytes = 0;                                          // the unit's size
  };
  const Model& model_;
  std::vector<Unit> units_;
  std::size_t head_ = 0;
  std::size_t layers_ = 0;
  std::size_t lookahead_ = 1;    // streamed units to prefetch ahead of the one pinned
  std::size_t first_paged_ = 0;  // 1 when the embedding is read by rows: the pager holds units 1.. as 0..
  int fd_ = -1;                  // the model file, for pread() and mmap(); -1 for a model parsed from memory
  PagingKind kind_ = PagingKind::Copy;
  std::vector<TensorOverride> overrides_;
  std::unique_ptr<LayerPager> pager_;
  struct MappedUnit {
    std::span<const std::byte> bytes;
    std::uint64_t populate_cpu_ns;
  };
  struct RefillState {  // of one unit; written only by the unit's load
    std::atomic<int> refills{0};
    std::atomic<double> cost_before{0};  // us of CPU per MiB of the load before the last refill
  };
  static constexpr int kMaxRefills = 3;
  static constexpr int kFailedRefillsToStop = 2;  // units whose refill did not help, before refills stop
  double refill_above_ = 0;                       // us of CPU per MiB; 0: never refill
  mutable std::atomic<bool> refilling_{false};
  mutable std::atomic<int> failed_refills_{0};
  std::unique_ptr<RefillState[]> refill_state_;  // per unit (its elements change in const loads)
  mutable std::atomic<std::uint64_t> refilled_bytes_{0};

  std::size_t pager_unit(std::size_t unit) const;
  void place_overrides();
  void read_weights_from_file(const MappedFile& file);
  void load(std::size_t unit, std::span<std::byte> destination) const;
  void read(const std::byte* source, std::uint64_t size, std::byte* out) const;
  std::span<const std::byte> map_unit(std::size_t unit) const;
  MappedUnit map_and_populate(std::size_t unit) const;
  void drop_cached_blocks(const Unit& u) const;
};

}  // namespace mmsb::llm
