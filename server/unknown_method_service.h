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

#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "server/refusal_summary.h"

namespace signet::server {

class UnknownMethodService final : public grpc::CallbackGenericService {
 public:
  grpc::ServerGenericBidiReactor* CreateReactor(
      grpc::GenericCallbackServerContext* context) override;

  // The calls since the last TakeReport(), and who made them, most calls
  // first: "by \"uri:spiffe://…\" (12), unidentified (3)", from one
  // snapshot. A caller is the identity its client certificate gives
  // (server/identity.h), or "unidentified" (no certificate, or one that
  // identifies nobody). At most kMaxCallers certificates are told apart in
  // one report; the calls of the rest are "N by other callers".
  RefusalSummary::Tally TakeReport() ABSL_LOCKS_EXCLUDED(mu_);

  static constexpr size_t kMaxCallers = 16;

 private:
  struct Caller {
    std::string identity;  // quoted, or "unidentified"
    uint64_t calls = 0;
  };

  absl::Mutex mu_;
  // By client certificate (PEM; "" for none): its identity is read once per
  // report, not once per call.
  std::map<std::string, Caller, std::less<>> callers_ ABSL_GUARDED_BY(mu_);
  uint64_t other_calls_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t unreported_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace signet::server

#endif  // SIGNET_SERVER_UNKNOWN_METHOD_SERVICE_H_
