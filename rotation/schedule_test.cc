#include "rotation/schedule.h"

#include <cstdint>
#include <map>
#include <random>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "rotation/key_record.pb.h"
#include "rotation/key_state.h"

namespace signet::rotation {

// Readable failures.
void PrintTo(const KeyAction& a, std::ostream* os) {
  *os << a.event << ": " << a.detail;
}

namespace {

using ::testing::HasSubstr;
using ::testing::IsEmpty;
using ::testing::Not;
using ::testing::SizeIs;

constexpr absl::Time kT0 = absl::FromUnixSeconds(1709251200);

// The numbers of the README's defaults, scaled down: cache C, refresh R,
// token lifetime T, iat skew S, verifier leeway V.
constexpr absl::Duration kC = absl::Seconds(300);
constexpr absl::Duration kR = absl::Seconds(60);
constexpr absl::Duration kT = absl::Seconds(1200);
constexpr absl::Duration kS = absl::Seconds(60);
constexpr absl::Duration kV = absl::Seconds(60);

SchedulePolicy Policy() {
  SchedulePolicy p;
  p.scope = "demo";
  p.algorithm = "ES256";
  p.timings.rotation_period = absl::Hours(1);
  p.timings.min_publish_lead = 2 * kC + kR;
  p.timings.publish_grace = kT + kS + kV + absl::Seconds(60);
  p.timings.destroy_delay = absl::Minutes(30);
  p.timings.tombstone_retention = absl::Hours(1);
  return p;
}

// A token of key writes: what the reconcile loop does through hsm/, in
// memory, with a crash possible between any two writes.
class FakeToken {
 public:
  // Applies `actions` in order, stopping (a crash) after `writes` token
  // writes; -1 applies all. Returns the number of writes made.
  int Apply(const std::vector<KeyAction>& actions, int writes = -1) {
    int made = 0;
    auto write = [&] { return writes < 0 || made++ < writes; };
    for (const KeyAction& action : actions) {
      KeyRecord r = action.record;
      switch (action.kind) {
        case KeyAction::Kind::kGenerate: {
          if (!write()) return made;
          const std::string id =
              absl::StrCat(absl::Hex(++next_id_, absl::kZeroPad4));
          private_keys_.insert(id);
          public_keys_.insert(id);
          r.set_key_id(id);
          r.set_kid(absl::StrCat("kid-", id));
          if (!write()) return made;
          EXPECT_TRUE(ValidateKeyRecord(r).ok()) << ValidateKeyRecord(r);
          records_[id] = r;
          break;
        }
        case KeyAction::Kind::kWriteRecord:
          if (!write()) return made;
          EXPECT_TRUE(ValidateKeyRecord(r).ok()) << ValidateKeyRecord(r);
          EXPECT_TRUE(records_.contains(r.key_id()));
          records_[r.key_id()] = r;
          break;
        case KeyAction::Kind::kDestroyPrivateKey:
          if (!write()) return made;
          private_keys_.erase(r.key_id());
          if (!write()) return made;
          records_[r.key_id()] = r;
          break;
        case KeyAction::Kind::kPrune:
          if (!write()) return made;
          private_keys_.erase(r.key_id());
          public_keys_.erase(r.key_id());
          records_.erase(r.key_id());
          break;
      }
    }
    return made;
  }

  // What the reconcile loop does first: a key pair without a record (a
  // crash between generating it and recording it) is destroyed.
  void DestroyUnrecorded() {
    for (auto it = public_keys_.begin(); it != public_keys_.end();) {
      if (records_.contains(*it)) {
        ++it;
        continue;
      }
      private_keys_.erase(*it);
      it = public_keys_.erase(it);
    }
  }

  std::vector<KeyRecord> Records() const {
    std::vector<KeyRecord> out;
    for (const auto& [id, r] : records_) out.push_back(r);
    return out;
  }
  bool HasPrivateKey(const std::string& id) const {
    return private_keys_.contains(id);
  }
  const std::map<std::string, KeyRecord>& records() const { return records_; }

 private:
  uint64_t next_id_ = 0;
  std::map<std::string, KeyRecord> records_;
  std::set<std::string> private_keys_;
  std::set<std::string> public_keys_;
};

KeyRecord Find(const std::vector<KeyRecord>& records, uint64_t generation) {
  for (const KeyRecord& r : records) {
    if (r.key_generation() == generation) return r;
  }
  ADD_FAILURE() << "no generation " << generation;
  return KeyRecord();
}

// A scope whose first key was made and its standby not (the writer stopped
// in between).
FakeToken FirstKeyOnly(absl::Time now) {
  FakeToken token;
  token.Apply(PlanScope({}, Policy(), now), /*writes=*/2);
  EXPECT_THAT(token.records(), SizeIs(1));
  return token;
}

// A scope after its first plan: the first key and its standby.
FakeToken Started(absl::Time now) {
  FakeToken token;
  token.Apply(PlanScope({}, Policy(), now));
  EXPECT_THAT(token.records(), SizeIs(2));
  return token;
}

TEST(PlanScopeTest, FirstKeySignsAtOnceAndItsStandbyFollowsWithALead) {
  FakeToken token;
  std::vector<KeyAction> first = PlanScope({}, Policy(), kT0);
  ASSERT_THAT(first, SizeIs(2));
  EXPECT_EQ(first[0].kind, KeyAction::Kind::kGenerate);
  EXPECT_EQ(first[0].event, "key_generated");
  EXPECT_THAT(first[0].detail, HasSubstr("first key"));
  EXPECT_EQ(first[1].kind, KeyAction::Kind::kGenerate);
  EXPECT_THAT(first[1].detail, HasSubstr("standby generation 2"));
  token.Apply(first);
  const std::vector<KeyRecord> records = token.Records();
  const KeyRecord g1 = Find(records, 1);
  const KeyRecord g2 = Find(records, 2);
  EXPECT_EQ(TimeFromProto(g2.activate_at()), TimeFromProto(g1.retire_at()));
  EXPECT_GE(TimeFromProto(g2.activate_at()) - TimeFromProto(g2.created_at()),
            Policy().timings.min_publish_lead);
  const ScopeView view = ViewScope(records, kT0);
  ASSERT_GE(view.signing, 0);
  ASSERT_GE(view.standby, 0);
  EXPECT_EQ(records[view.signing].key_generation(), 1u);
  EXPECT_EQ(records[view.standby].key_generation(), 2u);
  EXPECT_EQ(view.states[view.standby], KeyState::kPending);
  // Idempotent: nothing more until a boundary.
  EXPECT_THAT(PlanScope(records, Policy(), kT0 + absl::Seconds(5)), IsEmpty());
}

// Fault 2 of the single-key schedule: the successor signed with no lead.
TEST(PlanScopeTest, SuccessorIsPublishedAWholePeriodBeforeItSigns) {
  FakeToken token = Started(kT0);
  const absl::Time retire = TimeFromProto(Find(token.Records(), 1).retire_at());
  // At the boundary generation 2 signs; it was published since kT0.
  const std::vector<KeyRecord> records = token.Records();
  const ScopeView at = ViewScope(records, retire);
  ASSERT_GE(at.signing, 0);
  const KeyRecord& g2 = records[at.signing];
  EXPECT_EQ(g2.key_generation(), 2u);
  EXPECT_EQ(retire - TimeFromProto(g2.created_at()),
            Policy().timings.rotation_period);
}

// Fault 1: after the active key's retire time its key is still published
// (RETIRED), beside its successor.
TEST(ViewScopeTest, RetiredKeyStaysPublishedBesideItsSuccessor) {
  FakeToken token = Started(kT0);
  const absl::Time after =
      TimeFromProto(Find(token.Records(), 1).retire_at()) + absl::Minutes(1);
  const std::vector<KeyRecord> records = token.Records();
  const ScopeView view = ViewScope(records, after);
  for (size_t i = 0; i < records.size(); ++i) {
    if (records[i].key_generation() == 1) {
      EXPECT_EQ(view.states[i], KeyState::kRetired);
      EXPECT_TRUE(IsPublished(view.states[i]));
    }
  }
}

// Fault 3: a clock set back never re-activates an older generation.
TEST(ViewScopeTest, ClockSetBackDoesNotReactivateAnOlderKey) {
  FakeToken token = Started(kT0);
  const absl::Time retire = TimeFromProto(Find(token.Records(), 1).retire_at());
  // The writer records generation 2's activation.
  token.Apply(PlanScope(token.Records(), Policy(), retire + absl::Seconds(1)));
  ASSERT_TRUE(Find(token.Records(), 2).has_activation_recorded_at());
  const std::vector<KeyRecord> records = token.Records();
  const ScopeView back = ViewScope(records, retire - absl::Minutes(10));
  ASSERT_GE(back.signing, 0);
  EXPECT_EQ(records[back.signing].key_generation(), 2u);
  for (size_t i = 0; i < records.size(); ++i) {
    if (records[i].key_generation() == 1) {
      EXPECT_EQ(back.states[i], KeyState::kRetired);
    }
  }
  EXPECT_THAT(back.clock_anomaly, HasSubstr("behind the recorded activation"));
  // Without the recorded activation the clock would have won.
  EXPECT_THAT(ViewScope(records, retire + absl::Seconds(2)).clock_anomaly,
              IsEmpty());
}

// An outage longer than two periods: the active key and its standby have
// both passed their windows. A scope makes a new key; the audit key's policy
// (revive_unused_successor) has the standby, never used, sign from now
// instead, and never an older generation than one that signed.
TEST(PlanScopeTest, AfterALongOutageTheUnusedSuccessorSignsWhenRevivable) {
  FakeToken token = Started(kT0);
  // The writer recorded generation 1's activation, then stopped.
  const absl::Time later =
      kT0 + 3 * Policy().timings.rotation_period + absl::Minutes(1);
  ASSERT_LT(ViewScope(token.Records(), later).signing, 0);
  ASSERT_LT(ViewScope(token.Records(), later).standby, 0);

  std::vector<KeyAction> fresh = PlanScope(token.Records(), Policy(), later);
  ASSERT_FALSE(fresh.empty());
  EXPECT_EQ(fresh[0].kind, KeyAction::Kind::kGenerate);
  EXPECT_THAT(fresh[0].detail, HasSubstr("no standby"));

  SchedulePolicy revive = Policy();
  revive.revive_unused_successor = true;
  std::vector<KeyAction> revived = PlanScope(token.Records(), revive, later);
  ASSERT_GE(revived.size(), 2u);
  EXPECT_EQ(revived[0].kind, KeyAction::Kind::kWriteRecord);
  EXPECT_EQ(revived[0].record.key_generation(), 2u);
  EXPECT_THAT(revived[0].detail, HasSubstr("window passed unused"));
  EXPECT_EQ(TimeFromProto(revived[0].record.activate_at()), later);
  EXPECT_EQ(revived[1].kind, KeyAction::Kind::kGenerate);  // its standby
  token.Apply(revived);
  const ScopeView view = ViewScope(token.Records(), later);
  ASSERT_GE(view.signing, 0);
  EXPECT_EQ(token.Records()[view.signing].key_generation(), 2u);
  EXPECT_GE(view.standby, 0);
  // Idempotent.
  EXPECT_THAT(PlanScope(token.Records(), revive, later + absl::Seconds(1)),
              IsEmpty());
}

TEST(PlanScopeTest, ARevivedKeyIsNeverOlderThanOneThatSigned) {
  FakeToken token = Started(kT0);
  std::vector<KeyRecord> records = token.Records();
  // Generation 2 was revoked; nothing newer: a new key, not generation 1.
  for (KeyRecord& r : records) {
    if (r.key_generation() == 2) {
      r.mutable_revocation()->set_reason("test");
      *r.mutable_revocation()->mutable_revoked_at() = TimeToProto(kT0);
    }
  }
  SchedulePolicy revive = Policy();
  revive.revive_unused_successor = true;
  const absl::Time later =
      kT0 + 3 * Policy().timings.rotation_period + absl::Minutes(1);
  std::vector<KeyAction> plan = PlanScope(records, revive, later);
  ASSERT_FALSE(plan.empty());
  EXPECT_EQ(plan[0].kind, KeyAction::Kind::kGenerate);
  EXPECT_EQ(plan[0].record.key_generation(), 3u);
  // Generation 2 signed (its activation recorded), generation 1's record
  // lacks its own: generation 1 is not revived past generation 2.
  records = token.Records();
  for (KeyRecord& r : records) {
    if (r.key_generation() == 1) r.clear_activation_recorded_at();
    if (r.key_generation() == 2) {
      *r.mutable_activation_recorded_at() = r.activate_at();
    }
  }
  plan = PlanScope(records, revive, later);
  ASSERT_FALSE(plan.empty());
  EXPECT_EQ(plan[0].kind, KeyAction::Kind::kGenerate);
  EXPECT_EQ(plan[0].record.key_generation(), 3u);
}

TEST(PlanScopeTest, LateStandbyExtendsTheActiveKeyInsteadOfSigningWithoutLead) {
  // A first key whose standby was never made (the writer was down): 2
  // minutes before it retires, the planner extends it to now + L.
  FakeToken token = FirstKeyOnly(kT0);
  const absl::Time retire = TimeFromProto(Find(token.Records(), 1).retire_at());
  const absl::Time now = retire - absl::Minutes(2);
  std::vector<KeyAction> plan = PlanScope(token.Records(), Policy(), now);
  ASSERT_THAT(plan, SizeIs(2));
  EXPECT_EQ(plan[0].event, "key_schedule_extended");
  EXPECT_EQ(plan[1].kind, KeyAction::Kind::kGenerate);
  token.Apply(plan);
  const KeyRecord g1 = Find(token.Records(), 1);
  const KeyRecord g2 = Find(token.Records(), 2);
  EXPECT_EQ(TimeFromProto(g1.retire_at()),
            now + Policy().timings.min_publish_lead);
  EXPECT_EQ(TimeFromProto(g2.activate_at()), TimeFromProto(g1.retire_at()));
}

TEST(PlanScopeTest, DestroysPrivateKeyAtItsTimeThenPrunesTheTombstone) {
  FakeToken token = Started(kT0);
  const KeyRecord g1 = Find(token.Records(), 1);
  const absl::Time destroy = TimeFromProto(g1.destroy_at());
  // Keep the scope going up to there.
  for (absl::Time t = kT0; t < destroy; t += absl::Minutes(5)) {
    token.Apply(PlanScope(token.Records(), Policy(), t));
  }
  std::vector<KeyAction> plan = PlanScope(token.Records(), Policy(), destroy);
  ASSERT_FALSE(plan.empty());
  bool destroyed = false;
  for (const KeyAction& a : plan) {
    if (a.kind == KeyAction::Kind::kDestroyPrivateKey) {
      EXPECT_EQ(a.record.key_generation(), 1u);
      EXPECT_TRUE(a.record.private_key_destroyed());
      destroyed = true;
    }
  }
  EXPECT_TRUE(destroyed);
  token.Apply(plan);
  EXPECT_FALSE(token.HasPrivateKey(g1.key_id()));
  EXPECT_TRUE(token.records().contains(g1.key_id()));  // the tombstone
  const absl::Time prune = destroy + Policy().timings.tombstone_retention;
  EXPECT_EQ(
      NextScheduleChange({Find(token.Records(), 1)}, Policy().timings, destroy),
      prune);
  token.Apply(PlanScope(token.Records(), Policy(), prune));
  EXPECT_FALSE(token.records().contains(g1.key_id()));
}

// The irreversible steps wait for `irreversible_until` (the time the writer
// has seen pass), whatever the wall clock says; the rest of the plan
// follows the wall clock.
TEST(PlanScopeTest, DestroyAndPruneWaitForTheTimeSeenPass) {
  FakeToken token = Started(kT0);
  const KeyRecord g1 = Find(token.Records(), 1);
  const absl::Time destroy = TimeFromProto(g1.destroy_at());
  const absl::Time prune = destroy + Policy().timings.tombstone_retention;
  auto kinds_for_g1 = [&](const std::vector<KeyAction>& plan) {
    std::vector<KeyAction::Kind> kinds;
    for (const KeyAction& a : plan) {
      if (a.record.key_id() == g1.key_id()) kinds.push_back(a.kind);
    }
    return kinds;
  };
  const absl::Time before_destroy = destroy - absl::Seconds(1);
  // The wall clock is past the prune; the time seen pass is not even at
  // the destruction: neither, but the schedule still moves on.
  std::vector<KeyAction> held =
      PlanScope(token.Records(), Policy(), prune, before_destroy);
  EXPECT_THAT(kinds_for_g1(held), ::testing::IsEmpty());
  EXPECT_FALSE(held.empty());  // keys activated and generated at `prune`
  // The time seen pass reaches the destruction: the private key only.
  EXPECT_THAT(
      kinds_for_g1(PlanScope(token.Records(), Policy(), prune, destroy)),
      ::testing::ElementsAre(KeyAction::Kind::kDestroyPrivateKey));
  // And the prune; `irreversible_until` past `now` counts as `now`.
  EXPECT_THAT(kinds_for_g1(PlanScope(token.Records(), Policy(), prune, prune)),
              ::testing::ElementsAre(KeyAction::Kind::kPrune));
  EXPECT_THAT(kinds_for_g1(PlanScope(token.Records(), Policy(), destroy,
                                     prune + absl::Hours(1))),
              ::testing::ElementsAre(KeyAction::Kind::kDestroyPrivateKey));
}

TEST(PlanRotateNowTest, ImmediateActivatesTheStandbyAndRetiresTheActiveKey) {
  FakeToken token = Started(kT0);
  const absl::Time now = kT0 + absl::Minutes(20);
  absl::StatusOr<std::vector<KeyAction>> plan =
      PlanRotateNow(token.Records(), Policy(), RotateMode::kImmediate, now);
  ASSERT_TRUE(plan.ok()) << plan.status();
  token.Apply(*plan);
  const std::vector<KeyRecord> records = token.Records();
  const ScopeView view = ViewScope(records, now);
  ASSERT_GE(view.signing, 0);
  EXPECT_EQ(records[view.signing].key_generation(), 2u);
  const KeyRecord g1 = Find(records, 1);
  EXPECT_EQ(TimeFromProto(g1.retire_at()), now);
  EXPECT_EQ(TimeFromProto(g1.unpublish_at()),
            now + Policy().timings.publish_grace);
  // The standby was published 20 minutes, over L: no warning.
  EXPECT_THAT((*plan)[0].detail, Not(HasSubstr("only")));
}

TEST(PlanRotateNowTest,
     ImmediateWithAYoungStandbySaysRelyingPartiesMayRefetch) {
  FakeToken token = Started(kT0);
  absl::StatusOr<std::vector<KeyAction>> plan =
      PlanRotateNow(token.Records(), Policy(), RotateMode::kImmediate,
                    kT0 + absl::Seconds(30));
  ASSERT_TRUE(plan.ok());
  EXPECT_THAT((*plan)[0].detail, HasSubstr("unknown kid"));
}

TEST(PlanRotateNowTest, PlannedActivatesTheStandbyAfterTheLead) {
  FakeToken token = Started(kT0);
  const absl::Time now = kT0 + absl::Minutes(5);
  absl::StatusOr<std::vector<KeyAction>> plan =
      PlanRotateNow(token.Records(), Policy(), RotateMode::kPlanned, now);
  ASSERT_TRUE(plan.ok());
  token.Apply(*plan);
  const KeyRecord g2 = Find(token.Records(), 2);
  EXPECT_EQ(TimeFromProto(g2.activate_at()),
            now + Policy().timings.min_publish_lead);
  EXPECT_EQ(TimeFromProto(Find(token.Records(), 1).retire_at()),
            TimeFromProto(g2.activate_at()));
}

TEST(PlanRotateNowTest, RefusesWithoutAStandby) {
  FakeToken token = FirstKeyOnly(kT0);
  absl::StatusOr<std::vector<KeyAction>> plan =
      PlanRotateNow(token.Records(), Policy(), RotateMode::kImmediate, kT0);
  EXPECT_EQ(plan.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(plan.status().message(), HasSubstr("no standby"));
  EXPECT_EQ(
      PlanRotateNow({}, Policy(), RotateMode::kPlanned, kT0).status().code(),
      absl::StatusCode::kFailedPrecondition);
}

TEST(PlanRotateNowTest, ImmediateRotationsStopAtTheCapOnPublishedKeys) {
  FakeToken token = Started(kT0);
  absl::Time now = kT0;
  int rotations = 0;
  for (; rotations < 20; ++rotations) {
    now += absl::Minutes(1);
    absl::StatusOr<std::vector<KeyAction>> plan =
        PlanRotateNow(token.Records(), Policy(), RotateMode::kImmediate, now);
    if (!plan.ok()) {
      EXPECT_EQ(plan.status().code(), absl::StatusCode::kFailedPrecondition);
      EXPECT_THAT(plan.status().message(), HasSubstr("revoke a retired key"));
      break;
    }
    token.Apply(*plan);
    token.Apply(PlanScope(token.Records(), Policy(), now));  // a new standby
  }
  // 1 active + 1 standby + one retired key per rotation, up to the cap.
  EXPECT_EQ(rotations, Policy().max_published_keys - 2);
  // A revocation is never refused, and makes room.
  const std::vector<KeyRecord> records = token.Records();
  const ScopeView view = ViewScope(records, now);
  for (size_t i = 0; i < records.size(); ++i) {
    if (view.states[i] != KeyState::kRetired) continue;
    token.Apply(*PlanRevoke(records, Policy(), records[i].key_id(), "room",
                            "uri:admin", now));
    break;
  }
  EXPECT_TRUE(PlanRotateNow(token.Records(), Policy(), RotateMode::kImmediate,
                            now + absl::Seconds(1))
                  .ok());
}

TEST(PlanRevokeTest, RevokingTheActiveKeyActivatesTheStandby) {
  FakeToken token = Started(kT0);
  const KeyRecord g1 = Find(token.Records(), 1);
  const absl::Time now = kT0 + absl::Minutes(30);
  absl::StatusOr<std::vector<KeyAction>> plan = PlanRevoke(
      token.Records(), Policy(), g1.key_id(), "exposed", "uri:admin", now);
  ASSERT_TRUE(plan.ok()) << plan.status();
  ASSERT_THAT(*plan, SizeIs(2));
  EXPECT_EQ((*plan)[0].event, "key_revoked");
  token.Apply(*plan);
  const std::vector<KeyRecord> records = token.Records();
  const ScopeView view = ViewScope(records, now);
  ASSERT_GE(view.signing, 0);
  EXPECT_EQ(records[view.signing].key_generation(), 2u);
  const KeyRecord revoked = Find(records, 1);
  EXPECT_EQ(revoked.revocation().reason(), "exposed");
  EXPECT_EQ(revoked.revocation().revoked_by(), "uri:admin");
  for (size_t i = 0; i < records.size(); ++i) {
    if (records[i].key_generation() == 1) {
      EXPECT_EQ(view.states[i], KeyState::kRevoked);
    }
  }
}

TEST(PlanRevokeTest, CrashAfterTheRevocationStillEndsWithTheStandbySigning) {
  FakeToken token = Started(kT0);
  const KeyRecord g1 = Find(token.Records(), 1);
  const absl::Time now = kT0 + absl::Minutes(30);
  absl::StatusOr<std::vector<KeyAction>> plan =
      PlanRevoke(token.Records(), Policy(), g1.key_id(), "r", "a", now);
  ASSERT_TRUE(plan.ok());
  token.Apply(*plan, /*writes=*/1);
  EXPECT_LT(ViewScope(token.Records(), now).signing, 0);
  token.Apply(PlanScope(token.Records(), Policy(), now + absl::Seconds(1)));
  const std::vector<KeyRecord> records = token.Records();
  const ScopeView view = ViewScope(records, now + absl::Seconds(1));
  ASSERT_GE(view.signing, 0);
  EXPECT_EQ(records[view.signing].key_generation(), 2u);
}

TEST(PlanRevokeTest, RefusesUnknownAndAlreadyRevokedKeys) {
  FakeToken token = Started(kT0);
  EXPECT_EQ(PlanRevoke(token.Records(), Policy(), "beef", "r", "a", kT0)
                .status()
                .code(),
            absl::StatusCode::kNotFound);
  const KeyRecord g1 = Find(token.Records(), 1);
  token.Apply(
      *PlanRevoke(token.Records(), Policy(), g1.key_id(), "r", "a", kT0));
  absl::Status again =
      PlanRevoke(token.Records(), Policy(), g1.key_id(), "r", "a", kT0)
          .status();
  EXPECT_EQ(again.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(again.message(), HasSubstr("already revoked"));
}

// A planned rotation moves the standby's time before the active key's
// retire_at; revoked before that time, the standby never signed, so its
// time passing does not retire the active key (which signs on until its
// own retire_at, when the new standby, published a whole lead before,
// takes over). Found by the simulation below.
TEST(PlanRevokeTest, AStandbyRevokedBeforeItsTimeDoesNotRetireTheActiveKey) {
  const SchedulePolicy policy = Policy();
  FakeToken token = Started(kT0);
  const KeyRecord g1 = Find(token.Records(), 1);
  const absl::Time rotated = kT0 + absl::Minutes(10);
  token.Apply(
      *PlanRotateNow(token.Records(), policy, RotateMode::kPlanned, rotated));
  const absl::Time g2_time =
      TimeFromProto(Find(token.Records(), 2).activate_at());
  ASSERT_EQ(g2_time, rotated + policy.timings.min_publish_lead);
  ASSERT_LT(g2_time, TimeFromProto(g1.retire_at()));

  const absl::Time revoked = rotated + absl::Minutes(2);
  token.Apply(*PlanRevoke(token.Records(), policy,
                          Find(token.Records(), 2).key_id(), "r", "a",
                          revoked));
  token.Apply(PlanScope(token.Records(), policy, revoked));
  const KeyRecord g3 = Find(token.Records(), 3);
  EXPECT_GE(TimeFromProto(g3.activate_at()) - TimeFromProto(g3.created_at()),
            policy.timings.min_publish_lead);

  // From g2's time to g3's, g1 still signs and nothing activates early.
  const absl::Time g3_time = TimeFromProto(g3.activate_at());
  ASSERT_GT(g3_time, g2_time);
  for (const absl::Time t : {g2_time, g3_time - absl::Seconds(1)}) {
    const std::vector<KeyRecord> records = token.Records();
    const ScopeView view = ViewScope(records, t);
    ASSERT_GE(view.signing, 0);
    EXPECT_EQ(records[view.signing].key_generation(), 1u);
    for (const KeyAction& a : PlanScope(records, policy, t)) {
      EXPECT_NE(a.event, "key_activated") << a.detail;
    }
  }
  token.Apply(PlanScope(token.Records(), policy, g3_time));
  const std::vector<KeyRecord> records = token.Records();
  const ScopeView view = ViewScope(records, g3_time);
  ASSERT_GE(view.signing, 0);
  EXPECT_EQ(records[view.signing].key_generation(), 3u);
}

// A revoked key never signs or is published again, so its private key
// goes at the shorter of destroy_delay and min_publish_lead after the
// revocation (by then every replica has re-read the records), not at the
// end of its schedule.
TEST(PlanRevokeTest, ARevokedPrivateKeyGoesAtTheShorterOfTheDelayAndTheLead) {
  for (const absl::Duration destroy_delay :
       {absl::Minutes(30), absl::Minutes(5)}) {
    SCOPED_TRACE(absl::FormatDuration(destroy_delay));
    SchedulePolicy policy = Policy();
    policy.timings.destroy_delay = destroy_delay;
    const absl::Duration after =
        std::min(destroy_delay, policy.timings.min_publish_lead);
    FakeToken token = Started(kT0);
    const KeyRecord g1 = Find(token.Records(), 1);
    const absl::Time now = kT0 + absl::Minutes(1);
    token.Apply(
        *PlanRevoke(token.Records(), policy, g1.key_id(), "r", "a", now));
    token.Apply(PlanScope(token.Records(), policy, now));
    const KeyRecord revoked = Find(token.Records(), 1);
    EXPECT_EQ(DestroyTime(revoked, policy.timings), now + after);
    EXPECT_EQ(NextScheduleChange({revoked}, policy.timings, now), now + after);
    token.Apply(
        PlanScope(token.Records(), policy, now + after - absl::Seconds(1)));
    EXPECT_TRUE(token.HasPrivateKey(g1.key_id()));
    token.Apply(PlanScope(token.Records(), policy, now + after));
    EXPECT_FALSE(token.HasPrivateKey(g1.key_id()));
    EXPECT_TRUE(token.records().contains(g1.key_id()));  // the tombstone
  }
}

// Each revocation of the active key makes a new key; the tombstones they
// leave are capped per scope (oldest pruned first), so an operator revoking
// again and again cannot grow the token without bound.
TEST(PlanScopeTest, RepeatedRevocationsKeepAtMostMaxTombstones) {
  SchedulePolicy policy = Policy();
  policy.max_tombstones = 4;
  FakeToken token = Started(kT0);
  absl::Time now = kT0;
  uint64_t newest = 0;
  for (int i = 0; i < 30; ++i) {
    now += absl::Minutes(1);
    const std::vector<KeyRecord> records = token.Records();
    const ScopeView view = ViewScope(records, now);
    ASSERT_GE(view.signing, 0);
    token.Apply(*PlanRevoke(records, policy, records[view.signing].key_id(),
                            "r", "a", now));
    token.Apply(PlanScope(token.Records(), policy, now));
  }
  now += policy.timings.min_publish_lead;
  token.Apply(PlanScope(token.Records(), policy, now));
  token.Apply(PlanScope(token.Records(), policy, now));  // idempotent
  EXPECT_THAT(PlanScope(token.Records(), policy, now), IsEmpty());

  std::vector<uint64_t> tombstones;
  int live_private_keys = 0;
  for (const KeyRecord& r : token.Records()) {
    newest = std::max<uint64_t>(newest, r.key_generation());
    if (r.private_key_destroyed()) tombstones.push_back(r.key_generation());
    if (token.HasPrivateKey(r.key_id())) ++live_private_keys;
  }
  std::sort(tombstones.begin(), tombstones.end());
  // 30 revoked keys, all destroyed; the 4 newest kept as tombstones.
  EXPECT_EQ(newest, 32u);
  EXPECT_THAT(tombstones, ::testing::ElementsAre(27, 28, 29, 30));
  EXPECT_EQ(live_private_keys, 2);  // the active key and its standby
  EXPECT_GE(ViewScope(token.Records(), now).signing, 0);
}

// The request ids the token's records hold (either list).
std::set<std::string> RequestIdsHeld(const FakeToken& token) {
  std::set<std::string> ids;
  for (const KeyRecord& r : token.Records()) {
    for (const OperatorChange& c : r.operator_changes()) {
      ids.insert(c.request_id());
    }
    for (const OperatorChange& c : r.carried_changes()) {
      ids.insert(c.request_id());
    }
  }
  return ids;
}

// What KeyManager::ApplyChange does: the change rides on the plan's first
// record write.
void RecordChange(std::vector<KeyAction>& plan, const std::string& request_id,
                  absl::Time made_at) {
  for (KeyAction& a : plan) {
    if (a.kind != KeyAction::Kind::kWriteRecord) continue;
    OperatorChange* change = a.record.add_operator_changes();
    change->set_request_id(request_id);
    change->set_request_sha256(std::string(32, 'h'));
    change->set_response("answer");
    *change->mutable_made_at() = TimeToProto(made_at);
    return;
  }
  ADD_FAILURE() << "the plan writes no record";
}

// A pruned tombstone used to take the request ids of the changes it held
// with it, so a retry after a restart was applied again (a fourteenth
// outside attack). Thirty revocations a minute apart, four tombstones
// kept: every revocation's request id is still in the token, and planning
// again adds nothing.
TEST(PlanScopeTest, RequestIdsOfPrunedKeysStayInTheToken) {
  SchedulePolicy policy = Policy();
  policy.max_tombstones = 4;
  FakeToken token = Started(kT0);
  absl::Time now = kT0;
  std::set<std::string> made;
  bool carried = false;
  auto pass = [&] {
    const std::vector<KeyAction> plan = PlanScope(token.Records(), policy, now);
    for (const KeyAction& a : plan) {
      carried = carried || a.event == "key_changes_carried";
    }
    token.Apply(plan);
  };
  for (int i = 0; i < 30; ++i) {
    now += absl::Minutes(1);
    const std::vector<KeyRecord> records = token.Records();
    const ScopeView view = ViewScope(records, now);
    ASSERT_GE(view.signing, 0);
    std::vector<KeyAction> revoke = *PlanRevoke(
        records, policy, records[view.signing].key_id(), "r", "a", now);
    const std::string id = absl::StrCat("revoke-", i);
    RecordChange(revoke, id, now);
    made.insert(id);
    token.Apply(revoke);
    pass();
    EXPECT_EQ(RequestIdsHeld(token), made) << "after revocation " << i;
  }
  now += policy.timings.min_publish_lead;
  pass();  // the revoked keys' private keys are destroyed
  pass();  // the tombstones beyond 4 are pruned
  EXPECT_TRUE(carried);
  EXPECT_THAT(PlanScope(token.Records(), policy, now), IsEmpty());
  EXPECT_EQ(RequestIdsHeld(token), made);
}

// A crash between any two writes of a pass that prunes a key holding a
// change loses the change's request id at no point; a change made more
// than a day before the prune is not kept.
TEST(PlanScopeTest, APruneCarriesChangesOfTheLastDayAcrossACrash) {
  SchedulePolicy policy = Policy();
  FakeToken token = Started(kT0);
  absl::Time now = kT0 + absl::Minutes(1);
  // Two revocations of the active key: an old one (its change made a
  // day and more before the prune) and a recent one.
  for (const auto& [id, made_at] :
       {std::pair<std::string, absl::Time>{"old", now - absl::Hours(30)},
        {"recent", now}}) {
    const std::vector<KeyRecord> records = token.Records();
    const ScopeView view = ViewScope(records, now);
    ASSERT_GE(view.signing, 0);
    std::vector<KeyAction> revoke = *PlanRevoke(
        records, policy, records[view.signing].key_id(), "r", "a", now);
    RecordChange(revoke, id, made_at);
    token.Apply(revoke);
    token.Apply(PlanScope(token.Records(), policy, now));
  }
  ASSERT_EQ(RequestIdsHeld(token), (std::set<std::string>{"old", "recent"}));
  // Past both revoked keys' destruction and tombstone retention.
  now += policy.timings.min_publish_lead + policy.timings.destroy_delay +
         policy.timings.tombstone_retention;
  const std::vector<KeyAction> pass = PlanScope(token.Records(), policy, now);
  int prunes = 0;
  for (const KeyAction& a : pass) {
    if (a.kind == KeyAction::Kind::kPrune) ++prunes;
  }
  ASSERT_GE(prunes, 2);
  const int writes = FakeToken(token).Apply(pass);
  for (int k = 0; k <= writes; ++k) {
    FakeToken crashed = token;
    crashed.Apply(pass, k);
    EXPECT_TRUE(RequestIdsHeld(crashed).contains("recent"))
        << "crash after " << k << " of " << writes << " writes";
    // The next pass completes it.
    crashed.Apply(PlanScope(crashed.Records(), policy, now));
    EXPECT_TRUE(RequestIdsHeld(crashed).contains("recent"));
  }
  token.Apply(pass);
  EXPECT_EQ(RequestIdsHeld(token), std::set<std::string>{"recent"});
}

// Hundreds of rotation periods on simulated time with random operator
// calls and crashes between any two token writes, checking at every step
// what relying parties and operators are promised (README, "Key
// rotation").
class ScheduleSimulation {
 public:
  explicit ScheduleSimulation(uint32_t seed) : rng_(seed) {}

  void Run(int steps, bool clock_jumps) {
    absl::Time truth = kT0;
    absl::Duration offset;  // the clock's error: clock = truth + offset
    Reconcile(truth);
    for (int step = 0; step < steps && !::testing::Test::HasFailure(); ++step) {
      const absl::Time clock = truth + offset;
      // Operators act now and then.
      const int dice = Uniform(0, 99);
      if (dice < 4) {
        Admin(clock, RotateMode::kImmediate);
      } else if (dice < 8) {
        Admin(clock, RotateMode::kPlanned);
      } else if (dice < 11) {
        Revoke(clock, /*which=*/0);
      } else if (dice < 13) {
        Revoke(clock, /*which=*/1);
      }
      if (clock_jumps && Uniform(0, 99) < 3) {
        offset = offset == absl::ZeroDuration()
                     ? -absl::Seconds(Uniform(1, 7200))
                     : absl::ZeroDuration();
      }
      // Time moves to the next boundary or the next reconcile interval,
      // whichever is first, as in the reconcile loop.
      const absl::Time next_boundary = NextScheduleChange(
          token_.Records(), Policy().timings, truth + offset);
      absl::Duration step_by = absl::Seconds(Uniform(1, 600));
      if (next_boundary - (truth + offset) < step_by) {
        step_by = next_boundary - (truth + offset);
      }
      // Sign and observe on the way.
      for (int k = 1; k <= 3; ++k) Observe(truth + step_by * k / 4, offset);
      truth += step_by;
      // Just before the reconcile at `truth`: history holds the records it
      // writes from `truth` on.
      Observe(truth - absl::Nanoseconds(1), offset);
      Reconcile(truth + offset);
    }
    // History is kept by clock time, which jumps in the other test: there
    // only the signing invariants of Observe hold.
    if (!clock_jumps) CheckTokens();
  }

  int rotations() const { return rotations_; }
  int tokens() const { return static_cast<int>(tokens_.size()); }
  // Observations at which no key could sign (after revoking an active key
  // that had no standby, or a crash before the next plan).
  int unavailable() const { return unavailable_; }

 private:
  struct Token {
    absl::Time signed_at;  // true time
    std::string key_id;
  };

  int Uniform(int lo, int hi) {
    return std::uniform_int_distribution<int>(lo, hi)(rng_);
  }

  void Reconcile(absl::Time clock) {
    token_.DestroyUnrecorded();
    std::vector<KeyAction> plan = PlanScope(token_.Records(), Policy(), clock);
    if (!plan.empty() && Uniform(0, 9) == 0) {
      // A crash somewhere in the plan, then a restart that plans again.
      token_.Apply(plan, Uniform(0, 2 * static_cast<int>(plan.size())));
      Snapshot(clock);
      token_.DestroyUnrecorded();
      plan = PlanScope(token_.Records(), Policy(), clock);
    }
    for (const KeyAction& a : plan) {
      if (a.kind == KeyAction::Kind::kDestroyPrivateKey) {
        // Never the private key of a key that still signs or is published.
        const std::vector<KeyRecord> records = token_.Records();
        const ScopeView view = ViewScope(records, clock);
        for (size_t i = 0; i < records.size(); ++i) {
          if (records[i].key_id() == a.record.key_id()) {
            EXPECT_FALSE(IsPublished(view.states[i]))
                << "destroying a published key " << a.detail;
          }
        }
      }
      if (a.event == "key_activated" &&
          a.detail.find("activates now") != std::string::npos) {
        emergency_.insert(a.record.key_id());
      }
    }
    token_.Apply(plan);
    Snapshot(clock);
    // Idempotent: applied, nothing is left to do at this instant.
    EXPECT_THAT(PlanScope(token_.Records(), Policy(), clock), IsEmpty());
  }

  void Admin(absl::Time clock, RotateMode mode) {
    absl::StatusOr<std::vector<KeyAction>> plan =
        PlanRotateNow(token_.Records(), Policy(), mode, clock);
    if (!plan.ok()) {
      // No standby yet, or the cap on published keys.
      EXPECT_EQ(plan.status().code(), absl::StatusCode::kFailedPrecondition)
          << plan.status();
      return;
    }
    if (mode == RotateMode::kImmediate) {
      emergency_.insert((*plan)[0].record.key_id());
    }
    const int crash = Uniform(0, 9) == 0 ? Uniform(0, 1) : -1;
    token_.Apply(*plan, crash);
    Snapshot(clock);
    ++rotations_;
  }

  // which: 0 the active key, 1 the standby.
  void Revoke(absl::Time clock, int which) {
    const std::vector<KeyRecord> records = token_.Records();
    const ScopeView view = ViewScope(records, clock);
    const int index = which == 0 ? view.signing : view.standby;
    if (index < 0) return;
    absl::StatusOr<std::vector<KeyAction>> plan = PlanRevoke(
        records, Policy(), records[index].key_id(), "test", "uri:admin", clock);
    ASSERT_TRUE(plan.ok()) << plan.status();
    for (const KeyAction& a : *plan) {
      if (a.event == "key_activated") emergency_.insert(a.record.key_id());
    }
    const int crash = Uniform(0, 9) == 0 ? Uniform(0, 1) : -1;
    token_.Apply(*plan, crash);
    Snapshot(clock);
  }

  // Remembers the records as of now (true time is what relying parties
  // live in; with a jumped clock the lead checks are skipped).
  void Snapshot(absl::Time clock) {
    history_.emplace_back(clock, token_.Records());
    for (const KeyRecord& r : token_.Records()) {
      // A key generated to sign at once (first key, or no standby left).
      if (TimeFromProto(r.created_at()) == TimeFromProto(r.activate_at()) &&
          r.has_activation_recorded_at()) {
        emergency_.insert(r.key_id());
      }
    }
  }

  // The records as they were at clock instant `t`.
  const std::vector<KeyRecord>& RecordsAt(absl::Time t) const {
    static const std::vector<KeyRecord> kNone;
    const std::vector<KeyRecord>* found = &kNone;
    for (const auto& [at, records] : history_) {
      if (at > t) break;
      found = &records;
    }
    return *found;
  }

  void Observe(absl::Time truth, absl::Duration offset) {
    const absl::Time clock = truth + offset;
    const std::vector<KeyRecord> records = token_.Records();
    const ScopeView view = ViewScope(records, clock);
    int active = 0;
    for (KeyState s : view.states) active += s == KeyState::kActive ? 1 : 0;
    ASSERT_LE(active, 1) << "two ACTIVE keys at " << clock;
    if (view.signing < 0) {
      ++unavailable_;
      return;
    }
    const KeyRecord& signer = records[view.signing];
    EXPECT_TRUE(token_.HasPrivateKey(signer.key_id()))
        << "generation " << signer.key_generation()
        << " signs without a private key";
    EXPECT_FALSE(signer.has_revocation());
    // No key signs after a later generation has signed, whatever the clock.
    EXPECT_GE(signer.key_generation(), newest_signed_)
        << "generation " << signer.key_generation()
        << " signs after generation " << newest_signed_ << " did, at clock "
        << clock;
    newest_signed_ = std::max(newest_signed_, signer.key_generation());
    tokens_.push_back(Token{truth, signer.key_id()});
  }

  // Every token verifies against any key set a relying party fetched
  // within 2C before it was signed, and against the set until T + S + V
  // after it was signed; unless its key was revoked, or the key was made
  // to sign at once (first key, emergencies the detail warns of).
  void CheckTokens() {
    for (const Token& token : tokens_) {
      auto published_at = [&](absl::Time t) {
        const std::vector<KeyRecord>& records = RecordsAt(t);
        const ScopeView view = ViewScope(records, t);
        for (size_t i = 0; i < records.size(); ++i) {
          if (records[i].key_id() == token.key_id) {
            return IsPublished(view.states[i]);
          }
        }
        return false;
      };
      auto revoked_by = [&](absl::Time t) {
        for (const KeyRecord& r : RecordsAt(t)) {
          if (r.key_id() == token.key_id && r.has_revocation() &&
              TimeFromProto(r.revocation().revoked_at()) <= t) {
            return true;
          }
        }
        return false;
      };
      if (!emergency_.contains(token.key_id)) {
        for (absl::Time f = token.signed_at - 2 * kC; f <= token.signed_at;
             f += kC / 2) {
          EXPECT_TRUE(published_at(f))
              << "a relying party that fetched the key set "
              << absl::FormatDuration(token.signed_at - f)
              << " before a token was signed cannot verify it (key "
              << token.key_id << ", signed at "
              << absl::FormatDuration(token.signed_at - kT0) << ")";
        }
      }
      for (absl::Duration after :
           {absl::ZeroDuration(), kT / 2, kT, kT + kS + kV}) {
        const absl::Time u = token.signed_at + after;
        if (revoked_by(u) || u > history_.back().first) continue;
        EXPECT_TRUE(published_at(u))
            << "a token's key left the key set " << absl::FormatDuration(after)
            << " after it signed";
      }
      if (::testing::Test::HasFailure()) return;
    }
  }

  std::mt19937 rng_;
  FakeToken token_;
  std::vector<std::pair<absl::Time, std::vector<KeyRecord>>> history_;
  std::vector<Token> tokens_;
  std::set<std::string> emergency_;
  uint64_t newest_signed_ = 0;
  int unavailable_ = 0;
  int rotations_ = 0;
};

TEST(ScheduleSimulationTest, HundredsOfPeriodsWithOperatorsAndCrashes) {
  for (uint32_t seed : {1u, 2u, 3u}) {
    SCOPED_TRACE(seed);
    ScheduleSimulation sim(seed);
    sim.Run(3000, /*clock_jumps=*/false);
    EXPECT_GT(sim.tokens(), 5000);
    EXPECT_GT(sim.rotations(), 50);
    EXPECT_LT(sim.unavailable(), sim.tokens() / 50);
  }
}

TEST(ScheduleSimulationTest, ClockJumpsNeverMakeAnOlderKeySign) {
  for (uint32_t seed : {11u, 12u, 13u}) {
    SCOPED_TRACE(seed);
    ScheduleSimulation sim(seed);
    sim.Run(3000, /*clock_jumps=*/true);
  }
}

}  // namespace
}  // namespace signet::rotation
