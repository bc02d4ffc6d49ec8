// The narrow seam every PKCS#11 call in signet goes through.
//
// One Pkcs11Api is one module connection (for p11-kit-client.so, one
// `p11-kit-remote` process on the HSM side). The methods mirror the C_*
// functions signet uses and return the raw CK_RV, so a unit test can inject
// any return value (FakePkcs11Api / gmock) while the real implementation
// calls through a CK_FUNCTION_LIST. Conversion to absl::Status happens in
// the callers, through hsm/ckr.h.
//
// Thread-safety: implementations must allow concurrent calls on different
// sessions (the module is initialized with CKF_OS_LOCKING_OK); callers never
// use one session from two threads at once (the session pool ensures it).
#ifndef SIGNET_HSM_PKCS11_API_H_
#define SIGNET_HSM_PKCS11_API_H_

#include <p11-kit/pkcs11.h>

#include <vector>

namespace signet::hsm {

class Pkcs11Api {
 public:
  virtual ~Pkcs11Api() = default;

  // C_GetSlotList with tokenPresent, both calls of the size dance.
  virtual CK_RV GetSlotList(bool token_present,
                            std::vector<CK_SLOT_ID>* slots) = 0;
  virtual CK_RV GetTokenInfo(CK_SLOT_ID slot, CK_TOKEN_INFO* info) = 0;
  virtual CK_RV GetMechanismList(CK_SLOT_ID slot,
                                 std::vector<CK_MECHANISM_TYPE>* mechs) = 0;
  virtual CK_RV GetMechanismInfo(CK_SLOT_ID slot, CK_MECHANISM_TYPE type,
                                 CK_MECHANISM_INFO* info) = 0;
  virtual CK_RV OpenSession(CK_SLOT_ID slot, CK_FLAGS flags,
                            CK_SESSION_HANDLE* session) = 0;
  virtual CK_RV CloseSession(CK_SESSION_HANDLE session) = 0;
  virtual CK_RV Login(CK_SESSION_HANDLE session, CK_USER_TYPE user,
                      const unsigned char* pin, CK_ULONG pin_len) = 0;
  // C_FindObjectsInit + C_FindObjects (until exhausted) + C_FindObjectsFinal;
  // Final is always called once Init succeeded.
  virtual CK_RV FindObjects(CK_SESSION_HANDLE session, CK_ATTRIBUTE* templ,
                            CK_ULONG count,
                            std::vector<CK_OBJECT_HANDLE>* found) = 0;
  virtual CK_RV GetAttributeValue(CK_SESSION_HANDLE session,
                                  CK_OBJECT_HANDLE object, CK_ATTRIBUTE* templ,
                                  CK_ULONG count) = 0;
  virtual CK_RV GenerateKeyPair(
      CK_SESSION_HANDLE session, CK_MECHANISM* mechanism,
      CK_ATTRIBUTE* public_templ, CK_ULONG public_count,
      CK_ATTRIBUTE* private_templ, CK_ULONG private_count,
      CK_OBJECT_HANDLE* public_key, CK_OBJECT_HANDLE* private_key) = 0;
  virtual CK_RV CreateObject(CK_SESSION_HANDLE session, CK_ATTRIBUTE* templ,
                             CK_ULONG count, CK_OBJECT_HANDLE* object) = 0;
  virtual CK_RV DestroyObject(CK_SESSION_HANDLE session,
                              CK_OBJECT_HANDLE object) = 0;
  // C_SignInit + C_Sign into a caller buffer (single-part, no size query).
  virtual CK_RV SignInit(CK_SESSION_HANDLE session, CK_MECHANISM* mechanism,
                         CK_OBJECT_HANDLE key) = 0;
  virtual CK_RV Sign(CK_SESSION_HANDLE session, const unsigned char* data,
                     CK_ULONG data_len, unsigned char* signature,
                     CK_ULONG* signature_len) = 0;
  virtual CK_RV GenerateRandom(CK_SESSION_HANDLE session, unsigned char* out,
                               CK_ULONG len) = 0;
};

// Calls through a module's CK_FUNCTION_LIST. Does not own the module.
class FunctionListApi : public Pkcs11Api {
 public:
  explicit FunctionListApi(CK_FUNCTION_LIST* functions)
      : functions_(functions) {}

  CK_RV GetSlotList(bool token_present,
                    std::vector<CK_SLOT_ID>* slots) override;
  CK_RV GetTokenInfo(CK_SLOT_ID slot, CK_TOKEN_INFO* info) override;
  CK_RV GetMechanismList(CK_SLOT_ID slot,
                         std::vector<CK_MECHANISM_TYPE>* mechs) override;
  CK_RV GetMechanismInfo(CK_SLOT_ID slot, CK_MECHANISM_TYPE type,
                         CK_MECHANISM_INFO* info) override;
  CK_RV OpenSession(CK_SLOT_ID slot, CK_FLAGS flags,
                    CK_SESSION_HANDLE* session) override;
  CK_RV CloseSession(CK_SESSION_HANDLE session) override;
  CK_RV Login(CK_SESSION_HANDLE session, CK_USER_TYPE user,
              const unsigned char* pin, CK_ULONG pin_len) override;
  CK_RV FindObjects(CK_SESSION_HANDLE session, CK_ATTRIBUTE* templ,
                    CK_ULONG count,
                    std::vector<CK_OBJECT_HANDLE>* found) override;
  CK_RV GetAttributeValue(CK_SESSION_HANDLE session, CK_OBJECT_HANDLE object,
                          CK_ATTRIBUTE* templ, CK_ULONG count) override;
  CK_RV GenerateKeyPair(CK_SESSION_HANDLE session, CK_MECHANISM* mechanism,
                        CK_ATTRIBUTE* public_templ, CK_ULONG public_count,
                        CK_ATTRIBUTE* private_templ, CK_ULONG private_count,
                        CK_OBJECT_HANDLE* public_key,
                        CK_OBJECT_HANDLE* private_key) override;
  CK_RV CreateObject(CK_SESSION_HANDLE session, CK_ATTRIBUTE* templ,
                     CK_ULONG count, CK_OBJECT_HANDLE* object) override;
  CK_RV DestroyObject(CK_SESSION_HANDLE session,
                      CK_OBJECT_HANDLE object) override;
  CK_RV SignInit(CK_SESSION_HANDLE session, CK_MECHANISM* mechanism,
                 CK_OBJECT_HANDLE key) override;
  CK_RV Sign(CK_SESSION_HANDLE session, const unsigned char* data,
             CK_ULONG data_len, unsigned char* signature,
             CK_ULONG* signature_len) override;
  CK_RV GenerateRandom(CK_SESSION_HANDLE session, unsigned char* out,
                       CK_ULONG len) override;

 private:
  CK_FUNCTION_LIST* functions_;
};

}  // namespace signet::hsm

#endif  // SIGNET_HSM_PKCS11_API_H_
