#include "base/base64url.h"

#include <optional>
#include <string>

#include "absl/strings/string_view.h"
#include "gtest/gtest.h"

namespace signet::base {
namespace {

TEST(Base64UrlTest, EncodesWithoutPaddingInTheUrlAlphabet) {
  EXPECT_EQ(Base64UrlEncode(""), "");
  EXPECT_EQ(Base64UrlEncode("\x01"), "AQ");
  EXPECT_EQ(Base64UrlEncode("\xfb\xff"), "-_8");
  EXPECT_EQ(Base64UrlEncode("abc"), "YWJj");
}

TEST(Base64UrlTest, DecodesWhatItEncodes) {
  for (const std::string& bytes :
       {std::string(), std::string("\x00", 1), std::string("\xfb\xff\xfe"),
        std::string(65, '\x7f')}) {
    EXPECT_EQ(StrictBase64UrlDecode(Base64UrlEncode(bytes)), bytes);
  }
}

TEST(Base64UrlTest, RefusesEveryTextButTheCanonicalOne) {
  EXPECT_EQ(StrictBase64UrlDecode("AQ"), std::string("\x01"));
  EXPECT_FALSE(StrictBase64UrlDecode("A").has_value());     // 1 mod 4
  EXPECT_FALSE(StrictBase64UrlDecode("AR").has_value());    // stray bits
  EXPECT_FALSE(StrictBase64UrlDecode("AQ==").has_value());  // padding
  EXPECT_FALSE(StrictBase64UrlDecode("A Q").has_value());   // whitespace
  EXPECT_FALSE(StrictBase64UrlDecode("AQ\n").has_value());
  EXPECT_FALSE(StrictBase64UrlDecode("+/8").has_value());  // not URL-safe
  EXPECT_FALSE(
      StrictBase64UrlDecode(absl::string_view("YW\0J", 4)).has_value());
}

}  // namespace
}  // namespace signet::base
