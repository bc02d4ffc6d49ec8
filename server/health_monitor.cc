#include "server/health_monitor.h"

#include <utility>

#include "absl/strings/ascii.h"
#include "base/log.h"

namespace signet::server {

constexpr char kScopePrefix[] = "scope/";

HealthMonitor::HealthMonitor(std::vector<std::string> scopes, Setter set)
    : scopes_(std::move(scopes)), set_(std::move(set)) {}

namespace {

// A reason's message with each number as one '#' (a number runs on through
// digits, '.' and the unit letters of a duration, so "59s", "1m1s" and "2h"
// are all "#"): two samples of one reason (a stall 3 s old, then 61 s)
// read the same, so it is logged once, while another reason in the same
// part (the HSM stalled, then unreachable) reads differently and gets its
// own line.
std::string Shape(absl::string_view message) {
  std::string shape;
  shape.reserve(message.size());
  size_t i = 0;
  while (i < message.size()) {
    if (!absl::ascii_isdigit(message[i])) {
      shape += message[i++];
      continue;
    }
    shape += '#';
    while (i < message.size() && (absl::ascii_isdigit(message[i]) ||
                                  absl::string_view(".hmsun").find(
                                      message[i]) != absl::string_view::npos)) {
      ++i;
    }
  }
  return shape;
}

}  // namespace

absl::Status HealthMonitor::Overall(const ReplicaCondition& condition,
                                    std::string* cause) {
  const absl::Status& reason = !condition.hsm.ok()     ? condition.hsm
                               : !condition.audit.ok() ? condition.audit
                                                       : condition.listener;
  *cause = reason.ok() ? "" : Shape(reason.message());
  return reason;
}

void HealthMonitor::Update(const ReplicaCondition& condition) {
  std::string cause;
  const absl::Status overall = Overall(condition, &cause);
  // Also a new cause while NOT_SERVING (an eighth outside attack saw
  // "starting" as the last line while the audit log could not be written;
  // a ninth, "stalled" while the HSM had become unreachable).
  if (overall_ != overall.ok() || cause != overall_cause_) {
    if (overall.ok()) {
      SIGNET_LOG_INFO(
          "health: SERVING (HSM signing, audit log writable, "
          "listener accepting)");
    } else {
      SIGNET_LOG_WARN("health: NOT_SERVING: {}", overall.message());
    }
    overall_cause_ = cause;
  }
  if (overall_ != overall.ok()) {
    overall_ = overall.ok();
    set_("", overall.ok());
  }
  for (const std::string& scope : scopes_) {
    auto it = condition.scopes.find(scope);
    const absl::Status own =
        it == condition.scopes.end() ? absl::OkStatus() : it->second;
    const std::string reason = own.ok() ? "" : Shape(own.message());
    auto known = scope_reason_.find(scope);
    if (known == scope_reason_.end() || known->second != reason) {
      // Only the scope's own changes get a line; the overall one has its own.
      if (known != scope_reason_.end() || !own.ok()) {
        if (own.ok()) {
          SIGNET_LOG_INFO("health {}{}: the scope can sign again", kScopePrefix,
                          scope);
        } else {
          SIGNET_LOG_WARN("health {}{}: NOT_SERVING: {}", kScopePrefix, scope,
                          own.message());
        }
      }
      scope_reason_[scope] = reason;
    }
    const bool serving = overall.ok() && own.ok();
    auto entry = scope_serving_.find(scope);
    if (entry == scope_serving_.end() || entry->second != serving) {
      scope_serving_[scope] = serving;
      set_(kScopePrefix + scope, serving);
    }
  }
}

void HealthMonitor::SetAllNotServing(absl::string_view why) {
  if (overall_.value_or(true) || overall_cause_ != why) {
    SIGNET_LOG_INFO("health: NOT_SERVING: {}", why);
  }
  overall_cause_ = std::string(why);
  overall_ = false;
  set_("", false);
  for (const std::string& scope : scopes_) {
    scope_serving_[scope] = false;
    set_(kScopePrefix + scope, false);
  }
}

}  // namespace signet::server
