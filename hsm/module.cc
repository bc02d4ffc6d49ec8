#include "hsm/module.h"

extern "C" {
#include <p11-kit/p11-kit.h>
}
#include <signal.h>
#include <unistd.h>

#include <cstdlib>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "hsm/ckr.h"

namespace signet::hsm {
namespace {

// Owns one p11-kit module load: finalize + release on destruction unless
// abandoned.
class LoadedModule : public ModuleConnection {
 public:
  explicit LoadedModule(CK_FUNCTION_LIST* module)
      : module_(module), api_(module) {}
  ~LoadedModule() override {
    if (module_ == nullptr) return;
    p11_kit_module_finalize(module_);
    p11_kit_module_release(module_);
  }

  void Abandon() override { module_ = nullptr; }

  CK_RV GetSlotList(bool p, std::vector<CK_SLOT_ID>* s) override {
    return api_.GetSlotList(p, s);
  }
  CK_RV GetTokenInfo(CK_SLOT_ID s, CK_TOKEN_INFO* i) override {
    return api_.GetTokenInfo(s, i);
  }
  CK_RV GetMechanismList(CK_SLOT_ID s,
                         std::vector<CK_MECHANISM_TYPE>* m) override {
    return api_.GetMechanismList(s, m);
  }
  CK_RV GetMechanismInfo(CK_SLOT_ID s, CK_MECHANISM_TYPE t,
                         CK_MECHANISM_INFO* i) override {
    return api_.GetMechanismInfo(s, t, i);
  }
  CK_RV OpenSession(CK_SLOT_ID s, CK_FLAGS f, CK_SESSION_HANDLE* h) override {
    return api_.OpenSession(s, f, h);
  }
  CK_RV CloseSession(CK_SESSION_HANDLE h) override {
    return api_.CloseSession(h);
  }
  CK_RV Login(CK_SESSION_HANDLE h, CK_USER_TYPE u, const unsigned char* p,
              CK_ULONG n) override {
    return api_.Login(h, u, p, n);
  }
  CK_RV FindObjects(CK_SESSION_HANDLE h, CK_ATTRIBUTE* t, CK_ULONG n,
                    std::vector<CK_OBJECT_HANDLE>* f) override {
    return api_.FindObjects(h, t, n, f);
  }
  CK_RV GetAttributeValue(CK_SESSION_HANDLE h, CK_OBJECT_HANDLE o,
                          CK_ATTRIBUTE* t, CK_ULONG n) override {
    return api_.GetAttributeValue(h, o, t, n);
  }
  CK_RV GenerateKeyPair(CK_SESSION_HANDLE h, CK_MECHANISM* m, CK_ATTRIBUTE* pt,
                        CK_ULONG pn, CK_ATTRIBUTE* st, CK_ULONG sn,
                        CK_OBJECT_HANDLE* pk, CK_OBJECT_HANDLE* sk) override {
    return api_.GenerateKeyPair(h, m, pt, pn, st, sn, pk, sk);
  }
  CK_RV CreateObject(CK_SESSION_HANDLE h, CK_ATTRIBUTE* t, CK_ULONG n,
                     CK_OBJECT_HANDLE* o) override {
    return api_.CreateObject(h, t, n, o);
  }
  CK_RV DestroyObject(CK_SESSION_HANDLE h, CK_OBJECT_HANDLE o) override {
    return api_.DestroyObject(h, o);
  }
  CK_RV SignInit(CK_SESSION_HANDLE h, CK_MECHANISM* m,
                 CK_OBJECT_HANDLE k) override {
    return api_.SignInit(h, m, k);
  }
  CK_RV Sign(CK_SESSION_HANDLE h, const unsigned char* d, CK_ULONG n,
             unsigned char* s, CK_ULONG* sn) override {
    return api_.Sign(h, d, n, s, sn);
  }
  CK_RV GenerateRandom(CK_SESSION_HANDLE h, unsigned char* o,
                       CK_ULONG n) override {
    return api_.GenerateRandom(h, o, n);
  }

 private:
  CK_FUNCTION_LIST* module_;
  FunctionListApi api_;
};

}  // namespace

bool IsP11KitClientModule(absl::string_view module_path) {
  return absl::EndsWith(module_path, "/p11-kit-client.so") ||
         module_path == "p11-kit-client.so";
}

absl::StatusOr<std::unique_ptr<P11KitConnector>> P11KitConnector::Create(
    const ModuleOptions& options) {
  if (options.module_path.empty()) {
    return absl::InvalidArgumentError("hsm.module_path is empty");
  }
  // A dead `p11-kit server` raises SIGPIPE on the client's next write.
  signal(SIGPIPE, SIG_IGN);
  const bool in_process = !IsP11KitClientModule(options.module_path);
  if (in_process && !options.insecure_in_process_module) {
    return absl::FailedPreconditionError(absl::StrCat(
        "module ", options.module_path,
        " would run inside signetd and map key material into its memory; "
        "use p11-kit-client.so behind `p11-kit server`, or pass "
        "--insecure_in_process_module for development"));
  }
  if (access(options.module_path.c_str(), R_OK) != 0) {
    return absl::FailedPreconditionError(
        absl::StrCat("PKCS#11 module ", options.module_path,
                     " does not exist or is not readable"));
  }
  if (!in_process) {
    if (options.p11_kit_server_address.empty()) {
      return absl::InvalidArgumentError(
          "hsm.p11_kit_server_address is required with p11-kit-client.so");
    }
    setenv("P11_KIT_SERVER_ADDRESS", options.p11_kit_server_address.c_str(), 1);
  }
  return std::unique_ptr<P11KitConnector>(
      new P11KitConnector(options.module_path, in_process));
}

absl::StatusOr<std::unique_ptr<ModuleConnection>> P11KitConnector::Connect() {
  // Managed (flags 0): p11-kit initializes the module with OS locking and
  // tracks this load's sessions separately from other loads.
  CK_FUNCTION_LIST* module = p11_kit_module_load(module_path_.c_str(), 0);
  if (module == nullptr) {
    const char* why = p11_kit_message();
    return absl::FailedPreconditionError(
        absl::StrCat("cannot load PKCS#11 module ", module_path_, ": ",
                     why != nullptr ? why : "unknown error"));
  }
  CK_RV rv = p11_kit_module_initialize(module);
  if (rv != CKR_OK) {
    p11_kit_module_release(module);
    absl::Status status = CkrStatus(rv, "C_Initialize");
    return absl::UnavailableError(status.message());
  }
  return std::unique_ptr<ModuleConnection>(new LoadedModule(module));
}

}  // namespace signet::hsm
