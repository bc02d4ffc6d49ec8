// The lifecycle state of a key as a pure function of its record and the
// clock, plus validation, construction and (de)serialization of records.
// docs/architecture.md, "Keys and their lifecycle":
//
//   PENDING ──activate_at──► ACTIVE ──retire_at──► RETIRED ──unpublish_at──►
//   UNPUBLISHED ──destroy_at──► DESTROYED;  any state ──revoked_at──► REVOKED
//
// Nothing here stores state or reads the system clock: callers pass `now`
// (from a base::Clock), so every replica that reads the same record at
// the same instant reaches the same answer. All functions are thread-safe.
#ifndef SIGNET_ROTATION_KEY_STATE_H_
#define SIGNET_ROTATION_KEY_STATE_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "google/protobuf/timestamp.pb.h"
#include "rotation/key_record.pb.h"

namespace signet::rotation {

enum class KeyState {
  kPending,      // in JWKS, not signing yet
  kActive,       // signs, in JWKS
  kRetired,      // in JWKS so its tokens still verify, not signing
  kUnpublished,  // out of JWKS; private key still in the HSM until destroy_at
  kDestroyed,    // private key due for destruction (or gone) in the HSM
  kRevoked,      // out of JWKS and not signing, whatever the schedule says
};

// The state of `record` at `now`. Half-open intervals, so each boundary
// instant belongs to the later state:
//   revocation present and revoked_at <= now  -> kRevoked (wins over all)
//   now <  activate_at                        -> kPending
//   activate_at  <= now < retire_at           -> kActive
//   retire_at    <= now < unpublish_at        -> kRetired
//   unpublish_at <= now < destroy_at          -> kUnpublished
//   destroy_at   <= now                       -> kDestroyed
// Defined for records that pass ValidateKeyRecord. For a record whose
// timestamps are out of order, the furthest-along state whose boundary has
// passed wins, so a malformed record never gives a key more capability than
// any of its boundaries allows; a missing timestamp reads as the Unix epoch.
// Callers that act on the result (destroying keys) must validate first.
KeyState StateAt(const KeyRecord& record, absl::Time now);

// Whether a key in `state` belongs in its scope's JWKS: kPending, kActive
// and kRetired.
bool IsPublished(KeyState state);

// Whether a key in `state` may sign: kActive only.
bool CanSign(KeyState state);

// "PENDING", "ACTIVE", "RETIRED", "UNPUBLISHED", "DESTROYED", "REVOKED":
// the names used in logs, audit lines and admin listings.
absl::string_view KeyStateName(KeyState state);

// Checks what StateAt and the reconcile loop rely on. OK, or
// INVALID_ARGUMENT whose message names the first offending field when:
//   - scope, algorithm or key_id is empty;
//   - key_id is not lowercase hex of even length (one spelling per CKA_ID);
//   - key_generation is 0;
//   - any of created_at, activate_at, retire_at, unpublish_at, destroy_at is
//     missing or outside google.protobuf.Timestamp's valid range;
//   - they are not ordered created_at <= activate_at <= retire_at <=
//     unpublish_at <= destroy_at;
//   - revocation is present without a valid revocation.revoked_at.
// rsa_bits, kid, revocation.reason and revocation.revoked_by are not
// checked: the HSM layer validates key parameters, and the rest is
// informational. revoked_at may precede created_at (the key is then
// revoked from the start, which fails safe).
absl::Status ValidateKeyRecord(const KeyRecord& record);

// Conversions between google.protobuf.Timestamp and absl::Time, exact to the
// nanosecond. TimeToProto expects a finite `t` within Timestamp's range
// (years 0001..9999); otherwise the Timestamp it returns is one that
// ValidateKeyRecord rejects, never a silently clamped instant.
absl::Time TimeFromProto(const google::protobuf::Timestamp& ts);
google::protobuf::Timestamp TimeToProto(absl::Time t);

// `t` as RFC 3339 in UTC with milliseconds ("2026-12-05T13:59:39.100Z"), as
// schedule details, logs and admin answers show instants; "" for an
// infinite time (no such instant).
std::string FormatInstant(absl::Time t);

// How long a key spends in each state after it activates. The reconcile
// loop derives these from the scope's rotation policy.
struct KeyTimings {
  // How long the key stays ACTIVE: the rotation period P.
  absl::Duration rotation_period = absl::Hours(24 * 30);
  // How long it stays RETIRED (still published): at least the scope's
  // maximum token lifetime T plus the JWKS cache lifetime C, so every token
  // it signed verifies for its whole life. The default assumes T = C = 1 h.
  absl::Duration publish_grace = absl::Hours(2);
  // How long after unpublishing the private key is destroyed. Destruction
  // cannot be undone, so it waits a while after the key stopped mattering
  // to anyone; the key cannot sign or be fetched meanwhile.
  absl::Duration destroy_delay = absl::Hours(24);
  // The least time a successor is published before it may sign (L): long
  // enough for a relying party and a CDN in front of it to each refresh a
  // cached key set, and for every replica to re-read the records.
  absl::Duration min_publish_lead = absl::Minutes(11);
  // How long a destroyed key's public key and record stay as a tombstone
  // (for operators and audits) before they are pruned.
  absl::Duration tombstone_retention = absl::Hours(24 * 30);
};

// The record of a scope's first key (key_generation 1), ACTIVE from `now`:
// created_at = activate_at = now, retire_at = now + rotation_period,
// unpublish_at = retire_at + publish_grace, destroy_at = unpublish_at +
// destroy_delay. No PENDING phase: with no earlier key there is no token a
// relying party could fail to verify, and the scope must be able to sign.
// kid is left empty for the caller to fill in from the public key once the
// HSM has loaded it (its RFC 7638 thumbprint, jose/jwk.h).
// The result passes ValidateKeyRecord when scope, key_id and algorithm are
// valid and the durations are not negative; the writer validates before
// persisting.
KeyRecord NewActiveKeyRecord(absl::string_view scope, absl::string_view key_id,
                             absl::string_view algorithm, uint32_t rsa_bits,
                             absl::Time now, const KeyTimings& timings);

// How long an operator's change (its request id, the request's digest and
// the answer) stays recognized after the record that first held it is
// pruned: a client retries within minutes; a day leaves room for a retry
// after an outage or a restart.
inline constexpr absl::Duration kChangeRetention = absl::Hours(24);
// The most bytes of carried_changes one record keeps: tens of changes (a
// change is about 100 to 400 bytes), well inside the 16 KiB the HSM layer
// stores per record.
inline constexpr size_t kMaxCarriedChangeBytes = 8 * 1024;

// Adds `changes` to `into`'s carried_changes, so their request ids stay
// recognized once the record that held them is gone. Skipped: a change
// whose request id `into` already holds (in either list), and one made
// before `now - kChangeRetention` (one without made_at, recorded before
// the field existed, is carried). When anything was added, carried
// changes made before that instant are dropped too, then the oldest until
// the list fits kMaxCarriedChangeBytes. Returns whether anything was added.
bool CarryOperatorChanges(const std::vector<OperatorChange>& changes,
                          absl::Time now, KeyRecord* into);

// Parses a record read from the token and validates it (ValidateKeyRecord),
// so a caller never acts on a corrupt or truncated record. INVALID_ARGUMENT
// if `bytes` is over 64 KiB (a record is a few hundred bytes), is not a
// KeyRecord encoding, or decodes to an invalid record. Unknown fields (from
// a newer signet) are kept.
absl::StatusOr<KeyRecord> ParseKeyRecord(absl::string_view bytes);

// The record's protobuf encoding with deterministic serialization, so one
// build always encodes equal records to equal bytes. (Protobuf does not
// promise the same bytes across its versions: compare parsed records, not
// bytes, from different builds.) Does not validate: call ValidateKeyRecord
// first.
std::string SerializeKeyRecord(const KeyRecord& record);

}  // namespace signet::rotation

#endif  // SIGNET_ROTATION_KEY_STATE_H_
