// Test-only: a Connector that wraps another and can make any PKCS#11 call
// answer any CK_RV, rewrite boolean attributes, or hide every slot.
//
// Wrapping a real module (SoftHSM in-process or p11-kit-client) lets unit
// tests drive every error path of the layer against real objects, and count
// calls (for example to pin that signing never calls C_FindObjects).
// Thread-safe.
#ifndef SIGNET_HSM_FAULT_INJECTION_H_
#define SIGNET_HSM_FAULT_INJECTION_H_

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "hsm/module.h"

namespace signet::hsm {

class FaultInjector {
 public:
  // The next `times` calls of `call` ("C_Sign", "C_Login", ...) answer `rv`
  // without reaching the module. times < 0: every call from now on.
  void Fail(absl::string_view call, CK_RV rv, int times = 1);
  // C_GetAttributeValue reports `value` for boolean `type` on private keys.
  void OverrideBool(CK_ATTRIBUTE_TYPE type, bool value);
  // C_GetAttributeValue answers `rv` for attribute `type` (no value).
  void FailAttribute(CK_ATTRIBUTE_TYPE type, CK_RV rv);
  // C_GetMechanismList leaves out `mechanism`.
  void HideMechanism(CK_MECHANISM_TYPE mechanism);
  // Calls of `call` block (like a stalled HSM) until Release(); how many are
  // blocked right now.
  void Block(absl::string_view call);
  void Release();
  int Blocked() const;
  // C_GetSlotList shows no slot (the p11-kit client's "server missing").
  void HideSlots(bool hide);
  void Clear();

  // How many times `call` was made (including failed ones).
  int Calls(absl::string_view call) const;
  int Connects() const;

  // Used by the wrapper.
  bool TakeFailure(absl::string_view call, CK_RV* rv);
  void WaitIfBlocked(absl::string_view call);
  void CountConnect();
  bool hide_slots() const;
  std::vector<CK_MECHANISM_TYPE> hidden_mechanisms() const;
  std::map<CK_ATTRIBUTE_TYPE, bool> bool_overrides() const;
  std::map<CK_ATTRIBUTE_TYPE, CK_RV> attribute_failures() const;

 private:
  struct Failure {
    CK_RV rv;
    int remaining;
  };
  mutable absl::Mutex mu_;
  std::map<std::string, Failure, std::less<>> failures_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, int, std::less<>> calls_ ABSL_GUARDED_BY(mu_);
  std::map<CK_ATTRIBUTE_TYPE, bool> bools_ ABSL_GUARDED_BY(mu_);
  std::map<CK_ATTRIBUTE_TYPE, CK_RV> attr_failures_ ABSL_GUARDED_BY(mu_);
  std::vector<CK_MECHANISM_TYPE> hidden_mechs_ ABSL_GUARDED_BY(mu_);
  bool hide_slots_ ABSL_GUARDED_BY(mu_) = false;
  std::string blocked_call_ ABSL_GUARDED_BY(mu_);
  int blocked_ ABSL_GUARDED_BY(mu_) = 0;
  int connects_ ABSL_GUARDED_BY(mu_) = 0;
};

class FaultInjectingConnector : public Connector {
 public:
  FaultInjectingConnector(std::unique_ptr<Connector> inner,
                          std::shared_ptr<FaultInjector> injector)
      : inner_(std::move(inner)), injector_(std::move(injector)) {}

  absl::StatusOr<std::unique_ptr<ModuleConnection>> Connect() override;

 private:
  std::unique_ptr<Connector> inner_;
  std::shared_ptr<FaultInjector> injector_;
};

}  // namespace signet::hsm

#endif  // SIGNET_HSM_FAULT_INJECTION_H_
