// Self-test of the test PKI (tests/testing/pki.h) against the openssl command
// line: the extensions asked for are the ones issued, chains verify, and a
// revoked certificate fails a CRL check through the hashed CRL file that
// gRPC's CRL directory reads.
#include "tests/testing/pki.h"

#include <stdlib.h>
#include <sys/stat.h>

#include <filesystem>
#include <fstream>
#include <memory>
#include <sstream>
#include <string>
#include <system_error>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/testing/process.h"

namespace signet::testing {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;
using ::testing::StartsWith;

// ASSERT_OK for absl::Status / StatusOr (Abseil 20220623 has no matchers).
#define SIGNET_ASSERT_OK(expr)                          \
  do {                                                  \
    const absl::Status signet_status_ = StatusOf(expr); \
    ASSERT_TRUE(signet_status_.ok()) << signet_status_; \
  } while (false)

const absl::Status& StatusOf(const absl::Status& status) { return status; }
template <typename T>
const absl::Status& StatusOf(const absl::StatusOr<T>& status_or) {
  return status_or.status();
}

std::string ReadFile(const std::string& path) {
  std::ifstream in(path);
  std::stringstream contents;
  contents << in.rdbuf();
  return contents.str();
}

mode_t ModeOf(const std::string& path) {
  struct stat st;
  if (stat(path.c_str(), &st) != 0) {
    return 0;
  }
  return st.st_mode & 07777;
}

// Runs openssl; the result carries the exit code and the output.
RunResult Openssl(std::vector<std::string> args) {
  SpawnOptions options;
  options.argv = {"openssl"};
  for (std::string& arg : args) {
    options.argv.push_back(std::move(arg));
  }
  options.unset_env = {"OPENSSL_CONF"};
  absl::StatusOr<RunResult> ran = RunProcess(options, absl::Seconds(30));
  if (!ran.ok()) {
    RunResult failed;
    failed.output = ran.status().ToString();
    return failed;
  }
  return *std::move(ran);
}

// `openssl x509 -noout -text` of a certificate file.
std::string Text(const std::string& cert_path) {
  RunResult result = Openssl({"x509", "-noout", "-text", "-in", cert_path});
  EXPECT_TRUE(result.succeeded()) << result.output;
  return result.output;
}

// The line after the header line of an X.509v3 extension in -text output,
// e.g. "DNS:localhost, IP Address:127.0.0.1" for "Subject Alternative Name";
// empty when the certificate does not have the extension.
std::string ExtensionValue(absl::string_view text, absl::string_view name) {
  std::vector<std::string> lines;
  std::istringstream in{std::string(text)};
  for (std::string line; std::getline(in, line);) {
    lines.push_back(line);
  }
  for (size_t i = 0; i + 1 < lines.size(); ++i) {
    absl::string_view line = absl::StripAsciiWhitespace(lines[i]);
    if (absl::StartsWith(line, absl::StrCat("X509v3 ", name, ":"))) {
      return std::string(absl::StripAsciiWhitespace(lines[i + 1]));
    }
  }
  return "";
}

// A certificate's public key as PEM, from the certificate or from its key.
std::string PublicKeyOfCert(const std::string& cert_path) {
  return Openssl({"x509", "-noout", "-pubkey", "-in", cert_path}).output;
}
std::string PublicKeyOfKey(const std::string& key_path) {
  return Openssl({"pkey", "-pubout", "-in", key_path}).output;
}

class PkiTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char dir_template[] = "/tmp/signet-pki-test-XXXXXX";
    ASSERT_NE(mkdtemp(dir_template), nullptr);
    dir_ = dir_template;
    absl::StatusOr<std::unique_ptr<TestCa>> ca = TestCa::Create(dir_, "ca");
    SIGNET_ASSERT_OK(ca);
    ca_ = *std::move(ca);
  }

  void TearDown() override {
    ca_.reset();
    std::error_code ignored;
    std::filesystem::remove_all(dir_, ignored);
  }

  CertOptions Client(absl::string_view uri) {
    CertOptions options;
    options.uri_sans = {std::string(uri)};
    options.eku = "clientAuth";
    return options;
  }

  std::string dir_;
  std::unique_ptr<TestCa> ca_;
};

TEST_F(PkiTest, CaIsAnEcP256CaWithCertSignAndCrlSign) {
  EXPECT_EQ(ca_->dir(), dir_ + "/ca");
  EXPECT_EQ(ca_->cert_path(), dir_ + "/ca/ca.pem");
  EXPECT_EQ(ca_->cert_pem(), ReadFile(ca_->cert_path()));
  EXPECT_EQ(ModeOf(dir_ + "/ca/ca.key"), 0600u);
  EXPECT_EQ(ModeOf(ca_->cert_path()), 0644u);

  const std::string text = Text(ca_->cert_path());
  EXPECT_THAT(text, HasSubstr("NIST CURVE: P-256"));
  EXPECT_THAT(text, HasSubstr("X509v3 Basic Constraints: critical"));
  EXPECT_EQ(ExtensionValue(text, "Basic Constraints"), "CA:TRUE");
  EXPECT_THAT(text, HasSubstr("X509v3 Key Usage: critical"));
  EXPECT_EQ(ExtensionValue(text, "Key Usage"), "Certificate Sign, CRL Sign");

  RunResult hash =
      Openssl({"x509", "-noout", "-hash", "-in", ca_->cert_path()});
  ASSERT_TRUE(hash.succeeded()) << hash.output;
  EXPECT_EQ(ca_->subject_hash(), absl::StripAsciiWhitespace(hash.output));
  EXPECT_EQ(ca_->subject_hash().size(), 8u);
}

TEST_F(PkiTest, ClientCertificateHasTheUriSanAndClientAuth) {
  absl::StatusOr<TestCa::Issued> issued =
      ca_->Issue("tenant", Client("spiffe://example.org/idp/consumer"));
  SIGNET_ASSERT_OK(issued);
  EXPECT_EQ(issued->cert_path, dir_ + "/ca/certs/tenant.pem");
  EXPECT_EQ(issued->key_path, dir_ + "/ca/certs/tenant.key");
  EXPECT_EQ(issued->cert_pem, ReadFile(issued->cert_path));
  EXPECT_EQ(issued->key_pem, ReadFile(issued->key_path));
  EXPECT_THAT(issued->cert_pem, StartsWith("-----BEGIN CERTIFICATE-----"));
  EXPECT_THAT(issued->key_pem, StartsWith("-----BEGIN PRIVATE KEY-----"));
  EXPECT_EQ(PublicKeyOfCert(issued->cert_path),
            PublicKeyOfKey(issued->key_path));

  const std::string text = Text(issued->cert_path);
  EXPECT_THAT(text, HasSubstr("Subject: CN = tenant"));
  EXPECT_THAT(text, HasSubstr("NIST CURVE: P-256"));
  EXPECT_EQ(ExtensionValue(text, "Subject Alternative Name"),
            "URI:spiffe://example.org/idp/consumer");
  EXPECT_EQ(ExtensionValue(text, "Extended Key Usage"),
            "TLS Web Client Authentication");
  EXPECT_EQ(ExtensionValue(text, "Basic Constraints"), "CA:FALSE");
  EXPECT_EQ(ExtensionValue(text, "Key Usage"), "Digital Signature");

  RunResult serial =
      Openssl({"x509", "-noout", "-serial", "-in", issued->cert_path});
  EXPECT_EQ(absl::StrCat("serial=", issued->serial),
            absl::StripAsciiWhitespace(serial.output));
}

TEST_F(PkiTest, ServerCertificateHasLoopbackSansAndServerAuth) {
  absl::StatusOr<TestCa::Issued> issued = ca_->IssueServer("server");
  SIGNET_ASSERT_OK(issued);
  const std::string text = Text(issued->cert_path);
  EXPECT_THAT(text, HasSubstr("Subject: CN = localhost"));
  EXPECT_EQ(ExtensionValue(text, "Subject Alternative Name"),
            "DNS:localhost, IP Address:127.0.0.1, "
            "IP Address:0:0:0:0:0:0:0:1");
  EXPECT_EQ(ExtensionValue(text, "Extended Key Usage"),
            "TLS Web Server Authentication");

  RunResult check = Openssl({"x509", "-noout", "-checkhost", "localhost",
                             "-checkip", "::1", "-in", issued->cert_path});
  EXPECT_THAT(check.output, HasSubstr("does match certificate"));
  EXPECT_THAT(check.output, Not(HasSubstr("NOT match")));
}

TEST_F(PkiTest, ExtensionsAreExactlyThoseAskedFor) {
  CertOptions none;
  none.cn = "no purpose";
  absl::StatusOr<TestCa::Issued> bare = ca_->Issue("bare", none);
  SIGNET_ASSERT_OK(bare);
  std::string text = Text(bare->cert_path);
  EXPECT_THAT(text, HasSubstr("Subject: CN = no purpose"));
  EXPECT_THAT(text, Not(HasSubstr("Extended Key Usage")));
  EXPECT_THAT(text, Not(HasSubstr("Subject Alternative Name")));

  CertOptions both;
  both.uri_sans = {"spiffe://example.org/a", "spiffe://example.org/b"};
  both.dns_sans = {"a.example"};
  both.ip_sans = {"10.0.0.1"};
  both.eku = "clientAuth,serverAuth";
  absl::StatusOr<TestCa::Issued> multi = ca_->Issue("multi", both);
  SIGNET_ASSERT_OK(multi);
  text = Text(multi->cert_path);
  EXPECT_EQ(ExtensionValue(text, "Subject Alternative Name"),
            "URI:spiffe://example.org/a, URI:spiffe://example.org/b, "
            "DNS:a.example, IP Address:10.0.0.1");
  EXPECT_EQ(ExtensionValue(text, "Extended Key Usage"),
            "TLS Web Client Authentication, TLS Web Server Authentication");

  CertOptions wrong;
  wrong.uri_sans = {"spiffe://example.org/signer"};
  wrong.eku = "codeSigning";
  absl::StatusOr<TestCa::Issued> code = ca_->Issue("code", wrong);
  SIGNET_ASSERT_OK(code);
  EXPECT_EQ(ExtensionValue(Text(code->cert_path), "Extended Key Usage"),
            "Code Signing");

  // Characters that openssl.cnf and -subj treat as syntax arrive as given.
  CertOptions odd;
  odd.cn = "a/b+c=d$e";
  odd.uri_sans = {"https://example.org/p?q=$x#frag"};
  absl::StatusOr<TestCa::Issued> escaped = ca_->Issue("odd", odd);
  SIGNET_ASSERT_OK(escaped);
  RunResult subject = Openssl({"x509", "-noout", "-subject", "-nameopt",
                               "RFC2253", "-in", escaped->cert_path});
  EXPECT_EQ(absl::StripAsciiWhitespace(subject.output),
            "subject=CN=a/b\\+c=d$e");
  EXPECT_EQ(
      ExtensionValue(Text(escaped->cert_path), "Subject Alternative Name"),
      "URI:https://example.org/p?q=$x#frag");
}

TEST_F(PkiTest, SerialsDiffer) {
  absl::StatusOr<TestCa::Issued> a = ca_->Issue("a", Client("spiffe://x/a"));
  absl::StatusOr<TestCa::Issued> b = ca_->Issue("b", Client("spiffe://x/a"));
  SIGNET_ASSERT_OK(a);
  SIGNET_ASSERT_OK(b);
  EXPECT_FALSE(a->serial.empty());
  EXPECT_NE(a->serial, b->serial);
}

TEST_F(PkiTest, VerifiesAgainstItsCaOnly) {
  absl::StatusOr<TestCa::Issued> issued =
      ca_->Issue("tenant", Client("spiffe://example.org/t"));
  SIGNET_ASSERT_OK(issued);
  RunResult ok = Openssl({"verify", "-CAfile", ca_->cert_path(), "-purpose",
                          "sslclient", issued->cert_path});
  EXPECT_TRUE(ok.succeeded()) << ok.output;

  // Another CA of the same name: a different subject, so neither its
  // signature nor its CRL can be mistaken for this one's.
  absl::StatusOr<std::unique_ptr<TestCa>> other =
      TestCa::Create(dir_ + "/", "ca-other");
  SIGNET_ASSERT_OK(other);
  EXPECT_NE((*other)->subject_hash(), ca_->subject_hash());
  RunResult wrong_ca =
      Openssl({"verify", "-CAfile", (*other)->cert_path(), issued->cert_path});
  EXPECT_FALSE(wrong_ca.succeeded()) << wrong_ca.output;
  EXPECT_THAT(wrong_ca.output, HasSubstr("unable to get local issuer"));
}

TEST_F(PkiTest, RevokedCertificateFailsTheCrlCheck) {
  absl::StatusOr<TestCa::Issued> revoked =
      ca_->Issue("revoked", Client("spiffe://example.org/revoked"));
  absl::StatusOr<TestCa::Issued> good =
      ca_->Issue("good", Client("spiffe://example.org/good"));
  SIGNET_ASSERT_OK(revoked);
  SIGNET_ASSERT_OK(good);
  const std::string crl_dir = dir_ + "/crls";
  const std::string crl = crl_dir + "/" + ca_->subject_hash() + ".r0";

  auto verify = [&](const TestCa::Issued& cert) {
    return Openssl({"verify", "-crl_check", "-CAfile", ca_->cert_path(),
                    "-CRLfile", crl, cert.cert_path});
  };
  // A CRL without revocations: both pass.
  SIGNET_ASSERT_OK(ca_->WriteCrl(crl_dir));
  EXPECT_TRUE(verify(*revoked).succeeded()) << verify(*revoked).output;

  SIGNET_ASSERT_OK(ca_->Revoke(*revoked));
  SIGNET_ASSERT_OK(ca_->WriteCrl(crl_dir));
  EXPECT_EQ(ModeOf(crl), 0644u);

  RunResult hash = Openssl({"crl", "-noout", "-hash", "-in", crl});
  ASSERT_TRUE(hash.succeeded()) << hash.output;
  EXPECT_EQ(absl::StrCat(absl::StripAsciiWhitespace(hash.output), ".r0"),
            std::filesystem::path(crl).filename().string());
  std::vector<std::string> files;
  for (const auto& entry : std::filesystem::directory_iterator(crl_dir)) {
    files.push_back(entry.path().filename().string());
  }
  EXPECT_THAT(files, ::testing::ElementsAre(ca_->subject_hash() + ".r0"));
  RunResult crl_text = Openssl({"crl", "-noout", "-text", "-in", crl});
  EXPECT_THAT(crl_text.output, HasSubstr("X509v3 CRL Number"));
  EXPECT_THAT(crl_text.output,
              HasSubstr(absl::StrCat("Serial Number: ", revoked->serial)));

  RunResult refused = verify(*revoked);
  EXPECT_FALSE(refused.succeeded()) << refused.output;
  EXPECT_THAT(refused.output, HasSubstr("certificate revoked"));
  RunResult passed = verify(*good);
  EXPECT_TRUE(passed.succeeded()) << passed.output;

  // The hashed directory lookup (what gRPC's set_crl_directory uses) finds
  // the CRL by name alone.
  RunResult by_dir =
      Openssl({"verify", "-crl_check", "-CAfile", ca_->cert_path(), "-CApath",
               crl_dir, revoked->cert_path});
  EXPECT_FALSE(by_dir.succeeded()) << by_dir.output;
  EXPECT_THAT(by_dir.output, HasSubstr("certificate revoked"));

  // A later CRL replaces the file and keeps the earlier revocation.
  SIGNET_ASSERT_OK(ca_->Revoke(*good));
  SIGNET_ASSERT_OK(ca_->WriteCrl(crl_dir + "/"));
  EXPECT_FALSE(verify(*good).succeeded());
  EXPECT_FALSE(verify(*revoked).succeeded());
}

TEST_F(PkiTest, RevokeRefusesTwiceAndForeignCertificates) {
  absl::StatusOr<TestCa::Issued> issued =
      ca_->Issue("tenant", Client("spiffe://example.org/t"));
  SIGNET_ASSERT_OK(issued);
  SIGNET_ASSERT_OK(ca_->Revoke(*issued));
  EXPECT_EQ(ca_->Revoke(*issued).code(), absl::StatusCode::kFailedPrecondition);

  absl::StatusOr<std::unique_ptr<TestCa>> other = TestCa::Create(dir_, "other");
  SIGNET_ASSERT_OK(other);
  absl::StatusOr<TestCa::Issued> foreign =
      (*other)->Issue("tenant", Client("spiffe://example.org/t"));
  SIGNET_ASSERT_OK(foreign);
  EXPECT_EQ(ca_->Revoke(*foreign).code(), absl::StatusCode::kInvalidArgument);
  // Nothing of the other CA ended up in this CA's CRL.
  SIGNET_ASSERT_OK(ca_->WriteCrl(dir_ + "/crls"));
  RunResult foreign_ok = Openssl(
      {"verify", "-crl_check", "-CAfile", (*other)->cert_path(), "-CRLfile",
       dir_ + "/crls/" + ca_->subject_hash() + ".r0", foreign->cert_path});
  EXPECT_THAT(foreign_ok.output, Not(HasSubstr("certificate revoked")));
}

TEST_F(PkiTest, BadArgumentsAreRefused) {
  EXPECT_EQ(TestCa::Create(dir_, "ca").status().code(),
            absl::StatusCode::kAlreadyExists);
  EXPECT_EQ(TestCa::Create(dir_ + "/missing", "ca").status().code(),
            absl::StatusCode::kNotFound);
  for (absl::string_view name : {"", "../x", ".hidden", "a b", "a/b"}) {
    EXPECT_EQ(TestCa::Create(dir_, name).status().code(),
              absl::StatusCode::kInvalidArgument)
        << name;
    EXPECT_EQ(ca_->Issue(name, CertOptions()).status().code(),
              absl::StatusCode::kInvalidArgument)
        << name;
  }
  EXPECT_EQ(TestCa::Create("", "ca").status().code(),
            absl::StatusCode::kInvalidArgument);

  CertOptions bad_eku;
  bad_eku.eku = "clientAuth,anything";
  EXPECT_EQ(ca_->Issue("x", bad_eku).status().code(),
            absl::StatusCode::kInvalidArgument);
  CertOptions bad_ip;
  bad_ip.ip_sans = {"localhost"};
  EXPECT_EQ(ca_->Issue("x", bad_ip).status().code(),
            absl::StatusCode::kInvalidArgument);
  CertOptions newline;
  newline.uri_sans = {"spiffe://x\nDNS.9 = evil"};
  EXPECT_EQ(ca_->Issue("x", newline).status().code(),
            absl::StatusCode::kInvalidArgument);

  SIGNET_ASSERT_OK(ca_->IssueServer("server"));
  EXPECT_EQ(ca_->IssueServer("server").status().code(),
            absl::StatusCode::kAlreadyExists);
  EXPECT_EQ(ca_->WriteCrl("").code(), absl::StatusCode::kInvalidArgument);
  // A refused request leaves nothing behind: the name is still free.
  SIGNET_ASSERT_OK(ca_->Issue("x", CertOptions()));
}

}  // namespace
}  // namespace signet::testing
