// mmsb/mmsb.hpp — the umbrella header: include this to use mmsb.
//
//   #include <mmsb/mmsb.hpp>
//   mmsb::Runtime rt;
//   auto page = rt.create_page(4096);
//   auto txn = rt.begin(); txn.write_value<double>(page, 0, 1.5); txn.commit();
//
// What each header holds:
//   mmsb/error.hpp    mmsb::Error and ErrorCode
//   mmsb/page_id.hpp  PageId
//   mmsb/delta.hpp    Delta, diff, apply, compose, invert
//   mmsb/runtime.hpp  Runtime, Transaction, ReadView, CommitSink
//   mmsb/graph.hpp    Propagator: derived pages, waves, modes
//   mmsb/event.hpp    Event, EventKind, EventMask: what observers receive
//   mmsb/topology.hpp the graph as plain values (node descriptions, edge kinds), as checkpoints store it
//   mmsb/gpu.hpp      GpuMirror: device pages on Vulkan, compute-shader device nodes, CPU fallback
//   mmsb/fwd.hpp      forward declarations, for headers that only pass these types around
//   mmsb/version.hpp  MMSB_VERSION_* macros and library_version()
//   mmsb/log.hpp      set_log_sink(), set_log_level(): where mmsb's log messages go
//   mmsb/typed_view.hpp  checked views of page bytes as arrays of T (used by the typed accessors)
#pragma once

#include "mmsb/delta.hpp"
#include "mmsb/durable.hpp"
#include "mmsb/error.hpp"
#include "mmsb/fwd.hpp"
#include "mmsb/gpu.hpp"
#include "mmsb/graph.hpp"
#include "mmsb/log.hpp"
#include "mmsb/page_id.hpp"
#include "mmsb/runtime.hpp"
#include "mmsb/version.hpp"
