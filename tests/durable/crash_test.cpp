// Crash consistency of the durable log, end to end: run the bank example with a log, kill it with SIGKILL at a
// random moment, recover with `--transfers 0`, and check that money was conserved and that every commit the
// killed process reported durable (`committed <lsn>`) is in the recovered log. See docs/durability.md.
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <optional>
#include <random>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include "mmsb/durable.hpp"
#include "serialize/log.hpp"

extern char** environ;

namespace mmsb::serialize {
namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

constexpr std::uint64_t kDefaultSeed = 20261123;
constexpr std::uint64_t kAccounts = 16;

struct Outcome {
  bool exited = false;  // exited normally (else killed by a signal)
  int code = -1;        // exit status, or the signal number
  std::string out;      // everything it wrote to stdout
  std::string err;      // everything it wrote to stderr
};

// Runs `args` with stdout on a pipe and stderr in `err_file`. With `kill_after`, sends SIGKILL that long after the
// start (if the process is still running); otherwise kills it after 60 s as a hang.
Outcome run_process(const std::vector<std::string>& args, const fs::path& err_file,
                    std::optional<std::chrono::milliseconds> kill_after) {
  int fds[2];
  if (::pipe2(fds, O_CLOEXEC) != 0) throw std::runtime_error("pipe2 failed");
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_adddup2(&actions, fds[1], STDOUT_FILENO);
  posix_spawn_file_actions_addopen(&actions, STDERR_FILENO, err_file.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  std::vector<char*> argv;
  for (const auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  pid_t pid = -1;
  const auto start = Clock::now();
  int rc = ::posix_spawn(&pid, argv[0], &actions, nullptr, argv.data(), environ);
  posix_spawn_file_actions_destroy(&actions);
  ::close(fds[1]);
  if (rc != 0) {
    ::close(fds[0]);
    throw std::runtime_error("posix_spawn " + args[0] + " failed: " + std::to_string(rc));
  }

  const auto deadline = start + kill_after.value_or(std::chrono::seconds(60));
  Outcome result;
  bool killed = false;
  char buf[4096];
  for (;;) {
    int timeout_ms = -1;
    if (!killed) {
      auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
      if (left <= 0) {
        ::kill(pid, SIGKILL);
        killed = true;
      } else {
        timeout_ms = static_cast<int>(left);
      }
    }
    pollfd p{fds[0], POLLIN, 0};
    int ready = ::poll(&p, 1, timeout_ms);
    if (ready < 0 && errno == EINTR) continue;
    if (ready == 0) continue;  // deadline reached: kill on the next turn
    ssize_t n = ::read(fds[0], buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;  // EOF: the process closed stdout (exited or died)
    result.out.append(buf, static_cast<std::size_t>(n));
  }
  ::close(fds[0]);
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  result.exited = WIFEXITED(status);
  result.code = result.exited ? WEXITSTATUS(status) : WTERMSIG(status);
  std::ifstream err(err_file);
  std::stringstream ss;
  ss << err.rdbuf();
  result.err = ss.str();
  return result;
}

// The values of complete lines "<key> <value>" (a line cut off by the kill is ignored).
std::vector<std::int64_t> values_of(const std::string& out, const std::string& key) {
  std::vector<std::int64_t> values;
  std::istringstream in(out);
  std::string line;
  const std::string prefix = key + " ";
  while (std::getline(in, line)) {
    if (in.eof()) break;  // no newline after it: incomplete
    if (line.rfind(prefix, 0) == 0) values.push_back(std::stoll(line.substr(prefix.size())));
  }
  return values;
}

std::uint64_t crash_seed() {
  if (const char* s = std::getenv("MMSB_CRASH_SEED")) return std::stoull(s);
  return kDefaultSeed;
}

// One run of the bank example on `dir`, killed after a random delay.
struct BankRun {
  std::string sync;  // the --sync policy
  bool compacting = false;
  std::chrono::milliseconds delay{0};

  std::vector<std::string> args(const fs::path& dir, std::uint64_t seed) const {
    std::vector<std::string> a = {MMSB_BANK_BINARY,
                                  "--log",
                                  dir.string(),
                                  "--accounts",
                                  std::to_string(kAccounts),
                                  "--transfers",
                                  "100000000",
                                  "--threads",
                                  "4",
                                  "--sync",
                                  sync,
                                  "--seed",
                                  std::to_string(seed)};
    if (compacting) {
      for (const char* extra : {"--segment-bytes", "8192", "--checkpoint-every", "700"}) a.emplace_back(extra);
    }
    return a;
  }
};

// Reopens `dir` with the bank example (no transfers): it must recover, hold all the money, and recover at least
// the highest LSN the killed run reported durable.
void expect_bank_recovers(const fs::path& dir, const fs::path& err_file, const std::vector<std::int64_t>& committed) {
  Outcome recovered = run_process(
      {MMSB_BANK_BINARY, "--log", dir.string(), "--accounts", std::to_string(kAccounts), "--transfers", "0"}, err_file,
      std::nullopt);
  ASSERT_TRUE(recovered.exited) << "recovery was killed by signal " << recovered.code;
  ASSERT_EQ(recovered.code, 0) << "recovery failed:\n" << recovered.err << "\nstdout:\n" << recovered.out;
  const std::vector<std::int64_t> totals = values_of(recovered.out, "total");
  ASSERT_EQ(totals.size(), 1u) << recovered.out;
  EXPECT_EQ(totals[0], static_cast<std::int64_t>(kAccounts) * 1000);
  const std::vector<std::int64_t> recovered_lsn = values_of(recovered.out, "recovered");
  ASSERT_EQ(recovered_lsn.size(), 1u) << recovered.out;
  if (!committed.empty()) {
    EXPECT_GE(recovered_lsn[0], *std::max_element(committed.begin(), committed.end()));
  }
}

// Every LSN the killed process reported durable is covered by the checkpoint or in the log; no LSN appears twice
// in the log, no older checkpoint and no torn tail is left behind.
void expect_log_holds(const fs::path& dir, const std::vector<std::int64_t>& committed) {
  const mmsb::DirectorySummary summary = mmsb::inspect(dir);
  const std::uint64_t checkpoint_lsn = summary.checkpoints.empty() ? 0 : summary.checkpoints.back().lsn;
  EXPECT_LE(summary.checkpoints.size(), 1u) << "an older checkpoint was left behind";
  std::set<std::uint64_t> logged;
  LogReader reader(dir);
  for (DecodedCommit c; reader.next(c);) {
    EXPECT_TRUE(logged.insert(c.lsn).second) << "LSN " << c.lsn << " is in the log twice";
  }
  EXPECT_EQ(reader.report().truncated_bytes, 0u) << "the recovery run left a torn tail";
  std::vector<std::int64_t> missing;
  for (std::int64_t lsn : committed) {
    if (static_cast<std::uint64_t>(lsn) > checkpoint_lsn && !logged.count(static_cast<std::uint64_t>(lsn))) {
      missing.push_back(lsn);
    }
  }
  if (!missing.empty()) {
    ADD_FAILURE() << missing.size() << " of " << committed.size()
                  << " commits the killed process reported durable are neither in the checkpoint (LSN "
                  << checkpoint_lsn << ") nor in the log, the first LSN " << missing.front() << " (the log is kept in "
                  << dir << ")";
  }
}

TEST(BankCrash, KillNineAtRandomMomentsLosesNoReportedCommitAndConservesMoney) {
  const std::uint64_t seed = crash_seed();
  SCOPED_TRACE("crash test seed " + std::to_string(seed) + " (rerun with MMSB_CRASH_SEED=" + std::to_string(seed) +
               ")");
  std::mt19937_64 rng(seed);
  const fs::path root =
      fs::temp_directory_path() / ("mmsb-crash-test-" + std::to_string(::getpid()) + "-" + std::to_string(seed));
  fs::remove_all(root);
  fs::create_directories(root);
  const fs::path err_file = root / "stderr.txt";

  constexpr int kIterations = 60;
  constexpr int kIterationsPerLog = 5;  // restarts on one log before starting a fresh one
  const auto test_start = Clock::now();
  int iterations = 0, killed_runs = 0;
  std::uint64_t reported = 0;
  fs::path dir;
  for (int i = 0; i < kIterations; ++i) {
    // Stay well inside the ctest timeout on a slow or loaded machine.
    if (Clock::now() - test_start > std::chrono::seconds(45)) break;
    if (i % kIterationsPerLog == 0) dir = root / ("log-" + std::to_string(i));
    static const char* const kSync[] = {"every-commit", "every-commit", "none", "interval"};
    BankRun run;
    run.delay = std::chrono::milliseconds(5 + static_cast<int>(rng() % 196));
    run.sync = kSync[i % 4];
    // Every other log uses small segments and frequent checkpoints, so kills also land while a segment is
    // switched, a checkpoint is written, or covered segments are deleted.
    run.compacting = (i / kIterationsPerLog) % 2 == 1;
    SCOPED_TRACE("iteration " + std::to_string(i) + ", log " + dir.string() + ", --sync " + run.sync + ", kill after " +
                 std::to_string(run.delay.count()) + " ms" +
                 (run.compacting ? ", small segments and checkpoints" : ""));

    Outcome crashed = run_process(run.args(dir, rng()), err_file, run.delay);
    if (!crashed.exited) {
      ++killed_runs;
      EXPECT_EQ(crashed.code, SIGKILL);
    } else {
      ADD_FAILURE() << "bank exited with status " << crashed.code << " before the kill:\n" << crashed.err;
    }
    const std::vector<std::int64_t> committed = values_of(crashed.out, "committed");
    reported += committed.size();
    expect_bank_recovers(dir, err_file, committed);
    if (::testing::Test::HasFatalFailure()) return;
    expect_log_holds(dir, committed);
    ++iterations;
    if (::testing::Test::HasFailure()) break;
  }
  const double seconds = std::chrono::duration<double>(Clock::now() - test_start).count();
  std::printf("crash test: %d iterations (%d killed mid-run), %llu reported commits checked, %.1f s\n", iterations,
              killed_runs, static_cast<unsigned long long>(reported), seconds);
  EXPECT_GE(iterations, 10);
  if (!::testing::Test::HasFailure()) fs::remove_all(root);
}

}  // namespace
}  // namespace mmsb::serialize
