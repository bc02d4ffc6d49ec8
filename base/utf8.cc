#include "base/utf8.h"

#include "absl/strings/str_format.h"

namespace signet::base {

// RFC 3629 section 4.
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

}  // namespace signet::base
