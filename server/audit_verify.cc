#include "server/audit_verify.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <deque>
#include <fstream>
#include <sstream>
#include <set>
#include <thread>
#include <vector>

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
#include "absl/strings/numbers.h"
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
      size_t nl = buffer_.find('\n', std::max(start_, scanned_));
      if (nl != std::string::npos) {
        std::string line = buffer_.substr(start_, nl - start_);
        // An offset, not an erase per line: erasing moved the rest of the
        // 64 KiB buffer for every line (12% of verification).
        start_ = nl + 1;
        scanned_ = start_;
        return std::optional<std::string>(std::move(line));
      }
      buffer_.erase(0, start_);
      start_ = 0;
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

  // Bytes after the last newline, once Next() has returned nullopt.
  const std::string& tail() const { return buffer_; }

 private:
  const int fd_;
  std::string chunk_ = std::string(64 * 1024, '\0');
  std::string buffer_;
  size_t start_ = 0;    // where the next line begins in buffer_
  size_t scanned_ = 0;  // searched for a newline up to here
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

// The expected last checkpoint (as copied from syslog), parsed; nullopt for
// none.
absl::StatusOr<std::optional<AuditLineInfo>> ParseExpected(
    absl::string_view expected_line) {
  if (expected_line.empty()) return std::optional<AuditLineInfo>();
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
  return std::optional<AuditLineInfo>(*std::move(info));
}

// Hashes of a segment's last lines kept for stitching: a segment after a
// write failure continues from the last durable line of the one before,
// which lies at most one write batch (plus a checkpoint) before its end.
constexpr size_t kStitchLines = 8192;

// What one segment proves on its own; the stitching checks the rest.
struct SegmentProof {
  std::string path;
  uint64_t first_seq = 0;
  std::string first_prev;
  std::string first_event;
  uint64_t last_seq = 0;  // first_seq - 1 for an empty file
  std::deque<std::pair<uint64_t, std::string>> tail;  // (seq, hash hex)
  std::vector<uint64_t> checkpoints;
  // (seq, kid) of the checkpoints and of the "audit_key" lines that
  // introduce keys, for the keyring's rule.
  std::vector<std::pair<uint64_t, std::string>> checkpoint_kids;
  std::vector<std::pair<uint64_t, std::string>> introduced_kids;
  bool expected_seen = false;
};

// Verifies one file: every line well-formed, seq consecutive from its first
// line, each prev the hash of the line before (line 1 of a chain: zeros),
// checkpoints (head, count, signature), and the expected checkpoint if the
// file holds its seq.
absl::StatusOr<SegmentProof> VerifySegment(
    const std::string& path, const hsm::PublicKey* checkpoint_key,
    const std::map<std::string, hsm::PublicKey>* keyring,
    const std::optional<AuditLineInfo>& expected,
    absl::string_view expected_line) {
  int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
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

  SegmentProof proof;
  proof.path = path;
  std::string prev_hash;
  uint64_t count = 0;
  LineReader reader(fd);
  while (true) {
    // Lines are named by their seq: the line this one should be.
    const uint64_t n = count == 0 ? 1 : proof.last_seq + 1;
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
    absl::StatusOr<AuditLineInfo> info = ParseAuditLine(line);
    if (!info.ok()) {
      return Broken(absl::StrCat("audit log ", path, ": line ", n, ": ",
                                 info.status().message()));
    }
    // The first line of a segment that continues another (a "segment"
    // line) starts where it says; any other file starts a chain at 1.
    const bool continues =
        count == 0 && info->event == "segment";
    const uint64_t want = continues ? info->seq : n;
    auto broken = [&](absl::string_view why) {
      return Broken(
          absl::StrCat("audit log ", path, ": line ", want, ": ", why));
    };
    if (info->seq != want) {
      return broken(absl::StrCat(
          "seq is ", info->seq, ", expected ", want,
          info->seq > want ? " (lines are missing)" : " (lines are repeated)"));
    }
    if (count == 0) {
      proof.first_seq = info->seq;
      proof.first_prev = info->prev;
      proof.first_event = info->event;
      if (!continues && info->prev != kZeroHash) {
        return broken(
            "prev is not 64 zeros (the file does not start a chain)");
      }
    } else if (info->prev != prev_hash) {
      return broken(absl::StrCat("prev does not match the hash of line ",
                                 want - 1, " (line ", want - 1,
                                 " or this line was changed)"));
    }
    if (info->event == "checkpoint") {
      if (count == 0 || info->head != prev_hash) {
        return broken(absl::StrCat(
            "checkpoint head does not match the hash of line ", want - 1));
      }
      if (info->count != want - 1) {
        return broken(absl::StrCat("checkpoint count is ", info->count,
                                   ", expected ", want - 1));
      }
      const hsm::PublicKey* key = checkpoint_key;
      if (keyring != nullptr) {
        auto it = keyring->find(info->kid);
        if (it == keyring->end()) {
          return broken(absl::StrCat(
              "checkpoint by audit key ", info->kid,
              ", which is not in the keyring (an unknown or forged key)"));
        }
        key = &it->second;
      }
      proof.checkpoint_kids.emplace_back(want, info->kid);
      if (key != nullptr) {
        absl::StatusOr<std::string> digest =
            CheckpointDigest(info->seq, info->head);
        if (!digest.ok()) {
          return digest.status();
        }
        std::string signature;
        absl::WebSafeBase64Unescape(info->sig, &signature);
        absl::Status verified = key->VerifyDigest(
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
      proof.checkpoints.push_back(want);
    }
    if (info->event == "audit_key") {
      proof.introduced_kids.emplace_back(want, info->kid);
    }
    if (expected.has_value() && expected->seq == want) {
      if (line != expected_line) {
        return broken(
            "differs from the checkpoint recorded off-host (the chain was "
            "rewritten)");
      }
      proof.expected_seen = true;
    }
    absl::StatusOr<std::string> hash = hsm::Sha256(line);
    if (!hash.ok()) {
      return hash.status();
    }
    prev_hash = absl::BytesToHexString(*hash);
    proof.tail.emplace_back(want, prev_hash);
    if (proof.tail.size() > kStitchLines) proof.tail.pop_front();
    proof.last_seq = want;
    ++count;
  }
  if (count == 0) {
    proof.first_seq = 1;
    proof.last_seq = 0;
  }
  return proof;
}

// The files of the log at `path`: its closed segments in order of their
// first seq, then `path` itself if it exists. `path` may also be a
// directory holding one log's segments.
absl::StatusOr<std::vector<std::string>> SegmentFiles(absl::string_view path) {
  std::string base(path);
  std::string dir;
  struct stat st;
  const bool is_dir = stat(base.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
  std::string prefix;
  if (is_dir) {
    dir = base;
  } else {
    const size_t slash = base.rfind('/');
    dir = slash == std::string::npos ? std::string(".")
          : slash == 0               ? std::string("/")
                                     : base.substr(0, slash);
    prefix = absl::StrCat(
        slash == std::string::npos ? base : base.substr(slash + 1), ".");
  }
  std::vector<std::pair<uint64_t, std::string>> closed;
  std::set<std::string> bases;
  if (DIR* d = opendir(dir.c_str()); d != nullptr) {
    while (struct dirent* entry = readdir(d)) {
      absl::string_view name(entry->d_name);
      if (name.size() <= 21 || name[name.size() - 21] != '.') continue;
      absl::string_view digits = name.substr(name.size() - 20);
      if (!std::all_of(digits.begin(), digits.end(), absl::ascii_isdigit)) {
        continue;
      }
      absl::string_view log_name = name.substr(0, name.size() - 21);
      if (!prefix.empty() && absl::StrCat(log_name, ".") != prefix) continue;
      uint64_t first = 0;
      if (!absl::SimpleAtoi(digits, &first)) continue;
      bases.insert(std::string(log_name));
      closed.emplace_back(first, absl::StrCat(dir, "/", name));
    }
    closedir(d);
  }
  if (is_dir) {
    if (bases.size() > 1) {
      return absl::InvalidArgumentError(absl::StrCat(
          "audit log directory ", base,
          " holds the segments of more than one log; name the log's file"));
    }
    if (bases.empty()) {
      return absl::NotFoundError(absl::StrCat(
          "audit log directory ", base, " holds no closed segment"));
    }
    base = absl::StrCat(dir, "/", *bases.begin());
  }
  std::sort(closed.begin(), closed.end());
  std::vector<std::string> files;
  for (auto& [first, file] : closed) files.push_back(std::move(file));
  if (access(base.c_str(), F_OK) == 0 || files.empty()) {
    files.push_back(base);  // a missing file with no segment: NOT_FOUND later
  }
  return files;
}

absl::StatusOr<AuditVerifyResult> Verify(
    absl::string_view path, const hsm::PublicKey* checkpoint_key,
    absl::string_view expected_copied, int threads,
    const std::map<std::string, hsm::PublicKey>* keyring) {
  const absl::string_view expected_line = ExtractLine(expected_copied);
  absl::StatusOr<std::optional<AuditLineInfo>> expected =
      ParseExpected(expected_copied.empty() ? absl::string_view()
                                            : expected_line);
  if (!expected.ok()) return expected.status();
  absl::StatusOr<std::vector<std::string>> files = SegmentFiles(path);
  if (!files.ok()) return files.status();

  // Each segment on its own, in parallel; then the seams, in order.
  const size_t n = files->size();
  std::vector<absl::StatusOr<SegmentProof>> proofs(
      n, absl::StatusOr<SegmentProof>(absl::UnknownError("not verified")));
  std::atomic<size_t> next{0};
  auto work = [&] {
    for (size_t i = next.fetch_add(1); i < n; i = next.fetch_add(1)) {
      proofs[i] = VerifySegment((*files)[i], checkpoint_key, keyring,
                                *expected, expected_line);
    }
  };
  const size_t workers = std::max<size_t>(
      1, std::min<size_t>(n, threads > 0 ? static_cast<size_t>(threads)
                                         : std::thread::hardware_concurrency()));
  std::vector<std::thread> pool;
  for (size_t w = 1; w < workers; ++w) pool.emplace_back(work);
  work();
  for (std::thread& t : pool) t.join();

  AuditVerifyResult result;
  result.segments = n;
  std::vector<uint64_t> checkpoints;
  std::vector<std::pair<uint64_t, std::string>> checkpoint_kids;
  std::vector<std::pair<uint64_t, std::string>> introduced_kids;
  bool expected_seen = false;
  const SegmentProof* before = nullptr;
  for (size_t i = 0; i < n; ++i) {
    if (!proofs[i].ok()) return proofs[i].status();
    const SegmentProof& proof = *proofs[i];
    if (before == nullptr) {
      result.first_seq = proof.first_seq;
    } else {
      auto seam = [&](absl::string_view why) {
        return Broken(absl::StrCat("audit log ", proof.path, ": line ",
                                   proof.first_seq, ": ", why));
      };
      if (proof.first_event != "segment") {
        return seam(absl::StrCat("the segment after ", before->path,
                                 " does not start with a \"segment\" line"));
      }
      const uint64_t from = proof.first_seq - 1;
      if (from > before->last_seq) {
        return seam(absl::StrCat("lines ", before->last_seq + 1, " to ", from,
                                 " are missing between ", before->path,
                                 " and this segment"));
      }
      auto held = std::find_if(
          before->tail.begin(), before->tail.end(),
          [from](const auto& line) { return line.first == from; });
      if (held == before->tail.end()) {
        return seam(absl::StrCat("it continues from line ", from,
                                 ", which ", before->path,
                                 " does not hold among its last lines"));
      }
      if (held->second != proof.first_prev) {
        return seam(absl::StrCat("prev does not match the hash of line ", from,
                                 " in ", before->path,
                                 " (a segment was replaced or changed)"));
      }
      // Lines after `from` in the segment before were never durable: a
      // write or fdatasync failed there, and their calls were refused.
      result.superseded_lines += before->last_seq - from;
      while (!checkpoints.empty() && checkpoints.back() > from) {
        checkpoints.pop_back();
      }
    }
    checkpoints.insert(checkpoints.end(), proof.checkpoints.begin(),
                       proof.checkpoints.end());
    for (const auto& entry : proof.checkpoint_kids) {
      while (!checkpoint_kids.empty() &&
             checkpoint_kids.back().first >= entry.first) {
        checkpoint_kids.pop_back();  // superseded
      }
      checkpoint_kids.push_back(entry);
    }
    for (const auto& entry : proof.introduced_kids) {
      while (!introduced_kids.empty() &&
             introduced_kids.back().first >= entry.first) {
        introduced_kids.pop_back();
      }
      introduced_kids.push_back(entry);
    }
    expected_seen = expected_seen || proof.expected_seen;
    result.last_seq = proof.last_seq;
    before = &proof;
  }
  result.lines = result.last_seq + 1 - result.first_seq;
  // With a keyring: from the first "audit_key" line on, a checkpoint's key
  // must have been introduced before it (a key that appeared without an
  // introduction was slipped into the keyring).
  if (keyring != nullptr && !introduced_kids.empty()) {
    std::set<std::string> introduced;
    size_t next_intro = 0;
    for (const auto& [seq, kid] : checkpoint_kids) {
      while (next_intro < introduced_kids.size() &&
             introduced_kids[next_intro].first < seq) {
        introduced.insert(introduced_kids[next_intro++].second);
      }
      if (seq > introduced_kids.front().first && !introduced.contains(kid)) {
        return Broken(absl::StrCat(
            "audit log ", path, ": line ", seq, ": checkpoint by audit key ",
            kid, ", which no audit_key line before it introduced"));
      }
    }
  }
  result.checkpoints = checkpoints.size();
  result.last_checkpoint_seq = checkpoints.empty() ? 0 : checkpoints.back();

  if (expected->has_value() && !expected_seen) {
    const uint64_t seq = (*expected)->seq;
    if (seq < result.first_seq) {
      return Broken(absl::StrCat(
          "audit log ", path, ": the checkpoint at line ", seq,
          " recorded off-host is before the first line verified (",
          result.first_seq, "): verify the segments that hold it"));
    }
    return Broken(absl::StrCat("audit log ", path, ": the file ends at line ",
                               result.last_seq,
                               ", before the checkpoint at line ", seq,
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
    result = Verify(path, checkpoint_key, expected_last_checkpoint,
                    options.threads, options.keyring);
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
        "audit log ", path, ": lines ",
        result->last_seq - result->uncovered_lines() + 1, " to ",
        result->last_seq, " are covered by no checkpoint (only the chain "
        "protects them: they could have been cut off or appended)"));
  }
  return result;
}

absl::StatusOr<std::map<std::string, hsm::PublicKey>> ReadAuditKeyring(
    const std::string& path) {
  std::ifstream in(path);
  if (!in) {
    return absl::NotFoundError(
        absl::StrCat("audit keyring ", path, ": cannot be read"));
  }
  std::stringstream content;
  content << in.rdbuf();
  const std::string text = content.str();
  const std::string kBegin = "-----BEGIN PUBLIC KEY-----";
  const std::string kEnd = "-----END PUBLIC KEY-----";
  std::map<std::string, hsm::PublicKey> keys;
  for (size_t at = text.find(kBegin); at != std::string::npos;
       at = text.find(kBegin, at + 1)) {
    const size_t end = text.find(kEnd, at);
    if (end == std::string::npos) {
      return absl::InvalidArgumentError(
          absl::StrCat("audit keyring ", path, ": a key block has no end"));
    }
    absl::StatusOr<hsm::PublicKey> key = hsm::PublicKey::FromSpkiPem(
        absl::string_view(text).substr(at, end + kEnd.size() - at));
    if (!key.ok()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "audit keyring ", path, ": ", key.status().message()));
    }
    absl::StatusOr<std::string> kid = key->JwkThumbprint();
    if (!kid.ok()) return kid.status();
    keys.emplace(*kid, *std::move(key));
  }
  if (keys.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat("audit keyring ", path, ": holds no public key"));
  }
  return keys;
}

}  // namespace signet::server
