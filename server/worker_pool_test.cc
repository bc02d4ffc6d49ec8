#include "server/worker_pool.h"

#include <atomic>

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

}  // namespace
}  // namespace signet::server
