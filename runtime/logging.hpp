// runtime/logging.hpp — mmsb's spdlog logger (internal). Off the hot path only.
//
// The level comes from MMSB_LOG_LEVEL (trace, debug, info, warn, error, off; default warn), read at first use.
// Thread-safety: logger() may be called from any thread; the returned logger is thread-safe.
#pragma once

#include <spdlog/logger.h>

#include <memory>

namespace mmsb::detail {

std::shared_ptr<spdlog::logger> logger();

}  // namespace mmsb::detail
