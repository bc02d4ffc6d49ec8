#include "crypto/public_keys.h"

#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/ec.h>
#include <openssl/err.h>
#include <openssl/param_build.h>
#include <openssl/rsa.h>

#include <climits>
#include <cstddef>
#include <memory>
#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
#include "base/status_macros.h"

namespace signet::crypto {
namespace {

using BnPtr = std::unique_ptr<BIGNUM, OsslFree<BN_free>>;
using ParamBldPtr =
    std::unique_ptr<OSSL_PARAM_BLD, OsslFree<OSSL_PARAM_BLD_free>>;
using ParamPtr = std::unique_ptr<OSSL_PARAM, OsslFree<OSSL_PARAM_free>>;
using EcdsaSigPtr = std::unique_ptr<ECDSA_SIG, OsslFree<ECDSA_SIG_free>>;

constexpr EcCurveInfo kP256 = {"prime256v1", "P-256", 32};
constexpr EcCurveInfo kP384 = {"secp384r1", "P-384", 48};

const unsigned char* Bytes(absl::string_view s) {
  return reinterpret_cast<const unsigned char*>(s.data());
}

absl::StatusOr<BnPtr> ToBignum(absl::string_view big_endian) {
  if (big_endian.size() > INT_MAX) {
    return absl::InvalidArgumentError("integer too long");
  }
  BnPtr bn(BN_bin2bn(Bytes(big_endian), static_cast<int>(big_endian.size()),
                     nullptr));
  if (bn == nullptr) {
    return OpenSslError(absl::StatusCode::kInternal, "BN_bin2bn failed");
  }
  return bn;
}

// A key of `key_type` ("EC" or "RSA") holding only the public components in
// `bld`, once OpenSSL's public key check passes.
absl::StatusOr<EvpPkeyPtr> FromData(const char* key_type, OSSL_PARAM_BLD* bld) {
  ParamPtr params(OSSL_PARAM_BLD_to_param(bld));
  if (params == nullptr) {
    return OpenSslError(absl::StatusCode::kInternal,
                        "OSSL_PARAM_BLD_to_param failed");
  }
  EvpPkeyCtxPtr ctx(EVP_PKEY_CTX_new_from_name(nullptr, key_type, nullptr));
  if (ctx == nullptr || EVP_PKEY_fromdata_init(ctx.get()) != 1) {
    return OpenSslError(
        absl::StatusCode::kInternal,
        absl::StrCat("EVP_PKEY_fromdata_init(", key_type, ") failed"));
  }
  EVP_PKEY* raw = nullptr;
  if (EVP_PKEY_fromdata(ctx.get(), &raw, EVP_PKEY_PUBLIC_KEY, params.get()) !=
      1) {
    // The components were refused (for EC: the point is not on the curve).
    return OpenSslError(
        absl::StatusCode::kInvalidArgument,
        absl::StrCat("invalid ", key_type, " public key components"));
  }
  EvpPkeyPtr key(raw);
  EvpPkeyCtxPtr check(EVP_PKEY_CTX_new_from_pkey(nullptr, key.get(), nullptr));
  if (check == nullptr) {
    return OpenSslError(absl::StatusCode::kInternal,
                        "EVP_PKEY_CTX_new_from_pkey failed");
  }
  if (EVP_PKEY_public_check(check.get()) != 1) {
    return OpenSslError(
        absl::StatusCode::kInvalidArgument,
        absl::StrCat(key_type, " public key fails OpenSSL's public key check"));
  }
  return key;
}

absl::StatusOr<BnPtr> GetBn(const EVP_PKEY* pkey, const char* name) {
  BIGNUM* bn = nullptr;
  if (EVP_PKEY_get_bn_param(pkey, name, &bn) != 1) {
    return OpenSslError(
        absl::StatusCode::kInternal,
        absl::StrCat("EVP_PKEY_get_bn_param(", name, ") failed"));
  }
  return BnPtr(bn);
}

// Big-endian bytes of `bn`, left-padded to `width` bytes, or minimal if
// `width` is 0.
std::string BnBytes(const BIGNUM* bn, int width) {
  if (width == 0) {
    std::string out(static_cast<size_t>(BN_num_bytes(bn)), '\0');
    BN_bn2bin(bn, reinterpret_cast<unsigned char*>(out.data()));
    return out;
  }
  std::string out(static_cast<size_t>(width), '\0');
  BN_bn2binpad(bn, reinterpret_cast<unsigned char*>(out.data()), width);
  return out;
}

}  // namespace

const EcCurveInfo& InfoOf(EcCurve curve) {
  return curve == EcCurve::kP384 ? kP384 : kP256;
}

absl::StatusOr<EcCurve> EcCurveOf(const EVP_PKEY* key) {
  char name[64];
  size_t len = 0;
  if (EVP_PKEY_get_utf8_string_param(key, OSSL_PKEY_PARAM_GROUP_NAME, name,
                                     sizeof(name), &len) != 1) {
    return OpenSslError(absl::StatusCode::kInvalidArgument,
                        "EC key without a named curve");
  }
  const absl::string_view group(name, len);
  for (EcCurve curve : {EcCurve::kP256, EcCurve::kP384}) {
    if (group == InfoOf(curve).group_name) return curve;
  }
  return absl::InvalidArgumentError(
      absl::StrCat("unsupported EC curve ", group));
}

absl::StatusOr<PublicComponents> ComponentsOf(const EVP_PKEY* key) {
  if (key == nullptr) return absl::InvalidArgumentError("no public key");
  PublicComponents out;
  if (EVP_PKEY_is_a(key, "EC")) {
    SIGNET_ASSIGN_OR_RETURN(EcCurve curve, EcCurveOf(key));
    SIGNET_ASSIGN_OR_RETURN(BnPtr x, GetBn(key, OSSL_PKEY_PARAM_EC_PUB_X));
    SIGNET_ASSIGN_OR_RETURN(BnPtr y, GetBn(key, OSSL_PKEY_PARAM_EC_PUB_Y));
    const int width = InfoOf(curve).field_bytes;
    out.curve = curve;
    out.x = BnBytes(x.get(), width);
    out.y = BnBytes(y.get(), width);
  } else if (EVP_PKEY_is_a(key, "RSA")) {
    SIGNET_ASSIGN_OR_RETURN(BnPtr n, GetBn(key, OSSL_PKEY_PARAM_RSA_N));
    SIGNET_ASSIGN_OR_RETURN(BnPtr e, GetBn(key, OSSL_PKEY_PARAM_RSA_E));
    out.n = BnBytes(n.get(), 0);
    out.e = BnBytes(e.get(), 0);
  } else {
    return absl::InvalidArgumentError(absl::StrCat(
        "unsupported public key type ", EVP_PKEY_get0_type_name(key)));
  }
  return out;
}

absl::Status OpenSslError(absl::StatusCode code, absl::string_view message) {
  unsigned long err = ERR_peek_last_error();
  std::string text(message);
  if (err != 0) {
    char buf[256];
    ERR_error_string_n(err, buf, sizeof(buf));
    absl::StrAppend(&text, " (", buf, ")");
  }
  ERR_clear_error();
  return absl::Status(code, text);
}

absl::StatusOr<EvpPkeyPtr> EcPublicKeyFromPoint(EcCurve curve,
                                                absl::string_view point) {
  const EcCurveInfo& info = InfoOf(curve);
  const size_t want = 1 + 2 * static_cast<size_t>(info.field_bytes);
  if (point.size() != want || point[0] != '\x04') {
    return absl::InvalidArgumentError(absl::StrCat(
        "EC point for ", info.jwk_crv, " must be uncompressed (", want,
        " bytes starting 04), got ", point.size(), " bytes"));
  }
  ParamBldPtr bld(OSSL_PARAM_BLD_new());
  if (bld == nullptr ||
      OSSL_PARAM_BLD_push_utf8_string(bld.get(), OSSL_PKEY_PARAM_GROUP_NAME,
                                      info.group_name, 0) != 1 ||
      OSSL_PARAM_BLD_push_octet_string(bld.get(), OSSL_PKEY_PARAM_PUB_KEY,
                                       point.data(), point.size()) != 1) {
    return OpenSslError(absl::StatusCode::kInternal,
                        "building EC key parameters failed");
  }
  return FromData("EC", bld.get());
}

absl::StatusOr<EvpPkeyPtr> RsaPublicKeyFromComponents(
    absl::string_view modulus, absl::string_view public_exponent) {
  SIGNET_ASSIGN_OR_RETURN(BnPtr n, ToBignum(modulus));
  SIGNET_ASSIGN_OR_RETURN(BnPtr e, ToBignum(public_exponent));
  const int bits = BN_num_bits(n.get());
  if (bits < kMinRsaBits || bits > kMaxRsaBits) {
    return absl::InvalidArgumentError(
        absl::StrCat("RSA modulus has ", bits, " bits; ", kMinRsaBits, " to ",
                     kMaxRsaBits, " are accepted"));
  }
  const int e_bits = BN_num_bits(e.get());
  if (!BN_is_odd(e.get()) || e_bits <= 16 || e_bits > 256) {
    return absl::InvalidArgumentError(
        "RSA public exponent must be odd and in [65537, 2^256)");
  }
  ParamBldPtr bld(OSSL_PARAM_BLD_new());
  if (bld == nullptr ||
      OSSL_PARAM_BLD_push_BN(bld.get(), OSSL_PKEY_PARAM_RSA_N, n.get()) != 1 ||
      OSSL_PARAM_BLD_push_BN(bld.get(), OSSL_PKEY_PARAM_RSA_E, e.get()) != 1) {
    return OpenSslError(absl::StatusCode::kInternal,
                        "building RSA key parameters failed");
  }
  return FromData("RSA", bld.get());
}

absl::StatusOr<std::string> EcdsaRawToDer(absl::string_view raw) {
  if (raw.empty() || raw.size() % 2 != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("an ECDSA signature r||s has two halves of equal length, "
                     "not ",
                     raw.size(), " bytes"));
  }
  const size_t half = raw.size() / 2;
  SIGNET_ASSIGN_OR_RETURN(BnPtr r, ToBignum(raw.substr(0, half)));
  SIGNET_ASSIGN_OR_RETURN(BnPtr s, ToBignum(raw.substr(half)));
  EcdsaSigPtr sig(ECDSA_SIG_new());
  if (sig == nullptr || ECDSA_SIG_set0(sig.get(), r.get(), s.get()) != 1) {
    return OpenSslError(absl::StatusCode::kInternal, "ECDSA_SIG_set0 failed");
  }
  // ECDSA_SIG_set0 took ownership.
  r.release();
  s.release();
  const int len = i2d_ECDSA_SIG(sig.get(), nullptr);
  if (len <= 0) {
    return OpenSslError(absl::StatusCode::kInternal, "i2d_ECDSA_SIG failed");
  }
  std::string der(static_cast<size_t>(len), '\0');
  unsigned char* p = reinterpret_cast<unsigned char*>(der.data());
  if (i2d_ECDSA_SIG(sig.get(), &p) != len) {
    return OpenSslError(absl::StatusCode::kInternal, "i2d_ECDSA_SIG failed");
  }
  return der;
}

absl::StatusOr<std::string> EcdsaDerToRaw(EcCurve curve,
                                          absl::string_view der) {
  if (der.size() > LONG_MAX) {
    return absl::InvalidArgumentError("ECDSA signature too long");
  }
  const unsigned char* p = Bytes(der);
  EcdsaSigPtr sig(d2i_ECDSA_SIG(nullptr, &p, static_cast<long>(der.size())));
  // Trailing bytes are refused too: one signature, one encoding.
  if (sig == nullptr || p != Bytes(der) + der.size()) {
    return OpenSslError(absl::StatusCode::kInvalidArgument,
                        "not a DER ECDSA-Sig-Value");
  }
  const int width = InfoOf(curve).field_bytes;
  const BIGNUM* r = ECDSA_SIG_get0_r(sig.get());
  const BIGNUM* s = ECDSA_SIG_get0_s(sig.get());
  std::string raw(2 * static_cast<size_t>(width), '\0');
  auto* out = reinterpret_cast<unsigned char*>(raw.data());
  if (BN_is_negative(r) || BN_is_negative(s) ||
      BN_bn2binpad(r, out, width) != width ||
      BN_bn2binpad(s, out + width, width) != width) {
    return OpenSslError(
        absl::StatusCode::kInvalidArgument,
        absl::StrCat("ECDSA r and s must be non-negative and fit ", width,
                     " bytes (", InfoOf(curve).jwk_crv, ")"));
  }
  return raw;
}

absl::Status VerifyDigestSignature(EVP_PKEY* key, SignatureScheme scheme,
                                   absl::string_view digest,
                                   absl::string_view signature) {
  EvpPkeyCtxPtr ctx(EVP_PKEY_CTX_new_from_pkey(nullptr, key, nullptr));
  if (ctx == nullptr || EVP_PKEY_verify_init(ctx.get()) != 1) {
    return OpenSslError(absl::StatusCode::kInternal,
                        "EVP_PKEY_verify_init failed");
  }
  const EVP_MD* md =
      scheme == SignatureScheme::kEcdsaSha384 ? EVP_sha384() : EVP_sha256();
  bool configured = true;
  if (scheme == SignatureScheme::kRsaPkcs1Sha256) {
    configured =
        EVP_PKEY_CTX_set_rsa_padding(ctx.get(), RSA_PKCS1_PADDING) == 1;
  } else if (scheme == SignatureScheme::kRsaPssSha256) {
    configured =
        EVP_PKEY_CTX_set_rsa_padding(ctx.get(), RSA_PKCS1_PSS_PADDING) == 1;
  }
  configured = configured && EVP_PKEY_CTX_set_signature_md(ctx.get(), md) == 1;
  if (scheme == SignatureScheme::kRsaPssSha256) {
    // RFC 7518 section 3.5: MGF1 with the same hash, a salt as long as it.
    configured = configured &&
                 EVP_PKEY_CTX_set_rsa_mgf1_md(ctx.get(), EVP_sha256()) == 1 &&
                 EVP_PKEY_CTX_set_rsa_pss_saltlen(ctx.get(), 32) == 1;
  }
  if (!configured) {
    return OpenSslError(absl::StatusCode::kInternal,
                        "configuring the verification failed");
  }
  // 1 is valid; 0 a bad signature; a negative value a signature that does
  // not even decode (r or s out of range): a bad signature as well.
  if (EVP_PKEY_verify(ctx.get(), Bytes(signature), signature.size(),
                      Bytes(digest), digest.size()) != 1) {
    ERR_clear_error();
    return absl::InvalidArgumentError("signature does not verify");
  }
  return absl::OkStatus();
}

}  // namespace signet::crypto
