// Caller-supplied text inside a status message, an audit line or a log line:
// escaped, so no control byte or quote reaches a log, and cut short, so a
// long input cannot grow a message (gRPC refuses a status message larger than
// the peer's metadata limit, and answers RESOURCE_EXHAUSTED instead of ours).
//
// Thread-safe: pure functions.
#ifndef SIGNET_SERVER_MESSAGE_TEXT_H_
#define SIGNET_SERVER_MESSAGE_TEXT_H_

#include <cstddef>
#include <string>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"

namespace signet::server {

inline constexpr size_t kMaxQuotedBytes = 64;

// "\"text\"" with C escapes; longer text shows its first `max_bytes` bytes,
// then "...(N bytes)".
inline std::string Quote(absl::string_view text,
                         size_t max_bytes = kMaxQuotedBytes) {
  if (text.size() > max_bytes) {
    return absl::StrCat("\"", absl::CHexEscape(text.substr(0, max_bytes)),
                        "\"...(", text.size(), " bytes)");
  }
  return absl::StrCat("\"", absl::CHexEscape(text), "\"");
}

}  // namespace signet::server

#endif  // SIGNET_SERVER_MESSAGE_TEXT_H_
