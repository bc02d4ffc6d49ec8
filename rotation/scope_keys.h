// A key that is ACTIVE from its creation, found in the token or (by the one
// writer) created: the audit checkpoint key, which rotates at a start after
// its period (scopes' keys follow the planner, rotation/schedule.h, through
// rotation/reconcile.h).
//
// This module reads the key records (the token is the single source of
// truth), picks the ACTIVE key, and loads it through the key store, which
// runs every load-time check before the key may sign. It never silently
// replaces a key that fails a check: that is refused, so an operator sees
// it.
//
// Thread-compatible: call from one thread (start-up).
#ifndef SIGNET_ROTATION_SCOPE_KEYS_H_
#define SIGNET_ROTATION_SCOPE_KEYS_H_

#include <map>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "hsm/key_store.h"
#include "rotation/key_record.pb.h"
#include "rotation/key_state.h"

namespace signet::rotation {

// What rotation needs to know of a scope (not its audience or issuer).
struct ScopeKeyPolicy {
  std::string scope;
  std::string algorithm;  // JOSE name recorded in the KeyRecord ("ES256")
  hsm::KeySpec key_spec;
  KeyTimings timings;
  // SchedulePolicy::revive_unused_successor (rotation/schedule.h).
  bool revive_unused_successor = false;
  // For a key only signet uses (the audit checkpoint key, which no
  // operator call reaches): the writer revokes a key of this scope that
  // cannot be loaded (gone from the token, failing a check), recording
  // why, so that the schedule replaces it. Operators' scopes never set it:
  // a key that vanished is an incident a person must see and act on.
  bool replace_unusable_keys = false;
};

struct ScopeKey {
  KeyRecord record;
  hsm::LoadedKey key;
};

// Every valid record in `records` (as read from the token), parsed, keyed by
// hex key id. Records that do not parse are skipped and counted in
// `*unreadable` when non-null (a record of a newer schema, say).
std::map<std::string, KeyRecord> ParseRecords(
    const std::map<std::string, hsm::StoredRecord>& records,
    int* unreadable = nullptr);

// The scope's ACTIVE key at `now`, loaded and checked. If it has none and
// `may_write` (this replica is the rotation writer), generates one, checks
// it, and persists its record before returning it.
//
// FAILED_PRECONDITION when the active key fails a load-time check, when its
// record's algorithm is not the policy's, or when there is no active key and
// this replica may not write. UNAVAILABLE when the HSM is unreachable.
absl::StatusOr<ScopeKey> EnsureActiveKey(
    hsm::KeyStore& store, const ScopeKeyPolicy& policy,
    const std::map<std::string, KeyRecord>& records, absl::Time now,
    bool may_write);

}  // namespace signet::rotation

#endif  // SIGNET_ROTATION_SCOPE_KEYS_H_
