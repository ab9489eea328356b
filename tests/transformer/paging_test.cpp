// Layer paging on the engine (paged_model.hpp): every budget from the smallest feasible one to the whole model
// gives the fully resident engine's tokens and logits bit for bit, with and without prefetch; a budget below two
// layers is refused with a message naming the minimum; the synchronous loads of a scripted run are exact.
#include <gtest/gtest.h>

#include <sys/wait.h>

#include <cstdio>
#include <cstring>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "examples/transformer/engine.hpp"
#include "examples/transformer/model.hpp"
#include "examples/transformer/paged_model.hpp"
#include "examples/transformer/sampler.hpp"
#include "mmsb/error.hpp"
#include "transformer/llm_test_support.hpp"

namespace mmsb::llm {
namespace {

constexpr int kPrompt = 3;  // prefill steps (no logits), then generated steps
constexpr int kGenerated = 24;

struct Generation {
  std::vector<int> tokens;
  std::vector<float> logits;  // of every generated step, concatenated
  PagerStats stats;
};

Generation run(const Model& model, std::optional<PagingOptions> paging) {
  EngineOptions options;
  options.paging = std::move(paging);
  Engine engine(model, options);
  Generation r;
  int token = 1;
  for (int pos = 0; pos < kPrompt; ++pos) {
    engine.prefill_step(token, pos);
    token = 10 + 7 * pos;  // fixed prompt ids
  }
  for (int i = 0; i < kGenerated; ++i) {
    std::span<const float> logits = engine.step(token, kPrompt + i);
    r.logits.insert(r.logits.end(), logits.begin(), logits.end());
    token = argmax(logits);
    r.tokens.push_back(token);
  }
  if (engine.paged()) {
    engine.paged()->pager().wait_prefetches();
    r.stats = engine.paged()->pager().stats();
  }
  return r;
}

PagingOptions paging(std::uint64_t budget, bool prefetch, bool inline_prefetch = false) {
  PagingOptions p;
  p.budget = budget;
  p.prefetch = prefetch;
  // Inline: the prefetch task runs inside prefetch(), so every prefetch is complete before the next pin and the
  // counters do not depend on timing.
  if (inline_prefetch) p.executor = [](std::function<void()> task) { task(); };
  return p;
}

TEST(Paging, UnitSizesFollowTheTensorShapes) {
  MMSB_REQUIRE_SHARED(gguf_path, "models/stories260K-f32.gguf");
  MMSB_REQUIRE_SHARED(bin_path, "models/stories260K.bin");
  // dim 64, hidden 172, 8 heads of which 4 key/value heads (kv_dim 32), vocab 512, f32:
  //   embedding 512·64·4 = 131072; a layer 2·64·4 (norms) + 2·64·64·4 (wq, wo) + 2·32·64·4 (wk, wv)
  //   + 3·172·64·4 (w1, w2, w3) = 181760; the GGUF's separate classifier with the final norm 131072 + 256.
  // Every tensor size is a multiple of 64, and the GGUF keeps a layer's tensors back to back.
  const Model gguf = load_model(gguf_path);
  std::vector<std::uint64_t> expected{131072, 181760, 181760, 181760, 181760, 181760, 131328};
  EXPECT_EQ(PagedModel::unit_sizes(gguf), expected);
  EXPECT_EQ(PagedModel::model_bytes(gguf), 1171200u);
  EXPECT_EQ(PagedModel::minimum_budget(gguf), 2u * 181760u);
  // The llama2.c checkpoint shares the classifier with the embedding: unit 0 is the embedding and the final norm.
  const Model bin = load_model(bin_path);
  expected = {131328, 181760, 181760, 181760, 181760, 181760};
  EXPECT_EQ(PagedModel::unit_sizes(bin), expected);
  EXPECT_EQ(PagedModel::model_bytes(bin), 1040128u);
}

TEST(Paging, EveryBudgetGivesTheResidentTokensAndLogitsBitForBit) {
  for (const char* file : {"models/stories260K-f32.gguf", "models/stories260K.bin", "models/stories260K-Q8_0.gguf",
                           "models/stories260K-Q4_0.gguf"}) {
    MMSB_REQUIRE_SHARED(path, file);
    const Model model = load_model(path);
    const Generation resident = run(model, std::nullopt);
    const std::uint64_t minimum = PagedModel::minimum_budget(model), all = PagedModel::model_bytes(model);
    ASSERT_LT(minimum, all) << file;
    std::vector<std::uint64_t> budgets{minimum, minimum + 1, minimum + 65536};
    for (int i = 1; i < 8; ++i) budgets.push_back(minimum + (all - minimum) * i / 8);
    budgets.insert(budgets.end(), {all / 2, all - 1, all, all + (1u << 20)});
    for (std::uint64_t budget : budgets) {
      if (budget < minimum) continue;  // half of a small quantized model can be below two layers
      for (int mode = 0; mode < 3; ++mode) {
        SCOPED_TRACE(std::string(file) + ", budget " + std::to_string(budget) + ", mode " + std::to_string(mode));
        const Generation paged = run(model, paging(budget, mode != 1, mode == 2));
        EXPECT_EQ(paged.tokens, resident.tokens);
        ASSERT_EQ(paged.logits.size(), resident.logits.size());
        EXPECT_EQ(0, std::memcmp(paged.logits.data(), resident.logits.data(), paged.logits.size() * sizeof(float)));
        const PagerStats& s = paged.stats;
        EXPECT_EQ(s.sync_loads + s.hits + s.waits, s.pins);
        EXPECT_LE(s.peak_held_bytes, budget);
        if (budget >= all) {
          EXPECT_EQ(s.evictions, 0u);
        }
        if (mode == 2) {
          EXPECT_EQ(s.sync_loads, 1u);  // only the very first unit: every later one was prefetched
        }
      }
    }
  }
}

TEST(Paging, RefusesABudgetBelowTwoLayersWithAMessageNamingTheMinimum) {
  MMSB_REQUIRE_SHARED(path, "models/stories260K-f32.gguf");
  const Model model = load_model(path);
  EngineOptions options;
  options.paging = paging(2 * 181760 - 1, true);
  try {
    Engine engine(model, options);
    FAIL() << "a budget one byte below two layers was accepted";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::InvalidArgument);
    EXPECT_NE(std::string(e.what()).find("minimum of 363520 bytes"), std::string::npos) << e.what();
  }
}

TEST(Paging, SynchronousLoadsOfAScriptedRunAreExact) {
  MMSB_REQUIRE_SHARED(path, "models/stories260K-f32.gguf");
  const Model model = load_model(path);
  // Units: E (embedding), L0..L4, H (final norm + classifier). A prompt step pins E, then each layer twice (its
  // kv node, then its block node), and no H; a generated step also pins H: 11 and 12 pins.
  const std::uint64_t pins = 11 * kPrompt + 12 * kGenerated;
  const std::uint64_t touched = 6 * kPrompt + 7 * kGenerated;  // distinct units per step, summed
  const std::uint64_t minimum = 2 * 181760;

  // Without prefetch, at the minimum: at most two units fit and every unit comes back only after five others, so
  // every first pin of a unit in a step loads it; the block node's pin finds the layer the kv node loaded.
  Generation r = run(model, paging(minimum, false));
  EXPECT_EQ(r.stats.pins, pins);
  EXPECT_EQ(r.stats.sync_loads, touched);
  EXPECT_EQ(r.stats.hits, pins - touched);
  EXPECT_EQ(r.stats.prefetches, 0u);
  // E and L0 fit beside each other; every later load evicts one unit.
  EXPECT_EQ(r.stats.evictions, touched - 2);
  EXPECT_EQ(r.stats.bytes_loaded, kPrompt * (131072 + 5 * 181760) + kGenerated * (131072 + 5 * 181760 + 131328));
  const std::uint64_t without = r.stats.sync_loads;

  // With prefetch (run inline, so it is always complete in time): only the first unit is loaded synchronously;
  // every other unit is prefetched by the pin before it, and the last step's H also prefetches the next step's E
  // (one more prefetch and eviction, never pinned).
  r = run(model, paging(minimum, true, /*inline_prefetch=*/true));
  EXPECT_EQ(r.stats.pins, pins);
  EXPECT_EQ(r.stats.sync_loads, 1u);
  EXPECT_EQ(r.stats.prefetches, touched);
  EXPECT_EQ(r.stats.prefetch_hits, touched - 1);
  EXPECT_EQ(r.stats.hits, pins - 1);
  EXPECT_EQ(r.stats.prefetches_dropped, 0u);
  EXPECT_EQ(r.stats.prefetches_unused, 0u);
  EXPECT_EQ(r.stats.prefetches_late, 0u);
  EXPECT_EQ(r.stats.evictions, touched - 1);
  EXPECT_EQ(r.stats.peak_held_bytes, minimum);
  EXPECT_LE(static_cast<double>(r.stats.sync_loads) / static_cast<double>(without), 0.1);

  // The whole model: each unit is loaded once.
  r = run(model, paging(PagedModel::model_bytes(model), false));
  EXPECT_EQ(r.stats.sync_loads, 7u);
  EXPECT_EQ(r.stats.evictions, 0u);
  EXPECT_EQ(r.stats.peak_held_bytes, PagedModel::model_bytes(model));
}

TEST(Paging, CommandLineGivesTheSameTextAndRefusesATooSmallBudget) {
  MMSB_REQUIRE_SHARED(path, "models/stories260K-f32.gguf");
  // Runs mmsb-llm; `stderr_too` keeps its error line in the output.
  auto run_cli = [&](const std::string& args, int& status, bool stderr_too = false) {
    testing::LlmRun r = testing::run_llm("-m " + path + " -p 'Once upon a time' -n 40 " + args, stderr_too);
    status = r.status;
    return r.out;
  };
  int status = -1;
  std::string resident = run_cli("", status);
  ASSERT_EQ(status, 0) << resident;
  for (const char* budget : {"50%", "363520", "400K", "100%"}) {
    std::string paged = run_cli(std::string("--mem-budget ") + budget, status);
    EXPECT_EQ(status, 0) << budget;
    EXPECT_EQ(paged, resident) << budget;
  }
  std::string paged = run_cli("--mem-budget 50% --no-prefetch", status);
  EXPECT_EQ(paged, resident);
  std::string refused = run_cli("--mem-budget 64K", status, true);
  EXPECT_EQ(status, 2);
  EXPECT_NE(refused.find("minimum of 363520 bytes"), std::string::npos) << refused;
  refused = run_cli("--mem-budget lots", status, true);
  EXPECT_EQ(status, 2);
  EXPECT_NE(refused.find("percentage of the model"), std::string::npos) << refused;
}

}  // namespace
}  // namespace mmsb::llm
