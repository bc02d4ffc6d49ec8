// A caller's identity, from its verified mTLS client certificate.
//
// Identities are typed so one kind cannot pose as another
// (docs/architecture.md, "Scopes, tenants and identities"):
// "uri:" + the certificate's single URI SAN (SPIFFE style), else "cn:" + its
// subject CN. A certificate with several URI SANs, or without the clientAuth
// extended key usage, is refused: the TLS handshake accepts a certificate
// with no extended key usage at all, so the server checks it here.
// Thread-safe: pure functions.
#ifndef SIGNET_SERVER_IDENTITY_H_
#define SIGNET_SERVER_IDENTITY_H_

#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace signet::server {

// PERMISSION_DENIED when the certificate cannot identify a caller: the
// message says why and what the certificate said (its subject and URI SANs,
// quoted and cut short), for the refusal's answer and audit line.
// INVALID_ARGUMENT when `pem` is not a certificate.
absl::StatusOr<std::string> IdentityFromCertificatePem(absl::string_view pem);

}  // namespace signet::server

#endif  // SIGNET_SERVER_IDENTITY_H_
