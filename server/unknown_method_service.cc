#include "server/unknown_method_service.h"

#include <algorithm>
#include <functional>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "base/quote.h"
#include "server/identity.h"

namespace signet::server {
namespace {

// Answers at once and reads nothing: a call's messages, however large,
// are never taken in.
class UnknownMethodReactor final : public grpc::ServerGenericBidiReactor {
 public:
  explicit UnknownMethodReactor(const std::string& quoted_method) {
    Finish(grpc::Status(
        grpc::StatusCode::UNIMPLEMENTED,
        absl::StrCat("signetd does not serve method ", quoted_method,
                     "; it serves /signet.v1.Signer/*, /signet.v1.Admin/* "
                     "and /grpc.health.v1.Health/* (proto/signet/v1/ in "
                     "signet's source)")));
  }
  void OnDone() override { delete this; }
};

}  // namespace

grpc::ServerGenericBidiReactor* UnknownMethodService::CreateReactor(
    grpc::GenericCallbackServerContext* context) {
  calls_.fetch_add(1);
  std::string_view pem;
  std::shared_ptr<const grpc::AuthContext> auth = context->auth_context();
  std::vector<grpc::string_ref> pems;
  if (auth != nullptr) pems = auth->FindPropertyValues("x509_pem_cert");
  if (!pems.empty())
    pem = std::string_view(pems.front().data(), pems.front().size());
  const size_t key = pem.empty() ? 0 : std::hash<std::string_view>()(pem);
  {
    absl::MutexLock lock(&mu_);
    auto it = callers_.find(key);
    if (it == callers_.end() && callers_.size() >= kMaxCallers) {
      ++other_calls_;
    } else {
      if (it == callers_.end()) {
        absl::StatusOr<std::string> identity =
            pem.empty() ? absl::StatusOr<std::string>(absl::UnknownError(""))
                        : IdentityFromCertificatePem(
                              absl::string_view(pem.data(), pem.size()));
        it = callers_
                 .emplace(key,
                          Caller{identity.ok() ? base::Quote(*identity, 128)
                                               : std::string("unidentified")})
                 .first;
      }
      ++it->second.calls;
    }
  }
  return new UnknownMethodReactor(base::Quote(context->method()));
}

std::string UnknownMethodService::TakeCallers() {
  std::map<std::string, uint64_t> by_identity;
  uint64_t others = 0;
  {
    absl::MutexLock lock(&mu_);
    for (const auto& [key, caller] : callers_) {
      by_identity[caller.identity] += caller.calls;
    }
    others = other_calls_;
    callers_.clear();
    other_calls_ = 0;
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
  if (parts.empty()) return "";
  return absl::StrCat("by ", absl::StrJoin(parts, ", "));
}

}  // namespace signet::server
