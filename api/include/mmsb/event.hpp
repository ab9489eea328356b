// mmsb/event.hpp — the events observers receive (Propagator::subscribe_events), as plain values.
//
// They live apart from mmsb/graph.hpp so that the wire format (serialize/, mmsb.wire.Event) can carry them without
// depending on the propagation engine.
//
// Thread-safety: plain values; event_kind_name() is reentrant.
#pragma once

#include <cstdint>
#include <initializer_list>
#include <string>

#include "mmsb/page_id.hpp"

namespace mmsb {

// What observers can subscribe to. Checkpoint is raised by DurableRuntime::checkpoint() (mmsb/durable.hpp).
enum class EventKind : std::uint8_t {
  PageCreated = 0,
  PageDeleted,
  PageResized,
  PageChanged,     // a committed or derived change of a page (page, epoch, wave)
  Commit,          // one per commit that touched a watched page (lsn)
  WaveBegin,       // (wave)
  WaveEnd,         // (wave, duration_ns)
  NodeRecomputed,  // a node ran and changed its output (page, wave)
  NodeSkipped,     // a node was reached but none of its inputs changed (page, wave)
  NodeCutOff,      // a node ran and its output did not change (page, wave)
  NodeFailed,      // a node threw (page, wave, message)
  Checkpoint,      // a durable checkpoint was written (lsn it covers, duration_ns, message: the file)
  Error,           // a wave failed (page of the failing node, message)
};
const char* event_kind_name(EventKind kind) noexcept;  // "page_created", "wave_end", ...

// A set of EventKinds: EventMask{EventKind::WaveEnd, EventKind::NodeFailed}, or EventMask::all().
class EventMask {
 public:
  constexpr EventMask() = default;
  constexpr EventMask(std::initializer_list<EventKind> kinds) {
    for (EventKind k : kinds) bits_ |= bit(k);
  }
  static constexpr EventMask all() { return EventMask(~std::uint32_t{0}); }
  constexpr bool contains(EventKind k) const noexcept { return (bits_ & bit(k)) != 0; }
  constexpr std::uint32_t bits() const noexcept { return bits_; }

 private:
  constexpr explicit EventMask(std::uint32_t bits) : bits_(bits) {}
  static constexpr std::uint32_t bit(EventKind k) { return std::uint32_t{1} << static_cast<unsigned>(k); }
  std::uint32_t bits_ = 0;
};

struct Event {
  EventKind kind = EventKind::WaveEnd;
  PageId page;                    // the page concerned, if any
  std::uint64_t lsn = 0;          // Commit
  std::uint64_t epoch = 0;        // PageChanged, PageResized: the page's new epoch
  std::uint64_t wave = 0;         // wave events and node events
  std::uint64_t duration_ns = 0;  // WaveEnd
  std::string message;            // NodeFailed, Error
};

}  // namespace mmsb
