#include "hsm/fault_injection.h"

#include <algorithm>
#include <vector>

#include "base/status_macros.h"

namespace signet::hsm {

void FaultInjector::Fail(absl::string_view call, CK_RV rv, int times) {
  absl::MutexLock lock(&mu_);
  failures_[std::string(call)] = {rv, times};
}

void FaultInjector::OverrideBool(CK_ATTRIBUTE_TYPE type, bool value) {
  absl::MutexLock lock(&mu_);
  bools_[type] = value;
}

void FaultInjector::FailAttribute(CK_ATTRIBUTE_TYPE type, CK_RV rv) {
  absl::MutexLock lock(&mu_);
  attr_failures_[type] = rv;
}

void FaultInjector::HideMechanism(CK_MECHANISM_TYPE mechanism) {
  absl::MutexLock lock(&mu_);
  hidden_mechs_.push_back(mechanism);
}

std::vector<CK_MECHANISM_TYPE> FaultInjector::hidden_mechanisms() const {
  absl::MutexLock lock(&mu_);
  return hidden_mechs_;
}

void FaultInjector::Block(absl::string_view call) {
  absl::MutexLock lock(&mu_);
  blocked_call_ = std::string(call);
}

void FaultInjector::Release() {
  absl::MutexLock lock(&mu_);
  blocked_call_.clear();
}

int FaultInjector::Blocked() const {
  absl::MutexLock lock(&mu_);
  return blocked_;
}

void FaultInjector::WaitIfBlocked(absl::string_view call) {
  absl::MutexLock lock(&mu_);
  if (blocked_call_ != call) return;
  ++blocked_;
  auto released = [this, call]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return blocked_call_ != call;
  };
  mu_.Await(absl::Condition(&released));
  --blocked_;
}

void FaultInjector::HideSlots(bool hide) {
  absl::MutexLock lock(&mu_);
  hide_slots_ = hide;
}

void FaultInjector::Clear() {
  absl::MutexLock lock(&mu_);
  failures_.clear();
  bools_.clear();
  attr_failures_.clear();
  hidden_mechs_.clear();
  hide_slots_ = false;
}

int FaultInjector::Calls(absl::string_view call) const {
  absl::MutexLock lock(&mu_);
  auto it = calls_.find(call);
  return it == calls_.end() ? 0 : it->second;
}

int FaultInjector::Connects() const {
  absl::MutexLock lock(&mu_);
  return connects_;
}

bool FaultInjector::TakeFailure(absl::string_view call, CK_RV* rv) {
  absl::MutexLock lock(&mu_);
  ++calls_[std::string(call)];
  auto it = failures_.find(call);
  if (it == failures_.end() || it->second.remaining == 0) return false;
  *rv = it->second.rv;
  if (it->second.remaining > 0) --it->second.remaining;
  return true;
}

void FaultInjector::CountConnect() {
  absl::MutexLock lock(&mu_);
  ++connects_;
}

bool FaultInjector::hide_slots() const {
  absl::MutexLock lock(&mu_);
  return hide_slots_;
}

std::map<CK_ATTRIBUTE_TYPE, bool> FaultInjector::bool_overrides() const {
  absl::MutexLock lock(&mu_);
  return bools_;
}

std::map<CK_ATTRIBUTE_TYPE, CK_RV> FaultInjector::attribute_failures() const {
  absl::MutexLock lock(&mu_);
  return attr_failures_;
}

namespace {

#define SIGNET_INJECT(name)                        \
  do {                                             \
    CK_RV injected;                                \
    if (injector_->TakeFailure(name, &injected)) { \
      return injected;                             \
    }                                              \
    injector_->WaitIfBlocked(name);                \
  } while (0)

class FaultInjectingConnection : public ModuleConnection {
 public:
  FaultInjectingConnection(std::unique_ptr<ModuleConnection> inner,
                           std::shared_ptr<FaultInjector> injector)
      : inner_(std::move(inner)), injector_(std::move(injector)) {}

  void Abandon() override { inner_->Abandon(); }

  CK_RV GetSlotList(bool p, std::vector<CK_SLOT_ID>* s) override {
    SIGNET_INJECT("C_GetSlotList");
    if (injector_->hide_slots()) {
      s->clear();
      return CKR_OK;
    }
    return inner_->GetSlotList(p, s);
  }
  CK_RV GetTokenInfo(CK_SLOT_ID s, CK_TOKEN_INFO* i) override {
    SIGNET_INJECT("C_GetTokenInfo");
    return inner_->GetTokenInfo(s, i);
  }
  CK_RV GetMechanismList(CK_SLOT_ID s,
                         std::vector<CK_MECHANISM_TYPE>* m) override {
    SIGNET_INJECT("C_GetMechanismList");
    CK_RV rv = inner_->GetMechanismList(s, m);
    for (CK_MECHANISM_TYPE hidden : injector_->hidden_mechanisms()) {
      m->erase(std::remove(m->begin(), m->end(), hidden), m->end());
    }
    return rv;
  }
  CK_RV GetMechanismInfo(CK_SLOT_ID s, CK_MECHANISM_TYPE t,
                         CK_MECHANISM_INFO* i) override {
    SIGNET_INJECT("C_GetMechanismInfo");
    return inner_->GetMechanismInfo(s, t, i);
  }
  CK_RV OpenSession(CK_SLOT_ID s, CK_FLAGS f, CK_SESSION_HANDLE* h) override {
    SIGNET_INJECT("C_OpenSession");
    return inner_->OpenSession(s, f, h);
  }
  CK_RV CloseSession(CK_SESSION_HANDLE h) override {
    SIGNET_INJECT("C_CloseSession");
    return inner_->CloseSession(h);
  }
  CK_RV Login(CK_SESSION_HANDLE h, CK_USER_TYPE u, const unsigned char* p,
              CK_ULONG n) override {
    SIGNET_INJECT("C_Login");
    return inner_->Login(h, u, p, n);
  }
  CK_RV FindObjects(CK_SESSION_HANDLE h, CK_ATTRIBUTE* t, CK_ULONG n,
                    std::vector<CK_OBJECT_HANDLE>* f) override {
    SIGNET_INJECT("C_FindObjects");
    return inner_->FindObjects(h, t, n, f);
  }
  CK_RV GetAttributeValue(CK_SESSION_HANDLE h, CK_OBJECT_HANDLE o,
                          CK_ATTRIBUTE* t, CK_ULONG n) override {
    SIGNET_INJECT("C_GetAttributeValue");
    auto failures = injector_->attribute_failures();
    for (CK_ULONG i = 0; i < n; ++i) {
      auto it = failures.find(t[i].type);
      if (it != failures.end()) return it->second;
    }
    CK_RV rv = inner_->GetAttributeValue(h, o, t, n);
    if (rv != CKR_OK) return rv;
    auto bools = injector_->bool_overrides();
    for (CK_ULONG i = 0; i < n; ++i) {
      auto it = bools.find(t[i].type);
      if (it != bools.end() && t[i].pValue != nullptr && t[i].ulValueLen == 1) {
        *static_cast<CK_BBOOL*>(t[i].pValue) = it->second ? CK_TRUE : CK_FALSE;
      }
    }
    return rv;
  }
  CK_RV GenerateKeyPair(CK_SESSION_HANDLE h, CK_MECHANISM* m, CK_ATTRIBUTE* pt,
                        CK_ULONG pn, CK_ATTRIBUTE* st, CK_ULONG sn,
                        CK_OBJECT_HANDLE* pk, CK_OBJECT_HANDLE* sk) override {
    SIGNET_INJECT("C_GenerateKeyPair");
    return inner_->GenerateKeyPair(h, m, pt, pn, st, sn, pk, sk);
  }
  CK_RV CreateObject(CK_SESSION_HANDLE h, CK_ATTRIBUTE* t, CK_ULONG n,
                     CK_OBJECT_HANDLE* o) override {
    SIGNET_INJECT("C_CreateObject");
    return inner_->CreateObject(h, t, n, o);
  }
  CK_RV DestroyObject(CK_SESSION_HANDLE h, CK_OBJECT_HANDLE o) override {
    SIGNET_INJECT("C_DestroyObject");
    return inner_->DestroyObject(h, o);
  }
  CK_RV SignInit(CK_SESSION_HANDLE h, CK_MECHANISM* m,
                 CK_OBJECT_HANDLE k) override {
    SIGNET_INJECT("C_SignInit");
    return inner_->SignInit(h, m, k);
  }
  CK_RV Sign(CK_SESSION_HANDLE h, const unsigned char* d, CK_ULONG n,
             unsigned char* s, CK_ULONG* sn) override {
    SIGNET_INJECT("C_Sign");
    return inner_->Sign(h, d, n, s, sn);
  }
  CK_RV GenerateRandom(CK_SESSION_HANDLE h, unsigned char* o,
                       CK_ULONG n) override {
    SIGNET_INJECT("C_GenerateRandom");
    return inner_->GenerateRandom(h, o, n);
  }

 private:
  std::unique_ptr<ModuleConnection> inner_;
  std::shared_ptr<FaultInjector> injector_;
};

#undef SIGNET_INJECT

}  // namespace

absl::StatusOr<std::unique_ptr<ModuleConnection>>
FaultInjectingConnector::Connect() {
  injector_->CountConnect();
  CK_RV rv;
  if (injector_->TakeFailure("Connect", &rv)) {
    return absl::UnavailableError("injected: connect failed");
  }
  SIGNET_ASSIGN_OR_RETURN(std::unique_ptr<ModuleConnection> inner,
                          inner_->Connect());
  return std::unique_ptr<ModuleConnection>(
      new FaultInjectingConnection(std::move(inner), injector_));
}

}  // namespace signet::hsm
