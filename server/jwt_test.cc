#include "server/jwt.h"

#include <openssl/evp.h>
#include <openssl/x509.h>

#include "absl/strings/escaping.h"
#include "absl/strings/str_split.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "jose/jwk.h"

namespace signet::server {
namespace {

using ::testing::HasSubstr;

std::string Unb64(absl::string_view s) {
  std::string out;
  EXPECT_TRUE(absl::WebSafeBase64Unescape(s, &out));
  return out;
}

TEST(JwtTest, HeaderIsWrittenByTheServerInAFixedShape) {
  EXPECT_EQ(Unb64(ProtectedHeaderB64("ES256", "abc_-123")),
            R"({"alg":"ES256","kid":"abc_-123","typ":"JWT"})");
  // Whatever a kid held, it could not leave its string.
  EXPECT_EQ(Unb64(ProtectedHeaderB64("ES256", "a\",\"alg\":\"none")),
            R"({"alg":"ES256","kid":"a\",\"alg\":\"none","typ":"JWT"})");
}

TEST(JwtTest, CompactSerializationHasThreeUnpaddedParts) {
  std::string header = ProtectedHeaderB64("ES256", "k");
  std::string input = JwsSigningInput(header, R"({"iss":"x"})");
  std::string jws = CompactJws(input, std::string(64, '\xff'));
  std::vector<std::string> parts = absl::StrSplit(jws, '.');
  ASSERT_EQ(parts.size(), 3u);
  EXPECT_EQ(Unb64(parts[1]), R"({"iss":"x"})");
  EXPECT_EQ(Unb64(parts[2]).size(), 64u);
  EXPECT_EQ(jws.find('='), std::string::npos);
}

TEST(JwtTest, JwksIsDeterministicAndCarriesTheRequiredMembers) {
  EVP_PKEY* pkey = EVP_PKEY_Q_keygen(nullptr, nullptr, "EC", "P-256");
  ASSERT_NE(pkey, nullptr);
  unsigned char* der = nullptr;
  int len = i2d_PUBKEY(pkey, &der);
  ASSERT_GT(len, 0);
  auto key = hsm::PublicKey::FromSpkiDer(
      absl::string_view(reinterpret_cast<char*>(der), len));
  OPENSSL_free(der);
  EVP_PKEY_free(pkey);
  ASSERT_TRUE(key.ok());
  auto kid = jose::JwkThumbprint(key->get());
  ASSERT_TRUE(kid.ok());
  auto a = JwksJson({JwkEntry{&*key, *kid, "ES256"}});
  auto b = JwksJson({JwkEntry{&*key, *kid, "ES256"}});
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_EQ(*a, *b);
  EXPECT_EQ(ContentVersion(*a), ContentVersion(*b));
  EXPECT_THAT(*a, HasSubstr(R"("alg":"ES256","crv":"P-256","kid":")"));
  EXPECT_THAT(*a, HasSubstr(R"("kty":"EC","use":"sig")"));
  EXPECT_NE(ContentVersion(*a), ContentVersion(*a + " "));
}

}  // namespace
}  // namespace signet::server
