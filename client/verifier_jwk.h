// Public keys from a JWK set (RFC 7517, RFC 7518 section 6) and JWS
// signature checks (RFC 7515, RFC 7518 section 3), for the token verifier
// (client/verifier.h). OpenSSL 3 EVP and OSSL_PARAM only: keys are built
// with EVP_PKEY_fromdata, never through the deprecated EC_KEY/RSA APIs.
//
// A key is usable only if its JWK says everything the verifier needs and
// says it consistently:
//  - "kid" (a non-empty string) and "alg" (ES256, ES384, RS256 or PS256) are
//    required: the algorithm of a signature is the key's, never the token
//    header's alone;
//  - "kty" must match "alg": EC with "crv" P-256 for ES256 and P-384 for
//    ES384, "x" and "y" exactly the curve's field size (32 or 48 bytes) and
//    a point on the curve; RSA for RS256/PS256, "n" of 2048 to 16384 bits
//    and "e" odd and at least 3;
//  - "use", if present, is "sig"; "key_ops", if present, holds "verify";
//  - no private member ("d", "p", "q", "dp", "dq", "qi", "oth", "k"): a set
//    that publishes private key material is broken, and its key is not
//    trusted;
//  - a kid that appears twice in one set is ambiguous: neither entry is
//    used.
// Members are base64url without padding (verifier_json.h).
//
// Thread-safe: a JwkKey is immutable after FromJwk, and Verify may run on
// many threads at once (each call has its own OpenSSL contexts).
#ifndef SIGNET_CLIENT_VERIFIER_JWK_H_
#define SIGNET_CLIENT_VERIFIER_JWK_H_

#include <openssl/evp.h>

#include <map>
#include <memory>
#include <optional>
#include <string>
#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "crypto/public_keys.h"
#include "nlohmann/json.hpp"

namespace signet::verifier_internal {

enum class JwsAlgorithm { kEs256, kEs384, kRs256, kPs256 };

// "ES256" -> kEs256, ...; nullopt for any other name (none included).
std::optional<JwsAlgorithm> JwsAlgorithmFromName(absl::string_view name);
absl::string_view JwsAlgorithmName(JwsAlgorithm alg);

class JwkKey {
 public:
  // The key of one JWK (a member of a set's "keys"). INVALID_ARGUMENT with a
  // sentence that names the rule it breaks (see the file comment).
  static absl::StatusOr<std::shared_ptr<const JwkKey>> FromJwk(
      const nlohmann::json& jwk);

  const std::string& kid() const { return kid_; }
  JwsAlgorithm alg() const { return alg_; }

  // Checks `signature` over `signing_input` with this key's algorithm:
  // ES256/ES384 take the JWS form r||s (64 or 96 bytes; a DER
  // ECDSA-Sig-Value is refused), RS256 PKCS#1 v1.5, PS256 PSS with MGF1 and
  // salt length both SHA-256's. INVALID_ARGUMENT for a signature of the
  // wrong length for the key, UNAUTHENTICATED when it does not verify.
  absl::Status Verify(absl::string_view signing_input,
                      absl::string_view signature) const;

 private:
  JwkKey(std::string kid, JwsAlgorithm alg, crypto::EvpPkeyPtr key)
      : kid_(std::move(kid)), alg_(alg), key_(std::move(key)) {}

  const std::string kid_;
  const JwsAlgorithm alg_;
  const crypto::EvpPkeyPtr key_;
};

// A parsed JWK set: the usable keys by kid, and for every other entry that
// has a kid, why it cannot be used (so a token naming it gets a clear
// answer rather than "unknown kid"). Entries without a kid are ignored:
// no token can name them.
struct JwkSet {
  std::map<std::string, std::shared_ptr<const JwkKey>> keys;
  std::map<std::string, std::string> unusable;
};

// Parses a JWK set document: a strict JSON object (verifier_json.h) with a
// "keys" array of objects. INVALID_ARGUMENT when the document itself is
// not one; a bad entry only makes that entry unusable.
absl::StatusOr<JwkSet> ParseJwkSet(absl::string_view body);

}  // namespace signet::verifier_internal

#endif  // SIGNET_CLIENT_VERIFIER_JWK_H_
