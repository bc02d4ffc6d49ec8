#include "server/pending_call.h"

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"

namespace signet::server {

bool PendingCall::Finish(const absl::Status& status,
                         const std::function<void()>& fill) {
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

DeadlineWatchdog::DeadlineWatchdog()
    : list_(std::make_shared<WatchList>()), thread_([this] { Loop(); }) {}

DeadlineWatchdog::~DeadlineWatchdog() {
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

void DeadlineWatchdog::Watch(std::shared_ptr<PendingCall> call) {
  absl::MutexLock lock(&list_->mu);
  // Under the lock: a Finish that set answered() after this test erases
  // the entry once this returns.
  if (call->answered()) return;
  WatchList::Key key{call->deadline(), call.get()};
  list_->calls.emplace(key, std::move(call));
}

void DeadlineWatchdog::CutOff(base::MonotonicDeadline at) {
  absl::MutexLock lock(&list_->mu);
  cut_off_ = at;
}

size_t DeadlineWatchdog::watched() const {
  absl::MutexLock lock(&list_->mu);
  return list_->calls.size();
}

void DeadlineWatchdog::Loop() {
  absl::MutexLock lock(&list_->mu);
  while (!stopping_) {
    // Monotonic: a wall clock stepped forward expires no call early.
    const base::MonotonicDeadline now =
        base::MonotonicDeadline::At(base::MonotonicNow());
    const bool cut_off = !(now < cut_off_);
    while (!list_->calls.empty() &&
           (cut_off || !(now < list_->calls.begin()->first.first))) {
      std::shared_ptr<PendingCall> call =
          std::move(list_->calls.begin()->second);
      list_->calls.erase(list_->calls.begin());
      list_->mu.Unlock();
      if (const auto& answers = call->expiry_answers(); answers.has_value()) {
        const std::optional<absl::Status>& not_started =
            cut_off ? answers->not_started_at_cut_off
                    : answers->not_started_at_deadline;
        call->Expire(not_started.has_value() && call->ClaimNotStarted()
                         ? *not_started
                     : cut_off ? answers->at_cut_off
                               : answers->at_deadline);
      } else if (cut_off) {
        call->Expire(absl::UnavailableError(
            "signetd is shutting down and the HSM has not answered; nothing "
            "was released (retry)"));
      } else if (!call->ClaimNotStarted()) {
        call->Expire(absl::DeadlineExceededError(absl::StrCat(
            "the HSM did not answer before the deadline", call->deadline_note(),
            ", or the audit log did not take the call's line (a stalled disk; "
            "health says which); nothing was released (retry, or check the "
            "HSM and the audit log's disk)")));
      } else {
        call->Expire(absl::DeadlineExceededError(absl::StrCat(
            "the call waited for a free HSM session past its deadline",
            call->deadline_note(),
            " (this replica is busy, or its HSM is stalled: health says "
            "which); nothing was released (retry with backoff, or on another "
            "replica)")));
      }
      call.reset();
      list_->mu.Lock();
    }
    absl::Duration wait = std::min(absl::Milliseconds(100), cut_off_.left());
    if (!list_->calls.empty()) {
      wait = std::min(wait, list_->calls.begin()->first.first.left());
    }
    // At least a millisecond: once the cut-off has passed, its left() is
    // negative and the loop would spin until the watchdog is destroyed.
    list_->mu.AwaitWithTimeout(absl::Condition(&stopping_),
                               std::max(wait, absl::Milliseconds(1)));
  }
}

}  // namespace signet::server
