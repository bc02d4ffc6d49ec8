// signetd: the signing service. Its life is the Daemon's phases
// (server/daemon.h); this file holds the command line and the process-wide
// set-up that comes before any thread: the blocked stop signals, TLS 1.3
// only, and gRPC's and protobuf's logs through signet's.
//
// `signetd audit-verify FILE` checks an audit log
// (server/audit_verify_command.h).
#include <google/protobuf/stubs/logging.h>
#include <grpc/grpc.h>
#include <grpc/support/log.h>
#include <signal.h>

#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "base/log.h"
#include "base/quote.h"
#include "base/throttled_log.h"
#include "server/audit_verify_command.h"
#include "server/daemon.h"
#include "server/tls.h"

ABSL_FLAG(std::string, config, "",
          "Path of the configuration file (text format of "
          "signet.v1.SignetConfig, proto/signet/v1/config.proto).");
ABSL_FLAG(bool, insecure_in_process_module, false,
          "DEVELOPMENT ONLY: allow a PKCS#11 module other than "
          "p11-kit-client.so, loaded into signetd's own address space, where "
          "key material could end up in a core dump.");
ABSL_FLAG(bool, log_json, false, "Write logs as JSON lines.");
ABSL_FLAG(bool, audit_accept_missing_segment, false,
          "For one start, after a person has looked: continue the audit "
          "log's chain although its current segment is missing and no "
          "rollover was under way (it was deleted or moved while signetd was "
          "down). The new segment's first line records it.");
ABSL_FLAG(bool, accept_wall_clock, false,
          "For one start, after a person has checked the clock: measure the "
          "wall clock from its reading now, not from this boot's first "
          "start. signetd holds back destroying and pruning keys while the "
          "clock reads ahead of the time it has seen pass (set forward); "
          "with this, what is due is done. The audit log records it.");
ABSL_FLAG(bool, insecure_plaintext, false,
          "DEVELOPMENT ONLY: serve gRPC without TLS, on a loopback address "
          "only. Callers then have the identity \"insecure:plaintext\".");
namespace signet::server {
namespace {

// gRPC's and protobuf's own lines, at most 20 a minute: a flood of
// malformed requests must not become a flood of logs (protobuf logs every
// parse failure).
log::ThrottledLog& LibraryLogs() {
  static log::ThrottledLog* log =
      new log::ThrottledLog("", 20, absl::Minutes(1));
  return *log;
}

// The libraries' messages quote what peers sent (gRPC's copy header values
// into them): quoted, so a peer cannot forge a log line or send terminal
// sequences (an outside attack made a header value into a whole "health:
// SERVING" line), and cut at 512 bytes.
constexpr size_t kMaxLibraryMessageBytes = 512;

void GrpcLogToOurs(gpr_log_func_args* args) {
  if (args->severity < GPR_LOG_SEVERITY_ERROR) return;
  LibraryLogs().Warn([&] {
    return absl::StrCat(
        "grpc: ", base::Quote(args->message, kMaxLibraryMessageBytes), " (",
        args->file, ":", args->line, ")");
  });
}

void ProtobufLogToOurs(google::protobuf::LogLevel level, const char* filename,
                       int line, const std::string& message) {
  if (level < google::protobuf::LOGLEVEL_WARNING) return;
  LibraryLogs().Warn([&] {
    return absl::StrCat(
        "protobuf: ", base::Quote(message, kMaxLibraryMessageBytes), " (",
        filename, ":", line, ")");
  });
}

int Fail(const absl::Status& status) {
  SIGNET_LOG_ERROR("signetd cannot start: {}", status.ToString());
  return 1;
}

// The daemon's phases in order (server/daemon.h); the exit code.
int RunDaemon() {
  Daemon daemon({.config_path = absl::GetFlag(FLAGS_config),
                 .insecure_in_process_module =
                     absl::GetFlag(FLAGS_insecure_in_process_module),
                 .insecure_plaintext = absl::GetFlag(FLAGS_insecure_plaintext),
                 .accept_missing_audit_segment =
                     absl::GetFlag(FLAGS_audit_accept_missing_segment),
                 .accept_wall_clock = absl::GetFlag(FLAGS_accept_wall_clock)});
  for (absl::Status (Daemon::*phase)() :
       {&Daemon::LoadConfiguration, &Daemon::StartListening, &Daemon::OpenHsm,
        &Daemon::OpenAuditLog, &Daemon::LoadScopes, &Daemon::StartServing}) {
    absl::Status st = (daemon.*phase)();
    // A stop while waiting for the HSM is a clean exit.
    if (absl::IsCancelled(st)) return 0;
    if (!st.ok()) return Fail(st);
  }
  daemon.RunUntilStopped();
  return daemon.Stop();
}

int Run() {
  // Before any thread exists: every thread inherits the blocked mask, so
  // only the daemon's sigtimedwait sees SIGINT/SIGTERM/SIGHUP.
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGINT);
  sigaddset(&stop_signals, SIGTERM);
  sigaddset(&stop_signals, SIGHUP);
  pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);
  // A file that may not grow (RLIMIT_FSIZE) fails the write with EFBIG,
  // which the audit log handles, instead of killing signetd.
  signal(SIGXFSZ, SIG_IGN);

  // gRPC's library teardown (grpc_shutdown, run when its last object goes)
  // joins gRPC's executor threads, and after a stop under load one of them
  // sat in a poll for 10 to 18 s (an outside attack measured it), past the
  // 10 s a supervisor waits. Nothing durable is left by then (the audit log
  // has its stop line and final checkpoint, the HSM is closed, and the
  // daemon's own members are destroyed): signetd holds a reference of its
  // own to gRPC for the whole run and leaves without that teardown.
  grpc_init();
  const int code = RunDaemon();
  std::cout.flush();
  std::fflush(nullptr);
  std::_Exit(code);
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
