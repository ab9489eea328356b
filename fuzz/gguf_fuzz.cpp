// mmsb-fuzz-gguf: a standalone fuzz driver (no libFuzzer needed) for the model loaders of the transformer workload
// (llm/include/mmsb/llm/model.hpp): mutated copies of real GGUF files and llama2.c checkpoints — bits flipped,
// bytes overwritten with edge values, 64-bit fields set to huge counts, bytes inserted or deleted, files
// truncated. Each mutated file is parsed; when it loads, an Engine is built on it and runs two steps, and one
// loading file in eight is also rewritten by quantize_gguf() (llm/include/mmsb/llm/quantize.hpp). The corpus adds
// super-block files made at start-up by quantize_gguf (stories260K padded to widths of 256, in Q4_K, Q6_K and
// TQ1_0), so the K-quant and ternary kernels run on mutated blocks too.
// LoRA adapters (llm/include/mmsb/llm/lora.hpp) are fuzzed the same way: a random adapter for the Q8_0 model,
// mutated, parsed, and when it parses, prepared, applied and reverted on an engine over that model.
// Every outcome must be success or mmsb::Error. Anything else — another exception, a crash, or an iteration
// running past 30 s — stops the run with the seed and iteration; iteration i draws from its own generator seeded
// with (seed, i), so `--seed S` reproduces a run exactly.
//
//   mmsb-fuzz-gguf --iterations 0 --seconds 600 --seed 7     # ten minutes
//   mmsb-fuzz-gguf --seed 777 --start 16089 --iterations 1 --write-input crash.gguf  # keep one input
//
// Inputs that once failed are listed in fuzz/regressions.txt (ctest replays each); the llm test suite has this driver
// write the GGUF ones again and parses each of them (tests/llm/hostile_test.cpp).
#include <chrono>
#include <csignal>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <fstream>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include <unistd.h>

#include "fuzz/crash_note.hpp"
#include "mmsb/error.hpp"
#include "mmsb/llm/engine.hpp"
#include "mmsb/llm/lora.hpp"
#include "mmsb/llm/model.hpp"
#include "mmsb/llm/quantize.hpp"
#include "program/options.hpp"

namespace {

using mmsb::program::range;

void on_alarm(int) {
  static const char msg[] = "mmsb-fuzz-gguf: an iteration ran longer than 30 s (hang)\n";
  ssize_t ignored = ::write(STDERR_FILENO, msg, sizeof msg - 1);
  (void)ignored;
  ::_exit(3);
}

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error("cannot read " + path + " (the fuzz corpus; see --models)");
  in.seekg(0, std::ios::end);
  std::string out(static_cast<std::size_t>(in.tellg()), '\0');
  in.seekg(0);
  in.read(out.data(), static_cast<std::streamsize>(out.size()));
  return out;
}

struct Seed {
  std::string name;
  std::string bytes;
  bool gguf;
  std::size_t header;  // where mutations concentrate: the metadata and tensor table
  bool lora = false;   // a LoRA adapter (gguf is then true too)
};

// The model LoRA seeds are made for, with one engine to apply them on (built once: engines are not cheap).
struct LoraTarget {
  mmsb::llm::Model model;
  std::unique_ptr<mmsb::llm::Engine> engine;
};
LoraTarget* lora_target = nullptr;

std::string run_lora(const std::string& bytes) {
  try {
    mmsb::llm::LoraAdapter a = mmsb::llm::parse_lora_gguf(std::as_bytes(std::span(bytes.data(), bytes.size())));
    mmsb::llm::LoraSwitcher sw(*lora_target->engine, lora_target->model);
    sw.activate(sw.prepare(a));
    sw.revert();
  } catch (const mmsb::Error&) {
    return "";
  } catch (const std::exception& e) {
    return std::string("unexpected exception: ") + e.what();
  }
  return "";
}

std::string mutate(const Seed& seed, std::mt19937_64& rng) {
  std::string b = seed.bytes;
  auto pick = [&](std::size_t limit) { return static_cast<std::size_t>(rng() % std::max<std::size_t>(limit, 1)); };
  const int edits = 1 + static_cast<int>(rng() % 4);
  for (int e = 0; e < edits && !b.empty(); ++e) {
    // Most edits land in the header, where every byte is structure; some anywhere.
    const std::size_t span = (rng() % 8 == 0) ? b.size() : std::min(seed.header, b.size());
    const std::size_t at = pick(span);
    switch (rng() % 6) {
      case 0:
        b[at] = static_cast<char>(b[at] ^ (1 << (rng() % 8)));
        break;
      case 1: {
        static const unsigned char edge[] = {0x00, 0xFF, 0x7F, 0x80, 0x01, 0x20};
        b[at] = static_cast<char>(edge[rng() % sizeof edge]);
        break;
      }
      case 2: {  // a 64-bit field set to a huge or boundary value
        static const std::uint64_t values[] = {~0ull, 1ull << 63, 1ull << 32, 0xFFFFFFFFull, 0, 1, 1ull << 40};
        std::uint64_t v = values[rng() % (sizeof values / sizeof values[0])];
        std::size_t pos = at & ~std::size_t{7};
        if (pos + 8 <= b.size()) std::memcpy(b.data() + pos, &v, 8);
        break;
      }
      case 3:
        b.insert(at, std::string(1 + pick(16), static_cast<char>(rng())));
        break;
      case 4:
        b.erase(at, 1 + pick(16));
        break;
      default:
        b.resize(pick(b.size()));
        break;
    }
  }
  return b;
}

void write_file(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  if (!out) throw std::runtime_error("cannot write " + path);
}

// Returns "" for an acceptable outcome, else what went wrong. `scratch` is a folder for quantize's files.
std::string run_one(const std::string& bytes, bool gguf, bool quantize, const std::string& scratch) {
  auto owner = std::make_shared<std::string>(bytes);
  auto span = std::as_bytes(std::span(owner->data(), owner->size()));
  try {
    mmsb::llm::Model m = gguf ? mmsb::llm::parse_gguf(span, owner) : mmsb::llm::parse_llama2c(span, owner);
    mmsb::llm::Engine engine(m);
    engine.step(1, 0);
    engine.step(static_cast<int>(m.config.vocab_size - 1), 1);
    if (gguf && quantize) {
      write_file(scratch + "/in.gguf", bytes);
      mmsb::llm::QuantizeOptions o;
      o.type = mmsb::llm::TensorType::Q4_K;
      o.force = true;
      mmsb::llm::quantize_gguf(scratch + "/in.gguf", scratch + "/out.gguf", o);
      mmsb::llm::load_model(scratch + "/out.gguf");  // what quantize writes must load
    }
  } catch (const mmsb::Error&) {
    return "";  // NodeError included: a node refusing a value is a clean failure
  } catch (const std::exception& e) {
    return std::string("unexpected exception: ") + e.what();
  } catch (...) {
    return "unexpected non-standard exception";
  }
  return "";
}

// The seeds: the reference models, a random LoRA adapter, and the small model re-quantized with 256-wide rows to
// the block types it cannot hold otherwise (written in `scratch`). Throws when a model file is missing.
std::vector<Seed> build_corpus(const std::string& models, std::uint64_t seed, const std::string& scratch) {
  std::vector<Seed> corpus;
  corpus.push_back({"stories260K-Q4_0.gguf", read_file(models + "/stories260K-Q4_0.gguf"), true, 14300});
  corpus.push_back({"stories260K-Q8_0.gguf", read_file(models + "/stories260K-Q8_0.gguf"), true, 14300});
  corpus.push_back({"stories260K.bin", read_file(models + "/stories260K.bin"), false, 28});
  static LoraTarget target{mmsb::llm::load_model(models + "/stories260K-Q8_0.gguf"), nullptr};
  target.engine = std::make_unique<mmsb::llm::Engine>(target.model);
  lora_target = &target;
  auto adapter =
      mmsb::llm::serialize_lora_gguf(mmsb::llm::make_random_lora(target.model, 2, 4.0f, seed, {"attn_q", "ffn_down"}));
  std::string adapter_bytes(reinterpret_cast<const char*>(adapter.data()), adapter.size());
  corpus.push_back({"random LoRA adapter", adapter_bytes, true, 1200, true});
  mmsb::llm::QuantizeOptions o;
  o.type = mmsb::llm::TensorType::F32;
  o.pad_to = 256;
  o.force = true;
  mmsb::llm::quantize_gguf(models + "/stories260K-f32.gguf", scratch + "/wide.gguf", o);
  o.pad_to = 0;
  for (auto type : {mmsb::llm::TensorType::Q4_K, mmsb::llm::TensorType::Q6_K, mmsb::llm::TensorType::TQ1_0}) {
    o.type = type;
    mmsb::llm::quantize_gguf(scratch + "/wide.gguf", scratch + "/seed.gguf", o);
    const std::string name =
        "stories260K-pad256-" + std::string(*mmsb::llm::tensor_type_name(static_cast<std::uint32_t>(type)));
    corpus.push_back({name, read_file(scratch + "/seed.gguf"), true, 14300});
  }
  return corpus;
}

// The fuzz loop; returns the exit code (0: every outcome was acceptable, 1: a failure, reported on stderr).
int fuzz(std::uint64_t iterations, std::uint64_t first, std::uint64_t seed, double seconds, const std::string& models,
         const std::string& write_input) {
  if (iterations == 0 && seconds <= 0) {
    throw mmsb::Error(mmsb::ErrorCode::InvalidArgument, "give --iterations or --seconds");
  }
  char scratch_template[] = "/tmp/mmsb-fuzz-gguf-XXXXXX";
  if (::mkdtemp(scratch_template) == nullptr) {
    std::fprintf(stderr, "mmsb-fuzz-gguf: cannot create a scratch folder in /tmp\n");
    return 2;
  }
  const std::string scratch = scratch_template;
  struct Cleanup {
    std::string dir;
    ~Cleanup() {
      for (const char* f : {"/wide.gguf", "/seed.gguf", "/in.gguf", "/out.gguf", "/out.gguf.tmp"}) {
        std::remove((dir + f).c_str());
      }
      ::rmdir(dir.c_str());
    }
  } cleanup{scratch};
  std::vector<Seed> corpus;
  try {
    corpus = build_corpus(models, seed, scratch);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "mmsb-fuzz-gguf: %s\n", e.what());
    return 2;
  }
  std::signal(SIGALRM, on_alarm);
  mmsb::fuzz::CrashNote::install("mmsb-fuzz-gguf");
  const auto start = std::chrono::steady_clock::now();
  std::uint64_t done = 0;
  for (std::uint64_t i = first; iterations == 0 || i - first < iterations; ++i) {
    if (seconds > 0 && std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count() > seconds) break;
    std::seed_seq sequence{static_cast<std::uint32_t>(seed), static_cast<std::uint32_t>(seed >> 32),
                           static_cast<std::uint32_t>(i), static_cast<std::uint32_t>(i >> 32)};
    std::mt19937_64 rng(sequence);
    const Seed& s = corpus[rng() % corpus.size()];
    const std::string input = mutate(s, rng);
    if (!write_input.empty()) write_file(write_input, input);
    ::alarm(30);
    mmsb::fuzz::CrashNote::set(seed, i);
    std::string failure = s.lora ? run_lora(input) : run_one(input, s.gguf, rng() % 8 == 0, scratch);
    ::alarm(0);
    if (!failure.empty()) {
      std::fprintf(stderr,
                   "mmsb-fuzz-gguf: seed %llu iteration %llu (%s; --seed %llu --start %llu --iterations 1 "
                   "replays it): %s\n",
                   static_cast<unsigned long long>(seed), static_cast<unsigned long long>(i), s.name.c_str(),
                   static_cast<unsigned long long>(seed), static_cast<unsigned long long>(i), failure.c_str());
      return 1;
    }
    ++done;
  }
  std::printf("mmsb-fuzz-gguf: %llu iterations, no failure\n", static_cast<unsigned long long>(done));
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"mmsb-fuzz-gguf: fuzzes the GGUF and llama2.c loaders with mutated real model files"};
  std::uint64_t iterations = 2000, seed = 1, first = 0;
  double seconds = 0;
  std::string models = MMSB_SHARED_DIR "/models";
  app.add_option("--iterations", iterations, "iterations to run (0 = until --seconds)")
      ->capture_default_str()
      ->check(range<std::uint64_t>(0, std::uint64_t{1} << 40));
  app.add_option("--seconds", seconds, "stop after this long (0 = no limit)")
      ->capture_default_str()
      ->check(range(0.0, 1e9));
  app.add_option("--seed", seed, "seed; iteration i uses (seed, i)")
      ->capture_default_str()
      ->check(mmsb::program::non_negative<std::uint64_t>());
  app.add_option("--start", first, "the first iteration (to replay iteration I alone: --start I --iterations 1)")
      ->capture_default_str()
      ->check(mmsb::program::non_negative<std::uint64_t>());
  app.add_option("--models", models, "folder with the corpus model files")->capture_default_str();
  std::string write_input;
  app.add_option("--write-input", write_input,
                 "write each iteration's input to this file before running it (with --start I --iterations 1: that "
                 "iteration's input, to keep as a regression file)");
  return mmsb::program::run("mmsb-fuzz-gguf", app, argc, argv,
                            [&] { return fuzz(iterations, first, seed, seconds, models, write_input); });
}
