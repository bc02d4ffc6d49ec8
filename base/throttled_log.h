// A warning log that a flood cannot turn into a flood of lines: at most
// `max_lines` per `window`; the rest are counted and reported in one summary
// line when the window has passed (at the next line, or at the next
// Flush()). Windows start at the first line after the previous one ended.
//
// Thread-safe.
#ifndef SIGNET_BASE_THROTTLED_LOG_H_
#define SIGNET_BASE_THROTTLED_LOG_H_

#include <cstdint>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/functional/function_ref.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "base/clock.h"
#include "base/log.h"

namespace signet::log {

class ThrottledLog {
 public:
  // Every line and summary starts with `prefix` (e.g. "JWKS HTTP: ").
  ThrottledLog(std::string prefix, int max_lines, absl::Duration window)
      : prefix_(std::move(prefix)), max_lines_(max_lines), window_(window) {}

  // `line` is only built for lines that are written.
  void Warn(absl::FunctionRef<std::string()> line) ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock lock(&mu_);
    const absl::Duration now = base::MonotonicNow();
    EndWindowIfOver(now);
    if (lines_ == 0 && suppressed_ == 0) window_start_monotonic_ = now;
    if (lines_ < max_lines_) {
      ++lines_;
      SIGNET_LOG_WARN("{}{}", prefix_, line());
    } else {
      ++suppressed_;
    }
  }

  void Flush() ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock lock(&mu_);
    EndWindowIfOver(base::MonotonicNow());
  }

 private:
  // `now`: base::MonotonicNow().
  void EndWindowIfOver(absl::Duration now) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (lines_ == 0 || now - window_start_monotonic_ < window_) return;
    if (suppressed_ > 0) {
      SIGNET_LOG_WARN("{}suppressed {} similar lines in the last {}", prefix_,
                      suppressed_,
                      absl::FormatDuration(now - window_start_monotonic_));
    }
    lines_ = 0;
    suppressed_ = 0;
  }

  const std::string prefix_;
  const int max_lines_;
  const absl::Duration window_;
  absl::Mutex mu_;
  absl::Duration window_start_monotonic_ ABSL_GUARDED_BY(mu_);
  int lines_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t suppressed_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace signet::log

#endif  // SIGNET_BASE_THROTTLED_LOG_H_
