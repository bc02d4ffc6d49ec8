#include "server/audit_log.h"

#include <dirent.h>
#include <fcntl.h>
#include <linux/fs.h>
#include <signal.h>
#include <sys/file.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/un.h>
#include <syslog.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <exception>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/string_view.h"
#include "absl/strings/strip.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"
#include "base/base64url.h"
#include "base/clock.h"
#include "base/file.h"
#include "base/log.h"
#include "base/status_macros.h"
#include "crypto/digest.h"
#include "server/audit_verify.h"
#include "server/scoped_fd.h"

namespace signet::server {
namespace {

using Json = nlohmann::ordered_json;

constexpr absl::string_view kZeroHash =
    "0000000000000000000000000000000000000000000000000000000000000000";
constexpr absl::string_view kCheckpointEvent = "checkpoint";
constexpr absl::string_view kCheckpointFailedEvent = "checkpoint_failed";
constexpr absl::string_view kRefusalSummaryEvent = "refusal_summary";
constexpr absl::string_view kSegmentEvent = "segment";
constexpr size_t kCheckpointSignatureBytes = 64;  // ES256 r||s
// Bounds one write(); callers beyond it go into the next batch.
constexpr size_t kMaxBatchLines = 4096;
// A group commit window ends early once this many lines wait.
constexpr size_t kGroupCommitLines = 1024;
// The longest wait between two attempts to recover into a new segment: a
// replica refuses to sign until one works, so it is short (an outside
// attack saw signing come back 16 s after the disk had room, when it was
// 30 s); an attempt is one open() of a new file.
constexpr absl::Duration kMaxRecoveryWait = absl::Seconds(4);
// After a planned rollover could not close the segment, the next try.
constexpr absl::Duration kRolloverRetry = absl::Seconds(10);
// A file at the log's path this small, with no whole line, during a
// rollover is a segment whose first line never completed.
constexpr size_t kMaxSegmentHeaderBytes = 64 * 1024;
// Callers named one by one in a refusal summary; the rest are counted.
constexpr size_t kMaxSummaryCallers = 8;

// Room the write check reserves past the current segment's end: several
// lines' worth, so the lines written next use it (at most this much stays
// allocated past the end of a segment once it is closed).
constexpr int64_t kWriteCheckBytes = 4096;

// Whether the segment open at `fd`, `size` bytes long, can take the next
// lines, found without writing any (AuditLogOptions::write_check_interval):
// UNAVAILABLE saying why when it cannot.
absl::Status CheckAppendable(int fd, uint64_t size) {
  const auto cannot = [](absl::string_view why) {
    return absl::UnavailableError(absl::StrCat(
        "the current segment cannot take another line (checked without "
        "writing one): ",
        why));
  };
  struct statvfs fs;
  if (fstatvfs(fd, &fs) != 0) {
    return cannot(absl::StrCat("fstatvfs: ", std::strerror(errno)));
  }
  if ((fs.f_flag & ST_RDONLY) != 0)
    return cannot("its file system is read-only");
  if (fallocate(fd, FALLOC_FL_KEEP_SIZE, static_cast<off_t>(size),
                kWriteCheckBytes) == 0) {
    return absl::OkStatus();
  }
  const int err = errno;
  if (err != EOPNOTSUPP && err != ENOSYS) {
    return cannot(absl::StrCat("reserving room for it past the end (",
                               kWriteCheckBytes,
                               " bytes) failed: ", std::strerror(err)));
  }
  // No fallocate on this file system: judge by its free space and by the
  // file's immutable flag.
  const uint64_t free_blocks = geteuid() == 0 ? fs.f_bfree : fs.f_bavail;
  if (free_blocks * fs.f_frsize < static_cast<uint64_t>(kWriteCheckBytes)) {
    return cannot(absl::StrCat("its file system is full (",
                               free_blocks * fs.f_frsize, " bytes free)"));
  }
  int flags = 0;
  if (ioctl(fd, FS_IOC_GETFLAGS, &flags) == 0 &&
      (flags & FS_IMMUTABLE_FL) != 0) {
    return cannot("the file is immutable (chattr +i)");
  }
  return absl::OkStatus();
}

bool IsReservedEvent(absl::string_view event) {
  return event == kCheckpointEvent || event == kCheckpointFailedEvent ||
         event == kRefusalSummaryEvent || event == kSegmentEvent;
}

std::string Truncated(absl::string_view value) {
  if (value.size() <= kMaxAuditFieldBytes) {
    return std::string(value);
  }
  return absl::StrCat(value.substr(0, kMaxAuditFieldBytes), "...");
}

// RFC 3339, UTC, milliseconds.
std::string FormatLineTime(absl::Time t) {
  return absl::FormatTime("%Y-%m-%dT%H:%M:%E3SZ", t, absl::UTCTimeZone());
}

// Adds `name` with a truncated `value` unless `value` is empty.
void AddString(Json& j, const char* name, absl::string_view value) {
  if (!value.empty()) {
    j[name] = Truncated(value);
  }
}

// The object's members without the enclosing braces, as the log writes them:
// compact, ASCII only (\uXXXX escapes), invalid UTF-8 replaced by U+FFFD, so
// dump() cannot throw on bad input.
absl::StatusOr<std::string> MembersOf(const Json& j) {
  try {
    std::string s =
        j.dump(-1, ' ', /*ensure_ascii=*/true, Json::error_handler_t::replace);
    if (s.size() < 2) {
      return absl::InternalError("audit line: empty JSON dump");
    }
    return s.substr(1, s.size() - 2);
  } catch (const std::exception& e) {
    return absl::InternalError(absl::StrCat("audit line: ", e.what()));
  }
}

absl::StatusOr<std::string> EventMembers(const AuditEvent& event,
                                         absl::string_view name) {
  try {
    Json j = Json::object();
    AddString(j, "event", name);
    AddString(j, "caller", event.caller);
    AddString(j, "scope", event.scope);
    AddString(j, "kid", event.kid);
    AddString(j, "alg", event.alg);
    AddString(j, "input_sha256", event.input_sha256);
    AddString(j, "result", event.result);
    AddString(j, "detail", event.detail);
    return MembersOf(j);
  } catch (const std::exception& e) {
    return absl::InternalError(absl::StrCat("audit line: ", e.what()));
  }
}

absl::StatusOr<std::string> HexSha256(absl::string_view data) {
  SIGNET_ASSIGN_OR_RETURN(std::string digest, crypto::Sha256(data));
  return absl::BytesToHexString(digest);
}

absl::Status ErrnoStatus(int err, absl::string_view what) {
  std::string message = absl::StrCat(what, ": ", std::strerror(err));
  switch (err) {
    case ENOENT:
    case ENOTDIR:
      return absl::NotFoundError(message);
    case EACCES:
    case EPERM:
    case EROFS:
      return absl::PermissionDeniedError(message);
    case EISDIR:
    case ELOOP:
    case ENAMETOOLONG:
      // The path itself cannot be a log: no wait fixes it.
      return absl::FailedPreconditionError(message);
    default:
      return absl::UnavailableError(message);
  }
}

// Reads exactly `len` bytes at `offset`.
absl::Status PreadAll(int fd, char* out, size_t len, off_t offset,
                      absl::string_view path) {
  size_t done = 0;
  while (done < len) {
    ssize_t n =
        pread(fd, out + done, len - done, offset + static_cast<off_t>(done));
    if (n < 0 && errno == EINTR) {
      continue;
    }
    if (n < 0) {
      const int err = errno;
      return ErrnoStatus(err, absl::StrCat("audit log ", path, ": read"));
    }
    if (n == 0) {
      return absl::UnavailableError(
          absl::StrCat("audit log ", path, ": file shrank while being read"));
    }
    done += static_cast<size_t>(n);
  }
  return absl::OkStatus();
}

// Names the line that starts at `buf[start]`, where `buf` holds the file from
// byte offset `base` on: "line N" from the seq of the complete line before
// it, or its byte offset if that cannot be told.
std::string NameLine(absl::string_view buf, size_t start, uint64_t base) {
  if (start == 0 && base == 0) {
    return "line 1";
  }
  if (start > 0) {
    const size_t prev_end = start - 1;  // the '\n' ending the line before
    size_t prev_start = 0;
    bool whole = base == 0;
    if (prev_end > 0) {
      size_t nl = buf.rfind('\n', prev_end - 1);
      if (nl != absl::string_view::npos) {
        prev_start = nl + 1;
        whole = true;
      }
    }
    if (whole) {
      absl::StatusOr<AuditLineInfo> prev =
          ParseAuditLine(buf.substr(prev_start, prev_end - prev_start));
      if (prev.ok()) {
        return absl::StrCat("line ", prev->seq + 1);
      }
    }
  }
  return absl::StrCat("the line at byte offset ", base + start);
}

struct Tail {
  uint64_t last_seq = 0;
  std::string last_hash_hex = std::string(kZeroHash);
  uint64_t last_checkpoint_seq = 0;
  // An incomplete last line (no newline: a write cut short), and the file
  // offset it starts at; empty when the file ends with a whole line.
  std::string torn;
  uint64_t torn_at = 0;
};

// Reads the last line of a non-empty regular file to continue its chain.
absl::StatusOr<Tail> ReadTail(int fd, uint64_t size, absl::string_view path) {
  const uint64_t want = std::min<uint64_t>(size, 2 * kMaxAuditLineBytes + 2);
  const uint64_t base = size - want;
  std::string buf(static_cast<size_t>(want), '\0');
  SIGNET_RETURN_IF_ERROR(
      PreadAll(fd, buf.data(), buf.size(), static_cast<off_t>(base), path));
  const std::string refuse =
      "; signet never continues a broken chain: check the file with "
      "audit-verify and move it aside";
  if (buf.back() != '\n') {
    size_t nl = buf.rfind('\n');
    size_t start = nl == std::string::npos ? 0 : nl + 1;
    if (nl == std::string::npos && base > 0) {
      return absl::FailedPreconditionError(
          absl::StrCat("audit log ", path, ": its last line is longer than ",
                       kMaxAuditLineBytes, " bytes and incomplete", refuse));
    }
    // A write cut short (a crash mid-append): the chain continues from the
    // whole line before it, and Open moves the fragment aside. Its line was
    // never durable, so its call was never answered.
    const uint64_t torn_at = base + start;
    Tail tail;
    if (torn_at > 0) {
      SIGNET_ASSIGN_OR_RETURN(tail, ReadTail(fd, torn_at, path));
    }
    tail.torn = buf.substr(start);
    tail.torn_at = torn_at;
    return tail;
  }
  const size_t end = buf.size() - 1;
  size_t start = 0;
  if (end > 0) {
    size_t nl = buf.rfind('\n', end - 1);
    if (nl != std::string::npos) {
      start = nl + 1;
    } else if (base > 0) {
      return absl::FailedPreconditionError(
          absl::StrCat("audit log ", path, ": its last line is longer than ",
                       kMaxAuditLineBytes, " bytes", refuse));
    }
  }
  absl::string_view line = absl::string_view(buf).substr(start, end - start);
  absl::StatusOr<AuditLineInfo> info = ParseAuditLine(line);
  if (!info.ok()) {
    return absl::FailedPreconditionError(absl::StrCat(
        "audit log ", path, ": ", NameLine(buf, start, base),
        " (the last line) is not a valid audit line: ", info.status().message(),
        refuse));
  }
  SIGNET_ASSIGN_OR_RETURN(std::string hash, HexSha256(line));
  Tail tail;
  tail.last_seq = info->seq;
  tail.last_hash_hex = std::move(hash);
  tail.last_checkpoint_seq = info->event == kCheckpointEvent ? info->seq : 0;
  return tail;
}

// Makes a newly created file's directory entry durable.
absl::Status SyncParentDirectory(absl::string_view path) {
  if (const int err = base::SyncParentDirectory(path); err != 0) {
    return ErrnoStatus(err, absl::StrCat("fsync of audit log directory ",
                                         base::ParentDirectory(path)));
  }
  return absl::OkStatus();
}

// To the system's syslog(3), or, when `socket_path` is set, as one RFC 3164
// datagram ("<PRI>signetd[pid]: message") to that unix datagram socket.
void SendToSyslog(int priority, const std::string& message,
                  const std::string& socket_path) {
  if (socket_path.empty()) {
    static std::once_flag opened;
    std::call_once(
        opened, [] { openlog("signetd", LOG_PID | LOG_NDELAY, LOG_AUTHPRIV); });
    syslog(LOG_AUTHPRIV | priority, "%s", message.c_str());
    return;
  }
  sockaddr_un addr = {};
  addr.sun_family = AF_UNIX;
  if (socket_path.size() >= sizeof(addr.sun_path)) return;
  std::memcpy(addr.sun_path, socket_path.data(), socket_path.size());
  ScopedFd fd(socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0));
  if (fd.get() < 0) return;
  const std::string datagram = absl::StrCat(
      "<", LOG_AUTHPRIV | priority, ">signetd[", getpid(), "]: ", message);
  // Best effort, like syslog(3): the file already holds the line.
  (void)sendto(fd.get(), datagram.data(), datagram.size(), MSG_NOSIGNAL,
               reinterpret_cast<const sockaddr*>(&addr), sizeof(addr));
}

// The seq of the first line of a non-empty log file that ends with a whole
// line.
absl::StatusOr<uint64_t> FirstSeq(int fd, uint64_t size,
                                  absl::string_view path) {
  std::string buf(
      static_cast<size_t>(std::min<uint64_t>(size, kMaxAuditLineBytes + 1)),
      '\0');
  SIGNET_RETURN_IF_ERROR(PreadAll(fd, buf.data(), buf.size(), 0, path));
  const size_t nl = buf.find('\n');
  absl::StatusOr<AuditLineInfo> first =
      ParseAuditLine(absl::string_view(buf).substr(0, nl));
  if (nl == std::string::npos || !first.ok()) {
    return absl::FailedPreconditionError(
        absl::StrCat("audit log ", path, ": line 1 is not a valid audit line"));
  }
  return first->seq;
}

struct ClosedSegment {
  std::string path;
  uint64_t first_seq = 0;
};

// The closed segment of the log at `path` with the highest first seq, if
// any.
absl::StatusOr<std::optional<ClosedSegment>> LatestClosedSegment(
    const std::string& path) {
  const std::string dir = base::ParentDirectory(path);
  const std::string prefix = absl::StrCat(base::BaseName(path), ".");
  DIR* d = opendir(dir.c_str());
  if (d == nullptr) {
    const int err = errno;
    return ErrnoStatus(err, absl::StrCat("audit log directory ", dir));
  }
  std::optional<ClosedSegment> latest;
  while (struct dirent* entry = readdir(d)) {
    absl::string_view name(entry->d_name);
    if (!absl::ConsumePrefix(&name, prefix) || name.size() != 20 ||
        !std::all_of(name.begin(), name.end(), absl::ascii_isdigit)) {
      continue;
    }
    uint64_t first = 0;
    if (!absl::SimpleAtoi(name, &first)) continue;
    if (!latest || first > latest->first_seq) {
      latest = ClosedSegment{absl::StrCat(dir, "/", prefix, name), first};
    }
  }
  closedir(d);
  return latest;
}

// Moves an incomplete last line out of the log: copies it to a side file
// next to the log (durably), then cuts the log back to its last whole line.
// Returns the side file's path. A log that cannot be cut (an append-only
// inode) is left as it was, for a person.
absl::StatusOr<std::string> MoveTornLineAside(int fd, const std::string& path,
                                              const Tail& tail) {
  std::string side;
  int side_fd = -1;
  for (int n = 1; n <= 100 && side_fd < 0; ++n) {
    side = absl::StrCat(path, ".torn-", tail.last_seq + 1,
                        n == 1 ? "" : absl::StrCat("-", n));
    side_fd = open(side.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (side_fd < 0 && errno != EEXIST) {
      const int err = errno;
      return ErrnoStatus(err, absl::StrCat("audit log side file ", side));
    }
  }
  ScopedFd out(side_fd);
  if (out.get() < 0) {
    return absl::FailedPreconditionError(absl::StrCat(
        "audit log ", path, ": too many side files for its torn last line"));
  }
  size_t done = 0;
  while (done < tail.torn.size()) {
    ssize_t n =
        write(out.get(), tail.torn.data() + done, tail.torn.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      const int err = errno;
      unlink(side.c_str());
      return ErrnoStatus(err, absl::StrCat("audit log side file ", side));
    }
    done += static_cast<size_t>(n);
  }
  if (fsync(out.get()) != 0) {
    const int err = errno;
    unlink(side.c_str());
    return ErrnoStatus(err, absl::StrCat("audit log side file ", side));
  }
  if (absl::Status synced = SyncParentDirectory(side); !synced.ok()) {
    // The start fails and is retried: no side file per attempt.
    unlink(side.c_str());
    return synced;
  }
  if (ftruncate(fd, static_cast<off_t>(tail.torn_at)) != 0 ||
      fdatasync(fd) != 0) {
    const int err = errno;
    unlink(side.c_str());
    return absl::FailedPreconditionError(absl::StrCat(
        "audit log ", path,
        ": its last line is incomplete (a write was cut "
        "short) and the file cannot be cut back to the line before it (",
        std::strerror(err),
        "; an append-only file?); move the log aside by hand"));
  }
  return side;
}

}  // namespace

absl::StatusOr<std::string> CheckpointDigest(uint64_t seq,
                                             absl::string_view head_hex) {
  return crypto::Sha256(
      absl::StrCat("signet-audit-checkpoint:", seq, ":", head_hex));
}

absl::StatusOr<std::unique_ptr<AuditLog>> AuditLog::Open(
    AuditLogOptions options) {
  if (options.path.empty()) {
    return absl::InvalidArgumentError("audit log: path is empty");
  }
  if (options.sign_checkpoint && options.checkpoint_kid.empty()) {
    return absl::InvalidArgumentError(
        "audit log: checkpoint_kid is required with a checkpoint signer");
  }
  if (options.checkpoint_interval <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError(
        "audit log: checkpoint_interval must be positive");
  }
  if (options.group_commit_delay < absl::ZeroDuration()) {
    return absl::InvalidArgumentError(
        "audit log: group_commit_delay must not be negative");
  }
  if (options.refusals_per_second < 0) {
    return absl::InvalidArgumentError(
        "audit log: refusals_per_second must not be negative");
  }
  if (options.clock == nullptr) {
    return absl::InvalidArgumentError("audit log: no clock given");
  }
  // A copy: `options` moves into the log below, and messages after that
  // still name the path.
  const std::string path = options.path;

  // A crash between closing a segment and opening the next one leaves no
  // file at `path` (or, just after opening it, an empty one) and the
  // rollover marker naming the segment it closed, the latest closed one:
  // the chain goes on from there. A marker naming another (or nothing: an
  // empty file planted to pass a deleted segment off as a rollover) is not
  // a rollover under way.
  const std::string marker = RolloverMarkerPath(path);
  struct stat marker_st;
  const bool marker_exists = stat(marker.c_str(), &marker_st) == 0;
  bool rollover_under_way = false;
  if (marker_exists) {
    SIGNET_ASSIGN_OR_RETURN(std::optional<ClosedSegment> latest,
                            LatestClosedSegment(path));
    absl::StatusOr<std::string> named =
        base::ReadSmallFile(marker, "audit log rollover marker", 4096);
    auto base_name = [](absl::string_view p) {
      return base::BaseName(absl::StripSuffix(p, "\n"));
    };
    rollover_under_way = named.ok() && latest.has_value() &&
                         !base_name(*named).empty() &&
                         base_name(*named) == base_name(latest->path);
    if (!rollover_under_way) {
      SIGNET_LOG_WARN(
          "audit log {}: {} does not name the latest closed segment ({}), so "
          "it is not taken for a rollover under way",
          path, marker, latest.has_value() ? latest->path : "none");
    }
  }
  struct stat path_st;
  bool no_current = stat(path.c_str(), &path_st) != 0 && errno == ENOENT;
  std::string rollover_torn;  // where a torn first line was moved, if any
  if (!no_current && rollover_under_way && S_ISREG(path_st.st_mode) &&
      static_cast<size_t>(path_st.st_size) < kMaxSegmentHeaderBytes) {
    // The next segment was made but its first line never completed: it
    // holds nothing durable. Moved aside (or removed when empty).
    absl::StatusOr<std::string> content =
        base::ReadSmallFile(path, "audit log segment", kMaxSegmentHeaderBytes);
    if (content.ok() && content->find('\n') == std::string::npos) {
      if (!content->empty()) {
        for (int n = 1; n <= 100 && rollover_torn.empty(); ++n) {
          const std::string side = absl::StrCat(
              path, ".torn-rollover", n == 1 ? "" : absl::StrCat("-", n));
          if (link(path.c_str(), side.c_str()) == 0) rollover_torn = side;
        }
      }
      if ((!content->empty() && rollover_torn.empty()) ||
          unlink(path.c_str()) != 0) {
        const int err = errno;
        return ErrnoStatus(err, absl::StrCat("audit log ", path,
                                             ": moving aside the unfinished "
                                             "segment a rollover left"));
      }
      no_current = true;
    }
  }
  if (!no_current && S_ISREG(path_st.st_mode) && path_st.st_size == 0) {
    // An empty current segment beside closed ones holds nothing, and only a
    // rollover (handled above) leaves one: it was emptied (truncated while
    // signetd was down). Without this, the chain restarted at line 1
    // silently; now it is a missing segment (below).
    SIGNET_ASSIGN_OR_RETURN(std::optional<ClosedSegment> closed,
                            LatestClosedSegment(path));
    if (closed.has_value()) {
      if (unlink(path.c_str()) != 0) {
        const int err = errno;
        return ErrnoStatus(err, absl::StrCat("audit log ", path,
                                             ": removing the emptied segment"));
      }
      SIGNET_LOG_WARN(
          "audit log {}: the current segment was empty beside closed "
          "segments (emptied while signetd was down?); treated as missing",
          path);
      no_current = true;
    }
  }
  if (no_current) {
    SIGNET_ASSIGN_OR_RETURN(std::optional<ClosedSegment> closed,
                            LatestClosedSegment(path));
    if (closed.has_value()) {
      const ClosedSegment& last = *closed;
      ScopedFd closed_fd(open(last.path.c_str(), O_RDONLY | O_CLOEXEC));
      struct stat closed_st;
      if (closed_fd.get() < 0 || fstat(closed_fd.get(), &closed_st) != 0) {
        const int err = errno;
        return ErrnoStatus(err, absl::StrCat("audit log segment ", last.path));
      }
      Tail tail;
      if (closed_st.st_size > 0) {
        SIGNET_ASSIGN_OR_RETURN(
            tail,
            ReadTail(closed_fd.get(), static_cast<uint64_t>(closed_st.st_size),
                     last.path));
      }
      std::unique_ptr<AuditLog> log(new AuditLog(
          std::move(options), -1, 0, tail.last_seq,
          std::move(tail.last_hash_hex), tail.last_checkpoint_seq));
      log->current_closed_ = true;
      log->previous_segment_ = last.path;
      log->previous_first_seq_ = last.first_seq;
      // Only a stop between closing a segment and opening the next leaves
      // this legitimately, and that leaves the rollover marker.
      std::string why;
      if (rollover_under_way) {
        SIGNET_LOG_INFO(
            "audit log {}: finishing the rollover signetd stopped in; the "
            "chain continues from {} (line {})",
            path, last.path, tail.last_seq);
        why = absl::StrCat(
            "signetd started with no current segment (it stopped between "
            "closing one segment and opening the next)",
            rollover_torn.empty()
                ? ""
                : absl::StrCat("; the next segment's unfinished first line "
                               "was moved to ",
                               rollover_torn));
      } else if (log->options_.accept_missing_segment) {
        SIGNET_LOG_WARN(
            "audit log {}: the current segment is missing and no rollover was "
            "under way; continuing the chain from {} (line {}) as the "
            "operator asked (--audit_accept_missing_segment)",
            path, last.path, tail.last_seq);
        why =
            "signetd started with the current segment missing and no rollover "
            "under way (deleted or moved while signetd was down?); the "
            "operator accepted it (--audit_accept_missing_segment)";
      } else {
        return absl::FailedPreconditionError(absl::StrCat(
            "audit log ", path,
            ": the current segment is missing (or was emptied) and no "
            "rollover was under way (no ",
            RolloverMarkerPath(path),
            "), so it was deleted or moved while signetd was down; its lines "
            "after line ",
            tail.last_seq, " (the end of ", last.path,
            ") are not in the log. Put it back if you can; otherwise see what "
            "is lost with `signetd audit-verify --expected_checkpoint=<the "
            "last checkpoint your syslog holds>` and start signetd once with "
            "--audit_accept_missing_segment to continue the chain from ",
            last.path));
      }
      SIGNET_RETURN_IF_ERROR(log->OpenNextSegment(why));
      log->StartWriter();
      return log;
    }
  }

  // O_RDWR: the last line is read back through the same descriptor. An
  // append-only inode (chattr +a) allows this with O_APPEND.
  bool created = true;
  int fd = open(path.c_str(), O_RDWR | O_APPEND | O_CREAT | O_EXCL | O_CLOEXEC,
                0600);
  if (fd < 0 && errno == EEXIST) {
    created = false;
    fd = open(path.c_str(), O_RDWR | O_APPEND | O_CLOEXEC);
  }
  if (fd < 0) {
    const int err = errno;
    return ErrnoStatus(err, absl::StrCat("audit log ", path, ": open"));
  }
  ScopedFd owned_fd(fd);

  // Two writers would interleave lines and break the chain.
  if (flock(fd, LOCK_EX | LOCK_NB) != 0) {
    if (errno == EWOULDBLOCK) {
      return absl::FailedPreconditionError(
          absl::StrCat("audit log ", path,
                       " is already open for writing by another process or "
                       "another AuditLog"));
    }
    const int err = errno;
    return ErrnoStatus(err, absl::StrCat("audit log ", path, ": flock"));
  }
  if (created) {
    // Enforce 0600 whatever the umask, and make the new entry durable.
    if (fchmod(fd, 0600) != 0) {
      const int err = errno;
      return ErrnoStatus(err, absl::StrCat("audit log ", path, ": fchmod"));
    }
    SIGNET_RETURN_IF_ERROR(SyncParentDirectory(path));
  }

  struct stat st;
  if (fstat(fd, &st) != 0) {
    const int err = errno;
    return ErrnoStatus(err, absl::StrCat("audit log ", path, ": fstat"));
  }
  Tail tail;
  uint64_t size = 0;
  if (S_ISREG(st.st_mode) && st.st_size > 0) {
    size = static_cast<uint64_t>(st.st_size);
    SIGNET_ASSIGN_OR_RETURN(tail, ReadTail(fd, size, path));
  }
  // A torn last line: moved aside, and recorded as the next line.
  std::optional<AuditEvent> torn_note;
  if (!tail.torn.empty()) {
    SIGNET_ASSIGN_OR_RETURN(std::string side,
                            MoveTornLineAside(fd, path, tail));
    SIGNET_ASSIGN_OR_RETURN(std::string fragment_hash, HexSha256(tail.torn));
    AuditEvent note;
    note.event = "torn_tail";
    note.result = "DATA_LOSS";
    note.detail = absl::StrCat(
        "an incomplete line of ", tail.torn.size(), " bytes at byte offset ",
        tail.torn_at,
        " (a write cut short; its call was never answered) was moved to ", side,
        ", sha256 ", fragment_hash);
    torn_note = std::move(note);
    size = tail.torn_at;
  }

  uint64_t first_seq = tail.last_seq + 1;
  if (size > 0 && S_ISREG(st.st_mode)) {
    SIGNET_ASSIGN_OR_RETURN(first_seq, FirstSeq(fd, size, path));
  }
  std::unique_ptr<AuditLog> log(
      new AuditLog(std::move(options), owned_fd.release(), size, tail.last_seq,
                   std::move(tail.last_hash_hex), tail.last_checkpoint_seq));
  log->segment_first_seq_ = first_seq;
  log->regular_file_ = S_ISREG(st.st_mode);
  // No closed segment (else the path above) and nothing in the current
  // one: line 1 is this process's.
  log->started_new_chain_ =
      S_ISREG(st.st_mode) && size == 0 && tail.last_seq == 0;
  log->found_empty_segment_ = log->started_new_chain_ && !created;
  // A marker left by a rollover that finished (its removal failed), or one
  // that names no rollover: stale.
  if (marker_exists && unlink(marker.c_str()) == 0) {
    (void)SyncParentDirectory(path);
  }
  log->StartWriter();
  if (torn_note) {
    // The torn line is already aside and cut off: its note must not be
    // lost with a failed open (a full disk), or the side file would have
    // no line in the log. The caller writes it again.
    if (!log->Append(*torn_note).ok()) {
      log->unwritten_open_line_ = std::move(torn_note);
    }
  }
  return log;
}

std::optional<AuditEvent> AuditLog::TakeUnwrittenOpenLine() {
  return std::exchange(unwritten_open_line_, std::nullopt);
}

AuditLog::AuditLog(AuditLogOptions options, int fd, uint64_t file_size,
                   uint64_t last_seq, std::string last_hash_hex,
                   uint64_t last_cp_seq)
    : options_(std::move(options)),
      fd_(fd),
      file_size_(file_size),
      next_seq_(last_seq + 1),
      last_hash_hex_(std::move(last_hash_hex)),
      durable_seq_(last_seq),
      last_checkpoint_seq_(last_cp_seq) {
  const absl::Time now = options_.clock->Now();
  next_checkpoint_ = now + options_.checkpoint_interval;
  refusal_window_ = absl::ToUnixSeconds(now);
  segment_opened_ = now;
  recovery_wait_ = options_.recovery_backoff;
  absl::MutexLock lock(&mu_);
  checkpoint_signer_ = options_.sign_checkpoint;
  checkpoint_kid_ = options_.checkpoint_kid;
}

absl::Status AuditLog::SetCheckpointKey(std::string kid,
                                        CheckpointSigner signer) {
  if (!options_.sign_checkpoint) {
    return absl::FailedPreconditionError(
        "audit log: opened without a checkpoint signer");
  }
  if (kid.empty() || !signer) {
    return absl::InvalidArgumentError(
        "audit log: a checkpoint key needs a kid and a signer");
  }
  absl::MutexLock lock(&mu_);
  checkpoint_kid_ = std::move(kid);
  checkpoint_signer_ = std::move(signer);
  return absl::OkStatus();
}

std::string AuditLog::checkpoint_kid() const {
  absl::MutexLock lock(&mu_);
  return checkpoint_kid_;
}

void AuditLog::StartWriter() {
  writer_ = std::thread([this] { WriterLoop(); });
}

AuditLog::~AuditLog() {
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
  }
  if (writer_.joinable()) writer_.join();
  if (fd_ >= 0) close(fd_);
}

uint64_t AuditLog::last_sequence() const {
  absl::MutexLock lock(&mu_);
  return durable_seq_;
}

uint64_t AuditLog::syncs() const {
  absl::MutexLock lock(&mu_);
  return syncs_;
}

absl::Status AuditLog::WriteStatus() const {
  absl::MutexLock lock(&mu_);
  if (!broken_.ok()) return broken_;
  if (disk_call_since_ != absl::InfiniteDuration()) {
    const absl::Duration waited = base::MonotonicNow() - disk_call_since_;
    if (waited > options_.disk_stall_after) {
      return absl::UnavailableError(absl::StrCat(
          "the audit log's disk has not answered for ",
          absl::FormatDuration(absl::Trunc(waited, absl::Seconds(1))), " (",
          disk_call_,
          "): a stalled disk or file system (frozen, a hung network "
          "volume?); lines, and the signatures waiting on them, wait until "
          "it answers"));
    }
  }
  return write_check_;
}

bool AuditLog::WriteCheckDueLocked() const {
  return WriteCheckApplies() && base::MonotonicNow() >= next_write_check_;
}

bool AuditLog::IdleWriterShouldWakeLocked() const {
  return WriterHasWorkLocked() || WriteCheckDueLocked();
}

void AuditLog::MaybeCheckWritableLocked() {
  if (!WriteCheckDueLocked()) return;
  next_write_check_ = base::MonotonicNow() + options_.write_check_interval;
  const int fd = fd_;
  const uint64_t size = file_size_;
  absl::Status check =
      DiskCallUnlocked("checking that the segment can take lines",
                       [&] { return CheckAppendable(fd, size); });
  if (check.ok() != write_check_.ok()) {
    if (check.ok()) {
      SIGNET_LOG_INFO("audit log: the current segment can take lines again");
    } else {
      SIGNET_LOG_ERROR("audit log: {}", check.message());
    }
  }
  write_check_ = std::move(check);
}

uint64_t AuditLog::EnqueueLocked(absl::Time time, std::string members) {
  MaybeFlushRefusalSummaryLocked(time, /*force=*/false);
  const uint64_t ticket = next_ticket_++;
  pending_.push_back(Pending{ticket, time, std::move(members)});
  return ticket;
}

absl::Status AuditLog::Append(const AuditEvent& event) {
  return AppendAll(absl::MakeConstSpan(&event, 1));
}

absl::StatusOr<std::vector<std::string>> AuditLog::LineMembers(
    absl::Span<const AuditEvent> events) {
  std::vector<std::string> members;
  members.reserve(events.size());
  for (const AuditEvent& event : events) {
    if (event.event.empty()) {
      return absl::InvalidArgumentError("audit event: event name is empty");
    }
    if (IsReservedEvent(event.event)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "audit event: \"", event.event, "\" is written by the log itself"));
    }
    SIGNET_ASSIGN_OR_RETURN(std::string m, EventMembers(event, event.event));
    members.push_back(std::move(m));
  }
  return members;
}

absl::Status AuditLog::AppendAll(absl::Span<const AuditEvent> events) {
  absl::Notification durable;
  absl::Status status;
  AppendAllAsync(events, [&](const absl::Status& s) {
    status = s;
    durable.Notify();
  });
  durable.WaitForNotification();
  return status;
}

AuditLog::ExpectedLine AuditLog::ExpectLine() {
  absl::MutexLock lock(&mu_);
  ++expected_lines_;
  return ExpectedLine(this);
}

void AuditLog::ExpectedLine::Release() {
  if (log_ == nullptr) return;
  absl::MutexLock lock(&log_->mu_);
  --log_->expected_lines_;
  log_ = nullptr;
}

void AuditLog::AppendAllAsync(absl::Span<const AuditEvent> events,
                              DurableCallback done, ExpectedLine expected) {
  absl::StatusOr<std::vector<std::string>> members = LineMembers(events);
  if (!members.ok()) {
    done(members.status());
    return;
  }
  if (members->empty()) {
    done(absl::OkStatus());
    return;
  }
  absl::Status broken;
  {
    absl::MutexLock lock(&mu_);
    broken = broken_;
    if (broken.ok()) {
      const absl::Time now = options_.clock->Now();
      uint64_t ticket = 0;
      for (std::string& m : *members) {
        ticket = EnqueueLocked(now, std::move(m));
      }
      callbacks_.emplace_back(ticket, std::move(done));
      if (expected.log_ == this) {
        --expected_lines_;
        expected.log_ = nullptr;
      }
      return;
    }
  }
  done(broken);
}

void AuditLog::RunDurableCallbacksLocked() {
  std::vector<std::pair<DurableCallback, absl::Status>> ready;
  while (!callbacks_.empty() &&
         (callbacks_.front().first <= durable_ticket_ || !broken_.ok())) {
    ready.emplace_back(std::move(callbacks_.front().second),
                       callbacks_.front().first <= durable_ticket_
                           ? absl::OkStatus()
                           : broken_);
    callbacks_.pop_front();
  }
  if (ready.empty()) {
    return;
  }
  mu_.Unlock();
  for (auto& [callback, status] : ready) {
    callback(status);
  }
  mu_.Lock();
}

void AuditLog::AppendRefusal(const AuditEvent& event) {
  absl::string_view name = event.event;
  if (name.empty() || IsReservedEvent(name)) {
    name = "refuse";
  }
  absl::MutexLock lock(&mu_);
  if (!broken_.ok()) {
    ++refusals_while_broken_;  // counted in the segment that recovers
    return;
  }
  const absl::Time now = options_.clock->Now();
  const int64_t second = absl::ToUnixSeconds(now);
  if (second != refusal_window_) {
    MaybeFlushRefusalSummaryLocked(now, /*force=*/false);
    refusal_window_ = second;
    refusals_in_window_ = 0;
    written_by_caller_.clear();
  }
  std::string caller = Truncated(event.caller);
  const int caller_share = std::max(1, options_.refusals_per_second / 5);
  if (refusals_in_window_ < options_.refusals_per_second) {
    int& written = written_by_caller_[caller];
    if (written < caller_share) {
      absl::StatusOr<std::string> members = EventMembers(event, name);
      if (!members.ok()) {
        return;  // out of memory: nothing sensible to record
      }
      ++written;
      ++refusals_in_window_;
      pending_.push_back(Pending{0, now, *std::move(members)});
      return;
    }
  }
  ++refusals_suppressed_;
  auto it = suppressed_by_caller_.find(caller);
  if (it != suppressed_by_caller_.end()) {
    ++it->second;
  } else if (suppressed_by_caller_.size() < kMaxSummaryCallers) {
    suppressed_by_caller_.emplace(std::move(caller), 1);
  } else {
    ++suppressed_other_callers_;
  }
}

void AuditLog::PushRefusalSummaryLocked(uint64_t count,
                                        absl::string_view detail,
                                        absl::Time now) {
  try {
    Json j = Json::object();
    j["event"] = std::string(kRefusalSummaryEvent);
    j["count"] = count;
    j["detail"] = Truncated(detail);
    absl::StatusOr<std::string> members = MembersOf(j);
    if (members.ok()) {
      pending_.push_back(Pending{0, now, *std::move(members)});
    }
  } catch (const std::exception&) {
    // Out of memory: the count is lost, the chain is not.
  }
}

void AuditLog::MaybeFlushRefusalSummaryLocked(absl::Time now, bool force) {
  if (refusals_suppressed_ == 0) {
    return;
  }
  if (!force && absl::ToUnixSeconds(now) == refusal_window_) {
    return;
  }
  std::string detail = absl::StrCat(
      "refusals beyond ", options_.refusals_per_second,
      " per second, not written one by one, in the second from ",
      FormatLineTime(absl::FromUnixSeconds(refusal_window_)), "; by caller:");
  const char* sep = " ";
  for (const auto& [caller, count] : suppressed_by_caller_) {
    absl::StrAppend(&detail, sep, caller.empty() ? "(none)" : caller, " ",
                    count);
    sep = ", ";
  }
  if (suppressed_other_callers_ > 0) {
    absl::StrAppend(&detail, sep, "others ", suppressed_other_callers_);
  }
  PushRefusalSummaryLocked(refusals_suppressed_, detail, now);
  refusals_suppressed_ = 0;
  suppressed_by_caller_.clear();
  suppressed_other_callers_ = 0;
}

absl::Status AuditLog::Checkpoint() {
  if (!options_.sign_checkpoint) {
    return absl::FailedPreconditionError(
        "audit log: no checkpoint signer configured");
  }
  absl::MutexLock lock(&mu_);
  if (!broken_.ok()) {
    return broken_;
  }
  const uint64_t generation = ++checkpoint_requested_;
  auto done = [this, generation]() ABSL_SHARED_LOCKS_REQUIRED(mu_) {
    return checkpoint_done_ >= generation;
  };
  mu_.Await(absl::Condition(&done));
  if (checkpoint_ok_ >= generation) {
    return absl::OkStatus();
  }
  return checkpoint_error_;
}

bool AuditLog::GroupCommitReadyLocked() const {
  // (A broken log never gets here: the writer loop handles it first, and
  // only the writer breaks it.)
  return expected_lines_ <= 0 || stopping_ ||
         pending_.size() >= kGroupCommitLines ||
         checkpoint_requested_ > checkpoint_done_;
}

bool AuditLog::WriterHasWorkLocked() const {
  // A requested rollover that failed waits for its retry time (the loop's
  // timed wait wakes for it).
  return stopping_ || !pending_.empty() ||
         (rollover_requested_ && options_.clock->Now() >= next_rollover_try_) ||
         checkpoint_requested_ > checkpoint_done_;
}

AuditLog::SignedCheckpoint AuditLog::SignCheckpointLocked() {
  // The checkpoint is the next line: its seq and head are fixed here, and
  // only the writer thread moves them, so the signer may run without mu_
  // (Appends queue meanwhile).
  const uint64_t seq = next_seq_;
  const std::string head = last_hash_hex_;
  // The kid written is the one of the key that signs, even if the key is
  // switched while the signer runs.
  const CheckpointSigner signer = checkpoint_signer_;
  const std::string kid = checkpoint_kid_;
  absl::StatusOr<std::string> signature;
  absl::StatusOr<std::string> digest = CheckpointDigest(seq, head);
  if (!digest.ok()) {
    signature = digest.status();
  } else {
    mu_.Unlock();
    try {
      signature = signer(*digest);
    } catch (const std::exception& e) {
      signature = absl::InternalError(
          absl::StrCat("checkpoint signer threw: ", e.what()));
    }
    mu_.Lock();
  }
  if (signature.ok() && signature->size() != kCheckpointSignatureBytes) {
    signature = absl::InternalError(absl::StrCat(
        "checkpoint signer returned ", signature->size(),
        " bytes; an ES256 signature (r||s) has ", kCheckpointSignatureBytes));
  }
  SignedCheckpoint out;
  out.status = signature.status();
  try {
    Json j = Json::object();
    if (signature.ok()) {
      j["event"] = std::string(kCheckpointEvent);
      j["head"] = head;
      j["count"] = seq - 1;
      j["kid"] = Truncated(kid);
      j["sig"] = base::Base64UrlEncode(*signature);
    } else {
      j["event"] = std::string(kCheckpointFailedEvent);
      j["result"] = absl::StatusCodeToString(signature.status().code());
      j["detail"] = Truncated(signature.status().message());
    }
    absl::StatusOr<std::string> members = MembersOf(j);
    if (members.ok()) {
      out.members = *std::move(members);
    } else if (out.status.ok()) {
      out.status = members.status();
    }
  } catch (const std::exception& e) {
    if (out.status.ok()) {
      out.status =
          absl::InternalError(absl::StrCat("checkpoint line: ", e.what()));
    }
  }
  return out;
}

absl::Status AuditLog::WriteBatch(const std::vector<Pending>& batch,
                                  std::vector<std::string>* checkpoint_lines) {
  if (batch.empty()) {
    return absl::OkStatus();
  }
  if (options_.before_write) options_.before_write();
  // The chain moves on only once the batch is durable: after a failure,
  // next_seq_ and last_hash_hex_ still name the last durable line, which
  // the next segment continues.
  uint64_t seq = next_seq_;
  std::string hash_hex = last_hash_hex_;
  std::vector<std::string> checkpoints;
  std::string buffer;
  size_t kill_at = 0;  // test-only: bytes to write before SIGKILL
  for (const Pending& p : batch) {
    std::string line =
        absl::StrCat("{\"seq\":", seq, ",\"time\":\"", FormatLineTime(p.time),
                     "\",", p.members, ",\"prev\":\"", hash_hex, "\"}");
    if (seq == options_.kill_mid_line)
      kill_at = buffer.size() + line.size() / 2;
    absl::StatusOr<std::string> hash = HexSha256(line);
    if (!hash.ok()) {
      return absl::UnavailableError(
          absl::StrCat("audit log ", options_.path,
                       ": cannot hash a line: ", hash.status().message()));
    }
    if (p.checkpoint) {
      checkpoints.push_back(line);
    }
    ++seq;
    hash_hex = *std::move(hash);
    buffer.append(line);
    buffer.push_back('\n');
  }

  if (kill_at > 0) {
    // A crash in the middle of an append (fault-injection tests).
    (void)!write(fd_, buffer.data(), kill_at);
    raise(SIGKILL);
  }
  size_t written = 0;
  while (written < buffer.size()) {
    ssize_t n = write(fd_, buffer.data() + written, buffer.size() - written);
    if (n < 0 && errno == EINTR) {
      continue;
    }
    if (n <= 0) {
      const int err = n < 0 ? errno : ENOSPC;
      std::string message = absl::StrCat(
          "audit log ", options_.path, ": write failed: ", std::strerror(err));
      // Cut what the failed batch wrote off again, so the file still ends
      // with a whole line and its chain verifies. Nothing is lost: the
      // batch's callers are told UNAVAILABLE, so what they signed is never
      // released. (Not for devices, where there is nothing to cut.)
      struct stat st;
      if (fstat(fd_, &st) == 0 && S_ISREG(st.st_mode) &&
          static_cast<uint64_t>(st.st_size) > file_size_) {
        if (ftruncate(fd_, static_cast<off_t>(file_size_)) == 0 &&
            fdatasync(fd_) == 0) {
          absl::StrAppend(&message, " (the partial write was removed)");
        } else {
          absl::StrAppend(&message, " (could not remove the partial write: ",
                          std::strerror(errno), ")");
        }
      }
      return absl::UnavailableError(message);
    }
    written += static_cast<size_t>(n);
  }
  file_size_ += buffer.size();
  {
    absl::MutexLock lock(&mu_);
    ++syncs_;
  }
  if (fdatasync(fd_) != 0) {
    return absl::UnavailableError(
        absl::StrCat("audit log ", options_.path,
                     ": fdatasync failed: ", std::strerror(errno)));
  }
  // Durable, but where? A file deleted or moved away outside signet still
  // takes writes: those lines are not in the log. They are not counted
  // (their callers are answered UNAVAILABLE), and the recovery writes the
  // segment again at its closed path.
  if (absl::Status at_path = CheckStillAtPath(); !at_path.ok()) {
    file_size_ -= buffer.size();
    return at_path;
  }
  if (absl::Status whole = CheckSegmentLength(buffer); !whole.ok()) {
    file_size_ -= buffer.size();
    return whole;
  }
  next_seq_ = seq;
  last_hash_hex_ = std::move(hash_hex);
  for (std::string& line : checkpoints) {
    checkpoint_lines->push_back(std::move(line));
  }
  return absl::OkStatus();
}

std::string ClosedSegmentPath(absl::string_view path, uint64_t first_seq) {
  return absl::StrCat(path, ".", absl::StrFormat("%020u", first_seq));
}

absl::Status AuditLog::CheckStillAtPath() const {
  if (!regular_file_) return absl::OkStatus();
  struct stat open_st;
  struct stat path_st;
  if (fstat(fd_, &open_st) != 0) {
    return ErrnoStatus(errno,
                       absl::StrCat("audit log ", options_.path, ": fstat"));
  }
  const bool gone = open_st.st_nlink == 0;
  const bool elsewhere = !gone && (stat(options_.path.c_str(), &path_st) != 0 ||
                                   path_st.st_dev != open_st.st_dev ||
                                   path_st.st_ino != open_st.st_ino);
  if (!gone && !elsewhere) return absl::OkStatus();
  return absl::UnavailableError(absl::StrCat(
      "audit log ", options_.path, ": the open segment was ",
      gone ? "deleted" : "moved away or replaced",
      " outside signet; its lines are written again at the segment's closed "
      "path"));
}

absl::Status AuditLog::CheckSegmentLength(absl::string_view batch) {
  if (!regular_file_) return absl::OkStatus();
  struct stat st;
  if (fstat(fd_, &st) != 0) {
    return ErrnoStatus(errno,
                       absl::StrCat("audit log ", options_.path, ": fstat"));
  }
  const uint64_t size = static_cast<uint64_t>(st.st_size);
  if (size == file_size_) return absl::OkStatus();
  // The batch is cut off again only if it is what ends the file (O_APPEND
  // put it at the end as it was when written): never a byte of anyone
  // else's.
  std::string cut = "the batch is not at the end, so nothing was cut";
  if (size >= batch.size()) {
    std::string tail(batch.size(), '\0');
    const off_t at = static_cast<off_t>(size - batch.size());
    if (pread(fd_, tail.data(), tail.size(), at) ==
            static_cast<ssize_t>(tail.size()) &&
        tail == batch) {
      cut = ftruncate(fd_, at) == 0 && fdatasync(fd_) == 0
                ? "the refused batch was removed again"
                : absl::StrCat("the refused batch could not be removed (",
                               std::strerror(errno), ")");
    }
  }
  const uint64_t before = file_size_ - batch.size();
  return absl::UnavailableError(absl::StrCat(
      "audit log ", options_.path, ": the open segment was ",
      size < file_size_ ? "cut short" : "written to", " outside signet (", size,
      " bytes after signetd's write; ", before, " were durable before it",
      size < file_size_ ? ": lines are lost" : "", "; ", cut,
      "); it is closed as it is and the chain goes on in a new segment"));
}

absl::Status AuditLog::CopyOpenSegmentTo(const std::string& closed) const {
  int out = open(closed.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
  if (out < 0) {
    return ErrnoStatus(errno, absl::StrCat("audit log: cannot write ", closed));
  }
  ScopedFd owned(out);
  std::string chunk(64 * 1024, '\0');
  uint64_t done = 0;
  while (done < file_size_) {
    const size_t want = static_cast<size_t>(
        std::min<uint64_t>(chunk.size(), file_size_ - done));
    ssize_t n = pread(fd_, chunk.data(), want, static_cast<off_t>(done));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      const int err = n < 0 ? errno : EIO;
      unlink(closed.c_str());
      return ErrnoStatus(err, absl::StrCat("audit log: reading the open "
                                           "segment back for ",
                                           closed));
    }
    size_t written = 0;
    while (written < static_cast<size_t>(n)) {
      ssize_t w = write(out, chunk.data() + written, n - written);
      if (w < 0 && errno == EINTR) continue;
      if (w <= 0) {
        const int err = w < 0 ? errno : ENOSPC;
        unlink(closed.c_str());
        return ErrnoStatus(err,
                           absl::StrCat("audit log: cannot write ", closed));
      }
      written += static_cast<size_t>(w);
    }
    done += static_cast<uint64_t>(n);
  }
  if (fsync(out) != 0) {
    const int err = errno;
    unlink(closed.c_str());
    return ErrnoStatus(err, absl::StrCat("audit log: cannot sync ", closed));
  }
  return absl::OkStatus();
}

std::string RolloverMarkerPath(absl::string_view path) {
  return absl::StrCat(path, ".rollover");
}

std::string BesideAuditLog(absl::string_view log_path, absl::string_view name) {
  const std::string dir = base::ParentDirectory(log_path);
  return dir == "/" ? absl::StrCat("/", name) : absl::StrCat(dir, "/", name);
}

namespace {
// Writes the rollover marker of the log at `path` durably, naming `closed`.
absl::Status WriteRolloverMarker(const std::string& path,
                                 const std::string& closed) {
  const std::string marker = RolloverMarkerPath(path);
  ScopedFd fd(
      open(marker.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600));
  const std::string text = absl::StrCat(closed, "\n");
  if (fd.get() < 0 ||
      write(fd.get(), text.data(), text.size()) !=
          static_cast<ssize_t>(text.size()) ||
      fsync(fd.get()) != 0) {
    const int err = errno;
    return ErrnoStatus(err == 0 ? EIO : err,
                       absl::StrCat("audit log: cannot write ", marker));
  }
  return SyncParentDirectory(marker);
}
}  // namespace

absl::Status AuditLog::OpenNextSegment(absl::string_view why) {
  const std::string& path = options_.path;
  if (!current_closed_) {
    const std::string closed = ClosedSegmentPath(path, segment_first_seq_);
    // Before anything is closed: a stop from here until the next segment
    // is durable leaves it, and the next start finishes the rollover.
    if (regular_file_) {
      SIGNET_RETURN_IF_ERROR(WriteRolloverMarker(path, closed));
    }
    if (!CheckStillAtPath().ok()) {
      // Deleted or moved away outside signet: the open file still holds
      // every durable line, so the closed segment is written from it, and
      // whatever is at the path now (if anything) is not touched.
      SIGNET_RETURN_IF_ERROR(CopyOpenSegmentTo(closed));
    } else if (rename(path.c_str(), closed.c_str()) != 0) {
      const int err = errno;
      return ErrnoStatus(
          err, absl::StrCat("audit log ", path,
                            ": cannot close the segment as ", closed));
    }
    // Never written again, whatever happens next.
    close(fd_);
    fd_ = -1;
    current_closed_ = true;
    previous_segment_ = closed;
    previous_first_seq_ = segment_first_seq_;
    (void)SyncParentDirectory(path);
  }
  // The first line is made before the file: a failure leaves no empty
  // segment behind to block the next attempt (O_EXCL).
  AuditEvent header;
  header.event = std::string(kSegmentEvent);
  header.result = "OK";
  header.detail = absl::StrCat(
      "continues the chain from ", base::BaseName(previous_segment_),
      " (its lines ", previous_first_seq_, " to ", next_seq_ - 1, "): ", why);
  SIGNET_ASSIGN_OR_RETURN(std::string members,
                          EventMembers(header, kSegmentEvent));
  int fd = open(path.c_str(), O_RDWR | O_APPEND | O_CREAT | O_EXCL | O_CLOEXEC,
                0600);
  if (fd < 0) {
    const int err = errno;
    return ErrnoStatus(
        err, absl::StrCat("audit log ", path, ": cannot open a new segment"));
  }
  ScopedFd owned(fd);
  absl::Status ready;
  if (flock(fd, LOCK_EX | LOCK_NB) != 0 || fchmod(fd, 0600) != 0) {
    const int err = errno;
    ready = ErrnoStatus(
        err, absl::StrCat("audit log ", path, ": cannot lock the new segment"));
  } else {
    ready = SyncParentDirectory(path);
  }
  if (!ready.ok()) {
    unlink(path.c_str());
    return ready;
  }
  fd_ = owned.release();
  file_size_ = 0;
  std::vector<Pending> line;
  line.push_back(Pending{0, options_.clock->Now(), std::move(members)});
  std::vector<std::string> unused;
  const uint64_t first_seq = next_seq_;
  absl::Status written = WriteBatch(line, &unused);
  if (!written.ok()) {
    // Nothing durable in it: remove it and try again later.
    close(fd_);
    fd_ = -1;
    unlink(path.c_str());
    return written;
  }
  current_closed_ = false;
  segment_first_seq_ = first_seq;
  segment_opened_ = options_.clock->Now();
  // The rollover is over (a leftover marker only lets a later start with
  // no current segment continue, as if a rollover had been under way).
  if (unlink(RolloverMarkerPath(path).c_str()) == 0) {
    (void)SyncParentDirectory(path);
  }
  {
    absl::MutexLock lock(&mu_);
    ++segments_opened_;
  }
  return absl::OkStatus();
}

bool AuditLog::RolloverDueLocked(absl::Time now) const {
  if (!regular_file_ || now < next_rollover_try_) return false;
  if (rollover_requested_) return true;
  if (next_seq_ == segment_first_seq_ + 1 && !current_closed_ &&
      file_size_ > 0) {
    return false;  // a segment holds at least one line after its header
  }
  if (options_.segment_max_bytes > 0 &&
      file_size_ >= options_.segment_max_bytes) {
    return true;
  }
  return options_.segment_max_age > absl::ZeroDuration() &&
         now - segment_opened_ >= options_.segment_max_age;
}

void AuditLog::RollOver() {
  // A device (/dev/full, a FIFO) has no segments; a request that can never
  // be met would keep the writer busy.
  if (!regular_file_) return;
  absl::MutexLock lock(&mu_);
  rollover_requested_ = true;
}

uint64_t AuditLog::segments_opened() const {
  absl::MutexLock lock(&mu_);
  return segments_opened_;
}

void AuditLog::WriterLoop() {
  absl::MutexLock lock(&mu_);
  bool final_checkpoint_tried = false;
  while (true) {
    if (!broken_.ok()) {
      // Fail closed: nothing is written while broken. Waiters see broken_.
      pending_.clear();
      RunDurableCallbacksLocked();
      if (checkpoint_done_ < checkpoint_requested_) {
        checkpoint_done_ = checkpoint_requested_;
        checkpoint_error_ = broken_;
      }
      if (stopping_) {
        break;
      }
      if (options_.recovery_backoff <= absl::ZeroDuration() || !regular_file_) {
        mu_.Await(absl::Condition(this, &AuditLog::WriterHasWorkLocked));
        continue;
      }
      // Recovery: never the file that failed (after a failed fdatasync its
      // pages may be gone), but a new segment continuing the chain from the
      // last durable line, tried again with backoff until it works.
      mu_.AwaitWithTimeout(absl::Condition(&stopping_), recovery_wait_);
      if (stopping_) continue;
      const std::string why = absl::StrCat(
          "writing the previous segment failed (", broken_.message(),
          "); its lines after ", next_seq_ - 1,
          ", if any, were never durable and their calls were answered "
          "UNAVAILABLE");
      absl::Status reopened = DiskCallUnlocked(
          "opening a new segment", [&] { return OpenNextSegment(why); });
      if (reopened.ok()) {
        broken_ = absl::OkStatus();
        durable_seq_ = next_seq_ - 1;
        recovery_wait_ = options_.recovery_backoff;
        if (refusals_while_broken_ > 0) {
          // An outside attack counted 2,380 refusals during an outage that
          // left no trace.
          PushRefusalSummaryLocked(
              refusals_while_broken_,
              "refusals while the audit log could not be written (the "
              "previous segment failed), not written one by one",
              options_.clock->Now());
          refusals_while_broken_ = 0;
        }
      } else {
        recovery_wait_ = std::min(2 * recovery_wait_, kMaxRecoveryWait);
      }
      continue;
    }

    absl::Time now = options_.clock->Now();
    if (!WriterHasWorkLocked()) {
      absl::Duration wait = options_.checkpoint_interval;
      if (options_.sign_checkpoint) {
        wait = std::min(wait, next_checkpoint_ - now);
      }
      if (refusals_suppressed_ > 0) {
        wait = std::min(wait, absl::FromUnixSeconds(refusal_window_ + 1) - now);
      }
      if (rollover_requested_) {
        wait = std::min(wait, next_rollover_try_ - now);
      }
      if (WriteCheckApplies()) {
        wait = std::min(wait, next_write_check_ - base::MonotonicNow());
      }
      if (wait > absl::ZeroDuration()) {
        // The write check's time is monotonic and part of the condition:
        // Abseil's timed wait ends on the wall clock (a step back stretches
        // it by the step), but the condition is evaluated again whenever
        // another thread releases mu_ (health asks WriteStatus every
        // second).
        mu_.AwaitWithTimeout(
            absl::Condition(this, &AuditLog::IdleWriterShouldWakeLocked), wait);
      }
      now = options_.clock->Now();
    }
    MaybeCheckWritableLocked();
    MaybeFlushRefusalSummaryLocked(now, /*force=*/stopping_);
    if (!pending_.empty() && !GroupCommitReadyLocked() &&
        options_.group_commit_delay > absl::ZeroDuration()) {
      // Group commit: a signer is at the HSM and its line follows shortly;
      // one fdatasync for both costs less than two (and wakes fewer threads
      // on the way back). Bounded, and over as soon as nothing is expected.
      mu_.AwaitWithTimeout(
          absl::Condition(this, &AuditLog::GroupCommitReadyLocked),
          options_.group_commit_delay);
    }

    // A planned rollover first closes the segment with a checkpoint over
    // its lines (this turn writes the batch and the checkpoint into it);
    // the next turn rolls over.
    bool closing_checkpoint = false;
    const bool rollover_due = RolloverDueLocked(now);
    if (rollover_due && options_.sign_checkpoint &&
        !segment_closing_checkpoint_tried_ &&
        (last_checkpoint_seq_ + 1 < next_seq_ || !pending_.empty())) {
      closing_checkpoint = true;
      segment_closing_checkpoint_tried_ = true;
    } else if (rollover_due) {
      const std::string why =
          rollover_requested_
              ? std::string("a new segment was asked for (SIGHUP)")
              : absl::StrCat("the segment reached its ",
                             file_size_ >= options_.segment_max_bytes &&
                                     options_.segment_max_bytes > 0
                                 ? "size"
                                 : "age",
                             " limit");
      const bool requested = std::exchange(rollover_requested_, false);
      absl::Status rolled =
          DiskCallUnlocked("rolling over to a new segment",
                           [&] { return OpenNextSegment(why); });
      if (rolled.ok()) {
        durable_seq_ = next_seq_ - 1;
        segment_closing_checkpoint_tried_ = false;
        if (rollover_failing_) {
          SIGNET_LOG_INFO("audit log: the segment rolled over after all");
          rollover_failing_ = false;
        }
      } else if (current_closed_) {
        broken_ = rolled;  // the old one is closed: recover into a new one
        recovery_wait_ = options_.recovery_backoff;
        continue;
      } else {
        // Could not even close it (an immutable file?): keep writing it and
        // try again later: a SIGHUP's rollover too, and closing the segment
        // with a checkpoint over the lines written since (a tenth outside
        // attack: the retry was dropped, and the next rollover left the
        // segment's last lines under no checkpoint).
        next_rollover_try_ = options_.clock->Now() + kRolloverRetry;
        rollover_requested_ = rollover_requested_ || requested;
        segment_closing_checkpoint_tried_ = false;
        if (!rollover_failing_) {
          SIGNET_LOG_WARN(
              "audit log: the segment could not be rolled over "
              "({}); writing on in it, trying again every {}",
              rolled.ToString(), absl::FormatDuration(kRolloverRetry));
          rollover_failing_ = true;
        }
      }
    }

    std::vector<Pending> batch;
    if (pending_.size() <= kMaxBatchLines) {
      batch.swap(pending_);
    } else {
      batch.assign(std::make_move_iterator(pending_.begin()),
                   std::make_move_iterator(pending_.begin() + kMaxBatchLines));
      pending_.erase(pending_.begin(), pending_.begin() + kMaxBatchLines);
    }
    uint64_t max_ticket = 0;
    for (const Pending& p : batch) {
      max_ticket = std::max(max_ticket, p.ticket);
    }

    // A checkpoint goes after this batch, covering it.
    const uint64_t requested = checkpoint_requested_;
    const bool explicit_checkpoint = requested > checkpoint_done_;
    const bool new_lines = next_seq_ - 1 + batch.size() > last_checkpoint_seq_;
    bool checkpoint = false;
    if (options_.sign_checkpoint) {
      if (explicit_checkpoint || closing_checkpoint) {
        checkpoint = true;
      } else if (stopping_ && pending_.empty()) {
        checkpoint = new_lines && !final_checkpoint_tried;
        final_checkpoint_tried = true;
      } else if (now >= next_checkpoint_) {
        checkpoint = new_lines;
        if (!new_lines) {
          next_checkpoint_ = now + options_.checkpoint_interval;  // idle
        }
      }
    }
    if (batch.empty() && !checkpoint) {
      if (stopping_ && pending_.empty()) {
        break;
      }
      continue;
    }

    // Write the batch and release its callers before signing: they never
    // wait for the HSM.
    std::vector<std::string> checkpoint_lines;
    absl::Status status =
        DiskCallUnlocked("writing lines and syncing them",
                         [&] { return WriteBatch(batch, &checkpoint_lines); });
    if (status.ok()) {
      durable_ticket_ = std::max(durable_ticket_, max_ticket);
      durable_seq_ = next_seq_ - 1;
    } else {
      broken_ = status;
    }
    RunDurableCallbacksLocked();

    absl::Status checkpoint_status = status;
    if (status.ok() && checkpoint) {
      SignedCheckpoint signed_checkpoint = SignCheckpointLocked();
      checkpoint_status = signed_checkpoint.status;
      const uint64_t checkpoint_seq = next_seq_;
      if (!signed_checkpoint.members.empty()) {
        std::vector<Pending> line;
        line.push_back(Pending{0, options_.clock->Now(),
                               std::move(signed_checkpoint.members),
                               signed_checkpoint.status.ok()});
        status = DiskCallUnlocked("writing lines and syncing them", [&] {
          return WriteBatch(line, &checkpoint_lines);
        });
        if (status.ok()) {
          durable_seq_ = next_seq_ - 1;
          if (checkpoint_status.ok()) {
            last_checkpoint_seq_ = checkpoint_seq;
          }
        } else {
          broken_ = status;
          checkpoint_status = status;
        }
      }
      next_checkpoint_ = options_.clock->Now() + options_.checkpoint_interval;
    }
    if (checkpoint && explicit_checkpoint) {
      checkpoint_done_ = requested;
      if (checkpoint_status.ok()) {
        checkpoint_ok_ = requested;
      } else {
        checkpoint_error_ = checkpoint_status;
      }
    }
    if (options_.syslog && checkpoint) {
      // Only once durable: syslog must never hold a checkpoint the file
      // does not.
      mu_.Unlock();
      for (const std::string& line : checkpoint_lines) {
        SendToSyslog(LOG_NOTICE, absl::StrCat("audit-checkpoint ", line),
                     options_.syslog_socket);
      }
      if (!checkpoint_status.ok()) {
        SendToSyslog(LOG_WARNING,
                     absl::StrCat("audit-checkpoint-failed ",
                                  checkpoint_status.ToString()),
                     options_.syslog_socket);
      }
      mu_.Lock();
    }
  }
}

void AuditLog::AlertSyslog(const std::string& message) const {
  if (options_.syslog) {
    SendToSyslog(LOG_WARNING, message, options_.syslog_socket);
  }
}

}  // namespace signet::server
