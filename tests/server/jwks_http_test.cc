// signetd's HTTP endpoint for relying parties, end to end: SoftHSM2 behind a
// real `p11-kit server`, signetd as a real process, and real HTTP/1.1 spoken
// over a TCP socket to its loopback listener (no HTTP client library, so the
// test sends exactly the bytes it means, tricks included).
//
// Scopes: two CONSUMER JWT scopes, one ENTERPRISE JWT scope and one
// ENTERPRISE RAW scope. The kids come from signetd's own start-up lines
// ("scope <name>: key generation N kid <kid>"), not from the documents under
// test.
#include <arpa/inet.h>
#include <grpcpp/grpcpp.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <iostream>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <set>
#include <string>
#include <utility>
#include <vector>

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
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "signet/v1/signer.grpc.pb.h"
#include "tests/testing/pki.h"
#include "tests/testing/signetd_process.h"
#include "tests/testing/temp_token.h"
#include "tests/testing/test_bed.h"

namespace signet {
namespace {

using ::testing::AnyOf;
using ::testing::Contains;
using ::testing::HasSubstr;
using ::testing::Not;
using testing::SignetdOptions;
using testing::SignetdProcess;
using testing::TestCa;
using ::testing::UnorderedElementsAre;
using v1::Signer;

constexpr absl::Duration kStartTimeout = absl::Seconds(90);
constexpr char kReader[] = "spiffe://signet.test/tenant/reader";
constexpr char kBaseUrl[] = "https://keys.signet.test";
constexpr char kHttpListening[] = "JWKS HTTP listening on 127.0.0.1:";

struct ScopeCase {
  const char* name;
  const char* audience_class;
  const char* purpose;
  const char* alg;
};
constexpr ScopeCase kScopes[] = {
    {"consumer-a", "CONSUMER", "JWT", "ES256"},
    {"consumer-b", "CONSUMER", "JWT", "ES256"},
    {"enterprise", "ENTERPRISE", "JWT", "RS256"},
    {"raw", "ENTERPRISE", "RAW", "ES256"},
};
constexpr const char* kJwtScopes[] = {"consumer-a", "consumer-b", "enterprise"};

std::string Issuer(absl::string_view scope) {
  return absl::StrCat("https://", scope, ".issuer.signet.test");
}

std::string ScopeJwksPath(absl::string_view scope) {
  return absl::StrCat("/scopes/", scope, "/.well-known/jwks.json");
}
std::string DiscoveryPath(absl::string_view scope) {
  return absl::StrCat("/scopes/", scope, "/.well-known/openid-configuration");
}
std::string PemPath(absl::string_view scope) {
  return absl::StrCat("/scopes/", scope, "/keys.pem");
}
constexpr char kConsumerPath[] = "/consumer/.well-known/jwks.json";
constexpr char kEnterprisePath[] = "/enterprise/.well-known/jwks.json";

// Every document the endpoint serves for this configuration.
std::vector<std::string> AllDocumentPaths() {
  std::vector<std::string> paths = {kConsumerPath, kEnterprisePath};
  for (const char* scope : kJwtScopes) {
    paths.push_back(ScopeJwksPath(scope));
    paths.push_back(DiscoveryPath(scope));
  }
  paths.push_back(PemPath("raw"));
  return paths;
}

// ---------------------------------------------------------------------------
// A tiny HTTP/1.1 client over a raw TCP socket.

struct HttpResponse {
  int status = 0;  // 0: no status line came back (connection closed)
  std::string status_line;
  std::vector<std::pair<std::string, std::string>> headers;
  std::string body;
  std::string raw;
  bool timed_out = false;
  int send_errno = 0;  // set if the server stopped reading our request
  int recv_errno = 0;

  std::vector<std::string> All(absl::string_view name) const {
    std::vector<std::string> out;
    for (const auto& [k, v] : headers) {
      if (absl::EqualsIgnoreCase(k, name)) out.push_back(v);
    }
    return out;
  }
  std::optional<std::string> Header(absl::string_view name) const {
    std::vector<std::string> all = All(name);
    if (all.empty()) return std::nullopt;
    return all.front();
  }
  std::string Describe() const {
    std::string head = raw.substr(0, raw.find("\r\n\r\n"));
    return absl::StrCat(
        "status ", status, " (send errno ", send_errno, ", recv errno ",
        recv_errno, timed_out ? ", timed out" : "", ")\n", head.substr(0, 2000),
        "\n[body ", body.size(), " bytes] ", body.substr(0, 300));
  }
};

int Connect(int port, int timeout_seconds = 20) {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return -1;
  timeval tv = {.tv_sec = timeout_seconds, .tv_usec = 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
  sockaddr_in addr = {};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(port);
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    close(fd);
    return -1;
  }
  return fd;
}

HttpResponse Parse(std::string raw) {
  HttpResponse r;
  r.raw = std::move(raw);
  size_t line_end = r.raw.find("\r\n");
  if (line_end == std::string::npos) return r;
  r.status_line = r.raw.substr(0, line_end);
  std::vector<std::string> parts =
      absl::StrSplit(r.status_line, absl::MaxSplits(' ', 2));
  if (parts.size() < 2 || !absl::StartsWith(parts[0], "HTTP/1.") ||
      !absl::SimpleAtoi(parts[1], &r.status)) {
    r.status = 0;
    return r;
  }
  size_t head_end = r.raw.find("\r\n\r\n");
  if (head_end == std::string::npos) return r;
  std::string head = r.raw.substr(line_end + 2, head_end - line_end - 2);
  for (absl::string_view line : absl::StrSplit(head, "\r\n")) {
    if (line.empty()) continue;
    size_t colon = line.find(':');
    if (colon == absl::string_view::npos) continue;
    r.headers.emplace_back(
        std::string(line.substr(0, colon)),
        std::string(absl::StripAsciiWhitespace(line.substr(colon + 1))));
  }
  r.body = r.raw.substr(head_end + 4);
  return r;
}

// Sends `request` as is and reads until the server closes.
HttpResponse RawRequest(int port, absl::string_view request,
                        int timeout_seconds = 20) {
  HttpResponse failed;
  int fd = Connect(port, timeout_seconds);
  if (fd < 0) {
    failed.recv_errno = errno;
    return failed;
  }
  int send_errno = 0;
  size_t sent = 0;
  while (sent < request.size()) {
    ssize_t n =
        send(fd, request.data() + sent, request.size() - sent, MSG_NOSIGNAL);
    if (n < 0) {
      if (errno == EINTR) continue;
      send_errno = errno;  // the server gave up on us; read what it said
      break;
    }
    sent += n;
  }
  std::string raw;
  bool timed_out = false;
  int recv_errno = 0;
  char buf[16384];
  for (;;) {
    ssize_t n = recv(fd, buf, sizeof(buf), 0);
    if (n > 0) {
      raw.append(buf, n);
      continue;
    }
    if (n == 0) break;
    if (errno == EINTR) continue;
    if (errno == EAGAIN || errno == EWOULDBLOCK) timed_out = true;
    recv_errno = errno;
    break;
  }
  close(fd);
  HttpResponse r = Parse(std::move(raw));
  r.timed_out = timed_out;
  r.send_errno = send_errno;
  r.recv_errno = recv_errno;
  return r;
}

HttpResponse Request(int port, absl::string_view method, absl::string_view path,
                     absl::string_view extra_headers = "",
                     absl::string_view body = "") {
  return RawRequest(
      port,
      absl::StrCat(method, " ", path, " HTTP/1.1\r\nHost: 127.0.0.1:", port,
                   "\r\n", extra_headers, "Connection: close\r\n",
                   body.empty()
                       ? ""
                       : absl::StrCat("Content-Length: ", body.size(), "\r\n"),
                   "\r\n", body));
}

HttpResponse Get(int port, absl::string_view path,
                 absl::string_view extra_headers = "") {
  return Request(port, "GET", path, extra_headers);
}

std::set<std::string> Kids(const nlohmann::json& jwks) {
  std::set<std::string> kids;
  for (const auto& key : jwks.at("keys")) kids.insert(key.at("kid"));
  return kids;
}

// ---------------------------------------------------------------------------

class JwksHttpTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    signal(SIGPIPE, SIG_IGN);
    auto bed = testing::SignetTestBed::Create();
    ASSERT_TRUE(bed.ok()) << bed.status();
    bed_ = bed->release();
    ca_ = &bed_->ca();
    auto reader =
        ca_->Issue("reader", {.uri_sans = {kReader}, .eku = "clientAuth"});
    ASSERT_TRUE(reader.ok()) << reader.status();
    reader_ = new TestCa::Issued(*reader);
    audit_dir_ = bed_->token().dir() + "/audit";
    mkdir(audit_dir_.c_str(), 0700);
    StartSignetd();
  }

  static void TearDownTestSuite() {
    delete signetd_;
    signetd_ = nullptr;
    delete reader_;
    delete bed_;
  }

  static std::string Config() {
    std::string scopes;
    for (const ScopeCase& s : kScopes) {
      absl::StrAppend(&scopes, "scopes { name: \"", s.name,
                      "\" audience_class: ", s.audience_class,
                      " purpose: ", s.purpose, " issuer: \"", Issuer(s.name),
                      "\" algorithm: ", s.alg, " }\n");
    }
    return absl::StrCat(
        "grpc_listen_address: \"127.0.0.1:0\"\n", bed_->HsmConfig(), scopes,
        bed_->TlsConfig(), "tenants { identity: \"uri:", kReader,
        "\" scopes: \"consumer-a\" scopes: \"consumer-b\" scopes: "
        "\"enterprise\" scopes: \"raw\" }\n",
        "audit_log_path: \"", audit_dir_, "/audit.log\"\n",
        "http { listen_address: \"127.0.0.1:0\" public_base_url: \"", kBaseUrl,
        "\" cache_max_age_seconds: 300 }\n");
  }

  // Starts signetd, waits until both gRPC and HTTP serve, and reads the
  // ports and every scope's kid from its output.
  static void StartSignetd() {
    SignetdOptions options;
    options.binary = SIGNETD_BINARY;
    options.config_text = Config();
    auto signetd = SignetdProcess::Start(bed_->token().dir(), options);
    ASSERT_TRUE(signetd.ok()) << signetd.status();
    signetd_ = signetd->release();
    ASSERT_TRUE(signetd_->WaitForOutput("signetd ready", kStartTimeout).ok())
        << signetd_->Output();
    ASSERT_TRUE(signetd_->WaitForOutput(kHttpListening, kStartTimeout).ok())
        << signetd_->Output();
    std::string out = signetd_->Output();
    http_port_ = 0;
    grpc_port_ = 0;
    int http_lines = 0;
    kids_.clear();
    for (absl::string_view line : absl::StrSplit(out, '\n')) {
      size_t at = line.find(kHttpListening);
      if (at != absl::string_view::npos) {
        ++http_lines;
        absl::string_view rest = line.substr(at + strlen(kHttpListening));
        size_t digits = 0;
        while (digits < rest.size() && absl::ascii_isdigit(rest[digits])) {
          ++digits;
        }
        ASSERT_TRUE(absl::SimpleAtoi(rest.substr(0, digits), &http_port_))
            << line;
        continue;
      }
      at = line.find("listening on ");
      if (at != absl::string_view::npos && absl::StrContains(line, "gRPC") &&
          grpc_port_ == 0) {
        absl::string_view address = line.substr(at + 13);
        address = address.substr(0, address.find(' '));
        ASSERT_TRUE(absl::SimpleAtoi(address.substr(address.rfind(':') + 1),
                                     &grpc_port_))
            << line;
        continue;
      }
      for (const ScopeCase& s : kScopes) {
        std::string marker =
            absl::StrCat("scope ", s.name, ": key generation ");
        at = line.find(marker);
        if (at == absl::string_view::npos) continue;
        size_t kid_at = line.find(" kid ", at);
        ASSERT_NE(kid_at, absl::string_view::npos) << line;
        absl::string_view kid = line.substr(kid_at + 5);
        kid = kid.substr(0, kid.find(' '));
        kids_[s.name] = std::string(kid);
        // "; standby <kid>, signs from ...": published before it signs.
        size_t standby_at = line.find("; standby ", at);
        ASSERT_NE(standby_at, absl::string_view::npos) << line;
        absl::string_view standby = line.substr(standby_at + 10);
        standby = standby.substr(0, standby.find(','));
        standby_kids_[s.name] = std::string(standby);
      }
    }
    EXPECT_EQ(http_lines, 1) << out;
    ASSERT_GT(http_port_, 0) << out;
    ASSERT_GT(grpc_port_, 0) << out;
    ASSERT_NE(http_port_, grpc_port_);
    for (const ScopeCase& s : kScopes) {
      ASSERT_FALSE(kids_[s.name].empty()) << "no kid for " << s.name << "\n"
                                          << out;
    }
  }

  static std::unique_ptr<Signer::Stub> Stub() {
    grpc::SslCredentialsOptions ssl;
    ssl.pem_root_certs = ca_->cert_pem();
    ssl.pem_private_key = reader_->key_pem;
    ssl.pem_cert_chain = reader_->cert_pem;
    auto channel = grpc::CreateChannel(absl::StrCat("localhost:", grpc_port_),
                                       grpc::SslCredentials(ssl));
    return Signer::NewStub(channel);
  }

  static grpc::Status GetJwks(Signer::Stub& stub, absl::string_view scope,
                              v1::GetJwksResponse* out) {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() +
                     std::chrono::seconds(20));
    v1::GetJwksRequest req;
    req.set_scope(std::string(scope));
    return stub.GetJwks(&ctx, req, out);
  }

  // A 200 with the JSON document parsed.
  static nlohmann::json GetJson(absl::string_view path) {
    HttpResponse r = Get(http_port_, path);
    EXPECT_EQ(r.status, 200) << path << "\n" << r.Describe();
    if (r.status != 200) return nlohmann::json::object();
    nlohmann::json doc = nlohmann::json::parse(r.body, nullptr, false);
    EXPECT_FALSE(doc.is_discarded()) << path << ": " << r.body;
    return doc.is_discarded() ? nlohmann::json::object() : doc;
  }

  // No key of any scope, in any form, in a refusal.
  static void ExpectNoKeyMaterial(const HttpResponse& r,
                                  absl::string_view what) {
    EXPECT_THAT(r.body, Not(HasSubstr("\"kid\""))) << what;
    EXPECT_THAT(r.body, Not(HasSubstr("\"keys\""))) << what;
    EXPECT_THAT(r.body, Not(HasSubstr("BEGIN PUBLIC KEY"))) << what;
    for (const auto& [scope, kid] : kids_) {
      EXPECT_THAT(r.raw, Not(HasSubstr(kid))) << what << " leaks " << scope;
    }
  }

  static void ExpectStillServing() {
    HttpResponse r = Get(http_port_, kConsumerPath);
    EXPECT_EQ(r.status, 200) << r.Describe();
    EXPECT_EQ(kill(signetd_->pid(), 0), 0) << "signetd is gone";
  }

  static inline testing::SignetTestBed* bed_ = nullptr;
  static inline TestCa* ca_ = nullptr;
  static inline TestCa::Issued* reader_ = nullptr;
  static inline SignetdProcess* signetd_ = nullptr;
  static inline std::string audit_dir_;
  static inline int http_port_ = 0;
  static inline int grpc_port_ = 0;
  // Each scope's signing kid and its standby's, from the start-up lines.
  static inline std::map<std::string, std::string> kids_;
  static inline std::map<std::string, std::string> standby_kids_;
};

TEST_F(JwksHttpTest, ConsumerSetHoldsExactlyTheConsumerJwtScopesKeys) {
  nlohmann::json jwks = GetJson(kConsumerPath);
  ASSERT_TRUE(jwks.contains("keys")) << jwks.dump();
  // Each scope's active key and its standby.
  EXPECT_THAT(
      Kids(jwks),
      UnorderedElementsAre(kids_["consumer-a"], standby_kids_["consumer-a"],
                           kids_["consumer-b"], standby_kids_["consumer-b"]));
  EXPECT_EQ(jwks["keys"].size(), 4u);
  EXPECT_THAT(Kids(jwks), Not(Contains(kids_["enterprise"])));
  EXPECT_THAT(Kids(jwks), Not(Contains(standby_kids_["enterprise"])));
  EXPECT_THAT(Kids(jwks), Not(Contains(kids_["raw"])));
  for (const auto& key : jwks["keys"]) {
    EXPECT_EQ(key["kty"], "EC") << key.dump();
    EXPECT_EQ(key["crv"], "P-256") << key.dump();
    EXPECT_EQ(key["alg"], "ES256") << key.dump();
    EXPECT_EQ(key["use"], "sig") << key.dump();
    EXPECT_TRUE(key.contains("x") && key.contains("y")) << key.dump();
    EXPECT_FALSE(key.contains("d")) << "a private member: " << key.dump();
  }
}

TEST_F(JwksHttpTest, EnterpriseSetHoldsOnlyTheEnterpriseJwtScopesKey) {
  nlohmann::json jwks = GetJson(kEnterprisePath);
  ASSERT_TRUE(jwks.contains("keys")) << jwks.dump();
  EXPECT_THAT(Kids(jwks), UnorderedElementsAre(kids_["enterprise"],
                                               standby_kids_["enterprise"]));
  ASSERT_EQ(jwks["keys"].size(), 2u);
  for (const nlohmann::json& key : jwks["keys"]) {
    EXPECT_EQ(key["kty"], "RSA");
    EXPECT_EQ(key["alg"], "RS256");
    EXPECT_EQ(key["use"], "sig");
    EXPECT_TRUE(key.contains("n") && key.contains("e")) << key.dump();
    EXPECT_FALSE(key.contains("d")) << "a private member: " << key.dump();
  }
}

TEST_F(JwksHttpTest, EachScopeSetHoldsOnlyItsOwnKey) {
  for (const char* scope : kJwtScopes) {
    SCOPED_TRACE(scope);
    nlohmann::json jwks = GetJson(ScopeJwksPath(scope));
    ASSERT_TRUE(jwks.contains("keys")) << jwks.dump();
    EXPECT_THAT(Kids(jwks),
                UnorderedElementsAre(kids_[scope], standby_kids_[scope]));
  }
}

TEST_F(JwksHttpTest, DiscoveryNamesTheScopesIssuerAndItsOwnKeySet) {
  for (const ScopeCase& s : kScopes) {
    if (std::string(s.purpose) != "JWT") continue;
    SCOPED_TRACE(s.name);
    nlohmann::json discovery = GetJson(DiscoveryPath(s.name));
    EXPECT_EQ(discovery["issuer"], Issuer(s.name)) << discovery.dump();
    EXPECT_EQ(discovery["jwks_uri"],
              absl::StrCat(kBaseUrl, ScopeJwksPath(s.name)))
        << discovery.dump();
    EXPECT_THAT(discovery["id_token_signing_alg_values_supported"],
                Contains(s.alg))
        << discovery.dump();
  }
  // The Host header never reaches the document.
  HttpResponse evil = Get(http_port_, DiscoveryPath("consumer-a"),
                          "X-Forwarded-Host: evil.example\r\n");
  ASSERT_EQ(evil.status, 200) << evil.Describe();
  HttpResponse evil_host =
      RawRequest(http_port_, absl::StrCat("GET ", DiscoveryPath("consumer-a"),
                                          " HTTP/1.1\r\nHost: evil.example\r\n"
                                          "Connection: close\r\n\r\n"));
  ASSERT_EQ(evil_host.status, 200) << evil_host.Describe();
  HttpResponse plain = Get(http_port_, DiscoveryPath("consumer-a"));
  EXPECT_EQ(evil.body, plain.body);
  EXPECT_EQ(evil_host.body, plain.body);
  EXPECT_THAT(evil_host.body, Not(HasSubstr("evil")));
}

TEST_F(JwksHttpTest, RawScopeHasPemKeysAndNoJwksOrDiscovery) {
  HttpResponse pem = Get(http_port_, PemPath("raw"));
  ASSERT_EQ(pem.status, 200) << pem.Describe();
  EXPECT_EQ(pem.Header("Content-Type"), "application/x-pem-file");
  EXPECT_EQ(pem.Header("Cache-Control"), "public, max-age=300");
  EXPECT_THAT(pem.body, HasSubstr("-----BEGIN PUBLIC KEY-----"));
  EXPECT_THAT(pem.body, Not(HasSubstr("PRIVATE")));
  // The same key gRPC's GetPublicKeys gives for the scope.
  auto stub = Stub();
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(20));
  v1::GetPublicKeysRequest req;
  req.set_scope("raw");
  v1::GetPublicKeysResponse keys;
  grpc::Status st = stub->GetPublicKeys(&ctx, req, &keys);
  ASSERT_TRUE(st.ok()) << st.error_message();
  // The active key and its standby, in generation order.
  ASSERT_EQ(keys.keys_size(), 2);
  EXPECT_EQ(keys.keys(0).kid(), kids_["raw"]);
  EXPECT_EQ(keys.keys(1).kid(), standby_kids_["raw"]);
  EXPECT_EQ(pem.body, keys.keys(0).spki_pem() + keys.keys(1).spki_pem());

  for (const std::string& path : {ScopeJwksPath("raw"), DiscoveryPath("raw")}) {
    HttpResponse r = Get(http_port_, path);
    EXPECT_EQ(r.status, 404) << path << "\n" << r.Describe();
    ExpectNoKeyMaterial(r, path);
  }
  // And the other way round: a JWT scope has no PEM.
  for (const char* scope : kJwtScopes) {
    HttpResponse r = Get(http_port_, PemPath(scope));
    EXPECT_EQ(r.status, 404) << scope << "\n" << r.Describe();
    ExpectNoKeyMaterial(r, PemPath(scope));
  }
}

TEST_F(JwksHttpTest, DocumentsCarryTypeCacheControlAndAStrongEtag) {
  std::set<std::string> etags;
  for (const std::string& path : AllDocumentPaths()) {
    SCOPED_TRACE(path);
    HttpResponse r = Get(http_port_, path);
    ASSERT_EQ(r.status, 200) << r.Describe();
    bool pem = absl::EndsWith(path, ".pem");
    EXPECT_EQ(r.All("Content-Type"),
              std::vector<std::string>{pem ? "application/x-pem-file"
                                           : "application/json"})
        << r.Describe();
    EXPECT_EQ(r.All("Cache-Control"),
              std::vector<std::string>{"public, max-age=300"})
        << r.Describe();
    std::vector<std::string> etag = r.All("ETag");
    ASSERT_EQ(etag.size(), 1u) << r.Describe();
    EXPECT_GT(etag[0].size(), 2u);
    EXPECT_EQ(etag[0].front(), '"') << etag[0];
    EXPECT_EQ(etag[0].back(), '"') << etag[0];
    EXPECT_FALSE(absl::StartsWith(etag[0], "W/")) << etag[0];
    EXPECT_EQ(etag[0].find('"', 1), etag[0].size() - 1) << etag[0];
    etags.insert(etag[0]);
    std::optional<std::string> length = r.Header("Content-Length");
    ASSERT_TRUE(length.has_value()) << r.Describe();
    EXPECT_EQ(*length, std::to_string(r.body.size()));
    // The same bytes and the same ETag on the next request.
    HttpResponse again = Get(http_port_, path);
    EXPECT_EQ(again.body, r.body);
    EXPECT_EQ(again.Header("ETag"), etag[0]);
  }
  // The ETag follows the bytes: equal bodies (the enterprise class set and
  // the enterprise scope's own set hold the same one key) share an ETag,
  // different bodies never do.
  std::map<std::string, std::string> etag_of_body;
  std::map<std::string, std::string> body_of_etag;
  for (const std::string& path : AllDocumentPaths()) {
    HttpResponse r = Get(http_port_, path);
    std::string etag = r.Header("ETag").value_or("");
    auto [b, new_body] = etag_of_body.emplace(r.body, etag);
    EXPECT_EQ(b->second, etag) << path;
    auto [e, new_etag] = body_of_etag.emplace(etag, r.body);
    EXPECT_EQ(e->second, r.body) << path << " shares ETag " << etag;
  }
  EXPECT_EQ(etags.size(), etag_of_body.size());
}

TEST_F(JwksHttpTest, AMatchingIfNoneMatchGets304WithAnEmptyBody) {
  for (const std::string& path : AllDocumentPaths()) {
    SCOPED_TRACE(path);
    HttpResponse full = Get(http_port_, path);
    ASSERT_EQ(full.status, 200) << full.Describe();
    std::string etag = full.Header("ETag").value_or("");
    ASSERT_FALSE(etag.empty());
    HttpResponse not_modified =
        Get(http_port_, path, absl::StrCat("If-None-Match: ", etag, "\r\n"));
    EXPECT_EQ(not_modified.status, 304) << not_modified.Describe();
    EXPECT_EQ(not_modified.body, "");
    EXPECT_EQ(not_modified.Header("ETag"), etag) << not_modified.Describe();
    EXPECT_EQ(not_modified.Header("Cache-Control"), "public, max-age=300")
        << not_modified.Describe();
    // RFC 9110 section 8.6: a 304 may carry Content-Length only as the 200
    // would (libmicrohttpd sent "Content-Length: 0", which a cache could
    // take for the document's length).
    EXPECT_EQ(not_modified.Header("Content-Length"),
              std::optional<std::string>(absl::StrCat(full.body.size())))
        << not_modified.Describe();
    // Another ETag gets the document.
    HttpResponse other =
        Get(http_port_, path, "If-None-Match: \"something-else\"\r\n");
    EXPECT_EQ(other.status, 200) << other.Describe();
    EXPECT_EQ(other.body, full.body);
    // HEAD with a matching ETag is a 304 too.
    HttpResponse head = Request(http_port_, "HEAD", path,
                                absl::StrCat("If-None-Match: ", etag, "\r\n"));
    EXPECT_EQ(head.status, 304) << head.Describe();
    EXPECT_EQ(head.body, "");
  }
}

// RFC 9110 section 13.1.2: If-None-Match is a list, compared weakly, and "*"
// matches any current representation. Beyond the single-ETag contract.
TEST_F(JwksHttpTest, IfNoneMatchAcceptsListsWeakFormAndStar) {
  HttpResponse full = Get(http_port_, kConsumerPath);
  ASSERT_EQ(full.status, 200) << full.Describe();
  std::string etag = full.Header("ETag").value_or("");
  for (const std::string& value :
       {absl::StrCat("\"nope\", ", etag), absl::StrCat(etag, ", \"nope\""),
        absl::StrCat("W/", etag), std::string("*")}) {
    HttpResponse r = Get(http_port_, kConsumerPath,
                         absl::StrCat("If-None-Match: ", value, "\r\n"));
    EXPECT_EQ(r.status, 304) << "If-None-Match: " << value << "\n"
                             << r.Describe();
    EXPECT_EQ(r.body, "") << value;
  }
  // The list split over two lines (RFC 9110 section 5.3): the second line
  // counts too (seventh outside attack: only the first did).
  HttpResponse split = Get(
      http_port_, kConsumerPath,
      absl::StrCat("If-None-Match: \"nope\"\r\nIf-None-Match: ", etag, "\r\n"));
  EXPECT_EQ(split.status, 304) << split.Describe();
}

TEST_F(JwksHttpTest, HeadGivesTheSameHeadersAndNoBody) {
  for (const std::string& path : AllDocumentPaths()) {
    SCOPED_TRACE(path);
    HttpResponse get = Get(http_port_, path);
    HttpResponse head = Request(http_port_, "HEAD", path);
    ASSERT_EQ(get.status, 200) << get.Describe();
    ASSERT_EQ(head.status, 200) << head.Describe();
    EXPECT_EQ(head.body, "") << head.Describe();
    for (const char* name :
         {"Content-Type", "Cache-Control", "ETag", "Content-Length"}) {
      EXPECT_EQ(head.All(name), get.All(name)) << name;
    }
  }
}

TEST_F(JwksHttpTest, OtherMethodsGet405WithAllow) {
  for (const char* method :
       {"POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "FOO"}) {
    for (const std::string& path :
         {std::string(kConsumerPath), std::string(kEnterprisePath),
          DiscoveryPath("consumer-a"), PemPath("raw")}) {
      SCOPED_TRACE(absl::StrCat(method, " ", path));
      HttpResponse r = Request(http_port_, method, path);
      EXPECT_EQ(r.status, 405) << r.Describe();
      EXPECT_EQ(r.All("Allow"), std::vector<std::string>{"GET, HEAD"})
          << r.Describe();
      ExpectNoKeyMaterial(r, absl::StrCat(method, " ", path));
    }
  }
  ExpectStillServing();
}

// The same, with a request body: the 405 does not depend on whether the
// client sent one.
TEST_F(JwksHttpTest, MethodsWithABodyGet405WithAllow) {
  for (const char* method : {"POST", "PUT", "PATCH"}) {
    for (const std::string& path : {std::string(kConsumerPath), PemPath("raw"),
                                    std::string("/no/such/path")}) {
      SCOPED_TRACE(absl::StrCat(method, " ", path, " with a body"));
      HttpResponse r = Request(http_port_, method, path, "", "hello");
      EXPECT_EQ(r.status, 405) << r.Describe();
      EXPECT_EQ(r.All("Allow"), std::vector<std::string>{"GET, HEAD"})
          << r.Describe();
      ExpectNoKeyMaterial(r, absl::StrCat(method, " ", path));
    }
  }
  ExpectStillServing();
}

// Hostile clients: content on a GET or HEAD is refused with 400 before it
// is read, not answered by dropping the connection. Content-Length: 0 is no
// content.
TEST_F(JwksHttpTest, GetOrHeadWithContentGets400) {
  for (const char* method : {"GET", "HEAD"}) {
    for (const std::string& path : {std::string(kConsumerPath), PemPath("raw"),
                                    std::string("/no/such/path")}) {
      SCOPED_TRACE(absl::StrCat(method, " ", path));
      HttpResponse sized = Request(http_port_, method, path, "", "hello");
      EXPECT_EQ(sized.status, 400) << sized.Describe();
      ExpectNoKeyMaterial(sized, "Content-Length");
      HttpResponse chunked = RawRequest(
          http_port_,
          absl::StrCat(method, " ", path,
                       " HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: "
                       "chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"));
      EXPECT_EQ(chunked.status, 400) << chunked.Describe();
      ExpectNoKeyMaterial(chunked, "Transfer-Encoding");
    }
    HttpResponse empty =
        Request(http_port_, method, kConsumerPath, "Content-Length: 0\r\n");
    EXPECT_EQ(empty.status, 200) << method << "\n" << empty.Describe();
  }
  ExpectStillServing();
}

// Found by an outside attack: a second request hidden as the content of a
// GET whose length a proxy in front could read differently (two
// Content-Length lines, whitespace before the colon) was answered as a
// second request; each is a 400 now (RFC 9112 sections 5.1 and 6.3).
TEST_F(JwksHttpTest, AmbiguousFramingGets400) {
  const std::string hidden =
      "GET /enterprise/.well-known/jwks.json HTTP/1.1\r\nHost: x\r\n"
      "Connection: close\r\n\r\n";
  for (const std::string& framing : {
           absl::StrCat("Content-Length: 0\r\nContent-Length: ", hidden.size(),
                        "\r\n"),
           absl::StrCat("Content-Length : ", hidden.size(), "\r\n"),
           absl::StrCat("Content-Length\t: ", hidden.size(), "\r\n"),
           std::string("Transfer-Encoding : chunked\r\n"),
       }) {
    SCOPED_TRACE(absl::CEscape(framing));
    HttpResponse r =
        RawRequest(http_port_, absl::StrCat("GET ", kConsumerPath,
                                            " HTTP/1.1\r\nHost: x\r\n", framing,
                                            "\r\n", hidden));
    EXPECT_EQ(r.status, 400) << r.Describe();
    EXPECT_THAT(r.Describe(), Not(HasSubstr("\"kty\"")));
  }
  ExpectStillServing();
}

// A Content-Length that is not a number is a 400, one too large for a
// number a 413 (libmicrohttpd's own answers; 0.9.75 writes their header
// block twice, which the README notes), and the connection closes.
TEST_F(JwksHttpTest, AMalformedContentLengthIsRefused) {
  for (const char* value : {"abc", "-1", "1x", ""}) {
    SCOPED_TRACE(value);
    HttpResponse r = RawRequest(
        http_port_, absl::StrCat("GET ", kConsumerPath,
                                 " HTTP/1.1\r\nHost: x\r\nContent-Length: ",
                                 value, "\r\n\r\n"));
    EXPECT_EQ(r.status, 400) << r.Describe();
    EXPECT_FALSE(r.timed_out) << r.Describe();
    ExpectNoKeyMaterial(r, value);
  }
  HttpResponse huge = RawRequest(
      http_port_, absl::StrCat("GET ", kConsumerPath,
                               " HTTP/1.1\r\nHost: x\r\nContent-Length: "
                               "99999999999999999999999\r\n\r\n"));
  EXPECT_EQ(huge.status, 413) << huge.Describe();
  EXPECT_FALSE(huge.timed_out) << huge.Describe();
  ExpectNoKeyMaterial(huge, "huge");
  ExpectStillServing();
}

// Hostile clients: "paths are matched byte for byte" holds for a NUL byte
// too: before, the target was cut at it and the prefix served.
TEST_F(JwksHttpTest, ANulByteInTheRequestTargetGets400) {
  const std::string nul(1, '\0');
  for (const std::string& target : {
           absl::StrCat(kConsumerPath, nul, "/../enterprise"),
           absl::StrCat(kEnterprisePath, nul),
           absl::StrCat("/scopes/raw", nul, "/keys.pem"),
           absl::StrCat(kConsumerPath, "?a", nul, "b"),
           absl::StrCat(nul, kConsumerPath),
       }) {
    SCOPED_TRACE(absl::CEscape(target));
    HttpResponse r =
        RawRequest(http_port_, absl::StrCat("GET ", target,
                                            " HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                                            "Connection: close\r\n\r\n"));
    EXPECT_EQ(r.status, 400) << r.Describe();
    ExpectNoKeyMaterial(r, absl::CEscape(target));
  }
  // The same paths without the NUL byte, and with a plain query, are
  // served: the check is about the NUL byte, not the shape.
  EXPECT_EQ(Get(http_port_, kConsumerPath).status, 200);
  EXPECT_EQ(Get(http_port_, absl::StrCat(kConsumerPath, "?a=b")).status, 200);
  ExpectStillServing();
}

// Hostile clients: an HTTP/1.1 request needs exactly one Host (RFC 9112
// section 3.2).
TEST_F(JwksHttpTest, Http11WithoutExactlyOneHostGets400) {
  HttpResponse none = RawRequest(
      http_port_, absl::StrCat("GET ", kConsumerPath,
                               " HTTP/1.1\r\nConnection: close\r\n\r\n"));
  EXPECT_EQ(none.status, 400) << none.Describe();
  ExpectNoKeyMaterial(none, "no Host");
  HttpResponse two = RawRequest(
      http_port_, absl::StrCat("GET ", kConsumerPath,
                               " HTTP/1.1\r\nHost: a.example\r\nHost: "
                               "b.example\r\nConnection: close\r\n\r\n"));
  EXPECT_EQ(two.status, 400) << two.Describe();
  ExpectNoKeyMaterial(two, "two Hosts");
  HttpResponse head = RawRequest(
      http_port_, absl::StrCat("HEAD ", kConsumerPath,
                               " HTTP/1.1\r\nConnection: close\r\n\r\n"));
  EXPECT_EQ(head.status, 400) << head.Describe();
  // HTTP/1.0 has no Host requirement.
  HttpResponse old = RawRequest(
      http_port_, absl::StrCat("GET ", kConsumerPath, " HTTP/1.0\r\n\r\n"));
  EXPECT_EQ(old.status, 200) << old.Describe();
  ExpectStillServing();
}

TEST_F(JwksHttpTest, UnknownPathsAndScopesGet404) {
  for (const char* path : {
           "/",
           "/consumer",
           "/consumer/",
           "/consumer/.well-known/",
           "/consumer/.well-known/jwks.json/",
           "/consumer/.well-known/openid-configuration",
           "/enterprise/.well-known/openid-configuration",
           "/Consumer/.well-known/jwks.json",
           "/CONSUMER/.well-known/jwks.json",
           "/.well-known/jwks.json",
           "/.well-known/openid-configuration",
           "/jwks.json",
           "/raw/.well-known/jwks.json",
           "/scopes",
           "/scopes/",
           "/scopes/consumer-a",
           "/scopes/consumer-a/",
           "/scopes/consumer-a/.well-known/",
           "/scopes/consumer-a/jwks.json",
           "/scopes/Consumer-A/.well-known/jwks.json",
           "/scopes/no-such-scope/.well-known/jwks.json",
           "/scopes/no-such-scope/.well-known/openid-configuration",
           "/scopes/no-such-scope/keys.pem",
           "/scopes//.well-known/jwks.json",
           "/scopes/consumer/.well-known/jwks.json",
           "/scopes/enterprise/keys.pem",
           "/scopes/raw/keys.der",
           "/scopes/raw/keys.pem/",
       }) {
    SCOPED_TRACE(path);
    HttpResponse r = Get(http_port_, path);
    EXPECT_EQ(r.status, 404) << r.Describe();
    ExpectNoKeyMaterial(r, path);
  }
  ExpectStillServing();
}

TEST_F(JwksHttpTest, TraversalAndPercentEncodingTricksServeNothing) {
  for (const char* path : {
           "/scopes/../enterprise/.well-known/jwks.json",
           "/scopes/%2e%2e/enterprise/.well-known/jwks.json",
           "/scopes/%2E%2E/enterprise/.well-known/jwks.json",
           "/scopes/.%2e/enterprise/.well-known/jwks.json",
           "/consumer/../enterprise/.well-known/jwks.json",
           "/consumer/%2e%2e/enterprise/.well-known/jwks.json",
           "/consumer/.well-known/../../enterprise/.well-known/jwks.json",
           "/consumer/.well-known/%2e%2e/%2e%2e/enterprise/.well-known/"
           "jwks.json",
           "/./consumer/.well-known/jwks.json",
           "/consumer/./.well-known/jwks.json",
           "/consumer//.well-known/jwks.json",
           "//consumer/.well-known/jwks.json",
           "/scopes/./consumer-a/.well-known/jwks.json",
           "/scopes/a%2F.well-known%2Fjwks.json",
           "/scopes/consumer-a%2F.well-known%2Fjwks.json",
           "/scopes/consumer-a%2f.well-known%2fjwks.json",
           "/scopes/consumer-a/.well-known%2Fjwks.json",
           "/scopes/raw/..%2F..%2Fenterprise%2F.well-known%2Fjwks.json",
           "/scopes/raw/"
           "..%2f..%2fscopes%2fenterprise%2f.well-known%2fjwks.json",
           "/scopes/consumer%2Da/.well-known/jwks.json",
           "/scopes/consumer-a/.well-known/jwks%2Ejson",
           "/%63onsumer/.well-known/jwks.json",
           "/%65nterprise/.well-known/jwks.json",
           "/consumer%2F.well-known%2Fjwks.json",
           "/enterprise/.well-known/jwks.json%00",
           "/scopes/enterprise%00/.well-known/jwks.json",
           "/scopes/..%5Centerprise/.well-known/jwks.json",
           "/scopes/..\\enterprise/.well-known/jwks.json",
           "/scopes/%2e%2e%2fenterprise%2f.well-known%2fjwks.json",
           "/scopes/%252e%252e/enterprise/.well-known/jwks.json",
           "/scopes/raw/../consumer-a/.well-known/jwks.json",
           "/scopes/consumer-a/.well-known/../keys.pem",
           "/scopes/raw/.well-known/../keys.pem",
       }) {
    SCOPED_TRACE(path);
    HttpResponse r = Get(http_port_, path);
    EXPECT_NE(r.status, 200) << r.Describe();
    EXPECT_THAT(r.status, AnyOf(404, 400)) << r.Describe();
    ExpectNoKeyMaterial(r, path);
  }
  ExpectStillServing();
}

TEST_F(JwksHttpTest, AnOversizedHeaderLineIsRefusedAndTheServerGoesOn) {
  HttpResponse r =
      Get(http_port_, kEnterprisePath,
          absl::StrCat("X-Big: ", std::string(64 * 1024, 'a'), "\r\n"));
  std::cout << "64 KiB header line: " << r.Describe() << "\n";
  RecordProperty("oversized_header_status", r.status);
  EXPECT_EQ(r.status, 431) << r.Describe();
  ExpectNoKeyMaterial(r, "64 KiB header");
  ExpectStillServing();
}

TEST_F(JwksHttpTest, ManyHeadersTogetherAreRefusedAndTheServerGoesOn) {
  std::string headers;
  for (int i = 0; i < 2000; ++i) {
    absl::StrAppend(&headers, "X-H", i, ": ", std::string(40, 'b'), "\r\n");
  }
  HttpResponse r = Get(http_port_, kEnterprisePath, headers);
  std::cout << "2000 headers (~100 KiB): " << r.Describe() << "\n";
  RecordProperty("many_headers_status", r.status);
  EXPECT_EQ(r.status, 431) << r.Describe();
  ExpectNoKeyMaterial(r, "many headers");
  ExpectStillServing();
}

TEST_F(JwksHttpTest, AnOversizedUriIsRefusedAndTheServerGoesOn) {
  for (size_t size : {16 * 1024, 64 * 1024}) {
    SCOPED_TRACE(size);
    std::string path = absl::StrCat("/scopes/", std::string(size, 'a'),
                                    "/.well-known/jwks.json");
    HttpResponse r = Get(http_port_, path);
    std::cout << size / 1024 << " KiB URI: " << r.Describe() << "\n";
    RecordProperty(absl::StrCat("oversized_uri_", size / 1024, "k_status"),
                   r.status);
    EXPECT_EQ(r.status, 414) << r.Describe();
    ExpectNoKeyMaterial(r, "oversized URI");
    // A long query string on a real document's path.
    HttpResponse q = Get(
        http_port_, absl::StrCat(kEnterprisePath, "?", std::string(size, 'q')));
    std::cout << size / 1024 << " KiB query: " << q.Describe() << "\n";
    EXPECT_EQ(q.status, 414) << q.Describe();
    ExpectNoKeyMaterial(q, "oversized query");
  }
  ExpectStillServing();
}

TEST_F(JwksHttpTest, GarbageRequestLinesAreRefusedAndTheServerGoesOn) {
  for (const char* request : {
           "\r\n\r\n", "GET\r\n\r\n",
           "GET /consumer/.well-known/jwks.json HTTP/9.9\r\nHost: x\r\n\r\n",
           "\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",  // a TLS hello
       }) {
    SCOPED_TRACE(absl::CEscape(request));
    // The server may answer 400/505, close, or wait for the rest of a
    // request that never comes: anything but a document.
    HttpResponse r = RawRequest(http_port_, request, /*timeout_seconds=*/3);
    std::cout << absl::CEscape(request) << ": " << r.Describe() << "\n";
    EXPECT_NE(r.status, 200) << r.Describe();
    ExpectNoKeyMaterial(r, absl::CEscape(request));
  }
  ExpectStillServing();
}

// A client that sends half a request and then nothing does not stop others.
TEST_F(JwksHttpTest, ASlowClientDoesNotBlockOthers) {
  std::vector<int> slow;
  for (int i = 0; i < 4; ++i) {
    int fd = Connect(http_port_);
    ASSERT_GE(fd, 0);
    const char partial[] = "GET /consumer/.well-known/jwks.json HTTP/1.1\r\nHo";
    ASSERT_EQ(send(fd, partial, sizeof(partial) - 1, MSG_NOSIGNAL),
              static_cast<ssize_t>(sizeof(partial) - 1));
    slow.push_back(fd);
  }
  absl::Time start = absl::Now();
  HttpResponse r = Get(http_port_, kConsumerPath);
  EXPECT_EQ(r.status, 200) << r.Describe();
  EXPECT_LT(absl::Now() - start, absl::Seconds(5));
  // And the server does not wait for them for ever: it closes a stalled
  // connection (the connection timeout; 10 s by default) without a document.
  timeval tv = {.tv_sec = 40, .tv_usec = 0};
  setsockopt(slow[0], SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  std::string got;
  char buf[4096];
  ssize_t n;
  while ((n = recv(slow[0], buf, sizeof(buf), 0)) > 0) got.append(buf, n);
  int recv_errno = n < 0 ? errno : 0;
  absl::Duration waited = absl::Now() - start;
  std::cout << "stalled connection closed after " << waited << " (errno "
            << recv_errno << ", " << got.size() << " bytes)\n";
  EXPECT_NE(recv_errno, EAGAIN) << "still open after 40 s";
  EXPECT_LT(waited, absl::Seconds(30));
  EXPECT_THAT(got, Not(HasSubstr("\"keys\"")));
  for (int fd : slow) close(fd);
  ExpectStillServing();
}

TEST_F(JwksHttpTest, GrpcGetJwksReturnsTheHttpBytes) {
  auto stub = Stub();
  for (const char* scope : kJwtScopes) {
    SCOPED_TRACE(scope);
    v1::GetJwksResponse resp;
    grpc::Status st = GetJwks(*stub, scope, &resp);
    ASSERT_TRUE(st.ok()) << st.error_message();
    HttpResponse r = Get(http_port_, ScopeJwksPath(scope));
    ASSERT_EQ(r.status, 200) << r.Describe();
    EXPECT_EQ(resp.jwks_json(), r.body);
    // Its version is the set's strong ETag, the same as HTTP's (quoted or
    // not).
    std::string etag = r.Header("ETag").value_or("");
    EXPECT_THAT(
        resp.version(),
        AnyOf(etag, etag.size() > 2 ? etag.substr(1, etag.size() - 2) : etag))
        << "HTTP ETag " << etag;
  }
}

// Last: it restarts signetd. The same token gives byte-identical documents
// (and ETags) from a new process.
TEST_F(JwksHttpTest, DocumentsAreByteIdenticalAfterARestart) {
  std::map<std::string, std::pair<std::string, std::string>> before;
  for (const std::string& path : AllDocumentPaths()) {
    HttpResponse r = Get(http_port_, path);
    ASSERT_EQ(r.status, 200) << path << "\n" << r.Describe();
    before[path] = {r.body, r.Header("ETag").value_or("")};
  }
  std::map<std::string, std::string> kids_before = kids_;
  std::map<std::string, std::string> standbys_before = standby_kids_;
  int old_http_port = http_port_;
  auto code = signetd_->Stop(SIGTERM, absl::Seconds(30));
  ASSERT_TRUE(code.ok()) << code.status();
  EXPECT_EQ(*code, 0) << signetd_->Output();
  // The old listener is gone.
  EXPECT_EQ(Get(old_http_port, kConsumerPath).status, 0);
  delete signetd_;
  signetd_ = nullptr;
  StartSignetd();
  ASSERT_NE(signetd_, nullptr);
  EXPECT_EQ(kids_, kids_before);
  EXPECT_EQ(standby_kids_, standbys_before);
  for (const std::string& path : AllDocumentPaths()) {
    SCOPED_TRACE(path);
    HttpResponse r = Get(http_port_, path);
    ASSERT_EQ(r.status, 200) << r.Describe();
    EXPECT_EQ(r.body, before[path].first);
    EXPECT_EQ(r.Header("ETag").value_or(""), before[path].second);
  }
}

}  // namespace
}  // namespace signet
