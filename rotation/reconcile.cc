#include "rotation/reconcile.h"

#include <algorithm>
#include <set>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "base/quote.h"
#include "base/status_macros.h"
#include "jose/jwk.h"

namespace signet::rotation {
SchedulePolicy ScheduleOf(const ScopeKeyPolicy& policy) {
  SchedulePolicy s;
  s.scope = policy.scope;
  s.algorithm = policy.algorithm;
  s.rsa_bits = hsm::IsEcdsa(policy.key_spec.algorithm)
                   ? 0
                   : static_cast<uint32_t>(policy.key_spec.rsa_bits);
  s.timings = policy.timings;
  s.revive_unused_successor = policy.revive_unused_successor;
  return s;
}

std::vector<KeyRecord> RecordsOf(const std::map<std::string, KeyRecord>& all,
                                 absl::string_view scope) {
  std::vector<KeyRecord> out;
  for (const auto& [id, r] : all) {
    if (r.scope() == scope) out.push_back(r);
  }
  std::sort(out.begin(), out.end(), [](const KeyRecord& a, const KeyRecord& b) {
    return a.key_generation() < b.key_generation();
  });
  return out;
}

KeyReconciler::KeyReconciler(hsm::KeyStore* store,
                             std::vector<ScopeKeyPolicy> policies, bool writer,
                             EventSink events,
                             std::function<void()> before_write)
    : store_(store),
      policies_(std::move(policies)),
      writer_(writer),
      events_(std::move(events)),
      before_write_(std::move(before_write)) {}

namespace {
bool Irreversible(const KeyAction& action) {
  return action.kind == KeyAction::Kind::kDestroyPrivateKey ||
         action.kind == KeyAction::Kind::kPrune;
}
}  // namespace

void KeyReconciler::ReportHeld(absl::string_view scope,
                               const std::vector<KeyAction>& planned,
                               const std::vector<KeyAction>& due_by_the_clock,
                               absl::Duration clock_ahead,
                               std::set<std::string>& held) {
  std::set<std::string> planned_ids;
  for (const KeyAction& a : planned) {
    if (Irreversible(a)) planned_ids.insert(a.record.key_id());
  }
  for (const KeyAction& a : due_by_the_clock) {
    if (!Irreversible(a) || planned_ids.contains(a.record.key_id())) continue;
    held.insert(a.record.key_id());
    if (held_.contains(a.record.key_id())) continue;  // reported already
    Emit({"key_destruction_held", std::string(scope), a.record.kid(), false,
          absl::StrCat(
              "scope ", scope, ": ",
              a.kind == KeyAction::Kind::kPrune
                  ? "pruning (destroying the key pair and its records of)"
                  : "destroying the private key of",
              " key generation ", a.record.key_generation(),
              " is held back: the wall clock reads ",
              absl::FormatDuration(absl::Trunc(clock_ahead, absl::Seconds(1))),
              " ahead of the time signetd has seen pass since this boot's "
              "first start, so it may have been set forward and the key's "
              "tokens may still be valid; it is done once that time has "
              "really passed (if the clock is right, start signetd once with "
              "--accept_wall_clock)")});
  }
}

void KeyReconciler::Emit(KeyEvent event) const {
  if (events_) events_(event);
}

bool KeyReconciler::DestroyUnrecorded(
    const std::map<std::string, hsm::StoredRecord>& stored) {
  absl::StatusOr<std::vector<std::string>> ids = store_->ListKeyIds();
  absl::StatusOr<std::vector<std::string>> unfinished =
      ids.ok() ? store_->ListUnfinishedGenerations() : ids.status();
  if (!unfinished.ok()) {
    Emit({"key_action_failed", "", "", false,
          absl::StrCat("listing the token's keys failed: ",
                       unfinished.status().message())});
    return true;
  }
  const std::set<std::string> unfinished_ids(unfinished->begin(),
                                             unfinished->end());
  std::set<std::string> candidates = unfinished_ids;
  candidates.insert(ids->begin(), ids->end());
  bool gated = false;
  for (const std::string& id : candidates) {
    // Any record, even one this version cannot read, keeps its key.
    if (stored.contains(id)) continue;
    if (!unfinished_ids.contains(id)) {
      // Recorded once (the record was deleted outside signet) or made by
      // another program: never destroyed on a guess, never published or
      // used, and said once per start.
      Emit({"key_unrecorded_kept", "", "", false,
            absl::StrCat(
                "key pair ", absl::BytesToHexString(id),
                " has a signet label but no record, and its generation had "
                "finished: its record was deleted outside signet, or another "
                "program made it. Kept, but neither published nor used to "
                "sign (tokens it signed stop verifying once relying parties "
                "refetch the key sets); restore the token from a backup, or "
                "destroy the key pair by hand if it is not signet's")});
      continue;
    }
    if (!gated && change_gate_) {
      if (!change_gate_("", "destroying key pairs that have no record").ok()) {
        return false;  // looked for again by the next pass
      }
      gated = true;
    }
    if (before_write_) before_write_();
    absl::Status destroyed = store_->DestroyKeyPair(id);
    Emit({destroyed.ok() ? "key_pruned" : "key_action_failed", "", "",
          destroyed.ok(),
          destroyed.ok()
              ? absl::StrCat("key pair ", absl::BytesToHexString(id),
                             " had no record (a write stopped between "
                             "generating it and recording it): destroyed")
              : absl::StrCat("destroying unrecorded key pair ",
                             absl::BytesToHexString(id),
                             " failed: ", destroyed.message())});
  }
  return true;
}

absl::Status KeyReconciler::Apply(const ScopeKeyPolicy& policy,
                                  const std::vector<KeyAction>& actions,
                                  size_t* completed) {
  if (completed != nullptr) *completed = 0;
  if (!writer_) {
    return absl::FailedPreconditionError(
        "this replica does not write keys (never_create_keys): call the "
        "replica that does");
  }
  return Execute(policy, actions, completed, /*operators=*/true);
}

const ScopeKeyPolicy* KeyReconciler::PolicyFor(absl::string_view scope) const {
  for (const ScopeKeyPolicy& policy : policies_) {
    if (policy.scope == scope) return &policy;
  }
  return nullptr;
}

absl::Status KeyReconciler::Execute(const ScopeKeyPolicy& policy,
                                    const std::vector<KeyAction>& actions,
                                    size_t* completed, bool operators) {
  if (change_gate_ && !actions.empty()) {
    // Each write, compactly (an audit field holds 1024 bytes): should
    // signetd be killed between a write and its event line, this line,
    // durable before the first write, still names it.
    std::vector<std::string> what;
    for (const KeyAction& action : actions) {
      const KeyRecord& r = action.record;
      std::string one = absl::StrCat(action.event, " gen ", r.key_generation());
      if (!r.kid().empty()) absl::StrAppend(&one, " ", r.kid());
      if (action.event == "key_revoked" && r.has_revocation()) {
        absl::StrAppend(&one, " by ", base::Quote(r.revocation().revoked_by()),
                        " for ", base::Quote(r.revocation().reason()));
      }
      what.push_back(std::move(one));
    }
    SIGNET_RETURN_IF_ERROR(change_gate_(
        policy.scope, absl::StrCat(actions.size(), " token write(s): ",
                                   absl::StrJoin(what, "; "))));
  }
  for (const KeyAction& action : actions) {
    KeyRecord record = action.record;
    const std::string id = absl::HexStringToBytes(record.key_id());
    absl::Status status;
    switch (action.kind) {
      case KeyAction::Kind::kGenerate: {
        if (before_write_) before_write_();
        absl::StatusOr<std::string> generated =
            store_->GenerateKeyPair(policy.key_spec);
        if (!generated.ok()) {
          status = generated.status();
          break;
        }
        absl::StatusOr<hsm::LoadedKey> key =
            store_->LoadKey(*generated, policy.key_spec);
        if (!key.ok()) {
          status = key.status();
          (void)store_->DestroyKeyPair(*generated);
          break;
        }
        // The kid is computed here, above hsm/ (which knows nothing of
        // JOSE), and recorded with the key.
        absl::StatusOr<std::string> kid =
            jose::JwkThumbprint(key->public_key->get());
        if (!kid.ok()) {
          status = kid.status();
          (void)store_->DestroyKeyPair(*generated);
          break;
        }
        record.set_key_id(absl::BytesToHexString(*generated));
        record.set_kid(*kid);
        status = ValidateKeyRecord(record);
        if (status.ok()) {
          // A key is used only once its record is written; a crash before
          // leaves an unrecorded pair the next pass destroys.
          if (before_write_) before_write_();
          status = store_->WriteRecord(*generated, SerializeKeyRecord(record))
                       .status();
        }
        if (status.ok()) loaded_[record.key_id()] = *std::move(key);
        break;
      }
      case KeyAction::Kind::kWriteRecord:
        status = ValidateKeyRecord(record);
        if (status.ok()) {
          if (before_write_) before_write_();
          status = store_->WriteRecord(id, SerializeKeyRecord(record)).status();
        }
        break;
      case KeyAction::Kind::kDestroyPrivateKey:
        loaded_.erase(record.key_id());
        if (before_write_) before_write_();
        status = store_->DestroyPrivateKey(id);
        if (status.ok()) {
          if (before_write_) before_write_();
          status = store_->WriteRecord(id, SerializeKeyRecord(record)).status();
        }
        break;
      case KeyAction::Kind::kPrune:
        loaded_.erase(record.key_id());
        pruned_.insert(record.key_id());
        if (before_write_) before_write_();
        status = store_->DestroyKeyPair(id);
        break;
    }
    if (!status.ok() && action.kind == KeyAction::Kind::kGenerate) {
      // A failed generation may leave a pair without its record (a lost
      // reply to C_GenerateKeyPair, a failed record write, a clean-up that
      // failed too): the next pass looks for it.
      unrecorded_check_due_ = true;
    }
    const bool irreversible =
        action.kind == KeyAction::Kind::kDestroyPrivateKey ||
        action.kind == KeyAction::Kind::kPrune;
    if (!status.ok() && irreversible) {
      FailedIrreversible& failed = failed_irreversible_[record.key_id()];
      const bool same = failed.reason == status.ToString();
      failed.reason = status.ToString();
      failed.skip = failed.next_skip;
      failed.next_skip = std::min(2 * failed.next_skip, kMaxFailedSkip);
      if (!same) {
        Emit({"key_action_failed", policy.scope, record.kid(), false,
              absl::StrCat(action.event, " failed (", status.ToString(),
                           "); retried with a growing wait, up to every ",
                           kMaxFailedSkip,
                           " passes (reported again if the "
                           "reason changes): ",
                           action.detail)});
      }
      return status;
    }
    if (!status.ok()) {
      // An operator's change is not the next pass's to retry (a fourteenth
      // outside attack read "retried by the next pass" on a revocation
      // that nothing retried): the operator's call hears the error and is
      // what tries again.
      Emit({"key_action_failed", policy.scope, record.kid(), false,
            absl::StrCat(action.event, " failed (", status.ToString(),
                         operators
                             ? "); not made and not retried by signetd: the "
                               "operator's call is answered with this error "
                               "and the same call (same request_id) tries "
                               "again: "
                             : "); retried by the next pass: ",
                         action.detail)});
      return status;
    }
    if (irreversible) failed_irreversible_.erase(record.key_id());
    if (action.kind != KeyAction::Kind::kPrune) RememberWritten(record);
    Emit({action.event, policy.scope, record.kid(), true, action.detail});
    if (completed != nullptr) ++*completed;
  }
  return absl::OkStatus();
}

void KeyReconciler::RememberWritten(const KeyRecord& record) {
  std::vector<KeyRecord>& last = last_records_[record.scope()];
  for (KeyRecord& r : last) {
    if (r.key_id() == record.key_id()) {
      r = record;
      return;
    }
  }
  last.push_back(record);
}

bool KeyReconciler::RestoreVanishedRecords(
    const std::map<std::string, KeyRecord>& records) {
  bool restored = false;
  for (const ScopeKeyPolicy& policy : policies_) {
    auto last = last_records_.find(policy.scope);
    if (last == last_records_.end()) continue;
    for (const KeyRecord& r : last->second) {
      if (records.contains(r.key_id()) || pruned_.contains(r.key_id())) {
        continue;
      }
      auto state = last_state_.find(r.key_id());
      if (state == last_state_.end() || !IsPublished(state->second)) continue;
      const std::string what = absl::StrCat(
          "scope ", policy.scope, ": the record of key generation ",
          r.key_generation(), " (", KeyStateName(state->second),
          ") vanished from the token or became unreadable (deleted or "
          "shadowed outside signet)");
      if (change_gate_ && !change_gate_(policy.scope, what).ok()) continue;
      if (before_write_) before_write_();
      absl::Status written =
          store_
              ->WriteRecord(absl::HexStringToBytes(r.key_id()),
                            SerializeKeyRecord(r))
              .status();
      Emit({written.ok() ? "key_record_restored" : "key_action_failed",
            policy.scope, r.kid(), false,
            absl::StrCat(what,
                         written.ok()
                             ? "; written again from this replica's memory, "
                               "so the schedule does not treat the key as "
                               "gone"
                             : absl::StrCat("; writing it again failed: ",
                                            written.message()))});
      restored = restored || written.ok();
    }
  }
  return restored;
}

absl::StatusOr<std::map<std::string, ScopeKeySet>> KeyReconciler::RunOnce(
    absl::Time now) {
  return RunOnce(now, now);
}

absl::StatusOr<std::map<std::string, ScopeKeySet>> KeyReconciler::RunOnce(
    absl::Time now, absl::Time irreversible_until) {
  SIGNET_ASSIGN_OR_RETURN(auto stored, store_->ReadAllRecords());
  std::map<std::string, KeyRecord> records = ParseRecords(stored);

  // Keys deleted from the token behind signet's back (by hand, or by
  // another program), or whose id a second private key now shares:
  // unloaded here, so the scopes below try to load them again and say why
  // they cannot.
  SIGNET_ASSIGN_OR_RETURN(std::vector<std::string> unusable,
                          store_->LoadedKeysUnusable());
  for (const std::string& key_id : unusable) {
    store_->UnloadKey(key_id);
    loaded_.erase(absl::BytesToHexString(key_id));
  }

  if (writer_ && RestoreVanishedRecords(records)) {
    SIGNET_ASSIGN_OR_RETURN(stored, store_->ReadAllRecords());
    records = ParseRecords(stored);
  }

  if (writer_) {
    // Only a crash (before this process) or a failed record write leaves
    // a key pair without a record: look for them then, not every pass.
    if (unrecorded_check_due_) {
      unrecorded_check_due_ = !DestroyUnrecorded(stored);
    }
    bool wrote = false;
    std::set<std::string> held;
    for (const ScopeKeyPolicy& policy : policies_) {
      const std::vector<KeyRecord> scope_records =
          RecordsOf(records, policy.scope);
      std::vector<KeyAction> actions =
          PlanScope(scope_records, ScheduleOf(policy), now, irreversible_until);
      if (irreversible_until < now) {
        ReportHeld(policy.scope, actions,
                   PlanScope(scope_records, ScheduleOf(policy), now),
                   now - irreversible_until, held);
      }
      // A destruction or prune that failed waits its turn (see
      // failed_irreversible_); the scope's other writes go on.
      // One pass counts once per key, whatever it plans for the key.
      std::set<std::string> waited;
      std::erase_if(actions, [this, &waited](const KeyAction& a) {
        if (a.kind != KeyAction::Kind::kDestroyPrivateKey &&
            a.kind != KeyAction::Kind::kPrune) {
          return false;
        }
        auto failed = failed_irreversible_.find(a.record.key_id());
        if (failed == failed_irreversible_.end()) return false;
        if (waited.contains(a.record.key_id())) return true;
        if (failed->second.skip == 0) return false;
        --failed->second.skip;
        waited.insert(a.record.key_id());
        return true;
      });
      if (actions.empty()) continue;
      (void)Execute(policy, actions);  // failures are events; next pass retries
      wrote = true;
    }
    held_ = std::move(held);
    // A key whose records are gone (pruned, or by hand) fails no more.
    std::erase_if(failed_irreversible_, [&records](const auto& entry) {
      return !records.contains(entry.first);
    });
    if (wrote) {
      SIGNET_ASSIGN_OR_RETURN(stored, store_->ReadAllRecords());
      records = ParseRecords(stored);
    }
  }

  std::map<std::string, ScopeKeySet> out;
  std::set<std::string> needed;
  for (const ScopeKeyPolicy& policy : policies_) {
    ScopeKeySet& set = out[policy.scope];
    set.records = RecordsOf(records, policy.scope);
    const ScopeView view = ViewScope(set.records, now);
    for (size_t i = 0; i < set.records.size(); ++i) {
      const KeyRecord& r = set.records[i];
      const KeyState state = view.states[i];
      auto last = last_state_.find(r.key_id());
      if (last != last_state_.end() && last->second != state &&
          state != KeyState::kPending && state != KeyState::kDestroyed) {
        // A state before the last one is the clock set back (the sixth
        // outside attack read "key_retired (was DESTROYED)" as a key
        // brought back): said so, and that nothing destroyed comes back.
        const bool backwards = state < last->second;
        Emit({absl::StrCat("key_", absl::AsciiStrToLower(KeyStateName(state))),
              policy.scope, r.kid(), !backwards,
              absl::StrCat(
                  "scope ", policy.scope, ": key generation ",
                  r.key_generation(), " is ", KeyStateName(state), " (was ",
                  KeyStateName(last->second), ")",
                  backwards
                      ? absl::StrCat(
                            ": the wall clock reads before that change (set "
                            "back?)",
                            r.private_key_destroyed()
                                ? "; its private key stays destroyed and it "
                                  "never signs again"
                                : "")
                      : "")});
      }
      last_state_[r.key_id()] = state;
      if (!IsPublished(state)) continue;
      needed.insert(r.key_id());
      if (loaded_.contains(r.key_id())) continue;
      absl::Status load;
      if (r.algorithm() != policy.algorithm ||
          (r.rsa_bits() != 0 &&
           static_cast<int>(r.rsa_bits()) != policy.key_spec.rsa_bits)) {
        load = absl::FailedPreconditionError(absl::StrCat(
            "it is ", r.algorithm(), " but the configuration asks for ",
            policy.algorithm, "; rotate the scope's key to change algorithm"));
      } else {
        absl::StatusOr<hsm::LoadedKey> key = store_->LoadKey(
            absl::HexStringToBytes(r.key_id()), policy.key_spec);
        if (key.ok()) {
          // The kid tokens and key sets carry is the record's: it must be
          // this key's thumbprint, or relying parties would look for
          // another key (a record edited or written by hand, say).
          absl::StatusOr<std::string> kid =
              jose::JwkThumbprint(key->public_key->get());
          if (!kid.ok()) {
            load = kid.status();
          } else if (*kid != r.kid()) {
            load = absl::FailedPreconditionError(
                absl::StrCat("its record's kid \"", absl::CEscape(r.kid()),
                             "\" is not the key's RFC 7638 thumbprint ", *kid,
                             ": the record does not describe this key"));
          }
          if (load.ok()) {
            loaded_[r.key_id()] = *std::move(key);
          } else {
            store_->UnloadKey(key->key_id);
          }
        } else {
          load = key.status();
        }
      }
      auto failed = load_failures_.find(r.key_id());
      if (load.ok()) {
        if (failed != load_failures_.end()) {
          Emit({"key_loaded", policy.scope, r.kid(), true,
                absl::StrCat("scope ", policy.scope, ": key generation ",
                             r.key_generation(), " loads again (it failed: ",
                             failed->second, ")")});
          load_failures_.erase(failed);
        }
        continue;
      }
      const std::string why = absl::StrCat(
          "scope ", policy.scope, ": key generation ", r.key_generation(),
          " (kid ", r.kid(), ", ", KeyStateName(state),
          ") cannot be loaded: ", load.message());
      set.unusable[r.key_id()] = why;
      if (failed == load_failures_.end() || failed->second != why) {
        // Once per reason, not once per pass.
        Emit({"key_action_failed", policy.scope, r.kid(), false,
              absl::StrCat(why, static_cast<int>(i) == view.signing
                                    ? "; the scope cannot sign"
                                    : "")});
        load_failures_[r.key_id()] = why;
      }
    }
    for (const KeyRecord& r : set.records) {
      auto key = loaded_.find(r.key_id());
      if (key != loaded_.end() && needed.contains(r.key_id())) {
        set.loaded.emplace(key->first, key->second);
      }
    }
    last_records_[policy.scope] = set.records;
  }
  // Keys that cannot be loaded are replaced (revoked, saying why, and the
  // pass runs again so that the schedule activates or makes a successor)
  // when only signet uses them (ScopeKeyPolicy::replace_unusable_keys), and
  // in every scope when the key is the standby: it has never signed, so
  // revoking it breaks no token, and left alone it would activate at its
  // time and stop the scope. A broken key that signed stays an incident
  // for a person. One key per run, planned from the records as they are
  // now (a second revocation planned from the same records would undo the
  // first's effects); at most kMaxReplacementsPerPass runs.
  if (writer_ && replacements_ < kMaxReplacementsPerPass) {
    for (const ScopeKeyPolicy& policy : policies_) {
      const ScopeKeySet& set = out[policy.scope];
      if (set.unusable.empty()) continue;
      const int standby = ViewScope(set.records, now).standby;
      for (const auto& [key_id, why] : set.unusable) {
        const bool is_standby =
            standby >= 0 && set.records[standby].key_id() == key_id;
        if (!policy.replace_unusable_keys && !is_standby) continue;
        absl::StatusOr<std::vector<KeyAction>> plan =
            PlanRevoke(set.records, ScheduleOf(policy), key_id,
                       absl::StrCat(is_standby ? "the standby " : "",
                                    "cannot be loaded, "
                                    "replaced by signetd: ",
                                    why.substr(0, 400)),
                       "signetd", now);
        if (!plan.ok() || !Execute(policy, *plan).ok()) continue;
        ++replacements_;
        absl::StatusOr<std::map<std::string, ScopeKeySet>> again =
            RunOnce(now, irreversible_until);
        --replacements_;
        return again;
      }
    }
  }
  // Keys nobody needs any more stop being warmed on new connections.
  for (auto it = loaded_.begin(); it != loaded_.end();) {
    if (needed.contains(it->first)) {
      ++it;
      continue;
    }
    store_->UnloadKey(absl::HexStringToBytes(it->first));
    it = loaded_.erase(it);
  }
  std::erase_if(load_failures_, [&needed](const auto& failure) {
    return !needed.contains(failure.first);
  });
  return out;
}

std::map<std::string, ScopeKeySet> KeyReconciler::KnownSets() const {
  std::map<std::string, ScopeKeySet> out;
  for (const ScopeKeyPolicy& policy : policies_) {
    auto records = last_records_.find(policy.scope);
    if (records == last_records_.end()) continue;
    ScopeKeySet& set = out[policy.scope];
    set.records = records->second;
    std::erase_if(set.records, [this](const KeyRecord& r) {
      return pruned_.contains(r.key_id());
    });
    for (const KeyRecord& r : set.records) {
      if (auto key = loaded_.find(r.key_id()); key != loaded_.end()) {
        set.loaded.emplace(key->first, key->second);
      }
      if (auto failed = load_failures_.find(r.key_id());
          failed != load_failures_.end()) {
        set.unusable[r.key_id()] = failed->second;
      }
    }
  }
  return out;
}

absl::Time KeyReconciler::NextBoundary(absl::Time now) const {
  absl::Time next = absl::InfiniteFuture();
  for (const ScopeKeyPolicy& policy : policies_) {
    auto records = last_records_.find(policy.scope);
    if (records == last_records_.end()) continue;
    next = std::min(next,
                    NextScheduleChange(records->second, policy.timings, now));
  }
  return next;
}

}  // namespace signet::rotation
