// Verification of a signetd audit log (the format is in server/audit_log.h):
// the hash chain, the sequence numbers, the form of every line, every
// checkpoint's signature (each line's form is server/audit_line.h), and,
// given the last checkpoint an operator copied
// from the off-host syslog sink, that the file still contains it, so a tail
// cut back past it or a rewritten chain is found (docs/architecture.md,
// "The audit log").
//
// Thread-safety: all functions are stateless and safe to call concurrently.
#ifndef SIGNET_SERVER_AUDIT_VERIFY_H_
#define SIGNET_SERVER_AUDIT_VERIFY_H_

#include <algorithm>
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "hsm/public_key.h"
#include "server/audit_line.h"

namespace signet::server {

struct AuditVerifyResult {
  uint64_t lines = 0;                // lines in the chain proved
  uint64_t first_seq = 1;            // its first line (1: the log's start)
  uint64_t last_seq = 0;             // its last line
  uint64_t checkpoints = 0;          // checkpoint lines among them
  uint64_t last_checkpoint_seq = 0;  // 0 if there is none
  uint64_t segments = 0;             // files read
  uint64_t audit_keys = 0;  // keys that signed checkpoints (with a keyring)
  // Lines at the end of a segment that the next segment does not continue
  // from: written but never durable (a write or fdatasync failed there), so
  // their calls were refused. Not part of the chain.
  uint64_t superseded_lines = 0;
  // Lines after the last checkpoint: no signature covers them, only the
  // chain, so they can be cut off or rewritten, and a correctly chained line
  // appended, without a trace in this file.
  uint64_t uncovered_lines() const {
    return last_seq - std::max(last_checkpoint_seq, first_seq - 1);
  }
};

struct AuditVerifyOptions {
  // An empty file is an error unless this is set: a log that should hold
  // lines and holds none was truncated or replaced.
  bool allow_empty = false;
  // Lines that no checkpoint covers are an error when this is set (for a
  // log that ended with a stop, whose final checkpoint covers everything).
  bool require_covered = false;
  // Segments verified at once (0: one per core).
  int threads = 0;
  // The trusted audit public keys by kid (their JWK thumbprint), e.g. from
  // the keyring signetd keeps beside the log (ReadAuditKeyring). When set,
  // each checkpoint is verified with the key its "kid" names (an unknown kid
  // is an error), instead of with `checkpoint_key`; and once the log holds
  // an "audit_key" line, each checkpoint's kid must have been introduced by
  // one before it.
  const std::map<std::string, hsm::PublicKey>* keyring = nullptr;
  // With a keyring, every audit key after the first to sign in the range
  // must have been vouched for: a checkpoint by an earlier accepted key
  // covers an "audit_key" line introducing it (signetd introduces each
  // successor while its predecessor still signs). Set this for a log from
  // before signet did so, whose audit key rotated at a restart.
  bool allow_unvouched_keys = false;
  // With a keyring, for a log verified from line 1: the kid that must sign
  // its first checkpoint (the keyring's first key, which signetd appended
  // when the log began), so a whole log replaced and signed by a key added
  // to the keyring is found. Empty: any key of the keyring.
  std::string first_kid;
};

// Longest keyring ReadAuditKeyring reads (ten years of daily keys fit).
inline constexpr size_t kMaxKeyringBytes = 16 << 20;

// Reads a keyring: PEM public keys (comment lines between them are ignored),
// by kid; `kids_in_order`, if given, gets the kids in the file's order.
// INVALID_ARGUMENT for a block that is not a public key; NOT_FOUND /
// PERMISSION_DENIED / FAILED_PRECONDITION (not a regular file, over
// kMaxKeyringBytes) if the file cannot be read.
absl::StatusOr<std::map<std::string, hsm::PublicKey>> ReadAuditKeyring(
    const std::string& path, std::vector<std::string>* kids_in_order = nullptr);

// Verifies the audit log at `path` with its closed segments
// (ClosedSegmentPath: "<path>.<first seq, 20 digits>", in order, then
// `path` itself), or, when `path` is a directory, the segments of the one
// log in it. Segments are read in parallel (options.threads), each once:
//   - every line is complete (ends with a newline) and well-formed
//     (ParseAuditLine);
//   - seq is 1, 2, 3, ... (no gaps, no repeats); a log of one file starts at
//     1; of several, each segment after the first starts with a "segment"
//     line whose prev is the hash of the line it continues from in the one
//     before (lines after that one there were never durable: they are
//     counted as superseded), and the first may be one that continues an
//     earlier, shipped segment (the proof then starts there);
//   - each prev is the SHA-256 of the previous line (64 zeros on line 1);
//   - each checkpoint's head is the SHA-256 of the line before it, its count
//     is its seq - 1, and, if `checkpoint_key` is non-null, its signature
//     verifies with that key (ES256 over CheckpointDigest). With a null key
//     signatures are not checked, so a recomputed chain goes unnoticed
//     unless `expected_last_checkpoint` catches it.
//   - if `expected_last_checkpoint` is not empty (a checkpoint line as sent to
//     syslog; anything before its first '{', such as the syslog prefix, and
//     trailing whitespace are ignored), the file holds exactly that line at
//     its seq.
// Lines after the last checkpoint are protected by the chain only.
//
// Verifying a log that signetd is still writing may report its last line as
// incomplete if a write is caught half-done.
//
// DATA_LOSS naming the first broken line and why, e.g. "line 17: prev does
// not match the hash of line 16"; also for an empty file and, with
// `options.require_covered`, for lines after the last checkpoint (see
// AuditVerifyOptions). INVALID_ARGUMENT if
// `expected_last_checkpoint` is not a well-formed checkpoint line.
// NOT_FOUND / PERMISSION_DENIED / UNAVAILABLE if the file cannot be read.
absl::StatusOr<AuditVerifyResult> VerifyAuditLog(
    absl::string_view path, const hsm::PublicKey* checkpoint_key,
    absl::string_view expected_last_checkpoint = "",
    const AuditVerifyOptions& options = {});

}  // namespace signet::server

#endif  // SIGNET_SERVER_AUDIT_VERIFY_H_
