#include "crypto/public_keys.h"

#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/evp.h>
#include <openssl/rsa.h>

#include <string>
#include <utility>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "crypto/digest.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace signet::crypto {
namespace {

using ::testing::HasSubstr;

// The P-256 generator point G (SEC 2 section 2.4.2): a point on the curve
// whose key is known to everyone, which is all a public-key test needs.
const std::string kP256G = absl::HexStringToBytes(
    "046b17d1f2e12c4247f8bce6e563a440f277037d812deb33a0f4a13945d898c296"
    "4fe342e2fe1a7f9b8ee7eb4a7c0f9e162bce33576b315ececbb6406837bf51f5");

TEST(EcPublicKeyFromPointTest, BuildsAKeyOnTheCurve) {
  absl::StatusOr<EvpPkeyPtr> key = EcPublicKeyFromPoint(EcCurve::kP256, kP256G);
  ASSERT_TRUE(key.ok()) << key.status();
  EXPECT_TRUE(EVP_PKEY_is_a(key->get(), "EC"));
  EXPECT_EQ(EVP_PKEY_get_bits(key->get()), 256);
}

TEST(EcPublicKeyFromPointTest, RefusesAPointOffTheCurveOrMisshapen) {
  std::string off = kP256G;
  off.back() ^= 1;
  EXPECT_EQ(EcPublicKeyFromPoint(EcCurve::kP256, off).status().code(),
            absl::StatusCode::kInvalidArgument);
  // Compressed form, the wrong curve's length, nothing.
  EXPECT_THAT(
      EcPublicKeyFromPoint(EcCurve::kP256, "\x02" + kP256G.substr(1, 32))
          .status()
          .message(),
      HasSubstr("must be uncompressed (65 bytes starting 04)"));
  EXPECT_EQ(EcPublicKeyFromPoint(EcCurve::kP384, kP256G).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(EcPublicKeyFromPoint(EcCurve::kP256, "").status().code(),
            absl::StatusCode::kInvalidArgument);
}

// The public half of an RSA key OpenSSL generates for the test.
struct RsaComponents {
  std::string n;
  std::string e;
};
RsaComponents GenerateRsaComponents(unsigned int bits) {
  EvpPkeyPtr pair(EVP_RSA_gen(bits));
  RsaComponents out;
  if (pair == nullptr) return out;
  for (auto [name, into] : {std::pair{OSSL_PKEY_PARAM_RSA_N, &out.n},
                            std::pair{OSSL_PKEY_PARAM_RSA_E, &out.e}}) {
    BIGNUM* bn = nullptr;
    if (EVP_PKEY_get_bn_param(pair.get(), name, &bn) != 1) return {};
    into->resize(static_cast<size_t>(BN_num_bytes(bn)));
    BN_bn2bin(bn, reinterpret_cast<unsigned char*>(into->data()));
    BN_free(bn);
  }
  return out;
}

TEST(RsaPublicKeyFromComponentsTest, HoldsToTheModulusAndExponentRules) {
  const RsaComponents rsa = GenerateRsaComponents(2048);
  ASSERT_FALSE(rsa.n.empty());
  absl::StatusOr<EvpPkeyPtr> key = RsaPublicKeyFromComponents(rsa.n, rsa.e);
  ASSERT_TRUE(key.ok()) << key.status();
  EXPECT_EQ(EVP_PKEY_get_bits(key->get()), 2048);

  const RsaComponents small = GenerateRsaComponents(1024);
  ASSERT_FALSE(small.n.empty());
  EXPECT_THAT(RsaPublicKeyFromComponents(small.n, small.e).status().message(),
              HasSubstr("RSA modulus has 1024 bits; 2048 to 16384 are "
                        "accepted"));
  // 3, an even one, and one of 2^256 or more.
  for (const std::string& e :
       {std::string("\x03"), std::string("\x01\x00\x00", 3),
        std::string(33, '\xff')}) {
    EXPECT_THAT(RsaPublicKeyFromComponents(rsa.n, e).status().message(),
                HasSubstr("RSA public exponent must be odd"))
        << absl::BytesToHexString(e);
  }
}

TEST(ComponentsOfTest, GivesBackTheComponentsAKeyWasBuiltFrom) {
  absl::StatusOr<EvpPkeyPtr> ec = EcPublicKeyFromPoint(EcCurve::kP256, kP256G);
  ASSERT_TRUE(ec.ok()) << ec.status();
  absl::StatusOr<EcCurve> curve = EcCurveOf(ec->get());
  ASSERT_TRUE(curve.ok()) << curve.status();
  EXPECT_EQ(*curve, EcCurve::kP256);
  absl::StatusOr<PublicComponents> point = ComponentsOf(ec->get());
  ASSERT_TRUE(point.ok()) << point.status();
  EXPECT_EQ(point->curve, EcCurve::kP256);
  EXPECT_EQ(point->x, kP256G.substr(1, 32));
  EXPECT_EQ(point->y, kP256G.substr(33));
  EXPECT_TRUE(point->n.empty());
  EXPECT_TRUE(point->e.empty());

  const RsaComponents rsa = GenerateRsaComponents(2048);
  ASSERT_FALSE(rsa.n.empty());
  // Leading zero bytes in, minimal bytes out.
  absl::StatusOr<EvpPkeyPtr> key = RsaPublicKeyFromComponents(
      absl::StrCat(std::string(2, '\0'), rsa.n), rsa.e);
  ASSERT_TRUE(key.ok()) << key.status();
  absl::StatusOr<PublicComponents> components = ComponentsOf(key->get());
  ASSERT_TRUE(components.ok()) << components.status();
  EXPECT_FALSE(components->curve.has_value());
  EXPECT_EQ(components->n, rsa.n);
  EXPECT_EQ(components->e, rsa.e);
  EXPECT_TRUE(components->x.empty());
  EXPECT_TRUE(components->y.empty());
}

TEST(ComponentsOfTest, RefusesOtherKeysAndCurves) {
  EXPECT_EQ(ComponentsOf(nullptr).status().code(),
            absl::StatusCode::kInvalidArgument);
  EvpPkeyPtr ed25519(EVP_PKEY_Q_keygen(nullptr, nullptr, "ED25519"));
  ASSERT_NE(ed25519, nullptr);
  EXPECT_THAT(ComponentsOf(ed25519.get()).status().message(),
              HasSubstr("unsupported public key type"));
  EvpPkeyPtr p521(EVP_PKEY_Q_keygen(nullptr, nullptr, "EC", "P-521"));
  ASSERT_NE(p521, nullptr);
  EXPECT_THAT(EcCurveOf(p521.get()).status().message(),
              HasSubstr("unsupported EC curve"));
  EXPECT_EQ(ComponentsOf(p521.get()).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(EcdsaRawToDerTest, EncodesRAndSAsDerIntegers) {
  // r = 1, s = 0x80 (a leading zero byte in DER: it would read negative).
  std::string raw(64, '\0');
  raw[31] = 1;
  raw[63] = '\x80';
  absl::StatusOr<std::string> der = EcdsaRawToDer(raw);
  ASSERT_TRUE(der.ok()) << der.status();
  EXPECT_EQ(absl::BytesToHexString(*der),
            "3007020101020200"
            "80");
  EXPECT_EQ(EcdsaRawToDer("").status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(EcdsaRawToDer("abc").status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(EcdsaDerToRawTest, PadsRAndSToTheField) {
  // r = 1, s = 0x80: EcdsaRawToDer's vector read back.
  absl::StatusOr<std::string> raw = EcdsaDerToRaw(
      EcCurve::kP256, absl::HexStringToBytes("300702010102020080"));
  ASSERT_TRUE(raw.ok()) << raw.status();
  std::string want(64, '\0');
  want[31] = 1;
  want[63] = '\x80';
  EXPECT_EQ(absl::BytesToHexString(*raw), absl::BytesToHexString(want));

  absl::StatusOr<std::string> wide = EcdsaDerToRaw(
      EcCurve::kP384, absl::HexStringToBytes("300702010102020080"));
  ASSERT_TRUE(wide.ok()) << wide.status();
  EXPECT_EQ(wide->size(), 96u);
  EXPECT_EQ((*wide)[47], 1);
  EXPECT_EQ((*wide)[95], '\x80');
}

TEST(EcdsaDerToRawTest, RoundTripsWithEcdsaRawToDer) {
  // RFC 6979's signatures of "sample" on P-256 with SHA-256 (A.2.5) and on
  // P-384 with SHA-384 (A.2.6): r has its top bit set, so its DER integer
  // carries a leading zero byte the JWS form drops.
  for (auto [curve, hex] :
       {std::pair{
            EcCurve::kP256,
            "efd48b2aacb6a8fd1140dd9cd45e81d69d2c877b56aaf991c34d0ea84eaf3716"
            "f7cb1c942d657c41d436c7a1b6e29f65f3e900dbb9aff4064dc4ab2f843acda8"},
        std::pair{
            EcCurve::kP384,
            "94edbb92a5ecb8aad4736e56c691916b3f88140666ce9fa73d64c4ea95ad133c"
            "81a648152e44acf96e36dd1e80fabe46"
            "99ef4aeb15f178cea1fe40db2603138f130e740a19624526203b6351d0a3a94f"
            "a329c145786e679e7b82c71a38628ac8"}}) {
    const std::string raw = absl::HexStringToBytes(hex);
    absl::StatusOr<std::string> der = EcdsaRawToDer(raw);
    ASSERT_TRUE(der.ok()) << der.status();
    absl::StatusOr<std::string> back = EcdsaDerToRaw(curve, *der);
    ASSERT_TRUE(back.ok()) << back.status();
    EXPECT_EQ(absl::BytesToHexString(*back), hex);
  }
}

TEST(EcdsaDerToRawTest, RefusesWhatIsNotOneSignatureThatFits) {
  const std::string der = absl::HexStringToBytes("300702010102020080");
  for (const std::string& bad :
       {std::string(), std::string("garbage"), der + '\0', der.substr(0, 8)}) {
    EXPECT_EQ(EcdsaDerToRaw(EcCurve::kP256, bad).status().code(),
              absl::StatusCode::kInvalidArgument)
        << absl::BytesToHexString(bad);
  }
  // An r of 33 significant bytes fits P-384, not P-256.
  absl::StatusOr<std::string> long_r =
      EcdsaRawToDer(std::string(33, '\x7f') + std::string(33, '\x01'));
  ASSERT_TRUE(long_r.ok()) << long_r.status();
  EXPECT_THAT(EcdsaDerToRaw(EcCurve::kP256, *long_r).status().message(),
              HasSubstr("fit 32 bytes (P-256)"));
  EXPECT_TRUE(EcdsaDerToRaw(EcCurve::kP384, *long_r).ok());
  // A negative s (DER integer 0x80): no JWS form.
  EXPECT_EQ(
      EcdsaDerToRaw(EcCurve::kP256, absl::HexStringToBytes("3006020101020180"))
          .status()
          .code(),
      absl::StatusCode::kInvalidArgument);
}

// RFC 6979 appendix A.2.5: the P-256 key and its deterministic ECDSA
// signature of "sample" with SHA-256. A published vector: this test hands
// OpenSSL no private key.
TEST(VerifyDigestSignatureTest, AcceptsTheSignatureAndNothingElse) {
  absl::StatusOr<EvpPkeyPtr> key = EcPublicKeyFromPoint(
      EcCurve::kP256,
      absl::HexStringToBytes(
          "0460fed4ba255a9d31c961eb74c6356d68c049b8923b61fa6ce669622e60f29fb6"
          "7903fe1008b8bc99a41ae9e95628bc64f2f1b20c2d7e9f5177a3c294d4462299"));
  ASSERT_TRUE(key.ok()) << key.status();
  absl::StatusOr<std::string> sha256 = Sha256("sample");
  ASSERT_TRUE(sha256.ok()) << sha256.status();
  const std::string& digest = *sha256;
  absl::StatusOr<std::string> der = EcdsaRawToDer(absl::HexStringToBytes(
      "efd48b2aacb6a8fd1140dd9cd45e81d69d2c877b56aaf991c34d0ea84eaf3716"
      "f7cb1c942d657c41d436c7a1b6e29f65f3e900dbb9aff4064dc4ab2f843acda8"));
  ASSERT_TRUE(der.ok()) << der.status();

  EXPECT_TRUE(VerifyDigestSignature(key->get(), SignatureScheme::kEcdsaSha256,
                                    digest, *der)
                  .ok());
  std::string other_digest = digest;
  other_digest[0] ^= 1;
  EXPECT_THAT(
      VerifyDigestSignature(key->get(), SignatureScheme::kEcdsaSha256,
                            other_digest, *der),
      ::testing::Property(&absl::Status::message, "signature does not verify"));
  // Garbage that does not even decode is a bad signature, not an error.
  EXPECT_EQ(VerifyDigestSignature(key->get(), SignatureScheme::kEcdsaSha256,
                                  digest, "garbage")
                .code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace signet::crypto
