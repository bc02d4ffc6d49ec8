#include "server/jwt.h"

#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "base/base64url.h"
#include "base/status_macros.h"
#include "crypto/digest.h"
#include "jose/jwk.h"

namespace signet::server {

std::string ProtectedHeaderB64(absl::string_view alg, absl::string_view kid) {
  // Built by the JSON library, so any value is escaped right (alg and kid
  // come from code and thumbprints today). Once per key, not per token.
  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  header["alg"] = std::string(alg);
  header["kid"] = std::string(kid);
  header["typ"] = "JWT";
  return base::Base64UrlEncode(
      header.dump(-1, ' ', /*ensure_ascii=*/true,
                  nlohmann::ordered_json::error_handler_t::replace));
}

std::string JwsSigningInput(absl::string_view header_b64,
                            absl::string_view claims_json) {
  return absl::StrCat(header_b64, ".", base::Base64UrlEncode(claims_json));
}

std::string CompactJws(absl::string_view signing_input,
                       absl::string_view signature) {
  return absl::StrCat(signing_input, ".", base::Base64UrlEncode(signature));
}

absl::StatusOr<std::string> JwksJson(const std::vector<JwkEntry>& keys) {
  nlohmann::json set = nlohmann::json::object();
  set["keys"] = nlohmann::json::array();
  for (const JwkEntry& entry : keys) {
    SIGNET_ASSIGN_OR_RETURN(jose::JwkMembers members,
                            jose::JwkOf(entry.public_key->get()));
    nlohmann::json jwk = nlohmann::json::object();
    jwk["kty"] = members.kty;
    if (members.kty == "EC") {
      jwk["crv"] = members.crv;
      jwk["x"] = members.x;
      jwk["y"] = members.y;
    } else {
      jwk["n"] = members.n;
      jwk["e"] = members.e;
    }
    jwk["kid"] = entry.kid;
    jwk["alg"] = entry.alg;
    jwk["use"] = "sig";
    set["keys"].push_back(std::move(jwk));
  }
  return set.dump();
}

std::string ContentVersion(absl::string_view body) {
  absl::StatusOr<std::string> digest = crypto::Sha256(body);
  return digest.ok() ? base::Base64UrlEncode(*digest) : std::string();
}

}  // namespace signet::server
