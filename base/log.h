// signet's logging: spdlog behind one small header (as Envoy does), so the
// backend and the format (plain or JSON lines) are chosen in one place.
//
// Never log a PIN, a key, or claims: keys are named by kid, and request
// contents by their SHA-256.
#ifndef SIGNET_BASE_LOG_H_
#define SIGNET_BASE_LOG_H_

#include <spdlog/spdlog.h>

#include "absl/strings/string_view.h"

// absl::string_view is not std::string_view in bookworm's Abseil: teach fmt.
template <>
struct fmt::formatter<absl::string_view> : fmt::formatter<fmt::string_view> {
  template <typename FormatContext>
  auto format(absl::string_view s, FormatContext& ctx) const {
    return fmt::formatter<fmt::string_view>::format(
        fmt::string_view(s.data(), s.size()), ctx);
  }
};

namespace signet::log {

// Plain lines ("2026-11-23T16:42:50.123Z info signetd: ...") or one JSON
// object per line for log shippers. Call once, first thing in main().
void Init(bool json_lines);

}  // namespace signet::log

#define SIGNET_LOG_INFO(...) ::spdlog::info(__VA_ARGS__)
#define SIGNET_LOG_WARN(...) ::spdlog::warn(__VA_ARGS__)
#define SIGNET_LOG_ERROR(...) ::spdlog::error(__VA_ARGS__)

#endif  // SIGNET_BASE_LOG_H_
