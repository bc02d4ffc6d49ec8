// signet::Verifier and signet-verify end to end: SoftHSM2 behind a real
// `p11-kit server`, signetd as a real process signing over mTLS gRPC and
// publishing its key sets over real HTTP on loopback, and the verifier
// fetching them with libcurl.
//
// Scopes: two CONSUMER scopes (ES256, ES384) and two ENTERPRISE scopes
// (RS256, PS256), so every default algorithm is signed by the HSM and
// checked by the verifier. The Storm-0558 regressions are shown as far as
// real processes allow (signetd itself refuses to sign a token for another
// scope's issuer, and its keys never leave the HSM); the forgeries that need
// a stolen key are in client/verifier_test.cc.
#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstring>
#include <fstream>
#include <functional>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "base/clock.h"
#include "client/client.h"
#include "client/jwks_fetcher.h"
#include "client/verifier.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/testing/pki.h"
#include "tests/testing/process.h"
#include "tests/testing/signetd_process.h"
#include "tests/testing/test_bed.h"

namespace signet {
namespace {

using ::testing::HasSubstr;
using testing::SignetdOptions;
using testing::SignetdProcess;
using ::testing::StartsWith;
using testing::TestCa;

constexpr absl::Duration kStartTimeout = absl::Seconds(120);
constexpr char kTenant[] = "spiffe://signet.test/tenant/idp";

struct ScopeCase {
  const char* name;
  const char* audience_class;
  const char* alg;
};
constexpr ScopeCase kScopes[] = {
    {"consumer-a", "CONSUMER", "ES256"},
    {"consumer-b", "CONSUMER", "ES384"},
    {"enterprise", "ENTERPRISE", "RS256"},
    {"enterprise-pss", "ENTERPRISE", "PS256"},
};

std::string Issuer(absl::string_view scope) {
  return absl::StrCat("https://", scope, ".issuer.signet.test");
}

std::string B64(absl::string_view s) { return absl::WebSafeBase64Escape(s); }

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

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream buffer;
  buffer << in.rdbuf();
  return buffer.str();
}

// The real libcurl source, counting fetches and remembering the last
// Cache-Control signetd sent.
class CountingSource : public JwksSource {
 public:
  explicit CountingSource(std::unique_ptr<JwksSource> real)
      : real_(std::move(real)) {}
  absl::StatusOr<JwksDocument> Fetch(const std::string& url) override {
    absl::StatusOr<JwksDocument> doc = real_->Fetch(url);
    absl::MutexLock lock(&mu_);
    ++fetches_[url];
    if (doc.ok()) last_cache_control_ = doc->cache_control;
    return doc;
  }
  int Fetches(const std::string& url) {
    absl::MutexLock lock(&mu_);
    return fetches_[url];
  }
  std::string LastCacheControl() {
    absl::MutexLock lock(&mu_);
    return last_cache_control_;
  }

 private:
  std::unique_ptr<JwksSource> real_;
  absl::Mutex mu_;
  std::map<std::string, int> fetches_ ABSL_GUARDED_BY(mu_);
  std::string last_cache_control_ ABSL_GUARDED_BY(mu_);
};

// `openssl s_server -WWW` serving the files of `dir` over TLS with `cert`
// on a loopback port: an HTTPS JWKS endpoint with a private CA.
class HttpsFileServer {
 public:
  static std::unique_ptr<HttpsFileServer> Start(const std::string& dir,
                                                const TestCa::Issued& cert) {
    auto server = std::unique_ptr<HttpsFileServer>(new HttpsFileServer);
    std::string log = dir + "/s_server.log";
    int fd = open(log.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    EXPECT_GE(fd, 0) << log;
    absl::StatusOr<pid_t> pid =
        testing::Spawn({.argv = {"/bin/sh", "-c",
                                 absl::StrCat("cd ", Quote(dir),
                                              " && exec openssl s_server -WWW "
                                              "-accept 127.0.0.1:0 -cert ",
                                              Quote(cert.cert_path), " -key ",
                                              Quote(cert.key_path))},
                        .unset_env = {"OPENSSL_CONF"},
                        .stdout_fd = fd,
                        .stderr_fd = fd});
    close(fd);
    EXPECT_TRUE(pid.ok()) << pid.status();
    if (!pid.ok()) return server;
    server->pid_ = *pid;
    absl::Time deadline = absl::Now() + absl::Seconds(30);
    while (absl::Now() < deadline && server->port_ == 0) {
      std::string out = ReadFile(log);
      size_t at = out.find("ACCEPT 127.0.0.1:");
      if (at != std::string::npos) {
        absl::string_view rest = absl::string_view(out).substr(at + 17);
        size_t digits = 0;
        while (digits < rest.size() && absl::ascii_isdigit(rest[digits])) {
          ++digits;
        }
        if (digits < rest.size() &&
            !absl::SimpleAtoi(rest.substr(0, digits), &server->port_)) {
          server->port_ = 0;
        }
      }
      if (server->port_ == 0) absl::SleepFor(absl::Milliseconds(20));
    }
    EXPECT_GT(server->port_, 0) << ReadFile(log);
    return server;
  }
  ~HttpsFileServer() {
    if (pid_ > 0) {
      kill(-pid_, SIGTERM);
      int status = 0;
      waitpid(pid_, &status, 0);
    }
  }
  int port() const { return port_; }

 private:
  HttpsFileServer() = default;
  pid_t pid_ = 0;
  int port_ = 0;
};

struct Ran {
  int exit_code = -1;
  std::string out;
  std::string err;
};

class VerifierIntegrationTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    signal(SIGPIPE, SIG_IGN);
    auto bed = testing::SignetTestBed::Create();
    ASSERT_TRUE(bed.ok()) << bed.status();
    bed_ = bed->release();
    TestCa& ca = bed_->ca();
    auto tenant = ca.Issue("idp", {.uri_sans = {kTenant}, .eku = "clientAuth"});
    ASSERT_TRUE(tenant.ok()) << tenant.status();
    std::string audit_dir = bed_->token().dir() + "/audit";
    work_dir_ = bed_->token().dir() + "/work";
    mkdir(audit_dir.c_str(), 0700);
    mkdir(work_dir_.c_str(), 0700);

    std::string scopes, tenant_scopes;
    for (const ScopeCase& s : kScopes) {
      absl::StrAppend(&scopes, "scopes { name: \"", s.name,
                      "\" audience_class: ", s.audience_class,
                      " purpose: JWT issuer: \"", Issuer(s.name),
                      "\" algorithm: ", s.alg,
                      " max_token_lifetime_seconds: 3600 }\n");
      absl::StrAppend(&tenant_scopes, " scopes: \"", s.name, "\"");
    }
    SignetdOptions options;
    options.binary = SIGNETD_BINARY;
    options.config_text = absl::StrCat(
        "grpc_listen_address: \"127.0.0.1:0\"\n", bed_->HsmConfig(), scopes,
        bed_->TlsConfig(), "tenants { identity: \"uri:", kTenant, "\"",
        tenant_scopes, " }\n", "audit_log_path: \"", audit_dir,
        "/audit.log\"\n",
        "http { listen_address: \"127.0.0.1:0\" public_base_url: "
        "\"https://keys.signet.test\" cache_max_age_seconds: 300 }\n");
    auto signetd = SignetdProcess::Start(bed_->token().dir(), options);
    ASSERT_TRUE(signetd.ok()) << signetd.status();
    signetd_ = signetd->release();
    absl::StatusOr<int> grpc_port = signetd_->WaitForPort(kStartTimeout);
    ASSERT_TRUE(grpc_port.ok()) << grpc_port.status();
    ASSERT_TRUE(signetd_->WaitForOutput("signetd ready", kStartTimeout).ok())
        << signetd_->Output();
    absl::StatusOr<int> http_port = signetd_->WaitForHttpPort(kStartTimeout);
    ASSERT_TRUE(http_port.ok()) << http_port.status();
    http_port_ = *http_port;

    client::ClientOptions client_options;
    client_options.target = absl::StrCat("localhost:", *grpc_port);
    client_options.ca_file = ca.cert_path();
    client_options.cert_file = tenant->cert_path;
    client_options.key_file = tenant->key_path;
    client_options.timeout = absl::Seconds(30);
    auto client = client::Client::Create(client_options);
    ASSERT_TRUE(client.ok()) << client.status();
    client_ = client->release();
  }

  static void TearDownTestSuite() {
    delete client_;
    delete signetd_;
    delete bed_;
  }

  static std::string JwksUrl(absl::string_view scope) {
    return absl::StrCat("http://127.0.0.1:", http_port_, "/scopes/", scope,
                        "/.well-known/jwks.json");
  }

  static TrustedIssuer Trust(absl::string_view scope) {
    return {Issuer(scope), JwksUrl(scope)};
  }

  static std::string ClaimsFor(absl::string_view iss,
                               absl::string_view aud = "mail") {
    int64_t now = absl::ToUnixSeconds(absl::Now());
    return absl::StrCat(R"({"iss":")", iss, R"(","sub":"alice","aud":")", aud,
                        R"(","iat":)", now, R"(,"exp":)", now + 600, "}");
  }

  // signetd signs `claims` with `scope`'s active key.
  static v1::SignJwtResponse Sign(absl::string_view scope,
                                  absl::string_view claims) {
    absl::StatusOr<v1::SignJwtResponse> jwt = client_->SignJwt(scope, claims);
    EXPECT_TRUE(jwt.ok()) << scope << ": " << jwt.status();
    return jwt.ok() ? *jwt : v1::SignJwtResponse();
  }

  // A verifier with the real libcurl source, counted.
  std::unique_ptr<Verifier> Make(
      std::vector<TrustedIssuer> issuers,
      const base::Clock* clock = &base::SystemClock(),
      CurlJwksSourceOptions fetch = {}) {
    auto curl = CurlJwksSource::Create(fetch);
    EXPECT_TRUE(curl.ok()) << curl.status();
    if (!curl.ok()) return nullptr;
    source_ = std::make_shared<CountingSource>(*std::move(curl));
    VerifierOptions options;
    options.issuers = std::move(issuers);
    options.audiences = {"mail"};
    options.clock = clock;
    auto v = Verifier::CreateWithSource(std::move(options), source_);
    EXPECT_TRUE(v.ok()) << v.status();
    return v.ok() ? *std::move(v) : nullptr;
  }

  static void ExpectRefused(Verifier& v, absl::string_view token,
                            VerifyError reason) {
    absl::StatusOr<VerifiedToken> r = v.Verify(token);
    ASSERT_FALSE(r.ok()) << "accepted: " << token;
    EXPECT_EQ(GetVerifyError(r.status()), reason)
        << "wanted " << VerifyErrorName(reason) << ", got " << r.status();
  }

  // The token with its claims replaced (and so its signature no longer
  // theirs): what someone holding a token of one issuer can make.
  static std::string WithClaims(absl::string_view jws,
                                absl::string_view claims) {
    std::vector<std::string> parts = absl::StrSplit(jws, '.');
    EXPECT_EQ(parts.size(), 3u);
    if (parts.size() != 3) return "";
    return absl::StrCat(parts[0], ".", B64(claims), ".", parts[2]);
  }

  // Runs a shell command line with stdout and stderr apart.
  static Ran Shell(const std::string& command) {
    static int n = 0;
    std::string err_path = absl::StrCat(work_dir_, "/stderr-", ++n);
    auto run = testing::RunProcess(
        {.argv = {"/bin/sh", "-c",
                  absl::StrCat("(", command, ") 2>", Quote(err_path))},
         .unset_env = {"OPENSSL_CONF"}},
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

  // printf '%s' TOKEN | signet-verify ARGS...
  static Ran VerifyCommand(absl::string_view token,
                           const std::vector<std::string>& args) {
    std::vector<std::string> words = {Quote(SIGNET_VERIFY_BINARY)};
    for (const std::string& a : args) words.push_back(Quote(a));
    return Shell(absl::StrCat("printf '%s\\n' ", Quote(token), " | ",
                              absl::StrJoin(words, " ")));
  }

  static inline testing::SignetTestBed* bed_ = nullptr;
  static inline SignetdProcess* signetd_ = nullptr;
  static inline client::Client* client_ = nullptr;
  static inline std::string work_dir_;
  static inline int http_port_ = 0;
  std::shared_ptr<CountingSource> source_;
};

TEST_F(VerifierIntegrationTest, TokensOfEveryScopeVerify) {
  std::vector<TrustedIssuer> all;
  for (const ScopeCase& s : kScopes) all.push_back(Trust(s.name));
  auto v = Make(all);
  for (const ScopeCase& s : kScopes) {
    SCOPED_TRACE(s.name);
    std::string claims = ClaimsFor(Issuer(s.name));
    v1::SignJwtResponse jwt = Sign(s.name, claims);
    EXPECT_EQ(jwt.alg(), s.alg);
    absl::StatusOr<VerifiedToken> r = v->Verify(jwt.jws());
    ASSERT_TRUE(r.ok()) << r.status();
    EXPECT_EQ(r->issuer, Issuer(s.name));
    EXPECT_EQ(r->kid, jwt.kid());
    EXPECT_EQ(r->alg, s.alg);
    EXPECT_EQ(r->claims_json, claims);
    EXPECT_EQ(source_->Fetches(JwksUrl(s.name)), 1);
    // The signature is checked: one flipped bit of the signature refuses.
    std::string tampered = jwt.jws();
    char& c = tampered[tampered.rfind('.') + 5];
    c = c == 'A' ? 'B' : 'A';
    ExpectRefused(*v, tampered, VerifyError::kBadSignature);
  }
}

// Storm-0558: a consumer token given to a relying party that trusts only
// the enterprise issuer.
TEST_F(VerifierIntegrationTest, ConsumerTokenRefusedByEnterpriseVerifier) {
  auto v = Make({Trust("enterprise")});
  v1::SignJwtResponse enterprise =
      Sign("enterprise", ClaimsFor(Issuer("enterprise")));
  ASSERT_TRUE(v->Verify(enterprise.jws()).ok());
  v1::SignJwtResponse consumer =
      Sign("consumer-a", ClaimsFor(Issuer("consumer-a")));
  ExpectRefused(*v, consumer.jws(), VerifyError::kUntrustedIssuer);
  // Its iss rewritten to the enterprise issuer: the consumer kid is not in
  // the enterprise scope's set (the signature is never even tried).
  std::string forged =
      WithClaims(consumer.jws(), ClaimsFor(Issuer("enterprise")));
  ExpectRefused(*v, forged, VerifyError::kUnknownKid);
  // Only the enterprise scope's own set was ever fetched.
  EXPECT_EQ(source_->Fetches(JwksUrl("enterprise")), 1);
  EXPECT_EQ(source_->Fetches(JwksUrl("consumer-a")), 0);
  // And signetd will not sign a consumer-scope token for the enterprise
  // issuer in the first place.
  absl::StatusOr<v1::SignJwtResponse> refused =
      client_->SignJwt("consumer-a", ClaimsFor(Issuer("enterprise")));
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kInvalidArgument)
      << refused.status();
}

// Within one class: consumer scope B's token never passes for scope A.
TEST_F(VerifierIntegrationTest, ScopeBTokenRefusedForScopeAIssuer) {
  v1::SignJwtResponse b = Sign("consumer-b", ClaimsFor(Issuer("consumer-b")));
  // A relying party of A alone.
  auto only_a = Make({Trust("consumer-a")});
  ExpectRefused(*only_a, b.jws(), VerifyError::kUntrustedIssuer);
  std::string forged = WithClaims(b.jws(), ClaimsFor(Issuer("consumer-a")));
  ExpectRefused(*only_a, forged, VerifyError::kUnknownKid);
  // A relying party of both: B's token is B's, and still never A's.
  auto both = Make({Trust("consumer-a"), Trust("consumer-b")});
  absl::StatusOr<VerifiedToken> ok = both->Verify(b.jws());
  ASSERT_TRUE(ok.ok()) << ok.status();
  EXPECT_EQ(ok->issuer, Issuer("consumer-b"));
  ExpectRefused(*both, forged, VerifyError::kUnknownKid);
  absl::StatusOr<v1::SignJwtResponse> refused =
      client_->SignJwt("consumer-b", ClaimsFor(Issuer("consumer-a")));
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kInvalidArgument)
      << refused.status();
}

// signetd's Cache-Control (max-age=300) is what the verifier keeps to.
TEST_F(VerifierIntegrationTest, CachesPerSignetdsCacheControl) {
  base::SimulatedClock clock(absl::Now());
  auto v = Make({Trust("consumer-a")}, &clock);
  v1::SignJwtResponse jwt = Sign("consumer-a", ClaimsFor(Issuer("consumer-a")));
  ASSERT_TRUE(v->Verify(jwt.jws()).ok());
  ASSERT_TRUE(v->Verify(jwt.jws()).ok());
  EXPECT_EQ(source_->Fetches(JwksUrl("consumer-a")), 1);
  EXPECT_EQ(ParseCacheControl(source_->LastCacheControl()), absl::Seconds(300))
      << source_->LastCacheControl();
  // A kid nobody published: one refetch now, none until the interval passes.
  std::vector<std::string> parts = absl::StrSplit(jwt.jws(), '.');
  std::string bogus =
      absl::StrCat(B64(R"({"alg":"ES256","kid":"no-such-kid"})"), ".", parts[1],
                   ".", parts[2]);
  ExpectRefused(*v, bogus, VerifyError::kUnknownKid);
  EXPECT_EQ(source_->Fetches(JwksUrl("consumer-a")), 1);  // just fetched
  clock.Advance(absl::Seconds(31));
  ExpectRefused(*v, bogus, VerifyError::kUnknownKid);
  ExpectRefused(*v, bogus, VerifyError::kUnknownKid);
  EXPECT_EQ(source_->Fetches(JwksUrl("consumer-a")), 2);
  clock.Advance(absl::Seconds(300));
  // 331 s after the first fetch the set has expired (the token is still
  // within its 600 s).
  ASSERT_TRUE(v->Verify(jwt.jws()).ok());
  EXPECT_EQ(source_->Fetches(JwksUrl("consumer-a")), 3);
}

TEST_F(VerifierIntegrationTest, FetchLimitsAndFailures) {
  v1::SignJwtResponse jwt = Sign("consumer-a", ClaimsFor(Issuer("consumer-a")));
  CurlJwksSourceOptions tiny;
  tiny.max_body_bytes = 64;
  auto capped = Make({Trust("consumer-a")}, &base::SystemClock(), tiny);
  absl::StatusOr<VerifiedToken> r = capped->Verify(jwt.jws());
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(GetVerifyError(r.status()), VerifyError::kJwksUnavailable);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(std::string(r.status().message()), HasSubstr("larger than 64"));
  // A scope signetd does not serve: 404.
  auto missing = Make({{Issuer("consumer-a"), JwksUrl("no-such-scope")}});
  r = missing->Verify(jwt.jws());
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(GetVerifyError(r.status()), VerifyError::kJwksUnavailable);
  EXPECT_THAT(std::string(r.status().message()), HasSubstr("404"));
}

TEST_F(VerifierIntegrationTest, SignetVerifyCommand) {
  std::string claims = ClaimsFor(Issuer("consumer-a"));
  v1::SignJwtResponse jwt = Sign("consumer-a", claims);
  std::vector<std::string> trust_a = {"--issuer", Issuer("consumer-a"),
                                      "--jwks-url", JwksUrl("consumer-a")};
  // Valid: the claims on stdout, exit 0.
  std::vector<std::string> args = trust_a;
  args.insert(args.end(), {"--audience", "mail", "--leeway", "30"});
  Ran ok = VerifyCommand(jwt.jws(), args);
  EXPECT_EQ(ok.exit_code, 0) << ok.err;
  EXPECT_EQ(ok.out, claims + "\n");
  EXPECT_EQ(ok.err, "");
  // Several issuers, each with its URL.
  args = {
      "--issuer", Issuer("enterprise"), "--jwks-url", JwksUrl("enterprise"),
      "--issuer", Issuer("consumer-a"), "--jwks-url", JwksUrl("consumer-a")};
  ok = VerifyCommand(jwt.jws(), args);
  EXPECT_EQ(ok.exit_code, 0) << ok.err;
  // An enterprise-only relying party: refused, exit 1, the reason on stderr.
  Ran wrong = VerifyCommand(jwt.jws(), {"--issuer", Issuer("enterprise"),
                                        "--jwks-url", JwksUrl("enterprise")});
  EXPECT_EQ(wrong.exit_code, 1);
  EXPECT_EQ(wrong.out, "");
  EXPECT_THAT(wrong.err,
              StartsWith("signet-verify: error: untrusted_issuer: "));
  // The forged iss: unknown kid.
  Ran forged = VerifyCommand(
      WithClaims(jwt.jws(), ClaimsFor(Issuer("enterprise"))),
      {"--issuer", Issuer("enterprise"), "--jwks-url", JwksUrl("enterprise")});
  EXPECT_EQ(forged.exit_code, 1);
  EXPECT_THAT(forged.err, StartsWith("signet-verify: error: unknown_kid: "));
  // Audience and algorithm options.
  args = trust_a;
  args.insert(args.end(), {"--audience", "files"});
  Ran aud = VerifyCommand(jwt.jws(), args);
  EXPECT_EQ(aud.exit_code, 1);
  EXPECT_THAT(aud.err, StartsWith("signet-verify: error: audience_mismatch: "));
  args = trust_a;
  args.insert(args.end(), {"--alg", "RS256"});
  Ran alg = VerifyCommand(jwt.jws(), args);
  EXPECT_EQ(alg.exit_code, 1);
  EXPECT_THAT(alg.err, StartsWith("signet-verify: error: alg_not_allowed: "));
  // Garbage on stdin.
  Ran garbage = VerifyCommand("not a token", trust_a);
  EXPECT_EQ(garbage.exit_code, 1);
  EXPECT_THAT(garbage.err, StartsWith("signet-verify: error: malformed: "));
  // Usage errors: exit 2.
  Ran no_url = VerifyCommand(jwt.jws(), {"--issuer", Issuer("consumer-a")});
  EXPECT_EQ(no_url.exit_code, 2) << no_url.err;
  Ran unpaired = VerifyCommand(
      jwt.jws(), {"--issuer", Issuer("consumer-a"), "--issuer",
                  Issuer("consumer-b"), "--jwks-url", JwksUrl("consumer-a")});
  EXPECT_EQ(unpaired.exit_code, 2) << unpaired.err;
  Ran clear_text =
      VerifyCommand(jwt.jws(), {"--issuer", Issuer("consumer-a"), "--jwks-url",
                                "http://keys.signet.test/jwks.json"});
  EXPECT_EQ(clear_text.exit_code, 2);
  EXPECT_THAT(clear_text.err, HasSubstr("loopback"));
  EXPECT_EQ(clear_text.out, "");
}

// https with a private CA: trusted through ca_file, refused without it and
// refused for a certificate issued to another host name.
TEST_F(VerifierIntegrationTest, HttpsWithPrivateCa) {
  std::string dir = work_dir_ + "/https";
  mkdir(dir.c_str(), 0700);
  // The JWK set as signetd publishes it, served by another server over TLS.
  auto fetch = CurlJwksSource::Create({});
  ASSERT_TRUE(fetch.ok());
  absl::StatusOr<JwksDocument> set = (*fetch)->Fetch(JwksUrl("consumer-a"));
  ASSERT_TRUE(set.ok()) << set.status();
  {
    std::ofstream out(dir + "/jwks.json", std::ios::binary);
    out << set->body;
  }
  TestCa& ca = bed_->ca();
  auto good_cert = ca.IssueServer("https-localhost");
  ASSERT_TRUE(good_cert.ok()) << good_cert.status();
  auto other_cert = ca.Issue(
      "https-other", {.dns_sans = {"other.signet.test"}, .eku = "serverAuth"});
  ASSERT_TRUE(other_cert.ok()) << other_cert.status();
  auto good = HttpsFileServer::Start(dir, *good_cert);
  auto other = HttpsFileServer::Start(dir, *other_cert);
  ASSERT_GT(good->port(), 0);
  ASSERT_GT(other->port(), 0);
  v1::SignJwtResponse jwt = Sign("consumer-a", ClaimsFor(Issuer("consumer-a")));

  CurlJwksSourceOptions private_ca;
  private_ca.ca_file = ca.cert_path();
  std::string good_url =
      absl::StrCat("https://localhost:", good->port(), "/jwks.json");
  auto v = Make({{Issuer("consumer-a"), good_url}}, &base::SystemClock(),
                private_ca);
  absl::StatusOr<VerifiedToken> r = v->Verify(jwt.jws());
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->kid, jwt.kid());

  // The system's trust store does not know the test CA.
  auto system_store = Make({{Issuer("consumer-a"), good_url}});
  r = system_store->Verify(jwt.jws());
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(GetVerifyError(r.status()), VerifyError::kJwksUnavailable)
      << r.status();
  EXPECT_THAT(std::string(r.status().message()),
              HasSubstr("unable to get local issuer certificate"));

  // A certificate for another name: host verification is always on.
  auto wrong_host =
      Make({{Issuer("consumer-a"),
             absl::StrCat("https://localhost:", other->port(), "/jwks.json")}},
           &base::SystemClock(), private_ca);
  r = wrong_host->Verify(jwt.jws());
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(GetVerifyError(r.status()), VerifyError::kJwksUnavailable)
      << r.status();
  EXPECT_THAT(std::string(r.status().message()), HasSubstr("host name"));

  // signet-verify --ca-file.
  Ran ok =
      VerifyCommand(jwt.jws(), {"--issuer", Issuer("consumer-a"), "--jwks-url",
                                good_url, "--ca-file", ca.cert_path()});
  EXPECT_EQ(ok.exit_code, 0) << ok.err;
  Ran no_ca = VerifyCommand(
      jwt.jws(), {"--issuer", Issuer("consumer-a"), "--jwks-url", good_url});
  EXPECT_EQ(no_ca.exit_code, 1);
  EXPECT_THAT(no_ca.err,
              StartsWith("signet-verify: error: jwks_unavailable: "));
}

}  // namespace
}  // namespace signet
