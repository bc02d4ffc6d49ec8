// JWKS GET requests per second from signetd's HTTP endpoint divided by nginx
// serving the same bytes as a static file on the same machine, both measured
// with `wrk` in one run (README, "Benchmarks"; goal: at least 0.5).
//
// One process sets up, in temporary directories:
//   a SoftHSM2 token behind a real `p11-kit server` and a test CA
//   (SignetTestBed), and signetd as a real process (SignetdProcess) with
//   two CONSUMER JWT scopes (ES256 and RS256-2048, so the consumer set holds
//   one key of each kind, about 0.7 KB) and one ENTERPRISE scope, and an
//   `http { listen_address: "127.0.0.1:0" }` block;
//   nginx (`daemon off`, its own configuration, pid, error log and temp
//   paths in its temporary directory, `access_log off`) serving the document
//   signetd served (fetched once, written to a file) with the same
//   Content-Type and Cache-Control, and nginx's own strong ETag.
//
// Before measuring it GETs the document from both and checks that the bodies
// are byte-identical (exit 1 if not) and prints both response heads.
//
// Fairness: signetd's libmicrohttpd answers on one internal polling thread
// (MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_EPOLL, no thread pool: see
// server/jwks_http.cc), so nginx gets `worker_processes 1` (its master
// process only supervises). --http_threads=N sets signetd's http.threads
// to N and nginx's worker_processes to N together. nginx is tuned to be a
// hard baseline, never to help signetd: an open_file_cache (no open/stat per
// request), `sendfile off` by default (for a document under 1 KB, nginx
// answers faster copying from its buffers than with sendfile + tcp_nopush,
// the setting of Debian's nginx.conf: --nginx_sendfile to compare), and a
// keepalive_requests limit high enough that neither server closes wrk's
// keep-alive connections during a run.
//
// Then --rounds times: wrk against signetd, then wrk against nginx (A/B/A/B
// ...; same --wrk_threads, --connections and --seconds), so the two
// alternate on a shared machine whose load drifts. Each run prints
// requests/s, errors and the server's CPU time per request (utime + stime
// of its whole process group, from /proc). The summary gives the mean
// requests/s of each, the ratio of the means, every round's ratio, and
// whether the 0.5 goal is met. The CPU ratio (nginx CPU per request over
// signetd CPU per request) is printed too: less sensitive to other load,
// since wrk and the server share the same two cores.
//
// Informational: exit 0 whatever the numbers; 1 when setup fails, the
// bodies differ or wrk fails. Every process it starts (p11-kit server,
// signetd, nginx, wrk) is stopped at the end, on failure, and on SIGINT,
// SIGTERM or SIGHUP.
//
// Not run by ctest. Run it with tests/bench/run_jwks_bench [flags].

#include <arpa/inet.h>
#include <dirent.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/cleanup/cleanup.h"
#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "base/status_macros.h"
#include "tests/testing/http_get.h"
#include "tests/testing/p11kit_server.h"
#include "tests/testing/process.h"
#include "tests/testing/signetd_process.h"
#include "tests/testing/temp_token.h"
#include "tests/testing/test_bed.h"

ABSL_FLAG(int, wrk_threads, 2, "wrk -t: client threads (both servers).");
ABSL_FLAG(int, connections, 64, "wrk -c: open connections (both servers).");
ABSL_FLAG(int, seconds, 10, "wrk -d: seconds per run.");
ABSL_FLAG(int, rounds, 2,
          "signetd/nginx run pairs, alternating (A/B/A/B for 2).");
ABSL_FLAG(int, http_threads, 1,
          "Threads of signetd's HTTP endpoint and nginx worker_processes. 1 "
          "is signetd's default (then http.threads is left out of its "
          "configuration).");
ABSL_FLAG(std::string, path, "/consumer/.well-known/jwks.json",
          "The document both servers serve.");
ABSL_FLAG(bool, nginx_sendfile, false,
          "nginx `sendfile on; tcp_nopush on;` (Debian's default nginx.conf; "
          "slower for a small document) instead of copying from its buffers.");
ABSL_FLAG(std::string, wrk, "wrk", "The wrk binary.");
ABSL_FLAG(std::string, signetd, SIGNETD_BINARY,
          "The signetd binary (default: the one built with this benchmark).");
ABSL_FLAG(std::string, nginx, "nginx", "The nginx binary.");

namespace signet::bench {
namespace {

using testing::SignetdOptions;
using testing::SignetdProcess;

constexpr absl::Duration kStartTimeout = absl::Seconds(120);
constexpr char kTenant[] = "spiffe://signet.test/bench/jwks";
constexpr double kGoal = 0.5;

// ------------------------------------------------ cleanup on a signal

// Process groups to SIGKILL if this process is interrupted (the normal exit
// path stops them properly). Written before the handler can see them.
constexpr int kMaxGroups = 8;
std::atomic<pid_t> g_groups[kMaxGroups];

void Register(pid_t pgid) {
  for (auto& slot : g_groups) {
    pid_t empty = 0;
    if (slot.compare_exchange_strong(empty, pgid)) return;
  }
}

void Unregister(pid_t pgid) {
  for (auto& slot : g_groups) {
    pid_t expected = pgid;
    slot.compare_exchange_strong(expected, 0);
  }
}

// The first SIGINT/SIGTERM/SIGHUP kills every registered group: whatever
// this process waits on then fails, and Run() unwinds through the normal
// destructors (which also remove the temporary directories). A second one
// exits at once.
std::atomic<int> g_interrupted{0};

void OnSignal(int sig) {
  for (auto& slot : g_groups) {
    pid_t pgid = slot.load();
    if (pgid > 0) kill(-pgid, SIGKILL);
  }
  if (g_interrupted.exchange(sig) != 0) _exit(128 + sig);
}

bool Interrupted() {
  if (g_interrupted.load() == 0) return false;
  std::cerr << "jwks_benchmark: interrupted\n";
  return true;
}

// ------------------------------------------------ small helpers

absl::Status WriteFile(const std::string& path, absl::string_view data,
                       mode_t mode = 0644) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << data;
  out.close();
  if (!out.good())
    return absl::InternalError(absl::StrCat("cannot write ", path));
  if (chmod(path.c_str(), mode) != 0) {
    return absl::InternalError(absl::StrCat("chmod ", path));
  }
  return absl::OkStatus();
}

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(in)),
                     std::istreambuf_iterator<char>());
}

// utime + stime of every process in process group `pgid`, in clock ticks.
int64_t GroupTicks(pid_t pgid) {
  int64_t total = 0;
  DIR* d = opendir("/proc");
  if (d == nullptr) return 0;
  while (dirent* e = readdir(d)) {
    int pid = 0;
    if (!absl::SimpleAtoi(e->d_name, &pid)) continue;
    std::string s = ReadFile(absl::StrCat("/proc/", pid, "/stat"));
    size_t p = s.rfind(')');
    if (p == std::string::npos || p + 2 >= s.size()) continue;
    std::vector<std::string> f = absl::StrSplit(s.substr(p + 2), ' ');
    // After "pid (comm) ": state=0, ppid=1, pgrp=2, ..., utime=11, stime=12.
    int64_t pgrp = 0, u = 0, st = 0;
    if (f.size() < 13 || !absl::SimpleAtoi(f[2], &pgrp) || pgrp != pgid ||
        !absl::SimpleAtoi(f[11], &u) || !absl::SimpleAtoi(f[12], &st)) {
      continue;
    }
    total += u + st;
    // Threads are included: /proc/<pid>/stat sums the whole thread group.
  }
  closedir(d);
  return total;
}

// A free loopback port (bound, read, released: a small race with other
// processes, acceptable for a benchmark).
absl::StatusOr<int> FreePort() {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return absl::InternalError("socket");
  sockaddr_in addr = {};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof(addr);
  if (bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0 ||
      getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
    close(fd);
    return absl::InternalError("bind/getsockname");
  }
  close(fd);
  return ntohs(addr.sin_port);
}

using testing::HttpGet;
using testing::HttpResponse;

// Stops a process group: `sig`, then SIGKILL after `grace`; reaps `pid`.
void StopGroup(pid_t pid, int sig, absl::Duration grace) {
  if (pid <= 0) return;
  kill(-pid, sig);
  absl::Time deadline = absl::Now() + grace;
  int status = 0;
  while (waitpid(pid, &status, WNOHANG) == 0) {
    if (absl::Now() > deadline) {
      kill(-pid, SIGKILL);
      waitpid(pid, &status, 0);
      break;
    }
    absl::SleepFor(absl::Milliseconds(20));
  }
  // Workers outliving their master: make sure nothing of the group stays.
  if (testing::ProcessGroupAlive(pid)) kill(-pid, SIGKILL);
  Unregister(pid);
}

// ------------------------------------------------ nginx

class Nginx {
 public:
  // Writes the document and a configuration under a new temporary
  // directory and starts nginx in the foreground on a free loopback port.
  static absl::StatusOr<std::unique_ptr<Nginx>> Start(
      absl::string_view path, absl::string_view body,
      absl::string_view content_type, absl::string_view cache_control,
      int workers) {
    char dir_template[] = "/tmp/signet-jwks-bench-XXXXXX";
    if (mkdtemp(dir_template) == nullptr) {
      return absl::InternalError("mkdtemp /tmp/signet-jwks-bench-XXXXXX");
    }
    std::unique_ptr<Nginx> n(new Nginx());
    n->dir_ = dir_template;
    // nginx's workers may drop to an unprivileged user: they must read it.
    chmod(n->dir_.c_str(), 0755);
    const std::string www = n->dir_ + "/www";
    std::filesystem::path file = www + std::string(path);
    std::error_code ec;
    std::filesystem::create_directories(file.parent_path(), ec);
    if (ec) return absl::InternalError(ec.message());
    for (std::filesystem::path p = file.parent_path();
         p.string().size() >= www.size(); p = p.parent_path()) {
      chmod(p.c_str(), 0755);
    }
    SIGNET_RETURN_IF_ERROR(WriteFile(file.string(), body));
    std::filesystem::create_directories(n->dir_ + "/temp", ec);
    SIGNET_ASSIGN_OR_RETURN(int port, FreePort());
    n->port_ = port;
    const std::string& d = n->dir_;
    const std::string conf = absl::StrCat(
        "# written by tests/bench/jwks_benchmark\n"
        "daemon off;\n"
        "worker_processes ",
        workers,
        ";\n"
        "pid ",
        d,
        "/nginx.pid;\n"
        "error_log ",
        d,
        "/error.log warn;\n"
        "events { worker_connections 1024; use epoll; }\n"
        "http {\n"
        "  access_log off;\n"
        "  sendfile ",
        absl::GetFlag(FLAGS_nginx_sendfile) ? "on" : "off",
        ";\n"
        "  tcp_nopush ",
        absl::GetFlag(FLAGS_nginx_sendfile) ? "on" : "off",
        ";\n"
        "  keepalive_requests 100000000;\n"
        "  keepalive_timeout 75s;\n"
        "  open_file_cache max=16 inactive=60s;\n"
        "  open_file_cache_valid 60s;\n"
        "  etag on;\n"
        "  server_tokens off;\n"
        "  client_body_temp_path ",
        d,
        "/temp/body;\n"
        "  proxy_temp_path ",
        d,
        "/temp/proxy;\n"
        "  fastcgi_temp_path ",
        d,
        "/temp/fastcgi;\n"
        "  uwsgi_temp_path ",
        d,
        "/temp/uwsgi;\n"
        "  scgi_temp_path ",
        d,
        "/temp/scgi;\n"
        "  types { }\n"
        "  default_type ",
        content_type,
        ";\n"
        "  server {\n"
        "    listen 127.0.0.1:",
        n->port_,
        ";\n"
        "    root ",
        www,
        ";\n"
        "    location = ",
        path,
        " {\n"
        "      add_header Cache-Control \"",
        cache_control,
        "\";\n"
        "    }\n"
        "  }\n"
        "}\n");
    SIGNET_RETURN_IF_ERROR(WriteFile(d + "/nginx.conf", conf));
    int log_fd = open((d + "/stderr.log").c_str(),
                      O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (log_fd < 0) return absl::InternalError("open nginx stderr.log");
    absl::StatusOr<pid_t> pid = testing::Spawn(
        {.argv = {absl::GetFlag(FLAGS_nginx), "-p", d + "/", "-c",
                  d + "/nginx.conf", "-e", d + "/error.log"},
         .stdout_fd = log_fd,
         .stderr_fd = log_fd});
    close(log_fd);
    if (!pid.ok()) return pid.status();
    n->pid_ = *pid;
    Register(n->pid_);
    if (g_interrupted.load() != 0) kill(-n->pid_, SIGKILL);
    // Ready when it answers.
    absl::Time deadline = absl::Now() + absl::Seconds(20);
    for (;;) {
      absl::StatusOr<HttpResponse> r = HttpGet(n->port_, path);
      if (r.ok()) break;
      int status = 0;
      if (waitpid(n->pid_, &status, WNOHANG) == n->pid_) {
        n->pid_ = 0;
        return absl::InternalError(absl::StrCat("nginx exited at start:\n",
                                                ReadFile(d + "/stderr.log"),
                                                ReadFile(d + "/error.log")));
      }
      if (absl::Now() > deadline) {
        return absl::DeadlineExceededError(
            absl::StrCat("nginx does not answer on port ", n->port_, ":\n",
                         ReadFile(d + "/error.log")));
      }
      absl::SleepFor(absl::Milliseconds(50));
    }
    return n;
  }

  ~Nginx() {
    // SIGTERM: nginx's fast shutdown (workers exit with the master).
    StopGroup(pid_, SIGTERM, absl::Seconds(10));
    if (!dir_.empty()) {
      std::error_code ec;
      std::filesystem::remove_all(dir_, ec);
    }
  }

  int port() const { return port_; }
  pid_t pgid() const { return pid_; }

 private:
  Nginx() = default;
  std::string dir_;
  int port_ = 0;
  pid_t pid_ = 0;
};

// ------------------------------------------------ wrk

struct WrkResult {
  double requests_per_second = 0;
  double bytes_per_second = 0;  // wrk's Transfer/sec (response bytes read)
  int64_t requests = 0;
  int64_t non_2xx = 0;
  int64_t socket_errors = 0;
  double server_cpu_seconds = 0;
  double wall_seconds = 0;
  std::string output;
};

absl::StatusOr<WrkResult> RunWrk(int port, absl::string_view path,
                                 pid_t server_pgid) {
  char out_template[] = "/tmp/signet-wrk-XXXXXX";
  int out_fd = mkostemp(out_template, O_CLOEXEC);
  if (out_fd < 0) return absl::InternalError("mkostemp");
  const std::string out_path = out_template;
  absl::Cleanup remove_out = [&out_path] { unlink(out_path.c_str()); };
  const int seconds = absl::GetFlag(FLAGS_seconds);
  const double hz = static_cast<double>(sysconf(_SC_CLK_TCK));
  const int64_t ticks_before = GroupTicks(server_pgid);
  const absl::Time start = absl::Now();
  absl::StatusOr<pid_t> pid = testing::Spawn(
      {.argv = {absl::GetFlag(FLAGS_wrk), "-t",
                absl::StrCat(absl::GetFlag(FLAGS_wrk_threads)), "-c",
                absl::StrCat(absl::GetFlag(FLAGS_connections)), "-d",
                absl::StrCat(seconds, "s"), "--timeout", "5s",
                absl::StrCat("http://127.0.0.1:", port, path)},
       .stdout_fd = out_fd,
       .stderr_fd = out_fd});
  close(out_fd);
  if (!pid.ok()) return pid.status();
  Register(*pid);
  if (g_interrupted.load() != 0) kill(-*pid, SIGKILL);
  int status = 0;
  const absl::Time deadline = start + absl::Seconds(seconds + 60);
  bool killed = false;
  while (waitpid(*pid, &status, WNOHANG) == 0) {
    if (absl::Now() > deadline) {
      kill(-*pid, SIGKILL);
      waitpid(*pid, &status, 0);
      killed = true;
      break;
    }
    absl::SleepFor(absl::Milliseconds(50));
  }
  Unregister(*pid);
  WrkResult r;
  r.wall_seconds = absl::ToDoubleSeconds(absl::Now() - start);
  r.server_cpu_seconds = (GroupTicks(server_pgid) - ticks_before) / hz;
  r.output = ReadFile(out_path);
  if (killed || !WIFEXITED(status) || WEXITSTATUS(status) != 0) {
    return absl::InternalError(absl::StrCat("wrk failed:\n", r.output));
  }
  bool have_rate = false;
  for (absl::string_view line : absl::StrSplit(r.output, '\n')) {
    line = absl::StripAsciiWhitespace(line);
    if (absl::ConsumePrefix(&line, "Requests/sec:")) {
      have_rate = absl::SimpleAtod(absl::StripAsciiWhitespace(line),
                                   &r.requests_per_second);
    } else if (absl::ConsumePrefix(&line, "Transfer/sec:")) {
      // "55.12MB": wrk's units are powers of 1024.
      std::string value(absl::StripAsciiWhitespace(line));
      double scale = 1;
      for (const auto& [unit, factor] :
           std::vector<std::pair<std::string, double>>{
               {"GB", 1024.0 * 1024 * 1024},
               {"MB", 1024.0 * 1024},
               {"KB", 1024.0},
               {"B", 1.0}}) {
        if (absl::EndsWith(value, unit)) {
          value.resize(value.size() - unit.size());
          scale = factor;
          break;
        }
      }
      double v = 0;
      if (absl::SimpleAtod(value, &v)) r.bytes_per_second = v * scale;
    } else if (absl::ConsumePrefix(&line, "Non-2xx or 3xx responses:")) {
      absl::SimpleAtoi(absl::StripAsciiWhitespace(line), &r.non_2xx);
    } else if (absl::ConsumePrefix(&line, "Socket errors:")) {
      // "connect 0, read 0, write 0, timeout 0"
      for (absl::string_view part : absl::StrSplit(line, ',')) {
        std::vector<absl::string_view> kv =
            absl::StrSplit(absl::StripAsciiWhitespace(part), ' ');
        int64_t v = 0;
        if (kv.size() == 2 && absl::SimpleAtoi(kv[1], &v)) {
          r.socket_errors += v;
        }
      }
    } else if (absl::StrContains(line, " requests in ")) {
      absl::SimpleAtoi(line.substr(0, line.find(' ')), &r.requests);
    }
  }
  if (!have_rate) {
    return absl::InternalError(absl::StrCat("no Requests/sec in:\n", r.output));
  }
  return r;
}

// ------------------------------------------------ signetd

std::string SignetdConfig(testing::SignetTestBed& bed,
                          const std::string& audit_dir, int http_threads) {
  return absl::StrCat(
      "grpc_listen_address: \"127.0.0.1:0\"\n", bed.HsmConfig(),
      "scopes { name: \"bench-consumer-es256\" audience_class: CONSUMER "
      "purpose: JWT issuer: \"https://consumer-es256.signet.test\" "
      "algorithm: ES256 }\n"
      "scopes { name: \"bench-consumer-rs256\" audience_class: CONSUMER "
      "purpose: JWT issuer: \"https://consumer-rs256.signet.test\" "
      "algorithm: RS256 rsa_bits: 2048 }\n"
      "scopes { name: \"bench-enterprise-es256\" audience_class: ENTERPRISE "
      "purpose: JWT issuer: \"https://enterprise-es256.signet.test\" "
      "algorithm: ES256 }\n",
      bed.TlsConfig(), "tenants { identity: \"uri:", kTenant,
      "\" scopes: \"bench-consumer-es256\" scopes: \"bench-consumer-rs256\" "
      "scopes: \"bench-enterprise-es256\" }\n",
      "audit_log_path: \"", audit_dir, "/audit.log\"\n",
      "http { listen_address: \"127.0.0.1:0\" public_base_url: "
      "\"https://keys.signet.test\"",
      http_threads != 1 ? absl::StrCat(" threads: ", http_threads) : "",
      " }\n");
}

std::string Indent(absl::string_view text) {
  std::string out;
  for (absl::string_view line : absl::StrSplit(text, "\r\n")) {
    absl::StrAppend(&out, "    ", line, "\n");
  }
  return out;
}

int Run() {
  const int http_threads = std::max(1, absl::GetFlag(FLAGS_http_threads));
  const int rounds = std::max(1, absl::GetFlag(FLAGS_rounds));
  const std::string path = absl::GetFlag(FLAGS_path);

  auto bed = testing::SignetTestBed::Create();
  if (!bed.ok()) {
    std::cerr << "jwks_benchmark: test bed: " << bed.status() << "\n";
    return 1;
  }
  Register((*bed)->hsm().pgid());
  if (Interrupted()) return 130;
  const std::string audit_dir = (*bed)->token().dir() + "/audit";
  mkdir(audit_dir.c_str(), 0700);

  SignetdOptions options;
  options.binary = absl::GetFlag(FLAGS_signetd);
  options.config_text = SignetdConfig(**bed, audit_dir, http_threads);
  auto signetd = SignetdProcess::Start((*bed)->token().dir(), options);
  if (!signetd.ok()) {
    std::cerr << "jwks_benchmark: signetd: " << signetd.status() << "\n";
    return 1;
  }
  Register((*signetd)->pid());
  if (Interrupted()) return 130;
  absl::Cleanup unregister_signetd = [pid = (*signetd)->pid()] {
    Unregister(pid);
  };
  absl::Status ready =
      (*signetd)->WaitForOutput("signetd ready", kStartTimeout);
  if (Interrupted()) return 130;
  if (!ready.ok()) {
    std::cerr << "jwks_benchmark: signetd did not start: " << ready << "\n"
              << (*signetd)->Output();
    return 1;
  }
  absl::StatusOr<int> signetd_port = (*signetd)->WaitForHttpPort(kStartTimeout);
  if (!signetd_port.ok()) {
    std::cerr << "jwks_benchmark: " << signetd_port.status() << "\n";
    return 1;
  }

  // The document, once, from signetd.
  absl::StatusOr<HttpResponse> from_signetd = HttpGet(*signetd_port, path);
  if (!from_signetd.ok() || from_signetd->status != 200) {
    std::cerr << "jwks_benchmark: GET " << path << " from signetd: "
              << (from_signetd.ok() ? from_signetd->head
                                    : from_signetd.status().ToString())
              << "\n";
    return 1;
  }
  const std::string content_type = from_signetd->Header("Content-Type");
  const std::string cache_control = from_signetd->Header("Cache-Control");

  auto nginx = Nginx::Start(path, from_signetd->body, content_type,
                            cache_control, http_threads);
  if (Interrupted()) return 130;
  if (!nginx.ok()) {
    std::cerr << "jwks_benchmark: nginx: " << nginx.status() << "\n";
    return 1;
  }
  absl::StatusOr<HttpResponse> from_nginx = HttpGet((*nginx)->port(), path);
  if (!from_nginx.ok() || from_nginx->status != 200) {
    std::cerr << "jwks_benchmark: GET " << path << " from nginx: "
              << (from_nginx.ok() ? from_nginx->head
                                  : from_nginx.status().ToString())
              << "\n";
    return 1;
  }

  std::cout << "JWKS GET " << path << ": signetd (libmicrohttpd, "
            << http_threads << " HTTP thread" << (http_threads > 1 ? "s" : "")
            << ") vs nginx (static file, worker_processes " << http_threads
            << ")\n";
  std::cout << "  signetd 127.0.0.1:" << *signetd_port << "\n"
            << Indent(from_signetd->head);
  std::cout << "  nginx   127.0.0.1:" << (*nginx)->port() << "\n"
            << Indent(from_nginx->head);
  const bool same_bytes = from_nginx->body == from_signetd->body;
  const bool same_type = from_nginx->Header("Content-Type") == content_type;
  std::cout << "  body: " << from_signetd->body.size() << " bytes, "
            << (same_bytes ? "byte-identical from both"
                           : "DIFFERENT between the two")
            << "; Content-Type " << (same_type ? "equal" : "DIFFERS")
            << "; ETag signetd " << from_signetd->Header("ETag") << ", nginx "
            << from_nginx->Header("ETag") << "\n";
  if (!same_bytes || !same_type || from_nginx->Header("ETag").empty()) {
    std::cerr << "jwks_benchmark: nginx does not serve what signetd serves\n";
    return 1;
  }
  std::cout << absl::StrFormat(
      "  wrk -t%d -c%d -d%ds, %d round(s) alternating signetd/nginx; "
      "%ld CPU(s) online\n\n",
      absl::GetFlag(FLAGS_wrk_threads), absl::GetFlag(FLAGS_connections),
      absl::GetFlag(FLAGS_seconds), rounds, sysconf(_SC_NPROCESSORS_ONLN));
  std::cout << absl::StrFormat("%-6s %-8s %12s %12s %8s %8s %11s %18s\n",
                               "round", "server", "requests/s", "requests",
                               "non-2xx", "errors", "bytes/resp",
                               "server CPU us/req");
  std::cout.flush();

  struct Pair {
    WrkResult signetd;
    WrkResult nginx;
  };
  std::vector<Pair> pairs;
  bool clean = true;
  for (int round = 1; round <= rounds; ++round) {
    Pair pair;
    for (int which = 0; which < 2; ++which) {
      const bool is_signetd = which == 0;
      absl::StatusOr<WrkResult> r =
          is_signetd ? RunWrk(*signetd_port, path, (*signetd)->pid())
                     : RunWrk((*nginx)->port(), path, (*nginx)->pgid());
      if (Interrupted()) return 130;
      if (!r.ok()) {
        std::cerr << "jwks_benchmark: " << r.status() << "\n";
        return 1;
      }
      if (r->non_2xx != 0 || r->socket_errors != 0) clean = false;
      const double cpu_us_per_request =
          r->requests > 0 ? 1e6 * r->server_cpu_seconds / r->requests : 0;
      std::cout << absl::StrFormat(
          "%-6d %-8s %12.0f %12d %8d %8d %11.0f %18.1f\n", round,
          is_signetd ? "signetd" : "nginx", r->requests_per_second, r->requests,
          r->non_2xx, r->socket_errors,
          r->requests_per_second > 0
              ? r->bytes_per_second / r->requests_per_second
              : 0,
          cpu_us_per_request);
      std::cout.flush();
      (is_signetd ? pair.signetd : pair.nginx) = std::move(*r);
    }
    pairs.push_back(std::move(pair));
  }

  double signetd_sum = 0, nginx_sum = 0;
  double signetd_cpu = 0, nginx_cpu = 0;
  int64_t signetd_requests = 0, nginx_requests = 0;
  std::vector<double> round_ratios;
  for (const Pair& p : pairs) {
    signetd_sum += p.signetd.requests_per_second;
    nginx_sum += p.nginx.requests_per_second;
    signetd_cpu += p.signetd.server_cpu_seconds;
    nginx_cpu += p.nginx.server_cpu_seconds;
    signetd_requests += p.signetd.requests;
    nginx_requests += p.nginx.requests;
    round_ratios.push_back(p.nginx.requests_per_second > 0
                               ? p.signetd.requests_per_second /
                                     p.nginx.requests_per_second
                               : 0);
  }
  const double signetd_mean = signetd_sum / pairs.size();
  const double nginx_mean = nginx_sum / pairs.size();
  const double ratio = nginx_mean > 0 ? signetd_mean / nginx_mean : 0;
  std::string per_round;
  for (double r : round_ratios) {
    absl::StrAppend(&per_round, per_round.empty() ? "" : ", ",
                    absl::StrFormat("%.2f", r));
  }
  const double signetd_cpu_per_request =
      signetd_requests > 0 ? signetd_cpu / signetd_requests : 0;
  const double nginx_cpu_per_request =
      nginx_requests > 0 ? nginx_cpu / nginx_requests : 0;
  std::cout << "\n"
            << absl::StrFormat("signetd mean   %10.0f requests/s\n",
                               signetd_mean)
            << absl::StrFormat("nginx mean     %10.0f requests/s\n", nginx_mean)
            << absl::StrFormat(
                   "ratio signetd/nginx  %.2f  (per round: %s)  goal >= %.1f: "
                   "%s\n",
                   ratio, per_round, kGoal, ratio >= kGoal ? "meets" : "MISSES")
            << absl::StrFormat(
                   "CPU per request: signetd %.1f us, nginx %.1f us; "
                   "CPU ratio (nginx/signetd) %.2f\n",
                   1e6 * signetd_cpu_per_request, 1e6 * nginx_cpu_per_request,
                   signetd_cpu_per_request > 0
                       ? nginx_cpu_per_request / signetd_cpu_per_request
                       : 0);
  if (!clean) {
    std::cout << "WARNING: some runs had non-2xx responses or socket errors; "
                 "see the table\n";
  }
  nginx->reset();
  auto code = (*signetd)->Stop(SIGTERM, absl::Seconds(30));
  if (!code.ok() || *code != 0) {
    std::cerr << "jwks_benchmark: signetd did not stop cleanly: "
              << (code.ok() ? absl::StrCat("exit ", *code)
                            : code.status().ToString())
              << "\n";
  }
  return 0;
}

}  // namespace
}  // namespace signet::bench

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  signal(SIGPIPE, SIG_IGN);
  struct sigaction sa = {};
  sa.sa_handler = signet::bench::OnSignal;
  sigemptyset(&sa.sa_mask);
  for (int sig : {SIGINT, SIGTERM, SIGHUP}) sigaction(sig, &sa, nullptr);
  return signet::bench::Run();
}
