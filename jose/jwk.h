// A public key as a JWK (RFC 7517, RFC 7518 section 6) and its RFC 7638
// thumbprint, which signet uses as the key's `kid`: what the JWKS documents
// (server/jwt.h), the JWS protected header and the key records
// (rotation/key_record.proto) name a key by.
//
// Above hsm/, which knows nothing of JOSE: callers pass the OpenSSL key of an
// hsm::PublicKey (its get()), or any EC P-256/P-384 or RSA public key. The
// components come from crypto/public_keys.h (ComponentsOf).
//
// Thread-safe: pure functions over their arguments (OpenSSL 3 allows
// concurrent read-only use of an EVP_PKEY).
#ifndef SIGNET_JOSE_JWK_H_
#define SIGNET_JOSE_JWK_H_

#include <openssl/types.h>

#include <string>

#include "absl/status/statusor.h"

namespace signet::jose {

// JWK members (RFC 7518 section 6), each value already in its JSON string
// form: byte strings are base64url without padding (RFC 7515 section 2).
// EC keys set kty "EC", crv ("P-256"/"P-384"), x and y (each left-padded to
// the field size, 32 or 48 bytes, as RFC 7518 section 6.2.1.2 requires);
// RSA keys set kty "RSA", n and e (minimal big-endian, no leading zero
// bytes, RFC 7518 section 6.3.1). Members that do not apply are empty.
struct JwkMembers {
  std::string kty, crv, x, y, n, e;
};

// The JWK members of `key` (see JwkMembers). INVALID_ARGUMENT for a null
// key or one that is neither EC on P-256/P-384 nor RSA; INTERNAL if OpenSSL
// cannot export the public components.
absl::StatusOr<JwkMembers> JwkOf(const EVP_PKEY* key);

// The RFC 7638 JWK thumbprint of `key`: base64url(SHA-256(UTF-8 of the
// required members in lexicographic order, no whitespace)), i.e. over
//   {"crv":"P-256","kty":"EC","x":"...","y":"..."} or
//   {"e":"AQAB","kty":"RSA","n":"..."}.
// 43 characters. Errors as JwkOf; INTERNAL if OpenSSL fails to hash.
absl::StatusOr<std::string> JwkThumbprint(const EVP_PKEY* key);

}  // namespace signet::jose

#endif  // SIGNET_JOSE_JWK_H_
