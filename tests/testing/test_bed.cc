#include "tests/testing/test_bed.h"

#include "absl/strings/str_cat.h"

namespace signet::testing {

absl::StatusOr<std::unique_ptr<SignetTestBed>> SignetTestBed::Create(
    absl::string_view ca_name) {
  std::unique_ptr<SignetTestBed> bed(new SignetTestBed());
  absl::StatusOr<std::unique_ptr<TempToken>> token = TempToken::Create();
  if (!token.ok()) return token.status();
  bed->token_ = std::move(*token);
  absl::StatusOr<std::unique_ptr<P11KitServer>> hsm =
      P11KitServer::Start(*bed->token_);
  if (!hsm.ok()) return hsm.status();
  bed->hsm_ = std::move(*hsm);
  absl::StatusOr<std::unique_ptr<TestCa>> ca =
      TestCa::Create(bed->token_->dir(), ca_name);
  if (!ca.ok()) return ca.status();
  bed->ca_ = std::move(*ca);
  absl::StatusOr<TestCa::Issued> server = bed->ca_->IssueServer("server");
  if (!server.ok()) return server.status();
  bed->server_cert_ = std::move(*server);
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
