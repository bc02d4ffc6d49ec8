// One gRPC call written frame by frame over TLS (HTTP/2 with ALPN "h2"), for
// requests the gRPC library will not send: its client caps grpc-timeout at
// 99,999 hours, and a test of a larger one (the protocol allows 8 digits)
// has to write the header itself. Only what such a test needs: the request
// headers go out as HPACK literals, and of the answer it keeps the first
// response message (DATA is not HPACK; the headers, which may be
// Huffman-coded, are not decoded).
#ifndef SIGNET_TESTS_TESTING_RAW_GRPC_H_
#define SIGNET_TESTS_TESTING_RAW_GRPC_H_

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace signet::testing {

struct RawGrpcCall {
  int port = 0;  // on 127.0.0.1
  std::string authority = "localhost";
  // PEM: the client's certificate and key (the server's is not checked).
  std::string cert_pem;
  std::string key_pem;
  std::string path;  // "/package.Service/Method"
  // Extra request headers, written as they are (lower-case names).
  std::vector<std::pair<std::string, std::string>> headers;
  std::string message;  // the serialized request, framed here
  absl::Duration timeout = absl::Seconds(20);
};

struct RawGrpcAnswer {
  bool has_message = false;
  std::string message;  // the first response message, unframed
  bool ended = false;   // the server ended the stream
};

// Makes the call and reads until the first response message or the end of
// the stream. UNAVAILABLE if the connection or TLS fails, DEADLINE_EXCEEDED
// if neither comes within `timeout`.
absl::StatusOr<RawGrpcAnswer> RawGrpcUnary(const RawGrpcCall& call);

// A client connection that never reads an answer's message: it announces a
// stream window of 0 (SETTINGS_INITIAL_WINDOW_SIZE), so the server can send
// each answer's headers but no DATA, and the message waits in the server.
// For tests of what unread answers may hold there. It honours the server's
// flow control for the requests it sends.
class UnreadingGrpcConnection {
 public:
  struct Answers {
    // Calls whose answer's headers came without ending the stream: the
    // server answered with a message that is not read.
    int answered = 0;
    // Calls that ended: a trailers-only answer (a refusal) or a reset.
    int ended = 0;
  };

  // Connects to `base.port` as `base.cert_pem`.
  static absl::StatusOr<std::unique_ptr<UnreadingGrpcConnection>> Open(
      const RawGrpcCall& base);
  ~UnreadingGrpcConnection();

  // Starts a call of `call.path` with `call.message` on a new stream.
  absl::Status Start(const RawGrpcCall& call);
  // Reads the server's frames until `calls` calls have an answer (answered
  // or ended), or `timeout` passes; then what came.
  absl::StatusOr<Answers> Await(int calls, absl::Duration timeout);

 private:
  class Impl;
  explicit UnreadingGrpcConnection(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace signet::testing

#endif  // SIGNET_TESTS_TESTING_RAW_GRPC_H_
