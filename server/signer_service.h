// The Signer gRPC service (proto/signet/v1/signer.proto), callback API.
//
// Every RPC: identify the caller from its mTLS certificate, check that the
// scope is one of the caller's (an unknown scope and another tenant's scope
// get the same PERMISSION_DENIED), validate the input on the callback
// thread, then post the HSM work to the bounded worker pool (full queue:
// RESOURCE_EXHAUSTED; per-tenant limit: RESOURCE_EXHAUSTED). No HSM work
// starts after the deadline, and the deadline watchdog answers every RPC
// by its deadline even when a stalled HSM holds its worker. Nothing signed
// is released before its audit line is on disk (fail closed).
//
// Thread-safe. The scope snapshot is immutable; rotation will swap it.
#ifndef SIGNET_SERVER_SIGNER_SERVICE_H_
#define SIGNET_SERVER_SIGNER_SERVICE_H_

#include <atomic>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/time/time.h"
#include "hsm/key_store.h"
#include "rotation/key_record.pb.h"
#include "server/audit_log.h"
#include "server/claims.h"
#include "server/pending_call.h"
#include "server/worker_pool.h"
#include "signet/v1/config.pb.h"
#include "signet/v1/signer.grpc.pb.h"

namespace signet::server {

struct PublishedDocuments;  // server/publication.h

// A scope as the service serves it: its configuration and active key.
struct ScopeState {
  signet::v1::ScopeConfig config;
  std::string alg;  // JOSE name
  rotation::KeyRecord record;
  hsm::LoadedKey key;
  std::string header_b64;    // JWT scopes: the protected header, encoded
  std::string spki_pem;  // RAW scopes (published per the key's state)
};

// Builds a scope's serving state from its active key.
absl::StatusOr<std::shared_ptr<const ScopeState>> MakeScopeState(
    const signet::v1::ScopeConfig& config, const rotation::KeyRecord& record,
    const hsm::LoadedKey& key);

// A SignJwtBatch is split into parts of at least this many items, one per
// worker at most.
inline constexpr int kMinBatchPart = 16;

struct SignerServiceOptions {
  absl::Duration iat_skew = absl::Seconds(60);
  int max_batch_size = 256;
  // Longest an RPC may wait for the HSM, whatever deadline the client set.
  absl::Duration max_rpc_time = absl::Seconds(30);
  // Plain-text development mode: callers have the identity
  // "insecure:plaintext" (which must be listed as a tenant to sign).
  bool plaintext = false;
};

// What the service signs with, once the HSM is up. Immutable; swapped
// whole.
struct ServingState {
  std::map<std::string, std::shared_ptr<const ScopeState>> scopes;
  hsm::KeyStore* store = nullptr;
  WorkerPool* workers = nullptr;
  AuditLog* audit = nullptr;
};

class SignerService final : public signet::v1::Signer::CallbackService {
 public:
  // Until SetServing() every RPC answers UNAVAILABLE ("starting").
  SignerService(SignerServiceOptions options,
                const std::vector<signet::v1::TenantConfig>& tenants);
  ~SignerService() override;

  void SetServing(std::shared_ptr<const ServingState> serving)
      ABSL_LOCKS_EXCLUDED(mu_);
  // What GetJwks and GetPublicKeys answer: the documents the HTTP endpoint
  // serves, built for the current key state (signetd replaces them when a
  // key's state changes). Until set, those RPCs answer UNAVAILABLE.
  void SetPublished(std::shared_ptr<const PublishedDocuments> published)
      ABSL_LOCKS_EXCLUDED(mu_);

  grpc::ServerUnaryReactor* SignJwt(grpc::CallbackServerContext* context,
                                    const signet::v1::SignJwtRequest* request,
                                    signet::v1::SignJwtResponse* response)
      override;
  grpc::ServerUnaryReactor* SignJwtBatch(
      grpc::CallbackServerContext* context,
      const signet::v1::SignJwtBatchRequest* request,
      signet::v1::SignJwtBatchResponse* response) override;
  grpc::ServerUnaryReactor* Sign(grpc::CallbackServerContext* context,
                                 const signet::v1::SignRequest* request,
                                 signet::v1::SignResponse* response) override;
  grpc::ServerUnaryReactor* GetJwks(grpc::CallbackServerContext* context,
                                    const signet::v1::GetJwksRequest* request,
                                    signet::v1::GetJwksResponse* response)
      override;
  grpc::ServerUnaryReactor* GetPublicKeys(
      grpc::CallbackServerContext* context,
      const signet::v1::GetPublicKeysRequest* request,
      signet::v1::GetPublicKeysResponse* response) override;

 private:
  struct Tenant {
    std::string identity;
    absl::flat_hash_set<std::string> scopes;
    int max_concurrent = 64;
    std::atomic<int> in_flight{0};
  };
  struct Authorized {
    Tenant* tenant;
    std::shared_ptr<const ScopeState> scope;
    std::shared_ptr<const ServingState> serving;
  };

  std::shared_ptr<const ServingState> Serving() const ABSL_LOCKS_EXCLUDED(mu_);
  std::shared_ptr<const PublishedDocuments> Published() const
      ABSL_LOCKS_EXCLUDED(mu_);

  // The caller's identity, or the status to answer with. Identities are
  // cached by certificate: parsing X.509 on every RPC was 40% of signetd's
  // CPU under unary load, and the identity depends only on the bytes
  // (revocation is checked by the TLS handshake).
  absl::StatusOr<std::string> Caller(grpc::CallbackServerContext* context);
  // Identity + tenant + scope checks.
  absl::StatusOr<Authorized> Authorize(grpc::CallbackServerContext* context,
                                       const std::string& scope_name,
                                       std::string* caller);
  absl::Time DeadlineOf(grpc::CallbackServerContext* context) const;
  // Takes a slot of the tenant's concurrency limit; RESOURCE_EXHAUSTED.
  absl::Status Admit(Tenant* tenant);
  ClaimsPolicy PolicyFor(const ScopeState& scope, absl::Time now) const;
  static absl::Status CheckPurpose(const ScopeState& scope,
                                   signet::v1::Purpose wanted);
  // One part of a request's HSM work. It runs once, with `skipped` OK on a
  // worker, or with `skipped` saying why it did not run: the call was
  // answered or past its deadline when a worker took it (no HSM work then),
  // or the queue was full.
  using Part = std::function<void(const std::shared_ptr<PendingCall>& call,
                                  const absl::Status& skipped)>;
  // Posts `parts` to the worker pool for an admitted request and arms the
  // deadline watchdog. When the first part cannot be queued the call
  // answers RESOURCE_EXHAUSTED and no part runs.
  grpc::ServerUnaryReactor* Dispatch(grpc::CallbackServerContext* context,
                                     const Authorized& auth,
                                     std::vector<Part> parts);
  // A scope for the public-key RPCs: any authenticated caller; NOT_FOUND
  // for an unknown scope (names are public); FAILED_PRECONDITION for the
  // other purpose.
  absl::StatusOr<std::shared_ptr<const ScopeState>> PublicScope(
      grpc::CallbackServerContext* context, const std::string& scope_name,
      signet::v1::Purpose purpose);
  // Refuses on the callback thread, with an audit refusal line.
  grpc::ServerUnaryReactor* Refuse(grpc::CallbackServerContext* context,
                                   const absl::Status& status,
                                   absl::string_view event,
                                   absl::string_view caller,
                                   absl::string_view scope);

  const SignerServiceOptions options_;
  absl::flat_hash_map<std::string, std::unique_ptr<Tenant>> tenants_;
  mutable absl::Mutex mu_;
  std::shared_ptr<const ServingState> serving_ ABSL_GUARDED_BY(mu_);
  std::shared_ptr<const PublishedDocuments> published_ ABSL_GUARDED_BY(mu_);
  absl::Mutex identities_mu_;
  absl::flat_hash_map<std::string, absl::StatusOr<std::string>> identities_
      ABSL_GUARDED_BY(identities_mu_);
  DeadlineWatchdog watchdog_;
};

// absl::Status -> grpc::Status, in one place.
grpc::Status ToGrpcStatus(const absl::Status& status);

}  // namespace signet::server

#endif  // SIGNET_SERVER_SIGNER_SERVICE_H_
