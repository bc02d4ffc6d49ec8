// One unary RPC's single answer, shared by the worker doing the HSM work and
// the deadline watchdog, so the client always hears back by its deadline
// even when a stalled HSM holds the worker forever (docs/architecture.md,
// "The HSM boundary as it behaves": a call in flight cannot be cancelled).
//
// Thread-safe: whichever of Finish()'s callers comes first answers; the
// others do nothing and must not touch the response.
#ifndef SIGNET_SERVER_PENDING_CALL_H_
#define SIGNET_SERVER_PENDING_CALL_H_

#include <atomic>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "base/clock.h"

namespace signet::server {

class PendingCall;

// The calls a DeadlineWatchdog waits on, by deadline. Shared by the watchdog
// and its calls, so a call that is answered after the watchdog is gone (a
// worker that was stuck in the HSM past shutdown) still finds it.
struct WatchList {
  using Key = std::pair<base::MonotonicDeadline, const PendingCall*>;
  absl::Mutex mu;
  std::map<Key, std::shared_ptr<PendingCall>> calls ABSL_GUARDED_BY(mu);
};

class PendingCall {
 public:
  // `answer` sends the status (the reactor's Finish, through ToGrpcStatus);
  // `watch_list` is the watchdog's, for a call that leaves it once answered
  // (null: not watched).
  // `on_expired` runs when the watchdog answers the call (its deadline
  // passed, or a stop), just before the answer: the Signer audits that
  // refusal. It must not wait.
  PendingCall(std::function<void(const absl::Status&)> answer,
              base::MonotonicDeadline deadline,
              std::function<void()> on_done = {},
              std::shared_ptr<WatchList> watch_list = nullptr,
              std::function<void(const absl::Status&)> on_expired = {})
      : answer_(std::move(answer)),
        deadline_(deadline),
        on_done_(std::move(on_done)),
        watch_list_(std::move(watch_list)),
        on_expired_(std::move(on_expired)) {}

  // Answers the RPC unless it was answered already. `fill` writes the
  // response and runs only if this call wins. Returns whether it won.
  bool Finish(const absl::Status& status,
              const std::function<void()>& fill = {});

  bool answered() const { return answered_.load(); }

  // For the watchdog: answers with `status`, running `on_expired` first if
  // this answers the call. First: once every call is answered a stop may
  // destroy the audit log `on_expired` writes to (a review found the
  // watchdog's thread could reach it after that).
  void Expire(const absl::Status& status) {
    if (!on_expired_) {
      Finish(status);
      return;
    }
    Finish(status, [&] { on_expired_(status); });
  }
  base::MonotonicDeadline deadline() const { return deadline_; }

  // Work for this call has reached the HSM (a worker took it). A call
  // still queued at its deadline is told so, rather than blamed on the HSM.
  // False when the watchdog has already answered the call as not started
  // (ClaimNotStarted): the work must then not begin, or the answer
  // ("not made") would be untrue. One atomic step, so the watchdog and the
  // worker never both win.
  bool MarkStarted() {
    int phase = kQueued;
    return phase_.compare_exchange_strong(phase, kStarted) || phase == kStarted;
  }
  bool started() const { return phase_.load() == kStarted; }
  // For the watchdog: true, and the call can no longer start, unless its
  // work has started.
  bool ClaimNotStarted() {
    int phase = kQueued;
    return phase_.compare_exchange_strong(phase, kAnsweredUnstarted) ||
           phase == kAnsweredUnstarted;
  }

  // What the watchdog answers for a call whose work is not a signature
  // (its own words say that nothing was released): at the call's deadline,
  // and at a shutdown's cut-off; and, when set, instead of those for a call
  // whose work has not started (MarkStarted). Set before the call is
  // watched.
  struct ExpiryAnswers {
    absl::Status at_deadline;
    absl::Status at_cut_off;
    std::optional<absl::Status> not_started_at_deadline;
    std::optional<absl::Status> not_started_at_cut_off;
  };
  // Said after "the deadline" in the watchdog's own answers: whose
  // deadline it was, when not the caller's (signetd's limit per call).
  // Set before the call is watched.
  void SetDeadlineNote(std::string note) { deadline_note_ = std::move(note); }
  const std::string& deadline_note() const { return deadline_note_; }

  void SetExpiryAnswers(ExpiryAnswers answers) {
    expiry_answers_ = std::move(answers);
  }
  const std::optional<ExpiryAnswers>& expiry_answers() const {
    return expiry_answers_;
  }

 private:
  const std::function<void(const absl::Status&)> answer_;
  const base::MonotonicDeadline deadline_;
  const std::function<void()> on_done_;
  const std::shared_ptr<WatchList> watch_list_;
  const std::function<void(const absl::Status&)> on_expired_;
  std::atomic<bool> answered_{false};
  static constexpr int kQueued = 0;
  static constexpr int kStarted = 1;
  static constexpr int kAnsweredUnstarted = 2;
  std::atomic<int> phase_{kQueued};
  std::optional<ExpiryAnswers> expiry_answers_;
  std::string deadline_note_;
};

// Answers DEADLINE_EXCEEDED for every watched call still unanswered at its
// deadline. One thread. A call leaves the list when it is answered.
class DeadlineWatchdog {
 public:
  DeadlineWatchdog();
  ~DeadlineWatchdog();

  // The list to give the calls this watchdog is to watch.
  const std::shared_ptr<WatchList>& list() const { return list_; }

  // Watches `call`, which must have been made with list(). Does nothing for
  // a call answered already.
  void Watch(std::shared_ptr<PendingCall> call);

  // Answers every call still watched at `at` with UNAVAILABLE instead of
  // waiting for its deadline: for a shutdown, which must not wait out the
  // deadlines of calls a stalled HSM holds.
  void CutOff(base::MonotonicDeadline at);

  // Calls watched now (for tests).
  size_t watched() const;

 private:
  void Loop();

  const std::shared_ptr<WatchList> list_;
  bool stopping_ ABSL_GUARDED_BY(list_->mu) = false;
  base::MonotonicDeadline cut_off_ ABSL_GUARDED_BY(list_->mu) =
      base::MonotonicDeadline::Never();
  std::thread thread_;
};

}  // namespace signet::server

#endif  // SIGNET_SERVER_PENDING_CALL_H_
