// mmsb-bench: runs the registered metrics and prints their medians (a table, or one JSON object with --json).
// This is the only translation unit that includes CLI11.
#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <map>
#include <regex>
#include <string>
#include <sys/wait.h>
#include <unistd.h>

#include "bench/harness.hpp"
#include "mmsb/error.hpp"

namespace {

double median_of(std::vector<double> samples) {
  std::sort(samples.begin(), samples.end());
  const std::size_t n = samples.size();
  return n % 2 ? samples[n / 2] : (samples[n / 2 - 1] + samples[n / 2]) / 2;
}

// Runs one metric's repetitions in a child process and returns the median through a pipe. Each metric thus starts
// from a fresh heap, allocator and thread pool: a workload that ran before it (say, 1000 pages freed in an order
// that scatters the next allocations, or TBB workers still spinning) cannot change its numbers.
bool run_isolated(const mmsb::bench::Metric& metric, int repetitions, double& value, std::string& error) {
  if (std::getenv("MMSB_BENCH_IN_PROCESS")) {  // for profilers and debuggers, which follow one process
    try {
      std::vector<double> samples;
      for (int r = 0; r < repetitions; ++r) samples.push_back(metric.run_once());
      value = median_of(samples);
      return true;
    } catch (const std::exception& e) {
      error = e.what();
      return false;
    }
  }
  int fds[2];
  if (pipe(fds) != 0) {
    error = "pipe() failed";
    return false;
  }
  std::fflush(nullptr);
  const pid_t pid = fork();
  if (pid < 0) {
    error = "fork() failed";
    return false;
  }
  if (pid == 0) {
    close(fds[0]);
    std::string message;
    try {
      std::vector<double> samples;
      for (int r = 0; r < repetitions; ++r) samples.push_back(metric.run_once());
      char text[64];
      std::snprintf(text, sizeof text, "ok %.17g", median_of(samples));  // full precision: values can be tiny
      message = text;
    } catch (const std::exception& e) {
      message = std::string("error ") + e.what();
    }
    const char* p = message.c_str();
    std::size_t left = message.size();
    while (left > 0) {
      ssize_t n = write(fds[1], p, left);
      if (n <= 0) break;
      p += n;
      left -= static_cast<std::size_t>(n);
    }
    close(fds[1]);
    _exit(0);
  }
  close(fds[1]);
  std::string reply;
  char buffer[512];
  for (;;) {
    ssize_t n = read(fds[0], buffer, sizeof buffer);
    if (n <= 0) break;
    reply.append(buffer, static_cast<std::size_t>(n));
  }
  close(fds[0]);
  int status = 0;
  waitpid(pid, &status, 0);
  if (reply.rfind("ok ", 0) == 0) {
    value = std::stod(reply.substr(3));
    return true;
  }
  if (reply.rfind("error ", 0) == 0) {
    error = reply.substr(6);
  } else if (WIFSIGNALED(status)) {
    error = "killed by signal " + std::to_string(WTERMSIG(status));
  } else {
    error = "exited without a result (status " + std::to_string(status) + ")";
  }
  return false;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{
      "mmsb-bench: measures mmsb against raw baselines (memcpy, memcmp, malloc, ...) in the same run.\n"
      "Each metric is the median of several repetitions; values are nanoseconds unless the key says otherwise\n"
      "(_per_s: operations per second, _ratio: dimensionless, _ms: milliseconds)."};
  bool json = false, list = false, quick = false;
  std::string filter = ".*";
  int repetitions = 7;
  app.add_flag("--json", json, "Print one JSON object {key: number} on stdout instead of a table");
  app.add_flag("--list", list, "List the metric keys with a description and exit");
  app.add_flag("--quick", quick, "Run only the CI-sized subset of the metrics (with --filter: those of it that match)");
  app.add_option("--filter", filter, "Only run metrics whose key matches this regular expression (ECMAScript)")
      ->capture_default_str();
  app.add_option("--repetitions,-r", repetitions, "Repetitions per metric; the median is reported")
      ->check(CLI::Range(1, 1000))
      ->capture_default_str();
  CLI11_PARSE(app, argc, argv);

  auto& all = mmsb::bench::metrics();
  std::sort(all.begin(), all.end(), [](const auto& a, const auto& b) { return a.name < b.name; });
  if (list) {
    for (const auto& m : all) {
      std::printf("%-28s %s%s\n", m.name.c_str(), m.description.c_str(), m.quick ? " [quick]" : "");
    }
    for (const auto& r : mmsb::bench::ratios()) std::printf("%-28s %s\n", r.name.c_str(), r.description.c_str());
    return 0;
  }
  std::regex pattern;
  try {
    pattern = std::regex(filter);
  } catch (const std::regex_error& e) {
    std::fprintf(stderr, "mmsb-bench: --filter '%s' is not a valid regular expression: %s\n", filter.c_str(),
                 e.what());
    return 2;
  }

  const bool progress = isatty(STDERR_FILENO);
  std::map<std::string, double> results;
  std::vector<const mmsb::bench::Metric*> selected;
  for (const auto& m : all)
    if (std::regex_search(m.name, pattern) && (m.quick || !quick)) selected.push_back(&m);
  // A ratio needs both of its inputs: run them when the ratio itself is selected.
  for (const auto& r : mmsb::bench::ratios()) {
    if (!std::regex_search(r.name, pattern)) continue;
    for (const auto& m : all) {
      if ((m.quick || !quick) && (m.name == r.numerator || m.name == r.denominator) &&
          std::find(selected.begin(), selected.end(), &m) == selected.end())
        selected.push_back(&m);
    }
  }
  if (selected.empty()) {
    std::fprintf(stderr, "mmsb-bench: no metric matches --filter '%s'; see --list\n", filter.c_str());
    return 2;
  }
  std::size_t index = 0;
  for (const auto* m : selected) {
    ++index;
    if (progress) std::fprintf(stderr, "\r[%zu/%zu] %-40s", index, selected.size(), m->name.c_str());
    std::string error;
    double value = 0;
    if (!run_isolated(*m, repetitions, value, error)) {
      std::fprintf(stderr, "\nmmsb-bench: metric %s failed: %s\n", m->name.c_str(), error.c_str());
      return 1;
    }
    results[m->name] = value;
  }
  if (progress) std::fprintf(stderr, "\r%-60s\r", "");
  for (const auto& r : mmsb::bench::ratios()) {
    if (!std::regex_search(r.name, pattern)) continue;
    auto num = results.find(r.numerator), den = results.find(r.denominator);
    if (num != results.end() && den != results.end() && den->second != 0) results[r.name] = num->second / den->second;
  }

  if (json) {
    nlohmann::ordered_json out = nlohmann::ordered_json::object();
    for (const auto& [key, value] : results) out[key] = std::isfinite(value) ? value : 0.0;
    std::cout << out.dump(2) << std::endl;
  } else {
    for (const auto& [key, value] : results) std::printf("%-28s %14.3f\n", key.c_str(), value);
  }
  return 0;
}
