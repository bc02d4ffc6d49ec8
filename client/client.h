// signet::client::Client: the C++ client of the Signer service
// (proto/signet/v1/signer.proto) for identity providers.
//
// One Client holds one gRPC channel over mutual TLS: the caller is known to
// signetd by its client certificate alone (a `uri:` or `cn:` identity,
// docs/architecture.md, "Scopes, tenants and identities"), and may use only
// its own scopes.
//
// Every call
//   - has one deadline, `ClientOptions.timeout`, for the whole call, retries
//     and back-off included: each attempt gets the time that is left;
//   - is retried, up to `max_attempts` attempts in all, only when it failed
//     with a code that says "try again later":
//       UNAVAILABLE         the connection failed or broke, signetd is
//                           starting, its HSM is unreachable, or its audit
//                           log cannot be written;
//       RESOURCE_EXHAUSTED  signetd's worker queue or this tenant's
//                           concurrency limit is full (back-off is what the
//                           server wants from us then).
//     Everything else (INVALID_ARGUMENT, PERMISSION_DENIED,
//     FAILED_PRECONDITION, DEADLINE_EXCEEDED, ...) is returned at once: the
//     same request would fail the same way. Between attempts the client
//     sleeps BackoffDelay(): exponential from `initial_backoff`, capped at
//     `max_backoff`, with jitter so that many clients that failed together
//     do not come back together. A retried SignJwt may sign twice when the
//     first answer was lost on its way back: both tokens carry the caller's
//     claims and both are in signetd's audit log.
//   - returns signetd's status as absl::Status with the same code and
//     message (FromGrpcStatus). When a call gave up after more than one
//     attempt, the message says how many attempts were made.
//
// Thread-safety: a Client is thread-safe; share one across threads (gRPC
// channels and stubs are). `ClientOptions.on_attempt_failed` is called on
// the calling thread, possibly from several threads at once.
#ifndef SIGNET_CLIENT_CLIENT_H_
#define SIGNET_CLIENT_CLIENT_H_

#include <grpcpp/channel.h>
#include <grpcpp/support/status.h>

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "signet/v1/admin.grpc.pb.h"
#include "signet/v1/signer.grpc.pb.h"

namespace signet::client {

// What an `on_attempt_failed` callback learns about one failed attempt.
struct AttemptFailure {
  absl::string_view method;  // "SignJwt", "GetJwks", ...
  int attempt = 0;           // 1-based
  int max_attempts = 0;
  absl::Status status;      // this attempt's status
  bool will_retry = false;  // false: this status is what the call returns
  absl::Duration backoff;   // the sleep before the next attempt, if any
};

struct ClientOptions {
  // host:port of signetd's gRPC listener. The host name is checked against
  // the server certificate's subjectAltName.
  std::string target = "localhost:7443";
  // PEM files: the CA that issued signetd's server certificate, and this
  // client's certificate (chain) and private key. All three are required.
  std::string ca_file;
  std::string cert_file;
  std::string key_file;
  // The deadline of one whole call, retries included.
  absl::Duration timeout = absl::Seconds(5);
  // Attempts per call, the first one included (1 = never retry).
  int max_attempts = 4;
  // Back-off before retry n (1-based) is drawn from
  // [b/2, b] with b = min(max_backoff, initial_backoff * 2^(n-1)).
  absl::Duration initial_backoff = absl::Milliseconds(100);
  absl::Duration max_backoff = absl::Seconds(2);
  // Called after every failed attempt (for logs and metrics); may be empty.
  std::function<void(const AttemptFailure&)> on_attempt_failed;
};

class Client {
 public:
  // Reads the three PEM files and builds the channel (which connects lazily,
  // on the first call: Create does not talk to signetd). Errors, each naming
  // the file or option:
  //   INVALID_ARGUMENT   an empty target or file name, max_attempts < 1,
  //                      a timeout or back-off that is not positive, a
  //                      file that is not the expected PEM (a certificate
  //                      that OpenSSL cannot parse, a private key that is
  //                      encrypted or cannot be parsed), or a key that is
  //                      not the client certificate's;
  //   NOT_FOUND          a file that does not exist;
  //   PERMISSION_DENIED  a file this process may not read.
  static absl::StatusOr<std::unique_ptr<Client>> Create(
      const ClientOptions& options);

  Client(const Client&) = delete;
  Client& operator=(const Client&) = delete;

  // Signs a JWT with the scope's active key; the server writes the protected
  // header and checks the claims (see signer.proto). INVALID_ARGUMENT names
  // the claims problem; PERMISSION_DENIED for a scope that is not the
  // caller's (or does not exist); FAILED_PRECONDITION for a RAW scope.
  absl::StatusOr<v1::SignJwtResponse> SignJwt(absl::string_view scope,
                                              absl::string_view claims_json);

  // Many claims sets in one RPC (at most the server's batch limit, 256 by
  // default). The call's status is about the batch as a whole; each item
  // carries its own code (0 = OK) and message.
  absl::StatusOr<v1::SignJwtBatchResponse> SignJwtBatch(
      absl::string_view scope, const std::vector<std::string>& claims_json);

  // Raw signing, RAW scopes only. SignPayload: the server hashes `payload`
  // with the scope's hash. SignDigest: `digest` must have exactly the hash
  // length of the scope's algorithm (32 bytes for ES256), else
  // INVALID_ARGUMENT. ECDSA signatures come back as r||s.
  absl::StatusOr<v1::SignResponse> SignPayload(absl::string_view scope,
                                               absl::string_view payload);
  absl::StatusOr<v1::SignResponse> SignDigest(absl::string_view scope,
                                              absl::string_view digest);

  // A JWT scope's JWK set (FAILED_PRECONDITION for a RAW scope).
  absl::StatusOr<v1::GetJwksResponse> GetJwks(absl::string_view scope);
  // A RAW scope's public keys as SPKI PEM (FAILED_PRECONDITION for a JWT
  // scope).
  absl::StatusOr<v1::GetPublicKeysResponse> GetPublicKeys(
      absl::string_view scope);

  // The Admin service (proto/signet/v1/admin.proto), for the configured
  // admins only (PERMISSION_DENIED otherwise). RotateKey and RevokeKey carry
  // the request's request_id, so a retried attempt is applied once.
  absl::StatusOr<v1::ListScopesResponse> ListScopes();
  absl::StatusOr<v1::ListKeysResponse> ListKeys(absl::string_view scope);
  absl::StatusOr<v1::RotateKeyResponse> RotateKey(
      const v1::RotateKeyRequest& request);
  absl::StatusOr<v1::RevokeKeyResponse> RevokeKey(
      const v1::RevokeKeyRequest& request);
  absl::StatusOr<v1::GetStatusResponse> GetStatus();

  const ClientOptions& options() const { return options_; }

 private:
  Client(ClientOptions options, std::shared_ptr<grpc::Channel> channel);

  // Runs `rpc` (one attempt, given its context) with the deadline and retry
  // policy described above.
  absl::Status Call(
      absl::string_view method,
      const std::function<grpc::Status(grpc::ClientContext*)>& rpc);

  const ClientOptions options_;
  std::shared_ptr<grpc::Channel> channel_;
  // One RPC through Call(): the response of the last attempt.
  template <typename Stub, typename Request, typename Response>
  absl::StatusOr<Response> Unary(Stub* stub, absl::string_view method,
                                 const Request& request,
                                 grpc::Status (Stub::*rpc)(grpc::ClientContext*,
                                                           const Request&,
                                                           Response*));

  std::unique_ptr<v1::Signer::Stub> stub_;
  std::unique_ptr<v1::Admin::Stub> admin_stub_;
};

// grpc::Status -> absl::Status with the same code and message: the one place
// this client converts.
absl::Status FromGrpcStatus(const grpc::Status& status);

// Whether a call that failed with `code` is worth another attempt
// (UNAVAILABLE, RESOURCE_EXHAUSTED).
bool IsRetryable(absl::StatusCode code);

// The sleep before retry `retry` (1 for the sleep after the first attempt):
// b = min(max_backoff, initial_backoff * 2^(retry-1)), then b * (1 - u/2),
// i.e. a point of [b/2, b] picked by `u` in [0, 1) (values outside are
// clamped). A pure function, so the policy is testable without a clock or a
// random source; the client draws `u` uniformly.
absl::Duration BackoffDelay(int retry, absl::Duration initial_backoff,
                            absl::Duration max_backoff, double u);

}  // namespace signet::client

#endif  // SIGNET_CLIENT_CLIENT_H_
