#include "server/health_service.h"

#include <optional>
#include <utility>

#include "absl/strings/str_cat.h"

namespace signet::server {

using grpc::health::v1::HealthCheckRequest;
using grpc::health::v1::HealthCheckResponse;

// One Watch stream. At most one write in flight; a status that arrives
// meanwhile replaces any other waiting one (the latest wins).
class HealthService::Watcher
    : public grpc::ServerWriteReactor<HealthCheckResponse> {
 public:
  Watcher(HealthService* service, std::string name)
      : service_(service), name_(std::move(name)) {}

  const std::string& name() const { return name_; }

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

  void OnCancel() override { End(grpc::Status::CANCELLED); }

  void OnDone() override {
    service_->Forget(this);
    delete this;
  }

 private:
  void StartLocked(Status status) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    response_.set_status(status);
    writing_ = true;
    StartWrite(&response_);
  }
  // Finish may not overtake a write: wait for it (OnWriteDone comes back).
  void EndLocked(const grpc::Status& status) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
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
  const std::string name_;
  absl::Mutex mu_;
  HealthCheckResponse response_ ABSL_GUARDED_BY(mu_);
  bool writing_ ABSL_GUARDED_BY(mu_) = false;
  std::optional<Status> pending_ ABSL_GUARDED_BY(mu_);
  std::optional<grpc::Status> end_with_ ABSL_GUARDED_BY(mu_);
  bool finishing_ ABSL_GUARDED_BY(mu_) = false;
};

HealthService::HealthService(int max_watchers,
                             std::function<void()> on_refused)
    : max_watchers_(max_watchers), on_refused_(std::move(on_refused)) {}

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

int HealthService::watchers() const {
  absl::MutexLock lock(&mu_);
  return static_cast<int>(watchers_.size());
}

void HealthService::Forget(Watcher* watcher) {
  absl::MutexLock lock(&mu_);
  watchers_.erase(watcher);
}

grpc::ServerUnaryReactor* HealthService::Check(
    grpc::CallbackServerContext* context, const HealthCheckRequest* request,
    HealthCheckResponse* response) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  absl::MutexLock lock(&mu_);
  const Status status = StatusOf(request->service());
  if (status == HealthCheckResponse::SERVICE_UNKNOWN) {
    reactor->Finish(grpc::Status(grpc::StatusCode::NOT_FOUND,
                                 "no such service in this health server"));
  } else {
    response->set_status(status);
    reactor->Finish(grpc::Status::OK);
  }
  return reactor;
}

grpc::ServerWriteReactor<HealthCheckResponse>* HealthService::Watch(
    grpc::CallbackServerContext* context, const HealthCheckRequest* request) {
  auto* watcher = new Watcher(this, request->service());
  bool refused = false;
  {
    absl::MutexLock lock(&mu_);
    if (shut_down_) {
      watcher->End(grpc::Status(grpc::StatusCode::UNAVAILABLE,
                                "signetd is shutting down"));
      return watcher;
    }
    if (static_cast<int>(watchers_.size()) >= max_watchers_) {
      refused = true;
    } else {
      watchers_.insert(watcher);
      watcher->Send(StatusOf(request->service()));
    }
  }
  if (refused) {
    watcher->End(grpc::Status(
        grpc::StatusCode::RESOURCE_EXHAUSTED,
        absl::StrCat("signetd has ", max_watchers_,
                     " health watches open, its limit "
                     "(grpc.max_health_watchers); use Check, or retry later")));
    if (on_refused_) on_refused_();
  }
  return watcher;
}

}  // namespace signet::server
