// A throw-away SoftHSM2 token for one test.
//
// Layout of the temp directory (mode 0755, so the service users can traverse
// it, see docs/architecture.md, "The HSM boundary as it behaves"):
//
//   <dir>/softhsm2.conf   0644: tokendir = <dir>/tokens, file backend
//   <dir>/tokens/         0700, owned by options.owner_user (else the caller)
//   <dir>/user.pin        0600: the user PIN, owned by options.pin_file_user
//                         (else the caller)
//
// The PINs are random test values; they are kept in plain strings because
// they guard nothing but this temporary token.
//
// Thread-compatible: the accessors are const; SetSoftHsmConfInThisProcess
// changes the process environment and must not race other getenv/setenv.
#ifndef SIGNET_TESTS_TESTING_TEMP_TOKEN_H_
#define SIGNET_TESTS_TESTING_TEMP_TOKEN_H_

#include <memory>
#include <string>

#include "absl/status/statusor.h"

namespace signet::testing {

struct TempTokenOptions {
  // The token label (CKA_LABEL of the token, at most 32 bytes).
  std::string label = "signet-test";
  // If non-empty (e.g. "signet-hsm"), <dir>/tokens belongs to this user and
  // softhsm2-util runs as this user, so the token files are the HSM user's
  // (a P11KitServer with run_as_user = this user can then read them). Needs
  // root.
  std::string owner_user;
  // If non-empty (e.g. "signet"), user.pin is chowned to this user so a
  // service running as it can read its PIN. Needs root.
  std::string pin_file_user;
};

class TempToken {
 public:
  // Creates the directory, writes the configuration and initialises the
  // token with softhsm2-util --init-token --free. Errors: INVALID_ARGUMENT
  // for a bad label; NOT_FOUND for an unknown owner_user / pin_file_user
  // (run the setup script that creates the system users);
  // PERMISSION_DENIED when chown needs root; INTERNAL when softhsm2-util
  // fails (the message carries its output). Nothing is left behind on error.
  static absl::StatusOr<std::unique_ptr<TempToken>> Create(
      const TempTokenOptions& options = {});

  // Removes the whole directory tree. Stop servers using the token first.
  ~TempToken();

  TempToken(const TempToken&) = delete;
  TempToken& operator=(const TempToken&) = delete;

  const std::string& dir() const { return dir_; }
  const std::string& conf_path() const { return conf_path_; }
  const std::string& tokens_dir() const { return tokens_dir_; }
  const std::string& label() const { return label_; }
  const std::string& user_pin() const { return user_pin_; }
  const std::string& so_pin() const { return so_pin_; }
  const std::string& pin_file_path() const { return pin_file_path_; }
  // The user that owns tokens_dir(), empty for the calling user.
  const std::string& owner_user() const { return owner_user_; }
  // "pkcs11:token=<label>" (RFC 7512; the label is percent-encoded where
  // needed).
  std::string token_uri() const;

  // Debian's SoftHSM2 module.
  static std::string softhsm_module_path();

  // setenv("SOFTHSM2_CONF", conf_path()) for tests that load SoftHSM into the
  // test process itself.
  void SetSoftHsmConfInThisProcess() const;

 private:
  TempToken() = default;

  std::string dir_;
  std::string conf_path_;
  std::string tokens_dir_;
  std::string label_;
  std::string user_pin_;
  std::string so_pin_;
  std::string pin_file_path_;
  std::string owner_user_;
};

}  // namespace signet::testing

#endif  // SIGNET_TESTS_TESTING_TEMP_TOKEN_H_
