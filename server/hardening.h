// Process hardening at signetd start-up (docs/architecture.md, "Principles",
// 2).
#ifndef SIGNET_SERVER_HARDENING_H_
#define SIGNET_SERVER_HARDENING_H_

#include "absl/status/status.h"
#include "absl/strings/string_view.h"

namespace signet::server {

// No core dumps (RLIMIT_CORE 0), not dumpable (PR_SET_DUMPABLE 0, which
// also refuses ptrace attach by non-root), SIGPIPE ignored (a dead HSM
// connection raises it on the next write). INTERNAL if a call fails.
absl::Status HardenProcess();

// Sets the soft open-file limit (RLIMIT_NOFILE) to `wanted`, or to the hard
// limit if that is lower: high enough that a flood of connections meets the
// connection budget (ConnectionAcceptor) rather than the limit, and no
// higher, because every connection the budget admits holds memory gRPC's
// quota does not count (25-41 KB idle; a hard limit of 524,288, systemd's
// default for services, would allow 13-20 GB). Returns the limit now in
// force and, in `before`, the one it replaced.
int SetOpenFileLimit(int wanted, int* before);

// FAILED_PRECONDITION if `maps` (the text of /proc/self/maps) maps a
// SoftHSM library: through the p11-kit boundary, key material must never be
// in signetd's address space.
absl::Status CheckNoHsmLibraryMapped(absl::string_view maps);

// Reads /proc/self/maps and applies CheckNoHsmLibraryMapped.
absl::Status CheckNoHsmLibraryMappedInThisProcess();

}  // namespace signet::server

#endif  // SIGNET_SERVER_HARDENING_H_
