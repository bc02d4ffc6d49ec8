#include "base/clock.h"

#include <fcntl.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <string>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
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

absl::StatusOr<std::string> RealClock::ElapsedOrigin() const {
  // Random per boot, the same for every process of that boot (random(4)).
  // Read with read(2): a /proc file's size is 0 to stat.
  static const absl::StatusOr<std::string>* const boot_id =
      []() -> absl::StatusOr<std::string>* {
    constexpr char kPath[] = "/proc/sys/kernel/random/boot_id";
    const int fd = open(kPath, O_RDONLY | O_CLOEXEC);
    char buffer[64];
    const ssize_t n = fd < 0 ? -1 : read(fd, buffer, sizeof(buffer));
    const int err = errno;
    if (fd >= 0) close(fd);
    const std::string id =
        n > 0 ? std::string(absl::StripAsciiWhitespace(
                    absl::string_view(buffer, static_cast<size_t>(n))))
              : "";
    if (id.size() != 36) {
      return new absl::StatusOr<std::string>(absl::UnavailableError(
          absl::StrCat("cannot read the boot id ", kPath, ": ",
                       n < 0 ? std::strerror(err) : "not a UUID")));
    }
    return new absl::StatusOr<std::string>(id);
  }();
  return *boot_id;
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

MonotonicDeadline MonotonicDeadline::FromWallClock(absl::Time deadline) {
  if (deadline == absl::InfiniteFuture()) return Never();
  return In(deadline - absl::Now());
}

absl::Time MonotonicDeadline::OnWallClock() const {
  if (at_ == absl::InfiniteDuration()) return absl::InfiniteFuture();
  return absl::Now() + left();
}

ElapsedWallTime::ElapsedWallTime(const Clock& clock)
    : clock_(clock),
      start_wall_(clock.Now()),
      start_elapsed_(clock.Elapsed()) {}

ElapsedWallTime::ElapsedWallTime(const Clock& clock, absl::Time anchor_wall,
                                 absl::Duration anchor_elapsed)
    : clock_(clock), start_wall_(anchor_wall), start_elapsed_(anchor_elapsed) {}

absl::Time ElapsedWallTime::Now() const {
  absl::MutexLock lock(&mu_);
  return start_wall_ + (clock_.Elapsed() - start_elapsed_);
}

absl::Duration ElapsedWallTime::AheadBy(absl::Time wall) const {
  const absl::Duration ahead = wall - Now();
  return ahead > kStepTolerance ? ahead : absl::ZeroDuration();
}

absl::Time ElapsedWallTime::IrreversibleStepsAt(absl::Time wall) const {
  const absl::Time seen = Now();
  return wall - seen > kStepTolerance ? seen : wall;
}

absl::Time ElapsedWallTime::anchor_wall() const {
  absl::MutexLock lock(&mu_);
  return start_wall_;
}

void ElapsedWallTime::Reanchor(absl::Time anchor_wall,
                               absl::Duration anchor_elapsed) {
  absl::MutexLock lock(&mu_);
  start_wall_ = anchor_wall;
  start_elapsed_ = anchor_elapsed;
}

bool ElapsedWallTime::LowerTo(absl::Time wall) {
  const absl::Duration elapsed = clock_.Elapsed();
  absl::MutexLock lock(&mu_);
  if (start_wall_ + (elapsed - start_elapsed_) - wall <= kStepTolerance) {
    return false;
  }
  start_wall_ = wall;
  start_elapsed_ = elapsed;
  return true;
}

std::pair<absl::Time, absl::Duration> ElapsedWallTime::anchor() const {
  absl::MutexLock lock(&mu_);
  return {start_wall_, start_elapsed_};
}

WallClockStepDetector::WallClockStepDetector(const Clock& clock,
                                             absl::Duration tolerance)
    : clock_(clock),
      tolerance_(tolerance),
      last_wall_(clock.Now()),
      last_elapsed_(clock.Elapsed()) {}

absl::Duration WallClockStepDetector::Sample() {
  const absl::Time wall = clock_.Now();
  const absl::Duration elapsed = clock_.Elapsed();
  const absl::Duration step = (wall - last_wall_) - (elapsed - last_elapsed_);
  last_wall_ = wall;
  last_elapsed_ = elapsed;
  return absl::AbsDuration(step) > tolerance_ ? step : absl::ZeroDuration();
}

absl::Duration WallClockStepDetector::OffsetOf(absl::Time wall,
                                               absl::Duration elapsed) const {
  const absl::Duration offset = (wall - last_wall_) - (elapsed - last_elapsed_);
  return absl::AbsDuration(offset) > tolerance_ ? offset : absl::ZeroDuration();
}

SimulatedClock::SimulatedClock(absl::Time start)
    : now_(start), origin_([] {
        static std::atomic<int> made{0};
        // The process id too: a test restarting a daemon in another
        // process on the same audit directory is another "boot".
        return absl::StrCat("simulated-", getpid(), "-", ++made);
      }()) {}

absl::StatusOr<std::string> SimulatedClock::ElapsedOrigin() const {
  return origin_;
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
