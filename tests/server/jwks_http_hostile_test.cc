// signetd's JWKS endpoint under hostile clients, end to end: a
// real signetd (SoftHSM2 behind `p11-kit server`) and real TCP connections
// from loopback source addresses (127.0.0.2 and up, bound before connect;
// never anything but loopback).
//
// - Trickling clients ("slowloris": a request line, then one header byte
//   at a time, never finishing) from one address and from 199 addresses,
//   more of them than signetd has slots, while ordinary GETs from
//   127.0.0.1 must still be answered. A small slot count, per-client limit
//   and deadline keep this cheap.
// - The rate limit of the log lines about bad requests, counted in
//   signetd's output.
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>
#include <iostream>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"
#include "absl/strings/strip.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "base/status_macros.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/testing/http_get.h"
#include "tests/testing/signetd_process.h"
#include "tests/testing/test_bed.h"

namespace signet {
namespace {

using ::testing::HasSubstr;
using testing::HttpExchange;
using testing::HttpGet;
using testing::HttpResponse;
using ::testing::Not;
using testing::SignetdOptions;
using testing::SignetdProcess;

constexpr absl::Duration kStartTimeout = absl::Seconds(90);
constexpr char kConsumerPath[] = "/consumer/.well-known/jwks.json";

// What the slot tests configure (config.proto HttpConfig).
constexpr int kSlots = 64;
constexpr int kPerClient = 8;
constexpr absl::Duration kDeadline = absl::Seconds(2);
// While more than half the slots are taken, the time a connection has to
// send its headers (JwksHttpServer::kCrowdedHeaderTime).
constexpr absl::Duration kCrowdedHeaderTime = absl::Seconds(1);
// How often a trickling client sends its next byte: far inside the 10 s
// inactivity timeout, so only the request deadline can end it.
constexpr absl::Duration kTrickleEvery = absl::Milliseconds(250);

// A signetd with one CONSUMER scope and an HTTP endpoint; `http_extra`
// goes into its http { } block.
class Endpoint {
 public:
  static absl::StatusOr<std::unique_ptr<Endpoint>> Start(
      absl::string_view http_extra) {
    SIGNET_ASSIGN_OR_RETURN(auto bed, testing::SignetTestBed::Create());
    std::unique_ptr<Endpoint> e(new Endpoint);
    e->bed_ = std::move(bed);
    const std::string audit_dir = e->bed_->token().dir() + "/audit";
    mkdir(audit_dir.c_str(), 0700);
    SignetdOptions options;
    options.binary = SIGNETD_BINARY;
    options.config_text = absl::StrCat(
        "grpc_listen_address: \"127.0.0.1:0\"\n", e->bed_->HsmConfig(),
        "scopes { name: \"consumer\" audience_class: CONSUMER purpose: JWT "
        "issuer: \"https://consumer.issuer.signet.test\" algorithm: ES256 }\n",
        e->bed_->TlsConfig(),
        "tenants { identity: \"uri:spiffe://signet.test/tenant/reader\" "
        "scopes: \"consumer\" }\n",
        "audit_log_path: \"", audit_dir, "/audit.log\"\n",
        "http { listen_address: \"127.0.0.1:0\" public_base_url: "
        "\"https://keys.signet.test\" ",
        http_extra, " }\n");
    SIGNET_ASSIGN_OR_RETURN(
        auto signetd, SignetdProcess::Start(e->bed_->token().dir(), options));
    e->signetd_ = std::move(signetd);
    SIGNET_RETURN_IF_ERROR(
        e->signetd_->WaitForOutput("signetd ready", kStartTimeout));
    SIGNET_ASSIGN_OR_RETURN(e->port_,
                            e->signetd_->WaitForHttpPort(kStartTimeout));
    return e;
  }

  int port() const { return port_; }
  SignetdProcess& signetd() { return *signetd_; }

 private:
  Endpoint() = default;
  std::unique_ptr<testing::SignetTestBed> bed_;  // outlives signetd_
  std::unique_ptr<SignetdProcess> signetd_;
  int port_ = 0;
};

// Connections from loopback source addresses that each, every
// kTrickleEvery, either send one more header byte of a request they never
// finish (kTrickle), or send one more whole GET and read the answers, on a
// connection kept alive as long as the server lets it (kKeepAlive). Pump()
// runs on a thread of its own.
class Tricklers {
 public:
  enum Mode { kTrickle, kKeepAlive };
  explicit Tricklers(Mode mode = kTrickle) : mode_(mode) {}

  struct Connection {
    int fd = -1;
    std::string source;
    absl::Time opened;
    absl::Time closed = absl::InfiniteFuture();  // by the server
    std::string received;                        // whatever the server sent
  };

  ~Tricklers() {
    Stop();
    for (Connection& c : connections_) {
      if (c.fd >= 0) close(c.fd);
    }
  }

  // Opens `count` connections to 127.0.0.1:`port`, the i-th from
  // sources[i % sources.size()]. Fails on the first one that cannot be
  // opened (the server refusing at once shows up later, as a close).
  absl::Status Open(int port, const std::vector<std::string>& sources,
                    int count) {
    port_ = port;
    for (int i = 0; i < count; ++i) {
      Connection c;
      c.source = sources[i % sources.size()];
      SIGNET_RETURN_IF_ERROR(Dial(c));
      absl::MutexLock lock(&mu_);
      connections_.push_back(std::move(c));
    }
    return absl::OkStatus();
  }

  // A connection the server closes is opened again at once, from the same
  // address, and starts over (a slowloris that reconnects).
  void ReconnectWhenClosed() { reconnect_ = true; }
  int reconnects() const {
    absl::MutexLock lock(&mu_);
    return reconnects_;
  }

  // Sends the next byte on every open connection every kTrickleEvery, and
  // notes the ones the server closed, until Stop().
  void StartPumping() {
    pump_ = std::thread([this] {
      while (!stop_.load()) {
        {
          absl::MutexLock lock(&mu_);
          for (Connection& c : connections_) PumpOne(c);
        }
        absl::SleepFor(kTrickleEvery);
      }
    });
  }

  void Stop() {
    stop_.store(true);
    if (pump_.joinable()) pump_.join();
  }

  int open() const {
    absl::MutexLock lock(&mu_);
    int n = 0;
    for (const Connection& c : connections_) {
      if (c.closed == absl::InfiniteFuture()) ++n;
    }
    return n;
  }

  // Call after Stop().
  const std::vector<Connection>& connections() const { return connections_; }

 private:
  void PumpOne(Connection& c) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (c.closed != absl::InfiniteFuture()) {
      if (!reconnect_) return;
      close(c.fd);
      c.fd = -1;
      c.received.clear();
      if (Dial(c).ok()) ++reconnects_;
      return;
    }
    char buf[4096];
    for (;;) {
      ssize_t n = recv(c.fd, buf, sizeof(buf), MSG_DONTWAIT);
      if (n > 0) {
        c.received.append(buf, n);
        continue;
      }
      if (n == 0 ||
          (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)) {
        c.closed = absl::Now();
        return;
      }
      break;
    }
    const std::string next = mode_ == kKeepAlive ? WholeRequest() : "a";
    if (send(c.fd, next.data(), next.size(), MSG_NOSIGNAL | MSG_DONTWAIT) < 0 &&
        errno != EAGAIN && errno != EWOULDBLOCK) {
      c.closed = absl::Now();
    }
  }

  // Connects `c` from its source and sends the start of its request.
  absl::Status Dial(Connection& c) {
    const std::string start =
        mode_ == kKeepAlive
            ? WholeRequest()
            : absl::StrCat("GET ", kConsumerPath,
                           " HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ");
    c.fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (c.fd < 0) return absl::InternalError(strerror(errno));
    timeval tv = {.tv_sec = 10, .tv_usec = 0};
    setsockopt(c.fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
    sockaddr_in from = {};
    from.sin_family = AF_INET;
    if (inet_pton(AF_INET, c.source.c_str(), &from.sin_addr) != 1 ||
        (ntohl(from.sin_addr.s_addr) >> 24) != 127) {
      close(c.fd);
      return absl::InvalidArgumentError(
          absl::StrCat(c.source, " is not a loopback address"));
    }
    if (bind(c.fd, reinterpret_cast<sockaddr*>(&from), sizeof(from)) != 0) {
      int e = errno;
      close(c.fd);
      return absl::InternalError(
          absl::StrCat("bind ", c.source, ": ", strerror(e)));
    }
    sockaddr_in to = {};
    to.sin_family = AF_INET;
    to.sin_port = htons(static_cast<uint16_t>(port_));
    to.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(c.fd, reinterpret_cast<sockaddr*>(&to), sizeof(to)) != 0) {
      int e = errno;
      close(c.fd);
      return absl::UnavailableError(
          absl::StrCat("connect from ", c.source, ": ", strerror(e)));
    }
    c.opened = absl::Now();
    c.closed = absl::InfiniteFuture();
    fcntl(c.fd, F_SETFL, fcntl(c.fd, F_GETFL) | O_NONBLOCK);
    // The server may already have closed it (a refused connection): that
    // is for Pump() to notice, not an error here.
    (void)send(c.fd, start.data(), start.size(), MSG_NOSIGNAL);
    return absl::OkStatus();
  }

  static std::string WholeRequest() {
    return absl::StrCat("GET ", kConsumerPath,
                        " HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n");
  }

  const Mode mode_;
  int port_ = 0;
  bool reconnect_ = false;
  mutable absl::Mutex mu_;
  int reconnects_ ABSL_GUARDED_BY(mu_) = 0;
  std::vector<Connection> connections_ ABSL_GUARDED_BY(mu_);
  std::atomic<bool> stop_{false};
  std::thread pump_;
};

// ---------------------------------------------------------------------------

class JwksHttpHostileTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    signal(SIGPIPE, SIG_IGN);
    auto endpoint = Endpoint::Start(absl::StrCat(
        "max_connections: ", kSlots,
        " max_connections_per_client: ", kPerClient,
        " request_deadline_seconds: ", absl::ToInt64Seconds(kDeadline)));
    ASSERT_TRUE(endpoint.ok()) << endpoint.status();
    endpoint_ = endpoint->release();
  }
  static void TearDownTestSuite() {
    delete endpoint_;
    endpoint_ = nullptr;
  }

  void SetUp() override { ASSERT_NE(endpoint_, nullptr); }

  // GETs from 127.0.0.1 while the tricklers hold on: each must be a 200
  // with the key set within `bound` (a liveness bound, not a measurement).
  static void ExpectServedWhile(const Tricklers& tricklers, int gets,
                                absl::Duration bound) {
    for (int i = 0; i < gets; ++i) {
      absl::Time start = absl::Now();
      absl::StatusOr<HttpResponse> r =
          HttpGet(endpoint_->port(), kConsumerPath, bound);
      absl::Duration took = absl::Now() - start;
      std::cout << "GET " << i << " while " << tricklers.open()
                << " trickling connections are open: "
                << (r.ok() ? absl::StrCat(r->status) : r.status().ToString())
                << " after " << took << "\n";
      ASSERT_TRUE(r.ok()) << r.status();
      EXPECT_EQ(r->status, 200);
      EXPECT_THAT(r->body, HasSubstr("\"keys\""));
      EXPECT_LT(took, bound);
    }
  }

  // Every trickler closed by the server, none given a document. Returns
  // how many the server closed sooner than `sweep_after` (the earliest the
  // sweep could have) from the client's connect, so never later than the
  // server's accept: those were refused at once.
  static int ExpectAllClosedWithoutADocument(
      Tricklers& tricklers, absl::Duration bound,
      absl::Duration sweep_after = kDeadline) {
    absl::Time give_up = absl::Now() + bound;
    while (tricklers.open() > 0 && absl::Now() < give_up) {
      absl::SleepFor(absl::Milliseconds(100));
    }
    tricklers.Stop();
    int before_deadline = 0;
    int still_open = 0;
    for (const Tricklers::Connection& c : tricklers.connections()) {
      if (c.closed == absl::InfiniteFuture()) ++still_open;
      EXPECT_THAT(c.received, Not(HasSubstr("\"keys\""))) << c.source;
      if (c.closed - c.opened < sweep_after) ++before_deadline;
    }
    EXPECT_EQ(still_open, 0)
        << "trickling connections still open after " << bound << " of waiting";
    return before_deadline;
  }

  static inline Endpoint* endpoint_ = nullptr;
};

// 80 trickling connections (more than the 64 slots) from 127.0.0.2: the
// per-client limit lets 8 of them in and closes the rest at once, so
// 127.0.0.1 is answered at once; the 8 are closed at the deadline.
TEST_F(JwksHttpHostileTest, OneSourceCannotTakeTheSlots) {
  constexpr int kCount = kSlots + 16;
  Tricklers tricklers;
  ASSERT_TRUE(tricklers.Open(endpoint_->port(), {"127.0.0.2"}, kCount).ok());
  tricklers.StartPumping();
  absl::SleepFor(absl::Milliseconds(500));  // a few bytes each
  ExpectServedWhile(tricklers, 3, absl::Seconds(20));
  int refused = ExpectAllClosedWithoutADocument(tricklers, absl::Seconds(30));
  // Only the per-client limit closes connections before the deadline; the
  // 8 it let in ran into the deadline.
  EXPECT_EQ(refused, kCount - kPerClient);
  ExpectServedWhile(tricklers, 1, absl::Seconds(20));
}

// One trickling connection from each of 199 addresses (127.0.0.2 to
// 127.0.0.200), three times the slots: the per-client limit does not help,
// the slots fill up, and new connections (127.0.0.1's too) wait in the
// listen queue. With the slots crowded, a connection that has not sent its
// headers within 1 s is closed (the request deadline does the same later),
// a round at a time, until 127.0.0.1 is served. Without either, the 10 s
// inactivity timeout never fires for them and the GET is never answered.
TEST_F(JwksHttpHostileTest, ManySourcesCannotStarveTheEndpoint) {
  std::vector<std::string> sources;
  for (int i = 2; i <= 200; ++i) sources.push_back(absl::StrCat("127.0.0.", i));
  Tricklers tricklers;
  ASSERT_TRUE(
      tricklers
          .Open(endpoint_->port(), sources, static_cast<int>(sources.size()))
          .ok());
  tricklers.StartPumping();
  absl::SleepFor(absl::Milliseconds(500));
  // 199 ahead of it in 64 slots: about four deadlines (2 s, plus up to a
  // quarter for the sweep); 60 s is a liveness bound only.
  ExpectServedWhile(tricklers, 1, absl::Seconds(60));
  int refused =
      ExpectAllClosedWithoutADocument(tricklers, absl::Seconds(60),
                                      /*sweep_after=*/kCrowdedHeaderTime);
  // One each: nothing for the per-client limit to refuse; the sweep closed
  // them all.
  EXPECT_EQ(refused, 0);
  ExpectServedWhile(tricklers, 1, absl::Seconds(20));
}

// Found by an outside attack: clients that keep sending valid requests on
// kept-alive connections held every slot from a few addresses (the
// deadline restarts after each response), and an honest GET waited in the
// listen queue for as long as they liked. Above half the slots, every
// response now closes its connection.
TEST_F(JwksHttpHostileTest, KeptAliveConnectionsCannotHoldTheSlots) {
  // kPerClient from each of enough addresses to take every slot.
  std::vector<std::string> sources;
  for (int i = 0; i < kSlots / kPerClient; ++i) {
    sources.push_back(absl::StrCat("127.0.0.", 2 + i));
  }
  Tricklers holders(Tricklers::kKeepAlive);
  ASSERT_TRUE(holders.Open(endpoint_->port(), sources, kSlots).ok());
  holders.StartPumping();
  absl::SleepFor(absl::Seconds(1));
  ExpectServedWhile(holders, 3, absl::Seconds(20));
  holders.Stop();
  int answered = 0;
  int told_to_close = 0;
  for (const Tricklers::Connection& c : holders.connections()) {
    if (absl::StrContains(c.received, "\"keys\"")) ++answered;
    if (absl::StrContains(absl::AsciiStrToLower(c.received),
                          "connection: close")) {
      ++told_to_close;
    }
  }
  EXPECT_GT(answered, 0);
  EXPECT_GT(told_to_close, 0);
}

// Found by an outside attack: tricklers from many addresses that reconnect
// as soon as they are closed kept the slots full, and about half of the
// honest GETs waited a whole request deadline for one. While more than half
// the slots are taken, a connection now has JwksHttpServer's
// kCrowdedHeaderTime (1 s) to send its request's headers. A signetd of its
// own, with a request deadline of 30 s: only the shorter time can free the
// slots before the bound below.
TEST(JwksHttpCrowdedTest, ReconnectingTricklersDoNotHoldHonestRequests) {
  signal(SIGPIPE, SIG_IGN);
  auto endpoint = Endpoint::Start(absl::StrCat(
      "max_connections: ", kSlots, " max_connections_per_client: ", kPerClient,
      " request_deadline_seconds: 30"));
  ASSERT_TRUE(endpoint.ok()) << endpoint.status();
  std::vector<std::string> sources;
  for (int i = 0; i < 2 * kSlots; ++i) {
    sources.push_back(absl::StrCat("127.0.0.", 2 + i));
  }
  Tricklers tricklers;
  tricklers.ReconnectWhenClosed();
  ASSERT_TRUE((*endpoint)->port() > 0);
  ASSERT_TRUE(
      tricklers
          .Open((*endpoint)->port(), sources, static_cast<int>(sources.size()))
          .ok());
  tricklers.StartPumping();
  absl::SleepFor(absl::Milliseconds(1500));
  for (int i = 0; i < 5; ++i) {
    const absl::Duration bound = absl::Seconds(15);  // half the deadline
    absl::Time start = absl::Now();
    absl::StatusOr<HttpResponse> r =
        HttpGet((*endpoint)->port(), kConsumerPath, bound);
    absl::Duration took = absl::Now() - start;
    std::cout << "GET " << i << " among reconnecting tricklers ("
              << tricklers.reconnects() << " reconnects so far): "
              << (r.ok() ? absl::StrCat(r->status) : r.status().ToString())
              << " after " << took << "\n";
    ASSERT_TRUE(r.ok()) << r.status();
    EXPECT_EQ(r->status, 200);
    EXPECT_LT(took, bound);
  }
  tricklers.Stop();
  EXPECT_GT(tricklers.reconnects(), 0);
  for (const Tricklers::Connection& c : tricklers.connections()) {
    EXPECT_THAT(c.received, Not(HasSubstr("\"keys\""))) << c.source;
  }
}

// ---------------------------------------------------------------------------

// The log lines about bad requests (at most 10 per 10 s, then a summary), in a
// signetd of their own so no other test's lines share the window. Default
// limits.
class JwksHttpLogTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    signal(SIGPIPE, SIG_IGN);
    auto endpoint = Endpoint::Start("");
    ASSERT_TRUE(endpoint.ok()) << endpoint.status();
    endpoint_ = endpoint->release();
  }
  static void TearDownTestSuite() {
    delete endpoint_;
    endpoint_ = nullptr;
  }
  void SetUp() override { ASSERT_NE(endpoint_, nullptr); }

  static inline Endpoint* endpoint_ = nullptr;
};

TEST_F(JwksHttpLogTest, BadRequestLinesAreRateLimitedWithASummary) {
  constexpr int kBad = 60;
  constexpr int kAllowed = 10;  // JwksHttpServer::kThrottledLogLines
  const std::string bad = absl::StrCat(
      "GET ", kConsumerPath, " HTTP/1.1\r\nConnection: close\r\n\r\n");
  absl::Time start = absl::Now();
  for (int i = 0; i < kBad; ++i) {
    absl::StatusOr<HttpResponse> r = HttpExchange(endpoint_->port(), bad);
    ASSERT_TRUE(r.ok()) << r.status();
    ASSERT_EQ(r->status, 400) << r->head;
  }
  absl::Duration sending = absl::Now() - start;
  // The summary comes when the 10 s window has passed, at the next sweep.
  ASSERT_TRUE(endpoint_->signetd()
                  .WaitForOutput("JWKS HTTP: suppressed ", absl::Seconds(30))
                  .ok())
      << endpoint_->signetd().Output();
  // The endpoint still answers, and a good request logs nothing.
  absl::StatusOr<HttpResponse> good = HttpGet(endpoint_->port(), kConsumerPath);
  ASSERT_TRUE(good.ok()) << good.status();
  EXPECT_EQ(good->status, 200);

  int refused_lines = 0;
  int64_t suppressed = 0;
  int summaries = 0;
  int throttled_lines = 0;
  const std::string out = endpoint_->signetd().Output();
  for (absl::string_view line : absl::StrSplit(out, '\n')) {
    size_t at = line.find("JWKS HTTP: ");
    if (at == absl::string_view::npos) continue;
    ++throttled_lines;
    absl::string_view rest = line.substr(at + strlen("JWKS HTTP: "));
    if (absl::ConsumePrefix(&rest, "suppressed ")) {
      int64_t k = 0;
      ASSERT_TRUE(absl::SimpleAtoi(rest.substr(0, rest.find(' ')), &k)) << line;
      EXPECT_THAT(rest, HasSubstr(" similar lines in the last ")) << line;
      suppressed += k;
      ++summaries;
      continue;
    }
    EXPECT_THAT(rest, HasSubstr("refused a request from 127.0.0.1 (400): "
                                "HTTP/1.1 without Host"))
        << line;
    ++refused_lines;
  }
  std::cout << kBad << " bad requests in " << sending << ": " << refused_lines
            << " lines, " << summaries << " summaries of " << suppressed
            << " suppressed\n";
  // Every bad request is accounted for, once: written or summarized.
  EXPECT_EQ(refused_lines + suppressed, kBad) << out;
  // At most kAllowed per 10 s window; the requests took far less than a
  // window, so they touched at most two.
  const int windows = 1 + static_cast<int>(sending / absl::Seconds(10)) + 1;
  EXPECT_GE(refused_lines, kAllowed) << out;
  EXPECT_LE(refused_lines, kAllowed * windows) << out;
  EXPECT_GE(summaries, 1);
  EXPECT_EQ(throttled_lines, refused_lines + summaries) << out;
}

}  // namespace
}  // namespace signet
