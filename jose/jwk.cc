#include "jose/jwk.h"

#include <openssl/evp.h>

#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "base/base64url.h"
#include "base/status_macros.h"
#include "crypto/digest.h"
#include "crypto/public_keys.h"

namespace signet::jose {

absl::StatusOr<JwkMembers> JwkOf(const EVP_PKEY* key) {
  SIGNET_ASSIGN_OR_RETURN(crypto::PublicComponents components,
                          crypto::ComponentsOf(key));
  JwkMembers jwk;
  if (components.curve.has_value()) {
    jwk.kty = "EC";
    jwk.crv = crypto::InfoOf(*components.curve).jwk_crv;
    jwk.x = base::Base64UrlEncode(components.x);
    jwk.y = base::Base64UrlEncode(components.y);
  } else {
    jwk.kty = "RSA";
    jwk.n = base::Base64UrlEncode(components.n);
    jwk.e = base::Base64UrlEncode(components.e);
  }
  return jwk;
}

absl::StatusOr<std::string> JwkThumbprint(const EVP_PKEY* key) {
  SIGNET_ASSIGN_OR_RETURN(JwkMembers jwk, JwkOf(key));
  // RFC 7638 section 3.2: required members only, sorted, no whitespace. All
  // values are base64url or fixed names, so none needs JSON escaping.
  const std::string canonical =
      jwk.kty == "EC"
          ? absl::StrCat(R"({"crv":")", jwk.crv, R"(","kty":"EC","x":")", jwk.x,
                         R"(","y":")", jwk.y, R"("})")
          : absl::StrCat(R"({"e":")", jwk.e, R"(","kty":"RSA","n":")", jwk.n,
                         R"("})");
  SIGNET_ASSIGN_OR_RETURN(std::string hash, crypto::Sha256(canonical));
  return base::Base64UrlEncode(hash);
}

}  // namespace signet::jose
