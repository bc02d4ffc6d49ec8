#include "base/clock.h"

#include <chrono>

#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"

namespace signet::base {

absl::Time RealClock::Now() const { return absl::Now(); }

bool RealClock::AwaitUntil(absl::Mutex& mu, const absl::Condition& condition,
                           absl::Time until) const {
  return mu.AwaitWithDeadline(condition, until);
}

const Clock& SystemClock() {
  static const RealClock* const clock = new RealClock();
  return *clock;
}

absl::Duration MonotonicNow() {
  return absl::FromChrono(std::chrono::steady_clock::now().time_since_epoch());
}

absl::Time SimulatedClock::Now() const {
  absl::MutexLock lock(&mu_);
  return now_;
}

bool SimulatedClock::AwaitUntil(absl::Mutex& mu,
                                const absl::Condition& condition,
                                absl::Time until) const {
  // The waiter's mutex is held while Now() takes ours; Advance never takes
  // a waiter's, so the two never wait on each other.
  while (!condition.Eval()) {
    if (Now() >= until) return false;
    mu.AwaitWithTimeout(condition, absl::Milliseconds(5));
  }
  return true;
}

void SimulatedClock::Advance(absl::Duration d) {
  absl::MutexLock lock(&mu_);
  now_ += d;
}

void SimulatedClock::SetTime(absl::Time t) {
  absl::MutexLock lock(&mu_);
  now_ = t;
}

}  // namespace signet::base
