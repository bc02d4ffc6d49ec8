// The status of a SignJwtBatch call as a whole, from how its items fared.
#ifndef SIGNET_SERVER_BATCH_OUTCOME_H_
#define SIGNET_SERVER_BATCH_OUTCOME_H_

#include <cstddef>

#include "absl/status/status.h"

namespace signet::server {

// The call's own answer when `inputs` items with valid claims were sent
// to be signed and all of them failed (`failed` == `inputs`: the HSM went
// away after admission, the key was revoked or is gone, the deadline
// passed in the queue): the first reason, `first_failure`'s code with
// "no item of the batch was signed: " before its message, so a client
// that retries on the call's status (UNAVAILABLE) retries. Otherwise OK:
// a batch signed in part, or one with no item to sign (each refused for
// its claims), carries per-item codes.
absl::Status BatchOutcome(size_t inputs, size_t failed,
                          const absl::Status& first_failure);

}  // namespace signet::server

#endif  // SIGNET_SERVER_BATCH_OUTCOME_H_
