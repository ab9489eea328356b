#include "examples/transformer/paged_model.hpp"

#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <string>
#include <utility>

#include "mmsb/error.hpp"

namespace mmsb::llm {

namespace {

constexpr std::uint64_t kAlign = 64;

struct Plan {
  std::vector<std::vector<const Tensor*>> units;
  std::size_t head = 0;
};

// The units in the order a step reads them; the classifier shares unit 0 when it is the embedding's bytes.
Plan plan(const Model& m) {
  Plan p;
  const bool shared = m.classifier.bytes.data() == m.token_embedding.bytes.data();
  p.units.push_back({&m.token_embedding});
  if (shared) p.units.back().push_back(&m.final_norm);
  for (const LayerTensors& w : m.layers) {
    p.units.push_back({&w.attn_norm, &w.wq, &w.wk, &w.wv, &w.wo, &w.ffn_norm, &w.w1, &w.w2, &w.w3});
  }
  if (shared) {
    p.head = 0;
  } else {
    p.head = p.units.size();
    p.units.push_back({&m.final_norm, &m.classifier});
  }
  return p;
}

constexpr std::uint64_t kMaxGap = 256;  // tensors at most this far apart in the file are read in one run

std::uint64_t round_up(std::uint64_t n) { return (n + kAlign - 1) / kAlign * kAlign; }

// A unit's layout: its tensors in file order, those that lie (almost) back to back in the file forming one run,
// read with one pread() and kept in the buffer as they are in the file (gaps included); each run starts at a
// 64-byte aligned offset. The unit's size is the end of its last run, rounded up to 64.
struct Layout {
  struct Run {
    const std::byte* source;
    std::uint64_t size;
    std::uint64_t offset;
  };
  std::vector<Run> runs;
  std::vector<std::pair<const std::byte*, std::uint64_t>> tensors;  // source → offset in the buffer
  std::uint64_t bytes = 0;
};

Layout layout(std::vector<const Tensor*> tensors) {
  std::sort(tensors.begin(), tensors.end(),
            [](const Tensor* a, const Tensor* b) { return a->bytes.data() < b->bytes.data(); });
  Layout out;
  for (const Tensor* t : tensors) {
    const std::byte* begin = t->bytes.data();
    const std::byte* end = begin + t->bytes.size();
    if (out.runs.empty() || begin > out.runs.back().source + out.runs.back().size + kMaxGap) {
      out.runs.push_back({begin, 0, round_up(out.bytes)});
    }
    Layout::Run& run = out.runs.back();
    run.size = std::max<std::uint64_t>(run.size, static_cast<std::uint64_t>(end - run.source));
    out.tensors.emplace_back(begin, run.offset + static_cast<std::uint64_t>(begin - run.source));
    out.bytes = run.offset + run.size;
  }
  out.bytes = round_up(out.bytes);
  return out;
}

}  // namespace

std::vector<std::uint64_t> PagedModel::unit_sizes(const Model& model) {
  std::vector<std::uint64_t> sizes;
  for (const auto& unit : plan(model).units) sizes.push_back(layout(unit).bytes);
  return sizes;
}

std::uint64_t PagedModel::model_bytes(const Model& model) {
  std::uint64_t total = 0;
  for (std::uint64_t s : unit_sizes(model)) total += s;
  return total;
}

std::uint64_t PagedModel::minimum_budget(const Model& model) { return LayerPager::minimum_budget(unit_sizes(model)); }

PagedModel::PagedModel(const Model& model, PagingOptions options) : model_(model), layers_(model.layers.size()) {
  Plan p = plan(model);
  head_ = p.head;
  std::vector<std::uint64_t> sizes;
  for (const auto& tensors : p.units) {
    Layout l = layout(tensors);
    Unit unit;
    for (const Layout::Run& r : l.runs) unit.runs.push_back({r.source, r.size, r.offset});
    unit.tensors = std::move(l.tensors);
    units_.push_back(std::move(unit));
    sizes.push_back(l.bytes);
  }
  LayerPager::Options pager_options;
  pager_options.prefetch = options.prefetch;
  pager_options.executor = std::move(options.executor);
  // Checks the budget before anything else happens.
  pager_ = std::make_unique<LayerPager>(
      sizes, options.budget, [this](std::size_t unit, std::span<std::byte> out) { load(unit, out); },
      std::move(pager_options));

  if (model.file) {
    fd_ = ::open(model.file->path().c_str(), O_RDONLY | O_CLOEXEC);
    if (fd_ < 0) {
      throw Error(ErrorCode::IoError,
                  "layer paging: cannot open " + model.file->path() + " again to read layers: " + std::strerror(errno));
    }
    // The weights now come from the file through the pager: drop the mapping's pages under every tensor (whole
    // pages only; a page shared with the header or another unit's tensor may stay), so that they do not count.
    const std::uintptr_t page = static_cast<std::uintptr_t>(::sysconf(_SC_PAGESIZE));
    for (const Unit& unit : units_) {
      for (const Placement& t : unit.runs) {
        const auto begin = (reinterpret_cast<std::uintptr_t>(t.source) + page - 1) / page * page;
        const auto end = (reinterpret_cast<std::uintptr_t>(t.source) + t.size) / page * page;
        if (end > begin) ::madvise(reinterpret_cast<void*>(begin), end - begin, MADV_DONTNEED);
      }
    }
  }
}

PagedModel::~PagedModel() {
  pager_.reset();  // waits for prefetches, which read through fd_
  if (fd_ >= 0) ::close(fd_);
}

void PagedModel::load(std::size_t unit, std::span<std::byte> destination) const {
  for (const Placement& t : units_[unit].runs) {
    std::byte* out = destination.data() + t.offset;
    if (fd_ < 0) {
      std::memcpy(out, t.source, t.size);
      continue;
    }
    auto file_offset = static_cast<off_t>(t.source - model_.file->bytes().data());
    std::uint64_t done = 0;
    while (done < t.size) {
      const ssize_t n = ::pread(fd_, out + done, t.size - done, file_offset + static_cast<off_t>(done));
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) {
        throw Error(ErrorCode::IoError, "layer paging: cannot read " + std::to_string(t.size) + " bytes at offset " +
                                            std::to_string(file_offset) + " of " + model_.file->path() + ": " +
                                            (n < 0 ? std::strerror(errno) : "the file is shorter than when loaded"));
      }
      done += static_cast<std::uint64_t>(n);
    }
  }
}

std::size_t PagedModel::next_unit(std::size_t unit, bool want_logits) const noexcept {
  if (unit == embed_unit()) return layer_unit(0);
  if (unit == head_) return embed_unit();
  if (unit + 1 < layer_unit(layers_)) return unit + 1;  // the next layer
  return want_logits ? head_ : embed_unit();            // after the last layer
}

LayerPager::Pin PagedModel::pin(std::size_t unit, bool want_logits) {
  LayerPager::Pin pinned = pager_->pin(unit);
  pager_->prefetch(next_unit(unit, want_logits));
  return pinned;
}

const std::byte* PagedModel::tensor(const LayerPager::Pin& pin, const Tensor& t) const {
  for (const auto& [source, offset] : units_[pin.unit()].tensors) {
    if (source == t.bytes.data()) return pin.bytes().data() + offset;
  }
  throw Error(ErrorCode::Internal, "layer paging: tensor " + t.name + " is not in unit " + std::to_string(pin.unit()));
}

}  // namespace mmsb::llm
