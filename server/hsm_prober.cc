#include "server/hsm_prober.h"

#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"

namespace signet::server {

// Shared with the thread, which may outlive the prober (a stuck call).
struct HsmProber::State {
  absl::Notification stop;
  absl::Notification done;
  absl::Mutex mu;
  bool in_call ABSL_GUARDED_BY(mu) = false;
  absl::Duration call_started ABSL_GUARDED_BY(mu);  // monotonic
  absl::Status last ABSL_GUARDED_BY(mu);
};

HsmProber::HsmProber(Probe probe, Options options)
    : probe_(std::move(probe)),
      options_(options),
      state_(std::make_shared<State>()) {}

HsmProber::~HsmProber() {
  // A probe that is not stuck returns within its session wait.
  Stop(options_.session_wait + options_.stalled_after);
}

void HsmProber::Start() {
  thread_ = std::thread([state = state_, probe = probe_, options = options_] {
    while (!state->stop.HasBeenNotified()) {
      {
        absl::MutexLock lock(&state->mu);
        state->in_call = true;
        state->call_started = options.monotonic_now();
      }
      absl::Status status = probe(absl::Now() + options.session_wait);
      {
        absl::MutexLock lock(&state->mu);
        state->in_call = false;
        state->last = std::move(status);
      }
      state->stop.WaitForNotificationWithTimeout(options.interval);
    }
    state->done.Notify();
  });
}

bool HsmProber::Stop(absl::Duration wait) {
  if (!state_->stop.HasBeenNotified()) state_->stop.Notify();
  if (!thread_.joinable()) return true;
  if (!state_->done.WaitForNotificationWithTimeout(wait)) {
    thread_.detach();
    return false;
  }
  thread_.join();
  return true;
}

absl::Status HsmProber::Condition(
    const std::function<int()>& stuck_workers) const {
  absl::Status last;
  absl::Duration in_call;
  {
    absl::MutexLock lock(&state_->mu);
    last = state_->last;
    in_call = state_->in_call ? options_.monotonic_now() - state_->call_started
                              : absl::ZeroDuration();
  }
  if (in_call > options_.stalled_after) {
    return absl::UnavailableError(absl::StrCat(
        "the HSM is stalled: a probe call has not returned for ",
        absl::FormatDuration(absl::Trunc(in_call, absl::Seconds(1)))));
  }
  if (last.code() == absl::StatusCode::kDeadlineExceeded) {
    // No session came free for the probe: busy, or held by calls a stalled
    // HSM never answers.
    const int stuck = stuck_workers ? stuck_workers() : 0;
    if (stuck > 0) {
      return absl::UnavailableError(absl::StrCat(
          "the HSM is stalled: no session is free and ", stuck,
          " worker(s) have waited over ",
          absl::FormatDuration(options_.stalled_after), " on one HSM call"));
    }
    return absl::OkStatus();
  }
  if (!last.ok()) {
    return absl::UnavailableError(
        absl::StrCat("the HSM is unreachable: ", last.message()));
  }
  return absl::OkStatus();
}

}  // namespace signet::server
