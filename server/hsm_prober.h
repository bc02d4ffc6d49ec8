// The HSM liveness prober: calls through the PKCS#11 boundary every second
// on a thread of its own and says what it saw, for health
// (server/health_monitor.h) and GetStatus. Its own thread because a stalled
// HSM blocks a PKCS#11 call with no timeout: signetd's main thread must stay
// free to flip health and to answer SIGTERM (docs/architecture.md, "Health,
// overload and shutdown").
//
// Thread-safe.
#ifndef SIGNET_SERVER_HSM_PROBER_H_
#define SIGNET_SERVER_HSM_PROBER_H_

#include <cstddef>
#include <functional>
#include <memory>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "base/clock.h"

namespace signet::server {

class HsmProber {
 public:
  // One call through the boundary, waiting until the deadline for a session
  // (hsm::SessionPool::Probe).
  using Probe = std::function<absl::Status(absl::Time deadline)>;

  struct Options {
    absl::Duration interval = absl::Seconds(1);
    // How long a probe waits for a session.
    absl::Duration session_wait = absl::Seconds(2);
    // A call that has not returned for longer is a stalled HSM.
    absl::Duration stalled_after = absl::Seconds(3);
    // A call that has not returned for longer is left behind and the
    // probing goes on on a new thread (at most kMaxLeftBehind left): the
    // session pool abandons a connection held past its stall threshold and
    // serves on a new one, and a call on the old one may never return (a
    // tenth outside attack: health said "stalled" for as long as it did,
    // while the HSM served). Until the new thread's first call returns,
    // the stall goes on counting from the old call. Infinite: never.
    absl::Duration replace_stuck_after = absl::InfiniteDuration();
    // What a call's time is measured on: monotonic time, which an NTP step
    // cannot make look stalled (a test moves its own).
    std::function<absl::Duration()> monotonic_now = base::MonotonicNow;
  };

  HsmProber(Probe probe, Options options);
  // Stops the thread, waiting for a probe that is not stuck (a stuck one is
  // left behind, as by Stop).
  ~HsmProber();
  HsmProber(const HsmProber&) = delete;
  HsmProber& operator=(const HsmProber&) = delete;

  void Start();
  // Asks the threads to stop. True once each ended within `wait` (the
  // ones left behind too); false when a probe call is stuck in the HSM: it
  // is left to end by itself (it holds what it uses, but the probe's own
  // objects, such as the session pool, must then not be destroyed).
  bool Stop(absl::Duration wait);

  // At most this many probe calls left behind in the last
  // kLeftBehindCountsFor; older ones no longer count.
  static constexpr size_t kMaxLeftBehind = 3;
  static constexpr absl::Duration kLeftBehindCountsFor = absl::Minutes(10);

  // What the HSM can do now: OK; UNAVAILABLE "the HSM is stalled" when a
  // probe call has not returned for over stalled_after, or when no session
  // came free for the probe and `stuck_workers()` (signers waiting over
  // stalled_after on one HSM call) is positive; UNAVAILABLE "the HSM is
  // unreachable" with the probe's error. A probe that found every session
  // busy with calls that return is OK (busy, not down).
  // Also where a probe stuck past replace_stuck_after is left behind
  // (signetd asks every second).
  absl::Status Condition(const std::function<int()>& stuck_workers) const;

 private:
  struct State;
  // Starts a probing thread on `state` (detached: it holds `state`).
  void StartThread(const std::shared_ptr<State>& state) const;
  // Leaves the current probe behind if it is stuck past
  // replace_stuck_after, and forgets the ones left behind that ended.
  void ReplaceStuckProbeLocked() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const Probe probe_;
  const Options options_;
  mutable absl::Mutex mu_;
  // The probing thread's state; null until Start.
  mutable std::shared_ptr<State> state_ ABSL_GUARDED_BY(mu_);
  mutable std::vector<std::shared_ptr<State>> left_behind_ ABSL_GUARDED_BY(mu_);
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
};

}  // namespace signet::server

#endif  // SIGNET_SERVER_HSM_PROBER_H_
