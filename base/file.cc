#include "base/file.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "absl/cleanup/cleanup.h"
#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace signet::base {

namespace {

// Zeroes a buffer the compiler may not skip (it is discarded next).
void Wipe(std::string& buffer) {
  volatile char* p = buffer.data();
  for (size_t i = 0; i < buffer.size(); ++i) p[i] = 0;
}

}  // namespace

std::string ParentDirectory(absl::string_view path) {
  const size_t slash = path.rfind('/');
  if (slash == absl::string_view::npos) return ".";
  if (slash == 0) return "/";
  return std::string(path.substr(0, slash));
}

absl::string_view BaseName(absl::string_view path) {
  const size_t slash = path.rfind('/');
  return slash == absl::string_view::npos ? path : path.substr(slash + 1);
}

absl::StatusOr<std::string> ReadSmallFile(const std::string& path,
                                          absl::string_view what,
                                          size_t max_bytes) {
  // O_NONBLOCK: a FIFO must not hang the reader (it is refused below).
  const int fd =
      open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
  if (fd < 0) {
    const int err = errno;
    const std::string message =
        absl::StrCat("cannot read ", what, " ", path, ": ", std::strerror(err));
    if (err == ENOENT || err == ENOTDIR) return absl::NotFoundError(message);
    if (err == EACCES || err == EPERM) {
      return absl::PermissionDeniedError(message);
    }
    return absl::FailedPreconditionError(message);
  }
  absl::Cleanup close_fd = [fd] { close(fd); };
  struct stat st;
  if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    return absl::FailedPreconditionError(
        absl::StrCat("cannot read ", what, " ", path, ": not a regular file"));
  }
  if (static_cast<uint64_t>(st.st_size) > max_bytes) {
    return absl::FailedPreconditionError(absl::StrCat("cannot read ", what, " ",
                                                      path, ": larger than ",
                                                      max_bytes, " bytes"));
  }
  // One buffer, sized once: a file that grows meanwhile is cut at its size
  // when opened, plus one byte to notice it.
  std::string content(static_cast<size_t>(st.st_size) + 1, '\0');
  size_t got = 0;
  while (got < content.size()) {
    const ssize_t n = read(fd, content.data() + got, content.size() - got);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      const int err = errno;
      Wipe(content);  // what was read may be a secret
      return absl::UnavailableError(absl::StrCat(
          "cannot read ", what, " ", path, ": ", std::strerror(err)));
    }
    if (n == 0) break;
    got += static_cast<size_t>(n);
  }
  if (got > static_cast<size_t>(st.st_size)) {
    Wipe(content);
    return absl::FailedPreconditionError(absl::StrCat(
        "cannot read ", what, " ", path, ": it changed while being read"));
  }
  content.resize(got);  // shrinks in place: no copy
  return content;
}

absl::Status ReplaceFileDurably(const std::string& path,
                                absl::string_view content,
                                absl::string_view what, int mode) {
  const std::string temporary = absl::StrCat(path, ".tmp");
  auto failed = [&](int err, absl::string_view doing) {
    unlink(temporary.c_str());
    const std::string message = absl::StrCat("cannot ", doing, " ", what, " ",
                                             path, ": ", std::strerror(err));
    return err == EACCES || err == EPERM || err == EROFS
               ? absl::PermissionDeniedError(message)
               : absl::UnavailableError(message);
  };
  const int fd = open(temporary.c_str(),
                      O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW,
                      static_cast<mode_t>(mode));
  if (fd < 0) {
    const int err = errno;
    // Nothing was created: nothing to remove.
    return failed(err, "write");
  }
  size_t written = 0;
  while (written < content.size()) {
    const ssize_t n =
        write(fd, content.data() + written, content.size() - written);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      const int err = n < 0 ? errno : ENOSPC;
      close(fd);
      return failed(err, "write");
    }
    written += static_cast<size_t>(n);
  }
  if (fsync(fd) != 0) {
    const int err = errno;
    close(fd);
    return failed(err, "sync");
  }
  close(fd);
  if (rename(temporary.c_str(), path.c_str()) != 0) {
    return failed(errno, "replace");
  }
  if (const int err = SyncParentDirectory(path); err != 0) {
    // The new file is in place; only its durability is in doubt.
    return absl::UnavailableError(absl::StrCat(
        "cannot sync the directory of ", what, " ", path, ": ",
        std::strerror(err),
        " (the new file is in place, but a crash before the system writes "
        "the directory back may undo it)"));
  }
  return absl::OkStatus();
}

int SyncParentDirectory(absl::string_view path) {
  const std::string dir = ParentDirectory(path);
  const int dfd = open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd < 0) return errno;
  const int err = fsync(dfd) != 0 ? errno : 0;
  close(dfd);
  return err;
}

}  // namespace signet::base
