// The HTTP endpoint relying parties fetch public keys from (libmicrohttpd:
// connection limits, timeouts and epoll we would not write better by hand).
//
// Serves the PublishedDocuments snapshot: GET and HEAD only (405 with Allow
// otherwise), exact path matching on the raw URL (no percent-decoding, so
// "..", "%2e%2e" and encoded slashes are simply unknown paths: 404),
// Cache-Control max-age, a strong ETag and 304 on If-None-Match. Request
// headers and URIs are bounded by a per-connection memory limit; slow
// clients by a connection timeout and a connection limit.
//
// TLS (GnuTLS inside libmicrohttpd, TLS 1.2 and 1.3 only) when a
// certificate and key are given; plain HTTP is for loopback (config.cc
// refuses anything else). The key is signet's own transport key, never a
// signing key.
//
// Thread-safe: Publish() swaps an immutable snapshot; requests read it.
// Each document's response (body, Content-Type, ETag, Cache-Control) is
// built once per snapshot and shared by every request, so a GET copies
// nothing.
#ifndef SIGNET_SERVER_JWKS_HTTP_H_
#define SIGNET_SERVER_JWKS_HTTP_H_

#include <map>
#include <memory>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "server/publication.h"

struct MHD_Daemon;
struct MHD_Connection;
struct MHD_Response;

namespace signet::server {

struct JwksHttpOptions {
  std::string listen_address;  // loopback host:port (port 0: any)
  absl::Duration cache_max_age = absl::Minutes(5);
  unsigned connection_limit = 512;
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
  // Starts listening. INVALID_ARGUMENT for a bad address, UNAVAILABLE when
  // it cannot bind.
  static absl::StatusOr<std::unique_ptr<JwksHttpServer>> Start(
      const JwksHttpOptions& options);
  ~JwksHttpServer();

  // Replaces what is served (built when key state changes).
  void Publish(const PublishedDocuments& documents) ABSL_LOCKS_EXCLUDED(mu_);

  int port() const { return port_; }
  bool tls() const { return tls_; }

  // Answers one request (libmicrohttpd's callback calls this); returns
  // MHD_YES or MHD_NO.
  int Respond(MHD_Connection* connection, const char* url, const char* method);

 private:
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
  };
  using Snapshot =
      std::map<std::string, std::unique_ptr<Document>, std::less<>>;

  explicit JwksHttpServer(const JwksHttpOptions& options)
      : options_(options) {}
  std::shared_ptr<const Snapshot> Current() const ABSL_LOCKS_EXCLUDED(mu_);

  JwksHttpOptions options_;  // tls_key_pem cleared once started
  MHD_Daemon* daemon_ = nullptr;
  int port_ = 0;
  bool tls_ = false;
  mutable absl::Mutex mu_;
  std::shared_ptr<const Snapshot> snapshot_ ABSL_GUARDED_BY(mu_);
};

}  // namespace signet::server

#endif  // SIGNET_SERVER_JWKS_HTTP_H_
