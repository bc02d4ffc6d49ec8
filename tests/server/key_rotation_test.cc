// Keys rotate on their own while signetd serves, end to end: a real signetd
// on a real token behind `p11-kit server`, with a schedule of seconds
// (allow_short_key_schedules), signs continuously over mTLS gRPC through
// several automatic rotations while signet's own verifier, fetching the
// scope's key set over real HTTP and caching it as Cache-Control says,
// verifies every token. Then a restart after a key retired, and a replica.
#include <grpcpp/grpcpp.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <fstream>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "base/status_macros.h"
#include "client/verifier.h"
#include "gmock/gmock.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "gtest/gtest.h"
#include "hsm/key_store.h"
#include "hsm/module.h"
#include "hsm/pin.h"
#include "hsm/session_pool.h"
#include "hsm/token_uri.h"
#include "server/audit_line.h"
#include "signet/v1/admin.grpc.pb.h"
#include "signet/v1/signer.grpc.pb.h"
#include "tests/testing/http_get.h"
#include "tests/testing/in_process_hsm.h"
#include "tests/testing/p11kit_server.h"
#include "tests/testing/process.h"
#include "tests/testing/signetd_process.h"
#include "tests/testing/test_bed.h"

namespace signet {
namespace {

using ::testing::AllOf;
using ::testing::HasSubstr;
using ::testing::Not;
using testing::SignetdOptions;
using testing::SignetdProcess;

constexpr absl::Duration kStartTimeout = absl::Seconds(90);
constexpr char kIssuer[] = "http://127.0.0.1/short";
constexpr char kTenant[] = "spiffe://signet.test/tenant/idp";
constexpr char kAdmin[] = "spiffe://signet.test/admin/ops";
// P = 6 s, L = 3 s = 2C + R with C = R = 1 s; G covers T = 60 s + S = 5 s
// + V = 60 s.
constexpr absl::Duration kPeriod = absl::Seconds(6);

// How many keys of a listing are ACTIVE, and how many are the standby.
struct KeyCounts {
  int active = 0;
  int standby = 0;
};
KeyCounts Count(const v1::ListKeysResponse& keys) {
  KeyCounts counts;
  for (const v1::KeyInfo& k : keys.keys()) {
    counts.active += k.state() == "ACTIVE" ? 1 : 0;
    counts.standby += k.standby() ? 1 : 0;
  }
  return counts;
}

struct Signed {
  std::string token;
  std::string kid;
};

class KeyRotationTest : public ::testing::Test {
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
  }

  std::string Config(absl::string_view name, bool writer,
                     absl::Duration period = kPeriod) const {
    const std::string audit_dir =
        absl::StrCat(bed_->token().dir(), "/audit-", name);
    mkdir(audit_dir.c_str(), 0700);
    return absl::StrCat(
        "grpc_listen_address: \"127.0.0.1:0\"\n", bed_->HsmConfig(),
        "scopes { name: \"short\" audience_class: CONSUMER purpose: JWT "
        "issuer: \"",
        kIssuer,
        "\" algorithm: ES256 max_token_lifetime_seconds: 60 "
        "rotation_period_seconds: ",
        absl::ToInt64Seconds(period),
        " min_publish_lead_seconds: 3 publish_grace_seconds: 130", scope_extra_,
        " }\n", bed_->TlsConfig(), "tenants { identity: \"uri:", kTenant,
        "\" scopes: \"short\" }\n", "admins: \"uri:", kAdmin, "\"\n",
        "audit_log_path: \"", audit_dir, "/audit.log\"\n",
        "http { listen_address: \"127.0.0.1:0\" public_base_url: "
        "\"http://127.0.0.1\" cache_max_age_seconds: 1 }\n",
        "serving { iat_skew_seconds: 5 }\n",
        "allow_short_key_schedules: true\n", intervals_,
        writer ? "" : "never_create_keys: true\n", extra_config_);
  }

  std::string AuditDir(absl::string_view name) const {
    return absl::StrCat(bed_->token().dir(), "/audit-", name);
  }

  struct Running {
    std::unique_ptr<SignetdProcess> process;
    std::shared_ptr<grpc::Channel> channel;
    std::unique_ptr<v1::Signer::Stub> stub;
    int http_port = 0;
  };

  Running Start(absl::string_view name, bool writer,
                std::vector<std::pair<std::string, std::string>> env = {},
                absl::Duration period = kPeriod) {
    Running r;
    SignetdOptions options;
    options.binary = SIGNETD_BINARY;
    options.config_text = Config(name, writer, period);
    options.env = std::move(env);
    options.flags = flags_;
    auto signetd = SignetdProcess::Start(bed_->token().dir(), options);
    EXPECT_TRUE(signetd.ok()) << signetd.status();
    if (!signetd.ok()) return r;
    r.process = std::move(*signetd);
    absl::Status ready =
        r.process->WaitForOutput("signetd ready", kStartTimeout);
    EXPECT_TRUE(ready.ok()) << ready;
    auto port = r.process->WaitForPort(kStartTimeout);
    auto http = r.process->WaitForHttpPort(kStartTimeout);
    EXPECT_TRUE(port.ok() && http.ok()) << r.process->Output();
    if (!port.ok() || !http.ok()) return r;
    r.http_port = *http;
    grpc::SslCredentialsOptions ssl;
    ssl.pem_root_certs = bed_->ca().cert_pem();
    ssl.pem_private_key = tenant_.key_pem;
    ssl.pem_cert_chain = tenant_.cert_pem;
    r.channel = grpc::CreateChannel(absl::StrCat("localhost:", *port),
                                    grpc::SslCredentials(ssl));
    r.stub = v1::Signer::NewStub(r.channel);
    return r;
  }

  // `clock` is signetd's clock as the claims' iat must match it.
  static absl::StatusOr<Signed> Sign(
      v1::Signer::Stub& stub, absl::Duration clock = absl::ZeroDuration()) {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() +
                     std::chrono::seconds(20));
    v1::SignJwtRequest req;
    req.set_scope("short");
    const int64_t now = absl::ToUnixSeconds(absl::Now() + clock);
    req.set_claims_json(absl::StrCat("{\"iss\":\"", kIssuer, "\",\"iat\":", now,
                                     ",\"exp\":", now + 60, "}"));
    v1::SignJwtResponse resp;
    grpc::Status st = stub.SignJwt(&ctx, req, &resp);
    if (!st.ok()) {
      return absl::Status(static_cast<absl::StatusCode>(st.error_code()),
                          st.error_message());
    }
    return Signed{resp.jws(), resp.kid()};
  }

  static std::string Jwks(int http_port) {
    auto body =
        testing::HttpGet(http_port, "/scopes/short/.well-known/jwks.json");
    EXPECT_TRUE(body.ok()) << body.status();
    return body.ok() ? body->body : "";
  }

  // A relying party: caches the set as Cache-Control says (1 s), and
  // refetches for an unknown kid at most once an hour, so a kid it meets
  // before it holds it fails.
  std::unique_ptr<Verifier> RelyingParty(int http_port) {
    VerifierOptions options;
    options.issuers = {
        {kIssuer, absl::StrCat("http://127.0.0.1:", http_port,
                               "/scopes/short/.well-known/jwks.json")}};
    options.min_refetch_interval = absl::Hours(1);
    auto verifier = Verifier::Create(options);
    EXPECT_TRUE(verifier.ok()) << verifier.status();
    return verifier.ok() ? std::move(*verifier) : nullptr;
  }

  // Appended to every configuration this test starts.
  std::string extra_config_;
  // signetd's flags (besides --config) for every start.
  std::vector<std::string> flags_;
  // Appended inside the scope "short" of every configuration.
  std::string scope_extra_;
  // The reconcile passes' intervals.
  std::string intervals_ =
      "reconcile_interval_seconds: 1\nkey_refresh_interval_seconds: 1\n";

  std::unique_ptr<v1::Admin::Stub> AdminStub(const Running& r) {
    grpc::SslCredentialsOptions ssl;
    ssl.pem_root_certs = bed_->ca().cert_pem();
    ssl.pem_private_key = admin_.key_pem;
    ssl.pem_cert_chain = admin_.cert_pem;
    return v1::Admin::NewStub(grpc::CreateChannel(
        absl::StrCat("localhost:",
                     r.process->WaitForPort(kStartTimeout).value()),
        grpc::SslCredentials(ssl)));
  }

  // `r`'s health of "scope/<scope>"; UNKNOWN when the Check fails.
  static grpc::health::v1::HealthCheckResponse::ServingStatus ScopeHealth(
      const Running& r, absl::string_view scope) {
    auto health = grpc::health::v1::Health::NewStub(r.channel);
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() +
                     std::chrono::seconds(5));
    grpc::health::v1::HealthCheckRequest req;
    req.set_service(absl::StrCat("scope/", scope));
    grpc::health::v1::HealthCheckResponse resp;
    return health->Check(&ctx, req, &resp).ok()
               ? resp.status()
               : grpc::health::v1::HealthCheckResponse::UNKNOWN;
  }

  // An admin's revocation of `kid` in scope "short".
  grpc::Status Revoke(const Running& r, const std::string& kid,
                      const std::string& reason,
                      const std::string& request_id) {
    auto admin = AdminStub(r);
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() +
                     std::chrono::seconds(20));
    v1::RevokeKeyRequest req;
    req.set_scope("short");
    req.set_kid(kid);
    req.set_reason(reason);
    req.set_request_id(request_id);
    v1::RevokeKeyResponse resp;
    return admin->RevokeKey(&ctx, req, &resp);
  }

  // signetd with libfaketime preloaded: its wall clock is the real one
  // plus the offset SetFakeClock last wrote (read at most a second late;
  // on a loaded machine, later). Its CLOCK_MONOTONIC and CLOCK_BOOTTIME are
  // not faked: time still passes as it does.
  Running StartWithFakeClock(absl::string_view name,
                             absl::string_view offset = "+0") {
    const std::string faketime =
        "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1";
    EXPECT_EQ(access(faketime.c_str(), R_OK), 0)
        << faketime << " is missing: scripts/setup installs libfaketime";
    SetFakeClock(offset);
    return Start(name, true,
                 {{"LD_PRELOAD", faketime},
                  {"FAKETIME_TIMESTAMP_FILE", FakeClockFile()},
                  {"FAKETIME_CACHE_DURATION", "1"},
                  {"FAKETIME_DONT_FAKE_MONOTONIC", "1"}},
                 absl::Seconds(60));
  }
  std::string FakeClockFile() const { return bed_->token().dir() + "/clock"; }
  // A writer on a fake clock (StartWithFakeClock) that has signed `first`
  // and then rotated at once (its first key retires now).
  void SignThenRotateOnAFakeClock(absl::string_view name, Running& writer,
                                  std::optional<Signed>& first) {
    writer = StartWithFakeClock(name);
    ASSERT_NE(writer.stub, nullptr);
    absl::StatusOr<Signed> signed_first = Sign(*writer.stub);
    ASSERT_TRUE(signed_first.ok()) << signed_first.status();
    first = *signed_first;
    grpc::Status st = Rotate(writer, absl::StrCat(name, "-1"));
    ASSERT_TRUE(st.ok()) << st.error_message();
  }
  // `r` logs and audits a destruction held back, and says its clock reads
  // ahead.
  static void ExpectDestructionHeld(const Running& r) {
    ASSERT_TRUE(
        r.process->WaitForOutput("key_destruction_held", absl::Seconds(30))
            .ok())
        << r.process->Output();
    EXPECT_THAT(r.process->Output(),
                HasSubstr("clock anomaly: the wall clock reads"));
  }
  // `offset` as libfaketime reads it ("+600", "-120"). Replaced whole
  // (rename), so libfaketime never reads a half-written file.
  void SetFakeClock(absl::string_view offset) {
    const std::string next = FakeClockFile() + ".next";
    std::ofstream(next, std::ios::trunc) << offset << "\n";
    ASSERT_EQ(rename(next.c_str(), FakeClockFile().c_str()), 0);
  }

  // An admin's rotation of scope "short" (immediate unless `mode` says).
  grpc::Status Rotate(const Running& r, const std::string& request_id,
                      v1::RotateMode mode = v1::IMMEDIATE) {
    auto admin = AdminStub(r);
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() +
                     std::chrono::seconds(20));
    v1::RotateKeyRequest req;
    req.set_scope("short");
    req.set_mode(mode);
    req.set_request_id(request_id);
    v1::RotateKeyResponse resp;
    return admin->RotateKey(&ctx, req, &resp);
  }

  // Through `admin`'s channel: one made while signetd's clock was right
  // keeps working when it is set back (a new TLS handshake then finds the
  // test's certificates not yet valid).
  static v1::GetStatusResponse Status(v1::Admin::Stub& admin) {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() +
                     std::chrono::seconds(20));
    v1::GetStatusResponse status;
    grpc::Status st = admin.GetStatus(&ctx, v1::GetStatusRequest(), &status);
    EXPECT_TRUE(st.ok()) << st.error_message();
    return status;
  }
  v1::GetStatusResponse Status(const Running& r) {
    return Status(*AdminStub(r));
  }

  v1::ListKeysResponse Keys(const Running& r) {
    auto stub = AdminStub(r);
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() +
                     std::chrono::seconds(20));
    v1::ListKeysRequest req;
    req.set_scope("short");
    v1::ListKeysResponse resp;
    grpc::Status st = stub->ListKeys(&ctx, req, &resp);
    EXPECT_TRUE(st.ok()) << st.error_message();
    return resp;
  }

  // The hex key id of `kid` in `r`'s listing of scope "short"; empty if it
  // is not listed.
  std::string KeyIdOf(const Running& r, const std::string& kid) {
    const v1::ListKeysResponse keys = Keys(r);
    for (const v1::KeyInfo& k : keys.keys()) {
      if (k.kid() == kid) return k.key_id();
    }
    return "";
  }

  // A key store of the test's own over the same p11-kit boundary signetd
  // uses: what a person with the token's PIN can do (pkcs11-tool, say).
  struct OwnStore {
    std::unique_ptr<hsm::SessionPool> pool;
    std::unique_ptr<hsm::Pkcs11KeyStore> store;
  };
  absl::StatusOr<OwnStore> OpenOwnStore() {
    hsm::ModuleOptions module;
    module.module_path = testing::P11KitServer::client_module_path();
    module.p11_kit_server_address = bed_->hsm().address();
    SIGNET_ASSIGN_OR_RETURN(auto connector,
                            hsm::P11KitConnector::Create(module));
    SIGNET_ASSIGN_OR_RETURN(auto uri,
                            hsm::TokenUri::Parse(bed_->token().token_uri()));
    hsm::SessionPoolOptions options;
    options.connections = 1;
    SIGNET_ASSIGN_OR_RETURN(
        auto pool, hsm::SessionPool::Create(
                       std::move(connector), std::move(uri),
                       hsm::Pin::FromBytes(bed_->token().user_pin()), options));
    OwnStore own;
    own.pool = std::move(pool);
    own.store = std::make_unique<hsm::Pkcs11KeyStore>(own.pool.get());
    return own;
  }

  // The private keys in the token, read through the same p11-kit boundary
  // signetd uses (scopes' keys and the audit key).
  int TokenPrivateKeys() {
    auto own = OpenOwnStore();
    if (!own.ok()) return -1;
    auto ids = own->store->ListKeyIds();
    return ids.ok() ? static_cast<int>(ids->size()) : -1;
  }

  std::unique_ptr<testing::SignetTestBed> bed_;
  testing::TestCa::Issued tenant_;
  testing::TestCa::Issued admin_;
};

TEST_F(KeyRotationTest, SignsThroughThreeRotationsWithoutAVerificationFailure) {
  Running signetd = Start("writer", true);
  ASSERT_NE(signetd.stub, nullptr);
  // The standby is published from the start.
  const std::string first_set = Jwks(signetd.http_port);
  EXPECT_EQ(std::count(first_set.begin(), first_set.end(), '{') - 1, 2)
      << "active key and standby expected: " << first_set;
  std::unique_ptr<Verifier> relying_party = RelyingParty(signetd.http_port);
  ASSERT_NE(relying_party, nullptr);

  std::vector<std::string> kids;  // in the order they signed
  int tokens = 0;
  int sign_failures = 0;
  int verify_failures = 0;
  std::string first_failure;
  const absl::Time end = absl::Now() + 3 * kPeriod + absl::Seconds(3);
  while (absl::Now() < end) {
    absl::StatusOr<Signed> token = Sign(*signetd.stub);
    if (!token.ok()) {
      if (sign_failures++ == 0) first_failure = token.status().ToString();
      continue;
    }
    ++tokens;
    if (kids.empty() || kids.back() != token->kid) kids.push_back(token->kid);
    absl::StatusOr<VerifiedToken> verified =
        relying_party->Verify(token->token);
    if (!verified.ok()) {
      if (verify_failures++ == 0) first_failure = verified.status().ToString();
    }
    absl::SleepFor(absl::Milliseconds(20));
  }
  EXPECT_EQ(sign_failures, 0) << first_failure;
  EXPECT_EQ(verify_failures, 0) << first_failure;
  EXPECT_GT(tokens, 100);
  // At least three rotations, each to a new key, never back.
  EXPECT_GE(kids.size(), 4u) << signetd.process->Output();
  EXPECT_EQ(std::set<std::string>(kids.begin(), kids.end()).size(),
            kids.size());
  // Retired keys stay published (their tokens live 60 s).
  const std::string set = Jwks(signetd.http_port);
  for (const std::string& kid : kids) EXPECT_THAT(set, HasSubstr(kid));
  // Every rotation is in the log (and audited: the audit tests read lines).
  EXPECT_THAT(signetd.process->Output(), HasSubstr("key_generated"));
  EXPECT_THAT(signetd.process->Output(), HasSubstr("key_retired"));
}

// Fault 1 of the single-key schedule: a restart after the key's retire
// time kept only the new key in the set, so tokens the old key had just
// signed failed with an unknown kid.
// The audit checkpoint key rotates while signetd runs (every 6 s here):
// each successor is introduced and vouched for by its predecessor's
// checkpoint before it signs, no checkpoint fails, and the whole log
// verifies with the keyring, whose keys it needs.
TEST_F(KeyRotationTest, TheAuditKeyRotatesWhileSigningAndTheLogVerifies) {
  extra_config_ = "audit_key_rotation_seconds: 6\n";
  Running writer = Start("audit", true);
  ASSERT_NE(writer.stub, nullptr);
  const absl::Time until = absl::Now() + absl::Seconds(16);
  int signed_tokens = 0;
  while (absl::Now() < until) {
    absl::StatusOr<Signed> token = Sign(*writer.stub);
    ASSERT_TRUE(token.ok()) << token.status();
    ++signed_tokens;
    absl::SleepFor(absl::Milliseconds(100));
  }
  auto stopped = writer.process->Stop(SIGTERM, absl::Seconds(20));
  ASSERT_TRUE(stopped.ok()) << stopped.status();

  const std::string dir = AuditDir("audit");
  std::ifstream in(dir + "/audit.log");
  std::set<std::string> checkpoint_kids;
  int switches = 0;
  int failed_checkpoints = 0;
  for (std::string line; std::getline(in, line);) {
    absl::StatusOr<server::AuditLineInfo> info = server::ParseAuditLine(line);
    ASSERT_TRUE(info.ok()) << line;
    if (info->event == "checkpoint") checkpoint_kids.insert(info->kid);
    if (info->event == "checkpoint_failed") ++failed_checkpoints;
    if (absl::StrContains(line, "signs checkpoints from now on")) ++switches;
  }
  EXPECT_GE(switches, 2);
  EXPECT_GE(checkpoint_kids.size(), 3u);
  EXPECT_EQ(failed_checkpoints, 0);
  EXPECT_GT(signed_tokens, 50);

  auto verify = [&](std::vector<std::string> flags) {
    std::vector<std::string> argv = {SIGNETD_BINARY, "audit-verify"};
    argv.insert(argv.end(), flags.begin(), flags.end());
    argv.push_back(dir + "/audit.log");
    auto run = testing::RunProcess({.argv = argv}, absl::Seconds(60));
    EXPECT_TRUE(run.ok()) << run.status();
    return run.ok() ? *run : testing::RunResult{};
  };
  const auto with_ring =
      verify({"--audit_keyring=" + dir + "/audit-keyring.pem",
              "--require_checkpoint_coverage"});
  EXPECT_EQ(with_ring.exit_code, 0) << with_ring.output;
  EXPECT_THAT(
      with_ring.output,
      HasSubstr(absl::StrCat("by ", checkpoint_kids.size(), " audit key(s)")));
  // The current key alone cannot verify the earlier keys' checkpoints.
  const auto one_key =
      verify({"--audit_public_key=" + dir + "/audit-checkpoint-key.pem"});
  EXPECT_NE(one_key.exit_code, 0) << one_key.output;
  EXPECT_THAT(one_key.output,
              HasSubstr("checkpoint signature does not verify"));
}

// signetd down for longer than two audit-key periods (the key and its
// standby both past their windows): at the restart the standby, introduced
// and vouched for before the stop, signs the checkpoints; no new key that
// no predecessor vouched for; the whole log verifies with the keyring.
TEST_F(KeyRotationTest,
       TheAuditLogVerifiesAfterAStopLongerThanTwoAuditPeriods) {
  extra_config_ = "audit_key_rotation_seconds: 4\n";
  {
    Running first = Start("outage", true);
    ASSERT_NE(first.stub, nullptr);
    ASSERT_TRUE(Sign(*first.stub).ok());
    auto stopped = first.process->Stop(SIGTERM, absl::Seconds(20));
    ASSERT_TRUE(stopped.ok()) << stopped.status();
  }
  absl::SleepFor(absl::Seconds(10));
  Running second = Start("outage", true);
  ASSERT_NE(second.stub, nullptr);
  absl::StatusOr<Signed> token = Sign(*second.stub);
  ASSERT_TRUE(token.ok()) << token.status();
  auto stopped = second.process->Stop(SIGTERM, absl::Seconds(20));
  ASSERT_TRUE(stopped.ok()) << stopped.status();
  const std::string dir = AuditDir("outage");
  auto verify = testing::RunProcess(
      {.argv = {SIGNETD_BINARY, "audit-verify",
                "--audit_keyring=" + dir + "/audit-keyring.pem",
                "--require_checkpoint_coverage", dir + "/audit.log"}},
      absl::Seconds(60));
  ASSERT_TRUE(verify.ok()) << verify.status();
  EXPECT_EQ(verify->exit_code, 0) << verify->output;
  std::ifstream in(dir + "/audit.log");
  std::stringstream log;
  log << in.rdbuf();
  EXPECT_THAT(log.str(), HasSubstr("window passed unused"));
}

// signetd's wall clock set back while it runs (libfaketime, preloaded,
// reads the offset from a file): past the recorded activation of the key
// that signs, the older key never signs again; GetStatus and the log say
// so, and the anomaly clears when the clock is right again.
TEST_F(KeyRotationTest, AClockSetBackNeverReactivatesAnOlderKeyAndIsShown) {
  Running writer;
  std::optional<Signed> first;
  // The standby takes over now; the next pass records its activation.
  ASSERT_NO_FATAL_FAILURE(SignThenRotateOnAFakeClock("clock", writer, first));
  auto admin = AdminStub(writer);
  absl::SleepFor(absl::Seconds(3));
  absl::StatusOr<Signed> second = Sign(*writer.stub);
  ASSERT_TRUE(second.ok()) << second.status();
  ASSERT_NE(second->kid, first->kid);
  auto scope_status = [&]() {
    const v1::GetStatusResponse resp = Status(*admin);
    for (const auto& scope : resp.scopes()) {
      if (scope.name() == "short") return scope;
    }
    return v1::ScopeStatus();
  };
  EXPECT_EQ(scope_status().clock_anomaly(), "");

  // Two minutes back: before the second key was even made. (signetd reads
  // the offset at most a second late; on a loaded machine, later.)
  SetFakeClock("-120");
  v1::ScopeStatus behind;
  for (int i = 0; i < 60 && behind.clock_anomaly().empty(); ++i) {
    absl::SleepFor(absl::Milliseconds(500));
    behind = scope_status();
  }
  EXPECT_THAT(behind.clock_anomaly(), Not(::testing::IsEmpty()));
  EXPECT_EQ(behind.active_kid(), second->kid);
  for (int i = 0; i < 5; ++i) {
    absl::StatusOr<Signed> token = Sign(*writer.stub, absl::Seconds(-120));
    ASSERT_TRUE(token.ok()) << token.status();
    EXPECT_EQ(token->kid, second->kid) << "an older key signed again";
  }
  EXPECT_TRUE(
      writer.process->WaitForOutput("clock anomaly", absl::Seconds(10)).ok())
      << writer.process->Output();
  // Logged once, not at every pass (its text names the clock's reading;
  // the sixth outside attack saw 48 lines a minute).
  absl::SleepFor(absl::Seconds(3));
  const std::vector<std::string> around_anomalies =
      absl::StrSplit(writer.process->Output(), "clock anomaly: the clock");
  EXPECT_EQ(around_anomalies.size(), 2u) << writer.process->Output();

  SetFakeClock("+0");
  std::string anomaly = "not read yet";
  for (int i = 0; i < 60 && !anomaly.empty(); ++i) {
    absl::SleepFor(absl::Milliseconds(500));
    anomaly = scope_status().clock_anomaly();
  }
  EXPECT_EQ(anomaly, "");
  absl::StatusOr<Signed> after = Sign(*writer.stub);
  ASSERT_TRUE(after.ok()) << after.status();
  EXPECT_EQ(after->kid, second->kid);

  // The clock set back brought the wall-clock anchor down with it: set
  // right again, the clock reads two minutes ahead of it, so the anchor
  // hides no step forward of that size.
  EXPECT_THAT(writer.process->Output(), HasSubstr("the anchor comes down to"));
  std::string ahead;
  for (int i = 0; i < 40 && ahead.empty(); ++i) {
    absl::SleepFor(absl::Milliseconds(500));
    ahead = Status(writer).wall_clock_anomaly();
  }
  EXPECT_THAT(ahead, HasSubstr("ahead of the time seen pass"));
}

// signetd's wall clock set forward ten minutes while it runs, past the
// destruction and the prune of a key retired just before (whose tokens are
// still valid): the schedule moves on, but the key is neither destroyed
// nor pruned, the hold is logged and audited, and when the clock is right
// again the key is published again and its token verifies.
TEST_F(KeyRotationTest, AClockSetForwardDestroysNoKeyBeforeItsTime) {
  scope_extra_ = " destroy_delay_seconds: 5 tombstone_retention_seconds: 5";
  Running writer;
  std::optional<Signed> first;
  // Generation 1 retires now: published for the grace (130 s), destroyed
  // 5 s after that, pruned 5 s after that.
  ASSERT_NO_FATAL_FAILURE(SignThenRotateOnAFakeClock("forward", writer, first));
  auto listed = [&](const std::string& kid) {
    return !KeyIdOf(writer, kid).empty();
  };
  ASSERT_TRUE(listed(first->kid));

  SetFakeClock("+600");
  ASSERT_NO_FATAL_FAILURE(ExpectDestructionHeld(writer));
  // The pass that held it went on: new keys sign, generation 1 is still
  // there. (That pass was the only one: libfaketime cannot fake the
  // kernel's futex timeouts that absl's timed waits use, so with a positive
  // offset the loop's next wait lasts the offset longer.)
  EXPECT_TRUE(listed(first->kid)) << writer.process->Output();
  // Relying parties keep it too: its grace (130 s) has not really passed,
  // so its tokens may still be valid (a fifteenth outside attack saw it
  // withdrawn for the whole step).
  EXPECT_THAT(Jwks(writer.http_port), HasSubstr(first->kid))
      << writer.process->Output();
  absl::StatusOr<Signed> ahead = Sign(*writer.stub, absl::Seconds(600));
  for (int i = 0; i < 40 && !ahead.ok(); ++i) {  // the pass is finishing
    absl::SleepFor(absl::Milliseconds(250));
    ahead = Sign(*writer.stub, absl::Seconds(600));
  }
  ASSERT_TRUE(ahead.ok()) << ahead.status();
  EXPECT_NE(ahead->kid, first->kid);
  EXPECT_THAT(writer.process->Output(), Not(HasSubstr("key_pruned")));
  EXPECT_THAT(writer.process->Output(), Not(HasSubstr("key_destroyed")));
  // An operator sees it in GetStatus (signetctl status).
  auto wall_clock_anomaly = [&] { return Status(writer).wall_clock_anomaly(); };
  EXPECT_THAT(wall_clock_anomaly(),
              AllOf(HasSubstr("ahead of the time seen pass since"),
                    HasSubstr("key destruction(s) or prune(s) held")));

  // The clock is right again (libfaketime reads the file at most a second
  // late). signetd sees the step within a second or two and runs a pass at
  // once, without an operator's call (the loop's own wait would last the
  // offset longer): generation 1 is still published (its grace has not
  // ended), and a relying party verifies its token.
  SetFakeClock("+0");
  std::string set;
  for (int i = 0; i < 60 && !absl::StrContains(set, first->kid); ++i) {
    absl::SleepFor(absl::Milliseconds(500));
    set = Jwks(writer.http_port);
  }
  EXPECT_THAT(set, HasSubstr(first->kid))
      << Keys(writer).DebugString() << writer.process->Output();
  EXPECT_THAT(writer.process->Output(),
              HasSubstr("the key manager runs a pass now"));
  EXPECT_EQ(wall_clock_anomaly(), "");
  std::unique_ptr<Verifier> relying_party = RelyingParty(writer.http_port);
  ASSERT_NE(relying_party, nullptr);
  auto verified = relying_party->Verify(first->token);
  EXPECT_TRUE(verified.ok()) << verified.status();
  std::ifstream in(AuditDir("forward") + "/audit.log");
  std::stringstream log;
  log << in.rdbuf();
  EXPECT_THAT(log.str(), HasSubstr("\"event\":\"key_destruction_held\""));
}

// A restart does not forget a clock set forward: signetd measures the wall
// clock from its first start in this boot (the anchor beside the audit
// log), so a crash and the supervisor's restart under the same clock still
// hold the retired key. An operator who accepts the clock (one start with
// --accept_wall_clock) lets what is due be done, and that is audited.
TEST_F(KeyRotationTest, AClockSetForwardStaysHeldAcrossRestarts) {
  scope_extra_ = " destroy_delay_seconds: 5 tombstone_retention_seconds: 5";
  Running writer;
  std::optional<Signed> first;
  ASSERT_NO_FATAL_FAILURE(SignThenRotateOnAFakeClock("restart", writer, first));
  SetFakeClock("+660");
  ASSERT_TRUE(
      writer.process->WaitForOutput("key_destruction_held", absl::Seconds(30))
          .ok())
      << writer.process->Output();
  ASSERT_TRUE(writer.process->Stop(SIGKILL, absl::Seconds(30)).ok());

  // Restarted on the same clock: still held, and audited again.
  writer = StartWithFakeClock("restart", "+660");
  ASSERT_NE(writer.stub, nullptr);
  ASSERT_NO_FATAL_FAILURE(ExpectDestructionHeld(writer));
  EXPECT_THAT(writer.process->Output(),
              HasSubstr("wall clock measured against the time seen pass "
                        "since"));
  EXPECT_FALSE(KeyIdOf(writer, first->kid).empty()) << writer.process->Output();
  EXPECT_THAT(writer.process->Output(), Not(HasSubstr("key_pruned")));
  ASSERT_TRUE(writer.process->Stop(SIGKILL, absl::Seconds(30)).ok());

  // The operator accepts the clock: the key's time has come on it.
  flags_ = {"--accept_wall_clock"};
  writer = StartWithFakeClock("restart", "+660");
  ASSERT_NE(writer.stub, nullptr);
  ASSERT_TRUE(
      writer.process->WaitForOutput("key_pruned", absl::Seconds(30)).ok())
      << writer.process->Output();
  EXPECT_TRUE(KeyIdOf(writer, first->kid).empty()) << writer.process->Output();
  EXPECT_THAT(writer.process->Output(),
              HasSubstr("the operator accepted the wall clock"));
  std::ifstream in(AuditDir("restart") + "/audit.log");
  std::stringstream log;
  log << in.rdbuf();
  EXPECT_THAT(log.str(), HasSubstr("\"event\":\"wall_clock_accepted\""));
}

TEST_F(KeyRotationTest, RestartAfterARetireKeepsTheRetiredKeyPublished) {
  std::string old_kid;
  {
    Running signetd = Start("writer", true);
    ASSERT_NE(signetd.stub, nullptr);
    absl::StatusOr<Signed> token = Sign(*signetd.stub);
    ASSERT_TRUE(token.ok()) << token.status();
    old_kid = token->kid;
    ASSERT_TRUE(signetd.process->Stop(SIGTERM, absl::Seconds(30)).ok());
  }
  // Down over the key's retire time.
  absl::SleepFor(kPeriod + absl::Seconds(1));
  Running signetd = Start("writer", true);
  ASSERT_NE(signetd.stub, nullptr);
  absl::StatusOr<Signed> token = Sign(*signetd.stub);
  ASSERT_TRUE(token.ok()) << token.status();
  EXPECT_NE(token->kid, old_kid);
  const std::string set = Jwks(signetd.http_port);
  EXPECT_THAT(set, HasSubstr(old_kid));
  EXPECT_THAT(set, HasSubstr(token->kid));
}

// A replica (never_create_keys) re-reads the records every second: through
// rotations it signs with the writer's kid and serves byte-identical sets.
TEST_F(KeyRotationTest, ReplicaFollowsTheWritersRotations) {
  Running writer = Start("writer", true);
  ASSERT_NE(writer.stub, nullptr);
  Running replica = Start("replica", false);
  ASSERT_NE(replica.stub, nullptr);
  int same_sets = 0;
  int same_kids = 0;
  std::set<std::string> kids;
  for (int round = 0; round < 3; ++round) {
    // Mid-way between boundaries and past the refresh interval, both
    // replicas hold the same records: poll until they agree (at most a
    // period), which they must within the refresh interval.
    const absl::Time until = absl::Now() + kPeriod;
    bool agreed = false;
    while (absl::Now() < until && !agreed) {
      const std::string a = Jwks(writer.http_port);
      const std::string b = Jwks(replica.http_port);
      absl::StatusOr<Signed> ka = Sign(*writer.stub);
      absl::StatusOr<Signed> kb = Sign(*replica.stub);
      ASSERT_TRUE(ka.ok()) << ka.status();
      ASSERT_TRUE(kb.ok()) << kb.status();
      if (a == b && ka->kid == kb->kid) {
        agreed = true;
        ++same_sets;
        ++same_kids;
        kids.insert(ka->kid);
      } else {
        absl::SleepFor(absl::Milliseconds(200));
      }
    }
    absl::SleepFor(kPeriod);
  }
  EXPECT_EQ(same_sets, 3);
  EXPECT_EQ(same_kids, 3);
  EXPECT_GE(kids.size(), 2u);
  // Only the writer changes keys.
  auto admin = AdminStub(replica);
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(20));
  v1::RotateKeyRequest rotate;
  rotate.set_scope("short");
  rotate.set_mode(v1::IMMEDIATE);
  rotate.set_request_id("on-a-replica");
  v1::RotateKeyResponse rotated;
  grpc::Status st = admin->RotateKey(&ctx, rotate, &rotated);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_THAT(st.error_message(), HasSubstr("never_create_keys"));
  EXPECT_THAT(replica.process->Output(), Not(HasSubstr("key_generated")));
}

// With no writer left, nobody makes a successor: the standby signs until
// its own retire time, then the scope fails closed (FAILED_PRECONDITION,
// which clients do not retry) and its health says NOT_SERVING.
TEST_F(KeyRotationTest, WithoutAWriterTheScopeFailsClosedAfterItsLastKey) {
  Running writer = Start("writer", true);
  ASSERT_NE(writer.stub, nullptr);
  Running replica = Start("replica", false);
  ASSERT_NE(replica.stub, nullptr);
  ASSERT_TRUE(writer.process->Stop(SIGKILL, absl::Seconds(10)).ok());
  auto scope_health = [&] { return ScopeHealth(replica, "short"); };
  EXPECT_EQ(scope_health(), grpc::health::v1::HealthCheckResponse::SERVING);
  // The active key and the standby: at most two periods.
  absl::Status last;
  const absl::Time until = absl::Now() + 3 * kPeriod;
  while (absl::Now() < until) {
    absl::StatusOr<Signed> token = Sign(*replica.stub);
    last = token.status();
    if (!token.ok()) break;
    absl::SleepFor(absl::Milliseconds(100));
  }
  EXPECT_EQ(last.code(), absl::StatusCode::kFailedPrecondition) << last;
  EXPECT_THAT(std::string(last.message()), HasSubstr("has no active key"));
  bool not_serving = false;
  for (int i = 0; i < 50 && !not_serving; ++i) {
    not_serving =
        scope_health() == grpc::health::v1::HealthCheckResponse::NOT_SERVING;
    if (!not_serving) absl::SleepFor(absl::Milliseconds(100));
  }
  EXPECT_TRUE(not_serving);
}

// A replica becomes the writer by restarting it without never_create_keys
// (README, "Key rotation": promoting a replica): it then makes the keys
// the dead writer would have made, and never a second active key.
TEST_F(KeyRotationTest, AReplicaIsPromotedToWriterByARestart) {
  Running writer = Start("writer", true);
  ASSERT_NE(writer.stub, nullptr);
  Running replica = Start("replica", false);
  ASSERT_NE(replica.stub, nullptr);
  ASSERT_TRUE(writer.process->Stop(SIGKILL, absl::Seconds(10)).ok());
  // Past the first key's retire time: the standby signs, nobody made a
  // successor.
  absl::SleepFor(kPeriod + absl::Seconds(1));
  v1::ListKeysResponse before = Keys(replica);
  EXPECT_EQ(before.keys_size(), 2) << before.DebugString();
  ASSERT_TRUE(replica.process->Stop(SIGTERM, absl::Seconds(30)).ok());
  Running promoted = Start("replica", true);
  ASSERT_NE(promoted.stub, nullptr);
  absl::StatusOr<Signed> token = Sign(*promoted.stub);
  ASSERT_TRUE(token.ok()) << token.status();
  v1::ListKeysResponse after = Keys(promoted);
  EXPECT_EQ(Count(after).active, 1) << after.DebugString();
  EXPECT_EQ(Count(after).standby, 1) << after.DebugString();
  EXPECT_EQ(after.keys_size(), 3) << after.DebugString();
  EXPECT_THAT(promoted.process->Output(), HasSubstr("key_generated"));
}

// The HSM goes away under an operator's rotation: the call answers
// UNAVAILABLE and changes nothing; the reconcile passes fail (audited,
// retried with backoff) while signetd keeps running; once the HSM is back
// the same request id rotates, and signing verifies.
TEST_F(KeyRotationTest, AnHsmOutageDuringARotationChangesNothingUntilItIsBack) {
  Running writer = Start("writer", true, {}, absl::Minutes(1));
  ASSERT_NE(writer.stub, nullptr);
  const std::string first = Sign(*writer.stub).value().kid;
  ASSERT_TRUE(bed_->hsm().Kill().ok());
  auto stub = AdminStub(writer);
  v1::RotateKeyRequest req;
  req.set_scope("short");
  req.set_mode(v1::IMMEDIATE);
  req.set_request_id("during-outage");
  {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() +
                     std::chrono::seconds(30));
    v1::RotateKeyResponse resp;
    grpc::Status st = stub->RotateKey(&ctx, req, &resp);
    EXPECT_EQ(st.error_code(), grpc::StatusCode::UNAVAILABLE)
        << st.error_message();
    // Not the bare PKCS#11 error (an outside attack could not tell whether
    // the change was made).
    EXPECT_THAT(st.error_message(), HasSubstr("this call wrote nothing"));
  }
  ASSERT_TRUE(
      writer.process
          ->WaitForOutput("the key reconcile pass failed", absl::Seconds(30))
          .ok())
      << writer.process->Output();
  // Several failed passes (backoff 1 s, 2 s, ...) before the HSM is back;
  // relying parties are served the last key sets throughout (README).
  absl::SleepFor(absl::Seconds(4));
  EXPECT_THAT(Jwks(writer.http_port), HasSubstr(first));
  ASSERT_TRUE(bed_->hsm().Restart().ok());
  // The same request id, once the HSM is back (the pool reconnects).
  v1::RotateKeyResponse rotated;
  grpc::Status st;
  for (int i = 0; i < 60; ++i) {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() +
                     std::chrono::seconds(30));
    rotated.Clear();
    st = stub->RotateKey(&ctx, req, &rotated);
    if (st.ok()) break;
    absl::SleepFor(absl::Milliseconds(500));
  }
  ASSERT_TRUE(st.ok()) << st.error_message() << "\n"
                       << writer.process->Output();
  EXPECT_NE(rotated.active_kid(), first);
  v1::ListKeysResponse keys = Keys(writer);
  EXPECT_EQ(Count(keys).active, 1) << keys.DebugString();
  EXPECT_EQ(keys.keys_size(), 3) << keys.DebugString();
  absl::StatusOr<Signed> token;
  for (int i = 0; i < 40; ++i) {
    token = Sign(*writer.stub);
    if (token.ok()) break;
    absl::SleepFor(absl::Milliseconds(250));
  }
  ASSERT_TRUE(token.ok()) << token.status();
  EXPECT_EQ(token->kid, rotated.active_kid());
  EXPECT_TRUE(RelyingParty(writer.http_port)->Verify(token->token).ok());
  // The outage is two audit lines however many passes failed: when it
  // began, and when the passes worked again.
  ASSERT_TRUE(writer.process
                  ->WaitForOutput("the key reconcile pass works again",
                                  absl::Seconds(30))
                  .ok())
      << writer.process->Output();
  auto stopped = writer.process->Stop(SIGTERM, absl::Seconds(20));
  ASSERT_TRUE(stopped.ok()) << stopped.status();
  std::ifstream in(AuditDir("writer") + "/audit.log");
  int failed = 0;
  int recovered = 0;
  for (std::string line; std::getline(in, line);) {
    failed += absl::StrContains(line, "\"event\":\"key_reconcile_failed\"");
    recovered +=
        absl::StrContains(line, "\"event\":\"key_reconcile_recovered\"");
  }
  EXPECT_EQ(failed, 1);
  EXPECT_EQ(recovered, 1);
  const std::vector<std::string> pieces =
      absl::StrSplit(writer.process->Output(), "the key reconcile pass failed");
  EXPECT_GE(pieces.size(), 3u) << "the passes were retried and logged";
}

// kill -9 of the writer before each token write of an immediate rotation
// (the successor's record, the old key's record, the new standby's key
// pair, its record), then a restart: the schedule converges to one ACTIVE
// key and one standby, no key pair without a record, and signing verifies.
class KeyRotationCrashTest : public KeyRotationTest,
                             public ::testing::WithParamInterface<int> {};

TEST_P(KeyRotationCrashTest, AKilledWriterConvergesAfterARestart) {
  // The first start writes 4 times (two key pairs and their records); the
  // rotation's writes are 5 to 8.
  const int kill_at = GetParam();
  std::string first_active;
  {
    // A period of a minute: no automatic rotation writes meanwhile.
    Running writer = Start(
        "writer", true, {{"SIGNET_TEST_KILL_AT_WRITE", absl::StrCat(kill_at)}},
        absl::Minutes(1));
    ASSERT_NE(writer.stub, nullptr);
    first_active = Sign(*writer.stub).value().kid;
    auto stub = AdminStub(writer);
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() +
                     std::chrono::seconds(20));
    v1::RotateKeyRequest req;
    req.set_scope("short");
    req.set_mode(v1::IMMEDIATE);
    req.set_request_id("crash");
    v1::RotateKeyResponse resp;
    grpc::Status st = stub->RotateKey(&ctx, req, &resp);
    EXPECT_FALSE(st.ok()) << "the writer should have died at write " << kill_at;
    auto code = writer.process->WaitExit(absl::Seconds(30));
    ASSERT_TRUE(code.ok()) << code.status();
    EXPECT_EQ(*code, -SIGKILL) << writer.process->Output();
  }
  Running restarted = Start("writer", true, {}, absl::Minutes(1));
  ASSERT_NE(restarted.stub, nullptr);
  // Within a pass or two the schedule is whole again.
  v1::ListKeysResponse keys;
  for (int i = 0; i < 50; ++i) {
    keys = Keys(restarted);
    if (Count(keys).active == 1 && Count(keys).standby == 1) break;
    absl::SleepFor(absl::Milliseconds(200));
  }
  EXPECT_EQ(Count(keys).active, 1) << keys.DebugString();
  EXPECT_EQ(Count(keys).standby, 1) << keys.DebugString();
  // Every key pair has its record (+2: the audit key and its standby).
  EXPECT_EQ(TokenPrivateKeys(), keys.keys_size() + 2) << keys.DebugString();
  std::unique_ptr<Verifier> relying_party = RelyingParty(restarted.http_port);
  absl::StatusOr<Signed> token = Sign(*restarted.stub);
  ASSERT_TRUE(token.ok()) << token.status();
  EXPECT_TRUE(relying_party->Verify(token->token).ok());
  if (kill_at == 5) {
    // Killed before the rotation wrote anything: nothing changed.
    EXPECT_EQ(token->kid, first_active);
  } else {
    // The successor's activation was written: the old key never signs again.
    EXPECT_NE(token->kid, first_active);
  }
}

INSTANTIATE_TEST_SUITE_P(EachWriteOfARotation, KeyRotationCrashTest,
                         ::testing::Values(5, 6, 7, 8));

// A key deleted from the token behind signet's back (a person with the
// token's PIN, another program): its scope turns NOT_SERVING and refuses
// FAILED_PRECONDITION (which clients do not retry) naming the key and the
// remedy, within seconds; another scope keeps signing; a restart serves
// the other scope instead of refusing to start; the operator's remedy
// (revoking the missing key) brings the scope back.
TEST_F(KeyRotationTest, AKeyDeletedBehindSignetsBackTakesDownOnlyItsScope) {
  constexpr char kOtherTenant[] = "spiffe://signet.test/tenant/other";
  auto other_cert = bed_->ca().Issue(
      "other", {.uri_sans = {kOtherTenant}, .eku = "clientAuth"});
  ASSERT_TRUE(other_cert.ok()) << other_cert.status();
  extra_config_ = absl::StrCat(
      "scopes { name: \"other\" audience_class: ENTERPRISE purpose: JWT "
      "issuer: \"http://127.0.0.1/other\" algorithm: ES256 "
      "max_token_lifetime_seconds: 60 }\n",
      "tenants { identity: \"uri:", kOtherTenant, "\" scopes: \"other\" }\n");
  // Passes a minute apart, so that the Signer's ask for a pass (not the
  // timer) turns the scope NOT_SERVING.
  intervals_ =
      "reconcile_interval_seconds: 60\nkey_refresh_interval_seconds: 1\n";
  // A period of an hour: no rotation heals the scope during the test.
  Running signetd = Start("writer", true, {}, absl::Hours(1));
  ASSERT_NE(signetd.stub, nullptr);
  auto other_stub = [&](const Running& r) {
    grpc::SslCredentialsOptions ssl;
    ssl.pem_root_certs = bed_->ca().cert_pem();
    ssl.pem_private_key = other_cert->key_pem;
    ssl.pem_cert_chain = other_cert->cert_pem;
    return v1::Signer::NewStub(grpc::CreateChannel(
        absl::StrCat("localhost:",
                     r.process->WaitForPort(kStartTimeout).value()),
        grpc::SslCredentials(ssl)));
  };
  auto sign_other = [&](v1::Signer::Stub& stub) {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() +
                     std::chrono::seconds(20));
    v1::SignJwtRequest req;
    req.set_scope("other");
    const int64_t now = absl::ToUnixSeconds(absl::Now());
    req.set_claims_json(
        absl::StrCat("{\"iss\":\"http://127.0.0.1/other\",\"iat\":", now,
                     ",\"exp\":", now + 60, "}"));
    v1::SignJwtResponse resp;
    return stub.SignJwt(&ctx, req, &resp);
  };
  auto scope_health = [](const Running& r, const std::string& scope) {
    return ScopeHealth(r, scope);
  };
  using grpc::health::v1::HealthCheckResponse;

  absl::StatusOr<Signed> before = Sign(*signetd.stub);
  ASSERT_TRUE(before.ok()) << before.status();
  {
    auto other = other_stub(signetd);
    ASSERT_TRUE(sign_other(*other).ok());
  }
  const std::string deleted_key_id = KeyIdOf(signetd, before->kid);
  ASSERT_FALSE(deleted_key_id.empty());
  {
    // Deleted through the HSM's own boundary, as pkcs11-tool would.
    auto own = OpenOwnStore();
    ASSERT_TRUE(own.ok()) << own.status();
    ASSERT_TRUE(
        own->store->DestroyPrivateKey(absl::HexStringToBytes(deleted_key_id))
            .ok());
  }

  // Signing on: an UNAVAILABLE or two while stale handles are dropped, then
  // FAILED_PRECONDITION naming the key and what to do.
  absl::Status refused;
  const absl::Time bound = absl::Now() + absl::Seconds(20);
  while (absl::Now() < bound) {
    refused = Sign(*signetd.stub).status();
    if (absl::IsFailedPrecondition(refused)) break;
    absl::SleepFor(absl::Milliseconds(100));
  }
  ASSERT_EQ(refused.code(), absl::StatusCode::kFailedPrecondition) << refused;
  EXPECT_THAT(std::string(refused.message()), HasSubstr(before->kid));
  EXPECT_THAT(std::string(refused.message()),
              HasSubstr("signetctl keys revoke short"));
  // Health follows within seconds (an asked-for pass, not the 60 s timer).
  bool not_serving = false;
  for (int i = 0; i < 100 && !not_serving; ++i) {
    not_serving =
        scope_health(signetd, "short") == HealthCheckResponse::NOT_SERVING;
    if (!not_serving) absl::SleepFor(absl::Milliseconds(100));
  }
  EXPECT_TRUE(not_serving);
  refused = Sign(*signetd.stub).status();
  EXPECT_EQ(refused.code(), absl::StatusCode::kFailedPrecondition) << refused;
  EXPECT_THAT(std::string(refused.message()),
              HasSubstr("no private key with id"));
  EXPECT_EQ(scope_health(signetd, "other"), HealthCheckResponse::SERVING);
  {
    auto other = other_stub(signetd);
    EXPECT_TRUE(sign_other(*other).ok());
  }
  {
    auto admin = AdminStub(signetd);
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() +
                     std::chrono::seconds(20));
    v1::GetStatusResponse status;
    ASSERT_TRUE(admin->GetStatus(&ctx, v1::GetStatusRequest(), &status).ok());
    for (const v1::ScopeStatus& s : status.scopes()) {
      if (s.name() == "short") {
        EXPECT_FALSE(s.serving());
        ASSERT_EQ(s.key_problems_size(), 1);
        EXPECT_THAT(s.key_problems(0), HasSubstr(before->kid));
      } else {
        EXPECT_TRUE(s.serving()) << s.name();
        EXPECT_EQ(s.key_problems_size(), 0) << s.name();
      }
    }
  }

  // A restart starts, serves the other scope, and says why "short" cannot
  // sign.
  ASSERT_TRUE(signetd.process->Stop(SIGTERM, absl::Seconds(20)).ok());
  Running restarted = Start("writer", true, {}, absl::Hours(1));
  ASSERT_NE(restarted.stub, nullptr) << restarted.process->Output();
  EXPECT_THAT(restarted.process->Output(), HasSubstr("short CANNOT SIGN"));
  EXPECT_THAT(restarted.process->Output(),
              HasSubstr("signetd ready: 1 of 2 scopes cannot sign"));
  EXPECT_EQ(scope_health(restarted, "short"), HealthCheckResponse::NOT_SERVING);
  EXPECT_EQ(scope_health(restarted, "other"), HealthCheckResponse::SERVING);
  {
    auto other = other_stub(restarted);
    EXPECT_TRUE(sign_other(*other).ok());
  }
  EXPECT_EQ(Sign(*restarted.stub).status().code(),
            absl::StatusCode::kFailedPrecondition);

  // The remedy: revoke the missing key; the standby signs now.
  {
    grpc::Status st =
        Revoke(restarted, before->kid, "deleted from the token outside signet",
               "revoke-deleted");
    ASSERT_TRUE(st.ok()) << st.error_message();
  }
  absl::StatusOr<Signed> after = Sign(*restarted.stub);
  ASSERT_TRUE(after.ok()) << after.status();
  EXPECT_NE(after->kid, before->kid);
  bool serving = false;  // health is sampled once a second
  for (int i = 0; i < 100 && !serving; ++i) {
    serving = scope_health(restarted, "short") == HealthCheckResponse::SERVING;
    if (!serving) absl::SleepFor(absl::Milliseconds(100));
  }
  EXPECT_TRUE(serving);

  // Audited once per reason and process (not once per pass), saying why.
  ASSERT_TRUE(restarted.process->Stop(SIGTERM, absl::Seconds(20)).ok());
  std::ifstream in(AuditDir("writer") + "/audit.log");
  int cannot_sign = 0;
  for (std::string line; std::getline(in, line);) {
    if (absl::StrContains(line, "\"event\":\"key_action_failed\"") &&
        absl::StrContains(line, "the scope cannot sign")) {
      ++cannot_sign;
      EXPECT_THAT(line, HasSubstr("no private key with id"));
    }
  }
  EXPECT_EQ(cannot_sign, 2);
}

// A second private key planted with the signing key's CKA_ID (by a person
// with the PIN, or a faulty tool) makes the key ambiguous. Once signetd's
// connections re-open (here: the p11-kit server restarts) and warm the key
// again, signing answers FAILED_PRECONDITION naming the ambiguity and what
// to do, not UNAVAILABLE ("retry"), which clients would retry for ever.
TEST_F(KeyRotationTest, ASigningKeyWhoseIdTwoPrivateKeysShareIsRefusedSoundly) {
  Running signetd = Start("ambiguous", true);
  ASSERT_NE(signetd.stub, nullptr);
  absl::StatusOr<Signed> before = Sign(*signetd.stub);
  ASSERT_TRUE(before.ok()) << before.status();
  const std::string key_id = KeyIdOf(signetd, before->kid);
  ASSERT_FALSE(key_id.empty());
  {
    auto own = OpenOwnStore();
    ASSERT_TRUE(own.ok()) << own.status();
    hsm::GenerateWithTemplate(*own->pool, /*sensitive=*/true,
                              /*extractable=*/false, {CKM_ECDSA},
                              absl::HexStringToBytes(key_id));
  }
  ASSERT_TRUE(bed_->hsm().Restart().ok());

  // An UNAVAILABLE or two while the connections come back, then the answer.
  absl::Status refused;
  const absl::Time bound = absl::Now() + absl::Seconds(60);
  while (absl::Now() < bound) {
    refused = Sign(*signetd.stub).status();
    if (!absl::IsUnavailable(refused) && !refused.ok()) break;
    absl::SleepFor(absl::Milliseconds(200));
  }
  ASSERT_EQ(refused.code(), absl::StatusCode::kFailedPrecondition)
      << refused << signetd.process->Output();
  EXPECT_THAT(std::string(refused.message()),
              AllOf(HasSubstr(before->kid), HasSubstr("ambiguous"),
                    HasSubstr("signetctl keys revoke short")));
  // Health follows: the scope cannot sign (it said SERVING for pass after
  // pass until a restart), and the reason is audited.
  auto scope_health = ScopeHealth(signetd, "short");
  for (const absl::Time until = absl::Now() + absl::Seconds(30);
       scope_health != grpc::health::v1::HealthCheckResponse::NOT_SERVING &&
       absl::Now() < until;
       scope_health = ScopeHealth(signetd, "short")) {
    absl::SleepFor(absl::Milliseconds(200));
  }
  EXPECT_EQ(scope_health, grpc::health::v1::HealthCheckResponse::NOT_SERVING)
      << signetd.process->Output();
  std::ifstream in(AuditDir("ambiguous") + "/audit.log");
  std::stringstream log;
  log << in.rdbuf();
  EXPECT_THAT(log.str(), AllOf(HasSubstr("\"event\":\"key_action_failed\""),
                               HasSubstr("share id")));
}

// No key changes while the audit log cannot be written: an outside attack
// revoked and rotated keys with the log unwritable (chattr +i) and the
// token changed with no line saying so. Now each change is audited first
// (a durable key_changes line): the operator's call answers UNAVAILABLE
// and nothing changes; once the log works again the same call applies,
// its key_changes line before the key_revoked one.
TEST_F(KeyRotationTest, NoKeyChangesWhileTheAuditLogCannotBeWritten) {
  Running signetd = Start("writer", true, {}, absl::Hours(1));
  ASSERT_NE(signetd.stub, nullptr);
  const v1::ListKeysResponse before = Keys(signetd);
  std::string active;
  for (const v1::KeyInfo& k : before.keys()) {
    if (k.state() == "ACTIVE") active = k.kid();
  }
  ASSERT_FALSE(active.empty());
  const std::string log = AuditDir("writer") + "/audit.log";
  auto chattr = testing::RunProcess({.argv = {"chattr", "+i", log}});
  ASSERT_TRUE(chattr.ok() && chattr->succeeded())
      << (chattr.ok() ? chattr->output : chattr.status().ToString());
  auto revoke = [&] {
    return Revoke(signetd, active, "while the audit log is unwritable",
                  "revoke-unaudited");
  };
  const grpc::Status refused = revoke();
  (void)testing::RunProcess({.argv = {"chattr", "-i", log}});
  EXPECT_EQ(refused.error_code(), grpc::StatusCode::UNAVAILABLE)
      << refused.error_message();
  EXPECT_THAT(refused.error_message(), HasSubstr("audit log"));
  // Nothing changed in the token (read once the log, which audits every
  // admin call, works again: a new segment, without a restart).
  v1::ListKeysResponse during;
  for (const absl::Time until = absl::Now() + absl::Seconds(60);
       absl::Now() < until;) {
    auto admin = AdminStub(signetd);
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() +
                     std::chrono::seconds(20));
    v1::ListKeysRequest req;
    req.set_scope("short");
    if (admin->ListKeys(&ctx, req, &during).ok()) break;
    absl::SleepFor(absl::Milliseconds(500));
  }
  ASSERT_EQ(during.keys_size(), before.keys_size());
  for (int i = 0; i < during.keys_size(); ++i) {
    EXPECT_EQ(during.keys(i).state(), before.keys(i).state()) << i;
    EXPECT_EQ(during.keys(i).kid(), before.keys(i).kid()) << i;
  }
  // The same call applies now, audited first.
  grpc::Status applied = refused;
  const absl::Time bound = absl::Now() + absl::Seconds(60);
  while (!applied.ok() && absl::Now() < bound) {
    absl::SleepFor(absl::Milliseconds(500));
    applied = revoke();
  }
  ASSERT_TRUE(applied.ok())
      << applied.error_message() << signetd.process->Output();
  std::ifstream in(log);
  const std::string text((std::istreambuf_iterator<char>(in)),
                         std::istreambuf_iterator<char>());
  const size_t intent = text.find("\"event\":\"key_changes\"");
  const size_t revoked = text.find("\"event\":\"key_revoked\"");
  ASSERT_NE(intent, std::string::npos);
  ASSERT_NE(revoked, std::string::npos);
  EXPECT_LT(intent, revoked);
}

// The audit checkpoint keys deleted from the token (an outside attack):
// signetd could never start again ("audit key generation 1 is not
// loaded"), and no operator call reaches that key. The writer now revokes
// an audit key it cannot load and the schedule replaces it: a restart
// starts and signs, and the log says why.
TEST_F(KeyRotationTest, AnAuditKeyDeletedFromTheTokenIsReplaced) {
  Running signetd = Start("writer", true, {}, absl::Hours(1));
  ASSERT_NE(signetd.stub, nullptr);
  ASSERT_TRUE(Sign(*signetd.stub).ok());
  std::set<std::string> scope_keys;
  const v1::ListKeysResponse keys = Keys(signetd);
  for (const v1::KeyInfo& k : keys.keys()) {
    scope_keys.insert(absl::HexStringToBytes(k.key_id()));
  }
  ASSERT_TRUE(signetd.process->Stop(SIGKILL, absl::Seconds(10)).ok());
  {
    auto own = OpenOwnStore();
    ASSERT_TRUE(own.ok()) << own.status();
    auto ids = own->store->ListKeyIds();
    ASSERT_TRUE(ids.ok()) << ids.status();
    int deleted = 0;
    for (const std::string& id : *ids) {
      if (scope_keys.contains(id)) continue;
      ASSERT_TRUE(own->store->DestroyPrivateKey(id).ok());  // an audit key
      ++deleted;
    }
    ASSERT_EQ(deleted, 2);  // the audit key and its standby
  }
  Running restarted = Start("writer", true, {}, absl::Hours(1));
  ASSERT_NE(restarted.stub, nullptr) << restarted.process->Output();
  ASSERT_TRUE(Sign(*restarted.stub).ok());
  ASSERT_TRUE(restarted.process->Stop(SIGTERM, absl::Seconds(20)).ok());
  const std::string dir = AuditDir("writer");
  std::ifstream in(dir + "/audit.log");
  int replaced = 0;
  for (std::string line; std::getline(in, line);) {
    replaced +=
        absl::StrContains(line, "\"event\":\"key_revoked\"") &&
        absl::StrContains(line, "cannot be loaded, replaced by signetd");
  }
  EXPECT_EQ(replaced, 2);
  // Both keys gone: no audit key could vouch for the new one, and
  // audit-verify says so (a key nothing vouched for could be anyone's);
  // the lines above say why, and a person who read them accepts it.
  auto verify = [&](std::vector<std::string> flags) {
    std::vector<std::string> argv = {
        SIGNETD_BINARY, "audit-verify",
        "--audit_keyring=" + dir + "/audit-keyring.pem"};
    argv.insert(argv.end(), flags.begin(), flags.end());
    argv.push_back(dir + "/audit.log");
    auto run = testing::RunProcess({.argv = argv}, absl::Seconds(60));
    EXPECT_TRUE(run.ok()) << run.status();
    return run.ok() ? *run : testing::RunResult{};
  };
  const auto strict = verify({});
  EXPECT_NE(strict.exit_code, 0) << strict.output;
  EXPECT_THAT(strict.output, HasSubstr("never vouched for"));
  const auto accepted = verify({"--allow_unvouched_audit_keys"});
  EXPECT_EQ(accepted.exit_code, 0) << accepted.output;
}

}  // namespace
}  // namespace signet
