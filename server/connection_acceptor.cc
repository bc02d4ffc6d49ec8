#include "server/connection_acceptor.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <utility>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "base/clock.h"

namespace signet::server {
namespace {

// How long the loop pauses after a failed accept(), so a process out of
// descriptors does not spin while it waits for connections to close.
constexpr int kAcceptRetryMs = 50;

// Sweeps for closed connections at most this often.
constexpr int kSweepsPerSecond = 10;

// The address a per-address limit counts by: an IPv4 address (also when
// mapped into IPv6), or an IPv6 /64, the smallest block a host is usually
// given.
std::string PeerKey(const struct sockaddr_storage& peer) {
  if (peer.ss_family == AF_INET) {
    const auto* v4 = reinterpret_cast<const struct sockaddr_in*>(&peer);
    return std::string(reinterpret_cast<const char*>(&v4->sin_addr), 4);
  }
  if (peer.ss_family == AF_INET6) {
    const auto* v6 = reinterpret_cast<const struct sockaddr_in6*>(&peer);
    const auto* bytes = reinterpret_cast<const char*>(&v6->sin6_addr);
    if (IN6_IS_ADDR_V4MAPPED(&v6->sin6_addr)) return std::string(bytes + 12, 4);
    return std::string(bytes, 8);
  }
  return std::string();  // other families share one count
}

// The peer as gRPC names it (ServerContext::peer()).
std::string GrpcEndpoint(const struct sockaddr_storage& peer) {
  char text[INET6_ADDRSTRLEN] = {};
  if (peer.ss_family == AF_INET) {
    const auto* v4 = reinterpret_cast<const struct sockaddr_in*>(&peer);
    inet_ntop(AF_INET, &v4->sin_addr, text, sizeof(text));
    return absl::StrCat("ipv4:", text, ":", ntohs(v4->sin_port));
  }
  if (peer.ss_family == AF_INET6) {
    const auto* v6 = reinterpret_cast<const struct sockaddr_in6*>(&peer);
    if (IN6_IS_ADDR_V4MAPPED(&v6->sin6_addr)) {
      inet_ntop(AF_INET, &v6->sin6_addr.s6_addr[12], text, sizeof(text));
      return absl::StrCat("ipv4:", text, ":", ntohs(v6->sin6_port));
    }
    inet_ntop(AF_INET6, &v6->sin6_addr, text, sizeof(text));
    return absl::StrCat("ipv6:[", text, "]:", ntohs(v6->sin6_port));
  }
  return std::string();
}

uint64_t InodeOf(int fd) {
  struct stat st;
  if (fstat(fd, &st) != 0) return 0;
  return static_cast<uint64_t>(st.st_ino);
}

int OpenFileLimit() {
  struct rlimit limit;
  if (getrlimit(RLIMIT_NOFILE, &limit) != 0 ||
      limit.rlim_cur == RLIM_INFINITY) {
    return 1 << 20;
  }
  return static_cast<int>(limit.rlim_cur);
}

}  // namespace

absl::StatusOr<std::unique_ptr<ConnectionAcceptor>> ConnectionAcceptor::Bind(
    absl::string_view listen_address, int reserved_fds, int max_per_address) {
  const size_t colon = listen_address.rfind(':');
  if (colon == absl::string_view::npos) {
    return absl::InvalidArgumentError(
        absl::StrCat("\"", listen_address, "\" is not host:port"));
  }
  std::string host(listen_address.substr(0, colon));
  const std::string port(listen_address.substr(colon + 1));
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') {
    host = host.substr(1, host.size() - 2);
  }
  struct addrinfo hints = {};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
  struct addrinfo* found = nullptr;
  if (int rc = getaddrinfo(host.empty() ? nullptr : host.c_str(), port.c_str(),
                           &hints, &found);
      rc != 0) {
    return absl::UnavailableError(absl::StrCat(
        "cannot resolve ", listen_address, ": ", gai_strerror(rc)));
  }
  int fd = -1;
  std::string last_error = "no address";
  for (struct addrinfo* ai = found; ai != nullptr; ai = ai->ai_next) {
    fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC | SOCK_NONBLOCK,
                ai->ai_protocol);
    if (fd < 0) {
      last_error = strerror(errno);
      continue;
    }
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    if (bind(fd, ai->ai_addr, ai->ai_addrlen) == 0 &&
        listen(fd, SOMAXCONN) == 0) {
      break;
    }
    last_error = strerror(errno);
    close(fd);
    fd = -1;
  }
  freeaddrinfo(found);
  if (fd < 0) {
    return absl::UnavailableError(
        absl::StrCat("cannot listen on ", listen_address, ": ", last_error));
  }
  struct sockaddr_storage bound = {};
  socklen_t len = sizeof(bound);
  getsockname(fd, reinterpret_cast<struct sockaddr*>(&bound), &len);
  const int bound_port =
      bound.ss_family == AF_INET6
          ? ntohs(reinterpret_cast<struct sockaddr_in6*>(&bound)->sin6_port)
          : ntohs(reinterpret_cast<struct sockaddr_in*>(&bound)->sin_port);
  const int wake = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (wake < 0) {
    close(fd);
    return absl::UnavailableError(absl::StrCat("eventfd: ", strerror(errno)));
  }
  return std::unique_ptr<ConnectionAcceptor>(new ConnectionAcceptor(
      fd, wake, bound_port, OpenFileLimit() - reserved_fds, max_per_address));
}

ConnectionAcceptor::~ConnectionAcceptor() { Stop(); }

void ConnectionAcceptor::Stop() {
  if (stopped_) return;
  stopped_ = true;
  const uint64_t one = 1;
  (void)!write(wake_fd_, &one, sizeof(one));
  if (thread_.joinable()) thread_.join();
  close(listen_fd_);
  close(wake_fd_);
}

void ConnectionAcceptor::Start(
    std::unique_ptr<grpc::experimental::ExternalConnectionAcceptor> grpc) {
  grpc_ = std::move(grpc);
  thread_ = std::thread([this] { Loop(); });
}

bool ConnectionAcceptor::BudgetSpent() const {
  // The lowest free descriptor: what the next accept() would get.
  const int probe = fcntl(listen_fd_, F_DUPFD_CLOEXEC, 0);
  if (probe < 0) return true;
  close(probe);
  return probe >= budget_end_;
}

void ConnectionAcceptor::SweepLocked() {
  for (size_t fd = 0; fd < tracked_.size(); ++fd) {
    Tracked& t = tracked_[fd];
    if (t.inode == 0 || InodeOf(static_cast<int>(fd)) == t.inode) continue;
    auto it = per_address_.find(t.peer);
    if (it != per_address_.end() && --it->second <= 0) per_address_.erase(it);
    t = Tracked{};
  }
}

bool ConnectionAcceptor::Admit(int fd, const std::string& peer,
                               std::string endpoint) {
  absl::MutexLock lock(&mu_);
  if (auto banned = banned_until_monotonic_.find(peer);
      banned != banned_until_monotonic_.end()) {
    if (base::MonotonicNow() < banned->second) {
      refused_banned_.fetch_add(1);
      return false;
    }
    banned_until_monotonic_.erase(banned);
  }
  if (static_cast<size_t>(fd) >= tracked_.size()) tracked_.resize(fd + 1);
  // A descriptor remembered for a connection gRPC has closed since.
  if (tracked_[fd].inode != 0) {
    auto it = per_address_.find(tracked_[fd].peer);
    if (it != per_address_.end() && --it->second <= 0) per_address_.erase(it);
    tracked_[fd] = Tracked{};
  }
  if (per_address_[peer] >= max_per_address_) {
    const absl::Duration now = base::MonotonicNow();
    if (now - last_sweep_monotonic_ >= absl::Seconds(1) / kSweepsPerSecond) {
      last_sweep_monotonic_ = now;
      SweepLocked();
    }
    if (per_address_[peer] >= max_per_address_) {
      refused_per_address_.fetch_add(1);
      return false;
    }
  }
  ++per_address_[peer];
  tracked_[fd] = Tracked{InodeOf(fd), peer, std::move(endpoint)};
  return true;
}

bool ConnectionAcceptor::CloseConnection(absl::string_view peer,
                                         absl::Duration ban) {
  absl::MutexLock lock(&mu_);
  for (size_t fd = 0; fd < tracked_.size(); ++fd) {
    const Tracked& t = tracked_[fd];
    if (t.inode == 0 || t.endpoint != peer) continue;
    // Still the same socket (not a descriptor reused since).
    if (InodeOf(static_cast<int>(fd)) != t.inode) continue;
    if (ban > absl::ZeroDuration()) {
      // Bounded: a flood of distinct addresses forgets the old bans.
      if (banned_until_monotonic_.size() >= 65536) {
        banned_until_monotonic_.clear();
      }
      banned_until_monotonic_[t.peer] = base::MonotonicNow() + ban;
    }
    return shutdown(static_cast<int>(fd), SHUT_RDWR) == 0;
  }
  return false;
}

void ConnectionAcceptor::Loop() {
  struct pollfd fds[2] = {{listen_fd_, POLLIN, 0}, {wake_fd_, POLLIN, 0}};
  int timeout_ms = -1;
  for (;;) {
    fds[0].revents = fds[1].revents = 0;
    const int ready = poll(fds, 2, timeout_ms);
    if (fds[1].revents != 0) return;
    if (ready <= 0) {
      timeout_ms = -1;
      continue;
    }
    // Accept what is waiting, then poll again.
    for (;;) {
      struct sockaddr_storage peer = {};
      socklen_t peer_len = sizeof(peer);
      const int fd =
          accept4(listen_fd_, reinterpret_cast<struct sockaddr*>(&peer),
                  &peer_len, SOCK_CLOEXEC | SOCK_NONBLOCK);
      if (fd < 0) {
        if (errno == EINTR || errno == ECONNABORTED) continue;
        if (errno != EAGAIN && errno != EWOULDBLOCK) {
          // EMFILE, ENFILE, ENOBUFS, ENOMEM: the connection waits in the
          // backlog; try again shortly instead of spinning or giving up.
          accept_errors_.fetch_add(1);
          timeout_ms = kAcceptRetryMs;
        }
        break;
      }
      if (fd >= budget_end_) {
        refused_.fetch_add(1);
        close(fd);
        continue;
      }
      if (!Admit(fd, PeerKey(peer), GrpcEndpoint(peer))) {
        close(fd);
        continue;
      }
      int one = 1;
      setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
      grpc::experimental::ExternalConnectionAcceptor::NewConnectionParameters
          connection;
      connection.listener_fd = listen_fd_;
      connection.fd = fd;
      grpc_->HandleNewConnection(&connection);  // gRPC owns fd now
    }
    if (timeout_ms > 0) {
      // Pause before the next try: poll() on the wake descriptor alone.
      struct pollfd wake = {wake_fd_, POLLIN, 0};
      if (poll(&wake, 1, timeout_ms) > 0) return;
      timeout_ms = -1;
    }
  }
}

}  // namespace signet::server
