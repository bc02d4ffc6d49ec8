#include "server/batch_outcome.h"

#include "absl/strings/str_cat.h"

namespace signet::server {

absl::Status BatchOutcome(size_t inputs, size_t failed,
                          const absl::Status& first_failure) {
  if (inputs == 0 || failed != inputs) return absl::OkStatus();
  return absl::Status(
      first_failure.code(),
      absl::StrCat("no item of the batch was signed: ", first_failure.message(),
                   " (items refused for their claims are not reported in "
                   "this answer)"));
}

}  // namespace signet::server
