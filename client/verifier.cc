#include "client/verifier.h"

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/ascii.h"
#include "absl/strings/cord.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "base/base64url.h"
#include "base/quote.h"
#include "base/status_macros.h"
#include "client/jwks_fetcher.h"
#include "client/verifier_json.h"
#include "client/verifier_jwk.h"
#include "nlohmann/json.hpp"

namespace signet {

using base::StrictBase64UrlDecode;
using verifier_internal::JsonProblem;
using verifier_internal::JwkKey;
using verifier_internal::JwkSet;
using verifier_internal::JwsAlgorithmFromName;
using verifier_internal::JwsAlgorithmName;
using verifier_internal::ParseStrictJsonObject;
using Json = nlohmann::json;

struct Verifier::KeySet {
  JwkSet jwks;
  absl::Time fetched_at;
};

struct Verifier::IssuerState {
  std::string issuer;
  std::string jwks_url;
  absl::Mutex mu;
  std::shared_ptr<const KeySet> keys ABSL_GUARDED_BY(mu);
  absl::Time expires_at ABSL_GUARDED_BY(mu) = absl::InfinitePast();
  absl::Time last_fetch ABSL_GUARDED_BY(mu) = absl::InfinitePast();
};

namespace {

constexpr char kPayloadUrl[] = "type.signet.dev/signet.VerifyError";
constexpr absl::Duration kMaxLeeway = absl::Minutes(10);
// RFC 7519 NumericDate values beyond 2^53 cannot be read exactly by every
// parser; nobody needs them.
constexpr double kMaxNumericDate = 9007199254740992.0;

constexpr VerifyError kAllErrors[] = {
    VerifyError::kMalformed,        VerifyError::kBadBase64,
    VerifyError::kBadJson,          VerifyError::kDuplicateMember,
    VerifyError::kBadHeader,        VerifyError::kAlgNone,
    VerifyError::kAlgNotAllowed,    VerifyError::kForbiddenHeader,
    VerifyError::kMissingIssuer,    VerifyError::kUntrustedIssuer,
    VerifyError::kUnknownKid,       VerifyError::kUnusableKey,
    VerifyError::kAlgMismatch,      VerifyError::kBadSignature,
    VerifyError::kBadTimeClaim,     VerifyError::kExpired,
    VerifyError::kNotYetValid,      VerifyError::kIssuedInFuture,
    VerifyError::kAudienceMismatch, VerifyError::kJwksUnavailable,
    VerifyError::kBadJwks,
};

absl::StatusCode CodeOf(VerifyError error) {
  switch (error) {
    case VerifyError::kMalformed:
    case VerifyError::kBadBase64:
    case VerifyError::kBadJson:
    case VerifyError::kDuplicateMember:
    case VerifyError::kBadHeader:
      return absl::StatusCode::kInvalidArgument;
    case VerifyError::kJwksUnavailable:
    case VerifyError::kBadJwks:
      return absl::StatusCode::kUnavailable;
    case VerifyError::kNone:
      return absl::StatusCode::kOk;
    default:
      return absl::StatusCode::kUnauthenticated;
  }
}

absl::Status Refuse(VerifyError error, absl::string_view detail) {
  absl::Status status(CodeOf(error),
                      absl::StrCat(VerifyErrorName(error), ": ", detail));
  status.SetPayload(kPayloadUrl, absl::Cord(VerifyErrorName(error)));
  return status;
}

// Token text quoted in a message: escaped, cut short.
std::string Quote(absl::string_view text) { return base::Quote(text, 100); }

absl::Status JsonRefusal(const JsonProblem& problem) {
  return Refuse(problem.duplicate_member ? VerifyError::kDuplicateMember
                                         : VerifyError::kBadJson,
                problem.message);
}

// A NumericDate claim (RFC 7519 section 2): a JSON number, not negative,
// below 2^53. nullopt when absent; kBadTimeClaim when not such a number.
absl::StatusOr<std::optional<absl::Time>> TimeClaim(const Json& claims,
                                                    const char* name) {
  auto it = claims.find(name);
  if (it == claims.end()) return std::optional<absl::Time>();
  double seconds = -1;
  if (it->is_number_unsigned()) {
    seconds = static_cast<double>(it->get<uint64_t>());
  } else if (it->is_number_float()) {
    seconds = it->get<double>();
  } else if (it->is_number_integer()) {
    seconds = -1;  // a negative integer
  } else {
    return Refuse(VerifyError::kBadTimeClaim,
                  absl::StrCat("\"", name, "\" is not a number"));
  }
  if (!std::isfinite(seconds) || seconds < 0 || seconds >= kMaxNumericDate) {
    return Refuse(VerifyError::kBadTimeClaim,
                  absl::StrCat("\"", name,
                               "\" is not a NumericDate in [0, "
                               "2^53)"));
  }
  return std::optional<absl::Time>(absl::UnixEpoch() + absl::Seconds(seconds));
}

std::string TimeText(absl::Time t) {
  return absl::FormatTime("%Y-%m-%dT%H:%M:%SZ", t, absl::UTCTimeZone());
}

}  // namespace

absl::string_view VerifyErrorName(VerifyError error) {
  switch (error) {
    case VerifyError::kNone:
      return "none";
    case VerifyError::kMalformed:
      return "malformed";
    case VerifyError::kBadBase64:
      return "bad_base64";
    case VerifyError::kBadJson:
      return "bad_json";
    case VerifyError::kDuplicateMember:
      return "duplicate_member";
    case VerifyError::kBadHeader:
      return "bad_header";
    case VerifyError::kAlgNone:
      return "alg_none";
    case VerifyError::kAlgNotAllowed:
      return "alg_not_allowed";
    case VerifyError::kForbiddenHeader:
      return "forbidden_header";
    case VerifyError::kMissingIssuer:
      return "missing_issuer";
    case VerifyError::kUntrustedIssuer:
      return "untrusted_issuer";
    case VerifyError::kUnknownKid:
      return "unknown_kid";
    case VerifyError::kUnusableKey:
      return "unusable_key";
    case VerifyError::kAlgMismatch:
      return "alg_mismatch";
    case VerifyError::kBadSignature:
      return "bad_signature";
    case VerifyError::kBadTimeClaim:
      return "bad_time_claim";
    case VerifyError::kExpired:
      return "expired";
    case VerifyError::kNotYetValid:
      return "not_yet_valid";
    case VerifyError::kIssuedInFuture:
      return "issued_in_future";
    case VerifyError::kAudienceMismatch:
      return "audience_mismatch";
    case VerifyError::kJwksUnavailable:
      return "jwks_unavailable";
    case VerifyError::kBadJwks:
      return "bad_jwks";
  }
  return "unknown";
}

VerifyError GetVerifyError(const absl::Status& status) {
  if (status.ok()) return VerifyError::kNone;
  auto payload = status.GetPayload(kPayloadUrl);
  if (!payload.has_value()) return VerifyError::kNone;
  std::string name(*payload);
  for (VerifyError e : kAllErrors) {
    if (VerifyErrorName(e) == name) return e;
  }
  return VerifyError::kNone;
}

absl::StatusOr<std::unique_ptr<Verifier>> Verifier::Create(
    VerifierOptions options) {
  SIGNET_ASSIGN_OR_RETURN(std::unique_ptr<CurlJwksSource> source,
                          CurlJwksSource::Create(options.fetch));
  return CreateWithSource(std::move(options),
                          std::shared_ptr<JwksSource>(std::move(source)));
}

absl::StatusOr<std::unique_ptr<Verifier>> Verifier::CreateWithSource(
    VerifierOptions options, std::shared_ptr<JwksSource> source) {
  auto bad = [](absl::string_view why) {
    return absl::InvalidArgumentError(absl::StrCat("verifier: ", why));
  };
  if (source == nullptr) return bad("no JWKS source");
  if (options.issuers.empty()) return bad("no trusted issuer configured");
  std::set<std::string> seen;
  for (const TrustedIssuer& t : options.issuers) {
    if (t.issuer.empty()) return bad("an issuer is empty");
    if (!seen.insert(t.issuer).second) {
      return bad(
          absl::StrCat("issuer ", Quote(t.issuer), " is configured twice"));
    }
    absl::Status url = CheckJwksUrl(t.jwks_url);
    if (!url.ok()) {
      return bad(absl::StrCat("issuer ", Quote(t.issuer), ": ", url.message()));
    }
  }
  if (options.algorithms.empty()) return bad("no algorithm allowed");
  for (const std::string& alg : options.algorithms) {
    if (!JwsAlgorithmFromName(alg).has_value()) {
      return bad(absl::StrCat("algorithm ", Quote(alg),
                              " is not supported (ES256, ES384, RS256, "
                              "PS256)"));
    }
  }
  for (const std::string& aud : options.audiences) {
    if (aud.empty()) return bad("an audience is empty");
  }
  if (options.leeway < absl::ZeroDuration() || options.leeway > kMaxLeeway) {
    return bad("leeway must be between 0 and 10 minutes");
  }
  if (options.min_refetch_interval <= absl::ZeroDuration()) {
    return bad("min_refetch_interval must be positive");
  }
  if (options.max_cache_lifetime <= absl::ZeroDuration()) {
    return bad("max_cache_lifetime must be positive");
  }
  if (options.max_token_bytes == 0) return bad("max_token_bytes is zero");
  return std::unique_ptr<Verifier>(
      new Verifier(std::move(options), std::move(source)));
}

Verifier::Verifier(VerifierOptions options, std::shared_ptr<JwksSource> source)
    : options_(std::move(options)), source_(std::move(source)) {
  for (const TrustedIssuer& t : options_.issuers) {
    auto state = std::make_unique<IssuerState>();
    state->issuer = t.issuer;
    state->jwks_url = t.jwks_url;
    issuers_[t.issuer] = std::move(state);
  }
}

Verifier::~Verifier() = default;

absl::Time Verifier::Now() const { return options_.clock->Now(); }

absl::StatusOr<std::shared_ptr<const Verifier::KeySet>> Verifier::GetKeySet(
    IssuerState& state, absl::string_view kid) {
  absl::MutexLock lock(&state.mu);
  const absl::Time now = Now();
  // A clock that went backwards makes every cache time meaningless: refetch.
  const bool clock_ok = now >= state.last_fetch;
  if (state.keys != nullptr && clock_ok && now < state.expires_at) {
    const JwkSet& jwks = state.keys->jwks;
    const bool known = jwks.keys.count(std::string(kid)) > 0 ||
                       jwks.unusable.count(std::string(kid)) > 0;
    if (known || now - state.last_fetch < options_.min_refetch_interval) {
      return state.keys;
    }
    // A kid the fresh set does not know: maybe a new key. Refetch once.
  }
  state.last_fetch = now;
  absl::StatusOr<JwksDocument> doc = source_->Fetch(state.jwks_url);
  if (!doc.ok()) {
    return Refuse(VerifyError::kJwksUnavailable,
                  absl::StrCat("the key set of issuer ", Quote(state.issuer),
                               " cannot be fetched: ", doc.status().message()));
  }
  absl::StatusOr<JwkSet> jwks = verifier_internal::ParseJwkSet(doc->body);
  if (!jwks.ok()) {
    return Refuse(VerifyError::kBadJwks,
                  absl::StrCat("the key set of issuer ", Quote(state.issuer),
                               " from ", Quote(state.jwks_url),
                               " is not a JWK set: ", jwks.status().message()));
  }
  auto keys = std::make_shared<KeySet>();
  keys->jwks = *std::move(jwks);
  keys->fetched_at = now;
  const absl::Duration lifetime = std::min(
      ParseCacheControl(doc->cache_control), options_.max_cache_lifetime);
  state.keys = std::move(keys);
  state.expires_at = now + lifetime;
  return state.keys;
}

absl::StatusOr<VerifiedToken> Verifier::Verify(absl::string_view compact_jws) {
  absl::string_view token = absl::StripAsciiWhitespace(compact_jws);
  if (token.size() > options_.max_token_bytes) {
    return Refuse(
        VerifyError::kMalformed,
        absl::StrCat("the token has ", token.size(), " bytes; at most ",
                     options_.max_token_bytes, " are accepted"));
  }
  std::vector<absl::string_view> parts = absl::StrSplit(token, '.');
  if (parts.size() != 3) {
    return Refuse(VerifyError::kMalformed,
                  absl::StrCat("the token has ", parts.size(),
                               " dot-separated parts; a compact JWS has 3"));
  }
  const char* kPartNames[] = {"header", "claims", "signature"};
  std::string decoded[3];
  for (int i = 0; i < 3; ++i) {
    std::optional<std::string> bytes = StrictBase64UrlDecode(parts[i]);
    if (!bytes.has_value()) {
      return Refuse(VerifyError::kBadBase64,
                    absl::StrCat("the ", kPartNames[i],
                                 " part is not base64url without padding"));
    }
    decoded[i] = *std::move(bytes);
  }
  const std::string& header_json = decoded[0];
  const std::string& claims_json = decoded[1];
  const std::string& signature = decoded[2];

  // The header.
  JsonProblem problem;
  std::optional<Json> header =
      ParseStrictJsonObject(header_json, "JOSE header", &problem);
  if (!header.has_value()) return JsonRefusal(problem);
  auto alg_member = header->find("alg");
  if (alg_member == header->end() || !alg_member->is_string()) {
    return Refuse(VerifyError::kBadHeader, "the header has no \"alg\" string");
  }
  const std::string alg = alg_member->get<std::string>();
  if (absl::EqualsIgnoreCase(alg, "none")) {
    return Refuse(VerifyError::kAlgNone,
                  "alg \"none\": an unsigned token is never accepted");
  }
  bool allowed = false;
  for (const std::string& a : options_.algorithms) allowed |= a == alg;
  if (!allowed) {
    return Refuse(VerifyError::kAlgNotAllowed,
                  absl::StrCat("alg ", Quote(alg), " is not allowed"));
  }
  for (const char* member : {"jku", "x5u", "jwk", "x5c", "crit"}) {
    if (header->contains(member)) {
      return Refuse(
          VerifyError::kForbiddenHeader,
          absl::StrCat("the header carries \"", member,
                       "\": keys come only from the issuer's configured "
                       "JWK set, and no extension is understood"));
    }
  }
  auto kid_member = header->find("kid");
  if (kid_member == header->end() || !kid_member->is_string() ||
      kid_member->get<std::string>().empty()) {
    return Refuse(VerifyError::kBadHeader,
                  "the header has no \"kid\" (a non-empty string)");
  }
  const std::string kid = kid_member->get<std::string>();

  // The issuer, and its keys.
  std::optional<Json> claims =
      ParseStrictJsonObject(claims_json, "claims", &problem);
  if (!claims.has_value()) return JsonRefusal(problem);
  auto iss_member = claims->find("iss");
  if (iss_member == claims->end() || !iss_member->is_string()) {
    return Refuse(VerifyError::kMissingIssuer,
                  "the claims have no \"iss\" string");
  }
  const std::string iss = iss_member->get<std::string>();
  auto state = issuers_.find(iss);
  if (state == issuers_.end()) {
    return Refuse(VerifyError::kUntrustedIssuer,
                  absl::StrCat("issuer ", Quote(iss),
                               " is not one this verifier trusts"));
  }
  SIGNET_ASSIGN_OR_RETURN(std::shared_ptr<const KeySet> keys,
                          GetKeySet(*state->second, kid));
  const JwkSet& jwks = keys->jwks;
  if (auto it = jwks.unusable.find(kid); it != jwks.unusable.end()) {
    return Refuse(VerifyError::kUnusableKey,
                  absl::StrCat("key ", Quote(kid), " of issuer ", Quote(iss),
                               " cannot be used: ", it->second));
  }
  auto key_it = jwks.keys.find(kid);
  if (key_it == jwks.keys.end()) {
    return Refuse(
        VerifyError::kUnknownKid,
        absl::StrCat("kid ", Quote(kid), " is not in the key set of issuer ",
                     Quote(iss), " (fetched at ", TimeText(keys->fetched_at),
                     ")"));
  }
  const JwkKey& key = *key_it->second;
  if (JwsAlgorithmName(key.alg()) != alg) {
    return Refuse(
        VerifyError::kAlgMismatch,
        absl::StrCat("the header says alg ", Quote(alg), " but key ",
                     Quote(kid), " is ", JwsAlgorithmName(key.alg())));
  }

  // The signature over the exact bytes of header.claims.
  absl::string_view signing_input =
      token.substr(0, parts[0].size() + 1 + parts[1].size());
  absl::Status signature_ok = key.Verify(signing_input, signature);
  if (!signature_ok.ok()) {
    return Refuse(VerifyError::kBadSignature, signature_ok.message());
  }

  // Time.
  const absl::Time now = Now();
  SIGNET_ASSIGN_OR_RETURN(std::optional<absl::Time> exp,
                          TimeClaim(*claims, "exp"));
  SIGNET_ASSIGN_OR_RETURN(std::optional<absl::Time> nbf,
                          TimeClaim(*claims, "nbf"));
  SIGNET_ASSIGN_OR_RETURN(std::optional<absl::Time> iat,
                          TimeClaim(*claims, "iat"));
  if (!exp.has_value()) {
    return Refuse(VerifyError::kBadTimeClaim,
                  "the claims have no \"exp\": a token must expire");
  }
  if (now >= *exp + options_.leeway) {
    return Refuse(VerifyError::kExpired,
                  absl::StrCat("the token expired at ", TimeText(*exp),
                               " (now ", TimeText(now), ", leeway ",
                               absl::FormatDuration(options_.leeway), ")"));
  }
  if (nbf.has_value() && *nbf > now + options_.leeway) {
    return Refuse(VerifyError::kNotYetValid,
                  absl::StrCat("the token is not valid before ", TimeText(*nbf),
                               " (now ", TimeText(now), ")"));
  }
  if (iat.has_value() && *iat > now + options_.leeway) {
    return Refuse(
        VerifyError::kIssuedInFuture,
        absl::StrCat("the token says it was issued at ", TimeText(*iat),
                     ", in the future (now ", TimeText(now), ")"));
  }

  // Audience.
  if (!options_.audiences.empty()) {
    std::vector<std::string> token_audiences;
    auto aud = claims->find("aud");
    if (aud == claims->end()) {
      return Refuse(VerifyError::kAudienceMismatch,
                    "the claims have no \"aud\", and an audience is required");
    }
    if (aud->is_string()) {
      token_audiences.push_back(aud->get<std::string>());
    } else if (aud->is_array()) {
      for (const Json& a : *aud) {
        if (!a.is_string()) {
          return Refuse(VerifyError::kAudienceMismatch,
                        "\"aud\" holds something other than strings");
        }
        token_audiences.push_back(a.get<std::string>());
      }
    } else {
      return Refuse(VerifyError::kAudienceMismatch,
                    "\"aud\" is neither a string nor an array of strings");
    }
    bool match = false;
    for (const std::string& mine : options_.audiences) {
      for (const std::string& theirs : token_audiences) match |= mine == theirs;
    }
    if (!match) {
      return Refuse(VerifyError::kAudienceMismatch,
                    "\"aud\" does not name this relying party");
    }
  }

  VerifiedToken verified;
  verified.issuer = iss;
  verified.kid = kid;
  verified.alg = alg;
  verified.header_json = header_json;
  verified.claims_json = claims_json;
  return verified;
}

}  // namespace signet
