// OpenSSL glue shared by the HSM layer (public keys read from the token,
// checked against their own signatures), jose/ (a key's JWK members) and the
// reference verifier (public keys from a JWK set): building a public key from
// its components and reading them back, the JWS form of an ECDSA signature,
// and verifying a signature over a digest.
//
// Public keys only: signet never hands OpenSSL a signing key
// (docs/architecture.md, "Principles"). Every builder runs OpenSSL's public
// key check, so a point off its curve or a malformed modulus never becomes
// a key. Errors never contain key bytes; OpenSSL's error queue is cleared
// before a function returns an error.
//
// Thread-safe: pure functions over their arguments.
#ifndef SIGNET_CRYPTO_PUBLIC_KEYS_H_
#define SIGNET_CRYPTO_PUBLIC_KEYS_H_

#include <openssl/evp.h>

#include <memory>
#include <optional>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace signet::crypto {

// A std::unique_ptr deleter calling an OpenSSL free function:
// std::unique_ptr<BIO, OsslFree<BIO_free_all>>.
template <auto kFree>
struct OsslFree {
  template <typename T>
  void operator()(T* p) const {
    kFree(p);
  }
};

using EvpPkeyPtr = std::unique_ptr<EVP_PKEY, OsslFree<EVP_PKEY_free>>;
using EvpPkeyCtxPtr =
    std::unique_ptr<EVP_PKEY_CTX, OsslFree<EVP_PKEY_CTX_free>>;

// The RSA moduli accepted, in bits. The ceiling is OpenSSL's own for public
// operations (OPENSSL_RSA_MAX_MODULUS_BITS).
inline constexpr int kMinRsaBits = 2048;
inline constexpr int kMaxRsaBits = 16384;

enum class EcCurve { kP256, kP384 };

struct EcCurveInfo {
  const char* group_name;  // OpenSSL's (SEC 2) name
  const char* jwk_crv;     // RFC 7518 section 6.2.1.1
  int field_bytes;         // one coordinate; an r or an s
};
const EcCurveInfo& InfoOf(EcCurve curve);

// `code` with `message`, and OpenSSL's reason for its most recent error in
// parentheses (a reason never contains key bytes); OpenSSL's thread-local
// error queue is cleared, so the failure does not surface in an unrelated
// caller.
absl::Status OpenSslError(absl::StatusCode code, absl::string_view message);

// An EC public key on `curve` from the uncompressed point 04||X||Y.
// INVALID_ARGUMENT when the point has the wrong length or form, or is not
// on the curve.
absl::StatusOr<EvpPkeyPtr> EcPublicKeyFromPoint(EcCurve curve,
                                                absl::string_view point);

// The curve of an EC key. INVALID_ARGUMENT for a key with explicit curve
// parameters (no name) or on a curve other than P-256 and P-384.
absl::StatusOr<EcCurve> EcCurveOf(const EVP_PKEY* key);

// The public components of an EC key on P-256 or P-384, or of an RSA key, as
// big-endian byte strings.
struct PublicComponents {
  std::optional<EcCurve> curve;  // set for an EC key, empty for an RSA key
  // EC: the affine coordinates, each left-padded to the field size
  // (InfoOf(*curve).field_bytes: 32 or 48 bytes). Empty for RSA.
  std::string x, y;
  // RSA: the modulus and the public exponent, minimal (no leading zero
  // bytes). Empty for EC.
  std::string n, e;
};

// The public components of `key` (see PublicComponents). INVALID_ARGUMENT
// for a null key, another key type, or an EC key on another curve (as
// EcCurveOf); INTERNAL if OpenSSL cannot export a component.
absl::StatusOr<PublicComponents> ComponentsOf(const EVP_PKEY* key);

// An RSA public key from the big-endian modulus and public exponent.
// INVALID_ARGUMENT unless the modulus has kMinRsaBits to kMaxRsaBits bits
// and the exponent is odd with 2^16 < e < 2^256 (NIST SP 800-56B rev 2,
// 6.4.1.2.1; OpenSSL itself only insists on an odd e > 1).
absl::StatusOr<EvpPkeyPtr> RsaPublicKeyFromComponents(
    absl::string_view modulus, absl::string_view public_exponent);

// The JWS form of an ECDSA signature, r||s in two halves of equal length,
// as the DER ECDSA-Sig-Value (RFC 3279 section 2.2.3) OpenSSL verifies.
// INVALID_ARGUMENT for an empty or odd-length input.
absl::StatusOr<std::string> EcdsaRawToDer(absl::string_view raw);

// The other way: the JWS form r||s of a DER ECDSA-Sig-Value, each integer
// left-padded to `curve`'s field size (InfoOf(curve).field_bytes; RFC 7518
// section 3.4), the form CKM_ECDSA returns. Signet's own signatures come
// from the HSM in that form already; this serves what stands in for the HSM
// with an OpenSSL key (tests). INVALID_ARGUMENT unless `der` is exactly one
// ECDSA-Sig-Value whose r and s are non-negative and fit the field.
absl::StatusOr<std::string> EcdsaDerToRaw(EcCurve curve, absl::string_view der);

// What a signature is, for VerifyDigestSignature.
enum class SignatureScheme {
  kEcdsaSha256,     // ES256: P-256, SHA-256
  kEcdsaSha384,     // ES384: P-384, SHA-384
  kRsaPkcs1Sha256,  // RS256: RSASSA-PKCS1-v1_5, SHA-256
  kRsaPssSha256,    // PS256: RSASSA-PSS, SHA-256, MGF1-SHA-256, salt 32
};

// Whether `signature` (DER for ECDSA, k bytes for RSA) is `key`'s signature
// of `digest` under `scheme`. INVALID_ARGUMENT "signature does not verify"
// when it is not (a signature OpenSSL cannot even decode included);
// INTERNAL when OpenSSL cannot be set up. The caller checks that the key
// and the scheme go together and the lengths (its messages say more).
absl::Status VerifyDigestSignature(EVP_PKEY* key, SignatureScheme scheme,
                                   absl::string_view digest,
                                   absl::string_view signature);

}  // namespace signet::crypto

#endif  // SIGNET_CRYPTO_PUBLIC_KEYS_H_
