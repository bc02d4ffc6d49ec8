// Interoperability: tokens signed by a real signetd, with every
// algorithm and RSA size it supports, verified against the JWK sets it serves
// over real HTTP by implementations that share no code with signet:
//
//   jwcrypto   Python (Debian python3-jwcrypto): JWKSet.from_json +
//              JWT(jwt=..., key=keyset, algs=[alg], check_claims=...)
//   PyJWT      Python (Debian python3-jwt): PyJWKSet + jwt.decode with
//              algorithms=[alg], issuer, audience, exp/iat/iss required
//   jose       the C `jose jws ver` command-line tool, given the JWK of the
//              token's kid
//   OpenSSL    the public key rebuilt from the JWK's members (n/e or
//              crv/x/y) with EVP_PKEY_fromdata, written as PEM for
//              `openssl dgst -verify`, and EVP_DigestVerify in this process
//              (ECDSA r||s converted to DER first; PSS with salt = digest
//              length)
//
// The Python verifiers are tests/interop/verify_with_python.py, run with
// /usr/bin/python3 (Debian's interpreter, which sees those packages). Each
// verifier is asked for a verdict it can get wrong: every test that expects
// "verified" has a twin that expects "refused" (a token with one flipped
// signature byte; a token checked against another scope's set, same
// algorithm, other audience class or RSA size; a token checked against the
// other class's set), and a verifier that cannot run at all (missing module,
// missing tool) fails the test instead of passing a refusal.
//
// Setup: SoftHSM2 behind a real `p11-kit server`, signetd as a real process
// with mTLS gRPC and its HTTP endpoint on a loopback port. Tokens are signed
// with SignJwt and SignJwtBatch; the JWK sets are fetched with plain HTTP/1.1
// GETs from signetd (the port comes from its "JWKS HTTP listening on" line).
#include <arpa/inet.h>
#include <grpcpp/grpcpp.h>
#include <netinet/in.h>
#include <openssl/bio.h>
#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/ecdsa.h>
#include <openssl/evp.h>
#include <openssl/param_build.h>
#include <openssl/pem.h>
#include <openssl/rsa.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <fstream>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "base/status_macros.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "signet/v1/signer.grpc.pb.h"
#include "tests/testing/http_get.h"
#include "tests/testing/pki.h"
#include "tests/testing/process.h"
#include "tests/testing/signetd_process.h"
#include "tests/testing/temp_token.h"
#include "tests/testing/test_bed.h"

namespace signet {
namespace {

using ::testing::HasSubstr;
using testing::SignetdOptions;
using testing::SignetdProcess;
using testing::TestCa;
using v1::Signer;

constexpr absl::Duration kStartTimeout = absl::Seconds(240);
constexpr char kTenant[] = "spiffe://signet.test/tenant/interop";
constexpr char kBaseUrl[] = "https://keys.signet.test";
constexpr char kPython[] = "/usr/bin/python3";
constexpr char kAudience[] = "mail";

// One scope per algorithm and RSA size signet supports (hsm/algorithm.h,
// config.proto: ES256, ES384, RS256 and PS256 with 2048, 3072 or 4096 bits),
// spread over both audience classes; ES256 and ES384 exist in both classes,
// so a token can be checked against a same-algorithm key of the other class.
struct ScopeCase {
  const char* name;
  const char* audience_class;  // CONSUMER or ENTERPRISE
  const char* alg;             // JOSE name
  int rsa_bits;                // 0 for ECDSA
};
constexpr ScopeCase kScopes[] = {
    {"c-es256", "CONSUMER", "ES256", 0},
    {"c-es384", "CONSUMER", "ES384", 0},
    {"c-rs256-2048", "CONSUMER", "RS256", 2048},
    {"c-ps256-2048", "CONSUMER", "PS256", 2048},
    {"e-es256", "ENTERPRISE", "ES256", 0},
    {"e-es384", "ENTERPRISE", "ES384", 0},
    {"e-rs256-3072", "ENTERPRISE", "RS256", 3072},
    {"e-rs256-4096", "ENTERPRISE", "RS256", 4096},
    {"e-ps256-3072", "ENTERPRISE", "PS256", 3072},
    {"e-ps256-4096", "ENTERPRISE", "PS256", 4096},
};

// A token and the scope that should be the only one to accept it, paired
// with a scope of the same algorithm whose keys must refuse it.
constexpr std::pair<const char*, const char*> kCrossScopePairs[] = {
    {"c-es256", "e-es256"},           {"e-es256", "c-es256"},
    {"c-es384", "e-es384"},           {"e-es384", "c-es384"},
    {"c-rs256-2048", "e-rs256-3072"}, {"e-rs256-4096", "e-rs256-3072"},
    {"c-ps256-2048", "e-ps256-3072"}, {"e-ps256-4096", "e-ps256-3072"},
};

const ScopeCase& Scope(absl::string_view name) {
  for (const ScopeCase& s : kScopes) {
    if (name == s.name) return s;
  }
  ADD_FAILURE() << "no scope " << name;
  return kScopes[0];
}

std::string Issuer(absl::string_view scope) {
  return absl::StrCat("https://", scope, ".issuer.signet.test");
}
std::string ScopeJwksPath(absl::string_view scope) {
  return absl::StrCat("/scopes/", scope, "/.well-known/jwks.json");
}
std::string ClassJwksPath(absl::string_view audience_class) {
  return audience_class == "CONSUMER" ? "/consumer/.well-known/jwks.json"
                                      : "/enterprise/.well-known/jwks.json";
}

std::string B64Decode(absl::string_view s) {
  std::string out;
  EXPECT_TRUE(absl::WebSafeBase64Unescape(s, &out)) << s;
  return out;
}

void WriteFile(const std::string& path, absl::string_view data) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << data;
  out.close();
  EXPECT_TRUE(out.good()) << path;
}

// HTTP: tests/testing/http_get.h (one GET over a fresh loopback
// connection).
using testing::HttpGet;
using testing::HttpResponse;

// ---------------------------------------------------------------------------
// OpenSSL: a public key from a JWK's members (RFC 7518 section 6), without
// signet's code.

struct PkeyFree {
  void operator()(EVP_PKEY* p) const { EVP_PKEY_free(p); }
};
struct PkeyCtxFree {
  void operator()(EVP_PKEY_CTX* p) const { EVP_PKEY_CTX_free(p); }
};
struct MdCtxFree {
  void operator()(EVP_MD_CTX* p) const { EVP_MD_CTX_free(p); }
};
struct ParamBldFree {
  void operator()(OSSL_PARAM_BLD* p) const { OSSL_PARAM_BLD_free(p); }
};
struct ParamFree {
  void operator()(OSSL_PARAM* p) const { OSSL_PARAM_free(p); }
};
struct BnFree {
  void operator()(BIGNUM* p) const { BN_free(p); }
};
struct BioFree {
  void operator()(BIO* p) const { BIO_free(p); }
};
struct EcdsaSigFree {
  void operator()(ECDSA_SIG* p) const { ECDSA_SIG_free(p); }
};
using Pkey = std::unique_ptr<EVP_PKEY, PkeyFree>;

std::unique_ptr<BIGNUM, BnFree> Bn(absl::string_view bytes) {
  return std::unique_ptr<BIGNUM, BnFree>(
      BN_bin2bn(reinterpret_cast<const unsigned char*>(bytes.data()),
                static_cast<int>(bytes.size()), nullptr));
}

absl::StatusOr<std::string> Member(const nlohmann::json& jwk,
                                   const char* name) {
  if (!jwk.contains(name) || !jwk[name].is_string()) {
    return absl::InvalidArgumentError(
        absl::StrCat("JWK has no string \"", name, "\": ", jwk.dump()));
  }
  std::string out;
  if (!absl::WebSafeBase64Unescape(jwk[name].get<std::string>(), &out)) {
    return absl::InvalidArgumentError(
        absl::StrCat("JWK \"", name, "\" is not base64url"));
  }
  return out;
}

// EVP_PKEY_fromdata from n/e (RSA) or crv/x/y (EC), then a public-key check.
absl::StatusOr<Pkey> KeyFromJwk(const nlohmann::json& jwk) {
  std::unique_ptr<OSSL_PARAM_BLD, ParamBldFree> bld(OSSL_PARAM_BLD_new());
  std::string type;
  std::unique_ptr<BIGNUM, BnFree> n, e;
  std::string point;
  std::string group;
  const std::string kty = jwk.value("kty", "");
  if (kty == "RSA") {
    type = "RSA";
    SIGNET_ASSIGN_OR_RETURN(std::string n_bytes, Member(jwk, "n"));
    SIGNET_ASSIGN_OR_RETURN(std::string e_bytes, Member(jwk, "e"));
    if (n_bytes.empty() || n_bytes[0] == '\0') {
      // RFC 7518 section 6.3.1.1: no leading zero octets.
      return absl::InvalidArgumentError("JWK n has a leading zero octet");
    }
    n = Bn(n_bytes);
    e = Bn(e_bytes);
    if (!OSSL_PARAM_BLD_push_BN(bld.get(), OSSL_PKEY_PARAM_RSA_N, n.get()) ||
        !OSSL_PARAM_BLD_push_BN(bld.get(), OSSL_PKEY_PARAM_RSA_E, e.get())) {
      return absl::InternalError("OSSL_PARAM_BLD_push_BN");
    }
  } else if (kty == "EC") {
    type = "EC";
    const std::string crv = jwk.value("crv", "");
    size_t size = 0;
    if (crv == "P-256") {
      group = "P-256";
      size = 32;
    } else if (crv == "P-384") {
      group = "P-384";
      size = 48;
    } else {
      return absl::InvalidArgumentError(absl::StrCat("JWK crv ", crv));
    }
    SIGNET_ASSIGN_OR_RETURN(std::string x, Member(jwk, "x"));
    SIGNET_ASSIGN_OR_RETURN(std::string y, Member(jwk, "y"));
    // RFC 7518 section 6.2.1.2/3: exactly the field size, zero-padded.
    if (x.size() != size || y.size() != size) {
      return absl::InvalidArgumentError(absl::StrCat(
          "JWK x/y are ", x.size(), "/", y.size(), " bytes, not ", size));
    }
    point = absl::StrCat("\x04", x, y);
    if (!OSSL_PARAM_BLD_push_utf8_string(bld.get(), OSSL_PKEY_PARAM_GROUP_NAME,
                                         group.c_str(), 0) ||
        !OSSL_PARAM_BLD_push_octet_string(bld.get(), OSSL_PKEY_PARAM_PUB_KEY,
                                          point.data(), point.size())) {
      return absl::InternalError("OSSL_PARAM_BLD_push");
    }
  } else {
    return absl::InvalidArgumentError(absl::StrCat("JWK kty ", kty));
  }
  std::unique_ptr<OSSL_PARAM, ParamFree> params(
      OSSL_PARAM_BLD_to_param(bld.get()));
  std::unique_ptr<EVP_PKEY_CTX, PkeyCtxFree> ctx(
      EVP_PKEY_CTX_new_from_name(nullptr, type.c_str(), nullptr));
  if (params == nullptr || ctx == nullptr ||
      EVP_PKEY_fromdata_init(ctx.get()) != 1) {
    return absl::InternalError("EVP_PKEY_fromdata_init");
  }
  EVP_PKEY* raw = nullptr;
  if (EVP_PKEY_fromdata(ctx.get(), &raw, EVP_PKEY_PUBLIC_KEY, params.get()) !=
      1) {
    return absl::InvalidArgumentError("EVP_PKEY_fromdata refused the JWK");
  }
  Pkey key(raw);
  std::unique_ptr<EVP_PKEY_CTX, PkeyCtxFree> check(
      EVP_PKEY_CTX_new_from_pkey(nullptr, key.get(), nullptr));
  if (check == nullptr || EVP_PKEY_public_check(check.get()) != 1) {
    return absl::InvalidArgumentError("EVP_PKEY_public_check failed");
  }
  return key;
}

absl::StatusOr<std::string> SpkiPem(EVP_PKEY* key) {
  std::unique_ptr<BIO, BioFree> bio(BIO_new(BIO_s_mem()));
  if (bio == nullptr || PEM_write_bio_PUBKEY(bio.get(), key) != 1) {
    return absl::InternalError("PEM_write_bio_PUBKEY");
  }
  char* data = nullptr;
  long len = BIO_get_mem_data(bio.get(), &data);
  return std::string(data, static_cast<size_t>(len));
}

// JWS r||s (RFC 7518 section 3.4) -> DER ECDSA-Sig-Value (RFC 3279).
absl::StatusOr<std::string> RsToDer(absl::string_view rs) {
  if (rs.empty() || rs.size() % 2 != 0) {
    return absl::InvalidArgumentError("odd r||s length");
  }
  size_t half = rs.size() / 2;
  std::unique_ptr<ECDSA_SIG, EcdsaSigFree> sig(ECDSA_SIG_new());
  BIGNUM* r = Bn(rs.substr(0, half)).release();
  BIGNUM* s = Bn(rs.substr(half)).release();
  if (sig == nullptr || r == nullptr || s == nullptr ||
      ECDSA_SIG_set0(sig.get(), r, s) != 1) {
    BN_free(r);
    BN_free(s);
    return absl::InternalError("ECDSA_SIG_set0");
  }
  unsigned char* der = nullptr;
  int len = i2d_ECDSA_SIG(sig.get(), &der);
  if (len <= 0) return absl::InternalError("i2d_ECDSA_SIG");
  std::string out(reinterpret_cast<char*>(der), static_cast<size_t>(len));
  OPENSSL_free(der);
  return out;
}

const char* DigestName(absl::string_view alg) {
  return alg == "ES384" ? "SHA384" : "SHA256";
}

// ---------------------------------------------------------------------------
// Verdicts.

enum class Verdict { kVerified, kRefused, kBroken };

struct Outcome {
  Verdict verdict = Verdict::kBroken;
  std::string detail;  // what the verifier said
};

std::ostream& operator<<(std::ostream& os, const Outcome& o) {
  const char* name = o.verdict == Verdict::kVerified  ? "VERIFIED"
                     : o.verdict == Verdict::kRefused ? "REFUSED"
                                                      : "BROKEN";
  return os << name << ": " << o.detail;
}

// A token signed by signetd, and what the server said about it.
struct Signed {
  std::string scope;
  std::string jws;
  std::string kid;  // from the response
  std::string alg;  // from the response
};

// The same token with one bit of its signature's middle byte flipped
// (decoded and re-encoded, so base64url padding bits cannot hide the flip).
std::string FlipSignatureByte(absl::string_view jws) {
  std::vector<std::string> parts = absl::StrSplit(jws, '.');
  EXPECT_EQ(parts.size(), 3u);
  std::string signature = B64Decode(parts[2]);
  EXPECT_FALSE(signature.empty());
  signature[signature.size() / 2] ^= 0x01;
  return absl::StrCat(parts[0], ".", parts[1], ".",
                      absl::WebSafeBase64Escape(signature));
}

// ---------------------------------------------------------------------------

class InteropTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    signal(SIGPIPE, SIG_IGN);
    auto bed = testing::SignetTestBed::Create();
    ASSERT_TRUE(bed.ok()) << bed.status();
    bed_ = bed->release();
    auto tenant = bed_->ca().Issue(
        "interop", {.uri_sans = {kTenant}, .eku = "clientAuth"});
    ASSERT_TRUE(tenant.ok()) << tenant.status();
    tenant_ = new TestCa::Issued(*tenant);
    audit_dir_ = bed_->token().dir() + "/audit";
    work_dir_ = bed_->token().dir() + "/interop";
    ASSERT_EQ(mkdir(audit_dir_.c_str(), 0700), 0);
    ASSERT_EQ(mkdir(work_dir_.c_str(), 0700), 0);
    StartSignetd();
  }

  static void TearDownTestSuite() {
    delete signetd_;
    signetd_ = nullptr;
    delete tenant_;
    tenant_ = nullptr;
    delete bed_;
    bed_ = nullptr;
  }

  void SetUp() override {
    ASSERT_NE(signetd_, nullptr) << "signetd did not start";
    ASSERT_GT(http_port_, 0);
  }

  static std::string Config() {
    std::string scopes;
    std::string tenant_scopes;
    for (const ScopeCase& s : kScopes) {
      absl::StrAppend(&scopes, "scopes { name: \"", s.name,
                      "\" audience_class: ", s.audience_class,
                      " purpose: JWT issuer: \"", Issuer(s.name),
                      "\" algorithm: ", s.alg);
      if (s.rsa_bits != 0) absl::StrAppend(&scopes, " rsa_bits: ", s.rsa_bits);
      absl::StrAppend(&scopes, " }\n");
      absl::StrAppend(&tenant_scopes, " scopes: \"", s.name, "\"");
    }
    return absl::StrCat(
        "grpc_listen_address: \"127.0.0.1:0\"\n", bed_->HsmConfig(), scopes,
        bed_->TlsConfig(), "tenants { identity: \"uri:", kTenant, "\"",
        tenant_scopes, " }\n", "audit_log_path: \"", audit_dir_,
        "/audit.log\"\n", "http { listen_address: \"127.0.0.1:0\" ",
        "public_base_url: \"", kBaseUrl, "\" }\n");
  }

  // Starts signetd and reads its gRPC and HTTP ports from its output.
  static void StartSignetd() {
    SignetdOptions options;
    options.binary = SIGNETD_BINARY;
    options.config_text = Config();
    auto signetd = SignetdProcess::Start(bed_->token().dir(), options);
    ASSERT_TRUE(signetd.ok()) << signetd.status();
    signetd_ = signetd->release();
    ASSERT_TRUE(signetd_->WaitForOutput("signetd ready", kStartTimeout).ok())
        << signetd_->Output();
    absl::StatusOr<int> http_port = signetd_->WaitForHttpPort(kStartTimeout);
    ASSERT_TRUE(http_port.ok()) << http_port.status();
    http_port_ = *http_port;
    absl::StatusOr<int> grpc_port = signetd_->WaitForPort(kStartTimeout);
    ASSERT_TRUE(grpc_port.ok()) << grpc_port.status();
    grpc_port_ = *grpc_port;
  }

  static std::unique_ptr<Signer::Stub> Stub() {
    grpc::SslCredentialsOptions ssl;
    ssl.pem_root_certs = bed_->ca().cert_pem();
    ssl.pem_private_key = tenant_->key_pem;
    ssl.pem_cert_chain = tenant_->cert_pem;
    return Signer::NewStub(grpc::CreateChannel(
        absl::StrCat("localhost:", grpc_port_), grpc::SslCredentials(ssl)));
  }

  static std::string Claims(absl::string_view scope, absl::string_view sub) {
    static int jti = 0;
    int64_t now = absl::ToUnixSeconds(absl::Now());
    return nlohmann::json{
        {"iss", Issuer(scope)},
        {"sub", std::string(sub)},
        {"aud", kAudience},
        {"iat", now},
        {"exp", now + 600},
        {"jti", absl::StrCat("interop-", getpid(), "-", ++jti)}}
        .dump();
  }

  // One token from SignJwt, cached per scope for this process.
  static const Signed& Token(absl::string_view scope) {
    auto it = tokens_.find(std::string(scope));
    if (it != tokens_.end()) return it->second;
    Signed out;
    out.scope = std::string(scope);
    auto stub = Stub();
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() +
                     std::chrono::seconds(30));
    v1::SignJwtRequest req;
    req.set_scope(std::string(scope));
    req.set_claims_json(Claims(scope, "alice"));
    v1::SignJwtResponse resp;
    grpc::Status st = stub->SignJwt(&ctx, req, &resp);
    EXPECT_TRUE(st.ok()) << scope << ": " << st.error_code() << " "
                         << st.error_message();
    out.jws = resp.jws();
    out.kid = resp.kid();
    out.alg = resp.alg();
    return tokens_.emplace(out.scope, out).first->second;
  }

  // A JWK set fetched from signetd over HTTP (cached per path).
  static const std::string& Jwks(const std::string& path) {
    auto it = jwks_.find(path);
    if (it != jwks_.end()) return it->second;
    absl::StatusOr<HttpResponse> r = HttpGet(http_port_, path);
    EXPECT_TRUE(r.ok()) << r.status();
    std::string body;
    if (r.ok()) {
      EXPECT_EQ(r->status, 200) << path << "\n" << r->head << "\n" << r->body;
      EXPECT_THAT(absl::AsciiStrToLower(r->head),
                  HasSubstr("content-type: application/json"))
          << r->head;
      if (r->status == 200) body = r->body;
    }
    return jwks_.emplace(path, body).first->second;
  }

  // The JWK of `kid` in a set, or null.
  static nlohmann::json JwkOf(const std::string& jwks, absl::string_view kid) {
    nlohmann::json set = nlohmann::json::parse(jwks, nullptr, false);
    if (set.is_discarded() || !set.contains("keys")) return nullptr;
    for (const auto& key : set["keys"]) {
      if (key.value("kid", "") == kid) return key;
    }
    return nullptr;
  }

  static std::string NewFile(absl::string_view stem, absl::string_view data) {
    static int n = 0;
    std::string path = absl::StrCat(work_dir_, "/", ++n, "-", stem);
    WriteFile(path, data);
    return path;
  }

  static Outcome Run(std::vector<std::string> argv, absl::string_view tool) {
    auto run = testing::RunProcess(
        {.argv = std::move(argv), .unset_env = {"OPENSSL_CONF"}},
        absl::Seconds(120));
    if (!run.ok()) {
      return {Verdict::kBroken,
              absl::StrCat(tool, ": ", run.status().ToString())};
    }
    std::string detail = absl::StrCat(
        tool, " exit ", run->exit_code, run->timed_out ? " (timed out)" : "",
        ": ", absl::StripTrailingAsciiWhitespace(run->output));
    if (run->timed_out || run->term_signal != 0) {
      return {Verdict::kBroken, detail};
    }
    return {run->exit_code == 0 ? Verdict::kVerified : Verdict::kRefused,
            detail};
  }

  // verify_with_python.py: exit 0 verified, 1 refused (with the reason);
  // anything else (2 usage, 3 library missing) is a broken verifier.
  static Outcome Python(absl::string_view library, const std::string& jws,
                        const std::string& jwks, absl::string_view alg,
                        absl::string_view issuer, bool any_key = false) {
    std::vector<std::string> argv = {kPython,
                                     SIGNET_INTEROP_PYTHON_SCRIPT,
                                     std::string(library),
                                     "--jwks",
                                     NewFile("jwks.json", jwks),
                                     "--token",
                                     NewFile("token.jws", jws),
                                     "--alg",
                                     std::string(alg),
                                     "--issuer",
                                     std::string(issuer),
                                     "--audience",
                                     kAudience};
    if (any_key) argv.push_back("--any-key");
    Outcome o = Run(std::move(argv), library);
    if (o.verdict == Verdict::kVerified &&
        !absl::StrContains(o.detail, "OK ")) {
      o.verdict = Verdict::kBroken;
    }
    if (o.verdict == Verdict::kRefused &&
        !absl::StrContains(o.detail, "exit 1: REFUSED by ")) {
      o.verdict = Verdict::kBroken;
    }
    return o;
  }

  static Outcome Jwcrypto(const Signed& t, const std::string& jwks,
                          bool any_key = false) {
    return Python("jwcrypto", t.jws, jwks, Scope(t.scope).alg, Issuer(t.scope),
                  any_key);
  }
  static Outcome PyJwt(const Signed& t, const std::string& jwks,
                       bool any_key = false) {
    return Python("pyjwt", t.jws, jwks, Scope(t.scope).alg, Issuer(t.scope),
                  any_key);
  }

  // `jose jws ver -i <token> -k <jwk>`, given the JWK of the token's kid
  // (taken from the set; a set without it gives the refusal directly).
  static Outcome Jose(const Signed& t, const std::string& jwks) {
    std::vector<std::string> parts = absl::StrSplit(t.jws, '.');
    nlohmann::json header =
        nlohmann::json::parse(B64Decode(parts[0]), nullptr, false);
    std::string kid = header.is_object() ? header.value("kid", "") : "";
    nlohmann::json jwk = JwkOf(jwks, kid);
    if (jwk.is_null()) {
      return {Verdict::kRefused, absl::StrCat("no JWK with kid ", kid)};
    }
    return Run({"jose", "jws", "ver", "-i", NewFile("token.jws", t.jws), "-k",
                NewFile("jwk.json", jwk.dump())},
               "jose");
  }

  // The JWK of the token's kid as an OpenSSL key: `openssl dgst -verify`
  // with its PEM, and EVP_DigestVerify here. Both must agree.
  static Outcome OpenSsl(const Signed& t, const std::string& jwks) {
    std::vector<std::string> parts = absl::StrSplit(t.jws, '.');
    if (parts.size() != 3) return {Verdict::kBroken, "not a compact JWS"};
    nlohmann::json header =
        nlohmann::json::parse(B64Decode(parts[0]), nullptr, false);
    const ScopeCase& scope = Scope(t.scope);
    const std::string alg = scope.alg;
    if (!header.is_object() || header.value("alg", "") != alg) {
      return {Verdict::kRefused, absl::StrCat("header alg is not ", alg)};
    }
    nlohmann::json jwk = JwkOf(jwks, header.value("kid", ""));
    if (jwk.is_null())
      return {Verdict::kRefused, "no JWK with the token's kid"};
    absl::StatusOr<Pkey> key = KeyFromJwk(jwk);
    if (!key.ok()) return {Verdict::kBroken, key.status().ToString()};
    const bool ecdsa = absl::StartsWith(alg, "ES");
    const bool pss = absl::StartsWith(alg, "PS");
    const std::string signing_input = absl::StrCat(parts[0], ".", parts[1]);
    std::string signature = B64Decode(parts[2]);
    if (ecdsa) {
      size_t expected = alg == "ES256" ? 64 : 96;
      if (signature.size() != expected) {
        return {Verdict::kRefused,
                absl::StrCat("r||s is ", signature.size(), " bytes")};
      }
      absl::StatusOr<std::string> der = RsToDer(signature);
      if (!der.ok()) return {Verdict::kBroken, der.status().ToString()};
      signature = *der;
    }

    // In process.
    std::unique_ptr<EVP_MD_CTX, MdCtxFree> md(EVP_MD_CTX_new());
    EVP_PKEY_CTX* pctx = nullptr;  // owned by md
    if (EVP_DigestVerifyInit_ex(md.get(), &pctx, DigestName(alg), nullptr,
                                nullptr, key->get(), nullptr) != 1) {
      return {Verdict::kBroken, "EVP_DigestVerifyInit_ex"};
    }
    if (pss &&
        (EVP_PKEY_CTX_set_rsa_padding(pctx, RSA_PKCS1_PSS_PADDING) != 1 ||
         EVP_PKEY_CTX_set_rsa_pss_saltlen(pctx, RSA_PSS_SALTLEN_DIGEST) != 1 ||
         EVP_PKEY_CTX_set_rsa_mgf1_md_name(pctx, DigestName(alg), nullptr) !=
             1)) {
      return {Verdict::kBroken, "PSS parameters"};
    }
    const int evp = EVP_DigestVerify(
        md.get(), reinterpret_cast<const unsigned char*>(signature.data()),
        signature.size(),
        reinterpret_cast<const unsigned char*>(signing_input.data()),
        signing_input.size());

    // The command-line tool.
    absl::StatusOr<std::string> pem = SpkiPem(key->get());
    if (!pem.ok()) return {Verdict::kBroken, pem.status().ToString()};
    std::vector<std::string> argv = {"openssl",
                                     "dgst",
                                     alg == "ES384" ? "-sha384" : "-sha256",
                                     "-verify",
                                     NewFile("pub.pem", *pem),
                                     "-signature",
                                     NewFile("sig.bin", signature)};
    if (pss) {
      for (const char* opt :
           {"-sigopt", "rsa_padding_mode:pss", "-sigopt",
            "rsa_pss_saltlen:digest", "-sigopt", "rsa_mgf1_md:sha256"}) {
        argv.push_back(opt);
      }
    }
    argv.push_back(NewFile("signing-input", signing_input));
    Outcome cli = Run(std::move(argv), "openssl dgst");
    if (cli.verdict == Verdict::kVerified &&
        !absl::StrContains(cli.detail, "Verified OK")) {
      cli.verdict = Verdict::kBroken;
    }
    if (cli.verdict == Verdict::kRefused &&
        !absl::StrContains(cli.detail, "Verification failure")) {
      cli.verdict = Verdict::kBroken;
    }
    std::string detail =
        absl::StrCat("EVP_DigestVerify ", evp, "; ", cli.detail);
    if (cli.verdict == Verdict::kBroken) return {Verdict::kBroken, detail};
    if ((evp == 1) != (cli.verdict == Verdict::kVerified)) {
      return {Verdict::kBroken, absl::StrCat("disagree: ", detail)};
    }
    return {evp == 1 ? Verdict::kVerified : Verdict::kRefused, detail};
  }

  // All four, by name.
  static std::vector<std::pair<std::string, Outcome>> AllVerifiers(
      const Signed& t, const std::string& jwks) {
    return {{"jwcrypto", Jwcrypto(t, jwks)},
            {"PyJWT", PyJwt(t, jwks)},
            {"jose", Jose(t, jwks)},
            {"OpenSSL", OpenSsl(t, jwks)}};
  }

  static inline testing::SignetTestBed* bed_ = nullptr;
  static inline TestCa::Issued* tenant_ = nullptr;
  static inline SignetdProcess* signetd_ = nullptr;
  static inline std::string audit_dir_;
  static inline std::string work_dir_;
  static inline int http_port_ = 0;
  static inline int grpc_port_ = 0;
  static inline std::map<std::string, Signed> tokens_;
  static inline std::map<std::string, std::string> jwks_;
};

TEST_F(InteropTest, EveryScopeSignsWithItsAlgorithmAndPublishesTheKid) {
  for (const ScopeCase& s : kScopes) {
    SCOPED_TRACE(s.name);
    const Signed& t = Token(s.name);
    ASSERT_FALSE(t.jws.empty());
    EXPECT_EQ(t.alg, s.alg);
    std::vector<std::string> parts = absl::StrSplit(t.jws, '.');
    ASSERT_EQ(parts.size(), 3u) << t.jws;
    nlohmann::json header =
        nlohmann::json::parse(B64Decode(parts[0]), nullptr, false);
    ASSERT_TRUE(header.is_object()) << parts[0];
    EXPECT_EQ(header.value("alg", ""), s.alg);
    EXPECT_EQ(header.value("typ", ""), "JWT");
    EXPECT_EQ(header.value("kid", ""), t.kid);
    nlohmann::json jwk = JwkOf(Jwks(ScopeJwksPath(s.name)), t.kid);
    ASSERT_FALSE(jwk.is_null()) << Jwks(ScopeJwksPath(s.name));
    EXPECT_EQ(jwk.value("alg", ""), s.alg) << jwk.dump();
    EXPECT_EQ(jwk.value("use", ""), "sig") << jwk.dump();
    EXPECT_EQ(jwk.value("kty", ""), s.rsa_bits != 0 ? "RSA" : "EC");
    EXPECT_FALSE(jwk.contains("d")) << "private member in a JWK";
    EXPECT_FALSE(jwk.contains("p")) << "private member in a JWK";
    // The key has the configured size.
    absl::StatusOr<Pkey> key = KeyFromJwk(jwk);
    ASSERT_TRUE(key.ok()) << key.status();
    EXPECT_EQ(EVP_PKEY_get_bits(key->get()),
              s.rsa_bits != 0 ? s.rsa_bits
                              : (std::string(s.alg) == "ES256" ? 256 : 384));
    // The key is in its class's set too.
    EXPECT_FALSE(JwkOf(Jwks(ClassJwksPath(s.audience_class)), t.kid).is_null());
  }
}

// RFC 7638 thumbprints, computed by jwcrypto, are the kids.
TEST_F(InteropTest, KidsAreRfc7638ThumbprintsByJwcrypto) {
  for (const char* path : {"/consumer/.well-known/jwks.json",
                           "/enterprise/.well-known/jwks.json"}) {
    SCOPED_TRACE(path);
    const std::string& jwks = Jwks(path);
    auto run = testing::RunProcess(
        {.argv = {kPython, SIGNET_INTEROP_PYTHON_SCRIPT, "thumbprint", "--jwks",
                  NewFile("jwks.json", jwks)}},
        absl::Seconds(60));
    ASSERT_TRUE(run.ok()) << run.status();
    ASSERT_EQ(run->exit_code, 0) << run->output;
    nlohmann::json thumbprints =
        nlohmann::json::parse(run->output, nullptr, false);
    ASSERT_TRUE(thumbprints.is_object()) << run->output;
    nlohmann::json set = nlohmann::json::parse(jwks, nullptr, false);
    ASSERT_TRUE(set.is_object() && set.contains("keys")) << jwks;
    EXPECT_EQ(thumbprints.size(), set["keys"].size());
    for (const auto& [kid, thumbprint] : thumbprints.items()) {
      EXPECT_EQ(kid, thumbprint.get<std::string>());
    }
  }
}

TEST_F(InteropTest, JwcryptoVerifiesEveryAlgorithm) {
  for (const ScopeCase& s : kScopes) {
    SCOPED_TRACE(s.name);
    const Signed& t = Token(s.name);
    Outcome o = Jwcrypto(t, Jwks(ScopeJwksPath(s.name)));
    EXPECT_EQ(o.verdict, Verdict::kVerified) << o;
  }
}

TEST_F(InteropTest, PyJwtVerifiesEveryAlgorithm) {
  for (const ScopeCase& s : kScopes) {
    SCOPED_TRACE(s.name);
    const Signed& t = Token(s.name);
    Outcome o = PyJwt(t, Jwks(ScopeJwksPath(s.name)));
    EXPECT_EQ(o.verdict, Verdict::kVerified) << o;
  }
}

TEST_F(InteropTest, JoseCliVerifiesEveryAlgorithm) {
  for (const ScopeCase& s : kScopes) {
    SCOPED_TRACE(s.name);
    const Signed& t = Token(s.name);
    Outcome o = Jose(t, Jwks(ScopeJwksPath(s.name)));
    EXPECT_EQ(o.verdict, Verdict::kVerified) << o;
  }
}

TEST_F(InteropTest, OpensslVerifiesEveryAlgorithmFromTheJwk) {
  for (const ScopeCase& s : kScopes) {
    SCOPED_TRACE(s.name);
    const Signed& t = Token(s.name);
    Outcome o = OpenSsl(t, Jwks(ScopeJwksPath(s.name)));
    EXPECT_EQ(o.verdict, Verdict::kVerified) << o;
  }
}

// The class sets are what relying parties of a class fetch: each verifier
// accepts a token there too.
TEST_F(InteropTest, EveryVerifierAcceptsTokensAgainstTheirClassSet) {
  for (const ScopeCase& s : kScopes) {
    SCOPED_TRACE(s.name);
    const Signed& t = Token(s.name);
    for (const auto& [verifier, o] :
         AllVerifiers(t, Jwks(ClassJwksPath(s.audience_class)))) {
      EXPECT_EQ(o.verdict, Verdict::kVerified) << verifier << ": " << o;
    }
  }
}

TEST_F(InteropTest, SignJwtBatchTokensVerifyWithEveryVerifier) {
  auto stub = Stub();
  for (const ScopeCase& s : kScopes) {
    SCOPED_TRACE(s.name);
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() +
                     std::chrono::seconds(60));
    v1::SignJwtBatchRequest req;
    req.set_scope(s.name);
    for (const char* sub : {"batch-1", "batch-2", "batch-3"}) {
      req.add_claims_json(Claims(s.name, sub));
    }
    v1::SignJwtBatchResponse resp;
    grpc::Status st = stub->SignJwtBatch(&ctx, req, &resp);
    ASSERT_TRUE(st.ok()) << st.error_code() << " " << st.error_message();
    ASSERT_EQ(resp.items_size(), 3);
    for (int i = 0; i < resp.items_size(); ++i) {
      SCOPED_TRACE(i);
      const v1::SignJwtBatchItem& item = resp.items(i);
      ASSERT_EQ(item.code(), 0) << item.message();
      EXPECT_EQ(item.alg(), s.alg);
      Signed t{s.name, item.jws(), item.kid(), item.alg()};
      std::vector<std::string> parts = absl::StrSplit(t.jws, '.');
      ASSERT_EQ(parts.size(), 3u);
      nlohmann::json claims =
          nlohmann::json::parse(B64Decode(parts[1]), nullptr, false);
      EXPECT_EQ(claims.value("sub", ""), absl::StrCat("batch-", i + 1));
      for (const auto& [verifier, o] :
           AllVerifiers(t, Jwks(ScopeJwksPath(s.name)))) {
        EXPECT_EQ(o.verdict, Verdict::kVerified) << verifier << ": " << o;
      }
    }
  }
}

// The twin of the tests above: the same verifiers, the same key set, one
// bit of the signature changed.
TEST_F(InteropTest, AFlippedSignatureByteIsRefusedByEveryVerifier) {
  for (const ScopeCase& s : kScopes) {
    SCOPED_TRACE(s.name);
    Signed t = Token(s.name);
    ASSERT_FALSE(t.jws.empty());
    t.jws = FlipSignatureByte(t.jws);
    for (const auto& [verifier, o] :
         AllVerifiers(t, Jwks(ScopeJwksPath(s.name)))) {
      EXPECT_EQ(o.verdict, Verdict::kRefused) << verifier << ": " << o;
    }
  }
}

// A token checked against the set of another scope with the same algorithm
// (the other audience class, or another RSA size): refused when the kid is
// looked up, and refused by the signature itself when every key of that set
// is tried regardless of kid.
TEST_F(InteropTest, ATokenIsRefusedAgainstAnotherScopesJwks) {
  for (const auto& [own, other] : kCrossScopePairs) {
    SCOPED_TRACE(absl::StrCat(own, " against ", other));
    const Signed& t = Token(own);
    ASSERT_FALSE(t.jws.empty());
    const std::string& jwks = Jwks(ScopeJwksPath(other));
    ASSERT_TRUE(JwkOf(jwks, t.kid).is_null());
    for (const auto& [verifier, o] : AllVerifiers(t, jwks)) {
      EXPECT_EQ(o.verdict, Verdict::kRefused) << verifier << ": " << o;
    }
    Outcome any_jwcrypto = Jwcrypto(t, jwks, /*any_key=*/true);
    EXPECT_EQ(any_jwcrypto.verdict, Verdict::kRefused) << any_jwcrypto;
    EXPECT_THAT(any_jwcrypto.detail, HasSubstr("InvalidJWSSignature"));
    Outcome any_pyjwt = PyJwt(t, jwks, /*any_key=*/true);
    EXPECT_EQ(any_pyjwt.verdict, Verdict::kRefused) << any_pyjwt;
    EXPECT_THAT(any_pyjwt.detail, HasSubstr("InvalidSignatureError"));
    // jose and OpenSSL, given the other scope's key under the token's kid.
    nlohmann::json set = nlohmann::json::parse(jwks, nullptr, false);
    ASSERT_TRUE(set.is_object() && set.contains("keys")) << jwks;
    ASSERT_FALSE(set["keys"].empty());
    nlohmann::json impostor = set["keys"][0];
    impostor["kid"] = t.kid;
    std::string impostor_set =
        nlohmann::json{{"keys", nlohmann::json::array({impostor})}}.dump();
    Outcome jose = Jose(t, impostor_set);
    EXPECT_EQ(jose.verdict, Verdict::kRefused) << jose;
    Outcome openssl = OpenSsl(t, impostor_set);
    EXPECT_EQ(openssl.verdict, Verdict::kRefused) << openssl;
  }
}

// Consumer tokens are not accepted with the enterprise set and the other
// way round (Storm-0558: one class's key must never vouch for the other's).
TEST_F(InteropTest, ATokenIsRefusedAgainstTheOtherClassSet) {
  for (const ScopeCase& s : kScopes) {
    SCOPED_TRACE(s.name);
    const Signed& t = Token(s.name);
    const std::string other_class =
        std::string(s.audience_class) == "CONSUMER" ? "ENTERPRISE" : "CONSUMER";
    const std::string& jwks = Jwks(ClassJwksPath(other_class));
    ASSERT_TRUE(JwkOf(jwks, t.kid).is_null());
    for (const auto& [verifier, o] : AllVerifiers(t, jwks)) {
      EXPECT_EQ(o.verdict, Verdict::kRefused) << verifier << ": " << o;
    }
    Outcome any_jwcrypto = Jwcrypto(t, jwks, /*any_key=*/true);
    EXPECT_EQ(any_jwcrypto.verdict, Verdict::kRefused) << any_jwcrypto;
    Outcome any_pyjwt = PyJwt(t, jwks, /*any_key=*/true);
    EXPECT_EQ(any_pyjwt.verdict, Verdict::kRefused) << any_pyjwt;
  }
}

// The Python verifiers check claims, not only signatures: the same token
// with another expected issuer is refused.
TEST_F(InteropTest, PythonVerifiersRefuseAnotherIssuer) {
  const Signed& t = Token("c-es256");
  const std::string& jwks = Jwks(ScopeJwksPath("c-es256"));
  for (const char* library : {"jwcrypto", "pyjwt"}) {
    Outcome o = Python(library, t.jws, jwks, "ES256", Issuer("e-es256"));
    EXPECT_EQ(o.verdict, Verdict::kRefused) << library << ": " << o;
    EXPECT_THAT(absl::AsciiStrToLower(o.detail), HasSubstr("iss"));
  }
  // And another algorithm than the token's (no alg confusion).
  for (const char* library : {"jwcrypto", "pyjwt"}) {
    Outcome o = Python(library, t.jws, jwks, "ES384", Issuer("c-es256"));
    EXPECT_EQ(o.verdict, Verdict::kRefused) << library << ": " << o;
  }
}

}  // namespace
}  // namespace signet
