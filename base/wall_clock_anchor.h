// Where signetd measures the wall clock from (base::ElapsedWallTime), kept
// in a small file so that every start within one boot of the machine
// measures from the first start's reading. Without it a restart (a crash,
// kill -9, the supervisor restarting signetd) would take a wall clock set
// forward as the truth and destroy keys whose tokens are still valid; with
// it, a step made while signetd was down is seen too. A new boot (the
// kernel's boot id changes: CLOCK_BOOTTIME starts again at zero) takes a new
// anchor; so does an operator who accepts the wall clock as it reads
// (docs/architecture.md, "Rotation").
//
// The file holds no secret: an origin name and two integers.
#ifndef SIGNET_BASE_WALL_CLOCK_ANCHOR_H_
#define SIGNET_BASE_WALL_CLOCK_ANCHOR_H_

#include <optional>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "base/clock.h"

namespace signet::base {

struct WallClockAnchor {
  std::string origin;      // Clock::ElapsedOrigin() when taken (the boot)
  absl::Time wall;         // the wall clock's reading then
  absl::Duration elapsed;  // Clock::Elapsed() then
};

// The file's text, and back. Parsing is strict: the format line, then
// exactly "origin", "wall_unix_ns" and "elapsed_ns" lines in that order;
// anything else is INVALID_ARGUMENT.
std::string FormatWallClockAnchor(const WallClockAnchor& anchor);
absl::StatusOr<WallClockAnchor> ParseWallClockAnchor(absl::string_view text);

struct LoadedWallClockAnchor {
  enum class Source {
    kKept,           // taken at an earlier start of this boot
    kNoFile,         // taken now: there was no anchor yet
    kNewBoot,        // taken now: the file's anchor is from another boot
    kAccepted,       // taken now: the caller accepted the wall clock
    kOriginUnknown,  // taken now, not kept: the boot id cannot be read
  };
  WallClockAnchor anchor;
  Source source = Source::kKept;
  // The file's anchor when one was replaced (kNewBoot, kAccepted with a
  // readable file).
  std::optional<WallClockAnchor> previous;
  // Why an anchor taken now could not be kept in the file (it then holds
  // for this process only): empty when it was kept.
  std::string not_stored;
};

// The anchor in the file at `path` when it was taken in this boot;
// otherwise one taken from `clock` now and stored there (durably, before
// this returns). With `accept_wall_clock`, always one taken now, and NOT
// stored: the caller records the acceptance (the audit log) and then
// stores it with StoreWallClockAnchor, so an acceptance never takes effect
// at a later start without its record.
//
// FAILED_PRECONDITION, naming the file and what is wrong with it, when it
// exists but cannot be read or parsed, or claims this boot with an elapsed
// reading later than now (not written by this code): the caller decides
// whether to accept the wall clock instead. A failure to store a new anchor
// is not an error (see `not_stored`).
absl::StatusOr<LoadedWallClockAnchor> LoadOrTakeWallClockAnchor(
    const std::string& path, const Clock& clock, bool accept_wall_clock);

// Replaces the file at `path` with `anchor`, durably.
absl::Status StoreWallClockAnchor(const std::string& path,
                                  const WallClockAnchor& anchor);

}  // namespace signet::base

#endif  // SIGNET_BASE_WALL_CLOCK_ANCHOR_H_
