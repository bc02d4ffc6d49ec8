#include "hsm/public_key.h"

#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include <climits>
#include <cstddef>
#include <memory>
#include <string>
#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "base/status_macros.h"
#include "crypto/public_keys.h"
#include "hsm/digest.h"

namespace signet::hsm {
namespace {

using crypto::OsslFree;

using BioPtr = std::unique_ptr<BIO, OsslFree<BIO_free_all>>;

struct Curve {
  SignatureAlgorithm algorithm;  // the ECDSA algorithm on this curve
  crypto::EcCurve curve;
  const crypto::EcCurveInfo& info() const { return crypto::InfoOf(curve); }
};

constexpr Curve kCurves[] = {
    {SignatureAlgorithm::kEcdsaP256Sha256, crypto::EcCurve::kP256},
    {SignatureAlgorithm::kEcdsaP384Sha384, crypto::EcCurve::kP384},
};

using crypto::OpenSslError;

const unsigned char* Bytes(absl::string_view s) {
  return reinterpret_cast<const unsigned char*>(s.data());
}

// The curve of an EC key, or INVALID_ARGUMENT if it is not one we accept
// (including keys with explicit curve parameters, which have no name).
absl::StatusOr<const Curve*> CurveOf(const EVP_PKEY* pkey) {
  SIGNET_ASSIGN_OR_RETURN(crypto::EcCurve curve, crypto::EcCurveOf(pkey));
  for (const Curve& c : kCurves) {
    if (c.curve == curve) return &c;
  }
  return absl::InternalError("EC curve without a signature algorithm");
}

absl::Status MovedFrom() {
  return absl::FailedPreconditionError("PublicKey used after move");
}

}  // namespace

absl::StatusOr<PublicKey> PublicKey::Adopt(crypto::EvpPkeyPtr pkey) {
  // Every key comes from crypto/'s builders, which hold it to the size and
  // exponent rules and run OpenSSL's public key check: what is left is the
  // curve an EC key is on.
  if (EVP_PKEY_is_a(pkey.get(), "EC")) {
    SIGNET_RETURN_IF_ERROR(CurveOf(pkey.get()).status());
  } else if (!EVP_PKEY_is_a(pkey.get(), "RSA")) {
    return absl::InvalidArgumentError(absl::StrCat(
        "unsupported public key type ", EVP_PKEY_get0_type_name(pkey.get())));
  }
  return PublicKey(std::move(pkey));
}

absl::StatusOr<PublicKey> PublicKey::FromEcPoint(
    absl::string_view ec_params_der, absl::string_view ec_point) {
  const Curve* curve = nullptr;
  for (const Curve& c : kCurves) {
    if (ec_params_der == EcParamsDer(c.algorithm)) curve = &c;
  }
  if (curve == nullptr) {
    return absl::InvalidArgumentError(
        "CKA_EC_PARAMS is not the named curve prime256v1 or secp384r1");
  }
  // CKA_EC_POINT is DER OCTET STRING { 04||X||Y } (PKCS#11 v2.40 section
  // 2.3.3); some modules return the bare point. The two cannot be confused:
  // the wrapped form is exactly two bytes longer, and its content is short
  // enough (65 or 97 bytes) that DER uses the one-byte length form.
  const size_t point_len =
      1 + 2 * static_cast<size_t>(curve->info().field_bytes);
  absl::string_view point = ec_point;
  if (ec_point.size() == point_len + 2 && ec_point[0] == '\x04' &&
      static_cast<unsigned char>(ec_point[1]) == point_len) {
    point = ec_point.substr(2);
  }
  SIGNET_ASSIGN_OR_RETURN(crypto::EvpPkeyPtr pkey,
                          crypto::EcPublicKeyFromPoint(curve->curve, point));
  return Adopt(std::move(pkey));
}

absl::StatusOr<PublicKey> PublicKey::FromRsa(
    absl::string_view modulus, absl::string_view public_exponent) {
  SIGNET_ASSIGN_OR_RETURN(
      crypto::EvpPkeyPtr pkey,
      crypto::RsaPublicKeyFromComponents(modulus, public_exponent));
  return Adopt(std::move(pkey));
}

absl::StatusOr<PublicKey> PublicKey::FromSpkiPem(absl::string_view pem) {
  if (pem.size() > INT_MAX) {
    return absl::InvalidArgumentError("PEM public key too long");
  }
  std::unique_ptr<BIO, decltype(&BIO_free)> bio(
      BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size())), &BIO_free);
  if (bio == nullptr) return absl::InternalError("BIO_new_mem_buf failed");
  unsigned char* der = nullptr;
  long der_len = 0;
  char* name = nullptr;
  char* header = nullptr;
  if (PEM_read_bio(bio.get(), &name, &header, &der, &der_len) != 1) {
    ERR_clear_error();
    return absl::InvalidArgumentError("not a PEM block");
  }
  const bool is_public_key = std::string(name) == "PUBLIC KEY";
  OPENSSL_free(name);
  OPENSSL_free(header);
  absl::StatusOr<PublicKey> key =
      is_public_key
          ? FromSpkiDer(absl::string_view(reinterpret_cast<char*>(der),
                                          static_cast<size_t>(der_len)))
          : absl::InvalidArgumentError("the PEM block is not a PUBLIC KEY");
  OPENSSL_free(der);
  return key;
}

absl::StatusOr<PublicKey> PublicKey::FromSpkiDer(absl::string_view der) {
  if (der.size() > LONG_MAX) {
    return absl::InvalidArgumentError("SubjectPublicKeyInfo too long");
  }
  const unsigned char* p = Bytes(der);
  crypto::EvpPkeyPtr parsed(
      d2i_PUBKEY(nullptr, &p, static_cast<long>(der.size())));
  if (parsed == nullptr) {
    return OpenSslError(absl::StatusCode::kInvalidArgument,
                        "SubjectPublicKeyInfo does not parse");
  }
  if (p != Bytes(der) + der.size()) {
    return absl::InvalidArgumentError(
        "trailing bytes after SubjectPublicKeyInfo");
  }
  // Rebuild the key from its components, so that every PublicKey comes out of
  // the same import path (and an EC point given compressed is re-encoded
  // uncompressed).
  SIGNET_ASSIGN_OR_RETURN(crypto::PublicComponents components,
                          crypto::ComponentsOf(parsed.get()));
  SIGNET_ASSIGN_OR_RETURN(
      crypto::EvpPkeyPtr rebuilt,
      components.curve.has_value()
          ? crypto::EcPublicKeyFromPoint(
                *components.curve,
                absl::StrCat("\x04", components.x, components.y))
          : crypto::RsaPublicKeyFromComponents(components.n, components.e));
  return Adopt(std::move(rebuilt));
}

bool PublicKey::is_ec() const {
  return pkey_ != nullptr && EVP_PKEY_is_a(pkey_.get(), "EC");
}

int PublicKey::bits() const {
  return pkey_ == nullptr ? 0 : EVP_PKEY_get_bits(pkey_.get());
}

absl::StatusOr<std::string> PublicKey::SpkiDer() const {
  if (pkey_ == nullptr) return MovedFrom();
  const int len = i2d_PUBKEY(pkey_.get(), nullptr);
  if (len <= 0) {
    return OpenSslError(absl::StatusCode::kInternal, "i2d_PUBKEY failed");
  }
  std::string der(static_cast<size_t>(len), '\0');
  unsigned char* p = reinterpret_cast<unsigned char*>(der.data());
  if (i2d_PUBKEY(pkey_.get(), &p) != len) {
    return OpenSslError(absl::StatusCode::kInternal, "i2d_PUBKEY failed");
  }
  return der;
}

absl::StatusOr<std::string> PublicKey::SpkiPem() const {
  if (pkey_ == nullptr) return MovedFrom();
  BioPtr bio(BIO_new(BIO_s_mem()));
  if (bio == nullptr || PEM_write_bio_PUBKEY(bio.get(), pkey_.get()) != 1) {
    return OpenSslError(absl::StatusCode::kInternal,
                        "PEM_write_bio_PUBKEY failed");
  }
  char* data = nullptr;
  const long len = BIO_get_mem_data(bio.get(), &data);
  if (len <= 0 || data == nullptr) {
    return OpenSslError(absl::StatusCode::kInternal, "BIO_get_mem_data failed");
  }
  return std::string(data, static_cast<size_t>(len));
}

absl::Status PublicKey::VerifyDigest(SignatureAlgorithm algorithm,
                                     absl::string_view digest,
                                     absl::string_view signature) const {
  if (pkey_ == nullptr) return MovedFrom();
  if (digest.size() != DigestLength(algorithm)) {
    return absl::InvalidArgumentError(
        absl::StrCat(AlgorithmName(algorithm), ": digest must be ",
                     DigestLength(algorithm), " bytes, got ", digest.size()));
  }
  std::string der_signature;
  if (IsEcdsa(algorithm)) {
    if (!is_ec()) {
      return absl::InvalidArgumentError(
          absl::StrCat(AlgorithmName(algorithm), ": key is not an EC key"));
    }
    SIGNET_ASSIGN_OR_RETURN(const Curve* curve, CurveOf(pkey_.get()));
    if (curve->algorithm != algorithm) {
      return absl::InvalidArgumentError(absl::StrCat(AlgorithmName(algorithm),
                                                     ": key is on curve ",
                                                     curve->info().jwk_crv));
    }
    const size_t want = 2 * static_cast<size_t>(curve->info().field_bytes);
    if (signature.size() != want) {
      return absl::InvalidArgumentError(
          absl::StrCat(AlgorithmName(algorithm), ": signature must be ", want,
                       " bytes (r||s), got ", signature.size()));
    }
    SIGNET_ASSIGN_OR_RETURN(der_signature, crypto::EcdsaRawToDer(signature));
    signature = der_signature;
  } else {
    if (!EVP_PKEY_is_a(pkey_.get(), "RSA")) {
      return absl::InvalidArgumentError(
          absl::StrCat(AlgorithmName(algorithm), ": key is not an RSA key"));
    }
    // RFC 8017 section 8.2.2 step 1 / 8.1.2 step 1: exactly k bytes.
    const size_t k = static_cast<size_t>(EVP_PKEY_get_size(pkey_.get()));
    if (signature.size() != k) {
      return absl::InvalidArgumentError(
          absl::StrCat(AlgorithmName(algorithm), ": signature must be ", k,
                       " bytes, got ", signature.size()));
    }
  }

  crypto::SignatureScheme scheme = crypto::SignatureScheme::kEcdsaSha256;
  switch (algorithm) {
    case SignatureAlgorithm::kEcdsaP256Sha256:
      scheme = crypto::SignatureScheme::kEcdsaSha256;
      break;
    case SignatureAlgorithm::kEcdsaP384Sha384:
      scheme = crypto::SignatureScheme::kEcdsaSha384;
      break;
    case SignatureAlgorithm::kRsaPkcs1Sha256:
      scheme = crypto::SignatureScheme::kRsaPkcs1Sha256;
      break;
    case SignatureAlgorithm::kRsaPssSha256:
      scheme = crypto::SignatureScheme::kRsaPssSha256;
      break;
  }
  if (absl::Status verified =
          crypto::VerifyDigestSignature(pkey_.get(), scheme, digest, signature);
      !verified.ok()) {
    return absl::Status(
        verified.code(),
        absl::StrCat(AlgorithmName(algorithm), ": ", verified.message()));
  }
  return absl::OkStatus();
}

}  // namespace signet::hsm
