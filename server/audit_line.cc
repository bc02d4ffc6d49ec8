#include "server/audit_line.h"

#include <cstdint>
#include <exception>
#include <limits>
#include <nlohmann/json.hpp>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "base/base64url.h"
#include "base/status_macros.h"

namespace signet::server {
namespace {

constexpr size_t kSignatureBytes = 64;  // ES256 r||s
// base64url without padding of kSignatureBytes: 86 characters, the last
// carrying 2 bits of the signature and 4 zero bits.
constexpr size_t kSignatureChars = 86;
constexpr absl::string_view kTimeFormat = "%Y-%m-%dT%H:%M:%E3SZ";
constexpr size_t kTimeChars = 24;  // 2026-11-23T16:42:50.123Z

absl::Status Broken(absl::string_view why) { return absl::DataLossError(why); }

// Character classes by byte, looked up once per character: the branches of
// a range test per character were a third of verification.
struct CharClasses {
  bool lower_hex[256] = {};
  // Printable ASCII other than a quote or a backslash: a string holds it as
  // itself.
  bool plain[256] = {};
  constexpr CharClasses() {
    for (int c = '0'; c <= '9'; ++c) lower_hex[c] = true;
    for (int c = 'a'; c <= 'f'; ++c) lower_hex[c] = true;
    for (int c = 0x20; c < 0x7f; ++c) plain[c] = c != '"' && c != '\\';
  }
};
constexpr CharClasses kClasses;

bool IsHex64(absl::string_view s) {
  if (s.size() != 64) return false;
  bool all = true;
  for (char c : s) all &= kClasses.lower_hex[static_cast<unsigned char>(c)];
  return all;
}

// ---- The scanner -------------------------------------------------------

enum class Member : uint8_t {
  kSeq,
  kTime,
  kEvent,
  kCaller,
  kScope,
  kKid,
  kAlg,
  kInputSha256,
  kResult,
  kDetail,
  kHead,
  kCount,
  kSig,
  kPrev,
  kUnknown,
};

uint32_t Bit(Member m) { return 1u << static_cast<uint32_t>(m); }

Member MemberNamed(absl::string_view name) {
  switch (name.size()) {
    case 3:
      if (name == "seq") return Member::kSeq;
      if (name == "kid") return Member::kKid;
      if (name == "alg") return Member::kAlg;
      if (name == "sig") return Member::kSig;
      break;
    case 4:
      if (name == "time") return Member::kTime;
      if (name == "head") return Member::kHead;
      if (name == "prev") return Member::kPrev;
      break;
    case 5:
      if (name == "event") return Member::kEvent;
      if (name == "scope") return Member::kScope;
      if (name == "count") return Member::kCount;
      break;
    case 6:
      if (name == "caller") return Member::kCaller;
      if (name == "result") return Member::kResult;
      if (name == "detail") return Member::kDetail;
      break;
    case 12:
      if (name == "input_sha256") return Member::kInputSha256;
      break;
  }
  return Member::kUnknown;
}

constexpr size_t kRefused = std::numeric_limits<size_t>::max();

bool IsDigit(char c) { return c >= '0' && c <= '9'; }

// Four lower-case hex digits at s[at..at+4) (the JSON library writes \u
// escapes in lower case).
bool Hex4(absl::string_view s, size_t at, uint32_t& value) {
  if (at + 4 > s.size()) return false;
  value = 0;
  for (size_t k = at; k < at + 4; ++k) {
    const char c = s[k];
    uint32_t digit;
    if (c >= '0' && c <= '9') {
      digit = static_cast<uint32_t>(c - '0');
    } else if (c >= 'a' && c <= 'f') {
      digit = static_cast<uint32_t>(c - 'a' + 10);
    } else {
      return false;
    }
    value = value * 16 + digit;
  }
  return true;
}

// A string's contents from `at` (just after its opening quote): printable
// ASCII, with the escapes the log's JSON writer makes and no others (the
// short forms \" \\ \b \f \n \r \t; \u00xx for other control characters;
// \uxxxx for U+007F and above, a surrogate pair above U+FFFF). Returns the
// index just after the closing quote, or kRefused.
size_t ScanString(absl::string_view s, size_t at) {
  size_t i = at;
  while (i < s.size()) {
    while (i < s.size() && kClasses.plain[static_cast<unsigned char>(s[i])]) {
      ++i;
    }
    if (i >= s.size()) return kRefused;
    const char c = s[i];
    if (c == '"') return i + 1;
    if (c != '\\') return kRefused;  // not printable ASCII
    if (i + 1 >= s.size()) return kRefused;
    switch (s[i + 1]) {
      case '"':
      case '\\':
      case 'b':
      case 'f':
      case 'n':
      case 'r':
      case 't':
        i += 2;
        continue;
      case 'u':
        break;
      default:
        return kRefused;
    }
    uint32_t code = 0;
    if (!Hex4(s, i + 2, code)) return kRefused;
    i += 6;
    if (code >= 0xd800 && code <= 0xdbff) {  // must be a pair
      uint32_t low = 0;
      if (i + 1 >= s.size() || s[i] != '\\' || s[i + 1] != 'u' ||
          !Hex4(s, i + 2, low) || low < 0xdc00 || low > 0xdfff) {
        return kRefused;
      }
      i += 6;
      continue;
    }
    if (code >= 0xdc00 && code <= 0xdfff) return kRefused;  // lone low half
    // Written as themselves or as a short escape, never as \u.
    if (code == 0x08 || code == 0x09 || code == 0x0a || code == 0x0c ||
        code == 0x0d || (code >= 0x20 && code < 0x7f)) {
      return kRefused;
    }
  }
  return kRefused;
}

// An unsigned integer as the writer prints it (no sign, no leading zero, no
// fraction or exponent, at most 2^64 - 1). Returns the index after it, or
// kRefused.
size_t ScanUnsigned(absl::string_view s, size_t at, uint64_t& value) {
  if (at >= s.size() || !IsDigit(s[at])) return kRefused;
  if (s[at] == '0') {
    value = 0;
    return at + 1 < s.size() && IsDigit(s[at + 1]) ? kRefused : at + 1;
  }
  uint64_t v = 0;
  size_t i = at;
  for (; i < s.size() && IsDigit(s[i]); ++i) {
    const auto digit = static_cast<uint64_t>(s[i] - '0');
    if (v > (std::numeric_limits<uint64_t>::max() - digit) / 10) {
      return kRefused;
    }
    v = v * 10 + digit;
  }
  value = v;
  return i;
}

int Digits(absl::string_view s, size_t at, size_t n) {
  int v = 0;
  for (size_t k = at; k < at + n; ++k) {
    if (!IsDigit(s[k])) return -1;
    v = v * 10 + (s[k] - '0');
  }
  return v;
}

// "YYYY-MM-DDTHH:MM:SS.mmmZ" naming a real instant (no leap second), year
// 1000 to 9999: what absl's "%Y-%m-%dT%H:%M:%E3SZ" writes and reads back
// unchanged.
bool IsLineTime(absl::string_view t) {
  if (t.size() != kTimeChars || t[4] != '-' || t[7] != '-' || t[10] != 'T' ||
      t[13] != ':' || t[16] != ':' || t[19] != '.' || t[23] != 'Z') {
    return false;
  }
  const int year = Digits(t, 0, 4);
  const int month = Digits(t, 5, 2);
  const int day = Digits(t, 8, 2);
  const int hour = Digits(t, 11, 2);
  const int minute = Digits(t, 14, 2);
  const int second = Digits(t, 17, 2);
  const int millis = Digits(t, 20, 3);
  if (year < 1000 || month < 1 || month > 12 || day < 1 || hour < 0 ||
      hour > 23 || minute < 0 || minute > 59 || second < 0 || second > 59 ||
      millis < 0) {
    return false;
  }
  static constexpr int kDays[] = {31, 28, 31, 30, 31, 30,
                                  31, 31, 30, 31, 30, 31};
  const bool leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
  const int days = month == 2 && leap ? 29 : kDays[month - 1];
  return day <= days;
}

bool IsBase64UrlSignature(absl::string_view s) {
  if (s.size() != kSignatureChars) return false;
  int last = 0;
  for (char c : s) {
    if (c >= 'A' && c <= 'Z') {
      last = c - 'A';
    } else if (c >= 'a' && c <= 'z') {
      last = c - 'a' + 26;
    } else if (c >= '0' && c <= '9') {
      last = c - '0' + 52;
    } else if (c == '-') {
      last = 62;
    } else if (c == '_') {
      last = 63;
    } else {
      return false;
    }
  }
  return (last & 0x0f) == 0;  // the bits past the 64th byte are zero
}

// ---- The same rules through the JSON library ---------------------------

using Json = nlohmann::ordered_json;

bool IsStringMember(absl::string_view name) {
  const Member m = MemberNamed(name);
  return m != Member::kUnknown && m != Member::kSeq && m != Member::kCount;
}

absl::StatusOr<AuditLineInfo> ParseWithJsonOrThrow(absl::string_view line) {
  if (line.size() > kMaxAuditLineBytes) {
    return Broken(absl::StrCat("longer than ", kMaxAuditLineBytes, " bytes"));
  }
  for (char c : line) {
    const auto u = static_cast<unsigned char>(c);
    if (u < 0x20 || u >= 0x7f) {
      return Broken(
          "holds a byte that is not printable ASCII (signet escapes them)");
    }
  }
  Json j = Json::parse(line.begin(), line.end(), /*cb=*/nullptr,
                       /*allow_exceptions=*/false);
  if (j.is_discarded()) {
    return Broken("not valid JSON");
  }
  if (!j.is_object()) {
    return Broken("not a JSON object");
  }
  if (j.dump(-1, ' ', true, Json::error_handler_t::replace) != line) {
    return Broken(
        "not in the form signet writes (spacing, escaping, number form or a "
        "repeated member)");
  }
  if (j.size() < 4) {
    return Broken("too few members");
  }
  size_t index = 0;
  for (auto it = j.begin(); it != j.end(); ++it, ++index) {
    const std::string& name = it.key();
    if (index == 0 && name != "seq") {
      return Broken("the first member is not \"seq\"");
    }
    if (index == 1 && name != "time") {
      return Broken("the second member is not \"time\"");
    }
    if (index == 2 && name != "event") {
      return Broken("the third member is not \"event\"");
    }
    if (index + 1 == j.size() && name != "prev") {
      return Broken("the last member is not \"prev\"");
    }
    if (name == "seq" || name == "count") {
      if (!it.value().is_number_unsigned()) {
        return Broken(
            absl::StrCat("\"", name, "\" is not an unsigned integer"));
      }
    } else if (IsStringMember(name)) {
      if (!it.value().is_string()) {
        return Broken(absl::StrCat("\"", name, "\" is not a string"));
      }
    } else {
      return Broken(absl::StrCat("unknown member \"", name, "\""));
    }
  }

  AuditLineInfo info;
  info.seq = j["seq"].get<uint64_t>();
  if (info.seq == 0) {
    return Broken("seq is 0");
  }
  const std::string time = j["time"].get<std::string>();
  absl::Time t;
  std::string error;
  if (time.size() != kTimeChars ||
      !absl::ParseTime(kTimeFormat, time, absl::UTCTimeZone(), &t, &error) ||
      absl::FormatTime(kTimeFormat, t, absl::UTCTimeZone()) != time) {
    return Broken("\"time\" is not RFC 3339 UTC with milliseconds");
  }
  info.event = j["event"].get<std::string>();
  if (info.event.empty()) {
    return Broken("\"event\" is empty");
  }
  info.prev = j["prev"].get<std::string>();
  if (!IsHex64(info.prev)) {
    return Broken("\"prev\" is not 64 lower-case hex digits");
  }
  if (j.contains("kid")) {
    info.kid = j["kid"].get<std::string>();
  }
  if (info.event == "checkpoint") {
    for (const char* name : {"head", "count", "kid", "sig"}) {
      if (!j.contains(name)) {
        return Broken(absl::StrCat("checkpoint without \"", name, "\""));
      }
    }
    info.head = j["head"].get<std::string>();
    info.count = j["count"].get<uint64_t>();
    info.kid = j["kid"].get<std::string>();
    info.sig = j["sig"].get<std::string>();
    if (!IsHex64(info.head)) {
      return Broken("checkpoint \"head\" is not 64 lower-case hex digits");
    }
    std::optional<std::string> raw = base::StrictBase64UrlDecode(info.sig);
    if (!raw.has_value() || raw->size() != kSignatureBytes) {
      return Broken(
          "checkpoint \"sig\" is not base64url (no padding) of 64 bytes");
    }
  }
  return info;
}

}  // namespace

namespace audit_line_internal {

bool ScanCanonical(absl::string_view line, AuditLineView& view) {
  if (line.size() > kMaxAuditLineBytes || line.empty() || line[0] != '{') {
    return false;
  }
  AuditLineView v;
  absl::string_view time;
  uint64_t count = 0;
  absl::string_view head;
  absl::string_view sig;
  uint32_t seen = 0;
  size_t members = 0;
  Member last = Member::kUnknown;
  size_t i = 1;
  while (true) {
    if (i >= line.size() || line[i] != '"') return false;
    const size_t name_end = ScanString(line, i + 1);
    if (name_end == kRefused) return false;
    const Member m = MemberNamed(line.substr(i + 1, name_end - i - 2));
    if (m == Member::kUnknown || (seen & Bit(m)) != 0) return false;
    if ((members == 0) != (m == Member::kSeq) ||
        (members == 1) != (m == Member::kTime) ||
        (members == 2) != (m == Member::kEvent)) {
      return false;
    }
    seen |= Bit(m);
    i = name_end;
    if (i >= line.size() || line[i] != ':') return false;
    ++i;
    if (m == Member::kSeq || m == Member::kCount) {
      const size_t end =
          ScanUnsigned(line, i, m == Member::kSeq ? v.seq : count);
      if (end == kRefused) return false;
      i = end;
    } else {
      if (i >= line.size() || line[i] != '"') return false;
      const size_t end = ScanString(line, i + 1);
      if (end == kRefused) return false;
      const absl::string_view value = line.substr(i + 1, end - i - 2);
      switch (m) {
        case Member::kTime:
          time = value;
          break;
        case Member::kEvent:
          v.event = value;
          break;
        case Member::kKid:
          v.kid = value;
          break;
        case Member::kHead:
          head = value;
          break;
        case Member::kSig:
          sig = value;
          break;
        case Member::kPrev:
          v.prev = value;
          break;
        default:
          break;
      }
      i = end;
    }
    ++members;
    last = m;
    if (i >= line.size()) return false;
    if (line[i] == ',') {
      ++i;
      continue;
    }
    if (line[i] != '}') return false;
    ++i;
    break;
  }
  if (i != line.size() || members < 4 || last != Member::kPrev) return false;
  if (v.seq == 0 || !IsLineTime(time) || v.event.empty() || !IsHex64(v.prev)) {
    return false;
  }
  if (v.event == "checkpoint") {
    const uint32_t needed = Bit(Member::kHead) | Bit(Member::kCount) |
                            Bit(Member::kKid) | Bit(Member::kSig);
    if ((seen & needed) != needed || !IsHex64(head) ||
        !IsBase64UrlSignature(sig)) {
      return false;
    }
    v.head = head;
    v.count = count;
    v.sig = sig;
  }
  view = v;
  return true;
}

absl::StatusOr<AuditLineInfo> ParseWithJsonLibrary(absl::string_view line) {
  try {
    return ParseWithJsonOrThrow(line);
  } catch (const std::exception& e) {
    return absl::DataLossError(absl::StrCat("cannot be read: ", e.what()));
  }
}

}  // namespace audit_line_internal

absl::Status ScanAuditLine(absl::string_view line, AuditLineView& view) {
  if (audit_line_internal::ScanCanonical(line, view)) return absl::OkStatus();
  // Refused: the slow parse says why.
  SIGNET_RETURN_IF_ERROR(
      audit_line_internal::ParseWithJsonLibrary(line).status());
  // The two disagree (the tests hold them together): refuse all the same.
  return Broken("not in the form signet writes");
}

absl::StatusOr<AuditLineInfo> ParseAuditLine(absl::string_view line) {
  AuditLineView view;
  SIGNET_RETURN_IF_ERROR(ScanAuditLine(line, view));
  AuditLineInfo info;
  info.seq = view.seq;
  info.event = std::string(view.event);
  info.prev = std::string(view.prev);
  info.head = std::string(view.head);
  info.count = view.count;
  info.kid = std::string(view.kid);
  info.sig = std::string(view.sig);
  return info;
}

}  // namespace signet::server
