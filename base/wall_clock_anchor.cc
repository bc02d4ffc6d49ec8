#include "base/wall_clock_anchor.h"

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "base/file.h"

namespace signet::base {

namespace {

constexpr absl::string_view kFormatLine = "signet wall-clock anchor v1";
// Far larger than any anchor: a bigger file is not one.
constexpr size_t kMaxFileBytes = 1024;

// The value of the line "<name> <value>", or empty when the line is not
// that.
std::optional<absl::string_view> ValueOf(absl::string_view line,
                                         absl::string_view name) {
  if (!absl::ConsumePrefix(&line, name) || !absl::ConsumePrefix(&line, " ") ||
      line.empty()) {
    return std::nullopt;
  }
  return line;
}

bool IsOriginText(absl::string_view origin) {
  if (origin.size() > 64) return false;
  for (char c : origin) {
    if (!absl::ascii_isalnum(static_cast<unsigned char>(c)) && c != '-') {
      return false;
    }
  }
  return true;
}

}  // namespace

std::string FormatWallClockAnchor(const WallClockAnchor& anchor) {
  return absl::StrCat(kFormatLine, "\norigin ", anchor.origin,
                      "\nwall_unix_ns ", absl::ToUnixNanos(anchor.wall),
                      "\nelapsed_ns ", absl::ToInt64Nanoseconds(anchor.elapsed),
                      "\n");
}

absl::StatusOr<WallClockAnchor> ParseWallClockAnchor(absl::string_view text) {
  const std::vector<absl::string_view> lines = absl::StrSplit(text, '\n');
  // Four lines, each ended by a newline: a fifth, empty piece.
  if (lines.size() != 5 || !lines[4].empty() || lines[0] != kFormatLine) {
    return absl::InvalidArgumentError(
        absl::StrCat("not a wall-clock anchor (expected \"", kFormatLine,
                     "\" and three lines)"));
  }
  const std::optional<absl::string_view> origin = ValueOf(lines[1], "origin");
  const std::optional<absl::string_view> wall =
      ValueOf(lines[2], "wall_unix_ns");
  const std::optional<absl::string_view> elapsed =
      ValueOf(lines[3], "elapsed_ns");
  int64_t wall_ns = 0;
  int64_t elapsed_ns = 0;
  if (!origin || !IsOriginText(*origin) || !wall ||
      !absl::SimpleAtoi(*wall, &wall_ns) || !elapsed ||
      !absl::SimpleAtoi(*elapsed, &elapsed_ns) || elapsed_ns < 0) {
    return absl::InvalidArgumentError(
        "a line of the wall-clock anchor is malformed");
  }
  return WallClockAnchor{std::string(*origin), absl::FromUnixNanos(wall_ns),
                         absl::Nanoseconds(elapsed_ns)};
}

absl::StatusOr<LoadedWallClockAnchor> LoadOrTakeWallClockAnchor(
    const std::string& path, const Clock& clock, bool accept_wall_clock) {
  LoadedWallClockAnchor loaded;
  const absl::StatusOr<std::string> origin = clock.ElapsedOrigin();
  // Elapsed() first: a reading of the wall clock never comes before it, so
  // the anchor never reads ahead of the time really passed.
  loaded.anchor.elapsed = clock.Elapsed();
  loaded.anchor.wall = clock.Now();
  if (!origin.ok()) {
    loaded.source = LoadedWallClockAnchor::Source::kOriginUnknown;
    loaded.not_stored = std::string(origin.status().message());
    return loaded;
  }
  loaded.anchor.origin = *origin;

  absl::StatusOr<std::string> text =
      ReadSmallFile(path, "the wall-clock anchor", kMaxFileBytes);
  if (absl::IsNotFound(text.status())) {
    loaded.source = LoadedWallClockAnchor::Source::kNoFile;
  } else {
    absl::StatusOr<WallClockAnchor> stored =
        text.ok() ? ParseWallClockAnchor(*text) : text.status();
    if (!stored.ok()) {
      if (!accept_wall_clock) {
        return absl::FailedPreconditionError(
            absl::StrCat("the wall-clock anchor ", path,
                         " cannot be used: ", stored.status().message()));
      }
      loaded.source = LoadedWallClockAnchor::Source::kAccepted;
    } else if (stored->origin != *origin) {
      loaded.source = LoadedWallClockAnchor::Source::kNewBoot;
      loaded.previous = *stored;
    } else if (stored->elapsed > loaded.anchor.elapsed && !accept_wall_clock) {
      return absl::FailedPreconditionError(absl::StrCat(
          "the wall-clock anchor ", path,
          " cannot be used: it claims this boot at an elapsed time that has "
          "not come yet (",
          absl::FormatDuration(stored->elapsed), " after boot; now ",
          absl::FormatDuration(loaded.anchor.elapsed), ")"));
    } else if (accept_wall_clock) {
      loaded.source = LoadedWallClockAnchor::Source::kAccepted;
      loaded.previous = *stored;
    } else {
      loaded.source = LoadedWallClockAnchor::Source::kKept;
      loaded.anchor = *stored;
      return loaded;
    }
  }
  if (loaded.source == LoadedWallClockAnchor::Source::kAccepted) {
    return loaded;  // stored by the caller once the acceptance is recorded
  }
  if (absl::Status stored = StoreWallClockAnchor(path, loaded.anchor);
      !stored.ok()) {
    loaded.not_stored = std::string(stored.message());
  }
  return loaded;
}

absl::Status StoreWallClockAnchor(const std::string& path,
                                  const WallClockAnchor& anchor) {
  return ReplaceFileDurably(path, FormatWallClockAnchor(anchor),
                            "the wall-clock anchor", 0600);
}

}  // namespace signet::base
