#include "client/verifier_jwk.h"

#include <openssl/evp.h>

#include <cstddef>
#include <memory>
#include <optional>
#include <string>
#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "base/base64url.h"
#include "base/status_macros.h"
#include "client/verifier_json.h"
#include "crypto/digest.h"
#include "crypto/public_keys.h"
#include "nlohmann/json.hpp"

namespace signet::verifier_internal {
namespace {

using Json = nlohmann::json;

using Pkey = crypto::EvpPkeyPtr;

absl::Status Bad(absl::string_view why) {
  return absl::InvalidArgumentError(why);
}

// A required string member of a JWK.
absl::StatusOr<std::string> StringMember(const Json& jwk,
                                         absl::string_view name) {
  auto it = jwk.find(std::string(name));
  if (it == jwk.end()) return Bad(absl::StrCat("JWK has no \"", name, "\""));
  if (!it->is_string()) {
    return Bad(absl::StrCat("JWK \"", name, "\" is not a string"));
  }
  return it->get<std::string>();
}

// A required base64url member, decoded.
absl::StatusOr<std::string> BytesMember(const Json& jwk,
                                        absl::string_view name) {
  SIGNET_ASSIGN_OR_RETURN(std::string text, StringMember(jwk, name));
  std::optional<std::string> bytes = base::StrictBase64UrlDecode(text);
  if (!bytes.has_value()) {
    return Bad(
        absl::StrCat("JWK \"", name, "\" is not base64url without padding"));
  }
  return *std::move(bytes);
}

absl::StatusOr<Pkey> EcKey(const Json& jwk, JwsAlgorithm alg) {
  const bool p256 = alg == JwsAlgorithm::kEs256;
  const char* crv_name = p256 ? "P-256" : "P-384";
  const size_t field = p256 ? 32 : 48;
  SIGNET_ASSIGN_OR_RETURN(std::string crv, StringMember(jwk, "crv"));
  if (crv != crv_name) {
    return Bad(absl::StrCat("JWK crv \"", crv, "\" does not match alg ",
                            JwsAlgorithmName(alg), " (", crv_name,
                            " expected)"));
  }
  SIGNET_ASSIGN_OR_RETURN(std::string x, BytesMember(jwk, "x"));
  SIGNET_ASSIGN_OR_RETURN(std::string y, BytesMember(jwk, "y"));
  if (x.size() != field || y.size() != field) {
    return Bad(absl::StrCat("JWK x and y must be ", field, " bytes each for ",
                            crv_name, ", not ", x.size(), " and ", y.size()));
  }
  absl::StatusOr<Pkey> key = crypto::EcPublicKeyFromPoint(
      p256 ? crypto::EcCurve::kP256 : crypto::EcCurve::kP384,
      absl::StrCat("\x04", x, y));
  if (absl::IsInvalidArgument(key.status())) {
    return Bad(absl::StrCat("JWK is not a valid EC public key: ",
                            key.status().message()));
  }
  return key;
}

absl::StatusOr<Pkey> RsaKey(const Json& jwk) {
  SIGNET_ASSIGN_OR_RETURN(std::string n, BytesMember(jwk, "n"));
  SIGNET_ASSIGN_OR_RETURN(std::string e, BytesMember(jwk, "e"));
  absl::StatusOr<Pkey> key = crypto::RsaPublicKeyFromComponents(n, e);
  if (absl::IsInvalidArgument(key.status())) {
    return Bad(absl::StrCat("JWK is not a valid RSA public key: ",
                            key.status().message()));
  }
  return key;
}

}  // namespace

std::optional<JwsAlgorithm> JwsAlgorithmFromName(absl::string_view name) {
  if (name == "ES256") return JwsAlgorithm::kEs256;
  if (name == "ES384") return JwsAlgorithm::kEs384;
  if (name == "RS256") return JwsAlgorithm::kRs256;
  if (name == "PS256") return JwsAlgorithm::kPs256;
  return std::nullopt;
}

absl::string_view JwsAlgorithmName(JwsAlgorithm alg) {
  switch (alg) {
    case JwsAlgorithm::kEs256:
      return "ES256";
    case JwsAlgorithm::kEs384:
      return "ES384";
    case JwsAlgorithm::kRs256:
      return "RS256";
    case JwsAlgorithm::kPs256:
      return "PS256";
  }
  return "?";
}

absl::StatusOr<std::shared_ptr<const JwkKey>> JwkKey::FromJwk(const Json& jwk) {
  if (!jwk.is_object()) return Bad("JWK is not a JSON object");
  SIGNET_ASSIGN_OR_RETURN(std::string kid, StringMember(jwk, "kid"));
  if (kid.empty()) return Bad("JWK kid is empty");
  for (const char* secret : {"d", "p", "q", "dp", "dq", "qi", "oth", "k"}) {
    if (jwk.contains(secret)) {
      return Bad(absl::StrCat("JWK carries private or secret key material (\"",
                              secret, "\"): the set is broken"));
    }
  }
  if (auto use = jwk.find("use"); use != jwk.end()) {
    if (!use->is_string() || use->get<std::string>() != "sig") {
      return Bad("JWK \"use\" is not \"sig\"");
    }
  }
  if (auto ops = jwk.find("key_ops"); ops != jwk.end()) {
    bool verify = false;
    if (ops->is_array()) {
      for (const Json& op : *ops) verify |= op.is_string() && op == "verify";
    }
    if (!verify) return Bad("JWK \"key_ops\" does not allow \"verify\"");
  }
  absl::StatusOr<std::string> alg_name = StringMember(jwk, "alg");
  if (!alg_name.ok()) {
    return Bad(absl::StrCat(alg_name.status().message(),
                            ": the key must name its algorithm"));
  }
  std::optional<JwsAlgorithm> alg = JwsAlgorithmFromName(*alg_name);
  if (!alg.has_value()) {
    return Bad(absl::StrCat("JWK alg \"", *alg_name, "\" is not supported"));
  }
  SIGNET_ASSIGN_OR_RETURN(std::string kty, StringMember(jwk, "kty"));
  const bool ec = *alg == JwsAlgorithm::kEs256 || *alg == JwsAlgorithm::kEs384;
  if (kty != (ec ? "EC" : "RSA")) {
    return Bad(
        absl::StrCat("JWK kty \"", kty, "\" does not match alg ", *alg_name));
  }
  SIGNET_ASSIGN_OR_RETURN(Pkey key, ec ? EcKey(jwk, *alg) : RsaKey(jwk));
  return std::shared_ptr<const JwkKey>(
      new JwkKey(std::move(kid), *alg, std::move(key)));
}

absl::Status JwkKey::Verify(absl::string_view signing_input,
                            absl::string_view signature) const {
  std::string der;
  absl::string_view to_check = signature;
  if (alg_ == JwsAlgorithm::kEs256 || alg_ == JwsAlgorithm::kEs384) {
    const size_t expected = alg_ == JwsAlgorithm::kEs256 ? 64 : 96;
    if (signature.size() != expected) {
      return absl::InvalidArgumentError(absl::StrCat(
          JwsAlgorithmName(alg_), " signature has ", signature.size(),
          " bytes; the JWS form r||s has ", expected,
          " (a DER ECDSA-Sig-Value is not a JWS signature)"));
    }
    SIGNET_ASSIGN_OR_RETURN(der, crypto::EcdsaRawToDer(signature));
    to_check = der;
  } else {
    const int size = EVP_PKEY_get_size(key_.get());
    if (size <= 0 || signature.size() != static_cast<size_t>(size)) {
      return absl::InvalidArgumentError(
          absl::StrCat(JwsAlgorithmName(alg_), " signature has ",
                       signature.size(), " bytes; this key's are ", size));
    }
  }
  // The digest of the signing input, then the signature over it
  // (crypto/digest.h and crypto/public_keys.h, shared with the HSM layer's
  // checks).
  SIGNET_ASSIGN_OR_RETURN(const std::string digest,
                          alg_ == JwsAlgorithm::kEs384
                              ? crypto::Sha384(signing_input)
                              : crypto::Sha256(signing_input));
  crypto::SignatureScheme scheme = crypto::SignatureScheme::kEcdsaSha256;
  switch (alg_) {
    case JwsAlgorithm::kEs256:
      scheme = crypto::SignatureScheme::kEcdsaSha256;
      break;
    case JwsAlgorithm::kEs384:
      scheme = crypto::SignatureScheme::kEcdsaSha384;
      break;
    case JwsAlgorithm::kRs256:
      scheme = crypto::SignatureScheme::kRsaPkcs1Sha256;
      break;
    case JwsAlgorithm::kPs256:
      scheme = crypto::SignatureScheme::kRsaPssSha256;
      break;
  }
  absl::Status verified =
      crypto::VerifyDigestSignature(key_.get(), scheme, digest, to_check);
  if (absl::IsInvalidArgument(verified)) {
    return absl::UnauthenticatedError(
        absl::StrCat("the ", JwsAlgorithmName(alg_),
                     " signature does not verify with key ", kid_));
  }
  return verified;
}

absl::StatusOr<JwkSet> ParseJwkSet(absl::string_view body) {
  JsonProblem problem;
  std::optional<Json> doc = ParseStrictJsonObject(body, "JWK set", &problem);
  if (!doc.has_value()) return Bad(problem.message);
  auto keys = doc->find("keys");
  if (keys == doc->end() || !keys->is_array()) {
    return Bad("JWK set has no \"keys\" array");
  }
  JwkSet set;
  std::map<std::string, int> seen;
  for (const Json& jwk : *keys) {
    if (!jwk.is_object()) continue;
    auto kid = jwk.find("kid");
    if (kid == jwk.end() || !kid->is_string()) continue;
    ++seen[kid->get<std::string>()];
  }
  for (const Json& jwk : *keys) {
    if (!jwk.is_object()) continue;
    auto kid_member = jwk.find("kid");
    if (kid_member == jwk.end() || !kid_member->is_string()) continue;
    std::string kid = kid_member->get<std::string>();
    if (seen[kid] > 1) {
      set.unusable[kid] = "the kid appears more than once in the JWK set";
      continue;
    }
    absl::StatusOr<std::shared_ptr<const JwkKey>> key = JwkKey::FromJwk(jwk);
    if (!key.ok()) {
      set.unusable[kid] = std::string(key.status().message());
      continue;
    }
    set.keys[kid] = *std::move(key);
  }
  return set;
}

}  // namespace signet::verifier_internal
