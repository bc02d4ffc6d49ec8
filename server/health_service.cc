#include "server/health_service.h"

#include <algorithm>
#include <functional>
#include <optional>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "server/grpc_status.h"

namespace signet::server {

using grpc::health::v1::HealthCheckRequest;
using grpc::health::v1::HealthCheckResponse;

// One Check call.
class HealthService::Checker final : public OneRequestCall {
 public:
  Checker(HealthService* service, grpc::CallbackServerContext* context)
      : OneRequestCall(service->waits_, context), service_(service) {}

 private:
  void OnRequest(const grpc::ByteBuffer& bytes) override {
    HealthCheckRequest request;
    if (grpc::Status refused =
            service_->Parse(context()->auth_context().get(), bytes, &request);
        !refused.ok()) {
      Finish(refused);
      return;
    }
    HealthCheckResponse response;
    grpc::Status status = service_->Check(request.service(), &response);
    if (!status.ok()) {
      Finish(status);
      return;
    }
    if (!SerializeMessage(response, &out_)) {
      Finish(ToGrpcStatus(
          absl::InternalError("the response could not be serialized")));
      return;
    }
    StartWriteAndFinish(&out_, grpc::WriteOptions(), grpc::Status::OK);
  }
  void OnRefusedRequest(const absl::Status& status) override {
    Finish(service_->Refused(context()->auth_context().get(), status));
  }

  HealthService* const service_;
  grpc::ByteBuffer out_;
};

// One Watch stream. At most one write in flight; a status that arrives
// meanwhile replaces any other waiting one (the latest wins).
class HealthService::Watcher final : public OneRequestCall {
 public:
  Watcher(HealthService* service, grpc::CallbackServerContext* context)
      : OneRequestCall(service->waits_, context), service_(service) {}

  // The client's authentication (its certificate), for refusal counts.
  std::shared_ptr<const grpc::AuthContext> auth() const {
    return context()->auth_context();
  }

  // The service watched, and the hash of the client's certificate; set
  // before the watcher is registered.
  const std::string& name() const { return name_; }
  size_t certificate() const { return certificate_; }

  void Send(Status status) ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock lock(&mu_);
    if (finishing_) return;
    if (writing_) {
      pending_ = status;
      return;
    }
    StartLocked(status);
  }

  // Ends the stream with `status` once the writes under way are done.
  void End(const grpc::Status& status) ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock lock(&mu_);
    EndLocked(status);
  }

  void OnWriteDone(bool ok) override ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock lock(&mu_);
    writing_ = false;
    if (!ok) {  // the client is gone
      EndLocked(grpc::Status::CANCELLED);
      return;
    }
    if (pending_ && !finishing_) {
      StartLocked(*pending_);
      pending_.reset();
      return;
    }
    if (end_with_) EndLocked(*end_with_);
  }

  // A Watch may be ended by the client's reset (OnCancel) and by the failed
  // read of its request both: each goes through End, which finishes once. (A
  // second Finish is an assertion failure in gRPC that took signetd down:
  // a client that reset a Watch before sending its request crashed it.)
  void OnCancel() override { End(grpc::Status::CANCELLED); }
  void OnNoRequest(const grpc::Status& status) override { End(status); }
  void OnRefusedRequest(const absl::Status& status) override {
    End(service_->Refused(context()->auth_context().get(), status));
  }

  void OnDone() override {
    service_->Forget(this);
    OneRequestCall::OnDone();
  }

 private:
  void OnRequest(const grpc::ByteBuffer& bytes) override {
    HealthCheckRequest request;
    if (grpc::Status refused =
            service_->Parse(context()->auth_context().get(), bytes, &request);
        !refused.ok()) {
      End(refused);
      return;
    }
    name_ = request.service();
    std::shared_ptr<const grpc::AuthContext> auth = context()->auth_context();
    if (auth != nullptr) {
      std::vector<grpc::string_ref> pem =
          auth->FindPropertyValues("x509_pem_cert");
      if (!pem.empty()) {
        certificate_ = std::hash<std::string_view>()(
            std::string_view(pem.front().data(), pem.front().size()));
      }
    }
    service_->StartWatch(this);
  }

  void StartLocked(Status status) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    HealthCheckResponse response;
    response.set_status(status);
    out_.Clear();
    if (!SerializeMessage(response, &out_)) {
      EndLocked(ToGrpcStatus(
          absl::InternalError("the response could not be serialized")));
      return;
    }
    writing_ = true;
    StartWrite(&out_);
  }
  // Finish may not overtake a write: wait for it (OnWriteDone comes back).
  void EndLocked(const grpc::Status& status)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (finishing_) return;
    if (writing_ || pending_) {
      if (!end_with_) end_with_ = status;
      if (!writing_) {
        StartLocked(*pending_);
        pending_.reset();
      }
      return;
    }
    finishing_ = true;
    Finish(status);
  }

  HealthService* const service_;
  std::string name_;
  size_t certificate_ = 0;
  absl::Mutex mu_;
  grpc::ByteBuffer out_ ABSL_GUARDED_BY(mu_);
  bool writing_ ABSL_GUARDED_BY(mu_) = false;
  std::optional<Status> pending_ ABSL_GUARDED_BY(mu_);
  std::optional<grpc::Status> end_with_ ABSL_GUARDED_BY(mu_);
  bool finishing_ ABSL_GUARDED_BY(mu_) = false;
};

HealthService::HealthService(int max_watchers, RequestWaits* waits,
                             OnRefused on_refused)
    : max_watchers_(max_watchers),
      waits_(waits),
      on_refused_(std::move(on_refused)) {
  AddOneRequestMethod("/grpc.health.v1.Health/Check",
                      [this](grpc::CallbackServerContext* context) {
                        return new Checker(this, context);
                      });
  AddOneRequestMethod("/grpc.health.v1.Health/Watch",
                      [this](grpc::CallbackServerContext* context) {
                        return new Watcher(this, context);
                      });
}

HealthService::~HealthService() = default;

HealthService::Status HealthService::StatusOf(
    const std::string& service) const {
  auto it = serving_.find(service);
  if (it == serving_.end()) return HealthCheckResponse::SERVICE_UNKNOWN;
  return it->second ? HealthCheckResponse::SERVING
                    : HealthCheckResponse::NOT_SERVING;
}

void HealthService::Set(const std::string& service, bool serving) {
  absl::MutexLock lock(&mu_);
  serving_[service] = serving;
  const Status status = StatusOf(service);
  for (Watcher* watcher : watchers_) {
    if (watcher->name() == service) watcher->Send(status);
  }
}

void HealthService::Shutdown() {
  absl::MutexLock lock(&mu_);
  shut_down_ = true;
  for (auto& [service, serving] : serving_) serving = false;
  for (Watcher* watcher : watchers_) {
    watcher->Send(StatusOf(watcher->name()));
    watcher->End(grpc::Status::OK);
  }
}

void HealthService::Forget(Watcher* watcher) {
  absl::MutexLock lock(&mu_);
  if (watchers_.erase(watcher) == 0) return;  // never admitted
  auto it = watchers_by_certificate_.find(watcher->certificate());
  if (it != watchers_by_certificate_.end() && --it->second <= 0) {
    watchers_by_certificate_.erase(it);
  }
}

grpc::Status HealthService::Parse(const grpc::AuthContext* caller,
                                  const grpc::ByteBuffer& bytes,
                                  HealthCheckRequest* request) {
  absl::Status parsed = ParseMessage(bytes, request);
  if (parsed.ok() && request->service().size() > kMaxServiceNameBytes) {
    // A Watch keeps its name for the stream's life: an outside attack held
    // 1,024 streams of 3 MB names (3 GB). Every name signetd serves is
    // short ("", "scope/" and a scope name of at most 64 bytes).
    parsed = absl::InvalidArgumentError(absl::StrCat(
        "the health service name is ", request->service().size(),
        " bytes; the names signetd serves (\"\" and \"scope/<name>\") are at "
        "most ",
        kMaxServiceNameBytes));
  }
  if (parsed.ok()) return grpc::Status::OK;
  return Refused(caller, parsed);
}

grpc::Status HealthService::Refused(const grpc::AuthContext* caller,
                                    const absl::Status& status) {
  if (on_refused_) {
    on_refused_(status.code() == absl::StatusCode::kInvalidArgument
                    ? Refusal::kMalformed
                    : Refusal::kOversized,
                caller);
  }
  return ToGrpcStatus(status);
}

grpc::Status HealthService::Check(const std::string& service,
                                  HealthCheckResponse* response) {
  absl::MutexLock lock(&mu_);
  const Status status = StatusOf(service);
  if (status == HealthCheckResponse::SERVICE_UNKNOWN) {
    return ToGrpcStatus(
        absl::NotFoundError("no such service in this health server"));
  }
  response->set_status(status);
  return grpc::Status::OK;
}

void HealthService::StartWatch(Watcher* watcher) {
  const int share = std::max(1, max_watchers_ / 4);
  std::string refused;
  {
    absl::MutexLock lock(&mu_);
    if (shut_down_) {
      watcher->End(
          ToGrpcStatus(absl::UnavailableError("signetd is shutting down")));
      return;
    }
    int& mine = watchers_by_certificate_[watcher->certificate()];
    if (static_cast<int>(watchers_.size()) >= max_watchers_) {
      refused = absl::StrCat("signetd has ", max_watchers_,
                             " health watches open, its limit "
                             "(grpc.max_health_watchers)");
    } else if (mine >= share) {
      refused = absl::StrCat("this client certificate holds ", mine,
                             " health watches, its share (a quarter of "
                             "grpc.max_health_watchers)");
    } else if (static_cast<int>(watchers_.size()) >= max_watchers_ / 2 &&
               mine >= kFewWatches) {
      // The second half is kept for certificates holding few: a sixth
      // outside attack filled every slot with four certificates.
      refused = absl::StrCat(
          "half of grpc.max_health_watchers are open, and the second half "
          "is kept for client certificates holding fewer than ",
          kFewWatches, " (this one holds ", mine, ")");
    } else {
      ++mine;
      watchers_.insert(watcher);
      watcher->Send(StatusOf(watcher->name()));
    }
    if (mine == 0) watchers_by_certificate_.erase(watcher->certificate());
  }
  if (!refused.empty()) {
    // Counted before End: the stream may be gone once it ended.
    if (on_refused_) {
      on_refused_(Refusal::kWatch, watcher->auth().get());
    }
    watcher->End(ToGrpcStatus(absl::ResourceExhaustedError(
        absl::StrCat(refused, "; use Check, or retry later"))));
  }
}

}  // namespace signet::server
