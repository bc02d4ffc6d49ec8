#include "server/hsm_prober.h"

#include <algorithm>
#include <optional>
#include <system_error>
#include <thread>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "base/log.h"

namespace signet::server {

// Shared with its thread, which may outlive the prober (a stuck call).
struct HsmProber::State {
  absl::Notification stop;
  absl::Notification done;
  absl::Mutex mu;
  bool in_call ABSL_GUARDED_BY(mu) = false;
  absl::Duration call_started ABSL_GUARDED_BY(mu);  // monotonic
  // For a thread that replaced a stuck one, until its first call returns:
  // when the stuck call started (monotonic), so the stall goes on counting.
  std::optional<absl::Duration> stalled_since ABSL_GUARDED_BY(mu);
  absl::Status last ABSL_GUARDED_BY(mu);
};

HsmProber::HsmProber(Probe probe, Options options)
    : probe_(std::move(probe)), options_(options) {}

HsmProber::~HsmProber() {
  // A probe that is not stuck returns within its session wait.
  Stop(options_.session_wait + options_.stalled_after);
}

void HsmProber::Start() {
  absl::MutexLock lock(&mu_);
  if (state_ != nullptr) return;
  state_ = std::make_shared<State>();
  StartThread(state_);
}

void HsmProber::StartThread(const std::shared_ptr<State>& state) const {
  std::thread([state, probe = probe_, options = options_] {
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
        // No session came free: not an answer from the HSM, so a stall
        // carried over from a stuck probe goes on (a review: the calls
        // left behind hold the sessions, and "busy" read as SERVING).
        if (status.code() != absl::StatusCode::kDeadlineExceeded) {
          state->stalled_since.reset();
        }
        state->last = std::move(status);
      }
      state->stop.WaitForNotificationWithTimeout(options.interval);
    }
    state->done.Notify();
  }).detach();
}

void HsmProber::ReplaceStuckProbeLocked() const {
  std::erase_if(left_behind_, [](const std::shared_ptr<State>& state) {
    return state->done.HasBeenNotified();
  });
  // Only recent ones count toward the cap: a call on an abandoned
  // connection may never return, and old incidents must not keep a new
  // one from being followed (they stay listed, for Stop).
  const absl::Duration now = options_.monotonic_now();
  const size_t recent =
      std::count_if(left_behind_.begin(), left_behind_.end(),
                    [&](const std::shared_ptr<State>& state) {
                      absl::MutexLock lock(&state->mu);
                      return now - state->call_started < kLeftBehindCountsFor;
                    });
  if (stopping_ || state_ == nullptr || recent >= kMaxLeftBehind) {
    return;
  }
  absl::Duration started;
  std::optional<absl::Duration> stalled_since;
  {
    absl::MutexLock lock(&state_->mu);
    if (!state_->in_call ||
        now - state_->call_started <= options_.replace_stuck_after) {
      return;
    }
    started = state_->call_started;
    stalled_since = state_->stalled_since;
  }
  SIGNET_LOG_WARN(
      "HSM probe: one call has not returned for {}; probing on a new thread, "
      "the old call left behind (the session pool replaces a connection "
      "held past its stall threshold, if the HSM answers new ones)",
      absl::FormatDuration(absl::Trunc(now - started, absl::Seconds(1))));
  auto next = std::make_shared<State>();
  {
    absl::MutexLock lock(&next->mu);
    next->stalled_since = stalled_since.value_or(started);
    // In its call from the start: the stall shows without a gap.
    next->in_call = true;
    next->call_started = now;
  }
  try {
    StartThread(next);
  } catch (const std::system_error& e) {
    SIGNET_LOG_ERROR("HSM probe: no thread for a new probe: {}", e.what());
    return;  // the stuck one stays current: health keeps saying stalled
  }
  state_->stop.Notify();  // it ends once its call returns, if ever
  left_behind_.push_back(state_);
  state_ = std::move(next);
}

bool HsmProber::Stop(absl::Duration wait) {
  std::vector<std::shared_ptr<State>> states;
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
    states = left_behind_;
    if (state_ != nullptr) states.push_back(state_);
  }
  for (const std::shared_ptr<State>& state : states) {
    if (!state->stop.HasBeenNotified()) state->stop.Notify();
  }
  // Monotonic: a wall clock step during a stop neither cuts the wait short
  // nor stretches it.
  const base::MonotonicDeadline give_up = base::MonotonicDeadline::In(wait);
  bool all_ended = true;
  for (const std::shared_ptr<State>& state : states) {
    if (!state->done.WaitForNotificationWithTimeout(
            std::max(absl::ZeroDuration(), give_up.left()))) {
      all_ended = false;
    }
  }
  return all_ended;
}

absl::Status HsmProber::Condition(
    const std::function<int()>& stuck_workers) const {
  std::shared_ptr<State> state;
  {
    absl::MutexLock lock(&mu_);
    ReplaceStuckProbeLocked();
    state = state_;
  }
  if (state == nullptr) return absl::OkStatus();  // not started
  absl::Status last;
  absl::Duration in_call;
  {
    absl::MutexLock lock(&state->mu);
    last = state->last;
    // A stall carried over from a probe left behind counts from its call,
    // also while this probe finds no session free.
    if (state->in_call) {
      in_call = options_.monotonic_now() -
                std::min(state->call_started,
                         state->stalled_since.value_or(state->call_started));
    } else if (state->stalled_since.has_value()) {
      in_call = options_.monotonic_now() - *state->stalled_since;
    } else {
      in_call = absl::ZeroDuration();
    }
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
