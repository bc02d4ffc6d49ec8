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
// Thread-safety: thread-safe. One thread accepts.
#ifndef SIGNET_SERVER_CONNECTION_ACCEPTOR_H_
#define SIGNET_SERVER_CONNECTION_ACCEPTOR_H_

#include <grpcpp/server_builder.h>

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <thread>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace signet::server {

class ConnectionAcceptor {
 public:
  // Binds `listen_address` ("host:port", "[v6]:port"; port 0 picks one) and
  // listens. UNAVAILABLE when the address cannot be bound.
  static absl::StatusOr<std::unique_ptr<ConnectionAcceptor>> Bind(
      absl::string_view listen_address, int reserved_fds);
  // Stops accepting and closes the listening socket.
  ~ConnectionAcceptor();
  ConnectionAcceptor(const ConnectionAcceptor&) = delete;
  ConnectionAcceptor& operator=(const ConnectionAcceptor&) = delete;

  int port() const { return port_; }

  // Starts handing every accepted connection to `grpc` (from
  // ServerBuilder::experimental().AddExternalConnectionAcceptor), once the
  // server is started.
  void Start(std::unique_ptr<grpc::experimental::ExternalConnectionAcceptor>
                 grpc);

  // True when a connection accepted now would be refused: the descriptor
  // budget is spent. Cheap (one fcntl); for health.
  bool BudgetSpent() const;
  // The highest descriptor a connection may have, plus one.
  int budget_end() const { return budget_end_; }
  // Connections closed at once because the budget was spent, and accept()
  // failures, since start.
  uint64_t refused() const { return refused_.load(); }
  uint64_t accept_errors() const { return accept_errors_.load(); }

 private:
  ConnectionAcceptor(int listen_fd, int wake_fd, int port, int budget_end)
      : listen_fd_(listen_fd),
        wake_fd_(wake_fd),
        port_(port),
        budget_end_(budget_end) {}
  void Loop();

  const int listen_fd_;
  const int wake_fd_;  // an eventfd that ends Loop()
  const int port_;
  const int budget_end_;
  std::unique_ptr<grpc::experimental::ExternalConnectionAcceptor> grpc_;
  std::atomic<uint64_t> refused_{0};
  std::atomic<uint64_t> accept_errors_{0};
  std::thread thread_;
};

}  // namespace signet::server

#endif  // SIGNET_SERVER_CONNECTION_ACCEPTOR_H_
