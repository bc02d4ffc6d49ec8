// Signature algorithms the HSM layer knows, and how each maps onto PKCS#11.
//
// hsm/ knows nothing about JWT: these are mechanism-level names. For every
// algorithm the digest is computed on the host and the HSM signs the digest
// (docs/architecture.md, "The HSM boundary as it behaves": CKM_ECDSA_SHA256
// and CKM_SHA256_RSA_PKCS_PSS do not cross `p11-kit server`, so one
// digest-input mechanism per key works everywhere).
#ifndef SIGNET_HSM_ALGORITHM_H_
#define SIGNET_HSM_ALGORITHM_H_

#include <p11-kit/pkcs11.h>

#include <cstddef>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace signet::hsm {

enum class SignatureAlgorithm {
  kEcdsaP256Sha256,  // ES256: CKM_ECDSA over SHA-256, r||s 64 bytes
  kEcdsaP384Sha384,  // ES384: CKM_ECDSA over SHA-384, r||s 96 bytes
  kRsaPkcs1Sha256,   // RS256: CKM_RSA_PKCS over DER DigestInfo(SHA-256)
  kRsaPssSha256,     // PS256: CKM_RSA_PKCS_PSS, SHA-256, MGF1-SHA256, salt 32
};

// What to generate: the algorithm and, for RSA, the modulus size.
struct KeySpec {
  SignatureAlgorithm algorithm = SignatureAlgorithm::kEcdsaP256Sha256;
  // 2048, 3072 or 4096 for the RSA algorithms; ignored for ECDSA.
  int rsa_bits = 2048;
};

inline bool IsEcdsa(SignatureAlgorithm a) {
  return a == SignatureAlgorithm::kEcdsaP256Sha256 ||
         a == SignatureAlgorithm::kEcdsaP384Sha384;
}

// The one mechanism a key of this algorithm is allowed
// (CKA_ALLOWED_MECHANISMS).
CK_MECHANISM_TYPE SignMechanism(SignatureAlgorithm a);

// The key pair generation mechanism (CKM_EC_KEY_PAIR_GEN or
// CKM_RSA_PKCS_KEY_PAIR_GEN).
CK_MECHANISM_TYPE KeyGenMechanism(SignatureAlgorithm a);

// Length in bytes of the host-side digest (32 or 48).
size_t DigestLength(SignatureAlgorithm a);

// A short human name for errors and logs ("ES256-style ECDSA P-256/SHA-256").
absl::string_view AlgorithmName(SignatureAlgorithm a);

// DER of the named-curve OID used as CKA_EC_PARAMS (P-256 or P-384).
// Only for ECDSA algorithms.
absl::string_view EcParamsDer(SignatureAlgorithm a);

// Validates a KeySpec: RSA sizes 2048/3072/4096 only. INVALID_ARGUMENT else.
absl::Status ValidateKeySpec(const KeySpec& spec);

}  // namespace signet::hsm

#endif  // SIGNET_HSM_ALGORITHM_H_
