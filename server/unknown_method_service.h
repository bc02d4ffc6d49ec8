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

namespace signet::server {

class UnknownMethodService final : public grpc::CallbackGenericService {
 public:
  grpc::ServerGenericBidiReactor* CreateReactor(
      grpc::GenericCallbackServerContext* context) override;

  // Calls answered since the start.
  uint64_t calls() const { return calls_.load(); }

 private:
  std::atomic<uint64_t> calls_{0};
};

}  // namespace signet::server

#endif  // SIGNET_SERVER_UNKNOWN_METHOD_SERVICE_H_
