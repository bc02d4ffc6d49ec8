#include "server/audit_verify.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <exception>
#include <fstream>
#include <optional>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "base/base64url.h"
#include "base/file.h"
#include "base/status_macros.h"
#include "crypto/digest.h"
#include "hsm/algorithm.h"
#include "jose/jwk.h"
#include "server/audit_log.h"
#include "server/scoped_fd.h"

namespace signet::server {
namespace {

constexpr absl::string_view kZeroHash =
    "0000000000000000000000000000000000000000000000000000000000000000";

absl::Status Broken(absl::string_view why) { return absl::DataLossError(why); }

// Reads a file line by line in large chunks, bounding each line's length.
// Lines are views into its buffer, valid until the next call.
class LineReader {
 public:
  explicit LineReader(int fd)
      : fd_(fd), buffer_(kChunk + kMaxAuditLineBytes + 1) {}

  // Sets `line` to the next complete line without its newline, or `done` at
  // the end of the file (then `tail()` holds any bytes after the last
  // newline). UNAVAILABLE for a read error, DATA_LOSS (no line number) for a
  // line over kMaxAuditLineBytes.
  absl::Status Next(absl::string_view& line, bool& done) {
    done = false;
    while (true) {
      const void* nl =
          std::memchr(buffer_.data() + scanned_, '\n', end_ - scanned_);
      if (nl != nullptr) {
        const size_t at = static_cast<const char*>(nl) - buffer_.data();
        line = absl::string_view(buffer_.data() + start_, at - start_);
        start_ = scanned_ = at + 1;
        return absl::OkStatus();
      }
      scanned_ = end_;
      if (end_ - start_ > kMaxAuditLineBytes) {
        return absl::DataLossError(
            absl::StrCat("longer than ", kMaxAuditLineBytes, " bytes"));
      }
      if (eof_) {
        done = true;
        return absl::OkStatus();
      }
      // The partial line (at most kMaxAuditLineBytes) to the front, so a
      // whole chunk fits after it.
      if (start_ > 0) {
        std::memmove(buffer_.data(), buffer_.data() + start_, end_ - start_);
        end_ -= start_;
        scanned_ = end_;
        start_ = 0;
      }
      const ssize_t n = read(fd_, buffer_.data() + end_, buffer_.size() - end_);
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) {
        return absl::UnavailableError(
            absl::StrCat("read failed: ", std::strerror(errno)));
      }
      if (n == 0) {
        eof_ = true;
      } else {
        end_ += static_cast<size_t>(n);
      }
    }
  }

  // Bytes after the last newline, once Next() has said `done`.
  absl::string_view tail() const {
    return absl::string_view(buffer_.data() + start_, end_ - start_);
  }

 private:
  static constexpr size_t kChunk = 1 << 20;
  const int fd_;
  std::vector<char> buffer_;
  size_t start_ = 0;    // where the next line begins
  size_t scanned_ = 0;  // searched for a newline up to here
  size_t end_ = 0;      // bytes read into buffer_
  bool eof_ = false;
};

using Digest = crypto::Sha256Hasher::Digest;

// Whether `hex` (64 lower-case hex digits, already checked) spells `digest`.
bool HexEquals(absl::string_view hex, const Digest& digest) {
  static constexpr char kHex[] = "0123456789abcdef";
  for (size_t k = 0; k < digest.size(); ++k) {
    if (hex[2 * k] != kHex[digest[k] >> 4] ||
        hex[2 * k + 1] != kHex[digest[k] & 0x0f]) {
      return false;
    }
  }
  return true;
}

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
  // The hash of the line the next segment continues from, if this segment
  // holds it (kept_seq is 0 when there is no next segment or it does not
  // say; stitching then reports the break).
  uint64_t kept_seq = 0;
  std::optional<Digest> kept_hash;
  std::vector<uint64_t> checkpoints;
  // (seq, kid) of the checkpoints and of the "audit_key" lines that
  // introduce keys, for the keyring's rule.
  std::vector<std::pair<uint64_t, std::string>> checkpoint_kids;
  std::vector<std::pair<uint64_t, std::string>> introduced_kids;
  bool expected_seen = false;

  // The hash of line `seq`, if it was kept and is among the segment's last
  // kStitchLines lines.
  const Digest* HashOf(uint64_t seq) const {
    if (!kept_hash.has_value() || seq != kept_seq ||
        last_seq - seq >= kStitchLines) {
      return nullptr;
    }
    return &*kept_hash;
  }
};

// The seq of the line that the segment at `path` continues from (the one
// before its first line, when that is a "segment" line), or 0 if it starts
// a chain or its first line cannot be read (verifying it says why).
uint64_t ContinuesFrom(const std::string& path) {
  const int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  if (fd < 0) return 0;
  ScopedFd owned_fd(fd);
  struct stat st;
  if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) return 0;
  LineReader reader(fd);
  absl::string_view line;
  bool done = false;
  AuditLineView first;
  if (!reader.Next(line, done).ok() || done ||
      !ScanAuditLine(line, first).ok() || first.event != "segment") {
    return 0;
  }
  return first.seq - 1;
}

// Verifies one file: every line well-formed, seq consecutive from its first
// line, each prev the hash of the line before (line 1 of a chain: zeros),
// checkpoints (head, count, signature), and the expected checkpoint if the
// file holds its seq.
absl::StatusOr<SegmentProof> VerifySegment(
    const std::string& path, const hsm::PublicKey* checkpoint_key,
    const std::map<std::string, hsm::PublicKey>* keyring,
    const std::optional<AuditLineInfo>& expected,
    absl::string_view expected_line, uint64_t keep_seq) {
  // O_NONBLOCK: a FIFO named like a log must not hang the verifier.
  int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY);
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
  struct stat st;
  if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    return Broken(absl::StrCat("audit log ", path,
                               ": not a regular file (signet writes its log "
                               "to regular files)"));
  }
  // Read once, front to back.
  (void)posix_fadvise(fd, 0, 0, POSIX_FADV_SEQUENTIAL);

  SegmentProof proof;
  proof.path = path;
  crypto::Sha256Hasher hasher;
  Digest prev_hash{};
  uint64_t count = 0;
  LineReader reader(fd);
  while (true) {
    // Lines are named by their seq: the line this one should be.
    const uint64_t n = count == 0 ? 1 : proof.last_seq + 1;
    absl::string_view line;
    bool done = false;
    if (absl::Status read = reader.Next(line, done); !read.ok()) {
      return absl::Status(
          read.code(),
          absl::StrCat("audit log ", path, ": line ", n, ": ", read.message()));
    }
    if (done) {
      if (!reader.tail().empty()) {
        return Broken(absl::StrCat(
            "audit log ", path, ": line ", n,
            ": incomplete (no newline at the end of the file: a write was cut "
            "short, or the file is being written)"));
      }
      break;
    }
    AuditLineView info;
    if (absl::Status scanned = ScanAuditLine(line, info); !scanned.ok()) {
      return Broken(absl::StrCat("audit log ", path, ": line ", n, ": ",
                                 scanned.message()));
    }
    // The first line of a segment that continues another (a "segment"
    // line) starts where it says; any other file starts a chain at 1.
    const bool continues = count == 0 && info.event == "segment";
    const uint64_t want = continues ? info.seq : n;
    auto broken = [&](absl::string_view why) {
      return Broken(
          absl::StrCat("audit log ", path, ": line ", want, ": ", why));
    };
    if (info.seq != want) {
      return broken(absl::StrCat(
          "seq is ", info.seq, ", expected ", want,
          info.seq > want ? " (lines are missing)" : " (lines are repeated)"));
    }
    if (count == 0) {
      proof.first_seq = info.seq;
      proof.first_prev = std::string(info.prev);
      proof.first_event = std::string(info.event);
      if (!continues && info.prev != kZeroHash) {
        return broken("prev is not 64 zeros (the file does not start a chain)");
      }
    } else if (!HexEquals(info.prev, prev_hash)) {
      return broken(absl::StrCat("prev does not match the hash of line ",
                                 want - 1, " (line ", want - 1,
                                 " or this line was changed)"));
    }
    if (info.event == "checkpoint") {
      if (count == 0 || !HexEquals(info.head, prev_hash)) {
        return broken(absl::StrCat(
            "checkpoint head does not match the hash of line ", want - 1));
      }
      if (info.count != want - 1) {
        return broken(absl::StrCat("checkpoint count is ", info.count,
                                   ", expected ", want - 1));
      }
      std::string kid(info.kid);
      const hsm::PublicKey* key = checkpoint_key;
      if (keyring != nullptr) {
        auto it = keyring->find(kid);
        if (it == keyring->end()) {
          return broken(absl::StrCat(
              "checkpoint by audit key ", kid,
              ", which is not in the keyring (an unknown or forged key)"));
        }
        key = &it->second;
      }
      proof.checkpoint_kids.emplace_back(want, std::move(kid));
      if (key != nullptr) {
        SIGNET_ASSIGN_OR_RETURN(std::string digest,
                                CheckpointDigest(info.seq, info.head));
        // The line's reader checked that "sig" is strict base64url.
        const std::string signature =
            base::StrictBase64UrlDecode(info.sig).value_or("");
        absl::Status verified = key->VerifyDigest(
            hsm::SignatureAlgorithm::kEcdsaP256Sha256, digest, signature);
        if (absl::IsInvalidArgument(verified)) {
          return broken(absl::StrCat(
              "checkpoint signature does not verify with the given key (",
              verified.message(), ")"));
        }
        SIGNET_RETURN_IF_ERROR(verified);
      }
      proof.checkpoints.push_back(want);
    }
    if (info.event == "audit_key") {
      proof.introduced_kids.emplace_back(want, std::string(info.kid));
    }
    if (expected.has_value() && expected->seq == want) {
      if (line != expected_line) {
        return broken(
            "differs from the checkpoint recorded off-host (the chain was "
            "rewritten)");
      }
      proof.expected_seen = true;
    }
    SIGNET_RETURN_IF_ERROR(hasher.Hash(line, prev_hash));
    if (want == keep_seq) {
      proof.kept_seq = want;
      proof.kept_hash = prev_hash;
    }
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
    dir = base::ParentDirectory(base);
    prefix = absl::StrCat(base::BaseName(base), ".");
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
      return absl::NotFoundError(absl::StrCat("audit log directory ", base,
                                              " holds no closed segment"));
    }
    base = absl::StrCat(dir, "/", *bases.begin());
  }
  std::sort(closed.begin(), closed.end());
  std::vector<std::string> files;
  for (auto& [first, file] : closed) files.push_back(std::move(file));
  if (access(base.c_str(), F_OK) == 0 || files.empty()) {
    files.push_back(base);  // a missing file with no segment: NOT_FOUND later
  } else if (!is_dir) {
    // Closed segments beside a current one that is gone: cutting the log
    // back to a closed segment would otherwise leave no trace.
    return absl::DataLossError(absl::StrCat(
        "audit log ", base,
        ": the current segment does not exist, only closed segments beside "
        "it (the log was cut back to a closed segment, or signetd stopped "
        "between closing one and opening the next); to check the closed "
        "segments alone, give their directory"));
  }
  return files;
}

absl::StatusOr<AuditVerifyResult> Verify(
    absl::string_view path, const hsm::PublicKey* checkpoint_key,
    absl::string_view expected_copied, int threads,
    const std::map<std::string, hsm::PublicKey>* keyring, bool allow_unvouched,
    const std::string& first_kid) {
  const absl::string_view expected_line = ExtractLine(expected_copied);
  SIGNET_ASSIGN_OR_RETURN(
      std::optional<AuditLineInfo> expected,
      ParseExpected(expected_copied.empty() ? absl::string_view()
                                            : expected_line));
  SIGNET_ASSIGN_OR_RETURN(std::vector<std::string> files, SegmentFiles(path));

  // Each segment on its own, in parallel; then the seams, in order.
  const size_t n = files.size();
  std::vector<absl::StatusOr<SegmentProof>> proofs(
      n, absl::StatusOr<SegmentProof>(absl::UnknownError("not verified")));
  // Where each segment's successor continues from: the one line hash each
  // segment keeps for the seam.
  std::vector<uint64_t> keep(n, 0);
  for (size_t i = 0; i + 1 < n; ++i) keep[i] = ContinuesFrom(files[i + 1]);
  std::atomic<size_t> next{0};
  auto work = [&] {
    for (size_t i = next.fetch_add(1); i < n; i = next.fetch_add(1)) {
      proofs[i] = VerifySegment(files[i], checkpoint_key, keyring, expected,
                                expected_line, keep[i]);
    }
  };
  const size_t workers = std::max<size_t>(
      1,
      std::min<size_t>(n, threads > 0 ? static_cast<size_t>(threads)
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
    SIGNET_RETURN_IF_ERROR(proofs[i].status());
    const SegmentProof& proof = *proofs[i];
    if (before == nullptr) {
      result.first_seq = proof.first_seq;
    } else {
      auto seam = [&](absl::string_view why) {
        return Broken(absl::StrCat("audit log ", proof.path, ": line ",
                                   proof.first_seq, ": ", why));
      };
      if (proof.first_event.empty()) {
        // signetd closes a current segment it finds cut short while it
        // runs, and logs the loss ("cut short outside signet"); a crash
        // while a new segment was opened leaves one empty too.
        return Broken(absl::StrCat(
            "audit log ", proof.path, ": the segment after ", before->path,
            " is empty: a crash while it was being opened, or its lines were "
            "removed after they were written (then the lines from ",
            before->last_seq + 1, " on are lost: signetd's log says so)"));
      }
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
      const Digest* held = before->HashOf(from);
      if (held == nullptr) {
        return seam(absl::StrCat("it continues from line ", from, ", which ",
                                 before->path,
                                 " does not hold among its last lines"));
      }
      if (!HexEquals(proof.first_prev, *held)) {
        return seam(absl::StrCat("prev does not match the hash of line ", from,
                                 " in ", before->path,
                                 " (a segment was replaced or changed)"));
      }
      // Lines after `from` in the segment before were never durable: a
      // write or fdatasync failed there, and their calls were refused.
      // A checkpoint recorded off-host was durable when it was sent (the
      // writer sends only those), so it can never be among them: a forged
      // "segment" line would otherwise drop every line after it.
      if (expected.has_value() && expected->seq > from &&
          expected->seq <= before->last_seq) {
        return seam(absl::StrCat(
            "it continues from line ", from, ", which makes lines ", from + 1,
            " to ", before->last_seq, " of ", before->path,
            " never durable, but the checkpoint at line ", expected->seq,
            " recorded off-host is among them (a segment line was forged "
            "to drop them)"));
      }
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
  // introduction was slipped into the keyring); and every key after the
  // first to sign in the range must have been vouched for by another: a
  // checkpoint by an accepted key covers its introduction line, so a key
  // added to the keyring alone (with a rewritten tail) is found.
  if (keyring != nullptr) {
    std::set<std::string> introduced;
    std::set<std::string> vouched;
    std::set<std::string> accepted;
    std::set<std::string> superseded;  // replaced by a later key
    std::string last_signer;
    // Introductions no checkpoint has covered yet.
    std::vector<std::pair<uint64_t, std::string>> unvouched;
    size_t next_intro = 0;
    for (const auto& [seq, kid] : checkpoint_kids) {
      while (next_intro < introduced_kids.size() &&
             introduced_kids[next_intro].first < seq) {
        introduced.insert(introduced_kids[next_intro].second);
        unvouched.push_back(introduced_kids[next_intro++]);
      }
      if (!introduced_kids.empty() && seq > introduced_kids.front().first &&
          !introduced.contains(kid)) {
        return Broken(absl::StrCat(
            "audit log ", path, ": line ", seq, ": checkpoint by audit key ",
            kid, ", which no audit_key line before it introduced"));
      }
      if (!accepted.empty() && !accepted.contains(kid) &&
          !vouched.contains(kid) && !allow_unvouched) {
        return Broken(absl::StrCat(
            "audit log ", path, ": line ", seq, ": checkpoint by audit key ",
            kid,
            ", which the audit key before it never vouched for (no checkpoint "
            "by another audit key covers an audit_key line introducing it): "
            "a key added to the keyring without the log, or a log from before "
            "signet introduced audit keys this way "
            "(--allow_unvouched_audit_keys)"));
      }
      if (superseded.contains(kid)) {
        return Broken(absl::StrCat(
            "audit log ", path, ": line ", seq, ": checkpoint by audit key ",
            kid,
            ", which a later audit key had already replaced (a retired key "
            "never signs again)"));
      }
      if (!last_signer.empty() && last_signer != kid) {
        // The key before never signs again.
        superseded.insert(accepted.begin(), accepted.end());
      }
      last_signer = kid;
      accepted.insert(kid);
      // This checkpoint, by an accepted key, vouches for the keys introduced
      // before it.
      for (const auto& [intro_seq, intro_kid] : unvouched) {
        vouched.insert(intro_kid);
      }
      unvouched.clear();
    }
    result.audit_keys = accepted.size();
    if (!first_kid.empty() && result.first_seq == 1 &&
        !checkpoint_kids.empty() &&
        checkpoint_kids.front().second != first_kid) {
      return Broken(absl::StrCat(
          "audit log ", path, ": line ", checkpoint_kids.front().first,
          ": the log's first checkpoint is by audit key ",
          checkpoint_kids.front().second, ", not by ", first_kid,
          ", the key the keyring begins with (the key the log began with): "
          "a log replaced and signed by a key added to the keyring"));
    }
  }
  result.checkpoints = checkpoints.size();
  result.last_checkpoint_seq = checkpoints.empty() ? 0 : checkpoints.back();

  if (expected.has_value() && !expected_seen) {
    const uint64_t seq = expected->seq;
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

absl::StatusOr<AuditVerifyResult> VerifyAuditLog(
    absl::string_view path, const hsm::PublicKey* checkpoint_key,
    absl::string_view expected_last_checkpoint,
    const AuditVerifyOptions& options) {
  absl::StatusOr<AuditVerifyResult> result;
  try {
    result = Verify(path, checkpoint_key, expected_last_checkpoint,
                    options.threads, options.keyring,
                    options.allow_unvouched_keys, options.first_kid);
  } catch (const std::exception& e) {
    return absl::InternalError(
        absl::StrCat("audit log ", path, ": verification failed: ", e.what()));
  }
  SIGNET_RETURN_IF_ERROR(result.status());
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
        result->last_seq,
        " are covered by no checkpoint (only the chain "
        "protects them: they could have been cut off or appended)"));
  }
  return result;
}

absl::StatusOr<std::map<std::string, hsm::PublicKey>> ReadAuditKeyring(
    const std::string& path, std::vector<std::string>* kids_in_order) {
  SIGNET_ASSIGN_OR_RETURN(
      std::string read,
      base::ReadSmallFile(path, "audit keyring", kMaxKeyringBytes));
  const std::string& text = read;
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
      return absl::InvalidArgumentError(
          absl::StrCat("audit keyring ", path, ": ", key.status().message()));
    }
    SIGNET_ASSIGN_OR_RETURN(std::string kid, jose::JwkThumbprint(key->get()));
    if (kids_in_order != nullptr && !keys.contains(kid)) {
      kids_in_order->push_back(kid);
    }
    keys.emplace(kid, *std::move(key));
  }
  if (keys.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat("audit keyring ", path, ": holds no public key"));
  }
  return keys;
}

}  // namespace signet::server
