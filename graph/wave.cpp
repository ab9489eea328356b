// The wave executor: which nodes a wave reaches, running each (map, passthrough, incremental) under its page
// locks, publishing its output as one new epoch, and what happens when one throws. See graph/engine.hpp.
#include <algorithm>
#include <exception>
#include <string>
#include <utility>
#include <vector>

#include "delta/copy_bytes.hpp"
#include "graph/engine.hpp"

namespace mmsb {

using detail::event_bit;
using detail::Node;
using detail::NodeLocks;
using detail::Slot;
using detail::kSampleHopsEvery;
using detail::steady_ns;
using detail::Tally;

void Propagator::Impl::record_failure(Node& node, std::exception_ptr error) {
  std::lock_guard lock(failure_mutex);
  if (!failure) {
    failure = std::move(error);
    failed_page = node.output;
  }
  cancelled.store(true, std::memory_order_release);
}

// Writes `d` (ranges and payload set, or computed here by diffing the scratch buffer) into the node's output page
// as one new epoch. Returns false if the delta is empty (cutoff). The caller holds the output's exclusive lock.
bool Propagator::Impl::publish(Node& node, Delta& d, bool diff_against_scratch) {
  PageRecord& page = *node.out_slot->record;
  const std::uint64_t size = page.size.load(std::memory_order_relaxed);
  const bool record_undo = runtime_impl.options.record_undo;
  if (diff_against_scratch) {
    if (node.scratch.size != size) {
      throw Error(ErrorCode::Aborted, "derived page " + page.id.to_string() + " was resized during the wave");
    }
    DiffOptions opts;
    opts.record_undo = record_undo;
    if (node.options.always_changes) {
      d.clear();
      d.ranges.push_back({0, size});
      d.payload.assign(node.scratch.block.data, node.scratch.block.data + size);
      if (record_undo) {
        d.has_undo = true;
        d.undo.assign(page.data, page.data + size);
      }
      if (size == 0) d.clear();
    } else {
      diff_into(std::span<const std::byte>(page.data, size), std::span<const std::byte>(node.scratch.block.data, size),
                d, opts);
    }
  } else {
    d.base_size = d.size = size;
    for (const ByteRange& r : d.ranges) {
      if (r.end() > size || r.end() < r.offset) {
        throw Error(ErrorCode::InvalidArgument, "node output delta range " + detail::range_text(r.offset, r.length) +
                                                    " is outside page " + page.id.to_string() + " of " +
                                                    std::to_string(size) + " bytes");
      }
    }
    d.has_undo = record_undo;
    d.undo.clear();
    d.undo_tail.clear();
    if (record_undo) {
      for (const ByteRange& r : d.ranges) d.undo.insert(d.undo.end(), page.data + r.offset, page.data + r.end());
    }
    d.validate();
  }
  if (d.ranges.empty()) return false;
  const std::uint64_t epoch = page.epoch.load(std::memory_order_relaxed);
  d.page = page.id;
  d.base_epoch = epoch;
  d.epoch_count = 1;
  d.base_size = d.size = size;
  const std::byte* src = d.payload.data();
  for (const ByteRange& r : d.ranges) {
    detail::copy_bytes(page.data + r.offset, src, r.length);
    src += r.length;
  }
  page.epoch.store(epoch + 1, std::memory_order_release);
  return true;
}

bool Propagator::Impl::compute_map(Node& node) {
  NodeLocks locks(node.lock_order, node.out_slot->record);
  for (std::size_t i = 0; i < node.inputs.size(); ++i) {
    PageRecord* rec = node.inputs[i]->record;
    node.spans[i] = {rec->data, rec->size.load(std::memory_order_relaxed)};
  }
  PageRecord* out = node.out_slot->record;
  const std::uint64_t size = out->size.load(std::memory_order_relaxed);
  std::span<std::byte> buffer = node.scratch.resize(size);
  detail::copy_bytes(buffer.data(), out->data, size);
  MapContext ctx(node.spans, buffer, node.output);
  node.map(ctx);
  return publish(node, node.out_delta, /*diff_against_scratch=*/true);
}

// Forwards the input's delta through the remap window; a stale node copies the whole window instead.
bool Propagator::Impl::compute_passthrough(Node& node, std::uint64_t wave, bool stale) {
  Slot* in = node.inputs[0];
  Delta& d = node.out_delta;
  d.clear();
  const ByteRemap& m = node.remap;
  const std::uint64_t window_end =
      m.length > ~std::uint64_t{0} - m.input_offset ? ~std::uint64_t{0} : m.input_offset + m.length;
  const std::uint64_t out_size = node.out_slot->record->size.load(std::memory_order_relaxed);
  auto forward = [&](std::uint64_t offset, std::uint64_t length, const std::byte* bytes) {
    std::uint64_t begin = std::max(offset, m.input_offset), end = std::min(offset + length, window_end);
    if (begin >= end) return;
    std::uint64_t out_begin = begin - m.input_offset + m.output_offset;
    if (out_begin >= out_size) return;
    std::uint64_t n = std::min(end - begin, out_size - out_begin);
    if (!d.ranges.empty() && d.ranges.back().end() >= out_begin) {
      // Source ranges are sorted and disjoint, and the remap is a shift, so outputs only ever touch: merge.
      d.ranges.back().length = out_begin + n - d.ranges.back().offset;
    } else {
      d.ranges.push_back({out_begin, n});
    }
    d.payload.insert(d.payload.end(), bytes + (begin - offset), bytes + (begin - offset) + n);
  };
  const bool changed = in->changed_wave.load(std::memory_order_acquire) == wave;
  NodeLocks locks(node.lock_order, node.out_slot->record);
  if (stale || !changed) {
    forward(0, in->record->size.load(std::memory_order_relaxed), in->record->data);
  } else {
    const Delta* src = in->delta.load(std::memory_order_relaxed);
    const std::byte* payload = src->payload.data();
    for (const ByteRange& r : src->ranges) {
      forward(r.offset, r.length, payload);
      payload += r.length;
    }
  }
  return publish(node, d, /*diff_against_scratch=*/false);
}

bool Propagator::Impl::compute_incremental(Node& node, std::uint64_t wave, bool stale) {
  Delta& d = node.out_delta;
  d.clear();
  NodeLocks locks(node.lock_order, node.out_slot->record);
  for (std::size_t i = 0; i < node.inputs.size(); ++i) {
    Slot* s = node.inputs[i];
    node.spans[i] = {s->record->data, s->record->size.load(std::memory_order_relaxed)};
    node.input_deltas[i] =
        s->changed_wave.load(std::memory_order_acquire) == wave ? s->delta.load(std::memory_order_relaxed) : nullptr;
  }
  PageRecord* out = node.out_slot->record;
  IncrementalContext ctx{node.spans, node.input_deltas, {out->data, out->size.load(std::memory_order_relaxed)},
                         node.output, /*recompute=*/stale};
  node.incremental(ctx, d);
  return publish(node, d, /*diff_against_scratch=*/false);
}

void Propagator::Impl::add_tally(const Tally& t) {
  if (t.recomputed) counters.recomputed.fetch_add(t.recomputed, std::memory_order_relaxed);
  if (t.skipped) counters.skipped.fetch_add(t.skipped, std::memory_order_relaxed);
  if (t.cut_off) counters.cut_off.fetch_add(t.cut_off, std::memory_order_relaxed);
  if (t.failed) counters.failed.fetch_add(t.failed, std::memory_order_relaxed);
  if (t.bytes) counters.bytes.fetch_add(t.bytes, std::memory_order_relaxed);
}

void Propagator::Impl::run_node(Node& node, std::uint64_t wave, Tally& tally) {
  if (cancelled.load(std::memory_order_acquire)) return;
  const bool stale = node.stale.load(std::memory_order_relaxed);
  bool input_changed = false;
  for (Slot* s : node.inputs) {
    if (s->changed_wave.load(std::memory_order_acquire) == wave) {
      input_changed = true;
      break;
    }
  }
  if (!input_changed && !stale) {
    ++tally.skipped;
    node.completed_wave.store(wave, std::memory_order_relaxed);
    if (tally.wanted & event_bit(EventKind::NodeSkipped)) [[unlikely]]
      emit(Event{EventKind::NodeSkipped, node.output, 0, 0, wave, 0, {}});
    return;
  }
  const bool timed = tally.runs++ % kSampleHopsEvery == 0;
  const std::uint64_t started = timed ? steady_ns() : 0;
  bool changed = false;
  try {
    switch (node.kind) {
      case NodeKind::Map:
        changed = compute_map(node);
        break;
      case NodeKind::Passthrough:
        changed = compute_passthrough(node, wave, stale);
        break;
      case NodeKind::Incremental:
        changed = compute_incremental(node, wave, stale);
        break;
    }
  } catch (...) {
    ++tally.failed;
    if (tally.wanted & event_bit(EventKind::NodeFailed)) {
      emit(Event{EventKind::NodeFailed, node.output, 0, 0, wave, 0, describe(std::current_exception())});
    }
    record_failure(node, std::current_exception());
    return;
  }
  if (timed) hop_latency.record(steady_ns() - started);
  node.stale.store(false, std::memory_order_relaxed);
  node.completed_wave.store(wave, std::memory_order_relaxed);
  if (changed) {
    ++tally.recomputed;
    tally.bytes += node.out_delta.payload.size();
    constexpr std::uint32_t kChangeEvents = event_bit(EventKind::PageChanged) | event_bit(EventKind::PageResized);
    if ((tally.wanted & kChangeEvents) || node.out_slot->subscribers.load(std::memory_order_relaxed) > 0) [[unlikely]] {
      note_change(node.out_slot, node.out_delta, node.out_delta.target_epoch(), wave);
    }
    if (tally.wanted & event_bit(EventKind::NodeRecomputed)) [[unlikely]]
      emit(Event{EventKind::NodeRecomputed, node.output, 0, 0, wave, 0, {}});
    node.out_slot->delta.store(&node.out_delta, std::memory_order_relaxed);
    node.out_slot->changed_wave.store(wave, std::memory_order_release);
  } else {
    ++tally.cut_off;
    if (tally.wanted & event_bit(EventKind::NodeCutOff)) [[unlikely]]
      emit(Event{EventKind::NodeCutOff, node.output, 0, 0, wave, 0, {}});
  }
}

std::string Propagator::Impl::describe(std::exception_ptr error) {
  try {
    std::rethrow_exception(error);
  } catch (const std::exception& e) {
    return e.what();
  } catch (...) {
    return "unknown exception";
  }
}

[[noreturn]] void Propagator::Impl::throw_node_error(PageId page, std::exception_ptr error) {
  throw NodeError(page, describe(error), error);
}

void Propagator::Impl::run_wave(const std::vector<std::pair<PageId, const Delta*>>& changes,
                                const std::shared_ptr<const void>& owner) {
  ensure_order();
  const std::uint64_t wave = wave_number.load(std::memory_order_relaxed) + 1;
  affected_positions.clear();
  bool single_chain = true;  // whether every reached node is in one fused chain (then it runs inline)
  auto reach = [&](std::uint32_t position) {
    if (reached_mark[position] == wave) return;
    reached_mark[position] = wave;
    if (!affected_positions.empty() && chain_of[position] != chain_of[affected_positions.front()]) {
      single_chain = false;
    }
    affected_positions.push_back(position);  // doubles as the breadth-first queue
  };
  for (const auto& [page, delta] : changes) {
    auto it = slots.find(page);
    if (it == slots.end()) continue;
    it->second->delta.store(delta, std::memory_order_relaxed);
    it->second->changed_wave.store(wave, std::memory_order_relaxed);
    if (wants(EventKind::PageChanged) || wants(EventKind::PageResized) ||
        it->second->subscribers.load(std::memory_order_relaxed) > 0) {
      note_change(it->second.get(), *delta, delta->target_epoch(), wave, owner);
    }
    for (Node* reader : it->second->readers) reach(static_cast<std::uint32_t>(reader->topo));
  }
  for (Node* node : stale_nodes) reach(static_cast<std::uint32_t>(node->topo));
  for (std::size_t k = 0; k < affected_positions.size(); ++k) {
    const std::uint32_t position = affected_positions[k];
    for (std::uint32_t e = successor_offsets[position]; e < successor_offsets[position + 1]; ++e)
      reach(successor_targets[e]);
  }
  // Topological order: breadth-first discovery along a chain already is; sort only when it is not.
  if (!std::is_sorted(affected_positions.begin(), affected_positions.end())) {
    std::sort(affected_positions.begin(), affected_positions.end());
  }
  affected.clear();
  for (std::uint32_t position : affected_positions) affected.push_back(topo_nodes[position]);
  if (affected.empty()) {
    // The wave number still advances: the slots marked above must not look changed in the next wave.
    wave_number.store(wave, std::memory_order_release);
    return;
  }

  const std::uint64_t started = steady_ns();
  if (wants(EventKind::WaveBegin)) emit(Event{EventKind::WaveBegin, PageId(), 0, 0, wave, 0, {}});
  counters.waves.fetch_add(1, std::memory_order_relaxed);
  cancelled.store(false, std::memory_order_relaxed);
  {
    std::lock_guard lock(failure_mutex);
    failure = nullptr;
  }
  // Inline when the wave is small, when there is one worker, or when all of it is one fused chain: a chain is
  // sequential, so handing it to a worker would only add latency.
  const bool run_inline = single_chain || affected.size() <= options.inline_node_limit || arena.max_concurrency() == 1;
  if (!run_inline) ensure_flow_plan();
  wave_number.store(wave, std::memory_order_release);  // publishes everything above to the tasks
  if (run_inline) {
    counters.inline_waves.fetch_add(1, std::memory_order_relaxed);
    Tally tally;
    tally.wanted = wanted_events.load(std::memory_order_relaxed);
    for (Node* node : affected) run_node(*node, wave, tally);
    add_tally(tally);
  } else {
    for (Node* node : affected) node->reached_wave.store(wave, std::memory_order_relaxed);  // the tasks' filter
    run_flow_plan();
    tasks_done.load(std::memory_order_acquire);  // pairs with each task's final increment
  }
  stale_nodes.clear();
  for (Node* node : affected) {
    if (node->completed_wave.load(std::memory_order_relaxed) != wave)
      node->stale.store(true, std::memory_order_relaxed);
    if (node->stale.load(std::memory_order_relaxed)) stale_nodes.push_back(node);
  }
  const std::uint64_t duration = steady_ns() - started;
  wave_latency.record(duration);
  if (wants(EventKind::WaveEnd)) emit(Event{EventKind::WaveEnd, PageId(), 0, 0, wave, duration, {}});
  notify_waiters();
  std::exception_ptr error;
  PageId page;
  {
    std::lock_guard lock(failure_mutex);
    error = failure;
    page = failed_page;
  }
  if (error) {
    if (wants(EventKind::Error)) emit(Event{EventKind::Error, page, 0, 0, wave, 0, describe(error)});
    throw_node_error(page, error);
  }
}

}  // namespace mmsb
