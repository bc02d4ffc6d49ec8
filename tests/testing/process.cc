#include "tests/testing/process.h"

#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <poll.h>
#include <pwd.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <system_error>
#include <utility>
#include <vector>

#include "absl/cleanup/cleanup.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "base/status_macros.h"

extern char** environ;

namespace signet::testing {
namespace {

// What a child reports through the exec-error pipe when it cannot exec.
struct ChildFailure {
  int step;
  int error;
};

enum ChildStep : int {
  kStepSetpgid = 1,
  kStepDup2,
  kStepSetgroups,
  kStepSetgid,
  kStepSetuid,
  kStepExec,
  kStepSetrlimit,
};

const char* StepName(int step) {
  switch (step) {
    case kStepSetpgid:
      return "setpgid";
    case kStepDup2:
      return "dup2";
    case kStepSetgroups:
      return "setgroups";
    case kStepSetgid:
      return "setgid";
    case kStepSetuid:
      return "setuid";
    case kStepExec:
      return "execve";
    case kStepSetrlimit:
      return "setrlimit";
  }
  return "unknown step";
}

std::string ErrnoText(int error) {
  return absl::StrCat(std::strerror(error), " (errno ", error, ")");
}

// Finds an executable the way execvp would, but in the parent, so the child
// only calls execve.
absl::StatusOr<std::string> ResolveProgram(const std::string& program) {
  if (absl::StrContains(program, '/')) {
    return program;
  }
  const char* path_env = std::getenv("PATH");
  std::string path = path_env != nullptr && *path_env != '\0'
                         ? path_env
                         : "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin";
  for (absl::string_view dir : absl::StrSplit(path, ':', absl::SkipEmpty())) {
    std::string candidate = absl::StrCat(dir, "/", program);
    struct stat st;
    if (stat(candidate.c_str(), &st) == 0 && S_ISREG(st.st_mode) &&
        access(candidate.c_str(), X_OK) == 0) {
      return candidate;
    }
  }
  return absl::NotFoundError(
      absl::StrCat("program '", program, "' not found in PATH ", path));
}

// Reads until `fd` is empty; retries EINTR.
ssize_t ReadFull(int fd, void* buffer, size_t size) {
  size_t done = 0;
  while (done < size) {
    ssize_t n = read(fd, static_cast<char*>(buffer) + done, size - done);
    if (n < 0 && errno == EINTR) {
      continue;
    }
    if (n <= 0) {
      return n < 0 ? n : static_cast<ssize_t>(done);
    }
    done += static_cast<size_t>(n);
  }
  return static_cast<ssize_t>(done);
}

pid_t WaitPidNoIntr(pid_t pid, int* status, int flags) {
  pid_t r;
  do {
    r = waitpid(pid, status, flags);
  } while (r < 0 && errno == EINTR);
  return r;
}

[[noreturn]] void ChildFail(int error_fd, int step) {
  ChildFailure failure{step, errno};
  // Nothing useful can be done if this write fails: the parent then sees
  // EOF and an exit code of 127.
  ssize_t ignored = write(error_fd, &failure, sizeof(failure));
  (void)ignored;
  _exit(127);
}

}  // namespace

absl::StatusOr<UserIds> LookupUser(absl::string_view name) {
  std::string name_str(name);
  long size_hint = sysconf(_SC_GETPW_R_SIZE_MAX);
  std::vector<char> buffer(size_hint > 0 ? static_cast<size_t>(size_hint)
                                         : 16384);
  struct passwd pwd;
  struct passwd* result = nullptr;
  int rc;
  while ((rc = getpwnam_r(name_str.c_str(), &pwd, buffer.data(), buffer.size(),
                          &result)) == ERANGE) {
    buffer.resize(buffer.size() * 2);
  }
  if (rc != 0) {
    return absl::InternalError(
        absl::StrCat("getpwnam_r(", name_str, "): ", ErrnoText(rc)));
  }
  if (result == nullptr) {
    return absl::NotFoundError(
        absl::StrCat("system user '", name_str, "' does not exist"));
  }
  return UserIds{name_str, pwd.pw_uid, pwd.pw_gid,
                 pwd.pw_dir != nullptr ? pwd.pw_dir : "/"};
}

bool ProcessGroupAlive(pid_t pgid) {
  if (pgid <= 0) {
    return false;
  }
  return kill(-pgid, 0) == 0 || errno == EPERM;
}

std::vector<ProcessInfo> ProcessGroupMembers(pid_t pgid) {
  std::vector<ProcessInfo> members;
  std::error_code error;
  for (std::filesystem::directory_iterator it("/proc", error), end;
       !error && it != end; it.increment(error)) {
    const std::string name = it->path().filename().string();
    pid_t pid;
    if (!absl::SimpleAtoi(name, &pid)) {
      continue;
    }
    std::ifstream stat_file(absl::StrCat("/proc/", name, "/stat"));
    std::string line;
    if (!std::getline(stat_file, line)) {
      continue;  // gone meanwhile
    }
    // "pid (comm) state ppid pgrp ...": comm may hold spaces and parentheses.
    const size_t open = line.find('(');
    const size_t close = line.rfind(')');
    if (open == std::string::npos || close == std::string::npos ||
        close < open) {
      continue;
    }
    std::vector<absl::string_view> fields = absl::StrSplit(
        absl::string_view(line).substr(close + 1), ' ', absl::SkipEmpty());
    pid_t group;
    if (fields.size() < 3 || fields[0].empty() ||
        !absl::SimpleAtoi(fields[2], &group) || group != pgid) {
      continue;
    }
    members.push_back(ProcessInfo{pid, fields[0][0],
                                  line.substr(open + 1, close - open - 1)});
  }
  return members;
}

absl::StatusOr<pid_t> Spawn(const SpawnOptions& options) {
  if (options.argv.empty()) {
    return absl::InvalidArgumentError("Spawn: empty argv");
  }
  SIGNET_ASSIGN_OR_RETURN(std::string program, ResolveProgram(options.argv[0]));
  UserIds user;
  const bool drop_privileges = !options.as_user.empty();
  if (drop_privileges) {
    SIGNET_ASSIGN_OR_RETURN(user, LookupUser(options.as_user));
  }

  // The environment: ours, minus what is unset or overridden, plus overrides.
  std::vector<std::pair<std::string, std::string>> overrides = options.env;
  if (drop_privileges) {
    overrides.emplace_back("HOME", user.home);
  }
  std::vector<std::string> env_storage;
  for (char** entry = environ; entry != nullptr && *entry != nullptr; ++entry) {
    absl::string_view var(*entry);
    absl::string_view name = var.substr(0, var.find('='));
    bool drop = std::find(options.unset_env.begin(), options.unset_env.end(),
                          name) != options.unset_env.end();
    for (const auto& [key, value] : overrides) {
      drop = drop || key == name;
    }
    if (!drop) {
      env_storage.emplace_back(var);
    }
  }
  for (const auto& [key, value] : overrides) {
    env_storage.push_back(absl::StrCat(key, "=", value));
  }
  std::vector<char*> envp;
  for (std::string& var : env_storage) {
    envp.push_back(var.data());
  }
  envp.push_back(nullptr);
  std::vector<std::string> argv_storage = options.argv;
  std::vector<char*> argv;
  for (std::string& arg : argv_storage) {
    argv.push_back(arg.data());
  }
  argv.push_back(nullptr);

  int dev_null = open("/dev/null", O_RDWR | O_CLOEXEC);
  if (dev_null < 0) {
    return absl::InternalError(
        absl::StrCat("open(/dev/null): ", ErrnoText(errno)));
  }
  absl::Cleanup close_dev_null = [dev_null] { close(dev_null); };
  int error_pipe[2];
  if (pipe2(error_pipe, O_CLOEXEC) != 0) {
    return absl::InternalError(absl::StrCat("pipe2: ", ErrnoText(errno)));
  }
  const int stdout_fd = options.stdout_fd >= 0 ? options.stdout_fd : dev_null;
  const int stderr_fd = options.stderr_fd >= 0 ? options.stderr_fd : dev_null;
  const gid_t gid = user.gid;
  const uid_t uid = user.uid;

  pid_t pid = fork();
  if (pid < 0) {
    int error = errno;
    close(error_pipe[0]);
    close(error_pipe[1]);
    return absl::InternalError(absl::StrCat("fork: ", ErrnoText(error)));
  }
  if (pid == 0) {
    // Child: async-signal-safe calls only.
    if (options.new_process_group && setpgid(0, 0) != 0) {
      ChildFail(error_pipe[1], kStepSetpgid);
    }
    // Undo what the test process may have set (signet ignores SIGPIPE, gRPC
    // blocks signals): ignored signals and the mask survive execve.
    struct sigaction default_action;
    std::memset(&default_action, 0, sizeof(default_action));
    default_action.sa_handler = SIG_DFL;
    for (int sig = 1; sig < NSIG; ++sig) {
      sigaction(sig, &default_action, nullptr);  // fails for KILL/STOP: fine
    }
    sigset_t empty;
    sigemptyset(&empty);
    sigprocmask(SIG_SETMASK, &empty, nullptr);
    if (dup2(dev_null, STDIN_FILENO) < 0 ||
        dup2(stdout_fd, STDOUT_FILENO) < 0 ||
        dup2(stderr_fd, STDERR_FILENO) < 0) {
      ChildFail(error_pipe[1], kStepDup2);
    }
    if (options.open_file_limit > 0) {
      struct rlimit files;
      files.rlim_cur = files.rlim_max =
          static_cast<rlim_t>(options.open_file_limit);
      if (setrlimit(RLIMIT_NOFILE, &files) != 0) {
        ChildFail(error_pipe[1], kStepSetrlimit);
      }
    }
    if (drop_privileges) {
      if (setgroups(1, &gid) != 0) {
        ChildFail(error_pipe[1], kStepSetgroups);
      }
      if (setgid(gid) != 0) {
        ChildFail(error_pipe[1], kStepSetgid);
      }
      if (setuid(uid) != 0) {
        ChildFail(error_pipe[1], kStepSetuid);
      }
    }
    execve(program.c_str(), argv.data(), envp.data());
    ChildFail(error_pipe[1], kStepExec);
  }

  close(error_pipe[1]);
  if (options.new_process_group) {
    // Also from the parent, so kill(-pid, ...) works as soon as we return.
    // EACCES (the child already exec'd) and ESRCH are harmless.
    setpgid(pid, pid);
  }
  ChildFailure failure{};
  ssize_t n = ReadFull(error_pipe[0], &failure, sizeof(failure));
  close(error_pipe[0]);
  if (n == static_cast<ssize_t>(sizeof(failure))) {
    int status;
    WaitPidNoIntr(pid, &status, 0);
    return absl::InternalError(absl::StrCat(
        "starting ", absl::StrJoin(options.argv, " "),
        drop_privileges ? absl::StrCat(" as ", user.name) : "", ": ",
        StepName(failure.step), " failed: ", ErrnoText(failure.error)));
  }
  return pid;
}

absl::StatusOr<RunResult> RunProcess(SpawnOptions options,
                                     absl::Duration timeout) {
  int out_pipe[2];
  if (pipe2(out_pipe, O_CLOEXEC) != 0) {
    return absl::InternalError(absl::StrCat("pipe2: ", ErrnoText(errno)));
  }
  options.stdout_fd = out_pipe[1];
  options.stderr_fd = out_pipe[1];
  options.new_process_group = true;  // so a timeout can kill everything
  absl::StatusOr<pid_t> pid = Spawn(options);
  close(out_pipe[1]);
  absl::Cleanup close_read = [fd = out_pipe[0]] { close(fd); };
  if (!pid.ok()) {
    return pid.status();
  }

  RunResult result;
  const absl::Time deadline = absl::Now() + timeout;
  bool eof = false;
  int status = 0;
  bool reaped = false;
  while (!reaped) {
    const absl::Duration left = deadline - absl::Now();
    if (left <= absl::ZeroDuration()) {
      result.timed_out = true;
      kill(-*pid, SIGKILL);
      kill(*pid, SIGKILL);
      if (WaitPidNoIntr(*pid, &status, 0) < 0) {
        return absl::InternalError(absl::StrCat("waitpid: ", ErrnoText(errno)));
      }
      reaped = true;
      break;
    }
    if (!eof) {
      struct pollfd pfd = {out_pipe[0], POLLIN, 0};
      int wait_ms = static_cast<int>(
          std::min<int64_t>(absl::ToInt64Milliseconds(left) + 1, 1000));
      int ready = poll(&pfd, 1, wait_ms);
      if (ready < 0 && errno != EINTR) {
        return absl::InternalError(absl::StrCat("poll: ", ErrnoText(errno)));
      }
      if (ready > 0) {
        char buffer[4096];
        ssize_t got = read(out_pipe[0], buffer, sizeof(buffer));
        if (got > 0) {
          result.output.append(buffer, static_cast<size_t>(got));
        } else if (got == 0 || (errno != EINTR && errno != EAGAIN)) {
          eof = true;
        }
      }
      continue;
    }
    // Output closed: wait for the exit without blocking past the deadline.
    pid_t r = WaitPidNoIntr(*pid, &status, WNOHANG);
    if (r < 0) {
      return absl::InternalError(absl::StrCat("waitpid: ", ErrnoText(errno)));
    }
    if (r == *pid) {
      reaped = true;
    } else {
      absl::SleepFor(absl::Milliseconds(10));
    }
  }
  if (WIFEXITED(status)) {
    result.exit_code = WEXITSTATUS(status);
  } else if (WIFSIGNALED(status)) {
    result.term_signal = WTERMSIG(status);
  }
  return result;
}

int CountOccurrences(absl::string_view text, absl::string_view what) {
  int n = 0;
  for (size_t at = text.find(what); at != absl::string_view::npos;
       at = text.find(what, at + what.size())) {
    ++n;
  }
  return n;
}

}  // namespace signet::testing
