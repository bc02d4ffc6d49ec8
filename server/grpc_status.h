// The one conversion from absl::Status, which signet's modules return, to
// grpc::Status, which a call is answered with. The numeric codes are the
// same (both are google.rpc.Code); the message goes as it is.
#ifndef SIGNET_SERVER_GRPC_STATUS_H_
#define SIGNET_SERVER_GRPC_STATUS_H_

#include <grpcpp/support/status.h>

#include "absl/status/status.h"

namespace signet::server {

grpc::Status ToGrpcStatus(const absl::Status& status);

}  // namespace signet::server

#endif  // SIGNET_SERVER_GRPC_STATUS_H_
