#include "server/signer_service.h"

#include <algorithm>
#include <iterator>
#include <utility>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "base/quote.h"
#include "base/status_macros.h"
#include "crypto/digest.h"
#include "hsm/digest.h"
#include "rotation/key_state.h"
#include "rotation/schedule.h"
#include "server/batch_outcome.h"
#include "server/call_deadline.h"
#include "server/claims.h"
#include "server/config.h"
#include "server/identity.h"
#include "server/jwt.h"
#include "server/publication.h"

namespace signet::server {

using base::Quote;
namespace {

using signet::v1::JWT;
using signet::v1::RAW;

constexpr size_t kMaxCachedIdentities = 4096;
// How long before a caller's deadline signet answers DEADLINE_EXCEEDED
// itself (SignerService::DeadlineOf).
constexpr absl::Duration kAnswerHeadroom = absl::Milliseconds(100);

std::string Sha256Hex(absl::string_view data) {
  absl::StatusOr<std::string> d = crypto::Sha256(data);
  return d.ok() ? absl::BytesToHexString(*d) : std::string();
}

// The hex SHA-256 of a signed input for its audit line. The signing digest
// is that hash already for every SHA-256 algorithm: no second hash then.
std::string InputSha256Hex(const ScopeState& scope, absl::string_view digest,
                           absl::string_view input) {
  return scope.key.spec.algorithm != hsm::SignatureAlgorithm::kEcdsaP384Sha384
             ? absl::BytesToHexString(digest)
             : Sha256Hex(input);
}

// A unary call's response, serialized and sent when the call is answered
// OK. Its call holds it until the write is done; the call's answer holds it
// for the workers that fill it.
template <typename Response>
class RawReply {
 public:
  explicit RawReply(
      grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer>* reactor)
      : reactor_(reactor) {}
  Response* response() { return &response_; }
  AnswerHold* answer_hold() { return &answer_hold_; }
  // Ends the call; runs once.
  void Answer(const grpc::Status& status) {
    if (!status.ok()) {
      reactor_->Finish(status);
      return;
    }
    const bool serialized = SerializeMessage(response_, &out_);
    // Only the bytes wait for a client that may read them slowly (an unread
    // answer to a full batch held its message a second time, 22 MB).
    Response().Swap(&response_);
    if (!serialized) {
      reactor_->Finish(ToGrpcStatus(
          absl::InternalError("the response could not be serialized")));
      return;
    }
    answer_hold_.Written(static_cast<int64_t>(out_.Length()));
    reactor_->StartWriteAndFinish(&out_, grpc::WriteOptions(), status);
  }

 private:
  grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer>* const reactor_;
  Response response_;
  grpc::ByteBuffer out_;
  AnswerHold answer_hold_;
};

}  // namespace

void SetItemStatus(const absl::Status& status,
                   signet::v1::SignJwtBatchItem* item) {
  item->set_code(static_cast<int>(status.code()));
  item->set_message(std::string(status.message()));
}

absl::Status CheckScopeName(absl::string_view name) {
  if (name.empty()) return absl::InvalidArgumentError("scope is required");
  if (!ValidScopeName(name)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "scope ", Quote(name),
        " is not a scope name: names are 1 to 63 characters of a-z, 0-9, "
        "'.', '_' and '-', starting with a letter or digit"));
  }
  return absl::OkStatus();
}

SignerService::SignerService(
    SignerServiceOptions options,
    const std::vector<signet::v1::TenantConfig>& tenants, RequestWaits* waits)
    : options_(options),
      waits_(waits),
      answers_(options.max_answer_memory_bytes) {
  // The names gRPC routes by (signer.proto's; the tests call each method
  // through the generated stub).
  AddUnary("/signet.v1.Signer/SignJwt", "SignJwt",
           &SignerService::HandleSignJwt);
  AddUnary("/signet.v1.Signer/SignJwtBatch", "SignJwtBatch",
           &SignerService::HandleSignJwtBatch);
  AddUnary("/signet.v1.Signer/Sign", "Sign", &SignerService::HandleSign);
  AddUnary("/signet.v1.Signer/GetJwks", "GetJwks",
           &SignerService::HandleGetJwks);
  AddUnary("/signet.v1.Signer/GetPublicKeys", "GetPublicKeys",
           &SignerService::HandleGetPublicKeys);
  for (const auto& t : tenants) {
    auto tenant = std::make_unique<Tenant>();
    tenant->identity = t.identity();
    tenant->scopes.insert(t.scopes().begin(), t.scopes().end());
    tenant->max_concurrent =
        t.max_concurrent_requests() == 0 ? 64 : t.max_concurrent_requests();
    tenant->answers = std::make_unique<AnswerMemory>(
        int64_t{t.max_answer_memory_mib() == 0 ? 128
                                               : t.max_answer_memory_mib()}
        << 20);
    tenants_[t.identity()] = std::move(tenant);
  }
}

void SignerService::SetServing(std::shared_ptr<const ServingState> serving) {
  absl::MutexLock lock(&mu_);
  serving_ = std::move(serving);
}

std::shared_ptr<const ServingState> SignerService::Serving() const {
  absl::MutexLock lock(&mu_);
  return serving_;
}

SignerService::~SignerService() = default;

absl::StatusOr<std::string> SignerService::Caller(
    grpc::CallbackServerContext* context) {
  if (options_.plaintext) return std::string("insecure:plaintext");
  std::shared_ptr<const grpc::AuthContext> auth = context->auth_context();
  if (auth == nullptr) return absl::UnauthenticatedError("no TLS peer");
  std::vector<grpc::string_ref> pem = auth->FindPropertyValues("x509_pem_cert");
  if (pem.empty()) return absl::UnauthenticatedError("no client certificate");
  std::string key(pem.front().data(), pem.front().size());
  {
    absl::MutexLock lock(&identities_mu_);
    auto it = identities_.find(key);
    if (it != identities_.end()) return it->second;
  }
  absl::StatusOr<std::string> identity = IdentityFromCertificatePem(key);
  absl::MutexLock lock(&identities_mu_);
  // Bounded: a flood of distinct certificates cannot grow it without limit.
  if (identities_.size() >= kMaxCachedIdentities) identities_.clear();
  identities_.emplace(std::move(key), identity);
  return identity;
}

std::string SignerService::CallerOrEmpty(grpc::CallbackServerContext* context) {
  absl::StatusOr<std::string> identity = Caller(context);
  return identity.ok() ? *std::move(identity) : std::string();
}

absl::StatusOr<SignerService::Authorized> SignerService::Authorize(
    grpc::CallbackServerContext* context, const std::string& scope_name,
    std::string* caller) {
  SIGNET_ASSIGN_OR_RETURN(std::string identity, Caller(context));
  *caller = identity;
  SIGNET_RETURN_IF_ERROR(CheckScopeName(scope_name));
  std::shared_ptr<const ServingState> serving = Serving();
  if (serving == nullptr) {
    return absl::UnavailableError(
        "signetd is starting: the HSM and the scopes' keys are not ready yet");
  }
  auto tenant = tenants_.find(identity);
  auto scope = serving->scopes.find(scope_name);
  // One message for "no such scope" and "not yours": scope names are public,
  // but which tenant holds which scope is not the caller's business.
  if (tenant == tenants_.end() || scope == serving->scopes.end() ||
      !tenant->second->scopes.contains(scope_name)) {
    return absl::PermissionDeniedError(
        absl::StrCat("caller ", Quote(identity, 256),
                     " may not sign with scope \"", scope_name, "\""));
  }
  const ScopeKeys& keys = *scope->second;
  const absl::Time now = options_.clock->Now();
  std::shared_ptr<const ScopeState> signing = keys.SigningAt(now);
  if (signing != nullptr) {
    return Authorized{tenant->second.get(), std::move(signing),
                      std::move(serving), absl::OkStatus()};
  }
  // No key signs: purpose and claims are still checked (the more useful
  // refusal first), then `can_sign` refuses (FAILED_PRECONDITION, not
  // UNAVAILABLE: retrying does not help until the keys are repaired).
  std::shared_ptr<const ScopeState> newest =
      keys.versions().empty() ? nullptr : keys.versions().back();
  if (newest == nullptr) {
    auto keyless = std::make_shared<ScopeState>();
    keyless->config = keys.config();
    keyless->alg = keys.alg();
    newest = std::move(keyless);
  }
  return Authorized{tenant->second.get(), std::move(newest), std::move(serving),
                    keys.CanSignAt(now)};  // not OK: the same instant
}

base::MonotonicDeadline SignerService::DeadlineOf(
    grpc::CallbackServerContext* context, std::string* note) const {
  const base::MonotonicDeadline limit =
      base::MonotonicDeadline::In(options_.max_rpc_time);
  const base::MonotonicDeadline callers =
      AnswerBy(CallDeadline(*context), kAnswerHeadroom);
  if (callers < limit) return callers;
  *note = absl::StrCat(" (signetd's limit of ",
                       absl::FormatDuration(options_.max_rpc_time),
                       callers == base::MonotonicDeadline::Never()
                           ? " per call: the call set no deadline of its own)"
                           : " per call, which came before the caller's "
                             "deadline)");
  return limit;
}

void SignerService::SetHsmCondition(const absl::Status& condition) {
  absl::MutexLock lock(&mu_);
  hsm_condition_ = condition;
  hsm_ok_.store(condition.ok());
}

absl::Status SignerService::Admit(const Call& call, Tenant* tenant,
                                  int64_t answer_bytes) {
  if (!hsm_ok_.load(std::memory_order_relaxed)) {
    absl::MutexLock lock(&mu_);
    if (!hsm_condition_.ok()) {
      return absl::UnavailableError(absl::StrCat(
          "this replica cannot sign right now (", hsm_condition_.message(),
          "); retry, on another replica if you have one"));
    }
  }
  int now = tenant->in_flight.fetch_add(1) + 1;
  if (now > tenant->max_concurrent) {
    tenant->in_flight.fetch_sub(1);
    return absl::ResourceExhaustedError(
        absl::StrCat("caller ", Quote(tenant->identity, 256), " has ",
                     tenant->max_concurrent,
                     " requests in flight, its limit; retry with backoff"));
  }
  if (call.answer_hold == nullptr) return absl::OkStatus();
  const AnswerMemory* refused =
      call.answer_hold->Hold(tenant->answers.get(), &answers_, answer_bytes);
  if (refused == nullptr) return absl::OkStatus();
  tenant->in_flight.fetch_sub(1);
  if (refused == tenant->answers.get()) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "caller ", Quote(tenant->identity, 256), " has ", refused->held() >> 10,
        " KiB of answers in signetd (calls being signed, or answered and not "
        "yet read), and this call's answer (up to ",
        answer_bytes >> 10, " KiB) would pass its limit of ",
        refused->limit() >> 20,
        " MiB (max_answer_memory_mib): read the answers, or send fewer large "
        "calls at once"));
  }
  return absl::ResourceExhaustedError(absl::StrCat(
      "signetd holds ", refused->held() >> 20,
      " MiB of answers for all its callers (being signed, or not yet read), "
      "and this call's answer (up to ",
      answer_bytes >> 10, " KiB) would pass the replica's limit of ",
      refused->limit() >> 20,
      " MiB (serving.max_answer_memory_mib): this replica is busy; retry "
      "with backoff"));
}

namespace {

// A refused call's audit line. Refusals are rate-limited into summaries by
// the audit log (AppendRefusal).
AuditEvent RefusalEvent(const char* method, const absl::Status& status,
                        absl::string_view caller, absl::string_view scope) {
  AuditEvent refusal;
  refusal.event = "refuse";
  refusal.result = absl::StatusCodeToString(status.code());
  if (caller.empty()) {
    // No identity: the certificate was refused (or none came). What it said
    // is in the message.
    refusal.caller = "unidentified";
    refusal.detail = absl::StrCat(method, ": ", status.message());
  } else {
    refusal.caller = std::string(caller);
    refusal.detail = method;
    // Why, when signet's own message says it without quoting the request:
    // which limit, the HSM's condition, the key schedule, authorization, a
    // deadline passed in the queue or at the HSM. A refused request's
    // message (INVALID_ARGUMENT) may quote its claims, which never reach the
    // log.
    switch (status.code()) {
      case absl::StatusCode::kResourceExhausted:
      case absl::StatusCode::kUnavailable:
      case absl::StatusCode::kFailedPrecondition:
      case absl::StatusCode::kPermissionDenied:
      case absl::StatusCode::kDeadlineExceeded:
        absl::StrAppend(&refusal.detail, ": ", status.message());
        break;
      case absl::StatusCode::kInvalidArgument:
        // The rule, not the message (which may quote the claims).
        if (std::string rule = ClaimsRuleOf(status); !rule.empty()) {
          absl::StrAppend(&refusal.detail, ": claims rule ", rule);
        }
        break;
      default:
        break;
    }
  }
  refusal.scope = ValidScopeName(scope) ? std::string(scope) : Quote(scope);
  return refusal;
}

}  // namespace

void SignerService::Refuse(const Call& call, const absl::Status& status,
                           absl::string_view caller, absl::string_view scope) {
  std::shared_ptr<const ServingState> serving = Serving();
  if (serving != nullptr) {
    serving->audit->AppendRefusal(
        RefusalEvent(call.method, status, caller, scope));
  }
  call.answer(ToGrpcStatus(status));
}

ClaimsPolicy SignerService::PolicyFor(const ScopeState& scope,
                                      absl::Time now) const {
  ClaimsPolicy policy;
  policy.issuer = scope.config.issuer();
  policy.max_lifetime =
      absl::Seconds(scope.config.max_token_lifetime_seconds());
  policy.iat_skew = options_.iat_skew;
  policy.now = now;
  return policy;
}

absl::Status SignerService::CheckPurpose(const ScopeState& scope,
                                         signet::v1::Purpose wanted) {
  if (scope.config.purpose() == wanted) return absl::OkStatus();
  if (wanted == JWT) {
    return absl::FailedPreconditionError(
        absl::StrCat("scope ", scope.config.name(),
                     " signs raw data only (purpose RAW); use Sign"));
  }
  return absl::FailedPreconditionError(absl::StrCat(
      "scope ", scope.config.name(),
      " signs JWTs only (purpose JWT); raw signing there could forge "
      "tokens. Use SignJwt"));
}

namespace {
template <typename Value>
const Value* FindOrNull(const std::map<std::string, Value>& map,
                        const std::string& key) {
  auto it = map.find(key);
  return it == map.end() ? nullptr : &it->second;
}
}  // namespace

void SignerService::SetPublished(
    std::shared_ptr<const PublishedDocuments> published) {
  absl::MutexLock lock(&mu_);
  published_ = std::move(published);
}

std::shared_ptr<const PublishedDocuments> SignerService::Published() const {
  absl::MutexLock lock(&mu_);
  return published_;
}

void SignerService::Dispatch(const Call& rpc, const Authorized& auth,
                             const std::string& caller,
                             std::vector<Part> parts) {
  Tenant* tenant = auth.tenant;
  // A call the watchdog answers (its deadline passed in the queue or at the
  // HSM) or the workers' queue refuses is audited like any refusal; an
  // outside attack found neither was.
  auto audit_refusal = [audit = auth.serving->audit, method = rpc.method,
                        caller,
                        scope = auth.scope](const absl::Status& status) {
    audit->AppendRefusal(
        RefusalEvent(method, status, caller, scope->config.name()));
  };
  std::string deadline_note;
  const base::MonotonicDeadline deadline =
      DeadlineOf(rpc.context, &deadline_note);
  auto call = std::make_shared<PendingCall>(
      [answer = rpc.answer](const absl::Status& status) {
        answer(ToGrpcStatus(status));
      },
      deadline, [tenant] { tenant->in_flight.fetch_sub(1); }, watchdog_.list(),
      audit_refusal);
  call->SetDeadlineNote(std::move(deadline_note));
  for (size_t i = 0; i < parts.size(); ++i) {
    auto part = std::make_shared<Part>(std::move(parts[i]));
    // Per tenant: tenants take turns at the workers (server/worker_pool.h).
    absl::Status queued = auth.serving->workers->Submit(
        tenant,
        [call, part] {
          // No HSM work after the deadline: the watchdog has answered.
          if (call->answered() || call->deadline().passed() ||
              !call->MarkStarted()) {
            (*part)(call, absl::DeadlineExceededError(
                              "the deadline passed before this work began"));
            return;
          }
          (*part)(call, absl::OkStatus());
        },
        // An answered call's queued work gives up its place when the queue
        // is full (its refusal is audited: the watchdog's hook).
        [call] { return !call->answered(); });
    if (!queued.ok()) {
      if (i == 0) {
        if (call->Finish(queued)) audit_refusal(queued);
        return;
      }
      (*part)(call, queued);
    }
  }
  watchdog_.Watch(call);
}

namespace {

AuditEvent SignEvent(const ScopeState& scope, absl::string_view caller,
                     std::string input_sha256) {
  AuditEvent event;
  event.event = "sign";
  event.caller = std::string(caller);
  event.scope = scope.config.name();
  event.kid = scope.kid;
  event.alg = scope.alg;
  event.input_sha256 = std::move(input_sha256);
  return event;
}

const absl::Status& AuditUnavailable() {
  static const absl::Status* status = new absl::Status(absl::UnavailableError(
      "the audit log cannot be written, so nothing is signed (fail closed)"));
  return *status;
}

// In a worker: signs `digest` with the scope's key, then queues its audit
// line and returns, so the worker goes back to the HSM while the disk syncs.
// `done` gets the signature once the line is durable (on the audit writer's
// thread), or the error: a signature never leaves before its audit line.
// After a signature's audit line: the call had been answered already (its
// deadline passed, or a shutdown cut it off), so the signature reached
// nobody. A line says so, or the log would claim a token was issued.
void AuditUndelivered(AuditLog& audit, AuditEvent event, std::string detail,
                      const char* result = "DEADLINE_EXCEEDED") {
  event.event = "undelivered";
  event.result = result;
  event.detail = std::move(detail);
  audit.AppendAllAsync(absl::MakeConstSpan(&event, 1),
                       [](const absl::Status&) {});
}

// A signature the key store refused because of the key, not the HSM:
// - the key is no longer loaded (FAILED_PRECONDITION from the store): it
//   was revoked (or left the key sets) between the call choosing it and
//   the HSM call. Retryable (UNAVAILABLE): the next attempt signs with the
//   scope's current key.
// - the token no longer holds it (NOT_FOUND: deleted behind signet's
//   back). Not retryable (FAILED_PRECONDITION); the key manager is asked
//   for a pass now, which unloads it and turns the scope NOT_SERVING.
// - the token holds two private keys with its id (DATA_LOSS). Not
//   retryable (FAILED_PRECONDITION) either; the key manager is asked for a
//   pass now too, which unloads it and says why it cannot be loaded.
// Named by kid, never by the token's CKA_ID.
absl::Status KeyChangedUnderCall(const absl::Status& status,
                                 const ServingState& serving,
                                 const ScopeState& scope) {
  if (status.code() == absl::StatusCode::kNotFound) {
    if (serving.key_gone) serving.key_gone();
    return absl::FailedPreconditionError(absl::StrCat(
        "scope ", scope.config.name(), ": its key ", scope.kid,
        " is no longer in the HSM token (deleted outside signet), so it "
        "cannot sign; an operator must revoke it (signetctl keys revoke ",
        scope.config.name(), " ", scope.kid,
        ", so that the standby signs) or restore it"));
  }
  if (status.code() == absl::StatusCode::kDataLoss) {
    if (serving.key_gone) serving.key_gone();
    return absl::FailedPreconditionError(absl::StrCat(
        "scope ", scope.config.name(), ": its key ", scope.kid,
        " is ambiguous in the HSM token (more than one private key has its "
        "id: planted outside signet), so it cannot sign; an operator "
        "must remove the other key or revoke this one (signetctl keys revoke ",
        scope.config.name(), " ", scope.kid, ")"));
  }
  if (status.code() != absl::StatusCode::kFailedPrecondition) return status;
  return absl::UnavailableError(absl::StrCat(
      "scope ", scope.config.name(), ": key ", scope.kid,
      " was revoked or retired while this call waited; retry (the next "
      "attempt signs with the scope's current key)"));
}

// Whether a call's key has been revoked in this replica since the call took
// it (RevokedKeys): checked before the HSM call and again just before a
// signature is released, so none made with a revoked key leaves once its
// revocation is being written.
class RevocationCheck {
 public:
  RevocationCheck(const ServingState& serving, const ScopeState& scope)
      : revoked_(serving.revoked),
        key_id_(scope.record.key_id()),
        scope_(scope.config.name()),
        kid_(scope.kid) {}
  // OK, or UNAVAILABLE (the next attempt signs with the scope's current
  // key).
  absl::Status Check() const {
    if (revoked_ == nullptr || !revoked_->Contains(key_id_)) {
      return absl::OkStatus();
    }
    return absl::UnavailableError(absl::StrCat(
        "scope ", scope_, ": key ", kid_,
        " was revoked while this call was being signed, and no signature "
        "made with it is released after its revocation; retry (the next "
        "attempt signs with the scope's current key)"));
  }

 private:
  std::shared_ptr<const RevokedKeys> revoked_;
  std::string key_id_;
  std::string scope_;
  std::string kid_;
};

// `done` gets the signature once its audit line is durable, or why there is
// none, and returns whether the signature reached the caller.
void SignThenAudit(const ServingState& serving, const ScopeState& scope,
                   const char* method, absl::string_view caller,
                   absl::string_view digest, std::string input_sha256,
                   absl::Time deadline,
                   std::function<bool(absl::StatusOr<std::string>)> done) {
  // Announced before the HSM call, so a sync the writer is about to make
  // can wait for this line instead of needing another one.
  AuditLog::ExpectedLine expected = serving.audit->ExpectLine();
  RevocationCheck revocation(serving, scope);
  const absl::Status revoked = revocation.Check();
  absl::StatusOr<std::string> signature =
      revoked.ok()
          ? serving.store->SignDigest(scope.key.key_id, digest, deadline)
          : absl::StatusOr<std::string>(revoked);
  if (!signature.ok()) {
    signature = KeyChangedUnderCall(signature.status(), serving, scope);
  }
  AuditEvent event = SignEvent(scope, caller, std::move(input_sha256));
  if (!signature.ok()) {
    event.event = "refuse";
    event.result = absl::StatusCodeToString(signature.status().code());
    // Why (the HSM's or the pool's words, never the request's): an outside
    // attack found such a line with neither method nor reason.
    event.detail = absl::StrCat(method, ": ", signature.status().message());
    serving.audit->AppendRefusal(event);
    done(signature.status());
    return;
  }
  event.result = "OK";
  serving.audit->AppendAllAsync(
      absl::MakeConstSpan(&event, 1),
      [signature = *std::move(signature), done = std::move(done),
       audit = serving.audit, event, revocation = std::move(revocation)](
          const absl::Status& durable) mutable {
        if (!durable.ok()) {
          // A refusal too: counted (the log is broken) in the segment
          // that recovers, as an outside attack found 2,700 of these
          // uncounted.
          event.event = "refuse";
          event.result = "UNAVAILABLE";
          event.detail =
              "the audit log could not be written; the signature "
              "was discarded";
          audit->AppendRefusal(event);
          done(AuditUnavailable());
          return;
        }
        if (absl::Status revoked = revocation.Check(); !revoked.ok()) {
          done(revoked);
          AuditUndelivered(*audit, std::move(event),
                           "its key was revoked before the signature was "
                           "released; the signature was discarded",
                           "UNAVAILABLE");
          return;
        }
        if (!done(std::move(signature))) {
          AuditUndelivered(*audit, std::move(event),
                           "signed after the call was answered (deadline or "
                           "shutdown); the signature was discarded");
        }
      },
      std::move(expected));
}

// A refused batch item's audit line (rate-limited into summaries with the
// other refusals). Only the item's place and the code: its claims, and the
// message that may quote them, never reach the log.
void AuditRefusedItem(AuditLog& audit, absl::string_view caller,
                      absl::string_view scope, int index,
                      const absl::Status& status) {
  AuditEvent refusal;
  refusal.event = "refuse";
  refusal.caller = std::string(caller);
  refusal.scope = std::string(scope);
  refusal.result = absl::StatusCodeToString(status.code());
  refusal.detail = absl::StrCat("SignJwtBatch item ", index);
  // The claims rule, never the message (which may quote the claims).
  if (std::string rule = ClaimsRuleOf(status); !rule.empty()) {
    absl::StrAppend(&refusal.detail, ": claims rule ", rule);
  }
  audit.AppendRefusal(refusal);
}

// A SignJwtBatch call on its way through the workers, in parts.
struct BatchSigning {
  std::shared_ptr<const ServingState> serving;
  std::shared_ptr<const ScopeState> scope;
  std::string caller;
  // One per claims set; a part writes only the items of its own inputs.
  std::vector<signet::v1::SignJwtBatchItem> items;
  // (item index, JWS signing input) of the valid claims sets.
  std::vector<std::pair<int, std::string>> inputs;
  signet::v1::SignJwtBatchResponse* response = nullptr;
  absl::Mutex mu;
  std::vector<AuditEvent> events ABSL_GUARDED_BY(mu);
  int parts_left ABSL_GUARDED_BY(mu) = 0;
  // The inputs not signed (the HSM failed them, their key was revoked, or
  // their part was skipped: deadline, full queue), and the first reason.
  size_t failed ABSL_GUARDED_BY(mu) = 0;
  absl::Status first_failure ABSL_GUARDED_BY(mu);
  size_t first_failure_at ABSL_GUARDED_BY(mu) = 0;  // its part's first input
};

// Signs inputs [begin, end) of `batch` (or, when `skipped` is not OK, marks
// those items with it), then counts the part done. The last part writes the
// whole batch's audit lines in one durable write and answers: no JWS leaves
// before every line of the batch is on disk.
void SignBatchPart(const std::shared_ptr<BatchSigning>& shared, size_t begin,
                   size_t end, const std::shared_ptr<PendingCall>& call,
                   const absl::Status& skipped) {
  BatchSigning& batch = *shared;
  const ScopeState& s = *batch.scope;
  std::vector<AuditEvent> events;
  std::vector<absl::Status> failures;
  if (!skipped.ok()) {
    for (size_t k = begin; k < end; ++k) {
      const int index = batch.inputs[k].first;
      signet::v1::SignJwtBatchItem& item = batch.items[index];
      failures.push_back(skipped);
      SetItemStatus(skipped, &item);
      AuditRefusedItem(*batch.serving->audit, batch.caller, s.config.name(),
                       index, skipped);
    }
  } else {
    // No ExpectLine here: a batch takes longer at the HSM than the group
    // commit window, and its one sync is shared by all its lines anyway.
    // Digests first and JWS afterwards, so the HSM gets the signatures
    // back to back on one session (SignDigests).
    std::vector<std::string> digests;
    std::vector<absl::Status> digest_errors;
    digests.reserve(end - begin);
    for (size_t k = begin; k < end; ++k) {
      absl::StatusOr<std::string> digest =
          hsm::DigestFor(s.key.spec.algorithm, batch.inputs[k].second);
      digest_errors.push_back(digest.status());
      digests.push_back(digest.ok() ? *std::move(digest) : std::string());
    }
    std::vector<absl::StatusOr<std::string>> signatures;
    if (absl::Status revoked = RevocationCheck(*batch.serving, s).Check();
        !revoked.ok()) {
      signatures.assign(end - begin, revoked);
    } else {
      signatures = batch.serving->store->SignDigests(
          s.key.key_id, digests, call->deadline().OnWallClock());
    }
    events.reserve(end - begin);
    for (size_t k = begin; k < end; ++k) {
      const auto& [index, input] = batch.inputs[k];
      signet::v1::SignJwtBatchItem& item = batch.items[index];
      const absl::Status failed =
          !digest_errors[k - begin].ok()
              ? digest_errors[k - begin]
              : KeyChangedUnderCall(signatures[k - begin].status(),
                                    *batch.serving, s);
      if (!failed.ok()) {
        failures.push_back(failed);
        SetItemStatus(failed, &item);
        AuditRefusedItem(*batch.serving->audit, batch.caller, s.config.name(),
                         index, failed);
        continue;
      }
      AuditEvent event = SignEvent(
          s, batch.caller, InputSha256Hex(s, digests[k - begin], input));
      event.result = "OK";
      event.detail = absl::StrCat("batch item ", index);
      events.push_back(std::move(event));
      item.set_jws(CompactJws(input, *signatures[k - begin]));
      item.set_kid(s.kid);
      item.set_alg(s.alg);
    }
  }
  std::vector<AuditEvent> all;
  absl::Status outcome;
  {
    absl::MutexLock lock(&batch.mu);
    std::move(events.begin(), events.end(), std::back_inserter(batch.events));
    // The answer's reason is the first input's that failed, whichever part
    // finishes first.
    if (!failures.empty() &&
        (batch.failed == 0 || begin < batch.first_failure_at)) {
      batch.first_failure = failures.front();
      batch.first_failure_at = begin;
    }
    batch.failed += failures.size();
    if (--batch.parts_left > 0) return;
    all.swap(batch.events);
    outcome =
        BatchOutcome(batch.inputs.size(), batch.failed, batch.first_failure);
  }
  // The last part: every item is written (the lock ordered the others'
  // writes before this).
  batch.serving->audit->AppendAllAsync(
      all, [call, shared, signed_items = all.size(), outcome,
            revocation = RevocationCheck(*batch.serving, *batch.scope)](
               const absl::Status& durable) {
        if (!durable.ok()) {
          AuditEvent refusal;
          refusal.event = "refuse";
          refusal.caller = shared->caller;
          refusal.scope = shared->scope->config.name();
          refusal.result = "UNAVAILABLE";
          refusal.detail =
              absl::StrCat("SignJwtBatch: the audit log could not be written; ",
                           signed_items, " signature(s) discarded");
          shared->serving->audit->AppendRefusal(refusal);
          call->Finish(AuditUnavailable());
          return;
        }
        if (!outcome.ok()) {
          call->Finish(outcome);
          return;
        }
        if (absl::Status revoked = revocation.Check();
            !revoked.ok() && signed_items > 0) {
          call->Finish(revoked);
          AuditUndelivered(
              *shared->serving->audit,
              SignEvent(*shared->scope, shared->caller, std::string()),
              absl::StrCat("a batch whose key was revoked before it was "
                           "released: its ",
                           signed_items, " signed item(s) were discarded"),
              "UNAVAILABLE");
          return;
        }
        const bool delivered = call->Finish(absl::OkStatus(), [&] {
          for (auto& item : shared->items) {
            *shared->response->add_items() = std::move(item);
          }
        });
        if (!delivered && signed_items > 0) {
          AuditEvent event =
              SignEvent(*shared->scope, shared->caller, std::string());
          AuditUndelivered(
              *shared->serving->audit, std::move(event),
              absl::StrCat("a batch signed after the call was answered "
                           "(deadline or shutdown): its ",
                           signed_items, " signed item(s) were discarded"));
        }
      });
}

}  // namespace

void SignerService::HandleSignJwt(const Call& rpc,
                                  const signet::v1::SignJwtRequest& req,
                                  signet::v1::SignJwtResponse* response) {
  const signet::v1::SignJwtRequest* request = &req;
  std::string caller;
  absl::StatusOr<Authorized> auth =
      Authorize(rpc.context, request->scope(), &caller);
  auto refuse = [&](const absl::Status& status) {
    Refuse(rpc, status, caller, request->scope());
  };
  if (!auth.ok()) return refuse(auth.status());
  const ScopeState& scope = *auth->scope;
  if (absl::Status st = CheckPurpose(scope, JWT); !st.ok()) return refuse(st);
  const absl::Time now = options_.clock->Now();
  absl::StatusOr<CheckedClaims> claims =
      CheckClaims(request->claims_json(), PolicyFor(scope, now));
  if (!claims.ok()) return refuse(claims.status());
  if (absl::Status st = auth->can_sign; !st.ok()) return refuse(st);
  std::string signing_input =
      JwsSigningInput(scope.header_b64, request->claims_json());
  if (absl::Status st = Admit(
          rpc, auth->tenant,
          static_cast<int64_t>(signing_input.size()) + kAnswerBytesPerItem);
      !st.ok()) {
    return refuse(st);
  }
  Dispatch(rpc, *auth, caller,
           {[serving = auth->serving, scope_state = auth->scope, caller,
             method = rpc.method, signing_input = std::move(signing_input),
             response](const std::shared_ptr<PendingCall>& call,
                       const absl::Status& skipped) {
             if (!skipped.ok()) return;  // answered already
             const ScopeState& s = *scope_state;
             absl::StatusOr<std::string> digest =
                 hsm::DigestFor(s.key.spec.algorithm, signing_input);
             if (!digest.ok()) {
               call->Finish(digest.status());
               return;
             }
             SignThenAudit(
                 *serving, s, method, caller, *digest,
                 InputSha256Hex(s, *digest, signing_input),
                 call->deadline().OnWallClock(),
                 [call, scope_state, signing_input = std::move(signing_input),
                  response](absl::StatusOr<std::string> signature) {
                   if (!signature.ok()) {
                     return call->Finish(signature.status());
                   }
                   return call->Finish(absl::OkStatus(), [&] {
                     response->set_jws(CompactJws(signing_input, *signature));
                     response->set_kid(scope_state->kid);
                     response->set_alg(scope_state->alg);
                   });
                 });
           }});
}

void SignerService::HandleSignJwtBatch(
    const Call& rpc, const signet::v1::SignJwtBatchRequest& req,
    signet::v1::SignJwtBatchResponse* response) {
  const signet::v1::SignJwtBatchRequest* request = &req;
  std::string caller;
  absl::StatusOr<Authorized> auth =
      Authorize(rpc.context, request->scope(), &caller);
  auto refuse = [&](const absl::Status& status) {
    Refuse(rpc, status, caller, request->scope());
  };
  if (!auth.ok()) return refuse(auth.status());
  const ScopeState& scope = *auth->scope;
  if (absl::Status st = CheckPurpose(scope, JWT); !st.ok()) return refuse(st);
  if (request->claims_json_size() == 0 ||
      request->claims_json_size() > options_.max_batch_size) {
    return refuse(absl::InvalidArgumentError(
        absl::StrCat("a batch holds 1 to ", options_.max_batch_size,
                     " items, not ", request->claims_json_size())));
  }
  const absl::Time now = options_.clock->Now();
  if (absl::Status st = auth->can_sign; !st.ok()) return refuse(st);
  const ClaimsPolicy policy = PolicyFor(scope, now);
  // Validate every item here; only the valid ones reach the HSM.
  auto batch = std::make_shared<BatchSigning>();
  batch->serving = auth->serving;
  batch->scope = auth->scope;
  batch->caller = caller;
  batch->response = response;
  batch->items.resize(request->claims_json_size());
  for (int i = 0; i < request->claims_json_size(); ++i) {
    absl::StatusOr<CheckedClaims> claims =
        CheckClaims(request->claims_json(i), policy);
    if (!claims.ok()) {
      SetItemStatus(absl::Status(claims.status().code(),
                                 absl::StrCat("item ", i, ": ",
                                              claims.status().message())),
                    &batch->items[i]);
      AuditRefusedItem(*auth->serving->audit, caller, scope.config.name(), i,
                       claims.status());
      continue;
    }
    batch->inputs.emplace_back(
        i, JwsSigningInput(scope.header_b64, request->claims_json(i)));
  }
  // The largest answer: every item's JWS (or its refusal) and names.
  int64_t answer_bytes = 0;
  for (const auto& [index, input] : batch->inputs) {
    answer_bytes += static_cast<int64_t>(input.size());
  }
  for (const signet::v1::SignJwtBatchItem& item : batch->items) {
    answer_bytes +=
        static_cast<int64_t>(item.ByteSizeLong()) + kAnswerBytesPerItem;
  }
  if (absl::Status st = Admit(rpc, auth->tenant, answer_bytes); !st.ok()) {
    return refuse(st);
  }
  // Up to one part per worker, each of at least kMinBatchPart items, so a
  // lone batch uses every HSM session instead of one.
  const int n = static_cast<int>(batch->inputs.size());
  const int parts =
      std::max(1, std::min(auth->serving->workers->threads(),
                           (n + kMinBatchPart - 1) / kMinBatchPart));
  {
    absl::MutexLock lock(&batch->mu);
    batch->parts_left = parts;
  }
  std::vector<Part> work;
  for (int p = 0; p < parts; ++p) {
    const size_t begin = static_cast<size_t>(n) * p / parts;
    const size_t end = static_cast<size_t>(n) * (p + 1) / parts;
    work.push_back([batch, begin, end](const std::shared_ptr<PendingCall>& call,
                                       const absl::Status& skipped) {
      SignBatchPart(batch, begin, end, call, skipped);
    });
  }
  Dispatch(rpc, *auth, caller, std::move(work));
}

void SignerService::HandleSign(const Call& rpc,
                               const signet::v1::SignRequest& req,
                               signet::v1::SignResponse* response) {
  const signet::v1::SignRequest* request = &req;
  std::string caller;
  absl::StatusOr<Authorized> auth =
      Authorize(rpc.context, request->scope(), &caller);
  auto refuse = [&](const absl::Status& status) {
    Refuse(rpc, status, caller, request->scope());
  };
  if (!auth.ok()) return refuse(auth.status());
  const ScopeState& scope = *auth->scope;
  if (absl::Status st = CheckPurpose(scope, RAW); !st.ok()) return refuse(st);
  const hsm::SignatureAlgorithm alg = scope.key.spec.algorithm;
  std::string digest;
  switch (request->input_case()) {
    case signet::v1::SignRequest::kPayload: {
      absl::StatusOr<std::string> d = hsm::DigestFor(alg, request->payload());
      if (!d.ok()) return refuse(d.status());
      digest = *d;
      break;
    }
    case signet::v1::SignRequest::kDigest:
      if (request->digest().size() != hsm::DigestLength(alg)) {
        return refuse(absl::InvalidArgumentError(
            absl::StrCat("digest is ", request->digest().size(), " bytes; ",
                         scope.alg, " needs ", hsm::DigestLength(alg))));
      }
      digest = request->digest();
      break;
    default:
      return refuse(
          absl::InvalidArgumentError("give either payload or digest to sign"));
  }
  if (absl::Status st = auth->can_sign; !st.ok()) {
    return refuse(st);
  }
  if (absl::Status st = Admit(rpc, auth->tenant, kAnswerBytesPerItem);
      !st.ok()) {
    return refuse(st);
  }
  Dispatch(
      rpc, *auth, caller,
      {[serving = auth->serving, scope_state = auth->scope, caller, digest,
        method = rpc.method, response](const std::shared_ptr<PendingCall>& call,
                                       const absl::Status& skipped) {
        if (!skipped.ok()) return;  // answered already
        SignThenAudit(*serving, *scope_state, method, caller, digest,
                      absl::BytesToHexString(digest),
                      call->deadline().OnWallClock(),
                      [call, scope_state,
                       response](absl::StatusOr<std::string> signature) {
                        if (!signature.ok()) {
                          return call->Finish(signature.status());
                        }
                        return call->Finish(absl::OkStatus(), [&] {
                          response->set_signature(*std::move(signature));
                          response->set_kid(scope_state->kid);
                          response->set_alg(scope_state->alg);
                        });
                      });
      }});
}

absl::StatusOr<std::shared_ptr<const ScopeKeys>> SignerService::PublicScope(
    grpc::CallbackServerContext* context, const std::string& scope_name,
    signet::v1::Purpose purpose) {
  SIGNET_RETURN_IF_ERROR(Caller(context).status());
  SIGNET_RETURN_IF_ERROR(CheckScopeName(scope_name));
  std::shared_ptr<const ServingState> serving = Serving();
  if (serving == nullptr) {
    return absl::UnavailableError(
        "signetd is starting: the scopes' keys are not ready yet");
  }
  auto scope = serving->scopes.find(scope_name);
  if (scope == serving->scopes.end()) {
    return absl::NotFoundError(
        absl::StrCat("no scope named \"", scope_name, "\""));
  }
  if (scope->second->config().purpose() != purpose) {
    return absl::FailedPreconditionError(
        purpose == JWT
            ? absl::StrCat("scope ", scope_name,
                           " is RAW: its keys are never published as JWKs; "
                           "use GetPublicKeys")
            : absl::StrCat("scope ", scope_name,
                           " is a JWT scope; use GetJwks"));
  }
  return scope->second;
}

void SignerService::HandleGetJwks(const Call& rpc,
                                  const signet::v1::GetJwksRequest& req,
                                  signet::v1::GetJwksResponse* response) {
  const signet::v1::GetJwksRequest* request = &req;
  absl::StatusOr<std::shared_ptr<const ScopeKeys>> scope =
      PublicScope(rpc.context, request->scope(), JWT);
  absl::Status status = scope.status();
  if (scope.ok()) {
    std::shared_ptr<const PublishedDocuments> published = Published();
    const std::string* jwks =
        published ? FindOrNull(published->scope_jwks, request->scope())
                  : nullptr;
    if (jwks == nullptr) {
      status = absl::UnavailableError(
          "signetd is starting: its key sets are not built yet");
    } else {
      response->set_jwks_json(*jwks);
      response->set_version(ContentVersion(*jwks));
    }
  }
  FinishPublic(rpc, status, request->scope());
}

void SignerService::HandleGetPublicKeys(
    const Call& rpc, const signet::v1::GetPublicKeysRequest& req,
    signet::v1::GetPublicKeysResponse* response) {
  const signet::v1::GetPublicKeysRequest* request = &req;
  absl::StatusOr<std::shared_ptr<const ScopeKeys>> scope =
      PublicScope(rpc.context, request->scope(), RAW);
  absl::Status status = scope.status();
  if (scope.ok()) {
    std::shared_ptr<const PublishedDocuments> published = Published();
    const std::vector<RawPublicKey>* keys =
        published ? FindOrNull(published->scope_raw_keys, request->scope())
                  : nullptr;
    const std::string* pem =
        published ? FindOrNull(published->scope_keys_pem, request->scope())
                  : nullptr;
    if (keys == nullptr || pem == nullptr) {
      status = absl::UnavailableError(
          "signetd is starting: its public keys are not built yet");
    } else {
      // Every published key (standby, active, retired); none once none is.
      for (const RawPublicKey& raw : *keys) {
        signet::v1::PublicKeyInfo* key = response->add_keys();
        key->set_kid(raw.kid);
        key->set_alg(raw.alg);
        key->set_spki_pem(raw.spki_pem);
      }
      response->set_version(ContentVersion(*pem));
    }
  }
  FinishPublic(rpc, status, request->scope());
}

void SignerService::FinishPublic(const Call& rpc, const absl::Status& status,
                                 absl::string_view scope) {
  if (status.ok()) {
    rpc.answer(grpc::Status::OK);
    return;
  }
  // A refused certificate or a bad name is audited like any refusal; an
  // unknown scope or the other purpose is a lookup of public data, answered
  // without an audit line.
  const std::string caller = CallerOrEmpty(rpc.context);
  if (caller.empty() || status.code() == absl::StatusCode::kInvalidArgument) {
    Refuse(rpc, status, caller, scope);
    return;
  }
  rpc.answer(ToGrpcStatus(status));
}

// One Signer call: its request is read as a stream's one message
// (server/one_request_call.h), then answered by the method's handler.
template <typename Request, typename Response>
class SignerService::UnaryCall final : public OneRequestCall {
 public:
  UnaryCall(SignerService* service, grpc::CallbackServerContext* context,
            const char* method, Handler<Request, Response> handler)
      : OneRequestCall(service->waits_, context),
        service_(service),
        method_(method),
        handler_(handler) {}
  // After OnDone: the answer is taken, or will never be.
  ~UnaryCall() override {
    if (reply_ != nullptr) reply_->answer_hold()->Release();
  }

 private:
  void OnRequest(const grpc::ByteBuffer& bytes) override {
    reply_ = std::make_shared<RawReply<Response>>(this);
    Call call{
        context(), method_,
        [reply = reply_](const grpc::Status& status) { reply->Answer(status); },
        reply_->answer_hold()};
    service_->Serve(call, bytes, reply_->response(), handler_);
  }
  void OnRefusedRequest(const absl::Status& status) override {
    service_->RefuseRequest(
        Call{context(), method_,
             [this](const grpc::Status& answer) { Finish(answer); }},
        status);
  }

  SignerService* const service_;
  const char* const method_;
  const Handler<Request, Response> handler_;
  std::shared_ptr<RawReply<Response>> reply_;
};

template <typename Request, typename Response>
void SignerService::AddUnary(const char* name, const char* method,
                             Handler<Request, Response> handler) {
  AddOneRequestMethod(
      name, [this, method, handler](grpc::CallbackServerContext* context) {
        return new UnaryCall<Request, Response>(this, context, method, handler);
      });
}

template <typename Request, typename Response>
void SignerService::Serve(const Call& call, const grpc::ByteBuffer& bytes,
                          Response* response,
                          Handler<Request, Response> handler) {
  Request parsed;
  if (absl::Status st = ParseMessage(bytes, &parsed); !st.ok()) {
    const std::string caller = CallerOrEmpty(call.context);
    Refuse(call, st, caller, "");
    return;
  }
  (this->*handler)(call, parsed, response);
}

void SignerService::RefuseRequest(const Call& call,
                                  const absl::Status& status) {
  const std::string caller = CallerOrEmpty(call.context);
  Refuse(call, status, caller, "");
}

}  // namespace signet::server
