// A key's schedule runs out while signetd serves, end to end: the test puts a
// key with a schedule of seconds (ACTIVE, then RETIRED, then UNPUBLISHED) on
// a real token behind a real `p11-kit server`, starts a real signetd on it,
// and watches, over mTLS gRPC and real HTTP, signing stop at retire_at and
// the key leave every published set at unpublish_at, without a restart.
#include <signal.h>
#include <sys/stat.h>

#include <grpcpp/grpcpp.h>

#include <memory>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "hsm/key_store.h"
#include "hsm/module.h"
#include "hsm/pin.h"
#include "hsm/session_pool.h"
#include "hsm/token_uri.h"
#include "rotation/key_state.h"
#include "rotation/scope_keys.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "signet/v1/signer.grpc.pb.h"
#include "tests/testing/p11kit_server.h"
#include "tests/testing/process.h"
#include "tests/testing/signetd_process.h"
#include "tests/testing/test_bed.h"

namespace signet {
namespace {

using ::grpc::health::v1::Health;
using ::grpc::health::v1::HealthCheckRequest;
using ::grpc::health::v1::HealthCheckResponse;
using ::testing::HasSubstr;
using ::testing::Not;
using testing::RunProcess;
using testing::RunResult;
using testing::SignetdOptions;
using testing::SignetdProcess;
using testing::SpawnOptions;

constexpr absl::Duration kStartTimeout = absl::Seconds(90);
constexpr char kIssuer[] = "https://short.signet.test";
constexpr char kTenant[] = "spiffe://signet.test/tenant/idp";
// Long enough for signetd to start and sign once on a busy machine.
constexpr absl::Duration kActiveFor = absl::Seconds(25);
constexpr absl::Duration kRetiredFor = absl::Seconds(10);

// Creates the scope's first key with a schedule of seconds, through the
// same p11-kit boundary signetd uses; returns its record.
absl::StatusOr<rotation::KeyRecord> CreateShortLivedKey(
    testing::SignetTestBed& bed) {
  hsm::ModuleOptions module;
  module.module_path = testing::P11KitServer::client_module_path();
  module.p11_kit_server_address = bed.hsm().address();
  auto connector = hsm::P11KitConnector::Create(module);
  if (!connector.ok()) return connector.status();
  auto uri = hsm::TokenUri::Parse(bed.token().token_uri());
  if (!uri.ok()) return uri.status();
  hsm::SessionPoolOptions options;
  options.connections = 1;
  auto pool = hsm::SessionPool::Create(std::move(*connector), std::move(*uri),
                                       hsm::Pin::FromBytes(
                                           bed.token().user_pin()),
                                       options);
  if (!pool.ok()) return pool.status();
  hsm::Pkcs11KeyStore store(pool->get());
  rotation::ScopeKeyPolicy policy;
  policy.scope = "short";
  policy.algorithm = "ES256";
  policy.key_spec.algorithm = hsm::SignatureAlgorithm::kEcdsaP256Sha256;
  policy.timings.rotation_period = kActiveFor;
  policy.timings.publish_grace = kRetiredFor;
  policy.timings.destroy_delay = absl::Hours(1);
  auto key = rotation::EnsureActiveKey(store, policy, {}, absl::Now(),
                                       /*may_write=*/true);
  if (!key.ok()) return key.status();
  return key->record;
}

HealthCheckResponse::ServingStatus Health(
    const std::shared_ptr<grpc::Channel>& channel, const std::string& service) {
  auto stub = Health::NewStub(channel);
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
  HealthCheckRequest req;
  req.set_service(service);
  HealthCheckResponse resp;
  return stub->Check(&ctx, req, &resp).ok() ? resp.status()
                                            : HealthCheckResponse::UNKNOWN;
}

// Waits (bounded) until scope/short's health entry is `want`.
bool AwaitScopeHealth(const std::shared_ptr<grpc::Channel>& channel,
                      HealthCheckResponse::ServingStatus want) {
  for (int i = 0; i < 50; ++i) {
    if (Health(channel, "scope/short") == want) return true;
    absl::SleepFor(absl::Milliseconds(100));
  }
  return false;
}

class KeyScheduleTest : public ::testing::Test {
 protected:
  void SetUp() override {
    signal(SIGPIPE, SIG_IGN);
    auto bed = testing::SignetTestBed::Create();
    ASSERT_TRUE(bed.ok()) << bed.status();
    bed_ = std::move(*bed);
    auto tenant = bed_->ca().Issue(
        "idp", {.uri_sans = {kTenant}, .eku = "clientAuth"});
    ASSERT_TRUE(tenant.ok()) << tenant.status();
    tenant_ = *tenant;
  }

  std::string Config() const {
    const std::string audit_dir = bed_->token().dir() + "/audit";
    mkdir(audit_dir.c_str(), 0700);
    return absl::StrCat(
        "grpc_listen_address: \"127.0.0.1:0\"\n", bed_->HsmConfig(),
        "scopes { name: \"short\" audience_class: CONSUMER purpose: JWT "
        "issuer: \"",
        kIssuer, "\" algorithm: ES256 }\n", bed_->TlsConfig(),
        "tenants { identity: \"uri:", kTenant, "\" scopes: \"short\" }\n",
        "audit_log_path: \"", audit_dir, "/audit.log\"\n",
        "http { listen_address: \"127.0.0.1:0\" public_base_url: "
        "\"https://keys.signet.test\" }\n");
  }

  grpc::Status SignJwt(v1::Signer::Stub& stub) {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() +
                     std::chrono::seconds(20));
    v1::SignJwtRequest req;
    req.set_scope("short");
    const int64_t now = absl::ToUnixSeconds(absl::Now());
    req.set_claims_json(absl::StrCat("{\"iss\":\"", kIssuer, "\",\"iat\":",
                                     now, ",\"exp\":", now + 60, "}"));
    v1::SignJwtResponse resp;
    return stub.SignJwt(&ctx, req, &resp);
  }

  std::string GrpcJwks(v1::Signer::Stub& stub) {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() +
                     std::chrono::seconds(20));
    v1::GetJwksRequest req;
    req.set_scope("short");
    v1::GetJwksResponse resp;
    grpc::Status st = stub.GetJwks(&ctx, req, &resp);
    EXPECT_TRUE(st.ok()) << st.error_message();
    return resp.jwks_json();
  }

  static std::string HttpGet(int port, absl::string_view path) {
    SpawnOptions options;
    options.argv = {"curl", "-sS", "--max-time", "20",
                    absl::StrCat("http://127.0.0.1:", port, path)};
    auto r = RunProcess(options, absl::Seconds(30));
    EXPECT_TRUE(r.ok() && r->succeeded()) << (r.ok() ? r->output : "");
    return r.ok() ? r->output : "";
  }

  std::unique_ptr<testing::SignetTestBed> bed_;
  testing::TestCa::Issued tenant_;
};

TEST_F(KeyScheduleTest, SigningStopsAtRetireAndTheKeyLeavesTheSetsAtUnpublish) {
  auto record = CreateShortLivedKey(*bed_);
  ASSERT_TRUE(record.ok()) << record.status();
  const absl::Time retire_at = rotation::TimeFromProto(record->retire_at());
  const absl::Time unpublish_at =
      rotation::TimeFromProto(record->unpublish_at());
  const std::string kid = record->kid();
  ASSERT_FALSE(kid.empty());

  SignetdOptions options;
  options.binary = SIGNETD_BINARY;
  options.config_text = Config();
  auto signetd = SignetdProcess::Start(bed_->token().dir(), options);
  ASSERT_TRUE(signetd.ok()) << signetd.status();
  ASSERT_TRUE((*signetd)->WaitForOutput("signetd ready", kStartTimeout).ok())
      << (*signetd)->Output();
  auto grpc_port = (*signetd)->WaitForPort(kStartTimeout);
  ASSERT_TRUE(grpc_port.ok()) << grpc_port.status();
  const std::string out = (*signetd)->Output();
  // signetd took the key on the token; it did not make another.
  EXPECT_THAT(out, HasSubstr(absl::StrCat("kid ", kid)));
  auto http = (*signetd)->WaitForHttpPort(kStartTimeout);
  ASSERT_TRUE(http.ok()) << http.status();
  const int http_port = *http;

  grpc::SslCredentialsOptions ssl;
  ssl.pem_root_certs = bed_->ca().cert_pem();
  ssl.pem_private_key = tenant_.key_pem;
  ssl.pem_cert_chain = tenant_.cert_pem;
  auto channel = grpc::CreateChannel(absl::StrCat("localhost:", *grpc_port),
                                     grpc::SslCredentials(ssl));
  auto stub = v1::Signer::NewStub(channel);

  // ACTIVE: signs, and is published.
  grpc::Status active = SignJwt(*stub);
  if (absl::Now() < retire_at - absl::Seconds(1)) {
    EXPECT_TRUE(active.ok()) << active.error_message();
  } else {
    GTEST_SKIP() << "signetd took too long to start to see the key active";
  }
  EXPECT_THAT(HttpGet(http_port, "/consumer/.well-known/jwks.json"),
              HasSubstr(kid));

  // RETIRED: no longer signs, still published (its tokens must verify).
  absl::SleepFor(retire_at - absl::Now() + absl::Milliseconds(200));
  // FAILED_PRECONDITION, not UNAVAILABLE: retrying cannot help. Health says
  // so for this scope alone, in one log line.
  grpc::Status retired = SignJwt(*stub);
  EXPECT_EQ(retired.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_THAT(retired.error_message(), HasSubstr("no active key"));
  EXPECT_TRUE(AwaitScopeHealth(channel, HealthCheckResponse::NOT_SERVING))
      << (*signetd)->Output();
  EXPECT_EQ(Health(channel, ""), HealthCheckResponse::SERVING);
  EXPECT_THAT((*signetd)->Output(),
              HasSubstr("health scope/short: NOT_SERVING: no key of this "
                        "scope may sign now"));
  if (absl::Now() < unpublish_at - absl::Seconds(1)) {
    EXPECT_THAT(HttpGet(http_port, "/scopes/short/.well-known/jwks.json"),
                HasSubstr(kid));
    EXPECT_THAT(GrpcJwks(*stub), HasSubstr(kid));
  }

  // UNPUBLISHED: gone from every set, over HTTP and gRPC alike, without a
  // restart (the publisher rebuilds at the boundary).
  absl::SleepFor(unpublish_at - absl::Now());
  std::string class_set;
  for (int i = 0; i < 50; ++i) {
    class_set = HttpGet(http_port, "/consumer/.well-known/jwks.json");
    if (!absl::StrContains(class_set, kid)) break;
    absl::SleepFor(absl::Milliseconds(100));
  }
  EXPECT_THAT(class_set, Not(HasSubstr(kid)));
  EXPECT_EQ(class_set, R"({"keys":[]})");
  const std::string scope_set =
      HttpGet(http_port, "/scopes/short/.well-known/jwks.json");
  EXPECT_EQ(scope_set, R"({"keys":[]})");
  EXPECT_EQ(GrpcJwks(*stub), scope_set);
  EXPECT_THAT((*signetd)->Output(), HasSubstr("published key sets rebuilt"));
  EXPECT_EQ(kill((*signetd)->pid(), 0), 0) << "signetd is gone";
}

}  // namespace
}  // namespace signet
