// One unary RPC's single answer, shared by the worker doing the HSM work and
// the deadline watchdog, so the client always hears back by its deadline
// even when a stalled HSM holds the worker forever (design.md: a call in
// flight cannot be cancelled).
//
// Thread-safe: whichever of Finish()'s callers comes first answers; the
// others do nothing and must not touch the response.
#ifndef SIGNET_SERVER_PENDING_CALL_H_
#define SIGNET_SERVER_PENDING_CALL_H_

#include <grpcpp/grpcpp.h>

#include <atomic>
#include <functional>
#include <memory>
#include <queue>
#include <thread>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

namespace signet::server {

class PendingCall {
 public:
  PendingCall(grpc::ServerUnaryReactor* reactor, absl::Time deadline,
              std::function<void()> on_done = {})
      : reactor_(reactor), deadline_(deadline), on_done_(std::move(on_done)) {}

  // Answers the RPC unless it was answered already. `fill` writes the
  // response and runs only if this call wins. Returns whether it won.
  bool Finish(const grpc::Status& status, const std::function<void()>& fill = {}) {
    if (answered_.exchange(true)) return false;
    if (fill) fill();
    reactor_->Finish(status);
    if (on_done_) on_done_();
    return true;
  }

  bool answered() const { return answered_.load(); }
  absl::Time deadline() const { return deadline_; }

 private:
  grpc::ServerUnaryReactor* const reactor_;
  const absl::Time deadline_;
  std::function<void()> on_done_;
  std::atomic<bool> answered_{false};
};

// Answers DEADLINE_EXCEEDED for every watched call still unanswered at its
// deadline. One thread; entries of answered calls are dropped lazily.
class DeadlineWatchdog {
 public:
  DeadlineWatchdog() : thread_([this] { Loop(); }) {}
  ~DeadlineWatchdog() {
    {
      absl::MutexLock lock(&mu_);
      stopping_ = true;
    }
    thread_.join();
  }

  void Watch(std::shared_ptr<PendingCall> call) ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock lock(&mu_);
    heap_.push(Entry{call->deadline(), std::move(call)});
  }

 private:
  struct Entry {
    absl::Time deadline;
    std::shared_ptr<PendingCall> call;
    bool operator>(const Entry& other) const {
      return deadline > other.deadline;
    }
  };

  void Loop() {
    absl::MutexLock lock(&mu_);
    while (!stopping_) {
      absl::Time now = absl::Now();
      while (!heap_.empty() && heap_.top().deadline <= now) {
        std::shared_ptr<PendingCall> call = heap_.top().call;
        heap_.pop();
        if (!call->answered()) {
          mu_.Unlock();
          call->Finish(grpc::Status(
              grpc::StatusCode::DEADLINE_EXCEEDED,
              "the HSM did not answer before the deadline; nothing was "
              "released (retry, or check the HSM)"));
          mu_.Lock();
        }
      }
      absl::Time wake = now + absl::Milliseconds(100);
      if (!heap_.empty()) wake = std::min(wake, heap_.top().deadline);
      mu_.AwaitWithDeadline(absl::Condition(&stopping_), wake);
    }
  }

  absl::Mutex mu_;
  std::priority_queue<Entry, std::vector<Entry>, std::greater<>> heap_
      ABSL_GUARDED_BY(mu_);
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::thread thread_;
};

}  // namespace signet::server

#endif  // SIGNET_SERVER_PENDING_CALL_H_
