// One plain HTTP/1.1 GET over a fresh loopback connection, spoken over a raw
// socket (no HTTP client library between a test and the server under test).
#ifndef SIGNET_TESTS_TESTING_HTTP_GET_H_
#define SIGNET_TESTS_TESTING_HTTP_GET_H_

#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"

namespace signet::testing {

struct HttpResponse {
  int status = 0;
  std::string head;  // status line and headers, without the blank line
  std::string body;

  // The first header named `name` (case-insensitive), trimmed; "" if none.
  std::string Header(absl::string_view name) const;
};

// GET `path` from 127.0.0.1:`port` with "Connection: close", reading until
// the server closes. UNAVAILABLE when the connection, the send or the
// response fails (the message says which), INTERNAL if no socket.
absl::StatusOr<HttpResponse> HttpGet(
    int port, absl::string_view path,
    absl::Duration timeout = absl::Seconds(20));

// Sends `request` byte for byte (NUL bytes included) to 127.0.0.1:`port`
// and reads until the server closes; the same errors as HttpGet. `timeout`
// bounds each send and receive.
absl::StatusOr<HttpResponse> HttpExchange(
    int port, absl::string_view request,
    absl::Duration timeout = absl::Seconds(20));

}  // namespace signet::testing

#endif  // SIGNET_TESTS_TESTING_HTTP_GET_H_
