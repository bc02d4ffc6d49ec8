#include "server/serving_publisher.h"

#include <utility>

#include "base/log.h"
#include "base/status_macros.h"

namespace signet::server {

absl::StatusOr<PublishedDocuments> ServingPublisher::Build(
    const ScopeKeysMap& scopes) const {
  const absl::Time now = clock_->Now();
  return BuildPublishedDocuments(
      scopes, public_base_url_, now,
      seen_ != nullptr ? seen_->IrreversibleStepsAt(now) : now);
}

absl::StatusOr<std::unique_ptr<ServingPublisher>> ServingPublisher::Create(
    std::shared_ptr<const ServingState> first, std::string public_base_url,
    const base::Clock* clock, Sinks sinks, const base::ElapsedWallTime* seen) {
  std::unique_ptr<ServingPublisher> publisher(new ServingPublisher(
      std::move(public_base_url), clock, std::move(sinks), seen));
  SIGNET_ASSIGN_OR_RETURN(PublishedDocuments documents,
                          publisher->Build(first->scopes));
  auto published =
      std::make_shared<const PublishedDocuments>(std::move(documents));
  {
    absl::MutexLock lock(&publisher->mu_);
    publisher->serving_ = first;
    publisher->documents_ = published;
  }
  publisher->sinks_.serving(std::move(first));
  publisher->sinks_.documents(std::move(published));
  return publisher;
}

void ServingPublisher::OnKeys(const ScopeKeysMap& scopes) {
  absl::MutexLock pass(&pass_mu_);
  auto next = std::make_shared<ServingState>(*serving());
  next->scopes = scopes;
  {
    absl::MutexLock lock(&mu_);
    serving_ = next;
  }
  sinks_.serving(next);
  absl::StatusOr<PublishedDocuments> rebuilt = Build(scopes);
  if (!rebuilt.ok()) {
    SIGNET_LOG_ERROR("rebuilding the published key sets failed: {}",
                     rebuilt.status().ToString());
    return;
  }
  if (*rebuilt == *documents()) return;
  auto published =
      std::make_shared<const PublishedDocuments>(*std::move(rebuilt));
  {
    absl::MutexLock lock(&mu_);
    documents_ = published;
  }
  sinks_.documents(std::move(published));
  SIGNET_LOG_INFO("a key's state changed: published key sets rebuilt");
}

std::shared_ptr<const ServingState> ServingPublisher::serving() const {
  absl::MutexLock lock(&mu_);
  return serving_;
}

std::shared_ptr<const PublishedDocuments> ServingPublisher::documents() const {
  absl::MutexLock lock(&mu_);
  return documents_;
}

}  // namespace signet::server
