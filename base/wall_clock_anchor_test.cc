#include "base/wall_clock_anchor.h"

#include <stdlib.h>
#include <unistd.h>

#include <fstream>
#include <string>

#include "absl/strings/str_replace.h"
#include "absl/time/time.h"
#include "base/clock.h"
#include "base/file.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace signet::base {
namespace {

using ::testing::HasSubstr;
using Source = LoadedWallClockAnchor::Source;

constexpr absl::Time kT0 = absl::FromUnixSeconds(1709251200);

TEST(WallClockAnchorFormatTest, RoundTripsAndParsesStrictly) {
  const WallClockAnchor anchor{"0b3c-simulated-7", kT0 + absl::Nanoseconds(5),
                               absl::Seconds(12) + absl::Nanoseconds(3)};
  const std::string text = FormatWallClockAnchor(anchor);
  absl::StatusOr<WallClockAnchor> parsed = ParseWallClockAnchor(text);
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  EXPECT_EQ(parsed->origin, anchor.origin);
  EXPECT_EQ(parsed->wall, anchor.wall);
  EXPECT_EQ(parsed->elapsed, anchor.elapsed);

  for (const std::string& bad : {
           std::string(""),
           text.substr(0, text.size() - 1),  // no final newline
           text + "extra 1\n",
           "signet wall-clock anchor v2" + text.substr(text.find('\n')),
           absl::StrReplaceAll(text, {{"origin ", "origin a b "}}),
           absl::StrReplaceAll(text, {{"origin ", "origin \x1b"}}),
           absl::StrReplaceAll(text, {{"wall_unix_ns ", "wall_unix_ns x"}}),
           absl::StrReplaceAll(text, {{"elapsed_ns ", "elapsed_ns -"}}),
           absl::StrReplaceAll(text, {{"elapsed_ns", "elapsed"}}),
       }) {
    EXPECT_EQ(ParseWallClockAnchor(bad).status().code(),
              absl::StatusCode::kInvalidArgument)
        << bad;
  }
}

class WallClockAnchorTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/signet-anchor-XXXXXX";
    ASSERT_NE(mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
    path_ = dir_ + "/wall-clock-anchor";
  }
  void TearDown() override {
    const std::string cmd = "rm -rf " + dir_;
    (void)!system(cmd.c_str());
  }
  std::string dir_;
  std::string path_;
};

// The point of the file: a restart within one boot measures from the first
// start, so a step forward made before it (while running or while down)
// still reads as ahead.
TEST_F(WallClockAnchorTest, ARestartInTheSameBootKeepsTheFirstAnchor) {
  SimulatedClock clock(kT0);
  absl::StatusOr<LoadedWallClockAnchor> first =
      LoadOrTakeWallClockAnchor(path_, clock, false);
  ASSERT_TRUE(first.ok()) << first.status();
  EXPECT_EQ(first->source, Source::kNoFile);
  EXPECT_EQ(first->anchor.wall, kT0);
  EXPECT_EQ(first->not_stored, "");

  clock.Advance(absl::Minutes(5));
  clock.StepWall(absl::Hours(3));  // set forward, then signetd restarts
  absl::StatusOr<LoadedWallClockAnchor> again =
      LoadOrTakeWallClockAnchor(path_, clock, false);
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_EQ(again->source, Source::kKept);
  EXPECT_EQ(again->anchor.wall, kT0);
  const ElapsedWallTime seen(clock, again->anchor.wall, again->anchor.elapsed);
  EXPECT_EQ(seen.Now(), kT0 + absl::Minutes(5));
  EXPECT_EQ(seen.AheadBy(clock.Now()), absl::Hours(3));

  // The operator accepts the clock: measured from now on, but kept only
  // once the caller stores it (after recording the acceptance).
  absl::StatusOr<LoadedWallClockAnchor> accepted =
      LoadOrTakeWallClockAnchor(path_, clock, true);
  ASSERT_TRUE(accepted.ok()) << accepted.status();
  EXPECT_EQ(accepted->source, Source::kAccepted);
  ASSERT_TRUE(accepted->previous.has_value());
  EXPECT_EQ(accepted->previous->wall, kT0);
  EXPECT_EQ(accepted->anchor.wall, clock.Now());
  absl::StatusOr<LoadedWallClockAnchor> unrecorded =
      LoadOrTakeWallClockAnchor(path_, clock, false);
  ASSERT_TRUE(unrecorded.ok()) << unrecorded.status();
  EXPECT_EQ(unrecorded->anchor.wall, kT0);
  ASSERT_TRUE(StoreWallClockAnchor(path_, accepted->anchor).ok());
  absl::StatusOr<LoadedWallClockAnchor> after =
      LoadOrTakeWallClockAnchor(path_, clock, false);
  ASSERT_TRUE(after.ok()) << after.status();
  EXPECT_EQ(after->source, Source::kKept);
  EXPECT_EQ(after->anchor.wall, clock.Now());
}

TEST_F(WallClockAnchorTest, ANewBootTakesANewAnchor) {
  SimulatedClock before_reboot(kT0);
  ASSERT_TRUE(LoadOrTakeWallClockAnchor(path_, before_reboot, false).ok());
  SimulatedClock after_reboot(kT0 + absl::Hours(48));  // another origin
  absl::StatusOr<LoadedWallClockAnchor> loaded =
      LoadOrTakeWallClockAnchor(path_, after_reboot, false);
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  EXPECT_EQ(loaded->source, Source::kNewBoot);
  EXPECT_EQ(loaded->anchor.wall, kT0 + absl::Hours(48));
  ASSERT_TRUE(loaded->previous.has_value());
  EXPECT_EQ(loaded->previous->wall, kT0);
  absl::StatusOr<std::string> text = ReadSmallFile(path_, "the anchor");
  ASSERT_TRUE(text.ok());
  EXPECT_THAT(*text, HasSubstr(*after_reboot.ElapsedOrigin()));
}

TEST_F(WallClockAnchorTest, AnUnusableFileStopsUnlessTheClockIsAccepted) {
  SimulatedClock clock(kT0);
  std::ofstream(path_) << "garbage\n";
  absl::StatusOr<LoadedWallClockAnchor> refused =
      LoadOrTakeWallClockAnchor(path_, clock, false);
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(refused.status().message(),
              HasSubstr("the wall-clock anchor " + path_ + " cannot be used"));
  absl::StatusOr<LoadedWallClockAnchor> accepted =
      LoadOrTakeWallClockAnchor(path_, clock, true);
  ASSERT_TRUE(accepted.ok()) << accepted.status();
  EXPECT_EQ(accepted->source, Source::kAccepted);
  EXPECT_FALSE(accepted->previous.has_value());

  // This boot, but an elapsed reading that has not come yet: not ours.
  clock.Advance(absl::Seconds(10));
  std::ofstream(path_, std::ios::trunc)
      << FormatWallClockAnchor({*clock.ElapsedOrigin(), kT0, absl::Hours(1)});
  absl::StatusOr<LoadedWallClockAnchor> future =
      LoadOrTakeWallClockAnchor(path_, clock, false);
  EXPECT_EQ(future.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(future.status().message(), HasSubstr("has not come yet"));
}

TEST_F(WallClockAnchorTest, AnAnchorThatCannotBeStoredHoldsForThisProcess) {
  SimulatedClock clock(kT0);
  absl::StatusOr<LoadedWallClockAnchor> loaded =
      LoadOrTakeWallClockAnchor(dir_ + "/none/anchor", clock, false);
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  EXPECT_EQ(loaded->source, Source::kNoFile);
  EXPECT_EQ(loaded->anchor.wall, kT0);
  EXPECT_THAT(loaded->not_stored, HasSubstr("cannot write"));
}

TEST(RealClockOriginTest, IsTheKernelsBootId) {
  absl::StatusOr<std::string> origin = SystemClock().ElapsedOrigin();
  ASSERT_TRUE(origin.ok()) << origin.status();
  std::string boot_id;
  std::ifstream("/proc/sys/kernel/random/boot_id") >> boot_id;
  EXPECT_EQ(*origin, boot_id);
  EXPECT_EQ(origin->size(), 36u);  // a UUID
}

}  // namespace
}  // namespace signet::base
