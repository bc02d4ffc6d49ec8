#include "server/caller_tally.h"

#include <algorithm>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "base/quote.h"
#include "server/identity.h"

namespace signet::server {

void CallerTally::Count(const grpc::AuthContext* auth) {
  absl::string_view pem;
  std::vector<grpc::string_ref> pems;
  if (auth != nullptr) pems = auth->FindPropertyValues("x509_pem_cert");
  if (!pems.empty())
    pem = absl::string_view(pems.front().data(), pems.front().size());
  bool known = false;
  {
    // A call is counted where it is attributed, under one lock, so that a
    // report's count and its "by …" always agree.
    absl::MutexLock lock(&mu_);
    if (auto it = callers_.find(pem); it != callers_.end()) {
      ++it->second.calls;
      known = true;
    } else if (callers_.size() >= kMaxCallers) {
      ++other_calls_;
      known = true;
    }
    if (known) ++unreported_;
  }
  if (!known) {
    // Parsed outside the lock; another call of the same certificate may
    // have added it meanwhile.
    absl::StatusOr<std::string> identity =
        pem.empty() ? absl::StatusOr<std::string>(absl::UnknownError(""))
                    : IdentityFromCertificatePem(pem);
    std::string label = identity.ok() ? base::Quote(*identity, 128)
                                      : std::string("unidentified");
    absl::MutexLock lock(&mu_);
    if (auto it = callers_.find(pem); it != callers_.end()) {
      ++it->second.calls;
    } else if (callers_.size() >= kMaxCallers) {
      ++other_calls_;
    } else {
      callers_.emplace(std::string(pem), Caller{std::move(label), 1});
    }
    ++unreported_;
  }
}

RefusalSummary::Tally CallerTally::TakeReport() {
  std::map<std::string, uint64_t> by_identity;
  uint64_t others = 0;
  RefusalSummary::Tally tally;
  {
    absl::MutexLock lock(&mu_);
    for (const auto& [pem, caller] : callers_) {
      by_identity[caller.identity] += caller.calls;
    }
    others = other_calls_;
    tally.count = unreported_;
    callers_.clear();
    other_calls_ = 0;
    unreported_ = 0;
  }
  std::vector<std::pair<std::string, uint64_t>> sorted(by_identity.begin(),
                                                       by_identity.end());
  std::stable_sort(
      sorted.begin(), sorted.end(),
      [](const auto& a, const auto& b) { return a.second > b.second; });
  std::vector<std::string> parts;
  for (const auto& [identity, calls] : sorted) {
    parts.push_back(absl::StrCat(identity, " (", calls, ")"));
  }
  if (others > 0) parts.push_back(absl::StrCat(others, " by other callers"));
  if (!parts.empty())
    tally.detail = absl::StrCat("by ", absl::StrJoin(parts, ", "));
  return tally;
}

}  // namespace signet::server
