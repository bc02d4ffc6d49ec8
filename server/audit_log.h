// signetd's audit log: one JSON line per event in an append-only file, made a
// hash chain by each line carrying the SHA-256 of the line before, with
// checkpoints signed by a dedicated audit key in the HSM and copied to syslog
// (docs/architecture.md, "The audit log"; "Principles", 6: if the log cannot
// be written, signing stops).
//
// Line format (one compact JSON object per line, ASCII only: every non-ASCII
// character is written as a \uXXXX escape, invalid UTF-8 as U+FFFD; members in
// this fixed order, empty string members omitted):
//
//   {"seq":N,"time":"2026-11-23T16:42:50.123Z","event":"sign",
//    "caller":"uri:spiffe://...","scope":"...","kid":"...","alg":"ES256",
//    "input_sha256":"<hex>","result":"OK","detail":"...","prev":"<hex>"}
//
//   seq    1, 2, 3, ... with no gaps: line N of the file has seq N.
//   time   RFC 3339, UTC, milliseconds: when the event was handed to the log.
//   prev   lower-case hex SHA-256 of the previous line's bytes without its
//          newline; 64 zeros on line 1.
//
// Checkpoint lines (event "checkpoint"), written by the log itself:
//
//   {"seq":N,"time":"...","event":"checkpoint","head":"<hex>","count":N-1,
//    "kid":"<audit key kid>","sig":"<base64url r||s>","prev":"<hex>"}
//
//   head   hex SHA-256 of line N-1 (equal to prev; 64 zeros if N is 1).
//   count  the number of lines before this one.
//   sig    ES256 (ECDSA P-256, JWS form r||s, RFC 7518 section 3.4),
//          base64url without padding, over
//          SHA-256("signet-audit-checkpoint:" + decimal N + ":" + head)
//          (CheckpointDigest below), made by `sign_checkpoint`.
//
// Other lines the log writes itself:
//   "refusal_summary": {"seq","time","event","count":K,"detail","prev"}:
//       K refusals in one second beyond `refusals_per_second` that were not
//       written one by one; detail names the second and how many came from
//       each caller (the first 8 callers seen, the rest as "others").
//   "checkpoint_failed": {"seq","time","event","result":"<code>",
//       "detail":"<why>","prev"}: a checkpoint could not be signed.
//
// Every string member is cut to kMaxAuditFieldBytes (then ends in "...").
// Lines are only ever appended (the one exception: the bytes of a batch whose
// write failed are cut off again, see AuditLog). A broken chain is never
// repaired or continued by signet: Open refuses it, and VerifyAuditLog
// (server/audit_verify.h, which also parses lines for Open) names the first
// broken line.
//
// What this does not stop (docs/architecture.md, "The audit log"): a fully
// compromised signetd can sign checkpoints too; the off-host syslog copy
// bounds what it can hide to the time since the last checkpoint there.
#ifndef SIGNET_SERVER_AUDIT_LOG_H_
#define SIGNET_SERVER_AUDIT_LOG_H_

#include <cstddef>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "base/clock.h"

namespace signet::server {

// One audited event. Never put claims, payloads, PINs or key material in any
// member: the signed input appears only as its SHA-256.
struct AuditEvent {
  // "sign", "sign_batch_item", "refuse", "start", "stop", ... Required.
  // "checkpoint", "checkpoint_failed" and "refusal_summary" are reserved for
  // lines the log writes itself.
  std::string event;
  std::string caller;  // typed identity "uri:..." / "cn:...", or empty
  std::string scope;
  std::string kid;
  std::string alg;
  std::string input_sha256;  // hex SHA-256 of the signed input
  std::string result;        // "OK" or an absl status code name
  std::string detail;        // short; never claims, PINs or keys
};

// Longest value written for one string member, in bytes (before escaping).
inline constexpr size_t kMaxAuditFieldBytes = 1024;

// Signs a checkpoint digest (SHA-256, 32 bytes) with the dedicated audit key
// in the HSM and returns the ES256 signature in JWS form (r||s, 64 bytes).
// It is called from the log's writer thread, and every Append waits while it
// runs, so it must return within a bounded time (the server's gives up on the
// HSM after a deadline, server/audit_keys.h: a stalled HSM must surface as an
// error, not hang the log).
using CheckpointSigner =
    std::function<absl::StatusOr<std::string>(absl::string_view digest)>;

struct AuditLogOptions {
  // The log file. Created with mode 0600 if absent.
  std::string path;
  // May be empty (unit tests, tools): then no checkpoints are written and
  // Checkpoint() answers FAILED_PRECONDITION.
  CheckpointSigner sign_checkpoint;
  // The audit key's kid, recorded in checkpoint lines. Required with a signer.
  std::string checkpoint_kid;
  // A checkpoint is written this often if lines were added since the last
  // one (an idle log gets no new checkpoints). Must be positive.
  absl::Duration checkpoint_interval = absl::Minutes(1);
  // Send each checkpoint line to syslog (facility LOG_AUTHPRIV, LOG_NOTICE,
  // ident "signetd", message "audit-checkpoint <line>"), once it is durable
  // in the file. A failed checkpoint is sent with LOG_WARNING. Note that
  // openlog() is process-wide.
  bool syslog = true;
  // Where "syslog" goes: empty for the system's syslog(3) (/dev/log), else a
  // unix datagram socket that receives RFC 3164 messages (a log shipper's
  // own socket, or a test's).
  std::string syslog_socket;
  // Refusals beyond this many per second (by `now`) are not written one by
  // one but counted into one "refusal_summary" line per second, so a flood
  // of bad requests cannot fill the disk and stop signing. One caller gets
  // at most a fifth of them (at least one), so its flood leaves lines for
  // the others' refusals. Must be >= 0.
  int refusals_per_second = 50;
  // The clock for line times, the checkpoint schedule and refusal windows.
  // Must outlive the log.
  const base::Clock* clock = &base::SystemClock();
  // Group commit window. While a line is expected (AuditLog::ExpectLine: a
  // signer is at the HSM and appends when it returns), the writer holds the
  // next fdatasync up to this long, so that line shares it instead of
  // needing its own. It stops holding as soon as no line is expected any
  // more, so a lone caller never waits. Under load this trades up to this
  // much latency for far fewer syncs (and fewer wake-ups all along the
  // path): tests/bench/run_signer_bench measures it. Zero turns it off;
  // must not be negative (signetd's configuration allows up to 100 ms).
  absl::Duration group_commit_delay = absl::Milliseconds(2);
  // Segments. The file at `path` is the current segment; a closed one is
  // renamed to ClosedSegmentPath(path, its first seq) and never written
  // again. A new segment starts with a "segment" line that continues the
  // chain (its prev is the hash of the last durable line before it), when
  // the current one holds `segment_max_bytes` or is `segment_max_age` old
  // (0: no such limit), when RollOver() asks, and after a write failure.
  uint64_t segment_max_bytes = 0;
  absl::Duration segment_max_age = absl::ZeroDuration();
  // A rollover leaves RolloverMarkerPath(path) from before it closes the
  // current segment until the next one is durable, so a stop in between is
  // told apart from a current segment deleted while signetd was down: Open
  // with no file at `path` and closed segments continues the chain only
  // when the marker is there, or when this is set (an operator who has
  // looked, once: the new segment's first line says so); otherwise it is
  // FAILED_PRECONDITION, naming the file and what to do.
  bool accept_missing_segment = false;
  // After a write or fdatasync fails, the writer opens a new segment (never
  // appending to the failed file again), first after this long, then after
  // twice as long each time, up to 4 s, until it works; the log is broken
  // (UNAVAILABLE) until then. Zero: never (the log stays broken).
  absl::Duration recovery_backoff = absl::Seconds(1);
  // How often the writer checks, without writing a line, that the current
  // segment can take the next ones (WriteStatus says so): room for them
  // can be reserved past its end (fallocate(2) FALLOC_FL_KEEP_SIZE fails
  // as their write would: EPERM on an immutable file, ENOSPC on a full
  // file system) on a file system that is not read-only. Without it an
  // idle log looked writable until a signer's line failed (a fourteenth
  // outside attack: health SERVING for minutes on an immutable log). Only
  // health follows the check; a write decides whether a line is lost.
  // Zero: never.
  absl::Duration write_check_interval = absl::Seconds(1);
  // A disk call of the writer (writing lines and their fdatasync, the
  // write check, opening a segment) that has not returned after this long
  // makes WriteStatus UNAVAILABLE until it returns: a stalled disk or file
  // system (a frozen file system, a hung network volume) kept every line,
  // and so every signature, waiting while health said SERVING (a
  // fifteenth outside attack).
  absl::Duration disk_stall_after = absl::Seconds(3);
  // Fault injection for tests only: called on the writer's thread before
  // each batch of lines is written (a test blocks in it, as a stalled disk
  // would block the write).
  std::function<void()> before_write;
  // Fault injection for tests only: when > 0, the writer writes the first
  // half of line `kill_mid_line` (by seq), then kills the process with
  // SIGKILL, as a crash in the middle of an append would.
  uint64_t kill_mid_line = 0;
};

// The file that says a rollover of the log at `path` is under way:
// "<path>.rollover" (it holds the path of the segment being closed).
std::string RolloverMarkerPath(absl::string_view path);

// The file `name` in the directory of the audit log at `log_path`: the one
// directory signetd writes, where it keeps its audit keyring and its
// wall-clock anchor beside the log.
std::string BesideAuditLog(absl::string_view log_path, absl::string_view name);

// Where the segment of the log at `path` whose first line has seq
// `first_seq` goes when it is closed: "<path>.<first_seq, 20 digits>".
std::string ClosedSegmentPath(absl::string_view path, uint64_t first_seq);

// SHA-256 of "signet-audit-checkpoint:" + decimal `seq` + ":" + `head_hex`:
// the digest a checkpoint line's signature covers. INTERNAL if OpenSSL fails.
absl::StatusOr<std::string> CheckpointDigest(uint64_t seq,
                                             absl::string_view head_hex);

// The append-only, hash-chained, fail-closed audit log.
//
// One writer thread owns the file. Append calls that arrive while it is
// writing are batched into the next write: one write() and one fdatasync()
// for the whole batch (group commit), so concurrent signers share the cost of
// durability.
//
// Fail closed: the first write or fdatasync that fails breaks the log. That
// Append and every later Append and Checkpoint answer UNAVAILABLE (the
// service must then not release what it signed), refusals are dropped,
// until a new segment is open (AuditLogOptions::recovery_backoff). The
// failed file is never written again: after a failed fdatasync, Linux may
// have dropped the dirty pages, so a later "successful" fdatasync proves
// nothing. If a write fails part way, the bytes of that batch are cut off
// again (best effort; its callers get UNAVAILABLE), so the file still ends
// with a complete line. The new segment continues the chain from the last
// durable line; lines after it in the failed file were never durable.
//
// Thread-safety: Append, AppendRefusal, Checkpoint, last_sequence and syncs
// may be called concurrently from any number of threads. The destructor must
// not run concurrently with any other call.
class AuditLog {
 public:
  // Opens `options.path` for appending (O_APPEND|O_CLOEXEC; created with mode
  // 0600 and its directory synced if it did not exist), takes an exclusive
  // flock() on it, reads its last line to continue the sequence and the chain,
  // and starts the writer thread. The file may be any appendable file (a
  // character device such as /dev/full works: it has no last line).
  //
  // INVALID_ARGUMENT for bad options (empty path, a signer without a kid, a
  // non-positive checkpoint interval, negative refusals_per_second, no
  // clock). A last line without its newline (a write cut short: never
  // durable, so never answered) is moved to a side file "<path>.torn-<seq>",
  // the file is cut back to the whole line before it, and a "torn_tail" line
  // records it. FAILED_PRECONDITION if another AuditLog (in any process) has
  // the file open, if the file's last whole line is not a valid audit line
  // (the message names the line: signet never continues a broken chain; run
  // audit-verify and move the file aside), or if a torn line cannot be cut
  // off (an append-only file). NOT_FOUND / PERMISSION_DENIED /
  // UNAVAILABLE if the file cannot be opened, read or synced.
  static absl::StatusOr<std::unique_ptr<AuditLog>> Open(
      AuditLogOptions options);

  // Writes any refusal summary still pending, drains queued lines, writes a
  // final checkpoint (if a signer is set, the log is not broken and lines
  // were added since the last checkpoint), and stops the writer.
  ~AuditLog();

  AuditLog(const AuditLog&) = delete;
  AuditLog& operator=(const AuditLog&) = delete;

  // Appends one line and returns once it is on disk (write + fdatasync).
  // OK: the line is durable. UNAVAILABLE: it may not be, and the log is now
  // broken for good (see the class comment). INVALID_ARGUMENT for an empty or
  // reserved `event.event` (nothing is written).
  absl::Status Append(const AuditEvent& event);

  // Append for several events at once (e.g. the items of one SignJwtBatch):
  // their lines are consecutive, in this order, and all are durable when it
  // returns OK. The same status codes as Append; INVALID_ARGUMENT for any
  // bad event means none is written.
  absl::Status AppendAll(absl::Span<const AuditEvent> events);

  // AppendAll without waiting, so a worker can go back to the HSM while the
  // disk syncs: `done` gets what AppendAll would have returned. It runs on
  // the writer thread once the lines are durable, or the log broke first
  // (UNAVAILABLE), in append order, before the writer signs a checkpoint;
  // or at once on this thread for invalid events, a log already broken, or
  // no events. It must be quick and must not wait on this log (Append,
  // AppendAll, Checkpoint). Every `done` has run when the destructor
  // returns.
  // `expected` (from ExpectLine) is no longer expected once the lines are
  // queued, in the same critical section, so the writer never syncs in
  // between believing nothing more is coming.
  using DurableCallback = std::function<void(const absl::Status&)>;
  class ExpectedLine;
  void AppendAllAsync(absl::Span<const AuditEvent> events, DurableCallback done,
                      ExpectedLine expected = {});

  // Announces a line that will be appended soon (a signer calls it before
  // it goes to the HSM), so the writer may hold a sync for it (see
  // AuditLogOptions::group_commit_delay). The line stops being expected
  // when the returned object is passed to AppendAllAsync or destroyed. It
  // must not outlive the log.
  ExpectedLine ExpectLine();

  // Appends a refusal without waiting for the disk, in order with the other
  // lines, subject to `refusals_per_second`. An empty or reserved event name
  // is written as "refuse". Dropped silently if the log is broken.
  void AppendRefusal(const AuditEvent& event);

  // Signs and appends a checkpoint now (also done every checkpoint_interval
  // by the writer thread, and at destruction), returning once it is durable.
  // FAILED_PRECONDITION without a signer; UNAVAILABLE if the log is broken or
  // the line cannot be made durable; otherwise the signer's error (also
  // recorded as a "checkpoint_failed" line) or INTERNAL if its signature is
  // not 64 bytes.
  absl::Status Checkpoint();

  // Checkpoints from the next one on are signed by `signer` and name `kid`
  // (the audit key rotating while signetd runs: server/audit_keys.h). A
  // checkpoint being signed now keeps the key it started with.
  // FAILED_PRECONDITION if the log was opened without a signer;
  // INVALID_ARGUMENT for an empty kid or signer.
  absl::Status SetCheckpointKey(std::string kid, CheckpointSigner signer);
  // The kid that signs the next checkpoint.
  std::string checkpoint_kid() const;

  // Whether Open started a new chain: no closed segment, and no line in
  // the current one (line 1 is this process's).
  bool started_new_chain() const { return started_new_chain_; }
  // Whether Open found the current segment there but empty (a start that
  // stopped before its first line, or a file emptied), rather than making
  // it.
  bool found_empty_segment() const { return found_empty_segment_; }

  // Whether the log gets over a failed write by itself (a new segment, with
  // backoff): a regular file with recovery on. Otherwise a failed write
  // stays failed, and waiting for it is in vain.
  bool can_recover() const {
    return regular_file_ && options_.recovery_backoff > absl::ZeroDuration();
  }

  // The line Open could not append (the note of a torn last line moved
  // aside, when the disk is full), to be appended again by the caller; nullopt
  // when there is none. Each call takes it.
  std::optional<AuditEvent> TakeUnwrittenOpenLine();

  // Sends `message` to the syslog sink checkpoints go to, as a warning
  // (when syslog is on): for what a person off the host must see even if
  // this log is later removed.
  void AlertSyslog(const std::string& message) const;

  // The seq of the last line known to be on disk (0 for an empty file).
  uint64_t last_sequence() const;

  // Asks for a new segment at the writer's next turn (SIGHUP).
  void RollOver();
  // Segments opened since Open (rollovers and recoveries).
  uint64_t segments_opened() const;

  // How many fdatasync calls the log has made (for tests and metrics).
  uint64_t syncs() const;

  // OK while lines can be written; once the log is broken, why (health
  // turns NOT_SERVING: signing is refused then); also UNAVAILABLE while
  // the last write check (AuditLogOptions::write_check_interval) failed.
  absl::Status WriteStatus() const;

  // A line that is on its way (ExpectLine). Move-only; a default-constructed
  // one expects nothing.
  class ExpectedLine {
   public:
    // (Not "= default" with a member initializer: AppendAllAsync's default
    // argument needs this constructor before AuditLog is complete.)
    ExpectedLine() : log_(nullptr) {}
    ExpectedLine(ExpectedLine&& other) noexcept
        : log_(std::exchange(other.log_, nullptr)) {}
    ExpectedLine& operator=(ExpectedLine&& other) noexcept {
      if (this != &other) {
        Release();
        log_ = std::exchange(other.log_, nullptr);
      }
      return *this;
    }
    ~ExpectedLine() { Release(); }

   private:
    friend class AuditLog;
    explicit ExpectedLine(AuditLog* log) : log_(log) {}
    void Release();
    AuditLog* log_;
  };

 private:
  struct Pending {
    uint64_t ticket = 0;  // 0 for lines with no waiter
    absl::Time time;
    std::string members;  // JSON members between "time" and "prev"
    bool checkpoint = false;
  };
  // A signed checkpoint line, or else a "checkpoint_failed" line and why.
  struct SignedCheckpoint {
    absl::Status status;
    std::string members;  // empty if not even the failure could be recorded
  };

  AuditLog(AuditLogOptions options, int fd, uint64_t file_size,
           uint64_t last_seq, std::string last_hash_hex, uint64_t last_cp_seq);
  void StartWriter();

  // Closes the current segment (unless closed already) and opens the next
  // one at options_.path, starting with a "segment" line saying `why`.
  // Writer thread (or Open, before it starts), mu_ not held.
  absl::Status OpenNextSegment(absl::string_view why);
  // OK while the open segment is the file at options_.path; UNAVAILABLE
  // once it was deleted, moved or replaced there outside signet (its lines
  // would be where audit-verify never looks).
  absl::Status CheckStillAtPath() const;
  // After `batch` was written and synced: UNAVAILABLE when the open
  // segment is not the length signetd wrote (cut short, or written to, in
  // place outside signet). A segment cut short loses lines already
  // answered as durable. The batch (refused) is cut off again when it is
  // what ends the file, so the segment closes as it was left.
  absl::Status CheckSegmentLength(absl::string_view batch);
  // Writes the open segment's first file_size_ bytes, read back through
  // fd_, to `closed`: how a segment that is no longer at its path closes.
  absl::Status CopyOpenSegmentTo(const std::string& closed) const;
  bool RolloverDueLocked(absl::Time now) const ABSL_SHARED_LOCKS_REQUIRED(mu_);

  // The members of each event's line; INVALID_ARGUMENT for a bad event.
  static absl::StatusOr<std::vector<std::string>> LineMembers(
      absl::Span<const AuditEvent> events);
  // Runs (with mu_ released) the callbacks whose lines are durable, and all
  // of them when the log is broken.
  void RunDurableCallbacksLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  // Queues a line; returns its ticket. Also emits a due refusal summary first.
  uint64_t EnqueueLocked(absl::Time time, std::string members)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Queues a refusal_summary line counting `count` refusals.
  void PushRefusalSummaryLocked(uint64_t count, absl::string_view detail,
                                absl::Time now)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void MaybeFlushRefusalSummaryLocked(absl::Time now, bool force)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  bool WriterHasWorkLocked() const ABSL_SHARED_LOCKS_REQUIRED(mu_);
  // The group commit window may end: nothing more is expected, the batch is
  // big, or something must not wait (stop, explicit checkpoint).
  bool GroupCommitReadyLocked() const ABSL_SHARED_LOCKS_REQUIRED(mu_);
  void WriterLoop();
  // Signs a checkpoint over the current head, with mu_ released around the
  // signer.
  SignedCheckpoint SignCheckpointLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Chains, writes and syncs `batch` (mu_ not held); appends the checkpoint
  // lines among it to `checkpoint_lines`. On failure returns UNAVAILABLE;
  // the caller marks the log broken.
  absl::Status WriteBatch(const std::vector<Pending>& batch,
                          std::vector<std::string>* checkpoint_lines);
  // Whether the write check runs: asked for, on a regular file (not a
  // device such as /dev/full), with a segment open.
  bool WriteCheckApplies() const {
    return options_.write_check_interval > absl::ZeroDuration() &&
           regular_file_ && fd_ >= 0;
  }
  // Whether the write check is due (it runs on the monotonic clock, so a
  // wall clock set back does not put it off).
  bool WriteCheckDueLocked() const ABSL_SHARED_LOCKS_REQUIRED(mu_);
  // What ends the idle writer's wait: work, or the write check due.
  bool IdleWriterShouldWakeLocked() const ABSL_SHARED_LOCKS_REQUIRED(mu_);
  // The write check, when it is due (mu_ released around it).
  void MaybeCheckWritableLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Releases mu_ around `call`, one of the writer's disk calls (`what`, for
  // WriteStatus while it has not returned past disk_stall_after).
  template <typename Call>
  auto DiskCallUnlocked(const char* what, Call call)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    disk_call_since_ = base::MonotonicNow();
    disk_call_ = what;
    mu_.Unlock();
    auto result = call();
    mu_.Lock();
    disk_call_since_ = absl::InfiniteDuration();
    return result;
  }

  const AuditLogOptions options_;

  // Owned by the writer thread (and by Open before it starts).
  int fd_;                     // the current segment; -1 between segments
  uint64_t file_size_;         // bytes known to hold complete lines
  uint64_t next_seq_;          // seq of the next line written
  std::string last_hash_hex_;  // hash of the last durable line
  uint64_t segment_first_seq_ = 1;
  absl::Time segment_opened_;
  bool current_closed_ = false;  // renamed away; no current segment yet
  // Segments (rollover and recovery) only for a regular file: a device
  // such as /dev/full is never renamed.
  bool regular_file_ = true;
  bool started_new_chain_ = false;
  bool found_empty_segment_ = false;
  std::optional<AuditEvent> unwritten_open_line_;
  std::string previous_segment_;
  uint64_t previous_first_seq_ = 0;

  mutable absl::Mutex mu_;
  std::vector<Pending> pending_ ABSL_GUARDED_BY(mu_);
  uint64_t next_ticket_ ABSL_GUARDED_BY(mu_) = 1;
  uint64_t durable_ticket_ ABSL_GUARDED_BY(mu_) = 0;
  // AppendAllAsync callers, in ticket order.
  std::deque<std::pair<uint64_t, DurableCallback>> callbacks_
      ABSL_GUARDED_BY(mu_);
  uint64_t durable_seq_ ABSL_GUARDED_BY(mu_);
  uint64_t last_checkpoint_seq_ ABSL_GUARDED_BY(mu_);
  absl::Status broken_ ABSL_GUARDED_BY(mu_);
  // The last write check's result, and when the next one is due.
  absl::Status write_check_ ABSL_GUARDED_BY(mu_);
  // On base::MonotonicNow()'s scale.
  absl::Duration next_write_check_ ABSL_GUARDED_BY(mu_) =
      -absl::InfiniteDuration();
  // When the writer's current disk call began (MonotonicNow), infinite
  // while it is in none, and what it is.
  absl::Duration disk_call_since_ ABSL_GUARDED_BY(mu_) =
      absl::InfiniteDuration();
  const char* disk_call_ ABSL_GUARDED_BY(mu_) = "";
  uint64_t syncs_ ABSL_GUARDED_BY(mu_) = 0;
  // Lines announced by ExpectLine and not yet appended or given up.
  int64_t expected_lines_ ABSL_GUARDED_BY(mu_) = 0;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  bool rollover_requested_ ABSL_GUARDED_BY(mu_) = false;
  absl::Time next_rollover_try_ ABSL_GUARDED_BY(mu_) = absl::InfinitePast();
  // The current segment's closing checkpoint was tried (a planned rollover
  // is due); cleared when a new segment opens.
  bool segment_closing_checkpoint_tried_ ABSL_GUARDED_BY(mu_) = false;
  // A planned rollover failed and is being retried (logged once).
  bool rollover_failing_ ABSL_GUARDED_BY(mu_) = false;
  absl::Duration recovery_wait_ ABSL_GUARDED_BY(mu_);
  uint64_t segments_opened_ ABSL_GUARDED_BY(mu_) = 0;
  absl::Time next_checkpoint_ ABSL_GUARDED_BY(mu_);
  // Explicit Checkpoint() requests: generations requested, attempted
  // (finished), and satisfied by a durable checkpoint.
  // The key checkpoints are signed with (options_ at open, then
  // SetCheckpointKey).
  CheckpointSigner checkpoint_signer_ ABSL_GUARDED_BY(mu_);
  std::string checkpoint_kid_ ABSL_GUARDED_BY(mu_);
  uint64_t checkpoint_requested_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t checkpoint_done_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t checkpoint_ok_ ABSL_GUARDED_BY(mu_) = 0;
  absl::Status checkpoint_error_ ABSL_GUARDED_BY(mu_);
  // Refusal rate limit: the current one-second window (Unix seconds), how
  // many refusals it wrote, and how many it suppressed, by caller.
  int64_t refusal_window_ ABSL_GUARDED_BY(mu_) = 0;
  int refusals_in_window_ ABSL_GUARDED_BY(mu_) = 0;
  // Lines written in this window by caller (at most refusals_per_second
  // entries).
  std::map<std::string, int> written_by_caller_ ABSL_GUARDED_BY(mu_);
  uint64_t refusals_suppressed_ ABSL_GUARDED_BY(mu_) = 0;
  // Refusals while the log was broken (they cannot be written then): one
  // summary line in the segment that recovers.
  uint64_t refusals_while_broken_ ABSL_GUARDED_BY(mu_) = 0;
  std::map<std::string, uint64_t> suppressed_by_caller_ ABSL_GUARDED_BY(mu_);
  uint64_t suppressed_other_callers_ ABSL_GUARDED_BY(mu_) = 0;

  std::thread writer_;
};

}  // namespace signet::server

#endif  // SIGNET_SERVER_AUDIT_LOG_H_
