// Test-only: a P-256 key made in the test that stands in for the HSM's
// audit checkpoint key. Only tests ever hold a private key.
#ifndef SIGNET_SERVER_TEST_AUDIT_KEY_H_
#define SIGNET_SERVER_TEST_AUDIT_KEY_H_

#include <openssl/evp.h>
#include <openssl/x509.h>

#include <memory>
#include <string>
#include <utility>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "crypto/public_keys.h"
#include "gtest/gtest.h"
#include "hsm/public_key.h"
#include "server/audit_log.h"

namespace signet::server::audit_testing {

using crypto::EvpPkeyCtxPtr;

class TestAuditKey {
 public:
  TestAuditKey() : key_(EVP_PKEY_Q_keygen(nullptr, nullptr, "EC", "P-256")) {
    EXPECT_NE(key_, nullptr);
  }

  // ECDSA over `digest`, converted from DER to JWS r||s as CKM_ECDSA gives.
  absl::StatusOr<std::string> Sign(absl::string_view digest) const {
    EvpPkeyCtxPtr ctx(EVP_PKEY_CTX_new_from_pkey(nullptr, key_.get(), nullptr));
    if (ctx == nullptr || EVP_PKEY_sign_init(ctx.get()) != 1) {
      return absl::InternalError("sign init");
    }
    const auto* in = reinterpret_cast<const unsigned char*>(digest.data());
    size_t len = 0;
    if (EVP_PKEY_sign(ctx.get(), nullptr, &len, in, digest.size()) != 1) {
      return absl::InternalError("sign size");
    }
    std::string der(len, '\0');
    if (EVP_PKEY_sign(ctx.get(), reinterpret_cast<unsigned char*>(der.data()),
                      &len, in, digest.size()) != 1) {
      return absl::InternalError("sign");
    }
    der.resize(len);
    return crypto::EcdsaDerToRaw(crypto::EcCurve::kP256, der);
  }

  CheckpointSigner Signer() const {
    return [this](absl::string_view digest) { return Sign(digest); };
  }

  hsm::PublicKey PublicKey() const {
    const int len = i2d_PUBKEY(key_.get(), nullptr);
    std::string der(static_cast<size_t>(len > 0 ? len : 0), '\0');
    auto* p = reinterpret_cast<unsigned char*>(der.data());
    EXPECT_EQ(i2d_PUBKEY(key_.get(), &p), len);
    absl::StatusOr<hsm::PublicKey> key = hsm::PublicKey::FromSpkiDer(der);
    EXPECT_TRUE(key.ok()) << key.status();
    return *std::move(key);
  }

 private:
  crypto::EvpPkeyPtr key_;
};

}  // namespace signet::server::audit_testing

#endif  // SIGNET_SERVER_TEST_AUDIT_KEY_H_
