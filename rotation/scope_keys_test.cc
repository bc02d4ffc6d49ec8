#include "rotation/scope_keys.h"

#include <memory>

#include "absl/strings/escaping.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "hsm/test_hsm.h"
#include "jose/jwk.h"

namespace signet::rotation {
namespace {

using ::testing::HasSubstr;
using ::testing::SizeIs;

const absl::Time kNow = absl::FromUnixSeconds(1'800'000'000);

class ScopeKeysTest : public hsm::InProcessKeyStoreTest {
 protected:
  void SetUp() override {
    InProcessKeyStoreTest::SetUp();
    policy_.scope = "demo-consumer";
    policy_.algorithm = "ES256";
    policy_.key_spec = {hsm::SignatureAlgorithm::kEcdsaP256Sha256};
  }

  std::map<std::string, KeyRecord> Records() {
    auto stored = store_->ReadAllRecords();
    EXPECT_TRUE(stored.ok()) << stored.status();
    return ParseRecords(*stored);
  }

  ScopeKeyPolicy policy_;
};

TEST_F(ScopeKeysTest, CreatesAnActiveKeyOnceAndReusesItAfterwards) {
  auto first = EnsureActiveKey(*store_, policy_, Records(), kNow, true);
  ASSERT_TRUE(first.ok()) << first.status();
  EXPECT_EQ(first->record.scope(), "demo-consumer");
  EXPECT_EQ(first->record.key_generation(), 1u);
  EXPECT_EQ(first->record.kid(),
            *jose::JwkThumbprint(first->key.public_key->get()));
  EXPECT_EQ(StateAt(first->record, kNow), KeyState::kActive);

  // A restart (fresh records read from the token) finds the same key.
  auto again = EnsureActiveKey(*store_, policy_, Records(), kNow, true);
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_EQ(again->key.key_id, first->key.key_id);
  EXPECT_EQ(again->record.kid(), first->record.kid());
  EXPECT_EQ(*jose::JwkThumbprint(again->key.public_key->get()),
            first->record.kid());
  EXPECT_THAT(*store_->ListKeyIds(), SizeIs(1));
}

TEST_F(ScopeKeysTest, ScopesDoNotShareKeys) {
  auto consumer = EnsureActiveKey(*store_, policy_, Records(), kNow, true);
  ASSERT_TRUE(consumer.ok());
  ScopeKeyPolicy enterprise = policy_;
  enterprise.scope = "demo-enterprise";
  auto ent = EnsureActiveKey(*store_, enterprise, Records(), kNow, true);
  ASSERT_TRUE(ent.ok());
  EXPECT_NE(ent->key.key_id, consumer->key.key_id);
  EXPECT_EQ(ent->record.scope(), "demo-enterprise");
}

TEST_F(ScopeKeysTest, AReaderReplicaNeverCreatesKeys) {
  auto none = EnsureActiveKey(*store_, policy_, Records(), kNow, false);
  EXPECT_EQ(none.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(none.status().message(), HasSubstr("does not create keys"));
  EXPECT_THAT(*store_->ListKeyIds(), SizeIs(0));
}

TEST_F(ScopeKeysTest, AnExpiredKeyIsReplacedByTheNextGeneration) {
  auto first = EnsureActiveKey(*store_, policy_, Records(), kNow, true);
  ASSERT_TRUE(first.ok());
  const absl::Time later = kNow + policy_.timings.rotation_period;
  auto next = EnsureActiveKey(*store_, policy_, Records(), later, true);
  ASSERT_TRUE(next.ok()) << next.status();
  EXPECT_NE(next->key.key_id, first->key.key_id);
  EXPECT_EQ(next->record.key_generation(), 2u);
}

TEST_F(ScopeKeysTest, AnAlgorithmChangeInConfigurationIsRefused) {
  ASSERT_TRUE(EnsureActiveKey(*store_, policy_, Records(), kNow, true).ok());
  ScopeKeyPolicy p384 = policy_;
  p384.algorithm = "ES384";
  p384.key_spec = {hsm::SignatureAlgorithm::kEcdsaP384Sha384};
  auto refused = EnsureActiveKey(*store_, p384, Records(), kNow, true);
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(refused.status().message(), HasSubstr("ES384"));
}

TEST_F(ScopeKeysTest, AnActiveKeyThatFailsItsChecksIsRefusedNotReplaced) {
  auto first = EnsureActiveKey(*store_, policy_, Records(), kNow, true);
  ASSERT_TRUE(first.ok());
  injector_->OverrideBool(CKA_NEVER_EXTRACTABLE, false);
  auto refused = EnsureActiveKey(*store_, policy_, Records(), kNow, true);
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(refused.status().message(), HasSubstr("CKA_NEVER_EXTRACTABLE"));
  EXPECT_THAT(*store_->ListKeyIds(), SizeIs(1));
}

TEST_F(ScopeKeysTest, RecordsThatDoNotDescribeTheirKeyAreIgnored) {
  auto first = EnsureActiveKey(*store_, policy_, Records(), kNow, true);
  ASSERT_TRUE(first.ok());
  KeyRecord forged = first->record;
  forged.set_key_id("00ff");  // claims another key than the one it is beside
  std::map<std::string, hsm::StoredRecord> stored = {
      {first->key.key_id, {1, SerializeKeyRecord(forged)}},
      {std::string("\x01\x02", 2), {1, "not a record"}}};
  int unreadable = 0;
  EXPECT_THAT(ParseRecords(stored, &unreadable), SizeIs(0));
  EXPECT_EQ(unreadable, 2);
}

}  // namespace
}  // namespace signet::rotation
