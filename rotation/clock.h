// The source of "now" for everything time-driven in signet (rotation, JWT
// checks, cache headers). Time is injected so the lifecycle can be tested by
// moving a simulated clock instead of sleeping (docs/architecture.md, "Code
// conventions").
#ifndef SIGNET_ROTATION_CLOCK_H_
#define SIGNET_ROTATION_CLOCK_H_

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

namespace signet::rotation {

// The role: something that tells the time. Implementations must be safe to
// call from any thread.
class Clock {
 public:
  virtual ~Clock() = default;

  // The current time. Not guaranteed monotonic: wall clocks step, and the
  // lifecycle is defined on wall-clock instants shared by every replica.
  virtual absl::Time Now() const = 0;
};

// The system's wall clock (absl::Now). Stateless and thread-safe.
class RealClock final : public Clock {
 public:
  absl::Time Now() const override;
};

// A clock that only moves when told to, for tests. Thread-safe: tests may
// move it on one thread while the code under test reads it on others.
class SimulatedClock final : public Clock {
 public:
  explicit SimulatedClock(absl::Time start) : now_(start) {}

  SimulatedClock(const SimulatedClock&) = delete;
  SimulatedClock& operator=(const SimulatedClock&) = delete;

  absl::Time Now() const override ABSL_LOCKS_EXCLUDED(mu_);

  // Moves the clock by `d`. A negative `d` moves it backwards, which is how
  // a test models a wall-clock step.
  void Advance(absl::Duration d) ABSL_LOCKS_EXCLUDED(mu_);

  // Jumps to `t`, forwards or backwards.
  void SetTime(absl::Time t) ABSL_LOCKS_EXCLUDED(mu_);

 private:
  mutable absl::Mutex mu_;
  absl::Time now_ ABSL_GUARDED_BY(mu_);
};

}  // namespace signet::rotation

#endif  // SIGNET_ROTATION_CLOCK_H_
