// The tool's parsers and printers (tools/format.hpp, tools/json_output.hpp), without running the tool.
#include <gtest/gtest.h>

#include <cstdint>
#include <sstream>
#include <string>
#include <vector>

#include "commands.hpp"
#include "format.hpp"
#include "json_output.hpp"

namespace mmsb::cli {
namespace {

TEST(ParsePageId, AcceptsToStringFormAndPlainInteger) {
  EXPECT_EQ(parse_page_id("p0:17"), PageId::make(0, 17));
  EXPECT_EQ(parse_page_id("17"), PageId::make(0, 17));
  EXPECT_EQ(parse_page_id("p3:5"), PageId::make(3, 5));
  EXPECT_EQ(parse_page_id(std::to_string(PageId::make(3, 5).value())), PageId::make(3, 5));
  const PageId big = PageId::make(PageId::kMaxRank, PageId::kSequenceMask);
  EXPECT_EQ(parse_page_id(big.to_string()), big) << "round trip of to_string at the limits";
}

TEST(ParsePageId, RefusesZeroSignsSpacesOverflowAndOtherForms) {
  for (const char* bad : {"", "0", "p0:0", "p1:0", "-1", " 1", "1 ", "p0:", "p:1", "q0:1", "p0-1", "p65536:1",
                          "p0:281474976710656", "18446744073709551616", "0x10", "p0:1:2"}) {
    try {
      parse_page_id(bad);
      ADD_FAILURE() << "accepted '" << bad << "'";
    } catch (const ToolError& e) {
      EXPECT_EQ(e.exit_code(), kExitError);
      EXPECT_NE(std::string(e.what()).find("bad page id '" + std::string(bad) + "'"), std::string::npos) << e.what();
    }
  }
}

TEST(ParseTime, AcceptsUnixNanosecondsAndIsoUtcForms) {
  EXPECT_EQ(parse_time("0"), 0u);
  EXPECT_EQ(parse_time("1700000000123456789"), 1700000000123456789u);
  EXPECT_EQ(parse_time("1970-01-01T00:00:00Z"), 0u);
  EXPECT_EQ(parse_time("2023-11-14T22:13:20Z"), 1700000000000000000u);
  EXPECT_EQ(parse_time("2023-11-14T22:13:20.123456789Z"), 1700000000123456789u);
  EXPECT_EQ(parse_time("2023-11-14T22:13:20.5Z"), 1700000000500000000u);
  EXPECT_EQ(parse_time("2023-11-14 22:13:20+00:00"), 1700000000000000000u);
  EXPECT_EQ(parse_time("2024-02-29T00:00:00Z"), 1709164800000000000u) << "a leap day";
}

TEST(ParseTime, RefusesLocalTimesBadDatesAndTooManyDigits) {
  for (const char* bad :
       {"", "yesterday", "2023-11-14", "2023-11-14T22:13:20", "2023-11-14T22:13:20+01:00", "2023-02-29T00:00:00Z",
        "2023-13-01T00:00:00Z", "2023-11-14T24:00:00Z", "2023-11-14T22:13:60Z", "2023-11-14T22:13:20.Z",
        "2023-11-14T22:13:20.1234567891Z", "1969-12-31T23:59:59Z", "-5"}) {
    EXPECT_THROW(parse_time(bad), ToolError) << bad;
  }
}

TEST(FormatUtc, PrintsNanosecondsAndRoundTripsThroughParseTime) {
  EXPECT_EQ(format_utc(0), "1970-01-01T00:00:00.000000000Z");
  EXPECT_EQ(format_utc(1700000000123456789u), "2023-11-14T22:13:20.123456789Z");
  for (std::uint64_t ns : {1u, 999999999u}) EXPECT_EQ(parse_time(format_utc(ns)), ns);
  EXPECT_EQ(parse_time(format_utc(1709164800000000001u)), 1709164800000000001u);
}

TEST(HexDump, PrintsOffsetsHexAndTextAndSqueezesRepeatedLines) {
  std::vector<std::byte> bytes(64, std::byte{0});
  bytes[0] = std::byte{'A'};
  bytes[17] = std::byte{0xff};
  std::ostringstream squeezed, full;
  write_hex_dump(squeezed, bytes, true);
  write_hex_dump(full, bytes, false);
  EXPECT_EQ(squeezed.str(),
            "00000000  41 00 00 00 00 00 00 00  00 00 00 00 00 00 00 00  |A...............|\n"
            "00000010  00 ff 00 00 00 00 00 00  00 00 00 00 00 00 00 00  |................|\n"
            "00000020  00 00 00 00 00 00 00 00  00 00 00 00 00 00 00 00  |................|\n"
            "*\n"
            "00000040\n");
  EXPECT_EQ(full.str().find('*'), std::string::npos);
  std::ostringstream partial;
  write_hex_dump(partial, std::span(bytes).first(3), true, "  ");
  EXPECT_EQ(partial.str(), "  00000000  41 00 00                                          |A..|\n  00000003\n");
}

TEST(QuotedText, EscapesQuotesBackslashesAndEveryNonPrintableByte) {
  EXPECT_EQ(quoted_text(std::string("a\"b\\c\n\x01\xff~")), "\"a\\\"b\\\\c\\x0a\\x01\\xff~\"");
  EXPECT_EQ(quoted_text(""), "\"\"");
}

TEST(JsonOutput, IndentsByTwoEscapesStringsAndEndsWithANewline) {
  Json json{{"s", std::string("a\"b\\c\nd\x01")},
            {"n", std::uint64_t{18446744073709551615u}},
            {"neg", std::int64_t{-3}},
            {"t", true},
            {"empty", Json::array()},
            {"list", {1, 0.5, nullptr}}};
  EXPECT_EQ(json_text(json),
            "{\n"
            "  \"s\": \"a\\\"b\\\\c\\nd\\u0001\",\n"
            "  \"n\": 18446744073709551615,\n"
            "  \"neg\": -3,\n"
            "  \"t\": true,\n"
            "  \"empty\": [],\n"
            "  \"list\": [\n"
            "    1,\n"
            "    0.5,\n"
            "    null\n"
            "  ]\n"
            "}\n");
}

// Intents and file names are bytes, not always UTF-8: the output must stay valid JSON whatever they hold.
TEST(JsonOutput, KeepsValidUtf8AndReplacesInvalidBytesWithTheReplacementCharacter) {
  const std::string valid = "caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80";
  EXPECT_EQ(json_text(Json(valid)), "\"" + valid + "\"\n");
  for (const std::string& bad :
       {std::string("\xff"), std::string("\xc0\xaf"), std::string("\xed\xa0\x80"), std::string("x\xe2\x82")}) {
    const std::string text = json_text(Json(bad));
    EXPECT_NE(text.find("\xef\xbf\xbd"), std::string::npos) << "no U+FFFD in " << text;
    EXPECT_TRUE(Json::accept(text)) << text;
  }
  // Keys too.
  Json keyed{{"in\xfftent", 1}};
  EXPECT_TRUE(Json::accept(json_text(keyed)));
}

}  // namespace
}  // namespace mmsb::cli
