#include "hsm/algorithm.h"

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace signet::hsm {
namespace {

// OID 1.2.840.10045.3.1.7 (prime256v1) and 1.3.132.0.34 (secp384r1), DER.
constexpr char kP256Oid[] = "\x06\x08\x2a\x86\x48\xce\x3d\x03\x01\x07";
constexpr char kP384Oid[] = "\x06\x05\x2b\x81\x04\x00\x22";

}  // namespace

CK_MECHANISM_TYPE SignMechanism(SignatureAlgorithm a) {
  switch (a) {
    case SignatureAlgorithm::kEcdsaP256Sha256:
    case SignatureAlgorithm::kEcdsaP384Sha384:
      return CKM_ECDSA;
    case SignatureAlgorithm::kRsaPkcs1Sha256:
      return CKM_RSA_PKCS;
    case SignatureAlgorithm::kRsaPssSha256:
      return CKM_RSA_PKCS_PSS;
  }
  return CKM_VENDOR_DEFINED;
}

CK_MECHANISM_TYPE KeyGenMechanism(SignatureAlgorithm a) {
  return IsEcdsa(a) ? CKM_EC_KEY_PAIR_GEN : CKM_RSA_PKCS_KEY_PAIR_GEN;
}

size_t DigestLength(SignatureAlgorithm a) {
  return a == SignatureAlgorithm::kEcdsaP384Sha384 ? 48 : 32;
}

absl::string_view AlgorithmName(SignatureAlgorithm a) {
  switch (a) {
    case SignatureAlgorithm::kEcdsaP256Sha256:
      return "ECDSA P-256/SHA-256 (ES256)";
    case SignatureAlgorithm::kEcdsaP384Sha384:
      return "ECDSA P-384/SHA-384 (ES384)";
    case SignatureAlgorithm::kRsaPkcs1Sha256:
      return "RSASSA-PKCS1-v1_5/SHA-256 (RS256)";
    case SignatureAlgorithm::kRsaPssSha256:
      return "RSASSA-PSS/SHA-256 (PS256)";
  }
  return "unknown";
}

absl::string_view EcParamsDer(SignatureAlgorithm a) {
  if (a == SignatureAlgorithm::kEcdsaP384Sha384) {
    return absl::string_view(kP384Oid, sizeof(kP384Oid) - 1);
  }
  return absl::string_view(kP256Oid, sizeof(kP256Oid) - 1);
}

absl::Status ValidateKeySpec(const KeySpec& spec) {
  if (IsEcdsa(spec.algorithm)) return absl::OkStatus();
  if (spec.rsa_bits == 2048 || spec.rsa_bits == 3072 || spec.rsa_bits == 4096) {
    return absl::OkStatus();
  }
  return absl::InvalidArgumentError(absl::StrCat(
      "RSA key size must be 2048, 3072 or 4096 bits, not ", spec.rsa_bits));
}

}  // namespace signet::hsm
