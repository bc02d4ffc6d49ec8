#include "server/refusal_summary.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <atomic>
#include <vector>

namespace signet::server {
namespace {

using ::testing::ElementsAre;
using ::testing::IsEmpty;
using ::testing::Pair;

TEST(RefusalSummaryTest, ReportsWhatMovedSinceTheLastReportByResult) {
  std::atomic<uint64_t> closed{0};
  std::atomic<uint64_t> banned{0};
  std::atomic<uint64_t> unknown{0};
  RefusalSummary summary;
  summary.Add([&] { return closed.load(); }, "UNAVAILABLE",
              "connection(s) closed");
  summary.Add([&] { return banned.load(); }, "UNAVAILABLE",
              "connection(s) banned");
  summary.Add([&] { return unknown.load(); }, "UNIMPLEMENTED",
              "call(s) of unknown methods");
  EXPECT_THAT(summary.Take(), IsEmpty());

  closed = 3;
  banned = 1;
  unknown = 7;
  EXPECT_THAT(
      summary.Take(),
      ElementsAre(
          Pair("UNAVAILABLE",
               "3 connection(s) closed, 1 connection(s) banned since the last "
               "report"),
          Pair("UNIMPLEMENTED",
               "7 call(s) of unknown methods since the last report")));
  // Only the difference, and only what moved.
  closed = 5;
  EXPECT_THAT(
      summary.Take(),
      ElementsAre(
          Pair("UNAVAILABLE", "2 connection(s) closed since the last report")));
  EXPECT_THAT(summary.Take(), IsEmpty());
}

TEST(RefusalSummaryTest, ATallyReportsItsCountAndDetailFromOneSnapshot) {
  std::vector<RefusalSummary::Tally> tallies = {
      {0, ""}, {2, "by \"uri:a\" (2)"}, {1, ""}};
  size_t taken = 0;
  RefusalSummary summary;
  summary.AddTally([&] { return tallies[taken++]; }, "UNIMPLEMENTED",
                   "call(s) of unknown methods");
  EXPECT_THAT(summary.Take(), IsEmpty());
  EXPECT_THAT(summary.Take(),
              ElementsAre(Pair("UNIMPLEMENTED",
                               "2 call(s) of unknown methods (by \"uri:a\" "
                               "(2)) since the last report")));
  // An empty detail adds nothing.
  EXPECT_THAT(summary.Take(),
              ElementsAre(Pair("UNIMPLEMENTED",
                               "1 call(s) of unknown methods since the last "
                               "report")));
  EXPECT_EQ(taken, 3u);
}

}  // namespace
}  // namespace signet::server
