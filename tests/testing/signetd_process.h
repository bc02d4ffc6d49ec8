// A real signetd process for integration tests: writes its configuration,
// starts the binary (optionally as another user), captures its output, and
// stops it with a signal.
#ifndef SIGNET_TESTS_TESTING_SIGNETD_PROCESS_H_
#define SIGNET_TESTS_TESTING_SIGNETD_PROCESS_H_

#include <sys/types.h>

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"

namespace signet::testing {

struct SignetdOptions {
  std::string binary;       // path of signetd
  std::string config_text;  // text-format SignetConfig
  std::vector<std::string> flags;
  std::vector<std::pair<std::string, std::string>> env;
  std::string as_user;      // run as this user (needs root)
  int open_file_limit = 0;  // if positive, signetd's `ulimit -n`
};

class SignetdProcess {
 public:
  // Writes <dir>/signetd-<n>.textproto (0644) and starts signetd with
  // --config pointing at it; output goes to <dir>/signetd-<n>.log.
  static absl::StatusOr<std::unique_ptr<SignetdProcess>> Start(
      absl::string_view dir, const SignetdOptions& options);
  ~SignetdProcess();

  pid_t pid() const { return pid_; }
  std::string Output() const;
  // Waits until the output contains `text`; DEADLINE_EXCEEDED (with the
  // output) if it does not in time, FAILED_PRECONDITION if signetd exited.
  absl::Status WaitForOutput(absl::string_view text, absl::Duration timeout);
  // The port from "listening on <host>:<port>", once logged.
  absl::StatusOr<int> WaitForPort(absl::Duration timeout);
  // The JWKS HTTP endpoint's port, from "JWKS HTTP listening on
  // <host>:<port>", once logged.
  absl::StatusOr<int> WaitForHttpPort(absl::Duration timeout);
  // Sends `sig` and waits for the exit; returns the exit code (-signal if
  // killed by one).
  absl::StatusOr<int> Stop(int sig, absl::Duration timeout);
  // Waits for signetd to exit by itself.
  absl::StatusOr<int> WaitExit(absl::Duration timeout);

 private:
  SignetdProcess() = default;
  pid_t pid_ = 0;
  bool exited_ = false;
  int exit_code_ = 0;
  std::string log_path_;
};

}  // namespace signet::testing

#endif  // SIGNET_TESTS_TESTING_SIGNETD_PROCESS_H_
