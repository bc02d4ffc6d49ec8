#include "server/worker_pool.h"

#include <atomic>

#include "absl/synchronization/notification.h"
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

}  // namespace
}  // namespace signet::server
