// TLS policy for signetd's own transport (never signing keys).
#ifndef SIGNET_SERVER_TLS_H_
#define SIGNET_SERVER_TLS_H_

#include "absl/status/status.h"
#include "absl/strings/string_view.h"

namespace signet::server {

// Points OPENSSL_CONF at an in-memory configuration whose system_default
// section is "Protocol = -ALL, TLSv1.3": gRPC 1.51 has no minimum-version
// setting and overrides MinProtocol, but this makes OpenSSL refuse TLS 1.2.
// Call first thing in main(), before OpenSSL is initialized.
void RestrictToTls13();

// gRPC's CRL directory check fails open when the directory is empty or its
// files are not hashed, so signetd checks first: every CA certificate in
// `ca_pem` must have a current CRL (<subject hash>.r<n>, PEM or DER) in
// `directory`, issued and signed by that CA, whose nextUpdate is in the
// future. FAILED_PRECONDITION naming the CA otherwise.
absl::Status CheckCrlDirectory(absl::string_view ca_pem,
                               absl::string_view directory);

}  // namespace signet::server

#endif  // SIGNET_SERVER_TLS_H_
