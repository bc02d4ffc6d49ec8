#include "server/audit_verify.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <exception>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "hsm/algorithm.h"
#include "hsm/digest.h"
#include "server/audit_log.h"
#include "server/scoped_fd.h"

namespace signet::server {
namespace {

using Json = nlohmann::ordered_json;


constexpr absl::string_view kZeroHash =
    "0000000000000000000000000000000000000000000000000000000000000000";
constexpr size_t kSignatureBytes = 64;  // ES256 r||s
constexpr absl::string_view kTimeFormat = "%Y-%m-%dT%H:%M:%E3SZ";

bool IsHex64(absl::string_view s) {
  if (s.size() != 64) {
    return false;
  }
  for (char c : s) {
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) {
      return false;
    }
  }
  return true;
}

bool IsStringMember(absl::string_view name) {
  return name == "time" || name == "event" || name == "caller" ||
         name == "scope" || name == "kid" || name == "alg" ||
         name == "input_sha256" || name == "result" || name == "detail" ||
         name == "head" || name == "sig" || name == "prev";
}

absl::Status Broken(absl::string_view why) { return absl::DataLossError(why); }

absl::StatusOr<AuditLineInfo> ParseAuditLineOrThrow(absl::string_view line) {
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
  if (!absl::ParseTime(kTimeFormat, time, absl::UTCTimeZone(), &t, &error) ||
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
    std::string raw;
    if (!absl::WebSafeBase64Unescape(info.sig, &raw) ||
        raw.size() != kSignatureBytes ||
        absl::WebSafeBase64Escape(raw) != info.sig) {
      return Broken(
          "checkpoint \"sig\" is not base64url (no padding) of 64 bytes");
    }
  }
  return info;
}

// Reads a file line by line in large chunks, bounding each line's length.
class LineReader {
 public:
  explicit LineReader(int fd) : fd_(fd) {}

  // The next complete line without its newline, std::nullopt at the end of
  // the file (then `tail()` holds any bytes after the last newline), or an
  // error: UNAVAILABLE for a read error, DATA_LOSS (no line number) for a
  // line over kMaxAuditLineBytes.
  absl::StatusOr<std::optional<std::string>> Next() {
    while (true) {
      size_t nl = buffer_.find('\n', scanned_);
      if (nl != std::string::npos) {
        std::string line = buffer_.substr(0, nl);
        buffer_.erase(0, nl + 1);
        scanned_ = 0;
        return std::optional<std::string>(std::move(line));
      }
      scanned_ = buffer_.size();
      if (buffer_.size() > kMaxAuditLineBytes) {
        return absl::DataLossError(
            absl::StrCat("longer than ", kMaxAuditLineBytes, " bytes"));
      }
      if (eof_) {
        return std::optional<std::string>();
      }
      ssize_t n = read(fd_, chunk_.data(), chunk_.size());
      if (n < 0 && errno == EINTR) {
        continue;
      }
      if (n < 0) {
        return absl::UnavailableError(
            absl::StrCat("read failed: ", std::strerror(errno)));
      }
      if (n == 0) {
        eof_ = true;
      } else {
        buffer_.append(chunk_.data(), static_cast<size_t>(n));
      }
    }
  }

  const std::string& tail() const { return buffer_; }

 private:
  const int fd_;
  std::string chunk_ = std::string(64 * 1024, '\0');
  std::string buffer_;
  size_t scanned_ = 0;
  bool eof_ = false;
};

// The checkpoint line in what an operator copied from syslog: from the first
// '{' on, trailing whitespace removed.
absl::string_view ExtractLine(absl::string_view copied) {
  size_t brace = copied.find('{');
  if (brace == absl::string_view::npos) {
    return absl::StripAsciiWhitespace(copied);
  }
  return absl::StripTrailingAsciiWhitespace(copied.substr(brace));
}

absl::StatusOr<AuditVerifyResult> Verify(absl::string_view path,
                                         const hsm::PublicKey* checkpoint_key,
                                         absl::string_view expected_copied) {
  std::optional<AuditLineInfo> expected;
  const absl::string_view expected_line = ExtractLine(expected_copied);
  if (!expected_copied.empty()) {
    absl::StatusOr<AuditLineInfo> info = ParseAuditLine(expected_line);
    if (!info.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat("the expected last checkpoint is not an audit line: ",
                       info.status().message()));
    }
    if (info->event != "checkpoint") {
      return absl::InvalidArgumentError(
          absl::StrCat("the expected last checkpoint is a \"", info->event,
                       "\" line, not a checkpoint"));
    }
    expected = *std::move(info);
  }

  const std::string path_string(path);
  int fd = open(path_string.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    const int err = errno;
    std::string message =
        absl::StrCat("audit log ", path, ": ", std::strerror(err));
    if (err == ENOENT || err == ENOTDIR) {
      return absl::NotFoundError(message);
    }
    if (err == EACCES || err == EPERM) {
      return absl::PermissionDeniedError(message);
    }
    return absl::UnavailableError(message);
  }
  ScopedFd owned_fd(fd);

  AuditVerifyResult result;
  std::string prev_hash(kZeroHash);
  bool expected_seen = false;
  LineReader reader(fd);
  while (true) {
    const uint64_t n = result.lines + 1;
    absl::StatusOr<std::optional<std::string>> next = reader.Next();
    if (!next.ok()) {
      return absl::Status(next.status().code(),
                          absl::StrCat("audit log ", path, ": line ", n, ": ",
                                       next.status().message()));
    }
    if (!next->has_value()) {
      if (!reader.tail().empty()) {
        return Broken(absl::StrCat(
            "audit log ", path, ": line ", n,
            ": incomplete (no newline at the end of the file: a write was cut "
            "short, or the file is being written)"));
      }
      break;
    }
    const std::string& line = **next;
    auto broken = [&](absl::string_view why) {
      return Broken(absl::StrCat("audit log ", path, ": line ", n, ": ", why));
    };

    absl::StatusOr<AuditLineInfo> info = ParseAuditLine(line);
    if (!info.ok()) {
      return broken(info.status().message());
    }
    if (info->seq != n) {
      return broken(absl::StrCat(
          "seq is ", info->seq, ", expected ", n,
          info->seq > n ? " (lines are missing)" : " (lines are repeated)"));
    }
    if (info->prev != prev_hash) {
      return broken(
          n == 1
              ? std::string("prev is not 64 zeros (the file does not start "
                            "a chain)")
              : absl::StrCat("prev does not match the hash of line ", n - 1,
                             " (line ", n - 1, " or this line was changed)"));
    }
    if (info->event == "checkpoint") {
      if (info->head != prev_hash) {
        return broken(absl::StrCat(
            "checkpoint head does not match the hash of line ", n - 1));
      }
      if (info->count != n - 1) {
        return broken(absl::StrCat("checkpoint count is ", info->count,
                                   ", expected ", n - 1));
      }
      if (checkpoint_key != nullptr) {
        absl::StatusOr<std::string> digest =
            CheckpointDigest(info->seq, info->head);
        if (!digest.ok()) {
          return digest.status();
        }
        std::string signature;
        absl::WebSafeBase64Unescape(info->sig, &signature);
        absl::Status verified = checkpoint_key->VerifyDigest(
            hsm::SignatureAlgorithm::kEcdsaP256Sha256, *digest, signature);
        if (absl::IsInvalidArgument(verified)) {
          return broken(absl::StrCat(
              "checkpoint signature does not verify with the given key (",
              verified.message(), ")"));
        }
        if (!verified.ok()) {
          return verified;
        }
      }
      ++result.checkpoints;
      result.last_checkpoint_seq = n;
    }
    if (expected.has_value() && expected->seq == n) {
      if (line != expected_line) {
        return broken(
            "differs from the checkpoint recorded off-host (the chain was "
            "rewritten)");
      }
      expected_seen = true;
    }
    absl::StatusOr<std::string> hash = hsm::Sha256(line);
    if (!hash.ok()) {
      return hash.status();
    }
    prev_hash = absl::BytesToHexString(*hash);
    result.lines = n;
  }

  if (expected.has_value() && !expected_seen) {
    return Broken(absl::StrCat("audit log ", path, ": the file ends at line ",
                               result.lines, ", before the checkpoint at line ",
                               expected->seq,
                               " recorded off-host (the tail was cut off)"));
  }
  return result;
}

}  // namespace

absl::StatusOr<AuditLineInfo> ParseAuditLine(absl::string_view line) {
  try {
    return ParseAuditLineOrThrow(line);
  } catch (const std::exception& e) {
    return absl::DataLossError(absl::StrCat("cannot be read: ", e.what()));
  }
}

absl::StatusOr<AuditVerifyResult> VerifyAuditLog(
    absl::string_view path, const hsm::PublicKey* checkpoint_key,
    absl::string_view expected_last_checkpoint,
    const AuditVerifyOptions& options) {
  absl::StatusOr<AuditVerifyResult> result;
  try {
    result = Verify(path, checkpoint_key, expected_last_checkpoint);
  } catch (const std::exception& e) {
    return absl::InternalError(
        absl::StrCat("audit log ", path, ": verification failed: ", e.what()));
  }
  if (!result.ok()) return result;
  if (result->lines == 0 && !options.allow_empty) {
    return Broken(absl::StrCat(
        "audit log ", path,
        ": the file is empty (a log that should hold lines was truncated or "
        "replaced; allow an empty file only when none were expected)"));
  }
  if (options.require_covered && result->uncovered_lines() > 0) {
    return Broken(absl::StrCat(
        "audit log ", path, ": lines ", result->last_checkpoint_seq + 1,
        " to ", result->lines, " are covered by no checkpoint (only the chain "
        "protects them: they could have been cut off or appended)"));
  }
  return result;
}

}  // namespace signet::server
