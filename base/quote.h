// Text from outside (a name, a URL, a token) quoted for an error message or
// a log line: C-escaped, so it cannot forge lines or terminal sequences,
// and cut short, so a long input cannot make a long message.
#ifndef SIGNET_BASE_QUOTE_H_
#define SIGNET_BASE_QUOTE_H_

#include <cstddef>
#include <string>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"

namespace signet::base {

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

}  // namespace signet::base

#endif  // SIGNET_BASE_QUOTE_H_
