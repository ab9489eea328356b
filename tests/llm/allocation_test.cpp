// The engine's own code allocates nothing per decoding step once warmed up: its nodes own their scratch, their
// deltas keep their capacity, and the runtime pools transaction state. Counted by replacing the global operator
// new in this binary. What remains is inside the propagator: in IMMEDIATE mode, Propagator::Impl::published()
// copies each committed delta into a fresh PendingCommit (4 allocations per commit: the vector, the delta's ranges,
// payload and undo storage; its queue now and then grows a block). Until that path reuses its buffers the bound
// is 5 per step; a regression in the engine shows as more.
#include <gtest/gtest.h>

#include <atomic>
#include <cstdlib>
#include <new>

#include "llm/llm_test_support.hpp"
#include "mmsb/llm/engine.hpp"
#include "mmsb/llm/model.hpp"
#include "mmsb/llm/sampler.hpp"

namespace {
std::atomic<bool> counting{false};
std::atomic<long> allocations{0};
}  // namespace

// The replacements pair malloc with free by design; GCC cannot see that operator new is replaced too.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmismatched-new-delete"
void* operator new(std::size_t n) {
  if (counting.load(std::memory_order_relaxed)) allocations.fetch_add(1, std::memory_order_relaxed);
  if (void* p = std::malloc(n ? n : 1)) return p;
  throw std::bad_alloc();
}
void operator delete(void* p) noexcept { std::free(p); }
void operator delete(void* p, std::size_t) noexcept { std::free(p); }
#pragma GCC diagnostic pop

namespace mmsb::llm {
namespace {

TEST(Engine, StepsAllocateOnlyInThePropagatorsCommitQueue) {
  MMSB_REQUIRE_SHARED(model_path, "models/stories260K-Q4_0.gguf");
  Model model = load_model(model_path);
  Engine engine(model);
  int token = 1;
  for (int pos = 0; pos < 4; ++pos) token = argmax(engine.step(token, pos));
  counting = true;
  for (int pos = 4; pos < 64; ++pos) token = argmax(engine.step(token, pos));
  counting = false;
  EXPECT_LE(allocations.load(), 5 * 60) << "allocations in 60 decoding steps";
}

}  // namespace
}  // namespace mmsb::llm
