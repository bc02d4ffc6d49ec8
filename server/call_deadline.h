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

// When signetd answers a call with `deadline` itself if its work has not
// answered: `headroom` before the deadline, so the caller hears signetd's
// words (what did not answer) rather than its own timer's bare
// DEADLINE_EXCEEDED; or a tenth of the time left when that is less, so a
// short deadline still leaves the work most of its time (an outside attack
// found every signing call under 100 ms refused at once by an idle
// replica, and every Admin call under 1 s answered by gRPC's timer).
base::MonotonicDeadline AnswerBy(base::MonotonicDeadline deadline,
                                 absl::Duration headroom);

}  // namespace signet::server

#endif  // SIGNET_SERVER_CALL_DEADLINE_H_
