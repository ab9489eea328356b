#include "bench/harness.hpp"

namespace mmsb::bench {

std::vector<Metric>& metrics() {
  static std::vector<Metric> all;
  return all;
}

std::vector<Ratio>& ratios() {
  static std::vector<Ratio> all;
  return all;
}

}  // namespace mmsb::bench
