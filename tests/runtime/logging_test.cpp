// tests/runtime/logging_test.cpp — mmsb/log.hpp: an application's sink receives mmsb's messages at the chosen
// level, and removing it restores the default. (A bad MMSB_LOG_LEVEL is checked by ctest runtime.bad_log_level,
// which needs a fresh process.)
#include <gtest/gtest.h>

#include <string>
#include <utility>
#include <vector>

#include "mmsb/log.hpp"
#include "runtime/logging.hpp"

namespace mmsb {
namespace {

struct Captured {
  std::vector<std::pair<LogLevel, std::string>> messages;
};

class LoggingTest : public ::testing::Test {
 protected:
  void SetUp() override {
    saved_level_ = log_level();
    set_log_sink([this](LogLevel level, std::string_view text) { captured_.messages.emplace_back(level, text); });
  }
  void TearDown() override {
    set_log_sink({});
    set_log_level(saved_level_);
  }
  Captured captured_;
  LogLevel saved_level_ = LogLevel::Warn;
};

TEST_F(LoggingTest, SinkReceivesMessagesAtOrAboveTheLevel) {
  set_log_level(LogLevel::Info);
  detail::logger()->debug("not shown {}", 1);
  detail::logger()->info("recovered to LSN {}", 42);
  detail::logger()->error("disk {}", "full");
  ASSERT_EQ(captured_.messages.size(), 2u);
  EXPECT_EQ(captured_.messages[0], std::make_pair(LogLevel::Info, std::string("recovered to LSN 42")));
  EXPECT_EQ(captured_.messages[1], std::make_pair(LogLevel::Error, std::string("disk full")));
  EXPECT_EQ(log_level(), LogLevel::Info);
}

TEST_F(LoggingTest, OffDropsEverything) {
  set_log_level(LogLevel::Off);
  detail::logger()->error("dropped");
  EXPECT_TRUE(captured_.messages.empty());
}

TEST_F(LoggingTest, ClearingTheSinkStopsDelivery) {
  set_log_level(LogLevel::Warn);
  set_log_sink({});
  detail::logger()->warn("to stderr, not to the test");
  EXPECT_TRUE(captured_.messages.empty());
}

TEST(LogLevelNames, RoundTrip) {
  EXPECT_STREQ(log_level_name(LogLevel::Trace), "trace");
  EXPECT_STREQ(log_level_name(LogLevel::Warn), "warn");
  EXPECT_STREQ(log_level_name(LogLevel::Off), "off");
}

}  // namespace
}  // namespace mmsb
