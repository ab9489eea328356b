// api/c_api.cpp — the C ABI (mmsb/mmsb.h) over the C++ API: handles own C++ objects; every entry point turns
// exceptions into an mmsb_status and a thread-local message.
#include "mmsb/mmsb.h"

#include <exception>
#include <memory>
#include <new>
#include <optional>
#include <string>
#include <vector>

#include "mmsb/durable.hpp"
#include "mmsb/mmsb.hpp"

struct mmsb_runtime {
  std::unique_ptr<mmsb::DurableRuntime> durable;  // set for mmsb_runtime_open
  std::unique_ptr<mmsb::Runtime> memory;          // set for mmsb_runtime_create
  std::unique_ptr<mmsb::Propagator> memory_propagator;

  mmsb::Runtime& runtime() { return durable ? durable->runtime() : *memory; }
  mmsb::Propagator& propagator() { return durable ? durable->propagator() : *memory_propagator; }
};

struct mmsb_txn {
  explicit mmsb_txn(mmsb::Transaction t) : txn(std::move(t)) {}
  mmsb::Transaction txn;
};

namespace {

thread_local std::string last_error;
thread_local std::uint64_t committed_lsn = 0;  // Error::committed_lsn() of the last failure (NodeFailed)

mmsb_status status_of(mmsb::ErrorCode code) {
  switch (code) {
    case mmsb::ErrorCode::InvalidArgument:
      return MMSB_INVALID_ARGUMENT;
    case mmsb::ErrorCode::NotFound:
      return MMSB_NOT_FOUND;
    case mmsb::ErrorCode::Corruption:
      return MMSB_CORRUPTION;
    case mmsb::ErrorCode::IoError:
      return MMSB_IO_ERROR;
    case mmsb::ErrorCode::Unsupported:
      return MMSB_UNSUPPORTED;
    case mmsb::ErrorCode::ResourceExhausted:
      return MMSB_RESOURCE_EXHAUSTED;
    case mmsb::ErrorCode::Aborted:
      return MMSB_ABORTED;
    case mmsb::ErrorCode::Conflict:
      return MMSB_CONFLICT;
    case mmsb::ErrorCode::NodeFailed:
      return MMSB_NODE_FAILED;
    case mmsb::ErrorCode::Internal:
      break;
  }
  return MMSB_INTERNAL;
}

mmsb_status fail(mmsb_status status, std::string message) {
  last_error = std::move(message);
  return status;
}

// Runs `body`; maps whatever it throws to a status and the thread's last error.
template <class Body>
mmsb_status guarded(Body&& body) noexcept {
  try {
    body();
    return MMSB_OK;
  } catch (const mmsb::Error& e) {
    committed_lsn = e.committed_lsn();
    return fail(status_of(e.code()), e.what());
  } catch (const std::bad_alloc&) {
    return fail(MMSB_RESOURCE_EXHAUSTED, "out of memory");
  } catch (const std::exception& e) {
    return fail(MMSB_INTERNAL, e.what());
  } catch (...) {
    return fail(MMSB_INTERNAL, "unknown exception");
  }
}

mmsb_status null_argument(const char* what) { return fail(MMSB_INVALID_ARGUMENT, std::string(what) + " is NULL"); }

}  // namespace

extern "C" {

const char* mmsb_last_error(void) { return last_error.c_str(); }

const char* mmsb_version(void) { return mmsb::library_version(); }

const char* mmsb_status_name(mmsb_status status) {
  if (status == MMSB_OK) return "ok";
  if (status < MMSB_INVALID_ARGUMENT || status > MMSB_NODE_FAILED) return "unknown";
  return mmsb::error_code_name(static_cast<mmsb::ErrorCode>(status)).data();  // names are literals: NUL-terminated
}

mmsb_status mmsb_runtime_create(mmsb_runtime** out) {
  if (!out) return null_argument("out");
  *out = nullptr;
  return guarded([&] {
    auto rt = std::make_unique<mmsb_runtime>();
    rt->memory = std::make_unique<mmsb::Runtime>();
    rt->memory_propagator = std::make_unique<mmsb::Propagator>(*rt->memory);
    *out = rt.release();
  });
}

mmsb_status mmsb_runtime_open(const char* dir, mmsb_runtime** out, uint64_t* recovered_lsn) {
  if (!dir) return null_argument("dir");
  if (!out) return null_argument("out");
  *out = nullptr;
  return guarded([&] {
    auto rt = std::make_unique<mmsb_runtime>();
    rt->durable = std::make_unique<mmsb::DurableRuntime>(dir);
    if (recovered_lsn) *recovered_lsn = rt->durable->recovery().last_lsn;
    *out = rt.release();
  });
}

mmsb_status mmsb_runtime_checkpoint(mmsb_runtime* rt) {
  if (!rt) return null_argument("rt");
  if (!rt->durable) return fail(MMSB_UNSUPPORTED, "checkpoints need a durable runtime (mmsb_runtime_open)");
  return guarded([&] { rt->durable->checkpoint(); });
}

void mmsb_runtime_destroy(mmsb_runtime* rt) {
  if (!rt) return;
  rt->memory_propagator.reset();  // before its runtime
  delete rt;
}

mmsb_status mmsb_page_create(mmsb_runtime* rt, uint64_t size, mmsb_page_id* out) {
  if (!rt) return null_argument("rt");
  if (!out) return null_argument("out");
  return guarded([&] { *out = rt->runtime().create_page(size).value(); });
}

mmsb_status mmsb_page_create_named(mmsb_runtime* rt, const char* name, uint64_t size, mmsb_page_id* out) {
  if (!rt) return null_argument("rt");
  if (!name) return null_argument("name");
  if (!out) return null_argument("out");
  return guarded([&] { *out = rt->runtime().create_page(std::string_view(name), size).value(); });
}

mmsb_status mmsb_page_open(mmsb_runtime* rt, const char* name, uint64_t size, mmsb_page_id* out) {
  if (!rt) return null_argument("rt");
  if (!name) return null_argument("name");
  if (!out) return null_argument("out");
  return guarded([&] { *out = rt->runtime().open_page(name, size).value(); });
}

mmsb_status mmsb_page_find(mmsb_runtime* rt, const char* name, mmsb_page_id* out) {
  if (!rt) return null_argument("rt");
  if (!name) return null_argument("name");
  if (!out) return null_argument("out");
  return guarded([&] {
    std::optional<mmsb::PageId> id = rt->runtime().find(name);
    if (!id) throw mmsb::Error(mmsb::ErrorCode::NotFound, "no page is named '" + std::string(name) + "'");
    *out = id->value();
  });
}

mmsb_status mmsb_page_delete(mmsb_runtime* rt, mmsb_page_id page) {
  if (!rt) return null_argument("rt");
  return guarded([&] { rt->runtime().delete_page(mmsb::PageId(page)); });
}

mmsb_status mmsb_page_info(mmsb_runtime* rt, mmsb_page_id page, uint64_t* size, uint64_t* epoch) {
  if (!rt) return null_argument("rt");
  return guarded([&] {
    mmsb::PageInfo info = rt->runtime().info(mmsb::PageId(page));
    if (size) *size = info.size;
    if (epoch) *epoch = info.epoch;
  });
}

mmsb_status mmsb_page_read(mmsb_runtime* rt, mmsb_page_id page, uint64_t offset, void* out, uint64_t length) {
  if (!rt) return null_argument("rt");
  if (!out && length > 0) return null_argument("out");
  return guarded([&] {
    rt->runtime().read(mmsb::PageId(page), offset, std::span<std::byte>(static_cast<std::byte*>(out), length));
  });
}

mmsb_status mmsb_txn_begin(mmsb_runtime* rt, mmsb_txn** out) {
  if (!rt) return null_argument("rt");
  if (!out) return null_argument("out");
  *out = nullptr;
  return guarded([&] { *out = new mmsb_txn(rt->runtime().begin()); });
}

mmsb_status mmsb_txn_write(mmsb_txn* txn, mmsb_page_id page, uint64_t offset, const void* bytes, uint64_t length) {
  if (!txn) return null_argument("txn");
  if (!bytes && length > 0) return null_argument("bytes");
  return guarded([&] {
    txn->txn.write(mmsb::PageId(page), offset,
                   std::span<const std::byte>(static_cast<const std::byte*>(bytes), length));
  });
}

mmsb_status mmsb_txn_commit(mmsb_txn* txn, uint64_t* lsn) {
  if (!txn) return null_argument("txn");
  std::unique_ptr<mmsb_txn> owned(txn);
  if (lsn) *lsn = 0;
  const mmsb_status status = guarded([&] {
    const std::uint64_t committed = owned->txn.commit();
    if (lsn) *lsn = committed;
  });
  if (status == MMSB_NODE_FAILED && lsn) *lsn = committed_lsn;  // committed, but the wave after it failed
  return status;
}

void mmsb_txn_abort(mmsb_txn* txn) { delete txn; }

mmsb_status mmsb_txn_read(mmsb_txn* txn, mmsb_page_id page, uint64_t offset, void* out, uint64_t length) {
  if (!txn) return null_argument("txn");
  if (!out && length > 0) return null_argument("out");
  return guarded(
      [&] { txn->txn.read(mmsb::PageId(page), offset, std::span<std::byte>(static_cast<std::byte*>(out), length)); });
}

mmsb_status mmsb_transact(mmsb_runtime* rt, mmsb_txn_fn fn, void* user, unsigned max_attempts, uint64_t* lsn) {
  if (!rt) return null_argument("rt");
  if (!fn) return null_argument("fn");
  if (lsn) *lsn = 0;
  const mmsb_status status = guarded([&] {
    const std::uint64_t committed = rt->runtime().transact(
        [&](mmsb::Transaction& txn) {
          mmsb_txn handle(std::move(txn));
          const mmsb_status body = fn(user, &handle);
          txn = std::move(handle.txn);
          if (body == MMSB_OK) return;
          // Hand the body's status on as the error it stands for: Conflict is retried, everything else aborts.
          const bool known = body >= MMSB_INVALID_ARGUMENT && body <= MMSB_NODE_FAILED;
          throw mmsb::Error(known ? static_cast<mmsb::ErrorCode>(body) : mmsb::ErrorCode::Aborted,
                            std::string("the transaction body returned ") + mmsb_status_name(body) + " (" +
                                std::to_string(static_cast<int>(body)) + ")");
        },
        max_attempts);
    if (lsn) *lsn = committed;
  });
  if (status == MMSB_NODE_FAILED && lsn) *lsn = committed_lsn;
  return status;
}

mmsb_status mmsb_derive_map(mmsb_runtime* rt, mmsb_page_id output, const mmsb_page_id* inputs, size_t input_count,
                            mmsb_map_fn fn, void* user) {
  if (!rt) return null_argument("rt");
  if (!fn) return null_argument("fn");
  if (!inputs && input_count > 0) return null_argument("inputs");
  return guarded([&] {
    std::vector<mmsb::PageId> ids;
    for (size_t i = 0; i < input_count; ++i) ids.push_back(mmsb::PageId(inputs[i]));
    rt->propagator().derive_map(mmsb::PageId(output), std::move(ids), [fn, user](mmsb::MapContext& c) {
      std::vector<mmsb_input> in(c.input_count());
      for (std::size_t i = 0; i < in.size(); ++i) in[i] = {c.input(i).data(), c.input(i).size()};
      const int rc = fn(user, in.data(), in.size(), c.output().data(), c.output().size());
      if (rc != 0) {
        throw mmsb::Error(mmsb::ErrorCode::Aborted, "the C callback returned " + std::to_string(rc));
      }
    });
  });
}

mmsb_status mmsb_add_dependency(mmsb_runtime* rt, mmsb_page_id from, mmsb_page_id to) {
  if (!rt) return null_argument("rt");
  return guarded(
      [&] { rt->propagator().add_dependency(mmsb::PageId(from), mmsb::PageId(to), mmsb::EdgeKind::Control); });
}

mmsb_status mmsb_recompute(mmsb_runtime* rt, mmsb_page_id output) {
  if (!rt) return null_argument("rt");
  return guarded([&] { rt->propagator().recompute(mmsb::PageId(output)); });
}

mmsb_status mmsb_propagate(mmsb_runtime* rt) {
  if (!rt) return null_argument("rt");
  return guarded([&] { rt->propagator().propagate(); });
}

}  // extern "C"
