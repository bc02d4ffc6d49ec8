// Strict decoding for the token verifier (client/verifier.h): JSON objects
// that every conforming parser reads the same way (base64url has its one
// strict decoder in base/base64url.h).
//
// A verifier must read a token exactly as its signer meant it. Two parsers
// that disagree on a token (one keeps the first of two "iss" members, the
// other the last; one skips a byte order mark, the other refuses it) let an
// attacker show each party a different claim set under one signature. So
// everything a lenient decoder would "repair" is refused here:
//  - JSON (RFC 8259; RFC 7515 section 5.2 step 4 and RFC 7519 section 4
//    for duplicates): exactly one value, an object, with only whitespace
//    after it; no duplicate member names at any depth (compared after
//    unescaping: nlohmann-json's DOM parse silently keeps the last one, so
//    its SAX interface is used to find them); no byte order mark, no raw
//    or escaped NUL; valid UTF-8 (nlohmann's lexer checks strings, and
//    nothing outside strings may be non-ASCII); nesting at most
//    kMaxJsonDepth; no number that overflows a double.
//
// Thread-safe: pure functions. No exception escapes.
#ifndef SIGNET_CLIENT_VERIFIER_JSON_H_
#define SIGNET_CLIENT_VERIFIER_JSON_H_

#include <optional>
#include <string>

#include "absl/strings/string_view.h"
#include "nlohmann/json.hpp"

namespace signet::verifier_internal {

inline constexpr int kMaxJsonDepth = 32;  // the top-level object is depth 1

// Why ParseStrictJsonObject refused a document.
struct JsonProblem {
  // A sentence that starts with `what`: "claims: duplicate member \"iss\"",
  // "JOSE header: not a JSON object", ...
  std::string message;
  bool duplicate_member = false;  // the problem is a repeated member name
};

// The parsed object, or nullopt with the reason in `*problem`. `what` names
// the document in the message ("JOSE header", "claims", "JWK set").
std::optional<nlohmann::json> ParseStrictJsonObject(absl::string_view text,
                                                    absl::string_view what,
                                                    JsonProblem* problem);

}  // namespace signet::verifier_internal

#endif  // SIGNET_CLIENT_VERIFIER_JSON_H_
