// mmsb-bench: runs the registered metrics and prints their medians (a table, or one JSON object with --json).
// This is the only translation unit that includes CLI11.
#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <iostream>
#include <map>
#include <regex>
#include <unistd.h>

#include "bench/harness.hpp"
#include "mmsb/error.hpp"

int main(int argc, char** argv) {
  CLI::App app{
      "mmsb-bench: measures mmsb against raw baselines (memcpy, memcmp, malloc, ...) in the same run.\n"
      "Each metric is the median of several repetitions; values are nanoseconds unless the key says otherwise\n"
      "(_per_s: operations per second, _ratio: dimensionless, _ms: milliseconds)."};
  bool json = false, list = false;
  std::string filter = ".*";
  int repetitions = 7;
  app.add_flag("--json", json, "Print one JSON object {key: number} on stdout instead of a table");
  app.add_flag("--list", list, "List the metric keys with a description and exit");
  app.add_option("--filter", filter, "Only run metrics whose key matches this regular expression (ECMAScript)")
      ->capture_default_str();
  app.add_option("--repetitions,-r", repetitions, "Repetitions per metric; the median is reported")
      ->check(CLI::Range(1, 1000))
      ->capture_default_str();
  CLI11_PARSE(app, argc, argv);

  auto& all = mmsb::bench::metrics();
  std::sort(all.begin(), all.end(), [](const auto& a, const auto& b) { return a.name < b.name; });
  if (list) {
    for (const auto& m : all) std::printf("%-28s %s\n", m.name.c_str(), m.description.c_str());
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
    if (std::regex_search(m.name, pattern)) selected.push_back(&m);
  // A ratio needs both of its inputs: run them when the ratio itself is selected.
  for (const auto& r : mmsb::bench::ratios()) {
    if (!std::regex_search(r.name, pattern)) continue;
    for (const auto& m : all) {
      if ((m.name == r.numerator || m.name == r.denominator) &&
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
    std::vector<double> samples;
    try {
      for (int r = 0; r < repetitions; ++r) samples.push_back(m->run_once());
    } catch (const std::exception& e) {
      std::fprintf(stderr, "\nmmsb-bench: metric %s failed: %s\n", m->name.c_str(), e.what());
      return 1;
    }
    std::sort(samples.begin(), samples.end());
    std::size_t n = samples.size();
    results[m->name] = n % 2 ? samples[n / 2] : (samples[n / 2 - 1] + samples[n / 2]) / 2;
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
