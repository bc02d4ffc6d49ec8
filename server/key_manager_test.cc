// The key manager's loop on simulated time, against a real SoftHSM2 token:
// a rotation happens when the clock reaches its boundary, without sleeping
// the rotation period, and the key that signs follows the schedule.
#include "server/key_manager.h"

#include <algorithm>
#include <atomic>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "base/clock.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "hsm/attributes.h"
#include "hsm/key_store.h"
#include "rotation/key_state.h"
#include "rotation/scope_keys.h"
#include "server/audit_log.h"
#include "server/config.h"
#include "server/test_audit_files.h"
#include "tests/testing/in_process_hsm.h"

namespace signet::server {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

// 2031-01-01T00:00:00Z: far from the real "now", so a key state or a time
// read off the system clock instead of the injected one shows.
const absl::Time kStart = absl::FromUnixSeconds(1'924'992'000);

constexpr char kConfig[] = R"pb(
  grpc_listen_address: "127.0.0.1:7443"
  hsm {
    module_path: "/usr/lib/x86_64-linux-gnu/pkcs11/p11-kit-client.so"
    p11_kit_server_address: "unix:path=/nonexistent/hsm.sock"
    token_uri: "pkcs11:token=signet"
    pin_file: "/nonexistent/user.pin"
  }
  scopes {
    name: "demo"
    audience_class: CONSUMER
    purpose: JWT
    issuer: "https://consumer.signet.example"
    algorithm: ES256
    rotation_period_seconds: 86400
  }
  tls {
    cert_file: "/nonexistent/server.pem"
    key_file: "/nonexistent/server.key"
    client_ca_file: "/nonexistent/ca.pem"
  }
  tenants { identity: "uri:spiffe://signet.example/tenant/demo" scopes: "demo" }
  audit_log_path: "/nonexistent/audit.log"
  # The periodic pass an hour apart on the clock: only the clock wakes it.
  reconcile_interval_seconds: 3600
)pb";

// The token through `inner`, with faults that follow the next record
// write. After `FailReadsAfterAWrite()`, every ReadAllRecords after it
// answers UNAVAILABLE: the HSM connection dropped right after an operator's
// change was written, so the pass after it cannot read the token. After
// `AfterTheNextWrite(f)`, `f` runs once right after it (on the writer's
// thread).
class FaultsAfterAWrite : public hsm::KeyStore {
 public:
  explicit FaultsAfterAWrite(hsm::KeyStore* inner) : inner_(inner) {}
  void FailReadsAfterAWrite() { armed_ = true; }
  void AfterTheNextWrite(std::function<void()> f) {
    absl::MutexLock lock(&mu_);
    after_write_ = std::move(f);
  }
  // After the next record write, every record write and read fails until
  // Heal(): the HSM went away in the middle of a change.
  void BreakAfterTheNextWrite() { break_armed_ = true; }
  // The next record write is made but its reply is lost (an error), and
  // the HSM is gone until Heal().
  void LoseTheNextWritesReply() { lose_reply_armed_ = true; }
  void Heal() { broken_ = false; }

  absl::StatusOr<std::string> GenerateKeyPair(
      const hsm::KeySpec& spec) override {
    if (generations_fail_) {
      return absl::UnavailableError("injected: C_GenerateKeyPair failed");
    }
    return inner_->GenerateKeyPair(spec);
  }
  void FailGenerations(bool fail) { generations_fail_ = fail; }
  absl::StatusOr<hsm::LoadedKey> LoadKey(
      absl::string_view key_id, const hsm::KeySpec& expected) override {
    return inner_->LoadKey(key_id, expected);
  }
  absl::StatusOr<std::string> SignDigest(absl::string_view key_id,
                                         absl::string_view digest,
                                         absl::Time deadline) override {
    return inner_->SignDigest(key_id, digest, deadline);
  }
  std::vector<absl::StatusOr<std::string>> SignDigests(
      absl::string_view key_id, absl::Span<const std::string> digests,
      absl::Time deadline) override {
    return inner_->SignDigests(key_id, digests, deadline);
  }
  absl::StatusOr<std::vector<std::string>> ListKeyIds() override {
    return inner_->ListKeyIds();
  }
  absl::StatusOr<std::vector<std::string>> ListUnfinishedGenerations()
      override {
    return inner_->ListUnfinishedGenerations();
  }
  absl::StatusOr<std::vector<std::string>> LoadedKeysUnusable() override {
    return inner_->LoadedKeysUnusable();
  }
  absl::Status DestroyKeyPair(absl::string_view key_id) override {
    return inner_->DestroyKeyPair(key_id);
  }
  absl::Status DestroyPrivateKey(absl::string_view key_id) override {
    return inner_->DestroyPrivateKey(key_id);
  }
  void UnloadKey(absl::string_view key_id) override {
    inner_->UnloadKey(key_id);
  }
  absl::StatusOr<uint64_t> WriteRecord(absl::string_view key_id,
                                       absl::string_view bytes) override {
    if (broken_) return absl::UnavailableError("injected: the HSM is gone");
    if (writes_refused_) {
      return absl::UnavailableError(
          "injected: C_CreateObject(record): CKR_DEVICE_MEMORY");
    }
    absl::StatusOr<uint64_t> written = inner_->WriteRecord(key_id, bytes);
    if (lose_reply_armed_.exchange(false)) {
      broken_ = true;
      return absl::UnavailableError("injected: the write's reply was lost");
    }
    if (armed_) reads_fail_ = true;
    if (break_armed_.exchange(false)) broken_ = true;
    std::function<void()> after;
    {
      absl::MutexLock lock(&mu_);
      after = std::exchange(after_write_, nullptr);
    }
    if (after) after();
    return written;
  }
  absl::StatusOr<std::optional<hsm::StoredRecord>> ReadRecord(
      absl::string_view key_id) override {
    return inner_->ReadRecord(key_id);
  }
  absl::StatusOr<std::map<std::string, hsm::StoredRecord>> ReadAllRecords()
      override {
    if (reads_fail_ || broken_) {
      return absl::UnavailableError("injected: the HSM connection dropped");
    }
    return inner_->ReadAllRecords();
  }
  absl::Status CheckWritable() override {
    if (writes_refused_) {
      return absl::UnavailableError(
          "injected: C_CreateObject(write check): CKR_DEVICE_MEMORY");
    }
    return inner_->CheckWritable();
  }
  // The token takes no writes (a full or read-only token), reads work.
  void RefuseWrites(bool refuse) { writes_refused_ = refuse; }

 private:
  hsm::KeyStore* const inner_;
  std::atomic<bool> armed_ = false;
  std::atomic<bool> reads_fail_ = false;
  std::atomic<bool> break_armed_ = false;
  std::atomic<bool> lose_reply_armed_ = false;
  std::atomic<bool> generations_fail_ = false;
  std::atomic<bool> broken_ = false;
  std::atomic<bool> writes_refused_ = false;
  absl::Mutex mu_;
  std::function<void()> after_write_ ABSL_GUARDED_BY(mu_);
};

class KeyManagerTest : public hsm::InProcessKeyStoreTest {
 protected:
  void SetUp() override {
    InProcessKeyStoreTest::SetUp();
    auto config = ParseConfig(kConfig);
    ASSERT_TRUE(config.ok()) << config.status();
    config_ = *std::move(config);
    AuditLogOptions audit_options;
    audit_options.path = dir_.File("audit.log");
    audit_options.syslog = false;
    audit_options.clock = &clock_;
    auto audit = AuditLog::Open(std::move(audit_options));
    ASSERT_TRUE(audit.ok()) << audit.status();
    audit_ = *std::move(audit);
  }

  std::unique_ptr<KeyManager> Make(hsm::KeyStore* store = nullptr) {
    return std::make_unique<KeyManager>(store != nullptr ? store : store_.get(),
                                        config_, audit_.get(), clock_,
                                        [this](const ScopeKeysMap& scopes) {
                                          absl::MutexLock lock(&mu_);
                                          published_ = scopes;
                                          ++passes_published_;
                                        });
  }

  // The generation of the key scope "demo" signs with now.
  uint64_t DemoSigningGeneration(const KeyManager& keys) {
    return keys.Scopes()
        .at("demo")
        ->SigningAt(clock_.Now())
        ->record.key_generation();
  }

  // Make(store), its first pass and its loop started.
  std::unique_ptr<KeyManager> Started(hsm::KeyStore* store) {
    std::unique_ptr<KeyManager> keys = Make(store);
    const absl::Status first = keys->Start();
    EXPECT_TRUE(first.ok()) << first;
    keys->StartLoop();
    return keys;
  }

  // The generation of the key that signs in the scopes `on_keys` last
  // handed over, once it is `generation`; waits for it (bounded in real
  // time: the clock has already moved).
  bool WaitForSigningGeneration(uint64_t generation) {
    auto reached = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
      if (!published_) return false;
      auto signing = published_->at("demo")->SigningAt(clock_.Now());
      return signing != nullptr &&
             signing->record.key_generation() == generation;
    };
    absl::MutexLock lock(&mu_);
    return mu_.AwaitWithTimeout(absl::Condition(&reached), absl::Seconds(60));
  }

  int PassesPublished() {
    absl::MutexLock lock(&mu_);
    return passes_published_;
  }

  base::SimulatedClock clock_{kStart};
  audit_testing::TempDir dir_;
  signet::v1::SignetConfig config_;
  std::unique_ptr<AuditLog> audit_;
  absl::Mutex mu_;
  std::optional<ScopeKeysMap> published_ ABSL_GUARDED_BY(mu_);
  int passes_published_ ABSL_GUARDED_BY(mu_) = 0;
};

TEST_F(KeyManagerTest, TheSigningKeyFollowsTheInjectedClockThroughARotation) {
  std::unique_ptr<KeyManager> keys = Make();
  ASSERT_TRUE(keys->Start().ok());
  // The first pass ran at the clock's time, not the system's.
  EXPECT_EQ(keys->LastPass().at, kStart);
  const ScopeKeys& first = *keys->Scopes().at("demo");
  std::shared_ptr<const ScopeState> signing = first.SigningAt(kStart);
  ASSERT_NE(signing, nullptr);
  EXPECT_EQ(signing->record.key_generation(), 1u);
  const rotation::KeyRecord* standby = first.StandbyAt(kStart);
  ASSERT_NE(standby, nullptr);
  EXPECT_EQ(standby->key_generation(), 2u);
  const absl::Time takes_over = rotation::TimeFromProto(standby->activate_at());
  EXPECT_EQ(takes_over - kStart, absl::Hours(24));
  const std::string standby_kid = standby->kid();

  keys->StartLoop();
  // Real time passes; the clock does not, so nothing is due: no pass.
  absl::SleepFor(absl::Milliseconds(200));
  EXPECT_EQ(PassesPublished(), 0);

  // The clock reaches the boundary: the loop wakes, and the standby signs.
  clock_.SetTime(takes_over);
  ASSERT_TRUE(WaitForSigningGeneration(2));
  const ScopeKeys& after = *keys->Scopes().at("demo");
  EXPECT_EQ(after.SigningAt(clock_.Now())->record.kid(), standby_kid);
  // Its successor is made and published ahead of it.
  const rotation::KeyRecord* next = after.StandbyAt(clock_.Now());
  ASSERT_NE(next, nullptr);
  EXPECT_EQ(next->key_generation(), 3u);
  // The pass is reported once its keys are handed on (just after this
  // test's callback saw them).
  const absl::Time give_up = absl::Now() + absl::Seconds(10);
  while (keys->LastPass().at < takes_over && absl::Now() < give_up) {
    absl::SleepFor(absl::Milliseconds(1));
  }
  EXPECT_GE(keys->LastPass().at, takes_over);
  EXPECT_TRUE(keys->Stop(absl::Seconds(30)));
  // The audit log's lines carry the clock's time too.
  audit_.reset();  // closed: every line is on disk
  EXPECT_THAT(audit_testing::ReadFile(dir_.File("audit.log")),
              HasSubstr("\"time\":\"2031-01-02T00:00:00"));
}

// An immediate rotation of scope "demo" with `request_id` and `deadline`,
// waited for; its answer's status.
absl::Status RotateNow(KeyManager& keys, const std::string& request_id,
                       base::MonotonicDeadline deadline,
                       KeyManager::OnTurn on_turn = {}) {
  signet::v1::RotateKeyRequest request;
  request.set_scope("demo");
  request.set_mode(signet::v1::IMMEDIATE);
  request.set_request_id(request_id);
  absl::Notification answered;
  absl::Status status = absl::UnknownError("no answer in 30 s");
  keys.RotateKey(
      request, "uri:admin", deadline,
      [&](absl::StatusOr<signet::v1::RotateKeyResponse> r) {
        status = r.status();
        answered.Notify();
      },
      std::move(on_turn));
  (void)answered.WaitForNotificationWithTimeout(absl::Seconds(30));
  return status;
}

// Calls `call` with a callback for its answer and waits for it (UNKNOWN
// when none came within 30 s). The answer is shared with the callback,
// which may still come after a timeout.
template <typename Response>
absl::StatusOr<Response> AwaitAnswer(
    const std::function<void(std::function<void(absl::StatusOr<Response>)>)>&
        call) {
  struct Answer {
    absl::Notification answered;
    absl::StatusOr<Response> response;
  };
  auto answer = std::make_shared<Answer>();
  call([answer](absl::StatusOr<Response> r) {
    answer->response = std::move(r);
    answer->answered.Notify();
  });
  if (!answer->answered.WaitForNotificationWithTimeout(absl::Seconds(30))) {
    return absl::UnknownError("no answer in 30 s");
  }
  return answer->response;
}

// A revocation in scope "demo" of `kid` with `request_id`, waited for.
absl::StatusOr<signet::v1::RevokeKeyResponse> Revoke(
    KeyManager& keys, const std::string& kid, const std::string& request_id) {
  signet::v1::RevokeKeyRequest request;
  request.set_scope("demo");
  request.set_kid(kid);
  request.set_reason("drill");
  request.set_request_id(request_id);
  return AwaitAnswer<signet::v1::RevokeKeyResponse>([&](auto done) {
    keys.RevokeKey(request, "uri:admin", base::MonotonicDeadline::Never(),
                   std::move(done));
  });
}

// A rotation of scope "demo" in `mode` with `request_id`, waited for.
absl::StatusOr<signet::v1::RotateKeyResponse> Rotate(
    KeyManager& keys, signet::v1::RotateMode mode,
    const std::string& request_id) {
  signet::v1::RotateKeyRequest request;
  request.set_scope("demo");
  request.set_mode(mode);
  request.set_request_id(request_id);
  return AwaitAnswer<signet::v1::RotateKeyResponse>([&](auto done) {
    keys.RotateKey(request, "uri:admin", base::MonotonicDeadline::Never(),
                   std::move(done));
  });
}

// An operator's revocation written, then the HSM connection dropped before
// the pass after it could read the token: the revoked key signed thousands
// more tokens and stayed published until a pass succeeded (a seventh
// outside attack). What was written takes effect at once all the same.
TEST_F(KeyManagerTest, ARevocationTakesEffectWhenThePassAfterItFails) {
  FaultsAfterAWrite store(store_.get());
  std::unique_ptr<KeyManager> keys = Started(&store);
  const std::string revoked =
      keys->Scopes().at("demo")->SigningAt(clock_.Now())->record.kid();
  store.FailReadsAfterAWrite();
  const absl::Status status =
      Revoke(*keys, revoked, "revoke-then-the-hsm-drops").status();
  ASSERT_TRUE(status.ok()) << status;
  EXPECT_FALSE(keys->LastPass().status.ok());  // the pass did fail
  // What signs here, and what the publisher was handed (the key sets).
  auto expect_revoked_gone = [&](const ScopeKeysMap& scopes) {
    const ScopeKeys& demo = *scopes.at("demo");
    std::shared_ptr<const ScopeState> signing = demo.SigningAt(clock_.Now());
    ASSERT_NE(signing, nullptr);  // the standby took over
    EXPECT_NE(signing->record.kid(), revoked);
    for (const auto& published : demo.PublishedAt(clock_.Now())) {
      EXPECT_NE(published->record.kid(), revoked);
    }
  };
  expect_revoked_gone(keys->Scopes());
  std::optional<ScopeKeysMap> published;
  {
    absl::MutexLock lock(&mu_);
    published = published_;
  }
  ASSERT_TRUE(published.has_value()) << "nothing was handed on";
  expect_revoked_gone(*published);
  EXPECT_TRUE(keys->Stop(absl::Seconds(30)));
}

// An eighth outside attack revoked the active key and killed the HSM
// 15-35 ms later: the revocation was written but the standby's activation
// was not. The call was answered "not completed" although the key was
// revoked, and the scope had no signing key until the next interval's
// pass (10 s). A change whose recorded write is made is answered as made,
// with a warning, and the loop completes it as soon as the HSM answers.
TEST_F(KeyManagerTest, ARevocationCutShortIsAnsweredMadeAndCompletedPromptly) {
  FaultsAfterAWrite store(store_.get());
  std::unique_ptr<KeyManager> keys = Started(&store);
  const std::string revoked =
      keys->Scopes().at("demo")->SigningAt(clock_.Now())->record.kid();
  store.BreakAfterTheNextWrite();
  const absl::StatusOr<signet::v1::RevokeKeyResponse> response =
      Revoke(*keys, revoked, "revoke-as-the-hsm-dies");
  ASSERT_TRUE(response.ok()) << response.status();
  EXPECT_EQ(response->revoked_kid(), revoked);
  EXPECT_THAT(response->warning(),
              HasSubstr("the change is made, but the last 1 of its 2 token "
                        "write(s) were not"));
  // The HSM is back; the simulated clock does not move, so only a pass
  // the loop asked for itself completes the change (the interval is an
  // hour).
  store.Heal();
  std::shared_ptr<const ScopeState> signing;
  for (int i = 0; i < 300 && signing == nullptr; ++i) {
    signing = keys->Scopes().at("demo")->SigningAt(clock_.Now());
    if (signing == nullptr) absl::SleepFor(absl::Milliseconds(100));
  }
  ASSERT_NE(signing, nullptr) << "no signing key 30 s after the HSM came back";
  EXPECT_NE(signing->record.kid(), revoked);
  EXPECT_TRUE(keys->Stop(absl::Seconds(30)));
}

// The same attack's variant: a standby that could not be made, then the
// active key revoked. The answer said nothing of the scope having no
// signing key now.
TEST_F(KeyManagerTest, RevokingTheSigningKeyWithNoStandbySaysSo) {
  FaultsAfterAWrite store(store_.get());
  std::unique_ptr<KeyManager> keys = Started(&store);
  const std::shared_ptr<const ScopeKeys> demo = keys->Scopes().at("demo");
  const std::string active = demo->SigningAt(clock_.Now())->record.kid();
  ASSERT_NE(demo->StandbyAt(clock_.Now()), nullptr);
  const std::string standby = demo->StandbyAt(clock_.Now())->kid();
  store.FailGenerations(true);  // no new standby after this revocation
  auto first = Revoke(*keys, standby, "revoke-the-standby");
  ASSERT_TRUE(first.ok()) << first.status();
  EXPECT_EQ(first->warning(), "");
  ASSERT_EQ(keys->Scopes().at("demo")->StandbyAt(clock_.Now()), nullptr);
  auto second = Revoke(*keys, active, "revoke-the-signing-key");
  ASSERT_TRUE(second.ok()) << second.status();
  EXPECT_EQ(second->active_kid(), "");
  EXPECT_THAT(second->warning(),
              HasSubstr("no standby could take over: the scope signs again "
                        "once signetd has made"));
  store.FailGenerations(false);
  EXPECT_TRUE(keys->Stop(absl::Seconds(30)));
}

// Every line of the audit log in `dir` (whose current segment is
// "audit.log"), closed segments first, parsed.
std::vector<audit_testing::Json> AuditLines(const audit_testing::TempDir& dir) {
  std::vector<std::string> closed;
  for (const auto& entry : std::filesystem::directory_iterator(dir.path())) {
    const std::string name = entry.path().filename().string();
    if (absl::StartsWith(name, "audit.log.") && name.size() == 30) {
      closed.push_back(entry.path().string());
    }
  }
  std::sort(closed.begin(), closed.end());
  closed.push_back(dir.File("audit.log"));
  std::vector<audit_testing::Json> lines;
  for (const std::string& segment : closed) {
    for (const std::string& line : audit_testing::ReadLines(segment)) {
      lines.push_back(audit_testing::Parse(line));
    }
  }
  return lines;
}

// A change's "key_changes" line is written before the token is; the audit
// log then broke (a full disk) before the change's own events were: they
// were lost, and the log said a change was starting but never what it did.
// They are kept and written, marked late, once the log can be written.
TEST_F(KeyManagerTest, EventsTheAuditLogCouldNotTakeAreWrittenLater) {
  // Room in the log, so the token's files (a few KB each) stay under the
  // file size limit that breaks it.
  for (int i = 0; i < 200; ++i) {
    AuditEvent filler;
    filler.event = "sign";
    filler.detail = std::string(200, 'x');
    ASSERT_TRUE(audit_->Append(filler).ok());
  }
  FaultsAfterAWrite store(store_.get());
  std::unique_ptr<KeyManager> keys = Started(&store);
  const std::string revoked =
      keys->Scopes().at("demo")->SigningAt(clock_.Now())->record.kid();
  std::optional<audit_testing::FileSizeLimit> full;
  const uintmax_t log_size = std::filesystem::file_size(dir_.File("audit.log"));
  store.AfterTheNextWrite([&] { full.emplace(log_size); });
  const absl::Status status =
      Revoke(*keys, revoked, "revoke-while-the-disk-fills").status();
  ASSERT_TRUE(status.ok()) << status;
  ASSERT_TRUE(full.has_value()) << "the revocation wrote no record";
  full.reset();  // room again: the log starts a new segment
  auto revoked_line = [&]() -> std::optional<audit_testing::Json> {
    for (const audit_testing::Json& line : AuditLines(dir_)) {
      if (line.is_object() && line.value("event", "") == "key_revoked" &&
          line.value("kid", "") == revoked) {
        return line;
      }
    }
    return std::nullopt;
  };
  std::optional<audit_testing::Json> line;
  for (int i = 0; i < 300 && !(line = revoked_line()); ++i) {
    absl::SleepFor(absl::Milliseconds(100));
  }
  ASSERT_TRUE(line.has_value()) << "no key_revoked line in 30 s";
  EXPECT_EQ(line->value("caller", ""), "uri:admin");
  EXPECT_THAT(line->value("detail", ""),
              HasSubstr("written late: the audit log could not be written"));
  EXPECT_TRUE(keys->Stop(absl::Seconds(30)));
}

// An outside attack stalled the HSM and rotated three times: each call
// answered DEADLINE_EXCEEDED, and all three rotations were applied when the
// HSM came back. A change whose turn comes after its call's deadline is not
// applied.
TEST_F(KeyManagerTest, AChangePastItsCallsDeadlineIsNotApplied) {
  std::unique_ptr<KeyManager> keys = Make();
  ASSERT_TRUE(keys->Start().ok());
  keys->StartLoop();
  const uint64_t before = DemoSigningGeneration(*keys);
  absl::Status status =
      RotateNow(*keys, "rotate-after-the-caller-gave-up",
                base::MonotonicDeadline::In(-absl::Milliseconds(1)));
  EXPECT_EQ(status.code(), absl::StatusCode::kDeadlineExceeded) << status;
  EXPECT_THAT(std::string(status.message()), HasSubstr("nothing was changed"));
  EXPECT_EQ(DemoSigningGeneration(*keys), before);
  // The same request id with time left applies it (it was never recorded).
  status = RotateNow(*keys, "rotate-after-the-caller-gave-up",
                     base::MonotonicDeadline::Never());
  EXPECT_TRUE(status.ok()) << status;
}

// A twelfth review: a change whose call the watchdog had already answered
// as never started ("so it is not made") could still start, and one marked
// started just before the key manager refused it was answered "may still be
// applied". The turn is taken only if the call was not answered first, and
// only once the change is about to be made.
TEST_F(KeyManagerTest, AChangeWhoseCallWasAnsweredFirstIsNotApplied) {
  std::unique_ptr<KeyManager> keys = Make();
  ASSERT_TRUE(keys->Start().ok());
  keys->StartLoop();
  const uint64_t before = DemoSigningGeneration(*keys);
  absl::Status status =
      RotateNow(*keys, "rotate-answered-first",
                base::MonotonicDeadline::Never(), [] { return false; });
  EXPECT_EQ(status.code(), absl::StatusCode::kDeadlineExceeded) << status;
  EXPECT_THAT(std::string(status.message()),
              HasSubstr("answered before this change's turn came"));
  EXPECT_EQ(DemoSigningGeneration(*keys), before);
  // Past its deadline, the turn is never taken.
  bool turn_taken = false;
  status = RotateNow(*keys, "rotate-answered-first",
                     base::MonotonicDeadline::In(-absl::Milliseconds(1)),
                     [&] { return turn_taken = true; });
  EXPECT_EQ(status.code(), absl::StatusCode::kDeadlineExceeded) << status;
  EXPECT_FALSE(turn_taken);
  status = RotateNow(*keys, "rotate-answered-first",
                     base::MonotonicDeadline::Never(),
                     [&] { return turn_taken = true; });
  EXPECT_TRUE(status.ok()) << status;
  EXPECT_TRUE(turn_taken);
  EXPECT_NE(DemoSigningGeneration(*keys), before);
  EXPECT_TRUE(keys->Stop(absl::Seconds(30)));
}

// A twelfth outside attack received tokens signed with a revoked key after
// its revocation was answered, and thousands signed while it was written.
// The key is out of service (KeyManager::revoked, which the Signer checks)
// from before its revocation record is written, and back in service when
// that write fails (the revocation is not made).
TEST_F(KeyManagerTest, ARevokedKeyIsOutOfServiceFromBeforeItsRecordIsWritten) {
  std::unique_ptr<KeyManager> keys = Make();
  ASSERT_TRUE(keys->Start().ok());
  keys->StartLoop();
  const rotation::KeyRecord active =
      keys->Scopes().at("demo")->SigningAt(clock_.Now())->record;
  EXPECT_FALSE(keys->revoked()->Contains(active.key_id()));
  injector_->Fail("C_CreateObject", CKR_DEVICE_ERROR, -1);
  const absl::Status failed =
      Revoke(*keys, active.kid(), "revoke-not-written").status();
  injector_->Clear();
  EXPECT_FALSE(failed.ok());
  EXPECT_FALSE(keys->revoked()->Contains(active.key_id()));
  injector_->Block("C_CreateObject");
  std::thread revoking(
      [&] { (void)Revoke(*keys, active.kid(), "revoke-held-in-its-write"); });
  bool out_of_service = false;
  for (int i = 0; i < 400 && !out_of_service; ++i) {
    absl::SleepFor(absl::Milliseconds(25));
    out_of_service = keys->revoked()->Contains(active.key_id());
  }
  EXPECT_TRUE(out_of_service);
  injector_->Release();
  revoking.join();
  EXPECT_TRUE(keys->revoked()->Contains(active.key_id()));
  EXPECT_NE(DemoSigningGeneration(*keys), active.key_generation());
  EXPECT_TRUE(keys->Stop(absl::Seconds(30)));
}

// A thirteenth outside attack: revoking the active key refused every call
// of its scope (the revoked key was still the one served) until the pass
// after the change had made the next standby, seconds for an RSA-4096 key,
// long after the successor's activation was written. What a change wrote
// is served at once, before that pass.
TEST_F(KeyManagerTest,
       ARevokedKeysSuccessorIsServedBeforeTheNextStandbyIsMade) {
  std::unique_ptr<KeyManager> keys = Make();
  ASSERT_TRUE(keys->Start().ok());
  keys->StartLoop();
  const rotation::KeyRecord active =
      keys->Scopes().at("demo")->SigningAt(clock_.Now())->record;
  injector_->Block("C_GenerateKeyPair");
  std::thread revoking([&] {
    const absl::Status revoked =
        Revoke(*keys, active.kid(), "revoke-before-the-standby").status();
    EXPECT_TRUE(revoked.ok()) << revoked;
  });
  for (int i = 0; i < 400 && injector_->Blocked() == 0; ++i) {
    absl::SleepFor(absl::Milliseconds(25));
  }
  ASSERT_GT(injector_->Blocked(), 0);
  // The successor is served while the next standby's generation is held.
  std::shared_ptr<const ScopeState> signing =
      keys->Scopes().at("demo")->SigningAt(clock_.Now());
  ASSERT_NE(signing, nullptr);
  EXPECT_EQ(signing->record.key_generation(), active.key_generation() + 1);
  injector_->Release();
  revoking.join();
  EXPECT_EQ(DemoSigningGeneration(*keys), active.key_generation() + 1);
  EXPECT_TRUE(keys->Stop(absl::Seconds(30)));
}

// A review: a revocation whose write was made but whose reply was lost
// put the key back in service, and the retry that learned it was made did
// not take it out again. It stays out until a pass reads the records.
TEST_F(KeyManagerTest, ARevocationWhoseWriteReplyWasLostKeepsTheKeyOut) {
  FaultsAfterAWrite store(store_.get());
  std::unique_ptr<KeyManager> keys = Started(&store);
  const rotation::KeyRecord active =
      keys->Scopes().at("demo")->SigningAt(clock_.Now())->record;
  store.LoseTheNextWritesReply();
  const absl::Status lost =
      Revoke(*keys, active.kid(), "revoke-reply-lost").status();
  EXPECT_EQ(lost.code(), absl::StatusCode::kUnavailable) << lost;
  EXPECT_THAT(std::string(lost.message()), HasSubstr("not known to be"));
  EXPECT_TRUE(keys->revoked()->Contains(active.key_id()));
  store.Heal();
  const absl::Status retried =
      Revoke(*keys, active.kid(), "revoke-reply-lost").status();
  EXPECT_TRUE(retried.ok()) << retried;
  EXPECT_TRUE(keys->revoked()->Contains(active.key_id()));
  EXPECT_NE(DemoSigningGeneration(*keys), active.key_generation());
  EXPECT_TRUE(keys->Stop(absl::Seconds(30)));
}

// An eleventh outside attack: one HSM connection stuck (a p11-kit child
// stopped) held the loop in one call for as long as it stayed stuck, and
// every key change, a revocation too, waited behind it while health and
// status said all was well. The loop says how long it has been held.
TEST_F(KeyManagerTest, ALoopHeldInOneHsmCallSaysForHowLong) {
  std::unique_ptr<KeyManager> keys = Make();
  ASSERT_TRUE(keys->Start().ok());
  keys->StartLoop();
  EXPECT_TRUE(keys->LoopCondition(absl::ZeroDuration()).ok());
  injector_->Block("C_FindObjects");
  keys->RequestPass();
  absl::Status held;
  for (int i = 0; i < 400 && held.ok(); ++i) {
    absl::SleepFor(absl::Milliseconds(25));
    held = keys->LoopCondition(absl::ZeroDuration());
  }
  EXPECT_EQ(held.code(), absl::StatusCode::kUnavailable) << held;
  EXPECT_THAT(std::string(held.message()),
              HasSubstr("the key manager has been on one change or pass for"));
  // Not past a longer threshold.
  EXPECT_TRUE(keys->LoopCondition(absl::Hours(1)).ok());
  injector_->Release();
  absl::Status after = held;
  for (int i = 0; i < 400 && !after.ok(); ++i) {
    absl::SleepFor(absl::Milliseconds(25));
    after = keys->LoopCondition(absl::ZeroDuration());
  }
  EXPECT_TRUE(after.ok()) << after;
}

// An outside attack killed the HSM during a rotation and was answered with
// the bare PKCS#11 error: it could not tell whether the change was made. A
// change whose records cannot be read says this call wrote nothing, and is
// made by the same request once the HSM answers.
TEST_F(KeyManagerTest, AChangeWhoseRecordsCannotBeReadSaysItIsNotMade) {
  std::unique_ptr<KeyManager> keys = Make();
  ASSERT_TRUE(keys->Start().ok());
  keys->StartLoop();
  const uint64_t before = DemoSigningGeneration(*keys);
  injector_->Fail("C_FindObjects", CKR_DEVICE_ERROR, -1);
  absl::Status status = RotateNow(*keys, "rotate-while-the-hsm-is-gone",
                                  base::MonotonicDeadline::Never());
  injector_->Clear();
  EXPECT_FALSE(status.ok());
  // The request id could not be looked up: this call wrote nothing, but
  // "not made" would not be true of an earlier call with the same id.
  EXPECT_THAT(std::string(status.message()),
              HasSubstr("this call wrote nothing"));
  EXPECT_THAT(std::string(status.message()), HasSubstr("CKR_DEVICE_ERROR"));
  EXPECT_EQ(DemoSigningGeneration(*keys), before);
  // The same request once the HSM is back (its connection may take a
  // moment to be made again).
  for (int i = 0; i < 60 && !status.ok(); ++i) {
    absl::SleepFor(absl::Milliseconds(500));
    status = RotateNow(*keys, "rotate-while-the-hsm-is-gone",
                       base::MonotonicDeadline::Never());
  }
  ASSERT_TRUE(status.ok()) << status;
  EXPECT_EQ(DemoSigningGeneration(*keys), before + 1);
}

// An outside attack deleted a standby's private key and rotated: the
// rotation made the broken standby sign, and the scope stopped. Now the
// next pass replaces a standby that cannot be loaded (it never signed), so
// a rotation after it moves to a key that signs.
TEST_F(KeyManagerTest, AStandbyThatCannotBeLoadedIsReplacedBeforeItCanSign) {
  std::unique_ptr<KeyManager> keys = Make();
  ASSERT_TRUE(keys->Start().ok());
  const rotation::KeyRecord standby =
      *keys->Scopes().at("demo")->StandbyAt(kStart);
  ASSERT_NO_FATAL_FAILURE(hsm::DestroyBehindTheStoresBack(
      *pool_, absl::HexStringToBytes(standby.key_id())));
  keys->StartLoop();
  keys->RequestPass();
  std::optional<rotation::KeyRecord> next;
  for (int i = 0; i < 200; ++i) {
    const ScopeKeysMap scopes = keys->Scopes();
    const rotation::KeyRecord* now = scopes.at("demo")->StandbyAt(clock_.Now());
    if (now != nullptr) next = *now;
    if (next && next->key_id() != standby.key_id()) break;
    absl::SleepFor(absl::Milliseconds(50));
  }
  ASSERT_TRUE(next.has_value());
  ASSERT_NE(next->key_id(), standby.key_id());
  EXPECT_EQ(next->key_generation(), 3u);
  EXPECT_THAT(audit_testing::ReadFile(dir_.File("audit.log")),
              HasSubstr("the standby cannot be loaded, replaced by signetd"));
  const absl::Status status = RotateNow(*keys, "rotate-after-the-replacement",
                                        base::MonotonicDeadline::Never());
  ASSERT_TRUE(status.ok()) << status;
  std::shared_ptr<const ScopeState> signing =
      keys->Scopes().at("demo")->SigningAt(clock_.Now());
  ASSERT_NE(signing, nullptr);
  EXPECT_EQ(signing->record.key_generation(), 3u);
}

// The wall clock set forward two months while signetd runs: the schedule
// moves on (new keys sign), but generation 1, whose prune the wall clock
// says is long due, is neither destroyed nor pruned: that waits until the
// time has really passed, and the hold is audited.
TEST_F(KeyManagerTest, AWallClockSetForwardDoesNotDestroyKeysUntilTimePasses) {
  std::unique_ptr<KeyManager> keys = Make();
  ASSERT_TRUE(keys->Start().ok());
  const rotation::KeyRecord first =
      keys->Scopes().at("demo")->SigningAt(kStart)->record;
  keys->StartLoop();
  auto pass_at = [&](absl::Time t) {
    const absl::Time give_up = absl::Now() + absl::Seconds(60);
    while (keys->LastPass().at < t && absl::Now() < give_up) {
      absl::SleepFor(absl::Milliseconds(5));
    }
    return keys->LastPass().at >= t;
  };
  auto record_of_first = [&]() -> std::optional<rotation::KeyRecord> {
    auto stored = store_->ReadAllRecords();
    EXPECT_TRUE(stored.ok()) << stored.status();
    if (!stored.ok()) return std::nullopt;
    for (const auto& [id, r] : rotation::ParseRecords(*stored)) {
      if (r.key_id() == first.key_id()) return r;
    }
    return std::nullopt;
  };

  clock_.StepWall(absl::Hours(24 * 60));
  ASSERT_TRUE(pass_at(clock_.Now()));
  ASSERT_TRUE(WaitForSigningGeneration(3));  // the schedule went on
  std::optional<rotation::KeyRecord> kept = record_of_first();
  ASSERT_TRUE(kept.has_value()) << "generation 1 was pruned";
  EXPECT_FALSE(kept->private_key_destroyed());
  std::string log = audit_testing::ReadFile(dir_.File("audit.log"));
  EXPECT_THAT(log, HasSubstr("\"event\":\"key_destruction_held\""));
  EXPECT_THAT(log, Not(HasSubstr("key_pruned")));
  EXPECT_THAT(log, Not(HasSubstr("key_destroyed")));

  // Two months really pass: now it is pruned.
  clock_.Advance(absl::Hours(24 * 60));
  ASSERT_TRUE(pass_at(clock_.Now()));
  EXPECT_FALSE(record_of_first().has_value());
  log = audit_testing::ReadFile(dir_.File("audit.log"));
  EXPECT_THAT(log, HasSubstr("key_pruned"));
  EXPECT_TRUE(keys->Stop(absl::Seconds(30)));
}

// A revocation retried after a restart, once the revoked key's record has
// been pruned: the request id went with the record, so the retry was
// answered as an unknown kid (and a rotation's retry was applied again: a
// fourteenth outside attack). The pass that prunes the record keeps its
// change in the scope's newest record, and the retry is answered as the
// first time.
TEST_F(KeyManagerTest, ARetryAfterARestartIsRecognizedOnceItsKeyIsPruned) {
  // Tombstones kept ten minutes, so the revoked key is pruned within the
  // day its change is kept for.
  config_.mutable_scopes(0)->set_tombstone_retention_seconds(600);
  const std::string request_id = "revoke-then-restart";
  std::string revoked_kid;
  std::string revoked_id;
  signet::v1::RevokeKeyResponse first;
  auto held = [&](const std::string& key_id) {
    auto stored = store_->ReadAllRecords();
    EXPECT_TRUE(stored.ok()) << stored.status();
    if (!stored.ok()) return false;
    for (const auto& [id, r] : rotation::ParseRecords(*stored)) {
      if (r.key_id() == key_id) return true;
    }
    return false;
  };
  {
    std::unique_ptr<KeyManager> keys = Started(store_.get());
    const rotation::KeyRecord& signing =
        keys->Scopes().at("demo")->SigningAt(clock_.Now())->record;
    revoked_kid = signing.kid();
    revoked_id = signing.key_id();
    ASSERT_TRUE(held(revoked_id));
    absl::StatusOr<signet::v1::RevokeKeyResponse> answer =
        Revoke(*keys, revoked_kid, request_id);
    ASSERT_TRUE(answer.ok()) << answer.status();
    first = *answer;
    // Time passes, ten minutes at a time, until the key is pruned.
    const absl::Time revoked_at = clock_.Now();
    while (held(revoked_id) && clock_.Now() - revoked_at < absl::Hours(12)) {
      clock_.Advance(absl::Minutes(10));
      keys->RequestPass();  // no boundary may be due: a pass all the same
      const absl::Time give_up = absl::Now() + absl::Seconds(60);
      while (keys->LastPass().at < clock_.Now() && absl::Now() < give_up) {
        absl::SleepFor(absl::Milliseconds(5));
      }
      ASSERT_GE(keys->LastPass().at, clock_.Now());
    }
    ASSERT_FALSE(held(revoked_id)) << "the revoked key was not pruned";
    EXPECT_TRUE(keys->Stop(absl::Seconds(30)));
  }
  // A restart: nothing in memory.
  std::unique_ptr<KeyManager> keys = Started(store_.get());
  absl::StatusOr<signet::v1::RevokeKeyResponse> retried =
      Revoke(*keys, revoked_kid, request_id);
  ASSERT_TRUE(retried.ok()) << retried.status();
  EXPECT_EQ(retried->SerializeAsString(), first.SerializeAsString());
  // The id for another request is still refused.
  const std::string other_kid =
      keys->Scopes().at("demo")->SigningAt(clock_.Now())->record.kid();
  absl::StatusOr<signet::v1::RevokeKeyResponse> reused =
      Revoke(*keys, other_kid, request_id);
  EXPECT_EQ(reused.status().code(), absl::StatusCode::kInvalidArgument)
      << reused.status();
  EXPECT_TRUE(keys->Stop(absl::Seconds(30)));
  audit_.reset();
  EXPECT_THAT(audit_testing::ReadFile(dir_.File("audit.log")),
              HasSubstr("\"event\":\"key_changes_carried\""));
}

// Five planned rotations write their request ids into the same standby's
// record, which keeps the newest 4: the first one's id was pushed out, and
// after a restart its retry rotated again (a sixteenth outside attack,
// against the README's promise). The id pushed out stays in the record's
// carried changes, and the retry is answered as the first time.
TEST_F(KeyManagerTest, ARetryAfterARestartIsRecognizedWhenItsRecordTookNewer) {
  std::vector<signet::v1::RotateKeyResponse> first;
  {
    std::unique_ptr<KeyManager> keys = Started(store_.get());
    for (int i = 1; i <= 5; ++i) {
      absl::StatusOr<signet::v1::RotateKeyResponse> answer =
          Rotate(*keys, signet::v1::PLANNED, absl::StrCat("planned-", i));
      ASSERT_TRUE(answer.ok()) << answer.status();
      first.push_back(*answer);
    }
    ASSERT_TRUE(
        Rotate(*keys, signet::v1::IMMEDIATE, "immediate-1").status().ok());
    EXPECT_TRUE(keys->Stop(absl::Seconds(30)));
  }
  std::unique_ptr<KeyManager> keys = Started(store_.get());
  const std::string active_before =
      keys->Scopes().at("demo")->SigningAt(clock_.Now())->record.kid();
  for (int i = 1; i <= 5; ++i) {
    absl::StatusOr<signet::v1::RotateKeyResponse> retried =
        Rotate(*keys, signet::v1::PLANNED, absl::StrCat("planned-", i));
    ASSERT_TRUE(retried.ok()) << retried.status();
    EXPECT_EQ(retried->SerializeAsString(), first[i - 1].SerializeAsString())
        << "planned-" << i << " was applied again";
  }
  EXPECT_EQ(keys->Scopes().at("demo")->SigningAt(clock_.Now())->record.kid(),
            active_before);
  EXPECT_TRUE(keys->Stop(absl::Seconds(30)));
}

// A token that stops taking writes while nothing is due: before, it
// showed only when a rotation or revocation failed, hours or days later.
// The check after a pass says so within kTokenWriteCheckInterval, audited
// once, and clears at the first pass after the token takes writes again.
TEST_F(KeyManagerTest, ATokenThatTakesNoWritesIsReportedBeforeAnyWriteIsDue) {
  FaultsAfterAWrite faults(store_.get());
  std::unique_ptr<KeyManager> keys = Started(&faults);
  EXPECT_EQ(keys->TokenWriteProblem(), "");
  auto pass_after = [&](absl::Duration step) {
    clock_.Advance(step);
    keys->RequestPass();
    const absl::Time give_up = absl::Now() + absl::Seconds(60);
    while (keys->LastPass().at < clock_.Now() && absl::Now() < give_up) {
      absl::SleepFor(absl::Milliseconds(5));
    }
    return keys->LastPass().at >= clock_.Now() && keys->LastPass().status.ok();
  };
  faults.RefuseWrites(true);
  // Not yet due: the last check passed less than the interval ago.
  ASSERT_TRUE(pass_after(absl::Seconds(10)));
  EXPECT_EQ(keys->TokenWriteProblem(), "");
  ASSERT_TRUE(pass_after(KeyManager::kTokenWriteCheckInterval));
  const std::string problem = keys->TokenWriteProblem();
  EXPECT_THAT(problem, HasSubstr("the HSM token takes no writes (since "));
  EXPECT_THAT(problem, HasSubstr("CKR_DEVICE_MEMORY"));
  // Checked after every pass while it fails; said once.
  ASSERT_TRUE(pass_after(absl::Seconds(10)));
  EXPECT_EQ(keys->TokenWriteProblem(), problem);
  faults.RefuseWrites(false);
  ASSERT_TRUE(pass_after(absl::Seconds(10)));
  EXPECT_EQ(keys->TokenWriteProblem(), "");
  EXPECT_TRUE(keys->Stop(absl::Seconds(30)));
  audit_.reset();
  const std::string log = audit_testing::ReadFile(dir_.File("audit.log"));
  const std::vector<std::string> parts =
      absl::StrSplit(log, "\"event\":\"token_unwritable\"");
  EXPECT_EQ(parts.size(), 2u);  // one line
  EXPECT_THAT(log, HasSubstr("\"event\":\"token_writable_again\""));
}

}  // namespace
}  // namespace signet::server
