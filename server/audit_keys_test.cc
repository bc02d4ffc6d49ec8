// The audit checkpoint signer against a real SoftHSM2 token whose C_Sign can
// be made to stall: the log's writer waits for the signer, and every Append
// waits for the writer, so a stalled HSM must fail the checkpoint, not hold
// the log (docs/architecture.md, "The audit log").
#include "server/audit_keys.h"

#include <map>
#include <memory>
#include <string>
#include <thread>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "base/clock.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "rotation/reconcile.h"
#include "server/audit_log.h"
#include "server/test_audit_files.h"
#include "signet/v1/config.pb.h"
#include "tests/testing/in_process_hsm.h"

namespace signet::server {
namespace {

using ::testing::HasSubstr;

constexpr absl::Duration kSignDeadline = absl::Milliseconds(300);

class AuditKeysTest : public hsm::InProcessKeyStoreTest {
 protected:
  void SetUp() override {
    hsm::InProcessKeyStoreTest::SetUp();
    signet::v1::SignetConfig config;
    config.set_audit_key_rotation_days(30);
    rotation::KeyReconciler first_pass(
        store_.get(), {AuditKeys::Policy(config)},
        /*writer=*/true, [](const rotation::KeyEvent&) {});
    auto sets = first_pass.RunOnce(absl::Now());
    ASSERT_TRUE(sets.ok()) << sets.status();
    ASSERT_TRUE(sets->contains(AuditKeys::kScope));
    keys_ = std::make_unique<AuditKeys>(store_.get(), dir_.File("audit.log"),
                                        base::SystemClock(), kSignDeadline);
    ASSERT_TRUE(keys_->Update(sets->at(AuditKeys::kScope), absl::Now()).ok());
  }

  void TearDown() override {
    // A signature left in the HSM uses the store the fixture destroys.
    injector_->Release();
    WaitUntilNoSignatureIsOutstanding();
  }

  bool WaitUntilNoSignatureIsOutstanding() {
    const absl::Time give_up = absl::Now() + absl::Seconds(60);
    while (keys_ != nullptr && keys_->signature_outstanding()) {
      if (absl::Now() > give_up) return false;
      absl::SleepFor(absl::Milliseconds(10));
    }
    return true;
  }

  const std::string digest_ = std::string(32, '\x5a');
  audit_testing::TempDir dir_;
  std::unique_ptr<AuditKeys> keys_;
};

// A ninth outside attack: the HSM stalled while the writer signed a
// checkpoint, and every Admin call (and with them the stop) waited for as
// long as it stalled. The signer gives up at its deadline, and does not
// send a second signature into the HSM while the first is still there,
// until it is old, nor more than a few.
TEST_F(AuditKeysTest,
       AStalledHsmFailsTheSignatureAtTheDeadlineAndIsNotFlooded) {
  CheckpointSigner sign = keys_->Signer();
  absl::StatusOr<std::string> signature = sign(digest_);
  ASSERT_TRUE(signature.ok()) << signature.status();
  EXPECT_EQ(signature->size(), 64u);
  EXPECT_FALSE(keys_->signature_outstanding());

  injector_->Block("C_Sign");
  signature = sign(digest_);
  EXPECT_EQ(signature.status().code(), absl::StatusCode::kDeadlineExceeded)
      << signature.status();
  EXPECT_THAT(signature.status().message(),
              HasSubstr("did not sign the checkpoint within"));
  EXPECT_TRUE(keys_->signature_outstanding());
  EXPECT_EQ(injector_->Blocked(), 1);

  const int calls = injector_->Calls("C_Sign");
  signature = sign(digest_);
  EXPECT_EQ(signature.status().code(), absl::StatusCode::kUnavailable)
      << signature.status();
  EXPECT_THAT(signature.status().message(),
              HasSubstr("has not answered the checkpoint signature"));
  EXPECT_EQ(injector_->Calls("C_Sign"), calls) << "a second call into the HSM";

  // The held call may be on a connection that never answers: once it is
  // kRetryHeldAfterDeadlines deadlines old a new one is sent, up to
  // kMaxHeldSignatures held.
  const absl::Duration retry_after =
      kSignDeadline * AuditKeys::kRetryHeldAfterDeadlines +
      absl::Milliseconds(200);
  for (size_t held = 2; held <= AuditKeys::kMaxHeldSignatures; ++held) {
    absl::SleepFor(retry_after);
    signature = sign(digest_);
    EXPECT_EQ(signature.status().code(), absl::StatusCode::kDeadlineExceeded)
        << signature.status();
  }
  absl::SleepFor(retry_after);
  signature = sign(digest_);
  EXPECT_EQ(signature.status().code(), absl::StatusCode::kUnavailable)
      << signature.status();
  EXPECT_THAT(signature.status().message(),
              HasSubstr(absl::StrCat("(nor ", AuditKeys::kMaxHeldSignatures - 1,
                                     " before it)")));

  // The HSM answers the signatures it held; the next one is made.
  injector_->Release();
  ASSERT_TRUE(WaitUntilNoSignatureIsOutstanding());
  signature = sign(digest_);
  ASSERT_TRUE(signature.ok()) << signature.status();
  EXPECT_EQ(signature->size(), 64u);
}

// What the signer's bound buys: a checkpoint in a stalled HSM is recorded
// as failed, and the lines appended meanwhile are written after it.
TEST_F(AuditKeysTest, AnAppendWaitingBehindAStalledCheckpointIsWritten) {
  AuditLogOptions options;
  options.path = dir_.File("audit.log");
  options.sign_checkpoint = keys_->Signer();
  options.checkpoint_kid = keys_->current_kid();
  options.syslog = false;
  auto log = AuditLog::Open(options);
  ASSERT_TRUE(log.ok()) << log.status();
  AuditEvent line;
  line.event = "admin";
  line.result = "OK";
  ASSERT_TRUE((*log)->Append(line).ok());

  injector_->Block("C_Sign");
  absl::Status checkpoint;
  std::thread checkpointing([&] { checkpoint = (*log)->Checkpoint(); });
  while (injector_->Blocked() == 0) absl::SleepFor(absl::Milliseconds(1));
  // The writer is in the HSM now; this line waits for it.
  line.detail = "appended while the checkpoint was in the HSM";
  EXPECT_TRUE((*log)->Append(line).ok());
  checkpointing.join();
  EXPECT_EQ(checkpoint.code(), absl::StatusCode::kDeadlineExceeded)
      << checkpoint;

  const std::vector<std::string> lines = audit_testing::ReadLines(options.path);
  std::map<std::string, int> where;
  for (size_t i = 0; i < lines.size(); ++i) {
    const audit_testing::Json json = audit_testing::Parse(lines[i]);
    const std::string name = json.value("event", "") == "checkpoint_failed"
                                 ? "checkpoint_failed"
                                 : json.value("detail", "");
    where.emplace(name, static_cast<int>(i));
  }
  ASSERT_TRUE(where.contains("checkpoint_failed"));
  ASSERT_TRUE(where.contains("appended while the checkpoint was in the HSM"));
  EXPECT_LT(where["checkpoint_failed"],
            where["appended while the checkpoint was in the HSM"]);
  EXPECT_THAT(lines[where["checkpoint_failed"]],
              HasSubstr("\"result\":\"DEADLINE_EXCEEDED\""));
  injector_->Release();
  ASSERT_TRUE(WaitUntilNoSignatureIsOutstanding());
}

}  // namespace
}  // namespace signet::server
