#include "hsm/public_key.h"

#include <openssl/bio.h>
#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/ec.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rsa.h>
#include <openssl/x509.h>

#include <memory>
#include <string>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "crypto/public_keys.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "hsm/algorithm.h"
#include "hsm/digest.h"

namespace signet::hsm {
namespace {

using ::testing::HasSubstr;
using ::testing::SizeIs;

// Test-only private keys stand in for the HSM: they produce the signatures
// PublicKey must verify. The library itself never sees a private key.
using crypto::EvpPkeyCtxPtr;
using crypto::EvpPkeyPtr;
using crypto::OsslFree;
using BnPtr = std::unique_ptr<BIGNUM, OsslFree<BN_free>>;
using BioPtr = std::unique_ptr<BIO, OsslFree<BIO_free_all>>;

// RFC 7638 section 3.1.
constexpr char kRfc7638N[] =
    "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFF"
    "xuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt"
    "7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6q"
    "MQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHa"
    "Q-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw";
constexpr char kRfc7638E[] = "AQAB";

// DER OID of secp256k1 (1.3.132.0.10): a valid named curve we do not accept.
constexpr char kSecp256k1Oid[] = "\x06\x05\x2b\x81\x04\x00\x0a";

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

std::string OpenSslPem(EVP_PKEY* key) {
  BioPtr bio(BIO_new(BIO_s_mem()));
  EXPECT_EQ(PEM_write_bio_PUBKEY(bio.get(), key), 1);
  char* data = nullptr;
  const long len = BIO_get_mem_data(bio.get(), &data);
  return std::string(data, static_cast<size_t>(len));
}

// The uncompressed point 04||X||Y, as CKA_EC_POINT holds it without its DER
// OCTET STRING wrapper.
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

// CKA_EC_POINT as PKCS#11 specifies it: DER OCTET STRING { point }.
std::string DerOctetString(absl::string_view content) {
  EXPECT_LT(content.size(), 128u);
  return absl::StrCat(absl::string_view("\x04", 1),
                      std::string(1, static_cast<char>(content.size())),
                      content);
}

std::string BnParam(EVP_PKEY* key, const char* name) {
  BIGNUM* raw = nullptr;
  EXPECT_EQ(EVP_PKEY_get_bn_param(key, name, &raw), 1) << name;
  BnPtr bn(raw);
  std::string out(static_cast<size_t>(BN_num_bytes(bn.get())), '\0');
  BN_bn2bin(bn.get(), reinterpret_cast<unsigned char*>(out.data()));
  return out;
}

std::string FlipBit(std::string s, size_t byte = 0) {
  s[byte] = static_cast<char>(s[byte] ^ 0x01);
  return s;
}

// Signs `digest` the way the HSM would: ECDSA returns JWS r||s (the DER that
// OpenSSL produces is converted here), RSA as configured for `algorithm`.
std::string SignDigest(EVP_PKEY* key, SignatureAlgorithm algorithm,
                       absl::string_view digest) {
  EvpPkeyCtxPtr ctx(EVP_PKEY_CTX_new_from_pkey(nullptr, key, nullptr));
  EXPECT_EQ(EVP_PKEY_sign_init(ctx.get()), 1);
  const EVP_MD* md = algorithm == SignatureAlgorithm::kEcdsaP384Sha384
                         ? EVP_sha384()
                         : EVP_sha256();
  if (algorithm == SignatureAlgorithm::kRsaPkcs1Sha256) {
    EXPECT_EQ(EVP_PKEY_CTX_set_rsa_padding(ctx.get(), RSA_PKCS1_PADDING), 1);
  } else if (algorithm == SignatureAlgorithm::kRsaPssSha256) {
    EXPECT_EQ(EVP_PKEY_CTX_set_rsa_padding(ctx.get(), RSA_PKCS1_PSS_PADDING),
              1);
  }
  EXPECT_EQ(EVP_PKEY_CTX_set_signature_md(ctx.get(), md), 1);
  if (algorithm == SignatureAlgorithm::kRsaPssSha256) {
    EXPECT_EQ(EVP_PKEY_CTX_set_rsa_mgf1_md(ctx.get(), EVP_sha256()), 1);
    EXPECT_EQ(EVP_PKEY_CTX_set_rsa_pss_saltlen(ctx.get(), 32), 1);
  }
  const auto* in = reinterpret_cast<const unsigned char*>(digest.data());
  size_t len = 0;
  EXPECT_EQ(EVP_PKEY_sign(ctx.get(), nullptr, &len, in, digest.size()), 1);
  std::string sig(len, '\0');
  EXPECT_EQ(
      EVP_PKEY_sign(ctx.get(), reinterpret_cast<unsigned char*>(sig.data()),
                    &len, in, digest.size()),
      1);
  sig.resize(len);
  if (!IsEcdsa(algorithm)) return sig;

  absl::StatusOr<std::string> raw =
      crypto::EcdsaDerToRaw(algorithm == SignatureAlgorithm::kEcdsaP384Sha384
                                ? crypto::EcCurve::kP384
                                : crypto::EcCurve::kP256,
                            sig);
  EXPECT_TRUE(raw.ok()) << raw.status();
  return raw.ok() ? *raw : std::string();
}

std::string Digest(SignatureAlgorithm algorithm, absl::string_view data) {
  absl::StatusOr<std::string> d = DigestFor(algorithm, data);
  EXPECT_TRUE(d.ok()) << d.status();
  return d.ok() ? *d : std::string();
}

// ---------------------------------------------------------------- RFC 7638
// The example key of RFC 7638 section 3.1 (its JWK members and thumbprint
// are checked in jose/jwk_test.cc).

TEST(PublicKeyTest, Rfc7638ExampleKey) {
  absl::StatusOr<PublicKey> key =
      PublicKey::FromRsa(B64UrlDecode(kRfc7638N), B64UrlDecode(kRfc7638E));
  ASSERT_TRUE(key.ok()) << key.status();
  EXPECT_FALSE(key->is_ec());
  EXPECT_EQ(key->bits(), 2048);
}

TEST(PublicKeyTest, RsaLeadingZeroBytesAreIgnored) {
  absl::StatusOr<PublicKey> key = PublicKey::FromRsa(
      absl::StrCat(std::string(3, '\0'), B64UrlDecode(kRfc7638N)),
      absl::StrCat(std::string(1, '\0'), B64UrlDecode(kRfc7638E)));
  ASSERT_TRUE(key.ok()) << key.status();
  absl::StatusOr<PublicKey> minimal =
      PublicKey::FromRsa(B64UrlDecode(kRfc7638N), B64UrlDecode(kRfc7638E));
  ASSERT_TRUE(minimal.ok()) << minimal.status();
  EXPECT_EQ(key->bits(), 2048);
  EXPECT_EQ(EVP_PKEY_eq(key->get(), minimal->get()), 1);
  EXPECT_EQ(*key->SpkiDer(), *minimal->SpkiDer());
}

// ---------------------------------------------------------------- EC

struct EcCase {
  const char* curve;
  SignatureAlgorithm algorithm;
  const char* crv;
  int bits;
  size_t field_bytes;
};

class EcPublicKeyTest : public ::testing::TestWithParam<EcCase> {
 protected:
  void SetUp() override {
    private_key_ = GenerateEc(GetParam().curve);
    ASSERT_NE(private_key_, nullptr);
  }
  absl::string_view Params() const { return EcParamsDer(GetParam().algorithm); }

  EvpPkeyPtr private_key_;
};

TEST_P(EcPublicKeyTest, FromEcPointRoundTrip) {
  const EcCase& c = GetParam();
  const std::string point = EcPoint(private_key_.get());
  ASSERT_THAT(point, SizeIs(1 + 2 * c.field_bytes));

  // Both encodings of CKA_EC_POINT give the same key.
  absl::StatusOr<PublicKey> wrapped =
      PublicKey::FromEcPoint(Params(), DerOctetString(point));
  ASSERT_TRUE(wrapped.ok()) << wrapped.status();
  absl::StatusOr<PublicKey> raw = PublicKey::FromEcPoint(Params(), point);
  ASSERT_TRUE(raw.ok()) << raw.status();

  const std::string want_spki = OpenSslSpki(private_key_.get());
  for (const PublicKey* key : {&*wrapped, &*raw}) {
    EXPECT_TRUE(key->is_ec());
    EXPECT_EQ(key->bits(), c.bits);
    absl::StatusOr<std::string> spki = key->SpkiDer();
    ASSERT_TRUE(spki.ok()) << spki.status();
    EXPECT_EQ(*spki, want_spki);
    absl::StatusOr<std::string> pem = key->SpkiPem();
    ASSERT_TRUE(pem.ok()) << pem.status();
    EXPECT_EQ(*pem, OpenSslPem(private_key_.get()));
    EXPECT_TRUE(absl::StartsWith(*pem, "-----BEGIN PUBLIC KEY-----\n"));
  }
}

TEST_P(EcPublicKeyTest, FromSpkiDerRoundTrip) {
  const std::string spki = OpenSslSpki(private_key_.get());
  absl::StatusOr<PublicKey> key = PublicKey::FromSpkiDer(spki);
  ASSERT_TRUE(key.ok()) << key.status();
  EXPECT_TRUE(key->is_ec());
  EXPECT_EQ(key->bits(), GetParam().bits);
  EXPECT_EQ(*key->SpkiDer(), spki);

  absl::StatusOr<PublicKey> from_point =
      PublicKey::FromEcPoint(Params(), EcPoint(private_key_.get()));
  ASSERT_TRUE(from_point.ok()) << from_point.status();
  EXPECT_EQ(EVP_PKEY_eq(key->get(), from_point->get()), 1);
}

TEST_P(EcPublicKeyTest, CompressedSpkiIsNormalizedToUncompressed) {
  const std::string uncompressed_spki = OpenSslSpki(private_key_.get());
  ASSERT_EQ(EVP_PKEY_set_utf8_string_param(
                private_key_.get(), OSSL_PKEY_PARAM_EC_POINT_CONVERSION_FORMAT,
                OSSL_PKEY_EC_POINT_CONVERSION_FORMAT_COMPRESSED),
            1);
  const std::string compressed_spki = OpenSslSpki(private_key_.get());
  ASSERT_LT(compressed_spki.size(), uncompressed_spki.size());

  absl::StatusOr<PublicKey> key = PublicKey::FromSpkiDer(compressed_spki);
  ASSERT_TRUE(key.ok()) << key.status();
  EXPECT_EQ(*key->SpkiDer(), uncompressed_spki);
}

TEST_P(EcPublicKeyTest, VerifyDigest) {
  const SignatureAlgorithm alg = GetParam().algorithm;
  const std::string digest = Digest(alg, "header.claims");
  const std::string sig = SignDigest(private_key_.get(), alg, digest);
  ASSERT_THAT(sig, SizeIs(2 * GetParam().field_bytes));

  absl::StatusOr<PublicKey> key =
      PublicKey::FromEcPoint(Params(), EcPoint(private_key_.get()));
  ASSERT_TRUE(key.ok()) << key.status();
  EXPECT_TRUE(key->VerifyDigest(alg, digest, sig).ok());

  // A flipped bit anywhere in r, in s, or in the digest fails.
  for (size_t byte : {size_t{0}, sig.size() / 2, sig.size() - 1}) {
    absl::Status s = key->VerifyDigest(alg, digest, FlipBit(sig, byte));
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << byte;
    EXPECT_THAT(s.message(), HasSubstr("does not verify"));
  }
  EXPECT_EQ(key->VerifyDigest(alg, FlipBit(digest), sig).code(),
            absl::StatusCode::kInvalidArgument);

  // r = s = 0 and r||s of all ones (above the group order) are rejected.
  EXPECT_EQ(
      key->VerifyDigest(alg, digest, std::string(sig.size(), '\0')).code(),
      absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(
      key->VerifyDigest(alg, digest, std::string(sig.size(), '\xff')).code(),
      absl::StatusCode::kInvalidArgument);
}

TEST_P(EcPublicKeyTest, VerifyDigestRejectsWrongShapes) {
  const SignatureAlgorithm alg = GetParam().algorithm;
  const std::string digest = Digest(alg, "header.claims");
  const std::string sig = SignDigest(private_key_.get(), alg, digest);
  absl::StatusOr<PublicKey> key =
      PublicKey::FromEcPoint(Params(), EcPoint(private_key_.get()));
  ASSERT_TRUE(key.ok()) << key.status();

  // Wrong digest length.
  EXPECT_EQ(key->VerifyDigest(alg, digest.substr(1), sig).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(key->VerifyDigest(alg, digest + "x", sig).code(),
            absl::StatusCode::kInvalidArgument);
  // Wrong signature length, including the DER form OpenSSL itself emits.
  EXPECT_EQ(key->VerifyDigest(alg, digest, sig.substr(1)).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(key->VerifyDigest(alg, digest, sig + '\0').code(),
            absl::StatusCode::kInvalidArgument);

  // The other curve's algorithm, and the RSA algorithms, do not fit this key.
  const SignatureAlgorithm other_curve =
      alg == SignatureAlgorithm::kEcdsaP256Sha256
          ? SignatureAlgorithm::kEcdsaP384Sha384
          : SignatureAlgorithm::kEcdsaP256Sha256;
  absl::Status wrong_curve = key->VerifyDigest(
      other_curve, std::string(DigestLength(other_curve), 'd'), sig);
  EXPECT_EQ(wrong_curve.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(wrong_curve.message(), HasSubstr("curve"));
  for (SignatureAlgorithm rsa : {SignatureAlgorithm::kRsaPkcs1Sha256,
                                 SignatureAlgorithm::kRsaPssSha256}) {
    absl::Status s = key->VerifyDigest(rsa, std::string(32, 'd'), sig);
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(s.message(), HasSubstr("not an RSA key"));
  }
}

TEST_P(EcPublicKeyTest, PointNotOnCurveIsInvalidArgument) {
  std::string point = EcPoint(private_key_.get());
  point.back() = static_cast<char>(point.back() ^ 0x01);  // y changes
  EXPECT_EQ(PublicKey::FromEcPoint(Params(), point).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(
      PublicKey::FromEcPoint(Params(), DerOctetString(point)).status().code(),
      absl::StatusCode::kInvalidArgument);
}

TEST_P(EcPublicKeyTest, MalformedPointsAreInvalidArgument) {
  const std::string point = EcPoint(private_key_.get());
  const size_t fb = GetParam().field_bytes;
  // Compressed form (02/03||X) is not what PKCS#11 modules return here.
  const std::string compressed =
      absl::StrCat(std::string(1, '\x02'), point.substr(1, fb));
  // The point at infinity, a wrong leading byte, truncation, emptiness, a
  // wrapper whose length byte lies, and a point for the other curve's size.
  const std::string cases[] = {
      compressed,
      std::string(1, '\0'),
      absl::StrCat(std::string(1, '\x05'), point.substr(1)),
      point.substr(0, point.size() - 1),
      "",
      absl::StrCat(absl::string_view("\x04\x40", 2), point),
      absl::StrCat(point, std::string(fb == 32 ? 32 : 1, '\0')),
  };
  for (const std::string& bad : cases) {
    EXPECT_EQ(PublicKey::FromEcPoint(Params(), bad).status().code(),
              absl::StatusCode::kInvalidArgument)
        << absl::BytesToHexString(bad);
  }
}

TEST_P(EcPublicKeyTest, UnknownCurveOidIsInvalidArgument) {
  const std::string point = EcPoint(private_key_.get());
  for (absl::string_view params :
       {absl::string_view(kSecp256k1Oid, sizeof(kSecp256k1Oid) - 1),
        absl::string_view(""), Params().substr(0, Params().size() - 1)}) {
    absl::StatusOr<PublicKey> key = PublicKey::FromEcPoint(params, point);
    EXPECT_EQ(key.status().code(), absl::StatusCode::kInvalidArgument);
  }
  // The other curve's OID with this curve's point.
  const SignatureAlgorithm other =
      GetParam().algorithm == SignatureAlgorithm::kEcdsaP256Sha256
          ? SignatureAlgorithm::kEcdsaP384Sha384
          : SignatureAlgorithm::kEcdsaP256Sha256;
  EXPECT_EQ(PublicKey::FromEcPoint(EcParamsDer(other), point).status().code(),
            absl::StatusCode::kInvalidArgument);
}

INSTANTIATE_TEST_SUITE_P(
    Curves, EcPublicKeyTest,
    ::testing::Values(EcCase{"P-256", SignatureAlgorithm::kEcdsaP256Sha256,
                             "P-256", 256, 32},
                      EcCase{"P-384", SignatureAlgorithm::kEcdsaP384Sha384,
                             "P-384", 384, 48}),
    [](const ::testing::TestParamInfo<EcCase>& param_info) {
      return param_info.param.bits == 256 ? std::string("P256")
                                          : std::string("P384");
    });

// ---------------------------------------------------------------- RSA

class RsaPublicKeyTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() { private_key_ = GenerateRsa(2048).release(); }
  static void TearDownTestSuite() {
    EVP_PKEY_free(private_key_);
    private_key_ = nullptr;
  }
  void SetUp() override { ASSERT_NE(private_key_, nullptr); }

  static PublicKey Key() {
    absl::StatusOr<PublicKey> key =
        PublicKey::FromRsa(BnParam(private_key_, OSSL_PKEY_PARAM_RSA_N),
                           BnParam(private_key_, OSSL_PKEY_PARAM_RSA_E));
    EXPECT_TRUE(key.ok()) << key.status();
    return *std::move(key);
  }

  static EVP_PKEY* private_key_;
};
EVP_PKEY* RsaPublicKeyTest::private_key_ = nullptr;

TEST_F(RsaPublicKeyTest, FromRsaRoundTrip) {
  PublicKey key = Key();
  EXPECT_FALSE(key.is_ec());
  EXPECT_EQ(key.bits(), 2048);
  absl::StatusOr<std::string> spki = key.SpkiDer();
  ASSERT_TRUE(spki.ok()) << spki.status();
  EXPECT_EQ(*spki, OpenSslSpki(private_key_));
  EXPECT_EQ(*key.SpkiPem(), OpenSslPem(private_key_));
  EXPECT_EQ(EVP_PKEY_eq(key.get(), private_key_), 1);
}

TEST_F(RsaPublicKeyTest, FromSpkiDerRoundTrip) {
  const std::string spki = OpenSslSpki(private_key_);
  absl::StatusOr<PublicKey> key = PublicKey::FromSpkiDer(spki);
  ASSERT_TRUE(key.ok()) << key.status();
  EXPECT_FALSE(key->is_ec());
  EXPECT_EQ(key->bits(), 2048);
  EXPECT_EQ(*key->SpkiDer(), spki);
  EXPECT_EQ(EVP_PKEY_eq(key->get(), Key().get()), 1);
}

TEST_F(RsaPublicKeyTest, VerifyRs256AndPs256) {
  PublicKey key = Key();
  for (SignatureAlgorithm alg : {SignatureAlgorithm::kRsaPkcs1Sha256,
                                 SignatureAlgorithm::kRsaPssSha256}) {
    SCOPED_TRACE(AlgorithmName(alg));
    const std::string digest = Digest(alg, "header.claims");
    const std::string sig = SignDigest(private_key_, alg, digest);
    ASSERT_THAT(sig, SizeIs(256));
    EXPECT_TRUE(key.VerifyDigest(alg, digest, sig).ok());

    for (size_t byte : {size_t{0}, size_t{128}, size_t{255}}) {
      absl::Status s = key.VerifyDigest(alg, digest, FlipBit(sig, byte));
      EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << byte;
      EXPECT_THAT(s.message(), HasSubstr("does not verify"));
    }
    EXPECT_EQ(key.VerifyDigest(alg, FlipBit(digest, 31), sig).code(),
              absl::StatusCode::kInvalidArgument);
    // Wrong digest length.
    EXPECT_EQ(key.VerifyDigest(alg, digest.substr(1), sig).code(),
              absl::StatusCode::kInvalidArgument);
    EXPECT_EQ(key.VerifyDigest(alg, std::string(48, 'd'), sig).code(),
              absl::StatusCode::kInvalidArgument);
    // Signatures shorter or longer than the modulus.
    EXPECT_EQ(key.VerifyDigest(alg, digest, sig.substr(1)).code(),
              absl::StatusCode::kInvalidArgument);
    EXPECT_EQ(
        key.VerifyDigest(alg, digest, absl::StrCat(std::string(1, '\0'), sig))
            .code(),
        absl::StatusCode::kInvalidArgument);
  }
}

TEST_F(RsaPublicKeyTest, PaddingModesAreNotInterchangeable) {
  PublicKey key = Key();
  const std::string digest =
      Digest(SignatureAlgorithm::kRsaPkcs1Sha256, "header.claims");
  const std::string pkcs1 =
      SignDigest(private_key_, SignatureAlgorithm::kRsaPkcs1Sha256, digest);
  const std::string pss =
      SignDigest(private_key_, SignatureAlgorithm::kRsaPssSha256, digest);
  EXPECT_EQ(
      key.VerifyDigest(SignatureAlgorithm::kRsaPssSha256, digest, pkcs1).code(),
      absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(
      key.VerifyDigest(SignatureAlgorithm::kRsaPkcs1Sha256, digest, pss).code(),
      absl::StatusCode::kInvalidArgument);
}

// What the HSM does for RS256: CKM_RSA_PKCS over the DigestInfo from
// hsm/digest.h, i.e. a raw PKCS#1 v1.5 type-1 signature with no hash set.
TEST_F(RsaPublicKeyTest, CkmRsaPkcsOverDigestInfoVerifiesAsRs256) {
  const std::string digest =
      Digest(SignatureAlgorithm::kRsaPkcs1Sha256, "header.claims");
  absl::StatusOr<std::string> info = Sha256DigestInfo(digest);
  ASSERT_TRUE(info.ok()) << info.status();

  EvpPkeyCtxPtr ctx(EVP_PKEY_CTX_new_from_pkey(nullptr, private_key_, nullptr));
  ASSERT_EQ(EVP_PKEY_sign_init(ctx.get()), 1);
  ASSERT_EQ(EVP_PKEY_CTX_set_rsa_padding(ctx.get(), RSA_PKCS1_PADDING), 1);
  std::string sig(256, '\0');
  size_t len = sig.size();
  ASSERT_EQ(
      EVP_PKEY_sign(ctx.get(), reinterpret_cast<unsigned char*>(sig.data()),
                    &len, reinterpret_cast<const unsigned char*>(info->data()),
                    info->size()),
      1);
  sig.resize(len);
  EXPECT_TRUE(
      Key()
          .VerifyDigest(SignatureAlgorithm::kRsaPkcs1Sha256, digest, sig)
          .ok());
}

TEST_F(RsaPublicKeyTest, EcdsaAlgorithmsDoNotFitRsaKey) {
  PublicKey key = Key();
  absl::Status s = key.VerifyDigest(SignatureAlgorithm::kEcdsaP256Sha256,
                                    std::string(32, 'd'), std::string(64, 's'));
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("not an EC key"));
}

TEST_F(RsaPublicKeyTest, WeakComponentsAreInvalidArgument) {
  const std::string n = BnParam(private_key_, OSSL_PKEY_PARAM_RSA_N);
  // Even exponent, exponent 1, exponent 3 (below SP 800-56B's 65537), even
  // modulus, empty inputs.
  std::string even_n = n;
  even_n.back() = static_cast<char>(even_n.back() & ~1);
  const std::pair<std::string, std::string> cases[] = {
      {n, std::string("\x01\x00\x00", 3)},
      {n, "\x01"},
      {n, "\x03"},
      {even_n, B64UrlDecode("AQAB")},
      {n, ""},
      {"", B64UrlDecode("AQAB")},
  };
  for (const auto& [modulus, exponent] : cases) {
    EXPECT_EQ(PublicKey::FromRsa(modulus, exponent).status().code(),
              absl::StatusCode::kInvalidArgument)
        << absl::BytesToHexString(exponent);
  }
}

TEST(RsaModulusTest, PrimeModulusIsInvalidArgument) {
  BnPtr prime(BN_new());
  std::unique_ptr<BN_CTX, OsslFree<BN_CTX_free>> bn_ctx(BN_CTX_new());
  ASSERT_NE(prime, nullptr);
  ASSERT_NE(bn_ctx, nullptr);
  ASSERT_EQ(BN_generate_prime_ex2(prime.get(), 2048, 0, nullptr, nullptr,
                                  nullptr, bn_ctx.get()),
            1);
  std::string n(256, '\0');
  BN_bn2bin(prime.get(), reinterpret_cast<unsigned char*>(n.data()));
  EXPECT_EQ(PublicKey::FromRsa(n, B64UrlDecode("AQAB")).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(RsaModulusTest, ModulusBelow2048BitsIsInvalidArgument) {
  EvpPkeyPtr short_key = GenerateRsa(1024);
  ASSERT_NE(short_key, nullptr);
  absl::StatusOr<PublicKey> key =
      PublicKey::FromRsa(BnParam(short_key.get(), OSSL_PKEY_PARAM_RSA_N),
                         BnParam(short_key.get(), OSSL_PKEY_PARAM_RSA_E));
  EXPECT_EQ(key.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(key.status().message(), HasSubstr("2048"));
  EXPECT_EQ(
      PublicKey::FromSpkiDer(OpenSslSpki(short_key.get())).status().code(),
      absl::StatusCode::kInvalidArgument);
}

// ---------------------------------------------------------------- SPKI

TEST(FromSpkiDerTest, GarbageAndTruncationAreInvalidArgument) {
  EXPECT_EQ(PublicKey::FromSpkiDer("").status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(PublicKey::FromSpkiDer("not der").status().code(),
            absl::StatusCode::kInvalidArgument);

  EvpPkeyPtr ec = GenerateEc("P-256");
  const std::string spki = OpenSslSpki(ec.get());
  EXPECT_EQ(PublicKey::FromSpkiDer(spki + '\0').status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(
      PublicKey::FromSpkiDer(spki.substr(0, spki.size() - 1)).status().code(),
      absl::StatusCode::kInvalidArgument);
}

TEST(FromSpkiDerTest, UnsupportedKeyTypesAreInvalidArgument) {
  EvpPkeyPtr ed25519(EVP_PKEY_Q_keygen(nullptr, nullptr, "ED25519"));
  ASSERT_NE(ed25519, nullptr);
  EXPECT_EQ(PublicKey::FromSpkiDer(OpenSslSpki(ed25519.get())).status().code(),
            absl::StatusCode::kInvalidArgument);

  EvpPkeyPtr p521 = GenerateEc("P-521");
  ASSERT_NE(p521, nullptr);
  EXPECT_EQ(PublicKey::FromSpkiDer(OpenSslSpki(p521.get())).status().code(),
            absl::StatusCode::kInvalidArgument);
}

// ---------------------------------------------------------------- move

TEST(PublicKeyMoveTest, MovedFromObjectFailsCleanly) {
  EvpPkeyPtr ec = GenerateEc("P-256");
  absl::StatusOr<PublicKey> key = PublicKey::FromEcPoint(
      EcParamsDer(SignatureAlgorithm::kEcdsaP256Sha256), EcPoint(ec.get()));
  ASSERT_TRUE(key.ok()) << key.status();
  EVP_PKEY* const underlying = key->get();
  ASSERT_NE(underlying, nullptr);

  PublicKey moved = *std::move(key);
  EXPECT_EQ(moved.get(), underlying);
  EXPECT_TRUE(moved.is_ec());

  PublicKey& from = *key;  // NOLINT(bugprone-use-after-move): tested on purpose
  EXPECT_EQ(from.get(), nullptr);
  EXPECT_FALSE(from.is_ec());
  EXPECT_EQ(from.bits(), 0);
  EXPECT_EQ(from.SpkiDer().status().code(),
            absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(from.SpkiPem().status().code(),
            absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(from.VerifyDigest(SignatureAlgorithm::kEcdsaP256Sha256,
                              std::string(32, 'd'), std::string(64, 's'))
                .code(),
            absl::StatusCode::kFailedPrecondition);
}

}  // namespace
}  // namespace signet::hsm
