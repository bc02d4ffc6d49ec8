// signetd: the signing service.
//
// Today it does the HSM part of the service: it opens the token through the
// configured PKCS#11 module (p11-kit-client.so behind `p11-kit server` by
// default), makes sure every configured scope has an ACTIVE key (creating
// one on first run), checks every key before use, prints each scope's kid
// and public key, and serves the gRPC health service (overall and one entry
// per scope) plus server reflection. The signing RPCs come with issue #4.
#include <signal.h>

#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/health_check_service_interface.h>

#include <cstdio>
#include <iostream>
#include <memory>
#include <cstdlib>
#include <map>
#include <string>
#include <thread>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/status/status.h"
#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "hsm/key_store.h"
#include "hsm/module.h"
#include "hsm/pin.h"
#include "hsm/session_pool.h"
#include "hsm/token_uri.h"
#include "rotation/scope_keys.h"
#include "server/config.h"
#include "server/hardening.h"
#include "server/log.h"

ABSL_FLAG(std::string, config, "",
          "Path of the configuration file (text format of "
          "signet.v1.SignetConfig, proto/signet/v1/config.proto).");
ABSL_FLAG(bool, insecure_in_process_module, false,
          "DEVELOPMENT ONLY: allow a PKCS#11 module other than "
          "p11-kit-client.so, loaded into signetd's own address space, where "
          "key material could end up in a core dump.");
ABSL_FLAG(bool, log_json, false, "Write logs as JSON lines.");

namespace signet::server {
namespace {

using signet::v1::SignetConfig;

constexpr char kScopeHealthPrefix[] = "scope/";
// A probe call that has not returned after this long means a stalled HSM.
constexpr absl::Duration kStalledCallThreshold = absl::Seconds(3);

int Fail(const absl::Status& status) {
  SIGNET_LOG_ERROR("signetd cannot start: {}", status.ToString());
  return 1;
}

// Waits up to `timeout` for SIGINT/SIGTERM (blocked in every thread).
bool StopRequested(absl::Duration timeout) {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGTERM);
  struct timespec ts = absl::ToTimespec(timeout);
  int sig = sigtimedwait(&set, nullptr, &ts);
  if (sig == SIGINT || sig == SIGTERM) {
    SIGNET_LOG_INFO("received {}, stopping", sig == SIGINT ? "SIGINT" : "SIGTERM");
    return true;
  }
  return false;
}

std::string ClassName(signet::v1::AudienceClass c) {
  return signet::v1::AudienceClass_Name(c);
}

// A cheap call through the boundary: is the HSM answering?
absl::Status ProbeHsm(hsm::SessionPool& pool) {
  absl::StatusOr<hsm::SessionPool::Lease> lease =
      pool.Acquire(absl::Now() + absl::Seconds(2));
  if (!lease.ok()) return lease.status();
  CK_TOKEN_INFO info;
  return lease->Check(lease->api().GetTokenInfo(lease->connection().slot(),
                                                &info),
                      "C_GetTokenInfo");
}

int Run() {
  // Before any thread exists: every thread inherits the blocked mask, so
  // only the main loop's sigtimedwait sees SIGINT/SIGTERM.
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGINT);
  sigaddset(&stop_signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);

  absl::Status hardened = HardenProcess();
  if (!hardened.ok()) return Fail(hardened);

  const std::string config_path = absl::GetFlag(FLAGS_config);
  if (config_path.empty()) {
    return Fail(absl::InvalidArgumentError("--config is required"));
  }
  absl::StatusOr<SignetConfig> config = LoadConfigFile(config_path);
  if (!config.ok()) return Fail(config.status());
  const signet::v1::HsmConfig& hsm_config = config->hsm();

  hsm::ModuleOptions module;
  module.module_path = hsm_config.module_path();
  module.p11_kit_server_address = hsm_config.p11_kit_server_address();
  module.insecure_in_process_module =
      absl::GetFlag(FLAGS_insecure_in_process_module);
  absl::StatusOr<std::unique_ptr<hsm::P11KitConnector>> connector =
      hsm::P11KitConnector::Create(module);
  if (!connector.ok()) return Fail(connector.status());
  const bool in_process = (*connector)->in_process();
  if (in_process) {
    SIGNET_LOG_WARN(
        "INSECURE: PKCS#11 module {} is loaded INTO signetd "
        "(--insecure_in_process_module). Key material may be mapped into "
        "this process and a memory dump could contain it. Development only.",
        module.module_path);
  }
  absl::StatusOr<hsm::TokenUri> token_uri =
      hsm::TokenUri::Parse(hsm_config.token_uri());
  if (!token_uri.ok()) return Fail(token_uri.status());
  absl::StatusOr<hsm::Pin> pin = hsm_config.pin_file().empty()
                                     ? hsm::Pin::FromEnv(hsm_config.pin_env())
                                     : hsm::Pin::FromFile(hsm_config.pin_file());
  if (!pin.ok()) return Fail(pin.status());

  // gRPC first, NOT_SERVING until the HSM is reachable and every scope has
  // a checked key: a load balancer sees "not ready", never "no keys".
  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  int bound_port = 0;
  builder.AddListeningPort(config->grpc_listen_address(),
                           grpc::InsecureServerCredentials(), &bound_port);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (server == nullptr || bound_port == 0) {
    return Fail(absl::UnavailableError(absl::StrCat(
        "cannot listen on ", config->grpc_listen_address())));
  }
  grpc::HealthCheckServiceInterface* health = server->GetHealthCheckService();
  auto set_health = [&](bool serving) {
    health->SetServingStatus(serving);
    for (const auto& scope : config->scopes()) {
      health->SetServingStatus(kScopeHealthPrefix + scope.name(), serving);
    }
  };
  set_health(false);
  const std::string listen_host = config->grpc_listen_address().substr(
      0, config->grpc_listen_address().rfind(':'));
  SIGNET_LOG_INFO("gRPC (health, reflection) listening on {}:{} (plain text, "
                  "loopback only until mTLS)",
                  listen_host, bound_port);

  hsm::SessionPoolOptions pool_options;
  pool_options.connections = static_cast<int>(hsm_config.connections());
  pool_options.sessions_per_connection =
      static_cast<int>(hsm_config.sessions_per_connection());
  std::unique_ptr<hsm::SessionPool> pool;
  absl::Duration backoff = absl::Milliseconds(500);
  for (;;) {
    absl::StatusOr<std::unique_ptr<hsm::SessionPool>> created =
        hsm::SessionPool::Create(std::move(*connector), *token_uri,
                                 hsm::Pin::FromBytes(absl::string_view(
                                     reinterpret_cast<const char*>(pin->data()),
                                     pin->size())),
                                 pool_options);
    if (created.ok()) {
      pool = std::move(*created);
      break;
    }
    if (created.status().code() != absl::StatusCode::kUnavailable) {
      return Fail(created.status());
    }
    SIGNET_LOG_WARN("HSM unavailable ({}); retrying in {}",
                    created.status().message(), absl::FormatDuration(backoff));
    if (StopRequested(backoff)) return 0;
    backoff = std::min(backoff * 2, absl::Seconds(10));
    connector = hsm::P11KitConnector::Create(module);
    if (!connector.ok()) return Fail(connector.status());
  }
  // The pool holds its own copy; ours is wiped now.
  pin = absl::CancelledError("wiped");

  if (!in_process) {
    absl::Status clean = CheckNoHsmLibraryMappedInThisProcess();
    if (!clean.ok()) return Fail(clean);
  }
  SIGNET_LOG_INFO("HSM token {} open: {} connection(s) x {} session(s)",
                  token_uri->text(), pool->LiveConnections(),
                  pool_options.sessions_per_connection);

  hsm::Pkcs11KeyStore store(pool.get());
  for (const auto& scope : config->scopes()) {
    absl::Status supported = store.CheckAlgorithmSupported(KeySpecFor(scope));
    if (!supported.ok()) {
      return Fail(absl::Status(
          supported.code(), absl::StrCat("scope ", scope.name(), ": ",
                                         supported.message())));
    }
  }
  absl::StatusOr<std::map<std::string, hsm::StoredRecord>> stored =
      store.ReadAllRecords();
  if (!stored.ok()) return Fail(stored.status());
  int unreadable = 0;
  std::map<std::string, rotation::KeyRecord> records =
      rotation::ParseRecords(*stored, &unreadable);
  if (unreadable > 0) {
    SIGNET_LOG_WARN("{} key record(s) in the token could not be read and are "
                    "ignored",
                    unreadable);
  }
  for (const auto& scope : config->scopes()) {
    rotation::ScopeKeyPolicy policy;
    policy.scope = scope.name();
    policy.algorithm = JoseAlgorithmName(scope.algorithm());
    policy.key_spec = KeySpecFor(scope);
    absl::StatusOr<rotation::ScopeKey> key = rotation::EnsureActiveKey(
        store, policy, records, absl::Now(), /*may_write=*/true);
    if (!key.ok()) return Fail(key.status());
    absl::StatusOr<std::string> pem = key->key.public_key->SpkiPem();
    if (!pem.ok()) return Fail(pem.status());
    SIGNET_LOG_INFO("scope {}: key generation {} kid {} checked and active",
                    scope.name(), key->record.key_generation(),
                    key->key.thumbprint);
    std::cout << "scope " << scope.name() << " (" << ClassName(scope.audience_class())
              << ", " << signet::v1::Purpose_Name(scope.purpose()) << ", iss "
              << scope.issuer() << ")\n"
              << "  alg " << policy.algorithm << "  kid "
              << key->key.thumbprint << "\n"
              << "  active since "
              << absl::FormatTime(rotation::TimeFromProto(key->record.activate_at()),
                                  absl::UTCTimeZone())
              << "\n"
              << *pem << std::flush;
  }
  set_health(true);
  SIGNET_LOG_INFO("signetd ready: every scope has a checked, active key");

  // The prober calls through the boundary every second. It runs on its own
  // thread because a stalled HSM blocks a PKCS#11 call with no timeout: the
  // main thread must stay free to flip health and to answer SIGTERM.
  struct ProbeState {
    absl::Mutex mu;
    bool in_call ABSL_GUARDED_BY(mu) = false;
    absl::Time call_started ABSL_GUARDED_BY(mu);
    absl::Status last ABSL_GUARDED_BY(mu);
  };
  auto probe = std::make_shared<ProbeState>();
  auto stop_probing = std::make_shared<absl::Notification>();
  auto prober_done = std::make_shared<absl::Notification>();
  hsm::SessionPool* pool_ptr = pool.get();
  std::thread prober([probe, stop_probing, prober_done, pool_ptr] {
    while (!stop_probing->HasBeenNotified()) {
      {
        absl::MutexLock lock(&probe->mu);
        probe->in_call = true;
        probe->call_started = absl::Now();
      }
      absl::Status status = ProbeHsm(*pool_ptr);
      {
        absl::MutexLock lock(&probe->mu);
        probe->in_call = false;
        probe->last = status;
      }
      stop_probing->WaitForNotificationWithTimeout(absl::Seconds(1));
    }
    prober_done->Notify();
  });
  auto probe_stuck = [&probe]() {
    absl::MutexLock lock(&probe->mu);
    return probe->in_call &&
           absl::Now() - probe->call_started > kStalledCallThreshold;
  };

  bool serving = true;
  while (!StopRequested(absl::Seconds(1))) {
    absl::Status last;
    {
      absl::MutexLock lock(&probe->mu);
      last = probe->last;
    }
    // DEADLINE_EXCEEDED: every session is busy, not that the HSM is gone.
    bool up = (last.ok() || last.code() == absl::StatusCode::kDeadlineExceeded)
              && !probe_stuck();
    if (up != serving) {
      serving = up;
      set_health(up);
      if (up) {
        SIGNET_LOG_INFO("HSM reachable again: SERVING");
      } else {
        SIGNET_LOG_WARN("HSM unreachable ({}): NOT_SERVING",
                        probe_stuck() ? "a call has not returned: stalled"
                                      : std::string(last.message()));
      }
    }
  }
  stop_probing->Notify();
  set_health(false);
  server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(5));
  // A call stuck in a stalled HSM cannot be cancelled, and C_Finalize would
  // block on it too: leave without closing the HSM rather than hang.
  if (!prober_done->WaitForNotificationWithTimeout(absl::Seconds(3))) {
    SIGNET_LOG_WARN("an HSM call is stuck (stalled HSM); exiting without "
                    "closing the HSM connections");
    prober.detach();
    std::_Exit(0);
  }
  prober.join();
  auto closed = std::make_shared<absl::Notification>();
  std::thread closer([p = pool.release(), closed] {
    delete p;
    closed->Notify();
  });
  if (!closed->WaitForNotificationWithTimeout(absl::Seconds(5))) {
    SIGNET_LOG_WARN("closing the HSM connections did not finish; exiting");
    closer.detach();
    std::_Exit(0);
  }
  closer.join();
  SIGNET_LOG_INFO("signetd stopped");
  return 0;
}

}  // namespace
}  // namespace signet::server

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "signetd --config=FILE: hardware-backed signing key service");
  absl::ParseCommandLine(argc, argv);
  signet::log::Init(absl::GetFlag(FLAGS_log_json));
  return signet::server::Run();
}
