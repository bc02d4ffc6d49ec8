#include "server/serving_state.h"

#include <optional>
#include <utility>

#include "absl/strings/str_cat.h"
#include "base/status_macros.h"
#include "rotation/schedule.h"
#include "server/jwt.h"

namespace signet::server {

absl::StatusOr<std::shared_ptr<const ScopeState>> MakeScopeState(
    const signet::v1::ScopeConfig& config, const rotation::KeyRecord& record,
    const hsm::LoadedKey& key) {
  auto state = std::make_shared<ScopeState>();
  state->config = config;
  state->alg = record.algorithm();
  state->record = record;
  state->key = key;
  state->kid = record.kid();
  if (config.purpose() == signet::v1::JWT) {
    // Its JWK is built with the published documents, which signetd builds
    // before it serves: a key that cannot be a JWK never starts serving.
    state->header_b64 = ProtectedHeaderB64(state->alg, state->kid);
  } else {
    SIGNET_ASSIGN_OR_RETURN(state->spki_pem, key.public_key->SpkiPem());
  }
  return std::shared_ptr<const ScopeState>(std::move(state));
}

ScopeKeys::ScopeKeys(signet::v1::ScopeConfig config, std::string alg,
                     std::vector<rotation::KeyRecord> records,
                     std::vector<std::shared_ptr<const ScopeState>> versions,
                     const rotation::KeyTimings& timings, absl::Time built_at,
                     std::map<std::string, std::string> unusable)
    : config_(std::move(config)),
      alg_(std::move(alg)),
      records_(std::move(records)),
      versions_(std::move(versions)),
      unusable_(std::move(unusable)),
      built_at_(built_at) {
  valid_until_ = rotation::NextScheduleChange(records_, timings, built_at_);
  const rotation::ScopeView view = rotation::ViewScope(records_, built_at_);
  signing_ = VersionFor(view.signing);
}

std::shared_ptr<const ScopeState> ScopeKeys::VersionFor(
    int record_index) const {
  if (record_index < 0) return nullptr;
  const std::string& key_id = records_[record_index].key_id();
  for (const auto& version : versions_) {
    if (version->record.key_id() == key_id) return version;
  }
  return nullptr;
}

std::shared_ptr<const ScopeState> ScopeKeys::SigningAt(absl::Time now) const {
  if (now >= built_at_ && now < valid_until_) return signing_;
  return VersionFor(rotation::ViewScope(records_, now).signing);
}

absl::Status ScopeKeys::CanSignAt(absl::Time now) const {
  if (SigningAt(now) != nullptr) return absl::OkStatus();
  const int signing = rotation::ViewScope(records_, now).signing;
  if (signing < 0) {
    return absl::FailedPreconditionError(absl::StrCat(
        "scope ", config_.name(),
        " has no active key right now; the key schedule needs attention "
        "(signetctl keys list ",
        config_.name(), ")"));
  }
  const rotation::KeyRecord& active = records_[signing];
  auto why = unusable_.find(active.key_id());
  return absl::FailedPreconditionError(absl::StrCat(
      why != unusable_.end()
          ? why->second
          : absl::StrCat("scope ", config_.name(), ": its ACTIVE key ",
                         active.kid(), " is not loaded"),
      "; the scope cannot sign until an operator revokes that key "
      "(signetctl keys revoke ",
      config_.name(), " ", active.kid(),
      ", so that the standby signs) or restores it in the HSM"));
}

std::vector<std::shared_ptr<const ScopeState>> ScopeKeys::PublishedAt(
    absl::Time now, absl::Time seen) const {
  const rotation::ScopeView view = rotation::ViewScope(records_, now);
  std::optional<rotation::ScopeView> seen_view;
  if (seen < now) seen_view = rotation::ViewScope(records_, seen);
  std::vector<std::shared_ptr<const ScopeState>> out;
  for (size_t i = 0; i < records_.size(); ++i) {
    if (!rotation::IsPublished(view.states[i]) &&
        !(seen_view.has_value() &&
          rotation::IsPublished(seen_view->states[i]))) {
      continue;
    }
    if (auto version = VersionFor(static_cast<int>(i))) out.push_back(version);
  }
  return out;
}

const rotation::KeyRecord* ScopeKeys::StandbyAt(absl::Time now) const {
  const int standby = rotation::ViewScope(records_, now).standby;
  return standby >= 0 ? &records_[standby] : nullptr;
}

std::string ScopeKeys::ClockAnomalyAt(absl::Time now) const {
  return rotation::ViewScope(records_, now).clock_anomaly;
}

}  // namespace signet::server
