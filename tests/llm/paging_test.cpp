// Layer paging on the engine (paged_model.hpp): every budget from the smallest feasible one to the whole model
// gives the fully resident engine's tokens and logits bit for bit, with and without prefetch; a budget below two
// layers is refused with a message naming the minimum; the synchronous loads of a scripted run are exact.
#include <gtest/gtest.h>

#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iterator>
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
  std::uint64_t refilled_bytes = 0;  // PagedModel::refilled_bytes()
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
    r.refilled_bytes = engine.paged()->refilled_bytes();
    if (resident_at_end) *resident_at_end = resident_units(engine.paged()->pager());
  }
  return r;
}

PagingOptions paging(std::uint64_t budget, bool prefetch, bool inline_prefetch = false,
                     PagingKind kind = PagingKind::Copy) {
  PagingOptions p;
  p.budget = budget;
  p.prefetch = prefetch;
  p.kind = kind;
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
  EXPECT_EQ(PagedModel::unit_sizes(gguf, PagingKind::Copy), expected);
  EXPECT_EQ(PagedModel::model_bytes(gguf, PagingKind::Copy), 1171200u);
  EXPECT_EQ(PagedModel::minimum_budget(gguf, PagingKind::Copy), 2u * 132352u);
  // The llama2.c checkpoint shares the classifier with the embedding: unit 0 is the embedding and the final norm.
  const Model bin = load_model(bin_path);
  expected.front() = 131328;
  expected.pop_back();
  EXPECT_EQ(PagedModel::unit_sizes(bin, PagingKind::Copy), expected);
  EXPECT_EQ(PagedModel::model_bytes(bin, PagingKind::Copy), 1040128u);
}

TEST(Paging, MappedUnitsAreTheWholePagesOfTheirRunsOfTheFile) {
  MMSB_REQUIRE_SHARED(gguf_path, "models/stories260K-f32.gguf");
  MMSB_REQUIRE_SHARED(bin_path, "models/stories260K.bin");
  ASSERT_EQ(::sysconf(_SC_PAGESIZE), 4096);
  // In the GGUF file the embedding lies at bytes 14176-145248: pages 3-35, 33 pages (135168 bytes); layer 0's
  // attention unit at 276576-325984: pages 67-79 (53248); its feed-forward unit at 325984-458336: pages 79-111
  // (135168, sharing page 79 with the attention unit); layer 1's at 507744-640096: pages 123-156 (139264); the
  // final norm and classifier at 145248-276576: pages 35-67 (135168).
  const Model gguf = load_model(gguf_path);
  const std::vector<std::uint64_t> expected{135168, 53248, 135168, 53248, 139264, 53248,
                                            135168, 53248, 139264, 53248, 135168, 135168};
  EXPECT_EQ(PagedModel::unit_sizes(gguf, PagingKind::Map), expected);
  EXPECT_EQ(PagedModel::unit_sizes(gguf), expected);  // Auto maps a model read from a file
  EXPECT_EQ(PagedModel::model_bytes(gguf, PagingKind::Map), 1220608u);
  EXPECT_EQ(PagedModel::minimum_budget(gguf, PagingKind::Map), 2u * 139264u);
  // The llama2.c checkpoint's unit 0 is two runs: the embedding at bytes 28-131100 (pages 0-32) and the final norm
  // at 1039900-1040156 (page 253): 34 pages. Layer 0's attention unit is five runs of one to five pages each.
  const Model bin = load_model(bin_path);
  const std::vector<std::uint64_t> sizes = PagedModel::unit_sizes(bin, PagingKind::Map);
  ASSERT_EQ(sizes.size(), 11u);
  EXPECT_EQ(sizes[0], 139264u);
  EXPECT_EQ(sizes[1], 69632u);  // norm 131100-131356 (page 32), wq 132380-148764 (32-36), wk 214300-222492 (52-54),
                                // wv 255260-263452 (62-64), wo 296220-312604 (72-76): 1 + 5 + 3 + 3 + 5 = 17 pages
  // A model parsed from memory has no file to map: Auto copies, and Map is refused.
  EXPECT_EQ(PagedModel::kind_of(gguf, PagingKind::Auto), PagingKind::Map);
  const Model parsed = parse_gguf(gguf.file->bytes(), gguf.file);
  EXPECT_EQ(PagedModel::kind_of(parsed, PagingKind::Auto), PagingKind::Copy);
  EXPECT_EQ(PagedModel::unit_sizes(parsed), PagedModel::unit_sizes(gguf, PagingKind::Copy));
  try {
    PagedModel paged(parsed, paging(PagedModel::model_bytes(parsed) / 2, true, false, PagingKind::Map));
    ADD_FAILURE() << "mapped paging of a model parsed from memory was accepted";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::InvalidArgument);
    EXPECT_NE(std::string(e.what()).find("not read from a file"), std::string::npos) << e.what();
  }
}

// Paged runs without prefetch, with prefetch on the loader thread and with prefetch inline give the resident run's
// tokens and logits bit for bit, within the budget.
void expect_resident_results(const Model& model, const Generation& resident, std::uint64_t budget, PagingKind kind,
                             const std::string& file) {
  const std::uint64_t all = PagedModel::model_bytes(model, kind);
  for (int mode = 0; mode < 3; ++mode) {
    SCOPED_TRACE(file + ", budget " + std::to_string(budget) + ", mode " + std::to_string(mode) +
                 (kind == PagingKind::Map ? ", mapped" : ", copied"));
    const Generation paged = run(model, paging(budget, mode != 1, mode == 2, kind));
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

TEST(Paging, EveryBudgetGivesTheResidentTokensAndLogitsBitForBitMappedOrCopied) {
  for (const char* file : {"models/stories260K-f32.gguf", "models/stories260K.bin", "models/stories260K-Q8_0.gguf",
                           "models/stories260K-Q4_0.gguf"}) {
    MMSB_REQUIRE_SHARED(path, file);
    const Model model = load_model(path);
    const Generation resident = run(model, std::nullopt);
    for (const PagingKind kind : {PagingKind::Copy, PagingKind::Map}) {
      const std::uint64_t minimum = PagedModel::minimum_budget(model, kind), all = PagedModel::model_bytes(model, kind);
      ASSERT_LT(minimum, all) << file;
      std::vector<std::uint64_t> budgets{minimum, minimum + 1, minimum + 65536};
      for (int i = 1; i < 8; ++i) budgets.push_back(minimum + (all - minimum) * i / 8);
      budgets.insert(budgets.end(), {all / 2, all - 1, all, all + (1u << 20)});
      for (std::uint64_t budget : budgets) {
        if (budget < minimum) continue;  // half of a small quantized model can be below two layers
        expect_resident_results(model, resident, budget, kind, file);
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
  options.paging = paging(2 * 139264 - 1, true, false, PagingKind::Map);  // mapped: whole pages, a larger minimum
  try {
    Engine engine(model, options);
    FAIL() << "a budget one byte below two mapped layers was accepted";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::InvalidArgument);
    EXPECT_NE(std::string(e.what()).find("minimum of 278528 bytes"), std::string::npos) << e.what();
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
  const std::uint64_t half = PagedModel::model_bytes(model, PagingKind::Copy) / 2;
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
  r = run(model, paging(PagedModel::model_bytes(model, PagingKind::Copy), false), &resident);
  EXPECT_EQ(r.stats.sync_loads, 12u);
  EXPECT_EQ(r.stats.kept_units, 12u);
  EXPECT_EQ(r.stats.evictions, 0u);
  EXPECT_EQ(r.stats.peak_held_bytes, PagedModel::model_bytes(model, PagingKind::Copy));
  EXPECT_EQ(resident, 12u);
}

TEST(Paging, MappedUnitsOfAScriptedRunLoadAndEvictWithinTheBudget) {
  MMSB_REQUIRE_SHARED(path, "models/stories260K-f32.gguf");
  const Model model = load_model(path);
  // Mapped units (see MappedUnitsAreTheWholePagesOfTheirRunsOfTheFile), the embedding read by rows: A0..A4 53248
  // bytes each, F0, F2, F4 and H 135168, F1 and F3 139264. Half of the mapped model, 610304 bytes, holds four of
  // the largest units (557056) plus A0: mapped units keep room for four streamed units, so only A0 is kept, and a
  // prompt step streams A1..A4 and F0..F4 (9 units, 897024 bytes), a generated step H too (10, 1032192 bytes).
  const std::uint64_t half = PagedModel::model_bytes(model, PagingKind::Map) / 2;
  ASSERT_EQ(half, 610304u);
  const std::uint64_t pins = 15 * kPrompt + 16 * kGenerated;
  const std::uint64_t streamed = 9 * kPrompt + 10 * kGenerated;
  std::uint64_t resident = 0;
  Generation r = run(model, paging(half, false, false, PagingKind::Map), &resident);
  EXPECT_EQ(r.stats.kept_units, 1u);
  EXPECT_EQ(r.stats.kept_bytes, 53248u);
  EXPECT_EQ(r.stats.pins, pins);
  EXPECT_EQ(r.stats.sync_loads, 1 + streamed);
  EXPECT_EQ(r.stats.bytes_loaded, 53248 + kPrompt * 897024 + kGenerated * 1032192);
  EXPECT_EQ(r.stats.evictions, streamed - (resident - 1));  // every streamed load but those still mapped
  EXPECT_LE(r.stats.peak_held_bytes, half);
  EXPECT_GT(r.stats.peak_held_bytes, half - 53248);  // the room fills up
  EXPECT_GT(r.stats.unmap_ns, 0u);
  // With prefetch run inline, every unit but the first is mapped before its pin; the last step's H prefetches the
  // next step's first streamed units, three of them, never pinned.
  r = run(model, paging(half, true, /*inline_prefetch=*/true, PagingKind::Map), &resident);
  EXPECT_EQ(r.stats.sync_loads, 1u);
  EXPECT_EQ(r.stats.prefetches_dropped, 0u);
  EXPECT_EQ(r.stats.prefetches_unused, 0u);
  EXPECT_EQ(r.stats.prefetch_hits, streamed);
  EXPECT_LE(r.stats.peak_held_bytes, half);
}

// The bytes of this process's mappings of `path` other than the whole file's (the Model's own), by smaps' Rss.
std::uint64_t mapped_unit_rss(const std::string& path, std::uint64_t file_bytes) {
  std::ifstream smaps("/proc/self/smaps");
  std::string line;
  bool counting = false;
  std::uint64_t total = 0;
  while (std::getline(smaps, line)) {
    unsigned long long begin = 0, end = 0;
    char name[4096] = "";
    if (std::sscanf(line.c_str(), "%llx-%llx %*s %*s %*s %*s %4095s", &begin, &end, name) >= 2 &&
        line.find(" kB") == std::string::npos) {
      counting = path == name && end - begin < file_bytes;
    } else if (counting && line.rfind("Rss:", 0) == 0) {
      total += std::stoull(line.substr(4)) * 1024;
    }
  }
  return total;
}

TEST(Paging, MappedUnitsHoldExactlyTheFilesBytesAndTheProcessHoldsOnlyWhatTheBudgetCounts) {
  MMSB_REQUIRE_SHARED(path, "models/stories260K-f32.gguf");
  const Model model = load_model(path);
  const std::string real = std::filesystem::canonical(path).string();
  const std::uint64_t file_bytes = model.file->bytes().size();
  std::ifstream in(path, std::ios::binary);
  std::vector<char> file((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  const std::uint64_t half = PagedModel::model_bytes(model, PagingKind::Map) / 2;
  PagedModel paged(model, paging(half, false, false, PagingKind::Map));
  ASSERT_EQ(paged.kind(), PagingKind::Map);
  LayerPager& pager = paged.pager();
  auto check_unit = [&](std::size_t unit, std::initializer_list<const Tensor*> tensors) {
    LayerPager::Pin pin = paged.pin(unit, true);
    EXPECT_EQ(pin.bytes().size(), pager.unit_bytes(pin.unit()));
    for (const Tensor* t : tensors) {
      const auto at = static_cast<std::size_t>(t->bytes.data() - model.file->bytes().data());
      EXPECT_EQ(0, std::memcmp(paged.tensor(pin, *t), file.data() + at, t->bytes.size())) << t->name;
    }
    // The pages mapped for units are the resident units' sizes, never more than the budget.
    std::uint64_t counted = 0;
    for (std::size_t u = 0; u < pager.unit_count(); ++u) counted += pager.resident(u) ? pager.unit_bytes(u) : 0;
    EXPECT_EQ(mapped_unit_rss(real, file_bytes), counted) << "unit " << unit;
    EXPECT_LE(counted, half);
  };
  for (std::size_t l = 0; l < model.layers.size(); ++l) {
    const LayerTensors& w = model.layers[l];
    check_unit(paged.attention_unit(l), {&w.attn_norm, &w.wq, &w.wk, &w.wv, &w.wo});
    check_unit(paged.ffn_unit(l), {&w.ffn_norm, &w.w1, &w.w2, &w.w3});
  }
  check_unit(paged.head_unit(), {&model.final_norm, &model.classifier});
  EXPECT_GT(pager.stats().evictions, 0u);
}

TEST(Paging, AFileShorterThanWhenLoadedIsAnIoErrorNotACrash) {
  MMSB_REQUIRE_SHARED(path, "models/stories260K-f32.gguf");
  const std::string copy = ::testing::TempDir() + "/paging_short.gguf";
  std::filesystem::copy_file(path, copy, std::filesystem::copy_options::overwrite_existing);
  const Model model = load_model(copy);
  const std::uint64_t all = PagedModel::model_bytes(model, PagingKind::Map);
  {  // cut after the PagedModel was made: a mapped load of the lost bytes fails (no SIGBUS: nothing read them)
    PagedModel paged(model, paging(all / 2, false, false, PagingKind::Map));
    std::filesystem::resize_file(copy, 400000);  // layer 0's attention unit (276576-325984) stays whole
    EXPECT_NO_THROW(paged.pin(paged.attention_unit(0), true));
    try {
      paged.pin(paged.ffn_unit(4), true);  // bytes 1053024-1185120
      ADD_FAILURE() << "a unit past the end of the file was mapped";
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), ErrorCode::IoError);
      EXPECT_NE(std::string(e.what()).find("shorter than when loaded"), std::string::npos) << e.what();
    }
  }
  for (const PagingKind kind : {PagingKind::Map, PagingKind::Copy}) {  // cut before: refused when made
    try {
      PagedModel paged(model, paging(all / 2, false, false, kind));
      ADD_FAILURE() << "paging a file shorter than the model was accepted";
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), ErrorCode::IoError);
      EXPECT_NE(std::string(e.what()).find("shorter than when it was loaded (400000 of 1185376 bytes)"),
                std::string::npos)
          << e.what();
    }
  }
  std::filesystem::remove(copy);
}

// A unit whose populate costs more CPU time per MiB than refill_above_us_per_mib is dropped from the page cache and
// read again: with a threshold no load can stay under, units are refilled, and the tokens and logits are still the
// resident ones bit for bit; with 0, nothing is ever refilled. (Whether a real page cache in
// small folios is detected depends on the file system: docs/benchmarks.md measures it.)
TEST(Paging, MappedUnitsInSmallFoliosAreReadAgainAndGiveTheSameResults) {
  MMSB_REQUIRE_SHARED(path, "models/stories260K-f32.gguf");
  const std::string copy = ::testing::TempDir() + "/paging_refill.gguf";  // its page cache is dropped: not shared
  std::filesystem::copy_file(path, copy, std::filesystem::copy_options::overwrite_existing);
  const Model model = load_model(copy);
  const Generation resident = run(model, std::nullopt);
  const std::uint64_t all = PagedModel::model_bytes(model, PagingKind::Map);
  for (const double threshold : {1e-12, 0.0}) {
    PagingOptions options = paging(all / 2, true, /*inline_prefetch=*/true, PagingKind::Map);
    options.refill_above_us_per_mib = threshold;
    const Generation paged = run(model, options);
    EXPECT_EQ(paged.tokens, resident.tokens) << threshold;
    EXPECT_EQ(paged.logits, resident.logits) << threshold;  // bit for bit (no NaN in these logits)
    const std::uint64_t refilled = paged.refilled_bytes;
    if (threshold > 0) {
      // At least the first unit loaded; a unit is not refilled again once a refill did not make its load cheaper,
      // refills stop after two such units, and no unit is refilled more than three times.
      EXPECT_GE(refilled, PagedModel::unit_sizes(model, PagingKind::Map).front());
      EXPECT_LE(refilled, 3 * all);
    } else {
      EXPECT_EQ(refilled, 0u);
    }
  }
  std::filesystem::remove(copy);
}

TEST(Paging, ReadsTheEmbeddingByRowsWhenTheClassifierIsSeparateAndTheModelDoesNotFit) {
  MMSB_REQUIRE_SHARED(gguf_path, "models/stories260K-f32.gguf");
  MMSB_REQUIRE_SHARED(bin_path, "models/stories260K.bin");
  const Model gguf = load_model(gguf_path);
  const std::uint64_t all = PagedModel::model_bytes(gguf, PagingKind::Copy);
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
  PagedModel paged(bin, paging(PagedModel::minimum_budget(bin, PagingKind::Copy), true));
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
  for (const char* budget : {"50%", "278528", "400K", "100%"}) {  // mapped (the default), then copied
    for (const char* kind : {"", " --paging copy"}) {
      std::string paged = run_cli(std::string("--mem-budget ") + budget + kind, status);
      EXPECT_EQ(status, 0) << budget << kind;
      EXPECT_EQ(paged, resident) << budget << kind;
    }
  }
  std::string paged = run_cli("--mem-budget 264704 --paging copy", status);
  EXPECT_EQ(paged, resident);
  paged = run_cli("--mem-budget 50% --no-prefetch --paging map", status);
  EXPECT_EQ(paged, resident);
  std::string refused = run_cli("--mem-budget 64K --paging copy", status, true);
  EXPECT_EQ(status, 2);
  EXPECT_NE(refused.find("minimum of 264704 bytes"), std::string::npos) << refused;
  refused = run_cli("--mem-budget 264704", status, true);  // below two mapped units
  EXPECT_EQ(status, 2);
  EXPECT_NE(refused.find("minimum of 278528 bytes"), std::string::npos) << refused;
  refused = run_cli("--mem-budget lots", status, true);
  EXPECT_EQ(status, 2);
  EXPECT_NE(refused.find("percentage of the model"), std::string::npos) << refused;
}

}  // namespace
}  // namespace mmsb::llm
