// signetctl and the client library end to end: SoftHSM2 behind a real
// `p11-kit server`, signetd as a real process with mTLS on loopback, and the
// real signetctl binary run through /bin/sh (so pipes and stdin are real).
// Tokens and signatures are verified twice: with hsm::PublicKey, and with
// the `openssl` command-line tool, a verifier that shares no code with
// signet.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <openssl/bn.h>
#include <openssl/ecdsa.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "client/client.h"
#include "crypto/digest.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "hsm/algorithm.h"
#include "hsm/public_key.h"
#include "tests/testing/p11kit_server.h"
#include "tests/testing/pki.h"
#include "tests/testing/process.h"
#include "tests/testing/signetd_process.h"
#include "tests/testing/temp_token.h"
#include "tests/testing/test_bed.h"

namespace signet {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;
using testing::SignetdOptions;
using testing::SignetdProcess;
using testing::TempToken;
using testing::TestCa;

constexpr absl::Duration kStartTimeout = absl::Seconds(90);
constexpr char kConsumerIssuer[] = "https://consumer.signet.example";
constexpr char kConsumerUri[] = "spiffe://signet.example/tenant/demo-consumer";
constexpr char kEnterpriseUri[] =
    "spiffe://signet.example/tenant/demo-enterprise";

std::string Quote(absl::string_view arg) {
  std::string out = "'";
  for (char c : arg) {
    if (c == '\'') {
      out += "'\\''";
    } else {
      out += c;
    }
  }
  return out + "'";
}

// A command line for /bin/sh, every word quoted.
std::string Words(const std::vector<std::string>& argv) {
  std::vector<std::string> quoted;
  for (const std::string& a : argv) quoted.push_back(Quote(a));
  return absl::StrJoin(quoted, " ");
}

std::string B64Decode(absl::string_view s) {
  std::string out;
  EXPECT_TRUE(absl::WebSafeBase64Unescape(s, &out)) << s;
  return out;
}

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream buffer;
  buffer << in.rdbuf();
  return buffer.str();
}

void WriteFile(const std::string& path, absl::string_view data) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << data;
  ASSERT_TRUE(out.good()) << path;
}

// An ES256 JWK's public key, built from its members.
absl::StatusOr<hsm::PublicKey> KeyFromJwk(const nlohmann::json& jwk) {
  std::string params(
      hsm::EcParamsDer(hsm::SignatureAlgorithm::kEcdsaP256Sha256));
  std::string point = "\x04" + B64Decode(jwk.at("x").get<std::string>()) +
                      B64Decode(jwk.at("y").get<std::string>());
  return hsm::PublicKey::FromEcPoint(params, point);
}

// JWS r||s -> the DER ECDSA-Sig-Value (RFC 3279) that `openssl dgst` reads.
std::string RsToDer(absl::string_view rs) {
  size_t half = rs.size() / 2;
  ECDSA_SIG* sig = ECDSA_SIG_new();
  BIGNUM* r = BN_bin2bn(reinterpret_cast<const unsigned char*>(rs.data()),
                        static_cast<int>(half), nullptr);
  BIGNUM* s =
      BN_bin2bn(reinterpret_cast<const unsigned char*>(rs.data() + half),
                static_cast<int>(half), nullptr);
  EXPECT_EQ(ECDSA_SIG_set0(sig, r, s), 1);
  unsigned char* der = nullptr;
  int len = i2d_ECDSA_SIG(sig, &der);
  EXPECT_GT(len, 0);
  std::string out(reinterpret_cast<char*>(der), static_cast<size_t>(len));
  OPENSSL_free(der);
  ECDSA_SIG_free(sig);
  return out;
}

struct Ran {
  int exit_code = -1;
  std::string out;  // stdout
  std::string err;  // stderr
};

class SignetctlTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    signal(SIGPIPE, SIG_IGN);
    auto bed = testing::SignetTestBed::Create();
    ASSERT_TRUE(bed.ok()) << bed.status();
    bed_ = bed->release();
    token_ = &bed_->token();
    ca_ = &bed_->ca();
    auto consumer = ca_->Issue(
        "demo-consumer", {.uri_sans = {kConsumerUri}, .eku = "clientAuth"});
    ASSERT_TRUE(consumer.ok()) << consumer.status();
    consumer_ = new TestCa::Issued(*consumer);
    audit_dir_ = token_->dir() + "/audit";
    work_dir_ = token_->dir() + "/work";
    mkdir(audit_dir_.c_str(), 0700);
    mkdir(work_dir_.c_str(), 0700);

    SignetdOptions options;
    options.binary = SIGNETD_BINARY;
    options.config_text = Config();
    auto signetd = SignetdProcess::Start(token_->dir(), options);
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
    delete consumer_;
    delete bed_;
  }

  // The demo configuration of scripts/run, plus a RAW scope for the
  // consumer tenant.
  static std::string Config() {
    return absl::StrCat(
        "grpc_listen_address: \"127.0.0.1:0\"\n", bed_->HsmConfig(),
        "scopes { name: \"demo-consumer\" audience_class: CONSUMER "
        "purpose: JWT issuer: \"",
        kConsumerIssuer,
        "\" algorithm: ES256 max_token_lifetime_seconds: 3600 }\n",
        "scopes { name: \"demo-enterprise\" audience_class: ENTERPRISE "
        "purpose: JWT issuer: \"https://enterprise.signet.example\" "
        "algorithm: ES256 max_token_lifetime_seconds: 3600 }\n",
        "scopes { name: \"demo-raw\" audience_class: ENTERPRISE purpose: RAW "
        "issuer: \"https://raw.signet.example\" algorithm: ES256 }\n",
        bed_->TlsConfig(), "tenants { identity: \"uri:", kConsumerUri,
        "\" scopes: \"demo-consumer\" scopes: \"demo-raw\" }\n",
        "tenants { identity: \"uri:", kEnterpriseUri,
        "\" scopes: \"demo-enterprise\" }\n",
        "admins: \"uri:spiffe://signet.example/admin/demo\"\n",
        "audit_log_path: \"", audit_dir_, "/audit.log\"\n");
  }

  static std::string Target() { return absl::StrCat("localhost:", port_); }

  // `signetctl <args> --target ... --ca ... --cert ... --key ...`, quoted
  // for the shell.
  static std::string Ctl(const std::vector<std::string>& args,
                         bool connection = true) {
    std::vector<std::string> argv = {SIGNETCTL_BINARY};
    argv.insert(argv.end(), args.begin(), args.end());
    if (connection) {
      for (const std::string& a :
           {std::string("--target"), Target(), std::string("--ca"),
            ca_->cert_path(), std::string("--cert"), consumer_->cert_path,
            std::string("--key"), consumer_->key_path}) {
        argv.push_back(a);
      }
    }
    return Words(argv);
  }

  // Runs a shell command line, stdout and stderr apart.
  static Ran Shell(const std::string& command,
                   std::vector<std::pair<std::string, std::string>> env = {}) {
    static int n = 0;
    std::string err_path = absl::StrCat(work_dir_, "/stderr-", ++n);
    auto run = testing::RunProcess(
        {.argv = {"/bin/sh", "-c",
                  absl::StrCat("(", command, ") 2>", Quote(err_path))},
         .env = std::move(env),
         .unset_env = {"SIGNET_STATE_DIR", "OPENSSL_CONF"}},
        absl::Seconds(60));
    Ran ran;
    EXPECT_TRUE(run.ok()) << run.status();
    if (!run.ok()) return ran;
    EXPECT_FALSE(run->timed_out) << command;
    ran.exit_code = run->exit_code;
    ran.out = run->output;
    ran.err = ReadFile(err_path);
    return ran;
  }

  static std::string ConsumerClaims() {
    Ran claims = Shell(
        Ctl({"claims", "--iss", kConsumerIssuer, "--sub", "alice"}, false));
    EXPECT_EQ(claims.exit_code, 0) << claims.err;
    return claims.out;
  }

  // `openssl dgst -sha256 -verify`: true for "Verified OK".
  static bool OpensslVerifies(const std::string& pem, absl::string_view data,
                              absl::string_view rs_signature) {
    static int n = 0;
    std::string base = absl::StrCat(work_dir_, "/openssl-", ++n);
    WriteFile(base + ".pub.pem", pem);
    WriteFile(base + ".data", data);
    WriteFile(base + ".sig.der", RsToDer(rs_signature));
    auto run = testing::RunProcess(
        {.argv = {"openssl", "dgst", "-sha256", "-verify", base + ".pub.pem",
                  "-signature", base + ".sig.der", base + ".data"},
         .unset_env = {"OPENSSL_CONF"}},
        absl::Seconds(30));
    EXPECT_TRUE(run.ok()) << run.status();
    if (!run.ok()) return false;
    bool ok = run->exit_code == 0 &&
              run->output.find("Verified OK") != std::string::npos;
    if (!ok) ADD_FAILURE() << "openssl: " << run->output;
    return ok;
  }

  static bool OpensslRefuses(const std::string& pem, absl::string_view data,
                             absl::string_view rs_signature) {
    static int n = 0;
    std::string base = absl::StrCat(work_dir_, "/refuse-", ++n);
    WriteFile(base + ".pub.pem", pem);
    WriteFile(base + ".data", data);
    WriteFile(base + ".sig.der", RsToDer(rs_signature));
    auto run = testing::RunProcess(
        {.argv = {"openssl", "dgst", "-sha256", "-verify", base + ".pub.pem",
                  "-signature", base + ".sig.der", base + ".data"},
         .unset_env = {"OPENSSL_CONF"}},
        absl::Seconds(30));
    return run.ok() && run->exit_code != 0 &&
           run->output.find("Verification failure") != std::string::npos;
  }

  // A loopback port that refuses connections for as long as the returned
  // socket is open: bound, never listening.
  static std::pair<int, int> RefusingPort() {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    EXPECT_GE(fd, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    EXPECT_EQ(bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
    socklen_t len = sizeof(addr);
    EXPECT_EQ(getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len), 0);
    return {fd, ntohs(addr.sin_port)};
  }

  static inline testing::SignetTestBed* bed_ = nullptr;
  static inline TempToken* token_ = nullptr;
  static inline TestCa* ca_ = nullptr;
  static inline TestCa::Issued* consumer_ = nullptr;
  static inline SignetdProcess* signetd_ = nullptr;
  static inline std::string audit_dir_;
  static inline std::string work_dir_;
  static inline int port_ = 0;
};

TEST_F(SignetctlTest, ClaimsHaveIatNowAndExpAfterTheTtl) {
  int64_t before = absl::ToUnixSeconds(absl::Now());
  Ran ran = Shell(Ctl({"claims", "--iss", kConsumerIssuer, "--sub", "alice",
                       "--aud", "mail", "--aud", "calendar", "--ttl", "120"},
                      false));
  int64_t after = absl::ToUnixSeconds(absl::Now());
  ASSERT_EQ(ran.exit_code, 0) << ran.err;
  EXPECT_EQ(ran.err, "");
  nlohmann::json claims = nlohmann::json::parse(ran.out);
  EXPECT_EQ(claims["iss"], kConsumerIssuer);
  EXPECT_EQ(claims["sub"], "alice");
  EXPECT_EQ(claims["aud"], nlohmann::json({"mail", "calendar"}));
  int64_t iat = claims["iat"].get<int64_t>();
  EXPECT_GE(iat, before);
  EXPECT_LE(iat, after);
  EXPECT_EQ(claims["exp"].get<int64_t>(), iat + 120);
}

TEST_F(SignetctlTest, APipedJwtVerifiesAgainstTheJwksWithOpenssl) {
  Ran signed_jwt = Shell(absl::StrCat(
      Ctl({"claims", "--iss", kConsumerIssuer, "--sub", "alice"}, false), " | ",
      Ctl({"sign-jwt", "--scope", "demo-consumer", "--claims", "-"})));
  ASSERT_EQ(signed_jwt.exit_code, 0) << signed_jwt.err;
  EXPECT_EQ(signed_jwt.err, "");
  ASSERT_FALSE(signed_jwt.out.empty());
  EXPECT_EQ(signed_jwt.out.back(), '\n');
  std::string jws(absl::StripTrailingAsciiWhitespace(signed_jwt.out));
  std::vector<std::string> parts = absl::StrSplit(jws, '.');
  ASSERT_EQ(parts.size(), 3u) << jws;

  // The claims are signetctl claims' output, without its final newline.
  nlohmann::json claims = nlohmann::json::parse(B64Decode(parts[1]));
  EXPECT_EQ(claims["iss"], kConsumerIssuer);
  EXPECT_EQ(claims["sub"], "alice");
  EXPECT_EQ(B64Decode(parts[1]).back(), '}');
  nlohmann::json header = nlohmann::json::parse(B64Decode(parts[0]));
  EXPECT_EQ(header["alg"], "ES256");
  EXPECT_EQ(header["typ"], "JWT");

  Ran jwks_run = Shell(Ctl({"jwks", "--scope", "demo-consumer"}));
  ASSERT_EQ(jwks_run.exit_code, 0) << jwks_run.err;
  nlohmann::json jwks = nlohmann::json::parse(jwks_run.out);
  // The active key (first) and its standby.
  ASSERT_EQ(jwks["keys"].size(), 2u) << jwks_run.out;
  const nlohmann::json& jwk = jwks["keys"][0];
  EXPECT_EQ(jwk["kid"], header["kid"]);
  auto key = KeyFromJwk(jwk);
  ASSERT_TRUE(key.ok()) << key.status();

  std::string signing_input = absl::StrCat(parts[0], ".", parts[1]);
  std::string signature = B64Decode(parts[2]);
  ASSERT_EQ(signature.size(), 64u);
  auto digest = crypto::Sha256(signing_input);
  ASSERT_TRUE(digest.ok());
  EXPECT_TRUE(key->VerifyDigest(hsm::SignatureAlgorithm::kEcdsaP256Sha256,
                                *digest, signature)
                  .ok());
  auto pem = key->SpkiPem();
  ASSERT_TRUE(pem.ok());
  EXPECT_TRUE(OpensslVerifies(*pem, signing_input, signature));
  // The same check refuses a token whose claims were changed.
  std::string forged = absl::StrCat(
      parts[0], ".",
      absl::WebSafeBase64Escape(R"({"iss":"https://consumer.signet.example",)"
                                R"("sub":"mallory"})"));
  EXPECT_TRUE(OpensslRefuses(*pem, forged, signature));
}

TEST_F(SignetctlTest, ClaimsFromAFileWorkToo) {
  std::string path = work_dir_ + "/claims.json";
  WriteFile(path, ConsumerClaims());
  Ran ran =
      Shell(Ctl({"sign-jwt", "--scope", "demo-consumer", "--claims", path}));
  ASSERT_EQ(ran.exit_code, 0) << ran.err;
  EXPECT_EQ(std::count(ran.out.begin(), ran.out.end(), '.'), 2) << ran.out;
}

TEST_F(SignetctlTest, RawSignaturesVerifyAgainstThePublicKeys) {
  Ran keys = Shell(Ctl({"public-keys", "--scope", "demo-raw"}));
  ASSERT_EQ(keys.exit_code, 0) << keys.err;
  EXPECT_THAT(keys.out, HasSubstr("-----BEGIN PUBLIC KEY-----"));
  EXPECT_THAT(keys.out, HasSubstr("alg: ES256"));

  const std::string payload = "firmware image 1.2.3\n";
  std::string payload_path = work_dir_ + "/firmware.bin";
  WriteFile(payload_path, payload);
  auto digest = crypto::Sha256(payload);
  ASSERT_TRUE(digest.ok());
  for (bool as_digest : {false, true}) {
    SCOPED_TRACE(as_digest ? "digest" : "payload");
    Ran ran = Shell(
        Ctl({"sign", "--scope", "demo-raw",
             as_digest ? "--digest-hex" : "--payload-file",
             as_digest ? absl::BytesToHexString(*digest) : payload_path}));
    ASSERT_EQ(ran.exit_code, 0) << ran.err;
    nlohmann::json out = nlohmann::json::parse(ran.out);
    EXPECT_EQ(out["alg"], "ES256");
    EXPECT_THAT(keys.out, HasSubstr(absl::StrCat(
                              "kid: ", out["kid"].get<std::string>())));
    std::string signature = B64Decode(out["signature"].get<std::string>());
    ASSERT_EQ(signature.size(), 64u);
    // The explanatory "kid:"/"alg:" lines before the PEM are skipped.
    EXPECT_TRUE(OpensslVerifies(keys.out, payload, signature));
  }
  // A digest of the wrong length is the server's INVALID_ARGUMENT; bad hex
  // is signetctl's own.
  Ran short_digest =
      Shell(Ctl({"sign", "--scope", "demo-raw", "--digest-hex", "abcd"}));
  EXPECT_EQ(short_digest.exit_code, 1);
  EXPECT_THAT(short_digest.err, HasSubstr("INVALID_ARGUMENT"));
  Ran bad_hex =
      Shell(Ctl({"sign", "--scope", "demo-raw", "--digest-hex", "zz"}));
  EXPECT_EQ(bad_hex.exit_code, 1);
  EXPECT_THAT(bad_hex.err, HasSubstr("hex"));
}

TEST_F(SignetctlTest, AnotherTenantsScopeIsPermissionDeniedWithoutRetry) {
  std::string claims_path = work_dir_ + "/enterprise-claims.json";
  WriteFile(claims_path, R"({"iss":"https://enterprise.signet.example"})");
  Ran ran = Shell(Ctl({"sign-jwt", "--verbose", "--scope", "demo-enterprise",
                       "--claims", claims_path}));
  EXPECT_EQ(ran.exit_code, 3);  // permission denied
  EXPECT_EQ(ran.out, "");
  EXPECT_THAT(ran.err, HasSubstr("signetctl: error: PERMISSION_DENIED"));
  EXPECT_THAT(ran.err, HasSubstr("demo-enterprise"));
  EXPECT_THAT(ran.err, HasSubstr("SignJwt attempt 1 of 4 failed"));
  EXPECT_THAT(ran.err, Not(HasSubstr("attempt 2")));
}

TEST_F(SignetctlTest, ClaimsTheServerRefusesAreInvalidArgument) {
  Ran ran = Shell(absl::StrCat(
      "echo '{\"iss\":\"https://enterprise.signet.example\",\"iat\":1,"
      "\"exp\":2}' | ",
      Ctl({"sign-jwt", "--scope", "demo-consumer"})));
  EXPECT_EQ(ran.exit_code, 1);
  EXPECT_EQ(ran.out, "");
  EXPECT_THAT(ran.err, HasSubstr("signetctl: error: INVALID_ARGUMENT"));
}

TEST_F(SignetctlTest, AMissingCertificateFileIsAClearError) {
  std::vector<std::string> argv = {
      SIGNETCTL_BINARY, "jwks",
      "--scope",        "demo-consumer",
      "--target",       Target(),
      "--ca",           ca_->cert_path(),
      "--cert",         work_dir_ + "/no-such-cert.pem",
      "--key",          consumer_->key_path};
  Ran ran = Shell(Words(argv));
  EXPECT_EQ(ran.exit_code, 1);
  EXPECT_EQ(ran.out, "");
  EXPECT_THAT(ran.err, HasSubstr("signetctl: error: NOT_FOUND"));
  EXPECT_THAT(ran.err, HasSubstr("client certificate file " + work_dir_ +
                                 "/no-such-cert.pem"));
  EXPECT_THAT(ran.err, HasSubstr("No such file or directory"));
}

// A flag wins over its environment variable, in every command (sixth
// outside attack: SIGNET_CA/SIGNET_CERT/SIGNET_KEY overwrote the flags,
// through a variable the commands shared).
TEST_F(SignetctlTest, AFlagWinsOverItsEnvironmentVariable) {
  const std::vector<std::pair<std::string, std::string>> env = {
      {"SIGNET_CA", work_dir_ + "/env-ca.pem"},
      {"SIGNET_CERT", work_dir_ + "/env-cert.pem"},
      {"SIGNET_KEY", work_dir_ + "/env-key.pem"}};
  for (const char* command : {"jwks", "sign-jwt"}) {
    SCOPED_TRACE(command);
    std::vector<std::string> argv = {SIGNETCTL_BINARY, command,
                                     "--scope",        "demo-consumer",
                                     "--target",       Target(),
                                     "--ca",           ca_->cert_path(),
                                     "--cert",         consumer_->cert_path,
                                     "--key",          consumer_->key_path};
    const std::string line =
        std::string(command) == "sign-jwt"
            ? absl::StrCat(
                  Ctl({"claims", "--iss", kConsumerIssuer, "--sub", "alice"},
                      false),
                  " | ", Words(argv))
            : Words(argv);
    Ran ran = Shell(line, env);
    EXPECT_EQ(ran.exit_code, 0) << ran.err;
    EXPECT_THAT(ran.err, Not(HasSubstr("env-")));
  }
}

TEST_F(SignetctlTest, TheTlsFilesDefaultToTheStateDirectory) {
  // The layout scripts/run makes: <state>/tls/ca.pem and
  // <state>/tls/clients/demo-consumer.{pem,key}.
  std::string state = work_dir_ + "/state";
  mkdir(state.c_str(), 0755);
  mkdir((state + "/tls").c_str(), 0755);
  mkdir((state + "/tls/clients").c_str(), 0700);
  WriteFile(state + "/tls/ca.pem", ca_->cert_pem());
  WriteFile(state + "/tls/clients/demo-consumer.pem", consumer_->cert_pem);
  WriteFile(state + "/tls/clients/demo-consumer.key", consumer_->key_pem);
  std::string jwks =
      absl::StrCat(Quote(SIGNETCTL_BINARY),
                   " jwks --scope demo-consumer --target ", Quote(Target()));
  Ran ran = Shell(jwks + " --verbose", {{"SIGNET_STATE_DIR", state}});
  ASSERT_EQ(ran.exit_code, 0) << ran.err;
  EXPECT_THAT(ran.out, HasSubstr("\"keys\""));
  EXPECT_THAT(ran.err, HasSubstr("state directory: " + state));
  EXPECT_THAT(ran.err, HasSubstr("client certificate: " + state +
                                 "/tls/clients/demo-consumer.pem"));
  // Quiet without --verbose.
  Ran quiet = Shell(jwks, {{"SIGNET_STATE_DIR", state}});
  ASSERT_EQ(quiet.exit_code, 0) << quiet.err;
  EXPECT_EQ(quiet.err, "");
  // A state directory without the files says where it looked and what to do.
  std::string empty = work_dir_ + "/empty-state";
  mkdir(empty.c_str(), 0755);
  Ran missing = Shell(jwks, {{"SIGNET_STATE_DIR", empty}});
  EXPECT_EQ(missing.exit_code, 1);
  EXPECT_THAT(missing.err, HasSubstr(empty + "/tls/ca.pem"));
  EXPECT_THAT(missing.err, HasSubstr("SIGNET_STATE_DIR"));
  // A missing file the environment named is not blamed on the state
  // directory (the sixth outside attack was told to set SIGNET_STATE_DIR).
  Ran named = Shell(jwks, {{"SIGNET_STATE_DIR", state},
                           {"SIGNET_CERT", work_dir_ + "/no-such.pem"}});
  EXPECT_EQ(named.exit_code, 1);
  EXPECT_THAT(named.err, HasSubstr(work_dir_ + "/no-such.pem"));
  EXPECT_THAT(named.err, Not(HasSubstr("a default from the state directory")));
}

TEST_F(SignetctlTest, UnavailableIsRetriedMaxAttemptsTimes) {
  auto [fd, port] = RefusingPort();
  std::vector<std::string> argv = {SIGNETCTL_BINARY,
                                   "jwks",
                                   "--scope",
                                   "demo-consumer",
                                   "--verbose",
                                   "--max-attempts",
                                   "3",
                                   "--target",
                                   absl::StrCat("127.0.0.1:", port),
                                   "--ca",
                                   ca_->cert_path(),
                                   "--cert",
                                   consumer_->cert_path,
                                   "--key",
                                   consumer_->key_path};
  Ran ran = Shell(Words(argv));
  close(fd);
  EXPECT_EQ(ran.exit_code, 4);  // unavailable
  EXPECT_EQ(ran.out, "");
  std::vector<std::string> attempts;
  for (absl::string_view line : absl::StrSplit(ran.err, '\n')) {
    if (absl::StrContains(line, "GetJwks attempt ")) {
      attempts.emplace_back(line);
    }
  }
  ASSERT_EQ(attempts.size(), 3u) << ran.err;
  EXPECT_THAT(attempts[0], HasSubstr("attempt 1 of 3 failed: UNAVAILABLE"));
  EXPECT_THAT(attempts[0], HasSubstr("retrying in"));
  EXPECT_THAT(attempts[2], HasSubstr("attempt 3 of 3 failed: UNAVAILABLE"));
  EXPECT_THAT(attempts[2], HasSubstr("not retrying"));
  EXPECT_THAT(ran.err, HasSubstr("signetctl: error: UNAVAILABLE"));
  EXPECT_THAT(ran.err, HasSubstr("gave up after 3 attempts"));
}

// A kid is 43 base64url characters, and one in 64 begins with '-': it is
// still the KID, never an option ("-h..." was --help: exit 0, nothing
// revoked; "-A..." a usage error). The consumer's certificate is refused
// (exit 3): the command reached signetd.
TEST_F(SignetctlTest, AKidBeginningWithADashIsStillTheKid) {
  for (const std::string& kid : {absl::StrCat("-h", std::string(41, 'A')),
                                 absl::StrCat("-", std::string(42, 'b')),
                                 absl::StrCat("--", std::string(41, 'c'))}) {
    Ran ran = Shell(Ctl({"keys", "revoke", "demo-consumer", kid, "--reason",
                         "drill", "--yes"}));
    EXPECT_EQ(ran.exit_code, 3) << kid << "\n" << ran.out << ran.err;
    EXPECT_THAT(ran.err, HasSubstr("PERMISSION_DENIED")) << kid;
  }
}

TEST_F(SignetctlTest, UsageErrorsExitWithTwo) {
  EXPECT_EQ(Shell(Ctl({}, false)).exit_code, 2);
  EXPECT_EQ(Shell(Ctl({"no-such-command"}, false)).exit_code, 2);
  EXPECT_EQ(Shell(Ctl({"sign-jwt"})).exit_code, 2);  // no --scope
  EXPECT_EQ(Shell(Ctl({"sign", "--scope", "demo-raw"})).exit_code, 2);
  EXPECT_EQ(Shell(Ctl({"sign", "--scope", "demo-raw", "--digest-hex", "00",
                       "--payload-file", "/dev/null"}))
                .exit_code,
            2);
  EXPECT_EQ(
      Shell(Ctl({"jwks", "--scope", "x", "--max-attempts", "0"})).exit_code, 2);
  Ran help = Shell(Ctl({"--help"}, false));
  EXPECT_EQ(help.exit_code, 0);
  EXPECT_THAT(help.out, HasSubstr("sign-jwt"));
}

// The library itself, against the same signetd.
class ClientLibraryTest : public SignetctlTest {
 protected:
  static client::ClientOptions Options() {
    client::ClientOptions options;
    options.target = Target();
    options.ca_file = ca_->cert_path();
    options.cert_file = consumer_->cert_path;
    options.key_file = consumer_->key_path;
    return options;
  }
};

TEST_F(ClientLibraryTest, SignsOneAndABatch) {
  auto c = client::Client::Create(Options());
  ASSERT_TRUE(c.ok()) << c.status();
  std::string claims(absl::StripTrailingAsciiWhitespace(ConsumerClaims()));
  auto one = (*c)->SignJwt("demo-consumer", claims);
  ASSERT_TRUE(one.ok()) << one.status();
  EXPECT_EQ(one->alg(), "ES256");
  auto batch =
      (*c)->SignJwtBatch("demo-consumer", {claims, R"({"iss":"x"})", claims});
  ASSERT_TRUE(batch.ok()) << batch.status();
  ASSERT_EQ(batch->items_size(), 3);
  EXPECT_EQ(batch->items(0).code(), 0);
  EXPECT_EQ(batch->items(1).code(),
            static_cast<int>(absl::StatusCode::kInvalidArgument));
  EXPECT_EQ(batch->items(2).code(), 0);
  auto denied = (*c)->SignJwt("demo-enterprise", claims);
  EXPECT_EQ(denied.status().code(), absl::StatusCode::kPermissionDenied);
  // Public keys are public: any authenticated caller may read any JWKS.
  auto jwks = (*c)->GetJwks("demo-enterprise");
  EXPECT_TRUE(jwks.ok()) << jwks.status();
  auto wrong_purpose = (*c)->GetPublicKeys("demo-consumer");
  EXPECT_EQ(wrong_purpose.status().code(),
            absl::StatusCode::kFailedPrecondition);
}

TEST_F(ClientLibraryTest, RetriesStopAtTheCallsDeadline) {
  auto [fd, port] = RefusingPort();
  client::ClientOptions options = Options();
  options.target = absl::StrCat("127.0.0.1:", port);
  options.timeout = absl::Seconds(1);
  options.max_attempts = 1000;
  options.initial_backoff = absl::Milliseconds(50);
  options.max_backoff = absl::Milliseconds(200);
  std::vector<client::AttemptFailure> failures;
  options.on_attempt_failed = [&failures](const client::AttemptFailure& f) {
    failures.push_back(f);
  };
  auto c = client::Client::Create(options);
  ASSERT_TRUE(c.ok()) << c.status();
  absl::Time start = absl::Now();
  auto jwks = (*c)->GetJwks("demo-consumer");
  absl::Duration took = absl::Now() - start;
  close(fd);
  EXPECT_EQ(jwks.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(jwks.status().message(), HasSubstr("deadline"));
  // About the 1 s deadline (with room for a slow machine), not the
  // 1000 attempts x at least 25 ms of back-off that max_attempts allows.
  EXPECT_LT(took, absl::Seconds(3));
  ASSERT_GE(failures.size(), 3u);
  EXPECT_LT(failures.size(), 1000u);
  for (size_t i = 0; i + 1 < failures.size(); ++i) {
    EXPECT_TRUE(failures[i].will_retry);
    EXPECT_EQ(failures[i].attempt, static_cast<int>(i) + 1);
    EXPECT_LE(failures[i].backoff, absl::Milliseconds(200));
    EXPECT_GT(failures[i].backoff, absl::ZeroDuration());
  }
  EXPECT_FALSE(failures.back().will_retry);
}

}  // namespace
}  // namespace signet
