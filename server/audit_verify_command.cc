#include "server/audit_verify_command.h"

#include <CLI/CLI.hpp>
#include <iostream>
#include <map>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "base/file.h"
#include "hsm/public_key.h"
#include "server/audit_verify.h"

namespace signet::server {
namespace {

int Fail(absl::string_view message) {
  std::cerr << "signetd audit-verify: error: " << message << std::endl;
  return 1;
}

int Verify(const std::string& path, const std::string& public_key_path,
           const std::string& keyring_path, const std::string& expected,
           bool no_signatures, AuditVerifyOptions options) {
  std::optional<hsm::PublicKey> key;
  if (!public_key_path.empty()) {
    absl::StatusOr<std::string> pem =
        base::ReadSmallFile(public_key_path, "--audit_public_key");
    if (!pem.ok()) return Fail(pem.status().message());
    absl::StatusOr<hsm::PublicKey> parsed = hsm::PublicKey::FromSpkiPem(*pem);
    if (!parsed.ok()) {
      return Fail(absl::StrCat("--audit_public_key ", public_key_path, ": ",
                               parsed.status().message()));
    }
    key = *std::move(parsed);
  } else if (keyring_path.empty()) {
    if (!no_signatures) {
      std::cerr << "signetd audit-verify: error: give --audit_keyring (or "
                   "--audit_public_key): without a key only the chain is "
                   "checked, and anyone who can write the file can recompute "
                   "it (--no_signatures to check the chain alone)"
                << std::endl;
      return 2;
    }
    std::cerr << "signetd audit-verify: warning: --no_signatures: checkpoint "
                 "signatures are not checked, only the chain"
              << std::endl;
  }
  std::map<std::string, hsm::PublicKey> keyring;
  if (!keyring_path.empty()) {
    std::vector<std::string> order;
    absl::StatusOr<std::map<std::string, hsm::PublicKey>> ring =
        ReadAuditKeyring(keyring_path, &order);
    if (!ring.ok()) return Fail(ring.status().message());
    keyring = *std::move(ring);
    options.keyring = &keyring;
    if (!order.empty()) options.first_kid = order.front();
  }
  absl::StatusOr<AuditVerifyResult> result =
      VerifyAuditLog(path, key ? &*key : nullptr, expected, options);
  if (!result.ok()) {
    std::cout << "audit log " << path
              << " FAILED: " << result.status().message() << std::endl;
    return 1;
  }
  std::cout << "audit log " << path << " OK: lines " << result->first_seq
            << " to " << result->last_seq << " (" << result->lines << ") in "
            << result->segments << " segment(s), " << result->checkpoints
            << " checkpoints (last at line " << result->last_checkpoint_seq
            << ")";
  if (options.keyring != nullptr) {
    std::cout << " by " << result->audit_keys << " audit key(s)";
  }
  if (result->uncovered_lines() > 0) {
    std::cout << "; lines " << result->last_seq - result->uncovered_lines() + 1
              << " to " << result->last_seq << " (" << result->uncovered_lines()
              << ") are covered by no checkpoint: only the chain protects them";
  }
  if (result->superseded_lines > 0) {
    std::cout << "; " << result->superseded_lines
              << " line(s) at the end of a failed segment were never durable "
                 "(their calls were refused) and are not part of the chain";
  }
  if (result->first_seq > 1) {
    std::cout << "; the segments before line " << result->first_seq
              << " were not given";
  }
  std::cout << std::endl;
  return std::cout.good() ? 0 : 1;
}

}  // namespace

int AuditVerifyMain(int argc, char** argv) {
  CLI::App app{
      "signetd audit-verify: check an audit log (the file, with its closed "
      "segments beside it, or a directory of one log's segments): sequence, "
      "hash chain, every line's form and every checkpoint's signature",
      "signetd audit-verify"};
  std::string path;
  std::string public_key_path;
  std::string keyring_path;
  std::string expected;
  AuditVerifyOptions options;
  app.add_option("log", path, "the audit log (or a directory of segments)")
      ->required();
  app.add_option("--audit_keyring", keyring_path,
                 "the keyring of audit public keys by kid that signetd keeps "
                 "beside the log (audit-keyring.pem): each checkpoint is "
                 "checked with the key its kid names");
  app.add_option("--audit_public_key", public_key_path,
                 "one PEM public key for every checkpoint (signetd writes the "
                 "current one as audit-checkpoint-key.pem)")
      ->excludes("--audit_keyring");
  app.add_option("--expected_checkpoint", expected,
                 "the last checkpoint line as the off-host sink (syslog) has "
                 "it: a log cut back past it is then found");
  app.add_flag("--allow_empty", options.allow_empty,
               "an empty file is not an error (it is by default: a log that "
               "should hold lines was truncated or replaced)");
  app.add_flag("--require_checkpoint_coverage", options.require_covered,
               "lines after the last checkpoint are an error (for a log that "
               "ended with a stop, whose final checkpoint covers everything)");
  app.add_flag("--allow_unvouched_audit_keys", options.allow_unvouched_keys,
               "with --audit_keyring, accept an audit key that no earlier "
               "audit key vouched for (a log from before signet introduced "
               "each audit key under its predecessor's checkpoint)");
  bool no_signatures = false;
  app.add_flag("--no_signatures", no_signatures,
               "check the sequence and the chain only, no checkpoint "
               "signature (anyone who can write the file can recompute "
               "those)")
      ->excludes("--audit_keyring")
      ->excludes("--audit_public_key");
  app.add_option("--verify_threads", options.threads,
                 "segments verified at once (0: one per core)")
      ->check(CLI::Range(0, 1024))
      ->capture_default_str();
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    const int code = app.exit(e);
    return code == 0 ? 0 : 2;
  }
  return Verify(path, public_key_path, keyring_path, expected, no_signatures,
                options);
}

}  // namespace signet::server
