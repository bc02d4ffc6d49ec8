// Test-only: sets or clears a file's or directory's immutable flag (what
// `chattr +i` / `chattr -i` do), to make a file system refuse writes to it
// the way a failing disk or a read-only mount would, even for root.
#ifndef SIGNET_TESTS_TESTING_IMMUTABLE_H_
#define SIGNET_TESTS_TESTING_IMMUTABLE_H_

#include <fcntl.h>
#include <linux/fs.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <string>

#include "absl/status/status.h"

namespace signet::testing {

// OK, or why not (not root, or a file system without the flag: tests
// skip then).
inline absl::Status SetImmutable(const std::string& path, bool immutable) {
  const int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return absl::InternalError(std::strerror(errno));
  int flags = 0;
  int rc = ioctl(fd, FS_IOC_GETFLAGS, &flags);
  if (rc == 0) {
    flags = immutable ? (flags | FS_IMMUTABLE_FL) : (flags & ~FS_IMMUTABLE_FL);
    rc = ioctl(fd, FS_IOC_SETFLAGS, &flags);
  }
  const int err = errno;
  close(fd);
  return rc == 0 ? absl::OkStatus() : absl::InternalError(std::strerror(err));
}

}  // namespace signet::testing

#endif  // SIGNET_TESTS_TESTING_IMMUTABLE_H_
