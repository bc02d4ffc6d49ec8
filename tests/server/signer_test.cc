// The Signer service end to end: SoftHSM2 behind a real `p11-kit server`,
// signetd as a real process, real gRPC over loopback with mTLS.
#include <grpcpp/grpcpp.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>

#include <atomic>
#include <cstring>
#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "crypto/digest.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "hsm/algorithm.h"
#include "hsm/digest.h"
#include "hsm/public_key.h"
#include "signet/v1/signer.grpc.pb.h"
#include "tests/testing/p11kit_server.h"
#include "tests/testing/pki.h"
#include "tests/testing/process.h"
#include "tests/testing/signetd_process.h"
#include "tests/testing/temp_token.h"
#include "tests/testing/test_bed.h"

namespace signet {
namespace {

using ::testing::AnyOf;
using testing::CertOptions;
using ::testing::HasSubstr;
using ::testing::Not;
using testing::P11KitServer;
using testing::SignetdOptions;
using testing::SignetdProcess;
using testing::TempToken;
using testing::TestCa;
using v1::Signer;

constexpr absl::Duration kStartTimeout = absl::Seconds(90);
constexpr char kAlpha[] = "spiffe://signet.test/tenant/alpha";
constexpr char kBeta[] = "spiffe://signet.test/tenant/beta";
constexpr char kRaw[] = "spiffe://signet.test/tenant/raw";
constexpr char kFlood[] = "spiffe://signet.test/tenant/flood";

struct ScopeCase {
  const char* name;
  const char* alg;
  hsm::SignatureAlgorithm algorithm;
};
constexpr ScopeCase kJwtScopes[] = {
    {"alpha-es256", "ES256", hsm::SignatureAlgorithm::kEcdsaP256Sha256},
    {"alpha-es384", "ES384", hsm::SignatureAlgorithm::kEcdsaP384Sha384},
    {"alpha-rs256", "RS256", hsm::SignatureAlgorithm::kRsaPkcs1Sha256},
    {"alpha-ps256", "PS256", hsm::SignatureAlgorithm::kRsaPssSha256},
};

std::string Issuer(absl::string_view scope) {
  return absl::StrCat("https://", scope, ".signet.test");
}

std::string Claims(absl::string_view scope, int64_t iat_offset = 0,
                   int64_t lifetime = 600) {
  int64_t now = absl::ToUnixSeconds(absl::Now()) + iat_offset;
  return absl::StrCat(R"({"iss":")", Issuer(scope),
                      R"(","sub":"alice","aud":"mail","iat":)", now,
                      R"(,"exp":)", now + lifetime, "}");
}

std::string B64Decode(absl::string_view s) {
  std::string out;
  EXPECT_TRUE(absl::WebSafeBase64Unescape(s, &out)) << s;
  return out;
}

// The JWK's public key, built independently of signetd's own code path.
absl::StatusOr<hsm::PublicKey> KeyFromJwk(const nlohmann::json& jwk) {
  if (jwk["kty"] == "EC") {
    std::string params(hsm::EcParamsDer(
        jwk["crv"] == "P-384" ? hsm::SignatureAlgorithm::kEcdsaP384Sha384
                              : hsm::SignatureAlgorithm::kEcdsaP256Sha256));
    std::string point = "\x04" + B64Decode(jwk["x"].get<std::string>()) +
                        B64Decode(jwk["y"].get<std::string>());
    return hsm::PublicKey::FromEcPoint(params, point);
  }
  return hsm::PublicKey::FromRsa(B64Decode(jwk["n"].get<std::string>()),
                                 B64Decode(jwk["e"].get<std::string>()));
}

class SignerTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    signal(SIGPIPE, SIG_IGN);
    auto bed = testing::SignetTestBed::Create();
    ASSERT_TRUE(bed.ok()) << bed.status();
    bed_ = bed->release();
    token_ = &bed_->token();
    hsm_ = &bed_->hsm();
    ca_ = &bed_->ca();
    server_cert_ = &bed_->server_cert();
    auto other = TestCa::Create(token_->dir(), "other-ca");
    ASSERT_TRUE(other.ok());
    other_ca_ = other->release();
    alpha_ = Client("alpha", {.uri_sans = {kAlpha}, .eku = "clientAuth"});
    beta_ = Client("beta", {.uri_sans = {kBeta}, .eku = "clientAuth"});
    raw_ = Client("raw", {.uri_sans = {kRaw}, .eku = "clientAuth"});
    flood_ = Client("flood", {.uri_sans = {kFlood}, .eku = "clientAuth"});
    audit_dir_ = token_->dir() + "/audit";
    mkdir(audit_dir_.c_str(), 0700);

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

    delete alpha_;
    delete beta_;
    delete raw_;
    delete flood_;
    delete other_ca_;
    delete bed_;
  }

  static TestCa::Issued* Client(absl::string_view name, CertOptions options) {
    auto issued = ca_->Issue(name, options);
    EXPECT_TRUE(issued.ok()) << issued.status();
    return new TestCa::Issued(*issued);
  }

  static std::string Config() { return ConfigWithAudit(audit_dir_); }

  static std::string ConfigWithAudit(const std::string& audit_dir,
                                     absl::string_view extra = "") {
    std::string scopes;
    for (const ScopeCase& s : kJwtScopes) {
      absl::StrAppend(&scopes, "scopes { name: \"", s.name,
                      "\" audience_class: CONSUMER purpose: JWT issuer: \"",
                      Issuer(s.name), "\" algorithm: ", s.alg, " }\n");
    }
    absl::StrAppend(&scopes, "scopes { name: \"beta\" audience_class: ",
                    "ENTERPRISE purpose: JWT issuer: \"", Issuer("beta"),
                    "\" algorithm: ES256 }\n");
    absl::StrAppend(&scopes, "scopes { name: \"raw\" audience_class: ",
                    "ENTERPRISE purpose: RAW issuer: \"", Issuer("raw"),
                    "\" algorithm: ES256 }\n");
    return absl::StrCat(
        "grpc_listen_address: \"127.0.0.1:0\"\n", bed_->HsmConfig(), scopes,
        bed_->TlsConfig(), "tenants { identity: \"uri:", kAlpha,
        "\" scopes: \"alpha-es256\" scopes: \"alpha-es384\" scopes: "
        "\"alpha-rs256\" scopes: \"alpha-ps256\" scopes: \"raw\" }\n",
        "tenants { identity: \"uri:", kBeta, "\" scopes: \"beta\" }\n",
        "tenants { identity: \"uri:", kRaw, "\" scopes: \"raw\" }\n",
        "tenants { identity: \"uri:", kFlood,
        "\" scopes: \"alpha-es256\" max_concurrent_requests: 2 }\n",
        "serving { worker_threads: 4 queue_size: 8 }\n",
        "admins: \"uri:spiffe://signet.test/admin\"\n", "audit_log_path: \"",
        audit_dir, "/audit.log\"\n", extra);
  }

  // A second signetd on the same token (its keys exist, so it writes
  // nothing there) with its own audit log, for tests that break it.
  static std::unique_ptr<SignetdProcess> StartSecondSignetd(
      const std::string& audit_dir, int* port, absl::string_view extra = "",
      std::vector<std::pair<std::string, std::string>> env = {}) {
    mkdir(audit_dir.c_str(), 0700);
    SignetdOptions options;
    options.binary = SIGNETD_BINARY;
    options.config_text = ConfigWithAudit(audit_dir, extra);
    options.env = std::move(env);
    auto signetd = SignetdProcess::Start(token_->dir(), options);
    EXPECT_TRUE(signetd.ok()) << signetd.status();
    if (!signetd.ok()) return nullptr;
    auto p = (*signetd)->WaitForPort(kStartTimeout);
    EXPECT_TRUE(p.ok()) << p.status();
    EXPECT_TRUE((*signetd)->WaitForOutput("signetd ready", kStartTimeout).ok())
        << (*signetd)->Output();
    *port = p.ok() ? *p : 0;
    return std::move(*signetd);
  }

  static std::unique_ptr<Signer::Stub> Stub(const TestCa::Issued* client,
                                            const TestCa* trust = nullptr,
                                            int port = 0) {
    grpc::SslCredentialsOptions ssl;
    ssl.pem_root_certs = (trust ? trust : ca_)->cert_pem();
    if (client != nullptr) {
      ssl.pem_private_key = client->key_pem;
      ssl.pem_cert_chain = client->cert_pem;
    }
    auto channel = grpc::CreateChannel(
        absl::StrCat("localhost:", port == 0 ? port_ : port),
        grpc::SslCredentials(ssl));
    return Signer::NewStub(channel);
  }

  static void Deadline(grpc::ClientContext& ctx, int seconds = 20) {
    ctx.set_deadline(std::chrono::system_clock::now() +
                     std::chrono::seconds(seconds));
  }

  static grpc::Status SignJwt(Signer::Stub& stub, absl::string_view scope,
                              absl::string_view claims,
                              v1::SignJwtResponse* out) {
    grpc::ClientContext ctx;
    Deadline(ctx);
    v1::SignJwtRequest req;
    req.set_scope(std::string(scope));
    req.set_claims_json(std::string(claims));
    return stub.SignJwt(&ctx, req, out);
  }

  static nlohmann::json Jwks(Signer::Stub& stub, absl::string_view scope) {
    grpc::ClientContext ctx;
    Deadline(ctx);
    v1::GetJwksRequest req;
    req.set_scope(std::string(scope));
    v1::GetJwksResponse resp;
    grpc::Status st = stub.GetJwks(&ctx, req, &resp);
    EXPECT_TRUE(st.ok()) << st.error_message();
    return nlohmann::json::parse(resp.jwks_json());
  }

  static inline testing::SignetTestBed* bed_ = nullptr;
  static inline TempToken* token_ = nullptr;
  static inline P11KitServer* hsm_ = nullptr;
  static inline TestCa* ca_ = nullptr;
  static inline TestCa* other_ca_ = nullptr;
  static inline TestCa::Issued* server_cert_ = nullptr;
  static inline TestCa::Issued* alpha_ = nullptr;
  static inline TestCa::Issued* beta_ = nullptr;
  static inline TestCa::Issued* raw_ = nullptr;
  static inline TestCa::Issued* flood_ = nullptr;
  static inline SignetdProcess* signetd_ = nullptr;
  static inline std::string audit_dir_;
  static inline int port_ = 0;
};

TEST_F(SignerTest, SignsJwtsWithEveryAlgorithmThatVerifyAgainstTheJwks) {
  auto stub = Stub(alpha_);
  for (const ScopeCase& scope : kJwtScopes) {
    SCOPED_TRACE(scope.name);
    std::string claims = Claims(scope.name);
    v1::SignJwtResponse resp;
    grpc::Status st = SignJwt(*stub, scope.name, claims, &resp);
    ASSERT_TRUE(st.ok()) << st.error_message();
    EXPECT_EQ(resp.alg(), scope.alg);
    std::vector<std::string> parts = absl::StrSplit(resp.jws(), '.');
    ASSERT_EQ(parts.size(), 3u);
    // The header is the server's, and the claims are the caller's bytes.
    nlohmann::json header = nlohmann::json::parse(B64Decode(parts[0]));
    EXPECT_EQ(header.size(), 3u);
    EXPECT_EQ(header["alg"], scope.alg);
    EXPECT_EQ(header["typ"], "JWT");
    EXPECT_EQ(header["kid"], resp.kid());
    EXPECT_EQ(B64Decode(parts[1]), claims);
    // Verify against the JWK the service publishes for that kid.
    // The scope's set holds its active key and, published before it
    // signs, its standby (generation order).
    nlohmann::json jwks = Jwks(*stub, scope.name);
    ASSERT_EQ(jwks["keys"].size(), 2u);
    const nlohmann::json& jwk = jwks["keys"][0];
    EXPECT_EQ(jwk["kid"], resp.kid());
    EXPECT_NE(jwks["keys"][1]["kid"], resp.kid());
    EXPECT_EQ(jwk["alg"], scope.alg);
    EXPECT_EQ(jwk["use"], "sig");
    auto key = KeyFromJwk(jwk);
    ASSERT_TRUE(key.ok()) << key.status();
    auto digest =
        hsm::DigestFor(scope.algorithm, absl::StrCat(parts[0], ".", parts[1]));
    ASSERT_TRUE(digest.ok());
    std::string signature = B64Decode(parts[2]);
    if (hsm::IsEcdsa(scope.algorithm)) {
      EXPECT_EQ(signature.size(), 2 * hsm::DigestLength(scope.algorithm));
    }
    EXPECT_TRUE(key->VerifyDigest(scope.algorithm, *digest, signature).ok());
  }
}

TEST_F(SignerTest, AnotherTenantsScopeAndAnUnknownScopeLookTheSame) {
  auto stub = Stub(beta_);
  v1::SignJwtResponse resp;
  grpc::Status theirs =
      SignJwt(*stub, "alpha-es256", Claims("alpha-es256"), &resp);
  grpc::Status unknown =
      SignJwt(*stub, "no-such-scope", Claims("no-such-scope"), &resp);
  EXPECT_EQ(theirs.error_code(), grpc::StatusCode::PERMISSION_DENIED);
  EXPECT_EQ(unknown.error_code(), grpc::StatusCode::PERMISSION_DENIED);
  // The same sentence, but for the scope name the caller typed.
  std::string a = theirs.error_message();
  std::string b = unknown.error_message();
  EXPECT_EQ(a.substr(0, a.find('"')), b.substr(0, b.find('"')));
  // Beta's own scope works.
  EXPECT_TRUE(SignJwt(*stub, "beta", Claims("beta"), &resp).ok());
}

TEST_F(SignerTest, TheIssuerMustBeTheScopes) {
  auto stub = Stub(alpha_);
  v1::SignJwtResponse resp;
  // alpha may sign for alpha-es256, but not claim another scope's issuer.
  std::string claims = Claims("beta");
  grpc::Status st = SignJwt(*stub, "alpha-es256", claims, &resp);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(st.error_message(), HasSubstr("iss"));
}

TEST_F(SignerTest, RawAndJwtScopesAreNeverMixed) {
  auto stub = Stub(alpha_);
  {
    grpc::ClientContext ctx;
    Deadline(ctx);
    v1::SignRequest req;
    req.set_scope("alpha-es256");
    req.set_payload("header.claims");
    v1::SignResponse resp;
    grpc::Status st = stub->Sign(&ctx, req, &resp);
    EXPECT_EQ(st.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  }
  v1::SignJwtResponse jwt;
  grpc::Status st = SignJwt(*stub, "raw", Claims("raw"), &jwt);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  // A RAW scope has no JWKS, only SPKI.
  grpc::ClientContext ctx;
  Deadline(ctx);
  v1::GetJwksRequest req;
  req.set_scope("raw");
  v1::GetJwksResponse jwks;
  EXPECT_EQ(stub->GetJwks(&ctx, req, &jwks).error_code(),
            grpc::StatusCode::FAILED_PRECONDITION);
}

TEST_F(SignerTest, RawScopeSignsPayloadsAndDigests) {
  auto stub = Stub(raw_);
  grpc::ClientContext kctx;
  Deadline(kctx);
  v1::GetPublicKeysRequest kreq;
  kreq.set_scope("raw");
  v1::GetPublicKeysResponse keys;
  ASSERT_TRUE(stub->GetPublicKeys(&kctx, kreq, &keys).ok());
  ASSERT_EQ(keys.keys_size(), 2);  // the active key and its standby
  EXPECT_THAT(keys.keys(0).spki_pem(), HasSubstr("BEGIN PUBLIC KEY"));

  auto digest = crypto::Sha256("firmware image");
  ASSERT_TRUE(digest.ok());
  for (bool as_digest : {false, true}) {
    grpc::ClientContext ctx;
    Deadline(ctx);
    v1::SignRequest req;
    req.set_scope("raw");
    if (as_digest) {
      req.set_digest(*digest);
    } else {
      req.set_payload("firmware image");
    }
    v1::SignResponse resp;
    grpc::Status st = stub->Sign(&ctx, req, &resp);
    ASSERT_TRUE(st.ok()) << st.error_message();
    EXPECT_EQ(resp.kid(), keys.keys(0).kid());
    EXPECT_EQ(resp.signature().size(), 64u);
  }
  // A digest of the wrong length, and no input at all.
  grpc::ClientContext ctx;
  Deadline(ctx);
  v1::SignRequest req;
  req.set_scope("raw");
  req.set_digest("short");
  v1::SignResponse resp;
  grpc::Status st = stub->Sign(&ctx, req, &resp);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(st.error_message(), HasSubstr("32"));
  grpc::ClientContext ctx2;
  Deadline(ctx2);
  v1::SignRequest empty;
  empty.set_scope("raw");
  EXPECT_EQ(stub->Sign(&ctx2, empty, &resp).error_code(),
            grpc::StatusCode::INVALID_ARGUMENT);
}

TEST_F(SignerTest, BatchSignsValidItemsAndRefusesBadOnesOneByOne) {
  auto stub = Stub(alpha_);
  grpc::ClientContext ctx;
  Deadline(ctx);
  v1::SignJwtBatchRequest req;
  req.set_scope("alpha-es256");
  req.add_claims_json(Claims("alpha-es256"));
  req.add_claims_json(R"({"iss":"x","iss":"y"})");
  req.add_claims_json(Claims("alpha-es256", 0, 99999));
  req.add_claims_json(Claims("alpha-es256"));
  v1::SignJwtBatchResponse resp;
  grpc::Status st = stub->SignJwtBatch(&ctx, req, &resp);
  ASSERT_TRUE(st.ok()) << st.error_message();
  ASSERT_EQ(resp.items_size(), 4);
  EXPECT_EQ(resp.items(0).code(), 0);
  EXPECT_FALSE(resp.items(0).jws().empty());
  EXPECT_EQ(resp.items(1).code(),
            static_cast<int>(grpc::StatusCode::INVALID_ARGUMENT));
  EXPECT_THAT(resp.items(1).message(), HasSubstr("duplicate"));
  EXPECT_EQ(resp.items(2).code(),
            static_cast<int>(grpc::StatusCode::INVALID_ARGUMENT));
  EXPECT_THAT(resp.items(2).message(), HasSubstr("lifetime"));
  EXPECT_EQ(resp.items(3).code(), 0);
  EXPECT_NE(resp.items(0).jws(), resp.items(3).jws());
}

// A batch far larger than one part (kMinBatchPart) is signed by several
// workers at once: every valid item still gets its own verifying JWS in its
// own place, every bad item its own error, and the audit log exactly one
// line per signed item.
TEST_F(SignerTest, ALargeBatchSplitAcrossWorkersKeepsEveryItemInItsPlace) {
  auto stub = Stub(alpha_);
  constexpr int kItems = 200;
  const std::set<int> bad = {0, 17, 77, 150, 199};
  v1::SignJwtBatchRequest req;
  req.set_scope("alpha-es256");
  for (int i = 0; i < kItems; ++i) {
    if (bad.contains(i)) {
      req.add_claims_json(Claims("alpha-es256", 0, 99999));  // too long
    } else {
      // A distinct subject per item, to find each one's token again.
      req.add_claims_json(absl::StrCat(
          R"({"iss":")", Issuer("alpha-es256"), R"(","sub":"item-)", i,
          R"(","iat":)", absl::ToUnixSeconds(absl::Now()), R"(,"exp":)",
          absl::ToUnixSeconds(absl::Now()) + 600, "}"));
    }
  }
  grpc::ClientContext ctx;
  Deadline(ctx);
  v1::SignJwtBatchResponse resp;
  grpc::Status st = stub->SignJwtBatch(&ctx, req, &resp);
  ASSERT_TRUE(st.ok()) << st.error_message();
  ASSERT_EQ(resp.items_size(), kItems);
  nlohmann::json jwks = Jwks(*stub, "alpha-es256");
  ASSERT_EQ(jwks["keys"].size(), 2u);  // active (first) and standby
  auto key = KeyFromJwk(jwks["keys"][0]);
  ASSERT_TRUE(key.ok()) << key.status();
  std::set<std::string> hashes;
  for (int i = 0; i < kItems; ++i) {
    SCOPED_TRACE(i);
    const v1::SignJwtBatchItem& item = resp.items(i);
    if (bad.contains(i)) {
      EXPECT_EQ(item.code(),
                static_cast<int>(grpc::StatusCode::INVALID_ARGUMENT));
      EXPECT_THAT(item.message(), HasSubstr(absl::StrCat("item ", i, ":")));
      EXPECT_TRUE(item.jws().empty());
      continue;
    }
    ASSERT_EQ(item.code(), 0) << item.message();
    std::vector<std::string> parts = absl::StrSplit(item.jws(), '.');
    ASSERT_EQ(parts.size(), 3u);
    EXPECT_EQ(B64Decode(parts[1]), req.claims_json(i));
    const std::string input = absl::StrCat(parts[0], ".", parts[1]);
    auto digest =
        hsm::DigestFor(hsm::SignatureAlgorithm::kEcdsaP256Sha256, input);
    ASSERT_TRUE(digest.ok());
    EXPECT_TRUE(key->VerifyDigest(hsm::SignatureAlgorithm::kEcdsaP256Sha256,
                                  *digest, B64Decode(parts[2]))
                    .ok());
    hashes.insert(absl::BytesToHexString(*digest));
  }
  // One audit line per signed item, naming it, with its input's hash.
  std::ifstream in(audit_dir_ + "/audit.log");
  std::string line;
  std::set<std::string> audited;
  std::set<std::string> details;
  while (std::getline(in, line)) {
    nlohmann::json j = nlohmann::json::parse(line);
    if (j.value("event", "") != "sign" || j.value("result", "") != "OK" ||
        !absl::StartsWith(j.value("detail", ""), "batch item ")) {
      continue;
    }
    EXPECT_TRUE(audited.insert(j["input_sha256"].get<std::string>()).second);
    details.insert(j["detail"].get<std::string>());
  }
  EXPECT_EQ(audited, hashes);
  EXPECT_EQ(details.size(), hashes.size());
  for (int i : bad) {
    EXPECT_FALSE(details.contains(absl::StrCat("batch item ", i)));
  }
}

// Every refused item is audited too (it was not: a batch of refused items
// wrote no line), by its place, code and the claims rule it broke, never
// its claims; past the
// refusal rate the rest are counted in refusal_summary lines.
TEST_F(SignerTest, RefusedBatchItemsAreAudited) {
  auto stub = Stub(alpha_);
  constexpr int kItems = 256;
  v1::SignJwtBatchRequest req;
  req.set_scope("alpha-es256");
  for (int i = 0; i < kItems; ++i) {
    // Another scope's issuer: refused item by item.
    req.add_claims_json(Claims("beta"));
  }
  grpc::ClientContext ctx;
  Deadline(ctx);
  v1::SignJwtBatchResponse resp;
  ASSERT_TRUE(stub->SignJwtBatch(&ctx, req, &resp).ok());
  ASSERT_EQ(resp.items_size(), kItems);
  // Refusals are written without waiting: give the writer a moment.
  int lines = 0;
  int summarized = 0;
  for (int attempt = 0; attempt < 50 && lines + summarized < kItems;
       ++attempt) {
    absl::SleepFor(absl::Milliseconds(200));
    lines = 0;
    summarized = 0;
    std::ifstream in(audit_dir_ + "/audit.log");
    std::string line;
    while (std::getline(in, line)) {
      nlohmann::json j = nlohmann::json::parse(line);
      if (j.value("event", "") == "refuse" &&
          absl::StartsWith(j.value("detail", ""), "SignJwtBatch item ")) {
        EXPECT_EQ(j.value("result", ""), "INVALID_ARGUMENT");
        EXPECT_EQ(j.value("caller", ""), absl::StrCat("uri:", kAlpha));
        EXPECT_THAT(line, Not(HasSubstr(Issuer("beta"))));  // no claims
        // Why, as the rule broken, not the message (which quotes iss).
        EXPECT_THAT(j.value("detail", ""),
                    ::testing::EndsWith(": claims rule iss_not_the_scopes"));
        ++lines;
      } else if (j.value("event", "") == "refusal_summary") {
        summarized += j.value("count", 0);
      }
    }
  }
  EXPECT_GT(lines, 0);
  EXPECT_GE(lines + summarized, kItems);
}

TEST_F(SignerTest, CertificatesThatMustNotGetIn) {
  v1::SignJwtResponse resp;
  // No client certificate: the handshake fails.
  auto anonymous = Stub(nullptr);
  grpc::Status st =
      SignJwt(*anonymous, "alpha-es256", Claims("alpha-es256"), &resp);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::UNAVAILABLE);
  // A certificate from another CA: the handshake fails.
  auto stranger_cert =
      other_ca_->Issue("stranger", {.uri_sans = {kAlpha}, .eku = "clientAuth"});
  ASSERT_TRUE(stranger_cert.ok());
  auto stranger = Stub(&*stranger_cert);
  st = SignJwt(*stranger, "alpha-es256", Claims("alpha-es256"), &resp);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::UNAVAILABLE);
  // Right CA, but no extended key usage at all: the handshake takes it, the
  // server does not.
  auto no_eku = ca_->Issue("no-eku", {.uri_sans = {kAlpha}, .eku = ""});
  ASSERT_TRUE(no_eku.ok());
  st = SignJwt(*Stub(&*no_eku), "alpha-es256", Claims("alpha-es256"), &resp);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::PERMISSION_DENIED);
  EXPECT_THAT(st.error_message(), HasSubstr("clientAuth"));
  // Two URI SANs: ambiguous identity.
  auto two = ca_->Issue("two-uris",
                        {.uri_sans = {kAlpha, kBeta}, .eku = "clientAuth"});
  ASSERT_TRUE(two.ok());
  st = SignJwt(*Stub(&*two), "alpha-es256", Claims("alpha-es256"), &resp);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::PERMISSION_DENIED);
  EXPECT_THAT(st.error_message(), HasSubstr("URI SAN"));
  // A URI SAN with characters no URI has (RFC 3986) is no identity (a
  // thirteenth outside attack had one with quotes and a newline taken).
  auto refused = [&](absl::string_view name, const CertOptions& how,
                     absl::string_view why) {
    SCOPED_TRACE(name);
    auto cert = ca_->Issue(name, how);
    ASSERT_TRUE(cert.ok()) << cert.status();
    const grpc::Status refusal =
        SignJwt(*Stub(&*cert), "alpha-es256", Claims("alpha-es256"), &resp);
    EXPECT_EQ(refusal.error_code(), grpc::StatusCode::PERMISSION_DENIED);
    EXPECT_THAT(refusal.error_message(), HasSubstr(std::string(why)));
  };
  refused(
      "odd-uri",
      {.uri_sans = {"spiffe://signet.example/a b\"{}"}, .eku = "clientAuth"},
      "its URI SAN is not a URI (RFC 3986): byte 0x20 at offset 25");
  refused("odd-percent",
          {.uri_sans = {"spiffe://signet.example/a%zz"}, .eku = "clientAuth"},
          "the '%' at offset 25 does not begin a percent-encoding");
  // A CA certificate, even one for a tenant's URI with clientAuth.
  refused("ca-cert", {.uri_sans = {kAlpha}, .eku = "clientAuth", .ca = true},
          "it is a CA certificate (basicConstraints CA:TRUE)");
  // Nor is a CN with a control character (a newline forges log lines),
  // C0 or C1; quotes and backslashes are names' (the next check).
  refused("cn-newline", {.cn = "alpha\nforged", .eku = "clientAuth"},
          "its CN holds the control character U+000A at byte offset 5");
  refused("cn-c1", {.cn = "al\xC2\x85pha", .eku = "clientAuth"},
          "its CN holds the control character U+0085 at byte offset");
  // A CN-only certificate is "cn:<CN>", not a tenant here.
  auto cn = ca_->Issue("cn-only", {.cn = "alpha", .eku = "clientAuth"});
  ASSERT_TRUE(cn.ok());
  st = SignJwt(*Stub(&*cn), "alpha-es256", Claims("alpha-es256"), &resp);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::PERMISSION_DENIED);
  EXPECT_THAT(st.error_message(), HasSubstr("cn:alpha"));
  auto quoted =
      ca_->Issue("cn-quoted", {.cn = "O'Brien \"\\\" x", .eku = "clientAuth"});
  ASSERT_TRUE(quoted.ok());
  st = SignJwt(*Stub(&*quoted), "alpha-es256", Claims("alpha-es256"), &resp);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::PERMISSION_DENIED);
  EXPECT_THAT(st.error_message(), HasSubstr("may not sign with scope"));
}

TEST_F(SignerTest, Tls12IsRefusedAndTls13Works) {
  auto run = [](const char* version) {
    return testing::RunProcess(
        {.argv = {"openssl", "s_client", version, "-connect",
                  absl::StrCat("127.0.0.1:", port_), "-CAfile",
                  ca_->cert_path(), "-cert", alpha_->cert_path, "-key",
                  alpha_->key_path, "-alpn", "h2", "-brief"},
         .unset_env = {"OPENSSL_CONF"}},
        absl::Seconds(20));
  };
  auto tls12 = run("-tls1_2");
  ASSERT_TRUE(tls12.ok());
  EXPECT_NE(tls12->exit_code, 0) << tls12->output;
  auto tls13 = run("-tls1_3");
  ASSERT_TRUE(tls13.ok());
  EXPECT_THAT(tls13->output, HasSubstr("TLSv1.3")) << tls13->output;
}

TEST_F(SignerTest, EverySignatureIsAuditedAndTheChainVerifies) {
  auto stub = Stub(beta_);
  v1::SignJwtResponse resp;
  ASSERT_TRUE(SignJwt(*stub, "beta", Claims("beta"), &resp).ok());
  std::ifstream in(audit_dir_ + "/audit.log");
  std::stringstream buf;
  buf << in.rdbuf();
  std::string log = buf.str();
  EXPECT_THAT(log, HasSubstr(R"("event":"start")"));
  EXPECT_THAT(log, HasSubstr(resp.kid()));
  EXPECT_THAT(log,
              HasSubstr(R"("caller":"uri:spiffe://signet.test/tenant/beta")"));
  // Claims never reach the audit log, only their hash.
  EXPECT_THAT(log, Not(HasSubstr("alice")));
  auto verify =
      testing::RunProcess({.argv = {SIGNETD_BINARY, "audit-verify",
                                    "--audit_public_key=" + audit_dir_ +
                                        "/audit-checkpoint-key.pem",
                                    audit_dir_ + "/audit.log"}},
                          absl::Seconds(30));
  ASSERT_TRUE(verify.ok());
  EXPECT_EQ(verify->exit_code, 0) << verify->output;
  EXPECT_THAT(verify->output, HasSubstr("OK"));
}

TEST_F(SignerTest, AStalledHsmAnswersWithinTheDeadlineAndSigningResumes) {
  auto stub = Stub(alpha_);
  v1::SignJwtResponse resp;
  ASSERT_TRUE(SignJwt(*stub, "alpha-es256", Claims("alpha-es256"), &resp).ok());
  ASSERT_TRUE(hsm_->Stall().ok());
  for (int i = 0; i < 3; ++i) {
    grpc::ClientContext ctx;
    Deadline(ctx, 2);
    v1::SignJwtRequest req;
    req.set_scope("alpha-es256");
    req.set_claims_json(Claims("alpha-es256"));
    grpc::Status st = stub->SignJwt(&ctx, req, &resp);
    EXPECT_EQ(st.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED)
        << st.error_message();
    // signetd's own answer, before the client's timer: not a bare timeout.
    // (A later call may find every session held by the stuck ones,
    // probes' included.)
    EXPECT_THAT(st.error_message(),
                AnyOf(HasSubstr("the HSM did not answer before the deadline"),
                      HasSubstr("no HSM session became free before the "
                                "deadline")));
  }
  ASSERT_TRUE(hsm_->Resume().ok());
  bool resumed = false;
  for (int i = 0; i < 100 && !resumed; ++i) {
    resumed = SignJwt(*stub, "alpha-es256", Claims("alpha-es256"), &resp).ok();
    if (!resumed) absl::SleepFor(absl::Milliseconds(200));
  }
  EXPECT_TRUE(resumed) << signetd_->Output();
  // The calls the HSM held finished signing after their callers had been
  // answered: the log says those signatures reached nobody, next to their
  // "sign" lines.
  int undelivered = 0;
  for (int attempt = 0; attempt < 50 && undelivered == 0; ++attempt) {
    std::ifstream in(audit_dir_ + "/audit.log");
    std::string line;
    while (std::getline(in, line)) {
      nlohmann::json j = nlohmann::json::parse(line);
      if (j.value("event", "") != "undelivered") continue;
      EXPECT_EQ(j.value("result", ""), "DEADLINE_EXCEEDED");
      EXPECT_EQ(j.value("caller", ""), absl::StrCat("uri:", kAlpha));
      EXPECT_THAT(j.value("detail", ""), HasSubstr("discarded"));
      EXPECT_FALSE(j.value("input_sha256", "").empty());
      ++undelivered;
    }
    if (undelivered == 0) absl::SleepFor(absl::Milliseconds(200));
  }
  EXPECT_GT(undelivered, 0) << "no undelivered signature was recorded";
}

// One tenant past its limit gets RESOURCE_EXHAUSTED while another keeps
// being admitted; a full queue answers RESOURCE_EXHAUSTED; requests whose
// deadline passes in the queue answer DEADLINE_EXCEEDED; all of it while
// the HSM is stalled, and signing resumes after.
TEST_F(SignerTest, LimitsHoldWhileTheHsmIsStalled) {
  auto flood = Stub(flood_);
  auto alpha = Stub(alpha_);
  ASSERT_TRUE(hsm_->Stall().ok());
  auto send = [](Signer::Stub* stub, int deadline_s) {
    grpc::ClientContext ctx;
    Deadline(ctx, deadline_s);
    v1::SignJwtRequest req;
    req.set_scope("alpha-es256");
    req.set_claims_json(Claims("alpha-es256"));
    v1::SignJwtResponse resp;
    return stub->SignJwt(&ctx, req, &resp);
  };
  // The flood tenant fills its 2 slots...
  std::vector<std::thread> threads;
  std::vector<grpc::Status> flood_results(2);
  for (int i = 0; i < 2; ++i) {
    threads.emplace_back([&, i] { flood_results[i] = send(flood.get(), 5); });
  }
  absl::SleepFor(absl::Milliseconds(500));
  // ...so its third request is refused at once with its own limit,
  grpc::Status third = send(flood.get(), 5);
  EXPECT_EQ(third.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_THAT(third.error_message(), HasSubstr("in flight"));
  // while alpha is still admitted. Its flood fills the workers (4) and the
  // queue (8): past that, RESOURCE_EXHAUSTED "at capacity"; the admitted
  // ones wait in the queue until their deadline: DEADLINE_EXCEEDED.
  constexpr int kAlpha = 30;
  std::vector<grpc::Status> alpha_results(kAlpha);
  for (int i = 0; i < kAlpha; ++i) {
    threads.emplace_back([&, i] { alpha_results[i] = send(alpha.get(), 5); });
  }
  for (auto& t : threads) t.join();
  for (const grpc::Status& st : flood_results) {
    EXPECT_EQ(st.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED)
        << st.error_message();
  }
  int at_capacity = 0;
  int timed_out = 0;
  for (const grpc::Status& st : alpha_results) {
    if (st.error_code() == grpc::StatusCode::RESOURCE_EXHAUSTED) {
      EXPECT_THAT(st.error_message(), HasSubstr("at capacity"));
      ++at_capacity;
    } else {
      EXPECT_EQ(st.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED)
          << st.error_message();
      ++timed_out;
    }
  }
  // At most workers + queue (4 + 8) were admitted.
  EXPECT_GE(at_capacity, kAlpha - 12);
  EXPECT_GT(timed_out, 0);
  // Both refusals are audited, with why (an outside attack found neither
  // was: the queue's refusal and the watchdog's answer bypassed the audit).
  bool audited_capacity = false;
  bool audited_deadline = false;
  for (int attempt = 0; attempt < 50; ++attempt) {
    std::ifstream in(audit_dir_ + "/audit.log");
    std::string line;
    while (std::getline(in, line)) {
      if (!absl::StrContains(line, "\"event\":\"refuse\"") ||
          !absl::StrContains(
              line, "\"caller\":\"uri:spiffe://signet.test/tenant/alpha\"")) {
        continue;
      }
      audited_capacity |= absl::StrContains(line, "RESOURCE_EXHAUSTED") &&
                          absl::StrContains(line, "at capacity");
      audited_deadline |=
          absl::StrContains(line, "DEADLINE_EXCEEDED") &&
          absl::StrContains(line, "waited for a free HSM session");
    }
    if (audited_capacity && audited_deadline) break;
    absl::SleepFor(absl::Milliseconds(200));
  }
  EXPECT_TRUE(audited_capacity);
  EXPECT_TRUE(audited_deadline);
  ASSERT_TRUE(hsm_->Resume().ok());
  bool resumed = false;
  v1::SignJwtResponse resp;
  for (int i = 0; i < 100 && !resumed; ++i) {
    resumed = SignJwt(*flood, "alpha-es256", Claims("alpha-es256"), &resp).ok();
    if (!resumed) absl::SleepFor(absl::Milliseconds(200));
  }
  EXPECT_TRUE(resumed) << signetd_->Output();
  // No HSM work after a deadline: the alpha calls answered while queued
  // reach the workers once the HSM is back and are skipped, never signed.
  // An alpha call after them (a tenant's tasks run in order) is signed;
  // besides it, only the alpha calls the stall caught inside a worker
  // (at most 4) have "sign" lines.
  ASSERT_TRUE(
      SignJwt(*alpha, "alpha-es256", Claims("alpha-es256"), &resp).ok());
  std::ifstream in(audit_dir_ + "/audit.log");
  std::string line;
  int alpha_signatures = 0;
  while (std::getline(in, line)) {
    alpha_signatures +=
        absl::StrContains(line, "\"event\":\"sign\"") &&
        absl::StrContains(
            line, "\"caller\":\"uri:spiffe://signet.test/tenant/alpha\"");
  }
  EXPECT_GE(alpha_signatures, 1);
  EXPECT_LE(alpha_signatures, 1 + 4);
}

// The same with a live HSM: the flood tenant (limit 2) hammers from 8
// threads while alpha signs one token after another; every alpha request is
// signed, the flood gets its own RESOURCE_EXHAUSTED, and the flood tenant
// still signs within its limit.
TEST_F(SignerTest, OneTenantsFloodDoesNotStopAnothersSigning) {
  auto flood = Stub(flood_);
  auto alpha = Stub(alpha_);
  std::atomic<bool> stop{false};
  std::atomic<int> flood_ok{0};
  std::atomic<int> flood_refused{0};
  std::atomic<int> flood_other{0};
  absl::Mutex mu;
  std::string other_error;
  std::vector<std::thread> flooders;
  for (int i = 0; i < 8; ++i) {
    flooders.emplace_back([&] {
      while (!stop.load()) {
        v1::SignJwtResponse resp;
        grpc::Status st =
            SignJwt(*flood, "alpha-es256", Claims("alpha-es256"), &resp);
        if (st.ok()) {
          ++flood_ok;
        } else if (st.error_code() == grpc::StatusCode::RESOURCE_EXHAUSTED &&
                   absl::StrContains(st.error_message(), "in flight")) {
          ++flood_refused;
        } else {
          ++flood_other;
          absl::MutexLock lock(&mu);
          other_error = st.error_message();
        }
      }
    });
  }
  // Alpha signs at least 50 tokens, and goes on (up to a bound) until the
  // flood has been refused at least once: admission is the server's, so the
  // test waits for it rather than assuming a timing.
  int alpha_signed = 0;
  std::vector<std::string> alpha_errors;
  for (int i = 0; i < 2000 && (i < 50 || flood_refused.load() == 0); ++i) {
    v1::SignJwtResponse resp;
    grpc::Status st =
        SignJwt(*alpha, "alpha-es256", Claims("alpha-es256"), &resp);
    if (st.ok()) {
      ++alpha_signed;
    } else {
      alpha_errors.push_back(
          absl::StrCat(st.error_code(), ": ", st.error_message()));
    }
  }
  stop = true;
  for (auto& t : flooders) t.join();
  EXPECT_THAT(alpha_errors, ::testing::IsEmpty());
  EXPECT_GE(alpha_signed, 50);
  EXPECT_GT(flood_refused.load(), 0);
  EXPECT_GT(flood_ok.load(), 0);
  EXPECT_EQ(flood_other.load(), 0) << other_error;
}

TEST_F(SignerTest, AnUnwritableAuditLogStopsSigning) {
  std::string dir = token_->dir() + "/audit-broken";
  int port = 0;
  auto signetd = StartSecondSignetd(dir, &port);
  ASSERT_NE(signetd, nullptr);
  auto stub = Stub(alpha_, nullptr, port);
  v1::SignJwtResponse resp;
  ASSERT_TRUE(SignJwt(*stub, "alpha-es256", Claims("alpha-es256"), &resp).ok());
  // Immutable: every further write fails, even through the open descriptor.
  std::string log = dir + "/audit.log";
  auto chattr = testing::RunProcess({.argv = {"chattr", "+i", log}});
  ASSERT_TRUE(chattr.ok() && chattr->succeeded())
      << (chattr.ok() ? chattr->output : chattr.status().ToString());
  for (int i = 0; i < 3; ++i) {
    v1::SignJwtResponse refused;
    grpc::Status st =
        SignJwt(*stub, "alpha-es256", Claims("alpha-es256"), &refused);
    EXPECT_EQ(st.error_code(), grpc::StatusCode::UNAVAILABLE);
    EXPECT_THAT(st.error_message(), HasSubstr("audit"));
    EXPECT_TRUE(refused.jws().empty());
  }
  (void)testing::RunProcess({.argv = {"chattr", "-i", log}});
}

TEST_F(SignerTest, AfterKillNineEveryReceivedTokenHasItsAuditLine) {
  std::string dir = token_->dir() + "/audit-kill9";
  int port = 0;
  auto signetd = StartSecondSignetd(dir, &port);
  ASSERT_NE(signetd, nullptr);
  std::vector<std::string> received[4];
  std::atomic<bool> stop{false};
  std::vector<std::thread> clients;
  for (int t = 0; t < 4; ++t) {
    clients.emplace_back([&, t] {
      auto stub = Stub(alpha_, nullptr, port);
      while (!stop.load()) {
        v1::SignJwtResponse resp;
        if (SignJwt(*stub, "alpha-es256", Claims("alpha-es256"), &resp).ok()) {
          received[t].push_back(resp.jws());
        }
      }
    });
  }
  absl::SleepFor(absl::Seconds(1));
  kill(signetd->pid(), SIGKILL);
  absl::SleepFor(absl::Milliseconds(300));
  stop = true;
  for (auto& t : clients) t.join();
  std::ifstream in(dir + "/audit.log");
  std::stringstream buf;
  buf << in.rdbuf();
  std::string log = buf.str();
  size_t total = 0;
  for (const auto& tokens : received) {
    for (const std::string& jws : tokens) {
      ++total;
      std::string input = jws.substr(0, jws.rfind('.'));
      auto digest = crypto::Sha256(input);
      ASSERT_TRUE(digest.ok());
      EXPECT_THAT(log, HasSubstr(absl::BytesToHexString(*digest)));
    }
  }
  EXPECT_GT(total, 0u);
  // The log the kill cut short still verifies as a chain.
  auto verify = testing::RunProcess(
      {.argv = {SIGNETD_BINARY, "audit-verify",
                "--audit_keyring=" + dir + "/audit-keyring.pem",
                dir + "/audit.log"}},
      absl::Seconds(30));
  ASSERT_TRUE(verify.ok());
  EXPECT_EQ(verify->exit_code, 0) << verify->output;
  // Without a key, only if asked: the chain alone can be recomputed.
  auto keyless = testing::RunProcess(
      {.argv = {SIGNETD_BINARY, "audit-verify", dir + "/audit.log"}},
      absl::Seconds(30));
  ASSERT_TRUE(keyless.ok());
  EXPECT_EQ(keyless->exit_code, 2) << keyless->output;
  EXPECT_THAT(keyless->output, HasSubstr("give --audit_keyring"));
  auto chain_only =
      testing::RunProcess({.argv = {SIGNETD_BINARY, "audit-verify",
                                    "--no_signatures", dir + "/audit.log"}},
                          absl::Seconds(30));
  ASSERT_TRUE(chain_only.ok());
  EXPECT_EQ(chain_only->exit_code, 0) << chain_only->output;
}

// A crash in the middle of an audit line (signetd's test-only hook writes
// half of line 30, then kills itself): the torn line's call was never
// answered; the next start moves the fragment to a side file, records it
// in a torn_tail line and goes on; the whole log verifies.
TEST_F(SignerTest, AnAuditLineTornByACrashIsRecoveredAtTheNextStart) {
  const std::string dir = token_->dir() + "/audit-torn";
  const std::string log = dir + "/audit.log";
  int port = 0;
  auto crashing = StartSecondSignetd(
      dir, &port, "", {{"SIGNET_TEST_KILL_MID_AUDIT_LINE", "30"}});
  ASSERT_NE(crashing, nullptr);
  auto stub = Stub(alpha_, nullptr, port);
  std::vector<std::string> received;
  for (int i = 0; i < 200; ++i) {
    v1::SignJwtResponse resp;
    if (!SignJwt(*stub, "alpha-es256", Claims("alpha-es256"), &resp).ok()) {
      break;
    }
    received.push_back(resp.jws());
  }
  auto exited = crashing->WaitExit(absl::Seconds(30));
  ASSERT_TRUE(exited.ok()) << exited.status();
  ASSERT_FALSE(received.empty());
  std::string torn;
  {
    std::ifstream in(log);
    std::stringstream buf;
    buf << in.rdbuf();
    torn = buf.str();
  }
  ASSERT_FALSE(torn.empty());
  EXPECT_NE(torn.back(), '\n') << "the crash left no partial line";
  const std::string fragment = torn.substr(torn.rfind('\n') + 1);
  EXPECT_THAT(fragment, HasSubstr("{\"seq\":30,"));
  // Every answered token has its whole line.
  const std::string whole_lines = torn.substr(0, torn.rfind('\n') + 1);
  for (const std::string& jws : received) {
    auto digest = crypto::Sha256(jws.substr(0, jws.rfind('.')));
    ASSERT_TRUE(digest.ok());
    EXPECT_THAT(whole_lines, HasSubstr(absl::BytesToHexString(*digest)));
  }

  // The next start recovers by itself and signs.
  auto again = StartSecondSignetd(dir, &port);
  ASSERT_NE(again, nullptr);
  v1::SignJwtResponse resp;
  EXPECT_TRUE(SignJwt(*Stub(alpha_, nullptr, port), "alpha-es256",
                      Claims("alpha-es256"), &resp)
                  .ok());
  auto code = again->Stop(SIGTERM, absl::Seconds(30));
  ASSERT_TRUE(code.ok());
  std::string recovered;
  {
    std::ifstream in(log);
    std::stringstream buf;
    buf << in.rdbuf();
    recovered = buf.str();
  }
  EXPECT_THAT(recovered, HasSubstr("\"event\":\"torn_tail\""));
  {
    std::ifstream side(dir + "/audit.log.torn-30");
    std::stringstream buf;
    buf << side.rdbuf();
    EXPECT_EQ(buf.str(), fragment) << "the side file holds the fragment";
  }
  auto verify = testing::RunProcess(
      {.argv = {SIGNETD_BINARY, "audit-verify",
                "--audit_keyring=" + dir + "/audit-keyring.pem",
                "--require_checkpoint_coverage", log}},
      absl::Seconds(30));
  ASSERT_TRUE(verify.ok());
  EXPECT_EQ(verify->exit_code, 0) << verify->output;
}

// The off-host copy: every checkpoint goes to the syslog sink once it is in
// the file, and with the sink's last checkpoint a cut-off tail is found.
TEST_F(SignerTest, CheckpointsReachTheSyslogSinkAndACutTailIsFound) {
  std::string dir = token_->dir() + "/audit-syslog";
  mkdir(dir.c_str(), 0700);
  const std::string sink_path = dir + "/syslog.sock";
  int sink = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  ASSERT_GE(sink, 0);
  sockaddr_un addr = {};
  addr.sun_family = AF_UNIX;
  std::memcpy(addr.sun_path, sink_path.c_str(), sink_path.size());
  ASSERT_EQ(bind(sink, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
  int port = 0;
  auto signetd = StartSecondSignetd(
      dir, &port, absl::StrCat("audit_syslog_socket: \"", sink_path, "\"\n"));
  ASSERT_NE(signetd, nullptr);
  v1::SignJwtResponse resp;
  ASSERT_TRUE(SignJwt(*Stub(alpha_, nullptr, port), "alpha-es256",
                      Claims("alpha-es256"), &resp)
                  .ok());
  auto code = signetd->Stop(SIGTERM, absl::Seconds(30));
  ASSERT_TRUE(code.ok());
  EXPECT_EQ(*code, 0);
  // The final checkpoint, as the sink received it.
  std::string last;
  std::string new_chain;
  char buf[65536];
  for (;;) {
    ssize_t n = recv(sink, buf, sizeof(buf), MSG_DONTWAIT);
    if (n <= 0) break;
    std::string datagram(buf, n);
    if (absl::StrContains(datagram, "audit-new-chain ")) {
      // A warning (LOG_AUTHPRIV | LOG_WARNING).
      EXPECT_EQ(datagram.rfind("<84>signetd[", 0), 0u) << datagram;
      new_chain = datagram;
      continue;
    }
    EXPECT_EQ(datagram.rfind("<85>signetd[", 0), 0u) << datagram;
    size_t at = datagram.find("audit-checkpoint {");
    if (at != std::string::npos) last = datagram.substr(at + 17);
  }
  close(sink);
  ASSERT_FALSE(last.empty()) << "no checkpoint reached the sink";
  const std::string log = dir + "/audit.log";
  // This log starts a new chain on a token whose audit key the first
  // signetd made: said in the sink and in the log, not silently (as it
  // would be for a log moved away or deleted). The first signetd's log, on
  // a new token, says nothing of the kind.
  EXPECT_THAT(new_chain, HasSubstr("a new chain starts at line 1"));
  EXPECT_THAT(new_chain, HasSubstr("deleted or moved away"));
  {
    std::ifstream second_log(log);
    std::stringstream text;
    text << second_log.rdbuf();
    EXPECT_THAT(text.str(), HasSubstr(R"("event":"new_chain")"));
    std::ifstream first_log(audit_dir_ + "/audit.log");
    std::stringstream first_text;
    first_text << first_log.rdbuf();
    EXPECT_THAT(first_text.str(), HasSubstr(R"("event":"start")"));
    EXPECT_THAT(first_text.str(), Not(HasSubstr(R"("event":"new_chain")")));
  }
  auto verify = [&](const std::string& path) {
    return testing::RunProcess(
        {.argv = {SIGNETD_BINARY, "audit-verify",
                  "--audit_public_key=" + dir + "/audit-checkpoint-key.pem",
                  "--expected_checkpoint=" + last, path}},
        absl::Seconds(30));
  };
  auto whole = verify(log);
  ASSERT_TRUE(whole.ok());
  EXPECT_EQ(whole->exit_code, 0) << whole->output;
  // The keyring signetd keeps beside the log checks each checkpoint with the
  // key its kid names, and this run's key was introduced in the log.
  auto by_kid = testing::RunProcess(
      {.argv = {SIGNETD_BINARY, "audit-verify",
                "--audit_keyring=" + dir + "/audit-keyring.pem",
                "--expected_checkpoint=" + last, log}},
      absl::Seconds(30));
  ASSERT_TRUE(by_kid.ok());
  EXPECT_EQ(by_kid->exit_code, 0) << by_kid->output;
  {
    std::ifstream whole_log(log);
    std::stringstream text;
    text << whole_log.rdbuf();
    EXPECT_THAT(text.str(), HasSubstr(R"("event":"audit_key")"));
  }
  // Cut the tail back past that checkpoint (as someone hiding the last
  // signatures would): the file alone still chains, the sink's copy does not
  // match any more.
  std::ifstream in(log);
  std::vector<std::string> lines;
  for (std::string line; std::getline(in, line);) lines.push_back(line);
  ASSERT_GE(lines.size(), 3u);
  const std::string cut = dir + "/audit-cut.log";
  {
    std::ofstream out(cut);
    for (size_t i = 0; i + 2 < lines.size(); ++i) out << lines[i] << "\n";
  }
  auto truncated = verify(cut);
  ASSERT_TRUE(truncated.ok());
  EXPECT_NE(truncated->exit_code, 0) << truncated->output;
  EXPECT_THAT(truncated->output, HasSubstr("cut off"));
}

}  // namespace
}  // namespace signet
