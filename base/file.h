// Reading a small file whole (configuration, certificates, a TLS private
// key) into one string and nothing else: no stream buffers or intermediate
// copies are left behind, so a caller that zeroes the result
// (OPENSSL_cleanse) zeroes the only copy this code made.
#ifndef SIGNET_BASE_FILE_H_
#define SIGNET_BASE_FILE_H_

#include <cstddef>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace signet::base {

// The bytes of the file at `path`, at most `max_bytes`. `what` names the
// file in errors (e.g. "tls.key_file"). NOT_FOUND, PERMISSION_DENIED,
// FAILED_PRECONDITION (not a regular file, or larger than max_bytes), or
// UNAVAILABLE (a read error), each naming `what` and the path.
absl::StatusOr<std::string> ReadSmallFile(const std::string& path,
                                          absl::string_view what,
                                          size_t max_bytes = 1 << 20);

}  // namespace signet::base

#endif  // SIGNET_BASE_FILE_H_
