#include "server/unknown_method_service.h"

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "base/quote.h"
#include "server/grpc_status.h"

namespace signet::server {
namespace {

// Answers at once and reads nothing: a call's messages, however large,
// are never taken in.
class UnknownMethodReactor final : public grpc::ServerGenericBidiReactor {
 public:
  explicit UnknownMethodReactor(const std::string& quoted_method) {
    Finish(ToGrpcStatus(absl::UnimplementedError(
        absl::StrCat("signetd does not serve method ", quoted_method,
                     "; it serves /signet.v1.Signer/*, /signet.v1.Admin/* "
                     "and /grpc.health.v1.Health/* (proto/signet/v1/ in "
                     "signet's source)"))));
  }
  void OnDone() override { delete this; }
};

}  // namespace

grpc::ServerGenericBidiReactor* UnknownMethodService::CreateReactor(
    grpc::GenericCallbackServerContext* context) {
  calls_.Count(context->auth_context().get());
  return new UnknownMethodReactor(base::Quote(context->method()));
}

}  // namespace signet::server
