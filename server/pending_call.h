// One unary RPC's single answer, shared by the worker doing the HSM work and
// the deadline watchdog, so the client always hears back by its deadline
// even when a stalled HSM holds the worker forever (docs/architecture.md,
// "The HSM boundary as it behaves": a call in flight cannot be cancelled).
//
// Thread-safe: whichever of Finish()'s callers comes first answers; the
// others do nothing and must not touch the response.
#ifndef SIGNET_SERVER_PENDING_CALL_H_
#define SIGNET_SERVER_PENDING_CALL_H_

#include <grpcpp/grpcpp.h>

#include <atomic>
#include <functional>
#include <map>
#include <memory>
#include <thread>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

namespace signet::server {

class PendingCall;

// The calls a DeadlineWatchdog waits on, by deadline. Shared by the watchdog
// and its calls, so a call that is answered after the watchdog is gone (a
// worker that was stuck in the HSM past shutdown) still finds it.
struct WatchList {
  using Key = std::pair<absl::Time, const PendingCall*>;
  absl::Mutex mu;
  std::map<Key, std::shared_ptr<PendingCall>> calls ABSL_GUARDED_BY(mu);
};

class PendingCall {
 public:
  // `answer` sends the status (the reactor's Finish); `watch_list` is the
  // watchdog's, for a call that leaves it once answered (null: not watched).
  PendingCall(std::function<void(const grpc::Status&)> answer,
              absl::Time deadline, std::function<void()> on_done = {},
              std::shared_ptr<WatchList> watch_list = nullptr)
      : answer_(std::move(answer)),
        deadline_(deadline),
        on_done_(std::move(on_done)),
        watch_list_(std::move(watch_list)) {}

  // Answers the RPC unless it was answered already. `fill` writes the
  // response and runs only if this call wins. Returns whether it won.
  bool Finish(const grpc::Status& status,
              const std::function<void()>& fill = {}) {
    if (answered_.exchange(true)) return false;
    if (fill) fill();
    // Released before the answer: a client that sends its next request the
    // moment it hears back must find the slot free, or a tenant running at
    // exactly its limit is refused.
    if (on_done_) on_done_();
    answer_(status);
    // Leave the watch list now rather than at the deadline, so it holds the
    // calls in flight, not every call of the last max_rpc_time. The entry
    // may hold the last reference to this call: it dies with `self`, after
    // the last use of a member.
    std::shared_ptr<PendingCall> self;
    if (watch_list_ != nullptr) {
      absl::MutexLock lock(&watch_list_->mu);
      auto it = watch_list_->calls.find({deadline_, this});
      if (it != watch_list_->calls.end()) {
        self = std::move(it->second);
        watch_list_->calls.erase(it);
      }
    }
    return true;
  }

  bool answered() const { return answered_.load(); }
  absl::Time deadline() const { return deadline_; }

 private:
  const std::function<void(const grpc::Status&)> answer_;
  const absl::Time deadline_;
  const std::function<void()> on_done_;
  const std::shared_ptr<WatchList> watch_list_;
  std::atomic<bool> answered_{false};
};

// Answers DEADLINE_EXCEEDED for every watched call still unanswered at its
// deadline. One thread. A call leaves the list when it is answered.
class DeadlineWatchdog {
 public:
  DeadlineWatchdog()
      : list_(std::make_shared<WatchList>()), thread_([this] { Loop(); }) {}
  ~DeadlineWatchdog() {
    std::map<WatchList::Key, std::shared_ptr<PendingCall>> left;
    {
      absl::MutexLock lock(&list_->mu);
      stopping_ = true;
    }
    thread_.join();
    {
      // The calls hold the list and the list holds the calls: break that.
      absl::MutexLock lock(&list_->mu);
      left.swap(list_->calls);
    }
  }

  // The list to give the calls this watchdog is to watch.
  const std::shared_ptr<WatchList>& list() const { return list_; }

  // Watches `call`, which must have been made with list(). Does nothing for
  // a call answered already.
  void Watch(std::shared_ptr<PendingCall> call) {
    absl::MutexLock lock(&list_->mu);
    // Under the lock: a Finish that set answered() after this test erases
    // the entry once this returns.
    if (call->answered()) return;
    WatchList::Key key{call->deadline(), call.get()};
    list_->calls.emplace(key, std::move(call));
  }

  // Answers every call still watched at `at` with UNAVAILABLE instead of
  // waiting for its deadline: for a shutdown, which must not wait out the
  // deadlines of calls a stalled HSM holds.
  void CutOff(absl::Time at) {
    absl::MutexLock lock(&list_->mu);
    cut_off_ = at;
  }

  // Calls watched now (for tests).
  size_t watched() const {
    absl::MutexLock lock(&list_->mu);
    return list_->calls.size();
  }

 private:
  void Loop() {
    absl::MutexLock lock(&list_->mu);
    while (!stopping_) {
      absl::Time now = absl::Now();
      const bool cut_off = cut_off_ <= now;
      while (!list_->calls.empty() &&
             (cut_off || list_->calls.begin()->first.first <= now)) {
        std::shared_ptr<PendingCall> call =
            std::move(list_->calls.begin()->second);
        list_->calls.erase(list_->calls.begin());
        list_->mu.Unlock();
        call->Finish(
            cut_off
                ? grpc::Status(grpc::StatusCode::UNAVAILABLE,
                               "signetd is shutting down and the HSM has not "
                               "answered; nothing was released (retry)")
                : grpc::Status(grpc::StatusCode::DEADLINE_EXCEEDED,
                               "the HSM did not answer before the deadline; "
                               "nothing was released (retry, or check the "
                               "HSM)"));
        call.reset();
        list_->mu.Lock();
      }
      absl::Time wake = std::min(now + absl::Milliseconds(100), cut_off_);
      if (!list_->calls.empty()) {
        wake = std::min(wake, list_->calls.begin()->first.first);
      }
      list_->mu.AwaitWithDeadline(absl::Condition(&stopping_), wake);
    }
  }

  const std::shared_ptr<WatchList> list_;
  bool stopping_ ABSL_GUARDED_BY(list_->mu) = false;
  absl::Time cut_off_ ABSL_GUARDED_BY(list_->mu) = absl::InfiniteFuture();
  std::thread thread_;
};

}  // namespace signet::server

#endif  // SIGNET_SERVER_PENDING_CALL_H_
