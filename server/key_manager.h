// The scopes' keys while signetd runs: the reconcile loop (a thread that
// runs a rotation::KeyReconciler pass at each schedule boundary and every
// interval), the scopes' serving keys it builds after each pass, and the
// operators' key changes (rotate, revoke), which run on the same thread so
// that exactly one writer touches the token. docs/architecture.md,
// "Rotation"; the README's "Key rotation" and "Operating keys".
//
// Thread-safe: Scopes() and LastPass() from any thread; operator calls are
// queued to the loop's thread and answered from it.
#ifndef SIGNET_SERVER_KEY_MANAGER_H_
#define SIGNET_SERVER_KEY_MANAGER_H_

#include <atomic>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"
#include "base/clock.h"
#include "hsm/key_store.h"
#include "rotation/reconcile.h"
#include "rotation/schedule.h"
#include "server/audit_log.h"
#include "server/serving_state.h"
#include "signet/v1/admin.pb.h"
#include "signet/v1/config.pb.h"

namespace signet::server {

// The audit line of a lifecycle event, by `caller` ("signetd", or the
// admin who caused it).
AuditEvent AuditEventOf(const rotation::KeyEvent& event,
                        const std::string& caller);

// What rotation needs of a validated scope.
rotation::ScopeKeyPolicy KeyPolicyFor(const signet::v1::ScopeConfig& scope);

// The scopes' serving keys from a reconcile pass. A key whose record did
// not change keeps its ScopeState from `previous` (nothing recomputed).
absl::StatusOr<ScopeKeysMap> BuildScopeKeys(
    const signet::v1::SignetConfig& config,
    const std::map<std::string, rotation::ScopeKeySet>& sets,
    const ScopeKeysMap& previous, absl::Time now);

// Where a scope's schedule goes next: "standby activates", "key retires"
// (no standby), ... and when; {"", InfiniteFuture} if nothing is due.
struct NextTransition {
  std::string what;
  absl::Time at = absl::InfiniteFuture();
};
NextTransition NextTransitionOf(const ScopeKeys& keys, absl::Time now);

// A scope the manager keeps on the schedule but neither publishes nor
// serves: signetd's audit checkpoint key (server/audit_keys.h).
struct InternalScope {
  rotation::ScopeKeyPolicy policy;
  // Its keys after each pass, on the pass's thread. An error fails the pass
  // (logged, audited, retried).
  std::function<absl::Status(const rotation::ScopeKeySet& keys, absl::Time now)>
      on_pass;
};

class KeyManager {
 public:
  // Called on the loop's thread after each successful pass with the new
  // scopes' keys.
  using OnKeys = std::function<void(const ScopeKeysMap& scopes)>;

  // `store`, `audit` and `clock` must outlive the manager. `config` is
  // validated. `clock` decides every key state and schedule boundary, and
  // the loop waits on it (a test moves a base::SimulatedClock).
  // `kill_at_write` > 0 is for fault-injection tests only: the process
  // kills itself (SIGKILL) just before its kill_at_write-th token write.
  // `seen` is what the wall clock is measured against (signetd's is
  // anchored at the first start of the boot, base/wall_clock_anchor.h,
  // and lowered when the clock is set back); it must outlive the manager.
  // Null: the manager anchors its own when it is made.
  KeyManager(hsm::KeyStore* store, const signet::v1::SignetConfig& config,
             AuditLog* audit, const base::Clock& clock, OnKeys on_keys,
             int kill_at_write = 0, std::vector<InternalScope> internal = {},
             const base::ElapsedWallTime* seen = nullptr);
  ~KeyManager();
  KeyManager(const KeyManager&) = delete;
  KeyManager& operator=(const KeyManager&) = delete;

  // The first pass, on the caller's thread: on the writer it makes each
  // scope's first key and standby. Fails when the pass fails (the token
  // cannot be read); a scope with no key that may sign is logged (and its
  // keys' failures audited by the pass) but does not fail the start, so
  // the other scopes serve. `on_keys` is not called for it (Scopes() has
  // the result).
  absl::Status Start();

  // One `keys_at_start` audit line per configured scope, saying what the
  // token holds now (each key's generation, kid and state) and why this is
  // written (`why`). For a start after a run that ended without a stop
  // line: a token write it made just before it was killed has no event
  // line of its own (its `key_changes` line names it), and this line says
  // what came of it. Call after Start and before StartLoop.
  void AuditKeysAtStart(absl::string_view why);
  // Starts the loop's thread (after Start succeeded): from here on
  // `on_keys` runs on it.
  void StartLoop();
  // Stops the loop; queued operator calls are answered UNAVAILABLE. False
  // when the loop is still inside the HSM after `timeout` (a stalled HSM: a
  // PKCS#11 call cannot be cancelled): its thread is left running, and the
  // caller must exit without destroying what the loop uses (signetd does).
  bool Stop(absl::Duration timeout = absl::InfiniteDuration());

  bool writer() const { return writer_; }
  ScopeKeysMap Scopes() const ABSL_LOCKS_EXCLUDED(mu_);
  // The keys this manager's revocations took out of service, from before
  // each revocation is written: what the Signer checks (ServingState).
  std::shared_ptr<const RevokedKeys> revoked() const { return revoked_; }

  struct PassStatus {
    absl::Time at = absl::InfinitePast();
    // The clock's elapsed time (base::Clock::Elapsed) read with `at`: the
    // pair says where the wall clock stood then (signetd compares it with
    // the clock now, base::WallClockStepDetector::OffsetOf).
    absl::Duration elapsed = -absl::InfiniteDuration();
    absl::Status status;
    // Empty when the wall clock agreed with the time seen pass; otherwise
    // how far ahead it read and what that held back.
    std::string wall_clock_anomaly;
  };
  PassStatus LastPass() const ABSL_LOCKS_EXCLUDED(mu_);

  // OK unless the loop has been on one piece of work (a pass, or the
  // operator changes taken with it) for longer than `stuck_after`; then
  // UNAVAILABLE saying for how long. A PKCS#11 call on a connection the
  // pool abandoned may never return, and every key change waits behind
  // it while signing goes on (an outside attack found revocation blocked
  // so while health and status said all was well). Any thread.
  absl::Status LoopCondition(absl::Duration stuck_after) const;

  // An operator's key change. `admin` is the caller's identity (audited and
  // recorded); `request_id` makes a retry apply once: the same id with the
  // same request answers as the first time, with another request
  // INVALID_ARGUMENT. `done` runs on the loop's thread. `deadline` is the
  // call's (monotonic, as the request watchdog measures it, so both agree
  // however the wall clock steps): a change whose turn comes after it
  // is not applied (DEADLINE_EXCEEDED), since its caller has given up and
  // was told it failed. `on_turn`, if set, runs on the loop's thread when
  // the change's turn comes and it is about to be applied (not stopping,
  // its deadline not near); it returns false when the call has been
  // answered already as not started (PendingCall::MarkStarted), and then
  // the change is not applied: a change whose turn has not come by its
  // deadline, or by Stop, is never applied, and its caller is told so.
  using OnTurn = std::function<bool()>;
  void RotateKey(
      const signet::v1::RotateKeyRequest& request, const std::string& admin,
      base::MonotonicDeadline deadline,
      std::function<void(absl::StatusOr<signet::v1::RotateKeyResponse>)> done,
      OnTurn on_turn = {});
  void RevokeKey(
      const signet::v1::RevokeKeyRequest& request, const std::string& admin,
      base::MonotonicDeadline deadline,
      std::function<void(absl::StatusOr<signet::v1::RevokeKeyResponse>)> done,
      OnTurn on_turn = {});
  // What RotateKey and RevokeKey refuse before the change is queued
  // (INVALID_ARGUMENT): the Admin service asks first, so a malformed
  // request hears what is wrong with it whatever the loop is doing.
  static absl::Status Check(const signet::v1::RotateKeyRequest& request);
  static absl::Status Check(const signet::v1::RevokeKeyRequest& request);

  // Asks for a pass soon, on the loop's thread: the Signer calls it when
  // the key store says a key is gone from the token, so health and the
  // refusals follow within about a second instead of an interval. At most
  // one asked-for pass starts per kMinAskedPassSpacing; more asks in
  // between are folded into it. Thread-safe, cheap.
  void RequestPass() ABSL_LOCKS_EXCLUDED(mu_);

  // Called about once a second from a thread whose own wait is monotonic
  // (signetd's health loop). The loop's timed waits end on the wall clock
  // (Debian's Abseil waits for an absolute CLOCK_REALTIME instant), so a
  // clock set back while it waits stretches the wait by the step; each
  // tick re-checks whether the wait is over by its own measure, so the
  // loop is at most about a second late whatever the clock did.
  void Tick() ABSL_LOCKS_EXCLUDED(mu_);
  static constexpr absl::Duration kMinAskedPassSpacing = absl::Seconds(1);

  // Empty unless this writer's last check that the HSM token takes writes
  // (hsm::KeyStore::CheckWritable) failed; then since when and why. The
  // passes write only when a key's time comes, so without the check a
  // token that stopped taking writes showed only when a rotation failed.
  // Checked by the first pass, then by a pass once
  // kTokenWriteCheckInterval of the clock's elapsed time has gone by, and
  // by every pass while it fails. Empty on a replica (it writes no
  // keys). Any thread.
  std::string TokenWriteProblem() const ABSL_LOCKS_EXCLUDED(mu_);
  static constexpr absl::Duration kTokenWriteCheckInterval = absl::Minutes(5);

  // Operator calls waiting at once; more are refused RESOURCE_EXHAUSTED.
  static constexpr size_t kMaxQueuedCalls = 64;
  // Request ids remembered in memory.
  static constexpr size_t kMaxRememberedRequests = 1024;
  // Audit lines kept while the audit log cannot be written (Audit).
  static constexpr size_t kMaxUnwrittenEvents = 256;
  // Operators' changes kept in one key record (the newest).
  static constexpr int kMaxRecordedChanges = 4;

 private:
  // An applied change's request and answer, by request id.
  struct Remembered {
    std::string request;  // the request's serialization
    std::string response;
  };

  void Loop();
  // A pass now, then the new keys swapped in (and, if `notify`, handed to
  // `on_keys`); on the loop's thread once it runs.
  absl::Status PassAndPublish(bool notify = true);
  // The keys as the reconciler knows them without reading the token
  // (KeyReconciler::KnownSets) swapped in and handed to `on_keys`: after an
  // operator's change whose pass failed. On the loop's thread.
  absl::Status PublishKnown();
  // `scopes` served from now on, and handed to `on_keys` if `notify`.
  void SwapIn(const ScopeKeysMap& scopes, bool notify) ABSL_LOCKS_EXCLUDED(mu_);
  // Writes `line` to the audit log, after the lines kept from before. A
  // line the log cannot take now (it is broken: a full disk) is kept, up to
  // kMaxUnwrittenEvents, and written once it can, saying so: a change whose
  // "key_changes" line was written before its token write does not lose
  // what the write did when the log breaks in between. The thread that
  // runs passes (Start's, then the loop's).
  void Audit(AuditEvent line);
  // Writes the lines Audit kept (and, if it had to drop some, a line that
  // says how many); the log's error when it still cannot.
  absl::Status WriteUnwrittenEvents();
  // Queues `task` for the loop's thread; false (task not run) when full or
  // stopping.
  bool Post(std::function<void()> task) ABSL_LOCKS_EXCLUDED(mu_);
  // The operator call machinery shared by RotateKey and RevokeKey: answers
  // a request id seen before from memory; otherwise runs `change` (which
  // returns the response), remembers it if it was applied, and runs a pass.
  // On the loop's thread.
  // `change` gets the request's serialization. A request id not in memory
  // is looked up in every scope's records (RecordedChange), so a retry
  // after a restart answers as the first time, and the id reused for
  // another request, on any scope, is refused.
  absl::StatusOr<std::string> Change(
      const google::protobuf::Message& request, const std::string& request_id,
      const std::function<
          absl::StatusOr<std::string>(const std::string& fingerprint)>& change);
  // The change with `request_id` recorded in any record, if any.
  absl::StatusOr<std::optional<rotation::OperatorChange>> RecordedChange(
      const std::string& request_id);
  using Planner =
      std::function<absl::StatusOr<std::vector<rotation::KeyAction>>(
          const std::vector<rotation::KeyRecord>&,
          const rotation::SchedulePolicy&, absl::Time)>;
  using Responder = std::function<std::string(
      const std::vector<rotation::KeyAction>&, absl::Time)>;
  // Plans (with the scope's records as the token has them now) and applies
  // an operator's change; returns the serialized response. Loop thread.
  // The change (its request id and the SHA-256 of `fingerprint`, with the
  // response) is written into the first record the plan writes.
  // DEADLINE_EXCEEDED, with nothing written, when `deadline` has passed by
  // the time the token's records are read and the plan is made (the HSM
  // may have stalled meanwhile). When the change was made but some of its
  // writes failed, `*warning` says so (for the answer's warning; a retry
  // answers without it, as the loop completes the writes).
  absl::StatusOr<std::string> ApplyChange(
      const std::string& scope, const std::string& admin,
      base::MonotonicDeadline deadline, const std::string& request_id,
      const std::string& fingerprint, const Planner& plan,
      const Responder& respond, std::string* warning);
  // Queues an operator's change for the loop's thread, with its request id.
  template <typename Request, typename Response>
  void Submit(const Request& request, const std::string& admin,
              base::MonotonicDeadline deadline,
              std::function<void(absl::StatusOr<Response>)> done,
              OnTurn on_turn, Planner plan, Responder respond);
  // The scope's records as the token has them now.
  absl::StatusOr<std::vector<rotation::KeyRecord>> ReadScope(
      const std::string& scope);
  const rotation::ScopeKeyPolicy* PolicyFor(const std::string& scope) const;

  hsm::KeyStore* const store_;
  const signet::v1::SignetConfig config_;
  AuditLog* const audit_;
  const base::Clock& clock_;
  // The wall time seen pass: the caller's, or (own_seen_) since this
  // object was made.
  const std::unique_ptr<const base::ElapsedWallTime> own_seen_;
  const base::ElapsedWallTime& seen_;
  const OnKeys on_keys_;
  const bool writer_;
  const absl::Duration interval_;
  std::vector<rotation::ScopeKeyPolicy> policies_;
  const std::vector<InternalScope> internal_;
  std::unique_ptr<rotation::KeyReconciler> reconciler_;
  // Who the events of the change running now are by ("" for the loop).
  std::string acting_admin_;
  // Marked by an operator's revocation before it is written.
  const std::shared_ptr<RevokedKeys> revoked_ = std::make_shared<RevokedKeys>();

  // Loop-thread only.
  // Whether the wall clock read ahead of the time seen pass at the last
  // pass (ElapsedWallTime::AheadBy): its changes are logged.
  bool clock_ahead_ = false;
  // The token write check (TokenWriteProblem), when due. In a pass that
  // read the token (PassAndPublish).
  void CheckTokenWritableIfDue() ABSL_LOCKS_EXCLUDED(mu_);
  absl::Duration next_token_write_check_ = -absl::InfiniteDuration();
  absl::Time token_unwritable_since_ = absl::InfinitePast();
  std::string token_write_problem_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, Remembered> remembered_;
  // Audit lines the log could not take yet (Audit), and how many more it
  // had no room to keep.
  std::deque<AuditEvent> unwritten_events_;
  size_t unwritten_events_dropped_ = 0;
  std::deque<std::string> remembered_order_;

  mutable absl::Mutex mu_;
  ScopeKeysMap scopes_ ABSL_GUARDED_BY(mu_);
  PassStatus last_pass_ ABSL_GUARDED_BY(mu_);
  std::deque<std::function<void()>> tasks_ ABSL_GUARDED_BY(mu_);
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  bool pass_asked_ ABSL_GUARDED_BY(mu_) = false;
  std::thread thread_;
  absl::Notification loop_done_;  // the loop's thread has returned
  // base::MonotonicNow() in nanoseconds when the loop took up its current
  // work; kIdle between pieces of work.
  static constexpr int64_t kIdle = INT64_MIN;
  std::atomic<int64_t> busy_since_ns_{kIdle};
};

}  // namespace signet::server

#endif  // SIGNET_SERVER_KEY_MANAGER_H_
