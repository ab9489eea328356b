#include "mmsb/version.hpp"

namespace mmsb {

const char* library_version() noexcept { return MMSB_VERSION_STRING; }

}  // namespace mmsb
