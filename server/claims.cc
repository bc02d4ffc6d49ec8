#include "server/claims.h"

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <functional>
#include <optional>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/cord.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "base/quote.h"
#include "base/status_macros.h"
#include "base/utf8.h"
#include "jose/strict_json.h"

namespace signet::server {

using base::Quote;
namespace {

constexpr absl::string_view kRulePayload = "type.signet/claims-rule";

// INVALID_ARGUMENT with `message` for the caller, and `rule`, a fixed name
// that quotes nothing of the request, for the audit log (ClaimsRuleOf).
absl::Status Invalid(absl::string_view rule, absl::string_view message) {
  absl::Status status = absl::InvalidArgumentError(message);
  status.SetPayload(kRulePayload, absl::Cord(rule));
  return status;
}

constexpr absl::string_view kOverflowsDouble =
    " that overflows a double; relying parties would read it differently "
    "(infinity or an error)";

bool IsJsonWhitespace(char c) {
  return c == ' ' || c == '\t' || c == '\n' || c == '\r';
}

// What the parser saw as the value of one registered claim: absent, or a
// value (jose/strict_json.h).
struct Observed {
  bool present = false;
  jose::JsonValue value;
};

absl::StatusOr<int64_t> NumericDate(absl::string_view name,
                                    const Observed& observed, bool required);

// The claims' words for a document jose::CheckStrictJsonObject refused.
absl::Status RefusalMessage(const jose::JsonRefusal& r) {
  using Reason = jose::JsonRefusal::Reason;
  // " inside member \"x\"" once inside the top-level object, else "".
  const std::string where =
      r.depth > 0 ? absl::StrCat(" inside member ", Quote(r.top_member)) : "";
  const size_t offset = r.offset.value_or(0);
  switch (r.reason) {
    case Reason::kNotAnObject:
      return Invalid("not_an_object",
                     absl::StrCat("claims must be a JSON object, got ",
                                  jose::KindName(r.got)));
    case Reason::kNulInString:
      return Invalid(
          "nul_in_string",
          absl::StrCat("claims contain U+0000 (\\u0000) in a string", where,
                       "; it is refused because relying parties that use C "
                       "strings would "
                       "truncate the string there"));
    case Reason::kNulInName:
      return Invalid(
          "nul_in_name",
          absl::StrCat("claims contain U+0000 (\\u0000) in the member name ",
                       Quote(r.name), r.depth > 1 ? where : std::string(),
                       "; it is refused because relying parties that use C "
                       "strings would "
                       "truncate the name there"));
    case Reason::kDuplicateMember:
      return Invalid(
          "duplicate_member",
          absl::StrCat(
              "claims have a duplicate member name ", Quote(r.name),
              r.depth == 1
                  ? std::string(" in the top-level object")
                  : absl::StrCat(" in an object at depth ", r.depth,
                                 " inside member ", Quote(r.top_member)),
              " (names are compared after unescaping); relying parties would "
              "disagree on which value counts"));
    case Reason::kTooDeep:
      return Invalid(
          "too_deep",
          absl::StrCat("claims nest objects and arrays more than ",
                       kMaxClaimsDepth, " levels deep", where, "; at most ",
                       kMaxClaimsDepth,
                       " are allowed, the top-level object included"));
    case Reason::kNumberOverflow:
      if (!r.offset.has_value()) {
        return Invalid(
            "number_overflow",
            absl::StrCat("claims contain a number", where, kOverflowsDouble));
      }
      return Invalid(
          "number_overflow",
          absl::StrFormat("claims contain a number near byte offset %d%s",
                          offset, kOverflowsDouble));
    case Reason::kInexactInteger: {
      if (r.depth == 1 && (r.top_member == "iat" || r.top_member == "exp" ||
                           r.top_member == "nbf")) {
        // The registered dates say it their way ("must be an integer in
        // [0, 2^53)").
        absl::StatusOr<int64_t> date =
            NumericDate(r.top_member, Observed{true, r.value}, true);
        if (!date.ok()) return date.status();
      }
      const std::string number =
          r.value.kind == jose::JsonValue::Kind::kUnsigned
              ? absl::StrCat(r.value.unsigned_value)
          : r.value.kind == jose::JsonValue::Kind::kNegative
              ? absl::StrCat(r.value.negative_value)
              : r.value.text;
      return Invalid(
          "inexact_integer",
          absl::StrCat("claims contain the integer ", number, where,
                       ", beyond +-(2^53 - 1): relying parties that read "
                       "numbers as doubles (JavaScript among them) would "
                       "read another value; send it as a string"));
    }
    case Reason::kBinary:
      return Invalid("binary",
                     "claims contain binary data, which JSON cannot carry");
    case Reason::kTrailingData:
      return Invalid(
          "trailing_data",
          absl::StrFormat(
              "claims have trailing data after the JSON object at byte offset "
              "%d; send exactly one JSON object (only whitespace may follow "
              "it)",
              offset));
    case Reason::kLoneSurrogate:
      return Invalid(
          "lone_surrogate",
          absl::StrFormat(
              "claims contain an escaped lone UTF-16 surrogate near byte "
              "offset "
              "%d: \\uD800..\\uDBFF must be followed by \\uDC00..\\uDFFF, and "
              "\\uDC00..\\uDFFF must follow \\uD800..\\uDBFF",
              offset));
    case Reason::kSyntax:
      return Invalid(
          "syntax",
          absl::StrFormat("claims are not valid JSON near byte offset %d: %s",
                          offset, r.description));
    case Reason::kInternal:
      break;
  }
  return Invalid("internal", "claims could not be checked");
}

// iat, exp, nbf: RFC 7519 NumericDate, restricted to integers in
// [0, 2^53) so that every relying party (JavaScript included) reads the
// same value.
absl::StatusOr<int64_t> NumericDate(absl::string_view name,
                                    const Observed& observed, bool required) {
  constexpr absl::string_view kRange = "[0, 2^53)";
  if (!observed.present) {
    if (required) {
      return Invalid(absl::StrCat(name, "_missing"),
                     absl::StrCat("claims member \"", name,
                                  "\" is missing; it must be an integer number "
                                  "of seconds since the "
                                  "epoch"));
    }
    return 0;
  }
  const jose::JsonValue& v = observed.value;
  switch (v.kind) {
    case jose::JsonValue::Kind::kUnsigned:
      if (v.unsigned_value >= static_cast<uint64_t>(kMaxNumericDate)) {
        return Invalid(
            absl::StrCat(name, "_out_of_range"),
            absl::StrCat("claims member \"", name, "\" must be an integer in ",
                         kRange, ", got ", v.unsigned_value,
                         ", which is out of range"));
      }
      return static_cast<int64_t>(v.unsigned_value);
    case jose::JsonValue::Kind::kNegative:
      return Invalid(
          absl::StrCat(name, "_negative"),
          absl::StrCat(
              "claims member \"", name, "\" must be an integer in ", kRange,
              ", got ",
              v.negative_value == 0 ? "-0" : absl::StrCat(v.negative_value),
              ", which is negative"));
    case jose::JsonValue::Kind::kFloat: {
      const bool integral = v.text.find_first_of(".eE") == std::string::npos;
      if (integral) {  // digits only, but too big for 64 bits
        return Invalid(
            absl::StrCat(name, "_out_of_range"),
            absl::StrCat("claims member \"", name, "\" must be an integer in ",
                         kRange, ", got ", Quote(v.text),
                         ", which is out of range"));
      }
      return Invalid(
          absl::StrCat(name, "_not_integer"),
          absl::StrCat("claims member \"", name, "\" must be an integer in ",
                       kRange, " written without fraction or exponent, got ",
                       Quote(v.text)));
    }
    default:
      return Invalid(
          absl::StrCat(name, "_not_a_number"),
          absl::StrCat("claims member \"", name, "\" must be an integer in ",
                       kRange, ", got ", jose::KindName(v.kind)));
  }
}

absl::StatusOr<CheckedClaims> CheckClaimsOrThrow(absl::string_view claims,
                                                 const ClaimsPolicy& policy) {
  if (policy.issuer.empty()) {
    return absl::FailedPreconditionError(
        "claims policy has no issuer: the scope is misconfigured");
  }

  // 1-3: the raw bytes, before any parser sees them.
  if (claims.size() > kMaxClaimsBytes) {
    return Invalid(
        "too_large",
        absl::StrCat("claims are ", claims.size(), " bytes; at most ",
                     kMaxClaimsBytes, " (64 KiB) are allowed"));
  }
  if (absl::StartsWith(claims, "\xEF\xBB\xBF")) {
    return Invalid(
        "byte_order_mark",
        "claims start with a UTF-8 byte order mark (EF BB BF); send the JSON "
        "object without it");
  }
  if (size_t nul = claims.find('\0'); nul != absl::string_view::npos) {
    return Invalid(
        "raw_nul",
        absl::StrCat(
            "claims contain a raw NUL byte at byte offset ", nul,
            "; JSON text never contains one (escape it as \\u0000 inside a "
            "string, which is refused too)"));
  }
  if (std::optional<std::string> error = base::FindUtf8Error(claims)) {
    return Invalid("not_utf8",
                   absl::StrCat("claims are not valid UTF-8 at ", *error));
  }
  bool blank = true;
  for (char c : claims) {
    blank = blank && IsJsonWhitespace(c);
  }
  if (blank) {
    return Invalid("empty", "claims are empty; send one JSON object");
  }

  // 4: the structure (jose/strict_json.h), reading the registered claims
  // at the top level as they come.
  Observed iss, iat_seen, exp_seen, nbf_seen;
  jose::StrictJsonOptions options;
  options.max_depth = kMaxClaimsDepth;
  options.refuse_inexact_integers = true;
  options.on_top_level_value = [&](const std::string& member,
                                   const jose::JsonValue& value) {
    Observed* claim = member == "iss"   ? &iss
                      : member == "iat" ? &iat_seen
                      : member == "exp" ? &exp_seen
                      : member == "nbf" ? &nbf_seen
                                        : nullptr;
    if (claim != nullptr) *claim = Observed{true, value};
  };
  if (std::optional<jose::JsonRefusal> refusal =
          jose::CheckStrictJsonObject(claims, options)) {
    return RefusalMessage(*refusal);
  }

  // 5: the issuer.
  if (!iss.present) {
    return Invalid(
        "iss_missing",
        absl::StrCat(
            "claims member \"iss\" is missing; it must be this scope's issuer ",
            Quote(policy.issuer)));
  }
  if (iss.value.kind != jose::JsonValue::Kind::kString) {
    return Invalid("iss_not_a_string",
                   absl::StrCat("claims member \"iss\" must be a string, got ",
                                jose::KindName(iss.value.kind)));
  }
  if (iss.value.text != policy.issuer) {
    return Invalid(
        "iss_not_the_scopes",
        absl::StrCat("claims member \"iss\" is ", Quote(iss.value.text),
                     " but this scope's issuer is ", Quote(policy.issuer),
                     " (compared byte for byte)"));
  }

  // 6: the NumericDate members.
  SIGNET_ASSIGN_OR_RETURN(int64_t iat, NumericDate("iat", iat_seen, true));
  SIGNET_ASSIGN_OR_RETURN(int64_t exp, NumericDate("exp", exp_seen, true));
  SIGNET_ASSIGN_OR_RETURN(int64_t nbf, NumericDate("nbf", nbf_seen, false));
  const bool has_nbf = nbf_seen.present;

  // 7: the times.
  const int64_t now_seconds = absl::ToUnixSeconds(policy.now);
  const absl::Duration iat_offset = absl::FromUnixSeconds(iat) - policy.now;
  if (absl::AbsDuration(iat_offset) > policy.iat_skew) {
    return Invalid(
        "iat_skew",
        absl::StrCat(
            "claims member \"iat\" (", iat, ") is ",
            absl::FormatDuration(absl::AbsDuration(iat_offset)),
            iat_offset > absl::ZeroDuration() ? " ahead of" : " behind",
            " the server's clock (", now_seconds, "); at most ",
            absl::FormatDuration(policy.iat_skew), " of skew is allowed"));
  }
  if (exp <= iat) {
    return Invalid("exp_not_after_iat",
                   absl::StrCat("claims member \"exp\" (", exp,
                                ") must be after \"iat\" (", iat, ")"));
  }
  const absl::Duration lifetime = absl::Seconds(exp - iat);
  if (lifetime > policy.max_lifetime) {
    return Invalid("lifetime_too_long",
                   absl::StrCat("claims lifetime \"exp\" - \"iat\" is ",
                                absl::FormatDuration(lifetime),
                                "; this scope allows at most ",
                                absl::FormatDuration(policy.max_lifetime)));
  }
  if (absl::FromUnixSeconds(exp) <= policy.now) {
    return Invalid(
        "expired",
        absl::StrCat("claims member \"exp\" (", exp,
                     ") is not after the server's clock (", now_seconds,
                     "): the token would already be expired"));
  }
  if (has_nbf && nbf >= exp) {
    return Invalid("nbf_not_before_exp",
                   absl::StrCat("claims member \"nbf\" (", nbf,
                                ") must be before \"exp\" (", exp, ")"));
  }

  CheckedClaims checked{iat, exp, std::nullopt};
  if (has_nbf) {
    checked.nbf = nbf;
  }
  return checked;
}

}  // namespace

std::string ClaimsRuleOf(const absl::Status& status) {
  absl::optional<absl::Cord> rule = status.GetPayload(kRulePayload);
  return rule.has_value() ? std::string(*rule) : std::string();
}

absl::StatusOr<CheckedClaims> CheckClaims(absl::string_view claims_json,
                                          const ClaimsPolicy& policy) {
  // nlohmann may throw (std::bad_alloc at least); nothing crosses this API.
  try {
    return CheckClaimsOrThrow(claims_json, policy);
  } catch (...) {
    // Not e.what(): nlohmann's messages may quote the caller's bytes.
    return Invalid("internal", "claims could not be checked");
  }
}

}  // namespace signet::server
