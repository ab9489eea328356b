// mmsb/log.hpp — where mmsb's log messages go, and which ones.
//
// mmsb logs rarely and never on a hot path: recovery summaries, a torn log tail it truncated, the GPU mirror
// falling back to the CPU, a distributed rank failing, the machine topology at start-up (debug). By default the
// messages at warn level and above go to stderr as "[time] [mmsb] [level] text". An application routes them into
// its own logging instead:
//
//   mmsb::set_log_sink([](mmsb::LogLevel level, std::string_view text) {
//     my_logger.log(to_my_level(level), "mmsb: {}", text);        // spdlog, glog, syslog, a test's vector...
//   });
//   mmsb::set_log_level(mmsb::LogLevel::Info);
//
// The level is, in order of precedence: the last set_log_level() call, else the environment variable
// MMSB_LOG_LEVEL (trace, debug, info, warn, error, off; read once, at the first message), else warn. An
// MMSB_LOG_LEVEL that names no level is reported once, as a warning through the sink, and warn is used.
//
// Thread-safety: every function may be called from any thread. The sink is called with one message at a time (calls
// are serialized), on the thread that logs; it must not call into mmsb (it would wait for itself) and should
// return quickly. set_log_sink() returns once no call to the previous sink is running.
#pragma once

#include <cstdint>
#include <functional>
#include <string_view>

namespace mmsb {

enum class LogLevel : std::uint8_t { Trace = 0, Debug = 1, Info = 2, Warn = 3, Error = 4, Off = 5 };

// Receives one message: its level and its text (no time stamp or prefix; valid during the call).
using LogSink = std::function<void(LogLevel level, std::string_view text)>;

// Sends every later message to `sink`; an empty function restores the default (stderr).
void set_log_sink(LogSink sink);
// Messages below `level` are dropped (LogLevel::Off drops all).
void set_log_level(LogLevel level);
LogLevel log_level();
// "trace", "debug", "info", "warn", "error", "off".
const char* log_level_name(LogLevel level) noexcept;

}  // namespace mmsb
