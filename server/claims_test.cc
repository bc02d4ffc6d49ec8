#include "server/claims.h"

#include <algorithm>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <random>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/testing/claims_corpus.h"

#ifndef SIGNET_CLAIMS_CORPUS_DIR
#error "SIGNET_CLAIMS_CORPUS_DIR must name tests/corpus/claims"
#endif

namespace signet::server {
namespace {

using ::testing::HasSubstr;

constexpr char kIssuer[] = "https://consumer.signet.example";
constexpr int64_t kNow = 1800000000;

// The policy of the corpus (tests/corpus/claims/expected.txt).
ClaimsPolicy Policy() {
  ClaimsPolicy policy;
  policy.issuer = kIssuer;
  policy.max_lifetime = absl::Seconds(3600);
  policy.iat_skew = absl::Seconds(60);
  policy.now = absl::FromUnixSeconds(kNow);
  return policy;
}

// {"iss":…,"iat":…,"exp":…} followed by `extra` members.
std::string Claims(absl::string_view extra = "", int64_t iat = kNow,
                   int64_t exp = kNow + 3600) {
  return absl::StrCat(R"({"iss":")", kIssuer, R"(","iat":)", iat, R"(,"exp":)",
                      exp, extra, "}");
}

// Asserts INVALID_ARGUMENT with `substring` in the message.
void ExpectInvalid(absl::string_view claims, absl::string_view substring) {
  absl::StatusOr<CheckedClaims> checked = CheckClaims(claims, Policy());
  ASSERT_FALSE(checked.ok()) << claims;
  EXPECT_EQ(checked.status().code(), absl::StatusCode::kInvalidArgument)
      << checked.status();
  EXPECT_THAT(std::string(checked.status().message()),
              HasSubstr(std::string(substring)));
}

TEST(CheckClaimsTest, AcceptsMinimalClaimsAndReturnsTheDates) {
  absl::StatusOr<CheckedClaims> checked = CheckClaims(Claims(), Policy());
  ASSERT_TRUE(checked.ok()) << checked.status();
  EXPECT_EQ(checked->iat, kNow);
  EXPECT_EQ(checked->exp, kNow + 3600);
  EXPECT_FALSE(checked->nbf.has_value());
}

TEST(CheckClaimsTest, AcceptsFreeMembersAndNbf) {
  absl::StatusOr<CheckedClaims> checked = CheckClaims(
      Claims(R"(,"nbf":1800000010,"sub":"u","aud":["a","b"],)"
             R"("x":{"iat":"free when nested","n":[1.5,-0,null,true]})"),
      Policy());
  ASSERT_TRUE(checked.ok()) << checked.status();
  ASSERT_TRUE(checked->nbf.has_value());
  EXPECT_EQ(*checked->nbf, kNow + 10);
}

TEST(CheckClaimsTest, RefusesMoreThan64KiB) {
  const std::string padding_member = R"(,"pad":"")";
  const size_t room = kMaxClaimsBytes - Claims(padding_member).size();
  const std::string exact =
      Claims(absl::StrCat(R"(,"pad":")", std::string(room, 'a'), "\""));
  ASSERT_EQ(exact.size(), kMaxClaimsBytes);
  EXPECT_TRUE(CheckClaims(exact, Policy()).ok());
  const std::string over =
      Claims(absl::StrCat(R"(,"pad":")", std::string(room + 1, 'a'), "\""));
  ExpectInvalid(over, "claims are 65537 bytes; at most 65536 (64 KiB)");
}

TEST(CheckClaimsTest, RefusesByteOrderMark) {
  ExpectInvalid(absl::StrCat("\xEF\xBB\xBF", Claims()), "byte order mark");
}

TEST(CheckClaimsTest, RefusesRawNulByte) {
  // nlohmann's lexer reads a NUL byte as the end of the input.
  ExpectInvalid(absl::StrCat(Claims(), std::string(1, '\0'), "junk"),
                "raw NUL byte at byte offset");
}

TEST(CheckClaimsTest, RefusesInvalidUtf8) {
  struct Case {
    const char* bytes;
    const char* message;
  };
  const Case kCases[] = {
      {"\xC0\xAF", "overlong encoding"},
      {"\xC1\xBF", "overlong encoding"},
      {"\xE0\x80\xAF", "overlong encoding of a 3-byte sequence"},
      {"\xF0\x80\x80\xAF", "overlong encoding of a 4-byte sequence"},
      {"\xED\xA0\x80", "UTF-16 surrogate (U+D800..U+DFFF) encoded in UTF-8"},
      {"\xED\xBF\xBF", "UTF-16 surrogate"},
      {"\xF4\x90\x80\x80", "code point above U+10FFFF"},
      {"\xF5\x80\x80\x80", "byte 0xF5 never appears in UTF-8"},
      {"\xFF", "byte 0xFF never appears in UTF-8"},
      {"\xE2\x82", "truncated sequence"},
      {"\xF0\x9F\x98", "truncated sequence"},
      {"\x80", "continuation byte 0x80 without a lead byte"},
  };
  for (const Case& c : kCases) {
    SCOPED_TRACE(absl::CHexEscape(c.bytes));
    ExpectInvalid(Claims(absl::StrCat(R"(,"s":")", c.bytes, "\"")),
                  absl::StrCat("claims are not valid UTF-8 at byte offset ",
                               Claims().size() - 1 + 6, ": ", c.message));
  }
  // A sequence cut by the end of the input.
  ExpectInvalid(absl::StrCat(Claims(), "\xE2"), "truncated sequence");
  // The longest valid forms pass.
  EXPECT_TRUE(CheckClaims(Claims(",\"s\":\"\xC2\x80\xDF\xBF\xE0\xA0\x80"
                                 "\xED\x9F\xBF\xEE\x80\x80\xF0\x90\x80\x80"
                                 "\xF4\x8F\xBF\xBF\""),
                          Policy())
                  .ok());
}

TEST(CheckClaimsTest, RefusesEscapedLoneSurrogates) {
  ExpectInvalid(Claims(R"(,"s":"\ud800")"), "escaped lone UTF-16 surrogate");
  ExpectInvalid(Claims(R"(,"s":"\udfff\ud800")"),
                "escaped lone UTF-16 surrogate");
  ExpectInvalid(Claims(R"(,"\ud800x":1)"), "escaped lone UTF-16 surrogate");
  EXPECT_TRUE(CheckClaims(Claims(R"(,"s":"\ud83d\ude00")"), Policy()).ok());
}

TEST(CheckClaimsTest, RefusesEscapedNul) {
  ExpectInvalid(Claims(R"(,"sub":"admin\u0000x")"),
                R"(U+0000 (\u0000) in a string inside member "sub")");
  ExpectInvalid(Claims(R"(,"a\u0000b":1)"),
                R"(U+0000 (\u0000) in the member name "a\x00\x62";)");
  ExpectInvalid(Claims(R"(,"o":{"\u0000":1})"),
                R"(in the member name "\x00" inside member "o";)");
}

TEST(CheckClaimsTest, RefusesEmptyInput) {
  ExpectInvalid("", "claims are empty");
  ExpectInvalid(" \n\t\r", "claims are empty");
}

TEST(CheckClaimsTest, RefusesTopLevelValuesThatAreNotObjects) {
  ExpectInvalid(absl::StrCat("[", Claims(), "]"),
                "claims must be a JSON object, got an array");
  ExpectInvalid(R"("claims")", "claims must be a JSON object, got a string");
  ExpectInvalid("1800000000", "claims must be a JSON object, got a number");
  ExpectInvalid("-1", "claims must be a JSON object, got a number");
  ExpectInvalid("1.5", "claims must be a JSON object, got a number");
  ExpectInvalid("true", "claims must be a JSON object, got a boolean");
  ExpectInvalid("null", "claims must be a JSON object, got null");
}

TEST(CheckClaimsTest, RefusesTrailingData) {
  ExpectInvalid(absl::StrCat(Claims(), "x"),
                "trailing data after the JSON object at byte offset");
  ExpectInvalid(absl::StrCat(Claims(), " ", Claims()),
                "trailing data after the JSON object");
  ExpectInvalid(absl::StrCat(Claims(), ","), "trailing data");
  ExpectInvalid(absl::StrCat(Claims(), "}"), "trailing data");
  EXPECT_TRUE(
      CheckClaims(absl::StrCat(" \r\n\t", Claims(), " \r\n\t"), Policy()).ok());
}

TEST(CheckClaimsTest, RefusesSyntaxErrorsWithoutEchoingInput) {
  ExpectInvalid(Claims(R"(,"x":1,)"), "claims are not valid JSON near byte");
  ExpectInvalid(Claims(",'x':1"), "not valid JSON");
  ExpectInvalid(Claims(R"(,"x":01)"), "not valid JSON");
  ExpectInvalid(Claims(R"(,"x":NaN)"), "not valid JSON");
  ExpectInvalid(absl::StrCat("/**/", Claims()), "not valid JSON");
  ExpectInvalid(Claims(",\"x\":\"tab\tinside\""), "not valid JSON");
  ExpectInvalid(Claims(R"(,"x":"open)"), "not valid JSON");
  absl::StatusOr<CheckedClaims> checked =
      CheckClaims(Claims(R"(,"secret-ish":"\q")"), Policy());
  ASSERT_FALSE(checked.ok());
  EXPECT_THAT(checked.status().message(),
              ::testing::Not(HasSubstr("secret-ish")));
  EXPECT_THAT(checked.status().message(),
              ::testing::Not(HasSubstr("last read")));
}

TEST(CheckClaimsTest, RefusesNestingDeeperThan16) {
  // The top-level object is level 1; "d" adds 15 more levels.
  const auto nested = [](int levels) {
    std::string s;
    for (int i = 0; i < levels - 1; ++i) s += i % 2 ? R"({"k":)" : "[";
    s += "{}";
    for (int i = levels - 2; i >= 0; --i) s += i % 2 ? "}" : "]";
    return s;
  };
  EXPECT_TRUE(
      CheckClaims(Claims(absl::StrCat(R"(,"d":)", nested(15))), Policy()).ok());
  ExpectInvalid(Claims(absl::StrCat(R"(,"d":)", nested(16))),
                R"(more than 16 levels deep inside member "d")");
  // Far deeper input stops at the limit, without recursion.
  ExpectInvalid(Claims(absl::StrCat(R"(,"d":)", std::string(30000, '['))),
                "more than 16 levels deep");
}

TEST(CheckClaimsTest, RefusesDuplicateMemberNamesAtAnyDepth) {
  ExpectInvalid(Claims(R"(,"sub":"a","sub":"b")"),
                R"(duplicate member name "sub" in the top-level object)");
  ExpectInvalid(Claims(R"(,"exp":1800000001)"),
                R"(duplicate member name "exp")");
  // After unescaping, "\u0069ss" is "iss".
  ExpectInvalid(Claims(R"(,"\u0069ss":"https://evil.example")"),
                R"(duplicate member name "iss")");
  ExpectInvalid(Claims(",\"\xC3\xA9\":1,\"\\u00e9\":2"),
                R"(duplicate member name "\xc3\xa9")");
  ExpectInvalid(Claims(",\"\xF0\x9F\x98\x80\":1,\"\\ud83d\\ude00\":2"),
                "duplicate member name");
  ExpectInvalid(Claims(R"(,"a":{"b":{"c":1,"\u0063":2}})"),
                R"(duplicate member name "c" in an object at depth 3 )"
                R"(inside member "a")");
  ExpectInvalid(Claims(R"(,"a":[{"x":1,"x":1}])"),
                R"(duplicate member name "x" in an object at depth 3)");
  // The same name in sibling objects is fine.
  EXPECT_TRUE(
      CheckClaims(Claims(R"(,"a":{"k":1},"b":{"k":2},"c":[{"k":1},{"k":2}])"),
                  Policy())
          .ok());
}

TEST(CheckClaimsTest, RefusesNumbersThatOverflowADouble) {
  ExpectInvalid(Claims(R"(,"x":1e400)"),
                "claims contain a number near byte offset ");
  ExpectInvalid(Claims(R"(,"x":[-1e400])"), "overflows a double");
}

TEST(CheckClaimsTest, RequiresTheScopesIssuer) {
  ExpectInvalid(R"({"iat":1800000000,"exp":1800003600})",
                R"(member "iss" is missing; it must be this scope's issuer )"
                R"("https://consumer.signet.example")");
  ExpectInvalid(R"({"iss":1,"iat":1800000000,"exp":1800003600})",
                R"(member "iss" must be a string, got a number)");
  ExpectInvalid(R"({"iss":null,"iat":1800000000,"exp":1800003600})",
                R"(member "iss" must be a string, got null)");
  for (const char* other :
       {"https://consumer.signet.example/", "https://Consumer.signet.example",
        "https://consumer.signet.example ", ""}) {
    ExpectInvalid(absl::StrCat(R"({"iss":")", other,
                               R"(","iat":1800000000,"exp":1800003600})"),
                  absl::StrCat(R"(member "iss" is ")", other,
                               R"(" but this scope's issuer is )"
                               R"("https://consumer.signet.example" )"
                               "(compared byte for byte)"));
  }
  // Escapes are undone before comparing.
  EXPECT_TRUE(CheckClaims(R"({"iss":"https:\/\/consumer.signet.example",)"
                          R"("iat":1800000000,"exp":1800003600})",
                          Policy())
                  .ok());
}

TEST(CheckClaimsTest, RequiresIatAndExp) {
  ExpectInvalid(absl::StrCat(R"({"iss":")", kIssuer, R"(","exp":1800003600})"),
                R"(member "iat" is missing)");
  ExpectInvalid(absl::StrCat(R"({"iss":")", kIssuer, R"(","iat":1800000000})"),
                R"(member "exp" is missing)");
}

// iat, exp and nbf share the NumericDate rules.
TEST(CheckClaimsTest, RequiresNumericDatesToBeIntegersInRange) {
  for (const char* name : {"iat", "exp", "nbf"}) {
    SCOPED_TRACE(name);
    const auto with = [&](absl::string_view value) {
      std::string iat = absl::StrCat(kNow);
      std::string exp = absl::StrCat(kNow + 3600);
      std::string nbf;
      absl::string_view member = name;
      if (member == "iat") iat = std::string(value);
      if (member == "exp") exp = std::string(value);
      if (member == "nbf") nbf = absl::StrCat(R"(,"nbf":)", value);
      return absl::StrCat(R"({"iss":")", kIssuer, R"(","iat":)", iat,
                          R"(,"exp":)", exp, nbf, "}");
    };
    const std::string prefix =
        absl::StrCat("member \"", name, "\" must be an integer in [0, 2^53)");
    ExpectInvalid(with(R"("1800000000")"),
                  absl::StrCat(prefix, ", got a string"));
    ExpectInvalid(with("true"), absl::StrCat(prefix, ", got a boolean"));
    ExpectInvalid(with("null"), absl::StrCat(prefix, ", got null"));
    ExpectInvalid(with("{}"), absl::StrCat(prefix, ", got an object"));
    ExpectInvalid(with("[1800000000]"), absl::StrCat(prefix, ", got an array"));
    for (const char* not_integer :
         {"1800000000.0", "1.8e9", "1800000000e0", "18E8", "1.8E+9", "-1.0"}) {
      ExpectInvalid(with(not_integer),
                    absl::StrCat(prefix,
                                 " written without fraction or exponent, got "
                                 "\"",
                                 not_integer, "\""));
    }
    ExpectInvalid(with("-1"), absl::StrCat(prefix,
                                           ", got -1, which is "
                                           "negative"));
    ExpectInvalid(with("-0"), absl::StrCat(prefix,
                                           ", got -0, which is "
                                           "negative"));
    ExpectInvalid(with("-9223372036854775808"),
                  absl::StrCat(prefix, ", got -9223372036854775808"));
    ExpectInvalid(with("9007199254740992"),
                  absl::StrCat(prefix,
                               ", got 9007199254740992, which is out "
                               "of range"));
    ExpectInvalid(with("18446744073709551615"),
                  absl::StrCat(prefix, ", got 18446744073709551615"));
    ExpectInvalid(with("99999999999999999999"),
                  absl::StrCat(prefix,
                               ", got \"99999999999999999999\", which "
                               "is out of range"));
    // 2^53 - 1 is in range: the next check (a time rule) refuses it.
    absl::StatusOr<CheckedClaims> top =
        CheckClaims(with("9007199254740991"), Policy());
    ASSERT_FALSE(top.ok());
    EXPECT_THAT(top.status().message(), ::testing::Not(HasSubstr(prefix)));
  }
}

TEST(CheckClaimsTest, RequiresIatWithinTheSkew) {
  EXPECT_TRUE(CheckClaims(Claims("", kNow + 60, kNow + 3660), Policy()).ok());
  EXPECT_TRUE(CheckClaims(Claims("", kNow - 60, kNow + 3540), Policy()).ok());
  ExpectInvalid(Claims("", kNow + 61, kNow + 3600),
                R"(member "iat" (1800000061) is 1m1s ahead of the server's )"
                "clock (1800000000); at most 1m of skew is allowed");
  ExpectInvalid(Claims("", kNow - 61, kNow + 3000),
                "is 1m1s behind the server's clock");
  ExpectInvalid(Claims("", 0, kNow + 10), "behind the server's clock");
  ClaimsPolicy wide = Policy();
  wide.iat_skew = absl::Minutes(5);
  EXPECT_TRUE(CheckClaims(Claims("", kNow - 299, kNow + 3000), wide).ok());
}

TEST(CheckClaimsTest, RequiresExpAfterIat) {
  ExpectInvalid(
      Claims("", kNow, kNow),
      R"(member "exp" (1800000000) must be after "iat" (1800000000))");
  ExpectInvalid(Claims("", kNow, kNow - 1), "must be after \"iat\"");
}

TEST(CheckClaimsTest, RequiresLifetimeWithinTheScopesMaximum) {
  ExpectInvalid(Claims("", kNow, kNow + 3601),
                R"(lifetime "exp" - "iat" is 1h1s; this scope allows at )"
                "most 1h");
  ClaimsPolicy short_lived = Policy();
  short_lived.max_lifetime = absl::Minutes(5);
  EXPECT_TRUE(CheckClaims(Claims("", kNow, kNow + 300), short_lived).ok());
  absl::StatusOr<CheckedClaims> checked =
      CheckClaims(Claims("", kNow, kNow + 301), short_lived);
  EXPECT_EQ(checked.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(checked.status().message(), HasSubstr("at most 5m"));
}

TEST(CheckClaimsTest, RefusesAnAlreadyExpiredToken) {
  ExpectInvalid(Claims("", kNow - 60, kNow),
                R"(member "exp" (1800000000) is not after the server's )"
                "clock (1800000000): the token would already be expired");
  EXPECT_TRUE(CheckClaims(Claims("", kNow - 60, kNow + 1), Policy()).ok());
}

TEST(CheckClaimsTest, RequiresNbfBeforeExp) {
  ExpectInvalid(Claims(R"(,"nbf":1800003600)"),
                R"(member "nbf" (1800003600) must be before "exp" )"
                "(1800003600)");
  ExpectInvalid(Claims(R"(,"nbf":1800009999)"), "must be before \"exp\"");
  EXPECT_TRUE(CheckClaims(Claims(R"(,"nbf":1800003599)"), Policy()).ok());
  EXPECT_TRUE(CheckClaims(Claims(R"(,"nbf":0)"), Policy()).ok());
}

TEST(CheckClaimsTest, AnEmptyPolicyIssuerIsAServerError) {
  ClaimsPolicy policy = Policy();
  policy.issuer.clear();
  absl::StatusOr<CheckedClaims> checked =
      CheckClaims(R"({"iss":"","iat":1800000000,"exp":1800003600})", policy);
  EXPECT_EQ(checked.status().code(), absl::StatusCode::kFailedPrecondition);
}

// Every prefix and many random mutations of valid claims: a status, never
// an exception or a crash, and never OK for a mutation that breaks JSON.
TEST(CheckClaimsTest, NeverThrowsOnMangledInput) {
  const std::string valid = Claims(
      R"(,"nbf":1800000000,"a":[1,2.5,{"b":"\u00e9\ud83d\ude00"}],"t":true)");
  ASSERT_TRUE(CheckClaims(valid, Policy()).ok());
  for (size_t n = 0; n < valid.size(); ++n) {
    EXPECT_EQ(CheckClaims(valid.substr(0, n), Policy()).status().code(),
              absl::StatusCode::kInvalidArgument)
        << n;
  }
  std::mt19937 random(4);
  for (int round = 0; round < 20000; ++round) {
    std::string mangled = valid;
    const int edits = 1 + static_cast<int>(random() % 4);
    for (int e = 0; e < edits; ++e) {
      mangled[random() % mangled.size()] = static_cast<char>(random() % 256);
    }
    absl::StatusOr<CheckedClaims> checked = CheckClaims(mangled, Policy());
    if (!checked.ok()) {
      EXPECT_EQ(checked.status().code(), absl::StatusCode::kInvalidArgument);
    }
  }
}

using signet::testing::CorpusEntry;

// The rule of a refusal, for audit lines that must not carry the claims.
TEST(CheckClaimsTest, EachRefusalNamesItsRule) {
  auto rule = [](absl::string_view claims) {
    return ClaimsRuleOf(CheckClaims(claims, Policy()).status());
  };
  EXPECT_EQ(rule(Claims(R"(,"sub":"a","sub":"b")")), "duplicate_member");
  EXPECT_EQ(rule(Claims("", kNow, kNow)), "exp_not_after_iat");
  EXPECT_EQ(rule(Claims("", kNow, kNow + 7200)), "lifetime_too_long");
  EXPECT_EQ(rule(R"({"iss":"https://evil.example","iat":1,"exp":2})"),
            "iss_not_the_scopes");
  EXPECT_EQ(
      rule(absl::StrCat(R"({"iss":")", kIssuer, R"(","exp":)", kNow + 60, "}")),
      "iat_missing");
  EXPECT_EQ(rule("{"), "syntax");
  EXPECT_EQ(rule(Claims()), "");  // accepted: no rule
  EXPECT_EQ(ClaimsRuleOf(absl::InvalidArgumentError("other")), "");
}

TEST(ClaimsCorpusTest, EveryFileGivesItsExpectedStatus) {
  const std::filesystem::path dir = SIGNET_CLAIMS_CORPUS_DIR;
  ASSERT_TRUE(std::filesystem::is_directory(dir)) << dir << " is missing";
  const std::vector<CorpusEntry> entries =
      signet::testing::ReadClaimsCorpus(dir);
  ASSERT_GE(entries.size(), 40u);

  std::set<std::string> listed;
  for (const CorpusEntry& entry : entries) {
    SCOPED_TRACE(entry.file);
    EXPECT_TRUE(listed.insert(entry.file).second) << "listed twice";
    std::ifstream in(dir / entry.file, std::ios::binary);
    ASSERT_TRUE(in.good()) << "cannot read " << (dir / entry.file);
    const std::string claims((std::istreambuf_iterator<char>(in)),
                             std::istreambuf_iterator<char>());
    absl::StatusOr<CheckedClaims> checked = CheckClaims(claims, Policy());
    if (entry.status == "OK") {
      EXPECT_TRUE(checked.ok()) << checked.status();
      EXPECT_EQ(entry.substring, "-");
    } else {
      ASSERT_EQ(entry.status, "INVALID_ARGUMENT");
      ASSERT_FALSE(checked.ok());
      EXPECT_EQ(checked.status().code(), absl::StatusCode::kInvalidArgument);
      EXPECT_THAT(std::string(checked.status().message()),
                  HasSubstr(entry.substring));
      // Every refusal names its rule for the audit log, in a fixed
      // vocabulary that quotes nothing of the request.
      EXPECT_THAT(ClaimsRuleOf(checked.status()),
                  ::testing::MatchesRegex("[a-z0-9_]+"));
    }
  }
  // Every corpus file is listed, so none is silently skipped.
  for (const auto& file : std::filesystem::directory_iterator(dir)) {
    const std::string name = file.path().filename().string();
    if (name != "expected.txt") {
      EXPECT_TRUE(listed.count(name)) << name << " is not in expected.txt";
    }
  }
}

}  // namespace
}  // namespace signet::server
