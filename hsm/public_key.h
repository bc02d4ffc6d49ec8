// The public half of an HSM signing key, held as an OpenSSL EVP_PKEY.
//
// PublicKey is built from what the HSM exposes (PKCS#11 public-key attributes)
// or from an X.509 SubjectPublicKeyInfo, and serves what the HSM layer does
// with public material: SPKI DER/PEM, and verification of a signature the HSM
// produced over a host-computed digest (hsm/digest.h). hsm/ knows nothing of
// JOSE: a key's JWK members and its RFC 7638 thumbprint (signet's `kid`) are
// computed above it, from get(), by jose/jwk.h.
//
// It never holds private key material (docs/architecture.md, "Principles",
// 1): every factory imports public components only.
//
// Accepted keys: EC on P-256 (prime256v1) or P-384 (secp384r1), and RSA
// (rsaEncryption, not RSASSA-PSS-restricted keys) with a 2048..16384-bit
// modulus. Every factory runs OpenSSL's public-key validation
// (EVP_PKEY_public_check): for EC the point must be on the curve, not the
// point at infinity and in the prime-order subgroup; for RSA the modulus must
// be odd and composite and the exponent odd and in [65537, 2^256)
// (NIST SP 800-56B rev 2, 6.4.1.2.1). Anything else is INVALID_ARGUMENT.
//
// Thread-safety: a PublicKey is immutable after construction; its const
// methods may be called concurrently from any number of threads (OpenSSL 3
// allows concurrent read-only use of an EVP_PKEY). Moving from an object is
// not thread-safe; a moved-from PublicKey may only be destroyed or assigned
// to, and its other methods return FAILED_PRECONDITION (get() returns null).
#ifndef SIGNET_HSM_PUBLIC_KEY_H_
#define SIGNET_HSM_PUBLIC_KEY_H_

#include <memory>
#include <string>
#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "crypto/public_keys.h"
#include "hsm/algorithm.h"

namespace signet::hsm {

class PublicKey {
 public:
  // From the PKCS#11 attributes of an EC public key (PKCS#11 v2.40 section
  // 2.3.3): `ec_params_der` is CKA_EC_PARAMS, which must be the DER named-curve
  // OID of prime256v1 or secp384r1 (hsm/algorithm.h EcParamsDer); `ec_point`
  // is CKA_EC_POINT, the DER OCTET STRING wrapping the uncompressed point
  // 04||X||Y, or the bare uncompressed point, which some modules return.
  //
  // INVALID_ARGUMENT for another curve or explicit parameters, a malformed or
  // compressed point, or a point that fails validation (not on the curve).
  static absl::StatusOr<PublicKey> FromEcPoint(absl::string_view ec_params_der,
                                               absl::string_view ec_point);

  // From CKA_MODULUS and CKA_PUBLIC_EXPONENT (big-endian unsigned integers;
  // leading zero bytes are ignored).
  //
  // INVALID_ARGUMENT for a modulus shorter than 2048 or longer than 16384
  // bits, or a key that fails validation (see the file comment).
  static absl::StatusOr<PublicKey> FromRsa(absl::string_view modulus,
                                           absl::string_view public_exponent);

  // From a DER SubjectPublicKeyInfo (RFC 5280 section 4.1.2.7, RFC 5480,
  // RFC 3279). INVALID_ARGUMENT if the DER does not parse, has trailing bytes,
  // or holds a key outside the accepted set.
  static absl::StatusOr<PublicKey> FromSpkiDer(absl::string_view der);

  // From a PEM "PUBLIC KEY" block (the SpkiPem() form); as FromSpkiDer.
  static absl::StatusOr<PublicKey> FromSpkiPem(absl::string_view pem);

  PublicKey(PublicKey&&) = default;
  PublicKey& operator=(PublicKey&&) = default;
  PublicKey(const PublicKey&) = delete;
  PublicKey& operator=(const PublicKey&) = delete;
  ~PublicKey() = default;

  // True for EC keys, false for RSA keys (and for a moved-from object).
  bool is_ec() const;

  // The key size: 256 or 384 for EC, the modulus length for RSA; 0 for a
  // moved-from object.
  int bits() const;

  // DER SubjectPublicKeyInfo (i2d_PUBKEY); EC points are uncompressed.
  // INTERNAL if OpenSSL fails to encode.
  absl::StatusOr<std::string> SpkiDer() const;

  // The same SPKI as PEM ("-----BEGIN PUBLIC KEY-----", RFC 7468 section 13).
  // INTERNAL if OpenSSL fails to encode.
  absl::StatusOr<std::string> SpkiPem() const;

  // Verifies `signature` over the host-computed `digest` (hsm/digest.h
  // DigestFor) for `algorithm`:
  //   ES256/ES384: `signature` is the JWS form r||s (RFC 7518 section 3.4),
  //     64 or 96 bytes, which is also what CKM_ECDSA returns; the key must be
  //     on the algorithm's curve.
  //   RS256: RSASSA-PKCS1-v1_5 with SHA-256 (RFC 8017 section 8.2).
  //   PS256: RSASSA-PSS, SHA-256, MGF1-SHA-256, 32-byte salt (RFC 8017
  //     section 8.1, RFC 7518 section 3.5).
  //   RSA signatures must be exactly the modulus length.
  //
  // OK if the signature is valid. INVALID_ARGUMENT if it is not ("signature
  // does not verify"), if `digest` is not DigestLength(algorithm) bytes, if
  // the signature has the wrong length, or if this key's type or curve does
  // not fit `algorithm`. INTERNAL if OpenSSL fails for another reason.
  absl::Status VerifyDigest(SignatureAlgorithm algorithm,
                            absl::string_view digest,
                            absl::string_view signature) const;

  // The underlying key, owned by this object (public material only). Callers
  // must not modify it. Null for a moved-from object.
  EVP_PKEY* get() const { return pkey_.get(); }

 private:
  explicit PublicKey(crypto::EvpPkeyPtr pkey) : pkey_(std::move(pkey)) {}

  // Checks the key is EC on an accepted curve or RSA, then takes ownership
  // (its size, exponent and EVP_PKEY_public_check were checked where it was
  // built, crypto/public_keys.h).
  static absl::StatusOr<PublicKey> Adopt(crypto::EvpPkeyPtr pkey);

  crypto::EvpPkeyPtr pkey_;
};

}  // namespace signet::hsm

#endif  // SIGNET_HSM_PUBLIC_KEY_H_
