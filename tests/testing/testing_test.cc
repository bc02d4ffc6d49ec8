// Self-test of the integration-test helpers against the real programs:
// softhsm2-util, p11-kit server, pkcs11-tool through p11-kit-client.so, and
// the signet-hsm / signet system users (docs/architecture.md, "A deployment").
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>
#include <sstream>
#include <string>
#include <system_error>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/testing/p11kit_server.h"
#include "tests/testing/process.h"
#include "tests/testing/temp_token.h"

namespace signet::testing {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

constexpr char kHsmUser[] = "signet-hsm";
constexpr char kServiceUser[] = "signet";
constexpr char kOtherUser[] = "nobody";
// Bounded waits: generous, since the machine may be a loaded 2-core runner.
constexpr absl::Duration kWait = absl::Seconds(30);

// ASSERT_OK for absl::Status / StatusOr (Abseil 20220623 has no matchers).
#define SIGNET_ASSERT_OK(expr)                          \
  do {                                                  \
    const absl::Status signet_status_ = StatusOf(expr); \
    ASSERT_TRUE(signet_status_.ok()) << signet_status_; \
  } while (false)

std::string Describe(const RunResult& result) {
  return absl::StrCat(
      "exit_code=", result.exit_code, " signal=", result.term_signal,
      " timed_out=", result.timed_out, " output:\n", result.output);
}

const absl::Status& StatusOf(const absl::Status& status) { return status; }
template <typename T>
const absl::Status& StatusOf(const absl::StatusOr<T>& status_or) {
  return status_or.status();
}

std::string ReadFile(const std::string& path) {
  std::ifstream in(path);
  std::stringstream contents;
  contents << in.rdbuf();
  return contents.str();
}

// Options with one field set (GCC warns about designated initializers that
// leave fields out).
TempTokenOptions WithLabel(absl::string_view label) {
  TempTokenOptions options;
  options.label = std::string(label);
  return options;
}

// `pkcs11-tool -L` through p11-kit-client.so against `server`, optionally as
// another user.
absl::StatusOr<RunResult> ListSlots(
    const P11KitServer& server, absl::string_view as_user = "",
    absl::Duration timeout = absl::Seconds(60)) {
  SpawnOptions options;
  options.argv = {"pkcs11-tool", "--module", P11KitServer::client_module_path(),
                  "-L"};
  options.env = {{"P11_KIT_SERVER_ADDRESS", server.address()}};
  options.as_user = std::string(as_user);
  return RunProcess(options, timeout);
}

// True if pkcs11-tool's slot list shows a token labelled `label`
// ("  token label        : <label>").
bool ShowsToken(const RunResult& result, absl::string_view label) {
  for (absl::string_view line : absl::StrSplit(result.output, '\n')) {
    line = absl::StripAsciiWhitespace(line);
    if (!absl::ConsumePrefix(&line, "token label")) {
      continue;
    }
    line = absl::StripLeadingAsciiWhitespace(line);
    if (absl::ConsumePrefix(&line, ":") &&
        absl::StripAsciiWhitespace(line) == label) {
      return true;
    }
  }
  return false;
}

// `pgrep -g pgid`: exit code 1 means no process is in the group.
absl::StatusOr<RunResult> Pgrep(pid_t pgid) {
  SpawnOptions options;
  options.argv = {"pgrep", "-g", absl::StrCat(pgid)};
  return RunProcess(options, kWait);
}

// Forks, becomes `user` and opens `path` read-only: 0 on success, else the
// errno of open() (or of the privilege drop, as 200+).
int OpenAsUser(const UserIds& user, const std::string& path) {
  pid_t pid = fork();
  if (pid == 0) {
    if (setgroups(1, &user.gid) != 0 || setgid(user.gid) != 0) {
      _exit(201);
    }
    if (setuid(user.uid) != 0) {
      _exit(202);
    }
    int fd = open(path.c_str(), O_RDONLY);
    _exit(fd >= 0 ? 0 : errno);
  }
  if (pid < 0) {
    return 203;
  }
  int status = 0;
  while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  return WIFEXITED(status) ? WEXITSTATUS(status) : 204;
}

// The real uid of a process ("Uid:" in /proc/<pid>/status), -1 if unknown.
// Not the owner of /proc/<pid>: that is root for a process that is not
// dumpable, as one that dropped privileges is.
int64_t RealUid(pid_t pid) {
  std::ifstream status(absl::StrCat("/proc/", pid, "/status"));
  std::string line;
  while (std::getline(status, line)) {
    absl::string_view rest = line;
    if (absl::ConsumePrefix(&rest, "Uid:")) {
      std::vector<absl::string_view> ids =
          absl::StrSplit(rest, absl::ByAnyChar(" \t"), absl::SkipEmpty());
      int64_t uid;
      if (!ids.empty() && absl::SimpleAtoi(ids[0], &uid)) {
        return uid;
      }
    }
  }
  return -1;
}

// A regular file inside the token directory (e.g. token.object).
std::string FindTokenFile(const std::string& tokens_dir) {
  std::error_code error;
  for (std::filesystem::recursive_directory_iterator it(tokens_dir, error), end;
       !error && it != end; it.increment(error)) {
    if (it->is_regular_file(error)) {
      return it->path().string();
    }
  }
  return "";
}

// The users of docs/architecture.md ("A deployment") must exist: a missing user
// is a failure that says how to fix it, never a skip.
absl::StatusOr<UserIds> RequireUser(const char* name) {
  absl::StatusOr<UserIds> user = LookupUser(name);
  if (!user.ok() && absl::IsNotFound(user.status())) {
    return absl::NotFoundError(absl::StrCat(
        user.status().message(),
        ": run scripts/setup as root first (it creates the system users "
        "signet-hsm and signet; by hand: useradd --system --user-group "
        "--no-create-home --shell /usr/sbin/nologin ",
        name, ")"));
  }
  return user;
}

#define SIGNET_REQUIRE_ROOT()                                              \
  ASSERT_EQ(geteuid(), 0u)                                                 \
      << "this test switches users (signet-hsm, signet, nobody) and must " \
         "run as root"

// ---------------------------------------------------------------------------
// TempToken

TEST(TempTokenTest, CreatesConfiguredToken) {
  absl::StatusOr<std::unique_ptr<TempToken>> token =
      TempToken::Create(WithLabel("signet-selftest"));
  SIGNET_ASSERT_OK(token);
  const TempToken& t = **token;

  struct stat st;
  ASSERT_EQ(stat(t.dir().c_str(), &st), 0);
  EXPECT_TRUE(S_ISDIR(st.st_mode));
  EXPECT_EQ(st.st_mode & 07777, 0755u);
  EXPECT_TRUE(absl::StartsWith(t.dir(), "/tmp/"));

  ASSERT_EQ(stat(t.tokens_dir().c_str(), &st), 0);
  EXPECT_TRUE(S_ISDIR(st.st_mode));
  EXPECT_EQ(st.st_mode & 07777, 0700u);
  EXPECT_EQ(t.tokens_dir(), t.dir() + "/tokens");
  EXPECT_FALSE(FindTokenFile(t.tokens_dir()).empty())
      << "softhsm2-util wrote no token files";

  EXPECT_EQ(t.conf_path(), t.dir() + "/softhsm2.conf");
  const std::string conf = ReadFile(t.conf_path());
  EXPECT_THAT(conf, HasSubstr("directories.tokendir = " + t.tokens_dir()));
  EXPECT_THAT(conf, HasSubstr("objectstore.backend = file"));
  EXPECT_THAT(conf, HasSubstr("log.level = ERROR"));

  EXPECT_EQ(t.label(), "signet-selftest");
  EXPECT_EQ(t.token_uri(), "pkcs11:token=signet-selftest");
  EXPECT_EQ(TempToken::softhsm_module_path(),
            "/usr/lib/softhsm/libsofthsm2.so");
  for (const std::string& pin : {t.user_pin(), t.so_pin()}) {
    EXPECT_EQ(pin.size(), 16u);
    EXPECT_EQ(pin.find_first_not_of("0123456789abcdef"), std::string::npos)
        << pin;
  }
  EXPECT_NE(t.user_pin(), t.so_pin());

  ASSERT_EQ(stat(t.pin_file_path().c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 07777, 0600u);
  EXPECT_EQ(ReadFile(t.pin_file_path()), t.user_pin());

  const std::string dir = t.dir();
  token->reset();
  EXPECT_NE(stat(dir.c_str(), &st), 0) << dir << " left behind";
}

TEST(TempTokenTest, DefaultLabel) {
  absl::StatusOr<std::unique_ptr<TempToken>> token = TempToken::Create();
  SIGNET_ASSERT_OK(token);
  EXPECT_EQ((*token)->label(), "signet-test");
  EXPECT_EQ((*token)->token_uri(), "pkcs11:token=signet-test");
}

TEST(TempTokenTest, RejectsBadLabel) {
  EXPECT_EQ(TempToken::Create(WithLabel("")).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(TempToken::Create(WithLabel(std::string(33, 'x'))).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(TempTokenTest, SoftHsmConfForThisProcess) {
  absl::StatusOr<std::unique_ptr<TempToken>> token =
      TempToken::Create(WithLabel("signet-inproc"));
  SIGNET_ASSERT_OK(token);
  (*token)->SetSoftHsmConfInThisProcess();
  const char* conf = getenv("SOFTHSM2_CONF");
  ASSERT_NE(conf, nullptr);
  EXPECT_EQ(std::string(conf), (*token)->conf_path());

  // A child inherits it: softhsm2-util now finds the token.
  SpawnOptions show;
  show.argv = {"softhsm2-util", "--show-slots"};
  absl::StatusOr<RunResult> shown = RunProcess(show, kWait);
  unsetenv("SOFTHSM2_CONF");
  SIGNET_ASSERT_OK(shown);
  EXPECT_TRUE(shown->succeeded()) << Describe(*shown);
  EXPECT_THAT(shown->output, HasSubstr("signet-inproc"));
}

// ---------------------------------------------------------------------------
// P11KitServer as the calling user

TEST(P11KitServerTest, ServesTokenThenKillAndRestart) {
  absl::StatusOr<std::unique_ptr<TempToken>> token =
      TempToken::Create(WithLabel("signet-selftest"));
  SIGNET_ASSERT_OK(token);
  absl::StatusOr<std::unique_ptr<P11KitServer>> server =
      P11KitServer::Start(**token);
  SIGNET_ASSERT_OK(server);
  P11KitServer& s = **server;

  EXPECT_TRUE(absl::StartsWith(s.socket_path(), (*token)->dir() + "/"));
  EXPECT_EQ(s.address(), "unix:path=" + s.socket_path());
  struct stat st;
  ASSERT_EQ(stat(s.socket_path().c_str(), &st), 0);
  EXPECT_TRUE(S_ISSOCK(st.st_mode));
  EXPECT_GT(s.pgid(), 0);
  EXPECT_TRUE(ProcessGroupAlive(s.pgid()));

  absl::StatusOr<RunResult> listed = ListSlots(s);
  SIGNET_ASSERT_OK(listed);
  EXPECT_TRUE(ShowsToken(*listed, "signet-selftest")) << Describe(*listed);

  // Kill: the whole group is gone, and so is the socket.
  const pid_t old_pgid = s.pgid();
  SIGNET_ASSERT_OK(s.Kill());
  EXPECT_FALSE(s.running());
  EXPECT_EQ(s.pgid(), 0);
  EXPECT_FALSE(ProcessGroupAlive(old_pgid));
  absl::StatusOr<RunResult> pgrep = Pgrep(old_pgid);
  SIGNET_ASSERT_OK(pgrep);
  EXPECT_EQ(pgrep->exit_code, 1) << Describe(*pgrep);
  EXPECT_NE(stat(s.socket_path().c_str(), &st), 0);

  // Without a server the client module initialises with zero slots.
  listed = ListSlots(s);
  SIGNET_ASSERT_OK(listed);
  EXPECT_FALSE(ShowsToken(*listed, "signet-selftest")) << Describe(*listed);

  SIGNET_ASSERT_OK(s.Kill());  // idempotent
  EXPECT_EQ(s.Stall().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(s.Resume().code(), absl::StatusCode::kFailedPrecondition);

  // Restart on the same socket path.
  const std::string socket_path = s.socket_path();
  SIGNET_ASSERT_OK(s.Restart());
  EXPECT_EQ(s.socket_path(), socket_path);
  EXPECT_TRUE(s.running());
  EXPECT_TRUE(ProcessGroupAlive(s.pgid()));
  listed = ListSlots(s);
  SIGNET_ASSERT_OK(listed);
  EXPECT_TRUE(ShowsToken(*listed, "signet-selftest")) << Describe(*listed);

  // Restart while running works too.
  SIGNET_ASSERT_OK(s.Restart());
  listed = ListSlots(s);
  SIGNET_ASSERT_OK(listed);
  EXPECT_TRUE(ShowsToken(*listed, "signet-selftest")) << Describe(*listed);
}

// Holds a client connection open, so the server forks a p11-kit-remote child
// that lives as long as the connection.
class Connection {
 public:
  explicit Connection(const std::string& socket_path) {
    fd_ = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_un address;
    std::memset(&address, 0, sizeof(address));
    address.sun_family = AF_UNIX;
    std::strncpy(address.sun_path, socket_path.c_str(),
                 sizeof(address.sun_path) - 1);
    if (fd_ >= 0 && connect(fd_, reinterpret_cast<struct sockaddr*>(&address),
                            sizeof(address)) != 0) {
      close(fd_);
      fd_ = -1;
    }
  }
  ~Connection() {
    if (fd_ >= 0) {
      close(fd_);
    }
  }
  Connection(const Connection&) = delete;
  Connection& operator=(const Connection&) = delete;
  bool connected() const { return fd_ >= 0; }

 private:
  int fd_ = -1;
};

// Waits until `pgid` has at least `count` live (non-zombie) members.
bool WaitForLiveMembers(pid_t pgid, size_t count) {
  const absl::Time deadline = absl::Now() + kWait;
  while (absl::Now() < deadline) {
    size_t live = 0;
    for (const ProcessInfo& member : ProcessGroupMembers(pgid)) {
      live += member.state != 'Z' && member.state != 'X';
    }
    if (live >= count) {
      return true;
    }
    absl::SleepFor(absl::Milliseconds(20));
  }
  return false;
}

TEST(P11KitServerTest, KillTakesDownRemoteChildren) {
  absl::StatusOr<std::unique_ptr<TempToken>> token = TempToken::Create();
  SIGNET_ASSERT_OK(token);
  absl::StatusOr<std::unique_ptr<P11KitServer>> server =
      P11KitServer::Start(**token);
  SIGNET_ASSERT_OK(server);
  const pid_t pgid = (*server)->pgid();

  Connection connection((*server)->socket_path());
  ASSERT_TRUE(connection.connected());
  ASSERT_TRUE(WaitForLiveMembers(pgid, 2))
      << "no p11-kit-remote child appeared; log:\n"
      << (*server)->ReadLog();

  // What docs/architecture.md warns about ("The HSM boundary as it behaves",
  // stopping the HSM): SIGTERM to the server's pid alone leaves the
  // connection's remote child running.
  ASSERT_EQ(kill(pgid, SIGTERM), 0);
  bool leader_exited = false;
  const absl::Time deadline = absl::Now() + kWait;
  while (!leader_exited && absl::Now() < deadline) {
    for (const ProcessInfo& member : ProcessGroupMembers(pgid)) {
      leader_exited =
          leader_exited || (member.pid == pgid && member.state == 'Z');
    }
    absl::SleepFor(absl::Milliseconds(20));
  }
  ASSERT_TRUE(leader_exited) << "p11-kit server ignored SIGTERM";
  bool remote_alive = false;
  for (const ProcessInfo& member : ProcessGroupMembers(pgid)) {
    remote_alive = remote_alive || (member.pid != pgid && member.state != 'Z');
  }
  EXPECT_TRUE(remote_alive) << "expected the remote child to outlive SIGTERM";

  // Kill() signals the group, so nothing is left.
  SIGNET_ASSERT_OK((*server)->Kill());
  EXPECT_FALSE(ProcessGroupAlive(pgid));
  absl::StatusOr<RunResult> pgrep = Pgrep(pgid);
  SIGNET_ASSERT_OK(pgrep);
  EXPECT_EQ(pgrep->exit_code, 1) << Describe(*pgrep);
}

TEST(P11KitServerTest, StallAndResume) {
  absl::StatusOr<std::unique_ptr<TempToken>> token =
      TempToken::Create(WithLabel("signet-stall"));
  SIGNET_ASSERT_OK(token);
  absl::StatusOr<std::unique_ptr<P11KitServer>> server =
      P11KitServer::Start(**token);
  SIGNET_ASSERT_OK(server);
  P11KitServer& s = **server;

  // A connection made before the stall: its remote child stops too.
  Connection connection(s.socket_path());
  ASSERT_TRUE(connection.connected());
  ASSERT_TRUE(WaitForLiveMembers(s.pgid(), 2));

  SIGNET_ASSERT_OK(s.Stall());
  const std::vector<ProcessInfo> members = ProcessGroupMembers(s.pgid());
  EXPECT_GE(members.size(), 2u);
  for (const ProcessInfo& member : members) {
    EXPECT_EQ(member.state, 'T') << member.pid << " " << member.command;
  }
  // A stalled HSM answers nothing: the client blocks until we kill it.
  absl::StatusOr<RunResult> listed = ListSlots(s, "", absl::Seconds(3));
  SIGNET_ASSERT_OK(listed);
  EXPECT_TRUE(listed->timed_out) << Describe(*listed);

  SIGNET_ASSERT_OK(s.Resume());
  for (const ProcessInfo& member : ProcessGroupMembers(s.pgid())) {
    EXPECT_NE(member.state, 'T') << member.pid << " " << member.command;
  }
  listed = ListSlots(s);
  SIGNET_ASSERT_OK(listed);
  EXPECT_TRUE(ShowsToken(*listed, "signet-stall")) << Describe(*listed);

  // Kill works on a stalled group as well.
  SIGNET_ASSERT_OK(s.Stall());
  const pid_t pgid = s.pgid();
  SIGNET_ASSERT_OK(s.Kill());
  EXPECT_FALSE(ProcessGroupAlive(pgid));
}

TEST(P11KitServerTest, ExportAddressInThisProcess) {
  absl::StatusOr<std::unique_ptr<TempToken>> token = TempToken::Create();
  SIGNET_ASSERT_OK(token);
  absl::StatusOr<std::unique_ptr<P11KitServer>> server =
      P11KitServer::Start(**token);
  SIGNET_ASSERT_OK(server);
  (*server)->ExportAddressInThisProcess();
  const char* address = getenv("P11_KIT_SERVER_ADDRESS");
  ASSERT_NE(address, nullptr);
  EXPECT_EQ(std::string(address), (*server)->address());
  unsetenv("P11_KIT_SERVER_ADDRESS");
}

TEST(P11KitServerTest, DestructorKillsGroup) {
  absl::StatusOr<std::unique_ptr<TempToken>> token = TempToken::Create();
  SIGNET_ASSERT_OK(token);
  absl::StatusOr<std::unique_ptr<P11KitServer>> server =
      P11KitServer::Start(**token);
  SIGNET_ASSERT_OK(server);
  const pid_t pgid = (*server)->pgid();
  const std::string socket_path = (*server)->socket_path();
  server->reset();
  EXPECT_FALSE(ProcessGroupAlive(pgid));
  struct stat st;
  EXPECT_NE(stat(socket_path.c_str(), &st), 0);
}

TEST(P11KitServerTest, StartReportsServerExitWithItsLog) {
  absl::StatusOr<std::unique_ptr<TempToken>> token = TempToken::Create();
  SIGNET_ASSERT_OK(token);
  // p11-kit looks for its server program here, so it exits at once.
  setenv("P11_KIT_PRIVATEDIR", "/nonexistent", 1);
  absl::StatusOr<std::unique_ptr<P11KitServer>> server =
      P11KitServer::Start(**token);
  unsetenv("P11_KIT_PRIVATEDIR");
  EXPECT_EQ(server.status().code(), absl::StatusCode::kUnavailable)
      << server.status();
  EXPECT_THAT(server.status().message(), HasSubstr("not a valid command"));
}

TEST(P11KitServerTest, UnknownUserIsNotFound) {
  absl::StatusOr<std::unique_ptr<TempToken>> token = TempToken::Create();
  SIGNET_ASSERT_OK(token);
  P11KitServerOptions server_options;
  server_options.allowed_user = "no-such-user-x";
  EXPECT_EQ(P11KitServer::Start(**token, server_options).status().code(),
            absl::StatusCode::kNotFound);
  server_options = P11KitServerOptions();
  server_options.run_as_user = "no-such-user-x";
  EXPECT_EQ(P11KitServer::Start(**token, server_options).status().code(),
            absl::StatusCode::kNotFound);
  TempTokenOptions token_options;
  token_options.owner_user = "no-such-user-x";
  EXPECT_EQ(TempToken::Create(token_options).status().code(),
            absl::StatusCode::kNotFound);
}

// ---------------------------------------------------------------------------
// The production arrangement: the token and the HSM process belong to
// signet-hsm, only signet may use the socket.

TEST(ServiceUsersTest, HsmUserOwnsTokenOnlyServiceUserReachesSocket) {
  SIGNET_REQUIRE_ROOT();
  absl::StatusOr<UserIds> hsm_user = RequireUser(kHsmUser);
  SIGNET_ASSERT_OK(hsm_user);
  absl::StatusOr<UserIds> service_user = RequireUser(kServiceUser);
  SIGNET_ASSERT_OK(service_user);
  absl::StatusOr<UserIds> other_user = RequireUser(kOtherUser);
  SIGNET_ASSERT_OK(other_user);

  TempTokenOptions token_options;
  token_options.label = "signet-owned";
  token_options.owner_user = kHsmUser;
  token_options.pin_file_user = kServiceUser;
  absl::StatusOr<std::unique_ptr<TempToken>> token =
      TempToken::Create(token_options);
  SIGNET_ASSERT_OK(token);
  const TempToken& t = **token;
  EXPECT_EQ(t.owner_user(), kHsmUser);

  // The temp directory is traversable; the token directory is signet-hsm's.
  struct stat st;
  ASSERT_EQ(stat(t.dir().c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 07777, 0755u);
  ASSERT_EQ(stat(t.tokens_dir().c_str(), &st), 0);
  EXPECT_EQ(st.st_uid, hsm_user->uid);
  EXPECT_EQ(st.st_mode & 07777, 0700u);

  // softhsm2-util ran as signet-hsm, so the token files are its own...
  const std::string token_file = FindTokenFile(t.tokens_dir());
  ASSERT_FALSE(token_file.empty());
  ASSERT_EQ(stat(token_file.c_str(), &st), 0);
  EXPECT_EQ(st.st_uid, hsm_user->uid) << token_file;
  EXPECT_EQ(OpenAsUser(*hsm_user, token_file), 0) << token_file;
  // ...and signet cannot read them (nor list the directory).
  EXPECT_EQ(OpenAsUser(*service_user, token_file), EACCES) << token_file;
  EXPECT_EQ(OpenAsUser(*service_user, t.tokens_dir()), EACCES);

  // The PIN file is for signet only.
  ASSERT_EQ(stat(t.pin_file_path().c_str(), &st), 0);
  EXPECT_EQ(st.st_uid, service_user->uid);
  EXPECT_EQ(st.st_mode & 07777, 0600u);
  EXPECT_EQ(OpenAsUser(*service_user, t.pin_file_path()), 0);
  EXPECT_EQ(OpenAsUser(*other_user, t.pin_file_path()), EACCES);

  P11KitServerOptions server_options;
  server_options.run_as_user = kHsmUser;
  server_options.allowed_user = kServiceUser;
  absl::StatusOr<std::unique_ptr<P11KitServer>> server =
      P11KitServer::Start(t, server_options);
  SIGNET_ASSERT_OK(server);
  P11KitServer& s = **server;

  // The server runs as signet-hsm; the socket is signet's, mode 0600.
  EXPECT_EQ(RealUid(s.pgid()), static_cast<int64_t>(hsm_user->uid));
  ASSERT_EQ(stat(s.socket_path().c_str(), &st), 0);
  EXPECT_TRUE(S_ISSOCK(st.st_mode));
  EXPECT_EQ(st.st_uid, service_user->uid);
  EXPECT_EQ(st.st_mode & 07777, 0600u);

  // signet sees the token; nobody and root (refused by --user) do not.
  absl::StatusOr<RunResult> as_service = ListSlots(s, kServiceUser);
  SIGNET_ASSERT_OK(as_service);
  EXPECT_TRUE(ShowsToken(*as_service, "signet-owned"))
      << Describe(*as_service) << "\nserver log:\n"
      << s.ReadLog();
  absl::StatusOr<RunResult> as_other = ListSlots(s, kOtherUser);
  SIGNET_ASSERT_OK(as_other);
  EXPECT_FALSE(ShowsToken(*as_other, "signet-owned")) << Describe(*as_other);
  absl::StatusOr<RunResult> as_root = ListSlots(s);
  SIGNET_ASSERT_OK(as_root);
  EXPECT_FALSE(ShowsToken(*as_root, "signet-owned")) << Describe(*as_root);

  // Restart keeps the ownership arrangement.
  SIGNET_ASSERT_OK(s.Restart());
  ASSERT_EQ(stat(s.socket_path().c_str(), &st), 0);
  EXPECT_EQ(st.st_uid, service_user->uid);
  EXPECT_EQ(st.st_mode & 07777, 0600u);
  as_service = ListSlots(s, kServiceUser);
  SIGNET_ASSERT_OK(as_service);
  EXPECT_TRUE(ShowsToken(*as_service, "signet-owned")) << Describe(*as_service);

  const pid_t pgid = s.pgid();
  SIGNET_ASSERT_OK(s.Kill());
  EXPECT_FALSE(ProcessGroupAlive(pgid));
}

TEST(ServiceUsersTest, RunAsUserMustOwnTheToken) {
  SIGNET_REQUIRE_ROOT();
  SIGNET_ASSERT_OK(RequireUser(kHsmUser));
  absl::StatusOr<std::unique_ptr<TempToken>> token = TempToken::Create();
  SIGNET_ASSERT_OK(token);
  P11KitServerOptions server_options;
  server_options.run_as_user = kHsmUser;
  EXPECT_EQ(P11KitServer::Start(**token, server_options).status().code(),
            absl::StatusCode::kFailedPrecondition);
}

}  // namespace
}  // namespace signet::testing
