#include "server/call_deadline.h"

#include <grpc/support/time.h>

#include <algorithm>

namespace signet::server {

base::MonotonicDeadline CallDeadline(const grpc::ServerContextBase& context) {
  const gpr_timespec raw = context.raw_deadline();
  if (gpr_time_cmp(raw, gpr_inf_future(raw.clock_type)) == 0) {
    return base::MonotonicDeadline::Never();
  }
  // Time left, measured on gRPC's monotonic clock: never through the wall
  // clock, which a step between two readings would put in the answer.
  const gpr_timespec left =
      gpr_time_sub(gpr_convert_clock_type(raw, GPR_CLOCK_MONOTONIC),
                   gpr_now(GPR_CLOCK_MONOTONIC));
  return base::MonotonicDeadline::In(absl::Seconds(left.tv_sec) +
                                     absl::Nanoseconds(left.tv_nsec));
}

base::MonotonicDeadline AnswerBy(base::MonotonicDeadline deadline,
                                 absl::Duration headroom) {
  const absl::Duration tenth =
      std::max(absl::ZeroDuration(), deadline.left() / 10);
  return deadline.EarlierBy(std::min(headroom, tenth));
}

}  // namespace signet::server
