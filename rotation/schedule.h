// A scope's key schedule: what each key may do at an instant (ViewScope),
// and what the one rotation writer must do next to keep the schedule
// (PlanScope), plus the operator's two interventions (PlanRotateNow,
// PlanRevoke). docs/architecture.md, "Rotation".
//
// Everything here is a pure function of the records, the policy and the
// instant passed in: no HSM, no system clock, no state. The reconcile loop
// (rotation/reconcile.h) applies the actions through hsm/, and the tests
// run hundreds of rotation periods on simulated time in milliseconds.
//
// The schedule at every instant: one ACTIVE key that signs, and its
// successor (the standby) already published, which activates at the
// active key's retire_at. A standby is generated as soon as a key
// activates, so every successor is in relying parties' cached key sets for
// a whole rotation period (at least min_publish_lead) before it signs.
#ifndef SIGNET_ROTATION_SCHEDULE_H_
#define SIGNET_ROTATION_SCHEDULE_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "rotation/key_record.pb.h"
#include "rotation/key_state.h"

namespace signet::rotation {

// What the planner needs of a scope.
struct SchedulePolicy {
  std::string scope;
  std::string algorithm;  // JOSE name, recorded in new keys' records
  uint32_t rsa_bits = 0;  // RSA modulus size; 0 for ECDSA
  KeyTimings timings;
  // An immediate rotation is refused while the scope publishes this many
  // keys (each one retires published for the grace and makes a new
  // standby), so repeated emergencies cannot grow the key sets without
  // bound. Revocations are never refused.
  int max_published_keys = 8;
  // At most this many destroyed keys (tombstones: public key and record,
  // the private key gone) are kept per scope; the oldest beyond it are
  // pruned before tombstone_retention, so repeated revocations cannot grow
  // the token without bound. The scope's newest generation is never pruned
  // early (new generations are numbered above it).
  int max_tombstones = 16;
  // When no key signs and there is no standby, sign from now with the
  // newest generation that never had its activation recorded (not revoked,
  // private key not destroyed), its schedule moved to start now, instead of
  // with a new key. For the audit key: its successor was introduced in the
  // log and vouched for by its predecessor while that one signed; after an
  // outage longer than a period a new key could not be.
  bool revive_unused_successor = false;
};

// One scope's keys at an instant.
struct ScopeView {
  // The effective state of records[i]: StateAt, corrected by what the
  // records say happened:
  //   - a key whose scope has a later generation that has activated (its
  //     activate_at passed, or its activation was recorded) is never
  //     PENDING or ACTIVE again: it reads RETIRED (or later), so a clock
  //     set back never makes an older key sign;
  //   - the latest activated generation reads ACTIVE (not PENDING) when
  //     the clock is behind its recorded activation;
  //   - a key with a revocation reads REVOKED, even at an instant before
  //     revoked_at (a clock set back does not undo a revocation).
  std::vector<KeyState> states;
  // Index of the one key that signs now, or -1.
  int signing = -1;
  // Index of the standby: the lowest generation above every activated one
  // that is PENDING (not revoked), or -1.
  int standby = -1;
  // Empty, or what is wrong with the clock: it is behind the activation of
  // a key the records say has activated.
  std::string clock_anomaly;
};

// The view of `records`, which must all be of one scope (any order), at
// `now`. At most one key is ACTIVE, whatever the records and clock.
ScopeView ViewScope(const std::vector<KeyRecord>& records, absl::Time now);

// When the private key of `record` is due for destruction: destroy_at, or,
// after a revocation, revoked_at plus the shorter of destroy_delay and
// min_publish_lead if that is sooner. A revoked key never signs or is
// published again, and by min_publish_lead (at least every replica's
// re-read interval) no replica has it loaded; destroying it then bounds the
// keys repeated revocations leave in the token, and stops a replica that
// cannot re-read the records from signing with it.
absl::Time DestroyTime(const KeyRecord& record, const KeyTimings& timings);

// The first instant after `now` at which the view of `records` or the plan
// for them may change (any schedule boundary, revocation, destruction or
// pruning time); absl::InfiniteFuture() if none.
absl::Time NextScheduleChange(const std::vector<KeyRecord>& records,
                              const KeyTimings& timings, absl::Time now);

// One step the writer takes. Each is a single token write (kGenerate is a
// key pair and then its record), ordered so that a crash between any two
// leaves a schedule the next plan completes: never two signing keys, never
// a record without its key (an unrecorded key pair is destroyed by the
// reconcile loop).
struct KeyAction {
  enum class Kind {
    kGenerate,           // generate a key pair, then write `record` for it
    kWriteRecord,        // write `record` as the key's newest revision
    kDestroyPrivateKey,  // destroy the private key, then write `record`
                         // (private_key_destroyed set)
    kPrune,              // destroy the public key and every record
  };
  Kind kind;
  // kGenerate: the new key's record, key_id and kid empty (the executor
  // fills them in from the generated key). Otherwise the key's record as
  // it is to be written (kWriteRecord, kDestroyPrivateKey) or as it was
  // (kPrune).
  KeyRecord record;
  // The audit event: "key_generated", "key_activated",
  // "key_schedule_extended", "key_destroyed", "key_changes_carried",
  // "key_pruned", "key_rotated", "key_revoked".
  std::string event;
  // What happened and why, for the audit line and the log.
  std::string detail;
};

// What the writer does next for one scope, in order: record the active
// key's activation; when no key signs, activate the standby at once (or,
// with no standby, generate a key that signs at once); when the active key
// has no standby, generate one that activates at the active key's
// retire_at (extending the active key's schedule first if that is sooner
// than now + min_publish_lead); destroy private keys due; prune tombstones
// due, after writing the operators' changes they hold (of the last
// kChangeRetention) into the scope's newest record that stays. Idempotent:
// planning again after applying the actions gives none until the next boundary.
// `records` must all be of policy.scope.
std::vector<KeyAction> PlanScope(const std::vector<KeyRecord>& records,
                                 const SchedulePolicy& policy, absl::Time now);

// PlanScope, with destroying a private key and pruning a key (the steps
// that cannot be undone) planned only when due at or before
// `irreversible_until` (at most `now`): the wall time the writer has seen
// pass (base::ElapsedWallTime), so a wall clock stepped forward cannot
// destroy a key whose tokens are still valid. The 3-argument form takes
// `now`.
std::vector<KeyAction> PlanScope(const std::vector<KeyRecord>& records,
                                 const SchedulePolicy& policy, absl::Time now,
                                 absl::Time irreversible_until);

// An operator's rotation of the scope.
//   kPlanned: the standby activates at now + min_publish_lead, or at its
//     current time if that is sooner.
//   kImmediate: the standby activates now; the active key retires now and
//     stays published for publish_grace.
// The actions write the revised records (the successor's first: once it
// activates the old key is superseded, so a crash between the two never
// leaves two signing keys). FAILED_PRECONDITION when the scope has no
// active key or no standby (the reconcile loop makes one; retry), naming
// which; also FAILED_PRECONDITION for an immediate rotation while the scope
// publishes policy.max_published_keys keys (saying when one leaves).
enum class RotateMode { kPlanned, kImmediate };
absl::StatusOr<std::vector<KeyAction>> PlanRotateNow(
    const std::vector<KeyRecord>& records, const SchedulePolicy& policy,
    RotateMode mode, absl::Time now);

// An operator's revocation of key `key_id` (hex): from `now` it neither
// signs nor is published. If it was the active key, the standby activates
// now (the detail says whether it was published for less than
// min_publish_lead, so relying parties may meet an unknown kid). NOT_FOUND
// for a key not in `records`; FAILED_PRECONDITION for one already revoked
// or destroyed.
absl::StatusOr<std::vector<KeyAction>> PlanRevoke(
    const std::vector<KeyRecord>& records, const SchedulePolicy& policy,
    absl::string_view key_id, absl::string_view reason,
    absl::string_view revoked_by, absl::Time now);

}  // namespace signet::rotation

#endif  // SIGNET_ROTATION_SCHEDULE_H_
