#include "server/audit_keys.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <fstream>
#include <map>
#include <optional>
#include <string>
#include <system_error>
#include <thread>
#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "base/log.h"
#include "base/status_macros.h"
#include "hsm/public_key.h"
#include "rotation/key_state.h"
#include "rotation/schedule.h"
#include "server/audit_verify.h"
#include "server/scoped_fd.h"

namespace signet::server {
namespace {

// The current audit key's public half alone, for audit-verify
// --audit_public_key.
absl::Status WriteAuditPublicKey(const std::string& log_path,
                                 const hsm::PublicKey& key) {
  SIGNET_ASSIGN_OR_RETURN(std::string pem, key.SpkiPem());
  const std::string path = BesideAuditLog(log_path, "audit-checkpoint-key.pem");
  std::ofstream out(path, std::ios::trunc);
  out << pem;
  if (!out) {
    return absl::FailedPreconditionError(
        absl::StrCat("cannot write ", path,
                     ": is the audit directory writable by signetd?"));
  }
  return absl::OkStatus();
}

// Appends `key` to the keyring beside the log unless it holds its kid
// already. The keyring is never truncated, so audit-verify can check each
// checkpoint with its own key after the audit key has rotated.
absl::Status AppendToAuditKeyring(const std::string& log_path,
                                  const std::string& kid,
                                  const hsm::PublicKey& key, absl::Time now) {
  const std::string path = BesideAuditLog(log_path, "audit-keyring.pem");
  if (access(path.c_str(), F_OK) == 0) {
    SIGNET_ASSIGN_OR_RETURN(auto ring, ReadAuditKeyring(path));
    if (ring.contains(kid)) return absl::OkStatus();
  }
  SIGNET_ASSIGN_OR_RETURN(std::string pem, key.SpkiPem());
  const std::string entry =
      absl::StrCat("# signet audit checkpoint key\n# kid: ", kid,
                   "\n# added: ", absl::FormatTime(now), "\n", pem);
  ScopedFd fd(
      open(path.c_str(), O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644));
  if (fd.get() < 0 ||
      write(fd.get(), entry.data(), entry.size()) !=
          static_cast<ssize_t>(entry.size()) ||
      fsync(fd.get()) != 0) {
    return absl::FailedPreconditionError(
        absl::StrCat("cannot append to ", path,
                     ": is the audit directory writable by "
                     "signetd?"));
  }
  return absl::OkStatus();
}

}  // namespace

rotation::ScopeKeyPolicy AuditKeys::Policy(
    const signet::v1::SignetConfig& config) {
  rotation::ScopeKeyPolicy policy;
  policy.scope = kScope;
  policy.algorithm = "ES256";
  policy.key_spec = {hsm::SignatureAlgorithm::kEcdsaP256Sha256};
  const absl::Duration period =
      config.audit_key_rotation_seconds() != 0
          ? absl::Seconds(config.audit_key_rotation_seconds())
          : absl::Hours(24) *
                static_cast<int>(config.audit_key_rotation_days());
  policy.timings.rotation_period = period;
  // Nothing caches an audit key: the lead only has to let the introduction
  // be checkpointed, which happens at once.
  policy.timings.min_publish_lead = std::min(period / 2, absl::Minutes(11));
  // After an outage longer than a period, the successor that was introduced
  // and vouched for signs, not a new key no predecessor could vouch for.
  policy.revive_unused_successor = true;
  // No operator call reaches this key: one that vanished from the token
  // would otherwise keep signetd from ever starting again.
  policy.replace_unusable_keys = true;
  return policy;
}

AuditKeys::AuditKeys(hsm::KeyStore* store, std::string log_path,
                     const base::Clock& clock, absl::Duration sign_deadline)
    : store_(store),
      log_path_(std::move(log_path)),
      clock_(clock),
      sign_deadline_(sign_deadline) {}

absl::Status AuditKeys::Update(const rotation::ScopeKeySet& set,
                               absl::Time now) {
  absl::MutexLock update(&update_mu_);
  last_set_ = set;
  return UpdateLocked(set, now);
}

absl::Status AuditKeys::Refresh(absl::Time now) {
  absl::MutexLock update(&update_mu_);
  if (!last_set_.has_value()) return absl::OkStatus();
  return UpdateLocked(*last_set_, now);
}

absl::Status AuditKeys::UpdateLocked(const rotation::ScopeKeySet& set,
                                     absl::Time now) {
  const rotation::ScopeView view = rotation::ViewScope(set.records, now);
  if (view.signing < 0) {
    return absl::FailedPreconditionError(
        "no audit key may sign now, so no audit checkpoint can be signed");
  }
  // The keys that matter now, and their public halves.
  struct Found {
    Key key;
    std::shared_ptr<const hsm::PublicKey> public_key;
  };
  auto find = [&](int index) -> absl::StatusOr<Found> {
    const rotation::KeyRecord& record = set.records[index];
    auto loaded = set.loaded.find(record.key_id());
    if (loaded == set.loaded.end() || loaded->second.public_key == nullptr) {
      return absl::FailedPreconditionError(absl::StrCat(
          "audit key generation ", record.key_generation(), " is not loaded"));
    }
    Found found;
    found.key.record_key_id = record.key_id();
    found.key.key_id = loaded->second.key_id;
    found.key.kid = record.kid();  // its RFC 7638 JWK thumbprint
    found.key.generation = record.key_generation();
    found.public_key = loaded->second.public_key;
    return found;
  };
  SIGNET_ASSIGN_OR_RETURN(Found signing, find(view.signing));
  std::optional<Found> standby;
  absl::Time takes_over = absl::InfiniteFuture();
  if (view.standby >= 0) {
    SIGNET_ASSIGN_OR_RETURN(standby, find(view.standby));
    takes_over =
        rotation::TimeFromProto(set.records[view.standby].activate_at());
  }
  // A key is named in the log only once its public half is kept.
  for (const Found* found : {&signing, standby ? &*standby : nullptr}) {
    if (found == nullptr || in_keyring_.contains(found->key.kid)) continue;
    SIGNET_RETURN_IF_ERROR(AppendToAuditKeyring(log_path_, found->key.kid,
                                                *found->public_key, now));
    in_keyring_.insert(found->key.kid);
  }
  Key previous;
  {
    absl::MutexLock lock(&mu_);
    records_ = set.records;
    previous = current_;
    if (log_ == nullptr) current_ = signing.key;
  }
  standby_ = standby ? standby->key : Key();
  standby_takes_over_ = takes_over;
  if (log_ == nullptr) {
    // The start-up pass: Attach introduces the keys.
    return previous.kid == signing.key.kid
               ? absl::OkStatus()
               : WriteAuditPublicKey(log_path_, *signing.public_key);
  }

  if (!introduced_.contains(signing.key.kid)) {
    // Not seen as a standby (an upgrade, or a successor made and activated
    // between two passes): introduced now, vouched for only if the key
    // before it can still sign.
    SIGNET_RETURN_IF_ERROR(
        Introduce(log_, signing.key,
                  absl::StrCat("audit key generation ", signing.key.generation,
                               " signs checkpoints")));
    CheckpointNow(log_, "vouching for a new audit key");
  }
  bool checkpoint = false;
  if (signing.key.kid != previous.kid) {
    // The successor takes over.
    SIGNET_RETURN_IF_ERROR(Introduce(
        log_, signing.key,
        absl::StrCat("audit key generation ", signing.key.generation,
                     " signs checkpoints from now on, after generation ",
                     previous.generation, " (", previous.kid, ")")));
    {
      absl::MutexLock lock(&mu_);
      current_ = signing.key;
    }
    SIGNET_RETURN_IF_ERROR(log_->SetCheckpointKey(signing.key.kid, Signer()));
    SIGNET_LOG_INFO(
        "audit key generation {} ({}) signs checkpoints from now on",
        signing.key.generation, signing.key.kid);
    SIGNET_RETURN_IF_ERROR(WriteAuditPublicKey(log_path_, *signing.public_key));
    checkpoint = true;
  }
  // A new standby is introduced while the key that signs now can vouch for
  // it with a checkpoint.
  if (standby && !introduced_.contains(standby->key.kid)) {
    if (absl::Status st =
            Introduce(log_, standby->key,
                      absl::StrCat("standby audit key generation ",
                                   standby->key.generation,
                                   ": takes over signing checkpoints at ",
                                   rotation::FormatInstant(takes_over)));
        !st.ok()) {
      return st;
    }
    checkpoint = true;
  }
  if (checkpoint) CheckpointNow(log_, "over the audit key change");
  return absl::OkStatus();
}

std::string AuditKeys::current_kid() const {
  absl::MutexLock lock(&mu_);
  return current_.kid;
}

CheckpointSigner AuditKeys::Signer() {
  return [this](absl::string_view digest) { return SignWithCurrent(digest); };
}

absl::Status AuditKeys::Attach(AuditLog* log) {
  absl::MutexLock update(&update_mu_);
  Key current;
  {
    absl::MutexLock lock(&mu_);
    current = current_;
  }
  if (current.kid.empty()) {
    return absl::FailedPreconditionError(
        "the audit keys are attached to the log before a pass found them");
  }
  log_ = log;
  if (absl::Status st = Introduce(
          log, current,
          absl::StrCat("checkpoints are signed by audit key generation ",
                       current.generation,
                       "; its public key is in audit-keyring.pem beside this "
                       "log"));
      !st.ok()) {
    return st;
  }
  if (!standby_.kid.empty()) {
    SIGNET_RETURN_IF_ERROR(Introduce(
        log, standby_,
        absl::StrCat("standby audit key generation ", standby_.generation,
                     ": takes over signing checkpoints at ",
                     rotation::FormatInstant(standby_takes_over_))));
  }
  CheckpointNow(log, "vouching for the audit keys at start");
  return absl::OkStatus();
}

absl::Status AuditKeys::Introduce(AuditLog* log, const Key& key,
                                  std::string what) {
  AuditEvent line;
  line.event = "audit_key";
  line.caller = "signetd";
  line.kid = key.kid;
  line.alg = "ES256";
  line.result = "OK";
  line.detail = std::move(what);
  SIGNET_RETURN_IF_ERROR(log->Append(line));
  introduced_.insert(key.kid);
  return absl::OkStatus();
}

void AuditKeys::CheckpointNow(AuditLog* log, absl::string_view why) {
  if (absl::Status st = log->Checkpoint(); !st.ok()) {
    SIGNET_LOG_WARN(
        "audit checkpoint ({}) failed; the next one covers the "
        "same lines: {}",
        why, st.ToString());
  }
}

absl::StatusOr<std::string> AuditKeys::SignWithCurrent(
    absl::string_view digest) {
  Key key;
  std::vector<rotation::KeyRecord> records;
  {
    absl::MutexLock lock(&mu_);
    key = current_;
    records = records_;
  }
  // Never a checkpoint by a key that may not sign at this instant, whatever
  // the last pass said.
  const rotation::ScopeView view = rotation::ViewScope(records, clock_.Now());
  if (view.signing < 0 || records[view.signing].key_id() != key.record_key_id) {
    std::string state = "unknown";
    for (size_t i = 0; i < records.size(); ++i) {
      if (records[i].key_id() == key.record_key_id) {
        state = std::string(rotation::KeyStateName(view.states[i]));
      }
    }
    return absl::FailedPreconditionError(absl::StrCat(
        "the audit key ", key.kid, " is ", state,
        ", not ACTIVE: checkpoints wait for the next key pass to switch to "
        "its successor"));
  }
  auto signature = std::make_shared<Signature>();
  signature->asked_at = absl::Now();
  signature->asked_at_monotonic = base::MonotonicNow();
  {
    absl::MutexLock lock(&mu_);
    std::erase_if(held_, [](const std::shared_ptr<Signature>& held) {
      return held->done.HasBeenNotified();
    });
    // A held signature may be on a connection the pool has since dropped
    // and will never return: a new one goes after it once it is old, up to
    // kMaxHeldSignatures of them, so checkpoints come back when the HSM
    // does even if that call never ends.
    // Only recent ones count toward the cap: old incidents must not keep
    // checkpoints from coming back after a new one.
    const size_t recent = std::count_if(
        held_.begin(), held_.end(), [&](const std::shared_ptr<Signature>& h) {
          return signature->asked_at_monotonic - h->asked_at_monotonic <
                 kHeldSignatureCountsFor;
        });
    if (!held_.empty() &&
        (recent >= kMaxHeldSignatures ||
         signature->asked_at_monotonic - held_.back()->asked_at_monotonic <
             sign_deadline_ * kRetryHeldAfterDeadlines)) {
      return absl::UnavailableError(absl::StrCat(
          "the HSM has not answered the checkpoint signature asked of it at ",
          absl::FormatTime(absl::RFC3339_sec, held_.back()->asked_at,
                           absl::UTCTimeZone()),
          held_.size() > 1
              ? absl::StrCat(" (nor ", held_.size() - 1, " before it)")
              : "",
          "; it is stalled or unreachable (health says which), and no "
          "checkpoint is signed until it answers"));
    }
    held_.push_back(signature);
  }
  // A thread of its own, left in the HSM if it stalls (see Signer()).
  try {
    std::thread([signature, store = store_, key_id = key.key_id,
                 digest = std::string(digest),
                 deadline = signature->asked_at + sign_deadline_] {
      signature->result = store->SignDigest(key_id, digest, deadline);
      signature->done.Notify();
    }).detach();
  } catch (const std::system_error& e) {
    absl::MutexLock lock(&mu_);
    held_.pop_back();  // never asked
    return absl::ResourceExhaustedError(
        absl::StrCat("no thread for the checkpoint signature: ", e.what()));
  }
  // Measured on the monotonic clock in short waits: Abseil's timed waits
  // end at a wall-clock instant, which a clock step moves.
  const absl::Duration give_up = signature->asked_at_monotonic + sign_deadline_;
  while (!signature->done.WaitForNotificationWithTimeout(
      std::min(absl::Milliseconds(50), sign_deadline_))) {
    if (base::MonotonicNow() >= give_up) {
      return absl::DeadlineExceededError(absl::StrCat(
          "the HSM did not sign the checkpoint within ",
          absl::FormatDuration(sign_deadline_),
          " (it is slow or stalled: health says which); the next checkpoint "
          "covers the same lines"));
    }
  }
  return signature->result;
}

bool AuditKeys::signature_outstanding() const {
  absl::MutexLock lock(&mu_);
  return std::any_of(held_.begin(), held_.end(),
                     [](const std::shared_ptr<Signature>& held) {
                       return !held->done.HasBeenNotified();
                     });
}

}  // namespace signet::server
