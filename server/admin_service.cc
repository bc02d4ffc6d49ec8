#include "server/admin_service.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/types/span.h"
#include "base/log.h"
#include "base/quote.h"
#include "rotation/schedule.h"
#include "server/call_deadline.h"
#include "server/config.h"
#include "server/identity.h"
#include "server/pending_call.h"
#include "server/signer_service.h"

namespace signet::server {

using base::Quote;
namespace {

// How long before a call's deadline the watchdog answers it. Less than
// KeyManager's kMinTimeForAChange (1 s): a change not started this close
// to its deadline never is, so "not made" stays true.
constexpr absl::Duration kAnswerAheadOfDeadline = absl::Milliseconds(200);

std::string Rfc3339(const google::protobuf::Timestamp& ts) {
  return rotation::FormatInstant(rotation::TimeFromProto(ts));
}

// The kids of the scope's signing key and standby at `now` ("" if none).
std::pair<std::string, std::string> ActiveAndStandby(const ScopeKeys& keys,
                                                     absl::Time now) {
  std::string active;
  if (auto signing = keys.SigningAt(now)) active = signing->kid;
  const rotation::KeyRecord* standby = keys.StandbyAt(now);
  return {active, standby != nullptr ? standby->kid() : std::string()};
}

// The audit line of an admin's call answered `status`; `note` follows its
// detail.
AuditEvent AdminLine(const std::string& admin, const char* method,
                     absl::string_view scope, const absl::Status& status,
                     absl::string_view detail, absl::string_view note = "") {
  AuditEvent line;
  line.event = "admin";
  line.caller = admin;
  // None for a call without one (not "\"\"", which a fourteenth outside
  // attack found on every GetStatus line).
  line.scope = scope.empty()           ? std::string()
               : ValidScopeName(scope) ? std::string(scope)
                                       : Quote(scope);
  line.result = absl::StatusCodeToString(status.code());
  line.detail =
      status.ok()
          ? absl::StrCat("Admin/", method, detail.empty() ? "" : ": ", detail)
          : absl::StrCat("Admin/", method, ": ", status.message());
  if (!note.empty()) absl::StrAppend(&line.detail, " ", note);
  return line;
}

}  // namespace

AdminService::AdminService(AdminServiceOptions options, RequestWaits* waits)
    : options_(std::move(options)),
      admins_(options_.admins.begin(), options_.admins.end()),
      waits_(waits) {
  // The names gRPC routes by (admin.proto's).
  Add("/signet.v1.Admin/ListScopes", "ListScopes", &AdminService::ListScopes);
  Add("/signet.v1.Admin/ListKeys", "ListKeys", &AdminService::ListKeys);
  Add("/signet.v1.Admin/RotateKey", "RotateKey", &AdminService::RotateKey);
  Add("/signet.v1.Admin/RevokeKey", "RevokeKey", &AdminService::RevokeKey);
  Add("/signet.v1.Admin/GetStatus", "GetStatus", &AdminService::GetStatus);
}

void AdminService::SetBackend(KeyManager* keys, AuditLog* audit,
                              std::function<ReplicaStatus()> status,
                              absl::Duration key_manager_held_after) {
  auto backend = std::make_shared<Backend>();
  backend->keys = keys;
  backend->audit = audit;
  backend->status = std::move(status);
  backend->held_after = key_manager_held_after;
  absl::MutexLock lock(&mu_);
  backend_ = std::move(backend);
}

std::shared_ptr<const AdminService::Backend> AdminService::backend() const {
  absl::MutexLock lock(&mu_);
  return backend_;
}

template <typename Request, typename Response>
void AdminService::Add(const char* name, const char* method,
                       void (AdminService::*handle)(
                           const Backend& backend, const std::string& admin,
                           base::MonotonicDeadline deadline, const Request&,
                           Response*, Answer)) {
  using Call = TypedOneRequestCall<Request, Response>;
  typename Call::Handler handler = [this, method, handle](
                                       grpc::CallbackServerContext* context,
                                       const Request& request,
                                       Response* response, Answer answer) {
    std::shared_ptr<const Backend> backend;
    std::string admin;
    if (!Admitted(context, method, answer, &backend, &admin)) return;
    // The backend lives as long as the call: it is captured.
    (this->*handle)(*backend, admin, DeadlineOf(*context), request, response,
                    [backend, answer = std::move(answer)](
                        const grpc::Status& status) { answer(status); });
  };
  typename Call::Refuser refuse = [this, method](
                                      grpc::CallbackServerContext* context,
                                      const absl::Status& status,
                                      Answer answer) {
    // Only an admin learns why its request did not parse.
    std::shared_ptr<const Backend> backend;
    std::string admin;
    if (!Admitted(context, method, answer, &backend, &admin)) return;
    Audited(*backend, admin, DeadlineOf(*context), method, "", status, answer);
  };
  AddOneRequestMethod(
      name, [this, handler, refuse](grpc::CallbackServerContext* context) {
        return new Call(waits_, context, handler, refuse);
      });
}

base::MonotonicDeadline AdminService::DeadlineOf(
    const grpc::CallbackServerContext& context) const {
  // A call without a deadline (or a far one) is answered within
  // max_rpc_time all the same: a key change behind a stalled HSM waited
  // for as long as the HSM did (an eleventh outside attack).
  return std::min(CallDeadline(context),
                  base::MonotonicDeadline::In(options_.max_rpc_time));
}

bool AdminService::Admitted(grpc::CallbackServerContext* context,
                            const char* method, const Answer& answer,
                            std::shared_ptr<const Backend>* backend,
                            std::string* admin) {
  *backend = this->backend();
  if (*backend == nullptr) {
    answer(grpc::Status(grpc::StatusCode::UNAVAILABLE,
                        "signetd is starting: its keys are not ready yet"));
    return false;
  }
  absl::StatusOr<std::string> identity = Admin(**backend, context, method);
  if (!identity.ok()) {
    answer(ToGrpcStatus(identity.status()));
    return false;
  }
  *admin = *std::move(identity);
  return true;
}

absl::StatusOr<std::string> AdminService::Admin(
    const Backend& backend, grpc::CallbackServerContext* context,
    const char* method) {
  absl::StatusOr<std::string> identity;
  if (options_.plaintext) {
    identity = std::string("insecure:plaintext");
  } else {
    std::shared_ptr<const grpc::AuthContext> auth = context->auth_context();
    std::vector<grpc::string_ref> pem =
        auth ? auth->FindPropertyValues("x509_pem_cert")
             : std::vector<grpc::string_ref>();
    identity = pem.empty()
                   ? absl::PermissionDeniedError("no client certificate")
                   : IdentityFromCertificatePem(absl::string_view(
                         pem.front().data(), pem.front().size()));
  }
  absl::Status refusal;
  if (!identity.ok()) {
    refusal = absl::PermissionDeniedError(
        absl::StrCat("the Admin service needs an admin's client certificate: ",
                     identity.status().message()));
  } else if (!admins_.contains(*identity)) {
    refusal = absl::PermissionDeniedError(
        absl::StrCat("caller ", Quote(*identity, 256),
                     " is not an admin (configuration: admins)"));
  } else {
    return identity;
  }
  AuditEvent line;
  line.event = "refuse";
  line.caller = identity.ok() ? *identity : "unidentified";
  line.result = absl::StatusCodeToString(refusal.code());
  line.detail = absl::StrCat("Admin/", method, identity.ok() ? "" : ": ",
                             identity.ok() ? "" : identity.status().message());
  backend.audit->AppendRefusal(line);
  return refusal;
}

std::shared_ptr<PendingCall> AdminService::Watched(
    const Backend& backend, const std::string& admin, const char* method,
    absl::string_view scope, const Answer& answer,
    base::MonotonicDeadline deadline, PendingCall::ExpiryAnswers expiry,
    std::string expiry_note) {
  // A little ahead of the deadline, so the caller hears signetd's answer
  // (which says what to do) rather than its own library's bare
  // DEADLINE_EXCEEDED at the same instant (a tenth outside attack). A key
  // change is not started this close to its deadline (KeyManager), so one
  // not started by then never is.
  const base::MonotonicDeadline answer_by =
      AnswerBy(deadline, kAnswerAheadOfDeadline);
  auto pending = std::make_shared<PendingCall>(
      [answer](const absl::Status& status) { answer(ToGrpcStatus(status)); },
      answer_by, /*on_done=*/nullptr, waits_->watchdog().list(),
      [&backend, admin, method, scope = std::string(scope),
       note = std::move(expiry_note)](const absl::Status& status) {
        // The watchdog's answer, queued just before it goes out (so the log
        // takes it before a stop can destroy the log) without waiting.
        // (`backend` lives as long as `answer`, which the call holds.)
        AuditAfterAnswer(backend,
                         AdminLine(admin, method, scope, status, "", note));
      });
  pending->SetExpiryAnswers(std::move(expiry));
  waits_->watchdog().Watch(pending);
  return pending;
}

void AdminService::Audited(const Backend& backend, const std::string& admin,
                           base::MonotonicDeadline deadline, const char* method,
                           absl::string_view scope, const absl::Status& status,
                           const Answer& answer, absl::string_view detail,
                           bool answer_first) {
  const AuditEvent line = AdminLine(admin, method, scope, status, detail);
  if (answer_first) {
    // Not behind the log's writer, which may be held up to the checkpoint
    // signer's deadline by a stalled HSM: status is what an operator reads
    // to find that out (a review found it waited there).
    answer(ToGrpcStatus(status));
    backend.audit->AppendAllAsync(
        absl::MakeConstSpan(&line, 1),
        [method = std::string(method), admin](const absl::Status& written) {
          if (written.ok()) return;
          SIGNET_LOG_WARN(
              "Admin/{} by {} answered without its audit line (the audit log "
              "cannot be written: {})",
              method, admin, written.message());
        });
    return;
  }
  std::shared_ptr<PendingCall> pending = Watched(
      backend, admin, method, scope, answer, deadline,
      {absl::DeadlineExceededError(
           "the audit log did not take this call's line before its deadline "
           "(its writer waits for the HSM or the disk: health says which); "
           "nothing was changed, retry"),
       absl::UnavailableError(
           "signetd is stopping before the audit log took this call's line; "
           "nothing was changed, retry")},
      "(the answer the caller heard; the line before it, if any, is not)");
  // The line before the answer: an admin call that cannot be audited is
  // not answered OK.
  backend.audit->AppendAllAsync(
      absl::MakeConstSpan(&line, 1),
      [pending, status](const absl::Status& written) {
        if (written.ok()) {
          pending->Finish(status);
        } else {
          pending->Finish(absl::UnavailableError(absl::StrCat(
              "the audit log cannot be written: ", written.message())));
        }
      });
}

void AdminService::AuditAfterAnswer(const Backend& backend,
                                    const AuditEvent& line) {
  // Without waiting: the watchdog's thread (and a stop) must not wait for
  // the log's writer, which may be signing a checkpoint in a stalled HSM.
  backend.audit->AppendAllAsync(
      absl::MakeConstSpan(&line, 1),
      [event = line.event, caller = line.caller,
       detail = line.detail](const absl::Status& written) {
        if (!written.ok()) {
          SIGNET_LOG_WARN(
              "{} by {}: {} (not audited: the audit log cannot be written: "
              "{})",
              event, caller, detail, written.message());
        }
      });
}

void AdminService::ListScopes(const Backend& backend, const std::string& admin,
                              base::MonotonicDeadline deadline,
                              const signet::v1::ListScopesRequest&,
                              signet::v1::ListScopesResponse* response,
                              Answer answer) {
  const absl::Time now = options_.clock->Now();
  for (const auto& [name, keys] : backend.keys->Scopes()) {
    signet::v1::ScopeSummary* s = response->add_scopes();
    s->set_name(name);
    s->set_audience_class(
        signet::v1::AudienceClass_Name(keys->config().audience_class()));
    s->set_purpose(signet::v1::Purpose_Name(keys->config().purpose()));
    s->set_issuer(keys->config().issuer());
    s->set_algorithm(keys->alg());
    auto [active, standby] = ActiveAndStandby(*keys, now);
    s->set_active_kid(active);
    s->set_standby_kid(standby);
    const NextTransition next = NextTransitionOf(*keys, now);
    s->set_next_transition(next.what);
    s->set_next_transition_at(rotation::FormatInstant(next.at));
  }
  Audited(backend, admin, deadline, "ListScopes", "", absl::OkStatus(), answer);
}

void AdminService::ListKeys(const Backend& backend, const std::string& admin,
                            base::MonotonicDeadline deadline,
                            const signet::v1::ListKeysRequest& request,
                            signet::v1::ListKeysResponse* response,
                            Answer answer) {
  if (absl::Status st = CheckScopeName(request.scope()); !st.ok()) {
    Audited(backend, admin, deadline, "ListKeys", request.scope(), st, answer);
    return;
  }
  ScopeKeysMap scopes = backend.keys->Scopes();
  auto scope = scopes.find(request.scope());
  if (scope == scopes.end()) {
    Audited(backend, admin, deadline, "ListKeys", request.scope(),
            absl::NotFoundError(
                absl::StrCat("no scope named \"", request.scope(), "\"")),
            answer);
    return;
  }
  const std::vector<rotation::KeyRecord>& records = scope->second->records();
  const rotation::ScopeView view =
      rotation::ViewScope(records, options_.clock->Now());
  const rotation::KeyTimings timings =
      KeyPolicyFor(scope->second->config()).timings;
  for (size_t i = 0; i < records.size(); ++i) {
    const rotation::KeyRecord& r = records[i];
    signet::v1::KeyInfo* k = response->add_keys();
    k->set_kid(r.kid());
    k->set_key_id(r.key_id());
    k->set_generation(r.key_generation());
    k->set_algorithm(r.algorithm());
    k->set_state(std::string(rotation::KeyStateName(view.states[i])));
    k->set_standby(static_cast<int>(i) == view.standby);
    k->set_created_at(Rfc3339(r.created_at()));
    k->set_activate_at(Rfc3339(r.activate_at()));
    k->set_retire_at(Rfc3339(r.retire_at()));
    k->set_unpublish_at(Rfc3339(r.unpublish_at()));
    // A revoked key's private key goes soon after its revocation, sooner
    // than its record's schedule says (a twelfth outside attack saw a
    // month-late time listed).
    k->set_destroy_at(
        rotation::FormatInstant(rotation::DestroyTime(r, timings)));
    k->set_private_key_destroyed(r.private_key_destroyed());
    if (r.has_revocation()) {
      k->set_revoked_at(Rfc3339(r.revocation().revoked_at()));
      k->set_revoked_by(r.revocation().revoked_by());
      k->set_revocation_reason(r.revocation().reason());
    }
  }
  Audited(backend, admin, deadline, "ListKeys", request.scope(),
          absl::OkStatus(), answer);
}

template <typename Request, typename Response>
void AdminService::Change(
    const Backend& backend, const std::string& admin,
    base::MonotonicDeadline deadline, const char* method,
    const Request& request, Response* response, Answer answer,
    void (KeyManager::*submit)(const Request&, const std::string&,
                               base::MonotonicDeadline,
                               std::function<void(absl::StatusOr<Response>)>,
                               KeyManager::OnTurn),
    std::type_identity_t<std::function<std::string(const Response&)>>
        describe) {
  if (absl::Status st = CheckScopeName(request.scope()); !st.ok()) {
    Audited(backend, admin, deadline, method, request.scope(), st, answer);
    return;
  }
  // A malformed request hears what is wrong with it, whatever the key
  // manager is doing.
  if (absl::Status st = KeyManager::Check(request); !st.ok()) {
    Audited(backend, admin, deadline, method, request.scope(), st, answer);
    return;
  }
  // Not queued behind a change or pass an HSM call holds: refused at
  // once, saying so, rather than at its deadline as if health could say
  // why.
  if (absl::Status held = backend.keys->LoopCondition(backend.held_after);
      !held.ok()) {
    Audited(backend, admin, deadline, method, request.scope(),
            absl::UnavailableError(absl::StrCat(
                held.message(),
                ": this call changed nothing (a change with this "
                "request_id already in the HSM may still finish); retry "
                "with the same request_id once `signetctl status` no "
                "longer shows it")),
            answer);
    return;
  }
  // The change runs on the key manager's thread, in the HSM, where a
  // stalled HSM may hold it for good; gRPC's Shutdown waits for every call
  // to be answered, so a stop hung behind it. The call is answered by
  // whichever comes first: the change's outcome (once its line is
  // durable), its deadline, or a stop (the watchdog of RequestWaits, cut
  // off at shutdown), each audited.
  const std::string retry = absl::StrCat(
      "; it may still be applied once the HSM answers: call again with the "
      "same request_id (",
      Quote(request.request_id(), 64), ") to learn its outcome");
  std::shared_ptr<PendingCall> pending = Watched(
      backend, admin, method, request.scope(), answer, deadline,
      {absl::DeadlineExceededError(absl::StrCat(
           "the key change did not finish before the call's deadline (the "
           "caller's, or grpc.max_call_seconds if sooner; the HSM is slow or "
           "stalled: `signetctl status` says which)",
           retry)),
       absl::UnavailableError(absl::StrCat(
           "signetd is stopping and the HSM has not finished the key change",
           retry)),
       // Its turn never came: the key manager does not start a change
       // after its deadline, or once stopping (KeyManager::RotateKey).
       absl::DeadlineExceededError(absl::StrCat(
           "the key change was still queued behind the key manager's work at "
           "the call's deadline (the caller's, or grpc.max_call_seconds if "
           "sooner; an earlier change or pass is in a slow or stalled HSM: "
           "`signetctl status` says which), so it is not made; "
           "retry with "
           "the same request_id (",
           Quote(request.request_id(), 64), ")")),
       absl::UnavailableError(absl::StrCat(
           "signetd is stopping and the key change was still queued behind "
           "the key manager's work, so it is not made; retry with the same "
           "request_id (",
           Quote(request.request_id(), 64), ") once signetd is back"))},
      "(the answer the caller heard; the change's outcome, once known, is "
      "audited on its own line)");
  (backend.keys->*submit)(
      request, admin, deadline,
      [&backend, admin, method, scope = request.scope(),
       request_id = request.request_id(), response, pending,
       describe](absl::StatusOr<Response> result) {
        const std::string detail = result.ok() ? describe(*result) : "";
        // The outcome names its request_id, so a retry's line can be tied
        // to the change (a fourteenth outside attack found neither did).
        const std::string request =
            request_id.empty()
                ? std::string()
                : absl::StrCat("(request_id ", Quote(request_id, 64), ")");
        if (pending->answered()) {
          // Told DEADLINE_EXCEEDED or UNAVAILABLE already: the outcome is
          // audited all the same, for the retry that asks for it.
          AuditAfterAnswer(
              backend,
              AdminLine(admin, method, scope, result.status(), detail,
                        absl::StrCat(request, request.empty() ? "" : " ",
                                     "(the outcome, after the call was "
                                     "answered)")));
          return;
        }
        const AuditEvent line =
            AdminLine(admin, method, scope, result.status(), detail, request);
        // The line before the answer, without waiting for it here (this is
        // the key manager's thread). Should the deadline or a stop answer
        // first, the line above is the outcome and the watchdog's is what
        // the caller heard.
        backend.audit->AppendAllAsync(
            absl::MakeConstSpan(&line, 1),
            [pending, response, result = std::move(result), detail,
             request_id](const absl::Status& written) {
              if (written.ok()) {
                pending->Finish(result.status(), [&] {
                  if (result.ok()) *response = *result;
                });
              } else if (result.ok()) {
                // Made: its key events wait in the key manager for the log
                // (KeyManager::Audit); a retry learns the outcome then.
                pending->Finish(absl::UnavailableError(absl::StrCat(
                    "the key change was made (", detail,
                    ") but this call's audit line could not be written (",
                    written.message(),
                    "), so it is not answered OK; the change's own key "
                    "events are in the audit log, or kept to be written once "
                    "it can be: call again with the same request_id (",
                    Quote(request_id, 64),
                    ") once health says SERVING to be answered its outcome")));
              } else {
                // The change's own error says what became of it.
                pending->Finish(absl::Status(
                    result.status().code(),
                    absl::StrCat(result.status().message(),
                                 " (this call's audit line could not be "
                                 "written either: ",
                                 written.message(), ")")));
              }
            });
      },
      [pending] { return pending->MarkStarted(); });
}

void AdminService::RotateKey(const Backend& backend, const std::string& admin,
                             base::MonotonicDeadline deadline,
                             const signet::v1::RotateKeyRequest& request,
                             signet::v1::RotateKeyResponse* response,
                             Answer answer) {
  Change(backend, admin, deadline, "RotateKey", request, response,
         std::move(answer), &KeyManager::RotateKey,
         [mode = signet::v1::RotateMode_Name(request.mode())](
             const signet::v1::RotateKeyResponse& r) {
           return absl::StrCat(mode, ": ", r.active_kid(), " signs from ",
                               r.activates_at());
         });
}

void AdminService::RevokeKey(const Backend& backend, const std::string& admin,
                             base::MonotonicDeadline deadline,
                             const signet::v1::RevokeKeyRequest& request,
                             signet::v1::RevokeKeyResponse* response,
                             Answer answer) {
  Change(backend, admin, deadline, "RevokeKey", request, response,
         std::move(answer), &KeyManager::RevokeKey,
         [](const signet::v1::RevokeKeyResponse& r) {
           return absl::StrCat("revoked ", r.revoked_kid());
         });
}

void AdminService::GetStatus(const Backend& backend, const std::string& admin,
                             base::MonotonicDeadline deadline,
                             const signet::v1::GetStatusRequest&,
                             signet::v1::GetStatusResponse* response,
                             Answer answer) {
  const ReplicaStatus replica =
      backend.status ? backend.status() : ReplicaStatus{};
  response->set_hsm_reachable(replica.hsm.ok());
  response->set_hsm_detail(std::string(replica.hsm.message()));
  response->set_sessions_in_use(replica.sessions_in_use);
  response->set_sessions_total(replica.sessions_total);
  response->set_audit_writable(replica.audit.ok());
  response->set_audit_detail(std::string(replica.audit.message()));
  response->set_key_writer(backend.keys->writer());
  const KeyManager::PassStatus pass = backend.keys->LastPass();
  response->set_last_reconcile_at(rotation::FormatInstant(pass.at));
  response->set_last_reconcile_error(std::string(pass.status.message()));
  response->set_wall_clock_anomaly(pass.wall_clock_anomaly);
  response->set_key_manager_stuck(std::string(replica.key_manager.message()));
  response->set_token_write_problem(backend.keys->TokenWriteProblem());
  const absl::Time now = options_.clock->Now();
  for (const auto& [name, keys] : backend.keys->Scopes()) {
    signet::v1::ScopeStatus* s = response->add_scopes();
    s->set_name(name);
    auto [active, standby] = ActiveAndStandby(*keys, now);
    s->set_active_kid(active);
    s->set_standby_kid(standby);
    const NextTransition next = NextTransitionOf(*keys, now);
    s->set_next_transition(next.what);
    s->set_next_transition_at(rotation::FormatInstant(next.at));
    // What the scope's health entry says (an outside attack saw SERVING
    // here while health said NOT_SERVING for a stalled HSM).
    auto scope_condition = replica.scopes.find(name);
    s->set_serving(
        replica.hsm.ok() && replica.audit.ok() && replica.listener.ok() &&
        (scope_condition != replica.scopes.end() ? scope_condition->second.ok()
                                                 : keys->CanSignAt(now).ok()));
    s->set_clock_anomaly(keys->ClockAnomalyAt(now));
    for (const auto& [key_id, why] : keys->unusable()) {
      s->add_key_problems(why);
    }
  }
  Audited(backend, admin, deadline, "GetStatus", "", absl::OkStatus(), answer,
          "", /*answer_first=*/true);
}

}  // namespace signet::server
