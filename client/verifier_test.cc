// signet::Verifier, fast: keys made here with OpenSSL (a test may hold
// private keys; signet's own code never does), published as local JWK sets
// through a JwksSource of the test's own, a simulated clock, and one tiny
// loopback HTTP server for the libcurl source.
#include "client/verifier.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/ec.h>
#include <openssl/evp.h>
#include <openssl/rsa.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "base/base64url.h"
#include "base/clock.h"
#include "client/jwks_fetcher.h"
#include "client/verifier_json.h"
#include "crypto/public_keys.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"

namespace signet {
namespace {

using ::testing::HasSubstr;
using ::testing::StartsWith;
using Json = nlohmann::json;

constexpr char kIssuerA[] = "https://consumer-a.issuer.signet.test";
constexpr char kIssuerB[] = "https://consumer-b.issuer.signet.test";
constexpr char kIssuerE[] = "https://enterprise.issuer.signet.test";
constexpr char kUrlA[] =
    "https://keys.signet.test/scopes/consumer-a/.well-known/jwks.json";
constexpr char kUrlB[] =
    "https://keys.signet.test/scopes/consumer-b/.well-known/jwks.json";
constexpr char kUrlE[] =
    "https://keys.signet.test/scopes/enterprise/.well-known/jwks.json";
constexpr char kUrlConsumerClass[] =
    "https://keys.signet.test/consumer/.well-known/jwks.json";

const absl::Time kStart = absl::FromUnixSeconds(1700000000);

std::string B64(absl::string_view bytes) {
  return absl::WebSafeBase64Escape(bytes);
}

// ---------------------------------------------------------------------------
// Test keys (private: the test signs).

std::string BnParam(EVP_PKEY* key, const char* name, int pad) {
  BIGNUM* bn = nullptr;
  EXPECT_EQ(EVP_PKEY_get_bn_param(key, name, &bn), 1) << name;
  int size = pad > 0 ? pad : BN_num_bytes(bn);
  std::string out(static_cast<size_t>(size), '\0');
  EXPECT_EQ(
      BN_bn2binpad(bn, reinterpret_cast<unsigned char*>(out.data()), size),
      size);
  BN_free(bn);
  return out;
}

class TestKey {
 public:
  // alg: ES256, ES384, RS256 or PS256; rsa_bits for RSA.
  static std::unique_ptr<TestKey> Make(std::string alg, std::string kid,
                                       size_t rsa_bits = 2048) {
    auto key = std::unique_ptr<TestKey>(new TestKey);
    key->alg_ = alg;
    key->kid_ = kid;
    EVP_PKEY* raw = nullptr;
    if (alg == "ES256") {
      raw = EVP_PKEY_Q_keygen(nullptr, nullptr, "EC", "P-256");
    } else if (alg == "ES384") {
      raw = EVP_PKEY_Q_keygen(nullptr, nullptr, "EC", "P-384");
    } else {
      raw = EVP_PKEY_Q_keygen(nullptr, nullptr, "RSA", rsa_bits);
    }
    EXPECT_NE(raw, nullptr) << alg;
    key->key_.reset(raw);
    return key;
  }

  const std::string& kid() const { return kid_; }
  const std::string& alg() const { return alg_; }
  bool ec() const { return alg_ == "ES256" || alg_ == "ES384"; }
  int field() const { return alg_ == "ES384" ? 48 : 32; }

  // The public JWK, as signetd writes it.
  Json Jwk() const {
    Json jwk = {{"kid", kid_}, {"alg", alg_}, {"use", "sig"}};
    if (ec()) {
      jwk["kty"] = "EC";
      jwk["crv"] = alg_ == "ES384" ? "P-384" : "P-256";
      jwk["x"] = B64(BnParam(key_.get(), OSSL_PKEY_PARAM_EC_PUB_X, field()));
      jwk["y"] = B64(BnParam(key_.get(), OSSL_PKEY_PARAM_EC_PUB_Y, field()));
    } else {
      jwk["kty"] = "RSA";
      jwk["n"] = B64(BnParam(key_.get(), OSSL_PKEY_PARAM_RSA_N, 0));
      jwk["e"] = B64(BnParam(key_.get(), OSSL_PKEY_PARAM_RSA_E, 0));
    }
    return jwk;
  }

  // A signature with this key's algorithm (`as` overrides it), in JWS form
  // unless `der` (ECDSA only). `pss_salt` for PS256.
  std::string Sign(absl::string_view input, bool der = false,
                   int pss_salt = RSA_PSS_SALTLEN_DIGEST,
                   std::string as = "") const {
    const std::string alg = as.empty() ? alg_ : as;
    EVP_MD_CTX* md = EVP_MD_CTX_new();
    EVP_PKEY_CTX* pctx = nullptr;
    EXPECT_EQ(
        EVP_DigestSignInit_ex(md, &pctx, alg == "ES384" ? "SHA384" : "SHA256",
                              nullptr, nullptr, key_.get(), nullptr),
        1);
    if (alg == "PS256") {
      EXPECT_EQ(EVP_PKEY_CTX_set_rsa_padding(pctx, RSA_PKCS1_PSS_PADDING), 1);
      EXPECT_EQ(EVP_PKEY_CTX_set_rsa_pss_saltlen(pctx, pss_salt), 1);
      EXPECT_EQ(EVP_PKEY_CTX_set_rsa_mgf1_md_name(pctx, "SHA256", nullptr), 1);
    }
    size_t len = 0;
    const auto* in = reinterpret_cast<const unsigned char*>(input.data());
    EXPECT_EQ(EVP_DigestSign(md, nullptr, &len, in, input.size()), 1);
    std::string sig(len, '\0');
    EXPECT_EQ(EVP_DigestSign(md, reinterpret_cast<unsigned char*>(sig.data()),
                             &len, in, input.size()),
              1);
    sig.resize(len);
    EVP_MD_CTX_free(md);
    if (!ec() || der) return sig;
    absl::StatusOr<std::string> raw = crypto::EcdsaDerToRaw(
        alg_ == "ES384" ? crypto::EcCurve::kP384 : crypto::EcCurve::kP256, sig);
    EXPECT_TRUE(raw.ok()) << raw.status();
    return raw.ok() ? *raw : std::string();
  }

 private:
  TestKey() = default;
  std::string alg_, kid_;
  crypto::EvpPkeyPtr key_;
};

std::string JwksOf(const std::vector<const TestKey*>& keys) {
  Json set = {{"keys", Json::array()}};
  for (const TestKey* k : keys) set["keys"].push_back(k->Jwk());
  return set.dump();
}

// header.claims.signature from JSON texts (exact bytes, so tests can write
// duplicates and other oddities).
std::string Token(absl::string_view header_json, absl::string_view claims_json,
                  const TestKey& key, bool der = false) {
  std::string input = absl::StrCat(B64(header_json), ".", B64(claims_json));
  return absl::StrCat(input, ".", B64(key.Sign(input, der)));
}

std::string Header(const TestKey& key, absl::string_view extra = "") {
  return absl::StrCat(R"({"alg":")", key.alg(), R"(","kid":")", key.kid(),
                      R"(","typ":"JWT")", extra, "}");
}

std::string Claims(absl::string_view iss, absl::Time now = kStart,
                   absl::string_view extra = "") {
  return absl::StrCat(R"({"iss":")", iss, R"(","sub":"alice","iat":)",
                      absl::ToUnixSeconds(now), R"(,"exp":)",
                      absl::ToUnixSeconds(now + absl::Minutes(10)), extra, "}");
}

// ---------------------------------------------------------------------------
// Local key sets.

class FakeSource : public JwksSource {
 public:
  void Publish(const std::string& url, std::string body,
               std::string cache_control = "public, max-age=300") {
    absl::MutexLock lock(&mu_);
    docs_[url] = {std::move(body), std::move(cache_control)};
    errors_.erase(url);
  }
  void Break(const std::string& url) {
    absl::MutexLock lock(&mu_);
    errors_[url] = absl::UnavailableError(
        absl::StrCat("JWKS fetch \"", url, "\": connection refused"));
  }
  int Fetches(const std::string& url) {
    absl::MutexLock lock(&mu_);
    return fetches_[url];
  }
  absl::StatusOr<JwksDocument> Fetch(const std::string& url) override {
    absl::MutexLock lock(&mu_);
    ++fetches_[url];
    if (auto it = errors_.find(url); it != errors_.end()) return it->second;
    auto it = docs_.find(url);
    if (it == docs_.end()) {
      return absl::UnavailableError("HTTP status 404, not 200");
    }
    return it->second;
  }

 private:
  absl::Mutex mu_;
  std::map<std::string, JwksDocument> docs_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, absl::Status> errors_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, int> fetches_ ABSL_GUARDED_BY(mu_);
};

// ---------------------------------------------------------------------------

class VerifierTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    a_ = TestKey::Make("ES256", "kid-consumer-a").release();
    b_ = TestKey::Make("ES256", "kid-consumer-b").release();
    a384_ = TestKey::Make("ES384", "kid-consumer-a-384").release();
    a_rs_ = TestKey::Make("RS256", "kid-consumer-a-rs256").release();
    a_ps_ = TestKey::Make("PS256", "kid-consumer-a-ps256").release();
    e_ = TestKey::Make("ES256", "kid-enterprise").release();
    e_rs_ = TestKey::Make("RS256", "kid-enterprise-rs256").release();
  }
  static void TearDownTestSuite() {
    for (TestKey* k : {a_, b_, a384_, a_rs_, a_ps_, e_, e_rs_}) delete k;
  }

  void SetUp() override {
    source_ = std::make_shared<FakeSource>();
    // Each scope's own set, and (for the contrast test) a class set that
    // holds both consumer scopes' keys, as signetd publishes them.
    source_->Publish(kUrlA, JwksOf({a_, a384_, a_rs_, a_ps_}));
    source_->Publish(kUrlB, JwksOf({b_}));
    source_->Publish(kUrlE, JwksOf({e_, e_rs_}));
    source_->Publish(kUrlConsumerClass, JwksOf({a_, b_}));
  }

  VerifierOptions Options(std::vector<TrustedIssuer> issuers = {
                              {kIssuerA, kUrlA}, {kIssuerB, kUrlB}}) {
    VerifierOptions options;
    options.issuers = std::move(issuers);
    options.clock = &clock_;
    return options;
  }

  std::unique_ptr<Verifier> Make(VerifierOptions options) {
    auto v = Verifier::CreateWithSource(std::move(options), source_);
    EXPECT_TRUE(v.ok()) << v.status();
    return v.ok() ? *std::move(v) : nullptr;
  }
  std::unique_ptr<Verifier> Make() { return Make(Options()); }

  // Asserts that `token` is refused with `reason` (and the status code and
  // message prefix that go with it).
  static void ExpectRefused(
      Verifier& v, absl::string_view token, VerifyError reason,
      absl::StatusCode code = absl::StatusCode::kUnauthenticated) {
    absl::StatusOr<VerifiedToken> r = v.Verify(token);
    ASSERT_FALSE(r.ok()) << "accepted: " << token;
    EXPECT_EQ(GetVerifyError(r.status()), reason)
        << "wanted " << VerifyErrorName(reason) << ", got " << r.status();
    EXPECT_EQ(r.status().code(), code) << r.status();
    EXPECT_THAT(std::string(r.status().message()),
                StartsWith(absl::StrCat(VerifyErrorName(reason), ": ")));
  }

  static void ExpectAccepted(Verifier& v, absl::string_view token,
                             absl::string_view iss) {
    absl::StatusOr<VerifiedToken> r = v.Verify(token);
    ASSERT_TRUE(r.ok()) << r.status();
    EXPECT_EQ(r->issuer, iss);
  }

  static inline TestKey *a_, *b_, *a384_, *a_rs_, *a_ps_, *e_, *e_rs_;
  std::shared_ptr<FakeSource> source_;
  base::SimulatedClock clock_{kStart};
};

// --- Valid tokens ----------------------------------------------------------

TEST_F(VerifierTest, AcceptsEveryDefaultAlgorithm) {
  auto v = Make();
  for (const TestKey* key : {a_, a384_, a_rs_, a_ps_}) {
    SCOPED_TRACE(key->alg());
    std::string claims = Claims(kIssuerA);
    absl::StatusOr<VerifiedToken> r =
        v->Verify(Token(Header(*key), claims, *key));
    ASSERT_TRUE(r.ok()) << r.status();
    EXPECT_EQ(r->issuer, kIssuerA);
    EXPECT_EQ(r->kid, key->kid());
    EXPECT_EQ(r->alg, key->alg());
    EXPECT_EQ(r->claims_json, claims);  // the exact bytes signed
    EXPECT_EQ(r->header_json, Header(*key));
    EXPECT_EQ(GetVerifyError(absl::OkStatus()), VerifyError::kNone);
  }
}

TEST_F(VerifierTest, TrailingNewlineIsIgnored) {
  auto v = Make();
  ExpectAccepted(*v, Token(Header(*a_), Claims(kIssuerA), *a_) + "\n",
                 kIssuerA);
}

// --- Storm-0558 regressions ------------------------------------------------

// Within one class: consumer scope B's key never vouches for consumer scope
// A's issuer, even when B is trusted for its own tokens.
TEST_F(VerifierTest, ScopeBKeyClaimingScopeAIssuerIsRefused) {
  auto v = Make();  // trusts A and B, each with its own set
  ExpectAccepted(*v, Token(Header(*b_), Claims(kIssuerB), *b_), kIssuerB);
  // B signs, names its own kid, claims A: B's kid is not in A's set.
  ExpectRefused(*v, Token(Header(*b_), Claims(kIssuerA), *b_),
                VerifyError::kUnknownKid);
  // B signs but names A's kid: A's key does not verify B's signature.
  ExpectRefused(
      *v,
      Token(absl::StrCat(R"({"alg":"ES256","kid":")", a_->kid(), R"("})"),
            Claims(kIssuerA), *b_),
      VerifyError::kBadSignature);
  // A verifier that trusts only A says the same about B's own tokens.
  auto only_a = Make(Options({{kIssuerA, kUrlA}}));
  ExpectRefused(*only_a, Token(Header(*b_), Claims(kIssuerB), *b_),
                VerifyError::kUntrustedIssuer);
  ExpectRefused(*only_a, Token(Header(*b_), Claims(kIssuerA), *b_),
                VerifyError::kUnknownKid);
}

// The contrast that shows why the binding matters: pointed at the shared
// consumer class set (a misconfiguration signet's discovery never
// suggests), B's forgery of A's tokens would pass.
TEST_F(VerifierTest, ClassSetBindingWouldLetScopeBForgeScopeA) {
  auto misconfigured = Make(Options({{kIssuerA, kUrlConsumerClass}}));
  ExpectAccepted(*misconfigured, Token(Header(*b_), Claims(kIssuerA), *b_),
                 kIssuerA);
  auto bound = Make(Options({{kIssuerA, kUrlA}}));
  ExpectRefused(*bound, Token(Header(*b_), Claims(kIssuerA), *b_),
                VerifyError::kUnknownKid);
}

// A consumer-signed token given to a verifier of the enterprise issuer.
TEST_F(VerifierTest, ConsumerTokenRefusedByEnterpriseVerifier) {
  auto v = Make(Options({{kIssuerE, kUrlE}}));
  ExpectAccepted(*v, Token(Header(*e_), Claims(kIssuerE), *e_), kIssuerE);
  ExpectAccepted(*v, Token(Header(*e_rs_), Claims(kIssuerE), *e_rs_), kIssuerE);
  // Its own issuer: not trusted here.
  ExpectRefused(*v, Token(Header(*a_), Claims(kIssuerA), *a_),
                VerifyError::kUntrustedIssuer);
  // Claiming the enterprise issuer with the consumer kid.
  ExpectRefused(*v, Token(Header(*a_), Claims(kIssuerE), *a_),
                VerifyError::kUnknownKid);
  // Claiming the enterprise issuer and an enterprise kid.
  ExpectRefused(
      *v,
      Token(absl::StrCat(R"({"alg":"ES256","kid":")", e_->kid(), R"("})"),
            Claims(kIssuerE), *a_),
      VerifyError::kBadSignature);
  ExpectRefused(
      *v,
      Token(absl::StrCat(R"({"alg":"ES256","kid":")", e_rs_->kid(), R"("})"),
            Claims(kIssuerE), *a_),
      VerifyError::kAlgMismatch);
  // The consumer scope's set was never fetched: only the issuer's own is.
  EXPECT_EQ(source_->Fetches(kUrlA), 0);
  EXPECT_EQ(source_->Fetches(kUrlConsumerClass), 0);
}

// --- Structure -------------------------------------------------------------

TEST_F(VerifierTest, RefusesMalformedTokens) {
  auto v = Make();
  std::string good = Token(Header(*a_), Claims(kIssuerA), *a_);
  const auto invalid = absl::StatusCode::kInvalidArgument;
  ExpectRefused(*v, good.substr(0, good.rfind('.')), VerifyError::kMalformed,
                invalid);
  ExpectRefused(*v, good + ".", VerifyError::kMalformed, invalid);
  ExpectRefused(*v, good + ".a.b", VerifyError::kMalformed, invalid);  // JWE
  ExpectRefused(*v, "", VerifyError::kMalformed, invalid);
  VerifierOptions small = Options();
  small.max_token_bytes = 64;
  ExpectRefused(*Make(small), good, VerifyError::kMalformed, invalid);
}

TEST_F(VerifierTest, RefusesLenientBase64) {
  auto v = Make();
  const auto invalid = absl::StatusCode::kInvalidArgument;
  std::string header = B64(Header(*a_));
  std::string claims = Claims(kIssuerA);
  std::string input = absl::StrCat(header, ".", B64(claims));
  std::string sig = B64(a_->Sign(input));
  // Padding.
  std::string unaligned = claims;
  while (B64(unaligned).size() % 4 == 0) unaligned += " ";
  std::string padded = B64(unaligned);
  padded.append((4 - padded.size() % 4) % 4, '=');
  ExpectRefused(*v, absl::StrCat(header, ".", padded, ".", sig),
                VerifyError::kBadBase64, invalid);
  // The standard alphabet's '+' and '/'.
  std::string plus = sig;
  plus[3] = '+';
  ExpectRefused(*v, absl::StrCat(input, ".", plus), VerifyError::kBadBase64,
                invalid);
  // Whitespace inside.
  ExpectRefused(*v, absl::StrCat(header, ". ", B64(claims), ".", sig),
                VerifyError::kBadBase64, invalid);
  // Non-zero bits after the last byte: the same 64 bytes, another text.
  ASSERT_EQ(sig.size(), 86u);  // the last character carries 2 bits + 4 zeros
  const std::string alphabet =
      "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
  std::string noncanonical = sig;
  noncanonical.back() = alphabet[alphabet.find(sig.back()) + 1];
  std::string lenient;
  ASSERT_TRUE(absl::WebSafeBase64Unescape(noncanonical, &lenient));
  std::string canonical;
  ASSERT_TRUE(absl::WebSafeBase64Unescape(sig, &canonical));
  ASSERT_EQ(lenient, canonical);  // a lenient decoder would accept it
  ExpectRefused(*v, absl::StrCat(input, ".", noncanonical),
                VerifyError::kBadBase64, invalid);
  EXPECT_FALSE(base::StrictBase64UrlDecode("A").has_value());
  EXPECT_EQ(base::StrictBase64UrlDecode("AQ"), std::string("\x01"));
  EXPECT_FALSE(base::StrictBase64UrlDecode("AR").has_value());
  EXPECT_FALSE(base::StrictBase64UrlDecode("AQ==").has_value());
}

TEST_F(VerifierTest, RefusesHeaderOrClaimsThatAreNotStrictJsonObjects) {
  auto v = Make();
  const auto invalid = absl::StatusCode::kInvalidArgument;
  std::string claims = Claims(kIssuerA);
  for (const std::string& header :
       {std::string("not json"), std::string(R"(["ES256"])"),
        absl::StrCat(Header(*a_), " {}"),
        absl::StrCat("\xEF\xBB\xBF", Header(*a_)),
        std::string(R"({"alg":"ES256","kid":"kid-consumer-a","x":"\u0000"})"),
        std::string(R"({"alg":"ES256","kid":"kid-consumer-a",})")}) {
    SCOPED_TRACE(header);
    ExpectRefused(*v, Token(header, claims, *a_), VerifyError::kBadJson,
                  invalid);
  }
  for (const std::string& bad_claims :
       {std::string("\"a string\""), absl::StrCat(claims, "x"),
        std::string(R"({"iss":"x","n":1e400})"),
        std::string("{\"iss\":\"\xC3\x28\"}")}) {
    SCOPED_TRACE(bad_claims);
    ExpectRefused(*v, Token(Header(*a_), bad_claims, *a_),
                  VerifyError::kBadJson, invalid);
  }
}

TEST_F(VerifierTest, RefusesDuplicateMembers) {
  auto v = Make();
  const auto invalid = absl::StatusCode::kInvalidArgument;
  // A header whose first alg a lenient parser would drop.
  ExpectRefused(*v,
                Token(absl::StrCat(R"({"alg":"none","alg":"ES256","kid":")",
                                   a_->kid(), R"("})"),
                      Claims(kIssuerA), *a_),
                VerifyError::kDuplicateMember, invalid);
  // Two issuers: which one did the signer mean?
  ExpectRefused(*v,
                Token(Header(*a_),
                      absl::StrCat(R"({"iss":")", kIssuerB, R"(",)",
                                   Claims(kIssuerA).substr(1)),
                      *a_),
                VerifyError::kDuplicateMember, invalid);
  // At depth, and after unescaping ("\u0061" is "a").
  ExpectRefused(
      *v,
      Token(Header(*a_),
            Claims(kIssuerA, kStart, R"(,"ext":{"a":1,"\u0061":2})"), *a_),
      VerifyError::kDuplicateMember, invalid);
}

// --- Header ----------------------------------------------------------------

TEST_F(VerifierTest, RefusesHeadersWithoutAlgOrKid) {
  auto v = Make();
  const auto invalid = absl::StatusCode::kInvalidArgument;
  std::string claims = Claims(kIssuerA);
  for (const char* header :
       {R"({"kid":"kid-consumer-a"})", R"({"alg":7,"kid":"kid-consumer-a"})",
        R"({"alg":"ES256"})", R"({"alg":"ES256","kid":""})",
        R"({"alg":"ES256","kid":5})"}) {
    SCOPED_TRACE(header);
    ExpectRefused(*v, Token(header, claims, *a_), VerifyError::kBadHeader,
                  invalid);
  }
}

TEST_F(VerifierTest, RefusesAlgNone) {
  auto v = Make();
  std::string claims = Claims(kIssuerA);
  for (const char* alg : {"none", "None", "NONE"}) {
    std::string header =
        absl::StrCat(R"({"alg":")", alg, R"(","kid":")", a_->kid(), R"("})");
    ExpectRefused(*v, absl::StrCat(B64(header), ".", B64(claims), "."),
                  VerifyError::kAlgNone);
  }
  // Even in the allowlist it cannot be.
  VerifierOptions options = Options();
  options.algorithms = {"ES256", "none"};
  EXPECT_EQ(Verifier::CreateWithSource(options, source_).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST_F(VerifierTest, RefusesAlgorithmsOutsideTheAllowlist) {
  auto v = Make();
  ExpectRefused(
      *v,
      Token(absl::StrCat(R"({"alg":"HS256","kid":")", a_->kid(), R"("})"),
            Claims(kIssuerA), *a_),
      VerifyError::kAlgNotAllowed);
  VerifierOptions es_only = Options();
  es_only.algorithms = {"ES256"};
  auto narrow = Make(es_only);
  ExpectAccepted(*narrow, Token(Header(*a_), Claims(kIssuerA), *a_), kIssuerA);
  ExpectRefused(*narrow, Token(Header(*a_rs_), Claims(kIssuerA), *a_rs_),
                VerifyError::kAlgNotAllowed);
  ExpectRefused(*narrow, Token(Header(*a384_), Claims(kIssuerA), *a384_),
                VerifyError::kAlgNotAllowed);
}

TEST_F(VerifierTest, RefusesHeadersThatPointAtKeysOrAddRules) {
  auto v = Make();
  std::string claims = Claims(kIssuerA);
  for (const std::string& extra :
       {std::string(R"(,"jku":"https://evil.test/jwks.json")"),
        std::string(R"(,"x5u":"https://evil.test/cert.pem")"),
        absl::StrCat(R"(,"jwk":)", a_->Jwk().dump()),
        std::string(R"(,"x5c":["MIIB"])"), std::string(R"(,"crit":["exp"])")}) {
    SCOPED_TRACE(extra);
    ExpectRefused(*v, Token(Header(*a_, extra), claims, *a_),
                  VerifyError::kForbiddenHeader);
  }
}

// --- Issuer and key --------------------------------------------------------

TEST_F(VerifierTest, RefusesMissingOrUntrustedIssuer) {
  auto v = Make();
  ExpectRefused(*v, Token(Header(*a_), R"({"sub":"x","exp":1800000000})", *a_),
                VerifyError::kMissingIssuer);
  ExpectRefused(*v, Token(Header(*a_), R"({"iss":1,"exp":1800000000})", *a_),
                VerifyError::kMissingIssuer);
  ExpectRefused(*v, Token(Header(*a_), Claims("https://evil.test"), *a_),
                VerifyError::kUntrustedIssuer);
  // Byte for byte: a trailing slash is another issuer.
  ExpectRefused(*v,
                Token(Header(*a_), Claims(absl::StrCat(kIssuerA, "/")), *a_),
                VerifyError::kUntrustedIssuer);
  EXPECT_EQ(source_->Fetches(kUrlA), 0);
}

TEST_F(VerifierTest, RefusesUnknownKid) {
  auto v = Make();
  ExpectRefused(
      *v,
      Token(R"({"alg":"ES256","kid":"no-such-kid"})", Claims(kIssuerA), *a_),
      VerifyError::kUnknownKid);
}

TEST_F(VerifierTest, AlgorithmComesFromTheKey) {
  auto v = Make();
  std::string claims = Claims(kIssuerA);
  // RS256 header on the PS256 key, and the other way round, each signed as
  // the header says: the key's alg decides.
  std::string rs_on_ps = absl::StrCat(
      B64(absl::StrCat(R"({"alg":"RS256","kid":")", a_ps_->kid(), R"("})")),
      ".", B64(claims));
  ExpectRefused(*v,
                absl::StrCat(rs_on_ps, ".",
                             B64(a_ps_->Sign(rs_on_ps, false,
                                             RSA_PSS_SALTLEN_DIGEST, "RS256"))),
                VerifyError::kAlgMismatch);
  std::string ps_on_rs = absl::StrCat(
      B64(absl::StrCat(R"({"alg":"PS256","kid":")", a_rs_->kid(), R"("})")),
      ".", B64(claims));
  ExpectRefused(*v,
                absl::StrCat(ps_on_rs, ".",
                             B64(a_rs_->Sign(ps_on_rs, false,
                                             RSA_PSS_SALTLEN_DIGEST, "PS256"))),
                VerifyError::kAlgMismatch);
  // ES384 header on the P-256 key.
  ExpectRefused(
      *v,
      Token(absl::StrCat(R"({"alg":"ES384","kid":")", a_->kid(), R"("})"),
            claims, *a384_),
      VerifyError::kAlgMismatch);
}

TEST_F(VerifierTest, RefusesKeysTheSetDescribesBadly) {
  auto small_rsa = TestKey::Make("RS256", "kid-small", 1024);
  Json no_alg = a_->Jwk();
  no_alg.erase("alg");
  no_alg["kid"] = "kid-no-alg";
  Json wrong_crv = a_->Jwk();
  wrong_crv["crv"] = "P-384";
  wrong_crv["kid"] = "kid-wrong-crv";
  Json wrong_kty = a_->Jwk();
  wrong_kty["kty"] = "RSA";
  wrong_kty["kid"] = "kid-wrong-kty";
  Json short_x = a_->Jwk();
  short_x["x"] = B64(std::string(31, '\x01'));
  short_x["kid"] = "kid-short-x";
  Json off_curve = a_->Jwk();
  off_curve["y"] = B64(std::string(32, '\x01'));
  off_curve["kid"] = "kid-off-curve";
  Json with_private = a_->Jwk();
  with_private["d"] = B64(std::string(32, '\x02'));
  with_private["kid"] = "kid-private";
  Json enc_use = a_->Jwk();
  enc_use["use"] = "enc";
  enc_use["kid"] = "kid-enc";
  Json padded = a_->Jwk();
  padded["x"] = padded["x"].get<std::string>() + "=";
  padded["kid"] = "kid-padded";
  Json dup1 = a_->Jwk();
  dup1["kid"] = "kid-dup";
  Json dup2 = b_->Jwk();
  dup2["kid"] = "kid-dup";
  Json set = {{"keys",
               {small_rsa->Jwk(), no_alg, wrong_crv, wrong_kty, short_x,
                off_curve, with_private, enc_use, padded, dup1, dup2}}};
  source_->Publish(kUrlA, set.dump());
  auto v = Make();
  struct Case {
    const char* kid;
    const TestKey* signer;
    const char* alg;
    const char* why;
  };
  for (const Case& c :
       std::vector<Case>{{"kid-small", small_rsa.get(), "RS256", "1024 bits"},
                         {"kid-no-alg", a_, "ES256", "no \"alg\""},
                         {"kid-wrong-crv", a_, "ES256", "crv"},
                         {"kid-wrong-kty", a_, "ES256", "kty"},
                         {"kid-short-x", a_, "ES256", "32 bytes"},
                         {"kid-off-curve", a_, "ES256", "public key"},
                         {"kid-private", a_, "ES256", "private"},
                         {"kid-enc", a_, "ES256", "use"},
                         {"kid-padded", a_, "ES256", "base64url"},
                         {"kid-dup", a_, "ES256", "more than once"}}) {
    SCOPED_TRACE(c.kid);
    std::string header =
        absl::StrCat(R"({"alg":")", c.alg, R"(","kid":")", c.kid, R"("})");
    absl::StatusOr<VerifiedToken> r =
        v->Verify(Token(header, Claims(kIssuerA), *c.signer));
    ASSERT_FALSE(r.ok());
    EXPECT_EQ(GetVerifyError(r.status()), VerifyError::kUnusableKey)
        << r.status();
    EXPECT_THAT(std::string(r.status().message()), HasSubstr(c.why));
  }
}

// --- Signature -------------------------------------------------------------

TEST_F(VerifierTest, RefusesBadSignatures) {
  auto v = Make();
  std::string token = Token(Header(*a_), Claims(kIssuerA), *a_);
  // Claims changed after signing.
  std::string tampered_claims = Claims(kIssuerA, kStart, R"(,"admin":true)");
  std::string tampered =
      absl::StrCat(B64(Header(*a_)), ".", B64(tampered_claims),
                   token.substr(token.rfind('.')));
  ExpectRefused(*v, tampered, VerifyError::kBadSignature);
  // Another key's signature under A's kid.
  ExpectRefused(
      *v,
      Token(Header(*a_), Claims(kIssuerA), *TestKey::Make("ES256", a_->kid())),
      VerifyError::kBadSignature);
  // RSA signatures cut short, and PSS with another salt length.
  std::string rs = Token(Header(*a_rs_), Claims(kIssuerA), *a_rs_);
  std::string input = rs.substr(0, rs.rfind('.'));
  ExpectRefused(*v, absl::StrCat(input, ".", B64(a_rs_->Sign(input).substr(1))),
                VerifyError::kBadSignature);
  std::string ps_input =
      absl::StrCat(B64(Header(*a_ps_)), ".", B64(Claims(kIssuerA)));
  ExpectAccepted(*v, absl::StrCat(ps_input, ".", B64(a_ps_->Sign(ps_input))),
                 kIssuerA);
  ExpectRefused(
      *v,
      absl::StrCat(ps_input, ".",
                   B64(a_ps_->Sign(ps_input, false, RSA_PSS_SALTLEN_MAX))),
      VerifyError::kBadSignature);
  // An empty signature.
  ExpectRefused(*v, absl::StrCat(input, "."), VerifyError::kBadSignature);
}

TEST_F(VerifierTest, RefusesDerEcdsaSignature) {
  auto v = Make();
  std::string der = Token(Header(*a_), Claims(kIssuerA), *a_, /*der=*/true);
  absl::StatusOr<VerifiedToken> r = v->Verify(der);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(GetVerifyError(r.status()), VerifyError::kBadSignature);
  EXPECT_THAT(std::string(r.status().message()), HasSubstr("r||s"));
  ExpectRefused(*v, Token(Header(*a384_), Claims(kIssuerA), *a384_, true),
                VerifyError::kBadSignature);
}

// --- Time and audience -----------------------------------------------------

TEST_F(VerifierTest, ChecksExpNbfIatWithLeeway) {
  VerifierOptions options = Options();
  options.leeway = absl::Seconds(30);
  auto v = Make(options);
  auto token = [&](absl::string_view claims) {
    return Token(Header(*a_), claims, *a_);
  };
  auto with = [&](absl::string_view members) {
    return token(absl::StrCat(R"({"iss":")", kIssuerA, R"(",)", members, "}"));
  };
  const int64_t now = absl::ToUnixSeconds(kStart);
  // exp is required and a NumericDate.
  ExpectRefused(*v, with(absl::StrCat(R"("iat":)", now)),
                VerifyError::kBadTimeClaim);
  ExpectRefused(*v, with(R"("exp":"1800000000")"), VerifyError::kBadTimeClaim);
  ExpectRefused(*v, with(R"("exp":-5)"), VerifyError::kBadTimeClaim);
  ExpectRefused(*v, with(R"("exp":true)"), VerifyError::kBadTimeClaim);
  ExpectRefused(*v, with(R"("exp":1e300)"), VerifyError::kBadTimeClaim);
  ExpectRefused(*v, with(absl::StrCat(R"("exp":)", now + 60, R"(,"nbf":"0")")),
                VerifyError::kBadTimeClaim);
  // exp: valid until exp + leeway.
  ExpectAccepted(*v, with(absl::StrCat(R"("exp":)", now - 29)), kIssuerA);
  ExpectRefused(*v, with(absl::StrCat(R"("exp":)", now - 30)),
                VerifyError::kExpired);
  ExpectRefused(*v, with(absl::StrCat(R"("exp":)", now - 3600)),
                VerifyError::kExpired);
  // A fractional NumericDate is a number too.
  ExpectAccepted(*v, with(absl::StrCat(R"("exp":)", now + 10, ".5")), kIssuerA);
  // nbf and iat: at most now + leeway.
  ExpectAccepted(
      *v, with(absl::StrCat(R"("exp":)", now + 600, R"(,"nbf":)", now + 30)),
      kIssuerA);
  ExpectRefused(
      *v, with(absl::StrCat(R"("exp":)", now + 600, R"(,"nbf":)", now + 31)),
      VerifyError::kNotYetValid);
  ExpectAccepted(
      *v, with(absl::StrCat(R"("exp":)", now + 600, R"(,"iat":)", now + 30)),
      kIssuerA);
  ExpectRefused(
      *v, with(absl::StrCat(R"("exp":)", now + 600, R"(,"iat":)", now + 31)),
      VerifyError::kIssuedInFuture);
  // The clock moves: the same token expires.
  std::string t = with(absl::StrCat(R"("exp":)", now + 100));
  ExpectAccepted(*v, t, kIssuerA);
  clock_.Advance(absl::Seconds(130));
  ExpectRefused(*v, t, VerifyError::kExpired);
}

TEST_F(VerifierTest, ChecksAudienceWhenConfigured) {
  VerifierOptions options = Options();
  options.audiences = {"mail", "calendar"};
  auto v = Make(options);
  auto with_aud = [&](absl::string_view aud) {
    return Token(Header(*a_),
                 Claims(kIssuerA, kStart, absl::StrCat(R"(,"aud":)", aud)),
                 *a_);
  };
  ExpectAccepted(*v, with_aud(R"("mail")"), kIssuerA);
  ExpectAccepted(*v, with_aud(R"(["files","calendar"])"), kIssuerA);
  ExpectRefused(*v, with_aud(R"("files")"), VerifyError::kAudienceMismatch);
  ExpectRefused(*v, with_aud(R"(["files"])"), VerifyError::kAudienceMismatch);
  ExpectRefused(*v, with_aud(R"([])"), VerifyError::kAudienceMismatch);
  ExpectRefused(*v, with_aud(R"(["mail",7])"), VerifyError::kAudienceMismatch);
  ExpectRefused(*v, with_aud(R"({"mail":1})"), VerifyError::kAudienceMismatch);
  ExpectRefused(*v, Token(Header(*a_), Claims(kIssuerA), *a_),
                VerifyError::kAudienceMismatch);
  // Not configured: not checked.
  ExpectAccepted(*Make(), with_aud(R"("files")"), kIssuerA);
}

// --- Key sets: fetching and caching ----------------------------------------

TEST_F(VerifierTest, FetchFailuresAndBrokenSets) {
  auto v = Make();
  std::string token = Token(Header(*a_), Claims(kIssuerA), *a_);
  source_->Break(kUrlA);
  ExpectRefused(*v, token, VerifyError::kJwksUnavailable,
                absl::StatusCode::kUnavailable);
  for (const char* body : {"not json", R"({"keys":{}})", R"({"nokeys":[]})",
                           R"({"keys":[],"keys":[]})"}) {
    SCOPED_TRACE(body);
    source_->Publish(kUrlA, body);
    ExpectRefused(*v, token, VerifyError::kBadJwks,
                  absl::StatusCode::kUnavailable);
  }
  // Back to normal, the next token needs no waiting.
  source_->Publish(kUrlA, JwksOf({a_}));
  ExpectAccepted(*v, token, kIssuerA);
}

TEST_F(VerifierTest, CacheHonoursMaxAge) {
  auto v = Make();
  std::string token = Token(Header(*a_), Claims(kIssuerA), *a_);
  ExpectAccepted(*v, token, kIssuerA);
  ExpectAccepted(*v, token, kIssuerA);
  EXPECT_EQ(source_->Fetches(kUrlA), 1);
  clock_.Advance(absl::Seconds(299));
  ExpectAccepted(*v, token, kIssuerA);
  EXPECT_EQ(source_->Fetches(kUrlA), 1);
  clock_.Advance(absl::Seconds(1));  // 300 s: expired
  ExpectAccepted(*v, token, kIssuerA);
  EXPECT_EQ(source_->Fetches(kUrlA), 2);
  // An expired set whose refetch fails is not used.
  clock_.Advance(absl::Seconds(300));
  source_->Break(kUrlA);
  ExpectRefused(*v, token, VerifyError::kJwksUnavailable,
                absl::StatusCode::kUnavailable);
  // A key removed from the set stops verifying once the cache expires.
  source_->Publish(kUrlA, JwksOf({a384_}), "max-age=60");
  ExpectRefused(*v, token, VerifyError::kUnknownKid);
}

TEST_F(VerifierTest, NoStoreNoCacheAndNoMaxAgeAreNotCached) {
  std::string token = Token(Header(*a_), Claims(kIssuerA), *a_);
  int expected = 0;
  for (const char* cache_control :
       {"no-store", "no-cache", "public, no-cache, max-age=300", "max-age=0",
        "", "public", "max-age=abc", "max-age=10, max-age=20"}) {
    SCOPED_TRACE(cache_control);
    source_->Publish(kUrlA, JwksOf({a_}), cache_control);
    auto v = Make();
    ExpectAccepted(*v, token, kIssuerA);
    ExpectAccepted(*v, token, kIssuerA);
    expected += 2;
    EXPECT_EQ(source_->Fetches(kUrlA), expected);
  }
}

TEST_F(VerifierTest, CacheLifetimeIsCapped) {
  source_->Publish(kUrlA, JwksOf({a_}), "max-age=86400");
  VerifierOptions options = Options();
  options.max_cache_lifetime = absl::Minutes(5);
  auto v = Make(options);
  std::string token = Token(Header(*a_), Claims(kIssuerA), *a_);
  ExpectAccepted(*v, token, kIssuerA);
  clock_.Advance(absl::Minutes(5) - absl::Seconds(1));
  ExpectAccepted(*v, token, kIssuerA);
  EXPECT_EQ(source_->Fetches(kUrlA), 1);
  clock_.Advance(absl::Seconds(1));
  ExpectAccepted(*v, token, kIssuerA);
  EXPECT_EQ(source_->Fetches(kUrlA), 2);
}

TEST_F(VerifierTest, UnknownKidRefetchesAtABoundedRate) {
  source_->Publish(kUrlA, JwksOf({a_}), "max-age=3600");
  VerifierOptions options = Options();
  options.min_refetch_interval = absl::Seconds(30);
  auto v = Make(options);
  ExpectAccepted(*v, Token(Header(*a_), Claims(kIssuerA), *a_), kIssuerA);
  EXPECT_EQ(source_->Fetches(kUrlA), 1);

  // A key rotated in after our fetch: found by one refetch... but not
  // before the interval since the last fetch has passed.
  auto next = TestKey::Make("ES256", "kid-next");
  source_->Publish(kUrlA, JwksOf({a_, next.get()}), "max-age=3600");
  std::string next_token = Token(Header(*next), Claims(kIssuerA), *next);
  ExpectRefused(*v, next_token, VerifyError::kUnknownKid);
  EXPECT_EQ(source_->Fetches(kUrlA), 1);
  clock_.Advance(absl::Seconds(30));
  ExpectAccepted(*v, next_token, kIssuerA);
  EXPECT_EQ(source_->Fetches(kUrlA), 2);

  // A flood of made-up kids: one refetch per interval, however many tokens.
  auto bogus = [&](int i) {
    return Token(absl::StrCat(R"({"alg":"ES256","kid":"bogus-)", i, R"("})"),
                 Claims(kIssuerA, clock_.Now()), *a_);
  };
  for (int i = 0; i < 20; ++i) {
    ExpectRefused(*v, bogus(i), VerifyError::kUnknownKid);
  }
  EXPECT_EQ(source_->Fetches(kUrlA), 2);
  clock_.Advance(absl::Seconds(31));
  for (int i = 20; i < 40; ++i) {
    ExpectRefused(*v, bogus(i), VerifyError::kUnknownKid);
  }
  EXPECT_EQ(source_->Fetches(kUrlA), 3);
  // Known kids never wait for the rate limit and never refetch.
  ExpectAccepted(*v, Token(Header(*a_), Claims(kIssuerA, clock_.Now()), *a_),
                 kIssuerA);
  EXPECT_EQ(source_->Fetches(kUrlA), 3);
  // Another issuer has its own budget.
  ExpectRefused(*v,
                Token(R"({"alg":"ES256","kid":"bogus-b"})",
                      Claims(kIssuerB, clock_.Now()), *b_),
                VerifyError::kUnknownKid);
  EXPECT_EQ(source_->Fetches(kUrlB), 1);
}

// --- Configuration ---------------------------------------------------------

TEST_F(VerifierTest, CreateRefusesBadOptions) {
  auto create = [&](VerifierOptions o) {
    return Verifier::CreateWithSource(std::move(o), source_).status();
  };
  const auto invalid = absl::StatusCode::kInvalidArgument;
  EXPECT_EQ(create(Options({})).code(), invalid);
  EXPECT_EQ(create(Options({{"", kUrlA}})).code(), invalid);
  EXPECT_EQ(create(Options({{kIssuerA, kUrlA}, {kIssuerA, kUrlB}})).code(),
            invalid);
  absl::Status http =
      create(Options({{kIssuerA, "http://keys.signet.test/jwks.json"}}));
  EXPECT_EQ(http.code(), invalid);
  EXPECT_THAT(std::string(http.message()), HasSubstr("loopback"));
  EXPECT_EQ(create(Options({{kIssuerA, "ftp://127.0.0.1/jwks.json"}})).code(),
            invalid);
  EXPECT_TRUE(create(Options({{kIssuerA, "http://127.0.0.1:8080/j"}})).ok());
  VerifierOptions o = Options();
  o.algorithms = {"HS256"};
  EXPECT_EQ(create(o).code(), invalid);
  o = Options();
  o.algorithms = {};
  EXPECT_EQ(create(o).code(), invalid);
  o = Options();
  o.leeway = absl::Minutes(11);
  EXPECT_EQ(create(o).code(), invalid);
  o = Options();
  o.min_refetch_interval = absl::ZeroDuration();
  EXPECT_EQ(create(o).code(), invalid);
  EXPECT_EQ(GetVerifyError(absl::UnauthenticatedError("x")),
            VerifyError::kNone);
}

// --- The fetcher's rules ---------------------------------------------------

TEST(JwksUrlTest, HttpsEverywhereHttpOnlyOnLoopback) {
  for (const char* ok :
       {"https://keys.example.com/jwks.json", "https://10.0.0.1/jwks.json",
        "http://127.0.0.1:8080/scopes/a/.well-known/jwks.json",
        "http://127.9.9.9/j", "http://[::1]:8080/j", "http://localhost/j",
        "HTTP://LOCALHOST:1/j"}) {
    EXPECT_TRUE(CheckJwksUrl(ok).ok()) << ok << ": " << CheckJwksUrl(ok);
  }
  for (const char* bad :
       {"http://keys.example.com/jwks.json", "http://10.0.0.1/j",
        "http://128.0.0.1/j", "http://[::2]/j", "http://localhost.evil.test/j",
        "http://127.0.0.1.nip.io/j", "ftp://127.0.0.1/j", "file:///etc/passwd",
        "keys.example.com/jwks.json", "", "https://user:pw@keys.example.com/j",
        "http://[::ffff:10.0.0.1]/j"}) {
    absl::Status s = CheckJwksUrl(bad);
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << bad << ": " << s;
  }
}

TEST(CacheControlTest, Parses) {
  EXPECT_EQ(ParseCacheControl("public, max-age=300"), absl::Seconds(300));
  EXPECT_EQ(ParseCacheControl("Max-Age=60"), absl::Seconds(60));
  EXPECT_EQ(ParseCacheControl("max-age=\"60\""), absl::Seconds(60));
  EXPECT_EQ(ParseCacheControl("must-revalidate, max-age = 5"),
            absl::Seconds(5));
  for (const char* none :
       {"", "public", "no-store", "no-cache", "max-age=300, no-store",
        "NO-CACHE, max-age=300", "max-age=0", "max-age=-1", "max-age=1.5",
        "max-age=", "max-age", "max-age=1, max-age=1",
        "max-age=99999999999999999999"}) {
    EXPECT_EQ(ParseCacheControl(none), absl::ZeroDuration()) << none;
  }
}

// A loopback HTTP server that answers every connection with `response` (or
// says nothing at all when `response` is empty) and counts requests.
class TinyHttpServer {
 public:
  explicit TinyHttpServer(std::string response)
      : response_(std::move(response)) {
    fd_ = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in addr = {};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    EXPECT_EQ(bind(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
    EXPECT_EQ(listen(fd_, 16), 0);
    socklen_t len = sizeof(addr);
    getsockname(fd_, reinterpret_cast<sockaddr*>(&addr), &len);
    port_ = ntohs(addr.sin_port);
    if (!response_.empty()) thread_ = std::thread([this] { Serve(); });
  }
  ~TinyHttpServer() {
    stop_ = true;
    shutdown(fd_, SHUT_RDWR);
    close(fd_);
    if (thread_.joinable()) thread_.join();
  }
  std::string Url(absl::string_view path = "/jwks.json") const {
    return absl::StrCat("http://127.0.0.1:", port_, path);
  }
  int requests() const { return requests_; }

 private:
  void Serve() {
    while (!stop_) {
      int c = accept(fd_, nullptr, nullptr);
      if (c < 0) return;
      std::string request;
      char buf[4096];
      while (request.find("\r\n\r\n") == std::string::npos) {
        ssize_t n = recv(c, buf, sizeof(buf), 0);
        if (n <= 0) break;
        request.append(buf, static_cast<size_t>(n));
      }
      ++requests_;
      size_t sent = 0;
      while (sent < response_.size()) {
        ssize_t n = send(c, response_.data() + sent, response_.size() - sent,
                         MSG_NOSIGNAL);
        if (n <= 0) break;
        sent += static_cast<size_t>(n);
      }
      close(c);
    }
  }

  std::string response_;
  int fd_ = -1;
  int port_ = 0;
  std::atomic<bool> stop_{false};
  std::atomic<int> requests_{0};
  std::thread thread_;
};

std::string HttpResponse(absl::string_view status, absl::string_view headers,
                         absl::string_view body) {
  return absl::StrCat("HTTP/1.1 ", status, "\r\nContent-Length: ", body.size(),
                      "\r\n", headers, "Connection: close\r\n\r\n", body);
}

std::unique_ptr<CurlJwksSource> Curl(CurlJwksSourceOptions options = {}) {
  auto source = CurlJwksSource::Create(options);
  EXPECT_TRUE(source.ok()) << source.status();
  return source.ok() ? *std::move(source) : nullptr;
}

TEST(CurlJwksSourceTest, FetchesBodyAndCacheControl) {
  TinyHttpServer server(HttpResponse(
      "200 OK", "Cache-Control: public\r\nCache-Control: max-age=42\r\n",
      R"({"keys":[]})"));
  absl::StatusOr<JwksDocument> doc = Curl()->Fetch(server.Url());
  ASSERT_TRUE(doc.ok()) << doc.status();
  EXPECT_EQ(doc->body, R"({"keys":[]})");
  EXPECT_EQ(doc->cache_control, "public, max-age=42");
  EXPECT_EQ(ParseCacheControl(doc->cache_control), absl::Seconds(42));
}

TEST(CurlJwksSourceTest, RefusesOtherStatusesAndRedirects) {
  TinyHttpServer not_found(HttpResponse("404 Not Found", "", "nope"));
  absl::StatusOr<JwksDocument> doc = Curl()->Fetch(not_found.Url());
  EXPECT_EQ(doc.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(std::string(doc.status().message()), HasSubstr("404"));
  // A redirect (here to a clear-text, non-loopback URL) is not followed.
  TinyHttpServer redirect(HttpResponse(
      "302 Found", "Location: http://keys.example.com/jwks.json\r\n", ""));
  doc = Curl()->Fetch(redirect.Url());
  EXPECT_EQ(doc.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(std::string(doc.status().message()), HasSubstr("302"));
  EXPECT_EQ(redirect.requests(), 1);
}

TEST(CurlJwksSourceTest, SizeCap) {
  std::string body(5000, ' ');
  body[0] = '{';
  body.back() = '}';
  TinyHttpServer server(HttpResponse("200 OK", "", body));
  CurlJwksSourceOptions options;
  options.max_body_bytes = 4096;
  absl::StatusOr<JwksDocument> doc = Curl(options)->Fetch(server.Url());
  EXPECT_EQ(doc.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(std::string(doc.status().message()), HasSubstr("larger than"));
  // Without Content-Length (read to the end of the connection) as well.
  TinyHttpServer unsized(
      absl::StrCat("HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n", body));
  doc = Curl(options)->Fetch(unsized.Url());
  EXPECT_EQ(doc.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(std::string(doc.status().message()), HasSubstr("larger than"));
  options.max_body_bytes = 5000;
  doc = Curl(options)->Fetch(unsized.Url());
  EXPECT_TRUE(doc.ok()) << doc.status();
}

TEST(CurlJwksSourceTest, TimesOut) {
  TinyHttpServer silent("");  // accepts (the kernel does) but never answers
  CurlJwksSourceOptions options;
  options.timeout = absl::Milliseconds(300);
  absl::StatusOr<JwksDocument> doc = Curl(options)->Fetch(silent.Url());
  EXPECT_EQ(doc.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(std::string(doc.status().message()), HasSubstr("imeout"));
}

TEST(CurlJwksSourceTest, RefusesUrlsAndBadOptions) {
  EXPECT_EQ(Curl()->Fetch("http://keys.example.com/jwks.json").status().code(),
            absl::StatusCode::kInvalidArgument);
  CurlJwksSourceOptions options;
  options.ca_file = "/nonexistent/ca.pem";
  EXPECT_EQ(CurlJwksSource::Create(options).status().code(),
            absl::StatusCode::kNotFound);
  options = {};
  options.timeout = absl::ZeroDuration();
  EXPECT_EQ(CurlJwksSource::Create(options).status().code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace signet
