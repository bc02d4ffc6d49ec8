// Reading a small file whole (configuration, certificates, a TLS private
// key) into one string and nothing else: no stream buffers or intermediate
// copies are left behind, so a caller that zeroes the result
// (OPENSSL_cleanse) zeroes the only copy this code made.
#ifndef SIGNET_BASE_FILE_H_
#define SIGNET_BASE_FILE_H_

#include <cstddef>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace signet::base {

// The directory that holds `path`: "." when `path` has no slash, "/" when
// its only slash is the first character, else everything before the last
// slash ("a/b/c" -> "a/b").
std::string ParentDirectory(absl::string_view path);

// The last component of `path`: everything after its last slash, or all of
// it when it has none ("a/b/c" -> "c").
absl::string_view BaseName(absl::string_view path);

// The bytes of the file at `path`, at most `max_bytes`. `what` names the
// file in errors (e.g. "tls.key_file"). NOT_FOUND, PERMISSION_DENIED,
// FAILED_PRECONDITION (not a regular file, or larger than max_bytes), or
// UNAVAILABLE (a read error), each naming `what` and the path.
absl::StatusOr<std::string> ReadSmallFile(const std::string& path,
                                          absl::string_view what,
                                          size_t max_bytes = 1 << 20);

// Syncs the directory that holds `path` (fsync), so that a file created,
// renamed or removed there survives a crash: 0, or the errno of the open
// or the fsync that failed, for the caller to say what it means for it.
int SyncParentDirectory(absl::string_view path);

// Replaces the file at `path` with `content` so that a crash at any moment
// leaves either the old file or the new one, whole: written to
// "<path>.tmp" (mode `mode`), synced, renamed over `path`, and the
// directory synced. For small state files signetd keeps (never a secret:
// the temporary file is not zeroed). PERMISSION_DENIED or UNAVAILABLE
// (no space, an I/O error), naming `what` and the path; the temporary file
// is removed on failure. When only the directory sync fails, the new file
// is in place (UNAVAILABLE, saying so): callers must not say it was not
// written.
absl::Status ReplaceFileDurably(const std::string& path,
                                absl::string_view content,
                                absl::string_view what, int mode = 0600);

}  // namespace signet::base

#endif  // SIGNET_BASE_FILE_H_
