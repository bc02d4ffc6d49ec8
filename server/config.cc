#include "server/config.h"

#include <google/protobuf/io/tokenizer.h>
#include <google/protobuf/text_format.h>

#include <algorithm>
#include <set>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "base/file.h"
#include "base/net.h"
#include "base/status_macros.h"

namespace signet::server {
namespace {

using signet::v1::Algorithm;
using signet::v1::ScopeConfig;
using signet::v1::SignetConfig;

constexpr int kMaxConnections = 64;
constexpr uint32_t kDefaultTokenLifetime = 3600;
constexpr uint32_t kMaxTokenLifetime = 7 * 24 * 3600;
constexpr uint32_t kDefaultCacheMaxAge = 300;
constexpr uint32_t kDefaultRotationPeriod = 30 * 24 * 3600;
constexpr uint32_t kMaxRotationPeriod = 365 * 24 * 3600;
constexpr uint32_t kMaxPublishGrace = 30 * 24 * 3600;
constexpr uint32_t kDefaultDestroyDelay = 24 * 3600;
constexpr uint32_t kDefaultIatSkew = 60;
// With allow_short_key_schedules (tests and demos).
constexpr uint32_t kMinShortRotationPeriod = 2;
constexpr int kMaxSessionsPerConnection = 64;

// Every name the configuration's schema knows: field names, message and
// enum type names, enum values.
void CollectNames(const google::protobuf::Descriptor* message,
                  std::set<std::string>& names) {
  if (!names.insert(message->full_name()).second) return;
  names.insert(message->name());
  for (int i = 0; i < message->field_count(); ++i) {
    const google::protobuf::FieldDescriptor* field = message->field(i);
    names.insert(field->name());
    if (field->message_type() != nullptr) {
      CollectNames(field->message_type(), names);
    }
    if (field->enum_type() != nullptr) {
      names.insert(field->enum_type()->full_name());
      for (int v = 0; v < field->enum_type()->value_count(); ++v) {
        names.insert(field->enum_type()->value(v)->name());
      }
    }
  }
}

// The schema's names, collected once, on the first parse error: a
// configuration that parses never needs them.
const std::set<std::string>& SchemaNames() {
  static const std::set<std::string>* const names = [] {
    auto* collected = new std::set<std::string>();
    CollectNames(SignetConfig::descriptor(), *collected);
    return collected;
  }();
  return *names;
}

// Levenshtein distance, for short names only.
size_t EditDistance(absl::string_view a, absl::string_view b) {
  std::vector<size_t> row(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) row[j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    size_t diagonal = row[0];
    row[0] = i;
    for (size_t j = 1; j <= b.size(); ++j) {
      const size_t up = row[j];
      row[j] = std::min({row[j] + 1, row[j - 1] + 1,
                         diagonal + (a[i - 1] == b[j - 1] ? 0 : 1)});
      diagonal = up;
    }
  }
  return row[b.size()];
}

// The parser's messages quote the file's text ("has no field named "x"",
// "Expected identifier, got: x"), and a file given as the configuration by
// mistake may be a secret (a PIN file, say: an outside attack saw its
// digits in the error). A quoted or "got:" token stays only when it is a
// name of the schema or one a typo away from one (then the name is
// suggested); otherwise it is not repeated.
class Redactor {
 public:
  std::string Redact(const std::string& message) {
    std::string out;
    absl::string_view rest(message);
    for (;;) {
      const size_t quote = rest.find('"');
      const size_t got = rest.find("got: ");
      if (quote == absl::string_view::npos && got == absl::string_view::npos) {
        absl::StrAppend(&out, rest);
        return out;
      }
      if (got != absl::string_view::npos &&
          (quote == absl::string_view::npos || got < quote)) {
        // The token is the rest of the message.
        auto [text, hint] = Token(rest.substr(got + 5));
        absl::StrAppend(&out, rest.substr(0, got + 5), text, hint);
        return out;
      }
      const size_t end = rest.find('"', quote + 1);
      if (end == absl::string_view::npos) {
        auto [text, hint] = Token(rest.substr(quote + 1));
        absl::StrAppend(&out, rest.substr(0, quote + 1), text, hint);
        return out;
      }
      auto [text, hint] = Token(rest.substr(quote + 1, end - quote - 1));
      absl::StrAppend(&out, rest.substr(0, quote + 1), text, "\"", hint);
      rest = rest.substr(end + 1);
    }
  }

  bool redacted() const { return redacted_; }

 private:
  // The token as shown, and what follows its closing quote (a suggestion).
  std::pair<std::string, std::string> Token(absl::string_view token) {
    const std::set<std::string>& names = SchemaNames();
    if (token.size() <= 1 || names.contains(std::string(token))) {
      return {std::string(token), ""};  // punctuation, or the schema's name
    }
    if (token.size() <= 64) {
      for (const std::string& name : names) {
        if (name.size() > 3 && EditDistance(token, name) <= 2) {
          return {std::string(token),
                  absl::StrCat(" (did you mean \"", name, "\"?)")};
        }
      }
    }
    redacted_ = true;
    return {"(not shown)", ""};
  }

  bool redacted_ = false;
};

class CollectErrors : public google::protobuf::io::ErrorCollector {
 public:
  void AddError(int line, int column, const std::string& message) override {
    errors_.push_back(absl::StrCat(line + 1, ":", column + 1, ": ",
                                   redactor_.Redact(message)));
  }
  void AddWarning(int line, int column, const std::string& message) override {
    AddError(line, column, message);
  }
  std::string Joined() const {
    return absl::StrCat(
        absl::StrJoin(errors_, "; "),
        redactor_.redacted()
            ? " (text from the file that is not a configuration name is not "
              "repeated: the file may hold a secret, e.g. a PIN file given "
              "as the configuration)"
            : "");
  }

 private:
  Redactor redactor_;
  std::vector<std::string> errors_;
};

// Splits "host:port" / "[v6]:port".
bool SplitHostPort(absl::string_view address, std::string* host, int* port) {
  size_t colon = address.rfind(':');
  if (colon == absl::string_view::npos) return false;
  absl::string_view h = address.substr(0, colon);
  if (absl::StartsWith(h, "[") && absl::EndsWith(h, "]")) {
    h = h.substr(1, h.size() - 2);
  }
  if (h.empty() || !absl::SimpleAtoi(address.substr(colon + 1), port) ||
      *port < 0 || *port > 65535) {
    return false;
  }
  *host = std::string(h);
  return true;
}

// An issuer is https://host[:port][/path] (http:// only on loopback), with
// no query, fragment or userinfo: relying parties compare it byte for byte.
absl::Status ValidateIssuer(absl::string_view issuer) {
  absl::string_view rest;
  bool https = false;
  if (absl::StartsWith(issuer, "https://")) {
    rest = issuer.substr(8);
    https = true;
  } else if (absl::StartsWith(issuer, "http://")) {
    rest = issuer.substr(7);
  } else {
    return absl::InvalidArgumentError("must start with https://");
  }
  if (absl::StrContains(issuer, "?") || absl::StrContains(issuer, "#") ||
      absl::StrContains(rest, "@")) {
    return absl::InvalidArgumentError(
        "must not contain a query, a fragment or user information");
  }
  if (absl::EndsWith(issuer, "/")) {
    return absl::InvalidArgumentError("must not end with '/'");
  }
  absl::string_view authority = rest.substr(0, rest.find('/'));
  std::string host(authority);
  int port = 0;
  if (absl::StrContains(authority, ":") &&
      !SplitHostPort(authority, &host, &port)) {
    return absl::InvalidArgumentError("has a malformed host:port");
  }
  if (host.empty()) return absl::InvalidArgumentError("has no host");
  if (!https && !base::IsLoopbackHost(host)) {
    return absl::InvalidArgumentError(
        "must use https:// (plain http:// only for loopback hosts)");
  }
  return absl::OkStatus();
}

absl::Status FieldError(absl::string_view field, absl::string_view what) {
  return absl::InvalidArgumentError(absl::StrCat(field, ": ", what));
}

}  // namespace

std::string JoseAlgorithmName(Algorithm algorithm) {
  switch (algorithm) {
    case signet::v1::ES256:
      return "ES256";
    case signet::v1::ES384:
      return "ES384";
    case signet::v1::RS256:
      return "RS256";
    case signet::v1::PS256:
      return "PS256";
    default:
      return "unspecified";
  }
}

hsm::KeySpec KeySpecFor(const ScopeConfig& scope) {
  hsm::KeySpec spec;
  switch (scope.algorithm()) {
    case signet::v1::ES384:
      spec.algorithm = hsm::SignatureAlgorithm::kEcdsaP384Sha384;
      break;
    case signet::v1::RS256:
      spec.algorithm = hsm::SignatureAlgorithm::kRsaPkcs1Sha256;
      break;
    case signet::v1::PS256:
      spec.algorithm = hsm::SignatureAlgorithm::kRsaPssSha256;
      break;
    default:
      spec.algorithm = hsm::SignatureAlgorithm::kEcdsaP256Sha256;
  }
  spec.rsa_bits = scope.rsa_bits() == 0 ? 2048 : scope.rsa_bits();
  return spec;
}

bool ValidScopeName(absl::string_view name) {
  if (name.empty() || name.size() > 63) return false;
  for (size_t i = 0; i < name.size(); ++i) {
    char c = name[i];
    bool ok = absl::ascii_islower(c) || absl::ascii_isdigit(c) ||
              (i > 0 && (c == '-' || c == '_' || c == '.'));
    if (!ok) return false;
  }
  return true;
}

namespace {

// Fills the gRPC listener's defaults and checks its bounds.
absl::Status ValidateGrpcLimits(signet::v1::GrpcConfig& grpc) {
  struct Bound {
    const char* field;
    uint32_t (signet::v1::GrpcConfig::*get)() const;
    void (signet::v1::GrpcConfig::*set)(uint32_t);
    uint32_t fallback, min, max;
  };
  using G = signet::v1::GrpcConfig;
  const Bound bounds[] = {
      {"max_concurrent_streams", &G::max_concurrent_streams,
       &G::set_max_concurrent_streams, 256, 1, 65536},
      {"max_memory_mib", &G::max_memory_mib, &G::set_max_memory_mib, 1024, 64,
       1 << 20},
      {"handshake_timeout_seconds", &G::handshake_timeout_seconds,
       &G::set_handshake_timeout_seconds, 10, 1, 120},
      {"max_connection_idle_seconds", &G::max_connection_idle_seconds,
       &G::set_max_connection_idle_seconds, 900, 1, 7 * 24 * 3600},
      {"keepalive_time_seconds", &G::keepalive_time_seconds,
       &G::set_keepalive_time_seconds, 60, 1, 24 * 3600},
      {"keepalive_timeout_seconds", &G::keepalive_timeout_seconds,
       &G::set_keepalive_timeout_seconds, 20, 1, 3600},
      {"max_health_watchers", &G::max_health_watchers,
       &G::set_max_health_watchers, 1024, 1, 1 << 20},
      {"max_connection_age_seconds", &G::max_connection_age_seconds,
       &G::set_max_connection_age_seconds, 1800, 1, 7 * 24 * 3600},
      {"max_connection_age_grace_seconds", &G::max_connection_age_grace_seconds,
       &G::set_max_connection_age_grace_seconds, 60, 1, 3600},
      {"reserved_file_descriptors", &G::reserved_file_descriptors,
       &G::set_reserved_file_descriptors, 256, 32, 1 << 20},
      {"request_timeout_seconds", &G::request_timeout_seconds,
       &G::set_request_timeout_seconds, 10, 1, 300},
      {"max_calls_awaiting_request", &G::max_calls_awaiting_request,
       &G::set_max_calls_awaiting_request, 4096, 1, 1 << 20},
      {"max_connections_per_address", &G::max_connections_per_address,
       &G::set_max_connections_per_address, 256, 1, 1 << 20},
      {"max_connections", &G::max_connections, &G::set_max_connections, 8192,
       16, 1 << 20},
      // At least 5: a key change is not started with less than 1 s of its
      // call left (server/key_manager.cc).
      {"max_call_seconds", &G::max_call_seconds, &G::set_max_call_seconds, 30,
       5, 300},
  };
  for (const Bound& b : bounds) {
    if ((grpc.*b.get)() == 0) (grpc.*b.set)(b.fallback);
    const uint32_t value = (grpc.*b.get)();
    if (value < b.min || value > b.max) {
      return FieldError(
          absl::StrCat("grpc.", b.field),
          absl::StrCat(value, " is out of range: ", b.min, " to ", b.max));
    }
  }
  return absl::OkStatus();
}

}  // namespace

bool IsTypedIdentity(absl::string_view identity) {
  return (absl::StartsWith(identity, "uri:") && identity.size() > 4) ||
         (absl::StartsWith(identity, "cn:") && identity.size() > 3);
}

absl::Status ValidateConfig(SignetConfig& config,
                            const ConfigOptions& options) {
  std::string host;
  int port = 0;
  if (config.grpc_listen_address().empty()) {
    return FieldError("grpc_listen_address", "is required (host:port)");
  }
  if (!SplitHostPort(config.grpc_listen_address(), &host, &port)) {
    return FieldError("grpc_listen_address",
                      absl::StrCat("\"", config.grpc_listen_address(),
                                   "\" is not host:port"));
  }
  if (options.insecure_plaintext) {
    if (!base::IsLoopbackHost(host)) {
      return FieldError("grpc_listen_address",
                        "must be a loopback address with --insecure_plaintext");
    }
  } else {
    const signet::v1::TlsConfig& tls = config.tls();
    if (tls.cert_file().empty() || tls.key_file().empty() ||
        tls.client_ca_file().empty()) {
      return FieldError("tls",
                        "cert_file, key_file and client_ca_file are required "
                        "(mTLS); plain text needs --insecure_plaintext");
    }
  }

  signet::v1::HsmConfig& hsm = *config.mutable_hsm();
  if (hsm.module_path().empty()) {
    return FieldError("hsm.module_path", "is required");
  }
  if (hsm.token_uri().empty()) {
    return FieldError(
        "hsm.token_uri",
        "is required (an RFC 7512 URI, e.g. pkcs11:token=signet)");
  }
  if (hsm.pin_file().empty() == hsm.pin_env().empty()) {
    return FieldError("hsm.pin_file / hsm.pin_env",
                      "exactly one of them must be set");
  }
  if (hsm.connections() == 0) hsm.set_connections(2);
  if (hsm.sessions_per_connection() == 0) hsm.set_sessions_per_connection(2);
  if (hsm.connections() > kMaxConnections) {
    return FieldError("hsm.connections",
                      absl::StrCat("at most ", kMaxConnections));
  }
  if (hsm.sessions_per_connection() > kMaxSessionsPerConnection) {
    return FieldError("hsm.sessions_per_connection",
                      absl::StrCat("at most ", kMaxSessionsPerConnection));
  }

  if (config.scopes().empty()) {
    return FieldError("scopes", "at least one scope is required");
  }
  std::set<std::string> names;
  std::set<std::string> issuers;
  // How long relying parties may keep a key set (the HTTP endpoint's
  // Cache-Control max-age): every scope's grace must cover it.
  const uint32_t jwks_max_age =
      config.has_http() && config.http().cache_max_age_seconds() != 0
          ? config.http().cache_max_age_seconds()
          : kDefaultCacheMaxAge;
  const uint32_t iat_skew = config.serving().iat_skew_seconds() != 0
                                ? config.serving().iat_skew_seconds()
                                : kDefaultIatSkew;
  if (config.reconcile_interval_seconds() == 0) {
    config.set_reconcile_interval_seconds(10);
  }
  if (config.reconcile_interval_seconds() > 3600) {
    return FieldError("reconcile_interval_seconds", "at most 3600");
  }
  if (config.key_refresh_interval_seconds() == 0) {
    config.set_key_refresh_interval_seconds(60);
  }
  if (config.key_refresh_interval_seconds() > 3600) {
    return FieldError("key_refresh_interval_seconds", "at most 3600");
  }
  const uint32_t key_refresh = config.key_refresh_interval_seconds();
  for (int i = 0; i < config.scopes_size(); ++i) {
    ScopeConfig& scope = *config.mutable_scopes(i);
    const std::string field =
        absl::StrCat("scopes[", i, "]",
                     scope.name().empty() ? "" : " (" + scope.name() + ")");
    if (!ValidScopeName(scope.name())) {
      return FieldError(
          field + ".name",
          "must be 1-63 characters of a-z, 0-9, '-', '_', '.', starting "
          "with a letter or digit (it appears in URLs)");
    }
    if (!names.insert(scope.name()).second) {
      return FieldError(field + ".name", "duplicate scope name");
    }
    if (scope.audience_class() == signet::v1::AUDIENCE_CLASS_UNSPECIFIED) {
      return FieldError(field + ".audience_class",
                        "must be CONSUMER or ENTERPRISE");
    }
    if (scope.purpose() == signet::v1::PURPOSE_UNSPECIFIED) {
      return FieldError(field + ".purpose", "must be JWT or RAW");
    }
    absl::Status issuer = ValidateIssuer(scope.issuer());
    if (!issuer.ok()) {
      return FieldError(
          field + ".issuer",
          absl::StrCat("\"", scope.issuer(), "\" ", issuer.message()));
    }
    if (!issuers.insert(scope.issuer()).second) {
      return FieldError(field + ".issuer",
                        "another scope has the same issuer; each issuer is "
                        "bound to exactly one scope's keys");
    }
    if (scope.algorithm() == signet::v1::ALGORITHM_UNSPECIFIED) {
      return FieldError(field + ".algorithm",
                        "must be ES256, ES384, RS256 or PS256");
    }
    const bool rsa = scope.algorithm() == signet::v1::RS256 ||
                     scope.algorithm() == signet::v1::PS256;
    if (!rsa && scope.rsa_bits() != 0) {
      return FieldError(field + ".rsa_bits", "only for RS256 and PS256");
    }
    if (scope.max_token_lifetime_seconds() == 0) {
      scope.set_max_token_lifetime_seconds(kDefaultTokenLifetime);
    }
    if (scope.max_token_lifetime_seconds() > kMaxTokenLifetime) {
      return FieldError(
          field + ".max_token_lifetime_seconds",
          absl::StrCat("at most ", kMaxTokenLifetime, " (7 days)"));
    }
    // The key schedule (README, "Key rotation"). A token lives until
    // iat + S + T and verifiers accept it V longer, and a replica may sign
    // with a key up to R after the writer retired it (it re-reads the
    // records every R): the grace covers all of it.
    const uint64_t min_grace = uint64_t{scope.max_token_lifetime_seconds()} +
                               iat_skew + kVerifierLeewaySeconds + key_refresh;
    if (scope.rotation_period_seconds() == 0) {
      scope.set_rotation_period_seconds(kDefaultRotationPeriod);
    }
    const uint32_t min_period =
        config.allow_short_key_schedules() ? kMinShortRotationPeriod : 3600;
    if (scope.rotation_period_seconds() < min_period ||
        scope.rotation_period_seconds() > kMaxRotationPeriod) {
      return FieldError(
          field + ".rotation_period_seconds",
          config.allow_short_key_schedules()
              ? "must be from 2 to 31536000 (365 days)"
              : "must be from 3600 (1 hour) to 31536000 (365 days); shorter "
                "periods need allow_short_key_schedules: true (tests and "
                "demos only)");
    }
    if (scope.publish_grace_seconds() == 0) {
      scope.set_publish_grace_seconds(static_cast<uint32_t>(min_grace + 3600));
    }
    if (scope.publish_grace_seconds() < min_grace) {
      return FieldError(
          field + ".publish_grace_seconds",
          absl::StrCat("must be at least ", min_grace,
                       " (G >= T + S + V + R: max_token_lifetime_seconds + "
                       "serving.iat_skew_seconds + the verifier leeway of ",
                       kVerifierLeewaySeconds,
                       " + key_refresh_interval_seconds), or tokens signed "
                       "late in a key's life, by the writer or a replica "
                       "that has not re-read the records yet, would stop "
                       "verifying before they expire"));
    }
    if (scope.publish_grace_seconds() > kMaxPublishGrace) {
      return FieldError(field + ".publish_grace_seconds",
                        "at most 2592000 (30 days)");
    }
    if (scope.destroy_delay_seconds() == 0) {
      scope.set_destroy_delay_seconds(kDefaultDestroyDelay);
    }
    if (scope.destroy_delay_seconds() > kMaxRotationPeriod) {
      return FieldError(field + ".destroy_delay_seconds",
                        "at most 31536000 (365 days)");
    }
    const uint64_t min_lead = 2 * uint64_t{jwks_max_age} + key_refresh;
    if (scope.min_publish_lead_seconds() == 0) {
      scope.set_min_publish_lead_seconds(static_cast<uint32_t>(min_lead));
    }
    if (scope.min_publish_lead_seconds() < min_lead) {
      return FieldError(
          field + ".min_publish_lead_seconds",
          absl::StrCat("must be at least ", min_lead,
                       " (L >= 2C + R: twice http.cache_max_age_seconds, for "
                       "a CDN and a relying party, + "
                       "key_refresh_interval_seconds), or relying parties "
                       "meet a key before they hold it"));
    }
    if (scope.rotation_period_seconds() <= scope.min_publish_lead_seconds()) {
      return FieldError(
          field + ".rotation_period_seconds",
          absl::StrCat("must be longer than min_publish_lead_seconds (",
                       scope.min_publish_lead_seconds(),
                       "; P > L), or no successor is published long enough "
                       "before it signs"));
    }
    if (scope.tombstone_retention_seconds() == 0) {
      scope.set_tombstone_retention_seconds(30 * 24 * 3600);
    }
    if (scope.tombstone_retention_seconds() > kMaxRotationPeriod) {
      return FieldError(field + ".tombstone_retention_seconds",
                        "at most 31536000 (365 days)");
    }
    if (rsa) {
      if (scope.rsa_bits() == 0) scope.set_rsa_bits(2048);
      if (scope.rsa_bits() != 2048 && scope.rsa_bits() != 3072 &&
          scope.rsa_bits() != 4096) {
        return FieldError(field + ".rsa_bits", "must be 2048, 3072 or 4096");
      }
    }
  }

  std::set<std::string> identities;
  for (int i = 0; i < config.tenants_size(); ++i) {
    signet::v1::TenantConfig& tenant = *config.mutable_tenants(i);
    const std::string field = absl::StrCat("tenants[", i, "]");
    if (!IsTypedIdentity(tenant.identity())) {
      return FieldError(field + ".identity",
                        absl::StrCat("\"", tenant.identity(),
                                     "\" must be uri:<URI SAN> or cn:<CN>"));
    }
    if (!identities.insert(tenant.identity()).second) {
      return FieldError(field + ".identity", "duplicate tenant identity");
    }
    if (tenant.scopes().empty()) {
      return FieldError(field + ".scopes", "a tenant needs at least one scope");
    }
    for (const std::string& scope : tenant.scopes()) {
      if (!names.contains(scope)) {
        return FieldError(field + ".scopes",
                          absl::StrCat("unknown scope \"", scope, "\""));
      }
    }
    if (tenant.max_concurrent_requests() == 0) {
      tenant.set_max_concurrent_requests(64);
    }
    if (tenant.max_answer_memory_mib() == 0) {
      tenant.set_max_answer_memory_mib(128);
    }
    if (tenant.max_answer_memory_mib() > 65536) {
      return FieldError(field + ".max_answer_memory_mib",
                        absl::StrCat(tenant.max_answer_memory_mib(),
                                     " is out of range: 1 to 65536 MiB"));
    }
  }
  for (int i = 0; i < config.admins_size(); ++i) {
    if (!IsTypedIdentity(config.admins(i))) {
      return FieldError(absl::StrCat("admins[", i, "]"),
                        absl::StrCat("\"", config.admins(i),
                                     "\" must be uri:<URI SAN> or cn:<CN>"));
    }
  }
  if (config.audit_log_path().empty() ||
      config.audit_log_path().front() != '/') {
    return FieldError("audit_log_path", "an absolute path is required");
  }
  if (config.has_http()) {
    signet::v1::HttpConfig& http = *config.mutable_http();
    std::string http_host;
    int http_port = 0;
    if (!SplitHostPort(http.listen_address(), &http_host, &http_port)) {
      return FieldError(
          "http.listen_address",
          absl::StrCat("\"", http.listen_address(), "\" is not host:port"));
    }
    if (http.tls_cert_file().empty() != http.tls_key_file().empty()) {
      return FieldError(http.tls_cert_file().empty() ? "http.tls_cert_file"
                                                     : "http.tls_key_file",
                        "tls_cert_file and tls_key_file go together (both "
                        "for HTTPS, neither for plain HTTP on loopback)");
    }
    if (http.tls_cert_file().empty() && !base::IsLoopbackHost(http_host)) {
      return FieldError("http.listen_address",
                        absl::StrCat("\"", http.listen_address(),
                                     "\" is not a loopback address: set "
                                     "http.tls_cert_file and http.tls_key_file "
                                     "(plain HTTP only on loopback)"));
    }
    for (const auto& [field, path] :
         {std::pair<const char*, const std::string&>{"http.tls_cert_file",
                                                     http.tls_cert_file()},
          {"http.tls_key_file", http.tls_key_file()}}) {
      if (!path.empty() && path.front() != '/') {
        return FieldError(field, "an absolute path is required");
      }
    }
    if (http.threads() == 0) http.set_threads(1);
    if (http.threads() > 64) {
      return FieldError("http.threads", "at most 64");
    }
    if (!absl::StartsWith(http.public_base_url(), "https://") &&
        !absl::StartsWith(http.public_base_url(), "http://")) {
      return FieldError("http.public_base_url",
                        "must be an http(s):// URL relying parties reach");
    }
    if (absl::EndsWith(http.public_base_url(), "/")) {
      return FieldError("http.public_base_url", "must not end with '/'");
    }
    if (http.cache_max_age_seconds() == 0) {
      http.set_cache_max_age_seconds(kDefaultCacheMaxAge);
    }
    if (http.max_connections() == 0) http.set_max_connections(4096);
    if (http.max_connections() > 65536) {
      return FieldError("http.max_connections", "at most 65536");
    }
    if (http.max_connections_per_client() == 0) {
      http.set_max_connections_per_client(
          std::max(1u, http.max_connections() / 4));
    }
    if (http.max_connections_per_client() > http.max_connections()) {
      return FieldError("http.max_connections_per_client",
                        absl::StrCat("at most http.max_connections (",
                                     http.max_connections(), ")"));
    }
    if (http.request_deadline_seconds() == 0) {
      http.set_request_deadline_seconds(10);
    }
    if (http.request_deadline_seconds() > 300) {
      return FieldError("http.request_deadline_seconds", "at most 300");
    }
  }
  signet::v1::ServingConfig& serving = *config.mutable_serving();
  if (serving.worker_threads() == 0) {
    serving.set_worker_threads(hsm.connections() *
                               hsm.sessions_per_connection());
  }
  if (serving.queue_size() == 0) serving.set_queue_size(1024);
  if (serving.iat_skew_seconds() == 0) {
    serving.set_iat_skew_seconds(kDefaultIatSkew);
  }
  if (serving.max_batch_size() == 0) serving.set_max_batch_size(256);
  if (serving.max_batch_size() > 4096) {
    return FieldError("serving.max_batch_size", "at most 4096");
  }
  if (serving.max_answer_memory_mib() == 0) {
    serving.set_max_answer_memory_mib(512);
  }
  if (serving.max_answer_memory_mib() < 16 ||
      serving.max_answer_memory_mib() > 65536) {
    return FieldError("serving.max_answer_memory_mib",
                      absl::StrCat(serving.max_answer_memory_mib(),
                                   " is out of range: 16 to 65536 MiB"));
  }
  if (!serving.has_audit_group_commit_delay_us()) {
    serving.set_audit_group_commit_delay_us(2000);
  }
  if (serving.audit_group_commit_delay_us() > 100000) {
    return FieldError("serving.audit_group_commit_delay_us",
                      "at most 100000 (100 ms)");
  }
  if (!serving.has_audit_segment_max_mib()) {
    serving.set_audit_segment_max_mib(1024);
  }
  if (serving.audit_segment_max_mib() > (1u << 20)) {
    return FieldError("serving.audit_segment_max_mib",
                      "at most 1048576 (1 TiB)");
  }
  if (!serving.has_audit_segment_max_age_hours()) {
    serving.set_audit_segment_max_age_hours(24);
  }
  if (serving.audit_segment_max_age_hours() > 24 * 366) {
    return FieldError("serving.audit_segment_max_age_hours",
                      "at most 8784 (a year)");
  }
  if (config.audit_key_rotation_days() == 0) {
    config.set_audit_key_rotation_days(365);
  }
  if (config.audit_key_rotation_days() > 3650) {
    return FieldError("audit_key_rotation_days", "at most 3650 (ten years)");
  }
  if (const uint32_t seconds = config.audit_key_rotation_seconds();
      seconds != 0) {
    const uint32_t least =
        config.allow_short_key_schedules() ? kMinShortRotationPeriod : 3600;
    if (seconds < least) {
      return FieldError(
          "audit_key_rotation_seconds",
          config.allow_short_key_schedules()
              ? absl::StrCat("at least ", least)
              : std::string("at least 3600; shorter periods need "
                            "allow_short_key_schedules: true (tests and "
                            "demos only)"));
    }
    if (seconds > 3650u * 24 * 3600) {
      return FieldError("audit_key_rotation_seconds",
                        "at most 315360000 (ten years)");
    }
  }
  return ValidateGrpcLimits(*config.mutable_grpc());
}

absl::StatusOr<SignetConfig> ParseConfig(absl::string_view text,
                                         const ConfigOptions& options) {
  SignetConfig config;
  google::protobuf::TextFormat::Parser parser;
  CollectErrors errors;
  parser.RecordErrorsTo(&errors);
  if (!parser.ParseFromString(std::string(text), &config)) {
    return absl::InvalidArgumentError(
        absl::StrCat("configuration: ", errors.Joined()));
  }
  absl::Status valid = ValidateConfig(config, options);
  if (!valid.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("configuration: ", valid.message()));
  }
  return config;
}

absl::StatusOr<SignetConfig> LoadConfigFile(absl::string_view path,
                                            const ConfigOptions& options) {
  SIGNET_ASSIGN_OR_RETURN(
      const std::string text,
      base::ReadSmallFile(std::string(path), "configuration file"));
  absl::StatusOr<SignetConfig> config = ParseConfig(text, options);
  if (!config.ok()) {
    return absl::Status(config.status().code(),
                        absl::StrCat(path, ": ", config.status().message()));
  }
  return config;
}

}  // namespace signet::server
