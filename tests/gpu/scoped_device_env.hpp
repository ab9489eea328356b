// Sets MMSB_VULKAN_DEVICE for the lifetime of a test, and restores it (the GPU tests pick a device or force the
// CPU fallback with it).
#pragma once

#include <cstdlib>
#include <optional>
#include <string>

namespace mmsb::testing {

class ScopedDeviceEnv {
 public:
  explicit ScopedDeviceEnv(const char* value) {
    if (const char* old = std::getenv("MMSB_VULKAN_DEVICE")) saved_ = old;
    if (value) {
      ::setenv("MMSB_VULKAN_DEVICE", value, 1);
    } else {
      ::unsetenv("MMSB_VULKAN_DEVICE");
    }
  }
  ~ScopedDeviceEnv() {
    if (saved_) {
      ::setenv("MMSB_VULKAN_DEVICE", saved_->c_str(), 1);
    } else {
      ::unsetenv("MMSB_VULKAN_DEVICE");
    }
  }
  ScopedDeviceEnv(const ScopedDeviceEnv&) = delete;
  ScopedDeviceEnv& operator=(const ScopedDeviceEnv&) = delete;

 private:
  std::optional<std::string> saved_;
};

}  // namespace mmsb::testing
