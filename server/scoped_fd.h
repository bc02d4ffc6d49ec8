// A file descriptor closed on scope exit unless released. Move-free on
// purpose: one owner. Thread-compatible.
#ifndef SIGNET_SERVER_SCOPED_FD_H_
#define SIGNET_SERVER_SCOPED_FD_H_

#include <unistd.h>

namespace signet::server {

class ScopedFd {
 public:
  explicit ScopedFd(int fd) : fd_(fd) {}
  ScopedFd(const ScopedFd&) = delete;
  ScopedFd& operator=(const ScopedFd&) = delete;
  ~ScopedFd() {
    if (fd_ >= 0) close(fd_);
  }
  int get() const { return fd_; }
  int release() {
    const int fd = fd_;
    fd_ = -1;
    return fd;
  }

 private:
  int fd_;
};

}  // namespace signet::server

#endif  // SIGNET_SERVER_SCOPED_FD_H_
