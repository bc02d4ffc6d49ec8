// The prober's verdicts, with a fake probe in place of the HSM call.
#include "server/hsm_prober.h"

#include <atomic>
#include <memory>

#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace signet::server {
namespace {

using ::testing::HasSubstr;

HsmProber::Options Fast() {
  HsmProber::Options options;
  options.interval = absl::Milliseconds(5);
  options.session_wait = absl::Milliseconds(5);
  options.stalled_after = absl::Milliseconds(200);
  return options;
}

// A probe that answers `answer` and counts its calls.
struct FakeProbe {
  std::shared_ptr<std::atomic<int>> calls =
      std::make_shared<std::atomic<int>>(0);
  absl::Status answer;
  HsmProber::Probe Fn() {
    return [calls = calls, answer = answer](absl::Time) {
      ++*calls;
      return answer;
    };
  }
  void WaitForCalls(int n) const {
    const absl::Time until = absl::Now() + absl::Seconds(10);
    while (*calls < n && absl::Now() < until) {
      absl::SleepFor(absl::Milliseconds(1));
    }
    ASSERT_GE(*calls, n);
  }
};

TEST(HsmProberTest, AnAnsweringHsmIsOk) {
  FakeProbe fake;
  HsmProber prober(fake.Fn(), Fast());
  prober.Start();
  fake.WaitForCalls(2);
  EXPECT_TRUE(prober.Condition([] { return 0; }).ok());
  EXPECT_TRUE(prober.Stop(absl::Seconds(5)));
}

TEST(HsmProberTest, AFailingProbeIsUnreachableWithItsError) {
  FakeProbe fake;
  fake.answer = absl::UnavailableError("p11-kit server gone");
  HsmProber prober(fake.Fn(), Fast());
  prober.Start();
  fake.WaitForCalls(2);
  absl::Status condition = prober.Condition([] { return 0; });
  EXPECT_EQ(condition.code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(condition.message(),
              HasSubstr("the HSM is unreachable: p11-kit server gone"));
}

// No free session: busy (OK) unless signers are stuck in HSM calls.
TEST(HsmProberTest, NoFreeSessionIsBusyUnlessWorkersAreStuck) {
  FakeProbe fake;
  fake.answer = absl::DeadlineExceededError("no session free");
  HsmProber prober(fake.Fn(), Fast());
  prober.Start();
  fake.WaitForCalls(2);
  EXPECT_TRUE(prober.Condition([] { return 0; }).ok());
  absl::Status stuck = prober.Condition([] { return 3; });
  EXPECT_EQ(stuck.code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(stuck.message(),
              HasSubstr("stalled: no session is free and 3 worker(s)"));
}

// A probe call that does not return: stalled after stalled_after, and Stop
// leaves the stuck thread behind instead of hanging.
TEST(HsmProberTest, AProbeCallThatNeverReturnsIsAStall) {
  // Time moved by the test: the verdict does not depend on how long this
  // machine takes between two lines.
  auto now = std::make_shared<absl::Duration>();
  HsmProber::Options options = Fast();
  options.monotonic_now = [now] { return *now; };
  auto release = std::make_shared<absl::Notification>();
  auto entered = std::make_shared<absl::Notification>();
  HsmProber prober(
      [release, entered](absl::Time) {
        if (!entered->HasBeenNotified()) entered->Notify();
        release->WaitForNotification();
        return absl::OkStatus();
      },
      options);
  prober.Start();
  entered->WaitForNotification();
  EXPECT_TRUE(prober.Condition([] { return 0; }).ok());  // not yet
  *now += absl::Milliseconds(199);
  EXPECT_TRUE(prober.Condition([] { return 0; }).ok());
  *now += absl::Milliseconds(2);
  absl::Status stalled = prober.Condition([] { return 0; });
  EXPECT_EQ(stalled.code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(stalled.message(),
              HasSubstr("the HSM is stalled: a probe call has not returned"));
  EXPECT_FALSE(prober.Stop(absl::Milliseconds(50)));
  release->Notify();  // the detached thread ends by itself
}

// A tenth outside attack: the pool abandoned the connection a probe call
// was stuck on and served on a new one, but health said "stalled" for as
// long as that call did not return. A call stuck past replace_stuck_after
// is left behind and probing goes on: the stall shows without a gap until
// the new thread's call returns, then the HSM is OK again. Stop says a
// call is still stuck while the one left behind is.
TEST(HsmProberTest, AProbeStuckOnAnAbandonedConnectionIsLeftBehind) {
  auto now = std::make_shared<std::atomic<int64_t>>(0);  // ms
  HsmProber::Options options = Fast();
  options.monotonic_now = [now] { return absl::Milliseconds(now->load()); };
  options.replace_stuck_after = absl::Seconds(12);
  auto release_first = std::make_shared<absl::Notification>();
  auto release_second = std::make_shared<absl::Notification>();
  auto calls = std::make_shared<std::atomic<int>>(0);
  HsmProber prober(
      [release_first, release_second, calls](absl::Time) {
        const int call = ++*calls;
        if (call == 1) release_first->WaitForNotification();
        if (call == 2) release_second->WaitForNotification();
        return absl::OkStatus();
      },
      options);
  // Whatever happens below, the stuck calls end before the test does.
  struct Release {
    std::shared_ptr<absl::Notification> first, second;
    ~Release() {
      if (!first->HasBeenNotified()) first->Notify();
      if (!second->HasBeenNotified()) second->Notify();
    }
  } release_at_exit{release_first, release_second};
  prober.Start();
  while (*calls < 1) absl::SleepFor(absl::Milliseconds(1));
  now->store(5'000);
  EXPECT_THAT(prober.Condition([] { return 0; }).message(),
              HasSubstr("the HSM is stalled"));
  now->store(13'000);  // left behind, a new thread probes
  absl::Status condition = prober.Condition([] { return 0; });
  EXPECT_THAT(condition.message(), HasSubstr("has not returned for 13s"));
  const absl::Time give_up = absl::Now() + absl::Seconds(30);
  while (*calls < 2 && absl::Now() < give_up) {
    absl::SleepFor(absl::Milliseconds(1));
  }
  ASSERT_EQ(*calls, 2) << "no new thread probes";
  now->store(14'000);
  // The new thread's call has not returned yet: still the same stall.
  EXPECT_THAT(prober.Condition([] { return 0; }).message(),
              HasSubstr("has not returned for 14s"));
  release_second->Notify();
  while (!prober.Condition([] { return 0; }).ok() && absl::Now() < give_up) {
    absl::SleepFor(absl::Milliseconds(5));
  }
  EXPECT_TRUE(prober.Condition([] { return 0; }).ok());
  EXPECT_FALSE(prober.Stop(absl::Milliseconds(50)));  // the first is stuck
  release_first->Notify();
  EXPECT_TRUE(prober.Stop(absl::Seconds(10)));
}

// A review: in a full stall the probes left behind hold the sessions, so
// the new probe finds none free (DEADLINE_EXCEEDED), which alone reads as
// "busy, not down". The stall carried over goes on until a probe gets an
// answer from the HSM.
TEST(HsmProberTest, ANewProbeThatFindsNoSessionKeepsTheStall) {
  auto now = std::make_shared<std::atomic<int64_t>>(0);  // ms
  HsmProber::Options options = Fast();
  options.monotonic_now = [now] { return absl::Milliseconds(now->load()); };
  options.replace_stuck_after = absl::Seconds(12);
  auto release = std::make_shared<absl::Notification>();
  auto sessions_free = std::make_shared<std::atomic<bool>>(false);
  auto calls = std::make_shared<std::atomic<int>>(0);
  HsmProber prober(
      [release, sessions_free, calls](absl::Time) -> absl::Status {
        if (++*calls == 1) {
          release->WaitForNotification();
          return absl::OkStatus();
        }
        if (!sessions_free->load()) {
          return absl::DeadlineExceededError("no session came free");
        }
        return absl::OkStatus();
      },
      options);
  struct Release {
    std::shared_ptr<absl::Notification> release;
    ~Release() {
      if (!release->HasBeenNotified()) release->Notify();
    }
  } release_at_exit{release};
  prober.Start();
  while (*calls < 1) absl::SleepFor(absl::Milliseconds(1));
  now->store(13'000);
  EXPECT_THAT(prober.Condition([] { return 0; }).message(),
              HasSubstr("the HSM is stalled"));  // and left behind
  const absl::Time give_up = absl::Now() + absl::Seconds(30);
  while (*calls < 4 && absl::Now() < give_up) {
    absl::SleepFor(absl::Milliseconds(1));
  }
  ASSERT_GE(*calls, 4) << "the new probe does not run";
  now->store(14'000);
  EXPECT_THAT(prober.Condition([] { return 0; }).message(),
              HasSubstr("has not returned for 14s"));
  sessions_free->store(true);
  while (!prober.Condition([] { return 0; }).ok() && absl::Now() < give_up) {
    absl::SleepFor(absl::Milliseconds(5));
  }
  EXPECT_TRUE(prober.Condition([] { return 0; }).ok());
}

}  // namespace
}  // namespace signet::server
