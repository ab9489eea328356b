// mmsb/page_id.hpp — the 64-bit identity of a page.
//
// A PageId is deterministic: the same program creating pages in the same order gets the same ids. The high
// 16 bits name the owning rank (distributed mode; 0 in a single process), the low 48 bits a per-rank
// sequence number starting at 1. The value 0 is never a valid id. A deleted id is never handed out again.
//
//   mmsb::PageId id = rt.create_page(4096);
//   std::printf("%s owned by rank %u\n", id.to_string().c_str(), id.rank());
//
// Thread-safety: PageId is a trivially copyable value.
#pragma once

#include <compare>
#include <cstdint>
#include <functional>
#include <string>

namespace mmsb {

class PageId {
 public:
  static constexpr unsigned kRankBits = 16;
  static constexpr unsigned kSequenceBits = 64 - kRankBits;
  static constexpr std::uint64_t kSequenceMask = (std::uint64_t{1} << kSequenceBits) - 1;
  static constexpr std::uint32_t kMaxRank = (1u << kRankBits) - 1;

  constexpr PageId() noexcept = default;
  constexpr explicit PageId(std::uint64_t raw) noexcept : raw_(raw) {}
  static constexpr PageId make(std::uint32_t rank, std::uint64_t sequence) noexcept {
    return PageId((std::uint64_t{rank} << kSequenceBits) | (sequence & kSequenceMask));
  }

  constexpr std::uint64_t value() const noexcept { return raw_; }
  constexpr std::uint32_t rank() const noexcept { return static_cast<std::uint32_t>(raw_ >> kSequenceBits); }
  constexpr std::uint64_t sequence() const noexcept { return raw_ & kSequenceMask; }
  constexpr bool valid() const noexcept { return sequence() != 0; }
  constexpr explicit operator bool() const noexcept { return valid(); }

  // "p<rank>:<sequence>", e.g. "p0:17"; what error messages and logs print.
  std::string to_string() const { return "p" + std::to_string(rank()) + ":" + std::to_string(sequence()); }

  friend constexpr auto operator<=>(PageId, PageId) noexcept = default;

 private:
  std::uint64_t raw_ = 0;
};

}  // namespace mmsb

template <>
struct std::hash<mmsb::PageId> {
  std::size_t operator()(mmsb::PageId id) const noexcept { return std::hash<std::uint64_t>{}(id.value()); }
};
