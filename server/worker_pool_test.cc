#include "server/worker_pool.h"

#include <atomic>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "gtest/gtest.h"

namespace signet::server {
namespace {

TEST(WorkerPoolTest, RunsEveryTask) {
  std::atomic<int> ran{0};
  {
    WorkerPool pool(3, 100);
    for (int i = 0; i < 50; ++i) {
      ASSERT_TRUE(pool.Submit([&] { ran.fetch_add(1); }).ok());
    }
  }  // the destructor runs what is queued
  EXPECT_EQ(ran.load(), 50);
}

TEST(WorkerPoolTest, JoinRunsWhatIsQueuedThenRefusesNewTasks) {
  std::atomic<int> ran{0};
  WorkerPool pool(2, 100);
  for (int i = 0; i < 20; ++i) {
    ASSERT_TRUE(pool.Submit([&] { ran.fetch_add(1); }).ok());
  }
  pool.Join();
  EXPECT_EQ(ran.load(), 20);  // everything queued ran before Join returned
  EXPECT_EQ(pool.Submit([&] { ran.fetch_add(1); }).code(),
            absl::StatusCode::kUnavailable);
  pool.Join();  // idempotent
  EXPECT_EQ(ran.load(), 20);
}

TEST(WorkerPoolTest, AFullQueueAnswersResourceExhaustedWithoutBlocking) {
  absl::Notification release;
  absl::Notification started;
  WorkerPool pool(1, 2);
  // The one worker is held (as a stalled HSM would hold it)...
  ASSERT_TRUE(pool.Submit([&] {
                    started.Notify();
                    release.WaitForNotification();
                  })
                  .ok());
  started.WaitForNotification();
  EXPECT_EQ(pool.busy(), 1);
  // ...two more wait in the queue, and the next is refused at once.
  ASSERT_TRUE(pool.Submit([] {}).ok());
  ASSERT_TRUE(pool.Submit([] {}).ok());
  absl::Status full = pool.Submit([] {});
  EXPECT_EQ(full.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(pool.queued(), 2);
  release.Notify();
}

// Tasks of calls answered while queued (their deadline passed) give up
// their places when the queue is full, unrun; wanted ones keep theirs.
TEST(WorkerPoolTest, AFullQueueDropsTasksNoLongerWantedBeforeRefusing) {
  absl::Notification release;
  absl::Notification started;
  WorkerPool pool(1, 3);
  ASSERT_TRUE(pool.Submit([&] {
                    started.Notify();
                    release.WaitForNotification();
                  })
                  .ok());
  started.WaitForNotification();
  std::atomic<bool> answered{false};
  std::atomic<int> ran{0};
  int owner_a = 0;
  int owner_b = 0;
  // Tenant A's two calls, then one of tenant B's: the queue is full.
  for (int i = 0; i < 2; ++i) {
    ASSERT_TRUE(
        pool.Submit(
                &owner_a, [&] { ++ran; }, [&] { return !answered.load(); })
            .ok());
  }
  ASSERT_TRUE(pool.Submit(
                      &owner_b, [&] { ++ran; }, [] { return true; })
                  .ok());
  EXPECT_EQ(pool.Submit(&owner_b, [&] { ++ran; }).code(),
            absl::StatusCode::kResourceExhausted);
  // A's calls are answered at their deadline: their places are free.
  answered = true;
  EXPECT_TRUE(pool.Submit(&owner_b, [&] { ++ran; }).ok());
  EXPECT_TRUE(pool.Submit(&owner_b, [&] { ++ran; }).ok());
  EXPECT_EQ(pool.queued(), 3);
  EXPECT_EQ(pool.Submit(&owner_b, [&] { ++ran; }).code(),
            absl::StatusCode::kResourceExhausted);
  release.Notify();
  ASSERT_TRUE(pool.WaitIdle(absl::Seconds(10)));
  EXPECT_EQ(ran.load(), 3);  // B's three; A's two never ran
}

TEST(WorkerPoolTest, CountsWorkersStuckInOneTask) {
  absl::Notification release;
  absl::Notification started;
  WorkerPool pool(2, 10);
  EXPECT_EQ(pool.StuckWorkers(absl::ZeroDuration()), 0);  // idle is not stuck
  ASSERT_TRUE(pool.Submit([&] {
                    started.Notify();
                    release.WaitForNotification();
                  })
                  .ok());
  started.WaitForNotification();
  absl::SleepFor(absl::Milliseconds(20));
  // One worker has been in its task for 20 ms; the other is idle.
  EXPECT_EQ(pool.StuckWorkers(absl::Milliseconds(10)), 1);
  EXPECT_EQ(pool.StuckWorkers(absl::Hours(1)), 0);
  release.Notify();
  pool.Join();
  EXPECT_EQ(pool.StuckWorkers(absl::ZeroDuration()), 0);
}

// A shutdown waits for a pool that is only busy: WaitIdle answers once
// neither a running nor a queued task is left, and not before.
TEST(WorkerPoolTest, WaitIdleWaitsForRunningAndQueuedTasks) {
  absl::Notification release;
  absl::Notification started;
  std::atomic<int> ran{0};
  WorkerPool pool(1, 10);
  EXPECT_TRUE(pool.WaitIdle(absl::ZeroDuration()));
  ASSERT_TRUE(pool.Submit([&] {
                    started.Notify();
                    release.WaitForNotification();
                    ran.fetch_add(1);
                  })
                  .ok());
  ASSERT_TRUE(pool.Submit([&] { ran.fetch_add(1); }).ok());
  started.WaitForNotification();
  EXPECT_FALSE(pool.WaitIdle(absl::Milliseconds(20)));
  release.Notify();
  EXPECT_TRUE(pool.WaitIdle(absl::Seconds(30)));
  EXPECT_EQ(ran.load(), 2);  // the queued task too
}

// A tenant with a deep queue does not hold another's call behind all of
// it: owners take turns, one task each.
TEST(WorkerPoolTest, OwnersWithQueuedTasksTakeTurns) {
  const int a = 0, b = 0;  // two owners: only their addresses matter
  absl::Notification release;
  absl::Notification started;
  absl::Mutex mu;
  std::vector<std::string> order;
  auto record = [&](std::string who) {
    absl::MutexLock lock(&mu);
    order.push_back(std::move(who));
  };
  WorkerPool pool(1, 1000);
  ASSERT_TRUE(pool.Submit(&a,
                          [&] {
                            started.Notify();
                            release.WaitForNotification();
                          })
                  .ok());
  started.WaitForNotification();
  for (int i = 0; i < 50; ++i) {
    ASSERT_TRUE(pool.Submit(&a, [&, i] { record(absl::StrCat("a", i)); }).ok());
  }
  ASSERT_TRUE(pool.Submit(&b, [&] { record("b0"); }).ok());
  ASSERT_TRUE(pool.Submit(&b, [&] { record("b1"); }).ok());
  EXPECT_EQ(pool.queued(), 52);
  release.Notify();
  ASSERT_TRUE(pool.WaitIdle(absl::Seconds(30)));
  absl::MutexLock lock(&mu);
  ASSERT_EQ(order.size(), 52u);
  // Turns alternate while both have work; each owner's tasks keep their
  // order.
  EXPECT_EQ(order[0], "a0");
  EXPECT_EQ(order[1], "b0");
  EXPECT_EQ(order[2], "a1");
  EXPECT_EQ(order[3], "b1");
  EXPECT_EQ(order[4], "a2");
  EXPECT_EQ(order[51], "a49");
}

}  // namespace
}  // namespace signet::server
