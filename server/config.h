// Loading and validating signetd's configuration (proto/signet/v1/config.proto)
// with protobuf's own text-format parser: no hand-written config parser.
//
// Thread-compatible: pure functions.
#ifndef SIGNET_SERVER_CONFIG_H_
#define SIGNET_SERVER_CONFIG_H_

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "hsm/algorithm.h"
#include "signet/v1/config.pb.h"

namespace signet::server {

// V: the clock leeway the README tells relying parties their verifier may
// allow past exp (signet's own verifier's default). Publish grace covers it.
inline constexpr uint32_t kVerifierLeewaySeconds = 60;

struct ConfigOptions {
  // --insecure_plaintext: no TLS section needed, loopback listener only.
  bool insecure_plaintext = false;
};

// Parses text format. INVALID_ARGUMENT with "line:column: reason" for a
// syntax error or an unknown field, then ValidateConfig(); defaults filled.
absl::StatusOr<signet::v1::SignetConfig> ParseConfig(
    absl::string_view text, const ConfigOptions& options = {});

// Reads `path` and parses it. NOT_FOUND when the file cannot be read
// (missing or not readable).
absl::StatusOr<signet::v1::SignetConfig> LoadConfigFile(
    absl::string_view path, const ConfigOptions& options = {});

// Fills defaults (connections, sessions, rsa_bits, token lifetime, serving)
// and checks every field; errors are INVALID_ARGUMENT and name the field,
// e.g. "scopes[1] (demo-enterprise).issuer: ...".
absl::Status ValidateConfig(signet::v1::SignetConfig& config,
                            const ConfigOptions& options = {});

// True for a name a scope can have: [a-z0-9][a-z0-9._-]{0,62}.
bool ValidScopeName(absl::string_view name);

// True for "uri:<non-empty>" and "cn:<non-empty>".
bool IsTypedIdentity(absl::string_view identity);

// The HSM key spec of a validated scope.
hsm::KeySpec KeySpecFor(const signet::v1::ScopeConfig& scope);

// "ES256" etc.
std::string JoseAlgorithmName(signet::v1::Algorithm algorithm);

}  // namespace signet::server

#endif  // SIGNET_SERVER_CONFIG_H_
