// signetd's HTTP endpoint over TLS, end to end: SoftHSM2 behind a real
// `p11-kit server`, signetd as a real process listening for HTTPS on a
// non-loopback address (0.0.0.0, which plain HTTP may not use), and real TLS
// clients: curl for HTTP, `openssl s_client` for protocol versions.
#include <grpcpp/grpcpp.h>
#include <signal.h>
#include <sys/stat.h>

#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "signet/v1/signer.grpc.pb.h"
#include "tests/testing/pki.h"
#include "tests/testing/process.h"
#include "tests/testing/signetd_process.h"
#include "tests/testing/test_bed.h"

namespace signet {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;
using testing::RunProcess;
using testing::RunResult;
using testing::SignetdOptions;
using testing::SignetdProcess;
using testing::SpawnOptions;

constexpr absl::Duration kStartTimeout = absl::Seconds(90);
constexpr char kConsumerPath[] = "/consumer/.well-known/jwks.json";
constexpr char kIssuer[] = "https://consumer.signet.test";
constexpr char kTenant[] = "spiffe://signet.test/tenant/idp";

class JwksHttpsTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    signal(SIGPIPE, SIG_IGN);
    auto bed = testing::SignetTestBed::Create();
    ASSERT_TRUE(bed.ok()) << bed.status();
    bed_ = bed->release();
    auto tenant =
        bed_->ca().Issue("idp", {.uri_sans = {kTenant}, .eku = "clientAuth"});
    ASSERT_TRUE(tenant.ok()) << tenant.status();
    tenant_ = new testing::TestCa::Issued(*tenant);
    audit_dir_ = bed_->token().dir() + "/audit";
    mkdir(audit_dir_.c_str(), 0700);
    auto started = StartSignetd(bed_->server_cert().cert_path,
                                bed_->server_cert().key_path);
    ASSERT_TRUE(started.ok()) << started.status();
    signetd_ = started->release();
    ASSERT_TRUE(signetd_->WaitForOutput("signetd ready", kStartTimeout).ok())
        << signetd_->Output();
    absl::StatusOr<int> port = signetd_->WaitForHttpPort(kStartTimeout);
    ASSERT_TRUE(port.ok()) << port.status();
    port_ = *port;
    EXPECT_THAT(signetd_->Output(),
                HasSubstr("JWKS HTTP listening on 0.0.0.0:"));
    EXPECT_THAT(signetd_->Output(), HasSubstr("(TLS;"));
  }

  static void TearDownTestSuite() {
    delete signetd_;
    signetd_ = nullptr;
    delete tenant_;
    delete bed_;
  }

  // Each start has its own audit log (one signetd per audit file).
  static std::string Config(absl::string_view cert_path,
                            absl::string_view key_path) {
    static int starts = 0;
    ++starts;
    return absl::StrCat(
        "grpc_listen_address: \"127.0.0.1:0\"\n", bed_->HsmConfig(),
        "scopes { name: \"consumer\" audience_class: CONSUMER purpose: JWT "
        "issuer: \"",
        kIssuer, "\" algorithm: ES256 }\n",
        "tenants { identity: \"uri:", kTenant, "\" scopes: \"consumer\" }\n",
        bed_->TlsConfig(), "audit_log_path: \"", audit_dir_, "/audit-", starts,
        ".log\"\n",
        "http { listen_address: \"0.0.0.0:0\" public_base_url: "
        "\"https://keys.signet.test\" tls_cert_file: \"",
        cert_path, "\" tls_key_file: \"", key_path, "\" }\n");
  }

  static absl::StatusOr<std::unique_ptr<SignetdProcess>> StartSignetd(
      absl::string_view cert_path, absl::string_view key_path) {
    SignetdOptions options;
    options.binary = SIGNETD_BINARY;
    options.config_text = Config(cert_path, key_path);
    return SignetdProcess::Start(bed_->token().dir(), options);
  }

  static RunResult Run(std::vector<std::string> argv) {
    SpawnOptions options;
    options.argv = std::move(argv);
    auto result = RunProcess(options, absl::Seconds(60));
    EXPECT_TRUE(result.ok()) << result.status();
    return result.ok() ? *result : RunResult{};
  }

  // curl over HTTPS, trusting the test CA; -i prints the status line and
  // headers before the body.
  static RunResult Curl(absl::string_view host, absl::string_view path,
                        std::vector<std::string> extra = {}) {
    std::vector<std::string> argv = {
        "curl",
        "-sS",
        "-i",
        "--max-time",
        "20",
        "--cacert",
        bed_->ca().cert_path(),
        absl::StrCat("https://", host, ":", port_, path)};
    argv.insert(argv.end() - 1, extra.begin(), extra.end());
    return Run(std::move(argv));
  }

  // A TLS handshake with one protocol version; true when it completes.
  static bool Handshake(absl::string_view version_flag,
                        std::vector<std::string> extra = {}) {
    std::vector<std::string> argv = {"openssl",
                                     "s_client",
                                     "-connect",
                                     absl::StrCat("127.0.0.1:", port_),
                                     "-servername",
                                     "localhost",
                                     "-CAfile",
                                     bed_->ca().cert_path(),
                                     "-verify_return_error",
                                     std::string(version_flag)};
    argv.insert(argv.end(), extra.begin(), extra.end());
    RunResult r = Run(std::move(argv));  // stdin is /dev/null: EOF at once
    return r.exit_code == 0 &&
           absl::StrContains(r.output, "Verify return code: 0 (ok)");
  }

  static inline testing::SignetTestBed* bed_ = nullptr;
  static inline SignetdProcess* signetd_ = nullptr;
  static inline testing::TestCa::Issued* tenant_ = nullptr;
  static inline std::string audit_dir_;
  static inline int port_ = 0;
};

TEST_F(JwksHttpsTest, ServesTheKeySetOverVerifiedTls) {
  RunResult r = Curl("localhost", kConsumerPath);
  ASSERT_TRUE(r.succeeded()) << r.output;
  EXPECT_THAT(r.output, HasSubstr("HTTP/1.1 200"));
  EXPECT_THAT(r.output, HasSubstr("Content-Type: application/json"));
  EXPECT_THAT(r.output, HasSubstr("Cache-Control: public, max-age=300"));
  size_t body_at = r.output.find("\r\n\r\n");
  ASSERT_NE(body_at, std::string::npos) << r.output;
  nlohmann::json jwks =
      nlohmann::json::parse(r.output.substr(body_at + 4), nullptr, false);
  ASSERT_FALSE(jwks.is_discarded()) << r.output;
  // The active key and its standby.
  ASSERT_EQ(jwks["keys"].size(), 2u) << r.output;
  EXPECT_EQ(jwks["keys"][0]["alg"], "ES256");
  EXPECT_EQ(jwks["keys"][1]["alg"], "ES256");
}

TEST_F(JwksHttpsTest, EtagAnd304WorkOverTls) {
  RunResult first = Curl("127.0.0.1", kConsumerPath);
  ASSERT_TRUE(first.succeeded()) << first.output;
  std::string etag;
  for (absl::string_view line : absl::StrSplit(first.output, "\r\n")) {
    if (absl::StartsWithIgnoreCase(line, "ETag: ")) {
      etag = std::string(line.substr(6));
    }
  }
  ASSERT_FALSE(etag.empty()) << first.output;
  RunResult again = Curl("127.0.0.1", kConsumerPath,
                         {"-H", absl::StrCat("If-None-Match: ", etag)});
  ASSERT_TRUE(again.succeeded()) << again.output;
  EXPECT_THAT(again.output, HasSubstr("HTTP/1.1 304"));
}

TEST_F(JwksHttpsTest, AClientThatDoesNotTrustTheCaIsRefused) {
  // No --cacert: the system store does not hold the test CA.
  RunResult r = Run({"curl", "-sS", "--max-time", "20",
                     absl::StrCat("https://localhost:", port_, kConsumerPath)});
  EXPECT_FALSE(r.succeeded()) << r.output;
  EXPECT_THAT(r.output, Not(HasSubstr("\"keys\"")));
}

TEST_F(JwksHttpsTest, PlainHttpOnTheTlsPortGetsNoDocument) {
  RunResult r = Run({"curl", "-sS", "--max-time", "20",
                     absl::StrCat("http://127.0.0.1:", port_, kConsumerPath)});
  EXPECT_FALSE(r.succeeded() && absl::StrContains(r.output, "\"keys\""))
      << r.output;
  // And the server goes on serving TLS.
  RunResult ok = Curl("localhost", kConsumerPath);
  EXPECT_TRUE(ok.succeeded()) << ok.output;
}

TEST_F(JwksHttpsTest, Tls12And13AreAcceptedOlderVersionsAreNot) {
  EXPECT_TRUE(Handshake("-tls1_3"));
  EXPECT_TRUE(Handshake("-tls1_2"));
  // The client is told to allow TLS 1.1 (security level 0 lets OpenSSL 3
  // offer it), so a refusal is the server's.
  EXPECT_FALSE(Handshake("-tls1_1", {"-cipher", "DEFAULT@SECLEVEL=0"}));
  EXPECT_FALSE(Handshake("-tls1", {"-cipher", "DEFAULT@SECLEVEL=0"}));
}

// The reference verifier's command fetches the scope's key set from
// signetd's own HTTPS endpoint, trusting the CA given with --ca-file.
TEST_F(JwksHttpsTest, SignetVerifyChecksATokenAgainstTheHttpsKeySet) {
  int grpc_port = 0;
  auto port = signetd_->WaitForPort(kStartTimeout);
  ASSERT_TRUE(port.ok()) << port.status();
  grpc_port = *port;
  grpc::SslCredentialsOptions ssl;
  ssl.pem_root_certs = bed_->ca().cert_pem();
  ssl.pem_private_key = tenant_->key_pem;
  ssl.pem_cert_chain = tenant_->cert_pem;
  auto stub = v1::Signer::NewStub(grpc::CreateChannel(
      absl::StrCat("localhost:", grpc_port), grpc::SslCredentials(ssl)));
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(20));
  v1::SignJwtRequest req;
  req.set_scope("consumer");
  const int64_t now = absl::ToUnixSeconds(absl::Now());
  req.set_claims_json(absl::StrCat("{\"iss\":\"", kIssuer,
                                   "\",\"sub\":\"alice\",\"iat\":", now,
                                   ",\"exp\":", now + 600, "}"));
  v1::SignJwtResponse resp;
  grpc::Status st = stub->SignJwt(&ctx, req, &resp);
  ASSERT_TRUE(st.ok()) << st.error_message();
  const std::string token_path = bed_->token().dir() + "/token.jwt";
  std::ofstream(token_path) << resp.jws();

  auto verify = [&](bool with_ca) {
    std::string command = absl::StrCat(
        "exec '", SIGNET_VERIFY_BINARY, "' --issuer '", kIssuer,
        "' --jwks-url 'https://localhost:", port_,
        "/scopes/consumer/.well-known/jwks.json'",
        with_ca ? absl::StrCat(" --ca-file '", bed_->ca().cert_path(), "'")
                : std::string(),
        " < '", token_path, "'");
    return Run({"/bin/sh", "-c", command});
  };
  RunResult trusted = verify(true);
  EXPECT_EQ(trusted.exit_code, 0) << trusted.output;
  EXPECT_THAT(trusted.output, HasSubstr("\"sub\":\"alice\""));
  // Without the CA the HTTPS fetch fails, so the token is not accepted.
  RunResult untrusted = verify(false);
  EXPECT_EQ(untrusted.exit_code, 1) << untrusted.output;
  EXPECT_THAT(untrusted.output, Not(HasSubstr("\"sub\":\"alice\"")));
}

// TLS 1.2 offers only AEAD ciphers with ephemeral ECDH: a client that
// insists on a CBC cipher (which GnuTLS's NORMAL would accept) gets no
// handshake.
TEST_F(JwksHttpsTest, Tls12OffersOnlyAeadCiphersWithEcdhe) {
  EXPECT_TRUE(
      Handshake("-tls1_2", {"-cipher", "ECDHE-ECDSA-AES128-GCM-SHA256"}));
  EXPECT_TRUE(
      Handshake("-tls1_2", {"-cipher", "ECDHE-ECDSA-CHACHA20-POLY1305"}));
  EXPECT_FALSE(Handshake("-tls1_2", {"-cipher", "ECDHE-ECDSA-AES128-SHA"}));
}

TEST_F(JwksHttpsTest, TheTlsKeyIsNeverLogged) {
  std::string key_body = bed_->server_cert().key_pem;
  // A line from the middle of the PEM body.
  std::vector<std::string> lines = absl::StrSplit(key_body, '\n');
  ASSERT_GE(lines.size(), 3u);
  EXPECT_THAT(signetd_->Output(), Not(HasSubstr(lines[1])));
  EXPECT_THAT(signetd_->Output(), Not(HasSubstr("PRIVATE KEY")));
}

TEST_F(JwksHttpsTest, AKeyThatDoesNotMatchTheCertificateStopsTheStart) {
  auto other = bed_->ca().Issue("not-the-server", {.eku = "serverAuth"});
  ASSERT_TRUE(other.ok()) << other.status();
  auto started = StartSignetd(bed_->server_cert().cert_path, other->key_path);
  ASSERT_TRUE(started.ok()) << started.status();
  auto code = (*started)->WaitExit(kStartTimeout);
  ASSERT_TRUE(code.ok()) << code.status() << (*started)->Output();
  EXPECT_NE(*code, 0);
  EXPECT_THAT((*started)->Output(), HasSubstr("cannot listen for HTTPS"));
  EXPECT_THAT((*started)->Output(), Not(HasSubstr("PRIVATE KEY")));
}

TEST_F(JwksHttpsTest, AMissingKeyFileStopsTheStartNamingTheField) {
  auto started = StartSignetd(bed_->server_cert().cert_path,
                              bed_->token().dir() + "/no-such.key");
  ASSERT_TRUE(started.ok()) << started.status();
  auto code = (*started)->WaitExit(kStartTimeout);
  ASSERT_TRUE(code.ok()) << code.status() << (*started)->Output();
  EXPECT_NE(*code, 0);
  EXPECT_THAT((*started)->Output(), HasSubstr("http.tls_key_file"));
}

}  // namespace
}  // namespace signet
