#include "rotation/reconcile.h"

#include <algorithm>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/escaping.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "hsm/attributes.h"
#include "jose/jwk.h"
#include "tests/testing/in_process_hsm.h"

namespace signet::rotation {
namespace {

using ::testing::Contains;
using ::testing::HasSubstr;
using ::testing::Not;
using ::testing::SizeIs;

const absl::Time kNow = absl::FromUnixSeconds(1'800'000'000);

// The reconcile pass against a real SoftHSM2 token.
class ReconcileTest : public hsm::InProcessKeyStoreTest {
 protected:
  void SetUp() override {
    InProcessKeyStoreTest::SetUp();
    policy_.scope = "demo";
    policy_.algorithm = "ES256";
    policy_.key_spec = {hsm::SignatureAlgorithm::kEcdsaP256Sha256};
    policy_.timings.rotation_period = absl::Hours(1);
    policy_.timings.publish_grace = absl::Minutes(30);
    policy_.timings.destroy_delay = absl::Minutes(10);
    policy_.timings.min_publish_lead = absl::Minutes(11);
    policy_.timings.tombstone_retention = absl::Hours(1);
  }

  std::unique_ptr<KeyReconciler> Make(bool writer) {
    return std::make_unique<KeyReconciler>(
        store_.get(), std::vector<ScopeKeyPolicy>{policy_}, writer,
        [this](const KeyEvent& e) { events_.push_back(e.event); });
  }
  // A writer whose events' details also go to `details`, in step with
  // events_.
  std::unique_ptr<KeyReconciler> MakeWriterWithDetails(
      std::vector<std::string>* details) {
    return std::make_unique<KeyReconciler>(
        store_.get(), std::vector<ScopeKeyPolicy>{policy_}, true,
        [this, details](const KeyEvent& e) {
          events_.push_back(e.event);
          details->push_back(e.detail);
        });
  }

  ScopeKeyPolicy policy_;
  std::vector<std::string> events_;
};

TEST_F(ReconcileTest, WriterMakesTheActiveKeyAndAPublishedStandby) {
  auto reconciler = Make(/*writer=*/true);
  auto keys = reconciler->RunOnce(kNow);
  ASSERT_TRUE(keys.ok()) << keys.status();
  const ScopeKeySet& set = keys->at("demo");
  ASSERT_THAT(set.records, SizeIs(2));
  EXPECT_THAT(set.loaded, SizeIs(2));  // both checked, handles warmed
  const ScopeView view = ViewScope(set.records, kNow);
  EXPECT_EQ(set.records[view.signing].key_generation(), 1u);
  EXPECT_EQ(set.records[view.standby].key_generation(), 2u);
  EXPECT_EQ(
      set.records[view.standby].kid(),
      *jose::JwkThumbprint(
          set.loaded.at(set.records[view.standby].key_id()).public_key->get()));
  EXPECT_THAT(events_, Contains("key_generated"));
  // Idempotent: a second pass writes nothing.
  events_.clear();
  ASSERT_TRUE(reconciler->RunOnce(kNow + absl::Seconds(10)).ok());
  EXPECT_TRUE(events_.empty());
  EXPECT_THAT(*store_->ListKeyIds(), SizeIs(2));
  EXPECT_EQ(reconciler->NextBoundary(kNow),
            TimeFromProto(set.records[0].retire_at()));
}

TEST_F(ReconcileTest, ThroughARotationTheRetiredKeyStaysLoadedAndPublished) {
  auto reconciler = Make(true);
  auto first = reconciler->RunOnce(kNow);
  ASSERT_TRUE(first.ok());
  const absl::Time retire =
      TimeFromProto(first->at("demo").records[0].retire_at());
  // A restart after the retire time: a new reconciler, as after a process
  // restart (fault 1 of the single-key schedule).
  auto restarted = Make(true);
  auto after = restarted->RunOnce(retire + absl::Minutes(1));
  ASSERT_TRUE(after.ok()) << after.status();
  const ScopeKeySet& set = after->at("demo");
  ASSERT_THAT(set.records, SizeIs(3));  // gen 1 retired, 2 active, 3 standby
  EXPECT_THAT(set.loaded, SizeIs(3));
  const ScopeView view = ViewScope(set.records, retire + absl::Minutes(1));
  EXPECT_EQ(view.states[0], KeyState::kRetired);
  EXPECT_EQ(set.records[view.signing].key_generation(), 2u);
  EXPECT_EQ(set.records[view.standby].key_generation(), 3u);
  EXPECT_TRUE(set.records[view.signing].has_activation_recorded_at());
}

TEST_F(ReconcileTest, DestroysThePrivateKeyAtItsTimeAndUnloadsIt) {
  auto reconciler = Make(true);
  auto first = reconciler->RunOnce(kNow);
  ASSERT_TRUE(first.ok());
  const KeyRecord g1 = first->at("demo").records[0];
  ASSERT_TRUE(reconciler->RunOnce(TimeFromProto(g1.retire_at())).ok());
  events_.clear();
  auto later = reconciler->RunOnce(TimeFromProto(g1.destroy_at()));
  ASSERT_TRUE(later.ok()) << later.status();
  EXPECT_THAT(events_, Contains("key_destroyed"));
  EXPECT_FALSE(later->at("demo").loaded.contains(g1.key_id()));
  // The private key is gone from the token; the record stays.
  auto ids = store_->ListKeyIds();
  ASSERT_TRUE(ids.ok());
  EXPECT_THAT(*ids, Not(Contains(absl::HexStringToBytes(g1.key_id()))));
  EXPECT_TRUE(later->at("demo").records[0].private_key_destroyed());
  EXPECT_EQ(
      store_
          ->SignDigest(absl::HexStringToBytes(g1.key_id()),
                       std::string(32, 'x'), absl::Now() + absl::Seconds(5))
          .status()
          .code(),
      absl::StatusCode::kFailedPrecondition);
}

// Held to an instant before its destruction, the key stays, reported once
// however many passes hold it; then held no longer, it is destroyed.
TEST_F(ReconcileTest, ADestructionHeldBackIsReportedOnceAndDoneLater) {
  auto reconciler = Make(true);
  auto first = reconciler->RunOnce(kNow);
  ASSERT_TRUE(first.ok());
  const KeyRecord g1 = first->at("demo").records[0];
  const absl::Time destroy = TimeFromProto(g1.destroy_at());
  events_.clear();
  for (int pass = 0; pass < 3; ++pass) {
    ASSERT_TRUE(reconciler->RunOnce(destroy, destroy - absl::Seconds(1)).ok());
  }
  EXPECT_EQ(std::count(events_.begin(), events_.end(), "key_destruction_held"),
            1);
  EXPECT_THAT(events_, Not(Contains("key_destroyed")));
  auto ids = store_->ListKeyIds();
  ASSERT_TRUE(ids.ok());
  EXPECT_THAT(*ids, Contains(absl::HexStringToBytes(g1.key_id())));

  events_.clear();
  ASSERT_TRUE(reconciler->RunOnce(destroy, destroy).ok());
  EXPECT_THAT(events_, Contains("key_destroyed"));
  EXPECT_THAT(events_, Not(Contains("key_destruction_held")));
}

// A destruction the token keeps refusing (a sixth outside attack planted a
// second private key with the key's id: every pass tried, and each try was
// a key_changes line and a key_action_failed line) is retried with a
// growing wait and reported once; done once the token lets it.
TEST_F(ReconcileTest,
       AFailingDestructionIsRetriedWithAGrowingWaitReportedOnce) {
  auto reconciler = Make(true);
  auto first = reconciler->RunOnce(kNow);
  ASSERT_TRUE(first.ok());
  const KeyRecord g1 = first->at("demo").records[0];
  const absl::Time destroy = TimeFromProto(g1.destroy_at());
  ASSERT_TRUE(reconciler->RunOnce(TimeFromProto(g1.retire_at())).ok());
  events_.clear();
  injector_->Fail("C_DestroyObject", CKR_FUNCTION_FAILED, -1);
  const int before = injector_->Calls("C_DestroyObject");
  constexpr int kPasses = 20;
  for (int pass = 0; pass < kPasses; ++pass) {
    ASSERT_TRUE(reconciler->RunOnce(destroy).ok());
  }
  // Tried at passes 1, 3, 6, 11 and 20 (waits of 1, 2, 4 and 8 passes).
  EXPECT_EQ(injector_->Calls("C_DestroyObject") - before, 5);
  EXPECT_EQ(std::count(events_.begin(), events_.end(), "key_action_failed"), 1);
  EXPECT_THAT(events_, Not(Contains("key_destroyed")));

  injector_->Clear();
  for (int pass = 0; pass < 17 && std::count(events_.begin(), events_.end(),
                                             "key_destroyed") == 0;
       ++pass) {
    ASSERT_TRUE(reconciler->RunOnce(destroy).ok());
  }
  EXPECT_THAT(events_, Contains("key_destroyed"));
}

// An operator's change that fails is the operator's call to retry, not
// the next pass's, and its key_action_failed event says so (a fourteenth
// outside attack read "retried by the next pass" on a revocation that
// nothing retried).
TEST_F(ReconcileTest, AnOperatorsFailedChangeSaysTheCallRetriesIt) {
  std::vector<std::string> details;
  auto reconciler = MakeWriterWithDetails(&details);
  auto first = reconciler->RunOnce(kNow);
  ASSERT_TRUE(first.ok()) << first.status();
  const KeyRecord& active = first->at("demo").records[0];
  absl::StatusOr<std::vector<KeyAction>> revoke =
      PlanRevoke(first->at("demo").records, ScheduleOf(policy_),
                 active.key_id(), "compromised", "ops", kNow);
  ASSERT_TRUE(revoke.ok()) << revoke.status();
  events_.clear();
  details.clear();
  injector_->Fail("C_CreateObject", CKR_DEVICE_ERROR, -1);
  EXPECT_FALSE(reconciler->Apply(policy_, *revoke).ok());
  injector_->Clear();
  ASSERT_THAT(events_, Contains("key_action_failed"));
  const size_t failed =
      std::find(events_.begin(), events_.end(), "key_action_failed") -
      events_.begin();
  EXPECT_THAT(details[failed], HasSubstr("not retried by signetd"));
  EXPECT_THAT(details[failed], Not(HasSubstr("retried by the next pass")));
}

TEST_F(ReconcileTest, AKeyPairWithoutARecordIsDestroyed) {
  // A writer that stopped between generating a key and recording it.
  auto orphan = store_->GenerateKeyPair(policy_.key_spec);
  ASSERT_TRUE(orphan.ok());
  auto reconciler = Make(true);
  ASSERT_TRUE(reconciler->RunOnce(kNow).ok());
  auto ids = store_->ListKeyIds();
  ASSERT_TRUE(ids.ok());
  EXPECT_THAT(*ids, SizeIs(2));
  EXPECT_THAT(*ids, Not(Contains(*orphan)));
  EXPECT_THAT(events_, Contains("key_pruned"));
}

// A generation that failed after the token made the pair, whose clean-up
// failed too, left the pair until a restart: only a failed record write
// made the next pass look (fifth outside attack, from reading the code).
TEST_F(ReconcileTest, AFailedGenerationsLeftoverIsDestroyedByTheNextPass) {
  auto reconciler = Make(true);
  injector_->Fail("C_SignInit", CKR_FUNCTION_FAILED, 1);  // the pairwise test
  injector_->Fail("C_DestroyObject", CKR_FUNCTION_FAILED, 1);
  (void)reconciler->RunOnce(kNow);
  auto leftover = store_->ListKeyIds();
  ASSERT_TRUE(leftover.ok());
  ASSERT_THAT(*leftover, SizeIs(1));  // generated, not loaded, not destroyed
  injector_->Clear();
  events_.clear();
  auto second = reconciler->RunOnce(kNow + absl::Seconds(10));
  ASSERT_TRUE(second.ok()) << second.status();
  EXPECT_THAT(events_, Contains("key_pruned"));
  auto ids = store_->ListKeyIds();
  ASSERT_TRUE(ids.ok());
  EXPECT_THAT(*ids, SizeIs(2));  // the active key and its standby
  EXPECT_THAT(*ids, Not(Contains((*leftover)[0])));
}

TEST_F(ReconcileTest, ReplicaNeverWritesAndLoadsWhatTheWriterMade) {
  auto replica = Make(/*writer=*/false);
  auto empty = replica->RunOnce(kNow);
  ASSERT_TRUE(empty.ok());
  EXPECT_THAT(empty->at("demo").records, SizeIs(0));
  EXPECT_THAT(*store_->ListKeyIds(), SizeIs(0));
  ASSERT_TRUE(Make(true)->RunOnce(kNow).ok());
  auto seen = replica->RunOnce(kNow);
  ASSERT_TRUE(seen.ok());
  EXPECT_THAT(seen->at("demo").loaded, SizeIs(2));
}

TEST_F(ReconcileTest, ActiveKeyOfAnotherAlgorithmIsRefusedByName) {
  ASSERT_TRUE(Make(true)->RunOnce(kNow).ok());
  policy_.algorithm = "ES384";
  policy_.key_spec = {hsm::SignatureAlgorithm::kEcdsaP384Sha384};
  // The pass works (other scopes keep signing); this scope's keys are
  // unusable, each saying why.
  auto keys = Make(false)->RunOnce(kNow);
  ASSERT_TRUE(keys.ok()) << keys.status();
  const ScopeKeySet& set = keys->at("demo");
  EXPECT_THAT(set.loaded, SizeIs(0));
  ASSERT_THAT(set.unusable, SizeIs(2));
  const std::string& active = set.records[0].key_id();
  ASSERT_TRUE(set.unusable.contains(active));
  EXPECT_THAT(set.unusable.at(active), HasSubstr("rotate the scope's key"));
  EXPECT_THAT(set.unusable.at(active), HasSubstr(set.records[0].kid()));
}

// A record whose kid is not its key's thumbprint (edited by hand, say)
// would have tokens name another key: the key is unusable, saying why.
TEST_F(ReconcileTest, ARecordWhoseKidIsNotItsKeysThumbprintIsUnusable) {
  auto first = Make(true)->RunOnce(kNow);
  ASSERT_TRUE(first.ok()) << first.status();
  KeyRecord active = first->at("demo").records[0];
  const std::string wrong_kid = first->at("demo").records[1].kid();
  active.set_kid(wrong_kid);
  ASSERT_TRUE(store_
                  ->WriteRecord(absl::HexStringToBytes(active.key_id()),
                                SerializeKeyRecord(active))
                  .ok());
  auto after = Make(false)->RunOnce(kNow);
  ASSERT_TRUE(after.ok()) << after.status();
  const ScopeKeySet& set = after->at("demo");
  EXPECT_FALSE(set.loaded.contains(active.key_id()));
  ASSERT_TRUE(set.unusable.contains(active.key_id()));
  EXPECT_THAT(set.unusable.at(active.key_id()),
              HasSubstr("is not the key's RFC 7638 thumbprint"));
  EXPECT_TRUE(set.loaded.contains(set.records[1].key_id()));  // the standby
}

// Deletes `hex_key_id`'s private key from the token, as a person with the
// token's PIN could: behind the store's back.
void DeletePrivateKey(hsm::SessionPool& pool, const std::string& hex_key_id) {
  hsm::DestroyBehindTheStoresBack(pool, absl::HexStringToBytes(hex_key_id));
}

// A standby deleted from the token would activate at its time and stop the
// scope: the writer replaces it (it never signed, so revoking it breaks no
// token), in an operator's scope too; the active key is untouched.
TEST_F(ReconcileTest, AStandbyThatCannotBeLoadedIsReplaced) {
  auto reconciler = Make(true);
  auto first = reconciler->RunOnce(kNow);
  ASSERT_TRUE(first.ok()) << first.status();
  const KeyRecord active = first->at("demo").records[0];
  const KeyRecord standby = first->at("demo").records[1];
  ASSERT_NO_FATAL_FAILURE(DeletePrivateKey(*pool_, standby.key_id()));
  // Not loaded yet on this reconciler: a restarted one meets it missing.
  events_.clear();
  auto after = Make(true)->RunOnce(kNow + absl::Seconds(10));
  ASSERT_TRUE(after.ok()) << after.status();
  const ScopeKeySet& demo = after->at("demo");
  EXPECT_THAT(events_, Contains("key_revoked"));
  EXPECT_THAT(demo.unusable, SizeIs(0));
  ASSERT_THAT(demo.records, SizeIs(3));
  EXPECT_TRUE(demo.records[1].has_revocation());
  EXPECT_THAT(demo.records[1].revocation().reason(),
              HasSubstr("the standby cannot be loaded"));
  const ScopeView view = ViewScope(demo.records, kNow + absl::Seconds(10));
  ASSERT_GE(view.signing, 0);
  EXPECT_EQ(demo.records[view.signing].key_id(), active.key_id());
  ASSERT_GE(view.standby, 0);
  EXPECT_EQ(demo.records[view.standby].key_generation(), 3u);
  EXPECT_TRUE(demo.loaded.contains(demo.records[2].key_id()));
}

// A key deleted from the token behind signet's back: the next pass finds
// it gone (without searching for the keys that are there), unloads it,
// and says so once; the pass itself works, and another scope keeps its
// keys. A restarted reconciler says the same instead of failing.
TEST_F(ReconcileTest,
       AKeyDeletedBehindItsBackIsUnusableAndOtherScopesKeepTheirs) {
  ScopeKeyPolicy other = policy_;
  other.scope = "other";
  std::vector<std::string> details;
  auto make = [&](bool writer) {
    return std::make_unique<KeyReconciler>(
        store_.get(), std::vector<ScopeKeyPolicy>{policy_, other}, writer,
        [&](const KeyEvent& e) {
          events_.push_back(e.event);
          details.push_back(e.detail);
        });
  };
  auto reconciler = make(true);
  auto first = reconciler->RunOnce(kNow);
  ASSERT_TRUE(first.ok()) << first.status();
  const KeyRecord active = first->at("demo").records[0];
  ASSERT_NO_FATAL_FAILURE(DeletePrivateKey(*pool_, active.key_id()));

  events_.clear();
  details.clear();
  auto after = reconciler->RunOnce(kNow + absl::Seconds(10));
  ASSERT_TRUE(after.ok()) << after.status();
  const ScopeKeySet& demo = after->at("demo");
  EXPECT_FALSE(demo.loaded.contains(active.key_id()));
  EXPECT_THAT(demo.loaded, SizeIs(1));  // the standby
  ASSERT_TRUE(demo.unusable.contains(active.key_id()));
  EXPECT_THAT(demo.unusable.at(active.key_id()),
              HasSubstr("no private key with id"));
  EXPECT_THAT(demo.unusable.at(active.key_id()), HasSubstr(active.kid()));
  EXPECT_THAT(after->at("other").loaded, SizeIs(2));
  EXPECT_THAT(after->at("other").unusable, SizeIs(0));
  ASSERT_THAT(events_, SizeIs(1));
  EXPECT_EQ(events_[0], "key_action_failed");
  EXPECT_THAT(details[0], HasSubstr("the scope cannot sign"));
  EXPECT_EQ(
      store_
          ->SignDigest(absl::HexStringToBytes(active.key_id()),
                       std::string(32, 'x'), absl::Now() + absl::Seconds(5))
          .status()
          .code(),
      absl::StatusCode::kFailedPrecondition);

  // Once per reason, not once per pass.
  events_.clear();
  auto again = reconciler->RunOnce(kNow + absl::Seconds(20));
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_TRUE(again->at("demo").unusable.contains(active.key_id()));
  EXPECT_TRUE(events_.empty());

  // A restart: the pass works and says why the key cannot sign.
  auto restarted = make(true)->RunOnce(kNow + absl::Seconds(30));
  ASSERT_TRUE(restarted.ok()) << restarted.status();
  EXPECT_TRUE(restarted->at("demo").unusable.contains(active.key_id()));
  EXPECT_THAT(restarted->at("other").loaded, SizeIs(2));
}

// A key only signet uses (the audit checkpoint key) that vanished from the
// token is revoked by the writer, saying why, and its standby signs: an
// outside attack deleted it and signetd could never start again.
TEST_F(ReconcileTest, AnUnusableKeyOfAScopeSignetAloneUsesIsReplaced) {
  policy_.replace_unusable_keys = true;
  auto reconciler = Make(true);
  auto first = reconciler->RunOnce(kNow);
  ASSERT_TRUE(first.ok()) << first.status();
  const KeyRecord active = first->at("demo").records[0];
  const KeyRecord standby = first->at("demo").records[1];
  ASSERT_NO_FATAL_FAILURE(DeletePrivateKey(*pool_, active.key_id()));
  events_.clear();
  // A restart (a new reconciler), as after the attack.
  auto after = Make(true)->RunOnce(kNow + absl::Seconds(10));
  ASSERT_TRUE(after.ok()) << after.status();
  const ScopeKeySet& set = after->at("demo");
  EXPECT_THAT(set.unusable, SizeIs(0));
  const ScopeView view = ViewScope(set.records, kNow + absl::Seconds(10));
  ASSERT_GE(view.signing, 0);
  EXPECT_EQ(set.records[view.signing].key_id(), standby.key_id());
  EXPECT_TRUE(set.loaded.contains(standby.key_id()));
  EXPECT_TRUE(set.records[0].has_revocation());
  EXPECT_THAT(set.records[0].revocation().reason(),
              HasSubstr("cannot be loaded, replaced by signetd"));
  EXPECT_THAT(events_, Contains("key_revoked"));
  // Another scope's keys are never replaced on their own: see
  // AKeyDeletedBehindItsBackIsUnusableAndOtherScopesKeepTheirs.
}

// Both gone: each is revoked, one at a time from the records as they are
// then, and a new key signs (in either order of the two ids).
TEST_F(ReconcileTest, BothUnusableKeysOfAScopeSignetAloneUsesAreReplaced) {
  policy_.replace_unusable_keys = true;
  auto first = Make(true)->RunOnce(kNow);
  ASSERT_TRUE(first.ok()) << first.status();
  for (const KeyRecord& r : first->at("demo").records) {
    ASSERT_NO_FATAL_FAILURE(DeletePrivateKey(*pool_, r.key_id()));
  }
  auto after = Make(true)->RunOnce(kNow + absl::Seconds(10));
  ASSERT_TRUE(after.ok()) << after.status();
  const ScopeKeySet& set = after->at("demo");
  EXPECT_THAT(set.unusable, SizeIs(0));
  const ScopeView view = ViewScope(set.records, kNow + absl::Seconds(10));
  ASSERT_GE(view.signing, 0);
  EXPECT_GE(set.records[view.signing].key_generation(), 3u);
  EXPECT_TRUE(set.loaded.contains(set.records[view.signing].key_id()));
  EXPECT_TRUE(set.records[0].has_revocation());
  EXPECT_TRUE(set.records[1].has_revocation());
}

// A published key's record deleted while signetd was down (fourth outside
// attack): the restart destroyed the key pair as if a crash had left it,
// so nothing could bring the key back. Its generation had finished, so it
// is kept, neither loaded nor published, and said once.
TEST_F(ReconcileTest, AKeyPairWhoseRecordWasDeletedWhileDownIsKept) {
  std::vector<std::string> details;
  auto events = [&](const KeyEvent& e) {
    events_.push_back(e.event);
    details.push_back(e.detail);
  };
  auto first =
      KeyReconciler(store_.get(), {policy_}, true, events).RunOnce(kNow);
  ASSERT_TRUE(first.ok()) << first.status();
  const KeyRecord active = first->at("demo").records[0];
  const std::string active_id = absl::HexStringToBytes(active.key_id());
  ASSERT_NO_FATAL_FAILURE(
      hsm::DestroyBehindTheStoresBack(*pool_, active_id, CKO_DATA));
  events_.clear();
  details.clear();
  // A restart: a new reconciler, with no memory of the last pass.
  KeyReconciler restarted(store_.get(), {policy_}, true, events);
  auto after = restarted.RunOnce(kNow + absl::Seconds(10));
  ASSERT_TRUE(after.ok()) << after.status();
  EXPECT_THAT(*store_->ListKeyIds(), Contains(active_id));
  ASSERT_EQ(std::count(events_.begin(), events_.end(), "key_unrecorded_kept"),
            1);
  EXPECT_THAT(events_, Not(Contains("key_pruned")));
  EXPECT_THAT(details, Contains(HasSubstr(active.key_id())));
  const ScopeKeySet& set = after->at("demo");
  EXPECT_FALSE(set.loaded.contains(active.key_id()));
  for (const KeyRecord& r : set.records) {
    EXPECT_NE(r.key_id(), active.key_id());
  }
  // Said once per start, not once per pass.
  events_.clear();
  ASSERT_TRUE(restarted.RunOnce(kNow + absl::Seconds(20)).ok());
  EXPECT_THAT(events_, Not(Contains("key_unrecorded_kept")));
}

// A published key's record deleted behind signet's back (an outside attack):
// the planner promoted the standby at once, the old kid left the key sets
// with no grace and no line said why. The writer writes the record again
// from the last pass, loudly, and nothing else changes.
TEST_F(ReconcileTest, AVanishedRecordOfAPublishedKeyIsWrittenAgain) {
  std::vector<std::string> details;
  auto reconciler = MakeWriterWithDetails(&details);
  auto first = reconciler->RunOnce(kNow);
  ASSERT_TRUE(first.ok()) << first.status();
  const KeyRecord active = first->at("demo").records[0];
  ASSERT_NO_FATAL_FAILURE(hsm::DestroyBehindTheStoresBack(
      *pool_, absl::HexStringToBytes(active.key_id()), CKO_DATA));
  events_.clear();
  details.clear();
  auto after = reconciler->RunOnce(kNow + absl::Seconds(10));
  ASSERT_TRUE(after.ok()) << after.status();
  const ScopeKeySet& set = after->at("demo");
  ASSERT_THAT(set.records, SizeIs(2));  // no new key
  const ScopeView view = ViewScope(set.records, kNow + absl::Seconds(10));
  ASSERT_GE(view.signing, 0);
  EXPECT_EQ(set.records[view.signing].key_id(), active.key_id());
  EXPECT_TRUE(set.loaded.contains(active.key_id()));
  ASSERT_THAT(events_, SizeIs(1));
  EXPECT_EQ(events_[0], "key_record_restored");
  EXPECT_THAT(details[0], HasSubstr("vanished from the token"));
  auto stored = store_->ReadRecord(absl::HexStringToBytes(active.key_id()));
  ASSERT_TRUE(stored.ok() && stored->has_value());
}

// A record that vanishes after an operator's change is written again as
// the change left it, not as the pass before it read it: restoring the
// older record undid an immediate rotation (the standby pending again, the
// old key retired: no signing key).
TEST_F(ReconcileTest, AVanishedRecordIsRestoredAsTheLastChangeLeftIt) {
  auto reconciler = Make(/*writer=*/true);
  auto first = reconciler->RunOnce(kNow);
  ASSERT_TRUE(first.ok()) << first.status();
  const absl::Time at = kNow + absl::Seconds(5);
  absl::StatusOr<std::vector<KeyAction>> rotate =
      PlanRotateNow(first->at("demo").records, ScheduleOf(policy_),
                    RotateMode::kImmediate, at);
  ASSERT_TRUE(rotate.ok()) << rotate.status();
  ASSERT_TRUE(reconciler->Apply(policy_, *rotate).ok());
  const KeyRecord rotated_to = rotate->front().record;
  ASSERT_NO_FATAL_FAILURE(hsm::DestroyBehindTheStoresBack(
      *pool_, absl::HexStringToBytes(rotated_to.key_id()), CKO_DATA));
  events_.clear();
  auto after = reconciler->RunOnce(at + absl::Seconds(5));
  ASSERT_TRUE(after.ok()) << after.status();
  EXPECT_THAT(events_, Contains("key_record_restored"));
  const std::vector<KeyRecord>& records = after->at("demo").records;
  const ScopeView view = ViewScope(records, at + absl::Seconds(5));
  ASSERT_GE(view.signing, 0);
  EXPECT_EQ(records[view.signing].key_id(), rotated_to.key_id());
  EXPECT_EQ(TimeFromProto(records[view.signing].activate_at()), at);
}

}  // namespace
}  // namespace signet::rotation
