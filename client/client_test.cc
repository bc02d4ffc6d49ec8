// Unit tests of the client's pure parts: the retry policy (which codes,
// what back-off), the status conversion, and Create's checks of its options
// and files. Calls against a real signetd are in
// tests/client/signetctl_test.cc.
#include "client/client.h"

#include <cmath>
#include <cstdlib>
#include <fstream>
#include <string>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace signet::client {
namespace {

using ::testing::HasSubstr;

constexpr absl::Duration kInitial = absl::Milliseconds(100);
constexpr absl::Duration kMax = absl::Seconds(2);

TEST(BackoffDelayTest, DoublesFromTheInitialBackoffUpToTheCap) {
  // u = 0 gives the top of the range, b itself.
  EXPECT_EQ(BackoffDelay(1, kInitial, kMax, 0.0), absl::Milliseconds(100));
  EXPECT_EQ(BackoffDelay(2, kInitial, kMax, 0.0), absl::Milliseconds(200));
  EXPECT_EQ(BackoffDelay(3, kInitial, kMax, 0.0), absl::Milliseconds(400));
  EXPECT_EQ(BackoffDelay(5, kInitial, kMax, 0.0), absl::Milliseconds(1600));
  EXPECT_EQ(BackoffDelay(6, kInitial, kMax, 0.0), kMax);
  EXPECT_EQ(BackoffDelay(7, kInitial, kMax, 0.0), kMax);
  // No overflow however many retries.
  EXPECT_EQ(BackoffDelay(1'000'000, kInitial, kMax, 0.0), kMax);
}

TEST(BackoffDelayTest, JitterPicksAPointOfTheUpperHalf) {
  // u = 0.5 is three quarters of b; u near 1 approaches b/2.
  EXPECT_EQ(BackoffDelay(1, kInitial, kMax, 0.5), absl::Milliseconds(75));
  EXPECT_EQ(BackoffDelay(6, kInitial, kMax, 0.5), absl::Milliseconds(1500));
  for (int retry = 1; retry <= 10; ++retry) {
    absl::Duration top = BackoffDelay(retry, kInitial, kMax, 0.0);
    for (double u : {0.0, 0.1, 0.25, 0.5, 0.9, 0.999999}) {
      absl::Duration d = BackoffDelay(retry, kInitial, kMax, u);
      EXPECT_LE(d, top) << retry << " " << u;
      EXPECT_GE(d, top / 2) << retry << " " << u;
      EXPECT_LE(d, kMax);
    }
  }
}

TEST(BackoffDelayTest, OutOfRangeInputsAreClamped) {
  EXPECT_EQ(BackoffDelay(1, kInitial, kMax, -3.0), kInitial);
  EXPECT_EQ(BackoffDelay(1, kInitial, kMax, 7.0), kInitial / 2);
  EXPECT_EQ(BackoffDelay(1, kInitial, kMax, std::nan("")), kInitial);
  EXPECT_EQ(BackoffDelay(0, kInitial, kMax, 0.0), kInitial);
  // An initial back-off above the cap is capped.
  EXPECT_EQ(BackoffDelay(1, absl::Seconds(10), kMax, 0.0), kMax);
  EXPECT_EQ(BackoffDelay(3, absl::ZeroDuration(), kMax, 0.0),
            absl::ZeroDuration());
}

TEST(IsRetryableTest, OnlyTryAgainLaterCodes) {
  for (int code = 0; code <= 16; ++code) {
    auto c = static_cast<absl::StatusCode>(code);
    bool expected = c == absl::StatusCode::kUnavailable ||
                    c == absl::StatusCode::kResourceExhausted;
    EXPECT_EQ(IsRetryable(c), expected) << absl::StatusCodeToString(c);
  }
}

TEST(FromGrpcStatusTest, KeepsTheCodeAndTheMessage) {
  EXPECT_TRUE(FromGrpcStatus(grpc::Status::OK).ok());
  for (int code = 1; code <= 16; ++code) {
    grpc::Status in(static_cast<grpc::StatusCode>(code),
                    absl::StrCat("message ", code));
    absl::Status out = FromGrpcStatus(in);
    EXPECT_EQ(static_cast<int>(out.code()), code);
    EXPECT_EQ(out.message(), absl::StrCat("message ", code));
  }
}

class CreateTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/signet-client-test-XXXXXX";
    ASSERT_NE(mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
    // A self-signed certificate serves as CA and client certificate: Create
    // checks the files, it does not connect.
    ASSERT_NO_FATAL_FAILURE(NewPair("a", &cert_, &key_));
  }
  void TearDown() override {
    ASSERT_EQ(std::system(absl::StrCat("rm -rf '", dir_, "'").c_str()), 0);
  }

  // A new EC P-256 key and a self-signed certificate for it, made with the
  // openssl command-line tool.
  void NewPair(const std::string& name, std::string* cert, std::string* key) {
    *cert = absl::StrCat(dir_, "/", name, ".pem");
    *key = absl::StrCat(dir_, "/", name, ".key");
    std::string command = absl::StrCat(
        "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 "
        "-nodes -subj /CN=",
        name, " -days 1 -keyout '", *key, "' -out '", *cert,
        "' >/dev/null 2>&1");
    ASSERT_EQ(std::system(command.c_str()), 0)
        << "the openssl command-line tool is needed (scripts/setup installs "
           "it): "
        << command;
  }

  std::string Write(const std::string& name, const std::string& text) {
    std::string path = dir_ + "/" + name;
    std::ofstream(path) << text;
    return path;
  }

  ClientOptions Options() {
    ClientOptions options;
    options.target = "localhost:1";
    options.ca_file = cert_;
    options.cert_file = cert_;
    options.key_file = key_;
    return options;
  }

  std::string dir_, cert_, key_;
};

TEST_F(CreateTest, MatchingFilesMakeAClient) {
  auto client = Client::Create(Options());
  ASSERT_TRUE(client.ok()) << client.status();
  EXPECT_EQ((*client)->options().target, "localhost:1");
}

TEST_F(CreateTest, AKeyThatIsNotTheCertificatesIsInvalid) {
  std::string other_cert, other_key;
  ASSERT_NO_FATAL_FAILURE(NewPair("b", &other_cert, &other_key));
  ClientOptions options = Options();
  options.key_file = other_key;
  auto client = Client::Create(options);
  EXPECT_EQ(client.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(client.status().message(), HasSubstr(other_key));
  EXPECT_THAT(client.status().message(), HasSubstr(cert_));
  EXPECT_THAT(client.status().message(), HasSubstr("not the key"));
}

TEST_F(CreateTest, PemThatDoesNotParseIsInvalid) {
  ClientOptions options = Options();
  options.cert_file = Write("garbage-cert.pem",
                            "-----BEGIN CERTIFICATE-----\nMIIB\n"
                            "-----END CERTIFICATE-----\n");
  auto client = Client::Create(options);
  EXPECT_EQ(client.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(client.status().message(), HasSubstr("garbage-cert.pem"));
  EXPECT_THAT(client.status().message(), HasSubstr("parsed"));

  options = Options();
  options.key_file = Write("garbage.key",
                           "-----BEGIN PRIVATE KEY-----\nMIGH\n"
                           "-----END PRIVATE KEY-----\n");
  client = Client::Create(options);
  EXPECT_EQ(client.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(client.status().message(), HasSubstr("garbage.key"));
}

TEST_F(CreateTest, AMissingFileIsNotFoundAndNamed) {
  ClientOptions options = Options();
  options.cert_file = dir_ + "/nope.pem";
  auto client = Client::Create(options);
  EXPECT_EQ(client.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(client.status().message(), HasSubstr(options.cert_file));
  EXPECT_THAT(client.status().message(), HasSubstr("client certificate"));
}

TEST_F(CreateTest, FilesThatAreNotTheRightPemAreInvalid) {
  ClientOptions options = Options();
  options.key_file = cert_;  // a certificate where the key should be
  auto client = Client::Create(options);
  EXPECT_EQ(client.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(client.status().message(), HasSubstr(cert_));
  EXPECT_THAT(client.status().message(), HasSubstr("PRIVATE KEY"));

  options = Options();
  options.ca_file = Write("junk.pem", "not a certificate\n");
  client = Client::Create(options);
  EXPECT_EQ(client.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(client.status().message(), HasSubstr("junk.pem"));

  options = Options();
  options.key_file = Write("enc.pem",
                           "-----BEGIN ENCRYPTED PRIVATE KEY-----\nMIIB\n"
                           "-----END ENCRYPTED PRIVATE KEY-----\n");
  client = Client::Create(options);
  EXPECT_EQ(client.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(client.status().message(), HasSubstr("encrypted"));

  options = Options();
  options.ca_file = dir_;  // a directory
  client = Client::Create(options);
  EXPECT_EQ(client.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(client.status().message(), HasSubstr(dir_));
}

TEST_F(CreateTest, BadOptionsAreInvalidAndNamed) {
  struct Case {
    const char* field;
    void (*change)(ClientOptions&);
  };
  const Case cases[] = {
      {"target", [](ClientOptions& o) { o.target.clear(); }},
      {"max_attempts", [](ClientOptions& o) { o.max_attempts = 0; }},
      {"timeout", [](ClientOptions& o) { o.timeout = absl::ZeroDuration(); }},
      {"initial_backoff",
       [](ClientOptions& o) { o.initial_backoff = absl::ZeroDuration(); }},
      {"max_backoff",
       [](ClientOptions& o) { o.max_backoff = absl::Milliseconds(1); }},
      {"CA certificate", [](ClientOptions& o) { o.ca_file.clear(); }},
      {"client key", [](ClientOptions& o) { o.key_file.clear(); }},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.field);
    ClientOptions options = Options();
    c.change(options);
    auto client = Client::Create(options);
    EXPECT_EQ(client.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(client.status().message(), HasSubstr(c.field));
  }
}

}  // namespace
}  // namespace signet::client
