// The claims corpus (tests/corpus/claims) replayed over real gRPC SignJwt
// against a real signetd: SoftHSM2 behind a real `p11-kit server`, signetd
// as a real process, mTLS over loopback. server/claims_test.cc checks the
// same files against CheckClaims directly; this checks that the service
// gives callers the same answers.
//
// The corpus is written for a server clock that reads exactly 1800000000
// (expected.txt), but signetd uses the real clock. So every JSON integer of
// a file that lies within [1799990000, 1800010000] is shifted by
// (base - 1800000000) on the raw bytes, where `base` is a whole second next
// to the real clock, and the request is sent only when the whole RPC fits
// in one second of the real clock (else it is retried). What the corpus
// means by "now" is then within one second of the server's clock:
//  - for all files but one, base = the next whole second, so the server's
//    clock is just before base: ok_iat_at_skew_edge (iat = base - 60) is
//    inside the 60 s skew, iat_too_far_ahead (base + 61) and
//    iat_too_far_behind (base - 61) are outside it;
//  - expired.json (iat = base - 60, exp = base) is right only for a clock
//    that reads base exactly: just before it, exp is still in the future
//    and the token would be signed; just after it, iat is more than 60 s
//    behind. It is sent with base = the current whole second (the server's
//    clock just after it), so it must still be refused with
//    INVALID_ARGUMENT, but the message is the skew's ("behind the server's
//    clock"), not "already be expired". ExpiredClaimsAreRefused covers that
//    message with the real clock.
// Message substrings that contain shifted numbers (exp_equals_iat,
// nbf_equals_exp) are shifted the same way before they are compared.
//
// Invalid UTF-8: SignJwtRequest.claims_json is `bytes` (a proto3 `string`
// would make protobuf drop the request before signetd's checks run; gRPC
// 1.51 then answers UNIMPLEMENTED with no message). Every file is asserted
// to parse, so it reaches CheckClaims and gets its INVALID_ARGUMENT.
#include "tests/testing/claims_corpus.h"

#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>
#include <signal.h>
#include <sys/stat.h>

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <future>
#include <iterator>
#include <memory>
#include <nlohmann/json.hpp>
#include <set>
#include <string>
#include <vector>

#include "absl/strings/escaping.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "signet/v1/signer.grpc.pb.h"
#include "tests/testing/p11kit_server.h"
#include "tests/testing/pki.h"
#include "tests/testing/signetd_process.h"
#include "tests/testing/temp_token.h"
#include "tests/testing/test_bed.h"

#ifndef SIGNETD_BINARY
#error "SIGNETD_BINARY must name the signetd binary"
#endif
#ifndef SIGNET_CLAIMS_CORPUS_DIR
#error "SIGNET_CLAIMS_CORPUS_DIR must name tests/corpus/claims"
#endif

namespace signet {
namespace {

using ::testing::AnyOf;
using ::testing::HasSubstr;
using testing::SignetdOptions;
using testing::SignetdProcess;
using testing::TempToken;
using testing::TestCa;
using v1::Signer;

constexpr absl::Duration kStartTimeout = absl::Seconds(90);
// The corpus's policy (expected.txt).
constexpr char kScope[] = "consumer";
constexpr char kIssuer[] = "https://consumer.signet.example";
constexpr int64_t kCorpusNow = 1800000000;
constexpr int64_t kShiftLow = 1799990000;
constexpr int64_t kShiftHigh = 1800010000;
constexpr char kTenant[] = "spiffe://signet.test/idp/consumer";

// The one file whose expectation needs a clock that reads a whole second
// exactly (see the file comment).
constexpr char kExactClockFile[] = "expired.json";

bool IsDigit(char c) { return c >= '0' && c <= '9'; }

// Adds `delta` to every JSON integer of `bytes` within [kShiftLow,
// kShiftHigh]: maximal digit runs not preceded by '.', 'e', 'E', '-' or a
// digit and not followed by '.', 'e' or 'E' (so no part of a fraction, an
// exponent, a negative number or a longer number). Every other byte is kept
// as it is, invalid UTF-8 included.
std::string Shift(const std::string& bytes, int64_t delta) {
  std::string out;
  out.reserve(bytes.size());
  size_t i = 0;
  while (i < bytes.size()) {
    if (!IsDigit(bytes[i])) {
      out.push_back(bytes[i++]);
      continue;
    }
    size_t end = i;
    while (end < bytes.size() && IsDigit(bytes[end])) ++end;
    const std::string run = bytes.substr(i, end - i);
    const char before = i == 0 ? ' ' : bytes[i - 1];
    const char after = end == bytes.size() ? ' ' : bytes[end];
    const bool standalone = before != '.' && before != 'e' && before != 'E' &&
                            before != '-' && after != '.' && after != 'e' &&
                            after != 'E';
    int64_t value = 0;
    if (standalone && run.size() <= 18 && absl::SimpleAtoi(run, &value) &&
        value >= kShiftLow && value <= kShiftHigh) {
      absl::StrAppend(&out, value + delta);
    } else {
      out += run;
    }
    i = end;
  }
  return out;
}

TEST(ShiftTest, ShiftsOnlyStandaloneIntegersInRange) {
  EXPECT_EQ(Shift(R"({"iat":1800000000,"exp":1800003600})", -10),
            R"({"iat":1799999990,"exp":1800003590})");
  // Fractions, exponents, negatives, longer numbers and numbers out of the
  // window stay; so do strings' other bytes, invalid UTF-8 included.
  const std::string kept =
      "{\"a\":1800000000.0,\"b\":1.1800000000,\"c\":1800000000e0,"
      "\"d\":-1800000000,\"e\":18000000001,\"f\":9007199254740992,"
      "\"g\":1e1800000000,\"h\":\"\xff\xc0\"}";
  EXPECT_EQ(Shift(kept, -10), kept);
  EXPECT_EQ(Shift("(1800003600)", 5), "(1800003605)");
  EXPECT_EQ(Shift("\"1800000000\"", 1), "\"1800000001\"");
}

using signet::testing::CorpusEntry;

std::string ReadBytes(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  EXPECT_TRUE(in.good()) << "cannot read " << path;
  return std::string((std::istreambuf_iterator<char>(in)),
                     std::istreambuf_iterator<char>());
}

void AppendVarint(uint64_t value, std::string* out) {
  while (value >= 0x80) {
    out->push_back(static_cast<char>((value & 0x7f) | 0x80));
    value >>= 7;
  }
  out->push_back(static_cast<char>(value));
}

// SignJwtRequest{scope = 1, claims_json = 2} in the protobuf wire format,
// written by hand so that no client-side UTF-8 check sees the claims.
std::string EncodeSignJwtRequest(const std::string& scope,
                                 const std::string& claims) {
  std::string wire;
  wire.push_back('\x0a');
  AppendVarint(scope.size(), &wire);
  wire += scope;
  wire.push_back('\x12');
  AppendVarint(claims.size(), &wire);
  wire += claims;
  return wire;
}

// What the server's generated code makes of `wire`: false when protobuf
// refuses to parse it (for claims_json: not valid UTF-8).
bool ServerCanParse(const std::string& wire) {
  v1::SignJwtRequest parsed;
  return parsed.ParseFromString(wire);
}

std::string B64Decode(absl::string_view s) {
  std::string out;
  EXPECT_TRUE(absl::WebSafeBase64Unescape(s, &out)) << s;
  return out;
}

// One answer of the server.
struct Answer {
  grpc::Status status;
  v1::SignJwtResponse response;
};

class ClaimsCorpusTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    signal(SIGPIPE, SIG_IGN);
    auto bed = testing::SignetTestBed::Create();
    ASSERT_TRUE(bed.ok()) << bed.status();
    bed_ = bed->release();
    token_ = &bed_->token();
    ca_ = &bed_->ca();
    auto client = ca_->Issue("consumer-idp",
                             {.uri_sans = {kTenant}, .eku = "clientAuth"});
    ASSERT_TRUE(client.ok()) << client.status();
    client_ = new TestCa::Issued(*client);
    const std::string audit_dir = token_->dir() + "/audit";
    mkdir(audit_dir.c_str(), 0700);

    SignetdOptions options;
    options.binary = SIGNETD_BINARY;
    options.config_text = absl::StrCat(
        "grpc_listen_address: \"127.0.0.1:0\"\n", bed_->HsmConfig(),
        "scopes { name: \"", kScope,
        "\" audience_class: CONSUMER purpose: JWT issuer: \"", kIssuer,
        "\" algorithm: ES256 max_token_lifetime_seconds: 3600 }\n",
        // The issuer of iss_other_scope.json is a real scope, just not
        // this tenant's.
        "scopes { name: \"enterprise\" audience_class: ENTERPRISE purpose: "
        "JWT issuer: \"https://enterprise.signet.example\" algorithm: ES256 "
        "}\n",
        bed_->TlsConfig(), "tenants { identity: \"uri:", kTenant,
        "\" scopes: \"", kScope, "\" }\n", "serving { iat_skew_seconds: 60 }\n",
        "audit_log_path: \"", audit_dir, "/audit.log\"\n");
    auto signetd = SignetdProcess::Start(token_->dir(), options);
    ASSERT_TRUE(signetd.ok()) << signetd.status();
    signetd_ = signetd->release();
    auto port = signetd_->WaitForPort(kStartTimeout);
    ASSERT_TRUE(port.ok()) << port.status();
    ASSERT_TRUE(signetd_->WaitForOutput("signetd ready", kStartTimeout).ok())
        << signetd_->Output();

    grpc::SslCredentialsOptions ssl;
    ssl.pem_root_certs = ca_->cert_pem();
    ssl.pem_private_key = client_->key_pem;
    ssl.pem_cert_chain = client_->cert_pem;
    channel_ = new std::shared_ptr<grpc::Channel>(grpc::CreateChannel(
        absl::StrCat("localhost:", *port), grpc::SslCredentials(ssl)));
  }

  static void TearDownTestSuite() {
    delete channel_;
    delete signetd_;
    delete client_;
    delete bed_;
  }

  static void Deadline(grpc::ClientContext& ctx) {
    ctx.set_deadline(std::chrono::system_clock::now() +
                     std::chrono::seconds(20));
  }

  // SignJwt through the generated stub.
  static Answer SignJwt(const std::string& claims) {
    auto stub = Signer::NewStub(*channel_);
    grpc::ClientContext ctx;
    Deadline(ctx);
    v1::SignJwtRequest req;
    req.set_scope(kScope);
    req.set_claims_json(claims);
    Answer answer;
    answer.status = stub->SignJwt(&ctx, req, &answer.response);
    return answer;
  }

  // SignJwt with the request's wire bytes as they are, through the generic
  // stub: the server receives exactly `wire`.
  static Answer SignJwtRaw(const std::string& wire) {
    grpc::GenericStub stub(*channel_);
    grpc::ClientContext ctx;
    Deadline(ctx);
    grpc::Slice slice(wire);
    grpc::ByteBuffer request(&slice, 1);
    grpc::ByteBuffer response;
    std::promise<grpc::Status> done;
    stub.UnaryCall(&ctx,
                   absl::StrCat("/", Signer::service_full_name(), "/SignJwt"),
                   grpc::StubOptions(), &request, &response,
                   [&done](grpc::Status st) { done.set_value(st); });
    Answer answer;
    answer.status = done.get_future().get();
    if (answer.status.ok()) {
      std::vector<grpc::Slice> slices;
      EXPECT_TRUE(response.Dump(&slices).ok());
      std::string bytes;
      for (const grpc::Slice& s : slices) {
        bytes.append(reinterpret_cast<const char*>(s.begin()), s.size());
      }
      EXPECT_TRUE(answer.response.ParseFromString(bytes));
    }
    return answer;
  }

  // Sends `bytes` with the corpus's "now" moved to a whole second next to
  // the real clock (base = the next one, or with `clock_past_base` the
  // current one), and only keeps an answer whose RPC began and ended in one
  // second of the real clock, so that the server's clock was within a
  // second of base on the intended side. `*delta` is the shift used.
  static Answer SendShifted(const std::string& bytes, bool clock_past_base,
                            int64_t* delta, std::string* sent) {
    Answer answer;
    for (int attempt = 0; attempt < 10; ++attempt) {
      absl::Time start = absl::Now();
      // Too close to the next second: wait for it.
      if (start - absl::FromUnixSeconds(absl::ToUnixSeconds(start)) >
          absl::Milliseconds(700)) {
        absl::SleepFor(absl::FromUnixSeconds(absl::ToUnixSeconds(start) + 1) -
                       start + absl::Milliseconds(5));
        start = absl::Now();
      }
      const int64_t second = absl::ToUnixSeconds(start);
      const int64_t base = clock_past_base ? second : second + 1;
      *delta = base - kCorpusNow;
      *sent = Shift(bytes, *delta);
      const std::string wire = EncodeSignJwtRequest(kScope, *sent);
      answer = ServerCanParse(wire) ? SignJwt(*sent) : SignJwtRaw(wire);
      if (absl::ToUnixSeconds(absl::Now()) == second) return answer;
    }
    ADD_FAILURE() << "no RPC completed within one second in 10 attempts";
    return answer;
  }

  static inline testing::SignetTestBed* bed_ = nullptr;
  static inline TempToken* token_ = nullptr;
  static inline TestCa* ca_ = nullptr;
  static inline TestCa::Issued* client_ = nullptr;
  static inline SignetdProcess* signetd_ = nullptr;
  static inline std::shared_ptr<grpc::Channel>* channel_ = nullptr;
};

TEST_F(ClaimsCorpusTest, EveryFileGetsItsExpectedStatusOverGrpc) {
  const std::filesystem::path dir = SIGNET_CLAIMS_CORPUS_DIR;
  ASSERT_TRUE(std::filesystem::is_directory(dir)) << dir << " is missing";
  const std::vector<CorpusEntry> entries =
      signet::testing::ReadClaimsCorpus(dir);
  ASSERT_GE(entries.size(), 40u);

  std::set<std::string> listed;
  int signed_count = 0;
  for (const CorpusEntry& entry : entries) {
    SCOPED_TRACE(entry.file);
    EXPECT_TRUE(listed.insert(entry.file).second) << "listed twice";
    const std::string bytes = ReadBytes(dir / entry.file);
    const bool exact_clock = entry.file == kExactClockFile;
    int64_t delta = 0;
    std::string sent;
    const Answer answer = SendShifted(bytes, exact_clock, &delta, &sent);
    // The shift keeps every number's length (both clocks have 10 digits),
    // so the size limits are tested at the corpus's exact sizes.
    EXPECT_EQ(sent.size(), bytes.size());
    const grpc::Status& st = answer.status;

    // claims_json is `bytes`: every file, invalid UTF-8 included, reaches
    // signetd's own checks (and its audit log), none is dropped by protobuf.
    ASSERT_TRUE(ServerCanParse(EncodeSignJwtRequest(kScope, sent)))
        << entry.file;
    if (entry.status == "OK") {
      EXPECT_EQ(entry.substring, "-");
      ASSERT_TRUE(st.ok()) << st.error_code() << ": " << st.error_message()
                           << "\n(sent " << absl::CHexEscape(sent) << ")";
      ++signed_count;
      // The caller's exact bytes are what was signed, under the server's
      // own header.
      std::vector<std::string> parts =
          absl::StrSplit(answer.response.jws(), '.');
      ASSERT_EQ(parts.size(), 3u);
      EXPECT_EQ(B64Decode(parts[1]), sent);
      nlohmann::json header = nlohmann::json::parse(B64Decode(parts[0]));
      EXPECT_EQ(header["alg"], "ES256");
      EXPECT_EQ(header["typ"], "JWT");
      EXPECT_EQ(header["kid"], answer.response.kid());
      EXPECT_EQ(B64Decode(parts[2]).size(), 64u);
      continue;
    }
    ASSERT_EQ(entry.status, "INVALID_ARGUMENT");
    EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT)
        << st.error_message() << "\n(sent " << absl::CHexEscape(sent) << ")";
    EXPECT_TRUE(answer.response.jws().empty());
    if (exact_clock) {
      EXPECT_THAT(st.error_message(),
                  AnyOf(HasSubstr(entry.substring),
                        HasSubstr("behind the server's clock")));
    } else {
      EXPECT_THAT(st.error_message(), HasSubstr(Shift(entry.substring, delta)));
    }
  }
  // Every corpus file is listed, so none is silently skipped.
  for (const auto& file : std::filesystem::directory_iterator(dir)) {
    const std::string name = file.path().filename().string();
    if (name != "expected.txt") {
      EXPECT_TRUE(listed.count(name)) << name << " is not in expected.txt";
    }
  }
  EXPECT_GE(signed_count, 10);
}

// The "already expired" check with the real clock (expired.json can only
// reach it with a clock that reads a whole second exactly).
TEST_F(ClaimsCorpusTest, ExpiredClaimsAreRefused) {
  const int64_t now = absl::ToUnixSeconds(absl::Now());
  const Answer answer =
      SignJwt(absl::StrCat(R"({"iss":")", kIssuer, R"(","iat":)", now - 30,
                           R"(,"exp":)", now - 1, "}"));
  EXPECT_EQ(answer.status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(answer.status.error_message(), HasSubstr("already be expired"));
  EXPECT_TRUE(answer.response.jws().empty());
}

}  // namespace
}  // namespace signet
