// Propagating an error absl::Status to the caller in one line. The Abseil
// of Debian bookworm (20220623) that signet builds against has no
// RETURN_IF_ERROR or ASSIGN_OR_RETURN, so signet defines the pair under its
// own prefix (docs/architecture.md, "Code conventions").
//
//   SIGNET_RETURN_IF_ERROR(ValidateKeyRecord(record));
//   SIGNET_ASSIGN_OR_RETURN(std::string kid, jose::JwkThumbprint(key));
//   SIGNET_ASSIGN_OR_RETURN(auto connector, P11KitConnector::Create(module));
//   SIGNET_ASSIGN_OR_RETURN(state->spki_pem, key.public_key->SpkiPem());
//
// Each evaluates its expression exactly once. On error the function returns
// the status unchanged (no context is added: where a caller words the error
// its own way, it keeps its explicit `if`). The enclosing function's return
// type must be constructible from absl::Status (absl::Status, or any
// absl::StatusOr<T>).
//
// SIGNET_ASSIGN_OR_RETURN expands to several statements: use it only where
// a statement list may stand (not as the body of an unbraced if or loop).
// Its `lhs` may not contain a comma (write `auto` for a std::pair<A, B>);
// the expression may.

#ifndef SIGNET_BASE_STATUS_MACROS_H_
#define SIGNET_BASE_STATUS_MACROS_H_

#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

// Evaluates `expr`, an absl::Status (or a reference to one), and returns it
// from the enclosing function if it is not OK.
#define SIGNET_RETURN_IF_ERROR(expr)                      \
  do {                                                    \
    ::absl::Status signet_status_macros_status_ = (expr); \
    if (!signet_status_macros_status_.ok()) {             \
      return signet_status_macros_status_;                \
    }                                                     \
  } while (false)

// Evaluates `...`, an absl::StatusOr<T>; if it holds an error, returns the
// status from the enclosing function; otherwise moves the value into `lhs`,
// which is either a declaration (`auto x`, `std::string x`, `const T x`) or
// an existing variable. The temporary's name is made unique by __COUNTER__,
// so several uses may share a scope, or a line.
#define SIGNET_ASSIGN_OR_RETURN(lhs, ...)                          \
  SIGNET_STATUS_MACROS_ASSIGN_OR_RETURN_(                          \
      SIGNET_STATUS_MACROS_CONCAT_(signet_status_macros_statusor_, \
                                   __COUNTER__),                   \
      lhs, __VA_ARGS__)

// Implementation details of the macros above.
#define SIGNET_STATUS_MACROS_CONCAT_INNER_(a, b) a##b
#define SIGNET_STATUS_MACROS_CONCAT_(a, b) \
  SIGNET_STATUS_MACROS_CONCAT_INNER_(a, b)
#define SIGNET_STATUS_MACROS_ASSIGN_OR_RETURN_(statusor, lhs, ...) \
  auto statusor = (__VA_ARGS__);                                   \
  if (!statusor.ok()) {                                            \
    return std::move(statusor).status();                           \
  }                                                                \
  lhs = std::move(statusor).value()

#endif  // SIGNET_BASE_STATUS_MACROS_H_
