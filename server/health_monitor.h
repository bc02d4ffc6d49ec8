// What this replica can do right now, as the gRPC health service tells it:
// the overall entry "" and one "scope/<name>" per scope.
//
// The overall entry is SERVING only while the HSM signs (not unreachable, not
// stalled), the audit log can be written (signing is refused otherwise: fail
// closed) and the gRPC listener accepts new connections. A scope's entry is
// SERVING only while the overall one is and the scope has a key that may
// sign now. signetd samples its condition every second and hands it to
// Update(); every change of an entry's own condition, and of its reason, is
// one log line, so an operator sees why a load balancer stopped sending
// traffic (a reason's numbers, such as how long a stall has lasted, are not
// a change).
//
// Thread-compatible: one thread (signetd's main loop) calls it.
#ifndef SIGNET_SERVER_HEALTH_MONITOR_H_
#define SIGNET_SERVER_HEALTH_MONITOR_H_

#include <functional>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"

namespace signet::server {

// One sample of the replica's condition: OK, or why it cannot do its part.
struct ReplicaCondition {
  absl::Status hsm;
  absl::Status audit;
  absl::Status listener;
  // Per scope: OK, or why the scope cannot sign now.
  std::map<std::string, absl::Status> scopes;
};

class HealthMonitor {
 public:
  // `set` changes one health entry ("" or "scope/<name>").
  using Setter = std::function<void(const std::string& service, bool serving)>;
  HealthMonitor(std::vector<std::string> scopes, Setter set);

  // Sets every entry from `condition`, logging each change: of an entry,
  // and of what keeps the replica NOT_SERVING (the HSM, the audit log, the
  // listener, or SetAllNotServing's reason), so the last line always says
  // why.
  void Update(const ReplicaCondition& condition);

  // Every entry NOT_SERVING, with one log line saying why (start-up,
  // shutdown). Update() brings them back.
  void SetAllNotServing(absl::string_view why);

  // The overall entry as last set.
  bool serving() const { return overall_.value_or(false); }

 private:
  // The overall condition's reason (the HSM's, else the audit log's, else
  // the listener's), or OK; `cause` is its message with numbers left out
  // ("" when OK): what a new line is logged for.
  static absl::Status Overall(const ReplicaCondition& condition,
                              std::string* cause);

  const std::vector<std::string> scopes_;
  const Setter set_;
  std::optional<bool> overall_;  // unset until the first Update
  std::string overall_cause_;    // what made it NOT_SERVING, as logged
  // The scope's own condition, as logged: "" when it can sign, else its
  // reason with numbers left out.
  std::map<std::string, std::string> scope_reason_;
  std::map<std::string, bool> scope_serving_;  // what its entry says
};

}  // namespace signet::server

#endif  // SIGNET_SERVER_HEALTH_MONITOR_H_
