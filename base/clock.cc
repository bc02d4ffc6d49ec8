#include "base/clock.h"

#include <time.h>

#include <algorithm>
#include <chrono>

#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"

namespace signet::base {

absl::Time RealClock::Now() const { return absl::Now(); }

absl::Duration RealClock::Elapsed() const {
  timespec ts{};
  // Cannot fail for a valid clock id and address (Linux >= 2.6.39).
  (void)clock_gettime(CLOCK_BOOTTIME, &ts);
  return absl::DurationFromTimespec(ts);
}

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

ElapsedWallTime::ElapsedWallTime(const Clock& clock)
    : clock_(clock),
      start_wall_(clock.Now()),
      start_elapsed_(clock.Elapsed()) {}

absl::Time ElapsedWallTime::Now() const {
  return start_wall_ + (clock_.Elapsed() - start_elapsed_);
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

absl::Duration SimulatedClock::Elapsed() const {
  absl::MutexLock lock(&mu_);
  return elapsed_;
}

void SimulatedClock::Advance(absl::Duration d) {
  absl::MutexLock lock(&mu_);
  now_ += d;
  elapsed_ += std::max(d, absl::ZeroDuration());
}

void SimulatedClock::SetTime(absl::Time t) {
  absl::MutexLock lock(&mu_);
  elapsed_ += std::max(t - now_, absl::ZeroDuration());
  now_ = t;
}

void SimulatedClock::StepWall(absl::Duration d) {
  absl::MutexLock lock(&mu_);
  now_ += d;
}

}  // namespace signet::base
