#include "server/identity.h"

#include <openssl/bio.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "base/quote.h"
#include "base/utf8.h"

namespace signet::server {

using base::Quote;
namespace {

struct BioFree {
  void operator()(BIO* b) const { BIO_free(b); }
};
struct X509Free {
  void operator()(X509* x) const { X509_free(x); }
};
struct GeneralNamesFree {
  void operator()(GENERAL_NAMES* n) const { GENERAL_NAMES_free(n); }
};

}  // namespace

namespace {

// The subject as one line (RFC 2253), cut short.
std::string SubjectLine(X509* cert) {
  std::unique_ptr<BIO, BioFree> out(BIO_new(BIO_s_mem()));
  if (out == nullptr) return "?";
  X509_NAME_print_ex(out.get(), X509_get_subject_name(cert), 0,
                     XN_FLAG_RFC2253);
  char* data = nullptr;
  long len = BIO_get_mem_data(out.get(), &data);
  return std::string(data, len > 0 ? static_cast<size_t>(len) : 0);
}

// What a refused certificate said, for the refusal's message and audit line:
// its subject and URI SANs, each quoted and cut short.
std::string Described(X509* cert, const std::vector<std::string>& uris) {
  constexpr size_t kMaxUrisShown = 4;
  std::vector<std::string> shown;
  for (size_t i = 0; i < uris.size() && i < kMaxUrisShown; ++i) {
    shown.push_back(Quote(uris[i]));
  }
  if (uris.size() > kMaxUrisShown) {
    shown.push_back(absl::StrCat("and ", uris.size() - kMaxUrisShown, " more"));
  }
  return absl::StrCat("; the certificate has subject ",
                      Quote(SubjectLine(cert), 128), " and URI SANs [",
                      absl::StrJoin(shown, ", "), "]");
}

// A character RFC 3986 allows in a URI: unreserved, reserved, or '%' (of
// a percent-encoding).
bool IsUriCharacter(unsigned char c) {
  return absl::ascii_isalnum(c) ||
         absl::string_view("-._~:/?#[]@!$&'()*+,;=%")
                 .find(static_cast<char>(c)) != absl::string_view::npos;
}

// Whether text[i], a '%', is followed by two hex digits.
bool PercentEncodingAt(absl::string_view text, size_t i) {
  return i + 2 < text.size() &&
         absl::ascii_isxdigit(static_cast<unsigned char>(text[i + 1])) &&
         absl::ascii_isxdigit(static_cast<unsigned char>(text[i + 2]));
}

absl::Status Refused(X509* cert, const std::vector<std::string>& uris,
                     absl::string_view why) {
  return absl::PermissionDeniedError(
      absl::StrCat("client certificate refused: ", why, Described(cert, uris)));
}

}  // namespace

absl::StatusOr<std::string> IdentityFromCertificatePem(absl::string_view pem) {
  std::unique_ptr<BIO, BioFree> bio(
      BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size())));
  if (bio == nullptr) return absl::InternalError("BIO_new_mem_buf");
  std::unique_ptr<X509, X509Free> cert(
      PEM_read_bio_X509(bio.get(), nullptr, nullptr, nullptr));
  if (cert == nullptr) {
    return absl::InvalidArgumentError("the peer certificate is not PEM X.509");
  }
  std::unique_ptr<GENERAL_NAMES, GeneralNamesFree> names(
      static_cast<GENERAL_NAMES*>(X509_get_ext_d2i(
          cert.get(), NID_subject_alt_name, nullptr, nullptr)));
  std::vector<std::string> uris;
  if (names != nullptr) {
    for (int i = 0; i < sk_GENERAL_NAME_num(names.get()); ++i) {
      const GENERAL_NAME* name = sk_GENERAL_NAME_value(names.get(), i);
      if (name->type != GEN_URI) continue;
      const ASN1_IA5STRING* uri = name->d.uniformResourceIdentifier;
      uris.emplace_back(
          reinterpret_cast<const char*>(ASN1_STRING_get0_data(uri)),
          ASN1_STRING_length(uri));
    }
  }
  // X509_get_extended_key_usage answers UINT32_MAX when the extension is
  // absent: "any" to OpenSSL, but not a client certificate to us.
  const uint32_t eku = X509_get_extended_key_usage(cert.get());
  if (eku == UINT32_MAX || (eku & XKU_SSL_CLIENT) == 0) {
    return Refused(cert.get(), uris,
                   "it lacks the clientAuth extended key usage");
  }
  // A CA certificate is not a client's (SPIRE refuses them too): a tenant
  // holding one could issue itself more, and it would be one key for
  // two jobs.
  if ((X509_get_extension_flags(cert.get()) & EXFLAG_CA) != 0) {
    return Refused(cert.get(), uris,
                   "it is a CA certificate (basicConstraints CA:TRUE); a "
                   "client presents a leaf certificate");
  }
  if (uris.size() > 1) {
    return Refused(cert.get(), uris,
                   absl::StrCat("it has ", uris.size(),
                                " URI SANs; exactly one is allowed so the "
                                "identity is unambiguous"));
  }
  if (uris.size() == 1) {
    if (uris[0].empty()) {
      return Refused(cert.get(), uris, "its URI SAN is malformed");
    }
    // Only the characters RFC 3986 allows in a URI (a thirteenth outside
    // attack had a SAN with a newline, quotes and backslashes taken as an
    // identity, while one with a NUL was refused).
    const std::string& uri = uris[0];
    for (size_t i = 0; i < uri.size(); ++i) {
      const unsigned char c = static_cast<unsigned char>(uri[i]);
      if (!IsUriCharacter(c)) {
        return Refused(
            cert.get(), uris,
            absl::StrFormat("its URI SAN is not a URI (RFC 3986): byte 0x%02x "
                            "at offset %d is not allowed in one",
                            c, i));
      }
      if (c == '%' && !PercentEncodingAt(uri, i)) {
        return Refused(
            cert.get(), uris,
            absl::StrFormat("its URI SAN is not a URI (RFC 3986): the '%%' at "
                            "offset %d does not begin a percent-encoding "
                            "(%%HH)",
                            i));
      }
    }
    return absl::StrCat("uri:", uris[0]);
  }
  X509_NAME* subject = X509_get_subject_name(cert.get());
  int idx = X509_NAME_get_index_by_NID(subject, NID_commonName, -1);
  if (idx < 0 ||
      X509_NAME_get_index_by_NID(subject, NID_commonName, idx) >= 0) {
    return Refused(cert.get(), uris,
                   "it has neither a URI SAN nor exactly one subject CN");
  }
  const ASN1_STRING* cn =
      X509_NAME_ENTRY_get_data(X509_NAME_get_entry(subject, idx));
  unsigned char* utf8 = nullptr;
  int len = ASN1_STRING_to_UTF8(&utf8, cn);
  if (len <= 0) {
    return Refused(cert.get(), uris, "its CN is unreadable");
  }
  std::string value(reinterpret_cast<char*>(utf8), len);
  OPENSSL_free(utf8);
  // A name is UTF-8 (a BMPString can hold lone surrogates) without control
  // characters: a newline or an escape sequence in an identity forges log
  // lines and confuses whoever reads them (the URI SAN check above, for
  // the CN; quotes and backslashes stay, as in "O'Brien").
  if (std::optional<std::string> error = base::FindUtf8Error(value)) {
    return Refused(cert.get(), uris,
                   absl::StrCat("its CN is not UTF-8 at ", *error));
  }
  for (size_t i = 0; i < value.size(); ++i) {
    const unsigned char c = static_cast<unsigned char>(value[i]);
    // C0 and DEL; C1 (U+0080..U+009F) is 0xC2 0x80..0x9F in UTF-8.
    const bool c1 = c == 0xC2 && i + 1 < value.size() &&
                    static_cast<unsigned char>(value[i + 1]) <= 0x9F;
    if (c < 0x20 || c == 0x7F || c1) {
      const unsigned code_point =
          c1 ? static_cast<unsigned char>(value[i + 1]) : c;
      return Refused(
          cert.get(), uris,
          absl::StrFormat("its CN holds the control character U+%04X at byte "
                          "offset %d; a name has none",
                          code_point, i));
    }
  }
  return absl::StrCat("cn:", value);
}

}  // namespace signet::server
