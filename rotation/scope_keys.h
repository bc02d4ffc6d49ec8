// The policy of a scope's keys (ScopeKeyPolicy: its algorithm, key spec,
// timings and replacement rules, as rotation/reconcile.h applies them) and
// the parsing of the key records stored on the token (ParseRecords), which
// keeps only the records that parse, validate and describe the key they are
// stored beside.
//
// Thread-compatible.
#ifndef SIGNET_ROTATION_SCOPE_KEYS_H_
#define SIGNET_ROTATION_SCOPE_KEYS_H_

#include <map>
#include <string>

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
  // a key that vanished after it signed is an incident a person must see
  // and act on. (A standby that cannot be loaded is replaced in every
  // scope: it never signed; rotation/reconcile.cc.)
  bool replace_unusable_keys = false;
};

// Every valid record in `records` (as read from the token), parsed, keyed by
// hex key id. Records that do not parse are skipped and counted in
// `*unreadable` when non-null (a record of a newer schema, say).
std::map<std::string, KeyRecord> ParseRecords(
    const std::map<std::string, hsm::StoredRecord>& records,
    int* unreadable = nullptr);

}  // namespace signet::rotation

#endif  // SIGNET_ROTATION_SCOPE_KEYS_H_
