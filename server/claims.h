// The strict claims validator of SignJwt (docs/architecture.md, "The path of
// a SignJwt"; the rules as callers see them: README, "Signing").
//
// A caller hands signet the JWT claims as JSON text, and signet signs those
// exact bytes. Every relying party must then read the same claims, so this
// validator refuses any input that two conforming parsers could read
// differently (RFC 8259 section 4 leaves duplicate names to the parser; RFC
// 7519 section 4 requires them to be refused or the last one used), and
// anything that breaks the scope's issuer and lifetime policy.
//
// The JSON is parsed with nlohmann-json's SAX interface, in strict mode:
// its DOM parse silently keeps the last of duplicate names, so duplicates
// are detected here, at every depth, after unescaping.
//
// Decisions beyond RFC 8259, each refused with INVALID_ARGUMENT:
//  - a leading UTF-8 byte order mark (nlohmann would skip it silently);
//  - a raw NUL byte anywhere (nlohmann reads it as the end of the input, so
//    "{}\0junk" would otherwise pass with trailing data);
//  - U+0000 inside any string or member name, even escaped as "\u0000":
//    relying parties that use C strings would truncate there;
//  - escaped lone UTF-16 surrogates such as "\ud800" (nlohmann's lexer
//    refuses them; the message here says so in plain words);
//  - numbers that overflow a double, such as 1e400 (some parsers read
//    infinity, others fail);
//  - "-0" and every negative number for iat, exp and nbf: nlohmann reports
//    any number written with a leading '-' through number_integer, and
//    positive integers through number_unsigned, so "-0" is told apart from
//    "0" without a second tokenizer.
//
// Thread-safe: CheckClaims is a pure function of its arguments.
#ifndef SIGNET_SERVER_CLAIMS_H_
#define SIGNET_SERVER_CLAIMS_H_

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"

namespace signet::server {

// Limits of the claims text, shared with the integration tests.
inline constexpr size_t kMaxClaimsBytes = 64 * 1024;
inline constexpr int kMaxClaimsDepth = 16;  // the top-level object is depth 1
inline constexpr int64_t kMaxNumericDate = int64_t{1} << 53;  // exclusive

// The scope's policy and the server's clock reading for one request.
struct ClaimsPolicy {
  std::string issuer;  // the scope's issuer: iss must equal it byte for byte
  absl::Duration max_lifetime;                  // exp - iat at most this
  absl::Duration iat_skew = absl::Seconds(60);  // |iat - now| at most this
  absl::Time now;
};

// The rule an INVALID_ARGUMENT of CheckClaims broke: a fixed name such as
// "exp_not_after_iat", "duplicate_member" or "iss_not_the_scopes" that
// quotes nothing of the request, for audit lines (which never carry
// claims; the message may quote them). Empty for any other status.
std::string ClaimsRuleOf(const absl::Status& status);

// The NumericDate claims (RFC 7519 section 2), in seconds since the epoch.
struct CheckedClaims {
  int64_t iat;
  int64_t exp;
  std::optional<int64_t> nbf;
};

// Checks `claims_json`, in this order, and answers INVALID_ARGUMENT with a
// message that names the problem (and the member) at the first failure:
//  1. at most kMaxClaimsBytes bytes;
//  2. no leading byte order mark, no raw NUL byte;
//  3. valid UTF-8 (no overlong forms, no encoded surrogates, nothing above
//     U+10FFFF, no truncated sequence, no stray continuation byte);
//  4. exactly one JSON value, an object, with only whitespace after it;
//     nesting depth at most kMaxClaimsDepth; no duplicate member names at
//     any depth, compared after unescaping; no U+0000 in strings or names;
//     no escaped lone surrogate; no number that overflows a double;
//  5. "iss" present, a string, equal byte for byte to policy.issuer;
//  6. "iat" and "exp" present, and "nbf" if present: JSON integers without
//     sign, fraction or exponent, in [0, 2^53);
//  7. |iat - now| <= iat_skew; exp > iat; exp - iat <= max_lifetime;
//     exp > now (already expired); nbf < exp.
// Other members are free. FAILED_PRECONDITION if policy.issuer is empty (a
// server misconfiguration, not the caller's fault). No exception escapes.
absl::StatusOr<CheckedClaims> CheckClaims(absl::string_view claims_json,
                                          const ClaimsPolicy& policy);

}  // namespace signet::server

#endif  // SIGNET_SERVER_CLAIMS_H_
