// tests/tools/tool_process.hpp — runs the `mmsb` tool (or any program) as a child process and collects its exit
// status and output, for the tool's end-to-end tests.
#pragma once

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <stdexcept>
#include <string>
#include <vector>

#include <fcntl.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include "support/test_support.hpp"

extern char** environ;

namespace mmsb::testing {

struct Outcome {
  int code = -1;  // exit status; 128 + signal when killed
  std::string out, err;
};

// Runs `args` (args[0] is the program's path) with stdin from /dev/null and stdout/stderr in files of `scratch`.
inline Outcome run_process(const std::vector<std::string>& args, const std::filesystem::path& scratch) {
  const std::filesystem::path out_file = scratch / "stdout.txt", err_file = scratch / "stderr.txt";
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, STDIN_FILENO, "/dev/null", O_RDONLY, 0);
  posix_spawn_file_actions_addopen(&actions, STDOUT_FILENO, out_file.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  posix_spawn_file_actions_addopen(&actions, STDERR_FILENO, err_file.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  std::vector<char*> argv;
  for (const auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  pid_t pid = -1;
  int rc = ::posix_spawnp(&pid, argv[0], &actions, nullptr, argv.data(), environ);
  posix_spawn_file_actions_destroy(&actions);
  if (rc != 0) throw std::runtime_error("posix_spawn " + args[0] + " failed: " + std::strerror(rc));
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  Outcome result;
  result.code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  result.out = read_file(out_file);
  result.err = read_file(err_file);
  return result;
}

inline std::string describe(const Outcome& o) {
  return "exit " + std::to_string(o.code) + "\n--- stdout:\n" + o.out + "--- stderr:\n" + o.err;
}

}  // namespace mmsb::testing
