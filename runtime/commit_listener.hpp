// runtime/commit_listener.hpp — how the propagation engine hears about commits (internal).
//
// The runtime does not know about the dependency graph; it calls this interface, which graph/ implements, at
// three points of every commit:
//   reserve()      before the commit locks its pages; may block (bounded queue full) or throw to refuse the
//                  commit, which then leaves no trace. Every successful reserve() is followed by exactly one of
//                  published() or release().
//   published()    after the commit applied its deltas, while it still holds its pages' locks, so commits that
//                  touch the same page reach the listener in LSN order. Must be quick.
//   after_commit() on the committing thread after the locks are released, with the commit's LSN; may run
//                  propagation and throw its error, which must then carry that LSN (an Error whose
//                  committed_lsn() is `lsn`, e.g. NodeError): the commit itself has succeeded by then.
// Page creation and deletion are reported after they took effect, outside every lock (page_created,
// page_deleted); these must not throw.
//
// Thread-safety: all three are called concurrently from committing threads.
#pragma once

#include <cstdint>
#include <span>

#include "mmsb/delta.hpp"
#include "mmsb/page_id.hpp"

namespace mmsb::detail {

class CommitListener {
 public:
  virtual ~CommitListener() = default;
  virtual void reserve() = 0;
  virtual void release() noexcept = 0;
  virtual void published(std::uint64_t lsn, std::span<const Delta> deltas) noexcept = 0;
  virtual void after_commit(std::uint64_t lsn) = 0;
  virtual void page_created(PageId /*page*/) noexcept {}
  virtual void page_deleted(PageId /*page*/) noexcept {}
};

}  // namespace mmsb::detail
