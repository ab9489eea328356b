// Helpers of the transformer tests: paths of the shared test models and reference outputs, and JSON loading.
#pragma once

#include <gtest/gtest.h>

#include <sys/wait.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>

#ifndef MMSB_SHARED_DIR
#error "MMSB_SHARED_DIR must point at the shared folder (models/, reference/); tests/CMakeLists.txt sets it"
#endif

namespace mmsb::llm::testing {

inline std::string shared_path(const std::string& relative) { return std::string(MMSB_SHARED_DIR) + "/" + relative; }

// Fails the calling test (never skips) when a file of the shared folder is missing.
#define MMSB_REQUIRE_SHARED(var, relative)                                                                \
  const std::string var = ::mmsb::llm::testing::shared_path(relative);                                    \
  ASSERT_TRUE(std::filesystem::exists(var))                                                               \
      << "test data missing: " << var << " — these tests need the shared models and reference outputs " \
      << "(MMSB_SHARED_DIR=" MMSB_SHARED_DIR "); put them there, or configure with the right shared folder"

inline nlohmann::json load_json(const std::string& path) {
  std::ifstream in(path);
  return nlohmann::json::parse(in);
}

inline std::string read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::string out(static_cast<std::size_t>(std::filesystem::file_size(path)), '\0');
  in.read(out.data(), static_cast<std::streamsize>(out.size()));
  return out;
}

// What one run of the mmsb-llm binary printed, and its exit code (-1 when it did not exit normally).
struct LlmRun {
  int status = -1;
  std::string out;
};

// Runs `PROGRAM ARGS` through the shell: stdout is captured, and stderr too when `with_stderr` (else it is
// dropped); `input`, when given, is its stdin (printf format, so no single quotes).
inline LlmRun run_program(const std::string& program, const std::string& args, bool with_stderr = false,
                          const std::string& input = "") {
  std::string cmd = program + " " + args + (with_stderr ? " 2>&1" : " 2>/dev/null");
  if (!input.empty()) cmd = "printf '" + input + "' | " + cmd;
  LlmRun run;
  FILE* p = ::popen(cmd.c_str(), "r");
  if (!p) return run;
  char buf[4096];
  std::size_t n;
  while ((n = std::fread(buf, 1, sizeof buf, p)) > 0) run.out.append(buf, n);
  const int status = ::pclose(p);
  run.status = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return run;
}

// run_program() of the mmsb-llm binary.
inline LlmRun run_llm(const std::string& args, bool with_stderr = false, const std::string& input = "") {
  return run_program(MMSB_LLM_BINARY, args, with_stderr, input);
}

}  // namespace mmsb::llm::testing
