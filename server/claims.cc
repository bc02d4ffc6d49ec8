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
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "base/quote.h"
#include "nlohmann/json.hpp"

namespace signet::server {

using base::Quote;
namespace {

using Json = nlohmann::json;

absl::Status Invalid(absl::string_view message) {
  return absl::InvalidArgumentError(message);
}

// RFC 3629 section 4. Returns the first error as "byte offset N: reason".
std::optional<std::string> FindUtf8Error(absl::string_view s) {
  const auto byte = [&](size_t i) { return static_cast<unsigned char>(s[i]); };
  const auto is_cont = [&](size_t i) {
    return i < s.size() && (byte(i) & 0xC0) == 0x80;
  };
  const auto error = [](size_t at, absl::string_view reason) {
    return absl::StrFormat("byte offset %d: %s", at, reason);
  };
  size_t i = 0;
  while (i < s.size()) {
    const unsigned char b = byte(i);
    if (b < 0x80) {
      ++i;
      continue;
    }
    if (b < 0xC0) {
      return error(i, absl::StrFormat(
                          "continuation byte 0x%02X without a lead byte", b));
    }
    if (b == 0xC0 || b == 0xC1) {
      return error(i, "overlong encoding (lead byte 0xC0 or 0xC1)");
    }
    if (b > 0xF4) {
      return error(i, absl::StrFormat("byte 0x%02X never appears in UTF-8", b));
    }
    const size_t length = b < 0xE0 ? 2 : b < 0xF0 ? 3 : 4;
    for (size_t k = 1; k < length; ++k) {
      if (!is_cont(i + k)) {
        return error(
            i, absl::StrFormat("truncated sequence (%d-byte sequence with only "
                               "%d byte(s))",
                               length, k));
      }
    }
    const unsigned char b1 = byte(i + 1);
    if (b == 0xE0 && b1 < 0xA0) {
      return error(i, "overlong encoding of a 3-byte sequence");
    }
    if (b == 0xED && b1 >= 0xA0) {
      return error(i, "UTF-16 surrogate (U+D800..U+DFFF) encoded in UTF-8");
    }
    if (b == 0xF0 && b1 < 0x90) {
      return error(i, "overlong encoding of a 4-byte sequence");
    }
    if (b == 0xF4 && b1 >= 0x90) {
      return error(i, "code point above U+10FFFF");
    }
    i += length;
  }
  return std::nullopt;
}

constexpr absl::string_view kOverflowsDouble =
    " that overflows a double; relying parties would read it differently "
    "(infinity or an error)";

bool IsJsonWhitespace(char c) {
  return c == ' ' || c == '\t' || c == '\n' || c == '\r';
}

// What the parser saw as the value of one registered claim.
struct Observed {
  enum class Kind {
    kAbsent,
    kString,
    kUnsigned,  // an integer written without '-'
    kNegative,  // an integer written with '-', including "-0"
    kFloat,     // a fraction, an exponent, or an integer too big for 64 bits
    kBool,
    kNull,
    kObject,
    kArray,
  };
  Kind kind = Kind::kAbsent;
  std::string text;  // kString: the unescaped value; kFloat: the raw token
  uint64_t unsigned_value = 0;
  int64_t negative_value = 0;

  static Observed Of(Kind kind) {
    Observed v;
    v.kind = kind;
    return v;
  }
};

absl::string_view KindName(Observed::Kind kind) {
  switch (kind) {
    case Observed::Kind::kAbsent:
      return "nothing";
    case Observed::Kind::kString:
      return "a string";
    case Observed::Kind::kUnsigned:
    case Observed::Kind::kNegative:
    case Observed::Kind::kFloat:
      return "a number";
    case Observed::Kind::kBool:
      return "a boolean";
    case Observed::Kind::kNull:
      return "null";
    case Observed::Kind::kObject:
      return "an object";
    case Observed::Kind::kArray:
      return "an array";
  }
  return "an unknown value";
}

// Receives nlohmann's SAX events; the first problem stops the parse (a
// callback returns false) and is kept in error().
class StrictClaimsHandler : public nlohmann::json_sax<Json> {
 public:
  const absl::Status& error() const { return error_; }
  const Observed& iss() const { return iss_; }
  const Observed& iat() const { return iat_; }
  const Observed& exp() const { return exp_; }
  const Observed& nbf() const { return nbf_; }

  bool null() override { return OnValue(Observed::Of(Observed::Kind::kNull)); }

  bool boolean(bool /*val*/) override {
    return OnValue(Observed::Of(Observed::Kind::kBool));
  }

  bool number_integer(number_integer_t val) override {
    // nlohmann only calls this for a token that starts with '-'.
    Observed v = Observed::Of(Observed::Kind::kNegative);
    v.negative_value = val;
    return OnValue(std::move(v));
  }

  bool number_unsigned(number_unsigned_t val) override {
    Observed v = Observed::Of(Observed::Kind::kUnsigned);
    v.unsigned_value = val;
    return OnValue(std::move(v));
  }

  bool number_float(number_float_t val, const string_t& token) override {
    if (!std::isfinite(val)) {  // nlohmann refuses these first (error 406)
      return Fail(
          absl::StrCat("claims contain a number", Where(), kOverflowsDouble));
    }
    Observed v = Observed::Of(Observed::Kind::kFloat);
    v.text = token;
    return OnValue(std::move(v));
  }

  bool string(string_t& val) override {
    if (absl::StrContains(val, absl::string_view("\0", 1))) {
      return Fail(absl::StrCat(
          "claims contain U+0000 (\\u0000) in a string", Where(),
          "; it is refused because relying parties that use C strings would "
          "truncate the string there"));
    }
    Observed v = Observed::Of(Observed::Kind::kString);
    v.text = std::move(val);
    return OnValue(std::move(v));
  }

  bool binary(binary_t& /*val*/) override {
    // Never produced by the JSON format; refused to stay closed.
    return Fail("claims contain binary data, which JSON cannot carry");
  }

  bool start_object(std::size_t /*elements*/) override {
    if (!OnValue(Observed::Of(Observed::Kind::kObject))) {
      return false;
    }
    return Push(/*is_object=*/true);
  }

  bool key(string_t& val) override {
    if (absl::StrContains(val, absl::string_view("\0", 1))) {
      return Fail(absl::StrCat(
          "claims contain U+0000 (\\u0000) in the member name ", Quote(val),
          frames_.size() > 1 ? Where() : std::string(),
          "; it is refused because relying parties that use C strings would "
          "truncate the name there"));
    }
    Frame& frame = frames_.back();
    if (frames_.size() == 1) {
      top_member_ = val;
    }
    if (!frame.names.insert(val).second) {
      return Fail(absl::StrCat(
          "claims have a duplicate member name ", Quote(val),
          frames_.size() == 1
              ? std::string(" in the top-level object")
              : absl::StrCat(" in an object at depth ", frames_.size(),
                             " inside member ", Quote(top_member_)),
          " (names are compared after unescaping); relying parties would "
          "disagree on which value counts"));
    }
    return true;
  }

  bool end_object() override { return Pop(); }

  bool start_array(std::size_t /*elements*/) override {
    if (!OnValue(Observed::Of(Observed::Kind::kArray))) {
      return false;
    }
    return Push(/*is_object=*/false);
  }

  bool end_array() override { return Pop(); }

  bool parse_error(std::size_t position, const std::string& /*last_token*/,
                   const nlohmann::detail::exception& ex) override {
    // `position` counts the bytes read, the offending one included.
    const size_t offset = position > 0 ? position - 1 : 0;
    if (top_done_) {
      return Fail(absl::StrFormat(
          "claims have trailing data after the JSON object at byte offset "
          "%d; send exactly one JSON object (only whitespace may follow it)",
          offset));
    }
    if (ex.id == 406) {  // out_of_range.406: "number overflow parsing"
      return Fail(
          absl::StrFormat("claims contain a number near byte offset "
                          "%d%s",
                          offset, kOverflowsDouble));
    }
    const absl::string_view what = ex.what();
    if (absl::StrContains(what, "surrogate U+")) {
      return Fail(absl::StrFormat(
          "claims contain an escaped lone UTF-16 surrogate near byte offset "
          "%d: \\uD800..\\uDBFF must be followed by \\uDC00..\\uDFFF, and "
          "\\uDC00..\\uDFFF must follow \\uD800..\\uDBFF",
          offset));
    }
    // Keep nlohmann's description but not its "last read: '...'" echo of
    // the caller's bytes.
    absl::string_view description = what;
    if (size_t start = description.find("syntax error");
        start != absl::string_view::npos) {
      description.remove_prefix(start);
    } else {
      description = "the parser refused it";
    }
    if (size_t echo = description.find("; last read");
        echo != absl::string_view::npos) {
      description = description.substr(0, echo);
    }
    return Fail(
        absl::StrFormat("claims are not valid JSON near byte offset "
                        "%d: %s",
                        offset, description));
  }

 private:
  struct Frame {
    bool is_object;
    std::set<std::string, std::less<>> names;
  };

  bool Fail(std::string message) {
    if (error_.ok()) {
      error_ = Invalid(message);
    }
    return false;
  }

  // " inside member \"x\"" once inside the top-level object, else "".
  std::string Where() const {
    if (frames_.empty()) {
      return "";
    }
    return absl::StrCat(" inside member ", Quote(top_member_));
  }

  // Every value, containers included, before their content.
  bool OnValue(Observed v) {
    if (frames_.empty()) {
      if (v.kind != Observed::Kind::kObject) {
        return Fail(absl::StrCat("claims must be a JSON object, got ",
                                 KindName(v.kind)));
      }
      return true;
    }
    if (frames_.size() == 1) {
      if (Observed* claim = RegisteredClaim(top_member_); claim != nullptr) {
        *claim = std::move(v);
      }
    }
    return true;
  }

  Observed* RegisteredClaim(absl::string_view name) {
    if (name == "iss") return &iss_;
    if (name == "iat") return &iat_;
    if (name == "exp") return &exp_;
    if (name == "nbf") return &nbf_;
    return nullptr;
  }

  bool Push(bool is_object) {
    if (frames_.size() >= static_cast<size_t>(kMaxClaimsDepth)) {
      return Fail(absl::StrCat("claims nest objects and arrays more than ",
                               kMaxClaimsDepth, " levels deep", Where(),
                               "; at most ", kMaxClaimsDepth,
                               " are allowed, the top-level object included"));
    }
    frames_.push_back(Frame{is_object, {}});
    return true;
  }

  bool Pop() {
    frames_.pop_back();
    if (frames_.empty()) {
      top_done_ = true;
    }
    return true;
  }

  absl::Status error_;
  std::vector<Frame> frames_;
  std::string top_member_;  // the last member name of the top-level object
  bool top_done_ = false;   // the top-level object has been closed
  Observed iss_, iat_, exp_, nbf_;
};

// iat, exp, nbf: RFC 7519 NumericDate, restricted to integers in
// [0, 2^53) so that every relying party (JavaScript included) reads the
// same value.
absl::StatusOr<int64_t> NumericDate(absl::string_view name, const Observed& v,
                                    bool required) {
  constexpr absl::string_view kRange = "[0, 2^53)";
  switch (v.kind) {
    case Observed::Kind::kAbsent:
      if (required) {
        return Invalid(absl::StrCat(
            "claims member \"", name,
            "\" is missing; it must be an integer number of seconds since "
            "the epoch"));
      }
      return 0;
    case Observed::Kind::kUnsigned:
      if (v.unsigned_value >= static_cast<uint64_t>(kMaxNumericDate)) {
        return Invalid(absl::StrCat(
            "claims member \"", name, "\" must be an integer in ", kRange,
            ", got ", v.unsigned_value, ", which is out of range"));
      }
      return static_cast<int64_t>(v.unsigned_value);
    case Observed::Kind::kNegative:
      return Invalid(absl::StrCat(
          "claims member \"", name, "\" must be an integer in ", kRange,
          ", got ",
          v.negative_value == 0 ? "-0" : absl::StrCat(v.negative_value),
          ", which is negative"));
    case Observed::Kind::kFloat: {
      const bool integral = v.text.find_first_of(".eE") == std::string::npos;
      if (integral) {  // digits only, but too big for 64 bits
        return Invalid(absl::StrCat(
            "claims member \"", name, "\" must be an integer in ", kRange,
            ", got ", Quote(v.text), ", which is out of range"));
      }
      return Invalid(absl::StrCat(
          "claims member \"", name, "\" must be an integer in ", kRange,
          " written without fraction or exponent, got ", Quote(v.text)));
    }
    default:
      return Invalid(absl::StrCat("claims member \"", name,
                                  "\" must be an integer in ", kRange, ", got ",
                                  KindName(v.kind)));
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
    return Invalid(absl::StrCat("claims are ", claims.size(),
                                " bytes; at most ", kMaxClaimsBytes,
                                " (64 KiB) are allowed"));
  }
  if (absl::StartsWith(claims, "\xEF\xBB\xBF")) {
    return Invalid(
        "claims start with a UTF-8 byte order mark (EF BB BF); send the JSON "
        "object without it");
  }
  if (size_t nul = claims.find('\0'); nul != absl::string_view::npos) {
    return Invalid(absl::StrCat(
        "claims contain a raw NUL byte at byte offset ", nul,
        "; JSON text never contains one (escape it as \\u0000 inside a "
        "string, which is refused too)"));
  }
  if (std::optional<std::string> error = FindUtf8Error(claims)) {
    return Invalid(absl::StrCat("claims are not valid UTF-8 at ", *error));
  }
  bool blank = true;
  for (char c : claims) {
    blank = blank && IsJsonWhitespace(c);
  }
  if (blank) {
    return Invalid("claims are empty; send one JSON object");
  }

  // 4: the structure.
  StrictClaimsHandler handler;
  const bool parsed =
      Json::sax_parse(claims.begin(), claims.end(), &handler,
                      Json::input_format_t::json, /*strict=*/true,
                      /*ignore_comments=*/false);
  if (!handler.error().ok()) {
    return handler.error();
  }
  if (!parsed) {
    return Invalid("claims are not valid JSON");
  }

  // 5: the issuer.
  const Observed& iss = handler.iss();
  if (iss.kind == Observed::Kind::kAbsent) {
    return Invalid(absl::StrCat(
        "claims member \"iss\" is missing; it must be this scope's issuer ",
        Quote(policy.issuer)));
  }
  if (iss.kind != Observed::Kind::kString) {
    return Invalid(absl::StrCat("claims member \"iss\" must be a string, got ",
                                KindName(iss.kind)));
  }
  if (iss.text != policy.issuer) {
    return Invalid(absl::StrCat("claims member \"iss\" is ", Quote(iss.text),
                                " but this scope's issuer is ",
                                Quote(policy.issuer),
                                " (compared byte for byte)"));
  }

  // 6: the NumericDate members.
  absl::StatusOr<int64_t> iat = NumericDate("iat", handler.iat(), true);
  if (!iat.ok()) return iat.status();
  absl::StatusOr<int64_t> exp = NumericDate("exp", handler.exp(), true);
  if (!exp.ok()) return exp.status();
  absl::StatusOr<int64_t> nbf = NumericDate("nbf", handler.nbf(), false);
  if (!nbf.ok()) return nbf.status();
  const bool has_nbf = handler.nbf().kind != Observed::Kind::kAbsent;

  // 7: the times.
  const int64_t now_seconds = absl::ToUnixSeconds(policy.now);
  const absl::Duration iat_offset = absl::FromUnixSeconds(*iat) - policy.now;
  if (absl::AbsDuration(iat_offset) > policy.iat_skew) {
    return Invalid(absl::StrCat(
        "claims member \"iat\" (", *iat, ") is ",
        absl::FormatDuration(absl::AbsDuration(iat_offset)),
        iat_offset > absl::ZeroDuration() ? " ahead of" : " behind",
        " the server's clock (", now_seconds, "); at most ",
        absl::FormatDuration(policy.iat_skew), " of skew is allowed"));
  }
  if (*exp <= *iat) {
    return Invalid(absl::StrCat("claims member \"exp\" (", *exp,
                                ") must be after \"iat\" (", *iat, ")"));
  }
  const absl::Duration lifetime = absl::Seconds(*exp - *iat);
  if (lifetime > policy.max_lifetime) {
    return Invalid(absl::StrCat("claims lifetime \"exp\" - \"iat\" is ",
                                absl::FormatDuration(lifetime),
                                "; this scope allows at most ",
                                absl::FormatDuration(policy.max_lifetime)));
  }
  if (absl::FromUnixSeconds(*exp) <= policy.now) {
    return Invalid(absl::StrCat(
        "claims member \"exp\" (", *exp, ") is not after the server's clock (",
        now_seconds, "): the token would already be expired"));
  }
  if (has_nbf && *nbf >= *exp) {
    return Invalid(absl::StrCat("claims member \"nbf\" (", *nbf,
                                ") must be before \"exp\" (", *exp, ")"));
  }

  CheckedClaims checked{*iat, *exp, std::nullopt};
  if (has_nbf) {
    checked.nbf = *nbf;
  }
  return checked;
}

}  // namespace

absl::StatusOr<CheckedClaims> CheckClaims(absl::string_view claims_json,
                                          const ClaimsPolicy& policy) {
  // nlohmann may throw (std::bad_alloc at least); nothing crosses this API.
  try {
    return CheckClaimsOrThrow(claims_json, policy);
  } catch (...) {
    // Not e.what(): nlohmann's messages may quote the caller's bytes.
    return Invalid("claims could not be checked");
  }
}

}  // namespace signet::server
