// The Signer gRPC service (proto/signet/v1/signer.proto), callback API.
//
// Every RPC: receive it as a stream (server/one_request_call.h: the wait for
// its message is bounded), parse the request here (gRPC 1.51 answers a
// request that does not parse with UNIMPLEMENTED and no message before a
// typed handler runs; here it is INVALID_ARGUMENT, audited), identify the
// caller from its mTLS certificate, check that the scope is one of the
// caller's (an unknown scope and another tenant's scope get the same
// PERMISSION_DENIED), validate the input on the callback thread, then post
// the HSM work to the bounded worker pool (full queue: RESOURCE_EXHAUSTED;
// per-tenant limit: RESOURCE_EXHAUSTED). No HSM work starts after the
// deadline, and the deadline watchdog answers every RPC by its deadline even
// when a stalled HSM holds its worker. Nothing signed is released before its
// audit line is on disk (fail closed). Every refusal is audited, and every
// caller-supplied name in a message is quoted and cut short.
//
// Thread-safe. The scope snapshot is immutable; rotation will swap it.
#ifndef SIGNET_SERVER_SIGNER_SERVICE_H_
#define SIGNET_SERVER_SIGNER_SERVICE_H_

#include <grpcpp/support/byte_buffer.h>

#include <atomic>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/time/time.h"
#include "base/clock.h"
#include "server/answer_memory.h"
#include "server/audit_log.h"
#include "server/claims.h"
#include "server/grpc_status.h"
#include "server/one_request_call.h"
#include "server/pending_call.h"
#include "server/serving_state.h"
#include "server/worker_pool.h"
#include "signet/v1/config.pb.h"
#include "signet/v1/signer.grpc.pb.h"

namespace signet::server {

struct PublishedDocuments;  // server/publication.h

// The largest request a caller may legally send: a SignJwtBatch of
// `max_batch_size` claims sets of kMaxClaimsBytes each, with protobuf's
// framing and a scope name. A larger request is refused
// RESOURCE_EXHAUSTED and audited (RequestWaitLimits::max_request_bytes);
// gRPC's own limit is off (its 4 MiB default refused legal batches, and it
// refuses where signet cannot audit).
constexpr int MaxRequestBytes(int max_batch_size) {
  return max_batch_size * (static_cast<int>(kMaxClaimsBytes) + 8) + 4096;
}

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
  // Which key may sign now, and the claims' iat/exp checks. Must outlive
  // the service.
  const base::Clock* clock = &base::SystemClock();
  // Answers held for all tenants together
  // (ServingConfig.max_answer_memory_mib; server/answer_memory.h).
  int64_t max_answer_memory_bytes = int64_t{512} << 20;
};

class SignerService final : public OneRequestService {
 public:
  // Until SetServing() every RPC answers UNAVAILABLE ("starting").
  // `waits` bounds the calls still waiting for their request message; it
  // must outlive the service.
  SignerService(SignerServiceOptions options,
                const std::vector<signet::v1::TenantConfig>& tenants,
                RequestWaits* waits);
  ~SignerService() override;

  void SetServing(std::shared_ptr<const ServingState> serving)
      ABSL_LOCKS_EXCLUDED(mu_);
  // What GetJwks and GetPublicKeys answer: the documents the HTTP endpoint
  // serves, built for the current key state (signetd replaces them when a
  // key's state changes). Until set, those RPCs answer UNAVAILABLE.
  void SetPublished(std::shared_ptr<const PublishedDocuments> published)
      ABSL_LOCKS_EXCLUDED(mu_);

  // What health says of the HSM now (signetd's health loop sets it every
  // second). While it is not OK, signing calls answer UNAVAILABLE at once,
  // saying why, instead of waiting in a stalled HSM until their deadline:
  // a client then retries on another replica within its deadline.
  void SetHsmCondition(const absl::Status& condition) ABSL_LOCKS_EXCLUDED(mu_);

  // For a shutdown: every call still waiting on the HSM at `at` is answered
  // UNAVAILABLE then, so the server's own shutdown never waits out deadlines
  // that a stalled HSM holds.
  void CutOffPendingCalls(base::MonotonicDeadline at) { watchdog_.CutOff(at); }

 private:
  struct Tenant {
    std::string identity;
    absl::flat_hash_set<std::string> scopes;
    int max_concurrent = 64;
    std::atomic<int> in_flight{0};
    // Its answers held in signetd (TenantConfig.max_answer_memory_mib).
    std::unique_ptr<AnswerMemory> answers;
  };
  struct Authorized {
    Tenant* tenant;
    // The key that signs now; or, when none may, the scope's newest key
    // (or a key-less state) so that purpose and claims are still checked,
    // and `can_sign` says why none signs (ScopeKeys::CanSignAt).
    std::shared_ptr<const ScopeState> scope;
    std::shared_ptr<const ServingState> serving;
    absl::Status can_sign;
  };
  // One call on its way: where it came from and how it is answered (the
  // answer serializes the response, then finishes the reactor).
  struct Call {
    grpc::CallbackServerContext* context;
    const char* method;
    std::function<void(const grpc::Status&)> answer;
    // Its answer's hold on the tenant's and all tenants' answer memory;
    // null for a call refused before its request was read.
    AnswerHold* answer_hold = nullptr;
  };
  template <typename Request, typename Response>
  using Handler = void (SignerService::*)(const Call&, const Request&,
                                          Response*);

  template <typename Request, typename Response>
  class UnaryCall;
  // Registers the Signer method `name` ("/signet.v1.Signer/Sign"), answered
  // by `handler`.
  template <typename Request, typename Response>
  void AddUnary(const char* name, const char* method,
                Handler<Request, Response> handler);
  // Runs `handler` on a request that arrived, or refuses a request that
  // does not parse.
  template <typename Request, typename Response>
  void Serve(const Call& call, const grpc::ByteBuffer& bytes,
             Response* response, Handler<Request, Response> handler);
  // A call whose request is refused before it is parsed (none came before
  // the half-close, or it is over the size limit): audited and answered.
  void RefuseRequest(const Call& call, const absl::Status& status);

  void HandleSignJwt(const Call& call,
                     const signet::v1::SignJwtRequest& request,
                     signet::v1::SignJwtResponse* response);
  void HandleSignJwtBatch(const Call& call,
                          const signet::v1::SignJwtBatchRequest& request,
                          signet::v1::SignJwtBatchResponse* response);
  void HandleSign(const Call& call, const signet::v1::SignRequest& request,
                  signet::v1::SignResponse* response);
  void HandleGetJwks(const Call& call,
                     const signet::v1::GetJwksRequest& request,
                     signet::v1::GetJwksResponse* response);
  void HandleGetPublicKeys(const Call& call,
                           const signet::v1::GetPublicKeysRequest& request,
                           signet::v1::GetPublicKeysResponse* response);

  std::shared_ptr<const ServingState> Serving() const ABSL_LOCKS_EXCLUDED(mu_);
  std::shared_ptr<const PublishedDocuments> Published() const
      ABSL_LOCKS_EXCLUDED(mu_);

  // The caller's identity, or the status to answer with (for a refused
  // certificate, PERMISSION_DENIED saying what the certificate said).
  // Identities are cached by certificate: parsing X.509 on every RPC was a
  // large share of signetd's CPU under unary load (README, "Benchmarks"), and
  // the identity depends only on the bytes (revocation is checked by the TLS
  // handshake).
  absl::StatusOr<std::string> Caller(grpc::CallbackServerContext* context);
  // The caller's identity, or "" for a refused certificate (audited as
  // "unidentified").
  std::string CallerOrEmpty(grpc::CallbackServerContext* context);
  // Identity + tenant + scope checks.
  absl::StatusOr<Authorized> Authorize(grpc::CallbackServerContext* context,
                                       const std::string& scope_name,
                                       std::string* caller);
  // The call's deadline, at most options_.max_rpc_time away; when that
  // limit comes first, `note` says so (the watchdog's answer names it, so
  // a caller with a later deadline is not told it was theirs).
  base::MonotonicDeadline DeadlineOf(grpc::CallbackServerContext* context,
                                     std::string* note) const;
  // Takes a slot of the tenant's concurrency limit and holds
  // `answer_bytes`, the largest answer the call can have, in the tenant's
  // and all tenants' answer memory; UNAVAILABLE while health says the HSM
  // cannot sign; RESOURCE_EXHAUSTED when the tenant is at its limit of
  // requests in flight, or either account would pass its limit.
  absl::Status Admit(const Call& call, Tenant* tenant, int64_t answer_bytes);
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
  // answers RESOURCE_EXHAUSTED and no part runs. `caller` is Authorize's,
  // for the audit line of a call refused there or answered at its deadline.
  void Dispatch(const Call& call, const Authorized& auth,
                const std::string& caller, std::vector<Part> parts);
  // A scope for the public-key RPCs: any authenticated caller; NOT_FOUND
  // for an unknown scope (names are public); FAILED_PRECONDITION for the
  // other purpose.
  absl::StatusOr<std::shared_ptr<const ScopeKeys>> PublicScope(
      grpc::CallbackServerContext* context, const std::string& scope_name,
      signet::v1::Purpose purpose);
  // Answers a public-key RPC: refusals of the caller or of the request are
  // audited, lookups of an unknown scope are not.
  void FinishPublic(const Call& call, const absl::Status& status,
                    absl::string_view scope);
  // Refuses on the callback thread, with an audit refusal line. An empty
  // `caller` (the certificate was refused) is audited as "unidentified",
  // with the refusal's message, which says what the certificate said.
  void Refuse(const Call& call, const absl::Status& status,
              absl::string_view caller, absl::string_view scope);

  const SignerServiceOptions options_;
  RequestWaits* const waits_;
  absl::flat_hash_map<std::string, std::unique_ptr<Tenant>> tenants_;
  AnswerMemory answers_;  // all tenants' answers
  mutable absl::Mutex mu_;
  std::shared_ptr<const ServingState> serving_ ABSL_GUARDED_BY(mu_);
  std::shared_ptr<const PublishedDocuments> published_ ABSL_GUARDED_BY(mu_);
  // SetHsmCondition's status, and whether it is OK (read on every call
  // without the lock).
  absl::Status hsm_condition_ ABSL_GUARDED_BY(mu_);
  std::atomic<bool> hsm_ok_{true};
  absl::Mutex identities_mu_;
  absl::flat_hash_map<std::string, absl::StatusOr<std::string>> identities_
      ABSL_GUARDED_BY(identities_mu_);
  DeadlineWatchdog watchdog_;
};

// A batch item's code (a google.rpc.Code, the same numbers as
// absl::StatusCode) and message from `status`: the batch's one conversion.
void SetItemStatus(const absl::Status& status,
                   signet::v1::SignJwtBatchItem* item);

// INVALID_ARGUMENT unless `name` can be a scope's name; the message quotes
// the name cut short, so a 9,000-byte name cannot outgrow the status.
absl::Status CheckScopeName(absl::string_view name);

}  // namespace signet::server

#endif  // SIGNET_SERVER_SIGNER_SERVICE_H_
