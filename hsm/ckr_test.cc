#include "hsm/ckr.h"

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace signet::hsm {
namespace {

using ::testing::HasSubstr;

TEST(CkrTest, NamesKnownConstantsAndFormatsUnknownOnes) {
  EXPECT_EQ(CkrName(CKR_DEVICE_ERROR), "CKR_DEVICE_ERROR");
  EXPECT_EQ(CkrName(CKR_PIN_INCORRECT), "CKR_PIN_INCORRECT");
  EXPECT_EQ(CkrName(0x80001234UL), "CKR_0x80001234");
}

TEST(CkrTest, OkIsOk) { EXPECT_TRUE(CkrStatus(CKR_OK, "C_Sign").ok()); }

struct Case {
  CK_RV rv;
  absl::StatusCode code;
};

class CkrMappingTest : public ::testing::TestWithParam<Case> {};

TEST_P(CkrMappingTest, MapsToTheCodeTheCallerCanActOn) {
  absl::Status st = CkrStatus(GetParam().rv, "C_Op");
  EXPECT_EQ(st.code(), GetParam().code) << CkrName(GetParam().rv);
  EXPECT_THAT(st.message(), HasSubstr("C_Op: " + CkrName(GetParam().rv)));
}

INSTANTIATE_TEST_SUITE_P(
    Table, CkrMappingTest,
    ::testing::Values(
        // Device and session errors: the HSM went away.
        Case{CKR_DEVICE_ERROR, absl::StatusCode::kUnavailable},
        Case{CKR_DEVICE_REMOVED, absl::StatusCode::kUnavailable},
        Case{CKR_SESSION_HANDLE_INVALID, absl::StatusCode::kUnavailable},
        Case{CKR_SESSION_CLOSED, absl::StatusCode::kUnavailable},
        Case{CKR_TOKEN_NOT_PRESENT, absl::StatusCode::kUnavailable},
        Case{CKR_CRYPTOKI_NOT_INITIALIZED, absl::StatusCode::kUnavailable},
        // PIN problems: the server is misconfigured.
        Case{CKR_PIN_INCORRECT, absl::StatusCode::kFailedPrecondition},
        Case{CKR_PIN_LOCKED, absl::StatusCode::kFailedPrecondition},
        Case{CKR_USER_NOT_LOGGED_IN, absl::StatusCode::kFailedPrecondition},
        // Missing objects.
        Case{CKR_OBJECT_HANDLE_INVALID, absl::StatusCode::kNotFound},
        Case{CKR_KEY_HANDLE_INVALID, absl::StatusCode::kNotFound},
        // Unsupported mechanisms.
        Case{CKR_MECHANISM_INVALID, absl::StatusCode::kUnimplemented},
        Case{CKR_FUNCTION_NOT_SUPPORTED, absl::StatusCode::kUnimplemented},
        // Policy.
        Case{CKR_ATTRIBUTE_SENSITIVE, absl::StatusCode::kPermissionDenied},
        Case{CKR_KEY_FUNCTION_NOT_PERMITTED,
             absl::StatusCode::kPermissionDenied},
        // Bad input.
        Case{CKR_TEMPLATE_INCONSISTENT, absl::StatusCode::kInvalidArgument},
        Case{CKR_DATA_LEN_RANGE, absl::StatusCode::kInvalidArgument},
        Case{CKR_DEVICE_MEMORY, absl::StatusCode::kResourceExhausted},
        Case{0x80001234UL, absl::StatusCode::kInternal}));

TEST(CkrTest, ConnectionLossIsRecognized) {
  EXPECT_TRUE(IsConnectionLost(CKR_DEVICE_ERROR));
  EXPECT_TRUE(IsConnectionLost(CKR_SESSION_HANDLE_INVALID));
  EXPECT_TRUE(IsConnectionLost(CKR_CRYPTOKI_NOT_INITIALIZED));
  EXPECT_FALSE(IsConnectionLost(CKR_PIN_INCORRECT));
  EXPECT_FALSE(IsConnectionLost(CKR_GENERAL_ERROR));
  EXPECT_FALSE(IsConnectionLost(CKR_OK));
}

TEST(CkrTest, TransientReadErrorsAreTheSoftHsmOnes) {
  EXPECT_TRUE(IsTransientReadError(CKR_GENERAL_ERROR));
  EXPECT_TRUE(IsTransientReadError(CKR_TOKEN_NOT_RECOGNIZED));
  EXPECT_FALSE(IsTransientReadError(CKR_DEVICE_ERROR));
}

}  // namespace
}  // namespace signet::hsm
