// The one source of wall time for everything in signetd whose behaviour
// depends on it: key states and schedule boundaries, the claims' iat/exp
// checks, key-set times. It is injected, so a test moves a simulated clock
// instead of sleeping (docs/architecture.md, "Code conventions").
//
// Waiting that only measures an interval (deadlines of PKCS#11 calls, stall
// detection, backoff) does not use it: that is monotonic time.
#ifndef SIGNET_BASE_CLOCK_H_
#define SIGNET_BASE_CLOCK_H_

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

namespace signet::base {

// The role: something that tells the wall time and can wait for it.
// Implementations are safe to call from any thread.
class Clock {
 public:
  virtual ~Clock() = default;

  // The current time. Not guaranteed monotonic: wall clocks step, and the
  // key lifecycle is defined on wall-clock instants shared by every
  // replica.
  virtual absl::Time Now() const = 0;

  // Time elapsed since an arbitrary fixed origin on a clock that never
  // steps and keeps counting while the machine is suspended
  // (CLOCK_BOOTTIME): what ElapsedWallTime measures the wall clock
  // against. Only differences mean anything.
  virtual absl::Duration Elapsed() const = 0;

  // With `mu` held: waits until `condition` holds or this clock reaches
  // `until`, whichever is first, and returns whether `condition` holds.
  // `mu` is released while waiting, as absl::Mutex::Await does.
  virtual bool AwaitUntil(absl::Mutex& mu, const absl::Condition& condition,
                          absl::Time until) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) = 0;
};

// The system's wall clock (absl::Now). Stateless and thread-safe.
class RealClock final : public Clock {
 public:
  absl::Time Now() const override;
  absl::Duration Elapsed() const override;
  bool AwaitUntil(absl::Mutex& mu, const absl::Condition& condition,
                  absl::Time until) const override
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu);
};

// signetd's clock: one RealClock for the process.
const Clock& SystemClock();

// Monotonic time, for measuring how long something has taken (stall
// detection): it never steps with the wall clock, so an NTP correction
// cannot make a healthy call look stalled. A duration since an arbitrary
// fixed origin; only differences mean anything.
absl::Duration MonotonicNow();

// The wall time this process has seen pass: the wall clock's reading when
// it was made, plus the time elapsed since on Clock::Elapsed. A wall clock
// stepped forward (by hand, by a bad time source, by an attacker who may
// set it) reads ahead of it; one stepped back reads behind it. The key
// lifecycle holds its irreversible steps (destroying a private key,
// pruning a key) to it, so a step forward cannot destroy a key whose
// tokens are still valid (docs/architecture.md, "Rotation"). It cannot see
// a step made while the process was down. Thread-safe.
class ElapsedWallTime {
 public:
  // `clock` must outlive this.
  explicit ElapsedWallTime(const Clock& clock);

  // The start's wall time plus the time elapsed since.
  absl::Time Now() const;

 private:
  const Clock& clock_;
  const absl::Time start_wall_;
  const absl::Duration start_elapsed_;
};

// A clock that only moves when told to, for tests. Thread-safe: tests may
// move it on one thread while the code under test reads it, or waits on
// it, on others. Time passing (Advance, SetTime forwards) moves both the
// wall time and the elapsed time; a step of the wall clock (StepWall, and
// Advance or SetTime backwards) moves only the wall time.
class SimulatedClock final : public Clock {
 public:
  explicit SimulatedClock(absl::Time start) : now_(start) {}

  SimulatedClock(const SimulatedClock&) = delete;
  SimulatedClock& operator=(const SimulatedClock&) = delete;

  absl::Time Now() const override ABSL_LOCKS_EXCLUDED(mu_);
  absl::Duration Elapsed() const override ABSL_LOCKS_EXCLUDED(mu_);
  // A waiter sees a move within a few milliseconds of real time (it looks
  // again every few: the clock does not know the waiters' mutexes).
  bool AwaitUntil(absl::Mutex& mu, const absl::Condition& condition,
                  absl::Time until) const override
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu);

  // Moves the clock by `d`: time passes. A negative `d` moves the wall
  // time backwards, which is how a test models a wall-clock step back.
  void Advance(absl::Duration d) ABSL_LOCKS_EXCLUDED(mu_);

  // Moves the wall time to `t`: forwards, as if the time between passed;
  // backwards, as a step back.
  void SetTime(absl::Time t) ABSL_LOCKS_EXCLUDED(mu_);

  // Steps the wall time by `d`, forwards or backwards, while no time
  // passes: how a test models the wall clock being set.
  void StepWall(absl::Duration d) ABSL_LOCKS_EXCLUDED(mu_);

 private:
  mutable absl::Mutex mu_;
  absl::Time now_ ABSL_GUARDED_BY(mu_);
  absl::Duration elapsed_ ABSL_GUARDED_BY(mu_);
};

}  // namespace signet::base

#endif  // SIGNET_BASE_CLOCK_H_
