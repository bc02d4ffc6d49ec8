#include "server/batch_outcome.h"

#include <string>

#include "absl/status/status.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace signet::server {
namespace {

using ::testing::HasSubstr;
using ::testing::StartsWith;

TEST(BatchOutcomeTest, ABatchWithNothingSignedAnswersWithItsFirstReason) {
  const absl::Status outcome =
      BatchOutcome(3, 3, absl::UnavailableError("HSM unavailable: gone"));
  EXPECT_EQ(outcome.code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(std::string(outcome.message()),
              StartsWith("no item of the batch was signed: HSM unavailable: "
                         "gone"));
  EXPECT_THAT(std::string(outcome.message()),
              HasSubstr("refused for their claims"));
  EXPECT_EQ(BatchOutcome(1, 1, absl::FailedPreconditionError("revoked")).code(),
            absl::StatusCode::kFailedPrecondition);
}

TEST(BatchOutcomeTest, ABatchSignedInPartOrWithNothingToSignIsOk) {
  const absl::Status reason = absl::UnavailableError("HSM unavailable");
  EXPECT_TRUE(BatchOutcome(3, 2, reason).ok());
  EXPECT_TRUE(BatchOutcome(3, 0, absl::OkStatus()).ok());
  // Every item refused for its claims: no input went to be signed.
  EXPECT_TRUE(BatchOutcome(0, 0, absl::OkStatus()).ok());
}

}  // namespace
}  // namespace signet::server
