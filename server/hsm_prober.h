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

#include <functional>
#include <memory>
#include <thread>

#include "absl/status/status.h"
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
  // Asks the thread to stop. True once it ended within `wait` (joined);
  // false when a probe call is stuck in the HSM: the thread is left to end
  // by itself (it holds what it uses).
  bool Stop(absl::Duration wait);

  // What the HSM can do now: OK; UNAVAILABLE "the HSM is stalled" when a
  // probe call has not returned for over stalled_after, or when no session
  // came free for the probe and `stuck_workers()` (signers waiting over
  // stalled_after on one HSM call) is positive; UNAVAILABLE "the HSM is
  // unreachable" with the probe's error. A probe that found every session
  // busy with calls that return is OK (busy, not down).
  absl::Status Condition(const std::function<int()>& stuck_workers) const;

 private:
  struct State;
  const Probe probe_;
  const Options options_;
  std::shared_ptr<State> state_;
  std::thread thread_;
};

}  // namespace signet::server

#endif  // SIGNET_SERVER_HSM_PROBER_H_
