// Strict JSON, read the same way by every conforming parser: the one set of
// rules behind the claims a tenant sends (server/claims.h) and the JOSE
// headers, claims and key sets the reference verifier reads
// (client/verifier_json.h).
//
// Why: two parsers that disagree on a document (one keeps the first of two
// "iss" members, the other the last) let an attacker show a signer and a
// relying party different claims under one signature. nlohmann-json's DOM
// parse keeps the last of two members silently, so the document is read
// through its SAX interface, and the first of these refuses it:
//  - the top-level value is not an object, or anything but whitespace
//    follows it;
//  - a member name appears twice in one object (compared after unescaping);
//  - U+0000 in a string or a member name (C-string readers would cut there);
//  - objects and arrays nested deeper than the caller's limit (the
//    top-level object is depth 1);
//  - a number that overflows a double;
//  - with refuse_inexact_integers (the claims a tenant sends): an integer
//    (written without fraction or exponent) beyond +-(2^53 - 1), which a
//    double cannot hold exactly, so JavaScript and other double-based
//    readers would read another value (I-JSON, RFC 7493 2.2);
//  - anything nlohmann's strict lexer refuses (invalid UTF-8 in a string,
//    a lone escaped UTF-16 surrogate, a syntax error).
// What a caller checks before (a byte order mark, the size) and after (the
// meaning of members) stays with the caller, and so do the words of its
// messages: a refusal says what and where, the caller says it its way.
//
// Thread-safe: pure functions. No exception escapes.
#ifndef SIGNET_JOSE_STRICT_JSON_H_
#define SIGNET_JOSE_STRICT_JSON_H_

#include <cstddef>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>

#include "absl/strings/string_view.h"

namespace signet::jose {

// One value as the parser saw it.
struct JsonValue {
  enum class Kind {
    kString,
    kUnsigned,  // an integer written without '-'
    kNegative,  // an integer written with '-', including "-0"
    kFloat,     // a fraction, an exponent, or an integer too big for 64 bits
    kBool,
    kNull,
    kObject,
    kArray,
  };
  Kind kind = Kind::kNull;
  std::string text;  // kString: the unescaped value; kFloat: the raw token
  uint64_t unsigned_value = 0;
  int64_t negative_value = 0;
};

// "a string", "a number", "a boolean", "null", "an object", "an array".
absl::string_view KindName(JsonValue::Kind kind);

// Why a document was refused: the first problem found.
struct JsonRefusal {
  enum class Reason {
    kNotAnObject,      // the top-level value is `got`
    kNulInString,      // U+0000 in a string value
    kNulInName,        // U+0000 in the member name `name`
    kDuplicateMember,  // `name` twice in one object, at `depth`
    kTooDeep,          // an object or array would be deeper than the limit
    kNumberOverflow,   // a number that overflows a double
    kInexactInteger,   // an integer beyond +-(2^53 - 1): `value`
    kBinary,           // never produced by JSON text; refused to stay closed
    kTrailingData,     // something after the top-level object, at `offset`
    kLoneSurrogate,    // an escaped lone UTF-16 surrogate near `offset`
    kSyntax,           // anything else the lexer refused, near `offset`
    kInternal,         // the reader itself failed (out of memory)
  };
  Reason reason = Reason::kSyntax;
  JsonValue::Kind got = JsonValue::Kind::kNull;  // kNotAnObject
  std::string name;                              // kNulInName, kDuplicate...
  // How many objects and arrays enclose the problem (1: directly inside the
  // top-level object), and the last member name of the top-level object,
  // which is the one whose value holds the problem when depth > 1.
  int depth = 0;
  std::string top_member;
  // The byte offset of the problem, for refusals the lexer finds (trailing
  // data, a lone surrogate, a syntax error, and a number overflow it finds
  // first); unset otherwise.
  std::optional<size_t> offset;
  // kInexactInteger: the number (kUnsigned, kNegative, or kFloat with its
  // token, for one too big for 64 bits).
  JsonValue value;
  // kSyntax: nlohmann's description without its echo of the input ("syntax
  // error while parsing object - unexpected end of input; expected '}'").
  std::string description;
};

// The largest integer a double holds exactly with every smaller one.
inline constexpr uint64_t kMaxExactInteger = (uint64_t{1} << 53) - 1;

struct StrictJsonOptions {
  // The deepest nesting allowed; the top-level object is depth 1.
  int max_depth = 16;
  // Refuse integers beyond +-kMaxExactInteger (kInexactInteger).
  bool refuse_inexact_integers = false;
  // Called for each value directly inside the top-level object, in order,
  // with its member name (containers before their content). Optional.
  std::function<void(const std::string& member, const JsonValue& value)>
      on_top_level_value;
};

// Reads `text` under the rules above: nullopt if it is a strict JSON
// object, otherwise the first problem.
std::optional<JsonRefusal> CheckStrictJsonObject(
    absl::string_view text, const StrictJsonOptions& options);

}  // namespace signet::jose

#endif  // SIGNET_JOSE_STRICT_JSON_H_
