// A PKCS#11 user PIN held in a zeroizing buffer.
//
// The PIN comes from a file (its first line) or an environment variable,
// never from a flag. The bytes are wiped (OPENSSL_cleanse) when the Pin is
// destroyed or moved from; there is no stream operator, no accessor that
// returns a std::string, and no error message ever contains the PIN.
// Thread-compatible: immutable after construction.
#ifndef SIGNET_HSM_PIN_H_
#define SIGNET_HSM_PIN_H_

#include <cstddef>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace signet::hsm {

class Pin {
 public:
  // Reads the first line of `path` (trailing CR/LF dropped). NOT_FOUND when
  // the file is missing, PERMISSION_DENIED when it cannot be read,
  // INVALID_ARGUMENT when it is empty or longer than 256 bytes. The file
  // should be readable by signetd's user only; a group- or world-readable
  // file is refused with FAILED_PRECONDITION.
  static absl::StatusOr<Pin> FromFile(absl::string_view path);

  // Reads the environment variable `name`. NOT_FOUND when unset or empty.
  static absl::StatusOr<Pin> FromEnv(absl::string_view name);

  // For tests and for callers that already hold the bytes in a wiped buffer.
  static Pin FromBytes(absl::string_view bytes);

  Pin(Pin&& other) noexcept;
  Pin& operator=(Pin&& other) noexcept;
  Pin(const Pin&) = delete;
  Pin& operator=(const Pin&) = delete;
  ~Pin();

  // Pointer and length for C_Login only.
  const unsigned char* data() const { return bytes_.data(); }
  size_t size() const { return bytes_.size(); }

 private:
  Pin() = default;
  void Wipe();

  std::vector<unsigned char> bytes_;
};

}  // namespace signet::hsm

#endif  // SIGNET_HSM_PIN_H_
