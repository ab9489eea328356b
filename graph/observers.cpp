// Observers and stats: subscriptions, events, delivery of what a wave produced (after it, outside the engine
// lock), and the counters with their JSON and Prometheus exports. See graph/engine.hpp for the engine's layout.
#include <nlohmann/json.hpp>

#include <memory>
#include <mutex>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "graph/engine.hpp"

namespace mmsb {

using detail::Node;
using detail::Slot;
using detail::Tally;

const char* event_kind_name(EventKind kind) noexcept {
  switch (kind) {
    case EventKind::PageCreated:
      return "page_created";
    case EventKind::PageDeleted:
      return "page_deleted";
    case EventKind::PageResized:
      return "page_resized";
    case EventKind::PageChanged:
      return "page_changed";
    case EventKind::Commit:
      return "commit";
    case EventKind::WaveBegin:
      return "wave_begin";
    case EventKind::WaveEnd:
      return "wave_end";
    case EventKind::NodeRecomputed:
      return "node_recomputed";
    case EventKind::NodeSkipped:
      return "node_skipped";
    case EventKind::NodeCutOff:
      return "node_cut_off";
    case EventKind::NodeFailed:
      return "node_failed";
    case EventKind::Checkpoint:
      return "checkpoint";
    case EventKind::Error:
      return "error";
  }
  return "unknown";
}

void Propagator::Impl::notify_waiters() {
  if (waiters.load(std::memory_order_acquire) == 0) return;
  { std::lock_guard lock(done_mutex); }  // orders this notification after a waiter's check
  wave_done.notify_all();
}

[[gnu::cold]] void Propagator::Impl::emit(Event event) {
  std::lock_guard lock(pending_mutex);
  pending_events.push_back(std::move(event));
}

// Calls the callbacks for everything the finished waves produced. Must run without the engine lock.
void Propagator::Impl::deliver() {
  std::vector<Event> events;
  std::vector<PageChange> changes;
  {
    std::lock_guard lock(pending_mutex);
    if (pending_events.empty() && pending_changes.empty()) return;
    events.swap(pending_events);
    changes.swap(pending_changes);
  }
  std::vector<std::string> failures;
  for (const PageChange& change : changes) {
    std::vector<std::shared_ptr<PageCallback>> callbacks;
    {
      std::lock_guard lock(observers_mutex);
      for (const auto& [id, sub] : page_subscriptions)
        if (sub.first == change.page) callbacks.push_back(sub.second);
    }
    for (const auto& cb : callbacks) {
      try {
        (*cb)(*change.delta, change.epoch);
      } catch (const std::exception& e) {
        failures.push_back(std::string("page observer of ") + change.page.to_string() + " threw: " + e.what());
      } catch (...) {
        failures.push_back("page observer of " + change.page.to_string() + " threw");
      }
    }
  }
  for (const std::string& f : failures) events.push_back(Event{EventKind::Error, PageId(), 0, 0, 0, 0, f});
  deliver_events(events, /*report_failures=*/true);
}

void Propagator::Impl::deliver_events(const std::vector<Event>& events, bool report_failures) {
  if (events.empty()) return;
  std::vector<std::pair<EventMask, std::shared_ptr<EventCallback>>> subscribers;
  {
    std::lock_guard lock(observers_mutex);
    for (const auto& [id, sub] : event_subscriptions) subscribers.push_back(sub);
  }
  std::vector<Event> failures;
  for (const Event& event : events) {
    for (const auto& [mask, cb] : subscribers) {
      if (!mask.contains(event.kind)) continue;
      try {
        (*cb)(event);
      } catch (const std::exception& e) {
        failures.push_back(
            Event{EventKind::Error, event.page, 0, 0, event.wave, 0,
                  std::string("event observer threw on ") + event_kind_name(event.kind) + ": " + e.what()});
      } catch (...) {
        failures.push_back(Event{EventKind::Error, event.page, 0, 0, event.wave, 0, "event observer threw"});
      }
    }
  }
  if (report_failures) deliver_events(failures, /*report_failures=*/false);  // once; a second throw is dropped
}

void Propagator::Impl::page_event(EventKind kind, PageId page) noexcept {
  if (!wants(kind)) return;
  try {
    deliver_events({Event{kind, page, 0, 0, 0, 0, {}}}, /*report_failures=*/true);
  } catch (...) {  // observers are best effort here
  }
}

void Propagator::Impl::note_change(Slot* slot, const Delta& d, std::uint64_t epoch, std::uint64_t wave,
                                   const std::shared_ptr<const void>& owner) {
  if (slot && slot->subscribers.load(std::memory_order_relaxed) > 0) {
    std::shared_ptr<const Delta> shared =
        owner ? std::shared_ptr<const Delta>(owner, &d) : std::make_shared<const Delta>(d);
    std::lock_guard lock(pending_mutex);
    pending_changes.push_back(PageChange{d.page, std::move(shared), epoch});
  }
  if (wants(EventKind::PageChanged)) emit(Event{EventKind::PageChanged, d.page, 0, epoch, wave, 0, {}});
  if (d.base_size != d.size && wants(EventKind::PageResized)) {
    emit(Event{EventKind::PageResized, d.page, 0, epoch, wave, 0, {}});
  }
}

void Propagator::Impl::refresh_wanted_events() {
  std::uint32_t bits = 0;
  for (const auto& [id, sub] : event_subscriptions) bits |= sub.first.bits();
  wanted_events.store(bits, std::memory_order_relaxed);
}

SubscriptionId Propagator::subscribe(PageId page, PageCallback callback) {
  if (!callback) throw Error(ErrorCode::InvalidArgument, "subscribe: the page callback is empty");
  Slot* slot = nullptr;
  {
    std::lock_guard lock(impl_->engine_mutex);
    slot = impl_->slot_for(page);  // makes the page's commits reach the engine even if no node reads it
  }
  std::lock_guard lock(impl_->observers_mutex);
  const SubscriptionId id = impl_->next_subscription++;
  impl_->page_subscriptions.emplace(id, std::make_pair(page, std::make_shared<PageCallback>(std::move(callback))));
  slot->subscribers.fetch_add(1, std::memory_order_relaxed);
  return id;
}

SubscriptionId Propagator::subscribe(EventMask kinds, EventCallback callback) {
  if (!callback) throw Error(ErrorCode::InvalidArgument, "subscribe: the event callback is empty");
  std::lock_guard lock(impl_->observers_mutex);
  const SubscriptionId id = impl_->next_subscription++;
  impl_->event_subscriptions.emplace(id, std::make_pair(kinds, std::make_shared<EventCallback>(std::move(callback))));
  impl_->refresh_wanted_events();
  return id;
}

bool Propagator::unsubscribe(SubscriptionId id) {
  PageId page;
  {
    std::lock_guard lock(impl_->observers_mutex);
    if (impl_->event_subscriptions.erase(id)) {
      impl_->refresh_wanted_events();
      return true;
    }
    auto it = impl_->page_subscriptions.find(id);
    if (it == impl_->page_subscriptions.end()) return false;
    page = it->second.first;
    impl_->page_subscriptions.erase(it);
  }
  std::lock_guard lock(impl_->engine_mutex);
  if (Slot* slot = impl_->slot_of(page)) slot->subscribers.fetch_sub(1, std::memory_order_relaxed);
  return true;
}

void Propagator::notify(const Event& event) { impl_->deliver_events({event}, /*report_failures=*/true); }

PropagationStats Propagator::stats() const {
  const auto& c = impl_->counters;
  PropagationStats s;
  s.waves = c.waves.load(std::memory_order_relaxed);
  s.nodes_recomputed = c.recomputed.load(std::memory_order_relaxed);
  s.nodes_skipped = c.skipped.load(std::memory_order_relaxed);
  s.nodes_cut_off = c.cut_off.load(std::memory_order_relaxed);
  s.nodes_failed = c.failed.load(std::memory_order_relaxed);
  s.inline_waves = c.inline_waves.load(std::memory_order_relaxed);
  s.plan_builds = c.plan_builds.load(std::memory_order_relaxed);
  // BATCH commits are counted as they drain; those not drained yet are the reserved places that no thread holds
  // unused in its block (a commit on its way in counts a moment early). Unused places are read first: a block
  // taken in between then counts too many for a moment, never too few.
  const bool batch = impl_->options.mode == PropagationMode::Batch;
  const std::size_t unused = batch ? impl_->unused_block_places() : 0;
  const std::size_t reserved = batch ? impl_->reserved.load(std::memory_order_relaxed) : 0;
  s.commits_queued = c.queued.load(std::memory_order_relaxed) + (reserved > unused ? reserved - unused : 0);
  s.deltas_composed = c.composed.load(std::memory_order_relaxed);
  s.bytes_changed = c.bytes.load(std::memory_order_relaxed);
  s.wave_latency = impl_->wave_latency.summary();
  s.hop_latency = impl_->hop_latency.summary();
  s.commit_latency = impl_->commit_latency.summary();
  return s;
}

namespace {

// (name, help, value) of each counter, shared by the JSON and Prometheus exports.
struct CounterField {
  const char* name;
  const char* help;
  std::uint64_t value;
};
std::vector<CounterField> counter_fields(const PropagationStats& s) {
  return {{"waves", "Waves run", s.waves},
          {"nodes_recomputed", "Nodes that ran and changed their output", s.nodes_recomputed},
          {"nodes_skipped", "Nodes reached by a wave whose inputs did not change", s.nodes_skipped},
          {"nodes_cut_off", "Nodes that ran and left their output unchanged", s.nodes_cut_off},
          {"nodes_failed", "Nodes that threw", s.nodes_failed},
          {"inline_waves", "Waves run on the calling thread", s.inline_waves},
          {"plan_builds", "Execution plans built (one per graph version that ran a wave)", s.plan_builds},
          {"commits_queued", "Commits that reached the propagation queue", s.commits_queued},
          {"deltas_composed", "Deltas folded into a pending delta of the same page (BATCH)", s.deltas_composed},
          {"bytes_changed", "Payload bytes of derived-page deltas published", s.bytes_changed}};
}

struct LatencyField {
  const char* name;
  const char* help;
  const LatencySummary* summary;
};
std::vector<LatencyField> latency_fields(const PropagationStats& s) {
  return {{"wave_latency", "Wave duration", &s.wave_latency},
          {"hop_latency", "Node run time (sampled)", &s.hop_latency},
          {"commit_latency", "Commit published to its wave finished (sampled)", &s.commit_latency}};
}

}  // namespace

std::string Propagator::stats_json() const {
  const PropagationStats s = stats();
  nlohmann::ordered_json out;
  for (const auto& f : counter_fields(s)) out[f.name] = f.value;
  for (const auto& f : latency_fields(s)) {
    out[f.name] = {{"count", f.summary->count},   {"mean_ns", f.summary->mean_ns}, {"p50_ns", f.summary->p50_ns},
                   {"p90_ns", f.summary->p90_ns}, {"p99_ns", f.summary->p99_ns},   {"max_ns", f.summary->max_ns}};
  }
  return out.dump(2);
}

std::string Propagator::stats_prometheus() const {
  const PropagationStats s = stats();
  std::ostringstream out;
  for (const auto& f : counter_fields(s)) {
    out << "# HELP mmsb_propagation_" << f.name << "_total " << f.help << ".\n"
        << "# TYPE mmsb_propagation_" << f.name << "_total counter\n"
        << "mmsb_propagation_" << f.name << "_total " << f.value << "\n";
  }
  for (const auto& f : latency_fields(s)) {
    const std::string name = std::string("mmsb_propagation_") + f.name + "_seconds";
    const LatencySummary& l = *f.summary;
    out << "# HELP " << name << " " << f.help << ".\n# TYPE " << name << " summary\n";
    const std::pair<const char*, std::uint64_t> quantiles[] = {
        {"0.5", l.p50_ns}, {"0.9", l.p90_ns}, {"0.99", l.p99_ns}};
    for (const auto& [q, ns] : quantiles) out << name << "{quantile=\"" << q << "\"} " << ns * 1e-9 << "\n";
    out << name << "_sum " << l.mean_ns * static_cast<double>(l.count) * 1e-9 << "\n"
        << name << "_count " << l.count << "\n";
  }
  return out.str();
}

}  // namespace mmsb
