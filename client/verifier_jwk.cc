#include "client/verifier_jwk.h"

#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/ec.h>
#include <openssl/evp.h>
#include <openssl/param_build.h>
#include <openssl/rsa.h>

#include <cstddef>
#include <memory>
#include <optional>
#include <string>
#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "base/base64url.h"
#include "client/verifier_json.h"
#include "nlohmann/json.hpp"

namespace signet::verifier_internal {
namespace {

using Json = nlohmann::json;

struct BnFree {
  void operator()(BIGNUM* p) const { BN_free(p); }
};
struct ParamBldFree {
  void operator()(OSSL_PARAM_BLD* p) const { OSSL_PARAM_BLD_free(p); }
};
struct ParamFree {
  void operator()(OSSL_PARAM* p) const { OSSL_PARAM_free(p); }
};
struct PkeyCtxFree {
  void operator()(EVP_PKEY_CTX* p) const { EVP_PKEY_CTX_free(p); }
};
struct MdCtxFree {
  void operator()(EVP_MD_CTX* p) const { EVP_MD_CTX_free(p); }
};
struct EcdsaSigFree {
  void operator()(ECDSA_SIG* p) const { ECDSA_SIG_free(p); }
};
using Bn = std::unique_ptr<BIGNUM, BnFree>;
using Pkey = std::unique_ptr<EVP_PKEY, EvpPkeyFree>;

constexpr int kMinRsaBits = 2048;
constexpr int kMaxRsaBits = 16384;

absl::Status Bad(absl::string_view why) {
  return absl::InvalidArgumentError(why);
}

// A required string member of a JWK.
absl::StatusOr<std::string> StringMember(const Json& jwk,
                                         absl::string_view name) {
  auto it = jwk.find(std::string(name));
  if (it == jwk.end()) return Bad(absl::StrCat("JWK has no \"", name, "\""));
  if (!it->is_string()) {
    return Bad(absl::StrCat("JWK \"", name, "\" is not a string"));
  }
  return it->get<std::string>();
}

// A required base64url member, decoded.
absl::StatusOr<std::string> BytesMember(const Json& jwk,
                                        absl::string_view name) {
  absl::StatusOr<std::string> text = StringMember(jwk, name);
  if (!text.ok()) return text.status();
  std::optional<std::string> bytes = base::StrictBase64UrlDecode(*text);
  if (!bytes.has_value()) {
    return Bad(
        absl::StrCat("JWK \"", name, "\" is not base64url without padding"));
  }
  return *std::move(bytes);
}

// Builds a public key of `type` ("EC", "RSA") from OSSL_PARAMs and checks it.
absl::StatusOr<Pkey> FromData(const char* type, OSSL_PARAM_BLD* bld) {
  std::unique_ptr<OSSL_PARAM, ParamFree> params(OSSL_PARAM_BLD_to_param(bld));
  std::unique_ptr<EVP_PKEY_CTX, PkeyCtxFree> ctx(
      EVP_PKEY_CTX_new_from_name(nullptr, type, nullptr));
  if (params == nullptr || ctx == nullptr) {
    return absl::InternalError("OpenSSL: out of memory building a key");
  }
  EVP_PKEY* raw = nullptr;
  if (EVP_PKEY_fromdata_init(ctx.get()) != 1 ||
      EVP_PKEY_fromdata(ctx.get(), &raw, EVP_PKEY_PUBLIC_KEY, params.get()) !=
          1) {
    return Bad(absl::StrCat("JWK is not a valid ", type, " public key"));
  }
  Pkey key(raw);
  std::unique_ptr<EVP_PKEY_CTX, PkeyCtxFree> check(
      EVP_PKEY_CTX_new_from_pkey(nullptr, key.get(), nullptr));
  if (check == nullptr || EVP_PKEY_public_check(check.get()) != 1) {
    return Bad(absl::StrCat("JWK is not a valid ", type,
                            " public key (OpenSSL's public key check fails)"));
  }
  return key;
}

absl::StatusOr<Pkey> EcKey(const Json& jwk, JwsAlgorithm alg) {
  const bool p256 = alg == JwsAlgorithm::kEs256;
  const char* crv_name = p256 ? "P-256" : "P-384";
  const size_t field = p256 ? 32 : 48;
  absl::StatusOr<std::string> crv = StringMember(jwk, "crv");
  if (!crv.ok()) return crv.status();
  if (*crv != crv_name) {
    return Bad(absl::StrCat("JWK crv \"", *crv, "\" does not match alg ",
                            JwsAlgorithmName(alg), " (", crv_name,
                            " expected)"));
  }
  absl::StatusOr<std::string> x = BytesMember(jwk, "x");
  if (!x.ok()) return x.status();
  absl::StatusOr<std::string> y = BytesMember(jwk, "y");
  if (!y.ok()) return y.status();
  if (x->size() != field || y->size() != field) {
    return Bad(absl::StrCat("JWK x and y must be ", field, " bytes each for ",
                            crv_name, ", not ", x->size(), " and ", y->size()));
  }
  std::string point = absl::StrCat("\x04", *x, *y);
  std::unique_ptr<OSSL_PARAM_BLD, ParamBldFree> bld(OSSL_PARAM_BLD_new());
  if (bld == nullptr ||
      OSSL_PARAM_BLD_push_utf8_string(bld.get(), OSSL_PKEY_PARAM_GROUP_NAME,
                                      p256 ? "prime256v1" : "secp384r1",
                                      0) != 1 ||
      OSSL_PARAM_BLD_push_octet_string(bld.get(), OSSL_PKEY_PARAM_PUB_KEY,
                                       point.data(), point.size()) != 1) {
    return absl::InternalError("OpenSSL: out of memory building a key");
  }
  return FromData("EC", bld.get());
}

absl::StatusOr<Pkey> RsaKey(const Json& jwk) {
  absl::StatusOr<std::string> n = BytesMember(jwk, "n");
  if (!n.ok()) return n.status();
  absl::StatusOr<std::string> e = BytesMember(jwk, "e");
  if (!e.ok()) return e.status();
  Bn bn_n(BN_bin2bn(reinterpret_cast<const unsigned char*>(n->data()),
                    static_cast<int>(n->size()), nullptr));
  Bn bn_e(BN_bin2bn(reinterpret_cast<const unsigned char*>(e->data()),
                    static_cast<int>(e->size()), nullptr));
  if (bn_n == nullptr || bn_e == nullptr) {
    return absl::InternalError("OpenSSL: out of memory building a key");
  }
  const int bits = BN_num_bits(bn_n.get());
  if (bits < kMinRsaBits || bits > kMaxRsaBits) {
    return Bad(absl::StrCat("JWK RSA modulus has ", bits, " bits; ",
                            kMinRsaBits, " to ", kMaxRsaBits, " are accepted"));
  }
  if (!BN_is_odd(bn_e.get()) || BN_num_bits(bn_e.get()) < 2 ||
      BN_num_bits(bn_e.get()) > 64) {
    return Bad(
        "JWK RSA exponent e must be odd, at least 3 and at most 64 bits");
  }
  std::unique_ptr<OSSL_PARAM_BLD, ParamBldFree> bld(OSSL_PARAM_BLD_new());
  if (bld == nullptr ||
      OSSL_PARAM_BLD_push_BN(bld.get(), OSSL_PKEY_PARAM_RSA_N, bn_n.get()) !=
          1 ||
      OSSL_PARAM_BLD_push_BN(bld.get(), OSSL_PKEY_PARAM_RSA_E, bn_e.get()) !=
          1) {
    return absl::InternalError("OpenSSL: out of memory building a key");
  }
  return FromData("RSA", bld.get());
}

// r||s -> DER ECDSA-Sig-Value (RFC 3279 section 2.2.3), what EVP reads.
std::optional<std::string> RsToDer(absl::string_view rs) {
  const size_t half = rs.size() / 2;
  std::unique_ptr<ECDSA_SIG, EcdsaSigFree> sig(ECDSA_SIG_new());
  BIGNUM* r = BN_bin2bn(reinterpret_cast<const unsigned char*>(rs.data()),
                        static_cast<int>(half), nullptr);
  BIGNUM* s =
      BN_bin2bn(reinterpret_cast<const unsigned char*>(rs.data() + half),
                static_cast<int>(half), nullptr);
  if (sig == nullptr || r == nullptr || s == nullptr ||
      ECDSA_SIG_set0(sig.get(), r, s) != 1) {
    BN_free(r);
    BN_free(s);
    return std::nullopt;
  }
  unsigned char* der = nullptr;
  int len = i2d_ECDSA_SIG(sig.get(), &der);
  if (len <= 0) return std::nullopt;
  std::string out(reinterpret_cast<char*>(der), static_cast<size_t>(len));
  OPENSSL_free(der);
  return out;
}

}  // namespace

std::optional<JwsAlgorithm> JwsAlgorithmFromName(absl::string_view name) {
  if (name == "ES256") return JwsAlgorithm::kEs256;
  if (name == "ES384") return JwsAlgorithm::kEs384;
  if (name == "RS256") return JwsAlgorithm::kRs256;
  if (name == "PS256") return JwsAlgorithm::kPs256;
  return std::nullopt;
}

absl::string_view JwsAlgorithmName(JwsAlgorithm alg) {
  switch (alg) {
    case JwsAlgorithm::kEs256:
      return "ES256";
    case JwsAlgorithm::kEs384:
      return "ES384";
    case JwsAlgorithm::kRs256:
      return "RS256";
    case JwsAlgorithm::kPs256:
      return "PS256";
  }
  return "?";
}

absl::StatusOr<std::shared_ptr<const JwkKey>> JwkKey::FromJwk(const Json& jwk) {
  if (!jwk.is_object()) return Bad("JWK is not a JSON object");
  absl::StatusOr<std::string> kid = StringMember(jwk, "kid");
  if (!kid.ok()) return kid.status();
  if (kid->empty()) return Bad("JWK kid is empty");
  for (const char* secret : {"d", "p", "q", "dp", "dq", "qi", "oth", "k"}) {
    if (jwk.contains(secret)) {
      return Bad(absl::StrCat("JWK carries private or secret key material (\"",
                              secret, "\"): the set is broken"));
    }
  }
  if (auto use = jwk.find("use"); use != jwk.end()) {
    if (!use->is_string() || use->get<std::string>() != "sig") {
      return Bad("JWK \"use\" is not \"sig\"");
    }
  }
  if (auto ops = jwk.find("key_ops"); ops != jwk.end()) {
    bool verify = false;
    if (ops->is_array()) {
      for (const Json& op : *ops) verify |= op.is_string() && op == "verify";
    }
    if (!verify) return Bad("JWK \"key_ops\" does not allow \"verify\"");
  }
  absl::StatusOr<std::string> alg_name = StringMember(jwk, "alg");
  if (!alg_name.ok()) {
    return Bad(absl::StrCat(alg_name.status().message(),
                            ": the key must name its algorithm"));
  }
  std::optional<JwsAlgorithm> alg = JwsAlgorithmFromName(*alg_name);
  if (!alg.has_value()) {
    return Bad(absl::StrCat("JWK alg \"", *alg_name, "\" is not supported"));
  }
  absl::StatusOr<std::string> kty = StringMember(jwk, "kty");
  if (!kty.ok()) return kty.status();
  const bool ec = *alg == JwsAlgorithm::kEs256 || *alg == JwsAlgorithm::kEs384;
  if (*kty != (ec ? "EC" : "RSA")) {
    return Bad(
        absl::StrCat("JWK kty \"", *kty, "\" does not match alg ", *alg_name));
  }
  absl::StatusOr<Pkey> key = ec ? EcKey(jwk, *alg) : RsaKey(jwk);
  if (!key.ok()) return key.status();
  return std::shared_ptr<const JwkKey>(
      new JwkKey(*std::move(kid), *alg, *std::move(key)));
}

absl::Status JwkKey::Verify(absl::string_view signing_input,
                            absl::string_view signature) const {
  std::string der;
  absl::string_view to_check = signature;
  if (alg_ == JwsAlgorithm::kEs256 || alg_ == JwsAlgorithm::kEs384) {
    const size_t expected = alg_ == JwsAlgorithm::kEs256 ? 64 : 96;
    if (signature.size() != expected) {
      return absl::InvalidArgumentError(absl::StrCat(
          JwsAlgorithmName(alg_), " signature has ", signature.size(),
          " bytes; the JWS form r||s has ", expected,
          " (a DER ECDSA-Sig-Value is not a JWS signature)"));
    }
    std::optional<std::string> converted = RsToDer(signature);
    if (!converted.has_value()) {
      return absl::InternalError("OpenSSL: cannot encode the ECDSA signature");
    }
    der = *std::move(converted);
    to_check = der;
  } else {
    const int size = EVP_PKEY_get_size(key_.get());
    if (size <= 0 || signature.size() != static_cast<size_t>(size)) {
      return absl::InvalidArgumentError(
          absl::StrCat(JwsAlgorithmName(alg_), " signature has ",
                       signature.size(), " bytes; this key's are ", size));
    }
  }
  std::unique_ptr<EVP_MD_CTX, MdCtxFree> md(EVP_MD_CTX_new());
  if (md == nullptr) return absl::InternalError("OpenSSL: out of memory");
  EVP_PKEY_CTX* pctx = nullptr;  // owned by md
  const char* digest = alg_ == JwsAlgorithm::kEs384 ? "SHA384" : "SHA256";
  if (EVP_DigestVerifyInit_ex(md.get(), &pctx, digest, nullptr, nullptr,
                              key_.get(), nullptr) != 1) {
    return absl::InternalError("OpenSSL: EVP_DigestVerifyInit_ex failed");
  }
  if (alg_ == JwsAlgorithm::kPs256) {
    if (EVP_PKEY_CTX_set_rsa_padding(pctx, RSA_PKCS1_PSS_PADDING) != 1 ||
        EVP_PKEY_CTX_set_rsa_pss_saltlen(pctx, RSA_PSS_SALTLEN_DIGEST) != 1 ||
        EVP_PKEY_CTX_set_rsa_mgf1_md_name(pctx, "SHA256", nullptr) != 1) {
      return absl::InternalError("OpenSSL: cannot set PSS parameters");
    }
  } else if (alg_ == JwsAlgorithm::kRs256) {
    if (EVP_PKEY_CTX_set_rsa_padding(pctx, RSA_PKCS1_PADDING) != 1) {
      return absl::InternalError("OpenSSL: cannot set PKCS#1 v1.5 padding");
    }
  }
  int rc = EVP_DigestVerify(
      md.get(), reinterpret_cast<const unsigned char*>(to_check.data()),
      to_check.size(),
      reinterpret_cast<const unsigned char*>(signing_input.data()),
      signing_input.size());
  if (rc != 1) {
    return absl::UnauthenticatedError(
        absl::StrCat("the ", JwsAlgorithmName(alg_),
                     " signature does not verify with key ", kid_));
  }
  return absl::OkStatus();
}

absl::StatusOr<JwkSet> ParseJwkSet(absl::string_view body) {
  JsonProblem problem;
  std::optional<Json> doc = ParseStrictJsonObject(body, "JWK set", &problem);
  if (!doc.has_value()) return Bad(problem.message);
  auto keys = doc->find("keys");
  if (keys == doc->end() || !keys->is_array()) {
    return Bad("JWK set has no \"keys\" array");
  }
  JwkSet set;
  std::map<std::string, int> seen;
  for (const Json& jwk : *keys) {
    if (!jwk.is_object()) continue;
    auto kid = jwk.find("kid");
    if (kid == jwk.end() || !kid->is_string()) continue;
    ++seen[kid->get<std::string>()];
  }
  for (const Json& jwk : *keys) {
    if (!jwk.is_object()) continue;
    auto kid_member = jwk.find("kid");
    if (kid_member == jwk.end() || !kid_member->is_string()) continue;
    std::string kid = kid_member->get<std::string>();
    if (seen[kid] > 1) {
      set.unusable[kid] = "the kid appears more than once in the JWK set";
      continue;
    }
    absl::StatusOr<std::shared_ptr<const JwkKey>> key = JwkKey::FromJwk(jwk);
    if (!key.ok()) {
      set.unusable[kid] = std::string(key.status().message());
      continue;
    }
    set.keys[kid] = *std::move(key);
  }
  return set;
}

}  // namespace signet::verifier_internal
