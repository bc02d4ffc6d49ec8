// base64url (RFC 4648 section 5) without padding, as JOSE writes it
// (RFC 7515 section 2), and the one strict decoder every reader of signed
// data uses.
//
// A verifier must read signed bytes exactly as the signer wrote them: a
// lenient decoder that "repairs" its input lets two texts stand for one
// signature. StrictBase64UrlDecode refuses everything but the one canonical
// text of each byte string: only [A-Za-z0-9_-], no '=' padding, no
// whitespace, no length of 1 mod 4, and no non-zero bits after the last
// whole byte.
//
// Thread-safe: pure functions.
#ifndef SIGNET_BASE_BASE64URL_H_
#define SIGNET_BASE_BASE64URL_H_

#include <optional>
#include <string>

#include "absl/strings/string_view.h"

namespace signet::base {

// `bytes` in base64url without padding.
std::string Base64UrlEncode(absl::string_view bytes);

// The bytes `text` encodes, or nullopt unless `text` is their canonical
// unpadded base64url. The empty string decodes to the empty string.
std::optional<std::string> StrictBase64UrlDecode(absl::string_view text);

}  // namespace signet::base

#endif  // SIGNET_BASE_BASE64URL_H_
