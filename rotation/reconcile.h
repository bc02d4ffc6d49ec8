// The reconcile pass: reads the key records from the token, and on the one
// rotation writer applies what the planner (rotation/schedule.h) says is
// due; then loads every key a scope needs (its signing key, its standby,
// its retired keys still published) and unloads the rest.
// docs/architecture.md, "Rotation".
//
// signetd runs a pass every reconcile_interval_seconds on the writer (every
// key_refresh_interval_seconds on a replica), at each schedule boundary,
// and when an operator's call asks. A pass is idempotent: a crash between
// any two token writes is completed by the next one (an unrecorded key
// pair is destroyed, a missing standby generated), and a failed pass
// changes nothing that the next cannot finish.
//
// Thread-compatible: one thread runs the passes.
#ifndef SIGNET_ROTATION_RECONCILE_H_
#define SIGNET_ROTATION_RECONCILE_H_

#include <functional>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "hsm/key_store.h"
#include "rotation/key_record.pb.h"
#include "rotation/schedule.h"
#include "rotation/scope_keys.h"

namespace signet::rotation {

// The planner's policy (rotation/schedule.h) of a scope's key policy.
SchedulePolicy ScheduleOf(const ScopeKeyPolicy& policy);

// The records of `scope` among `all`, in generation order: what the planner
// and ViewScope take.
std::vector<KeyRecord> RecordsOf(const std::map<std::string, KeyRecord>& all,
                                 absl::string_view scope);

// A lifecycle event for the audit log: a token write the pass made, a state
// a key entered with the clock (key_retired, key_unpublished, and
// key_activated seen by a replica), or a failure (key_action_failed).
struct KeyEvent {
  std::string event;
  std::string scope;
  std::string kid;
  bool ok = true;
  std::string detail;
};

// One scope's keys after a pass.
struct ScopeKeySet {
  // Every valid record of the scope, in generation order.
  std::vector<KeyRecord> records;
  // The loaded keys (signing, standby, still published), by hex key id.
  std::map<std::string, hsm::LoadedKey> loaded;
  // The keys the scope needs that could not be loaded, by hex key id: why
  // (a key gone from the token, a failed load-time check, an algorithm
  // other than the configuration's). Such a key neither signs nor is
  // published, and each pass tries it again.
  std::map<std::string, std::string> unusable;
};

class KeyReconciler {
 public:
  using EventSink = std::function<void(const KeyEvent&)>;

  // `store` must outlive the reconciler. `writer`: whether this replica
  // writes keys (not never_create_keys). `before_write`, if set, runs before
  // every token write (generate, record, destroy): the fault-injection
  // tests kill the process there.
  KeyReconciler(hsm::KeyStore* store, std::vector<ScopeKeyPolicy> policies,
                bool writer, EventSink events,
                std::function<void()> before_write = {});

  // One pass at `now`. Per scope: its records, its loaded keys, and the
  // keys it needs that could not be loaded (ScopeKeySet::unusable: one
  // scope's broken key never fails the pass, so the other scopes keep
  // signing). A loaded key the token no longer holds (deleted behind
  // signet's back) is unloaded and reported so. UNAVAILABLE when the token
  // cannot be read. Planned writes that fail are reported as
  // key_action_failed events and retried by the next pass; a key that
  // cannot be loaded is one key_action_failed event while its reason stays
  // the same, and a key_loaded event when it loads again.
  absl::StatusOr<std::map<std::string, ScopeKeySet>> RunOnce(absl::Time now);

  // RunOnce, with destroying private keys and pruning keys held to
  // `irreversible_until` (rotation/schedule.h, PlanScope): signetd passes
  // the wall time it has seen pass when the wall clock reads ahead of it.
  // Each key held so is one key_destruction_held event (ok=false) while it
  // stays held.
  absl::StatusOr<std::map<std::string, ScopeKeySet>> RunOnce(
      absl::Time now, absl::Time irreversible_until);

  // How many keys the last pass held back so (for GetStatus).
  size_t held_count() const { return held_.size(); }

  // Runs before a scope's planned token writes (and before destroying key
  // pairs without a record), with the scope ("" for the latter) and what is
  // about to be written; an error means none of them is made now (the pass
  // goes on; an operator's change answers that error). signetd makes it a
  // durable audit line, so no key changes while the audit log cannot be
  // written.
  using ChangeGate = std::function<absl::Status(absl::string_view scope,
                                                absl::string_view what)>;
  void SetChangeGate(ChangeGate gate) { change_gate_ = std::move(gate); }

  // Applies an operator's change (rotation/schedule.h: PlanRotateNow,
  // PlanRevoke) for `policy`'s scope, in order, stopping at the first
  // failure, whose status it returns (each write is also an event). Writer
  // only: FAILED_PRECONDITION on a replica. `completed`, if set, gets how
  // many of the actions were made (all of them on success).
  absl::Status Apply(const ScopeKeyPolicy& policy,
                     const std::vector<KeyAction>& actions,
                     size_t* completed = nullptr);

  // The policy of a configured scope, or null.
  const ScopeKeyPolicy* PolicyFor(absl::string_view scope) const;

  // The first instant after `now` at which a pass has something to do;
  // absl::InfiniteFuture() if none.
  absl::Time NextBoundary(absl::Time now) const;

  // Each scope's keys as this reconciler knows them without asking the
  // token: the records the last pass read with every record written since
  // (an operator's change included), and the keys loaded then. What an
  // operator's change must take effect on at once when the pass after it
  // cannot read the token (a revoked key must not go on signing until the
  // HSM answers again). Scopes no pass has read yet are left out.
  std::map<std::string, ScopeKeySet> KnownSets() const;

 private:
  // Applies `actions` for `policy` in order, stopping at the first failure
  // (the rest depend on it), whose status it returns; `completed` as for
  // Apply. `operators`: an operator's change (Apply), whose failure is
  // the caller's to retry, not the next pass's (its event says which).
  absl::Status Execute(const ScopeKeyPolicy& policy,
                       const std::vector<KeyAction>& actions,
                       size_t* completed = nullptr, bool operators = false);
  // Destroys key pairs that have no record and whose generation never
  // finished (a crash between generating a key and recording it); a key
  // pair without a record whose generation had finished is kept and
  // reported (key_unrecorded_kept, ok=false: an incident).
  // `stored` holds every record, readable by this version or not. False
  // when the change gate held the destruction back.
  bool DestroyUnrecorded(
      const std::map<std::string, hsm::StoredRecord>& stored);
  // The writer writes again, from the last pass, the record of a key that
  // was published then and whose record has vanished from `records`
  // (deleted, or shadowed by an unreadable newer generation, outside
  // signet) without a prune of this process: otherwise the planner would
  // promote the standby as if the key never existed. Each restoration is a
  // key_record_restored event (ok=false: an incident). True when one was
  // written.
  bool RestoreVanishedRecords(const std::map<std::string, KeyRecord>& records);
  // Replaces (or adds) `record` in last_records_ once it is written.
  void RememberWritten(const KeyRecord& record);
  // Reports, once per key while it stays held, each irreversible action
  // (destroy, prune) in `due_by_the_clock` that is not in `planned`, and
  // adds its key id to `held`.
  void ReportHeld(absl::string_view scope,
                  const std::vector<KeyAction>& planned,
                  const std::vector<KeyAction>& due_by_the_clock,
                  absl::Duration clock_ahead, std::set<std::string>& held);
  void Emit(KeyEvent event) const;

  hsm::KeyStore* const store_;
  const std::vector<ScopeKeyPolicy> policies_;
  const bool writer_;
  const EventSink events_;
  const std::function<void()> before_write_;
  ChangeGate change_gate_;
  // How many replacements of unusable keys the pass running now has made
  // (each runs the pass again).
  static constexpr int kMaxReplacementsPerPass = 4;
  int replacements_ = 0;
  // Whether the next pass looks for key pairs without a record: on the
  // first pass (a crash before this process) and after a failed record
  // write.
  bool unrecorded_check_due_ = true;
  std::map<std::string, hsm::LoadedKey> loaded_;  // by hex key id
  // Why each needed key that could not be loaded failed, by hex key id (one
  // event per reason, not one per pass).
  std::map<std::string, std::string> load_failures_;
  // Each key's effective state at the last pass, to report transitions.
  std::map<std::string, KeyState> last_state_;
  // Each scope's records as the last pass read them, updated by every
  // record this process wrote since: what a vanished record is written
  // again from (an operator's change made after the pass included). In
  // generation order (a key made since has the newest generation).
  std::map<std::string, std::vector<KeyRecord>> last_records_;
  // Keys this process pruned (their records vanish by design).
  std::set<std::string> pruned_;
  // Keys whose destruction or pruning the last pass held back (by key id).
  std::set<std::string> held_;
  // A destruction or prune that failed, by key id: retried after `skip`
  // more passes, the wait doubling each time up to kMaxFailedSkip, so a
  // key the token will not let go (an id two private keys share, say) is
  // not one key_changes line and one failure per pass. Its failure is
  // emitted once per reason.
  struct FailedIrreversible {
    std::string reason;
    int skip = 0;
    int next_skip = 1;
  };
  static constexpr int kMaxFailedSkip = 64;
  std::map<std::string, FailedIrreversible> failed_irreversible_;
};

}  // namespace signet::rotation

#endif  // SIGNET_ROTATION_RECONCILE_H_
