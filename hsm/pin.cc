#include "hsm/pin.h"

#include <fcntl.h>
#include <openssl/crypto.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <string>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace signet::hsm {
namespace {

constexpr size_t kMaxPinLength = 256;

}  // namespace

absl::StatusOr<Pin> Pin::FromFile(absl::string_view path) {
  const std::string path_str(path);
  int fd = open(path_str.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
  if (fd < 0) {
    int err = errno;
    if (err == ENOENT) {
      return absl::NotFoundError(absl::StrCat("PIN file ", path, " not found"));
    }
    return absl::PermissionDeniedError(
        absl::StrCat("cannot open PIN file ", path, ": ", strerror(err)));
  }
  struct stat st;
  if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    close(fd);
    return absl::FailedPreconditionError(
        absl::StrCat("PIN file ", path, " is not a regular file"));
  }
  if ((st.st_mode & S_IRWXO) != 0) {
    close(fd);
    return absl::FailedPreconditionError(absl::StrCat(
        "PIN file ", path,
        " is accessible to other users; make it mode 0600 or 0640"));
  }
  Pin pin;
  pin.bytes_.reserve(kMaxPinLength + 1);
  unsigned char buf[64];
  bool too_long = false;
  bool line_done = false;
  for (;;) {
    ssize_t n = read(fd, buf, sizeof(buf));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      int err = errno;
      OPENSSL_cleanse(buf, sizeof(buf));
      close(fd);
      return absl::PermissionDeniedError(
          absl::StrCat("cannot read PIN file ", path, ": ", strerror(err)));
    }
    if (n == 0) break;
    for (ssize_t i = 0; i < n && !line_done; ++i) {
      if (buf[i] == '\n' || buf[i] == '\r') {
        line_done = true;
      } else if (pin.bytes_.size() < kMaxPinLength) {
        pin.bytes_.push_back(buf[i]);
      } else {
        too_long = true;
      }
    }
    if (line_done) break;
  }
  OPENSSL_cleanse(buf, sizeof(buf));
  close(fd);
  if (too_long) {
    return absl::InvalidArgumentError(absl::StrCat(
        "PIN in ", path, " is longer than ", kMaxPinLength, " bytes"));
  }
  if (pin.bytes_.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat("PIN file ", path, " is empty"));
  }
  return pin;
}

absl::StatusOr<Pin> Pin::FromEnv(absl::string_view name) {
  const char* value = getenv(std::string(name).c_str());
  if (value == nullptr || value[0] == '\0') {
    return absl::NotFoundError(
        absl::StrCat("PIN environment variable ", name, " is not set"));
  }
  size_t len = strnlen(value, kMaxPinLength + 1);
  if (len > kMaxPinLength) {
    return absl::InvalidArgumentError(absl::StrCat(
        "PIN in $", name, " is longer than ", kMaxPinLength, " bytes"));
  }
  return FromBytes(absl::string_view(value, len));
}

Pin Pin::FromBytes(absl::string_view bytes) {
  Pin pin;
  pin.bytes_.assign(bytes.begin(), bytes.end());
  return pin;
}

Pin::Pin(Pin&& other) noexcept : bytes_(std::move(other.bytes_)) {
  other.Wipe();
}

Pin& Pin::operator=(Pin&& other) noexcept {
  if (this != &other) {
    Wipe();
    bytes_ = std::move(other.bytes_);
    other.Wipe();
  }
  return *this;
}

Pin::~Pin() { Wipe(); }

void Pin::Wipe() {
  if (!bytes_.empty()) OPENSSL_cleanse(bytes_.data(), bytes_.size());
  bytes_.clear();
}

}  // namespace signet::hsm
