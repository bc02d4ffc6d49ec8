#include "server/publication.h"

#include <nlohmann/json.hpp>

#include <vector>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "rotation/key_state.h"
#include "server/jwt.h"

namespace signet::server {

absl::StatusOr<PublishedDocuments> BuildPublishedDocuments(
    const std::map<std::string, std::shared_ptr<const ScopeState>>& scopes,
    absl::string_view public_base_url, absl::Time now) {
  if (absl::EndsWith(public_base_url, "/")) {
    return absl::InvalidArgumentError(
        "the public base URL must not end with '/'");
  }
  PublishedDocuments docs;
  std::vector<JwkEntry> consumer;
  std::vector<JwkEntry> enterprise;
  // std::map: scopes in name order, so the class sets are deterministic.
  for (const auto& [name, scope] : scopes) {
    const bool published =
        rotation::IsPublished(rotation::StateAt(scope->record, now));
    if (scope->config.purpose() == signet::v1::RAW) {
      docs.scope_keys_pem[name] = published ? scope->spki_pem : "";
      continue;
    }
    std::vector<JwkEntry> entries;
    if (published) {
      entries.push_back(JwkEntry{scope->key.public_key.get(),
                                 scope->key.thumbprint, scope->alg});
    }
    absl::StatusOr<std::string> jwks = JwksJson(entries);
    if (!jwks.ok()) return jwks.status();
    docs.scope_jwks[name] = *jwks;
    std::vector<JwkEntry>& class_set =
        scope->config.audience_class() == signet::v1::CONSUMER ? consumer
                                                               : enterprise;
    class_set.insert(class_set.end(), entries.begin(), entries.end());
    if (public_base_url.empty()) continue;
    nlohmann::json discovery = nlohmann::json::object();
    discovery["issuer"] = scope->config.issuer();
    discovery["jwks_uri"] = absl::StrCat(public_base_url, "/scopes/", name,
                                         "/.well-known/jwks.json");
    discovery["id_token_signing_alg_values_supported"] =
        nlohmann::json::array({scope->alg});
    docs.scope_discovery[name] = discovery.dump();
  }
  absl::StatusOr<std::string> consumer_jwks = JwksJson(consumer);
  if (!consumer_jwks.ok()) return consumer_jwks.status();
  absl::StatusOr<std::string> enterprise_jwks = JwksJson(enterprise);
  if (!enterprise_jwks.ok()) return enterprise_jwks.status();
  docs.consumer_jwks = *consumer_jwks;
  docs.enterprise_jwks = *enterprise_jwks;
  return docs;
}

absl::Time NextKeyStateChange(
    const std::map<std::string, std::shared_ptr<const ScopeState>>& scopes,
    absl::Time now) {
  absl::Time next = absl::InfiniteFuture();
  auto consider = [&](const google::protobuf::Timestamp& ts) {
    absl::Time t = rotation::TimeFromProto(ts);
    if (t > now && t < next) next = t;
  };
  for (const auto& [name, scope] : scopes) {
    const rotation::KeyRecord& r = scope->record;
    consider(r.activate_at());
    consider(r.retire_at());
    consider(r.unpublish_at());
    consider(r.destroy_at());
    if (r.has_revocation()) consider(r.revocation().revoked_at());
  }
  return next;
}

}  // namespace signet::server
