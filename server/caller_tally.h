// Refusals counted by caller, for signetd's refusal summaries
// (server/refusal_summary.h): floods are summarised rather than audited one
// by one, but a summary still says whose calls they were, so a tenant's
// certificate scanning method names or sending malformed health requests
// is named in the audit log ("by \"uri:spiffe://…\" (12), unidentified
// (3)").
//
// Thread-safety: thread-safe; Count from any thread (gRPC's), TakeReport
// from one (signetd's health loop).
#ifndef SIGNET_SERVER_CALLER_TALLY_H_
#define SIGNET_SERVER_CALLER_TALLY_H_

#include <grpcpp/grpcpp.h>

#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "server/refusal_summary.h"

namespace signet::server {

class CallerTally {
 public:
  // Counts one refused call of the client whose certificate `auth` carries
  // (null or no certificate: "unidentified"). Cheap for a certificate seen
  // since the last report: its identity is parsed once per report.
  void Count(const grpc::AuthContext* auth) ABSL_LOCKS_EXCLUDED(mu_);

  // The calls since the last TakeReport(), and who made them, most calls
  // first, from one snapshot. A caller is the identity its client
  // certificate gives (server/identity.h), or "unidentified" (no
  // certificate, or one that identifies nobody). At most kMaxCallers
  // certificates are told apart in one report; the calls of the rest are
  // "N by other callers".
  RefusalSummary::Tally TakeReport() ABSL_LOCKS_EXCLUDED(mu_);

  static constexpr size_t kMaxCallers = 16;

 private:
  struct Caller {
    std::string identity;  // quoted, or "unidentified"
    uint64_t calls = 0;
  };

  absl::Mutex mu_;
  // By client certificate (PEM; "" for none).
  std::map<std::string, Caller, std::less<>> callers_ ABSL_GUARDED_BY(mu_);
  uint64_t other_calls_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t unreported_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace signet::server

#endif  // SIGNET_SERVER_CALLER_TALLY_H_
