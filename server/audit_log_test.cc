#include "server/audit_log.h"

#include <fcntl.h>
#include <openssl/bn.h>
#include <openssl/ec.h>
#include <openssl/evp.h>
#include <openssl/x509.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/blocking_counter.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "base/log_capture.h"
#include "crypto/digest.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "hsm/algorithm.h"
#include "hsm/public_key.h"
#include "server/audit_verify.h"
#include "server/test_audit_files.h"
#include "server/test_audit_key.h"
#include "tests/testing/immutable.h"

namespace signet::server {
namespace {

using ::testing::AllOf;
using ::testing::HasSubstr;
using ::testing::SizeIs;
using ::testing::StartsWith;

using audit_testing::FileSizeLimit;
using audit_testing::HexSha256;
using audit_testing::Json;
using audit_testing::kZeroHash;
using audit_testing::Parse;
using audit_testing::ReadFile;
using audit_testing::ReadLines;
using audit_testing::TempDir;
using audit_testing::WriteFile;

using FakeClock = base::SimulatedClock;

absl::Time Start() {
  // 2026-11-23T16:42:50.123Z
  return absl::FromUnixMillis(1795452170123);
}

using audit_testing::TestAuditKey;

AuditEvent SignEvent(int i = 0) {
  AuditEvent e;
  e.event = "sign";
  e.caller = "uri:spiffe://example.org/idp/contoso";
  e.scope = "consumer-demo";
  e.kid = "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs";
  e.alg = "ES256";
  e.input_sha256 = HexSha256(absl::StrCat("claims ", i));
  e.result = "OK";
  return e;
}

AuditLogOptions Options(const std::string& path, FakeClock* clock = nullptr) {
  AuditLogOptions o;
  o.path = path;
  o.syslog = false;
  if (clock != nullptr) {
    o.clock = clock;
  }
  return o;
}

std::unique_ptr<AuditLog> MustOpen(AuditLogOptions options) {
  absl::StatusOr<std::unique_ptr<AuditLog>> log =
      AuditLog::Open(std::move(options));
  EXPECT_TRUE(log.ok()) << log.status();
  return log.ok() ? *std::move(log) : nullptr;
}

// Waits (bounded) until `log` can be written again: a recovery into a new
// segment.
void AwaitWritable(const AuditLog& log) {
  const absl::Time give_up = absl::Now() + absl::Seconds(40);
  while (!log.WriteStatus().ok() && absl::Now() < give_up) {
    absl::SleepFor(absl::Milliseconds(20));
  }
}

// A log at `path` that tries to recover every 50 ms, holding two lines.
std::unique_ptr<AuditLog> OpenWithTwoLines(const std::string& path) {
  AuditLogOptions o = Options(path);
  o.recovery_backoff = absl::Milliseconds(50);
  auto log = MustOpen(std::move(o));
  if (log == nullptr) return nullptr;
  EXPECT_TRUE(log->Append(SignEvent(1)).ok());
  EXPECT_TRUE(log->Append(SignEvent(2)).ok());
  return log;
}

// An audit log on /dev/full (`options.path`). That file is one for the
// whole machine, and an audit log locks its file: another test of this
// suite (ctest runs them in parallel) or another run on the machine may
// hold it for a moment. That is waited out, bounded.
std::unique_ptr<AuditLog> OpenOnFullDisk(const AuditLogOptions& options) {
  absl::StatusOr<std::unique_ptr<AuditLog>> log = AuditLog::Open(options);
  const absl::Time give_up = absl::Now() + absl::Seconds(30);
  while (absl::IsFailedPrecondition(log.status()) && absl::Now() < give_up) {
    absl::SleepFor(absl::Milliseconds(50));
    log = AuditLog::Open(options);
  }
  EXPECT_TRUE(log.ok()) << log.status();
  return log.ok() ? *std::move(log) : nullptr;
}

void ExpectChainVerifies(const std::string& path, uint64_t lines,
                         const hsm::PublicKey* key = nullptr) {
  absl::StatusOr<AuditVerifyResult> r = VerifyAuditLog(path, key);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->lines, lines);
}

TEST(AuditLogTest, LinesAreChainedAndSequenced) {
  TempDir dir;
  const std::string path = dir.File("audit.log");
  FakeClock clock(Start());
  auto log = MustOpen(Options(path, &clock));
  ASSERT_NE(log, nullptr);
  EXPECT_EQ(log->last_sequence(), 0u);
  for (int i = 0; i < 3; ++i) {
    ASSERT_TRUE(log->Append(SignEvent(i)).ok());
    EXPECT_EQ(log->last_sequence(), static_cast<uint64_t>(i + 1));
  }
  log.reset();

  std::vector<std::string> lines = ReadLines(path);
  ASSERT_THAT(lines, SizeIs(3));
  EXPECT_EQ(lines[0],
            absl::StrCat(
                R"({"seq":1,"time":"2026-11-23T16:42:50.123Z","event":"sign",)",
                R"("caller":"uri:spiffe://example.org/idp/contoso",)",
                R"("scope":"consumer-demo",)",
                R"("kid":"NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs",)",
                R"("alg":"ES256","input_sha256":")", HexSha256("claims 0"),
                R"(","result":"OK","prev":")", kZeroHash, R"("})"));
  for (size_t i = 1; i < lines.size(); ++i) {
    Json j = Parse(lines[i]);
    EXPECT_EQ(j["seq"], i + 1);
    EXPECT_EQ(j["prev"], HexSha256(lines[i - 1]));
  }
  EXPECT_EQ(ReadFile(path).back(), '\n');
  ExpectChainVerifies(path, 3);
}

TEST(AuditLogTest, OmitsEmptyMembersAndEscapesEverything) {
  TempDir dir;
  const std::string path = dir.File("audit.log");
  auto log = MustOpen(Options(path));
  ASSERT_NE(log, nullptr);
  AuditEvent e;
  e.event = "start";
  e.detail = "quote\" newline\n ctl\x01 e-acute\xc3\xa9 bad\xff end";
  ASSERT_TRUE(log->Append(e).ok());
  log.reset();

  std::vector<std::string> lines = ReadLines(path);
  ASSERT_THAT(lines, SizeIs(1));
  for (char c : lines[0]) {
    EXPECT_TRUE(c >= 0x20 && c < 0x7f) << lines[0];
  }
  Json j = Parse(lines[0]);
  ASSERT_FALSE(j.is_discarded()) << lines[0];
  EXPECT_FALSE(j.contains("caller"));
  EXPECT_FALSE(j.contains("scope"));
  EXPECT_EQ(j["detail"],
            "quote\" newline\n ctl\x01 e-acute\xc3\xa9 bad\xef\xbf\xbd end");
  ExpectChainVerifies(path, 1);
}

TEST(AuditLogTest, LongMembersAreCut) {
  TempDir dir;
  const std::string path = dir.File("audit.log");
  auto log = MustOpen(Options(path));
  ASSERT_NE(log, nullptr);
  AuditEvent e = SignEvent();
  e.event = "refuse";
  e.scope = std::string(100000, 's');
  e.detail = std::string(100000, '\x01');  // escapes to six bytes each
  ASSERT_TRUE(log->Append(e).ok());
  log.reset();

  std::vector<std::string> lines = ReadLines(path);
  ASSERT_THAT(lines, SizeIs(1));
  Json j = Parse(lines[0]);
  EXPECT_EQ(j["scope"], std::string(kMaxAuditFieldBytes, 's') + "...");
  EXPECT_LE(lines[0].size(), kMaxAuditLineBytes);
  ExpectChainVerifies(path, 1);
}

TEST(AuditLogTest, ReopeningContinuesTheSequenceAndTheChain) {
  TempDir dir;
  const std::string path = dir.File("audit.log");
  for (int round = 0; round < 3; ++round) {
    auto log = MustOpen(Options(path));
    ASSERT_NE(log, nullptr);
    EXPECT_EQ(log->last_sequence(), static_cast<uint64_t>(2 * round));
    ASSERT_TRUE(log->Append(SignEvent()).ok());
    ASSERT_TRUE(log->Append(SignEvent()).ok());
  }
  std::vector<std::string> lines = ReadLines(path);
  ASSERT_THAT(lines, SizeIs(6));
  EXPECT_EQ(Parse(lines[2])["prev"], HexSha256(lines[1]));
  EXPECT_EQ(Parse(lines[4])["seq"], 5);
  ExpectChainVerifies(path, 6);
}

TEST(AuditLogTest, CreatesTheFileWithMode0600) {
  TempDir dir;
  const std::string path = dir.File("audit.log");
  const mode_t old_umask = umask(0);
  auto log = MustOpen(Options(path));
  umask(old_umask);
  ASSERT_NE(log, nullptr);
  struct stat st;
  ASSERT_EQ(stat(path.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
}

TEST(AuditLogTest, RejectsEmptyAndReservedEventNames) {
  TempDir dir;
  const std::string path = dir.File("audit.log");
  auto log = MustOpen(Options(path));
  ASSERT_NE(log, nullptr);
  for (const char* name :
       {"", "checkpoint", "checkpoint_failed", "refusal_summary"}) {
    AuditEvent e = SignEvent();
    e.event = name;
    EXPECT_EQ(log->Append(e).code(), absl::StatusCode::kInvalidArgument)
        << name;
  }
  // A refusal with a reserved name is written as "refuse".
  AuditEvent e = SignEvent();
  e.event = "checkpoint";
  log->AppendRefusal(e);
  log.reset();
  std::vector<std::string> lines = ReadLines(path);
  ASSERT_THAT(lines, SizeIs(1));
  EXPECT_EQ(Parse(lines[0])["event"], "refuse");
}

TEST(AuditLogTest, RejectsBadOptions) {
  TempDir dir;
  TestAuditKey key;
  AuditLogOptions no_path = Options("");
  EXPECT_EQ(AuditLog::Open(no_path).status().code(),
            absl::StatusCode::kInvalidArgument);
  AuditLogOptions no_kid = Options(dir.File("a"));
  no_kid.sign_checkpoint = key.Signer();
  EXPECT_EQ(AuditLog::Open(no_kid).status().code(),
            absl::StatusCode::kInvalidArgument);
  AuditLogOptions zero_interval = Options(dir.File("a"));
  zero_interval.checkpoint_interval = absl::ZeroDuration();
  EXPECT_EQ(AuditLog::Open(zero_interval).status().code(),
            absl::StatusCode::kInvalidArgument);
  AuditLogOptions negative_delay = Options(dir.File("a"));
  negative_delay.group_commit_delay = absl::Microseconds(-1);
  EXPECT_EQ(AuditLog::Open(negative_delay).status().code(),
            absl::StatusCode::kInvalidArgument);
  AuditLogOptions negative_rate = Options(dir.File("a"));
  negative_rate.refusals_per_second = -1;
  EXPECT_EQ(AuditLog::Open(negative_rate).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(AuditLog::Open(Options(dir.File("no/such/dir/audit.log")))
                .status()
                .code(),
            absl::StatusCode::kNotFound);
}

TEST(AuditLogTest, ASecondWriterIsRefused) {
  TempDir dir;
  const std::string path = dir.File("audit.log");
  auto first = MustOpen(Options(path));
  ASSERT_NE(first, nullptr);
  absl::StatusOr<std::unique_ptr<AuditLog>> second =
      AuditLog::Open(Options(path));
  EXPECT_EQ(second.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(second.status().message()),
              HasSubstr("already open"));
  first.reset();
  EXPECT_TRUE(AuditLog::Open(Options(path)).ok());
}

TEST(AuditLogTest, ConcurrentAppendsShareFdatasyncs) {
  TempDir dir;
  const std::string path = dir.File("audit.log");
  auto log = MustOpen(Options(path));
  ASSERT_NE(log, nullptr);
  constexpr int kThreads = 16;
  constexpr int kPerThread = 100;
  std::atomic<int> failures{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < kPerThread; ++i) {
        AuditEvent e = SignEvent(t * kPerThread + i);
        e.caller = absl::StrCat("cn:tenant-", t);
        if (!log->Append(e).ok()) {
          ++failures;
        }
      }
    });
  }
  for (std::thread& t : threads) {
    t.join();
  }
  EXPECT_EQ(failures.load(), 0);
  constexpr uint64_t kLines = kThreads * kPerThread;
  EXPECT_EQ(log->last_sequence(), kLines);
  EXPECT_LT(log->syncs(), kLines) << "appends were not group-committed";
  log.reset();

  ExpectChainVerifies(path, kLines);
  // Every event is there exactly once.
  std::vector<std::string> lines = ReadLines(path);
  std::set<std::string> inputs;
  for (const std::string& line : lines) {
    inputs.insert(Parse(line)["input_sha256"].get<std::string>());
  }
  EXPECT_EQ(inputs.size(), kLines);
}

TEST(AuditLogTest, AppendAllWritesConsecutiveLines) {
  TempDir dir;
  const std::string path = dir.File("audit.log");
  auto log = MustOpen(Options(path));
  ASSERT_NE(log, nullptr);
  std::vector<AuditEvent> items;
  for (int i = 0; i < 5; ++i) {
    items.push_back(SignEvent(i));
    items.back().event = "sign_batch_item";
  }
  ASSERT_TRUE(log->AppendAll(items).ok());
  EXPECT_EQ(log->last_sequence(), 5u);
  EXPECT_EQ(log->syncs(), 1u);
  items[3].event = "checkpoint";
  EXPECT_EQ(log->AppendAll(items).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(log->AppendAll({}).ok());
  log.reset();
  std::vector<std::string> lines = ReadLines(path);
  ASSERT_THAT(lines, SizeIs(5));  // nothing of the refused call
  for (int i = 0; i < 5; ++i) {
    EXPECT_EQ(Parse(lines[i])["input_sha256"],
              HexSha256(absl::StrCat("claims ", i)));
  }
  ExpectChainVerifies(path, 5);
}

// AppendAllAsync: each callback runs once its lines are on disk (the file
// holds them and a sync has happened when it runs), in append order.
TEST(AuditLogTest, AsyncAppendsReportOnlyDurableLinesInOrder) {
  TempDir dir;
  const std::string path = dir.File("audit.log");
  auto log = MustOpen(Options(path));
  ASSERT_NE(log, nullptr);
  constexpr int kAppends = 200;
  absl::Mutex mu;
  std::vector<int> order;
  std::vector<std::string> problems;
  absl::BlockingCounter done(kAppends);
  for (int i = 0; i < kAppends; ++i) {
    AuditEvent event = SignEvent(i);
    log->AppendAllAsync(
        absl::MakeConstSpan(&event, 1),
        [&, i, sha = event.input_sha256](const absl::Status& status) {
          absl::MutexLock lock(&mu);
          if (!status.ok()) problems.push_back(status.ToString());
          // Durable: the line is in the file and at or below the durable
          // sequence when the callback runs.
          if (!absl::StrContains(ReadFile(path), sha)) {
            problems.push_back(absl::StrCat("line ", i, " not in the file"));
          }
          if (log->last_sequence() < static_cast<uint64_t>(i + 1)) {
            problems.push_back(absl::StrCat("line ", i, " not durable"));
          }
          order.push_back(i);
          done.DecrementCount();
        });
  }
  done.Wait();
  EXPECT_THAT(problems, ::testing::IsEmpty());
  std::vector<int> expected(kAppends);
  for (int i = 0; i < kAppends; ++i) expected[i] = i;
  EXPECT_EQ(order, expected);
  EXPECT_GE(log->syncs(), 1u);
  // Fewer syncs than lines: the async appends were group-committed.
  EXPECT_LT(log->syncs(), static_cast<uint64_t>(kAppends));
  log.reset();
  ExpectChainVerifies(path, kAppends);
}

// Group commit window (AuditLogOptions::group_commit_delay). The window is
// an hour here, so "held" and "not held" differ by an hour, not by a timing
// threshold.
AuditLogOptions HourLongWindow(const std::string& path) {
  AuditLogOptions o = Options(path);
  o.group_commit_delay = absl::Hours(1);
  return o;
}

// A notification the callback fires, with the status it got.
struct Durable {
  absl::Notification done;
  absl::Status status;
  AuditLog::DurableCallback Callback() {
    return [this](const absl::Status& s) {
      status = s;
      done.Notify();
    };
  }
};

TEST(AuditLogTest, ASyncWaitsForAnExpectedLineAndBothShareIt) {
  TempDir dir;
  const std::string path = dir.File("audit.log");
  auto log = MustOpen(HourLongWindow(path));
  ASSERT_NE(log, nullptr);
  AuditLog::ExpectedLine second_expected = log->ExpectLine();
  AuditEvent first = SignEvent(1);
  Durable first_durable;
  log->AppendAllAsync(absl::MakeConstSpan(&first, 1), first_durable.Callback());
  // Held for the expected line: not synced, not released.
  EXPECT_FALSE(
      first_durable.done.WaitForNotificationWithTimeout(absl::Seconds(0.2)));
  EXPECT_EQ(log->syncs(), 0u);

  AuditEvent second = SignEvent(2);
  Durable second_durable;
  log->AppendAllAsync(absl::MakeConstSpan(&second, 1),
                      second_durable.Callback(), std::move(second_expected));
  ASSERT_TRUE(
      first_durable.done.WaitForNotificationWithTimeout(absl::Seconds(30)));
  ASSERT_TRUE(
      second_durable.done.WaitForNotificationWithTimeout(absl::Seconds(30)));
  EXPECT_TRUE(first_durable.status.ok()) << first_durable.status;
  EXPECT_TRUE(second_durable.status.ok()) << second_durable.status;
  EXPECT_EQ(log->syncs(), 1u) << "the two lines did not share one sync";
  EXPECT_EQ(log->last_sequence(), 2u);
  log.reset();
  ExpectChainVerifies(path, 2);
}

TEST(AuditLogTest, ALoneLineIsNeverHeld) {
  TempDir dir;
  const std::string path = dir.File("audit.log");
  auto log = MustOpen(HourLongWindow(path));
  ASSERT_NE(log, nullptr);
  AuditEvent event = SignEvent(1);
  Durable durable;
  log->AppendAllAsync(absl::MakeConstSpan(&event, 1), durable.Callback());
  // Nothing is expected, so the window does not open (an hour otherwise).
  ASSERT_TRUE(durable.done.WaitForNotificationWithTimeout(absl::Seconds(30)));
  EXPECT_TRUE(durable.status.ok()) << durable.status;
  // Nor for a synchronous Append.
  EXPECT_TRUE(log->Append(SignEvent(2)).ok());
  EXPECT_EQ(log->last_sequence(), 2u);
}

TEST(AuditLogTest, AnExpectationGivenUpEndsTheWindow) {
  TempDir dir;
  const std::string path = dir.File("audit.log");
  auto log = MustOpen(HourLongWindow(path));
  ASSERT_NE(log, nullptr);
  auto expected = std::make_unique<AuditLog::ExpectedLine>(log->ExpectLine());
  AuditEvent event = SignEvent(1);
  Durable durable;
  log->AppendAllAsync(absl::MakeConstSpan(&event, 1), durable.Callback());
  EXPECT_FALSE(durable.done.WaitForNotificationWithTimeout(absl::Seconds(0.2)));
  // The signer failed and appends nothing: its line is no longer expected.
  expected.reset();
  ASSERT_TRUE(durable.done.WaitForNotificationWithTimeout(absl::Seconds(30)));
  EXPECT_TRUE(durable.status.ok()) << durable.status;
  // A moved-from expectation expects nothing.
  AuditLog::ExpectedLine a = log->ExpectLine();
  AuditLog::ExpectedLine b = std::move(a);
  b = AuditLog::ExpectedLine();
  EXPECT_TRUE(log->Append(SignEvent(2)).ok());
}

TEST(AuditLogTest, AnExplicitCheckpointIsNotHeld) {
  TempDir dir;
  TestAuditKey key;
  const std::string path = dir.File("audit.log");
  AuditLogOptions options = HourLongWindow(path);
  options.sign_checkpoint = key.Signer();
  options.checkpoint_kid = "audit-kid";
  auto log = MustOpen(options);
  ASSERT_NE(log, nullptr);
  AuditLog::ExpectedLine expected = log->ExpectLine();
  AuditEvent event = SignEvent(1);
  Durable durable;
  log->AppendAllAsync(absl::MakeConstSpan(&event, 1), durable.Callback());
  // Checkpoint() returns only once durable: it must not wait out the hour.
  EXPECT_TRUE(log->Checkpoint().ok());
  ASSERT_TRUE(durable.done.WaitForNotificationWithTimeout(absl::Seconds(30)));
  EXPECT_EQ(log->last_sequence(), 2u);  // the line and the checkpoint
}

TEST(AuditLogTest, AsyncAppendRefusesBadEventsAtOnceAndWritesNothing) {
  TempDir dir;
  const std::string path = dir.File("audit.log");
  auto log = MustOpen(Options(path));
  ASSERT_NE(log, nullptr);
  std::vector<AuditEvent> items = {SignEvent(1), SignEvent(2)};
  items[1].event = "checkpoint";
  absl::Status got = absl::UnknownError("callback did not run");
  log->AppendAllAsync(items, [&](const absl::Status& s) { got = s; });
  // Ran on this thread, before AppendAllAsync returned.
  EXPECT_EQ(got.code(), absl::StatusCode::kInvalidArgument) << got;
  got = absl::UnknownError("callback did not run");
  log->AppendAllAsync({}, [&](const absl::Status& s) { got = s; });
  EXPECT_TRUE(got.ok()) << got;
  log.reset();
  EXPECT_THAT(ReadLines(path), SizeIs(0));
}

TEST(AuditLogTest, AsyncAppendsFailClosedWhenTheDiskIsFull) {
  auto log = OpenOnFullDisk(Options("/dev/full"));
  ASSERT_NE(log, nullptr);
  constexpr int kAppends = 20;
  absl::BlockingCounter done(kAppends);
  std::atomic<int> unavailable{0};
  for (int i = 0; i < kAppends; ++i) {
    AuditEvent event = SignEvent(i);
    log->AppendAllAsync(absl::MakeConstSpan(&event, 1),
                        [&](const absl::Status& s) {
                          if (s.code() == absl::StatusCode::kUnavailable) {
                            ++unavailable;
                          }
                          done.DecrementCount();
                        });
  }
  done.Wait();
  EXPECT_EQ(unavailable.load(), kAppends);
  EXPECT_EQ(log->last_sequence(), 0u);
}

TEST(AuditLogTest, EveryAsyncCallbackHasRunWhenTheLogIsDestroyed) {
  TempDir dir;
  const std::string path = dir.File("audit.log");
  auto log = MustOpen(Options(path));
  ASSERT_NE(log, nullptr);
  std::atomic<int> ok{0};
  for (int i = 0; i < 50; ++i) {
    AuditEvent event = SignEvent(i);
    log->AppendAllAsync(absl::MakeConstSpan(&event, 1),
                        [&](const absl::Status& s) { ok += s.ok() ? 1 : 0; });
  }
  log.reset();
  EXPECT_EQ(ok.load(), 50);
  ExpectChainVerifies(path, 50);
}

TEST(AuditLogTest, FailsClosedWhenTheDiskIsFull) {
  auto log = OpenOnFullDisk(Options("/dev/full"));
  ASSERT_NE(log, nullptr);
  absl::Status first = log->Append(SignEvent());
  EXPECT_EQ(first.code(), absl::StatusCode::kUnavailable) << first;
  EXPECT_THAT(std::string(first.message()),
              HasSubstr("No space left on device"));
  for (int i = 0; i < 3; ++i) {
    EXPECT_EQ(log->Append(SignEvent()).code(), absl::StatusCode::kUnavailable);
  }
  log->AppendRefusal(SignEvent());  // dropped, no crash
  EXPECT_EQ(log->last_sequence(), 0u);
}

TEST(AuditLogTest, FailsClosedWithACheckpointSignerToo) {
  TestAuditKey key;
  AuditLogOptions o = Options("/dev/full");
  o.sign_checkpoint = key.Signer();
  o.checkpoint_kid = "audit-kid";
  auto log = OpenOnFullDisk(std::move(o));
  ASSERT_NE(log, nullptr);
  EXPECT_EQ(log->Append(SignEvent()).code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(log->Checkpoint().code(), absl::StatusCode::kUnavailable);
}

TEST(AuditLogTest, FailsClosedWhenTheFileStopsGrowingAndStaysVerifiable) {
  TempDir dir;
  const std::string path = dir.File("audit.log");
  AuditLogOptions o = Options(path);
  o.recovery_backoff = absl::ZeroDuration();  // no new segment: stays broken
  auto log = MustOpen(std::move(o));
  ASSERT_NE(log, nullptr);
  ASSERT_TRUE(log->Append(SignEvent(1)).ok());
  ASSERT_TRUE(log->Append(SignEvent(2)).ok());
  const size_t good_size = ReadFile(path).size();
  {
    FileSizeLimit limit(good_size + 100);  // room for part of one line
    absl::Status failed = log->Append(SignEvent(3));
    EXPECT_EQ(failed.code(), absl::StatusCode::kUnavailable) << failed;
    EXPECT_THAT(std::string(failed.message()),
                HasSubstr("partial write was removed"));
  }
  // Once broken, the log stays broken even though the disk has room again.
  EXPECT_EQ(log->Append(SignEvent(4)).code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(log->last_sequence(), 2u);
  log.reset();

  EXPECT_EQ(ReadFile(path).size(), good_size);
  ExpectChainVerifies(path, 2);
  // A restart continues the chain.
  log = MustOpen(Options(path));
  ASSERT_NE(log, nullptr);
  ASSERT_TRUE(log->Append(SignEvent(5)).ok());
  log.reset();
  ExpectChainVerifies(path, 3);
}

// The disk fills up (here: the file may not grow), and then has room again:
// signing stops (UNAVAILABLE) and resumes without a restart. The failed
// file is never written again; a new segment continues the chain from its
// last durable line, and the whole log verifies across the gap.
TEST(AuditLogTest, RecoversIntoANewSegmentOnceTheDiskHasRoomAgain) {
  TempDir dir;
  const std::string path = dir.File("audit.log");
  auto log = OpenWithTwoLines(path);
  ASSERT_NE(log, nullptr);
  const std::string durable = ReadFile(path);
  {
    FileSizeLimit limit(durable.size() + 100);
    EXPECT_EQ(log->Append(SignEvent(3)).code(), absl::StatusCode::kUnavailable);
    // No room even for a new segment's first line: it stays broken.
    FileSizeLimit full(10);
    absl::SleepFor(absl::Milliseconds(400));
    EXPECT_FALSE(log->WriteStatus().ok());
    EXPECT_EQ(log->Append(SignEvent(4)).code(), absl::StatusCode::kUnavailable);
    // The calls refused meanwhile cannot be written one by one.
    for (int i = 0; i < 3; ++i) {
      AuditEvent refusal;
      refusal.event = "refuse";
      refusal.caller = "uri:spiffe://example/tenant";
      refusal.result = "UNAVAILABLE";
      log->AppendRefusal(refusal);
    }
  }
  // Room again: within the backoff (at most 4 s), signing resumes.
  AwaitWritable(*log);
  ASSERT_TRUE(log->WriteStatus().ok()) << log->WriteStatus();
  ASSERT_TRUE(log->Append(SignEvent(5)).ok());
  EXPECT_EQ(log->segments_opened(), 1u);
  log.reset();

  // The failed file, closed as it was, and the new segment after it.
  const std::string closed = ClosedSegmentPath(path, 1);
  EXPECT_EQ(ReadFile(closed), durable);
  std::vector<std::string> lines = ReadLines(path);
  ASSERT_THAT(lines, SizeIs(3));
  Json header = Parse(lines[0]);
  EXPECT_EQ(header["event"], "segment");
  EXPECT_EQ(header["seq"], 3);
  EXPECT_THAT(header["detail"].get<std::string>(),
              AllOf(HasSubstr("audit.log.00000000000000000001"),
                    HasSubstr("writing the previous segment failed")));
  // The outage's refusals, counted in the segment that recovered.
  Json counted = Parse(lines[1]);
  EXPECT_EQ(counted["event"], "refusal_summary");
  EXPECT_EQ(counted["count"], 3);
  EXPECT_THAT(counted["detail"].get<std::string>(),
              HasSubstr("while the audit log could not be written"));
  absl::StatusOr<AuditVerifyResult> r = VerifyAuditLog(path, nullptr);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->lines, 5u);
  EXPECT_EQ(r->segments, 2u);
  EXPECT_EQ(r->superseded_lines, 0u);
}

using ::signet::testing::SetImmutable;

// `log`'s WriteStatus once its being OK is `writable`, or after 10 s.
absl::Status AwaitWriteStatus(const AuditLog& log, bool writable) {
  const absl::Time give_up = absl::Now() + absl::Seconds(10);
  while (log.WriteStatus().ok() != writable && absl::Now() < give_up) {
    absl::SleepFor(absl::Milliseconds(10));
  }
  return log.WriteStatus();
}

// An idle log whose segment can no longer take lines (here: immutable)
// says so within its write check's interval, without a line being
// written, and says it can again once the file can change; nothing broke,
// so no new segment starts and the chain goes on in the same file (a
// fourteenth outside attack: an idle replica's health said SERVING for
// minutes on an immutable log).
TEST(AuditLogTest, AnIdleLogNoticesItsSegmentCannotTakeLines) {
  TempDir dir;
  const std::string path = dir.File("audit.log");
  AuditLogOptions o = Options(path);
  o.write_check_interval = absl::Milliseconds(50);
  auto log = MustOpen(std::move(o));
  ASSERT_NE(log, nullptr);
  ASSERT_TRUE(log->Append(SignEvent(1)).ok());
  EXPECT_TRUE(log->WriteStatus().ok());
  if (absl::Status set = SetImmutable(path, true); !set.ok()) {
    GTEST_SKIP() << "cannot make the log immutable here: " << set;
  }
  const absl::Status unwritable = AwaitWriteStatus(*log, false);
  ASSERT_TRUE(SetImmutable(path, false).ok());
  EXPECT_EQ(unwritable.code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(std::string(unwritable.message()),
              AllOf(HasSubstr("the current segment cannot take another line"),
                    HasSubstr("Operation not permitted")));
  EXPECT_TRUE(AwaitWriteStatus(*log, true).ok());
  ASSERT_TRUE(log->Append(SignEvent(2)).ok());
  EXPECT_EQ(log->segments_opened(), 0u);
  log.reset();
  ExpectChainVerifies(path, 2);
}

// A disk that stops answering (a frozen file system: the write blocks,
// nothing fails) makes WriteStatus UNAVAILABLE once the writer's call has
// waited past disk_stall_after, saying which call; once the disk answers,
// the line is written and the log is writable again (a fifteenth outside
// attack: health said SERVING while every signature waited).
TEST(AuditLogTest, AStalledDiskIsReportedWhileTheWriterWaitsOnIt) {
  TempDir dir;
  const std::string path = dir.File("audit.log");
  AuditLogOptions o = Options(path);
  o.disk_stall_after = absl::Milliseconds(100);
  auto stalled = std::make_shared<absl::Notification>();
  auto disk_answers = std::make_shared<absl::Notification>();
  std::atomic<bool> stall{false};
  o.before_write = [&stall, stalled, disk_answers] {
    if (!stall.load()) return;
    stalled->Notify();
    disk_answers->WaitForNotification();
  };
  auto log = MustOpen(std::move(o));
  ASSERT_NE(log, nullptr);
  ASSERT_TRUE(log->Append(SignEvent(1)).ok());
  stall = true;
  std::thread appender([&log] { EXPECT_TRUE(log->Append(SignEvent(2)).ok()); });
  stalled->WaitForNotification();
  const absl::Status waiting = AwaitWriteStatus(*log, false);
  disk_answers->Notify();
  appender.join();
  EXPECT_EQ(waiting.code(), absl::StatusCode::kUnavailable) << waiting;
  EXPECT_THAT(std::string(waiting.message()),
              AllOf(HasSubstr("the audit log's disk has not answered for"),
                    HasSubstr("writing lines and syncing them")));
  EXPECT_TRUE(AwaitWriteStatus(*log, true).ok());
  log.reset();
  ExpectChainVerifies(path, 2);
}

// The write check keeps its pace on the monotonic clock: a wall clock set
// back an hour (here the log's simulated clock, which does not move on its
// own) does not put it off by the hour.
TEST(AuditLogTest, AWallClockSetBackDoesNotPutOffTheWriteCheck) {
  TempDir dir;
  const std::string path = dir.File("audit.log");
  FakeClock clock(absl::FromUnixSeconds(1'800'000'000));
  AuditLogOptions o = Options(path, &clock);
  o.write_check_interval = absl::Milliseconds(50);
  auto log = MustOpen(std::move(o));
  ASSERT_NE(log, nullptr);
  ASSERT_TRUE(log->Append(SignEvent(1)).ok());
  absl::SleepFor(absl::Milliseconds(200));  // a few checks on this clock
  clock.StepWall(absl::Hours(-1));
  if (absl::Status set = SetImmutable(path, true); !set.ok()) {
    GTEST_SKIP() << "cannot make the log immutable here: " << set;
  }
  const absl::Status unwritable = AwaitWriteStatus(*log, false);
  ASSERT_TRUE(SetImmutable(path, false).ok());
  EXPECT_EQ(unwritable.code(), absl::StatusCode::kUnavailable) << unwritable;
}

// The current segment deleted (or moved away) while signetd runs: the
// open file still took lines, health said writable, and the signatures of
// those lines were delivered with no audit line anywhere on disk (fifth
// outside attack). Now the first write after it fails closed, and the
// recovery writes the segment again, from the open file, at its closed
// path, so the whole log still verifies.
TEST(AuditLogTest, ASegmentDeletedOrMovedAwayFailsClosedAndIsWrittenAgain) {
  for (const bool moved : {false, true}) {
    SCOPED_TRACE(moved ? "moved away" : "deleted");
    TempDir dir;
    const std::string path = dir.File("audit.log");
    auto log = OpenWithTwoLines(path);
    ASSERT_NE(log, nullptr);
    const std::string durable = ReadFile(path);
    if (moved) {
      ASSERT_EQ(rename(path.c_str(), dir.File("elsewhere").c_str()), 0);
    } else {
      ASSERT_EQ(unlink(path.c_str()), 0);
    }
    absl::Status refused = log->Append(SignEvent(3));
    EXPECT_EQ(refused.code(), absl::StatusCode::kUnavailable);
    EXPECT_THAT(std::string(refused.message()),
                HasSubstr(moved ? "moved away" : "deleted"));
    AwaitWritable(*log);
    ASSERT_TRUE(log->WriteStatus().ok()) << log->WriteStatus();
    ASSERT_TRUE(log->Append(SignEvent(4)).ok());
    log.reset();
    // The two durable lines, at the closed path; not the refused third.
    EXPECT_EQ(ReadFile(ClosedSegmentPath(path, 1)), durable);
    std::vector<std::string> lines = ReadLines(path);
    ASSERT_FALSE(lines.empty());
    EXPECT_THAT(Parse(lines[0])["detail"].get<std::string>(),
                HasSubstr(moved ? "moved away" : "deleted"));
    absl::StatusOr<AuditVerifyResult> r = VerifyAuditLog(path, nullptr);
    ASSERT_TRUE(r.ok()) << r.status();
    EXPECT_EQ(r->segments, 2u);
  }
}

// A segment cut short in place while signetd writes it (truncate(1), a hand
// edit) went unnoticed: the next lines were appended after the cut, and
// only an audit-verify run long after showed the gap. Now the next write
// sees the segment shorter than what was made durable: that write is
// refused UNAVAILABLE (fail closed) and removed again, the segment is
// closed as it was left, and the next segment's first line says what
// happened.
TEST(AuditLogTest, ASegmentCutShortInPlaceIsClosedAndSaidSo) {
  TempDir dir;
  const std::string path = dir.File("audit.log");
  auto log = OpenWithTwoLines(path);
  ASSERT_NE(log, nullptr);
  const std::vector<std::string> durable = ReadLines(path);
  ASSERT_EQ(durable.size(), 2u);
  ASSERT_EQ(truncate(path.c_str(), static_cast<off_t>(durable[0].size() + 1)),
            0);
  absl::Status refused = log->Append(SignEvent(3));
  EXPECT_EQ(refused.code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(std::string(refused.message()),
              AllOf(HasSubstr("cut short outside signet"),
                    HasSubstr("the refused batch was removed again")));
  AwaitWritable(*log);
  ASSERT_TRUE(log->WriteStatus().ok()) << log->WriteStatus();
  ASSERT_TRUE(log->Append(SignEvent(4)).ok());
  log.reset();
  // The closed segment is what was left: the first line alone.
  EXPECT_EQ(ReadFile(ClosedSegmentPath(path, 1)), durable[0] + "\n");
  std::vector<std::string> lines = ReadLines(path);
  ASSERT_FALSE(lines.empty());
  EXPECT_THAT(Parse(lines[0])["detail"].get<std::string>(),
              HasSubstr("cut short outside signet"));
}

// A rollover that cannot finish (here: after the segment was moved away,
// something else sits at the path, so the next segment cannot be made)
// leaves the rollover marker; signetd stopped in that state continues the
// chain at its next start, the segment's lines kept at their closed path.
TEST(AuditLogTest, AStopWhileARolloverCannotFinishIsFinishedAtTheNextStart) {
  TempDir dir;
  const std::string path = dir.File("audit.log");
  auto log = OpenWithTwoLines(path);
  ASSERT_NE(log, nullptr);
  ASSERT_EQ(rename(path.c_str(), dir.File("elsewhere").c_str()), 0);
  ASSERT_EQ(mkdir(path.c_str(), 0700), 0);
  EXPECT_FALSE(log->Append(SignEvent(3)).ok());
  // The recovery tries (and fails) at least once before the stop.
  const absl::Time give_up = absl::Now() + absl::Seconds(30);
  struct stat st;
  while (stat(ClosedSegmentPath(path, 1).c_str(), &st) != 0 &&
         absl::Now() < give_up) {
    absl::SleepFor(absl::Milliseconds(10));
  }
  EXPECT_FALSE(log->WriteStatus().ok());
  log.reset();
  EXPECT_EQ(stat(RolloverMarkerPath(path).c_str(), &st), 0);
  ASSERT_EQ(rmdir(path.c_str()), 0);

  auto again = MustOpen(Options(path));
  ASSERT_NE(again, nullptr);
  ASSERT_TRUE(again->Append(SignEvent(4)).ok());
  again.reset();
  EXPECT_THAT(Parse(ReadLines(path)[0])["detail"].get<std::string>(),
              HasSubstr("started with no current segment"));
  absl::StatusOr<AuditVerifyResult> r = VerifyAuditLog(path, nullptr);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->segments, 2u);
  EXPECT_NE(stat(RolloverMarkerPath(path).c_str(), &st), 0);
}

// Segments roll over at the size limit and when asked (SIGHUP); a closed
// segment is never written again, and the segments make one chain.
TEST(AuditLogTest, RollsOverAtTheSizeLimitAndWhenAskedKeepingOneChain) {
  TempDir dir;
  const std::string path = dir.File("audit.log");
  AuditLogOptions o = Options(path);
  o.segment_max_bytes = 1200;  // three or four lines
  auto log = MustOpen(std::move(o));
  ASSERT_NE(log, nullptr);
  for (int i = 0; i < 20; ++i) {
    ASSERT_TRUE(log->Append(SignEvent(i)).ok());
  }
  const uint64_t by_size = log->segments_opened();
  EXPECT_GE(by_size, 4u);
  log->RollOver();
  ASSERT_TRUE(log->Append(SignEvent(20)).ok());
  EXPECT_EQ(log->segments_opened(), by_size + 1);
  const uint64_t last = log->last_sequence();
  log.reset();

  absl::StatusOr<AuditVerifyResult> r = VerifyAuditLog(path, nullptr);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->segments, by_size + 2);
  EXPECT_EQ(r->first_seq, 1u);
  EXPECT_EQ(r->last_seq, last);
  EXPECT_EQ(r->lines, 21u + by_size + 1);  // the events and the headers
  EXPECT_THAT(Parse(ReadLines(path)[0])["detail"].get<std::string>(),
              HasSubstr("a new segment was asked for"));
  // The directory alone names the same log.
  absl::StatusOr<AuditVerifyResult> by_dir =
      VerifyAuditLog(dir.path(), nullptr);
  ASSERT_TRUE(by_dir.ok()) << by_dir.status();
  EXPECT_EQ(by_dir->last_seq, last);
}

// With a checkpoint signer, a segment closed by a planned rollover (size
// limit, SIGHUP) ends with a checkpoint over its lines, so a segment
// shipped away is covered by a signature of its own.
TEST(AuditLogTest, APlannedRolloverClosesTheSegmentWithACheckpoint) {
  TempDir dir;
  const std::string path = dir.File("audit.log");
  TestAuditKey key;
  AuditLogOptions o = Options(path);
  o.sign_checkpoint = key.Signer();
  o.checkpoint_kid = "audit-kid";
  o.segment_max_bytes = 1200;  // three or four lines
  auto log = MustOpen(std::move(o));
  ASSERT_NE(log, nullptr);
  for (int i = 0; i < 20; ++i) {
    ASSERT_TRUE(log->Append(SignEvent(i)).ok());
  }
  log->RollOver();
  ASSERT_TRUE(log->Append(SignEvent(20)).ok());
  log.reset();
  std::vector<std::string> closed;
  for (const auto& entry : std::filesystem::directory_iterator(dir.path())) {
    if (entry.path().filename().string() != "audit.log") {
      closed.push_back(entry.path().string());
    }
  }
  ASSERT_GE(closed.size(), 4u);
  for (const std::string& segment : closed) {
    const std::vector<std::string> lines = ReadLines(segment);
    ASSERT_FALSE(lines.empty()) << segment;
    EXPECT_EQ(Parse(lines.back())["event"], "checkpoint") << segment;
  }
  hsm::PublicKey public_key = key.PublicKey();
  AuditVerifyOptions options;
  options.require_covered = true;
  absl::StatusOr<AuditVerifyResult> r =
      VerifyAuditLog(path, &public_key, "", options);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->segments, closed.size() + 1);
}

// A SIGHUP's rollover that fails before it can close the segment (here the
// rollover marker cannot be made) is tried again, and closes the segment
// with a checkpoint over the lines written since its first try (a tenth
// outside attack: the retry was dropped, and the next rollover left the
// segment's last lines under no checkpoint).
TEST(AuditLogTest, AFailedRolloverIsRetriedAndStillClosesWithACheckpoint) {
  TempDir dir;
  const std::string path = dir.File("audit.log");
  TestAuditKey key;
  FakeClock clock(Start());
  AuditLogOptions o = Options(path, &clock);
  o.sign_checkpoint = key.Signer();
  o.checkpoint_kid = "audit-kid";
  auto log = MustOpen(std::move(o));
  ASSERT_NE(log, nullptr);
  ASSERT_TRUE(log->Append(SignEvent(1)).ok());
  ASSERT_EQ(mkdir(RolloverMarkerPath(path).c_str(), 0700), 0);
  const uint64_t segments = log->segments_opened();
  log::LogCapture captured;
  log->RollOver();
  ASSERT_TRUE(log->Append(SignEvent(2)).ok());
  const absl::Time give_up = absl::Now() + absl::Seconds(30);
  while (!absl::StrContains(captured.Text(), "could not be rolled over") &&
         absl::Now() < give_up) {
    absl::SleepFor(absl::Milliseconds(10));
  }
  ASSERT_THAT(captured.Text(), HasSubstr("could not be rolled over"));
  ASSERT_EQ(rmdir(RolloverMarkerPath(path).c_str()), 0);
  ASSERT_TRUE(log->Append(SignEvent(3)).ok());
  EXPECT_EQ(log->segments_opened(), segments);  // its retry time is not yet
  clock.Advance(absl::Seconds(11));
  ASSERT_TRUE(log->Append(SignEvent(4)).ok());
  while (log->segments_opened() == segments && absl::Now() < give_up) {
    absl::SleepFor(absl::Milliseconds(10));
  }
  EXPECT_EQ(log->segments_opened(), segments + 1);
  log.reset();
  // The closed segment ends with a checkpoint over all its lines.
  const std::vector<std::string> closed = ReadLines(ClosedSegmentPath(path, 1));
  ASSERT_GE(closed.size(), 2u);
  EXPECT_EQ(Parse(closed.back())["event"], "checkpoint");
  EXPECT_EQ(Parse(closed.back())["count"], closed.size() - 1);
  hsm::PublicKey public_key = key.PublicKey();
  AuditVerifyOptions options;
  options.require_covered = true;
  absl::StatusOr<AuditVerifyResult> r =
      VerifyAuditLog(path, &public_key, "", options);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->segments, 2u);
}

// The closed segments and no current one: what a stop between closing one
// segment and opening the next leaves (with the rollover marker), and what
// deleting the current segment while signetd is down leaves (without it).
class MissingCurrentSegmentTest : public ::testing::Test {
 protected:
  void SetUp() override {
    AuditLogOptions o = Options(path_);
    o.segment_max_bytes = 1200;
    auto log = MustOpen(std::move(o));
    ASSERT_NE(log, nullptr);
    for (int i = 0; i < 8; ++i) ASSERT_TRUE(log->Append(SignEvent(i)).ok());
    log.reset();
    // Rollovers that finished leave no marker.
    struct stat st;
    ASSERT_NE(stat(RolloverMarkerPath(path_).c_str(), &st), 0);
    ASSERT_EQ(unlink(path_.c_str()), 0);
  }

  // Opens the log again, appends one line, and returns the first line of
  // the new current segment, after checking the whole chain verifies.
  std::string ContinueAndReadHeader(AuditLogOptions o) {
    {
      auto log = MustOpen(std::move(o));
      EXPECT_NE(log, nullptr);
      if (log == nullptr) return "";
      EXPECT_TRUE(log->Append(SignEvent(9)).ok());
    }
    std::vector<std::string> lines = ReadLines(path_);
    EXPECT_THAT(lines, SizeIs(2));
    if (lines.empty()) return "";
    EXPECT_EQ(Parse(lines[0])["event"], "segment");
    absl::StatusOr<AuditVerifyResult> r = VerifyAuditLog(path_, nullptr);
    EXPECT_TRUE(r.ok()) << r.status();
    if (r.ok()) {
      EXPECT_EQ(r->first_seq, 1u);
    }
    struct stat st;
    EXPECT_NE(stat(RolloverMarkerPath(path_).c_str(), &st), 0)
        << "the marker outlived the rollover";
    return Parse(lines[0])["detail"].get<std::string>();
  }

  // Open refuses (FAILED_PRECONDITION saying `says`) until an operator
  // accepts the missing segment; then the chain continues and the new
  // segment's first line says so.
  void ExpectRefusedUntilAccepted(absl::string_view says) {
    absl::StatusOr<std::unique_ptr<AuditLog>> log =
        AuditLog::Open(Options(path_));
    ASSERT_FALSE(log.ok());
    EXPECT_EQ(log.status().code(), absl::StatusCode::kFailedPrecondition)
        << log.status();
    EXPECT_THAT(
        std::string(log.status().message()),
        AllOf(HasSubstr(says), HasSubstr("--audit_accept_missing_segment"),
              HasSubstr("--expected_checkpoint")));
    struct stat st;
    EXPECT_NE(stat(path_.c_str(), &st), 0) << "nothing is created";
    AuditLogOptions accepting = Options(path_);
    accepting.accept_missing_segment = true;
    EXPECT_THAT(ContinueAndReadHeader(std::move(accepting)),
                HasSubstr("the operator accepted it"));
  }

  // The path of the closed segment with the highest first line.
  std::string LatestClosed() const {
    std::string latest;
    for (const auto& entry : std::filesystem::directory_iterator(dir_.path())) {
      const std::string name = entry.path().string();
      if (name.size() == path_.size() + 21 && name > latest) latest = name;
    }
    EXPECT_FALSE(latest.empty());
    return latest;
  }

  TempDir dir_;
  const std::string path_ = dir_.File("audit.log");
};

TEST_F(MissingCurrentSegmentTest, AStopMidRolloverIsFinishedAtTheNextStart) {
  WriteFile(RolloverMarkerPath(path_), LatestClosed() + "\n");
  EXPECT_THAT(ContinueAndReadHeader(Options(path_)),
              HasSubstr("started with no current segment"));
}

// The stop came just after the next segment was created, before its first
// line: an empty file at the path, and the marker.
TEST_F(MissingCurrentSegmentTest, AnEmptySegmentLeftByARolloverIsReplaced) {
  WriteFile(RolloverMarkerPath(path_), LatestClosed() + "\n");
  WriteFile(path_, "");
  EXPECT_THAT(ContinueAndReadHeader(Options(path_)),
              HasSubstr("started with no current segment"));
}

// The stop came while the next segment's first line was being written:
// half a line at the path, and the marker. The half line is kept aside.
TEST_F(MissingCurrentSegmentTest, AHalfWrittenFirstLineIsMovedAside) {
  WriteFile(RolloverMarkerPath(path_), LatestClosed() + "\n");
  WriteFile(path_, "{\"seq\":9,\"event\":\"segm");
  EXPECT_THAT(ContinueAndReadHeader(Options(path_)),
              HasSubstr("unfinished first line was moved to"));
  EXPECT_EQ(ReadFile(path_ + ".torn-rollover"), "{\"seq\":9,\"event\":\"segm");
}

// A marker that names no segment, or one that is not the latest closed
// one, passes no deleted segment off as a rollover (sixth outside attack:
// an empty marker planted beside a deleted current segment).
TEST_F(MissingCurrentSegmentTest, APlantedMarkerPassesNoDeletedSegmentOff) {
  for (const std::string& planted :
       {std::string(""), std::string("audit.log.00000000000000000001\n")}) {
    SCOPED_TRACE(planted);
    WriteFile(RolloverMarkerPath(path_), planted);
    absl::StatusOr<std::unique_ptr<AuditLog>> log =
        AuditLog::Open(Options(path_));
    ASSERT_FALSE(log.ok());
    EXPECT_EQ(log.status().code(), absl::StatusCode::kFailedPrecondition)
        << log.status();
  }
}

TEST_F(MissingCurrentSegmentTest, ADeletedCurrentSegmentStopsTheStart) {
  ExpectRefusedUntilAccepted("the current segment is missing");
}

// A current segment emptied while signetd was down (truncated to zero
// bytes) restarted the chain at line 1 silently; it is a missing segment.
TEST_F(MissingCurrentSegmentTest, AnEmptiedCurrentSegmentStopsTheStart) {
  WriteFile(path_, "");
  ExpectRefusedUntilAccepted("the current segment is missing (or was emptied)");
}

TEST(AuditLogTest, SaysWhetherItStartedANewChain) {
  TempDir dir;
  const std::string path = dir.File("audit.log");
  {
    auto log = MustOpen(Options(path));
    ASSERT_NE(log, nullptr);
    EXPECT_TRUE(log->started_new_chain());
    EXPECT_FALSE(log->found_empty_segment());
    ASSERT_TRUE(log->Append(SignEvent(1)).ok());
  }
  {
    auto again = MustOpen(Options(path));
    ASSERT_NE(again, nullptr);
    EXPECT_FALSE(again->started_new_chain());
  }
  // An empty file left by a start that stopped before its first line.
  const std::string empty = dir.File("empty.log");
  WriteFile(empty, "");
  auto log = MustOpen(Options(empty));
  ASSERT_NE(log, nullptr);
  EXPECT_TRUE(log->started_new_chain());
  EXPECT_TRUE(log->found_empty_segment());
}

// Segments removed from the middle, reordered, or replaced are found, each
// with its message; a run of segments without the first ones verifies from
// where it starts.
TEST(AuditLogTest, MissingReorderedOrReplacedSegmentsAreFound) {
  TempDir dir;
  const std::string path = dir.File("audit.log");
  {
    AuditLogOptions o = Options(path);
    o.segment_max_bytes = 1200;
    auto log = MustOpen(std::move(o));
    ASSERT_NE(log, nullptr);
    for (int i = 0; i < 20; ++i) ASSERT_TRUE(log->Append(SignEvent(i)).ok());
  }
  std::vector<std::string> closed;
  for (const auto& entry : std::filesystem::directory_iterator(dir.path())) {
    if (entry.path().string() != path) closed.push_back(entry.path().string());
  }
  std::sort(closed.begin(), closed.end());
  ASSERT_GE(closed.size(), 4u);
  auto expect_broken = [&](absl::string_view message) {
    absl::StatusOr<AuditVerifyResult> r = VerifyAuditLog(path, nullptr);
    ASSERT_FALSE(r.ok());
    EXPECT_EQ(r.status().code(), absl::StatusCode::kDataLoss) << r.status();
    EXPECT_THAT(std::string(r.status().message()), HasSubstr(message));
  };
  const std::string second = ReadFile(closed[1]);
  const std::string third = ReadFile(closed[2]);
  {
    SCOPED_TRACE("a segment removed from the middle");
    ASSERT_EQ(unlink(closed[1].c_str()), 0);
    expect_broken("are missing between");
    WriteFile(closed[1], second);
  }
  {
    SCOPED_TRACE("two segments swapped");
    WriteFile(closed[1], third);
    WriteFile(closed[2], second);
    expect_broken("are missing between");
    WriteFile(closed[1], second);
    WriteFile(closed[2], third);
  }
  {
    SCOPED_TRACE("a segment's header changed");
    std::vector<std::string> lines = absl::StrSplit(third, '\n');
    Json header = Parse(lines[0]);
    header["prev"] = std::string(64, 'a');
    lines[0] = header.dump();
    WriteFile(closed[2], absl::StrJoin(lines, "\n"));
    expect_broken("prev does not match the hash of line");
    WriteFile(closed[2], third);
  }
  {
    SCOPED_TRACE("the current segment deleted: cut back to a closed one");
    const std::string current = ReadFile(path);
    ASSERT_EQ(unlink(path.c_str()), 0);
    expect_broken("the current segment does not exist");
    // The closed segments alone, by their directory.
    EXPECT_TRUE(VerifyAuditLog(dir.path(), nullptr).ok());
    WriteFile(path, current);
  }
  {
    SCOPED_TRACE("a closed segment emptied (cut while signetd ran)");
    WriteFile(closed[1], "");
    expect_broken("is empty: a crash while it was being opened, or its lines");
    WriteFile(closed[1], second);
  }
  {
    SCOPED_TRACE("a FIFO in the current segment's place");
    const std::string current = ReadFile(path);
    ASSERT_EQ(unlink(path.c_str()), 0);
    ASSERT_EQ(mkfifo(path.c_str(), 0600), 0);
    expect_broken("not a regular file");  // and does not hang
    ASSERT_EQ(unlink(path.c_str()), 0);
    WriteFile(path, current);
  }
  // Restored: whole again.
  ASSERT_TRUE(VerifyAuditLog(path, nullptr).ok());
  {
    SCOPED_TRACE("the first segments shipped and deleted");
    ASSERT_EQ(unlink(closed[0].c_str()), 0);
    ASSERT_EQ(unlink(closed[1].c_str()), 0);
    absl::StatusOr<AuditVerifyResult> r = VerifyAuditLog(path, nullptr);
    ASSERT_TRUE(r.ok()) << r.status();
    EXPECT_GT(r->first_seq, 1u);
  }
}

// A crash in the middle of an append leaves a last line without its
// newline; that line was never durable, so its call was never answered.
// Open moves it to a side file, cuts the log back to the whole line before
// it, and records what it did as the next line: the chain goes on and
// verifies, and no person has to move the log aside.
TEST(AuditLogTest, OpenMovesATornLastLineAsideAndRecordsIt) {
  TempDir dir;
  const std::string path = dir.File("audit.log");
  {
    auto log = MustOpen(Options(path));
    ASSERT_NE(log, nullptr);
    for (int i = 0; i < 3; ++i) {
      ASSERT_TRUE(log->Append(SignEvent(i)).ok());
    }
  }
  const std::string whole = ReadFile(path);
  const std::string cut = whole.substr(0, whole.size() - 20);
  const std::string fragment = cut.substr(cut.rfind('\n') + 1);
  WriteFile(path, cut);
  {
    auto log = MustOpen(Options(path));
    ASSERT_NE(log, nullptr);
    ASSERT_TRUE(log->Append(SignEvent(9)).ok());
  }
  // The fragment is in the side file named after the line it would have
  // been, byte for byte.
  EXPECT_EQ(ReadFile(path + ".torn-3"), fragment);
  std::vector<std::string> lines = ReadLines(path);
  ASSERT_THAT(lines, SizeIs(4));
  Json note = Parse(lines[2]);
  EXPECT_EQ(note["event"], "torn_tail");
  EXPECT_EQ(note["seq"], 3);
  EXPECT_EQ(note["result"], "DATA_LOSS");
  EXPECT_THAT(note["detail"].get<std::string>(),
              AllOf(HasSubstr(absl::StrCat("incomplete line of ",
                                           fragment.size(), " bytes")),
                    HasSubstr(path + ".torn-3")));
  EXPECT_EQ(Parse(lines[3])["seq"], 4);
  ExpectChainVerifies(path, 4);
}

// No room for the note of a torn last line (a full disk): the line is
// already aside and cut off, so Open does not fail (a retried open found
// nothing torn, and the side file had no line in the log); the note waits
// for the caller, who writes it once there is room.
TEST(AuditLogTest, ATornLinesNoteWithoutRoomIsKeptForTheCaller) {
  TempDir dir;
  const std::string path = dir.File("audit.log");
  {
    auto log = MustOpen(Options(path));
    ASSERT_NE(log, nullptr);
    for (int i = 0; i < 3; ++i) ASSERT_TRUE(log->Append(SignEvent(i)).ok());
  }
  const std::string whole = ReadFile(path);
  const std::string cut = whole.substr(0, whole.size() - 20);
  WriteFile(path, cut);
  AuditLogOptions o = Options(path);
  o.recovery_backoff = absl::Milliseconds(10);
  std::unique_ptr<AuditLog> log;
  {
    FileSizeLimit limit(cut.rfind('\n') + 1 + 10);
    log = MustOpen(o);
    ASSERT_NE(log, nullptr);
  }
  std::optional<AuditEvent> note = log->TakeUnwrittenOpenLine();
  ASSERT_TRUE(note.has_value());
  EXPECT_EQ(note->event, "torn_tail");
  EXPECT_FALSE(log->TakeUnwrittenOpenLine().has_value());
  // Room again: the log recovers (a new segment) and takes it.
  absl::Status appended = log->Append(*note);
  for (int i = 0; i < 200 && !appended.ok(); ++i) {
    absl::SleepFor(absl::Milliseconds(20));
    appended = log->Append(*note);
  }
  ASSERT_TRUE(appended.ok()) << appended;
  log.reset();
  absl::StatusOr<AuditVerifyResult> verified = VerifyAuditLog(path, nullptr);
  ASSERT_TRUE(verified.ok()) << verified.status();
  std::string all = ReadFile(path);
  EXPECT_THAT(all, HasSubstr("\"event\":\"torn_tail\""));
}

// The whole file is one torn line: a new chain starts after the note.
TEST(AuditLogTest, AFileThatIsOneTornLineStartsOver) {
  TempDir dir;
  const std::string path = dir.File("audit.log");
  WriteFile(path, "{\"seq\":1,\"ti");
  auto log = MustOpen(Options(path));
  ASSERT_NE(log, nullptr);
  log.reset();
  EXPECT_EQ(ReadFile(path + ".torn-1"), "{\"seq\":1,\"ti");
  std::vector<std::string> lines = ReadLines(path);
  ASSERT_THAT(lines, SizeIs(1));
  EXPECT_EQ(Parse(lines[0])["event"], "torn_tail");
  ExpectChainVerifies(path, 1);
}

// signetd waits for a log it cannot open for now (UNAVAILABLE,
// PERMISSION_DENIED) and stops at once for a path no wait fixes: those must
// not come back UNAVAILABLE.
TEST(AuditLogTest, APathThatCannotBeALogIsFailedPrecondition) {
  TempDir dir;
  const std::string is_dir = dir.File("a-directory");
  ASSERT_EQ(mkdir(is_dir.c_str(), 0700), 0);
  absl::StatusOr<std::unique_ptr<AuditLog>> log =
      AuditLog::Open(Options(is_dir));
  EXPECT_EQ(log.status().code(), absl::StatusCode::kFailedPrecondition)
      << log.status();
  const std::string loop = dir.File("loop");
  ASSERT_EQ(symlink(loop.c_str(), loop.c_str()), 0);
  log = AuditLog::Open(Options(loop + "/audit.log"));
  EXPECT_EQ(log.status().code(), absl::StatusCode::kFailedPrecondition)
      << log.status();
}

TEST(AuditLogTest, OpenRefusesAnInvalidLastLine) {
  TempDir dir;
  const std::string path = dir.File("audit.log");
  {
    auto log = MustOpen(Options(path));
    ASSERT_NE(log, nullptr);
    ASSERT_TRUE(log->Append(SignEvent(1)).ok());
    ASSERT_TRUE(log->Append(SignEvent(2)).ok());
  }
  WriteFile(path, ReadFile(path) + "{\"seq\":3,\"oops\n");
  absl::StatusOr<std::unique_ptr<AuditLog>> log = AuditLog::Open(Options(path));
  EXPECT_EQ(log.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(log.status().message()),
              HasSubstr("line 3 (the last line) is not a valid audit line"));

  WriteFile(path, "not json at all\n");
  log = AuditLog::Open(Options(path));
  EXPECT_EQ(log.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(log.status().message()), HasSubstr("line 1"));
}

TEST(AuditLogTest, CheckpointIsSignedWithTheAuditKey) {
  TempDir dir;
  const std::string path = dir.File("audit.log");
  TestAuditKey key;
  AuditLogOptions o = Options(path);
  o.sign_checkpoint = key.Signer();
  o.checkpoint_kid = "audit-kid";
  auto log = MustOpen(std::move(o));
  ASSERT_NE(log, nullptr);
  ASSERT_TRUE(log->Append(SignEvent(1)).ok());
  ASSERT_TRUE(log->Append(SignEvent(2)).ok());
  ASSERT_TRUE(log->Checkpoint().ok());
  EXPECT_EQ(log->last_sequence(), 3u);
  log.reset();  // nothing new since the checkpoint: no final one

  std::vector<std::string> lines = ReadLines(path);
  ASSERT_THAT(lines, SizeIs(3));
  Json cp = Parse(lines[2]);
  std::vector<std::string> names;
  for (auto it = cp.begin(); it != cp.end(); ++it) {
    names.push_back(it.key());
  }
  EXPECT_THAT(names, ::testing::ElementsAre("seq", "time", "event", "head",
                                            "count", "kid", "sig", "prev"));
  EXPECT_EQ(cp["event"], "checkpoint");
  EXPECT_EQ(cp["head"], HexSha256(lines[1]));
  EXPECT_EQ(cp["prev"], HexSha256(lines[1]));
  EXPECT_EQ(cp["count"], 2);
  EXPECT_EQ(cp["kid"], "audit-kid");
  std::string sig;
  ASSERT_TRUE(absl::WebSafeBase64Unescape(cp["sig"].get<std::string>(), &sig));
  absl::StatusOr<std::string> digest =
      CheckpointDigest(3, cp["head"].get<std::string>());
  ASSERT_TRUE(digest.ok());
  EXPECT_EQ(*digest,
            *crypto::Sha256(absl::StrCat("signet-audit-checkpoint:3:",
                                         cp["head"].get<std::string>())));
  hsm::PublicKey public_key = key.PublicKey();
  EXPECT_TRUE(
      public_key
          .VerifyDigest(hsm::SignatureAlgorithm::kEcdsaP256Sha256, *digest, sig)
          .ok());

  absl::StatusOr<AuditVerifyResult> r = VerifyAuditLog(path, &public_key);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->lines, 3u);
  EXPECT_EQ(r->checkpoints, 1u);
  EXPECT_EQ(r->last_checkpoint_seq, 3u);
}

TEST(AuditLogTest, StoppingWritesAFinalCheckpoint) {
  TempDir dir;
  const std::string path = dir.File("audit.log");
  TestAuditKey key;
  AuditLogOptions o = Options(path);
  o.sign_checkpoint = key.Signer();
  o.checkpoint_kid = "audit-kid";
  auto log = MustOpen(o);
  ASSERT_NE(log, nullptr);
  AuditEvent stop;
  stop.event = "stop";
  ASSERT_TRUE(log->Append(stop).ok());
  log.reset();
  std::vector<std::string> lines = ReadLines(path);
  ASSERT_THAT(lines, SizeIs(2));
  EXPECT_EQ(Parse(lines[1])["event"], "checkpoint");

  // A restart right after a checkpoint adds none when it stops again.
  log = MustOpen(o);
  ASSERT_NE(log, nullptr);
  log.reset();
  EXPECT_THAT(ReadLines(path), SizeIs(2));
  hsm::PublicKey public_key = key.PublicKey();
  ExpectChainVerifies(path, 2, &public_key);
}

TEST(AuditLogTest, PeriodicCheckpointFollowsTheClock) {
  TempDir dir;
  const std::string path = dir.File("audit.log");
  TestAuditKey key;
  FakeClock clock(Start());
  AuditLogOptions o = Options(path, &clock);
  o.sign_checkpoint = key.Signer();
  o.checkpoint_kid = "audit-kid";
  o.checkpoint_interval = absl::Minutes(1);
  auto log = MustOpen(std::move(o));
  ASSERT_NE(log, nullptr);
  ASSERT_TRUE(log->Append(SignEvent(1)).ok());  // line 1
  clock.Advance(absl::Seconds(61));
  // The writer takes line 2 after the clock moved: a checkpoint is due, and
  // it is written right after the batch holding line 2, before line 4.
  ASSERT_TRUE(log->Append(SignEvent(2)).ok());
  ASSERT_TRUE(log->Append(SignEvent(3)).ok());
  log.reset();  // final checkpoint: line 5

  std::vector<std::string> lines = ReadLines(path);
  ASSERT_THAT(lines, SizeIs(5));
  EXPECT_EQ(Parse(lines[2])["event"], "checkpoint");
  EXPECT_EQ(Parse(lines[2])["count"], 2);
  EXPECT_EQ(Parse(lines[2])["time"], "2026-11-23T16:43:51.123Z");
  EXPECT_EQ(Parse(lines[3])["input_sha256"], HexSha256("claims 3"));
  EXPECT_EQ(Parse(lines[4])["event"], "checkpoint");
  hsm::PublicKey public_key = key.PublicKey();
  absl::StatusOr<AuditVerifyResult> r = VerifyAuditLog(path, &public_key);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->checkpoints, 2u);
}

TEST(AuditLogTest, CheckpointWithoutASignerIsFailedPrecondition) {
  TempDir dir;
  auto log = MustOpen(Options(dir.File("audit.log")));
  ASSERT_NE(log, nullptr);
  EXPECT_EQ(log->Checkpoint().code(), absl::StatusCode::kFailedPrecondition);
}

TEST(AuditLogTest, ASignerFailureIsRecordedAndTheLogGoesOn) {
  TempDir dir;
  const std::string path = dir.File("audit.log");
  AuditLogOptions o = Options(path);
  o.sign_checkpoint = [](absl::string_view) -> absl::StatusOr<std::string> {
    return absl::DeadlineExceededError("audit key: HSM did not answer");
  };
  o.checkpoint_kid = "audit-kid";
  auto log = MustOpen(std::move(o));
  ASSERT_NE(log, nullptr);
  ASSERT_TRUE(log->Append(SignEvent(1)).ok());
  absl::Status cp = log->Checkpoint();
  EXPECT_EQ(cp.code(), absl::StatusCode::kDeadlineExceeded) << cp;
  ASSERT_TRUE(log->Append(SignEvent(2)).ok());
  log.reset();  // the final checkpoint fails too, once

  std::vector<std::string> lines = ReadLines(path);
  ASSERT_THAT(lines, SizeIs(4));
  Json failed = Parse(lines[1]);
  EXPECT_EQ(failed["event"], "checkpoint_failed");
  EXPECT_EQ(failed["result"], "DEADLINE_EXCEEDED");
  EXPECT_EQ(failed["detail"], "audit key: HSM did not answer");
  EXPECT_EQ(Parse(lines[3])["event"], "checkpoint_failed");
  ExpectChainVerifies(path, 4);
}

TEST(AuditLogTest, ASignatureOfTheWrongLengthIsRefused) {
  TempDir dir;
  const std::string path = dir.File("audit.log");
  AuditLogOptions o = Options(path);
  o.sign_checkpoint = [](absl::string_view) -> absl::StatusOr<std::string> {
    return std::string(72, '\x30');  // DER-sized, not r||s
  };
  o.checkpoint_kid = "audit-kid";
  auto log = MustOpen(std::move(o));
  ASSERT_NE(log, nullptr);
  ASSERT_TRUE(log->Append(SignEvent(1)).ok());
  EXPECT_EQ(log->Checkpoint().code(), absl::StatusCode::kInternal);
}

TEST(AuditLogTest, ARefusalFloodBecomesASummary) {
  TempDir dir;
  const std::string path = dir.File("audit.log");
  FakeClock clock(Start());
  AuditLogOptions o = Options(path, &clock);
  o.refusals_per_second = 50;
  auto log = MustOpen(std::move(o));
  ASSERT_NE(log, nullptr);
  for (int i = 0; i < 10000; ++i) {
    AuditEvent e = SignEvent(i);
    e.event = "refuse";
    e.caller = i % 2 == 0 ? "cn:flooder" : "uri:spiffe://example.org/other";
    e.result = "PERMISSION_DENIED";
    log->AppendRefusal(e);
  }
  log.reset();

  // Each caller writes its fifth of the 50 lines; the rest is counted.
  std::vector<std::string> lines = ReadLines(path);
  ASSERT_THAT(lines, SizeIs(21));
  for (int i = 0; i < 20; ++i) {
    EXPECT_EQ(Parse(lines[i])["event"], "refuse");
  }
  Json summary = Parse(lines[20]);
  EXPECT_EQ(summary["event"], "refusal_summary");
  EXPECT_EQ(summary["count"], 9980);
  EXPECT_THAT(summary["detail"].get<std::string>(),
              AllOf(HasSubstr("cn:flooder 4990"),
                    HasSubstr("uri:spiffe://example.org/other 4990"),
                    HasSubstr("2026-11-23T16:42:50.000Z")));
  ExpectChainVerifies(path, 21);
}

// One caller's flood used every line of the window, so another caller's
// refusals in the same second were only counted. Each caller now gets a
// fifth of the lines.
TEST(AuditLogTest, OneCallersFloodLeavesLinesForAnothersRefusals) {
  TempDir dir;
  const std::string path = dir.File("audit.log");
  FakeClock clock(Start());
  AuditLogOptions o = Options(path, &clock);
  o.refusals_per_second = 50;
  auto log = MustOpen(std::move(o));
  ASSERT_NE(log, nullptr);
  for (int i = 0; i < 1000; ++i) {
    AuditEvent e = SignEvent(i);
    e.event = "refuse";
    e.caller = "cn:flooder";
    e.result = "PERMISSION_DENIED";
    log->AppendRefusal(e);
  }
  for (int i = 0; i < 3; ++i) {
    AuditEvent e = SignEvent(i);
    e.event = "refuse";
    e.caller = "uri:spiffe://example.org/honest";
    e.result = "INVALID_ARGUMENT";
    log->AppendRefusal(e);
  }
  log.reset();

  int flooder = 0;
  int honest = 0;
  uint64_t summarized = 0;
  for (const std::string& line : ReadLines(path)) {
    Json j = Parse(line);
    if (j["event"] == "refusal_summary")
      summarized += j["count"].get<uint64_t>();
    if (j["event"] != "refuse") continue;
    if (j["caller"] == "cn:flooder") ++flooder;
    if (j["caller"] == "uri:spiffe://example.org/honest") ++honest;
  }
  EXPECT_EQ(flooder, 10);
  EXPECT_EQ(honest, 3);
  EXPECT_EQ(summarized, 990u);
}

TEST(AuditLogTest, ARefusalFloodOverSeveralSecondsKeepsEveryCount) {
  TempDir dir;
  const std::string path = dir.File("audit.log");
  FakeClock clock(Start());
  auto log = MustOpen(Options(path, &clock));
  ASSERT_NE(log, nullptr);
  for (int i = 0; i < 10000; ++i) {
    AuditEvent e;
    e.event = "refuse";
    e.caller = absl::StrCat("cn:caller-", i % 20);  // more than the map holds
    log->AppendRefusal(e);
    if (i == 5000) {
      // A durable append in the middle keeps its place in the order.
      ASSERT_TRUE(log->Append(SignEvent(1)).ok());
    }
    clock.Advance(absl::Milliseconds(1));  // 10 seconds in all
  }
  log.reset();

  std::vector<std::string> lines = ReadLines(path);
  uint64_t refusals = 0;
  uint64_t summarized = 0;
  int summaries = 0;
  for (const std::string& line : lines) {
    Json j = Parse(line);
    if (j["event"] == "refuse") {
      ++refusals;
    } else if (j["event"] == "refusal_summary") {
      ++summaries;
      summarized += j["count"].get<uint64_t>();
      EXPECT_THAT(j["detail"].get<std::string>(), HasSubstr("others"));
    }
  }
  EXPECT_EQ(refusals + summarized, 10000u);
  EXPECT_LE(refusals, 11u * 50u);
  EXPECT_LE(summaries, 11);
  EXPECT_LE(lines.size(), 11u * 51u + 1u);
  ExpectChainVerifies(path, lines.size());
}

TEST(AuditLogTest, RefusalsAreChainedInOrderWithAppends) {
  TempDir dir;
  const std::string path = dir.File("audit.log");
  auto log = MustOpen(Options(path));
  ASSERT_NE(log, nullptr);
  AuditEvent refusal;
  refusal.event = "refuse";
  refusal.detail = "first";
  log->AppendRefusal(refusal);
  ASSERT_TRUE(log->Append(SignEvent(1)).ok());
  refusal.detail = "second";
  log->AppendRefusal(refusal);
  log.reset();
  std::vector<std::string> lines = ReadLines(path);
  ASSERT_THAT(lines, SizeIs(3));
  EXPECT_EQ(Parse(lines[0])["detail"], "first");
  EXPECT_EQ(Parse(lines[1])["event"], "sign");
  EXPECT_EQ(Parse(lines[2])["detail"], "second");
  ExpectChainVerifies(path, 3);
}

}  // namespace
}  // namespace signet::server
