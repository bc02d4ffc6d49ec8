#include "server/daemon.h"

#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/impl/server_builder_option.h>
#include <grpcpp/impl/server_builder_plugin.h>
#include <grpcpp/resource_quota.h>
#include <grpcpp/security/server_credentials.h>
#include <grpcpp/security/tls_certificate_provider.h>
#include <grpcpp/security/tls_credentials_options.h>
#include <openssl/crypto.h>
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <iostream>
#include <map>
#include <thread>
#include <utility>
#include <vector>

#include "absl/cleanup/cleanup.h"
#include "absl/functional/function_ref.h"
#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "base/clock.h"
#include "base/file.h"
#include "base/log.h"
#include "base/status_macros.h"
#include "base/wall_clock_anchor.h"
#include "rotation/key_state.h"
#include "rotation/scope_keys.h"
#include "server/hardening.h"
#include "server/publication.h"
#include "server/tls.h"

namespace signet::server {
namespace {

// A probe call that has not returned after this long means a stalled HSM;
// so does a worker held this long by one task while the probe cannot get a
// session (tasks are bounded by deadlines and take milliseconds).
constexpr absl::Duration kStalledCallThreshold = absl::Seconds(3);

// Linking gRPC's reflection library registers its plugin with every
// ServerBuilder (a static initializer). Reflection has no per-call
// authorization in gRPC 1.51, so unless the configuration asks for it this
// option takes the plugin out again.
class WithoutReflection : public grpc::ServerBuilderOption {
 public:
  void UpdateArguments(grpc::ChannelArguments*) override {}
  void UpdatePlugins(std::vector<std::unique_ptr<grpc::ServerBuilderPlugin>>*
                         plugins) override {
    std::erase_if(*plugins, [](const auto& plugin) {
      return plugin->name() == "proto_server_reflection";
    });
  }
};

// Waits up to `timeout` for SIGINT/SIGTERM (blocked in every thread). A
// SIGHUP on the way runs `on_hangup` (the audit log's new segment).
bool StopRequested(absl::Duration timeout,
                   const std::function<void()>& on_hangup = {}) {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGHUP);
  struct timespec ts = absl::ToTimespec(timeout);
  int sig = sigtimedwait(&set, nullptr, &ts);
  if (sig == SIGINT || sig == SIGTERM) {
    SIGNET_LOG_INFO("received {}, stopping",
                    sig == SIGINT ? "SIGINT" : "SIGTERM");
    return true;
  }
  if (sig == SIGHUP) {
    if (on_hangup) {
      SIGNET_LOG_INFO("received SIGHUP: the audit log starts a new segment");
      on_hangup();
    } else {
      SIGNET_LOG_INFO(
          "received SIGHUP while signetd is starting; ignored (the audit log "
          "starts a new segment on a SIGHUP once signetd serves)");
    }
  }
  return false;
}

// Says, every few seconds, which step a stop that takes long is in: a stop
// that hangs is then found in the log, not guessed at (a seventh outside
// attack saw one, once, that scripts/run killed after 10 s with no line
// after "stopping").
class StopPhases {
 public:
  explicit StopPhases(absl::Duration every)
      : thread_([this, every] {
          while (!done_.WaitForNotificationWithTimeout(every)) {
            SIGNET_LOG_WARN("stopping takes long: still {}", phase_.load());
          }
        }) {}
  ~StopPhases() {
    done_.Notify();
    thread_.join();
  }
  void Enter(const char* phase) { phase_.store(phase); }

 private:
  std::atomic<const char*> phase_{"starting to stop"};
  absl::Notification done_;
  std::thread thread_;  // last: it reads the members above
};

// Runs `step` on a thread of its own and waits up to `limit` for it: a step
// that calls into a stalled HSM cannot be cancelled, and a stop must not
// wait for it. False when it has not returned by then; its thread is left
// behind, and the caller must exit without destroying what it uses.
bool FinishesWithin(absl::Duration limit, std::function<void()> step) {
  auto done = std::make_shared<absl::Notification>();
  std::thread runner([step = std::move(step), done] {
    step();
    done->Notify();
  });
  if (!done->WaitForNotificationWithTimeout(limit)) {
    runner.detach();
    return false;
  }
  runner.join();
  return true;
}

// Runs `write` (lines the start writes to the audit log) until it succeeds:
// a log that cannot be written for now (a full disk, say) is waited for,
// as one that cannot be opened is, instead of failing the start for good
// (a supervisor takes that exit for a configuration error and gives up).
// What no wait fixes still fails the start, and so does a log that does not
// get over a failed write by itself (AuditLog::can_recover: not a regular
// file); so does a stop request.
absl::Status WriteAtStart(const AuditLog& log,
                          absl::FunctionRef<absl::Status()> write) {
  absl::Duration backoff = absl::Milliseconds(500);
  for (;;) {
    absl::Status written = write();
    if (written.ok() || !log.can_recover() ||
        (!absl::IsUnavailable(written) && !absl::IsPermissionDenied(written) &&
         !absl::IsResourceExhausted(written))) {
      return written;
    }
    SIGNET_LOG_WARN(
        "the audit log cannot be written ({}): nothing is served until it "
        "can; retrying in {}",
        written.message(), absl::FormatDuration(backoff));
    if (StopRequested(backoff)) {
      return absl::CancelledError("stopped while waiting for the audit log");
    }
    backoff = std::min(backoff * 2, absl::Seconds(10));
  }
}

std::string Iso8601(absl::Time t) {
  return absl::FormatTime("%Y-%m-%dT%H:%M:%SZ", t, absl::UTCTimeZone());
}

// The start-up summary of a scope on standard output: its signing key, its
// standby, and the signing key's public key.
void PrintScope(const signet::v1::ScopeConfig& scope, const ScopeKeys& keys,
                const ScopeState& signing, absl::Time now) {
  absl::StatusOr<std::string> pem = signing.key.public_key->SpkiPem();
  std::string standby = "none yet";
  if (const rotation::KeyRecord* r = keys.StandbyAt(now)) {
    standby = absl::StrCat(r->kid(), ", signs from ",
                           Iso8601(rotation::TimeFromProto(r->activate_at())));
  }
  SIGNET_LOG_INFO(
      "scope {}: key generation {} kid {} checked and active; signs until "
      "{}, published until {}; standby {}",
      scope.name(), signing.record.key_generation(), signing.kid,
      Iso8601(rotation::TimeFromProto(signing.record.retire_at())),
      Iso8601(rotation::TimeFromProto(signing.record.unpublish_at())), standby);
  std::cout << "scope " << scope.name() << " ("
            << signet::v1::AudienceClass_Name(scope.audience_class()) << ", "
            << signet::v1::Purpose_Name(scope.purpose()) << ", iss "
            << scope.issuer() << ")\n"
            << "  alg " << keys.alg() << "  kid " << signing.kid << "\n"
            << "  active since "
            << absl::FormatTime(
                   rotation::TimeFromProto(signing.record.activate_at()),
                   absl::UTCTimeZone())
            << "\n"
            << "  standby " << standby << "\n"
            << (pem.ok() ? *pem : std::string()) << std::flush;
}

// mTLS: client certificates required and verified against client_ca_file;
// TLS 1.3 only through the OpenSSL configuration set in main().
absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> MakeServerCredentials(
    const signet::v1::TlsConfig& tls) {
  absl::StatusOr<std::string> cert =
      base::ReadSmallFile(tls.cert_file(), "tls.cert_file");
  if (!cert.ok()) return cert.status();
  absl::StatusOr<std::string> key =
      base::ReadSmallFile(tls.key_file(), "tls.key_file");
  if (!key.ok()) return key.status();
  // The transport key's copies here are zeroed on every way out (the
  // credentials keep their own).
  absl::Cleanup wipe_key = [&key] {
    OPENSSL_cleanse(key->data(), key->size());
  };
  absl::StatusOr<std::string> ca =
      base::ReadSmallFile(tls.client_ca_file(), "tls.client_ca_file");
  if (!ca.ok()) return ca.status();
  if (!tls.crl_directory().empty()) {
    SIGNET_RETURN_IF_ERROR(CheckCrlDirectory(*ca, tls.crl_directory()));
  }
  std::vector<grpc::experimental::IdentityKeyCertPair> pairs{{*key, *cert}};
  auto provider =
      std::make_shared<grpc::experimental::StaticDataCertificateProvider>(
          *ca, pairs);
  for (grpc::experimental::IdentityKeyCertPair& pair : pairs) {
    OPENSSL_cleanse(pair.private_key.data(), pair.private_key.size());
  }
  grpc::experimental::TlsServerCredentialsOptions options(provider);
  options.watch_root_certs();
  options.watch_identity_key_cert_pairs();
  options.set_cert_request_type(
      GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY);
  if (!tls.crl_directory().empty()) {
    options.set_crl_directory(tls.crl_directory());
  }
  return grpc::experimental::TlsServerCredentials(options);
}

// A fault-injection count from the environment (tests only), or 0.
int FaultInjection(const char* name) {
  int n = 0;
  const char* env = std::getenv(name);
  if (env == nullptr || !absl::SimpleAtoi(env, &n) || n <= 0) return 0;
  return n;
}

}  // namespace

Daemon::Daemon(DaemonOptions options)
    : options_(std::move(options)),
      clock_(options_.clock != nullptr ? *options_.clock
                                       : base::SystemClock()) {}

Daemon::~Daemon() {
  // The loop stops before anything the publisher uses goes away, and the
  // gRPC server before the workers, the audit log and the keys its calls
  // use: ~Server alone waits for every call, and a client's health Watch
  // never ends by itself.
  if (key_manager_ != nullptr) key_manager_->Stop();
  StopServing(absl::Seconds(2));
  // A start that failed part way (Stop did all this otherwise). In the
  // members' own order, up to the audit log (its final checkpoint); then a
  // checkpoint signature the HSM still holds keeps the key store and the
  // pool from being destroyed under its thread.
  prober_.reset();
  http_.reset();
  workers_.reset();
  key_manager_.reset();
  publisher_.reset();
  audit_.reset();
  ExitIfACheckpointSignatureIsHeld();
}

void Daemon::ExitIfACheckpointSignatureIsHeld() {
  // The checkpoint signer gave up on a signature the HSM still holds; its
  // thread uses the key store and the pool, which must not be destroyed.
  if (audit_keys_ == nullptr || !audit_keys_->signature_outstanding()) return;
  SIGNET_LOG_WARN(
      "a checkpoint signature is stuck in the HSM (stalled); exiting "
      "without closing the HSM connections");
  std::_Exit(options_.exit_code_if_hsm_stuck);
}

absl::Status Daemon::LoadConfiguration() {
  if (absl::Status hardened = HardenProcess(); !hardened.ok()) return hardened;
  if (options_.config_path.empty()) {
    return absl::InvalidArgumentError("--config is required");
  }
  config_options_.insecure_plaintext = options_.insecure_plaintext;
  SIGNET_ASSIGN_OR_RETURN(
      config_, LoadConfigFile(options_.config_path, config_options_));
  // Descriptors for grpc.max_connections, the reserve (HSM sockets, audit
  // files) and the HTTP endpoint's connections: the gRPC budget is what the
  // limit leaves after the other two (server/connection_acceptor.h).
  const int64_t wanted_files =
      int64_t{config_.grpc().max_connections()} +
      config_.grpc().reserved_file_descriptors() +
      (config_.has_http() ? config_.http().max_connections() : 0);
  int open_files_before = 0;
  const int open_files = SetOpenFileLimit(
      static_cast<int>(std::min<int64_t>(wanted_files, 1 << 30)),
      &open_files_before);
  SIGNET_LOG_INFO(
      "open-file limit {}{}", open_files,
      open_files < wanted_files
          ? absl::StrCat(" (the hard limit: below the ", wanted_files,
                         " grpc.max_connections and the reserve want)")
          : std::string(" (grpc.max_connections, the reserve and HTTP)"));
  const signet::v1::HsmConfig& hsm_config = config_.hsm();

  module_.module_path = hsm_config.module_path();
  module_.p11_kit_server_address = hsm_config.p11_kit_server_address();
  module_.insecure_in_process_module = options_.insecure_in_process_module;
  SIGNET_ASSIGN_OR_RETURN(connector_, hsm::P11KitConnector::Create(module_));
  in_process_ = connector_->in_process();
  if (in_process_) {
    SIGNET_LOG_WARN(
        "INSECURE: PKCS#11 module {} is loaded INTO signetd "
        "(--insecure_in_process_module). Key material may be mapped into "
        "this process and a memory dump could contain it. Development only.",
        module_.module_path);
  }
  SIGNET_ASSIGN_OR_RETURN(token_uri_,
                          hsm::TokenUri::Parse(hsm_config.token_uri()));
  SIGNET_ASSIGN_OR_RETURN(pin_,
                          hsm_config.pin_file().empty()
                              ? hsm::Pin::FromEnv(hsm_config.pin_env())
                              : hsm::Pin::FromFile(hsm_config.pin_file()));
  if (config_.allow_short_key_schedules()) {
    SIGNET_LOG_WARN(
        "allow_short_key_schedules is set: rotation periods under "
        "an hour are allowed (tests and demos only)");
  }
  // As early as possible: before waiting for the HSM, so a step made
  // meanwhile is measured too.
  return AnchorWallClock();
}

absl::Status Daemon::BindAcceptor() {
  const signet::v1::GrpcConfig& grpc_limits = config_.grpc();
  // signetd accepts the gRPC port's connections itself and hands them to
  // gRPC, so the acceptor can neither die nor spend the last descriptors
  // (server/connection_acceptor.h). Its budget leaves the HTTP endpoint's
  // slots and the reserve (HSM sockets, audit files) to them.
  const int http_slots =
      config_.has_http() ? static_cast<int>(config_.http().max_connections())
                         : 0;
  SIGNET_ASSIGN_OR_RETURN(
      acceptor_,
      ConnectionAcceptor::Bind(
          config_.grpc_listen_address(),
          static_cast<int>(grpc_limits.reserved_file_descriptors()) +
              http_slots,
          static_cast<int>(grpc_limits.max_connections_per_address())));
  return absl::OkStatus();
}

void Daemon::MakeServices() {
  SignerServiceOptions signer_options;
  signer_options.clock = &clock_;
  signer_options.iat_skew = absl::Seconds(config_.serving().iat_skew_seconds());
  signer_options.max_batch_size =
      static_cast<int>(config_.serving().max_batch_size());
  signer_options.plaintext = config_options_.insecure_plaintext;
  signer_options.max_answer_memory_bytes =
      int64_t{config_.serving().max_answer_memory_mib()} << 20;
  const signet::v1::GrpcConfig& grpc_limits = config_.grpc();
  signer_options.max_rpc_time = absl::Seconds(grpc_limits.max_call_seconds());

  // Calls whose request message has not come yet: bounded in number and in
  // time, and a connection that resets them early is closed
  // (server/one_request_call.h).
  max_request_bytes_ = MaxRequestBytes(signer_options.max_batch_size);
  RequestWaitLimits wait_limits;
  wait_limits.max_waiting =
      static_cast<int>(grpc_limits.max_calls_awaiting_request());
  wait_limits.timeout = absl::Seconds(grpc_limits.request_timeout_seconds());
  wait_limits.max_request_bytes = max_request_bytes_;
  request_waits_ = std::make_unique<RequestWaits>(
      wait_limits, [connections = acceptor_.get()](const std::string& peer) {
        // Its address may not come back for a while: a rapid-reset client
        // reconnects at once.
        return connections->CloseConnection(peer, absl::Seconds(30));
      });
  signer_ = std::make_unique<SignerService>(
      signer_options,
      std::vector<signet::v1::TenantConfig>(config_.tenants().begin(),
                                            config_.tenants().end()),
      request_waits_.get());
  AdminServiceOptions admin_options;
  admin_options.admins.assign(config_.admins().begin(), config_.admins().end());
  admin_options.plaintext = config_options_.insecure_plaintext;
  admin_options.clock = &clock_;
  admin_options.max_rpc_time = signer_options.max_rpc_time;
  admin_service_ =
      std::make_unique<AdminService>(admin_options, request_waits_.get());
  // Health is ours: gRPC's default service has no bound on Watch streams.
  health_service_ = std::make_unique<HealthService>(
      static_cast<int>(grpc_limits.max_health_watchers()), request_waits_.get(),
      [this](HealthService::Refusal refusal, const grpc::AuthContext* caller) {
        switch (refusal) {
          case HealthService::Refusal::kWatch:
            refused_watches_.Count(caller);
            break;
          case HealthService::Refusal::kMalformed:
            malformed_health_.Count(caller);
            break;
          case HealthService::Refusal::kOversized:
            oversized_health_.Count(caller);
            break;
        }
      });
}

absl::Status Daemon::BuildGrpcServer(
    std::shared_ptr<grpc::ServerCredentials> credentials) {
  const signet::v1::GrpcConfig& grpc_limits = config_.grpc();
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  if (!grpc_limits.reflection()) {
    builder.SetOption(std::make_unique<WithoutReflection>());
  }
  std::unique_ptr<grpc::experimental::ExternalConnectionAcceptor>
      grpc_acceptor = builder.experimental().AddExternalConnectionAcceptor(
          grpc::ServerBuilder::experimental_type::ExternalConnectionType::
              FROM_FD,
          credentials);
  // Bounds of what one peer can make signetd hold (README, "Hostile
  // traffic"): streams per connection, memory, time to finish the TLS
  // handshake, idle connections, and the largest legal request.
  auto ms = [](uint32_t seconds) { return static_cast<int>(seconds) * 1000; };
  const std::pair<const char*, int> channel_arguments[] = {
      {GRPC_ARG_MAX_CONCURRENT_STREAMS,
       static_cast<int>(grpc_limits.max_concurrent_streams())},
      {GRPC_ARG_SERVER_HANDSHAKE_TIMEOUT_MS,
       ms(grpc_limits.handshake_timeout_seconds())},
      {GRPC_ARG_MAX_CONNECTION_IDLE_MS,
       ms(grpc_limits.max_connection_idle_seconds())},
      {GRPC_ARG_MAX_CONNECTION_AGE_MS,
       ms(grpc_limits.max_connection_age_seconds())},
      {GRPC_ARG_MAX_CONNECTION_AGE_GRACE_MS,
       ms(grpc_limits.max_connection_age_grace_seconds())},
      {GRPC_ARG_KEEPALIVE_TIME_MS, ms(grpc_limits.keepalive_time_seconds())},
      {GRPC_ARG_KEEPALIVE_TIMEOUT_MS,
       ms(grpc_limits.keepalive_timeout_seconds())},
  };
  for (const auto& [name, value] : channel_arguments) {
    builder.AddChannelArgument(name, value);
  }
  grpc::ResourceQuota quota("signetd");
  quota.Resize(static_cast<size_t>(grpc_limits.max_memory_mib()) << 20);
  builder.SetResourceQuota(quota);
  // signet checks the request size itself (RequestWaitLimits): gRPC 1.51
  // receives an over-limit message whole before it refuses it anyway, and
  // refuses it where no handler sees why, so it could not be audited with
  // the status the client got. (Reflection, off by default, is the one
  // service without the check; its messages are received whole either
  // way, within the memory quota.)
  builder.SetMaxReceiveMessageSize(-1);
  // No compressed requests: gRPC 1.51 decompresses a message whole before it
  // checks the size limit, so a 1.5 MB gzip of spaces grew signetd by
  // 1.7 GB. Claims gain nothing from compression; a compressed request is
  // refused from its headers, before any byte of it is inflated.
  builder.SetCompressionAlgorithmSupportStatus(GRPC_COMPRESS_DEFLATE, false);
  builder.SetCompressionAlgorithmSupportStatus(GRPC_COMPRESS_GZIP, false);
  builder.RegisterService(signer_.get());
  builder.RegisterService(admin_service_.get());
  builder.RegisterService(health_service_.get());
  // Every other method: UNIMPLEMENTED with a message, counted
  // (server/unknown_method_service.h).
  builder.RegisterCallbackGenericService(&unknown_methods_);
  server_ = builder.BuildAndStart();
  if (server_ == nullptr) {
    return absl::UnavailableError(absl::StrCat(
        "cannot start the gRPC server on ", config_.grpc_listen_address()));
  }
  acceptor_->Start(std::move(grpc_acceptor));
  return absl::OkStatus();
}

void Daemon::CountRefusals() {
  // Refusals counted rather than audited one by one (they come in floods).
  ConnectionAcceptor* const a = acceptor_.get();
  RequestWaits* const w = request_waits_.get();
  refusals_.Add([a] { return a->refused(); }, "UNAVAILABLE",
                "gRPC connection(s) closed at once (descriptor budget spent)");
  refusals_.Add([a] { return a->refused_per_address(); }, "UNAVAILABLE",
                "gRPC connection(s) closed at once (their address held "
                "grpc.max_connections_per_address)");
  refusals_.Add([a] { return a->accept_errors(); }, "UNAVAILABLE",
                "failed accept(s)");
  refusals_.Add([w] { return w->reset_closes(); }, "UNAVAILABLE",
                "gRPC connection(s) closed for resetting calls before their "
                "request message (HTTP/2 rapid reset)");
  refusals_.Add([a] { return a->refused_banned(); }, "UNAVAILABLE",
                "gRPC connection(s) refused at once from an address banned "
                "for 30 s after a rapid reset");
  refusals_.AddTally([this] { return refused_watches_.TakeReport(); },
                     "RESOURCE_EXHAUSTED",
                     "health watch(es) refused (grpc.max_health_watchers or a "
                     "certificate's share)");
  refusals_.Add([w] { return w->evicted(); }, "RESOURCE_EXHAUSTED",
                "call(s) still waiting for their request message ended to "
                "make room (grpc.max_calls_awaiting_request)");
  refusals_.AddTally([this] { return oversized_health_.TakeReport(); },
                     "RESOURCE_EXHAUSTED",
                     "health request(s) over the request size limit");
  refusals_.AddTally(
      [this] { return malformed_health_.TakeReport(); }, "INVALID_ARGUMENT",
      absl::StrCat("health request(s) that did not parse, never "
                   "came, or named a service over ",
                   HealthService::kMaxServiceNameBytes, " bytes"));
  refusals_.AddTally([this] { return unknown_methods_.TakeReport(); },
                     "UNIMPLEMENTED",
                     "call(s) of a method signetd does not serve");
  refusals_.Add([w] { return w->timed_out(); }, "DEADLINE_EXCEEDED",
                "call(s) whose request message did not come in time "
                "(grpc.request_timeout_seconds)");
}

absl::Status Daemon::StartListening() {
  std::shared_ptr<grpc::ServerCredentials> credentials;
  if (config_options_.insecure_plaintext) {
    SIGNET_LOG_WARN(
        "INSECURE: gRPC in plain text (--insecure_plaintext); "
        "callers are not authenticated. Development only.");
    credentials = grpc::InsecureServerCredentials();
  } else {
    absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> tls =
        MakeServerCredentials(config_.tls());
    if (!tls.ok()) return tls.status();
    credentials = *tls;
  }
  SIGNET_RETURN_IF_ERROR(BindAcceptor());
  MakeServices();
  SIGNET_RETURN_IF_ERROR(BuildGrpcServer(std::move(credentials)));
  std::vector<std::string> scope_names;
  for (const auto& scope : config_.scopes()) {
    scope_names.push_back(scope.name());
  }
  health_monitor_ = std::make_unique<HealthMonitor>(
      scope_names, [health = health_service_.get()](const std::string& service,
                                                    bool serving) {
        health->Set(service, serving);
      });
  health_monitor_->SetAllNotServing("starting: waiting for the HSM and keys");

  CountRefusals();

  const signet::v1::GrpcConfig& grpc_limits = config_.grpc();
  const std::string listen_host = config_.grpc_listen_address().substr(
      0, config_.grpc_listen_address().rfind(':'));
  SIGNET_LOG_INFO(
      "gRPC (Signer, Admin, health{}) listening on {}:{} ({}; at most {} "
      "descriptors for connections, {} per address, {} streams each, {} MiB, "
      "requests up to {} bytes)",
      grpc_limits.reflection() ? ", reflection" : "", listen_host,
      acceptor_->port(),
      config_options_.insecure_plaintext ? "plain text" : "mTLS, TLS 1.3 only",
      acceptor_->budget_end(), grpc_limits.max_connections_per_address(),
      grpc_limits.max_concurrent_streams(), grpc_limits.max_memory_mib(),
      max_request_bytes_);
  return absl::OkStatus();
}

void Daemon::StopServing(absl::Duration grace) {
  if (serving_stopped_ || server_ == nullptr) return;
  serving_stopped_ = true;
  acceptor_->Stop();            // no new connection from here on
  health_service_->Shutdown();  // watchers hear NOT_SERVING, then the end
  // Calls a stalled HSM (or an audit log waiting for it) holds are
  // answered within the shutdown's grace; the others finish in it.
  const base::MonotonicDeadline cut_off =
      base::MonotonicDeadline::In(grace - absl::Seconds(1));
  signer_->CutOffPendingCalls(cut_off);
  request_waits_->CutOff(cut_off);
  server_->Shutdown(std::chrono::system_clock::now() +
                    absl::ToChronoSeconds(grace));
}

absl::Status Daemon::OpenHsm() {
  const signet::v1::HsmConfig& hsm_config = config_.hsm();
  pool_options_.connections = static_cast<int>(hsm_config.connections());
  pool_options_.sessions_per_connection =
      static_cast<int>(hsm_config.sessions_per_connection());
  absl::Duration backoff = absl::Milliseconds(500);
  for (;;) {
    // A stalled HSM holds C_Initialize or C_Login, which cannot be
    // cancelled: the pool is opened on a thread of its own, so that a stop
    // is still obeyed. Nothing durable is open yet (the audit log opens
    // after the HSM), so signetd then exits at once.
    struct Opening {
      absl::Notification done;
      absl::StatusOr<std::unique_ptr<hsm::SessionPool>> result =
          absl::UnknownError("not opened");
    };
    auto opening = std::make_shared<Opening>();
    std::thread([opening, connector = std::move(connector_), uri = *token_uri_,
                 pin_copy = hsm::Pin::FromBytes(absl::string_view(
                     reinterpret_cast<const char*>(pin_->data()),
                     pin_->size())),
                 options = pool_options_]() mutable {
      opening->result = hsm::SessionPool::Create(std::move(connector), uri,
                                                 std::move(pin_copy), options);
      opening->done.Notify();
    }).detach();
    // Said every 5 s while it lasts: a start that waits on a stalled HSM
    // said nothing for as long as it stalled (a sixteenth outside attack
    // saw 18 s of silence).
    const absl::Duration opening_since = base::MonotonicNow();
    absl::Duration next_note = opening_since + absl::Seconds(5);
    while (!opening->done.WaitForNotificationWithTimeout(
        absl::Milliseconds(200))) {
      if (StopRequested(absl::ZeroDuration())) {
        SIGNET_LOG_WARN(
            "stopping while the HSM has not answered its opening calls "
            "(stalled HSM); exiting without waiting for them");
        std::_Exit(0);
      }
      if (base::MonotonicNow() >= next_note) {
        SIGNET_LOG_WARN(
            "the HSM has not answered signetd's opening calls (C_Initialize, "
            "C_OpenSession, C_Login) for {}: a stalled or overloaded HSM; "
            "still waiting, serving nothing until it answers (a stop is "
            "obeyed at once)",
            absl::FormatDuration(absl::Trunc(
                base::MonotonicNow() - opening_since, absl::Seconds(1))));
        next_note += absl::Seconds(5);
      }
    }
    absl::StatusOr<std::unique_ptr<hsm::SessionPool>> created =
        std::move(opening->result);
    if (created.ok()) {
      pool_ = *std::move(created);
      break;
    }
    if (created.status().code() != absl::StatusCode::kUnavailable) {
      return created.status();
    }
    SIGNET_LOG_WARN("HSM unavailable ({}); retrying in {}",
                    created.status().message(), absl::FormatDuration(backoff));
    if (StopRequested(backoff)) {
      return absl::CancelledError("stopped while waiting for the HSM");
    }
    backoff = std::min(backoff * 2, absl::Seconds(10));
    SIGNET_ASSIGN_OR_RETURN(connector_, hsm::P11KitConnector::Create(module_));
  }
  // The pool holds its own copy; ours is wiped now.
  pin_.reset();

  if (!in_process_) {
    SIGNET_RETURN_IF_ERROR(CheckNoHsmLibraryMappedInThisProcess());
  }
  SIGNET_LOG_INFO("HSM token {} open: {} connection(s) x {} session(s)",
                  token_uri_->text(), pool_->LiveConnections(),
                  pool_options_.sessions_per_connection);

  store_ = std::make_unique<hsm::Pkcs11KeyStore>(pool_.get());
  for (const auto& scope : config_.scopes()) {
    absl::Status supported = store_->CheckAlgorithmSupported(KeySpecFor(scope));
    if (!supported.ok()) {
      return absl::Status(
          supported.code(),
          absl::StrCat("scope ", scope.name(), ": ", supported.message()));
    }
  }
  absl::StatusOr<std::map<std::string, hsm::StoredRecord>> stored =
      store_->ReadAllRecords();
  if (!stored.ok()) return stored.status();
  int unreadable = 0;
  (void)rotation::ParseRecords(*stored, &unreadable);
  if (unreadable > 0) {
    SIGNET_LOG_WARN(
        "{} key record(s) in the token could not be read and are "
        "ignored",
        unreadable);
  }
  return absl::OkStatus();
}

void Daemon::RemoveRunMarker() {
  if (running_marker_.empty()) return;
  if (unlink(running_marker_.c_str()) != 0 && errno != ENOENT) {
    SIGNET_LOG_WARN(
        "the run marker {} could not be removed ({}): the next start will "
        "say this run ended without a stop line",
        running_marker_, strerror(errno));
    return;
  }
  (void)base::SyncParentDirectory(running_marker_);
}

absl::Status Daemon::AnchorWallClock() {
  using Source = base::LoadedWallClockAnchor::Source;
  anchor_path_ = BesideAuditLog(config_.audit_log_path(), "wall-clock-anchor");
  const std::string& path = anchor_path_;
  absl::StatusOr<base::LoadedWallClockAnchor> loaded =
      base::LoadOrTakeWallClockAnchor(path, clock_, options_.accept_wall_clock);
  if (!loaded.ok()) {
    return absl::FailedPreconditionError(absl::StrCat(
        loaded.status().message(),
        ". signetd measures the wall clock from the first start of each boot "
        "so that a clock set forward cannot destroy keys early; if the clock "
        "is right, start signetd once with --accept_wall_clock to measure "
        "from it"));
  }
  // An acceptance takes effect once the audit log records it
  // (OpenAuditLog); until then the file's anchor of this boot holds.
  const bool accepting = loaded->source == Source::kAccepted;
  const bool hold_until_recorded =
      accepting && loaded->previous.has_value() &&
      loaded->previous->origin == loaded->anchor.origin;
  const base::WallClockAnchor& first =
      hold_until_recorded ? *loaded->previous : loaded->anchor;
  seen_ = std::make_unique<base::ElapsedWallTime>(clock_, first.wall,
                                                  first.elapsed);
  if (accepting) accepted_anchor_ = loaded->anchor;
  auto when = [](absl::Time t) {
    return absl::FormatTime(absl::RFC3339_sec, t, absl::UTCTimeZone());
  };
  const absl::Time now = clock_.Now();
  // How the wall clock compares with the time seen pass since the file's
  // anchor, for the operator's record.
  auto against_previous = [&]() -> std::string {
    if (!loaded->previous.has_value() ||
        loaded->previous->origin != loaded->anchor.origin) {
      return "";
    }
    const base::ElapsedWallTime before(clock_, loaded->previous->wall,
                                       loaded->previous->elapsed);
    const absl::Duration off =
        absl::Trunc(now - before.Now(), absl::Seconds(1));
    return absl::StrCat("; it read ", absl::FormatDuration(off),
                        " from the time seen pass since ",
                        when(loaded->previous->wall));
  };
  switch (loaded->source) {
    case Source::kKept:
      SIGNET_LOG_INFO(
          "wall clock measured against the time seen pass since {}, this "
          "boot's first start ({})",
          when(loaded->anchor.wall), path);
      break;
    case Source::kNoFile:
    case Source::kNewBoot:
      SIGNET_LOG_INFO(
          "wall clock measured from {}, this boot's first start ({})",
          when(loaded->anchor.wall), path);
      break;
    case Source::kOriginUnknown:
      break;
    case Source::kAccepted: {
      const std::string detail =
          absl::StrCat("the operator accepted the wall clock as it reads (",
                       when(loaded->anchor.wall), ", --accept_wall_clock)",
                       against_previous());
      SIGNET_LOG_WARN("{}", detail);
      clock_accepted_.emplace();
      clock_accepted_->event = "wall_clock_accepted";
      clock_accepted_->result = "OK";
      clock_accepted_->detail = detail;
      break;
    }
  }
  anchor_origin_ = loaded->anchor.origin;
  if (!loaded->not_stored.empty()) {
    SIGNET_LOG_WARN(
        "the wall-clock anchor may not be kept ({}): this run measures the "
        "wall clock from {}, and a restart may measure from the clock as it "
        "then reads",
        loaded->not_stored, when(loaded->anchor.wall));
  }
  // A clock behind the anchor (set back while signetd was down, or ahead
  // when the anchor was taken) brings it down.
  LowerWallClockAnchor();
  return absl::OkStatus();
}

void Daemon::LowerWallClockAnchor() {
  if (!seen_->LowerTo(clock_.Now())) return;
  const auto [wall, elapsed] = seen_->anchor();
  SIGNET_LOG_WARN(
      "the wall clock reads behind the time seen pass since the anchor; the "
      "anchor comes down to {} (a later step forward is measured from it)",
      absl::FormatTime(absl::RFC3339_sec, wall, absl::UTCTimeZone()));
  if (anchor_origin_.empty()) return;  // kept in this process only
  if (absl::Status stored = base::StoreWallClockAnchor(
          anchor_path_, {anchor_origin_, wall, elapsed});
      !stored.ok()) {
    SIGNET_LOG_WARN("the lowered wall-clock anchor may not be kept: {}",
                    stored.message());
  }
}

absl::StatusOr<std::vector<rotation::KeyEvent>> Daemon::FirstAuditKeyPass() {
  std::vector<rotation::KeyEvent> events;
  rotation::KeyReconciler first_pass(
      store_.get(), {AuditKeys::Policy(config_)}, !config_.never_create_keys(),
      [&events](const rotation::KeyEvent& e) { events.push_back(e); });
  // Destroying and pruning wait for the time seen pass, as in every pass.
  const absl::Time now = clock_.Now();
  absl::StatusOr<std::map<std::string, rotation::ScopeKeySet>> sets =
      first_pass.RunOnce(now, seen_->IrreversibleStepsAt(now));
  if (!sets.ok()) return sets.status();
  auto set = sets->find(AuditKeys::kScope);
  if (set == sets->end()) {
    return absl::FailedPreconditionError(
        "the HSM token holds no audit checkpoint key");
  }
  // The oldest audit key made before this start (records are in
  // generation order): the token has audited before (OpenAuditLog).
  for (const rotation::KeyRecord& r : set->second.records) {
    if (rotation::TimeFromProto(r.created_at()) < now) {
      audit_key_made_before_start_ = r;
      break;
    }
  }
  if (absl::Status st = audit_keys_->Update(set->second, clock_.Now());
      !st.ok()) {
    if (config_.never_create_keys() && absl::IsFailedPrecondition(st)) {
      return absl::FailedPreconditionError(absl::StrCat(
          st.message(),
          "; this replica does not create keys "
          "(never_create_keys): start the replica that writes keys first"));
    }
    return st;
  }
  return events;
}

absl::Status Daemon::OpenAuditLog() {
  // The audit checkpoint key (server/audit_keys.h): a first pass over its
  // scope alone, before the log opens (its events are written once the log
  // is open); the key manager's passes keep it on the schedule from then on.
  audit_keys_ = std::make_unique<AuditKeys>(store_.get(),
                                            config_.audit_log_path(), clock_);
  absl::StatusOr<std::vector<rotation::KeyEvent>> audit_key_events =
      FirstAuditKeyPass();
  if (!audit_key_events.ok()) return audit_key_events.status();
  AuditLogOptions audit_options;
  audit_options.clock = &clock_;
  audit_options.path = config_.audit_log_path();
  audit_options.accept_missing_segment = options_.accept_missing_audit_segment;
  audit_options.checkpoint_kid = audit_keys_->current_kid();
  audit_options.sign_checkpoint = audit_keys_->Signer();
  audit_options.syslog_socket = config_.audit_syslog_socket();
  audit_options.group_commit_delay =
      absl::Microseconds(config_.serving().audit_group_commit_delay_us());
  audit_options.segment_max_bytes =
      uint64_t{config_.serving().audit_segment_max_mib()} << 20;
  audit_options.segment_max_age =
      absl::Hours(config_.serving().audit_segment_max_age_hours());
  // Fault injection for the torn-line test (tests/server/signer_test.cc):
  // the audit writer writes half of line N, then kills this process.
  audit_options.kill_mid_line =
      FaultInjection("SIGNET_TEST_KILL_MID_AUDIT_LINE");
  if (audit_options.kill_mid_line > 0) {
    SIGNET_LOG_WARN(
        "SIGNET_TEST_KILL_MID_AUDIT_LINE={}: this process kills "
        "itself in the middle of audit line {} (fault-injection "
        "tests only)",
        audit_options.kill_mid_line, audit_options.kill_mid_line);
  }
  // A log that cannot be opened for now (made immutable, a read-only or
  // full disk, a permission) is waited for, as the HSM is: the listener is
  // up and health says NOT_SERVING meanwhile, and signetd serves once a
  // person fixed it, instead of exiting (which a supervisor takes for a
  // configuration error and gives up on). What no wait fixes (a broken
  // chain, a missing directory, a bad path) still stops the start.
  absl::Duration backoff = absl::Milliseconds(500);
  for (;;) {
    absl::StatusOr<std::unique_ptr<AuditLog>> audit =
        AuditLog::Open(audit_options);
    if (audit.ok()) {
      audit_ = *std::move(audit);
      break;
    }
    if (!absl::IsPermissionDenied(audit.status()) &&
        !absl::IsUnavailable(audit.status())) {
      return audit.status();
    }
    SIGNET_LOG_WARN(
        "the audit log cannot be opened ({}): nothing is served until it "
        "can; retrying in {}",
        audit.status().message(), absl::FormatDuration(backoff));
    if (StopRequested(backoff)) {
      return absl::CancelledError("stopped while waiting for the audit log");
    }
    backoff = std::min(backoff * 2, absl::Seconds(10));
  }
  AuditEvent start_event;
  start_event.event = "start";
  start_event.result = "OK";
  start_event.detail = absl::StrCat("signetd pid ", getpid());
  // Whether the run before this one stopped: a marker beside the log, made
  // at each start and removed once the stop line is written. A kill -9, a
  // crash or a power cut leaves it, and this start line says so (a twelfth
  // outside attack had to infer a crash from a missing stop line).
  // One per log (like its .rollover marker), made once this run's start
  // line is written.
  const std::string running_marker =
      absl::StrCat(config_.audit_log_path(), ".running");
  if (absl::StatusOr<std::string> left =
          base::ReadSmallFile(running_marker, "the run marker", 256);
      left.ok()) {
    previous_run_unstopped_ = true;
    absl::StrAppend(&start_event.detail, "; the previous run (",
                    absl::StripAsciiWhitespace(*left),
                    ") ended without a stop line: it was killed, crashed, "
                    "failed to start after its start line, or the machine "
                    "stopped");
  }
  auto append = [this](const AuditEvent& line) {
    return WriteAtStart(*audit_, [&] { return audit_->Append(line); });
  };
  if (std::optional<AuditEvent> line = audit_->TakeUnwrittenOpenLine()) {
    SIGNET_RETURN_IF_ERROR(append(*line));
  }
  SIGNET_RETURN_IF_ERROR(append(start_event));
  if (absl::Status made = base::ReplaceFileDurably(
          running_marker, absl::StrCat("signetd pid ", getpid(), "\n"),
          "the run marker");
      !made.ok()) {
    SIGNET_LOG_WARN("{} (the next start cannot tell whether this run stopped)",
                    made.ToString());
  } else {
    running_marker_ = running_marker;
  }
  if (audit_->started_new_chain() && audit_key_made_before_start_) {
    // Not silent: a log moved away or deleted while signetd was down looks
    // like a first start but for the token, whose audit key is older.
    const rotation::KeyRecord& key = *audit_key_made_before_start_;
    AuditEvent note;
    note.event = "new_chain";
    note.result = "OK";
    note.detail = absl::StrCat(
        "no audit log at ", config_.audit_log_path(),
        " (no current or closed segment): a new chain starts at line 1, on "
        "an HSM token whose audit key generation ",
        key.key_generation(), " (kid ", key.kid(), ") was made at ",
        rotation::FormatInstant(rotation::TimeFromProto(key.created_at())),
        ", before this start: ",
        audit_->found_empty_segment()
            ? "the log is there but empty (an earlier start stopped before "
              "its first line, or the log was emptied)"
            : "this replica's first start on a token another replica uses, "
              "or this log was deleted or moved away",
        "; compare with the audit checkpoints your syslog holds");
    SIGNET_LOG_ERROR("audit log: {}", note.detail);
    audit_->AlertSyslog(absl::StrCat("audit-new-chain ", note.detail));
    SIGNET_RETURN_IF_ERROR(append(note));
  }
  if (clock_accepted_.has_value()) {
    SIGNET_RETURN_IF_ERROR(append(*clock_accepted_));
    // Recorded: this run measures from the accepted anchor, and so does
    // every restart of this boot once it is stored.
    seen_->Reanchor(accepted_anchor_->wall, accepted_anchor_->elapsed);
    if (absl::Status stored =
            base::StoreWallClockAnchor(anchor_path_, *accepted_anchor_);
        !stored.ok()) {
      SIGNET_LOG_WARN(
          "the accepted wall-clock anchor may not be kept ({}): a restart "
          "may measure from the one before it again",
          stored.message());
    }
  }
  for (const rotation::KeyEvent& e : *audit_key_events) {
    SIGNET_RETURN_IF_ERROR(append(AuditEventOf(e, "signetd")));
  }
  // Which keys sign this run's checkpoints, each vouched for by a
  // checkpoint: audit-verify with the keyring checks this.
  return WriteAtStart(*audit_,
                      [&] { return audit_keys_->Attach(audit_.get()); });
}

absl::Status Daemon::LoadScopes() {
  // The scopes' keys (server/key_manager.h): the first reconcile pass makes,
  // on the writer, each scope's active key and its published standby; the
  // loop then keeps the schedule. After each pass the publisher swaps the
  // keys in and rebuilds the public documents.
  // Fault injection for the crash tests (tests/server/key_rotation_test.cc):
  // signetd kills itself before its N-th token write.
  const int kill_at_write = FaultInjection("SIGNET_TEST_KILL_AT_WRITE");
  if (kill_at_write > 0) {
    SIGNET_LOG_WARN(
        "SIGNET_TEST_KILL_AT_WRITE={}: this process kills itself "
        "before token write {} (fault-injection tests only)",
        kill_at_write, kill_at_write);
  }
  std::vector<InternalScope> internal_scopes;
  internal_scopes.push_back(
      InternalScope{AuditKeys::Policy(config_),
                    [keys = audit_keys_.get()](const rotation::ScopeKeySet& set,
                                               absl::Time now) {
                      return keys->Update(set, now);
                    }});
  // The publisher is set once, before the key manager's loop starts (its
  // passes run on that loop).
  key_manager_ = std::make_unique<KeyManager>(
      store_.get(), config_, audit_.get(), clock_,
      [this](const ScopeKeysMap& scopes) {
        if (publisher_ != nullptr) publisher_->OnKeys(scopes);
      },
      kill_at_write, std::move(internal_scopes), seen_.get());
  if (absl::Status started = key_manager_->Start(); !started.ok()) {
    return started;
  }
  if (previous_run_unstopped_) {
    // A write the killed run made just before it died has no event line;
    // its key_changes line names it, and this says what came of it (a
    // thirteenth outside attack found revocations in the token that the
    // log only announced).
    key_manager_->AuditKeysAtStart(
        "the previous run ended without a stop line, so a key change it "
        "was making may have no event line (its last key_changes line "
        "names the writes it started)");
  }
  for (const auto& scope : config_.scopes()) {
    const ScopeKeys& keys = *key_manager_->Scopes().at(scope.name());
    const absl::Time now = clock_.Now();
    if (std::shared_ptr<const ScopeState> signing = keys.SigningAt(now)) {
      PrintScope(scope, keys, *signing, now);
    } else {
      // Logged by the key manager; here for the person at the terminal.
      std::cout << "scope " << scope.name()
                << " CANNOT SIGN: " << keys.CanSignAt(now).message() << "\n"
                << std::flush;
    }
  }
  return absl::OkStatus();
}

absl::Status Daemon::StartServing() {
  workers_ = std::make_unique<WorkerPool>(
      static_cast<int>(config_.serving().worker_threads()),
      static_cast<int>(config_.serving().queue_size()));
  auto first_serving = std::make_shared<ServingState>();
  first_serving->scopes = key_manager_->Scopes();
  first_serving->store = store_.get();
  first_serving->workers = workers_.get();
  first_serving->audit = audit_.get();
  first_serving->revoked = key_manager_->revoked();
  // The workers (which call it) stop before the key manager is destroyed.
  first_serving->key_gone = [keys = key_manager_.get()] {
    keys->RequestPass();
  };
  // What the replica serves and publishes (GetJwks, GetPublicKeys, and the
  // HTTP endpoint if configured), for the key state now; swapped after each
  // reconcile pass (server/serving_publisher.h).
  absl::StatusOr<std::unique_ptr<ServingPublisher>> publisher =
      ServingPublisher::Create(
          first_serving,
          config_.has_http() ? config_.http().public_base_url() : "", &clock_,
          {.serving =
               [this](std::shared_ptr<const ServingState> state) {
                 signer_->SetServing(std::move(state));
               },
           .documents =
               [this](std::shared_ptr<const PublishedDocuments> documents) {
                 signer_->SetPublished(documents);
                 if (http_ != nullptr) http_->Publish(*documents);
               }},
          seen_.get());
  if (!publisher.ok()) return publisher.status();
  publisher_ = *std::move(publisher);
  if (config_.has_http()) {
    if (absl::Status st = StartHttp(); !st.ok()) return st;
  }
  key_manager_->StartLoop();
  int cannot_sign = 0;
  for (const auto& [name, keys] : key_manager_->Scopes()) {
    cannot_sign += keys->CanSignAt(clock_.Now()).ok() ? 0 : 1;
  }
  if (cannot_sign == 0) {
    SIGNET_LOG_INFO("signetd ready: every scope has a checked, active key");
  } else {
    SIGNET_LOG_WARN(
        "signetd ready: {} of {} scopes cannot sign (NOT_SERVING; why is "
        "logged above and in signetctl status)",
        cannot_sign, key_manager_->Scopes().size());
  }

  // The HSM liveness prober (server/hsm_prober.h).
  HsmProber::Options prober_options;
  prober_options.stalled_after = kStalledCallThreshold;
  // A second before a stuck probe would read as a stalled HSM: the new
  // probe avoids a connection with a call held that long
  // (SessionPool::AcquireForProbe), so one stuck connection while others
  // serve does not turn health NOT_SERVING (a twelfth outside attack saw
  // ~12 s of it when this waited for the pool's stall threshold). A whole
  // HSM stalled sticks the new probe too, or, once a probe is stuck on
  // every connection, gives it no session, and is reported at
  // kStalledCallThreshold, counted from the first probe's call.
  prober_options.replace_stuck_after = kStalledCallThreshold - absl::Seconds(1);
  prober_ = std::make_unique<HsmProber>(
      [pool = pool_.get()](absl::Time deadline) {
        return pool->Probe(deadline);
      },
      prober_options);
  prober_->Start();
  // Held past the longest a change may wait for a session (under load)
  // plus the time the pool abandons a connection: the call the key manager
  // is in may never return.
  const absl::Duration held_after =
      hsm::kAdminSessionWait + pool_options_.stall_threshold + absl::Seconds(2);
  admin_service_->SetBackend(
      key_manager_.get(), audit_.get(),
      [this, held_after]() {
        // What health says, from the same sample.
        ReplicaCondition condition = Sample();
        ReplicaStatus replica;
        replica.hsm = std::move(condition.hsm);
        replica.audit = audit_->WriteStatus();
        replica.listener = std::move(condition.listener);
        replica.scopes = std::move(condition.scopes);
        replica.sessions_total = pool_->Capacity();
        replica.sessions_in_use = pool_->SessionsInUse();
        replica.key_manager = key_manager_->LoopCondition(held_after);
        return replica;
      },
      held_after);
  return absl::OkStatus();
}

absl::Status Daemon::StartHttp() {
  const signet::v1::HttpConfig& config = config_.http();
  JwksHttpOptions http_options;
  http_options.listen_address = config.listen_address();
  http_options.cache_max_age = absl::Seconds(config.cache_max_age_seconds());
  http_options.threads = config.threads();
  http_options.connection_limit = config.max_connections();
  http_options.per_client_connection_limit =
      config.max_connections_per_client();
  http_options.request_deadline =
      absl::Seconds(config.request_deadline_seconds());
  if (!config.tls_cert_file().empty()) {
    absl::StatusOr<std::string> cert =
        base::ReadSmallFile(config.tls_cert_file(), "http.tls_cert_file");
    if (!cert.ok()) return cert.status();
    absl::StatusOr<std::string> key =
        base::ReadSmallFile(config.tls_key_file(), "http.tls_key_file");
    if (!key.ok()) return key.status();
    http_options.tls_cert_pem = std::move(*cert);
    http_options.tls_key_pem = std::move(*key);  // cleansed below
  }
  absl::StatusOr<std::unique_ptr<JwksHttpServer>> started =
      JwksHttpServer::Start(http_options);
  OPENSSL_cleanse(http_options.tls_key_pem.data(),
                  http_options.tls_key_pem.size());
  if (!started.ok()) return started.status();
  http_ = *std::move(started);
  http_->Publish(*publisher_->documents());
  SIGNET_LOG_INFO("JWKS HTTP listening on {}:{} ({}; public base URL {})",
                  http_options.listen_address.substr(
                      0, http_options.listen_address.rfind(':')),
                  http_->port(), http_->tls() ? "TLS" : "plain HTTP",
                  config.public_base_url());
  return absl::OkStatus();
}

int Daemon::grpc_port() const { return acceptor_->port(); }

int Daemon::http_port() const { return http_ != nullptr ? http_->port() : 0; }

absl::Status Daemon::HsmCondition() const {
  return prober_->Condition([workers = workers_.get()] {
    return workers->StuckWorkers(kStalledCallThreshold);
  });
}

ReplicaCondition Daemon::Sample() const {
  ReplicaCondition condition;
  condition.hsm = HsmCondition();
  if (absl::Status audit_status = audit_->WriteStatus(); !audit_status.ok()) {
    condition.audit = absl::UnavailableError(
        absl::StrCat("the audit log cannot be written, so nothing is signed: ",
                     audit_status.message()));
  }
  if (acceptor_->BudgetSpent()) {
    condition.listener = absl::UnavailableError(absl::StrCat(
        "the gRPC listener refuses new connections: its descriptor budget "
        "(",
        acceptor_->budget_end(), ") is spent"));
  }
  const absl::Time now = clock_.Now();
  for (const auto& [name, scope] : publisher_->serving()->scopes) {
    condition.scopes[name] = scope->CanSignAt(now);
  }
  return condition;
}

void Daemon::UpdateHealth() {
  ReplicaCondition condition = Sample();
  signer_->SetHsmCondition(condition.hsm);
  health_monitor_->Update(condition);
}

bool Daemon::ReportRefusals() {
  const std::map<std::string, std::string> report = refusals_.Take();
  for (const auto& [result, what] : report) {
    SIGNET_LOG_WARN("{}", what);
    AuditEvent refusal;
    refusal.event = "refuse";
    refusal.caller = "unidentified";
    refusal.result = result;
    refusal.detail = what;
    audit_->AppendRefusal(refusal);
  }
  return !report.empty();
}

void Daemon::RunUntilStopped() {
  UpdateHealth();
  absl::Duration last_report_monotonic = -absl::InfiniteDuration();
  // This loop's wait is a monotonic timeout, so it runs every second
  // whatever the wall clock does.
  base::WallClockStepDetector steps(clock_);
  // Each pass's clock reading is compared with a sample once: if they
  // agree, a later step is one the samples see. Passes that began before
  // a step seen here are not compared (a pass was asked for).
  absl::Duration passes_checked_until = -absl::InfiniteDuration();
  while (!StopRequested(absl::Seconds(1), [this] { audit_->RollOver(); })) {
    const absl::Duration step = steps.Sample();
    if (step != absl::ZeroDuration()) {
      // The key manager's wait ends on the wall clock: a step back
      // stretches it by the step. A pass now publishes what the clock says
      // (a key held while the clock read ahead is published again).
      SIGNET_LOG_WARN(
          "the wall clock stepped {} ({}); the key manager runs a pass now",
          absl::FormatDuration(absl::Trunc(step, absl::Seconds(1))),
          step > absl::ZeroDuration() ? "forward" : "back");
      if (step < absl::ZeroDuration()) LowerWallClockAnchor();
      key_manager_->RequestPass();
      passes_checked_until = clock_.Elapsed();
    } else if (const KeyManager::PassStatus pass = key_manager_->LastPass();
               pass.elapsed > passes_checked_until) {
      passes_checked_until = pass.elapsed;
      // A step that came and went between two samples, which the last
      // pass read: what it published follows that clock (a key whose
      // grace seemed over withdrawn) until its next pass, which the step
      // may have put off by its size.
      if (const absl::Duration off = steps.OffsetOf(pass.at, pass.elapsed);
          off != absl::ZeroDuration()) {
        SIGNET_LOG_WARN(
            "the key manager's last pass read the wall clock {} {} of where "
            "it stands now (a step that came and went between two samples); "
            "the key manager runs a pass now",
            absl::FormatDuration(
                absl::Trunc(absl::AbsDuration(off), absl::Seconds(1))),
            off > absl::ZeroDuration() ? "ahead" : "behind");
        key_manager_->RequestPass();
        passes_checked_until = clock_.Elapsed();
      }
    }
    key_manager_->Tick();
    UpdateHealth();
    if (base::MonotonicNow() - last_report_monotonic >= absl::Seconds(10) &&
        ReportRefusals()) {
      last_report_monotonic = base::MonotonicNow();
    }
  }
}

int Daemon::Stop() {
  StopPhases phases(absl::Seconds(2));
  ReportRefusals();
  acceptor_->Stop();  // no new connection from here on
  phases.Enter("waiting for the key manager's pass (at most 4 s)");
  // A key-manager pass (or an operator's call) inside a stalled HSM cannot
  // be cancelled; it is not waited for past 3 s.
  // Bounded as a whole: what Stop does after the loop (answering queued
  // operator calls, writing kept key events) waits for the audit log,
  // whose writer may be signing a checkpoint in a stalled HSM.
  auto stopped = std::make_shared<std::atomic<bool>>(false);
  const bool key_manager_stopped =
      FinishesWithin(absl::Seconds(4),
                     [key_manager = key_manager_.get(), stopped] {
                       stopped->store(key_manager->Stop(absl::Seconds(3)));
                     }) &&
      stopped->load();
  health_monitor_->SetAllNotServing("stopping");
  phases.Enter(
      "answering the calls in flight and shutting the gRPC server down (at "
      "most 5 s)");
  // Bounded as a whole: gRPC's shutdown waits for every handler to return,
  // and one waiting on a disk that does not answer (a frozen audit file
  // system) never does (a fifteenth outside attack: the stop hung until the
  // supervisor's SIGKILL). Nothing durable can be written then either.
  if (!FinishesWithin(absl::Seconds(6),
                      [this] { StopServing(absl::Seconds(5)); })) {
    SIGNET_LOG_ERROR(
        "the gRPC server did not shut down within 6 s: a call is stuck (the "
        "audit log's disk not answering?); exiting without the audit log's "
        "stop line (the next start records that this run did not end "
        "cleanly)");
    std::_Exit(options_.exit_code_if_hsm_stuck);
  }
  phases.Enter("waiting for the signing workers (at most 30 s)");
  // Every call is answered now. The workers finish the part of a batch
  // they are on (a few signatures) and skip the queued work of answered
  // calls: a pool that is only busy, as under load, is waited for. A
  // stalled or unreachable HSM (what health reports) is not, and neither is
  // a pool still busy after the longest an RPC may take.
  const absl::Duration give_up_monotonic =
      base::MonotonicNow() + absl::Seconds(30);
  // Nor is a worker in one HSM call for longer than the pool waits before
  // it abandons a connection: the HSM may serve again on a new one (so
  // health says SERVING), but that call never returns (a tenth outside
  // attack: a stop waited the whole 30 s for it).
  bool workers_idle = workers_->WaitIdle(absl::ZeroDuration());
  while (!workers_idle && HsmCondition().ok() &&
         workers_->StuckWorkers(pool_options_.stall_threshold) == 0 &&
         base::MonotonicNow() < give_up_monotonic) {
    workers_idle = workers_->WaitIdle(absl::Milliseconds(200));
  }
  // A call stuck in a stalled HSM cannot be cancelled, and C_Finalize would
  // block on it too: leave without closing the HSM rather than hang.
  phases.Enter("waiting for the HSM prober (at most 3 s)");
  if (!key_manager_stopped || !workers_idle ||
      !prober_->Stop(absl::Seconds(3))) {
    SIGNET_LOG_WARN(
        "an HSM call is stuck (stalled HSM); exiting without "
        "closing the HSM connections");
    // A checkpoint falling due would wait for the HSM before this line.
    // When health says the HSM serves (the stuck call is on a connection
    // the pool abandoned), a final checkpoint is tried too.
    const bool hsm_serving = HsmCondition().ok();
    (void)FinishesWithin(
        absl::Seconds(hsm_serving ? 3 : 2), [this, hsm_serving] {
          AuditEvent stop_event;
          stop_event.event = "stop";
          stop_event.result = "OK";
          stop_event.detail =
              hsm_serving ? "an HSM call did not return in time while the HSM "
                            "served others (a connection the pool abandoned, "
                            "or a pass or batch that overran); exiting without "
                            "closing the HSM connections"
                          : "HSM stalled; no final checkpoint";
          if (audit_->Append(stop_event).ok()) RemoveRunMarker();
          if (hsm_serving) (void)audit_->Checkpoint();
        });
    workers_->Detach();
    std::_Exit(options_.exit_code_if_hsm_stuck);
  }
  // The pool is idle (above): this only joins its threads, while the audit
  // log they wrote to is still there.
  phases.Enter("joining the signing workers");
  workers_->Join();
  // The stop line (a checkpoint falling due signs in the HSM first), the
  // audit key brought up to date, and the final checkpoint signed by it:
  // an HSM that stalled after the checks above holds them for good (an
  // eighth outside attack: a stop right after a stall waited for the HSM
  // to come back).
  phases.Enter(
      "writing the audit log's stop line and final checkpoint (at most 5 s)");
  if (!FinishesWithin(absl::Seconds(5), [this] {
        AuditEvent stop_event;
        stop_event.event = "stop";
        stop_event.result = "OK";
        if (audit_->Append(stop_event).ok()) RemoveRunMarker();
        // The audit key's successor may have taken over since the key
        // manager's last pass: the final checkpoint is signed by the key
        // that may sign now.
        if (absl::Status st = audit_keys_->Refresh(clock_.Now()); !st.ok()) {
          SIGNET_LOG_WARN(
              "the audit key could not be brought up to date for the "
              "final checkpoint: {}",
              st.ToString());
        }
        audit_.reset();  // final checkpoint, signed by the audit key
      })) {
    SIGNET_LOG_WARN(
        "the audit log's last lines wait for the HSM or the audit log's "
        "disk (stalled: health said which); exiting without its final "
        "checkpoint (the next start goes on from the last line written)");
    std::_Exit(options_.exit_code_if_hsm_stuck);
  }
  ExitIfACheckpointSignatureIsHeld();
  phases.Enter("closing the key store");
  // The key store takes its handle warmer off the pool in its destructor:
  // it goes before the pool does. (It went after, when the daemon was
  // destroyed, into a freed pool: a heap corruption at every clean stop
  // that signetd's allocator hid, and the in-process schedule test found.)
  // Whatever else holds the store is stopped: the key manager's loop, the
  // workers, the gRPC server.
  audit_keys_.reset();
  store_.reset();
  phases.Enter("closing the HSM connections (at most 5 s)");
  if (!FinishesWithin(absl::Seconds(5), [p = pool_.release()] { delete p; })) {
    SIGNET_LOG_WARN("closing the HSM connections did not finish; exiting");
    std::_Exit(options_.exit_code_if_hsm_stuck);
  }
  SIGNET_LOG_INFO("signetd stopped");
  return 0;
}

}  // namespace signet::server
