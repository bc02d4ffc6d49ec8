#include "server/call_deadline.h"

#include "gtest/gtest.h"

namespace signet::server {
namespace {

constexpr absl::Duration kHeadroom = absl::Milliseconds(100);

// An eleventh outside attack: the Signer answered every call with less
// than 100 ms left at once (its whole headroom was taken off), with a
// message blaming a busy replica.
TEST(AnswerByTest, AShortDeadlineKeepsMostOfItsTime) {
  const auto deadline = base::MonotonicDeadline::In(absl::Milliseconds(60));
  const base::MonotonicDeadline by = AnswerBy(deadline, kHeadroom);
  EXPECT_LT(by, deadline);
  EXPECT_GE(by.left(), absl::Milliseconds(40));
}

TEST(AnswerByTest, ALongDeadlineIsAnsweredTheHeadroomAhead) {
  const auto deadline = base::MonotonicDeadline::In(absl::Seconds(10));
  EXPECT_EQ(AnswerBy(deadline, kHeadroom), deadline.EarlierBy(kHeadroom));
}

TEST(AnswerByTest, APassedDeadlineIsNotMovedLater) {
  const auto deadline = base::MonotonicDeadline::In(-absl::Seconds(1));
  EXPECT_EQ(AnswerBy(deadline, kHeadroom), deadline);
}

TEST(AnswerByTest, NoDeadlineStaysNone) {
  EXPECT_EQ(AnswerBy(base::MonotonicDeadline::Never(), kHeadroom),
            base::MonotonicDeadline::Never());
}

}  // namespace
}  // namespace signet::server
