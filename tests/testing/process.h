// Starting, running and signalling real child processes for integration
// tests: the plumbing under TempToken and P11KitServer, and what tests use to
// run tools such as pkcs11-tool as another user.
//
// Everything that can fail returns absl::Status; nothing throws. Children are
// started with fork + execve and every argument (argv, environment, user ids)
// is prepared before fork, so the functions are safe to call from a
// multi-threaded test process. The functions themselves keep no state and are
// thread-compatible.
#ifndef SIGNET_TESTS_TESTING_PROCESS_H_
#define SIGNET_TESTS_TESTING_PROCESS_H_

#include <sys/types.h>

#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"

namespace signet::testing {

// A system user as the kernel sees it.
struct UserIds {
  std::string name;
  uid_t uid = 0;
  gid_t gid = 0;  // primary group
  std::string home;
};

// Looks a user up in the password database. NOT_FOUND names the user, so a
// test can tell the operator to run the setup script that creates it.
absl::StatusOr<UserIds> LookupUser(absl::string_view name);

// True while any process (zombies included) is in process group `pgid`:
// kill(-pgid, 0) succeeds, or fails only with EPERM (the group exists but
// belongs to another user).
bool ProcessGroupAlive(pid_t pgid);

// A process as /proc/<pid>/stat shows it.
struct ProcessInfo {
  pid_t pid = 0;
  char state = '?';  // R, S, D, T (stopped), Z (zombie), ...
  std::string command;
};

// The processes now in process group `pgid`, read from /proc (a snapshot:
// members may come and go while it is read).
std::vector<ProcessInfo> ProcessGroupMembers(pid_t pgid);

// How to start a child.
struct SpawnOptions {
  // argv[0] is looked up in PATH unless it contains a '/'.
  std::vector<std::string> argv;
  // Set in the child's environment (on top of this process's environment).
  std::vector<std::pair<std::string, std::string>> env;
  // Removed from the child's environment.
  std::vector<std::string> unset_env;
  // If non-empty, the child drops to this user (supplementary groups, gid,
  // uid; HOME set to the user's home) before exec. Needs root.
  std::string as_user;
  // Descriptors for the child's stdout and stderr; -1 means /dev/null. The
  // caller keeps ownership. stdin is always /dev/null.
  int stdout_fd = -1;
  int stderr_fd = -1;
  // Put the child in a new process group whose id is its pid, so the child
  // and everything it forks can be signalled at once with kill(-pid, sig).
  bool new_process_group = true;
  // If positive, the child's open-file limit, soft and hard (as `ulimit -n`
  // in a launcher would set it: lowering needs no privilege).
  int open_file_limit = 0;
};

// Starts a child and returns its pid once exec has succeeded. The caller must
// reap it (waitpid). INVALID_ARGUMENT for an empty argv, NOT_FOUND for an
// unknown program or user, INTERNAL when fork, the privilege drop or exec
// fail (the message says which step and the errno).
absl::StatusOr<pid_t> Spawn(const SpawnOptions& options);

// The outcome of RunProcess.
struct RunResult {
  int exit_code = -1;   // -1 when the child was killed by a signal
  int term_signal = 0;  // the signal that killed it, else 0
  bool timed_out = false;
  std::string output;  // stdout and stderr interleaved

  bool succeeded() const { return !timed_out && exit_code == 0; }
};

// Runs a child to completion and captures its output. When `timeout` passes
// first, the child's whole process group is SIGKILLed and the result has
// timed_out set (that is not an error status: a test may expect a command to
// hang, e.g. against a stalled HSM). Errors are those of Spawn, or INTERNAL
// for a failing pipe/waitpid.
absl::StatusOr<RunResult> RunProcess(
    SpawnOptions options, absl::Duration timeout = absl::Seconds(60));

// How many times `what` occurs in `text` (a process's output, a log),
// without overlaps.
int CountOccurrences(absl::string_view text, absl::string_view what);

}  // namespace signet::testing

#endif  // SIGNET_TESTS_TESTING_PROCESS_H_
