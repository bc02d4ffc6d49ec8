// The key schedule as production runs it, on simulated time: signetd's
// daemon object (server/daemon.h) runs in this process on a
// base::SimulatedClock, with the default schedule of a scope that rotates
// every 6 hours (the default publication lead, grace and cache lifetime,
// no allow_short_key_schedules), against a real token behind `p11-kit
// server`, over real mTLS gRPC and real HTTP. The test moves the clock two
// minutes at a time through 15 hours: two rotations and a retired key's
// whole grace, in seconds of real time. A relying party on the same clock,
// which caches the key set as Cache-Control says and refetches for an
// unknown kid at most once an hour, verifies every token until it expires.
//
// tests/server/key_rotation_test.cc runs signetd as its own process on
// the real clock (schedules of seconds) and kills it at the worst moments;
// this test pins the schedule's arithmetic at its real defaults. The
// daemon hardens this process as it does signetd (no core dumps, not
// dumpable), and DaemonOptions::exit_code_if_hsm_stuck makes a stop that
// finds the HSM stuck fail the test rather than end it with status 0.
#include <grpcpp/grpcpp.h>
#include <signal.h>
#include <sys/stat.h>

#include <fstream>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "base/clock.h"
#include "client/verifier.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "rotation/key_state.h"
#include "server/daemon.h"
#include "signet/v1/admin.grpc.pb.h"
#include "signet/v1/signer.grpc.pb.h"
#include "tests/testing/http_get.h"
#include "tests/testing/test_bed.h"

namespace signet {
namespace {

using ::testing::HasSubstr;

constexpr char kIssuer[] = "https://consumer.signet.test";
constexpr char kTenant[] = "spiffe://signet.test/tenant/idp";
constexpr char kAdmin[] = "spiffe://signet.test/admin/ops";
constexpr char kJwksPath[] = "/scopes/consumer/.well-known/jwks.json";
constexpr absl::Duration kPeriod = absl::Hours(6);
// The defaults this test relies on (server/config.cc): the publication
// lead L = 2C + R (the cache lifetime C, 300 s, and the replicas' key
// refresh R, 60 s), and the longest token, an hour.
constexpr absl::Duration kLead = absl::Seconds(2 * 300 + 60);
constexpr absl::Duration kTokenLifetime = absl::Hours(1);
// The default grace: the token lifetime, the iat skew (60 s), the
// verifiers' leeway (60 s) and an hour.
constexpr absl::Duration kGrace = absl::Seconds(3600 + 60 + 60 + 3600);
constexpr absl::Duration kStep = absl::Minutes(2);

struct Signed {
  absl::Time at;
  std::string token;
  std::string kid;
};

class KeyScheduleTest : public ::testing::Test {
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

    const std::string audit_dir = absl::StrCat(bed_->token().dir(), "/audit");
    ASSERT_EQ(mkdir(audit_dir.c_str(), 0700), 0);
    config_path_ = absl::StrCat(bed_->token().dir(), "/signetd.textproto");
    const std::string config = absl::StrCat(
        "grpc_listen_address: \"127.0.0.1:0\"\n", bed_->HsmConfig(),
        "scopes { name: \"consumer\" audience_class: CONSUMER purpose: JWT "
        "issuer: \"",
        kIssuer, "\" algorithm: ES256 rotation_period_seconds: ",
        absl::ToInt64Seconds(kPeriod), " }\n", bed_->TlsConfig(),
        "tenants { identity: \"uri:", kTenant, "\" scopes: \"consumer\" }\n",
        "admins: \"uri:", kAdmin, "\"\n", "audit_log_path: \"", audit_dir,
        "/audit.log\"\n",
        "http { listen_address: \"127.0.0.1:0\" public_base_url: "
        "\"http://127.0.0.1\" }\n");
    {
      std::ofstream out(config_path_);
      out << config;
      ASSERT_TRUE(out.good());
    }

    daemon_ = std::make_unique<server::Daemon>(
        server::DaemonOptions{.config_path = config_path_,
                              .clock = &clock_,
                              .exit_code_if_hsm_stuck = 3});
    for (absl::Status (server::Daemon::*phase)() :
         {&server::Daemon::LoadConfiguration, &server::Daemon::StartListening,
          &server::Daemon::OpenHsm, &server::Daemon::OpenAuditLog,
          &server::Daemon::LoadScopes, &server::Daemon::StartServing}) {
      absl::Status st = (daemon_.get()->*phase)();
      ASSERT_TRUE(st.ok()) << st;
    }
    started_ = true;
    signer_ = v1::Signer::NewStub(Channel(tenant_));
    admin_stub_ = v1::Admin::NewStub(Channel(admin_));
  }

  void TearDown() override {
    // Stop() is for a daemon whose phases all ran; the destructor copes
    // with one that failed half way.
    if (daemon_ != nullptr && started_) {
      EXPECT_EQ(daemon_->Stop(), 0);
    }
    daemon_.reset();
  }

  std::shared_ptr<grpc::Channel> Channel(const testing::TestCa::Issued& who) {
    grpc::SslCredentialsOptions ssl;
    ssl.pem_root_certs = bed_->ca().cert_pem();
    ssl.pem_private_key = who.key_pem;
    ssl.pem_cert_chain = who.cert_pem;
    return grpc::CreateChannel(absl::StrCat("localhost:", daemon_->grpc_port()),
                               grpc::SslCredentials(ssl));
  }

  // Moves the clock and waits until the key manager's pass has run at the
  // new time (its loop wakes at least every reconcile interval, 10 s of
  // the clock, so a step of two minutes always runs one).
  void AdvanceAndWaitForPass(absl::Duration d) {
    clock_.Advance(d);
    const std::string now = rotation::FormatInstant(clock_.Now());
    // Generous: a pass is milliseconds, but a sanitized build on a loaded
    // machine once took over 30 s.
    const absl::Time give_up = absl::Now() + absl::Seconds(120);
    std::string last;
    while (absl::Now() < give_up) {
      grpc::ClientContext ctx;
      ctx.set_deadline(std::chrono::system_clock::now() +
                       std::chrono::seconds(10));
      v1::GetStatusResponse status;
      grpc::Status st =
          admin_stub_->GetStatus(&ctx, v1::GetStatusRequest(), &status);
      ASSERT_TRUE(st.ok()) << st.error_message();
      ASSERT_EQ(status.last_reconcile_error(), "");
      last = status.last_reconcile_at();
      if (last == now) return;
      absl::SleepFor(absl::Milliseconds(2));
    }
    FAIL() << "no reconcile pass at " << now << " (the last at " << last << ")";
  }

  absl::StatusOr<Signed> Sign() {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() +
                     std::chrono::seconds(20));
    v1::SignJwtRequest req;
    req.set_scope("consumer");
    const absl::Time now = clock_.Now();
    const int64_t iat = absl::ToUnixSeconds(now);
    req.set_claims_json(absl::StrCat(
        "{\"iss\":\"", kIssuer, "\",\"sub\":\"user\",\"iat\":", iat,
        ",\"exp\":", iat + absl::ToInt64Seconds(kTokenLifetime), "}"));
    v1::SignJwtResponse resp;
    grpc::Status st = signer_->SignJwt(&ctx, req, &resp);
    if (!st.ok()) {
      return absl::Status(static_cast<absl::StatusCode>(st.error_code()),
                          st.error_message());
    }
    return Signed{now, resp.jws(), resp.kid()};
  }

  // The kids of the published set now.
  std::set<std::string> PublishedKids() {
    auto response = testing::HttpGet(daemon_->http_port(), kJwksPath);
    EXPECT_TRUE(response.ok()) << response.status();
    std::set<std::string> kids;
    if (!response.ok()) return kids;
    EXPECT_EQ(response->status, 200) << response->head;
    const std::string& body = response->body;
    for (size_t at = body.find("\"kid\":\""); at != std::string::npos;
         at = body.find("\"kid\":\"", at + 1)) {
      const size_t start = at + 7;
      kids.insert(body.substr(start, body.find('"', start) - start));
    }
    return kids;
  }

  std::unique_ptr<Verifier> RelyingParty() {
    VerifierOptions options;
    options.issuers = {
        {kIssuer,
         absl::StrCat("http://127.0.0.1:", daemon_->http_port(), kJwksPath)}};
    options.algorithms = {"ES256"};
    // A kid met before the cached set has it fails for an hour.
    options.min_refetch_interval = absl::Hours(1);
    options.clock = &clock_;
    auto verifier = Verifier::Create(options);
    EXPECT_TRUE(verifier.ok()) << verifier.status();
    return verifier.ok() ? std::move(*verifier) : nullptr;
  }

  // Whole seconds: the audit lines and the admin's instants are in seconds.
  base::SimulatedClock clock_{
      absl::FromUnixSeconds(absl::ToUnixSeconds(absl::Now()))};
  std::unique_ptr<testing::SignetTestBed> bed_;
  testing::TestCa::Issued tenant_;
  testing::TestCa::Issued admin_;
  std::string config_path_;
  std::unique_ptr<server::Daemon> daemon_;
  bool started_ = false;
  std::unique_ptr<v1::Signer::Stub> signer_;
  std::unique_ptr<v1::Admin::Stub> admin_stub_;
};

TEST_F(KeyScheduleTest, FifteenHoursOfTheDefaultScheduleNeverBreakAVerifier) {
  std::unique_ptr<Verifier> relying_party = RelyingParty();
  ASSERT_NE(relying_party, nullptr);
  const absl::Time start = clock_.Now();

  std::vector<Signed> tokens;
  // The published set at each step.
  std::map<absl::Time, std::set<std::string>> published;
  std::vector<std::string> kids;  // in the order they signed
  std::map<std::string, absl::Time> first_signed;
  int verify_failures = 0;
  std::string first_failure;
  while (clock_.Now() - start < absl::Hours(15)) {
    published[clock_.Now()] = PublishedKids();
    absl::StatusOr<Signed> token = Sign();
    ASSERT_TRUE(token.ok())
        << token.status() << " at " << rotation::FormatInstant(clock_.Now());
    if (kids.empty() || kids.back() != token->kid) {
      kids.push_back(token->kid);
      first_signed[token->kid] = token->at;
    }
    tokens.push_back(*token);
    // Every token signed in the last hour still verifies.
    for (const Signed& t : tokens) {
      if (clock_.Now() >= t.at + kTokenLifetime) continue;
      absl::StatusOr<VerifiedToken> verified = relying_party->Verify(t.token);
      if (!verified.ok() && verify_failures++ == 0) {
        first_failure = absl::StrCat(
            "a token signed at ", rotation::FormatInstant(t.at), " by ", t.kid,
            " failed at ", rotation::FormatInstant(clock_.Now()), ": ",
            verified.status().ToString());
      }
    }
    AdvanceAndWaitForPass(kStep);
    if (HasFatalFailure()) return;
  }
  EXPECT_EQ(verify_failures, 0) << first_failure;

  // One rotation every 6 hours, each to a new key, never back.
  ASSERT_EQ(kids.size(), 3u);
  EXPECT_EQ(std::set<std::string>(kids.begin(), kids.end()).size(), 3u);
  for (size_t i = 1; i < kids.size(); ++i) {
    EXPECT_LE(absl::AbsDuration(first_signed[kids[i]] - start -
                                static_cast<int64_t>(i) * kPeriod),
              kStep)
        << kids[i] << " first signed at "
        << rotation::FormatInstant(first_signed[kids[i]]);
  }
  // Each key was published at least the lead before it first signed.
  for (const std::string& kid : kids) {
    for (const auto& [at, set] : published) {
      if (at <= first_signed[kid] && at >= first_signed[kid] - kLead) {
        EXPECT_TRUE(set.contains(kid))
            << kid << " signs from "
            << rotation::FormatInstant(first_signed[kid])
            << " but was not published at " << rotation::FormatInstant(at);
      }
    }
  }
  // A key that stopped signing stays published while its tokens live, and
  // leaves the set once its grace (the token lifetime, the iat skew, the
  // verifiers' leeway, and an hour) is over.
  for (size_t i = 0; i + 1 < kids.size(); ++i) {
    const absl::Time retired = first_signed[kids[i + 1]];
    for (const auto& [at, set] : published) {
      if (at >= first_signed[kids[i]] && at < retired + kGrace - kStep) {
        EXPECT_TRUE(set.contains(kids[i]))
            << kids[i] << " missing at " << rotation::FormatInstant(at);
      }
      if (at >= retired + kGrace + kStep) {
        EXPECT_FALSE(set.contains(kids[i]))
            << kids[i] << " still published at " << rotation::FormatInstant(at);
      }
    }
  }
  EXPECT_TRUE(published.rbegin()->second.contains(kids.back()));
}

}  // namespace
}  // namespace signet
