// tools/json.hpp — a small streaming JSON writer for the tool's --json output.
//
//   JsonWriter json(std::cout);
//   json.begin_object().field("lsn", lsn).key("pages").begin_array();
//   ... json.end_array().end_object();   // the destructor adds nothing: close what you open
//
// The output is valid JSON (RFC 8259): strings are escaped, bytes that are not valid UTF-8 become U+FFFD, and
// non-finite doubles become null. It is indented by two spaces and ends with a newline after the outermost value.
// Thread-safety: one writer per thread.
#pragma once

#include <cstdint>
#include <ostream>
#include <string>
#include <string_view>
#include <vector>

namespace mmsb::cli {

class JsonWriter {
 public:
  explicit JsonWriter(std::ostream& out) : out_(out) {}

  JsonWriter& begin_object();
  JsonWriter& end_object();
  JsonWriter& begin_array();
  JsonWriter& end_array();
  JsonWriter& key(std::string_view name);

  JsonWriter& value(std::string_view text);
  JsonWriter& value(const char* text) { return value(std::string_view(text)); }
  JsonWriter& value(const std::string& text) { return value(std::string_view(text)); }
  JsonWriter& value(std::uint64_t number);
  JsonWriter& value(std::int64_t number);
  JsonWriter& value(unsigned number) { return value(std::uint64_t{number}); }
  JsonWriter& value(int number) { return value(std::int64_t{number}); }
  JsonWriter& value(double number);
  JsonWriter& value(bool flag);
  JsonWriter& null();

  template <class T>
  JsonWriter& field(std::string_view name, const T& v) {
    key(name);
    return value(v);
  }

 private:
  void before_value();
  void newline();

  struct Level {
    bool array;
    bool empty = true;
  };
  std::ostream& out_;
  std::vector<Level> levels_;
  bool after_key_ = false;
};

// `text` as a JSON string literal, quotes included.
std::string json_string(std::string_view text);

}  // namespace mmsb::cli
