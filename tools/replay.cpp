// `mmsb replay DIR --out DIR2 [--to-lsn N | --to-time T | --page ID --to-epoch E]`: the state at a point in
// history, written as a new durable directory.
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <filesystem>
#include <mutex>
#include <string>
#include <system_error>
#include <thread>

#include "commands.hpp"
#include "directory.hpp"
#include "format.hpp"
#include "mmsb/durable.hpp"
#include "pages.hpp"

namespace mmsb::cli {
namespace {

// A progress line on stderr (share of the log replayed, elapsed time), redrawn while a long call runs, erased
// when it ends. Nothing is drawn for calls shorter than the first delay, so quick replays leave no trace.
class ProgressLine {
 public:
  ProgressLine(bool enabled, std::string label) : label_(std::move(label)) {
    if (enabled) thread_ = std::thread([this] { draw_until_done(); });
  }
  ~ProgressLine() {
    if (!thread_.joinable()) return;
    {
      std::lock_guard lock(mutex_);
      done_ = true;
    }
    wake_.notify_one();
    thread_.join();
  }
  ProgressLine(const ProgressLine&) = delete;
  ProgressLine& operator=(const ProgressLine&) = delete;

  // Called by replay_to() on the replaying thread.
  void update(std::uint64_t done, std::uint64_t total) {
    done_bytes_.store(done, std::memory_order_relaxed);
    total_bytes_.store(total, std::memory_order_relaxed);
  }

 private:
  void draw_until_done() {
    using namespace std::chrono;
    static constexpr char kSpinner[] = "|/-\\";
    const auto start = steady_clock::now();
    bool drawn = false;
    std::unique_lock lock(mutex_);
    for (unsigned tick = 0; !wake_.wait_for(lock, milliseconds(tick == 0 ? 300 : 200), [this] { return done_; });
         ++tick) {
      const double seconds = duration<double>(steady_clock::now() - start).count();
      const std::uint64_t total = total_bytes_.load(std::memory_order_relaxed);
      if (total > 0) {
        const double share = 100.0 * static_cast<double>(done_bytes_.load(std::memory_order_relaxed)) /
                             static_cast<double>(total);
        std::fprintf(stderr, "\r%c %s  %.0f%%  %.1f s ", kSpinner[tick % 4], label_.c_str(), share, seconds);
      } else {
        std::fprintf(stderr, "\r%c %s  %.1f s ", kSpinner[tick % 4], label_.c_str(), seconds);
      }
      std::fflush(stderr);
      drawn = true;
    }
    if (drawn) {
      std::fprintf(stderr, "\r\033[K");  // erase the line so the report starts clean
      std::fflush(stderr);
    }
  }

  std::string label_;
  std::mutex mutex_;
  std::condition_variable wake_;
  bool done_ = false;
  std::atomic<std::uint64_t> done_bytes_{0}, total_bytes_{0};
  std::thread thread_;
};

struct Target {
  ReplayTarget target;
  std::string description;
};

Target target_of(const ReplayOptions& options) {
  if (options.to_lsn) return {ReplayTarget::lsn(*options.to_lsn), "LSN " + std::to_string(*options.to_lsn)};
  if (options.to_time) {
    std::uint64_t ns = parse_time(*options.to_time);
    return {ReplayTarget::time(ns), "time " + format_utc(ns)};
  }
  if (options.page || options.to_epoch) {
    if (!options.page || !options.to_epoch) throw ToolError("--page and --to-epoch go together: give both");
    PageId page = resolve_page_in_history(*options.page, std::filesystem::path(options.dir));
    return {ReplayTarget::page_epoch(page, *options.to_epoch),
            "page " + page.to_string() + " epoch " + std::to_string(*options.to_epoch)};
  }
  return {ReplayTarget::end(), "the end of the log"};
}

void require_fresh_output(const std::filesystem::path& out_dir) {
  std::error_code ec;
  if (!std::filesystem::exists(out_dir, ec)) return;
  if (!std::filesystem::is_directory(out_dir, ec)) {
    throw ToolError("--out " + out_dir.string() + " exists and is not a directory; give a new directory");
  }
  if (!std::filesystem::is_empty(out_dir, ec)) {
    throw ToolError("--out " + out_dir.string() + " is not empty; give a new or empty directory");
  }
}

}  // namespace

int run_replay(const ReplayOptions& options, std::ostream& out) {
  const std::filesystem::path dir(options.dir), out_dir(options.out_dir);
  const Target target = target_of(options);
  require_directory(dir);
  require_fresh_output(out_dir);

  CheckpointInfo written;
  try {
    ProgressLine progress(options.progress, "replaying " + dir.string() + " to " + target.description);
    written = replay_to(dir, target.target, out_dir,
                        [&](std::uint64_t done, std::uint64_t total) { progress.update(done, total); });
  } catch (const Error& e) {
    rethrow_for_directory(dir, e);
  }
  out << "wrote " << out_dir.string() << ": the state at LSN " << written.lsn;
  if (!options.to_lsn) out << " (" << target.description << ")";
  out << ", " << written.pages << " pages, " << written.nodes << " nodes, checkpoint "
      << written.file.filename().string() << " " << format_size(written.file_bytes) << '\n';
  return kExitOk;
}

}  // namespace mmsb::cli
