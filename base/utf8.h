// UTF-8 validation (RFC 3629) for text from outside that must be UTF-8:
// JWT claims, a certificate's CN.
#ifndef SIGNET_BASE_UTF8_H_
#define SIGNET_BASE_UTF8_H_

#include <optional>
#include <string>

#include "absl/strings/string_view.h"

namespace signet::base {

// The first error in `s` as "byte offset N: reason" (a lone continuation
// byte, an overlong form, an encoded UTF-16 surrogate, a truncated
// sequence, a code point above U+10FFFF), or nullopt when `s` is UTF-8.
std::optional<std::string> FindUtf8Error(absl::string_view s);

}  // namespace signet::base

#endif  // SIGNET_BASE_UTF8_H_
