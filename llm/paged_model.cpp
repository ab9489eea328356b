#include "mmsb/llm/paged_model.hpp"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <string>
#include <utility>

#include "llm/cpu_time.hpp"
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
    p.units.push_back({&w.attn_norm, &w.wq, &w.wk, &w.wv, &w.wo});
    p.units.push_back({&w.ffn_norm, &w.w1, &w.w2, &w.w3});
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

std::uint64_t page_bytes() { return static_cast<std::uint64_t>(::sysconf(_SC_PAGESIZE)); }

// A mapped unit's layout: the whole pages of each run of the file, mapped one after another (a GGUF unit: one
// range); a tensor lies at its range's place in the mapping plus its distance from the range's first page. The
// unit's size is the sum of the ranges: the bytes its mapping holds.
Layout map_layout(const Layout& copied, const std::byte* file) {
  const std::uint64_t page = page_bytes();
  Layout out;
  for (const Layout::Run& run : copied.runs) {
    const auto begin = static_cast<std::uint64_t>(run.source - file) / page * page;
    const auto end = (static_cast<std::uint64_t>(run.source - file) + run.size + page - 1) / page * page;
    out.runs.push_back({file + begin, end - begin, out.bytes});
    out.bytes += end - begin;
  }
  for (const auto& [source, copied_offset] : copied.tensors) {  // in its own run's range (ranges may share a page)
    std::size_t r = 0;
    while (copied_offset >= copied.runs[r].offset + copied.runs[r].size) ++r;
    out.tensors.emplace_back(source, out.runs[r].offset + static_cast<std::uint64_t>(source - out.runs[r].source));
  }
  return out;
}

PagingKind resolve(const Model& model, PagingKind kind, bool overrides) {
  if (kind == PagingKind::Copy) return kind;
  if (kind == PagingKind::Map && (!model.file || overrides)) {
    throw Error(ErrorCode::InvalidArgument, std::string("layer paging: cannot map the units: ") +
                                                (model.file ? "an adapter's merged matrices replace bytes of the file"
                                                            : "the model was not read from a file") +
                                                "; page them by copying (--paging copy)");
  }
  return model.file && !overrides ? PagingKind::Map : PagingKind::Copy;
}

// The layout of each unit of `p` for `kind` (Map or Copy).
std::vector<Layout> layouts(const Model& model, const Plan& p, PagingKind kind) {
  std::vector<Layout> out;
  for (const auto& tensors : p.units) {
    out.push_back(layout(tensors));
    if (kind == PagingKind::Map) out.back() = map_layout(out.back(), model.file->bytes().data());
  }
  return out;
}

#ifndef MADV_POPULATE_READ
#define MADV_POPULATE_READ 22  // Linux 5.14
#endif

// Faults a fresh mapping's pages in now, on the loading thread, rather than on the compute's first reads.
void populate(const std::byte* base, std::uint64_t size, const std::string& path) {
  for (int interrupted = 0;; ++interrupted) {
    if (::madvise(const_cast<std::byte*>(base), size, MADV_POPULATE_READ) == 0) return;
    if ((errno == EINTR || errno == EAGAIN) && interrupted < 100) continue;
    if (errno != EINVAL) break;
    // A kernel before 5.14: read a byte of every page (a file truncated since it was loaded raises SIGBUS here).
    const std::uint64_t page = page_bytes();
    std::uint8_t sum = 0;
    for (std::uint64_t at = 0; at < size; at += page)
      sum ^= static_cast<const volatile std::uint8_t*>(static_cast<const volatile void*>(base))[at];
    asm volatile("" : : "r"(sum));
    return;
  }
  const int err = errno;
  throw Error(ErrorCode::IoError, "layer paging: cannot read " + std::to_string(size) + " mapped bytes of " + path +
                                      ": " +
                                      (err == EFAULT ? "the file is shorter than when loaded" : std::strerror(err)));
}

}  // namespace

PagingKind PagedModel::kind_of(const Model& model, PagingKind kind) { return resolve(model, kind, false); }

std::vector<std::uint64_t> PagedModel::unit_sizes(const Model& model, PagingKind kind) {
  std::vector<std::uint64_t> sizes;
  for (const Layout& l : layouts(model, plan(model), kind_of(model, kind))) sizes.push_back(l.bytes);
  return sizes;
}

std::uint64_t PagedModel::model_bytes(const Model& model, PagingKind kind) {
  std::uint64_t total = 0;
  for (std::uint64_t s : unit_sizes(model, kind)) total += s;
  return total;
}

std::uint64_t PagedModel::minimum_budget(const Model& model, PagingKind kind) {
  std::vector<std::uint64_t> sizes = unit_sizes(model, kind);
  // Below the whole model a separate classifier's embedding is read by rows, not paged (see the header).
  if (plan(model).head != 0) sizes.erase(sizes.begin());
  return LayerPager::minimum_budget(sizes);
}

PagedModel::PagedModel(const Model& model, PagingOptions options) : model_(model), layers_(model.layers.size()) {
  Plan p = plan(model);
  head_ = p.head;
  kind_ = resolve(model, options.kind, !options.overrides.empty());
  std::vector<std::uint64_t> sizes;
  for (Layout& l : layouts(model, p, kind_)) {
    Unit unit;
    for (const Layout::Run& r : l.runs) unit.runs.push_back({r.source, r.size, r.offset});
    unit.tensors = std::move(l.tensors);
    unit.bytes = l.bytes;
    units_.push_back(std::move(unit));
    sizes.push_back(l.bytes);
  }
  refill_state_ = std::make_unique<RefillState[]>(units_.size());
  if (kind_ == PagingKind::Map && options.refill_above_us_per_mib > 0) {
    refill_above_ = options.refill_above_us_per_mib;
    refilling_.store(true, std::memory_order_relaxed);
  }
  // The embedding is read by rows when a separate classifier is the step's last unit and not everything fits.
  std::uint64_t total = 0;
  for (std::uint64_t b : sizes) total += b;
  overrides_ = std::move(options.overrides);
  std::uint64_t override_bytes = 0;
  for (const TensorOverride& o : overrides_) override_bytes += o.bytes.size();
  if (head_ != embed_unit() && options.budget < total + override_bytes) first_paged_ = 1;

  place_overrides();
  const std::vector<std::uint64_t> paged_sizes(sizes.begin() + static_cast<std::ptrdiff_t>(first_paged_), sizes.end());
  if (override_bytes > 0) {
    const std::uint64_t needed = override_bytes + LayerPager::minimum_budget(paged_sizes);
    if (options.budget < needed) {
      throw Error(ErrorCode::InvalidArgument,
                  "memory budget of " + std::to_string(options.budget) + " bytes is below the minimum of " +
                      std::to_string(needed) + " bytes with the adapter: " + std::to_string(override_bytes) +
                      " bytes of merged matrices held in memory, and two of the largest paged units");
    }
    options.budget -= override_bytes;
  }

  LayerPager::Options pager_options;
  pager_options.prefetch = options.prefetch;
  pager_options.executor = std::move(options.executor);
  // A mapped load costs page-table work only, so mapped units trade two kept units for a deeper prefetch window:
  // room for up to four of the largest streamed units, three of them loading ahead of the one in use, so that a
  // loader thread that the OS schedules late (another process busy on a core) still finishes before the pin.
  const std::uint64_t largest = *std::max_element(paged_sizes.begin(), paged_sizes.end());
  const std::uint64_t room = kind_ == PagingKind::Map ? std::clamp<std::uint64_t>(options.budget / largest, 2, 4) : 2;
  pager_options.kept = LayerPager::choose_kept(paged_sizes, options.budget, static_cast<std::size_t>(room));
  LayerPager::Loader loader;
  if (kind_ == PagingKind::Map) {
    pager_options.mapper.map = [this](std::size_t unit) { return map_unit(unit + first_paged_); };
    pager_options.mapper.unmap = [](std::size_t, std::span<const std::byte> bytes) {
      ::munmap(const_cast<std::byte*>(bytes.data()), bytes.size());
    };
  } else {
    loader = [this](std::size_t unit, std::span<std::byte> out) { load(unit + first_paged_, out); };
  }
  // Checks the budget before anything else happens.
  pager_ = std::make_unique<LayerPager>(paged_sizes, options.budget, std::move(loader), std::move(pager_options));
  // Slots for streamed units in what the kept units leave: one is in use, the others can be loading ahead.
  if (const std::uint64_t slot = pager_->slot_bytes(); slot > 0) {
    lookahead_ = std::max<std::uint64_t>(1, (options.budget - pager_->stats().kept_bytes) / slot - 1);
  }

  if (model.file) read_weights_from_file(*model.file);
}

// Finds each override's tensor in its paged unit (the override's bytes are written over the tensor's after a load).
void PagedModel::place_overrides() {
  for (const TensorOverride& o : overrides_) {
    if (!o.tensor || o.bytes.size() != o.tensor->bytes.size()) {
      throw Error(ErrorCode::InvalidArgument, "layer paging: an override of " +
                                                  (o.tensor ? o.tensor->name : std::string("no tensor")) +
                                                  " does not have the tensor's size");
    }
    bool placed = false;
    for (std::size_t u = first_paged_; u < units_.size() && !placed; ++u) {
      for (const auto& [source, offset] : units_[u].tensors) {
        if (source == o.tensor->bytes.data()) {
          units_[u].overrides.emplace_back(offset, &o.bytes);
          placed = true;
          break;
        }
      }
    }
    if (!placed) {
      throw Error(ErrorCode::InvalidArgument, "layer paging: " + o.tensor->name + " is not in a paged unit");
    }
  }
}

void PagedModel::read_weights_from_file(const MappedFile& file) {
  fd_ = ::open(file.path().c_str(), O_RDONLY | O_CLOEXEC);
  if (fd_ < 0) {
    throw Error(ErrorCode::IoError,
                "layer paging: cannot open " + file.path() + " again to read layers: " + std::strerror(errno));
  }
  struct stat st {};
  if (::fstat(fd_, &st) != 0 || static_cast<std::uint64_t>(st.st_size) < file.bytes().size()) {
    const std::string size = std::to_string(st.st_size);
    ::close(std::exchange(fd_, -1));
    throw Error(ErrorCode::IoError, "layer paging: " + file.path() + " is shorter than when it was loaded (" + size +
                                        " of " + std::to_string(file.bytes().size()) + " bytes)");
  }
  // The weights now come from the file through the pager: drop the mapping's pages under every tensor (whole
  // pages only; a page shared with the header or another unit's tensor may stay), so that they do not count.
  // Mapped units map the file again, each unit on its own, so that the kernel maps around a fault within the unit.
  const std::uintptr_t page = static_cast<std::uintptr_t>(::sysconf(_SC_PAGESIZE));
  for (const Unit& unit : units_) {
    for (const Placement& t : unit.runs) {
      const auto begin = (reinterpret_cast<std::uintptr_t>(t.source) + page - 1) / page * page;
      const auto end = (reinterpret_cast<std::uintptr_t>(t.source) + t.size) / page * page;
      if (end > begin) ::madvise(reinterpret_cast<void*>(begin), end - begin, MADV_DONTNEED);
    }
  }
}

PagedModel::~PagedModel() {
  pager_.reset();  // waits for prefetches, which read through fd_
  if (fd_ >= 0) ::close(fd_);
}

void PagedModel::read(const std::byte* source, std::uint64_t size, std::byte* out) const {
  if (fd_ < 0) {
    std::memcpy(out, source, size);
    return;
  }
  const auto file_offset = static_cast<off_t>(source - model_.file->bytes().data());
  std::uint64_t done = 0;
  while (done < size) {
    const ssize_t n = ::pread(fd_, out + done, size - done, file_offset + static_cast<off_t>(done));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      throw Error(ErrorCode::IoError, "layer paging: cannot read " + std::to_string(size) + " bytes at offset " +
                                          std::to_string(file_offset) + " of " + model_.file->path() + ": " +
                                          (n < 0 ? std::strerror(errno) : "the file is shorter than when loaded"));
    }
    done += static_cast<std::uint64_t>(n);
  }
}

// A mapped unit (see map_and_populate). Each load also checks how the page cache holds the unit: a populate that
// costs more CPU time per MiB than PagingOptions::refill_above_us_per_mib means small folios, which every later
// load would pay again, so the unit's pages are dropped from the page cache and read from the file once more
// through the huge-page mapping (2 MiB folios where the file system has large folios). The drop covers the 2 MiB
// blocks the unit touches, since a block whose pages are partly cached is read again in small folios; pages that a
// mapping holds (a neighbouring unit's) stay, so a unit may need another refill later, up to kMaxRefills. A refill
// that did not make the unit's next load clearly cheaper is the unit's last (its blocks share pages that a mapping
// holds, the model header's for one); when that happens to kFailedRefillsToStop units, the file system keeps
// small folios: refills stop.
std::span<const std::byte> PagedModel::map_unit(std::size_t unit) const {
  const MappedUnit mapped = map_and_populate(unit);
  if (!refilling_.load(std::memory_order_relaxed)) return mapped.bytes;
  const Unit& u = units_[unit];
  RefillState& state = refill_state_[unit];
  const double mib = static_cast<double>(u.bytes) / static_cast<double>(1 << 20);
  const double cost = static_cast<double>(mapped.populate_cpu_ns) / 1e3 / mib;  // us of CPU per MiB
  const int refills = state.refills.load(std::memory_order_relaxed);
  if (cost <= refill_above_ || refills >= kMaxRefills) return mapped.bytes;
  if (refills > 0 && cost > 0.8 * state.cost_before.load(std::memory_order_relaxed)) {
    state.refills.store(kMaxRefills, std::memory_order_relaxed);
    if (failed_refills_.fetch_add(1, std::memory_order_relaxed) + 1 >= kFailedRefillsToStop) {
      refilling_.store(false, std::memory_order_relaxed);
    }
    return mapped.bytes;
  }
  ::munmap(const_cast<std::byte*>(mapped.bytes.data()), mapped.bytes.size());  // mapped pages cannot be dropped
  drop_cached_blocks(u);
  state.refills.store(refills + 1, std::memory_order_relaxed);
  state.cost_before.store(cost, std::memory_order_relaxed);
  refilled_bytes_.fetch_add(u.bytes, std::memory_order_relaxed);
  return map_and_populate(unit).bytes;
}

// Drops the page cache's clean, unmapped pages of the 2 MiB blocks of the file that the unit's ranges touch.
void PagedModel::drop_cached_blocks(const Unit& u) const {
  constexpr std::uint64_t block = 2u << 20;
  const std::byte* file = model_.file->bytes().data();
  for (const Placement& range : u.runs) {
    const auto offset = static_cast<std::uint64_t>(range.source - file);
    const std::uint64_t begin = offset / block * block, end = (offset + range.size + block - 1) / block * block;
    ::posix_fadvise(fd_, static_cast<off_t>(begin), static_cast<off_t>(end - begin), POSIX_FADV_DONTNEED);
  }
}

// The unit's ranges of the file, read-only and shared (the page cache's pages, not a copy), one after another in
// one span, populated. A range's address is congruent to its file offset modulo 2 MiB where the kernel aligns file
// mappings (then page-cache folios of 2 MiB map whole).
PagedModel::MappedUnit PagedModel::map_and_populate(std::size_t unit) const {
  const Unit& u = units_[unit];
  const std::byte* file = model_.file->bytes().data();
  void* base = u.runs.size() == 1
                   ? ::mmap(nullptr, u.bytes, PROT_READ, MAP_SHARED, fd_, u.runs[0].source - file)
                   : ::mmap(nullptr, u.bytes, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  auto fail = [&](void* mapped) {
    const int err = errno;
    if (mapped != MAP_FAILED) ::munmap(mapped, u.bytes);
    return Error(ErrorCode::IoError, "layer paging: cannot map " + std::to_string(u.bytes) + " bytes of " +
                                         model_.file->path() + ": " + std::strerror(err));
  };
  if (base == MAP_FAILED) throw fail(base);
  for (std::size_t r = 0; u.runs.size() > 1 && r < u.runs.size(); ++r) {  // into the reserved addresses
    const Placement& range = u.runs[r];
    if (::mmap(static_cast<std::byte*>(base) + range.offset, range.size, PROT_READ, MAP_SHARED | MAP_FIXED, fd_,
               range.source - file) == MAP_FAILED) {
      throw fail(base);
    }
  }
  const std::span<const std::byte> bytes(static_cast<const std::byte*>(base), u.bytes);
  // Pages not in the page cache are read in 2 MiB folios (where the file system has large folios), which later
  // loads map with one entry each; without it a fault reads 4 KiB folios, which cost ~5x more to map and unmap.
  ::madvise(base, u.bytes, MADV_HUGEPAGE);
  const std::uint64_t start = thread_cpu_ns();
  try {
    populate(bytes.data(), bytes.size(), model_.file->path());
  } catch (...) {
    ::munmap(base, u.bytes);
    throw;
  }
  return {bytes, thread_cpu_ns() - start};
}

void PagedModel::load(std::size_t unit, std::span<std::byte> destination) const {
  for (const Placement& t : units_[unit].runs) read(t.source, t.size, destination.data() + t.offset);
  for (const auto& [offset, bytes] : units_[unit].overrides) {
    std::memcpy(destination.data() + offset, bytes->data(), bytes->size());
  }
}

void PagedModel::read_embedding_row(int token, std::byte* out) const {
  const Tensor& e = model_.token_embedding;
  if (token < 0 || static_cast<std::uint64_t>(token) >= e.rows) {
    throw Error(ErrorCode::InvalidArgument,
                "token " + std::to_string(token) + " is outside the vocabulary of " + std::to_string(e.rows));
  }
  read(e.bytes.data() + static_cast<std::uint64_t>(token) * e.row_stride, e.row_stride, out);
}

std::size_t PagedModel::pager_unit(std::size_t unit) const {
  if (unit < first_paged_ || unit >= units_.size()) {
    throw Error(ErrorCode::Internal, "layer paging: unit " + std::to_string(unit) + " is not paged");
  }
  return unit - first_paged_;
}

std::size_t PagedModel::next_unit(std::size_t unit, bool want_logits) const noexcept {
  if (unit == embed_unit()) return attention_unit(0);
  if (unit == head_) return embed_unit();
  if (unit + 1 < attention_unit(layers_)) return unit + 1;  // the layer's feed-forward, or the next layer
  return want_logits ? head_ : embed_unit();                // after the last layer
}

LayerPager::Pin PagedModel::pin(std::size_t unit, bool want_logits) {
  LayerPager::Pin pinned = pager_->pin(pager_unit(unit));
  // Walk the cycle: prefetch the kept units on the way (they load once) and the next `lookahead_` streamed units.
  std::size_t streamed = 0;
  std::size_t next = unit;
  for (std::size_t steps = 0; steps + 1 < units_.size() && streamed < lookahead_; ++steps) {
    next = next_unit(next, want_logits);
    if (next == unit) break;
    if (next < first_paged_) continue;  // the embedding, read by rows
    const std::size_t p = next - first_paged_;
    pager_->prefetch(p);  // does nothing for a unit that is resident or loading
    if (!pager_->kept(p)) ++streamed;
  }
  return pinned;
}

const std::byte* PagedModel::tensor(const LayerPager::Pin& pin, const Tensor& t) const {
  for (const auto& [source, offset] : units_[pin.unit() + first_paged_].tensors) {
    if (source == t.bytes.data()) return pin.bytes().data() + offset;
  }
  throw Error(ErrorCode::Internal,
              "layer paging: tensor " + t.name + " is not in unit " + std::to_string(pin.unit() + first_paged_));
}

}  // namespace mmsb::llm
