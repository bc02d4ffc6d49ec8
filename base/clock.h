// The one source of wall time for everything in signetd whose behaviour
// depends on it: key states and schedule boundaries, the claims' iat/exp
// checks, key-set times. It is injected, so a test moves a simulated clock
// instead of sleeping (docs/architecture.md, "Code conventions").
//
// Waiting that only measures an interval (deadlines of PKCS#11 calls, stall
// detection, backoff) does not use it: that is monotonic time.
#ifndef SIGNET_BASE_CLOCK_H_
#define SIGNET_BASE_CLOCK_H_

#include <string>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
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

  // Names the origin of Elapsed(): two readings of Elapsed() compare only
  // under the same name. For the real clock, the machine's boot (the
  // kernel's boot_id); each SimulatedClock is its own. UNAVAILABLE when it
  // cannot be read.
  virtual absl::StatusOr<std::string> ElapsedOrigin() const = 0;

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
  absl::StatusOr<std::string> ElapsedOrigin() const override;
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

// A deadline on the monotonic clock (MonotonicNow): a wall clock stepped
// while a call waits neither expires the call early nor extends it. (A
// call's deadline taken on the wall clock read as long past once signetd's
// clock was set forward under it.) A value; copies are cheap.
class MonotonicDeadline {
 public:
  // `left` from now; absl::InfiniteDuration() for no deadline.
  static MonotonicDeadline In(absl::Duration left) {
    return MonotonicDeadline(MonotonicNow() + left);
  }
  static MonotonicDeadline Never() {
    return MonotonicDeadline(absl::InfiniteDuration());
  }
  // A wall-clock deadline read once against the wall clock now, then
  // counted on the monotonic clock (a later step of the wall clock moves it
  // no more); absl::InfiniteFuture() is Never().
  static MonotonicDeadline FromWallClock(absl::Time deadline);
  // At `at` on MonotonicNow()'s scale (for tests and for ordering).
  static MonotonicDeadline At(absl::Duration at) {
    return MonotonicDeadline(at);
  }

  // Time left until the deadline: negative once it has passed, infinite
  // for Never().
  absl::Duration left() const { return at_ - MonotonicNow(); }
  bool passed() const { return MonotonicNow() >= at_; }
  // The same deadline `earlier` sooner.
  MonotonicDeadline EarlierBy(absl::Duration earlier) const {
    return MonotonicDeadline(at_ - earlier);
  }
  // The deadline on today's wall clock (absl::Now() plus left()), for an
  // API that waits on wall time: read it just before that wait, so a step
  // of the wall clock only moves a wait already under way.
  absl::Time OnWallClock() const;
  // On MonotonicNow()'s scale.
  absl::Duration at() const { return at_; }

  friend bool operator<(MonotonicDeadline a, MonotonicDeadline b) {
    return a.at_ < b.at_;
  }
  friend bool operator==(MonotonicDeadline a, MonotonicDeadline b) {
    return a.at_ == b.at_;
  }

 private:
  explicit MonotonicDeadline(absl::Duration at) : at_(at) {}
  absl::Duration at_;
};

// The wall time seen pass since an anchor: the wall clock's reading at the
// anchor, plus the time elapsed since on Clock::Elapsed. A wall clock
// stepped forward (by hand, by a bad time source, by an attacker who may
// set it) reads ahead of it; one stepped back reads behind it. The key
// lifecycle holds its irreversible steps (destroying a private key,
// pruning a key) to it, so a step forward cannot destroy a key whose
// tokens are still valid (docs/architecture.md, "Rotation"). signetd
// anchors it at the first start of each boot and keeps the anchor across
// restarts (base/wall_clock_anchor.h), so a restart, or a step made while
// it was down, does not reset it. Thread-safe.
class ElapsedWallTime {
 public:
  // How far the wall clock may read ahead before it counts as set forward:
  // more than NTP's slews and a machine's drift between synchronisations,
  // far less than any key lifetime.
  static constexpr absl::Duration kStepTolerance = absl::Seconds(60);

  // Anchored now. `clock` must outlive this.
  explicit ElapsedWallTime(const Clock& clock);
  // Anchored at `anchor_wall`, when `clock` read `anchor_elapsed` on
  // Elapsed() (the same origin as now). `clock` must outlive this.
  ElapsedWallTime(const Clock& clock, absl::Time anchor_wall,
                  absl::Duration anchor_elapsed);

  ElapsedWallTime(const ElapsedWallTime&) = delete;
  ElapsedWallTime& operator=(const ElapsedWallTime&) = delete;

  // The anchor's wall time plus the time elapsed since.
  absl::Time Now() const ABSL_LOCKS_EXCLUDED(mu_);

  // How far `wall` (a reading of the wall clock) is ahead of Now() when
  // that is more than kStepTolerance; zero otherwise.
  absl::Duration AheadBy(absl::Time wall) const ABSL_LOCKS_EXCLUDED(mu_);

  // The time the irreversible steps of a pass with the wall clock at
  // `wall` are measured against: Now() when `wall` reads ahead of it (see
  // AheadBy), else `wall`. Never later than `wall` plus kStepTolerance.
  absl::Time IrreversibleStepsAt(absl::Time wall) const
      ABSL_LOCKS_EXCLUDED(mu_);

  // The anchor's wall time.
  absl::Time anchor_wall() const ABSL_LOCKS_EXCLUDED(mu_);

  // Moves the anchor to `anchor_wall` at `anchor_elapsed` (an operator
  // accepted the clock).
  void Reanchor(absl::Time anchor_wall, absl::Duration anchor_elapsed)
      ABSL_LOCKS_EXCLUDED(mu_);

  // When `wall` reads more than kStepTolerance behind Now() (the clock was
  // set back, or read ahead when the anchor was taken), re-anchors at
  // `wall` now and returns true. Lowering only ever holds more back, so it
  // is always safe; without it, a clock ahead at the anchor would hide a
  // later step forward of up to that much.
  bool LowerTo(absl::Time wall) ABSL_LOCKS_EXCLUDED(mu_);

  // The anchor as (wall time, elapsed time), to keep it.
  std::pair<absl::Time, absl::Duration> anchor() const ABSL_LOCKS_EXCLUDED(mu_);

 private:
  const Clock& clock_;
  mutable absl::Mutex mu_;
  absl::Time start_wall_ ABSL_GUARDED_BY(mu_);
  absl::Duration start_elapsed_ ABSL_GUARDED_BY(mu_);
};

// Notices a step of the wall clock between two calls of Sample: the wall
// time moved by more than `tolerance` differently from the elapsed time
// (Clock::Elapsed). Called about once a second by one thread (signetd's
// health loop, which waits on a monotonic timeout), it lets the key manager
// run a pass at once after a step, instead of at the end of a wait the
// step has stretched (Abseil's timed waits end on the wall clock). Not
// thread-safe.
class WallClockStepDetector {
 public:
  // `clock` must outlive this.
  explicit WallClockStepDetector(const Clock& clock,
                                 absl::Duration tolerance = absl::Seconds(2));

  // The step since the last call (positive: set forward), or zero.
  absl::Duration Sample();

  // How far a reading another thread made (`wall` and `elapsed` read
  // together) lies off the wall clock as the last Sample read it, beyond
  // the tolerance (positive: that reading was ahead), or zero. Two samples
  // a second apart miss a step that comes and goes between them, and
  // Debian's Abseil reads the kernel's clock for absl::Now() only every
  // second or two (it counts CPU cycles in between), so a thread that
  // acted on such a step (the key manager's pass) is the only witness:
  // signetd asks its last pass's reading here.
  absl::Duration OffsetOf(absl::Time wall, absl::Duration elapsed) const;

 private:
  const Clock& clock_;
  const absl::Duration tolerance_;
  absl::Time last_wall_;
  absl::Duration last_elapsed_;
};

// A clock that only moves when told to, for tests. Thread-safe: tests may
// move it on one thread while the code under test reads it, or waits on
// it, on others. Time passing (Advance, SetTime forwards) moves both the
// wall time and the elapsed time; a step of the wall clock (StepWall, and
// Advance or SetTime backwards) moves only the wall time.
class SimulatedClock final : public Clock {
 public:
  explicit SimulatedClock(absl::Time start);

  SimulatedClock(const SimulatedClock&) = delete;
  SimulatedClock& operator=(const SimulatedClock&) = delete;

  absl::Time Now() const override ABSL_LOCKS_EXCLUDED(mu_);
  absl::Duration Elapsed() const override ABSL_LOCKS_EXCLUDED(mu_);
  // "simulated-<pid>-<n>": unique to this clock.
  absl::StatusOr<std::string> ElapsedOrigin() const override;
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
  const std::string origin_;
};

}  // namespace signet::base

#endif  // SIGNET_BASE_CLOCK_H_
