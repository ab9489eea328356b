// mmsb/typed_view.hpp — page bytes seen as arrays of a value type, with size and alignment checked.
//
// The typed accessors of the other headers (ReadView::span<T>, Runtime::read_span<T>, Transaction::write_span<T>,
// MapContext::input_span<T> / output_span<T>, IncrementalContext::input_span<T> / output_span<T>) are built on
// view_as<T>() below. T must be trivially copyable (a plain struct of numbers, say). A view of a whole page needs a
// page size that is a whole number of T; a view at a byte offset needs that offset aligned for T. Page bytes are
// 64-byte aligned (those of pages created with at most 8 bytes: 8-byte aligned, enough for any T that fits them),
// so any T with alignof(T) <= 64 fits a page at offset 0. A failed check throws
// Error(InvalidArgument) naming the page, its size, the offset and sizeof/alignof T.
//
//   struct Particle { float x, y, vx, vy; };
//   std::span<const Particle> ps = view.span<Particle>(particles);   // view: a ReadView holding `particles`
//
// Thread-safety: plain functions of their arguments. A view is valid while the bytes it views are (see the
// accessor that returned it).
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string_view>
#include <type_traits>

#include "mmsb/page_id.hpp"

namespace mmsb {

// What a typed view may hold: a type whose bytes are its value.
template <class T>
concept PageValue = std::is_trivially_copyable_v<T> && !std::is_reference_v<T> && !std::is_void_v<T>;

// "As many elements as fit": the count of a view that runs to the end of the page.
inline constexpr std::uint64_t kWholePage = ~std::uint64_t{0};

// Where a view is taken, for error messages: the accessor, the page, and (for a node's input) its index.
struct ViewSite {
  static constexpr std::uint64_t kNoInput = ~std::uint64_t{0};
  std::string_view accessor;       // "ReadView::span", "MapContext::input_span", ...
  PageId page;                     // the page viewed; for a node's input: the node's output page
  std::uint64_t input = kNoInput;  // the input's index, for a node's input
};

namespace detail {

// Throws Error(InvalidArgument) saying why `bytes_size` bytes (at `address`) hold no view of `count` elements of
// `element_size` bytes, aligned to `element_align`, at byte `offset`.
[[noreturn]] void throw_bad_view(const ViewSite& site, std::uint64_t bytes_size, std::uintptr_t address,
                                 std::uint64_t offset, std::uint64_t count, std::size_t element_size,
                                 std::size_t element_align);
// Throws Error(InvalidArgument): `offset` of page `page` is not a multiple of `alignment` (a typed copy's check).
[[noreturn]] void throw_misaligned(std::string_view accessor, PageId page, std::uint64_t offset, std::size_t alignment);

}  // namespace detail

// `count` elements of T starting at byte `offset` of `bytes`; with count == kWholePage, every element from `offset`
// to the end, which must then be a whole number of T. `Byte` is std::byte or const std::byte; the result's
// constness follows it. Throws Error(InvalidArgument) naming `site` when the elements do not fit or the first is
// not aligned for T.
template <PageValue T, class Byte>
requires std::is_same_v<std::remove_const_t<Byte>, std::byte>
auto view_as(std::span<Byte> bytes, const ViewSite& site, std::uint64_t offset = 0, std::uint64_t count = kWholePage) {
  using Element = std::conditional_t<std::is_const_v<Byte>, const T, T>;
  const std::uint64_t size = bytes.size();
  const auto address = reinterpret_cast<std::uintptr_t>(bytes.data());
  const std::uint64_t rest = offset <= size ? size - offset : 0;
  const bool fits = offset <= size && (count == kWholePage ? rest % sizeof(T) == 0 : count <= rest / sizeof(T));
  if (!fits || (address + offset) % alignof(T) != 0) {
    detail::throw_bad_view(site, size, address, offset, count, sizeof(T), alignof(T));
  }
  if (count == kWholePage) count = rest / sizeof(T);
  if (count == 0) return std::span<Element>();
  Byte* first = bytes.data() + offset;
  // Page memory comes from the allocator (or a mapping), where objects of implicit-lifetime types such as T begin
  // to exist implicitly, so viewing it as T is defined.
  return std::span<Element>(reinterpret_cast<Element*>(first), static_cast<std::size_t>(count));
}

}  // namespace mmsb
