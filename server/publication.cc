#include "server/publication.h"

#include <nlohmann/json.hpp>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "base/status_macros.h"
#include "rotation/key_state.h"
#include "server/jwt.h"

namespace signet::server {

absl::StatusOr<PublishedDocuments> BuildPublishedDocuments(
    const std::map<std::string, std::shared_ptr<const ScopeKeys>>& scopes,
    absl::string_view public_base_url, absl::Time now, absl::Time seen) {
  if (absl::EndsWith(public_base_url, "/")) {
    return absl::InvalidArgumentError(
        "the public base URL must not end with '/'");
  }
  PublishedDocuments docs;
  std::vector<JwkEntry> consumer;
  std::vector<JwkEntry> enterprise;
  // std::map: scopes in name order, so the class sets are deterministic.
  for (const auto& [name, scope] : scopes) {
    const std::vector<std::shared_ptr<const ScopeState>> published =
        scope->PublishedAt(now, seen);
    if (scope->config().purpose() == signet::v1::RAW) {
      std::string& pem = docs.scope_keys_pem[name];
      std::vector<RawPublicKey>& raw = docs.scope_raw_keys[name];
      for (const auto& key : published) {
        pem += key->spki_pem;
        raw.push_back(RawPublicKey{key->kid, key->alg, key->spki_pem});
      }
      continue;
    }
    std::vector<JwkEntry> entries;
    for (const auto& key : published) {
      entries.push_back(
          JwkEntry{key->key.public_key.get(), key->kid, key->alg});
    }
    SIGNET_ASSIGN_OR_RETURN(std::string jwks, JwksJson(entries));
    docs.scope_jwks[name] = jwks;
    std::vector<JwkEntry>& class_set =
        scope->config().audience_class() == signet::v1::CONSUMER ? consumer
                                                                 : enterprise;
    class_set.insert(class_set.end(), entries.begin(), entries.end());
    if (public_base_url.empty()) continue;
    nlohmann::json discovery = nlohmann::json::object();
    discovery["issuer"] = scope->config().issuer();
    discovery["jwks_uri"] = absl::StrCat(public_base_url, "/scopes/", name,
                                         "/.well-known/jwks.json");
    discovery["id_token_signing_alg_values_supported"] =
        nlohmann::json::array({scope->alg()});
    docs.scope_discovery[name] = discovery.dump();
  }
  SIGNET_ASSIGN_OR_RETURN(std::string consumer_jwks, JwksJson(consumer));
  SIGNET_ASSIGN_OR_RETURN(std::string enterprise_jwks, JwksJson(enterprise));
  docs.consumer_jwks = consumer_jwks;
  docs.enterprise_jwks = enterprise_jwks;
  return docs;
}

}  // namespace signet::server
