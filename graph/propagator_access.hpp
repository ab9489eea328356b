// graph/propagator_access.hpp — what durable/ needs of a Propagator beyond its public API (internal).
//
// Thread-safety: as the Propagator's members; settle() takes the engine lock like a wave does.
#pragma once

#include "mmsb/graph.hpp"

namespace mmsb::detail {

struct PropagatorAccess {
  // Runs the waves of every commit queued so far (in any mode, as propagate() would) and of the stale nodes, on
  // the calling thread, without calling observers: their events and page changes wait for deliver_pending(). A
  // checkpoint calls it with the commit gate closed, so that derived pages reflect exactly the checkpoint's LSN;
  // an observer that commits would wait for that gate. Rethrows a failed wave's NodeError.
  static void settle(Propagator& propagator);
  // Calls the observers for what earlier waves produced (outside every engine lock).
  static void deliver_pending(Propagator& propagator);
};

}  // namespace mmsb::detail
