#include "mmsb/typed_view.hpp"

#include <string>

#include "mmsb/error.hpp"

namespace mmsb::detail {

void throw_bad_view(const ViewSite& site, std::uint64_t bytes_size, std::uintptr_t address, std::uint64_t offset,
                    std::uint64_t count, std::size_t element_size, std::size_t element_align) {
  std::string m(site.accessor);
  m += ": ";
  if (site.input != ViewSite::kNoInput) {
    m += "input " + std::to_string(site.input) + " of the node computing page " + site.page.to_string();
  } else {
    m += "page " + site.page.to_string();
  }
  m += " (" + std::to_string(bytes_size) + " bytes) ";
  const std::string elements = std::to_string(element_size) + "-byte elements";
  const std::string at = " from byte offset " + std::to_string(offset);
  if (offset > bytes_size) {
    m += "ends before byte offset " + std::to_string(offset) + "; use an offset within the page";
  } else if (count == kWholePage && (bytes_size - offset) % element_size != 0) {
    m += "does not hold a whole number of " + elements + at + " (" + std::to_string(bytes_size - offset) +
         " bytes); size the page as a multiple of sizeof(T), or ask for a count";
  } else if (count != kWholePage && count > (bytes_size - offset) / element_size) {
    m += "holds " + std::to_string((bytes_size - offset) / element_size) + " " + elements + at + ", not " +
         std::to_string(count);
  } else {
    m += "has no view of " + elements + " aligned to " + std::to_string(element_align) + " bytes at byte offset " +
         std::to_string(offset) + " (address " + std::to_string(address + offset) +
         "); use an offset that is a multiple of alignof(T)";
  }
  throw Error(ErrorCode::InvalidArgument, m);
}

void throw_misaligned(std::string_view accessor, PageId page, std::uint64_t offset, std::size_t alignment) {
  throw Error(ErrorCode::InvalidArgument, std::string(accessor) + ": byte offset " + std::to_string(offset) +
                                              " of page " + page.to_string() + " is not a multiple of " +
                                              std::to_string(alignment) + ", the element type's alignment");
}

}  // namespace mmsb::detail
