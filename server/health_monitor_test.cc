#include "server/health_monitor.h"

#include <map>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "base/log_capture.h"
#include "gtest/gtest.h"

namespace signet::server {
namespace {

// The health entries as the monitor set them, and every set call.
struct Entries {
  std::map<std::string, bool> now;
  std::vector<std::string> calls;
  HealthMonitor::Setter Sink() {
    return [this](const std::string& service, bool serving) {
      now[service] = serving;
      calls.push_back(service + (serving ? "=SERVING" : "=NOT_SERVING"));
    };
  }
};

ReplicaCondition AllGood() {
  ReplicaCondition c;
  c.scopes["a"] = absl::OkStatus();
  c.scopes["b"] = absl::OkStatus();
  return c;
}

TEST(HealthMonitorTest, ServingWhenEverythingWorks) {
  Entries entries;
  HealthMonitor monitor({"a", "b"}, entries.Sink());
  monitor.SetAllNotServing("starting");
  monitor.Update(AllGood());
  EXPECT_TRUE(monitor.serving());
  EXPECT_EQ(entries.now,
            (std::map<std::string, bool>{
                {"", true}, {"scope/a", true}, {"scope/b", true}}));
}

// The last health line says why the replica is NOT_SERVING now: after
// "starting", the audit log that cannot be written (an eighth outside
// attack read "starting" as the last line while signing was refused); one
// line per cause, not per sample.
TEST(HealthMonitorTest, ANewCauseWhileNotServingIsLogged) {
  log::LogCapture captured;
  Entries entries;
  HealthMonitor monitor({"a"}, entries.Sink());
  monitor.SetAllNotServing("starting: waiting for the HSM and keys");
  ReplicaCondition c = AllGood();
  c.audit = absl::UnavailableError("the audit log cannot be written: ENOSPC");
  monitor.Update(c);
  monitor.Update(c);
  c.hsm = absl::UnavailableError("the HSM is unreachable");
  monitor.Update(c);
  const std::string text = captured.Text();
  EXPECT_NE(text.find("health: NOT_SERVING: the audit log cannot be written"),
            std::string::npos)
      << text;
  EXPECT_EQ(text.find("cannot be written"), text.rfind("cannot be written"))
      << text;
  EXPECT_NE(text.find("health: NOT_SERVING: the HSM is unreachable"),
            std::string::npos)
      << text;
  EXPECT_FALSE(entries.now[""]);
}

// A ninth outside attack: the HSM went from stalled to unreachable (and a
// scope from one reason to another) with no line, so the last line named a
// reason that no longer held. A reason's numbers changing (how long the
// stall has lasted) is the same reason: no line for each sample.
TEST(HealthMonitorTest, AnotherReasonInTheSamePartIsLoggedButNotItsNumbers) {
  log::LogCapture captured;
  Entries entries;
  HealthMonitor monitor({"a"}, entries.Sink());
  ReplicaCondition c = AllGood();
  c.hsm = absl::UnavailableError(
      "the HSM is stalled: a probe call has not returned for 3s");
  c.scopes["a"] = absl::FailedPreconditionError("scope a: no key may sign");
  monitor.Update(c);
  for (const char* lasted : {"14s", "1m1s", "2m", "1h0.5s"}) {
    c.hsm = absl::UnavailableError(absl::StrCat(
        "the HSM is stalled: a probe call has not returned for ", lasted));
    monitor.Update(c);
  }
  c.hsm = absl::UnavailableError("the HSM is unreachable: CKR_DEVICE_ERROR");
  c.scopes["a"] = absl::FailedPreconditionError("scope a: its key is revoked");
  monitor.Update(c);
  const std::string text = captured.Text();
  EXPECT_NE(text.find("health: NOT_SERVING: the HSM is stalled"),
            std::string::npos)
      << text;
  EXPECT_EQ(text.find("has not returned for 3s"),
            text.rfind("has not returned for"))
      << text;
  EXPECT_NE(text.find("health: NOT_SERVING: the HSM is unreachable"),
            std::string::npos)
      << text;
  EXPECT_NE(text.find("scope/a: NOT_SERVING: scope a: no key may sign"),
            std::string::npos)
      << text;
  EXPECT_NE(text.find("scope/a: NOT_SERVING: scope a: its key is revoked"),
            std::string::npos)
      << text;
}

TEST(HealthMonitorTest, EachFaultTurnsTheReplicaNotServing) {
  for (int fault = 0; fault < 3; ++fault) {
    Entries entries;
    HealthMonitor monitor({"a", "b"}, entries.Sink());
    monitor.Update(AllGood());
    ReplicaCondition c = AllGood();
    absl::Status down = absl::UnavailableError("down");
    if (fault == 0) c.hsm = down;
    if (fault == 1) c.audit = down;
    if (fault == 2) c.listener = down;
    monitor.Update(c);
    EXPECT_FALSE(monitor.serving()) << fault;
    EXPECT_FALSE(entries.now[""]) << fault;
    EXPECT_FALSE(entries.now["scope/a"]) << fault;  // no scope signs then
    monitor.Update(AllGood());
    EXPECT_TRUE(entries.now[""]) << fault;
    EXPECT_TRUE(entries.now["scope/a"]) << fault;
  }
}

TEST(HealthMonitorTest, AScopeWithoutASigningKeyIsNotServingAlone) {
  Entries entries;
  HealthMonitor monitor({"a", "b"}, entries.Sink());
  monitor.Update(AllGood());
  ReplicaCondition c = AllGood();
  c.scopes["a"] = absl::FailedPreconditionError("no active key");
  monitor.Update(c);
  EXPECT_TRUE(entries.now[""]);
  EXPECT_FALSE(entries.now["scope/a"]);
  EXPECT_TRUE(entries.now["scope/b"]);
}

TEST(HealthMonitorTest, SetsAnEntryOnlyWhenItChanges) {
  Entries entries;
  HealthMonitor monitor({"a"}, entries.Sink());
  monitor.Update(AllGood());
  const size_t after_first = entries.calls.size();
  for (int i = 0; i < 5; ++i) monitor.Update(AllGood());
  EXPECT_EQ(entries.calls.size(), after_first);
}

}  // namespace
}  // namespace signet::server
