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

#include "llm/llm_test_support.hpp"
#include "mmsb/error.hpp"
#include "mmsb/llm/engine.hpp"
#include "mmsb/llm/model.hpp"
#include "mmsb/llm/paged_model.hpp"
#include "mmsb/llm/sampler.hpp"

namespace mmsb::llm {
namespace {

constexpr int kPrompt = 3;  // prefill steps (no logits), then generated steps
constexpr int kGenerated = 24;

struct Generation {
  std::vector<int> tokens;
  std::vector<float> logits;  // of every generated step, concatenated
  PagerStats stats;
};

// The number of units resident in the pager now.
std::uint64_t resident_units(const LayerPager& pager) {
  std::uint64_t n = 0;
  for (std::size_t u = 0; u < pager.unit_count(); ++u) n += pager.resident(u) ? 1 : 0;
  return n;
}

// A fixed prompt, then greedy steps; with paging, the pager's counters (and the units resident at the end).
Generation run(const Model& model, std::optional<PagingOptions> paging, std::uint64_t* resident_at_end = nullptr) {
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
    if (resident_at_end) *resident_at_end = resident_units(engine.paged()->pager());
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
  //   embedding 512·64·4 = 131072; a layer's attention unit 64·4 (norm) + 2·64·64·4 (wq, wo) + 2·32·64·4 (wk, wv)
  //   = 49408, its feed-forward unit 64·4 (norm) + 3·172·64·4 (w1, w2, w3) = 132352; the GGUF's separate
  //   classifier with the final norm 131072 + 256. Every tensor size is a multiple of 64, and the GGUF keeps a
  //   unit's tensors back to back.
  const Model gguf = load_model(gguf_path);
  std::vector<std::uint64_t> expected{131072};
  for (int l = 0; l < 5; ++l) expected.insert(expected.end(), {49408, 132352});
  expected.push_back(131328);
  EXPECT_EQ(PagedModel::unit_sizes(gguf), expected);
  EXPECT_EQ(PagedModel::model_bytes(gguf), 1171200u);
  EXPECT_EQ(PagedModel::minimum_budget(gguf), 2u * 132352u);
  // The llama2.c checkpoint shares the classifier with the embedding: unit 0 is the embedding and the final norm.
  const Model bin = load_model(bin_path);
  expected.front() = 131328;
  expected.pop_back();
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
  options.paging = paging(2 * 132352 - 1, true);
  try {
    Engine engine(model, options);
    FAIL() << "a budget one byte below two layers was accepted";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::InvalidArgument);
    EXPECT_NE(std::string(e.what()).find("minimum of 264704 bytes"), std::string::npos) << e.what();
  }
}

TEST(Paging, SynchronousLoadsOfAScriptedRunAreExact) {
  MMSB_REQUIRE_SHARED(path, "models/stories260K-f32.gguf");
  const Model model = load_model(path);
  // Below the whole model the GGUF's embedding is read by rows (the classifier is a tensor of its own), so the
  // pager holds A0, F0, …, A4, F4 (attention and feed-forward units) and H (final norm + classifier). A prompt
  // step pins each layer's A twice (its kv node, then its block node) and F once, and no H; a generated step also
  // pins H: 15 and 16 pins.
  const std::uint64_t pins = 15 * kPrompt + 16 * kGenerated;
  const std::uint64_t touched = 10 * kPrompt + 11 * kGenerated;  // distinct units per step, summed
  const std::uint64_t minimum = 2 * 132352;
  std::uint64_t resident = 0;

  // Without prefetch, at the minimum: two slots of 132352 bytes and nothing kept, and every unit comes back only
  // after nine others, so every first pin of a unit in a step loads it; the block node's pin of A finds the unit
  // the kv node loaded. The first two loads map the slots; every later one evicts a unit.
  Generation r = run(model, paging(minimum, false), &resident);
  EXPECT_EQ(r.stats.kept_units, 0u);
  EXPECT_EQ(r.stats.pins, pins);
  EXPECT_EQ(r.stats.sync_loads, touched);
  EXPECT_EQ(r.stats.hits, pins - touched);
  EXPECT_EQ(r.stats.prefetches, 0u);
  EXPECT_EQ(r.stats.evictions, touched - 2);
  EXPECT_EQ(r.stats.bytes_loaded, kPrompt * 5 * (49408 + 132352) + kGenerated * (5 * (49408 + 132352) + 131328));
  EXPECT_EQ(r.stats.peak_held_bytes, minimum);
  const std::uint64_t without = r.stats.sync_loads;

  // With prefetch (run inline, so it is always complete in time): only the first unit is loaded synchronously;
  // every other unit is prefetched by the pin before it (H's pin skips the embedding and prefetches the next
  // step's A0), and the last step's H also prefetches the next step's A0 (one more prefetch and eviction, never
  // pinned).
  r = run(model, paging(minimum, true, /*inline_prefetch=*/true), &resident);
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

  // Half the model (585600 bytes): F0 and F1 (132352 each) and A0 (49408) are kept, 314112 bytes, leaving two
  // slots of 132352; the other 8 units are streamed: 7 in a prompt step (no H), 8 in a generated one.
  const std::uint64_t half = PagedModel::model_bytes(model) / 2;
  const std::uint64_t streamed = 7 * kPrompt + 8 * kGenerated;
  r = run(model, paging(half, false), &resident);
  EXPECT_EQ(r.stats.kept_units, 3u);
  EXPECT_EQ(r.stats.kept_bytes, 314112u);
  EXPECT_EQ(r.stats.sync_loads, 3 + streamed);  // the kept units once, the streamed ones every step
  EXPECT_EQ(r.stats.hits, pins - 3 - streamed);
  EXPECT_EQ(r.stats.evictions, streamed - 2);
  EXPECT_EQ(r.stats.bytes_loaded, 314112 + kPrompt * (2 * 132352 + 4 * 49408 + 132352) +
                                      kGenerated * (2 * 132352 + 4 * 49408 + 132352 + 131328));
  EXPECT_EQ(r.stats.peak_held_bytes, 314112u + 2 * 132352);
  EXPECT_EQ(resident, 3u + 2u);  // the kept units and the last two streamed ones
  const std::uint64_t half_without = r.stats.sync_loads;
  r = run(model, paging(half, true, /*inline_prefetch=*/true), &resident);
  EXPECT_EQ(r.stats.sync_loads, 1u);
  EXPECT_EQ(r.stats.prefetches, 3 + streamed);  // less the first load, plus the last step's extra prefetch
  EXPECT_EQ(r.stats.prefetch_hits, 3 + streamed - 1);
  EXPECT_EQ(r.stats.prefetches_dropped, 0u);
  EXPECT_EQ(r.stats.prefetches_unused, 0u);
  EXPECT_EQ(r.stats.evictions, streamed - 1);
  EXPECT_LE(static_cast<double>(r.stats.sync_loads) / static_cast<double>(half_without), 0.1);

  // The whole model: every unit (the embedding too) is kept and loaded once.
  r = run(model, paging(PagedModel::model_bytes(model), false), &resident);
  EXPECT_EQ(r.stats.sync_loads, 12u);
  EXPECT_EQ(r.stats.kept_units, 12u);
  EXPECT_EQ(r.stats.evictions, 0u);
  EXPECT_EQ(r.stats.peak_held_bytes, PagedModel::model_bytes(model));
  EXPECT_EQ(resident, 12u);
}

TEST(Paging, ReadsTheEmbeddingByRowsWhenTheClassifierIsSeparateAndTheModelDoesNotFit) {
  MMSB_REQUIRE_SHARED(gguf_path, "models/stories260K-f32.gguf");
  MMSB_REQUIRE_SHARED(bin_path, "models/stories260K.bin");
  const Model gguf = load_model(gguf_path);
  const std::uint64_t all = PagedModel::model_bytes(gguf);
  {
    PagedModel paged(gguf, paging(all / 2, true));
    EXPECT_TRUE(paged.embedding_by_rows());
    EXPECT_EQ(paged.pager().unit_count(), 11u);  // the embedding is not paged
    const Tensor& e = gguf.token_embedding;
    std::vector<std::byte> row(e.row_stride);
    for (int token : {0, 7, 511}) {
      paged.read_embedding_row(token, row.data());
      EXPECT_EQ(0,
                std::memcmp(row.data(), e.bytes.data() + static_cast<std::size_t>(token) * e.row_stride, e.row_stride))
          << token;
    }
    for (int token : {-1, 512}) {
      try {
        paged.read_embedding_row(token, row.data());
        ADD_FAILURE() << "token " << token << " was read";
      } catch (const Error& err) {
        EXPECT_EQ(err.code(), ErrorCode::InvalidArgument);
        EXPECT_NE(std::string(err.what()).find("outside the vocabulary of 512"), std::string::npos) << err.what();
      }
    }
    try {
      paged.pin(paged.embed_unit(), true);
      ADD_FAILURE() << "the embedding read by rows was pinned";
    } catch (const Error& err) {
      EXPECT_EQ(err.code(), ErrorCode::Internal);
    }
  }
  {
    PagedModel paged(gguf, paging(all, true));  // everything fits: the embedding is an ordinary unit
    EXPECT_FALSE(paged.embedding_by_rows());
    EXPECT_EQ(paged.pager().unit_count(), 12u);
  }
  const Model bin = load_model(bin_path);  // the classifier is the embedding: the whole table is needed
  PagedModel paged(bin, paging(PagedModel::minimum_budget(bin), true));
  EXPECT_FALSE(paged.embedding_by_rows());
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
  for (const char* budget : {"50%", "264704", "400K", "100%"}) {
    std::string paged = run_cli(std::string("--mem-budget ") + budget, status);
    EXPECT_EQ(status, 0) << budget;
    EXPECT_EQ(paged, resident) << budget;
  }
  std::string paged = run_cli("--mem-budget 50% --no-prefetch", status);
  EXPECT_EQ(paged, resident);
  std::string refused = run_cli("--mem-budget 64K", status, true);
  EXPECT_EQ(status, 2);
  EXPECT_NE(refused.find("minimum of 264704 bytes"), std::string::npos) << refused;
  refused = run_cli("--mem-budget lots", status, true);
  EXPECT_EQ(status, 2);
  EXPECT_NE(refused.find("percentage of the model"), std::string::npos) << refused;
}

}  // namespace
}  // namespace mmsb::llm
