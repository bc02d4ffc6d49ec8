// Test-only: a fresh SoftHSM2 token loaded in-process behind a
// FaultInjectingConnector, for unit tests of hsm/ against a real module.
#ifndef SIGNET_HSM_TEST_HSM_H_
#define SIGNET_HSM_TEST_HSM_H_

#include <memory>
#include <optional>
#include <string>

#include "gtest/gtest.h"
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
    auto connector = P11KitConnector::Create(module);
    if (!connector.ok()) return connector.status();
    auto token_uri = TokenUri::Parse(uri.empty() ? token_->token_uri() : uri);
    if (!token_uri.ok()) return token_uri.status();
    return SessionPool::Create(std::make_unique<FaultInjectingConnector>(
                                   std::move(*connector), injector_),
                               std::move(*token_uri),
                               Pin::FromBytes(pin ? *pin : token_->user_pin()),
                               options);
  }

  std::unique_ptr<testing::TempToken> token_;
  std::shared_ptr<FaultInjector> injector_;
};

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

#endif  // SIGNET_HSM_TEST_HSM_H_
