// The answer to a call of a method signetd does not serve.
//
// Why: gRPC 1.51 answers such a call UNIMPLEMENTED with an empty message,
// inside its own code, so a client learned nothing and signetd could not
// count it: a scan of method names left no trace. Registered as the
// server's generic service, this takes every call no other service
// matches, answers UNIMPLEMENTED naming the method and what is served,
// without reading the call's messages, and counts it, by caller, for
// signetd's refusal summaries (README, "Hostile traffic"): a scan of method
// names by a tenant's certificate names that tenant.
//
// Thread-safety: thread-safe; gRPC calls CreateReactor from its threads.
#ifndef SIGNET_SERVER_UNKNOWN_METHOD_SERVICE_H_
#define SIGNET_SERVER_UNKNOWN_METHOD_SERVICE_H_

#include <grpcpp/generic/async_generic_service.h>

#include "server/caller_tally.h"
#include "server/refusal_summary.h"

namespace signet::server {

class UnknownMethodService final : public grpc::CallbackGenericService {
 public:
  grpc::ServerGenericBidiReactor* CreateReactor(
      grpc::GenericCallbackServerContext* context) override;

  // The calls since the last TakeReport(), and who made them
  // (server/caller_tally.h).
  RefusalSummary::Tally TakeReport() { return calls_.TakeReport(); }

 private:
  CallerTally calls_;
};

}  // namespace signet::server

#endif  // SIGNET_SERVER_UNKNOWN_METHOD_SERVICE_H_
