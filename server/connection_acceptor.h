// The gRPC port's accept loop: signetd accepts connections itself and hands
// them to gRPC (its external connection acceptor), because gRPC 1.51's own
// acceptor has no connection cap and stops accepting for good after one
// accept4() fails with EMFILE (grpc/grpc#20418): about 1,100 idle TCP
// connections, no TLS needed, took the listener down while health still said
// SERVING.
//
// Here no connection may take one of the process's last `reserved_fds` file
// descriptors: those stay for the HSM connections, the audit log and the
// HTTP endpoint. Linux hands out the lowest free descriptor, so an accepted
// descriptor numbered at or above (open-file limit - reserved_fds) means the
// budget is spent; that connection is closed at once and counted. An
// accept() that fails (EMFILE, ENFILE, ENOBUFS, ...) is retried after a short
// pause, never fatal. Connections that never finish their TLS handshake are
// closed by gRPC (GRPC_ARG_SERVER_HANDSHAKE_TIMEOUT_MS), which frees the
// budget again.
//
// One address (an IPv4 address, or an IPv6 /64) may hold at most
// `max_per_address` connections; one more is closed at once and counted.
// gRPC closes the descriptors it was handed without telling the acceptor,
// so the acceptor remembers each connection's descriptor and socket inode
// and, before it refuses one, sweeps for those that are gone (the
// descriptor is closed, or reused by another file): at most
// kSweepsPerSecond sweeps, each one fstat() per connection.
//
// Thread-safety: thread-safe. One thread accepts.
#ifndef SIGNET_SERVER_CONNECTION_ACCEPTOR_H_
#define SIGNET_SERVER_CONNECTION_ACCEPTOR_H_

#include <grpcpp/server_builder.h>

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

namespace signet::server {

class ConnectionAcceptor {
 public:
  // Binds `listen_address` ("host:port", "[v6]:port"; port 0 picks one) and
  // listens. UNAVAILABLE when the address cannot be bound.
  static absl::StatusOr<std::unique_ptr<ConnectionAcceptor>> Bind(
      absl::string_view listen_address, int reserved_fds, int max_per_address);
  // Stops accepting and closes the listening socket (Stop()).
  ~ConnectionAcceptor();
  // Stops accepting; the connections handed to gRPC stay, and
  // CloseConnection still works. Idempotent.
  void Stop();
  ConnectionAcceptor(const ConnectionAcceptor&) = delete;
  ConnectionAcceptor& operator=(const ConnectionAcceptor&) = delete;

  int port() const { return port_; }

  // Starts handing every accepted connection to `grpc` (from
  // ServerBuilder::experimental().AddExternalConnectionAcceptor), once the
  // server is started.
  void Start(
      std::unique_ptr<grpc::experimental::ExternalConnectionAcceptor> grpc);

  // True when a connection accepted now would be refused: the descriptor
  // budget is spent. Cheap (one fcntl); for health.
  bool BudgetSpent() const;
  // The highest descriptor a connection may have, plus one.
  int budget_end() const { return budget_end_; }
  // Connections closed at once because the budget was spent, and accept()
  // failures, since start.
  uint64_t refused() const { return refused_.load(); }
  uint64_t accept_errors() const { return accept_errors_.load(); }
  // Connections closed at once because their address held max_per_address.
  uint64_t refused_per_address() const { return refused_per_address_.load(); }

  // Closes the connection gRPC names `peer` ("ipv4:127.0.0.1:54321",
  // "ipv6:[::1]:54321", as grpc::ServerContext::peer() says): shuts its
  // socket down, so gRPC drops it and every call on it, and refuses new
  // connections from its address (as the per-address limit counts them)
  // for `ban`. False if no open connection has that peer. Any thread; for
  // an abusive connection.
  bool CloseConnection(absl::string_view peer,
                       absl::Duration ban = absl::ZeroDuration());
  // Connections refused because their address was banned.
  uint64_t refused_banned() const { return refused_banned_.load(); }

 private:
  ConnectionAcceptor(int listen_fd, int wake_fd, int port, int budget_end,
                     int max_per_address)
      : listen_fd_(listen_fd),
        wake_fd_(wake_fd),
        port_(port),
        budget_end_(budget_end),
        max_per_address_(max_per_address) {}
  void Loop();
  // Takes a place for the connection `fd` from `peer`; false when its
  // address holds max_per_address connections still open. Accept thread.
  bool Admit(int fd, const std::string& peer, std::string endpoint)
      ABSL_LOCKS_EXCLUDED(mu_);
  // Forgets the connections whose descriptors gRPC has closed.
  void SweepLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  // A connection handed to gRPC, as the accept thread remembers it.
  struct Tracked {
    uint64_t inode = 0;
    std::string peer;      // the per-address limit's key
    std::string endpoint;  // as gRPC names the peer
  };

  const int listen_fd_;
  const int wake_fd_;  // an eventfd that ends Loop()
  const int port_;
  const int budget_end_;
  const int max_per_address_;
  // The accept thread writes them; CloseConnection reads them.
  absl::Mutex mu_;
  std::vector<Tracked> tracked_ ABSL_GUARDED_BY(mu_);  // by fd; inode 0: none
  absl::flat_hash_map<std::string, int> per_address_ ABSL_GUARDED_BY(mu_);
  // Addresses refused until a base::MonotonicNow() time, by CloseConnection.
  absl::flat_hash_map<std::string, absl::Duration> banned_until_monotonic_
      ABSL_GUARDED_BY(mu_);
  absl::Duration last_sweep_monotonic_ ABSL_GUARDED_BY(mu_) =
      -absl::InfiniteDuration();
  std::unique_ptr<grpc::experimental::ExternalConnectionAcceptor> grpc_;
  std::atomic<uint64_t> refused_{0};
  std::atomic<uint64_t> accept_errors_{0};
  std::atomic<uint64_t> refused_per_address_{0};
  std::atomic<uint64_t> refused_banned_{0};
  bool stopped_ = false;
  std::thread thread_;
};

}  // namespace signet::server

#endif  // SIGNET_SERVER_CONNECTION_ACCEPTOR_H_
