#include "base/clock.h"

#include <thread>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "gtest/gtest.h"

namespace signet::base {
namespace {

constexpr absl::Time kT0 = absl::FromUnixSeconds(1709251200);
constexpr absl::Duration kOneNs = absl::Nanoseconds(1);

TEST(SimulatedClockTest, MovesOnlyWhenTold) {
  SimulatedClock clock(kT0);
  const Clock& as_clock = clock;
  EXPECT_EQ(as_clock.Now(), kT0);
  EXPECT_EQ(as_clock.Now(), kT0);

  clock.Advance(absl::Seconds(90));
  EXPECT_EQ(as_clock.Now(), kT0 + absl::Seconds(90));

  clock.Advance(absl::Seconds(-30));  // a wall-clock step backwards
  EXPECT_EQ(as_clock.Now(), kT0 + absl::Seconds(60));

  clock.SetTime(kT0 - absl::Hours(5));
  EXPECT_EQ(as_clock.Now(), kT0 - absl::Hours(5));
}

// Elapsed time follows time passing, never a step of the wall clock, so
// ElapsedWallTime sees a step forward as the wall clock reading ahead of it.
TEST(SimulatedClockTest, ElapsedTimeIgnoresStepsOfTheWallClock) {
  SimulatedClock clock(kT0);
  const ElapsedWallTime seen(clock);
  EXPECT_EQ(seen.Now(), kT0);

  clock.Advance(absl::Seconds(90));
  clock.SetTime(kT0 + absl::Seconds(100));
  EXPECT_EQ(clock.Elapsed(), absl::Seconds(100));
  EXPECT_EQ(seen.Now(), kT0 + absl::Seconds(100));

  clock.StepWall(absl::Hours(2));  // set forward
  EXPECT_EQ(clock.Now(), kT0 + absl::Seconds(100) + absl::Hours(2));
  EXPECT_EQ(seen.Now(), kT0 + absl::Seconds(100));

  clock.Advance(absl::Seconds(-30));  // set back
  clock.SetTime(kT0);                 // set back again
  clock.StepWall(absl::Seconds(-5));
  EXPECT_EQ(clock.Elapsed(), absl::Seconds(100));
  EXPECT_EQ(clock.Now(), kT0 - absl::Seconds(5));

  clock.Advance(absl::Seconds(7));
  EXPECT_EQ(seen.Now(), kT0 + absl::Seconds(107));
}

// The real clock's elapsed time moves with real time (and on: it is
// CLOCK_BOOTTIME, which no one can set).
TEST(RealClockTest, ElapsedTimeMovesWithRealTime) {
  const Clock& clock = SystemClock();
  const absl::Duration before = clock.Elapsed();
  absl::SleepFor(absl::Milliseconds(20));
  const absl::Duration after = clock.Elapsed();
  EXPECT_GE(after - before, absl::Milliseconds(20));
  const ElapsedWallTime seen(clock);
  EXPECT_LE(absl::AbsDuration(seen.Now() - clock.Now()), absl::Seconds(1));
}

// A clock that read ahead when the anchor was taken, then set back (an
// RTC ahead at boot, corrected by NTP): the anchor comes down with it, so
// a later step forward is seen whole. It never goes up.
TEST(ElapsedWallTimeTest, LowersToAClockSetBackAndNeverRises) {
  SimulatedClock clock(kT0);
  ElapsedWallTime seen(clock);
  EXPECT_FALSE(seen.LowerTo(clock.Now()));
  clock.StepWall(absl::Seconds(-30));  // within the tolerance
  EXPECT_FALSE(seen.LowerTo(clock.Now()));
  EXPECT_EQ(seen.Now(), kT0);
  clock.StepWall(absl::Seconds(-3600) + absl::Seconds(30));
  EXPECT_TRUE(seen.LowerTo(clock.Now()));
  EXPECT_EQ(seen.Now(), kT0 - absl::Hours(1));
  EXPECT_EQ(seen.anchor().first, kT0 - absl::Hours(1));
  clock.StepWall(absl::Minutes(30));
  EXPECT_EQ(seen.AheadBy(clock.Now()), absl::Minutes(30));
  EXPECT_FALSE(seen.LowerTo(clock.Now()));  // ahead: never raised
  EXPECT_EQ(seen.Now(), kT0 - absl::Hours(1));
}

// Irreversible steps follow the wall clock while it agrees with the time
// seen pass (NTP's slews included), and the time seen pass once the wall
// clock reads ahead of it beyond the tolerance.
TEST(ElapsedWallTimeTest, IrreversibleStepsWaitForTheTimeSeenPass) {
  SimulatedClock clock(kT0);
  ElapsedWallTime seen(clock);
  clock.Advance(absl::Minutes(5));
  EXPECT_EQ(seen.IrreversibleStepsAt(clock.Now()), kT0 + absl::Minutes(5));
  clock.StepWall(ElapsedWallTime::kStepTolerance);  // at the tolerance
  EXPECT_EQ(seen.IrreversibleStepsAt(clock.Now()), clock.Now());
  clock.StepWall(absl::Seconds(1));  // past it
  EXPECT_EQ(seen.IrreversibleStepsAt(clock.Now()), kT0 + absl::Minutes(5));
  clock.StepWall(absl::Hours(-1));  // behind: the wall clock, the earlier
  EXPECT_EQ(seen.IrreversibleStepsAt(clock.Now()), clock.Now());
}

TEST(WallClockStepDetectorTest, SeesStepsNotTimePassing) {
  SimulatedClock clock(kT0);
  WallClockStepDetector steps(clock);
  EXPECT_EQ(steps.Sample(), absl::ZeroDuration());
  clock.Advance(absl::Hours(3));  // time passing is no step
  EXPECT_EQ(steps.Sample(), absl::ZeroDuration());
  clock.StepWall(absl::Minutes(10));
  clock.Advance(absl::Seconds(1));
  EXPECT_EQ(steps.Sample(), absl::Minutes(10));
  EXPECT_EQ(steps.Sample(), absl::ZeroDuration());  // reported once
  clock.StepWall(absl::Seconds(-600));
  EXPECT_EQ(steps.Sample(), absl::Seconds(-600));
  clock.StepWall(absl::Seconds(1));  // within the tolerance: a slew
  EXPECT_EQ(steps.Sample(), absl::ZeroDuration());
}

// A step that came and went between two samples is seen only by a thread
// that read the clock during it: its reading lies off the clock as the
// next sample reads it, by the step, wherever it was made in between.
TEST(WallClockStepDetectorTest, MeasuresAnotherThreadsReadingAgainstTheClock) {
  SimulatedClock clock(kT0);
  WallClockStepDetector steps(clock);
  EXPECT_EQ(steps.Sample(), absl::ZeroDuration());
  clock.Advance(absl::Milliseconds(400));
  const absl::Time steady_wall = clock.Now();
  const absl::Duration steady_elapsed = clock.Elapsed();
  clock.StepWall(absl::Minutes(10));  // set forward ...
  clock.Advance(absl::Milliseconds(300));
  const absl::Time ahead_wall = clock.Now();  // ... the other thread reads
  const absl::Duration ahead_elapsed = clock.Elapsed();
  clock.StepWall(absl::Minutes(-10));  // ... and right again
  clock.Advance(absl::Milliseconds(300));
  EXPECT_EQ(steps.Sample(), absl::ZeroDuration());  // the sample missed it
  EXPECT_EQ(steps.OffsetOf(ahead_wall, ahead_elapsed), absl::Minutes(10));
  EXPECT_EQ(steps.OffsetOf(steady_wall, steady_elapsed), absl::ZeroDuration());
  // A reading from before a step the sample saw lies off by the step the
  // other way; within the tolerance, a slew, it does not.
  clock.StepWall(absl::Seconds(-30));
  EXPECT_EQ(steps.Sample(), absl::Seconds(-30));
  EXPECT_EQ(steps.OffsetOf(steady_wall, steady_elapsed), absl::Seconds(30));
  EXPECT_EQ(steps.OffsetOf(steady_wall + absl::Seconds(-29), steady_elapsed),
            absl::ZeroDuration());
}

TEST(SimulatedClockTest, ConcurrentAdvancesAreNotLost) {
  SimulatedClock clock(kT0);
  constexpr int kThreads = 4;
  constexpr int kStepsPerThread = 1000;
  std::vector<std::thread> threads;
  for (int i = 0; i < kThreads; ++i) {
    threads.emplace_back([&clock] {
      for (int step = 0; step < kStepsPerThread; ++step) {
        clock.Advance(kOneNs);
        // A reader never sees the clock before its start.
        EXPECT_GE(clock.Now(), kT0);
      }
    });
  }
  for (std::thread& t : threads) t.join();
  EXPECT_EQ(clock.Now(), kT0 + kThreads * kStepsPerThread * kOneNs);
}

// A wait on a simulated clock ends when the clock is moved past its end,
// however long that takes in real time, and not before.
TEST(SimulatedClockTest, AWaitEndsWhenTheClockIsMovedPastItsEnd) {
  SimulatedClock clock(kT0);
  absl::Mutex mu;
  bool never = false;
  bool returned = false;
  bool result = true;
  std::thread waiter([&] {
    absl::MutexLock lock(&mu);
    result =
        clock.AwaitUntil(mu, absl::Condition(&never), kT0 + absl::Hours(24));
    returned = true;
  });
  // Real time passes; simulated time does not, so the wait goes on.
  absl::SleepFor(absl::Milliseconds(50));
  {
    absl::MutexLock lock(&mu);
    EXPECT_FALSE(returned);
  }
  clock.Advance(absl::Hours(23));
  absl::SleepFor(absl::Milliseconds(50));
  {
    absl::MutexLock lock(&mu);
    EXPECT_FALSE(returned);
  }
  clock.Advance(absl::Hours(1));
  waiter.join();
  EXPECT_TRUE(returned);
  EXPECT_FALSE(result);
}

TEST(SimulatedClockTest, AWaitEndsWhenItsConditionHolds) {
  SimulatedClock clock(kT0);
  absl::Mutex mu;
  bool ready = false;
  bool result = false;
  std::thread waiter([&] {
    absl::MutexLock lock(&mu);
    result =
        clock.AwaitUntil(mu, absl::Condition(&ready), kT0 + absl::Hours(24));
  });
  {
    absl::MutexLock lock(&mu);
    ready = true;
  }
  waiter.join();
  EXPECT_TRUE(result);
  EXPECT_EQ(clock.Now(), kT0);
}

TEST(RealClockTest, FollowsTheSystemClock) {
  const Clock& clock = SystemClock();
  const absl::Time before = absl::Now();
  const absl::Time now = clock.Now();
  const absl::Time after = absl::Now();
  EXPECT_LE(before, now);
  EXPECT_LE(now, after);
}

TEST(RealClockTest, AWaitEndsAtItsEndOrItsCondition) {
  const Clock& clock = SystemClock();
  absl::Mutex mu;
  bool ready = false;
  absl::MutexLock lock(&mu);
  const absl::Time until = absl::Now() + absl::Milliseconds(20);
  EXPECT_FALSE(clock.AwaitUntil(mu, absl::Condition(&ready), until));
  EXPECT_GE(absl::Now(), until);
  ready = true;
  EXPECT_TRUE(clock.AwaitUntil(mu, absl::Condition(&ready),
                               absl::Now() + absl::Hours(1)));
}

TEST(MonotonicDeadlineTest, CountsDownOnTheMonotonicClock) {
  const MonotonicDeadline soon = MonotonicDeadline::In(absl::Seconds(30));
  EXPECT_FALSE(soon.passed());
  EXPECT_GT(soon.left(), absl::Seconds(29));
  EXPECT_LE(soon.left(), absl::Seconds(30));
  EXPECT_LT(soon.EarlierBy(absl::Seconds(1)), soon);
  EXPECT_LE(soon.EarlierBy(absl::Seconds(1)).left(), absl::Seconds(29));
  // On the wall clock: as far from now as it is on the monotonic clock.
  const absl::Duration on_wall = soon.OnWallClock() - absl::Now();
  EXPECT_GT(on_wall, absl::Seconds(29));
  EXPECT_LE(on_wall, absl::Seconds(30));

  const MonotonicDeadline past = MonotonicDeadline::In(-absl::Milliseconds(1));
  EXPECT_TRUE(past.passed());
  EXPECT_LT(past.left(), absl::ZeroDuration());
  EXPECT_LT(past, soon);
}

TEST(MonotonicDeadlineTest, NeverNeverPasses) {
  const MonotonicDeadline never = MonotonicDeadline::Never();
  EXPECT_FALSE(never.passed());
  EXPECT_EQ(never.left(), absl::InfiniteDuration());
  EXPECT_EQ(never.EarlierBy(absl::Seconds(1)), never);
  EXPECT_EQ(never.OnWallClock(), absl::InfiniteFuture());
  EXPECT_LT(MonotonicDeadline::In(absl::Hours(24 * 365)), never);
  EXPECT_EQ(MonotonicDeadline::FromWallClock(absl::InfiniteFuture()), never);
}

TEST(MonotonicDeadlineTest, AWallClockDeadlineIsReadOnceThenCountedDown) {
  const MonotonicDeadline in_a_minute =
      MonotonicDeadline::FromWallClock(absl::Now() + absl::Minutes(1));
  EXPECT_GT(in_a_minute.left(), absl::Seconds(59));
  EXPECT_LE(in_a_minute.left(), absl::Minutes(1));
  EXPECT_TRUE(MonotonicDeadline::FromWallClock(absl::Now() - absl::Seconds(1))
                  .passed());
  EXPECT_TRUE(MonotonicDeadline::FromWallClock(absl::InfinitePast()).passed());
}

}  // namespace
}  // namespace signet::base
