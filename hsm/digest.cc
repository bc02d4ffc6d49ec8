#include "hsm/digest.h"

#include <string>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "crypto/digest.h"

namespace signet::hsm {
namespace {

// DER of SEQUENCE { SEQUENCE { OID 2.16.840.1.101.3.4.2.1, NULL },
// OCTET STRING (32 bytes) } up to the digest itself (RFC 8017 section 9.2,
// note 1).
constexpr char kSha256DigestInfoPrefix[] =
    "\x30\x31\x30\x0d\x06\x09\x60\x86\x48\x01\x65\x03\x04\x02\x01\x05\x00\x04"
    "\x20";
constexpr size_t kSha256Length = 32;

}  // namespace

absl::StatusOr<std::string> DigestFor(SignatureAlgorithm algorithm,
                                      absl::string_view data) {
  switch (algorithm) {
    case SignatureAlgorithm::kEcdsaP256Sha256:
    case SignatureAlgorithm::kRsaPkcs1Sha256:
    case SignatureAlgorithm::kRsaPssSha256:
      return crypto::Sha256(data);
    case SignatureAlgorithm::kEcdsaP384Sha384:
      return crypto::Sha384(data);
  }
  return absl::InvalidArgumentError(absl::StrCat(
      "DigestFor: unknown signature algorithm ", static_cast<int>(algorithm)));
}

absl::StatusOr<std::string> Sha256DigestInfo(absl::string_view digest) {
  if (digest.size() != kSha256Length) {
    return absl::InvalidArgumentError(absl::StrCat(
        "Sha256DigestInfo: digest must be 32 bytes, got ", digest.size()));
  }
  return absl::StrCat(absl::string_view(kSha256DigestInfoPrefix,
                                        sizeof(kSha256DigestInfoPrefix) - 1),
                      digest);
}

}  // namespace signet::hsm
