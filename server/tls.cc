#include "server/tls.h"

#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace signet::server {
namespace {

constexpr char kTls13Only[] =
    "openssl_conf = signet_openssl_init\n"
    "[signet_openssl_init]\n"
    "ssl_conf = signet_ssl\n"
    "[signet_ssl]\n"
    "system_default = signet_system_default\n"
    "[signet_system_default]\n"
    "Protocol = -ALL, TLSv1.3\n";

struct BioFree {
  void operator()(BIO* b) const { BIO_free(b); }
};
struct X509Free {
  void operator()(X509* x) const { X509_free(x); }
};
struct CrlFree {
  void operator()(X509_CRL* c) const { X509_CRL_free(c); }
};

std::string SubjectOf(X509* cert) {
  char buf[256];
  X509_NAME_oneline(X509_get_subject_name(cert), buf, sizeof(buf));
  return buf;
}

std::unique_ptr<X509_CRL, CrlFree> LoadCrl(const std::string& path) {
  std::unique_ptr<BIO, BioFree> bio(BIO_new_file(path.c_str(), "rb"));
  if (bio == nullptr) return nullptr;
  X509_CRL* crl = PEM_read_bio_X509_CRL(bio.get(), nullptr, nullptr, nullptr);
  if (crl == nullptr) {
    BIO_reset(bio.get());
    crl = d2i_X509_CRL_bio(bio.get(), nullptr);
  }
  return std::unique_ptr<X509_CRL, CrlFree>(crl);
}

}  // namespace

void RestrictToTls13() {
  int fd = memfd_create("signet-openssl.cnf", 0);
  if (fd < 0) return;
  ssize_t n = write(fd, kTls13Only, sizeof(kTls13Only) - 1);
  if (n != static_cast<ssize_t>(sizeof(kTls13Only) - 1)) {
    close(fd);
    return;
  }
  // The descriptor stays open for the life of the process.
  setenv("OPENSSL_CONF", absl::StrCat("/proc/self/fd/", fd).c_str(), 1);
}

absl::Status CheckCrlDirectory(absl::string_view ca_pem,
                               absl::string_view directory) {
  std::unique_ptr<BIO, BioFree> bio(
      BIO_new_mem_buf(ca_pem.data(), static_cast<int>(ca_pem.size())));
  std::vector<std::unique_ptr<X509, X509Free>> cas;
  while (X509* ca = PEM_read_bio_X509(bio.get(), nullptr, nullptr, nullptr)) {
    cas.emplace_back(ca);
  }
  ERR_clear_error();
  if (cas.empty()) {
    return absl::FailedPreconditionError(
        "tls.client_ca_file holds no certificate");
  }
  for (const auto& ca : cas) {
    const unsigned long hash = X509_NAME_hash_ex(
        X509_get_subject_name(ca.get()), nullptr, nullptr, nullptr);
    bool current = false;
    std::string tried;
    for (int i = 0; i < 10 && !current; ++i) {
      std::string path =
          absl::StrFormat("%s/%08lx.r%d", std::string(directory), hash, i);
      auto crl = LoadCrl(path);
      if (crl == nullptr) continue;
      tried = path;
      EVP_PKEY* ca_key = X509_get0_pubkey(ca.get());
      const ASN1_TIME* next = X509_CRL_get0_nextUpdate(crl.get());
      current = X509_NAME_cmp(X509_CRL_get_issuer(crl.get()),
                              X509_get_subject_name(ca.get())) == 0 &&
                ca_key != nullptr && X509_CRL_verify(crl.get(), ca_key) == 1 &&
                next != nullptr && X509_cmp_current_time(next) > 0;
    }
    ERR_clear_error();
    if (!current) {
      return absl::FailedPreconditionError(absl::StrFormat(
          "tls.crl_directory %s has no current CRL for client CA %s (expected "
          "%08lx.r0, signed by that CA, nextUpdate in the future%s): gRPC "
          "would "
          "then accept revoked client certificates, so signetd refuses to "
          "start",
          std::string(directory), SubjectOf(ca.get()), hash,
          tried.empty() ? "" : "; " + tried + " is not"));
    }
  }
  return absl::OkStatus();
}

}  // namespace signet::server
