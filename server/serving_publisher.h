// What a replica serves and publishes as its keys move through their
// schedule: the ServingState the Signer signs with, and the public documents
// (GetJwks, GetPublicKeys, the JWKS HTTP endpoint).
//
// After each reconcile pass (server/key_manager.h) the scopes' keys are
// swapped in and the documents rebuilt for the key state now; the documents
// are handed on only when their bytes changed, so a standby appears, a
// retired key stays, and an unpublished or revoked key leaves every set at
// its time, not at the next restart (docs/architecture.md, "Keys and their
// lifecycle").
//
// Thread-safety: thread-safe. OnKeys runs on the key manager's loop; the
// getters from any thread. The sinks are called under no lock of this
// class's, in the order the passes came.
#ifndef SIGNET_SERVER_SERVING_PUBLISHER_H_
#define SIGNET_SERVER_SERVING_PUBLISHER_H_

#include <functional>
#include <memory>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "base/clock.h"
#include "server/publication.h"
#include "server/serving_state.h"

namespace signet::server {

class ServingPublisher {
 public:
  // Where each new state goes (the Signer), and each changed set of
  // documents (the Signer and the HTTP endpoint).
  struct Sinks {
    std::function<void(std::shared_ptr<const ServingState>)> serving;
    std::function<void(std::shared_ptr<const PublishedDocuments>)> documents;
  };

  // Builds the documents for `first` (the state at start) and hands both to
  // the sinks. `public_base_url` as BuildPublishedDocuments takes it;
  // `clock` decides which keys are published and must outlive this;
  // `seen`, if set (it must outlive this too), is the time seen pass that
  // keeps a key published while a clock set forward says its grace is over
  // (ScopeKeys::PublishedAt).
  static absl::StatusOr<std::unique_ptr<ServingPublisher>> Create(
      std::shared_ptr<const ServingState> first, std::string public_base_url,
      const base::Clock* clock, Sinks sinks,
      const base::ElapsedWallTime* seen = nullptr);

  // After a reconcile pass: `scopes` replace the served scopes (the rest of
  // the state is kept), and the documents are rebuilt. A rebuild that fails
  // is logged and leaves the documents as they were.
  void OnKeys(const ScopeKeysMap& scopes) ABSL_LOCKS_EXCLUDED(mu_);

  std::shared_ptr<const ServingState> serving() const ABSL_LOCKS_EXCLUDED(mu_);
  std::shared_ptr<const PublishedDocuments> documents() const
      ABSL_LOCKS_EXCLUDED(mu_);

 private:
  ServingPublisher(std::string public_base_url, const base::Clock* clock,
                   Sinks sinks, const base::ElapsedWallTime* seen)
      : public_base_url_(std::move(public_base_url)),
        clock_(clock),
        seen_(seen),
        sinks_(std::move(sinks)) {}

  // The documents for `scopes` now.
  absl::StatusOr<PublishedDocuments> Build(const ScopeKeysMap& scopes) const;

  const std::string public_base_url_;
  const base::Clock* const clock_;
  const base::ElapsedWallTime* const seen_;
  const Sinks sinks_;
  // One pass at a time, so the sinks see the states in order.
  absl::Mutex pass_mu_ ABSL_ACQUIRED_BEFORE(mu_);
  mutable absl::Mutex mu_;
  std::shared_ptr<const ServingState> serving_ ABSL_GUARDED_BY(mu_);
  std::shared_ptr<const PublishedDocuments> documents_ ABSL_GUARDED_BY(mu_);
};

}  // namespace signet::server

#endif  // SIGNET_SERVER_SERVING_PUBLISHER_H_
