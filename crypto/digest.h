// SHA-256 and SHA-384 (FIPS 180-4) on the host, the one place signet hashes:
// the digests the HSM signs (hsm/digest.h maps an algorithm to its hash),
// the ones the reference verifier checks, RFC 7638 thumbprints (jose/jwk.h),
// a JWKS document's ETag and the audit log's hash chain.
//
// Errors are INTERNAL: OpenSSL hashing fails only when it cannot allocate.
// OpenSSL's error queue is cleared before an error is returned.
//
// Thread-safety: the functions are safe to call concurrently; a Sha256Hasher
// is thread-compatible (one per thread).
#ifndef SIGNET_CRYPTO_DIGEST_H_
#define SIGNET_CRYPTO_DIGEST_H_

#include <openssl/types.h>

#include <array>
#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace signet::crypto {

// The SHA-256 of `data`, 32 bytes.
absl::StatusOr<std::string> Sha256(absl::string_view data);

// The SHA-384 of `data`, 48 bytes.
absl::StatusOr<std::string> Sha384(absl::string_view data);

// SHA-256 of many inputs one after another through one reused OpenSSL
// context. Sha256() sets up and frees a context on every call, which costs
// several times the hash of a short input; verifying an audit log hashes
// every line (about 370 bytes) and uses this instead.
class Sha256Hasher {
 public:
  using Digest = std::array<uint8_t, 32>;

  Sha256Hasher();
  ~Sha256Hasher();
  Sha256Hasher(const Sha256Hasher&) = delete;
  Sha256Hasher& operator=(const Sha256Hasher&) = delete;

  // The digest of `data` into `out`. INTERNAL if OpenSSL fails.
  absl::Status Hash(absl::string_view data, Digest& out);

 private:
  EVP_MD_CTX* context_;  // owned
};

}  // namespace signet::crypto

#endif  // SIGNET_CRYPTO_DIGEST_H_
