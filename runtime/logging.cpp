#include "runtime/logging.hpp"

#include <spdlog/sinks/base_sink.h>
#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>

#include <cstdlib>
#include <mutex>
#include <optional>
#include <string>
#include <utility>

#include "mmsb/log.hpp"

namespace mmsb {
namespace {

spdlog::level::level_enum to_spdlog(LogLevel level) {
  switch (level) {
    case LogLevel::Trace:
      return spdlog::level::trace;
    case LogLevel::Debug:
      return spdlog::level::debug;
    case LogLevel::Info:
      return spdlog::level::info;
    case LogLevel::Warn:
      return spdlog::level::warn;
    case LogLevel::Error:
      return spdlog::level::err;
    case LogLevel::Off:
      break;
  }
  return spdlog::level::off;
}

LogLevel from_spdlog(spdlog::level::level_enum level) {
  switch (level) {
    case spdlog::level::trace:
      return LogLevel::Trace;
    case spdlog::level::debug:
      return LogLevel::Debug;
    case spdlog::level::info:
      return LogLevel::Info;
    case spdlog::level::warn:
      return LogLevel::Warn;
    case spdlog::level::err:
    case spdlog::level::critical:
      return LogLevel::Error;
    default:
      break;
  }
  return LogLevel::Off;
}

// MMSB_LOG_LEVEL's value as a level; nullopt when it names none. (spdlog's own from_str() turns any unknown
// name into "off", which would silence mmsb over a typo.)
std::optional<LogLevel> parse_level(std::string_view name) {
  for (LogLevel level :
       {LogLevel::Trace, LogLevel::Debug, LogLevel::Info, LogLevel::Warn, LogLevel::Error, LogLevel::Off}) {
    if (name == log_level_name(level)) return level;
  }
  if (name == "warning") return LogLevel::Warn;
  if (name == "err" || name == "critical") return LogLevel::Error;
  return std::nullopt;
}

// The one sink of mmsb's logger: the application's LogSink when one is set, else stderr. spdlog's base_sink holds
// its mutex around sink_it_(), so the application's sink is called with one message at a time, and swapping it
// under the same mutex waits for a call in progress.
class RoutingSink final : public spdlog::sinks::base_sink<std::mutex> {
 public:
  RoutingSink() : stderr_(std::make_shared<spdlog::sinks::stderr_color_sink_mt>()) {
    stderr_->set_pattern("[%H:%M:%S.%e] [mmsb] [%l] %v");
  }
  void route(LogSink to) {
    std::lock_guard lock(mutex_);
    sink_ = std::move(to);
  }

 protected:
  void sink_it_(const spdlog::details::log_msg& msg) override {
    if (sink_) {
      sink_(from_spdlog(msg.level), std::string_view(msg.payload.data(), msg.payload.size()));
    } else {
      stderr_->log(msg);
    }
  }
  void flush_() override {
    if (!sink_) stderr_->flush();
  }

 private:
  std::shared_ptr<spdlog::sinks::stderr_color_sink_mt> stderr_;
  LogSink sink_;  // mutex_
};

struct Logging {
  std::shared_ptr<RoutingSink> sink = std::make_shared<RoutingSink>();
  std::shared_ptr<spdlog::logger> logger = std::make_shared<spdlog::logger>("mmsb", sink);
  std::string bad_level;  // an MMSB_LOG_LEVEL that names no level, reported once

  Logging() {
    LogLevel level = LogLevel::Warn;
    if (const char* env = std::getenv("MMSB_LOG_LEVEL")) {
      if (std::optional<LogLevel> parsed = parse_level(env)) {
        level = *parsed;
      } else {
        bad_level = env;
      }
    }
    logger->set_level(to_spdlog(level));
  }
};

Logging& logging() {
  static Logging instance;
  return instance;
}

// Reports a bad MMSB_LOG_LEVEL once, on the first use of the logger after it was made (not from inside the
// constructor of the function-local static, so the report itself may use the logger).
void report_bad_level_once(Logging& l) {
  static std::once_flag once;
  std::call_once(once, [&] {
    if (!l.bad_level.empty()) {
      l.logger->warn("MMSB_LOG_LEVEL='{}' names no log level (trace, debug, info, warn, error, off); using {}",
                     l.bad_level, log_level_name(from_spdlog(l.logger->level())));
    }
  });
}

}  // namespace

const char* log_level_name(LogLevel level) noexcept {
  switch (level) {
    case LogLevel::Trace:
      return "trace";
    case LogLevel::Debug:
      return "debug";
    case LogLevel::Info:
      return "info";
    case LogLevel::Warn:
      return "warn";
    case LogLevel::Error:
      return "error";
    case LogLevel::Off:
      break;
  }
  return "off";
}

void set_log_sink(LogSink sink) {
  Logging& l = logging();
  l.sink->route(std::move(sink));
  report_bad_level_once(l);  // to the new sink, if the application set one before mmsb logged anything
}

void set_log_level(LogLevel level) { logging().logger->set_level(to_spdlog(level)); }

LogLevel log_level() { return from_spdlog(logging().logger->level()); }

namespace detail {

std::shared_ptr<spdlog::logger> logger() {
  Logging& l = logging();
  report_bad_level_once(l);
  return l.logger;
}

}  // namespace detail
}  // namespace mmsb
