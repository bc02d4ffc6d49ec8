#include "client/client.h"

#include <errno.h>
#include <fcntl.h>
#include <grpcpp/create_channel.h>
#include <grpcpp/security/credentials.h>
#include <grpcpp/support/channel_arguments.h>
#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <string.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <memory>
#include <optional>
#include <utility>

#include "absl/random/distributions.h"
#include "absl/random/random.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "base/file.h"
#include "base/status_macros.h"
#include "crypto/public_keys.h"

namespace signet::client {
namespace {

// Reads a whole (small) file into one buffer (base/file.h: no stray copies
// of a private key). NOT_FOUND, PERMISSION_DENIED or INVALID_ARGUMENT, each
// naming `what` and the path.
absl::StatusOr<std::string> ReadFile(absl::string_view what,
                                     const std::string& path) {
  if (path.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(what, ": no file given"));
  }
  absl::StatusOr<std::string> contents = base::ReadSmallFile(path, what);
  if (!contents.ok() && !absl::IsNotFound(contents.status()) &&
      !absl::IsPermissionDenied(contents.status())) {
    return absl::InvalidArgumentError(contents.status().message());
  }
  return contents;
}

// A PEM file that holds `label` ("CERTIFICATE" or "PRIVATE KEY", which
// also matches "EC PRIVATE KEY" and "RSA PRIVATE KEY").
absl::StatusOr<std::string> ReadPem(absl::string_view what,
                                    const std::string& path,
                                    absl::string_view label) {
  absl::StatusOr<std::string> pem = ReadFile(what, path);
  SIGNET_RETURN_IF_ERROR(pem.status());
  absl::Status bad;
  if (!absl::StrContains(*pem, "-----BEGIN ") ||
      !absl::StrContains(*pem, absl::StrCat(label, "-----"))) {
    bad = absl::InvalidArgumentError(absl::StrCat(
        what, " ", path, ": not a PEM file with a ", label, " in it"));
  } else if (absl::StrContains(*pem, "ENCRYPTED PRIVATE KEY")) {
    bad = absl::InvalidArgumentError(absl::StrCat(
        what, " ", path, ": an encrypted private key, which gRPC cannot use"));
  }
  if (!bad.ok()) {
    explicit_bzero(pem->data(), pem->size());
    return bad;
  }
  return pem;
}

using crypto::OsslFree;
using BioPtr = std::unique_ptr<BIO, OsslFree<BIO_free>>;
using X509Ptr = std::unique_ptr<X509, OsslFree<X509_free>>;

// Never prompts for a passphrase (OpenSSL's default callback would read
// the terminal): an encrypted key simply fails to load.
int NoPassphrase(char*, int, int, void*) { return 0; }

X509Ptr FirstCertificate(const std::string& pem) {
  BioPtr bio(BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size())));
  if (bio == nullptr) return nullptr;
  return X509Ptr(PEM_read_bio_X509(bio.get(), nullptr, NoPassphrase, nullptr));
}

// What gRPC would otherwise report on the first call, obscurely (a key that
// does not match its certificate makes an "empty address list"): checked
// here with the file names.
absl::Status CheckTlsFiles(const ClientOptions& options, const std::string& ca,
                           const std::string& cert, const std::string& key) {
  absl::Status status;
  if (FirstCertificate(ca) == nullptr) {
    status = absl::InvalidArgumentError(
        absl::StrCat("CA certificate file ", options.ca_file,
                     ": no certificate in it can be parsed"));
  }
  X509Ptr client_cert;
  if (status.ok()) {
    client_cert = FirstCertificate(cert);
    if (client_cert == nullptr) {
      status = absl::InvalidArgumentError(
          absl::StrCat("client certificate file ", options.cert_file,
                       ": no certificate in it can be parsed"));
    }
  }
  if (status.ok()) {
    BioPtr bio(BIO_new_mem_buf(key.data(), static_cast<int>(key.size())));
    crypto::EvpPkeyPtr pkey(
        bio == nullptr ? nullptr
                       : PEM_read_bio_PrivateKey(bio.get(), nullptr,
                                                 NoPassphrase, nullptr));
    if (pkey == nullptr) {
      status = absl::InvalidArgumentError(
          absl::StrCat("client key file ", options.key_file,
                       ": the private key cannot be parsed"));
    } else if (X509_check_private_key(client_cert.get(), pkey.get()) != 1) {
      status = absl::InvalidArgumentError(absl::StrCat(
          "client key file ", options.key_file,
          " is not the key of the client certificate ", options.cert_file));
    }
  }
  ERR_clear_error();
  return status;
}

int Millis(absl::Duration d) {
  return static_cast<int>(
      std::min<int64_t>(absl::ToInt64Milliseconds(d), 24 * 3600 * 1000));
}

}  // namespace

absl::Status FromGrpcStatus(const grpc::Status& status) {
  if (status.ok()) return absl::OkStatus();
  return absl::Status(static_cast<absl::StatusCode>(status.error_code()),
                      status.error_message());
}

bool IsRetryable(absl::StatusCode code) {
  return code == absl::StatusCode::kUnavailable ||
         code == absl::StatusCode::kResourceExhausted;
}

absl::Duration BackoffDelay(int retry, absl::Duration initial_backoff,
                            absl::Duration max_backoff, double u) {
  if (!(u >= 0.0)) u = 0.0;  // NaN too
  if (u > 1.0) u = 1.0;
  if (initial_backoff <= absl::ZeroDuration() ||
      max_backoff <= absl::ZeroDuration()) {
    return absl::ZeroDuration();
  }
  absl::Duration base = std::min(initial_backoff, max_backoff);
  // Doubling stops at the cap, so no retry count overflows.
  for (int i = 1; i < retry && base < max_backoff; ++i) {
    base = std::min(base * 2, max_backoff);
  }
  return base * (1.0 - u / 2.0);
}

absl::StatusOr<std::unique_ptr<Client>> Client::Create(
    const ClientOptions& options) {
  if (options.target.empty()) {
    return absl::InvalidArgumentError("ClientOptions.target is empty");
  }
  if (options.max_attempts < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("ClientOptions.max_attempts must be at least 1, not ",
                     options.max_attempts));
  }
  if (options.timeout <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError("ClientOptions.timeout must be positive");
  }
  if (options.initial_backoff <= absl::ZeroDuration() ||
      options.max_backoff < options.initial_backoff) {
    return absl::InvalidArgumentError(
        "ClientOptions: initial_backoff must be positive and at most "
        "max_backoff");
  }
  SIGNET_ASSIGN_OR_RETURN(
      std::string ca,
      ReadPem("CA certificate file", options.ca_file, "CERTIFICATE"));
  SIGNET_ASSIGN_OR_RETURN(
      std::string cert,
      ReadPem("client certificate file", options.cert_file, "CERTIFICATE"));
  // The key stays in its StatusOr (no SIGNET_ASSIGN_OR_RETURN): that string
  // is the one copy of it this function makes, and it is zeroed below.
  absl::StatusOr<std::string> key =
      ReadPem("client key file", options.key_file, "PRIVATE KEY");
  SIGNET_RETURN_IF_ERROR(key.status());

  absl::Status files = CheckTlsFiles(options, ca, cert, *key);
  if (!files.ok()) {
    explicit_bzero(key->data(), key->size());
    return files;
  }

  grpc::SslCredentialsOptions ssl;
  ssl.pem_root_certs = std::move(ca);
  ssl.pem_cert_chain = std::move(cert);
  ssl.pem_private_key = *key;
  explicit_bzero(key->data(), key->size());
  std::shared_ptr<grpc::ChannelCredentials> credentials =
      grpc::SslCredentials(ssl);
  explicit_bzero(ssl.pem_private_key.data(), ssl.pem_private_key.size());

  grpc::ChannelArguments args;
  // Reconnect about as often as this client retries: with gRPC's defaults
  // (1 s, growing to 120 s) a restarted signetd would keep answering our
  // retries with the channel's cached connection failure.
  args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS,
              Millis(options.initial_backoff));
  args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, Millis(options.max_backoff));
  // A SignJwtBatch answer may be larger than gRPC's 4 MiB default (256
  // tokens of up to 87 KB); signetd bounds what it sends.
  args.SetMaxReceiveMessageSize(-1);
  std::shared_ptr<grpc::Channel> channel =
      grpc::CreateCustomChannel(options.target, credentials, args);
  return std::unique_ptr<Client>(new Client(options, std::move(channel)));
}

Client::Client(ClientOptions options, std::shared_ptr<grpc::Channel> channel)
    : options_(std::move(options)),
      channel_(std::move(channel)),
      stub_(v1::Signer::NewStub(channel_)),
      admin_stub_(v1::Admin::NewStub(channel_)) {}

absl::Status Client::Call(
    absl::string_view method,
    const std::function<grpc::Status(grpc::ClientContext*)>& rpc) {
  const absl::Time deadline = absl::Now() + options_.timeout;
  std::optional<absl::BitGen> random;  // only a call that retries needs one
  absl::Status status;
  int attempt = 0;
  bool out_of_time = false;
  while (true) {
    ++attempt;
    grpc::ClientContext context;
    context.set_deadline(absl::ToChronoTime(deadline));
    status = FromGrpcStatus(rpc(&context));
    if (status.ok()) return status;
    bool retry = IsRetryable(status.code()) && attempt < options_.max_attempts;
    absl::Duration backoff = absl::ZeroDuration();
    if (retry) {
      if (!random.has_value()) random.emplace();
      backoff =
          BackoffDelay(attempt, options_.initial_backoff, options_.max_backoff,
                       absl::Uniform(*random, 0.0, 1.0));
      // An attempt that would start at the deadline cannot succeed.
      if (absl::Now() + backoff >= deadline) {
        retry = false;
        out_of_time = true;
        backoff = absl::ZeroDuration();
      }
    }
    if (options_.on_attempt_failed) {
      options_.on_attempt_failed(AttemptFailure{
          .method = method,
          .attempt = attempt,
          .max_attempts = options_.max_attempts,
          .status = status,
          .will_retry = retry,
          .backoff = backoff,
      });
    }
    if (!retry) break;
    absl::SleepFor(backoff);
  }
  if (attempt > 1 || out_of_time) {
    return absl::Status(
        status.code(),
        absl::StrCat(status.message(), " (", method, ": gave up after ",
                     attempt, attempt == 1 ? " attempt" : " attempts",
                     out_of_time ? ", the call's deadline left no time for "
                                   "another"
                                 : "",
                     ")"));
  }
  return status;
}

template <typename Stub, typename Request, typename Response>
absl::StatusOr<Response> Client::Unary(
    Stub* stub, absl::string_view method, const Request& request,
    grpc::Status (Stub::*rpc)(grpc::ClientContext*, const Request&,
                              Response*)) {
  Response response;
  SIGNET_RETURN_IF_ERROR(Call(method, [&](grpc::ClientContext* context) {
    response.Clear();
    return (stub->*rpc)(context, request, &response);
  }));
  return response;
}

absl::StatusOr<v1::SignJwtResponse> Client::SignJwt(
    absl::string_view scope, absl::string_view claims_json) {
  v1::SignJwtRequest request;
  request.set_scope(std::string(scope));
  request.set_claims_json(std::string(claims_json));
  return Unary(stub_.get(), "SignJwt", request, &v1::Signer::Stub::SignJwt);
}

absl::StatusOr<v1::SignJwtBatchResponse> Client::SignJwtBatch(
    absl::string_view scope, const std::vector<std::string>& claims_json) {
  v1::SignJwtBatchRequest request;
  request.set_scope(std::string(scope));
  for (const std::string& claims : claims_json) {
    request.add_claims_json(claims);
  }
  return Unary(stub_.get(), "SignJwtBatch", request,
               &v1::Signer::Stub::SignJwtBatch);
}

absl::StatusOr<v1::SignResponse> Client::SignPayload(
    absl::string_view scope, absl::string_view payload) {
  v1::SignRequest request;
  request.set_scope(std::string(scope));
  request.set_payload(std::string(payload));
  return Unary(stub_.get(), "Sign", request, &v1::Signer::Stub::Sign);
}

absl::StatusOr<v1::SignResponse> Client::SignDigest(absl::string_view scope,
                                                    absl::string_view digest) {
  v1::SignRequest request;
  request.set_scope(std::string(scope));
  request.set_digest(std::string(digest));
  return Unary(stub_.get(), "Sign", request, &v1::Signer::Stub::Sign);
}

absl::StatusOr<v1::GetJwksResponse> Client::GetJwks(absl::string_view scope) {
  v1::GetJwksRequest request;
  request.set_scope(std::string(scope));
  return Unary(stub_.get(), "GetJwks", request, &v1::Signer::Stub::GetJwks);
}

absl::StatusOr<v1::GetPublicKeysResponse> Client::GetPublicKeys(
    absl::string_view scope) {
  v1::GetPublicKeysRequest request;
  request.set_scope(std::string(scope));
  return Unary(stub_.get(), "GetPublicKeys", request,
               &v1::Signer::Stub::GetPublicKeys);
}

absl::StatusOr<v1::ListScopesResponse> Client::ListScopes() {
  return Unary(admin_stub_.get(), "ListScopes", v1::ListScopesRequest(),
               &v1::Admin::Stub::ListScopes);
}

absl::StatusOr<v1::ListKeysResponse> Client::ListKeys(absl::string_view scope) {
  v1::ListKeysRequest request;
  request.set_scope(std::string(scope));
  return Unary(admin_stub_.get(), "ListKeys", request,
               &v1::Admin::Stub::ListKeys);
}

absl::StatusOr<v1::RotateKeyResponse> Client::RotateKey(
    const v1::RotateKeyRequest& request) {
  return Unary(admin_stub_.get(), "RotateKey", request,
               &v1::Admin::Stub::RotateKey);
}

absl::StatusOr<v1::RevokeKeyResponse> Client::RevokeKey(
    const v1::RevokeKeyRequest& request) {
  return Unary(admin_stub_.get(), "RevokeKey", request,
               &v1::Admin::Stub::RevokeKey);
}

absl::StatusOr<v1::GetStatusResponse> Client::GetStatus() {
  return Unary(admin_stub_.get(), "GetStatus", v1::GetStatusRequest(),
               &v1::Admin::Stub::GetStatus);
}

}  // namespace signet::client
