// signetd's audit checkpoint key on the key schedule (docs/architecture.md,
// "The audit log").
//
// The audit key lives in the HSM under a scope name no configured scope can
// have, so no RPC reaches it. The key manager's reconcile passes keep it on
// the schedule like a scope's key (a standby made when a key activates,
// taking over at its retire time) but never publish it. This class follows
// those passes:
//   - it appends every audit key's public half to the keyring beside the log
//     (audit-keyring.pem, never truncated) before the key is named in the
//     log;
//   - it introduces each key with an "audit_key" line and has the current
//     key sign a checkpoint over it at once, so every key is vouched for by
//     the one before it (audit-verify checks this with the keyring);
//   - when the successor takes over, it switches the log's checkpoint key:
//     a checkpoint is only ever signed by the key that is ACTIVE.
//
// Thread-safe.
#ifndef SIGNET_SERVER_AUDIT_KEYS_H_
#define SIGNET_SERVER_AUDIT_KEYS_H_

#include <memory>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"
#include "base/clock.h"
#include "hsm/key_store.h"
#include "rotation/reconcile.h"
#include "server/audit_log.h"
#include "signet/v1/config.pb.h"

namespace signet::server {

class AuditKeys {
 public:
  // The audit key's scope in the token: not a valid scope name (those start
  // with a letter or digit).
  static constexpr char kScope[] = "_audit";

  // The audit key's policy: ES256, rotating every audit_key_rotation_seconds
  // (or _days); its successor is made a whole period ahead.
  static rotation::ScopeKeyPolicy Policy(
      const signet::v1::SignetConfig& config);

  // How long a checkpoint signature may take in the HSM by default.
  static constexpr absl::Duration kDefaultSignDeadline = absl::Seconds(5);
  // Signatures given up on and still in the HSM: a new one is sent after
  // the last of them once it is this many deadlines old, up to this many.
  static constexpr int kRetryHeldAfterDeadlines = 4;
  // At most this many held, of those asked in the last
  // kHeldSignatureCountsFor.
  static constexpr size_t kMaxHeldSignatures = 3;
  static constexpr absl::Duration kHeldSignatureCountsFor = absl::Minutes(10);

  // `store` and `clock` must outlive this object, and `store` must also
  // outlive a signature still outstanding when it is destroyed (see
  // signature_outstanding()). `log_path` is the audit log's path: the
  // keyring and audit-checkpoint-key.pem are written beside it. `clock`
  // decides which key may sign a checkpoint. `sign_deadline`: how long the
  // signer waits for the HSM.
  AuditKeys(hsm::KeyStore* store, std::string log_path,
            const base::Clock& clock = base::SystemClock(),
            absl::Duration sign_deadline = kDefaultSignDeadline);

  // The audit scope's keys after a reconcile pass at `now`. Appends new
  // keys' public halves to the keyring (FAILED_PRECONDITION if it cannot be
  // written). Before Attach (the start-up pass) it notes the signing key:
  // FAILED_PRECONDITION if no audit key may sign now. After Attach it
  // introduces new keys in the log and, when the signing key changed,
  // switches the log's checkpoint key to it.
  absl::Status Update(const rotation::ScopeKeySet& set, absl::Time now)
      ABSL_LOCKS_EXCLUDED(update_mu_, mu_);

  // Update again with the last pass's keys at `now`: at a stop, after the
  // key manager's last pass, so that the final checkpoint is signed by the
  // key that may sign now if the successor took over since.
  absl::Status Refresh(absl::Time now) ABSL_LOCKS_EXCLUDED(update_mu_, mu_);

  // For the log's options at open: the signing key's kid, and a signer that
  // signs with whichever key is current when it runs, refusing (with
  // FAILED_PRECONDITION) a key that may not sign at that instant.
  //
  // The log's writer waits for the signer, and every Append waits for the
  // writer, so the signer is bounded: the HSM call runs on a thread of its
  // own, and the signer gives up on it after `sign_deadline`
  // (DEADLINE_EXCEEDED; the log writes "checkpoint_failed" and goes on). A
  // call into a stalled HSM cannot be cancelled, so that thread stays in
  // the HSM until it answers; while it does, the signer answers
  // UNAVAILABLE at once rather than sending a second call after it, until
  // the held one is kRetryHeldAfterDeadlines deadlines old (it may be on a
  // connection that never answers), and at most kMaxHeldSignatures are
  // held. (A ninth outside attack: a stall while the writer signed held
  // every Admin call, and with them the stop, for as long as the HSM
  // stalled.)
  std::string current_kid() const ABSL_LOCKS_EXCLUDED(mu_);
  CheckpointSigner Signer();

  // Whether a checkpoint signature the signer gave up on is still in the
  // HSM. Its thread uses the key store: while this is true, the store and
  // its session pool must not be destroyed (signetd exits without closing
  // them instead).
  bool signature_outstanding() const ABSL_LOCKS_EXCLUDED(mu_);

  // Introduces the keys known so far in `log` (the signing key, and the
  // standby with the time it takes over), with a checkpoint over them; from
  // here on Update writes to `log`, which must outlive this object.
  absl::Status Attach(AuditLog* log) ABSL_LOCKS_EXCLUDED(update_mu_, mu_);

 private:
  struct Key {
    std::string record_key_id;  // hex, as in the records
    std::string key_id;         // CKA_ID bytes, for SignDigest
    std::string kid;            // JWK thumbprint
    uint64_t generation = 0;
  };

  absl::Status UpdateLocked(const rotation::ScopeKeySet& set, absl::Time now)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(update_mu_);
  absl::StatusOr<std::string> SignWithCurrent(absl::string_view digest)
      ABSL_LOCKS_EXCLUDED(mu_);
  // The "audit_key" line introducing `key`, saying `what`.
  absl::Status Introduce(AuditLog* log, const Key& key, std::string what)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(update_mu_);
  // A checkpoint now; a failure is logged (the next one covers the same
  // lines). Never with mu_ held: the signer takes it.
  static void CheckpointNow(AuditLog* log, absl::string_view why);

  // One checkpoint signature in the HSM, shared with the thread that
  // makes it.
  struct Signature {
    absl::Notification done;
    absl::StatusOr<std::string> result;  // set before `done`
    absl::Time asked_at;
    absl::Duration asked_at_monotonic;  // base::MonotonicNow()
  };

  hsm::KeyStore* const store_;
  const std::string log_path_;
  const base::Clock& clock_;
  const absl::Duration sign_deadline_;

  // Held through Update and Attach (one at a time), including while they
  // wait for a checkpoint.
  absl::Mutex update_mu_ ABSL_ACQUIRED_BEFORE(mu_);
  AuditLog* log_ ABSL_GUARDED_BY(update_mu_) = nullptr;
  std::optional<rotation::ScopeKeySet> last_set_ ABSL_GUARDED_BY(update_mu_);
  Key standby_ ABSL_GUARDED_BY(update_mu_);  // kid empty: none
  absl::Time standby_takes_over_ ABSL_GUARDED_BY(update_mu_);
  std::set<std::string> in_keyring_ ABSL_GUARDED_BY(update_mu_);  // kids
  std::set<std::string> introduced_ ABSL_GUARDED_BY(update_mu_);  // kids

  // What the signer reads.
  mutable absl::Mutex mu_;
  std::vector<rotation::KeyRecord> records_ ABSL_GUARDED_BY(mu_);
  Key current_ ABSL_GUARDED_BY(mu_);
  // The signatures the signer gave up on (oldest first), until they are
  // seen done.
  std::vector<std::shared_ptr<Signature>> held_ ABSL_GUARDED_BY(mu_);
};

}  // namespace signet::server

#endif  // SIGNET_SERVER_AUDIT_KEYS_H_
