// signet::Verifier: the reference verifier of JWTs (compact JWS, RFC 7515 /
// RFC 7519) for relying parties, which binds each issuer to its own JWKS
// endpoint.
//
// Storm-0558 worked because a validator took a key from a set shared by
// every tenant of a class and never asked whose key it was. Here the
// configuration is a list of (issuer, JWKS URL) pairs, and a token is
// accepted only with a key from the set of the issuer its `iss` claims:
// a key of one scope never vouches for another scope's issuer, even within
// one audience class. Point each issuer at its scope's own set
// (signetd's /scopes/{name}/.well-known/jwks.json), never at a class set.
//
// Verify checks, in this order, and refuses at the first failure with a
// distinct VerifyError (see below):
//   1. the token: at most max_token_bytes, exactly three dot-separated
//      parts, each strict base64url without padding (verifier_json.h);
//   2. the JOSE header: a strict JSON object (no duplicate members at any
//      depth); "alg" a string, not "none", in `algorithms`; no "jku",
//      "x5u", "jwk", "x5c" or "crit" member (a token may not say where its
//      key comes from, nor add rules we might not know); "kid" a
//      non-empty string;
//   3. the claims: a strict JSON object; "iss" a string equal byte for byte
//      to a configured issuer;
//   4. the key: the issuer's JWK set (fetched and cached, see below) holds
//      the kid; the JWK is usable (verifier_jwk.h) and its own "alg"
//      equals the header's (the algorithm comes from the key; the header
//      only has to agree with it);
//   5. the signature, with the key's algorithm;
//   6. the time claims, with `leeway` either way: "exp" required, a
//      number, now < exp + leeway; "nbf", if present, a number, nbf <=
//      now + leeway; "iat", if present, a number, iat <= now + leeway;
//   7. the audience, when `audiences` is not empty: "aud" (a string or an
//      array of strings) holds at least one of them.
//
// Key sets. Each issuer's set is fetched through a JwksSource (libcurl by
// default, client/jwks_fetcher.h: https, or http on loopback only; size cap
// and timeout) on first use, and kept as long as the response's
// Cache-Control max-age says, at most `max_cache_lifetime`; no-store,
// no-cache, max-age=0 or no max-age: not kept, fetched for every token.
// An expired set is fetched again; if that fails the token is refused
// (UNAVAILABLE), never checked against a stale set. A kid missing from a
// fresh cached set triggers one refetch, at most once per
// `min_refetch_interval` per issuer, so a flood of tokens with made-up kids
// cannot turn the verifier into a load generator against the issuer (if
// that refetch fails, the token is refused with kJwksUnavailable and the
// cached set stays in use for known kids).
//
// Thread-safety: a Verifier is thread-safe. Each issuer's cache has its own
// lock, held across that issuer's fetch (so concurrent tokens of one issuer
// wait for one fetch instead of each making their own); signatures are
// checked outside every lock.
#ifndef SIGNET_CLIENT_VERIFIER_H_
#define SIGNET_CLIENT_VERIFIER_H_

#include <cstddef>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "base/clock.h"
#include "client/jwks_fetcher.h"

namespace signet {

// Why a token was refused: one value per check, so callers and tests can
// tell exactly which check refused. The status message starts with
// VerifyErrorName(e) + ": ", and GetVerifyError(status) reads the value
// back from the status's payload.
//
//   value                  status code        check
enum class VerifyError {
  kNone = 0,          // OK                  (not a refusal)
  kMalformed,         // INVALID_ARGUMENT    too long, not 3 parts
  kBadBase64,         // INVALID_ARGUMENT    a part is not strict base64url
  kBadJson,           // INVALID_ARGUMENT    header/claims not a JSON object
  kDuplicateMember,   // INVALID_ARGUMENT    a JSON member name repeated
  kBadHeader,         // INVALID_ARGUMENT    alg/kid missing or not strings
  kAlgNone,           // UNAUTHENTICATED     alg "none" (unsigned token)
  kAlgNotAllowed,     // UNAUTHENTICATED     alg not in `algorithms`
  kForbiddenHeader,   // UNAUTHENTICATED     jku, x5u, jwk, x5c or crit
  kMissingIssuer,     // UNAUTHENTICATED     no "iss", or not a string
  kUntrustedIssuer,   // UNAUTHENTICATED     iss is not a configured issuer
  kUnknownKid,        // UNAUTHENTICATED     kid not in the issuer's set
  kUnusableKey,       // UNAUTHENTICATED     the issuer's JWK is broken
  kAlgMismatch,       // UNAUTHENTICATED     header alg != the key's alg
  kBadSignature,      // UNAUTHENTICATED     wrong length or does not verify
  kBadTimeClaim,      // UNAUTHENTICATED     no exp; exp/nbf/iat not numbers
  kExpired,           // UNAUTHENTICATED     now >= exp + leeway
  kNotYetValid,       // UNAUTHENTICATED     nbf > now + leeway
  kIssuedInFuture,    // UNAUTHENTICATED     iat > now + leeway
  kAudienceMismatch,  // UNAUTHENTICATED     aud absent or not ours
  kJwksUnavailable,   // UNAVAILABLE         the set cannot be fetched
  kBadJwks,           // UNAVAILABLE         the fetched set is not a JWK set
};

// "malformed", "bad_base64", ..., "jwks_unavailable" (stable: the prefix of
// every refusal message).
absl::string_view VerifyErrorName(VerifyError error);

// The reason carried by a status that Verify returned; kNone for OK and for
// statuses that did not come from Verify.
VerifyError GetVerifyError(const absl::Status& status);

// One trusted issuer and where its keys are.
struct TrustedIssuer {
  std::string issuer;    // compared byte for byte with the token's "iss"
  std::string jwks_url;  // that issuer's own JWK set
};

struct VerifierOptions {
  // At least one; no issuer twice. Every URL must pass CheckJwksUrl.
  std::vector<TrustedIssuer> issuers;
  // The algorithms accepted (a subset of ES256, ES384, RS256, PS256).
  std::vector<std::string> algorithms = {"ES256", "ES384", "RS256", "PS256"};
  // Empty: "aud" is not checked. Otherwise the token's "aud" must hold one.
  std::vector<std::string> audiences;
  // Allowed clock difference for exp, nbf and iat; at most 10 minutes.
  absl::Duration leeway = absl::Seconds(60);
  // A kid not in a fresh cached set refetches that issuer's set at most
  // this often.
  absl::Duration min_refetch_interval = absl::Seconds(30);
  // A Cache-Control max-age above this is cut to this.
  absl::Duration max_cache_lifetime = absl::Hours(24);
  // Longest compact JWS accepted.
  size_t max_token_bytes = 64 * 1024;
  // The fetcher Create() builds (ignored by CreateWithSource).
  CurlJwksSourceOptions fetch;
  // The time now (base/clock.h): the system clock, or a simulated one in
  // tests. Must outlive the verifier.
  const base::Clock* clock = &base::SystemClock();
};

// A token that passed every check.
struct VerifiedToken {
  std::string issuer;
  std::string kid;
  std::string alg;
  std::string header_json;  // the decoded protected header, as signed
  std::string claims_json;  // the decoded claims, byte for byte as signed
};

class Verifier {
 public:
  // A verifier that fetches with libcurl (CurlJwksSource::Create with
  // options.fetch). INVALID_ARGUMENT for bad options (no issuer, an empty
  // or repeated issuer, a URL that CheckJwksUrl refuses, an unknown or
  // empty algorithm list, "none" in it, a negative leeway or one above 10
  // minutes, a non-positive interval or cache cap); the fetcher's errors
  // otherwise. Create does not fetch anything.
  static absl::StatusOr<std::unique_ptr<Verifier>> Create(
      VerifierOptions options);
  // The same with another source (tests serve local key sets with one).
  static absl::StatusOr<std::unique_ptr<Verifier>> CreateWithSource(
      VerifierOptions options, std::shared_ptr<JwksSource> source);

  ~Verifier();
  Verifier(const Verifier&) = delete;
  Verifier& operator=(const Verifier&) = delete;

  // Verifies a compact JWS (surrounding ASCII whitespace, such as a final
  // newline, is ignored). Every refusal carries a VerifyError (above).
  absl::StatusOr<VerifiedToken> Verify(absl::string_view compact_jws);

  const VerifierOptions& options() const { return options_; }

 private:
  struct IssuerState;
  struct KeySet;

  Verifier(VerifierOptions options, std::shared_ptr<JwksSource> source);

  absl::Time Now() const;
  // The issuer's set, fresh per the cache rules above; a fresh set that
  // does not know `kid` is fetched again if the rate limit permits.
  absl::StatusOr<std::shared_ptr<const KeySet>> GetKeySet(
      IssuerState& state, absl::string_view kid);

  const VerifierOptions options_;
  const std::shared_ptr<JwksSource> source_;
  // Fixed at construction; each state has its own lock.
  std::map<std::string, std::unique_ptr<IssuerState>> issuers_;
};

}  // namespace signet

#endif  // SIGNET_CLIENT_VERIFIER_H_
