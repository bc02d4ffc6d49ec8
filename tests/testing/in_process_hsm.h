// Test-only: a fresh SoftHSM2 token loaded in-process behind a
// FaultInjectingConnector, for unit tests of hsm/ against a real module.
#ifndef SIGNET_TESTS_TESTING_IN_PROCESS_HSM_H_
#define SIGNET_TESTS_TESTING_IN_PROCESS_HSM_H_

#include <cstdlib>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/time/clock.h"
#include "base/status_macros.h"
#include "gtest/gtest.h"
#include "hsm/algorithm.h"
#include "hsm/attributes.h"
#include "hsm/fault_injection.h"
#include "hsm/key_store.h"
#include "hsm/module.h"
#include "hsm/session_pool.h"
#include "tests/testing/temp_token.h"

namespace signet::hsm {

class InProcessHsmTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto token = testing::TempToken::Create();
    ASSERT_TRUE(token.ok()) << token.status();
    token_ = std::move(*token);
    token_->SetSoftHsmConfInThisProcess();
    injector_ = std::make_shared<FaultInjector>();
  }

  absl::StatusOr<std::unique_ptr<SessionPool>> MakePool(
      SessionPoolOptions options = {},
      std::optional<std::string> pin = std::nullopt, std::string uri = "") {
    ModuleOptions module;
    module.module_path = testing::TempToken::softhsm_module_path();
    module.insecure_in_process_module = true;
    SIGNET_ASSIGN_OR_RETURN(auto connector, P11KitConnector::Create(module));
    SIGNET_ASSIGN_OR_RETURN(
        auto token_uri,
        TokenUri::Parse(uri.empty() ? token_->token_uri() : uri));
    return SessionPool::Create(std::make_unique<FaultInjectingConnector>(
                                   std::move(connector), injector_),
                               std::move(token_uri),
                               Pin::FromBytes(pin ? *pin : token_->user_pin()),
                               options);
  }

  std::unique_ptr<testing::TempToken> token_;
  std::shared_ptr<FaultInjector> injector_;
};

// Destroys the objects of `cls` with CKA_ID `key_id` (binary; CKO_DATA
// records are found by their CKA_LABEL instead) through one of `pool`'s
// sessions, as a person with the token's PIN could: behind the key store's
// back. Fails the test unless at least one was found.
inline void DestroyBehindTheStoresBack(SessionPool& pool,
                                       const std::string& key_id,
                                       CK_OBJECT_CLASS cls = CKO_PRIVATE_KEY) {
  auto lease = pool.Acquire(absl::Now() + absl::Seconds(10));
  ASSERT_TRUE(lease.ok()) << lease.status();
  AttributeTemplate templ;
  templ.Ulong(CKA_CLASS, cls);
  if (cls == CKO_DATA) {
    templ.Bytes(CKA_LABEL, Pkcs11KeyStore::LabelFor(key_id));
  } else {
    templ.Bytes(CKA_ID, key_id);
  }
  std::vector<CK_OBJECT_HANDLE> found;
  ASSERT_EQ(lease->api().FindObjects(lease->session(), templ.data(),
                                     templ.size(), &found),
            CKR_OK);
  ASSERT_FALSE(found.empty());
  for (CK_OBJECT_HANDLE object : found) {
    ASSERT_EQ(lease->api().DestroyObject(lease->session(), object), CKR_OK);
  }
}

// Generates an ECDSA P-256 key pair through one of `pool`'s sessions,
// bypassing the store's template, as a person with the token's PIN could;
// returns its CKA_ID. With `id`, a second private key with that id (a
// planted duplicate).
inline std::string GenerateWithTemplate(SessionPool& pool, bool sensitive,
                                        bool extractable,
                                        std::vector<CK_MECHANISM_TYPE> allowed,
                                        std::string id = "") {
  auto lease = pool.Acquire(absl::Now() + absl::Seconds(10));
  EXPECT_TRUE(lease.ok()) << lease.status();
  if (!lease.ok()) return id;
  if (id.empty()) id = "rogue-" + std::to_string(rand());
  AttributeTemplate pub;
  pub.Bool(CKA_TOKEN, true)
      .Bool(CKA_VERIFY, true)
      .Bytes(CKA_ID, id)
      .Bytes(CKA_EC_PARAMS, EcParamsDer(SignatureAlgorithm::kEcdsaP256Sha256));
  AttributeTemplate priv;
  priv.Bool(CKA_TOKEN, true)
      .Bool(CKA_PRIVATE, true)
      .Bool(CKA_SIGN, true)
      .Bool(CKA_SENSITIVE, sensitive)
      .Bool(CKA_EXTRACTABLE, extractable)
      .Bytes(CKA_ID, id);
  if (!allowed.empty()) {
    priv.Bytes(CKA_ALLOWED_MECHANISMS,
               absl::string_view(reinterpret_cast<const char*>(allowed.data()),
                                 allowed.size() * sizeof(CK_MECHANISM_TYPE)));
  }
  CK_MECHANISM mech = {CKM_EC_KEY_PAIR_GEN, nullptr, 0};
  CK_OBJECT_HANDLE h1, h2;
  EXPECT_EQ(lease->api().GenerateKeyPair(lease->session(), &mech, pub.data(),
                                         pub.size(), priv.data(), priv.size(),
                                         &h1, &h2),
            CKR_OK);
  return id;
}

// InProcessHsmTest with a default pool and a key store over it, made in
// SetUp: the fixture of every test of code above the key store.
class InProcessKeyStoreTest : public InProcessHsmTest {
 protected:
  void SetUp() override {
    InProcessHsmTest::SetUp();
    auto pool = MakePool();
    ASSERT_TRUE(pool.ok()) << pool.status();
    pool_ = std::move(*pool);
    store_ = std::make_unique<Pkcs11KeyStore>(pool_.get());
  }

  std::unique_ptr<SessionPool> pool_;
  std::unique_ptr<Pkcs11KeyStore> store_;
};

}  // namespace signet::hsm

#endif  // SIGNET_TESTS_TESTING_IN_PROCESS_HSM_H_
