// The audit log's two costs, each against a baseline measured in the same
// run (these machines are shared and noisy):
//
//  - Writing: lines per second through AuditLog (group commit, N appenders
//    each waiting for its line to be durable, as signers do) divided by raw
//    write() + fdatasync() of the same bytes in batches of the size the log
//    reached.
//  - Verifying: MB/s of `audit-verify` (VerifyAuditLog) over a segmented
//    log with checkpoints, on 1 and 2 threads, divided by SHA-256 of every
//    line alone on one thread (the least any chain check must do), and what
//    that means for a day's log at 10,000 tokens/s.
//
// The log is read back from the page cache, so verification measures CPU,
// not the disk. Informational: exits 0 whatever the numbers.
#include <fcntl.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <string>
#include <thread>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "base/status_macros.h"
#include "crypto/digest.h"
#include "server/audit_log.h"
#include "server/audit_verify.h"
#include "server/test_audit_files.h"
#include "server/test_audit_key.h"

ABSL_FLAG(std::string, dir, "",
          "Directory for the benchmark's logs (default: a new one under "
          "/var/tmp, on disk; /dev/shm shows the cost without the disk).");
ABSL_FLAG(double, seconds, 5, "Seconds per write phase.");
ABSL_FLAG(int, appenders, 32, "Threads appending at once (signers).");
ABSL_FLAG(int, verify_mib, 512, "Size of the log verified, in MiB.");
ABSL_FLAG(int, segment_mib, 64, "Segment size of the verified log, in MiB.");

namespace signet::server {
namespace {

using audit_testing::TestAuditKey;

AuditEvent Event(uint64_t i) {
  AuditEvent e;
  e.event = "sign";
  e.caller = "uri:spiffe://signet.test/tenant/idp";
  e.scope = "consumer-demo";
  e.kid = "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs";
  e.alg = "ES256";
  absl::StatusOr<std::string> digest =
      crypto::Sha256(absl::StrCat("claims ", i));
  e.input_sha256 = digest.ok() ? absl::BytesToHexString(*digest) : "";
  e.result = "OK";
  return e;
}

double Since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start)
      .count();
}

uint64_t DirectoryBytes(const std::string& dir) {
  uint64_t total = 0;
  for (const auto& entry : std::filesystem::directory_iterator(dir)) {
    if (entry.is_regular_file()) total += entry.file_size();
  }
  return total;
}

struct WriteResult {
  double lines_per_second = 0;
  double lines_per_sync = 0;
  double bytes_per_line = 0;
};

WriteResult MeasureAuditLog(const std::string& dir, const TestAuditKey& key) {
  const std::string path = dir + "/write/audit.log";
  std::filesystem::create_directories(dir + "/write");
  AuditLogOptions o;
  o.path = path;
  o.syslog = false;
  o.checkpoint_kid = "bench-audit-key";
  o.sign_checkpoint = key.Signer();
  auto log = AuditLog::Open(o);
  if (!log.ok()) {
    std::fprintf(stderr, "cannot open %s: %s\n", path.c_str(),
                 log.status().ToString().c_str());
    return {};
  }
  std::atomic<bool> stop{false};
  std::atomic<uint64_t> lines{0};
  const uint64_t syncs_before = (*log)->syncs();
  std::vector<std::thread> appenders;
  const auto start = std::chrono::steady_clock::now();
  for (int t = 0; t < absl::GetFlag(FLAGS_appenders); ++t) {
    appenders.emplace_back([&, t] {
      for (uint64_t i = t; !stop.load(); i += 1000) {
        if (!(*log)->Append(Event(i)).ok()) return;
        lines.fetch_add(1);
      }
    });
  }
  absl::SleepFor(absl::Seconds(absl::GetFlag(FLAGS_seconds)));
  stop.store(true);
  for (std::thread& t : appenders) t.join();
  const double elapsed = Since(start);
  WriteResult r;
  r.lines_per_second = static_cast<double>(lines.load()) / elapsed;
  const uint64_t syncs = (*log)->syncs() - syncs_before;
  r.lines_per_sync = syncs > 0 ? static_cast<double>(lines.load()) / syncs : 0;
  log->reset();
  r.bytes_per_line = static_cast<double>(std::filesystem::file_size(path)) /
                     static_cast<double>(std::max<uint64_t>(lines.load(), 1));
  return r;
}

// write() + fdatasync() of batches of `lines_per_batch` lines of
// `bytes_per_line`, for the same time: what the log's own work adds to.
double MeasureRawWrites(const std::string& dir, double lines_per_batch,
                        double bytes_per_line) {
  const std::string path = dir + "/raw.log";
  int fd = open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_APPEND, 0600);
  if (fd < 0) return 0;
  const size_t batch =
      std::max<size_t>(1, static_cast<size_t>(lines_per_batch));
  const std::string line(static_cast<size_t>(bytes_per_line) - 1, 'x');
  std::string buffer;
  for (size_t i = 0; i < batch; ++i) buffer += line + "\n";
  uint64_t lines = 0;
  const auto start = std::chrono::steady_clock::now();
  const double seconds = absl::GetFlag(FLAGS_seconds);
  while (Since(start) < seconds) {
    if (write(fd, buffer.data(), buffer.size()) !=
            static_cast<ssize_t>(buffer.size()) ||
        fdatasync(fd) != 0) {
      break;
    }
    lines += batch;
  }
  const double elapsed = Since(start);
  close(fd);
  unlink(path.c_str());
  return static_cast<double>(lines) / elapsed;
}

// A log of about verify_mib MiB in segments of segment_mib, with
// checkpoints every 2,000 lines.
absl::Status WriteLogToVerify(const std::string& path,
                              const TestAuditKey& key) {
  AuditLogOptions o;
  o.path = path;
  o.syslog = false;
  o.checkpoint_kid = "bench-audit-key";
  o.sign_checkpoint = key.Signer();
  o.group_commit_delay = absl::ZeroDuration();
  o.segment_max_bytes = static_cast<uint64_t>(absl::GetFlag(FLAGS_segment_mib))
                        << 20;
  SIGNET_ASSIGN_OR_RETURN(auto log, AuditLog::Open(o));
  const uint64_t want = static_cast<uint64_t>(absl::GetFlag(FLAGS_verify_mib))
                        << 20;
  const std::string dir = path.substr(0, path.rfind('/'));
  std::vector<AuditEvent> batch;
  uint64_t i = 0;
  while (DirectoryBytes(dir) < want) {
    batch.clear();
    for (int k = 0; k < 2000; ++k) batch.push_back(Event(i++));
    SIGNET_RETURN_IF_ERROR(log->AppendAll(batch));
    SIGNET_RETURN_IF_ERROR(log->Checkpoint());
  }
  return absl::OkStatus();
}

// SHA-256 of every line on its own, one thread, through one reused
// context, reading each file with read() in 1 MiB chunks: MB/s. The least
// any chain check must do.
double MeasureLineHashing(const std::string& dir) {
  crypto::Sha256Hasher hasher;
  crypto::Sha256Hasher::Digest digest;
  uint64_t bytes = 0;
  std::vector<char> buffer(2 << 20);
  const auto start = std::chrono::steady_clock::now();
  for (const auto& entry : std::filesystem::directory_iterator(dir)) {
    const int fd = open(entry.path().c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) continue;
    size_t held = 0;  // bytes of a partial line at the front of buffer
    while (true) {
      const ssize_t n = read(fd, buffer.data() + held, (1 << 20));
      if (n <= 0) break;
      bytes += static_cast<uint64_t>(n);
      const absl::string_view data(buffer.data(), held + n);
      size_t at = 0;
      for (size_t nl = data.find('\n'); nl != absl::string_view::npos;
           nl = data.find('\n', at)) {
        (void)hasher.Hash(data.substr(at, nl - at), digest);
        at = nl + 1;
      }
      held = data.size() - at;
      std::memmove(buffer.data(), buffer.data() + at, held);
    }
    close(fd);
  }
  return static_cast<double>(bytes) / (1 << 20) / Since(start);
}

int Main() {
  std::string dir = absl::GetFlag(FLAGS_dir);
  bool made = false;
  if (dir.empty()) {
    std::string tmpl = "/var/tmp/signet-audit-bench.XXXXXX";
    if (mkdtemp(tmpl.data()) == nullptr) {
      std::perror("mkdtemp");
      return 1;
    }
    dir = tmpl;
    made = true;
  }
  TestAuditKey key;
  std::printf("== audit log: writing and verifying ==\n");
  std::printf("directory %s; %d appenders; %.1f s per write phase\n\n",
              dir.c_str(), absl::GetFlag(FLAGS_appenders),
              absl::GetFlag(FLAGS_seconds));

  WriteResult written = MeasureAuditLog(dir, key);
  const double raw =
      MeasureRawWrites(dir, written.lines_per_sync, written.bytes_per_line);
  std::printf(
      "write   AuditLog %9.0f lines/s (%.0f bytes/line, %.1f lines "
      "per fdatasync)\n",
      written.lines_per_second, written.bytes_per_line, written.lines_per_sync);
  std::printf(
      "write   raw      %9.0f lines/s (write + fdatasync, same "
      "batches)   ratio %.2f\n\n",
      raw, raw > 0 ? written.lines_per_second / raw : 0.0);

  const std::string verify_dir = dir + "/verify";
  std::filesystem::create_directories(verify_dir);
  const std::string path = verify_dir + "/audit.log";
  if (absl::Status st = WriteLogToVerify(path, key); !st.ok()) {
    std::fprintf(stderr, "cannot write the log to verify: %s\n",
                 st.ToString().c_str());
    return 1;
  }
  const double mib =
      static_cast<double>(DirectoryBytes(verify_dir)) / (1 << 20);
  const double hashing = MeasureLineHashing(verify_dir);
  hsm::PublicKey public_key = key.PublicKey();
  double per_thread[3] = {0, 0, 0};
  for (int threads : {1, 2}) {
    AuditVerifyOptions options;
    options.threads = threads;
    const auto start = std::chrono::steady_clock::now();
    absl::StatusOr<AuditVerifyResult> r =
        VerifyAuditLog(path, &public_key, "", options);
    const double elapsed = Since(start);
    if (!r.ok()) {
      std::fprintf(stderr, "verification failed: %s\n",
                   r.status().ToString().c_str());
      return 1;
    }
    per_thread[threads] = mib / elapsed;
    std::printf(
        "verify  %d thread(s) %7.1f MiB/s (%.0f MiB, %llu lines, %llu "
        "segments, %llu checkpoints)   ratio %.2f\n",
        threads, per_thread[threads], mib,
        static_cast<unsigned long long>(r->lines),
        static_cast<unsigned long long>(r->segments),
        static_cast<unsigned long long>(r->checkpoints),
        per_thread[threads] / hashing);
  }
  std::printf("baseline SHA-256 of each line, 1 thread: %.1f MiB/s\n\n",
              hashing);
  // A day at 10,000 tokens/s, one line per token.
  const double day_mib = 10000.0 * 86400.0 * written.bytes_per_line / (1 << 20);
  std::printf(
      "a day at 10,000 tokens/s: %.0f GiB; verified in %.0f min on "
      "2 threads at this rate (goal: under 10)\n",
      day_mib / 1024, day_mib / per_thread[2] / 60);
  if (made) std::filesystem::remove_all(dir);
  return 0;
}

}  // namespace
}  // namespace signet::server

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  return signet::server::Main();
}
