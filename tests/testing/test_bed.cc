#include "tests/testing/test_bed.h"

#include "absl/strings/str_cat.h"
#include "base/status_macros.h"

namespace signet::testing {

absl::StatusOr<std::unique_ptr<SignetTestBed>> SignetTestBed::Create(
    absl::string_view ca_name) {
  std::unique_ptr<SignetTestBed> bed(new SignetTestBed());
  SIGNET_ASSIGN_OR_RETURN(bed->token_, TempToken::Create());
  SIGNET_ASSIGN_OR_RETURN(bed->hsm_, P11KitServer::Start(*bed->token_));
  SIGNET_ASSIGN_OR_RETURN(bed->ca_,
                          TestCa::Create(bed->token_->dir(), ca_name));
  SIGNET_ASSIGN_OR_RETURN(bed->server_cert_, bed->ca_->IssueServer("server"));
  return bed;
}

std::string SignetTestBed::HsmConfig(absl::string_view extra) const {
  return absl::StrCat(
      "hsm { module_path: \"", P11KitServer::client_module_path(),
      "\" p11_kit_server_address: \"", hsm_->address(), "\" token_uri: \"",
      token_->token_uri(), "\" pin_file: \"", token_->pin_file_path(), "\" ",
      extra, " }\n");
}

std::string SignetTestBed::TlsConfig(absl::string_view extra) const {
  return absl::StrCat("tls { cert_file: \"", server_cert_.cert_path,
                      "\" key_file: \"", server_cert_.key_path,
                      "\" client_ca_file: \"", ca_->cert_path(), "\" ", extra,
                      " }\n");
}

}  // namespace signet::testing
