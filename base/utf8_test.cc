#include "base/utf8.h"

#include <optional>
#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace signet::base {
namespace {

using ::testing::Eq;
using ::testing::Optional;

TEST(FindUtf8ErrorTest, AcceptsUtf8UpToTheLastCodePoint) {
  EXPECT_EQ(FindUtf8Error(""), std::nullopt);
  EXPECT_EQ(FindUtf8Error("plain ASCII \x01\x7f"), std::nullopt);
  // U+00E9, U+20AC, U+D7FF and U+E000 around the surrogates, U+10FFFF.
  EXPECT_EQ(FindUtf8Error("\xC3\xA9 \xE2\x82\xAC \xED\x9F\xBF \xEE\x80\x80 "
                          "\xF4\x8F\xBF\xBF"),
            std::nullopt);
}

TEST(FindUtf8ErrorTest, NamesTheFirstErrorAndWhere) {
  EXPECT_THAT(FindUtf8Error("ab\xC0\xAF"),
              Optional(Eq("byte offset 2: overlong encoding (lead byte 0xC0 "
                          "or 0xC1)")));
  EXPECT_THAT(FindUtf8Error("\xED\xA0\x80"),
              Optional(Eq("byte offset 0: UTF-16 surrogate (U+D800..U+DFFF) "
                          "encoded in UTF-8")));
  EXPECT_THAT(FindUtf8Error("x\xE2\x82"),
              Optional(Eq("byte offset 1: truncated sequence (3-byte "
                          "sequence with only 2 byte(s))")));
  EXPECT_THAT(FindUtf8Error("\xF4\x90\x80\x80"),
              Optional(Eq("byte offset 0: code point above U+10FFFF")));
  EXPECT_THAT(FindUtf8Error("ok\x80"),
              Optional(Eq("byte offset 2: continuation byte 0x80 without a "
                          "lead byte")));
}

}  // namespace
}  // namespace signet::base
