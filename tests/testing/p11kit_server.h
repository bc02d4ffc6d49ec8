// A real `p11-kit server` in front of a TempToken: the HSM process boundary of
// docs/architecture.md ("The HSM boundary as it behaves"), for tests that need
// to lose, stall or restart the HSM.
//
// The server runs in its own process group. Every client connection makes it
// fork a p11-kit-remote child that survives a SIGTERM to the server's pid, so
// Kill/Stall/Resume always signal the whole group (kill(-pgid, sig)). After a
// SIGKILL the server is reaped here; its orphaned children are reaped by init.
//
// Files, all under the token's directory:
//   <token dir>/server-<n>/           0755, owned by run_as_user if set (the
//                                     server binds its socket after dropping
//                                     to that user, so it must be able to
//                                     write here)
//   <token dir>/server-<n>/p11-kit.sock
//   <token dir>/server-<n>/server.log  the server's stdout and stderr
//
// Not thread-safe: one test thread drives a server. Destroy it before its
// TempToken.
#ifndef SIGNET_TESTS_TESTING_P11KIT_SERVER_H_
#define SIGNET_TESTS_TESTING_P11KIT_SERVER_H_

#include <sys/types.h>

#include <memory>
#include <optional>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "tests/testing/process.h"
#include "tests/testing/temp_token.h"

namespace signet::testing {

struct P11KitServerOptions {
  // --run-as-user: the user the server and its remote children run as (e.g.
  // "signet-hsm"). It must own the token's files (TempTokenOptions.owner_user).
  std::string run_as_user;
  // --user: the only uid the server accepts connections from, root included
  // (e.g. "signet"). The socket is also chowned to this user, mode 0600, as
  // the launcher does in production: p11-kit 0.24.1 leaves it owned by the
  // run-as user, mode 0711.
  std::string allowed_user;
  // How long to wait for the socket to be listening on (re)start. Generous:
  // shared CI machines with two cores are slow.
  absl::Duration start_timeout = absl::Seconds(20);
};

class P11KitServer {
 public:
  // Starts the server and returns once its socket is listening (and chowned
  // to allowed_user). Errors: NOT_FOUND for an unknown user (run the setup
  // script that creates the system users); FAILED_PRECONDITION when
  // run_as_user does not own the token directory; UNAVAILABLE when the
  // server exits during start-up; DEADLINE_EXCEEDED when the socket does not
  // appear in time (both messages include the server's log).
  static absl::StatusOr<std::unique_ptr<P11KitServer>> Start(
      const TempToken& token, P11KitServerOptions options = {});

  // Kill().
  ~P11KitServer();

  P11KitServer(const P11KitServer&) = delete;
  P11KitServer& operator=(const P11KitServer&) = delete;

  // "unix:path=<socket_path()>", the value of P11_KIT_SERVER_ADDRESS.
  std::string address() const;
  const std::string& socket_path() const { return socket_path_; }
  const std::string& log_path() const { return log_path_; }
  // The server's process group id (== its pid); 0 when not running.
  pid_t pgid() const { return pid_; }
  bool running() const { return pid_ > 0; }
  // The server's log so far (for failure messages).
  std::string ReadLog() const;

  // SIGKILLs the whole process group (a stalled group too), reaps the
  // server, waits until the group is empty and removes the socket file.
  // Idempotent. DEADLINE_EXCEEDED if group members are still there after
  // the wait (orphans that nobody reaps).
  absl::Status Kill();
  // Kill() if running, then start again on the same socket path and wait for
  // it as Start does (same errors).
  absl::Status Restart();
  // SIGSTOPs the whole group, a stalled HSM: connections stay open, calls
  // block. Returns once the server is stopped. FAILED_PRECONDITION if not
  // running.
  absl::Status Stall();
  // SIGCONTs the whole group. FAILED_PRECONDITION if not running.
  absl::Status Resume();
  // SIGSTOPs one of the server's per-connection children (a p11-kit-remote
  // process): one connection of the client stalls while the others, and
  // new ones, are served. Returns its pid once it is stopped; Resume()
  // continues it. NOT_FOUND if the server has no such child.
  absl::StatusOr<pid_t> StallOneConnection();

  // setenv("P11_KIT_SERVER_ADDRESS", address()) for tests that load the
  // p11-kit client module in this process.
  void ExportAddressInThisProcess() const;

  // The p11-kit client module (p11-kit-client.so) that talks to the server.
  static std::string client_module_path();

 private:
  P11KitServer() = default;

  // Spawns the server and waits for its socket.
  absl::Status Launch();

  std::string conf_path_;
  std::string token_uri_;
  std::string run_dir_;
  std::string socket_path_;
  std::string log_path_;
  P11KitServerOptions options_;
  std::optional<UserIds> allowed_;
  pid_t pid_ = 0;
};

}  // namespace signet::testing

#endif  // SIGNET_TESTS_TESTING_P11KIT_SERVER_H_
