#include "tests/testing/signetd_process.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <fstream>
#include <sstream>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "base/status_macros.h"
#include "tests/testing/process.h"

namespace signet::testing {
namespace {

std::atomic<int> next_instance{0};

}  // namespace

absl::StatusOr<std::unique_ptr<SignetdProcess>> SignetdProcess::Start(
    absl::string_view dir, const SignetdOptions& options) {
  const int n = next_instance++;
  const std::string config_path =
      absl::StrCat(dir, "/signetd-", n, ".textproto");
  {
    std::ofstream out(config_path);
    out << options.config_text;
    if (!out) return absl::InternalError("cannot write " + config_path);
  }
  chmod(config_path.c_str(), 0644);
  std::unique_ptr<SignetdProcess> proc(new SignetdProcess());
  proc->log_path_ = absl::StrCat(dir, "/signetd-", n, ".log");
  int fd = open(proc->log_path_.c_str(),
                O_CREAT | O_WRONLY | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return absl::InternalError("cannot create " + proc->log_path_);
  SpawnOptions spawn;
  spawn.argv = {options.binary, "--config=" + config_path};
  spawn.argv.insert(spawn.argv.end(), options.flags.begin(),
                    options.flags.end());
  spawn.env = options.env;
  spawn.as_user = options.as_user;
  spawn.open_file_limit = options.open_file_limit;
  spawn.stdout_fd = fd;
  spawn.stderr_fd = fd;
  absl::StatusOr<pid_t> pid = Spawn(spawn);
  close(fd);
  if (!pid.ok()) return pid.status();
  proc->pid_ = *pid;
  return proc;
}

SignetdProcess::~SignetdProcess() {
  if (pid_ > 0 && !exited_) {
    kill(pid_, SIGKILL);
    waitpid(pid_, nullptr, 0);
  }
}

std::string SignetdProcess::Output() const {
  std::ifstream in(log_path_);
  std::stringstream buf;
  buf << in.rdbuf();
  return buf.str();
}

absl::StatusOr<int> SignetdProcess::WaitExit(absl::Duration timeout) {
  if (exited_) return exit_code_;
  const absl::Time deadline = absl::Now() + timeout;
  while (absl::Now() < deadline) {
    int status = 0;
    pid_t r = waitpid(pid_, &status, WNOHANG);
    if (r == pid_) {
      exited_ = true;
      exit_code_ = WIFEXITED(status) ? WEXITSTATUS(status) : -WTERMSIG(status);
      return exit_code_;
    }
    absl::SleepFor(absl::Milliseconds(20));
  }
  return absl::DeadlineExceededError(
      absl::StrCat("signetd did not exit in time; output:\n", Output()));
}

absl::Status SignetdProcess::WaitForOutput(absl::string_view text,
                                           absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  while (absl::Now() < deadline) {
    if (absl::StrContains(Output(), text)) return absl::OkStatus();
    if (!exited_) {
      int status = 0;
      if (waitpid(pid_, &status, WNOHANG) == pid_) {
        exited_ = true;
        exit_code_ =
            WIFEXITED(status) ? WEXITSTATUS(status) : -WTERMSIG(status);
      }
    }
    if (exited_) {
      if (absl::StrContains(Output(), text)) return absl::OkStatus();
      return absl::FailedPreconditionError(
          absl::StrCat("signetd exited (", exit_code_, ") before printing \"",
                       text, "\"; output:\n", Output()));
    }
    absl::SleepFor(absl::Milliseconds(20));
  }
  return absl::DeadlineExceededError(absl::StrCat(
      "signetd did not print \"", text, "\" in time; output:\n", Output()));
}

absl::StatusOr<int> SignetdProcess::WaitForPort(absl::Duration timeout) {
  SIGNET_RETURN_IF_ERROR(WaitForOutput("listening on ", timeout));
  std::string out = Output();
  size_t at = out.find("listening on ");
  size_t end = out.find(' ', at + 13);
  std::string address = out.substr(at + 13, end - at - 13);
  int port = 0;
  if (!absl::SimpleAtoi(address.substr(address.rfind(':') + 1), &port)) {
    return absl::InternalError("cannot parse the port from: " + address);
  }
  return port;
}

absl::StatusOr<int> SignetdProcess::WaitForHttpPort(absl::Duration timeout) {
  const std::string kMarker = "JWKS HTTP listening on ";
  SIGNET_RETURN_IF_ERROR(WaitForOutput(kMarker, timeout));
  std::string out = Output();
  size_t at = out.find(kMarker) + kMarker.size();
  size_t colon = out.find(':', at);
  size_t end = colon == std::string::npos ? colon : colon + 1;
  while (end < out.size() && absl::ascii_isdigit(out[end])) ++end;
  int port = 0;
  if (colon == std::string::npos ||
      !absl::SimpleAtoi(out.substr(colon + 1, end - colon - 1), &port) ||
      port <= 0) {
    return absl::InternalError("cannot parse the HTTP port from: " +
                               out.substr(at, end - at));
  }
  return port;
}

absl::StatusOr<int> SignetdProcess::Stop(int sig, absl::Duration timeout) {
  if (!exited_) kill(pid_, sig);
  return WaitExit(timeout);
}

}  // namespace signet::testing
