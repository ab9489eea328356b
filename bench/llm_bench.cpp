// Transformer workload metrics: tokens per second of greedy generation on the shared stories260K model (1 thread,
// 256 tokens generated after BOS), one wave per token on mmsb, and the same maths in a direct loop without the
// runtime (the baseline, measured in the same run). Each repetition checks that both paths generate the same
// tokens. The model files come from ../shared/models (MMSB_SHARED_DIR); a missing file fails the metric.
// At real sizes (issue 21): random-weight models of the tinyllamas shapes made by make_model() (s15m, s42m, s110m
// in f32, q8_0, q4_0, q4_k), measured as llama.cpp's llama-bench measures: decode = 128 tokens generated after BOS
// (llm_tok_per_s_<shape>_<type>), prompt = 128 prompt tokens in batched waves (llm_prompt_tok_per_s_<shape>_<type>);
// llama.cpp itself is measured on the same files outside this suite (docs/benchmarks.md).
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <map>
#include <memory>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "bench/harness.hpp"
#include "mmsb/llm/make_model.hpp"
#include "mmsb/llm/model.hpp"
#include "mmsb/llm/paged_model.hpp"
#include "mmsb/llm/quantize.hpp"
#include "mmsb/llm/throughput.hpp"

namespace mmsb::bench {
namespace {

constexpr int kGenerated = 256;
constexpr int kRounds = 15;  // each repetition: the median of 15 rounds of 1 + 256 steps

const llm::Model& model(const std::string& file) {
  static std::map<std::string, std::unique_ptr<llm::Model>> cache;
  auto& slot = cache[file];
  if (!slot) {
    const std::string path = std::string(MMSB_SHARED_DIR) + "/models/" + file;
    try {
      slot = std::make_unique<llm::Model>(llm::load_model(path));
    } catch (const std::exception& e) {
      throw std::runtime_error(std::string("llm bench needs the shared test model: ") + e.what());
    }
  }
  return *slot;
}

double tok_per_s(const std::string& file, llm::ThroughputPath path) {
  const llm::Model& m = model(file);
  llm::Throughput t = llm::measure_throughput(m, path, 1, kGenerated, {}, kRounds);
  llm::Throughput other = llm::measure_throughput(
      m, path == llm::ThroughputPath::Engine ? llm::ThroughputPath::Direct : llm::ThroughputPath::Engine, 1, 8);
  llm::Throughput same = llm::measure_throughput(m, path, 1, 8);
  if (other.checksum != same.checksum) throw std::runtime_error("llm bench: engine and direct loop disagree");
  return t.tok_per_s;
}

Register f32("llm_tok_per_s_f32", "mmsb-llm engine: greedy tokens/s, stories260K f32 GGUF, 1 thread, 256 after BOS",
             [] { return tok_per_s("stories260K-f32.gguf", llm::ThroughputPath::Engine); });
Register q8("llm_tok_per_s_q8_0", "mmsb-llm engine: greedy tokens/s, stories260K Q8_0 GGUF, 1 thread, 256 after BOS",
            [] { return tok_per_s("stories260K-Q8_0.gguf", llm::ThroughputPath::Engine); });
Register q4("llm_tok_per_s_q4_0", "mmsb-llm engine: greedy tokens/s, stories260K Q4_0 GGUF, 1 thread, 256 after BOS",
            [] { return tok_per_s("stories260K-Q4_0.gguf", llm::ThroughputPath::Engine); });
Register direct("llm_direct_tok_per_s_f32",
                "baseline: the same f32 greedy generation as a direct loop without the runtime (same kernels)",
                [] { return tok_per_s("stories260K-f32.gguf", llm::ThroughputPath::Direct); });
// The ratio is measured on its own rather than from the two medians above: engine and direct runs alternate
// within one process, so a burst of noise from other tenants hits both sides alike.
Register ratio("llm_f32_vs_direct_ratio",
               "engine tokens/s over direct-loop tokens/s, f32, alternating 5 runs of each (target >= 0.9)", [] {
                 const llm::Model& m = model("stories260K-f32.gguf");
                 std::vector<double> on_engine, on_direct;
                 for (int i = 0; i < 5; ++i) {
                   on_engine.push_back(
                       llm::measure_throughput(m, llm::ThroughputPath::Engine, 1, kGenerated, {}, kRounds).tok_per_s);
                   on_direct.push_back(
                       llm::measure_throughput(m, llm::ThroughputPath::Direct, 1, kGenerated, {}, kRounds).tok_per_s);
                 }
                 std::sort(on_engine.begin(), on_engine.end());
                 std::sort(on_direct.begin(), on_direct.end());
                 return on_engine[2] / on_direct[2];
               });

// Batched prefill: a 128-token prompt processed in batched waves (64 + 1 positions each) against the same prompt
// one wave per token (the baseline, also measured on its own); the ratio alternates 5 runs of each in one process.
// Each run is the median of 15 rounds. Both paths must generate the same tokens afterwards.
constexpr int kPromptTokens = 128;
double prompt_speed(bool batched) {
  const llm::Model& m = model("stories260K-f32.gguf");
  return llm::measure_throughput(m, llm::ThroughputPath::Engine, kPromptTokens, 1, {}, kRounds, batched)
      .prompt_tok_per_s;
}
void check_prompt_paths_agree() {
  const llm::Model& m = model("stories260K-f32.gguf");
  if (llm::measure_throughput(m, llm::ThroughputPath::Engine, kPromptTokens, 8, {}, 1, true).checksum !=
      llm::measure_throughput(m, llm::ThroughputPath::Engine, kPromptTokens, 8, {}, 1, false).checksum) {
    throw std::runtime_error("llm bench: batched and per-token prompts generated different tokens");
  }
}
std::pair<double, double> prompt_medians() {
  check_prompt_paths_agree();
  std::vector<double> batched, per_token;
  for (int i = 0; i < 5; ++i) {
    batched.push_back(prompt_speed(true));
    per_token.push_back(prompt_speed(false));
  }
  std::sort(batched.begin(), batched.end());
  std::sort(per_token.begin(), per_token.end());
  return {batched[2], per_token[2]};
}
Register prompt_f32("llm_prompt_tok_per_s_f32",
                    "mmsb-llm engine: prompt tokens/s, 128-token prompt in batched waves (64 + 1), stories260K f32, "
                    "1 thread",
                    [] {
                      check_prompt_paths_agree();
                      return prompt_speed(true);
                    });
Register prompt_per_token("llm_prompt_per_token_tok_per_s_f32",
                          "baseline: the same 128-token prompt one wave per token (the path before batched prefill)",
                          [] { return prompt_speed(false); });
Register prompt_ratio("llm_prompt_batched_vs_per_token_ratio",
                      "batched prompt tokens/s over one wave per token, f32, 128 tokens, alternating 5 runs of each",
                      [] {
                        const auto [batched, per_token] = prompt_medians();
                        return batched / per_token;
                      });

// Layer paging (llm/include/mmsb/llm/paged_model.hpp) at a budget of half the model. stories260K (1.1 MiB in f32,
// 0.35 MiB in Q8_0) fits in a core's L2 cache, where the resident engine reads its weights; paging then only adds
// copies between cores. The paging targets are measured on a model larger than L2: stories260K zero-padded to
// widths of 256 (the same function: `mmsb-llm quantize --pad 256`) in Q8_0, 2.3 MiB, written to a temporary
// directory. The f32 stories260K ratio is kept as a reference.
// The padded model in a temporary directory of its own, removed with the object (metrics run in a child process
// that leaves by _exit(), so this is a local of each repetition, not a static).
struct PaddedQ8Model {
  std::filesystem::path dir;
  std::unique_ptr<llm::Model> model;
  PaddedQ8Model() : dir(std::filesystem::temp_directory_path() / ("mmsb-bench-paging-" + std::to_string(::getpid()))) {
    std::filesystem::create_directories(dir);
    try {
      const std::string out = (dir / "stories260K-pad256-q8_0.gguf").string();
      llm::QuantizeOptions o;
      o.type = llm::TensorType::Q8_0;
      o.pad_to = 256;
      o.force = true;
      llm::quantize_gguf(std::string(MMSB_SHARED_DIR) + "/models/stories260K-f32.gguf", out, o);
      model = std::make_unique<llm::Model>(llm::load_model(out));
    } catch (...) {
      remove();
      throw;
    }
  }
  ~PaddedQ8Model() {
    model.reset();
    remove();
  }
  PaddedQ8Model(const PaddedQ8Model&) = delete;
  PaddedQ8Model& operator=(const PaddedQ8Model&) = delete;
  void remove() noexcept {
    std::error_code ignored;
    std::filesystem::remove_all(dir, ignored);
  }
};

llm::EngineOptions paged_options(const llm::Model& m, bool prefetch) {
  llm::EngineOptions o;
  o.paging = llm::PagingOptions{};
  o.paging->budget = llm::PagedModel::model_bytes(m) / 2;
  o.paging->prefetch = prefetch;
  return o;
}

// Paged with prefetch over fully resident tokens/s, alternating 5 runs of each: the median of each side.
double paged_ratio(const llm::Model& m, int generated, int rounds) {
  std::vector<double> paged, resident;
  for (int i = 0; i < 5; ++i) {
    const auto p =
        llm::measure_throughput(m, llm::ThroughputPath::Engine, 1, generated, paged_options(m, true), rounds);
    const auto r = llm::measure_throughput(m, llm::ThroughputPath::Engine, 1, generated, {}, rounds);
    if (p.checksum != r.checksum) throw std::runtime_error("llm bench: paging changed tokens");
    paged.push_back(p.tok_per_s);
    resident.push_back(r.tok_per_s);
  }
  std::sort(paged.begin(), paged.end());
  std::sort(resident.begin(), resident.end());
  return paged[2] / resident[2];
}

Register sync_loads("llm_sync_loads_ratio",
                    "layer paging at half of stories260K padded to 256 wide, Q8_0 (2.3 MiB): synchronous loads with "
                    "prefetch / without, greedy 1 + 256 steps (target <= 0.1)",
                    [] {
                      const PaddedQ8Model padded;
                      const llm::Model& m = *padded.model;
                      const auto with = llm::measure_throughput(m, llm::ThroughputPath::Engine, 1, kGenerated,
                                                                paged_options(m, true));
                      const auto without = llm::measure_throughput(m, llm::ThroughputPath::Engine, 1, kGenerated,
                                                                   paged_options(m, false));
                      if (with.checksum != without.checksum)
                        throw std::runtime_error("llm bench: paging changed tokens");
                      return static_cast<double>(with.paging.sync_loads) /
                             static_cast<double>(without.paging.sync_loads);
                    });
Register paged_tok_ratio("llm_paged_tok_s_ratio",
                         "layer paging at half of stories260K padded to 256 wide, Q8_0 (2.3 MiB), with prefetch: "
                         "tokens/s over fully resident, alternating 5 runs of each (target >= 0.8)",
                         [] {
                           const PaddedQ8Model padded;
                           return paged_ratio(*padded.model, 128, 3);
                         });
Register paged_small_ratio("llm_paged_tok_s_ratio_stories260k_f32",
                           "reference: the same ratio on stories260K f32 (1.1 MiB, within L2: paging only adds "
                           "copies between cores)",
                           [] { return paged_ratio(model("stories260K-f32.gguf"), kGenerated, kRounds); });

// --- the tinyllamas shapes --------------------------------------------------------------------------------------

// The model file of a shape and type (seed 1), made once into a folder of the temporary directory that later runs
// reuse (make_model writes a temporary file and renames it, so a file there is always whole).
const llm::Model& shape_model(const std::string& shape, const std::string& type) {
  static std::map<std::string, std::unique_ptr<llm::Model>> cache;
  auto& slot = cache[shape + type];
  if (!slot) {
    const std::filesystem::path dir = std::filesystem::temp_directory_path() / "mmsb-bench-models";
    std::filesystem::create_directories(dir);
    const std::string path = (dir / (shape + "-" + type + "-seed1.gguf")).string();
    if (!std::filesystem::exists(path)) {
      llm::MakeModelOptions o;
      o.shape = llm::model_shape_from_name(shape);
      o.type = llm::quantize_type_from_name(type);
      o.seed = 1;
      o.tokenizer = std::string(MMSB_SHARED_DIR) + "/models/tok512.bin";
      llm::make_model(o, path);
    }
    llm::LoadOptions lo;
    lo.context_length = 256;
    slot = std::make_unique<llm::Model>(llm::load_model(path, lo));
  }
  return *slot;
}

constexpr int kShapeTokens = 128;  // llama-bench's tg128 / pp128

double shape_decode(const std::string& shape, const std::string& type, unsigned threads) {
  llm::EngineOptions o;
  o.threads = threads;
  return llm::measure_throughput(shape_model(shape, type), llm::ThroughputPath::Engine, 1, kShapeTokens, o).tok_per_s;
}
double shape_prompt(const std::string& shape, const std::string& type) {
  return llm::measure_throughput(shape_model(shape, type), llm::ThroughputPath::Engine, kShapeTokens, 1)
      .prompt_tok_per_s;
}

struct ShapeMetrics {
  std::vector<Register> registered;
  ShapeMetrics() {
    for (const char* shape : {"s15m", "s42m", "s110m"}) {
      for (const char* type : {"f32", "q8_0", "q4_0", "q4_k"}) {
        const std::string s = shape, t = type, what = s + " " + t + " (random weights, vocabulary 512)";
        auto decode = [s, t] { return shape_decode(s, t, 1); };
        auto prompt = [s, t] { return shape_prompt(s, t); };
        const std::string decode_key = "llm_tok_per_s_" + s + "_" + t,
                          prompt_key = "llm_prompt_tok_per_s_" + s + "_" + t;
        const std::string decode_what = "mmsb-llm engine: decode tokens/s, 128 after BOS, 1 thread, " + what;
        const std::string prompt_what =
            "mmsb-llm engine: prompt tokens/s, 128 tokens in batched waves, 1 thread, " + what;
        if (s == "s15m") {  // the --quick subset: a few MB per model
          registered.emplace_back(decode_key, decode_what, decode);
          registered.emplace_back(prompt_key, prompt_what, prompt);
          continue;
        }
        registered.emplace_back(decode_key, decode_what, decode, Heavy{});
        registered.emplace_back(prompt_key, prompt_what, prompt, Heavy{});
        // Two threads (issue 21: >= 1.6x one thread at 42M and 110M).
        const std::string two_key = "llm_tok_per_s_2t_" + s + "_" + t;
        registered.emplace_back(
            two_key, "as " + decode_key + " with 2 threads", [s, t] { return shape_decode(s, t, 2); }, Heavy{});
        registered.emplace_back(Ratio{"llm_two_thread_decode_ratio_" + s + "_" + t, two_key, decode_key,
                                      "decode tokens/s with 2 threads over 1 (target >= 1.6)"});
      }
    }
  }
} shape_metrics;

}  // namespace
}  // namespace mmsb::bench
