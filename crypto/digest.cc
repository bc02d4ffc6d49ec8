#include "crypto/digest.h"

#include <openssl/err.h>
#include <openssl/evp.h>

#include <string>

#include "absl/strings/str_cat.h"

namespace signet::crypto {
namespace {

// The digests, fetched from the default provider once: the legacy
// EVP_sha256() is fetched again on every use, which made hashing a 370-byte
// audit line 2.7x slower (1.14 vs 0.42 us). Fetched EVP_MDs are immutable
// and safe to share between threads.
const EVP_MD* Fetched(const char* name, const EVP_MD* legacy) {
  EVP_MD* md = EVP_MD_fetch(nullptr, name, nullptr);
  return md != nullptr ? md : legacy;
}
const EVP_MD* Sha256Md() {
  static const EVP_MD* const md = Fetched("SHA256", EVP_sha256());
  return md;
}
const EVP_MD* Sha384Md() {
  static const EVP_MD* const md = Fetched("SHA384", EVP_sha384());
  return md;
}

absl::StatusOr<std::string> Hash(const EVP_MD* md, absl::string_view data) {
  std::string out(static_cast<size_t>(EVP_MD_get_size(md)), '\0');
  unsigned int out_len = 0;
  if (EVP_Digest(data.data(), data.size(),
                 reinterpret_cast<unsigned char*>(out.data()), &out_len, md,
                 nullptr) != 1 ||
      out_len != out.size()) {
    ERR_clear_error();
    return absl::InternalError(
        absl::StrCat("EVP_Digest(", EVP_MD_get0_name(md), ") failed"));
  }
  return out;
}

}  // namespace

absl::StatusOr<std::string> Sha256(absl::string_view data) {
  return Hash(Sha256Md(), data);
}

absl::StatusOr<std::string> Sha384(absl::string_view data) {
  return Hash(Sha384Md(), data);
}

Sha256Hasher::Sha256Hasher() : context_(EVP_MD_CTX_new()) {}

Sha256Hasher::~Sha256Hasher() { EVP_MD_CTX_free(context_); }

absl::Status Sha256Hasher::Hash(absl::string_view data, Digest& out) {
  unsigned int out_len = 0;
  if (context_ == nullptr ||
      EVP_DigestInit_ex2(context_, Sha256Md(), nullptr) != 1 ||
      EVP_DigestUpdate(context_, data.data(), data.size()) != 1 ||
      EVP_DigestFinal_ex(context_, out.data(), &out_len) != 1 ||
      out_len != out.size()) {
    ERR_clear_error();
    return absl::InternalError("SHA-256 failed (OpenSSL)");
  }
  return absl::OkStatus();
}

}  // namespace signet::crypto
