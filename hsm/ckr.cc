#include "hsm/ckr.h"

#include <string>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace signet::hsm {
namespace {

struct CkrEntry {
  CK_RV rv;
  const char* name;
  absl::StatusCode code;
};

using C = absl::StatusCode;

// Sorted by nothing in particular; looked up linearly (errors are rare).
constexpr CkrEntry kCkrTable[] = {
    {CKR_OK, "CKR_OK", C::kOk},
    {CKR_CANCEL, "CKR_CANCEL", C::kCancelled},
    {CKR_HOST_MEMORY, "CKR_HOST_MEMORY", C::kResourceExhausted},
    {CKR_SLOT_ID_INVALID, "CKR_SLOT_ID_INVALID", C::kUnavailable},
    {CKR_GENERAL_ERROR, "CKR_GENERAL_ERROR", C::kUnavailable},
    {CKR_FUNCTION_FAILED, "CKR_FUNCTION_FAILED", C::kInternal},
    {CKR_ARGUMENTS_BAD, "CKR_ARGUMENTS_BAD", C::kInvalidArgument},
    {CKR_CANT_LOCK, "CKR_CANT_LOCK", C::kFailedPrecondition},
    {CKR_ATTRIBUTE_READ_ONLY, "CKR_ATTRIBUTE_READ_ONLY", C::kInvalidArgument},
    {CKR_ATTRIBUTE_SENSITIVE, "CKR_ATTRIBUTE_SENSITIVE", C::kPermissionDenied},
    {CKR_ATTRIBUTE_TYPE_INVALID, "CKR_ATTRIBUTE_TYPE_INVALID",
     C::kInvalidArgument},
    {CKR_ATTRIBUTE_VALUE_INVALID, "CKR_ATTRIBUTE_VALUE_INVALID",
     C::kInvalidArgument},
    {CKR_ACTION_PROHIBITED, "CKR_ACTION_PROHIBITED", C::kPermissionDenied},
    {CKR_DATA_INVALID, "CKR_DATA_INVALID", C::kInvalidArgument},
    {CKR_DATA_LEN_RANGE, "CKR_DATA_LEN_RANGE", C::kInvalidArgument},
    {CKR_DEVICE_ERROR, "CKR_DEVICE_ERROR", C::kUnavailable},
    {CKR_DEVICE_MEMORY, "CKR_DEVICE_MEMORY", C::kResourceExhausted},
    {CKR_DEVICE_REMOVED, "CKR_DEVICE_REMOVED", C::kUnavailable},
    {CKR_FUNCTION_CANCELED, "CKR_FUNCTION_CANCELED", C::kCancelled},
    {CKR_FUNCTION_NOT_PARALLEL, "CKR_FUNCTION_NOT_PARALLEL", C::kUnimplemented},
    {CKR_FUNCTION_NOT_SUPPORTED, "CKR_FUNCTION_NOT_SUPPORTED",
     C::kUnimplemented},
    {CKR_KEY_HANDLE_INVALID, "CKR_KEY_HANDLE_INVALID", C::kNotFound},
    {CKR_KEY_SIZE_RANGE, "CKR_KEY_SIZE_RANGE", C::kInvalidArgument},
    {CKR_KEY_TYPE_INCONSISTENT, "CKR_KEY_TYPE_INCONSISTENT",
     C::kInvalidArgument},
    {CKR_KEY_FUNCTION_NOT_PERMITTED, "CKR_KEY_FUNCTION_NOT_PERMITTED",
     C::kPermissionDenied},
    {CKR_KEY_UNEXTRACTABLE, "CKR_KEY_UNEXTRACTABLE", C::kPermissionDenied},
    {CKR_MECHANISM_INVALID, "CKR_MECHANISM_INVALID", C::kUnimplemented},
    {CKR_MECHANISM_PARAM_INVALID, "CKR_MECHANISM_PARAM_INVALID",
     C::kInvalidArgument},
    {CKR_OBJECT_HANDLE_INVALID, "CKR_OBJECT_HANDLE_INVALID", C::kNotFound},
    {CKR_OPERATION_ACTIVE, "CKR_OPERATION_ACTIVE", C::kFailedPrecondition},
    {CKR_OPERATION_NOT_INITIALIZED, "CKR_OPERATION_NOT_INITIALIZED",
     C::kFailedPrecondition},
    {CKR_PIN_INCORRECT, "CKR_PIN_INCORRECT", C::kFailedPrecondition},
    {CKR_PIN_INVALID, "CKR_PIN_INVALID", C::kFailedPrecondition},
    {CKR_PIN_LEN_RANGE, "CKR_PIN_LEN_RANGE", C::kFailedPrecondition},
    {CKR_PIN_EXPIRED, "CKR_PIN_EXPIRED", C::kFailedPrecondition},
    {CKR_PIN_LOCKED, "CKR_PIN_LOCKED", C::kFailedPrecondition},
    {CKR_SESSION_CLOSED, "CKR_SESSION_CLOSED", C::kUnavailable},
    {CKR_SESSION_COUNT, "CKR_SESSION_COUNT", C::kResourceExhausted},
    {CKR_SESSION_HANDLE_INVALID, "CKR_SESSION_HANDLE_INVALID", C::kUnavailable},
    {CKR_SESSION_READ_ONLY, "CKR_SESSION_READ_ONLY", C::kFailedPrecondition},
    {CKR_SIGNATURE_INVALID, "CKR_SIGNATURE_INVALID", C::kInvalidArgument},
    {CKR_SIGNATURE_LEN_RANGE, "CKR_SIGNATURE_LEN_RANGE", C::kInvalidArgument},
    {CKR_TEMPLATE_INCOMPLETE, "CKR_TEMPLATE_INCOMPLETE", C::kInvalidArgument},
    {CKR_TEMPLATE_INCONSISTENT, "CKR_TEMPLATE_INCONSISTENT",
     C::kInvalidArgument},
    {CKR_TOKEN_NOT_PRESENT, "CKR_TOKEN_NOT_PRESENT", C::kUnavailable},
    {CKR_TOKEN_NOT_RECOGNIZED, "CKR_TOKEN_NOT_RECOGNIZED", C::kUnavailable},
    {CKR_TOKEN_WRITE_PROTECTED, "CKR_TOKEN_WRITE_PROTECTED",
     C::kFailedPrecondition},
    {CKR_USER_ALREADY_LOGGED_IN, "CKR_USER_ALREADY_LOGGED_IN",
     C::kFailedPrecondition},
    {CKR_USER_NOT_LOGGED_IN, "CKR_USER_NOT_LOGGED_IN", C::kFailedPrecondition},
    {CKR_USER_PIN_NOT_INITIALIZED, "CKR_USER_PIN_NOT_INITIALIZED",
     C::kFailedPrecondition},
    {CKR_USER_TYPE_INVALID, "CKR_USER_TYPE_INVALID", C::kFailedPrecondition},
    {CKR_USER_ANOTHER_ALREADY_LOGGED_IN, "CKR_USER_ANOTHER_ALREADY_LOGGED_IN",
     C::kFailedPrecondition},
    {CKR_RANDOM_NO_RNG, "CKR_RANDOM_NO_RNG", C::kUnimplemented},
    {CKR_DOMAIN_PARAMS_INVALID, "CKR_DOMAIN_PARAMS_INVALID",
     C::kInvalidArgument},
    {CKR_CURVE_NOT_SUPPORTED, "CKR_CURVE_NOT_SUPPORTED", C::kUnimplemented},
    {CKR_BUFFER_TOO_SMALL, "CKR_BUFFER_TOO_SMALL", C::kInternal},
    {CKR_CRYPTOKI_NOT_INITIALIZED, "CKR_CRYPTOKI_NOT_INITIALIZED",
     C::kUnavailable},
    {CKR_CRYPTOKI_ALREADY_INITIALIZED, "CKR_CRYPTOKI_ALREADY_INITIALIZED",
     C::kFailedPrecondition},
    {CKR_LIBRARY_LOAD_FAILED, "CKR_LIBRARY_LOAD_FAILED",
     C::kFailedPrecondition},
    {CKR_FUNCTION_REJECTED, "CKR_FUNCTION_REJECTED", C::kPermissionDenied},
};

const CkrEntry* Find(CK_RV rv) {
  for (const CkrEntry& e : kCkrTable) {
    if (e.rv == rv) return &e;
  }
  return nullptr;
}

}  // namespace

std::string CkrName(CK_RV rv) {
  const CkrEntry* e = Find(rv);
  if (e != nullptr) return e->name;
  return absl::StrFormat("CKR_0x%08x", static_cast<unsigned long>(rv));
}

absl::StatusCode CkrCode(CK_RV rv) {
  const CkrEntry* e = Find(rv);
  return e != nullptr ? e->code : absl::StatusCode::kInternal;
}

absl::Status CkrStatus(CK_RV rv, absl::string_view operation) {
  if (rv == CKR_OK) return absl::OkStatus();
  return absl::Status(CkrCode(rv), absl::StrCat(operation, ": ", CkrName(rv)));
}

bool IsConnectionLost(CK_RV rv) {
  switch (rv) {
    case CKR_DEVICE_ERROR:
    case CKR_DEVICE_REMOVED:
    case CKR_SESSION_CLOSED:
    case CKR_SESSION_HANDLE_INVALID:
    case CKR_CRYPTOKI_NOT_INITIALIZED:
    case CKR_TOKEN_NOT_PRESENT:
    case CKR_SLOT_ID_INVALID:
      return true;
    default:
      return false;
  }
}

bool IsTransientReadError(CK_RV rv) {
  return rv == CKR_GENERAL_ERROR || rv == CKR_TOKEN_NOT_RECOGNIZED;
}

}  // namespace signet::hsm
