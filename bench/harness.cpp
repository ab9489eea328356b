#include "bench/harness.hpp"

#include <sys/wait.h>
#include <unistd.h>
#include <cstdio>
#include <stdexcept>
#include <string>

namespace mmsb::bench {

std::vector<Metric>& metrics() {
  static std::vector<Metric> all;
  return all;
}

std::vector<Ratio>& ratios() {
  static std::vector<Ratio> all;
  return all;
}

bool& quick_mode() {
  static bool quick = false;
  return quick;
}

std::string run_in_child(const std::function<std::string()>& work) {
  int fds[2];
  if (pipe(fds) != 0) throw std::runtime_error("pipe() failed");
  std::fflush(nullptr);
  const pid_t pid = fork();
  if (pid < 0) {
    close(fds[0]);
    close(fds[1]);
    throw std::runtime_error("fork() failed");
  }
  if (pid == 0) {
    close(fds[0]);
    std::string message;
    try {
      message = "ok " + work();
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
  if (reply.rfind("ok ", 0) == 0) return reply.substr(3);
  if (reply.rfind("error ", 0) == 0) throw std::runtime_error(reply.substr(6));
  if (WIFSIGNALED(status)) throw std::runtime_error("killed by signal " + std::to_string(WTERMSIG(status)));
  throw std::runtime_error("exited without a result (status " + std::to_string(status) + ")");
}

}  // namespace mmsb::bench
