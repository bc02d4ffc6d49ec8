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
// Thread-safe: Publish() swaps an immutable snapshot; requests read it.
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

namespace signet::server {

struct JwksHttpOptions {
  std::string listen_address;  // loopback host:port (port 0: any)
  absl::Duration cache_max_age = absl::Minutes(5);
  unsigned connection_limit = 512;
  absl::Duration connection_timeout = absl::Seconds(10);
  size_t connection_memory_limit = 16 * 1024;  // request line + headers
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

  // Answers one request (libmicrohttpd's callback calls this); returns
  // MHD_YES or MHD_NO.
  int Respond(MHD_Connection* connection, const char* url, const char* method);

 private:
  struct Document {
    std::string body;
    std::string content_type;
    std::string etag;  // quoted
  };
  using Snapshot = std::map<std::string, Document, std::less<>>;

  explicit JwksHttpServer(const JwksHttpOptions& options)
      : options_(options) {}
  std::shared_ptr<const Snapshot> Current() const ABSL_LOCKS_EXCLUDED(mu_);

  const JwksHttpOptions options_;
  MHD_Daemon* daemon_ = nullptr;
  int port_ = 0;
  mutable absl::Mutex mu_;
  std::shared_ptr<const Snapshot> snapshot_ ABSL_GUARDED_BY(mu_);
};

}  // namespace signet::server

#endif  // SIGNET_SERVER_JWKS_HTTP_H_
