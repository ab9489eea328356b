// Helpers of the transformer tests: paths of the shared test models and reference outputs, and JSON loading.
#pragma once

#include <gtest/gtest.h>

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
#define MMSB_REQUIRE_SHARED(var, relative)                                                                     \
  const std::string var = ::mmsb::llm::testing::shared_path(relative);                                          \
  ASSERT_TRUE(std::filesystem::exists(var))                                                                     \
      << "test data missing: " << var << " — these tests need the shared models and reference outputs "         \
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

}  // namespace mmsb::llm::testing
