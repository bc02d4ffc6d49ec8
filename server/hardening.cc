#include "server/hardening.h"

#include <signal.h>
#include <sys/prctl.h>
#include <sys/resource.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>
#include <string>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"

namespace signet::server {

absl::Status HardenProcess() {
  struct rlimit no_core = {0, 0};
  if (setrlimit(RLIMIT_CORE, &no_core) != 0) {
    return absl::InternalError(
        absl::StrCat("setrlimit(RLIMIT_CORE): ", strerror(errno)));
  }
  if (prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0) {
    return absl::InternalError(
        absl::StrCat("prctl(PR_SET_DUMPABLE): ", strerror(errno)));
  }
  if (signal(SIGPIPE, SIG_IGN) == SIG_ERR) {
    return absl::InternalError("signal(SIGPIPE, SIG_IGN) failed");
  }
  return absl::OkStatus();
}

int SetOpenFileLimit(int wanted, int* before) {
  struct rlimit limit;
  if (getrlimit(RLIMIT_NOFILE, &limit) != 0) {
    *before = -1;
    return -1;
  }
  auto as_int = [](rlim_t v) {
    return v == RLIM_INFINITY || v > (1u << 30) ? (1 << 30)
                                                : static_cast<int>(v);
  };
  *before = as_int(limit.rlim_cur);
  const rlim_t target = std::min<rlim_t>(
      limit.rlim_max, static_cast<rlim_t>(std::max(wanted, 0)));
  if (limit.rlim_cur != target) {
    limit.rlim_cur = target;
    if (setrlimit(RLIMIT_NOFILE, &limit) != 0) return *before;
  }
  return as_int(limit.rlim_cur);
}

absl::Status CheckNoHsmLibraryMapped(absl::string_view maps) {
  for (absl::string_view line : absl::StrSplit(maps, '\n')) {
    if (absl::StrContains(line, "libsofthsm")) {
      return absl::FailedPreconditionError(absl::StrCat(
          "SoftHSM is mapped into signetd (", line,
          "): key material could end up in this process's memory; the "
          "PKCS#11 module must run behind `p11-kit server`"));
    }
  }
  return absl::OkStatus();
}

absl::Status CheckNoHsmLibraryMappedInThisProcess() {
  std::ifstream in("/proc/self/maps");
  if (!in) return absl::InternalError("cannot read /proc/self/maps");
  std::stringstream buf;
  buf << in.rdbuf();
  return CheckNoHsmLibraryMapped(buf.str());
}

}  // namespace signet::server
