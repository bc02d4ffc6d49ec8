// What signetd serves with: each scope's keys as the reconcile pass left
// them (ScopeKeys, one ScopeState per loaded key), and the ServingState the
// Signer service, the publication and health read. Immutable snapshots,
// swapped whole after each pass. No gRPC here: the HTTP endpoint and the
// key manager read these too.
#ifndef SIGNET_SERVER_SERVING_STATE_H_
#define SIGNET_SERVER_SERVING_STATE_H_

#include <atomic>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_set.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "hsm/key_store.h"
#include "rotation/key_record.pb.h"
#include "rotation/key_state.h"
#include "signet/v1/config.pb.h"

namespace signet::server {

class AuditLog;    // server/audit_log.h
class WorkerPool;  // server/worker_pool.h

// One key of a scope as the service serves it: the scope's configuration
// and the key (its record, loaded key, and what is precomputed for it).
struct ScopeState {
  signet::v1::ScopeConfig config;
  std::string alg;  // JOSE name
  rotation::KeyRecord record;
  hsm::LoadedKey key;
  // The key's kid, its RFC 7638 JWK thumbprint, as its record holds it
  // (computed from the public key when the key was generated, rotation/):
  // the JWS header's and the JWKS documents' kid.
  std::string kid;
  std::string header_b64;  // JWT scopes: the protected header, encoded
  std::string spki_pem;    // RAW scopes (published per the key's state)
};

// Builds the serving state of one of a scope's keys.
absl::StatusOr<std::shared_ptr<const ScopeState>> MakeScopeState(
    const signet::v1::ScopeConfig& config, const rotation::KeyRecord& record,
    const hsm::LoadedKey& key);

// A scope's keys as the reconcile pass left them: every record, and the
// loaded keys (signing, standby, still published) in generation order.
// Which key signs is decided per call from the records and the instant
// (rotation::ViewScope), so every replica with the same records switches
// keys at the same instant. Immutable.
class ScopeKeys {
 public:
  // `versions` holds a ScopeState for each loaded key of `records`.
  // `built_at` is the instant of the pass; the view computed for it is
  // reused until the next schedule change.
  // `unusable`: the keys the scope needs that could not be loaded, by hex
  // key id, and why (rotation::ScopeKeySet::unusable).
  ScopeKeys(signet::v1::ScopeConfig config, std::string alg,
            std::vector<rotation::KeyRecord> records,
            std::vector<std::shared_ptr<const ScopeState>> versions,
            const rotation::KeyTimings& timings, absl::Time built_at,
            std::map<std::string, std::string> unusable = {});

  const signet::v1::ScopeConfig& config() const { return config_; }
  const std::string& alg() const { return alg_; }
  const std::vector<rotation::KeyRecord>& records() const { return records_; }
  // Loaded keys, in generation order.
  const std::vector<std::shared_ptr<const ScopeState>>& versions() const {
    return versions_;
  }

  // The keys the scope needs that could not be loaded, by hex key id: why.
  const std::map<std::string, std::string>& unusable() const {
    return unusable_;
  }

  // The key that signs at `now`, or null when none may (none ACTIVE, or
  // the ACTIVE one is not loaded).
  std::shared_ptr<const ScopeState> SigningAt(absl::Time now) const;

  // Why no key signs at `now`, for a person to act on (FAILED_PRECONDITION);
  // OK when one does.
  absl::Status CanSignAt(absl::Time now) const;

  // The loaded keys published at `now` (PENDING, ACTIVE, RETIRED by the
  // view), in generation order. With `seen` (the time really seen pass,
  // base::ElapsedWallTime::IrreversibleStepsAt, before `now` when the wall
  // clock reads ahead), also those published at `seen`: a key leaves the
  // sets once its grace has really passed, not when a clock set forward
  // says so (its tokens may still be valid).
  std::vector<std::shared_ptr<const ScopeState>> PublishedAt(
      absl::Time now, absl::Time seen = absl::InfiniteFuture()) const;

  // The standby's record at `now` (the PENDING successor), or null.
  const rotation::KeyRecord* StandbyAt(absl::Time now) const;

  // What the view says of the clock at `now` (empty when all is well).
  std::string ClockAnomalyAt(absl::Time now) const;

 private:
  std::shared_ptr<const ScopeState> VersionFor(int record_index) const;

  const signet::v1::ScopeConfig config_;
  const std::string alg_;
  const std::vector<rotation::KeyRecord> records_;
  const std::vector<std::shared_ptr<const ScopeState>> versions_;
  const std::map<std::string, std::string> unusable_;
  // The signing key for [built_at_, valid_until_): the view does not
  // change between schedule boundaries.
  const absl::Time built_at_;
  absl::Time valid_until_;
  std::shared_ptr<const ScopeState> signing_;
};

// Every scope's keys, by scope name.
using ScopeKeysMap = std::map<std::string, std::shared_ptr<const ScopeKeys>>;

// What the service signs with, once the HSM is up. Immutable; swapped
// whole.
// The keys revoked in this replica's view: marked by an operator's
// revocation from just before it is written, and set from the records by
// every pass (so a revocation whose write's outcome was not known, or one
// another replica made, is settled at the next pass). No signature made
// with one is released from then on, even by a call that took the key
// before (the Signer checks before signing and again when it delivers). A
// twelfth outside attack saw hundreds of tokens with a revoked kid delivered
// after the revocation was answered OK, and thousands while it was being
// written. Thread-safe; the check is one atomic load until the first
// revocation.
class RevokedKeys {
 public:
  void Mark(absl::string_view key_id) ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock lock(&mu_);
    if (ids_.insert(std::string(key_id)).second) count_.fetch_add(1);
  }
  // Exactly `ids`: what a pass read from the records (every key whose
  // record holds a revocation), which settles a revocation whose write's
  // outcome was not known.
  void Reset(absl::flat_hash_set<std::string> ids) ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock lock(&mu_);
    ids_ = std::move(ids);
    count_.store(static_cast<int>(ids_.size()));
  }
  bool Contains(absl::string_view key_id) const ABSL_LOCKS_EXCLUDED(mu_) {
    if (count_.load() == 0) return false;
    absl::ReaderMutexLock lock(&mu_);
    return ids_.contains(key_id);
  }

 private:
  mutable absl::Mutex mu_;
  absl::flat_hash_set<std::string> ids_ ABSL_GUARDED_BY(mu_);
  std::atomic<int> count_{0};
};

struct ServingState {
  ScopeKeysMap scopes;
  // The key manager's (KeyManager::revoked); null: none.
  std::shared_ptr<const RevokedKeys> revoked;
  hsm::KeyStore* store = nullptr;
  WorkerPool* workers = nullptr;
  AuditLog* audit = nullptr;
  // Called when the key store answers that the token no longer holds a
  // key (deleted behind signet's back): asks for a reconcile pass now.
  // Thread-safe, cheap, may be called for every refused signature.
  std::function<void()> key_gone;
};

}  // namespace signet::server

#endif  // SIGNET_SERVER_SERVING_STATE_H_
