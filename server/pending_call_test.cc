#include "server/pending_call.h"

#include <atomic>
#include <memory>
#include <string>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "gtest/gtest.h"

namespace signet::server {
namespace {

// What a call answered, in place of a gRPC reactor.
struct Answers {
  absl::Mutex mu;
  std::vector<absl::StatusCode> codes ABSL_GUARDED_BY(mu);
  std::vector<std::string> messages ABSL_GUARDED_BY(mu);

  std::function<void(const absl::Status&)> Sink() {
    return [this](const absl::Status& status) {
      absl::MutexLock lock(&mu);
      codes.push_back(status.code());
      messages.emplace_back(status.message());
    };
  }
  // Sink(), then notifies `answered` (the watchdog answers on its thread).
  std::function<void(const absl::Status&)> NotifyingSink(
      absl::Notification* answered) {
    return [this, answered](const absl::Status& status) {
      Sink()(status);
      answered->Notify();
    };
  }
  std::vector<absl::StatusCode> Codes() {
    absl::MutexLock lock(&mu);
    return codes;
  }
  std::vector<std::string> Messages() {
    absl::MutexLock lock(&mu);
    return messages;
  }
};

TEST(PendingCallTest, OnlyTheFirstFinishAnswersAndFills) {
  Answers answers;
  int done = 0;
  PendingCall call(answers.Sink(), base::MonotonicDeadline::Never(),
                   [&] { ++done; });
  bool filled_twice = false;
  EXPECT_TRUE(call.Finish(absl::OkStatus()));
  EXPECT_FALSE(
      call.Finish(absl::InternalError("late"), [&] { filled_twice = true; }));
  EXPECT_FALSE(filled_twice);
  EXPECT_EQ(done, 1);
  EXPECT_EQ(answers.Codes(),
            std::vector<absl::StatusCode>{absl::StatusCode::kOk});
}

TEST(PendingCallTest, ReleasesItsSlotBeforeAnswering) {
  // A client that sends its next request the moment it hears back must find
  // its tenant's slot free: at concurrency == max_concurrent_requests, 3% of
  // calls were refused while the slot was released after the answer.
  std::vector<std::string> order;
  PendingCall call([&](const absl::Status&) { order.push_back("answer"); },
                   base::MonotonicDeadline::Never(),
                   [&] { order.push_back("release"); });
  ASSERT_TRUE(call.Finish(absl::OkStatus(), [&] { order.push_back("fill"); }));
  EXPECT_EQ(order, (std::vector<std::string>{"fill", "release", "answer"}));
}

// The watchdog and the worker never both win: a call claimed as not
// started cannot start, and a started one cannot be claimed.
TEST(PendingCallTest, StartedAndAnsweredAsNotStartedExcludeEachOther) {
  auto sink = [](const absl::Status&) {};
  PendingCall claimed(sink, base::MonotonicDeadline::Never());
  EXPECT_TRUE(claimed.ClaimNotStarted());
  EXPECT_FALSE(claimed.MarkStarted());
  EXPECT_FALSE(claimed.started());
  PendingCall started(sink, base::MonotonicDeadline::Never());
  EXPECT_TRUE(started.MarkStarted());
  EXPECT_TRUE(started.MarkStarted());
  EXPECT_FALSE(started.ClaimNotStarted());
  EXPECT_TRUE(started.started());
}

TEST(DeadlineWatchdogTest, AnAnsweredCallLeavesTheWatchListAtOnce) {
  // Before, answered calls stayed until their deadline: at 10k signs/s and a
  // 30 s cap that was 300k entries. Now the list holds the calls in flight.
  DeadlineWatchdog watchdog;
  Answers answers;
  std::vector<std::shared_ptr<PendingCall>> calls;
  for (int i = 0; i < 100; ++i) {
    calls.push_back(std::make_shared<PendingCall>(
        answers.Sink(), base::MonotonicDeadline::In(absl::Hours(1)), nullptr,
        watchdog.list()));
    watchdog.Watch(calls.back());
  }
  EXPECT_EQ(watchdog.watched(), 100u);
  for (int i = 0; i < 60; ++i) EXPECT_TRUE(calls[i]->Finish(absl::OkStatus()));
  EXPECT_EQ(watchdog.watched(), 40u);
  for (int i = 60; i < 100; ++i)
    EXPECT_TRUE(calls[i]->Finish(absl::OkStatus()));
  EXPECT_EQ(watchdog.watched(), 0u);
}

TEST(DeadlineWatchdogTest, ACallAnsweredBeforeItIsWatchedIsNotKept) {
  // A fast worker can answer before Dispatch gets to Watch().
  DeadlineWatchdog watchdog;
  Answers answers;
  auto call = std::make_shared<PendingCall>(
      answers.Sink(), base::MonotonicDeadline::In(absl::Hours(1)), nullptr,
      watchdog.list());
  ASSERT_TRUE(call->Finish(absl::OkStatus()));
  watchdog.Watch(call);
  EXPECT_EQ(watchdog.watched(), 0u);
}

TEST(DeadlineWatchdogTest, AnswersDeadlineExceededForAnUnansweredCall) {
  DeadlineWatchdog watchdog;
  Answers answers;
  absl::Notification answered;
  auto call = std::make_shared<PendingCall>(
      answers.NotifyingSink(&answered),
      base::MonotonicDeadline::In(absl::Milliseconds(20)), nullptr,
      watchdog.list());
  watchdog.Watch(call);
  answered.WaitForNotification();
  EXPECT_EQ(answers.Codes(),
            std::vector<absl::StatusCode>{absl::StatusCode::kDeadlineExceeded});
  // The worker that comes back later loses: nothing more is answered.
  EXPECT_FALSE(call->Finish(absl::OkStatus()));
  EXPECT_EQ(answers.Codes().size(), 1u);
  EXPECT_EQ(watchdog.watched(), 0u);
}

// The watchdog's answers to a call whose work never reached a worker and
// to one whose did, each with `note` (PendingCall::SetDeadlineNote).
std::vector<std::string> ExpireQueuedThenStarted(const std::string& note) {
  DeadlineWatchdog watchdog;
  Answers answers;
  for (bool started : {false, true}) {
    absl::Notification answered;
    auto call = std::make_shared<PendingCall>(
        answers.NotifyingSink(&answered),
        base::MonotonicDeadline::In(absl::Milliseconds(20)), nullptr,
        watchdog.list());
    call->SetDeadlineNote(note);
    if (started) call->MarkStarted();
    watchdog.Watch(call);
    answered.WaitForNotification();
  }
  return answers.Messages();
}

// A call whose work never reached a worker is told it waited in this
// replica's queue; one whose work did, that the HSM did not answer.
TEST(DeadlineWatchdogTest, TheDeadlineMessageSaysWhereTheCallWaited) {
  const std::vector<std::string> messages = ExpireQueuedThenStarted("");
  ASSERT_EQ(messages.size(), 2u);
  EXPECT_NE(
      messages[0].find("waited for a free HSM session past its "
                       "deadline (this replica is busy, or its HSM is stalled"),
      std::string::npos)
      << messages[0];
  EXPECT_NE(messages[1].find("the HSM did not answer before the deadline"),
            std::string::npos)
      << messages[1];
}

// A deadline that was not the caller's (the Signer's limit per call) is
// named in both of the watchdog's answers.
TEST(DeadlineWatchdogTest, TheDeadlineMessageSaysWhoseDeadlineItWas) {
  const std::vector<std::string> messages =
      ExpireQueuedThenStarted(" (signetd's limit)");
  ASSERT_EQ(messages.size(), 2u);
  EXPECT_NE(messages[0].find("past its deadline (signetd's limit) (this"),
            std::string::npos)
      << messages[0];
  EXPECT_NE(messages[1].find("before the deadline (signetd's limit), or the"),
            std::string::npos)
      << messages[1];
}

TEST(DeadlineWatchdogTest, ACutOffAnswersEveryWatchedCallUnavailable) {
  // A shutdown must not wait out the deadlines of calls a stalled HSM holds.
  DeadlineWatchdog watchdog;
  Answers answers;
  absl::Notification answered;
  auto call = std::make_shared<PendingCall>(
      answers.NotifyingSink(&answered),
      base::MonotonicDeadline::In(absl::Hours(1)), nullptr, watchdog.list());
  watchdog.Watch(call);
  watchdog.CutOff(base::MonotonicDeadline::In(absl::ZeroDuration()));
  answered.WaitForNotification();
  EXPECT_EQ(answers.Codes(),
            std::vector<absl::StatusCode>{absl::StatusCode::kUnavailable});
  EXPECT_EQ(watchdog.watched(), 0u);
}

// A call whose work is not a signature (an operator's key change) says
// what its expiry means in its own words.
TEST(DeadlineWatchdogTest, ACallsOwnExpiryAnswersReplaceTheWatchdogs) {
  DeadlineWatchdog watchdog;
  Answers answers;
  absl::Notification expired, cut_off;
  const PendingCall::ExpiryAnswers own{
      absl::DeadlineExceededError("the change may still be applied"),
      absl::UnavailableError("stopping; the change may still be applied")};
  auto at_deadline = std::make_shared<PendingCall>(
      answers.NotifyingSink(&expired),
      base::MonotonicDeadline::In(absl::Milliseconds(20)), nullptr,
      watchdog.list());
  at_deadline->SetExpiryAnswers(own);
  watchdog.Watch(at_deadline);
  expired.WaitForNotification();
  auto at_cut_off = std::make_shared<PendingCall>(
      answers.NotifyingSink(&cut_off),
      base::MonotonicDeadline::In(absl::Hours(1)), nullptr, watchdog.list());
  at_cut_off->SetExpiryAnswers(own);
  watchdog.Watch(at_cut_off);
  watchdog.CutOff(base::MonotonicDeadline::In(absl::ZeroDuration()));
  cut_off.WaitForNotification();
  EXPECT_EQ(answers.Codes(),
            (std::vector<absl::StatusCode>{absl::StatusCode::kDeadlineExceeded,
                                           absl::StatusCode::kUnavailable}));
  EXPECT_EQ(answers.Messages(),
            (std::vector<std::string>{"the change may still be applied",
                                      "stopping; the change may still be "
                                      "applied"}));
}

// A queued change whose turn has not come is never made: its caller is
// told so, where a started one hears that it may still be applied.
TEST(DeadlineWatchdogTest, ACallNotStartedGetsItsNotStartedAnswers) {
  DeadlineWatchdog watchdog;
  Answers answers;
  absl::Notification started_expired, queued_expired, queued_cut_off;
  PendingCall::ExpiryAnswers own{
      absl::DeadlineExceededError("may still be applied"),
      absl::UnavailableError("stopping; may still be applied"),
      absl::DeadlineExceededError("still queued: not made"),
      absl::UnavailableError("stopping, still queued: not made")};
  auto started = std::make_shared<PendingCall>(
      answers.NotifyingSink(&started_expired),
      base::MonotonicDeadline::In(absl::Milliseconds(20)), nullptr,
      watchdog.list());
  started->SetExpiryAnswers(own);
  started->MarkStarted();
  watchdog.Watch(started);
  started_expired.WaitForNotification();
  auto queued = std::make_shared<PendingCall>(
      answers.NotifyingSink(&queued_expired),
      base::MonotonicDeadline::In(absl::Milliseconds(20)), nullptr,
      watchdog.list());
  queued->SetExpiryAnswers(own);
  watchdog.Watch(queued);
  queued_expired.WaitForNotification();
  auto queued_at_stop = std::make_shared<PendingCall>(
      answers.NotifyingSink(&queued_cut_off),
      base::MonotonicDeadline::In(absl::Hours(1)), nullptr, watchdog.list());
  queued_at_stop->SetExpiryAnswers(own);
  watchdog.Watch(queued_at_stop);
  watchdog.CutOff(base::MonotonicDeadline::In(absl::ZeroDuration()));
  queued_cut_off.WaitForNotification();
  EXPECT_EQ(answers.Messages(),
            (std::vector<std::string>{"may still be applied",
                                      "still queued: not made",
                                      "stopping, still queued: not made"}));
}

// The watchdog's answer is audited before it is sent: once every call is
// answered a stop may destroy the audit log (a review found the
// watchdog's thread could still be on its way to it).
TEST(DeadlineWatchdogTest, AnExpiredCallIsAuditedBeforeItIsAnswered) {
  DeadlineWatchdog watchdog;
  absl::Notification answered;
  std::atomic<bool> audited{false};
  std::atomic<bool> audited_before_the_answer{false};
  auto call = std::make_shared<PendingCall>(
      [&](const absl::Status&) {
        audited_before_the_answer.store(audited.load());
        answered.Notify();
      },
      base::MonotonicDeadline::In(absl::Milliseconds(20)), nullptr,
      watchdog.list(), [&](const absl::Status&) { audited.store(true); });
  watchdog.Watch(call);
  answered.WaitForNotification();
  EXPECT_TRUE(audited_before_the_answer.load());
}

TEST(DeadlineWatchdogTest, ACallOutlivingItsWatchdogCanStillBeAnswered) {
  // A worker stuck in the HSM past shutdown answers after the watchdog is
  // gone: the list it leaves is still there.
  Answers answers;
  std::shared_ptr<PendingCall> call;
  {
    DeadlineWatchdog watchdog;
    call = std::make_shared<PendingCall>(
        answers.Sink(), base::MonotonicDeadline::In(absl::Hours(1)), nullptr,
        watchdog.list());
    watchdog.Watch(call);
  }
  EXPECT_TRUE(call->Finish(absl::OkStatus()));
  EXPECT_EQ(answers.Codes(),
            std::vector<absl::StatusCode>{absl::StatusCode::kOk});
}

}  // namespace
}  // namespace signet::server
