// What every signetd integration test starts from: a temporary SoftHSM2
// token behind a running `p11-kit server`, a test CA, and a server
// certificate for localhost issued by it.
#ifndef SIGNET_TESTS_TESTING_TEST_BED_H_
#define SIGNET_TESTS_TESTING_TEST_BED_H_

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "tests/testing/p11kit_server.h"
#include "tests/testing/pki.h"
#include "tests/testing/temp_token.h"

namespace signet::testing {

class SignetTestBed {
 public:
  // The CA is created as <token dir>/<ca_name>.
  static absl::StatusOr<std::unique_ptr<SignetTestBed>> Create(
      absl::string_view ca_name = "ca");

  TempToken& token() { return *token_; }
  P11KitServer& hsm() { return *hsm_; }
  TestCa& ca() { return *ca_; }
  TestCa::Issued& server_cert() { return server_cert_; }

  // The `hsm { … }` block of signetd's configuration for this token,
  // through its p11-kit server; `extra` goes inside the block.
  std::string HsmConfig(absl::string_view extra = "") const;
  // The `tls { … }` block: the server certificate, and this CA for
  // clients; `extra` goes inside the block.
  std::string TlsConfig(absl::string_view extra = "") const;

 private:
  SignetTestBed() = default;
  // Declared in the order they must be torn down in reverse: the server
  // stops before its token's directory goes.
  std::unique_ptr<TempToken> token_;
  std::unique_ptr<P11KitServer> hsm_;
  std::unique_ptr<TestCa> ca_;
  TestCa::Issued server_cert_;
};

}  // namespace signet::testing

#endif  // SIGNET_TESTS_TESTING_TEST_BED_H_
