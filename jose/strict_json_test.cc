#include "jose/strict_json.h"

#include <map>
#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace signet::jose {
namespace {

using Reason = JsonRefusal::Reason;

std::optional<JsonRefusal> Check(absl::string_view text, int max_depth = 4) {
  StrictJsonOptions options;
  options.max_depth = max_depth;
  return CheckStrictJsonObject(text, options);
}

TEST(StrictJsonTest, AcceptsAStrictObject) {
  EXPECT_EQ(Check(R"({"a":1,"b":[1,{"a":2}],"c":{"a":null}} )"), std::nullopt);
  // The same name in different objects is not a duplicate.
  EXPECT_EQ(Check(R"({"a":{"a":{"a":1}}})"), std::nullopt);
}

TEST(StrictJsonTest, RefusesWhatParsersReadDifferently) {
  struct Case {
    const char* text;
    Reason reason;
  };
  for (const Case& c : {
           Case{R"([1])", Reason::kNotAnObject},
           Case{R"("x")", Reason::kNotAnObject},
           Case{R"({"a":1}{"b":2})", Reason::kTrailingData},
           Case{R"({"a":1,"a":2})", Reason::kDuplicateMember},
           // Compared after unescaping.
           Case{R"({"a":1,"\u0061":2})", Reason::kDuplicateMember},
           Case{R"({"a":"x\u0000y"})", Reason::kNulInString},
           Case{R"({"a\u0000":1})", Reason::kNulInName},
           Case{R"({"a":[[[[1]]]]})", Reason::kTooDeep},
           Case{R"({"a":1e999})", Reason::kNumberOverflow},
           Case{R"({"a":"\ud800"})", Reason::kLoneSurrogate},
           Case{R"({"a":})", Reason::kSyntax},
           Case{"", Reason::kSyntax},
       }) {
    std::optional<JsonRefusal> refusal = Check(c.text);
    ASSERT_TRUE(refusal.has_value()) << c.text;
    EXPECT_EQ(refusal->reason, c.reason) << c.text;
  }
}

TEST(StrictJsonTest, SaysWhereTheProblemIs) {
  std::optional<JsonRefusal> r =
      Check(R"({"x":1,"outer":{"in":{"k":1,"k":2}}})");
  ASSERT_TRUE(r.has_value());
  EXPECT_EQ(r->reason, Reason::kDuplicateMember);
  EXPECT_EQ(r->name, "k");
  EXPECT_EQ(r->depth, 3);
  EXPECT_EQ(r->top_member, "outer");
  EXPECT_FALSE(r->offset.has_value());

  r = Check(R"({"a":1} x)");
  ASSERT_TRUE(r.has_value());
  EXPECT_EQ(r->reason, Reason::kTrailingData);
  EXPECT_EQ(r->offset, 8u);

  r = Check(R"({"a":tru})");
  ASSERT_TRUE(r.has_value());
  EXPECT_EQ(r->reason, Reason::kSyntax);
  EXPECT_THAT(r->description, ::testing::StartsWith("syntax error"));
  // nlohmann's echo of the input stays out.
  EXPECT_THAT(r->description, ::testing::Not(::testing::HasSubstr("tru")));

  r = Check("42");
  ASSERT_TRUE(r.has_value());
  EXPECT_EQ(r->got, JsonValue::Kind::kUnsigned);
  EXPECT_EQ(KindName(r->got), "a number");
}

// A thirteenth outside attack had claims with 123456789012345678901234567890
// signed; a double-based reader (JavaScript) reads another value.
TEST(StrictJsonTest, InexactIntegersAreRefusedWhenAskedFor) {
  StrictJsonOptions options;
  options.refuse_inexact_integers = true;
  for (const char* text : {
           R"({"a":9007199254740991,"b":-9007199254740991,"c":1.5e300})",
           R"({"a":[0,-0,1e20]})",
       }) {
    EXPECT_EQ(CheckStrictJsonObject(text, options), std::nullopt) << text;
  }
  struct Case {
    const char* text;
    JsonValue::Kind kind;
    int depth;
  };
  for (const Case& c : {
           Case{R"({"a":9007199254740992})", JsonValue::Kind::kUnsigned, 1},
           Case{R"({"a":{"b":[-9007199254740992]}})",
                JsonValue::Kind::kNegative, 3},
           Case{R"({"a":123456789012345678901234567890})",
                JsonValue::Kind::kFloat, 1},
       }) {
    std::optional<JsonRefusal> r = CheckStrictJsonObject(c.text, options);
    ASSERT_TRUE(r.has_value()) << c.text;
    EXPECT_EQ(r->reason, Reason::kInexactInteger) << c.text;
    EXPECT_EQ(r->value.kind, c.kind) << c.text;
    EXPECT_EQ(r->depth, c.depth) << c.text;
    EXPECT_EQ(r->top_member, "a") << c.text;
    // Not asked for: accepted.
    EXPECT_EQ(Check(c.text), std::nullopt) << c.text;
  }
}

TEST(StrictJsonTest, TheDepthLimitCountsTheTopLevelObject) {
  EXPECT_EQ(Check(R"({"a":{"b":1}})", 2), std::nullopt);
  std::optional<JsonRefusal> r = Check(R"({"a":{"b":[1]}})", 2);
  ASSERT_TRUE(r.has_value());
  EXPECT_EQ(r->reason, Reason::kTooDeep);
  EXPECT_EQ(r->depth, 2);
}

TEST(StrictJsonTest, HandsTopLevelValuesToTheCaller) {
  std::map<std::string, JsonValue> seen;
  StrictJsonOptions options;
  options.on_top_level_value = [&](const std::string& member,
                                   const JsonValue& value) {
    seen[member] = value;
  };
  EXPECT_EQ(CheckStrictJsonObject(
                R"({"s":"x","u":7,"n":-0,"f":1.5,"o":{"inner":1},"b":true})",
                options),
            std::nullopt);
  EXPECT_EQ(seen.size(), 6u);  // "inner" is not at the top level
  EXPECT_EQ(seen["s"].kind, JsonValue::Kind::kString);
  EXPECT_EQ(seen["s"].text, "x");
  EXPECT_EQ(seen["u"].unsigned_value, 7u);
  EXPECT_EQ(seen["n"].kind, JsonValue::Kind::kNegative);
  EXPECT_EQ(seen["f"].text, "1.5");
  EXPECT_EQ(seen["o"].kind, JsonValue::Kind::kObject);
  EXPECT_EQ(seen["b"].kind, JsonValue::Kind::kBool);
}

}  // namespace
}  // namespace signet::jose
