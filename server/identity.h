// A caller's identity, from its verified mTLS client certificate.
//
// Identities are typed so one kind cannot pose as another (design.md):
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

namespace grpc {
class AuthContext;
}

namespace signet::server {

// PERMISSION_DENIED with the reason when the certificate cannot identify a
// caller; INVALID_ARGUMENT when `pem` is not a certificate.
absl::StatusOr<std::string> IdentityFromCertificatePem(absl::string_view pem);

// The identity of a TLS peer (its "x509_pem_cert" property).
// UNAUTHENTICATED when the peer presented no certificate.
absl::StatusOr<std::string> IdentityFromAuthContext(
    const grpc::AuthContext& context);

}  // namespace signet::server

#endif  // SIGNET_SERVER_IDENTITY_H_
