// The public documents relying parties fetch, built once when key state
// changes (not per request) and served from an immutable snapshot: the
// consumer and enterprise JWK sets, each JWT scope's own JWK set and OIDC
// discovery document, and each RAW scope's keys as SPKI PEM.
//
// Storm-0558 worked because consumer and enterprise keys shared one
// endpoint: here a class set holds only its own class's JWT scopes, RAW
// scopes are never in a JWK set, and each scope's discovery document points
// its issuer at that scope's own key set (not the class set), so one
// tenant's key never vouches for another issuer.
//
// Deterministic: the same keys give byte-identical documents on every
// replica and restart (scopes in name order, keys in the given order,
// members sorted). Thread-safe: pure functions.
#ifndef SIGNET_SERVER_PUBLICATION_H_
#define SIGNET_SERVER_PUBLICATION_H_

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "server/serving_state.h"

namespace signet::server {

// A RAW scope's published key, as GetPublicKeys answers it.
struct RawPublicKey {
  std::string kid;
  std::string alg;
  std::string spki_pem;

  bool operator==(const RawPublicKey&) const = default;
};

struct PublishedDocuments {
  std::string consumer_jwks;    // /consumer/.well-known/jwks.json
  std::string enterprise_jwks;  // /enterprise/.well-known/jwks.json
  // By scope name: /scopes/{name}/.well-known/jwks.json and
  // /scopes/{name}/.well-known/openid-configuration (JWT scopes only).
  std::map<std::string, std::string> scope_jwks;
  std::map<std::string, std::string> scope_discovery;
  // /scopes/{name}/keys.pem (RAW scopes only): every published key's SPKI
  // PEM, concatenated in generation order; and the same keys for
  // GetPublicKeys.
  std::map<std::string, std::string> scope_keys_pem;
  std::map<std::string, std::vector<RawPublicKey>> scope_raw_keys;

  bool operator==(const PublishedDocuments&) const = default;
};

// The documents for the key state at `now`: every loaded key of a scope
// that is published at `now` (ScopeKeys::PublishedAt: PENDING, ACTIVE,
// RETIRED) is in them, in generation order, so a standby is in relying
// parties' sets before it signs and a retired key stays until its tokens
// expire; once UNPUBLISHED, DESTROYED or REVOKED a key is in no set and no
// PEM document (a scope with none has the set {"keys":[]}).
//
// `public_base_url` is where relying parties reach the HTTP endpoint
// (configured, never taken from a request's Host header), without a
// trailing '/'; empty builds no discovery documents (no HTTP endpoint).
// INVALID_ARGUMENT if it ends with '/'. `seen` as ScopeKeys::PublishedAt
// takes it: a key also stays while it is published at the time really seen
// pass (a wall clock set forward does not withdraw it early).
absl::StatusOr<PublishedDocuments> BuildPublishedDocuments(
    const std::map<std::string, std::shared_ptr<const ScopeKeys>>& scopes,
    absl::string_view public_base_url, absl::Time now,
    absl::Time seen = absl::InfiniteFuture());

}  // namespace signet::server

#endif  // SIGNET_SERVER_PUBLICATION_H_
