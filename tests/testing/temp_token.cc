#include "tests/testing/temp_token.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <optional>
#include <string>
#include <system_error>
#include <utility>

#include "absl/cleanup/cleanup.h"
#include "absl/status/status.h"
#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/string_view.h"
#include "base/status_macros.h"
#include "tests/testing/process.h"

namespace signet::testing {
namespace {

constexpr char kSoftHsmModulePath[] = "/usr/lib/softhsm/libsofthsm2.so";
constexpr size_t kMaxLabelLength = 32;  // CK_TOKEN_INFO.label

std::string ErrnoText(int error) {
  return absl::StrCat(std::strerror(error), " (errno ", error, ")");
}

absl::Status ErrnoStatus(int error, absl::string_view what) {
  std::string message = absl::StrCat(what, ": ", ErrnoText(error));
  if (error == EPERM || error == EACCES) {
    return absl::PermissionDeniedError(message);
  }
  return absl::InternalError(message);
}

// Creates `path` (which must not exist) with exactly `mode`.
absl::Status WriteNewFile(const std::string& path, absl::string_view contents,
                          mode_t mode) {
  int fd = open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, mode);
  if (fd < 0) {
    return ErrnoStatus(errno, absl::StrCat("create ", path));
  }
  absl::Cleanup close_fd = [fd] { close(fd); };
  if (fchmod(fd, mode) != 0) {  // the umask may have removed bits
    return ErrnoStatus(errno, absl::StrCat("chmod ", path));
  }
  size_t done = 0;
  while (done < contents.size()) {
    ssize_t n = write(fd, contents.data() + done, contents.size() - done);
    if (n < 0 && errno == EINTR) {
      continue;
    }
    if (n < 0) {
      return ErrnoStatus(errno, absl::StrCat("write ", path));
    }
    done += static_cast<size_t>(n);
  }
  return absl::OkStatus();
}

absl::Status ChownTo(const std::string& path, const UserIds& user) {
  if (chown(path.c_str(), user.uid, user.gid) != 0) {
    return ErrnoStatus(errno, absl::StrCat("chown ", path, " to ", user.name,
                                           " (tests that use service users "
                                           "must run as root)"));
  }
  return absl::OkStatus();
}

// 16 hex characters from /dev/urandom.
absl::StatusOr<std::string> RandomPin() {
  int fd = open("/dev/urandom", O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    return ErrnoStatus(errno, "open /dev/urandom");
  }
  absl::Cleanup close_fd = [fd] { close(fd); };
  char bytes[8];
  size_t done = 0;
  while (done < sizeof(bytes)) {
    ssize_t n = read(fd, bytes + done, sizeof(bytes) - done);
    if (n < 0 && errno == EINTR) {
      continue;
    }
    if (n <= 0) {
      return ErrnoStatus(n < 0 ? errno : EIO, "read /dev/urandom");
    }
    done += static_cast<size_t>(n);
  }
  return absl::BytesToHexString(absl::string_view(bytes, sizeof(bytes)));
}

// RFC 7512 pchar for a path attribute value: unreserved characters pass,
// everything else is percent-encoded.
std::string PercentEncode(absl::string_view value) {
  std::string out;
  for (char c : value) {
    const unsigned char u = static_cast<unsigned char>(c);
    if ((u >= 'A' && u <= 'Z') || (u >= 'a' && u <= 'z') ||
        (u >= '0' && u <= '9') || c == '-' || c == '.' || c == '_' ||
        c == '~') {
      out.push_back(c);
    } else {
      absl::StrAppendFormat(&out, "%%%02X", u);
    }
  }
  return out;
}

}  // namespace

absl::StatusOr<std::unique_ptr<TempToken>> TempToken::Create(
    const TempTokenOptions& options) {
  if (options.label.empty() || options.label.size() > kMaxLabelLength) {
    return absl::InvalidArgumentError(
        absl::StrCat("token label must be 1 to ", kMaxLabelLength,
                     " bytes, got '", options.label, "'"));
  }
  std::optional<UserIds> owner;
  if (!options.owner_user.empty()) {
    SIGNET_ASSIGN_OR_RETURN(owner, LookupUser(options.owner_user));
  }
  std::optional<UserIds> pin_reader;
  if (!options.pin_file_user.empty()) {
    SIGNET_ASSIGN_OR_RETURN(pin_reader, LookupUser(options.pin_file_user));
  }

  // Under /tmp, not $TMPDIR: the service users must be able to reach the
  // directory, and a private TMPDIR (0700 under a home) would stop them.
  char dir_template[] = "/tmp/signet-test-XXXXXX";
  if (mkdtemp(dir_template) == nullptr) {
    return ErrnoStatus(errno, "mkdtemp /tmp/signet-test-XXXXXX");
  }
  // From here on the destructor removes whatever was created.
  std::unique_ptr<TempToken> token(new TempToken());
  token->dir_ = dir_template;
  token->conf_path_ = absl::StrCat(token->dir_, "/softhsm2.conf");
  token->tokens_dir_ = absl::StrCat(token->dir_, "/tokens");
  token->pin_file_path_ = absl::StrCat(token->dir_, "/user.pin");
  token->label_ = options.label;
  token->owner_user_ = options.owner_user;

  if (chmod(token->dir_.c_str(), 0755) != 0) {
    return ErrnoStatus(errno, absl::StrCat("chmod ", token->dir_));
  }
  if (mkdir(token->tokens_dir_.c_str(), 0700) != 0) {
    return ErrnoStatus(errno, absl::StrCat("mkdir ", token->tokens_dir_));
  }
  if (chmod(token->tokens_dir_.c_str(), 0700) != 0) {
    return ErrnoStatus(errno, absl::StrCat("chmod ", token->tokens_dir_));
  }
  if (owner.has_value()) {
    SIGNET_RETURN_IF_ERROR(ChownTo(token->tokens_dir_, *owner));
  }
  const std::string conf = absl::StrCat(
      "# written by signet::testing::TempToken\n"
      "directories.tokendir = ",
      token->tokens_dir_, "\n",
      "objectstore.backend = file\n"
      "log.level = ERROR\n");
  SIGNET_RETURN_IF_ERROR(WriteNewFile(token->conf_path_, conf, 0644));

  SIGNET_ASSIGN_OR_RETURN(std::string so_pin, RandomPin());
  SIGNET_ASSIGN_OR_RETURN(std::string user_pin, RandomPin());
  token->so_pin_ = std::move(so_pin);
  token->user_pin_ = std::move(user_pin);

  SpawnOptions init;
  init.argv = {"softhsm2-util", "--init-token", "--free",
               "--label",       token->label_,  "--so-pin",
               token->so_pin_,  "--pin",        token->user_pin_};
  init.env = {{"SOFTHSM2_CONF", token->conf_path_}};
  init.as_user = options.owner_user;
  SIGNET_ASSIGN_OR_RETURN(RunResult ran, RunProcess(init, absl::Seconds(60)));
  if (!ran.succeeded()) {
    return absl::InternalError(absl::StrCat(
        "softhsm2-util --init-token --label ", token->label_,
        ran.timed_out ? " timed out"
                      : absl::StrCat(" exited with ", ran.exit_code, " signal ",
                                     ran.term_signal),
        ": ", ran.output));
  }

  if (absl::Status s =
          WriteNewFile(token->pin_file_path_, token->user_pin_, 0600);
      !s.ok()) {
    return s;
  }
  if (pin_reader.has_value()) {
    SIGNET_RETURN_IF_ERROR(ChownTo(token->pin_file_path_, *pin_reader));
  }
  return token;
}

TempToken::~TempToken() {
  if (dir_.empty()) {
    return;
  }
  std::error_code ignored;
  std::filesystem::remove_all(dir_, ignored);
}

std::string TempToken::token_uri() const {
  return absl::StrCat("pkcs11:token=", PercentEncode(label_));
}

std::string TempToken::softhsm_module_path() { return kSoftHsmModulePath; }

void TempToken::SetSoftHsmConfInThisProcess() const {
  setenv("SOFTHSM2_CONF", conf_path_.c_str(), 1);
}

}  // namespace signet::testing
