// Client certificate revocation, end to end: SoftHSM2 behind a real
// `p11-kit server`, signetd as a real process with tls.crl_directory set,
// real gRPC over loopback with mTLS.
//
// gRPC's CRL directory (set_crl_directory) rejects a revoked client, but
// fails open when the directory has no usable CRL for the CA; so signetd
// refuses to start unless every client CA has a current CRL there, under
// its hashed name and signed by that CA (server/tls.h, CheckCrlDirectory).
#include <grpcpp/grpcpp.h>
#include <openssl/x509_vfy.h>
#include <signal.h>
#include <stdio.h>
#include <sys/stat.h>

#include <chrono>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "signet/v1/signer.grpc.pb.h"
#include "tests/testing/p11kit_server.h"
#include "tests/testing/pki.h"
#include "tests/testing/process.h"
#include "tests/testing/signetd_process.h"
#include "tests/testing/temp_token.h"
#include "tests/testing/test_bed.h"

#ifndef SIGNETD_BINARY
#error "SIGNETD_BINARY must name the signetd binary"
#endif

namespace signet {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;
using testing::SignetdOptions;
using testing::SignetdProcess;
using testing::TempToken;
using testing::TestCa;
using v1::Signer;

constexpr absl::Duration kStartTimeout = absl::Seconds(90);
constexpr char kScope[] = "crl-es256";
constexpr char kIssuer[] = "https://crl-es256.signet.test";
constexpr char kGood[] = "spiffe://signet.test/tenant/good";
constexpr char kRevoked[] = "spiffe://signet.test/tenant/revoked";

std::string Claims() {
  const int64_t now = absl::ToUnixSeconds(absl::Now());
  return absl::StrCat(R"({"iss":")", kIssuer, R"(","sub":"alice","iat":)", now,
                      R"(,"exp":)", now + 600, "}");
}

class SignerCrlTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    signal(SIGPIPE, SIG_IGN);
    // Distinct CNs, so the refusal messages can be matched to the CA.
    auto bed = testing::SignetTestBed::Create("client-ca");
    ASSERT_TRUE(bed.ok()) << bed.status();
    bed_ = bed->release();
    token_ = &bed_->token();
    ca_ = &bed_->ca();
    auto other = TestCa::Create(token_->dir(), "unrelated-ca");
    ASSERT_TRUE(other.ok()) << other.status();
    other_ca_ = other->release();
    auto good = ca_->Issue("good", {.uri_sans = {kGood}, .eku = "clientAuth"});
    ASSERT_TRUE(good.ok()) << good.status();
    good_ = new TestCa::Issued(*good);
    auto revoked =
        ca_->Issue("revoked", {.uri_sans = {kRevoked}, .eku = "clientAuth"});
    ASSERT_TRUE(revoked.ok()) << revoked.status();
    revoked_ = new TestCa::Issued(*revoked);

    // Revoked before the CRL is written, and both before signetd starts.
    ASSERT_TRUE(ca_->Revoke(*revoked_).ok());
    crl_dir_ = token_->dir() + "/crls";
    absl::Status written = ca_->WriteCrl(crl_dir_);
    ASSERT_TRUE(written.ok()) << written;

    auto signetd = StartSignetd(crl_dir_);
    ASSERT_TRUE(signetd.ok()) << signetd.status();
    signetd_ = signetd->release();
    auto port = signetd_->WaitForPort(kStartTimeout);
    ASSERT_TRUE(port.ok()) << port.status();
    port_ = *port;
    ASSERT_TRUE(signetd_->WaitForOutput("signetd ready", kStartTimeout).ok())
        << signetd_->Output();
  }

  static void TearDownTestSuite() {
    delete signetd_;
    delete good_;
    delete revoked_;
    delete other_ca_;
    delete bed_;
  }

  // Both clients are tenants of the scope: only revocation tells them apart.
  static std::string Config(const std::string& crl_directory) {
    const std::string audit_dir =
        absl::StrCat(token_->dir(), "/audit-", ++instances_);
    mkdir(audit_dir.c_str(), 0700);
    return absl::StrCat(
        "grpc_listen_address: \"127.0.0.1:0\"\n", bed_->HsmConfig(),
        "scopes { name: \"", kScope,
        "\" audience_class: CONSUMER purpose: JWT issuer: \"", kIssuer,
        "\" algorithm: ES256 }\n",
        bed_->TlsConfig(absl::StrCat("crl_directory: \"", crl_directory, "\"")),
        "tenants { identity: \"uri:", kGood, "\" scopes: \"", kScope, "\" }\n",
        "tenants { identity: \"uri:", kRevoked, "\" scopes: \"", kScope,
        "\" }\n", "audit_log_path: \"", audit_dir, "/audit.log\"\n");
  }

  static absl::StatusOr<std::unique_ptr<SignetdProcess>> StartSignetd(
      const std::string& crl_directory) {
    SignetdOptions options;
    options.binary = SIGNETD_BINARY;
    options.config_text = Config(crl_directory);
    return SignetdProcess::Start(token_->dir(), options);
  }

  // Starts signetd with `crl_directory` and expects it to refuse: exit code
  // 1, and output that names tls.crl_directory and the client CA. Returns
  // the output for further checks.
  static std::string ExpectRefusesToStart(const std::string& crl_directory) {
    auto signetd = StartSignetd(crl_directory);
    EXPECT_TRUE(signetd.ok()) << signetd.status();
    if (!signetd.ok()) return "";
    absl::StatusOr<int> code = (*signetd)->WaitExit(kStartTimeout);
    const std::string output = (*signetd)->Output();
    EXPECT_TRUE(code.ok()) << code.status();
    if (!code.ok()) return output;
    EXPECT_EQ(*code, 1) << output;
    EXPECT_THAT(output, HasSubstr("tls.crl_directory")) << output;
    EXPECT_THAT(output, HasSubstr("CN=client-ca")) << output;
    EXPECT_THAT(output, HasSubstr(ca_->subject_hash() + ".r0")) << output;
    EXPECT_THAT(output, Not(HasSubstr("signetd ready"))) << output;
    return output;
  }

  // A fresh, empty directory under the token's.
  static std::string NewDir(absl::string_view name) {
    std::string dir = absl::StrCat(token_->dir(), "/", name);
    EXPECT_EQ(mkdir(dir.c_str(), 0755), 0) << dir;
    return dir;
  }

  static std::unique_ptr<Signer::Stub> Stub(const TestCa::Issued& client) {
    grpc::SslCredentialsOptions ssl;
    ssl.pem_root_certs = ca_->cert_pem();
    ssl.pem_private_key = client.key_pem;
    ssl.pem_cert_chain = client.cert_pem;
    return Signer::NewStub(grpc::CreateChannel(
        absl::StrCat("localhost:", port_), grpc::SslCredentials(ssl)));
  }

  static grpc::Status SignJwt(Signer::Stub& stub, v1::SignJwtResponse* out) {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() +
                     std::chrono::seconds(20));
    v1::SignJwtRequest req;
    req.set_scope(kScope);
    req.set_claims_json(Claims());
    return stub.SignJwt(&ctx, req, out);
  }

  static inline testing::SignetTestBed* bed_ = nullptr;
  static inline TempToken* token_ = nullptr;
  static inline TestCa* ca_ = nullptr;
  static inline TestCa* other_ca_ = nullptr;
  static inline TestCa::Issued* good_ = nullptr;
  static inline TestCa::Issued* revoked_ = nullptr;
  static inline SignetdProcess* signetd_ = nullptr;
  static inline std::string crl_dir_;
  static inline int port_ = 0;
  static inline int instances_ = 0;
};

TEST_F(SignerCrlTest, ARevokedClientIsRefusedAndAnotherSigns) {
  auto good = Stub(*good_);
  v1::SignJwtResponse resp;
  grpc::Status st = SignJwt(*good, &resp);
  ASSERT_TRUE(st.ok()) << st.error_message() << "\n" << signetd_->Output();
  EXPECT_FALSE(resp.jws().empty());
  const std::string before = signetd_->Output();

  // The revoked certificate is refused in the TLS handshake itself (gRPC's
  // CRL check), so the RPC never reaches signetd's code: UNAVAILABLE, as for
  // a certificate of an unknown CA. Several attempts, on fresh channels.
  for (int i = 0; i < 3; ++i) {
    auto revoked = Stub(*revoked_);
    v1::SignJwtResponse refused;
    st = SignJwt(*revoked, &refused);
    EXPECT_EQ(st.error_code(), grpc::StatusCode::UNAVAILABLE)
        << st.error_message();
    EXPECT_TRUE(refused.jws().empty());
  }

  // The refusal is revocation, not something else in the handshake:
  // gRPC's handshaker logs OpenSSL's verify result, X509_V_ERR_CERT_REVOKED
  // (23), and only since the revoked client tried. (An `openssl s_client`
  // does not see a "certificate revoked" alert: gRPC closes the connection
  // without sending one, and the client reads an unexpected EOF.)
  const std::string revoked_line = absl::StrCat(
      "Certificate verify failed with code ", X509_V_ERR_CERT_REVOKED);
  EXPECT_THAT(before, Not(HasSubstr(revoked_line)));
  EXPECT_TRUE(signetd_->WaitForOutput(revoked_line, absl::Seconds(10)).ok())
      << signetd_->Output();

  // And the service still signs for the good client afterwards.
  st = SignJwt(*good, &resp);
  EXPECT_TRUE(st.ok()) << st.error_message();
}

TEST_F(SignerCrlTest, AnEmptyCrlDirectoryRefusesToStart) {
  ExpectRefusesToStart(NewDir("crls-empty"));
}

TEST_F(SignerCrlTest, ACrlUnderAnUnhashedNameRefusesToStart) {
  // A current, valid CRL of the right CA, but named as a person would name
  // it, not <subject hash>.r0: OpenSSL's directory lookup never finds it.
  const std::string staging = NewDir("crls-staging");
  ASSERT_TRUE(ca_->WriteCrl(staging).ok());
  const std::string dir = NewDir("crls-unhashed");
  const std::string from = staging + "/" + ca_->subject_hash() + ".r0";
  const std::string to = dir + "/client-ca.crl.pem";
  ASSERT_EQ(rename(from.c_str(), to.c_str()), 0) << from;
  ExpectRefusesToStart(dir);
}

TEST_F(SignerCrlTest, AnotherCasCrlUnderTheHashNameRefusesToStart) {
  // The unrelated CA's CRL, renamed to the client CA's hash name: the file
  // loads, but its issuer and signature are not the client CA's.
  const std::string staging = NewDir("crls-other-staging");
  ASSERT_TRUE(other_ca_->WriteCrl(staging).ok());
  const std::string dir = NewDir("crls-other");
  const std::string from = staging + "/" + other_ca_->subject_hash() + ".r0";
  const std::string to = dir + "/" + ca_->subject_hash() + ".r0";
  ASSERT_EQ(rename(from.c_str(), to.c_str()), 0) << from;
  std::string output = ExpectRefusesToStart(dir);
  // The file was found and judged, not just missing.
  EXPECT_THAT(output, HasSubstr(to + " is not")) << output;
}

TEST_F(SignerCrlTest, AnExpiredCrlRefusesToStart) {
  // A CRL of the right CA, properly signed and named, whose nextUpdate is
  // in the past (OpenSSL 3's `openssl ca -gencrl -crl_nextupdate`).
  const std::string dir = NewDir("crls-expired");
  const std::string crl = dir + "/" + ca_->subject_hash() + ".r0";
  auto gencrl = testing::RunProcess(
      {.argv = {"openssl", "ca", "-batch", "-gencrl", "-config",
                ca_->dir() + "/openssl.cnf", "-crl_lastupdate",
                "20190101000000Z", "-crl_nextupdate", "20200101000000Z", "-out",
                crl},
       .unset_env = {"OPENSSL_CONF"}},
      absl::Seconds(30));
  ASSERT_TRUE(gencrl.ok()) << gencrl.status();
  ASSERT_TRUE(gencrl->succeeded()) << gencrl->output;
  auto text = testing::RunProcess(
      {.argv = {"openssl", "crl", "-noout", "-nextupdate", "-in", crl},
       .unset_env = {"OPENSSL_CONF"}});
  ASSERT_TRUE(text.ok() && text->succeeded());
  ASSERT_THAT(text->output, HasSubstr("2020")) << text->output;
  std::string output = ExpectRefusesToStart(dir);
  EXPECT_THAT(output, HasSubstr(crl + " is not")) << output;
}

}  // namespace
}  // namespace signet
