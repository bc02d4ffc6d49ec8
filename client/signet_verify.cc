// signet-verify: verifies one JWT (compact JWS) read from stdin with
// signet::Verifier (client/verifier.h) and prints its claims.
//
//   signet-verify --issuer URL --jwks-url URL [--issuer URL --jwks-url URL]...
//                 [--audience A]... [--leeway SECONDS] [--alg ALG]...
//                 [--ca-file PEM] [--timeout SECONDS] < token
//
// Each --issuer is bound to the --jwks-url at the same position: a token is
// accepted only with a key from the set of the issuer its "iss" claims.
//
// Output: the verified claims JSON, exactly as signed, and a newline, on
// stdout. Exit codes: 0 the token is valid; 1 it is refused, or its key
// set cannot be fetched, or stdin cannot be read (stderr:
// "signet-verify: error: <reason>: <detail>", the reason being one of
// VerifyErrorName's names); 2 a usage error (unknown option, issuers and
// URLs that do not pair up, a URL or algorithm the verifier refuses, an
// unreadable CA file).
#include <CLI/CLI.hpp>
#include <cstdio>
#include <exception>
#include <iostream>
#include <iterator>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "client/verifier.h"

namespace signet {
namespace {

constexpr size_t kMaxInputBytes = 1024 * 1024;

int Fail(int code, absl::string_view message) {
  std::cerr << "signet-verify: error: " << message << std::endl;
  return code;
}

int Run(int argc, char** argv) {
  CLI::App app{
      "signet-verify: verify a JWT read from stdin against the key set of "
      "the issuer it claims; prints its claims (see client/README.md)",
      "signet-verify"};
  std::vector<std::string> issuers, jwks_urls, audiences;
  std::vector<std::string> algorithms = {"ES256", "ES384", "RS256", "PS256"};
  double leeway = 60;
  double timeout = 10;
  std::string ca_file;
  app.add_option("--issuer", issuers,
                 "a trusted issuer (repeatable; pairs with the --jwks-url at "
                 "the same position)")
      ->required();
  app.add_option("--jwks-url", jwks_urls,
                 "that issuer's own JWK set: https://, or http:// on a "
                 "loopback host")
      ->required();
  app.add_option("--audience", audiences,
                 "accept only tokens whose aud names one of these "
                 "(repeatable; default: aud not checked)");
  app.add_option("--leeway", leeway,
                 "allowed clock difference for exp/nbf/iat, seconds")
      ->check(CLI::Range(0.0, 600.0))
      ->capture_default_str();
  app.add_option("--alg", algorithms,
                 "allowed algorithms (repeatable; default ES256 ES384 RS256 "
                 "PS256)");
  app.add_option("--ca-file", ca_file,
                 "PEM bundle of the CAs to trust for https:// (default: the "
                 "system's)");
  app.add_option("--timeout", timeout, "JWKS fetch timeout, seconds")
      ->check(CLI::Range(0.001, 600.0))
      ->capture_default_str();
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    int code = app.exit(e);
    return code == 0 ? 0 : 2;
  }
  if (issuers.size() != jwks_urls.size()) {
    return Fail(2,
                absl::StrCat(issuers.size(), " --issuer but ", jwks_urls.size(),
                             " --jwks-url: give one URL per issuer"));
  }

  VerifierOptions options;
  for (size_t i = 0; i < issuers.size(); ++i) {
    options.issuers.push_back({issuers[i], jwks_urls[i]});
  }
  options.audiences = audiences;
  options.algorithms = algorithms;
  options.leeway = absl::Seconds(leeway);
  options.fetch.ca_file = ca_file;
  options.fetch.timeout = absl::Seconds(timeout);
  absl::StatusOr<std::unique_ptr<Verifier>> verifier =
      Verifier::Create(options);
  if (!verifier.ok()) return Fail(2, verifier.status().message());

  std::string token;
  char buffer[4096];
  while (std::cin.read(buffer, sizeof(buffer)) || std::cin.gcount() > 0) {
    token.append(buffer, static_cast<size_t>(std::cin.gcount()));
    if (token.size() > kMaxInputBytes) {
      return Fail(1, "malformed: the input is larger than 1 MiB");
    }
  }
  if (std::cin.bad()) return Fail(1, "cannot read the token from stdin");

  absl::StatusOr<VerifiedToken> verified = (*verifier)->Verify(token);
  if (!verified.ok()) return Fail(1, verified.status().message());
  std::cout << verified->claims_json << std::endl;
  return std::cout.good() ? 0 : 1;
}

}  // namespace
}  // namespace signet

int main(int argc, char** argv) {
  // CLI11 and the standard library may throw; nothing escapes main.
  try {
    return signet::Run(argc, argv);
  } catch (const std::exception& e) {
    std::cerr << "signet-verify: error: " << e.what() << std::endl;
    return 1;
  } catch (...) {
    std::cerr << "signet-verify: error: unexpected exception" << std::endl;
    return 1;
  }
}
