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

#include <optional>
#include <set>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
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

  // `store` and `clock` must outlive this object. `log_path` is the audit
  // log's path: the keyring and audit-checkpoint-key.pem are written beside
  // it. `clock` decides which key may sign a checkpoint.
  AuditKeys(hsm::KeyStore* store, std::string log_path,
            const base::Clock& clock = base::SystemClock());

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
  std::string current_kid() const ABSL_LOCKS_EXCLUDED(mu_);
  CheckpointSigner Signer();

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

  hsm::KeyStore* const store_;
  const std::string log_path_;
  const base::Clock& clock_;

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
};

}  // namespace signet::server

#endif  // SIGNET_SERVER_AUDIT_KEYS_H_
