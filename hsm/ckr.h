// The one table that maps PKCS#11 return values (CK_RV) to absl::Status.
//
// Codes are chosen so the caller can act (docs/architecture.md, "Code
// conventions"):
//   device, session and connection errors   -> UNAVAILABLE (retry elsewhere
//                                               or later; the layer reconnects)
//   PIN and login problems                   -> FAILED_PRECONDITION (the
//                                               server is misconfigured)
//   missing objects / handles                -> NOT_FOUND
//   unsupported mechanisms / functions       -> UNIMPLEMENTED
//   bad templates, data, arguments           -> INVALID_ARGUMENT
//   policy refusals (sensitive, not allowed) -> PERMISSION_DENIED
//   resource limits                          -> RESOURCE_EXHAUSTED
//   anything else                            -> INTERNAL
// Messages name the operation and the CKR_* constant and never carry key
// bytes or PINs. Thread-safe: pure functions.
#ifndef SIGNET_HSM_CKR_H_
#define SIGNET_HSM_CKR_H_

#include <p11-kit/pkcs11.h>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"

namespace signet::hsm {

// "CKR_DEVICE_ERROR", or "CKR_0x%08lx" for a value not in the table.
std::string CkrName(CK_RV rv);

// The canonical code for `rv` (kOk for CKR_OK).
absl::StatusCode CkrCode(CK_RV rv);

// OK for CKR_OK, else a status with CkrCode(rv) and the message
// "<operation>: <CKR_NAME>".
absl::Status CkrStatus(CK_RV rv, absl::string_view operation);

// True when `rv` says the connection to the module (or the token behind it)
// is gone, so the connection must be re-established: device errors, closed
// or invalid sessions, an uninitialized library, a token not present.
bool IsConnectionLost(CK_RV rv);

// True for the errors SoftHSM's file token answers transiently while another
// instance writes (docs/architecture.md, "The HSM boundary as it behaves"):
// CKR_GENERAL_ERROR, CKR_TOKEN_NOT_RECOGNIZED.
// Reads retry these a bounded number of times.
bool IsTransientReadError(CK_RV rv);

}  // namespace signet::hsm

#endif  // SIGNET_HSM_CKR_H_
