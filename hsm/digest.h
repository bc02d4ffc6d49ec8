// Host-side message digests for the HSM signing algorithms.
//
// Every algorithm in hsm/algorithm.h signs a digest computed on the host (the
// HSM never sees the message): which hash an algorithm signs (the hashing
// itself is crypto/digest.h's) and, for RS256, the DigestInfo wrapping that
// CKM_RSA_PKCS expects are chosen here.
//
// Thread-safety: all functions are stateless and safe to call concurrently.
#ifndef SIGNET_HSM_DIGEST_H_
#define SIGNET_HSM_DIGEST_H_

#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "crypto/digest.h"
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
