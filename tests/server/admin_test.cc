// The Admin service and signetctl's operators' commands, end to end: a real
// signetd on a real token behind `p11-kit server`, mTLS gRPC over loopback,
// a schedule of seconds. Operators rotate and revoke while a tenant signs
// and signet's verifier (caching the key set as Cache-Control says,
// refetching an unknown kid at most once an hour) verifies every token.
#include <grpcpp/grpcpp.h>
#include <signal.h>
#include <sys/stat.h>

#include <atomic>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/cleanup/cleanup.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "client/verifier.h"
#include "crypto/digest.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "signet/v1/admin.grpc.pb.h"
#include "signet/v1/signer.grpc.pb.h"
#include "tests/testing/http_get.h"
#include "tests/testing/process.h"
#include "tests/testing/signetd_process.h"
#include "tests/testing/test_bed.h"

namespace signet {
namespace {

using ::testing::AllOf;
using ::testing::Contains;
using ::testing::HasSubstr;
using ::testing::Not;
using testing::SignetdOptions;
using testing::SignetdProcess;

constexpr absl::Duration kStartTimeout = absl::Seconds(90);
constexpr char kIssuer[] = "http://127.0.0.1/ops";
constexpr char kTenant[] = "spiffe://signet.test/tenant/idp";
constexpr char kAdmin[] = "spiffe://signet.test/admin/ops";

class AdminTest : public ::testing::Test {
 protected:
  void SetUp() override {
    signal(SIGPIPE, SIG_IGN);
    auto bed = testing::SignetTestBed::Create();
    ASSERT_TRUE(bed.ok()) << bed.status();
    bed_ = std::move(*bed);
    auto tenant =
        bed_->ca().Issue("idp", {.uri_sans = {kTenant}, .eku = "clientAuth"});
    ASSERT_TRUE(tenant.ok()) << tenant.status();
    tenant_ = *tenant;
    auto admin =
        bed_->ca().Issue("ops", {.uri_sans = {kAdmin}, .eku = "clientAuth"});
    ASSERT_TRUE(admin.ok()) << admin.status();
    admin_ = *admin;
    audit_dir_ = bed_->token().dir() + "/audit";
    mkdir(audit_dir_.c_str(), 0700);
    StartSignetd();
  }

  // Starts (or, after a stop, restarts) signetd on the same token and log.
  void StartSignetd() {
    SignetdOptions options;
    options.binary = SIGNETD_BINARY;
    // P = 60 s: no automatic rotation during a test; L = 3 s.
    options.config_text = absl::StrCat(
        "grpc_listen_address: \"127.0.0.1:0\"\n", bed_->HsmConfig(),
        "scopes { name: \"ops\" audience_class: CONSUMER purpose: JWT issuer: "
        "\"",
        kIssuer,
        "\" algorithm: ES256 max_token_lifetime_seconds: 60 "
        "rotation_period_seconds: 60 min_publish_lead_seconds: 3 "
        "publish_grace_seconds: 130 }\n",
        bed_->TlsConfig(), "tenants { identity: \"uri:", kTenant,
        "\" scopes: \"ops\" }\n", "admins: \"uri:", kAdmin, "\"\n",
        "audit_log_path: \"", audit_dir_, "/audit.log\"\n",
        "http { listen_address: \"127.0.0.1:0\" public_base_url: "
        "\"http://127.0.0.1\" cache_max_age_seconds: 1 }\n",
        "serving { iat_skew_seconds: 5 }\n",
        "allow_short_key_schedules: true\n",
        "reconcile_interval_seconds: 1\nkey_refresh_interval_seconds: 1\n",
        extra_config_);
    auto signetd = SignetdProcess::Start(bed_->token().dir(), options);
    ASSERT_TRUE(signetd.ok()) << signetd.status();
    signetd_ = std::move(*signetd);
    ASSERT_TRUE(signetd_->WaitForOutput("signetd ready", kStartTimeout).ok())
        << signetd_->Output();
    auto port = signetd_->WaitForPort(kStartTimeout);
    ASSERT_TRUE(port.ok());
    port_ = *port;
    auto http = signetd_->WaitForHttpPort(kStartTimeout);
    ASSERT_TRUE(http.ok());
    http_port_ = *http;
  }

  std::shared_ptr<grpc::Channel> Channel(const testing::TestCa::Issued& who) {
    grpc::SslCredentialsOptions ssl;
    ssl.pem_root_certs = bed_->ca().cert_pem();
    ssl.pem_private_key = who.key_pem;
    ssl.pem_cert_chain = who.cert_pem;
    return grpc::CreateChannel(absl::StrCat("localhost:", port_),
                               grpc::SslCredentials(ssl));
  }
  std::unique_ptr<v1::Admin::Stub> AdminStub() {
    return v1::Admin::NewStub(Channel(admin_));
  }

  static void Deadline(grpc::ClientContext& ctx) {
    ctx.set_deadline(std::chrono::system_clock::now() +
                     std::chrono::seconds(20));
  }

  v1::ListKeysResponse Keys() {
    auto stub = AdminStub();
    grpc::ClientContext ctx;
    Deadline(ctx);
    v1::ListKeysRequest req;
    req.set_scope("ops");
    v1::ListKeysResponse resp;
    grpc::Status st = stub->ListKeys(&ctx, req, &resp);
    EXPECT_TRUE(st.ok()) << st.error_message();
    return resp;
  }
  std::string KidIn(const v1::ListKeysResponse& keys, absl::string_view state,
                    bool standby = false) {
    for (const v1::KeyInfo& k : keys.keys()) {
      if (k.state() == state && k.standby() == standby) return k.kid();
    }
    return "";
  }

  // SIGTERMs signetd while the HSM is stalled and expects it to exit; then
  // resumes the HSM and waits for the call `caller` makes on `ctx` to be
  // answered (`answered`), cancelling it if it never is. Whether it was.
  bool StopWhileStalled(absl::Notification& answered, grpc::ClientContext& ctx,
                        std::thread& caller) {
    EXPECT_EQ(kill(signetd_->pid(), SIGTERM), 0);
    const absl::StatusOr<int> code = signetd_->WaitExit(absl::Seconds(60));
    EXPECT_TRUE(bed_->hsm().Resume().ok());
    const bool heard =
        answered.WaitForNotificationWithTimeout(absl::Seconds(60));
    if (!heard) ctx.TryCancel();
    caller.join();
    EXPECT_TRUE(code.ok()) << code.status() << "\n" << signetd_->Output();
    return heard && code.ok();
  }

  std::string AuditLog() const {
    std::ifstream in(audit_dir_ + "/audit.log");
    std::stringstream buf;
    buf << in.rdbuf();
    return buf.str();
  }

  // Signs and verifies continuously on a thread until Stop().
  class Load {
   public:
    Load(AdminTest* test) : test_(test) {
      VerifierOptions options;
      options.issuers = {
          {kIssuer, absl::StrCat("http://127.0.0.1:", test->http_port_,
                                 "/scopes/ops/.well-known/jwks.json")}};
      options.min_refetch_interval = absl::Hours(1);
      auto verifier = Verifier::Create(options);
      EXPECT_TRUE(verifier.ok()) << verifier.status();
      verifier_ = std::move(*verifier);
      stub_ = v1::Signer::NewStub(test->Channel(test->tenant_));
      thread_ = std::thread([this] { Run(); });
    }
    void Stop() {
      stop_ = true;
      thread_.join();
    }
    int tokens() const { return tokens_; }
    std::vector<std::string> failures() {
      absl::MutexLock lock(&mu_);
      return failures_;
    }
    std::vector<std::string> kids() {
      absl::MutexLock lock(&mu_);
      return kids_;
    }

   private:
    void Run() {
      while (!stop_) {
        grpc::ClientContext ctx;
        Deadline(ctx);
        v1::SignJwtRequest req;
        req.set_scope("ops");
        const int64_t now = absl::ToUnixSeconds(absl::Now());
        req.set_claims_json(absl::StrCat("{\"iss\":\"", kIssuer, "\",\"iat\":",
                                         now, ",\"exp\":", now + 60, "}"));
        v1::SignJwtResponse resp;
        grpc::Status st = stub_->SignJwt(&ctx, req, &resp);
        absl::MutexLock lock(&mu_);
        if (!st.ok()) {
          failures_.push_back(absl::StrCat("sign: ", st.error_message()));
          continue;
        }
        ++tokens_;
        if (kids_.empty() || kids_.back() != resp.kid())
          kids_.push_back(resp.kid());
        auto verified = verifier_->Verify(resp.jws());
        if (!verified.ok()) {
          failures_.push_back(
              absl::StrCat("verify: ", verified.status().ToString()));
        }
        absl::SleepFor(absl::Milliseconds(10));
      }
    }
    AdminTest* test_;
    std::unique_ptr<Verifier> verifier_;
    std::unique_ptr<v1::Signer::Stub> stub_;
    std::thread thread_;
    std::atomic<bool> stop_{false};
    std::atomic<int> tokens_{0};
    absl::Mutex mu_;
    std::vector<std::string> failures_;
    std::vector<std::string> kids_;
  };

  testing::RunResult Ctl(std::vector<std::string> args,
                         const testing::TestCa::Issued* who = nullptr,
                         std::string target = "") {
    if (who == nullptr) who = &admin_;
    testing::SpawnOptions options;
    options.argv = {SIGNETCTL_BINARY};
    options.argv.insert(options.argv.end(), args.begin(), args.end());
    options.env = {
        {"SIGNET_TARGET",
         target.empty() ? absl::StrCat("localhost:", port_) : target},
        {"SIGNET_CA", bed_->ca().cert_path()},
        {"SIGNET_CERT", who->cert_path},
        {"SIGNET_KEY", who->key_path}};
    auto ran = testing::RunProcess(options, absl::Seconds(60));
    EXPECT_TRUE(ran.ok()) << ran.status();
    return ran.ok() ? *ran : testing::RunResult{};
  }

  // Appended to the configuration at the next StartSignetd.
  std::string extra_config_;
  std::unique_ptr<testing::SignetTestBed> bed_;
  testing::TestCa::Issued tenant_;
  testing::TestCa::Issued admin_;
  std::string audit_dir_;
  std::unique_ptr<SignetdProcess> signetd_;
  int port_ = 0;
  int http_port_ = 0;
};

TEST_F(AdminTest, ATenantCallingAdminIsDeniedAndAudited) {
  auto stub = v1::Admin::NewStub(Channel(tenant_));
  grpc::ClientContext ctx;
  Deadline(ctx);
  v1::ListScopesResponse resp;
  grpc::Status st = stub->ListScopes(&ctx, v1::ListScopesRequest(), &resp);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::PERMISSION_DENIED);
  EXPECT_THAT(st.error_message(), HasSubstr("is not an admin"));
  EXPECT_EQ(resp.scopes_size(), 0);
  // A mutation too, and nothing changed.
  const std::string active = KidIn(Keys(), "ACTIVE");
  grpc::ClientContext rctx;
  Deadline(rctx);
  v1::RevokeKeyRequest revoke;
  revoke.set_scope("ops");
  revoke.set_kid(active);
  revoke.set_reason("not mine to revoke");
  revoke.set_request_id("tenant-1");
  v1::RevokeKeyResponse rresp;
  EXPECT_EQ(stub->RevokeKey(&rctx, revoke, &rresp).error_code(),
            grpc::StatusCode::PERMISSION_DENIED);
  EXPECT_EQ(KidIn(Keys(), "ACTIVE"), active);
  const std::string audit = AuditLog();
  EXPECT_THAT(audit, HasSubstr("Admin/ListScopes"));
  EXPECT_THAT(audit, HasSubstr("Admin/RevokeKey"));
  // A call without a scope has no "scope" member (it had "\"\"").
  for (absl::string_view line : absl::StrSplit(audit, '\n')) {
    if (absl::StrContains(line, "Admin/ListScopes")) {
      EXPECT_FALSE(absl::StrContains(line, "\"scope\":")) << line;
    }
  }
  EXPECT_THAT(audit, HasSubstr(absl::StrCat("uri:", kTenant)));
}

TEST_F(AdminTest, ListsScopesKeysAndStatus) {
  auto stub = AdminStub();
  grpc::ClientContext ctx;
  Deadline(ctx);
  v1::ListScopesResponse scopes;
  ASSERT_TRUE(stub->ListScopes(&ctx, v1::ListScopesRequest(), &scopes).ok());
  ASSERT_EQ(scopes.scopes_size(), 1);
  const v1::ScopeSummary& s = scopes.scopes(0);
  EXPECT_EQ(s.name(), "ops");
  EXPECT_EQ(s.audience_class(), "CONSUMER");
  EXPECT_EQ(s.algorithm(), "ES256");
  EXPECT_FALSE(s.active_kid().empty());
  EXPECT_FALSE(s.standby_kid().empty());
  EXPECT_EQ(s.next_transition(), "standby activates");
  const v1::ListKeysResponse keys = Keys();
  ASSERT_EQ(keys.keys_size(), 2);
  EXPECT_EQ(keys.keys(0).kid(), s.active_kid());
  EXPECT_EQ(keys.keys(0).state(), "ACTIVE");
  EXPECT_EQ(keys.keys(1).kid(), s.standby_kid());
  EXPECT_EQ(keys.keys(1).state(), "PENDING");
  EXPECT_TRUE(keys.keys(1).standby());
  EXPECT_EQ(keys.keys(1).activate_at(), keys.keys(0).retire_at());
  grpc::ClientContext sctx;
  Deadline(sctx);
  v1::GetStatusResponse status;
  ASSERT_TRUE(stub->GetStatus(&sctx, v1::GetStatusRequest(), &status).ok());
  EXPECT_TRUE(status.hsm_reachable()) << status.hsm_detail();
  EXPECT_TRUE(status.audit_writable());
  EXPECT_TRUE(status.key_writer());
  EXPECT_TRUE(status.last_reconcile_error().empty());
  ASSERT_EQ(status.scopes_size(), 1);
  EXPECT_TRUE(status.scopes(0).serving());
  EXPECT_EQ(status.scopes(0).standby_kid(), s.standby_kid());
  // Every admin call is audited with the admin's identity.
  EXPECT_THAT(AuditLog(), HasSubstr(absl::StrCat("uri:", kAdmin)));
  // Unknown scope: NOT_FOUND; a bad name: INVALID_ARGUMENT.
  for (auto [scope, code] :
       std::vector<std::pair<std::string, grpc::StatusCode>>{
           {"nope", grpc::StatusCode::NOT_FOUND},
           {"Bad Name", grpc::StatusCode::INVALID_ARGUMENT}}) {
    grpc::ClientContext kctx;
    Deadline(kctx);
    v1::ListKeysRequest req;
    req.set_scope(scope);
    v1::ListKeysResponse resp;
    EXPECT_EQ(stub->ListKeys(&kctx, req, &resp).error_code(), code) << scope;
  }
}

// Fifth outside attack: with the HSM stalled, `signetctl status` said each
// scope was SERVING while health said NOT_SERVING; and three immediate
// rotations that had answered DEADLINE_EXCEEDED were all applied once the
// HSM came back.
TEST_F(AdminTest, AStalledHsmShowsInStatusAndAChangePastItsDeadlineIsNotMade) {
  auto stub = AdminStub();
  ASSERT_TRUE(bed_->hsm().Stall().ok());
  v1::GetStatusResponse status;
  const absl::Time give_up = absl::Now() + absl::Seconds(30);
  do {
    absl::SleepFor(absl::Milliseconds(200));
    grpc::ClientContext sctx;
    Deadline(sctx);
    status.Clear();
    ASSERT_TRUE(stub->GetStatus(&sctx, v1::GetStatusRequest(), &status).ok());
  } while (status.hsm_reachable() && absl::Now() < give_up);
  EXPECT_FALSE(status.hsm_reachable());
  ASSERT_EQ(status.scopes_size(), 1);
  EXPECT_FALSE(status.scopes(0).serving());  // as health says

  grpc::ClientContext rctx;
  rctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(2));
  v1::RotateKeyRequest rotate;
  rotate.set_scope("ops");
  rotate.set_mode(v1::IMMEDIATE);
  rotate.set_request_id("rotate-behind-a-stalled-hsm");
  v1::RotateKeyResponse rotated;
  grpc::Status st = stub->RotateKey(&rctx, rotate, &rotated);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED)
      << st.error_message();
  ASSERT_TRUE(bed_->hsm().Resume().ok());
  // Its outcome audited: refused, nothing changed (DEADLINE_EXCEEDED when
  // its turn, or the end of its wait for the HSM, came after its deadline;
  // UNAVAILABLE if the stalled HSM answered its read with an error first).
  // Never applied. When the deadline came first, signetd answered the call
  // itself (audited, saying what a retry learns); the outcome is on a line
  // of its own, before that one (when both came at the deadline) or after
  // it (marked "after the call was answered").
  std::vector<std::string> answered;
  std::string outcome;   // the last line that is not the watchdog's
  std::string watchdog;  // signetd's own answer at the deadline, if any
  auto settled = [&] { return !outcome.empty(); };
  for (int i = 0; i < 300 && !settled(); ++i) {
    answered.clear();
    outcome.clear();
    watchdog.clear();
    for (absl::string_view line : absl::StrSplit(AuditLog(), '\n')) {
      if (!absl::StrContains(line, "Admin/RotateKey")) continue;
      answered.emplace_back(line);
      (absl::StrContains(line, "did not finish before the call's") ||
               absl::StrContains(line, "was still queued behind")
           ? watchdog
           : outcome) = std::string(line);
    }
    if (!settled()) absl::SleepFor(absl::Milliseconds(100));
  }
  ASSERT_TRUE(settled()) << absl::StrJoin(answered, "\n");
  EXPECT_THAT(outcome, ::testing::AnyOf(HasSubstr("nothing was changed"),
                                        HasSubstr("UNAVAILABLE")))
      << absl::StrJoin(answered, "\n");
  // The outcome names the call's request_id, so retries tie to it.
  EXPECT_THAT(outcome,
              HasSubstr(R"((request_id \"rotate-behind-a-stalled-hsm\"))"));
  if (!watchdog.empty()) {
    EXPECT_THAT(watchdog, HasSubstr("same request_id"));
  }
  for (const std::string& line : answered) {
    EXPECT_THAT(line, Not(HasSubstr("\"result\":\"OK\"")));
  }
  // No key event of the admin's (a change's lines carry the admin).
  for (absl::string_view line : absl::StrSplit(AuditLog(), '\n')) {
    EXPECT_FALSE(absl::StrContains(
                     line, absl::StrCat("\"caller\":\"uri:", kAdmin, "\"")) &&
                 absl::StrContains(line, "\"event\":\"key_"))
        << line;
  }
}

// An eleventh outside attack: one HSM connection stuck held the key
// manager's pass in one call for as long as it stayed stuck; every key
// change, a revocation of a compromised key too, waited behind it and was
// answered at its deadline "health says which" while health and status
// said all was well. Status now shows the held pass, and a change is
// refused at once (this call changed nothing) until the pass returns.
// (Here the whole HSM stalls; the stuck connection of the attack is the
// same to the key manager: one call that does not return.)
TEST_F(AdminTest, AKeyManagerHeldInTheHsmIsShownAndRefusesChangesAtOnce) {
  auto stub = AdminStub();
  auto held_for = [&]() -> std::string {
    grpc::ClientContext ctx;
    Deadline(ctx);
    v1::GetStatusResponse status;
    const grpc::Status st =
        stub->GetStatus(&ctx, v1::GetStatusRequest(), &status);
    EXPECT_TRUE(st.ok()) << st.error_message();
    return status.key_manager_stuck();
  };
  EXPECT_EQ(held_for(), "");
  ASSERT_TRUE(bed_->hsm().Stall().ok());
  // The loop's next pass (one a second) goes into the stalled HSM; it is
  // shown once held past the longest session wait of a change (30 s) plus
  // the pool's stall threshold (10 s) and 2 s.
  std::string held;
  for (int i = 0; i < 200 && held.empty(); ++i) {
    absl::SleepFor(absl::Milliseconds(500));
    held = held_for();
  }
  EXPECT_THAT(held,
              HasSubstr("the key manager has been on one change or pass for"));
  v1::RotateKeyRequest rotate;
  rotate.set_scope("ops");
  rotate.set_mode(v1::IMMEDIATE);
  rotate.set_request_id("rotate-while-held");
  {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() +
                     std::chrono::seconds(30));
    v1::RotateKeyResponse rotated;
    const grpc::Status refused = stub->RotateKey(&ctx, rotate, &rotated);
    EXPECT_EQ(refused.error_code(), grpc::StatusCode::UNAVAILABLE)
        << refused.error_message();
    EXPECT_THAT(
        refused.error_message(),
        HasSubstr("the key manager has been on one change or pass for"));
    EXPECT_THAT(refused.error_message(),
                HasSubstr("this call changed nothing"));
  }
  EXPECT_THAT(AuditLog(), HasSubstr("this call changed nothing"));
  // A malformed request hears what is wrong with it, not "held".
  {
    grpc::ClientContext ctx;
    Deadline(ctx);
    v1::RevokeKeyRequest revoke;
    revoke.set_scope("ops");
    revoke.set_kid("some-kid");
    revoke.set_reason("testing");
    v1::RevokeKeyResponse revoked;
    const grpc::Status refused = stub->RevokeKey(&ctx, revoke, &revoked);
    EXPECT_EQ(refused.error_code(), grpc::StatusCode::INVALID_ARGUMENT)
        << refused.error_message();
    EXPECT_THAT(refused.error_message(), HasSubstr("request_id is required"));
  }
  ASSERT_TRUE(bed_->hsm().Resume().ok());
  for (int i = 0; i < 120 && !held.empty(); ++i) {
    absl::SleepFor(absl::Milliseconds(500));
    held = held_for();
  }
  EXPECT_EQ(held, "");
  // The same request, once the pass has returned, is made.
  grpc::Status made;
  for (int i = 0; i < 60; ++i) {
    grpc::ClientContext ctx;
    Deadline(ctx);
    v1::RotateKeyResponse rotated;
    made = stub->RotateKey(&ctx, rotate, &rotated);
    if (made.ok()) break;
    absl::SleepFor(absl::Milliseconds(500));
  }
  EXPECT_TRUE(made.ok()) << made.error_message();
}

// grpc.max_call_seconds bounds every Signer and Admin call whatever the
// caller's deadline, and the answer says it was that limit: an outside
// attack heard "the deadline" for a call whose own deadline was far off.
TEST_F(AdminTest, ACallIsAnsweredAtMaxCallSecondsSayingItWasThatLimit) {
  ASSERT_TRUE(signetd_->Stop(SIGTERM, absl::Seconds(30)).ok());
  extra_config_ = "grpc { max_call_seconds: 5 }\n";
  ASSERT_NO_FATAL_FAILURE(StartSignetd());
  auto signer = v1::Signer::NewStub(Channel(tenant_));
  auto admin = AdminStub();
  ASSERT_TRUE(bed_->hsm().Stall().ok());
  absl::Cleanup resume = [this] { (void)bed_->hsm().Resume(); };
  auto far_deadline = [](grpc::ClientContext& ctx) {
    ctx.set_deadline(std::chrono::system_clock::now() +
                     std::chrono::seconds(120));
  };
  grpc::Status signed_status;
  std::thread sign([&] {
    grpc::ClientContext ctx;
    far_deadline(ctx);
    v1::SignJwtRequest req;
    req.set_scope("ops");
    const int64_t now = absl::ToUnixSeconds(absl::Now());
    req.set_claims_json(absl::StrCat("{\"iss\":\"", kIssuer, "\",\"iat\":", now,
                                     ",\"exp\":", now + 60, "}"));
    v1::SignJwtResponse resp;
    signed_status = signer->SignJwt(&ctx, req, &resp);
  });
  grpc::Status rotated_status;
  const absl::Time asked = absl::Now();
  {
    grpc::ClientContext ctx;
    far_deadline(ctx);
    v1::RotateKeyRequest rotate;
    rotate.set_scope("ops");
    rotate.set_mode(v1::IMMEDIATE);
    rotate.set_request_id("rotate-past-the-limit");
    v1::RotateKeyResponse rotated;
    rotated_status = admin->RotateKey(&ctx, rotate, &rotated);
  }
  // Answered at the configured limit, not the default's 30 s (a bound on
  // which limit applied, not on speed).
  EXPECT_LT(absl::Now() - asked, absl::Seconds(25));
  sign.join();
  EXPECT_EQ(signed_status.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED)
      << signed_status.error_message();
  EXPECT_THAT(signed_status.error_message(),
              HasSubstr("(signetd's limit of 5s per call, which came before "
                        "the caller's deadline)"));
  EXPECT_EQ(rotated_status.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED)
      << rotated_status.error_message();
  EXPECT_THAT(rotated_status.error_message(),
              HasSubstr("or grpc.max_call_seconds if sooner"));
}

// A key change that a stalled HSM holds, then SIGTERM: gRPC's Shutdown
// waits for every call to be answered, and this one's answer was to come
// from the HSM, so signetd never stopped (a supervisor kills it after its
// grace: 10 s for scripts/run). The stop answers it, saying how to learn
// its outcome.
TEST_F(AdminTest, AStopAnswersAKeyChangeThatAStalledHsmHolds) {
  auto stub = AdminStub();
  ASSERT_TRUE(bed_->hsm().Stall().ok());
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(60));
  v1::RotateKeyRequest rotate;
  rotate.set_scope("ops");
  rotate.set_mode(v1::IMMEDIATE);
  rotate.set_request_id("rotate-then-stop");
  v1::RotateKeyResponse rotated;
  absl::Notification answered;
  grpc::Status status;
  std::thread caller([&] {
    status = stub->RotateKey(&ctx, rotate, &rotated);
    answered.Notify();
  });
  // The key manager's loop (a pass each second) is stuck in the HSM by now,
  // and the change waits behind it or is in it.
  absl::SleepFor(absl::Seconds(2));
  ASSERT_FALSE(answered.HasBeenNotified()) << status.error_message();
  // A second change, queued behind the first: at its deadline its turn has
  // not come, so it is never made, and its caller is told so (a ninth
  // outside attack saw "the HSM has not finished the key change" for one
  // that never started). The client's own deadline fires at the same
  // instant, so the audit log says what the watchdog answered.
  {
    grpc::ClientContext queued_ctx;
    queued_ctx.set_deadline(std::chrono::system_clock::now() +
                            std::chrono::seconds(2));
    v1::RevokeKeyRequest revoke;
    revoke.set_scope("ops");
    revoke.set_kid("some-kid");
    revoke.set_reason("queued behind a stalled change");
    revoke.set_request_id("queued-behind-it");
    v1::RevokeKeyResponse revoked;
    EXPECT_EQ(stub->RevokeKey(&queued_ctx, revoke, &revoked).error_code(),
              grpc::StatusCode::DEADLINE_EXCEEDED);
  }
  std::string queued_line;
  for (int i = 0; i < 50 && queued_line.empty(); ++i) {
    for (absl::string_view line : absl::StrSplit(AuditLog(), '\n')) {
      if (absl::StrContains(line, "Admin/RevokeKey")) {
        queued_line = std::string(line);
      }
    }
    if (queued_line.empty()) absl::SleepFor(absl::Milliseconds(100));
  }
  EXPECT_THAT(queued_line,
              HasSubstr("was still queued behind the key manager's work at "
                        "the call's deadline"));
  EXPECT_THAT(queued_line, HasSubstr("so it is not made"));
  const bool heard = StopWhileStalled(answered, ctx, caller);
  ASSERT_TRUE(heard);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::UNAVAILABLE)
      << status.error_message();
  EXPECT_THAT(status.error_message(),
              HasSubstr("signetd is stopping and the HSM has not finished "
                        "the key change"));
  EXPECT_THAT(status.error_message(), HasSubstr("same request_id"));
}

// A ninth outside attack: the HSM stalled while the audit log's writer
// signed a checkpoint (once a minute; here the one that closes a segment at
// SIGHUP). Every Admin call waited for the writer without bound, and the
// stop waited for the calls: signetd stopped only when the HSM came back.
// The call is answered at its deadline by the watchdog, the signature is
// given up on, and the stop ends.
TEST_F(AdminTest, AStallWhileACheckpointIsSignedHoldsNeitherCallsNorTheStop) {
  auto stub = AdminStub();
  {
    // A line since the last checkpoint, so the rollover signs one.
    grpc::ClientContext ctx;
    Deadline(ctx);
    v1::ListKeysRequest list;
    list.set_scope("ops");
    v1::ListKeysResponse keys;
    ASSERT_TRUE(stub->ListKeys(&ctx, list, &keys).ok());
  }
  const int status_lines_before =
      testing::CountOccurrences(AuditLog(), "Admin/GetStatus");
  ASSERT_TRUE(bed_->hsm().Stall().ok());
  ASSERT_EQ(kill(signetd_->pid(), SIGHUP), 0);
  absl::SleepFor(absl::Seconds(1));  // the writer is in the HSM by now

  // Status does not wait for the log's writer (a review found it held
  // there up to the checkpoint signer's deadline): with a deadline shorter
  // than that (5 s), it is answered.
  {
    grpc::ClientContext status_ctx;
    status_ctx.set_deadline(std::chrono::system_clock::now() +
                            std::chrono::seconds(2));
    v1::GetStatusResponse status;
    const grpc::Status answered_at_once =
        stub->GetStatus(&status_ctx, v1::GetStatusRequest(), &status);
    EXPECT_TRUE(answered_at_once.ok()) << answered_at_once.error_message();
  }
  // Any other call waits for its line. Shorter than the checkpoint
  // signer's deadline: the watchdog answers at the deadline (the client's
  // own deadline fires at the same instant, so which one the client hears
  // is a race: the audit log says below that the watchdog answered).
  {
    grpc::ClientContext short_ctx;
    short_ctx.set_deadline(std::chrono::system_clock::now() +
                           std::chrono::seconds(2));
    v1::ListScopesResponse scopes;
    const grpc::Status held =
        stub->ListScopes(&short_ctx, v1::ListScopesRequest(), &scopes);
    EXPECT_EQ(held.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED)
        << held.error_message();
  }

  // A call in flight at the stop, the HSM still stalled.
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(60));
  absl::Notification answered;
  grpc::Status in_flight;
  std::thread caller([&] {
    v1::ListKeysRequest list;
    list.set_scope("ops");
    v1::ListKeysResponse keys;
    in_flight = stub->ListKeys(&ctx, list, &keys);
    answered.Notify();
  });
  absl::SleepFor(absl::Milliseconds(300));
  const bool heard = StopWhileStalled(answered, ctx, caller);
  EXPECT_TRUE(heard);
  // The signature the HSM held is recorded as failed, in the segment the
  // rollover closed; the watchdog's answer to ListScopes is audited, and
  // so is the status call answered before its line.
  std::string closed_segments;
  for (const auto& entry : std::filesystem::directory_iterator(audit_dir_)) {
    const std::string name = entry.path().filename().string();
    if (absl::StartsWith(name, "audit.log.0")) {
      std::ifstream in(entry.path());
      std::stringstream buf;
      buf << in.rdbuf();
      closed_segments += buf.str();
    }
  }
  EXPECT_THAT(closed_segments,
              HasSubstr("\"event\":\"checkpoint_failed\",\"result\":"
                        "\"DEADLINE_EXCEEDED\""));
  EXPECT_THAT(closed_segments + AuditLog(),
              HasSubstr("Admin/ListScopes: the audit log did not take this "
                        "call's line before its deadline"));
  EXPECT_EQ(testing::CountOccurrences(closed_segments + AuditLog(),
                                      "Admin/GetStatus"),
            status_lines_before + 1);
}

// A tenth outside attack: one connection to the HSM stuck (one
// p11-kit-remote child stopped) while new ones were served. The pool
// abandoned it and served on a new one, but the prober's call on it never
// returned, so health said "stalled" for as long as the child stayed
// stopped. The stuck probe is left behind and probing goes on; a twelfth
// saw the replica NOT reachable for ~12 s meanwhile, until the probe was
// replaced after the pool's stall threshold: now it is replaced before it
// could read as a stall, and the new probe avoids the connection with a
// call held, so the replica never reads unreachable. A stop then leaves
// without waiting for the stuck call, after its stop line and a final
// checkpoint.
TEST_F(AdminTest, OneStuckHsmConnectionDoesNotKeepTheReplicaDown) {
  auto stub = AdminStub();
  auto hsm_reachable = [&]() -> std::optional<bool> {
    grpc::ClientContext ctx;
    Deadline(ctx);
    v1::GetStatusResponse status;
    if (!stub->GetStatus(&ctx, v1::GetStatusRequest(), &status).ok()) {
      return std::nullopt;
    }
    return status.hsm_reachable();
  };
  const absl::StatusOr<pid_t> child = bed_->hsm().StallOneConnection();
  ASSERT_TRUE(child.ok()) << child.status();
  // The first call that lands on the stopped connection stays there (the
  // probe's, a pass's): the pool abandons the connection after its stall
  // threshold (10 s) and opens a new one. A probe that landed there is
  // replaced after 2 s, and later probes avoid the connection. Until a
  // few seconds after the abandonment, the replica is never reported
  // unreachable (it was for ~12 s when the probe that landed there was
  // replaced only after the pool's threshold).
  int unreachable = 0, answered = 0;
  absl::Time until = absl::Now() + absl::Seconds(40);
  bool abandoned = false;
  while (absl::Now() < until) {
    const std::optional<bool> reachable = hsm_reachable();
    if (reachable.has_value()) {
      ++answered;
      unreachable += *reachable ? 0 : 1;
    }
    if (!abandoned &&
        absl::StrContains(signetd_->Output(), "connection(s) abandoned")) {
      abandoned = true;
      until = std::min(until, absl::Now() + absl::Seconds(5));
    }
    absl::SleepFor(absl::Milliseconds(200));
  }
  EXPECT_TRUE(abandoned) << signetd_->Output();
  EXPECT_GT(answered, 20);
  // At most a blip (GetStatus is read every 200 ms; with the old probe and
  // delay it read unreachable for ~9 s, some 45 readings): the replacement
  // probe has about a second to answer before the first one's call reads
  // as a stall, which a loaded machine may take.
  EXPECT_LE(unreachable, 3) << signetd_->Output();
  EXPECT_EQ(hsm_reachable(), std::optional<bool>(true));

  ASSERT_EQ(kill(signetd_->pid(), SIGTERM), 0);
  const absl::StatusOr<int> code = signetd_->WaitExit(absl::Seconds(60));
  kill(*child, SIGCONT);
  ASSERT_TRUE(code.ok()) << code.status() << "\n" << signetd_->Output();
  std::vector<std::string> lines =
      absl::StrSplit(AuditLog(), '\n', absl::SkipEmpty());
  ASSERT_GE(lines.size(), 2u);
  EXPECT_THAT(lines[lines.size() - 2],
              HasSubstr("an HSM call did not return in time while the HSM "
                        "served others"));
  EXPECT_THAT(lines.back(), HasSubstr("\"event\":\"checkpoint\""));
}

// Fifth outside attack: with the audit log unwritable every Admin call was
// refused, GetStatus too, so `signetctl status` could never show "audit
// log: NOT writable". GetStatus is answered (and logged) unaudited; every
// other call still needs its line.
TEST_F(AdminTest, StatusIsAnsweredWhileTheAuditLogCannotBeWritten) {
  auto stub = AdminStub();
  const std::string log = audit_dir_ + "/audit.log";
  auto chattr = testing::RunProcess({.argv = {"chattr", "+i", log}});
  ASSERT_TRUE(chattr.ok() && chattr->succeeded())
      << (chattr.ok() ? chattr->output : chattr.status().ToString());
  v1::GetStatusResponse status;
  grpc::Status st;
  // The first call's own line breaks the log (written after its answer),
  // or the log's write check finds it first: a later call says so.
  const absl::Time give_up = absl::Now() + absl::Seconds(10);
  do {
    grpc::ClientContext sctx;
    Deadline(sctx);
    status.Clear();
    st = stub->GetStatus(&sctx, v1::GetStatusRequest(), &status);
    if (st.ok() && !status.audit_writable()) break;
    absl::SleepFor(absl::Milliseconds(100));
  } while (absl::Now() < give_up);
  grpc::ClientContext kctx;
  Deadline(kctx);
  v1::ListKeysRequest list;
  list.set_scope("ops");
  v1::ListKeysResponse keys;
  const grpc::Status listed = stub->ListKeys(&kctx, list, &keys);
  (void)testing::RunProcess({.argv = {"chattr", "-i", log}});
  ASSERT_TRUE(st.ok()) << st.error_message();
  EXPECT_FALSE(status.audit_writable());
  EXPECT_THAT(status.audit_detail(), HasSubstr("Operation not permitted"));
  EXPECT_EQ(listed.error_code(), grpc::StatusCode::UNAVAILABLE);
  EXPECT_THAT(signetd_->Output(),
              HasSubstr("Admin/GetStatus by uri:" + std::string(kAdmin) +
                        " answered without its audit line"));
}

TEST_F(AdminTest, ImmediateRotationAndRevocationUnderLoad) {
  // The standby has been published for the lead (3 s) plus the cache.
  absl::SleepFor(absl::Seconds(5));
  const v1::ListKeysResponse before = Keys();
  const std::string first = KidIn(before, "ACTIVE");
  const std::string standby = KidIn(before, "PENDING", true);
  ASSERT_FALSE(first.empty());
  ASSERT_FALSE(standby.empty());
  Load load(this);
  absl::SleepFor(absl::Seconds(2));
  auto stub = AdminStub();
  grpc::ClientContext ctx;
  Deadline(ctx);
  v1::RotateKeyRequest rotate;
  rotate.set_scope("ops");
  rotate.set_mode(v1::IMMEDIATE);
  rotate.set_request_id("rotate-1");
  v1::RotateKeyResponse rotated;
  grpc::Status st = stub->RotateKey(&ctx, rotate, &rotated);
  ASSERT_TRUE(st.ok()) << st.error_message();
  EXPECT_EQ(rotated.active_kid(), standby);
  EXPECT_EQ(rotated.retiring_kid(), first);
  EXPECT_TRUE(rotated.warning().empty()) << rotated.warning();
  // The retry of the same request is answered as the first, applied once.
  grpc::ClientContext again_ctx;
  Deadline(again_ctx);
  v1::RotateKeyResponse again;
  ASSERT_TRUE(stub->RotateKey(&again_ctx, rotate, &again).ok());
  EXPECT_EQ(again.SerializeAsString(), rotated.SerializeAsString());
  // The same id for another request is refused.
  grpc::ClientContext other_ctx;
  Deadline(other_ctx);
  v1::RotateKeyRequest other = rotate;
  other.set_mode(v1::PLANNED);
  v1::RotateKeyResponse other_resp;
  EXPECT_EQ(stub->RotateKey(&other_ctx, other, &other_resp).error_code(),
            grpc::StatusCode::INVALID_ARGUMENT);
  absl::SleepFor(absl::Seconds(3));
  // Zero failures across the rotation; the old key still published.
  EXPECT_THAT(load.failures(), ::testing::IsEmpty());
  const v1::ListKeysResponse after = Keys();
  EXPECT_EQ(KidIn(after, "ACTIVE"), standby);
  EXPECT_EQ(KidIn(after, "RETIRED"), first);
  EXPECT_EQ(after.keys_size(), 3);  // and a new standby

  // Revoke the active key: the new standby (published for only a moment)
  // takes over, and the answer says relying parties may refetch.
  grpc::ClientContext rctx;
  Deadline(rctx);
  v1::RevokeKeyRequest revoke;
  revoke.set_scope("ops");
  revoke.set_kid(standby);
  revoke.set_reason("suspected exposure (test)");
  revoke.set_request_id("revoke-1");
  v1::RevokeKeyResponse revoked;
  st = stub->RevokeKey(&rctx, revoke, &revoked);
  ASSERT_TRUE(st.ok()) << st.error_message();
  EXPECT_EQ(revoked.revoked_kid(), standby);
  EXPECT_FALSE(revoked.active_kid().empty());
  EXPECT_NE(revoked.active_kid(), standby);
  absl::SleepFor(absl::Seconds(3));
  load.Stop();
  EXPECT_GT(load.tokens(), 50);
  // The revoked key signs nothing after the revocation and leaves the set.
  const std::vector<std::string> kids = load.kids();
  ASSERT_FALSE(kids.empty());
  EXPECT_EQ(kids.back(), revoked.active_kid());
  auto body = testing::HttpGet(http_port_, "/scopes/ops/.well-known/jwks.json");
  ASSERT_TRUE(body.ok());
  EXPECT_THAT(body->body, Not(HasSubstr(standby)));
  EXPECT_THAT(body->body, HasSubstr(first));
  const v1::ListKeysResponse end = Keys();
  bool found = false;
  for (const v1::KeyInfo& k : end.keys()) {
    if (k.kid() != standby) continue;
    found = true;
    EXPECT_EQ(k.state(), "REVOKED");
    EXPECT_EQ(k.revoked_by(), absl::StrCat("uri:", kAdmin));
    EXPECT_EQ(k.revocation_reason(), "suspected exposure (test)");
    // Its private key goes the shorter of destroy_delay_seconds (default
    // 24 h) and min_publish_lead_seconds (3 s here) after the revocation,
    // and that is what is listed (a twelfth outside attack saw the
    // schedule's later time).
    absl::Time revoked_at, destroy_at;
    std::string error;
    ASSERT_TRUE(absl::ParseTime(absl::RFC3339_full, k.revoked_at(), &revoked_at,
                                &error))
        << error;
    ASSERT_TRUE(absl::ParseTime(absl::RFC3339_full, k.destroy_at(), &destroy_at,
                                &error))
        << error;
    EXPECT_EQ(destroy_at - revoked_at, absl::Seconds(3))
        << k.revoked_at() << " " << k.destroy_at();
  }
  EXPECT_TRUE(found);
  const std::string audit = AuditLog();
  EXPECT_THAT(audit, HasSubstr("key_rotated"));
  EXPECT_THAT(audit, HasSubstr("key_revoked"));
}

// A twelfth outside attack revoked the ACTIVE key under signing load and
// received hundreds of tokens with its kid after RevokeKey answered OK
// (batches and calls that had taken the key before), and thousands while
// the revocation was being written. The key is out of service from before
// its revocation is written, checked again as each signature is released:
// every token with the revoked kid that any caller received was audited
// before the key_revoked line (a sign line is durable before its token
// leaves, and the key_revoked line is written after the key was taken out
// of service). No timing assumptions.
TEST_F(AdminTest, NoTokenSignedWithARevokedKeyIsReleasedAfterItsRevocation) {
  const std::string active = KidIn(Keys(), "ACTIVE");
  ASSERT_FALSE(active.empty());
  auto signer = v1::Signer::NewStub(Channel(tenant_));
  std::atomic<bool> stop{false};
  absl::Mutex mu;
  std::vector<std::string> tokens;  // compact JWS with the revoked kid
  int signed_total = 0;
  auto claims = [] {
    const int64_t now = absl::ToUnixSeconds(absl::Now());
    return absl::StrCat("{\"iss\":\"", kIssuer, "\",\"iat\":", now,
                        ",\"exp\":", now + 60, "}");
  };
  auto keep = [&](const std::string& kid, const std::string& jws) {
    absl::MutexLock lock(&mu);
    ++signed_total;
    if (kid == active) tokens.push_back(jws);
  };
  std::vector<std::thread> load;
  for (int t = 0; t < 2; ++t) {
    load.emplace_back([&] {
      while (!stop.load()) {
        grpc::ClientContext ctx;
        Deadline(ctx);
        v1::SignJwtRequest req;
        req.set_scope("ops");
        req.set_claims_json(claims());
        v1::SignJwtResponse resp;
        if (signer->SignJwt(&ctx, req, &resp).ok())
          keep(resp.kid(), resp.jws());
      }
    });
    load.emplace_back([&] {
      while (!stop.load()) {
        grpc::ClientContext ctx;
        Deadline(ctx);
        v1::SignJwtBatchRequest req;
        req.set_scope("ops");
        for (int i = 0; i < 32; ++i) req.add_claims_json(claims());
        v1::SignJwtBatchResponse resp;
        if (!signer->SignJwtBatch(&ctx, req, &resp).ok()) continue;
        for (const v1::SignJwtBatchItem& item : resp.items()) {
          if (item.code() == 0) keep(item.kid(), item.jws());
        }
      }
    });
  }
  absl::SleepFor(absl::Seconds(1));
  {
    grpc::ClientContext ctx;
    Deadline(ctx);
    v1::RevokeKeyRequest revoke;
    revoke.set_scope("ops");
    revoke.set_kid(active);
    revoke.set_reason("drill under load");
    revoke.set_request_id("revoke-under-load");
    v1::RevokeKeyResponse revoked;
    const grpc::Status st = AdminStub()->RevokeKey(&ctx, revoke, &revoked);
    EXPECT_TRUE(st.ok()) << st.error_message() << "\n" << signetd_->Output();
  }
  absl::SleepFor(absl::Seconds(1));
  stop.store(true);
  for (auto& t : load) t.join();
  ASSERT_GT(signed_total, 0);
  ASSERT_FALSE(tokens.empty()) << "no token was signed with the key before";
  // Every sign line's seq by its input hash, and the key_revoked line's.
  std::map<std::string, uint64_t> sign_seq;
  uint64_t revoked_seq = 0;
  for (absl::string_view text : absl::StrSplit(AuditLog(), '\n')) {
    nlohmann::json line = nlohmann::json::parse(text, nullptr, false);
    if (!line.is_object() || !line.contains("seq")) continue;
    const std::string event = line.value("event", "");
    if (event == "sign" && line.contains("input_sha256")) {
      sign_seq[line.value("input_sha256", "")] = line["seq"].get<uint64_t>();
    } else if (event == "key_revoked" && line.value("kid", "") == active) {
      revoked_seq = line["seq"].get<uint64_t>();
    }
  }
  ASSERT_NE(revoked_seq, 0u) << "no key_revoked line for " << active;
  int after = 0;
  for (const std::string& jws : tokens) {
    const std::string input = jws.substr(0, jws.rfind('.'));
    absl::StatusOr<std::string> digest = crypto::Sha256(input);
    ASSERT_TRUE(digest.ok());
    auto seq = sign_seq.find(absl::BytesToHexString(*digest));
    ASSERT_NE(seq, sign_seq.end()) << "a token without its sign line";
    if (seq->second > revoked_seq) ++after;
  }
  EXPECT_EQ(after, 0) << after << " of " << tokens.size()
                      << " tokens with the revoked kid were signed after "
                         "its key_revoked line (seq "
                      << revoked_seq << ")";
}

// A twelfth outside attack killed signetd (-9) and found nothing in the
// audit log but a missing stop line. The next start line says the run
// before ended without one; after a clean stop it says nothing of the kind.
TEST_F(AdminTest, AStartAfterAKillSaysThePreviousRunDidNotStop) {
  auto start_details = [this] {
    std::vector<std::string> details;
    for (absl::string_view text : absl::StrSplit(AuditLog(), '\n')) {
      nlohmann::json line = nlohmann::json::parse(text, nullptr, false);
      if (line.is_object() && line.value("event", "") == "start") {
        details.push_back(line.value("detail", ""));
      }
    }
    return details;
  };
  ASSERT_TRUE(signetd_->Stop(SIGTERM, absl::Seconds(30)).ok());
  ASSERT_NO_FATAL_FAILURE(StartSignetd());
  // A thirteenth outside attack: a kill -9 between a key write and its
  // event line left a revocation in the token that the log only announced
  // as "2 token write(s): key_revoked, key_activated". The key_changes line
  // now names each write (generation, kid, reason), and the start after an
  // unclean stop audits what the token holds.
  const std::string standby = KidIn(Keys(), "PENDING", true);
  ASSERT_FALSE(standby.empty());
  {
    grpc::ClientContext ctx;
    Deadline(ctx);
    v1::RevokeKeyRequest revoke;
    revoke.set_scope("ops");
    revoke.set_kid(standby);
    revoke.set_reason("revoked before a kill");
    revoke.set_request_id("before-a-kill");
    v1::RevokeKeyResponse response;
    const grpc::Status st = AdminStub()->RevokeKey(&ctx, revoke, &response);
    ASSERT_TRUE(st.ok()) << st.error_message();
  }
  ASSERT_TRUE(signetd_->Stop(SIGKILL, absl::Seconds(30)).ok());
  ASSERT_NO_FATAL_FAILURE(StartSignetd());
  const std::vector<std::string> details = start_details();
  ASSERT_EQ(details.size(), 3u);
  EXPECT_THAT(details[0], Not(HasSubstr("ended without a stop line")));
  EXPECT_THAT(details[1], Not(HasSubstr("ended without a stop line")));
  EXPECT_THAT(details[2],
              HasSubstr(") ended without a stop line: it was killed, crashed, "
                        "failed to start after its start line, or the "
                        "machine stopped"));
  std::vector<std::string> intents, at_start;
  for (absl::string_view text : absl::StrSplit(AuditLog(), '\n')) {
    nlohmann::json line = nlohmann::json::parse(text, nullptr, false);
    if (!line.is_object()) continue;
    if (line.value("event", "") == "key_changes") {
      intents.push_back(line.value("detail", ""));
    }
    if (line.value("event", "") == "keys_at_start") {
      EXPECT_EQ(line.value("scope", ""), "ops");
      at_start.push_back(line.value("detail", ""));
    }
  }
  EXPECT_THAT(intents,
              Contains(AllOf(HasSubstr("key_revoked gen "),
                             HasSubstr(absl::StrCat(" ", standby, " by ")),
                             HasSubstr("for \"revoked before a kill\""))));
  // Only after the unclean stop, once for the one scope.
  ASSERT_EQ(at_start.size(), 1u);
  EXPECT_THAT(at_start[0], HasSubstr("the previous run ended without a stop "
                                     "line"));
  EXPECT_THAT(at_start[0],
              HasSubstr(absl::StrCat(" ", standby, " REVOKED at ")));
  EXPECT_THAT(at_start[0],
              HasSubstr(absl::StrCat(" ", KidIn(Keys(), "ACTIVE"), " ACTIVE")));
}

// Found by an outside attack: 200 immediate rotations grew the key set to
// 101 keys, and a reason with escape sequences reached operators'
// terminals.
// The token keeps each applied change with its request id: a retry after
// a restart answers as the first time and changes nothing again.
TEST_F(AdminTest, ARequestIdIsRememberedAcrossARestart) {
  auto rotate_once = [&](const v1::RotateKeyRequest& req,
                         v1::RotateKeyResponse* resp) {
    grpc::ClientContext ctx;
    Deadline(ctx);
    return AdminStub()->RotateKey(&ctx, req, resp);
  };
  auto revoke_once = [&](const v1::RevokeKeyRequest& req,
                         v1::RevokeKeyResponse* resp) {
    grpc::ClientContext ctx;
    Deadline(ctx);
    return AdminStub()->RevokeKey(&ctx, req, resp);
  };
  auto restart = [&] {
    auto stopped = signetd_->Stop(SIGTERM, absl::Seconds(30));
    ASSERT_TRUE(stopped.ok()) << stopped.status();
    StartSignetd();
  };
  v1::RotateKeyRequest rotate;
  rotate.set_scope("ops");
  rotate.set_mode(v1::IMMEDIATE);
  rotate.set_request_id("durable-rotate");
  v1::RotateKeyResponse first;
  ASSERT_TRUE(rotate_once(rotate, &first).ok());
  const v1::ListKeysResponse before = Keys();
  ASSERT_NO_FATAL_FAILURE(restart());
  v1::RotateKeyResponse again;
  grpc::Status st = rotate_once(rotate, &again);
  ASSERT_TRUE(st.ok()) << st.error_message();
  EXPECT_EQ(again.SerializeAsString(), first.SerializeAsString());
  const v1::ListKeysResponse after = Keys();
  EXPECT_EQ(KidIn(after, "ACTIVE"), first.active_kid());
  EXPECT_EQ(after.keys_size(), before.keys_size()) << after.DebugString();
  v1::RotateKeyRequest other = rotate;
  other.set_mode(v1::PLANNED);
  v1::RotateKeyResponse other_resp;
  st = rotate_once(other, &other_resp);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(st.error_message(), HasSubstr("already used for another"));
  // The same id on another scope, after a restart, is refused too: an id
  // names one change whichever scope it was for.
  extra_config_ = absl::StrCat(
      "scopes { name: \"ops2\" audience_class: CONSUMER purpose: JWT "
      "issuer: \"",
      kIssuer,
      "/ops2\" algorithm: ES256 max_token_lifetime_seconds: 60 "
      "rotation_period_seconds: 60 min_publish_lead_seconds: 3 "
      "publish_grace_seconds: 130 }\n");
  ASSERT_NO_FATAL_FAILURE(restart());
  v1::RotateKeyRequest elsewhere = rotate;
  elsewhere.set_scope("ops2");
  v1::RotateKeyResponse elsewhere_resp;
  st = rotate_once(elsewhere, &elsewhere_resp);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT)
      << st.error_message();

  v1::RevokeKeyRequest revoke;
  revoke.set_scope("ops");
  revoke.set_kid(KidIn(after, "PENDING", /*standby=*/true));
  revoke.set_reason("durable request id (test)");
  revoke.set_request_id("durable-revoke");
  ASSERT_FALSE(revoke.kid().empty()) << after.DebugString();
  v1::RevokeKeyResponse revoked;
  st = revoke_once(revoke, &revoked);
  ASSERT_TRUE(st.ok()) << st.error_message();
  ASSERT_NO_FATAL_FAILURE(restart());
  v1::RevokeKeyResponse revoked_again;
  st = revoke_once(revoke, &revoked_again);
  ASSERT_TRUE(st.ok()) << st.error_message();
  EXPECT_EQ(revoked_again.SerializeAsString(), revoked.SerializeAsString());
}

TEST_F(AdminTest, ImmediateRotationsStopAtTheCapAndReasonsAreText) {
  auto stub = AdminStub();
  int rotated = 0;
  grpc::Status refused;
  for (int i = 0; i < 12; ++i) {
    grpc::ClientContext ctx;
    Deadline(ctx);
    v1::RotateKeyRequest req;
    req.set_scope("ops");
    req.set_mode(v1::IMMEDIATE);
    req.set_request_id(absl::StrCat("cap-", i));
    v1::RotateKeyResponse resp;
    grpc::Status st = stub->RotateKey(&ctx, req, &resp);
    if (!st.ok()) {
      refused = st;
      break;
    }
    ++rotated;
  }
  EXPECT_EQ(rotated, 6);  // active + standby + 6 retired = 8 published
  // Not RESOURCE_EXHAUSTED, which clients retry: the cap lasts hours.
  EXPECT_EQ(refused.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_THAT(refused.error_message(), HasSubstr("already publishes 8 keys"));
  auto body = testing::HttpGet(http_port_, "/scopes/ops/.well-known/jwks.json");
  ASSERT_TRUE(body.ok());
  nlohmann::json set = nlohmann::json::parse(body->body, nullptr, false);
  EXPECT_EQ(set["keys"].size(), 8u);

  grpc::ClientContext rctx;
  Deadline(rctx);
  v1::RevokeKeyRequest revoke;
  revoke.set_scope("ops");
  revoke.set_kid(KidIn(Keys(), "ACTIVE"));
  revoke.set_reason("x\x1b[2J\nGEN 99 fake-row");
  revoke.set_request_id("escape");
  v1::RevokeKeyResponse revoked;
  grpc::Status st = stub->RevokeKey(&rctx, revoke, &revoked);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(st.error_message(), HasSubstr("control characters"));
  // C1 (CSI) and a bidirectional override are control characters too, and
  // an unknown kid is quoted, not echoed raw (fifth outside attack); so are
  // a line separator and invisible characters (eighth).
  const std::vector<std::string> control_reasons = {
      "x \xc2\x9b"
      "2J",
      "x \xe2\x80\xae"
      "gnp.exe",
      "ok\xe2\x80\xa8"
      "FAKE-LINE: key restored by admin",
      "x\xe2\x80\x8by", "x\xef\xbb\xbfy", "x\xe2\x81\xa0y",
      // What shows as nothing (fourteenth): a Hangul filler, a soft
      // hyphen, U+180E, a combining grapheme joiner, a braille blank, an
      // interlinear annotation anchor, and tag characters ("IGNORE").
      "x\xe3\x85\xa4y", "x\xc2\xady", "x\xe1\xa0\x8ey", "x\xcd\x8fy",
      "x\xe2\xa0\x80y", "x\xef\xbf\xb9y",
      "x\xf3\xa0\x81\x89\xf3\xa0\x81\x87\xf3\xa0\x81\x8e"};
  for (size_t i = 0; i < control_reasons.size(); ++i) {
    const std::string& reason = control_reasons[i];
    grpc::ClientContext cctx;
    Deadline(cctx);
    revoke.set_reason(reason);
    revoke.set_request_id(absl::StrCat("escape-", i));
    st = stub->RevokeKey(&cctx, revoke, &revoked);
    EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << reason;
    EXPECT_THAT(st.error_message(), HasSubstr("control characters"));
  }
  grpc::ClientContext kctx;
  Deadline(kctx);
  // Text in any script passes (the unknown kid is what is refused).
  revoke.set_reason(
      "incident 42 \xe2\x80\x94 cl\xc3\xa9 \xe4\xba\x8b\xe6\x95\x85");
  revoke.set_kid("\x1b[31mEVIL\x1b[0m\nfake line");
  revoke.set_request_id("escaped-kid");
  st = stub->RevokeKey(&kctx, revoke, &revoked);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_THAT(st.error_message(), Not(HasSubstr("\x1b")));
  EXPECT_THAT(st.error_message(), Not(HasSubstr("\n")));
  EXPECT_THAT(st.error_message(), HasSubstr("\\x1b[31mEVIL"));
}

TEST_F(AdminTest, SignetctlCommandsTablesJsonAndExitCodes) {
  testing::RunResult scopes = Ctl({"scopes", "list"});
  EXPECT_EQ(scopes.exit_code, 0) << scopes.output;
  EXPECT_THAT(scopes.output, HasSubstr("ACTIVE KID"));
  EXPECT_THAT(scopes.output, HasSubstr("ops"));
  testing::RunResult json = Ctl({"scopes", "list", "--json"});
  ASSERT_EQ(json.exit_code, 0) << json.output;
  nlohmann::json parsed = nlohmann::json::parse(json.output, nullptr, false);
  ASSERT_FALSE(parsed.is_discarded()) << json.output;
  EXPECT_EQ(parsed["scopes"][0]["name"], "ops");
  const std::string active = parsed["scopes"][0]["active_kid"];
  EXPECT_FALSE(active.empty());

  testing::RunResult keys = Ctl({"keys", "list", "ops"});
  EXPECT_EQ(keys.exit_code, 0) << keys.output;
  EXPECT_THAT(keys.output, HasSubstr("PENDING (standby)"));
  testing::RunResult status = Ctl({"status"});
  EXPECT_EQ(status.exit_code, 0) << status.output;
  EXPECT_THAT(status.output, HasSubstr("hsm:        reachable"));
  EXPECT_THAT(status.output, HasSubstr("SERVING"));

  // A destructive change without a terminal needs --yes: usage error, and
  // nothing changed.
  testing::RunResult unconfirmed = Ctl({"keys", "rotate", "ops", "--now"});
  EXPECT_EQ(unconfirmed.exit_code, 2) << unconfirmed.output;
  EXPECT_THAT(unconfirmed.output, HasSubstr("--yes"));
  EXPECT_EQ(KidIn(Keys(), "ACTIVE"), active);
  testing::RunResult revoke_unconfirmed =
      Ctl({"keys", "revoke", "ops", active, "--reason", "x"});
  EXPECT_EQ(revoke_unconfirmed.exit_code, 2);
  // Planned rotation needs no confirmation.
  testing::RunResult planned = Ctl({"keys", "rotate", "ops", "--json"});
  EXPECT_EQ(planned.exit_code, 0) << planned.output;
  EXPECT_THAT(planned.output, HasSubstr("\"activates_at\""));
  testing::RunResult now = Ctl({"keys", "rotate", "ops", "--now", "--yes"});
  EXPECT_EQ(now.exit_code, 0) << now.output;
  EXPECT_THAT(now.output, HasSubstr("signs from"));
  const std::string rotated_to = KidIn(Keys(), "ACTIVE");
  EXPECT_NE(rotated_to, active);
  // Revocation through signetctl, as JSON: the standby takes over.
  testing::RunResult revoked = Ctl({"keys", "revoke", "ops", rotated_to,
                                    "--reason", "drill", "--yes", "--json"});
  ASSERT_EQ(revoked.exit_code, 0) << revoked.output;
  EXPECT_THAT(revoked.output,
              HasSubstr(absl::StrCat("\"revoked_kid\":\"", rotated_to, "\"")));
  EXPECT_NE(KidIn(Keys(), "ACTIVE"), rotated_to);
  testing::RunResult table = Ctl({"keys", "list", "ops"});
  EXPECT_THAT(table.output, HasSubstr("REVOKED"));
  EXPECT_THAT(table.output, HasSubstr("drill"));

  // Permission denied: 3; unavailable: 4; usage: 2; failure: 1.
  EXPECT_EQ(Ctl({"scopes", "list"}, &tenant_).exit_code, 3);
  EXPECT_EQ(Ctl({"status", "--timeout", "2"}, nullptr, "127.0.0.1:1").exit_code,
            4);
  EXPECT_EQ(Ctl({"keys", "list"}).exit_code, 2);
  EXPECT_EQ(Ctl({"keys", "list", "no-such-scope"}).exit_code, 1);
  // A flag wins over its environment variable.
  testing::RunResult flag =
      Ctl({"status", "--target", absl::StrCat("localhost:", port_)}, nullptr,
          "127.0.0.1:1");
  EXPECT_EQ(flag.exit_code, 0) << flag.output;
}

}  // namespace
}  // namespace signet
