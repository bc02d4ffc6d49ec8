// signetd's life as one object in named phases (docs/architecture.md,
// "signetd, phase by phase").
//
//   LoadConfiguration  process hardening, the configuration, the open-file
//                      limit it asks for, the PKCS#11 module and the PIN
//   StartListening     gRPC first, every health entry NOT_SERVING: a load
//                      balancer sees "not ready", never "no keys"
//   OpenHsm            the session pool, retried with backoff while the HSM
//                      is unavailable; CANCELLED when a stop came first
//   OpenAuditLog       the audit checkpoint key, then the audit log, retried
//                      with backoff while it cannot be opened (permission,
//                      disk); CANCELLED when a stop came first
//   LoadScopes         the first reconcile pass: every scope has a checked,
//                      active key
//   StartServing       workers, publication, the HTTP endpoint, the key
//                      manager's loop, the HSM prober, the Signer serves
//   RunUntilStopped    health every second until SIGTERM/SIGINT
//   Stop               the ordered shutdown; the exit code
//
// Run the phases in that order; after one fails, destroy the daemon. The
// members are declared in the order the phases make them, so destruction
// is the reverse: the key manager's loop and the gRPC server stop first
// (the destructor's body), then what they used goes away, last made first
// gone. A phase that loses a race with a stalled HSM may end the process
// itself (std::_Exit) rather than hang: nothing durable is left half done
// then (see Stop and OpenHsm).
//
// Thread-safety: the phases run on one thread (main's), which alone waits
// for the stop signals (they are blocked in every other thread).
#ifndef SIGNET_SERVER_DAEMON_H_
#define SIGNET_SERVER_DAEMON_H_

#include <grpcpp/grpcpp.h>

#include <atomic>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "base/clock.h"
#include "base/wall_clock_anchor.h"
#include "hsm/key_store.h"
#include "hsm/module.h"
#include "hsm/pin.h"
#include "hsm/session_pool.h"
#include "hsm/token_uri.h"
#include "rotation/key_record.pb.h"
#include "server/admin_service.h"
#include "server/audit_keys.h"
#include "server/audit_log.h"
#include "server/caller_tally.h"
#include "server/config.h"
#include "server/connection_acceptor.h"
#include "server/health_monitor.h"
#include "server/health_service.h"
#include "server/hsm_prober.h"
#include "server/jwks_http.h"
#include "server/key_manager.h"
#include "server/one_request_call.h"
#include "server/refusal_summary.h"
#include "server/serving_publisher.h"
#include "server/signer_service.h"
#include "server/unknown_method_service.h"
#include "server/worker_pool.h"
#include "signet/v1/config.pb.h"

namespace signet::server {

struct DaemonOptions {
  std::string config_path;
  // DEVELOPMENT ONLY (signetd's flags of the same names).
  bool insecure_in_process_module = false;
  bool insecure_plaintext = false;
  // Continue the audit log's chain over a current segment that is missing
  // with no rollover under way (AuditLogOptions::accept_missing_segment):
  // an operator's decision, for one start (signetd's
  // --audit_accept_missing_segment).
  bool accept_missing_audit_segment = false;
  // Measure the wall clock from its reading now instead of from the first
  // start of this boot (base/wall_clock_anchor.h): an operator's decision
  // that a clock signetd found set forward is right, for one start
  // (signetd's --accept_wall_clock).
  bool accept_wall_clock = false;
  // The wall clock every part decides by (base/clock.h); null is the
  // system clock. A test runs the daemon in its own process on a
  // base::SimulatedClock, so days of key schedule pass in seconds. Must
  // outlive the daemon.
  const base::Clock* clock = nullptr;
  // The exit code when a stop finds an HSM call stuck (a stalled HSM), or a
  // call stuck on the audit log's disk, and
  // the process leaves at once rather than hang (see Stop): 0 for signetd,
  // whose stop was asked for; a test running the daemon in its own process
  // sets another, so that this counts as a failure.
  int exit_code_if_hsm_stuck = 0;
};

class Daemon {
 public:
  explicit Daemon(DaemonOptions options);
  // Stops the key manager's loop and the gRPC server, then the members go
  // in reverse order of declaration. After Stop() there is nothing left to
  // stop.
  ~Daemon();
  Daemon(const Daemon&) = delete;
  Daemon& operator=(const Daemon&) = delete;

  absl::Status LoadConfiguration();
  absl::Status StartListening();
  absl::Status OpenHsm();
  absl::Status OpenAuditLog();
  absl::Status LoadScopes();
  absl::Status StartServing();
  void RunUntilStopped();
  int Stop();

  // The ports bound (after StartListening, and StartServing for HTTP; 0
  // without an HTTP endpoint): a configured port 0 picks a free one.
  int grpc_port() const;
  int http_port() const;

 private:
  // Ends the gRPC server within `grace` (once): the acceptor stops, health
  // watchers hear NOT_SERVING and then the end, calls a stalled HSM holds
  // are answered before the grace ends.
  void StopServing(absl::Duration grace);
  // StartListening's steps: the gRPC port bound by signetd's own acceptor;
  // the services and the bounds of calls waiting for their request; the
  // gRPC server with its limits, on the acceptor; the refusals counted
  // into the audit log rather than one line each.
  absl::Status BindAcceptor();
  void MakeServices();
  absl::Status BuildGrpcServer(
      std::shared_ptr<grpc::ServerCredentials> credentials);
  void CountRefusals();
  // _Exits (exit_code_if_hsm_stuck) while a checkpoint signature is still in
  // the HSM: its thread uses the key store and the pool.
  void ExitIfACheckpointSignatureIsHeld();
  // Loads the wall-clock anchor beside the audit log (or takes one) into
  // seen_, logging where it comes from. An operator's acceptance of the
  // clock is kept in clock_accepted_ and accepted_anchor_ until
  // OpenAuditLog records it.
  absl::Status AnchorWallClock();
  // Removes the marker that says this run has not stopped (after its stop
  // line is written).
  void RemoveRunMarker();
  // Brings the anchor down to the wall clock when it reads behind the time
  // seen pass (base::ElapsedWallTime::LowerTo), and keeps it.
  void LowerWallClockAnchor();
  // The first reconcile pass over the audit key's scope, before the log
  // opens; its key events, to be written once the log is open.
  absl::StatusOr<std::vector<rotation::KeyEvent>> FirstAuditKeyPass();
  absl::Status StartHttp();
  // What the HSM can do now (server/hsm_prober.h), and the whole replica.
  absl::Status HsmCondition() const;
  ReplicaCondition Sample() const;
  // Health, and the Signer's fast refusal while the HSM cannot sign.
  void UpdateHealth();
  // Logs and audits the counted refusals since the last report; whether
  // there were any.
  bool ReportRefusals();

  const DaemonOptions options_;
  // The one wall clock every part decides by (base/clock.h).
  const base::Clock& clock_;

  // LoadConfiguration
  ConfigOptions config_options_;
  signet::v1::SignetConfig config_;
  hsm::ModuleOptions module_;
  std::unique_ptr<hsm::P11KitConnector> connector_;
  bool in_process_ = false;
  std::optional<hsm::TokenUri> token_uri_;
  std::optional<hsm::Pin> pin_;  // until the pool holds its own copy

  // StartListening
  int max_request_bytes_ = 0;  // the largest legal request
  std::unique_ptr<ConnectionAcceptor> acceptor_;
  std::unique_ptr<RequestWaits> request_waits_;
  std::unique_ptr<SignerService> signer_;
  std::unique_ptr<AdminService> admin_service_;
  CallerTally refused_watches_;
  CallerTally malformed_health_;
  CallerTally oversized_health_;
  std::unique_ptr<HealthService> health_service_;
  UnknownMethodService unknown_methods_;
  std::unique_ptr<grpc::Server> server_;
  bool serving_stopped_ = false;
  std::unique_ptr<HealthMonitor> health_monitor_;
  RefusalSummary refusals_;

  // OpenHsm
  hsm::SessionPoolOptions pool_options_;
  std::unique_ptr<hsm::SessionPool> pool_;
  std::unique_ptr<hsm::Pkcs11KeyStore> store_;

  // LoadConfiguration (AnchorWallClock): the time seen pass, which the
  // wall clock is measured against before a key is destroyed or pruned
  // (base/clock.h); an acceptance of the clock waiting to be audited.
  std::string anchor_path_;
  // Beside the audit log while this run has not written its stop line.
  std::string running_marker_;
  // The run marker was there at start: the previous run did not stop.
  bool previous_run_unstopped_ = false;
  std::string anchor_origin_;  // empty: the boot id could not be read
  std::unique_ptr<base::ElapsedWallTime> seen_;
  std::optional<base::WallClockAnchor> accepted_anchor_;
  std::optional<AuditEvent> clock_accepted_;
  // The oldest audit key the token held before this start, if any: a new
  // audit chain beside it is said loudly (OpenAuditLog).
  std::optional<rotation::KeyRecord> audit_key_made_before_start_;

  // OpenAuditLog
  std::unique_ptr<AuditKeys> audit_keys_;
  std::unique_ptr<AuditLog> audit_;

  // LoadScopes. The publisher is made in StartServing, but declared before
  // the key manager, whose passes it takes, so that it outlives it.
  std::unique_ptr<ServingPublisher> publisher_;
  std::unique_ptr<KeyManager> key_manager_;

  // StartServing
  std::unique_ptr<WorkerPool> workers_;
  std::unique_ptr<JwksHttpServer> http_;
  std::unique_ptr<HsmProber> prober_;
};

}  // namespace signet::server

#endif  // SIGNET_SERVER_DAEMON_H_
