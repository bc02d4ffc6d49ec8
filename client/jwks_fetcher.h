// Fetching JWK sets for the token verifier (client/verifier.h).
//
// `JwksSource` is the role: "give me the document at this URL, and how long
// I may keep it". `CurlJwksSource` is the mechanism, libcurl; unit tests
// serve local key sets through their own JwksSource.
//
// Transport policy (CurlJwksSource, and CheckJwksUrl for every source):
//  - https:// always, with peer and host name verification on (there is no
//    option to turn them off); `ca_file` adds a private CA bundle
//    (CURLOPT_CAINFO), otherwise the system's trust store is used;
//  - http:// only for loopback hosts: 127.0.0.0/8, ::1 and "localhost"
//    (a key set fetched in clear text from anywhere else could be swapped
//    on the way);
//  - no redirects are followed (a redirect could leave those rules behind),
//    no user:password in the URL, no other scheme;
//  - the whole transfer has a timeout, the body a size cap.
//
// Caching is the verifier's: a source only reports the response's
// Cache-Control header, and ParseCacheControl reads it.
#ifndef SIGNET_CLIENT_JWKS_FETCHER_H_
#define SIGNET_CLIENT_JWKS_FETCHER_H_

#include <cstddef>
#include <memory>
#include <optional>
#include <string>
#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"

namespace signet {

// A fetched document (always an HTTP 200 answer).
struct JwksDocument {
  std::string body;
  // The Cache-Control header's value ("" when absent; several headers are
  // joined with ", " as RFC 9110 section 5.3 allows).
  std::string cache_control;
};

// The role. Implementations must be thread-safe: the verifier may fetch
// the sets of several issuers at once.
class JwksSource {
 public:
  virtual ~JwksSource() = default;
  // UNAVAILABLE when the document cannot be had (connection, TLS, timeout,
  // size cap, an HTTP status other than 200); INVALID_ARGUMENT for a URL
  // that CheckJwksUrl refuses. Messages name the URL.
  virtual absl::StatusOr<JwksDocument> Fetch(const std::string& url) = 0;
};

// OK for https:// URLs and for http:// URLs whose host is loopback (see
// above); INVALID_ARGUMENT saying why for anything else, including a URL
// libcurl cannot parse or one with credentials in it.
absl::Status CheckJwksUrl(absl::string_view url);

// How long a response may be cached, from its Cache-Control value
// (RFC 9111 section 5.2.2): max-age=N gives N seconds; "no-store",
// "no-cache", max-age=0, a malformed or repeated max-age, or no max-age at
// all give zero (do not cache). Directive names are case-insensitive;
// other directives (public, private, must-revalidate, ...) are ignored.
absl::Duration ParseCacheControl(absl::string_view cache_control);

struct CurlJwksSourceOptions {
  // PEM bundle of the CAs to trust for https:// (CURLOPT_CAINFO); empty:
  // the system's store.
  std::string ca_file;
  // The whole transfer, connection included.
  absl::Duration timeout = absl::Seconds(10);
  // Largest body accepted; a bigger one fails the fetch.
  size_t max_body_bytes = 256 * 1024;
};

// libcurl. Each Fetch uses its own easy handle, so Fetch is thread-safe.
class CurlJwksSource final : public JwksSource {
 public:
  // INVALID_ARGUMENT for a non-positive timeout or size cap; NOT_FOUND /
  // PERMISSION_DENIED for a ca_file that cannot be read; INTERNAL if
  // libcurl cannot be initialised.
  static absl::StatusOr<std::unique_ptr<CurlJwksSource>> Create(
      const CurlJwksSourceOptions& options);

  absl::StatusOr<JwksDocument> Fetch(const std::string& url) override;

 private:
  explicit CurlJwksSource(CurlJwksSourceOptions options)
      : options_(std::move(options)) {}
  const CurlJwksSourceOptions options_;
};

}  // namespace signet

#endif  // SIGNET_CLIENT_JWKS_FETCHER_H_
