// signetctl: a command-line client of signetd (client/README.md).
//
//   signetctl claims --iss URL [--sub S] [--aud A]... [--ttl SECONDS]
//       prints a claims set {"iss","sub","aud","iat","exp"} with iat = now
//       and exp = now + ttl (default 600), for sign-jwt to read.
//   signetctl sign-jwt --scope S [--claims FILE|-]      compact JWS
//   signetctl sign --scope S (--payload-file FILE|- | --digest-hex HEX)
//       {"alg","kid","signature"} with the signature base64url (r||s for
//       ECDSA)
//   signetctl jwks --scope S                            the scope's JWK set
//   signetctl public-keys --scope S                     SPKI PEMs (RAW scopes)
//
// Operators' commands (the Admin service; a table, or --json):
//   signetctl scopes list
//   signetctl keys list SCOPE
//   signetctl keys rotate SCOPE [--now] [--yes] [--request-id ID]
//   signetctl keys revoke SCOPE KID --reason TEXT [--yes] [--request-id ID]
//     (a KID may begin with '-': it is still read as the KID)
//   signetctl status
// `keys rotate --now` and `keys revoke` ask on a terminal and refuse
// without --yes when there is none.
//
// Connection options of every command that talks to signetd:
//   --target host:port (default localhost:7443), --ca, --cert, --key (or
//   SIGNET_TARGET, SIGNET_CA, SIGNET_CERT, SIGNET_KEY; a flag wins),
//   --client NAME, --timeout SECONDS, --max-attempts N, -v/--verbose.
// Without --ca/--cert/--key the files come from the development PKI of the
// state directory that scripts/run uses (StateDir() below):
//   <state>/tls/ca.pem, <state>/tls/clients/<NAME>.{pem,key}, NAME being
//   --client (default demo-consumer; demo-admin for operators' commands).
//
// Exit codes: 0 success; 1 a failure (an error from signetd or the client,
// an input that cannot be read, a change not confirmed); 2 a usage error
// (unknown option, missing required option, a destructive change without
// --yes and no terminal); 3 permission denied (PERMISSION_DENIED,
// UNAUTHENTICATED); 4 unavailable (UNAVAILABLE, DEADLINE_EXCEEDED).
#include <grpc/support/log.h>
#include <sys/stat.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <exception>
#include <iostream>
#include <iterator>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "absl/random/random.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "base/base64url.h"
#include "base/file.h"
#include "client/client.h"
#include "google/protobuf/util/json_util.h"

namespace signet::client {
namespace {

bool verbose = false;

void Verbose(absl::string_view line) {
  if (verbose) std::cerr << "signetctl: " << line << std::endl;
}

// gRPC's own log lines (handshake failures and the like) only with
// --verbose: without it the one error line of signetctl says it all.
void GrpcLog(gpr_log_func_args* args) {
  if (verbose) {
    std::cerr << "signetctl: grpc: " << args->file << ":" << args->line << ": "
              << args->message << std::endl;
  }
}

bool IsFile(const std::string& path) {
  struct stat st;
  return stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode);
}

// The state directory of scripts/run: $SIGNET_STATE_DIR if set, else
// <repo>/var when it holds a development PKI (<repo>/var/tls/ca.pem), else
// /var/lib/signet (where scripts/run goes when the service users cannot
// reach the repository).
std::string StateDir(std::string* why) {
  if (const char* env = std::getenv("SIGNET_STATE_DIR");
      env != nullptr && *env != '\0') {
    *why = "$SIGNET_STATE_DIR";
    return env;
  }
  std::string repo_var = absl::StrCat(SIGNET_SOURCE_DIR, "/var");
  if (IsFile(repo_var + "/tls/ca.pem")) {
    *why = "the repository's state directory";
    return repo_var;
  }
  *why = "the system state directory";
  return "/var/lib/signet";
}

struct Connection {
  std::string target = "localhost:7443";
  std::string ca, cert, key;
  std::string client_name = "demo-consumer";
  double timeout_seconds = 5;
  int max_attempts = 4;
};

void AddConnectionOptions(CLI::App* command, Connection* c) {
  // A flag wins over its environment variable.
  command->add_option("--target", c->target, "signetd's gRPC address")
      ->envname("SIGNET_TARGET")
      ->capture_default_str();
  command
      ->add_option("--ca", c->ca,
                   "CA certificate (PEM) that issued signetd's "
                   "certificate [default: <state>/tls/ca.pem]")
      ->envname("SIGNET_CA");
  command
      ->add_option("--cert", c->cert,
                   "client certificate (PEM) [default: "
                   "<state>/tls/clients/<client>.pem]")
      ->envname("SIGNET_CERT");
  command
      ->add_option("--key", c->key,
                   "client private key (PEM) [default: "
                   "<state>/tls/clients/<client>.key]")
      ->envname("SIGNET_KEY");
  command
      ->add_option("--client", c->client_name,
                   "which development client certificate of <state> to use "
                   "when --cert/--key are not given")
      ->capture_default_str();
  command
      ->add_option("--timeout", c->timeout_seconds,
                   "deadline of the whole call in seconds, retries included")
      ->check(CLI::Validator(
          [](std::string& value) -> std::string {
            double seconds = 0;
            if (!absl::SimpleAtod(value, &seconds) || !(seconds > 0) ||
                seconds > 3600) {
              return "a number of seconds in (0, 3600] is "
                     "needed, not \"" +
                     value + "\"";
            }
            return "";
          },
          "SECONDS"))
      ->capture_default_str();
  command
      ->add_option("--max-attempts", c->max_attempts,
                   "attempts in all; only UNAVAILABLE and RESOURCE_EXHAUSTED "
                   "are retried")
      ->check(CLI::Range(1, 100))
      ->capture_default_str();
}

absl::StatusOr<std::unique_ptr<Client>> Connect(const Connection& c) {
  ClientOptions options;
  options.target = c.target;
  options.timeout = absl::Seconds(c.timeout_seconds);
  options.max_attempts = c.max_attempts;
  bool defaults = c.ca.empty() || c.cert.empty() || c.key.empty();
  std::string state, why;
  if (defaults) state = StateDir(&why);
  options.ca_file = c.ca.empty() ? state + "/tls/ca.pem" : c.ca;
  options.cert_file = c.cert.empty() ? absl::StrCat(state, "/tls/clients/",
                                                    c.client_name, ".pem")
                                     : c.cert;
  options.key_file = c.key.empty() ? absl::StrCat(state, "/tls/clients/",
                                                  c.client_name, ".key")
                                   : c.key;
  if (defaults)
    Verbose(absl::StrCat("state directory: ", state, " (", why, ")"));
  Verbose(absl::StrCat("target: ", options.target));
  Verbose(absl::StrCat("CA certificate: ", options.ca_file));
  Verbose(absl::StrCat("client certificate: ", options.cert_file));
  Verbose(absl::StrCat("client key: ", options.key_file));
  options.on_attempt_failed = [](const AttemptFailure& f) {
    Verbose(absl::StrCat(
        f.method, " attempt ", f.attempt, " of ", f.max_attempts,
        " failed: ", f.status.ToString(),
        f.will_retry ? absl::StrCat("; retrying in ",
                                    absl::FormatDuration(absl::Trunc(
                                        f.backoff, absl::Milliseconds(1))))
                     : std::string("; not retrying")));
  };
  absl::StatusOr<std::unique_ptr<Client>> client = Client::Create(options);
  // The hint only when the missing file is one this command defaulted (not
  // one a flag or SIGNET_CA/CERT/KEY named).
  auto names_a_default = [&](absl::string_view message) {
    return (c.ca.empty() && absl::StrContains(message, options.ca_file)) ||
           (c.cert.empty() && absl::StrContains(message, options.cert_file)) ||
           (c.key.empty() && absl::StrContains(message, options.key_file));
  };
  if (!client.ok() && defaults &&
      client.status().code() == absl::StatusCode::kNotFound &&
      names_a_default(client.status().message())) {
    return absl::Status(
        client.status().code(),
        absl::StrCat(client.status().message(),
                     " (a default from the state directory ", state,
                     ": start signetd with scripts/run, set "
                     "SIGNET_STATE_DIR, or pass --ca, --cert and --key)"));
  }
  return client;
}

// A whole file, or stdin for "-".
absl::StatusOr<std::string> ReadInput(absl::string_view what,
                                      const std::string& path) {
  if (path == "-") {
    std::string data{std::istreambuf_iterator<char>(std::cin),
                     std::istreambuf_iterator<char>()};
    if (std::cin.bad()) {
      return absl::InvalidArgumentError(
          absl::StrCat("cannot read ", what, " from stdin"));
    }
    return data;
  }
  return base::ReadSmallFile(path, absl::StrCat(what, " file"));
}

// Exit codes (README, "Operating keys"; client/README.md).
constexpr int kExitFailure = 1;
constexpr int kExitUsage = 2;
constexpr int kExitPermissionDenied = 3;
constexpr int kExitUnavailable = 4;

int ExitCodeFor(const absl::Status& status) {
  switch (status.code()) {
    case absl::StatusCode::kOk:
      return 0;
    case absl::StatusCode::kPermissionDenied:
    case absl::StatusCode::kUnauthenticated:
      return kExitPermissionDenied;
    case absl::StatusCode::kUnavailable:
    case absl::StatusCode::kDeadlineExceeded:
      return kExitUnavailable;
    default:
      return kExitFailure;
  }
}

int Fail(const absl::Status& status) {
  std::cerr << "signetctl: error: " << status.ToString() << std::endl;
  return ExitCodeFor(status);
}

// A key change whose answer never came (deadline, lost connection) may
// have been applied: the request id is how to find out without applying
// it twice.
int FailChange(const absl::Status& status, const std::string& request_id) {
  const int code = Fail(status);
  if (absl::StrContains(status.message(), "so it is not made")) {
    // signetd knows: its turn never came (server/admin_service.cc).
    std::cerr << "signetctl: the change was not made; run the same command "
                 "with --request-id "
              << request_id << " to make it" << std::endl;
  } else if (absl::IsDeadlineExceeded(status) || absl::IsUnavailable(status) ||
             absl::IsCancelled(status) || absl::IsUnknown(status)) {
    std::cerr << "signetctl: the change may have been applied or not; run "
                 "the same command with --request-id "
              << request_id
              << " within a day to find out (signetd recognizes a request "
                 "id for at least a day and does not apply it twice)"
              << std::endl;
  }
  return code;
}

int Print(absl::string_view text) {
  std::cout << text;
  if (text.empty() || text.back() != '\n') std::cout << '\n';
  std::cout.flush();
  if (!std::cout) {
    std::cerr << "signetctl: error: cannot write to stdout" << std::endl;
    return 1;
  }
  return 0;
}

int Claims(const std::string& iss, const std::string& sub,
           const std::vector<std::string>& aud, int64_t ttl) {
  int64_t now = absl::ToUnixSeconds(absl::Now());
  nlohmann::ordered_json claims;
  claims["iss"] = iss;
  if (!sub.empty()) claims["sub"] = sub;
  if (aud.size() == 1) {
    claims["aud"] = aud[0];
  } else if (!aud.empty()) {
    claims["aud"] = aud;
  }
  claims["iat"] = now;
  claims["exp"] = now + ttl;
  return Print(claims.dump());
}

int SignJwt(const Connection& c, const std::string& scope,
            const std::string& claims_path) {
  absl::StatusOr<std::string> claims = ReadInput("claims", claims_path);
  if (!claims.ok()) return Fail(claims.status());
  // A file's final newline is not part of the claims (JSON whitespace, but
  // it would end up in the token's payload).
  absl::string_view trimmed = absl::StripTrailingAsciiWhitespace(*claims);
  auto client = Connect(c);
  if (!client.ok()) return Fail(client.status());
  absl::StatusOr<v1::SignJwtResponse> response =
      (*client)->SignJwt(scope, trimmed);
  if (!response.ok()) return Fail(response.status());
  Verbose(absl::StrCat("signed with kid ", response->kid(), " (",
                       response->alg(), ")"));
  return Print(response->jws());
}

// Lower- or upper-case hex, an even number of digits.
absl::StatusOr<std::string> ParseHex(absl::string_view hex) {
  if (hex.empty() || hex.size() % 2 != 0) {
    return absl::InvalidArgumentError(
        "--digest-hex: an even, non-zero number of hex digits is needed");
  }
  for (char ch : hex) {
    if (!absl::ascii_isxdigit(static_cast<unsigned char>(ch))) {
      return absl::InvalidArgumentError(absl::StrCat(
          "--digest-hex: '", std::string(1, ch), "' is not a hex digit"));
    }
  }
  return absl::HexStringToBytes(hex);
}

int Sign(const Connection& c, const std::string& scope,
         const std::string& payload_path, const std::string& digest_hex) {
  std::string input;
  bool is_digest = !digest_hex.empty();
  if (is_digest) {
    absl::StatusOr<std::string> digest = ParseHex(digest_hex);
    if (!digest.ok()) return Fail(digest.status());
    input = *std::move(digest);
  } else {
    absl::StatusOr<std::string> payload = ReadInput("payload", payload_path);
    if (!payload.ok()) return Fail(payload.status());
    input = *std::move(payload);
  }
  auto client = Connect(c);
  if (!client.ok()) return Fail(client.status());
  absl::StatusOr<v1::SignResponse> response =
      is_digest ? (*client)->SignDigest(scope, input)
                : (*client)->SignPayload(scope, input);
  if (!response.ok()) return Fail(response.status());
  nlohmann::ordered_json out;
  out["alg"] = response->alg();
  out["kid"] = response->kid();
  out["signature"] = base::Base64UrlEncode(response->signature());
  return Print(out.dump());
}

int Jwks(const Connection& c, const std::string& scope) {
  auto client = Connect(c);
  if (!client.ok()) return Fail(client.status());
  absl::StatusOr<v1::GetJwksResponse> response = (*client)->GetJwks(scope);
  if (!response.ok()) return Fail(response.status());
  Verbose(absl::StrCat("JWKS version ", response->version()));
  return Print(response->jwks_json());
}

int PublicKeys(const Connection& c, const std::string& scope) {
  auto client = Connect(c);
  if (!client.ok()) return Fail(client.status());
  absl::StatusOr<v1::GetPublicKeysResponse> response =
      (*client)->GetPublicKeys(scope);
  if (!response.ok()) return Fail(response.status());
  std::string out;
  // RFC 7468 section 5.2: text before a PEM boundary is explanatory text,
  // which PEM parsers (OpenSSL's included) skip.
  for (const v1::PublicKeyInfo& key : response->keys()) {
    absl::StrAppend(&out, "kid: ", key.kid(), "\nalg: ", key.alg(), "\n",
                    key.spki_pem());
    if (!out.empty() && out.back() != '\n') out += '\n';
  }
  return Print(out);
}

// ---- Operators' commands (the Admin service) ----

// Prints `rows` under `header` in aligned columns.
int PrintTable(const std::vector<std::string>& header,
               const std::vector<std::vector<std::string>>& rows) {
  std::vector<size_t> width(header.size());
  for (size_t i = 0; i < header.size(); ++i) width[i] = header[i].size();
  for (const auto& row : rows) {
    for (size_t i = 0; i < row.size() && i < width.size(); ++i) {
      width[i] = std::max(width[i], row[i].size());
    }
  }
  std::string out;
  auto line = [&](const std::vector<std::string>& cells) {
    std::string text;
    for (size_t i = 0; i < cells.size(); ++i) {
      absl::StrAppend(&text, cells[i]);
      if (i + 1 < cells.size()) {
        text.append(width[i] - cells[i].size() + 2, ' ');
      }
    }
    absl::StrAppend(&out, text, "\n");
  };
  line(header);
  for (const auto& row : rows) line(row);
  return Print(out);
}

// The response as JSON, with the proto's field names (stable: they are the
// API's) and every field present.
int PrintJson(const google::protobuf::Message& message) {
  google::protobuf::util::JsonPrintOptions options;
  options.preserve_proto_field_names = true;
  options.always_print_primitive_fields = true;
  std::string json;
  auto st =
      google::protobuf::util::MessageToJsonString(message, &json, options);
  if (!st.ok()) {
    return Fail(absl::InternalError(std::string(st.message())));
  }
  return Print(json);
}

std::string OrDash(const std::string& s) { return s.empty() ? "-" : s; }

// A destructive change: asks on a terminal; without one, needs --yes.
// Returns 0 to go on, else the exit code.
int Confirm(const std::string& question, bool yes) {
  if (yes) return 0;
  if (!isatty(STDIN_FILENO)) {
    std::cerr << "signetctl: error: " << question
              << ": no terminal to ask on; pass --yes to confirm" << std::endl;
    return kExitUsage;
  }
  std::cerr << question << " [y/N] " << std::flush;
  std::string answer;
  std::getline(std::cin, answer);
  if (answer == "y" || answer == "yes") return 0;
  std::cerr << "signetctl: not done" << std::endl;
  return kExitFailure;
}

// A new request id: retries of the call reuse it, so the change applies
// once.
std::string NewRequestId() {
  absl::BitGen gen;
  return absl::StrCat("signetctl-", absl::Hex(absl::Uniform<uint64_t>(gen)),
                      absl::Hex(absl::Uniform<uint64_t>(gen)));
}

int ScopesList(const Connection& c, bool json) {
  auto client = Connect(c);
  if (!client.ok()) return Fail(client.status());
  absl::StatusOr<v1::ListScopesResponse> response = (*client)->ListScopes();
  if (!response.ok()) return Fail(response.status());
  if (json) return PrintJson(*response);
  std::vector<std::vector<std::string>> rows;
  for (const v1::ScopeSummary& s : response->scopes()) {
    rows.push_back({s.name(), s.audience_class(), s.purpose(), s.algorithm(),
                    OrDash(s.active_kid()), OrDash(s.standby_kid()),
                    OrDash(s.next_transition()),
                    OrDash(s.next_transition_at())});
  }
  return PrintTable({"SCOPE", "CLASS", "PURPOSE", "ALG", "ACTIVE KID",
                     "STANDBY KID", "NEXT", "AT"},
                    rows);
}

int KeysList(const Connection& c, const std::string& scope, bool json) {
  auto client = Connect(c);
  if (!client.ok()) return Fail(client.status());
  absl::StatusOr<v1::ListKeysResponse> response = (*client)->ListKeys(scope);
  if (!response.ok()) return Fail(response.status());
  if (json) return PrintJson(*response);
  std::vector<std::vector<std::string>> rows;
  for (const v1::KeyInfo& k : response->keys()) {
    std::string state = k.state();
    if (k.standby()) state += " (standby)";
    if (k.private_key_destroyed()) state += " (private key destroyed)";
    rows.push_back({absl::StrCat(k.generation()), k.kid(), state,
                    k.activate_at(), k.retire_at(), k.unpublish_at(),
                    k.revoked_at().empty()
                        ? "-"
                        : absl::StrCat(k.revoked_at(), " by ", k.revoked_by(),
                                       ": ", k.revocation_reason())});
  }
  return PrintTable({"GEN", "KID", "STATE", "SIGNS FROM", "RETIRES",
                     "UNPUBLISHED", "REVOKED"},
                    rows);
}

int KeysRotate(const Connection& c, const std::string& scope, bool now,
               bool yes, std::string request_id, bool json) {
  if (now) {
    if (int code = Confirm(absl::StrCat("Rotate scope ", scope,
                                        " now (its standby signs at once)?"),
                           yes);
        code != 0) {
      return code;
    }
  }
  auto client = Connect(c);
  if (!client.ok()) return Fail(client.status());
  v1::RotateKeyRequest request;
  request.set_scope(scope);
  request.set_mode(now ? v1::IMMEDIATE : v1::PLANNED);
  request.set_request_id(request_id.empty() ? NewRequestId() : request_id);
  Verbose(absl::StrCat("request id ", request.request_id()));
  absl::StatusOr<v1::RotateKeyResponse> response =
      (*client)->RotateKey(request);
  if (!response.ok()) {
    return FailChange(response.status(), request.request_id());
  }
  if (!response->warning().empty()) {
    std::cerr << "signetctl: warning: " << response->warning() << std::endl;
  }
  if (json) return PrintJson(*response);
  return Print(absl::StrCat("scope ", scope, ": ", response->active_kid(),
                            " signs from ", response->activates_at(), "; ",
                            response->retiring_kid(), " retires then\n"));
}

int KeysRevoke(const Connection& c, const std::string& scope,
               const std::string& kid, const std::string& reason, bool yes,
               std::string request_id, bool json) {
  if (int code = Confirm(absl::StrCat("Revoke key ", kid, " of scope ", scope,
                                      " (it leaves every key set and never "
                                      "signs again)?"),
                         yes);
      code != 0) {
    return code;
  }
  auto client = Connect(c);
  if (!client.ok()) return Fail(client.status());
  v1::RevokeKeyRequest request;
  request.set_scope(scope);
  request.set_kid(kid);
  request.set_reason(reason);
  request.set_request_id(request_id.empty() ? NewRequestId() : request_id);
  Verbose(absl::StrCat("request id ", request.request_id()));
  absl::StatusOr<v1::RevokeKeyResponse> response =
      (*client)->RevokeKey(request);
  if (!response.ok()) {
    return FailChange(response.status(), request.request_id());
  }
  if (!response->warning().empty()) {
    std::cerr << "signetctl: warning: " << response->warning() << std::endl;
  }
  if (json) return PrintJson(*response);
  return Print(absl::StrCat(
      "scope ", scope, ": ", response->revoked_kid(), " revoked at ",
      response->revoked_at(),
      response->active_kid().empty()
          ? ""
          : absl::StrCat("; ", response->active_kid(), " signs now"),
      "\n"));
}

int Status(const Connection& c, bool json) {
  auto client = Connect(c);
  if (!client.ok()) return Fail(client.status());
  absl::StatusOr<v1::GetStatusResponse> response = (*client)->GetStatus();
  if (!response.ok()) return Fail(response.status());
  if (json) return PrintJson(*response);
  const v1::GetStatusResponse& r = *response;
  std::string out = absl::StrCat(
      "hsm:        ", r.hsm_reachable() ? "reachable" : "NOT reachable",
      r.hsm_detail().empty() ? "" : absl::StrCat(" (", r.hsm_detail(), ")"),
      "; ", r.sessions_in_use(), " of ", r.sessions_total(),
      " sessions in use on live connections\n",
      "audit log:  ", r.audit_writable() ? "writable" : "NOT writable",
      r.audit_detail().empty() ? "" : absl::StrCat(" (", r.audit_detail(), ")"),
      "\n", "keys:       ",
      r.key_writer() ? "this replica writes keys"
                     : "replica (never_create_keys)",
      "; last reconcile ", OrDash(r.last_reconcile_at()),
      r.last_reconcile_error().empty()
          ? ""
          : absl::StrCat(" FAILED: ", r.last_reconcile_error()),
      "\n",
      r.key_manager_stuck().empty()
          ? ""
          : absl::StrCat("key changes: HELD: ", r.key_manager_stuck(), "\n"),
      r.wall_clock_anomaly().empty()
          ? ""
          : absl::StrCat("wall clock: ", r.wall_clock_anomaly(), "\n"),
      r.token_write_problem().empty()
          ? ""
          : absl::StrCat("token writes: FAILING: ", r.token_write_problem(),
                         "\n"),
      "\n");
  if (int code = Print(out); code != 0) return code;
  std::vector<std::vector<std::string>> rows;
  for (const v1::ScopeStatus& s : r.scopes()) {
    rows.push_back({s.name(), s.serving() ? "SERVING" : "NOT_SERVING",
                    OrDash(s.active_kid()), OrDash(s.standby_kid()),
                    OrDash(s.next_transition()), OrDash(s.next_transition_at()),
                    OrDash(s.clock_anomaly())});
  }
  if (int code = PrintTable({"SCOPE", "HEALTH", "ACTIVE KID", "STANDBY KID",
                             "NEXT", "AT", "CLOCK"},
                            rows);
      code != 0) {
    return code;
  }
  std::string problems;
  for (const v1::ScopeStatus& s : r.scopes()) {
    for (const std::string& problem : s.key_problems()) {
      absl::StrAppend(&problems, "key problem: ", problem, "\n");
    }
  }
  return problems.empty() ? 0 : Print(absl::StrCat("\n", problems));
}

// A kid is a JWK thumbprint (RFC 7638): 43 base64url characters, and one
// in 64 begins with '-', which CLI11 takes for an option (and "-h..." for
// --help: nothing revoked, exit 0). Such an argument is moved behind a "--",
// where CLI11 reads only positionals, unless it is the value of the long
// option before it or the command line already has a "--".
bool LooksLikeAKid(absl::string_view arg) {
  return arg.size() == 43 && std::all_of(arg.begin(), arg.end(), [](char c) {
           return absl::ascii_isalnum(static_cast<unsigned char>(c)) ||
                  c == '-' || c == '_';
         });
}

std::vector<char*> KidsAsPositionals(int argc, char** argv) {
  static char separator[] = "--";
  std::vector<char*> args(argv, argv + argc);
  if (std::any_of(args.begin() + std::min(argc, 1), args.end(),
                  [](const char* a) { return absl::string_view(a) == "--"; })) {
    return args;
  }
  auto takes_a_value = [](absl::string_view option) {
    return absl::StartsWith(option, "--") && !absl::StrContains(option, '=') &&
           option != "--yes" && option != "--json" && option != "--now" &&
           option != "--verbose" && option != "--help";
  };
  std::vector<char*> kept, kids;
  for (int i = 0; i < argc; ++i) {
    const absl::string_view arg(argv[i]);
    if (i > 0 && absl::StartsWith(arg, "-") && LooksLikeAKid(arg) &&
        !takes_a_value(argv[i - 1])) {
      kids.push_back(argv[i]);
    } else {
      kept.push_back(argv[i]);
    }
  }
  if (kids.empty()) return args;
  kept.push_back(separator);
  kept.insert(kept.end(), kids.begin(), kids.end());
  return kept;
}

int Run(int argc, char** argv) {
  CLI::App app{
      "signetctl: sign with signetd over mutual TLS (see client/README.md)",
      "signetctl"};
  app.require_subcommand(1);
  app.fallthrough();  // --verbose before or after the command
  app.add_flag("-v,--verbose", verbose,
               "say which files and address are used, and log every failed "
               "attempt, on stderr");

  std::string iss, sub;
  std::vector<std::string> aud;
  int64_t ttl = 600;
  CLI::App* claims = app.add_subcommand(
      "claims", "print a JWT claims set with iat = now and exp = now + ttl");
  claims->add_option("--iss", iss, "issuer (the scope's issuer URL)")
      ->required();
  claims->add_option("--sub", sub, "subject");
  claims->add_option("--aud", aud, "audience (repeat for several)");
  claims->add_option("--ttl", ttl, "lifetime in seconds")
      ->check(CLI::Range(int64_t{1}, int64_t{366} * 24 * 3600))
      ->capture_default_str();

  // One Connection per command: CLI11 fills an option of a command that
  // was not run from its environment variable too, so a variable shared
  // between commands let SIGNET_CERT overwrite the --cert of the command
  // that ran (sixth outside attack).
  std::deque<Connection> connections;
  auto add_connection = [&connections](CLI::App* command,
                                       const char* client_name) {
    Connection& c = connections.emplace_back();
    c.client_name = client_name;
    AddConnectionOptions(command, &c);
    return &c;
  };
  std::string scope;
  auto add_scope = [&scope](CLI::App* command) {
    command->add_option("--scope", scope, "the scope to use")->required();
  };

  std::string claims_path = "-";
  CLI::App* sign_jwt = app.add_subcommand(
      "sign-jwt", "sign a JWT with a JWT scope; prints the compact JWS");
  add_scope(sign_jwt);
  sign_jwt
      ->add_option("--claims", claims_path,
                   "the claims JSON: a file, or - for stdin")
      ->capture_default_str();
  Connection* sign_jwt_connection = add_connection(sign_jwt, "demo-consumer");

  std::string payload_path, digest_hex;
  CLI::App* sign = app.add_subcommand(
      "sign",
      "sign raw data with a RAW scope; prints {alg, kid, signature} with the "
      "signature base64url");
  add_scope(sign);
  CLI::Option_group* input =
      sign->add_option_group("input", "what to sign (exactly one)");
  input->add_option("--payload-file", payload_path,
                    "data for the server to hash and sign: a file, or -");
  input->add_option("--digest-hex", digest_hex,
                    "a digest of the scope's hash length, in hex");
  input->require_option(1);
  Connection* sign_connection = add_connection(sign, "demo-consumer");

  CLI::App* jwks =
      app.add_subcommand("jwks", "print a JWT scope's JWK set (JSON)");
  add_scope(jwks);
  Connection* jwks_connection = add_connection(jwks, "demo-consumer");

  CLI::App* public_keys = app.add_subcommand(
      "public-keys", "print a RAW scope's public keys (SPKI PEM)");
  add_scope(public_keys);
  Connection* public_keys_connection =
      add_connection(public_keys, "demo-consumer");

  // Operators' commands: the development state's demo admin by default.
  bool json = false;
  bool yes = false;
  bool rotate_now = false;
  std::string kid, reason, request_id;
  auto add_json = [&json](CLI::App* command) {
    command->add_flag("--json", json,
                      "JSON with the API's field names instead of a table");
  };
  CLI::App* scopes_cmd = app.add_subcommand("scopes", "operators: scopes");
  scopes_cmd->require_subcommand(1);
  CLI::App* scopes_list = scopes_cmd->add_subcommand(
      "list", "every scope with its active key, standby and next transition");
  add_json(scopes_list);
  Connection* scopes_list_connection =
      add_connection(scopes_list, "demo-admin");

  CLI::App* keys_cmd = app.add_subcommand("keys", "operators: keys");
  keys_cmd->require_subcommand(1);
  CLI::App* keys_list = keys_cmd->add_subcommand(
      "list", "every key of a scope, with its schedule");
  keys_list->add_option("SCOPE", scope, "the scope")->required();
  add_json(keys_list);
  Connection* keys_list_connection = add_connection(keys_list, "demo-admin");
  CLI::App* keys_rotate = keys_cmd->add_subcommand(
      "rotate",
      "rotate a scope's key: its standby signs after the publish lead, or "
      "at once with --now");
  keys_rotate->add_option("SCOPE", scope, "the scope")->required();
  keys_rotate->add_flag("--now", rotate_now,
                        "an emergency: the standby signs at once");
  keys_rotate->add_flag("--yes", yes, "do not ask (needed without a terminal)");
  keys_rotate->add_option("--request-id", request_id,
                          "reuse to retry a change safely [default: new]");
  add_json(keys_rotate);
  Connection* keys_rotate_connection =
      add_connection(keys_rotate, "demo-admin");
  CLI::App* keys_revoke = keys_cmd->add_subcommand(
      "revoke", "revoke a key: it leaves every key set and stops signing now");
  keys_revoke->add_option("SCOPE", scope, "the scope")->required();
  keys_revoke->add_option("KID", kid, "the key's kid")->required();
  keys_revoke->add_option("--reason", reason, "why (recorded and audited)")
      ->required();
  keys_revoke->add_flag("--yes", yes, "do not ask (needed without a terminal)");
  keys_revoke->add_option("--request-id", request_id,
                          "reuse to retry a change safely [default: new]");
  add_json(keys_revoke);
  Connection* keys_revoke_connection =
      add_connection(keys_revoke, "demo-admin");

  CLI::App* status = app.add_subcommand(
      "status",
      "operators: what this replica can do now, and each scope's keys");
  add_json(status);
  Connection* status_connection = add_connection(status, "demo-admin");

  try {
    std::vector<char*> args = KidsAsPositionals(argc, argv);
    app.parse(static_cast<int>(args.size()), args.data());
  } catch (const CLI::ParseError& e) {
    // --help prints and exits 0; every other parse error is a usage error.
    int code = app.exit(e);
    return code == 0 ? 0 : 2;
  }
  gpr_set_log_function(GrpcLog);

  if (claims->parsed()) return Claims(iss, sub, aud, ttl);
  if (sign_jwt->parsed()) {
    return SignJwt(*sign_jwt_connection, scope, claims_path);
  }
  if (sign->parsed()) {
    return Sign(*sign_connection, scope, payload_path, digest_hex);
  }
  if (jwks->parsed()) return Jwks(*jwks_connection, scope);
  if (public_keys->parsed()) {
    return PublicKeys(*public_keys_connection, scope);
  }
  if (scopes_list->parsed()) {
    return ScopesList(*scopes_list_connection, json);
  }
  if (keys_list->parsed()) {
    return KeysList(*keys_list_connection, scope, json);
  }
  if (keys_rotate->parsed()) {
    return KeysRotate(*keys_rotate_connection, scope, rotate_now, yes,
                      request_id, json);
  }
  if (keys_revoke->parsed()) {
    return KeysRevoke(*keys_revoke_connection, scope, kid, reason, yes,
                      request_id, json);
  }
  if (status->parsed()) return Status(*status_connection, json);
  std::cerr << app.help();
  return kExitUsage;
}

}  // namespace
}  // namespace signet::client

int main(int argc, char** argv) {
  // CLI11 and the standard library may throw; nothing escapes main.
  try {
    return signet::client::Run(argc, argv);
  } catch (const std::exception& e) {
    std::cerr << "signetctl: error: " << e.what() << std::endl;
    return 1;
  } catch (...) {
    std::cerr << "signetctl: error: unexpected exception" << std::endl;
    return 1;
  }
}
