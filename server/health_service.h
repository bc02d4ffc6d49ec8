// The gRPC health service (grpc.health.v1.Health: Check and Watch), signet's
// own instead of gRPC's default one, because the default one lets any client
// with a certificate hold any number of Watch streams: 60,000 of them grew
// signetd from 40 MB to 1.1 GB. Here at most `max_watchers` Watch streams are
// open at once, over every connection, and at most a quarter of them for
// one client certificate (any certificate of the CA reaches health, so one
// must not hold every watch); one more is answered RESOURCE_EXHAUSTED at
// once (and reported through `on_refused`, so it is audited). Check is unary
// and holds nothing. Both are received as streams (server/one_request_call.h),
// so a call whose request never comes is bounded, and a request that does not
// parse is INVALID_ARGUMENT with a message (gRPC's typed handler answers
// UNIMPLEMENTED and nothing else).
//
// Protocol (grpc/grpc doc/health-checking.md): Check answers NOT_FOUND for a
// service it does not know; Watch sends the current status at once
// (SERVICE_UNKNOWN for an unknown service) and every change after, and the
// latest status wins when a client reads slowly (one write in flight per
// stream, so a slow reader holds one response, not a queue).
//
// Thread-safety: thread-safe.
#ifndef SIGNET_SERVER_HEALTH_SERVICE_H_
#define SIGNET_SERVER_HEALTH_SERVICE_H_

#include <cstddef>
#include <functional>
#include <map>
#include <set>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "grpc/health/v1/health.pb.h"
#include "server/one_request_call.h"

namespace signet::server {

class HealthService final : public OneRequestService {
 public:
  enum class Refusal {
    kWatch,      // a Watch over the limits (RESOURCE_EXHAUSTED)
    kMalformed,  // a request that does not parse or never came before the
                 // half-close (INVALID_ARGUMENT)
    kOversized,  // a request over the size limit (RESOURCE_EXHAUSTED)
  };
  // `on_refused` runs (on a gRPC thread, quickly) for each refusal, with
  // the refused call's authentication (its client certificate; may be
  // null), so that they are counted by caller and audited in summaries.
  // `waits` must outlive the service.
  using OnRefused =
      std::function<void(Refusal, const grpc::AuthContext* caller)>;
  HealthService(int max_watchers, RequestWaits* waits, OnRefused on_refused);
  ~HealthService() override;

  // Sets `service`'s status ("" is the whole server) and tells its watchers.
  void Set(const std::string& service, bool serving) ABSL_LOCKS_EXCLUDED(mu_);

  // Every service NOT_SERVING, then every Watch stream ends once that last
  // status is written; later Watches end at once. For the shutdown, before
  // the server's own, so watchers hear NOT_SERVING instead of a cut stream.
  void Shutdown() ABSL_LOCKS_EXCLUDED(mu_);

  // The longest service name a request may carry: "scope/" and a scope name
  // of at most 64 bytes, with room to spare. A longer one is INVALID_ARGUMENT
  // (a malformed request): a Watch would hold it for the stream's life.
  static constexpr size_t kMaxServiceNameBytes = 256;

  // Watch streams a client certificate may hold: a quarter of
  // max_health_watchers; and once half of them are open, fewer than
  // kFewWatches (a load balancer's health checker holds a handful), so a
  // few certificates cannot take every slot.
  static constexpr int kFewWatches = 8;

 private:
  class Checker;
  class Watcher;
  using Status = grpc::health::v1::HealthCheckResponse::ServingStatus;

  Status StatusOf(const std::string& service) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void Forget(Watcher* watcher) ABSL_LOCKS_EXCLUDED(mu_);
  // Parses `caller`'s request; INVALID_ARGUMENT (reported to on_refused)
  // when it does not parse.
  grpc::Status Parse(const grpc::AuthContext* caller,
                     const grpc::ByteBuffer& bytes,
                     grpc::health::v1::HealthCheckRequest* request);
  // Reports `caller`'s refused request to on_refused; returns the answer.
  grpc::Status Refused(const grpc::AuthContext* caller,
                       const absl::Status& status);
  // Check's answer for `service`.
  grpc::Status Check(const std::string& service,
                     grpc::health::v1::HealthCheckResponse* response)
      ABSL_LOCKS_EXCLUDED(mu_);
  // Registers `watcher` and sends it the current status, or ends it
  // (shutting down, or too many watchers).
  void StartWatch(Watcher* watcher) ABSL_LOCKS_EXCLUDED(mu_);

  const int max_watchers_;
  RequestWaits* const waits_;
  const OnRefused on_refused_;
  mutable absl::Mutex mu_;
  std::map<std::string, bool> serving_ ABSL_GUARDED_BY(mu_);
  std::set<Watcher*> watchers_ ABSL_GUARDED_BY(mu_);
  // Open watches by the hash of their client certificate.
  std::map<size_t, int> watchers_by_certificate_ ABSL_GUARDED_BY(mu_);
  bool shut_down_ ABSL_GUARDED_BY(mu_) = false;
};

}  // namespace signet::server

#endif  // SIGNET_SERVER_HEALTH_SERVICE_H_
