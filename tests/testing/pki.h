// A throw-away X.509 PKI for mTLS integration tests, built with the openssl
// command-line tool (run through RunProcess): a CA, the certificates it
// issues, revocation and CRLs in the hashed layout that gRPC's CRL directory
// (TlsServerCredentialsOptions::set_crl_directory) reads.
//
// Layout of a CA's directory <dir>/<name>/ (mode 0755, so the service users
// a test runs signetd as can reach it):
//
//   openssl.cnf            0644  a minimal `openssl ca` configuration
//   ca.key                 0600  the CA's EC P-256 key
//   ca.pem                 0644  self-signed, 10 years, CA:TRUE (critical),
//                                keyUsage keyCertSign, cRLSign (critical)
//   index.txt, serial,     0644  `openssl ca`'s database: every issued
//   crlnumber                    certificate and its revocation
//   newcerts/                    `openssl ca`'s copies of issued certificates
//   certs/<name>.pem       0644  issued certificates
//   certs/<name>.key       0644  their EC P-256 keys (PKCS#8 PEM)
//   work/                        CSRs, extension files, CRLs being written
//
// Issued keys are world-readable on purpose: they are TLS transport keys of a
// temporary test PKI, guard nothing, and a signetd under test running as the
// `signet` user must read its server key. They are never signing keys.
//
// Each CA's subject carries a random organizational unit, so two test CAs
// (even with the same name) never share an OpenSSL subject hash, and their
// CRLs never collide in one CRL directory.
//
// The directory is the caller's: TestCa does not remove it.
//
// Thread-compatible: `openssl ca` keeps its database in files, so calls that
// issue, revoke or write CRLs on one TestCa must not run concurrently.
#ifndef SIGNET_TESTS_TESTING_PKI_H_
#define SIGNET_TESTS_TESTING_PKI_H_

#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace signet::testing {

// What to put in an issued certificate. Every certificate also gets
// basicConstraints CA:FALSE (critical; see `ca`), keyUsage digitalSignature
// (critical), and subject/authority key identifiers.
struct CertOptions {
  // Subject CN; empty means the certificate's name (the argument of Issue).
  // At most 64 bytes, any but NUL (control characters included).
  std::string cn;
  // subjectAltName entries, in this order: URIs, DNS names, IP addresses
  // (IPv4 or IPv6 text form). All empty means no subjectAltName at all.
  std::vector<std::string> uri_sans;
  std::vector<std::string> dns_sans;
  std::vector<std::string> ip_sans;
  // extendedKeyUsage: "clientAuth", "serverAuth", "clientAuth,serverAuth",
  // or "" for no extendedKeyUsage extension at all (which the TLS handshake
  // accepts as any purpose; signetd must refuse such a client itself).
  // Other OpenSSL short names (codeSigning, ...) make certificates with the
  // wrong purpose.
  std::string eku;
  // basicConstraints CA:TRUE (and keyUsage keyCertSign besides): a CA
  // certificate, which signetd refuses as a client's.
  bool ca = false;
};

class TestCa {
 public:
  // A certificate issued by this CA.
  struct Issued {
    std::string cert_path;
    std::string key_path;
    std::string cert_pem;
    std::string key_pem;
    // The serial number as `openssl x509 -serial` prints it (upper-case hex).
    std::string serial;
  };

  // Creates <dir>/<name>/ (dir must exist; <dir>/<name> must not) and in it
  // an EC P-256 CA with subject "O=signet tests, OU=<random>, CN=<name>".
  // Errors: INVALID_ARGUMENT for a name that is not 1 to 64 of
  // [A-Za-z0-9._-] (or starts with '.') or an empty dir or one with control
  // characters; ALREADY_EXISTS when <dir>/<name> exists;
  // NOT_FOUND / PERMISSION_DENIED / INTERNAL from the file system; INTERNAL
  // when openssl fails (the message carries its output).
  static absl::StatusOr<std::unique_ptr<TestCa>> Create(absl::string_view dir,
                                                        absl::string_view name);

  TestCa(const TestCa&) = delete;
  TestCa& operator=(const TestCa&) = delete;

  // <dir>/<name>
  const std::string& dir() const { return dir_; }
  // The CA certificate (PEM file and contents): what a peer trusts.
  const std::string& cert_path() const { return cert_path_; }
  const std::string& cert_pem() const { return cert_pem_; }
  // `openssl x509 -hash` of the CA certificate (8 hex digits): the name,
  // plus ".r0", of the CRL that WriteCrl writes.
  const std::string& subject_hash() const { return subject_hash_; }

  // Issues a certificate with a new EC P-256 key, valid from now for 365
  // days, as certs/<name>.pem and certs/<name>.key. Errors: INVALID_ARGUMENT
  // for a bad name (as in Create), an unknown EKU name (known: clientAuth,
  // serverAuth, codeSigning, emailProtection, timeStamping, OCSPSigning),
  // an IP SAN that is not an address, an empty SAN, or a CN (at most 64
  // bytes) or SAN with a control character; ALREADY_EXISTS when this CA
  // already issued a certificate of that name; INTERNAL when openssl fails
  // (the message carries its output).
  absl::StatusOr<Issued> Issue(absl::string_view name,
                               const CertOptions& options);

  // A server certificate: CN localhost, SANs DNS:localhost, IP:127.0.0.1 and
  // IP:::1, extendedKeyUsage serverAuth.
  absl::StatusOr<Issued> IssueServer(absl::string_view name);

  // Marks `cert` revoked in this CA's database; it is in every CRL that
  // WriteCrl writes from then on. Errors: INVALID_ARGUMENT for a
  // certificate this CA did not issue (`openssl ca -revoke` alone would add
  // it to the database); FAILED_PRECONDITION when it is already revoked;
  // INTERNAL when openssl fails.
  absl::Status Revoke(const Issued& cert);

  // Writes a current CRL of this CA (valid from now for 30 days, with a CRL
  // number and the CA's key identifier) as <crl_dir>/<subject_hash()>.r0,
  // the hashed name OpenSSL's directory lookup (and so gRPC's
  // set_crl_directory) expects, replacing an earlier one atomically.
  // crl_dir is created (0755) if it does not exist; its parent must. Errors:
  // INVALID_ARGUMENT for an empty crl_dir; file-system errors as in Create;
  // INTERNAL when openssl fails.
  absl::Status WriteCrl(absl::string_view crl_dir);

 private:
  TestCa() = default;

  // Runs `openssl args...` (without OPENSSL_CONF from this process, so a
  // test's TLS-only configuration does not leak in). INTERNAL with the
  // output when it fails.
  static absl::StatusOr<std::string> RunOpenssl(std::vector<std::string> args);

  std::string dir_;
  std::string config_path_;
  std::string key_path_;
  std::string cert_path_;
  std::string cert_pem_;
  std::string subject_hash_;
};

}  // namespace signet::testing

#endif  // SIGNET_TESTS_TESTING_PKI_H_
