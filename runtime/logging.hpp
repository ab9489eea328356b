// runtime/logging.hpp — mmsb's spdlog logger (internal). Off the hot path only.
//
// Its messages go where mmsb/log.hpp says (set_log_sink(), stderr by default), at the level it says
// (set_log_level(), else MMSB_LOG_LEVEL, else warn).
// Thread-safety: logger() may be called from any thread; the returned logger is thread-safe.
#pragma once

#include <spdlog/logger.h>

#include <memory>

namespace mmsb::detail {

std::shared_ptr<spdlog::logger> logger();

}  // namespace mmsb::detail
