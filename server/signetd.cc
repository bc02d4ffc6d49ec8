// signetd: the signing service.
//
// Today it does the HSM part of the service: it opens the token through the
// configured PKCS#11 module (p11-kit-client.so behind `p11-kit server` by
// default), makes sure every configured scope has an ACTIVE key (creating
// one on first run), checks every key before use, prints each scope's kid
// and public key, and serves the gRPC health service (overall and one entry
// per scope), server reflection when configured, the Signer service over
// mTLS, and the JWKS HTTP endpoint when configured.
//
// `signetd audit-verify FILE` checks an audit log
// (server/audit_verify_command.h).
#include <fcntl.h>
#include <google/protobuf/stubs/logging.h>
#include <grpc/support/log.h>
#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/impl/server_builder_option.h>
#include <grpcpp/impl/server_builder_plugin.h>
#include <grpcpp/resource_quota.h>
#include <grpcpp/security/server_credentials.h>
#include <grpcpp/security/tls_certificate_provider.h>
#include <grpcpp/security/tls_credentials_options.h>
#include <openssl/crypto.h>
#include <openssl/pem.h>
#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <iostream>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/cleanup/cleanup.h"
#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/status/status.h"
#include "absl/strings/escaping.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "base/clock.h"
#include "base/file.h"
#include "base/log.h"
#include "base/throttled_log.h"
#include "hsm/key_store.h"
#include "hsm/module.h"
#include "hsm/pin.h"
#include "hsm/session_pool.h"
#include "hsm/token_uri.h"
#include "rotation/key_state.h"
#include "rotation/scope_keys.h"
#include "server/admin_service.h"
#include "server/audit_keys.h"
#include "server/audit_log.h"
#include "server/audit_verify.h"
#include "server/audit_verify_command.h"
#include "server/config.h"
#include "server/connection_acceptor.h"
#include "server/hardening.h"
#include "server/health_monitor.h"
#include "server/health_service.h"
#include "server/hsm_prober.h"
#include "server/jwks_http.h"
#include "server/key_manager.h"
#include "server/publication.h"
#include "server/scoped_fd.h"
#include "server/signer_service.h"
#include "server/tls.h"
#include "server/unknown_method_service.h"
#include "server/worker_pool.h"

ABSL_FLAG(std::string, config, "",
          "Path of the configuration file (text format of "
          "signet.v1.SignetConfig, proto/signet/v1/config.proto).");
ABSL_FLAG(bool, insecure_in_process_module, false,
          "DEVELOPMENT ONLY: allow a PKCS#11 module other than "
          "p11-kit-client.so, loaded into signetd's own address space, where "
          "key material could end up in a core dump.");
ABSL_FLAG(bool, log_json, false, "Write logs as JSON lines.");
ABSL_FLAG(bool, insecure_plaintext, false,
          "DEVELOPMENT ONLY: serve gRPC without TLS, on a loopback address "
          "only. Callers then have the identity \"insecure:plaintext\".");
namespace signet::server {
namespace {

using signet::v1::SignetConfig;

// A probe call that has not returned after this long means a stalled HSM;
// so does a worker held this long by one task while the probe cannot get a
// session (tasks are bounded by deadlines and take milliseconds).
constexpr absl::Duration kStalledCallThreshold = absl::Seconds(3);

// gRPC's and protobuf's own lines, at most 20 a minute: a flood of
// malformed requests must not become a flood of logs (protobuf logs every
// parse failure).
log::ThrottledLog& LibraryLogs() {
  static log::ThrottledLog* log =
      new log::ThrottledLog("", 20, absl::Minutes(1));
  return *log;
}

void GrpcLogToOurs(gpr_log_func_args* args) {
  if (args->severity < GPR_LOG_SEVERITY_ERROR) return;
  LibraryLogs().Warn([&] {
    return absl::StrCat("grpc: ", args->message, " (", args->file, ":",
                        args->line, ")");
  });
}

void ProtobufLogToOurs(google::protobuf::LogLevel level, const char* filename,
                       int line, const std::string& message) {
  if (level < google::protobuf::LOGLEVEL_WARNING) return;
  LibraryLogs().Warn([&] {
    return absl::StrCat("protobuf: ", message, " (", filename, ":", line, ")");
  });
}

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

int Fail(const absl::Status& status) {
  SIGNET_LOG_ERROR("signetd cannot start: {}", status.ToString());
  return 1;
}

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
      SIGNET_LOG_INFO("received SIGHUP before the audit log is open; ignored");
    }
  }
  return false;
}

std::string ClassName(signet::v1::AudienceClass c) {
  return signet::v1::AudienceClass_Name(c);
}

// The start-up summary of a scope on standard output: its signing key, its
// standby, and the signing key's public key.
void PrintScope(const signet::v1::ScopeConfig& scope, const ScopeKeys& keys,
                const ScopeState& signing, absl::Time now) {
  absl::StatusOr<std::string> pem = signing.key.public_key->SpkiPem();
  std::string standby = "none yet";
  if (const rotation::KeyRecord* r = keys.StandbyAt(now)) {
    standby =
        absl::StrCat(r->kid(), ", signs from ",
                     absl::FormatTime("%Y-%m-%dT%H:%M:%SZ",
                                      rotation::TimeFromProto(r->activate_at()),
                                      absl::UTCTimeZone()));
  }
  SIGNET_LOG_INFO(
      "scope {}: key generation {} kid {} checked and active; signs until "
      "{}, published until {}; standby {}",
      scope.name(), signing.record.key_generation(), signing.key.thumbprint,
      absl::FormatTime("%Y-%m-%dT%H:%M:%SZ",
                       rotation::TimeFromProto(signing.record.retire_at()),
                       absl::UTCTimeZone()),
      absl::FormatTime("%Y-%m-%dT%H:%M:%SZ",
                       rotation::TimeFromProto(signing.record.unpublish_at()),
                       absl::UTCTimeZone()),
      standby);
  std::cout << "scope " << scope.name() << " ("
            << ClassName(scope.audience_class()) << ", "
            << signet::v1::Purpose_Name(scope.purpose()) << ", iss "
            << scope.issuer() << ")\n"
            << "  alg " << keys.alg() << "  kid " << signing.key.thumbprint
            << "\n"
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
  absl::StatusOr<std::string> ca =
      base::ReadSmallFile(tls.client_ca_file(), "tls.client_ca_file");
  if (!ca.ok()) return ca.status();
  if (!tls.crl_directory().empty()) {
    absl::Status crls = CheckCrlDirectory(*ca, tls.crl_directory());
    if (!crls.ok()) return crls;
  }
  auto provider =
      std::make_shared<grpc::experimental::StaticDataCertificateProvider>(
          *ca,
          std::vector<grpc::experimental::IdentityKeyCertPair>{{*key, *cert}});
  grpc::experimental::TlsServerCredentialsOptions options(provider);
  options.watch_root_certs();
  options.watch_identity_key_cert_pairs();
  options.set_cert_request_type(
      GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY);
  if (!tls.crl_directory().empty()) {
    options.set_crl_directory(tls.crl_directory());
  }
  // The transport key's copy is no longer needed here.
  OPENSSL_cleanse(key->data(), key->size());
  return grpc::experimental::TlsServerCredentials(options);
}

int Run() {
  // Before any thread exists: every thread inherits the blocked mask, so
  // only the main loop's sigtimedwait sees SIGINT/SIGTERM.
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGINT);
  sigaddset(&stop_signals, SIGTERM);
  sigaddset(&stop_signals, SIGHUP);
  pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);
  // A file that may not grow (RLIMIT_FSIZE) fails the write with EFBIG,
  // which the audit log handles, instead of killing signetd.
  signal(SIGXFSZ, SIG_IGN);

  absl::Status hardened = HardenProcess();
  if (!hardened.ok()) return Fail(hardened);
  // The one wall clock every part below decides by (base/clock.h).
  const base::Clock& clock = base::SystemClock();
  int open_files_before = 0;
  const int open_files = RaiseOpenFileLimit(&open_files_before);
  SIGNET_LOG_INFO("open-file limit {}{}", open_files,
                  open_files == open_files_before
                      ? std::string(" (the hard limit)")
                      : absl::StrCat(" (raised from ", open_files_before,
                                     " to the hard limit)"));

  const std::string config_path = absl::GetFlag(FLAGS_config);
  if (config_path.empty()) {
    return Fail(absl::InvalidArgumentError("--config is required"));
  }
  ConfigOptions config_options;
  config_options.insecure_plaintext = absl::GetFlag(FLAGS_insecure_plaintext);
  absl::StatusOr<SignetConfig> config =
      LoadConfigFile(config_path, config_options);
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
  absl::StatusOr<hsm::Pin> pin =
      hsm_config.pin_file().empty() ? hsm::Pin::FromEnv(hsm_config.pin_env())
                                    : hsm::Pin::FromFile(hsm_config.pin_file());
  if (!pin.ok()) return Fail(pin.status());

  // gRPC first, NOT_SERVING until the HSM is reachable and every scope has
  // a checked key: a load balancer sees "not ready", never "no keys".
  std::shared_ptr<grpc::ServerCredentials> credentials;
  if (config_options.insecure_plaintext) {
    SIGNET_LOG_WARN(
        "INSECURE: gRPC in plain text (--insecure_plaintext); "
        "callers are not authenticated. Development only.");
    credentials = grpc::InsecureServerCredentials();
  } else {
    absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> tls =
        MakeServerCredentials(config->tls());
    if (!tls.ok()) return Fail(tls.status());
    credentials = *tls;
  }
  SignerServiceOptions signer_options;
  signer_options.clock = &clock;
  signer_options.iat_skew = absl::Seconds(config->serving().iat_skew_seconds());
  signer_options.max_batch_size =
      static_cast<int>(config->serving().max_batch_size());
  signer_options.plaintext = config_options.insecure_plaintext;
  signer_options.max_answer_memory_bytes =
      int64_t{config->serving().max_answer_memory_mib()} << 20;
  const signet::v1::GrpcConfig& grpc_limits = config->grpc();
  std::vector<signet::v1::TenantConfig> tenants(config->tenants().begin(),
                                                config->tenants().end());

  // signetd accepts the gRPC port's connections itself and hands them to
  // gRPC, so the acceptor can neither die nor spend the last descriptors
  // (server/connection_acceptor.h).
  // Its budget leaves the HTTP endpoint's slots and the reserve (HSM
  // sockets, audit files) to them.
  const int http_slots =
      config->has_http() ? static_cast<int>(config->http().max_connections())
                         : 0;
  absl::StatusOr<std::unique_ptr<ConnectionAcceptor>> acceptor =
      ConnectionAcceptor::Bind(
          config->grpc_listen_address(),
          static_cast<int>(grpc_limits.reserved_file_descriptors()) +
              http_slots,
          static_cast<int>(grpc_limits.max_connections_per_address()));
  if (!acceptor.ok()) return Fail(acceptor.status());
  // Calls whose request message has not come yet: bounded in number and in
  // time, and a connection that resets them early is closed
  // (server/one_request_call.h).
  const int max_request_bytes = MaxRequestBytes(signer_options.max_batch_size);
  RequestWaitLimits wait_limits;
  wait_limits.max_waiting =
      static_cast<int>(grpc_limits.max_calls_awaiting_request());
  wait_limits.timeout = absl::Seconds(grpc_limits.request_timeout_seconds());
  wait_limits.max_request_bytes = max_request_bytes;
  ConnectionAcceptor* const connections = acceptor->get();
  RequestWaits request_waits(
      wait_limits, [connections](const std::string& peer) {
        // Its address may not come back for a while:
        // a rapid-reset client reconnects at once.
        return connections->CloseConnection(peer, absl::Seconds(30));
      });
  SignerService signer(signer_options, tenants, &request_waits);
  AdminServiceOptions admin_options;
  admin_options.admins.assign(config->admins().begin(), config->admins().end());
  admin_options.plaintext = config_options.insecure_plaintext;
  admin_options.clock = &clock;
  AdminService admin_service(admin_options, &request_waits);
  // Health is ours: gRPC's default service has no bound on Watch streams.
  std::atomic<uint64_t> refused_watches{0};
  std::atomic<uint64_t> malformed_health{0};
  std::atomic<uint64_t> oversized_health{0};
  HealthService health_service(
      static_cast<int>(grpc_limits.max_health_watchers()), &request_waits,
      [&](HealthService::Refusal refusal) {
        switch (refusal) {
          case HealthService::Refusal::kWatch:
            refused_watches.fetch_add(1);
            break;
          case HealthService::Refusal::kMalformed:
            malformed_health.fetch_add(1);
            break;
          case HealthService::Refusal::kOversized:
            oversized_health.fetch_add(1);
            break;
        }
      });
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  UnknownMethodService unknown_methods;  // outlives the server
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
  builder.AddChannelArgument(
      GRPC_ARG_MAX_CONCURRENT_STREAMS,
      static_cast<int>(grpc_limits.max_concurrent_streams()));
  builder.AddChannelArgument(
      GRPC_ARG_SERVER_HANDSHAKE_TIMEOUT_MS,
      static_cast<int>(grpc_limits.handshake_timeout_seconds()) * 1000);
  builder.AddChannelArgument(
      GRPC_ARG_MAX_CONNECTION_IDLE_MS,
      static_cast<int>(grpc_limits.max_connection_idle_seconds()) * 1000);
  builder.AddChannelArgument(
      GRPC_ARG_MAX_CONNECTION_AGE_MS,
      static_cast<int>(grpc_limits.max_connection_age_seconds()) * 1000);
  builder.AddChannelArgument(
      GRPC_ARG_MAX_CONNECTION_AGE_GRACE_MS,
      static_cast<int>(grpc_limits.max_connection_age_grace_seconds()) * 1000);
  builder.AddChannelArgument(
      GRPC_ARG_KEEPALIVE_TIME_MS,
      static_cast<int>(grpc_limits.keepalive_time_seconds()) * 1000);
  builder.AddChannelArgument(
      GRPC_ARG_KEEPALIVE_TIMEOUT_MS,
      static_cast<int>(grpc_limits.keepalive_timeout_seconds()) * 1000);
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
  builder.RegisterService(&signer);
  builder.RegisterService(&admin_service);
  builder.RegisterService(&health_service);
  // Every other method: UNIMPLEMENTED with a message, counted
  // (server/unknown_method_service.h).
  builder.RegisterCallbackGenericService(&unknown_methods);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (server == nullptr) {
    return Fail(absl::UnavailableError(absl::StrCat(
        "cannot start the gRPC server on ", config->grpc_listen_address())));
  }
  // Every way out from here on ends the gRPC server with a deadline:
  // ~Server alone waits for every call, and a client's health Watch never
  // ends by itself, so a start-up that failed (or was stopped) after this
  // point hung for as long as any client watched.
  bool serving_stopped = false;
  auto stop_serving = [&](absl::Duration grace) {
    if (serving_stopped) return;
    serving_stopped = true;
    (*acceptor)->Stop();        // no new connection from here on
    health_service.Shutdown();  // watchers hear NOT_SERVING, then the end
    // Calls a stalled HSM holds are answered within the shutdown's grace.
    signer.CutOffPendingCalls(absl::Now() + grace - absl::Seconds(1));
    request_waits.CutOff(absl::Now());
    server->Shutdown(std::chrono::system_clock::now() +
                     absl::ToChronoSeconds(grace));
  };
  absl::Cleanup stop_serving_on_return = [&] {
    stop_serving(absl::Seconds(2));
  };
  (*acceptor)->Start(std::move(grpc_acceptor));
  std::vector<std::string> scope_names;
  for (const auto& scope : config->scopes())
    scope_names.push_back(scope.name());
  HealthMonitor health_monitor(
      scope_names, [&health_service](const std::string& service, bool serving) {
        health_service.Set(service, serving);
      });
  health_monitor.SetAllNotServing("starting: waiting for the HSM and keys");
  const std::string listen_host = config->grpc_listen_address().substr(
      0, config->grpc_listen_address().rfind(':'));
  SIGNET_LOG_INFO(
      "gRPC (Signer, Admin, health{}) listening on {}:{} ({}; at most {} "
      "descriptors for connections, {} per address, {} streams each, {} MiB, "
      "requests up to {} bytes)",
      grpc_limits.reflection() ? ", reflection" : "", listen_host,
      (*acceptor)->port(),
      config_options.insecure_plaintext ? "plain text" : "mTLS, TLS 1.3 only",
      (*acceptor)->budget_end(), grpc_limits.max_connections_per_address(),
      grpc_limits.max_concurrent_streams(), grpc_limits.max_memory_mib(),
      max_request_bytes);

  hsm::SessionPoolOptions pool_options;
  pool_options.connections = static_cast<int>(hsm_config.connections());
  pool_options.sessions_per_connection =
      static_cast<int>(hsm_config.sessions_per_connection());
  std::unique_ptr<hsm::SessionPool> pool;
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
    std::thread([opening, connector = std::move(*connector), uri = *token_uri,
                 pin_copy = hsm::Pin::FromBytes(absl::string_view(
                     reinterpret_cast<const char*>(pin->data()), pin->size())),
                 pool_options]() mutable {
      opening->result = hsm::SessionPool::Create(
          std::move(connector), uri, std::move(pin_copy), pool_options);
      opening->done.Notify();
    }).detach();
    while (!opening->done.WaitForNotificationWithTimeout(
        absl::Milliseconds(200))) {
      if (StopRequested(absl::ZeroDuration())) {
        SIGNET_LOG_WARN(
            "stopping while the HSM has not answered its opening calls "
            "(stalled HSM); exiting without waiting for them");
        std::_Exit(0);
      }
    }
    absl::StatusOr<std::unique_ptr<hsm::SessionPool>> created =
        std::move(opening->result);
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
          supported.code(),
          absl::StrCat("scope ", scope.name(), ": ", supported.message())));
    }
  }
  absl::StatusOr<std::map<std::string, hsm::StoredRecord>> stored =
      store.ReadAllRecords();
  if (!stored.ok()) return Fail(stored.status());
  int unreadable = 0;
  (void)rotation::ParseRecords(*stored, &unreadable);
  if (unreadable > 0) {
    SIGNET_LOG_WARN(
        "{} key record(s) in the token could not be read and are "
        "ignored",
        unreadable);
  }
  // The audit checkpoint key (server/audit_keys.h): a first pass over its
  // scope alone, before the log opens (its events are written once the log
  // is open); the key manager's passes keep it on the schedule from then on.
  AuditKeys audit_keys(&store, config->audit_log_path(), clock);
  std::vector<rotation::KeyEvent> audit_key_events;
  {
    rotation::KeyReconciler first_pass(
        &store, {AuditKeys::Policy(*config)}, !config->never_create_keys(),
        [&audit_key_events](const rotation::KeyEvent& e) {
          audit_key_events.push_back(e);
        });
    absl::StatusOr<std::map<std::string, rotation::ScopeKeySet>> sets =
        first_pass.RunOnce(clock.Now());
    if (!sets.ok()) return Fail(sets.status());
    auto set = sets->find(AuditKeys::kScope);
    if (set == sets->end()) {
      return Fail(absl::FailedPreconditionError(
          "the HSM token holds no audit checkpoint key"));
    }
    if (absl::Status st = audit_keys.Update(set->second, clock.Now());
        !st.ok()) {
      if (config->never_create_keys() && absl::IsFailedPrecondition(st)) {
        return Fail(absl::FailedPreconditionError(absl::StrCat(
            st.message(),
            "; this replica does not create keys "
            "(never_create_keys): start the replica that writes keys first")));
      }
      return Fail(st);
    }
  }
  AuditLogOptions audit_options;
  audit_options.clock = &clock;
  audit_options.path = config->audit_log_path();
  audit_options.checkpoint_kid = audit_keys.current_kid();
  audit_options.sign_checkpoint = audit_keys.Signer();
  audit_options.syslog_socket = config->audit_syslog_socket();
  audit_options.group_commit_delay =
      absl::Microseconds(config->serving().audit_group_commit_delay_us());
  audit_options.segment_max_bytes =
      uint64_t{config->serving().audit_segment_max_mib()} << 20;
  audit_options.segment_max_age =
      absl::Hours(config->serving().audit_segment_max_age_hours());
  // Fault injection for the torn-line test (tests/server/signer_test.cc):
  // the audit writer writes half of line N, then kills this process.
  if (const char* env = std::getenv("SIGNET_TEST_KILL_MID_AUDIT_LINE");
      env != nullptr && absl::SimpleAtoi(env, &audit_options.kill_mid_line) &&
      audit_options.kill_mid_line > 0) {
    SIGNET_LOG_WARN(
        "SIGNET_TEST_KILL_MID_AUDIT_LINE={}: this process kills "
        "itself in the middle of audit line {} (fault-injection "
        "tests only)",
        audit_options.kill_mid_line, audit_options.kill_mid_line);
  }
  absl::StatusOr<std::unique_ptr<AuditLog>> audit =
      AuditLog::Open(std::move(audit_options));
  if (!audit.ok()) return Fail(audit.status());
  AuditEvent start_event;
  start_event.event = "start";
  start_event.result = "OK";
  start_event.detail = absl::StrCat("signetd pid ", getpid());
  absl::Status started = (*audit)->Append(start_event);
  if (!started.ok()) return Fail(started);
  for (const rotation::KeyEvent& e : audit_key_events) {
    if (absl::Status st = (*audit)->Append(AuditEventOf(e, "signetd"));
        !st.ok()) {
      return Fail(st);
    }
  }
  // Which keys sign this run's checkpoints, each vouched for by a
  // checkpoint: audit-verify with the keyring checks this.
  if (absl::Status st = audit_keys.Attach(audit->get()); !st.ok()) {
    return Fail(st);
  }

  if (config->allow_short_key_schedules()) {
    SIGNET_LOG_WARN(
        "allow_short_key_schedules is set: rotation periods under "
        "an hour are allowed (tests and demos only)");
  }
  // The scopes' keys (server/key_manager.h): the first reconcile pass makes,
  // on the writer, each scope's active key and its published standby; the
  // loop then keeps the schedule. After each pass the keys are swapped in
  // and the public documents rebuilt (`on_keys`, set below once the
  // documents exist).
  // Set once, before the key manager's loop starts (it runs on that loop).
  std::function<void(const ScopeKeysMap&)> on_keys;
  // Fault injection for the crash tests (tests/server/key_rotation_test.cc):
  // signetd kills itself before its N-th token write.
  int kill_at_write = 0;
  if (const char* env = std::getenv("SIGNET_TEST_KILL_AT_WRITE");
      env != nullptr && absl::SimpleAtoi(env, &kill_at_write) &&
      kill_at_write > 0) {
    SIGNET_LOG_WARN(
        "SIGNET_TEST_KILL_AT_WRITE={}: this process kills itself "
        "before token write {} (fault-injection tests only)",
        kill_at_write, kill_at_write);
  }
  std::vector<InternalScope> internal_scopes;
  internal_scopes.push_back(InternalScope{
      AuditKeys::Policy(*config),
      [&audit_keys](const rotation::ScopeKeySet& keys, absl::Time now) {
        return audit_keys.Update(keys, now);
      }});
  KeyManager key_manager(
      &store, *config, audit->get(), clock,
      [&on_keys](const ScopeKeysMap& scopes) {
        if (on_keys) on_keys(scopes);
      },
      kill_at_write, std::move(internal_scopes));
  if (absl::Status started = key_manager.Start(); !started.ok()) {
    return Fail(started);
  }
  for (const auto& scope : config->scopes()) {
    const ScopeKeys& keys = *key_manager.Scopes().at(scope.name());
    const absl::Time now = clock.Now();
    PrintScope(scope, keys, *keys.SigningAt(now), now);
  }
  WorkerPool workers(static_cast<int>(config->serving().worker_threads()),
                     static_cast<int>(config->serving().queue_size()));
  auto first_serving = std::make_shared<ServingState>();
  first_serving->scopes = key_manager.Scopes();
  first_serving->store = &store;
  first_serving->workers = &workers;
  first_serving->audit = audit->get();
  signer.SetServing(first_serving);
  // What the replica serves now; replaced after each reconcile pass.
  struct CurrentServing {
    absl::Mutex mu;
    std::shared_ptr<const ServingState> state ABSL_GUARDED_BY(mu);
  };
  auto current_serving = std::make_shared<CurrentServing>();
  {
    absl::MutexLock lock(&current_serving->mu);
    current_serving->state = first_serving;
  }
  auto serving_now = [current_serving] {
    absl::MutexLock lock(&current_serving->mu);
    return current_serving->state;
  };
  // The public documents (GetJwks, GetPublicKeys, and the HTTP endpoint
  // if configured), for the key state now; rebuilt by the publisher thread
  // below whenever a key's state changes.
  const std::string public_base_url =
      config->has_http() ? config->http().public_base_url() : "";
  absl::StatusOr<PublishedDocuments> documents = BuildPublishedDocuments(
      first_serving->scopes, public_base_url, clock.Now());
  if (!documents.ok()) return Fail(documents.status());
  auto published =
      std::make_shared<const PublishedDocuments>(*std::move(documents));
  signer.SetPublished(published);
  std::unique_ptr<JwksHttpServer> http;
  if (config->has_http()) {
    JwksHttpOptions http_options;
    http_options.listen_address = config->http().listen_address();
    http_options.cache_max_age =
        absl::Seconds(config->http().cache_max_age_seconds());
    http_options.threads = config->http().threads();
    http_options.connection_limit = config->http().max_connections();
    http_options.per_client_connection_limit =
        config->http().max_connections_per_client();
    http_options.request_deadline =
        absl::Seconds(config->http().request_deadline_seconds());
    if (!config->http().tls_cert_file().empty()) {
      absl::StatusOr<std::string> cert = base::ReadSmallFile(
          config->http().tls_cert_file(), "http.tls_cert_file");
      if (!cert.ok()) return Fail(cert.status());
      absl::StatusOr<std::string> key = base::ReadSmallFile(
          config->http().tls_key_file(), "http.tls_key_file");
      if (!key.ok()) return Fail(key.status());
      http_options.tls_cert_pem = std::move(*cert);
      http_options.tls_key_pem = std::move(*key);  // cleansed below
    }
    absl::StatusOr<std::unique_ptr<JwksHttpServer>> started =
        JwksHttpServer::Start(http_options);
    OPENSSL_cleanse(http_options.tls_key_pem.data(),
                    http_options.tls_key_pem.size());
    if (!started.ok()) return Fail(started.status());
    http = std::move(*started);
    http->Publish(*published);
    SIGNET_LOG_INFO("JWKS HTTP listening on {}:{} ({}; public base URL {})",
                    http_options.listen_address.substr(
                        0, http_options.listen_address.rfind(':')),
                    http->port(), http->tls() ? "TLS" : "plain HTTP",
                    config->http().public_base_url());
  }
  // Keys move through their schedule with the clock (docs/architecture.md,
  // "Rotation"): after each reconcile pass (at each boundary, every
  // interval, after an operator's change) the scopes' keys are swapped and
  // the documents rebuilt, and replaced when their bytes differ, so a
  // standby appears, a retired key stays, and an unpublished or revoked key
  // leaves every set at its time, not at the next restart.
  auto current_documents =
      std::make_shared<std::shared_ptr<const PublishedDocuments>>(published);
  on_keys = [&, current_documents](const ScopeKeysMap& scopes) {
    std::shared_ptr<const ServingState> previous = serving_now();
    auto next = std::make_shared<ServingState>(*previous);
    next->scopes = scopes;
    signer.SetServing(next);
    {
      absl::MutexLock lock(&current_serving->mu);
      current_serving->state = next;
    }
    absl::StatusOr<PublishedDocuments> rebuilt =
        BuildPublishedDocuments(scopes, public_base_url, clock.Now());
    if (!rebuilt.ok()) {
      SIGNET_LOG_ERROR("rebuilding the published key sets failed: {}",
                       rebuilt.status().ToString());
      return;
    }
    if (*rebuilt == **current_documents) return;
    *current_documents =
        std::make_shared<const PublishedDocuments>(*std::move(rebuilt));
    signer.SetPublished(*current_documents);
    if (http != nullptr) http->Publish(**current_documents);
    SIGNET_LOG_INFO("a key's state changed: published key sets rebuilt");
  };
  // The loop stops before anything `on_keys` uses goes away, on every way
  // out of Run.
  absl::Cleanup stop_key_manager = [&key_manager] { key_manager.Stop(); };
  key_manager.StartLoop();

  SIGNET_LOG_INFO("signetd ready: every scope has a checked, active key");

  // The HSM liveness prober (server/hsm_prober.h).
  hsm::SessionPool* pool_ptr = pool.get();
  HsmProber::Options prober_options;
  prober_options.stalled_after = kStalledCallThreshold;
  HsmProber prober(
      [pool_ptr](absl::Time deadline) { return pool_ptr->Probe(deadline); },
      prober_options);
  prober.Start();
  // What the replica can do right now (server/health_monitor.h).
  auto hsm_condition = [&]() -> absl::Status {
    return prober.Condition(
        [&workers] { return workers.StuckWorkers(kStalledCallThreshold); });
  };
  auto sample = [&]() {
    ReplicaCondition condition;
    condition.hsm = hsm_condition();
    if (absl::Status audit_status = (*audit)->WriteStatus();
        !audit_status.ok()) {
      condition.audit = absl::UnavailableError(absl::StrCat(
          "the audit log cannot be written, so nothing is signed: ",
          audit_status.message()));
    }
    if ((*acceptor)->BudgetSpent()) {
      condition.listener = absl::UnavailableError(absl::StrCat(
          "the gRPC listener refuses new connections: its descriptor budget "
          "(",
          (*acceptor)->budget_end(), ") is spent"));
    }
    const absl::Time now = clock.Now();
    for (const auto& [name, scope] : serving_now()->scopes) {
      condition.scopes[name] =
          scope->SigningAt(now) != nullptr
              ? absl::OkStatus()
              : absl::FailedPreconditionError(
                    "no key of this scope may sign now; the key schedule "
                    "needs attention");
    }
    return condition;
  };
  // Connections the acceptor refused, logged and audited at most once per
  // interval. Returns whether there was anything to report.
  // Refusals signetd counts rather than audits one by one (they come in
  // floods), reported in one log line and one audit line per status code.
  struct Counted {
    std::function<uint64_t()> count;
    const char* result;  // the status code name the clients got
    const char* what;
    uint64_t reported = 0;
  };
  Counted counted[] = {
      {[&] { return (*acceptor)->refused(); }, "UNAVAILABLE",
       "gRPC connection(s) closed at once (descriptor budget spent)"},
      {[&] { return (*acceptor)->refused_per_address(); }, "UNAVAILABLE",
       "gRPC connection(s) closed at once (their address held "
       "grpc.max_connections_per_address)"},
      {[&] { return (*acceptor)->accept_errors(); }, "UNAVAILABLE",
       "failed accept(s)"},
      {[&] { return request_waits.reset_closes(); }, "UNAVAILABLE",
       "gRPC connection(s) closed for resetting calls before their request "
       "message (HTTP/2 rapid reset)"},
      {[&] { return (*acceptor)->refused_banned(); }, "UNAVAILABLE",
       "gRPC connection(s) refused at once from an address banned for 30 s "
       "after a rapid reset"},
      {[&] { return refused_watches.load(); }, "RESOURCE_EXHAUSTED",
       "health watch(es) refused (grpc.max_health_watchers or a "
       "certificate's share)"},
      {[&] { return request_waits.evicted(); }, "RESOURCE_EXHAUSTED",
       "call(s) still waiting for their request message ended to make room "
       "(grpc.max_calls_awaiting_request)"},
      {[&] { return oversized_health.load(); }, "RESOURCE_EXHAUSTED",
       "health request(s) over the request size limit"},
      {[&] { return malformed_health.load(); }, "INVALID_ARGUMENT",
       "health request(s) that did not parse or never came"},
      {[&] { return unknown_methods.calls(); }, "UNIMPLEMENTED",
       "call(s) of a method signetd does not serve"},
      {[&] { return request_waits.timed_out(); }, "DEADLINE_EXCEEDED",
       "call(s) whose request message did not come in time "
       "(grpc.request_timeout_seconds)"},
  };
  auto report_refused_connections = [&]() {
    std::map<std::string, std::vector<std::string>> by_result;
    for (Counted& c : counted) {
      const uint64_t now = c.count();
      if (now == c.reported) continue;
      by_result[c.result].push_back(
          absl::StrCat(now - c.reported, " ", c.what));
      c.reported = now;
    }
    for (const auto& [result, parts] : by_result) {
      const std::string what =
          absl::StrCat(absl::StrJoin(parts, ", "), " since the last report");
      SIGNET_LOG_WARN("{}", what);
      AuditEvent refusal;
      refusal.event = "refuse";
      refusal.caller = "unidentified";
      refusal.result = result;
      refusal.detail = what;
      (*audit)->AppendRefusal(refusal);
    }
    return !by_result.empty();
  };

  admin_service.SetBackend(&key_manager, audit->get(), [&]() {
    ReplicaStatus replica;
    replica.hsm = hsm_condition();
    replica.audit = (*audit)->WriteStatus();
    replica.sessions_total =
        pool_options.connections * pool_options.sessions_per_connection;
    replica.sessions_in_use = pool_ptr->SessionsInUse();
    return replica;
  });
  // Health, and the Signer's fast refusal while the HSM cannot sign.
  auto update_health = [&] {
    ReplicaCondition condition = sample();
    signer.SetHsmCondition(condition.hsm);
    health_monitor.Update(condition);
  };
  update_health();
  absl::Time last_report = absl::InfinitePast();
  while (!StopRequested(absl::Seconds(1), [&] { (*audit)->RollOver(); })) {
    update_health();
    if (absl::Now() - last_report >= absl::Seconds(10) &&
        report_refused_connections()) {
      last_report = absl::Now();
    }
  }
  report_refused_connections();
  (*acceptor)->Stop();  // no new connection from here on
  // A key-manager pass (or an operator's call) inside a stalled HSM cannot
  // be cancelled; it is not waited for past 3 s.
  const bool key_manager_stopped = key_manager.Stop(absl::Seconds(3));
  health_monitor.SetAllNotServing("stopping");
  stop_serving(absl::Seconds(5));
  // Every call is answered now. The workers finish the part of a batch
  // they are on (a few signatures) and skip the queued work of answered
  // calls: a pool that is only busy, as under load, is waited for. A
  // stalled or unreachable HSM (what health reports) is not, and neither is
  // a pool still busy after the longest an RPC may take.
  const absl::Time give_up = absl::Now() + absl::Seconds(30);
  bool workers_idle = workers.WaitIdle(absl::ZeroDuration());
  while (!workers_idle && hsm_condition().ok() && absl::Now() < give_up) {
    workers_idle = workers.WaitIdle(absl::Milliseconds(200));
  }
  // A call stuck in a stalled HSM cannot be cancelled, and C_Finalize would
  // block on it too: leave without closing the HSM rather than hang.
  if (!key_manager_stopped || !workers_idle || !prober.Stop(absl::Seconds(3))) {
    SIGNET_LOG_WARN(
        "an HSM call is stuck (stalled HSM); exiting without "
        "closing the HSM connections");
    AuditEvent stop_event;
    stop_event.event = "stop";
    stop_event.result = "OK";
    stop_event.detail = "HSM stalled; no final checkpoint";
    (void)(*audit)->Append(stop_event);
    workers.Detach();
    std::_Exit(0);
  }
  // The pool is idle (above): this only joins its threads, while the audit
  // log they wrote to is still there.
  workers.Join();
  AuditEvent stop_event;
  stop_event.event = "stop";
  stop_event.result = "OK";
  (void)(*audit)->Append(stop_event);
  // The audit key's successor may have taken over since the key manager's
  // last pass: the final checkpoint is signed by the key that may sign now.
  if (absl::Status st = audit_keys.Refresh(clock.Now()); !st.ok()) {
    SIGNET_LOG_WARN(
        "the audit key could not be brought up to date for the "
        "final checkpoint: {}",
        st.ToString());
  }
  audit->reset();  // final checkpoint, signed by the audit key
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
  // Before anything initializes OpenSSL: gRPC 1.51 has no minimum-version
  // setting and overrides MinProtocol, but this system_default section makes
  // OpenSSL refuse anything below TLS 1.3.
  signet::server::RestrictToTls13();
  // Debian's Abseil checks every Mutex acquisition for lock-order cycles;
  // that costs CPU on every request and finds nothing at run time.
  absl::SetMutexDeadlockDetectionMode(absl::OnDeadlockCycle::kIgnore);
  // The audit-verify subcommand has its own command line (CLI11).
  if (argc >= 2 && std::string(argv[1]) == "audit-verify") {
    try {
      return signet::server::AuditVerifyMain(argc - 1, argv + 1);
    } catch (const std::exception& e) {
      std::cerr << "signetd audit-verify: error: " << e.what() << std::endl;
      return 1;
    }
  }
  absl::SetProgramUsageMessage(
      "signetd --config=FILE: hardware-backed signing key service\n"
      "signetd audit-verify --help: check an audit log");
  std::vector<char*> args = absl::ParseCommandLine(argc, argv);
  signet::log::Init(absl::GetFlag(FLAGS_log_json));
  // gRPC's and protobuf's own lines go through ours, rate-limited: a parse
  // failure is logged by protobuf for every malformed request.
  gpr_set_log_function(signet::server::GrpcLogToOurs);
  google::protobuf::SetLogHandler(signet::server::ProtobufLogToOurs);
  if (args.size() > 1) {
    SIGNET_LOG_ERROR("unexpected argument: {}", args[1]);
    return 2;
  }
  return signet::server::Run();
}
