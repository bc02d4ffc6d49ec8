// The answer to a call of a method signetd does not serve.
//
// Why: gRPC 1.51 answers such a call UNIMPLEMENTED with an empty message,
// inside its own code, so a client learned nothing and signetd could not
// count it: a scan of method names left no trace. Registered as the
// server's generic service, this takes every call no other service
// matches, answers UNIMPLEMENTED naming the method and what is served,
// without reading the call's messages, and counts it for signetd's
// refusal summaries (README, "Hostile traffic").
//
// Thread-safety: thread-safe; gRPC calls CreateReactor from its threads.
#ifndef SIGNET_SERVER_UNKNOWN_METHOD_SERVICE_H_
#define SIGNET_SERVER_UNKNOWN_METHOD_SERVICE_H_

#include <grpcpp/generic/async_generic_service.h>

#include <atomic>
#include <cstdint>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"

namespace signet::server {

class UnknownMethodService final : public grpc::CallbackGenericService {
 public:
  grpc::ServerGenericBidiReactor* CreateReactor(
      grpc::GenericCallbackServerContext* context) override;

  // Calls answered since the start, and the method the last one named
  // (quoted and cut short).
  uint64_t calls() const { return calls_.load(); }
  std::string last_method() const ABSL_LOCKS_EXCLUDED(mu_);

 private:
  std::atomic<uint64_t> calls_{0};
  mutable absl::Mutex mu_;
  std::string last_method_ ABSL_GUARDED_BY(mu_);
};

}  // namespace signet::server

#endif  // SIGNET_SERVER_UNKNOWN_METHOD_SERVICE_H_
