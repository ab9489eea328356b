// mmsb-fuzz-log: a standalone fuzz driver (no libFuzzer needed) for the parsers of outside bytes in serialize/:
//   (a) decode_commit(), decode_event() and decode_delta_batch() (distributed/) on random byte strings and on mutated
//       valid commit and delta-batch messages;
//   (b) LogReader on log directories whose segment files (written by LogWriter) were mutated: bits flipped,
//       bytes inserted, deleted, overwritten with edge values, files truncated or removed;
//   (c) now and then LogWriter opening such a directory: when the reader accepted it, the writer must too, and
//       afterwards the log must read back cleanly with the same records;
//   (d) the checkpoint loader on mutated checkpoint files (stored and zstd-compressed), and now and then the
//       recovery of a directory holding such a checkpoint and a log (load_state()).
// Every outcome must be success or mmsb::Error with code Corruption or NotFound. Anything else — another
// exception, a crash, or an iteration running past 30 s — stops the run with the seed and iteration number;
// iteration i draws from its own generator seeded with (seed, i), so `--seed S` reproduces a run exactly.
//
//   mmsb-fuzz-log --iterations 0 --seconds 3600 --seed 7     # one hour; see docs/durability.md
#include <algorithm>
#include <array>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <exception>
#include <filesystem>
#include <fstream>
#include <mmsb/mmsb.hpp>
#include <random>
#include <span>
#include <string>
#include <vector>

#include <unistd.h>
#include <csignal>

#include "fuzz/crash_note.hpp"
#include "program/options.hpp"
#include "serialize/checkpoint.hpp"
#include "serialize/codec.hpp"
#include "serialize/log.hpp"

namespace {

namespace fs = std::filesystem;
using mmsb::program::range;
using mmsb::serialize::DecodedCommit;

constexpr unsigned kHangSeconds = 30;

void on_alarm(int) {
  static const char msg[] = "mmsb-fuzz-log: an iteration ran longer than 30 s (hang)\n";
  ssize_t ignored = ::write(STDERR_FILENO, msg, sizeof msg - 1);
  (void)ignored;
  ::_exit(3);
}

struct Segment {
  std::string name;
  std::string bytes;
};

// The valid inputs mutations start from: commit message bodies and the segment files of one log.
struct Corpus {
  std::vector<std::string> bodies;
  std::vector<Segment> segments;
  std::vector<std::string> checkpoints;  // whole checkpoint files, stored and compressed
};

std::string read_file(const fs::path& path) {
  std::string out(fs::file_size(path), '\0');
  std::ifstream in(path, std::ios::binary);
  in.read(out.data(), static_cast<std::streamsize>(out.size()));
  if (!in) throw std::runtime_error("cannot read " + path.string());
  return out;
}

void write_file(const fs::path& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  if (!out) throw std::runtime_error("cannot write " + path.string());
}

// Writes a small log with every kind of record (created, resized, written with and without undo, deleted pages)
// over several segments, and collects its segment files and the bodies of its records.
Corpus make_corpus(const fs::path& dir, std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  {
    mmsb::serialize::LogOptions options;
    options.segment_bytes = 600;
    options.sync = mmsb::serialize::SyncPolicy::None;
    auto log = std::make_shared<mmsb::serialize::LogWriter>(dir, options);
    for (bool undo : {true, false}) {
      mmsb::RuntimeOptions rt_options;
      rt_options.record_undo = undo;
      rt_options.first_lsn = log->last_lsn() + 1;
      mmsb::Runtime rt(rt_options);
      rt.set_commit_sink(log);
      std::vector<mmsb::PageId> pages;
      for (int i = 0; i < 4; ++i) pages.push_back(rt.create_page(16 + rng() % 64));
      for (int i = 0; i < 12; ++i) {
        auto txn = rt.begin();
        txn.set_intent(i % 2 ? "transfer" : "");
        txn.set_source(static_cast<std::uint32_t>(i));
        for (mmsb::PageId p : pages) {
          if (rng() % 2) continue;
          std::uint64_t size = rt.info(p).size;
          if (rng() % 5 == 0) txn.resize(p, size = rng() % 96);
          const std::uint64_t value = rng();
          if (size >= sizeof value) txn.write_value(p, rng() % (size - sizeof value + 1), value);
        }
        txn.commit();
      }
      rt.delete_page(pages.back());
    }
  }
  Corpus corpus;
  for (const auto& entry : fs::directory_iterator(dir)) {
    corpus.segments.push_back({entry.path().filename().string(), read_file(entry.path())});
  }
  std::sort(corpus.segments.begin(), corpus.segments.end(),
            [](const Segment& a, const Segment& b) { return a.name < b.name; });
  mmsb::serialize::LogReader reader(dir);
  for (DecodedCommit c; reader.next(c);) {
    corpus.bodies.push_back(mmsb::serialize::encode_commit(c.record()));
    if (!c.deltas.empty()) {  // the same deltas as a distributed superstep's DeltaBatch message
      std::vector<const mmsb::Delta*> deltas;
      for (const mmsb::Delta& d : c.deltas) deltas.push_back(&d);
      std::string batch;
      mmsb::serialize::append_delta_batch(1, c.lsn, 2, deltas, batch);
      corpus.bodies.push_back(std::move(batch));
    }
  }
  for (int level : {0, 3}) {
    const fs::path ck_dir = dir.parent_path() / ("checkpoint-seed-" + std::to_string(level));
    mmsb::DurableOptions options;
    options.sync = mmsb::SyncPolicy::None;
    options.checkpoint_compression_level = level;
    mmsb::DurableRuntime db(ck_dir, options);
    mmsb::Runtime& rt = db.runtime();
    std::vector<mmsb::PageId> pages;
    for (int i = 0; i < 5; ++i) pages.push_back(rt.create_page(8 + rng() % 120));
    auto txn = rt.begin();
    for (mmsb::PageId p : pages) txn.write_value<std::uint64_t>(p, 0, rng());
    txn.commit();
    db.propagator().derive_passthrough(pages[1], pages[0], mmsb::ByteRemap{0, 8, 0});
    db.propagator().add_dependency(pages[2], pages[3], mmsb::EdgeKind::Control);
    corpus.checkpoints.push_back(read_file(db.checkpoint().file));
  }
  if (corpus.segments.size() < 2 || corpus.bodies.size() < 20) {
    throw std::runtime_error("the seed log is smaller than expected (" + std::to_string(corpus.segments.size()) +
                             " segments, " + std::to_string(corpus.bodies.size()) + " records)");
  }
  return corpus;
}

std::string random_bytes(std::mt19937_64& rng, std::size_t n) {
  std::string out(n, '\0');
  for (char& c : out) c = static_cast<char>(rng() & 0xff);
  return out;
}

// Overwrites `width` bytes at `at` (clipped to the string) with a little-endian value likely to hit an edge.
void put_edge_value(std::string& s, std::size_t at, std::mt19937_64& rng) {
  static constexpr std::array<std::uint64_t, 9> kEdges = {0,
                                                          1,
                                                          0x7f,
                                                          0x80,
                                                          0xffffffffu,
                                                          0x7fffffffu,
                                                          (std::uint64_t{64} << 20) + 1,
                                                          ~std::uint64_t{0},
                                                          std::uint64_t{1} << 63};
  const std::uint64_t v = kEdges[rng() % kEdges.size()];
  const std::size_t width = rng() % 2 ? 4 : 8;
  for (std::size_t i = 0; i < width && at + i < s.size(); ++i) s[at + i] = static_cast<char>((v >> (8 * i)) & 0xff);
}

// Applies 1–4 random edits to `s`.
void mutate(std::string& s, std::mt19937_64& rng) {
  const int edits = 1 + static_cast<int>(rng() % 4);
  for (int e = 0; e < edits; ++e) {
    const std::size_t at = s.empty() ? 0 : rng() % (s.size() + 1);
    switch (rng() % 7) {
      case 0:  // flip one bit
        if (!s.empty()) s[at % s.size()] = static_cast<char>(s[at % s.size()] ^ (1 << (rng() % 8)));
        break;
      case 1:  // set one byte
        if (!s.empty()) s[at % s.size()] = static_cast<char>(rng() & 0xff);
        break;
      case 2:  // insert a few random bytes
        s.insert(at, random_bytes(rng, 1 + rng() % 16));
        break;
      case 3:  // delete a few bytes
        if (at < s.size()) s.erase(at, 1 + rng() % 16);
        break;
      case 4:  // truncate
        s.resize(at);
        break;
      case 5:  // duplicate a range
        if (at < s.size()) s.insert(rng() % (s.size() + 1), s.substr(at, 1 + rng() % 32));
        break;
      default:  // an edge value, often a length or a varint
        if (!s.empty()) put_edge_value(s, at % s.size(), rng);
        break;
    }
  }
}

// Thrown when an outcome breaks the contract; carries what to report.
struct Violation {
  std::string what;
};

void check_error(const mmsb::Error& e, const char* where) {
  if (e.code() != mmsb::ErrorCode::Corruption && e.code() != mmsb::ErrorCode::NotFound) {
    throw Violation{std::string(where) + " threw a mmsb::Error that is neither corruption nor not_found: " + e.what()};
  }
}

void fuzz_decode(const std::string& bytes) {
  try {
    DecodedCommit c = mmsb::serialize::decode_commit(bytes);
    for (const mmsb::Delta& d : c.deltas) d.validate();  // what decoding accepted must be a valid delta
  } catch (const mmsb::Error& e) {
    check_error(e, "decode_commit");
  }
  try {
    (void)mmsb::serialize::decode_event(bytes);
  } catch (const mmsb::Error& e) {
    check_error(e, "decode_event");
  }
  try {
    const mmsb::serialize::DecodedDeltaBatch batch = mmsb::serialize::decode_delta_batch(bytes);
    for (const mmsb::Delta& d : batch.deltas) d.validate();
  } catch (const mmsb::Error& e) {
    check_error(e, "decode_delta_batch");
  }
}

// Reads the whole log; returns the number of records, or -1 when the reader reported an accepted error.
long read_log(const fs::path& dir, std::uint64_t* torn = nullptr) {
  try {
    mmsb::serialize::LogReader reader(dir);
    long records = 0;
    for (DecodedCommit c; reader.next(c);) ++records;
    if (torn) *torn = reader.report().truncated_bytes;
    return records;
  } catch (const mmsb::Error& e) {
    check_error(e, "LogReader");
    return -1;
  }
}

void fuzz_log(const Corpus& corpus, const fs::path& dir, std::mt19937_64& rng, bool open_writer) {
  fs::remove_all(dir);
  if (rng() % 64 != 0) {  // now and then no directory at all: NotFound
    fs::create_directories(dir);
    for (std::size_t i = 0; i < corpus.segments.size(); ++i) {
      std::string bytes = corpus.segments[i].bytes;
      if (rng() % 16 == 0) continue;  // a segment missing
      if (rng() % 3 == 0 || i + 1 == corpus.segments.size()) mutate(bytes, rng);
      write_file(dir / corpus.segments[i].name, bytes);
    }
  }
  const long records = read_log(dir);
  if (!open_writer || records < 0) return;
  // The reader accepted the log (perhaps with a torn tail): a writer must open it, truncating any torn tail, and
  // the log must then read back the same records with no tail left.
  try {
    mmsb::serialize::LogOptions options;
    options.sync = mmsb::serialize::SyncPolicy::None;
    mmsb::serialize::LogWriter writer(dir, options);
  } catch (const mmsb::Error& e) {
    throw Violation{std::string("LogWriter refused a log the reader accepted: ") + e.what()};
  }
  std::uint64_t torn = 0;
  const long again = read_log(dir, &torn);
  if (again != records || torn != 0) {
    throw Violation{"after LogWriter recovery the log reads " + std::to_string(again) + " records (" +
                    std::to_string(torn) + " torn bytes), before it read " + std::to_string(records)};
  }
}

// A mutated checkpoint: parse_checkpoint() must accept it or say Corruption; sometimes the whole recovery
// (checkpoint plus a log) runs on it too.
void fuzz_checkpoint(const Corpus& corpus, const fs::path& dir, std::mt19937_64& rng, std::string& input) {
  input = corpus.checkpoints[rng() % corpus.checkpoints.size()];
  mutate(input, rng);
  mmsb::serialize::CheckpointLimits limits;
  limits.max_body_bytes = std::uint64_t{64} << 20;  // a decompression bomb must be refused, not allocated
  std::uint64_t lsn = 0;
  try {
    mmsb::serialize::CheckpointState state = mmsb::serialize::parse_checkpoint(input, "fuzz", limits);
    lsn = state.lsn;
    for (const auto& page : state.pages) {
      if (page.offset + page.size > state.arena.size()) throw Violation{"an accepted page lies outside the arena"};
    }
  } catch (const mmsb::Error& e) {
    check_error(e, "parse_checkpoint");
    return;
  }
  if (rng() % 4 != 0) return;
  fs::remove_all(dir);
  fs::create_directories(dir);
  write_file(dir / mmsb::serialize::checkpoint_file_name(lsn), input);
  if (rng() % 2) write_file(dir / corpus.segments.back().name, corpus.segments.back().bytes);
  try {
    (void)mmsb::load_state(dir);
  } catch (const mmsb::Error& e) {
    check_error(e, "load_state");
  }
}

// How many iterations fuzzed each kind of input, for the summary line.
struct KindCounts {
  std::uint64_t random = 0, commits = 0, logs = 0, checkpoints = 0;
};

// What one iteration fed to a reader, for its failure report: the bytes, or (a mutated log) the directory.
struct Iteration {
  std::string input;
  bool log_mode = false;
};

// One iteration: picks a kind of input with `rng`, makes it and feeds it to its reader. Throws Violation when the
// reader's outcome is not acceptable.
void fuzz_one(const Corpus& corpus, const fs::path& dir, std::mt19937_64& rng, KindCounts& counts, Iteration& it) {
  switch (rng() % 5) {
    case 0:  // random bytes
      ++counts.random;
      it.input = random_bytes(rng, rng() % 300);
      fuzz_decode(it.input);
      break;
    case 1:  // a mutated valid commit body
      ++counts.commits;
      it.input = corpus.bodies[rng() % corpus.bodies.size()];
      mutate(it.input, rng);
      fuzz_decode(it.input);
      break;
    case 4:  // a mutated checkpoint
      ++counts.checkpoints;
      fuzz_checkpoint(corpus, dir, rng, it.input);
      break;
    default:  // a mutated log
      ++counts.logs;
      it.log_mode = true;
      fuzz_log(corpus, dir, rng, rng() % 8 == 0);
      break;
  }
}

// Reports a failed iteration on stderr with the command that replays it, keeps its input, and returns exit code 1.
int report_failure(std::uint64_t i, std::uint64_t seed, const std::string& what, const Iteration& it,
                   const fs::path& dir) {
  const std::string saved = "mmsb-fuzz-log-failure.bin";
  if (!it.log_mode) write_file(saved, it.input);
  const std::string where =
      it.log_mode ? "the mutated log is kept in " + dir.string() : "the input is saved in " + saved;
  std::fprintf(stderr,
               "mmsb-fuzz-log: FAILED at iteration %llu (--seed %llu --start %llu --iterations 1 replays it): %s\n%s\n",
               static_cast<unsigned long long>(i), static_cast<unsigned long long>(seed),
               static_cast<unsigned long long>(i), what.c_str(), where.c_str());
  return 1;
}

// The fuzz loop; returns the exit code (0: every outcome was acceptable, 1: a violation, reported on stderr).
int fuzz(std::uint64_t iterations, std::uint64_t first, std::uint64_t seed, double seconds) {
  if (iterations == 0 && seconds == 0) {
    throw mmsb::Error(mmsb::ErrorCode::InvalidArgument, "--iterations 0 needs a --seconds limit");
  }

  std::signal(SIGALRM, on_alarm);
  mmsb::fuzz::CrashNote::install("mmsb-fuzz-log");
  const fs::path root = fs::temp_directory_path() / ("mmsb-fuzz-log-" + std::to_string(::getpid()));
  fs::remove_all(root);
  const auto start = std::chrono::steady_clock::now();
  auto elapsed = [&] { return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count(); };
  std::uint64_t i = first;
  KindCounts counts;
  try {
    const Corpus corpus = make_corpus(root / "seed", seed);
    const fs::path dir = root / "log";
    for (; iterations == 0 || i - first < iterations; ++i) {
      if (seconds > 0 && elapsed() > seconds) break;
      ::alarm(kHangSeconds);
      mmsb::fuzz::CrashNote::set(seed, i);
      std::seed_seq seq{seed, i};
      std::mt19937_64 rng(seq);
      Iteration it;
      try {
        fuzz_one(corpus, dir, rng, counts, it);
      } catch (const Violation& v) {
        return report_failure(i, seed, v.what, it, dir);
      } catch (const std::exception& e) {
        return report_failure(i, seed, std::string("unexpected exception: ") + e.what(), it, dir);
      }
    }
    ::alarm(0);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "mmsb-fuzz-log: setup failed: %s\n", e.what());
    return 1;
  }
  fs::remove_all(root);
  std::printf(
      "mmsb-fuzz-log: %llu iterations (%llu random, %llu mutated commits, %llu mutated logs, %llu mutated "
      "checkpoints), seed %llu, %.1f s: ok\n",
      static_cast<unsigned long long>(i - first), static_cast<unsigned long long>(counts.random),
      static_cast<unsigned long long>(counts.commits), static_cast<unsigned long long>(counts.logs),
      static_cast<unsigned long long>(counts.checkpoints), static_cast<unsigned long long>(seed), elapsed());
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  std::uint64_t iterations = 20000;
  std::uint64_t seed = 1;
  std::uint64_t first = 0;
  double seconds = 0;
  CLI::App app{
      "mmsb-fuzz-log: feeds random and mutated bytes to decode_commit(), mutated log segments to LogReader and "
      "LogWriter, and mutated checkpoints to the checkpoint loader and recovery; fails on any outcome other than "
      "success or mmsb::Error(corruption|not_found)."};
  app.add_option("--iterations", iterations, "iterations to run (0: no limit, use --seconds)")
      ->capture_default_str()
      ->check(range<std::uint64_t>(0, std::uint64_t{1} << 40));
  app.add_option("--seed", seed, "seed; a run is reproducible from it")
      ->capture_default_str()
      ->check(mmsb::program::non_negative<std::uint64_t>());
  app.add_option("--start", first, "the first iteration (to replay iteration I alone: --start I --iterations 1)")
      ->capture_default_str()
      ->check(mmsb::program::non_negative<std::uint64_t>());
  app.add_option("--seconds", seconds, "stop after this many seconds (0: no limit)")
      ->capture_default_str()
      ->check(range(0.0, 1e9));
  return mmsb::program::run("mmsb-fuzz-log", app, argc, argv, [&] { return fuzz(iterations, first, seed, seconds); });
}
