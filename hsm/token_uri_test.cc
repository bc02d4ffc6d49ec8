#include "hsm/token_uri.h"

#include <cstring>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace signet::hsm {
namespace {

CK_TOKEN_INFO InfoWithLabel(const char* label) {
  CK_TOKEN_INFO info;
  std::memset(&info, ' ', sizeof(info));
  std::memcpy(info.label, label, std::strlen(label));
  return info;
}

TEST(TokenUriTest, MatchesByLabel) {
  auto uri = TokenUri::Parse("pkcs11:token=signet");
  ASSERT_TRUE(uri.ok()) << uri.status();
  EXPECT_TRUE(uri->Matches(InfoWithLabel("signet")));
  EXPECT_FALSE(uri->Matches(InfoWithLabel("signet-other")));
  EXPECT_FALSE(uri->Matches(InfoWithLabel("other")));
}

TEST(TokenUriTest, PercentEncodedLabel) {
  auto uri = TokenUri::Parse("pkcs11:token=my%20token");
  ASSERT_TRUE(uri.ok());
  EXPECT_TRUE(uri->Matches(InfoWithLabel("my token")));
}

TEST(TokenUriTest, RefusesWhatIsNotAPkcs11Uri) {
  EXPECT_EQ(TokenUri::Parse("https://hsm.example").status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(TokenUri::Parse("signet").status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(TokenUriTest, RefusesAttributesThatSelectNoToken) {
  // A typo ("tokn") would otherwise match every token.
  auto uri = TokenUri::Parse("pkcs11:tokn=signet");
  EXPECT_EQ(uri.status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(TokenUriTest, LabelIsUnpadded) {
  EXPECT_EQ(TokenLabel(InfoWithLabel("signet")), "signet");
}

}  // namespace
}  // namespace signet::hsm
