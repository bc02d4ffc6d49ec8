// Host-side message digests for the HSM signing algorithms.
//
// Every algorithm in hsm/algorithm.h signs a digest computed on the host (the
// HSM never sees the message), so the hash and, for RS256, the DigestInfo
// wrapping that CKM_RSA_PKCS expects are produced here.
//
// Thread-safety: all functions are stateless and safe to call concurrently.
#ifndef SIGNET_HSM_DIGEST_H_
#define SIGNET_HSM_DIGEST_H_

#include <openssl/types.h>

#include <array>
#include <cstdint>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "hsm/algorithm.h"

namespace signet::hsm {

// The host-side hash of `data` for `algorithm`: SHA-256 (FIPS 180-4) for
// ES256, RS256 and PS256, SHA-384 for ES384. The result is the raw digest
// (DigestLength(algorithm) bytes).
//
// INVALID_ARGUMENT for a value outside the SignatureAlgorithm enum; INTERNAL
// if OpenSSL fails (allocation failure).
absl::StatusOr<std::string> DigestFor(SignatureAlgorithm algorithm,
                                      absl::string_view data);

// SHA-256 of `data` (32 bytes), for callers that need the hash itself rather
// than an algorithm's digest (e.g. a JWKS document's ETag).
// INTERNAL if OpenSSL fails.
absl::StatusOr<std::string> Sha256(absl::string_view data);

// SHA-256 of many inputs one after another through one reused OpenSSL
// context. Sha256() sets up and frees a context on every call, which costs
// several times the hash of a short input; verifying an audit log hashes
// every line (about 370 bytes) and uses this instead.
//
// Thread-safety: not thread-compatible across threads at once; use one per
// thread.
class Sha256Hasher {
 public:
  using Digest = std::array<uint8_t, 32>;

  Sha256Hasher();
  ~Sha256Hasher();
  Sha256Hasher(const Sha256Hasher&) = delete;
  Sha256Hasher& operator=(const Sha256Hasher&) = delete;

  // The digest of `data` into `out`. INTERNAL if OpenSSL fails (allocation
  // failure).
  absl::Status Hash(absl::string_view data, Digest& out);

 private:
  EVP_MD_CTX* context_;  // owned
};

// The bytes CKM_RSA_PKCS signs for RS256: the DER encoding of
//   DigestInfo ::= SEQUENCE { AlgorithmIdentifier { id-sha256, NULL },
//                             OCTET STRING digest }
// (RFC 8017 section 9.2, step 2), i.e. the fixed 19-byte prefix
// 3031300d060960864801650304020105000420 followed by `digest`.
//
// INVALID_ARGUMENT unless `digest` is exactly 32 bytes.
absl::StatusOr<std::string> Sha256DigestInfo(absl::string_view digest);

}  // namespace signet::hsm

#endif  // SIGNET_HSM_DIGEST_H_
