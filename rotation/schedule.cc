#include "rotation/schedule.h"

#include <algorithm>
#include <cstddef>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace signet::rotation {
namespace {

absl::Time Activate(const KeyRecord& r) {
  return TimeFromProto(r.activate_at());
}
absl::Time Retire(const KeyRecord& r) { return TimeFromProto(r.retire_at()); }
absl::Time Created(const KeyRecord& r) { return TimeFromProto(r.created_at()); }

std::string Describe(const KeyRecord& r) {
  return absl::StrCat(
      "generation ", r.key_generation(),
      r.kid().empty() ? "" : absl::StrCat(" (kid ", r.kid(), ")"));
}

// Whether `r` has activated by `now`: its activation was recorded, or its
// time came before `now` and before any revocation. A standby revoked
// before its time never signed, so its activate_at passing later does not
// supersede the key that signs (a planned rotation can move a standby's
// time before the active key's retire_at; revoked, it must not retire the
// active key early).
bool HasActivated(const KeyRecord& r, absl::Time now) {
  if (r.has_activation_recorded_at()) return true;
  absl::Time until = now;
  if (r.has_revocation()) {
    until = std::min(until, TimeFromProto(r.revocation().revoked_at()));
  }
  return Activate(r) <= until;
}

// `r` with its schedule from `activate` on: ACTIVE for the rotation
// period, then RETIRED for the grace, then UNPUBLISHED for the destroy
// delay. activate_at never precedes created_at (a clock set back).
KeyRecord ScheduledFrom(KeyRecord r, absl::Time activate, const KeyTimings& t) {
  activate = std::max(activate, Created(r));
  const absl::Time retire = activate + t.rotation_period;
  const absl::Time unpublish = retire + t.publish_grace;
  *r.mutable_activate_at() = TimeToProto(activate);
  *r.mutable_retire_at() = TimeToProto(retire);
  *r.mutable_unpublish_at() = TimeToProto(unpublish);
  *r.mutable_destroy_at() = TimeToProto(unpublish + t.destroy_delay);
  return r;
}

// `r` retiring at `retire` (never before it activates), published for the
// grace after that.
KeyRecord RetiringAt(KeyRecord r, absl::Time retire, const KeyTimings& t) {
  retire = std::max(retire, Activate(r));
  const absl::Time unpublish = retire + t.publish_grace;
  *r.mutable_retire_at() = TimeToProto(retire);
  *r.mutable_unpublish_at() = TimeToProto(unpublish);
  *r.mutable_destroy_at() = TimeToProto(unpublish + t.destroy_delay);
  return r;
}

KeyRecord NewRecord(const SchedulePolicy& policy, uint64_t generation,
                    absl::Time now, absl::Time activate) {
  KeyRecord r;
  r.set_scope(policy.scope);
  r.set_algorithm(policy.algorithm);
  r.set_rsa_bits(policy.rsa_bits);
  r.set_key_generation(generation);
  *r.mutable_created_at() = TimeToProto(now);
  return ScheduledFrom(std::move(r), activate, policy.timings);
}

uint64_t NewestGeneration(const std::vector<KeyRecord>& records) {
  uint64_t newest = 0;
  for (const KeyRecord& r : records)
    newest = std::max(newest, r.key_generation());
  return newest;
}

// The note an early activation carries: how long relying parties have had
// the key.
std::string LeadNote(const KeyRecord& standby, const KeyTimings& t,
                     absl::Time now) {
  const absl::Duration published = now - Created(standby);
  if (published >= t.min_publish_lead) {
    return absl::StrCat(
        "; it was published for ",
        absl::FormatDuration(absl::Trunc(published, absl::Seconds(1))));
  }
  // At least "0s": FormatDuration writes a zero duration as a bare "0".
  const absl::Duration shown = absl::Trunc(published, absl::Seconds(1));
  return absl::StrCat(
      "; it was published for only ",
      shown <= absl::ZeroDuration() ? "0s" : absl::FormatDuration(shown),
      " (under min_publish_lead ", absl::FormatDuration(t.min_publish_lead),
      "): relying parties whose cached key set predates it meet an unknown "
      "kid and must refetch");
}

KeyAction Action(KeyAction::Kind kind, KeyRecord record, std::string event,
                 std::string detail) {
  return KeyAction{kind, std::move(record), std::move(event),
                   std::move(detail)};
}

// The standby of a key that retires at `activate`: published from now.
KeyAction StandbyFor(const SchedulePolicy& policy, uint64_t generation,
                     absl::Time now, absl::Time activate) {
  return Action(
      KeyAction::Kind::kGenerate, NewRecord(policy, generation, now, activate),
      "key_generated",
      absl::StrCat("scope ", policy.scope, ": standby generation ", generation,
                   " published now, signs from ", FormatInstant(activate)));
}

}  // namespace

ScopeView ViewScope(const std::vector<KeyRecord>& records, absl::Time now) {
  ScopeView view;
  view.states.reserve(records.size());
  uint64_t latest_activated = 0;
  for (const KeyRecord& r : records) {
    view.states.push_back(StateAt(r, now));
    if (HasActivated(r, now)) {
      latest_activated = std::max(latest_activated, r.key_generation());
    }
  }
  for (size_t i = 0; i < records.size(); ++i) {
    const KeyRecord& r = records[i];
    KeyState& state = view.states[i];
    // A recorded revocation is final, even for a clock set back before it.
    if (r.has_revocation()) state = KeyState::kRevoked;
    if (state == KeyState::kRevoked) continue;
    const bool early =
        state == KeyState::kPending || state == KeyState::kActive;
    if (r.key_generation() < latest_activated && early) {
      // Superseded: a later generation has activated.
      state = KeyState::kRetired;
    } else if (r.key_generation() == latest_activated &&
               state == KeyState::kPending) {
      // Recorded as activated, yet the clock says it has not: the clock
      // was set back. The records win.
      state = KeyState::kActive;
      view.clock_anomaly =
          absl::StrCat("the clock (", FormatInstant(now),
                       ") is behind the recorded activation of ", r.scope(),
                       " key ", Describe(r), " at ", FormatInstant(Activate(r)),
                       "; keys follow the records, not the clock");
    }
    if (state == KeyState::kActive) {
      // One signing key: should two records share the latest generation,
      // the first keeps it and the other reads RETIRED.
      if (view.signing >= 0) {
        state = KeyState::kRetired;
      } else {
        view.signing = static_cast<int>(i);
      }
    }
  }
  for (size_t i = 0; i < records.size(); ++i) {
    if (view.states[i] != KeyState::kPending) continue;
    if (records[i].key_generation() <= latest_activated) continue;
    if (view.standby < 0 ||
        records[i].key_generation() < records[view.standby].key_generation()) {
      view.standby = static_cast<int>(i);
    }
  }
  return view;
}

absl::Time DestroyTime(const KeyRecord& record, const KeyTimings& timings) {
  absl::Time at = TimeFromProto(record.destroy_at());
  if (record.has_revocation()) {
    at = std::min(
        at, TimeFromProto(record.revocation().revoked_at()) +
                std::min(timings.destroy_delay, timings.min_publish_lead));
  }
  return at;
}

absl::Time NextScheduleChange(const std::vector<KeyRecord>& records,
                              const KeyTimings& timings, absl::Time now) {
  absl::Time next = absl::InfiniteFuture();
  auto consider = [&](absl::Time t) {
    if (t > now && t < next) next = t;
  };
  for (const KeyRecord& r : records) {
    consider(Activate(r));
    consider(Retire(r));
    consider(TimeFromProto(r.unpublish_at()));
    consider(TimeFromProto(r.destroy_at()));
    if (r.has_revocation()) {
      consider(TimeFromProto(r.revocation().revoked_at()));
    }
    const absl::Time destroy = DestroyTime(r, timings);
    consider(destroy);
    consider(destroy + timings.tombstone_retention);
  }
  return next;
}

namespace {

// A pruned record takes the request ids of the operators' changes it held
// with it, and a retry of such a change after a restart (its answer no
// longer in memory) was applied again as a new change (a fourteenth outside
// attack rotated twice so, eight minutes apart). So before the first prune,
// the changes the pruned records hold (made within kChangeRetention) are
// written into the newest record that stays: the key this plan generates,
// else the newest record not pruned. Every action of the plan that writes
// that record carries them, and one that writes it before the first prune
// is added when there is none, so a crash between two writes never loses
// them (a change held twice is harmless: a retry finds either copy). With
// no record left to take them, they go (the audit log keeps them).
void CarryChangesOfPruned(const std::vector<KeyRecord>& records,
                          const SchedulePolicy& policy, absl::Time now,
                          std::vector<KeyAction>& actions) {
  std::vector<OperatorChange> held;
  std::set<std::string> pruned;
  size_t first_prune = actions.size();
  for (size_t i = 0; i < actions.size(); ++i) {
    if (actions[i].kind != KeyAction::Kind::kPrune) continue;
    first_prune = std::min(first_prune, i);
    const KeyRecord& r = actions[i].record;
    pruned.insert(r.key_id());
    held.insert(held.end(), r.operator_changes().begin(),
                r.operator_changes().end());
    held.insert(held.end(), r.carried_changes().begin(),
                r.carried_changes().end());
  }
  if (held.empty()) return;
  KeyAction* generated = nullptr;
  for (KeyAction& a : actions) {
    if (a.kind == KeyAction::Kind::kGenerate &&
        (generated == nullptr ||
         a.record.key_generation() > generated->record.key_generation())) {
      generated = &a;
    }
  }
  if (generated != nullptr) {
    // Generated before the prunes (and a failed action stops the plan), so
    // its first record holds them before any prune runs.
    CarryOperatorChanges(held, now, &generated->record);
    return;
  }
  int target = -1;
  for (size_t i = 0; i < records.size(); ++i) {
    if (pruned.count(records[i].key_id()) != 0) continue;
    if (target < 0 ||
        records[i].key_generation() > records[target].key_generation()) {
      target = static_cast<int>(i);
    }
  }
  if (target < 0) return;
  const std::string& target_id = records[target].key_id();
  bool written_before_prune = false;
  bool added = false;
  for (size_t i = 0; i < actions.size(); ++i) {
    KeyAction& a = actions[i];
    if (a.kind == KeyAction::Kind::kPrune || a.record.key_id() != target_id) {
      continue;
    }
    added = CarryOperatorChanges(held, now, &a.record) || added;
    if (i < first_prune) written_before_prune = true;
  }
  if (written_before_prune) return;
  KeyRecord carrier = records[target];
  if (!CarryOperatorChanges(held, now, &carrier) && !added) return;
  actions.insert(
      actions.begin() + static_cast<std::ptrdiff_t>(first_prune),
      Action(KeyAction::Kind::kWriteRecord, std::move(carrier),
             "key_changes_carried",
             absl::StrCat("scope ", policy.scope,
                          ": the request ids of "
                          "operators' changes held by the keys pruned next "
                          "are kept in ",
                          Describe(records[target]),
                          " for a day, so a retry of one is answered as "
                          "the first time instead of applied again")));
}

}  // namespace

std::vector<KeyAction> PlanScope(const std::vector<KeyRecord>& records,
                                 const SchedulePolicy& policy, absl::Time now) {
  return PlanScope(records, policy, now, now);
}

std::vector<KeyAction> PlanScope(const std::vector<KeyRecord>& records,
                                 const SchedulePolicy& policy, absl::Time now,
                                 absl::Time irreversible_until) {
  irreversible_until = std::min(irreversible_until, now);
  const KeyTimings& t = policy.timings;
  const ScopeView view = ViewScope(records, now);
  std::vector<KeyAction> actions;
  const uint64_t next_generation = NewestGeneration(records) + 1;

  // The key that signs again from now (revive_unused_successor), if any.
  int revived = -1;
  if (view.signing < 0 && view.standby < 0 && policy.revive_unused_successor) {
    // Only above every generation that has signed: an older key never
    // signs after a later one.
    uint64_t last_recorded = 0;
    for (const KeyRecord& r : records) {
      if (r.has_activation_recorded_at()) {
        last_recorded = std::max<uint64_t>(last_recorded, r.key_generation());
      }
    }
    for (size_t i = 0; i < records.size(); ++i) {
      const KeyRecord& r = records[i];
      if (r.has_activation_recorded_at() || r.has_revocation() ||
          r.private_key_destroyed() || r.key_generation() <= last_recorded) {
        continue;
      }
      if (revived < 0 ||
          r.key_generation() > records[revived].key_generation()) {
        revived = static_cast<int>(i);
      }
    }
  }
  if (view.signing < 0) {
    if (view.standby >= 0 || revived >= 0) {
      // The active key is gone (revoked, or retired with nobody to record
      // its successor's activation): the standby relying parties already
      // hold signs from now (or the successor whose window passed unused).
      const int next = view.standby >= 0 ? view.standby : revived;
      KeyRecord standby = ScheduledFrom(records[next], now, t);
      *standby.mutable_activation_recorded_at() = TimeToProto(now);
      std::string detail =
          view.standby >= 0
              ? absl::StrCat("scope ", policy.scope,
                             " had no signing key: its standby ",
                             Describe(standby), " activates now",
                             LeadNote(records[next], t, now))
              : absl::StrCat(
                    "scope ", policy.scope,
                    " had no signing key and no standby: ", Describe(standby),
                    ", a successor whose window passed unused, "
                    "signs from now with its schedule moved");
      const absl::Time successor_at = Retire(standby);
      actions.push_back(Action(KeyAction::Kind::kWriteRecord,
                               std::move(standby), "key_activated",
                               std::move(detail)));
      actions.push_back(StandbyFor(policy, next_generation, now, successor_at));
    } else {
      KeyRecord fresh = NewRecord(policy, next_generation, now, now);
      *fresh.mutable_activation_recorded_at() = TimeToProto(now);
      std::string detail =
          next_generation == 1
              ? absl::StrCat("scope ", policy.scope,
                             ": its first key, signing at once")
              : absl::StrCat(
                    "scope ", policy.scope,
                    " had no signing key and no standby: a new key signs "
                    "at once, unpublished before",
                    policy.revive_unused_successor
                        ? ""
                        : " (relying parties meet an unknown kid and must "
                          "refetch)");
      const absl::Time successor_at = Retire(fresh);
      actions.push_back(Action(KeyAction::Kind::kGenerate, std::move(fresh),
                               "key_generated", std::move(detail)));
      actions.push_back(
          StandbyFor(policy, next_generation + 1, now, successor_at));
    }
  } else {
    const KeyRecord& active = records[view.signing];
    KeyRecord revised = active;
    std::vector<std::string> why;
    if (!active.has_activation_recorded_at()) {
      *revised.mutable_activation_recorded_at() = TimeToProto(now);
      why.push_back(absl::StrCat("scope ", policy.scope, ": ", Describe(active),
                                 " is active since ",
                                 FormatInstant(Activate(active))));
    }
    std::vector<KeyAction> then;
    if (view.standby < 0) {
      // A successor, published at least the lead before it signs.
      const absl::Time activate =
          std::max(Retire(active), now + t.min_publish_lead);
      if (activate > Retire(active)) {
        const absl::Duration by = activate - Retire(active);
        *revised.mutable_retire_at() = TimeToProto(activate);
        *revised.mutable_unpublish_at() =
            TimeToProto(TimeFromProto(active.unpublish_at()) + by);
        *revised.mutable_destroy_at() =
            TimeToProto(TimeFromProto(active.destroy_at()) + by);
        why.push_back(absl::StrCat(
            "its schedule is extended by ",
            absl::FormatDuration(absl::Trunc(by, absl::Seconds(1))),
            " so that its successor is published min_publish_lead before it "
            "signs"));
      }
      then.push_back(StandbyFor(policy, next_generation, now, activate));
    }
    if (!why.empty()) {
      // Before the standby: an extension must hold before a successor
      // relies on it.
      actions.push_back(
          Action(KeyAction::Kind::kWriteRecord, std::move(revised),
                 active.has_activation_recorded_at() ? "key_schedule_extended"
                                                     : "key_activated",
                 absl::StrJoin(why, "; ")));
    }
    for (KeyAction& a : then) actions.push_back(std::move(a));
  }

  // Tombstones kept (private key destroyed, not pruned by this plan), by
  // generation; the newest generation is never among them.
  std::vector<int> tombstones;
  for (size_t i = 0; i < records.size(); ++i) {
    if (static_cast<int>(i) == view.signing ||
        static_cast<int>(i) == view.standby || static_cast<int>(i) == revived) {
      continue;
    }
    const KeyRecord& r = records[i];
    const absl::Time destroy = DestroyTime(r, t);
    const bool published = view.states[i] == KeyState::kPending ||
                           view.states[i] == KeyState::kActive ||
                           view.states[i] == KeyState::kRetired;
    if (r.private_key_destroyed() && !published &&
        irreversible_until < destroy + t.tombstone_retention &&
        r.key_generation() < next_generation - 1) {
      tombstones.push_back(static_cast<int>(i));
    }
    if (irreversible_until >= destroy + t.tombstone_retention) {
      // Past both (a clock that jumped, or a writer that was down): the
      // prune destroys the private key too.
      actions.push_back(Action(
          KeyAction::Kind::kPrune, r, "key_pruned",
          absl::StrCat("scope ", policy.scope, ": ", Describe(r),
                       " pruned: private key (if still there), public key "
                       "and record destroyed")));
    } else if (!r.private_key_destroyed() && irreversible_until >= destroy) {
      KeyRecord destroyed = r;
      destroyed.set_private_key_destroyed(true);
      actions.push_back(Action(
          KeyAction::Kind::kDestroyPrivateKey, std::move(destroyed),
          "key_destroyed",
          absl::StrCat("scope ", policy.scope, ": private key of ", Describe(r),
                       " destroyed in the HSM (due ", FormatInstant(destroy),
                       "); its public key stays as a tombstone "
                       "until ",
                       FormatInstant(destroy + t.tombstone_retention))));
    }
  }
  const int excess =
      static_cast<int>(tombstones.size()) - std::max(policy.max_tombstones, 0);
  if (excess > 0) {
    // Repeated revocations (or immediate rotations) leave a tombstone each;
    // the oldest go first. The key neither signs nor is published, and the
    // audit log keeps its history; what goes is its record in the token,
    // and with it the request ids of changes it carried (a retry after a
    // restart is then answered from memory, or as an unknown kid).
    std::sort(tombstones.begin(), tombstones.end(), [&](int a, int b) {
      return records[a].key_generation() < records[b].key_generation();
    });
    for (int n = 0; n < excess; ++n) {
      const KeyRecord& r = records[tombstones[n]];
      actions.push_back(Action(
          KeyAction::Kind::kPrune, r, "key_pruned",
          absl::StrCat("scope ", policy.scope, ": ", Describe(r),
                       " pruned before its time (",
                       FormatInstant(DestroyTime(r, t) + t.tombstone_retention),
                       "): the scope keeps at most ", policy.max_tombstones,
                       " destroyed keys' public keys and records, and this "
                       "is the oldest beyond that")));
    }
  }
  CarryChangesOfPruned(records, policy, now, actions);
  return actions;
}

absl::StatusOr<std::vector<KeyAction>> PlanRotateNow(
    const std::vector<KeyRecord>& records, const SchedulePolicy& policy,
    RotateMode mode, absl::Time now) {
  const KeyTimings& t = policy.timings;
  const ScopeView view = ViewScope(records, now);
  if (view.signing < 0) {
    return absl::FailedPreconditionError(absl::StrCat(
        "scope ", policy.scope,
        " has no active key to rotate; the reconcile loop activates one"));
  }
  if (view.standby < 0) {
    return absl::FailedPreconditionError(absl::StrCat(
        "scope ", policy.scope,
        " has no standby key yet (the reconcile loop makes one within "
        "seconds); retry"));
  }
  const KeyRecord& active = records[view.signing];
  const KeyRecord& standby = records[view.standby];
  if (mode == RotateMode::kImmediate) {
    int published = 0;
    absl::Time first_leaves = absl::InfiniteFuture();
    for (size_t i = 0; i < records.size(); ++i) {
      if (!IsPublished(view.states[i])) continue;
      ++published;
      if (view.states[i] == KeyState::kRetired) {
        first_leaves =
            std::min(first_leaves, TimeFromProto(records[i].unpublish_at()));
      }
    }
    if (published >= policy.max_published_keys) {
      // Not RESOURCE_EXHAUSTED: clients retry that, and this lasts hours.
      return absl::FailedPreconditionError(absl::StrCat(
          "scope ", policy.scope, " already publishes ", published,
          " keys (at most ", policy.max_published_keys,
          "): each immediate rotation leaves one more published for the "
          "grace; ",
          first_leaves == absl::InfiniteFuture()
              ? std::string("wait")
              : absl::StrCat("the next one leaves at ",
                             FormatInstant(first_leaves)),
          ", or revoke a retired key"));
    }
  }
  absl::Time activate = now;
  std::string note;
  if (mode == RotateMode::kPlanned) {
    activate = std::min(Activate(standby), now + t.min_publish_lead);
  } else {
    note = LeadNote(standby, t, now);
  }
  KeyRecord next = ScheduledFrom(standby, activate, t);
  if (activate <= now) {
    *next.mutable_activation_recorded_at() = TimeToProto(now);
  }
  KeyRecord old = RetiringAt(active, activate, t);
  std::vector<KeyAction> actions;
  // The successor first: once it activates, ViewScope retires the old key
  // whatever the old record says, so a crash between the two writes never
  // leaves two signing keys, nor none.
  actions.push_back(Action(
      KeyAction::Kind::kWriteRecord, std::move(next), "key_rotated",
      absl::StrCat("scope ", policy.scope, ": ",
                   mode == RotateMode::kPlanned ? "planned" : "immediate",
                   " rotation: standby ", Describe(standby), " signs from ",
                   FormatInstant(activate), note)));
  actions.push_back(
      Action(KeyAction::Kind::kWriteRecord, std::move(old), "key_rotated",
             absl::StrCat("scope ", policy.scope, ": ", Describe(active),
                          " retires at ", FormatInstant(activate),
                          " and stays published until ",
                          FormatInstant(activate + t.publish_grace))));
  return actions;
}

absl::StatusOr<std::vector<KeyAction>> PlanRevoke(
    const std::vector<KeyRecord>& records, const SchedulePolicy& policy,
    absl::string_view key_id, absl::string_view reason,
    absl::string_view revoked_by, absl::Time now) {
  const KeyTimings& t = policy.timings;
  const ScopeView view = ViewScope(records, now);
  int index = -1;
  for (size_t i = 0; i < records.size(); ++i) {
    if (records[i].key_id() == key_id) index = static_cast<int>(i);
  }
  if (index < 0) {
    return absl::NotFoundError(
        absl::StrCat("scope ", policy.scope, " has no key with id ", key_id));
  }
  const KeyRecord& target = records[index];
  if (target.has_revocation()) {
    return absl::FailedPreconditionError(absl::StrCat(
        "scope ", policy.scope, " key ", Describe(target),
        " is already revoked (at ",
        FormatInstant(TimeFromProto(target.revocation().revoked_at())), ")"));
  }
  if (target.private_key_destroyed() ||
      view.states[index] == KeyState::kDestroyed) {
    return absl::FailedPreconditionError(absl::StrCat("scope ", policy.scope,
                                                      " key ", Describe(target),
                                                      " is already destroyed"));
  }
  KeyRecord revoked = target;
  KeyRecord::Revocation* revocation = revoked.mutable_revocation();
  *revocation->mutable_revoked_at() = TimeToProto(now);
  revocation->set_reason(std::string(reason));
  revocation->set_revoked_by(std::string(revoked_by));
  std::vector<KeyAction> actions;
  const bool was_signing = index == view.signing;
  // The revocation first: a crash after it leaves the scope without a
  // signing key, which the next plan fixes by activating the standby; the
  // other order could lose the revocation.
  actions.push_back(Action(
      KeyAction::Kind::kWriteRecord, std::move(revoked), "key_revoked",
      absl::StrCat("scope ", policy.scope, ": ", Describe(target), " (",
                   KeyStateName(view.states[index]),
                   ") revoked: it neither signs nor is published from now; "
                   "reason: ",
                   reason)));
  if (was_signing) {
    if (view.standby >= 0) {
      const KeyRecord& standby = records[view.standby];
      KeyRecord next = ScheduledFrom(standby, now, t);
      *next.mutable_activation_recorded_at() = TimeToProto(now);
      actions.push_back(Action(
          KeyAction::Kind::kWriteRecord, std::move(next), "key_activated",
          absl::StrCat("scope ", policy.scope, ": standby ", Describe(standby),
                       " activates now in place of the revoked key",
                       LeadNote(standby, t, now))));
    }
  }
  return actions;
}

}  // namespace signet::rotation
