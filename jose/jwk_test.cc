#include "jose/jwk.h"

#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/evp.h>
#include <openssl/x509.h>

#include <memory>
#include <string>
#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "crypto/digest.h"
#include "crypto/public_keys.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace signet::jose {
namespace {

using ::testing::SizeIs;

// Test-only keys: generated here, their public halves rebuilt through
// crypto/'s builders, as hsm::PublicKey builds the keys signet serves.
using crypto::EvpPkeyPtr;
using crypto::OsslFree;
using BnPtr = std::unique_ptr<BIGNUM, OsslFree<BN_free>>;

// RFC 7638 section 3.1.
constexpr char kRfc7638N[] =
    "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFF"
    "xuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt"
    "7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6q"
    "MQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHa"
    "Q-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw";
constexpr char kRfc7638E[] = "AQAB";
constexpr char kRfc7638Thumbprint[] =
    "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs";

std::string B64UrlDecode(absl::string_view in) {
  std::string out;
  EXPECT_TRUE(absl::WebSafeBase64Unescape(in, &out)) << in;
  return out;
}

EvpPkeyPtr GenerateEc(const char* curve) {
  EvpPkeyPtr key(EVP_PKEY_Q_keygen(nullptr, nullptr, "EC", curve));
  EXPECT_NE(key, nullptr) << "EC keygen on " << curve;
  return key;
}

EvpPkeyPtr GenerateRsa(size_t bits) {
  EvpPkeyPtr key(EVP_PKEY_Q_keygen(nullptr, nullptr, "RSA", bits));
  EXPECT_NE(key, nullptr) << "RSA keygen " << bits;
  return key;
}

std::string OpenSslSpki(EVP_PKEY* key) {
  const int len = i2d_PUBKEY(key, nullptr);
  EXPECT_GT(len, 0);
  std::string der(static_cast<size_t>(len), '\0');
  unsigned char* p = reinterpret_cast<unsigned char*>(der.data());
  EXPECT_EQ(i2d_PUBKEY(key, &p), len);
  return der;
}

// The public key an SPKI holds, as OpenSSL parses it.
EvpPkeyPtr FromSpki(const std::string& der) {
  const unsigned char* p = reinterpret_cast<const unsigned char*>(der.data());
  EvpPkeyPtr key(d2i_PUBKEY(nullptr, &p, static_cast<long>(der.size())));
  EXPECT_NE(key, nullptr);
  return key;
}

// The uncompressed point 04||X||Y.
std::string EcPoint(EVP_PKEY* key) {
  size_t len = 0;
  EXPECT_EQ(EVP_PKEY_get_octet_string_param(
                key, OSSL_PKEY_PARAM_ENCODED_PUBLIC_KEY, nullptr, 0, &len),
            1);
  std::string point(len, '\0');
  EXPECT_EQ(EVP_PKEY_get_octet_string_param(
                key, OSSL_PKEY_PARAM_ENCODED_PUBLIC_KEY,
                reinterpret_cast<unsigned char*>(point.data()), len, &len),
            1);
  return point;
}

std::string BnParam(EVP_PKEY* key, const char* name) {
  BIGNUM* raw = nullptr;
  EXPECT_EQ(EVP_PKEY_get_bn_param(key, name, &raw), 1) << name;
  BnPtr bn(raw);
  std::string out(static_cast<size_t>(BN_num_bytes(bn.get())), '\0');
  BN_bn2bin(bn.get(), reinterpret_cast<unsigned char*>(out.data()));
  return out;
}

// ---------------------------------------------------------------- RFC 7638

TEST(JwkTest, Rfc7638ExampleThumbprint) {
  absl::StatusOr<crypto::EvpPkeyPtr> key = crypto::RsaPublicKeyFromComponents(
      B64UrlDecode(kRfc7638N), B64UrlDecode(kRfc7638E));
  ASSERT_TRUE(key.ok()) << key.status();
  EXPECT_TRUE(EVP_PKEY_is_a(key->get(), "RSA"));
  EXPECT_EQ(EVP_PKEY_get_bits(key->get()), 2048);

  absl::StatusOr<JwkMembers> jwk = JwkOf(key->get());
  ASSERT_TRUE(jwk.ok()) << jwk.status();
  EXPECT_EQ(jwk->kty, "RSA");
  EXPECT_EQ(jwk->n, kRfc7638N);
  EXPECT_EQ(jwk->e, kRfc7638E);
  EXPECT_EQ(jwk->crv, "");
  EXPECT_EQ(jwk->x, "");
  EXPECT_EQ(jwk->y, "");

  absl::StatusOr<std::string> thumbprint = JwkThumbprint(key->get());
  ASSERT_TRUE(thumbprint.ok()) << thumbprint.status();
  EXPECT_EQ(*thumbprint, kRfc7638Thumbprint);
}

TEST(JwkTest, RsaLeadingZeroBytesAreIgnored) {
  absl::StatusOr<crypto::EvpPkeyPtr> key = crypto::RsaPublicKeyFromComponents(
      absl::StrCat(std::string(3, '\0'), B64UrlDecode(kRfc7638N)),
      absl::StrCat(std::string(1, '\0'), B64UrlDecode(kRfc7638E)));
  ASSERT_TRUE(key.ok()) << key.status();
  absl::StatusOr<JwkMembers> jwk = JwkOf(key->get());
  ASSERT_TRUE(jwk.ok()) << jwk.status();
  EXPECT_EQ(jwk->n, kRfc7638N);
  EXPECT_EQ(jwk->e, kRfc7638E);
  EXPECT_EQ(*JwkThumbprint(key->get()), kRfc7638Thumbprint);
}

// ---------------------------------------------------------------- EC

struct EcCase {
  const char* curve;
  crypto::EcCurve ec_curve;
  const char* crv;
  size_t field_bytes;
};

class EcJwkTest : public ::testing::TestWithParam<EcCase> {
 protected:
  void SetUp() override {
    private_key_ = GenerateEc(GetParam().curve);
    ASSERT_NE(private_key_, nullptr);
  }

  // The public half, rebuilt from the point as hsm::PublicKey does.
  static crypto::EvpPkeyPtr FromPoint(const std::string& point) {
    absl::StatusOr<crypto::EvpPkeyPtr> key =
        crypto::EcPublicKeyFromPoint(GetParam().ec_curve, point);
    EXPECT_TRUE(key.ok()) << key.status();
    return key.ok() ? *std::move(key) : nullptr;
  }

  // The members and thumbprint of the key on `point`, checked against the
  // point and against RFC 7638's canonical form computed here.
  static void CheckJwk(const std::string& point) {
    const EcCase& c = GetParam();
    crypto::EvpPkeyPtr key = FromPoint(point);
    ASSERT_NE(key, nullptr);
    absl::StatusOr<JwkMembers> jwk = JwkOf(key.get());
    ASSERT_TRUE(jwk.ok()) << jwk.status();
    EXPECT_EQ(jwk->kty, "EC");
    EXPECT_EQ(jwk->crv, c.crv);
    // x and y are fixed width even when they have leading zero bytes.
    EXPECT_EQ(B64UrlDecode(jwk->x), point.substr(1, c.field_bytes));
    EXPECT_EQ(B64UrlDecode(jwk->y), point.substr(1 + c.field_bytes));
    EXPECT_EQ(jwk->n, "");
    EXPECT_EQ(jwk->e, "");

    const std::string canonical =
        absl::StrCat(R"({"crv":")", c.crv, R"(","kty":"EC","x":")", jwk->x,
                     R"(","y":")", jwk->y, R"("})");
    absl::StatusOr<std::string> hash = crypto::Sha256(canonical);
    ASSERT_TRUE(hash.ok()) << hash.status();
    std::string want;
    absl::WebSafeBase64Escape(*hash, &want);
    absl::StatusOr<std::string> thumbprint = JwkThumbprint(key.get());
    ASSERT_TRUE(thumbprint.ok()) << thumbprint.status();
    EXPECT_EQ(*thumbprint, want);
    EXPECT_THAT(*thumbprint, SizeIs(43));
  }

  EvpPkeyPtr private_key_;
};

TEST_P(EcJwkTest, JwkMembersAndThumbprint) {
  const std::string point = EcPoint(private_key_.get());
  ASSERT_THAT(point, SizeIs(1 + 2 * GetParam().field_bytes));
  CheckJwk(point);
}

// A coordinate with a leading zero byte keeps it (one key in 256 has one;
// look for such a key rather than rely on chance).
TEST_P(EcJwkTest, CoordinatesWithALeadingZeroByteStayFixedWidth) {
  const size_t fb = GetParam().field_bytes;
  for (int i = 0; i < 8192; ++i) {
    EvpPkeyPtr candidate = GenerateEc(GetParam().curve);
    ASSERT_NE(candidate, nullptr);
    const std::string point = EcPoint(candidate.get());
    if (point[1] != '\0' && point[1 + fb] != '\0') continue;
    CheckJwk(point);
    return;
  }
  FAIL() << "no key with a leading zero byte in x or y";
}

TEST_P(EcJwkTest, SameKeyFromSpkiOrPointOrPrivateKeySameThumbprint) {
  crypto::EvpPkeyPtr from_point = FromPoint(EcPoint(private_key_.get()));
  ASSERT_NE(from_point, nullptr);
  EvpPkeyPtr from_spki = FromSpki(OpenSslSpki(private_key_.get()));
  ASSERT_NE(from_spki, nullptr);
  absl::StatusOr<std::string> want = JwkThumbprint(from_point.get());
  ASSERT_TRUE(want.ok()) << want.status();
  EXPECT_EQ(*JwkThumbprint(from_spki.get()), *want);
  EXPECT_EQ(*JwkThumbprint(private_key_.get()), *want);
}

INSTANTIATE_TEST_SUITE_P(
    Curves, EcJwkTest,
    ::testing::Values(EcCase{"P-256", crypto::EcCurve::kP256, "P-256", 32},
                      EcCase{"P-384", crypto::EcCurve::kP384, "P-384", 48}),
    [](const ::testing::TestParamInfo<EcCase>& param_info) {
      return param_info.param.field_bytes == 32 ? std::string("P256")
                                                : std::string("P384");
    });

// ---------------------------------------------------------------- RSA

class RsaJwkTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() { private_key_ = GenerateRsa(2048).release(); }
  static void TearDownTestSuite() {
    EVP_PKEY_free(private_key_);
    private_key_ = nullptr;
  }
  void SetUp() override { ASSERT_NE(private_key_, nullptr); }

  static crypto::EvpPkeyPtr Key() {
    absl::StatusOr<crypto::EvpPkeyPtr> key = crypto::RsaPublicKeyFromComponents(
        BnParam(private_key_, OSSL_PKEY_PARAM_RSA_N),
        BnParam(private_key_, OSSL_PKEY_PARAM_RSA_E));
    EXPECT_TRUE(key.ok()) << key.status();
    return key.ok() ? *std::move(key) : nullptr;
  }

  static EVP_PKEY* private_key_;
};
EVP_PKEY* RsaJwkTest::private_key_ = nullptr;

TEST_F(RsaJwkTest, JwkMembers) {
  crypto::EvpPkeyPtr key = Key();
  ASSERT_NE(key, nullptr);
  absl::StatusOr<JwkMembers> jwk = JwkOf(key.get());
  ASSERT_TRUE(jwk.ok()) << jwk.status();
  EXPECT_EQ(jwk->kty, "RSA");
  EXPECT_EQ(jwk->e, "AQAB");
  EXPECT_EQ(B64UrlDecode(jwk->n), BnParam(private_key_, OSSL_PKEY_PARAM_RSA_N));
  EXPECT_NE(B64UrlDecode(jwk->n)[0], '\0');
  EXPECT_EQ(jwk->crv, "");
  EXPECT_EQ(jwk->x, "");
  EXPECT_EQ(jwk->y, "");
}

TEST_F(RsaJwkTest, SameKeyFromSpkiOrComponentsSameThumbprint) {
  crypto::EvpPkeyPtr key = Key();
  ASSERT_NE(key, nullptr);
  EvpPkeyPtr from_spki = FromSpki(OpenSslSpki(private_key_));
  ASSERT_NE(from_spki, nullptr);
  absl::StatusOr<std::string> thumbprint = JwkThumbprint(key.get());
  ASSERT_TRUE(thumbprint.ok()) << thumbprint.status();
  EXPECT_THAT(*thumbprint, SizeIs(43));
  EXPECT_EQ(*JwkThumbprint(from_spki.get()), *thumbprint);
}

// ---------------------------------------------------------------- refusals

TEST(JwkRefusalTest, NoKeyIsInvalidArgument) {
  EXPECT_EQ(JwkOf(nullptr).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(JwkThumbprint(nullptr).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(JwkRefusalTest, OtherKeyTypesAndCurvesAreInvalidArgument) {
  EvpPkeyPtr ed25519(EVP_PKEY_Q_keygen(nullptr, nullptr, "ED25519"));
  ASSERT_NE(ed25519, nullptr);
  EvpPkeyPtr p521 = GenerateEc("P-521");
  ASSERT_NE(p521, nullptr);
  for (EVP_PKEY* key : {ed25519.get(), p521.get()}) {
    EXPECT_EQ(JwkOf(key).status().code(), absl::StatusCode::kInvalidArgument)
        << EVP_PKEY_get0_type_name(key);
    EXPECT_EQ(JwkThumbprint(key).status().code(),
              absl::StatusCode::kInvalidArgument)
        << EVP_PKEY_get0_type_name(key);
  }
}

}  // namespace
}  // namespace signet::jose
