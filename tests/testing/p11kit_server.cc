#include "tests/testing/p11kit_server.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"
#include "absl/time/clock.h"
#include "base/status_macros.h"

#ifndef SIGNET_P11KIT_MODULE_DIR
#define SIGNET_P11KIT_MODULE_DIR "/usr/lib/x86_64-linux-gnu/pkcs11"
#endif

namespace signet::testing {
namespace {

constexpr absl::Duration kPollInterval = absl::Milliseconds(20);
// Bounded waits for signals to take effect; generous for loaded machines.
constexpr absl::Duration kSignalTimeout = absl::Seconds(20);
// __SO_ACCEPTCON in the Flags column of /proc/net/unix: a listening socket.
constexpr uint64_t kUnixListening = 0x10000;

std::atomic<int> next_server_index{0};

std::string ErrnoText(int error) {
  return absl::StrCat(std::strerror(error), " (errno ", error, ")");
}

// True once some socket bound to `path` is listening. The file appears at
// bind(), before listen(): a client connecting in between is refused, so the
// file alone is not enough.
bool SocketListening(const std::string& path) {
  std::ifstream table("/proc/net/unix");
  std::string line;
  std::getline(table, line);  // header
  while (std::getline(table, line)) {
    // Num RefCount Protocol Flags Type St Inode [Path]
    std::vector<absl::string_view> fields =
        absl::StrSplit(line, ' ', absl::SkipEmpty());
    if (fields.size() < 8 || fields[7] != path) {
      continue;
    }
    uint64_t flags = 0;
    if (absl::SimpleHexAtoi(fields[3], &flags) && (flags & kUnixListening)) {
      return true;
    }
  }
  return false;
}

bool AllStopped(pid_t pgid) {
  for (const ProcessInfo& member : ProcessGroupMembers(pgid)) {
    if (member.state != 'T' && member.state != 't' && member.state != 'Z' &&
        member.state != 'X') {
      return false;
    }
  }
  return true;
}

bool NoneStopped(pid_t pgid) {
  for (const ProcessInfo& member : ProcessGroupMembers(pgid)) {
    if (member.state == 'T' || member.state == 't') {
      return false;
    }
  }
  return true;
}

}  // namespace

absl::StatusOr<std::unique_ptr<P11KitServer>> P11KitServer::Start(
    const TempToken& token, P11KitServerOptions options) {
  std::optional<UserIds> run_as;
  if (!options.run_as_user.empty()) {
    SIGNET_ASSIGN_OR_RETURN(run_as, LookupUser(options.run_as_user));
    struct stat st;
    if (stat(token.tokens_dir().c_str(), &st) != 0) {
      return absl::InternalError(
          absl::StrCat("stat ", token.tokens_dir(), ": ", ErrnoText(errno)));
    }
    if (st.st_uid != run_as->uid) {
      return absl::FailedPreconditionError(absl::StrCat(
          "the server would run as ", run_as->name, " but ", token.tokens_dir(),
          " belongs to uid ", st.st_uid,
          ": create the token with TempTokenOptions.owner_user = \"",
          run_as->name, "\", or the server sees no token"));
    }
  }
  std::unique_ptr<P11KitServer> server(new P11KitServer());
  if (!options.allowed_user.empty()) {
    SIGNET_ASSIGN_OR_RETURN(server->allowed_, LookupUser(options.allowed_user));
  }
  server->options_ = std::move(options);
  server->conf_path_ = token.conf_path();
  server->token_uri_ = token.token_uri();
  server->run_dir_ =
      absl::StrCat(token.dir(), "/server-", next_server_index.fetch_add(1));
  server->socket_path_ = absl::StrCat(server->run_dir_, "/p11-kit.sock");
  server->log_path_ = absl::StrCat(server->run_dir_, "/server.log");

  if (mkdir(server->run_dir_.c_str(), 0755) != 0 ||
      chmod(server->run_dir_.c_str(), 0755) != 0) {
    return absl::InternalError(
        absl::StrCat("mkdir ", server->run_dir_, ": ", ErrnoText(errno)));
  }
  if (run_as.has_value() &&
      chown(server->run_dir_.c_str(), run_as->uid, run_as->gid) != 0) {
    const int error = errno;
    std::string message =
        absl::StrCat("chown ", server->run_dir_, " to ", run_as->name, ": ",
                     ErrnoText(error), " (run_as_user needs root)");
    return error == EPERM ? absl::PermissionDeniedError(message)
                          : absl::InternalError(message);
  }
  SIGNET_RETURN_IF_ERROR(server->Launch());
  return server;
}

P11KitServer::~P11KitServer() {
  // Nothing to report to from a destructor; Kill() cannot leave the server
  // itself running (SIGKILL, then a blocking waitpid).
  Kill().IgnoreError();
}

std::string P11KitServer::address() const {
  return absl::StrCat("unix:path=", socket_path_);
}

std::string P11KitServer::ReadLog() const {
  std::ifstream log(log_path_);
  std::stringstream contents;
  contents << log.rdbuf();
  return contents.str();
}

absl::Status P11KitServer::Launch() {
  int log_fd =
      open(log_path_.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  if (log_fd < 0) {
    return absl::InternalError(
        absl::StrCat("open ", log_path_, ": ", ErrnoText(errno)));
  }
  SpawnOptions spawn;
  spawn.argv = {"p11-kit", "server", "-f"};
  if (!options_.run_as_user.empty()) {
    spawn.argv.insert(spawn.argv.end(),
                      {"--run-as-user", options_.run_as_user});
  }
  if (!options_.allowed_user.empty()) {
    spawn.argv.insert(spawn.argv.end(), {"--user", options_.allowed_user});
  }
  spawn.argv.insert(spawn.argv.end(),
                    {"--provider", TempToken::softhsm_module_path(), "--name",
                     socket_path_, token_uri_});
  spawn.env = {{"SOFTHSM2_CONF", conf_path_}};
  spawn.unset_env = {"P11_KIT_SERVER_ADDRESS", "P11_KIT_SERVER_PID"};
  spawn.stdout_fd = log_fd;
  spawn.stderr_fd = log_fd;
  spawn.new_process_group = true;
  absl::StatusOr<pid_t> pid = Spawn(spawn);
  close(log_fd);
  if (!pid.ok()) {
    return pid.status();
  }
  pid_ = *pid;

  const absl::Time deadline = absl::Now() + options_.start_timeout;
  while (!SocketListening(socket_path_)) {
    int status = 0;
    pid_t reaped;
    do {
      reaped = waitpid(pid_, &status, WNOHANG);
    } while (reaped < 0 && errno == EINTR);
    if (reaped == pid_) {
      // The server is gone; remove any child it left in its group.
      kill(-pid_, SIGKILL);
      pid_ = 0;
      unlink(socket_path_.c_str());
      return absl::UnavailableError(absl::StrCat(
          "p11-kit server for ", token_uri_, " exited during start-up (",
          WIFEXITED(status) ? absl::StrCat("exit code ", WEXITSTATUS(status))
                            : absl::StrCat("signal ", WTERMSIG(status)),
          "); log ", log_path_, ":\n", ReadLog()));
    }
    if (absl::Now() >= deadline) {
      absl::Status killed = Kill();
      return absl::DeadlineExceededError(absl::StrCat(
          "p11-kit server socket ", socket_path_, " not listening after ",
          absl::FormatDuration(options_.start_timeout),
          killed.ok() ? "" : absl::StrCat(" (and ", killed.ToString(), ")"),
          "; log ", log_path_, ":\n", ReadLog()));
    }
    absl::SleepFor(kPollInterval);
  }

  if (allowed_.has_value()) {
    // As the production launcher does (docs/architecture.md, "A deployment"):
    // the socket belongs to the one user allowed to connect, and nobody else
    // may open it.
    if (chown(socket_path_.c_str(), allowed_->uid, allowed_->gid) != 0 ||
        chmod(socket_path_.c_str(), 0600) != 0) {
      const int error = errno;
      Kill().IgnoreError();
      return absl::InternalError(absl::StrCat("chown/chmod ", socket_path_,
                                              " for ", allowed_->name, ": ",
                                              ErrnoText(error)));
    }
  }
  return absl::OkStatus();
}

absl::Status P11KitServer::Kill() {
  absl::Status result = absl::OkStatus();
  if (pid_ > 0) {
    const pid_t pgid = pid_;
    // SIGKILL works on stopped processes too, so a stalled group dies.
    kill(-pgid, SIGKILL);
    int status;
    pid_t reaped;
    do {
      reaped = waitpid(pgid, &status, 0);
    } while (reaped < 0 && errno == EINTR);
    pid_ = 0;
    // The remote children were orphaned to init, which reaps them; wait
    // until the group is really empty so callers can rely on it. (Some
    // init processes reap orphans only every few seconds.)
    const absl::Time deadline = absl::Now() + kSignalTimeout;
    while (ProcessGroupAlive(pgid)) {
      if (absl::Now() >= deadline) {
        std::string members;
        bool only_zombies = true;
        for (const ProcessInfo& member : ProcessGroupMembers(pgid)) {
          absl::StrAppend(&members, " ", member.pid, " (", member.command,
                          ", state ", std::string(1, member.state), ")");
          only_zombies = only_zombies && member.state == 'Z';
        }
        result = absl::DeadlineExceededError(absl::StrCat(
            "process group ", pgid, " still has members ",
            absl::FormatDuration(kSignalTimeout), " after SIGKILL:", members,
            only_zombies ? "; only zombies: PID 1 does not reap orphans here"
                         : ""));
        break;
      }
      absl::SleepFor(kPollInterval);
    }
  }
  if (unlink(socket_path_.c_str()) != 0 && errno != ENOENT && result.ok()) {
    result = absl::InternalError(
        absl::StrCat("unlink ", socket_path_, ": ", ErrnoText(errno)));
  }
  return result;
}

absl::Status P11KitServer::Restart() {
  SIGNET_RETURN_IF_ERROR(Kill());
  return Launch();
}

absl::Status P11KitServer::Stall() {
  if (pid_ <= 0) {
    return absl::FailedPreconditionError("Stall: p11-kit server not running");
  }
  if (kill(-pid_, SIGSTOP) != 0) {
    return absl::InternalError(
        absl::StrCat("kill(-", pid_, ", SIGSTOP): ", ErrnoText(errno)));
  }
  const absl::Time deadline = absl::Now() + kSignalTimeout;
  while (!AllStopped(pid_)) {
    if (absl::Now() >= deadline) {
      return absl::DeadlineExceededError(
          absl::StrCat("process group ", pid_, " not stopped after SIGSTOP"));
    }
    absl::SleepFor(kPollInterval);
  }
  return absl::OkStatus();
}

absl::Status P11KitServer::Resume() {
  if (pid_ <= 0) {
    return absl::FailedPreconditionError("Resume: p11-kit server not running");
  }
  if (kill(-pid_, SIGCONT) != 0) {
    return absl::InternalError(
        absl::StrCat("kill(-", pid_, ", SIGCONT): ", ErrnoText(errno)));
  }
  const absl::Time deadline = absl::Now() + kSignalTimeout;
  while (!NoneStopped(pid_)) {
    if (absl::Now() >= deadline) {
      return absl::DeadlineExceededError(
          absl::StrCat("process group ", pid_, " still stopped after SIGCONT"));
    }
    absl::SleepFor(kPollInterval);
  }
  return absl::OkStatus();
}

absl::StatusOr<pid_t> P11KitServer::StallOneConnection() {
  if (pid_ <= 0) {
    return absl::FailedPreconditionError(
        "StallOneConnection: p11-kit server not running");
  }
  for (const ProcessInfo& member : ProcessGroupMembers(pid_)) {
    if (member.pid == pid_ ||
        !absl::StrContains(member.command, "p11-kit-remote")) {
      continue;
    }
    if (kill(member.pid, SIGSTOP) != 0) {
      return absl::InternalError(
          absl::StrCat("kill(", member.pid, ", SIGSTOP): ", ErrnoText(errno)));
    }
    const absl::Time deadline = absl::Now() + kSignalTimeout;
    for (;;) {
      bool stopped = false;
      for (const ProcessInfo& now : ProcessGroupMembers(pid_)) {
        if (now.pid == member.pid) {
          stopped = now.state == 'T' || now.state == 't';
        }
      }
      if (stopped) return member.pid;
      if (absl::Now() >= deadline) {
        return absl::DeadlineExceededError(
            absl::StrCat("process ", member.pid, " not stopped after SIGSTOP"));
      }
      absl::SleepFor(kPollInterval);
    }
  }
  return absl::NotFoundError(absl::StrCat(
      "the p11-kit server (process group ", pid_,
      ") has no p11-kit-remote child: no client connection is open"));
}

void P11KitServer::ExportAddressInThisProcess() const {
  setenv("P11_KIT_SERVER_ADDRESS", address().c_str(), 1);
}

std::string P11KitServer::client_module_path() {
  return SIGNET_P11KIT_MODULE_DIR "/p11-kit-client.so";
}

}  // namespace signet::testing
