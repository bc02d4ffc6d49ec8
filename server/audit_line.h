// One line of the audit log (the format is in server/audit_log.h), checked
// on its own: exactly the bytes the log writes, or refused with the reason.
//
// Verification reads every line of a log that grows by hundreds of GiB a day,
// so the check that accepts a line is a scanner of the one form the log
// writes (compact JSON, members in the log's order, canonical escapes and
// numbers), with no allocation. A refused line is parsed again with the JSON
// library only to name why (docs/architecture.md, "The audit log").
//
// Thread-safety: all functions are stateless and safe to call concurrently.
#ifndef SIGNET_SERVER_AUDIT_LINE_H_
#define SIGNET_SERVER_AUDIT_LINE_H_

#include <cstddef>
#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace signet::server {

// Longest line VerifyAuditLog (and AuditLog::Open) accepts, in bytes.
inline constexpr size_t kMaxAuditLineBytes = 64 * 1024;

// The members of one audit line that the chain and checkpoints depend on,
// as views into the line (string members as written, JSON escapes kept).
struct AuditLineView {
  uint64_t seq = 0;
  absl::string_view event;
  absl::string_view prev;  // hex
  absl::string_view kid;   // empty if absent
  // Checkpoint lines only (event "checkpoint").
  absl::string_view head;  // hex
  uint64_t count = 0;
  absl::string_view sig;  // base64url as written
};

// The same, owning its strings.
struct AuditLineInfo {
  uint64_t seq = 0;
  std::string event;
  std::string prev;  // hex
  // Checkpoint lines only (event "checkpoint").
  std::string head;  // hex
  uint64_t count = 0;
  std::string kid;
  std::string sig;  // base64url as written
};

// Checks that `line` (without its newline) is one well-formed audit line on
// its own: a JSON object exactly as the log writes it (compact, ASCII, no
// duplicate members: re-serializing it gives the same bytes), "seq" first
// (an integer >= 1), "time" (RFC 3339 UTC with milliseconds, years 1000 to
// 9999), "event" (non-empty), only known members, each of the right type,
// and "prev" last (64 lower-case hex digits); a checkpoint line also has
// "head" (64 hex), "count", "kid" and "sig" (base64url of 64 bytes). It does
// not look at other lines or signatures. On success `view` points into
// `line`. DATA_LOSS with the reason (no line number) otherwise.
absl::Status ScanAuditLine(absl::string_view line, AuditLineView& view);

// ScanAuditLine, with the members copied out.
absl::StatusOr<AuditLineInfo> ParseAuditLine(absl::string_view line);

namespace audit_line_internal {

// The scanner alone: true iff `line` is accepted (then `view` is filled).
bool ScanCanonical(absl::string_view line, AuditLineView& view);

// The same rules through the JSON library: parse, re-serialize, compare,
// then check each member. Slow; names the reason a line is refused. The
// tests hold the scanner to it.
absl::StatusOr<AuditLineInfo> ParseWithJsonLibrary(absl::string_view line);

}  // namespace audit_line_internal
}  // namespace signet::server

#endif  // SIGNET_SERVER_AUDIT_LINE_H_
