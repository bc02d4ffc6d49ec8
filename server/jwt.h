// JWS compact serialization (RFC 7515) and JWK sets (RFC 7517) as signet
// writes them. The server writes the protected header itself; callers never
// set header members. Thread-safe: pure functions.
#ifndef SIGNET_SERVER_JWT_H_
#define SIGNET_SERVER_JWT_H_

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "hsm/public_key.h"

namespace signet::server {

// base64url({"alg":alg,"kid":kid,"typ":"JWT"}), members in that order.
// `kid` must be base64url characters (an RFC 7638 thumbprint).
std::string ProtectedHeaderB64(absl::string_view alg, absl::string_view kid);

// header_b64 + "." + base64url(claims): the bytes the signature covers.
std::string JwsSigningInput(absl::string_view header_b64,
                            absl::string_view claims_json);

// signing_input + "." + base64url(signature).
std::string CompactJws(absl::string_view signing_input,
                       absl::string_view signature);

struct JwkEntry {
  const hsm::PublicKey* public_key;
  std::string kid;
  std::string alg;
};

// {"keys":[{...}]} with kty, crv+x+y or n+e, kid, alg, use "sig"; members in
// sorted order and keys in the given order, so the same keys give the same
// bytes on every replica and restart.
absl::StatusOr<std::string> JwksJson(const std::vector<JwkEntry>& keys);

// A strong version/ETag value for `body`: base64url(SHA-256(body)).
std::string ContentVersion(absl::string_view body);

}  // namespace signet::server

#endif  // SIGNET_SERVER_JWT_H_
