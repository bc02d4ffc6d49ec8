#include "base/base64url.h"

#include "absl/strings/escaping.h"

namespace signet::base {
namespace {

bool IsBase64UrlChar(char c) {
  return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') ||
         (c >= '0' && c <= '9') || c == '-' || c == '_';
}

}  // namespace

std::string Base64UrlEncode(absl::string_view bytes) {
  std::string out;
  absl::WebSafeBase64Escape(bytes, &out);
  return out;
}

std::optional<std::string> StrictBase64UrlDecode(absl::string_view text) {
  for (char c : text) {
    if (!IsBase64UrlChar(c)) return std::nullopt;
  }
  if (text.size() % 4 == 1) return std::nullopt;
  std::string decoded;
  if (!absl::WebSafeBase64Unescape(text, &decoded)) return std::nullopt;
  // Non-zero bits after the last whole byte: another text for the same
  // bytes. Re-encoding gives the one canonical text.
  if (Base64UrlEncode(decoded) != text) return std::nullopt;
  return decoded;
}

}  // namespace signet::base
