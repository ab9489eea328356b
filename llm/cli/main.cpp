// mmsb-llm: runs a Llama model (llama2.c checkpoint or GGUF) on mmsb and streams the generated text.
//
//   mmsb-llm -m stories260K.bin -z tok512.bin -p "Once upon a time" -n 64
//   mmsb-llm -m stories260K-Q8_0.gguf -p "Once upon a time" --temp 0.8 --top-p 0.9 --seed 7
//   mmsb-llm bench -m stories260K-f32.gguf -p 16 -n 256 --json
//   mmsb-llm quantize stories260K-f32.gguf stories260K-q4_k.gguf q4_k
//   mmsb-llm make-model --shape s42m --type q8_0 -o s42m-q8_0.gguf
//
// stdout carries only the text (the prompt, then each token as it is generated, then a newline), byte for byte
// what llama2.c's run prints for the same greedy run; timings go to stderr. Errors are one line and exit code 2.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <exception>
#include <iostream>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <unistd.h>

#include "mmsb/error.hpp"
#include "mmsb/llm/chat.hpp"
#include "mmsb/llm/engine.hpp"
#include "mmsb/llm/generate.hpp"
#include "mmsb/llm/lora.hpp"
#include "mmsb/llm/make_model.hpp"
#include "mmsb/llm/model.hpp"
#include "mmsb/llm/paged_model.hpp"
#include "mmsb/llm/quantize.hpp"
#include "mmsb/llm/throughput.hpp"
#include "mmsb/llm/tokenizer.hpp"
#include "program/options.hpp"

namespace {

using namespace mmsb::llm;
using mmsb::program::non_negative;
using mmsb::program::range;

struct Options {
  std::string model, tokenizer, prompt;
  int steps = 256;
  float temperature = 0.0f;
  int top_k = 0;
  float top_p = 1.0f;
  std::uint64_t seed = 0;
  unsigned threads = 1;
  std::uint32_t context = 0;
  std::string mem_budget;  // empty: every weight resident
  bool no_prefetch = false;
  std::string paging = "auto";                                    // --paging: auto, map or copy
  double refill_above = PagingOptions{}.refill_above_us_per_mib;  // --refill-above
  // bench
  int bench_prompt = 16, bench_gen = 256;
  unsigned prefill_batch = 64;  // EngineOptions::prefill_batch
  bool json = false, engine_only = false;
  int repeat = 7;
  int rounds = 5;
  // quantize, make-model
  std::string quant_in, quant_out, quant_type, shape;
  bool force = false, llama2c_format = false;
  std::uint64_t pad = 0;
  // LoRA and chat
  std::vector<std::string> lora;
  float lora_scale = 1.0f;
  int lora_swap_every = 0;
  bool interactive = false;
  std::string lora_out, lora_targets = "attn_q,attn_v";
  std::uint32_t lora_rank = 4;
  float lora_alpha = 4.0f;
};

int run_make_model(const Options& o) {
  MakeModelOptions m;
  m.shape = model_shape_from_name(o.shape);
  m.type = quantize_type_from_name(o.quant_type);
  m.seed = o.seed;
  m.tokenizer = o.tokenizer.empty() ? MMSB_DEFAULT_TOKENIZER : o.tokenizer;
  m.force = o.force;
  m.llama2c_format = o.llama2c_format;
  const std::uint64_t bytes = make_model(m, o.quant_out);
  std::fprintf(stderr, "wrote %s: %s, %s, %llu bytes\n", o.quant_out.c_str(), o.shape.c_str(), o.quant_type.c_str(),
               static_cast<unsigned long long>(bytes));
  return 0;
}

int run_quantize(const Options& o) {
  QuantizeOptions q;
  q.type = quantize_type_from_name(o.quant_type);
  q.force = o.force;
  q.pad_to = o.pad;
  if (isatty(STDERR_FILENO) != 0) {  // a progress line on a terminal only
    q.progress = [](std::size_t done, std::size_t total, std::string_view name) {
      std::fprintf(stderr, "\rquantize: tensor %zu of %zu (%.*s)%-20s", done, total, static_cast<int>(name.size()),
                   name.data(), "");
      if (done == total) std::fprintf(stderr, "\r%-70s\r", "");
    };
  }
  const QuantizeReport r = quantize_gguf(o.quant_in, o.quant_out, q);
  std::string types;
  for (const auto& [name, count] : r.types) types += (types.empty() ? "" : ", ") + std::to_string(count) + " " + name;
  std::fprintf(stderr, "mmsb-llm: wrote %s: %zu tensors (%s), %.1f KiB -> %.1f KiB\n", o.quant_out.c_str(), r.tensors,
               types.c_str(), static_cast<double>(r.input_bytes) / 1024, static_cast<double>(r.output_bytes) / 1024);
  return 0;
}

// Prepares every --lora adapter and activates the first; with --lora-swap-every N, on_position() moves to the
// next adapter (cycling; with one adapter: adapter, base, adapter, ...) every N positions.
struct LoraCycle {
  LoraCycle(const Options& o, Engine& engine, const Model& model) : every(o.lora_swap_every) {
    if (o.lora.empty()) {
      if (every > 0) throw mmsb::Error(mmsb::ErrorCode::InvalidArgument, "--lora-swap-every needs --lora FILE");
      return;
    }
    if (engine.paged() != nullptr) return;  // merged into the paged units when they load (paging_for)
    switcher = std::make_unique<LoraSwitcher>(engine, model);
    for (const std::string& file : o.lora) switcher->prepare(load_lora(file), o.lora_scale);
    switcher->activate(0);
  }
  void on_position() {
    if (!switcher || every <= 0 || ++positions % every != 0) return;
    const auto start = std::chrono::steady_clock::now();
    const std::size_t n = switcher->prepared_count();
    const std::size_t state = (switcher->active() ? *switcher->active() : n) + 1;  // n = the base weights
    const std::size_t next = state % (n == 1 ? 2 : n);
    if (next < n)
      switcher->activate(next);
    else
      switcher->revert();
    swap_us.push_back(std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - start).count());
  }
  void report() const {
    if (swap_us.empty()) return;
    std::vector<double> s = swap_us;
    std::sort(s.begin(), s.end());
    std::fprintf(stderr, "mmsb-llm: %zu LoRA swaps, median %.1f us, max %.1f us\n", s.size(), s[s.size() / 2],
                 s.back());
  }
  std::unique_ptr<LoraSwitcher> switcher;
  int every;
  long positions = 0;
  std::vector<double> swap_us;
};

std::vector<std::string> split_commas(const std::string& text) {
  std::vector<std::string> out;
  std::size_t start = 0;
  while (start <= text.size()) {
    std::size_t end = text.find(',', start);
    if (end == std::string::npos) end = text.size();
    if (end > start) out.push_back(text.substr(start, end - start));
    start = end + 1;
  }
  return out;
}

int run_lora_make(const Options& o) {
  Model model = load_model(o.model);
  LoraAdapter a = make_random_lora(model, o.lora_rank, o.lora_alpha, o.seed, split_commas(o.lora_targets));
  write_lora_gguf(o.lora_out, a);
  std::fprintf(stderr, "mmsb-llm: wrote %s: %zu adapted matrices, rank %u, alpha %g, seed %llu\n", o.lora_out.c_str(),
               a.tensors.size(), o.lora_rank, static_cast<double>(o.lora_alpha),
               static_cast<unsigned long long>(o.seed));
  return 0;
}

// Chat: each stdin line is a turn ("/reset" starts over); the KV cache carries the conversation between turns.
int run_chat(const Options& o, Engine& engine, const Tokenizer& tokenizer, Sampler& sampler, LoraCycle& lora) {
  ChatSession chat(engine, tokenizer, sampler);
  const bool tty = isatty(STDIN_FILENO) != 0;
  auto print = [&lora](std::string_view text) {
    std::fwrite(text.data(), 1, text.size(), stdout);
    std::fflush(stdout);
    lora.on_position();
  };
  auto one_turn = [&](const std::string& line) {
    TurnResult r = chat.turn(line, o.steps, print);
    std::fputc('\n', stdout);
    std::fflush(stdout);
    std::fprintf(stderr, "[%zu tokens in, %zu out, %llu positions computed, %zu in the cache%s]\n", r.input_ids.size(),
                 r.generated_ids.size(), static_cast<unsigned long long>(r.steps), chat.history().size(),
                 r.context_full ? "; context full, /reset to go on" : "");
  };
  if (!o.prompt.empty()) one_turn(o.prompt);
  std::string line;
  for (;;) {
    if (tty) std::fputs("> ", stderr);
    if (!std::getline(std::cin, line)) break;
    if (line == "/reset") {
      chat.reset();
      continue;
    }
    try {
      one_turn(line);
    } catch (const mmsb::Error& e) {
      if (e.code() != mmsb::ErrorCode::InvalidArgument) throw;
      std::fprintf(stderr, "mmsb-llm: %s\n", e.what());
    }
  }
  lora.report();
  return 0;
}

// The paging options for --mem-budget (none when it is not given).
std::optional<PagingOptions> paging_for(const Options& o, const Model& model, bool prefetch) {
  if (o.mem_budget.empty()) return std::nullopt;
  PagingOptions paging;
  paging.kind = o.paging == "map" ? PagingKind::Map : o.paging == "copy" ? PagingKind::Copy : PagingKind::Auto;
  // An adapter's merged matrices are written over each load: Auto then copies (and 100% means the copied units).
  const PagingKind kind = !o.lora.empty() && paging.kind == PagingKind::Auto ? PagingKind::Copy : paging.kind;
  paging.budget = parse_mem_budget(o.mem_budget, PagedModel::model_bytes(model, kind));
  paging.prefetch = prefetch;
  paging.refill_above_us_per_mib = o.refill_above;
  if (!o.lora.empty()) {  // one adapter, merged once: swapping needs the weights resident as runtime pages
    if (o.lora.size() > 1 || o.lora_swap_every > 0) {
      throw mmsb::Error(mmsb::ErrorCode::InvalidArgument,
                        "with --mem-budget, give one --lora adapter and no --lora-swap-every: swapping adapters "
                        "needs the weights resident");
    }
    paging.overrides = merge_lora(model, load_lora(o.lora.front()), o.lora_scale);
  }
  return paging;
}

void print_pager_stats(const char* label, const PagerStats& s) {
  std::fprintf(
      stderr,
      "%s: %llu pins: %llu synchronous loads, %llu hits, %llu waits for a prefetch in flight; %llu "
      "prefetches (%llu hits, %llu late, %llu dropped, %llu unused); %llu evictions; %llu bytes loaded in %.1f ms "
      "(%.1f ms synchronous; %.1f ms unmapping); peak %llu bytes held\n",
      label, static_cast<unsigned long long>(s.pins), static_cast<unsigned long long>(s.sync_loads),
      static_cast<unsigned long long>(s.hits), static_cast<unsigned long long>(s.waits),
      static_cast<unsigned long long>(s.prefetches), static_cast<unsigned long long>(s.prefetch_hits),
      static_cast<unsigned long long>(s.prefetches_late), static_cast<unsigned long long>(s.prefetches_dropped),
      static_cast<unsigned long long>(s.prefetches_unused), static_cast<unsigned long long>(s.evictions),
      static_cast<unsigned long long>(s.bytes_loaded), static_cast<double>(s.load_ns) / 1e6,
      static_cast<double>(s.sync_load_ns) / 1e6, static_cast<double>(s.unmap_ns) / 1e6,
      static_cast<unsigned long long>(s.peak_held_bytes));
}

int run_generate(const Options& o) {
  if (o.model.empty()) throw mmsb::Error(mmsb::ErrorCode::InvalidArgument, "no model given; use -m MODEL (see --help)");
  LoadOptions load;
  load.context_length = o.context;
  Model model = load_model(o.model, load);
  Vocabulary vocab;
  if (!o.tokenizer.empty()) {
    vocab = load_llama2c_tokenizer(o.tokenizer, model.config.vocab_size);
  } else if (model.vocabulary) {
    vocab = *model.vocabulary;
  } else {
    throw mmsb::Error(mmsb::ErrorCode::InvalidArgument,
                      o.model + " is a llama2.c checkpoint, which carries no tokenizer; give one with -z tok512.bin");
  }
  Tokenizer tokenizer(std::move(vocab));
  Sampler sampler({o.temperature, o.top_k, o.top_p, o.seed});
  if (o.steps < 0) throw mmsb::Error(mmsb::ErrorCode::InvalidArgument, "-n must be >= 0");
  EngineOptions engine_options;
  engine_options.threads = o.threads;
  engine_options.paging = paging_for(o, model, !o.no_prefetch);
  Engine engine(model, engine_options);
  LoraCycle lora(o, engine, model);
  if (o.interactive) return run_chat(o, engine, tokenizer, sampler, lora);
  GenerateResult r = generate(engine, tokenizer, sampler, o.prompt, o.steps, [&lora](std::string_view text) {
    std::fwrite(text.data(), 1, text.size(), stdout);
    std::fflush(stdout);
    lora.on_position();
  });
  lora.report();
  std::fputc('\n', stdout);
  std::fflush(stdout);
  const double prompt_steps = static_cast<double>(r.prompt_ids.size()) - 1;
  const mmsb::PropagationStats stats = engine.propagator().stats();
  std::fprintf(stderr,
               "mmsb-llm: %s, %u layers, kernels %s; prompt %zu tokens (%.0f tok/s), generated %zu tokens "
               "(%.0f tok/s)%s; %llu waves (%llu inline), %llu node runs\n",
               model.format.c_str(), model.config.n_layers, mmsb::simd_level_name(kernels().level), r.prompt_ids.size(),
               r.prompt_seconds > 0 ? prompt_steps / r.prompt_seconds : 0.0, r.generated_ids.size(),
               r.generate_seconds > 0 ? static_cast<double>(r.generated_ids.size()) / r.generate_seconds : 0.0,
               r.stopped_on_special ? "; stopped at an end-of-text token" : "",
               static_cast<unsigned long long>(stats.waves), static_cast<unsigned long long>(stats.inline_waves),
               static_cast<unsigned long long>(stats.nodes_recomputed));
  if (engine.paged()) {
    const LayerPager& pager = engine.paged()->pager();
    std::fprintf(stderr,
                 "mmsb-llm: paging (%s) %zu units of %llu bytes in all under a budget of %llu bytes%s; %llu units "
                 "(%llu bytes) kept resident, the others streamed\n",
                 engine.paged()->kind() == PagingKind::Map ? "mapped" : "copied", pager.unit_count(),
                 static_cast<unsigned long long>(PagedModel::model_bytes(model, engine.paged()->kind())),
                 static_cast<unsigned long long>(pager.budget()),
                 engine.paged()->embedding_by_rows() ? " (the embedding read by rows)" : "",
                 static_cast<unsigned long long>(pager.stats().kept_units),
                 static_cast<unsigned long long>(pager.stats().kept_bytes));
    print_pager_stats("mmsb-llm: pager", pager.stats());
  }
  return 0;
}

double median_of(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

double median(const std::vector<Throughput>& runs, double Throughput::*field) {
  std::vector<double> v;
  for (const Throughput& t : runs) v.push_back(t.*field);
  return median_of(std::move(v));
}

// What bounds paging on one core: without prefetch every load is on the step's path, so a step costs the resident
// step plus its loads; with one core for both, no overlap can do better than resident / (resident + loads). A
// mapped unit's load time counts its unmapping too.
struct LoadBound {
  double us_per_mb_with, us_per_mb_without, load_ms_per_step, resident_ms_per_step, one_core;
};
LoadBound load_bound(const PagerStats& with, const PagerStats& without, double steps, double resident_tok) {
  auto us_per_mb = [](const PagerStats& s) {
    return s.bytes_loaded > 0
               ? static_cast<double>(s.load_ns + s.unmap_ns) / 1e3 / (static_cast<double>(s.bytes_loaded) / 1e6)
               : 0.0;
  };
  const double load_ms = static_cast<double>(without.load_ns + without.unmap_ns) / 1e6 / steps;
  const double resident_ms = 1e3 / resident_tok;
  return {us_per_mb(with), us_per_mb(without), load_ms, resident_ms, resident_ms / (resident_ms + load_ms)};
}

// `bench --mem-budget`: the engine fully resident, paged with prefetch and paged without, alternated in one run.
// `resident` already holds the fully resident repetitions; the paged ones alternate with as many more.
// long-function: the measurement loop and one report in two formats (JSON, text) that must list the same figures.
int run_paged_bench(const Options& o, const Model& model, const EngineOptions& base, std::vector<Throughput> resident) {
  EngineOptions prefetching = base, synchronous = base;
  prefetching.paging = paging_for(o, model, true);
  synchronous.paging = paging_for(o, model, false);
  std::vector<Throughput> paged, unprefetched;
  for (int r = 0; r < o.repeat; ++r) {
    paged.push_back(
        measure_throughput(model, ThroughputPath::Engine, o.bench_prompt, o.bench_gen, prefetching, o.rounds));
    unprefetched.push_back(
        measure_throughput(model, ThroughputPath::Engine, o.bench_prompt, o.bench_gen, synchronous, o.rounds));
    resident.push_back(measure_throughput(model, ThroughputPath::Engine, o.bench_prompt, o.bench_gen, base, o.rounds));
    if (paged.back().checksum != resident.back().checksum || unprefetched.back().checksum != resident.back().checksum) {
      throw mmsb::Error(mmsb::ErrorCode::Internal,
                        "bench: the paged engine generated other tokens than the resident one");
    }
  }
  const double resident_tok = median(resident, &Throughput::tok_per_s);
  const double paged_tok = median(paged, &Throughput::tok_per_s);
  const double unprefetched_tok = median(unprefetched, &Throughput::tok_per_s);
  // The counters of one repetition (each: `rounds` sequences of n_prompt + n_gen steps); synchronous loads and
  // evictions are the same in every repetition, waits depend on timing.
  const PagerStats& with = paged.back().paging;
  const PagerStats& without = unprefetched.back().paging;
  const double sync_ratio =
      without.sync_loads > 0 ? static_cast<double>(with.sync_loads) / static_cast<double>(without.sync_loads) : 0.0;
  const PagingKind kind = PagedModel::kind_of(model, prefetching.paging->kind);
  const std::uint64_t model_bytes = PagedModel::model_bytes(model, kind);
  const std::uint64_t budget = prefetching.paging->budget;
  const double steps = static_cast<double>(o.rounds) * (o.bench_prompt + o.bench_gen);
  const LoadBound bound = load_bound(with, without, steps, resident_tok);
  std::uint64_t refilled = 0;  // the first repetitions find what an earlier reader left in the page cache
  for (const Throughput& t : paged) refilled += t.refilled_bytes;
  for (const Throughput& t : unprefetched) refilled += t.refilled_bytes;
  if (o.json) {
    std::printf(
        "{\"model\": \"%s\", \"paging\": \"%s\", \"n_prompt\": %d, \"n_gen\": %d, \"rounds\": %d, \"model_bytes\": "
        "%llu, "
        "\"mem_budget\": %llu, \"resident_tok_per_s\": %.1f, \"paged_tok_per_s\": %.1f, "
        "\"paged_no_prefetch_tok_per_s\": %.1f, \"paged_vs_resident_ratio\": %.4f, \"sync_loads\": %llu, "
        "\"sync_loads_no_prefetch\": %llu, \"sync_loads_ratio\": %.4f, \"prefetch_hits\": %llu, "
        "\"prefetch_waits\": %llu, \"prefetches_late\": %llu, \"prefetches_dropped\": %llu, \"evictions\": %llu, "
        "\"bytes_loaded\": %llu, \"kept_units\": %llu, \"kept_bytes\": %llu, "
        "\"peak_held_bytes\": %llu, \"load_us_per_mb\": %.1f, \"load_us_per_mb_no_prefetch\": %.1f, "
        "\"load_ms_per_step_no_prefetch\": %.2f, \"one_core_bound\": %.4f, \"refilled_bytes\": %llu}\n",
        o.model.c_str(), kind == PagingKind::Map ? "map" : "copy", o.bench_prompt, o.bench_gen, o.rounds,
        static_cast<unsigned long long>(model_bytes), static_cast<unsigned long long>(budget), resident_tok, paged_tok,
        unprefetched_tok, paged_tok / resident_tok, static_cast<unsigned long long>(with.sync_loads),
        static_cast<unsigned long long>(without.sync_loads), sync_ratio,
        static_cast<unsigned long long>(with.prefetch_hits), static_cast<unsigned long long>(with.waits),
        static_cast<unsigned long long>(with.prefetches_late), static_cast<unsigned long long>(with.prefetches_dropped),
        static_cast<unsigned long long>(with.evictions), static_cast<unsigned long long>(with.bytes_loaded),
        static_cast<unsigned long long>(with.kept_units), static_cast<unsigned long long>(with.kept_bytes),
        static_cast<unsigned long long>(with.peak_held_bytes), bound.us_per_mb_with, bound.us_per_mb_without,
        bound.load_ms_per_step, bound.one_core, static_cast<unsigned long long>(refilled));
  } else {
    std::printf(
        "model %s (%s), %llu bytes paged (%s) in %zu units, budget %llu bytes (%.1f%%), %d sequence(s) of %d + %d "
        "steps per repetition\n",
        o.model.c_str(), model.format.c_str(), static_cast<unsigned long long>(model_bytes),
        kind == PagingKind::Map ? "mapped" : "copied", PagedModel::unit_sizes(model, kind).size(),
        static_cast<unsigned long long>(budget), 100.0 * static_cast<double>(budget) / static_cast<double>(model_bytes),
        o.rounds, o.bench_prompt, o.bench_gen);
    std::printf("  resident:              generation %10.0f tok/s\n", resident_tok);
    std::printf("  paged, prefetch:       generation %10.0f tok/s   (paged/resident %.3f)\n", paged_tok,
                paged_tok / resident_tok);
    std::printf("  paged, no prefetch:    generation %10.0f tok/s   (paged/resident %.3f)\n", unprefetched_tok,
                unprefetched_tok / resident_tok);
    std::printf(
        "  synchronous loads: %llu with prefetch, %llu without (ratio %.4f); prefetch hits %llu (%llu waited "
        "for the copy), %llu late (loaded by the pin), dropped %llu; evictions %llu\n",
        static_cast<unsigned long long>(with.sync_loads), static_cast<unsigned long long>(without.sync_loads),
        sync_ratio, static_cast<unsigned long long>(with.prefetch_hits), static_cast<unsigned long long>(with.waits),
        static_cast<unsigned long long>(with.prefetches_late), static_cast<unsigned long long>(with.prefetches_dropped),
        static_cast<unsigned long long>(with.evictions));
    std::printf("  %llu units (%llu bytes) kept resident; %.0f bytes loaded per step\n",
                static_cast<unsigned long long>(with.kept_units), static_cast<unsigned long long>(with.kept_bytes),
                static_cast<double>(with.bytes_loaded) / steps);
    std::printf(
        "  loads: %.0f us/MB on the step's path (no prefetch: %.2f ms per step against %.2f ms of resident "
        "compute; one core for both bounds paged/resident at %.3f), %.0f us/MB with prefetch (wall clock)\n",
        bound.us_per_mb_without, bound.load_ms_per_step, bound.resident_ms_per_step, bound.one_core,
        bound.us_per_mb_with);
    if (refilled > 0) {
      std::printf("  %llu bytes found in small page-cache folios and read from the file again (--refill-above)\n",
                  static_cast<unsigned long long>(refilled));
    }
  }
  return 0;
}

// `bench --engine-only`: the engine alone, measured as llama.cpp's llama-bench measures (pp / tg): the prompt
// (BOS + n_prompt - 1 tokens) in batched waves without generating, and generation of n_gen tokens after BOS.
int run_engine_bench(const Options& o, const Model& model, const EngineOptions& engine_options) {
  std::vector<double> prompt, generation, prompt_cpu, generation_cpu;
  for (int r = 0; r < o.repeat; ++r) {
    const Throughput p = measure_throughput(model, ThroughputPath::Engine, o.bench_prompt, 1, engine_options, o.rounds);
    const Throughput g = measure_throughput(model, ThroughputPath::Engine, 1, o.bench_gen, engine_options, o.rounds);
    prompt.push_back(p.prompt_tok_per_s);
    prompt_cpu.push_back(p.prompt_tok_per_cpu_s);
    generation.push_back(g.tok_per_s);
    generation_cpu.push_back(g.tok_per_cpu_s);
  }
  if (o.json) {
    std::printf(
        "{\"model\": \"%s\", \"n_prompt\": %d, \"n_gen\": %d, \"threads\": %u, \"kernels\": \"%s\", "
        "\"prompt_tok_per_s\": %.1f, \"tok_per_s\": %.1f, \"prompt_tok_per_cpu_s\": %.1f, \"tok_per_cpu_s\": %.1f}\n",
        o.model.c_str(), o.bench_prompt, o.bench_gen, o.threads, mmsb::simd_level_name(kernels().level),
        median_of(prompt), median_of(generation), median_of(prompt_cpu), median_of(generation_cpu));
  } else {
    std::printf(
        "model %s, kernels %s, %u thread(s): prompt (pp%d) %.1f tok/s, generation (tg%d) %.1f tok/s; per CPU "
        "second: %.1f and %.1f\n",
        o.model.c_str(), mmsb::simd_level_name(kernels().level), o.threads, o.bench_prompt, median_of(prompt),
        o.bench_gen, median_of(generation), median_of(prompt_cpu), median_of(generation_cpu));
  }
  return 0;
}

int run_bench(const Options& o) {
  if (o.model.empty()) throw mmsb::Error(mmsb::ErrorCode::InvalidArgument, "no model given; use -m MODEL (see --help)");
  if (!o.lora.empty()) {
    throw mmsb::Error(mmsb::ErrorCode::InvalidArgument, "bench measures the base model: it does not take --lora");
  }
  LoadOptions load;
  load.context_length = o.context;
  Model model = load_model(o.model, load);
  EngineOptions engine_options;
  engine_options.threads = o.threads;
  engine_options.prefill_batch = o.prefill_batch;
  if (o.engine_only) {
    measure_throughput(model, ThroughputPath::Engine, 2, 2, engine_options);  // warm-up: page faults, caches
    return run_engine_bench(o, model, engine_options);
  }
  // Warm up once (page faults of the mapping, allocator caches), then measure both paths alternately in the same
  // run and keep the median of each figure, so that noise from other processes hits both alike.
  measure_throughput(model, ThroughputPath::Engine, o.bench_prompt, o.bench_gen, engine_options);
  std::vector<Throughput> engines, directs, per_token;
  const bool progress = isatty(STDERR_FILENO) != 0;  // a progress line on a terminal only
  for (int r = 0; r < o.repeat; ++r) {
    if (progress) std::fprintf(stderr, "\rbench: repetition %d of %d ", r + 1, o.repeat);
    engines.push_back(
        measure_throughput(model, ThroughputPath::Engine, o.bench_prompt, o.bench_gen, engine_options, o.rounds));
    directs.push_back(
        measure_throughput(model, ThroughputPath::Direct, o.bench_prompt, o.bench_gen, engine_options, o.rounds));
    if (engines.back().checksum != directs.back().checksum) {
      throw mmsb::Error(mmsb::ErrorCode::Internal, "bench: the engine and the direct loop generated different tokens");
    }
    // The prompt one wave per token (the path before batched prefill), as the baseline of the batched figure.
    per_token.push_back(measure_throughput(model, ThroughputPath::Engine, o.bench_prompt, o.bench_gen, engine_options,
                                           o.rounds, /*batched_prompt=*/false));
    if (per_token.back().checksum != engines.back().checksum) {
      throw mmsb::Error(mmsb::ErrorCode::Internal, "bench: batched and per-token prompts generated different tokens");
    }
  }
  if (progress) std::fprintf(stderr, "\r%-40s\r", "");
  if (!o.mem_budget.empty()) return run_paged_bench(o, model, engine_options, engines);
  auto median = [](std::vector<Throughput> runs, double Throughput::*field) {
    std::sort(runs.begin(), runs.end(),
              [field](const Throughput& a, const Throughput& b) { return a.*field < b.*field; });
    return runs[runs.size() / 2].*field;
  };
  Throughput engine{median(engines, &Throughput::prompt_tok_per_s), median(engines, &Throughput::tok_per_s), 0, {}};
  Throughput direct{median(directs, &Throughput::prompt_tok_per_s), median(directs, &Throughput::tok_per_s), 0, {}};
  const double serial_prompt = median(per_token, &Throughput::prompt_tok_per_s);
  if (o.json) {
    std::printf(
        "{\"model\": \"%s\", \"n_prompt\": %d, \"n_gen\": %d, \"threads\": %u, \"kernels\": \"%s\", "
        "\"prefill_batch\": %u, \"prompt_tok_per_s\": %.1f, \"tok_per_s\": %.1f, \"direct_prompt_tok_per_s\": %.1f, "
        "\"direct_tok_per_s\": %.1f, \"vs_direct_ratio\": %.4f, \"per_token_prompt_tok_per_s\": %.1f, "
        "\"prompt_batched_vs_per_token\": %.3f}\n",
        o.model.c_str(), o.bench_prompt, o.bench_gen, o.threads, mmsb::simd_level_name(kernels().level),
        o.prefill_batch, engine.prompt_tok_per_s, engine.tok_per_s, direct.prompt_tok_per_s, direct.tok_per_s,
        engine.tok_per_s / direct.tok_per_s, serial_prompt, engine.prompt_tok_per_s / serial_prompt);
  } else {
    std::printf("model %s (%s), kernels %s, %u thread(s)\n", o.model.c_str(), model.format.c_str(),
                mmsb::simd_level_name(kernels().level), o.threads);
    std::printf("  mmsb engine: prompt %10.0f tok/s   generation %10.0f tok/s\n", engine.prompt_tok_per_s,
                engine.tok_per_s);
    std::printf("  direct loop: prompt %10.0f tok/s   generation %10.0f tok/s   (engine/direct %.3f)\n",
                direct.prompt_tok_per_s, direct.tok_per_s, engine.tok_per_s / direct.tok_per_s);
    std::printf("  prompt one wave per token: %10.0f tok/s   (batched/per-token %.2f, batch %u + 1)\n", serial_prompt,
                engine.prompt_tok_per_s / serial_prompt, o.prefill_batch);
  }
  return 0;
}

// The options of the default command: generate (or chat) with a model.
constexpr const char* refill_help =
    "with --mem-budget and mapped paging: a unit whose load costs more than this many microseconds of CPU "
    "per MiB to map finds the file cached in small (4 KiB) folios; its pages are dropped from the page cache and read "
    "from the file again in 2 MiB folios, which map ~10x faster at every later load (0: never)";
constexpr const char* paging_help =
    "with --mem-budget: how layers load: map (the file's pages, read-only: no copy), copy (pread into buffers the "
    "pager owns), or auto (map, except with --lora, whose merged matrices need copies)";

void add_generate_options(CLI::App& app, Options& o) {
  app.add_option("-m,--model", o.model, "model file: a llama2.c checkpoint (.bin) or GGUF v2/v3 (architecture llama)");
  app.add_option("-z,--tokenizer", o.tokenizer,
                 "llama2.c tokenizer (tok*.bin); required for .bin checkpoints, overrides a GGUF's own vocabulary");
  app.add_option("-p,--prompt", o.prompt, "prompt text (BOS and a leading space are added, as llama2.c does)");
  app.add_option("-n,--steps", o.steps,
                 "how many new tokens to generate (fewer if the context fills or the model "
                 "emits BOS/EOS)")
      ->capture_default_str()
      ->check(range(0, 1 << 30));
  app.add_option("--temp", o.temperature, "sampling temperature; 0 = greedy (argmax)")
      ->capture_default_str()
      ->check(range(0.0f, 100.0f));
  app.add_option("--top-k", o.top_k, "sample only among the K most likely tokens; 0 = no limit")
      ->capture_default_str()
      ->check(range(0, 1 << 30));
  app.add_option("--top-p", o.top_p,
                 "nucleus sampling: the smallest set of tokens whose probability reaches P; 1 = off")
      ->capture_default_str()
      ->check(range(0.0f, 1.0f));
  app.add_option("--seed", o.seed, "seed of the sampler's random generator (runs with the same seed are identical)")
      ->capture_default_str()
      ->check(non_negative<std::uint64_t>());
  app.add_option("-t,--threads", o.threads,
                 "threads: each product and attention is split across them inside the nodes (same results)")
      ->capture_default_str()
      ->check(range(1u, 1024u));
  app.add_option("--ctx", o.context, "KV cache positions; 0 = from the file (at least 512 for GGUF)")
      ->capture_default_str()
      ->check(range(0u, 1u << 24));
  app.add_option("--lora", o.lora,
                 "LoRA adapter (llama.cpp GGUF adapter); repeat to prepare several for --lora-swap-every (one only "
                 "with --mem-budget)");
  app.add_option("--lora-scale", o.lora_scale, "scale of the adapters (times alpha / rank)")->capture_default_str();
  app.add_option("--lora-swap-every", o.lora_swap_every,
                 "swap to the next --lora adapter every N positions (one adapter: adapter and base alternate)")
      ->check(range(0, 1 << 30));
  app.add_flag("-i,--interactive", o.interactive,
               "chat: each stdin line is a turn (-p is the first); the KV cache is kept between turns; /reset");
  const char* budget_help =
      "layer paging: keep at most this many bytes of weights resident (suffix K/M/G, or a percentage of the model "
      "such as 50%); as much of the model as fits stays resident, the rest streams through and is prefetched by a "
      "loader thread";
  app.add_option("--mem-budget", o.mem_budget, budget_help);
  app.add_flag("--no-prefetch", o.no_prefetch, "with --mem-budget: load layers only when needed (no prefetch)");
  app.add_option("--paging", o.paging, paging_help)
      ->capture_default_str()
      ->check(CLI::IsMember({"auto", "map", "copy"}));
  app.add_option("--refill-above", o.refill_above, refill_help)->capture_default_str()->check(CLI::NonNegativeNumber);
}

// The subcommands, each with its options.
struct Commands {
  CLI::App* lora_make;
  CLI::App* bench;
  CLI::App* quantize;
  CLI::App* make_model;
};

CLI::App* add_lora_make_command(CLI::App& app, Options& o) {
  CLI::App* lora_make = app.add_subcommand("lora-make", "write a random LoRA adapter (GGUF) for a model, for tests");
  lora_make->add_option("-m,--model", o.model, "the base model")->required();
  lora_make->add_option("-o,--output", o.lora_out, "adapter file to write")->required();
  lora_make->add_option("--rank", o.lora_rank, "rank")->capture_default_str()->check(range(1u, 1u << 16));
  lora_make->add_option("--alpha", o.lora_alpha, "adapter.lora.alpha (scale = alpha / rank)")->capture_default_str();
  lora_make->add_option("--seed", o.seed, "random seed")->capture_default_str()->check(non_negative<std::uint64_t>());
  lora_make
      ->add_option("--targets", o.lora_targets,
                   "comma-separated kinds: attn_q,attn_k,attn_v,attn_output,ffn_gate,ffn_up,ffn_down")
      ->capture_default_str();
  return lora_make;
}

CLI::App* add_bench_command(CLI::App& app, Options& o) {
  CLI::App* bench = app.add_subcommand("bench", "measure prompt and generation throughput (engine and direct loop)");
  bench->add_option("-m,--model", o.model, "model file")->required();
  bench->add_option("-p,--n-prompt", o.bench_prompt, "prompt tokens to process")
      ->capture_default_str()
      ->check(range(1, 1 << 20));
  bench
      ->add_option("--prefill-batch", o.prefill_batch,
                   "prompt positions per batched wave besides the last (0: one wave per token)")
      ->capture_default_str()
      ->check(range(0u, 1u << 20));
  bench->add_option("-n,--n-gen", o.bench_gen, "tokens to generate")->capture_default_str()->check(range(1, 1 << 20));
  bench->add_option("-t,--threads", o.threads, "threads splitting each product and attention (same results)")
      ->capture_default_str()
      ->check(range(1u, 1024u));
  bench->add_option("-r,--repeat", o.repeat, "repetitions of each path; the medians are reported")
      ->capture_default_str()
      ->check(range(1, 1000));
  bench->add_option("--rounds", o.rounds, "sequences per repetition (each from position 0); the median round counts")
      ->capture_default_str()
      ->check(range(1, 1000));
  bench->add_flag("--json", o.json, "print one JSON object with tok_per_s and prompt_tok_per_s");
  bench->add_flag("--engine-only", o.engine_only,
                  "measure the engine alone as llama-bench does: the prompt of -p tokens without generation, and -n "
                  "tokens generated after BOS (no direct-loop or per-token baselines)");
  bench->add_option("--paging", o.paging, paging_help)
      ->capture_default_str()
      ->check(CLI::IsMember({"auto", "map", "copy"}));
  bench->add_option("--refill-above", o.refill_above, refill_help)
      ->capture_default_str()
      ->check(CLI::NonNegativeNumber);
  bench->add_option("--mem-budget", o.mem_budget,
                    "also measure layer paging under this budget (bytes, K/M/G, or a percentage of the model): the "
                    "paged engine with and without prefetch against the resident one, and the synchronous loads");
  return bench;
}

CLI::App* add_quantize_command(CLI::App& app, Options& o) {
  CLI::App* quantize = app.add_subcommand(
      "quantize",
      "write a GGUF copy of a model with its matrices in another tensor type (rows that do not fit the "
      "type's blocks get a wider type, as llama.cpp does; norm vectors stay F32)");
  quantize->add_option("input", o.quant_in, "GGUF model to read")->required();
  quantize->add_option("output", o.quant_out, "GGUF file to write")->required();
  quantize->add_option("type", o.quant_type, "tensor type: " + quantize_type_names())->required();
  quantize->add_flag("-f,--force", o.force, "overwrite the output file if it exists");
  quantize
      ->add_option("--pad", o.pad,
                   "zero-pad the model's widths to multiples of N first (same function; 256 lets "
                   "the K-quants and ternary types apply to every matrix of a small model)")
      ->check(range<std::uint64_t>(0, 1 << 20));
  return quantize;
}

CLI::App* add_make_model_command(CLI::App& app, Options& o) {
  CLI::App* make = app.add_subcommand(
      "make-model", "write a random-weight Llama model of a tinyllamas shape (GGUF v3, vocabulary 512, context 256)");
  make->add_option("--shape", o.shape, "s15m (dim 288), s42m (512) or s110m (768)")->required();
  make->add_option("--type", o.quant_type, "matrix type: " + quantize_type_names())->default_val("f32");
  make->add_option("--seed", o.seed, "weights seed (equal seeds give the same f32 weights in every type)")
      ->capture_default_str()
      ->check(non_negative<std::uint64_t>());
  make->add_option("-z,--tokenizer", o.tokenizer,
                   "llama2.c tokenizer with 512 pieces (default: tok512.bin of the "
                   "shared models)");
  make->add_option("-o,--output", o.quant_out, "GGUF file to write")->required();
  make->add_flag("-f,--force", o.force, "overwrite the output file if it exists");
  make->add_flag("--llama2c", o.llama2c_format, "write a llama2.c checkpoint (.bin, f32) of the same weights instead");
  return make;
}

}  // namespace

int main(int argc, char** argv) {
  Options o;
  CLI::App app{
      "mmsb-llm: Llama inference on mmsb pages (llama2.c .bin or GGUF models). The text goes to stdout "
      "as it is generated; statistics go to stderr."};
  add_generate_options(app, o);
  const Commands commands{add_lora_make_command(app, o), add_bench_command(app, o), add_quantize_command(app, o),
                          add_make_model_command(app, o)};
  // Every error, of the command line or of the run, exits with 2 (docs/transformer.md).
  return mmsb::program::run("mmsb-llm", app, argc, argv,
                            [&] {
                              if (commands.quantize->parsed()) return run_quantize(o);
                              if (commands.make_model->parsed()) return run_make_model(o);
                              if (commands.lora_make->parsed()) return run_lora_make(o);
                              return commands.bench->parsed() ? run_bench(o) : run_generate(o);
                            },
                            {.usage = 2, .failure = 2});
}
