#include "json_output.hpp"

namespace mmsb::cli {

std::string json_text(const Json& value) {
  return value.dump(2, ' ', /*ensure_ascii=*/false, Json::error_handler_t::replace) + "\n";
}

Json damage_json(const std::vector<DamageReport>& damage) {
  Json out = Json::array();
  for (const DamageReport& d : damage) {
    out.push_back({{"file", d.file.string()},
                   {"offset", d.offset},
                   {"bytes", d.bytes},
                   {"what", d.what},
                   {"last_good_lsn", d.last_good_lsn}});
  }
  return out;
}

}  // namespace mmsb::cli
