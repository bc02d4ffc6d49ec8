// The Admin service (proto/signet/v1/admin.proto): operators list scopes
// and keys, rotate and revoke keys, and read the replica's status. Only the
// configured `admins` may call it; anyone else is refused
// PERMISSION_DENIED. Every call is audited with the caller's identity
// before it is answered: an "admin" line for an admin's call (its method,
// scope and result), a refusal line for anyone else's. Key changes go to
// the KeyManager, which applies them on the one writer thread.
//
// Thread-safe.
#ifndef SIGNET_SERVER_ADMIN_SERVICE_H_
#define SIGNET_SERVER_ADMIN_SERVICE_H_

#include <functional>
#include <map>
#include <string>
#include <type_traits>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_set.h"
#include "absl/synchronization/mutex.h"
#include "base/clock.h"
#include "server/audit_log.h"
#include "server/key_manager.h"
#include "server/one_request_call.h"
#include "server/pending_call.h"
#include "signet/v1/admin.pb.h"

namespace signet::server {

// What GetStatus reports of the replica beyond its keys, sampled when asked.
struct ReplicaStatus {
  absl::Status hsm;
  int sessions_in_use = 0;
  int sessions_total = 0;
  absl::Status audit;
  absl::Status listener;
  // Per scope: OK, or why it cannot sign now. With the three above, what
  // the scope's health entry says (ScopeStatus.serving).
  std::map<std::string, absl::Status> scopes;
  // OK, or how long the key manager has been held by one pass
  // (KeyManager::LoopCondition): key changes are refused meanwhile.
  absl::Status key_manager;
};

struct AdminServiceOptions {
  std::vector<std::string> admins;  // typed identities
  // Plain-text development mode: callers have the identity
  // "insecure:plaintext".
  bool plaintext = false;
  // The time key states are reported at. Must outlive the service.
  const base::Clock* clock = &base::SystemClock();
  // The longest a call is given, whatever its own deadline (as the
  // Signer's): a key change is answered by then even if the HSM holds it.
  absl::Duration max_rpc_time = absl::Seconds(30);
};

class AdminService final : public OneRequestService {
 public:
  // Until SetBackend() every call answers UNAVAILABLE ("starting"). `waits`
  // must outlive the service.
  AdminService(AdminServiceOptions options, RequestWaits* waits);

  // What the service works with once the HSM, the audit log and the keys
  // are up. `keys` and `audit` must outlive the service's calls. Key
  // changes are refused at once while the key manager has been on one
  // piece of work for longer than `key_manager_held_after`
  // (KeyManager::LoopCondition; `status` reports the same).
  void SetBackend(KeyManager* keys, AuditLog* audit,
                  std::function<ReplicaStatus()> status,
                  absl::Duration key_manager_held_after)
      ABSL_LOCKS_EXCLUDED(mu_);

 private:
  struct Backend {
    KeyManager* keys = nullptr;
    AuditLog* audit = nullptr;
    std::function<ReplicaStatus()> status;
    absl::Duration held_after = absl::InfiniteDuration();
  };
  std::shared_ptr<const Backend> backend() const ABSL_LOCKS_EXCLUDED(mu_);

  using Answer = std::function<void(const grpc::Status&)>;

  template <typename Request, typename Response>
  void Add(const char* name, const char* method,
           void (AdminService::*handle)(const Backend& backend,
                                        const std::string& admin,
                                        base::MonotonicDeadline deadline,
                                        const Request&, Response*, Answer));

  // The call's deadline, at most options_.max_rpc_time away.
  base::MonotonicDeadline DeadlineOf(
      const grpc::CallbackServerContext& context) const;
  // The caller's identity if it is an admin; otherwise the refusal
  // (audited).
  absl::StatusOr<std::string> Admin(const Backend& backend,
                                    grpc::CallbackServerContext* context,
                                    const char* method);
  // Whether the call may go on: the service is up and the caller is an
  // admin (then `backend` and `admin` are set); otherwise it has been
  // answered (and a refusal audited).
  bool Admitted(grpc::CallbackServerContext* context, const char* method,
                const Answer& answer, std::shared_ptr<const Backend>* backend,
                std::string* admin);
  // The audit line of an admin's call, then the answer. A call whose line
  // cannot be written is answered UNAVAILABLE. With `answer_first`
  // (GetStatus only: it changes nothing, and it is how an operator sees
  // that the log cannot be written, or waits for a stalled HSM), the
  // answer goes first and its line follows; a log line says so if the
  // line cannot be written.
  //
  // Nothing here waits for the log: the call is answered once its line is
  // durable, or by the request watchdog at `deadline` or at a stop,
  // whichever comes first (then that answer is audited too). The log's
  // writer may be held by a checkpoint signature in a stalled HSM, and
  // gRPC's Shutdown waits for every call to be answered: a ninth outside
  // attack held a stop for as long as the HSM stalled so.
  void Audited(const Backend& backend, const std::string& admin,
               base::MonotonicDeadline deadline, const char* method,
               absl::string_view scope, const absl::Status& status,
               const Answer& answer, absl::string_view detail = "",
               bool answer_first = false);

  // A call answered by `answer`, watched by the request watchdog until
  // `deadline` with `expiry` as its answers then, and at a stop. An
  // expiry answer is audited (method, scope) with `expiry_note`.
  std::shared_ptr<PendingCall> Watched(
      const Backend& backend, const std::string& admin, const char* method,
      absl::string_view scope, const Answer& answer,
      base::MonotonicDeadline deadline, PendingCall::ExpiryAnswers expiry,
      std::string expiry_note);

  // The audit line of an answer the watchdog sends (queued just before it
  // goes out), or of a change's outcome after its call was answered;
  // queued without waiting, and a line that cannot be written is logged.
  static void AuditAfterAnswer(const Backend& backend, const AuditEvent& line);

  // A key change: the scope name checked, then `submit` to the key
  // manager; its answer audited (with `describe` of a success) and sent.
  // Answered by whichever comes first: the change's outcome, the call's
  // deadline, or a stop (a stalled HSM may hold the change for good); a
  // change that finishes after its call was answered has its outcome
  // audited still.
  template <typename Request, typename Response>
  void Change(const Backend& backend, const std::string& admin,
              base::MonotonicDeadline deadline, const char* method,
              const Request& request, Response* response, Answer answer,
              void (KeyManager::*submit)(
                  const Request&, const std::string&, base::MonotonicDeadline,
                  std::function<void(absl::StatusOr<Response>)>,
                  KeyManager::OnTurn),
              std::type_identity_t<std::function<std::string(const Response&)>>
                  describe);

  void ListScopes(const Backend& backend, const std::string& admin,
                  base::MonotonicDeadline deadline,
                  const signet::v1::ListScopesRequest& request,
                  signet::v1::ListScopesResponse* response, Answer answer);
  void ListKeys(const Backend& backend, const std::string& admin,
                base::MonotonicDeadline deadline,
                const signet::v1::ListKeysRequest& request,
                signet::v1::ListKeysResponse* response, Answer answer);
  void RotateKey(const Backend& backend, const std::string& admin,
                 base::MonotonicDeadline deadline,
                 const signet::v1::RotateKeyRequest& request,
                 signet::v1::RotateKeyResponse* response, Answer answer);
  void RevokeKey(const Backend& backend, const std::string& admin,
                 base::MonotonicDeadline deadline,
                 const signet::v1::RevokeKeyRequest& request,
                 signet::v1::RevokeKeyResponse* response, Answer answer);
  void GetStatus(const Backend& backend, const std::string& admin,
                 base::MonotonicDeadline deadline,
                 const signet::v1::GetStatusRequest& request,
                 signet::v1::GetStatusResponse* response, Answer answer);

  const AdminServiceOptions options_;
  const absl::flat_hash_set<std::string> admins_;
  RequestWaits* const waits_;
  mutable absl::Mutex mu_;
  std::shared_ptr<const Backend> backend_ ABSL_GUARDED_BY(mu_);
};

}  // namespace signet::server

#endif  // SIGNET_SERVER_ADMIN_SERVICE_H_
