// The HTTP endpoint relying parties fetch public keys from (libmicrohttpd:
// connection limits, timeouts and epoll we would not write better by hand).
//
// Serves the PublishedDocuments snapshot: GET and HEAD only (405 with Allow
// otherwise), exact path matching on the raw URL (no percent-decoding, so
// "..", "%2e%2e" and encoded slashes are simply unknown paths: 404),
// Cache-Control max-age, a strong ETag and 304 on If-None-Match.
//
// Hostile clients. When this endpoint stops answering, relying
// parties' caches expire and every login fails, so:
//  - Connection slots (connection_limit; beyond it new connections wait in
//    the kernel's listen queue) and a per-client-address limit (beyond it
//    a new connection from that address is closed at once).
//  - A whole-request deadline. libmicrohttpd 0.9.75 has only an inactivity
//    timeout, which a client trickling one byte at a time never reaches;
//    here each connection carries a deadline, set at accept and again
//    whenever a response has been sent, by which its next request must be
//    received and answered. A sweep closes (shutdown(2)) connections past
//    it, so trickling clients free their slots.
//  - Slow requests cannot hold slots under pressure either: while more than
//    half the slots are taken, a connection must have sent its request's
//    headers within kCrowdedHeaderTime of its accept (or of its previous
//    response), or the sweep closes it. Honest clients send them in
//    milliseconds; tricklers that reconnect at once made honest requests
//    wait a whole request deadline (10 s) for a slot.
//  - Keep-alive cannot hold slots under pressure: while more than half the
//    slots are taken, every response says "Connection: close", so a client
//    that keeps sending valid requests on one connection cannot keep it
//    (that held every slot from 4 addresses: the deadline restarts after
//    each response). Its next request takes a new connection, which the
//    per-client limit and the deadline bound; an honest client pays one
//    reconnect.
//  - Malformed requests get a 4xx, never a dropped connection: 400 for a
//    NUL byte in the request target (libmicrohttpd 0.9.75 would cut the
//    path at it), for content on a GET or HEAD (RFC 9110 9.3.1, 9.3.2),
//    for an HTTP/1.1 request without exactly one Host (RFC 9112 section
//    3.2); libmicrohttpd itself answers 400, 414, 431 and 505. Header
//    lines are still cut at a NUL byte by libmicrohttpd; no header value
//    selects a document, so that cannot serve one by another spelling.
//  - Lines about bad requests, deadline closes and libmicrohttpd's own
//    messages are rate-limited ("JWKS HTTP: " prefix; at most
//    kThrottledLogLines per kThrottledLogWindow, then one "suppressed K
//    similar lines" summary), so a flood of garbage is not a flood of logs.
//
// TLS (GnuTLS inside libmicrohttpd, TLS 1.2 and 1.3 only) when a
// certificate and key are given; plain HTTP is for loopback (config.cc
// refuses anything else). The key is signet's own transport key, never a
// signing key.
//
// Thread-safe: Publish() swaps an immutable snapshot; requests read it.
// Each document's response (body, Content-Type, ETag, Cache-Control) is
// built once per snapshot and shared by every request, so a GET copies
// nothing. The deadline costs a request one clock read and one atomic
// store; the sweep's lock is taken per connection, not per request.
#ifndef SIGNET_SERVER_JWKS_HTTP_H_
#define SIGNET_SERVER_JWKS_HTTP_H_

#include <atomic>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "base/throttled_log.h"
#include "server/publication.h"

struct MHD_Daemon;
struct MHD_Connection;
struct MHD_Response;

namespace signet::server {

struct JwksHttpOptions {
  std::string listen_address;  // loopback host:port (port 0: any)
  absl::Duration cache_max_age = absl::Minutes(5);
  // Open connections (libmicrohttpd's slots), idle keep-alive ones too.
  unsigned connection_limit = 4096;
  // Open connections from one client address (0: no such limit).
  unsigned per_client_connection_limit = 1024;
  // From accept, or from the end of the previous response on a kept-alive
  // connection, to the end of the next response.
  absl::Duration request_deadline = absl::Seconds(10);
  // Inactivity timeout (libmicrohttpd's; whole seconds).
  absl::Duration connection_timeout = absl::Seconds(10);
  size_t connection_memory_limit = 16 * 1024;  // request line + headers
  // Threads answering requests (libmicrohttpd's thread pool).
  unsigned threads = 1;
  // PEM; both or neither. The key buffer is zeroed once the daemon has
  // loaded it.
  std::string tls_cert_pem;
  std::string tls_key_pem;
};

class JwksHttpServer {
 public:
  // Rate limit of the "JWKS HTTP: " lines (see above).
  static constexpr int kThrottledLogLines = 10;
  static constexpr absl::Duration kThrottledLogWindow = absl::Seconds(10);
  // While more than half the slots are taken: the time a connection has to
  // send its request's headers (see above).
  static constexpr absl::Duration kCrowdedHeaderTime = absl::Seconds(1);

  // Starts listening. INVALID_ARGUMENT for a bad address or a zero
  // connection limit or deadline, UNAVAILABLE when it cannot bind. Raises
  // the soft RLIMIT_NOFILE (never above the hard one) when it is too low
  // for connection_limit, and warns when the hard one is.
  static absl::StatusOr<std::unique_ptr<JwksHttpServer>> Start(
      const JwksHttpOptions& options);
  ~JwksHttpServer();

  // Replaces what is served (built when key state changes).
  void Publish(const PublishedDocuments& documents) ABSL_LOCKS_EXCLUDED(mu_);

  int port() const { return port_; }
  bool tls() const { return tls_; }

 private:
  friend struct MhdCallbacks;  // libmicrohttpd's C callbacks, in the .cc

  // One open connection, from libmicrohttpd's accept to its close
  // notification (so fd is valid while it is in connections_).
  struct Tracked {
    int fd = -1;
    // base::MonotonicNow() in nanoseconds; INT64_MAX once closed by the
    // sweep.
    std::atomic<int64_t> deadline_ns{0};
    // When its request's headers are due if slots are scarce; INT64_MAX
    // once they are in.
    std::atomic<int64_t> headers_due_ns{0};
  };

  // One document, ready to queue on any number of connections: 200 with
  // the body, and 304 without it (same ETag and Cache-Control).
  struct Document {
    Document() = default;
    Document(const Document&) = delete;
    Document& operator=(const Document&) = delete;
    ~Document();
    std::string etag;  // quoted
    MHD_Response* ok = nullptr;
    MHD_Response* not_modified = nullptr;
    // The same with "Connection: close", for when slots are scarce.
    MHD_Response* ok_close = nullptr;
    MHD_Response* not_modified_close = nullptr;
  };
  using Snapshot =
      std::map<std::string, std::unique_ptr<Document>, std::less<>>;

  explicit JwksHttpServer(const JwksHttpOptions& options);

  std::shared_ptr<const Snapshot> Current() const ABSL_LOCKS_EXCLUDED(mu_);

  // The first call for a request, once its headers are in (nothing of a
  // body read): refusals are queued here, before any body. Returns MHD_YES
  // or MHD_NO.
  int CheckRequest(MHD_Connection* connection, const char* method,
                   const char* version, const char* target_end);
  // The second call (a GET or HEAD without content): the document.
  int Respond(MHD_Connection* connection, const char* url);
  // 400 (or another status) with a throttled log line naming the client.
  int Refuse(MHD_Connection* connection, unsigned int status,
             absl::string_view reason);

  void Track(MHD_Connection* connection, void** socket_context)
      ABSL_LOCKS_EXCLUDED(connections_mu_);
  void Untrack(void* socket_context) ABSL_LOCKS_EXCLUDED(connections_mu_);
  void Rearm(MHD_Connection* connection) const;
  // The request's headers are in (the handler's first call).
  void HeadersIn(MHD_Connection* connection) const;
  // More than half the slots are taken: responses close their connection.
  bool Crowded() const {
    return open_connections_.load(std::memory_order_relaxed) >
           options_.connection_limit / 2;
  }
  // Closes connections past their deadline until the destructor says stop.
  void SweepLoop() ABSL_LOCKS_EXCLUDED(connections_mu_);

  JwksHttpOptions options_;  // tls_key_pem cleared once started
  MHD_Daemon* daemon_ = nullptr;
  int port_ = 0;
  bool tls_ = false;
  int64_t deadline_ns_ = 0;  // options_.request_deadline
  int64_t headers_ns_ = 0;   // kCrowdedHeaderTime, at most the deadline
  mutable absl::Mutex mu_;
  std::shared_ptr<const Snapshot> snapshot_ ABSL_GUARDED_BY(mu_);

  std::unique_ptr<log::ThrottledLog> log_;
  std::atomic<unsigned> open_connections_{0};
  absl::Mutex connections_mu_;
  absl::flat_hash_map<const Tracked*, std::unique_ptr<Tracked>> connections_
      ABSL_GUARDED_BY(connections_mu_);
  bool stopping_ ABSL_GUARDED_BY(connections_mu_) = false;
  std::thread sweeper_;
};

}  // namespace signet::server

#endif  // SIGNET_SERVER_JWKS_HTTP_H_
