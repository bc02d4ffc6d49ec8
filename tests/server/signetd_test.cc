// signetd as a real process, against SoftHSM2 behind a real `p11-kit server`.
#include <grpcpp/grpcpp.h>
#include <signal.h>
#include <sys/stat.h>

#include <filesystem>
#include <fstream>
#include <memory>
#include <regex>
#include <set>
#include <sstream>
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "absl/time/clock.h"
#include "gmock/gmock.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "gtest/gtest.h"
#include "tests/testing/p11kit_server.h"
#include "tests/testing/process.h"
#include "tests/testing/signetd_process.h"
#include "tests/testing/temp_token.h"

namespace signet {
namespace {

using ::grpc::health::v1::Health;
using ::grpc::health::v1::HealthCheckRequest;
using ::grpc::health::v1::HealthCheckResponse;
using ::testing::HasSubstr;
using ::testing::Not;
using testing::P11KitServer;
using testing::SignetdOptions;
using testing::SignetdProcess;
using testing::TempToken;

constexpr absl::Duration kStartTimeout = absl::Seconds(60);
constexpr char kPlaintext[] = "--insecure_plaintext";

// Plain text (--insecure_plaintext) here: these tests are about the HSM
// side; signer_test covers mTLS.
std::string ConfigFor(const TempToken& token, const P11KitServer& server,
                      absl::string_view extra_hsm = "") {
  std::string audit_dir = token.dir() + "/audit";
  mkdir(audit_dir.c_str(), 0777);
  chmod(audit_dir.c_str(), 0777);
  return absl::StrCat("audit_log_path: \"", audit_dir, "/audit.log\"\n",
                      R"pb(
                        grpc_listen_address: "127.0.0.1:0"
                        hsm { module_path: ")pb",
                      P11KitServer::client_module_path(),
                      R"pb("
                           p11_kit_server_address: ")pb",
                      server.address(), R"pb("
                                             token_uri: ")pb",
                      token.token_uri(), R"pb("
                                              pin_file: ")pb",
                      token.pin_file_path(), R"pb("
                      )pb",
                      extra_hsm, R"pb(
    }
    scopes {
  name: "demo-consumer"
  audience_class: CONSUMER
  purpose: JWT
  issuer: "https://consumer.signet.example"
  algorithm: ES256
}
scopes {
  name: "demo-enterprise"
  audience_class: ENTERPRISE
  purpose: JWT
  issuer: "https://enterprise.signet.example"
  algorithm: RS256
}
)pb");
}

// The kids signetd printed, by scope.
std::map<std::string, std::string> PrintedKids(const std::string& output) {
  std::map<std::string, std::string> kids;
  std::regex re(
      R"(scope ([a-z0-9._-]+): key generation \d+ kid ([A-Za-z0-9_-]+))");
  for (std::sregex_iterator it(output.begin(), output.end(), re), end;
       it != end; ++it) {
    kids[(*it)[1]] = (*it)[2];
  }
  return kids;
}

HealthCheckResponse::ServingStatus Health(int port, const std::string& service,
                                          grpc::StatusCode* code = nullptr) {
  auto channel = grpc::CreateChannel(absl::StrCat("127.0.0.1:", port),
                                     grpc::InsecureChannelCredentials());
  auto stub = Health::NewStub(channel);
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
  HealthCheckRequest req;
  req.set_service(service);
  HealthCheckResponse resp;
  grpc::Status st = stub->Check(&ctx, req, &resp);
  if (code != nullptr) *code = st.error_code();
  if (!st.ok()) return HealthCheckResponse::UNKNOWN;
  return resp.status();
}

// Polls until `service` reports `want` (bounded).
bool AwaitHealth(int port, const std::string& service,
                 HealthCheckResponse::ServingStatus want) {
  const absl::Time deadline = absl::Now() + absl::Seconds(60);
  while (absl::Now() < deadline) {
    if (Health(port, service) == want) return true;
    absl::SleepFor(absl::Milliseconds(200));
  }
  return false;
}

class SignetdTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto token = TempToken::Create();
    ASSERT_TRUE(token.ok()) << token.status();
    token_ = std::move(*token);
    auto server = P11KitServer::Start(*token_);
    ASSERT_TRUE(server.ok()) << server.status();
    hsm_ = std::move(*server);
  }

  absl::StatusOr<std::unique_ptr<SignetdProcess>> StartSignetd(
      std::string config, std::vector<std::string> flags = {}) {
    SignetdOptions options;
    options.binary = SIGNETD_BINARY;
    options.config_text = std::move(config);
    options.flags = std::move(flags);
    options.flags.push_back(kPlaintext);
    return SignetdProcess::Start(token_->dir(), options);
  }

  std::unique_ptr<TempToken> token_;
  std::unique_ptr<P11KitServer> hsm_;
};

TEST_F(SignetdTest, CreatesCheckedKeysPerScopeAndServesHealth) {
  auto signetd = StartSignetd(ConfigFor(*token_, *hsm_));
  ASSERT_TRUE(signetd.ok()) << signetd.status();
  auto port = (*signetd)->WaitForPort(kStartTimeout);
  ASSERT_TRUE(port.ok()) << port.status();
  ASSERT_TRUE((*signetd)->WaitForOutput("signetd ready", kStartTimeout).ok())
      << (*signetd)->Output();
  std::string out = (*signetd)->Output();
  auto kids = PrintedKids(out);
  ASSERT_EQ(kids.size(), 2u) << out;
  EXPECT_NE(kids["demo-consumer"], kids["demo-enterprise"]);
  EXPECT_THAT(out, HasSubstr("BEGIN PUBLIC KEY"));
  EXPECT_THAT(out, Not(HasSubstr(token_->user_pin())));

  EXPECT_EQ(Health(*port, ""), HealthCheckResponse::SERVING);
  EXPECT_EQ(Health(*port, "scope/demo-consumer"), HealthCheckResponse::SERVING);
  EXPECT_EQ(Health(*port, "scope/demo-enterprise"),
            HealthCheckResponse::SERVING);
  grpc::StatusCode code;
  Health(*port, "scope/no-such-scope", &code);
  EXPECT_EQ(code, grpc::StatusCode::NOT_FOUND);

  // Through the boundary: SoftHSM is never mapped into signetd.
  std::ifstream maps(absl::StrCat("/proc/", (*signetd)->pid(), "/maps"));
  std::stringstream buf;
  buf << maps.rdbuf();
  EXPECT_THAT(buf.str(), HasSubstr("p11-kit-client.so"));
  EXPECT_THAT(buf.str(), Not(HasSubstr("libsofthsm")));

  auto code_on_stop = (*signetd)->Stop(SIGTERM, absl::Seconds(30));
  ASSERT_TRUE(code_on_stop.ok()) << code_on_stop.status();
  EXPECT_EQ(*code_on_stop, 0);
  EXPECT_THAT((*signetd)->Output(), HasSubstr("signetd stopped"));
}

TEST_F(SignetdTest, ARestartReusesTheKeysInTheToken) {
  std::map<std::string, std::string> first;
  {
    auto signetd = StartSignetd(ConfigFor(*token_, *hsm_));
    ASSERT_TRUE(signetd.ok());
    ASSERT_TRUE((*signetd)->WaitForOutput("signetd ready", kStartTimeout).ok())
        << (*signetd)->Output();
    first = PrintedKids((*signetd)->Output());
    ASSERT_TRUE((*signetd)->Stop(SIGINT, absl::Seconds(30)).ok());
  }
  // The HSM restarts too: the keys live in the token, not in a process.
  ASSERT_TRUE(hsm_->Restart().ok());
  auto signetd = StartSignetd(ConfigFor(*token_, *hsm_));
  ASSERT_TRUE(signetd.ok());
  ASSERT_TRUE((*signetd)->WaitForOutput("signetd ready", kStartTimeout).ok())
      << (*signetd)->Output();
  EXPECT_EQ(PrintedKids((*signetd)->Output()), first);
}

// Replicas sharing one token: one writes keys, the others never do. A
// replica with never_create_keys refuses to start on a token without the
// scopes' keys (naming the scope and what to do), and once the writer has
// created them it serves the very same keys, alongside the writer.
TEST_F(SignetdTest, AReplicaThatNeverCreatesKeysUsesTheWritersKeys) {
  auto replica_config = [&](absl::string_view name) {
    std::string config = ConfigFor(*token_, *hsm_);
    const std::string audit = token_->dir() + "/audit/audit.log";
    config.replace(config.find(audit), audit.size(),
                   absl::StrCat(token_->dir(), "/audit/", name, ".log"));
    return absl::StrCat(config, "never_create_keys: true\n");
  };
  {
    auto early = StartSignetd(replica_config("early"));
    ASSERT_TRUE(early.ok()) << early.status();
    auto code = (*early)->WaitExit(kStartTimeout);
    ASSERT_TRUE(code.ok()) << code.status() << (*early)->Output();
    EXPECT_NE(*code, 0);
    EXPECT_THAT((*early)->Output(), HasSubstr("never_create_keys"));
    EXPECT_THAT((*early)->Output(),
                HasSubstr("start the replica that writes keys first"));
    EXPECT_THAT((*early)->Output(), Not(HasSubstr("key generation")));
  }
  auto writer = StartSignetd(ConfigFor(*token_, *hsm_));
  ASSERT_TRUE(writer.ok());
  ASSERT_TRUE((*writer)->WaitForOutput("signetd ready", kStartTimeout).ok())
      << (*writer)->Output();
  const auto writer_kids = PrintedKids((*writer)->Output());
  ASSERT_EQ(writer_kids.size(), 2u) << (*writer)->Output();

  auto replica = StartSignetd(replica_config("replica"));
  ASSERT_TRUE(replica.ok());
  ASSERT_TRUE((*replica)->WaitForOutput("signetd ready", kStartTimeout).ok())
      << (*replica)->Output();
  EXPECT_EQ(PrintedKids((*replica)->Output()), writer_kids);
  auto port = (*replica)->WaitForPort(kStartTimeout);
  ASSERT_TRUE(port.ok());
  EXPECT_EQ(Health(*port, "scope/demo-consumer"), HealthCheckResponse::SERVING);
}

// The configured schedule is the one recorded with a new key.
TEST_F(SignetdTest, ANewKeyGetsTheConfiguredSchedule) {
  std::string config = ConfigFor(*token_, *hsm_);
  const std::string es256 = "algorithm: ES256";
  config.replace(config.find(es256), es256.size(),
                 "algorithm: ES256 rotation_period_seconds: 7200 "
                 "publish_grace_seconds: 5400");
  const absl::Time before = absl::Now();
  auto signetd = StartSignetd(config);
  ASSERT_TRUE(signetd.ok());
  ASSERT_TRUE((*signetd)->WaitForOutput("signetd ready", kStartTimeout).ok())
      << (*signetd)->Output();
  const absl::Time after = absl::Now();
  std::smatch m;
  const std::string out = (*signetd)->Output();
  ASSERT_TRUE(std::regex_search(
      out, m,
      std::regex(
          R"(scope demo-consumer: key generation 1 kid \S+ checked and )"
          R"(active; signs until (\S+), published until ([^;\s]+); standby \S+, signs from (\S+))")))
      << out;
  absl::Time retire, unpublish;
  std::string error;
  ASSERT_TRUE(absl::ParseTime(absl::RFC3339_full, m[1].str(), &retire, &error))
      << error;
  ASSERT_TRUE(
      absl::ParseTime(absl::RFC3339_full, m[2].str(), &unpublish, &error))
      << error;
  // Printed to the second.
  EXPECT_GE(retire, absl::FromUnixSeconds(absl::ToUnixSeconds(before)) +
                        absl::Hours(2));
  EXPECT_LE(retire, after + absl::Hours(2));
  EXPECT_EQ(unpublish - retire, absl::Seconds(5400));
  // The standby, published from now, signs when generation 1 retires.
  absl::Time standby_from;
  ASSERT_TRUE(
      absl::ParseTime(absl::RFC3339_full, m[3].str(), &standby_from, &error))
      << error;
  EXPECT_EQ(standby_from, retire);
}

TEST_F(SignetdTest, HealthFollowsTheHsmAcrossAKillAndARestart) {
  auto signetd = StartSignetd(ConfigFor(*token_, *hsm_));
  ASSERT_TRUE(signetd.ok());
  auto port = (*signetd)->WaitForPort(kStartTimeout);
  ASSERT_TRUE(port.ok());
  ASSERT_TRUE((*signetd)->WaitForOutput("signetd ready", kStartTimeout).ok());
  ASSERT_TRUE(hsm_->Kill().ok());
  EXPECT_TRUE(AwaitHealth(*port, "", HealthCheckResponse::NOT_SERVING))
      << (*signetd)->Output();
  EXPECT_EQ(Health(*port, "scope/demo-consumer"),
            HealthCheckResponse::NOT_SERVING);
  ASSERT_TRUE(hsm_->Restart().ok());
  EXPECT_TRUE(AwaitHealth(*port, "", HealthCheckResponse::SERVING))
      << (*signetd)->Output();
  EXPECT_TRUE(
      AwaitHealth(*port, "scope/demo-consumer", HealthCheckResponse::SERVING));
  // Still the same process: it recovered rather than crashed; one line for
  // each change.
  const std::string out = (*signetd)->Output();
  EXPECT_THAT(out, HasSubstr("health: NOT_SERVING: the HSM is unreachable"));
  EXPECT_THAT(out.substr(out.find("health: NOT_SERVING: the HSM")),
              HasSubstr("health: SERVING"));
}

TEST_F(SignetdTest, AStalledHsmTurnsHealthNotServingAndNeverBlocksAStop) {
  auto signetd = StartSignetd(ConfigFor(*token_, *hsm_));
  ASSERT_TRUE(signetd.ok());
  auto port = (*signetd)->WaitForPort(kStartTimeout);
  ASSERT_TRUE(port.ok());
  ASSERT_TRUE((*signetd)->WaitForOutput("signetd ready", kStartTimeout).ok());
  // SIGSTOP the whole HSM group: calls block forever, nothing errors.
  ASSERT_TRUE(hsm_->Stall().ok());
  EXPECT_TRUE(AwaitHealth(*port, "", HealthCheckResponse::NOT_SERVING))
      << (*signetd)->Output();
  EXPECT_THAT((*signetd)->Output(), HasSubstr("stalled"));
  // SIGTERM still stops it, although a PKCS#11 call is stuck.
  auto code = (*signetd)->Stop(SIGTERM, absl::Seconds(60));
  ASSERT_TRUE(code.ok()) << code.status();
  EXPECT_EQ(*code, 0);
  // A stop that takes long says which step it is in (the prober's call is
  // stuck for its 3 s).
  EXPECT_THAT((*signetd)->Output(), HasSubstr("stopping takes long: still"));
  ASSERT_TRUE(hsm_->Resume().ok());
}

// An eighth outside attack stalled the HSM and sent SIGTERM 0.1 s later,
// before health had seen the stall: the stop waited as long as the HSM
// stayed stalled, in the final audit checkpoint (signed in the HSM). Every
// step of a stop that calls the HSM is bounded.
TEST_F(SignetdTest, AStopRightAfterTheHsmStallsDoesNotWaitForIt) {
  auto signetd = StartSignetd(ConfigFor(*token_, *hsm_));
  ASSERT_TRUE(signetd.ok());
  ASSERT_TRUE((*signetd)->WaitForOutput("signetd ready", kStartTimeout).ok());
  ASSERT_TRUE(hsm_->Stall().ok());
  absl::SleepFor(absl::Milliseconds(100));
  ASSERT_EQ(kill((*signetd)->pid(), SIGTERM), 0);
  // The HSM stays stalled for far longer than any bounded stop takes.
  auto code = (*signetd)->WaitExit(absl::Seconds(40));
  ASSERT_TRUE(hsm_->Resume().ok());
  ASSERT_TRUE(code.ok()) << code.status() << "\n" << (*signetd)->Output();
  EXPECT_EQ(*code, 0);
  EXPECT_THAT((*signetd)->Output(), HasSubstr("stalled"));
}

TEST_F(SignetdTest, StartsNotServingWhileTheHsmIsDownAndComesUpWithIt) {
  ASSERT_TRUE(hsm_->Kill().ok());
  auto signetd = StartSignetd(ConfigFor(*token_, *hsm_));
  ASSERT_TRUE(signetd.ok());
  auto port = (*signetd)->WaitForPort(kStartTimeout);
  ASSERT_TRUE(port.ok()) << port.status();
  ASSERT_TRUE((*signetd)->WaitForOutput("HSM unavailable", kStartTimeout).ok())
      << (*signetd)->Output();
  EXPECT_EQ(Health(*port, ""), HealthCheckResponse::NOT_SERVING);
  ASSERT_TRUE(hsm_->Restart().ok());
  ASSERT_TRUE((*signetd)->WaitForOutput("signetd ready", kStartTimeout).ok())
      << (*signetd)->Output();
  EXPECT_TRUE(AwaitHealth(*port, "", HealthCheckResponse::SERVING));
}

TEST_F(SignetdTest, AWrongPinStopsStartupWithoutShowingAnyPin) {
  std::string pin_path = token_->dir() + "/wrong.pin";
  {
    std::ofstream out(pin_path);
    out << "definitely-wrong-pin\n";
  }
  chmod(pin_path.c_str(), 0600);
  std::string config = absl::StrReplaceAll(
      ConfigFor(*token_, *hsm_), {{token_->pin_file_path(), pin_path}});
  auto signetd = StartSignetd(config);
  ASSERT_TRUE(signetd.ok());
  auto code = (*signetd)->WaitExit(kStartTimeout);
  ASSERT_TRUE(code.ok()) << code.status();
  EXPECT_EQ(*code, 1);
  std::string out = (*signetd)->Output();
  EXPECT_THAT(out, HasSubstr("CKR_PIN_INCORRECT"));
  EXPECT_THAT(out, Not(HasSubstr("definitely-wrong-pin")));
  EXPECT_THAT(out, Not(HasSubstr(token_->user_pin())));
}

TEST_F(SignetdTest, AnInProcessModuleNeedsTheInsecureFlag) {
  std::string config = absl::StrReplaceAll(
      ConfigFor(*token_, *hsm_),
      {{P11KitServer::client_module_path(), TempToken::softhsm_module_path()}});
  auto refused = StartSignetd(config);
  ASSERT_TRUE(refused.ok());
  auto code = (*refused)->WaitExit(kStartTimeout);
  ASSERT_TRUE(code.ok());
  EXPECT_EQ(*code, 1);
  EXPECT_THAT((*refused)->Output(), HasSubstr("--insecure_in_process_module"));

  // With the flag it runs, and says loudly that it is insecure.
  ASSERT_TRUE(hsm_->Kill().ok());  // one writer to the token at a time
  SignetdOptions options;
  options.binary = SIGNETD_BINARY;
  options.config_text = config;
  options.flags = {"--insecure_in_process_module", kPlaintext};
  options.env = {{"SOFTHSM2_CONF", token_->conf_path()}};
  auto signetd = SignetdProcess::Start(token_->dir(), options);
  ASSERT_TRUE(signetd.ok());
  ASSERT_TRUE((*signetd)->WaitForOutput("signetd ready", kStartTimeout).ok())
      << (*signetd)->Output();
  EXPECT_THAT((*signetd)->Output(), HasSubstr("INSECURE"));
}

TEST_F(SignetdTest, ABadConfigurationNamesTheField) {
  std::string config = absl::StrReplaceAll(
      ConfigFor(*token_, *hsm_),
      {{"https://enterprise.signet.example", "http://enterprise.example"}});
  auto signetd = StartSignetd(config);
  ASSERT_TRUE(signetd.ok());
  auto code = (*signetd)->WaitExit(kStartTimeout);
  ASSERT_TRUE(code.ok());
  EXPECT_EQ(*code, 1);
  EXPECT_THAT((*signetd)->Output(),
              HasSubstr("scopes[1] (demo-enterprise).issuer"));
}

// The production arrangement: HSM as signet-hsm, signetd as signet.
TEST(SignetdAsServiceUsersTest, RunsAsSignetAndIsNotDumpable) {
  testing::TempTokenOptions token_options;
  token_options.owner_user = "signet-hsm";
  token_options.pin_file_user = "signet";
  auto token = TempToken::Create(token_options);
  ASSERT_TRUE(token.ok()) << token.status()
                          << " (run scripts/setup as root to create the users)";
  testing::P11KitServerOptions server_options;
  server_options.run_as_user = "signet-hsm";
  server_options.allowed_user = "signet";
  auto hsm = P11KitServer::Start(**token, server_options);
  ASSERT_TRUE(hsm.ok()) << hsm.status();
  // A copy signet can execute: the build tree may sit under a home
  // directory that signet cannot traverse (as scripts/run does too).
  const std::string binary = (*token)->dir() + "/signetd";
  std::filesystem::copy_file(SIGNETD_BINARY, binary);
  chmod(binary.c_str(), 0755);
  SignetdOptions options;
  options.binary = binary;
  options.config_text = ConfigFor(**token, **hsm);
  options.flags = {kPlaintext};
  options.as_user = "signet";
  auto signetd = SignetdProcess::Start((*token)->dir(), options);
  ASSERT_TRUE(signetd.ok()) << signetd.status();
  ASSERT_TRUE((*signetd)->WaitForOutput("signetd ready", kStartTimeout).ok())
      << (*signetd)->Output();
  // A non-dumpable process's /proc entries belong to root, not to its user.
  struct stat st;
  ASSERT_EQ(
      stat(absl::StrCat("/proc/", (*signetd)->pid(), "/maps").c_str(), &st), 0);
  EXPECT_EQ(st.st_uid, 0u);
  auto signet_user = testing::LookupUser("signet");
  ASSERT_TRUE(signet_user.ok());
  std::ifstream status(absl::StrCat("/proc/", (*signetd)->pid(), "/status"));
  std::string line;
  bool uid_checked = false;
  while (std::getline(status, line)) {
    if (line.rfind("Uid:", 0) == 0) {
      EXPECT_THAT(line, HasSubstr(absl::StrCat("\t", signet_user->uid, "\t")));
      uid_checked = true;
    }
  }
  EXPECT_TRUE(uid_checked);
  // Keys written through the socket belong to the HSM user.
  auto hsm_user = testing::LookupUser("signet-hsm");
  ASSERT_TRUE(hsm_user.ok());
  auto find =
      testing::RunProcess({.argv = {"find", (*token)->tokens_dir(), "-type",
                                    "f", "!", "-user", "signet-hsm"},
                           .new_process_group = true});
  ASSERT_TRUE(find.ok());
  EXPECT_EQ(find->output, "");
}

}  // namespace
}  // namespace signet
