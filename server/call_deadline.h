// The deadline a gRPC client gave its call, on the monotonic clock: the
// request watchdog answers by it, and a wall clock stepped while the call
// waits must not move it (docs/architecture.md, "Code conventions").
#ifndef SIGNET_SERVER_CALL_DEADLINE_H_
#define SIGNET_SERVER_CALL_DEADLINE_H_

#include <grpcpp/server_context.h>

#include "base/clock.h"

namespace signet::server {

// The call's deadline (the time its grpc-timeout gave, counted from when
// gRPC read it); Never() for a call without one. Read from gRPC's own
// seconds, not through std::chrono: a legal grpc-timeout of 9999999H
// overflowed nanoseconds there and read as long past.
base::MonotonicDeadline CallDeadline(const grpc::ServerContextBase& context);

}  // namespace signet::server

#endif  // SIGNET_SERVER_CALL_DEADLINE_H_
